//! The logged-write primitive: where a transaction's heap is and where (if anywhere) its
//! writes are logged. Used by the cells, the allocator and page tracking; depends only on the
//! log writer.

use crate::HeapError;
use crate::log::LogWriter;

/// The part of a transaction the allocator and the cells need: where the heap is and where
/// (if anywhere) writes are logged.
#[derive(Debug)]
pub(crate) struct TxCore {
    pub(crate) base: usize,
    pub(crate) end: usize,
    /// Typed tracking: log every write. Otherwise (page / off) writes are not logged here.
    pub(crate) typed: bool,
    pub(crate) w: *mut LogWriter,
    /// Page tracking by SIGSEGV: the heap's tracker, told of every write this core makes
    /// before it happens, so the page's pre-image is logged without a fault (null otherwise).
    /// (The heap's tracker slot, read at each use: no reference into it outlives a call.)
    pub(crate) track: *mut Option<txipc_pagetrack::PageTracker>,
    /// Page tracking by userfaultfd: the heap's shadow slot, told of every write likewise
    /// (null otherwise).
    pub(crate) shadow: *mut Option<crate::page::Shadow>,
}

impl TxCore {
    #[inline]
    pub(crate) fn check(&self, p: usize, len: usize) -> Result<(), HeapError> {
        if p < self.base || p > self.end || self.end - p < len {
            return Err(HeapError::NotInHeap { addr: p });
        }
        Ok(())
    }

    /// Logs the pre-image of `p..p+len` (typed tracking) after checking it lies in the heap.
    ///
    /// # Safety
    /// `p..p+len` is readable if it lies in the heap (it does, when mapped); no other thread
    /// uses the writer.
    #[inline]
    pub(crate) unsafe fn log(&self, p: *const u8, len: usize) -> Result<(), HeapError> {
        self.check(p as usize, len)?;
        if self.typed {
            // SAFETY: inside the live heap mapping (checked); writer exclusive (contract).
            unsafe { (*self.w).append(p as usize - self.base, p, len) }
        } else {
            self.announce(p as usize, len)
        }
    }

    /// Page tracking: captures the pages of `p..p+len` not yet captured in this transaction
    /// (their whole-page pre-images are logged), before the caller writes them.
    #[inline]
    fn announce(&self, p: usize, len: usize) -> Result<(), HeapError> {
        if !self.shadow.is_null() {
            // SAFETY: a non-null `shadow` is the heap's shadow slot, live for the
            // transaction's life; this thread owns the transaction, and the `&mut` ends with
            // the call (the heap's own borrows of the slot, at flushes, never overlap it).
            if let Some(sh) = unsafe { (*self.shadow).as_mut() } {
                sh.announce(p, len);
            }
        }
        if self.track.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null `track` is the heap's tracker slot, live for the transaction's
        // life; the slot itself only changes at attach and drop, and the borrow ends with
        // this call (the heap's `&mut` borrows of it, at savepoints, never overlap a write).
        let Some(t) = (unsafe { (*self.track).as_ref() }) else {
            return Ok(());
        };
        let (w, base) = (self.w, self.base);
        t.announce(
            p,
            len,
            |page, src| {
                // SAFETY: the writer is live (the transaction's) and not otherwise borrowed
                // during the call; `src` is a readable page of the heap at index `page`.
                unsafe { crate::page::append_page_locked(w, page, src) }
            },
            // A page captured before the transaction's latest savepoint: log the bytes about
            // to change (its page record holds the state before the savepoint).
            |addr, len| {
                // SAFETY: as above; `addr..addr + len` lies in the heap (checked by the caller
                // and by `announce`) and is readable.
                unsafe { crate::page::append_locked(w, addr - base, addr as *const u8, len) }
            },
        )
        .map_err(|e| match e {
            txipc_pagetrack::AnnounceError::Sink(e) => e,
            txipc_pagetrack::AnnounceError::Track(t) => HeapError::from(t),
        })
    }

    #[inline]
    pub(crate) fn log_zero(&self, p: usize, len: usize) -> Result<(), HeapError> {
        self.check(p, len)?;
        if self.typed {
            // SAFETY: the writer is only used by the transaction's thread.
            unsafe { (*self.w).append_zero(p - self.base, len) }
        } else {
            self.announce(p, len)
        }
    }

    /// Logged write of one u64 at `p`.
    ///
    /// # Safety
    /// `p` is an 8-aligned heap address not covered by a live Rust reference (other than
    /// through UnsafeCell).
    #[inline]
    pub(crate) unsafe fn set_u64(&self, p: *mut u64, v: u64) -> Result<(), HeapError> {
        // SAFETY: contract.
        unsafe {
            self.log(p.cast(), 8)?;
            p.write(v);
        }
        Ok(())
    }
}
