//! The status page: one small shared record per server, written by the running incarnation and
//! read by the kernel's watchdog.
//!
//! | field | writer | meaning |
//! | --- | --- | --- |
//! | `busy` | incarnation; the kernel clears it in `set_generation`, only while no incarnation of the server runs (activation, after the previous one is confirmed stopped or dead) | transaction id of the batch being handled, 0 when idle |
//! | `calls` | incarnation | calls completed by all incarnations (committed) |
//! | `generation` | kernel | generation of the incarnation allowed to run |
//! | `inject` | kernel (arms, disarms) / incarnation (fires, clears) | an armed fail point: `arg << 32 \| kind << 16 \| site` |
//! | `latency[i]`, i < [`LATENCY_BUCKETS`] | incarnation | calls timed with a service time in bucket `i` (`txipc_core::latency`), by all incarnations |
//! | `takeover` | kernel (IDLE → ARMED(s), ARMED(s) → IDLE, TAKING(s) → IDLE) / spare `s` (ARMED(s) → TAKING(s)) | the spare armed to take over from the serving incarnation, or taking over ([`Takeover`]) |
//! | `crashed` | a crashing incarnation's crash reporter (0 → its pid, with a spare armed, just before it kills itself) / the armed spare (its watched pid → 0, once seen) | a hint that the incarnation with that pid crashed: the spare stamps the first sight of the fault with it, and still serves only once that process is dead (its pidfd). Anyone who can write the page can write it, so it never decides anything |
//!
//! Fields are atomics at fixed offsets in a memfd page; a torn or garbage value can only make the
//! watchdog act early or late on the server that wrote it. At any time every field but `inject`
//! has one writer (`busy` is the kernel's only while no incarnation runs; `inject` is armed by
//! the kernel and cleared by the incarnation with a compare-exchange when it fires), so the hot
//! path (two stores per batch) uses plain stores, no
//! read-modify-write and no clock: the kernel's watchdog times a hang itself, as the same
//! `busy` value seen across its ticks, and a request waiting as POSTED while `calls` and `busy`
//! do not move. The memfd is sealed against shrinking ([`crate::shm`]): an incarnation cannot
//! make the kernel's reads fault.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fd::{AsFd, OwnedFd};

use crate::shm::SharedMap;

const MAGIC: u64 = u64::from_le_bytes(*b"TXIPCST1");
const PAGE: usize = 4096;
const FIELDS: usize = 8;
/// Word index of the crash word: its own cache line (word 8 starts the page's second one),
/// away from `busy` and `calls`, which the serving incarnation writes on every batch, so that
/// a spare spinning on it takes nothing from the server's hot line.
const CRASH: usize = 8;
const _: () = assert!(CRASH * 8 == 64 && CRASH <= FIELDS && CRASH < LATENCY_BASE);
/// Number of latency buckets (the kernel reads them all, whatever their values).
pub const LATENCY_BUCKETS: usize = 128;
/// Word index of the first latency bucket: its own cache lines, apart from the words the
/// kernel's watchdog reads on every tick.
const LATENCY_BASE: usize = 64;
const _: () = assert!((LATENCY_BASE + LATENCY_BUCKETS) * 8 <= PAGE);

/// A mapped status page.
#[derive(Debug)]
pub struct StatusPage {
    map: SharedMap,
}

impl StatusPage {
    /// Creates a zeroed status page memfd (kernel side).
    pub fn create(name: &str) -> io::Result<OwnedFd> {
        // Sealed: an incarnation that could shrink it would crash the kernel's next read.
        let fd = crate::shm::create_sealed(name, PAGE as u64)?;
        let page = StatusPage::map_unchecked(fd.as_fd())?;
        page.field(0).store(MAGIC, Ordering::Release);
        Ok(fd)
    }

    fn map_unchecked(fd: impl AsFd) -> io::Result<StatusPage> {
        let map =
            SharedMap::map(&fd, PAGE).map_err(|e| io::Error::other(format!("status page: {e}")))?;
        Ok(StatusPage { map })
    }

    /// Maps a status page and checks its magic.
    pub fn map(fd: impl AsFd) -> io::Result<StatusPage> {
        let page = StatusPage::map_unchecked(fd)?;
        if page.field(0).load(Ordering::Acquire) != MAGIC {
            return Err(io::Error::other("not a txipc status page (bad magic)"));
        }
        Ok(page)
    }

    #[inline]
    fn field(&self, i: usize) -> &AtomicU64 {
        assert!(i <= FIELDS || (LATENCY_BASE..LATENCY_BASE + LATENCY_BUCKETS).contains(&i));
        // SAFETY: the mapping is PAGE bytes, page aligned, and the assert keeps the u64 inside
        // it (the const assert above bounds the latency words); it lives as long as `self`
        // (the reference borrows it); AtomicU64 has the layout of u64, admits every bit
        // pattern, and all processes access it atomically only.
        unsafe { &*self.map.ptr().cast::<AtomicU64>().add(i) }
    }

    /// Marks the incarnation busy with the batch of transaction `txid` (non-zero, unique).
    #[inline]
    pub fn set_busy(&self, txid: u64) {
        self.field(1).store(txid.max(1), Ordering::Release);
    }
    /// Marks the incarnation idle; `total_calls` is the running count of completed calls (the
    /// incarnation continues from [`StatusPage::calls`] read at start; it is the only writer).
    #[inline]
    pub fn set_idle(&self, total_calls: u64) {
        self.field(1).store(0, Ordering::Release);
        self.field(3).store(total_calls, Ordering::Relaxed);
    }
    /// Adds `n` calls to latency bucket `bucket` (incarnation; the only writer, so a plain load
    /// and store: no read-modify-write on the hot path). A bucket out of range is the last one.
    #[inline]
    pub fn add_latency(&self, bucket: usize, n: u64) {
        let f = self.field(LATENCY_BASE + bucket.min(LATENCY_BUCKETS - 1));
        f.store(f.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
    /// The latency buckets as they are now: values the incarnation wrote, to be treated as its
    /// allegation (kernel).
    pub fn latency(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.field(LATENCY_BASE + i).load(Ordering::Relaxed))
    }
    /// The transaction being handled, or 0 when idle.
    pub fn busy(&self) -> u64 {
        self.field(1).load(Ordering::Acquire)
    }
    /// Calls completed by all incarnations.
    pub fn calls(&self) -> u64 {
        self.field(3).load(Ordering::Relaxed)
    }
    /// The generation allowed to run (kernel writes).
    pub fn generation(&self) -> u64 {
        self.field(4).load(Ordering::Acquire)
    }
    /// Sets the generation allowed to run and clears busy state (kernel, during recovery).
    pub fn set_generation(&self, g: u64) {
        self.field(1).store(0, Ordering::Relaxed);
        self.field(4).store(g, Ordering::Release);
    }
    /// Arms a fail point (kernel): the next request that reaches protocol point `point` faults
    /// with `kind`.
    pub fn arm(&self, kind: u8, point: u8) {
        self.set_fail_word(u64::from(kind) << 16 | u64::from(point));
    }
    /// The raw fail-point word (0 when nothing is armed or the armed point fired). A value the
    /// incarnation may have written: used only to describe a fault, never to decide one.
    pub fn armed_word(&self) -> u64 {
        self.field(6).load(Ordering::Acquire)
    }
    /// Arms (or, with 0, disarms) the fail point word `arg << 32 | kind << 16 | site` and
    /// returns the word it replaces: 0 when the previous fail point fired (kernel).
    pub fn swap_fail_word(&self, word: u64) -> u64 {
        self.field(6).swap(word, Ordering::AcqRel)
    }
    fn set_fail_word(&self, word: u64) {
        self.field(6).store(word, Ordering::Release);
    }
    /// The kind of the armed fail point if it is armed at protocol point `point`, disarming it
    /// (incarnation): [`StatusPage::fire`] for callers that need no argument.
    #[inline]
    pub fn fire_kind(&self, point: u8) -> Option<u8> {
        self.fire(u16::from(point)).map(|w| (w >> 16) as u8)
    }
    /// Whether a fail point is armed at all (nothing is disarmed). One relaxed load.
    #[inline]
    pub fn armed_at_any(&self) -> bool {
        self.field(6).load(Ordering::Relaxed) != 0
    }
    /// Whether the armed fail point is armed at `site` (nothing is disarmed). One relaxed load.
    #[inline]
    pub fn armed_at(&self, site: u16) -> bool {
        let v = self.field(6).load(Ordering::Relaxed);
        v != 0 && v as u16 == site
    }
    /// The takeover word as it is now ([`Takeover`]).
    pub fn takeover(&self) -> Takeover {
        Takeover::from_word(self.field(7).load(Ordering::Acquire))
    }
    /// IDLE → ARMED(`spare`) (kernel): spare `spare` may take over from the serving
    /// incarnation once it sees it dead or stopped. `false` if the word was not IDLE.
    pub fn arm_takeover(&self, spare: u64) -> bool {
        self.takeover_cas(Takeover::Idle, Takeover::Armed(spare))
    }
    /// ARMED(`spare`) → IDLE (kernel): the kernel recovers itself. `false` if the spare
    /// claimed the takeover first (or the word held anything else).
    pub fn disarm_takeover(&self, spare: u64) -> bool {
        self.takeover_cas(Takeover::Armed(spare), Takeover::Idle)
    }
    /// ARMED(`spare`) → TAKING(`spare`) (the spare, once it saw the incarnation it watches
    /// dead or stopped): from now on the spare recovers and serves. `false` if the kernel
    /// disarmed it first.
    pub fn claim_takeover(&self, spare: u64) -> bool {
        self.takeover_cas(Takeover::Armed(spare), Takeover::Taking(spare))
    }
    /// TAKING(`spare`) → IDLE (kernel, once the takeover is accounted for or the spare is
    /// confirmed gone). `false` if the word held anything else.
    pub fn end_takeover(&self, spare: u64) -> bool {
        self.takeover_cas(Takeover::Taking(spare), Takeover::Idle)
    }
    /// The crash word: the pid of an incarnation that said it crashed, 0 if none
    /// (module docs). An allegation: whoever maps the page can write it.
    #[inline]
    pub fn crashed(&self) -> i32 {
        self.field(CRASH).load(Ordering::Acquire) as i32
    }
    /// Sets the crash word to `pid` (a crashing incarnation, from its crash reporter: one
    /// atomic store, async-signal-safe).
    pub fn set_crashed(&self, pid: i32) {
        self.field(CRASH)
            .store(pid as u32 as u64, Ordering::Release);
    }
    /// `pid` → 0 (the spare that saw it); `false` if the word held anything else.
    pub fn clear_crashed(&self, pid: i32) -> bool {
        self.field(CRASH)
            .compare_exchange(pid as u32 as u64, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
    fn takeover_cas(&self, from: Takeover, to: Takeover) -> bool {
        self.field(7)
            .compare_exchange(from.word(), to.word(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
    /// The armed fail point's word if it is armed at `site`, disarming it (incarnation). One
    /// relaxed load when nothing is armed.
    #[inline]
    pub fn fire(&self, site: u16) -> Option<u64> {
        let f = self.field(6);
        let v = f.load(Ordering::Relaxed);
        if v == 0 || v as u16 != site {
            return None;
        }
        f.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
    }
}

/// The takeover word of the status page: who recovers the server if its serving incarnation
/// fails (ARCHITECTURE.md §6, "The spare").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Nobody but the kernel.
    Idle,
    /// The spare of this generation may claim the recovery.
    Armed(u64),
    /// The spare of this generation claimed it: it rolls back, settles and serves.
    Taking(u64),
}

const TAKEOVER_ARMED: u64 = 1 << 62;
const TAKEOVER_TAKING: u64 = 2 << 62;
const TAKEOVER_GEN: u64 = (1 << 62) - 1;

impl Takeover {
    fn word(self) -> u64 {
        match self {
            Takeover::Idle => 0,
            Takeover::Armed(g) => TAKEOVER_ARMED | (g & TAKEOVER_GEN),
            Takeover::Taking(g) => TAKEOVER_TAKING | (g & TAKEOVER_GEN),
        }
    }
    /// Decodes a word; a garbage tag reads as [`Takeover::Idle`] (the kernel then recovers
    /// itself, the safe side).
    fn from_word(w: u64) -> Takeover {
        match w & !TAKEOVER_GEN {
            TAKEOVER_ARMED => Takeover::Armed(w & TAKEOVER_GEN),
            TAKEOVER_TAKING => Takeover::Taking(w & TAKEOVER_GEN),
            _ => Takeover::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_share_fields() {
        let fd = StatusPage::create("t").unwrap();
        let a = StatusPage::map(&fd).unwrap();
        let b = StatusPage::map(&fd).unwrap();
        a.set_busy(9);
        assert_eq!(b.busy(), 9);
        a.set_idle(2);
        assert_eq!(b.busy(), 0);
        assert_eq!(b.calls(), 2);
        b.set_generation(4);
        assert_eq!(a.generation(), 4);
        a.add_latency(3, 2);
        a.add_latency(3, 1);
        a.add_latency(usize::MAX, 5);
        let l = b.latency();
        assert_eq!((l[3], l[LATENCY_BUCKETS - 1]), (3, 5));
        assert_eq!(l.iter().sum::<u64>(), 8);
        assert_eq!(b.busy(), 0, "latency words are apart from the others");
    }

    #[test]
    fn fail_points_fire_once_at_their_site() {
        let fd = StatusPage::create("t").unwrap();
        let k = StatusPage::map(&fd).unwrap();
        let s = StatusPage::map(&fd).unwrap();
        k.arm(2, 3);
        assert_eq!(s.fire(1), None);
        assert_eq!(s.fire(3), Some(2 << 16 | 3));
        assert_eq!(s.fire(3), None);
        assert_eq!(k.swap_fail_word(7 << 32 | 6 << 16 | 40), 0, "it fired");
        assert_eq!(k.swap_fail_word(0), 7 << 32 | 6 << 16 | 40, "still armed");
    }

    #[test]
    fn a_takeover_is_claimed_by_the_spare_or_disarmed_by_the_kernel_never_both() {
        let fd = StatusPage::create("t").unwrap();
        let k = StatusPage::map(&fd).unwrap();
        let s = StatusPage::map(&fd).unwrap();
        assert_eq!(s.takeover(), Takeover::Idle);
        assert!(!s.claim_takeover(5), "nothing armed");
        assert!(k.arm_takeover(5));
        assert!(!k.arm_takeover(6), "one spare at a time");
        assert!(!s.claim_takeover(6), "armed for another spare");
        assert!(s.claim_takeover(5));
        assert!(
            !k.disarm_takeover(5),
            "claimed first: the kernel cannot take it back"
        );
        assert_eq!(k.takeover(), Takeover::Taking(5));
        assert!(k.end_takeover(5));
        assert!(k.arm_takeover(7));
        assert!(k.disarm_takeover(7));
        assert!(
            !s.claim_takeover(7),
            "disarmed first: the spare cannot claim"
        );
        assert_eq!(s.takeover(), Takeover::Idle);
    }

    #[test]
    fn wrong_object_is_refused() {
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(StatusPage::map(&fd).is_err());
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        // Unsealed: refused even with the right magic.
        assert!(StatusPage::map(&fd).is_err());
        let sealed = crate::shm::create_sealed("y", 4096).unwrap();
        assert!(StatusPage::map(&sealed).is_err(), "no magic");
        let page = StatusPage::create("z").unwrap();
        assert!(
            rustix::fs::ftruncate(&page, 0).is_err(),
            "a peer cannot shrink it"
        );
    }
}
