//! `streamcache-bench`: runs the benchmark workloads W0 to W7 (docs/BENCHMARKS.md)
//! against the cache and against the machine's own limits, measured in the same run.
//!
//! Every workload runs one thrown-away warm-up repetition, then `--reps` measured ones
//! (3 by default), each in a fresh cache directory on the file system under test
//! (`/dev/shm` for tmpfs, the system temp dir for ext4), removed after the repetition
//! outside its timing. Before each group the idle guard waits until the machine has been
//! nearly idle for a while, and every repetition records how much CPU other processes
//! used while it ran; a disturbed repetition is run again, and flagged if it stays
//! disturbed.
//!
//! The result is a table on stdout (median, min, max, unit, ratio to the W0 limit) and,
//! with `--json FILE`, one JSON object per figure. Progress goes to stderr.
//! `streamcache-bench report FILE... [--svg DIR]` prints the table of such files again,
//! side by side per file system, and draws their charts.

#![forbid(unsafe_code)]

mod args;
mod charts;
mod ctx;
mod data;
mod durable;
mod reference;
mod report;
mod sys;
mod w0;
mod w1;
mod w2;
mod w3;
mod w4;
mod w5;
mod w6;
mod w7;
mod workloads;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Invocation, Part};
use crate::ctx::Ctx;

fn main() -> ExitCode {
    // The bench's own child processes, kept out of clap on purpose: the peak-RSS child
    // measures its memory from its first instruction, and git runs the `__rusage`
    // wrapper with arguments of its own.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("__rusage") {
        return w5::rusage_child(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("__rss-child") {
        return match w1::rss_child(&argv[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rss child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match Cli::parse().into_invocation() {
        Invocation::Run(opts) => run(*opts),
        Invocation::Report { files, svg } => report_files(&files, svg.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `report FILE... [--svg DIR]`: the side-by-side table of `--json` files, and with
/// `--svg` their charts.
fn report_files(files: &[PathBuf], svg: Option<&Path>) -> io::Result<()> {
    let sourced = load(files)?;
    let figures: Vec<report::Figure> = sourced.iter().map(|(_, f)| f.clone()).collect();
    print!("{}", report::side_by_side(&figures));
    if let Some(dir) = svg {
        let charts = charts::write(dir, &sourced)?;
        let names = |written: bool| {
            charts
                .iter()
                .filter(|c| c.1 == written)
                .map(|c| c.0)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (written, absent) = (names(true), names(false));
        if written.is_empty() {
            eprintln!("svg: no chart written: no w1, w3, w5 or w6 figures in the input");
        } else {
            eprintln!("svg: wrote {written} in {}", dir.display());
        }
        if !written.is_empty() && !absent.is_empty() {
            eprintln!("svg: not written (their workloads are not in the input): {absent}");
        }
    }
    Ok(())
}

/// The figures of `--json` files, each with the name of its file (its stem, or the whole
/// path where two files share a stem).
fn load(files: &[PathBuf]) -> io::Result<Vec<(String, report::Figure)>> {
    let stem = |p: &PathBuf| {
        p.file_stem()
            .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into())
    };
    let mut figures = Vec::new();
    for file in files {
        let twins = files.iter().filter(|f| stem(f) == stem(file)).count();
        let source = if twins > 1 {
            file.display().to_string()
        } else {
            stem(file)
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let figure = serde_json::from_str(line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", file.display(), i + 1),
                )
            })?;
            figures.push((source.clone(), figure));
        }
    }
    Ok(figures)
}

/// A one-line description of the machine and the time.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or_else(
            || "?".into(),
            |kib| format!("{:.1} GiB", kib as f64 / (1 << 20) as f64),
        );
    let model = cpu_model();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{} CPUs ({model}), {mem} memory, kernel {kernel}, {date}",
        sys::cpus()
    )
}

/// The CPU's model name, as `/proc/cpuinfo` gives it.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default()
}

fn run(opts: args::Options) -> io::Result<()> {
    let references = match &opts.reference {
        Some(path) => reference::References::load(path)?,
        None => reference::References::for_cpu(&cpu_model()),
    };
    let reference_line = format!("reference: {}", references.describe());
    let mut ctx = Ctx::new(opts, references)?;
    let header = machine();
    ctx.say(&format!("machine: {header}"));
    ctx.say(&reference_line);
    let parts = ctx.opts.parts.clone();
    // W0 is the denominator of every ratio: run it whenever anything but the daemon's
    // workloads (W5 to W7, which have no ratio to it) is.
    let need_w0 = parts.contains(&Part::W0)
        || (ctx.opts.w0_always
            && parts
                .iter()
                .any(|p| !matches!(p, Part::W5 | Part::W6 | Part::W7)));
    for fs in ctx.opts.fs.clone() {
        let kind = sys::fs_type(&fs.base());
        ctx.say(&format!(
            "== {} under {} (file system: {kind})",
            fs.name(),
            fs.base().display()
        ));
        if kind != fs.name() {
            ctx.say(&format!(
                "warning: {} is {kind}, not {}; figures are labelled {} anyway",
                fs.base().display(),
                fs.name(),
                fs.name()
            ));
        }
        if need_w0 {
            w0::run(&mut ctx, fs)?;
        }
        for part in &parts {
            match part {
                Part::W0 => {}
                Part::W1Fanout => w1::run_fanout(&mut ctx, fs)?,
                Part::W1ZeroCopy => w1::run_zero_copy(&mut ctx, fs)?,
                Part::W1Rss => w1::run_rss(&mut ctx, fs)?,
                Part::W1Async => w1::run_async(&mut ctx, fs)?,
                Part::W2 => w2::run(&mut ctx, fs)?,
                Part::W3 => w3::run(&mut ctx, fs)?,
                Part::W4 => w4::run(&mut ctx, fs)?,
                Part::W5 => w5::run(&mut ctx, fs)?,
                Part::W6 => w6::run(&mut ctx, fs)?,
                Part::W7 => w7::run(&mut ctx, fs)?,
                Part::Durable => durable::run(&mut ctx, fs)?,
            }
        }
    }
    ctx.say("");
    let mut cmd = vec!["streamcache-bench".to_string()];
    cmd.extend(std::env::args().skip(1));
    println!("machine: {header}");
    println!("{reference_line}");
    println!("command: {}", cmd.join(" "));
    println!(
        "{} measured repetitions after 1 warm-up; ratio = median / limit; foreign CPU = most CPU share other processes used in a measured repetition ((!) = over the limit or machine never idle)\n",
        ctx.opts.reps
    );
    print!("{}", report::table(&ctx.figures));
    Ok(())
}
