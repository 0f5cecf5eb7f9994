//! Write tracking with userfaultfd write-protect in asynchronous mode (`UFFD_FEATURE_WP_ASYNC`)
//! and `PAGEMAP_SCAN`.
//!
//! The kernel resolves a write to a write-protected page by itself: it clears the page's
//! uffd-wp bit and lets the write proceed, with no signal, no message and no thread hand-off.
//! [`WpAsync::scan`] then asks `PAGEMAP_SCAN` (`PM_SCAN_WP_MATCHING`) for every page written
//! since the last scan and write-protects them again in the same call. Nobody is told *before*
//! a write, so this tracker cannot give pre-images: the caller keeps them elsewhere (the heap
//! keeps the committed state in its memfd and runs transactions on a private copy-on-write
//! mapping of it; see `txipc-heap`).
//!
//! Needs Linux ≥ 6.7 (`UFFD_FEATURE_WP_ASYNC`, `PAGEMAP_SCAN`) and the right to create a
//! userfaultfd (root, `CAP_SYS_PTRACE`, or `vm.unprivileged_userfaultfd = 1`, or
//! `UFFD_USER_MODE_ONLY`, which is tried second). [`WpAsync::new`] reports
//! [`TrackError::Uffd`] when any of it is missing, so the caller can fall back to the SIGSEGV
//! tracker.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::mm::UserfaultfdFlags;

use crate::TrackError;

// linux/userfaultfd.h and linux/fs.h (x86_64 ioctl numbers).
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = 0xC018_AA3F;
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const FEATURES: u64 =
    UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = 0xC060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// Regions returned by one `PAGEMAP_SCAN` call; more are fetched by further calls.
const REGIONS_PER_SCAN: usize = 256;

/// `ioctl(fd, req, arg)`.
///
/// # Safety
/// `arg` is the structure `req` expects, and any memory it points at is valid for the ioctl.
unsafe fn ioctl<T>(fd: &impl AsRawFd, req: u64, arg: &mut T) -> std::io::Result<i32> {
    // SAFETY: the caller's contract.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn uffd_err(what: &'static str) -> impl FnOnce(std::io::Error) -> TrackError {
    move |source| TrackError::Uffd { what, source }
}

/// Asynchronous write-protect tracking of one region (see the module docs).
#[derive(Debug)]
pub struct WpAsync {
    uffd: OwnedFd,
    pagemap: File,
    base: usize,
    len: usize,
    page_shift: u32,
    regions: Vec<PageRegion>,
    scans: u64,
    pages_scanned: u64,
}

impl WpAsync {
    /// Registers `base..base + len` for asynchronous write-protection and write-protects all
    /// of it: the first [`scan`](Self::scan) reports the pages written from now on.
    ///
    /// # Errors
    /// [`TrackError::Misaligned`]; [`TrackError::Uffd`] if the kernel lacks the features or
    /// this process may not create a userfaultfd (the caller may fall back to
    /// [`crate::PageTracker`]).
    ///
    /// # Safety
    /// `base..base + len` is a mapping of this process (anonymous, shmem or a private mapping
    /// of a memfd) that stays mapped for the tracker's life; no one else registers it with a
    /// userfaultfd.
    pub unsafe fn new(base: *mut u8, len: usize) -> Result<WpAsync, TrackError> {
        let page_size = rustix::param::page_size();
        let base_u = base as usize;
        if len == 0 || base_u % page_size != 0 || len % page_size != 0 {
            return Err(TrackError::Misaligned {
                base: base_u,
                len,
                page_size,
            });
        }
        // SAFETY: creating a userfaultfd has no memory-safety precondition.
        let uffd = match unsafe { rustix::mm::userfaultfd(UserfaultfdFlags::CLOEXEC) } {
            Ok(fd) => fd,
            // Unprivileged: only user-mode faults may be handled, which is all async WP needs
            // (the kernel resolves its own writes into a protected page without us).
            Err(_) => {
                // SAFETY: as above (`UFFD_USER_MODE_ONLY` = 1, from linux/userfaultfd.h).
                unsafe {
                    rustix::mm::userfaultfd(
                        UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::from_bits_retain(1),
                    )
                }
                .map_err(|e| TrackError::Uffd {
                    what: "userfaultfd",
                    source: e.into(),
                })?
            }
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: FEATURES,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a uffdio_api, which `api` is.
        unsafe { ioctl(&uffd, UFFDIO_API, &mut api) }.map_err(uffd_err("UFFDIO_API"))?;
        if api.features & FEATURES != FEATURES {
            return Err(TrackError::Uffd {
                what: "UFFDIO_API (asynchronous write-protect needs Linux >= 6.7)",
                source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
        let range = UffdioRange {
            start: base_u as u64,
            len: len as u64,
        };
        let mut reg = UffdioRegister {
            range,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a uffdio_register; the range is ours (contract).
        unsafe { ioctl(&uffd, UFFDIO_REGISTER, &mut reg) }.map_err(uffd_err("UFFDIO_REGISTER"))?;
        let pagemap =
            File::open("/proc/self/pagemap").map_err(uffd_err("open /proc/self/pagemap"))?;
        let mut t = WpAsync {
            uffd,
            pagemap,
            base: base_u,
            len,
            page_shift: page_size.trailing_zeros(),
            regions: vec![PageRegion::default(); REGIONS_PER_SCAN],
            scans: 0,
            pages_scanned: 0,
        };
        t.protect_all()?;
        // A kernel that cannot scan (no PAGEMAP_SCAN) fails here, not in the first commit.
        let mut probe = Vec::new();
        t.scan(&mut probe)?;
        Ok(t)
    }

    /// Write-protects the whole region again (every page's next write is reported).
    ///
    /// # Errors
    /// [`TrackError::Uffd`].
    pub fn protect_all(&mut self) -> Result<(), TrackError> {
        let mut w = UffdioWriteprotect {
            range: UffdioRange {
                start: self.base as u64,
                len: self.len as u64,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: UFFDIO_WRITEPROTECT takes a uffdio_writeprotect over our registered range.
        unsafe { ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut w) }
            .map_err(uffd_err("UFFDIO_WRITEPROTECT"))?;
        Ok(())
    }

    /// Appends to `out` the index of every page written since the previous scan (or since
    /// [`new`](Self::new)), in address order, and write-protects those pages again in the same
    /// system call (a write racing with the scan is either reported now or by the next scan).
    ///
    /// # Errors
    /// [`TrackError::Uffd`] (`PAGEMAP_SCAN` failed).
    pub fn scan(&mut self, out: &mut Vec<usize>) -> Result<(), TrackError> {
        let end = (self.base + self.len) as u64;
        let mut start = self.base as u64;
        while start < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start,
                end,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: PAGE_IS_WRITTEN,
                ..PmScanArg::default()
            };
            // SAFETY: PAGEMAP_SCAN takes a pm_scan_arg whose `vec` points at `vec_len`
            // page_region structures, which `self.regions` holds; the range is ours.
            let n = unsafe { ioctl(&self.pagemap, PAGEMAP_SCAN, &mut arg) }
                .map_err(uffd_err("PAGEMAP_SCAN"))? as usize;
            for r in &self.regions[..n.min(self.regions.len())] {
                let first = (r.start as usize - self.base) >> self.page_shift;
                let last = (r.end as usize - self.base) >> self.page_shift;
                out.extend(first..last);
            }
            if arg.walk_end <= start {
                break;
            }
            start = arg.walk_end;
        }
        self.scans += 1;
        self.pages_scanned += (self.len >> self.page_shift) as u64;
        Ok(())
    }

    /// Region start.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Region length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false` (the region is never empty).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Scans made since [`new`](Self::new).
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// Pages whose page-table entries the scans since [`new`](Self::new) covered (the walk's
    /// cost is proportional to it).
    pub fn pages_scanned(&self) -> u64 {
        self.pages_scanned
    }
}
