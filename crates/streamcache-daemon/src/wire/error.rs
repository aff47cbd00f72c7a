//! The one error of the wire codec, shared by framing, requests, replies and the
//! demultiplexer.

use std::io;

use crate::wire::frame::Kind;

/// Why some bytes are not a valid frame or message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended in the middle of `what`.
    #[error("truncated {what}")]
    Truncated {
        /// The field or frame that was cut short.
        what: &'static str,
    },
    /// `what` is longer than allowed.
    #[error("{what} is too long: {len} bytes, at most {max}")]
    TooLong {
        /// The field or frame.
        what: &'static str,
        /// Its announced length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// There are more `what` than allowed.
    #[error("too many {what}: {count}, at most {max}")]
    TooMany {
        /// The repeated field.
        what: &'static str,
        /// The announced count.
        count: u64,
        /// The cap.
        max: u64,
    },
    /// A frame kind byte that means nothing.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A frame of a kind that is not allowed at this point.
    #[error("unexpected {0:?} frame")]
    Unexpected(Kind),
    /// A request in a version this program does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Bytes left over after a complete message.
    #[error("{0} unexpected bytes after the end of the message")]
    Trailing(usize),
    /// A field has a value it may not have.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Reading or writing the socket failed. Displays as the I/O error itself, whose
    /// causes are its own (`source()` is the I/O error's source, never the I/O error
    /// again, so a chain prints it once).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl WireError {
    /// A field with a value it may not have.
    pub(crate) fn invalid(what: &'static str, reason: &'static str) -> WireError {
        WireError::Invalid { what, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_prints_its_text_once_in_a_chain() {
        let e = WireError::from(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(e.to_string(), "reset");
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(format!("{:#}", anyhow::Error::new(e)), "reset");
    }
}
