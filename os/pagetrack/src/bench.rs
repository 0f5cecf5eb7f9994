//! The first-write micro-benchmark behind `txipc bench tx` (and `examples/first_write.rs`).

use std::time::Instant;

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

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
    let fd = rustix::fs::memfd_create("txipc-pagetrack-bench", MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, len as u64).expect("ftruncate");
    // SAFETY: a fresh shared mapping of our own memfd at a kernel-chosen address.
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
    .expect("mmap");
    let region = Region {
        ptr: ptr.cast(),
        len,
    };
    // Populate the pages so the measurement sees write-protect faults only.
    for p in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { region.ptr.add(p * page_size).write_volatile(1) };
    }
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
