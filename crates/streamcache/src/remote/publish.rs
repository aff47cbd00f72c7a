//! Producing for the other hosts: the lease, and the upload of an entry's bytes in
//! parts while they are written, committed by a conditional create of the manifest.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::format::{upload_id, LeaseBody, LeaseState, Manifest};
use super::{bounded, Job, Names, Remote, RemoteError, MAX_SMALL_OBJECT};
use crate::stream::Stream;

/// What creating the lease found.
pub(super) enum Claim {
    /// This host holds the lease: it produces.
    Won(Lease),
    /// Another host does: follow it.
    Held(Seen),
}

/// Another host's lease, as last read.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    /// `None` if the object is not a lease this version can read (taken over at once).
    pub(super) body: Option<LeaseBody>,
    pub(super) version: UpdateVersion,
}

/// The lease this host holds on a key: renewed with conditional updates, so that a
/// host that took it over makes every later renewal fail.
pub(super) struct Lease {
    path: object_store::path::Path,
    held: tokio::sync::Mutex<Held>,
    lost: AtomicBool,
}

struct Held {
    body: LeaseBody,
    version: UpdateVersion,
}

impl Lease {
    fn new(path: object_store::path::Path, body: LeaseBody, version: UpdateVersion) -> Lease {
        Lease {
            path,
            held: tokio::sync::Mutex::new(Held { body, version }),
            lost: AtomicBool::new(false),
        }
    }

    pub(super) async fn upload(&self) -> String {
        self.held.lock().await.body.upload.clone()
    }

    /// Changes the lease with `change` and bumps its beat, if it is still ours.
    async fn update(
        &self,
        remote: &Remote,
        change: impl FnOnce(&mut LeaseBody),
    ) -> Result<(), RemoteError> {
        let mut held = self.held.lock().await;
        if self.lost.load(Ordering::Acquire) {
            return Err(lost());
        }
        let mut body = held.body.clone();
        change(&mut body);
        body.beat += 1;
        let options = PutOptions {
            mode: PutMode::Update(held.version.clone()),
            ..PutOptions::default()
        };
        let put = remote.store.put_opts(&self.path, to_json(&body), options);
        match bounded("renew lease", remote.timeout, put).await {
            Ok(result) => {
                held.version = UpdateVersion::from(result);
                held.body = body;
                Ok(())
            }
            Err(err) if err.is_precondition() || err.is_not_found() => {
                self.lost.store(true, Ordering::Release);
                Err(lost())
            }
            Err(err) => Err(err),
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

fn lost() -> RemoteError {
    RemoteError::Refused {
        what: "lease",
        why: "taken over by another host".into(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> PutPayload {
    // Serialising these plain structs cannot fail.
    PutPayload::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Creates the lease of the key, or reads the one that is there.
pub(super) fn claim(job: &Job, names: &Names) -> Result<Claim, RemoteError> {
    let remote = &job.remote;
    let path = names.lease();
    // Twice: a lease may be removed between our create and our read (the sweep).
    for _ in 0..2 {
        let body = LeaseBody::new(&job.key, &upload_id(), remote.part_size as u64);
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match remote.call(
            "create lease",
            remote.store.put_opts(&path, to_json(&body), options),
        ) {
            Ok(result) => {
                return Ok(Claim::Won(Lease::new(path, body, result.into())));
            }
            Err(err) if err.is_precondition() => {}
            Err(err) => return Err(err),
        }
        if let Some(seen) = read(remote, names)? {
            return Ok(Claim::Held(seen));
        }
    }
    Err(RemoteError::Refused {
        what: "lease",
        why: "it exists and does not".into(),
    })
}

/// Reads the lease of the key; `None` if there is none.
pub(super) fn read(remote: &Remote, names: &Names) -> Result<Option<Seen>, RemoteError> {
    let path = names.lease();
    let got = remote.call("read lease", async {
        let got = remote.store.get(&path).await?;
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        // Not read if too large: an unreadable lease, taken over.
        if got.meta.size > MAX_SMALL_OBJECT {
            return Ok((version, None));
        }
        Ok((version, Some(got.bytes().await?)))
    });
    match got {
        Ok((version, bytes)) => Ok(Some(Seen {
            body: bytes.and_then(|bytes| serde_json::from_slice(&bytes).ok()),
            version,
        })),
        Err(err) if err.is_not_found() => Ok(None),
        Err(err) => Err(err),
    }
}

/// Takes over the lease `seen` (it stopped changing, or was given up): a conditional
/// update, which fails if anyone changed it since it was read.
pub(super) fn take_over(job: &Job, names: &Names, seen: &Seen) -> Result<Lease, RemoteError> {
    let remote = &job.remote;
    let path = names.lease();
    let body = LeaseBody::new(&job.key, &upload_id(), remote.part_size as u64);
    let options = PutOptions {
        mode: PutMode::Update(seen.version.clone()),
        ..PutOptions::default()
    };
    let result = remote.call(
        "take over lease",
        remote.store.put_opts(&path, to_json(&body), options),
    )?;
    Ok(Lease::new(path, body, result.into()))
}

/// Aborts the renewals when the upload ends, however it ends.
struct Renewals(tokio::task::AbortHandle);

impl Drop for Renewals {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the upload of the entry `job` produces, holding `lease`: a pool thread reads
/// the entry as one more reader and uploads it part by part, and the tier's runtime
/// renews the lease every quarter of the takeover time.
pub(super) fn start(mut job: Job, names: Names, lease: Lease) {
    let lease = Arc::new(lease);
    let Some(stream) = job.upload.take() else {
        give_up(&job, &names, &lease, 0);
        return;
    };
    let underway = job.uploads.enter();
    let period = job.remote.takeover_after / 4;
    let renewals = {
        let lease = Arc::clone(&lease);
        let remote = job.remote.clone();
        let task = job.remote.runtime.handle().spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match lease.update(&remote, |_| {}).await {
                    Ok(()) => {}
                    Err(_) if lease.is_lost() => return,
                    // A renewal that failed is tried again next period; if the store
                    // stays away, another host takes over, and our next update fails.
                    Err(err) => tracing::debug!(error = %crate::error::Chain(&err), "streamcache: renew lease"),
                }
            }
        });
        Renewals(task.abort_handle())
    };
    let created = SystemTime::now();
    let started = crate::pool::run(move || {
        let _underway = underway;
        let _renewals = renewals;
        upload(&job, &names, &lease, stream, created);
    });
    if let Err(err) = started {
        tracing::warn!(error = %err, "streamcache: no thread to upload an entry; other hosts will take it over");
    }
}

/// Uploads the entry read through `stream`, then commits its manifest.
fn upload(job: &Job, names: &Names, lease: &Lease, mut stream: Stream, created: SystemTime) {
    let remote = &job.remote;
    let upload = remote.runtime.handle().block_on(lease.upload());
    let part_size = remote.part_size;
    let mut digests = Vec::new();
    let mut length = 0u64;
    loop {
        let mut part = vec![0u8; part_size];
        let n = match fill(&mut stream, &mut part) {
            Ok(n) => n,
            Err(err) => {
                // The producer failed (its readers get the error): nothing to publish.
                tracing::debug!(key = job.key, error = %err, "streamcache: entry not uploaded");
                give_up(job, names, lease, digests.len());
                return;
            }
        };
        if n > 0 {
            part.truncate(n);
            let digest = blake3::hash(&part).to_hex().to_string();
            let path = names.part(&upload, digests.len());
            let stored = remote
                .call(
                    "upload part",
                    remote.store.put(&path, PutPayload::from(part)),
                )
                .and_then(|_| {
                    let digest = digest.clone();
                    remote
                        .runtime
                        .handle()
                        .block_on(lease.update(remote, move |body| body.parts.push(digest)))
                });
            // Counted as soon as the part is stored, even if the lease is lost next.
            digests.push(digest);
            if let Err(err) = stored {
                failed(job, &err);
                give_up(job, names, lease, digests.len());
                return;
            }
            job.metrics.add_remote_uploaded_bytes(n as u64);
            length += n as u64;
        }
        if n < part_size {
            break;
        }
    }
    drop(stream);
    // Still ours? Then commit; the manifest's conditional create decides between
    // hosts that both finished.
    let commit = remote
        .runtime
        .handle()
        .block_on(lease.update(remote, |_| {}))
        .and_then(|()| {
            let manifest = Manifest::new(
                &job.key,
                &upload,
                length,
                part_size as u64,
                digests.clone(),
                created,
            );
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            remote.call(
                "commit manifest",
                remote
                    .store
                    .put_opts(&names.manifest(), to_json(&manifest), options),
            )
        });
    match commit {
        Ok(_) => {
            job.metrics.add_remote_uploads(1);
            tracing::debug!(key = job.key, length, "streamcache: entry published");
            let done = remote
                .runtime
                .handle()
                .block_on(lease.update(remote, |body| body.state = LeaseState::Done));
            if let Err(err) = done {
                tracing::debug!(error = %crate::error::Chain(&err), "streamcache: mark lease done");
            }
        }
        Err(err) if err.is_precondition() && !lease.is_lost() => {
            // Another host committed first: ours is not needed.
            tracing::debug!(
                key = job.key,
                "streamcache: entry published by another host first"
            );
            remove_parts(remote, names, &upload, digests.len());
            let _ = remote
                .runtime
                .handle()
                .block_on(lease.update(remote, |body| body.state = LeaseState::Done));
        }
        Err(err) => {
            if !lease.is_lost() {
                failed(job, &err);
            }
            give_up(job, names, lease, digests.len());
        }
    }
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn fill(stream: &mut Stream, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn failed(job: &Job, err: &RemoteError) {
    job.metrics.add_remote_errors(1);
    tracing::warn!(key = job.key, error = %crate::error::Chain(err), "streamcache: shared tier: entry not published");
}

/// Gives the upload up: the lease says so (if it is still ours, so that followers take
/// over at once), and its `parts` parts go.
fn give_up(job: &Job, names: &Names, lease: &Lease, parts: usize) {
    let remote = &job.remote;
    let upload = remote.runtime.handle().block_on(lease.upload());
    if !lease.is_lost() {
        let marked = remote
            .runtime
            .handle()
            .block_on(lease.update(remote, |body| body.state = LeaseState::Abandoned));
        if let Err(err) = marked {
            tracing::debug!(error = %crate::error::Chain(&err), "streamcache: mark lease abandoned");
        }
    }
    remove_parts(remote, names, &upload, parts);
}

/// Removes the first `count` parts of `upload`, best effort (the sweep removes what is
/// left).
fn remove_parts(remote: &Remote, names: &Names, upload: &str, count: usize) {
    for index in 0..count {
        let path = names.part(upload, index);
        if let Err(err) = remote.call("remove part", remote.store.delete(&path)) {
            tracing::debug!(error = %crate::error::Chain(&err), "streamcache: remove part");
            return;
        }
    }
}
