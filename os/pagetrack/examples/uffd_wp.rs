//! Experiment: userfaultfd write-protect as an alternative to SIGSEGV + `mprotect`.
//!
//! `cargo run --release -p txipc-pagetrack --example uffd_wp -- [pages] [runs]`
//!
//! Three measurements on the same memfd `MAP_SHARED` region, per page written once per run:
//!
//! * `sigsegv`: this crate ([`txipc_pagetrack::bench_first_write`]), for reference;
//! * `uffd-sync`: `UFFDIO_REGISTER_MODE_WP`; the faulting thread blocks, a handler thread reads
//!   the fault message, copies the pre-image and clears write-protection with
//!   `UFFDIO_WRITEPROTECT` (which wakes the faulting thread);
//! * `uffd-async`: `UFFD_FEATURE_WP_ASYNC`; the kernel resolves write faults itself with no
//!   notification; at the end of the transaction `PAGEMAP_SCAN` (`PM_SCAN_WP_MATCHING`) returns
//!   the written pages and write-protects them again in the same call, and the written pages are
//!   copied into a shadow copy (the only way to get pre-images: they are gone by the time we
//!   learn of the write).
//!
//! Results and conclusions are in the crate docs (section *Experiment: userfaultfd
//! write-protect*). The ioctl structures are declared here by hand from the kernel UAPI
//! (`linux/userfaultfd.h`, `linux/fs.h`); this is an experiment, not a library path.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags, UserfaultfdFlags};

// --- linux/userfaultfd.h, linux/fs.h (x86_64 ioctl numbers) ---
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = 0xC018_AA3F;
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
const PAGEMAP_SCAN: u64 = 0xC060_6610; // _IOWR('f', 16, struct pm_scan_arg)
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
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `ioctl(fd, req, arg)`, panicking with the request name on failure.
///
/// # Safety
///
/// `arg` is the structure `req` expects.
unsafe fn ioctl<T>(fd: RawFd, req: u64, arg: &mut T, what: &str) -> i32 {
    // SAFETY: caller's contract.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    r
}

struct Region {
    ptr: *mut u8,
    len: usize,
    _fd: OwnedFd,
}

fn region(pages: usize, ps: usize) -> Region {
    let len = pages * ps;
    let fd = rustix::fs::memfd_create("uffd-wp", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len as u64).unwrap();
    // SAFETY: fresh shared mapping of our memfd.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &fd,
            0,
        )
    }
    .unwrap()
    .cast::<u8>();
    for p in 0..pages {
        // SAFETY: inside the mapping; populates it.
        unsafe { ptr.add(p * ps).write_volatile(1) };
    }
    Region { ptr, len, _fd: fd }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our mapping, no longer used.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

fn uffd(features: u64, r: &Region) -> OwnedFd {
    // SAFETY: plain syscall; we are root (or vm.unprivileged_userfaultfd allows it).
    let fd = unsafe { rustix::mm::userfaultfd(UserfaultfdFlags::CLOEXEC) }.expect("userfaultfd");
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a uffdio_api.
    unsafe { ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api, "UFFDIO_API") };
    let mut reg = UffdioRegister {
        range: UffdioRange {
            start: r.ptr as u64,
            len: r.len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes a uffdio_register.
    unsafe { ioctl(fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg, "UFFDIO_REGISTER") };
    fd
}

fn writeprotect(fd: RawFd, start: usize, len: usize, wp: bool) {
    let mut w = UffdioWriteprotect {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: if wp { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: UFFDIO_WRITEPROTECT takes a uffdio_writeprotect.
    unsafe { ioctl(fd, UFFDIO_WRITEPROTECT, &mut w, "UFFDIO_WRITEPROTECT") };
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Sync mode: a handler thread serves WP faults; returns (first write, begin) ns per page.
fn sync_mode(pages: usize, runs: usize, ps: usize) -> (f64, f64) {
    let r = region(pages, ps);
    let fd = uffd(UFFD_FEATURE_WP_HUGETLBFS_SHMEM, &r);
    let raw = fd.as_raw_fd();
    let base = r.ptr as usize;
    let total = pages * (runs + 1);
    let handler = std::thread::spawn(move || {
        let mut pre = vec![0u8; pages * ps];
        let mut msg = [0u8; 32];
        let mut served = 0;
        while served < total {
            let n = rustix::io::read(
                // SAFETY: the fd outlives this thread (joined before drop).
                unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
                &mut msg,
            )
            .expect("read uffd");
            assert_eq!(n, 32);
            assert_eq!(msg[0], UFFD_EVENT_PAGEFAULT);
            let flags = u64::from_ne_bytes(msg[8..16].try_into().unwrap());
            let addr = u64::from_ne_bytes(msg[16..24].try_into().unwrap()) as usize;
            assert!(flags & UFFD_PAGEFAULT_FLAG_WP != 0);
            let page = (addr - base) / ps;
            // SAFETY: the page is inside the region and readable; `pre` has room for it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (base + page * ps) as *const u8,
                    pre.as_mut_ptr().add(page * ps),
                    ps,
                )
            };
            writeprotect(raw, base + page * ps, ps, false); // clears WP and wakes the writer
            served += 1;
        }
    });
    let (mut first, mut begin) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let t0 = Instant::now();
        writeprotect(raw, base, r.len, true);
        let t1 = Instant::now();
        for p in 0..pages {
            // SAFETY: inside the region; the handler thread resolves the WP fault.
            unsafe { r.ptr.add(p * ps).write_volatile(run as u8) };
        }
        let t2 = Instant::now();
        if run > 0 {
            begin.push((t1 - t0).as_nanos() as f64 / pages as f64);
            first.push((t2 - t1).as_nanos() as f64 / pages as f64);
        }
    }
    handler.join().unwrap();
    drop(fd);
    (median(first), median(begin))
}

/// Async mode: returns (first write, scan+reprotect, shadow copy) ns per page.
fn async_mode(pages: usize, runs: usize, ps: usize) -> (f64, f64, f64) {
    let r = region(pages, ps);
    let fd = uffd(
        UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED,
        &r,
    );
    let base = r.ptr as usize;
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut shadow = vec![0u8; r.len];
    // SAFETY: copies the whole region into the shadow (the committed state).
    unsafe { std::ptr::copy_nonoverlapping(r.ptr, shadow.as_mut_ptr(), r.len) };
    writeprotect(fd.as_raw_fd(), base, r.len, true);
    let mut regions = vec![PageRegion::default(); pages];
    let (mut first, mut scan, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        let t1 = Instant::now();
        for p in 0..pages {
            // SAFETY: inside the region; the kernel resolves the WP fault itself.
            unsafe { r.ptr.add(p * ps).write_volatile(run as u8 + 2) };
        }
        let t2 = Instant::now();
        // Commit: find the written pages and write-protect them again, atomically.
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start: base as u64,
            end: (base + r.len) as u64,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..PmScanArg::default()
        };
        // SAFETY: PAGEMAP_SCAN takes a pm_scan_arg whose vec points at vec_len page_regions.
        let n = unsafe { ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg, "PAGEMAP_SCAN") };
        let t3 = Instant::now();
        let mut written = 0;
        for reg in &regions[..n as usize] {
            let off = reg.start as usize - base;
            let len = (reg.end - reg.start) as usize;
            written += len / ps;
            // SAFETY: inside the region and the shadow.
            unsafe {
                std::ptr::copy_nonoverlapping(r.ptr.add(off), shadow.as_mut_ptr().add(off), len)
            };
        }
        let t4 = Instant::now();
        assert_eq!(written, pages, "PAGEMAP_SCAN found every written page");
        if run > 0 {
            let per = |a: Instant, b: Instant| (b - a).as_nanos() as f64 / pages as f64;
            first.push(per(t1, t2));
            scan.push(per(t2, t3));
            copy.push(per(t3, t4));
        }
    }
    drop(fd);
    (median(first), median(scan), median(copy))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pages: usize = args.next().map_or(1024, |a| a.parse().expect("pages"));
    let runs: usize = args.next().map_or(9, |a| a.parse().expect("runs"));
    let ps = rustix::param::page_size();
    let s = txipc_pagetrack::bench_first_write(pages, runs).expect("sigsegv bench");
    println!(
        "sigsegv:    first_write={:.0} ns/page  begin={:.0} ns/page",
        s.first_write_ns, s.begin_ns
    );
    let (f, b) = sync_mode(pages, runs, ps);
    println!("uffd-sync:  first_write={f:.0} ns/page  begin(wp range)={b:.0} ns/page");
    let (f, sc, cp) = async_mode(pages, runs, ps);
    println!(
        "uffd-async: first_write={f:.0} ns/page  scan+rewp={sc:.0} ns/page  shadow copy={cp:.0} ns/page  total={:.0} ns/page",
        f + sc + cp
    );
}
