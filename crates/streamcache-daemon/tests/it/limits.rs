//! Limits: the free-space guard (on by default), the disk budget (`max_disk`), and the
//! command limits (`max_commands`, `max_commands_per_dir`, `max_queue_wait`,
//! `queue_full`), with `streamcache exec` and with real git clone storms on real tmpfs
//! mounts. Mounting needs root: those tests fail without it (CI runs as root).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::support::{
    count_lines, fifo, fsck, output_within, pack_size, refs, require_root, run_with_stdin, script,
    sh, small_repo, spawn_client, text, three_clients_of_one_gated_entry, usage, wait_until,
    Daemon, GitEnv, LockGate, Sampler, Tmpfs, BIN, PATIENCE,
};

/// The default guard on a file system of `size` bytes: 5% of it, in whole pages
/// (rounded up).
fn guard(size: u64) -> u64 {
    ((size as f64 * 0.05) as u64).div_ceil(4096) * 4096
}

/// Lookups so far: hits, misses and bypasses.
fn lookups(daemon: &Daemon) -> u64 {
    daemon.stat("hits_total") + daemon.stat("misses_total") + daemon.stat("bypassed_total")
}

/// Collects the output of every client at once: with an entry short of room, the
/// producer goes at the pace of its slowest reader, so a client whose output nobody
/// reads would hold the others back.
fn outputs(clients: Vec<Child>, what: &str) -> Vec<Output> {
    let threads: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let what = what.to_owned();
            std::thread::spawn(move || output_within(client, &what))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn with_the_default_free_space_guard_a_disk_short_of_room_serves_every_client_whole_and_a_full_one_is_bypassed(
) {
    require_root("it mounts a tmpfs");
    let tmpfs = Tmpfs::mount("size=8m");
    let work = tempfile::tempdir().unwrap();
    // No limit given: the guard keeps 5% of the file system free.
    let daemon = Daemon::start_on(
        &work.path().join("s.sock"),
        &tmpfs.path().join("cache"),
        &["--allow", "sh"],
    );
    daemon.wait_for_log(&["free-space guard", "(5% of the file system)"]);
    let min_free = daemon.stat("disk_min_free_bytes");
    assert_eq!(min_free, guard(8 << 20));
    // Something else takes 6 of the 8 MiB; the command writes 4 MiB.
    std::fs::write(tmpfs.path().join("filler"), vec![0u8; 6 << 20]).unwrap();
    let sampler = Sampler::start(tmpfs.path());
    let (clients, body) = three_clients_of_one_gated_entry(&daemon, work.path(), 4 << 20);
    let command = sh(&body);
    for (i, out) in outputs(clients, "a client of an entry short of room")
        .into_iter()
        .enumerate()
    {
        assert!(
            out.status.success(),
            "client {i}: {} {}",
            out.status,
            text(&out.stderr)
        );
        assert_eq!(out.stdout.len(), 4 << 20, "client {i}");
        assert!(out.stdout.iter().all(|&b| b == 0), "client {i}");
        assert_eq!(text(&out.stderr), "", "client {i}: no fallback");
    }
    // The entry could not hold 4 MiB in the 2 MiB left: it turned transient and
    // streamed through the room it had, releasing what all three had read.
    daemon.wait_for_log(&["outgrew its room, now transient"]);
    let seen = sampler.stop();
    assert!(
        seen.min_free >= min_free,
        "the guard held: {seen:?}, min_free {min_free}"
    );
    eprintln!("guard {min_free} B; least free seen {} B", seen.min_free);
    assert_eq!(
        (daemon.stat("misses_total"), daemon.stat("hits_total")),
        (1, 2)
    );
    assert_eq!(daemon.stat("failures_total"), 0);
    assert_eq!(daemon.stat("transient_entries"), 0, "it has finished");
    assert_eq!(daemon.stat("room_bypasses_total"), 0);

    // The disk is full now. The same request (its transient entry is gone) finds no
    // room and runs outside the cache, streamed by the daemon: no fallback, no error.
    tmpfs.fill_blocks("filler-2");
    let out = daemon.exec(true, &command, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 4 << 20);
    assert_eq!(text(&out.stderr), "", "served by the daemon, no fallback");
    assert_eq!(daemon.stat("room_bypasses_total"), 1);
    assert_eq!(daemon.stat("bypassed_total"), 1);
    assert_eq!(daemon.stat("errors_total"), 0);
    let table = daemon.stats_table();
    assert!(
        table.contains("0 transient entries now, 1 bypasses for room"),
        "{table}"
    );
}

// ---- Clone storms with the real git.

/// What one writer writes into the FIFO at `path`; a failure after [`PATIENCE`] rather
/// than a hang if nobody does.
fn read_fifo(path: &Path) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut text = String::new();
        let read = std::fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut text));
        let _ = tx.send(read.map(|_| text));
    });
    rx.recv_timeout(PATIENCE)
        .expect("nobody wrote into the FIFO")
        .unwrap()
}

/// A clone of `src` into `dst` through upload-pack (`--no-local`).
fn clone_cmd(env: &GitEnv, src: &Path, dst: &Path) -> Command {
    let mut cmd = env.git(["clone", "-q", "--bare", "--no-local"]);
    cmd.arg(format!("file://{}", src.display()))
        .arg(dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Starts a clone of each source at once (a source named twice is cloned twice), into
/// `into/<tag>-<i>.git`.
fn start_storm(env: &GitEnv, sources: &[&Path], into: &Path, tag: &str) -> Vec<(Child, PathBuf)> {
    sources
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let dst = into.join(format!("{tag}-{i}.git"));
            (clone_cmd(env, src, &dst).spawn().unwrap(), dst)
        })
        .collect()
}

/// Waits for every clone, which must succeed and match its source, `git fsck` and all.
fn finish_storm(env: &GitEnv, clones: Vec<(Child, PathBuf)>, sources: &[&Path]) {
    for ((child, dst), src) in clones.into_iter().zip(sources) {
        let out = output_within(child, &format!("clone into {}", dst.display()));
        assert!(
            out.status.success(),
            "clone into {} failed: {}\n{}",
            dst.display(),
            out.status,
            text(&out.stderr)
        );
        fsck(env, &dst);
        assert_eq!(refs(env, &dst), refs(env, src), "{}", dst.display());
    }
}

/// A wrapper the hook runs in place of `git pack-objects`: it counts its runs, then
/// becomes the command.
fn counting_wrapper(dir: &Path) -> (PathBuf, PathBuf) {
    let wrapper = dir.join("count-pack-objects");
    let runs = dir.join("pack-objects-runs");
    script(
        &wrapper,
        &format!("echo run >> {}\nexec \"$@\"", runs.display()),
    );
    (wrapper, runs)
}

/// The size of the file system at `path`.
fn fs_size(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_blocks * st.f_frsize
}

#[test]
fn clone_storms_on_a_tmpfs_a_quarter_of_a_pack_all_succeed_under_the_default_guard_even_95_percent_full(
) {
    require_root("it mounts a tmpfs");
    let work = tempfile::tempdir().unwrap();
    let plain = GitEnv::new(None);
    let repo = work.path().join("repo.git");
    small_repo(&plain, &repo, 0x11da, 4);
    let pack = pack_size(&plain, &repo);
    let tmpfs = Tmpfs::mount(&format!("size={}k", pack / 4 / 1024));
    let size = fs_size(tmpfs.path());
    let (wrapper, runs) = counting_wrapper(work.path());
    // The defaults: no budget, the guard at 5%.
    let daemon = Daemon::start_on(
        &work.path().join("s.sock"),
        &tmpfs.path().join("cache"),
        &["--allow", wrapper.to_str().unwrap()],
    );
    let min_free = daemon.stat("disk_min_free_bytes");
    assert_eq!(min_free, guard(size));
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, true, Some(&wrapper))));
    let sources = [repo.as_path(); 8];
    for storm in ["first", "next"] {
        let sampler = Sampler::start(tmpfs.path());
        let clones = start_storm(&env, &sources, work.path(), storm);
        finish_storm(&env, clones, &sources);
        let seen = sampler.stop();
        assert!(
            seen.min_free >= min_free,
            "{storm} storm: the guard held: {seen:?}, min_free {min_free}"
        );
        eprintln!(
            "{storm} 8 clones: pack {pack} B on a {size} B tmpfs, guard {min_free} B, least free {} B ({} samples); pack-objects runs so far {}, transient so far {}",
            seen.min_free,
            seen.samples,
            count_lines(&runs),
            daemon.log().matches("now transient").count()
        );
    }
    assert_eq!(daemon.stat("failures_total"), 0);
    // The test fills the tmpfs to 95%, then the same storm: no room for any entry,
    // so every clone's pack-objects runs outside the cache, streamed by the daemon.
    let (used, _) = usage(tmpfs.path());
    let fill = (size * 95 / 100).div_ceil(4096) * 4096 - used;
    std::fs::write(tmpfs.path().join("filler"), vec![0xa5u8; fill as usize]).unwrap();
    let (_, free) = usage(tmpfs.path());
    assert!(free <= min_free, "{free} free, guard {min_free}");
    let (misses, bypasses) = (
        daemon.stat("misses_total"),
        daemon.stat("room_bypasses_total"),
    );
    let sampler = Sampler::start(tmpfs.path());
    let clones = start_storm(&env, &sources, work.path(), "full");
    finish_storm(&env, clones, &sources);
    let seen = sampler.stop();
    assert_eq!(seen.min_free, free, "nothing was written: {seen:?}");
    assert_eq!(daemon.stat("misses_total"), misses);
    assert_eq!(daemon.stat("room_bypasses_total"), bypasses + 8);
    assert_eq!(daemon.stat("failures_total"), 0);
    assert_eq!(daemon.stat("errors_total"), 0);
    eprintln!(
        "95% full: {free} B free, 8 bypasses for room; pack-objects runs in all {}",
        count_lines(&runs)
    );
}

#[test]
fn clone_storms_of_two_repositories_on_a_tmpfs_smaller_than_two_packs_keep_to_the_budget_and_bypass(
) {
    require_root("it mounts a tmpfs");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let plain = GitEnv::new(None);
    let (a, b) = (w.join("a.git"), w.join("b.git"));
    small_repo(&plain, &a, 0x11da, 4);
    small_repo(&plain, &b, 0x11db, 4);
    let pack = pack_size(&plain, &a).min(pack_size(&plain, &b));
    let tmpfs = Tmpfs::mount(&format!("size={}k", pack * 3 / 2 / 1024));
    // Three quarters of a pack, in whole chunks (an eighth of the budget each, in
    // whole pages), so that an entry that fills the budget holds all of it.
    let budget = pack * 3 / 4 / (8 * 4096) * (8 * 4096);
    // A's first pack-objects sends this much, more than the budget and a pipe's worth,
    // then waits at `pack-gate`: by then its entry cannot have held it all.
    let head = budget + (512 << 10);
    assert!(head + (256 << 10) < pack, "pack {pack}, head {head}");
    let runs = w.join("pack-objects-runs");
    let a_real = std::fs::canonicalize(&a).unwrap();
    let b_real = std::fs::canonicalize(&b).unwrap();
    let (at_gate, pack_gate, hook_gate) =
        (w.join("at-gate"), w.join("pack-gate"), w.join("hook-gate"));
    fifo(&at_gate);
    let mut pack_gate = LockGate::closed(&pack_gate);
    let mut hook_gate = LockGate::closed(&hook_gate);
    let wrapper = w.join("pack-objects");
    script(
        &wrapper,
        &format!(
            "echo run >> {runs}\n\
             if [ \"$(pwd -P)\" = {a} ] && mkdir {w}/a-first 2>/dev/null; then\n\
               \"$@\" > {w}/a-pack || exit $?\n\
               head -c {head} {w}/a-pack\n\
               echo waiting > {at_gate}\n\
               flock -s {pack_gate} true\n\
               exec tail -c +{rest} {w}/a-pack\n\
             fi\n\
             exec \"$@\"",
            runs = runs.display(),
            a = a_real.display(),
            w = w.display(),
            at_gate = at_gate.display(),
            pack_gate = pack_gate.path.display(),
            rest = head + 1,
        ),
    );
    let daemon = Daemon::start_on(
        &w.join("s.sock"),
        &tmpfs.path().join("cache"),
        &[
            "--allow",
            wrapper.to_str().unwrap(),
            "--max-disk",
            &budget.to_string(),
        ],
    );
    assert_eq!(daemon.stat("disk_budget_bytes"), budget);
    // B's hooks wait at `hook-gate` before they ask the daemon.
    let hook = w.join("hook");
    script(
        &hook,
        &format!(
            "if [ \"$(pwd -P)\" = {b} ]; then flock -s {gate} true; fi\n\
             exec {BIN} exec --socket {socket} -- {wrapper} \"$@\"",
            b = b_real.display(),
            gate = hook_gate.path.display(),
            socket = daemon.socket.display(),
            wrapper = wrapper.display(),
        ),
    );
    let env = GitEnv::new(Some(hook.to_str().unwrap()));
    let sources: Vec<&Path> = (0..16)
        .map(|i| if i % 2 == 0 { &*a } else { &*b })
        .collect();
    let sampler = Sampler::start(tmpfs.path());
    let clones = start_storm(&env, &sources, w, "storm");
    // A's entry outgrew the budget and turned transient: it holds all of the budget
    // while its pack-objects waits.
    assert_eq!(read_fifo(&at_gate), "waiting\n");
    assert_eq!(daemon.stat("transient_entries"), 1);
    // Now B's clones ask: no room for an entry of theirs, so they bypass the cache.
    hook_gate.open();
    wait_until("all 16 clones have asked the daemon", || {
        lookups(&daemon) == 16
    });
    pack_gate.open();
    finish_storm(&env, clones, &sources);
    let seen = sampler.stop();
    assert!(
        seen.max_used <= budget,
        "the budget held: {seen:?}, budget {budget}"
    );
    let (misses, hits, bypassed, room) = (
        daemon.stat("misses_total"),
        daemon.stat("hits_total"),
        daemon.stat("bypassed_total"),
        daemon.stat("room_bypasses_total"),
    );
    assert_eq!(misses, 1, "A's entry; B never got one");
    assert_eq!(room, bypassed, "every bypass was for room");
    assert!(
        room >= 8,
        "B's 8 clones bypassed, and A's late ones: {room}"
    );
    assert_eq!(hits + misses + bypassed, 16);
    assert_eq!(daemon.stat("failures_total"), 0);
    assert_eq!(daemon.stat("errors_total"), 0);
    let table = daemon.stats_table();
    assert!(
        table.contains(&format!("{room} bypasses for room")),
        "{table}"
    );
    eprintln!(
        "two repositories: pack {pack} B, tmpfs {} B, budget {budget} B, most used {} B ({} samples); hits {hits}, misses {misses}, bypasses for room {room}; pack-objects runs {}",
        fs_size(tmpfs.path()),
        seen.max_used,
        seen.samples,
        count_lines(&runs)
    );
}

#[test]
fn with_max_commands_one_clones_of_four_repositories_run_one_pack_objects_at_a_time() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let plain = GitEnv::new(None);
    let repos: Vec<PathBuf> = (0..4u64)
        .map(|i| {
            let repo = w.join(format!("repo-{i}.git"));
            small_repo(&plain, &repo, 0x11dc0 + i, 2);
            repo
        })
        .collect();
    let intervals = w.join("intervals");
    let mut gate = LockGate::closed(&w.join("gate"));
    // Records when each pack-objects starts and ends; the first waits at the gate.
    let wrapper = w.join("pack-objects");
    script(
        &wrapper,
        &format!(
            "start=$(date +%s%N)\n\
             if mkdir {w}/first 2>/dev/null; then flock -s {gate} true; fi\n\
             \"$@\"\n\
             rc=$?\n\
             echo \"$start $(date +%s%N)\" >> {intervals}\n\
             exit $rc",
            w = w.display(),
            gate = gate.path.display(),
            intervals = intervals.display(),
        ),
    );
    let daemon = Daemon::start(&[
        "--allow",
        wrapper.to_str().unwrap(),
        "--max-commands",
        "1",
        "--max-queue-wait",
        "10m",
    ]);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, true, Some(&wrapper))));
    let sources: Vec<&Path> = (0..8).map(|i| repos[i % 4].as_path()).collect();
    let clones = start_storm(&env, &sources, w, "clone");
    // Four requests, one per repository: one runs (held at the gate), three wait.
    wait_until("four pack-objects running or waiting", || {
        daemon.stat("children_running") + daemon.stat("queue_length") == 4
    });
    assert_eq!(
        (daemon.stat("children_running"), daemon.stat("queue_length")),
        (1, 3)
    );
    gate.open();
    finish_storm(&env, clones, &sources);
    let text = std::fs::read_to_string(&intervals).unwrap();
    let mut spans: Vec<(u128, u128)> = text
        .lines()
        .map(|l| {
            let (start, end) = l.split_once(' ').unwrap();
            (start.parse().unwrap(), end.parse().unwrap())
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 4, "one pack-objects per repository: {text}");
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two pack-objects ran at once: {pair:?}"
        );
    }
    assert_eq!(
        (daemon.stat("misses_total"), daemon.stat("hits_total")),
        (4, 4)
    );
    assert_eq!(daemon.stat("queue_waits_total"), 3);
    assert_eq!(daemon.stat("queue_timeouts_total"), 0);
    assert_eq!(daemon.stat("busy_total"), 0);
    eprintln!("max_commands 1: pack-objects spans (ns) {spans:?}");
}

// ---- Command limits with `streamcache exec`.

/// `streamcache exec` in `dir`.
fn exec_in(daemon: &Daemon, dir: &Path, command: &[&str]) -> Command {
    let mut cmd = daemon.exec_cmd(true, command);
    cmd.current_dir(dir);
    cmd
}

#[test]
fn max_commands_per_dir_holds_back_only_its_own_directory_and_hits_never_wait() {
    let work = tempfile::tempdir().unwrap();
    let (x, y) = (work.path().join("x"), work.path().join("y"));
    std::fs::create_dir(&x).unwrap();
    std::fs::create_dir(&y).unwrap();
    let gate = work.path().join("gate");
    fifo(&gate);
    let daemon = Daemon::start(&[
        "--allow",
        "sh",
        "--max-commands-per-dir",
        "1",
        "--max-queue-wait",
        "10m",
    ]);
    let out = run_with_stdin(exec_in(&daemon, &x, &sh("echo cached")), b"");
    assert_eq!(text(&out.stdout), "cached\n");
    // X's one slot: taken by a command that waits at the gate.
    let one = format!("read go < {}; echo one", gate.display());
    let first = spawn_client(exec_in(&daemon, &x, &sh(&one)));
    wait_until("X's command runs", || daemon.stat("children_running") == 1);
    // Another command in X waits in line.
    let second = spawn_client(exec_in(&daemon, &x, &sh("echo two")));
    wait_until("X's second command waits", || {
        daemon.stat("queue_length") == 1
    });
    // A command in Y runs at once, and a hit in X is served at once.
    let out = run_with_stdin(exec_in(&daemon, &y, &sh("echo three")), b"");
    assert_eq!(
        (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
        ("three\n", "")
    );
    let out = run_with_stdin(exec_in(&daemon, &x, &sh("echo cached")), b"");
    assert_eq!(
        (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
        ("cached\n", "")
    );
    assert_eq!(daemon.stat("hits_total"), 1);
    assert_eq!(
        (daemon.stat("queue_length"), daemon.stat("children_running")),
        (1, 1),
        "X's commands are where they were"
    );
    std::fs::write(&gate, b"go\n").unwrap();
    for (client, expected) in [(first, "one\n"), (second, "two\n")] {
        let out = output_within(client, expected);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
            (expected, "")
        );
    }
    assert_eq!(daemon.stat("queue_waits_total"), 1);
    assert_eq!(daemon.stat("queue_timeouts_total"), 0);
    assert_eq!(daemon.stat("children_started_total"), 4);
}

#[test]
fn a_miss_without_a_slot_in_time_is_answered_busy_and_runs_in_the_client_or_is_refused() {
    for refuse in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let gate = work.path().join("gate");
        fifo(&gate);
        let mut args = vec![
            "--allow",
            "sh",
            "--max-commands",
            "1",
            "--max-queue-wait",
            "100ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        if refuse {
            args.extend(["--queue-full", "refuse"]);
        }
        let daemon = Daemon::start(&args);
        let one = format!("read go < {}; echo one", gate.display());
        let first = spawn_client(daemon.exec_cmd(false, &sh(&one)));
        wait_until("the first command runs", || {
            daemon.stat("children_running") == 1
        });
        let marker = work.path().join("ran");
        let two = format!("touch {}; echo two", marker.display());
        let out = daemon.exec(true, &sh(&two), b"");
        let err = text(&out.stderr);
        let why = "busy: no command slot within max_queue_wait (100ms): all 1 command slots taken (max_commands 1)";
        if refuse {
            assert_eq!(out.status.code(), Some(75), "{err}");
            assert_eq!(text(&out.stdout), "");
            assert_eq!(err, format!("streamcache: refused to run sh: {why}\n"));
            assert!(!marker.exists(), "the command never ran");
        } else {
            assert!(out.status.success(), "{err}");
            assert_eq!(text(&out.stdout), "two\n");
            assert!(
                err.contains(&format!("daemon {why}; running sh directly")),
                "{err}"
            );
            assert!(marker.exists(), "the client ran the command");
        }
        assert_eq!(daemon.stat("busy_total"), 1, "refuse {refuse}");
        assert_eq!(daemon.stat("queue_timeouts_total"), 1);
        assert_eq!(daemon.stat("queue_waits_total"), 1);
        // Neither a cache error nor a failed command: no command ran for it.
        assert_eq!(daemon.stat("errors_total"), 0);
        assert_eq!(daemon.stat("commands_failed_total"), 0);
        assert_eq!(daemon.stat("children_started_total"), 1);
        let page = {
            let mut conn = std::net::TcpStream::connect(daemon.metrics_addr()).unwrap();
            write!(conn, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut page = String::new();
            conn.read_to_string(&mut page).unwrap();
            page
        };
        for line in [
            "# TYPE streamcache_queue_length gauge",
            "streamcache_queue_length 0",
            "streamcache_queue_waits_total 1",
            "streamcache_queue_timeouts_total 1",
            "# TYPE streamcache_queue_wait_seconds_total counter",
            "streamcache_busy_total 1",
            "# TYPE streamcache_disk_free_bytes gauge",
            "# TYPE streamcache_disk_min_free_bytes gauge",
            "streamcache_transient_entries 0",
            "streamcache_room_bypasses_total 0",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "{line:?} missing from:\n{page}"
            );
        }
        std::fs::write(&gate, b"go\n").unwrap();
        let out = output_within(first, "the first client");
        assert_eq!(text(&out.stdout), "one\n");
        // The slot is free again: the same request is served by the daemon now (the
        // busy entry was not kept).
        std::fs::remove_file(&marker).ok();
        let out = daemon.exec(true, &sh(&two), b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
            ("two\n", "")
        );
        assert_eq!(daemon.stat("children_started_total"), 2);
    }
}
