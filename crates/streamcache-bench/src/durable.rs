//! The cost of durable entries (`Config::durable`): W1 with one reader, durable off and
//! on in the same repetition (the order alternating), how long the commit takes after
//! the last reader is done, and the adoption of 10,000 committed entries by a cache
//! started on their directory.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::ctx::{Ctx, Fig, Limit};
use crate::data::show_size;
use crate::sys::Fs;
use crate::workloads::{cache, fanout, Setup, Sink};

/// Committed entries the adoption figure starts with.
const ADOPT_ENTRIES: usize = 10_000;
/// Their size.
const ADOPT_SIZE: usize = 4096;

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    writer(ctx, fs)?;
    adoption(ctx, fs)
}

/// W1 N = 1: the producer's rate with durable entries off and on.
fn writer(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let size = ctx.opts.size;
    let s = show_size(size);
    let data = Arc::clone(&ctx.data);
    let max_lead = ctx.opts.max_lead;
    let label = format!("durable {} W1 N=1 S={s}, off and on", fs.name());
    let mut round = 0usize;
    let m = ctx.measure(&label, Some(fs), |dir| {
        round += 1;
        let rate = |durable: bool| -> io::Result<(f64, f64)> {
            let setup = Setup {
                durable,
                ..Setup::new(true, max_lead)
            };
            let at = dir.join(if durable { "on" } else { "off" });
            let r = fanout(&at, &data, 1, size, setup, Sink::Discard)?;
            std::fs::remove_dir_all(&at)?;
            Ok((size as f64 / r.writer / 1e9, r.commit))
        };
        // Alternating which goes first, so that neither always meets a warmer cache.
        let ((off, _), (on, commit)) = if round.is_multiple_of(2) {
            let off = rate(false)?;
            (off, rate(true)?)
        } else {
            let on = rate(true)?;
            (rate(false)?, on)
        };
        Ok(vec![
            ("off", off),
            ("on", on),
            ("ratio", on / off),
            ("commit", commit),
            ("commit_rate", size as f64 / commit / 1e9),
        ])
    })?;
    let fig = |figure, key, unit| {
        Fig::new("durable", Some(fs), figure, key, unit)
            .param("N", 1)
            .param("S", s.as_str())
    };
    ctx.emit(
        &m,
        fig("writer S/producer time, durable off", "off", "GB/s").limit(Limit::Write),
    )?;
    ctx.emit(
        &m,
        fig("writer S/producer time, durable on", "on", "GB/s").limit(Limit::Write),
    )?;
    ctx.emit(
        &m,
        fig("writer durable on / off", "ratio", "x").target(">= 0.95"),
    )?;
    ctx.emit(
        &m,
        fig(
            "commit after the last reader (hash, record, rename)",
            "commit",
            "s",
        ),
    )?;
    ctx.emit(
        &m,
        fig("commit: bytes hashed per second", "commit_rate", "GB/s"),
    )?;
    Ok(())
}

/// 10,000 committed entries of 4 KiB, made by one cache; then a new cache on their
/// directory: how long until its first lookup of one of them is answered (a hit, read
/// whole), and until the background adoption has checked them all.
fn adoption(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let entry: Arc<[u8]> = ctx.data[..ADOPT_SIZE].into();
    let label = format!("durable {} adoption of {ADOPT_ENTRIES} entries", fs.name());
    let m = ctx.measure(&label, Some(fs), |dir| {
        let setup = Setup {
            durable: true,
            ..Setup::new(true, 0)
        };
        {
            let first = cache(dir, setup)?;
            let mut buf = vec![0u8; ADOPT_SIZE];
            for i in 0..ADOPT_ENTRIES {
                let bytes = Arc::clone(&entry);
                let (mut stream, _) =
                    first.find_or_create(&key(i), move |w| w.write_all(&bytes))?;
                while stream.read(&mut buf)? > 0 {}
                stream.wait()?;
            }
            first.wait_durable();
            if first.stats().committed_entries != ADOPT_ENTRIES as u64 {
                return Err(io::Error::other("not every entry was committed"));
            }
        }
        let t = Instant::now();
        let second = cache(dir, setup)?;
        let (mut stream, created) = second.find_or_create(&key(ADOPT_ENTRIES / 2), |_| {
            Err(io::Error::other("a committed entry ran its producer"))
        })?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got)?;
        stream.wait()?;
        let first_lookup = t.elapsed().as_secs_f64();
        if created || got[..] != entry[..] {
            return Err(io::Error::other("the first lookup did not hit its entry"));
        }
        second.wait_adopted();
        let all = t.elapsed().as_secs_f64();
        let stats = second.stats();
        if stats.adopted_entries + stats.shared_hits != ADOPT_ENTRIES as u64 {
            return Err(io::Error::other(format!(
                "adopted {} and found {} by lookup, of {ADOPT_ENTRIES}",
                stats.adopted_entries, stats.shared_hits
            )));
        }
        Ok(vec![("first", first_lookup * 1e3), ("all", all)])
    })?;
    let fig = |figure, key, unit| {
        Fig::new("durable", Some(fs), figure, key, unit)
            .param("entries", ADOPT_ENTRIES)
            .param("size", "4 KiB")
    };
    ctx.emit(
        &m,
        fig("first lookup answered after Cache::new", "first", "ms").target("< 1000 ms"),
    )?;
    ctx.emit(&m, fig("every entry adopted after Cache::new", "all", "s"))?;
    Ok(())
}

fn key(i: usize) -> String {
    format!("durable-adopt-{i}")
}
