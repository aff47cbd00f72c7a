//! Helpers shared by the integration tests: a cache in its own temporary directory,
//! running a scenario with back pressure on and off, counting files on disk.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use streamcache::{Cache, Config, Error, Stream, Writer};

/// A real cache in a fresh temporary directory it owns. The cache's root is a
/// subdirectory that does not exist until the first entry is made.
#[derive(Debug)]
pub(crate) struct TempCache {
    pub(crate) cache: Cache,
    root: PathBuf,
    // Dropped last: the directory outlives the cache.
    _dir: tempfile::TempDir,
}

impl TempCache {
    /// A "real cache" as the reference tests use it: max age 1 h, min-occurrences 0.
    pub(crate) fn new(backpressure: bool) -> TempCache {
        TempCache::with(|cfg| cfg.backpressure = backpressure)
    }

    /// Like [`TempCache::new`], then `tune` adjusts the configuration.
    pub(crate) fn with(tune: impl FnOnce(&mut Config)) -> TempCache {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().join("cache");
        let mut cfg = real_config(&root);
        tune(&mut cfg);
        let cache = Cache::new(cfg).expect("a valid configuration");
        TempCache {
            cache,
            root,
            _dir: dir,
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Regular files under the cache root.
    pub(crate) fn files(&self) -> usize {
        count_files(&self.root)
    }
}

/// The configuration of a "real cache" test: max age 1 h, min-occurrences 0 (every
/// lookup reaches the cache), back pressure on.
pub(crate) fn real_config(root: &Path) -> Config {
    let mut cfg = Config::new(root);
    cfg.max_age = Duration::from_secs(3600);
    cfg.min_occurrences = 0;
    cfg.backpressure = true;
    cfg
}

/// Runs `scenario` with back pressure on, then off. If it fails, the message says which.
pub(crate) fn with_and_without_backpressure(mut scenario: impl FnMut(bool)) {
    for backpressure in [true, false] {
        let _label = Label(backpressure);
        scenario(backpressure);
    }
}

/// Names the back-pressure setting of a failing scenario.
struct Label(bool);

impl Drop for Label {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the scenario failed with backpressure = {}", self.0);
        }
    }
}

/// Regular files anywhere under `root` (0 if it does not exist).
pub(crate) fn count_files(root: &Path) -> usize {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        Err(e) => panic!("cannot list {}: {e}", root.display()),
    };
    entries
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                count_files(&entry.path())
            } else {
                usize::from(kind.is_file())
            }
        })
        .sum()
}

/// `n` random bytes.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes
}

/// A producer that writes `content` in one call.
pub(crate) fn produce(
    content: impl AsRef<[u8]> + Send + 'static,
) -> impl FnOnce(&mut Writer) -> io::Result<()> + Send + 'static {
    move |w| w.write_all(content.as_ref())
}

/// A producer that must never run (the lookup is expected to be a hit).
pub(crate) fn never(w: &mut Writer) -> io::Result<()> {
    let _ = w;
    panic!("this lookup was expected to find the entry, yet it ran its producer")
}

/// `Cache::fetch` into a new buffer.
pub(crate) fn fetch_vec(
    cache: &Cache,
    key: &str,
    producer: impl FnOnce(&mut Writer) -> io::Result<()> + Send + 'static,
) -> Result<(Vec<u8>, bool), Error> {
    let mut out = Vec::new();
    let (n, created) = cache.fetch(key, &mut out, producer)?;
    assert_eq!(n, out.len() as u64, "fetch reports the bytes it copied");
    Ok((out, created))
}

/// Reads `stream` to its end and then waits for the producer: the bytes, and the error
/// if the read or the producer failed (the error a read returns unwrapped).
pub(crate) fn drain(stream: &mut Stream) -> (Vec<u8>, Result<(), Error>) {
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => {
            let waited = stream.wait();
            (out, waited)
        }
        Err(e) => (out, Err(Error::from_io(e))),
    }
}

/// Raises the soft limit on open files to the hard limit (tests with a thousand OS
/// pipes open at once need more than the common default of 1024).
pub(crate) fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).expect("raise the open file limit");
    }
}

/// An error and its causes, `: `-separated, as a log line or `anyhow`'s `{:#}` shows
/// them.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A tmpfs of a few MiB mounted on a fresh temporary directory, unmounted on drop: a
/// real file system that really fills up. Mounting needs root (CI runs as root).
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(mib: u64) -> Tmpfs {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::tempdir().expect("temporary directory");
        let options = format!("size={mib}m,mode=0700");
        if let Err(err) = mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        ) {
            panic!(
                "mounting a {mib} MiB tmpfs on {} failed: {err} (this test needs root: euid is {})",
                dir.path().display(),
                nix::unistd::geteuid()
            );
        }
        Tmpfs { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes in use on the file system now.
    pub(crate) fn used(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(self.dir.path()).expect("statvfs of the tmpfs");
        (st.blocks() - st.blocks_free()) * st.fragment_size()
    }

    /// Bytes free on the file system.
    pub(crate) fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(self.dir.path()).expect("statvfs of the tmpfs");
        st.blocks_free() * st.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a descriptor still open somewhere must not leave the mount behind.
        if let Err(err) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting {} failed: {err}", self.dir.path().display());
        }
    }
}
