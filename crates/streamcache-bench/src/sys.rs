//! What the harness asks the operating system: CPU accounting (`/proc/stat`,
//! `getrusage`), peak memory, file-system types, and the idle guard.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Machine-wide CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTicks {
    /// Ticks spent doing anything but idling or waiting for I/O.
    pub(crate) busy: u64,
    /// All ticks.
    pub(crate) total: u64,
}

impl CpuTicks {
    pub(crate) fn read() -> io::Result<CpuTicks> {
        let text = std::fs::read_to_string("/proc/stat")?;
        parse_proc_stat(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no cpu line in /proc/stat"))
    }
}

fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(CpuTicks {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `/proc/stat`.
pub(crate) fn clock_ticks() -> f64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        t => t as f64,
    }
}

/// Online CPUs.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Which processes or threads `cpu_seconds` accounts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Who {
    /// This process and its waited-for children.
    ProcessAndChildren,
    /// This process only (all its threads).
    Process,
    /// The calling thread.
    Thread,
    /// The children this process has waited for (and all they waited for).
    Children,
}

/// User plus system CPU seconds from `getrusage` (0 if it fails). From nix: rustix
/// has no `getrusage`.
pub(crate) fn cpu_seconds(who: Who) -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeVal;

    let one = |w: UsageWho| {
        let tv = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        getrusage(w).map_or(0.0, |ru| tv(ru.user_time()) + tv(ru.system_time()))
    };
    match who {
        Who::ProcessAndChildren => one(UsageWho::RUSAGE_SELF) + one(UsageWho::RUSAGE_CHILDREN),
        Who::Process => one(UsageWho::RUSAGE_SELF),
        Who::Thread => one(UsageWho::RUSAGE_THREAD),
        Who::Children => one(UsageWho::RUSAGE_CHILDREN),
    }
}

/// CPU accounting over one repetition: what the whole machine did minus what we did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuProbe {
    ticks: CpuTicks,
    own: f64,
    at: Instant,
}

impl CpuProbe {
    pub(crate) fn start() -> CpuProbe {
        CpuProbe {
            ticks: CpuTicks::read().unwrap_or_default(),
            own: cpu_seconds(Who::ProcessAndChildren),
            at: Instant::now(),
        }
    }

    /// The share of the machine's CPU capacity (0..1) that others used since `start`.
    pub(crate) fn foreign_share(&self) -> f64 {
        let now = CpuTicks::read().unwrap_or_default();
        let own = cpu_seconds(Who::ProcessAndChildren) - self.own;
        let elapsed = self.at.elapsed().as_secs_f64();
        let busy = now.busy.saturating_sub(self.ticks.busy) as f64 / clock_ticks();
        let capacity = elapsed * cpus() as f64;
        if capacity <= 0.0 {
            return 0.0;
        }
        ((busy - own) / capacity).clamp(0.0, 1.0)
    }
}

/// Outcome of the idle guard.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleWait {
    pub(crate) waited: Duration,
    /// False if the guard gave up at its timeout.
    pub(crate) idle: bool,
    /// Busy share of the last sample (0..1).
    pub(crate) last_busy: f64,
}

/// Waits until the whole machine has used less than `threshold` of its CPU for `window`
/// without a break, sampling every 250 ms, or until `timeout`.
pub(crate) fn wait_idle(window: Duration, threshold: f64, timeout: Duration) -> IdleWait {
    let start = Instant::now();
    let step = Duration::from_millis(250);
    let mut quiet = Duration::ZERO;
    let mut last_busy = 0.0;
    let mut prev = CpuTicks::read().unwrap_or_default();
    while quiet < window {
        if start.elapsed() >= timeout {
            return IdleWait {
                waited: start.elapsed(),
                idle: false,
                last_busy,
            };
        }
        std::thread::sleep(step);
        let now = CpuTicks::read().unwrap_or_default();
        let total = now.total.saturating_sub(prev.total);
        last_busy = if total == 0 {
            0.0
        } else {
            now.busy.saturating_sub(prev.busy) as f64 / total as f64
        };
        prev = now;
        if last_busy < threshold {
            quiet += step;
        } else {
            quiet = Duration::ZERO;
        }
    }
    IdleWait {
        waited: start.elapsed(),
        idle: true,
        last_busy,
    }
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub(crate) fn peak_rss() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmHWM in /proc/self/status"))
}

/// The file systems a run can measure on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fs {
    Tmpfs,
    Ext4,
}

impl Fs {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fs::Tmpfs => "tmpfs",
            Fs::Ext4 => "ext4",
        }
    }

    /// The directory this run works under: `/dev/shm` for tmpfs, the system temp dir
    /// (ext4 on these machines) otherwise.
    pub(crate) fn base(self) -> PathBuf {
        match self {
            Fs::Tmpfs => PathBuf::from("/dev/shm"),
            Fs::Ext4 => std::env::temp_dir(),
        }
    }
}

/// The type of the file system holding `path`, as a name.
pub(crate) fn fs_type(path: &Path) -> String {
    let Ok(st) = rustix::fs::statfs(path) else {
        return "unknown".into();
    };
    // Magic numbers from statfs(2); the field's integer type differs between targets.
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as i64 {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("0x{other:x}"),
    }
}

/// A directory removed (recursively) when dropped.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub(crate) fn new(path: PathBuf) -> io::Result<ScratchDir> {
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("warning: cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let text = "cpu  10 2 3 100 7 1 1 0 5 0\ncpu0 1 1 1 1 1 1 1 1\n";
        let t = parse_proc_stat(text).unwrap();
        assert_eq!(t.total, 10 + 2 + 3 + 100 + 7 + 1 + 1);
        assert_eq!(t.busy, 10 + 2 + 3 + 1 + 1);
    }

    #[test]
    fn peak_rss_of_this_process_is_reported() {
        assert!(peak_rss().unwrap() > 0);
    }

    #[test]
    fn cpu_seconds_count_this_thread_within_this_process() {
        let (thread, process) = (cpu_seconds(Who::Thread), cpu_seconds(Who::Process));
        let t = Instant::now();
        let mut spent = 0.0;
        // Spin until the thread has used 10 ms of CPU, however long that takes on a busy
        // machine; the minute is there only so that a broken getrusage fails the test.
        while spent < 0.01 && t.elapsed() < Duration::from_secs(60) {
            spent = std::hint::black_box(cpu_seconds(Who::Thread) - thread);
        }
        assert!(spent >= 0.01, "{spent}");
        assert!(cpu_seconds(Who::Process) - process >= spent);
        assert!(cpu_seconds(Who::ProcessAndChildren) >= cpu_seconds(Who::Process));
    }

    #[test]
    fn clock_ticks_are_the_kernels_user_hz() {
        let getconf = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output();
        if let Some(out) = getconf.ok().filter(|o| o.status.success()) {
            let want: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert_eq!(clock_ticks(), want);
        }
    }

    #[test]
    fn dev_shm_is_recognised_as_tmpfs() {
        assert_eq!(fs_type(Path::new("/dev/shm")), "tmpfs");
    }
}
