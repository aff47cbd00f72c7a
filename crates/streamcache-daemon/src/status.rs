//! The status page `scrape` serves at `/` on the metrics listener: one self-contained
//! HTML page (no external assets, no script) with the entries in the index, the
//! counters and the settings, refreshed by the browser every [`REFRESH_SECS`] seconds.
//!
//! It is built from what `streamcache stats` shows ([`stats_text`]: the settings and
//! every metric by its Prometheus name) and from [`streamcache::Cache::entries`], so it
//! says nothing the other two do not. Everything taken from them is HTML-escaped: the
//! keys are hex, but the settings hold paths and URLs.

use std::fmt::Write as _;
use std::time::Duration;

use streamcache::{EntryState, EntryStatus};

use crate::metrics::{bytes, parse_stats, stats_text};
use crate::state::Daemon;

/// How often the page reloads itself.
const REFRESH_SECS: u32 = 5;

/// The most entry rows one page shows; the rest are counted in a line below the table.
const MAX_ROWS: usize = 500;

/// The hex digits of a key that the page shows, as the daemon's log does.
const KEY_DIGITS: usize = 16;

/// One entry of the index, as the page shows it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) key: String,
    pub(crate) written: u64,
    pub(crate) fastest_read: u64,
    pub(crate) readers: usize,
    pub(crate) age: Duration,
    pub(crate) state: &'static str,
}

impl From<EntryStatus> for Row {
    fn from(e: EntryStatus) -> Row {
        let state = match e.state {
            EntryState::Writing => "writing",
            EntryState::Complete => "complete",
            EntryState::Failed => "failed",
            _ => "unknown",
        };
        Row {
            key: e.key,
            written: e.written,
            fastest_read: e.fastest_read,
            readers: e.readers,
            age: e.age,
            state,
        }
    }
}

/// The status page of `daemon` now.
pub(crate) fn status_page(daemon: &Daemon) -> String {
    let pairs = parse_stats(&stats_text(daemon));
    let rows: Vec<Row> = daemon.cache.entries().into_iter().map(Row::from).collect();
    render(&pairs, rows)
}

const STYLE: &str = "\
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--head:#f6f8fa}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI','DejaVu Sans',sans-serif;margin:20px 28px;color:var(--fg);background:#fff}
h1{font-size:20px;margin:0}
h2{font-size:15px;margin:22px 0 6px}
p{margin:4px 0}
.muted{color:var(--muted)}
table{border-collapse:collapse}
th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{background:var(--head);font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:13px ui-monospace,'DejaVu Sans Mono',monospace}
.badge{display:inline-block;padding:0 8px;border-radius:9px;font-size:12px;font-weight:600}
.writing{background:#ddf4ff;color:#0550ae}
.complete{background:#dafbe1;color:#116329}
.failed,.unknown{background:#ffebe9;color:#a40e26}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:4px 24px;align-items:start}
.grid table{width:100%}
.grid caption{text-align:left;font-weight:600;padding:8px 0 2px}
.grid th{font-weight:normal;color:var(--muted);white-space:nowrap}
#settings td{word-break:break-all}
";

/// The page for `pairs` (the `key=value` lines of [`stats_text`]) and `entries` (the
/// index, oldest first).
pub(crate) fn render(pairs: &[(String, String)], mut entries: Vec<Row>) -> String {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map_or("?", |(_, v)| v.as_str())
    };
    let num = |k: &str| get(&format!("streamcache_{k}")).parse::<u64>().unwrap_or(0);
    let mut out = String::with_capacity(16 << 10);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>streamcache status</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n"
    );
    let uptime = humantime::format_duration(Duration::from_secs(num("uptime_seconds")));
    let _ = writeln!(
        out,
        "<header><h1>streamcache</h1><p class=\"muted\">version {} &middot; socket <code>{}</code> \
         &middot; up {uptime} &middot; this page reloads every {REFRESH_SECS} s</p></header>",
        esc(get("version")),
        esc(get("socket")),
    );

    // The entries: those being written first (the ones a person looks for), then the
    // rest; each group oldest first, as the cache lists them.
    entries.sort_by_key(|r| r.state != "writing");
    let total = entries.len();
    let _ = writeln!(
        out,
        "<section id=\"entries\">\n<h2>Entries <span class=\"muted\">({total} in the index, {} being written)</span></h2>",
        entries.iter().filter(|r| r.state == "writing").count()
    );
    if entries.is_empty() {
        out.push_str("<p class=\"muted\" id=\"no-entries\">No entries in the index.</p>\n");
    } else {
        out.push_str(
            "<table id=\"entry-table\">\n<thead><tr><th>key</th><th>state</th>\
             <th class=\"num\">bytes</th><th class=\"num\">readers</th><th class=\"num\">age</th></tr></thead>\n<tbody>\n",
        );
        for row in entries.iter().take(MAX_ROWS) {
            entry_row(&mut out, row);
        }
        out.push_str("</tbody>\n</table>\n");
        if total > MAX_ROWS {
            let _ = writeln!(
                out,
                "<p class=\"muted\">and {} more not shown.</p>",
                total - MAX_ROWS
            );
        }
    }
    let transient = num("transient_entries");
    let _ = writeln!(
        out,
        "<p class=\"muted\" id=\"transient\" data-transient=\"{transient}\">Transient entries now: \
         {transient}. An entry that outgrows the room it can get leaves the index and streams \
         to its readers only; such entries are not listed.</p>\n</section>"
    );

    // The counters, in groups.
    let (hits, misses, bypassed) = (
        num("hits_total"),
        num("misses_total"),
        num("bypassed_total"),
    );
    let lookups = hits + misses + bypassed;
    let ratio = if lookups == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", hits as f64 * 100.0 / lookups as f64)
    };
    let count = |name: &str| Cell::Count(num(name));
    let size = |name: &str| Cell::Bytes(num(name));
    let budget = match pairs
        .iter()
        .find(|(k, _)| k == "streamcache_disk_budget_bytes")
    {
        Some((_, v)) => Cell::Bytes(v.parse().unwrap_or(0)),
        None => Cell::Text("none".to_owned()),
    };
    let groups: [(&str, Vec<Line>); 7] = [
        (
            "Lookups",
            vec![
                ("hit ratio", "hit_ratio", Cell::Text(ratio)),
                ("hits", "hits_total", count("hits_total")),
                ("misses", "misses_total", count("misses_total")),
                ("bypassed", "bypassed_total", count("bypassed_total")),
                (
                    "of which for room",
                    "room_bypasses_total",
                    count("room_bypasses_total"),
                ),
                (
                    "refused by the allow-list",
                    "refused_total",
                    count("refused_total"),
                ),
                (
                    "entries in the index",
                    "index_entries",
                    count("index_entries"),
                ),
                ("evicted", "evicted_total", count("evicted_total")),
            ],
        ),
        (
            "Bytes",
            vec![
                (
                    "generated",
                    "generated_bytes_total",
                    size("generated_bytes_total"),
                ),
                ("served", "served_bytes_total", size("served_bytes_total")),
                (
                    "of which by sendfile",
                    "sendfile_bytes_total",
                    size("sendfile_bytes_total"),
                ),
            ],
        ),
        (
            "Disk",
            vec![
                ("used", "disk_used_bytes", size("disk_used_bytes")),
                (
                    "reserved",
                    "disk_reserved_bytes",
                    size("disk_reserved_bytes"),
                ),
                ("budget (max_disk)", "disk_budget_bytes", budget),
                ("free", "disk_free_bytes", size("disk_free_bytes")),
                (
                    "kept free (min_free)",
                    "disk_min_free_bytes",
                    size("disk_min_free_bytes"),
                ),
                (
                    "at the last sweep",
                    "disk_usage_bytes",
                    size("disk_usage_bytes"),
                ),
            ],
        ),
        (
            "Commands and connections",
            vec![
                ("running", "children_running", count("children_running")),
                ("queued", "queue_length", count("queue_length")),
                (
                    "started",
                    "children_started_total",
                    count("children_started_total"),
                ),
                (
                    "failed",
                    "commands_failed_total",
                    count("commands_failed_total"),
                ),
                (
                    "waited for a slot",
                    "queue_waits_total",
                    count("queue_waits_total"),
                ),
                (
                    "no slot in time",
                    "queue_timeouts_total",
                    count("queue_timeouts_total"),
                ),
                (
                    "connections now",
                    "connections_active",
                    count("connections_active"),
                ),
                (
                    "connections in all",
                    "connections_total",
                    count("connections_total"),
                ),
            ],
        ),
        (
            "Errors",
            vec![
                ("cache errors", "errors_total", count("errors_total")),
                (
                    "failed producers",
                    "failures_total",
                    count("failures_total"),
                ),
                (
                    "bad requests",
                    "bad_requests_total",
                    count("bad_requests_total"),
                ),
                (
                    "peers refused",
                    "peer_refused_total",
                    count("peer_refused_total"),
                ),
                ("answered busy", "busy_total", count("busy_total")),
                (
                    "clients gone early",
                    "clients_gone_total",
                    count("clients_gone_total"),
                ),
                (
                    "verification failures",
                    "verification_failures_total",
                    count("verification_failures_total"),
                ),
            ],
        ),
        (
            "Durable entries",
            vec![
                (
                    "committed",
                    "committed_entries_total",
                    count("committed_entries_total"),
                ),
                (
                    "adopted at start",
                    "adopted_entries_total",
                    count("adopted_entries_total"),
                ),
                (
                    "shared hits",
                    "shared_hits_total",
                    count("shared_hits_total"),
                ),
            ],
        ),
        (
            "Shared tier",
            vec![
                ("hits", "remote_hits_total", count("remote_hits_total")),
                (
                    "follows",
                    "remote_follows_total",
                    count("remote_follows_total"),
                ),
                (
                    "takeovers",
                    "remote_takeovers_total",
                    count("remote_takeovers_total"),
                ),
                (
                    "uploads",
                    "remote_uploads_total",
                    count("remote_uploads_total"),
                ),
                (
                    "uploaded",
                    "remote_uploaded_bytes_total",
                    size("remote_uploaded_bytes_total"),
                ),
                (
                    "downloaded",
                    "remote_downloaded_bytes_total",
                    size("remote_downloaded_bytes_total"),
                ),
                (
                    "errors",
                    "remote_errors_total",
                    count("remote_errors_total"),
                ),
                (
                    "objects swept",
                    "remote_swept_objects_total",
                    count("remote_swept_objects_total"),
                ),
            ],
        ),
    ];
    out.push_str("<section id=\"counters\">\n<h2>Counters</h2>\n<div class=\"grid\">\n");
    for (title, cells) in groups {
        let _ = writeln!(out, "<table>\n<caption>{title}</caption>");
        for (label, name, cell) in cells {
            let _ = writeln!(
                out,
                "<tr data-name=\"{name}\"><th>{label}</th>{}</tr>",
                cell.td()
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</div>\n</section>\n");

    // The settings, as `streamcache stats` prints them.
    out.push_str("<section id=\"settings\">\n<h2>Settings</h2>\n<table>\n");
    for (k, v) in pairs
        .iter()
        .filter(|(k, _)| !k.starts_with("streamcache_") && k != "version")
    {
        let _ = writeln!(
            out,
            "<tr data-setting=\"{k}\"><th>{k}</th><td><code>{v}</code></td></tr>",
            k = esc(k),
            v = esc(v)
        );
    }
    out.push_str("</table>\n</section>\n</body>\n</html>\n");
    out
}

/// One row of the entry table.
fn entry_row(out: &mut String, row: &Row) {
    let key = esc(&row.key);
    let short = esc(row.key.get(..KEY_DIGITS).unwrap_or(&row.key));
    let state = esc(row.state);
    let age = humantime::format_duration(Duration::from_secs(row.age.as_secs()));
    let lead = row.written.saturating_sub(row.fastest_read);
    let _ = writeln!(
        out,
        "<tr class=\"entry\" id=\"entry-{key}\" data-key=\"{key}\" data-state=\"{state}\" \
         data-bytes=\"{written}\" data-readers=\"{readers}\" data-age-ms=\"{age_ms}\">\
         <td class=\"key\" title=\"{key}\"><code>{short}</code></td>\
         <td class=\"state\"><span class=\"badge {state}\">{state}</span></td>\
         <td class=\"num bytes\" title=\"{written} bytes\">{human}</td>\
         <td class=\"num readers\" title=\"the fastest reader has read {read} bytes, {lead} behind\">{readers}</td>\
         <td class=\"num age\" title=\"{secs:.3} s\">{age}</td></tr>",
        written = row.written,
        readers = row.readers,
        age_ms = row.age.as_millis(),
        human = bytes(row.written),
        read = row.fastest_read,
        secs = row.age.as_secs_f64(),
    );
}

/// One line of a group of counters: its label, its metric's name without the
/// `streamcache_` prefix (the row's `data-name`), and its value.
type Line = (&'static str, &'static str, Cell);

/// A counter's value cell.
enum Cell {
    Count(u64),
    Bytes(u64),
    Text(String),
}

impl Cell {
    fn td(&self) -> String {
        match self {
            Cell::Count(n) => format!("<td class=\"num\">{n}</td>"),
            Cell::Bytes(n) => format!("<td class=\"num\" title=\"{n} bytes\">{}</td>", bytes(*n)),
            Cell::Text(s) => format!("<td class=\"num\">{}</td>", esc(s)),
        }
    }
}

/// `s` escaped for HTML text and for attribute values in double or single quotes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(lines: &str) -> Vec<(String, String)> {
        parse_stats(lines)
    }

    fn writing_row() -> Row {
        Row {
            key: "b215303640173ab6".repeat(4),
            written: 65_600,
            fastest_read: 65_536,
            readers: 2,
            age: Duration::from_millis(75_250),
            state: "writing",
        }
    }

    #[test]
    fn an_entry_row_shows_the_short_key_the_state_the_bytes_the_readers_and_the_age() {
        let page = render(&pairs("version=0.1.0\n"), vec![writing_row()]);
        let key = "b215303640173ab6".repeat(4);
        let row = page
            .lines()
            .find(|l| l.starts_with("<tr class=\"entry\""))
            .unwrap_or_else(|| panic!("no entry row in:\n{page}"));
        for part in [
            format!("id=\"entry-{key}\" data-key=\"{key}\" data-state=\"writing\""),
            "data-bytes=\"65600\" data-readers=\"2\" data-age-ms=\"75250\"".to_owned(),
            format!("<td class=\"key\" title=\"{key}\"><code>b215303640173ab6</code></td>"),
            "<span class=\"badge writing\">writing</span>".to_owned(),
            "<td class=\"num bytes\" title=\"65600 bytes\">64.1 KiB</td>".to_owned(),
            "title=\"the fastest reader has read 65536 bytes, 64 behind\">2</td>".to_owned(),
            "<td class=\"num age\" title=\"75.250 s\">1m 15s</td>".to_owned(),
        ] {
            assert!(row.contains(&part), "{part:?} not in {row}");
        }
        assert!(page.contains("(1 in the index, 1 being written)"), "{page}");
    }

    #[test]
    fn settings_are_escaped_and_nothing_unescaped_gets_through() {
        let stats = "socket=/run/<b>&'s'.sock\ndir=/srv/\"x\"/<script>alert(1)</script>\n\
                     remote=none\nversion=<i>\nstreamcache_hits_total=3\nstreamcache_misses_total=1\n";
        let mut row = writing_row();
        row.key = "<img src=x onerror=alert(1)>".to_owned();
        row.state = "complete";
        let page = render(&pairs(stats), vec![row]);
        assert!(!page.contains("<script>") && !page.contains("<img") && !page.contains("<i>"));
        assert!(page.contains(
            "<tr data-setting=\"dir\"><th>dir</th><td><code>/srv/&quot;x&quot;/&lt;script&gt;alert(1)&lt;/script&gt;</code></td></tr>"
        ), "{page}");
        assert!(page.contains("socket <code>/run/&lt;b&gt;&amp;&#39;s&#39;.sock</code>"));
        assert!(page.contains("version &lt;i&gt;"));
        assert!(page.contains("data-key=\"&lt;img src=x onerror=alert(1)&gt;\""));
        // The counters are not settings; the hit ratio is hits over lookups.
        assert!(!page.contains("data-setting=\"streamcache_"));
        assert!(page.contains(
            "<tr data-name=\"hit_ratio\"><th>hit ratio</th><td class=\"num\">75.0%</td></tr>"
        ));
    }

    #[test]
    fn an_empty_index_says_so_and_the_transient_entries_are_counted() {
        let page = render(
            &pairs("streamcache_transient_entries=2\nstreamcache_disk_budget_bytes=1048576\n"),
            Vec::new(),
        );
        assert!(page.contains("id=\"no-entries\""));
        assert!(page.contains("data-transient=\"2\">Transient entries now: 2."));
        assert!(page.contains(
            "<tr data-name=\"hit_ratio\"><th>hit ratio</th><td class=\"num\">-</td></tr>"
        ));
        assert!(page.contains("<td class=\"num\" title=\"1048576 bytes\">1.0 MiB</td>"));
        assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    }

    #[test]
    fn entries_being_written_come_first_and_rows_are_capped() {
        let mut done = writing_row();
        done.state = "complete";
        done.key = "0".repeat(64);
        let mut rows = vec![done; MAX_ROWS];
        rows.push(writing_row());
        let page = render(&[], rows);
        let first = page
            .lines()
            .find(|l| l.starts_with("<tr class=\"entry\""))
            .unwrap();
        assert!(first.contains("data-state=\"writing\""), "{first}");
        assert_eq!(page.matches("<tr class=\"entry\"").count(), MAX_ROWS);
        assert!(page.contains("and 1 more not shown."));
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
