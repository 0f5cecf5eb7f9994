//! Helpers shared by the integration tests: regions, a preallocated pre-image recorder, forked
//! children with bounded waits, and a reader of the region's protections in /proc/self/maps.
#![allow(dead_code)] // each test binary uses a subset

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// A memfd `MAP_SHARED` region (like the heap), unmapped on drop.
pub struct Region {
    pub ptr: *mut u8,
    pub len: usize,
}

impl Region {
    pub fn new(pages: usize) -> Region {
        let len = pages * page_size();
        let fd = rustix::fs::memfd_create("pagetrack-test", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len as u64).unwrap();
        // SAFETY: fresh shared mapping of our own memfd at a kernel-chosen address.
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
        .unwrap();
        Region {
            ptr: ptr.cast(),
            len,
        }
    }

    pub fn page(&self, i: usize) -> *mut u8 {
        assert!(i * page_size() < self.len);
        // SAFETY: in bounds (checked).
        unsafe { self.ptr.add(i * page_size()) }
    }

    /// Volatile byte write (a real store instruction, so it faults where it should).
    pub fn write(&self, page: usize, off: usize, v: u8) {
        assert!(off < page_size());
        // SAFETY: in bounds; the tracker makes the page writable on fault.
        unsafe { self.page(page).add(off).write_volatile(v) }
    }

    pub fn read(&self, page: usize, off: usize) -> u8 {
        // SAFETY: in bounds, always readable.
        unsafe { self.page(page).add(off).read_volatile() }
    }

    pub fn fill(&self, page: usize, v: u8) {
        // SAFETY: in bounds.
        unsafe { std::ptr::write_bytes(self.page(page), v, page_size()) }
    }

    pub fn page_bytes(&self, page: usize) -> Vec<u8> {
        // SAFETY: in bounds, readable.
        unsafe { std::slice::from_raw_parts(self.page(page), page_size()) }.to_vec()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our mapping; the tracker over it has been dropped (tests drop it first).
        unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) }.unwrap();
    }
}

/// A sink context recording pre-images into preallocated memory (no allocation in the handler).
pub struct Recorder {
    page_size: usize,
    count: AtomicUsize,
    pages: Box<[AtomicUsize]>,
    data: *mut u8,
    data_len: usize,
}

impl Recorder {
    pub fn new(cap: usize) -> Box<Recorder> {
        let page_size = page_size();
        let data = Box::leak(vec![0u8; cap * page_size].into_boxed_slice());
        Box::new(Recorder {
            page_size,
            count: AtomicUsize::new(0),
            pages: (0..cap).map(|_| AtomicUsize::new(usize::MAX)).collect(),
            data: data.as_mut_ptr(),
            data_len: cap * page_size,
        })
    }

    pub fn ctx(&self) -> *mut () {
        (self as *const Recorder).cast_mut().cast()
    }

    /// `(page index, pre-image)` in capture order.
    pub fn records(&self) -> Vec<(usize, Vec<u8>)> {
        let n = self.count.load(Ordering::Acquire);
        (0..n)
            .map(|i| {
                // SAFETY: slot i < count is in bounds; tests read records only once the writing
                // threads are done, so the slot is fully written.
                let bytes = unsafe {
                    std::slice::from_raw_parts(self.data.add(i * self.page_size), self.page_size)
                };
                (self.pages[i].load(Ordering::Acquire), bytes.to_vec())
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn clear(&self) {
        self.count.store(0, Ordering::Release);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // SAFETY: `data` came from Box::leak of a boxed slice of `data_len` bytes.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.data, self.data_len))
        });
    }
}

/// The test sink: async-signal-safe (atomics and a memcpy into preallocated memory).
///
/// # Safety
///
/// `ctx` is a live [`Recorder`]; `page` is readable for a page.
pub unsafe fn record(ctx: *mut (), page_index: usize, page: *const u8) {
    // SAFETY: contract above.
    let r = unsafe { &*ctx.cast::<Recorder>() };
    let i = r.count.fetch_add(1, Ordering::AcqRel);
    if i >= r.pages.len() {
        // SAFETY: abort is async-signal-safe; a test bug (recorder too small).
        unsafe { libc::abort() };
    }
    // SAFETY: slot i is ours (fetch_add) and in bounds; `page` readable for a page.
    unsafe { std::ptr::copy_nonoverlapping(page, r.data.add(i * r.page_size), r.page_size) };
    r.pages[i].store(page_index, Ordering::Release);
}

/// Runs `f` in a forked child and returns how the child ended (exit 0 if `f` returned, 101 if
/// it panicked). Waits at most 30 s, then kills the child; always reaps it.
pub fn in_child(f: impl FnOnce()) -> WaitStatus {
    // SAFETY: the child only runs `f` and `_exit`s; glibc keeps malloc usable after fork.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let r = std::panic::catch_unwind(AssertUnwindSafe(f));
            // SAFETY: _exit never returns and skips the parent's atexit/test-harness state.
            unsafe { libc::_exit(if r.is_ok() { 0 } else { 101 }) }
        }
        ForkResult::Parent { child } => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
                    Ok(st) => return st,
                    Err(e) => panic!("waitpid: {e}"),
                }
                if Instant::now() > deadline {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    panic!("child {child} did not finish in 30 s (killed and reaped)");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Asserts the child died of SIGSEGV.
pub fn assert_sigsegv(st: WaitStatus) {
    assert!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGSEGV, _)),
        "expected death by SIGSEGV, got {st:?}"
    );
}

/// Protection of each page of `base..base+len` from /proc/self/maps: `'w'` writable, `'r'`
/// read-only, `'-'` neither, `'?'` not mapped.
pub fn protections(base: *const u8, len: usize) -> String {
    let ps = page_size();
    let base = base as usize;
    let mut out = vec!['?'; len / ps];
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let range = it.next().unwrap();
        let perms = it.next().unwrap();
        let (s, e) = range.split_once('-').unwrap();
        let s = usize::from_str_radix(s, 16).unwrap();
        let e = usize::from_str_radix(e, 16).unwrap();
        let c = match (&perms[0..1], &perms[1..2]) {
            (_, "w") => 'w',
            ("r", _) => 'r',
            _ => '-',
        };
        for (i, slot) in out.iter_mut().enumerate() {
            let a = base + i * ps;
            if a >= s && a < e {
                *slot = c;
            }
        }
    }
    out.into_iter().collect()
}
