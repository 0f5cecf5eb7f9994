//! Page-tracking integration: the pre-image sink, the allocator handle for allocator-aware
//! collections, and the page-mode root.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::alloc::{PAGE, TxCore};
use crate::heap::{HeapHeader, Tracking};
use crate::log::LogWriter;
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
    // SAFETY: ctx is the live boxed writer (contract). The lock serialises sinks of several
    // threads; the owning thread does not use the writer while its own store is faulting.
    unsafe {
        let lock = &(*w).lock;
        while lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let r = (*w).append(page_index * PAGE, page, PAGE);
        (*w).lock.store(false, Ordering::Release);
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

/// A `BuildHasher` that hashes the same in every process ([`StableHasher`](crate::StableHasher)):
/// use it for hash maps stored in the heap (the default random state would change with every
/// incarnation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct StableState;

// SAFETY: zero-sized.
unsafe impl Persistent for StableState {}

impl std::hash::BuildHasher for StableState {
    type Hasher = crate::StableHasher;
    fn build_hasher(&self) -> crate::StableHasher {
        crate::StableHasher::default()
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

impl crate::Heap {
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
        Ok(HeapAlloc::new(self.base()))
    }
}
