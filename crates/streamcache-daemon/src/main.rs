//! The `streamcache` binary. See `docs/DAEMON.md`.

fn main() -> std::process::ExitCode {
    streamcache_daemon::main()
}
