//! W7: the daemon's serving path beside nginx's.
//!
//! One finished entry of S bytes served by the daemon to N concurrent `streamcache
//! exec` clients draining to `/dev/null`, and the same S bytes served by nginx (Debian's
//! package, `sendfile on`) as a static file over a Unix socket to N `curl
//! --unix-socket` clients, in the same repetition, alternating which goes first.
//!
//! Both servers are started and stopped inside each repetition, so that the harness
//! counts them as our own (waited-for) children and not as foreign CPU. The figures
//! cover the serving phase alone, not the start or the making of the entry:
//!
//! - **CPU**: the server's processes' user + system time from `/proc/PID/stat` (for
//!   nginx the master and its workers) before the first client and after the last. The
//!   unit is a clock tick (10 ms), so a phase serves at least 8 GiB, in rounds of N
//!   clients, to keep the tick under 1.5% of what it measures.
//! - **RSS**: sampled every 10 ms from `/proc/PID/status` during the phase, the most
//!   seen (for nginx the sum over its processes, so shared pages count once per
//!   process), beside the RSS just before the first client.
//!
//! The daemon must serve every client from the one entry: the phase fails if the
//! daemon started a command for any client (a client that fell back to running `cat`
//! itself would measure `cat`, not the daemon).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::ctx::{Ctx, Fig, Sample};
use crate::data::{show_size, GIB};
use crate::sys::{self, Fs};
use crate::w5;

/// Each phase serves at least this much, in rounds of N clients.
const SERVED_PER_PHASE: u64 = 8 * GIB;
/// The name the served bytes have in the data directory (nginx's URL path).
const FILE_NAME: &str = "pack";

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let Some(daemon) = w5::daemon_bin(ctx) else {
        ctx.say(
            "w7: skipped: no daemon binary (build it with `cargo build --release -p streamcache-daemon`, or pass --daemon PATH)",
        );
        return Ok(());
    };
    let nginx = find_nginx();
    if nginx.is_none() {
        ctx.say(
            "w7: nginx not found (Debian: `apt-get install nginx`); measuring the daemon alone",
        );
    }
    let size = ctx.opts.size;
    // A private copy of the daemon: a concurrent `cargo build` may replace the file.
    let tools = ctx.scratch(Fs::Ext4, "w7-tools")?;
    let daemon_copy = tools.path().join("streamcache");
    fs::copy(&daemon, &daemon_copy)?;
    let data = ctx.scratch(fs, "w7-data")?;
    ctx.progress(&format!(
        "w7 {}: writing {} of data ...",
        fs.name(),
        show_size(size)
    ));
    write_data(&data.path().join(FILE_NAME), &ctx.data, size)?;
    let setup = Setup {
        daemon: &daemon_copy,
        nginx: nginx.as_deref(),
        data: data.path(),
        size,
    };
    let s = show_size(size);
    for n in ctx.opts.w7_clients.clone() {
        let rounds = SERVED_PER_PHASE.div_ceil(size * n as u64).max(1);
        let label = format!("w7 {} N={n} S={s} ({rounds} rounds)", fs.name());
        let mut turn = 0;
        let m = ctx.measure(&label, Some(fs), |dir| {
            turn += 1;
            let mut sample: Sample = Vec::new();
            let daemon_first = turn % 2 == 1;
            for daemon_turn in [daemon_first, !daemon_first] {
                if daemon_turn {
                    let p = daemon_phase(&setup, &dir.join("daemon"), n, rounds)?;
                    sample.extend(p.sample([
                        "daemon_cpu",
                        "daemon_rate",
                        "daemon_rss",
                        "daemon_rss0",
                    ]));
                } else if setup.nginx.is_some() {
                    let p = nginx_phase(&setup, &dir.join("nginx"), n, rounds)?;
                    sample.extend(p.sample(["nginx_cpu", "nginx_rate", "nginx_rss", "nginx_rss0"]));
                }
            }
            let value = |k: &str| sample.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
            if let (Some(d), Some(x)) = (value("daemon_cpu"), value("nginx_cpu")) {
                sample.push(("cpu_ratio", d / x));
            }
            Ok(sample)
        })?;
        let fig = |figure, key, unit| {
            Fig::new("w7", Some(fs), figure, key, unit)
                .param("N", n)
                .param("S", s.as_str())
        };
        ctx.emit(
            &m,
            fig("daemon CPU per GB served", "daemon_cpu", "CPU-s/GB"),
        )?;
        if setup.nginx.is_some() {
            ctx.emit(&m, fig("nginx CPU per GB served", "nginx_cpu", "CPU-s/GB"))?;
            ctx.emit(
                &m,
                fig("daemon / nginx CPU per GB", "cpu_ratio", "x").target("<= 1.2"),
            )?;
        }
        ctx.emit(
            &m,
            fig("daemon serving rate N*S/wall", "daemon_rate", "GB/s"),
        )?;
        if setup.nginx.is_some() {
            ctx.emit(&m, fig("nginx serving rate N*S/wall", "nginx_rate", "GB/s"))?;
        }
        ctx.emit(
            &m,
            fig("daemon RSS, most while serving", "daemon_rss", "MiB"),
        )?;
        ctx.emit(
            &m,
            fig("daemon RSS before the clients", "daemon_rss0", "MiB"),
        )?;
        if setup.nginx.is_some() {
            ctx.emit(
                &m,
                fig(
                    "nginx RSS (all processes), most while serving",
                    "nginx_rss",
                    "MiB",
                ),
            )?;
            ctx.emit(&m, fig("nginx RSS before the clients", "nginx_rss0", "MiB"))?;
        }
    }
    Ok(())
}

struct Setup<'a> {
    daemon: &'a Path,
    nginx: Option<&'a Path>,
    /// The directory holding the served bytes as `FILE_NAME`.
    data: &'a Path,
    size: u64,
}

impl Setup<'_> {
    fn file(&self) -> PathBuf {
        self.data.join(FILE_NAME)
    }
}

/// What one server did in one phase.
struct Phase {
    cpu_seconds: f64,
    wall: f64,
    served: u64,
    rss_peak: u64,
    rss_before: u64,
}

impl Phase {
    /// CPU-s per GB, GB/s, and the two RSS figures in MiB, under the given keys.
    fn sample(&self, keys: [&'static str; 4]) -> Sample {
        let gb = self.served as f64 / 1e9;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        vec![
            (keys[0], self.cpu_seconds / gb),
            (keys[1], gb / self.wall),
            (keys[2], mib(self.rss_peak)),
            (keys[3], mib(self.rss_before)),
        ]
    }
}

fn daemon_phase(s: &Setup<'_>, dir: &Path, n: usize, rounds: u64) -> io::Result<Phase> {
    fs::create_dir_all(dir)?;
    let socket = dir.join("d.sock");
    let child = w5::start_daemon(
        s.daemon,
        &socket,
        &dir.join("cache"),
        dir,
        &["--allow", "cat", "--max-age", "1h"],
        &[],
    )?;
    let pid = child.id();
    let result = (|| {
        let client = || {
            let mut cmd = Command::new(s.daemon);
            cmd.arg("exec")
                .arg("--socket")
                .arg(&socket)
                .arg("--")
                .arg("cat")
                .arg(s.file());
            cmd
        };
        // The entry, made by one client and finished before the phase.
        run_clients(&client, 1)?;
        let phase = serve(|| vec![pid], &client, n, rounds, s.size)?;
        let started = stat(s.daemon, &socket, "children_started_total")?;
        if started != 1 {
            return Err(io::Error::other(format!(
                "the daemon started {started} commands for one key: clients were not all served from the entry"
            )));
        }
        Ok(phase)
    })();
    w5::stop_daemon(child)?;
    result
}

fn nginx_phase(s: &Setup<'_>, dir: &Path, n: usize, rounds: u64) -> io::Result<Phase> {
    let Some(nginx) = s.nginx else {
        return Err(io::Error::other("no nginx"));
    };
    fs::create_dir_all(dir)?;
    let socket = dir.join("nginx.sock");
    let child = start_nginx(nginx, dir, &socket, s.data)?;
    let master = child.id();
    let url = format!("http://localhost/{FILE_NAME}");
    let result = (|| {
        let client = || {
            let mut cmd = Command::new("curl");
            cmd.args([
                "--silent",
                "--show-error",
                "--fail",
                "--output",
                "/dev/null",
            ])
            .arg("--unix-socket")
            .arg(&socket)
            .arg(&url);
            cmd
        };
        run_clients(&client, 1)?;
        serve(|| nginx_pids(master), &client, n, rounds, s.size)
    })();
    stop_nginx(child)?;
    result
}

/// `rounds` times N concurrent clients, with the CPU and RSS of the server's processes
/// (`pids`, asked again at every sample) over all of it.
fn serve(
    pids: impl Fn() -> Vec<u32> + Send + Sync,
    client: &dyn Fn() -> Command,
    n: usize,
    rounds: u64,
    size: u64,
) -> io::Result<Phase> {
    let rss_before = pids().into_iter().map(rss).sum();
    let cpu0: u64 = pids().into_iter().map(cpu_ticks).sum();
    let done = AtomicBool::new(false);
    let t = Instant::now();
    let (served, rss_peak) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(pids().into_iter().map(rss).sum());
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        let mut result = Ok(0);
        for _ in 0..rounds {
            if let Err(e) = run_clients(client, n) {
                result = Err(e);
                break;
            }
            result = result.map(|served| served + n as u64 * size);
        }
        done.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(0);
        (result, peak)
    });
    let wall = t.elapsed().as_secs_f64();
    let cpu1: u64 = pids().into_iter().map(cpu_ticks).sum();
    Ok(Phase {
        cpu_seconds: cpu1.saturating_sub(cpu0) as f64 / sys::clock_ticks(),
        wall,
        served: served?,
        rss_peak: rss_peak.max(rss_before),
        rss_before,
    })
}

/// Starts `n` clients at once, output to `/dev/null`, and waits for all; an error
/// names the first that failed.
fn run_clients(client: &dyn Fn() -> Command, n: usize) -> io::Result<()> {
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let spawned = client()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => {
                reap(children);
                return Err(e);
            }
        }
    }
    let mut failure = None;
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() && failure.is_none() {
            failure = Some(format!(
                "a client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    failure.map_or(Ok(()), |f| Err(io::Error::other(f)))
}

fn reap(children: Vec<Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One of the daemon's counters, from `streamcache stats --raw`.
fn stat(daemon: &Path, socket: &Path, name: &str) -> io::Result<u64> {
    let text = w5::daemon_stats(daemon, socket)?;
    w5::counter(&text, name)
        .ok_or_else(|| io::Error::other(format!("no {name} in `streamcache stats --raw`: {text}")))
}

fn write_data(path: &Path, data: &[u8], size: u64) -> io::Result<()> {
    let mut f = io::BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut left = size;
    while left > 0 {
        let n = left.min(data.len() as u64) as usize;
        f.write_all(&data[..n])?;
        left -= n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx in the foreground with its own prefix, error log and pid file under `dir`,
/// Debian's defaults for the rest (`worker_processes auto`), `sendfile on`, and one
/// Unix socket serving `root`.
fn start_nginx(bin: &Path, dir: &Path, socket: &Path, root: &Path) -> io::Result<Child> {
    let user = if rustix::process::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "{user}daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  default_type application/octet-stream;\n\
               server {{ listen unix:{socket}; root {root}; }}\n}}\n",
            dir = dir.display(),
            socket = socket.display(),
            root = root.display(),
        ),
    )?;
    let log = dir.join("error.log");
    let mut child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // Ready once the socket accepts and the workers are up.
        if std::os::unix::net::UnixStream::connect(socket).is_ok()
            && nginx_pids(child.id()).len() > 1
        {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(&log).unwrap_or_default();
            return Err(io::Error::other(format!("nginx exited ({status}): {log}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(io::Error::other("nginx did not listen within 10 s"))
}

/// SIGQUIT (graceful stop), then SIGKILL after 10 s.
fn stop_nginx(mut child: Child) -> io::Result<()> {
    let _ = kill_process(Pid::from_child(&child), Signal::QUIT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait().map(drop)
}

/// nginx's master and its workers.
fn nginx_pids(master: u32) -> Vec<u32> {
    let children =
        fs::read_to_string(format!("/proc/{master}/task/{master}/children")).unwrap_or_default();
    std::iter::once(master)
        .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect()
}

/// User + system clock ticks of a process, all its threads (0 once it is gone).
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    parse_cpu_ticks(&text).unwrap_or(0)
}

/// utime and stime are fields 14 and 15 of `/proc/PID/stat`; the command name (field
/// 2) may hold spaces and parentheses, so count from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of a process, in bytes (0 once it is gone).
fn rss(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 10 1000 50";
        assert_eq!(parse_cpu_ticks(stat), Some(12));
    }

    #[test]
    fn this_process_has_cpu_ticks_and_rss() {
        let me = std::process::id();
        let t = Instant::now();
        // Use at least one tick of CPU (bounded, so a broken /proc fails rather than hangs).
        while cpu_ticks(me) == 0 && t.elapsed() < Duration::from_secs(60) {
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
        assert!(cpu_ticks(me) > 0);
        assert!(rss(me) > 0);
    }
}
