//! Settings: embedded defaults, the optional TOML file, and flags, in that order of
//! precedence (flags win).
//!
//! This is the one settings form of the project: the library takes a plain
//! `streamcache::Config`, and the cache's keys here (`dir`, `max_age`,
//! `min_occurrences`, `backpressure`) are checked as the reference checks its `[cache]`
//! table, in its order: `max_age` first (negative, then unreadable), then `dir` (none
//! and nowhere to derive one from, then relative). Paths in the file must be absolute,
//! since a file has no working directory; paths given as flags are taken from the
//! working directory, as a shell user expects.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::allow::{AllowList, DEFAULT_RULES};
use crate::queue::{CommandLimits, QueueFull};
use crate::wire::request::Limits;

/// The default min-occurrences of the daemon. See `docs/DAEMON.md`: a clone storm's
/// first burst should share one producer, which admission after the first occurrence
/// would split in two.
pub(crate) const DEFAULT_MIN_OCCURRENCES: u32 = 0;
/// How long a client has to send its whole request.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are turned away (the clients run their commands
/// themselves). Each costs a thread and, while its request is read, up to 5 MiB.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long a stopping daemon lets streams in flight finish: long, because a full clone
/// of a large repository takes minutes, and a restart must break none.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);
/// The free-space guard a daemon starts with: keep this share of the cache's file
/// system free. A host is protected out of the box; `min_free = 0` turns it off.
pub(crate) const DEFAULT_MIN_FREE: MinFree = MinFree::Percent(5.0);
/// How long a miss waits in line for a command slot before its clients are answered
/// busy (only with `max_commands` or `max_commands_per_dir`).
pub(crate) const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_secs(60);

/// The TOML file, as written. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FileSettings {
    pub(crate) socket: Option<PathBuf>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) max_age: Option<String>,
    pub(crate) min_occurrences: Option<u32>,
    pub(crate) backpressure: Option<bool>,
    pub(crate) durable: Option<bool>,
    pub(crate) metrics_listen: Option<String>,
    pub(crate) allow: Option<Vec<String>>,
    pub(crate) grace: Option<String>,
    pub(crate) producer_timeout: Option<String>,
    pub(crate) request_timeout: Option<String>,
    pub(crate) max_stdin: Option<u64>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) log_level: Option<String>,
    pub(crate) daemon_user: Option<String>,
    pub(crate) max_disk: Option<Size>,
    pub(crate) min_free: Option<Size>,
    pub(crate) max_lead: Option<Size>,
    pub(crate) max_commands: Option<usize>,
    pub(crate) max_commands_per_dir: Option<usize>,
    pub(crate) max_queue_wait: Option<String>,
    pub(crate) queue_full: Option<String>,
    pub(crate) allow_users: Option<Vec<String>>,
    pub(crate) allow_groups: Option<Vec<String>>,
    pub(crate) remote: Option<String>,
    pub(crate) remote_part_size: Option<Size>,
    pub(crate) remote_takeover: Option<String>,
    pub(crate) remote_timeout: Option<String>,
}

/// A size in the file: a number of bytes, or text with a unit (`"10GiB"`, `"5%"`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn text(self) -> String {
        match self {
            Size::Bytes(n) => n.to_string(),
            Size::Text(text) => text,
        }
    }
}

/// The unit the disk limits are kept in: file systems allocate whole pages (blocks),
/// and so does the library's budget. A guard or a budget that is not a whole number
/// of pages would let a file's last, partial page pass it.
pub(crate) const PAGE: u64 = 4096;

/// The free-space guard as configured: bytes, or a share of the file system, which
/// [`MinFree::bytes_on`] turns into bytes at start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MinFree {
    Bytes(u64),
    Percent(f64),
}

impl MinFree {
    /// The bytes to keep free on the file system of `dir`, rounded up to whole pages.
    ///
    /// # Errors
    ///
    /// If a percentage was given and `statvfs(dir)` fails.
    pub(crate) fn bytes_on(self, dir: &Path) -> anyhow::Result<u64> {
        let bytes = match self {
            MinFree::Bytes(n) => n,
            MinFree::Percent(pct) => {
                let st = rustix::fs::statvfs(dir).with_context(|| {
                    format!(
                        "min_free: cannot measure the file system of {}",
                        dir.display()
                    )
                })?;
                let size = st.f_blocks.saturating_mul(st.f_frsize);
                (size as f64 * pct / 100.0) as u64
            }
        };
        Ok(bytes.div_ceil(PAGE).saturating_mul(PAGE))
    }
}

impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinFree::Bytes(n) => write!(f, "{n}"),
            MinFree::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

impl FileSettings {
    /// Reads and parses `path`.
    pub(crate) fn load(path: &Path) -> anyhow::Result<FileSettings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        FileSettings::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> anyhow::Result<FileSettings> {
        Ok(toml::from_str(text)?)
    }

    /// The file given with `--config`, else the default file if it exists.
    pub(crate) fn find(explicit: Option<&Path>) -> anyhow::Result<(FileSettings, Option<PathBuf>)> {
        if let Some(path) = explicit {
            return Ok((FileSettings::load(path)?, Some(path.to_path_buf())));
        }
        match default_config_file() {
            Some(path) if path.exists() => Ok((FileSettings::load(&path)?, Some(path))),
            _ => Ok((FileSettings::default(), None)),
        }
    }
}

/// `serve`'s flags that override the file. `None`/empty means "not given".
#[derive(Debug, Default, Clone)]
pub(crate) struct ServeFlags {
    pub(crate) socket: Option<PathBuf>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) max_age: Option<String>,
    pub(crate) min_occurrences: Option<u32>,
    pub(crate) no_backpressure: bool,
    pub(crate) no_durable: bool,
    /// Take the socket over from a live daemon (see `socket::bind_or_replace`).
    pub(crate) replace: bool,
    pub(crate) metrics_listen: Option<String>,
    pub(crate) allow: Vec<String>,
    pub(crate) grace: Option<String>,
    pub(crate) producer_timeout: Option<String>,
    pub(crate) request_timeout: Option<String>,
    pub(crate) max_stdin: Option<u64>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) log_level: Option<String>,
    pub(crate) daemon_user: Option<String>,
    pub(crate) max_disk: Option<String>,
    pub(crate) min_free: Option<String>,
    pub(crate) max_lead: Option<String>,
    pub(crate) max_commands: Option<usize>,
    pub(crate) max_commands_per_dir: Option<usize>,
    pub(crate) max_queue_wait: Option<String>,
    pub(crate) queue_full: Option<String>,
    pub(crate) allow_users: Vec<String>,
    pub(crate) allow_groups: Vec<String>,
    pub(crate) remote: Option<String>,
    pub(crate) remote_part_size: Option<String>,
    pub(crate) remote_takeover: Option<String>,
    pub(crate) remote_timeout: Option<String>,
}

/// The shared tier on object storage (`remote = "s3://bucket/prefix"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteSettings {
    /// As written, for the logs and `stats`.
    pub(crate) url: String,
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) part_size: usize,
    pub(crate) takeover: Duration,
    pub(crate) timeout: Duration,
}

impl RemoteSettings {
    fn parse(
        url: &str,
        part_size: Option<String>,
        takeover: Option<String>,
        timeout: Option<String>,
    ) -> anyhow::Result<RemoteSettings> {
        let Some(rest) = url.strip_prefix("s3://") else {
            bail!("remote: {url:?} is not an s3:// URL (s3://bucket/prefix)");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("remote: {url:?} names no bucket (s3://bucket/prefix)");
        }
        let part_size = match part_size {
            Some(text) => {
                let n = size("remote_part_size", &text)?;
                if !(4096..=1 << 30).contains(&n) {
                    bail!("remote_part_size: {text:?} is not between 4KiB and 1GiB");
                }
                n as usize
            }
            None => streamcache::DEFAULT_PART_SIZE,
        };
        let takeover = match takeover {
            Some(text) => duration("remote_takeover", &text)?,
            None => streamcache::DEFAULT_TAKEOVER_AFTER,
        };
        if takeover.is_zero() {
            bail!("remote_takeover: must be more than zero");
        }
        let timeout = match timeout {
            Some(text) => duration("remote_timeout", &text)?,
            None => streamcache::DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            bail!("remote_timeout: must be more than zero");
        }
        Ok(RemoteSettings {
            url: url.to_owned(),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            part_size,
            takeover,
            timeout,
        })
    }

    /// The tier: an S3 client for the bucket, configured from the usual `AWS_*`
    /// variables (endpoint, region, credentials, `AWS_ALLOW_HTTP`), with requests
    /// bounded by the timeout and retried at most twice.
    pub(crate) fn tier(&self) -> anyhow::Result<streamcache::Remote> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        use object_store::ClientConfigKey;
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: self.timeout,
            ..Default::default()
        };
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                format!("{}ms", self.timeout.as_millis()),
            )
            .with_retry(retry)
            .build()
            .with_context(|| format!("remote: cannot set up {}", self.url))?;
        Ok(
            streamcache::Remote::new(std::sync::Arc::new(store), &self.prefix)
                .with_context(|| format!("remote: {}", self.url))?
                .with_part_size(self.part_size)
                .with_takeover_after(self.takeover)
                .with_timeout(self.timeout),
        )
    }
}

/// What the daemon runs with, every value resolved and checked.
#[derive(Debug, Clone)]
pub(crate) struct ServeSettings {
    pub(crate) socket: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) max_age: Duration,
    pub(crate) min_occurrences: u32,
    pub(crate) backpressure: bool,
    /// Finished entries survive restarts (see `streamcache::Config::durable`).
    pub(crate) durable: bool,
    /// Take the socket over from a live daemon of ours and tell it to stop.
    pub(crate) replace: bool,
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) allow: AllowList,
    pub(crate) grace: Duration,
    pub(crate) producer_timeout: Option<Duration>,
    pub(crate) request_timeout: Duration,
    pub(crate) limits: Limits,
    pub(crate) max_connections: usize,
    pub(crate) log_level: tracing::Level,
    /// The uid the daemon must run as, if the configuration names one.
    pub(crate) daemon_user: Option<u32>,
    /// The disk budget of the entries, if any.
    pub(crate) max_disk: Option<u64>,
    /// The free-space guard, resolved into bytes when the daemon starts.
    pub(crate) min_free: MinFree,
    /// How far a command may run ahead of its fastest reader, with back pressure.
    pub(crate) max_lead: u64,
    pub(crate) commands: CommandLimits,
    /// The shared tier, if any.
    pub(crate) remote: Option<RemoteSettings>,
    /// Who may use the daemon besides its own user and root.
    pub(crate) peers: crate::peers::Peers,
}

impl ServeSettings {
    /// Directory the library's entry files go in: a subdirectory, because the
    /// library's sweep removes every old file under its root (the socket too).
    pub(crate) fn entries_dir(&self) -> PathBuf {
        self.dir.join("entries")
    }

    /// Resolves the file and the flags into what the daemon runs with.
    ///
    /// # Errors
    ///
    /// The first value that is wrong, named by its key. The cache's keys are checked
    /// first, in the reference's order (see the module docs).
    pub(crate) fn resolve(file: FileSettings, flags: ServeFlags) -> anyhow::Result<ServeSettings> {
        let max_age = match flags.max_age.or(file.max_age) {
            Some(text) => duration("max_age", &text)?,
            None => streamcache::DEFAULT_MAX_AGE,
        };
        let dir = match (flags.dir, file.dir) {
            (Some(dir), _) => from_working_dir("dir", dir)?,
            (None, Some(dir)) => absolute_in_file("dir", dir)?,
            (None, None) => default_cache_dir()?,
        };
        let socket = match (flags.socket, file.socket) {
            (Some(socket), _) => from_working_dir("socket", socket)?,
            (None, Some(socket)) => absolute_in_file("socket", socket)?,
            (None, None) => default_socket(&dir),
        };
        let min_occurrences = flags
            .min_occurrences
            .or(file.min_occurrences)
            .unwrap_or(DEFAULT_MIN_OCCURRENCES);
        let backpressure = if flags.no_backpressure {
            false
        } else {
            file.backpressure.unwrap_or(true)
        };
        let durable = !flags.no_durable && file.durable.unwrap_or(true);
        let metrics_listen = match flags.metrics_listen.or(file.metrics_listen) {
            Some(text) if !text.is_empty() => Some(
                text.parse::<SocketAddr>()
                    .map_err(|e| anyhow::anyhow!("metrics_listen: {text:?}: {e}"))?,
            ),
            _ => None,
        };
        let rules: Vec<String> = if !flags.allow.is_empty() {
            flags.allow
        } else {
            file.allow
                .unwrap_or_else(|| DEFAULT_RULES.iter().map(|s| s.to_string()).collect())
        };
        // Bare names are resolved now, on the daemon's own PATH: see `allow`.
        let allow = AllowList::parse(&rules, std::env::var_os("PATH").as_deref())
            .map_err(|e| anyhow::anyhow!("allow: {e}"))?;
        let grace = match flags.grace.or(file.grace) {
            Some(text) => duration("grace", &text)?,
            None => DEFAULT_GRACE,
        };
        let producer_timeout = match flags.producer_timeout.or(file.producer_timeout) {
            Some(text) => Some(duration("producer_timeout", &text)?).filter(|d| !d.is_zero()),
            None => None,
        };
        let request_timeout = match flags.request_timeout.or(file.request_timeout) {
            Some(text) => duration("request_timeout", &text)?,
            None => DEFAULT_REQUEST_TIMEOUT,
        };
        if request_timeout.is_zero() {
            bail!("request_timeout: must be more than zero");
        }
        let mut limits = Limits::default();
        if let Some(max) = flags.max_stdin.or(file.max_stdin) {
            limits.max_stdin = max;
        }
        let max_connections = flags
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            bail!("max_connections: must be more than zero");
        }
        let log_level = match flags.log_level.or(file.log_level) {
            Some(text) => parse_level(&text)?,
            None => tracing::Level::INFO,
        };
        let daemon_user = match flags.daemon_user.or(file.daemon_user) {
            Some(text) => Some(user_id(&text)?),
            None => None,
        };
        let max_disk = match flags.max_disk.or(file.max_disk.map(Size::text)) {
            // Whole pages: see `PAGE`.
            Some(text) => match size("max_disk", &text)? {
                0 => None,
                n if n < PAGE => bail!("max_disk: {text:?} is less than a page (4KiB)"),
                n => Some(n / PAGE * PAGE),
            },
            None => None,
        };
        let min_free = match flags.min_free.or(file.min_free.map(Size::text)) {
            Some(text) => min_free(&text)?,
            None => DEFAULT_MIN_FREE,
        };
        let max_lead = match flags.max_lead.or(file.max_lead.map(Size::text)) {
            Some(text) => size("max_lead", &text)?,
            None => 0,
        };
        let max_queue_wait = match flags.max_queue_wait.or(file.max_queue_wait) {
            Some(text) => duration("max_queue_wait", &text)?,
            None => DEFAULT_MAX_QUEUE_WAIT,
        };
        let queue_full = match flags.queue_full.or(file.queue_full).as_deref() {
            None | Some("fail-open") => QueueFull::FailOpen,
            Some("refuse") => QueueFull::Refuse,
            Some(other) => {
                bail!("queue_full: {other:?} is not one of \"fail-open\", \"refuse\"")
            }
        };
        let commands = CommandLimits {
            max_commands: flags.max_commands.or(file.max_commands).filter(|&n| n > 0),
            max_commands_per_dir: flags
                .max_commands_per_dir
                .or(file.max_commands_per_dir)
                .filter(|&n| n > 0),
            max_queue_wait,
            queue_full,
        };
        let remote = match flags.remote.or(file.remote) {
            Some(url) if !url.is_empty() => Some(RemoteSettings::parse(
                &url,
                flags
                    .remote_part_size
                    .or(file.remote_part_size.map(Size::text)),
                flags.remote_takeover.or(file.remote_takeover),
                flags.remote_timeout.or(file.remote_timeout),
            )?),
            _ => None,
        };
        let users = if flags.allow_users.is_empty() {
            file.allow_users.unwrap_or_default()
        } else {
            flags.allow_users
        };
        let groups = if flags.allow_groups.is_empty() {
            file.allow_groups.unwrap_or_default()
        } else {
            flags.allow_groups
        };
        let peers = crate::peers::Peers::resolve(&users, &groups)?;
        let settings = ServeSettings {
            peers,
            remote,
            socket,
            dir,
            max_age,
            min_occurrences,
            backpressure,
            durable,
            replace: flags.replace,
            metrics_listen,
            allow,
            grace,
            producer_timeout,
            request_timeout,
            limits,
            max_connections,
            log_level,
            daemon_user,
            max_disk,
            min_free,
            max_lead,
            commands,
        };
        if settings.socket.starts_with(settings.entries_dir()) {
            bail!(
                "socket: {} is inside the entries directory {}, whose old files are swept",
                settings.socket.display(),
                settings.entries_dir().display()
            );
        }
        Ok(settings)
    }

    /// The library's configuration, with the free-space guard of `min_free_bytes`
    /// (see [`MinFree::bytes_on`]).
    /// (The shared tier is set apart: see [`RemoteSettings::tier`].)
    pub(crate) fn cache_config(&self, min_free_bytes: u64) -> streamcache::Config {
        let mut cfg = streamcache::Config::new(self.entries_dir());
        cfg.max_age = self.max_age;
        cfg.min_occurrences = self.min_occurrences;
        cfg.backpressure = self.backpressure;
        cfg.max_disk_bytes = self.max_disk;
        cfg.min_free_bytes = min_free_bytes;
        cfg.max_lead_bytes = self.max_lead;
        cfg.durable = self.durable;
        cfg
    }
}

pub(crate) fn parse_level(text: &str) -> anyhow::Result<tracing::Level> {
    text.parse::<tracing::Level>().map_err(|_| {
        anyhow::anyhow!("log_level: {text:?} is not one of error, warn, info, debug, trace")
    })
}

/// The uid of `daemon_user`: a user name, looked up as `getpwnam(3)` does, or a number.
pub(crate) fn user_id(text: &str) -> anyhow::Result<u32> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => bail!("daemon_user: no user named {text:?}"),
        Err(e) => bail!("daemon_user: cannot look up {text:?}: {e}"),
    }
}

/// A path given as a flag: relative to the working directory.
fn from_working_dir(field: &str, path: PathBuf) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir().with_context(|| format!("{field}: no working directory"))?;
    Ok(cwd.join(path))
}

/// A path written in the file: it must be absolute.
fn absolute_in_file(field: &str, path: PathBuf) -> anyhow::Result<PathBuf> {
    if !path.is_absolute() {
        bail!("{field}: must be an absolute path, got {path:?}");
    }
    Ok(path)
}

/// A duration such as `"30s"` or `"1h30m"`. A negative one is refused as such before
/// any parsing, so that the message says what is wrong.
fn duration(field: &str, text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    if text.starts_with('-') {
        bail!("{field}: cannot be negative, got {text:?}");
    }
    humantime::parse_duration(text).map_err(|e| {
        anyhow::anyhow!("{field}: {text:?} is not a duration like \"30s\" or \"5m\": {e}")
    })
}

/// A size such as `"512"`, `"64KiB"`, `"10 GB"` or `"1.5G"`: a number of bytes, with an
/// optional unit. `K`, `M`, `G`, `T` and `KiB` … `TiB` are powers of 1024; `KB` …
/// `TB` are powers of 1000 (as `df -H` counts); `B` is one. Case does not matter.
fn size(field: &str, text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    if text.starts_with('-') {
        bail!("{field}: cannot be negative, got {text:?}");
    }
    let bad = || anyhow::anyhow!("{field}: {text:?} is not a size like \"512MiB\" or \"10GB\"");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `min_free`: a size, or a percentage of the file system such as `"5%"`.
fn min_free(text: &str) -> anyhow::Result<MinFree> {
    let Some(number) = text.trim().strip_suffix('%') else {
        return Ok(MinFree::Bytes(size("min_free", text)?));
    };
    match number.trim().parse::<f64>() {
        Ok(pct) if (0.0..100.0).contains(&pct) => Ok(MinFree::Percent(pct)),
        _ => bail!("min_free: {text:?} is not a percentage from 0% to below 100%"),
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `$XDG_CACHE_HOME/streamcache`, else `~/.cache/streamcache`.
pub(crate) fn default_cache_dir() -> anyhow::Result<PathBuf> {
    cache_dir_in(env_path("XDG_CACHE_HOME"), env_path("HOME"))
}

/// The default cache directory given the (absolute) `XDG_CACHE_HOME` and `HOME`.
fn cache_dir_in(xdg_cache_home: Option<PathBuf>, home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match (xdg_cache_home, home) {
        (Some(xdg), _) => Ok(xdg.join("streamcache")),
        (None, Some(home)) => Ok(home.join(".cache").join("streamcache")),
        (None, None) => bail!("dir: cannot pick a default cache directory: neither XDG_CACHE_HOME nor HOME is set to an absolute path; set dir or pass --dir"),
    }
}

/// `$XDG_RUNTIME_DIR/streamcache.sock`, else `<cache dir>/streamcache.sock`.
pub(crate) fn default_socket(cache_dir: &Path) -> PathBuf {
    match env_path("XDG_RUNTIME_DIR") {
        Some(run) => run.join("streamcache.sock"),
        None => cache_dir.join("streamcache.sock"),
    }
}

/// `$XDG_CONFIG_HOME/streamcache/config.toml`, else `~/.config/streamcache/config.toml`.
pub(crate) fn default_config_file() -> Option<PathBuf> {
    env_path("XDG_CONFIG_HOME")
        .or_else(|| env_path("HOME").map(|h| h.join(".config")))
        .map(|c| c.join("streamcache").join("config.toml"))
}

/// What a client (`exec`, `stats`) needs to reach a daemon it may trust.
#[derive(Debug, Default)]
pub(crate) struct ClientSettings {
    /// Where the daemon listens, if that can be worked out.
    pub(crate) socket: Option<PathBuf>,
    /// The uid of the configured daemon user, trusted besides our own and root.
    pub(crate) daemon_user: Option<u32>,
}

/// The client's settings: the socket is the flag, `$STREAMCACHE_SOCKET`, the config
/// file's `socket`, or the default; the daemon user is the flag or the config file's
/// `daemon_user`. Never fails: what cannot be worked out is left out, with a note, and
/// the client fails open (or trusts only its own user and root).
pub(crate) fn client_settings(
    socket: Option<PathBuf>,
    daemon_user: Option<String>,
    notes: &mut Vec<String>,
) -> ClientSettings {
    let socket = socket.or_else(|| env_path("STREAMCACHE_SOCKET"));
    // The file is read only for what the flags and the environment left open.
    let file = if socket.is_some() && daemon_user.is_some() {
        FileSettings::default()
    } else {
        match default_config_file() {
            Some(path) if path.exists() => FileSettings::load(&path).unwrap_or_else(|e| {
                notes.push(format!("{e:#}"));
                FileSettings::default()
            }),
            _ => FileSettings::default(),
        }
    };
    let daemon_user = daemon_user
        .or(file.daemon_user)
        .and_then(|text| match user_id(&text) {
            Ok(uid) => Some(uid),
            Err(e) => {
                notes.push(format!("{e:#}"));
                None
            }
        });
    let socket = socket.or(file.socket).or_else(|| {
        let dir = match file.dir {
            Some(dir) => dir,
            None => default_cache_dir().ok()?,
        };
        Some(default_socket(&dir))
    });
    ClientSettings {
        socket,
        daemon_user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_documented_file_parses() {
        let file = FileSettings::parse(
            r#"
            socket = "/run/streamcache/streamcache.sock"
            dir = "/var/cache/streamcache"
            max_age = "5m"
            min_occurrences = 0
            backpressure = true
            metrics_listen = "127.0.0.1:9236"
            allow = ["git:pack-objects"]
            grace = "30s"
            producer_timeout = "1h"
            request_timeout = "30s"
            max_stdin = 67108864
            max_connections = 1024
            log_level = "info"
            daemon_user = "root"
            max_disk = "20GiB"
            min_free = "5%"
            max_lead = "4MiB"
            max_commands = 16
            max_commands_per_dir = 4
            max_queue_wait = "1m"
            queue_full = "fail-open"
            "#,
        )
        .unwrap();
        let s = ServeSettings::resolve(file, ServeFlags::default()).unwrap();
        assert_eq!(s.socket, PathBuf::from("/run/streamcache/streamcache.sock"));
        assert_eq!(
            s.entries_dir(),
            PathBuf::from("/var/cache/streamcache/entries")
        );
        assert_eq!(s.max_age, Duration::from_secs(300));
        assert_eq!(s.producer_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9236".parse().unwrap()));
        assert_eq!(s.limits.max_stdin, 64 << 20);
        assert_eq!(s.max_connections, 1024);
        assert_eq!(s.daemon_user, Some(0));
        assert_eq!(s.max_disk, Some(20 << 30));
        assert_eq!(s.min_free, MinFree::Percent(5.0));
        assert_eq!(s.max_lead, 4 << 20);
        assert_eq!(
            s.commands,
            CommandLimits {
                max_commands: Some(16),
                max_commands_per_dir: Some(4),
                max_queue_wait: Duration::from_secs(60),
                queue_full: QueueFull::FailOpen,
            }
        );
    }

    #[test]
    fn sizes_take_binary_and_decimal_units_and_plain_bytes() {
        for (text, bytes) in [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("64k", 64 << 10),
            ("64KiB", 64 << 10),
            ("64 KB", 64_000),
            ("1.5G", 3 << 29),
            ("1.5GiB", 3 << 29),
            ("10MB", 10_000_000),
            ("2T", 2 << 40),
        ] {
            assert_eq!(size("max_disk", text).unwrap(), bytes, "{text}");
        }
        for text in ["", "-1G", "ten", "5 parsecs", "1.2.3M", "5%"] {
            let err = size("max_disk", text).unwrap_err();
            assert!(
                format!("{err:#}").starts_with("max_disk: "),
                "{text}: {err:#}"
            );
        }
    }

    #[test]
    fn the_defaults_guard_five_percent_and_set_no_budget_and_no_command_limit() {
        let file = FileSettings::parse("dir = \"/srv/cache\"").unwrap();
        let s = ServeSettings::resolve(file, ServeFlags::default()).unwrap();
        assert_eq!(s.min_free, MinFree::Percent(5.0));
        assert_eq!(s.max_disk, None);
        assert_eq!(s.max_lead, 0);
        assert!(!s.commands.is_limited());
        assert_eq!(s.commands.max_queue_wait, DEFAULT_MAX_QUEUE_WAIT);
        assert_eq!(s.commands.queue_full, QueueFull::FailOpen);
    }

    #[test]
    fn min_free_is_a_size_or_a_percentage_resolved_on_the_file_system_of_the_dir() {
        assert_eq!(min_free("1GiB").unwrap(), MinFree::Bytes(1 << 30));
        assert_eq!(min_free("0").unwrap(), MinFree::Bytes(0));
        assert_eq!(min_free("2.5%").unwrap(), MinFree::Percent(2.5));
        for text in ["100%", "150%", "-5%", "five%"] {
            let err = min_free(text).unwrap_err();
            assert!(
                format!("{err:#}").starts_with("min_free: "),
                "{text}: {err:#}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let st = rustix::fs::statvfs(dir.path()).unwrap();
        let size = st.f_blocks * st.f_frsize;
        assert_eq!(
            MinFree::Percent(10.0).bytes_on(dir.path()).unwrap(),
            ((size as f64 * 0.1) as u64).div_ceil(PAGE) * PAGE
        );
        // Whole pages, rounded up: the guard keeps at least what was asked.
        assert_eq!(MinFree::Bytes(7).bytes_on(dir.path()).unwrap(), PAGE);
        assert_eq!(MinFree::Bytes(0).bytes_on(dir.path()).unwrap(), 0);
        assert_eq!(MinFree::Bytes(PAGE).bytes_on(dir.path()).unwrap(), PAGE);
        let err = MinFree::Percent(5.0)
            .bytes_on(Path::new("/nonexistent/streamcache"))
            .unwrap_err();
        assert!(format!("{err:#}").starts_with("min_free: "), "{err:#}");
    }

    #[test]
    fn zero_means_no_limit_so_a_flag_can_lift_one_the_file_sets() {
        let file = FileSettings::parse(
            "dir = \"/a\"\nmax_disk = 1073741824\nmin_free = \"1G\"\nmax_commands = 4\nmax_commands_per_dir = 2\nqueue_full = \"refuse\"\n",
        )
        .unwrap();
        let s = ServeSettings::resolve(file.clone(), ServeFlags::default()).unwrap();
        assert_eq!(s.max_disk, Some(1 << 30));
        // A budget is whole pages, rounded down; less than a page is an error.
        let budget = |text: &str| {
            let flags = ServeFlags {
                max_disk: Some(text.into()),
                ..ServeFlags::default()
            };
            ServeSettings::resolve(FileSettings::default(), flags).map(|s| s.max_disk)
        };
        assert_eq!(budget("10MB").unwrap(), Some(10_000_000 / PAGE * PAGE));
        let err = budget("4000").unwrap_err();
        assert!(format!("{err:#}").starts_with("max_disk: "), "{err:#}");
        assert_eq!(s.min_free, MinFree::Bytes(1 << 30));
        assert_eq!(s.commands.max_commands, Some(4));
        assert_eq!(s.commands.queue_full, QueueFull::Refuse);
        let flags = ServeFlags {
            max_disk: Some("0".into()),
            min_free: Some("0".into()),
            max_commands: Some(0),
            max_commands_per_dir: Some(0),
            ..ServeFlags::default()
        };
        let s = ServeSettings::resolve(file, flags).unwrap();
        assert_eq!((s.max_disk, s.min_free), (None, MinFree::Bytes(0)));
        assert!(!s.commands.is_limited());
        let cfg = s.cache_config(0);
        assert_eq!((cfg.max_disk_bytes, cfg.min_free_bytes), (None, 0));
        cfg.validate().unwrap();
    }

    #[test]
    fn the_daemon_user_is_a_name_or_a_number_and_an_unknown_name_is_an_error() {
        assert_eq!(user_id("root").unwrap(), 0);
        assert_eq!(user_id("65534").unwrap(), 65534);
        let err = user_id("no-such-user-here").unwrap_err();
        assert!(format!("{err:#}").starts_with("daemon_user: "), "{err:#}");
        let flags = ServeFlags {
            daemon_user: Some("no-such-user-here".into()),
            ..ServeFlags::default()
        };
        let file = FileSettings::parse("dir = \"/srv/c\"").unwrap();
        let err = ServeSettings::resolve(file, flags).unwrap_err();
        assert!(format!("{err:#}").contains("daemon_user"), "{err:#}");
    }

    #[test]
    fn a_bad_value_is_an_error_that_names_the_key() {
        for (text, key) in [
            ("max_age = \"5 parsecs\"", "max_age"),
            ("grace = \"soon\"", "grace"),
            ("metrics_listen = \"localhost\"", "metrics_listen"),
            ("allow = [\"git:\"]", "allow"),
            ("log_level = \"loud\"", "log_level"),
            ("request_timeout = \"0s\"", "request_timeout"),
            ("max_disk = \"lots\"", "max_disk"),
            ("min_free = \"101%\"", "min_free"),
            ("max_lead = \"-4M\"", "max_lead"),
            ("max_queue_wait = \"a while\"", "max_queue_wait"),
            ("queue_full = \"drop\"", "queue_full"),
        ] {
            let file = FileSettings::parse(&format!("dir = \"/tmp/x\"\n{text}\n")).unwrap();
            let err = ServeSettings::resolve(file, ServeFlags::default()).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{text}: {err:#}");
        }
        let err = FileSettings::parse("min_occurrences = \"many\"").unwrap_err();
        assert!(format!("{err:#}").contains("min_occurrences"), "{err:#}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileSettings::parse(
            "dir = \"/a\"\nmax_age = \"1m\"\nmin_occurrences = 3\nbackpressure = true\nallow = [\"git:pack-objects\"]\n",
        )
        .unwrap();
        let flags = ServeFlags {
            dir: Some("/b".into()),
            max_age: Some("2m".into()),
            min_occurrences: Some(0),
            no_backpressure: true,
            allow: vec!["sh".into()],
            ..ServeFlags::default()
        };
        let s = ServeSettings::resolve(file, flags).unwrap();
        assert_eq!(s.dir, PathBuf::from("/b"));
        assert_eq!(s.max_age, Duration::from_secs(120));
        assert_eq!(s.min_occurrences, 0);
        assert!(!s.backpressure);
        assert!(s.allow.check(b"sh", &[]).is_ok());
        assert!(s.allow.check(b"git", &[b"pack-objects".to_vec()]).is_err());
    }

    #[test]
    fn the_defaults_cache_from_the_first_occurrence_with_back_pressure() {
        let file = FileSettings::parse("dir = \"/srv/cache\"").unwrap();
        let s = ServeSettings::resolve(file, ServeFlags::default()).unwrap();
        assert_eq!(s.min_occurrences, 0);
        assert!(s.backpressure);
        assert_eq!(s.max_age, streamcache::DEFAULT_MAX_AGE);
        assert_eq!(s.producer_timeout, None);
        assert!(s.allow.check(b"git", &[b"pack-objects".to_vec()]).is_ok());
    }

    #[test]
    fn a_socket_inside_the_swept_entries_directory_is_refused() {
        let file =
            FileSettings::parse("dir = \"/srv/c\"\nsocket = \"/srv/c/entries/s.sock\"").unwrap();
        let err = ServeSettings::resolve(file, ServeFlags::default()).unwrap_err();
        assert!(format!("{err:#}").contains("socket"), "{err:#}");
    }

    // ported from internal/gitaly/config/config_test.go: TestValidatePackObjectsCache
    // (and the TOML cases), spec 6.7, once the library's `Settings` tests: the same
    // checks in the same order on the daemon's keys. Not ported, as the daemon has no
    // such thing: `enabled` (a daemon always caches), storages (the default directory
    // `<storage>/+streamcache`, and a directory that is or contains a storage; the
    // daemon's like of it is the socket inside the swept entries directory, below).

    #[test]
    fn empty_input_gives_the_defaults() {
        let file = FileSettings::parse("").unwrap();
        assert_eq!(file, FileSettings::default());
        // With no dir, the directory comes from the environment; without one, the
        // error names dir.
        match (
            ServeSettings::resolve(file, ServeFlags::default()),
            default_cache_dir(),
        ) {
            (Ok(s), Ok(dir)) => {
                assert_eq!(s.dir, dir);
                assert_eq!(s.max_age, streamcache::DEFAULT_MAX_AGE);
                assert_eq!(s.max_age, Duration::from_secs(300));
                assert_eq!(s.min_occurrences, DEFAULT_MIN_OCCURRENCES);
                assert!(s.backpressure);
            }
            (Err(err), Err(_)) => assert!(format!("{err:#}").starts_with("dir: "), "{err:#}"),
            (s, dir) => panic!("resolve {s:?} but default_cache_dir {dir:?}"),
        }
    }

    #[test]
    fn no_dir_gives_the_default_directory_of_the_user() {
        let dir = cache_dir_in(Some("/xdg".into()), Some("/home/u".into())).unwrap();
        assert_eq!(dir, PathBuf::from("/xdg/streamcache"));
        let dir = cache_dir_in(None, Some("/home/u".into())).unwrap();
        assert_eq!(dir, PathBuf::from("/home/u/.cache/streamcache"));
    }

    #[test]
    fn no_dir_and_nowhere_to_derive_one_is_an_error_that_names_dir() {
        let err = cache_dir_in(None, None).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("dir: "), "{text}");
        assert!(
            text.contains("cannot pick a default cache directory"),
            "{text}"
        );
    }

    #[test]
    fn explicit_values_are_kept_exactly() {
        let file = FileSettings::parse(
            "dir = \"/bazqux\"\nmax_age = \"10m\"\nmin_occurrences = 0\nbackpressure = false\n",
        )
        .unwrap();
        let s = ServeSettings::resolve(file, ServeFlags::default()).unwrap();
        assert_eq!(s.dir, PathBuf::from("/bazqux"));
        assert_eq!(s.max_age, Duration::from_secs(600));
        assert_eq!(s.min_occurrences, 0);
        assert!(!s.backpressure);
        let cfg = s.cache_config(4096);
        assert_eq!(cfg.dir, PathBuf::from("/bazqux/entries"));
        assert_eq!(cfg.min_free_bytes, 4096);
        assert_eq!(cfg.max_age, Duration::from_secs(600));
        assert_eq!(cfg.min_occurrences, 0);
        assert!(!cfg.backpressure);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        // A typo, and the reference's `enabled`, which the daemon does not have.
        for (text, key) in [
            ("max_agee = \"5m\"\n", "max_agee"),
            ("enabled = true\n", "enabled"),
        ] {
            let err = FileSettings::parse(text).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains(key), "{text}");
        }
    }

    #[test]
    fn negative_max_age_is_checked_first() {
        // Before the relative dir, which is wrong too.
        let file = FileSettings::parse("max_age = \"-5m\"\ndir = \"foobar\"\n").unwrap();
        let err = ServeSettings::resolve(file, ServeFlags::default()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("max_age: "), "{text}");
        assert!(text.contains("cannot be negative"), "{text}");
    }

    #[test]
    fn a_relative_dir_is_rejected() {
        let file = FileSettings::parse("dir = \"foobar\"\n").unwrap();
        let err = ServeSettings::resolve(file, ServeFlags::default()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("dir: "), "{text}");
        assert!(text.contains("must be an absolute path"), "{text}");
        // A flag is a path a shell user typed: it is taken from the working directory.
        let flags = ServeFlags {
            dir: Some("foobar".into()),
            ..ServeFlags::default()
        };
        let s = ServeSettings::resolve(FileSettings::default(), flags).unwrap();
        assert_eq!(s.dir, std::env::current_dir().unwrap().join("foobar"));
    }

    #[test]
    fn an_unreadable_max_age_names_the_text() {
        let file = FileSettings::parse("dir = \"/x\"\nmax_age = \"soon\"\n").unwrap();
        let err = ServeSettings::resolve(file, ServeFlags::default()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("max_age: "), "{text}");
        assert!(text.contains("\"soon\""), "{text}");
    }

    #[test]
    fn a_socket_beside_the_entries_directory_with_a_common_prefix_is_not_inside_it() {
        // Whole path components are compared: `entries2` is not under `entries`.
        let file =
            FileSettings::parse("dir = \"/srv/c\"\nsocket = \"/srv/c/entries2/s.sock\"").unwrap();
        ServeSettings::resolve(file, ServeFlags::default()).unwrap();
    }
}
