//! Real git front ends, end to end: smart HTTP (nginx, fcgiwrap and `git
//! http-backend`), ssh (sshd) and `git://` (`git daemon`), each started by the test on
//! loopback ports and sockets of its own, with its data in temporary directories. For
//! each: 8 concurrent clones run `pack-objects` once and pass `git fsck`; with the
//! daemon stopped, one more clone still succeeds (fail open).
//!
//! The front ends' settings are those of docs/DAEMON.md ("Git front ends"), read from
//! it, with only ports and paths changed; README.md must show the same snippets. The
//! hook is in a config file of the test, passed to the servers' upload-packs through
//! their environment (`GIT_CONFIG_GLOBAL`, `GIT_CONFIG_NOSYSTEM`), never in the host's
//! system config. Every server side runs the git on the test's `PATH` (its
//! `--exec-path`), the same git as the clients. Each HTTP clone comes from an address
//! of its own (nginx's `realip` and an `X-Forwarded-For` header), passed on as
//! `REMOTE_ADDR` as `include fastcgi_params;` does: http-backend then sets
//! `GIT_COMMITTER_*` from it, which `exec` leaves out of the key.
//!
//! No server outlives the test process: each server process is started from a thread
//! that lives as long as the test process, with `PR_SET_PDEATHSIG` (as `s3.rs` does for
//! SeaweedFS), and stopped by its pid at the end of its test. So each server is one
//! process: nginx runs without a master (`master_process off`), fcgiwrap runs as 8
//! processes of its own on one socket the test binds (what `fcgiwrap -c 8` forks,
//! minus the parent that would leave them behind), and `git daemon` runs as the
//! `git-daemon` binary itself (the `git daemon` wrapper would leave it behind if it
//! died of SIGKILL). sshd's and git-daemon's children serve one connection each and end
//! with it.
//!
//! Needs nginx, fcgiwrap and openssh-server (`.ci/run` installs them) and root (sshd
//! logs the test in as root; CI runs as root).

use std::ffi::OsStr;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::git::counting_wrapper;
use crate::support::{
    count_lines, fixture, fsck, output_within, refs, require_root, signal, text, Daemon, ExitWatch,
    GitEnv, PATIENCE,
};

/// Clones started at once through each front end.
const CLONES: usize = 8;

/// fcgiwrap processes: one per clone served at once (a process runs one CGI request at
/// a time, and a clone's pack holds one for the whole transfer).
const FCGIWRAP_PROCESSES: usize = CLONES;

// ---- Servers: started by `s3::spawn_for_life` (the test binary's spawner thread), killed
// with the test process.

/// One server process, its output in a log file; stopped (SIGTERM, then SIGKILL) and
/// reaped on drop.
struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` with `stdin`, its stdout and stderr appended to `log`.
    fn start(name: &str, mut cmd: Command, stdin: Stdio, log: &Path) -> Server {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        cmd.stdin(stdin)
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = crate::s3::spawn_for_life(cmd)
            .unwrap_or_else(|e| panic!("start {name}: {e} (is it installed? .ci/run installs it)"));
        Server {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    /// Waits until something accepts connections on `127.0.0.1:port`; fails at once if
    /// the server exits first.
    fn wait_for_port(&mut self, port: u16) {
        self.wait_until_ready(&format!("listening on port {port}"), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Waits until the server's log has `needle` (for a server that a connection made
    /// only to see it listen would count against: sshd penalizes a source address for
    /// connections that never authenticate, from OpenSSH 9.8).
    fn wait_for_log(&mut self, needle: &str) {
        let log = self.log.clone();
        self.wait_until_ready(&format!("{needle:?} in its log"), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains(needle))
        });
    }

    /// Polls `ready` until it holds; fails at once if the server exits first.
    fn wait_until_ready(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited before it was ready ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            if ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never {what}:\n{}",
                self.name,
                self.log()
            );
            // A server that is starting: nothing to wait on but time.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id();
        signal(pid, Signal::TERM);
        if !ExitWatch::new(pid).exited_within(Duration::from_secs(10)) {
            signal(pid, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback (free when this returns; the server binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server's environment: nothing of the test's but `PATH` (so that `git` is the
/// test's git), and a home of its own.
fn plain_env(cmd: &mut Command, server: &GitEnv) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", server.dir.path())
        .env("LC_ALL", "C");
}

// ---- The documented snippets.

/// The fenced code block of docs/DAEMON.md whose first line is `first_line`, without
/// that line; asserts that README.md shows the same block.
fn documented(first_line: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let blocks = |file: &str| -> Vec<Vec<String>> {
        let path = root.join(file);
        let doc =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut blocks = Vec::new();
        let mut current: Option<Vec<String>> = None;
        for line in doc.lines() {
            if line.starts_with("```") {
                match current.take() {
                    Some(block) => blocks.push(block),
                    None => current = Some(Vec::new()),
                }
            } else if let Some(block) = current.as_mut() {
                block.push(line.to_owned());
            }
        }
        blocks
    };
    let find = |file: &str| -> Vec<String> {
        let found: Vec<Vec<String>> = blocks(file)
            .into_iter()
            .filter(|b| b.first().map(String::as_str) == Some(first_line))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{file} must have one code block that starts with {first_line:?}"
        );
        found.into_iter().next().unwrap()
    };
    let daemon_md = find("docs/DAEMON.md");
    assert_eq!(
        find("README.md"),
        daemon_md,
        "README.md and docs/DAEMON.md show different {first_line:?}"
    );
    daemon_md[1..].join("\n")
}

/// `text` with `from` replaced by `to`; `from` must be there.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the documented snippet has no {from:?}:\n{text}"
    );
    text.replace(from, to)
}

// ---- What each front end's test does.

/// What a front end's clients need on their command line; the first argument is the
/// clone's number.
type Adjust<'a> = &'a dyn Fn(usize, &mut Command);

/// The test's side of one front end: the daemon, the hook's config, the wrapper's
/// count, and where the repository is served from.
struct Setup {
    work: tempfile::TempDir,
    daemon: Daemon,
    /// The config the servers' upload-packs read: the hook and `safe.directory`.
    server: GitEnv,
    /// The clients' environment (no hook).
    client: GitEnv,
    runs: PathBuf,
    /// The directory served: `repo.git` in it is the fixture.
    root: PathBuf,
    /// The git all servers run: the test's (`git --exec-path`).
    exec_path: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        require_root("the servers and sshd's login run as root");
        let work = tempfile::tempdir().unwrap();
        let (wrapper, runs) = counting_wrapper(work.path());
        let daemon = Daemon::start(&["--allow", wrapper.to_str().unwrap()]);
        let server = GitEnv::new(Some(&GitEnv::hook_for(&daemon, true, Some(&wrapper))));
        // The servers run as root; a repository of another user would need this.
        let mut config = std::fs::read_to_string(&server.config).unwrap();
        config.push_str("[safe]\n\tdirectory = *\n");
        std::fs::write(&server.config, config).unwrap();
        let client = GitEnv::new(None);
        let root = work.path().join("srv");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&fixture().repo, root.join("repo.git")).unwrap();
        let exec_path = PathBuf::from(client.run(["--exec-path"]).trim());
        Setup {
            work,
            daemon,
            server,
            client,
            runs,
            root,
            exec_path,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A `git clone -q --bare URL DST` of the clients, `adjust`ed for clone `i`.
    fn clone_cmd(&self, url: &str, dst: &Path, i: usize, adjust: Adjust<'_>) -> Command {
        let mut cmd = self.client.git(["clone", "-q", "--bare"]);
        adjust(i, &mut cmd);
        cmd.arg(url)
            .arg(dst)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// 8 clones at once through `url`, then the checks; then the daemon stopped and one
    /// more clone. `servers` are the front end's, for their logs in a failure.
    fn storm_then_fail_open(
        &mut self,
        name: &str,
        url: &str,
        servers: &[&Server],
        adjust: Adjust<'_>,
    ) {
        let logs = || {
            servers
                .iter()
                .map(|s| format!("--- {} log:\n{}", s.name, s.log()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let into = self.dir("clones");
        let dsts: Vec<PathBuf> = (0..CLONES)
            .map(|i| into.join(format!("clone-{i}.git")))
            .collect();
        let started = Instant::now();
        let children: Vec<Child> = dsts
            .iter()
            .enumerate()
            .map(|(i, dst)| self.clone_cmd(url, dst, i, adjust).spawn().unwrap())
            .collect();
        let outputs: Vec<_> = children
            .into_iter()
            .enumerate()
            .map(|(i, child)| output_within(child, &format!("{name} clone {i}")))
            .collect();
        let wall = started.elapsed();
        for (i, out) in outputs.iter().enumerate() {
            assert!(
                out.status.success(),
                "{name} clone {i} failed: {}\n{}\n{}\n--- daemon log:\n{}",
                out.status,
                text(&out.stderr),
                logs(),
                self.daemon.log()
            );
        }
        let runs = count_lines(&self.runs);
        eprintln!("frontend {name}: {CLONES} clones in {wall:.2?}, pack-objects runs {runs}");
        assert_eq!(runs, 1, "{name}: pack-objects runs for {CLONES} clones");
        assert_eq!(self.daemon.stat("misses_total"), 1, "{name}");
        assert_eq!(self.daemon.stat("hits_total"), CLONES as u64 - 1, "{name}");
        assert_eq!(self.daemon.stat("failures_total"), 0, "{name}");
        let expected = refs(&self.client, &fixture().repo);
        for dst in &dsts {
            fsck(&self.client, dst);
            assert_eq!(refs(&self.client, dst), expected, "{}", dst.display());
        }

        // Fail open: the daemon is gone, the hook runs the wrapper itself.
        let status = self.daemon.stop();
        assert!(status.success(), "{status}");
        let dst = into.join("after-stop.git");
        let out = output_within(
            self.clone_cmd(url, &dst, CLONES, adjust).spawn().unwrap(),
            &format!("{name} clone with the daemon stopped"),
        );
        let err = text(&out.stderr);
        assert!(
            out.status.success(),
            "{name} clone with the daemon stopped failed: {}\n{err}\n{}",
            out.status,
            logs()
        );
        // `exec -v` says why, and git relays it to the client.
        assert!(
            err.contains("remote: streamcache: cannot reach the daemon"),
            "{name}: {err}"
        );
        assert_eq!(
            count_lines(&self.runs),
            2,
            "{name}: the hook ran pack-objects itself"
        );
        fsck(&self.client, &dst);
        assert_eq!(refs(&self.client, &dst), expected);
    }
}

// ---- The front ends.

#[test]
fn smart_http_through_nginx_fcgiwrap_and_git_http_backend() {
    let mut setup = Setup::new();
    let dir = setup.dir("http");
    let log = dir.join("servers.log");

    // fcgiwrap: processes of one socket, bound here and passed as their stdin (as
    // `fcgiwrap -c N` and systemd's socket do).
    let socket = dir.join("fcgiwrap.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fcgiwraps: Vec<Server> = (0..FCGIWRAP_PROCESSES)
        .map(|i| {
            let mut cmd = Command::new("/usr/sbin/fcgiwrap");
            cmd.arg("-f");
            plain_env(&mut cmd, &setup.server);
            let fd: OwnedFd = listener.try_clone().unwrap().into();
            Server::start(&format!("fcgiwrap {i}"), cmd, Stdio::from(fd), &log)
        })
        .collect();
    drop(listener);

    // nginx, with the documented server block.
    let port = free_port();
    let server_block = documented("# /etc/nginx/sites-available/git (linked from sites-enabled)");
    let server_block = replaced(
        &server_block,
        "listen 80;",
        &format!("listen 127.0.0.1:{port};"),
    );
    let server_block = replaced(
        &server_block,
        "unix:/run/fcgiwrap.socket",
        &format!("unix:{}", socket.display()),
    );
    let server_block = replaced(
        &server_block,
        "/usr/lib/git-core/git-http-backend",
        setup.exec_path.join("git-http-backend").to_str().unwrap(),
    );
    let server_block = replaced(&server_block, "/srv/git", setup.root.to_str().unwrap());
    // Added for the test: the hook's config, through the CGI's environment rather
    // than the system config; and the client's address, as `include fastcgi_params;`
    // passes it, from which http-backend sets GIT_COMMITTER_*, which exec leaves out of
    // the key (each clone below comes from an address of its own).
    let server_block = replaced(
        &server_block,
        "        fastcgi_param GIT_PROJECT_ROOT",
        &format!(
            "        fastcgi_param GIT_CONFIG_GLOBAL {};\n        \
             fastcgi_param GIT_CONFIG_NOSYSTEM 1;\n        \
             fastcgi_param REMOTE_ADDR $remote_addr;\n        \
             fastcgi_param GIT_PROJECT_ROOT",
            setup.server.config.display()
        ),
    );
    let d = dir.display();
    let conf = format!(
        "# One process, the test's child: it dies with the test.\n\
         master_process off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         access_log off;\n\
         # Clients on loopback, each from the address it names (below).\n\
         set_real_ip_from 127.0.0.1;\n\
         real_ip_header X-Forwarded-For;\n\
         client_body_temp_path {d}/tmp-body;\n\
         fastcgi_temp_path {d}/tmp-fastcgi;\n\
         proxy_temp_path {d}/tmp-proxy;\n\
         uwsgi_temp_path {d}/tmp-uwsgi;\n\
         scgi_temp_path {d}/tmp-scgi;\n\
         {server_block}\n\
         }}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"]);
    plain_env(&mut cmd, &setup.server);
    let mut nginx = Server::start("nginx", cmd, Stdio::null(), &log);
    nginx.wait_for_port(port);

    let mut servers: Vec<&Server> = vec![&nginx];
    servers.extend(fcgiwraps.iter());
    let url = format!("http://127.0.0.1:{port}/repo.git");
    setup.storm_then_fail_open("http", &url, &servers, &|i, cmd: &mut Command| {
        cmd.arg("-c").arg(format!(
            "http.extraHeader=X-Forwarded-For: 192.0.2.{}",
            i + 1
        ));
    });
}

#[test]
fn ssh_through_sshd() {
    let mut setup = Setup::new();
    let dir = setup.dir("ssh");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let keygen = |name: &str| {
        let key = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
        key
    };
    let host_key = keygen("host_key");
    let client_key = keygen("client_key");
    let authorized = dir.join("authorized_keys");
    std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
    // sshd's privilege separation directory, which the package's service makes.
    std::fs::create_dir_all("/run/sshd").unwrap();

    let port = free_port();
    let documented_lines =
        documented("# /etc/ssh/sshd_config.d/git.conf (then: systemctl reload ssh)");
    let config = format!(
        "ListenAddress 127.0.0.1:{port}\n\
         HostKey {host_key}\n\
         PidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {authorized}\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         # The temporary directory is under /tmp, which is writable by all.\n\
         StrictModes no\n\
         # The hook's config: through the session's environment, not the system config.\n\
         SetEnv GIT_CONFIG_GLOBAL={config} GIT_CONFIG_NOSYSTEM=1\n\
         {documented_lines}\n",
        d = dir.display(),
        host_key = host_key.display(),
        authorized = authorized.display(),
        config = setup.server.config.display(),
    );
    let config_path = dir.join("sshd_config");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f"]).arg(&config_path);
    plain_env(&mut cmd, &setup.server);
    let mut sshd = Server::start("sshd", cmd, Stdio::null(), &dir.join("sshd.log"));
    sshd.wait_for_log(&format!("Server listening on 127.0.0.1 port {port}."));

    let ssh_command = format!(
        "ssh -F /dev/null -p {port} -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR",
        key = client_key.display()
    );
    // The login shell would run the `git-upload-pack` on root's `PATH`: name the test's.
    let upload_pack = setup.exec_path.join("git-upload-pack");
    let url = format!(
        "ssh://root@127.0.0.1:{port}{}/repo.git",
        setup.root.display()
    );
    setup.storm_then_fail_open("ssh", &url, &[&sshd], &|_, cmd: &mut Command| {
        cmd.env("GIT_SSH_COMMAND", &ssh_command)
            .arg(OsStr::new("--upload-pack"))
            .arg(&upload_pack);
    });
}

#[test]
fn git_protocol_through_git_daemon() {
    let mut setup = Setup::new();
    let dir = setup.dir("git-daemon");
    let port = free_port();
    let line = documented("# serves git://git.example.com/project.git from /srv/git/project.git");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words[..2],
        ["git", "daemon"],
        "the documented command: {line}"
    );
    let root = setup.root.to_str().unwrap();
    let mut cmd = Command::new(setup.exec_path.join("git-daemon"));
    cmd.arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .args(words[2..].iter().map(|w| w.replace("/srv/git", root)));
    assert!(
        words.contains(&"/srv/git"),
        "the documented command serves /srv/git: {line}"
    );
    // The hook's config: through the daemon's environment, which upload-pack inherits.
    plain_env(&mut cmd, &setup.server);
    cmd.env("GIT_CONFIG_GLOBAL", &setup.server.config)
        .env("GIT_CONFIG_NOSYSTEM", "1");
    let mut daemon = Server::start(
        "git daemon",
        cmd,
        Stdio::null(),
        &dir.join("git-daemon.log"),
    );
    daemon.wait_for_port(port);

    let url = format!("git://127.0.0.1:{port}/repo.git");
    setup.storm_then_fail_open("git", &url, &[&daemon], &|_, _| {});
}
