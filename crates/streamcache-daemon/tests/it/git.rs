//! End to end with the real git: `uploadpack.packObjectsHook` pointing at
//! `streamcache exec`, a daemon on a temporary socket, and the generated repository of
//! more than 20 MB.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::{
    count_lines, fixture, fsck, refs, script, text, Daemon, GitEnv, BIN, BLOBS, BLOB_SIZE,
};

/// A wrapper the hook puts in front of `git pack-objects`: it counts its runs, then
/// becomes the command (`git pack-objects …`, found on upload-pack's `PATH`).
pub(crate) fn counting_wrapper(dir: &Path) -> (PathBuf, PathBuf) {
    let wrapper = dir.join("count-pack-objects");
    let count = dir.join("pack-objects-runs");
    script(
        &wrapper,
        &format!("echo run >> {}\nexec \"$@\"", count.display()),
    );
    (wrapper, count)
}

/// A wrapper that counts its runs, sends the first 64 KiB of the pack, then waits for
/// a line on the `gate` FIFO before it sends the rest. Before waiting it writes a line
/// into the `at-gate` FIFO, so the test knows pack-objects has started streaming.
pub(crate) fn gated_wrapper(dir: &Path) -> Gate {
    let wrapper = dir.join("gated-pack-objects");
    let count = dir.join("pack-objects-runs");
    let gate = dir.join("gate");
    let at_gate = dir.join("at-gate");
    let pack = dir.join("pack");
    crate::support::fifo(&gate);
    crate::support::fifo(&at_gate);
    script(
        &wrapper,
        &format!(
            "echo run >> {count}\n\"$@\" > {pack} || exit $?\nhead -c 65536 {pack}\necho waiting > {at_gate}\nread line < {gate}\ntail -c +65537 {pack}",
            count = count.display(),
            pack = pack.display(),
            at_gate = at_gate.display(),
            gate = gate.display(),
        ),
    );
    Gate {
        wrapper,
        count,
        gate,
        at_gate,
    }
}

pub(crate) struct Gate {
    pub(crate) wrapper: PathBuf,
    pub(crate) count: PathBuf,
    gate: PathBuf,
    at_gate: PathBuf,
}

impl Gate {
    /// Blocks until the wrapper has sent its first 64 KiB and waits at the gate.
    pub(crate) fn wait_until_streaming(&self) {
        let line = std::fs::read_to_string(&self.at_gate).unwrap();
        assert_eq!(line, "waiting\n");
    }

    pub(crate) fn open(&self) {
        std::fs::write(&self.gate, b"go\n").unwrap();
    }
}

pub(crate) fn clone_cmd(env: &GitEnv, extra: &[&str], src: &Path, dst: &Path) -> Command {
    let url = format!("file://{}", src.display());
    let mut cmd = env.git(["clone", "-q"]);
    cmd.args(extra)
        .arg(url)
        .arg(dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

pub(crate) fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        text(&out.stderr)
    );
}

/// Starts `n` clones at once and waits for all of them.
pub(crate) fn clone_storm(env: &GitEnv, extra: &[&str], n: usize, into: &Path) -> Vec<PathBuf> {
    let src = &fixture().repo;
    let dsts: Vec<PathBuf> = (0..n)
        .map(|i| into.join(format!("clone-{i}.git")))
        .collect();
    let children: Vec<Child> = dsts
        .iter()
        .map(|dst| clone_cmd(env, extra, src, dst).spawn().unwrap())
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        finish(child, &format!("clone {i}"));
    }
    dsts
}

#[test]
fn the_fixture_has_more_than_20_mb_of_history() {
    let env = GitEnv::new(None);
    let repo = &fixture().repo;
    let size = env.run([
        OsStr::new("-C"),
        repo.as_os_str(),
        OsStr::new("count-objects"),
        OsStr::new("-v"),
    ]);
    let kib: u64 = size
        .lines()
        .find_map(|l| l.strip_prefix("size-pack: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(kib * 1024 >= 20_000_000, "{size}");
    const { assert!(BLOBS * BLOB_SIZE >= 20_000_000) };
}

#[test]
fn eight_concurrent_full_clones_run_pack_objects_once() {
    let work = tempfile::tempdir().unwrap();
    let (wrapper, wrapper_count) = counting_wrapper(work.path());
    let daemon = Daemon::start(&["--allow", wrapper.to_str().unwrap()]);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, true, Some(&wrapper))));
    let clones = clone_storm(&env, &["--bare", "--no-local"], 8, work.path());
    let expected = refs(&env, &fixture().repo);
    assert!(expected.contains("refs/heads/side") && expected.contains("refs/tags/v1"));
    for dst in &clones {
        fsck(&env, dst);
        assert_eq!(refs(&env, dst), expected, "{}", dst.display());
    }
    assert_eq!(count_lines(&wrapper_count), 1, "pack-objects runs");
    assert_eq!(daemon.stat("misses_total"), 1);
    assert_eq!(daemon.stat("hits_total"), 7);
    assert_eq!(daemon.stat("children_started_total"), 1);
    assert_eq!(daemon.stat("failures_total"), 0);
    // Every client got the whole entry, the size of a 20 MB pack and more.
    let generated = daemon.stat("generated_bytes_total");
    assert!(generated >= 20_000_000, "{generated}");
    assert_eq!(daemon.stat("served_bytes_total"), 8 * generated);
}

#[test]
fn eight_concurrent_depth_one_clones_share_one_pack_objects() {
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&[]);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, false, None)));
    let clones = clone_storm(&env, &["--bare", "--depth", "1"], 8, work.path());
    let tip = env.run([
        OsStr::new("-C"),
        fixture().repo.as_os_str(),
        OsStr::new("rev-parse"),
        OsStr::new("refs/heads/main"),
    ]);
    for dst in &clones {
        fsck(&env, dst);
        let got = env.run([
            OsStr::new("-C"),
            dst.as_os_str(),
            OsStr::new("rev-parse"),
            OsStr::new("HEAD"),
        ]);
        assert_eq!(got, tip);
        assert!(
            dst.join("shallow").exists(),
            "{} is not shallow",
            dst.display()
        );
    }
    assert_eq!(daemon.stat("misses_total"), 1);
    assert_eq!(daemon.stat("hits_total"), 7);
    assert_eq!(daemon.stat("children_started_total"), 1);
}

#[test]
fn a_partial_clone_and_its_lazy_fetch_go_through_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&[]);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, false, None)));
    let dst = work.path().join("partial");
    // A checkout of `side` needs only its blobs: the clone, then one lazy fetch.
    let child = clone_cmd(
        &env,
        &["--filter=blob:none", "--branch", "side"],
        &fixture().repo,
        &dst,
    )
    .spawn()
    .unwrap();
    finish(child, "partial clone");
    fsck(&env, &dst);
    let side = std::fs::read_to_string(dst.join("side.txt")).unwrap();
    assert_eq!(side, "side 2\n");
    let blob = std::fs::read(dst.join("blobs/random-000.bin")).unwrap();
    assert_eq!(blob.len(), BLOB_SIZE);
    let promisor = env.run([
        OsStr::new("-C"),
        dst.as_os_str(),
        OsStr::new("config"),
        OsStr::new("remote.origin.partialclonefilter"),
    ]);
    assert_eq!(promisor.trim(), "blob:none");
    // The clone and the checkout's lazy fetch: two different requests, both made once.
    assert_eq!(daemon.stat("misses_total"), 2);
    assert_eq!(daemon.stat("failures_total"), 0);
}

#[test]
fn an_incremental_fetch_after_a_new_commit_gets_it() {
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&[]);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, false, None)));
    // Our own copy of the source (hard links), which this test may change.
    let src = work.path().join("src.git");
    env.run([
        OsStr::new("clone"),
        OsStr::new("-q"),
        OsStr::new("--bare"),
        fixture().repo.as_os_str(),
        src.as_os_str(),
    ]);
    let dst = work.path().join("dst.git");
    finish(
        clone_cmd(&env, &["--bare"], &src, &dst).spawn().unwrap(),
        "clone",
    );
    // A new commit on main in the source.
    let tree = env.run([
        OsStr::new("-C"),
        src.as_os_str(),
        OsStr::new("rev-parse"),
        OsStr::new("main^{tree}"),
    ]);
    let commit = env
        .run([
            OsStr::new("-C"),
            src.as_os_str(),
            OsStr::new("commit-tree"),
            OsStr::new(tree.trim()),
            OsStr::new("-p"),
            OsStr::new("main"),
            OsStr::new("-m"),
            OsStr::new("new work"),
        ])
        .trim()
        .to_owned();
    env.run([
        OsStr::new("-C"),
        src.as_os_str(),
        OsStr::new("update-ref"),
        OsStr::new("refs/heads/main"),
        OsStr::new(&commit),
    ]);
    let url = format!("file://{}", src.display());
    env.run([
        OsStr::new("-C"),
        dst.as_os_str(),
        OsStr::new("fetch"),
        OsStr::new("-q"),
        OsStr::new(&url),
        OsStr::new("+refs/heads/*:refs/heads/*"),
    ]);
    fsck(&env, &dst);
    assert_eq!(refs(&env, &dst), refs(&env, &src));
    assert_eq!(daemon.stat("misses_total"), 2, "the clone and the fetch");
    assert_eq!(daemon.stat("hits_total"), 0);
}

#[test]
fn a_late_clone_joins_a_running_pack_objects_and_gets_a_valid_pack() {
    let work = tempfile::tempdir().unwrap();
    let gate = gated_wrapper(work.path());
    let daemon = Daemon::start(&["--allow", gate.wrapper.to_str().unwrap()]);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, false, Some(&gate.wrapper))));
    let src = &fixture().repo;
    let first = clone_cmd(&env, &["--bare"], src, &work.path().join("first.git"))
        .spawn()
        .unwrap();
    gate.wait_until_streaming();
    // pack-objects is running and has streamed its first bytes: now the late clone.
    let late = clone_cmd(&env, &["--bare"], src, &work.path().join("late.git"))
        .spawn()
        .unwrap();
    daemon.wait_for_log(&["serving", "status=hit"]);
    gate.open();
    finish(first, "first clone");
    finish(late, "late clone");
    let expected = refs(&env, src);
    for name in ["first.git", "late.git"] {
        let dst = work.path().join(name);
        fsck(&env, &dst);
        assert_eq!(refs(&env, &dst), expected);
    }
    assert_eq!(count_lines(&gate.count), 1);
    assert_eq!(
        (daemon.stat("misses_total"), daemon.stat("hits_total")),
        (1, 1)
    );
}

#[test]
fn a_clone_killed_mid_stream_does_not_break_the_others() {
    let work = tempfile::tempdir().unwrap();
    let gate = gated_wrapper(work.path());
    let daemon = Daemon::start(&["--allow", gate.wrapper.to_str().unwrap()]);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, false, Some(&gate.wrapper))));
    let src = &fixture().repo;
    // The victim runs in its own process group: killing the group takes down the clone,
    // its upload-pack and the hook, as a crashed or interrupted client would.
    let mut victim_cmd = clone_cmd(&env, &["--bare"], src, &work.path().join("victim.git"));
    std::os::unix::process::CommandExt::process_group(&mut victim_cmd, 0);
    let victim = victim_cmd.spawn().unwrap();
    gate.wait_until_streaming();
    let others: Vec<Child> = (0..2)
        .map(|i| {
            clone_cmd(
                &env,
                &["--bare"],
                src,
                &work.path().join(format!("other-{i}.git")),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    daemon.wait_for_log(&["serving", "status=hit"]);
    daemon.wait_for_log(&["serving", "status=hit"]);
    let group = rustix::process::Pid::from_raw(victim.id() as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::KILL).unwrap();
    let killed = victim.wait_with_output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(9)
    );
    gate.open();
    let expected = refs(&env, src);
    for (i, child) in others.into_iter().enumerate() {
        finish(child, &format!("other clone {i}"));
        let dst = work.path().join(format!("other-{i}.git"));
        fsck(&env, &dst);
        assert_eq!(refs(&env, &dst), expected);
    }
    // The daemon noticed the victim's hook leave during the stream; the producer lived on.
    daemon.wait_for_log(&["client left during the stream"]);
    assert_eq!(count_lines(&gate.count), 1);
    assert_eq!(daemon.stat("failures_total"), 0);
    assert_eq!(
        (daemon.stat("misses_total"), daemon.stat("hits_total")),
        (1, 2)
    );
}

#[test]
fn with_the_daemon_stopped_the_hook_still_clones() {
    let work = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&[]);
    let env = GitEnv::new(Some(&GitEnv::hook_for(&daemon, true, None)));
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    assert!(
        !daemon.socket.exists(),
        "the socket file is removed on stop"
    );
    let dst = work.path().join("dst.git");
    let out = clone_cmd(&env, &["--bare"], &fixture().repo, &dst)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // With -v, the hook's reason reaches the user as a remote message.
    let err = text(&out.stderr);
    assert!(
        err.contains("remote: streamcache: cannot reach the daemon"),
        "{err}"
    );
    fsck(&env, &dst);
    assert_eq!(refs(&env, &dst), refs(&env, &fixture().repo));
}

/// The lines of `--explain-to`'s file for one request, by part name.
fn explained(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            // Names are padded to 14 columns; an `env NAME` may be longer.
            let (name, value) = match l.strip_prefix("env ") {
                Some(rest) => {
                    let (var, value) = rest.split_once(' ').unwrap();
                    (format!("env {var}"), value.trim_start())
                }
                None => {
                    let (name, value) = l.split_at(14.min(l.len()));
                    (name.trim().to_owned(), value.trim_start())
                }
            };
            (name, value.to_owned())
        })
        .collect()
}

#[test]
fn explain_gives_the_key_the_daemon_logs_and_shows_which_part_of_two_requests_differs() {
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&[]);
    let explain_file = |name: &str| work.path().join(name);
    let hook = |file: &Path| {
        format!(
            "{BIN} exec --explain-to {} --socket {} --",
            file.display(),
            daemon.socket.display()
        )
    };
    // Two users alike but for their home (and so their global config's path).
    let first = GitEnv::new(Some(&hook(&explain_file("first"))));
    let second = GitEnv::new(Some(&hook(&explain_file("second"))));
    for (env, name) in [(&first, "a.git"), (&second, "b.git")] {
        let dst = work.path().join(name);
        let out = clone_cmd(env, &["--bare", "--no-local"], &fixture().repo, &dst)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        fsck(env, &dst);
    }
    let a = explained(&std::fs::read_to_string(explain_file("first")).unwrap());
    let b = explained(&std::fs::read_to_string(explain_file("second")).unwrap());
    // The key the client explains is the one the daemon served under.
    let logged = daemon.wait_for_log(&["served", &a["key in logs"]]);
    assert!(logged.contains("miss"), "{logged}");
    assert_eq!(a["key"][..16], a["key in logs"]["key=".len()..]);
    assert_eq!(daemon.stat("misses_total"), 2, "two keys, two misses");
    // What differs: the home, the global config's path, and so the key.
    let differing: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    assert_eq!(
        differing,
        ["env GIT_CONFIG_GLOBAL", "env HOME", "key", "key in logs"],
        "{a:#?}\n{b:#?}"
    );
    assert_eq!(a["program"], "git");
    assert_eq!(a["arg 1"], "pack-objects");
    assert!(a["stdin"].contains("bytes, sha256 "), "{}", a["stdin"]);
}

#[test]
fn explain_alone_prints_the_parts_and_runs_nothing() {
    let out = Command::new(BIN)
        .args(["exec", "--explain", "--key", "tenant 7", "--", "false", "x"])
        .env("GIT_DIR", ".")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "false did not run: {}",
        text(&out.stderr)
    );
    let parts = explained(&text(&out.stdout));
    assert_eq!(parts["program"], "false");
    assert_eq!(parts["arg 1"], "x");
    assert_eq!(parts["env GIT_DIR"], ".");
    assert_eq!(parts["key material"], "tenant 7");
    assert!(parts["stdin"].starts_with("0 bytes"), "{}", parts["stdin"]);
    assert_eq!(parts["key"].len(), 64);
}
