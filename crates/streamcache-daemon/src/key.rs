//! The cache key of a request: SHA-256 over a canonical, length-prefixed encoding.
//!
//! Every field is prefixed by its length (or count), so no two different requests
//! encode to the same bytes: `["ab", "c"]` and `["a", "bc"]` differ. The fields, in
//! order: a format tag (bump it to invalidate every key of an older encoding), the
//! program, each argument, the canonical working directory, each environment variable
//! sorted by name, the extra key material, the stdin length, then the stdin bytes.

use sha2::{Digest, Sha256};

use crate::wire::request::Request;

/// Changes whenever the key encoding or the entry format changes.
const FORMAT_TAG: &[u8] = b"streamcache-daemon key v1";

/// Hashes a request's fields, then its stdin as it streams in.
#[derive(Debug, Clone)]
pub(crate) struct KeyHasher {
    sha: Sha256,
}

impl KeyHasher {
    /// Starts a key for `request` run in `cwd` (the daemon's canonical form of
    /// `request.cwd`). The stdin must follow through [`KeyHasher::update`].
    pub(crate) fn new(request: &Request, cwd: &[u8]) -> KeyHasher {
        let mut h = KeyHasher { sha: Sha256::new() };
        h.field(FORMAT_TAG);
        h.field(&request.program);
        h.count(request.args.len());
        for arg in &request.args {
            h.field(arg);
        }
        h.field(cwd);
        let mut env: Vec<&(Vec<u8>, Vec<u8>)> = request.env.iter().collect();
        env.sort();
        h.count(env.len());
        for (name, value) in env {
            h.field(name);
            h.field(value);
        }
        h.field(&request.key_material);
        h.sha.update(request.stdin_len.to_be_bytes());
        h
    }

    fn count(&mut self, n: usize) {
        self.sha.update((n as u64).to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.count(bytes.len());
        self.sha.update(bytes);
    }

    /// Adds stdin bytes.
    pub(crate) fn update(&mut self, stdin: &[u8]) {
        self.sha.update(stdin);
    }

    /// The key: 64 lowercase hex digits.
    pub(crate) fn finish(self) -> String {
        hex(&self.sha.finalize())
    }
}

/// Bytes as lowercase hex digits (how keys and digests are shown).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(request: &Request, stdin: &[u8]) -> String {
        let mut h = KeyHasher::new(request, &request.cwd);
        h.update(stdin);
        h.finish()
    }

    fn request() -> Request {
        Request {
            program: b"git".to_vec(),
            args: vec![b"pack-objects".to_vec(), b"--stdout".to_vec()],
            cwd: b"/srv/repo.git".to_vec(),
            env: vec![
                (b"GIT_PROTOCOL".to_vec(), b"version=2".to_vec()),
                (b"GIT_DIR".to_vec(), b".".to_vec()),
            ],
            key_material: Vec::new(),
            stdin_len: 3,
        }
    }

    #[test]
    fn the_same_request_gives_the_same_key_whatever_the_env_order() {
        let a = request();
        let mut b = request();
        b.env.reverse();
        assert_eq!(key(&a, b"abc"), key(&b, b"abc"));
        assert_eq!(key(&a, b"abc").len(), 64);
    }

    #[test]
    fn stdin_split_across_updates_gives_the_same_key() {
        let r = request();
        let mut h = KeyHasher::new(&r, &r.cwd);
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), key(&r, b"abc"));
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = key(&request(), b"abc");
        let mut variants = Vec::new();
        let mut r = request();
        r.program = b"git2".to_vec();
        variants.push(key(&r, b"abc"));
        let mut r = request();
        r.args.push(b"--progress".to_vec());
        variants.push(key(&r, b"abc"));
        let mut r = request();
        r.cwd = b"/srv/other.git".to_vec();
        variants.push(key(&r, b"abc"));
        let mut r = request();
        r.env[0].1 = b"version=1".to_vec();
        variants.push(key(&r, b"abc"));
        let mut r = request();
        r.key_material = b"tenant-7".to_vec();
        variants.push(key(&r, b"abc"));
        variants.push(key(&request(), b"abd"));
        for v in &variants {
            assert_ne!(v, &base);
        }
        let distinct: std::collections::HashSet<_> = variants.iter().collect();
        assert_eq!(distinct.len(), variants.len());
    }

    #[test]
    fn moving_bytes_between_adjacent_arguments_changes_the_key() {
        let mut a = request();
        a.args = vec![b"ab".to_vec(), b"c".to_vec()];
        let mut b = request();
        b.args = vec![b"a".to_vec(), b"bc".to_vec()];
        assert_ne!(key(&a, b""), key(&b, b""));
        // Moving bytes from the last argument into the cwd is caught too.
        let mut c = request();
        c.args = vec![b"ab".to_vec()];
        c.cwd = b"c/srv/repo.git".to_vec();
        let mut d = request();
        d.args = vec![b"abc".to_vec()];
        d.cwd = b"/srv/repo.git".to_vec();
        assert_ne!(key(&c, b""), key(&d, b""));
    }
}
