//! Helpers shared by the integration tests: raw (hostile) access to channel memory, bounded
//! polling.
#![allow(dead_code)]

use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Offsets from ARCHITECTURE.md §4, restated here on purpose: the tests check the document.
pub const HDR: usize = 128;
/// The bell line (second header line): the client's wake word, the server's sleeping flag.
pub const BELL: usize = 64;
pub const SERVER_SLEEPING: usize = 68;
/// Control block per slot: the request line, then the reply line at +128 (other 128-byte pair).
pub const CTL: usize = 256;
pub const STATE: usize = 0;
pub const REQ_LEN: usize = 4;
pub const SEQ: usize = 8;
pub const METHOD: usize = 16;
pub const ATTEMPT: usize = 20;
pub const INLINE_REQ: usize = 24;
/// Reply line, as offsets from the slot's request line.
pub const DONE: usize = 128;
pub const CLIENT_WAITING: usize = 132;
pub const STATUS: usize = 136;
pub const REPLY_LEN: usize = 140;
pub const REPLY_ATTEMPT: usize = 144;
pub const INLINE_REPLY: usize = 148;
pub const POSTED: u32 = 2;
pub const TAKEN: u32 = 3;
pub const REPLIED: u32 = 4;

pub fn ctl(slot: usize) -> usize {
    HDR + slot * CTL
}

/// A raw MAP_SHARED mapping, as a hostile peer would have it.
pub struct RawMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl RawMap {
    pub fn new(fd: impl AsFd, len: usize) -> Self {
        // SAFETY: null hint: a fresh range owned by this RawMap only.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd.as_fd(),
                0,
            )
            .expect("mmap")
        };
        Self {
            ptr: NonNull::new(p.cast()).unwrap(),
            len,
        }
    }

    pub fn u32(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: aligned, in bounds, lives as long as self; shared words are only accessed
        // atomically.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }

    pub fn u64(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.len);
        // SAFETY: as for u32.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() }
    }

    pub fn write_bytes(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        // SAFETY: in bounds, raw copy, no reference into shared memory is formed.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len())
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn state(&self, slot: usize) -> u32 {
        self.u32(ctl(slot) + STATE).load(Ordering::Acquire) & 0xff
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap returned.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Polls `cond` until it holds; panics after a generous bound (a hang becomes a failure, not a
/// stuck CI job). Not a timing assertion: the bound is 100x what any run needs.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Deterministic xorshift for garbage.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Request bytes unique to (who, i), of a length that crosses the inline limits.
pub fn payload(who: u32, i: u32, max: usize) -> Vec<u8> {
    let len = ((i as usize * 7 + who as usize * 13) % max).max(8);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&who.to_le_bytes());
    v.extend_from_slice(&i.to_le_bytes());
    while v.len() < len {
        v.push((v.len() as u32 ^ who ^ i) as u8);
    }
    v
}
