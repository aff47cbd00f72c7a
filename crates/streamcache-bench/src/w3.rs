//! W3: many small entries. Phase A: distinct 4 KiB keys, all misses; phase B: lookups
//! of a few hot keys, all hits.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::ctx::{Ctx, Fig};
use crate::data::CHUNK;
use crate::sys::{self, Fs, Who};
use crate::workloads::{cache, reference, Setup};

const ENTRY: usize = 4096;

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let keys_n = ctx.opts.w3_keys;
    let hot = ctx.opts.w3_hot.min(keys_n);
    let entry: Arc<[u8]> = ctx.data[..ENTRY].into();
    let keys: Vec<String> = (0..keys_n).map(|i| format!("w3-key-{i}")).collect();
    let label = format!(
        "w3 {} {keys_n} misses + {keys_n} hits of {hot} keys",
        fs.name()
    );
    let max_lead = ctx.opts.max_lead;
    let m = ctx.measure(&label, Some(fs), |dir| {
        let cache = cache(dir, Setup::new(true, max_lead))?;
        let mut buf = vec![0u8; CHUNK];
        let read_entry = |stream: &mut streamcache::Stream, buf: &mut [u8]| -> io::Result<()> {
            let mut got = 0;
            loop {
                match stream.read(buf)? {
                    0 => break,
                    n => got += n,
                }
            }
            stream.wait()?;
            if got != ENTRY {
                return Err(io::Error::other(format!("read {got} bytes of {ENTRY}")));
            }
            Ok(())
        };
        let cpu = sys::cpu_seconds(Who::Process);
        let t = Instant::now();
        for key in &keys {
            let bytes = Arc::clone(&entry);
            let (mut stream, created) = cache.find_or_create(key, move |w| w.write_all(&bytes))?;
            if !created {
                return Err(io::Error::other(format!(
                    "{key}: a miss reported not created"
                )));
            }
            read_entry(&mut stream, &mut buf)?;
        }
        let misses = keys_n as f64 / t.elapsed().as_secs_f64();
        let miss_cpu = (sys::cpu_seconds(Who::Process) - cpu) / keys_n as f64;
        let cpu = sys::cpu_seconds(Who::Process);
        let t = Instant::now();
        for j in 0..keys_n {
            let key = &keys[j % hot];
            let (mut stream, created) =
                cache.find_or_create(key, |_| Err(io::Error::other("a hit ran the producer")))?;
            if created {
                return Err(io::Error::other(format!("{key}: a hit reported created")));
            }
            read_entry(&mut stream, &mut buf)?;
        }
        let hits = keys_n as f64 / t.elapsed().as_secs_f64();
        let hit_cpu = (sys::cpu_seconds(Who::Process) - cpu) / keys_n as f64;
        Ok(vec![
            ("misses", misses / 1e3),
            ("hits", hits / 1e3),
            ("miss_us", 1e6 / misses),
            ("hit_us", 1e6 / hits),
            ("miss_cpu_us", miss_cpu * 1e6),
            ("hit_cpu_us", hit_cpu * 1e6),
        ])
    })?;
    let def = keys_n == 100_000 && hot == 1000;
    let fig = |figure, key, unit| {
        Fig::new("w3", Some(fs), figure, key, unit)
            .param("keys", keys_n)
            .param("hot", hot)
            .param("entry", "4 KiB")
    };
    ctx.emit(
        &m,
        fig("misses (distinct keys)", "misses", "k ops/s")
            .reference(reference("w3 misses", fs).filter(|_| def))
            .target(">= 2x reference"),
    )?;
    ctx.emit(&m, fig("time per miss", "miss_us", "us"))?;
    ctx.emit(&m, fig("CPU per miss (all threads)", "miss_cpu_us", "us"))?;
    ctx.emit(
        &m,
        fig("hits (hot keys)", "hits", "k ops/s")
            .reference(reference("w3 hits", fs).filter(|_| def))
            .target(">= 3x reference"),
    )?;
    ctx.emit(&m, fig("time per hit", "hit_us", "us"))?;
    ctx.emit(&m, fig("CPU per hit (all threads)", "hit_cpu_us", "us"))?;
    Ok(())
}
