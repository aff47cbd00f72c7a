//! W5: a storm of concurrent `git clone`s served by `git upload-pack`, with and without
//! the pack-objects hook pointing at the streamcache daemon.
//!
//! CPU accounting without cgroups: each clone runs upload-pack through this binary's
//! hidden `__rusage FILE CMD...` wrapper (git's `--upload-pack`), which waits for
//! upload-pack and appends the CPU seconds of everything below it (upload-pack, and
//! pack-objects or the hook's client) to FILE: that is the server side in each clone's
//! process tree. The daemon (with the pack-objects it ran, which it waits for) is
//! counted when it is stopped and waited for: the change in our `RUSAGE_CHILDREN`
//! across that wait. Client side = the change in `RUSAGE_CHILDREN` across the clones
//! minus the wrappers' share.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::ctx::{Ctx, Fig, Sample};
use crate::sys::{self, Fs, ScratchDir, Who};

/// `__rusage FILE CMD ARGS...`: runs CMD with our stdio, then appends the CPU seconds
/// of CMD and all it waited for to FILE and exits with CMD's status.
pub(crate) fn rusage_child(args: &[String]) -> ExitCode {
    let (Some(file), Some(cmd)) = (args.first(), args.get(1)) else {
        eprintln!("usage: __rusage FILE CMD [ARGS...]");
        return ExitCode::from(2);
    };
    let status = match Command::new(cmd).args(&args[2..]).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("__rusage: cannot run {cmd}: {e}");
            return ExitCode::from(127);
        }
    };
    let cpu = sys::cpu_seconds(Who::Children);
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(file) {
        // One short write with O_APPEND: lines of concurrent wrappers never interleave.
        let _ = f.write_all(format!("{cpu}\n").as_bytes());
    }
    ExitCode::from(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
}

/// The daemon binary: `--daemon`, or `streamcache` next to this binary.
pub(crate) fn daemon_bin(ctx: &Ctx) -> Option<PathBuf> {
    if let Some(p) = &ctx.opts.daemon {
        return Some(p.clone());
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("streamcache");
    p.is_file().then_some(p)
}

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let Some(daemon) = daemon_bin(ctx) else {
        ctx.say(
            "w5: skipped: no daemon binary (build it with `cargo build --release -p streamcache-daemon`, or pass --daemon PATH)",
        );
        return Ok(());
    };
    let repo = repository(ctx)?;
    let packed = pack_size(&repo)?;
    let clients = ctx.opts.w5_clients;
    let tools = Tools::copy(ctx, &daemon)?;
    let repo_mb = format!("{:.0} MB", packed as f64 / 1e6);

    for (depth, n) in [(None, clients), (Some(1), clients), (None, 1)] {
        let kind = if depth.is_some() { "depth 1" } else { "full" };
        let label = format!("w5 {} {n} x clone {kind}", fs.name());
        let setup = Setup {
            exe: &tools.exe,
            daemon: &tools.daemon,
            repo: &repo,
            depth,
        };
        // Alternate which variant goes first, so neither always meets a colder cache.
        let mut round = 0;
        let m = ctx.measure(&label, Some(fs), |dir| {
            round += 1;
            let (mut plain, mut hooked) = (None, None);
            for hook in [round % 2 == 0, round % 2 == 1] {
                let sub = dir.join(if hook { "hook" } else { "plain" });
                let r = storm(&setup, &sub, n, hook)?;
                fs::remove_dir_all(&sub)?;
                if hook {
                    hooked = Some(r);
                } else {
                    plain = Some(r);
                }
            }
            let (Some(plain), Some(hooked)) = (plain, hooked) else {
                return Err(io::Error::other("a w5 variant did not run"));
            };
            let s: Sample = vec![
                ("wall_plain", plain.wall),
                ("wall_hook", hooked.wall),
                ("wall_ratio", hooked.wall / plain.wall),
                ("server_plain", plain.server),
                ("server_hook", hooked.server),
                ("server_ratio", hooked.server / plain.server),
                ("daemon_hook", hooked.daemon),
                ("upload_hook", hooked.server - hooked.daemon),
                ("client_plain", plain.client),
                ("client_hook", hooked.client),
                ("runs_plain", plain.runs as f64),
                ("runs_hook", hooked.runs as f64),
            ];
            Ok(s)
        })?;
        let fig = |figure, key, unit| {
            Fig::new("w5", Some(fs), figure, key, unit)
                .param("clients", n)
                .param("clone", kind)
                .param("repo", repo_mb.as_str())
        };
        ctx.emit(&m, fig("wall, no hook", "wall_plain", "s"))?;
        ctx.emit(&m, fig("wall, hook", "wall_hook", "s"))?;
        let f = fig("wall hook / no hook", "wall_ratio", "x");
        ctx.emit(
            &m,
            if n == 1 {
                f.target("<= 1.05 (a miss costs at most 5%)")
            } else {
                f
            },
        )?;
        ctx.emit(&m, fig("server CPU, no hook", "server_plain", "CPU-s"))?;
        ctx.emit(&m, fig("server CPU, hook", "server_hook", "CPU-s"))?;
        ctx.emit(
            &m,
            fig("  of it: daemon + its pack-objects", "daemon_hook", "CPU-s"),
        )?;
        ctx.emit(
            &m,
            fig(
                "  of it: upload-pack + hook clients",
                "upload_hook",
                "CPU-s",
            ),
        )?;
        let f = fig("server CPU hook / no hook", "server_ratio", "x");
        ctx.emit(&m, if n > 1 { f.target("<= 0.25") } else { f })?;
        ctx.emit(&m, fig("client CPU, no hook", "client_plain", "CPU-s"))?;
        ctx.emit(&m, fig("client CPU, hook", "client_hook", "CPU-s"))?;
        ctx.emit(&m, fig("pack-objects runs, no hook", "runs_plain", "count"))?;
        let f = fig("pack-objects runs, hook", "runs_hook", "count");
        ctx.emit(&m, if n > 1 { f.target("1") } else { f })?;
    }
    Ok(())
}

/// Private copies of this binary and of the daemon: git runs them by path from a
/// shell, and a concurrent `cargo build` may replace the files in the target dir
/// mid-run. They live as long as this value.
pub(crate) struct Tools {
    _dir: ScratchDir,
    /// This binary, for the `__rusage` wrapper.
    pub(crate) exe: PathBuf,
    pub(crate) daemon: PathBuf,
}

impl Tools {
    pub(crate) fn copy(ctx: &mut Ctx, daemon: &Path) -> io::Result<Tools> {
        let dir = ctx.scratch(Fs::Ext4, "tools")?;
        let exe = dir.path().join("streamcache-bench");
        fs::copy("/proc/self/exe", &exe)?;
        let copy = dir.path().join("streamcache");
        fs::copy(daemon, &copy)?;
        Ok(Tools {
            _dir: dir,
            exe,
            daemon: copy,
        })
    }
}

/// What a clone storm runs: the binaries, the repository and the kind of clone.
pub(crate) struct Setup<'a> {
    pub(crate) exe: &'a Path,
    pub(crate) daemon: &'a Path,
    pub(crate) repo: &'a Path,
    pub(crate) depth: Option<u32>,
}

struct Storm {
    wall: f64,
    server: f64,
    /// The daemon's share of `server` (zero without the hook).
    daemon: f64,
    client: f64,
    runs: u64,
}

/// `n` concurrent clones into `dir`, through the hook (with a fresh daemon whose cache
/// lives in `dir`) or not.
fn storm(s: &Setup<'_>, dir: &Path, n: usize, hook: bool) -> io::Result<Storm> {
    fs::create_dir_all(dir)?;
    let gitconfig = dir.join("gitconfig");
    if !hook {
        fs::write(&gitconfig, "")?;
        let c = clones(s, dir, n, &gitconfig, &|_| None)?;
        return Ok(Storm {
            wall: c.wall,
            server: c.server,
            daemon: 0.0,
            client: c.client,
            runs: n as u64,
        });
    }
    let socket = dir.join("d.sock");
    let daemon = start_daemon(s.daemon, &socket, &dir.join("cache"), dir, &[], &[])?;
    fs::write(&gitconfig, hook_config(s.daemon, Some(&socket)))?;
    let result = clones(s, dir, n, &gitconfig, &|_| None).and_then(|c| {
        let stats = daemon_stats(s.daemon, &socket)?;
        Ok((c, pack_objects_runs(&stats)))
    });
    let daemon_cpu = stop_daemons(vec![daemon])?;
    let (c, runs) = result?;
    Ok(Storm {
        wall: c.wall,
        server: c.server + daemon_cpu,
        daemon: daemon_cpu,
        client: c.client,
        runs,
    })
}

/// A git config whose `uploadpack.packObjectsHook` is the daemon's client: with
/// `--socket` when given, else the client finds its daemon by `STREAMCACHE_SOCKET`.
pub(crate) fn hook_config(daemon: &Path, socket: Option<&Path>) -> String {
    let socket = socket.map_or_else(String::new, |s| format!(" --socket {}", s.display()));
    format!(
        "[uploadpack]\n\tpackObjectsHook = {} exec{socket} --\n",
        daemon.display()
    )
}

/// What a storm of clones took: its wall time, and the CPU of the clones' process
/// trees, split into the server side (the `__rusage` wrappers: upload-pack and all
/// below it) and the client side (the rest).
pub(crate) struct Clones {
    pub(crate) wall: f64,
    pub(crate) server: f64,
    pub(crate) client: f64,
}

/// `n` concurrent `git clone`s of `s.repo` into `dir/clone-I`, configured by
/// `gitconfig` alone, each upload-pack run through the `__rusage` wrapper; clone I
/// gets `STREAMCACHE_SOCKET=socket(I)` when that is some. An error names the first
/// clone that failed, once all have ended.
pub(crate) fn clones(
    s: &Setup<'_>,
    dir: &Path,
    n: usize,
    gitconfig: &Path,
    socket: &dyn Fn(usize) -> Option<PathBuf>,
) -> io::Result<Clones> {
    let wrappers = dir.join("server-cpu");
    let upload_pack = format!(
        "{} __rusage {} git upload-pack",
        s.exe.display(),
        wrappers.display()
    );
    let url = format!("file://{}", s.repo.display());

    let c0 = sys::cpu_seconds(Who::Children);
    let t = Instant::now();
    let mut clones = Vec::with_capacity(n);
    for i in 0..n {
        let mut cmd = Command::new("git");
        cmd.arg("clone").arg("-q").arg("--no-local");
        if let Some(d) = s.depth {
            cmd.arg("--depth").arg(d.to_string());
        }
        cmd.arg("-u")
            .arg(&upload_pack)
            .arg(&url)
            .arg(dir.join(format!("clone-{i}")))
            .env("GIT_CONFIG_GLOBAL", gitconfig)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(socket) = socket(i) {
            cmd.env("STREAMCACHE_SOCKET", socket);
        }
        clones.push(cmd.spawn()?);
    }
    let mut failure = None;
    for c in clones {
        let out = c.wait_with_output()?;
        if !out.status.success() && failure.is_none() {
            failure = Some(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    let wall = t.elapsed().as_secs_f64();
    let c1 = sys::cpu_seconds(Who::Children);
    if let Some(err) = failure {
        return Err(io::Error::other(format!("git clone failed: {err}")));
    }
    // Every wrapper has written its line: git waits for its upload-pack.
    let wrapped: f64 = fs::read_to_string(&wrappers)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .sum();
    Ok(Clones {
        wall,
        server: wrapped,
        client: (c1 - c0 - wrapped).max(0.0),
    })
}

/// The `key=value` lines of `streamcache stats --raw` from the daemon on `socket`.
pub(crate) fn daemon_stats(daemon: &Path, socket: &Path) -> io::Result<String> {
    let out = Command::new(daemon)
        .args(["stats", "--raw", "--socket"])
        .arg(socket)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`streamcache stats` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The counter `streamcache_<name>` in the text of [`daemon_stats`].
pub(crate) fn counter(stats: &str, name: &str) -> Option<u64> {
    stats
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(key, _)| key.trim().strip_prefix("streamcache_") == Some(name))
        .and_then(|(_, value)| value.trim().parse().ok())
}

/// The times `pack-objects` ran for the clients of one daemon: the commands it started,
/// plus the requests it refused (their clients ran the command themselves).
pub(crate) fn pack_objects_runs(stats: &str) -> u64 {
    counter(stats, "children_started_total").unwrap_or(0)
        + counter(stats, "refused_total").unwrap_or(0)
}

/// Stops every daemon of `daemons` (see [`stop_daemon`]); the CPU seconds they used in
/// all their lives, with the commands they ran and waited for: the change in our
/// `RUSAGE_CHILDREN` across the waits.
pub(crate) fn stop_daemons(daemons: Vec<Child>) -> io::Result<f64> {
    let before = sys::cpu_seconds(Who::Children);
    let mut result = Ok(());
    for d in daemons {
        if let Err(e) = stop_daemon(d) {
            result = result.and(Err(e));
        }
    }
    result.map(|()| sys::cpu_seconds(Who::Children) - before)
}

/// `streamcache serve` with its socket, cache and log (`dir/daemon.log`), `extra`
/// flags and `envs` added to its environment; returns once the socket accepts.
pub(crate) fn start_daemon(
    bin: &Path,
    socket: &Path,
    cache: &Path,
    dir: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> io::Result<Child> {
    let log = File::create(dir.join("daemon.log"))?;
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--dir")
        .arg(cache)
        .args(extra)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if UnixStream::connect(socket).is_ok() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            return Err(io::Error::other(format!("daemon exited ({status}): {log}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(io::Error::other("daemon did not listen within 10 s"))
}

/// SIGTERM, then SIGKILL if the daemon is still there after 10 s; how it ended.
pub(crate) fn stop_daemon(mut child: Child) -> io::Result<ExitStatus> {
    // Our own child, not reaped yet, so its pid is still its own. A failure shows
    // below as a daemon that does not exit.
    let _ = kill_process(Pid::from_child(&child), Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()
}

/// The bytes of the repository's packs.
pub(crate) fn pack_size(repo: &Path) -> io::Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(repo.join("objects/pack"))? {
        let e = e?;
        if e.path().extension().is_some_and(|x| x == "pack") {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

/// The bare repository W5 clones, made once and kept under the temp dir (its name
/// carries the size), so later runs reuse it.
pub(crate) fn repository(ctx: &mut Ctx) -> io::Result<PathBuf> {
    let mb = ctx.opts.w5_repo_mb;
    let repo = std::env::temp_dir().join(format!("streamcache-bench-w5-repo-{mb}mb-v2.git"));
    if repo.join("bench-ready").exists() {
        return Ok(repo);
    }
    ctx.say(&format!(
        "w5: generating a ~{mb} MB repository at {} (kept for later runs)",
        repo.display()
    ));
    if repo.exists() {
        fs::remove_dir_all(&repo)?;
    }
    let ok = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&repo)
        .status()?;
    if !ok.success() {
        return Err(io::Error::other("git init failed"));
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin"))?;
    let written = history(&mut BufWriter::new(stdin), mb * 1_000_000);
    let status = child.wait()?;
    written?;
    if !status.success() {
        return Err(io::Error::other("git fast-import failed"));
    }
    File::create(repo.join("bench-ready"))?;
    Ok(repo)
}

/// Writes a fast-import stream: 200 commits on `main`, each changing a few lines in 5
/// of 40 text files (deltas) and rewriting one of 8 binary files with incompressible
/// bytes sized so the pack reaches about `bytes`; a tag every 25 commits.
fn history(out: &mut impl Write, bytes: u64) -> io::Result<()> {
    const COMMITS: u64 = 200;
    const FILES: usize = 40;
    const LINES: usize = 200;
    const WORDS: [&str; 16] = [
        "stream", "cache", "reader", "writer", "entry", "pack", "object", "delta", "clone",
        "fetch", "index", "cursor", "pipe", "notify", "wait", "byte",
    ];
    let mut rng: u64 = 0x5eed_0005;
    let mut next = move || {
        rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut seeds: Vec<Vec<u64>> = (0..FILES)
        .map(|_| (0..LINES).map(|_| next()).collect())
        .collect();
    let blob = (bytes / COMMITS).max(1024) as usize;
    let render = |seeds: &[u64]| {
        let mut text = String::new();
        for s in seeds {
            let mut x = *s;
            for w in 0..(6 + (x % 7)) {
                if w > 0 {
                    text.push(' ');
                }
                text.push_str(WORDS[(x & 15) as usize]);
                x = x.rotate_right(5);
            }
            text.push('\n');
        }
        text
    };
    let data = |out: &mut dyn Write, bytes: &[u8]| -> io::Result<()> {
        writeln!(out, "data {}", bytes.len())?;
        out.write_all(bytes)?;
        writeln!(out)
    };
    for c in 0..COMMITS {
        writeln!(out, "commit refs/heads/main")?;
        writeln!(out, "mark :{}", c + 1)?;
        writeln!(
            out,
            "committer Bench <bench@example.invalid> {} +0000",
            1_700_000_000 + c * 3600
        )?;
        data(out, format!("change {c}\n").as_bytes())?;
        if c > 0 {
            writeln!(out, "from :{c}")?;
        }
        let touched: Vec<usize> = if c == 0 {
            (0..FILES).collect()
        } else {
            (0..5).map(|_| (next() % FILES as u64) as usize).collect()
        };
        for f in touched {
            if c > 0 {
                for _ in 0..10 {
                    let l = (next() % LINES as u64) as usize;
                    seeds[f][l] = next();
                }
            }
            writeln!(out, "M 100644 inline src/module-{f:02}.txt")?;
            data(out, render(&seeds[f]).as_bytes())?;
        }
        let mut bin = Vec::with_capacity(blob + 8);
        while bin.len() < blob {
            bin.extend_from_slice(&next().to_le_bytes());
        }
        bin.truncate(blob);
        // Eight binary paths rewritten in turn: history holds every version, the tip
        // only eight, so a `--depth 1` clone is much smaller than a full one.
        writeln!(out, "M 100644 inline assets/blob-{}.bin", c % 8)?;
        data(out, &bin)?;
        if (c + 1) % 25 == 0 {
            writeln!(out, "reset refs/tags/v{}", (c + 1) / 25)?;
            writeln!(out, "from :{}", c + 1)?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_daemon_ends_a_child_with_sigterm() {
        use std::os::unix::process::ExitStatusExt;

        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let status = stop_daemon(child).unwrap();
        assert_eq!(status.signal(), Some(Signal::TERM.as_raw()));
    }

    #[test]
    fn a_counter_is_found_by_its_whole_name() {
        let stats = "socket=/s\nstreamcache_peer_refused_total=7\nstreamcache_refused_total=2\n\
                     streamcache_remote_hits_total=5\nstreamcache_hits_total=3\n\
                     streamcache_children_started_total=1\n";
        assert_eq!(counter(stats, "refused_total"), Some(2));
        assert_eq!(counter(stats, "hits_total"), Some(3));
        assert_eq!(counter(stats, "remote_hits_total"), Some(5));
        assert_eq!(counter(stats, "socket"), None);
        assert_eq!(counter(stats, "misses_total"), None);
        assert_eq!(pack_objects_runs(stats), 3);
    }

    #[test]
    fn the_hook_names_a_socket_only_when_given_one() {
        let d = Path::new("/t/streamcache");
        assert_eq!(
            hook_config(d, Some(Path::new("/r/d.sock"))),
            "[uploadpack]\n\tpackObjectsHook = /t/streamcache exec --socket /r/d.sock --\n"
        );
        assert_eq!(
            hook_config(d, None),
            "[uploadpack]\n\tpackObjectsHook = /t/streamcache exec --\n"
        );
    }
}
