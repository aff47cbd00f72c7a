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
    let stream = fast_import_stream();
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
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success());
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
