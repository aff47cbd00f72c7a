//! The Grafana dashboard and the Prometheus rules in `contrib/` name only metrics the
//! daemon exports: a renamed metric must not leave them graphing or alerting on
//! nothing.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;

use crate::support::Daemon;

/// The repository's `contrib/` directory.
fn contrib() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contrib")
}

fn read(path: &str) -> String {
    let path = contrib().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `streamcache_…` identifier in `text`: `streamcache_` at the start of a word,
/// then lowercase letters, digits and underscores.
fn names_in(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "streamcache_";
    let in_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let in_name = |b: &&u8| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_';
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX).map(|i| from + i) {
        let start = at + PREFIX.len();
        let end = start + bytes[start..].iter().take_while(in_name).count();
        if at == 0 || !in_word(bytes[at - 1]) {
            names.insert(text[at..end].to_owned());
        }
        from = end;
    }
    names
}

/// The metric names of a Prometheus text page: the name of every sample.
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Every string in a JSON document, keys excepted.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn scrape(addr: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
    page.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn the_scanner_finds_whole_names_only() {
    let names = names_in(
        "rate(streamcache_hits_total[5m]) / streamcache_disk_budget_bytes{a=\"b\"}\n\
         # streamcache_remote_errors_total, x_streamcache_no, streamcache:rule, streamcache_wrong2_",
    );
    let want = [
        "streamcache_disk_budget_bytes",
        "streamcache_hits_total",
        "streamcache_remote_errors_total",
        "streamcache_wrong2_",
    ];
    assert_eq!(names, want.iter().map(|s| s.to_string()).collect());
}

#[test]
fn the_dashboard_and_the_alerts_name_only_metrics_the_daemon_exports() {
    // A budget, for streamcache_disk_budget_bytes; the shared tier's counters are
    // exported without one.
    let daemon = Daemon::start(&[
        "--allow",
        "sh",
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-disk",
        "64MiB",
    ]);
    let page = scrape(&daemon.metrics_addr());
    let exported = exported(&page);
    assert!(
        exported.contains("streamcache_disk_budget_bytes")
            && exported.contains("streamcache_remote_errors_total"),
        "{page}"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/streamcache.json")).expect("the dashboard is JSON");
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels");
    let graphs: Vec<_> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(graphs.len() >= 10, "{} panels", graphs.len());
    for panel in &graphs {
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array();
        assert!(
            targets.is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["expr"].is_string())),
            "{title} has no query"
        );
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("instance")["type"], "query");

    let mut texts = Vec::new();
    strings(&dashboard, &mut texts);
    let files = [
        ("grafana/streamcache.json", names_in(&texts.join("\n"))),
        (
            "prometheus/streamcache-rules.yml",
            names_in(&read("prometheus/streamcache-rules.yml")),
        ),
        (
            "prometheus/streamcache-rules.test.yml",
            names_in(&read("prometheus/streamcache-rules.test.yml")),
        ),
    ];
    let mut wrong = Vec::new();
    for (file, names) in &files {
        assert!(names.len() >= 5, "{file}: only {names:?}");
        wrong.extend(
            names
                .iter()
                .filter(|n| !exported.contains(*n))
                .map(|n| format!("{file}: {n}")),
        );
    }
    assert!(
        wrong.is_empty(),
        "names the daemon does not export:\n{}\n\nit exports:\n{}",
        wrong.join("\n"),
        exported.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}
