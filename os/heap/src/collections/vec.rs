//! `PVec`: a growable array in the heap.

use std::marker::PhantomData;

use super::{PValue, Token, in_heap, log_elems};
use crate::{HeapError, PCell, Persistent, Tx};

/// A growable array of persistent values.
#[repr(C)]
pub struct PVec<T: PValue> {
    ptr: PCell<u64>,
    len: PCell<u64>,
    cap: PCell<u64>,
    _m: PhantomData<T>,
}

// SAFETY: repr(C) of cells; `ptr` is 0 or a block of this heap owned by the vector; elements
// are PValue (Persistent); every mutation is logged.
unsafe impl<T: PValue> Persistent for PVec<T> {}

impl<T: PValue> Default for PVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: PValue> std::fmt::Debug for PVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PVec").field("len", &self.len()).finish()
    }
}

impl<T: PValue> PVec<T> {
    /// An empty vector (allocates nothing).
    pub const fn new() -> PVec<T> {
        PVec {
            ptr: PCell::new(0),
            len: PCell::new(0),
            cap: PCell::new(0),
            _m: PhantomData,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len.get() as usize
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    fn elem(&self, i: usize) -> *mut T {
        (self.ptr.get() as *mut T).wrapping_add(i)
    }

    /// The elements.
    pub fn as_slice<'a>(&'a self, _tx: &'a Tx<'_>) -> &'a [T] {
        let n = self.len();
        if n == 0 {
            return &[];
        }
        // SAFETY: ptr holds `len` initialised elements; the block is only freed or changed
        // under `&mut Tx`, which cannot coexist with the `&Tx` borrow bounding 'a.
        unsafe { std::slice::from_raw_parts(self.elem(0), n) }
    }

    /// Element `i`.
    pub fn get<'a>(&'a self, tx: &'a Tx<'_>, i: usize) -> Option<&'a T> {
        self.as_slice(tx).get(i)
    }

    /// Iterates over the elements.
    pub fn iter<'a>(&'a self, tx: &'a Tx<'_>) -> std::slice::Iter<'a, T> {
        self.as_slice(tx).iter()
    }

    fn grow(&self, tx: &mut Tx<'_>, want: usize) -> Result<(), HeapError> {
        let cap = self.cap.get() as usize;
        if want <= cap {
            return Ok(());
        }
        let sz = std::mem::size_of::<T>();
        let ncap = want.max(cap * 2).max(4);
        let bytes = ncap
            .checked_mul(sz)
            .ok_or(HeapError::Invalid("vector too large"))?;
        let np = tx.alloc_raw(bytes, std::mem::align_of::<T>())?;
        let old = self.ptr.get() as *mut u8;
        if cap > 0 {
            // SAFETY: np is fresh (pre-image logged by the allocator) and large enough; old holds
            // len <= cap elements. Moving bits: the elements now live in the new block.
            unsafe {
                std::ptr::copy_nonoverlapping(old, np, self.len() * sz);
                tx.free_raw(old, cap * sz, std::mem::align_of::<T>())?;
            }
        }
        self.ptr.set(tx, np as u64)?;
        self.cap.set(tx, ncap as u64)
    }

    /// Appends a value.
    ///
    /// # Errors
    /// [`HeapError::Full`], [`HeapError::LogFull`], [`HeapError::NotInHeap`]. After an error,
    /// abort the transaction or roll back to a savepoint.
    pub fn push(&self, tx: &mut Tx<'_>, v: T::In<'_>) -> Result<(), HeapError> {
        if std::mem::size_of::<T>() == 0 {
            return Err(HeapError::Invalid("zero-sized element"));
        }
        in_heap(tx, self)?;
        let n = self.len();
        self.grow(tx, n + 1)?;
        let v = T::create(tx, v, Token(()))?;
        let p = self.elem(n);
        // SAFETY: p is slot n < cap of our block; logged before the write.
        unsafe {
            log_elems(tx, p, 1)?;
            p.write(v);
        }
        self.len.set(tx, n as u64 + 1)
    }

    /// Removes the last element (freeing what it owns). Returns whether there was one.
    ///
    /// # Errors
    /// Log errors.
    pub fn pop(&self, tx: &mut Tx<'_>) -> Result<bool, HeapError> {
        let n = self.len();
        if n == 0 {
            return Ok(false);
        }
        in_heap(tx, self)?;
        // SAFETY: slot n-1 is initialised.
        T::destroy(unsafe { &*self.elem(n - 1) }, tx, Token(()))?;
        self.len.set(tx, n as u64 - 1)?;
        Ok(true)
    }

    /// Replaces element `i` (freeing what the old one owned).
    ///
    /// # Errors
    /// [`HeapError::Invalid`] if out of bounds; allocation and log errors.
    pub fn set(&self, tx: &mut Tx<'_>, i: usize, v: T::In<'_>) -> Result<(), HeapError> {
        if i >= self.len() {
            return Err(HeapError::Invalid("PVec::set index out of bounds"));
        }
        in_heap(tx, self)?;
        let v = T::create(tx, v, Token(()))?;
        let p = self.elem(i);
        // SAFETY: slot i is initialised; it is logged before being overwritten; the old value's
        // owned memory is freed after the slot no longer refers to it.
        unsafe {
            let old = p.read();
            log_elems(tx, p, 1)?;
            p.write(v);
            T::destroy(&old, tx, Token(()))?;
            std::mem::forget(old);
        }
        Ok(())
    }

    /// Removes every element past `n`.
    ///
    /// # Errors
    /// Log errors.
    pub fn truncate(&self, tx: &mut Tx<'_>, n: usize) -> Result<(), HeapError> {
        while self.len() > n {
            self.pop(tx)?;
        }
        Ok(())
    }
}
