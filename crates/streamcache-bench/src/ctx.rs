//! The harness: idle guard, warm-up and measured repetitions, foreign-CPU accounting,
//! progress lines, and turning repetitions into figures.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use crate::args::Options;
use crate::reference::References;
use crate::report::{self, Figure};
use crate::sys::{self, CpuProbe, Fs, ScratchDir};

/// A machine limit measured by W0, the denominator of a ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Limit {
    /// Sequential write into the page cache.
    Write,
    /// Sequential read from the page cache.
    Read,
    /// Copy of a cache-resident 1 MiB buffer, one thread.
    Copy1,
    /// The same, two threads: the fan-out ceiling.
    Copy2,
    /// `pread` of a cache-resident 1 MiB region of a file, 64 KiB at a time, two
    /// threads: what readers of a pipe can do at best, page-cache lookups included.
    Pread2,
    /// One writer and one reader on raw file descriptors, handing over every 64 KiB
    /// write by spinning, strictly taking turns: the rule of back pressure with a free
    /// hand-off, the ceiling of W1 N = 1.
    Turns,
    /// The same without taking turns: the reader only follows (back pressure off).
    Follow,
    /// Copy of a 512 MiB buffer (DRAM), one thread.
    Dram1,
    /// The same, two threads.
    Dram2,
    /// One 64 KiB write: the lead allowed by back pressure.
    OneWrite,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Limit::Write => "W0 write",
            Limit::Read => "W0 read",
            Limit::Copy1 => "W0 copy 1 MiB x1",
            Limit::Copy2 => "W0 copy 1 MiB x2",
            Limit::Pread2 => "W0 pread 1 MiB x2",
            Limit::Turns => "W0 turns",
            Limit::Follow => "W0 follow",
            Limit::Dram1 => "W0 copy DRAM x1",
            Limit::Dram2 => "W0 copy DRAM x2",
            Limit::OneWrite => "one write",
        }
    }
}

/// The values of one repetition: figure key and value.
pub(crate) type Sample = Vec<(&'static str, f64)>;

/// Every measured repetition of one group.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    pub(crate) values: BTreeMap<&'static str, Vec<f64>>,
    pub(crate) max_foreign: f64,
    pub(crate) flagged: bool,
}

/// How a figure is described.
#[derive(Debug, Clone)]
pub(crate) struct Fig<'a> {
    pub(crate) workload: &'a str,
    pub(crate) fs: Option<Fs>,
    pub(crate) figure: &'a str,
    /// Key of the value in [`Measured::values`].
    pub(crate) key: &'static str,
    pub(crate) unit: &'a str,
    pub(crate) params: Vec<(&'a str, serde_json::Value)>,
    pub(crate) limit: Option<Limit>,
    pub(crate) reference: Option<f64>,
    /// The workload whose reference figure of the same name applies, if not this one
    /// (W1-async is held against the reference's W1).
    pub(crate) compare_with: Option<&'a str>,
    pub(crate) target: Option<&'a str>,
}

impl<'a> Fig<'a> {
    pub(crate) fn new(
        workload: &'a str,
        fs: Option<Fs>,
        figure: &'a str,
        key: &'static str,
        unit: &'a str,
    ) -> Fig<'a> {
        Fig {
            workload,
            fs,
            figure,
            key,
            unit,
            params: Vec::new(),
            limit: None,
            reference: None,
            compare_with: None,
            target: None,
        }
    }

    pub(crate) fn param(mut self, name: &'a str, value: impl Into<serde_json::Value>) -> Self {
        self.params.push((name, value.into()));
        self
    }

    pub(crate) fn limit(mut self, limit: Limit) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn reference(mut self, reference: Option<f64>) -> Self {
        self.reference = reference;
        self
    }

    pub(crate) fn compare_with(mut self, workload: &'a str) -> Self {
        self.compare_with = Some(workload);
        self
    }

    pub(crate) fn target(mut self, target: &'a str) -> Self {
        self.target = Some(target);
        self
    }
}

/// The state of one benchmark run.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) opts: Options,
    /// The 1 MiB splitmix64 buffer.
    pub(crate) data: Arc<[u8]>,
    pub(crate) figures: Vec<Figure>,
    /// What each figure is reported against.
    references: References,
    json: Option<io::BufWriter<File>>,
    limits: HashMap<(Option<Fs>, Limit), f64>,
    tty: bool,
    serial: u64,
}

impl Ctx {
    /// `max_lead` among a figure's parameters, for the workloads whose cache it tunes
    /// (not the peak-RSS child, which runs the reference's rule), when it is not 0.
    fn lead_parameter(&self, workload: &str) -> Option<(String, serde_json::Value)> {
        let tuned = matches!(workload, "w1" | "w1-zc" | "w2" | "w3" | "w4");
        (tuned && self.opts.max_lead > 0)
            .then(|| ("max_lead".to_owned(), self.opts.max_lead.into()))
    }

    pub(crate) fn new(opts: Options, references: References) -> io::Result<Ctx> {
        let json = match &opts.json {
            Some(path) => Some(io::BufWriter::new(File::create(path)?)),
            None => None,
        };
        let mut limits = HashMap::new();
        for fs in [None, Some(Fs::Tmpfs), Some(Fs::Ext4)] {
            limits.insert((fs, Limit::OneWrite), 64.0);
        }
        Ok(Ctx {
            opts,
            data: crate::data::buffer(),
            figures: Vec::new(),
            references,
            json,
            limits,
            tty: io::stderr().is_terminal(),
            serial: 0,
        })
    }

    /// Prints a progress line (overwritten in place on a terminal).
    pub(crate) fn progress(&self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    /// Prints a line that stays.
    pub(crate) fn say(&self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("{line}");
    }

    /// A fresh, empty directory on `fs`, removed when dropped.
    pub(crate) fn scratch(&mut self, fs: Fs, what: &str) -> io::Result<ScratchDir> {
        self.serial += 1;
        let name = format!(
            "streamcache-bench-{}-{}-{}",
            std::process::id(),
            what,
            self.serial
        );
        ScratchDir::new(fs.base().join(name))
    }

    /// Runs the idle guard, one warm-up repetition and `--reps` measured ones of `rep`.
    /// Each repetition gets a fresh directory on `fs` (removed after it, outside its
    /// timing). A measured repetition in which other processes used more than
    /// `--max-foreign` of the machine is run again, up to `--retries` times.
    pub(crate) fn measure(
        &mut self,
        label: &str,
        fs: Option<Fs>,
        mut rep: impl FnMut(&Path) -> io::Result<Sample>,
    ) -> io::Result<Measured> {
        let mut measured = Measured::default();
        if self.opts.idle_wait {
            self.progress(&format!("{label}: waiting for an idle machine ..."));
            let w = sys::wait_idle(self.opts.idle_window, 0.04, self.opts.idle_timeout);
            if !w.idle {
                measured.flagged = true;
                self.say(&format!(
                    "warning: {label}: machine not idle after {:.0} s (last sample {:.0}% busy); measuring anyway",
                    w.waited.as_secs_f64(),
                    w.last_busy * 100.0
                ));
            }
        }
        let total = self.opts.reps + 1;
        for i in 0..total {
            let warmup = i == 0;
            let mut attempt = 0;
            loop {
                let what = if warmup {
                    "warm-up".to_string()
                } else {
                    format!("rep {i}/{}", self.opts.reps)
                };
                let retry = if attempt > 0 {
                    format!(" (retry {attempt})")
                } else {
                    String::new()
                };
                self.progress(&format!("{label} {what}{retry} ..."));
                let dir = match fs {
                    Some(fs) => Some(self.scratch(fs, "rep")?),
                    None => None,
                };
                let probe = CpuProbe::start();
                let sample = rep(dir.as_ref().map_or(Path::new("/nonexistent"), |d| d.path()))?;
                let foreign = probe.foreign_share();
                drop(dir);
                if warmup {
                    break;
                }
                if foreign > self.opts.max_foreign && attempt < self.opts.retries {
                    attempt += 1;
                    self.say(&format!(
                        "{label} {what}: other processes used {:.0}% of the CPU; running it again",
                        foreign * 100.0
                    ));
                    continue;
                }
                if foreign > self.opts.max_foreign {
                    measured.flagged = true;
                }
                measured.max_foreign = measured.max_foreign.max(foreign);
                for (key, value) in sample {
                    measured.values.entry(key).or_default().push(value);
                }
                break;
            }
        }
        Ok(measured)
    }

    /// The median of a W0 limit measured earlier in this run.
    pub(crate) fn limit_value(&self, fs: Option<Fs>, limit: Limit) -> Option<f64> {
        self.limits.get(&(fs, limit)).copied()
    }

    pub(crate) fn set_limit(&mut self, fs: Option<Fs>, limit: Limit, value: f64) {
        self.limits.insert((fs, limit), value);
    }

    /// Records the figure `fig` from `m`, writes its JSON line and prints a summary.
    pub(crate) fn emit(&mut self, m: &Measured, fig: Fig<'_>) -> io::Result<Option<f64>> {
        let Some(values) = m.values.get(fig.key) else {
            return Ok(None);
        };
        let (median, min, max) = report::stats(values);
        let limit_value = fig.limit.and_then(|l| self.limit_value(fig.fs, l));
        let ratio = limit_value.filter(|v| *v > 0.0).map(|v| median / v);
        let fs = fig.fs.map_or("-", Fs::name);
        let parameters: BTreeMap<String, serde_json::Value> = fig
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain(self.lead_parameter(fig.workload))
            .collect();
        let reference = self.references.lookup(
            fig.compare_with.unwrap_or(fig.workload),
            fs,
            fig.figure,
            &parameters,
            fig.reference,
        );
        let f = Figure {
            workload: fig.workload.to_string(),
            fs: fs.to_string(),
            figure: fig.figure.to_string(),
            parameters,
            median,
            min,
            max,
            unit: fig.unit.to_string(),
            ratio_to_limit: ratio,
            limit: limit_value.and(fig.limit.map(|l| l.name().to_string())),
            limit_value,
            reference,
            ratio_to_reference: reference.filter(|r| *r > 0.0).map(|r| median / r),
            target: fig.target.map(String::from),
            values: values.clone(),
            max_foreign_cpu: m.max_foreign,
            flagged: m.flagged,
        };
        let mut line = format!(
            "  {} {} {}: {} {} [{} - {}]",
            f.workload,
            f.fs,
            f.figure,
            report::num(median),
            f.unit,
            report::num(min),
            report::num(max)
        );
        if let (Some(r), Some(name)) = (ratio, &f.limit) {
            line.push_str(&format!(", {:.0}% of {name}", r * 100.0));
        }
        for (k, v) in &f.parameters {
            line.push_str(&format!(" {k}={v}"));
        }
        self.say(&line);
        if let Some(json) = &mut self.json {
            serde_json::to_writer(&mut *json, &f).map_err(io::Error::other)?;
            json.write_all(b"\n")?;
            json.flush()?;
        }
        self.figures.push(f);
        Ok(Some(median))
    }
}
