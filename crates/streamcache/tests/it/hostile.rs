//! The file system below the cache root, attacked: links swapped in while the sweep
//! walks, a FIFO renamed over an entry file, a root given through a link. Nothing
//! outside the root is ever touched, no lookup blocks, nothing is silently skipped.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use streamcache::{Cache, Lookup};

use crate::support::{real_config, TempCache};

/// Regular files under `dir`, by path.
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(regular_files(&entry.path()));
        } else if kind.is_file() {
            found.push(entry.path());
        }
    }
    found
}

fn make_old(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    fs::File::open(path).unwrap().set_modified(old).unwrap();
}

/// A directory of the cache is swapped with a link to a victim directory outside the
/// cache (`renameat2(RENAME_EXCHANGE)`, in a loop on another thread) while the sweep
/// runs again and again. Checking a name and then using it by path lets the sweep walk
/// into the victim; walking by directory descriptors never does.
#[test]
fn a_directory_swapped_for_a_link_during_the_sweep_never_leads_it_outside() {
    const VICTIMS: usize = 64;
    const SWEEPS: usize = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    for i in 0..VICTIMS {
        let file = victim.join(format!("precious-{i}"));
        fs::write(&file, b"keep me").unwrap();
        make_old(&file);
    }
    let root = tmp.path().join("cache");
    let cache = Cache::new(real_config(&root)).unwrap();
    // An entry makes the root; the sweep then walks it.
    let (mut stream, _) = cache.find_or_create("k", |w| w.write_all(b"x")).unwrap();
    stream.read_to_end(&mut Vec::new()).unwrap();
    let real = root.join("ab");
    let link = root.join("zz");
    fs::create_dir(&real).unwrap();
    symlink(&victim, &link).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (stop, swaps, real, link, victim) = (
            Arc::clone(&stop),
            Arc::clone(&swaps),
            real.clone(),
            link.clone(),
            victim.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                match nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &real,
                    nix::fcntl::AT_FDCWD,
                    &link,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                ) {
                    Ok(()) => {
                        swaps.fetch_add(1, SeqCst);
                    }
                    // The sweep removed the link (it is a stale file to it): plant it
                    // again under whichever name is free.
                    Err(nix::errno::Errno::ENOENT) => {
                        for name in [&real, &link] {
                            if fs::symlink_metadata(name).is_err() {
                                let _ = symlink(&victim, name);
                            }
                        }
                    }
                    Err(e) => panic!("renameat2: {e}"),
                }
            }
        })
    };
    for _ in 0..SWEEPS {
        cache.run_maintenance();
    }
    stop.store(true, SeqCst);
    attacker.join().unwrap();
    assert!(swaps.load(SeqCst) > 0, "the attacker swapped");
    let survivors = (0..VICTIMS)
        .filter(|i| victim.join(format!("precious-{i}")).exists())
        .count();
    assert_eq!(survivors, VICTIMS, "every file outside the cache survives");
}

/// A FIFO renamed over an entry file: the hit that re-opens the entry must not block
/// on it (that key becomes a miss), and no other key waits for it.
#[test]
fn a_fifo_over_an_entry_file_makes_that_key_a_miss_and_blocks_no_other_key() {
    let cache = TempCache::new(true);
    let (mut stream, lookup) = cache.cache.lookup("a", |w| w.write_all(b"first")).unwrap();
    assert_eq!(lookup, Lookup::Miss);
    stream.read_to_end(&mut Vec::new()).unwrap();
    stream.wait().unwrap();
    drop(stream);
    let files = regular_files(cache.root());
    assert_eq!(files.len(), 1, "{files:?}");
    let fifo = cache.root().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    fs::rename(&fifo, &files[0]).unwrap();

    let (done, results) = mpsc::channel();
    for key in ["a", "b"] {
        let cache = cache.cache.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let result =
                cache
                    .lookup(key, |w| w.write_all(b"second"))
                    .map(|(mut stream, lookup)| {
                        let mut bytes = Vec::new();
                        let read = stream.read_to_end(&mut bytes).map(|_| bytes);
                        (lookup, read.map_err(|e| e.to_string()), stream.wait())
                    });
            let _ = done.send((key, result));
        });
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        // A bounded wait turns a lookup blocked on the FIFO into a failure, not a hang.
        match results.recv_timeout(Duration::from_secs(120)) {
            Ok((key, result)) => {
                let (lookup, bytes, outcome) = result.unwrap();
                assert_eq!(lookup, Lookup::Miss, "{key}");
                assert_eq!(bytes.unwrap(), b"second", "{key}");
                outcome.unwrap();
                seen.push(key);
            }
            Err(_) => {
                // Release a blocked opener before failing.
                let _ = fs::OpenOptions::new().write(true).open(&files[0]);
                panic!("lookups blocked by a FIFO over an entry file; done: {seen:?}");
            }
        }
    }
    seen.sort();
    assert_eq!(seen, ["a", "b"]);
}

/// A root given through a link is resolved, not skipped: the sweep reports the bytes
/// there and reclaims old files.
#[test]
fn a_root_given_through_a_link_is_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    let root = tmp.path().join("entries");
    symlink(&real, &root).unwrap();
    let cache = Cache::new(real_config(&root)).unwrap();
    let (mut stream, _) = cache
        .find_or_create("k", |w| w.write_all(&[1u8; 1000]))
        .unwrap();
    stream.read_to_end(&mut Vec::new()).unwrap();
    stream.wait().unwrap();
    drop(stream);
    cache.run_maintenance();
    assert_eq!(
        cache.stats().disk_usage_bytes,
        1000,
        "the entry's bytes are seen"
    );
    let files = regular_files(&real);
    assert_eq!(files.len(), 1, "{files:?}");
    // A file left by a crashed process: old, unknown to the index.
    let stale = files[0].with_file_name("0123456789abcdef0123-1");
    fs::write(&stale, b"old").unwrap();
    make_old(&stale);
    cache.run_maintenance();
    assert!(!stale.exists(), "the stale file is reclaimed");
    assert_eq!(cache.stats().swept_files, 1);
    assert!(files[0].exists(), "the young entry stays");
}

/// Another program truncates an entry file under a reader: the reader gets an error
/// that says the file is shorter than what was written (never a silent short read),
/// and the process and later lookups go on. With a lead window readers copy from a
/// memory map of the file, where the truncation raises `SIGBUS`, which must not kill
/// the process; without, they `pread`.
#[test]
fn an_entry_file_truncated_under_its_readers_is_an_error_for_them_not_a_crash() {
    for lead in [0, 8 << 20] {
        truncated_under_a_reader(lead);
    }
}

fn truncated_under_a_reader(lead: u64) {
    const LEN: usize = 1 << 20;
    let tc = TempCache::with(|cfg| cfg.max_lead_bytes = lead);
    let content: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let (mut first, _) = tc
        .cache
        .find_or_create("k", {
            let content = content.clone();
            move |w| w.write_all(&content)
        })
        .unwrap();
    let mut head = vec![0u8; 4096];
    first.read_exact(&mut head).unwrap();
    assert_eq!(head, content[..4096], "lead {lead}");
    let (mut second, created) = tc
        .cache
        .find_or_create("k", |_| Err(std::io::Error::other("ran twice")))
        .unwrap();
    assert!(!created, "lead {lead}: the second lookup joins the entry");
    let mut whole = Vec::new();
    second.read_to_end(&mut whole).unwrap();
    assert!(
        whole == content,
        "lead {lead}: the entry before the truncation"
    );
    second.wait().unwrap();

    let files = regular_files(tc.root());
    assert_eq!(files.len(), 1, "lead {lead}: one entry file: {files:?}");
    fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap()
        .set_len(0)
        .unwrap();

    let err = first.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::UnexpectedEof,
        "lead {lead}: {err}"
    );
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain = format!("{chain}: {cause}");
        source = cause.source();
    }
    assert!(
        chain.contains("shorter than what was written"),
        "lead {lead}: the error says what happened: {chain}"
    );
    // The process is alive, and so is the cache.
    let (mut other, _) = tc
        .cache
        .find_or_create("other", |w| w.write_all(b"fine"))
        .unwrap();
    let mut got = Vec::new();
    other.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"fine", "lead {lead}");
}

const SIGBUS_CHILD: &str = "STREAMCACHE_IT_SIGBUS_CHILD";

/// The handler that keeps a truncated entry from killing the process must leave every
/// other `SIGBUS` as it was: a program's own map of a truncated file still dies of it
/// (here through Rust's own handler, which the cache's chains to). The fault kills the
/// process, so a child does it: this test binary again, filtered to this test.
#[test]
fn a_sigbus_outside_the_caches_maps_still_kills_the_process() {
    if std::env::var_os(SIGBUS_CHILD).is_some() {
        sigbus_child();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new(exe)
        .args([
            "hostile::a_sigbus_outside_the_caches_maps_still_kills_the_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SIGBUS_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("the cache's handler is in place"),
        "the child got as far as the fault: {stdout}"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&output.status),
        Some(nix::libc::SIGBUS),
        "the child died of SIGBUS: {:?}\n{stdout}",
        output.status
    );
}

fn sigbus_child() {
    use std::num::NonZeroUsize;
    // A read through a map makes the cache install its handler.
    let tc = TempCache::with(|cfg| cfg.max_lead_bytes = 8 << 20);
    let (mut stream, _) = tc
        .cache
        .find_or_create("k", |w| w.write_all(b"mapped"))
        .unwrap();
    stream.read_to_end(&mut Vec::new()).unwrap();
    let mut action = std::mem::MaybeUninit::<nix::libc::sigaction>::zeroed();
    // SAFETY: a query (no new action) into memory we own.
    let queried =
        unsafe { nix::libc::sigaction(nix::libc::SIGBUS, std::ptr::null(), action.as_mut_ptr()) };
    assert_eq!(queried, 0);
    // SAFETY: filled in by the successful call.
    let action = unsafe { action.assume_init() };
    assert!(
        action.sa_flags & nix::libc::SA_SIGINFO != 0 && action.sa_sigaction != nix::libc::SIG_DFL,
        "the cache installed a handler"
    );
    println!("the cache's handler is in place");

    let file = tempfile::tempfile().unwrap();
    file.set_len(4096).unwrap();
    let len = NonZeroUsize::new(4096).unwrap();
    // SAFETY: a fresh private read-only map of our own file, read once below.
    let map = unsafe {
        nix::sys::mman::mmap(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ,
            nix::sys::mman::MapFlags::MAP_SHARED,
            &file,
            0,
        )
    }
    .unwrap();
    file.set_len(0).unwrap();
    // SAFETY: none: this read faults, which is the point.
    let byte = unsafe { std::ptr::read_volatile(map.as_ptr().cast::<u8>()) };
    println!("survived a fault outside the cache's maps: read {byte}");
}
