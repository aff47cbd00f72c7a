//! The `streamcache` binary. See `docs/DAEMON.md`.
//!
//! Besides `main`, one thing runs before it: [`MARK_CLOSED_STDIO`].

use std::os::fd::{AsRawFd, IntoRawFd};

fn main() -> std::process::ExitCode {
    streamcache_daemon::main()
}

/// Marks a standard descriptor (0, 1, 2) that was closed when the process started, so
/// that `streamcache exec` can tell and run its command itself, with that descriptor
/// closed too: a command whose stdout is closed fails its writes and exits non-zero,
/// and so must `exec` (DAEMON.md, "Fail open").
///
/// Why before `main`: Rust's runtime, before `main`, reopens a closed 0, 1 or 2 as
/// `/dev/null` (read-write), and from then on that is indistinguishable from a
/// `/dev/null` a caller passed on purpose (Python's `subprocess.DEVNULL` and git's own
/// `run-command` pass exactly that: the same flags, position, device and inode in
/// `/proc/self/fdinfo`). So the check runs earlier, as an ELF constructor
/// (`.init_array`, which the C library runs before `main`; std itself reads `argv`
/// this way on glibc). It takes no `unsafe` code: a closed descriptor gets `/dev/null`
/// opened on it with `O_CLOEXEC`, which the runtime then leaves alone. An inherited
/// descriptor can never have that flag (`execve` would have closed it), so the flag
/// is the mark; and when `exec` then `exec`s the command, the kernel closes the
/// descriptor again, so the command sees it closed, as it would have without us.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static MARK_CLOSED_STDIO: extern "C" fn(i32, *const *const u8, *const *const u8) =
    mark_closed_stdio;

#[cfg(target_os = "linux")]
extern "C" fn mark_closed_stdio(_argc: i32, _argv: *const *const u8, _envp: *const *const u8) {
    use rustix::fs::{Mode, OFlags};
    for fd in [
        rustix::stdio::stdin(),
        rustix::stdio::stdout(),
        rustix::stdio::stderr(),
    ] {
        if rustix::io::fcntl_getfd(fd) != Err(rustix::io::Errno::BADF) {
            continue;
        }
        // The lowest free descriptor: this one, as the ones below are open by now.
        let Ok(null) = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        else {
            continue;
        };
        if null.as_raw_fd() == fd.as_raw_fd() {
            // Kept open for the life of the process, as the runtime would have.
            let _ = null.into_raw_fd();
        }
    }
}
