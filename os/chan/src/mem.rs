//! A MAP_SHARED mapping of a memfd, and bounds-checked access to it.
//!
//! # Why atomics through references into shared memory are sound
//!
//! Every control word of a channel or doorbell is a naturally aligned `u32`/`u64` inside a
//! mapping this process keeps alive for as long as any reference derived from it exists (the
//! references borrow the [`Mapping`]). `AtomicU32`/`AtomicU64` have the size and alignment of
//! `u32`/`u64` and no other invariant: every bit pattern is valid. Other processes that follow
//! the protocol access these words only with atomic instructions; a hostile process may write
//! them with plain stores, which on the hardware are single-copy atomic for aligned words, so
//! what we read is always *some* value that process wrote — an allegation we validate, never a
//! torn or undefined one. Rust's memory model covers only this process; we treat the other
//! side like a device behind MMIO whose writes show up as atomic modifications.
//!
//! # Why the byte areas are never referenced
//!
//! Request and reply bytes are plain memory another process may rewrite at any time. We never
//! create `&[u8]`/`&mut [u8]` into them (that would assert immutability/uniqueness the peer can
//! break); they are copied in and out with `ptr::copy_nonoverlapping` on raw pointers and the
//! copy is then validated. A concurrent hostile write can only make the copy hold arbitrary
//! bytes, which every `u8` pattern admits.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, AtomicU64};

use txipc_sys::shm::{SharedMap, ShmError};

use crate::ChanError;

/// An owned `MAP_SHARED | PROT_READ | PROT_WRITE` mapping ([`txipc_sys::shm::SharedMap`], the
/// one shared-memory type of txipc) with the accessors the channel protocol uses; unmapped on
/// drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: SharedMap,
}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared and read-write. `txipc_sys::shm` checks
    /// that the file is at least `len` bytes long and sealed against shrinking, so no access
    /// can fault with SIGBUS.
    pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> Result<Self, ChanError> {
        assert!(len > 0);
        let map = SharedMap::map(fd, len).map_err(|e| shm_error(e, "channel", len as u64))?;
        Ok(Self { map })
    }

    /// An anonymous `MAP_SHARED` mapping of `len` zeroed bytes: shared with children forked
    /// after it is created (used by the raw baselines).
    pub(crate) fn anonymous_shared(len: usize) -> Result<Self, ChanError> {
        assert!(len > 0);
        let map = SharedMap::anonymous(len).map_err(|e| shm_error(e, "baseline", len as u64))?;
        Ok(Self { map })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The `AtomicU32` at byte offset `off`.
    ///
    /// Panics if `off` is misaligned or out of bounds (offsets come from validated layouts,
    /// so a panic here is a bug in this crate, never peer input).
    #[inline]
    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off % 4 == 0 && off + 4 <= self.len(),
            "u32_at({off}) out of bounds"
        );
        // SAFETY: in bounds and 4-aligned (checked above; the base is page aligned); the memory
        // lives as long as `self`; AtomicU32 admits every bit pattern and is accessed only
        // atomically (see the module docs for the cross-process argument).
        unsafe { &*self.map.ptr().add(off).cast::<AtomicU32>() }
    }

    /// The `AtomicU64` at byte offset `off`. Panics like [`Self::u32_at`].
    #[inline]
    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.len(),
            "u64_at({off}) out of bounds"
        );
        // SAFETY: as for `u32_at`, with 8-byte alignment.
        unsafe { &*self.map.ptr().add(off).cast::<AtomicU64>() }
    }

    /// Replaces the contents of `dst` with a copy of `len` bytes at `off`, reusing `dst`'s
    /// capacity. Panics if the range is out of bounds.
    #[inline]
    pub(crate) fn copy_out(&self, off: usize, len: usize, dst: &mut Vec<u8>) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len()),
            "copy_out out of bounds"
        );
        dst.clear();
        dst.reserve(len);
        // SAFETY: source: `len` bytes inside the mapping (checked above), read through a raw
        // pointer, never a reference (module docs). Destination: `dst` has capacity >= len
        // after `reserve`, and a fresh Vec allocation cannot overlap the mapping. All `len`
        // bytes are initialised by the copy before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.ptr().add(off), dst.as_mut_ptr(), len);
            dst.set_len(len);
        }
    }

    /// Copies `src` to byte offset `off`. Panics if the range is out of bounds.
    #[inline]
    pub(crate) fn copy_in(&self, off: usize, src: &[u8]) {
        assert!(
            off.checked_add(src.len())
                .is_some_and(|end| end <= self.len()),
            "copy_in out of bounds"
        );
        // SAFETY: destination in bounds (checked), written through a raw pointer; `src` is a
        // Rust slice and cannot alias the mapping's byte areas because we never hand out
        // references to them.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.map.ptr().add(off), src.len());
        }
    }
}

/// The channel error for a memfd `txipc_sys::shm` refuses to map.
fn shm_error(e: ShmError, what: &'static str, needed: u64) -> ChanError {
    match e {
        ShmError::NotSealed => ChanError::NotSealed { what },
        ShmError::TooSmall { actual, .. } => ChanError::TooSmall {
            what,
            actual,
            needed,
        },
        ShmError::Sys { source, .. } => ChanError::Io(source),
        ShmError::AddressInUse { .. } | ShmError::Invalid(_) => {
            ChanError::Io(rustix::io::Errno::INVAL)
        }
    }
}

/// Checks that `fd` is at least `needed` bytes and sealed against shrinking.
pub(crate) fn check_fd(
    fd: BorrowedFd<'_>,
    what: &'static str,
    needed: u64,
) -> Result<u64, ChanError> {
    txipc_sys::shm::check_sealed(fd, needed).map_err(|e| shm_error(e, what, needed))
}

/// Creates a sealed memfd of `size` bytes (`txipc_sys::shm`) and lets `init` format it.
pub(crate) fn create_sealed(
    name: &str,
    size: usize,
    init: impl FnOnce(&Mapping),
) -> Result<std::os::fd::OwnedFd, ChanError> {
    use std::os::fd::AsFd;
    let fd = txipc_sys::shm::create_sealed(name, size as u64)
        .map_err(|e| shm_error(e, "channel", size as u64))?;
    init(&Mapping::map_shared(fd.as_fd(), size)?);
    Ok(fd)
}
