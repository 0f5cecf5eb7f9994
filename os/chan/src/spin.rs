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

/// One bounded spin. The clock is read only every `CHECK_EVERY` rounds (it costs ~20 ns).
#[derive(Debug)]
pub(crate) struct Spinner {
    budget: Duration,
    start: Option<Instant>,
    rounds: u32,
}

const CHECK_EVERY: u32 = 16;

impl Spinner {
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            budget,
            start: None,
            rounds: 0,
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
            std::hint::spin_loop();
        }
        self.rounds = self.rounds.wrapping_add(1);
        if yield_now || self.rounds % CHECK_EVERY == 0 {
            let now = Instant::now();
            match self.start {
                None => self.start = Some(now),
                Some(s) => return now.duration_since(s) < self.budget,
            }
        }
        true
    }
}
