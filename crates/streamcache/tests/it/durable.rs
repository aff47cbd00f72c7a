//! Durable entries (`Config::durable`): committed entries survive the cache and its
//! process, are shared between processes, and are checked against their digests
//! before anything of them is served.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use streamcache::{Cache, Config, Lookup};

use crate::support::{drain, never, produce, random_bytes, real_config};

fn durable_config(root: &Path) -> Config {
    let mut cfg = real_config(root);
    cfg.durable = true;
    cfg
}

/// A durable cache on `root`, its background adoption finished.
fn durable_cache(root: &Path) -> Cache {
    let cache = Cache::new(durable_config(root)).expect("a valid configuration");
    cache.wait_adopted();
    cache
}

/// The committed files under `root`.
fn committed(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let Ok(dirs) = fs::read_dir(root.join("committed")) else {
        return found;
    };
    for dir in dirs {
        for file in fs::read_dir(dir.unwrap().path()).unwrap() {
            found.insert(file.unwrap().path());
        }
    }
    found
}

/// Fills `key`'s entry with `bytes` through `cache`, reads it whole, and returns the
/// committed file it left (the one file new under `root`).
fn commit(cache: &Cache, root: &Path, key: &str, bytes: &[u8]) -> PathBuf {
    let before = committed(root);
    let (mut stream, lookup) = cache.lookup(key, produce(bytes.to_vec())).unwrap();
    assert_eq!(lookup, Lookup::Miss);
    let (out, result) = drain(&mut stream);
    result.unwrap();
    assert!(out == bytes);
    // The commit runs after the end was published.
    cache.wait_durable();
    let after = committed(root);
    let new: Vec<_> = after.difference(&before).cloned().collect();
    assert_eq!(new.len(), 1, "one committed file for {key}: {new:?}");
    new.into_iter().next().unwrap()
}

/// Reads `key` through `cache` and returns the lookup and the bytes.
fn read(cache: &Cache, key: &str, fresh: &[u8]) -> (Lookup, Vec<u8>) {
    let (mut stream, lookup) = cache.lookup(key, produce(fresh.to_vec())).unwrap();
    let (out, result) = drain(&mut stream);
    result.unwrap();
    (lookup, out)
}

#[test]
fn a_cache_started_on_the_directory_again_serves_the_committed_entries_without_producing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let entries: Vec<(String, Vec<u8>)> = [0, 1, 70_000, 3 << 20]
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("key {i}"), random_bytes(n)))
        .collect();
    {
        let first = durable_cache(&root);
        for (key, bytes) in &entries {
            commit(&first, &root, key, bytes);
        }
        assert_eq!(first.stats().committed_entries, entries.len() as u64);
    }
    let second = Cache::new(durable_config(&root)).unwrap();
    for (key, bytes) in &entries {
        let (mut stream, lookup) = second.lookup(key, never).unwrap();
        assert_eq!(lookup, Lookup::Hit, "{key}");
        let (out, result) = drain(&mut stream);
        result.unwrap();
        assert!(out == *bytes, "{key}: {} bytes back", out.len());
    }
    second.wait_adopted();
    let stats = second.stats();
    assert_eq!(
        stats.adopted_entries + stats.shared_hits,
        entries.len() as u64,
        "each committed entry was checked and admitted once: {stats:?}"
    );
    assert_eq!((stats.misses, stats.verification_failures), (0, 0));
    let keys: BTreeSet<String> = second.entries().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, entries.iter().map(|(k, _)| k.clone()).collect());
}

#[test]
fn adoption_in_the_background_lists_the_committed_entries_before_any_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    {
        let first = durable_cache(&root);
        for i in 0..20 {
            commit(
                &first,
                &root,
                &format!("k{i}"),
                format!("bytes {i}").as_bytes(),
            );
        }
    }
    let second = durable_cache(&root);
    assert_eq!(second.stats().adopted_entries, 20);
    assert_eq!(second.entries().len(), 20);
    for entry in second.entries() {
        let bytes = format!("bytes {}", &entry.key[1..]);
        assert_eq!(
            entry.state,
            streamcache::EntryState::Complete,
            "{}",
            entry.key
        );
        assert_eq!(entry.written, bytes.len() as u64, "{}", entry.key);
    }
}

#[test]
fn damaged_truncated_and_uncommitted_files_are_never_served_and_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let old: Vec<Vec<u8>> = (0..4).map(|_| random_bytes(200_000)).collect();
    let files: Vec<PathBuf> = {
        let first = durable_cache(&root);
        (0..4)
            .map(|i| commit(&first, &root, &format!("k{i}"), &old[i]))
            .collect()
    };
    let damage = |path: &Path, change: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = fs::read(path).unwrap();
        change(&mut bytes);
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(path, &bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o400)).unwrap();
    };
    // k0: one byte of the entry flipped; k1: cut short by 1000 bytes; k2: the commit
    // record gone (as if never committed); k3: left whole.
    damage(&files[0], &|b| b[12_345] ^= 1);
    damage(&files[1], &|b| b.truncate(b.len() - 1000));
    damage(&files[2], &|b| b.truncate(200_000));
    let second = durable_cache(&root);
    assert_eq!(second.stats().verification_failures, 3);
    assert_eq!(second.stats().adopted_entries, 1);
    for (i, file) in files.iter().enumerate().take(3) {
        assert!(!file.exists(), "the damaged file of k{i} was removed");
    }
    for (i, old) in old.iter().enumerate().take(3) {
        let fresh = random_bytes(1000);
        let (lookup, out) = read(&second, &format!("k{i}"), &fresh);
        assert_eq!(lookup, Lookup::Miss, "k{i} is a miss");
        assert!(
            out == fresh,
            "k{i}: the fresh bytes, nothing of the damaged file"
        );
        assert!(out != old[..out.len()]);
    }
    let (lookup, out) = read(&second, "k3", b"never served");
    assert_eq!(lookup, Lookup::Hit);
    assert!(out == old[3]);
}

#[test]
fn a_file_damaged_after_adoption_started_is_caught_by_the_lookup_that_checks_it() {
    // Damage done while no cache runs, looked up at once: the lookup checks the file
    // itself (or waits for the background check), and never serves it.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let file = {
        let first = durable_cache(&root);
        commit(&first, &root, "k", &random_bytes(1 << 20))
    };
    let mut bytes = fs::read(&file).unwrap();
    bytes[500_000] ^= 0x80;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&file, &bytes).unwrap();
    let second = Cache::new(durable_config(&root)).unwrap();
    let (lookup, out) = read(&second, "k", b"fresh");
    assert_eq!((lookup, out.as_slice()), (Lookup::Miss, &b"fresh"[..]));
    second.wait_adopted();
    assert_eq!(second.stats().verification_failures, 1);
}

#[test]
fn committed_entries_older_than_max_age_are_not_adopted_and_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let file = {
        let first = durable_cache(&root);
        commit(&first, &root, "k", b"old bytes")
    };
    // Any time at all has passed since the entry was made.
    let mut cfg = durable_config(&root);
    cfg.max_age = Duration::ZERO;
    let second = Cache::new(cfg).unwrap();
    second.wait_adopted();
    assert!(!file.exists(), "the expired file was removed");
    let stats = second.stats();
    assert_eq!((stats.adopted_entries, stats.verification_failures), (0, 0));
    let (lookup, out) = read(&second, "k", b"new bytes");
    assert_eq!((lookup, out.as_slice()), (Lookup::Miss, &b"new bytes"[..]));
}

#[test]
fn a_failed_producer_leaves_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = durable_cache(&root);
    let (mut stream, _) = cache
        .lookup("k", |w| {
            w.write_all(&[1u8; 100_000])?;
            Err(std::io::Error::other("the producer gives up"))
        })
        .unwrap();
    let (_, result) = drain(&mut stream);
    assert!(result.is_err());
    let (mut stream, _) = cache
        .lookup("p", |w| {
            w.write_all(b"half")?;
            panic!("the producer panics");
        })
        .unwrap();
    assert!(drain(&mut stream).1.is_err());
    cache.wait_durable();
    assert_eq!(committed(&root), BTreeSet::new());
    assert_eq!(cache.stats().committed_entries, 0);
    let second = durable_cache(&root);
    assert_eq!(
        read(&second, "k", b"fresh"),
        (Lookup::Miss, b"fresh".to_vec())
    );
}

#[test]
fn a_non_durable_cache_commits_nothing_and_adopts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    {
        let durable = durable_cache(&root);
        commit(&durable, &root, "k", b"durable bytes");
    }
    let plain = Cache::new(real_config(&root)).unwrap();
    plain.wait_adopted();
    assert_eq!(
        read(&plain, "k", b"fresh"),
        (Lookup::Miss, b"fresh".to_vec())
    );
    assert_eq!(
        read(&plain, "j", b"other"),
        (Lookup::Miss, b"other".to_vec())
    );
    assert_eq!(
        committed(&root).len(),
        1,
        "only the durable cache's entry is committed"
    );
    assert_eq!(plain.stats().committed_entries, 0);
}

const CHILD: &str = "STREAMCACHE_IT_DURABLE_CHILD";
const CHILD_ROOT: &str = "STREAMCACHE_IT_DURABLE_ROOT";

/// Runs this test binary again as a child, filtered to `test`, with `mode` and `root`
/// in its environment.
fn child(test: &str, mode: &str, root: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env(CHILD_ROOT, root);
    command
}

fn child_mode() -> Option<(String, PathBuf)> {
    let mode = std::env::var(CHILD).ok()?;
    let root = std::env::var_os(CHILD_ROOT).expect("the child's root");
    Some((mode, PathBuf::from(root)))
}

const KILLED: &str = "durable::a_producer_killed_mid_write_leaves_nothing_adoptable";

#[test]
fn a_producer_killed_mid_write_leaves_nothing_adoptable() {
    if let Some((_, root)) = child_mode() {
        // The child: a producer that writes 3 MiB, says so, and never finishes.
        let cache = Cache::new(durable_config(&root)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (mut stream, _) = cache
            .lookup("k", move |w| {
                w.write_all(&[7u8; 3 << 20])?;
                tx.send(()).map_err(std::io::Error::other)?;
                std::thread::park();
                Ok(())
            })
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < 3 << 20 {
            got += stream.read(&mut buf).unwrap();
        }
        rx.recv().unwrap();
        println!("written");
        std::io::stdout().flush().unwrap();
        loop {
            std::thread::park();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let mut running = child(KILLED, "produce", &root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The test harness prints its own lines first.
    let mut out = BufReader::new(running.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        seen.push_str(&line);
        assert!(n > 0, "the child ended before it wrote its bytes: {seen:?}");
        if line.trim_end().ends_with("written") {
            break;
        }
    }
    running.kill().unwrap();
    running.wait().unwrap();
    assert_eq!(committed(&root), BTreeSet::new(), "nothing committed");
    assert!(
        crate::support::count_files(&root) >= 1,
        "the torn file is there"
    );
    let cache = durable_cache(&root);
    assert_eq!(cache.stats().adopted_entries, 0);
    assert_eq!(
        read(&cache, "k", b"fresh"),
        (Lookup::Miss, b"fresh".to_vec())
    );
}

const SHARING: &str = "durable::two_processes_sharing_a_durable_directory_hit_each_others_entries";

#[test]
fn two_processes_sharing_a_durable_directory_hit_each_others_entries() {
    if let Some((mode, root)) = child_mode() {
        let cache = Cache::new(durable_config(&root)).unwrap();
        match mode.as_str() {
            // Commits "from child" and exits.
            "commit" => {
                commit(&cache, &root, "from child", b"the child's bytes");
            }
            // Reads the parent's entry without producing.
            _ => {
                let (mut stream, lookup) = cache.lookup("from parent", never).unwrap();
                let (out, result) = drain(&mut stream);
                result.unwrap();
                assert_eq!(
                    (lookup, out.as_slice()),
                    (Lookup::Hit, &b"the parent's bytes"[..])
                );
            }
        }
        println!("child done");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let parent = durable_cache(&root);
    // The child commits after this cache's adoption finished: found by lookup.
    let status = child(SHARING, "commit", &root).status().unwrap();
    assert!(status.success(), "the child committed its entry: {status}");
    let (mut stream, lookup) = parent.lookup("from child", never).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    assert_eq!(
        (lookup, out.as_slice()),
        (Lookup::Hit, &b"the child's bytes"[..])
    );
    assert_eq!(parent.stats().shared_hits, 1);
    // And the other way round, while this cache runs.
    commit(&parent, &root, "from parent", b"the parent's bytes");
    let output = child(SHARING, "read", &root).output().unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("child done"),
        "the child read the parent's entry: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn concurrent_lookups_of_an_unchecked_entry_check_it_once_and_all_hit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let bytes = random_bytes(4 << 20);
    {
        let first = durable_cache(&root);
        commit(&first, &root, "k", &bytes);
    }
    let second = Cache::new(durable_config(&root)).unwrap();
    let outs: Vec<(Lookup, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| read(&second, "k", b"never this")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (lookup, out) in outs {
        assert_eq!(lookup, Lookup::Hit);
        assert!(out == bytes);
    }
    second.wait_adopted();
    let stats = second.stats();
    assert_eq!(stats.adopted_entries + stats.shared_hits, 1, "{stats:?}");
    assert_eq!(stats.hits, 8);
}

#[test]
fn a_durable_entry_keeps_its_bytes_while_readers_read_it_during_the_commit() {
    // Readers attached while the entry is written read on through its commit (the
    // file changes its name under them), and later hits find it.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = durable_cache(&root);
    let bytes = random_bytes(2 << 20);
    let (mut first, _) = cache.lookup("k", produce(bytes.clone())).unwrap();
    let (mut second, lookup) = cache.lookup("k", never).unwrap();
    assert_eq!(lookup, Lookup::Hit);
    assert!(drain(&mut first).0 == bytes);
    assert!(drain(&mut second).0 == bytes);
    drop((first, second));
    cache.wait_durable();
    let mut reader = fs::File::open(committed(&root).into_iter().next().unwrap()).unwrap();
    let mut on_disk = Vec::new();
    reader.read_to_end(&mut on_disk).unwrap();
    assert!(
        on_disk[..bytes.len()] == bytes[..],
        "the committed file starts with the entry"
    );
    let (lookup, out) = read(&cache, "k", b"never");
    assert_eq!(lookup, Lookup::Hit);
    assert!(out == bytes);
}

#[test]
fn adopted_entries_count_against_the_disk_budget_and_what_does_not_fit_goes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    {
        let first = durable_cache(&root);
        for i in 0..6 {
            commit(&first, &root, &format!("k{i}"), &random_bytes(60 << 10));
        }
    }
    let on_disk = |root: &Path| -> u64 {
        committed(root)
            .iter()
            .map(|f| fs::metadata(f).unwrap().len())
            .sum()
    };
    assert!(on_disk(&root) > 6 * (60 << 10));
    // Room for two of the six: adoption evicts or removes the rest.
    let budget = 160 << 10;
    let mut cfg = durable_config(&root);
    cfg.max_disk_bytes = Some(budget);
    let second = Cache::new(cfg).unwrap();
    second.wait_adopted();
    let stats = second.stats();
    assert!(stats.adopted_entries >= 1, "{stats:?}");
    assert!(
        stats.disk_used_bytes <= budget,
        "the budget holds: {} of {budget} used",
        stats.disk_used_bytes
    );
    assert!(
        on_disk(&root) <= budget,
        "the files on disk fit the budget: {} bytes",
        on_disk(&root)
    );
    assert_eq!(second.entries().len(), committed(&root).len());
}
