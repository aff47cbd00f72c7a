use super::*;

fn sample() -> Request {
    Request {
        program: b"git".to_vec(),
        args: vec![
            b"--shallow-file".to_vec(),
            Vec::new(),
            b"pack-objects".to_vec(),
            b"--stdout".to_vec(),
        ],
        cwd: b"/srv/repo.git".to_vec(),
        env: vec![(b"GIT_PROTOCOL".to_vec(), b"version=2".to_vec())],
        key_material: b"tenant".to_vec(),
        stdin_len: 42,
    }
}

#[test]
fn a_request_round_trips() {
    let r = sample();
    assert_eq!(Request::decode(&r.encode(), &Limits::default()).unwrap(), r);
}

#[test]
fn every_truncation_of_a_request_is_an_error() {
    let bytes = sample().encode();
    for cut in 0..bytes.len() {
        let err = Request::decode(&bytes[..cut], &Limits::default()).unwrap_err();
        assert!(
            matches!(err, WireError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn trailing_bytes_after_a_request_are_an_error() {
    let mut bytes = sample().encode();
    bytes.push(0);
    assert!(matches!(
        Request::decode(&bytes, &Limits::default()),
        Err(WireError::Trailing(1))
    ));
}

#[test]
fn oversized_fields_are_refused_before_allocation() {
    let limits = Limits {
        max_args: 2,
        ..Limits::default()
    };
    let err = Request::decode(&sample().encode(), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooMany {
                what: "arguments",
                count: 4,
                max: 2
            }
        ),
        "{err}"
    );

    // A length prefix claiming 4 GiB with nothing behind it.
    let mut bytes = vec![PROTOCOL_VERSION];
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = Request::decode(&bytes, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooLong {
                what: "program",
                ..
            }
        ),
        "{err}"
    );

    let mut r = sample();
    r.stdin_len = Limits::default().max_stdin + 1;
    let err = Request::decode(&r.encode(), &Limits::default()).unwrap_err();
    assert!(
        matches!(err, WireError::TooLong { what: "stdin", .. }),
        "{err}"
    );
}

#[test]
fn invalid_fields_are_refused_with_their_name() {
    type Mutation = Box<dyn Fn(&mut Request)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|r| r.program.clear()), "program"),
        (
            Box::new(|r| r.cwd = b"relative".to_vec()),
            "working directory",
        ),
        (Box::new(|r| r.args[0] = b"a\0b".to_vec()), "argument"),
        (
            Box::new(|r| r.env[0].0 = b"A=B".to_vec()),
            "environment variable name",
        ),
        (
            Box::new(|r| r.env[0].1 = b"x\0".to_vec()),
            "environment variable value",
        ),
    ];
    for (mutate, what) in cases {
        let mut r = sample();
        mutate(&mut r);
        let err = Request::decode(&r.encode(), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}

#[test]
fn an_unknown_version_is_refused() {
    let mut bytes = sample().encode();
    bytes[0] = 9;
    assert!(matches!(
        Request::decode(&bytes, &Limits::default()),
        Err(WireError::Version(9))
    ));
}

#[test]
fn read_frame_reports_truncation_unknown_kinds_and_oversize() {
    let whole = frame(Kind::Request, b"abc");
    let (kind, payload) = read_frame(&mut &whole[..]).unwrap();
    assert_eq!((kind, payload.as_slice()), (Kind::Request, &b"abc"[..]));
    for cut in 0..whole.len() {
        let err = read_frame(&mut &whole[..cut]).unwrap_err();
        assert!(
            matches!(err, WireError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
    let err = read_frame(&mut &b"Z\0\0\0\0"[..]).unwrap_err();
    assert!(matches!(err, WireError::UnknownKind(b'Z')));
    let mut big = vec![b'H'];
    big.extend_from_slice(&(MAX_CONTROL_PAYLOAD as u32 + 1).to_be_bytes());
    assert!(matches!(
        read_frame(&mut &big[..]).unwrap_err(),
        WireError::TooLong { .. }
    ));
}

fn reply() -> Vec<u8> {
    let mut out = frame(Kind::Response, &encode_response(Status::Hit, ""));
    out.extend(frame(Kind::Stdout, b"PACK\x00\x01\xff"));
    out.extend(frame(Kind::Stderr, b"Counting objects\r"));
    out.extend(frame(Kind::Stdout, b""));
    out.extend(frame(Kind::Stdout, &[7u8; 1000]));
    out.extend(frame(Kind::Exit, &ExitStatus::Signal(9).encode()));
    out.extend(frame(Kind::Trailer, &encode_trailer(&Err("boom".into()))));
    out
}

/// Everything a demultiplexer reported, event by event (shared with `props`).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Seen {
    status: Option<Status>,
    out: Vec<u8>,
    err: Vec<u8>,
    exit: Option<ExitStatus>,
    verdict: Option<Result<(), String>>,
}

impl Seen {
    /// Records one event; usable as the body of a [`Demux::feed`] callback.
    pub(super) fn record(&mut self, ev: Event<'_>) -> io::Result<()> {
        match ev {
            Event::Response(s, _) => self.status = Some(s),
            Event::Stdout(b) => self.out.extend_from_slice(b),
            Event::Stderr(b) => self.err.extend_from_slice(b),
            Event::Exit(e) => self.exit = Some(e),
            Event::Trailer(v) => self.verdict = Some(v),
        }
        Ok(())
    }
}

fn demux_in_chunks(bytes: &[u8], chunk: usize) -> Result<Seen, WireError> {
    let mut seen = Seen::default();
    let mut d = Demux::new();
    for piece in bytes.chunks(chunk.max(1)) {
        d.feed(piece, |ev| seen.record(ev))?;
    }
    assert!(d.is_finished());
    Ok(seen)
}

#[test]
fn the_demultiplexer_gives_the_same_result_for_any_chunking() {
    let bytes = reply();
    let whole = demux_in_chunks(&bytes, bytes.len()).unwrap();
    assert_eq!(whole.status, Some(Status::Hit));
    let mut expected_out = b"PACK\x00\x01\xff".to_vec();
    expected_out.extend_from_slice(&[7u8; 1000]);
    assert_eq!(whole.out, expected_out);
    assert_eq!(whole.err, b"Counting objects\r");
    assert_eq!(whole.exit, Some(ExitStatus::Signal(9)));
    assert_eq!(whole.verdict, Some(Err("boom".into())));
    for chunk in [1, 2, 3, 5, 7, 64, 999] {
        assert_eq!(
            demux_in_chunks(&bytes, chunk).unwrap(),
            whole,
            "chunk {chunk}"
        );
    }
}

#[test]
fn the_demultiplexer_refuses_frames_out_of_order_and_bytes_after_the_trailer() {
    let out_first = frame(Kind::Stdout, b"x");
    let mut d = Demux::new();
    assert!(matches!(
        d.feed(&out_first, |_| Ok(())),
        Err(WireError::Unexpected(Kind::Stdout))
    ));

    let mut after_exit = frame(Kind::Response, &encode_response(Status::Miss, ""));
    after_exit.extend(frame(Kind::Exit, &ExitStatus::Code(0).encode()));
    after_exit.extend(frame(Kind::Stdout, b"late"));
    assert!(matches!(
        Demux::new().feed(&after_exit, |_| Ok(())),
        Err(WireError::Unexpected(Kind::Stdout))
    ));

    let mut extra = reply();
    extra.push(b'O');
    assert!(matches!(
        Demux::new().feed(&extra, |_| Ok(())),
        Err(WireError::Trailing(1))
    ));

    let request_in_reply = frame(Kind::Request, b"");
    assert!(Demux::new().feed(&request_in_reply, |_| Ok(())).is_err());
}

#[test]
fn the_demultiplexer_stops_on_the_sinks_error() {
    let bytes = reply();
    let err = Demux::new()
        .feed(&bytes, |ev| match ev {
            Event::Stdout(_) => Err(io::ErrorKind::BrokenPipe.into()),
            _ => Ok(()),
        })
        .unwrap_err();
    assert!(matches!(err, WireError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe));
}

#[test]
fn control_payloads_round_trip_and_garbage_is_refused() {
    for e in [
        ExitStatus::Code(0),
        ExitStatus::Code(-1),
        ExitStatus::Code(255),
        ExitStatus::Signal(15),
    ] {
        assert_eq!(ExitStatus::decode(&e.encode()).unwrap(), e);
    }
    assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    assert!(ExitStatus::decode(&[2, 0, 0, 0, 0]).is_err());
    assert!(ExitStatus::decode(&[0, 0]).is_err());
    for v in [Ok(()), Err("x".to_owned())] {
        assert_eq!(decode_trailer(&encode_trailer(&v)).unwrap(), v);
    }
    assert!(decode_trailer(&[]).is_err());
    assert!(decode_trailer(&[0, 1]).is_err());
    assert!(decode_trailer(&[7]).is_err());
    for s in [Status::Hit, Status::Miss, Status::Refused, Status::Error] {
        assert_eq!(
            decode_response(&encode_response(s, "why")).unwrap(),
            (s, "why".into())
        );
    }
    assert!(decode_response(&[]).is_err());
    assert!(decode_response(&[9]).is_err());
}

#[test]
fn skipping_spliced_stdout_bytes_keeps_the_demultiplexer_in_step() {
    let bytes = reply();
    let mut d = Demux::new();
    let mut seen = Seen::default();
    let mut rest = &bytes[..];
    let mut spliced = Vec::new();
    while !rest.is_empty() {
        match d.next() {
            Next::Payload {
                kind: Kind::Stdout,
                remaining,
            } => {
                // Move stdout payload "around" the demultiplexer, 3 bytes at a time.
                let n = remaining.min(3).min(rest.len());
                spliced.extend_from_slice(&rest[..n]);
                d.skip_stdout(n).unwrap();
                rest = &rest[n..];
            }
            Next::Header(n) | Next::Payload { remaining: n, .. } => {
                let n = n.min(rest.len());
                d.feed(&rest[..n], |ev| seen.record(ev)).unwrap();
                rest = &rest[n..];
            }
        }
    }
    assert!(d.is_finished());
    let whole = demux_in_chunks(&bytes, bytes.len()).unwrap();
    assert_eq!(spliced, whole.out);
    assert!(seen.out.is_empty());
    assert_eq!(seen.err, whole.err);
    assert_eq!(seen.exit, whole.exit);
    assert_eq!(seen.verdict, whole.verdict);
}

#[test]
fn skipping_outside_a_stdout_frame_is_an_error() {
    let mut d = Demux::new();
    assert!(d.skip_stdout(1).is_err());
    let header = frame(Kind::Response, &encode_response(Status::Hit, ""));
    d.feed(&header, |_| Ok(())).unwrap();
    let out = frame(Kind::Stdout, b"abc");
    d.feed(&out[..HEADER_LEN], |_| Ok(())).unwrap();
    assert!(d.skip_stdout(4).is_err());
    d.skip_stdout(3).unwrap();
    assert_eq!(d.next(), Next::Header(HEADER_LEN));
}
