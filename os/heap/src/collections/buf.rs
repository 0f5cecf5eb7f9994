//! `PBuf`: a fixed-length byte buffer in the heap that is written in place.

use std::cell::Cell;
use std::marker::PhantomData;

use super::{PValue, Token};
use crate::{HeapError, Persistent, Tx};

/// A fixed-length byte buffer owned by a persistent collection, changed in place.
///
/// Unlike [`PBytes`](crate::PBytes) (immutable: replace the value to change it), a `PBuf` is
/// written at any offset with [`write_at`](PBuf::write_at), which logs exactly the bytes it
/// overwrites first; a block of a file that receives a 100-byte write logs 100 bytes, not the
/// block. Its bytes are only ever copied out ([`read_at`](PBuf::read_at)): no reference into
/// them exists, so an in-place write can never change bytes someone is looking at (the same
/// argument as [`PCell`](crate::PCell)'s).
///
/// The length is fixed when the buffer is created (from `&[u8]`, by the owning collection's
/// insert) and the block is freed by the collection's remove.
#[repr(C)]
pub struct PBuf {
    ptr: u64,
    len: u64,
    /// `!Sync`, like a cell: a write through `&self` must not race a read on another thread.
    _not_sync: PhantomData<Cell<u8>>,
}

// SAFETY: repr(C) of two integers and a zero-sized marker; `ptr` is 0 or a block of this heap
// allocated by `create`; every write to the block goes through `write_at`, which logs first.
unsafe impl Persistent for PBuf {}

impl PBuf {
    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `out.len()` bytes starting at `off` into `out`.
    ///
    /// # Errors
    /// [`HeapError::Invalid`] if `off + out.len()` passes the end.
    pub fn read_at(&self, _tx: &Tx<'_>, off: usize, out: &mut [u8]) -> Result<(), HeapError> {
        self.range(off, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: ptr+off..+len lies in the block `create` allocated (checked by `range`),
        // which stays allocated while the collection holds this value (freeing needs `&mut Tx`,
        // and `_tx` is borrowed). No reference into the block exists (bytes are only copied),
        // and the type is !Sync, so no write runs during this copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.ptr as *const u8).add(off),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// The whole buffer, copied out.
    pub fn to_vec(&self, tx: &Tx<'_>) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        self.read_at(tx, 0, &mut v)
            .expect("whole range is in bounds");
        v
    }

    /// Logs the bytes at `off..off + data.len()`, then overwrites them with `data`.
    ///
    /// # Errors
    /// [`HeapError::Invalid`] if the range passes the end, [`HeapError::LogFull`] (nothing
    /// written), [`HeapError::NotInHeap`] if the buffer is not in `tx`'s heap.
    pub fn write_at(&self, tx: &Tx<'_>, off: usize, data: &[u8]) -> Result<(), HeapError> {
        self.range(off, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let p = (self.ptr as *mut u8).wrapping_add(off);
        // SAFETY: `log` checks that p..p+len lies in tx's heap (so the block is mapped) and
        // records its pre-image before the write; the range is inside the block (`range`); no
        // reference into the block exists and the type is !Sync (see read_at).
        unsafe {
            tx.core.log(p, data.len())?;
            std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len());
        }
        Ok(())
    }

    /// Logs and zeroes `off..off + len`.
    ///
    /// # Errors
    /// As [`write_at`](PBuf::write_at).
    pub fn zero(&self, tx: &Tx<'_>, off: usize, len: usize) -> Result<(), HeapError> {
        self.range(off, len)?;
        if len == 0 {
            return Ok(());
        }
        let p = (self.ptr as *mut u8).wrapping_add(off);
        // SAFETY: as in write_at.
        unsafe {
            tx.core.log(p, len)?;
            std::ptr::write_bytes(p, 0, len);
        }
        Ok(())
    }

    fn range(&self, off: usize, len: usize) -> Result<(), HeapError> {
        match off.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(HeapError::Invalid("range past the end of a PBuf")),
        }
    }
}

impl std::fmt::Debug for PBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PBuf({} bytes)", self.len)
    }
}

impl PValue for PBuf {
    type In<'a> = &'a [u8];
    #[inline]
    fn create(tx: &mut Tx<'_>, input: &[u8], _: Token) -> Result<PBuf, HeapError> {
        if input.is_empty() {
            return Ok(PBuf {
                ptr: 0,
                len: 0,
                _not_sync: PhantomData,
            });
        }
        let p = tx.alloc_raw(input.len(), 1)?;
        // SAFETY: p is a fresh block of input.len() bytes whose pre-image the allocator logged.
        unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), p, input.len()) };
        Ok(PBuf {
            ptr: p as u64,
            len: input.len() as u64,
            _not_sync: PhantomData,
        })
    }
    #[inline]
    fn destroy(v: &PBuf, tx: &mut Tx<'_>, _: Token) -> Result<(), HeapError> {
        if v.len == 0 {
            return Ok(());
        }
        // SAFETY: the block came from alloc_raw(len, 1) in `create`; the owning collection drops
        // the PBuf right after (no reference to the bytes exists: they are only copied).
        unsafe { tx.free_raw(v.ptr as *mut u8, v.len as usize, 1) }
    }
}
