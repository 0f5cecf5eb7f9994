//! Memfds and their mappings: the only place that calls `mmap`/`munmap`.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

use crate::HeapError;

/// Creates a memfd of `size` bytes (sparse: pages cost nothing until touched).
pub(crate) fn create_memfd(name: &str, size: usize) -> Result<OwnedFd, HeapError> {
    // Sealed against shrinking and growing: a server that could shrink its heap or log would
    // make the kernel's recovery die of SIGBUS.
    txipc_sys::shm::create_sealed(name, size as u64).map_err(|source| HeapError::Sys {
        op: "memfd_create",
        source,
    })
}

/// Size in bytes of the file behind `fd`.
pub(crate) fn fd_size(fd: impl AsFd) -> Result<usize, HeapError> {
    let st = rustix::fs::fstat(fd).map_err(|e| HeapError::sys("fstat", e))?;
    usize::try_from(st.st_size).map_err(|_| HeapError::Invalid("memfd size"))
}

/// A shared read-write mapping of a whole memfd; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `fd` at exactly `base` (`MAP_FIXED_NOREPLACE`): fails with
    /// [`HeapError::AddressInUse`] if any page of the range is already mapped.
    pub(crate) fn fixed(fd: impl AsFd, len: usize, base: usize) -> Result<Mapping, HeapError> {
        if base == 0 || base % rustix::param::page_size() != 0 {
            return Err(HeapError::Invalid(
                "heap base must be a non-zero page-aligned address",
            ));
        }
        let end = base
            .checked_add(len)
            .ok_or(HeapError::Invalid("heap base + size overflows"))?;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping (the kernel fails with
        // EEXIST instead), so no memory that Rust code may reference is touched; we only create a
        // new shared mapping of a file we were handed.
        let r = unsafe {
            rustix::mm::mmap(
                base as *mut _,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
                fd,
                0,
            )
        };
        match r {
            Ok(p) if p as usize == base => Ok(Mapping {
                // SAFETY: base is non-zero (checked above).
                ptr: unsafe { NonNull::new_unchecked(p.cast()) },
                len,
            }),
            Ok(p) => {
                // Kernels before 4.17 ignore the flag and map elsewhere: undo and report.
                // SAFETY: `p..p+len` is the mapping we just created and nothing references it.
                let _ = unsafe { rustix::mm::munmap(p, len) };
                Err(HeapError::AddressInUse { base, end })
            }
            Err(rustix::io::Errno::EXIST) => Err(HeapError::AddressInUse { base, end }),
            Err(e) => Err(HeapError::sys("mmap (fixed)", e)),
        }
    }

    /// Maps `fd` wherever the kernel likes (the kernel process's view of a heap or log).
    pub(crate) fn anywhere(fd: impl AsFd, len: usize) -> Result<Mapping, HeapError> {
        if len == 0 {
            return Err(HeapError::Invalid("cannot map an empty memfd"));
        }
        // SAFETY: a new mapping at an address of the kernel's choosing aliases no Rust memory.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| HeapError::sys("mmap", e))?;
        Ok(Mapping {
            // SAFETY: mmap never returns null on success for a non-fixed request.
            ptr: unsafe { NonNull::new_unchecked(p.cast()) },
            len,
        })
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we created this mapping and own it; every reference into it is tied to the
        // lifetime of the object owning the Mapping, which is being dropped.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
