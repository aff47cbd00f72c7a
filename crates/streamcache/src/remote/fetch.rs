//! Taking entries from the store: a committed manifest streamed into the local entry
//! (a remote hit), or another host's upload followed while it is made.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant, SystemTime};

use object_store::ObjectStoreExt;

use super::format::{LeaseState, Manifest};
use super::publish::{self, Claim, Seen};
use super::{bounded, Job, Names, Remote, RemoteError, MAX_SMALL_OBJECT};
use crate::runner::Producer;
use crate::writer::Writer;

/// The longest pause between two reads of a listed part the store says is not found
/// (50 ms doubling: about 1.5 s in all).
const NOT_FOUND_PATIENCE: Duration = Duration::from_millis(800);

/// How many failed requests in a row a follower lets pass (polling on) before it gives
/// the store up and produces itself.
const FOLLOW_PATIENCE: u32 = 5;

/// The first and the longest wait between two reads of a lease being followed.
const FIRST_POLL: Duration = Duration::from_millis(20);
const LAST_POLL: Duration = Duration::from_millis(500);

/// What the store holds for a key.
pub(super) enum Found {
    Manifest(Manifest),
    Nothing,
}

/// Reads the key's manifest. One that may not be served (expired, or damaged: then
/// counted) is removed, so that a new one can be committed, and the key is a miss.
pub(super) fn look(job: &Job, names: &Names) -> Result<Found, RemoteError> {
    let remote = &job.remote;
    let path = names.manifest();
    let got = match remote.call("read manifest", remote.store.get(&path)) {
        Ok(got) => got,
        Err(err) if err.is_not_found() => return Ok(Found::Nothing),
        Err(err) => return Err(err),
    };
    let refusal = if got.meta.size > MAX_SMALL_OBJECT {
        format!("manifest of {} bytes", got.meta.size)
    } else {
        let bytes = remote.call("read manifest", got.bytes())?;
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(manifest) => match manifest.refusal(&job.key, job.max_age, SystemTime::now()) {
                None => return Ok(Found::Manifest(manifest)),
                Some(why) => why,
            },
            Err(err) => format!("manifest is not one: {err}"),
        }
    };
    if refusal != "expired" {
        job.metrics.add_verification_failures(1);
        job.metrics.add_remote_errors(1);
        tracing::warn!(key = job.key, path = %path, "streamcache: shared tier: {refusal}; removing it");
    }
    if let Err(err) = remote.call("remove manifest", remote.store.delete(&path)) {
        tracing::debug!(error = %crate::error::Chain(&err), "streamcache: remove manifest");
    }
    Ok(Found::Nothing)
}

/// Downloads part `index` of `upload` and checks it against `digest` and its length:
/// `len` if known, else at most `max` (the last part listed by a lease may be short).
fn part(
    remote: &Remote,
    names: &Names,
    upload: &str,
    index: usize,
    digest: &str,
    len: Option<u64>,
    max: u64,
) -> tokio::task::JoinHandle<Result<bytes::Bytes, RemoteError>> {
    let store = std::sync::Arc::clone(&remote.store);
    let path = names.part(upload, index);
    let digest = digest.to_owned();
    let timeout = remote.timeout;
    remote.runtime.handle().spawn(async move {
        // A part a lease or a manifest lists was stored before it was listed; a store
        // that is not read-after-write consistent at every instant (SeaweedFS under
        // load, S3 gateways in front of replicas) may still answer "not found" for a
        // moment: asked again, a few times, with a growing pause.
        let mut pause = Duration::from_millis(50);
        let got = loop {
            match bounded("download part", timeout, store.get(&path)).await {
                Err(err) if err.is_not_found() && pause <= NOT_FOUND_PATIENCE => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                got => break got?,
            }
        };
        // Checked before the body is read: a damaged store cannot make us allocate
        // more than a part.
        let size = got.meta.size;
        if len.map_or(size > max, |len| len != size) {
            return Err(RemoteError::Refused {
                what: "part",
                why: format!("{path} holds {size} bytes, not {}", len.unwrap_or(max)),
            });
        }
        let bytes = bounded("download part", timeout, got.bytes()).await?;
        if bytes.len() as u64 != size {
            return Err(RemoteError::Refused {
                what: "part",
                why: format!("{path} sent {} bytes of {size}", bytes.len()),
            });
        }
        if blake3::hash(&bytes).to_hex().as_str() != digest {
            return Err(RemoteError::Refused {
                what: "part",
                why: format!("{path} does not match its digest"),
            });
        }
        Ok(bytes)
    })
}

/// Waits for a part download started by [`part`].
fn wait_part(
    remote: &Remote,
    download: tokio::task::JoinHandle<Result<bytes::Bytes, RemoteError>>,
) -> Result<bytes::Bytes, RemoteError> {
    remote
        .runtime
        .handle()
        .block_on(download)
        .unwrap_or_else(|join| {
            Err(RemoteError::Refused {
                what: "part",
                why: format!("download ended: {join}"),
            })
        })
}

/// A remote hit: streams `manifest`'s parts into `w`, the next part downloading while
/// one is written. Each part is checked before its first byte is written; if the store
/// fails before anything was written, the producer runs instead.
pub(super) fn serve(
    job: &Job,
    names: &Names,
    manifest: &Manifest,
    w: &mut Writer,
    producer: Producer,
) -> io::Result<()> {
    let remote = &job.remote;
    let start = |index: usize| {
        part(
            remote,
            names,
            &manifest.upload,
            index,
            &manifest.parts[index],
            Some(manifest.part_len(index)),
            manifest.part_size,
        )
    };
    let mut next = (!manifest.parts.is_empty()).then(|| start(0));
    let mut written = 0u64;
    for index in 0..manifest.parts.len() {
        let Some(download) = next.take() else { break };
        next = (index + 1 < manifest.parts.len()).then(|| start(index + 1));
        match wait_part(remote, download) {
            Ok(bytes) => {
                w.write_all(&bytes)?;
                written += bytes.len() as u64;
                job.metrics.add_remote_downloaded_bytes(bytes.len() as u64);
            }
            Err(err) => {
                if let Some(next) = next {
                    next.abort();
                }
                job.failed(&err);
                if err.is_damage() {
                    let _ = remote.call("remove manifest", remote.store.delete(&names.manifest()));
                }
                if written == 0 {
                    return producer(w);
                }
                return Err(io::Error::other(format!(
                    "shared tier failed after {written} bytes: {}",
                    crate::error::Chain(&err)
                )));
            }
        }
    }
    job.metrics.add_remote_hits(1);
    Ok(())
}

/// What the follower has downloaded of one upload, in an unnamed local file, not
/// served yet.
struct Staged {
    file: File,
    upload: String,
    parts: Vec<String>,
}

impl Staged {
    /// Downloads the parts of `upload` listed in `digests` that are not staged yet.
    fn catch_up(
        &mut self,
        job: &Job,
        names: &Names,
        upload: &str,
        digests: &[String],
        part_size: u64,
    ) -> Result<(), RemoteError> {
        let local = |source| RemoteError::Local {
            what: "stage part",
            source,
        };
        if upload != self.upload || !digests.starts_with(&self.parts) {
            // Another upload now (a takeover): start again.
            self.file.set_len(0).map_err(local)?;
            self.file.seek(SeekFrom::Start(0)).map_err(local)?;
            self.upload = upload.to_owned();
            self.parts.clear();
        }
        for index in self.parts.len()..digests.len() {
            let bytes = wait_part(
                &job.remote,
                part(
                    &job.remote,
                    names,
                    upload,
                    index,
                    &digests[index],
                    Some(part_size).filter(|_| index + 1 < digests.len()),
                    part_size,
                ),
            )?;
            self.file.write_all(&bytes).map_err(local)?;
            job.metrics.add_remote_downloaded_bytes(bytes.len() as u64);
            self.parts.push(digests[index].clone());
        }
        Ok(())
    }

    /// Copies what was staged into `w`, once the manifest has confirmed all of it.
    fn serve(mut self, w: &mut Writer) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => w.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Follows another host's upload of the key: downloads its parts as the lease lists
/// them, and serves them once the manifest commits them. A lease that does not change
/// for `takeover_after`, or is given up, is taken over and this host produces.
pub(super) fn follow(
    mut job: Job,
    names: &Names,
    seen: Seen,
    w: &mut Writer,
    mut producer: Producer,
) -> io::Result<()> {
    job.metrics.add_remote_follows(1);
    let file = match tempfile::tempfile_in(&job.staging) {
        Ok(file) => file,
        Err(source) => {
            job.failed(&RemoteError::Local {
                what: "staging file",
                source,
            });
            return producer(w);
        }
    };
    let mut staged = Staged {
        file,
        upload: String::new(),
        parts: Vec::new(),
    };
    let mut seen = seen;
    let mut changed = Instant::now();
    let mut poll = FIRST_POLL;
    // Failed requests in a row: a follower rides out a short outage of the store.
    let mut blips = 0u32;
    loop {
        let mut take_over_now = false;
        match &seen.body {
            Some(body) if body.key == job.key => {
                if let Err(err) = staged.catch_up(
                    &job,
                    names,
                    &body.upload.clone(),
                    &body.parts.clone(),
                    body.part_size,
                ) {
                    if err.is_damage() {
                        // A part that does not match what its lease says: that upload
                        // is not to be trusted.
                        job.failed(&err);
                        take_over_now = true;
                    } else if blips >= FOLLOW_PATIENCE {
                        job.failed(&err);
                        return producer(w);
                    } else {
                        blips += 1;
                        tracing::debug!(key = job.key, error = %crate::error::Chain(&err), "streamcache: shared tier: following on after an error");
                    }
                } else {
                    blips = 0;
                }
                match body.state {
                    LeaseState::Done => return finish(job, names, &seen, staged, w, producer),
                    LeaseState::Abandoned => take_over_now = true,
                    LeaseState::Writing => {}
                }
            }
            // Not a lease we can read: nobody follows it, so take it.
            _ => take_over_now = true,
        }
        if take_over_now || changed.elapsed() >= job.remote.takeover_after {
            match take_over(job, names, &seen, w, producer) {
                TakeOver::Done(result) => return result,
                TakeOver::Lost(back) => {
                    job = back.0;
                    producer = back.1;
                }
            }
        }
        std::thread::sleep(poll);
        poll = (poll * 2).min(LAST_POLL);
        match publish::read(&job.remote, names) {
            Ok(Some(now)) => {
                if now.version != seen.version {
                    changed = Instant::now();
                    poll = FIRST_POLL;
                }
                seen = now;
            }
            Ok(None) => {
                // The lease went (the sweep): start over.
                return match look(&job, names) {
                    Ok(Found::Manifest(manifest)) => serve(&job, names, &manifest, w, producer),
                    Ok(Found::Nothing) => match publish::claim(&job, names) {
                        Ok(Claim::Won(lease)) => job.produce(names, lease, w, producer),
                        Ok(Claim::Held(seen)) => follow(job, names, seen, w, producer),
                        Err(err) => {
                            job.failed(&err);
                            producer(w)
                        }
                    },
                    Err(err) => {
                        job.failed(&err);
                        producer(w)
                    }
                };
            }
            Err(err) if blips < FOLLOW_PATIENCE => {
                blips += 1;
                tracing::debug!(key = job.key, error = %crate::error::Chain(&err), "streamcache: shared tier: following on after an error");
            }
            Err(err) => {
                job.failed(&err);
                return producer(w);
            }
        }
    }
}

/// What trying to take a lease over did.
enum TakeOver {
    /// Taken (or the store failed): the entry was filled, this is the result.
    Done(io::Result<()>),
    /// Another host changed the lease first: follow on.
    Lost(Box<(Job, Producer)>),
}

/// Takes over the lease `seen` and produces (or serves a manifest committed just
/// before the lease stalled).
fn take_over(job: Job, names: &Names, seen: &Seen, w: &mut Writer, producer: Producer) -> TakeOver {
    match publish::take_over(&job, names, seen) {
        Ok(lease) => {
            job.metrics.add_remote_takeovers(1);
            tracing::info!(
                key = job.key,
                "streamcache: shared tier: took over a stalled lease"
            );
            TakeOver::Done(match look(&job, names) {
                Ok(Found::Manifest(manifest)) => serve(&job, names, &manifest, w, producer),
                _ => job.produce(names, lease, w, producer),
            })
        }
        Err(err) if err.is_precondition() || err.is_not_found() => {
            TakeOver::Lost(Box::new((job, producer)))
        }
        Err(err) => {
            job.failed(&err);
            TakeOver::Done(producer(w))
        }
    }
}

/// The followed upload is done: serve what was staged if the manifest commits exactly
/// that upload (after fetching its last parts), else serve the manifest from the store.
/// A lease that says done with no manifest behind it (expired and swept) is taken over.
fn finish(
    job: Job,
    names: &Names,
    seen: &Seen,
    mut staged: Staged,
    w: &mut Writer,
    producer: Producer,
) -> io::Result<()> {
    let manifest = match look(&job, names) {
        Ok(Found::Manifest(manifest)) => manifest,
        Ok(Found::Nothing) => {
            return match take_over(job, names, seen, w, producer) {
                TakeOver::Done(result) => result,
                // Someone else took it meanwhile: produce here, unpublished.
                TakeOver::Lost(back) => {
                    let (_job, producer) = *back;
                    producer(w)
                }
            };
        }
        Err(err) => {
            job.failed(&err);
            return producer(w);
        }
    };
    if manifest.upload != staged.upload || !manifest.parts.starts_with(&staged.parts) {
        return serve(&job, names, &manifest, w, producer);
    }
    let upload = manifest.upload.clone();
    if let Err(err) = staged.catch_up(&job, names, &upload, &manifest.parts, manifest.part_size) {
        job.failed(&err);
        return serve(&job, names, &manifest, w, producer);
    }
    let staged_len = staged.file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    if staged_len != manifest.length {
        job.failed(&RemoteError::Refused {
            what: "follow",
            why: format!(
                "staged {staged_len} bytes, the manifest says {}",
                manifest.length
            ),
        });
        return serve(&job, names, &manifest, w, producer);
    }
    job.metrics.add_remote_hits(1);
    staged.serve(w)
}
