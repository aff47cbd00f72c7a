//! The status page at `/` of the metrics listener: served as HTML next to `/metrics`,
//! and loaded by a real browser (headless Chromium, the Debian package `chromium`)
//! while an entry is being written.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use crate::support::{
    output_within, read_stdout, sh, spawn_client, text, Daemon, LockGate, PATIENCE,
};

/// A raw HTTP/1.0 request to the metrics listener: the whole answer, head and body.
fn http(addr: &str, method: &str, path: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn the_status_page_is_html_at_the_root_and_metrics_stay_prometheus_text() {
    let daemon = Daemon::start(&["--allow", "sh", "--metrics-listen", "127.0.0.1:0"]);
    let addr = daemon.metrics_addr();
    let out = daemon.exec(false, &sh("echo x"), b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    for path in ["/", "/index.html"] {
        let page = http(&addr, "GET", path);
        assert!(page.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
        assert!(
            page.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
            "{page}"
        );
        assert!(page.contains("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        // The one entry, complete, and the settings with the daemon's paths.
        assert!(
            page.contains("data-state=\"complete\" data-bytes=\"")
                && page.contains("data-readers=\"0\""),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                "<tr data-setting=\"socket\"><th>socket</th><td><code>{}</code></td></tr>",
                daemon.socket.display()
            )),
            "{page}"
        );
        assert!(page.contains(
            "<tr data-name=\"misses_total\"><th>misses</th><td class=\"num\">1</td></tr>"
        ));
    }
    let metrics = http(&addr, "GET", "/metrics");
    assert!(metrics.starts_with("HTTP/1.0 200 OK\r\n"), "{metrics}");
    assert!(metrics.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert!(
        metrics.contains("\nstreamcache_misses_total 1\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("<html"));
    assert!(http(&addr, "GET", "/index.htm").starts_with("HTTP/1.0 404 "));
    assert!(http(&addr, "GET", "/?x").starts_with("HTTP/1.0 404 "));
    assert!(http(&addr, "POST", "/").starts_with("HTTP/1.0 405 "));
}

/// Headless Chromium in a profile and home of its own under `dir`, its output in files
/// (a helper process that outlives the browser cannot hold a pipe open), in a process
/// group of its own, killed whole if it has not exited after [`PATIENCE`].
fn chromium(dir: &Path, name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let home = dir.join(format!("{name}-home"));
    std::fs::create_dir_all(&home).unwrap();
    let stdout = dir.join(format!("{name}.out"));
    let stderr = dir.join(format!("{name}.err"));
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!(
        "--user-data-dir={}",
        home.join("profile").display()
    ))
    .args(args)
    .env("HOME", &home)
    .env("XDG_CONFIG_HOME", home.join(".config"))
    .env("XDG_CACHE_HOME", home.join(".cache"))
    .stdin(Stdio::null())
    .stdout(File::create(&stdout).unwrap())
    .stderr(File::create(&stderr).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child: Child = cmd
        .spawn()
        .expect("cannot run chromium: install the Debian package chromium (.ci/run does)");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(PATIENCE) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            kill_group(pid);
            panic!(
                "chromium {args:?} still running after {PATIENCE:?}; killed. stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
    };
    // Whatever it left running in its group goes with it.
    kill_group(pid);
    (
        status,
        std::fs::read_to_string(&stdout).unwrap(),
        std::fs::read_to_string(&stderr).unwrap(),
    )
}

fn kill_group(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// The value of attribute `name` in an HTML tag.
fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let start = format!(" {name}=\"");
    let at = tag
        .find(&start)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + start.len();
    let len = tag[at..].find('"').unwrap();
    &tag[at..at + len]
}

#[test]
fn headless_chromium_shows_an_entry_being_written_on_the_status_page() {
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&["--allow", "sh", "--metrics-listen", "127.0.0.1:0"]);
    let url = format!("http://{}/", daemon.metrics_addr());

    // A command that sends 64 KiB, then waits at a gate before its last 1000 bytes.
    // The gate opens when the test says so, or when the test ends, failed or not.
    let mut gate = LockGate::closed(&work.path().join("gate"));
    let body = format!(
        "head -c 65536 /dev/zero; flock -s {} true; head -c 1000 /dev/zero",
        gate.path.display()
    );
    let mut client = spawn_client(daemon.exec_cmd(false, &sh(&body)));
    let serving = daemon.wait_for_log(&["serving", "status=miss"]);
    let key = serving
        .split("key=")
        .nth(1)
        .and_then(|k| k.get(..16))
        .unwrap_or_else(|| panic!("no key in {serving}"))
        .to_owned();
    // Once the client has the first 64 KiB, the entry holds them, the client is its
    // reader, and the command waits at the gate: the entry is being written.
    assert_eq!(read_stdout(&mut client, 65536), vec![0u8; 65536]);

    let (status, dom, stderr) = chromium(work.path(), "dump", &["--dump-dom", &url]);
    assert!(status.success(), "chromium --dump-dom: {status}\n{stderr}");
    let rows: Vec<&str> = dom
        .lines()
        .filter(|l| l.contains("<tr class=\"entry\""))
        .collect();
    assert_eq!(rows.len(), 1, "one entry in the index:\n{dom}");
    let row = rows[0];
    assert!(attr(row, "data-key").starts_with(&key), "{key}: {row}");
    assert!(row.contains(&format!("<code>{key}</code>")), "{key}: {row}");
    assert_eq!(attr(row, "data-state"), "writing", "{row}");
    let written: u64 = attr(row, "data-bytes").parse().unwrap();
    assert!(written >= 65536, "{row}");
    let readers: u64 = attr(row, "data-readers").parse().unwrap();
    assert!(readers >= 1, "{row}");
    assert!(
        dom.contains(
            "<tr data-name=\"children_running\"><th>running</th><td class=\"num\">1</td></tr>"
        ),
        "{dom}"
    );

    let png = work.path().join("status.png");
    let (status, _, stderr) = chromium(
        work.path(),
        "shot",
        &[
            "--window-size=1200,900",
            "--hide-scrollbars",
            &format!("--screenshot={}", png.display()),
            &url,
        ],
    );
    assert!(
        status.success(),
        "chromium --screenshot: {status}\n{stderr}"
    );
    let image = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot: {e}\n{stderr}"));
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        image.len() > 20 << 10,
        "a screenshot of {} bytes",
        image.len()
    );
    // The IHDR chunk: width and height.
    let size = |at: usize| u32::from_be_bytes(image[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (1200, 900));

    gate.open();
    let out = output_within(client, "the client of the gated entry");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, vec![0u8; 1000]);
}
