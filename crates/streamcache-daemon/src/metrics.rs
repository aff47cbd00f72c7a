//! Observability: the daemon's counters (kept in `state`) as Prometheus text and in
//! the `key=value` form that `streamcache stats` reads. `scrape` serves the text over
//! HTTP.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::queue::QueueFull;
use crate::state::Daemon;

/// One metric: its name, type, help, and value.
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: Value,
}

/// A metric's value: a count (bytes, events, entries), or a time in seconds.
#[derive(Debug, Clone, Copy)]
enum Value {
    Count(u64),
    Seconds(Duration),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Count(n) => write!(f, "{n}"),
            Value::Seconds(d) => write!(f, "{:.6}", d.as_secs_f64()),
        }
    }
}

fn metrics(daemon: &Daemon) -> Vec<Metric> {
    // First: see `Daemon::connections_active`.
    let active = daemon.connections_active();
    let s = daemon.cache.stats();
    let c = &daemon.counters;
    let m = |name, kind, help, value| Metric {
        name,
        kind,
        help,
        value: Value::Count(value),
    };
    let mut all = vec![
        m("streamcache_hits_total", "counter", "Lookups served by an existing entry.", s.hits),
        m("streamcache_misses_total", "counter", "Lookups that created an entry and started its producer.", s.misses),
        m("streamcache_bypassed_total", "counter", "Lookups that ran their producer outside the cache (min_occurrences, or no room on disk).", s.bypassed),
        m("streamcache_failures_total", "counter", "Producers that failed (non-zero exit, signal, error, no command slot in time, or every reader gone).", s.failures),
        m("streamcache_index_entries", "gauge", "Entries in the index.", s.index_entries),
        m("streamcache_evicted_total", "counter", "Entries removed from the index by age, or to make room under the disk budget.", s.evicted),
        m("streamcache_generated_bytes_total", "counter", "Bytes written by producers (framed output).", s.generated_bytes),
        m("streamcache_served_bytes_total", "counter", "Bytes delivered to clients from entries.", s.served_bytes),
        m("streamcache_sendfile_bytes_total", "counter", "Bytes delivered without a copy through user space (sendfile(2) or splice(2)).", s.sendfile_bytes),
        m("streamcache_disk_usage_bytes", "gauge", "Bytes in the cache directory at the last sweep.", s.disk_usage_bytes),
        m("streamcache_swept_files_total", "counter", "Files removed by the directory sweep.", s.swept_files),
    ];
    if let Some(budget) = s.disk_budget_bytes {
        all.push(m(
            "streamcache_disk_budget_bytes",
            "gauge",
            "The disk budget of the entry files (max_disk).",
            budget,
        ));
    }
    let min_free = daemon.cache.config().map_or(0, |c| c.min_free_bytes);
    all.extend([
        m("streamcache_disk_used_bytes", "gauge", "Bytes the entry files take now, by the cache's count, with a budget or a free-space guard (whole pages; evicted files still open included).", s.disk_used_bytes),
        m("streamcache_disk_reserved_bytes", "gauge", "Bytes held ahead of writes by entries being written.", s.disk_reserved_bytes),
        m("streamcache_disk_free_bytes", "gauge", "Bytes free on the cache's file system now (statvfs, for unprivileged users).", free_bytes(daemon)),
        m("streamcache_disk_min_free_bytes", "gauge", "The free-space guard: bytes the cache leaves free on its file system (min_free, resolved at start).", min_free),
        m("streamcache_transient_entries", "gauge", "Entries that outgrew the room they could get and stream to their readers only, releasing what all have read.", s.transient_entries),
        m("streamcache_room_bypasses_total", "counter", "Lookups that ran their command outside the cache for want of room under the budget or the guard (also in bypassed).", s.room_bypasses),
        m("streamcache_committed_entries_total", "counter", "Durable entries committed: whole, with their digest, kept across restarts.", s.committed_entries),
        m("streamcache_adopted_entries_total", "counter", "Committed entries found at start, checked against their digests and served.", s.adopted_entries),
        m("streamcache_shared_hits_total", "counter", "Lookups served from a committed file this daemon did not have in its index (another process's, or its predecessor's not yet adopted); also in hits.", s.shared_hits),
        m("streamcache_verification_failures_total", "counter", "Committed files refused and removed because they were truncated, altered or had no whole commit record; also manifests and parts of the shared tier that did not match their digests.", s.verification_failures),
        m("streamcache_remote_hits_total", "counter", "Misses served from the shared tier: an entry another host published, or another host's upload followed to its end.", s.remote_hits),
        m("streamcache_remote_follows_total", "counter", "Misses that found another host making the entry and followed its upload instead of running the command.", s.remote_follows),
        m("streamcache_remote_takeovers_total", "counter", "Stalled or abandoned uploads of other hosts taken over: this host ran the command.", s.remote_takeovers),
        m("streamcache_remote_uploads_total", "counter", "Entries this host published to the shared tier (uploaded whole, manifest committed).", s.remote_uploads),
        m("streamcache_remote_uploaded_bytes_total", "counter", "Bytes uploaded to the shared tier.", s.remote_uploaded_bytes),
        m("streamcache_remote_downloaded_bytes_total", "counter", "Bytes downloaded from the shared tier, each part checked against its digest.", s.remote_downloaded_bytes),
        m("streamcache_remote_errors_total", "counter", "Requests to the shared tier that failed or timed out, and damaged objects found there; the host ran the command itself.", s.remote_errors),
        m("streamcache_remote_swept_objects_total", "counter", "Objects of the shared tier removed by the sweep (expired, or of dead uploads).", s.remote_swept_objects),
    ]);
    let queue = daemon.queue.as_deref();
    all.extend([
        m("streamcache_queue_length", "gauge", "Misses waiting for a command slot now (max_commands, max_commands_per_dir).", queue.map_or(0, |q| q.waiting())),
        m("streamcache_queue_waits_total", "counter", "Misses that found no free command slot and waited in line.", queue.map_or(0, |q| q.waits())),
        Metric {
            name: "streamcache_queue_wait_seconds_total",
            kind: "counter",
            help: "Seconds those misses waited, in all.",
            value: Value::Seconds(queue.map_or(Duration::ZERO, |q| q.waited())),
        },
        m("streamcache_queue_timeouts_total", "counter", "Misses that got no command slot within max_queue_wait; their clients were answered busy (or refused).", queue.map_or(0, |q| q.timeouts())),
    ]);
    all.extend([
        m("streamcache_connections_total", "counter", "Connections accepted.", c.connections.load(Relaxed)),
        m("streamcache_connections_active", "gauge", "Connections being served.", active),
        m("streamcache_refused_total", "counter", "Requests refused by the allow-list.", c.refused.load(Relaxed)),
        m("streamcache_peer_refused_total", "counter", "Connections refused because of the peer's uid.", c.peer_refused.load(Relaxed)),
        m("streamcache_bad_requests_total", "counter", "Requests that could not be decoded or read in time.", c.bad_requests.load(Relaxed)),
        m("streamcache_errors_total", "counter", "Requests the cache could not serve before any output (the client ran the command itself).", c.errors.load(Relaxed)),
        m("streamcache_clients_gone_total", "counter", "Clients that left before the end of their stream.", c.client_gone.load(Relaxed)),
        m("streamcache_busy_total", "counter", "Requests answered busy: turned away at the connection limit, or no command slot within max_queue_wait (the client ran the command itself, unless queue_full is refuse).", c.busy.load(Relaxed)),
        m("streamcache_children_started_total", "counter", "Commands started by producers.", daemon.children.started()),
        m("streamcache_children_running", "gauge", "Commands running now.", daemon.children.running() as u64),
        m("streamcache_commands_failed_total", "counter", "Commands that ran and failed: non-zero exit, signal, or producer timeout.", daemon.children.failed()),
        m("streamcache_uptime_seconds", "gauge", "Seconds since the daemon started.", daemon.started.elapsed().as_secs()),
    ]);
    all
}

/// Free space on the entries' file system now, as `df` shows it (0 if unknown).
fn free_bytes(daemon: &Daemon) -> u64 {
    rustix::fs::statvfs(daemon.settings.entries_dir())
        .map_or(0, |st| st.f_bavail.saturating_mul(st.f_frsize))
}

/// The Prometheus text exposition of the daemon's metrics.
pub(crate) fn prometheus(daemon: &Daemon) -> String {
    let mut out = String::new();
    let all = metrics(daemon);
    let value = |name: &str| {
        all.iter()
            .find(|m| m.name == name)
            .map_or_else(|| "0".to_owned(), |m| m.value.to_string())
    };
    let _ = writeln!(
        out,
        "# HELP streamcache_lookups_total Requests by how the cache answered them.\n# TYPE streamcache_lookups_total counter"
    );
    for (result, name) in [
        ("hit", "streamcache_hits_total"),
        ("miss", "streamcache_misses_total"),
        ("bypass", "streamcache_bypassed_total"),
        ("refused", "streamcache_refused_total"),
    ] {
        let _ = writeln!(
            out,
            "streamcache_lookups_total{{result=\"{result}\"}} {}",
            value(name)
        );
    }
    for m in all {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}",
            m.name, m.help, m.name, m.kind
        );
        let _ = writeln!(out, "{} {}", m.name, m.value);
    }
    let cfg = &daemon.settings;
    let _ = writeln!(
        out,
        "# HELP streamcache_cache_enabled The cache's configuration, as labels.\n# TYPE streamcache_cache_enabled gauge"
    );
    let _ = writeln!(
        out,
        "streamcache_cache_enabled{{dir=\"{}\",max_age=\"{}\",min_occurrences=\"{}\",backpressure=\"{}\"}} 1",
        escape(&cfg.entries_dir().display().to_string()),
        cfg.max_age.as_secs(),
        cfg.min_occurrences,
        cfg.backpressure
    );
    out
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `key=value` lines of a stats reply: every metric by its Prometheus name, plus
/// the settings a person wants to see next to them.
pub(crate) fn stats_text(daemon: &Daemon) -> String {
    let mut out = String::new();
    let cfg = &daemon.settings;
    let _ = writeln!(out, "socket={}", cfg.socket.display());
    let _ = writeln!(out, "dir={}", cfg.entries_dir().display());
    let _ = writeln!(out, "max_age={}", humantime::format_duration(cfg.max_age));
    let _ = writeln!(out, "min_occurrences={}", cfg.min_occurrences);
    let _ = writeln!(out, "backpressure={}", cfg.backpressure);
    let _ = writeln!(out, "durable={}", cfg.durable);
    let _ = writeln!(
        out,
        "remote={}",
        cfg.remote.as_ref().map_or("none", |r| r.url.as_str())
    );
    let _ = writeln!(out, "allow={}", cfg.allow);
    let _ = writeln!(out, "peers={}", cfg.peers);
    let none = |n: Option<usize>| n.map_or_else(|| "none".to_owned(), |n| n.to_string());
    let _ = writeln!(
        out,
        "max_disk={}",
        cfg.max_disk.map_or_else(|| "none".to_owned(), bytes)
    );
    let _ = writeln!(out, "min_free={}", cfg.min_free);
    let _ = writeln!(out, "max_lead={}", bytes(cfg.max_lead));
    let _ = writeln!(out, "max_commands={}", none(cfg.commands.max_commands));
    let _ = writeln!(
        out,
        "max_commands_per_dir={}",
        none(cfg.commands.max_commands_per_dir)
    );
    let _ = writeln!(
        out,
        "max_queue_wait={}",
        humantime::format_duration(cfg.commands.max_queue_wait)
    );
    let queue_full = match cfg.commands.queue_full {
        QueueFull::FailOpen => "fail-open",
        QueueFull::Refuse => "refuse",
    };
    let _ = writeln!(out, "queue_full={queue_full}");
    let _ = writeln!(out, "version={}", env!("CARGO_PKG_VERSION"));
    for m in metrics(daemon) {
        let _ = writeln!(out, "{}={}", m.name, m.value);
    }
    out
}

/// Parses `key=value` lines.
pub(crate) fn parse_stats(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The human table `streamcache stats` prints.
pub(crate) fn human_table(pairs: &[(String, String)]) -> String {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map_or("?", |(_, v)| v.as_str())
    };
    let num = |k: &str| get(&format!("streamcache_{k}")).parse::<u64>().unwrap_or(0);
    let (hits, misses, bypassed, refused) = (
        num("hits_total"),
        num("misses_total"),
        num("bypassed_total"),
        num("refused_total"),
    );
    let lookups = hits + misses + bypassed;
    let ratio = if lookups == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", hits as f64 * 100.0 / lookups as f64)
    };
    let rows: Vec<(&str, String)> = vec![
        ("socket", get("socket").to_owned()),
        ("entries dir", get("dir").to_owned()),
        (
            "settings",
            format!(
                "max_age {}, min_occurrences {}, backpressure {}, max_lead {}",
                get("max_age"),
                get("min_occurrences"),
                get("backpressure"),
                get("max_lead")
            ),
        ),
        ("allow", get("allow").to_owned()),
        ("serves", get("peers").to_owned()),
        (
            "uptime",
            humantime::format_duration(Duration::from_secs(num("uptime_seconds"))).to_string(),
        ),
        (
            "lookups",
            format!(
                "{lookups} (hits {hits}, misses {misses}, bypassed {bypassed}); refused {refused}"
            ),
        ),
        ("hit ratio", ratio),
        (
            "commands",
            format!(
                "{} started, {} running, {} failed",
                num("children_started_total"),
                num("children_running"),
                num("commands_failed_total")
            ),
        ),
        (
            "limits",
            format!(
                "max_commands {}, per dir {}, max_queue_wait {}, queue_full {}",
                get("max_commands"),
                get("max_commands_per_dir"),
                get("max_queue_wait"),
                get("queue_full")
            ),
        ),
        (
            "queue",
            format!(
                "{} waiting now; {} waited, {:.1} s in all; {} got no slot in time",
                num("queue_length"),
                num("queue_waits_total"),
                get("streamcache_queue_wait_seconds_total")
                    .parse::<f64>()
                    .unwrap_or(0.0),
                num("queue_timeouts_total")
            ),
        ),
        (
            "disk",
            format!(
                "{} used, {} reserved, budget {}; {} free, guard keeps {} (min_free {})",
                bytes(num("disk_used_bytes")),
                bytes(num("disk_reserved_bytes")),
                get("max_disk"),
                bytes(num("disk_free_bytes")),
                bytes(num("disk_min_free_bytes")),
                get("min_free")
            ),
        ),
        (
            "room",
            format!(
                "{} transient entries now, {} bypasses for room",
                num("transient_entries"),
                num("room_bypasses_total")
            ),
        ),
        (
            "durable",
            format!(
                "{}; {} committed, {} adopted at start, {} shared hits, {} verification failures",
                get("durable"),
                num("committed_entries_total"),
                num("adopted_entries_total"),
                num("shared_hits_total"),
                num("verification_failures_total")
            ),
        ),
        (
            "remote",
            format!(
                "{}; {} hits, {} follows, {} takeovers, {} uploads; {} up, {} down; {} errors",
                get("remote"),
                num("remote_hits_total"),
                num("remote_follows_total"),
                num("remote_takeovers_total"),
                num("remote_uploads_total"),
                bytes(num("remote_uploaded_bytes_total")),
                bytes(num("remote_downloaded_bytes_total")),
                num("remote_errors_total")
            ),
        ),
        ("generated", bytes(num("generated_bytes_total"))),
        (
            "served",
            format!(
                "{}; {} of it by sendfile",
                bytes(num("served_bytes_total")),
                bytes(num("sendfile_bytes_total"))
            ),
        ),
        (
            "entries",
            format!(
                "{} in index, {} evicted, {} files swept; {} on disk at the last sweep",
                num("index_entries"),
                num("evicted_total"),
                num("swept_files_total"),
                bytes(num("disk_usage_bytes"))
            ),
        ),
        (
            "connections",
            format!(
                "{} total, {} active besides this one, {} clients left early",
                num("connections_total"),
                num("connections_active").saturating_sub(1),
                num("clients_gone_total")
            ),
        ),
        (
            "problems",
            format!(
                "{} bad requests, {} peers refused, {} cache errors, {} answered busy",
                num("bad_requests_total"),
                num("peer_refused_total"),
                num("errors_total"),
                num("busy_total")
            ),
        ),
    ];
    let mut out = String::new();
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<12} {value}");
    }
    out
}

/// `n` bytes in binary units, one decimal (exact bytes below 1 KiB): for `stats` and
/// the status page.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
