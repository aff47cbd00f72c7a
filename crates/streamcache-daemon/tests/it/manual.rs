//! The manual pages and the shell completions, made from the command-line definitions:
//! they render with the real `man` and parse with the real shells.

use std::process::{Command, Stdio};

use crate::support::{text, BIN};

/// Renders a roff page with `man -l` into plain text.
fn render(page: &std::path::Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C")
        .stderr(Stdio::piped())
        .output()
        .expect("run man (Debian: man-db)");
    assert!(out.status.success(), "man -l failed: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn the_manual_pages_render_with_every_subcommand_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "streamcache-check.1",
            "streamcache-completions.1",
            "streamcache-exec.1",
            "streamcache-man.1",
            "streamcache-serve.1",
            "streamcache-stats.1",
            "streamcache.1",
        ],
        "one page per visible subcommand (supervise is the daemon's own)"
    );
    let main = render(&dir.path().join("streamcache.1"));
    for needle in [
        "streamcache-serve(1)",
        "streamcache-exec(1)",
        "uploadpack.packObjectsHook",
        "STREAMCACHE_SOCKET",
    ] {
        assert!(main.contains(needle), "{needle} not in:\n{main}");
    }
    let serve = render(&dir.path().join("streamcache-serve.1"));
    for flag in ["--remote", "--max-disk", "--replace", "--allow"] {
        assert!(serve.contains(flag), "{flag} not in:\n{serve}");
    }
    let exec = render(&dir.path().join("streamcache-exec.1"));
    assert!(exec.contains("--explain"), "{exec}");
}

#[test]
fn the_completion_scripts_parse_in_their_shells_and_complete_the_subcommands() {
    let script = |shell: &str| {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let bash = script("bash");
    for sub in ["serve", "exec", "stats"] {
        assert!(bash.contains(sub), "{sub} not in the bash script");
    }
    // `bash -n`: parsed, not run.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("streamcache.bash");
    std::fs::write(&path, &bash).unwrap();
    let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(out.status.success(), "bash -n: {}", text(&out.stderr));
    // Loaded for real, the completion function completes `streamcache se` to serve.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(streamcache se); COMP_CWORD=1; COMP_LINE='streamcache se'; \
             COMP_POINT=${{#COMP_LINE}}; _streamcache streamcache se streamcache; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "serve");
    for shell in ["zsh", "fish"] {
        assert!(script(shell).contains("streamcache"), "{shell}");
    }
}
