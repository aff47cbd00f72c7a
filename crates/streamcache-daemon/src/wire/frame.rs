//! Frames: one kind byte, a 4-byte big-endian payload length, then the payload. The
//! kinds, the cap on each kind's payload, and reading and writing whole frames.

use std::io::{self, Read, Write};

use crate::wire::error::WireError;

/// Bytes in a frame header: the kind byte and the big-endian `u32` length.
pub const HEADER_LEN: usize = 5;

/// The largest payload of an `O` or `E` frame the producer writes.
pub const MAX_DATA_PAYLOAD: usize = 64 << 10;

/// The largest payload of a control frame (`H`, `X`, `T`, `Q`).
pub const MAX_CONTROL_PAYLOAD: usize = 64 << 10;

/// The largest payload of a request frame (`R`) or a stats reply (`S`).
pub const MAX_REQUEST_PAYLOAD: usize = 4 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Client to daemon: run (or join) a command.
    Request,
    /// Client to daemon: send the counters.
    StatsRequest,
    /// Daemon to client: the answer to a request, before any output.
    Response,
    /// Bytes the command wrote to its stdout.
    Stdout,
    /// Bytes the command wrote to its stderr.
    Stderr,
    /// How the command ended.
    Exit,
    /// Daemon to client: the cache's verdict, after the last entry byte.
    Trailer,
    /// Daemon to client: the counters, as `key=value` lines.
    StatsReply,
}

impl Kind {
    /// The byte that stands for this kind on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Kind::Request => b'R',
            Kind::StatsRequest => b'Q',
            Kind::Response => b'H',
            Kind::Stdout => b'O',
            Kind::Stderr => b'E',
            Kind::Exit => b'X',
            Kind::Trailer => b'T',
            Kind::StatsReply => b'S',
        }
    }

    /// The kind a byte stands for.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            b'R' => Kind::Request,
            b'Q' => Kind::StatsRequest,
            b'H' => Kind::Response,
            b'O' => Kind::Stdout,
            b'E' => Kind::Stderr,
            b'X' => Kind::Exit,
            b'T' => Kind::Trailer,
            b'S' => Kind::StatsReply,
            _ => return None,
        })
    }

    /// The largest payload a frame of this kind may have.
    pub fn max_payload(self) -> usize {
        match self {
            Kind::Request | Kind::StatsReply => MAX_REQUEST_PAYLOAD,
            Kind::Stdout | Kind::Stderr => MAX_DATA_PAYLOAD,
            Kind::StatsRequest | Kind::Response | Kind::Exit | Kind::Trailer => MAX_CONTROL_PAYLOAD,
        }
    }
}

/// A whole frame (header and payload) as one buffer.
///
/// # Panics
///
/// If `payload` is 4 GiB or longer (every payload this crate makes is capped far
/// below that).
pub fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(kind.byte());
    out.extend_from_slice(&frame_len(payload.len()).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes the header of a frame into `buf`.
///
/// # Panics
///
/// If `len` is 4 GiB or more.
pub fn put_header(buf: &mut [u8; HEADER_LEN], kind: Kind, len: usize) {
    buf[0] = kind.byte();
    buf[1..].copy_from_slice(&frame_len(len).to_be_bytes());
}

fn frame_len(len: usize) -> u32 {
    // Payloads are capped far below 4 GiB by every writer in this crate.
    u32::try_from(len).expect("frame payloads are capped below 4 GiB")
}

/// Writes one frame.
///
/// # Errors
///
/// The writer's error.
///
/// # Panics
///
/// As [`frame`].
pub fn write_frame<W: Write + ?Sized>(w: &mut W, kind: Kind, payload: &[u8]) -> io::Result<()> {
    w.write_all(&frame(kind, payload))
}

/// Reads one whole frame, refusing payloads longer than the kind allows.
///
/// # Errors
///
/// [`WireError::Truncated`] if the input ends inside the frame (or before it:
/// `what` is then `"frame header"` and nothing was read), an unknown kind, an
/// oversized payload, or the reader's error.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<(Kind, Vec<u8>), WireError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_or(r, &mut header, "frame header")?;
    let (kind, len) = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    read_exact_or(r, &mut payload, "frame payload")?;
    Ok((kind, payload))
}

/// Parses a frame header, checking the kind and its length cap.
///
/// # Errors
///
/// [`WireError::UnknownKind`] or [`WireError::TooLong`].
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(Kind, usize), WireError> {
    let kind = Kind::from_byte(header[0]).ok_or(WireError::UnknownKind(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > kind.max_payload() {
        return Err(WireError::TooLong {
            what: "frame payload",
            len: len as u64,
            max: kind.max_payload() as u64,
        });
    }
    Ok((kind, len))
}

fn read_exact_or<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), WireError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Err(WireError::Truncated { what }),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
