//! W2: late joiners. Reader i starts at t0 + i * 50 ms; time to first byte per reader.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ctx::{Ctx, Fig, Limit};
use crate::data::{self, show_size, Span, CHUNK, GIB};
use crate::sys::Fs;
use crate::workloads::{cache, reference, Setup};

const READERS: usize = 8;
const KEY: &str = "w2-late-joiners";

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let size = ctx.opts.size;
    let s = show_size(size);
    let data = Arc::clone(&ctx.data);
    let label = format!("w2 {} 8 readers S={s}", fs.name());
    let max_lead = ctx.opts.max_lead;
    let m = ctx.measure(&label, Some(fs), |dir| {
        let cache = cache(dir, Setup::new(true, max_lead))?;
        let span: Span = Arc::default();
        // Room for the threads to start before t0.
        let t0 = Instant::now() + Duration::from_millis(20);
        let results: Vec<io::Result<(Instant, Duration, bool)>> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..READERS)
                .map(|i| {
                    let (cache, data, span) = (&cache, &data, &span);
                    sc.spawn(move || -> io::Result<(Instant, Duration, bool)> {
                        let mut buf = vec![0u8; CHUNK];
                        let at = t0 + Duration::from_millis(50 * i as u64);
                        if let Some(d) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                        let start = Instant::now();
                        let (mut stream, created) =
                            cache.find_or_create(KEY, data::producer(data, size, span))?;
                        let mut ttfb = None;
                        let mut got = 0u64;
                        loop {
                            let n = stream.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            if ttfb.is_none() {
                                ttfb = Some(start.elapsed());
                            }
                            got += n as u64;
                        }
                        stream.wait()?;
                        drop(stream);
                        let done = Instant::now();
                        if got != size {
                            return Err(io::Error::other(format!(
                                "reader {i} got {got} of {size} bytes"
                            )));
                        }
                        Ok((done, ttfb.unwrap_or_default(), created))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("reader panicked")))
                })
                .collect()
        });
        let mut last = t0;
        let mut worst_late = Duration::ZERO;
        let mut first = Duration::ZERO;
        for (i, r) in results.into_iter().enumerate() {
            let (done, ttfb, created) = r?;
            if created != (i == 0) {
                return Err(io::Error::other(format!(
                    "reader {i} reported created={created}; only reader 0 may create"
                )));
            }
            last = last.max(done);
            if i == 0 {
                first = ttfb;
            } else {
                worst_late = worst_late.max(ttfb);
            }
        }
        let total = (last - t0).as_secs_f64();
        Ok(vec![
            ("total", total),
            ("rate", size as f64 / total / 1e9),
            ("ttfb_late", worst_late.as_secs_f64() * 1e3),
            ("ttfb_first", first.as_secs_f64() * 1e3),
        ])
    })?;
    let def = size == GIB;
    let fig = |figure, key, unit| {
        Fig::new("w2", Some(fs), figure, key, unit)
            .param("readers", READERS)
            .param("S", s.as_str())
    };
    ctx.emit(
        &m,
        fig("total time", "total", "s").reference(reference("w2 total", fs).filter(|_| def)),
    )?;
    ctx.emit(&m, fig("S/total", "rate", "GB/s").limit(Limit::Write))?;
    ctx.emit(
        &m,
        fig("worst late-joiner TTFB (readers 1-7)", "ttfb_late", "ms")
            .reference(reference("w2 ttfb", fs).filter(|_| def))
            .target("< 1 ms in every run (see max)"),
    )?;
    ctx.emit(&m, fig("TTFB of reader 0 (creates)", "ttfb_first", "ms"))?;
    Ok(())
}
