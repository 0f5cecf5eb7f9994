//! `PBytes`: an immutable byte string in the heap.

use super::{PKey, PValue, Token};
use crate::{HeapError, Persistent, Tx};

/// An immutable byte string owned by a persistent collection (keys and values of maps, elements
/// of vectors). Created from `&[u8]` by the collection's insert, freed by its remove; to change
/// a value, insert a new one.
#[repr(C)]
pub struct PBytes {
    ptr: u64,
    len: u64,
}

// SAFETY: repr(C) of two integers; `ptr` is 0 or a block of this heap allocated by `create`;
// immutable after creation.
unsafe impl Persistent for PBytes {}

impl PBytes {
    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr..ptr+len is the block `create` allocated and filled; it stays allocated
        // (and unchanged) until `destroy` or `replace_in_place`, which need `&mut Tx`, while
        // `&self` came through a `&Tx` borrow (or the root, which is never destroyed).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len as usize) }
    }

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
}

impl std::fmt::Debug for PBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PBytes({:?})", String::from_utf8_lossy(self.as_slice()))
    }
}

impl PartialEq<[u8]> for PBytes {
    fn eq(&self, o: &[u8]) -> bool {
        self.as_slice() == o
    }
}

impl PValue for PBytes {
    type In<'a> = &'a [u8];
    #[inline]
    fn create(tx: &mut Tx<'_>, input: &[u8], _: Token) -> Result<PBytes, HeapError> {
        if input.is_empty() {
            return Ok(PBytes { ptr: 0, len: 0 });
        }
        let p = tx.alloc_raw(input.len(), 1)?;
        // SAFETY: p is a fresh block of input.len() bytes whose pre-image the allocator logged.
        unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), p, input.len()) };
        Ok(PBytes {
            ptr: p as u64,
            len: input.len() as u64,
        })
    }
    /// A value of the same length is overwritten in its block (its old bytes logged first):
    /// no allocation, no free, no change to the slot that holds the `PBytes`.
    #[inline]
    fn replace_in_place(
        v: &PBytes,
        tx: &mut Tx<'_>,
        input: &&[u8],
        _: Token,
    ) -> Result<bool, HeapError> {
        if v.len == 0 || v.len as usize != input.len() {
            return Ok(false);
        }
        let p = v.ptr as *mut u8;
        // SAFETY: p..p+len is the live block `create` allocated (checked to lie in the heap by
        // `log`, which logs it before it changes); `&mut Tx`: no reference into it obtained
        // through a `&Tx` borrow is live, and this thread owns the transaction's writer.
        unsafe {
            tx.core.log(p, input.len())?;
            std::ptr::copy_nonoverlapping(input.as_ptr(), p, input.len());
        }
        Ok(true)
    }
    #[inline]
    fn destroy(v: &PBytes, tx: &mut Tx<'_>, _: Token) -> Result<(), HeapError> {
        if v.len == 0 {
            return Ok(());
        }
        // SAFETY: the block came from alloc_raw(len, 1) in `create`; the owning collection drops
        // the PBytes right after (no reference to the bytes survives: `&mut Tx`).
        unsafe { tx.free_raw(v.ptr as *mut u8, v.len as usize, 1) }
    }
}

impl PKey for PBytes {
    type Q = [u8];
    #[inline]
    fn key(&self) -> &[u8] {
        self.as_slice()
    }
    #[inline]
    fn in_key<'a>(input: &'a &[u8]) -> &'a [u8] {
        input
    }
    fn dup(&self, tx: &mut Tx<'_>, t: Token) -> Result<PBytes, HeapError> {
        // The slice points into the heap; create copies it into a new block first, so a
        // transient alias is fine (nothing is freed).
        let (p, n) = (self.ptr, self.len as usize);
        if n == 0 {
            return Ok(PBytes { ptr: 0, len: 0 });
        }
        // SAFETY: as in as_slice; the block outlives this call.
        let s = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
        PBytes::create(tx, s, t)
    }
}
