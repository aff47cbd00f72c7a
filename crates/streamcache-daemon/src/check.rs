//! `streamcache check [--as USER]`: what the hook would do for a user, in plain words.
//!
//! A hook that fails open is invisible by design (git shows a hook's stderr to the
//! user, so `exec` says why only under `-v`): a cache can silently serve nobody. This
//! walks the path a clone's `pack-objects` takes, as the user who runs upload-pack:
//! each git on the host and the hook its configuration gives it (a host often has two
//! gits, `/usr/bin/git` and `/usr/local/bin/git`, each with its own system config), the
//! socket the hook names, whether that user can connect, whether the client trusts who
//! serves it, whether the daemon serves that user, and whether it runs
//! `git pack-objects`. Each step says what it found; the last line says whether clones
//! by that user are cached. A refusal by the daemon is counted there
//! (`peer_refused_total`), as a real client's is.
//!
//! `--as USER` (root only) runs the check in a child with that user's uid, groups and
//! home, so that file modes and the peer check see that user.

use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The gits a host commonly has, each with its own system config, besides the one on
/// the PATH.
const GITS: &[&str] = &["/usr/bin/git", "/usr/local/bin/git"];

/// What the hook of one git is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hook {
    git: PathBuf,
    /// The hook's value and the file it comes from, if set.
    value: Option<(String, String)>,
}

/// What `exec` in a hook was told: its socket and daemon user, if given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ExecFlags {
    is_streamcache: bool,
    socket: Option<PathBuf>,
    daemon_user: Option<String>,
}

/// Runs the check as this process's user, or as `user` (then in a child). Returns the
/// exit code: 0 if clones through every git with the hook are cached, 1 if not.
pub(crate) fn run(user: Option<&str>, socket: Option<PathBuf>) -> anyhow::Result<i32> {
    match user {
        Some(user) => as_user(user, socket),
        None => Ok(check(socket)),
    }
}

/// Re-runs `check` as `user`: uid, primary and supplementary groups, home.
fn as_user(user: &str, socket: Option<PathBuf>) -> anyhow::Result<i32> {
    if !rustix::process::geteuid().is_root() {
        bail!("--as needs root (to take the user's uid and groups)");
    }
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    }
    .with_context(|| format!("cannot look up user {user:?}"))?
    .with_context(|| format!("no user {user:?}"))?;
    let name = std::ffi::CString::new(found.name.clone()).context("user name")?;
    let groups = nix::unistd::getgrouplist(&name, found.gid)
        .with_context(|| format!("cannot list the groups of {}", found.name))?;
    let (uid, gid) = (found.uid, found.gid);
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("streamcache").arg("check");
    if let Some(socket) = &socket {
        cmd.arg("--socket").arg(socket);
    }
    cmd.env("HOME", &found.dir)
        .env("USER", &found.name)
        .env("LOGNAME", &found.name)
        .current_dir("/");
    // SAFETY: between fork and exec the closure makes three system calls (setgroups,
    // setgid, setuid), which are async-signal-safe; the group list was made before.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(())
        });
    }
    println!(
        "as {} (uid {}, gid {}):",
        found.name,
        uid.as_raw(),
        gid.as_raw()
    );
    let status = cmd.status().context("cannot run the check as that user")?;
    Ok(status.code().unwrap_or(1))
}

/// The check itself, as this process's user: prints each step, returns the exit code.
fn check(socket_flag: Option<PathBuf>) -> i32 {
    let me = rustix::process::geteuid().as_raw();
    let hooks = hooks();
    let mut cached = Vec::new();
    let mut uncached = Vec::new();
    // Each socket is reached once: a refusal is counted by the daemon once per check.
    let mut checked: Vec<(Target, Result<(), String>)> = Vec::new();
    for hook in &hooks {
        let git = hook.git.display();
        let Some((value, origin)) = &hook.value else {
            println!("  {git}: no uploadpack.packObjectsHook: clones through it run pack-objects directly, uncached");
            uncached.push(format!("{git} (no hook)"));
            continue;
        };
        println!("  {git}: uploadpack.packObjectsHook = {value} ({origin})");
        let flags = exec_flags(value);
        if !flags.is_streamcache {
            println!("    not `streamcache exec`: this check cannot tell what it does");
            uncached.push(format!("{git} (another hook)"));
            continue;
        }
        let target = (socket_flag.clone().or(flags.socket), flags.daemon_user);
        let reached = match checked.iter().find(|(t, _)| *t == target) {
            Some((_, result)) => {
                println!("    the same socket and daemon user as above");
                result.clone()
            }
            None => {
                let result = reach(target.0.clone(), target.1.clone(), me);
                checked.push((target, result.clone()));
                result
            }
        };
        match reached {
            Ok(()) => cached.push(git.to_string()),
            Err(why) => {
                println!("    => {why}");
                uncached.push(format!("{git} (refused or unreachable)"));
            }
        }
    }
    if hooks.is_empty() {
        println!("  no git found ({} or on the PATH)", GITS.join(", "));
    }
    match (cached.is_empty(), uncached.is_empty()) {
        (false, true) => {
            println!(
                "verdict: clones by uid {me} are cached ({})",
                cached.join(", ")
            );
            0
        }
        (false, false) => {
            println!(
                "verdict: clones by uid {me} are cached through {}, not through {}",
                cached.join(", "),
                uncached.join("; ")
            );
            1
        }
        _ => {
            println!(
                "verdict: clones by uid {me} are NOT cached: {}; they still succeed (exec runs pack-objects itself)",
                if uncached.is_empty() { "no git".to_owned() } else { uncached.join("; ") }
            );
            1
        }
    }
}

/// Each git of the host (the usual two and the one on the PATH, each once) and its hook.
fn hooks() -> Vec<Hook> {
    let mut gits: Vec<PathBuf> = GITS.iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&path)
            .map(|d| d.join("git"))
            .find(|g| g.is_file())
        {
            gits.push(found);
        }
    }
    let mut seen = Vec::new();
    let mut hooks = Vec::new();
    for git in gits {
        let Ok(real) = std::fs::canonicalize(&git) else {
            continue;
        };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real);
        let value = Command::new(&git)
            .args([
                "config",
                "--show-origin",
                "--get",
                "uploadpack.packObjectsHook",
            ])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| {
                let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                let (origin, value) = text.split_once('\t')?;
                Some((value.to_owned(), origin.to_owned()))
            });
        hooks.push(Hook { git, value });
    }
    hooks
}

/// A socket (as the hook names it, if it does) and the daemon user the hook trusts.
type Target = (Option<PathBuf>, Option<String>);

/// What a hook's `streamcache exec` was told, from its words (split as a shell would,
/// for plain words and quotes).
fn exec_flags(hook: &str) -> ExecFlags {
    let words = words(hook);
    let Some(exec) = words
        .iter()
        .position(|w| w == "exec")
        .filter(|&i| i > 0 && words[i - 1].ends_with("streamcache"))
    else {
        return ExecFlags::default();
    };
    let mut flags = ExecFlags {
        is_streamcache: true,
        ..ExecFlags::default()
    };
    let mut rest = words[exec + 1..].iter();
    while let Some(word) = rest.next() {
        match word.as_str() {
            "--" => break,
            "--socket" => flags.socket = rest.next().map(PathBuf::from),
            "--daemon-user" => flags.daemon_user = rest.next().cloned(),
            w if w.starts_with("--socket=") => {
                flags.socket = Some(PathBuf::from(&w["--socket=".len()..]));
            }
            w if w.starts_with("--daemon-user=") => {
                flags.daemon_user = Some(w["--daemon-user=".len()..].to_owned());
            }
            _ => {}
        }
    }
    flags
}

/// Splits on blanks outside quotes; quotes are removed.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in text.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Walks from the socket to the daemon's answer, printing each step. `Err` is why
/// clones would not be cached.
fn reach(socket: Option<PathBuf>, daemon_user: Option<String>, me: u32) -> Result<(), String> {
    let mut notes = Vec::new();
    let client = crate::settings::client_settings(socket, daemon_user, &mut notes);
    for note in notes {
        println!("    note: {note}");
    }
    let Some(socket) = client.socket else {
        return Err("no socket path: the hook names none and none is configured".into());
    };
    let conn = match UnixStream::connect(&socket) {
        Ok(conn) => {
            println!("    socket {}: reached", socket.display());
            conn
        }
        Err(e) => return Err(unreachable(&socket, &e, me)),
    };
    let server = match crate::socket::peer(&conn) {
        Ok((uid, _)) => uid,
        Err(e) => return Err(format!("cannot tell who serves {}: {e}", socket.display())),
    };
    if !crate::socket::server_trusted(server, client.daemon_user) {
        return Err(format!(
            "the socket is served by uid {server}, which exec does not trust (only uid {me}, root{}): add --daemon-user to the hook",
            client.daemon_user.map_or_else(String::new, |u| format!(", uid {u}"))
        ));
    }
    println!("    served by uid {server}: trusted");
    let stats = crate::client::stats_on(conn).map_err(|e| {
        format!("{e:#}; add this user to allow_users (or a group of allow_groups) of the daemon")
    })?;
    println!("    the daemon serves uid {me}");
    let allow = stats
        .lines()
        .find_map(|l| l.strip_prefix("allow="))
        .unwrap_or("");
    let runs_pack_objects = allow.split(',').map(str::trim).any(|rule| {
        rule == "git" || rule.starts_with("git:pack-objects") || rule.starts_with("git=")
    });
    if !runs_pack_objects {
        return Err(format!(
            "the daemon does not run git pack-objects (allow = {allow}): exec runs it itself"
        ));
    }
    println!("    the daemon runs git pack-objects (allow = {allow})");
    Ok(())
}

/// Why `socket` could not be reached, in words an operator can act on.
fn unreachable(socket: &Path, err: &io::Error, me: u32) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => format!(
            "no daemon at {} (not running, or another socket)",
            socket.display()
        ),
        io::ErrorKind::ConnectionRefused => {
            format!("nothing listens on {} (a stale socket)", socket.display())
        }
        io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::MetadataExt;
            let mode = std::fs::metadata(socket)
                .map(|m| {
                    format!(
                        "mode {:o}, uid {}, gid {}",
                        m.mode() & 0o777,
                        m.uid(),
                        m.gid()
                    )
                })
                .unwrap_or_else(|_| "its directory is not searchable".into());
            format!(
                "uid {me} may not connect to {} ({mode}): allow it in the daemon's allow_users or allow_groups",
                socket.display()
            )
        }
        _ => format!("cannot reach {}: {err}", socket.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hooks_socket_and_daemon_user_are_read_from_its_words() {
        let flags = exec_flags(
            "/usr/local/bin/streamcache exec -v --daemon-user streamcache --socket '/run/s c/s.sock' --",
        );
        assert_eq!(
            flags,
            ExecFlags {
                is_streamcache: true,
                socket: Some(PathBuf::from("/run/s c/s.sock")),
                daemon_user: Some("streamcache".into()),
            }
        );
        assert_eq!(
            exec_flags("/usr/bin/other-hook exec --socket /x"),
            ExecFlags::default()
        );
        let flags = exec_flags("streamcache exec --socket=/s -- git --socket /no");
        assert_eq!(flags.socket, Some(PathBuf::from("/s")));
    }

    #[test]
    fn words_split_like_a_shell_for_plain_words_and_quotes() {
        assert_eq!(words(r#"a 'b c' "d"e  f"#), ["a", "b c", "de", "f"]);
        assert_eq!(words("''"), [""]);
    }
}
