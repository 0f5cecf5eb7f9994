//! Shared (cross-process) futex wrappers over `rustix::thread::futex`.
//!
//! The futex words live in MAP_SHARED memfd mappings used by several processes, so the
//! `FUTEX_PRIVATE_FLAG` must *not* be set: private futexes are keyed by (mm, address) and would
//! never see a waker in another process. Shared futexes are keyed by the backing page, which is
//! the same for every process mapping the memfd.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;

/// Why [`wait`] returned. Callers re-check their condition in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FutexWait {
    /// Woken by a `wake` (or spuriously).
    Woken,
    /// The word did not hold the expected value: nothing to wait for.
    ValueChanged,
    /// The timeout expired.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// Sleeps while `*word == expected`, at most `timeout` (relative) when given.
///
/// The comparison and the enqueueing are atomic with respect to [`wake`] (both take the futex
/// hash-bucket lock), which is what makes "check, then sleep" free of lost wake-ups as long as
/// the waker changes `word` before waking.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    let ts = timeout.map(|d| futex::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as _,
    });
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) => FutexWait::Woken,
        Err(Errno::AGAIN) => FutexWait::ValueChanged,
        Err(Errno::TIMEDOUT) => FutexWait::TimedOut,
        Err(Errno::INTR) => FutexWait::Interrupted,
        // EFAULT/EINVAL cannot happen for a valid, aligned &AtomicU32; treat any other error
        // like a spurious wake-up: callers loop and re-check.
        Err(_) => FutexWait::Woken,
    }
}

/// Wakes at most `n` waiters sleeping on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32)).unwrap_or(0)
}

/// Wakes every waiter sleeping on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}
