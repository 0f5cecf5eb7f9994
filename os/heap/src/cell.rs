//! The `Persistent` marker and the logged cell.

use std::cell::UnsafeCell;
use std::marker::PhantomData;

use crate::HeapError;
use crate::txcore::TxCore;

/// Marks a type that may live in the recoverable heap.
///
/// Derive it with `#[derive(Persistent)]` (which checks `#[repr(C)]` and that every field is
/// `Persistent`); implement it by hand only for new primitives of this crate.
///
/// # Safety
///
/// Implementing it promises, for every value of the type stored in a heap:
/// 1. it holds no pointer outside the heap (no `Box`, `String`, `Vec`, reference or raw
///    pointer); pointers into the heap only through this crate's handle types;
/// 2. its layout is fixed by `#[repr(C)]` (or `transparent`), so that every incarnation of the
///    same build reads the same bytes the same way;
/// 3. it needs no `Drop` (the heap never runs destructors), and
/// 4. every mutation after construction goes through a cell of this crate that logs the bytes
///    first (plain fields are immutable once the value is in the heap); any byte pattern the
///    value once held is valid again after a rollback.
pub unsafe trait Persistent: 'static {}

macro_rules! persistent_prims {
    ($($t:ty),*) => { $(
        // SAFETY: plain old data: no pointers, no drop, every bit pattern it held is valid.
        unsafe impl Persistent for $t {}
    )* };
}
persistent_prims!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    bool,
    char,
    ()
);
// SAFETY: an array of Persistent values is Persistent (same layout rules, no pointers).
unsafe impl<T: Persistent, const N: usize> Persistent for [T; N] {}
// SAFETY: zero-sized.
unsafe impl<T: 'static + ?Sized> Persistent for PhantomData<T> {}

/// A logged cell holding a `Copy` value in the heap.
///
/// `get` copies the value out; `set` logs the old bytes and then writes. There is no way to
/// obtain `&mut T`, so nothing inside the heap can be written without being logged.
///
/// A `set` takes `&Tx` (not `&mut`): overwriting a `Copy` value frees nothing, so it may run
/// while references obtained through the same transaction are alive.
#[repr(transparent)]
pub struct PCell<T: Copy>(UnsafeCell<T>);

// SAFETY: repr(transparent) over T, which is Persistent; all mutation is logged by `set`.
unsafe impl<T: Persistent + Copy> Persistent for PCell<T> {}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for PCell<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PCell").field(&self.get()).finish()
    }
}

impl<T: Copy + Default> Default for PCell<T> {
    fn default() -> Self {
        PCell::new(T::default())
    }
}

impl<T: Copy> PCell<T> {
    /// A cell holding `v` (to be moved into the heap as part of a bigger value).
    pub const fn new(v: T) -> PCell<T> {
        PCell(UnsafeCell::new(v))
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> T {
        // SAFETY: PCell is !Sync and never hands out references to its contents, so no write
        // can be in progress during this copy.
        unsafe { *self.0.get() }
    }

    #[inline]
    pub(crate) fn set_core(&self, core: &TxCore, v: T) -> Result<(), HeapError> {
        let p = self.0.get();
        // SAFETY: log checks that the cell is inside the heap and copies its bytes; the write
        // goes through UnsafeCell of a !Sync type with no outstanding references to the inside.
        unsafe {
            core.log(p.cast(), std::mem::size_of::<T>())?;
            p.write(v);
        }
        Ok(())
    }

    /// Unlogged write, only for formatting a fresh heap.
    pub(crate) fn init_raw(&self, v: T) {
        // SAFETY: as in set_core; used before any transaction or reference exists.
        unsafe { self.0.get().write(v) }
    }

    pub(crate) fn as_ptr(&self) -> *mut T {
        self.0.get()
    }
}
