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

/// Bytes kept in memory before the buffer moves to a file.
pub(crate) const MEMORY_LIMIT: usize = 1 << 20;

/// Bytes of stdin, in memory or in an unnamed temporary file.
#[derive(Debug)]
pub(crate) struct Spill {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    /// Where the file goes; `None` for the system's temporary directory.
    dir: Option<PathBuf>,
}

impl Spill {
    /// An empty buffer that spills into `dir` (or the system's temporary directory).
    pub(crate) fn new(dir: Option<PathBuf>) -> Spill {
        Spill {
            memory: Vec::new(),
            file: None,
            len: 0,
            dir,
        }
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
        match &mut self.file {
            None => w.write_all(&self.memory),
            Some(file) => {
                file.seek(SeekFrom::Start(0))?;
                let copied = io::copy(file, w)?;
                if copied != self.len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stdin buffer file shrank",
                    ));
                }
                Ok(())
            }
        }
    }

    /// A descriptor positioned at the first byte, to hand to a child as its stdin.
    pub(crate) fn into_stdio(self) -> io::Result<Stdio> {
        let fd: OwnedFd = match self.file {
            Some(mut file) => {
                file.seek(SeekFrom::Start(0))?;
                file.into()
            }
            None => {
                let mut file = memory_file(self.dir.as_deref())?;
                file.write_all(&self.memory)?;
                file.seek(SeekFrom::Start(0))?;
                file.into()
            }
        };
        Ok(Stdio::from(fd))
    }

    fn spill_to_file(&mut self) -> io::Result<&mut File> {
        let mut file = match &self.dir {
            Some(dir) => tempfile::tempfile_in(dir)?,
            None => tempfile::tempfile()?,
        };
        file.write_all(&self.memory)?;
        self.memory = Vec::new();
        Ok(self.file.insert(file))
    }
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.memory.len() + buf.len() > MEMORY_LIMIT {
            self.spill_to_file()?;
        }
        match &mut self.file {
            Some(file) => file.write_all(buf)?,
            None => self.memory.extend_from_slice(buf),
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An anonymous in-memory file (`memfd`), or an unnamed temporary file where memfd is
/// not available.
fn memory_file(dir: Option<&std::path::Path>) -> io::Result<File> {
    match rustix::fs::memfd_create("streamcache-stdin", rustix::fs::MemfdFlags::CLOEXEC) {
        Ok(fd) => Ok(File::from(fd)),
        Err(_) => match dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        },
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
        assert!(spill.file.is_none());
        assert_eq!(spill.len(), 16);
        assert_eq!(contents(spill), b"want abc\n--not\n\n");
    }

    #[test]
    fn input_past_the_memory_limit_moves_to_a_file_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..MEMORY_LIMIT + 12345).map(|i| (i % 251) as u8).collect();
        let spill = Spill::read_all(&mut &data[..], Some(dir.path().to_path_buf())).unwrap();
        assert!(spill.file.is_some());
        assert!(spill.memory.is_empty());
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
