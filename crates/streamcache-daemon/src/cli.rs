//! Command-line parsing and the three subcommands' entry points.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::{self, ExecOptions};
use crate::settings::{FileSettings, ServeFlags, ServeSettings};

/// Runs a command once per key and streams its output to every caller: a cache in
/// front of `git pack-objects` for clone storms, or any expensive command.
#[derive(Debug, Parser)]
#[command(
    name = "streamcache",
    version,
    propagate_version = true,
    after_long_help = MORE
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The end of `--help` and of streamcache(1): where things are and what to read next.
const MORE: &str = "\
Files: the settings file /etc/streamcache.toml or ~/.config/streamcache/config.toml \
(serve --config FILE); the cache in ~/.cache/streamcache (serve --dir); the socket in \
$XDG_RUNTIME_DIR (serve --socket, exec --socket, or $STREAMCACHE_SOCKET).

Set-up for git: git config --system uploadpack.packObjectsHook \
'/usr/local/bin/streamcache exec --'. If the daemon is down or refuses, exec runs the \
command itself: the cache is never the reason a clone fails (exec -v says why).

Several hosts: serve --remote s3://BUCKET/PREFIX, with AWS_ENDPOINT, AWS_REGION, \
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY in the environment.

Why a miss: exec --explain prints each part of the cache key.

Documentation: docs/DAEMON.md of the source (settings, systemd units, security model, \
restarts, several hosts, limits).";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: owns the cache, listens on a Unix socket, runs commands.
    Serve(Box<ServeArgs>),
    /// Run a command through the daemon (git's pack-objects hook runs this).
    ///
    /// Reads all of stdin, asks the daemon for the command's output (running it there
    /// once for all identical concurrent requests) and relays stdout, stderr and the
    /// exit code. If the daemon is unreachable or refuses, runs the command itself.
    ///
    /// Git set-up: git config --system uploadpack.packObjectsHook '/usr/local/bin/streamcache exec --'
    Exec(ExecArgs),
    /// Print the daemon's counters.
    Stats(StatsArgs),
    /// Say in plain words what the hook does for a user: each git's hook, the socket,
    /// whether the user may connect, whom the client trusts, whether the daemon serves
    /// the user and runs git pack-objects. Exit 0 if that user's clones are cached.
    Check(CheckArgs),
    /// Write the manual pages (streamcache(1) and one per subcommand), made from these
    /// very definitions: to DIR, or the main page to stdout. `man -l streamcache.1`
    /// reads one; packages install them in /usr/share/man/man1.
    Man(ManArgs),
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `streamcache completions bash > /usr/share/bash-completion/completions/streamcache`.
    Completions(CompletionsArgs),
    /// The daemon's own: run a command, and kill everything it started when the daemon
    /// says so or dies (see `supervisor.rs`).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The Unix socket to listen on [default: $XDG_RUNTIME_DIR/streamcache.sock, else
    /// <dir>/streamcache.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The cache's directory; entries go in <dir>/entries [default:
    /// $XDG_CACHE_HOME/streamcache, else ~/.cache/streamcache].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// A TOML file with these settings (flags win) [default:
    /// $XDG_CONFIG_HOME/streamcache/config.toml if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How long an entry is served after it was made [default: 5m].
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
    /// Cache a key only from its (N+1)-th occurrence within about 2 max-ages [default: 0].
    #[arg(long, value_name = "N")]
    min_occurrences: Option<u32>,
    /// Let commands write at full speed instead of at most one frame ahead of their
    /// fastest reader.
    #[arg(long)]
    no_backpressure: bool,
    /// Keep finished entries for this process only: a restarted daemon starts cold
    /// (by default entries are committed with a digest and adopted after a restart).
    #[arg(long)]
    no_durable: bool,
    /// Take over from a daemon of ours already serving on the socket: bind beside it,
    /// move our socket over its path, then tell it to finish its streams and exit (a
    /// restart that breaks no clone; SIGHUP makes the running daemon start this itself).
    #[arg(long)]
    replace: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics and a status page at http://ADDR/
    /// (e.g. 127.0.0.1:9236).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Allow PROGRAM, or PROGRAM with first argument SUBCOMMAND; repeatable; replaces
    /// the default list [default: git:pack-objects].
    #[arg(long, value_name = "PROGRAM[:SUBCOMMAND]")]
    allow: Vec<String>,
    /// On SIGTERM/SIGINT, how long streams in flight may finish [default: 1h].
    #[arg(long, value_name = "DURATION")]
    grace: Option<String>,
    /// Kill a command that runs longer than this; 0 for no limit [default: no limit].
    #[arg(long, value_name = "DURATION")]
    producer_timeout: Option<String>,
    /// How long a client may take to send its request and stdin [default: 30s].
    #[arg(long, value_name = "DURATION")]
    request_timeout: Option<String>,
    /// The largest stdin accepted, in bytes [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    max_stdin: Option<u64>,
    /// Connections served at once, or fewer if the descriptor limit has room for
    /// fewer; more are turned away and run their command themselves [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// error, warn, info, debug or trace [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// The user (name or uid) the daemon must run as; it refuses to start as anyone
    /// else. Clients trust a daemon of this user [default: none].
    #[arg(long, value_name = "USER")]
    daemon_user: Option<String>,
    /// The most bytes the cache's entry files may take, e.g. 20GiB; 0 for no budget. A
    /// miss without room runs its command outside the cache [default: no budget].
    #[arg(long, value_name = "SIZE")]
    max_disk: Option<String>,
    /// Keep this much free on the cache's file system, e.g. 10GiB or 5% (of the file
    /// system's size, measured at start); 0 for no guard [default: 5%].
    #[arg(long, value_name = "SIZE|PERCENT")]
    min_free: Option<String>,
    /// With back pressure, how far a command may run ahead of its fastest reader, e.g.
    /// 4MiB [default: 0, one write at a time].
    #[arg(long, value_name = "SIZE")]
    max_lead: Option<String>,
    /// Commands run at once, over all directories; more misses wait in line; 0 for no
    /// limit [default: no limit].
    #[arg(long, value_name = "N")]
    max_commands: Option<usize>,
    /// Commands run at once in one working directory (one repository); 0 for no limit
    /// [default: no limit].
    #[arg(long, value_name = "N")]
    max_commands_per_dir: Option<usize>,
    /// How long a miss waits in line for a command slot [default: 1m].
    #[arg(long, value_name = "DURATION")]
    max_queue_wait: Option<String>,
    /// What clients are told after max-queue-wait: "fail-open" (busy: they run the
    /// command themselves) or "refuse" (they fail, exit 75) [default: fail-open].
    #[arg(long, value_name = "WHAT")]
    queue_full: Option<String>,
    /// Also serve this user (name or uid), e.g. www-data for smart HTTP and git for ssh:
    /// one daemon and one cache for both. The socket becomes connectable by anyone; the
    /// peer check turns away everyone not allowed. Repeatable; replaces the file's list.
    #[arg(long = "allow-user", value_name = "USER")]
    allow_users: Vec<String>,
    /// Also serve the members of this group (name or gid). With one group and no user,
    /// the socket is 0660 and belongs to that group. Repeatable.
    #[arg(long = "allow-group", value_name = "GROUP")]
    allow_groups: Vec<String>,
    /// Share entries with the daemons of other hosts through S3-compatible object
    /// storage: s3://BUCKET/PREFIX. Endpoint, region and credentials come from the
    /// AWS_* variables (AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP) [default: none].
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// Size of the parts entries are uploaded in [default: 8MiB].
    #[arg(long, value_name = "SIZE")]
    remote_part_size: Option<String>,
    /// Take over another host's upload that has not advanced for this long
    /// [default: 30s].
    #[arg(long, value_name = "DURATION")]
    remote_takeover: Option<String>,
    /// Give up a request to the object store after this long (the daemon then runs the
    /// command itself) [default: 10s].
    #[arg(long, value_name = "DURATION")]
    remote_timeout: Option<String>,
    /// More logging: -v is debug, -vv trace (overrides --log-level).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Say on stderr why the daemon was not used (git shows it as "remote: ...").
    #[arg(short, long)]
    verbose: bool,
    /// The daemon's socket [default: $STREAMCACHE_SOCKET, the config file's socket, or
    /// the daemon's default].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also trust a daemon run by this user (name or uid); a socket bound by anyone but
    /// us, root or this user is not used [default: the config file's daemon_user].
    #[arg(long, value_name = "USER")]
    daemon_user: Option<String>,
    /// Extra material for the cache key (e.g. a tenant or repository id).
    #[arg(long, value_name = "MATERIAL")]
    key: Option<OsString>,
    /// Also send this environment variable (it goes into the key); repeatable.
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<OsString>,
    /// Print each part of the cache key (program, arguments, directory, each forwarded
    /// variable, key material, stdin digest) and the key, one per line, and run
    /// nothing: two requests that should share an entry can then be diffed.
    #[arg(long, conflicts_with = "explain_to")]
    explain: bool,
    /// Append that explanation of each request to FILE, then serve it as usual (put it
    /// in the hook while finding out why identical fetches stopped hitting).
    #[arg(long, value_name = "FILE")]
    explain_to: Option<PathBuf>,
    /// The command: PROGRAM ARGS...
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Check as this user (name or uid; needs root): its uid, groups and home.
    #[arg(long = "as", value_name = "USER")]
    user: Option<String>,
    /// The socket to check, instead of the one each hook names or the configured one.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ManArgs {
    /// Write streamcache.1 and streamcache-SUBCOMMAND.1 into this directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// The daemon's socket [default: as for exec].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the raw key=value lines instead of the table.
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, Args)]
struct SuperviseArgs {
    /// The descriptor of the daemon's control socket.
    control: i32,
    /// The command: BINARY ARG0 ARGS...
    #[arg(
        required = true,
        num_args = 2..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    run(Cli::parse())
}

/// `main` with these arguments: how the library's unit-test binary acts as the
/// supervisor (see `supervisor.rs`).
#[cfg(test)]
pub(crate) fn main_with(args: Vec<OsString>) -> ExitCode {
    run(Cli::parse_from(args))
}

fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Exec(args) => {
            let code = client::exec(ExecOptions {
                verbose: args.verbose,
                socket: args.socket,
                daemon_user: args.daemon_user,
                key: args.key,
                extra_env: args.env,
                explain: args.explain,
                explain_to: args.explain_to,
                command: args.command,
            });
            ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
        }
        Command::Serve(args) => report(serve(*args)),
        Command::Stats(args) => report(stats(args)),
        Command::Man(args) => report(man(args)),
        Command::Check(args) => match crate::check::run(args.user.as_deref(), args.socket) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("streamcache check: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "streamcache",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Supervise(args) => crate::supervisor::supervise(args.control, &args.command),
    }
}

/// The manual pages, from the clap definitions: the main page lists the subcommands,
/// each visible subcommand gets a page of its own with every flag.
fn man(args: ManArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    let cli = Cli::command();
    let Some(dir) = args.dir else {
        clap_mangen::Man::new(cli).render(&mut std::io::stdout().lock())?;
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, command: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
    };
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("streamcache-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()))?;
    }
    write("streamcache", cli)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamcache: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (file, file_path) = FileSettings::find(args.config.as_deref())?;
    let level = match args.verbose {
        0 => args.log_level.clone(),
        1 => Some("debug".to_owned()),
        _ => Some("trace".to_owned()),
    };
    let flags = ServeFlags {
        socket: args.socket,
        dir: args.dir,
        max_age: args.max_age,
        min_occurrences: args.min_occurrences,
        no_backpressure: args.no_backpressure,
        no_durable: args.no_durable,
        replace: args.replace,
        metrics_listen: args.metrics_listen,
        allow: args.allow,
        grace: args.grace,
        producer_timeout: args.producer_timeout,
        request_timeout: args.request_timeout,
        max_stdin: args.max_stdin,
        max_connections: args.max_connections,
        log_level: level,
        daemon_user: args.daemon_user,
        max_disk: args.max_disk,
        min_free: args.min_free,
        max_lead: args.max_lead,
        max_commands: args.max_commands,
        max_commands_per_dir: args.max_commands_per_dir,
        max_queue_wait: args.max_queue_wait,
        queue_full: args.queue_full,
        allow_users: args.allow_users,
        allow_groups: args.allow_groups,
        remote: args.remote,
        remote_part_size: args.remote_part_size,
        remote_takeover: args.remote_takeover,
        remote_timeout: args.remote_timeout,
    };
    let settings = ServeSettings::resolve(file, flags)?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(settings.log_level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(path) = file_path {
        tracing::info!(path = %path.display(), "read config file");
    }
    crate::server::serve(settings)
}

fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let mut notes = Vec::new();
    let socket = crate::settings::client_settings(args.socket, None, &mut notes)
        .socket
        .ok_or_else(|| anyhow::anyhow!("no socket path: pass --socket"))?;
    for note in notes {
        eprintln!("streamcache: {note}");
    }
    let text = client::fetch_stats(&socket)?;
    if args.raw {
        print!("{text}");
    } else {
        print!(
            "{}",
            crate::metrics::human_table(&crate::metrics::parse_stats(&text))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_everything_after_the_double_dash_as_the_command() {
        let cli = Cli::try_parse_from([
            "streamcache",
            "exec",
            "-v",
            "--socket",
            "/s",
            "--",
            "git",
            "--shallow-file",
            "",
            "pack-objects",
            "--stdout",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert!(args.verbose);
        assert_eq!(args.socket, Some(PathBuf::from("/s")));
        let command: Vec<&str> = args.command.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            command,
            ["git", "--shallow-file", "", "pack-objects", "--stdout"]
        );
    }

    #[test]
    fn supervise_takes_the_binary_arg0_and_arguments_after_the_double_dash() {
        let cli = Cli::try_parse_from([
            "streamcache",
            "supervise",
            "7",
            "--",
            "/usr/bin/git",
            "git",
            "-c",
            "",
            "pack-objects",
        ])
        .unwrap();
        let Command::Supervise(args) = cli.command else {
            panic!("not supervise")
        };
        assert_eq!(args.control, 7);
        let command: Vec<&str> = args.command.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(command, ["/usr/bin/git", "git", "-c", "", "pack-objects"]);
    }
}
