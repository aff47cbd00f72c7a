//! The wire format between `streamcache exec` (the client) and `streamcache serve`.
//!
//! Everything on the socket is a **frame**: one kind byte, a 4-byte big-endian payload
//! length, then the payload.
//!
//! ```text
//! client -> daemon   R request (program, args, cwd, env, key material, stdin length)
//!                    <stdin bytes, exactly the announced length, unframed>
//!               or   Q stats request
//! daemon -> client   H response header: hit | miss | refused | error, with a message
//!                    O stdout / E stderr / X exit frames: the cache entry, verbatim
//!                    T trailer: the cache's verdict on the entry (ok | error text)
//!               or   S stats reply (key=value lines)
//! ```
//!
//! The `O`, `E` and `X` frames are exactly the bytes of the cache entry: the producer
//! writes them into the entry file and the daemon copies the file into the socket with
//! `sendfile(2)`, untouched. The client demultiplexes them with [`Demux`].
//!
//! Decoding never panics and never trusts a length: every count and size has a hard cap
//! ([`Limits`]), and a truncated, oversized or malformed input is an error naming what
//! was wrong. [`Request::decode`] and [`Demux::feed`] work on byte slices, so they can
//! be fuzzed and property-tested without sockets.
//!
//! One module per job: `frame` (the kinds, their caps, whole frames read and written),
//! `request` (the `R` payload and its [`Limits`]), `reply` (the `H`, `X` and `T`
//! payloads), `demux` (the client's [`Demux`]) and `error` (the [`WireError`] they
//! share). The public items are re-exported here for fuzzers and tests; the daemon's
//! own modules name them by the module that defines them.

pub(crate) mod demux;
pub(crate) mod error;
pub(crate) mod frame;
pub(crate) mod reply;
pub(crate) mod request;

pub use self::demux::{Demux, Event, Next};
pub use self::error::WireError;
pub use self::frame::{
    frame, parse_header, put_header, read_frame, write_frame, Kind, HEADER_LEN,
    MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD, MAX_REQUEST_PAYLOAD,
};
pub use self::reply::{
    decode_response, decode_trailer, encode_response, encode_trailer, ExitStatus, Status,
};
pub use self::request::{Limits, Request, PROTOCOL_VERSION};

#[cfg(test)]
mod props;
