//! The doorbell and the server's sleep: how a server waits for work on all its channels.
//!
//! A server sleeps in one `futex_waitv` on several words at once: its **doorbell** (one page
//! shared by the server and the kernel only: control events) and the **bell line** of each of
//! its channels (shared by that channel's one client and the server). A client wakes the
//! server through its own channel's bell line, and only pays for a `futex_wake` system call
//! when the server has announced there that it sleeps.
//!
//! **No word that one client can write decides whether another client is served.** A client
//! reaches its own channel and nothing else: scribbling on its bell line (clearing
//! `server_sleeping`, rewriting the bell word) can only cost it its own wake-ups, or make the
//! server wake for nothing; the doorbell is not given to clients at all. (Before this design
//! every client mapped one shared doorbell with the server's "sleeping" flag, and a client that
//! kept clearing it made every other client's calls time out:
//! `app/txipc/tests/hostile.rs::a_client_scribbling_on_all_it_was_given_delays_no_one`.)
//!
//! # Doorbell layout (one page, little-endian)
//!
//! | offset | field | written by |
//! | --- | --- | --- |
//! | 0 | `magic: u64` = `"TXIPCDB1"` | kernel, at creation |
//! | 8 | `version: u32` (= 2) | kernel, at creation |
//! | 12 | `word: AtomicU32` — futex word, bumped by every [`Doorbell::notify`] | kernel |
//! | 20 | `events: AtomicU32` — pending control events (bit set) | kernel sets, server clears |
//!
//! The channel's bell line (offset 64 of the channel) is in ARCHITECTURE.md §4: `word`,
//! `server_sleeping`, and the CPU hints `server_cpu` and `client_cpu`.
//!
//! # No lost wake-up (the store–load argument)
//!
//! Client, to post (hot path): `state = POSTED` (SeqCst CAS on the slot) ;
//! `load server_sleeping` of its channel (SeqCst) ; if 1: `bell += 1` (release),
//! `futex_wake(bell)`.
//!
//! Server, to sleep (slow path): `server_sleeping = 1` on every channel (SeqCst stores) ;
//! **fence(SeqCst)** ; `seen_i = load bell_i` (acquire) for every channel, and the doorbell's
//! word ; `still_idle()` (loads every slot state and the events) ; if still idle:
//! `futex_waitv([(bell_i, seen_i).., (word, seen)])`.
//!
//! Each side stores its own flag and then loads the other's — the Dekker pattern, which needs
//! a store–load barrier (release/acquire alone allow both loads to read the old values: x86
//! store buffers do exactly that). In the C++20 model (\[atomics.order\]/4), with S the total
//! order of SeqCst operations and fences, for one channel:
//!
//! 1. If some load in `still_idle()` (sequenced after the server's fence F) read a state older
//!    than the POSTED CAS P, that load is coherence-ordered before P, so F precedes P in S
//!    (rule 4.3). The server's `server_sleeping = 1` store is sequenced before F, hence
//!    precedes P and the client's SeqCst load of it (sequenced after P) in S: that load reads
//!    1 (or a later value, written by a server that already woke and will scan again). The
//!    client bumps its bell and wakes. Either the server's `seen` already read the bump — then
//!    it synchronises with it (release RMW, acquire load), P happens-before `still_idle()`,
//!    contradiction — or `seen` is older, and `futex_waitv` either finds `bell != seen` and
//!    returns, or is already queued on that bell when `futex_wake` runs (the kernel compares
//!    and enqueues each word under its bucket lock) and is woken.
//! 2. Otherwise `still_idle()` saw the POSTED state and the server does not sleep.
//!
//! The argument involves only that channel's words, so what other clients write cannot
//! break it. The client's hot path has no fence: on x86 its SeqCst CAS is the `lock cmpxchg`
//! it needs anyway and the SeqCst load a plain `mov`. The same argument, with
//! `client_waiting` for `server_sleeping` and the slot state for the bell, covers the client's
//! sleep in `ClientChannel::call` (channel module docs). Kernel events use `events |= bits`
//! (SeqCst) in place of the POSTED CAS and always bump and wake the doorbell word.
//! `tests/loom_handshake.rs` model-checks the handshake and shows that it fails without the
//! barrier.
//!
//! A server with more than [`futex::WAIT_ANY_MAX`]` - 1` channels waits on the doorbell and
//! the first ones only, and bounds its sleep to [`OVERFLOW_NAP`] so that the others are
//! served within that time.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use crate::futex::{self, FutexWait};
use crate::mem::{Mapping, check_fd, create_sealed};
use crate::spin::{SpinConfig, SpinMode, Spinner};
use crate::{ChanError, ServerChannel};

/// `b"TXIPCDB1"` as a little-endian `u64`.
pub const DOORBELL_MAGIC: u64 = u64::from_le_bytes(*b"TXIPCDB1");
/// Doorbell layout version.
pub const DOORBELL_VERSION: u32 = 2;
const DOORBELL_SIZE: usize = 4096;

mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const WORD: usize = 12;
    pub const EVENTS: usize = 20;
}

/// Longest sleep of a server with more channels than one `futex_waitv` takes.
pub const OVERFLOW_NAP: Duration = Duration::from_millis(1);

/// Creates a doorbell memfd (kernel side).
pub fn create_doorbell() -> Result<OwnedFd, ChanError> {
    create_sealed("txipc-doorbell", DOORBELL_SIZE, |m| {
        m.u64_at(off::MAGIC)
            .store(DOORBELL_MAGIC, Ordering::Relaxed);
        m.u32_at(off::VERSION)
            .store(DOORBELL_VERSION, Ordering::Relaxed);
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

/// A mapped doorbell: the server's and the kernel's (clients never get one). `Sync`.
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
    fn events(&self) -> &AtomicU32 {
        self.map.u32_at(off::EVENTS)
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
    #[inline]
    pub fn pending_events(&self) -> u32 {
        self.events().load(Ordering::Acquire)
    }

    /// Server side: wait until some channel of `channels` has a POSTED slot ([`Wake::Work`]),
    /// control events are pending ([`Wake::Events`]), or `timeout` expires
    /// ([`Wake::TimedOut`]). Spins (see [`SpinMode::Auto`]) for up to `spin` first, then sleeps
    /// on the doorbell and every channel's bell line (module docs).
    pub fn wait<'c, I>(&self, channels: I, spin: Duration, timeout: Option<Duration>) -> Wake
    where
        I: IntoIterator<Item = &'c ServerChannel>,
        I::IntoIter: Clone,
    {
        self.wait_with(
            channels,
            SpinConfig {
                mode: SpinMode::Auto,
                budget: spin,
            },
            timeout,
        )
    }

    /// [`Self::wait`] with an explicit spin mode.
    pub fn wait_with<'c, I>(&self, channels: I, spin: SpinConfig, timeout: Option<Duration>) -> Wake
    where
        I: IntoIterator<Item = &'c ServerChannel>,
        I::IntoIter: Clone,
    {
        let chans = channels.into_iter();
        let idle = |chans: &I::IntoIter| !chans.clone().any(ServerChannel::has_posted);
        let start = timeout.map(|_| Instant::now());
        let my_cpu = publish_server_cpu(chans.clone());
        let yield_now = match spin.mode {
            SpinMode::Pure => false,
            SpinMode::Yield => true,
            // The spin hint of each channel is its own client's: a lying client can only make
            // the server yield (or spin) while it waits, never keep it from serving.
            SpinMode::Auto => chans
                .clone()
                .any(|c| c.raw().client_cpu().load(Ordering::Relaxed) == my_cpu),
        };
        let mut spinner = Spinner::new(spin.budget);
        // Pause before the first look: callers come here after a scan found nothing, and an
        // immediate re-scan would pull the slot lines away from a client writing its next
        // request (see `spin`). Correctness does not depend on this phase at all.
        loop {
            if !spinner.spin(yield_now) {
                break;
            }
            if self.pending_events() != 0 {
                return Wake::Events;
            }
            if !idle(&chans) {
                return Wake::Work;
            }
        }
        let n = chans.clone().count();
        let overflow = n + 1 > futex::WAIT_ANY_MAX;
        // The words to sleep on, on the stack (2 KiB): going to sleep allocates nothing
        // (test `wait_alloc::a_server_goes_to_sleep_without_allocating`).
        let mut words: [(&AtomicU32, u32); futex::WAIT_ANY_MAX] =
            [(self.word(), 0); futex::WAIT_ANY_MAX];
        let set_sleeping = |v: u32| {
            for c in chans.clone() {
                c.raw().server_sleeping().store(v, Ordering::SeqCst);
            }
        };
        loop {
            set_sleeping(1);
            fence(Ordering::SeqCst);
            words[0] = (self.word(), self.word().load(Ordering::Acquire));
            let mut len = 1;
            for c in chans.clone().take(futex::WAIT_ANY_MAX - 1) {
                let b = c.raw().bell_word();
                words[len] = (b, b.load(Ordering::Acquire));
                len += 1;
            }
            if self.pending_events() != 0 {
                set_sleeping(0);
                return Wake::Events;
            }
            if !idle(&chans) {
                set_sleeping(0);
                return Wake::Work;
            }
            let remaining = match (start, timeout) {
                (Some(s), Some(t)) => match t.checked_sub(s.elapsed()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        set_sleeping(0);
                        return Wake::TimedOut;
                    }
                },
                _ => None,
            };
            let remaining = if overflow {
                Some(remaining.map_or(OVERFLOW_NAP, |r| r.min(OVERFLOW_NAP)))
            } else {
                remaining
            };
            let r = futex::wait_any(&words[..len], remaining);
            set_sleeping(0);
            if r == FutexWait::Woken {
                // We may have migrated while asleep.
                publish_server_cpu(chans.clone());
            }
        }
    }
}

/// Records the CPU this (server) thread runs on in every channel, for the clients' spin
/// policy; returns it.
fn publish_server_cpu<'c>(chans: impl Iterator<Item = &'c ServerChannel>) -> u32 {
    let cpu = rustix::thread::sched_getcpu() as u32;
    for c in chans {
        let w = c.raw().server_cpu();
        if w.load(Ordering::Relaxed) != cpu {
            w.store(cpu, Ordering::Relaxed);
        }
    }
    cpu
}
