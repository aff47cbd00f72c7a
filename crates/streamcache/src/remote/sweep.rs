//! Expiry in the store: manifests past `max_age` (plus a grace for downloads that began
//! just before), leases and the parts of uploads that no manifest commits, once older
//! than `max_age`. Run by each host's maintenance, one sweep at a time; hosts sweeping
//! at once only remove the same objects twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt};

use super::format::Manifest;
use super::{Remote, RemoteError};
use crate::metrics::Metrics;

/// How much longer than `max_age` a manifest stays in the store: a host that found it
/// just before it expired has this long to download it (or `max_age`, if shorter).
const GRACE: Duration = Duration::from_secs(5 * 60);

/// Runs sweeps of the store in the background, one at a time.
#[derive(Debug, Default)]
pub(crate) struct Sweeper {
    running: Arc<AtomicBool>,
}

impl Sweeper {
    /// Starts a sweep on a pool thread, unless one is running.
    pub(crate) fn start(&self, remote: &Remote, max_age: Duration, metrics: &Arc<Metrics>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Arc::clone(&self.running);
        let remote = remote.clone();
        let metrics = Arc::clone(metrics);
        let started = crate::pool::run(move || {
            struct Done(Arc<AtomicBool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(running);
            match sweep(&remote, max_age, SystemTime::now()) {
                Ok(removed) => metrics.add_remote_swept_objects(removed),
                Err(err) => {
                    metrics.add_remote_errors(1);
                    tracing::warn!(error = %crate::error::Chain(&err), "streamcache: sweep of the shared tier");
                }
            }
        });
        if started.is_err() {
            self.running.store(false, Ordering::Release);
        }
    }
}

/// The objects of one key.
#[derive(Default)]
struct Key {
    manifest: Option<ObjectMeta>,
    lease: Option<ObjectMeta>,
    /// Parts by upload.
    parts: HashMap<String, Vec<ObjectMeta>>,
}

/// Removes what has expired below the tier's prefix; returns how many objects went.
pub(crate) fn sweep(
    remote: &Remote,
    max_age: Duration,
    now: SystemTime,
) -> Result<u64, RemoteError> {
    let objects: Vec<ObjectMeta> = remote.call_long("list", async {
        remote.store.list(Some(&remote.prefix)).try_collect().await
    })?;
    let depth = remote.prefix.parts().count();
    let mut keys: HashMap<(String, String), Key> = HashMap::new();
    for meta in objects {
        let parts: Vec<String> = meta
            .location
            .parts()
            .skip(depth)
            .map(|p| p.as_ref().to_owned())
            .collect();
        match parts.as_slice() {
            [fan, hash, name] if name == "manifest" => {
                keys.entry((fan.clone(), hash.clone()))
                    .or_default()
                    .manifest = Some(meta);
            }
            [fan, hash, name] if name == "lease" => {
                keys.entry((fan.clone(), hash.clone())).or_default().lease = Some(meta);
            }
            [fan, hash, dir, upload, _] if dir == "parts" => {
                keys.entry((fan.clone(), hash.clone()))
                    .or_default()
                    .parts
                    .entry(upload.clone())
                    .or_default()
                    .push(meta);
            }
            // Not ours: left alone.
            _ => {}
        }
    }
    let old = |meta: &ObjectMeta, age: Duration| {
        let modified = SystemTime::from(meta.last_modified);
        now.duration_since(modified).is_ok_and(|d| d > age)
    };
    let mut doomed: Vec<ObjectPath> = Vec::new();
    for key in keys.into_values() {
        let mut committed = None;
        if let Some(manifest) = &key.manifest {
            if old(manifest, max_age + GRACE.min(max_age)) {
                doomed.push(manifest.location.clone());
            } else {
                let read = remote.call("read manifest", async {
                    remote.store.get(&manifest.location).await?.bytes().await
                });
                committed = read
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
                    .map(|m| m.upload);
            }
        }
        if let Some(lease) = &key.lease {
            if old(lease, max_age) {
                doomed.push(lease.location.clone());
            }
        }
        for (upload, parts) in key.parts {
            if committed.as_deref() == Some(upload.as_str()) {
                continue;
            }
            doomed.extend(
                parts
                    .into_iter()
                    .filter(|p| old(p, max_age))
                    .map(|p| p.location),
            );
        }
    }
    let mut removed = 0;
    for path in doomed {
        match remote.call("remove expired object", remote.store.delete(&path)) {
            Ok(()) => removed += 1,
            Err(err) if err.is_not_found() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(removed)
}
