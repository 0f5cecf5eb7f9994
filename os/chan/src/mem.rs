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
use crate::layout::LINE;

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

impl Mapping {
    /// Asks the CPU to fetch every cache line of `[off, off + len)` into this core's cache for
    /// reading, all at once (software prefetch: the misses overlap instead of queueing behind
    /// a copy that touches one line after the other). A hint: no effect on what any load
    /// returns. Panics if the range is out of bounds (offsets come from validated layouts).
    #[inline]
    pub(crate) fn prefetch_read(&self, off: usize, len: usize) {
        self.check_range(off, len, "prefetch_read");
        let mut p = off & !(LINE - 1);
        while p < off + len {
            // SAFETY: `p` is inside the mapping (checked range, rounded down to its line, which
            // the page-aligned mapping contains). A prefetch reads nothing into the program:
            // it cannot fault, and no reference is made.
            unsafe { arch::prefetch_read(self.map.ptr().add(p)) };
            p += LINE;
        }
    }

    /// Asks the CPU to take every cache line of `[off, off + len)` in exclusive state, ready
    /// for this core's stores (`prefetchw` on x86-64 when the CPU has it, nothing elsewhere):
    /// the ownership requests travel together, and the stores that follow do not each wait
    /// for one. A hint, as [`Self::prefetch_read`].
    #[inline]
    pub(crate) fn prefetch_write(&self, off: usize, len: usize) {
        self.check_range(off, len, "prefetch_write");
        if !arch::has_prefetch_write() {
            return;
        }
        let mut p = off & !(LINE - 1);
        while p < off + len {
            // SAFETY: as in `prefetch_read`; `prefetchw` writes nothing either.
            unsafe { arch::prefetch_write(self.map.ptr().add(p)) };
            p += LINE;
        }
    }

    #[inline]
    fn check_range(&self, off: usize, len: usize, what: &str) {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len()),
            "{what} out of bounds"
        );
    }
}

/// The CPU-specific hints, with a portable fallback (no hint) for other architectures.
#[cfg(target_arch = "x86_64")]
mod arch {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

    /// # Safety
    /// `p` must point into a live mapping (a prefetch cannot fault, but keep it honest).
    #[inline]
    pub(super) unsafe fn prefetch_read(p: *const u8) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of the x86-64 baseline; `prefetcht0` only hints the cache.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
    }

    /// # Safety
    /// As `prefetch_read`; call only when [`has_prefetch_write`] said yes.
    #[inline]
    pub(super) unsafe fn prefetch_write(p: *const u8) {
        // SAFETY: `prefetchw` (checked present by the caller through CPUID) only hints the
        // cache: it reads no register but its address, writes none, touches no flag or stack.
        // Written as asm because `_MM_HINT_ET0` is lowered to `prefetcht0` unless the crate
        // is compiled for a CPU with PRFCHW (a target feature stable Rust cannot enable).
        unsafe {
            std::arch::asm!(
                "prefetchw [{p}]",
                p = in(reg) p,
                options(nostack, readonly, preserves_flags)
            );
        }
    }

    /// Whether the CPU has `prefetchw` (CPUID 0x8000_0001, ECX bit 8: PRFCHW /
    /// 3DNowPrefetch), asked once per process.
    #[inline]
    pub(super) fn has_prefetch_write() -> bool {
        // 0: not asked yet, 1: no, 2: yes. Racing first calls each store the same answer.
        static KNOWN: AtomicU8 = AtomicU8::new(0);
        match KNOWN.load(Relaxed) {
            0 => {
                // CPUID exists on every x86-64 CPU (a safe intrinsic); leaf 0x8000_0000 says
                // whether the extended leaf 0x8000_0001 exists before it is read.
                use std::arch::x86_64::__cpuid;
                let yes = __cpuid(0x8000_0000).eax >= 0x8000_0001
                    && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
                KNOWN.store(if yes { 2 } else { 1 }, Relaxed);
                yes
            }
            k => k == 2,
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod arch {
    /// # Safety
    /// None needed: no hint on this architecture.
    #[inline]
    pub(super) unsafe fn prefetch_read(_p: *const u8) {}
    /// # Safety
    /// None needed: no hint on this architecture.
    #[inline]
    pub(super) unsafe fn prefetch_write(_p: *const u8) {}
    #[inline]
    pub(super) fn has_prefetch_write() -> bool {
        false
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `prefetchw` probe agrees with what Linux read from CPUID (`3dnowprefetch` in
    /// `/proc/cpuinfo`): a wrong "yes" would execute an instruction the CPU may not have, a
    /// wrong "no" would leave the reply lines unclaimed by the hint.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_prefetchw_probe_agrees_with_the_kernels_cpu_flags() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else {
            return;
        };
        let listed = flags.split_whitespace().any(|f| f == "3dnowprefetch");
        assert_eq!(arch::has_prefetch_write(), listed, "{flags}");
    }

    /// The hints touch nothing: the bytes read back are the bytes written, over a range that
    /// starts and ends inside lines, and a range at the very end of the mapping is accepted.
    #[test]
    fn prefetching_a_range_changes_none_of_its_bytes() {
        let m = Mapping::anonymous_shared(8192).unwrap();
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        m.copy_in(37, &bytes);
        m.prefetch_write(37, 1000);
        m.prefetch_read(37, 1000);
        m.prefetch_read(8192 - 64, 64);
        m.prefetch_write(8192 - 1, 1);
        let mut out = Vec::new();
        m.copy_out(37, 1000, &mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    #[should_panic(expected = "prefetch_read out of bounds")]
    fn a_prefetch_past_the_mapping_is_refused() {
        let m = Mapping::anonymous_shared(4096).unwrap();
        m.prefetch_read(4000, 97);
    }
}
