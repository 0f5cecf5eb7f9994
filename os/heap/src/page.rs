//! Page-tracking integration: the pre-image sink, the allocator handle for allocator-aware
//! collections, and the page-mode root.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::layout::{HeapHeader, PAGE};
use crate::log::LogWriter;
use crate::tracking::Tracking;
use crate::txcore::TxCore;
use crate::{HeapError, Persistent};

/// The page-tracking sink: appends the page's pre-image to the undo log.
///
/// If the log is full there is no way to return an error from a faulting store, so the
/// incarnation marks the log OVERFLOW and kills itself with SIGKILL *before* the page is made
/// writable: the page still holds its pre-image, every earlier write is logged, and recovery
/// rolls the transaction back exactly.
///
/// # Safety
/// `ctx` is the `*mut LogWriter` boxed by the heap, live while the tracker is; `page` is a
/// readable page of the heap at index `page_index` (the tracker's contract).
pub(crate) unsafe fn page_sink(ctx: *mut (), page_index: usize, page: *const u8) {
    let w = ctx.cast::<LogWriter>();
    // SAFETY: ctx is the live boxed writer and `page` a readable page of the heap at
    // `page_index` (this function's contract, which is append_page_locked's).
    let r = unsafe { append_page_locked(w, page_index, page) };
    // SAFETY: ctx is the live boxed writer (contract); the append above released its lock,
    // and the owning thread does not use the writer while its own store is faulting.
    unsafe {
        if r.is_err() {
            (*w).set_overflow();
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            loop {
                std::hint::spin_loop();
            }
        }
    }
}

/// Appends the whole pre-image of page `page_index`, read from `page`, to the undo log under
/// the writer's spin lock. Both capture paths append through it: the SIGSEGV sink (on whichever
/// thread faulted) and announced writes (on the transaction's thread), so the lock is the one
/// place their appends are serialised.
///
/// # Safety
/// `w` is the heap's live boxed `LogWriter`, and no `&mut` to it is held across this call
/// outside the lock; `page` is a readable page of the heap at index `page_index`.
pub(crate) unsafe fn append_page_locked(
    w: *mut LogWriter,
    page_index: usize,
    page: *const u8,
) -> Result<(), HeapError> {
    // SAFETY: this function's contract is append_locked's for one whole page.
    unsafe { append_locked(w, page_index * PAGE, page, PAGE) }
}

/// Appends the pre-image of the `len` heap bytes at offset `off`, read from `src`, under the
/// writer's spin lock: a whole page ([`append_page_locked`]), or the exact bytes of an
/// announced write to a page captured before the transaction's latest savepoint.
///
/// # Safety
/// `w` is the heap's live boxed `LogWriter`, and no `&mut` to it is held across this call
/// outside the lock; `src..src + len` is readable and is the heap's copy of the bytes at
/// offset `off`.
pub(crate) unsafe fn append_locked(
    w: *mut LogWriter,
    off: usize,
    src: *const u8,
    len: usize,
) -> Result<(), HeapError> {
    // SAFETY: `w` is live (contract). Acquiring the lock makes this the writer's only user
    // until the Release store; `src` is readable and is the heap's copy of the bytes at `off`
    // (contract), as `LogWriter::append` requires.
    unsafe {
        let lock = &(*w).lock;
        while lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let r = (*w).append(off, src, len);
        lock.store(false, Ordering::Release);
        r
    }
}

/// Bases of the heaps attached in this process (so that an allocator handle never touches an
/// unmapped heap).
static ATTACHED: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

pub(crate) fn register(base: usize) {
    for s in &ATTACHED {
        if s.compare_exchange(0, base, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

pub(crate) fn unregister(base: usize) {
    for s in &ATTACHED {
        if s.compare_exchange(base, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

fn attached(base: usize) -> bool {
    base != 0 && ATTACHED.iter().any(|s| s.load(Ordering::Acquire) == base)
}

/// An allocator handle over a heap, for unmodified allocator-aware collections (`hashbrown`,
/// `allocator_api2::vec::Vec`) living in the heap under [`Tracking::Page`] (or `Off`).
///
/// It holds only the heap's base address, so it can itself be stored in the heap. It refuses
/// to allocate (returns `AllocError`) when the heap is not attached in this process or is
/// attached with [`Tracking::Typed`] (whose writes must be logged one by one).
///
/// It is neither `Send` nor `Sync`: the allocator's metadata in the heap is not atomic, so two
/// threads allocating through handles to the same heap would race on it. A heap is used by
/// the one thread that serves it.
///
/// ```compile_fail
/// fn needs_send<T: Send>() {}
/// needs_send::<txipc_heap::HeapAlloc>();
/// ```
///
/// ```compile_fail
/// fn needs_sync<T: Sync>() {}
/// needs_sync::<txipc_heap::HeapAlloc>();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct HeapAlloc {
    base: usize,
    /// Not `Send`, not `Sync` (zero-sized).
    _single_thread: std::marker::PhantomData<*const ()>,
}

// SAFETY: one integer, the base of the heap it allocates from, and a zero-sized marker.
unsafe impl Persistent for HeapAlloc {}

impl HeapAlloc {
    pub(crate) fn new(base: usize) -> HeapAlloc {
        HeapAlloc {
            base,
            _single_thread: std::marker::PhantomData,
        }
    }

    fn core(&self) -> Option<TxCore> {
        if !attached(self.base) {
            return None;
        }
        // SAFETY: the heap at base is attached (mapped) in this process.
        let h = unsafe { &*(self.base as *const HeapHeader) };
        match Tracking::from_code(h.attach_mode.load(Ordering::Relaxed)) {
            Some(Tracking::Page) | Some(Tracking::Off) => {}
            _ => return None,
        }
        let size = h.size_bytes();
        Some(TxCore {
            base: self.base,
            end: self.base + size,
            typed: false,
            w: std::ptr::null_mut(),
            // Writes through the handle's blocks are not announced: the heap armed its tracker
            // when it handed the handle out (`Heap::allocator`).
            track: std::ptr::null_mut(),
            shadow: std::ptr::null_mut(),
        })
    }

    fn allocate_raw(&self, size: usize, align: usize) -> Option<NonNull<[u8]>> {
        if size == 0 {
            let p = NonNull::new(align as *mut u8)?;
            return Some(NonNull::slice_from_raw_parts(p, 0));
        }
        let core = self.core()?;
        let p = core.alloc(size, align).ok()?;
        Some(NonNull::slice_from_raw_parts(NonNull::new(p)?, size))
    }

    /// # Safety
    /// `p` came from `allocate_raw(size, align)` on this handle.
    unsafe fn deallocate_raw(&self, p: NonNull<u8>, size: usize, align: usize) {
        if size == 0 {
            return;
        }
        if let Some(core) = self.core() {
            // SAFETY: forwarded.
            let _ = unsafe { core.free(p.as_ptr(), size, align) };
        }
    }
}

// SAFETY: blocks come from the heap allocator: valid for the requested layout until freed, and
// the handle is a Copy of the base, so clones allocate from the same heap.
unsafe impl allocator_api2::alloc::Allocator for HeapAlloc {
    fn allocate(
        &self,
        layout: std::alloc::Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        self.allocate_raw(layout.size(), layout.align())
            .ok_or(allocator_api2::alloc::AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: std::alloc::Layout) {
        // SAFETY: forwarded (Allocator contract: ptr was allocated by this allocator).
        unsafe { self.deallocate_raw(ptr, layout.size(), layout.align()) }
    }
}

// SAFETY: as for the 0.4 trait above.
unsafe impl allocator_api2_02::alloc::Allocator for HeapAlloc {
    fn allocate(
        &self,
        layout: std::alloc::Layout,
    ) -> Result<NonNull<[u8]>, allocator_api2_02::alloc::AllocError> {
        self.allocate_raw(layout.size(), layout.align())
            .ok_or(allocator_api2_02::alloc::AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: std::alloc::Layout) {
        // SAFETY: forwarded.
        unsafe { self.deallocate_raw(ptr, layout.size(), layout.align()) }
    }
}

/// A `BuildHasher` that hashes the same in every process ([`StableHasher`](crate::hash::StableHasher)):
/// use it for hash maps stored in the heap (the default random state would change with every
/// incarnation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct StableState;

// SAFETY: zero-sized.
unsafe impl Persistent for StableState {}

impl std::hash::BuildHasher for StableState {
    type Hasher = crate::hash::StableHasher;
    fn build_hasher(&self) -> crate::hash::StableHasher {
        crate::hash::StableHasher::default()
    }
}

/// Types that may live in the heap under page tracking: every [`Persistent`] type, and
/// allocator-aware collections allocating from [`HeapAlloc`] whose contents are `PageSafe`.
///
/// # Safety
/// A value of the type stored in the heap owns no memory outside the heap, and its bytes mean
/// the same in every incarnation of the same build (the heap is at the same address; hashers
/// are deterministic).
pub unsafe trait PageSafe: 'static {}

// SAFETY: Persistent is stricter.
unsafe impl<T: Persistent> PageSafe for T {}
// SAFETY: the table is allocated from the heap (HeapAlloc); keys, values and the hasher state
// are PageSafe.
unsafe impl<K: PageSafe, V: PageSafe, S: PageSafe> PageSafe
    for hashbrown::HashMap<K, V, S, HeapAlloc>
{
}
// SAFETY: as above.
unsafe impl<T: PageSafe, S: PageSafe> PageSafe for hashbrown::HashSet<T, S, HeapAlloc> {}
// SAFETY: the buffer is allocated from the heap; elements are PageSafe.
unsafe impl<T: PageSafe> PageSafe for allocator_api2::vec::Vec<T, HeapAlloc> {}

/// Page-tracking counters of a heap since attach ([`Heap::page_stats`](crate::Heap::page_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageStats {
    /// Pages whose pre-image was logged (SIGSEGV: sink calls; uffd: pages moved into the memfd).
    pub captures: u64,
    /// Page-table scans (`PAGEMAP_SCAN` calls over the tracked ranges; uffd only).
    pub scans: u64,
    /// Pages the scans covered (their cost is proportional to it; uffd only).
    pub pages_scanned: u64,
    /// Write-protection system calls (SIGSEGV: `mprotect` runs at `begin` and when armed).
    pub protect_calls: u64,
    /// Every write is captured by a fault, announced or not (SIGSEGV after
    /// [`Heap::arm_page_tracking`](crate::Heap::arm_page_tracking); uffd always).
    pub armed: bool,
}

/// The asynchronous page tracker under [`Tracking::Page`] (the default where the kernel has
/// `UFFD_FEATURE_WP_ASYNC` and `PAGEMAP_SCAN`; ARCHITECTURE.md §5.3).
///
/// The heap memfd holds the *committed* state and is written only by [`Shadow::flush`]; the
/// server runs on a private copy-on-write mapping of it at the heap's base (the "working
/// copy"), write-protected with userfaultfd in asynchronous mode, so a first write to a page
/// costs a copy-on-write fault and no signal. `flush` asks `PAGEMAP_SCAN` which pages were
/// written since the last flush, and for each appends the memfd's page (its pre-image) to the
/// undo log, then copies the working page into the memfd. It runs at commit, at each savepoint
/// and before a prepared reply is published.
///
/// Crash points: before a flush the memfd is untouched (nothing to undo); during one, every
/// memfd page written has its pre-image in the log before it is written, so the existing
/// rollback (in place, or by the kernel after a death) restores the memfd exactly.
pub(crate) struct Shadow {
    wp: txipc_pagetrack::uffd::WpAsync,
    /// The memfd mapped shared: the committed state (plus flushed pages of the open
    /// transaction, whose pre-images are in the log).
    committed: crate::map::Mapping,
    /// Scratch for scans.
    scratch: Vec<usize>,
    /// `(record number, page)` of every page record this transaction appended.
    flushed: Vec<(u64, usize)>,
    /// Pages moved into the memfd since attach.
    moved: u64,
    /// Every write is found by `PAGEMAP_SCAN` (after [`Shadow::arm`]). Until then the heap's
    /// API announces each write ([`Shadow::announce`]) and a flush moves exactly the announced
    /// pages, with no scan.
    armed: bool,
    /// Unarmed: pages announced since the last flush, each once.
    pending: Vec<usize>,
    /// Unarmed: one bit per page, set while the page is in `pending`.
    marks: Vec<u64>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("base", &format_args!("{:#x}", self.wp.base()))
            .field("len", &self.wp.len())
            .field("flushed", &self.flushed.len())
            .finish()
    }
}

impl Shadow {
    /// Starts tracking the working copy at `base..base + committed.len()`.
    ///
    /// # Errors
    /// `TrackError::Uffd` (wrapped) when the kernel or the sandbox lacks asynchronous
    /// write-protect: the caller falls back to the SIGSEGV tracker.
    ///
    /// # Safety
    /// `base..base + committed.len()` is this process's private mapping of the memfd that
    /// `committed` maps shared, and stays mapped while the returned value lives.
    pub(crate) unsafe fn new(
        base: usize,
        committed: crate::map::Mapping,
    ) -> Result<Shadow, HeapError> {
        let len = committed.len();
        // SAFETY: the caller's contract (a private mapping of ours, live while we are).
        let wp = unsafe { txipc_pagetrack::uffd::WpAsync::new(base as *mut u8, len)? };
        Ok(Shadow {
            wp,
            committed,
            scratch: Vec::with_capacity(1024),
            flushed: Vec::with_capacity(1024),
            moved: 0,
            armed: false,
            pending: Vec::with_capacity(1024),
            marks: vec![0; (len / PAGE).div_ceil(64)],
        })
    }

    /// Unarmed: records that the pages of `p..p+len` (heap addresses, checked by the caller to
    /// lie in the heap) are about to be written; the next flush moves them into the memfd.
    #[inline]
    pub(crate) fn announce(&mut self, p: usize, len: usize) {
        if self.armed || len == 0 {
            return;
        }
        let base = self.wp.base();
        let first = (p - base) / PAGE;
        let last = (p + len - 1 - base) / PAGE;
        for page in first..=last {
            let (w, b) = (page / 64, 1u64 << (page % 64));
            if self.marks[w] & b == 0 {
                self.marks[w] |= b;
                self.pending.push(page);
            }
        }
    }

    /// From now on a flush finds the written pages with `PAGEMAP_SCAN` (every write, announced
    /// or not). The first scan also reports the pages unarmed transactions wrote (their
    /// write-protection was never restored): they equal the memfd, so moving them again is
    /// harmless.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }

    /// Empties `pending` and its marks.
    fn clear_pending(&mut self) {
        for &page in &self.pending {
            self.marks[page / 64] &= !(1u64 << (page % 64));
        }
        self.pending.clear();
    }

    /// Counters since attach.
    pub(crate) fn stats(&self) -> PageStats {
        PageStats {
            captures: self.moved,
            scans: self.wp.scans(),
            pages_scanned: self.wp.pages_scanned(),
            protect_calls: 0,
            armed: self.armed,
        }
    }

    /// Forgets the flushed pages of the previous transaction (at `begin`).
    pub(crate) fn begin(&mut self) {
        self.flushed.clear();
    }

    /// Moves every page written since the last flush into the memfd, its pre-image logged
    /// first. On an error (the log is full) the pages not yet moved are reset from the memfd,
    /// so the working copy again equals the memfd plus the logged pages: an abort then
    /// restores everything.
    ///
    /// # Safety
    /// `w` is the heap's live writer; no reference into the working copy is live across the
    /// call except through `UnsafeCell` (on error pages are overwritten).
    pub(crate) unsafe fn flush(&mut self, w: *mut LogWriter) -> Result<(), HeapError> {
        self.scratch.clear();
        if self.armed {
            self.wp.scan(&mut self.scratch)?;
        } else {
            // Exactly the announced pages: no page-table walk.
            self.scratch.extend_from_slice(&self.pending);
        }
        self.clear_pending();
        let base = self.wp.base() as *mut u8;
        let mem = self.committed.ptr();
        for i in 0..self.scratch.len() {
            let page = self.scratch[i];
            let off = page * PAGE;
            // SAFETY: `off` is a page of the heap (the scan reports pages of the region); the
            // memfd view and the working copy are distinct mappings of `len` bytes; `w` is live
            // (contract). The record is published before the memfd page is written (the
            // writer's publish fences), which is the crash-point argument above.
            unsafe {
                if let Err(e) = (*w).append(off, mem.add(off), PAGE) {
                    self.reset_pages(i);
                    return Err(e);
                }
                self.flushed.push(((*w).nrec - 1, page));
                self.moved += 1;
                std::ptr::copy_nonoverlapping(base.add(off), mem.add(off), PAGE);
            }
        }
        Ok(())
    }

    /// Copies the memfd's pages `scratch[from..]` back into the working copy and
    /// write-protects them again.
    ///
    /// # Safety
    /// As [`Shadow::flush`].
    unsafe fn reset_pages(&mut self, from: usize) {
        let base = self.wp.base() as *mut u8;
        let mem = self.committed.ptr();
        for &page in &self.scratch[from..] {
            // SAFETY: a page of both mappings (see flush).
            unsafe {
                std::ptr::copy_nonoverlapping(mem.add(page * PAGE), base.add(page * PAGE), PAGE)
            };
        }
        self.rearm();
    }

    /// Write-protects every page the working copy wrote since the last scan, forgetting them
    /// (they equal the memfd again). If the scan fails the whole region is protected instead.
    fn rearm(&mut self) {
        if !self.armed {
            // Unarmed, write-protection is not restored (nothing relies on it until `arm`,
            // whose first scan reports these pages too).
            return;
        }
        let mut discard = std::mem::take(&mut self.scratch);
        discard.clear();
        if self.wp.scan(&mut discard).is_err() {
            let _ = self.wp.protect_all();
        }
        self.scratch = discard;
    }

    /// Undoes the transaction back to record `nrec`: drops the unflushed writes (pages reset
    /// from the memfd), rolls the memfd back with the log records `nrec..`, and copies the pages
    /// those records restored into the working copy.
    ///
    /// # Safety
    /// As [`Shadow::flush`]; `pos`/`nrec` designate a record boundary of the log (a savepoint
    /// or the start).
    pub(crate) unsafe fn undo(
        &mut self,
        w: *mut LogWriter,
        pos: usize,
        nrec: u64,
    ) -> Result<crate::RollbackCount, HeapError> {
        self.scratch.clear();
        let scanned = if self.armed {
            self.wp.scan(&mut self.scratch)
        } else {
            self.scratch.extend_from_slice(&self.pending);
            Ok(())
        };
        self.clear_pending();
        let len = self.committed.len();
        let mem = self.committed.ptr();
        let base = self.wp.base() as *mut u8;
        // SAFETY: the contract; the memfd view is a live writable mapping of the heap, and no
        // one else writes it while the server lives (it is this log's heap).
        let r = unsafe {
            (*w).view
                .rollback(pos, nrec, (*w).nrec, mem, len, usize::MAX)
        };
        if scanned.is_err() {
            // Which pages were written is unknown: reset the whole working copy.
            // SAFETY: both mappings are `len` bytes and distinct.
            unsafe { std::ptr::copy_nonoverlapping(mem, base, len) };
        } else {
            let unflushed = std::mem::take(&mut self.scratch);
            for &page in unflushed.iter().chain(
                self.flushed
                    .iter()
                    .filter(|(rec, _)| *rec >= nrec)
                    .map(|(_, p)| p),
            ) {
                // SAFETY: a page of both mappings.
                unsafe {
                    std::ptr::copy_nonoverlapping(mem.add(page * PAGE), base.add(page * PAGE), PAGE)
                };
            }
            self.scratch = unflushed;
        }
        self.rearm();
        r
    }
}
