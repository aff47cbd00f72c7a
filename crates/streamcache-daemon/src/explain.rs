//! `streamcache exec --explain`: each part of a request's cache key on a line of its
//! own, then the key, so that two requests that should have hit one entry can be put
//! side by side (`diff`) and the part that differs found.
//!
//! The key is computed exactly as the daemon computes it ([`KeyHasher`]), from the
//! request the client would send: the working directory in its canonical form, the
//! forwarded environment, the `--key` material and the stdin. The daemon's log lines of
//! a request carry the key's first 16 digits (`key=…` in the `request` span).

use std::fmt::Write as _;
use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::key::{hex, KeyHasher};
use crate::spill::Spill;
use crate::wire::request::Request;

/// The explanation of `request`, whose stdin is `stdin`.
///
/// # Errors
///
/// If the stdin buffer cannot be read back.
pub(crate) fn explanation(request: &Request, stdin: &mut Spill) -> io::Result<String> {
    let mut hashed = Hashed {
        key: KeyHasher::new(request, &request.cwd),
        stdin: Sha256::new(),
    };
    stdin.copy_to(&mut hashed)?;
    let key = hashed.key.finish();
    let stdin_digest = hex(&hashed.stdin.finalize());
    let mut out = String::new();
    let mut line = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<14} {value}");
    };
    line("program", &shown(&request.program));
    for (i, arg) in request.args.iter().enumerate() {
        line(&format!("arg {}", i + 1), &shown(arg));
    }
    line("cwd", &shown(&request.cwd));
    let mut env: Vec<&(Vec<u8>, Vec<u8>)> = request.env.iter().collect();
    env.sort();
    if env.is_empty() {
        line("env", "(none forwarded)");
    }
    for (name, value) in env {
        line(&format!("env {}", shown(name)), &shown(value));
    }
    if request.key_material.is_empty() {
        line("key material", "(none)");
    } else {
        line("key material", &shown(&request.key_material));
    }
    line(
        "stdin",
        &format!("{} bytes, sha256 {stdin_digest}", request.stdin_len),
    );
    line("key", &key);
    line("key in logs", &format!("key={}", &key[..16]));
    Ok(out)
}

/// Bytes as text: UTF-8 as it is, with control characters and invalid bytes escaped, so
/// that every line stays one line and two different values never look alike.
fn shown(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if out.is_empty() {
        out.push_str("\"\"");
    }
    out
}

/// Feeds the stdin to the key and to its own digest at once.
struct Hashed {
    key: KeyHasher,
    stdin: Sha256,
}

impl Write for Hashed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.key.update(buf);
        self.stdin.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stdin_len: u64) -> Request {
        Request {
            program: b"git".to_vec(),
            args: vec![b"pack-objects".to_vec(), b"--stdout".to_vec()],
            cwd: b"/srv/repo.git".to_vec(),
            env: vec![
                (b"GIT_PROTOCOL".to_vec(), b"version=2".to_vec()),
                (b"HOME".to_vec(), b"/home/git".to_vec()),
            ],
            key_material: Vec::new(),
            stdin_len,
        }
    }

    fn explain(request: &Request, stdin: &[u8]) -> String {
        let mut spill = Spill::new(None);
        spill.write_all(stdin).unwrap();
        explanation(request, &mut spill).unwrap()
    }

    #[test]
    fn the_explanation_names_every_part_and_gives_the_daemons_key() {
        let r = request(3);
        let text = explain(&r, b"abc");
        let mut h = KeyHasher::new(&r, &r.cwd);
        h.update(b"abc");
        let key = h.finish();
        let expected = format!(
            "program        git\n\
             arg 1          pack-objects\n\
             arg 2          --stdout\n\
             cwd            /srv/repo.git\n\
             env GIT_PROTOCOL version=2\n\
             env HOME       /home/git\n\
             key material   (none)\n\
             stdin          3 bytes, sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n\
             key            {key}\n\
             key in logs    key={}\n",
            &key[..16]
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn two_requests_differ_on_the_line_of_the_part_that_differs() {
        let a = explain(&request(3), b"abc");
        let mut r = request(3);
        r.env[1].1 = b"/root".to_vec();
        let b = explain(&r, b"abc");
        let differing: Vec<(&str, &str)> =
            a.lines().zip(b.lines()).filter(|(x, y)| x != y).collect();
        assert_eq!(differing.len(), 3, "{differing:?}");
        assert!(differing[0].0.starts_with("env HOME"));
        assert!(differing[1].0.starts_with("key "));
    }

    #[test]
    fn control_characters_and_invalid_utf8_are_escaped_on_one_line() {
        assert_eq!(shown(b"a\nb\\c\xff"), "a\\nb\\\\c\\xff");
        assert_eq!(shown(b""), "\"\"");
    }
}
