//! Several hosts: daemons with caches of their own sharing one bucket of a real
//! S3-compatible server (SeaweedFS, see `s3.rs`), cloned through by the real git.
//!
//! The clients of both daemons share one git environment (so their requests have one
//! key, as on hosts set up alike) and pick their daemon with `STREAMCACHE_SOCKET`,
//! which is not part of the key. The wrapper in front of `pack-objects` writes the
//! pid of the daemon that ran it, so each host's runs are counted apart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::git::clone_cmd;
use crate::s3::{S3Server, BUCKET};
use crate::support::{fifo, fixture, fsck, refs, script, wait_until, Daemon, GitEnv, BIN};

/// A daemon standing for one host: its own socket and cache directory, the tier at
/// `s3://streamcache/<prefix>` on `server`.
fn host(work: &Path, name: &str, server: &S3Server, prefix: &str, extra: &[&str]) -> Daemon {
    let socket = work.join(format!("{name}.sock"));
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--socket")
        .arg(&socket)
        .arg("--dir")
        .arg(work.join(name))
        .args(["-v", "--grace", "10s"])
        .arg("--allow")
        .arg(work.join(WRAPPER))
        .arg("--remote")
        .arg(format!("s3://{BUCKET}/{prefix}"))
        .args(extra)
        .env("AWS_ENDPOINT", &server.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "streamcache")
        .env("AWS_SECRET_ACCESS_KEY", "streamcache");
    Daemon::spawn(cmd, tempfile::tempdir().unwrap(), socket, |_| {})
}

/// The wrapper's name in the work directory (see [`Wrapper`]); the daemons allow it.
const WRAPPER: &str = "pack-objects-by-host";

/// A prefix of its own for each test: named after the test's (randomly named) work
/// directory.
fn prefix(name: &str, work: &Path) -> String {
    let unique = work.file_name().unwrap().to_string_lossy();
    format!("{name}-{}", unique.trim_start_matches('.'))
}

/// The wrapper in front of `pack-objects`: writes the pid of the daemon that ran it
/// (its parent is the daemon's supervisor process) into `runs`, then runs the command. While the file `armed` exists, the first run
/// removes it, sends the first 64 KiB, says so on the FIFO `at-gate` and waits for a
/// line on the FIFO `gate` before it sends the rest.
struct Wrapper {
    path: PathBuf,
    runs: PathBuf,
    armed: PathBuf,
    gate: PathBuf,
    at_gate: PathBuf,
}

impl Wrapper {
    fn new(dir: &Path) -> Wrapper {
        let w = Wrapper {
            path: dir.join(WRAPPER),
            runs: dir.join("runs"),
            armed: dir.join("armed"),
            gate: dir.join("gate"),
            at_gate: dir.join("at-gate"),
        };
        fifo(&w.gate);
        fifo(&w.at_gate);
        script(
            &w.path,
            &format!(
                "sed -n 's/^PPid:[[:space:]]*//p' /proc/$PPID/status >> {runs}\n\
                 if rm {armed} 2>/dev/null; then\n\
                 \"$@\" > {pack} || exit $?\n\
                 head -c 65536 {pack}\n\
                 echo waiting > {at_gate}\n\
                 read line < {gate}\n\
                 exec tail -c +65537 {pack}\n\
                 fi\n\
                 exec \"$@\"",
                runs = w.runs.display(),
                armed = w.armed.display(),
                pack = dir.join("pack").display(),
                at_gate = w.at_gate.display(),
                gate = w.gate.display(),
            ),
        );
        w
    }

    /// Opens the gate for a wrapper waiting at it, if one is.
    fn let_go(&self) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let gate = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&self.gate);
        match gate {
            Ok(mut gate) => gate.write_all(b"go\n").unwrap(),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {}
            Err(e) => panic!("open the gate: {e}"),
        }
    }

    /// Runs by the daemon `pid`.
    fn runs_by(&self, pid: u32) -> usize {
        std::fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim() == pid.to_string())
            .count()
    }

    fn total_runs(&self) -> usize {
        std::fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .count()
    }
}

/// A clone through the daemon on `socket`.
fn clone_via(env: &GitEnv, socket: &Path, dst: &Path) -> Child {
    let mut cmd = clone_cmd(env, &["--bare", "--no-local"], &fixture().repo, dst);
    cmd.env("STREAMCACHE_SOCKET", socket);
    cmd.spawn().unwrap()
}

fn succeeded(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Clones `n` at once through each of `daemons`, all started before any is waited for;
/// checks each with `git fsck` and its refs.
fn storm(env: &GitEnv, daemons: &[&Daemon], n: usize, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let mut children = Vec::new();
    for (d, daemon) in daemons.iter().enumerate() {
        for i in 0..n {
            let dst = into.join(format!("host{d}-clone{i}.git"));
            children.push((clone_via(env, &daemon.socket, &dst), dst));
        }
    }
    let expected = refs(env, &fixture().repo);
    for (child, dst) in children {
        succeeded(child, &dst.display().to_string());
        fsck(env, &dst);
        assert_eq!(refs(env, &dst), expected, "{}", dst.display());
    }
}

/// The objects below `prefix`, relative to it.
fn objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listed: Vec<object_store::ObjectMeta> = rt
        .block_on(store.list(Some(&ObjectPath::from(prefix))).try_collect())
        .unwrap();
    listed
        .into_iter()
        .map(|m| m.location.as_ref()[prefix.len() + 1..].to_owned())
        .collect()
}

/// The `upload` field of the JSON object at `prefix/name`.
fn upload_of(store: &Arc<dyn ObjectStore>, prefix: &str, name: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = ObjectPath::from(format!("{prefix}/{name}"));
    let bytes = rt
        .block_on(async { store.get(&path).await?.bytes().await })
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    text.split("\"upload\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no upload in {text}"))
        .to_owned()
}

fn hook_env(work: &Path) -> (GitEnv, Wrapper) {
    let wrapper = Wrapper::new(work);
    let hook = format!("{BIN} exec -v -- {}", wrapper.path.display());
    (GitEnv::new(Some(&hook)), wrapper)
}

#[test]
fn two_daemons_on_one_bucket_run_pack_objects_once_and_a_wiped_host_fills_from_the_bucket() {
    let server = S3Server::shared();
    let work = tempfile::tempdir().unwrap();
    let prefix = prefix("hosts", work.path());
    let (env, wrapper) = hook_env(work.path());
    let mut a = host(work.path(), "a", server, &prefix, &[]);
    let b = host(work.path(), "b", server, &prefix, &[]);

    // 4 clones through A and 4 through B at once: one pack-objects between them.
    storm(&env, &[&a, &b], 4, &work.path().join("storm"));
    assert_eq!(wrapper.total_runs(), 1, "pack-objects ran more than once");
    let (producer, other) = if wrapper.runs_by(a.pid()) == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    wait_until("the producing host published the entry", || {
        producer.stat("remote_uploads_total") == 1
    });
    assert_eq!(
        other.stat("remote_hits_total"),
        1,
        "the other host took the entry from the bucket"
    );
    assert_eq!(
        (
            producer.stat("remote_errors_total"),
            other.stat("remote_errors_total")
        ),
        (0, 0)
    );
    assert!(objects(&server.store(), &prefix)
        .iter()
        .any(|o| o.ends_with("/manifest")));

    // A's cache directory wiped, A restarted: its clones come from the bucket.
    a.stop();
    std::fs::remove_dir_all(work.path().join("a")).unwrap();
    let a = host(work.path(), "a", server, &prefix, &[]);
    storm(&env, &[&a], 4, &work.path().join("after-wipe"));
    assert_eq!(wrapper.total_runs(), 1, "pack-objects ran after the wipe");
    assert_eq!(a.stat("remote_hits_total"), 1);
    assert_eq!(
        a.stat("misses_total"),
        1,
        "one local miss, filled from the bucket"
    );
}

#[test]
fn a_host_killed_while_it_produces_is_taken_over_and_no_clone_gets_a_bad_pack() {
    let server = S3Server::shared();
    let store = server.store();
    let work = tempfile::tempdir().unwrap();
    let prefix = prefix("killed", work.path());
    let (env, wrapper) = hook_env(work.path());
    let takeover = ["--remote-takeover", "2s"];
    let mut a = host(work.path(), "a", server, &prefix, &takeover);
    let b = host(work.path(), "b", server, &prefix, &takeover);
    let a_pid = a.pid();
    let clones = work.path().join("clones");
    std::fs::create_dir(&clones).unwrap();

    // A produces, held after its first 64 KiB.
    std::fs::write(&wrapper.armed, b"").unwrap();
    let on_a = clone_via(&env, &a.socket, &clones.join("a.git"));
    assert_eq!(
        std::fs::read_to_string(&wrapper.at_gate).unwrap(),
        "waiting\n"
    );
    let lease = objects(&store, &prefix)
        .into_iter()
        .find(|o| o.ends_with("/lease"))
        .expect("A holds the lease");
    let dead_upload = upload_of(&store, &prefix, &lease);
    // Two clones through B follow A's upload.
    let on_b: Vec<(Child, PathBuf)> = (0..2)
        .map(|i| {
            let dst = clones.join(format!("b{i}.git"));
            (clone_via(&env, &b.socket, &dst), dst)
        })
        .collect();
    wait_until("B follows A's upload", || {
        b.stat("remote_follows_total") == 1
    });

    // A dies. Its supervisor takes the held wrapper down with it; if it has not yet,
    // the wrapper is let go into a broken pipe. (A FIFO opened for writing without a
    // reader would block: opened non-blocking, "no reader" means it is gone.)
    a.kill();
    wrapper.let_go();
    let out = on_a.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the clone through the killed host cannot have succeeded"
    );

    // B takes the stalled lease over and produces: its clones complete.
    let expected = refs(&env, &fixture().repo);
    for (child, dst) in on_b {
        succeeded(child, "a clone through B");
        fsck(&env, &dst);
        assert_eq!(refs(&env, &dst), expected);
    }
    assert_eq!(b.stat("remote_takeovers_total"), 1);
    assert_eq!((wrapper.runs_by(a_pid), wrapper.runs_by(b.pid())), (1, 1));
    wait_until("B published its entry", || {
        b.stat("remote_uploads_total") == 1
    });
    let manifest = objects(&store, &prefix)
        .into_iter()
        .find(|o| o.ends_with("/manifest"))
        .expect("a manifest");
    assert_ne!(
        upload_of(&store, &prefix, &manifest),
        dead_upload,
        "nothing of the dead upload was committed"
    );
}

#[test]
fn a_frozen_or_stopped_object_store_fails_open_and_is_counted() {
    let server = S3Server::start();
    let work = tempfile::tempdir().unwrap();
    let prefix = prefix("down", work.path());
    let (env, wrapper) = hook_env(work.path());
    let timeout = ["--remote-timeout", "1s"];

    // Frozen: it takes connections and answers nothing.
    let a = host(work.path(), "a", &server, &prefix, &timeout);
    server.freeze();
    storm(&env, &[&a], 4, &work.path().join("frozen"));
    assert_eq!(wrapper.runs_by(a.pid()), 1);
    assert!(a.stat("remote_errors_total") >= 1);

    // Stopped: nothing listens.
    server.thaw();
    server.kill();
    let b = host(work.path(), "b", &server, &prefix, &timeout);
    storm(&env, &[&b], 4, &work.path().join("stopped"));
    assert_eq!(wrapper.runs_by(b.pid()), 1);
    assert!(b.stat("remote_errors_total") >= 1);
}
