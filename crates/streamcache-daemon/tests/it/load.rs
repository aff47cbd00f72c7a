//! Load: 200 concurrent clients of one key, and 2,000 distinct keys. Every client gets
//! exactly the producer's bytes (SHA-256 digests), and the daemon gives back every
//! thread and descriptor and keeps its memory flat.

use std::io::Read;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sha2::Digest;
use streamcache_daemon::wire::{ExitStatus, Request, Status};

use crate::support::{
    entry_fds, fds_besides_entries, hex, lasting_threads, sha256_hex, spawn_client, status_kib,
    text, wait_for_fds, wait_for_threads, wire_roundtrip, Daemon,
};

/// Deterministic bytes that neither repeat nor compress.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The digest of a client's stdout, its exit status and stderr, read as it streams.
fn digest_of(mut client: Child) -> (String, Option<i32>, String) {
    let mut stdout = client.stdout.take().unwrap();
    let mut stderr = client.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        stderr.read_to_end(&mut s).unwrap();
        s
    });
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    let status = client.wait().unwrap();
    (
        hex(&sha.finalize()),
        status.code(),
        text(&err.join().unwrap()),
    )
}

#[test]
fn two_hundred_concurrent_clients_of_one_key_each_get_every_byte() {
    const CLIENTS: usize = 200;
    let daemon = Daemon::start(&["--allow", "cat"]);
    let pid = daemon.pid();
    let entries = daemon.dir.path().join("cache/entries");
    let content = data(2 << 20);
    let expected = sha256_hex(&content);
    let file = daemon.dir.path().join("data.bin");
    std::fs::write(&file, &content).unwrap();
    daemon.settle();
    let fds_before = fds_besides_entries(pid, &entries);
    let threads_before = lasting_threads(pid);
    let storm = |clients: usize| {
        let command = ["cat", file.to_str().unwrap()];
        let readers: Vec<_> = (0..clients)
            .map(|_| {
                let client = spawn_client(daemon.exec_cmd(false, &command));
                std::thread::spawn(move || digest_of(client))
            })
            .collect();
        for (i, reader) in readers.into_iter().enumerate() {
            let (digest, code, err) = reader.join().unwrap();
            assert_eq!(code, Some(0), "client {i}: {err}");
            assert_eq!(digest, expected, "client {i}: every byte, in order");
            assert_eq!(err, "", "client {i}");
        }
    };
    // Warm up with a few, then the storm.
    storm(10);
    let warm = status_kib(pid, "VmRSS");
    storm(CLIENTS);
    let after = status_kib(pid, "VmRSS");
    eprintln!("{CLIENTS} clients of one key: daemon VmRSS {warm} KiB after the warm-up, {after} KiB after");
    assert_eq!(
        daemon.stat("children_started_total"),
        1,
        "one key, one command"
    );
    assert_eq!(daemon.stat("hits_total"), (10 + CLIENTS - 1) as u64);
    wait_for_threads(pid, &threads_before);
    wait_for_fds(pid, &entries, &fds_before);
    assert!(
        entry_fds(pid, &entries) <= 1,
        "at most the kept handle: {:?}",
        crate::support::open_fds(pid)
    );
    assert!(
        after < warm + 32 * 1024,
        "RSS grew from {warm} KiB to {after} KiB"
    );
}

#[test]
fn two_thousand_distinct_keys_get_their_own_bytes_and_leave_no_threads_descriptors_or_memory() {
    const KEYS: usize = 2000;
    const WORKERS: usize = 4;
    let daemon = Daemon::start(&["--allow", "head"]);
    let pid = daemon.pid();
    let entries = daemon.dir.path().join("cache/entries");
    let content = Arc::new(data(KEYS * 97));
    let file = daemon.dir.path().join("data.bin");
    std::fs::write(&file, content.as_slice()).unwrap();
    daemon.settle();
    let fds_before = fds_besides_entries(pid, &entries);
    let threads_before = lasting_threads(pid);
    // Key k is `head -c <97 k + 1> data.bin`: every key its own length and digest.
    let run_keys = |range: std::ops::Range<usize>| {
        let next = Arc::new(AtomicUsize::new(range.start));
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let next = Arc::clone(&next);
                let content = Arc::clone(&content);
                let socket = daemon.socket.clone();
                let file = file.clone();
                let end = range.end;
                std::thread::spawn(move || loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= end {
                        break;
                    }
                    let len = 97 * k + 1;
                    let request = Request {
                        program: b"head".to_vec(),
                        args: vec![
                            b"-c".to_vec(),
                            len.to_string().into_bytes(),
                            file.as_os_str().as_encoded_bytes().to_vec(),
                        ],
                        cwd: b"/".to_vec(),
                        env: vec![(b"PATH".to_vec(), b"/usr/bin:/bin".to_vec())],
                        ..Request::default()
                    };
                    let reply = wire_roundtrip(&socket, &request, b"");
                    let status = reply.status.as_ref().map(|s| s.0);
                    assert_eq!(status, Some(Status::Miss), "key {k}: {:?}", reply.status);
                    assert_eq!(
                        sha256_hex(&reply.stdout),
                        sha256_hex(&content[..len.min(content.len())]),
                        "key {k}"
                    );
                    assert_eq!(reply.exit, Some(ExitStatus::Code(0)), "key {k}");
                    assert_eq!(reply.verdict, Some(Ok(())), "key {k}");
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    };
    run_keys(0..200);
    let warm = status_kib(pid, "VmRSS");
    run_keys(200..KEYS);
    let after = status_kib(pid, "VmRSS");
    eprintln!("{KEYS} keys: daemon VmRSS {warm} KiB after 200, {after} KiB after all");
    assert_eq!(daemon.stat("misses_total"), KEYS as u64);
    assert_eq!(daemon.stat("index_entries"), KEYS as u64);
    assert_eq!(daemon.stat("children_running"), 0);
    wait_for_threads(pid, &threads_before);
    wait_for_fds(pid, &entries, &fds_before);
    // Read handles of recent entries are kept on purpose, a bounded number of them.
    let kept = entry_fds(pid, &entries);
    assert!(kept <= 4096, "{kept} kept entry handles");
    assert!(
        after < warm + 32 * 1024,
        "RSS grew from {warm} KiB to {after} KiB"
    );
}
