//! The YCSB core workloads as a pure, seeded operation generator.
//!
//! This follows the Yahoo! Cloud Serving Benchmark's `CoreWorkload` (YCSB 0.17) exactly where
//! it matters for what a server sees:
//!
//! | workload | operations | request distribution |
//! | --- | --- | --- |
//! | A | 50% read, 50% update | scrambled Zipfian |
//! | B | 95% read, 5% update | scrambled Zipfian |
//! | C | 100% read | scrambled Zipfian |
//! | D | 95% read, 5% insert | latest (skewed towards recent inserts) |
//! | E | 95% scan, 5% insert | scrambled Zipfian; scan length uniform in 1..=100 |
//! | F | 50% read, 50% read-modify-write | scrambled Zipfian |
//!
//! - Keys are `user<fnvhash64(keynum)>` (YCSB's default `insertorder=hashed`, no zero padding),
//!   so the load phase inserts in an order unrelated to key order and scans start at random
//!   places of the key space.
//! - The Zipfian generator is Gray et al.'s, as YCSB implements it, with YCSB's constant
//!   θ = 0.99. The *scrambled* variant draws from a Zipfian over 10¹⁰ items (with YCSB's
//!   precomputed ζ) and hashes the draw onto the key space, so the popular keys are spread over
//!   the key space; the hottest key gets about 1/ζ(10¹⁰, 0.99) ≈ 3.8% of the requests.
//! - The key space of the Zipfian draw includes room for the keys the run will insert
//!   (`expectednewkeys = ops × insert proportion × 2`), and a draw beyond the last acknowledged
//!   insert is redrawn, as in YCSB.
//! - `latest` (workload D) is YCSB's `SkewedLatestGenerator`: the last acknowledged insert minus
//!   a Zipfian draw over the current record count (ζ extended incrementally as records arrive).
//! - Inserts take consecutive key numbers from a counter shared by all client threads; a key
//!   becomes readable once its insert is acknowledged and every earlier one is too (YCSB's
//!   `AcknowledgedCounterGenerator`), so no read asks for a key that is not stored yet.
//!
//! Everything here is deterministic for a seed (its own xoshiro256** generator, so sequences do
//! not change with a `rand` release) and runs without processes, so it is unit-tested directly.
//! The benchmark drives every policy with the same seeds: each policy sees the same requests.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// YCSB's Zipfian constant.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;
/// The item count of YCSB's scrambled Zipfian generator.
pub const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
/// ζ(10¹⁰, 0.99), precomputed by YCSB (`ScrambledZipfianGenerator.ZETAN`).
pub const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;
/// Longest scan of workload E (YCSB `maxscanlength`).
pub const MAX_SCAN_LENGTH: u32 = 100;

const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 little-endian bytes, then `Math.abs` of the
/// signed result.
pub fn fnvhash64(val: u64) -> i64 {
    let mut h = FNV_OFFSET_BASIS_64;
    let mut v = val;
    for _ in 0..8 {
        h ^= v & 0xff;
        h = h.wrapping_mul(FNV_PRIME_64);
        v >>= 8;
    }
    (h as i64).wrapping_abs()
}

/// The key of record `keynum`: `user` followed by its hash in decimal (YCSB `buildKeyName`
/// with `insertorder=hashed`, `zeropadding=1`).
pub fn key_name(keynum: u64) -> String {
    format!("user{}", fnvhash64(keynum))
}

/// [`key_name`] written into `out` (its capacity reused: no allocation once it has grown).
pub fn key_name_into(keynum: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let _ = write!(out, "user{}", fnvhash64(keynum));
}

/// A small, fast, seedable generator (xoshiro256**, seeded through SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `lo..=hi`.
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        let span = hi - lo + 1;
        // Multiply-shift: bias below 2^-64 * span, irrelevant here.
        lo + ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as u64
    }
}

/// ζ(n, θ) continued: `sum + Σ_{i=from}^{to-1} 1/(i+1)^θ`.
fn zeta_from(from: u64, to: u64, theta: f64, sum: f64) -> f64 {
    let mut s = sum;
    for i in from..to {
        s += 1.0 / ((i + 1) as f64).powf(theta);
    }
    s
}

/// Gray et al.'s Zipfian generator over `base..base+items`, item `base` the most popular, as
/// YCSB's `ZipfianGenerator` implements it (including its incremental ζ when the item count
/// grows, where YCSB keeps η computed from the original item count).
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    base: u64,
    theta: f64,
    zeta2theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    count_for_zeta: u64,
}

impl Zipfian {
    /// Over `items` items from `base`, computing ζ (O(items)).
    pub fn new(base: u64, items: u64, theta: f64) -> Zipfian {
        let zetan = zeta_from(0, items, theta, 0.0);
        Zipfian::with_zetan(base, items, theta, zetan)
    }

    /// Over `items` items from `base`, with ζ(items, θ) given.
    pub fn with_zetan(base: u64, items: u64, theta: f64, zetan: f64) -> Zipfian {
        assert!(items >= 1, "a Zipfian needs at least one item");
        let zeta2theta = zeta_from(0, 2, theta, 0.0);
        let eta = Self::eta(items, theta, zeta2theta, zetan);
        Zipfian {
            items,
            base,
            theta,
            zeta2theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            count_for_zeta: items,
        }
    }

    fn eta(items: u64, theta: f64, zeta2theta: f64, zetan: f64) -> f64 {
        (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2theta / zetan)
    }

    /// A draw over the configured item count.
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        self.next_with_count(rng, self.items)
    }

    /// A draw over `item_count` items (YCSB `nextLong(itemcount)`); the count may only grow.
    pub fn next_with_count(&mut self, rng: &mut Rng, item_count: u64) -> u64 {
        if item_count > self.count_for_zeta {
            self.zetan = zeta_from(self.count_for_zeta, item_count, self.theta, self.zetan);
            self.count_for_zeta = item_count;
            // YCSB recomputes η from `items`, the original count; kept for fidelity.
            self.eta = Self::eta(self.items, self.theta, self.zeta2theta, self.zetan);
        }
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return self.base;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return self.base + 1;
        }
        self.base + (item_count as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
    }
}

/// YCSB's `ScrambledZipfianGenerator` with θ = 0.99: popular items spread over `min..=max`.
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    min: u64,
    item_count: u64,
    zipf: Zipfian,
}

impl ScrambledZipfian {
    /// Over `min..=max`.
    pub fn new(min: u64, max: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            min,
            item_count: max - min + 1,
            // YCSB: `new ZipfianGenerator(0, ITEM_COUNT, θ, ZETAN)`, i.e. ITEM_COUNT + 1 items.
            zipf: Zipfian::with_zetan(
                0,
                SCRAMBLED_ITEM_COUNT + 1,
                ZIPFIAN_CONSTANT,
                SCRAMBLED_ZETAN,
            ),
        }
    }

    /// A draw.
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        let r = self.zipf.next(rng);
        // `fnvhash64` is non-negative except for i64::MIN, which YCSB's `%` keeps negative;
        // `rem_euclid` keeps the result in range in that (2^-64) case.
        self.min + fnvhash64(r).rem_euclid(self.item_count as i64) as u64
    }
}

/// The key numbers the run has inserted, shared by all client threads of one system (YCSB's
/// `AcknowledgedCounterGenerator`): `next_insert` hands out consecutive numbers,
/// [`InsertSequence::acknowledge`] marks one stored, and [`InsertSequence::last`] is the
/// highest number below which every key is stored.
#[derive(Debug)]
pub struct InsertSequence {
    next: AtomicU64,
    last: AtomicU64,
    pending: Mutex<BTreeSet<u64>>,
}

impl InsertSequence {
    /// After a load of `records` records (key numbers `0..records`).
    pub fn new(records: u64) -> InsertSequence {
        assert!(records >= 1, "at least one record");
        InsertSequence {
            next: AtomicU64::new(records),
            last: AtomicU64::new(records - 1),
            pending: Mutex::new(BTreeSet::new()),
        }
    }

    /// The key number of the next insert.
    pub fn next_insert(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks `keynum` stored.
    pub fn acknowledge(&self, keynum: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.insert(keynum);
        let mut last = self.last.load(Ordering::Relaxed);
        while p.remove(&(last + 1)) {
            last += 1;
        }
        self.last.store(last, Ordering::Release);
    }

    /// The highest key number below which (inclusive) every key is stored.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// How many key numbers were handed out (loaded records plus inserts begun).
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// A YCSB core workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Update heavy: 50% read, 50% update.
    A,
    /// Read mostly: 95% read, 5% update.
    B,
    /// Read only.
    C,
    /// Read latest: 95% read, 5% insert, reads skewed to recent inserts.
    D,
    /// Short ranges: 95% scan, 5% insert.
    E,
    /// Read-modify-write: 50% read, 50% read-modify-write.
    F,
}

impl Workload {
    /// All six, in order.
    pub const ALL: [Workload; 6] = [
        Workload::A,
        Workload::B,
        Workload::C,
        Workload::D,
        Workload::E,
        Workload::F,
    ];

    /// Parses `a`..`f` (either case).
    pub fn parse(s: &str) -> Option<Workload> {
        Some(match s.to_ascii_lowercase().as_str() {
            "a" => Workload::A,
            "b" => Workload::B,
            "c" => Workload::C,
            "d" => Workload::D,
            "e" => Workload::E,
            "f" => Workload::F,
            _ => return None,
        })
    }

    /// The lower-case letter.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::E => "e",
            Workload::F => "f",
        }
    }

    /// Its parameters, as in YCSB's `workloads/workload[a-f]`.
    pub fn spec(self) -> WorkloadSpec {
        let base = WorkloadSpec {
            read: 0.0,
            update: 0.0,
            insert: 0.0,
            scan: 0.0,
            read_modify_write: 0.0,
            distribution: Distribution::Zipfian,
            max_scan_length: MAX_SCAN_LENGTH,
        };
        match self {
            Workload::A => WorkloadSpec {
                read: 0.5,
                update: 0.5,
                ..base
            },
            Workload::B => WorkloadSpec {
                read: 0.95,
                update: 0.05,
                ..base
            },
            Workload::C => WorkloadSpec { read: 1.0, ..base },
            Workload::D => WorkloadSpec {
                read: 0.95,
                insert: 0.05,
                distribution: Distribution::Latest,
                ..base
            },
            Workload::E => WorkloadSpec {
                scan: 0.95,
                insert: 0.05,
                ..base
            },
            Workload::F => WorkloadSpec {
                read: 0.5,
                read_modify_write: 0.5,
                ..base
            },
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How keys of reads, updates and scans are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Scrambled Zipfian over the records (and the room for inserts).
    Zipfian,
    /// Skewed towards the most recent insert.
    Latest,
}

/// Operation proportions and key choice of a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadSpec {
    /// Reads (all fields of one record).
    pub read: f64,
    /// Updates (the whole record is written).
    pub update: f64,
    /// Inserts of new records.
    pub insert: f64,
    /// Scans of `1..=max_scan_length` records from a chosen key.
    pub scan: f64,
    /// A read, then an update of the same record.
    pub read_modify_write: f64,
    /// Key choice.
    pub distribution: Distribution,
    /// Longest scan.
    pub max_scan_length: u32,
}

/// One operation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read record `keynum`.
    Read(u64),
    /// Overwrite record `keynum`.
    Update(u64),
    /// Store the new record `keynum`; acknowledge it to the [`InsertSequence`] when done.
    Insert(u64),
    /// Read `len` records in key order from the key of record `keynum`.
    Scan(u64, u32),
    /// Read record `keynum`, then overwrite it.
    ReadModifyWrite(u64),
}

#[derive(Debug, Clone)]
enum Chooser {
    Zipfian(ScrambledZipfian),
    Latest(Zipfian),
}

/// The operation stream of one client thread.
#[derive(Debug)]
pub struct Generator<'a> {
    spec: WorkloadSpec,
    rng: Rng,
    chooser: Chooser,
    inserts: &'a InsertSequence,
}

impl<'a> Generator<'a> {
    /// The stream of a client of `workload` over `records` loaded records, in a run of
    /// `total_ops` operations (all clients together: it sizes the key space for inserts, as
    /// YCSB's `operationcount` does), seeded by `seed`.
    pub fn new(
        workload: Workload,
        records: u64,
        total_ops: u64,
        seed: u64,
        inserts: &'a InsertSequence,
    ) -> Generator<'a> {
        let spec = workload.spec();
        let chooser = match spec.distribution {
            Distribution::Zipfian => {
                let expected_new = (total_ops as f64 * spec.insert * 2.0) as u64;
                Chooser::Zipfian(ScrambledZipfian::new(0, records + expected_new))
            }
            Distribution::Latest => {
                Chooser::Latest(Zipfian::new(0, inserts.last().max(1), ZIPFIAN_CONSTANT))
            }
        };
        Generator {
            spec,
            rng: Rng::new(seed),
            chooser,
            inserts,
        }
    }

    /// The workload's parameters.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// A key number of a stored record, by the workload's distribution.
    fn existing_key(&mut self) -> u64 {
        match &mut self.chooser {
            Chooser::Zipfian(z) => loop {
                let k = z.next(&mut self.rng);
                if k <= self.inserts.last() {
                    return k;
                }
            },
            Chooser::Latest(z) => {
                let max = self.inserts.last();
                max.saturating_sub(z.next_with_count(&mut self.rng, max.max(1)))
            }
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let s = self.spec;
        let mut x = self.rng.next_f64();
        let total = s.read + s.update + s.insert + s.scan + s.read_modify_write;
        let mut pick = |w: f64| {
            let p = w / total;
            if x < p {
                true
            } else {
                x -= p;
                false
            }
        };
        // YCSB's DiscreteGenerator order: read, update, insert, scan, read-modify-write.
        if pick(s.read) {
            Op::Read(self.existing_key())
        } else if pick(s.update) {
            Op::Update(self.existing_key())
        } else if pick(s.insert) {
            Op::Insert(self.inserts.next_insert())
        } else if pick(s.scan) {
            let len = self.rng.range_inclusive(1, u64::from(s.max_scan_length)) as u32;
            Op::Scan(self.existing_key(), len)
        } else if s.read_modify_write > 0.0 {
            Op::ReadModifyWrite(self.existing_key())
        } else {
            // Rounding left x just past the last non-zero weight: take the last one.
            Op::Read(self.existing_key())
        }
    }

    /// Fills `buf` with a new record value (see [`fill_value`]).
    pub fn fill_value(&mut self, buf: &mut [u8]) {
        fill_value(&mut self.rng, buf);
    }
}

/// Fills `buf` with printable random bytes, as YCSB's random field strings.
pub fn fill_value(rng: &mut Rng, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let r = rng.next_u64().to_le_bytes();
        for (b, r) in chunk.iter_mut().zip(r) {
            *b = b' ' + (r % 95);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn fnv_is_ycsbs() {
        // FNV-1a of eight zero bytes, computed by hand from the offset basis and prime.
        let mut h = FNV_OFFSET_BASIS_64;
        for _ in 0..8 {
            h = h.wrapping_mul(FNV_PRIME_64);
        }
        assert_eq!(fnvhash64(0), (h as i64).wrapping_abs());
        assert!(fnvhash64(12345) >= 0);
        assert_eq!(key_name(7), format!("user{}", fnvhash64(7)));
    }

    #[test]
    fn keys_are_distinct() {
        let keys: HashSet<String> = (0..200_000).map(key_name).collect();
        assert_eq!(keys.len(), 200_000);
    }

    #[test]
    fn rng_is_deterministic_and_uniform() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..100).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(42);
        assert!(a.iter().all(|&v| v == r.next_u64()));
        let mut r = Rng::new(1);
        let mean = (0..100_000).map(|_| r.next_f64()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let mut hits = [0u32; 10];
        for _ in 0..100_000 {
            hits[r.range_inclusive(0, 9) as usize] += 1;
        }
        assert!(
            hits.iter().all(|&h| (9_000..11_000).contains(&h)),
            "{hits:?}"
        );
    }

    #[test]
    fn zipfian_head_matches_theory() {
        let n = 1000;
        let mut z = Zipfian::new(0, n, ZIPFIAN_CONSTANT);
        let mut rng = Rng::new(3);
        let draws = 200_000;
        let mut counts = vec![0u32; n as usize];
        for _ in 0..draws {
            let k = z.next(&mut rng);
            assert!(k < n);
            counts[k as usize] += 1;
        }
        let zetan = zeta_from(0, n, ZIPFIAN_CONSTANT, 0.0);
        for (rank, &count) in counts.iter().enumerate().take(2) {
            let expect = 1.0 / ((rank + 1) as f64).powf(ZIPFIAN_CONSTANT) / zetan;
            let got = f64::from(count) / f64::from(draws);
            assert!(
                (got - expect).abs() < 0.01,
                "rank {rank}: {got} vs {expect}"
            );
        }
        // Monotone on average over the head.
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn scrambled_zipfian_hottest_key_share() {
        let records = 100_000;
        let mut z = ScrambledZipfian::new(0, records - 1);
        let mut rng = Rng::new(9);
        let draws = 500_000u32;
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for _ in 0..draws {
            let k = z.next(&mut rng);
            assert!(k < records);
            *counts.entry(k).or_default() += 1;
        }
        let mut c: Vec<u32> = counts.values().copied().collect();
        c.sort_unstable_by(|a, b| b.cmp(a));
        let hottest = f64::from(c[0]) / f64::from(draws);
        // 1/ζ(10^10, 0.99) = 3.78%, plus the (tiny) share of other ranks hashed onto it.
        assert!((0.033..0.045).contains(&hottest), "hottest {hottest}");
        let top10: u32 = c[..10].iter().sum();
        let top10 = f64::from(top10) / f64::from(draws);
        assert!((0.08..0.14).contains(&top10), "top 10 {top10}");
        // Spread: the hot keys are not the low key numbers.
        let hot_key = counts.iter().max_by_key(|(_, n)| **n).map(|(&k, _)| k);
        assert_eq!(hot_key, Some(fnvhash64(0) as u64 % records));
        // Skewed but wide: many distinct keys are touched.
        assert!(counts.len() > 30_000, "{} distinct keys", counts.len());
    }

    fn run(w: Workload, records: u64, n: usize, seed: u64) -> (Vec<Op>, InsertSequence) {
        let seq = InsertSequence::new(records);
        let ops = {
            let mut g = Generator::new(w, records, n as u64, seed, &seq);
            (0..n)
                .map(|_| {
                    let op = g.next_op();
                    if let Op::Insert(k) = op {
                        seq.acknowledge(k);
                    }
                    op
                })
                .collect()
        };
        (ops, seq)
    }

    fn share(ops: &[Op], f: impl Fn(&Op) -> bool) -> f64 {
        ops.iter().filter(|o| f(o)).count() as f64 / ops.len() as f64
    }

    #[test]
    fn operation_mixes() {
        let n = 100_000;
        let near = |got: f64, want: f64| (got - want).abs() < 0.01;
        let (a, _) = run(Workload::A, 10_000, n, 1);
        assert!(near(share(&a, |o| matches!(o, Op::Read(_))), 0.5));
        assert!(near(share(&a, |o| matches!(o, Op::Update(_))), 0.5));
        let (b, _) = run(Workload::B, 10_000, n, 1);
        assert!(near(share(&b, |o| matches!(o, Op::Update(_))), 0.05));
        let (c, _) = run(Workload::C, 10_000, n, 1);
        assert_eq!(share(&c, |o| matches!(o, Op::Read(_))), 1.0);
        let (d, _) = run(Workload::D, 10_000, n, 1);
        assert!(near(share(&d, |o| matches!(o, Op::Insert(_))), 0.05));
        let (e, _) = run(Workload::E, 10_000, n, 1);
        assert!(near(share(&e, |o| matches!(o, Op::Scan(..))), 0.95));
        assert!(near(share(&e, |o| matches!(o, Op::Insert(_))), 0.05));
        let (f, _) = run(Workload::F, 10_000, n, 1);
        assert!(near(
            share(&f, |o| matches!(o, Op::ReadModifyWrite(_))),
            0.5
        ));
    }

    #[test]
    fn inserts_are_unique_and_reads_only_see_stored_keys() {
        for w in [Workload::D, Workload::E] {
            let records = 1000;
            let (ops, seq) = run(w, records, 50_000, 5);
            let inserted: Vec<u64> = ops
                .iter()
                .filter_map(|o| match o {
                    Op::Insert(k) => Some(*k),
                    _ => None,
                })
                .collect();
            let unique: HashSet<u64> = inserted.iter().copied().collect();
            assert_eq!(unique.len(), inserted.len());
            assert_eq!(inserted.first(), Some(&records));
            assert_eq!(
                inserted,
                (records..records + inserted.len() as u64).collect::<Vec<_>>()
            );
            assert_eq!(seq.last(), records + inserted.len() as u64 - 1);
            // Every key read or scanned was stored at the time.
            let mut stored = records;
            for o in &ops {
                match *o {
                    Op::Insert(_) => stored += 1,
                    Op::Read(k) | Op::Scan(k, _) | Op::Update(k) | Op::ReadModifyWrite(k) => {
                        assert!(k < stored, "{w}: key {k} read with {stored} stored")
                    }
                }
            }
        }
    }

    #[test]
    fn acknowledgements_out_of_order() {
        let seq = InsertSequence::new(10);
        assert_eq!(seq.last(), 9);
        let (a, b, c) = (seq.next_insert(), seq.next_insert(), seq.next_insert());
        assert_eq!((a, b, c), (10, 11, 12));
        seq.acknowledge(12);
        seq.acknowledge(11);
        assert_eq!(seq.last(), 9);
        seq.acknowledge(10);
        assert_eq!(seq.last(), 12);
        assert_eq!(seq.issued(), 13);
    }

    #[test]
    fn latest_prefers_recent_inserts() {
        let records = 10_000;
        let (ops, _) = run(Workload::D, records, 100_000, 8);
        // Reads made right after inserting: the newest key is the most popular one.
        let mut newest = records - 1;
        let (mut newest_hits, mut reads) = (0u32, 0u32);
        let mut recent = 0u32;
        for o in &ops {
            match *o {
                Op::Insert(k) => newest = k,
                Op::Read(k) => {
                    reads += 1;
                    if k == newest {
                        newest_hits += 1;
                    }
                    if newest - k < 100 {
                        recent += 1;
                    }
                }
                _ => unreachable!(),
            }
        }
        let share = f64::from(newest_hits) / f64::from(reads);
        // 1/ζ(~10^4, 0.99) ≈ 10%.
        assert!((0.07..0.14).contains(&share), "newest key share {share}");
        assert!(f64::from(recent) / f64::from(reads) > 0.4);
    }

    #[test]
    fn scan_lengths_in_range() {
        let (ops, _) = run(Workload::E, 10_000, 50_000, 2);
        let lens: Vec<u32> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Scan(_, l) => Some(*l),
                _ => None,
            })
            .collect();
        assert!(lens.iter().all(|&l| (1..=MAX_SCAN_LENGTH).contains(&l)));
        assert!(lens.contains(&1) && lens.contains(&MAX_SCAN_LENGTH));
        let mean = lens.iter().map(|&l| f64::from(l)).sum::<f64>() / lens.len() as f64;
        assert!((mean - 50.5).abs() < 1.5, "mean scan length {mean}");
    }

    #[test]
    fn same_seed_same_stream() {
        let (x, _) = run(Workload::A, 5000, 10_000, 77);
        let (y, _) = run(Workload::A, 5000, 10_000, 77);
        let (z, _) = run(Workload::A, 5000, 10_000, 78);
        assert_eq!(x, y);
        assert_ne!(x, z);
    }

    #[test]
    fn values_are_printable() {
        let seq = InsertSequence::new(1);
        let mut g = Generator::new(Workload::A, 1, 1, 1, &seq);
        let mut v = vec![0u8; 1000];
        g.fill_value(&mut v);
        assert!(v.iter().all(|b| (b' '..=b'~').contains(b)));
    }
}
