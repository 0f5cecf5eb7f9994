//! Persistent collections: every mutation logs the exact bytes it changes.
//!
//! Access rules (they make use-after-free impossible in safe code):
//! * reads take `&Tx` and return references that live as long as that borrow;
//! * structural changes (insert, remove, push, anything that may free) take `&mut Tx`, so no
//!   reference obtained earlier can still be alive;
//! * a collection must be inside the heap to be mutated (build it empty with `new()`, move it
//!   into the heap as part of the root, then insert): otherwise [`HeapError::NotInHeap`].
//!
//! Values and keys are described by [`PValue`] and [`PKey`]: plain `Copy` persistent values are
//! stored as they are; [`PBytes`](crate::PBytes) are created from `&[u8]` and freed by the collection.

pub(crate) mod btree;
pub(crate) mod buf;
pub(crate) mod bytes;
pub(crate) mod hashmap;
pub(crate) mod vec;

use std::hash::Hash;

use crate::{HeapError, Persistent, Tx};

pub(crate) mod sealed {
    /// Proof of being inside this crate: only it can construct the token.
    #[derive(Debug)]
    pub struct Token(pub(crate) ());
}
use sealed::Token;

/// A value a persistent collection can hold.
///
/// Implemented for every `Persistent + Copy` type (stored as is) and for [`PBytes`](crate::PBytes) (built from
/// `&[u8]`, owned and freed by the collection).
pub trait PValue: Persistent + Sized {
    /// What the caller hands in to store a value.
    type In<'a>;
    #[doc(hidden)]
    fn create(tx: &mut Tx<'_>, input: Self::In<'_>, t: Token) -> Result<Self, HeapError>;
    #[doc(hidden)]
    fn destroy(v: &Self, tx: &mut Tx<'_>, t: Token) -> Result<(), HeapError>;
    /// Overwrites the stored `v` with `input` where it lives, when it can without allocating
    /// (a byte string of the same length): a logged write like any other. `false` when it
    /// cannot, and nothing was changed: the caller creates the new value and destroys `v`.
    #[doc(hidden)]
    #[inline]
    fn replace_in_place(
        _v: &Self,
        _tx: &mut Tx<'_>,
        _input: &Self::In<'_>,
        _t: Token,
    ) -> Result<bool, HeapError> {
        Ok(false)
    }
}

impl<T: Persistent + Copy> PValue for T {
    type In<'a> = T;
    #[inline]
    fn create(_: &mut Tx<'_>, input: T, _: Token) -> Result<T, HeapError> {
        Ok(input)
    }
    #[inline]
    fn destroy(_: &T, _: &mut Tx<'_>, _: Token) -> Result<(), HeapError> {
        Ok(())
    }
}

/// A key of a persistent map: compared and hashed through its borrowed form `Q`.
pub trait PKey: PValue {
    /// The borrowed form used for lookups (`[u8]` for [`PBytes`](crate::PBytes), the type itself for integers).
    type Q: ?Sized + Ord + Hash;
    /// The stored key's borrowed form.
    fn key(&self) -> &Self::Q;
    /// The borrowed form of an input.
    fn in_key<'a>(input: &'a Self::In<'_>) -> &'a Self::Q;
    #[doc(hidden)]
    fn dup(&self, tx: &mut Tx<'_>, t: Token) -> Result<Self, HeapError>;
}

macro_rules! int_keys {
    ($($t:ty),*) => { $(
        impl PKey for $t {
            type Q = $t;
            #[inline]
            fn key(&self) -> &$t { self }
            #[inline]
            fn in_key(input: &$t) -> &$t { input }
            #[inline]
            fn dup(&self, _: &mut Tx<'_>, _: Token) -> Result<$t, HeapError> { Ok(*self) }
        }
    )* };
}
int_keys!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, char, bool);

pub use crate::hash::{StableHasher, stable_hash};

/// Logs `n` elements at `p`.
///
/// # Safety
/// `p..p+n` lies in memory that is readable (checked against the heap by `log`).
#[inline]
pub(crate) unsafe fn log_elems<T>(tx: &Tx<'_>, p: *const T, n: usize) -> Result<(), HeapError> {
    if n == 0 {
        return Ok(());
    }
    // SAFETY: forwarded.
    unsafe { tx.core.log(p.cast(), n * std::mem::size_of::<T>()) }
}

/// Checks that a collection header lies inside `tx`'s heap before a structural change.
#[inline]
pub(crate) fn in_heap<T>(tx: &Tx<'_>, this: &T) -> Result<(), HeapError> {
    tx.core
        .check(this as *const T as usize, std::mem::size_of::<T>())
}
