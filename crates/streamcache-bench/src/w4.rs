//! W4: a slow reader, and how far the writer runs ahead of it.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ctx::{Ctx, Fig, Limit};
use crate::data::{self, show_size, Span, CHUNK, MIB};
use crate::sys::Fs;
use crate::workloads::{cache, entry_file, reference, Setup};

const KEY: &str = "w4-slow-reader";

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let size = ctx.opts.w4_size;
    let s = show_size(size);
    let data = Arc::clone(&ctx.data);
    let label = format!("w4 {} slow reader S={s}", fs.name());
    let max_lead = ctx.opts.max_lead;
    let m = ctx.measure(&label, Some(fs), |dir| {
        let cache = cache(dir, Setup::new(true, max_lead))?;
        let consumed = Arc::new(AtomicU64::new(0));
        let lead_b = Arc::new(AtomicU64::new(0));
        let span: Span = Arc::default();
        let producer = {
            let (data, consumed, lead_b, span) = (
                Arc::clone(&data),
                Arc::clone(&consumed),
                Arc::clone(&lead_b),
                Arc::clone(&span),
            );
            move |w: &mut streamcache::Writer| {
                // (b): after every write returns, bytes written minus the reader's count.
                data::produce(w, &data, size, &span, |written| {
                    let lead = written.saturating_sub(consumed.load(Ordering::SeqCst));
                    lead_b.fetch_max(lead, Ordering::Relaxed);
                })
            }
        };
        let t0 = Instant::now();
        let (mut stream, created) = cache.find_or_create(KEY, producer)?;
        if !created {
            return Err(io::Error::other("the slow reader did not create the entry"));
        }
        let path = entry_file(dir)?;
        let done = AtomicBool::new(false);
        let (got, lead_a, lead_c, samples) =
            std::thread::scope(|sc| -> io::Result<(u64, u64, u64, u64)> {
                // (a): reader count, file size, reader count again; kept only if the reader
                // did not move in between. (c), in the same loop: the pipe's own cursors,
                // bytes written and the fastest reader's position, read at one instant.
                let sampler = sc.spawn(|| -> io::Result<(u64, u64, u64)> {
                    let mut max = 0u64;
                    let mut max_c = 0u64;
                    let mut kept = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        let before = consumed.load(Ordering::SeqCst);
                        let len = std::fs::metadata(&path)?.len();
                        if consumed.load(Ordering::SeqCst) == before {
                            max = max.max(len.saturating_sub(before));
                            kept += 1;
                        }
                        if let Some(e) = cache.entries().iter().find(|e| e.key == KEY) {
                            max_c = max_c.max(e.written - e.fastest_read);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok((max, max_c, kept))
                });
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                let mut next = MIB;
                let read = (|| -> io::Result<()> {
                    loop {
                        let n = stream.read(&mut buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        total += n as u64;
                        consumed.store(total, Ordering::SeqCst);
                        if total >= next {
                            std::thread::sleep(Duration::from_millis(10));
                            next += MIB;
                        }
                    }
                })();
                done.store(true, Ordering::Relaxed);
                let sampled = sampler
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("sampler panicked")));
                read?;
                let (max, max_c, kept) = sampled?;
                Ok((total, max, max_c, kept))
            })?;
        stream.wait()?;
        drop(stream);
        let total_time = t0.elapsed().as_secs_f64();
        if got != size {
            return Err(io::Error::other(format!(
                "the reader got {got} of {size} bytes"
            )));
        }
        Ok(vec![
            ("lead_a", lead_a as f64 / 1024.0),
            ("lead_b", lead_b.load(Ordering::Relaxed) as f64 / 1024.0),
            ("lead_c", lead_c as f64 / 1024.0),
            ("samples", samples as f64),
            ("total", total_time),
        ])
    })?;
    let fig =
        |figure, key, unit| Fig::new("w4", Some(fs), figure, key, unit).param("S", s.as_str());
    for (figure, key) in [
        (
            "max writer lead (a) file size - consumed, sampled",
            "lead_a",
        ),
        (
            "max writer lead (b) written - consumed, after each write",
            "lead_b",
        ),
        (
            "max writer lead (c) pipe cursors wcursor - rcursor, sampled",
            "lead_c",
        ),
    ] {
        ctx.emit(
            &m,
            fig(figure, key, "KiB")
                .limit(Limit::OneWrite)
                .reference(reference("w4 lead", fs)),
        )?;
    }
    ctx.emit(&m, fig("samples kept by (a)", "samples", "count"))?;
    ctx.emit(
        &m,
        fig(
            "total time (2.56 s of it sleeping at 256 MiB)",
            "total",
            "s",
        ),
    )?;
    Ok(())
}
