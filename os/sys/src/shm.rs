//! Sealed shared memory: the one type through which txipc creates, sizes, seals and maps a
//! memfd that another process maps too.
//!
//! A memfd shared with a less trusted process is sealed against shrinking and growing (and
//! against removing the seals): a peer that could shrink it would make the next access of
//! every other mapper die of SIGBUS — the kernel's included. Writes stay allowed (that is what
//! the memory is for); zeroing punches holes, which keeps the size.
//!
//! [`create_sealed`] makes such a memfd, [`check_sealed`] checks one received from elsewhere,
//! and [`SharedMap`] maps it (at an address of the kernel's choosing, or at a fixed address
//! for the heap) and unmaps it on drop. Every shared mapping in txipc is a [`SharedMap`]: the
//! channels and doorbells (`txipc-chan`), the heap and undo log (`txipc-heap`) and the status
//! page ([`crate::status`]); this module holds the only `mmap`/`munmap` calls of those users.
//! What is *inside* a mapping (atomic words, byte areas, the heap's objects) is each user's
//! business, with its own safety argument.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// The seals every shared memfd carries.
pub const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Why a memfd cannot be mapped safely.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The file carries no seal against shrinking (or is not a memfd at all): its owner could
    /// shrink it under every mapper.
    #[error(
        "the memfd is not sealed against shrinking: another process could make its mappers fault"
    )]
    NotSealed,
    /// The file is smaller than the mapping needs.
    #[error("the memfd has {actual} bytes, at least {needed} are needed")]
    TooSmall {
        /// Its size.
        actual: u64,
        /// The size needed.
        needed: u64,
    },
    /// A fixed mapping's range is (partly) in use in this process.
    #[error("the address range {base:#x}..{end:#x} is already mapped in this process")]
    AddressInUse {
        /// Start of the range.
        base: usize,
        /// End of the range.
        end: usize,
    },
    /// A bad argument (a bug of the caller, named).
    #[error("{0}")]
    Invalid(&'static str),
    /// The system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// The call.
        op: &'static str,
        /// Its error.
        source: rustix::io::Errno,
    },
}

impl From<ShmError> for io::Error {
    fn from(e: ShmError) -> io::Error {
        match e {
            ShmError::Sys { source, .. } => source.into(),
            other => io::Error::other(other),
        }
    }
}

fn sys(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> ShmError {
    move |source| ShmError::Sys { op, source }
}

/// Creates a zero-filled memfd of `size` bytes, sealed with [`SEALS`]. Writes stay allowed,
/// so the creator formats it after sealing, through a [`SharedMap`].
pub fn create_sealed(name: &str, size: u64) -> Result<OwnedFd, ShmError> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(sys("memfd_create"))?;
    rustix::fs::ftruncate(&fd, size).map_err(sys("ftruncate"))?;
    rustix::fs::fcntl_add_seals(&fd, SEALS).map_err(sys("fcntl(F_ADD_SEALS)"))?;
    Ok(fd)
}

/// Checks that `fd` is sealed against shrinking and is at least `min` bytes; returns its size.
/// Map nothing shared that fails this: its owner could shrink it under you.
pub fn check_sealed(fd: impl AsFd, min: u64) -> Result<u64, ShmError> {
    let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| ShmError::NotSealed)?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(ShmError::NotSealed);
    }
    let actual = rustix::fs::fstat(&fd).map_err(sys("fstat"))?.st_size.max(0) as u64;
    if actual < min {
        return Err(ShmError::TooSmall {
            actual,
            needed: min,
        });
    }
    Ok(actual)
}

/// Zeroes the first `len` bytes of a sealed memfd and frees their memory (holes read as
/// zeros); the size stays.
pub fn zero(fd: impl AsFd, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(
        &fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        len,
    )?;
    Ok(())
}

/// An owned `MAP_SHARED`, read-write mapping of (the start of) a sealed memfd; unmapped on
/// drop. It hands out only its address and length: the user decides how the bytes are
/// accessed and argues why that is sound.
#[derive(Debug)]
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a SharedMap is an address range with no thread affinity; it creates no references
// into the memory itself, so sending or sharing it says nothing about how the bytes are used.
unsafe impl Send for SharedMap {}
// SAFETY: as above: `&SharedMap` only reads `ptr` and `len`.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps the first `len` bytes of `fd`, wherever the kernel likes, after checking that
    /// `fd` is sealed against shrinking and at least `len` bytes ([`check_sealed`]).
    pub fn map(fd: impl AsFd, len: usize) -> Result<SharedMap, ShmError> {
        if len == 0 {
            return Err(ShmError::Invalid("cannot map zero bytes"));
        }
        check_sealed(&fd, len as u64)?;
        // SAFETY: a null hint lets the kernel choose a fresh range, so no existing memory (and
        // no Rust object) is replaced; the range is owned by the new SharedMap only. The file
        // is sealed against shrinking and at least `len` bytes (checked), so no access inside
        // the range can fault with SIGBUS.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(sys("mmap"))?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(ShmError::Sys {
            op: "mmap",
            source: rustix::io::Errno::NOMEM,
        })?;
        Ok(SharedMap { ptr, len })
    }

    /// Maps the first `len` bytes of `fd` at exactly `base` (`MAP_FIXED_NOREPLACE`), after
    /// the same check as [`SharedMap::map`]; fails with [`ShmError::AddressInUse`] if any page
    /// of the range is already mapped.
    pub fn map_fixed(fd: impl AsFd, len: usize, base: usize) -> Result<SharedMap, ShmError> {
        if len == 0 {
            return Err(ShmError::Invalid("cannot map zero bytes"));
        }
        if base == 0 || base % rustix::param::page_size() != 0 {
            return Err(ShmError::Invalid(
                "a fixed mapping needs a non-zero page-aligned address",
            ));
        }
        let end = base
            .checked_add(len)
            .ok_or(ShmError::Invalid("base + size overflows"))?;
        check_sealed(&fd, len as u64)?;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping (the kernel fails with
        // EEXIST instead), so no memory that Rust code may reference is touched; the file is
        // sealed and large enough (checked).
        let r = unsafe {
            rustix::mm::mmap(
                base as *mut _,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
                &fd,
                0,
            )
        };
        match r {
            Ok(p) if p as usize == base => Ok(SharedMap {
                // SAFETY: base is non-zero (checked above).
                ptr: unsafe { NonNull::new_unchecked(p.cast()) },
                len,
            }),
            Ok(p) => {
                // Kernels before 4.17 ignore the flag and map elsewhere: undo and report.
                // SAFETY: `p..p+len` is the mapping just created and nothing references it.
                let _ = unsafe { rustix::mm::munmap(p, len) };
                Err(ShmError::AddressInUse { base, end })
            }
            Err(rustix::io::Errno::EXIST) => Err(ShmError::AddressInUse { base, end }),
            Err(e) => Err(ShmError::Sys {
                op: "mmap (fixed)",
                source: e,
            }),
        }
    }

    /// An anonymous `MAP_SHARED` mapping of `len` zeroed bytes, shared with children forked
    /// after it is created (the raw baselines of the benchmarks; no file, so nothing to seal).
    pub fn anonymous(len: usize) -> Result<SharedMap, ShmError> {
        if len == 0 {
            return Err(ShmError::Invalid("cannot map zero bytes"));
        }
        // SAFETY: null hint, fresh range owned by the new SharedMap only.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
            )
        }
        .map_err(sys("mmap (anonymous)"))?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(ShmError::Sys {
            op: "mmap",
            source: rustix::io::Errno::NOMEM,
        })?;
        Ok(SharedMap { ptr, len })
    }

    /// Replaces this mapping, in place, by a *private* copy-on-write mapping of the same `fd`
    /// (`private`; reads see the file, writes stay in this process: the working copy of the
    /// heap's asynchronous page tracking), or by a shared one again. The file is checked as in
    /// [`SharedMap::map`]; on an error the range may be unmapped (dropping is still sound).
    ///
    /// # Safety
    /// `fd` is the file this mapping maps, no reference into the mapping is live across the
    /// call, and (when going back to shared) nothing written to the private copy must be kept.
    pub unsafe fn remap(&mut self, fd: impl AsFd, private: bool) -> Result<(), ShmError> {
        check_sealed(&fd, self.len as u64)?;
        let kind = if private {
            MapFlags::PRIVATE
        } else {
            MapFlags::SHARED
        };
        // SAFETY: MAP_FIXED over exactly our own range (which no other object owns); the
        // caller guarantees no reference into it is live, and the same file at the same offset
        // reads as before. The file is sealed and large enough (checked).
        let p = unsafe {
            rustix::mm::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                ProtFlags::READ | ProtFlags::WRITE,
                kind | MapFlags::FIXED,
                &fd,
                0,
            )
        }
        .map_err(sys("mmap (remap in place)"))?;
        debug_assert_eq!(p.cast::<u8>(), self.ptr.as_ptr());
        Ok(())
    }

    /// The first byte of the mapping (page aligned).
    #[inline]
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (a mapping has at least one byte); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is exactly the range mmap returned; every user that derives
        // references from `ptr()` ties them to a borrow of the object that owns this SharedMap,
        // which is being dropped.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A [`SharedMap`] whose bytes other processes write too, reached only as aligned atomic words
/// and by raw copies (the companion's message log: `txipc-kernel` and `txipc-runtime` are
/// `forbid(unsafe_code)`). No reference into the bytes is ever handed out, since another
/// process may rewrite them at any time: what a copy returns may then be arbitrary bytes,
/// which every `u8` pattern admits and the caller validates.
#[derive(Debug)]
pub struct SharedBytes {
    map: SharedMap,
}

impl SharedBytes {
    /// Maps the first `len` bytes of the sealed memfd `fd` ([`SharedMap::map`]).
    pub fn map(fd: impl AsFd, len: usize) -> Result<SharedBytes, ShmError> {
        Ok(SharedBytes {
            map: SharedMap::map(fd, len)?,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The `AtomicU64` at byte offset `off`. Panics if misaligned or out of bounds (offsets
    /// come from fixed layouts: a panic is a bug of the caller, never peer input).
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.map.len(),
            "u64_at({off}) out of bounds"
        );
        // SAFETY: in bounds and 8-aligned (the base is page aligned); the memory lives as long
        // as `self` (the reference borrows it); AtomicU64 admits every bit pattern, and other
        // processes write the word with single-copy-atomic aligned stores, so a load sees
        // some value one of them wrote.
        unsafe { &*self.map.ptr().add(off).cast::<AtomicU64>() }
    }

    /// Copies `src` to byte offset `off`. Panics if the range is out of bounds.
    pub fn copy_in(&self, off: usize, src: &[u8]) {
        assert!(
            off.checked_add(src.len())
                .is_some_and(|e| e <= self.map.len()),
            "copy_in out of bounds"
        );
        // SAFETY: destination in bounds (checked), written through a raw pointer; `src` is a
        // Rust slice and cannot alias the mapping, to which no reference is ever handed out.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.map.ptr().add(off), src.len());
        }
    }

    /// Fills in this process's page-table entries for the bytes `[off, off + len)` (rounded out
    /// to whole pages) as a write would, without changing a byte (`MADV_POPULATE_WRITE`): a
    /// later store there takes no page fault. On this VM a first store to a page of a
    /// (fallocated) memfd costs a minor fault of ~1.9 µs; populating costs ~1.05 µs a page, in
    /// one system call, whenever the caller chooses. Panics if out of bounds; an error (a
    /// kernel before 5.14: `EINVAL`) leaves the pages to fault in as they are written.
    pub fn populate_write(&self, off: usize, len: usize) -> io::Result<()> {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.map.len()),
            "populate_write out of bounds"
        );
        if len == 0 {
            return Ok(());
        }
        let page = 4096;
        let start = off / page * page;
        let end = (off + len).next_multiple_of(page).min(self.map.len());
        // SAFETY: `[start, end)` lies inside this mapping (the base is page aligned, the end
        // clamped to its length); MADV_POPULATE_WRITE only faults the pages in (writable, as
        // a write fault would) and changes no byte of them, so no other process or reference
        // can observe anything but residency.
        unsafe {
            rustix::mm::madvise(
                self.map.ptr().add(start).cast(),
                end - start,
                rustix::mm::Advice::LinuxPopulateWrite,
            )?;
        }
        Ok(())
    }

    /// Appends a copy of the `len` bytes at `off` to `dst`. Panics if out of bounds.
    pub fn copy_out(&self, off: usize, len: usize, dst: &mut Vec<u8>) {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.map.len()),
            "copy_out out of bounds"
        );
        dst.reserve(len);
        let at = dst.len();
        // SAFETY: source: `len` bytes inside the mapping (checked), read through a raw
        // pointer. Destination: `dst` has spare capacity >= len after `reserve`, and a Vec
        // allocation cannot overlap the mapping. The `len` bytes are initialised by the copy
        // before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.ptr().add(off), dst.as_mut_ptr().add(at), len);
            dst.set_len(at + len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfds_cannot_change_size() {
        let fd = create_sealed("t", 8192).unwrap();
        assert_eq!(check_sealed(&fd, 4096).unwrap(), 8192);
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        assert!(rustix::fs::ftruncate(&fd, 1 << 20).is_err());
        rustix::io::pwrite(&fd, &[7u8; 16], 100).unwrap();
        zero(&fd, 8192).unwrap();
        let mut b = [1u8; 16];
        rustix::io::pread(&fd, &mut b, 100).unwrap();
        assert_eq!(b, [0u8; 16]);
        assert!(matches!(
            check_sealed(&fd, 1 << 20),
            Err(ShmError::TooSmall { actual: 8192, .. })
        ));
        let plain = rustix::fs::memfd_create("p", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&plain, 4096).unwrap();
        assert!(matches!(
            check_sealed(&plain, 4096),
            Err(ShmError::NotSealed)
        ));
    }

    /// The minor faults this thread has taken so far.
    fn thread_minor_faults() -> u64 {
        let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
        let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, u.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: initialised by the successful call above (and zeroed before it).
        unsafe { u.assume_init() }.ru_minflt as u64
    }

    /// Stores into a populated range take no page fault; into a range not populated, one a
    /// page (the ring's first lap before wave 8).
    #[test]
    fn stores_into_a_populated_range_take_no_page_fault() {
        let len = 4 << 20;
        let fd = create_sealed("populate", len as u64).unwrap();
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64).unwrap();
        let touch = |m: &SharedBytes, from: usize, to: usize| {
            let before = thread_minor_faults();
            for off in (from..to).step_by(4096) {
                m.u64_at(off).store(1, std::sync::atomic::Ordering::Relaxed);
            }
            thread_minor_faults() - before
        };
        let pages = (len / 2 / 4096) as u64;
        let m = SharedBytes::map(&fd, len).unwrap();
        // Not populated: a fault a page.
        assert!(
            touch(&m, 0, len / 2) >= pages,
            "no faults without populating?"
        );
        // Populated (at an unaligned offset and length: whole pages around it).
        m.populate_write(len / 2 + 100, len / 2 - 200).unwrap();
        let faults = touch(&m, len / 2, len);
        assert!(
            faults < pages / 8,
            "{faults} faults in {pages} populated pages"
        );
        assert!(m.u64_at(len / 2).load(std::sync::atomic::Ordering::Relaxed) == 1);
    }

    #[test]
    fn only_sealed_memfds_large_enough_are_mapped() {
        let fd = create_sealed("t", 8192).unwrap();
        let a = SharedMap::map(&fd, 8192).unwrap();
        let b = SharedMap::map(&fd, 4096).unwrap();
        // SAFETY: in bounds of both mappings; this test is the only user of the memory.
        unsafe {
            a.ptr().add(100).write_volatile(42);
            assert_eq!(b.ptr().add(100).read_volatile(), 42);
        }
        assert!(SharedMap::map(&fd, 8193).is_err(), "larger than the file");
        let plain = rustix::fs::memfd_create("p", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&plain, 4096).unwrap();
        assert!(matches!(
            SharedMap::map(&plain, 4096),
            Err(ShmError::NotSealed)
        ));
        let base = b.ptr() as usize;
        assert!(matches!(
            SharedMap::map_fixed(&fd, 4096, base),
            Err(ShmError::AddressInUse { .. })
        ));
    }

    #[test]
    fn shared_bytes_copy_and_see_each_other() {
        let fd = create_sealed("m", 8192).unwrap();
        let a = SharedBytes::map(&fd, 8192).unwrap();
        let b = SharedBytes::map(&fd, 8192).unwrap();
        a.copy_in(4000, b"across a page");
        a.u64_at(16).store(77, std::sync::atomic::Ordering::Release);
        let mut out = b"x".to_vec();
        b.copy_out(4000, 13, &mut out);
        assert_eq!(out, b"xacross a page");
        assert_eq!(b.u64_at(16).load(std::sync::atomic::Ordering::Acquire), 77);
        assert!(SharedBytes::map(&fd, 8193).is_err());
    }
}
