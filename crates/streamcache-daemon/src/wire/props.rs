//! Property tests of the decoders, run by `cargo test` as a fuzzer would run them:
//! arbitrary bytes, and valid messages truncated, flipped, overwritten with extreme
//! lengths, or grown. Decoding never panics, every error says what it is, and valid
//! messages round-trip. A reply cut anywhere is never taken for a complete one.

use proptest::prelude::*;

use super::*;
use crate::wire::demux::tests::Seen;

/// Bytes with no NUL (what `exec` can pass as an argument or value).
fn no_nul(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..max)
}

fn request() -> impl Strategy<Value = Request> {
    let program = prop::collection::vec(1u8..=255, 1..16);
    let args = prop::collection::vec(no_nul(24), 0..6);
    let cwd = no_nul(24).prop_map(|mut p| {
        p.insert(0, b'/');
        p
    });
    let name = prop::collection::vec((1u8..=255).prop_filter("no '='", |b| *b != b'='), 1..12);
    let env = prop::collection::vec((name, no_nul(24)), 0..5);
    let key = prop::collection::vec(any::<u8>(), 0..24);
    let stdin_len = 0..=Limits::default().max_stdin;
    (program, args, cwd, env, key, stdin_len).prop_map(
        |(program, args, cwd, env, key_material, stdin_len)| Request {
            program,
            args,
            cwd,
            env,
            key_material,
            stdin_len,
        },
    )
}

/// A change to a valid message.
#[derive(Debug, Clone)]
enum Mutation {
    /// Keep only the first bytes.
    Truncate(usize),
    /// Set one byte.
    Set(usize, u8),
    /// Write a big-endian `u32` (a length or a count) at a position.
    Length(usize, u32),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        any::<u32>()
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), extreme).prop_map(|(i, n)| Mutation::Length(i, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = *b,
            Mutation::Length(i, n) if len >= 4 => {
                let at = i % (len - 3);
                bytes[at..at + 4].copy_from_slice(&n.to_be_bytes());
            }
            Mutation::Insert(i, extra) => {
                let at = i % (len + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}

/// Decodes a request and checks what any outcome must satisfy: a request that decodes
/// encodes back to exactly the same bytes (one encoding per request, nothing ignored),
/// and an error has a message.
fn check_request_decode(bytes: &[u8]) {
    match Request::decode(bytes, &Limits::default()) {
        Ok(r) => assert!(
            r.encode() == bytes,
            "a decoded request re-encodes to other bytes"
        ),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A valid reply: the response header, data frames, maybe an exit frame, the trailer.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let data = prop::collection::vec(
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)),
        0..6,
    );
    let exit = prop::option::of(prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        (1i32..64).prop_map(ExitStatus::Signal)
    ]);
    let verdict = prop::option::of(no_nul(40));
    let status = prop_oneof![Just(Status::Hit), Just(Status::Miss)];
    (status, data, exit, verdict).prop_map(|(status, data, exit, verdict)| {
        let mut out = frame(Kind::Response, &encode_response(status, ""));
        for (is_stdout, bytes) in data {
            let kind = if is_stdout {
                Kind::Stdout
            } else {
                Kind::Stderr
            };
            out.extend(frame(kind, &bytes));
        }
        if let Some(exit) = exit {
            out.extend(frame(Kind::Exit, &exit.encode()));
        }
        let verdict = match verdict {
            None => Ok(()),
            Some(text) => Err(String::from_utf8_lossy(&text).into_owned()),
        };
        out.extend(frame(Kind::Trailer, &encode_trailer(&verdict)));
        out
    })
}

/// Feeds `bytes` to a fresh demultiplexer in pieces of the given sizes (cycled).
/// Returns what it saw, whether it finished, and the first error.
fn demux(bytes: &[u8], sizes: &[usize]) -> (Seen, bool, Option<WireError>) {
    let mut seen = Seen::default();
    let mut d = Demux::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let fed = d.feed(piece, |ev| seen.record(ev));
        if let Err(e) = fed {
            assert!(!e.to_string().is_empty());
            return (seen, d.is_finished(), Some(e));
        }
    }
    (seen, d.is_finished(), None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_request_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check_request_decode(&bytes);
        // With the version byte right, the decoder goes deeper.
        let mut versioned = bytes.clone();
        versioned.insert(0, PROTOCOL_VERSION);
        check_request_decode(&versioned);
    }

    #[test]
    fn valid_requests_round_trip(r in request()) {
        prop_assert_eq!(Request::decode(&r.encode(), &Limits::default()).unwrap(), r);
    }

    #[test]
    fn mutated_requests_never_panic_and_every_cut_is_a_truncation(
        r in request(),
        mutations in prop::collection::vec(mutation(), 1..4),
        cut in any::<usize>(),
    ) {
        let bytes = r.encode();
        check_request_decode(&mutate(bytes.clone(), &mutations));
        let cut = cut % bytes.len();
        let err = Request::decode(&bytes[..cut], &Limits::default()).unwrap_err();
        prop_assert!(matches!(err, WireError::Truncated { .. }), "cut {}: {}", cut, err);
    }

    #[test]
    fn frames_round_trip_and_arbitrary_bytes_never_panic_read_frame(
        kind in prop::sample::select(vec![
            Kind::Request, Kind::StatsRequest, Kind::Response, Kind::Stdout,
            Kind::Stderr, Kind::Exit, Kind::Trailer, Kind::StatsReply,
        ]),
        payload in prop::collection::vec(any::<u8>(), 0..2048),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let whole = frame(kind, &payload);
        let (k, p) = read_frame(&mut &whole[..]).unwrap();
        prop_assert_eq!((k, p), (kind, payload));
        match read_frame(&mut &garbage[..]) {
            Ok((k, p)) => prop_assert!(p.len() <= k.max_payload()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn a_reply_demultiplexes_the_same_in_any_chunking(
        bytes in reply(),
        sizes in prop::collection::vec(1usize..64, 1..8),
    ) {
        let (whole, finished, err) = demux(&bytes, &[bytes.len()]);
        prop_assert!(finished && err.is_none());
        let (chunked, finished, err) = demux(&bytes, &sizes);
        prop_assert!(finished && err.is_none());
        prop_assert_eq!(chunked, whole);
    }

    #[test]
    fn a_reply_cut_anywhere_is_never_complete(bytes in reply(), cut in any::<usize>()) {
        let cut = cut % bytes.len();
        let (_, finished, err) = demux(&bytes[..cut], &[7]);
        prop_assert!(!finished, "a reply cut at {} looks complete", cut);
        prop_assert!(err.is_none(), "a clean cut is not an error yet");
    }

    #[test]
    fn mutated_or_arbitrary_replies_never_panic_the_demultiplexer(
        bytes in reply(),
        mutations in prop::collection::vec(mutation(), 1..4),
        garbage in prop::collection::vec(any::<u8>(), 0..512),
        sizes in prop::collection::vec(1usize..64, 1..8),
    ) {
        let _ = demux(&mutate(bytes, &mutations), &sizes);
        let _ = demux(&garbage, &sizes);
    }

    #[test]
    fn control_payload_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
        if let Err(e) = decode_response(&bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
        match ExitStatus::decode(&bytes) {
            Ok(exit) => prop_assert_eq!(&exit.encode()[..], &bytes[..]),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        if let Err(e) = decode_trailer(&bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
