//! `streamcache exec`: the client, as git's `uploadpack.packObjectsHook` runs it.
//!
//! 1. Read all of stdin (upload-pack writes all of it before reading any output).
//! 2. Send the daemon the command, the canonical working directory, the environment
//!    variables that matter (see [`forwarded_env`]), `--key` material and the stdin.
//! 3. Relay the reply: stdout frames to stdout, stderr frames to stderr, then exit with
//!    the command's exit code (128 + n for a signal), but only if the trailer says the
//!    entry was complete. A reply that breaks off ends in a non-zero exit: upload-pack
//!    must never take a truncated pack for a whole one.
//!
//! **Whom it trusts.** Right after connecting, before it sends anything, the client
//! checks who bound the socket (`SO_PEERCRED`): its own user, root, or the configured
//! `daemon_user`. Anyone else may have bound the path first; the client sends such a
//! server nothing (the request carries its environment and stdin) and relays none of
//! its bytes, and runs the command itself.
//!
//! **Fail open.** If the daemon cannot be reached or trusted, refuses, is busy (at its
//! connection limit, or no command slot within `max_queue_wait`), or fails before a
//! single byte of output was relayed, the client runs the command itself: it `exec`s it with
//! the buffered stdin, so from then on it *is* the command (same exit status, same
//! signals). It explains why on stderr only with `-v`, because git shows a hook's stderr
//! to the user as `remote: …`, even for `clone -q`.
//!
//! **A closed stdout or stderr.** Run directly, a command whose stdout (or stderr) is
//! closed fails to write and exits non-zero; relayed by us into the `/dev/null` the
//! runtime puts in place of a closed descriptor, it would exit 0 with its output lost.
//! So when either was closed at start (`main.rs` marks it, see `MARK_CLOSED_STDIO`
//! there), the client does not use the daemon: it `exec`s the command at once, with
//! its own stdin, and the command sees the descriptor closed and exits as it would.
//!
//! **Signals.** upload-pack sends SIGTERM (or the signal that killed it, often SIGPIPE)
//! to its hook when it exits. The client keeps the default SIGTERM action (die quietly);
//! SIGPIPE is ignored, as in every Rust program, so a closed stdout shows up as `EPIPE`
//! and the client exits 141 without a word. The producer runs in the daemon and goes on
//! for the other callers.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::chain::Chain;
use crate::settings::ClientSettings;
use crate::spill::Spill;
use crate::wire::demux::{Demux, Event, Next};
use crate::wire::error::WireError;
use crate::wire::frame::{frame, read_frame, write_frame, Kind, MAX_REQUEST_PAYLOAD};
use crate::wire::reply::{decode_response, ExitStatus, Status};
use crate::wire::request::{Request, PROTOCOL_VERSION};

/// Environment variables sent along, besides every `GIT_*` one (except the tracing
/// ones and the author's and committer's identity). They decide what git does in the working directory, so they go into the key
/// and the command runs with exactly them.
pub(crate) const FORWARDED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "XDG_CONFIG_HOME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
];

/// How long the client waits for the daemon's first answer before running the
/// command itself. The daemon answers before the command has produced anything, so
/// this only fires on a daemon that is stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// What `exec` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ExecOptions {
    pub(crate) verbose: bool,
    pub(crate) socket: Option<PathBuf>,
    pub(crate) daemon_user: Option<String>,
    pub(crate) key: Option<OsString>,
    pub(crate) extra_env: Vec<OsString>,
    /// Print the parts of the key and the key, and run nothing (`--explain`).
    pub(crate) explain: bool,
    /// Append the explanation of the request to this file, then go on as usual
    /// (`--explain-to`).
    pub(crate) explain_to: Option<PathBuf>,
    pub(crate) command: Vec<OsString>,
}

/// Whether a variable of the client's environment is sent to the daemon.
pub(crate) fn forwarded_env(name: &OsStr, extra: &[OsString]) -> bool {
    let bytes = name.as_bytes();
    if extra.iter().any(|e| e.as_os_str() == name) {
        return true;
    }
    // Tracing changes no output; the author's and committer's identity change no pack,
    // and `git http-backend` sets GIT_COMMITTER_NAME/EMAIL from the client's address
    // (`anonymous@http.<addr>`): forwarded, they would split one storm into a key per
    // client.
    if bytes.starts_with(b"GIT_TRACE")
        || bytes.starts_with(b"GIT_AUTHOR_")
        || bytes.starts_with(b"GIT_COMMITTER_")
    {
        return false;
    }
    bytes.starts_with(b"GIT_") || FORWARDED_ENV.iter().any(|f| f.as_bytes() == bytes)
}

/// Runs `exec` and returns the exit code (unless it `exec`s the command itself).
pub(crate) fn exec(opts: ExecOptions) -> i32 {
    let Some((program, args)) = opts.command.split_first() else {
        eprintln!("streamcache exec: no command given");
        return 2;
    };
    let say = |msg: &str| {
        if opts.verbose {
            eprintln!("streamcache: {msg}");
        }
    };
    if let Some(name) = closed_at_start() {
        say(&format!(
            "{name} was closed when streamcache started; running {} directly, with it closed",
            program.to_string_lossy()
        ));
        return run_directly(program, args, None);
    }
    let mut stdin = match Spill::read_all(&mut io::stdin().lock(), None) {
        Ok(stdin) => stdin,
        // No stdin at all (a closed descriptor): the command gets none either.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BADF.raw_os_error()) => {
            Spill::new(None)
        }
        Err(e) => {
            // Without the whole stdin neither the daemon nor the command can run.
            eprintln!("streamcache: cannot read stdin: {e}");
            return 1;
        }
    };
    if opts.explain || opts.explain_to.is_some() {
        let explained = request(&opts, program, args, stdin.len())
            .and_then(|r| crate::explain::explanation(&r, &mut stdin).map_err(|e| e.to_string()));
        if opts.explain {
            return match explained {
                Ok(text) => match io::stdout().write_all(text.as_bytes()) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("streamcache: {e}");
                        1
                    }
                },
                Err(e) => {
                    eprintln!("streamcache exec --explain: {e}");
                    1
                }
            };
        }
        if let Some(path) = &opts.explain_to {
            // Best effort: explaining never stops the command.
            if let Err(e) = explained.and_then(|text| append(path, &text)) {
                say(&format!("cannot explain into {}: {e}", path.display()));
            }
        }
    }
    let mut notes = Vec::new();
    let client =
        crate::settings::client_settings(opts.socket.clone(), opts.daemon_user.clone(), &mut notes);
    for note in &notes {
        say(note);
    }
    let reason = match &client.socket {
        None => "no socket path: set --socket".to_owned(),
        Some(socket) => match through_daemon(&opts, &client, program, args, socket, &mut stdin) {
            Done::Exit(code) => return code,
            Done::Fallback(reason) => reason,
        },
    };
    say(&format!(
        "{reason}; running {} directly",
        program.to_string_lossy()
    ));
    // The operator sees it too, not only the user under -v (git shows a hook's stderr
    // to the user alone).
    syslog(&format!(
        "exec ran {} itself (uid {}): {reason}",
        program.to_string_lossy(),
        rustix::process::getuid().as_raw()
    ));
    run_directly(program, args, Some(stdin))
}

/// Where `exec` reports that it failed open: the system log's socket, or the datagram
/// socket `$STREAMCACHE_SYSLOG` names.
const SYSLOG: &str = "/dev/log";

/// Sends one line to the system log (facility user, severity warning), best effort:
/// a host without a syslog socket, or a full one, costs nothing (the socket does not
/// block).
fn syslog(message: &str) {
    let path = std::env::var_os("STREAMCACHE_SYSLOG").unwrap_or_else(|| SYSLOG.into());
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    // <12>: facility user (1) * 8 + severity warning (4); the tag and pid as
    // syslog(3) writes them, so journald and rsyslog file it under streamcache.
    let line = format!("<12>streamcache[{}]: {message}", std::process::id());
    let _ = sock.send_to(line.as_bytes(), Path::new(&path));
}

/// `"stdout"` or `"stderr"` if it was closed when the process started: the binary's
/// `main.rs` then opened `/dev/null` on it with `FD_CLOEXEC`, a flag no inherited
/// descriptor has.
fn closed_at_start() -> Option<&'static str> {
    let marked = |fd| {
        rustix::io::fcntl_getfd(fd).is_ok_and(|flags| flags.contains(rustix::io::FdFlags::CLOEXEC))
    };
    if marked(rustix::stdio::stdout()) {
        Some("stdout")
    } else if marked(rustix::stdio::stderr()) {
        Some("stderr")
    } else {
        None
    }
}

/// How a daemon round trip ended.
enum Done {
    /// Output was relayed; exit with this code.
    Exit(i32),
    /// Nothing was relayed; run the command directly, for this reason.
    Fallback(String),
}

fn through_daemon(
    opts: &ExecOptions,
    client: &ClientSettings,
    program: &OsStr,
    args: &[OsString],
    socket: &Path,
    stdin: &mut Spill,
) -> Done {
    let request = match request(opts, program, args, stdin.len()) {
        Ok(request) => request,
        Err(reason) => return Done::Fallback(reason),
    };
    let payload = request.encode();
    if payload.len() > MAX_REQUEST_PAYLOAD {
        return Done::Fallback(format!(
            "the request is too large for the daemon ({} bytes)",
            payload.len()
        ));
    }
    let mut conn = match UnixStream::connect(socket) {
        Ok(conn) => conn,
        Err(e) => {
            return Done::Fallback(format!(
                "cannot reach the daemon at {}: {e}",
                socket.display()
            ))
        }
    };
    if let Err(reason) = check_server(&conn, socket, client.daemon_user) {
        return Done::Fallback(reason);
    }
    let sent = conn
        .write_all(&frame(Kind::Request, &payload))
        .and_then(|()| stdin.copy_to(&mut conn));
    if let Err(e) = conn.set_read_timeout(Some(ANSWER_TIMEOUT)) {
        return Done::Fallback(format!("socket: {e}"));
    }
    let mut relay = Relay::new(conn);
    match relay.run() {
        Ok(code) => Done::Exit(code),
        Err(Failure::BeforeOutput(reason)) => Done::Fallback(match sent {
            // The daemon may have answered (a refusal) before it read everything.
            Err(e) if !reason.starts_with("daemon ") => format!("cannot send the request: {e}"),
            _ => reason,
        }),
        Err(Failure::StdoutClosed) => Done::Exit(141),
        Err(Failure::AfterOutput(reason)) => {
            // The caller is about to fail on a cut-short stream: say why, even without
            // -v (git shows it as "remote: streamcache: …" next to its own error).
            eprintln!("streamcache: {reason}");
            Done::Exit(1)
        }
    }
}

/// The request for `program` `args` with `stdin_len` bytes of stdin, as the daemon
/// gets it: the canonical working directory, the forwarded environment, the key
/// material. `Err` says why there is none (no working directory).
fn request(
    opts: &ExecOptions,
    program: &OsStr,
    args: &[OsString],
    stdin_len: u64,
) -> Result<Request, String> {
    let cwd = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("no working directory: {e}"))?;
    Ok(Request {
        program: program.as_bytes().to_vec(),
        args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
        cwd: cwd.as_os_str().as_bytes().to_vec(),
        env: std::env::vars_os()
            .filter(|(k, _)| forwarded_env(k, &opts.extra_env))
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
        key_material: opts
            .key
            .as_ref()
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default(),
        stdin_len,
    })
}

/// Appends `text` and a blank line to `path` in one write (`O_APPEND`: explanations of
/// concurrent requests never interleave).
fn append(path: &Path, text: &str) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    file.write_all(format!("{text}\n").as_bytes())
        .map_err(|e| e.to_string())
}

/// Checks who bound the socket before anything is sent: see the module docs.
fn check_server(conn: &UnixStream, socket: &Path, daemon_user: Option<u32>) -> Result<(), String> {
    let uid = match crate::socket::peer(conn) {
        Ok((uid, _)) => uid,
        Err(e) => return Err(format!("cannot tell who serves {}: {e}", socket.display())),
    };
    if crate::socket::server_trusted(uid, daemon_user) {
        return Ok(());
    }
    let me = rustix::process::geteuid().as_raw();
    Err(format!(
        "{} is served by uid {uid}, not by us (uid {me}), root or the daemon user ({}); \
         not trusting it",
        socket.display(),
        daemon_user.map_or_else(|| "none configured".to_owned(), |u| format!("uid {u}"))
    ))
}

/// Why a relay stopped short.
enum Failure {
    /// Nothing was written to stdout or stderr yet: the command can still run here.
    BeforeOutput(String),
    /// Our stdout is gone (upload-pack left): exit quietly.
    StdoutClosed,
    /// The reply broke off after output was relayed: exit non-zero.
    AfterOutput(String),
}

/// What one splice call did.
enum Spliced {
    Moved,
    End,
    Unsupported,
}

struct Relay {
    conn: UnixStream,
    /// Whether stdout payload is spliced from the socket (stdout is a pipe).
    splice: bool,
    demux: Demux,
    wrote_output: bool,
    stderr_open: bool,
    exit: Option<ExitStatus>,
    verdict: Option<Result<(), String>>,
    status: Option<(Status, String)>,
    answered: bool,
    stdout_closed: bool,
}

impl Relay {
    fn new(conn: UnixStream) -> Relay {
        let stdout = io::stdout();
        let splice = rustix::fs::fstat(stdout.as_fd())
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_fifo());
        Relay {
            conn,
            splice,
            demux: Demux::new(),
            wrote_output: false,
            stderr_open: true,
            exit: None,
            verdict: None,
            status: None,
            answered: false,
            stdout_closed: false,
        }
    }

    fn fail(&self, reason: String) -> Failure {
        if self.wrote_output {
            Failure::AfterOutput(reason)
        } else {
            Failure::BeforeOutput(reason)
        }
    }

    fn run(&mut self) -> Result<i32, Failure> {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let next = self.demux.next();
            let limit = match next {
                Next::Payload {
                    kind: Kind::Stdout,
                    remaining,
                } if self.splice && remaining > 0 => match self.splice_stdout(remaining)? {
                    Spliced::End => break,
                    Spliced::Moved | Spliced::Unsupported => continue,
                },
                // While splicing, read only up to where the next stdout payload starts.
                Next::Header(n) | Next::Payload { remaining: n, .. } if self.splice => {
                    n.clamp(1, buf.len())
                }
                _ => buf.len(),
            };
            let n = match self.conn.read(&mut buf[..limit]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(format!("daemon connection: {e}"))),
            };
            if n == 0 {
                break;
            }
            let result = self.feed(&buf[..n]);
            if self.stdout_closed {
                return Err(Failure::StdoutClosed);
            }
            if let Err(e) = result {
                return Err(self.fail(format!("daemon reply: {}", Chain(&e))));
            }
            if let Some((status @ (Status::Refused | Status::Error), message)) = &self.status {
                return Err(Failure::BeforeOutput(format!("daemon {status}: {message}")));
            }
            if self.status.is_some() && !self.answered {
                // Answered: from now on the command may be silent for as long as it likes.
                self.answered = true;
                if let Err(e) = self.conn.set_read_timeout(None) {
                    return Err(self.fail(format!("socket: {e}")));
                }
            }
        }
        match (&self.status, &self.verdict, self.exit) {
            (None, _, _) => Err(self.fail("daemon closed the connection without answering".into())),
            (_, Some(Ok(())), Some(exit)) => Ok(exit.shell_code()),
            // The command failed: its exit code (never 0) is the answer.
            (_, Some(Err(_)), Some(exit)) if !exit.success() => Ok(exit.shell_code()),
            // No command slot in time (`max_queue_wait`): nothing was sent, so the
            // command runs here.
            (_, Some(Err(e)), _) if e.starts_with("busy: ") => {
                Err(self.fail(format!("daemon {e}")))
            }
            (_, Some(Err(e)), _) => Err(self.fail(format!("the daemon's cache failed: {e}"))),
            (_, Some(Ok(())), None) => Err(self.fail("daemon reply has no exit status".into())),
            (_, None, _) => Err(self
                .fail("the daemon's reply broke off before the end (did the daemon stop?)".into())),
        }
    }

    /// Moves up to `len` bytes of stdout payload from the socket into our stdout pipe
    /// without copying them through user space.
    fn splice_stdout(&mut self, len: usize) -> Result<Spliced, Failure> {
        let stdout = io::stdout();
        loop {
            match rustix::pipe::splice(
                &self.conn,
                None,
                stdout.as_fd(),
                None,
                len,
                rustix::pipe::SpliceFlags::MOVE,
            ) {
                Ok(0) => return Ok(Spliced::End),
                Ok(n) => {
                    self.wrote_output = true;
                    if let Err(e) = self.demux.skip_stdout(n) {
                        return Err(self.fail(format!("daemon reply: {}", Chain(&e))));
                    }
                    return Ok(Spliced::Moved);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::PIPE) => return Err(Failure::StdoutClosed),
                Err(
                    rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::AGAIN,
                ) => {
                    // Not possible for these descriptors: copy through user space.
                    self.splice = false;
                    return Ok(Spliced::Unsupported);
                }
                Err(e) => {
                    return Err(self.fail(format!(
                        "daemon connection or stdout: {}",
                        io::Error::from(e)
                    )))
                }
            }
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), WireError> {
        let Relay {
            demux,
            wrote_output,
            stderr_open,
            exit,
            verdict,
            status,
            stdout_closed,
            ..
        } = self;
        demux.feed(data, |event| {
            match event {
                Event::Response(s, message) => *status = Some((s, message)),
                Event::Stdout(bytes) => {
                    *wrote_output = true;
                    if let Err(e) = write_fd(io::stdout().as_fd(), bytes) {
                        if e.kind() == io::ErrorKind::BrokenPipe {
                            *stdout_closed = true;
                        }
                        return Err(e);
                    }
                }
                Event::Stderr(bytes) => {
                    *wrote_output = true;
                    // A closed stderr loses progress messages, nothing else.
                    if *stderr_open && write_fd(io::stderr().as_fd(), bytes).is_err() {
                        *stderr_open = false;
                    }
                }
                Event::Exit(e) => *exit = Some(e),
                Event::Trailer(v) => *verdict = Some(v),
            }
            Ok(())
        })
    }
}

/// Writes all of `bytes` straight to a descriptor: no buffering, no line scanning.
fn write_fd(fd: std::os::fd::BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Becomes the command: `exec` with the buffered stdin, or with our own if there is
/// none. Returns only if that fails.
fn run_directly(program: &OsStr, args: &[OsString], stdin: Option<Spill>) -> i32 {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(stdin) = stdin {
        match stdin.into_stdio() {
            Ok(stdin) => cmd.stdin(stdin),
            Err(e) => {
                eprintln!("streamcache: cannot pass stdin on: {e}");
                return 1;
            }
        };
    }
    let err = cmd.exec();
    eprintln!(
        "streamcache: cannot run {}: {err}",
        program.to_string_lossy()
    );
    if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// `streamcache stats`: asks the daemon for its counters.
pub(crate) fn fetch_stats(socket: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let conn = UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the daemon at {}", socket.display()))?;
    stats_on(conn)
}

/// Asks for the stats over `conn`, a connection to a daemon.
pub(crate) fn stats_on(mut conn: UnixStream) -> anyhow::Result<String> {
    use anyhow::Context;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    // A daemon that refuses us answers without reading the request, and may have
    // closed before it is sent: its answer is still there to read, and says more.
    let sent = write_frame(&mut conn, Kind::StatsRequest, &[PROTOCOL_VERSION]);
    let (kind, payload) = match (read_frame(&mut conn), sent) {
        (Ok(frame), _) => frame,
        (Err(_), Err(e)) => return Err(e).context("sending the request"),
        (Err(e), Ok(())) => return Err(e).context("reading the daemon's reply"),
    };
    match kind {
        Kind::StatsReply => Ok(String::from_utf8_lossy(&payload).into_owned()),
        Kind::Response => {
            let (status, message) = decode_response(&payload)?;
            anyhow::bail!("daemon {status}: {message}")
        }
        other => anyhow::bail!("unexpected {other:?} frame from the daemon"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_variables_and_the_basics_are_forwarded_but_not_tracing_or_the_rest() {
        let extra = vec![OsString::from("TENANT")];
        for name in [
            "GIT_DIR",
            "GIT_PROTOCOL",
            "GIT_EXEC_PATH",
            "PATH",
            "HOME",
            "LC_ALL",
            "TENANT",
        ] {
            assert!(forwarded_env(OsStr::new(name), &extra), "{name}");
        }
        for name in [
            "GIT_TRACE",
            "GIT_TRACE2_EVENT",
            "GIT_COMMITTER_EMAIL",
            "GIT_COMMITTER_NAME",
            "GIT_AUTHOR_NAME",
            "GIT_AUTHOR_DATE",
            "SSH_CONNECTION",
            "USER",
            "REMOTE_ADDR",
            "LD_PRELOAD",
        ] {
            assert!(!forwarded_env(OsStr::new(name), &extra), "{name}");
        }
    }
}
