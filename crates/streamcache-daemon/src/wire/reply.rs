//! The payloads of the daemon's control frames around an entry: the response header
//! (`H`), how the command ended (`X`) and the cache's verdict (`T`).

use std::fmt;

use crate::wire::error::WireError;
use crate::wire::frame::MAX_CONTROL_PAYLOAD;

/// The daemon's first answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The output comes from an entry that existed (it may still be being produced).
    Hit,
    /// This request started the command.
    Miss,
    /// The daemon will not run this: the client should run it itself.
    Refused,
    /// The daemon failed before any output: the client should run it itself.
    Error,
}

impl Status {
    fn byte(self) -> u8 {
        match self {
            Status::Hit => 0,
            Status::Miss => 1,
            Status::Refused => 2,
            Status::Error => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Status> {
        Some(match byte {
            0 => Status::Hit,
            1 => Status::Miss,
            2 => Status::Refused,
            3 => Status::Error,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Refused => "refused",
            Status::Error => "error",
        })
    }
}

/// The payload of an `H` frame: a status and a message (the reason of a refusal).
pub fn encode_response(status: Status, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.len());
    out.push(status.byte());
    out.extend_from_slice(&message.as_bytes()[..message.len().min(MAX_CONTROL_PAYLOAD - 1)]);
    out
}

/// Decodes an `H` payload.
///
/// # Errors
///
/// [`WireError`] if it is empty or the status byte is unknown.
pub fn decode_response(payload: &[u8]) -> Result<(Status, String), WireError> {
    let (&first, message) = payload
        .split_first()
        .ok_or(WireError::Truncated { what: "response" })?;
    let status =
        Status::from_byte(first).ok_or(WireError::invalid("response status", "unknown"))?;
    Ok((status, String::from_utf8_lossy(message).into_owned()))
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The code a shell would report: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }

    /// Whether the command succeeded.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The payload of an `X` frame.
    pub fn encode(self) -> [u8; 5] {
        let (tag, value) = match self {
            ExitStatus::Code(code) => (0u8, code),
            ExitStatus::Signal(signal) => (1u8, signal),
        };
        let v = value.to_be_bytes();
        [tag, v[0], v[1], v[2], v[3]]
    }

    /// Decodes an `X` payload.
    ///
    /// # Errors
    ///
    /// [`WireError`] if it is not 5 bytes or the tag is unknown.
    pub fn decode(payload: &[u8]) -> Result<ExitStatus, WireError> {
        let bytes: [u8; 5] = payload.try_into().map_err(|_| WireError::Invalid {
            what: "exit frame",
            reason: "not 5 bytes",
        })?;
        let value = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        match bytes[0] {
            0 => Ok(ExitStatus::Code(value)),
            1 => Ok(ExitStatus::Signal(value)),
            _ => Err(WireError::invalid("exit frame", "unknown tag")),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// The payload of a `T` frame: `Ok` or the error text.
pub fn encode_trailer(result: &Result<(), String>) -> Vec<u8> {
    match result {
        Ok(()) => vec![0],
        Err(text) => {
            let mut out = vec![1];
            out.extend_from_slice(&text.as_bytes()[..text.len().min(MAX_CONTROL_PAYLOAD - 1)]);
            out
        }
    }
}

/// Decodes a `T` payload.
///
/// # Errors
///
/// [`WireError`] if it is empty or the tag is unknown.
pub fn decode_trailer(payload: &[u8]) -> Result<Result<(), String>, WireError> {
    match payload.split_first() {
        Some((0, [])) => Ok(Ok(())),
        Some((1, text)) => Ok(Err(String::from_utf8_lossy(text).into_owned())),
        Some(_) => Err(WireError::invalid("trailer", "unknown tag or extra bytes")),
        None => Err(WireError::Truncated { what: "trailer" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
