//! Helpers: a real daemon process on a temporary socket, the `exec` client, and a
//! hermetic git environment with a generated repository.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_streamcache");

/// How long a test waits for an event before it gives up and fails. A guard against
/// hanging forever, never a performance threshold.
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);

/// A running `streamcache serve`, stopped (SIGTERM, then waited for) on drop.
pub(crate) struct Daemon {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) status: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    line_rx: Receiver<String>,
}

impl Daemon {
    /// Starts a daemon with `--socket <tmp>/s.sock --dir <tmp>/cache` and `args`.
    pub(crate) fn start(args: &[&str]) -> Daemon {
        Daemon::start_with(args, |_| {})
    }

    /// Like [`Daemon::start`], letting the caller adjust the command first.
    pub(crate) fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path().join("cache"))
            .arg("-v")
            .args(args);
        if !args.contains(&"--grace") {
            cmd.args(["--grace", "10s"]);
        }
        Daemon::spawn(cmd, dir, socket, adjust)
    }

    /// Starts `cmd` (a `serve` command) and waits until it says it is ready.
    pub(crate) fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        socket: PathBuf,
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, line_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let keep = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        let status = loop {
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if text.lines().any(|l| l == "READY=1") {
                        break text;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = lines.lock().unwrap().join("\n");
                panic!("daemon exited before it was ready ({status}):\n{log}");
            }
            assert!(started.elapsed() < PATIENCE, "daemon never became ready");
        };
        Daemon {
            dir,
            socket,
            status,
            child: Some(child),
            lines,
            line_rx,
        }
    }

    /// The daemon's log so far.
    pub(crate) fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing every one of `needles`.
    pub(crate) fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.line_rx.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no log line with {needles:?}; log:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("daemon log ended without {needles:?}; log:\n{}", self.log())
                }
            }
        }
    }

    /// The whole log of a daemon that has exited: waits for its last line to be read.
    pub(crate) fn whole_log(&self) -> String {
        assert!(
            self.child.is_none(),
            "the daemon must have been stopped first"
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.line_rx.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => return self.log(),
                Err(RecvTimeoutError::Timeout) => panic!("the daemon's log never ended"),
            }
        }
    }

    /// `streamcache stats --raw` as a map.
    pub(crate) fn stats(&self) -> HashMap<String, String> {
        let out = Command::new(BIN)
            .args(["stats", "--raw", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "stats failed: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The table `streamcache stats` prints for this daemon.
    pub(crate) fn stats_table(&self) -> String {
        let out = Command::new(BIN)
            .args(["stats", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "stats failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// One counter from [`Daemon::stats`], without the `streamcache_` prefix.
    pub(crate) fn stat(&self, name: &str) -> u64 {
        let stats = self.stats();
        let key = format!("streamcache_{name}");
        stats
            .get(&key)
            .unwrap_or_else(|| panic!("no {key} in {stats:?}"))
            .parse()
            .unwrap()
    }

    /// The `host:port` of the daemon's `/metrics` listener, from its ready status.
    pub(crate) fn metrics_addr(&self) -> String {
        self.status
            .split("metrics on http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no metrics address in {:?}", self.status))
            .to_owned()
    }

    /// The daemon's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub(crate) fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        signal(child.id(), rustix::process::Signal::TERM);
        child.wait().unwrap()
    }

    /// Waits for the daemon to exit (after a signal sent some other way).
    pub(crate) fn stop_waiting(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        child.wait().unwrap()
    }

    /// A `streamcache exec --socket <ours>` command for `program args`.
    pub(crate) fn exec_cmd(&self, verbose: bool, command: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("exec").arg("--socket").arg(&self.socket);
        if verbose {
            cmd.arg("-v");
        }
        cmd.arg("--").args(command);
        cmd
    }

    /// Runs `streamcache exec` with `stdin` and collects its output.
    pub(crate) fn exec(&self, verbose: bool, command: &[&str], stdin: &[u8]) -> Output {
        run_with_stdin(self.exec_cmd(verbose, command), stdin)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), rustix::process::Signal::TERM);
            let _ = child.wait();
        }
    }
}

pub(crate) fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let _ = rustix::process::kill_process(pid, sig);
}

/// Runs `cmd` with `stdin`, collecting stdout and stderr.
pub(crate) fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes an executable script.
pub(crate) fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Makes a FIFO.
pub(crate) fn fifo(path: &Path) {
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
}

/// Counts the lines of a file (0 if it does not exist).
pub(crate) fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A hermetic git environment: its own HOME and global config, no system config.
pub(crate) struct GitEnv {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
}

impl GitEnv {
    /// An environment whose global config sets `uploadpack.packObjectsHook = hook`
    /// (if given).
    pub(crate) fn new(hook: Option<&str>) -> GitEnv {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gitconfig");
        let mut text = String::from("[user]\n\tname = Test\n\temail = test@example.invalid\n");
        if let Some(hook) = hook {
            text.push_str(&format!("[uploadpack]\n\tpackObjectsHook = {hook}\n"));
        }
        std::fs::write(&config, text).unwrap();
        GitEnv { dir, config }
    }

    /// The hook string for a daemon: `<bin> exec [-v] --socket <socket> -- [wrapper]`.
    pub(crate) fn hook_for(daemon: &Daemon, verbose: bool, wrapper: Option<&Path>) -> String {
        let mut hook = format!("{BIN} exec");
        if verbose {
            hook.push_str(" -v");
        }
        hook.push_str(&format!(" --socket {} --", daemon.socket.display()));
        if let Some(w) = wrapper {
            hook.push_str(&format!(" {}", w.display()));
        }
        hook
    }

    /// A `git` command in this environment.
    pub(crate) fn git<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("git");
        hermetic(&mut cmd, self.dir.path(), &self.config);
        cmd.args(args);
        cmd
    }

    /// Runs git and asserts success; returns stdout.
    pub(crate) fn run<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.git(args).output().unwrap();
        assert!(
            out.status.success(),
            "git failed: {}\n{}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

fn hermetic(cmd: &mut Command, home: &Path, config: &Path) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", config)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("STREAMCACHE_SOCKET");
}

/// The refs of a repository, as `for-each-ref` prints them.
pub(crate) fn refs(env: &GitEnv, repo: &Path) -> String {
    env.run([
        OsStr::new("-C"),
        repo.as_os_str(),
        OsStr::new("for-each-ref"),
        OsStr::new("--format=%(objectname) %(refname)"),
        OsStr::new("refs/heads"),
        OsStr::new("refs/tags"),
    ])
}

/// Asserts that `git fsck` passes in `repo`.
pub(crate) fn fsck(env: &GitEnv, repo: &Path) {
    env.run([
        OsStr::new("-C"),
        repo.as_os_str(),
        OsStr::new("fsck"),
        OsStr::new("--no-progress"),
    ]);
}

/// The generated source repository, shared by the tests (never modified by them).
pub(crate) struct Fixture {
    pub(crate) repo: PathBuf,
}

/// A deterministic xorshift generator: random blobs that neither compress nor delta.
struct Rng(u64);

impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Random blobs of this size ...
pub(crate) const BLOB_SIZE: usize = 1 << 20;
/// ... this many of them: about 24 MiB of history that does not compress.
pub(crate) const BLOBS: usize = 24;

/// The bare repository with at least 20 MB of history, made with `git fast-import`:
/// `main` with 48 commits (every other one adds a 1 MiB random blob, the others edit a
/// text file), `side` with 2 more, and an annotated tag `v1`. Its content is
/// deterministic, so it is made once under Cargo's target tmpdir and reused.
pub(crate) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("streamcache-daemon-fixture-v2");
        let repo = root.join("src.git");
        if !root.join("complete").exists() {
            let building = root.with_extension(format!("building-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&building);
            std::fs::create_dir_all(&building).unwrap();
            build_fixture(&building.join("src.git"));
            std::fs::write(building.join("complete"), b"").unwrap();
            let _ = std::fs::remove_dir_all(&root);
            if std::fs::rename(&building, &root).is_err() {
                // Another test process finished first; its copy is the same.
                let _ = std::fs::remove_dir_all(&building);
            }
        }
        assert!(root.join("complete").exists());
        Fixture { repo }
    })
}

/// Feeds `stream` to `git fast-import` in `repo`.
fn fast_import(env: &GitEnv, repo: &Path, stream: &[u8]) {
    let mut child = env
        .git([
            OsStr::new("-C"),
            repo.as_os_str(),
            OsStr::new("fast-import"),
            OsStr::new("--quiet"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stream).unwrap();
    assert!(child.wait().unwrap().success());
}

fn build_fixture(repo: &Path) {
    let env = GitEnv::new(None);
    env.run([
        OsStr::new("init"),
        OsStr::new("-q"),
        OsStr::new("--bare"),
        repo.as_os_str(),
    ]);
    env.run([
        OsStr::new("-C"),
        repo.as_os_str(),
        OsStr::new("config"),
        OsStr::new("uploadpack.allowFilter"),
        OsStr::new("true"),
    ]);
    fast_import(&env, repo, &fast_import_stream());
    env.run([
        OsStr::new("-C"),
        repo.as_os_str(),
        OsStr::new("symbolic-ref"),
        OsStr::new("HEAD"),
        OsStr::new("refs/heads/main"),
    ]);
}

fn fast_import_stream() -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = Vec::with_capacity(BLOBS * BLOB_SIZE + (1 << 20));
    let mut blob = vec![0u8; BLOB_SIZE];
    let mut mark = 0u32;
    let mut time = 1_700_000_000u64;
    let mut commit = |s: &mut Vec<u8>,
                      branch: &str,
                      msg: &str,
                      files: &[(&str, &[u8])],
                      from: Option<u32>| {
        mark += 1;
        time += 60;
        s.extend_from_slice(
            format!(
                "commit refs/heads/{branch}\nmark :{mark}\ncommitter Test <test@example.invalid> {time} +0000\ndata {}\n{msg}\n",
                msg.len()
            )
            .as_bytes(),
        );
        if let Some(from) = from {
            s.extend_from_slice(format!("from :{from}\n").as_bytes());
        }
        for (path, data) in files {
            s.extend_from_slice(
                format!("M 100644 inline {path}\ndata {}\n", data.len()).as_bytes(),
            );
            s.extend_from_slice(data);
            s.push(b'\n');
        }
        s.push(b'\n');
        mark
    };
    let mut last = 0;
    for i in 0..BLOBS * 2 {
        if i % 2 == 0 {
            rng.fill(&mut blob);
            let name = format!("blobs/random-{i:03}.bin");
            last = commit(
                &mut s,
                "main",
                &format!("add {name}"),
                &[(&name, &blob)],
                None,
            );
        } else {
            let notes = format!("line {i}\n").repeat(i + 1);
            last = commit(
                &mut s,
                "main",
                &format!("edit notes {i}"),
                &[("notes.txt", notes.as_bytes())],
                None,
            );
        }
    }
    let side1 = commit(
        &mut s,
        "side",
        "side work",
        &[("side.txt", b"side 1\n")],
        Some(last),
    );
    commit(
        &mut s,
        "side",
        "more side work",
        &[("side.txt", b"side 2\n")],
        Some(side1),
    );
    let msg = "release v1";
    s.extend_from_slice(
        format!(
            "tag v1\nfrom :{last}\ntagger Test <test@example.invalid> {} +0000\ndata {}\n{msg}\n",
            time + 60,
            msg.len()
        )
        .as_bytes(),
    );
    s
}

// ---- Fault and abuse suite helpers: daemons on chosen paths, /proc, tmpfs, raw wire.

impl Daemon {
    /// Starts a daemon on `socket` with its cache in `cache_dir` (both chosen by the
    /// caller, e.g. on a tmpfs or shared with an earlier daemon) and `args`.
    pub(crate) fn start_on(socket: &Path, cache_dir: &Path, args: &[&str]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--socket")
            .arg(socket)
            .arg("--dir")
            .arg(cache_dir)
            .arg("-v")
            .args(args);
        if !args.contains(&"--grace") {
            cmd.args(["--grace", "10s"]);
        }
        Daemon::spawn(cmd, tempfile::tempdir().unwrap(), socket.to_owned(), |_| {})
    }

    /// Makes one stats request, reads until the daemon closes the connection, and waits
    /// for the thread that served it to end: once this returns, the daemon is in its
    /// accept loop and holds no descriptor, thread or connection slot for any earlier
    /// request of ours. Baselines are taken after it.
    pub(crate) fn settle(&self) {
        use std::io::Read;
        use streamcache_daemon::wire::{self, Kind};
        let mut conn = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        wire::write_frame(&mut conn, Kind::StatsRequest, &[wire::PROTOCOL_VERSION]).unwrap();
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.first(), Some(&b'S'), "a stats reply");
        let pid = self.pid();
        wait_until("the daemon's connection threads end", || {
            !thread_names(pid).iter().any(|n| n == "streamcache-con")
        });
    }

    /// Waits until the daemon has accepted and finished every connection made before
    /// this call, so that its counters count all of them. Its threads and descriptors
    /// cannot tell: a connection that a client made (and maybe dropped already) waits in
    /// the socket's listen queue until the daemon accepts it, and holds neither there.
    /// The stats request this sends queues behind those connections, and `accept(2)`
    /// takes the oldest first; so when its reply counts one active connection (itself),
    /// each earlier one has been accepted and has ended, and the daemon counts a
    /// connection's end only after everything else it counted for it.
    pub(crate) fn wait_for_connections_to_end(&self) {
        wait_until("the daemon has served every connection made so far", || {
            self.stat("connections_active") == 1
        });
    }

    /// Kills the daemon with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        signal(child.id(), rustix::process::Signal::KILL);
        child.wait().unwrap()
    }
}

/// Polls `done` until it holds, failing the test with `what` after [`PATIENCE`]. For
/// events that have no notification to wait on (a file vanishing, a process exiting
/// that is not our child, a thread ending inside another process).
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `/proc/<pid>/fd` points to, one target per open descriptor.
pub(crate) fn open_fds(pid: u32) -> Vec<PathBuf> {
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        // A descriptor closed between the listing and the readlink is not open.
        if let Ok(target) = std::fs::read_link(entry.unwrap().path()) {
            targets.push(target);
        }
    }
    targets.sort();
    targets
}

/// The open descriptors of `pid`, without those on `entries` and the files under it
/// (the cache keeps its directory and read handles of recent entries open on purpose),
/// as a sorted list.
pub(crate) fn fds_besides_entries(pid: u32, entries: &Path) -> Vec<PathBuf> {
    open_fds(pid)
        .into_iter()
        .filter(|t| !t.starts_with(entries))
        .collect()
}

/// Waits until the descriptors of `pid` besides those on entry files are `before`
/// again; on a timeout the failure shows both lists.
pub(crate) fn wait_for_fds(pid: u32, entries: &Path, before: &[PathBuf]) {
    wait_for_list("descriptors", before, || fds_besides_entries(pid, entries));
}

/// Polls `now` until it equals `expected`; on giving up, the failure shows both lists.
fn wait_for_list<T: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: &[T],
    mut now: impl FnMut() -> Vec<T>,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = now();
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's {what} did not return to {expected:?}: now {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names of the daemon's lasting threads: every thread but those serving a
/// connection (which end with it). Take this after [`Daemon::settle`] as the baseline
/// that [`wait_for_threads`] waits to see again.
///
/// A thread the daemon has just started shows the process's name until it names itself
/// (std names a thread from inside it, first thing): a baseline taken in between would
/// hold "streamcache" twice. Only the main thread keeps that name, so this waits until
/// one thread has it.
pub(crate) fn lasting_threads(pid: u32) -> Vec<String> {
    wait_until("every thread of the daemon has named itself", || {
        thread_names(pid)
            .iter()
            .filter(|n| n.as_str() == "streamcache")
            .count()
            == 1
    });
    let mut names = thread_names(pid);
    names.retain(|n| n != "streamcache-con");
    names
}

/// Every thread of `pid`, connection threads included.
pub(crate) fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        // A thread that ended between the listing and the read is not there.
        if let Ok(comm) = std::fs::read_to_string(task.unwrap().path().join("comm")) {
            names.push(comm.trim_end().to_owned());
        }
    }
    names.sort();
    names
}

/// Waits until the threads of `pid` are exactly `baseline` again: no connection thread
/// is left, and producer threads, which exit after 5 s idle, have gone. On a timeout
/// the failure shows both lists.
pub(crate) fn wait_for_threads(pid: u32, baseline: &[String]) {
    wait_for_list("threads", baseline, || thread_names(pid));
}

/// Descriptors of `pid` on entry files under `entries`.
pub(crate) fn entry_fds(pid: u32, entries: &Path) -> usize {
    open_fds(pid)
        .iter()
        .filter(|t| t.starts_with(entries) && t.as_path() != entries)
        .count()
}

/// One field of `/proc/<pid>/status` in KiB (e.g. `VmRSS`).
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The exit of a process that is not our child, awaited as an event: a pidfd, opened
/// while the process runs, becomes readable once it has exited.
pub(crate) struct ExitWatch {
    pid: u32,
    /// `None`: the process was gone already when the watch was made.
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl ExitWatch {
    pub(crate) fn new(pid: u32) -> ExitWatch {
        let raw = rustix::process::Pid::from_raw(pid as i32).expect("a pid is positive");
        let pidfd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::SRCH) => None,
            Err(e) => panic!("pidfd_open({pid}): {e}"),
        };
        ExitWatch { pid, pidfd }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited, waiting for that up to `timeout` (zero: whether it
    /// has exited already).
    pub(crate) fn exited_within(&self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let Some(pidfd) = &self.pidfd else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let left = Timespec::try_from(left).expect("a test's timeout fits a timespec");
            let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
            match poll(&mut fds, Some(&left)) {
                Ok(0) => return false,
                Ok(_) => return true,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("poll on the pidfd of {}: {e}", self.pid),
            }
        }
    }
}

/// Reads `n` lines of a child's stdout, each a pid.
pub(crate) fn read_pids(child: &mut Child, n: usize) -> Vec<u32> {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    (0..n)
        .map(|_| {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            line.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a pid: {line:?}"))
        })
        .collect()
}

/// Whether a process exists and is not a zombie.
pub(crate) fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may hold anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Regular files (and anything else that is not a directory) under `root`, recursively,
/// never following links. Empty if `root` does not exist.
pub(crate) fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => stack.push(path),
                Ok(_) => found.push(path),
                Err(_) => {}
            }
        }
    }
    found.sort();
    found
}

/// A real tmpfs of a chosen size on a fresh directory, lazily unmounted on drop.
/// Mounting needs root: without it the test fails (CI runs as root).
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=8m`), mode 0700.
    pub(crate) fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("{options},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("the mount command runs");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o {options} failed (this test needs root; euid is {}): {}",
            rustix::process::geteuid().as_raw(),
            text(&out.stderr)
        );
        Tmpfs { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts with `options` (e.g. `ro`, `rw`).
    pub(crate) fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.dir.path())
            .output()
            .expect("the mount command runs");
        assert!(
            out.status.success(),
            "remount {options}: {}",
            text(&out.stderr)
        );
    }

    /// Fills the free blocks with one file, `name`; returns its path.
    pub(crate) fn fill_blocks(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // Partial blocks: a last byte-sized write until nothing fits.
        while let Ok(1) = file.write(&[0]) {}
        path
    }

    /// Uses up the free inodes with empty files in a new directory `name`; returns it.
    pub(crate) fn fill_inodes(&self, name: &str) -> PathBuf {
        let dir = self.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for i in 0.. {
            match std::fs::File::create(dir.join(i.to_string())) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs's inodes: {e}"),
            }
        }
        dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a descriptor still open somewhere must not leave the mount behind.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A copy of the binary in a world-readable directory, so that a client run as
/// another user (uid 65534) can execute it.
pub(crate) fn bin_for_others() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("streamcache");
    std::fs::copy(BIN, &bin).unwrap();
    (dir, bin)
}

/// Fails the test unless it runs as root (tests that mount, or switch users, need it;
/// CI runs as root).
pub(crate) fn require_root(why: &str) {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test needs root ({why}); CI runs as root"
    );
}

/// `sh -c BODY`.
pub(crate) fn sh(body: &str) -> [&str; 3] {
    ["sh", "-c", body]
}

/// Three clients of one entry: a command that writes `bytes` zero bytes once a gate (a
/// FIFO in `dir`) opens. The first client's miss waits at the gate until the other two
/// have joined its entry as hits; then the gate opens. Returns the clients in order,
/// and the `sh` body (run again, it is the same key, and no longer waits).
pub(crate) fn three_clients_of_one_gated_entry(
    daemon: &Daemon,
    dir: &Path,
    bytes: u64,
) -> (Vec<Child>, String) {
    let gate = dir.join("gate");
    fifo(&gate);
    let body = format!(
        "if [ -p {g} ]; then read go < {g}; fi; head -c {bytes} /dev/zero",
        g = gate.display()
    );
    let command = sh(&body);
    let mut clients = vec![spawn_client(daemon.exec_cmd(false, &command))];
    daemon.wait_for_log(&["serving", "status=miss"]);
    for _ in 0..2 {
        clients.push(spawn_client(daemon.exec_cmd(false, &command)));
        daemon.wait_for_log(&["serving", "status=hit"]);
    }
    std::fs::write(&gate, b"go\n").unwrap();
    std::fs::remove_file(&gate).unwrap();
    (clients, body)
}

/// A `streamcache exec` child with piped stdout and stderr and no stdin, started now.
pub(crate) fn spawn_client(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The SHA-256 of `bytes`, as hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a raw wire client saw of the daemon's reply.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub(crate) status: Option<(streamcache_daemon::wire::Status, String)>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) exit: Option<streamcache_daemon::wire::ExitStatus>,
    pub(crate) verdict: Option<Result<(), String>>,
}

/// Sends `request` and `stdin` over a fresh connection, reads the whole reply.
pub(crate) fn wire_roundtrip(
    socket: &Path,
    request: &streamcache_daemon::wire::Request,
    stdin: &[u8],
) -> Reply {
    use std::io::Read;
    use streamcache_daemon::wire::{self, Demux, Event, Kind};
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let mut bytes = wire::frame(Kind::Request, &request.encode());
    bytes.extend_from_slice(stdin);
    conn.write_all(&bytes).unwrap();
    let mut reply = Reply::default();
    let mut demux = Demux::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        demux
            .feed(&buf[..n], |ev| {
                match ev {
                    Event::Response(s, m) => reply.status = Some((s, m)),
                    Event::Stdout(b) => reply.stdout.extend_from_slice(b),
                    Event::Stderr(b) => reply.stderr.extend_from_slice(b),
                    Event::Exit(e) => reply.exit = Some(e),
                    Event::Trailer(v) => reply.verdict = Some(v),
                }
                Ok(())
            })
            .unwrap();
    }
    reply
}

/// Waits for a client's exit and output, failing the test (and killing the client) if
/// it has not exited after [`PATIENCE`]: a hung client is a failure, not a hang.
pub(crate) fn output_within(child: Child, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            signal(pid, rustix::process::Signal::KILL);
            panic!("{what}: still running after {PATIENCE:?}");
        }
    }
}

/// Reads exactly `n` bytes of a child's stdout.
pub(crate) fn read_stdout(child: &mut Child, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    child.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
    buf
}

/// Reads a pid that a command wrote into `path`, waiting for it to appear.
pub(crate) fn pid_in(path: &Path) -> u32 {
    let mut pid = None;
    wait_until(&format!("a pid in {}", path.display()), || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

/// Runs `cmd` (a `serve` command) expecting it to refuse to start: returns its stderr
/// once it has exited with a failure. A daemon that becomes ready instead (it says so
/// on a notify socket in `notify_dir`) is killed and fails the test.
pub(crate) fn serve_refuses_to_start(mut cmd: Command, notify_dir: &Path) -> String {
    use std::io::Read;
    let notify_path = notify_dir.join("refusal-notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", notify_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 4096];
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                signal(child.id(), rustix::process::Signal::KILL);
                let _ = child.wait();
                panic!("the daemon started instead of refusing");
            }
        }
        assert!(
            Instant::now() < deadline,
            "the daemon neither started nor exited"
        );
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "it exited 0: {stderr}");
    stderr
}

/// Makes `cmd` start with the descriptor limit `soft` (and `hard`), lower than the
/// test's own: a test can lower a limit, never raise the hard one.
pub(crate) fn descriptor_limit(cmd: &mut Command, soft: u64, hard: u64) {
    use rustix::process::{setrlimit, Resource, Rlimit};
    use std::os::unix::process::CommandExt;
    let limit = Rlimit {
        current: Some(soft),
        maximum: Some(hard),
    };
    // SAFETY: the closure runs in the child between fork and exec and makes one system
    // call (prlimit64), which is async-signal-safe; it neither allocates nor locks.
    unsafe {
        cmd.pre_exec(move || Ok(setrlimit(Resource::Nofile, limit)?));
    }
}

impl Daemon {
    /// The figures of the daemon's start-up line about its descriptor limit
    /// (`soft=256 open=12 connections=16 …`), by name. Unlimited figures are left out.
    pub(crate) fn descriptor_figures(&self) -> HashMap<String, u64> {
        // The ready line comes after it: once that was read, so was the start-up line.
        if !self.log().contains("serving on") {
            self.wait_for_log(&["serving on"]);
        }
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("descriptor limit") && l.contains("connections="))
            .unwrap_or_else(|| panic!("no start-up line with the descriptor figures:\n{log}"));
        line.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
            .collect()
    }
}

// ---- Limits suite helpers: small generated repositories, a usage sampler, lock gates.

/// A bare repository of `blobs` random blobs of 1 MiB, one per commit on `main`: a pack
/// of a little more than `blobs` MiB that neither compresses nor deltas. `seed` makes
/// repositories whose packs differ.
pub(crate) fn small_repo(env: &GitEnv, path: &Path, seed: u64, blobs: usize) {
    env.run([
        OsStr::new("init"),
        OsStr::new("-q"),
        OsStr::new("--bare"),
        path.as_os_str(),
    ]);
    let mut rng = Rng(seed | 1);
    let mut blob = vec![0u8; BLOB_SIZE];
    let mut stream = Vec::with_capacity(blobs * (BLOB_SIZE + 256));
    for i in 0..blobs {
        rng.fill(&mut blob);
        let msg = format!("add blob {i}");
        stream.extend_from_slice(
            format!(
                "commit refs/heads/main\ncommitter Test <test@example.invalid> {} +0000\ndata {}\n{msg}\n",
                1_700_000_000 + i,
                msg.len()
            )
            .as_bytes(),
        );
        stream.extend_from_slice(
            format!("M 100644 inline blob-{i}.bin\ndata {}\n", blob.len()).as_bytes(),
        );
        stream.extend_from_slice(&blob);
        stream.extend_from_slice(b"\n\n");
    }
    fast_import(env, path, &stream);
    // So few objects are written loose (`fastimport.unpackLimit`): pack them, as a
    // served repository would be.
    env.run([
        OsStr::new("-C"),
        path.as_os_str(),
        OsStr::new("repack"),
        OsStr::new("-adq"),
    ]);
}

/// The size of a repository's packs, in bytes (`git count-objects -v`).
pub(crate) fn pack_size(env: &GitEnv, repo: &Path) -> u64 {
    let out = env.run([
        OsStr::new("-C"),
        repo.as_os_str(),
        OsStr::new("count-objects"),
        OsStr::new("-v"),
    ]);
    let kib: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("size-pack: "))
        .unwrap_or_else(|| panic!("no size-pack in {out}"))
        .parse()
        .unwrap();
    assert!(kib > 0, "{}: no pack: {out}", repo.display());
    kib * 1024
}

/// A file system's usage, sampled every millisecond from a thread until
/// [`Sampler::stop`]: the most it had in use and the least it had free.
pub(crate) struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Usage>>,
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) max_used: u64,
    pub(crate) min_free: u64,
    pub(crate) samples: u64,
}

/// The bytes in use and free (for unprivileged users, as `df` shows) on `path`'s file
/// system.
pub(crate) fn usage(path: &Path) -> (u64, u64) {
    let st = rustix::fs::statvfs(path).unwrap();
    (
        (st.f_blocks - st.f_bfree) * st.f_frsize,
        st.f_bavail * st.f_frsize,
    )
}

impl Sampler {
    pub(crate) fn start(path: &Path) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let theirs = Arc::clone(&stop);
        let path = path.to_path_buf();
        let thread = std::thread::spawn(move || {
            let (used, free) = usage(&path);
            let mut seen = Usage {
                max_used: used,
                min_free: free,
                samples: 1,
            };
            while !theirs.load(std::sync::atomic::Ordering::Relaxed) {
                // A sampler's period, not a wait for anything.
                std::thread::sleep(Duration::from_millis(1));
                let (used, free) = usage(&path);
                seen.max_used = seen.max_used.max(used);
                seen.min_free = seen.min_free.min(free);
                seen.samples += 1;
            }
            seen
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns what was seen.
    pub(crate) fn stop(mut self) -> Usage {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A gate scripts wait at with `flock -s PATH true`: closed (an exclusive lock held by
/// the test) until [`LockGate::open`], or until the test ends, so that a failing test
/// leaves nobody waiting. Unlike a FIFO, it lets through those that come after it
/// opened, too.
pub(crate) struct LockGate {
    pub(crate) path: PathBuf,
    file: Option<std::fs::File>,
}

impl LockGate {
    pub(crate) fn closed(path: &Path) -> LockGate {
        let file = std::fs::File::create(path).unwrap();
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
        LockGate {
            path: path.to_path_buf(),
            file: Some(file),
        }
    }

    pub(crate) fn open(&mut self) {
        drop(self.file.take());
    }
}
