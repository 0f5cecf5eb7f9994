//! Memfds and their mappings, through `txipc_sys::shm` (the one shared-memory type: created,
//! sized, sealed, mapped there; this crate calls no `mmap` of its own).

use std::os::fd::{AsFd, OwnedFd};

use txipc_sys::shm::{SharedMap, ShmError};

use crate::HeapError;

fn heap_error(op: &'static str, e: ShmError) -> HeapError {
    match e {
        ShmError::AddressInUse { base, end } => HeapError::AddressInUse { base, end },
        ShmError::Invalid(what) => HeapError::Invalid(what),
        ShmError::Sys { op, source } => HeapError::sys(op, source),
        other @ (ShmError::NotSealed | ShmError::TooSmall { .. }) => HeapError::Sys {
            op,
            source: other.into(),
        },
    }
}

/// Creates a memfd of `size` bytes (sparse: pages cost nothing until touched).
pub(crate) fn create_memfd(name: &str, size: usize) -> Result<OwnedFd, HeapError> {
    // Sealed against shrinking and growing: a server that could shrink its heap or log would
    // make the kernel's recovery die of SIGBUS.
    txipc_sys::shm::create_sealed(name, size as u64).map_err(|e| heap_error("memfd_create", e))
}

/// Size in bytes of the file behind `fd`.
pub(crate) fn fd_size(fd: impl AsFd) -> Result<usize, HeapError> {
    let st = rustix::fs::fstat(fd).map_err(|e| HeapError::sys("fstat", e))?;
    usize::try_from(st.st_size).map_err(|_| HeapError::Invalid("memfd size"))
}

/// A shared read-write mapping of a whole sealed memfd; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    map: SharedMap,
}

impl Mapping {
    /// Maps `fd` at exactly `base` (`MAP_FIXED_NOREPLACE`): fails with
    /// [`HeapError::AddressInUse`] if any page of the range is already mapped.
    pub(crate) fn fixed(fd: impl AsFd, len: usize, base: usize) -> Result<Mapping, HeapError> {
        let map = SharedMap::map_fixed(fd, len, base).map_err(|e| heap_error("mmap (fixed)", e))?;
        Ok(Mapping { map })
    }

    /// Replaces this mapping, in place, by a private copy-on-write mapping of the same `fd`
    /// (`private`: the working copy of asynchronous page tracking; reads see the file, writes
    /// stay in this process) or by a shared one again.
    ///
    /// # Safety
    /// `fd` is the file this mapping maps, no reference into the mapping is live, and (when
    /// going back to shared) nothing was written to the private copy that must be kept.
    pub(crate) unsafe fn remap(&mut self, fd: impl AsFd, private: bool) -> Result<(), HeapError> {
        // SAFETY: the caller's contract is `SharedMap::remap`'s.
        unsafe { self.map.remap(fd, private) }.map_err(|e| heap_error("mmap (remap in place)", e))
    }

    /// Maps `fd` wherever the kernel likes (the kernel process's view of a heap or log).
    pub(crate) fn anywhere(fd: impl AsFd, len: usize) -> Result<Mapping, HeapError> {
        if len == 0 {
            return Err(HeapError::Invalid("cannot map an empty memfd"));
        }
        let map = SharedMap::map(fd, len).map_err(|e| heap_error("mmap", e))?;
        Ok(Mapping { map })
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.map.ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
