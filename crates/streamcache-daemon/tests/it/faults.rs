//! Faults on real processes and real files: a disk that fills (a real tmpfs), a daemon
//! killed with SIGKILL, producers that are killed, hang or outlive their readers, and
//! readers that stop reading. Mounting needs root: those tests fail without it (CI runs
//! as root).

use std::process::{Child, Output};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::{
    fds_besides_entries, fifo, files_under, is_running, lasting_threads, output_within, pid_in,
    read_pids, read_stdout, require_root, sh, signal, spawn_client, text,
    three_clients_of_one_gated_entry, wait_for_fds, wait_for_threads, wait_until, Daemon,
    ExitWatch, Tmpfs, PATIENCE,
};

fn assert_failed_after_output(out: &Output, who: &str, cause: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{who}: a stream that broke off after output must fail; stderr: {}",
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("streamcache:") && err.contains(cause),
        "{who}: stderr says what happened ({cause:?}): {err:?}"
    );
}

#[test]
fn a_disk_that_fills_during_a_miss_fails_every_attached_client_and_serves_nothing_truncated() {
    require_root("it mounts a tmpfs");
    for backpressure in [true, false] {
        let tmpfs = Tmpfs::mount("size=8m");
        let work = tempfile::tempdir().unwrap();
        let socket = work.path().join("s.sock");
        // Without the free-space guard (on by default), which would keep the entry
        // from filling the disk: `limits::with_the_default_free_space_guard_…` shows that.
        let mut args = vec!["--allow", "sh", "--min-free", "0"];
        if !backpressure {
            args.push("--no-backpressure");
        }
        let daemon = Daemon::start_on(&socket, &tmpfs.path().join("cache"), &args);
        // Something else takes 6 of the 8 MiB; the command writes 4 MiB.
        let filler = tmpfs.path().join("filler");
        std::fs::write(&filler, vec![0u8; 6 << 20]).unwrap();
        let (clients, body) = three_clients_of_one_gated_entry(&daemon, work.path(), 4 << 20);
        let command = sh(&body);
        for (i, client) in clients.into_iter().enumerate() {
            let out = output_within(client, "a client of the entry that hit a full disk");
            let who = format!("client {i} (backpressure {backpressure})");
            assert_failed_after_output(&out, &who, "No space left on device");
            assert!(!out.stdout.is_empty(), "{who}: had output before the fault");
            assert!(out.stdout.len() < 4 << 20, "{who}: the stream is cut short");
            assert!(
                out.stdout.iter().all(|&b| b == 0),
                "{who}: what came is right"
            );
        }
        assert_eq!(daemon.stat("failures_total"), 1);
        // The failed entry's file was removed when the command failed, before any
        // client heard of it; its blocks come back once the last handle closes.
        let entries = tmpfs.path().join("cache/entries");
        assert!(entries.is_dir(), "{}", entries.display());
        assert_eq!(files_under(&entries), Vec::<std::path::PathBuf>::new());

        // The disk is full to the last byte now. The same request is a miss (the failed
        // entry is never served); its first write fails, so nothing was sent and the
        // client runs the command itself: the caller still gets all of it.
        let rest = tmpfs.fill_blocks("filler-2");
        let out = daemon.exec(true, &command, b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(out.stdout.len(), 4 << 20);
        let err = text(&out.stderr);
        assert!(
            err.contains("No space left on device") && err.contains("running sh directly"),
            "{err}"
        );
        assert_eq!(
            (daemon.stat("misses_total"), daemon.stat("hits_total")),
            (2, 2)
        );

        // Space returns: the next request is served through the cache again, complete.
        std::fs::remove_file(&filler).unwrap();
        std::fs::remove_file(&rest).unwrap();
        for expect_hits in [2, 3] {
            let out = daemon.exec(true, &command, b"");
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert_eq!(out.stdout.len(), 4 << 20);
            assert_eq!(text(&out.stderr), "", "served by the daemon, no fallback");
            assert_eq!(daemon.stat("hits_total"), expect_hits);
        }
        assert_eq!(daemon.stat("misses_total"), 3);
        drop(daemon);
    }
}

/// What goes wrong with the tmpfs before the miss.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// No free blocks: the entry file is created, its first write fails.
    Blocks,
    /// No free inodes: the entry file cannot be created at all.
    Inodes,
    /// Remounted read-only: nothing can be created or written.
    ReadOnly,
}

impl Fill {
    fn apply(self, tmpfs: &Tmpfs) {
        match self {
            Fill::Blocks => drop(tmpfs.fill_blocks("filler")),
            Fill::Inodes => drop(tmpfs.fill_inodes("filler")),
            Fill::ReadOnly => tmpfs.remount("ro"),
        }
    }

    fn undo(self, tmpfs: &Tmpfs) {
        match self {
            Fill::Blocks => std::fs::remove_file(tmpfs.path().join("filler")).unwrap(),
            Fill::Inodes => std::fs::remove_dir_all(tmpfs.path().join("filler")).unwrap(),
            Fill::ReadOnly => tmpfs.remount("rw"),
        }
    }

    fn cause(self) -> &'static str {
        match self {
            Fill::Blocks | Fill::Inodes => "No space left on device",
            Fill::ReadOnly => "Read-only file system",
        }
    }
}

#[test]
fn on_a_full_disk_old_entries_still_hit_new_keys_fail_open_and_space_returning_heals_it() {
    require_root("it mounts a tmpfs");
    for fill in [Fill::Blocks, Fill::Inodes, Fill::ReadOnly] {
        let tmpfs = Tmpfs::mount("size=8m,nr_inodes=512");
        let work = tempfile::tempdir().unwrap();
        // Without the free-space guard, which would run new keys outside the cache
        // instead (`limits::with_the_default_free_space_guard_…`).
        let daemon = Daemon::start_on(
            &work.path().join("s.sock"),
            &tmpfs.path().join("cache"),
            &["--allow", "sh", "--min-free", "0"],
        );
        let old = sh("echo made before the disk filled");
        let out = daemon.exec(false, &old, b"");
        assert_eq!(text(&out.stdout), "made before the disk filled\n");
        fill.apply(&tmpfs);

        // An entry made before still serves, whole.
        let out = daemon.exec(true, &old, b"");
        assert!(out.status.success(), "{fill:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "made before the disk filled\n");
        assert_eq!(text(&out.stderr), "", "{fill:?}: a hit needs no space");
        assert_eq!(daemon.stat("hits_total"), 1, "{fill:?}");

        // A new key cannot be stored: the client runs the command itself.
        let new = sh("echo a new key; echo to stderr >&2; exit 3");
        let out = daemon.exec(true, &new, b"");
        assert_eq!(
            out.status.code(),
            Some(3),
            "{fill:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "a new key\n");
        let err = text(&out.stderr);
        assert!(
            err.contains(fill.cause()) && err.contains("running sh directly"),
            "{fill:?}: {err}"
        );
        assert!(err.ends_with("to stderr\n"), "{fill:?}: {err}");
        // Nor can a stdin too large to keep in memory: the command still gets it all.
        let out = daemon.exec(true, &sh("wc -c"), &vec![b'x'; 2 << 20]);
        assert!(out.status.success(), "{fill:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{}\n", 2 << 20));
        let err = text(&out.stderr);
        assert!(
            err.contains("stdin") && err.contains(fill.cause()),
            "{fill:?}: {err}"
        );

        // Space returns: the daemon stores new keys again, with nobody restarting it.
        fill.undo(&tmpfs);
        let fresh = sh("echo stored once space returned");
        for expect_hits in [1, 2] {
            let out = daemon.exec(true, &fresh, b"");
            assert!(out.status.success(), "{fill:?}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout), "stored once space returned\n");
            assert_eq!(text(&out.stderr), "", "{fill:?}: no fallback");
            assert_eq!(daemon.stat("hits_total"), expect_hits, "{fill:?}");
        }
        // Either way a cache error before any output, not a failed command.
        let failures = match fill {
            // The file was made; its first write failed: the producer failed.
            Fill::Blocks => 1,
            // The file could not be made: the lookup itself failed.
            Fill::Inodes | Fill::ReadOnly => 0,
        };
        assert_eq!(daemon.stat("errors_total"), 1, "{fill:?}");
        assert_eq!(daemon.stat("failures_total"), failures, "{fill:?}");
        assert_eq!(
            daemon.stat("commands_failed_total"),
            0,
            "{fill:?}: the cache failed, not a command"
        );
        assert_eq!(daemon.stat("bad_requests_total"), 1, "{fill:?}: the stdin");
        drop(daemon);
    }
}

#[test]
fn a_daemon_killed_mid_stream_fails_its_clients_clearly_and_a_restart_reclaims_its_files() {
    let work = tempfile::tempdir().unwrap();
    let socket = work.path().join("s.sock");
    let cache = work.path().join("cache");
    let entries = cache.join("entries");
    let mut first = Daemon::start_on(&socket, &cache, &["--allow", "sh"]);
    let w = work.path();
    let (gate1, gate2) = (w.join("gate1"), w.join("gate2"));
    fifo(&gate1);
    fifo(&gate2);
    // A command that has sent 100000 bytes and waits, and one that has sent nothing.
    let streaming = format!(
        "echo $$ > {pid}; head -c 100000 /dev/zero; if [ -p {g} ]; then read go < {g}; fi; echo done",
        pid = w.join("pid1").display(),
        g = gate1.display()
    );
    let silent = format!(
        "echo $$ > {pid}; read go < {g}; echo late",
        pid = w.join("pid2").display(),
        g = gate2.display()
    );
    let mut streamed = spawn_client(first.exec_cmd(false, &sh(&streaming)));
    assert_eq!(read_stdout(&mut streamed, 100_000), vec![0u8; 100_000]);
    let waiting = spawn_client(first.exec_cmd(true, &sh(&silent)));
    let producer1 = pid_in(&w.join("pid1"));
    let producer2 = pid_in(&w.join("pid2"));
    let leftovers = files_under(&entries);
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");

    first.kill();

    // The client that had output cannot hide the cut: it fails and says why.
    let out = output_within(streamed, "the client whose daemon died mid-stream");
    assert_failed_after_output(&out, "streamed client", "daemon");
    assert!(out.stdout.is_empty(), "nothing more after the first read");
    // The commands the daemon ran die with it, also the one blocked and silent.
    for pid in [producer1, producer2] {
        wait_until(&format!("the dead daemon's command {pid} exits"), || {
            !is_running(pid)
        });
    }
    // The client that had nothing yet runs the command itself, and gets all of it.
    std::fs::write(&gate2, b"go\n").unwrap();
    let out = output_within(waiting, "the client that fell back");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "late\n");
    let err = text(&out.stderr);
    assert!(err.contains("running sh directly"), "{err}");

    // A restart on the same socket and directory: the stale socket does not stop it.
    std::fs::remove_file(&gate1).unwrap();
    let second = Daemon::start_on(&socket, &cache, &["--allow", "sh", "--max-age", "1s"]);
    second.wait_for_log(&["replacing a stale socket file"]);
    // The dead daemon's half-written entry is never served: the key is a miss.
    let out = second.exec(true, &sh(&streaming), b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 100_000 + 5);
    assert!(out.stdout.ends_with(b"done\n"));
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        (second.stat("misses_total"), second.stat("hits_total")),
        (1, 0)
    );
    // The walker reclaims what the dead daemon left.
    wait_until("the dead daemon's entry files are swept", || {
        leftovers.iter().all(|f| !f.exists())
    });
}

/// A command that starts a tree and prints the pid of each process in it, one a line:
/// the shell itself, a background job in the shell's process group, and a shell in a
/// session (and process group) of its own, which no signal to the command's group
/// reaches. All of them run until killed.
const TREE: &str = "echo $$; sleep 1000 & echo $!; setsid sh -c 'echo $$; exec sleep 1000' & wait";

/// The pids [`TREE`] prints, each watched for its exit.
fn watch_tree(client: &mut Child) -> Vec<ExitWatch> {
    read_pids(client, 3)
        .into_iter()
        .map(ExitWatch::new)
        .collect()
}

/// Fails unless every watched process exits within `timeout` (all of them together);
/// kills the ones left first, so that a failing test leaves nothing behind.
fn assert_all_exit(tree: &[ExitWatch], timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    let left: Vec<u32> = tree
        .iter()
        .filter(|w| !w.exited_within(deadline.saturating_duration_since(Instant::now())))
        .map(ExitWatch::pid)
        .collect();
    for &pid in &left {
        signal(pid, Signal::KILL);
    }
    assert!(left.is_empty(), "{what}: still running: {left:?}");
}

#[test]
fn no_process_a_command_started_outlives_a_daemon_killed_with_sigkill() {
    let mut daemon = Daemon::start(&["--allow", "sh"]);
    let mut client = spawn_client(daemon.exec_cmd(false, &sh(TREE)));
    let tree = watch_tree(&mut client);
    daemon.kill();
    // Awaited as events, within one bound: the sleeps would run for 1000 s.
    assert_all_exit(&tree, PATIENCE, "after the daemon was killed with SIGKILL");
    let out = output_within(client, "the client whose daemon was killed");
    assert_failed_after_output(&out, "the client", "daemon");
}

#[test]
fn a_command_stopped_at_the_producer_timeout_takes_every_process_it_started() {
    let daemon = Daemon::start(&["--allow", "sh", "--producer-timeout", "5s"]);
    let mut client = spawn_client(daemon.exec_cmd(false, &sh(TREE)));
    let tree = watch_tree(&mut client);
    let out = output_within(client, "the caller of a command stopped at the timeout");
    assert_eq!(out.status.code(), Some(128 + 9), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("producer timeout"),
        "{}",
        text(&out.stderr)
    );
    // The daemon takes the whole tree down, and reaps it, before its callers hear of the
    // timeout: nothing is left to wait for.
    assert_all_exit(
        &tree,
        Duration::ZERO,
        "when the callers heard of the timeout",
    );
    assert_eq!(daemon.stat("children_running"), 0);
}

#[test]
fn a_command_killed_by_a_signal_gives_every_client_128_plus_n_and_is_not_cached() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    let w = daemon.dir.path();
    let hold = w.join("hold");
    std::fs::write(&hold, b"").unwrap();
    let body = format!(
        "echo $$ > {pid}; echo partial; if [ -e {hold} ]; then exec sleep 600; fi; echo whole",
        pid = w.join("pid").display(),
        hold = hold.display()
    );
    let command = sh(&body);
    let mut clients: Vec<Child> = Vec::new();
    for _ in 0..3 {
        let mut client = spawn_client(daemon.exec_cmd(false, &command));
        assert_eq!(read_stdout(&mut client, 8), b"partial\n");
        clients.push(client);
    }
    let producer = pid_in(&w.join("pid"));
    // What the OOM killer would do.
    signal(producer, Signal::KILL);
    for (i, client) in clients.into_iter().enumerate() {
        let out = output_within(client, "a client of the killed command");
        assert_eq!(out.status.code(), Some(128 + 9), "client {i}");
        assert!(out.stdout.is_empty(), "client {i}: nothing after the kill");
    }
    assert_eq!(daemon.stat("hits_total"), 2);
    // Not cached: the next request runs the command again.
    std::fs::remove_file(&hold).unwrap();
    let out = daemon.exec(false, &command, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "partial\nwhole\n");
    assert_eq!(daemon.stat("children_started_total"), 2);
    assert_eq!(daemon.stat("failures_total"), 1);
}

#[test]
fn a_command_that_hangs_is_killed_at_the_producer_timeout_and_its_callers_fail_clearly() {
    let daemon = Daemon::start(&["--allow", "sh", "--producer-timeout", "2s"]);
    let w = daemon.dir.path();
    let cases = [
        // Never writes, never exits.
        ("silent", "exec sleep 600", ""),
        // Closes its output, then never exits.
        ("closed", "exec >&- 2>&-; exec sleep 600", ""),
        // Writes a little, then hangs.
        ("partial", "echo partial; exec sleep 600", "partial\n"),
    ];
    for (name, body, expect_stdout) in cases {
        let pid_file = w.join(format!("pid-{name}"));
        let body = format!("echo $$ > {}; {body}", pid_file.display());
        let command = sh(&body);
        let clients: Vec<Child> = (0..2)
            .map(|_| spawn_client(daemon.exec_cmd(false, &command)))
            .collect();
        let producer = pid_in(&pid_file);
        for (i, client) in clients.into_iter().enumerate() {
            let out = output_within(client, "a caller of a hung command");
            assert_eq!(out.status.code(), Some(128 + 9), "{name} {i}");
            assert_eq!(text(&out.stdout), expect_stdout, "{name} {i}");
            let err = text(&out.stderr);
            assert!(
                err.contains("streamcache:")
                    && err.contains("producer timeout")
                    && err.contains("2s"),
                "{name} {i}: a clear message: {err:?}"
            );
        }
        wait_until(&format!("the hung command ({name}) is gone"), || {
            !is_running(producer)
        });
    }
    assert_eq!(daemon.stat("children_running"), 0);
    // Every command that ran was killed; none was cached.
    assert_eq!(
        daemon.stat("failures_total"),
        daemon.stat("children_started_total")
    );
    assert_eq!(daemon.stat("index_entries"), 0);
}

#[test]
fn a_command_writing_forever_is_killed_once_every_client_has_gone() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    let pid_file = daemon.dir.path().join("pid");
    let body = format!("echo $$ > {}; exec yes streamcache", pid_file.display());
    let command = sh(&body);
    let mut clients: Vec<Child> = Vec::new();
    for _ in 0..3 {
        let mut client = spawn_client(daemon.exec_cmd(false, &command));
        assert_eq!(read_stdout(&mut client, 12), b"streamcache\n");
        clients.push(client);
    }
    let producer = pid_in(&pid_file);
    assert!(is_running(producer));
    for client in &clients {
        signal(client.id(), Signal::KILL);
    }
    for mut client in clients {
        client.wait().unwrap();
    }
    wait_until("the command nobody reads is killed", || {
        !is_running(producer)
    });
    wait_until("the daemon counts no running command", || {
        daemon.stat("children_running") == 0
    });
    assert_eq!(daemon.stat("failures_total"), 1);
}

#[test]
fn a_stopped_client_and_one_that_never_drains_hold_back_nobody_and_free_everything_on_exit() {
    let daemon = Daemon::start(&["--allow", "cat"]);
    let entries = daemon.dir.path().join("cache/entries");
    let pid = daemon.pid();
    daemon.settle();
    let fds_before = fds_besides_entries(pid, &entries);
    let threads_before = lasting_threads(pid);
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = daemon.dir.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    let command = ["cat", file.to_str().unwrap()];

    // The first client starts the command, reads 64 KiB, and is stopped.
    let mut stopped = spawn_client(daemon.exec_cmd(false, &command));
    let head = read_stdout(&mut stopped, 64 << 10);
    signal(stopped.id(), Signal::STOP);
    // The second never reads its stdout at all.
    let stuck = spawn_client(daemon.exec_cmd(false, &command));
    daemon.wait_for_log(&["serving", "status=hit"]);
    // The others get all of it, and the command runs to its end.
    let others: Vec<Child> = (0..3)
        .map(|_| spawn_client(daemon.exec_cmd(false, &command)))
        .collect();
    for (i, client) in others.into_iter().enumerate() {
        let out = output_within(client, "a client next to stuck ones");
        assert!(out.status.success(), "client {i}: {}", text(&out.stderr));
        assert!(out.stdout == data, "client {i}: every byte");
    }
    assert_eq!(daemon.stat("children_running"), 0, "the command finished");
    assert_eq!(daemon.stat("children_started_total"), 1);

    // The stopped client, resumed, still gets every byte.
    signal(stopped.id(), Signal::CONT);
    let rest = output_within(stopped, "the resumed client");
    assert!(rest.status.success(), "{}", text(&rest.stderr));
    assert!(
        [head, rest.stdout].concat() == data,
        "the resumed client's bytes"
    );
    // The one that never read is killed: its connection and handles are freed.
    signal(stuck.id(), Signal::KILL);
    output_within(stuck, "the killed client");
    wait_for_fds(pid, &entries, &fds_before);
    wait_for_threads(pid, &threads_before);
    assert_eq!(daemon.stat("clients_gone_total"), 1);
}
