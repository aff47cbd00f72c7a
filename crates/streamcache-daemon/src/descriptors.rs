//! The descriptor limit (`RLIMIT_NOFILE`), and how many connections it leaves room for.
//!
//! Every connection costs descriptors, and so does the command it starts. Under the
//! usual soft limit (1024: systemd's default, and most shells') the descriptors run out
//! before `max_connections` (1024 by default) is reached, since an idle connection alone
//! takes one. A daemon out of descriptors cannot `accept(2)`: the clients in the listen
//! queue are told nothing, not even `busy`, and a normal request waits until some
//! connection ends (issue 10: 1,100 idle connections, a request served after 28.7 s).
//!
//! So at start the daemon raises its soft limit to the hard one. systemd keeps the soft
//! limit at 1024 for programs that use `select(2)`, which cannot see descriptors past
//! 1023, and expects the others to raise it themselves; Go's runtime does so for every
//! Go program. The daemon then serves at most as many connections as the descriptors
//! left allow (see [`Budget`]), and refuses to start if that is none. The commands it
//! runs get the soft limit it was started with back, as Go's children do: some programs
//! misbehave under a large one (they use `select`, or close every descriptor up to the
//! limit before they `exec`).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors one connection holds at most while its command streams: the socket, the
/// command's stdin (a memory file or the spilled stdin), the read ends of its stdout
/// and stderr, the socket to the command's supervisor, the entry's write handle and its
/// read handle, and the pipe the entry is staged in on its way to the socket while the
/// reader follows the writer closely (`streamcache`'s `zerocopy`). A connection that
/// hits an entry holds fewer.
const PER_CONNECTION: u64 = 9;

/// Descriptors the daemon opens after start besides its connections': the cache's
/// handle on its directory and the sweep's walk below it, an entry's fan-out directory
/// while the entry is made, the `/metrics` scrapes (4 and one being turned away), the
/// notify socket, and some slack.
const FIXED_RESERVE: u64 = 16;

/// Starting a command takes 5 descriptors more for a moment: the supervisor's end of
/// its socket, the child's ends of its stdout and stderr pipes, and the pipe on which
/// the runtime learns whether `exec` worked. The reserve has room for this many commands starting at once. A start past
/// that which finds no descriptor fails before any output, and the clients waiting
/// for that command run it themselves (fail open).
const STARTS_AT_ONCE: u64 = 8;
const PER_START: u64 = 5;

/// Descriptors set aside for what is not a connection.
const RESERVE: u64 = FIXED_RESERVE + STARTS_AT_ONCE * PER_START;

/// What the descriptor limit allows, worked out once at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// The limit the daemon was started with; its commands get it back.
    inherited: Rlimit,
    /// The soft limit after raising it: what the daemon may open.
    limit: Option<u64>,
    /// Descriptors open when the budget was made (everything the daemon keeps open
    /// for its whole life was open by then).
    open: u64,
    /// Read handles the cache keeps open on recent entries, at most.
    kept: u64,
    /// Connections served at once: `max_connections`, or fewer if the descriptors
    /// left do not allow that many.
    pub(crate) connections: usize,
    /// `max_connections` as configured.
    pub(crate) max_connections: usize,
}

impl Budget {
    /// Works out how many connections the descriptor limit leaves room for, given the
    /// descriptors open now. Call it once everything the daemon keeps open for its
    /// whole life is open, and after [`raise`] (and after the cache was made, which
    /// sizes its kept handles from the limit then).
    ///
    /// # Errors
    ///
    /// If `/proc/self/fd` cannot be read, or if the limit leaves room for no connection
    /// at all; the message names the figures.
    pub(crate) fn plan(inherited: Rlimit, max_connections: usize) -> anyhow::Result<Budget> {
        let limit = getrlimit(Resource::Nofile).current;
        let open = open_now()?;
        let kept = kept_handles(limit);
        let room = match limit {
            // RLIM_INFINITY: Linux refuses it for this resource, but nothing to limit.
            None => u64::MAX,
            Some(limit) => limit.saturating_sub(open + RESERVE + kept) / PER_CONNECTION,
        };
        let connections =
            usize::try_from(room).map_or(max_connections, |room| room.min(max_connections));
        let budget = Budget {
            inherited,
            limit,
            open,
            kept,
            connections,
            max_connections,
        };
        if connections == 0 {
            anyhow::bail!(
                "the descriptor limit ({}) leaves no room for a single connection: {open} are \
                 open at start, {} are set aside, {kept} are for the cache's kept entry handles \
                 and a connection needs {PER_CONNECTION}; raise the hard limit (`LimitNOFILE=` \
                 in the systemd unit, `ulimit -Hn` in a shell)",
                budget.limit_text(),
                RESERVE,
            );
        }
        Ok(budget)
    }

    /// Whether the descriptors left lowered `max_connections`.
    pub(crate) fn is_lowered(&self) -> bool {
        self.connections < self.max_connections
    }

    /// The soft limit the commands get back, if the daemon changed it.
    pub(crate) fn for_commands(&self) -> Option<Rlimit> {
        (self.limit != self.inherited.current).then_some(self.inherited)
    }

    /// Logs the figures: the operator sees how the connection limit came about.
    pub(crate) fn log(&self) {
        let inherited = text(self.inherited.current);
        let hard = text(self.inherited.maximum);
        let limit = self.limit_text();
        if self.is_lowered() {
            tracing::warn!(
                soft = %limit,
                soft_before = %inherited,
                hard = %hard,
                open = self.open,
                reserve = RESERVE,
                kept_handles = self.kept,
                per_connection = PER_CONNECTION,
                connections = self.connections,
                max_connections = self.max_connections,
                "descriptor limit {limit}: room for {} connections at once, so max_connections \
                 ({}) is lowered to that; raise the hard limit for more",
                self.connections,
                self.max_connections,
            );
        } else {
            tracing::info!(
                soft = %limit,
                soft_before = %inherited,
                hard = %hard,
                open = self.open,
                reserve = RESERVE,
                kept_handles = self.kept,
                per_connection = PER_CONNECTION,
                connections = self.connections,
                max_connections = self.max_connections,
                "descriptor limit {limit}: room for max_connections ({}) connections",
                self.max_connections,
            );
        }
    }

    fn limit_text(&self) -> String {
        text(self.limit)
    }
}

/// Raises the soft descriptor limit to the hard one. Returns the limit the process had
/// before, for [`Budget::plan`]. Call it before the cache is made: the cache sizes its
/// kept handles from the limit.
pub(crate) fn raise() -> Rlimit {
    let inherited = getrlimit(Resource::Nofile);
    if inherited.current != inherited.maximum {
        let raised = Rlimit {
            current: inherited.maximum,
            maximum: inherited.maximum,
        };
        // An unlimited hard limit cannot be a soft one (Linux caps this limit at
        // `fs.nr_open`); the daemon then keeps the one it has, and the budget says so.
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, soft = %text(inherited.current), hard = %text(inherited.maximum), "cannot raise the descriptor limit");
        }
    }
    inherited
}

/// The cache's bound on kept read handles: a sixteenth of the limit, between 64 and
/// 4096. The same rule as `streamcache`'s `KeptHandles::new`, which reads the limit
/// when the cache is made.
fn kept_handles(limit: Option<u64>) -> u64 {
    (limit.unwrap_or(1024) / 16).clamp(64, 4096)
}

/// Descriptors open now (the one that lists them included: a harmless one too many).
fn open_now() -> anyhow::Result<u64> {
    let dir = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| anyhow::anyhow!("cannot count the open descriptors in /proc/self/fd: {e}"))?;
    Ok(dir.count() as u64)
}

fn text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string())
}
