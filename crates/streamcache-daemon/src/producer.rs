//! The producer of an entry: runs the command and writes its output as frames.
//!
//! It runs on a thread of the cache library, not on the connection that asked for it,
//! so the first caller leaving does not stop it (spec 7.4: upload-pack kills its hook
//! when it exits). It stops when every reader has left: the library's writer then
//! fails with `BrokenPipe`, and the command is killed.
//!
//! The command runs under a [`Supervisor`], a process of its own that kills everything
//! the command started when the producer is done with it or the daemon dies (see
//! `supervisor.rs`). Stopping one waits until all of that is gone.
//!
//! The entry is a sequence of frames (see [`crate::wire`]): `O` and `E` frames of at
//! most 64 KiB with the command's stdout and stderr in the order they were read, then
//! one `X` frame with how it ended. stdout and stderr are read with `poll(2)` from one
//! thread, so neither pipe can fill up and block the child while the other is read.
//! Each frame is one write call, so the library's back pressure holds the child at
//! most one frame ahead of the fastest reader.
//!
//! A command that fails (non-zero exit or a signal) still gets its exit frame written,
//! then the producer returns an error: every reader attached to the entry gets the
//! stderr and the exit code, and the library drops the entry so the next caller runs
//! the command afresh.
//!
//! With command limits, the producer first takes a slot (see `queue.rs`). One that
//! gets none in time fails with [`Busy`] before it has written anything, so its
//! clients run the command themselves; or, with `queue_full = "refuse"`, it writes a
//! refusal as the command's last words, as a timed-out command does, and its clients
//! fail with it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{Pid, Resource, Rlimit, Signal};

use crate::chain::Chain;
use crate::queue::{Busy, CommandQueue, QueueFull, REFUSED_EXIT_CODE};
use crate::spill::Spill;
use crate::supervisor::Supervisor;
use crate::wire::frame::{frame, put_header, Kind, HEADER_LEN, MAX_DATA_PAYLOAD};
use crate::wire::reply::ExitStatus;

/// The children the daemon is running, so that a shutdown can stop them.
#[derive(Debug, Default)]
pub(crate) struct Children {
    pids: Mutex<HashSet<i32>>,
    started: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl Children {
    fn add(self: &Arc<Self>, pid: u32) -> ChildGuard {
        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
        lock(&self.pids).insert(pid);
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ChildGuard {
            children: Arc::clone(self),
            pid,
        }
    }

    /// Children running now.
    pub(crate) fn running(&self) -> usize {
        lock(&self.pids).len()
    }

    /// Children started since the daemon started.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Commands that ran and failed: a non-zero exit, a signal, or the producer
    /// timeout. Not the cache's own failures, nor commands that never started.
    pub(crate) fn failed(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_failure(&self) {
        self.failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends `signal` to every running command and its process group. Their producers
    /// see them end and stop their supervisors, which take down the rest of each tree;
    /// if the daemon exits first, its end of their sockets closes, and so do they.
    pub(crate) fn signal_all(&self, signal: Signal) {
        for &pid in lock(&self.pids).iter() {
            if let Some(pid) = Pid::from_raw(pid) {
                // The child may have exited (unreaped); failing to signal it is fine.
                let _ = rustix::process::kill_process_group(pid, signal);
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct ChildGuard {
    children: Arc<Children>,
    pid: i32,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        lock(&self.children.pids).remove(&self.pid);
    }
}

/// Everything needed to run one command.
#[derive(Debug)]
pub(crate) struct Job {
    /// The program as the client named it: the command's `argv[0]`, and its name in
    /// messages.
    pub(crate) program: OsString,
    /// The binary that runs, as the allow-list resolved it.
    pub(crate) binary: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) stdin: Spill,
    pub(crate) timeout: Option<Duration>,
    pub(crate) children: Arc<Children>,
    /// The descriptor limit the command starts with, if not the daemon's own: the one
    /// the daemon was started with, before it raised its own (see `descriptors`).
    pub(crate) nofile: Option<Rlimit>,
    /// The command limits, if any: a slot is taken before the command starts.
    pub(crate) queue: Option<Arc<CommandQueue>>,
}

impl Job {
    /// Runs the command, writing its frames into `w`. See the module docs.
    pub(crate) fn run<W: Write>(self, w: &mut W) -> io::Result<()> {
        let program = self.program.to_string_lossy().into_owned();
        // Held until the command and all it started are gone: to the end of `run`.
        let _slot = match &self.queue {
            None => None,
            Some(queue) => match queue.acquire(&self.cwd) {
                Ok(slot) => Some(slot),
                Err(busy) => return answer_busy(busy, &program, w),
            },
        };
        let stdin = self.stdin.into_stdio()?;
        let (cwd, env, nofile) = (&self.cwd, &self.env, self.nofile);
        let mut supervisor = Supervisor::start(&self.binary, &self.program, &self.args, |cmd| {
            cmd.current_dir(cwd)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // The supervisor, and so the command, get the daemon's original limit.
            if let Some(limit) = nofile {
                start_with_limit(cmd, limit);
            }
        })
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {program:?}: {e}")))?;
        let _guard = self.children.add(supervisor.command_pid());
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let pumped = match supervisor.take_output() {
            Some((out, err)) => pump(out.into(), err.into(), w, deadline),
            None => Err(io::Error::other("child pipes missing")),
        };
        // A command may close its output and go on running: the deadline holds for
        // the wait as well.
        let ended = pumped.and_then(|()| supervisor.wait_until(deadline));
        let status = match ended {
            Ok(Some(status)) => status,
            Ok(None) => {
                self.children.count_failure();
                return timed_out(supervisor, &program, self.timeout, w);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                self.children.count_failure();
                return timed_out(supervisor, &program, self.timeout, w);
            }
            Err(e) => {
                supervisor.stop();
                // The writer's error may carry the library's, with causes of its own.
                tracing::debug!(program, error = %Chain(&e), "producer stopped; child killed");
                return Err(e);
            }
        };
        // What the command started and left running goes now, before the entry is
        // complete: nothing outlives its producer.
        supervisor.stop();
        let exit = match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        };
        if !exit.success() {
            self.children.count_failure();
        }
        w.write_all(&frame(Kind::Exit, &exit.encode()))?;
        if exit.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("{program} ended with {exit}")))
        }
    }
}

/// No command slot within `max_queue_wait`. By default the producer fails before any
/// output, with [`Busy`] inside its error, and the server answers each client busy.
/// With `queue_full = "refuse"` the refusal is the entry: a line on stderr and exit
/// code [`REFUSED_EXIT_CODE`], which every client relays and exits with.
fn answer_busy<W: Write>(busy: Busy, program: &str, w: &mut W) -> io::Result<()> {
    tracing::warn!(program, reason = %busy, queue_full = ?busy.queue_full, "no command slot in time");
    if busy.queue_full == QueueFull::Refuse {
        let message = format!("streamcache: refused to run {program}: {busy}\n");
        w.write_all(&frame(Kind::Stderr, message.as_bytes()))?;
        w.write_all(&frame(
            Kind::Exit,
            &ExitStatus::Code(REFUSED_EXIT_CODE).encode(),
        ))?;
    }
    Err(io::Error::new(io::ErrorKind::ResourceBusy, busy))
}

/// The [`Busy`] a producer failed with, if that is why it failed.
pub(crate) fn busy(err: &streamcache::Error) -> Option<&Busy> {
    match err {
        streamcache::Error::Producer(e) => e.get_ref()?.downcast_ref::<Busy>(),
        _ => None,
    }
}

/// Kills a command that ran past the producer timeout and tells its readers so, as the
/// command's own last words: a line on stderr and an exit by SIGKILL. Clients then
/// fail with that message (exit 137) instead of running the command themselves, which
/// would hang them as it hung here. The whole tree is gone before they hear of it.
fn timed_out<W: Write>(
    supervisor: Supervisor,
    program: &str,
    timeout: Option<Duration>,
    w: &mut W,
) -> io::Result<()> {
    supervisor.stop();
    let limit = timeout.map_or_else(String::new, |t| humantime::format_duration(t).to_string());
    tracing::warn!(program, timeout = %limit, "producer timeout reached; command killed");
    let message = format!(
        "streamcache: killed {program}: it ran longer than the producer timeout ({limit})\n"
    );
    w.write_all(&frame(Kind::Stderr, message.as_bytes()))?;
    w.write_all(&frame(
        Kind::Exit,
        &ExitStatus::Signal(Signal::KILL.as_raw()).encode(),
    ))?;
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{program} killed after the producer timeout ({limit})"),
    ))
}

/// Gives the supervisor, and so the command it starts, `limit` as its descriptor
/// limit.
fn start_with_limit(cmd: &mut Command, limit: Rlimit) {
    // SAFETY: the closure runs in the child between fork and exec. It makes one system
    // call (prlimit64), async-signal-safe, and neither allocates nor takes a lock.
    unsafe {
        cmd.pre_exec(move || Ok(rustix::process::setrlimit(Resource::Nofile, limit)?));
    }
}

pub(crate) fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec::try_from(d).unwrap_or(rustix::event::Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    })
}

/// Copies the child's stdout and stderr into frames until both are closed.
fn pump<W: Write>(
    out: OwnedFd,
    err: OwnedFd,
    w: &mut W,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let mut open: Vec<(OwnedFd, Kind)> = vec![(out, Kind::Stdout), (err, Kind::Stderr)];
    let mut buf = vec![0u8; HEADER_LEN + MAX_DATA_PAYLOAD];
    while !open.is_empty() {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "producer timeout reached",
                    ));
                }
                Some(timespec(left))
            }
        };
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = open
                .iter()
                .map(|(fd, _)| PollFd::new(fd, PollFlags::IN))
                .collect();
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            fds.iter().map(|p| !p.revents().is_empty()).collect()
        };
        let mut closed = Vec::new();
        for (i, (fd, kind)) in open.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            let n = match rustix::io::read(fd.as_fd(), &mut buf[HEADER_LEN..]) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                closed.push(i);
                continue;
            }
            let header: &mut [u8; HEADER_LEN] = (&mut buf[..HEADER_LEN])
                .try_into()
                .expect("the buffer starts with a header's worth of bytes");
            put_header(header, *kind, n);
            // One write call per frame: the library stores it whole or not at all.
            w.write_all(&buf[..HEADER_LEN + n])?;
        }
        for i in closed.into_iter().rev() {
            open.remove(i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::demux::{Demux, Event};
    use crate::wire::reply::{encode_response, Status};

    fn job(script: &str, stdin: &[u8]) -> Job {
        let spill = Spill::read_all(&mut &stdin[..], None).unwrap();
        Job {
            program: "sh".into(),
            binary: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: "/".into(),
            env: vec![("PATH".into(), std::env::var_os("PATH").unwrap())],
            stdin: spill,
            timeout: None,
            children: Arc::default(),
            nofile: None,
            queue: None,
        }
    }

    /// Runs the frames through the client's demultiplexer.
    fn demux(entry: &[u8]) -> (Vec<u8>, Vec<u8>, Option<ExitStatus>) {
        let mut reply = frame(Kind::Response, &encode_response(Status::Miss, ""));
        reply.extend_from_slice(entry);
        let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
        Demux::new()
            .feed(&reply, |ev| {
                match ev {
                    Event::Stdout(b) => out.extend_from_slice(b),
                    Event::Stderr(b) => err.extend_from_slice(b),
                    Event::Exit(e) => exit = Some(e),
                    _ => {}
                }
                Ok(())
            })
            .unwrap();
        (out, err, exit)
    }

    #[test]
    fn stdout_stderr_and_exit_code_come_out_as_frames() {
        let mut entry = Vec::new();
        job("cat; echo oops >&2; exit 0", b"hello")
            .run(&mut entry)
            .unwrap();
        let (out, err, exit) = demux(&entry);
        assert_eq!(out, b"hello");
        assert_eq!(err, b"oops\n");
        assert_eq!(exit, Some(ExitStatus::Code(0)));
    }

    #[test]
    fn a_failing_command_writes_its_exit_frame_then_fails() {
        let mut entry = Vec::new();
        let err = job("echo partial; echo bad >&2; exit 3", b"")
            .run(&mut entry)
            .unwrap_err();
        assert!(err.to_string().contains("exit code 3"), "{err}");
        let (out, stderr, exit) = demux(&entry);
        assert_eq!(out, b"partial\n");
        assert_eq!(stderr, b"bad\n");
        assert_eq!(exit, Some(ExitStatus::Code(3)));
    }

    #[test]
    fn a_command_killed_by_a_signal_reports_the_signal() {
        let mut entry = Vec::new();
        job("kill -TERM $$", b"").run(&mut entry).unwrap_err();
        assert_eq!(demux(&entry).2, Some(ExitStatus::Signal(15)));
    }

    #[test]
    fn large_interleaved_stdout_and_stderr_do_not_deadlock() {
        // Each stream alone overflows a pipe buffer many times over.
        let mut entry = Vec::new();
        job(
            "i=0; while [ $i -lt 200 ]; do head -c 8192 /dev/zero; head -c 8192 /dev/zero >&2; i=$((i+1)); done",
            b"",
        )
        .run(&mut entry)
        .unwrap();
        let (out, err, exit) = demux(&entry);
        assert_eq!(out.len(), 200 * 8192);
        assert_eq!(err.len(), 200 * 8192);
        assert_eq!(exit, Some(ExitStatus::Code(0)));
    }

    /// A destination whose reader has gone: every write fails with `BrokenPipe`.
    struct Gone;
    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_writer_kills_the_child_and_returns_the_write_error() {
        let j = job("echo first; exec sleep 600", b"");
        let children = Arc::clone(&j.children);
        let err = j.run(&mut Gone).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        // The child was reaped: nothing is left running.
        assert_eq!(children.running(), 0);
        assert_eq!(children.started(), 1);
    }

    #[test]
    fn the_timeout_kills_a_command_that_runs_too_long_and_says_so_in_its_frames() {
        for script in [
            "exec sleep 600",
            // Output closed, still running: the wait keeps to the deadline too.
            "exec >&- 2>&-; exec sleep 600",
            "echo partial; exec sleep 600",
        ] {
            let mut j = job(script, b"");
            j.timeout = Some(Duration::from_millis(200));
            let children = Arc::clone(&j.children);
            let mut entry = Vec::new();
            let err = j.run(&mut entry).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{script}");
            let (out, stderr, exit) = demux(&entry);
            let expect_out: &[u8] = if script.starts_with("echo") {
                b"partial\n"
            } else {
                b""
            };
            assert_eq!(out, expect_out, "{script}");
            assert_eq!(
                String::from_utf8(stderr).unwrap(),
                "streamcache: killed sh: it ran longer than the producer timeout (200ms)\n"
            );
            assert_eq!(exit, Some(ExitStatus::Signal(9)), "{script}");
            assert_eq!(children.running(), 0, "{script}: reaped");
        }
    }

    #[test]
    fn stopping_a_command_stops_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell's background child would keep running after the shell is killed.
        let j = job(
            &format!(
                "sleep 600 & echo $! > {}; echo go; wait",
                pid_file.display()
            ),
            b"",
        );
        let err = j.run(&mut Gone).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let gone = || {
            std::fs::read_to_string(&stat).map_or(true, |s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !gone() {
            assert!(
                Instant::now() < deadline,
                "the background sleep {pid} lives on"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn what_a_command_leaves_running_is_gone_once_its_entry_is_complete() {
        // A job in a session of its own that prints its pid, closes its output and runs
        // on after the command has exited 0.
        let mut entry = Vec::new();
        job("setsid sh -c 'echo $$; exec sleep 600 >&- 2>&-' &", b"")
            .run(&mut entry)
            .unwrap();
        let (out, _, exit) = demux(&entry);
        assert_eq!(exit, Some(ExitStatus::Code(0)));
        let pid = String::from_utf8(out).unwrap();
        // Killed and reaped before `run` returned: nothing to wait for.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        assert!(stat.is_err(), "the job {} runs on: {stat:?}", pid.trim());
    }

    #[test]
    fn a_program_that_does_not_exist_fails_before_writing_anything() {
        let mut j = job("", b"");
        j.program = "/nonexistent/streamcache-test-program".into();
        j.binary = "/nonexistent/streamcache-test-program".into();
        let mut entry = Vec::new();
        let err = j.run(&mut entry).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("cannot run"), "{err}");
        assert!(entry.is_empty());
    }
}
