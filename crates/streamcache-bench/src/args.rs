//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use crate::data::{parse_size, GIB, MIB};
use crate::sys::Fs;

pub(crate) const USAGE: &str = "\
usage: streamcache-bench <workload>... [options]
       streamcache-bench report FILE.json...   (side-by-side table of --json files)

workloads (WORKLOADS.md):
  w0        machine limits: page-cache write and read, memory copy (always run first)
  w1        fan-out (w1-fanout), zero copy into sockets (w1-zc), peak RSS (w1-rss)
  w2        late joiners          w3  many small entries (misses, hits)
  w4        slow reader           w5  git clone storm through the daemon
  all       all of the above

options:
  --fs tmpfs|ext4|both    file systems to measure on (default both)
  --json FILE             also write one JSON object per figure (JSON lines)
  --reps N                measured repetitions after the warm-up (default 3)
  --size SIZE             S of w1 and w2 (default 1G)
  --w0-size SIZE          size of the w0 write/read file (default 4G)
  --w4-size SIZE          S of w4 (default 256M)
  --w3-keys N             distinct keys of w3 (default 100000)
  --w3-hot N              hot keys of w3 phase B (default 1000)
  --readers LIST          N values of w1 (default 1,4,16,64)
  --rss-sizes LIST        S values of the w1 N=64 peak-RSS runs (default 1G,4G)
  --w5-repo-mb N          packed size to aim for in the w5 repository (default 120)
  --w5-clients N          concurrent clones in w5 (default 8)
  --daemon PATH           the streamcache daemon binary for w5 (default: next to this one)
  --idle-window SECS      the idle guard waits for this long under 4% CPU (default 9)
  --idle-timeout SECS     ...but at most this long, then warns (default 120)
  --no-idle-wait          skip the idle guard (foreign CPU is still recorded)
  --no-w0                 do not run w0 unless named (no ratios; for profiling one workload)
  --max-foreign PCT       rerun a repetition in which others used more CPU (default 10)
  --retries N             reruns of a disturbed repetition (default 2)
  --quick                 small sizes for a smoke test: S=64M, w0 256M, w4 64M,
                          w3 10000 keys, rss 64M,256M, w5 20 MB, idle window 2 s
";

/// A part of a workload that can be selected on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    W0,
    W1Fanout,
    W1ZeroCopy,
    W1Rss,
    W2,
    W3,
    W4,
    W5,
}

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) parts: Vec<Part>,
    pub(crate) fs: Vec<Fs>,
    pub(crate) json: Option<PathBuf>,
    pub(crate) reps: usize,
    pub(crate) size: u64,
    pub(crate) w0_size: u64,
    pub(crate) w4_size: u64,
    pub(crate) w3_keys: usize,
    pub(crate) w3_hot: usize,
    pub(crate) readers: Vec<usize>,
    pub(crate) rss_sizes: Vec<u64>,
    pub(crate) w5_repo_mb: u64,
    pub(crate) w5_clients: usize,
    pub(crate) daemon: Option<PathBuf>,
    pub(crate) idle_window: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) idle_wait: bool,
    pub(crate) w0_always: bool,
    pub(crate) max_foreign: f64,
    pub(crate) retries: usize,
    pub(crate) quick: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            parts: Vec::new(),
            fs: vec![Fs::Tmpfs, Fs::Ext4],
            json: None,
            reps: 3,
            size: GIB,
            w0_size: 4 * GIB,
            w4_size: 256 * MIB,
            w3_keys: 100_000,
            w3_hot: 1000,
            readers: vec![1, 4, 16, 64],
            rss_sizes: vec![GIB, 4 * GIB],
            w5_repo_mb: 120,
            w5_clients: 8,
            daemon: None,
            idle_window: Duration::from_secs(9),
            idle_timeout: Duration::from_secs(120),
            idle_wait: true,
            w0_always: true,
            max_foreign: 0.10,
            retries: 2,
            quick: false,
        }
    }
}

fn parts(name: &str) -> Option<Vec<Part>> {
    use Part::*;
    Some(match name {
        "w0" => vec![W0],
        "w1" => vec![W1Fanout, W1ZeroCopy, W1Rss],
        "w1-fanout" => vec![W1Fanout],
        "w1-zc" | "zerocopy" => vec![W1ZeroCopy],
        "w1-rss" | "rss" => vec![W1Rss],
        "w2" => vec![W2],
        "w3" => vec![W3],
        "w4" => vec![W4],
        "w5" => vec![W5],
        "all" => vec![W0, W1Fanout, W1ZeroCopy, W1Rss, W2, W3, W4, W5],
        _ => return None,
    })
}

fn list<T>(s: &str, one: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    s.split(',').map(|p| one(p.trim())).collect()
}

/// Parses the arguments after the program name.
pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut explicit = std::collections::HashSet::new();
    let mut it = args.iter();
    let mut quick = false;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<String, String> {
            explicit.insert(name.to_string());
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let bad = |name: &str, v: &str| format!("bad value for {name}: {v:?}");
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--fs" => {
                let v = value("--fs")?;
                o.fs = match v.as_str() {
                    "both" => vec![Fs::Tmpfs, Fs::Ext4],
                    other => vec![Fs::parse(other).ok_or_else(|| bad("--fs", other))?],
                };
            }
            "--json" => o.json = Some(PathBuf::from(value("--json")?)),
            "--reps" => {
                let v = value("--reps")?;
                o.reps = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| bad("--reps", &v))?;
            }
            "--size" => {
                let v = value("--size")?;
                o.size = parse_size(&v)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("--size", &v))?;
            }
            "--w0-size" => {
                let v = value("--w0-size")?;
                o.w0_size = parse_size(&v)
                    .filter(|&n| n >= MIB)
                    .ok_or_else(|| bad("--w0-size", &v))?;
            }
            "--w4-size" => {
                let v = value("--w4-size")?;
                o.w4_size = parse_size(&v)
                    .filter(|&n| n >= MIB)
                    .ok_or_else(|| bad("--w4-size", &v))?;
            }
            "--w3-keys" => {
                let v = value("--w3-keys")?;
                o.w3_keys = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("--w3-keys", &v))?;
            }
            "--w3-hot" => {
                let v = value("--w3-hot")?;
                o.w3_hot = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("--w3-hot", &v))?;
            }
            "--readers" => {
                let v = value("--readers")?;
                o.readers = list(&v, |p| p.parse().ok().filter(|&n: &usize| n > 0))
                    .ok_or_else(|| bad("--readers", &v))?;
            }
            "--rss-sizes" => {
                let v = value("--rss-sizes")?;
                o.rss_sizes = list(&v, parse_size).ok_or_else(|| bad("--rss-sizes", &v))?;
            }
            "--w5-repo-mb" => {
                let v = value("--w5-repo-mb")?;
                o.w5_repo_mb = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("--w5-repo-mb", &v))?;
            }
            "--w5-clients" => {
                let v = value("--w5-clients")?;
                o.w5_clients = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("--w5-clients", &v))?;
            }
            "--daemon" => o.daemon = Some(PathBuf::from(value("--daemon")?)),
            "--idle-window" => {
                let v = value("--idle-window")?;
                o.idle_window = Duration::from_secs_f64(
                    v.parse()
                        .ok()
                        .filter(|&s: &f64| s >= 0.0)
                        .ok_or_else(|| bad("--idle-window", &v))?,
                );
            }
            "--idle-timeout" => {
                let v = value("--idle-timeout")?;
                o.idle_timeout = Duration::from_secs_f64(
                    v.parse()
                        .ok()
                        .filter(|&s: &f64| s >= 0.0)
                        .ok_or_else(|| bad("--idle-timeout", &v))?,
                );
            }
            "--no-idle-wait" => o.idle_wait = false,
            "--no-w0" => o.w0_always = false,
            "--max-foreign" => {
                let v = value("--max-foreign")?;
                let p: f64 = v
                    .parse()
                    .ok()
                    .filter(|&p: &f64| p > 0.0)
                    .ok_or_else(|| bad("--max-foreign", &v))?;
                o.max_foreign = p / 100.0;
            }
            "--retries" => {
                let v = value("--retries")?;
                o.retries = v.parse().map_err(|_| bad("--retries", &v))?;
            }
            "--quick" => quick = true,
            name if name.starts_with('-') => return Err(format!("unknown option {name}")),
            name => {
                for n in name.split(',') {
                    o.parts
                        .extend(parts(n).ok_or_else(|| format!("unknown workload {n:?}"))?);
                }
            }
        }
    }
    if quick {
        o.quick = true;
        let set = |name: &str| !explicit.contains(name);
        if set("--size") {
            o.size = 64 * MIB;
        }
        if set("--w0-size") {
            o.w0_size = 256 * MIB;
        }
        if set("--w4-size") {
            o.w4_size = 64 * MIB;
        }
        if set("--w3-keys") {
            o.w3_keys = 10_000;
        }
        if set("--rss-sizes") {
            o.rss_sizes = vec![64 * MIB, 256 * MIB];
        }
        if set("--w5-repo-mb") {
            o.w5_repo_mb = 20;
        }
        if set("--idle-window") {
            o.idle_window = Duration::from_secs(2);
        }
        if set("--idle-timeout") {
            o.idle_timeout = Duration::from_secs(10);
        }
    }
    if o.parts.is_empty() {
        return Err("name at least one workload".into());
    }
    o.parts.sort();
    o.parts.dedup();
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn all_selects_every_part_on_both_file_systems_with_workload_defaults() {
        let o = parse(&args("all")).unwrap();
        assert_eq!(o.parts.len(), 8);
        assert_eq!(o.fs, vec![Fs::Tmpfs, Fs::Ext4]);
        assert_eq!((o.size, o.w0_size, o.w4_size), (GIB, 4 * GIB, 256 * MIB));
        assert_eq!((o.w3_keys, o.w3_hot, o.reps), (100_000, 1000, 3));
    }

    #[test]
    fn quick_shrinks_sizes_but_explicit_values_win() {
        let o = parse(&args("w1 --quick --size 128M --fs tmpfs")).unwrap();
        assert_eq!(o.size, 128 * MIB);
        assert_eq!(o.w0_size, 256 * MIB);
        assert_eq!(o.fs, vec![Fs::Tmpfs]);
        assert_eq!(o.parts, vec![Part::W1Fanout, Part::W1ZeroCopy, Part::W1Rss]);
    }

    #[test]
    fn unknown_workloads_and_options_are_rejected() {
        assert!(parse(&args("w9")).is_err());
        assert!(parse(&args("w1 --frobnicate")).is_err());
        assert!(parse(&args("--fs tmpfs")).is_err());
        assert!(parse(&args("w1 --reps 0")).is_err());
    }
}
