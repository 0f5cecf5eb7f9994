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

/// Most words one [`wait_any`] can wait on (the kernel's `FUTEX_WAITV_MAX`).
pub const WAIT_ANY_MAX: usize = 128;

/// Sleeps while *every* `word == expected` of `words` holds (`futex_waitv`, Linux ≥ 5.16), at
/// most `timeout` when given. Returns as soon as any word is woken or does not hold its
/// expected value. Uses the first [`WAIT_ANY_MAX`] words only; callers with more bound their
/// sleep with a timeout.
///
/// Like [`wait`], comparing and enqueueing are atomic with respect to [`wake`] on each word.
pub fn wait_any(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) -> FutexWait {
    if words.is_empty() {
        // Nothing to wait on: sleep out the timeout (bounded by callers).
        if let Some(t) = timeout {
            std::thread::sleep(t);
        }
        return FutexWait::TimedOut;
    }
    // On the stack (3 KiB): a server goes to sleep here, and going to sleep allocates nothing.
    let mut waiters = [futex::Wait::new(); WAIT_ANY_MAX];
    let n = words.len().min(WAIT_ANY_MAX);
    for (x, &(w, expected)) in waiters.iter_mut().zip(&words[..n]) {
        x.val = u64::from(expected);
        x.uaddr = futex::WaitPtr::new(w.as_ptr().cast());
        x.flags = futex::WaitFlags::SIZE_U32;
    }
    // `futex_waitv` takes an absolute time on the given clock.
    let deadline = timeout.map(|d| {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let ns = now.tv_nsec as u64 + u64::from(d.subsec_nanos());
        futex::Timespec {
            tv_sec: now
                .tv_sec
                .saturating_add(d.as_secs().min(i64::MAX as u64 / 2) as i64)
                .saturating_add((ns / 1_000_000_000) as i64),
            tv_nsec: (ns % 1_000_000_000) as _,
        }
    });
    match futex::waitv(
        &waiters[..n],
        futex::WaitvFlags::empty(),
        deadline.as_ref(),
        rustix::time::ClockId::Monotonic,
    ) {
        Ok(_) => FutexWait::Woken,
        Err(Errno::AGAIN) => FutexWait::ValueChanged,
        Err(Errno::TIMEDOUT) => FutexWait::TimedOut,
        Err(Errno::INTR) => FutexWait::Interrupted,
        Err(_) => FutexWait::Woken,
    }
}
