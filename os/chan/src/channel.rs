//! Channels: the client, server and kernel views of one shared memfd.
//!
//! See ARCHITECTURE.md §4 for the layout and the table of who may write what in which state.
//! This module implements that protocol; the comments name the transition each step performs.
//!
//! # The client's sleep cannot miss a reply
//!
//! Client (slow path): `client_waiting = 1` (SeqCst store) ; fence(SeqCst) ;
//! `w = load done` ; if `w != seq`: `futex_wait(done, w)`.
//! Server (`publish`, hot path): `state = REPLIED` (CAS on the request line) ;
//! `done = seq` (SeqCst swap on the reply line) ; `load client_waiting` (SeqCst) ;
//! if 1: `futex_wake(done)`.
//!
//! This is the store–load (Dekker) pattern, argued in the C++20 model that Rust uses
//! (\[atomics.order\]/4): let S be the single total order of SeqCst operations and fences.
//! If the server's load of `client_waiting` precedes the client's store of 1 in S, then so
//! does the `done` swap (sequenced before it), and the client's fence follows its store; a
//! load sequenced after a SeqCst fence that follows a SeqCst modification in S reads that
//! modification or a later one, so the client reads `done == seq` and never sleeps. Otherwise
//! the server reads `client_waiting == 1` and wakes; the wake either finds the client queued
//! or the client's `futex_wait` finds `done != w` (the kernel compares and enqueues under the
//! futex bucket lock) and returns at once. `done == seq` implies REPLIED (the swap follows the
//! release CAS in program order; the client's acquire load of `done` synchronises with the
//! SeqCst swap), so the reply fields written before the CAS are visible.
//!
//! The hot path (publish) therefore needs no fence: on x86 the SeqCst swap is the `xchg` that
//! writes the word anyway and a SeqCst load a plain `mov`; only the sleeping side pays for
//! `xchg` + `mfence`, next to a system call. Kernel operations always announce and wake, and
//! DEAD/REVOKED also change every `done` that does not already announce the current request,
//! so a client about to sleep on the old value returns at once and sees the flag. `tests/loom_handshake.rs` model-checks the
//! handshakes (with fences on both sides: loom does not model the total order of SeqCst
//! accesses, tokio-rs/loom#180).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::time::{Duration, Instant};

use crate::ChanError;
use crate::futex;
use crate::layout::{
    CHANNEL_MAGIC, CHANNEL_VERSION, ChannelLayout, FLAG_DEAD, FLAG_REVOKED, FLAG_TAKEOVER,
    INLINE_REPLY_MAX, LINE, NO_CPU, PAGE, REPLY_LINE, SlotState, Status, bell, ctl, hdr, rep, st,
};
use crate::mem::{Mapping, check_fd, create_sealed};
use crate::spin::{SpinConfig, SpinMode, Spinner};

use Ordering::{Acquire, Relaxed, Release, SeqCst};

/// How long a call that sees its channel marked DEAD waits for a slot it finds TAKEN: the
/// kernel settles every taken slot before it marks DEAD, so this bounds only the wait on a
/// kernel that died midway (see `ClientChannel::after_flag`).
const DEAD_SETTLE_GRACE: Duration = Duration::from_millis(200);

/// How long a client woken without its reply spins for it before it sleeps again
/// ([`ClientChannel::call`]): the recovery's re-run of its request, from the wake-up at the
/// start of the settling to the reply, takes 0.1–0.5 ms on the project's VM. Bounded, and
/// yielding between polls (whoever else wants the client's CPU — the kernel recovering, another
/// client — gets it at once), so that a woken client delays nobody.
const RECOVERY_SPIN: Duration = Duration::from_millis(2);
/// What a kick stores in `done`: the slot's seq with bit 31 flipped, which is neither the
/// awaited reply nor the previous one.
const KICK_BIT: u32 = 1 << 31;

/// Creates and formats a channel memfd (kernel side). The memfd is sealed against resizing so
/// that no holder can turn the others' accesses into SIGBUS.
pub fn create_channel(name: &str, layout: ChannelLayout) -> Result<OwnedFd, ChanError> {
    layout.validate()?;
    let size = layout.total_size();
    create_sealed(&format!("txipc-chan:{name}"), size, |m| {
        m.u64_at(hdr::MAGIC).store(CHANNEL_MAGIC, Relaxed);
        m.u32_at(hdr::VERSION).store(CHANNEL_VERSION, Relaxed);
        m.u32_at(hdr::NSLOTS).store(layout.nslots, Relaxed);
        m.u32_at(hdr::REQ_CAP).store(layout.req_cap, Relaxed);
        m.u32_at(hdr::REPLY_CAP).store(layout.reply_cap, Relaxed);
        m.u32_at(bell::SERVER_CPU).store(NO_CPU, Relaxed);
        m.u32_at(bell::CLIENT_CPU).store(NO_CPU, Relaxed);
        // Everything else starts zeroed: generation 0, no flags, every slot FREE with seq 0.
    })
}

/// One mapped channel with the layout read (once) from its header.
#[derive(Debug)]
pub(crate) struct Chan {
    map: Mapping,
    layout: ChannelLayout,
    nslots: usize,
}

/// Accessors for one slot's control block.
#[derive(Clone, Copy)]
struct Ctl<'a> {
    m: &'a Mapping,
    base: usize,
}

impl<'a> Ctl<'a> {
    #[inline]
    fn state(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + ctl::STATE)
    }
    /// Reply line: the client's futex word (seq of the last published reply, low 32 bits).
    #[inline]
    fn done(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + REPLY_LINE + rep::DONE)
    }
    #[inline]
    fn client_waiting(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + REPLY_LINE + rep::CLIENT_WAITING)
    }
    /// Reply line: the request's attempt count as the replier saw it.
    #[inline]
    fn reply_attempt(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + REPLY_LINE + rep::ATTEMPT)
    }
    #[inline]
    fn seq(self) -> &'a AtomicU64 {
        self.m.u64_at(self.base + ctl::SEQ)
    }
    #[inline]
    fn method(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + ctl::METHOD)
    }
    #[inline]
    fn req_len(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + ctl::REQ_LEN)
    }
    #[inline]
    fn attempt(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + ctl::ATTEMPT)
    }
    #[inline]
    fn status(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + REPLY_LINE + rep::STATUS)
    }
    #[inline]
    fn reply_len(self) -> &'a AtomicU32 {
        self.m.u32_at(self.base + REPLY_LINE + rep::REPLY_LEN)
    }

    /// Announces the reply of request `seq` on the reply line (after the REPLIED transition)
    /// and wakes the client if it sleeps. SeqCst swap then SeqCst load: the store half and
    /// the load half of the client-sleep handshake (module docs), with no separate fence.
    #[inline]
    fn announce(self, seq: u64) {
        self.done().swap(seq as u32, SeqCst);
        if self.client_waiting().load(SeqCst) != 0 {
            futex::wake_all(self.done());
        }
    }

    /// CAS loop `from → to` on the state bits, keeping the epoch (which a concurrent kick may
    /// change, hence the loop). `Err(word)` if the state is not `from`.
    #[inline]
    fn transition(self, from: u32, to: u32, success: Ordering) -> Result<u32, u32> {
        let s = self.state();
        let mut w = s.load(Relaxed);
        loop {
            if w & st::MASK != from {
                return Err(w);
            }
            match s.compare_exchange_weak(w, st::with(w, to), success, Relaxed) {
                Ok(_) => return Ok(w),
                Err(now) => w = now,
            }
        }
    }

    /// → FREE, raising the epoch, if the state word is still `w` (a POSTED request withdrawn
    /// before any server took it, or a slot CLAIMED by a client that is gone).
    #[inline]
    fn free_if_still(self, w: u32) -> bool {
        self.state()
            .compare_exchange(w, st::freed(w), Release, Relaxed)
            .is_ok()
    }

    /// REPLIED → FREE, raising the epoch: a plain release store, no locked instruction.
    ///
    /// Only the client writes a REPLIED slot, so there is nothing to race with except a
    /// kernel kick (epoch bump when the channel is marked DEAD/REVOKED). Overwriting a kick is
    /// harmless: the flag it announces is checked before every call, nobody sleeps on a FREE
    /// slot, and the epoch still moves forward (ABA protection holds). `false` if the slot is
    /// not REPLIED (a peer scribbled on it): it is then left alone, and not reused.
    #[inline]
    fn release_replied(self) -> bool {
        let s = self.state();
        let w = s.load(Relaxed);
        if w & st::MASK != st::REPLIED {
            return false;
        }
        s.store(st::freed(w), Release);
        true
    }
}

impl Chan {
    fn map(fd: BorrowedFd<'_>) -> Result<Self, ChanError> {
        let actual = check_fd(fd, "channel", PAGE as u64)?;
        let layout = {
            let head = Mapping::map_shared(fd, PAGE)?;
            let magic = head.u64_at(hdr::MAGIC).load(Relaxed);
            if magic != CHANNEL_MAGIC {
                return Err(ChanError::BadMagic {
                    what: "channel",
                    found: magic,
                });
            }
            let version = head.u32_at(hdr::VERSION).load(Relaxed);
            if version != CHANNEL_VERSION {
                return Err(ChanError::BadVersion {
                    what: "channel",
                    found: version,
                    expected: CHANNEL_VERSION,
                });
            }
            // Read the shape exactly once: whatever a peer writes to the header later, our
            // offsets stay those validated here.
            ChannelLayout {
                nslots: head.u32_at(hdr::NSLOTS).load(Relaxed),
                req_cap: head.u32_at(hdr::REQ_CAP).load(Relaxed),
                reply_cap: head.u32_at(hdr::REPLY_CAP).load(Relaxed),
            }
        };
        layout.validate()?;
        let needed = layout.total_size();
        if actual < needed as u64 {
            return Err(ChanError::TooSmall {
                what: "channel",
                actual,
                needed: needed as u64,
            });
        }
        let map = Mapping::map_shared(fd, needed)?;
        debug_assert!(map.len() >= needed);
        Ok(Self {
            map,
            layout,
            nslots: layout.nslots as usize,
        })
    }

    #[inline]
    fn ctl(&self, slot: usize) -> Ctl<'_> {
        debug_assert!(slot < self.nslots);
        Ctl {
            m: &self.map,
            base: self.layout.ctl_offset(slot),
        }
    }

    #[inline]
    fn flags(&self) -> &AtomicU32 {
        self.map.u32_at(hdr::FLAGS)
    }

    #[inline]
    fn generation(&self) -> &AtomicU64 {
        self.map.u64_at(hdr::GENERATION)
    }

    /// The bell word the sleeping server waits on for this channel.
    #[inline]
    pub(crate) fn bell_word(&self) -> &AtomicU32 {
        self.map.u32_at(bell::WORD)
    }

    #[inline]
    pub(crate) fn server_sleeping(&self) -> &AtomicU32 {
        self.map.u32_at(bell::SERVER_SLEEPING)
    }

    #[inline]
    pub(crate) fn server_cpu(&self) -> &AtomicU32 {
        self.map.u32_at(bell::SERVER_CPU)
    }

    #[inline]
    pub(crate) fn client_cpu(&self) -> &AtomicU32 {
        self.map.u32_at(bell::CLIENT_CPU)
    }

    /// Client side, right after the SeqCst POSTED CAS: wake the server if it announced that it
    /// sleeps (the store–load handshake of the doorbell module docs, on this channel's own
    /// bell line).
    #[inline]
    fn ring(&self) {
        if self.server_sleeping().load(SeqCst) != 0 {
            self.bell_word().fetch_add(1, Release);
            futex::wake_all(self.bell_word());
        }
    }

    /// Client side: records the client's CPU (for the server's spin policy) and returns
    /// whether the server was last seen on the same CPU (spinning would be useless).
    #[inline]
    fn client_note_cpu(&self) -> bool {
        let cpu = rustix::thread::sched_getcpu() as u32;
        let w = self.client_cpu();
        if w.load(Relaxed) != cpu {
            w.store(cpu, Relaxed);
        }
        self.server_cpu().load(Relaxed) == cpu
    }

    #[inline]
    fn check_flags(&self) -> Result<(), ChanError> {
        let f = self.flags().load(Acquire);
        if f & FLAG_DEAD != 0 {
            Err(ChanError::Dead)
        } else if f & FLAG_REVOKED != 0 {
            Err(ChanError::Revoked)
        } else {
            Ok(())
        }
    }

    #[inline]
    fn check_slot(&self, slot: usize) -> Result<Ctl<'_>, ChanError> {
        if slot < self.nslots {
            Ok(self.ctl(slot))
        } else {
            Err(ChanError::BadSlot(slot))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// What a completed call returns besides the reply bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The status the server (or the kernel) wrote.
    pub status: Status,
    /// How many times the request was re-posted after a rollback (0 on the first execution;
    /// for [`Status::Aborted`], the number of failed attempts).
    pub attempt: u32,
}

/// The client's view of a channel. `Sync`: threads may call concurrently, each call claims its
/// own slot; with more threads than slots, callers wait for a free slot.
#[derive(Debug)]
pub struct ClientChannel {
    chan: Chan,
    spin: SpinConfig,
    /// Slot to try first: the one most recently freed (warm in both caches).
    hint: AtomicUsize,
    /// Slots whose call timed out while the server held them; reclaimed once REPLIED.
    abandoned: Mutex<Vec<usize>>,
    n_abandoned: AtomicUsize,
}

impl ClientChannel {
    /// Maps a channel memfd. The client needs nothing else: it wakes the server through the
    /// channel's own bell line, never through memory another client can write.
    pub fn map(chan: impl AsFd) -> Result<Self, ChanError> {
        Ok(Self {
            chan: Chan::map(chan.as_fd())?,
            spin: SpinConfig::default(),
            hint: AtomicUsize::new(0),
            abandoned: Mutex::new(Vec::new()),
            n_abandoned: AtomicUsize::new(0),
        })
    }

    /// Sets how the client waits before sleeping (default: [`SpinMode::Auto`], 20 µs).
    pub fn with_spin(mut self, spin: SpinConfig) -> Self {
        self.spin = spin;
        self
    }

    /// The channel's layout.
    pub fn layout(&self) -> ChannelLayout {
        self.chan.layout
    }

    /// Generation of the server incarnation serving the channel (raised by every recovery).
    pub fn generation(&self) -> u64 {
        self.chan.generation().load(Acquire)
    }

    /// Whether the kernel marked the channel DEAD (its server is gone for good).
    pub fn is_dead(&self) -> bool {
        self.chan.flags().load(Acquire) & FLAG_DEAD != 0
    }

    /// Whether the kernel revoked the channel.
    pub fn is_revoked(&self) -> bool {
        self.chan.flags().load(Acquire) & FLAG_REVOKED != 0
    }

    /// Calls `method` with `request`; on success `reply` holds the reply bytes (its capacity is
    /// reused) and the result carries the status.
    ///
    /// Without a `timeout` the call ends only with a reply (possibly a kernel-written error
    /// status) or with `Dead`/`Revoked`; the kernel guarantees one of them.
    pub fn call(
        &self,
        method: u32,
        request: &[u8],
        reply: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Reply, ChanError> {
        let layout = &self.chan.layout;
        if request.len() > layout.req_cap as usize {
            return Err(ChanError::RequestTooLarge {
                len: request.len(),
                cap: layout.req_cap as usize,
            });
        }
        let deadline = timeout.map(|t| (Instant::now(), t));
        self.chan.check_flags()?;
        let slot = self.claim(deadline)?;
        let c = self.chan.ctl(slot);

        // CLAIMED: the slot is ours; fill it in.
        let seq = c.seq().load(Relaxed).wrapping_add(1).max(1);
        c.seq().store(seq, Relaxed);
        c.method().store(method, Relaxed);
        c.req_len().store(request.len() as u32, Relaxed);
        c.attempt().store(0, Relaxed);
        self.chan
            .map
            .copy_in(layout.req_bytes_offset(slot, request.len()), request);

        // CLAIMED → POSTED. Release: the server's acquire CAS sees every field written above.
        // SeqCst: it is the store half of the doorbell's store–load handshake (`ring`).
        if c.transition(st::CLAIMED, st::POSTED, SeqCst).is_err() {
            return Err(ChanError::Protocol(
                "a slot the client had claimed was changed",
            ));
        }
        self.chan.ring();
        // After the post, not before: the CPU number (a vDSO call) is needed only to choose
        // how to wait, and read here it overlaps the server's work instead of delaying it.
        let same_cpu = self.chan.client_note_cpu();
        self.wait_reply(slot, seq, reply, deadline, same_cpu)
    }

    fn wait_reply(
        &self,
        slot: usize,
        seq: u64,
        reply: &mut Vec<u8>,
        deadline: Option<(Instant, Duration)>,
        same_cpu: bool,
    ) -> Result<Reply, ChanError> {
        let c = self.chan.ctl(slot);
        let yield_now = match self.spin.mode {
            SpinMode::Pure => false,
            SpinMode::Yield => true,
            SpinMode::Auto => same_cpu,
        };
        let want = seq as u32;
        let mut spinner = Spinner::new(self.spin.budget);
        // Only the reply line is polled: the request line stays with the server.
        let mut last = c.done().load(Acquire);
        loop {
            if last == want {
                return self.finish(slot, reply);
            }
            if !spinner.spin(yield_now) {
                break;
            }
            let w = c.done().load(Acquire);
            if w != last && w != want {
                // Kicked (or scribbled on): look at the flags.
                if let Err(e) = self.chan.check_flags() {
                    return self.after_flag(slot, want, reply, e);
                }
            }
            last = w;
        }
        loop {
            c.client_waiting().store(1, SeqCst);
            fence(SeqCst);
            let w = c.done().load(Acquire);
            if w == want {
                c.client_waiting().store(0, Relaxed);
                return self.finish(slot, reply);
            }
            if let Err(e) = self.chan.check_flags() {
                c.client_waiting().store(0, Relaxed);
                return self.after_flag(slot, want, reply, e);
            }
            let remaining = match deadline {
                None => None,
                Some((start, t)) => match t.checked_sub(start.elapsed()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        c.client_waiting().store(0, Relaxed);
                        return self.timed_out(slot, reply, t);
                    }
                },
            };
            let woke = futex::wait(c.done(), w, remaining);
            // Woken without the reply while a spare takes the server over (it wakes every
            // sleeper at its claim, before its rollback, ARCHITECTURE.md §6): the reply is a
            // re-run away, on the server's own CPU: spin for it (bounded), so that it finds
            // this client awake instead of needing one more cross-process wake-up.
            // `client_waiting` is 0 meanwhile, so the reply's publisher skips the futex wake;
            // the loop's top sets it again (and re-checks `done`) before any sleep. Not after
            // the kernel's wake: the kernel's recovery runs on the clients' CPUs, and a
            // spinning client lost the reply's CPU to it and to the next standby's fork
            // (MEASUREMENTS.md "Recovery, wave 8").
            if woke == futex::FutexWait::Woken
                && !self.spin.budget.is_zero()
                && self.chan.flags().load(Acquire) & FLAG_TAKEOVER != 0
            {
                c.client_waiting().store(0, Relaxed);
                // Never past the call's deadline.
                let mut spinner =
                    Spinner::new(remaining.map_or(RECOVERY_SPIN, |r| r.min(RECOVERY_SPIN)));
                // Yielding between polls, whatever the channel's mode: whoever else wants this
                // CPU (the kernel, another client) gets it at once.
                while spinner.spin(true) {
                    let d = c.done().load(Acquire);
                    if d == want {
                        return self.finish(slot, reply);
                    }
                    if d != w {
                        break; // kicked: the flags are checked at the loop's top
                    }
                }
            }
        }
    }

    /// A flag ended the wait. The kernel settles every slot a dead server had taken (a reply,
    /// or [`Status::Interrupted`]) and fails every POSTED one *before* it marks the channel
    /// DEAD, so a call that sees DEAD finds its answer in its slot, or its request still POSTED
    /// (posted after the kernel's pass): it withdraws that one (POSTED → FREE: it never runs)
    /// and returns the flag's error at once. Only a slot the kernel is settling at that very
    /// instant (REPLIED, announcement on its way), or one a kernel that died midway left
    /// TAKEN, is waited for, on its `done` word and bounded by [`DEAD_SETTLE_GRACE`].
    fn after_flag(
        &self,
        slot: usize,
        want: u32,
        reply: &mut Vec<u8>,
        e: ChanError,
    ) -> Result<Reply, ChanError> {
        if matches!(e, ChanError::Dead) {
            let c = self.chan.ctl(slot);
            let start = Instant::now();
            loop {
                let d = c.done().load(Acquire);
                if d == want {
                    return self.finish(slot, reply);
                }
                let w = c.state().load(Acquire);
                match w & st::MASK {
                    st::POSTED => {
                        if c.free_if_still(w) {
                            return Err(e);
                        }
                    }
                    // Answered (the acquire load of REPLIED makes the answer visible): the
                    // announcement may still be on its way.
                    st::REPLIED => return self.finish(slot, reply),
                    st::TAKEN if start.elapsed() < DEAD_SETTLE_GRACE => {
                        futex::wait(c.done(), d, Some(Duration::from_millis(5)));
                    }
                    _ => return Err(e),
                }
            }
        }
        Err(e)
    }

    /// REPLIED: copy status and reply out, then REPLIED → FREE.
    fn finish(&self, slot: usize, reply: &mut Vec<u8>) -> Result<Reply, ChanError> {
        let layout = &self.chan.layout;
        let c = self.chan.ctl(slot);
        // These were written before the `done` store our acquire load observed.
        let status = c.status().load(Relaxed);
        let attempt = c.reply_attempt().load(Relaxed);
        let len = c.reply_len().load(Relaxed) as usize;
        let result = if len > layout.reply_cap as usize {
            Err(ChanError::ReplyTooLarge {
                len,
                cap: layout.reply_cap as usize,
            })
        } else {
            match Status::from_wire(status) {
                None => Err(ChanError::BadStatus(status)),
                Some(status) => {
                    let off = layout.reply_bytes_offset(slot, len);
                    if len > INLINE_REPLY_MAX {
                        // A long reply's lines are in the server's cache: ask for all of them
                        // at once, so the copy's misses overlap (ARCHITECTURE.md §4).
                        self.chan.map.prefetch_read(off, len);
                    }
                    self.chan.map.copy_out(off, len, reply);
                    Ok(Reply { status, attempt })
                }
            }
        };
        // REPLIED → FREE (epoch raised). Fails only if a peer scribbled on our slot (it
        // announced a reply without the REPLIED transition); then the slot is not reused and
        // the call is a protocol error.
        if c.release_replied() {
            self.hint.store(slot, Relaxed);
            result
        } else {
            Err(ChanError::Protocol(
                "the server announced a reply on a slot that is not REPLIED",
            ))
        }
    }

    /// The deadline passed while waiting on `slot`.
    fn timed_out(
        &self,
        slot: usize,
        reply: &mut Vec<u8>,
        after: Duration,
    ) -> Result<Reply, ChanError> {
        let c = self.chan.ctl(slot);
        loop {
            let w = c.state().load(Acquire);
            match w & st::MASK {
                // POSTED → FREE: withdrawn before any server took it; it never runs.
                st::POSTED => {
                    if c.free_if_still(w) {
                        return Err(ChanError::Timeout {
                            after,
                            retracted: true,
                        });
                    }
                }
                // The server has it: leave the slot to be reclaimed once REPLIED.
                st::TAKEN => {
                    self.abandoned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(slot);
                    self.n_abandoned.fetch_add(1, Relaxed);
                    return Err(ChanError::Timeout {
                        after,
                        retracted: false,
                    });
                }
                st::REPLIED => return self.finish(slot, reply),
                _ => {
                    return Err(ChanError::Protocol(
                        "slot left POSTED/TAKEN for a non-reply state",
                    ));
                }
            }
        }
    }

    /// FREE → CLAIMED on some slot (or REPLIED → CLAIMED on an abandoned one).
    fn claim(&self, deadline: Option<(Instant, Duration)>) -> Result<usize, ChanError> {
        let n = self.chan.nslots;
        let mut rounds = 0u32;
        loop {
            let h = self.hint.load(Relaxed).min(n - 1);
            for k in 0..n {
                let i = if h + k >= n { h + k - n } else { h + k };
                let c = self.chan.ctl(i);
                let w = c.state().load(Relaxed);
                if w & st::MASK == st::FREE
                    && c.state()
                        .compare_exchange(w, st::with(w, st::CLAIMED), Acquire, Relaxed)
                        .is_ok()
                {
                    return Ok(i);
                }
            }
            if self.n_abandoned.load(Relaxed) > 0 {
                if let Some(i) = self.reclaim_abandoned() {
                    return Ok(i);
                }
            }
            self.chan.check_flags()?;
            if let Some((start, t)) = deadline {
                if start.elapsed() >= t {
                    return Err(ChanError::Timeout {
                        after: t,
                        retracted: true,
                    });
                }
            }
            // Every slot is busy: back off (spin, then yield, then short sleeps).
            rounds = rounds.saturating_add(1);
            if rounds < 64 {
                std::hint::spin_loop();
            } else if rounds < 256 {
                rustix::thread::sched_yield();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Takes over the slots an earlier user of this channel left behind (a server's previous
    /// incarnation that died inside a call through it). A CLAIMED slot (it died while filling
    /// it in) is freed: only a client writes a CLAIMED slot, and that client is gone. Every
    /// other slot that is not FREE is treated as abandoned and reclaimed once it is REPLIED
    /// (the kernel fails the POSTED ones of a dead caller; a TAKEN one is answered by its
    /// server). Call it before the first call, once the earlier user can no longer run.
    pub fn adopt_slots(&self) {
        let mut list = self.abandoned.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..self.chan.nslots {
            let c = self.chan.ctl(i);
            let w = c.state().load(Acquire);
            if w & st::MASK == st::CLAIMED && c.free_if_still(w) {
                continue;
            }
            let w = c.state().load(Acquire);
            if w & st::MASK != st::FREE && !list.contains(&i) {
                list.push(i);
                self.n_abandoned.fetch_add(1, Relaxed);
            }
        }
    }

    fn reclaim_abandoned(&self) -> Option<usize> {
        let mut list = self.abandoned.lock().unwrap_or_else(|e| e.into_inner());
        let pos = list.iter().position(|&i| {
            self.chan
                .ctl(i)
                .transition(st::REPLIED, st::CLAIMED, Acquire)
                .is_ok()
        })?;
        self.n_abandoned.fetch_sub(1, Relaxed);
        Some(list.swap_remove(pos))
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A request the server took (POSTED → TAKEN), with its metadata copied out of shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Slot index: pass it to [`ServerChannel::write_reply`] and [`ServerChannel::publish`].
    pub slot: usize,
    /// The client's request number for this slot (recovery matches it against the undo log).
    pub seq: u64,
    /// Method number, as the client wrote it (unvalidated: the dispatcher checks it).
    pub method: u32,
    /// Re-execution count (raised by the kernel at every re-post after a rollback).
    pub attempt: u32,
    /// Request length, `<= req_cap` (0 when `malformed`).
    pub len: usize,
    /// The client wrote a length beyond `req_cap`: answer [`Status::Malformed`].
    pub malformed: bool,
}

/// The server's view of a channel. Cheap to scan: the runtime holds a `Vec<ServerChannel>` and
/// one [`Doorbell`](crate::Doorbell).
#[derive(Debug)]
pub struct ServerChannel {
    chan: Chan,
    /// Where the next scan starts (round robin, so no slot starves).
    cursor: AtomicUsize,
    /// Per slot, the length of the last reply this server wrote there (private memory): how
    /// much of the reply area [`Self::try_take`] claims ahead of the reply (see there).
    last_reply: Box<[AtomicU32]>,
}

impl ServerChannel {
    /// Maps a channel memfd, validating it.
    pub fn map(fd: impl AsFd) -> Result<Self, ChanError> {
        let chan = Chan::map(fd.as_fd())?;
        let last_reply = (0..chan.nslots).map(|_| AtomicU32::new(0)).collect();
        Ok(Self {
            chan,
            cursor: AtomicUsize::new(0),
            last_reply,
        })
    }

    /// The channel's layout.
    pub fn layout(&self) -> ChannelLayout {
        self.chan.layout
    }

    /// Claims, with a `prefetchw` of each (where the CPU has it) and then one plain store per
    /// cache line, the lines of slot `i`'s reply area that its last reply used, right after
    /// the slot was TAKEN: the client read them when it took
    /// that reply, so each store needs an ownership transfer, and issued here they travel
    /// while the handler runs instead of stalling the reply's publication (the store buffer
    /// drains at the REPLIED CAS). The reply area belongs to the server while TAKEN and
    /// nothing reads it before the reply written over it is published: a request that dies
    /// before its commit is re-executed and writes its reply again (ARCHITECTURE.md §4).
    #[inline]
    fn claim_reply_lines(&self, i: usize) {
        let n = self.last_reply[i].load(Relaxed) as usize;
        if n <= INLINE_REPLY_MAX {
            return;
        }
        let base = self.chan.layout.reply_bytes_offset(i, n);
        let len = n.min(self.chan.layout.reply_cap as usize);
        let end = base + len;
        // Every ownership request at once (`prefetchw` where the CPU has it), then one store
        // per line, which keeps the claim whatever the hint did.
        self.chan.map.prefetch_write(base, len);
        let mut off = base;
        while off < end {
            self.chan.map.u32_at(off).store(0, Relaxed);
            off += LINE;
        }
    }

    /// Generation written by the kernel.
    pub fn generation(&self) -> u64 {
        self.chan.generation().load(Acquire)
    }

    /// Whether the channel was marked DEAD or REVOKED (the server should stop serving it).
    pub fn is_closed(&self) -> bool {
        self.chan.flags().load(Acquire) & (FLAG_DEAD | FLAG_REVOKED) != 0
    }

    /// The mapped channel, for the doorbell's sleep (bell line).
    #[inline]
    pub(crate) fn raw(&self) -> &Chan {
        &self.chan
    }

    /// Whether some slot is POSTED. Loads every state word (the doorbell's sleep re-checks it
    /// after announcing that the server sleeps).
    #[inline]
    pub fn has_posted(&self) -> bool {
        (0..self.chan.nslots)
            .any(|i| self.chan.ctl(i).state().load(Relaxed) & st::MASK == st::POSTED)
    }

    /// Takes one POSTED request (POSTED → TAKEN, acquire) without copying its bytes; see
    /// [`Self::read_request`] and [`Self::take_into`].
    #[inline]
    pub fn try_take(&self) -> Option<Taken> {
        let n = self.chan.nslots;
        let start = self.cursor.load(Relaxed).min(n - 1);
        for k in 0..n {
            let i = if start + k >= n {
                start + k - n
            } else {
                start + k
            };
            let c = self.chan.ctl(i);
            let s = c.state();
            let w = s.load(Relaxed);
            if w & st::MASK != st::POSTED {
                continue;
            }
            // POSTED → TAKEN. A failure means the client withdrew it or the kernel kicked the
            // word; either way not ours now, go on.
            if s.compare_exchange(w, st::with(w, st::TAKEN), Acquire, Relaxed)
                .is_err()
            {
                continue;
            }
            self.cursor
                .store(if i + 1 == n { 0 } else { i + 1 }, Relaxed);
            self.claim_reply_lines(i);
            // Copy every field once: the client can still rewrite them.
            let raw_len = c.req_len().load(Relaxed);
            let malformed = raw_len > self.chan.layout.req_cap;
            return Some(Taken {
                slot: i,
                seq: c.seq().load(Relaxed),
                method: c.method().load(Relaxed),
                attempt: c.attempt().load(Relaxed),
                len: if malformed { 0 } else { raw_len as usize },
                malformed,
            });
        }
        None
    }

    /// The slots that are TAKEN, with their fields copied as [`Self::try_take`] copies them.
    /// For a server incarnation that inherits the slots its failed predecessor took (policy
    /// `companion`: the kernel leaves them TAKEN, and the successor answers them); meaningful
    /// only while no other incarnation of the server can run.
    pub fn taken_slots(&self) -> Vec<Taken> {
        (0..self.chan.nslots)
            .filter_map(|i| {
                let c = self.chan.ctl(i);
                if c.state().load(Acquire) & st::MASK != st::TAKEN {
                    return None;
                }
                let raw_len = c.req_len().load(Relaxed);
                let malformed = raw_len > self.chan.layout.req_cap;
                Some(Taken {
                    slot: i,
                    seq: c.seq().load(Relaxed),
                    method: c.method().load(Relaxed),
                    attempt: c.attempt().load(Relaxed),
                    len: if malformed { 0 } else { raw_len as usize },
                    malformed,
                })
            })
            .collect()
    }

    /// Copies the request of `taken` into `buf` (its capacity reused). Leaves `buf` empty for a
    /// malformed request or a `Taken` that does not fit this channel.
    #[inline]
    pub fn read_request(&self, taken: &Taken, buf: &mut Vec<u8>) {
        if taken.malformed
            || taken.slot >= self.chan.nslots
            || taken.len > self.chan.layout.req_cap as usize
        {
            buf.clear();
            return;
        }
        self.chan.map.copy_out(
            self.chan.layout.req_bytes_offset(taken.slot, taken.len),
            taken.len,
            buf,
        );
    }

    /// [`Self::try_take`] then [`Self::read_request`]: no allocation once `buf` has grown.
    /// Always inlined: returned through memory, its `Taken` (written by 8- and 4-byte stores)
    /// was read back at once by 16-byte loads in the serve loop, a store-forwarding stall on
    /// every call.
    #[inline(always)]
    pub fn take_into(&self, buf: &mut Vec<u8>) -> Option<Taken> {
        let t = self.try_take()?;
        self.read_request(&t, buf);
        Some(t)
    }

    /// Writes status and reply into a TAKEN slot. Does not publish: the transactional runtime
    /// puts its commit point between this and [`Self::publish`].
    ///
    /// A reply longer than `reply_cap` is replaced by an empty reply with
    /// [`Status::TooLarge`] (still to be published) and reported as `ReplyTooLarge`.
    #[inline]
    pub fn write_reply(&self, slot: usize, status: Status, bytes: &[u8]) -> Result<(), ChanError> {
        let c = self.chan.check_slot(slot)?;
        let w = c.state().load(Relaxed);
        if w & st::MASK != st::TAKEN {
            return Err(ChanError::WrongState {
                slot,
                found: SlotState::from_word(w),
            });
        }
        let cap = self.chan.layout.reply_cap as usize;
        if bytes.len() > cap {
            self.set_reply_fields(c, slot, Status::TooLarge, 0);
            return Err(ChanError::ReplyTooLarge {
                len: bytes.len(),
                cap,
            });
        }
        self.chan.map.copy_in(
            self.chan.layout.reply_bytes_offset(slot, bytes.len()),
            bytes,
        );
        self.set_reply_fields(c, slot, status, bytes.len());
        Ok(())
    }

    /// A reply to TAKEN slot `slot` encoded straight into the slot: the caller appends its
    /// bytes ([`SlotReply::put`]) as its encoder produces them, and [`SlotReply::finish`]
    /// writes status and length as [`Self::write_reply`] does. A reply of at most
    /// [`INLINE_REPLY_MAX`] bytes is gathered in the writer and lands on the reply line; a longer
    /// one goes to the reply area as it is produced, so it is copied once, not first into a
    /// buffer of the server's and then into the slot. Nothing is published: as with
    /// `write_reply`, the commit point goes between `finish` and [`Self::publish`].
    ///
    /// # Errors
    /// `BadSlot` or `WrongState` (the slot is not TAKEN), as `write_reply`.
    #[inline]
    pub fn reply_to(&self, slot: usize) -> Result<SlotReply<'_>, ChanError> {
        let c = self.chan.check_slot(slot)?;
        let w = c.state().load(Relaxed);
        if w & st::MASK != st::TAKEN {
            return Err(ChanError::WrongState {
                slot,
                found: SlotState::from_word(w),
            });
        }
        Ok(SlotReply {
            chan: self,
            slot,
            len: 0,
            overflow: false,
            small: [0; INLINE_REPLY_MAX],
        })
    }

    /// Status, attempt copy and length of a reply whose bytes are in place (`write_reply`,
    /// `SlotReply::finish`).
    #[inline]
    fn set_reply_fields(&self, c: Ctl<'_>, slot: usize, status: Status, len: usize) {
        c.reply_attempt().store(c.attempt().load(Relaxed), Relaxed);
        self.last_reply[slot].store(len as u32, Relaxed);
        c.status().store(status.to_wire(), Relaxed);
        c.reply_len().store(len as u32, Relaxed);
    }

    /// TAKEN → REPLIED (release), then announces the reply on the reply line and wakes the
    /// client if it sleeps.
    #[inline]
    pub fn publish(&self, slot: usize) -> Result<(), ChanError> {
        let c = self.chan.check_slot(slot)?;
        // Read before the transition: once REPLIED the slot is the client's again.
        let seq = c.seq().load(Relaxed);
        if let Err(w) = c.transition(st::TAKEN, st::REPLIED, Release) {
            return Err(ChanError::WrongState {
                slot,
                found: SlotState::from_word(w),
            });
        }
        c.announce(seq);
        Ok(())
    }

    /// [`Self::write_reply`] then [`Self::publish`], for servers without a commit point. A
    /// too-large reply is published as [`Status::TooLarge`] and still reported as an error.
    pub fn reply(&self, slot: usize, status: Status, bytes: &[u8]) -> Result<(), ChanError> {
        let written = self.write_reply(slot, status, bytes);
        if let Err(e @ ChanError::WrongState { .. } | e @ ChanError::BadSlot(_)) = written {
            return Err(e);
        }
        self.publish(slot)?;
        written
    }
}

/// A reply being encoded straight into a TAKEN slot ([`ServerChannel::reply_to`]).
///
/// The slot's reply bytes are written through raw pointers as they come (never through a
/// reference: the client can write the same memory), so a hostile client can only garble its
/// own reply. Dropping it without [`Self::finish`] leaves the slot's reply fields as they were
/// (a handler that faults mid-encoding is re-run, or answered by the kernel).
#[derive(Debug)]
pub struct SlotReply<'a> {
    chan: &'a ServerChannel,
    slot: usize,
    /// Bytes appended so far (past `reply_cap` only when `overflow`).
    len: usize,
    /// More than `reply_cap` bytes were appended: the bytes past it were dropped.
    overflow: bool,
    /// A reply of at most `INLINE_REPLY_MAX` bytes, gathered here until its length is known.
    small: [u8; INLINE_REPLY_MAX],
}

impl SlotReply<'_> {
    /// Bytes appended so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was appended yet.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops what was appended (the encoder starts over).
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
    }

    /// Appends `bytes` to the reply.
    #[inline]
    pub fn put(&mut self, bytes: &[u8]) {
        let layout = &self.chan.chan.layout;
        let end = self.len + bytes.len();
        if self.overflow || end > layout.reply_cap as usize {
            self.overflow = true;
            self.len = end;
            return;
        }
        if end <= INLINE_REPLY_MAX {
            self.small[self.len..end].copy_from_slice(bytes);
            self.len = end;
            return;
        }
        // A long reply lives in the reply area (its offset does not depend on the length
        // beyond "long"); what was gathered goes there first.
        let area = layout.reply_bytes_offset(self.slot, INLINE_REPLY_MAX + 1);
        if self.len <= INLINE_REPLY_MAX {
            self.chan.chan.map.copy_in(area, &self.small[..self.len]);
        }
        self.chan.chan.map.copy_in(area + self.len, bytes);
        self.len = end;
    }

    /// Writes status and length (and the bytes of a short reply) into the slot, as
    /// [`ServerChannel::write_reply`] does; publishes nothing. A reply longer than
    /// `reply_cap` is replaced by an empty one with [`Status::TooLarge`] and reported as
    /// `ReplyTooLarge`.
    ///
    /// # Errors
    /// `ReplyTooLarge` as said; `WrongState` if the slot is no longer TAKEN.
    #[inline]
    pub fn finish(self, status: Status) -> Result<(), ChanError> {
        self.finish_here(status)
    }

    /// [`SlotReply::finish`] without moving the reply: for a caller that holds it in place
    /// (the serve loop, whose handler wrote it through a `&mut dyn` writer) and drops it
    /// right after. Moving it (48 bytes and its inline part) read back the length and flag
    /// stores the handler had just made, a store-forwarding stall on every call.
    ///
    /// # Errors
    /// As [`SlotReply::finish`].
    #[inline]
    pub fn finish_here(&self, status: Status) -> Result<(), ChanError> {
        let sc = self.chan;
        let c = sc.chan.check_slot(self.slot)?;
        let w = c.state().load(Relaxed);
        if w & st::MASK != st::TAKEN {
            return Err(ChanError::WrongState {
                slot: self.slot,
                found: SlotState::from_word(w),
            });
        }
        if self.overflow {
            sc.set_reply_fields(c, self.slot, Status::TooLarge, 0);
            return Err(ChanError::ReplyTooLarge {
                len: self.len,
                cap: sc.chan.layout.reply_cap as usize,
            });
        }
        if self.len <= INLINE_REPLY_MAX {
            sc.chan.map.copy_in(
                sc.chan.layout.reply_bytes_offset(self.slot, self.len),
                &self.small[..self.len],
            );
        }
        sc.set_reply_fields(c, self.slot, status, self.len);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel
// ---------------------------------------------------------------------------------------------

/// A snapshot of one slot, for recovery decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Slot index.
    pub slot: usize,
    /// Decoded state.
    pub state: SlotState,
    /// Request number.
    pub seq: u64,
    /// Re-execution count.
    pub attempt: u32,
}

/// What recovery does with one TAKEN slot ([`KernelChannel::settle_taken`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Publish the reply the dead incarnation wrote and committed
    /// ([`KernelChannel::publish_written`]).
    PublishWritten,
    /// Re-execute the request in the next incarnation ([`KernelChannel::repost`]).
    Repost,
    /// Answer it with this status ([`KernelChannel::fail`]).
    Fail(Status),
}

/// The kernel's view of a channel: recovery and administration. The slot operations are meant
/// for when no incarnation of the server can run (confirmed dead or stopped); each is a CAS
/// against a snapshot, so a concurrent change (a client withdrawing a request) is detected
/// and reported as `false` instead of being overwritten.
#[derive(Debug)]
pub struct KernelChannel {
    chan: Chan,
}

impl KernelChannel {
    /// Maps a channel memfd, validating it.
    pub fn map(fd: impl AsFd) -> Result<Self, ChanError> {
        Ok(Self {
            chan: Chan::map(fd.as_fd())?,
        })
    }

    /// The channel's layout.
    pub fn layout(&self) -> ChannelLayout {
        self.chan.layout
    }

    /// Snapshot of one slot, `None` if out of range.
    pub fn snapshot(&self, slot: usize) -> Option<SlotSnapshot> {
        let c = self.chan.check_slot(slot).ok()?;
        let w = c.state().load(Acquire);
        Some(SlotSnapshot {
            slot,
            state: SlotState::from_word(w),
            seq: c.seq().load(Relaxed),
            attempt: c.attempt().load(Relaxed),
        })
    }

    /// Snapshots of every slot.
    pub fn slots(&self) -> impl Iterator<Item = SlotSnapshot> + '_ {
        (0..self.chan.nslots).filter_map(|i| self.snapshot(i))
    }

    /// CAS helper: state in `from` and seq == `expected_seq` → `write` → state `to`.
    fn kernel_cas(
        &self,
        slot: usize,
        expected_seq: u64,
        from: &[u32],
        to: u32,
        write: impl FnOnce(Ctl<'_>),
    ) -> bool {
        let Ok(c) = self.chan.check_slot(slot) else {
            return false;
        };
        let w = c.state().load(Acquire);
        if !from.contains(&(w & st::MASK)) || c.seq().load(Relaxed) != expected_seq {
            return false;
        }
        write(c);
        // The epoch in `w` makes this fail if the slot went through FREE meanwhile.
        c.state()
            .compare_exchange(w, st::with(w, to), SeqCst, Relaxed)
            .is_ok()
    }

    /// TAKEN → POSTED with `attempt + 1`: the request is re-executed by the next incarnation
    /// (ring or notify the server's doorbell afterwards if it is already running).
    pub fn repost(&self, slot: usize, expected_seq: u64) -> bool {
        self.kernel_cas(slot, expected_seq, &[st::TAKEN], st::POSTED, |c| {
            c.attempt().fetch_add(1, Relaxed);
        })
    }

    /// POSTED or TAKEN → REPLIED with `status` and an empty reply; wakes the client.
    pub fn fail(&self, slot: usize, expected_seq: u64, status: Status) -> bool {
        let ok = self.kernel_cas(
            slot,
            expected_seq,
            &[st::POSTED, st::TAKEN],
            st::REPLIED,
            |c| {
                c.status().store(status.to_wire(), Relaxed);
                c.reply_len().store(0, Relaxed);
                c.reply_attempt().store(c.attempt().load(Relaxed), Relaxed);
            },
        );
        if ok {
            self.announce(slot, expected_seq);
        }
        ok
    }

    /// Announces a reply the kernel just made REPLIED, and wakes the client.
    fn announce(&self, slot: usize, seq: u64) {
        let c = self.chan.ctl(slot);
        c.done().swap(seq as u32, SeqCst);
        futex::wake_all(c.done());
    }

    /// [`Self::fail`] that also records how many times the request ran (the reply's attempt =
    /// `runs - 1`, what the client reports in `Aborted`): for a policy that does not re-post a
    /// faulting request but counts its runs itself (companion).
    pub fn fail_after(&self, slot: usize, expected_seq: u64, status: Status, runs: u32) -> bool {
        let ok = self.kernel_cas(
            slot,
            expected_seq,
            &[st::POSTED, st::TAKEN],
            st::REPLIED,
            |c| {
                c.status().store(status.to_wire(), Relaxed);
                c.reply_len().store(0, Relaxed);
                c.reply_attempt().store(runs.saturating_sub(1), Relaxed);
            },
        );
        if ok {
            self.announce(slot, expected_seq);
        }
        ok
    }

    /// TAKEN → REPLIED for a reply the dead incarnation wrote and committed but did not
    /// publish; wakes the client.
    pub fn publish_written(&self, slot: usize, expected_seq: u64) -> bool {
        let ok = self.kernel_cas(slot, expected_seq, &[st::TAKEN], st::REPLIED, |_| {});
        if ok {
            self.announce(slot, expected_seq);
        }
        ok
    }

    /// Recovery's settling of this channel once no incarnation of its server can run: the
    /// one loop of the kernel's recovery and of a spare's takeover (ARCHITECTURE.md §6). Wakes
    /// every sleeping client ([`Self::wake_waiters`]: the crash point "after REPLIED, before
    /// the wake"), then asks `decide` what to do with each TAKEN slot — its action and a note
    /// of the caller's (what it needs for its bookkeeping) — and does it, a CAS against the
    /// snapshot, so a slot the client withdrew meanwhile is left alone. Returns the slots
    /// whose CAS won, with the action and the note.
    pub fn settle_taken<T>(
        &self,
        mut decide: impl FnMut(&SlotSnapshot) -> (Settle, T),
    ) -> Vec<(SlotSnapshot, Settle, T)> {
        self.wake_waiters();
        let mut done = Vec::new();
        for snap in self.slots() {
            if snap.state != SlotState::Taken {
                continue;
            }
            let (action, note) = decide(&snap);
            let won = match action {
                Settle::PublishWritten => self.publish_written(snap.slot, snap.seq),
                Settle::Repost => self.repost(snap.slot, snap.seq),
                Settle::Fail(status) => self.fail(snap.slot, snap.seq, status),
            };
            if won {
                done.push((snap, action, note));
            }
        }
        done
    }

    /// Finishes every publish the dead incarnation left half done and wakes every client
    /// sleeping on a slot of this channel. Recovery calls it once the dead incarnation can no
    /// longer run: a server killed between its REPLIED transition and its announcement on the
    /// reply line (inside [`ServerChannel::publish`]) leaves a REPLIED slot whose client waits
    /// for `done` forever, and one killed before its `futex_wake` leaves the client asleep.
    /// Returns how many clients were woken.
    pub fn wake_waiters(&self) -> usize {
        let mut n = 0;
        for i in 0..self.chan.nslots {
            let c = self.chan.ctl(i);
            let w = c.state().load(Acquire);
            if w & st::MASK == st::REPLIED {
                let seq = c.seq().load(Relaxed) as u32;
                // A kick or a newer announcement is never undone: only a slot still showing
                // an older value is completed.
                let d = c.done().load(Acquire);
                if d != seq {
                    let _ = c.done().compare_exchange(d, seq, SeqCst, Relaxed);
                }
            }
            if c.client_waiting().load(SeqCst) != 0 {
                n += futex::wake_all(c.done());
            }
        }
        n
    }

    /// Current generation.
    pub fn generation(&self) -> u64 {
        self.chan.generation().load(Acquire)
    }

    /// Records the generation of the incarnation now serving the channel.
    pub fn set_generation(&self, generation: u64) {
        self.chan.generation().store(generation, Release);
    }

    /// Sets or clears [`FLAG_TAKEOVER`] (a spare, at its claim and after its first batch; the
    /// kernel clears it when it recovers itself).
    pub fn set_takeover(&self, on: bool) {
        if on {
            self.chan.flags().fetch_or(FLAG_TAKEOVER, SeqCst);
        } else {
            self.chan.flags().fetch_and(!FLAG_TAKEOVER, SeqCst);
        }
    }

    /// Marks the channel DEAD: every waiting and future call fails with [`ChanError::Dead`].
    pub fn mark_dead(&self) {
        self.set_flag(FLAG_DEAD);
    }

    /// Marks the channel REVOKED: every waiting and future call fails with
    /// [`ChanError::Revoked`].
    pub fn mark_revoked(&self) {
        self.set_flag(FLAG_REVOKED);
    }

    /// The raw flag word ([`crate::FLAG_DEAD`], [`crate::FLAG_REVOKED`]).
    pub fn flags(&self) -> u32 {
        self.chan.flags().load(Acquire)
    }

    fn set_flag(&self, flag: u32) {
        self.chan.flags().fetch_or(flag, SeqCst);
        // Kick: raise every state word's epoch (ABA protection of the kernel's CAS), and change
        // every reply line's `done` to a value that is not the awaited reply, so that a client
        // about to sleep on the old value returns and sees the flag; then wake whoever sleeps.
        // A `done` that already announces the slot's current request is left alone: that
        // reply is there to be read.
        for i in 0..self.chan.nslots {
            let c = self.chan.ctl(i);
            c.state().fetch_add(st::EPOCH_ONE, SeqCst);
            let seq = c.seq().load(Relaxed) as u32;
            let d = c.done().load(Acquire);
            if d != seq {
                // Differs from `seq` (bit 31) and from `seq - 1` (an odd difference).
                let _ = c
                    .done()
                    .compare_exchange(d, seq ^ KICK_BIT, SeqCst, Relaxed);
            }
            futex::wake_all(c.done());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply encoded straight into the slot (`reply_to`, appended in pieces of every size)
    /// reaches the client exactly as the same bytes written with `write_reply` do, inline or
    /// in the reply area, across the inline limit and up to the reply limit; one byte past the
    /// limit is answered `TooLarge` with an empty reply, and the slot goes on serving.
    #[test]
    fn a_reply_encoded_into_the_slot_arrives_as_written() {
        let layout = ChannelLayout {
            nslots: 1,
            req_cap: 64,
            reply_cap: 1024,
        };
        let fd = create_channel("slot-reply", layout).unwrap();
        let server = ServerChannel::map(&fd).unwrap();
        let client = ClientChannel::map(&fd).unwrap();
        let lens = [0usize, 1, 43, 44, 45, 100, 1000, 1024, 1025, 7, 1024];
        let body = |i: usize, len: usize| -> Vec<u8> {
            (0..len).map(|k| (k * 7 + i * 13) as u8).collect()
        };
        let caller = std::thread::spawn(move || {
            let mut reply = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                let r = client
                    .call(1, &[i as u8], &mut reply, Some(Duration::from_secs(30)))
                    .unwrap();
                if len > 1024 {
                    assert_eq!(r.status, Status::TooLarge, "reply {i}");
                    assert!(reply.is_empty(), "reply {i}");
                } else {
                    assert_eq!(r.status, Status::Ok, "reply {i}");
                    assert_eq!(reply, body(i, len), "reply {i} ({len} bytes)");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let t = loop {
                if let Some(t) = server.take_into(&mut buf) {
                    break t;
                }
                assert!(Instant::now() < deadline, "request {i} never came");
                std::thread::yield_now();
            };
            assert_eq!(buf, [i as u8]);
            let bytes = body(i, len);
            let mut out = server.reply_to(t.slot).unwrap();
            // A false start, cleared: only what follows is the reply.
            out.put(&[0xee; 50]);
            out.clear();
            // In pieces of 1, 2, 3, ... bytes, so that every piece size meets the inline limit.
            let mut at = 0;
            let mut piece = 1;
            while at < len {
                let end = (at + piece).min(len);
                out.put(&bytes[at..end]);
                at = end;
                piece += 1;
            }
            assert_eq!(out.len(), len);
            let r = out.finish(Status::Ok);
            if len > 1024 {
                assert!(matches!(r, Err(ChanError::ReplyTooLarge { .. })), "{r:?}");
            } else {
                r.unwrap();
            }
            server.publish(t.slot).unwrap();
        }
        caller.join().unwrap();
        // Not TAKEN any more: no writer.
        assert!(matches!(
            server.reply_to(0),
            Err(ChanError::WrongState { .. })
        ));
    }

    /// `try_take` claims the reply-area lines of the slot's last reply (one store each, to
    /// start their ownership transfers while the handler runs), only those, and the replies
    /// written over them, shorter or longer, arrive intact.
    #[test]
    fn take_claims_the_lines_of_the_last_reply_and_replies_stay_intact() {
        let layout = ChannelLayout {
            nslots: 1,
            req_cap: 64,
            reply_cap: 1024,
        };
        let fd = create_channel("claim", layout).unwrap();
        let server = ServerChannel::map(&fd).unwrap();
        let client = ClientChannel::map(&fd).unwrap();
        let lens = [1000usize, 300, 1000, 10, 700];
        let caller = std::thread::spawn(move || {
            let mut reply = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                let r = client
                    .call(1, &[i as u8], &mut reply, Some(Duration::from_secs(30)))
                    .unwrap();
                assert_eq!(r.status, Status::Ok);
                assert_eq!(reply, vec![0xa0 + i as u8; len], "reply {i}");
            }
        });
        let area = layout.reply_bytes_offset(0, INLINE_REPLY_MAX + 1);
        let word = |line: usize| server.chan.map.u32_at(area + line * LINE).load(Relaxed);
        let lines = layout.reply_cap as usize / LINE;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = Vec::new();
        let mut last = 0usize;
        for (i, &len) in lens.iter().enumerate() {
            let before: Vec<u32> = (0..lines).map(word).collect();
            let t = loop {
                if let Some(t) = server.take_into(&mut buf) {
                    break t;
                }
                assert!(Instant::now() < deadline, "request {i} never came");
                std::thread::yield_now();
            };
            // Exactly the lines the last reply used (if it was not inline) are claimed.
            let used = if last > INLINE_REPLY_MAX {
                last.div_ceil(LINE)
            } else {
                0
            };
            for (line, &was) in before.iter().enumerate() {
                let want = if line < used { 0 } else { was };
                assert_eq!(
                    word(line),
                    want,
                    "request {i}: line {line} (last reply {last} B)"
                );
            }
            if i > 0 && used > 0 {
                assert_ne!(
                    before[0], 0,
                    "request {i}: the last reply's bytes were there"
                );
            }
            server
                .reply(t.slot, Status::Ok, &vec![0xa0 + i as u8; len])
                .unwrap();
            last = len;
        }
        caller.join().unwrap();
    }
}
