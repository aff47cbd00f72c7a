//! Who may use the daemon and what it touches: the socket's owner only, entries readable
//! by their owner only, keys that never become paths, links planted in the cache that
//! are never followed, the allow-list, and the environment a command runs with.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use streamcache_daemon::wire::{Request, Status};

use crate::support::{
    bin_for_others, files_under, require_root, run_with_stdin, serve_refuses_to_start, text,
    wait_until, wire_roundtrip, Daemon, BIN,
};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// `exec` as uid/gid 65534 with a copy of the binary it can run.
fn as_nobody(bin: &Path, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir("/").uid(65534).gid(65534);
    cmd
}

#[test]
fn only_the_owner_can_reach_the_socket_and_another_uid_is_refused_even_through_open_modes() {
    require_root("it runs clients as uid 65534");
    let daemon = Daemon::start(&["--allow", "sh"]);
    let (_bin_dir, bin) = bin_for_others();
    assert_eq!(mode(&daemon.socket), 0o600, "the socket is owner-only");
    // Nobody else can replace it: its directory is writable by its owner only (the
    // daemon checks that, and refuses to start otherwise).
    assert_eq!(mode(daemon.socket.parent().unwrap()) & 0o022, 0);

    // As it is, another user cannot even connect: the client runs the command itself.
    let socket = daemon.socket.as_os_str();
    let exec = [
        OsStr::new("exec"),
        OsStr::new("-v"),
        OsStr::new("--socket"),
        socket,
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new("id -u"),
    ];
    let out = run_with_stdin(as_nobody(&bin, &exec), b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "65534\n");
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    let stats = [OsStr::new("stats"), OsStr::new("--socket"), socket];
    let out = as_nobody(&bin, &stats).output().unwrap();
    assert!(!out.status.success(), "another user reads no counters");

    // With the modes opened up, the uid check still refuses every kind of request.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&bin, &stats).output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("daemon refused: peer uid 65534 may not use this daemon"),
        "{err}"
    );
    let out = run_with_stdin(as_nobody(&bin, &exec), b"");
    assert_eq!(text(&out.stdout), "65534\n", "it ran the command itself");
    assert!(text(&out.stderr).contains("peer uid 65534"));
    assert_eq!(daemon.stat("peer_refused_total"), 2);
    assert_eq!(daemon.stat("children_started_total"), 0);
}

/// Checks every file and directory under `dir`: directories 0700, files 0400, owned by
/// us, nothing else (no links, sockets or FIFOs).
fn assert_owner_only(dir: &Path) {
    let me = rustix::process::geteuid().as_raw();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(meta.uid(), me, "{}", path.display());
            if meta.is_dir() {
                stack.push(path);
            } else {
                assert!(
                    meta.is_file(),
                    "only files and directories: {}",
                    path.display()
                );
                assert_eq!(mode(&path), 0o400, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files > 0, "entries were made under {}", dir.display());
}

#[test]
fn entries_are_owner_read_only_files_in_owner_only_directories_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let cache = dir.path().join("cache");
    // The daemon starts under the loosest umask there is.
    let mut serve = Command::new("sh");
    serve
        .args([
            "-c",
            "umask 000; exec \"$0\" \"$@\"",
            BIN,
            "serve",
            "--allow",
            "sh",
        ])
        .arg("--socket")
        .arg(&socket)
        .arg("--dir")
        .arg(&cache);
    let daemon = Daemon::spawn(serve, dir, socket, |_| {});
    let big_stdin = vec![b'x'; 3 << 20];
    for (i, stdin) in [&b"small"[..], &big_stdin[..]].into_iter().enumerate() {
        let out = daemon.exec(false, &["sh", "-c", &format!("wc -c; echo {i}")], stdin);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{}\n{i}\n", stdin.len()));
    }
    assert_eq!(mode(&daemon.socket), 0o600);
    assert_owner_only(&cache);
    // The spilled stdin left no named file behind: only the entries directory.
    let names: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["entries"]);
}

/// Whether `relative` (below the entries directory) is a name the store makes:
/// `<xx>/<20 hex digits>-<n>`.
fn is_store_name(relative: &Path) -> bool {
    let parts: Vec<&[u8]> = relative.iter().map(|p| p.as_bytes()).collect();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    match parts.as_slice() {
        [dir, file] => {
            let Some(dash) = file.iter().position(|&b| b == b'-') else {
                return false;
            };
            let (id, n) = (&file[..dash], &file[dash + 1..]);
            dir.len() == 2
                && hex(dir)
                && id.len() == 20
                && hex(id)
                && !n.is_empty()
                && n.iter().all(u8::is_ascii_digit)
        }
        // A committed (durable) entry: named by the digest of its key alone.
        [top, dir, file] => {
            *top == b"committed" && dir.len() == 2 && hex(dir) && file.len() == 62 && hex(file)
        }
        _ => false,
    }
}

#[test]
fn keys_and_arguments_never_become_paths() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    let before = files_under(daemon.dir.path());
    let weird: Vec<&[u8]> = vec![
        b"../../../../tmp/streamcache-escape",
        b"/etc/passwd",
        b"a/b/c",
        b"..",
        b".",
        b"",
        b"-rf",
        b"\n\t\r",
        b"\x01\x02\x7f\x80\xfe\xff",
        b"%2e%2e%2f",
        b"entries/00/x",
    ];
    for (i, w) in weird.iter().enumerate() {
        let arg = OsStr::from_bytes(w);
        // The bytes go into the arguments and into --key; the command prints them back.
        let mut cmd = Command::new(BIN);
        cmd.arg("exec")
            .arg("-v")
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--key")
            .arg(arg)
            .args([OsStr::new("--"), OsStr::new("sh"), OsStr::new("-c")])
            .arg(OsStr::new("printf '%s|%s' \"$0\" \"$1\""))
            .arg(arg)
            .arg(OsStr::new(&i.to_string()));
        let out = run_with_stdin(cmd, b"");
        assert!(out.status.success(), "{i}: {}", text(&out.stderr));
        let mut expect = w.to_vec();
        expect.extend_from_slice(format!("|{i}").as_bytes());
        assert_eq!(out.stdout, expect, "{i}");
        assert_eq!(text(&out.stderr), "", "{i}: served by the daemon");
    }
    assert_eq!(daemon.stat("misses_total"), weird.len() as u64);
    let entries = daemon.dir.path().join("cache/entries");
    let made: Vec<PathBuf> = files_under(daemon.dir.path())
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(made.len(), weird.len(), "one file per entry: {made:?}");
    for file in &made {
        let relative = file
            .strip_prefix(&entries)
            .unwrap_or_else(|_| panic!("{} is outside the entries directory", file.display()));
        assert!(is_store_name(relative), "{}", relative.display());
    }
    assert!(!Path::new("/tmp/streamcache-escape").exists());
}

fn set_mtime(path: &Path, age: Duration) {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps};
    let then = SystemTime::now() - age;
    let secs = then
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ts = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    utimensat(
        rustix::fs::CWD,
        path,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A directory outside the cache holding an old file the walker would remove if it
/// ever looked there, and an old file a link could be aimed at.
struct Outside {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    precious: PathBuf,
}

impl Outside {
    fn new() -> Outside {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outside");
        std::fs::create_dir(&dir).unwrap();
        let old = dir.join("old-file");
        std::fs::write(&old, b"old and precious").unwrap();
        set_mtime(&old, Duration::from_secs(3600));
        let precious = tmp.path().join("precious");
        std::fs::write(&precious, b"precious").unwrap();
        std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o644)).unwrap();
        set_mtime(&precious, Duration::from_secs(3600));
        Outside {
            _dir: tmp,
            dir,
            precious,
        }
    }

    fn assert_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["old-file"], "nothing was made or removed outside");
        assert_eq!(
            std::fs::read(self.dir.join("old-file")).unwrap(),
            b"old and precious"
        );
        assert_eq!(std::fs::read(&self.precious).unwrap(), b"precious");
        assert_eq!(mode(&self.precious), 0o644);
    }
}

#[test]
fn file_creation_never_follows_a_link_planted_in_the_cache_directory() {
    // Entries that are not durable keep their private names, so the test can aim its
    // links at the next one (a durable entry creates its file the same way).
    let daemon = Daemon::start(&["--allow", "sh", "--no-durable"]);
    let entries = daemon.dir.path().join("cache/entries");
    let outside = Outside::new();
    // One entry, so the store's random id is on disk to aim a link at.
    let out = daemon.exec(true, &["sh", "-c", "echo first"], b"");
    assert_eq!(text(&out.stderr), "");
    let first = files_under(&entries);
    assert_eq!(first.len(), 1);
    let name = first[0].file_name().unwrap().to_str().unwrap().to_owned();
    let id = name.split_once('-').unwrap().0.to_owned();
    // The next file would be 02/<id>-2: a link waits there, and every other fan-out
    // directory is a link out of the cache.
    std::fs::create_dir(entries.join("02")).unwrap();
    std::os::unix::fs::symlink(&outside.precious, entries.join(format!("02/{id}-2"))).unwrap();
    for n in 3..=0x101u32 {
        let dir = entries.join(format!("{:02x}", n & 0xff));
        if !dir.exists() {
            std::os::unix::fs::symlink(&outside.dir, dir).unwrap();
        }
    }
    for i in 0..5 {
        // Nothing can be stored: each client runs the command itself, correctly.
        let out = daemon.exec(true, &["sh", "-c", &format!("echo planted {i}")], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("planted {i}\n"));
        assert!(
            text(&out.stderr).contains("running sh directly"),
            "{}",
            text(&out.stderr)
        );
    }
    outside.assert_untouched();
    assert_eq!(daemon.stat("errors_total"), 5);
    // The entry made before is still served.
    let out = daemon.exec(true, &["sh", "-c", "echo first"], b"");
    assert_eq!(
        (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
        ("first\n", "")
    );
}

#[test]
fn the_walker_removes_planted_links_and_never_what_they_point_to() {
    let daemon = Daemon::start(&["--allow", "sh", "--max-age", "1s"]);
    let entries = daemon.dir.path().join("cache/entries");
    let outside = Outside::new();
    let out = daemon.exec(true, &["sh", "-c", "echo first"], b"");
    assert_eq!(text(&out.stderr), "");
    let links = [
        (entries.join("01/link-to-file"), outside.precious.clone()),
        (entries.join("01/link-to-dir"), outside.dir.clone()),
        (entries.join("ab"), outside.dir.clone()),
        (
            entries.join("link-at-the-top"),
            outside.dir.join("old-file"),
        ),
    ];
    for (link, target) in &links {
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    wait_until("the walker removes the planted links", || {
        links
            .iter()
            .all(|(link, _)| std::fs::symlink_metadata(link).is_err())
    });
    outside.assert_untouched();
    let out = daemon.exec(true, &["sh", "-c", "echo after the sweep"], b"");
    assert_eq!(
        (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
        ("after the sweep\n", "")
    );
}

#[test]
fn a_command_off_the_allow_list_is_refused_however_it_is_spelled() {
    let daemon = Daemon::start(&[]);
    let request = |program: &str, args: &[&str]| Request {
        program: program.as_bytes().to_vec(),
        args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
        cwd: b"/".to_vec(),
        env: vec![(b"PATH".to_vec(), b"/usr/bin:/bin".to_vec())],
        ..Request::default()
    };
    let tries = [
        request("/usr/bin/git", &["pack-objects", "--stdout"]),
        request("./git", &["pack-objects", "--stdout"]),
        request("git/", &["pack-objects"]),
        request("git", &["upload-pack", "."]),
        request("git", &["-c", "core.pager=sh", "pack-objects"]),
        request("git", &["--exec-path=/tmp", "pack-objects"]),
        request("git", &["--shallow-file"]),
        request("git", &["--shallow-file", "x", "upload-pack"]),
        request("git", &["pack-objects2"]),
        request("git", &["PACK-OBJECTS"]),
        request("git", &[]),
        request("sh", &["-c", "git pack-objects"]),
        request("env", &["git", "pack-objects"]),
    ];
    for r in &tries {
        let reply = wire_roundtrip(&daemon.socket, r, b"");
        let (status, message) = reply.status.unwrap();
        assert_eq!(status, Status::Refused, "{r:?}: {message}");
        assert!(message.contains("not on the allow-list"), "{message}");
        assert!(reply.stdout.is_empty() && reply.exit.is_none());
    }
    assert_eq!(daemon.stat("refused_total"), tries.len() as u64);
    assert_eq!(daemon.stat("children_started_total"), 0);
}

#[test]
fn exec_passes_only_the_forwarded_environment_never_the_clients_or_the_daemons() {
    let daemon = Daemon::start_with(&["--allow", "env"], |serve| {
        serve.env("DAEMON_SECRET", "daemon-s3cret");
    });
    let mut cmd = daemon.exec_cmd(false, &["env"]);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", "/nonexistent-home")
        .env("LC_ALL", "C")
        .env("GIT_PROTOCOL", "version=2")
        .env("GIT_TRACE", "1")
        .env("SECRET_TOKEN", "client-s3cret")
        .env("SSH_AUTH_SOCK", "/tmp/agent.sock")
        .env("LD_LIBRARY_PATH", "/tmp/evil")
        .env("STREAMCACHE_SOCKET", "/tmp/other.sock");
    let out = run_with_stdin(cmd, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let names: BTreeSet<&str> = printed
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["GIT_PROTOCOL", "HOME", "LC_ALL", "PATH"]),
        "{printed}"
    );
    assert!(!printed.contains("s3cret"), "{printed}");
    assert_eq!(daemon.stat("misses_total"), 1, "it ran in the daemon");
}

/// A directory that uid 65534 owns and may write, in a tree it can traverse.
fn dir_of_nobody(parent: &Path, name: &str) -> PathBuf {
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    rustix::fs::chown(
        &dir,
        Some(rustix::process::Uid::from_raw(65534)),
        Some(rustix::process::Gid::from_raw(65534)),
    )
    .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn exec_refuses_a_socket_that_another_user_serves_and_runs_the_command_itself() {
    require_root("it runs an impostor as uid 65534");
    let (_bin_dir, bin) = bin_for_others();
    // The impostor: a real `streamcache serve` of uid 65534 that bound the socket path
    // first, in a directory it may write. It answers every request with well-formed
    // replies, made of its own bytes: what a command prints when it runs as 65534.
    let home = tempfile::tempdir().unwrap();
    let theirs = dir_of_nobody(home.path(), "theirs");
    let socket = theirs.join("s.sock");
    let mut serve = Command::new(&bin);
    serve
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .arg("--dir")
        .arg(theirs.join("cache"))
        .args(["--allow", "sh"])
        .current_dir("/")
        .uid(65534)
        .gid(65534);
    let notify = home.path().join("notify.sock");
    let impostor = Daemon::spawn(serve, home, socket.clone(), |_| {
        // Its readiness message must reach the test's notify socket.
        std::fs::set_permissions(&notify, std::fs::Permissions::from_mode(0o777)).unwrap();
    });
    let command = [
        "sh",
        "-c",
        "echo \"ran as $(id -u)\"; echo \"stderr of $(id -u)\" >&2",
    ];
    let exec = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("exec")
            .arg("-v")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .arg("--")
            .args(command)
            .current_dir("/");
        run_with_stdin(cmd, b"")
    };

    let out = exec(&[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        stdout, "ran as 0\n",
        "the client ran it itself; stderr: {stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("65534\n"),
        "none of the impostor's bytes: {stderr}"
    );
    assert!(
        stderr.contains("served by uid 65534") && stderr.contains("running sh directly"),
        "{stderr}"
    );
    assert!(stderr.ends_with("stderr of 0\n"), "{stderr}");
    // The request (with the client's environment and stdin) never reached it.
    assert_eq!(
        impostor.stat("connections_total"),
        2,
        "the exec and this stats"
    );
    assert_eq!(impostor.stat("children_started_total"), 0);

    // Named as the daemon's user, the same server is trusted.
    let out = exec(&["--daemon-user", "nobody"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran as 65534\n");
    assert_eq!(text(&out.stderr), "stderr of 65534\n");
    assert_eq!(impostor.stat("children_started_total"), 1);
}

#[test]
fn the_daemon_refuses_a_socket_directory_that_others_can_write_even_a_sticky_one() {
    for mode in [0o1777, 0o777, 0o1770, 0o1733] {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut serve = Command::new(BIN);
        serve
            .arg("serve")
            .arg("--socket")
            .arg(shared.join("s.sock"))
            .arg("--dir")
            .arg(dir.path().join("cache"));
        let err = serve_refuses_to_start(serve, dir.path());
        assert!(
            err.contains(&format!(
                "directory {} is writable by others",
                shared.display()
            )),
            "mode {mode:o}: {err}"
        );
        assert!(!shared.join("s.sock").exists(), "mode {mode:o}");
    }
}

#[test]
fn a_client_chosen_path_cannot_change_which_binary_runs() {
    let daemon = Daemon::start(&["--allow", "git:pack-objects", "--allow", "env"]);
    let root = daemon.dir.path();
    let work = root.join("work");
    let init = Command::new("git")
        .args(["init", "-q"])
        .arg(&work)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init.stderr));
    // Fakes of both programs, in a directory the client puts first in its PATH and in
    // the working directory, for a PATH that starts with `.`.
    let evil = root.join("evil");
    std::fs::create_dir(&evil).unwrap();
    let ran = root.join("fakes-ran");
    for dir in [&evil, &work] {
        for name in ["git", "env"] {
            let body = format!("echo {name} >> {}; echo FAKE; exit 0", ran.display());
            crate::support::script(&dir.join(name), &body);
        }
    }
    let daemons_path = std::env::var("PATH").unwrap();
    for path in [
        format!("{}:{daemons_path}", evil.display()),
        format!(".:{daemons_path}"),
    ] {
        // pack-objects as the hook runs it: an empty pack from the real git.
        let mut cmd = daemon.exec_cmd(true, &["git", "pack-objects", "--stdout"]);
        cmd.current_dir(&work).env("PATH", &path);
        let out = run_with_stdin(cmd, b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            out.stdout.starts_with(b"PACK"),
            "PATH={path}: {:?}",
            text(&out.stdout)
        );
        // The command still gets the client's PATH (git needs it for its helpers).
        let mut cmd = daemon.exec_cmd(true, &["env"]);
        cmd.current_dir(&work).env("PATH", &path);
        let out = run_with_stdin(cmd, b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let printed = text(&out.stdout);
        assert!(
            printed.lines().any(|l| l == format!("PATH={path}")),
            "{printed}"
        );
        assert!(!printed.contains("FAKE"), "{printed}");
    }
    assert!(
        !ran.exists(),
        "a fake ran: {:?}",
        std::fs::read_to_string(&ran)
    );
    assert_eq!(daemon.stat("misses_total"), 4, "each one ran in the daemon");
}

#[test]
fn a_relative_program_on_the_allow_list_stops_the_daemon_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Command::new(BIN);
    serve
        .arg("serve")
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--dir")
        .arg(dir.path().join("cache"))
        .args(["--allow", "./where.sh"]);
    let err = serve_refuses_to_start(serve, dir.path());
    assert!(
        err.contains("allow: allow rule \"./where.sh\": \"./where.sh\" is a relative path"),
        "{err}"
    );
}

/// The uid and gid of the system user `git`, the user ssh runs upload-pack as on a git
/// host; made (once, and kept, as a host has it) if this machine has none.
fn git_user() -> (u32, u32) {
    static GIT: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *GIT.get_or_init(|| {
        let lookup = || nix::unistd::User::from_name("git").unwrap();
        if lookup().is_none() {
            let status = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "git",
                ])
                .status()
                .expect("run useradd");
            assert!(status.success(), "useradd git: {status}");
        }
        let user = lookup().expect("the user git");
        (user.uid.as_raw(), user.gid.as_raw())
    })
}

/// A clone of the fixture by `uid`:`gid`, through the hook of `env`, into `dst`.
fn clone_as(env: &crate::support::GitEnv, uid: u32, gid: u32, dst: &Path) -> std::process::Output {
    let mut cmd = crate::git::clone_cmd(
        env,
        &["--bare", "--no-local"],
        &crate::support::fixture().repo,
        dst,
    );
    cmd.uid(uid).gid(gid).current_dir("/");
    cmd.output().unwrap()
}

#[test]
fn one_daemon_serves_www_data_and_git_from_one_entry_and_refuses_a_third_who_still_clones() {
    require_root("it clones as www-data, git and nobody");
    let (_bin_dir, bin) = bin_for_others();
    let (git_uid, git_gid) = git_user();
    let daemon = Daemon::start(&["--allow-user", "www-data", "--allow-user", "git"]);
    assert_eq!(
        mode(&daemon.socket),
        0o666,
        "users are named: anyone may connect, the peer check decides"
    );
    assert_eq!(
        mode(daemon.socket.parent().unwrap()) & 0o033,
        0o011,
        "searchable, not writable"
    );
    // One git environment for all three, as a system config would be: same HOME and
    // config path, so the same key; readable by them; repositories of another user
    // allowed (git refuses them otherwise).
    let hook = format!(
        "{} exec -v --socket {} --",
        bin.display(),
        daemon.socket.display()
    );
    let env = crate::support::GitEnv::new(Some(&hook));
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str("[safe]\n\tdirectory = *\n");
    std::fs::write(&env.config, config).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();

    for (name, uid, gid) in [("www-data", 33, 33), ("git", git_uid, git_gid)] {
        let dst = out_dir.path().join(format!("{name}.git"));
        let out = clone_as(&env, uid, gid, &dst);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert_eq!(std::fs::metadata(&dst).unwrap().uid(), uid);
        crate::support::fsck(&env, &dst);
    }
    assert_eq!(
        (
            daemon.stat("misses_total"),
            daemon.stat("hits_total"),
            daemon.stat("children_started_total")
        ),
        (1, 1, 1),
        "www-data and git shared one entry"
    );
    // Entries stay the daemon's user's, owner-only.
    assert_owner_only(&daemon.dir.path().join("cache/entries"));

    // A third user is refused, counted, and clones all the same, uncached.
    let dst = out_dir.path().join("nobody.git");
    let out = clone_as(&env, 65534, 65534, &dst);
    assert!(out.status.success(), "nobody: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("peer uid 65534 may not use this daemon (it serves uid 0 and root, user www-data (uid 33), user git (uid {git_uid}))")),
        "{}",
        text(&out.stderr)
    );
    crate::support::fsck(&env, &dst);
    assert_eq!(daemon.stat("peer_refused_total"), 1);
    assert_eq!(daemon.stat("children_started_total"), 1);
}

#[test]
fn with_one_group_the_socket_is_the_groups_and_its_members_are_served() {
    require_root("it runs a client as www-data");
    let (_bin_dir, bin) = bin_for_others();
    let daemon = Daemon::start(&["--allow", "sh", "--allow-group", "www-data"]);
    assert_eq!(mode(&daemon.socket), 0o660);
    assert_eq!(std::fs::metadata(&daemon.socket).unwrap().gid(), 33);
    let exec = [
        OsStr::new("exec"),
        OsStr::new("-v"),
        OsStr::new("--socket"),
        daemon.socket.as_os_str(),
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new("id -u"),
    ];
    // A member (www-data's primary group) is served: the daemon (root) ran it.
    let mut member = Command::new(&bin);
    member.args(exec).current_dir("/").uid(33).gid(33);
    let out = run_with_stdin(member, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "0\n",
        "the daemon ran it: {}",
        text(&out.stderr)
    );
    // Anyone else cannot even connect, and runs the command itself; the system log
    // (here a socket of the test's, named by STREAMCACHE_SYSLOG) says so, for the
    // operator, who would not see a refusal the daemon never got.
    let log_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(log_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log_path = log_dir.path().join("log");
    let log = std::os::unix::net::UnixDatagram::bind(&log_path).unwrap();
    std::fs::set_permissions(&log_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut nobody = as_nobody(&bin, &exec);
    nobody.env("STREAMCACHE_SYSLOG", &log_path);
    let out = run_with_stdin(nobody, b"");
    assert_eq!(text(&out.stdout), "65534\n");
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    let mut line = [0u8; 4096];
    log.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let n = log
        .recv(&mut line)
        .expect("a syslog line from the client that failed open");
    let line = String::from_utf8_lossy(&line[..n]).into_owned();
    assert!(
        line.starts_with("<12>streamcache[")
            && line.contains("]: exec ran sh itself (uid 65534): cannot reach the daemon at")
            && line.contains("Permission denied"),
        "{line}"
    );
    assert_eq!(daemon.stat("children_started_total"), 1);
}

#[test]
fn check_tells_www_data_git_a_refused_user_and_one_without_the_hook_what_happens() {
    require_root("it checks as www-data and nobody");
    let (_bin_dir, bin) = bin_for_others();
    let (git_uid, _) = git_user();
    let daemon = Daemon::start(&["--allow-user", "www-data", "--allow-user", "git"]);
    // The hook, where every user's git reads it (the tests keep the host's system
    // config out of it).
    let conf_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(conf_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let with_hook = conf_dir.path().join("with-hook");
    std::fs::write(
        &with_hook,
        format!(
            "[uploadpack]\n\tpackObjectsHook = {} exec --socket {} --\n",
            bin.display(),
            daemon.socket.display()
        ),
    )
    .unwrap();
    let without = conf_dir.path().join("without-hook");
    std::fs::write(&without, "").unwrap();
    let check = |user: &str, config: &Path| {
        let out = Command::new(BIN)
            .args(["check", "--as", user])
            .env("GIT_CONFIG_GLOBAL", config)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("STREAMCACHE_SOCKET")
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    let (code, out, err) = check("www-data", &with_hook);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("as www-data (uid 33, gid 33):"), "{out}");
    assert!(
        out.contains("reached") && out.contains("the daemon serves uid 33"),
        "{out}"
    );
    assert!(out.contains("the daemon runs git pack-objects"), "{out}");
    assert!(
        out.contains("verdict: clones by uid 33 are cached"),
        "{out}"
    );

    let (code, out, err) = check("git", &with_hook);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("verdict: clones by uid {git_uid} are cached")),
        "{out}"
    );

    let (code, out, _) = check("nobody", &with_hook);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("peer uid 65534 may not use this daemon")
            && out.contains("add this user to allow_users"),
        "{out}"
    );
    assert!(
        out.contains("verdict: clones by uid 65534 are NOT cached"),
        "{out}"
    );
    // The refusal shows where the operator looks.
    assert_eq!(daemon.stat("peer_refused_total"), 1);

    let (code, out, _) = check("www-data", &without);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no uploadpack.packObjectsHook"), "{out}");
    assert!(out.contains("NOT cached"), "{out}");
}
