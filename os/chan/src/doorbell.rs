//! The doorbell: one per server, shared by the server, all its clients and the kernel.
//!
//! A server sleeps on one futex word for all its channels. Clients ring it after posting a
//! request, but only pay for a `futex_wake` system call when the server has announced that it
//! sleeps; the kernel uses the same word to deliver control events (restart, checkpoint,
//! shutdown: their meaning belongs to the runtime, this crate only carries the bits).
//!
//! # Layout (one page, little-endian)
//!
//! | offset | field | written by |
//! | --- | --- | --- |
//! | 0 | `magic: u64` = `"TXIPCDB1"` | kernel, at creation |
//! | 8 | `version: u32` | kernel, at creation |
//! | 12 | `word: AtomicU32` — the server's futex word, bumped by every ring that wakes | clients, kernel |
//! | 16 | `sleeping: AtomicU32` — 1 while the server is (about to be) asleep | server |
//! | 20 | `events: AtomicU32` — pending control events (bit set) | kernel sets, server clears |
//! | 24 | `server_cpu: AtomicU32` — CPU the server last ran on (spin hint) | server |
//! | 28 | `client_cpu: AtomicU32` — CPU the last ringing client ran on (spin hint) | clients |
//!
//! # No lost wake-up (the store–load argument)
//!
//! Client, to post (hot path): `state = POSTED` (SeqCst CAS on the slot) ;
//! `load sleeping` (SeqCst) ; if 1: `word += 1` (release), `futex_wake(word)`.
//!
//! Server, to sleep (slow path): `sleeping = 1` (SeqCst store) ; **fence(SeqCst)** ;
//! `seen = load word` (acquire) ; `still_idle()` (loads every slot state) ; if still idle:
//! `futex_wait(word, seen)`.
//!
//! Each side stores its own flag and then loads the other's — the Dekker pattern, which needs
//! a store–load barrier (release/acquire alone allow both loads to read the old values: x86
//! store buffers do exactly that). In the C++20 model (\[atomics.order\]/4), with S the total
//! order of SeqCst operations and fences:
//!
//! 1. If some load in `still_idle()` (sequenced after the server's fence F) read a state older
//!    than the POSTED CAS P, that load is coherence-ordered before P, so F precedes P in S
//!    (rule 4.3). The server's `sleeping = 1` store is sequenced before F, hence precedes P
//!    and the client's SeqCst load of `sleeping` (sequenced after P) in S: that load reads 1
//!    (or a later value, written by a server that already woke and will scan again). The
//!    client bumps `word` and wakes. Either the server's `seen` already read the bump — then
//!    it synchronises with it (release RMW, acquire load), P happens-before `still_idle()`,
//!    contradiction — or `seen` is older, and `futex_wait(word, seen)` either finds
//!    `word != seen` and returns, or is already queued when `futex_wake` runs (the kernel
//!    compares and enqueues under the bucket lock) and is woken.
//! 2. Otherwise `still_idle()` saw the POSTED state and the server does not sleep.
//!
//! In no interleaving does the server sleep with a POSTED slot it has not seen, whatever
//! orderings `still_idle` uses for its loads (the fence covers them). The client's hot path
//! has no fence: on x86 its SeqCst CAS is the `lock cmpxchg` it needs anyway and the SeqCst load
//! a plain `mov`. The same argument, with `client_waiting` for `sleeping` and the slot state for
//! `word`, covers the client's sleep in `ClientChannel::call` (channel module docs). Kernel
//! events use `events |= bits` (SeqCst) in place of the POSTED CAS and always bump and wake.
//! `tests/loom_handshake.rs` model-checks the handshake and shows that it fails without the
//! barrier.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use crate::ChanError;
use crate::futex::{self, FutexWait};
use crate::mem::{Mapping, check_fd, create_sealed};
use crate::spin::{SpinConfig, SpinMode, Spinner};

/// `b"TXIPCDB1"` as a little-endian `u64`.
pub const DOORBELL_MAGIC: u64 = u64::from_le_bytes(*b"TXIPCDB1");
/// Doorbell layout version.
pub const DOORBELL_VERSION: u32 = 1;
const DOORBELL_SIZE: usize = 4096;

mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const WORD: usize = 12;
    pub const SLEEPING: usize = 16;
    pub const EVENTS: usize = 20;
    pub const SERVER_CPU: usize = 24;
    pub const CLIENT_CPU: usize = 28;
}

const NO_CPU: u32 = u32::MAX;

/// Creates a doorbell memfd (kernel side).
pub fn create_doorbell() -> Result<OwnedFd, ChanError> {
    create_sealed("txipc-doorbell", DOORBELL_SIZE, |m| {
        m.u64_at(off::MAGIC)
            .store(DOORBELL_MAGIC, Ordering::Relaxed);
        m.u32_at(off::VERSION)
            .store(DOORBELL_VERSION, Ordering::Relaxed);
        m.u32_at(off::SERVER_CPU).store(NO_CPU, Ordering::Relaxed);
        m.u32_at(off::CLIENT_CPU).store(NO_CPU, Ordering::Relaxed);
    })
}

/// Why [`Doorbell::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// `still_idle()` returned false: there is work.
    Work,
    /// Control events are pending ([`Doorbell::take_events`] reads and clears them).
    Events,
    /// The timeout expired while idle.
    TimedOut,
}

/// A mapped doorbell. Cheap to share (`Sync`); every party maps its own.
#[derive(Debug)]
pub struct Doorbell {
    map: Mapping,
}

impl Doorbell {
    /// Maps a doorbell memfd, checking size, seals, magic and version.
    pub fn map(fd: impl AsFd) -> Result<Self, ChanError> {
        let fd = fd.as_fd();
        check_fd(fd, "doorbell", DOORBELL_SIZE as u64)?;
        let map = Mapping::map_shared(fd, DOORBELL_SIZE)?;
        let magic = map.u64_at(off::MAGIC).load(Ordering::Relaxed);
        if magic != DOORBELL_MAGIC {
            return Err(ChanError::BadMagic {
                what: "doorbell",
                found: magic,
            });
        }
        let version = map.u32_at(off::VERSION).load(Ordering::Relaxed);
        if version != DOORBELL_VERSION {
            return Err(ChanError::BadVersion {
                what: "doorbell",
                found: version,
                expected: DOORBELL_VERSION,
            });
        }
        Ok(Self { map })
    }

    #[inline]
    fn word(&self) -> &AtomicU32 {
        self.map.u32_at(off::WORD)
    }
    #[inline]
    fn sleeping(&self) -> &AtomicU32 {
        self.map.u32_at(off::SLEEPING)
    }
    #[inline]
    fn events(&self) -> &AtomicU32 {
        self.map.u32_at(off::EVENTS)
    }

    /// Client side: wake the server if it sleeps. Call it after the POSTED transition, which
    /// must be a SeqCst RMW (as in `ClientChannel::call`; any other caller that posts with a
    /// weaker store must issue `fence(SeqCst)` first). See the module docs.
    #[inline]
    pub fn ring(&self) {
        if self.sleeping().load(Ordering::SeqCst) != 0 {
            self.word().fetch_add(1, Ordering::Release);
            futex::wake_all(self.word());
        }
    }

    /// Kernel side: raise control `events` (a non-zero bit set, meaning defined by the
    /// runtime) and wake the server whether it sleeps or not.
    pub fn notify(&self, events: u32) {
        self.events().fetch_or(events, Ordering::SeqCst);
        self.word().fetch_add(1, Ordering::SeqCst);
        futex::wake_all(self.word());
    }

    /// Server side: the pending control events, cleared.
    pub fn take_events(&self) -> u32 {
        self.events().swap(0, Ordering::Acquire)
    }

    /// Pending control events, not cleared.
    pub fn pending_events(&self) -> u32 {
        self.events().load(Ordering::Acquire)
    }

    /// Server side: wait until `still_idle()` returns false ([`Wake::Work`]), control events
    /// are pending ([`Wake::Events`]), or `timeout` expires ([`Wake::TimedOut`]). Spins (see
    /// [`SpinMode::Auto`]) for up to `spin` first, then sleeps on the futex.
    ///
    /// `still_idle` must *load* every slot state the server serves (e.g.
    /// [`crate::ServerChannel::has_posted`]); it is called again after `sleeping` is set and
    /// fenced, which is what rules out a lost wake-up (module docs).
    pub fn wait(
        &self,
        still_idle: impl FnMut() -> bool,
        spin: Duration,
        timeout: Option<Duration>,
    ) -> Wake {
        self.wait_with(
            still_idle,
            SpinConfig {
                mode: SpinMode::Auto,
                budget: spin,
            },
            timeout,
        )
    }

    /// [`Self::wait`] with an explicit spin mode.
    pub fn wait_with(
        &self,
        mut still_idle: impl FnMut() -> bool,
        spin: SpinConfig,
        timeout: Option<Duration>,
    ) -> Wake {
        let start = timeout.map(|_| Instant::now());
        let my_cpu = self.publish_server_cpu();
        let mut spinner = Spinner::new(spin.budget);
        // Pause before the first look: callers come here after a scan found nothing, and an
        // immediate re-scan would pull the slot lines away from a client writing its next
        // request (see `spin`). Correctness does not depend on this phase at all.
        loop {
            let yield_now = match spin.mode {
                SpinMode::Pure => false,
                SpinMode::Yield => true,
                SpinMode::Auto => {
                    self.map.u32_at(off::CLIENT_CPU).load(Ordering::Relaxed) == my_cpu
                }
            };
            if !spinner.spin(yield_now) {
                break;
            }
            if self.pending_events() != 0 {
                return Wake::Events;
            }
            if !still_idle() {
                return Wake::Work;
            }
        }
        loop {
            self.sleeping().store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let seen = self.word().load(Ordering::Acquire);
            if self.pending_events() != 0 {
                self.sleeping().store(0, Ordering::Relaxed);
                return Wake::Events;
            }
            if !still_idle() {
                self.sleeping().store(0, Ordering::Relaxed);
                return Wake::Work;
            }
            let remaining = match (start, timeout) {
                (Some(s), Some(t)) => match t.checked_sub(s.elapsed()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        self.sleeping().store(0, Ordering::Relaxed);
                        return Wake::TimedOut;
                    }
                },
                _ => None,
            };
            let r = futex::wait(self.word(), seen, remaining);
            self.sleeping().store(0, Ordering::Relaxed);
            if r == FutexWait::Woken {
                // We may have migrated while asleep.
                self.publish_server_cpu();
            }
        }
    }

    /// Records the CPU this (server) thread runs on, for the clients' spin policy.
    fn publish_server_cpu(&self) -> u32 {
        let cpu = rustix::thread::sched_getcpu() as u32;
        let w = self.map.u32_at(off::SERVER_CPU);
        if w.load(Ordering::Relaxed) != cpu {
            w.store(cpu, Ordering::Relaxed);
        }
        cpu
    }

    /// Client side: records the calling client's CPU (for the server's spin policy) and
    /// returns whether the server was last seen on the same CPU (spinning would be useless).
    #[inline]
    pub(crate) fn client_note_cpu(&self) -> bool {
        let cpu = rustix::thread::sched_getcpu() as u32;
        let w = self.map.u32_at(off::CLIENT_CPU);
        if w.load(Ordering::Relaxed) != cpu {
            w.store(cpu, Ordering::Relaxed);
        }
        self.map.u32_at(off::SERVER_CPU).load(Ordering::Relaxed) == cpu
    }
}
