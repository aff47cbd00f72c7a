//! Entry files on disk: naming, fan-out directories, the owner of each file, and the
//! sweep of stale files.
//!
//! Layout: `<root>/<xx>/<id>-<n>`, where `<id>` is 20 random hex digits drawn once per
//! store, `<n>` counts the store's files from 1, and `<xx>` is the low byte of `<n>` in
//! hex, so files spread round-robin over at most 256 directories. Processes (and cache
//! instances) sharing one root never collide, because each has its own random `<id>`.
//! Directories are `0700`, files `0400`.
//!
//! # Nothing below the root is reached through a link
//!
//! The root is opened once (a root given through a symbolic link is resolved then; it
//! is opened again only if it was removed), and every operation below it goes through
//! directory descriptors, never through a path that could change between a check and
//! its use:
//!
//! * entry files are created and opened with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` relative to the root, readers with `O_NONBLOCK` and a check
//!   that what opened is a regular file (a FIFO renamed over an entry file must not
//!   block a lookup);
//! * an entry file is removed with `unlinkat` relative to its fan-out directory, itself
//!   opened beneath the root without following links;
//! * the sweep opens each directory with `O_NOFOLLOW | O_DIRECTORY` relative to its
//!   parent's descriptor, looks at names with `fstatat(AT_SYMLINK_NOFOLLOW)` and removes
//!   them with `unlinkat` relative to the directory it read them from. A directory
//!   swapped for a link between the look and the use is then either not entered (the
//!   open refuses the link) or the link itself is what goes.
//!
//! A link planted in the cache directory is treated as a stale file and removed once it
//! is old enough; what it points to is never touched.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::durable;
use crate::error::{Error, Op, Result};
use crate::sync::{lock, Mutex};

/// Creates entry files under one root directory and sweeps it.
#[derive(Debug)]
pub(crate) struct FileStore {
    root: PathBuf,
    id: OnceLock<String>,
    counter: AtomicU64,
    /// The root, opened once; reopened only if it was removed (and then made again).
    root_fd: Mutex<Option<Arc<OwnedFd>>>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sweep {
    /// Files removed (or that we tried to remove).
    pub(crate) removed: u64,
    /// Bytes in the files left under the root.
    pub(crate) usage: u64,
}

/// One entry file, named relative to the root's descriptor: the one value that opens
/// readers of the file and removes it. Its owner (the cache's entry) decides when the
/// name goes; dropping it leaves the file where it is (the sweep reclaims it in time).
///
/// A durable entry's file changes its name once, when it is committed
/// ([`EntryFile::commit`]); the name is behind a lock for that.
#[derive(Debug)]
pub(crate) struct EntryFile {
    root: Arc<OwnedFd>,
    place: Mutex<Place>,
    /// The file's inode: a name is removed only while it still holds this file (a
    /// committed name may have been taken over by another process's commit since).
    ino: u64,
}

#[derive(Debug, Clone)]
struct Place {
    /// The fan-out directory, relative to the root.
    dir: String,
    /// The file's name in `dir`.
    name: String,
    /// The full path, for messages only: it is never opened.
    path: Arc<Path>,
}

impl EntryFile {
    /// `ino`: the file's inode (see the field).
    fn new(root: Arc<OwnedFd>, dir: String, name: String, path: Arc<Path>, ino: u64) -> Self {
        EntryFile {
            root,
            place: Mutex::new(Place { dir, name, path }),
            ino,
        }
    }

    /// The file's path, for error messages and logs.
    pub(crate) fn path(&self) -> Arc<Path> {
        Arc::clone(&lock(&self.place).path)
    }

    /// Opens the file for reading. Fails, without blocking, if anything below the root
    /// is a link or the name no longer holds a regular file.
    pub(crate) fn open_reader(&self) -> Result<File> {
        let place = lock(&self.place).clone();
        let relative = format!("{}/{}", place.dir, place.name);
        open_regular(&self.root, &relative, &place.path).map(|(file, _)| file)
    }

    /// Removes the file's name, relative to its fan-out directory, if the name still
    /// holds this file. Open handles keep reading. Removing a name that is already gone
    /// is not an error.
    pub(crate) fn remove(&self) -> Result<()> {
        // Held to the end: a commit renaming the file meanwhile would leave its new
        // name behind.
        let place = lock(&self.place);
        let dir = match openat_beneath(
            &self.root,
            place.dir.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            0,
        ) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(Op::Remove, &*place.path, e)),
        };
        match rustix::fs::statat(&dir, place.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_ino == self.ino => {}
            // Another file (another process committed the key since), or none.
            Ok(_) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(Error::io(Op::Remove, &*place.path, e.into())),
        }
        match rustix::fs::unlinkat(&dir, place.name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io(Op::Remove, &*place.path, e.into())),
        }
    }

    /// Gives the file its committed name for `key` (see [`crate::durable`]): one
    /// `rename(2)`, so the file is committed whole or not at all. A file committed for
    /// the key before (by another process) is replaced; its readers read on.
    pub(crate) fn commit(&self, key: &str) -> Result<()> {
        let (to_dir, to_name) = durable::committed_name(key);
        let mut place = lock(&self.place);
        let to_path: Arc<Path> = match place.path.ancestors().nth(2) {
            Some(root) => root.join(&to_dir).join(&to_name).into(),
            None => Path::new(&to_dir).join(&to_name).into(),
        };
        let directory = OFlags::RDONLY | OFlags::DIRECTORY;
        let target = match openat_beneath(&self.root, to_dir.as_str(), directory, 0) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Made one level at a time, each inside a directory opened beneath the
                // root, so no planted link is followed.
                let mkdir_error = |e: rustix::io::Errno| Error::io(Op::Mkdir, &*to_path, e.into());
                mkdir_at(&self.root, durable::COMMITTED).map_err(mkdir_error)?;
                let top = openat_beneath(&self.root, durable::COMMITTED, directory, 0)
                    .map_err(|e| Error::io(Op::Mkdir, &*to_path, e))?;
                let fanout = to_dir.rsplit('/').next().unwrap_or(to_dir.as_str());
                mkdir_at(&top, fanout).map_err(mkdir_error)?;
                openat_beneath(&self.root, to_dir.as_str(), directory, 0)
                    .map_err(|e| Error::io(Op::Commit, &*to_path, e))?
            }
            Err(e) => return Err(Error::io(Op::Commit, &*to_path, e)),
        };
        let source = openat_beneath(
            &self.root,
            place.dir.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            0,
        )
        .map_err(|e| Error::io(Op::Commit, &*place.path, e))?;
        // Both names are single components of directories opened beneath the root: no
        // link is followed.
        rustix::fs::renameat(&source, place.name.as_str(), &target, to_name.as_str())
            .map_err(|e| Error::io(Op::Commit, &*place.path, e.into()))?;
        *place = Place {
            dir: to_dir,
            name: to_name,
            path: to_path,
        };
        Ok(())
    }
}

/// A committed file found by key: its read handle, its size, and its owner.
#[derive(Debug)]
pub(crate) struct Committed {
    pub(crate) file: File,
    pub(crate) size: u64,
    pub(crate) entry_file: EntryFile,
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

    /// The root's descriptor: the one opened before, unless the root has been removed
    /// since (or `reopen`); then the root is opened again, made first if `create`.
    /// `None` if it does not exist and `create` is false.
    fn root_fd(&self, create: bool, reopen: bool) -> Result<Option<Arc<OwnedFd>>> {
        let mut slot = lock(&self.root_fd);
        if let Some(fd) = slot.as_ref() {
            let alive = rustix::fs::fstat(&**fd).is_ok_and(|st| st.st_nlink > 0);
            if alive && !reopen {
                return Ok(Some(Arc::clone(fd)));
            }
        }
        if create {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(|e| Error::io(Op::Mkdir, &self.root, e))?;
        }
        // The one place the root's own path is followed, links and all.
        let fd = match rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
            Err(e) => return Err(Error::io(Op::Mkdir, &self.root, e.into())),
        };
        let fd = Arc::new(fd);
        *slot = Some(Arc::clone(&fd));
        Ok(Some(fd))
    }

    fn root_for_create(&self, reopen: bool) -> Result<Arc<OwnedFd>> {
        self.root_fd(true, reopen)?
            .ok_or_else(|| Error::io(Op::Mkdir, &self.root, io::ErrorKind::NotFound.into()))
    }

    /// Bytes free to unprivileged users on the root's file system (the root is made
    /// first if it is missing).
    pub(crate) fn free_bytes(&self) -> Result<u64> {
        let root = self.root_for_create(false)?;
        let st = rustix::fs::fstatvfs(&*root)
            .map_err(|e| Error::io(Op::FreeSpace, &self.root, e.into()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Creates a new, empty, uniquely named file and returns its write handle and the
    /// value that owns its name.
    pub(crate) fn create(&self) -> Result<(File, EntryFile)> {
        let id = self.id()?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let dir = format!("{:02x}", n & 0xff);
        let name = format!("{id}-{n}");
        let relative = format!("{dir}/{name}");
        let path: Arc<Path> = self.root.join(&relative).into();
        let mut root = self.root_for_create(false)?;
        let mut made_dir = false;
        loop {
            match openat_beneath(
                &root,
                relative.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                0o400,
            ) {
                Ok(fd) => {
                    let ino = rustix::fs::fstat(&fd).map_or(0, |st| st.st_ino);
                    let file = EntryFile::new(root, dir, name, path, ino);
                    return Ok((File::from(fd), file));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !made_dir => {
                    made_dir = true;
                    match mkdir_at(&root, &dir) {
                        Ok(()) => {}
                        Err(rustix::io::Errno::NOENT) => {
                            // The root itself is gone (someone wiped the cache): make it
                            // again and start over.
                            root = self.root_for_create(true)?;
                            mkdir_at(&root, &dir).map_err(|e| {
                                Error::io(Op::Mkdir, self.root.join(&dir), e.into())
                            })?;
                        }
                        Err(e) => return Err(Error::io(Op::Mkdir, self.root.join(&dir), e.into())),
                    }
                }
                Err(e) => return Err(Error::io(Op::Create, &*path, e)),
            }
        }
    }

    /// Opens the committed file of `key`, if there is one (one `openat`, see
    /// [`crate::durable`]).
    pub(crate) fn open_committed(&self, key: &str) -> Result<Option<Committed>> {
        let (dir, name) = durable::committed_name(key);
        self.open_committed_at(dir, name)
    }

    /// Opens the committed file `name` in `dir` (below the root), if it is there.
    pub(crate) fn open_committed_at(&self, dir: String, name: String) -> Result<Option<Committed>> {
        let Some(root) = self.root_fd(false, false)? else {
            return Ok(None);
        };
        let relative = format!("{dir}/{name}");
        let path: Arc<Path> = self.root.join(&relative).into();
        let (file, stat) = match open_regular(&root, &relative, &path) {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // Not ours to serve; the sweep removes it in time.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(e),
        };
        let entry_file = EntryFile::new(root, dir, name, path, stat.st_ino);
        Ok(Some(Committed {
            file,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            entry_file,
        }))
    }

    /// The names of the committed files under the root: `(directory, name)` pairs,
    /// for adoption. Entries that are not regular files are left out.
    pub(crate) fn committed_files(&self) -> Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        let Some(root) = self.root_fd(false, false)? else {
            return Ok(found);
        };
        let top = self.root.join(durable::COMMITTED);
        let committed = match openat_beneath(
            &root,
            durable::COMMITTED,
            OFlags::RDONLY | OFlags::DIRECTORY,
            0,
        ) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(Error::io(Op::Walk, &top, e)),
        };
        for (sub, stat) in names(&committed, &top)? {
            if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                continue;
            }
            let sub = String::from_utf8_lossy(sub.to_bytes()).into_owned();
            let dir = format!("{}/{sub}", durable::COMMITTED);
            let at = self.root.join(&dir);
            let fd =
                match openat_beneath(&root, dir.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, 0) {
                    Ok(fd) => fd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(Op::Walk, &at, e)),
                };
            for (name, stat) in names(&fd, &at)? {
                if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
                    found.push((
                        dir.clone(),
                        String::from_utf8_lossy(name.to_bytes()).into_owned(),
                    ));
                }
            }
        }
        Ok(found)
    }

    /// Removes every non-directory entry under the root last modified before `cutoff`,
    /// after giving every directory owner `rwx` so nothing blocks the walk. Directories
    /// are never removed: a concurrent create may be about to use one. A missing root is
    /// an empty one.
    pub(crate) fn sweep(&self, cutoff: SystemTime) -> Result<Sweep> {
        let mut report = Sweep::default();
        let Some(root) = self.root_fd(false, false)? else {
            return Ok(report);
        };
        repair_permissions(root.as_fd(), &self.root)?;
        let dir = rustix::fs::openat(
            &*root,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(Op::Walk, &self.root, e.into()))?;
        sweep_dir(dir, &self.root, cutoff, &mut report)?;
        Ok(report)
    }
}

/// Opens `relative` below `root` for reading, without blocking, and checks that it is a
/// regular file (a FIFO renamed over an entry file must not block a lookup); also
/// returns what `fstat` said of it. Anything else there is an
/// [`io::ErrorKind::InvalidData`] error.
fn open_regular(root: &OwnedFd, relative: &str, path: &Path) -> Result<(File, rustix::fs::Stat)> {
    let fd = openat_beneath(root, relative, OFlags::RDONLY | OFlags::NONBLOCK, 0)
        .map_err(|e| Error::io(Op::OpenReader, path, e))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| Error::io(Op::OpenReader, path, e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        let err = io::Error::new(io::ErrorKind::InvalidData, "not a regular file");
        return Err(Error::io(Op::OpenReader, path, err));
    }
    Ok((File::from(fd), stat))
}

/// The names in the directory open on `dir` (`.` and `..` left out), each with what
/// `fstatat(AT_SYMLINK_NOFOLLOW)` says of it (a link is looked at, never through).
/// Names gone by the time they are looked at are left out. `at` is the directory's
/// path, for messages. Nothing is removed while the directory is read: removing names
/// meanwhile is allowed but makes what the reading sees unspecified.
fn names(dir: &OwnedFd, at: &Path) -> Result<Vec<(std::ffi::CString, rustix::fs::Stat)>> {
    let walk_error = |e: rustix::io::Errno| Error::io(Op::Walk, at, e.into());
    let mut found = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir).map_err(walk_error)?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(walk_error)?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            found.push(name.to_owned());
        }
    }
    drop(entries);
    let mut names = Vec::with_capacity(found.len());
    for name in found {
        match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => names.push((name, stat)),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                let path = at.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
                return Err(Error::io(Op::Walk, &path, e.into()));
            }
        }
    }
    Ok(names)
}

fn mkdir_at(root: &OwnedFd, dir: &str) -> rustix::io::Result<()> {
    match rustix::fs::mkdirat(root, dir, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
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

/// Sweeps the directory open on `dir` (its path, `at`, is for messages only).
fn sweep_dir(dir: OwnedFd, at: &Path, cutoff: SystemTime, report: &mut Sweep) -> Result<()> {
    for (name, stat) in names(&dir, at)? {
        let path = at.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            // Swapped for something else since the look: not entered now; the next
            // sweep sees what it is.
            if let Some(sub) = open_subdir(dir.as_fd(), &name, &path)? {
                sweep_dir(sub, &path, cutoff, report)?;
            }
            continue;
        }
        let modified = modified(&stat);
        if modified >= cutoff {
            report.usage += u64::try_from(stat.st_size).unwrap_or(0);
            continue;
        }
        report.removed += 1;
        match rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::empty()) {
            // Gone already, or a directory swapped in since the look: left alone.
            Ok(()) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::ISDIR) => {}
            Err(e) => return Err(Error::io(Op::Remove, &path, e.into())),
        }
    }
    Ok(())
}

/// Opens the subdirectory `name` of `dir` for reading without following a link, after
/// giving its owner `rwx`. `None` if it is gone or no longer a directory.
fn open_subdir(dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<Option<OwnedFd>> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // O_PATH needs no permission on the directory itself, so a directory without `r`
    // or `x` can still be repaired; the repair goes through the descriptor.
    let handle = match rustix::fs::openat(dir, name, flags | OFlags::PATH, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            return Ok(None)
        }
        Err(e) => return Err(Error::io(Op::Walk, path, e.into())),
    };
    repair_permissions(handle.as_fd(), path)?;
    match rustix::fs::openat(
        &handle,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) => Err(Error::io(Op::Walk, path, e.into())),
    }
}

/// Gives the owner of the directory open on `dir` `rwx`, so the sweep can walk it.
fn repair_permissions(dir: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let stat = rustix::fs::fstat(dir).map_err(|e| Error::io(Op::Walk, path, e.into()))?;
    let mode = stat.st_mode & 0o7777;
    if mode & 0o700 == 0o700 {
        return Ok(());
    }
    let repaired = Mode::from_raw_mode(mode | 0o700);
    // `fchmod` refuses an `O_PATH` descriptor; the kernel's own name for the descriptor
    // reaches the very directory it holds, never a link.
    let result = match rustix::fs::fchmod(dir, repaired) {
        Err(rustix::io::Errno::BADF) => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
            rustix::fs::chmod(format!("/proc/self/fd/{fd}").as_str(), repaired)
        }
        other => other,
    };
    result.map_err(|e| Error::io(Op::Walk, path, e.into()))
}

fn modified(stat: &rustix::fs::Stat) -> SystemTime {
    let secs = stat.st_mtime;
    let nanos = u32::try_from(stat.st_mtime_nsec).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    // ported from internal/streamcache/filestore_test.go: TestFilestoreCreate
    #[test]
    fn a_created_file_is_writable_owner_read_only_and_one_level_deep() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().join("cache"));
        let (mut file, entry) = store.create().unwrap();
        let path = entry.path().to_path_buf();
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
                    let (file, entry) = store.create().unwrap();
                    drop(file);
                    entry.remove().unwrap();
                    assert!(!entry.path().exists());
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
                let (_, entry) = store.create().unwrap();
                names.insert(entry.path().to_path_buf());
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
            let (_, entry) = store.create().unwrap();
            dirs.insert(entry.path().parent().unwrap().to_owned());
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
        let (mut file, entry) = store.create().unwrap();
        let path = entry.path().to_path_buf();
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

    #[test]
    fn removing_an_entry_file_never_follows_a_fan_out_directory_swapped_for_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let store = FileStore::new(tmp.path().join("cache"));
        let (_, entry) = store.create().unwrap();
        let fan_out = entry.path().parent().unwrap().to_owned();
        let name = entry.path().file_name().unwrap().to_owned();
        // The same name outside, and the fan-out directory replaced by a link to it.
        fs::write(outside.join(&name), b"keep me").unwrap();
        fs::rename(&fan_out, tmp.path().join("moved")).unwrap();
        symlink(&outside, &fan_out).unwrap();
        let err = entry.remove().unwrap_err();
        assert_eq!(err.op(), Some(Op::Remove), "{err}");
        assert!(outside.join(&name).exists(), "nothing outside is removed");
    }

    #[test]
    fn opening_a_reader_refuses_a_fifo_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::new(tmp.path().to_owned());
        let (_, entry) = store.create().unwrap();
        fs::remove_file(&*entry.path()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &*entry.path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = entry.open_reader().unwrap_err();
        assert_eq!(err.op(), Some(Op::OpenReader), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
