//! Bounded spinning before a futex sleep.

use std::sync::atomic::{AtomicU32, Ordering};
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
    static PAUSES: Calibration = Calibration::new();
    PAUSES.get_or_calibrate(|| {
        const N: u32 = 200;
        let t = Instant::now();
        for _ in 0..N {
            std::hint::spin_loop();
        }
        t.elapsed().as_nanos() as u64 / N as u64
    })
}

/// The calibrated pause count of a process: 0 until some thread has calibrated.
///
/// Not a `OnceLock`, on purpose: a process forked while another thread of its parent is
/// inside a `OnceLock`'s initialiser inherits the "initialising" state without the thread
/// that would finish it, and its first spin waits forever. The channel tests fork servers and
/// clients out of the multi-threaded test harness, so that happened: a forked echo server or
/// client hung in its first wait (`tests/echo.rs`, ARCHITECTURE.md §4 "Liveness"). Here a
/// thread that finds no value calibrates itself; racing calibrations each store a valid
/// count (any count in 1..=64 is correct, the value only tunes the poll interval), and no
/// thread ever waits for another.
pub(crate) struct Calibration(AtomicU32);

impl Calibration {
    pub(crate) const fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// The pause count, calibrated with `ns_per_pause` (best of 5 samples: a preemption
    /// inflates a sample, never deflates it) if no thread of this process has stored one.
    pub(crate) fn get_or_calibrate(&self, mut ns_per_pause: impl FnMut() -> u64) -> u32 {
        let known = self.0.load(Ordering::Relaxed);
        if known != 0 {
            return known;
        }
        let best = (0..5).map(|_| ns_per_pause()).min().unwrap_or(0);
        let pauses = (POLL_INTERVAL_NS / best.max(1)).clamp(1, 64) as u32;
        self.0.store(pauses, Ordering::Relaxed);
        pauses
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A process forked while another thread of its parent is calibrating (the echo tests fork
    /// their servers and clients while the harness runs other tests, which spin) gets its pause
    /// count without waiting for that thread, which does not exist in the child. With a
    /// `OnceLock` the child inherited the "initialising" state and waited forever in its first
    /// spin: a server that never serves again, or a client that never frees its slot.
    #[test]
    fn a_child_forked_mid_calibration_does_not_wait_for_it() {
        static CELL: Calibration = Calibration::new();
        let (inside_tx, inside_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let calibrating = std::thread::spawn(move || {
            let mut first = true;
            CELL.get_or_calibrate(|| {
                if std::mem::take(&mut first) {
                    let _ = inside_tx.send(());
                    // Held mid-calibration until the child has been forked and checked.
                    let _ = release_rx.recv_timeout(Duration::from_secs(120));
                }
                1
            })
        });
        inside_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the calibrating thread started");
        // SAFETY: fork_child items 1-3: the child only calls `get_or_calibrate` on a static
        // (atomics; the function under test) with a sample that reads nothing shared, and
        // returns a code; it owns nothing with an outside effect and does not print.
        let child = unsafe {
            crate::baseline::fork_child(|| {
                if CELL.get_or_calibrate(|| 1) > 0 {
                    0
                } else {
                    1
                }
            })
        }
        .unwrap();
        // A hang is detected with a generous bound (the child needs microseconds); a child
        // still running then is killed and reaped.
        let exited = child.wait_within(Duration::from_secs(20)).unwrap();
        let _ = release_tx.send(());
        assert!(calibrating.join().unwrap() >= 1);
        assert_eq!(
            exited,
            Some(0),
            "the child forked mid-calibration waited for a thread it does not have"
        );
    }
}
