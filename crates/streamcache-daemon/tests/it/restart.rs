//! Restarts: a daemon started again on its directory serves the entries it had
//! (durable entries, checked against their digests), and a restart the documented way
//! (SIGHUP, or `serve --replace`) breaks no clone in flight.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::git::{clone_cmd, clone_storm, counting_wrapper, finish, gated_wrapper};
use crate::support::{
    count_lines, fixture, fsck, refs, script, signal, wait_until, Daemon, GitEnv,
};

/// The committed entry files under a daemon's cache directory, largest first.
fn committed(cache_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(dirs) = fs::read_dir(cache_dir.join("entries/committed")) {
        for dir in dirs {
            for file in fs::read_dir(dir.unwrap().path()).unwrap() {
                files.push(file.unwrap().path());
            }
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(fs::metadata(f).unwrap().len()));
    files
}

/// Rewrites `path` (an owner-read-only entry file) with `change` applied.
fn damage(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap();
    change(&mut bytes);
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(path, &bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o400)).unwrap();
}

/// Every clone passes `git fsck`; a full clone also has every ref of the source.
fn check_clones(env: &GitEnv, clones: &[PathBuf], full: bool) {
    let expected = refs(env, &fixture().repo);
    for dst in clones {
        fsck(env, dst);
        if full {
            assert_eq!(refs(env, dst), expected, "{}", dst.display());
        }
    }
}

#[test]
fn a_daemon_restarted_after_sigterm_or_sigkill_serves_what_it_had_and_never_damaged_files() {
    let work = tempfile::tempdir().unwrap();
    let (wrapper, runs) = counting_wrapper(work.path());
    let socket = work.path().join("s.sock");
    let cache_dir = work.path().join("cache");
    let args = ["--allow", wrapper.to_str().unwrap()];
    let mut daemon = Daemon::start_on(&socket, &cache_dir, &args);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, true, Some(&wrapper))));
    let round = |name: &str, extra: &[&str], n: usize| {
        let into = work.path().join(name);
        fs::create_dir(&into).unwrap();
        let clones = clone_storm(&env, extra, n, &into);
        check_clones(&env, &clones, !extra.contains(&"--depth"));
    };
    // Warm: 8 full clones and one of depth 1, two entries.
    round("warm", &["--bare", "--no-local"], 8);
    round("warm-shallow", &["--bare", "--depth", "1"], 1);
    assert_eq!(count_lines(&runs), 2);
    // Commits run after the clones got their last byte.
    wait_until("both entries are committed", || {
        daemon.stat("committed_entries_total") == 2
    });

    // SIGTERM, then the same directory again: no pack-objects at all.
    daemon.stop();
    let daemon = Daemon::start_on(&socket, &cache_dir, &args);
    round("after-sigterm", &["--bare", "--no-local"], 8);
    assert_eq!(
        count_lines(&runs),
        2,
        "pack-objects ran after the SIGTERM restart"
    );
    assert_eq!(daemon.stat("hits_total"), 8);
    // The full clone's entry was adopted in the background or found by its first
    // lookup, once; the shallow one is adopted in the background, if it got there.
    let (adopted, shared) = (
        daemon.stat("adopted_entries_total"),
        daemon.stat("shared_hits_total"),
    );
    assert!(
        shared <= 1 && adopted + shared >= 1,
        "adopted {adopted}, shared {shared}"
    );

    // SIGKILL, then again.
    let mut daemon = daemon;
    daemon.kill();
    let mut daemon = Daemon::start_on(&socket, &cache_dir, &args);
    round("after-sigkill", &["--bare", "--no-local"], 8);
    assert_eq!(
        count_lines(&runs),
        2,
        "pack-objects ran after the SIGKILL restart"
    );
    assert_eq!(daemon.stat("hits_total"), 8);
    assert_eq!(daemon.stat("verification_failures_total"), 0);

    // Damage both entries while no daemon runs: a byte flipped in the full pack, the
    // shallow one cut in half. Their keys are misses; the clones get fresh packs.
    daemon.stop();
    let files = committed(&cache_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    damage(&files[0], |b| {
        let middle = b.len() / 2;
        b[middle] ^= 0x01;
    });
    damage(&files[1], |b| b.truncate(b.len() / 2));
    let daemon = Daemon::start_on(&socket, &cache_dir, &args);
    round("after-damage", &["--bare", "--no-local"], 1);
    round("after-damage-shallow", &["--bare", "--depth", "1"], 1);
    assert_eq!(
        count_lines(&runs),
        4,
        "both damaged keys ran pack-objects again"
    );
    assert_eq!(daemon.stat("verification_failures_total"), 2);
    assert_eq!(
        daemon.stat("hits_total"),
        0,
        "nothing of the damaged files was served"
    );
    assert_eq!(daemon.stat("misses_total"), 2);
}

/// The pid in a `successor=PID` log field.
fn successor_pid(log: &str) -> u32 {
    log.lines()
        .filter(|l| l.contains("started a successor"))
        .find_map(|l| {
            l.split("successor=")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|pid| pid.parse().ok())
        })
        .unwrap_or_else(|| panic!("no successor pid in the log:\n{log}"))
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_restart_during_a_storm_breaks_no_clone_and_the_successor_serves_the_entry() {
    let work = tempfile::tempdir().unwrap();
    let gate = gated_wrapper(work.path());
    let socket = work.path().join("s.sock");
    let cache_dir = work.path().join("cache");
    let mut daemon = Daemon::start_on(
        &socket,
        &cache_dir,
        &["--allow", gate.wrapper.to_str().unwrap(), "--grace", "10m"],
    );
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, true, Some(&gate.wrapper))));
    let src = &fixture().repo;
    let storm = work.path().join("storm");
    fs::create_dir(&storm).unwrap();
    let clones: Vec<PathBuf> = (0..8)
        .map(|i| storm.join(format!("clone-{i}.git")))
        .collect();
    let children: Vec<_> = clones
        .iter()
        .map(|dst| {
            clone_cmd(&env, &["--bare", "--no-local"], src, dst)
                .spawn()
                .unwrap()
        })
        .collect();
    // pack-objects streams and waits at the gate; all 8 clones are attached to it.
    gate.wait_until_streaming();
    wait_until("all 8 clones are attached to the entry", || {
        daemon.stat("misses_total") + daemon.stat("hits_total") == 8
    });
    // The documented restart: SIGHUP. The successor takes the socket over and tells
    // this daemon to finish its streams and exit.
    signal(daemon.pid(), rustix::process::Signal::HUP);
    daemon.wait_for_log(&["took the socket over"]);
    daemon.wait_for_log(&["no longer accepting"]);
    let successor = successor_pid(&daemon.log());
    // From here on a pack-objects run must not wait at the gate: count it and go on.
    script(
        &gate.wrapper,
        &format!("echo run >> {}\nexec \"$@\"", gate.count.display()),
    );
    gate.open();
    for (i, child) in children.into_iter().enumerate() {
        finish(child, &format!("clone {i} in flight during the restart"));
    }
    check_clones(&env, &clones, true);
    let status = daemon.stop_waiting();
    assert!(status.success(), "the old daemon exited cleanly: {status}");
    // (Its log stays open: the successor writes to the same stderr.)
    daemon.wait_for_log(&["stopped"]);
    let log = daemon.log();
    assert!(!log.contains("request cut"), "no request was cut:\n{log}");
    // The successor's look at the old daemon was a stats request, not a bad request.
    assert!(!log.contains("bad request"), "{log}");

    // New clones reach the successor, which serves the entry the old daemon made.
    let after = work.path().join("after");
    fs::create_dir(&after).unwrap();
    let clones = clone_storm(&env, &["--bare", "--no-local"], 8, &after);
    check_clones(&env, &clones, true);
    assert_eq!(count_lines(&gate.count), 1, "pack-objects ran once in all");
    let stats = |name: &str| daemon.stat(name);
    assert_eq!(stats("children_started_total"), 0);
    assert_eq!(stats("hits_total"), 8);
    assert_eq!(
        stats("shared_hits_total") + stats("adopted_entries_total"),
        1,
        "the old daemon's entry, found on disk"
    );
    signal(successor, rustix::process::Signal::TERM);
    wait_until("the successor exits", || gone(successor));
}
