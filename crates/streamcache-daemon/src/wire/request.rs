//! The request (`R`) payload: the command, its working directory and environment, the
//! key material and the stdin length, each field length-prefixed and capped by
//! [`Limits`] before anything is allocated.

use crate::wire::error::WireError;

/// The version of the request encoding, the first byte of an `R` or `Q` payload.
pub const PROTOCOL_VERSION: u8 = 1;

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
            return Err(WireError::invalid("program", "empty"));
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
            return Err(WireError::invalid(
                "working directory",
                "not an absolute path",
            ));
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
                return Err(WireError::invalid(
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

fn no_nul(bytes: &[u8], what: &'static str) -> Result<(), WireError> {
    if bytes.contains(&0) {
        return Err(WireError::invalid(what, "contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
