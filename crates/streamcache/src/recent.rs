//! The producer's most recent writes, kept in memory for the readers close behind it.
//!
//! A reader that follows its producer asks for bytes the producer wrote microseconds
//! ago. Through `pread` each such read is a system call, a page-cache lookup and a
//! reference count taken and dropped on every page: at 64 readers on tmpfs, the
//! profile showed a fifth of all CPU time in `shmem_file_read_iter` and its lookups
//! beside 37% in the copy itself. So the writer also keeps its last [`SLOTS`] pieces of
//! at most [`PIECE`] bytes each (2 MiB, within a core's L2 here) in memory, and a reader
//! whose position falls in one of them copies from it with no system call at all; a
//! reader further behind reads the file as before.
//!
//! Each slot holds an immutable [`Piece`] behind an `Arc`: a reader clones the `Arc`
//! under the slot's lock (held for that clone alone) and copies outside it; the writer
//! replaces a slot's piece, and reuses the old buffer only when no reader holds it
//! (`Arc::get_mut`). Bytes at a stream position never change, so a reader that finds a
//! piece holding its position has the right bytes whatever happened since; it copies
//! no further than what the writer has published. No `unsafe`, no torn reads, and the
//! writer never waits for a reader.
//!
//! The writer fills pieces only while more readers copy than there are cores: with as
//! many readers as cores or fewer, each `pread`s on a core of its own beside the
//! writer, and the pieces would only add a copy to the writer's (the slowest) side
//! (W1 N = 1: -5 to -8%). Readers that `sendfile` into a socket do not count: they
//! gain nothing from pieces. The writer drops every piece when the stream ends, so a
//! finished entry holds no memory for them.
//!
//! How many: with 2 MiB, a third of the bytes 64 readers copied on tmpfs still came
//! through `pread` (readers on 2 cores fall that far behind the writer between their
//! turns); 8 MiB took W1 N = 64 from 23 to 26 GB/s and N = 16 from 14.2 to 15.2.

use std::sync::Arc;

use crate::sync::{lock, AtomicU64, AtomicUsize, Mutex};
use std::sync::atomic::Ordering::SeqCst;

/// How many pieces are kept.
const SLOTS: usize = if cfg!(loom) { 2 } else { 128 };
/// Readers that must copy before the writer keeps pieces: more than there are cores.
fn enough_copiers() -> usize {
    if cfg!(loom) {
        1
    } else {
        crate::sync::cores() + 1
    }
}
/// The most bytes one piece holds; a longer write takes several.
pub(crate) const PIECE: usize = if cfg!(loom) { 2 } else { 64 << 10 };

/// Bytes `start..start + bytes.len()` of the stream.
#[derive(Debug)]
struct Piece {
    start: u64,
    bytes: Vec<u8>,
}

impl Piece {
    fn holds(&self, position: u64) -> bool {
        position >= self.start && position - self.start < self.bytes.len() as u64
    }
}

/// The recent pieces of one stream (see the module docs).
#[derive(Debug)]
pub(crate) struct Recent {
    slots: Box<[Mutex<Option<Arc<Piece>>>]>,
    /// Pieces put so far: the next goes in slot `next % SLOTS`. Written by the writer
    /// alone; readers take it as a hint of where to look.
    next: AtomicUsize,
    /// Where the oldest kept piece starts (`u64::MAX`: none is kept), so that a reader
    /// further behind goes to the file without looking through every slot. Only a hint:
    /// a piece is used only if it holds the reader's position.
    oldest: AtomicU64,
    /// Readers that copy (not `sendfile`): while there are fewer than `enough`, the
    /// writer keeps nothing.
    copiers: AtomicUsize,
    enough: usize,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            oldest: AtomicU64::new(u64::MAX),
            copiers: AtomicUsize::new(0),
            enough: enough_copiers(),
        }
    }
}

impl Recent {
    /// Keeps `bytes`, the stream from `start` on, for the readers that copy. Called by
    /// the one writer, after the bytes reached the file and before it publishes them.
    pub(crate) fn put(&self, start: u64, bytes: &[u8]) {
        if self.copiers.load(SeqCst) < self.enough {
            return;
        }
        // Of a write longer than the ring, only its end is worth keeping.
        let skip = bytes.len().saturating_sub(SLOTS * PIECE) / PIECE * PIECE;
        let mut at = start + skip as u64;
        for part in bytes[skip..].chunks(PIECE) {
            let next = self.next.load(SeqCst);
            let slot = &self.slots[next % SLOTS];
            // Once every slot is full, the piece after this one is the oldest left.
            let following = lock(&self.slots[(next + 1) % SLOTS])
                .as_ref()
                .map(|p| p.start);
            match following {
                Some(start) => self.oldest.store(start, SeqCst),
                None if self.oldest.load(SeqCst) == u64::MAX => self.oldest.store(at, SeqCst),
                None => {}
            }
            let old = lock(slot).take();
            let piece = match old {
                Some(mut piece) => match Arc::get_mut(&mut piece) {
                    Some(p) => {
                        p.start = at;
                        p.bytes.clear();
                        p.bytes.extend_from_slice(part);
                        piece
                    }
                    // A reader still copies from it: it keeps that one.
                    None => Arc::new(Piece::new(at, part)),
                },
                None => Arc::new(Piece::new(at, part)),
            };
            *lock(slot) = Some(piece);
            self.next.store(next.wrapping_add(1), SeqCst);
            at += part.len() as u64;
        }
    }

    /// Drops every piece: the stream has ended (readers read the rest from the file).
    pub(crate) fn clear(&self) {
        // Nothing was ever kept (too few readers copied): nothing to drop. `next` is the
        // writer's own, and so is this call. (Locking the 128 slots cost a W3 miss
        // 2.5% of its CPU.)
        if self.next.load(SeqCst) == 0 {
            return;
        }
        self.oldest.store(u64::MAX, SeqCst);
        for slot in self.slots.iter() {
            lock(slot).take();
        }
    }

    /// Copies the stream's bytes at `position` into `buf`, at most up to `end` (what
    /// the writer has published, past `position`), if a kept piece holds them; `hint`
    /// is the reader's own memory of where it found the last ones.
    pub(crate) fn copy(
        &self,
        position: u64,
        end: u64,
        buf: &mut [u8],
        hint: &mut usize,
    ) -> Option<usize> {
        if position < self.oldest.load(SeqCst) {
            return None;
        }
        let (slot, piece) = self
            .find(*hint, position)
            .or_else(|| self.find(*hint + 1, position))
            .or_else(|| (0..SLOTS).find_map(|i| self.find(i, position)))?;
        *hint = slot;
        let from = usize::try_from(position - piece.start).ok()?;
        let until = usize::try_from(end - piece.start)
            .unwrap_or(usize::MAX)
            .min(piece.bytes.len());
        let available = piece.bytes.get(from..until)?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        Some(n)
    }

    /// The piece in slot `i % SLOTS`, if it holds `position`.
    fn find(&self, i: usize, position: u64) -> Option<(usize, Arc<Piece>)> {
        let i = i % SLOTS;
        let slot = lock(&self.slots[i]);
        slot.as_ref()
            .filter(|p| p.holds(position))
            .map(|p| (i, Arc::clone(p)))
    }

    /// Counts a reader that copies, until [`Recent::leave`].
    pub(crate) fn join(&self) {
        self.copiers.fetch_add(1, SeqCst);
    }

    /// Uncounts a reader counted by [`Recent::join`].
    pub(crate) fn leave(&self) {
        self.copiers.fetch_sub(1, SeqCst);
    }

    /// Where the writer will put its next piece (for tests).
    #[cfg(test)]
    pub(crate) fn pieces_put(&self) -> usize {
        self.next.load(SeqCst)
    }
}

impl Piece {
    fn new(start: u64, bytes: &[u8]) -> Piece {
        Piece {
            start,
            bytes: bytes.to_vec(),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn stream(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// A `Recent` with enough readers copying for the writer to keep pieces.
    fn followed() -> Recent {
        let recent = Recent::default();
        for _ in 0..recent.enough {
            recent.join();
        }
        recent
    }

    #[test]
    fn nothing_is_kept_while_no_more_readers_copy_than_there_are_cores() {
        let recent = Recent::default();
        for _ in 1..recent.enough {
            recent.join();
        }
        recent.put(0, &stream(10));
        assert_eq!(recent.pieces_put(), 0);
        let mut buf = [0u8; 4];
        assert_eq!(recent.copy(0, 10, &mut buf, &mut 0), None);
    }

    #[test]
    fn a_reader_copies_kept_bytes_but_never_past_what_was_published() {
        let recent = followed();
        let data = stream(3 * PIECE + 5);
        recent.put(0, &data);
        let mut buf = vec![0u8; 2 * PIECE];
        let mut hint = 0;
        // Published up to PIECE + 3 only: the copy stops there.
        assert_eq!(
            recent.copy(10, PIECE as u64 + 3, &mut buf, &mut hint),
            Some(PIECE - 10)
        );
        assert_eq!(&buf[..PIECE - 10], &data[10..PIECE]);
        assert_eq!(
            recent.copy(PIECE as u64, PIECE as u64 + 3, &mut buf, &mut hint),
            Some(3)
        );
        assert_eq!(&buf[..3], &data[PIECE..PIECE + 3]);
        // Past the last piece: nothing.
        assert_eq!(
            recent.copy(data.len() as u64, u64::MAX, &mut buf, &mut hint),
            None
        );
    }

    #[test]
    fn old_pieces_make_room_and_a_reader_behind_them_is_told_to_read_the_file() {
        let recent = followed();
        let data = stream((SLOTS + 3) * PIECE);
        for (i, part) in data.chunks(PIECE).enumerate() {
            recent.put((i * PIECE) as u64, part);
        }
        let mut buf = vec![0u8; PIECE];
        let end = data.len() as u64;
        assert_eq!(recent.copy(0, end, &mut buf, &mut 0), None);
        assert_eq!(
            recent.copy(3 * PIECE as u64 - 1, end, &mut buf, &mut 0),
            None
        );
        let last = (SLOTS + 2) * PIECE;
        assert_eq!(
            recent.copy(last as u64 + 1, end, &mut buf, &mut 7),
            Some(PIECE - 1)
        );
        assert_eq!(&buf[..PIECE - 1], &data[last + 1..]);
    }

    #[test]
    fn a_write_longer_than_the_ring_keeps_its_end() {
        let recent = followed();
        let data = stream((SLOTS + 2) * PIECE + 7);
        recent.put(100, &data);
        let end = 100 + data.len() as u64;
        let mut buf = vec![0u8; 16];
        assert_eq!(recent.copy(100, end, &mut buf, &mut 0), None);
        assert_eq!(recent.copy(end - 7, end, &mut buf, &mut 0), Some(7));
        assert_eq!(&buf[..7], &data[data.len() - 7..]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Whatever the writes (past the ring's size, so pieces are reused) and wherever
        /// readers look, a copy gives the stream's bytes at that position, never past
        /// what was published, and the latest write is always there to copy.
        #[test]
        fn copies_give_the_streams_bytes_wherever_readers_look(
            writes in proptest::collection::vec(1usize..3 * PIECE, 1..48),
            looks in proptest::collection::vec((0u64..1 << 40, 1usize..2 * PIECE), 1..16),
        ) {
            let recent = followed();
            let data = stream(writes.iter().sum());
            let mut at = 0;
            let mut hint = 0;
            for (w, len) in writes.iter().enumerate() {
                recent.put(at as u64, &data[at..at + len]);
                at += len;
                let end = at as u64;
                let (seed, size) = looks[w % looks.len()];
                let position = seed % end;
                let mut buf = vec![0u8; size];
                if let Some(n) = recent.copy(position, end, &mut buf, &mut hint) {
                    proptest::prop_assert!(n > 0 && position + n as u64 <= end);
                    let p = position as usize;
                    proptest::prop_assert_eq!(&buf[..n], &data[p..p + n]);
                }
                let last = end - 1;
                proptest::prop_assert_eq!(recent.copy(last, end, &mut buf, &mut hint), Some(1));
                proptest::prop_assert_eq!(buf[0], data[last as usize]);
            }
        }
    }

    #[test]
    fn a_piece_a_reader_holds_is_not_reused_and_clear_drops_everything() {
        let recent = followed();
        recent.put(0, &[1u8; 8]);
        let held = recent.find(0, 0).unwrap().1;
        for i in 1..=SLOTS as u64 {
            recent.put(i * 8, &[2u8; 8]);
        }
        // Slot 0 was replaced; the reader's piece is untouched.
        assert_eq!((held.start, &held.bytes[..]), (0, &[1u8; 8][..]));
        recent.clear();
        recent.leave();
        let mut buf = [0u8; 8];
        assert_eq!(
            recent.copy(SLOTS as u64 * 8, u64::MAX, &mut buf, &mut 0),
            None
        );
    }
}

/// Loom model of the hand-off through kept pieces: a writer that keeps each write and
/// then publishes it, reusing the buffers no reader holds, and two readers that copy
/// what the pieces hold and fall back to the file (here: the expected bytes) for the
/// rest. Every byte a reader takes from a piece must be the stream's byte at that
/// position, whatever the interleaving. Run with the loom command in `pipe/loom_tests.rs`.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::{Arc, Condvar};
    use loom::thread;

    use super::*;

    /// The stream's byte at `position`.
    fn byte(position: u64) -> u8 {
        (position * 7 + 1) as u8
    }

    /// Bytes copied from pieces over every interleaving: the model must exercise them.
    static COPIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[test]
    fn loom_readers_copy_only_the_bytes_of_their_position_from_reused_pieces() {
        loom::model(|| {
            // Three one-piece writes through two slots: the third reuses the first's
            // buffer unless a reader holds it.
            const WRITES: u64 = 3;
            let total = WRITES * PIECE as u64;
            let recent = Arc::new(Recent::default());
            // Bytes published, and a condition variable to wait for more (a spin would
            // not end under loom).
            let written = Arc::new((Mutex::new(0u64), Condvar::new()));
            recent.join();
            recent.join();
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (recent, written) = (Arc::clone(&recent), Arc::clone(&written));
                    thread::spawn(move || {
                        let (mut position, mut hint, mut copied) = (0u64, 0usize, 0usize);
                        while position < total {
                            let end = {
                                let (lock, more) = &*written;
                                let mut end = crate::sync::lock(lock);
                                while *end <= position {
                                    end = crate::sync::wait(more, end);
                                }
                                *end
                            };
                            // One byte at a time: a reader also copies from the middle
                            // of a piece, and may find it reused between two copies.
                            let mut buf = [0u8; 1];
                            match recent.copy(position, end, &mut buf, &mut hint) {
                                Some(n) => {
                                    assert!(n > 0 && position + n as u64 <= end);
                                    for (i, b) in buf[..n].iter().enumerate() {
                                        assert_eq!(*b, byte(position + i as u64));
                                    }
                                    position += n as u64;
                                    copied += n;
                                }
                                // From the file.
                                None => position += 1,
                            }
                        }
                        recent.leave();
                        COPIED.fetch_add(copied, std::sync::atomic::Ordering::Relaxed);
                    })
                })
                .collect();
            for w in 0..WRITES {
                let start = w * PIECE as u64;
                let bytes: Vec<u8> = (start..start + PIECE as u64).map(byte).collect();
                recent.put(start, &bytes);
                let (lock, more) = &*written;
                *crate::sync::lock(lock) = start + PIECE as u64;
                more.notify_all();
            }
            recent.clear();
            for r in readers {
                r.join().unwrap();
            }
        });
        assert!(COPIED.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }
}
