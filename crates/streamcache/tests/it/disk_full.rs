//! A full disk, for real: the cache on an 8 MiB tmpfs and a producer that writes 16 MiB.
//! Mounting needs root; without it these tests fail (CI runs as root).

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use streamcache::{Error, Op};

use crate::support::{
    count_files, drain, fetch_vec, never, produce, with_and_without_backpressure, Tmpfs,
};

/// The producer: waits for `go`, then tries to write 16 MiB in 64 KiB writes.
fn sixteen_mib(
    gate: mpsc::Receiver<()>,
) -> impl FnOnce(&mut streamcache::Writer) -> io::Result<()> + Send {
    move |w| {
        gate.recv().map_err(io::Error::other)?;
        let chunk = vec![0x5a_u8; 64 << 10];
        for _ in 0..256 {
            w.write_all(&chunk)?;
        }
        Ok(())
    }
}

fn assert_disk_full(err: &Error, who: &str) {
    assert_eq!(err.op(), Some(Op::Write), "{who}: {err:?}");
    assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{who}: {err:?}");
    let chain = crate::support::chain(err);
    assert!(
        chain.contains("No space left"),
        "{who}: the message names the cause: {chain}"
    );
}

/// A cache on `root` whose entries live an hour (its maintenance thread never runs
/// during a test).
fn cache_on(root: PathBuf, backpressure: bool) -> streamcache::Cache {
    let mut cfg = crate::support::real_config(&root);
    cfg.backpressure = backpressure;
    streamcache::Cache::new(cfg).unwrap()
}

/// A cache on `root` whose maintenance removes every file there, whoever made it (max
/// age 0): it stands for the sweep that reclaims space from other processes.
fn sweeper_of(root: PathBuf) -> streamcache::Cache {
    let mut cfg = crate::support::real_config(&root);
    cfg.max_age = Duration::ZERO;
    let cache = streamcache::Cache::new(cfg).unwrap();
    cache.stop();
    cache
}

#[test]
fn a_full_disk_fails_every_reader_and_the_cache_recovers_once_space_returns() {
    with_and_without_backpressure(|backpressure| {
        let tmpfs = Tmpfs::mount(8);
        let root = tmpfs.path().join("cache");
        let cache = cache_on(root.clone(), backpressure);

        let (go, gate) = mpsc::channel();
        let (started_tx, started) = mpsc::channel();
        let producer = sixteen_mib(gate);
        let fetcher = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                cache.fetch("big", &mut io::sink(), move |w| {
                    started_tx.send(()).map_err(io::Error::other)?;
                    producer(w)
                })
            })
        };
        // The producer runs once its entry is in the index: the next lookups join it.
        started.recv().unwrap();
        let mut readers: Vec<_> = (0..2)
            .map(|_| {
                let (stream, created) = cache.find_or_create("big", never).unwrap();
                assert!(!created, "the reader joins the running producer");
                stream
            })
            .collect();
        go.send(()).unwrap();

        let fetched = fetcher.join().unwrap();
        assert_disk_full(&fetched.expect_err("the fetch fails"), "fetch");
        for (i, stream) in readers.iter_mut().enumerate() {
            let (bytes, result) = drain(stream);
            assert!(bytes.len() < 16 << 20);
            assert_disk_full(
                &result.expect_err("the reader fails"),
                &format!("reader {i}"),
            );
            assert_disk_full(&stream.wait().unwrap_err(), &format!("wait of reader {i}"));
        }
        assert_eq!(cache.stats().failures, 1);
        drop(readers);

        // The failed entry's file went with it, so the space is back at once: the key
        // is made afresh (the failed entry is never served) and now fits.
        assert_eq!(count_files(&root), 0, "the failed entry's file is removed");
        let (out, created) = fetch_vec(&cache, "big", produce("fits now")).unwrap();
        assert_eq!((out.as_slice(), created), (&b"fits now"[..], true));
        let (out, created) = fetch_vec(&cache, "big", never).unwrap();
        assert_eq!((out.as_slice(), created), (&b"fits now"[..], false));

        // Space taken by others (a full disk at file creation) comes back through
        // maintenance, which removes every file older than max_age (0 for the sweeper).
        let filler = root.join("filler");
        let fill = std::fs::write(&filler, vec![0u8; 16 << 20]);
        assert_eq!(
            fill.expect_err("8 MiB cannot hold 16").kind(),
            io::ErrorKind::StorageFull
        );
        let (mut full, created) = cache.find_or_create("other", produce("x")).unwrap();
        assert!(created);
        let (_, result) = drain(&mut full);
        assert!(result.is_err(), "no space for a new entry: {result:?}");
        drop(full);
        sweeper_of(root.clone()).run_maintenance();
        assert_eq!(count_files(&root), 0, "maintenance freed the space");
        let (out, created) = fetch_vec(&cache, "other", produce("works")).unwrap();
        assert_eq!((out.as_slice(), created), (&b"works"[..], true));
        drop(cache);
    });
}

#[test]
fn a_write_cut_short_by_a_full_disk_is_never_shown_to_readers() {
    with_and_without_backpressure(|backpressure| {
        let tmpfs = Tmpfs::mount(8);
        let cache = cache_on(tmpfs.path().join("cache"), backpressure);
        let (tx, gate) = mpsc::channel();
        let (mut stream, created) = cache
            .find_or_create("torn", move |w| {
                gate.recv().map_err(io::Error::other)?;
                w.write_all(b"whole")?;
                // One call larger than the whole file system: the kernel stores part of
                // it, then reports ENOSPC.
                w.write_all(&vec![0x77_u8; 12 << 20])?;
                Ok(())
            })
            .unwrap();
        assert!(created);
        tx.send(()).unwrap();
        let (bytes, result) = crate::support::drain(&mut stream);
        assert_eq!(
            bytes, b"whole",
            "readers get the complete first write and nothing of the torn second one"
        );
        assert_disk_full(&result.unwrap_err(), "the reader");
        drop(stream);
        // The failed entry's file is removed at once, so its space is back without
        // waiting for maintenance: a 6 MiB entry fits again.
        assert_eq!(crate::support::count_files(&tmpfs.path().join("cache")), 0);
        let (bytes, created) =
            crate::support::fetch_vec(&cache, "after", |w| w.write_all(&vec![1u8; 6 << 20]))
                .unwrap();
        assert!(created);
        assert_eq!(bytes.len(), 6 << 20);
    });
}
