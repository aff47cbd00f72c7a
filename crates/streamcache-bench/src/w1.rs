//! W1: fan-out of one key to N readers; back pressure off; the zero-copy variant; peak
//! RSS in a child process.

use std::io;
use std::process::Command;

use crate::ctx::{Ctx, Fig, Limit, Sample};
use crate::data::{show_size, GIB};
use crate::sys::Fs;
use crate::workloads::{self, fanout, reference, Setup, Sink};

/// What one fan-out of `size` bytes to `n` readers gives, from its wall time and its
/// producer's time in seconds: wall, aggregate read, fan-out and writer rates.
fn fanout_samples(n: usize, size: u64, wall: f64, writer: f64) -> Sample {
    vec![
        ("wall", wall),
        ("aggregate", n as f64 * size as f64 / wall / 1e9),
        ("fanout", (n + 1) as f64 * size as f64 / wall / 1e9),
        ("writer", size as f64 / writer / 1e9),
    ]
}

/// W1-async: the fan-out read by N tokio tasks on two worker threads, held against
/// the reference's W1 of the same N.
pub(crate) fn run_async(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let size = ctx.opts.size;
    let s = show_size(size);
    for n in ctx.opts.readers.clone() {
        let data = std::sync::Arc::clone(&ctx.data);
        let max_lead = ctx.opts.max_lead;
        let label = format!("w1-async {} N={n} S={s}", fs.name());
        let m = ctx.measure(&label, Some(fs), |dir| {
            let r = workloads::fanout_async(dir, &data, n, size, max_lead)?;
            Ok(fanout_samples(n, size, r.wall, r.writer))
        })?;
        let fig = |figure, key, unit| {
            Fig::new("w1-async", Some(fs), figure, key, unit)
                .param("N", n)
                .param("S", s.as_str())
                .compare_with("w1")
        };
        ctx.emit(&m, fig("wall", "wall", "s"))?;
        // On a Xeon the reference is WORKLOADS.md's table, which has W1's aggregate.
        let table = reference(&format!("w1 aggregate {n}"), fs).filter(|_| size == GIB);
        ctx.emit(
            &m,
            fig("aggregate read N*S/wall", "aggregate", "GB/s")
                .limit(Limit::Copy2)
                .reference(table),
        )?;
        let mut f = fig("fan-out (N+1)*S/wall", "fanout", "GB/s").limit(Limit::Copy2);
        if n == 16 || n == 64 {
            f = f.target(">= 1.5x the reference's W1");
        }
        ctx.emit(&m, f)?;
        ctx.emit(
            &m,
            fig("writer S/producer time", "writer", "GB/s").limit(Limit::Write),
        )?;
    }
    Ok(())
}

pub(crate) fn run_fanout(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let size = ctx.opts.size;
    let s = show_size(size);
    let def = size == GIB;
    for n in ctx.opts.readers.clone() {
        let data = std::sync::Arc::clone(&ctx.data);
        let max_lead = ctx.opts.max_lead;
        let label = format!("w1 {} N={n} S={s}", fs.name());
        let m = ctx.measure(&label, Some(fs), |dir| {
            let r = fanout(
                dir,
                &data,
                n,
                size,
                Setup::new(true, max_lead),
                Sink::Discard,
            )?;
            Ok(fanout_samples(n, size, r.wall, r.writer))
        })?;
        let fig = |figure, key, unit| {
            Fig::new("w1", Some(fs), figure, key, unit)
                .param("N", n)
                .param("S", s.as_str())
        };
        ctx.emit(&m, fig("wall", "wall", "s"))?;
        ctx.emit(
            &m,
            fig("aggregate read N*S/wall", "aggregate", "GB/s")
                .limit(Limit::Copy2)
                .reference(reference(&format!("w1 aggregate {n}"), fs).filter(|_| def)),
        )?;
        ctx.emit(
            &m,
            fig(
                "aggregate read N*S/wall vs cached pread",
                "aggregate",
                "GB/s",
            )
            .limit(Limit::Pread2),
        )?;
        let mut f = fig("fan-out (N+1)*S/wall", "fanout", "GB/s").limit(Limit::Copy2);
        if n == 16 {
            f = f.target(">= 70% of W0 copy x2");
        } else if n == 64 {
            f = f.target(">= 85% of W0 copy x2");
        }
        ctx.emit(&m, f)?;
        let mut f = fig("writer S/producer time", "writer", "GB/s")
            .limit(Limit::Write)
            .reference(reference(&format!("w1 writer {n}"), fs).filter(|_| def));
        if n == 1 {
            f = f.target(">= 85% of W0 write");
        }
        ctx.emit(&m, f)?;
        if n == 1 {
            ctx.emit(
                &m,
                fig("writer vs raw turns with a free hand-off", "writer", "GB/s")
                    .limit(Limit::Turns),
            )?;
        }
    }

    // Back pressure off, one reader.
    let data = std::sync::Arc::clone(&ctx.data);
    let max_lead = ctx.opts.max_lead;
    let label = format!("w1 {} N=1 S={s} back pressure off", fs.name());
    let m = ctx.measure(&label, Some(fs), |dir| {
        let r = fanout(
            dir,
            &data,
            1,
            size,
            Setup::new(false, max_lead),
            Sink::Discard,
        )?;
        Ok(vec![
            ("wall", r.wall),
            ("writer", size as f64 / r.writer / 1e9),
        ])
    })?;
    let fig = |figure, key, unit| {
        Fig::new("w1", Some(fs), figure, key, unit)
            .param("N", 1)
            .param("S", s.as_str())
            .param("backpressure", "off")
    };
    ctx.emit(&m, fig("wall", "wall", "s"))?;
    ctx.emit(
        &m,
        fig("writer S/producer time", "writer", "GB/s")
            .limit(Limit::Write)
            .target(">= 95% of W0 write"),
    )?;
    ctx.emit(
        &m,
        fig(
            "writer vs raw follow with a free hand-off",
            "writer",
            "GB/s",
        )
        .limit(Limit::Follow),
    )?;
    Ok(())
}

/// Readers copy into a Unix socket (drained by a thread per reader) through
/// `Stream::send_to` and, in the same repetition, with plain read and write.
pub(crate) fn run_zero_copy(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let size = ctx.opts.size;
    let s = show_size(size);
    for n in ctx.opts.readers.clone() {
        let data = std::sync::Arc::clone(&ctx.data);
        let max_lead = ctx.opts.max_lead;
        let label = format!("w1-zc {} N={n} S={s} send_to vs read+write", fs.name());
        let bytes = n as f64 * size as f64;
        let m = ctx.measure(&label, Some(fs), |dir| {
            let a = dir.join("sendto");
            let zc = fanout(&a, &data, n, size, Setup::new(true, max_lead), Sink::SendTo)?;
            std::fs::remove_dir_all(&a)?;
            if zc.sendfile_bytes != n as u64 * size {
                return Err(io::Error::other(format!(
                    "send_to moved {} bytes with sendfile, not {}",
                    zc.sendfile_bytes,
                    n as u64 * size
                )));
            }
            let plain = fanout(
                &dir.join("plain"),
                &data,
                n,
                size,
                Setup::new(true, max_lead),
                Sink::PlainSocket,
            )?;
            let per_cpu = |cpu: f64| bytes / cpu / 1e9;
            let v: Sample = vec![
                ("zc_wall", zc.wall),
                ("plain_wall", plain.wall),
                ("zc_cpu", per_cpu(zc.cpu_process)),
                ("plain_cpu", per_cpu(plain.cpu_process)),
                ("zc_cpu_readers", per_cpu(zc.cpu_readers)),
                ("plain_cpu_readers", per_cpu(plain.cpu_readers)),
                ("cpu_ratio", plain.cpu_process / zc.cpu_process),
                ("cpu_readers_ratio", plain.cpu_readers / zc.cpu_readers),
                ("wall_ratio", zc.wall / plain.wall),
            ];
            Ok(v)
        })?;
        let fig = |figure, key, unit| {
            Fig::new("w1-zc", Some(fs), figure, key, unit)
                .param("N", n)
                .param("S", s.as_str())
        };
        ctx.emit(&m, fig("fan-out wall, send_to into socket", "zc_wall", "s"))?;
        ctx.emit(
            &m,
            fig("fan-out wall, read+write into socket", "plain_wall", "s"),
        )?;
        ctx.emit(
            &m,
            fig("wall send_to / wall read+write", "wall_ratio", "x").target("<= 1 (never slower)"),
        )?;
        ctx.emit(
            &m,
            fig("bytes per process CPU-s, send_to", "zc_cpu", "GB/CPU-s"),
        )?;
        ctx.emit(
            &m,
            fig(
                "bytes per process CPU-s, read+write",
                "plain_cpu",
                "GB/CPU-s",
            ),
        )?;
        ctx.emit(
            &m,
            fig("bytes per CPU-s gain (process)", "cpu_ratio", "x").target(">= 1.5"),
        )?;
        ctx.emit(
            &m,
            fig(
                "bytes per reader CPU-s, send_to",
                "zc_cpu_readers",
                "GB/CPU-s",
            ),
        )?;
        ctx.emit(
            &m,
            fig(
                "bytes per reader CPU-s, read+write",
                "plain_cpu_readers",
                "GB/CPU-s",
            ),
        )?;
        ctx.emit(
            &m,
            fig(
                "bytes per CPU-s gain (reader threads)",
                "cpu_readers_ratio",
                "x",
            )
            .target(">= 1.5"),
        )?;
    }
    Ok(())
}

/// Peak RSS of W1 with N = 64, each repetition in a fresh child process of this binary.
pub(crate) fn run_rss(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    // Not current_exe(): a concurrent `cargo build` may replace the file during a long
    // run, and /proc/self/exe still names the binary that is running.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let n = 64;
    for size in ctx.opts.rss_sizes.clone() {
        let s = show_size(size);
        let label = format!("w1-rss {} N={n} S={s} (child process)", fs.name());
        let m = ctx.measure(&label, Some(fs), |dir| {
            let out = Command::new(&exe)
                .arg("__rss-child")
                .arg(dir)
                .arg(size.to_string())
                .arg(n.to_string())
                .output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "rss child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |name: &str| -> io::Result<f64> {
                text.split_whitespace()
                    .skip_while(|w| *w != name)
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| io::Error::other(format!("rss child printed {text:?}")))
            };
            Ok(vec![
                ("peak", field("peak_rss_bytes")? / (1 << 20) as f64),
                ("baseline", field("baseline_rss_bytes")? / (1 << 20) as f64),
            ])
        })?;
        let fig = |figure, key| {
            Fig::new("w1-rss", Some(fs), figure, key, "MiB")
                .param("N", n)
                .param("S", s.as_str())
        };
        ctx.emit(
            &m,
            fig("peak RSS (VmHWM)", "peak")
                .reference(reference("w1 rss 64", fs).filter(|_| size == GIB))
                .target("<= 12 MiB"),
        )?;
        ctx.emit(&m, fig("RSS before the workload", "baseline"))?;
    }
    Ok(())
}

/// The child side of [`run_rss`]: one fan-out run, then the peak RSS on stdout.
pub(crate) fn rss_child(args: &[String]) -> io::Result<()> {
    let bad = || io::Error::other("usage: __rss-child DIR SIZE N");
    let dir = args.first().ok_or_else(bad)?;
    let size: u64 = args.get(1).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let data = crate::data::buffer();
    let baseline = crate::sys::peak_rss()?;
    fanout(
        std::path::Path::new(dir),
        &data,
        n,
        size,
        Setup::new(true, 0),
        Sink::Discard,
    )?;
    let peak = crate::sys::peak_rss()?;
    println!("baseline_rss_bytes {baseline} peak_rss_bytes {peak}");
    Ok(())
}
