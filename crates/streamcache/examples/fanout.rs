//! Streams one generated blob through a cache to several reader threads at once, checks
//! what every reader got, and prints the throughput.
//!
//! ```text
//! cargo run --release -p streamcache --example fanout
//! cargo run --release -p streamcache --example fanout -- --size 256M --readers 4 --no-backpressure
//! ```
//!
//! The producer makes the blob from a 1 MiB pattern, one 1 MiB write at a time, so the
//! process never holds more than that. The readers join before it starts and follow it
//! through the entry file; the cache lives in a fresh directory under the system
//! temporary directory, removed at the end.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PATTERN: usize = 1 << 20;

struct Args {
    size: u64,
    readers: usize,
    backpressure: bool,
}

const USAGE: &str = "usage: fanout [--size BYTES[K|M|G]] [--readers N] [--no-backpressure]
  --size       blob size, binary units (default 1G)
  --readers    reader threads (default 8)
  --no-backpressure  let the producer run ahead of its readers";

fn parse_size(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        size: 1 << 30,
        readers: 8,
        backpressure: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--size" => {
                let text = value()?;
                args.size = parse_size(&text).ok_or_else(|| format!("bad --size {text:?}"))?;
            }
            "--readers" => {
                let text = value()?;
                args.readers = text
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad --readers {text:?}: want a number above 0"))?;
            }
            "--no-backpressure" => args.backpressure = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// A 1 MiB pattern of pseudo-random bytes (xorshift), so the data does not compress.
fn pattern() -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(PATTERN);
    while bytes.len() < PATTERN {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes
}

/// Whether `chunk`, read at `position`, is the pattern repeated.
fn is_pattern(pattern: &[u8], mut position: u64, mut chunk: &[u8]) -> bool {
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

/// Removes the cache directory when dropped, however `run` ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("fanout: cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / f64::from(1u32 << 20)),
        b => format!("{b} bytes"),
    }
}

fn gbps(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64().max(1e-9) / 1e9
}

fn run(args: &Args) -> Result<(), String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = TempDir(
        std::env::temp_dir().join(format!("streamcache-fanout-{}-{nanos}", std::process::id())),
    );
    let mut cfg = streamcache::Config::new(&dir.0);
    cfg.min_occurrences = 0;
    cfg.backpressure = args.backpressure;
    let cache = streamcache::Cache::new(cfg).map_err(|e| e.to_string())?;
    let pattern = std::sync::Arc::new(pattern());

    println!(
        "fanout: {} to {} readers, back pressure {}, cache in {}",
        human(args.size),
        args.readers,
        if args.backpressure { "on" } else { "off" },
        dir.0.display()
    );

    let (go, gate) = std::sync::mpsc::channel::<()>();
    let producer = {
        let pattern = std::sync::Arc::clone(&pattern);
        let size = args.size;
        move |w: &mut streamcache::Writer| {
            gate.recv().map_err(io::Error::other)?;
            let mut left = size;
            while left > 0 {
                let n = usize::try_from(left).map_or(PATTERN, |l| l.min(PATTERN));
                w.write_all(&pattern[..n])?;
                left -= n as u64;
            }
            Ok(())
        }
    };
    let (first, _) = cache
        .find_or_create("blob", producer)
        .map_err(|e| e.to_string())?;
    let mut streams = vec![first];
    for _ in 1..args.readers {
        let (stream, _) = cache
            .find_or_create("blob", |_| Err(io::Error::other("the entry should exist")))
            .map_err(|e| e.to_string())?;
        streams.push(stream);
    }

    let start = Instant::now();
    go.send(()).map_err(|e| e.to_string())?;
    let results: Vec<Result<(u64, Duration), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                let pattern = &pattern;
                s.spawn(move || {
                    let mut buf = vec![0u8; 256 << 10];
                    let mut total = 0u64;
                    loop {
                        let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                        if n == 0 {
                            break;
                        }
                        if !is_pattern(pattern, total, &buf[..n]) {
                            return Err(format!("wrong bytes at offset {total}"));
                        }
                        total += n as u64;
                    }
                    stream.wait().map_err(|e| format!("producer: {e}"))?;
                    Ok((total, start.elapsed()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("reader panicked".into())))
            .collect()
    });
    let wall = start.elapsed();

    let mut failed = false;
    let mut delivered = 0u64;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok((bytes, time)) if *bytes == args.size => {
                delivered += bytes;
                println!(
                    "reader {i:>2}: {bytes} bytes in {:.3} s, {:.2} GB/s",
                    time.as_secs_f64(),
                    gbps(*bytes, *time)
                );
            }
            Ok((bytes, _)) => {
                failed = true;
                println!("reader {i:>2}: got {bytes} bytes, expected {}", args.size);
            }
            Err(e) => {
                failed = true;
                println!("reader {i:>2}: failed: {e}");
            }
        }
    }
    println!(
        "wall time {:.3} s; aggregate {:.2} GB/s delivered; producer {:.2} GB/s",
        wall.as_secs_f64(),
        gbps(delivered, wall),
        gbps(args.size, wall)
    );
    drop(cache);
    if failed {
        return Err("some readers did not get the whole blob".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("fanout: {message}");
            }
            eprintln!("{USAGE}");
            return if message.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fanout: {message}");
            ExitCode::FAILURE
        }
    }
}
