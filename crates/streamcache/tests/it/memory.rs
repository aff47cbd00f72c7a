//! Memory stays flat however large the entry: one producer streams 1 GiB to 16 readers
//! and the process's peak resident set (VmHWM) stays under 64 MiB.
//!
//! Other tests in this binary would raise the peak of a shared process, so the test runs
//! its workload in a child: it starts this test binary again, filtered to itself, with
//! an environment variable that makes it do the work. The child asserts its own peak and
//! prints it; the parent asserts that the child passed and checks the printed figure.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;

use crate::support::never;

const CHILD: &str = "STREAMCACHE_IT_MEMORY_CHILD";
const NAME: &str =
    "memory::one_producer_streaming_one_gib_to_sixteen_readers_keeps_peak_rss_under_64_mib";
const SIZE: u64 = 1 << 30;
const READERS: usize = 16;
const PATTERN: usize = 1 << 20;
const LIMIT_KIB: u64 = 64 << 10;
const REPORT: &str = "streamcache memory test: peak_rss_kib=";

#[test]
fn one_producer_streaming_one_gib_to_sixteen_readers_keeps_peak_rss_under_64_mib() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("start the child test process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let peak: u64 = stdout
        .lines()
        .find_map(|line| line.split_once(REPORT).map(|(_, figure)| figure))
        .unwrap_or_else(|| panic!("the child did not report its peak:\n{stdout}\n{stderr}"))
        .trim()
        .parse()
        .expect("a number of KiB");
    eprintln!("peak RSS of the child streaming 1 GiB to {READERS} readers: {peak} KiB");
    assert!(
        peak < LIMIT_KIB,
        "peak RSS {peak} KiB, limit {LIMIT_KIB} KiB"
    );
}

/// The peak resident set of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("a VmHWM line in kB")
}

/// A directory with room for the 1 GiB entry: /dev/shm if it has plenty, else the
/// temporary directory.
fn roomy_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    match rustix::fs::statvfs(&shm) {
        Ok(st) if st.f_bavail.saturating_mul(st.f_frsize) > 3 * SIZE => shm,
        _ => std::env::temp_dir(),
    }
}

/// Checks that `chunk`, found at `position` of the stream, is the pattern repeated.
fn matches_pattern(pattern: &[u8], mut position: u64, mut chunk: &[u8]) -> bool {
    while !chunk.is_empty() {
        let at = (position % pattern.len() as u64) as usize;
        let n = chunk.len().min(pattern.len() - at);
        if chunk[..n] != pattern[at..at + n] {
            return false;
        }
        chunk = &chunk[n..];
        position += n as u64;
    }
    true
}

fn child() {
    let base = tempfile::Builder::new()
        .prefix("streamcache-memory-")
        .tempdir_in(roomy_dir())
        .expect("temporary directory");
    let cfg = crate::support::real_config(&base.path().join("cache"));
    let cache = streamcache::Cache::new(cfg).unwrap();
    let pattern = std::sync::Arc::new(crate::support::random_bytes(PATTERN));

    let (go, gate) = mpsc::channel::<()>();
    let producer = {
        let pattern = std::sync::Arc::clone(&pattern);
        move |w: &mut streamcache::Writer| {
            gate.recv().map_err(io::Error::other)?;
            for _ in 0..SIZE / PATTERN as u64 {
                w.write_all(&pattern)?;
            }
            Ok(())
        }
    };
    let (first, created) = cache.find_or_create("blob", producer).unwrap();
    assert!(created);
    let mut streams = vec![first];
    for _ in 1..READERS {
        let (stream, created) = cache.find_or_create("blob", never).unwrap();
        assert!(!created);
        streams.push(stream);
    }
    go.send(()).unwrap();
    let totals: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                let pattern = &pattern;
                s.spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut total = 0u64;
                    loop {
                        let n = stream.read(&mut buf).expect("read");
                        if n == 0 {
                            break;
                        }
                        assert!(
                            matches_pattern(pattern, total, &buf[..n]),
                            "bytes at {total} differ from what was written"
                        );
                        total += n as u64;
                    }
                    stream.wait().expect("the producer succeeds");
                    total
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        totals.iter().all(|&t| t == SIZE),
        "every reader got 1 GiB: {totals:?}"
    );
    drop(cache);

    let peak = peak_rss_kib();
    // On a line of its own: the harness has already printed "test <name> ... ".
    println!("\n{REPORT}{peak}");
    io::stdout().flush().unwrap();
    assert!(
        peak < LIMIT_KIB,
        "peak RSS {peak} KiB, limit {LIMIT_KIB} KiB"
    );
}
