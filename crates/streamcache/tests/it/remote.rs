//! The shared tier against a real S3-compatible server (SeaweedFS, see `s3.rs`): two
//! caches with their own directories stand for two hosts sharing a bucket.

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use proptest::prelude::*;
use streamcache::{Cache, Lookup, Remote, Stats, Writer};

use crate::s3::S3Server;
use crate::support::{drain, never, random_bytes, TempCache};

/// The tier at `prefix` with the default takeover time and timeout (long enough for a
/// loaded machine: a live host is never taken over here).
fn remote(store: &Arc<dyn ObjectStore>, prefix: &str, part_size: usize) -> Remote {
    Remote::new(Arc::clone(store), prefix)
        .unwrap()
        .with_part_size(part_size)
}

/// One host: a cache in a directory of its own, on the shared tier `remote`.
fn host(remote: Remote) -> TempCache {
    TempCache::with(move |cfg| cfg.remote = Some(remote))
}

/// A prefix no other test uses.
fn prefix(name: &str) -> String {
    format!("{name}-{}", hex(&random_bytes(6)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The objects below `prefix`, as paths relative to it.
fn objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let listed: Vec<object_store::ObjectMeta> = runtime()
        .block_on(store.list(Some(&ObjectPath::from(prefix))).try_collect())
        .unwrap();
    let mut names: Vec<String> = listed
        .into_iter()
        .map(|m| m.location.as_ref()[prefix.len() + 1..].to_owned())
        .collect();
    names.sort();
    names
}

fn get(store: &Arc<dyn ObjectStore>, path: &str) -> Vec<u8> {
    let rt = runtime();
    rt.block_on(async { store.get(&ObjectPath::from(path)).await?.bytes().await })
        .unwrap()
        .to_vec()
}

fn put(store: &Arc<dyn ObjectStore>, path: &str, bytes: Vec<u8>) {
    runtime()
        .block_on(store.put(&ObjectPath::from(path), PutPayload::from(bytes)))
        .unwrap();
}

/// Polls `stats` of `cache` until `done` holds (the tier's work happens on the cache's
/// threads and in the store; the counters are what shows it).
fn until(cache: &Cache, what: &str, done: impl Fn(&Stats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(&cache.stats()) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting: {what}; {:?}",
            cache.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `stream` with reads of `sizes` (cycled).
fn read_with(stream: &mut streamcache::Stream, sizes: &[usize]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; sizes.iter().copied().max().unwrap_or(1)];
    for size in sizes.iter().cycle() {
        let n = stream.read(&mut buf[..*size])?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// A producer that writes `data` in writes of `chunk` bytes, after `gate` opens (once
/// the first chunk is out).
fn gated_producer(
    data: Arc<Vec<u8>>,
    chunk: usize,
    gate: mpsc::Receiver<()>,
) -> impl FnOnce(&mut Writer) -> io::Result<()> + Send + 'static {
    move |w| {
        let mut chunks = data.chunks(chunk.max(1));
        if let Some(first) = chunks.next() {
            w.write_all(first)?;
        }
        let _ = gate.recv();
        for c in chunks {
            w.write_all(c)?;
        }
        Ok(())
    }
}

/// Two hosts, one key: host A produces, host B finds A's lease while A is still
/// writing and follows its upload; every reader on both hosts gets exactly A's bytes,
/// and B never runs a producer.
fn share_while_made(part_size: usize, len: usize, chunk: usize, reads: &[usize]) {
    let server = S3Server::shared();
    let store = server.store();
    let prefix = prefix("follow");
    let a = host(remote(&store, &prefix, part_size));
    let b = host(remote(&store, &prefix, part_size));
    let data = Arc::new(random_bytes(len));
    let (open, gate) = mpsc::channel();
    let (mut on_a, lookup) = a
        .cache
        .lookup("pack", gated_producer(Arc::clone(&data), chunk, gate))
        .unwrap();
    assert_eq!(lookup, Lookup::Miss);
    // B asks while A's producer waits at the gate, with its lease taken.
    until(&a.cache, "A holds the lease", |_| {
        objects(&store, &prefix)
            .iter()
            .any(|o| o.ends_with("/lease"))
    });
    let (mut on_b, lookup) = b.cache.lookup("pack", never).unwrap();
    assert_eq!(lookup, Lookup::Miss, "B has no local entry");
    until(&b.cache, "B follows A's upload", |s| s.remote_follows == 1);
    open.send(()).unwrap();
    let got_a = read_with(&mut on_a, reads).unwrap();
    on_a.wait().unwrap();
    let got_b = read_with(&mut on_b, reads);
    let got_b = got_b.unwrap_or_else(|e| panic!("B: {e}; {:?}", b.cache.stats()));
    on_b.wait().unwrap();
    assert!(got_a == *data, "A's reader got other bytes");
    assert!(got_b == *data, "B's reader got other bytes than A produced");
    a.cache.wait_uploaded();
    let (sa, sb) = (a.cache.stats(), b.cache.stats());
    assert_eq!((sa.remote_uploads, sa.remote_errors), (1, 0), "{sa:?}");
    assert_eq!(
        (sb.remote_hits, sb.remote_takeovers, sb.remote_errors),
        (1, 0, 0),
        "{sb:?}"
    );
    assert_eq!(sb.remote_downloaded_bytes, len as u64);
    // A third host after the commit: a remote hit, read at other sizes.
    let c = host(remote(&store, &prefix, part_size));
    let (mut on_c, _) = c.cache.lookup("pack", never).unwrap();
    let got_c = read_with(&mut on_c, &[7, 65536, 1]).unwrap();
    on_c.wait().unwrap();
    assert!(got_c == *data, "C's reader got other bytes");
    assert_eq!(c.cache.stats().remote_hits, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn every_reader_on_two_hosts_gets_exactly_the_producers_bytes(
        part_size in 4096usize..300_000,
        len in 0usize..1_500_000,
        chunk in 1usize..200_000,
        reads in proptest::collection::vec(1usize..100_000, 1..4),
    ) {
        share_while_made(part_size, len, chunk, &reads);
    }
}

#[test]
fn an_entry_of_many_parts_is_shared_while_it_is_made() {
    share_while_made(4096, 1 << 20, 10_000, &[4096, 1, 100_000]);
}

/// Publishes `data` under `key` from a host of its own, and returns the prefix.
fn published(store: &Arc<dyn ObjectStore>, key: &str, data: &[u8], part_size: usize) -> String {
    let prefix = prefix("published");
    let a = host(remote(store, &prefix, part_size));
    let (mut s, _) = a
        .cache
        .lookup(key, crate::support::produce(data.to_vec()))
        .unwrap();
    let (got, result) = drain(&mut s);
    result.unwrap();
    assert!(got == data);
    a.cache.wait_uploaded();
    assert_eq!(a.cache.stats().remote_uploads, 1);
    prefix
}

#[test]
fn a_manifest_whose_digest_does_not_match_its_parts_is_never_served() {
    let store = S3Server::shared().store();
    let data = random_bytes(50_000);
    let prefix = published(&store, "k", &data, 8192);
    let names = objects(&store, &prefix);
    let manifest = names.iter().find(|n| n.ends_with("/manifest")).unwrap();
    let path = format!("{prefix}/{manifest}");
    let mut json: serde_json::Value = serde_json::from_slice(&get(&store, &path)).unwrap();
    // One part digest changed: the manifest's own digest no longer matches its parts.
    json["parts"][3] = serde_json::Value::String("0".repeat(64));
    put(&store, &path, serde_json::to_vec(&json).unwrap());

    let b = host(remote(&store, &prefix, 8192));
    let (mut s, _) = b
        .cache
        .lookup("k", crate::support::produce(b"made on B".to_vec()))
        .unwrap();
    let (got, result) = drain(&mut s);
    result.unwrap();
    assert_eq!(got, b"made on B", "B produced by itself");
    let stats = b.cache.stats();
    assert_eq!(
        (stats.remote_hits, stats.verification_failures),
        (0, 1),
        "{stats:?}"
    );
    // B published its own entry in place of the refused manifest.
    b.cache.wait_uploaded();
    assert_eq!(b.cache.stats().remote_uploads, 1);
}

#[test]
fn a_part_altered_or_resized_in_the_store_is_never_served() {
    let store = S3Server::shared().store();
    fn flip(bytes: &mut Vec<u8>) {
        bytes.as_mut_slice()[100] ^= 1;
    }
    fn grow(bytes: &mut Vec<u8>) {
        bytes.extend_from_slice(&[0; 1 << 20]);
    }
    for alter in [flip, grow] {
        let data = random_bytes(30_000);
        let prefix = published(&store, "k", &data, 8192);
        let part = objects(&store, &prefix)
            .into_iter()
            .find(|n| n.ends_with("/00000000"))
            .unwrap();
        let path = format!("{prefix}/{part}");
        let mut bytes = get(&store, &path);
        alter(&mut bytes);
        put(&store, &path, bytes);

        let b = host(remote(&store, &prefix, 8192));
        let (mut s, _) = b
            .cache
            .lookup("k", crate::support::produce(b"made on B".to_vec()))
            .unwrap();
        let (got, result) = drain(&mut s);
        result.unwrap();
        assert_eq!(got, b"made on B", "nothing of the altered part was served");
        let stats = b.cache.stats();
        assert_eq!(
            (stats.remote_hits, stats.verification_failures),
            (0, 1),
            "{stats:?}"
        );
    }
}

#[test]
fn a_stalled_upload_is_taken_over_and_nothing_of_it_is_served_or_committed() {
    let store = S3Server::shared().store();
    let prefix = prefix("stalled");
    // A host that died while producing: its lease and one part, never renewed.
    let b = host(remote(&store, &prefix, 4096).with_takeover_after(Duration::from_secs(1)));
    let key_dir = {
        let hex = blake3_hex("pack");
        format!("{prefix}/{}/{}", &hex[..2], &hex[2..])
    };
    let dead_part = vec![b'x'; 4096];
    put(
        &store,
        &format!("{key_dir}/parts/dead/00000000"),
        dead_part.clone(),
    );
    let lease = serde_json::json!({
        "version": 1, "key": "pack", "upload": "dead", "part_size": 4096,
        "parts": [blake3_hex_bytes(&dead_part)], "state": "writing", "beat": 7,
    });
    put(
        &store,
        &format!("{key_dir}/lease"),
        serde_json::to_vec(&lease).unwrap(),
    );

    let data = random_bytes(20_000);
    let (mut s, _) = b
        .cache
        .lookup("pack", crate::support::produce(data.clone()))
        .unwrap();
    let (got, result) = drain(&mut s);
    result.unwrap();
    assert!(
        got == data,
        "B served its own bytes, none of the dead upload"
    );
    b.cache.wait_uploaded();
    let stats = b.cache.stats();
    assert_eq!(
        (
            stats.remote_follows,
            stats.remote_takeovers,
            stats.remote_uploads
        ),
        (1, 1, 1),
        "{stats:?}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&get(&store, &format!("{key_dir}/manifest"))).unwrap();
    assert_ne!(
        manifest["upload"], "dead",
        "the dead upload was not committed"
    );
    assert_eq!(manifest["length"], 20_000);
}

#[test]
fn a_stopped_or_frozen_store_never_fails_a_lookup_and_is_counted() {
    let server = S3Server::start();
    let store = server.store();
    let a = host(remote(&store, "down", 4096).with_timeout(Duration::from_secs(1)));
    server.freeze();
    let (mut s, lookup) = a
        .cache
        .lookup("k1", crate::support::produce(b"one".to_vec()))
        .unwrap();
    assert_eq!(lookup, Lookup::Miss);
    let (got, result) = drain(&mut s);
    result.unwrap();
    assert_eq!(got, b"one");
    until(&a.cache, "the timeout is counted", |s| s.remote_errors >= 1);
    server.thaw();
    server.kill();
    // A new host (no memory of the failure) on the dead server.
    let b = host(remote(&store, "down", 4096).with_timeout(Duration::from_secs(1)));
    let (mut s, _) = b
        .cache
        .lookup("k2", crate::support::produce(b"two".to_vec()))
        .unwrap();
    let (got, result) = drain(&mut s);
    result.unwrap();
    assert_eq!(got, b"two");
    assert!(b.cache.stats().remote_errors >= 1, "{:?}", b.cache.stats());
}

fn blake3_hex(key: &str) -> String {
    blake3_hex_bytes(key.as_bytes())
}

fn blake3_hex_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn the_sweep_removes_expired_manifests_leases_and_parts_of_dead_uploads_and_keeps_live_ones() {
    let store = S3Server::shared().store();
    let prefix = prefix("sweep");
    let max_age = Duration::from_secs(5);
    let dir = TempCache::with(|cfg| {
        cfg.max_age = max_age;
        cfg.remote = Some(remote(&store, &prefix, 4096));
    });
    let cache = &dir.cache;
    // Sweeps run when this test says, not every max_age.
    cache.stop();
    let publish = |key: &str| {
        let (mut s, _) = cache
            .lookup(key, crate::support::produce(random_bytes(10_000)))
            .unwrap();
        drain(&mut s).1.unwrap();
        cache.wait_uploaded();
    };
    // Old: a published entry (manifest, 3 parts, lease) and a dead upload (lease, part).
    publish("old");
    let dead = format!("{prefix}/aa/{}", "b".repeat(62));
    put(&store, &format!("{dead}/lease"), b"{}".to_vec());
    put(&store, &format!("{dead}/parts/dead/00000000"), vec![1; 10]);
    assert_eq!(objects(&store, &prefix).len(), 7);
    // Past max_age and the manifest's grace (max_age again, for so short a max_age):
    // time passing is what this test is about.
    std::thread::sleep(max_age * 2 + Duration::from_secs(1));
    publish("new");
    let swept_before = cache.stats().remote_swept_objects;
    cache.run_maintenance();
    until(cache, "the sweep removed the 7 old objects", |s| {
        s.remote_swept_objects >= swept_before + 7
    });
    let left = objects(&store, &prefix);
    assert_eq!(
        left.len(),
        5,
        "the new entry's manifest, 3 parts and lease: {left:?}"
    );
    let new_dir = {
        let hex = blake3_hex("new");
        format!("{}/{}", &hex[..2], &hex[2..])
    };
    assert!(left.iter().all(|o| o.starts_with(&new_dir)), "{left:?}");
}
