//! The daemon's Unix socket: created owner-only in a directory we checked, a stale file
//! replaced safely, peers checked by uid, both ways: the daemon checks its clients, and
//! a client checks that the daemon it reached is one it may trust.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rustix::fs::Mode;

use crate::peers::Access;

/// A bound listener and the identity of its socket file, so that shutdown removes
/// only the file we created (not one a newer daemon put in its place).
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Bound {
    /// Removes the socket file if it is still ours.
    pub(crate) fn remove_file(&self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket file");
                }
            }
            _ => {}
        }
    }
}

/// Creates `dir` (mode 0700) if missing, then checks it is a directory that only we
/// (or root) own and that no one else can write to. A sticky directory (like /tmp) is
/// refused as well: the sticky bit keeps others from removing our socket, but not from
/// binding the path first, while we are stopped, and answering our clients.
pub(crate) fn prepare_dir(dir: &Path, create: bool) -> anyhow::Result<()> {
    if create && !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let meta =
        fs::metadata(dir).with_context(|| format!("cannot use directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "directory {} belongs to uid {}, not to us (uid {me}) or root",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        bail!(
            "directory {} is writable by others (mode {:o}); others could bind the socket \
             path before us, sticky bit or not: use a directory only its owner can write",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Binds `path` with mode 0600. A socket file nobody listens on is replaced; a live
/// daemon, or a file that is not a socket, is an error.
#[cfg(test)]
pub(crate) fn bind(path: &Path) -> anyhow::Result<Bound> {
    bind_or_replace(path, false, Access::Owner).map(|(bound, _)| bound)
}

/// A socket bound beside a live daemon's, to be moved over its path once we serve.
#[derive(Debug)]
pub(crate) struct Takeover {
    /// The live daemon's pid, to tell it to stop.
    pub(crate) predecessor: i32,
    path: PathBuf,
}

impl Takeover {
    /// Moves our socket over the path: from now on the next client reaches us, while
    /// the other daemon keeps the connections it has. Call it once everything else is
    /// ready, so that a start that fails leaves the other daemon reachable.
    pub(crate) fn complete(self, bound: &mut Bound) -> anyhow::Result<()> {
        fs::rename(&bound.path, &self.path).with_context(|| {
            format!(
                "cannot move {} over {}",
                bound.path.display(),
                self.path.display()
            )
        })?;
        tracing::info!(path = %self.path.display(), predecessor = self.predecessor, "took the socket over from the daemon running before");
        bound.path = self.path;
        Ok(())
    }
}

/// [`bind`], or with `replace`, prepares to take the path over from a live daemon of
/// our own user without a moment in which it answers nobody: binds a fresh socket
/// beside it, which [`Takeover::complete`] then renames over the path.
///
/// `access` says who must be able to connect (see `peers`): the socket's mode and
/// group follow it, and its directory is made searchable by others if we own it.
pub(crate) fn bind_or_replace(
    path: &Path,
    replace: bool,
    access: Access,
) -> anyhow::Result<(Bound, Option<Takeover>)> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .context("the socket path has no directory")?;
    prepare_dir(parent, true)?;
    reachable_dir(parent, access)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(live) if replace => {
                let (uid, pid) = peer(&live)
                    .with_context(|| format!("cannot tell who listens on {}", path.display()))?;
                if uid != rustix::process::geteuid().as_raw() {
                    bail!(
                        "the daemon listening on {} runs as uid {uid}, not as us: not replacing it",
                        path.display()
                    );
                }
                polite_goodbye(live);
                let beside = parent.join(format!(
                    ".{}.{}.new",
                    path.file_name()
                        .map_or_else(|| "socket".into(), |n| n.to_string_lossy()),
                    std::process::id()
                ));
                let _ = fs::remove_file(&beside);
                let bound = listen(&beside, access)?;
                return Ok((
                    bound,
                    Some(Takeover {
                        predecessor: pid,
                        path: path.to_path_buf(),
                    }),
                ));
            }
            Ok(live) => {
                polite_goodbye(live);
                bail!(
                    "another daemon is listening on {}; stop it first, replace it (`serve --replace`), or pick another --socket",
                    path.display()
                )
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket file");
                fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot tell whether {} is in use", path.display()))
            }
        },
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot look at {}", path.display())),
    }
    Ok((listen(path, access)?, None))
}

/// Makes `dir` searchable (never readable or writable) by others when other users must
/// reach the socket in it and we own it; else warns if they cannot.
fn reachable_dir(dir: &Path, access: Access) -> anyhow::Result<()> {
    if access == Access::Owner {
        return Ok(());
    }
    let meta = fs::metadata(dir)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o001 != 0 {
        return Ok(());
    }
    if meta.uid() == rustix::process::geteuid().as_raw() {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o011))
            .with_context(|| format!("cannot make {} searchable", dir.display()))?;
        tracing::info!(dir = %dir.display(), mode = format!("{:o}", mode | 0o011), "made the socket's directory searchable for the allowed users");
    } else {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "the allowed users cannot reach the socket: its directory is not searchable by others");
    }
    Ok(())
}

/// Ends a probe of a live daemon with a stats request, so that the daemon logs no
/// "bad request" for a connection that said nothing. The reply is not waited for (the
/// daemon ignores a client that left); the request is small enough for the socket's
/// buffer, so writing it never blocks.
fn polite_goodbye(mut probe: UnixStream) {
    let _ = crate::wire::frame::write_frame(
        &mut probe,
        crate::wire::frame::Kind::StatsRequest,
        &[crate::wire::request::PROTOCOL_VERSION],
    );
}

/// Binds and listens on `path`, which must not exist: owner-only, then opened to
/// `access`.
fn listen(path: &Path, access: Access) -> anyhow::Result<Bound> {
    // Created owner-only from the start: no window in which others could connect
    // before the group is set.
    let old = rustix::process::umask(Mode::from_raw_mode(0o077));
    let listener = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = listener.with_context(|| format!("cannot listen on {}", path.display()))?;
    let mode = match access {
        Access::Owner => 0o600,
        Access::Group(gid) => {
            rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid))).with_context(
                || {
                    format!(
                        "cannot give {} to group {gid} (allow_groups): the daemon's user must be in that group, or root",
                        path.display()
                    )
                },
            )?;
            0o660
        }
        Access::Everyone => 0o666,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    let meta = fs::symlink_metadata(path)?;
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The peer's uid and pid, from `SO_PEERCRED`.
pub(crate) fn peer(stream: &UnixStream) -> io::Result<(u32, i32)> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    Ok((cred.uid.as_raw(), cred.pid.as_raw_nonzero().get()))
}

/// Whether a client may trust the daemon it reached, whose socket was bound by `uid`:
/// a daemon of its own user, root, or the configured daemon user. Anyone else may
/// have bound the path first, and must never see a request (it carries the caller's
/// environment and stdin) nor have its bytes taken for the command's output.
pub(crate) fn server_trusted(uid: u32, daemon_user: Option<u32>) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw() || Some(uid) == daemon_user
}

/// Tells systemd (or whoever set `NOTIFY_SOCKET`) our state, as `sd_notify(3)` does.
/// Failures are logged and otherwise ignored.
pub(crate) fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &target)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_owner_only_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/s.sock");
        let first = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let parent_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(parent_mode & 0o777, 0o700);
        // While it listens, a second daemon refuses to start.
        let err = bind(&path).unwrap_err();
        assert!(format!("{err:#}").contains("another daemon"), "{err:#}");
        // Dropping the listener leaves a stale file behind, which the next bind replaces.
        drop(first);
        assert!(path.exists());
        let second = bind(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        second.remove_file();
        assert!(!path.exists());
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        fs::write(&path, b"precious").unwrap();
        let err = bind(&path).unwrap_err();
        assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn a_directory_writable_by_others_is_refused_sticky_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        for mode in [0o777, 0o1777, 0o770, 0o1730] {
            fs::set_permissions(&open, fs::Permissions::from_mode(mode)).unwrap();
            let err = bind(&open.join("s.sock")).unwrap_err();
            assert!(format!("{err:#}").contains("writable by others"), "{err:#}");
            assert!(!open.join("s.sock").exists());
        }
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        bind(&open.join("s.sock")).unwrap();
    }

    #[test]
    fn remove_file_leaves_a_socket_that_replaced_ours_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let ours = bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        let _theirs = UnixListener::bind(&path).unwrap();
        ours.remove_file();
        assert!(path.exists());
    }

    #[test]
    fn our_own_peer_is_allowed() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (uid, pid) = peer(&a).unwrap();
        let peers = crate::peers::Peers::default();
        assert!(peers.allows(uid));
        assert_eq!(pid, std::process::id() as i32);
        assert!(!peers.allows(u32::MAX - 1) || rustix::process::geteuid().as_raw() == u32::MAX - 1);
    }

    #[test]
    fn a_client_trusts_its_own_user_root_and_the_named_daemon_user_only() {
        let me = rustix::process::geteuid().as_raw();
        assert!(server_trusted(me, None));
        assert!(server_trusted(0, None));
        let other = if me == 65534 { 65533 } else { 65534 };
        assert!(!server_trusted(other, None));
        assert!(!server_trusted(other, Some(other + 1)));
        assert!(server_trusted(other, Some(other)));
    }
}
