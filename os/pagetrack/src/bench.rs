//! The page-tracking micro-benchmarks: the SIGSEGV first write behind `txipc bench tx` (and
//! `examples/first_write.rs`), and the asynchronous userfaultfd costs behind
//! `examples/uffd_wp.rs` and `examples/uffd_scan.rs` (which only print these functions' reports,
//! so the ioctl layer exists once, in [`crate::uffd`]).

use std::time::Instant;

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

use crate::uffd::WpAsync;
use crate::{PageTracker, TrackError};

/// Result of [`bench_first_write`]; all times are medians over the runs, per page, in ns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FirstWriteReport {
    /// Pages written per run.
    pub pages: usize,
    /// Runs (transactions) measured.
    pub runs: usize,
    /// First write to a protected page: fault, handler, sink (a 4 KiB copy), `mprotect`, retry.
    pub first_write_ns: f64,
    /// Fastest run's first-write cost.
    pub first_write_min_ns: f64,
    /// `begin` re-protecting the pages the previous run dirtied (contiguous: one `mprotect`).
    pub begin_ns: f64,
    /// The same write to a page already writable (the baseline).
    pub plain_write_ns: f64,
}

/// Sink context of the benchmark: a preallocated pre-image buffer.
struct Sink {
    buf: *mut u8,
    page_size: usize,
}

/// # Safety
///
/// `ctx` points at a live [`Sink`] whose buffer has room for `page_index + 1` pages, and `page`
/// is readable for `page_size` bytes.
unsafe fn copy_sink(ctx: *mut (), page_index: usize, page: *const u8) {
    // SAFETY: contract above.
    unsafe {
        let s = &*ctx.cast::<Sink>();
        std::ptr::copy_nonoverlapping(page, s.buf.add(page_index * s.page_size), s.page_size);
    }
}

/// A memfd mapping, unmapped on drop.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    /// A fresh memfd of `len` bytes mapped read-write (`MAP_SHARED`, or `MAP_PRIVATE`: the
    /// heap's working copy under the uffd tracker), every page populated.
    ///
    /// # Panics
    /// If the memfd cannot be created or mapped.
    fn memfd(len: usize, flags: MapFlags) -> Region {
        let page_size = rustix::param::page_size();
        let fd = rustix::fs::memfd_create("txipc-pagetrack-bench", MemfdFlags::CLOEXEC)
            .expect("memfd_create");
        rustix::fs::ftruncate(&fd, len as u64).expect("ftruncate");
        // SAFETY: a fresh mapping of our own memfd at a kernel-chosen address (the mapping
        // keeps the memfd alive after `fd` closes).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                &fd,
                0,
            )
        }
        .expect("mmap");
        let region = Region {
            ptr: ptr.cast(),
            len,
        };
        // Populate the pages so the measurements see write-protect faults only.
        for p in 0..len / page_size {
            // SAFETY: inside the mapping.
            unsafe { region.ptr.add(p * page_size).write_volatile(1) };
        }
        region
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is the mapping created in `bench_first_write`; nothing uses it
        // after this (the tracker is dropped before the region).
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures the cost of a first write to a protected page: a memfd `MAP_SHARED` region of `pages`
/// pages (like the heap), a sink that copies each 4 KiB pre-image into a preallocated buffer,
/// `runs` transactions each writing one byte per page. Also measures `begin` and the plain write.
///
/// # Errors
///
/// [`TrackError::AlreadyInstalled`] if a tracker is live in this process; the other errors of
/// install and begin.
///
/// # Panics
///
/// If the memfd cannot be created or mapped, or `pages` or `runs` is zero.
pub fn bench_first_write(pages: usize, runs: usize) -> Result<FirstWriteReport, TrackError> {
    assert!(
        pages > 0 && runs > 0,
        "bench_first_write: pages and runs must be > 0"
    );
    let page_size = rustix::param::page_size();
    let len = pages * page_size;
    let region = Region::memfd(len, MapFlags::SHARED);
    let mut preimages = vec![0u8; len];
    let mut sink = Sink {
        buf: preimages.as_mut_ptr(),
        page_size,
    };
    // SAFETY: the region stays mapped read-write until `region` drops, after the tracker (declared
    // later, dropped first); `sink` and `preimages` outlive the tracker and the buffer has room
    // for every page; copy_sink is async-signal-safe and does not write the region.
    let mut t =
        unsafe { PageTracker::install(region.ptr, len, copy_sink, (&raw mut sink).cast::<()>())? };
    let (mut first, mut begin, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    // One warm-up transaction (first begin protects the whole region; cold caches), then `runs`.
    for run in 0..=runs {
        let t0 = Instant::now();
        t.begin()?;
        let t1 = Instant::now();
        for p in 0..pages {
            // SAFETY: inside the mapping; the tracker makes the page writable on fault.
            unsafe { region.ptr.add(p * page_size).write_volatile(run as u8) };
        }
        let t2 = Instant::now();
        for p in 0..pages {
            // SAFETY: as above; the page is now writable.
            unsafe { region.ptr.add(p * page_size).write_volatile(run as u8 + 1) };
        }
        let t3 = Instant::now();
        t.end();
        if run > 0 {
            let per = |a: Instant, b: Instant| (b - a).as_nanos() as f64 / pages as f64;
            begin.push(per(t0, t1));
            first.push(per(t1, t2));
            plain.push(per(t2, t3));
        }
    }
    drop(t);
    drop(region);
    drop(preimages);
    let min = first.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(FirstWriteReport {
        pages,
        runs,
        first_write_ns: median(&mut first),
        first_write_min_ns: min,
        begin_ns: median(&mut begin),
        plain_write_ns: median(&mut plain),
    })
}

/// Median cost in ns of a first write to a protected page (9 runs of `pages` pages); see
/// [`bench_first_write`].
///
/// # Panics
///
/// If a tracker is already live in this process, or the benchmark region cannot be set up.
pub fn bench_first_write_ns(pages: usize) -> f64 {
    bench_first_write(pages, 9)
        .expect("bench_first_write (is a PageTracker already installed in this process?)")
        .first_write_ns
}

/// Result of [`bench_uffd_async`]; medians over the runs, per page, in ns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UffdAsyncReport {
    /// Pages written per run.
    pub pages: usize,
    /// Runs (transactions) measured.
    pub runs: usize,
    /// First write to a write-protected page (the kernel resolves it: copy-on-write, no signal).
    pub first_write_ns: f64,
    /// [`WpAsync::scan`]: finds the written pages and write-protects them again.
    pub scan_ns: f64,
    /// Copying each written page into the committed copy (the heap copies it into its memfd).
    pub copy_ns: f64,
}

/// Measures asynchronous write-protect as the heap's uffd tracker uses it: a private mapping
/// of a populated memfd of `pages` pages tracked by [`WpAsync`], `runs` transactions each
/// writing one byte per page, then one scan and one page copy per written page into a shadow
/// buffer (the committed copy).
///
/// # Errors
/// [`TrackError::Uffd`] where the kernel lacks `UFFD_FEATURE_WP_ASYNC` or `PAGEMAP_SCAN`
/// (Linux < 6.7) or userfaultfd is not permitted.
///
/// # Panics
/// If the memfd cannot be created or mapped, `pages` or `runs` is zero, or a scan misses a
/// written page.
pub fn bench_uffd_async(pages: usize, runs: usize) -> Result<UffdAsyncReport, TrackError> {
    assert!(
        pages > 0 && runs > 0,
        "bench_uffd_async: pages and runs must be > 0"
    );
    let page_size = rustix::param::page_size();
    let region = Region::memfd(pages * page_size, MapFlags::PRIVATE);
    let mut shadow = vec![0u8; region.len];
    // SAFETY: the region is a private mapping of ours, mapped until `region` drops, after the
    // tracker (declared later, dropped first).
    let mut wp = unsafe { WpAsync::new(region.ptr, region.len)? };
    let mut written = Vec::with_capacity(pages);
    let (mut first, mut scan, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        let t1 = Instant::now();
        for p in 0..pages {
            // SAFETY: inside the mapping; the kernel resolves the write-protect fault itself.
            unsafe { region.ptr.add(p * page_size).write_volatile(run as u8 + 2) };
        }
        let t2 = Instant::now();
        written.clear();
        wp.scan(&mut written)?;
        let t3 = Instant::now();
        for &p in &written {
            // SAFETY: page `p` lies inside the region and the shadow (both `len` bytes,
            // distinct allocations).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    region.ptr.add(p * page_size),
                    shadow.as_mut_ptr().add(p * page_size),
                    page_size,
                )
            };
        }
        let t4 = Instant::now();
        assert_eq!(written.len(), pages, "the scan found every written page");
        if run > 0 {
            let per = |a: Instant, b: Instant| (b - a).as_nanos() as f64 / pages as f64;
            first.push(per(t1, t2));
            scan.push(per(t2, t3));
            copy.push(per(t3, t4));
        }
    }
    drop(wp);
    drop(region);
    Ok(UffdAsyncReport {
        pages,
        runs,
        first_write_ns: median(&mut first),
        scan_ns: median(&mut scan),
        copy_ns: median(&mut copy),
    })
}

/// Result of [`bench_uffd_scan`], in ns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UffdScanReport {
    /// Pages of the tracked region.
    pub pages: usize,
    /// Pages written (at random) between two scans.
    pub written: usize,
    /// Median cost of one [`WpAsync::scan`] over the whole region.
    pub scan_ns: f64,
    /// Fastest scan.
    pub scan_min_ns: f64,
}

/// Measures one [`WpAsync::scan`] against the size of the tracked region (`pages` pages of a
/// populated private memfd mapping, as the heap's working copy), with `k` random pages
/// written before each of the `runs` scans: the walk covers the whole region whatever was
/// written.
///
/// # Errors
/// As [`bench_uffd_async`].
///
/// # Panics
/// If the memfd cannot be created or mapped, `pages` or `runs` is zero, or a scan reports
/// more pages than were written.
pub fn bench_uffd_scan(pages: usize, k: usize, runs: usize) -> Result<UffdScanReport, TrackError> {
    assert!(
        pages > 0 && runs > 0,
        "bench_uffd_scan: pages and runs must be > 0"
    );
    let page_size = rustix::param::page_size();
    let region = Region::memfd(pages * page_size, MapFlags::PRIVATE);
    // SAFETY: as in bench_uffd_async.
    let mut wp = unsafe { WpAsync::new(region.ptr, region.len)? };
    let mut out = Vec::new();
    let mut ns = Vec::with_capacity(runs);
    let mut x = 1usize;
    for r in 0..runs {
        for _ in 0..k {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // SAFETY: inside the mapping.
            unsafe {
                region
                    .ptr
                    .add((x >> 20) % pages * page_size)
                    .write_volatile(r as u8)
            };
        }
        out.clear();
        let t0 = Instant::now();
        wp.scan(&mut out)?;
        ns.push(t0.elapsed().as_nanos() as f64);
        assert!(out.len() <= k, "a scan reported pages nobody wrote");
    }
    drop(wp);
    drop(region);
    let min = ns.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(UffdScanReport {
        pages,
        written: k,
        scan_ns: median(&mut ns),
        scan_min_ns: min,
    })
}
