//! Asynchronous userfaultfd write-protect tracking over a private copy-on-write mapping of a
//! memfd (the layout the heap uses): written pages are reported once per scan, in address
//! order, whether they were read first, written by user code or by a system call; the memfd
//! behind the mapping is never written.
//!
//! Skipped (with a message) on kernels or in sandboxes without `UFFD_FEATURE_WP_ASYNC`.

use std::os::fd::OwnedFd;

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};
use txipc_pagetrack::TrackError;
use txipc_pagetrack::uffd::WpAsync;

struct Private {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

impl Private {
    fn new(pages: usize) -> Private {
        let ps = rustix::param::page_size();
        let len = pages * ps;
        let fd = rustix::fs::memfd_create("uffd-test", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len as u64).unwrap();
        for p in 0..pages {
            rustix::io::pwrite(&fd, &vec![p as u8; ps], (p * ps) as u64).unwrap();
        }
        // SAFETY: a fresh private mapping of our memfd, unmapped in Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
                &fd,
                0,
            )
        }
        .unwrap()
        .cast::<u8>();
        Private { fd, ptr, len }
    }

    fn write(&self, page: usize, v: u8) {
        let ps = rustix::param::page_size();
        // SAFETY: inside our mapping.
        unsafe { self.ptr.add(page * ps + 17).write_volatile(v) };
    }

    fn read(&self, page: usize) -> u8 {
        let ps = rustix::param::page_size();
        // SAFETY: inside our mapping.
        unsafe { self.ptr.add(page * ps + 17).read_volatile() }
    }

    fn file_byte(&self, page: usize) -> u8 {
        let ps = rustix::param::page_size();
        let mut b = [0u8; 1];
        rustix::io::pread(&self.fd, &mut b, (page * ps + 17) as u64).unwrap();
        b[0]
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        // SAFETY: our mapping, no longer used.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

fn tracker(r: &Private) -> Option<WpAsync> {
    // SAFETY: the mapping outlives the tracker in every test (declared before it).
    match unsafe { WpAsync::new(r.ptr, r.len) } {
        Ok(t) => Some(t),
        Err(e @ TrackError::Uffd { .. }) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn written_pages_are_reported_once_per_scan_and_the_memfd_is_untouched() {
    let r = Private::new(64);
    let Some(mut t) = tracker(&r) else { return };
    let mut out = Vec::new();
    t.scan(&mut out).unwrap();
    assert!(out.is_empty(), "nothing written yet: {out:?}");
    // Page 9 is read first (mapped from the memfd), then written; 40 and 3 are written cold.
    assert_eq!(r.read(9), 9);
    r.write(40, 0xa0);
    r.write(9, 0x90);
    r.write(3, 0x30);
    r.write(9, 0x91);
    t.scan(&mut out).unwrap();
    assert_eq!(out, vec![3, 9, 40], "address order, each page once");
    for (p, v) in [(3, 0x30), (9, 0x91), (40, 0xa0)] {
        assert_eq!(r.read(p), v, "the private mapping holds the write");
        assert_eq!(r.file_byte(p), p as u8, "the memfd is not written");
    }
    out.clear();
    t.scan(&mut out).unwrap();
    assert!(
        out.is_empty(),
        "the scan write-protected them again: {out:?}"
    );
    r.write(9, 0x92);
    t.scan(&mut out).unwrap();
    assert_eq!(
        out,
        vec![9],
        "a page written again after a scan is reported again"
    );
}

#[test]
fn a_system_call_writing_into_a_protected_page_succeeds_and_is_reported() {
    let r = Private::new(8);
    let Some(mut t) = tracker(&r) else { return };
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    rustix::io::write(&wr, b"hello").unwrap();
    let ps = rustix::param::page_size();
    // SAFETY: page 5 of our mapping, 5 bytes, no other reference to it.
    let buf = unsafe { std::slice::from_raw_parts_mut(r.ptr.add(5 * ps), 5) };
    assert_eq!(rustix::io::read(&rd, &mut *buf).unwrap(), 5, "no EFAULT");
    assert_eq!(&*buf, b"hello");
    let mut out = Vec::new();
    t.scan(&mut out).unwrap();
    assert_eq!(out, vec![5]);
}

#[test]
fn many_scattered_pages_need_several_scan_calls() {
    // More written runs than one PAGEMAP_SCAN call returns (256 regions).
    let pages = 2048;
    let r = Private::new(pages);
    let Some(mut t) = tracker(&r) else { return };
    let written: Vec<usize> = (0..pages).step_by(3).collect();
    for &p in &written {
        r.write(p, 1);
    }
    let mut out = Vec::new();
    t.scan(&mut out).unwrap();
    assert_eq!(out, written);
}

/// The benchmarks the examples print run over the library's tracker: every written page is
/// found by one scan (they assert it), and their reports are for the sizes asked.
#[test]
fn the_uffd_benchmarks_behind_the_examples_find_every_written_page() {
    let u = match txipc_pagetrack::bench_uffd_async(32, 2) {
        Ok(u) => u,
        Err(e @ TrackError::Uffd { .. }) => {
            eprintln!("skipped: asynchronous userfaultfd write-protect unavailable: {e}");
            return;
        }
        Err(e) => panic!("bench_uffd_async: {e}"),
    };
    assert_eq!((u.pages, u.runs), (32, 2));
    assert!(u.first_write_ns > 0.0 && u.scan_ns > 0.0 && u.copy_ns > 0.0);
    let s = txipc_pagetrack::bench_uffd_scan(256, 8, 3).expect("bench_uffd_scan");
    assert_eq!((s.pages, s.written), (256, 8));
    assert!(s.scan_min_ns > 0.0 && s.scan_min_ns <= s.scan_ns);
}
