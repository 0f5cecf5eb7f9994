//! The monotonic clock.

/// Nanoseconds on CLOCK_MONOTONIC (same clock in every process of the machine).
#[inline]
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
