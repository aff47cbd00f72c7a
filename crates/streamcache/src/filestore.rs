//! Entry files on disk: naming, fan-out directories and the sweep of stale files.
//!
//! Layout: `<root>/<xx>/<id>-<n>`, where `<id>` is 20 random hex digits drawn once per
//! store, `<n>` counts the store's files from 1, and `<xx>` is the low byte of `<n>` in
//! hex, so files spread round-robin over at most 256 directories. Processes (and cache
//! instances) sharing one root never collide, because each has its own random `<id>`.
//! Directories are `0700`, files `0400`.
//!
//! Nothing below the root is ever reached through a symbolic link: files are created
//! and opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to the root,
//! and the sweep never follows links. A link planted in the cache directory is treated
//! as a stale file and removed once it is old enough.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::sync::{lock, Mutex};
use crate::{Error, Op, Result};

/// Creates entry files under one root directory.
#[derive(Debug)]
pub(crate) struct FileStore {
    root: PathBuf,
    id: OnceLock<String>,
    counter: AtomicU64,
    /// The root, opened once; created files are resolved beneath it. Reopened if the
    /// root was removed and created again.
    root_fd: Mutex<Option<std::sync::Arc<OwnedFd>>>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sweep {
    /// Files removed (or that we tried to remove).
    pub(crate) removed: u64,
    /// Bytes in the files left under the root.
    pub(crate) usage: u64,
}

impl FileStore {
    pub(crate) fn new(root: PathBuf) -> FileStore {
        FileStore {
            root,
            id: OnceLock::new(),
            counter: AtomicU64::new(0),
            root_fd: Mutex::new(None),
        }
    }

    #[cfg(test)]
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn id(&self) -> Result<&str> {
        if let Some(id) = self.id.get() {
            return Ok(id);
        }
        let mut bytes = [0u8; 10];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::io(Op::Random, &self.root, io::Error::other(e.to_string())))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(self.id.get_or_init(|| hex))
    }

    fn root_fd(&self, reopen: bool) -> Result<std::sync::Arc<OwnedFd>> {
        let mut slot = lock(&self.root_fd);
        if !reopen {
            if let Some(fd) = slot.as_ref() {
                return Ok(std::sync::Arc::clone(fd));
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| Error::io(Op::Mkdir, &self.root, e))?;
        let fd = rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(Op::Mkdir, &self.root, e.into()))?;
        let fd = std::sync::Arc::new(fd);
        *slot = Some(std::sync::Arc::clone(&fd));
        Ok(fd)
    }

    /// Creates a new, empty, uniquely named file and returns its write handle and path.
    pub(crate) fn create(&self) -> Result<(File, PathBuf)> {
        let id = self.id()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let dir = format!("{:02x}", n & 0xff);
        let relative = format!("{dir}/{id}-{n}");
        let path = self.root.join(&relative);
        let mut root = self.root_fd(false)?;
        let mut made_dir = false;
        loop {
            match openat_beneath(
                &root,
                &relative,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                0o400,
            ) {
                Ok(fd) => return Ok((File::from(fd), path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !made_dir => {
                    made_dir = true;
                    match rustix::fs::mkdirat(&*root, dir.as_str(), Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(rustix::io::Errno::NOENT) => {
                            // The root itself is gone (someone wiped the cache): make it
                            // again and start over.
                            root = self.root_fd(true)?;
                            rustix::fs::mkdirat(&*root, dir.as_str(), Mode::from_raw_mode(0o700))
                                .or_else(|e| {
                                    if e == rustix::io::Errno::EXIST {
                                        Ok(())
                                    } else {
                                        Err(e)
                                    }
                                })
                                .map_err(|e| {
                                    Error::io(Op::Mkdir, self.root.join(&dir), e.into())
                                })?;
                        }
                        Err(e) => return Err(Error::io(Op::Mkdir, self.root.join(&dir), e.into())),
                    }
                }
                Err(e) => return Err(Error::io(Op::Create, path, e)),
            }
        }
    }

    /// Opens an entry file of this store for reading, refusing any symbolic link below
    /// the root.
    pub(crate) fn open_reader(&self, path: &Path) -> io::Result<File> {
        let relative = path.strip_prefix(&self.root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "path is outside the cache root",
            )
        })?;
        let root = self.root_fd(false).map_err(io::Error::from)?;
        openat_beneath(&root, relative, OFlags::RDONLY, 0).map(File::from)
    }

    /// Removes every non-directory entry under the root last modified before `cutoff`,
    /// after giving every directory owner `rwx` so nothing blocks the walk. Directories
    /// are never removed: a concurrent create may be about to use one. A missing root is
    /// an empty one.
    pub(crate) fn sweep(&self, cutoff: SystemTime) -> Result<Sweep> {
        let mut report = Sweep::default();
        match fs::symlink_metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(report),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(Error::io(Op::Walk, &self.root, e)),
        }
        sweep_dir(&self.root, cutoff, &mut report)?;
        Ok(report)
    }
}

fn openat_beneath(
    root: &OwnedFd,
    relative: impl rustix::path::Arg,
    flags: OFlags,
    mode: u32,
) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(root, relative, flags, Mode::from_raw_mode(mode), how)
        .map_err(io::Error::from)
}

fn sweep_dir(dir: &Path, cutoff: SystemTime, report: &mut Sweep) -> Result<()> {
    repair_permissions(dir)?;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(Op::Walk, dir, e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(Op::Walk, dir, e)),
        };
        let path = entry.path();
        // symlink_metadata: a link is looked at, never through.
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(Op::Walk, &path, e)),
        };
        if meta.is_dir() {
            sweep_dir(&path, cutoff, report)?;
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if modified >= cutoff {
            report.usage += meta.size();
            continue;
        }
        report.removed += 1;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(Op::Remove, &path, e)),
        }
    }
    Ok(())
}

fn repair_permissions(dir: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(Op::Walk, dir, e)),
    };
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700))
            .map_err(|e| Error::io(Op::Walk, dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::time::Duration;

    // ported from internal/streamcache/filestore_test.go: TestFilestoreCreate
    #[test]
    fn a_created_file_is_writable_owner_read_only_and_one_level_deep() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().join("cache"));
        let (mut file, path) = store.create().unwrap();
        file.write_all(b"hello").unwrap();
        let relative = path.strip_prefix(store.root()).unwrap();
        let parts: Vec<_> = relative
            .iter()
            .map(|p| p.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(parts.len(), 2, "{relative:?}");
        assert_eq!(parts[0].len(), 2);
        assert!(parts[0]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let (id, n) = parts[1].split_once('-').unwrap();
        assert_eq!(id.len(), 20);
        assert_eq!(n, "1");
        assert_eq!(parts[0], "01");
        let file_mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(file_mode, 0o400);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }

    // ported from internal/streamcache/filestore_test.go: TestFilestoreCreate_concurrency
    #[test]
    fn concurrent_creates_all_succeed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileStore::new(tmp.path().to_owned()));
        let threads: Vec<_> = (0..100)
            .map(|_| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    let (file, path) = store.create().unwrap();
                    drop(file);
                    fs::remove_file(path).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    // ported from internal/streamcache/filestore_test.go: TestFilestoreCreate_uniqueness
    #[test]
    fn stores_sharing_a_root_never_reuse_a_name() {
        let tmp = tempfile::tempdir().unwrap();
        let mut names = HashSet::new();
        for _ in 0..10 {
            let store = FileStore::new(tmp.path().to_owned());
            for _ in 0..10 {
                let (_, path) = store.create().unwrap();
                names.insert(path);
            }
        }
        assert_eq!(names.len(), 100);
    }

    #[test]
    fn files_spread_over_at_most_256_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().to_owned());
        let mut dirs = HashSet::new();
        for _ in 0..600 {
            let (_, path) = store.create().unwrap();
            dirs.insert(path.parent().unwrap().to_owned());
        }
        assert_eq!(dirs.len(), 256);
    }

    // ported from internal/streamcache/filestore_test.go: TestFilestoreCleanwalk
    #[test]
    fn the_sweep_repairs_directories_removes_old_files_and_keeps_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir1 = root.join("dir1");
        let dir2 = root.join("dir2");
        fs::create_dir(&dir1).unwrap();
        fs::create_dir(&dir2).unwrap();
        fs::write(dir2.join("file"), b"hello").unwrap();
        fs::set_permissions(&dir2, fs::Permissions::from_mode(0o000)).unwrap();
        let store = FileStore::new(root.to_owned());
        let report = store
            .sweep(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        assert_eq!(report.removed, 1);
        for dir in [&dir1, &dir2] {
            let mode = fs::metadata(dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o700, 0o700, "{dir:?}");
        }
        assert!(!dir2.join("file").exists());
    }

    #[test]
    fn the_sweep_keeps_young_files_and_counts_their_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().to_owned());
        let (mut file, path) = store.create().unwrap();
        file.write_all(&[7u8; 1000]).unwrap();
        let report = store
            .sweep(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        assert_eq!(
            report,
            Sweep {
                removed: 0,
                usage: 1000
            }
        );
        assert!(path.exists());
    }

    #[test]
    fn a_missing_root_sweeps_as_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().join("absent"));
        assert_eq!(store.sweep(SystemTime::now()).unwrap(), Sweep::default());
    }

    #[test]
    fn the_sweep_removes_a_planted_link_but_never_what_it_points_to() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), b"keep me").unwrap();
        let root = tmp.path().join("cache");
        fs::create_dir(&root).unwrap();
        symlink(&outside, root.join("ab")).unwrap();
        symlink(outside.join("precious"), root.join("link-to-file")).unwrap();
        let store = FileStore::new(root.clone());
        store
            .sweep(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        assert!(outside.join("precious").exists());
        assert!(
            fs::symlink_metadata(root.join("ab")).is_err(),
            "the planted link is removed"
        );
    }

    #[test]
    fn creation_refuses_a_fan_out_directory_that_is_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = tmp.path().join("cache");
        fs::create_dir(&root).unwrap();
        // The first file goes to "01".
        symlink(&outside, root.join("01")).unwrap();
        let store = FileStore::new(root);
        let err = store.create().unwrap_err();
        assert_eq!(err.op(), Some(Op::Create), "{err}");
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing was created through the link"
        );
    }
}
