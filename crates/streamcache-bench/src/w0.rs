//! W0: the machine's limits, measured in the same run and on the same file system as
//! the workloads they are compared with.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::sync::Barrier;
use std::time::Instant;

use crate::ctx::{Ctx, Fig, Limit};
use crate::data::{show_size, CHUNK, MIB};
use crate::sys::Fs;
use crate::workloads::reference;

/// Size of the DRAM copy buffer.
const DRAM: usize = 512 << 20;

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let size = ctx.opts.w0_size;
    let data = std::sync::Arc::clone(&ctx.data);
    let label = format!("w0 {} write+read {}", fs.name(), show_size(size));
    let m = ctx.measure(&label, Some(fs), |dir| {
        let path = dir.join("w0-file");
        let mut buf = vec![0u8; CHUNK];
        let t = Instant::now();
        let mut file = File::create(&path)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(MIB) as usize;
            file.write_all(&data[..n])?;
            left -= n as u64;
        }
        drop(file);
        let write = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let mut file = File::open(&path)?;
        let mut total = 0u64;
        loop {
            match file.read(&mut buf)? {
                0 => break,
                n => total += n as u64,
            }
        }
        let read = t.elapsed().as_secs_f64();
        if total != size {
            return Err(io::Error::other(format!("w0 read {total} bytes of {size}")));
        }
        Ok(vec![
            ("write", size as f64 / write / 1e9),
            ("read", size as f64 / read / 1e9),
        ])
    })?;
    let def = size == 4 << 30;
    let sz = show_size(size);
    for (key, figure, limit) in [
        (
            "write",
            "sequential write, 1 MiB writes, no fsync",
            Limit::Write,
        ),
        (
            "read",
            "sequential read from page cache, 64 KiB reads",
            Limit::Read,
        ),
    ] {
        let fig = Fig::new("w0", Some(fs), figure, key, "GB/s")
            .param("size", sz.as_str())
            .reference(reference(&format!("w0 {key}"), fs).filter(|_| def));
        if let Some(v) = ctx.emit(&m, fig)? {
            ctx.set_limit(Some(fs), limit, v);
        }
    }

    // One writer and one reader with nothing between them but two atomics: what W1 N = 1
    // could do with a hand-off that costs nothing.
    let s_size = ctx.opts.size;
    let label = format!(
        "w0 {} write with a reader behind, {}",
        fs.name(),
        show_size(s_size)
    );
    let m = ctx.measure(&label, Some(fs), |dir| {
        Ok(vec![
            ("alone", write_with_reader(dir, &data, s_size, Turn::Alone)?),
            (
                "follow",
                write_with_reader(dir, &data, s_size, Turn::Follow)?,
            ),
            (
                "turns",
                write_with_reader(dir, &data, s_size, Turn::Strict)?,
            ),
        ])
    })?;
    for (key, figure, limit) in [
        ("alone", "64 KiB writes, no reader", None),
        (
            "follow",
            "64 KiB writes, a reader following (spinning)",
            Some(Limit::Follow),
        ),
        (
            "turns",
            "64 KiB writes, a reader taking turns (spinning)",
            Some(Limit::Turns),
        ),
    ] {
        let fig = Fig::new("w0", Some(fs), figure, key, "GB/s")
            .param("size", show_size(s_size).as_str())
            .limit(Limit::Write);
        if let (Some(v), Some(limit)) = (ctx.emit(&m, fig)?, limit) {
            ctx.set_limit(Some(fs), limit, v);
        }
    }

    // Reads of cache-resident file data: what the readers of a pipe do when they follow
    // the writer closely, page-cache lookups and all.
    let label = format!("w0 {} pread of a cache-resident 1 MiB", fs.name());
    let m = ctx.measure(&label, Some(fs), |dir| {
        let path = dir.join("w0-hot");
        std::fs::write(&path, &data[..MIB as usize])?;
        let file = File::open(&path)?;
        Ok(vec![
            ("pread1", pread_rate(1, &file, 4 * size)?),
            ("pread2", pread_rate(2, &file, 4 * size)?),
        ])
    })?;
    for (key, threads, limit) in [("pread1", 1, None), ("pread2", 2, Some(Limit::Pread2))] {
        let fig = Fig::new(
            "w0",
            Some(fs),
            "pread of a cache-resident 1 MiB file, 64 KiB reads",
            key,
            "GB/s",
        )
        .param("threads", threads);
        if let (Some(v), Some(limit)) = (ctx.emit(&m, fig)?, limit) {
            ctx.set_limit(Some(fs), limit, v);
        }
    }

    // Memory copies. The buffers are made once and touched before any timing.
    let cache_bytes = 4 * size;
    let dram_bytes = size.max(DRAM as u64);
    let mut dram_src = vec![0u8; DRAM];
    let mut dram_dst = vec![0u8; DRAM];
    for (i, chunk) in dram_src.chunks_mut(MIB as usize).enumerate() {
        chunk.copy_from_slice(&data[..chunk.len()]);
        chunk[0] = i as u8;
    }
    dram_dst.fill(1);
    let label = format!("w0 {} memory copy", fs.name());
    let m = ctx.measure(&label, None, |_| {
        Ok(vec![
            ("copy1", copy_rate(1, MIB as usize, cache_bytes, &data)),
            ("copy2", copy_rate(2, MIB as usize, cache_bytes, &data)),
            ("dram1", copy_big(1, &dram_src, &mut dram_dst, dram_bytes)),
            ("dram2", copy_big(2, &dram_src, &mut dram_dst, dram_bytes)),
        ])
    })?;
    drop((dram_src, dram_dst));
    for (key, figure, limit, threads, what) in [
        (
            "copy1",
            "memory copy, cache-resident 1 MiB",
            Limit::Copy1,
            1,
            "cache",
        ),
        (
            "copy2",
            "memory copy, cache-resident 1 MiB",
            Limit::Copy2,
            2,
            "cache",
        ),
        (
            "dram1",
            "memory copy, DRAM 512 MiB",
            Limit::Dram1,
            1,
            "dram",
        ),
        (
            "dram2",
            "memory copy, DRAM 512 MiB",
            Limit::Dram2,
            2,
            "dram",
        ),
    ] {
        let fig = Fig::new("w0", Some(fs), figure, key, "GB/s")
            .param("threads", threads)
            .reference(reference(&format!("w0 {what}{threads}"), fs));
        if let Some(v) = ctx.emit(&m, fig)? {
            ctx.set_limit(Some(fs), limit, v);
        }
    }
    Ok(())
}

/// GB/s of `threads` threads each copying its own `buf`-byte buffer `bytes / buf` times.
fn copy_rate(threads: usize, buf: usize, bytes: u64, data: &[u8]) -> f64 {
    let passes = (bytes / buf as u64).max(1);
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..threads)
        .map(|_| (data[..buf].to_vec(), vec![1u8; buf]))
        .collect();
    let barrier = Barrier::new(threads + 1);
    let t = std::thread::scope(|s| {
        for (src, dst) in pairs.iter_mut() {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for _ in 0..passes {
                    dst.copy_from_slice(black_box(&src[..]));
                    black_box(&mut dst[..]);
                }
            });
        }
        barrier.wait();
        Instant::now()
    });
    (threads as u64 * passes * buf as u64) as f64 / t.elapsed().as_secs_f64() / 1e9
}

#[derive(Clone, Copy, PartialEq)]
enum Turn {
    Alone,
    Follow,
    Strict,
}

/// Writer rate in GB/s of `size` bytes written in 64 KiB writes to a new file in `dir`,
/// with a reader thread `pread`ing behind it into a 64 KiB buffer. The two share only
/// two atomics and spin: `Follow` lets the writer run free, `Strict` makes it wait until
/// the reader has read everything before each write (the back-pressure rule).
fn write_with_reader(dir: &std::path::Path, data: &[u8], size: u64, turn: Turn) -> io::Result<f64> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
    let path = dir.join("w0-turns");
    let mut file = File::create(&path)?;
    let reader_file = File::open(&path)?;
    let written = AtomicU64::new(0);
    let read = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let result = std::thread::scope(|s| -> io::Result<f64> {
        let reader = (turn != Turn::Alone).then(|| {
            s.spawn(|| -> io::Result<()> {
                let mut buf = vec![0u8; CHUNK];
                let mut at = 0u64;
                while at < size {
                    let w = written.load(Acquire);
                    if w <= at {
                        if failed.load(Acquire) {
                            return Ok(());
                        }
                        std::hint::spin_loop();
                        continue;
                    }
                    let want = ((w - at) as usize).min(CHUNK);
                    let n = reader_file.read_at(&mut buf[..want], at)?;
                    if n == 0 {
                        return Err(io::Error::other("w0 turns: file too short"));
                    }
                    at += n as u64;
                    read.store(at, Release);
                }
                black_box(&mut buf);
                Ok(())
            })
        });
        let t = Instant::now();
        let mut at = 0u64;
        let wrote = (|| -> io::Result<()> {
            while at < size {
                if turn == Turn::Strict {
                    while read.load(Acquire) < at {
                        std::hint::spin_loop();
                    }
                }
                let off = (at % MIB) as usize;
                let n = CHUNK.min((size - at) as usize);
                file.write_all(&data[off..off + n])?;
                at += n as u64;
                written.store(at, Release);
            }
            Ok(())
        })();
        let elapsed = t.elapsed().as_secs_f64();
        if wrote.is_err() {
            failed.store(true, Release);
        }
        if let Some(reader) = reader {
            reader
                .join()
                .map_err(|_| io::Error::other("w0 turns: reader panicked"))??;
        }
        wrote?;
        Ok(size as f64 / elapsed / 1e9)
    });
    std::fs::remove_file(&path)?;
    result
}

/// GB/s of `threads` threads each reading `file` (1 MiB, in the page cache) from start to
/// end with 64 KiB `pread`s, over and over, until `bytes` were read by each.
fn pread_rate(threads: usize, file: &File, bytes: u64) -> io::Result<f64> {
    use std::os::unix::fs::FileExt;
    let passes = (bytes / MIB).max(1);
    let barrier = Barrier::new(threads + 1);
    let (t, results) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || -> io::Result<()> {
                    let mut buf = vec![0u8; CHUNK];
                    barrier.wait();
                    for _ in 0..passes {
                        let mut at = 0;
                        while at < MIB {
                            let n = file.read_at(&mut buf, at)?;
                            if n == 0 {
                                return Err(io::Error::other("w0 pread: file too short"));
                            }
                            at += n as u64;
                        }
                        black_box(&mut buf);
                    }
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (t, results)
    });
    let elapsed = t.elapsed().as_secs_f64();
    for r in results {
        r.map_err(|_| io::Error::other("w0 pread thread panicked"))??;
    }
    Ok((threads as u64 * passes * MIB) as f64 / elapsed / 1e9)
}

/// GB/s of `threads` threads copying their share of `src` into `dst` until `bytes` were
/// copied in all.
fn copy_big(threads: usize, src: &[u8], dst: &mut [u8], bytes: u64) -> f64 {
    let share = src.len() / threads;
    let passes = (bytes / src.len() as u64).max(1);
    let barrier = Barrier::new(threads + 1);
    let t = std::thread::scope(|s| {
        for (from, to) in src.chunks(share).zip(dst.chunks_mut(share)) {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for _ in 0..passes {
                    to.copy_from_slice(black_box(from));
                    black_box(&mut *to);
                }
            });
        }
        barrier.wait();
        Instant::now()
    });
    (passes * src.len() as u64) as f64 / t.elapsed().as_secs_f64() / 1e9
}
