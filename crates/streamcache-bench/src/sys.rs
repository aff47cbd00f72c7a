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

/// Clock ticks per second (`_SC_CLK_TCK`).
pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
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

/// User plus system CPU seconds from `getrusage`.
pub(crate) fn cpu_seconds(who: Who) -> f64 {
    let one = |w: libc::c_int| {
        // SAFETY: getrusage writes a plain struct we own; zeroed is a valid rusage.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a rusage, valid `who`.
        let rc = unsafe { libc::getrusage(w, &mut ru) };
        if rc != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    match who {
        Who::ProcessAndChildren => one(libc::RUSAGE_SELF) + one(libc::RUSAGE_CHILDREN),
        Who::Process => one(libc::RUSAGE_SELF),
        Who::Thread => one(libc::RUSAGE_THREAD),
        Who::Children => one(libc::RUSAGE_CHILDREN),
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
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statfs fills a plain struct we own; zeroed is valid for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string, st a valid pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    // Magic numbers from statfs(2).
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
    fn dev_shm_is_recognised_as_tmpfs() {
        assert_eq!(fs_type(Path::new("/dev/shm")), "tmpfs");
    }
}
