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

use std::fmt;
use std::io::{self, Read, Write};

/// Bytes in a frame header: the kind byte and the big-endian `u32` length.
pub const HEADER_LEN: usize = 5;

/// The largest payload of an `O` or `E` frame the producer writes.
pub const MAX_DATA_PAYLOAD: usize = 64 << 10;

/// The largest payload of a control frame (`H`, `X`, `T`, `Q`).
pub const MAX_CONTROL_PAYLOAD: usize = 64 << 10;

/// The largest payload of a request frame (`R`) or a stats reply (`S`).
pub const MAX_REQUEST_PAYLOAD: usize = 4 << 20;

/// The version of the request encoding, the first byte of an `R` or `Q` payload.
pub const PROTOCOL_VERSION: u8 = 1;

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
    /// Reading or writing the socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Caps on a request, checked while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Arguments after the program.
    pub max_args: usize,
    /// Bytes in one argument, the program or the working directory.
    pub max_arg_len: usize,
    /// Environment variables.
    pub max_env: usize,
    /// Bytes in one environment variable's name plus value.
    pub max_env_len: usize,
    /// Bytes of extra key material.
    pub max_key_len: usize,
    /// Bytes of stdin.
    pub max_stdin: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_args: 4096,
            max_arg_len: 128 << 10,
            max_env: 512,
            max_env_len: 128 << 10,
            max_key_len: 64 << 10,
            max_stdin: 64 << 20,
        }
    }
}

/// A request to run a command through the cache.
///
/// Strings are bytes because Unix arguments, paths and environment values are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The program, as the client would `exec` it (`git`, or a path).
    pub program: Vec<u8>,
    /// The arguments after the program.
    pub args: Vec<Vec<u8>>,
    /// The client's working directory, canonical and absolute.
    pub cwd: Vec<u8>,
    /// The environment variables the command runs with (and nothing else).
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Extra bytes for the key, from `exec --key`.
    pub key_material: Vec<u8>,
    /// How many bytes of stdin follow the request frame.
    pub stdin_len: u64,
}

impl Request {
    /// The payload of the request's `R` frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(PROTOCOL_VERSION);
        put_bytes(&mut out, &self.program);
        put_u32(&mut out, self.args.len());
        for arg in &self.args {
            put_bytes(&mut out, arg);
        }
        put_bytes(&mut out, &self.cwd);
        put_u32(&mut out, self.env.len());
        for (name, value) in &self.env {
            put_bytes(&mut out, name);
            put_bytes(&mut out, value);
        }
        put_bytes(&mut out, &self.key_material);
        out.extend_from_slice(&self.stdin_len.to_be_bytes());
        out
    }

    /// Decodes the payload of an `R` frame, checking every field against `limits`.
    ///
    /// # Errors
    ///
    /// A [`WireError`] naming the first field that is truncated, too long, too many or
    /// invalid (an empty program, a relative working directory, a NUL byte where
    /// `exec` cannot take one, `=` in a variable name), or trailing bytes.
    pub fn decode(payload: &[u8], limits: &Limits) -> Result<Request, WireError> {
        let mut r = Reader { rest: payload };
        let version = r.u8("protocol version")?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::Version(version));
        }
        let program = r.bytes("program", limits.max_arg_len)?;
        if program.is_empty() {
            return Err(invalid("program", "empty"));
        }
        no_nul(&program, "program")?;
        let argc = r.count("arguments", limits.max_args)?;
        let mut args = Vec::with_capacity(argc.min(64));
        for _ in 0..argc {
            let arg = r.bytes("argument", limits.max_arg_len)?;
            no_nul(&arg, "argument")?;
            args.push(arg);
        }
        let cwd = r.bytes("working directory", limits.max_arg_len)?;
        if cwd.first() != Some(&b'/') {
            return Err(invalid("working directory", "not an absolute path"));
        }
        no_nul(&cwd, "working directory")?;
        let envc = r.count("environment variables", limits.max_env)?;
        let mut env = Vec::with_capacity(envc.min(64));
        for _ in 0..envc {
            let name = r.bytes("environment variable name", limits.max_env_len)?;
            let value = r.bytes("environment variable value", limits.max_env_len)?;
            if name.len() + value.len() > limits.max_env_len {
                return Err(WireError::TooLong {
                    what: "environment variable",
                    len: (name.len() + value.len()) as u64,
                    max: limits.max_env_len as u64,
                });
            }
            if name.is_empty() || name.contains(&b'=') {
                return Err(invalid(
                    "environment variable name",
                    "empty or contains '='",
                ));
            }
            no_nul(&name, "environment variable name")?;
            no_nul(&value, "environment variable value")?;
            env.push((name, value));
        }
        let key_material = r.bytes("key material", limits.max_key_len)?;
        let stdin_len = r.u64("stdin length")?;
        if stdin_len > limits.max_stdin {
            return Err(WireError::TooLong {
                what: "stdin",
                len: stdin_len,
                max: limits.max_stdin,
            });
        }
        if !r.rest.is_empty() {
            return Err(WireError::Trailing(r.rest.len()));
        }
        Ok(Request {
            program,
            args,
            cwd,
            env,
            key_material,
            stdin_len,
        })
    }
}

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
    let status = Status::from_byte(first).ok_or(invalid("response status", "unknown"))?;
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
            _ => Err(invalid("exit frame", "unknown tag")),
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
        Some(_) => Err(invalid("trailer", "unknown tag or extra bytes")),
        None => Err(WireError::Truncated { what: "trailer" }),
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

/// One thing the client learns from the daemon's reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The response header.
    Response(Status, String),
    /// A piece of the command's stdout (a frame may arrive in several pieces).
    Stdout(&'a [u8]),
    /// A piece of the command's stderr.
    Stderr(&'a [u8]),
    /// How the command ended.
    Exit(ExitStatus),
    /// The cache's verdict; the last frame of a reply.
    Trailer(Result<(), String>),
}

/// What a [`Demux`] expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// This many more bytes of a frame header.
    Header(usize),
    /// This many more bytes of the payload of a frame of this kind.
    Payload {
        /// The frame's kind.
        kind: Kind,
        /// Payload bytes still to come.
        remaining: usize,
    },
}

/// Splits the daemon's reply into [`Event`]s, whatever the chunking of the input.
///
/// Data frames are passed on in pieces as they arrive, without buffering; control
/// frames are collected whole (they are small). The order of frames is checked: one
/// response header first, then output and at most one exit frame, then one trailer.
#[derive(Debug, Default)]
pub struct Demux {
    header: [u8; HEADER_LEN],
    header_len: usize,
    current: Option<(Kind, usize)>,
    control: Vec<u8>,
    seen_response: bool,
    seen_exit: bool,
    finished: bool,
}

impl Demux {
    /// A demultiplexer at the start of a reply.
    pub fn new() -> Demux {
        Demux::default()
    }

    /// Whether the trailer has been seen: the reply is complete.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// What the next input bytes are: the rest of a frame header, or payload.
    pub fn next(&self) -> Next {
        match self.current {
            Some((kind, remaining)) => Next::Payload { kind, remaining },
            None => Next::Header(HEADER_LEN - self.header_len),
        }
    }

    /// Records that `n` bytes of the current stdout payload were passed on without
    /// going through [`Demux::feed`] (the client splices them from the socket into its
    /// stdout). `n` must not exceed what [`Demux::next`] reported.
    ///
    /// # Errors
    ///
    /// [`WireError::Invalid`] if the current frame is not stdout or is shorter than `n`.
    pub fn skip_stdout(&mut self, n: usize) -> Result<(), WireError> {
        match self.current {
            Some((Kind::Stdout, remaining)) if n <= remaining => {
                self.current = Some((Kind::Stdout, remaining - n));
                if remaining == n {
                    self.current = None;
                }
                Ok(())
            }
            _ => Err(invalid("spliced bytes", "not inside a stdout frame")),
        }
    }

    /// Feeds the next bytes of the reply, calling `sink` for each event. The sink's
    /// error stops the feed and is returned as [`WireError::Io`].
    ///
    /// # Errors
    ///
    /// A [`WireError`] for an unknown or oversized frame, a frame out of order, bytes
    /// after the trailer, or a malformed control payload.
    pub fn feed<F>(&mut self, mut data: &[u8], mut sink: F) -> Result<(), WireError>
    where
        F: FnMut(Event<'_>) -> io::Result<()>,
    {
        while !data.is_empty() {
            if self.finished {
                return Err(WireError::Trailing(data.len()));
            }
            let Some((kind, remaining)) = self.current else {
                let take = (HEADER_LEN - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == HEADER_LEN {
                    self.header_len = 0;
                    let (kind, len) = parse_header(&self.header)?;
                    self.check_order(kind)?;
                    self.current = Some((kind, len));
                    self.control.clear();
                    if len == 0 {
                        self.finish_frame(kind, &mut sink)?;
                    }
                }
                continue;
            };
            let take = remaining.min(data.len());
            let (piece, rest) = data.split_at(take);
            data = rest;
            let left = remaining - take;
            self.current = Some((kind, left));
            match kind {
                Kind::Stdout => sink(Event::Stdout(piece))?,
                Kind::Stderr => sink(Event::Stderr(piece))?,
                _ => self.control.extend_from_slice(piece),
            }
            if left == 0 {
                self.finish_frame(kind, &mut sink)?;
            }
        }
        Ok(())
    }

    fn check_order(&mut self, kind: Kind) -> Result<(), WireError> {
        let ok = match kind {
            Kind::Response => !self.seen_response,
            Kind::Stdout | Kind::Stderr => self.seen_response && !self.seen_exit,
            Kind::Exit => self.seen_response && !self.seen_exit,
            Kind::Trailer => self.seen_response,
            _ => false,
        };
        if !ok {
            return Err(WireError::Unexpected(kind));
        }
        match kind {
            Kind::Response => self.seen_response = true,
            Kind::Exit => self.seen_exit = true,
            _ => {}
        }
        Ok(())
    }

    fn finish_frame<F>(&mut self, kind: Kind, sink: &mut F) -> Result<(), WireError>
    where
        F: FnMut(Event<'_>) -> io::Result<()>,
    {
        self.current = None;
        match kind {
            Kind::Stdout | Kind::Stderr => {}
            Kind::Response => {
                let (status, message) = decode_response(&self.control)?;
                sink(Event::Response(status, message))?;
            }
            Kind::Exit => sink(Event::Exit(ExitStatus::decode(&self.control)?))?,
            Kind::Trailer => {
                let verdict = decode_trailer(&self.control)?;
                self.finished = true;
                sink(Event::Trailer(verdict))?;
            }
            other => return Err(WireError::Unexpected(other)),
        }
        Ok(())
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated { what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, WireError> {
        let count = self.u32(what)? as usize;
        if count > max {
            return Err(WireError::TooMany {
                what,
                count: count as u64,
                max: max as u64,
            });
        }
        Ok(count)
    }

    fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, WireError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(WireError::TooLong {
                what,
                len: len as u64,
                max: max as u64,
            });
        }
        Ok(self.take(len, what)?.to_vec())
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn invalid(what: &'static str, reason: &'static str) -> WireError {
    WireError::Invalid { what, reason }
}

fn no_nul(bytes: &[u8], what: &'static str) -> Result<(), WireError> {
    if bytes.contains(&0) {
        return Err(invalid(what, "contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
