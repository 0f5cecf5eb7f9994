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
            Ok(())
        }
    }

    #[inline]
    pub(crate) fn log_zero(&self, p: usize, len: usize) -> Result<(), HeapError> {
        self.check(p, len)?;
        if self.typed {
            // SAFETY: the writer is only used by the transaction's thread.
            unsafe { (*self.w).append_zero(p - self.base, len) }
        } else {
            Ok(())
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
