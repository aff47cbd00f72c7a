//! `streamcache serve`: defaults, the socket, peers, bad input, shutdown, configuration,
//! metrics and `streamcache stats`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use streamcache_daemon::wire::{self, Kind, Status};

use crate::support::{run_with_stdin, text, wait_until, Daemon, BIN, PATIENCE};

#[test]
fn serve_with_no_flags_uses_the_xdg_directories_and_exec_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cache_home = dir.path().join("cache-home");
    let xdg = |cmd: &mut Command| {
        cmd.env("XDG_RUNTIME_DIR", &run)
            .env("XDG_CACHE_HOME", &cache_home)
            .env_remove("STREAMCACHE_SOCKET");
    };
    let mut serve = Command::new(BIN);
    serve.arg("serve");
    let socket = run.join("streamcache.sock");
    let daemon = Daemon::spawn(serve, tempfile::tempdir().unwrap(), socket.clone(), |cmd| {
        xdg(cmd);
        cmd.args(["--allow", "sh"]);
    });
    assert!(
        daemon.status.contains(socket.to_str().unwrap()),
        "{}",
        daemon.status
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(cache_home.join("streamcache/entries").is_dir());
    for _ in 0..2 {
        let mut exec = Command::new(BIN);
        exec.args(["exec", "-v", "--", "sh", "-c", "echo cached"]);
        xdg(&mut exec);
        let out = run_with_stdin(exec, b"");
        assert_eq!(text(&out.stdout), "cached\n");
        assert_eq!(
            text(&out.stderr),
            "",
            "no fallback message: the daemon was used"
        );
    }
    let mut stats = Command::new(BIN);
    stats.arg("stats");
    xdg(&mut stats);
    let table = text(&stats.output().unwrap().stdout);
    assert!(
        table.contains("lookups      2 (hits 1, misses 1, bypassed 0)"),
        "{table}"
    );
}

#[test]
fn without_a_runtime_directory_the_socket_goes_in_the_cache_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cache_home = dir.path().join("cache-home");
    let socket = cache_home.join("streamcache/streamcache.sock");
    let mut serve = Command::new(BIN);
    serve.arg("serve");
    let daemon = Daemon::spawn(serve, tempfile::tempdir().unwrap(), socket.clone(), |cmd| {
        cmd.env_remove("XDG_RUNTIME_DIR")
            .env("XDG_CACHE_HOME", &cache_home);
    });
    assert!(
        daemon.status.contains(socket.to_str().unwrap()),
        "{}",
        daemon.status
    );
    assert!(socket.exists());
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_to_start_and_a_stale_socket_is_replaced() {
    let daemon = Daemon::start(&[]);
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--dir")
        .arg(daemon.dir.path().join("other-cache"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("another daemon is listening"),
        "{}",
        text(&out.stderr)
    );
    // The first daemon still serves: it saw the second one's probe and this request.
    assert_eq!(daemon.stat("connections_total"), 2);

    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut serve = Command::new(BIN);
    serve
        .arg("serve")
        .arg("--socket")
        .arg(&stale)
        .arg("--dir")
        .arg(dir.path().join("c"));
    let replaced = Daemon::spawn(serve, dir, stale.clone(), |_| {});
    replaced.wait_for_log(&["replacing a stale socket file"]);
    UnixStream::connect(&stale).unwrap();
}

#[test]
fn a_peer_of_another_user_is_refused_by_uid_and_runs_the_command_itself() {
    if rustix::process::geteuid().as_raw() != 0 {
        panic!("this test needs root (to run a client as another user); CI runs as root");
    }
    let daemon = Daemon::start(&["--allow", "sh"]);
    // Loosen the file modes so that only SO_PEERCRED stands between them and us.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("streamcache");
    std::fs::copy(BIN, &bin).unwrap();
    let mut exec = Command::new(&bin);
    exec.arg("exec")
        .arg("-v")
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--", "sh", "-c", "id -u"])
        .current_dir("/")
        .uid(65534)
        .gid(65534);
    let out = run_with_stdin(exec, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "65534\n");
    let err = text(&out.stderr);
    assert!(
        err.contains("daemon refused: peer uid 65534 may not use this daemon"),
        "{err}"
    );
    assert_eq!(daemon.stat("peer_refused_total"), 1);
    assert_eq!(daemon.stat("children_started_total"), 0);
}

#[test]
fn a_client_that_sends_nothing_is_dropped_with_an_error_answer() {
    let daemon = Daemon::start(&["--request-timeout", "1s"]);
    let mut conn = UnixStream::connect(&daemon.socket).unwrap();
    let (kind, payload) = wire::read_frame(&mut conn).unwrap();
    assert_eq!(kind, Kind::Response);
    let (status, message) = wire::decode_response(&payload).unwrap();
    assert_eq!(status, Status::Error);
    assert!(message.starts_with("bad request:"), "{message}");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the daemon closes the connection");
    assert_eq!(daemon.stat("bad_requests_total"), 1);
}

#[test]
fn garbage_and_truncated_requests_get_an_error_answer_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    let request = wire::Request {
        program: b"sh".to_vec(),
        args: vec![b"-c".to_vec(), b"echo hi".to_vec()],
        cwd: b"/".to_vec(),
        stdin_len: 10,
        ..wire::Request::default()
    };
    let mut truncated_stdin = wire::frame(Kind::Request, &request.encode());
    truncated_stdin.extend_from_slice(b"short");
    let mut wrong_version = request.encode();
    wrong_version[0] = 77;
    let inputs: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.0\r\n\r\n".to_vec(), "unknown frame kind"),
        (wire::frame(Kind::Request, b"\x01\x00"), "truncated"),
        (
            wire::frame(Kind::Request, &wrong_version),
            "unsupported protocol version 77",
        ),
        (wire::frame(Kind::Stdout, b"x"), "unexpected"),
        (truncated_stdin, "stdin"),
        (vec![b'R', 0xff, 0xff, 0xff, 0xff], "too long"),
    ];
    for (input, expect) in inputs {
        let mut conn = UnixStream::connect(&daemon.socket).unwrap();
        conn.write_all(&input).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let (kind, payload) = wire::read_frame(&mut conn).unwrap();
        assert_eq!(kind, Kind::Response);
        let (status, message) = wire::decode_response(&payload).unwrap();
        assert_eq!(status, Status::Error, "{message}");
        assert!(message.contains(expect), "{expect:?} not in {message:?}");
    }
    assert_eq!(daemon.stat("bad_requests_total"), 6);
    let out = daemon.exec(false, &["sh", "-c", "echo still serving"], b"");
    assert_eq!(text(&out.stdout), "still serving\n");
    assert_eq!(daemon.stat("misses_total"), 1);
}

#[test]
fn sigterm_stops_accepting_lets_the_stream_in_flight_finish_and_removes_the_socket() {
    let mut daemon = Daemon::start(&["--allow", "sh"]);
    let gate = daemon.dir.path().join("gate");
    crate::support::fifo(&gate);
    let body = format!("echo before; read line < {}; echo after", gate.display());
    let mut inflight = daemon
        .exec_cmd(false, &["sh", "-c", &body])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut before = [0u8; 7];
    inflight
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut before)
        .unwrap();
    crate::support::signal(daemon.pid(), rustix::process::Signal::TERM);
    daemon.wait_for_log(&["waiting for streams in flight"]);
    assert!(
        !daemon.socket.exists(),
        "the socket file is gone once stopping begins"
    );
    let late = daemon.exec(true, &["sh", "-c", "echo direct"], b"");
    assert_eq!(text(&late.stdout), "direct\n");
    assert!(text(&late.stderr).contains("cannot reach the daemon"));
    std::fs::write(&gate, b"go\n").unwrap();
    let out = inflight.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "after\n");
    let status = daemon.stop_waiting();
    assert!(status.success(), "{status}\n{}", daemon.log());
}

#[test]
fn after_the_grace_period_a_stuck_command_is_killed_and_the_daemon_exits() {
    let mut daemon = Daemon::start(&["--allow", "sh", "--grace", "1s"]);
    let mut stuck = daemon
        .exec_cmd(false, &["sh", "-c", "echo before; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut before = [0u8; 7];
    stuck
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut before)
        .unwrap();
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let log = daemon.whole_log();
    assert!(log.contains("grace period over"), "{log}");
    // The log names the request it cut: who asked, for what, where.
    let cut = log
        .lines()
        .find(|l| l.contains("request cut at the end of the grace period"))
        .unwrap_or_else(|| panic!("no cut request in the log:\n{log}"));
    let pid = stuck.id();
    assert!(
        cut.contains("program=\"sh\"") && cut.contains("key=") && cut.contains("cwd="),
        "{cut}"
    );
    assert!(
        cut.contains(&format!("pid={pid}")),
        "the client's pid {pid}: {cut}"
    );
    let out = stuck.wait_with_output().unwrap();
    assert!(!out.status.success(), "a cut-off stream never exits 0");
}

#[test]
fn the_metrics_endpoint_serves_prometheus_text() {
    let daemon = Daemon::start(&["--allow", "sh", "--metrics-listen", "127.0.0.1:0"]);
    let addr = daemon.metrics_addr();
    for _ in 0..2 {
        daemon.exec(false, &["sh", "-c", "echo x"], b"");
    }
    daemon.exec(false, &["cat"], b"");
    let get = |path: &str| {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        write!(conn, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).unwrap();
        body
    };
    let page = get("/metrics");
    assert!(page.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/plain; version=0.0.4"));
    for line in [
        "streamcache_lookups_total{result=\"hit\"} 1",
        "streamcache_lookups_total{result=\"miss\"} 1",
        "streamcache_lookups_total{result=\"bypass\"} 0",
        "streamcache_lookups_total{result=\"refused\"} 1",
        "# TYPE streamcache_hits_total counter",
        "# TYPE streamcache_index_entries gauge",
        "streamcache_generated_bytes_total 17",
        "streamcache_served_bytes_total 34",
        "streamcache_children_started_total 1",
    ] {
        assert!(
            page.lines().any(|l| l == line),
            "{line:?} missing from:\n{page}"
        );
    }
    assert!(page.contains("streamcache_cache_enabled{dir="));
    assert!(get("/nothing").starts_with("HTTP/1.0 404"));
}

/// A `/metrics` client that sent the start of a request and then trickles one byte of
/// a header now and then, never ending it, until it is dropped or the daemon closes.
struct Trickler {
    conn: std::net::TcpStream,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trickler {
    fn start(addr: &str) -> Trickler {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nX-A: ").unwrap();
        let mut writer = conn.try_clone().unwrap();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // The pace of the trickle: a byte every 100 ms, far inside any per-read
        // timeout, so only a deadline on the whole request can end it.
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(std::time::Duration::from_millis(100))
            {
                if writer.write_all(b"a").is_err() {
                    break;
                }
            }
        });
        Trickler {
            conn,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Whether the daemon has neither answered nor closed this connection yet.
    fn is_waiting(&self) -> bool {
        self.conn.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let waiting = matches!(
            (&self.conn).read(&mut byte),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        self.conn.set_nonblocking(false).unwrap();
        waiting
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP response, its head and then `Content-Length` bytes of body, as an
/// HTTP client does (a reset after the whole response, when the daemon closes a
/// connection with a request it did not read, is not a failure). Fails the test if the
/// response is not whole after [`PATIENCE`]: a client stuck behind another is a failure,
/// not a hang.
fn read_response(mut conn: &std::net::TcpStream, what: &str) -> String {
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        if let Some(end) = head_end {
            let head = text(&got[..end]);
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap_or_else(|| panic!("{what}: no Content-Length in {head:?}"))
                .parse()
                .unwrap();
            if got.len() >= end + length {
                return text(&got);
            }
        }
        match conn.read(&mut buf) {
            Ok(0) => panic!(
                "{what}: the connection ended early; so far: {:?}",
                text(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{what}: no whole response ({e}); so far: {:?}", text(&got)),
        }
    }
}

/// One `GET path` on a fresh connection: the whole response. After a `200` it also
/// waits for the daemon to end the connection, which it does once the scrape's place
/// among the concurrent ones is free again.
fn scrape(addr: &str, path: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    // A daemon that turns the scrape away answers without reading: the request may
    // then meet a closed connection, and the answer is what counts.
    let _ = conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes());
    let page = read_response(&conn, &format!("the scrape of {path}"));
    if page.starts_with("HTTP/1.0 200 ") {
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "bytes after the response: {rest:?}");
    }
    page
}

#[test]
fn a_trickling_metrics_client_does_not_stop_other_scrapes_and_too_many_are_turned_away_at_once() {
    // A request timeout far beyond the test: only concurrency can serve the scrape.
    let daemon = Daemon::start(&[
        "--allow",
        "sh",
        "--metrics-listen",
        "127.0.0.1:0",
        "--request-timeout",
        "1h",
    ]);
    let addr = daemon.metrics_addr();
    // Connected first, so accepted first: a daemon serving one scrape at a time is
    // busy with it when the next one comes.
    let trickler = Trickler::start(&addr);
    let page = scrape(&addr, "/metrics");
    assert!(page.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
    assert!(page.contains("\nstreamcache_uptime_seconds "), "{page}");
    // The order of events: that scrape was answered while the trickler still waits.
    assert!(
        trickler.is_waiting(),
        "the trickler was answered or dropped"
    );

    // Bounded: with every scrape slot held by a trickler, the next scrape is told so
    // at once (and the tricklers are still waiting), not queued behind them.
    let mut held = vec![trickler];
    let turned_away = loop {
        let page = scrape(&addr, "/metrics");
        if page.starts_with("HTTP/1.0 503 ") {
            break page;
        }
        assert!(page.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
        assert!(held.len() < 64, "64 trickling scrapes and none turned away");
        held.push(Trickler::start(&addr));
    };
    assert!(turned_away.contains("too many scrapes"), "{turned_away}");
    assert!(held.iter().all(Trickler::is_waiting));
    drop(held);
    wait_until("a scrape is served again once the tricklers left", || {
        scrape(&addr, "/metrics").starts_with("HTTP/1.0 200 OK\r\n")
    });
}

#[test]
fn a_metrics_request_still_trickling_at_the_request_timeout_is_cut_off() {
    let daemon = Daemon::start(&[
        "--allow",
        "sh",
        "--metrics-listen",
        "127.0.0.1:0",
        "--request-timeout",
        "1s",
    ]);
    let trickler = Trickler::start(&daemon.metrics_addr());
    // It never stops sending, yet the daemon answers and closes: the deadline is on
    // the whole request, not on each read.
    let answer = read_response(&trickler.conn, "the trickling request");
    assert!(answer.starts_with("HTTP/1.0 408 "), "{answer}");
}

#[test]
fn a_config_file_applies_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let socket = dir.path().join("from-config.sock");
    std::fs::write(
        &config,
        format!(
            "socket = \"{}\"\ndir = \"{}\"\nallow = [\"sh\"]\nmin_occurrences = 1\nmax_age = \"1m\"\n",
            socket.display(),
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let mut serve = Command::new(BIN);
    serve
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--min-occurrences", "0"]);
    let daemon = Daemon::spawn(serve, dir, socket, |_| {});
    for _ in 0..2 {
        let out = daemon.exec(false, &["sh", "-c", "echo from config"], b"");
        assert_eq!(text(&out.stdout), "from config\n");
    }
    let stats = daemon.stats();
    assert_eq!(stats["max_age"], "1m");
    assert_eq!(stats["min_occurrences"], "0", "the flag wins over the file");
    assert_eq!(stats["allow"], "sh");
    assert_eq!(daemon.stat("hits_total"), 1);
}

#[test]
fn a_config_file_with_an_unknown_key_stops_the_daemon_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "dir = \"/tmp/x\"\nmax_agee = \"5m\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("max_agee") && err.contains("config.toml"),
        "{err}"
    );
}

#[test]
fn stats_prints_a_table_for_a_person() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    for _ in 0..3 {
        daemon.exec(false, &["sh", "-c", "echo x"], b"");
    }
    let table = daemon.stats_table();
    for needle in [
        "lookups      3 (hits 2, misses 1, bypassed 0); refused 0",
        "hit ratio    66.7%",
        "commands     1 started, 0 running, 0 failed",
        "served       ",
    ] {
        assert!(table.contains(needle), "{needle:?} not in:\n{table}");
    }
    let none = Command::new(BIN)
        .args(["stats", "--socket"])
        .arg(daemon.dir.path().join("missing.sock"))
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(text(&none.stderr).contains("cannot reach the daemon"));
}
