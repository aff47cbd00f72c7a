//! Observability: the daemon's counters (kept in `state`) as Prometheus text and in
//! the `key=value` form that `streamcache stats` reads. `scrape` serves the text over
//! HTTP.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::state::Daemon;

/// One metric: its name, type, help, and the `key=value` name it has in stats replies.
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: u64,
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
        value,
    };
    vec![
        m("streamcache_hits_total", "counter", "Lookups served by an existing entry.", s.hits),
        m("streamcache_misses_total", "counter", "Lookups that created an entry and started its producer.", s.misses),
        m("streamcache_bypassed_total", "counter", "Lookups that ran their producer outside the cache (min_occurrences).", s.bypassed),
        m("streamcache_failures_total", "counter", "Producers that failed (non-zero exit, signal, error, or every reader gone).", s.failures),
        m("streamcache_index_entries", "gauge", "Entries in the index.", s.index_entries),
        m("streamcache_evicted_total", "counter", "Entries removed from the index by age.", s.evicted),
        m("streamcache_generated_bytes_total", "counter", "Bytes written by producers (framed output).", s.generated_bytes),
        m("streamcache_served_bytes_total", "counter", "Bytes delivered to clients from entries.", s.served_bytes),
        m("streamcache_sendfile_bytes_total", "counter", "Bytes delivered without a copy through user space (sendfile(2) or splice(2)).", s.sendfile_bytes),
        m("streamcache_disk_usage_bytes", "gauge", "Bytes in the cache directory at the last sweep.", s.disk_usage_bytes),
        m("streamcache_swept_files_total", "counter", "Files removed by the directory sweep.", s.swept_files),
        m("streamcache_connections_total", "counter", "Connections accepted.", c.connections.load(Relaxed)),
        m("streamcache_connections_active", "gauge", "Connections being served.", active),
        m("streamcache_refused_total", "counter", "Requests refused by the allow-list.", c.refused.load(Relaxed)),
        m("streamcache_peer_refused_total", "counter", "Connections refused because of the peer's uid.", c.peer_refused.load(Relaxed)),
        m("streamcache_bad_requests_total", "counter", "Requests that could not be decoded or read in time.", c.bad_requests.load(Relaxed)),
        m("streamcache_errors_total", "counter", "Requests the cache could not serve before any output (the client ran the command itself).", c.errors.load(Relaxed)),
        m("streamcache_clients_gone_total", "counter", "Clients that left before the end of their stream.", c.client_gone.load(Relaxed)),
        m("streamcache_busy_total", "counter", "Connections turned away at the connection limit (the client ran the command itself).", c.busy.load(Relaxed)),
        m("streamcache_children_started_total", "counter", "Commands started by producers.", daemon.children.started()),
        m("streamcache_children_running", "gauge", "Commands running now.", daemon.children.running() as u64),
        m("streamcache_uptime_seconds", "gauge", "Seconds since the daemon started.", daemon.started.elapsed().as_secs()),
    ]
}

/// The Prometheus text exposition of the daemon's metrics.
pub(crate) fn prometheus(daemon: &Daemon) -> String {
    let mut out = String::new();
    let all = metrics(daemon);
    let value = |name: &str| all.iter().find(|m| m.name == name).map_or(0, |m| m.value);
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
    let _ = writeln!(out, "allow={}", cfg.allow);
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
                "max_age {}, min_occurrences {}, backpressure {}",
                get("max_age"),
                get("min_occurrences"),
                get("backpressure")
            ),
        ),
        ("allow", get("allow").to_owned()),
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
                num("failures_total")
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
                "{} bad requests, {} peers refused, {} cache errors, {} turned away busy",
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

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
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
