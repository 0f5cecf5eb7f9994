//! The heap object: fixed-address mapping, header, root, and transactions.

use std::cell::{Cell, UnsafeCell};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use crate::layout::{HEAP_DATA_OFFSET, HEAP_MAGIC, HEAP_VERSION, HeapHeader, MIN_HEAP_SIZE};
use crate::log::{LogView, LogWriter, MAX_TXID, MIN_LOG_SIZE, RollbackCount, TxState};
use crate::map::{Mapping, fd_size};
use crate::page::HeapAlloc;
use crate::tracking::Tracking;
use crate::txcore::TxCore;
use crate::{BatchEntry, HeapError, PCell, Persistent};

/// The mechanism behind [`Tracking::Page`] (ARCHITECTURE.md §5.3). [`Heap::attach`] takes it
/// from the environment variable `TXIPC_PAGE_TRACKER` (`uffd` or `sigsegv`; unset: `sigsegv`);
/// [`Heap::attach_with`] takes it as an argument. With `TXIPC_PAGE_ARMED=1`, [`Heap::attach`]
/// also arms the SIGSEGV tracker at once ([`Heap::arm_page_tracking`]): every write is then
/// captured by a fault, announced or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PageBackend {
    /// userfaultfd write-protect in asynchronous mode over a private working copy, pages moved
    /// into the memfd at commit. Falls back to `Sigsegv` where the kernel lacks
    /// `UFFD_FEATURE_WP_ASYNC`/`PAGEMAP_SCAN` (Linux < 6.7). A commit costs one
    /// `PAGEMAP_SCAN`, which walks the whole heap's page table (~1.4 ns per 4 KiB page on the
    /// project machine: 23 µs at 64 MiB) plus ~1 µs per written page: cheaper than `Sigsegv`
    /// when transactions (or group-commit batches) write many pages of a small heap.
    Uffd,
    /// SIGSEGV + `mprotect`: ~3–6 µs per first-written page, nothing per commit.
    Sigsegv,
}

impl PageBackend {
    /// `TXIPC_PAGE_TRACKER`: `uffd` or `sigsegv` (the default).
    pub fn from_env() -> PageBackend {
        match std::env::var("TXIPC_PAGE_TRACKER").as_deref() {
            Ok("uffd") => PageBackend::Uffd,
            _ => PageBackend::Sigsegv,
        }
    }
}

/// A hash of everything in this build that fixes the heap's layout.
fn layout_tag() -> u64 {
    let mut h = Fnv::new();
    h.write(&(std::mem::size_of::<HeapHeader>() as u64).to_le_bytes());
    for c in crate::alloc::CLASS_SIZES {
        h.write(&c.to_le_bytes());
    }
    h.finish()
}

/// Tag of a root type; `page` roots (reachable as `&mut` under page tracking) get a different
/// tag so they cannot also be reached through `Heap::root`.
fn type_tag<R: 'static>(page: bool) -> u64 {
    let mut h = Fnv::new();
    h.write(std::any::type_name::<R>().as_bytes());
    h.write(&(std::mem::size_of::<R>() as u64).to_le_bytes());
    h.write(&(std::mem::align_of::<R>() as u64).to_le_bytes());
    if page {
        h.finish() & !1
    } else {
        h.finish() | 1
    }
}

pub(crate) struct Fnv(u64);
impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// A recoverable heap attached to this process at its fixed address, with its undo log.
///
/// At most one transaction is open at a time ([`Heap::begin`]). Dropping the heap unmaps it
/// (the memfds live on in whoever holds them — the kernel).
pub struct Heap {
    // Field order is drop order: the tracker must restore protections before the unmap.
    tracker: UnsafeCell<Option<txipc_pagetrack::PageTracker>>,
    /// Under `Tracking::Page` with asynchronous write-protect: the working copy's tracker and
    /// the committed view (then `tracker` is `None`).
    shadow: UnsafeCell<Option<crate::page::Shadow>>,
    writer: Box<UnsafeCell<LogWriter>>,
    open: Cell<bool>,
    tracking: Tracking,
    base: usize,
    size: usize,
    log_size: usize,
    _log_map: Mapping,
    _heap_map: Mapping,
}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("base", &format_args!("{:#x}", self.base))
            .field("size", &self.size)
            .field("log_size", &self.log_size)
            .field("tracking", &self.tracking)
            .finish()
    }
}

/// What [`Heap::attach`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachKind {
    /// The heap was empty and has been formatted.
    Formatted,
    /// An existing heap was validated.
    Existing,
}

impl Heap {
    /// Maps the heap memfd at `base` (fixed: `MAP_FIXED_NOREPLACE`) and the log memfd anywhere.
    ///
    /// The first attach formats an all-zero heap (and log); later attaches validate the headers
    /// (magic, version, size, layout of this build, and that `base` is the address the heap was
    /// formatted for). A log left `ACTIVE` (recovery not run) is rolled back here.
    ///
    /// With [`Tracking::Page`] the page tracker is installed over the heap (one per process).
    ///
    /// # Errors
    /// [`HeapError::AddressInUse`] if the range is taken, [`HeapError::BadHeap`] /
    /// [`HeapError::BadLog`] / [`HeapError::BaseMismatch`] if the memfds do not fit, and system
    /// errors.
    pub fn attach(
        heap_fd: impl AsFd,
        log_fd: impl AsFd,
        base: usize,
        tracking: Tracking,
    ) -> Result<Heap, HeapError> {
        let heap = Heap::attach_with(heap_fd, log_fd, base, tracking, PageBackend::from_env())?;
        if std::env::var_os("TXIPC_PAGE_ARMED").is_some_and(|v| v == "1") {
            // Capture every write by a fault from the start, announced or not (wild writes
            // included): the SIGSEGV tracker as it was before announced writes.
            heap.arm_page_tracking()?;
        }
        Ok(heap)
    }

    /// [`Heap::attach`] with the page-tracking mechanism given (used only under
    /// [`Tracking::Page`]; [`Heap::page_tracker`] tells which one runs).
    ///
    /// # Errors
    /// As [`Heap::attach`].
    pub fn attach_with(
        heap_fd: impl AsFd,
        log_fd: impl AsFd,
        base: usize,
        tracking: Tracking,
        backend: PageBackend,
    ) -> Result<Heap, HeapError> {
        let size = fd_size(heap_fd.as_fd())?;
        if size < MIN_HEAP_SIZE || size % HEAP_DATA_OFFSET != 0 {
            return Err(HeapError::BadHeap(format!(
                "heap memfd size {size} must be a multiple of 4096 and at least {MIN_HEAP_SIZE}"
            )));
        }
        let log_size = fd_size(log_fd.as_fd())?;
        if log_size < MIN_LOG_SIZE || log_size % 8 != 0 {
            return Err(HeapError::BadLog(format!(
                "log memfd size {log_size} must be a multiple of 8 and at least {MIN_LOG_SIZE}"
            )));
        }
        let log_map = Mapping::anywhere(log_fd.as_fd(), log_size)?;
        let heap_map = Mapping::fixed(heap_fd.as_fd(), size, base)?;
        // SAFETY: log_map is a live mapping of log_size >= MIN_LOG_SIZE bytes, page-aligned, and
        // outlives the view (both owned by the Heap, view dropped first as part of writer).
        let view = unsafe { LogView::new(log_map.ptr(), log_size) };
        view.format_or_check(log_size)?;
        if let TxState::Active(t) = view.state() {
            // The previous incarnation died mid-transaction and nobody recovered: do it now.
            // SAFETY: we just mapped the heap; no reference into it exists; the previous writer
            // is gone (attaching a heap that a live process uses is outside the contract).
            unsafe { view.rollback(0, 0, view.nrec(), heap_map.ptr(), size, usize::MAX)? };
            view.set_state(TxState::Aborted(t));
        }
        // SAFETY: the mapping is at least MIN_HEAP_SIZE bytes, page-aligned, and nothing else
        // references it yet; the header is all plain integers and cells (any bytes are valid).
        let hdr = unsafe { &*heap_map.ptr().cast::<HeapHeader>() };
        let mut heap = Heap {
            tracker: UnsafeCell::new(None),
            shadow: UnsafeCell::new(None),
            writer: Box::new(UnsafeCell::new(LogWriter::new(view))),
            open: Cell::new(false),
            tracking,
            base,
            size,
            log_size,
            _log_map: log_map,
            _heap_map: heap_map,
        };
        if hdr.magic == 0 {
            heap.format()?;
        } else {
            heap.validate()?;
        }
        hdr.attach_mode.store(tracking.code(), Ordering::Relaxed);
        if tracking == Tracking::Page {
            if rustix::param::page_size() != crate::layout::PAGE {
                return Err(HeapError::Unsupported {
                    what: "page tracking with pages other than 4 KiB",
                    mode: tracking,
                });
            }
            if backend == PageBackend::Uffd {
                heap.install_shadow(heap_fd.as_fd())?;
            }
            // SAFETY: just set (or not) above; no transaction is open.
            if unsafe { (*heap.shadow.get()).is_none() } {
                heap.install_tracker()?;
            }
        }
        crate::page::register(base);
        Ok(heap)
    }

    /// Switches the heap to asynchronous page tracking: the memfd mapped shared elsewhere is
    /// the committed state, the mapping at `base` becomes a private working copy. If the
    /// kernel cannot track it (no `UFFD_FEATURE_WP_ASYNC`), the mapping at `base` is left
    /// shared and nothing changes: the caller installs the SIGSEGV tracker.
    fn install_shadow(&mut self, heap_fd: std::os::fd::BorrowedFd<'_>) -> Result<(), HeapError> {
        let committed = Mapping::anywhere(heap_fd, self.size)?;
        // SAFETY: `_heap_map` maps `heap_fd`; no reference into the heap is live yet (attach
        // only read the header through a pointer whose use ended).
        unsafe { self._heap_map.remap(heap_fd, true)? };
        // SAFETY: base..base+size is now our private mapping of the memfd `committed` maps,
        // owned by the heap and dropped after the shadow (field order).
        match unsafe { crate::page::Shadow::new(self.base, committed) } {
            Ok(sh) => {
                *self.shadow.get_mut() = Some(sh);
                Ok(())
            }
            Err(HeapError::PageTrack(txipc_pagetrack::TrackError::Uffd { .. })) => {
                // Back to a shared mapping for the SIGSEGV tracker (nothing was written to the
                // private copy).
                // SAFETY: as above; the private copy holds no write.
                unsafe { self._heap_map.remap(heap_fd, false) }
            }
            Err(e) => Err(e),
        }
    }

    /// Which page tracker this heap uses (tests and the bench): `"uffd"` or `"sigsegv"`, or
    /// `None` unless the tracking is [`Tracking::Page`].
    pub fn page_tracker(&self) -> Option<&'static str> {
        // SAFETY: read-only peek at the slots, which only transaction boundaries change.
        unsafe {
            if (*self.shadow.get()).is_some() {
                Some("uffd")
            } else if (*self.tracker.get()).is_some() {
                Some("sigsegv")
            } else {
                None
            }
        }
    }

    /// Page-tracking counters since attach (`None` unless the tracking is [`Tracking::Page`]).
    pub fn page_stats(&self) -> Option<crate::PageStats> {
        // SAFETY: read-only peek at the slots, which only transaction boundaries change.
        unsafe {
            if let Some(sh) = (*self.shadow.get()).as_ref() {
                Some(sh.stats())
            } else {
                (*self.tracker.get()).as_ref().map(|t| {
                    let s = t.stats();
                    crate::PageStats {
                        captures: s.captures,
                        scans: 0,
                        pages_scanned: 0,
                        protect_calls: s.protect_calls,
                        armed: t.is_armed(),
                    }
                })
            }
        }
    }

    // As `tracker_mut`: touched only at transaction boundaries.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    fn shadow_mut(&self) -> Option<&mut crate::page::Shadow> {
        // SAFETY: the shadow slot is only touched by begin/commit/abort/savepoint/prepare,
        // which run with the heap's single transaction and never overlap.
        unsafe { (*self.shadow.get()).as_mut() }
    }

    fn header(&self) -> &HeapHeader {
        // SAFETY: the header lies at the heap base, inside the live mapping, and is only ever
        // mutated through cells/atomics.
        unsafe { &*(self.base as *const HeapHeader) }
    }

    fn format(&self) -> Result<(), HeapError> {
        let p = self.base as *mut HeapHeader;
        // SAFETY: the heap is freshly mapped, all zero (magic 0) and unreferenced; we write the
        // header fields through the raw pointer, magic last so a crash mid-format leaves an
        // unformatted heap.
        unsafe {
            (*p).version = HEAP_VERSION;
            (*p).hdr_size = std::mem::size_of::<HeapHeader>() as u32;
            (*p).size = self.size as u64;
            (*p).base = self.base as u64;
            (*p).layout = layout_tag();
            crate::alloc::format_meta(&(*p).alloc, self.size);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            std::ptr::write_volatile(&raw mut (*p).magic, HEAP_MAGIC);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), HeapError> {
        let h = self.header();
        if h.magic != HEAP_MAGIC {
            return Err(HeapError::BadHeap(format!("bad magic {:#x}", h.magic)));
        }
        if h.version != HEAP_VERSION {
            return Err(HeapError::BadHeap(format!(
                "version {}, this build reads {HEAP_VERSION}",
                h.version
            )));
        }
        if h.size != self.size as u64 {
            return Err(HeapError::BadHeap(format!(
                "header says {} bytes, memfd has {}",
                h.size, self.size
            )));
        }
        if h.layout != layout_tag() || h.hdr_size as usize != std::mem::size_of::<HeapHeader>() {
            return Err(HeapError::BadHeap(
                "layout of another build (allocator classes or header differ)".into(),
            ));
        }
        if h.base != self.base as u64 {
            return Err(HeapError::BaseMismatch {
                formatted: h.base as usize,
                requested: self.base,
            });
        }
        crate::alloc::check_meta(&h.alloc, self.base, self.size).map_err(HeapError::BadHeap)
    }

    fn install_tracker(&self) -> Result<(), HeapError> {
        let ctx = self.writer.get().cast::<()>();
        // SAFETY: (1) base..base+size is our read-write mapping, which outlives the tracker (the
        // tracker field drops first) and whose protection nobody else changes. (2) ctx points at
        // the boxed writer, which outlives the tracker too; `page_sink` is async-signal-safe and
        // writes only the log mapping. (3) attach is not run concurrently with other sigaction
        // changes (documented on Tracking::Page).
        let t = unsafe {
            txipc_pagetrack::PageTracker::install_announced(
                self.base as *mut u8,
                self.size,
                crate::page::page_sink,
                ctx,
            )?
        };
        // SAFETY: no transaction is open, so no other reference to the tracker slot exists.
        unsafe { *self.tracker.get() = Some(t) };
        Ok(())
    }

    /// Heap base address.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Heap size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Tracking mode chosen at attach.
    pub fn tracking(&self) -> Tracking {
        self.tracking
    }

    /// The log's current header, copied out.
    pub fn log_snapshot(&self) -> crate::LogSnapshot {
        // SAFETY: reading the writer's immutable view (a Copy of pointers) is race-free: the
        // sink only runs during an open transaction and never changes `view`.
        let view = unsafe { (*self.writer.get()).view };
        view.snapshot(self.log_size)
    }

    /// Opens transaction `txid` (at most 2^62 − 1): resets the log, sets the header to
    /// `ACTIVE(txid)` and, under page tracking, write-protects the pages dirtied by the
    /// previous transaction.
    ///
    /// # Errors
    /// [`HeapError::TxOpen`] if a transaction is open; [`HeapError::Invalid`] for a too-large
    /// txid; page-tracking errors.
    // Inlined: with the lazy begin beside it, the chain begin → begin_in → open_tx →
    // open_core outgrew LLVM's threshold, and an eager begin + commit returned its 72-byte
    // `Tx` through memory (`bench tx` `commit_ns` 7–9 → 19.5 ns; 9.2–11.1 with this).
    #[inline]
    pub fn begin(&self, txid: u64) -> Result<Tx<'_>, HeapError> {
        self.begin_in(txid, None)
    }

    /// Opens transaction `txid` as a participant of `root` (a nested call from another
    /// server's transaction), or as its own root when `root` is `None`. The root is in the log
    /// header before the state says ACTIVE, so recovery finds it (ARCHITECTURE.md §13).
    ///
    /// # Errors
    /// As [`Heap::begin`].
    #[inline]
    pub fn begin_in(&self, txid: u64, root: Option<crate::RootId>) -> Result<Tx<'_>, HeapError> {
        self.open_tx(txid, root, false)
    }

    /// Opens transaction `txid` like [`Heap::begin_in`], but under typed tracking writes
    /// nothing shared until the transaction first writes the heap (its first undo record),
    /// marks a prepared reply, or is [activated](Tx::activate): a transaction that only
    /// reads commits (or aborts) without touching the log, and the log keeps saying how the
    /// previous transaction ended, with its batch descriptor — exactly what a crash before the
    /// first write would have left it saying, since the heap is unchanged. Batch entries
    /// ([`Tx::add_batch_entry`]) are kept in private memory until then and written right
    /// after the header says ACTIVE, so a transaction that writes is one transaction from
    /// its first write on, with its whole batch named. Under page tracking and `Off` this is
    /// [`Heap::begin_in`] (a page write is not seen before it happens).
    ///
    /// Callers that publish anything before the commit, or make calls whose outcome depends
    /// on this transaction's commit record (nested transactions), must activate first.
    ///
    /// # Errors
    /// As [`Heap::begin`].
    #[inline]
    pub fn begin_lazy_in(
        &self,
        txid: u64,
        root: Option<crate::RootId>,
    ) -> Result<Tx<'_>, HeapError> {
        self.open_tx(txid, root, self.tracking == Tracking::Typed)
    }

    /// Opens transaction `txid` like [`Heap::begin_lazy_in`] (`lazy`) or [`Heap::begin_in`],
    /// building it straight in `slot` and returning it there: the transaction object (72
    /// bytes) is written once, where it will live, instead of being returned and moved into
    /// its holder (the serve loop's transaction cell, once per call). A transaction still
    /// open in `slot` makes this fail with [`HeapError::TxOpen`] and stays as it was.
    ///
    /// # Errors
    /// As [`Heap::begin`].
    #[inline]
    pub fn begin_into<'h, 's>(
        &'h self,
        txid: u64,
        root: Option<crate::RootId>,
        lazy: bool,
        slot: &'s mut Option<Tx<'h>>,
    ) -> Result<&'s mut Tx<'h>, HeapError> {
        let core = self.open_core(txid, root, lazy && self.tracking == Tracking::Typed)?;
        Ok(slot.insert(Tx {
            heap: self,
            core,
            txid,
            done: false,
        }))
    }

    /// Activates the open transaction if it was begun lazily and has not written yet (see
    /// [`Heap::begin_lazy_in`]); nothing otherwise. For code that holds the heap but not the
    /// transaction (a call made from inside a handler).
    pub fn activate_open(&self) {
        if !self.open.get() {
            return;
        }
        // SAFETY: a transaction is open on this thread (heaps are single-threaded: `Heap` is
        // not `Sync`), and no method of its writer is running (this is called between them, by
        // the transaction's own thread), so this is the only access to the writer.
        unsafe { (*self.writer.get()).activate() };
    }

    /// Whether the open transaction was begun lazily and has written nothing yet (test and
    /// diagnostics hook).
    pub fn open_is_deferred(&self) -> bool {
        // SAFETY: a plain read of the writer's flag by the heap's thread, between writer calls.
        self.open.get() && unsafe { (*self.writer.get()).pending.is_some() }
    }

    #[inline]
    fn open_tx(
        &self,
        txid: u64,
        root: Option<crate::RootId>,
        lazy: bool,
    ) -> Result<Tx<'_>, HeapError> {
        let core = self.open_core(txid, root, lazy)?;
        Ok(Tx {
            heap: self,
            core,
            txid,
            done: false,
        })
    }

    /// Opens the log's side of transaction `txid` and returns the core of its `Tx`.
    #[inline]
    fn open_core(
        &self,
        txid: u64,
        root: Option<crate::RootId>,
        lazy: bool,
    ) -> Result<TxCore, HeapError> {
        if txid > MAX_TXID {
            return Err(HeapError::Invalid("txid must fit in 62 bits"));
        }
        if self.open.replace(true) {
            return Err(HeapError::TxOpen);
        }
        if let Some(t) = self.tracker_mut() {
            if let Err(e) = t.begin() {
                self.open.set(false);
                return Err(e.into());
            }
        }
        if let Some(sh) = self.shadow_mut() {
            sh.begin();
        }
        let w = self.writer.get();
        // SAFETY: `open` guarantees no other Tx exists; the page sink cannot run (no tracked
        // write happens during begin), so this is the only access to the writer.
        unsafe {
            if lazy {
                (*w).begin_deferred(txid, root);
            } else {
                (*w).begin(txid, root);
            }
        }
        let (track, shadow) = if self.tracking == Tracking::Page {
            (self.tracker.get(), self.shadow.get())
        } else {
            (std::ptr::null_mut(), std::ptr::null_mut())
        };
        Ok(TxCore {
            base: self.base,
            end: self.base + self.size,
            typed: self.tracking == Tracking::Typed,
            w,
            track,
            shadow,
        })
    }

    // The slot is an UnsafeCell touched only at transaction boundaries, which `open` and the
    // single `Tx` serialise: handing out `&mut` from `&self` is sound here.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    fn tracker_mut(&self) -> Option<&mut txipc_pagetrack::PageTracker> {
        // SAFETY: the tracker slot is only touched by begin/commit/abort/savepoint, which run
        // with the heap's single transaction and never overlap (`open`, `&mut Tx`).
        unsafe { (*self.tracker.get()).as_mut() }
    }

    /// The root object, if the heap has one of type `R`.
    ///
    /// # Errors
    /// [`HeapError::RootMismatch`] if the root is of another type.
    pub fn root<R: Persistent>(&self) -> Result<Option<&R>, HeapError> {
        // SAFETY: see root_ptr; R: Persistent is only mutated through cells, so a shared
        // reference for the heap's lifetime is sound.
        Ok(self.root_ptr::<R>(false)?.map(|p| unsafe { &*p }))
    }

    /// The root's address, checked against the type tag, the heap bounds and alignment.
    fn root_ptr<R: 'static>(&self, page: bool) -> Result<Option<*mut R>, HeapError> {
        let h = self.header();
        let r = h.root.get();
        if r == 0 {
            return Ok(None);
        }
        if h.root_tag.get() != type_tag::<R>(page) {
            return Err(HeapError::RootMismatch {
                expected: std::any::type_name::<R>(),
            });
        }
        let end = r.saturating_add(std::mem::size_of::<R>() as u64);
        if r < (self.base + HEAP_DATA_OFFSET) as u64
            || end > (self.base + self.size) as u64
            || r as usize % std::mem::align_of::<R>() != 0
        {
            return Err(HeapError::BadHeap(format!(
                "root pointer {r:#x} out of range"
            )));
        }
        // r points inside the heap (checked), aligned, at an object of type R written by
        // `root_or_init` (tag checked); the root is never freed or moved.
        Ok(Some(r as *mut R))
    }

    fn set_root<R: 'static>(&self, tx: &mut Tx<'_>, value: R, page: bool) -> Result<(), HeapError> {
        let p = tx
            .core
            .alloc(std::mem::size_of::<R>().max(1), std::mem::align_of::<R>())?;
        // SAFETY: p is a fresh block of size_of::<R>() bytes, aligned, logged by alloc; moving
        // `value` in is the object's initialisation.
        unsafe { p.cast::<R>().write(value) };
        let h = self.header();
        h.root.set(tx, p as u64)?;
        h.root_tag.set(tx, type_tag::<R>(page))
    }

    /// Under page tracking (or `Off`): makes sure the heap has a root of type `R`, built by
    /// `init` with an allocator handle for allocator-aware collections (e.g. a
    /// `hashbrown::HashMap<K, V, StableState, HeapAlloc>`). Reach it with [`Tx::page_root`].
    ///
    /// # Errors
    /// [`HeapError::Unsupported`] under typed tracking, [`HeapError::RootMismatch`], allocation
    /// and page-tracking errors.
    pub fn page_root_or_init<R: crate::PageSafe>(
        &self,
        init: impl FnOnce(crate::HeapAlloc) -> R,
    ) -> Result<(), HeapError> {
        let a = self.allocator()?;
        if self.root_ptr::<R>(true)?.is_some() {
            return Ok(());
        }
        let mut tx = self.begin(0)?;
        let v = init(a);
        self.set_root(&mut tx, v, true)?;
        tx.commit()
    }

    /// The root object; if the heap has none, runs `init` in a transaction (txid 0), moves its
    /// result into the heap as the root, and commits.
    ///
    /// # Errors
    /// [`HeapError::RootMismatch`], errors from `init` (the transaction is then aborted), and
    /// allocation / log errors.
    pub fn root_or_init<R: Persistent>(
        &self,
        init: impl FnOnce(&mut Tx<'_>) -> Result<R, HeapError>,
    ) -> Result<&R, HeapError> {
        if let Some(r) = self.root::<R>()? {
            return Ok(r);
        }
        let mut tx = self.begin(0)?;
        let value = match init(&mut tx) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.abort();
                return Err(e);
            }
        };
        if let Err(e) = self.set_root(&mut tx, value, false) {
            let _ = tx.abort();
            return Err(e);
        }
        tx.commit()?;
        Ok(self.root::<R>()?.expect("root just committed"))
    }

    /// Allocator statistics (walks the free lists).
    pub fn stats(&self) -> crate::HeapStats {
        crate::alloc::stats(&self.header().alloc, self.base, self.size)
    }

    /// Checks the allocator's invariants (every free block in range, aligned, free lists acyclic
    /// and disjoint, large extents sorted and coalesced, pristine area zero if `deep`).
    ///
    /// # Errors
    /// A description of the first violated invariant.
    pub fn check(&self, deep: bool) -> Result<(), String> {
        crate::alloc::check_meta(&self.header().alloc, self.base, self.size)?;
        crate::alloc::check_free(&self.header().alloc, self.base, self.size, deep)
    }
}

/// A savepoint inside a transaction (see [`Tx::savepoint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Savepoint {
    used: usize,
    nrec: u64,
    txid: u64,
}

/// An open transaction over a [`Heap`].
///
/// Reading persistent collections takes `&Tx` (the returned references live as long as that
/// borrow); writing a cell takes `&Tx`; structural changes (allocate, free, insert, remove)
/// take `&mut Tx`, so no reference into an object can outlive the object's free.
///
/// End it with [`commit`](Tx::commit) or [`abort`](Tx::abort); dropping it aborts.
pub struct Tx<'h> {
    heap: &'h Heap,
    pub(crate) core: TxCore,
    txid: u64,
    done: bool,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("txid", &self.txid)
            .field("tracking", &self.heap.tracking)
            .field("records", &self.records())
            .finish()
    }
}

impl<'h> Tx<'h> {
    /// The transaction id.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// The heap's tracking mode.
    pub fn tracking(&self) -> Tracking {
        self.heap.tracking
    }

    /// The heap.
    pub fn heap(&self) -> &'h Heap {
        self.heap
    }

    /// Undo records published so far.
    pub fn records(&self) -> u64 {
        // SAFETY: plain read of the writer's counter by its only user (the sink does not run
        // concurrently with the thread that owns the Tx in a single-threaded server).
        unsafe { (*self.core.w).nrec }
    }

    /// Test hook: from now on, appending fails with [`HeapError::LogFull`] once the log holds
    /// `records` records. Used to stop a transaction at an exact log record (a simulated
    /// crash point). Reset by the next `begin`.
    #[doc(hidden)]
    pub fn set_record_limit(&mut self, records: u64) {
        // SAFETY: &mut self: only user of the writer.
        unsafe { (*self.core.w).limit = records };
    }

    /// Bytes of the log used so far.
    pub fn log_used(&self) -> usize {
        // SAFETY: as in `records`.
        unsafe { (*self.core.w).used }
    }

    /// Records that this transaction serves the request `e` (group commit: call once per
    /// request of the batch). The kernel reads the descriptor after a commit to publish replies.
    ///
    /// # Errors
    /// [`HeapError::BatchFull`] past [`MAX_BATCH`](crate::MAX_BATCH) entries.
    #[inline]
    pub fn add_batch_entry(&mut self, e: BatchEntry) -> Result<(), HeapError> {
        // SAFETY: &mut self: the only access to the writer on this thread.
        unsafe { (*self.core.w).add_batch(e) }
    }

    /// Records that one more reply of this transaction is about to be published before its
    /// commit (a participant's prepared reply to a nested call). Call it before publishing:
    /// recovery then knows the caller may have seen the transaction's effects.
    pub fn mark_prepared(&mut self) {
        // Under asynchronous page tracking the writes so far must be in the memfd (with their
        // pre-images logged) before anyone may see them: the kernel may commit this prepared
        // transaction after this process is gone. If they cannot be (the log is full) the
        // incarnation ends itself before publishing, as the SIGSEGV sink does.
        if let Some(sh) = self.heap.shadow_mut() {
            // SAFETY: &mut self: the only access to the writer; no reference into the heap
            // outlives this `&mut Tx` borrow.
            if unsafe { sh.flush(self.core.w) }.is_err() {
                // SAFETY: the writer is live.
                unsafe { (*self.core.w).set_overflow() };
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
                loop {
                    std::hint::spin_loop();
                }
            }
        }
        // SAFETY: &mut self: the only access to the writer on this thread.
        unsafe { (*self.core.w).add_prepared() }
    }

    /// The commit point: the log header becomes `COMMITTED(txid)` in one atomic store, after
    /// every heap write of the transaction.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for deferred effects.
    #[inline]
    pub fn commit(mut self) -> Result<(), HeapError> {
        if let Some(sh) = self.heap.shadow_mut() {
            // SAFETY: `self` is consumed: no reference obtained through this Tx is live; the
            // writer is ours.
            if let Err(e) = unsafe { sh.flush(self.core.w) } {
                // Not committed: undo what was flushed and close the transaction as aborted.
                let _ = self.abort_inner();
                return Err(e);
            }
        }
        self.finish(TxState::Committed(self.txid));
        Ok(())
    }

    /// Writes the header of a transaction begun lazily ([`Heap::begin_lazy_in`]) now, with
    /// its batch entries, if it has not written yet; nothing otherwise. Call it before
    /// anything leaves the server whose fate depends on this transaction's commit record.
    #[inline]
    pub fn activate(&mut self) {
        // SAFETY: &mut self: the only access to the writer on this thread.
        unsafe { (*self.core.w).activate() }
    }

    /// Whether this transaction was begun lazily and has written nothing yet.
    pub fn is_deferred(&self) -> bool {
        // SAFETY: plain read of the writer's flag by its only user.
        unsafe { (*self.core.w).pending.is_some() }
    }

    #[inline]
    fn finish(&mut self, s: TxState) {
        // SAFETY: &mut self: the only access to the writer; a transaction that never wrote
        // leaves the header as it found it.
        if unsafe { (*self.core.w).end_deferred() } {
            self.done = true;
            self.heap.open.set(false);
            return;
        }
        // SAFETY: view is a Copy of pointers into the live log mapping.
        let view = unsafe { (*self.core.w).view };
        view.set_state(s);
        if let Some(t) = self.heap.tracker_mut() {
            t.end();
        }
        self.done = true;
        self.heap.open.set(false);
    }

    /// Rolls back every update of the transaction in place and marks it `ABORTED(txid)`.
    ///
    /// # Errors
    /// [`HeapError::Unsupported`] under [`Tracking::Off`] (nothing was logged, nothing is
    /// undone; the transaction is closed anyway), [`HeapError::BadLog`] if the log is corrupt.
    pub fn abort(mut self) -> Result<RollbackCount, HeapError> {
        self.abort_inner()
    }

    fn abort_inner(&mut self) -> Result<RollbackCount, HeapError> {
        let r = self.undo_from(0, 0);
        self.finish(TxState::Aborted(self.txid));
        if self.heap.tracking == Tracking::Off {
            return Err(HeapError::Unsupported {
                what: "abort",
                mode: Tracking::Off,
            });
        }
        r
    }

    fn undo_from(&mut self, used: usize, nrec: u64) -> Result<RollbackCount, HeapError> {
        let w = self.core.w;
        if let Some(sh) = self.heap.shadow_mut() {
            // SAFETY: as below; the shadow restores the memfd from the log and the working
            // copy from the memfd.
            return unsafe { sh.undo(w, used, nrec) };
        }
        // SAFETY: &mut self: no reference obtained through this Tx is live, and references from
        // `Heap::root` only reach cells (UnsafeCell) or bytes no transaction writes. The writer
        // is ours; the heap mapping is live for 'h.
        unsafe {
            let n = (*w).nrec;
            (*w).view.rollback(
                used,
                nrec,
                n,
                self.heap.base as *mut u8,
                self.heap.size,
                usize::MAX,
            )
        }
    }

    /// Marks a point to which [`rollback_to`](Tx::rollback_to) can return. Under page tracking
    /// by SIGSEGV, armed, this re-protects the pages written so far (a new capture epoch);
    /// unarmed, pages captured so far stay captured and a later announced write to one of them
    /// logs its exact bytes (`PageTracker::savepoint`), so requests of one group commit share
    /// the pages they all write. Under uffd it moves the written pages into the memfd.
    ///
    /// # Errors
    /// Page-tracking errors.
    pub fn savepoint(&mut self) -> Result<Savepoint, HeapError> {
        if let Some(t) = self.heap.tracker_mut() {
            t.savepoint()?;
        }
        if let Some(sh) = self.heap.shadow_mut() {
            // SAFETY: &mut self: no reference obtained through this Tx is live.
            unsafe { sh.flush(self.core.w)? };
        }
        // SAFETY: &mut self, only user of the writer.
        let (used, nrec) = unsafe { ((*self.core.w).used, (*self.core.w).nrec) };
        Ok(Savepoint {
            used,
            nrec,
            txid: self.txid,
        })
    }

    /// Undoes every update made since `sp`; the transaction stays open.
    ///
    /// # Errors
    /// [`HeapError::Invalid`] for a savepoint of another transaction,
    /// [`HeapError::Unsupported`] under [`Tracking::Off`].
    pub fn rollback_to(&mut self, sp: Savepoint) -> Result<RollbackCount, HeapError> {
        if sp.txid != self.txid {
            return Err(HeapError::Invalid("savepoint of another transaction"));
        }
        match self.heap.tracking {
            Tracking::Off => Err(HeapError::Unsupported {
                what: "rollback_to",
                mode: Tracking::Off,
            }),
            Tracking::Typed => {
                let r = self.undo_from(sp.used, sp.nrec)?;
                // SAFETY: &mut self, only user of the writer.
                unsafe { (*self.core.w).truncate(sp.used, sp.nrec) };
                Ok(r)
            }
            // Page records after the savepoint are kept: the pages they restored are writable
            // now and later writes to them are not captured again, so dropping the records
            // would lose the pre-images a full rollback needs.
            Tracking::Page => self.undo_from(sp.used, sp.nrec),
        }
    }

    /// Allocates a raw block. Prefer the collections; this is for building your own.
    pub(crate) fn alloc_raw(&mut self, size: usize, align: usize) -> Result<*mut u8, HeapError> {
        self.core.alloc(size, align)
    }

    /// # Safety
    /// `p` came from `alloc_raw(size, align)` on this heap and is not used afterwards.
    pub(crate) unsafe fn free_raw(
        &mut self,
        p: *mut u8,
        size: usize,
        align: usize,
    ) -> Result<(), HeapError> {
        // SAFETY: forwarded contract.
        unsafe { self.core.free(p, size, align) }
    }
}

impl Tx<'_> {
    /// The page-mode root (see [`Heap::page_root_or_init`]), mutable for the rest of this
    /// borrow of the transaction: its writes are captured by page tracking.
    ///
    /// # Errors
    /// [`HeapError::Unsupported`] under typed tracking (writes through `&mut` would not be
    /// logged); [`HeapError::RootMismatch`]; [`HeapError::BadHeap`] if there is no root.
    pub fn page_root<R: crate::PageSafe>(&mut self) -> Result<&mut R, HeapError> {
        if self.heap.tracking == Tracking::Typed {
            return Err(HeapError::Unsupported {
                what: "page_root",
                mode: Tracking::Typed,
            });
        }
        let p = self
            .heap
            .root_ptr::<R>(true)?
            .ok_or_else(|| HeapError::BadHeap("no root: call page_root_or_init".into()))?;
        // Writes through the `&mut` are not announced: every page must fault first.
        self.heap.arm_page_tracking()?;
        // SAFETY: p is the live, never-freed root of type R (tag checked). The &mut borrows the
        // transaction mutably, so no other reference obtained through it (or another page_root)
        // is alive, and it ends before commit or abort. Writes through it are captured by the
        // page tracker (Page) or not needed (Off).
        Ok(unsafe { &mut *p })
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        crate::page::unregister(self.base);
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.abort_inner();
        }
    }
}

impl Heap {
    /// An allocator handle for this heap (page tracking or `Off` only).
    ///
    /// # Errors
    /// [`HeapError::Unsupported`] under [`Tracking::Typed`].
    pub fn allocator(&self) -> Result<HeapAlloc, HeapError> {
        if self.tracking() == Tracking::Typed {
            return Err(HeapError::Unsupported {
                what: "the allocator handle (untracked writes)",
                mode: Tracking::Typed,
            });
        }
        // Blocks allocated through the handle are written by code the heap does not see.
        self.arm_page_tracking()?;
        Ok(HeapAlloc::new(self.base()))
    }

    /// Under page tracking by SIGSEGV, from now on (for the rest of this attach) captures
    /// every write to the heap by a fault, not only the writes the heap's own API announces.
    ///
    /// Until then the tracker is *unarmed*: the typed API (cells, collections, the
    /// allocator) announces each write before making it, and the page's pre-image is logged
    /// then, without write protection, faults or system calls. [`Heap::allocator`] and
    /// [`Tx::page_root`], which hand out memory the heap cannot watch, arm it themselves;
    /// call this before writing the heap through raw pointers. It write-protects every page
    /// not captured in the open transaction (if any). Idempotent; a no-op for other modes.
    ///
    /// # Errors
    /// [`HeapError::PageTrack`] if `mprotect` failed (ENOMEM: see `vm.max_map_count`).
    pub fn arm_page_tracking(&self) -> Result<(), HeapError> {
        if let Some(t) = self.tracker_mut() {
            t.arm()?;
        }
        if let Some(sh) = self.shadow_mut() {
            sh.arm();
        }
        Ok(())
    }
}

impl<T: Copy> PCell<T> {
    /// Logs the current bytes in `tx`'s undo log, then stores `v`.
    ///
    /// # Errors
    /// [`HeapError::LogFull`] (nothing written), [`HeapError::NotInHeap`] if the cell is not
    /// inside `tx`'s heap.
    #[inline]
    pub fn set(&self, tx: &Tx<'_>, v: T) -> Result<(), HeapError> {
        self.set_core(&tx.core, v)
    }

    /// `set(f(get()))`.
    ///
    /// # Errors
    /// As [`set`](PCell::set).
    #[inline]
    pub fn update(&self, tx: &Tx<'_>, f: impl FnOnce(T) -> T) -> Result<T, HeapError> {
        let v = f(self.get());
        self.set(tx, v)?;
        Ok(v)
    }
}
