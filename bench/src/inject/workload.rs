//! The kv workload of a campaign run and its oracle.
//!
//! Each run works in its own key namespace `r<index>/` beside a fixed background set `bg/..`
//! that every run must leave intact. The workload is a seeded mix over a few keys, so that
//! keys are read and rewritten many times within the run:
//!
//! | op | share | the reply must be |
//! | --- | ---: | --- |
//! | `incr` of one of 4 counters by 1..=5 | 25% | the model's counter + delta |
//! | `cas` on the run's chain (`n` → `n+1`) | 15% | swapped, with the new value |
//! | `put` of 1..64 random bytes to one of 16 keys | 30% | the model's previous value |
//! | `delete` of one of the 16 keys | 10% | the model's previous value |
//! | `get` of one of the 16 keys | 15% | the model's value |
//! | `scan` of the namespace | 5% | exactly the model's entries |
//!
//! Every reply is checked on arrival ([`KvModel`]); at the end the oracle reads the whole store
//! back through the service (scan) and compares it with background ∪ model.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kv_api::model::{Divergence, KvModel};
use kv_api::{Bytes, KvClient};
use txipc_runtime::client::Channel;
use txipc_service::{CallError, Error as SvcError};

use crate::ycsb::Rng;

/// Keys of the background set.
pub const BACKGROUND_KEYS: u32 = 32;

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `incr(key, delta)`.
    Incr(Vec<u8>, i64),
    /// `cas` on the chain key: the model's value → the next number.
    Chain(Vec<u8>),
    /// `put(key, value)`.
    Put(Vec<u8>, Vec<u8>),
    /// `delete(key)`.
    Delete(Vec<u8>),
    /// `get(key)`.
    Get(Vec<u8>),
    /// `scan` of the namespace.
    Scan,
}

/// The background set for a campaign seed: `bg/NN` → 16..=64 bytes.
pub fn background(seed: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut r = Rng::new(seed ^ 0xB6);
    (0..BACKGROUND_KEYS)
        .map(|i| {
            let len = r.range_inclusive(16, 64) as usize;
            let v: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
            (format!("bg/{i:02}").into_bytes(), v)
        })
        .collect()
}

/// The namespace of run `index`.
pub fn namespace(index: u64) -> Vec<u8> {
    format!("r{index:06}/").into_bytes()
}

/// The operations of one run.
pub fn ops(seed: u64, ns: &[u8], calls: u32) -> Vec<Op> {
    let mut r = Rng::new(seed ^ 0x0B5);
    let key = |s: String| [ns, s.as_bytes()].concat();
    (0..calls)
        .map(|_| {
            let k = r.range_inclusive(0, 15);
            match r.range_inclusive(0, 99) {
                0..25 => Op::Incr(key(format!("ctr{}", k % 4)), r.range_inclusive(1, 5) as i64),
                25..40 => Op::Chain(key("chain".into())),
                40..70 => {
                    let len = r.range_inclusive(1, 64) as usize;
                    Op::Put(
                        key(format!("k{k:02}")),
                        (0..len).map(|_| r.next_u64() as u8).collect(),
                    )
                }
                70..80 => Op::Delete(key(format!("k{k:02}"))),
                80..95 => Op::Get(key(format!("k{k:02}"))),
                _ => Op::Scan,
            }
        })
        .collect()
}

/// What the workload saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Calls completed (with the service's answer or an error).
    pub calls: u32,
    /// Calls that failed with a system error.
    pub errors: u32,
    /// The first error, as text.
    pub first_error: Option<String>,
    /// Replies that contradicted the model.
    pub wrong_replies: u32,
    /// The first wrong reply, described.
    pub first_wrong: Option<String>,
    /// A call did not return within the client's timeout (it may still run).
    pub timed_out: bool,
    /// The model at the end.
    pub model: KvModel,
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

impl Observed {
    fn wrong(&mut self, what: String) {
        self.wrong_replies += 1;
        self.first_wrong.get_or_insert(what);
    }
    fn error(&mut self, key: Option<&[u8]>, e: &CallError) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
        if matches!(e, CallError::Timeout) {
            self.timed_out = true;
        }
        if let Some(k) = key
            && !e.did_not_run()
        {
            self.model.make_uncertain(k);
        }
    }
}

/// Calls the workload makes after the injector is done, at least.
pub const TAIL_CALLS: usize = 10;

/// How the workload and the injector meet.
#[derive(Debug, Default)]
pub struct Sync {
    /// Raised before each call (the injector aims at it).
    pub started: AtomicU32,
    /// The call before which the workload waits for `ready` (`u32::MAX`: none).
    pub wait_at: AtomicU32,
    /// Set by the injector when the fault is in place (or will not be).
    pub ready: AtomicBool,
    /// Set by the injector when it is done; the workload runs on past `min_calls` until then.
    pub injector_done: AtomicBool,
}

/// Runs at least `min_calls` of `ops`, in order, and on (up to all of `ops`) until the
/// injector is done (and [`TAIL_CALLS`] more). Before call `sync.wait_at` it waits (bounded) for the injector to have
/// placed its fault. Stops early after a timeout (the server is hung, or the system is gone).
pub fn run(
    kv: &KvClient<Channel>,
    ns: &[u8],
    ops: &[Op],
    min_calls: usize,
    sync: &Sync,
) -> Observed {
    let mut o = Observed::default();
    let mut done_at = None;
    for (i, op) in ops.iter().enumerate() {
        if done_at.is_none() && sync.injector_done.load(Ordering::Acquire) {
            done_at = Some(i);
        }
        // At least `min_calls`, and `TAIL_CALLS` after the fault was placed.
        if done_at.is_some_and(|d| i >= min_calls.max(d + TAIL_CALLS)) {
            break;
        }
        if i as u32 == sync.wait_at.load(Ordering::Acquire) {
            let until = Instant::now() + Duration::from_secs(5);
            while !sync.ready.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::yield_now();
            }
        }
        sync.started.fetch_add(1, Ordering::AcqRel);
        step(kv, ns, op, &mut o);
        o.calls += 1;
        if o.timed_out {
            break;
        }
    }
    o
}

fn step(kv: &KvClient<Channel>, ns: &[u8], op: &Op, o: &mut Observed) {
    // A service error (`KvError`) is never expected from this workload: count it as wrong.
    macro_rules! call {
        ($key:expr, $e:expr) => {
            match $e {
                Ok(v) => v,
                Err(SvcError::Call(e)) => return o.error($key, &e),
                Err(SvcError::Service(e)) => return o.wrong(format!("service error: {e}")),
            }
        };
    }
    match op {
        Op::Incr(k, d) => {
            let got = call!(Some(k), kv.incr(k.clone(), *d));
            match o.model.counter(k) {
                Some(c) if c + d != got => {
                    o.wrong(format!("incr {}: got {got}, model {}", show(k), c + d));
                    o.model.set(k, Some(&(c + d).to_le_bytes()));
                }
                _ => o.model.set(k, Some(&got.to_le_bytes())),
            }
        }
        Op::Chain(k) => {
            let Some(cur) = o.model.expect(k).map(|v| v.map(<[u8]>::to_vec)) else {
                return; // unknown after an earlier error: skip
            };
            let n: u64 = cur
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            let next = (n + 1).to_string().into_bytes();
            let r = call!(
                Some(k),
                kv.cas(k.clone(), cur.map(Bytes::from), Some(Bytes::from(&next)))
            );
            let current = r.current.as_ref().map(|b| b.as_slice());
            if !r.swapped || current != Some(&next[..]) {
                o.wrong(format!(
                    "cas {}: swapped {}, current {:?}, model {n}",
                    show(k),
                    r.swapped,
                    current.map(show)
                ));
            }
            o.model.set(k, Some(&next));
        }
        Op::Put(k, v) => {
            let prev = call!(Some(k), kv.put(k.clone(), v.clone()));
            if !o.model.agrees(k, prev.as_ref().map(|b| b.as_slice())) {
                o.wrong(format!(
                    "put {}: previous value differs from the model",
                    show(k)
                ));
            }
            o.model.set(k, Some(v));
        }
        Op::Delete(k) => {
            let prev = call!(Some(k), kv.delete(k.clone()));
            if !o.model.agrees(k, prev.as_ref().map(|b| b.as_slice())) {
                o.wrong(format!(
                    "delete {}: removed value differs from the model",
                    show(k)
                ));
            }
            o.model.set(k, None);
        }
        Op::Get(k) => {
            let got = call!(None, kv.get(k.clone()));
            if !o.model.agrees(k, got.as_ref().map(|b| b.as_slice())) {
                o.wrong(format!("get {}: value differs from the model", show(k)));
            }
        }
        Op::Scan => {
            let got = call!(None, kv.scan(ns, kv_api::MAX_SCAN));
            let got: BTreeMap<Vec<u8>, Vec<u8>> = got
                .into_iter()
                .filter(|(k, _)| k.starts_with(ns))
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect();
            let d = o.model.diff(&got, |_| true);
            if !d.is_empty() {
                o.wrong(format!("scan: {}", d.summary()));
            }
        }
    }
}

/// Reads the whole store back (scans of [`kv_api::MAX_SCAN`] entries).
pub fn read_all(kv: &KvClient<Channel>) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
    let mut state = BTreeMap::new();
    let mut start: Vec<u8> = Vec::new();
    for _ in 0..10_000 {
        let page = kv
            .scan(start.clone(), kv_api::MAX_SCAN)
            .map_err(|e| format!("reading the state back: {e}"))?;
        let n = page.len();
        for (k, v) in page {
            start = k.to_vec();
            start.push(0);
            state.insert(k.into_vec(), v.into_vec());
        }
        if n < kv_api::MAX_SCAN as usize {
            return Ok(state);
        }
    }
    Err("reading the state back: more than 10 million keys".into())
}

/// The oracle: the store must hold exactly the background set and the run's model.
pub fn oracle(
    state: &BTreeMap<Vec<u8>, Vec<u8>>,
    bg: &BTreeMap<Vec<u8>, Vec<u8>>,
    model: &KvModel,
    ns: &[u8],
) -> Divergence {
    let mut d = model.diff(state, |k| k.starts_with(ns));
    for (k, v) in bg {
        match state.get(k) {
            None => d.missing.push(k.clone()),
            Some(got) if got == v => {}
            Some(_) => d.wrong.push(k.clone()),
        }
    }
    for k in state.keys() {
        if !k.starts_with(ns) && !bg.contains_key(k) {
            d.extra.push(k.clone());
        }
    }
    d
}

/// Brings the store back to the background set alone (deletes everything else, rewrites
/// background keys that differ), through the service. `state` is what [`read_all`] returned.
pub fn reset(
    kv: &KvClient<Channel>,
    state: &BTreeMap<Vec<u8>, Vec<u8>>,
    bg: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), String> {
    for k in state.keys().filter(|k| !bg.contains_key(*k)) {
        kv.delete(k.clone())
            .map_err(|e| format!("resetting the state: {e}"))?;
    }
    for (k, v) in bg {
        if state.get(k) != Some(v) {
            kv.put(k.clone(), v.clone())
                .map_err(|e| format!("resetting the state: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_seeded_and_mixed() {
        let ns = namespace(3);
        let a = ops(9, &ns, 200);
        assert_eq!(a, ops(9, &ns, 200));
        assert_ne!(a, ops(10, &ns, 200));
        for pick in [
            |o: &Op| matches!(o, Op::Incr(..)),
            |o: &Op| matches!(o, Op::Chain(..)),
            |o: &Op| matches!(o, Op::Put(..)),
            |o: &Op| matches!(o, Op::Delete(..)),
            |o: &Op| matches!(o, Op::Get(..)),
            |o: &Op| matches!(o, Op::Scan),
        ] {
            assert!(a.iter().any(pick));
        }
        assert_eq!(background(1).len(), BACKGROUND_KEYS as usize);
    }

    #[test]
    fn oracle_sees_every_difference() {
        let bg = background(1);
        let ns = namespace(0);
        let mut m = KvModel::new();
        m.set(b"r000000/k01", Some(b"v"));
        let mut state = bg.clone();
        state.insert(b"r000000/k01".to_vec(), b"v".to_vec());
        assert!(oracle(&state, &bg, &m, &ns).is_empty());
        // A background key changed, a stale key of another run left behind.
        state.insert(b"bg/00".to_vec(), b"x".to_vec());
        state.insert(b"r000001/k01".to_vec(), b"v".to_vec());
        let d = oracle(&state, &bg, &m, &ns);
        assert_eq!((d.wrong.len(), d.extra.len()), (1, 1));
        // Restart-like loss: empty store.
        let d = oracle(&BTreeMap::new(), &bg, &m, &ns);
        assert_eq!(d.missing.len(), bg.len() + 1);
    }
}
