//! `streamcache serve`: the daemon.
//!
//! Threads, not async: one thread per connection, blocking I/O. The library is
//! thread-native (producers run on its threads) and a connection spends its life in
//! one `sendfile(2)` loop, so a thread each is the simplest thing that is also fast.
//! At most `max_connections` are served at once, or fewer if the descriptor limit has
//! room for fewer (see [`crate::descriptors`]); the accept loop answers the next ones
//! "busy" itself, so no number of clients makes threads, memory or descriptors grow
//! without bound. Should the descriptors run out all the same, a spare one lets the
//! accept loop still tell waiting clients "busy".
//!
//! A connection: check the peer's uid, read the request frame and the stdin that
//! follows (under a deadline), check the allow-list, hash the key, `find_or_create`,
//! answer `H` (hit or miss), copy the entry into the socket with `sendfile`, and end
//! with a `T` trailer carrying the producer's result. Anything that goes wrong before
//! the `H` hit/miss answer is reported as `refused` or `error`, and the client runs
//! the command itself. It does too when an entry fails before any output; the trailer
//! says why: a cache error (counted in `errors`), or `busy: …`, no command slot within
//! `max_queue_wait` (see `queue`; counted in `busy`).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::process::Signal;
use streamcache::Cache;

use crate::chain::Chain;
use crate::descriptors;
use crate::key::KeyHasher;
use crate::metrics;
use crate::producer::{self, Job};
use crate::scrape;
use crate::settings::ServeSettings;
use crate::socket;
use crate::spill::Spill;
use crate::state::{Daemon, InFlight};
use crate::wire::error::WireError;
use crate::wire::frame::{frame, read_frame, write_frame, Kind};
use crate::wire::reply::{encode_response, encode_trailer, Status};
use crate::wire::request::Request;

/// Runs the daemon until SIGINT or SIGTERM, then stops gracefully.
pub(crate) fn serve(settings: ServeSettings) -> anyhow::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if let Some(uid) = settings.daemon_user.filter(|&uid| uid != me) {
        // Clients trust the configured user's sockets; a daemon of anyone else would
        // be refused by them, or be the wrong daemon.
        anyhow::bail!("daemon_user: the daemon must run as uid {uid}, not as uid {me}");
    }
    // Else every command would fail to start, and every client would run it uncached.
    crate::supervisor::check_available()?;
    // Before the cache is made: it sizes its kept handles from the limit.
    let inherited = descriptors::raise();
    socket::prepare_dir(&settings.dir, true)?;
    socket::prepare_dir(&settings.entries_dir(), true)?;
    // Signals first: from here on they are queued for the accept loop, never fatal.
    let (signal_rx, signal_tx) = UnixStream::pair().context("cannot create the signal pipe")?;
    signal_tx.set_nonblocking(true)?;
    signal_rx.set_nonblocking(true)?;
    let signal_tx = Arc::new(signal_tx);
    // A second signal, once stopping has begun, ends the process at once.
    let stopping = Arc::new(AtomicBool::new(false));
    let signals = Signals::default();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stopping))
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&signals.stop))
            .context("cannot install signal handlers")?;
        signal_hook::low_level::pipe::register(signal, signal_tx.try_clone()?)
            .context("cannot install signal handlers")?;
    }
    // SIGHUP: start a successor that takes over (see `Successor`).
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&signals.replace))
        .context("cannot install signal handlers")?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, signal_tx.try_clone()?)
        .context("cannot install signal handlers")?;
    let successor = Successor::of_this_process();
    let (mut bound, takeover) =
        socket::bind_or_replace(&settings.socket, settings.replace, settings.peers.access())?;
    let min_free = settings.min_free.bytes_on(&settings.entries_dir())?;
    log_disk_limits(&settings, min_free);
    let mut config = settings.cache_config(min_free);
    if let Some(remote) = &settings.remote {
        config.remote = Some(remote.tier()?);
    }
    let cache = Cache::new(config).context("cannot start the cache")?;
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(
            scrape::bind(addr).with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let mut spare = Spare::open();
    // Everything the daemon keeps open for its life is open now.
    let budget = descriptors::Budget::plan(inherited, settings.max_connections)?;
    budget.log();
    let daemon = Arc::new(Daemon::new(cache, settings, budget));
    // Last, once everything else is up: a start that failed before this left the
    // daemon before us reachable.
    let predecessor = match takeover {
        Some(takeover) => {
            let pid = takeover.predecessor;
            if let Err(e) = takeover.complete(&mut bound) {
                bound.remove_file();
                return Err(e);
            }
            Some(pid)
        }
        None => None,
    };
    let mut status = format!("serving on {}", bound.path.display());
    if let Some(listener) = metrics_listener {
        let local = listener.local_addr()?;
        status.push_str(&format!("; metrics on http://{local}/metrics"));
        let d = Arc::clone(&daemon);
        std::thread::Builder::new()
            .name("streamcache-metrics".into())
            .spawn(move || scrape::serve(listener, d))
            .context("cannot start the metrics thread")?;
    }
    let s = &daemon.settings;
    tracing::info!(
        socket = %bound.path.display(),
        dir = %s.entries_dir().display(),
        max_age = %humantime::format_duration(s.max_age),
        min_occurrences = s.min_occurrences,
        backpressure = s.backpressure,
        durable = s.durable,
        remote = s.remote.as_ref().map_or("none", |r| r.url.as_str()),
        max_lead = s.max_lead,
        max_commands = %limit(s.commands.max_commands),
        max_commands_per_dir = %limit(s.commands.max_commands_per_dir),
        max_queue_wait = %humantime::format_duration(s.commands.max_queue_wait),
        allow = %s.allow.binaries(),
        peers = %s.peers,
        "{status}"
    );
    socket::notify(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
    if let Some(pid) = predecessor {
        // Serving now: the daemon before us finishes its streams and exits.
        match rustix::process::Pid::from_raw(pid) {
            Some(pid) => match rustix::process::kill_process(pid, Signal::TERM) {
                Ok(()) => tracing::info!(
                    predecessor = pid.as_raw_nonzero().get(),
                    "told the daemon before us to finish its streams and exit"
                ),
                Err(e) => {
                    tracing::warn!(predecessor = pid.as_raw_nonzero().get(), error = %e, "cannot tell the daemon before us to stop")
                }
            },
            None => tracing::warn!(predecessor = pid, "the daemon before us has no valid pid"),
        }
    }
    let result = accept_loop(
        &daemon, &bound, &signal_rx, &signals, &successor, &mut spare,
    );
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    bound.remove_file();
    drop(bound);
    socket::notify("STOPPING=1");
    result?;
    shutdown(&daemon);
    Ok(())
}

fn limit(n: Option<usize>) -> String {
    n.map_or_else(|| "none".to_owned(), |n| n.to_string())
}

/// Says what the disk budget and the free-space guard are, in bytes: a guard given as a
/// percentage was turned into bytes from the size of the file system at start.
fn log_disk_limits(settings: &ServeSettings, min_free: u64) {
    let dir = settings.entries_dir();
    let budget = settings
        .max_disk
        .map_or_else(|| "none".to_owned(), |b| b.to_string());
    match settings.min_free {
        crate::settings::MinFree::Percent(pct) if min_free > 0 => tracing::info!(
            dir = %dir.display(),
            max_disk = %budget,
            min_free,
            "free-space guard: keeping {min_free} bytes ({pct}% of the file system) free"
        ),
        _ if min_free > 0 => tracing::info!(
            dir = %dir.display(),
            max_disk = %budget,
            min_free,
            "free-space guard: keeping {min_free} bytes free"
        ),
        _ => tracing::info!(
            dir = %dir.display(),
            max_disk = %budget,
            min_free,
            "no free-space guard (min_free is 0)"
        ),
    }
}

/// What the signal handlers raised: stop (SIGTERM, SIGINT), or start a successor
/// (SIGHUP).
#[derive(Debug, Default)]
struct Signals {
    stop: Arc<AtomicBool>,
    replace: Arc<AtomicBool>,
}

/// How to start this daemon again as a successor that takes over from it (`serve
/// --replace`): the path this process was started from (read at start, so that a
/// binary upgraded in place since is the one started) and its arguments.
#[derive(Debug)]
struct Successor {
    exe: Option<std::path::PathBuf>,
    args: Vec<OsString>,
}

impl Successor {
    fn of_this_process() -> Successor {
        let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
        if !args.iter().any(|a| a == "--replace") {
            args.push("--replace".into());
        }
        Successor {
            exe: std::env::current_exe().ok(),
            args,
        }
    }

    /// Starts the successor. It binds a socket beside ours, renames it over the path,
    /// and sends us SIGTERM once it serves; we then finish our streams and exit.
    fn start(&self) {
        let Some(exe) = &self.exe else {
            tracing::error!("SIGHUP: cannot start a successor: this binary's path is unknown");
            return;
        };
        match std::process::Command::new(exe).args(&self.args).spawn() {
            Ok(child) => tracing::info!(
                exe = %exe.display(),
                successor = child.id(),
                "SIGHUP: started a successor; it takes the socket over and then stops us"
            ),
            Err(e) => tracing::error!(
                exe = %exe.display(),
                error = %e,
                "SIGHUP: cannot start a successor; serving on"
            ),
        }
    }
}

fn accept_loop(
    daemon: &Arc<Daemon>,
    bound: &socket::Bound,
    signals: &UnixStream,
    raised: &Signals,
    successor: &Successor,
    spare: &mut Spare,
) -> anyhow::Result<()> {
    bound.listener.set_nonblocking(true)?;
    // Accepts that failed since the last that worked. Logged when they start failing
    // and when they work again, not at each failure: they may fail every few ms.
    let mut failing: u64 = 0;
    let mut back_off = false;
    loop {
        let (listen_ready, signal_ready) = if std::mem::take(&mut back_off) {
            // Out of something `accept` needs: try again in a moment, or stop at a signal.
            let mut fds = [PollFd::new(signals, PollFlags::IN)];
            wait(&mut fds, Some(BACK_OFF))?;
            (true, !fds[0].revents().is_empty())
        } else {
            let mut fds = [
                PollFd::new(&bound.listener, PollFlags::IN),
                PollFd::new(signals, PollFlags::IN),
            ];
            wait(&mut fds, None)?;
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
        };
        if signal_ready {
            let mut drained = [0u8; 64];
            while matches!(rustix::io::read(signals, &mut drained), Ok(n) if n > 0) {}
            if raised.stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Clients that connected before the signal (or before a successor took
                // the path over) are served, not dropped.
                let waiting = accept_waiting(daemon, bound);
                tracing::info!(
                    accepted_after_signal = waiting,
                    "signal received: no longer accepting connections"
                );
                return Ok(());
            }
            if raised
                .replace
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                successor.start();
            }
            continue;
        }
        if !listen_ready {
            continue;
        }
        match bound.listener.accept() {
            Ok((stream, _)) => {
                if failing > 0 {
                    tracing::info!(failed = failing, "accepting connections again");
                    failing = 0;
                }
                spawn_connection(daemon, stream);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if failing == 0 {
                    tracing::error!(error = %e, "accept failed; clients are turned away or wait until it works again");
                }
                failing += 1;
                let out_of_descriptors = matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
                );
                if !(out_of_descriptors && spare.turn_away(daemon, &bound.listener)) {
                    back_off = true;
                }
            }
        }
    }
}

/// Accepts and serves the clients already waiting in the listen queue. Returns how many.
fn accept_waiting(daemon: &Arc<Daemon>, bound: &socket::Bound) -> usize {
    let mut accepted = 0;
    while let Ok((stream, _)) = bound.listener.accept() {
        spawn_connection(daemon, stream);
        accepted += 1;
    }
    accepted
}

/// How long the accept loop waits before it tries again after a failed `accept`.
const BACK_OFF: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 0,
    tv_nsec: 50_000_000,
};

fn wait(fds: &mut [PollFd<'_>], timeout: Option<rustix::event::Timespec>) -> anyhow::Result<()> {
    match poll(fds, timeout.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(io::Error::from(e)).context("poll"),
    }
}

fn spawn_connection(daemon: &Arc<Daemon>, stream: UnixStream) {
    daemon.counters.connections.fetch_add(1, Relaxed);
    let Some(slot) = daemon.admit() else {
        return turn_away(daemon, stream, &at_the_limit(daemon));
    };
    // The thread drops its slot last, after everything the connection counted. If the
    // thread cannot start, the slot goes with the closure.
    let spawned = std::thread::Builder::new()
        .name("streamcache-conn".into())
        .spawn(move || {
            if let Err(e) = stream.set_nonblocking(false) {
                tracing::warn!(error = %e, "cannot make the connection blocking");
                return;
            }
            handle(slot.daemon(), stream);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a connection thread");
    }
}

/// The `busy` answer at the connection limit, which says where the limit comes from.
fn at_the_limit(daemon: &Daemon) -> String {
    let limits = &daemon.descriptors;
    if limits.is_lowered() {
        format!(
            "busy: serving {} connections already (as many as the descriptor limit has \
             room for; max_connections is {})",
            limits.connections, limits.max_connections
        )
    } else {
        format!(
            "busy: serving {} connections already (max_connections)",
            limits.connections
        )
    }
}

/// Answers a connection over the limit, on the accept loop's thread, without reading
/// it: a thread per connection must not mean threads (and memory) without bound. The
/// client runs the command itself.
fn turn_away(daemon: &Daemon, mut stream: UnixStream, message: &str) {
    daemon.counters.busy.fetch_add(1, Relaxed);
    tracing::debug!(message, "a client is turned away");
    // A new socket's buffer is empty, so this small write cannot wait; non-blocking
    // makes sure the accept loop never does.
    if stream.set_nonblocking(true).is_ok() {
        respond(&mut stream, Status::Error, message);
    }
}

/// A descriptor held in reserve for when the daemon has none left. Without one, the
/// daemon could not accept the clients waiting in the listen queue, and they would
/// wait, told nothing, until some connection ended. With it, the accept loop gives it
/// up to accept one waiting client, tells it `busy` (it runs its command itself), and
/// takes it back.
#[derive(Debug)]
struct Spare(Option<OwnedFd>);

impl Spare {
    fn open() -> Spare {
        Spare(Spare::descriptor())
    }

    fn descriptor() -> Option<OwnedFd> {
        rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()
    }

    /// Turns one waiting client away on the spare descriptor. False if there was no
    /// spare (another thread took the descriptor it freed last time) or no client.
    fn turn_away(&mut self, daemon: &Daemon, listener: &UnixListener) -> bool {
        let Some(spare) = self.0.take() else {
            self.0 = Spare::descriptor();
            return false;
        };
        drop(spare);
        // The client's socket is closed again before the spare is reopened.
        let accepted = listener.accept().map(|(stream, _)| {
            daemon.counters.connections.fetch_add(1, Relaxed);
            turn_away(
                daemon,
                stream,
                "busy: the daemon is out of file descriptors",
            );
        });
        self.0 = Spare::descriptor();
        accepted.is_ok()
    }
}

/// Waits for connections in flight, up to the grace period, then stops what is left.
fn shutdown(daemon: &Daemon) {
    let grace = daemon.settings.grace;
    let deadline = Instant::now() + grace;
    let active = daemon.connections_active();
    if active > 0 {
        tracing::info!(connections = active, grace = %humantime::format_duration(grace), "waiting for streams in flight");
    }
    let left = daemon.wait_idle(deadline);
    if left > 0 || daemon.children.running() > 0 {
        tracing::warn!(
            connections = left,
            children = daemon.children.running(),
            "grace period over: stopping what is left"
        );
        for cut in daemon.requests_in_flight() {
            tracing::warn!(
                pid = cut.pid,
                program = cut.program,
                cwd = cut.cwd,
                key = %cut.key,
                running = %humantime::format_duration(Duration::from_secs(cut.started.elapsed().as_secs())),
                "request cut at the end of the grace period: its client gets no complete reply"
            );
        }
        daemon.children.signal_all(Signal::KILL);
    }
    // The entries finished last are committed before the process goes, so that the
    // next daemon serves them.
    daemon.cache.wait_durable();
    // And published, so that the other hosts need not make them again.
    daemon.cache.wait_uploaded();
    daemon.cache.stop();
    tracing::info!("stopped");
}

fn handle(daemon: &Daemon, mut stream: UnixStream) {
    let (uid, pid) = match socket::peer(&stream) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the peer's credentials");
            return;
        }
    };
    if !daemon.settings.peers.allows(uid) {
        daemon.counters.peer_refused.fetch_add(1, Relaxed);
        tracing::warn!(uid, pid, "refusing a peer of another user");
        let message = format!(
            "peer uid {uid} may not use this daemon (it serves {})",
            daemon.settings.peers
        );
        respond(&mut stream, Status::Refused, &message);
        return;
    }
    let deadline = Instant::now() + daemon.settings.request_timeout;
    let first = with_deadline(&stream, deadline).and_then(|()| read_frame(&mut stream));
    let (kind, payload) = match first {
        Ok(frame) => frame,
        Err(e) => {
            bad_request(daemon, &mut stream, pid, &Chain(&e).to_string());
            return;
        }
    };
    match kind {
        Kind::StatsRequest => {
            let text = metrics::stats_text(daemon);
            let _ = write_frame(&mut stream, Kind::StatsReply, text.as_bytes());
        }
        Kind::Request => match Request::decode(&payload, &daemon.settings.limits) {
            Ok(request) => serve_request(daemon, stream, pid, request, deadline),
            Err(e) => bad_request(daemon, &mut stream, pid, &Chain(&e).to_string()),
        },
        other => bad_request(
            daemon,
            &mut stream,
            pid,
            &format!("unexpected {other:?} frame"),
        ),
    }
}

fn bad_request(daemon: &Daemon, stream: &mut UnixStream, pid: i32, reason: &str) {
    daemon.counters.bad_requests.fetch_add(1, Relaxed);
    tracing::warn!(pid, reason, "bad request");
    respond(stream, Status::Error, &format!("bad request: {reason}"));
}

fn respond(stream: &mut UnixStream, status: Status, message: &str) {
    // The client may be gone already; there is nobody to tell then.
    let _ = write_frame(stream, Kind::Response, &encode_response(status, message));
}

fn with_deadline(stream: &UnixStream, deadline: Instant) -> Result<(), WireError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(WireError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "request not received in time",
        )));
    }
    stream.set_read_timeout(Some(left))?;
    Ok(())
}

fn serve_request(
    daemon: &Daemon,
    mut stream: UnixStream,
    pid: i32,
    request: Request,
    deadline: Instant,
) {
    let program = String::from_utf8_lossy(&request.program).into_owned();
    // The binary is the allow-list's, never looked up in the client's PATH.
    let binary = match daemon.settings.allow.check(&request.program, &request.args) {
        Ok(binary) => binary.to_path_buf(),
        Err(reason) => {
            daemon.counters.refused.fetch_add(1, Relaxed);
            tracing::info!(pid, program, reason, "refused");
            respond(&mut stream, Status::Refused, &reason);
            return;
        }
    };
    let cwd = match std::fs::canonicalize(OsString::from_vec(request.cwd.clone())) {
        Ok(cwd) if cwd.is_dir() => cwd,
        Ok(cwd) => {
            let reason = format!("working directory {} is not a directory", cwd.display());
            return bad_request(daemon, &mut stream, pid, &reason);
        }
        Err(e) => {
            let reason = format!(
                "working directory {}: {e}",
                String::from_utf8_lossy(&request.cwd)
            );
            return bad_request(daemon, &mut stream, pid, &reason);
        }
    };
    let mut hasher = KeyHasher::new(&request, cwd.as_os_str().as_bytes());
    let stdin = match read_stdin(&mut stream, &request, &mut hasher, daemon, deadline) {
        Ok(stdin) => stdin,
        Err(e) => {
            let reason = format!("stdin: {}", Chain(&e));
            return bad_request(daemon, &mut stream, pid, &reason);
        }
    };
    let key = hasher.finish();
    let job = Job {
        program: OsString::from_vec(request.program),
        binary,
        args: request.args.into_iter().map(OsString::from_vec).collect(),
        cwd,
        env: request
            .env
            .into_iter()
            .map(|(k, v)| (OsString::from_vec(k), OsString::from_vec(v)))
            .collect(),
        stdin,
        timeout: daemon.settings.producer_timeout,
        children: Arc::clone(&daemon.children),
        nofile: daemon.descriptors.for_commands(),
        queue: daemon.queue.clone(),
    };
    let span = tracing::info_span!("request", pid, key = %&key[..16]);
    let _enter = span.enter();
    let _in_flight = daemon.in_flight(InFlight {
        pid,
        program: program.clone(),
        cwd: job.cwd.display().to_string(),
        key: key[..16].to_owned(),
        started: Instant::now(),
    });
    let (mut entry, lookup) = match daemon.cache.lookup(&key, move |w| job.run(w)) {
        Ok(found) => found,
        Err(e) => {
            daemon.counters.errors.fetch_add(1, Relaxed);
            let e = Chain(&e);
            tracing::error!(error = %e, "cache lookup failed; the client runs the command itself");
            respond(&mut stream, Status::Error, &format!("cache: {e}"));
            return;
        }
    };
    // The wire says hit or miss; a min-occurrences bypass ran its own producer, as a
    // miss does. The log line keeps the distinction.
    let status = match lookup {
        streamcache::Lookup::Hit => Status::Hit,
        streamcache::Lookup::Miss | streamcache::Lookup::Bypass => Status::Miss,
    };
    tracing::debug!(program, %status, ?lookup, "serving");
    let started = Instant::now();
    if let Err(e) = stream
        .set_read_timeout(None)
        .and_then(|()| stream.write_all(&frame(Kind::Response, &encode_response(status, ""))))
    {
        daemon.counters.client_gone.fetch_add(1, Relaxed);
        tracing::debug!(error = %e, "client left before the answer");
        return;
    }
    let sent = entry.send_to(&stream.as_fd());
    let verdict = match sent {
        Ok(_) => entry.wait(),
        Err(e) => Err(e),
    };
    let verdict = match verdict {
        Err(streamcache::Error::Copy(e)) => {
            daemon.counters.client_gone.fetch_add(1, Relaxed);
            tracing::debug!(error = %Chain(e.as_ref()), bytes = entry.position(), "client left during the stream");
            return;
        }
        Err(e) => {
            if producer::busy(&e).is_some() {
                // No command slot in time: with `queue_full = "refuse"` the entry
                // says so; else nothing was sent and the client runs the command.
                daemon.counters.busy.fetch_add(1, Relaxed);
            } else if entry.position() == 0 {
                // Nothing came of the command, not even an exit status: the cache
                // (or starting the command) failed, and the client runs it itself.
                daemon.counters.errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %Chain(&e), "failed before any output; the client runs the command itself");
            }
            // The trailer carries the causes too: the client prints it as it is.
            Err(Chain(&e).to_string())
        }
        Ok(()) => Ok(()),
    };
    tracing::info!(
        program,
        %status,
        ?lookup,
        bytes = entry.position(),
        ms = started.elapsed().as_millis() as u64,
        ok = verdict.is_ok(),
        "served"
    );
    if let Err(e) = stream.write_all(&frame(Kind::Trailer, &encode_trailer(&verdict))) {
        daemon.counters.client_gone.fetch_add(1, Relaxed);
        tracing::debug!(error = %e, "client left before the trailer");
    }
}

/// Reads exactly the announced stdin, hashing it and buffering it for the producer.
fn read_stdin(
    stream: &mut UnixStream,
    request: &Request,
    hasher: &mut KeyHasher,
    daemon: &Daemon,
    deadline: Instant,
) -> Result<Spill, WireError> {
    let mut spill = Spill::new(Some(daemon.settings.dir.clone()));
    let mut left = request.stdin_len;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        with_deadline(stream, deadline)?;
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => return Err(WireError::Truncated { what: "stdin" }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WireError::Io(e)),
        };
        hasher.update(&buf[..n]);
        spill.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(spill)
}
