//! Reading an entry file through a memory map instead of `pread`.
//!
//! A reader that follows a producer copies pages the producer has just written. With
//! `pread` on tmpfs that costs the *producer* 12 to 15% of its write rate, whatever the
//! reader's lag (page-cache bookkeeping on every read: the folio lock, the LRU
//! activation); copying the same pages from a shared map costs it 2 to 4%. So a reader
//! that dozes beside its producer (a lead window, see `crate::pipe`) copies from a
//! [`Window`]: a read-only `MAP_SHARED` map of one aligned stretch of the file
//! ([`WINDOW`] bytes), made when the first reader gets there and unmapped when the
//! last moves on. Readers only ever touch bytes the writer has published, which are in
//! the file, so no access falls past its end. (W1, one reader, a lead window of 8 MiB,
//! tmpfs: the producer writes at 0.95 of its rate with no reader, against 0.87 to 0.89
//! with `pread`.)
//!
//! # A truncated file
//!
//! Unless someone truncates the file under us (another program of the same user, or
//! root). Touching a mapped page past the end of a file raises `SIGBUS`, which would
//! kill the process. So the first window installs a `SIGBUS` handler, once per process,
//! that looks the faulting address up among the live windows (a fixed table of atomics,
//! read without locks, as a signal handler must): if it is in one, the handler maps a
//! private zero page over the vanished page and marks the window *torn*, and the copy
//! runs on; the reader then sees the mark and reports the file as truncated, like a
//! short `pread` would. A fault anywhere else goes to the handler that was there before
//! (Rust's own stack-overflow handler, say), or to the default action, exactly as if we
//! were not there. A program that installs its own `SIGBUS` handler after ours and does
//! not chain to it loses only this protection.
//!
//! When the table is full, or mapping fails (the process's map count, say), the reader
//! goes on with `pread`.

use std::ffi::c_void;
use std::fs::File;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock, Weak};

use nix::libc;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use rustix::mm::{MapFlags, ProtFlags};

use crate::sync::{lock, Mutex};

/// Bytes one window maps, a multiple of every page size. Mapped pages count in the
/// process's resident size (they are the page cache's, shared, but counted), so an
/// entry's readers share their windows ([`Windows`]), and a window goes once its last
/// reader has moved on. Smaller windows unmap more often, and each unmapping
/// interrupts the producer's CPU to flush its TLB: 1 MiB windows gave back the whole
/// gain.
pub(crate) const WINDOW: u64 = 16 << 20;

/// Windows that may be live at once in the process; a reader that finds no free slot
/// reads with `pread`.
const SLOTS: usize = 1024;

/// One live window's address range, as the signal handler sees it.
struct Slot {
    /// The first address, or [`FREE`] or [`CLAIMED`].
    start: AtomicUsize,
    /// One past the last address.
    end: AtomicUsize,
    /// A page of the window vanished (the file was truncated) and reads as zeros now.
    torn: AtomicBool,
}

const FREE: usize = 0;
const CLAIMED: usize = 1;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(FREE),
    end: AtomicUsize::new(0),
    torn: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// The page size once our `SIGBUS` handler is in place; `None` if installing it
/// failed (then no window is ever made).
static GUARD: OnceLock<Option<usize>> = OnceLock::new();

/// The `SIGBUS` action that was in place before ours, read before ours goes in.
static PREVIOUS: OnceLock<Previous> = OnceLock::new();

struct Previous(libc::sigaction);

// SAFETY: plain data (a handler address, flags and a mask), only ever read.
unsafe impl Send for Previous {}
unsafe impl Sync for Previous {}

/// The live windows of one entry file, shared by its readers.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    live: Mutex<Vec<Weak<Window>>>,
}

impl Windows {
    /// The window of `file` that holds `position`, shared with the entry's other
    /// readers, or `None` if it cannot be mapped (the caller then reads with `pread`).
    pub(crate) fn get(&self, file: &File, position: u64) -> Option<Arc<Window>> {
        let start = position / WINDOW * WINDOW;
        let mut live = lock(&self.live);
        live.retain(|w| w.strong_count() > 0);
        if let Some(window) = live
            .iter()
            .filter_map(Weak::upgrade)
            .find(|w| w.start == start)
        {
            return Some(window);
        }
        let window = Arc::new(Window::map(file, start)?);
        live.push(Arc::downgrade(&window));
        Some(window)
    }
}

/// A read-only map of `[start, start + WINDOW)` of an entry file (see the module docs).
#[derive(Debug)]
pub(crate) struct Window {
    base: NonNull<u8>,
    start: u64,
    slot: usize,
}

// SAFETY: the window is a read-only map owned by this value alone; copying from it on
// any thread is as sound as on the one that made it.
unsafe impl Send for Window {}
unsafe impl Sync for Window {}

impl Window {
    /// Maps the window of `file` that holds `position`, or `None` if it cannot (the
    /// caller then reads with `pread`).
    pub(crate) fn map(file: &File, position: u64) -> Option<Window> {
        GUARD.get_or_init(install).as_ref()?;
        let slot = TABLE.iter().position(|slot| {
            slot.start
                .compare_exchange(FREE, CLAIMED, SeqCst, SeqCst)
                .is_ok()
        })?;
        let start = position / WINDOW * WINDOW;
        // SAFETY: a fresh read-only shared map at an address the kernel picks; nothing
        // else is at that address. Its pages may change or vanish under us (the writer
        // fills them, someone may truncate the file), so it is only ever read with raw
        // copies (`copy`), never as a Rust reference.
        let mapped = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                WINDOW as usize,
                ProtFlags::READ,
                MapFlags::SHARED,
                file,
                start,
            )
        };
        let Some(base) = mapped.ok().and_then(|p| NonNull::new(p.cast::<u8>())) else {
            TABLE[slot].start.store(FREE, SeqCst);
            return None;
        };
        let table = &TABLE[slot];
        table.torn.store(false, SeqCst);
        table
            .end
            .store(base.as_ptr() as usize + WINDOW as usize, SeqCst);
        table.start.store(base.as_ptr() as usize, SeqCst);
        Some(Window { base, start, slot })
    }

    /// Whether `position` lies in this window.
    pub(crate) fn holds(&self, position: u64) -> bool {
        position >= self.start && position - self.start < WINDOW
    }

    /// Copies the bytes at `position` (which [`Window::holds`]) into `buf`, at most to
    /// the window's end, and returns how many; `None` if the window turned out torn (the
    /// file was truncated). The caller asks only for bytes the writer published.
    pub(crate) fn copy(&self, position: u64, buf: &mut [u8]) -> Option<usize> {
        let offset = (position - self.start) as usize;
        let n = buf.len().min(WINDOW as usize - offset);
        // SAFETY: `offset + n` is within the map, which lives as long as `self`; `buf`
        // is ours alone. A page that vanishes meanwhile faults, and the handler puts a
        // zero page in its place (see the module docs), so the copy always completes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.as_ptr().add(offset), buf.as_mut_ptr(), n);
        }
        (!TABLE[self.slot].torn.load(SeqCst)).then_some(n)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        let slot = &TABLE[self.slot];
        // Out of the table first: the handler must never take a fault at an address
        // that is no longer ours for one of ours.
        slot.start.store(CLAIMED, SeqCst);
        // SAFETY: the map made in `map`, unmapped once; no copy from it is running (they
        // borrow `self`).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), WINDOW as usize) };
        slot.start.store(FREE, SeqCst);
    }
}

/// Installs the `SIGBUS` handler; returns the page size, or `None` if the system
/// refused.
fn install() -> Option<usize> {
    let page = rustix::param::page_size();
    // What was there goes on record before ours can run.
    let mut previous = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a query (no new action) into memory we own.
    if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), previous.as_mut_ptr()) } != 0 {
        tracing::warn!("streamcache: SIGBUS action unknown, reading entries with pread");
        return None;
    }
    // SAFETY: filled in by the successful call above.
    let _ = PREVIOUS.set(Previous(unsafe { previous.assume_init() }));
    let ours = SigAction::new(
        SigHandler::SigAction(on_sigbus),
        SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK,
        SigSet::empty(),
    );
    // SAFETY: `on_sigbus` only does async-signal-safe work (atomic loads and stores,
    // mmap, sigaction, and calling the previous handler as the kernel would have).
    if let Err(err) = unsafe { signal::sigaction(Signal::SIGBUS, &ours) } {
        tracing::warn!(error = %err, "streamcache: no SIGBUS handler, reading entries with pread");
        return None;
    }
    Some(page)
}

extern "C" fn on_sigbus(signum: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // Set once `install` returned; no window exists before that.
    let page_size = GUARD.get().copied().flatten();
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    if let Some(page_size) = page_size {
        let ours = TABLE.iter().find(|slot| {
            let start = slot.start.load(SeqCst);
            start > CLAIMED && address >= start && address < slot.end.load(SeqCst)
        });
        if let Some(slot) = ours {
            let page = address & !(page_size - 1);
            // SAFETY: the page is inside a live window of ours (its reader is the
            // faulting thread, inside `copy`); replacing it with a private zero page
            // changes nothing anyone else sees.
            let replaced = unsafe {
                rustix::mm::mmap_anonymous(
                    page as *mut c_void,
                    page_size,
                    ProtFlags::READ,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                )
            };
            if replaced.is_ok() {
                slot.torn.store(true, SeqCst);
                return;
            }
        }
    }
    // Not ours: whatever would have happened without us.
    let previous = PREVIOUS.get().map(|p| (p.0.sa_sigaction, p.0.sa_flags));
    match previous {
        Some((handler, flags)) if handler != libc::SIG_DFL && handler != libc::SIG_IGN => {
            // SAFETY: the address of the handler that was installed, called as the
            // kernel would have called it, with the kernel's own arguments.
            unsafe {
                if flags & libc::SA_SIGINFO != 0 {
                    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                        std::mem::transmute(handler);
                    handler(signum, info, context);
                } else {
                    let handler: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                    handler(signum);
                }
            }
        }
        _ => {
            // The default action: restore it and return; the faulting access runs again
            // and the kernel takes that action.
            let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            // SAFETY: sigaction is async-signal-safe.
            let _ = unsafe { signal::sigaction(Signal::SIGBUS, &default) };
        }
    }
}
