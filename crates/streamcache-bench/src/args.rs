//! Command-line arguments: what was typed (`Cli`, parsed by clap) becomes the validated
//! `Options` of a run, with the `--quick` sizes and the defaults filled in.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::data::{parse_size, GIB, MIB};
use crate::sys::Fs;

/// Runs the benchmark workloads (docs/BENCHMARKS.md) against the cache and against the
/// machine's own limits, measured in the same run.
///
/// Progress goes to stderr, the table of figures to stdout.
#[derive(Debug, Parser)]
#[command(
    name = "streamcache-bench",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    args_override_self = true,
    disable_help_subcommand = true,
    after_help = "Examples:\n  \
        streamcache-bench all --fs both --json results.json\n  \
        streamcache-bench w1 w3 --fs tmpfs --quick --no-idle-wait\n  \
        streamcache-bench report a.json b.json\n  \
        streamcache-bench report results.json --svg docs/bench"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The workloads to run, several at once or comma-separated.
    #[arg(
        value_enum,
        value_delimiter = ',',
        required = true,
        value_name = "WORKLOAD"
    )]
    workloads: Vec<Workload>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the side-by-side table of files written by --json.
    Report {
        /// Files written by --json; their figures make one table, with a column group
        /// per file system.
        #[arg(required = true, value_name = "FILE.json")]
        files: Vec<PathBuf>,
        /// Also draw the figures as SVG charts into DIR (created if missing):
        /// w1-fanout.svg, w3.svg, w5.svg and w6.svg, each only if its workload is in
        /// the files.
        #[arg(long, value_name = "DIR")]
        svg: Option<PathBuf>,
    },
}

/// The names a workload can be selected by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Machine limits: page-cache write and read, memory copy (run first whenever
    /// another workload but w5, w6 or w7 is, unless --no-w0).
    #[value(name = "w0")]
    W0,
    /// Fan-out, zero copy and peak RSS: w1-fanout, w1-zc and w1-rss.
    #[value(name = "w1")]
    W1,
    /// N readers of one key, one producer.
    #[value(name = "w1-fanout")]
    W1Fanout,
    /// The fan-out into sockets, Stream::send_to against read+write.
    #[value(name = "w1-zc", alias = "zerocopy")]
    W1ZeroCopy,
    /// Peak RSS of the fan-out at N=64, in a fresh child process.
    #[value(name = "w1-rss", alias = "rss")]
    W1Rss,
    /// The fan-out read by N tokio tasks through AsyncRead, on two worker threads.
    #[value(name = "w1-async")]
    W1Async,
    /// Late joiners.
    #[value(name = "w2")]
    W2,
    /// Many small entries: misses, then hits.
    #[value(name = "w3")]
    W3,
    /// A slow reader: back pressure.
    #[value(name = "w4")]
    W4,
    /// A git clone storm through the daemon.
    #[value(name = "w5")]
    W5,
    /// A git clone storm over two daemons, with and without the shared tier
    /// (SeaweedFS's `weed` on the PATH).
    #[value(name = "w6")]
    W6,
    /// The daemon serving one finished entry to N clients, beside nginx.
    #[value(name = "w7")]
    W7,
    /// The cost of durable entries: W1 N=1 with them off and on, and the adoption of
    /// 10,000 committed entries.
    #[value(name = "durable")]
    Durable,
    /// All of the above.
    #[value(name = "all")]
    All,
}

/// The file systems a run measures on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FsChoice {
    /// /dev/shm.
    #[value(alias = "shm")]
    Tmpfs,
    /// The system temp dir.
    #[value(alias = "tmp")]
    Ext4,
    /// tmpfs, then ext4.
    Both,
}

#[derive(Debug, Args)]
struct Flags {
    /// File systems to measure on.
    #[arg(long, value_enum, value_name = "FS", default_value = "both")]
    fs: FsChoice,
    /// Also write one JSON object per figure (JSON lines).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The reference implementation's figures to report against: JSON lines, one
    /// object per figure with this benchmark's names (`workload`, `fs`, `figure`,
    /// `params`, `median`) [default: the figures carried for this CPU model, if any].
    #[arg(long, value_name = "FILE.jsonl")]
    reference: Option<PathBuf>,
    /// Measured repetitions after the warm-up [default: 3].
    #[arg(long, value_name = "N", value_parser = count)]
    reps: Option<usize>,
    /// S of w1, w2 and w7 [default: 1G; --quick: 64M].
    #[arg(long, value_name = "SIZE", value_parser = size)]
    size: Option<u64>,
    /// Size of the w0 write/read file [default: 4G; --quick: 256M].
    #[arg(long, value_name = "SIZE", value_parser = size_of_a_mib_or_more)]
    w0_size: Option<u64>,
    /// S of w4 [default: 256M; --quick: 64M].
    #[arg(long, value_name = "SIZE", value_parser = size_of_a_mib_or_more)]
    w4_size: Option<u64>,
    /// Distinct keys of w3 [default: 100000; --quick: 10000].
    #[arg(long, value_name = "N", value_parser = count)]
    w3_keys: Option<usize>,
    /// The cache's lead window (`Config::max_lead_bytes`) in w1-w4 [default: 0, the
    /// reference's rule: one write ahead of the fastest reader].
    #[arg(long, value_name = "SIZE", value_parser = size_or_zero)]
    max_lead: Option<u64>,
    /// Hot keys of w3 phase B [default: 1000].
    #[arg(long, value_name = "N", value_parser = count)]
    w3_hot: Option<usize>,
    /// N values of w1, comma-separated [default: 1,4,16,64].
    #[arg(long, value_name = "LIST", value_parser = counts)]
    readers: Option<Counts>,
    /// S values of the w1 N=64 peak-RSS runs, comma-separated [default: 1G,4G; --quick:
    /// 64M,256M].
    #[arg(long, value_name = "LIST", value_parser = sizes)]
    rss_sizes: Option<Sizes>,
    /// Packed size to aim for in the w5 repository, in MB [default: 120; --quick: 20].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    w5_repo_mb: Option<u64>,
    /// Concurrent clones in w5 [default: 8].
    #[arg(long, value_name = "N", value_parser = count)]
    w5_clients: Option<usize>,
    /// Concurrent clones in w6, spread over its two daemons [default: 8].
    #[arg(long, value_name = "N", value_parser = count)]
    w6_clients: Option<usize>,
    /// N values of w7 (concurrent clients), comma-separated [default: 1,16,64,256].
    #[arg(long, value_name = "LIST", value_parser = counts)]
    w7_clients: Option<Counts>,
    /// The streamcache daemon binary for w5, w6 and w7 [default: `streamcache` next to
    /// this binary].
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// The idle guard waits until the machine has been under 4% CPU for this long
    /// [default: 9; --quick: 2].
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    idle_window: Option<Duration>,
    /// ...but at most this long, then warns and goes on [default: 120; --quick: 10].
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    idle_timeout: Option<Duration>,
    /// Skip the idle guard (the CPU other processes use is still recorded).
    #[arg(long)]
    no_idle_wait: bool,
    /// Do not run w0 unless named (no ratios; for profiling one workload).
    #[arg(long)]
    no_w0: bool,
    /// Rerun a repetition in which other processes used more than PCT% of the CPU
    /// [default: 10].
    #[arg(long, value_name = "PCT", value_parser = percent)]
    max_foreign: Option<f64>,
    /// Reruns of a disturbed repetition [default: 2].
    #[arg(long, value_name = "N")]
    retries: Option<usize>,
    /// Small sizes for a smoke test (the defaults marked --quick); explicit values win.
    #[arg(long)]
    quick: bool,
}

/// A comma-separated list of counts, kept whole so that a later `--readers` replaces
/// an earlier one.
#[derive(Debug, Clone)]
struct Counts(Vec<usize>);

/// A comma-separated list of sizes.
#[derive(Debug, Clone)]
struct Sizes(Vec<u64>);

fn count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| "expected a whole number above 0".into())
}

fn counts(s: &str) -> Result<Counts, String> {
    s.split(',')
        .map(count)
        .collect::<Result<_, _>>()
        .map(Counts)
}

const SIZE_FORMS: &str = "expected a size such as 1048576, 64K, 256M, 4G or 4GiB";

fn size_at_least(s: &str, min: u64) -> Result<u64, String> {
    match parse_size(s) {
        Some(n) if n >= min => Ok(n),
        Some(_) if min == 1 => Err("expected a size above 0".into()),
        Some(_) => Err("expected at least 1M".into()),
        None => Err(SIZE_FORMS.into()),
    }
}

fn size_or_zero(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| SIZE_FORMS.into())
}

fn size(s: &str) -> Result<u64, String> {
    size_at_least(s, 1)
}

fn size_of_a_mib_or_more(s: &str) -> Result<u64, String> {
    size_at_least(s, MIB)
}

fn sizes(s: &str) -> Result<Sizes, String> {
    s.split(',')
        .map(|p| parse_size(p).ok_or_else(|| SIZE_FORMS.to_string()))
        .collect::<Result<_, _>>()
        .map(Sizes)
}

fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|&s| s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| "expected seconds, 0 or more".into())
}

fn percent(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|&p| p > 0.0)
        .ok_or_else(|| "expected a percentage above 0".into())
}

/// A part of a workload that can be selected on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    W0,
    W1Fanout,
    W1ZeroCopy,
    W1Rss,
    W1Async,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7,
    Durable,
}

impl Workload {
    fn parts(self) -> &'static [Part] {
        use Part::*;
        match self {
            Workload::W0 => &[W0],
            Workload::W1 => &[W1Fanout, W1ZeroCopy, W1Rss],
            Workload::W1Fanout => &[W1Fanout],
            Workload::W1ZeroCopy => &[W1ZeroCopy],
            Workload::W1Rss => &[W1Rss],
            Workload::W1Async => &[W1Async],
            Workload::W2 => &[W2],
            Workload::W3 => &[W3],
            Workload::W4 => &[W4],
            Workload::W5 => &[W5],
            Workload::W6 => &[W6],
            Workload::W7 => &[W7],
            Workload::Durable => &[Durable],
            Workload::All => &[
                W0, W1Fanout, W1ZeroCopy, W1Rss, W1Async, W2, W3, W4, W5, W6, W7, Durable,
            ],
        }
    }
}

/// What a run does, every default filled in.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Sorted, each once.
    pub(crate) parts: Vec<Part>,
    pub(crate) fs: Vec<Fs>,
    pub(crate) json: Option<PathBuf>,
    pub(crate) reference: Option<PathBuf>,
    pub(crate) reps: usize,
    pub(crate) size: u64,
    pub(crate) w0_size: u64,
    pub(crate) w4_size: u64,
    pub(crate) w3_keys: usize,
    pub(crate) w3_hot: usize,
    pub(crate) max_lead: u64,
    pub(crate) readers: Vec<usize>,
    pub(crate) rss_sizes: Vec<u64>,
    pub(crate) w5_repo_mb: u64,
    pub(crate) w5_clients: usize,
    pub(crate) w6_clients: usize,
    pub(crate) w7_clients: Vec<usize>,
    pub(crate) daemon: Option<PathBuf>,
    pub(crate) idle_window: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) idle_wait: bool,
    pub(crate) w0_always: bool,
    /// A share of the machine (0..1), not a percentage.
    pub(crate) max_foreign: f64,
    pub(crate) retries: usize,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Invocation {
    /// Run workloads.
    Run(Box<Options>),
    /// `report FILE... [--svg DIR]`: the side-by-side table of `--json` files, and
    /// their charts.
    Report {
        files: Vec<PathBuf>,
        svg: Option<PathBuf>,
    },
}

impl Cli {
    pub(crate) fn into_invocation(self) -> Invocation {
        match self.command {
            Some(Command::Report { files, svg }) => Invocation::Report { files, svg },
            None => Invocation::Run(Box::new(options(&self.workloads, self.flags))),
        }
    }
}

fn options(workloads: &[Workload], f: Flags) -> Options {
    let mut parts: Vec<Part> = workloads.iter().flat_map(|w| w.parts()).copied().collect();
    parts.sort();
    parts.dedup();
    let quick = f.quick;
    let secs = Duration::from_secs;
    Options {
        parts,
        fs: match f.fs {
            FsChoice::Tmpfs => vec![Fs::Tmpfs],
            FsChoice::Ext4 => vec![Fs::Ext4],
            FsChoice::Both => vec![Fs::Tmpfs, Fs::Ext4],
        },
        json: f.json,
        reference: f.reference,
        reps: f.reps.unwrap_or(3),
        size: or_default(f.size, quick, GIB, 64 * MIB),
        w0_size: or_default(f.w0_size, quick, 4 * GIB, 256 * MIB),
        w4_size: or_default(f.w4_size, quick, 256 * MIB, 64 * MIB),
        w3_keys: or_default(f.w3_keys, quick, 100_000, 10_000),
        w3_hot: f.w3_hot.unwrap_or(1000),
        max_lead: f.max_lead.unwrap_or(0),
        readers: f.readers.map_or_else(|| vec![1, 4, 16, 64], |c| c.0),
        rss_sizes: or_default(
            f.rss_sizes.map(|s| s.0),
            quick,
            vec![GIB, 4 * GIB],
            vec![64 * MIB, 256 * MIB],
        ),
        w5_repo_mb: or_default(f.w5_repo_mb, quick, 120, 20),
        w5_clients: f.w5_clients.unwrap_or(8),
        w6_clients: f.w6_clients.unwrap_or(8),
        w7_clients: f.w7_clients.map_or_else(|| vec![1, 16, 64, 256], |c| c.0),
        daemon: f.daemon,
        idle_window: or_default(f.idle_window, quick, secs(9), secs(2)),
        idle_timeout: or_default(f.idle_timeout, quick, secs(120), secs(10)),
        idle_wait: !f.no_idle_wait,
        w0_always: !f.no_w0,
        max_foreign: f.max_foreign.unwrap_or(10.0) / 100.0,
        retries: f.retries.unwrap_or(2),
    }
}

/// The value given, else the default of a full run or of `--quick`.
fn or_default<T>(given: Option<T>, quick: bool, full: T, small: T) -> T {
    given.unwrap_or(if quick { small } else { full })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(s: &str) -> Result<Invocation, clap::Error> {
        let argv = std::iter::once("streamcache-bench").chain(s.split_whitespace());
        Cli::try_parse_from(argv).map(Cli::into_invocation)
    }

    fn run(s: &str) -> Options {
        match parse(s).unwrap() {
            Invocation::Run(o) => *o,
            other => panic!("{s:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn all_selects_every_part_on_both_file_systems_with_workload_defaults() {
        let o = run("all");
        assert_eq!(o.parts.len(), 12);
        assert_eq!(o.w7_clients, vec![1, 16, 64, 256]);
        assert_eq!(o.fs, vec![Fs::Tmpfs, Fs::Ext4]);
        assert_eq!((o.size, o.w0_size, o.w4_size), (GIB, 4 * GIB, 256 * MIB));
        assert_eq!((o.w3_keys, o.w3_hot, o.reps), (100_000, 1000, 3));
        assert_eq!(o.readers, vec![1, 4, 16, 64]);
        assert_eq!(o.rss_sizes, vec![GIB, 4 * GIB]);
        assert_eq!((o.w5_repo_mb, o.w5_clients, o.retries), (120, 8, 2));
        assert_eq!(o.w6_clients, 8);
        assert_eq!(o.idle_window, Duration::from_secs(9));
        assert_eq!(o.idle_timeout, Duration::from_secs(120));
        assert!(o.idle_wait && o.w0_always);
        assert_eq!(o.max_foreign, 0.10);
        assert_eq!((o.json, o.daemon), (None, None));
    }

    #[test]
    fn several_workloads_in_one_invocation_are_sorted_and_merged() {
        let o = run("w3 w1 --fs both w1-fanout");
        use Part::*;
        assert_eq!(o.parts, vec![W1Fanout, W1ZeroCopy, W1Rss, W3]);
        assert_eq!(o.fs, vec![Fs::Tmpfs, Fs::Ext4]);
        assert_eq!(run("w5,w2 w0").parts, vec![W0, W2, W5]);
        assert_eq!(run("w7 w6").parts, vec![W6, W7]);
        assert_eq!(run("zerocopy rss").parts, vec![W1ZeroCopy, W1Rss]);
        assert_eq!(run("w1-zc w1-rss w4").parts, vec![W1ZeroCopy, W1Rss, W4]);
    }

    #[test]
    fn file_systems_are_named_as_before() {
        assert_eq!(run("w0 --fs tmpfs").fs, vec![Fs::Tmpfs]);
        assert_eq!(run("w0 --fs shm").fs, vec![Fs::Tmpfs]);
        assert_eq!(run("w0 --fs ext4").fs, vec![Fs::Ext4]);
        assert_eq!(run("w0 --fs tmp").fs, vec![Fs::Ext4]);
        assert!(parse("w0 --fs xfs").is_err());
    }

    #[test]
    fn quick_shrinks_sizes_but_explicit_values_win() {
        let o = run("w1 --quick --size 128M --fs tmpfs");
        assert_eq!(o.size, 128 * MIB);
        assert_eq!(o.w0_size, 256 * MIB);
        assert_eq!(o.fs, vec![Fs::Tmpfs]);
        assert_eq!(o.parts, vec![Part::W1Fanout, Part::W1ZeroCopy, Part::W1Rss]);
        assert_eq!((o.w4_size, o.w3_keys, o.w5_repo_mb), (64 * MIB, 10_000, 20));
        assert_eq!(o.rss_sizes, vec![64 * MIB, 256 * MIB]);
        assert_eq!(o.idle_window, Duration::from_secs(2));
        assert_eq!(
            run("w1 --idle-timeout 30 --quick").idle_timeout,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn every_option_is_read() {
        let o = run(
            "w1 --json out.json --reps 5 --size 2G --w0-size 1G --w4-size 32M \
             --w3-keys 500 --w3-hot 50 --readers 2,8 --rss-sizes 1M,2M --w5-repo-mb 30 \
             --w5-clients 3 --w6-clients 4 --daemon /bin/sc --idle-window 1.5 --idle-timeout 0 \
             --no-idle-wait --no-w0 --max-foreign 25 --retries 0",
        );
        assert_eq!(o.json, Some(PathBuf::from("out.json")));
        assert_eq!(
            (o.reps, o.size, o.w0_size, o.w4_size),
            (5, 2 * GIB, GIB, 32 * MIB)
        );
        assert_eq!((o.w3_keys, o.w3_hot), (500, 50));
        assert_eq!(o.readers, vec![2, 8]);
        assert_eq!(o.rss_sizes, vec![MIB, 2 * MIB]);
        assert_eq!((o.w5_repo_mb, o.w5_clients, o.w6_clients), (30, 3, 4));
        assert_eq!(o.daemon, Some(PathBuf::from("/bin/sc")));
        assert_eq!(o.idle_window, Duration::from_millis(1500));
        assert_eq!(o.idle_timeout, Duration::ZERO);
        assert!(!o.idle_wait && !o.w0_always);
        assert_eq!((o.max_foreign, o.retries), (0.25, 0));
    }

    #[test]
    fn a_later_value_replaces_an_earlier_one() {
        let o = run("w1 --readers 1,4 --readers 16 --reps 2 --reps 4");
        assert_eq!((o.readers, o.reps), (vec![16], 4));
    }

    #[test]
    fn report_takes_the_files_to_compare() {
        match parse("report a.json b.json").unwrap() {
            Invocation::Report { files, svg } => {
                assert_eq!(
                    files,
                    vec![PathBuf::from("a.json"), PathBuf::from("b.json")]
                );
                assert_eq!(svg, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse("report a.json --svg out b.json").unwrap() {
            Invocation::Report { files, svg } => {
                assert_eq!(
                    files,
                    vec![PathBuf::from("a.json"), PathBuf::from("b.json")]
                );
                assert_eq!(svg, Some(PathBuf::from("out")));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse("report a.json --svg").is_err());
        assert!(parse("w1 --svg out").is_err());
        assert!(parse("report").is_err());
        assert!(parse("report a.json --fs tmpfs").is_err());
        assert!(parse("w1 report").is_err());
    }

    #[test]
    fn unknown_workloads_and_options_and_bad_values_are_rejected() {
        assert!(parse("").is_err());
        assert!(parse("w9").is_err());
        assert!(parse("w1,w9").is_err());
        assert!(parse("w1 --frobnicate").is_err());
        assert!(parse("--fs tmpfs").is_err());
        assert!(parse("w1 --reps 0").is_err());
        assert!(parse("w1 --size 0").is_err());
        assert!(parse("w1 --w0-size 512K").is_err());
        assert!(parse("w1 --w4-size 12X").is_err());
        assert!(parse("w1 --readers 1,0").is_err());
        assert!(parse("w1 --idle-window -1").is_err());
        assert!(parse("w1 --idle-timeout inf").is_err());
        assert!(parse("w1 --max-foreign 0").is_err());
        assert!(parse("w1 --w5-repo-mb 0").is_err());
        assert!(parse("w6 --w6-clients 0").is_err());
        assert!(parse("w1 --retries -1").is_err());
        assert!(parse("w1 --reps").is_err());
    }

    #[test]
    fn help_and_version_are_answered_by_clap() {
        let kind = |s| parse(s).unwrap_err().kind();
        assert_eq!(kind("--help"), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(kind("-h"), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(kind("--version"), clap::error::ErrorKind::DisplayVersion);
    }
}
