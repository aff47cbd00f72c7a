//! A buffer for a command's stdin: in memory while small, in an unnamed file beyond.
//!
//! The stdin of `git pack-objects` is small (41 KB for a full clone of git/git), but
//! nothing bounds it in general, so neither the client nor the daemon keeps more than
//! [`MEMORY_LIMIT`] of it in memory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;

use tempfile::SpooledTempFile;

/// Bytes kept in memory before the buffer moves to a file.
pub(crate) const MEMORY_LIMIT: usize = 1 << 20;

/// Bytes of stdin, in memory or in an unnamed temporary file (`tempfile`'s spooled
/// file, which rolls over past [`MEMORY_LIMIT`]). On top of it: the length, and a
/// memory-backed descriptor for a child's stdin while the bytes are in memory.
#[derive(Debug)]
pub(crate) struct Spill {
    spooled: SpooledTempFile,
    len: u64,
}

impl Spill {
    /// An empty buffer that spills into `dir` (or the system's temporary directory).
    pub(crate) fn new(dir: Option<PathBuf>) -> Spill {
        let spooled = match dir {
            Some(dir) => SpooledTempFile::new_in(MEMORY_LIMIT, dir),
            None => SpooledTempFile::new(MEMORY_LIMIT),
        };
        Spill { spooled, len: 0 }
    }

    /// Reads `r` to its end into a new buffer.
    pub(crate) fn read_all<R: Read>(r: &mut R, dir: Option<PathBuf>) -> io::Result<Spill> {
        let mut spill = Spill::new(dir);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(spill),
                Ok(n) => spill.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Copies everything into `w`.
    pub(crate) fn copy_to<W: Write + ?Sized>(&mut self, w: &mut W) -> io::Result<()> {
        self.spooled.seek(SeekFrom::Start(0))?;
        let copied = io::copy(&mut self.spooled, w)?;
        if copied != self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stdin buffer file shrank",
            ));
        }
        Ok(())
    }

    /// A descriptor positioned at the first byte, to hand to a child as its stdin.
    pub(crate) fn into_stdio(mut self) -> io::Result<Stdio> {
        let mut file = match self.memory_file() {
            Some(memfd) => memfd?,
            // On disk already (or no memfd): the spooled file's own descriptor.
            None => self.spooled.into_file()?,
        };
        file.seek(SeekFrom::Start(0))?;
        Ok(Stdio::from(OwnedFd::from(file)))
    }

    /// The bytes still in memory, copied into an anonymous in-memory file (`memfd`),
    /// so that a small stdin never touches the disk. `None` if they are on disk
    /// already, or memfd is not available.
    fn memory_file(&mut self) -> Option<io::Result<File>> {
        if self.spooled.is_rolled() {
            return None;
        }
        let memfd =
            rustix::fs::memfd_create("streamcache-stdin", rustix::fs::MemfdFlags::CLOEXEC).ok()?;
        let mut file = File::from(memfd);
        Some(
            self.spooled
                .seek(SeekFrom::Start(0))
                .and_then(|_| io::copy(&mut self.spooled, &mut file))
                .map(|_| file),
        )
    }
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.spooled.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.spooled.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(mut spill: Spill) -> Vec<u8> {
        let mut out = Vec::new();
        spill.copy_to(&mut out).unwrap();
        out
    }

    #[test]
    fn small_input_stays_in_memory_and_round_trips() {
        let mut spill = Spill::new(None);
        spill.write_all(b"want abc\n--not\n\n").unwrap();
        assert!(!spill.spooled.is_rolled());
        assert_eq!(spill.len(), 16);
        assert_eq!(contents(spill), b"want abc\n--not\n\n");
    }

    #[test]
    fn input_past_the_memory_limit_moves_to_a_file_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..MEMORY_LIMIT + 12345).map(|i| (i % 251) as u8).collect();
        let spill = Spill::read_all(&mut &data[..], Some(dir.path().to_path_buf())).unwrap();
        // Rolled over: the bytes are in the file, and no longer in memory.
        assert!(spill.spooled.is_rolled());
        assert_eq!(spill.len(), data.len() as u64);
        // The file is unnamed: nothing shows up in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(contents(spill), data);
    }

    #[test]
    fn stdio_of_either_kind_feeds_a_child_every_byte() {
        for size in [10usize, MEMORY_LIMIT + 1] {
            let data: Vec<u8> = (0..size).map(|i| (i % 256) as u8).collect();
            let spill = Spill::read_all(&mut &data[..], None).unwrap();
            let out = std::process::Command::new("cat")
                .stdin(spill.into_stdio().unwrap())
                .output()
                .unwrap();
            assert_eq!(out.stdout, data, "size {size}");
        }
    }
}
