//! Bounded spinning before a futex sleep.

use std::time::{Duration, Instant};

/// How a waiter behaves before it falls back to a futex sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SpinMode {
    /// Busy-wait with `spin_loop` hints only. Best when the peer runs on another core.
    Pure,
    /// Call `sched_yield` between checks. Best when the peer shares this core: yielding hands
    /// it the CPU, spinning would only burn the time slice it needs.
    Yield,
    /// Pure spinning while the peer was last seen on another CPU, yielding while it was last
    /// seen on this one (CPU numbers published in the doorbell; see `Doorbell`).
    Auto,
}

/// Spin policy of a waiter: mode and time budget before sleeping on the futex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpinConfig {
    /// Spin mode.
    pub mode: SpinMode,
    /// Time spent spinning before the futex sleep. Zero sleeps at once.
    pub budget: Duration,
}

impl Default for SpinConfig {
    fn default() -> Self {
        Self {
            mode: SpinMode::Auto,
            budget: Duration::from_micros(20),
        }
    }
}

/// Target time between two polls of a shared word while spinning.
///
/// Polling is not free for the *other* side: every load of a line the peer is writing pulls
/// it out of the peer's cache, and the peer's next store stalls on a fresh ownership request.
/// That decided the interval while request and reply shared one slot line: a server between
/// TAKEN and REPLIED wrote it several times, a client polling it every ~15 ns stole it in
/// between, and ~100 ns between polls halved the round trip (~265 ns against ~480 ns). Since
/// the client polls the reply line only, which the server writes in one burst, and the server
/// polls request lines the client writes in one burst, the detection delay dominates: with the
/// `chan_vs_spin` example (cross-core, same run, fastest batches of 2,000 round trips) the
/// channel alone took ~136 ns at 100 ns, ~131 ns at 50, ~98 ns at 30 and ~99 ns at 15, raw spin
/// ~62 ns.
const POLL_INTERVAL_NS: u64 = 30;

/// `spin_loop` hints per poll, calibrated once per process (`pause` takes ~10 cycles on older
/// x86 cores and ~140 on recent ones).
fn pauses_per_poll() -> u32 {
    static PAUSES: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PAUSES.get_or_init(|| {
        const N: u32 = 200;
        // Best of a few samples: a preemption inflates a sample, never deflates it.
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..N {
                    std::hint::spin_loop();
                }
                t.elapsed().as_nanos() as u64
            })
            .min()
            .unwrap_or(0);
        let per_pause = (best / N as u64).max(1);
        (POLL_INTERVAL_NS / per_pause).clamp(1, 64) as u32
    })
}

/// One bounded spin. The clock is read only every `CHECK_EVERY` rounds (it costs ~20 ns, and
/// ~90 ns on a loaded VM), and not at all in the first `FIRST_CHECK` rounds (about 2 µs of
/// polls): a call answered within them, which is every call against a spinning peer, reads no
/// clock while it waits. The budget runs from the first reading, so a wait spins up to
/// `FIRST_CHECK` polls longer than the budget before it sleeps.
#[derive(Debug)]
pub(crate) struct Spinner {
    budget: Duration,
    start: Option<Instant>,
    rounds: u32,
    pauses: u32,
}

const CHECK_EVERY: u32 = 8;
const FIRST_CHECK: u32 = 64;

impl Spinner {
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            budget,
            start: None,
            rounds: 0,
            pauses: if budget.is_zero() {
                0
            } else {
                pauses_per_poll()
            },
        }
    }

    /// One round of waiting; `false` once the budget is spent.
    #[inline]
    pub(crate) fn spin(&mut self, yield_now: bool) -> bool {
        if self.budget.is_zero() {
            return false;
        }
        if yield_now {
            rustix::thread::sched_yield();
        } else {
            for _ in 0..self.pauses {
                std::hint::spin_loop();
            }
        }
        self.rounds = self.rounds.wrapping_add(1);
        if yield_now || (self.rounds >= FIRST_CHECK && self.rounds % CHECK_EVERY == 0) {
            let now = Instant::now();
            match self.start {
                None => self.start = Some(now),
                Some(s) => return now.duration_since(s) < self.budget,
            }
        }
        true
    }
}
