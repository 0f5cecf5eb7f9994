//! Cross-process benchmarks of txipc, run by `txipc bench ...`.
//!
//! Every figure is reported beside the baseline it is compared to, measured in the same run,
//! with processes pinned to CPUs, and as a median over batches: the machine is shared and
//! virtualised, so absolute numbers drift between runs while ratios hold.
#![forbid(unsafe_code)]

pub mod cli;
pub mod fs;
pub mod inject;
pub mod ipc;
pub mod kv;
pub mod nested;
#[cfg(feature = "peers")]
pub mod peers;
pub mod plot;
pub mod recovery;
pub mod ycsb;

use std::time::Duration;

/// A unique system name for a benchmark run (so concurrent runs do not collide).
pub fn unique_system(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        txipc_sys::time::monotonic_ns() % 1_000_000
    )
}

/// How long to wait for a system to boot.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(20);

/// Median of a slice (sorted in place); 0 for an empty one.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
