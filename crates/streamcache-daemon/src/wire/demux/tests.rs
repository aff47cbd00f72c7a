use std::io;

use super::*;
use crate::wire::frame::frame;
use crate::wire::reply::{encode_response, encode_trailer};

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

/// Everything a demultiplexer reported, event by event (shared with `wire::props`).
#[derive(Debug, Default, PartialEq)]
pub(in crate::wire) struct Seen {
    status: Option<Status>,
    out: Vec<u8>,
    err: Vec<u8>,
    exit: Option<ExitStatus>,
    verdict: Option<Result<(), String>>,
}

impl Seen {
    /// Records one event; usable as the body of a [`Demux::feed`] callback.
    pub(in crate::wire) fn record(&mut self, ev: Event<'_>) -> io::Result<()> {
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
