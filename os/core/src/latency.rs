//! Per-call latency histograms: quarter-octave buckets of nanoseconds.
//!
//! A server's runtime times a sample of its calls (one batch in [`SAMPLE_EVERY`]: the
//! transaction's begin → its replies published) and adds each to a bucket of its status page;
//! the kernel reads the buckets as an allegation (clamped, see [`Histogram::from_alleged`]) and
//! reports them in `ServerInfo::latency`; `txipc top` and `txipc ps` compute percentiles from
//! them (top: from the difference of two snapshots).
//!
//! Bucket `i < 8` holds exactly `i` ns; above, each power of two is split in four: bucket
//! `4·(m−1) + s` holds the values whose highest set bit is `m` and whose next two bits are `s`.
//! So a bucket's upper edge is at most 25% above its lower edge, and [`BUCKETS`] buckets reach
//! 2³³ ns (8.6 s); longer times land in the last bucket.

use serde::{Deserialize, Serialize};

/// Number of buckets.
pub const BUCKETS: usize = 128;

/// The runtime times one batch in this many (a power of two): two clock reads (~20-60 ns) on
/// every call would cost several percent of a null call. One in 16 measured +6.8 ns per call
/// with the loaded machine's 89 ns clock reads (`cargo run --release -p txipc-runtime
/// --example latency_cost`), 3% of a quiet null call; one in 64 is a quarter of that.
pub const SAMPLE_EVERY: u64 = 64;

/// The bucket of a duration of `ns` nanoseconds.
#[inline]
pub fn bucket(ns: u64) -> usize {
    if ns < 8 {
        return ns as usize;
    }
    let m = 63 - ns.leading_zeros() as usize;
    let s = ((ns >> (m - 2)) & 3) as usize;
    (4 * (m - 1) + s).min(BUCKETS - 1)
}

/// The smallest duration (ns) bucket `i` holds.
pub fn lower_ns(i: usize) -> u64 {
    if i < 8 {
        return i as u64;
    }
    let m = i / 4 + 1;
    let s = (i % 4) as u64;
    (4 + s) << (m - 2)
}

/// One past the largest duration (ns) bucket `i` holds (the last bucket is open: its edge is
/// reported as its upper edge were it closed).
pub fn upper_ns(i: usize) -> u64 {
    lower_ns(i + 1)
}

/// Counts per bucket ([`BUCKETS`] of them, or none when the server reported nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Calls timed per bucket; empty or exactly [`BUCKETS`] long.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// The kernel's reading of the buckets a server wrote in its status page: the server may
    /// write anything there, so every count is clamped to `max` (the calls it claims to have
    /// completed, itself clamped by the caller's reading) and the sum cannot overflow. A server
    /// that lies can only make its own figures wrong.
    pub fn from_alleged(raw: &[u64], max: u64) -> Histogram {
        let mut counts: Vec<u64> = raw.iter().take(BUCKETS).map(|&c| c.min(max)).collect();
        counts.resize(BUCKETS, 0);
        if counts.iter().all(|&c| c == 0) {
            counts.clear();
        }
        Histogram { counts }
    }

    /// Calls timed.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// What was added since `earlier` (a snapshot of the same server; a count that went down —
    /// a server that lied, or a reset — counts as nothing added).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let counts = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, &c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
            .collect();
        Histogram { counts }
    }

    /// The `q`-quantile (0 < q ≤ 1) in nanoseconds: the upper edge of the bucket where the
    /// cumulative count reaches `q` of the total (at most 25% above the true value). `None`
    /// when nothing was timed.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let want = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(c);
            if seen >= want {
                return Some(upper_ns(i));
            }
        }
        Some(upper_ns(self.counts.len().saturating_sub(1)))
    }
}

/// `830 ns`, `12.4 µs`, `3.1 ms`, `2.05 s`.
pub fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lies_in_its_bucket() {
        let mut v = 0u64;
        while v < 1 << 40 {
            let b = bucket(v);
            assert!(lower_ns(b) <= v, "{v} below bucket {b}");
            if b < BUCKETS - 1 {
                assert!(v < upper_ns(b), "{v} above bucket {b}");
                // Quarter octaves: the upper edge is at most 25% above the lower one.
                assert!(upper_ns(b) * 4 <= lower_ns(b).max(1) * 5 + 4, "bucket {b}");
            }
            v = v * 9 / 8 + 1;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        for b in 0..BUCKETS - 1 {
            assert_eq!(bucket(lower_ns(b)), b);
            assert_eq!(bucket(upper_ns(b) - 1), b);
        }
    }

    #[test]
    fn quantiles_come_from_the_counts() {
        let mut h = Histogram {
            counts: vec![0; BUCKETS],
        };
        h.counts[bucket(1_000)] = 98;
        h.counts[bucket(100_000)] = 2;
        let p50 = h.quantile_ns(0.5).unwrap();
        assert!((1_000..1_250).contains(&p50), "{p50}");
        let p99 = h.quantile_ns(0.99).unwrap();
        assert!((100_000..125_000).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantile_ns(0.99), None);
    }

    #[test]
    fn alleged_counts_are_clamped_and_deltas_saturate() {
        let raw = vec![u64::MAX; BUCKETS + 5];
        let h = Histogram::from_alleged(&raw, 1000);
        assert_eq!(h.counts.len(), BUCKETS);
        assert!(h.counts.iter().all(|&c| c == 1000));
        assert_eq!(h.total(), 1000 * BUCKETS as u64);
        assert!(h.quantile_ns(0.99).is_some());
        assert_eq!(Histogram::from_alleged(&[0; 4], 10).counts.len(), 0);
        let later = Histogram::from_alleged(&[5, 1], 10);
        let earlier = Histogram::from_alleged(&[3, 4], 10);
        assert_eq!(&later.since(&earlier).counts[..2], &[2, 0]);
        assert_eq!(later.since(&Histogram::default()).total(), 6);
    }
}
