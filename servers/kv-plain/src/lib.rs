//! The key-value server with its state in ordinary Rust collections.
//!
//! The same [`Kv`] interface as `kv-server`, but the state is a `std` [`BTreeMap`] and a
//! counter in the process's own memory: no recoverable heap, no transactions. It runs under
//! policies `none` and `restart`, and under `companion`, where its [`Distill`] implementation
//! lets the companion checkpoint the state and reconstitute it after a fault (the generated
//! `KvCompanion` dispatcher logs every state-changing request before it runs).
//!
//! Every handler is deterministic (the map is ordered; nothing reads a clock or a random
//! source), as replay requires. [`KvPlainFaulty`] is the same server with two deliberate faults,
//! for tests: a `put` under a key starting with `poison/` panics after changing the map, and an
//! `incr` of a key starting with `nondet/` adds a clock-dependent amount (a non-deterministic
//! handler, which the companion must detect on replay). An `incr` of `relay/K` calls the server
//! `peer` (another server, through `txipc_runtime::connect`), and `relay-nondet/K` does so
//! with a clock-dependent delta (a replay that makes another call); a (readonly) `get` of
//! `relay-get/K` increments K in `peer` (a state-changing call from a readonly request, which
//! the callee refuses) and one of `relay-read/K` reads it, the outcome returned as the value.
//! An `incr` of a key starting with `slow/` takes 300 ms (deterministically: the same result).
//! It also keeps per-connection state:
//! an `incr` of a key starting with `session/` counts in the caller's own session
//! (`session/<session>/<rest>`, see `txipc_runtime::current_session`), so two connections
//! incrementing the same key see their own counters, across restarts and replays.
//!
//! It has the delta form of [`Distill`]: while tracking (the companion's replica only), it
//! notes the keys each update touches, and a delta is those keys with their current values
//! (or their absence) and the counters — so a checkpoint between two full bases writes only
//! what changed.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use kv_api::{CasOutcome, Kv, KvCompanion, KvError, KvStats, MAX_KEY, MAX_SCAN, MAX_VALUE};
use serde::{Deserialize, Serialize};
use txipc_runtime::PlainBuiltin;
use txipc_service::{Bytes, Distill, DistillError};

/// The kv server's whole state: what a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KvState {
    map: BTreeMap<Bytes, Bytes>,
    /// Requests that changed state.
    updates: u64,
    /// Bytes of keys and values stored.
    bytes: u64,
}

/// The kv server with ordinary Rust state.
#[derive(Debug, Default)]
pub struct KvPlain {
    state: KvState,
    /// While tracking (the delta form): the keys changed since the last delta or base (a hash
    /// set: one more ordered-tree search per update was a quarter of the replica's CPU time in
    /// a profile of YCSB A).
    changed: Option<HashSet<Bytes>>,
}

/// The delta form's encoding: the changed keys with their values now (`None`: deleted), and
/// the counters. Written from borrowed state ([`ChangesOut`]), read back as this.
#[derive(Debug, Deserialize)]
struct KvDelta {
    updates: u64,
    bytes: u64,
    set: Vec<(Bytes, Option<Bytes>)>,
}

/// [`KvDelta`] as it is written: borrowed from the state, nothing cloned.
#[derive(Serialize)]
struct ChangesOut<'a> {
    updates: u64,
    bytes: u64,
    set: ChangedEntries<'a>,
}

struct ChangedEntries<'a>(&'a KvState, &'a HashSet<Bytes>);

impl Serialize for ChangedEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.1.iter().map(|k| (k, self.0.map.get(&k[..]))))
    }
}

impl Distill for KvPlain {
    const VERSION: u32 = 1;
    type Snapshot = KvState;
    fn distill(&self) -> &KvState {
        &self.state
    }
    fn reconstitute(state: KvState) -> Self {
        KvPlain {
            state,
            changed: None,
        }
    }
    fn track_changes(&mut self, on: bool) -> bool {
        self.changed = on.then(HashSet::new);
        true
    }
    fn write_changes(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError> {
        let empty = HashSet::new();
        let changes = ChangesOut {
            updates: self.state.updates,
            bytes: self.state.bytes,
            set: ChangedEntries(&self.state, self.changed.as_ref().unwrap_or(&empty)),
        };
        txipc_service::write_encoded(&changes, out)
    }
    fn forget_changes(&mut self) {
        if let Some(c) = &mut self.changed {
            c.clear();
        }
    }
    fn apply_changes(&mut self, delta: &[u8]) -> Result<(), DistillError> {
        let d: KvDelta = txipc_service::decode(delta)
            .map_err(|e| DistillError::Decode(format!("kv delta: {e}")))?;
        for (k, v) in d.set {
            if let Some(c) = &mut self.changed {
                c.insert(k.clone());
            }
            match v {
                Some(v) => self.state.map.insert(k, v),
                None => self.state.map.remove(&k[..]),
            };
        }
        self.state.updates = d.updates;
        self.state.bytes = d.bytes;
        Ok(())
    }
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY {
        return Err(KvError::KeyTooLarge { len: key.len() });
    }
    Ok(())
}

fn check_value(v: &[u8]) -> Result<(), KvError> {
    if v.len() > MAX_VALUE {
        return Err(KvError::ValueTooLarge { len: v.len() });
    }
    Ok(())
}

impl KvPlain {
    fn current(&self, key: &[u8]) -> Option<Bytes> {
        self.state.map.get(key).cloned()
    }

    fn store(&mut self, key: Bytes, value: Option<Bytes>) {
        if let Some(c) = &mut self.changed
            && !c.contains(&key[..])
        {
            c.insert(key.clone());
        }
        let s = &mut self.state;
        let klen = key.len() as u64;
        let old = match value {
            Some(v) => {
                s.bytes += klen + v.len() as u64;
                s.map.insert(key, v)
            }
            None => s.map.remove(&key[..]),
        };
        if let Some(o) = old {
            s.bytes -= klen + o.len() as u64;
        }
        s.updates += 1;
    }
}

impl Kv for KvPlain {
    fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        Ok(self.current(&key))
    }

    fn put(&mut self, key: Bytes, value: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        check_value(&value)?;
        let prev = self.current(&key);
        self.store(key, Some(value));
        Ok(prev)
    }

    fn delete(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        let prev = self.current(&key);
        if prev.is_some() {
            self.store(key, None);
        }
        Ok(prev)
    }

    fn cas(
        &mut self,
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<CasOutcome, KvError> {
        check_key(&key)?;
        if let Some(v) = &new {
            check_value(v)?;
        }
        let current = self.current(&key);
        if current != expected {
            return Ok(CasOutcome {
                swapped: false,
                current,
            });
        }
        if current.is_some() || new.is_some() {
            self.store(key, new.clone());
        }
        Ok(CasOutcome {
            swapped: true,
            current: new,
        })
    }

    fn incr(&mut self, key: Bytes, delta: i64) -> Result<i64, KvError> {
        check_key(&key)?;
        let now = match self.state.map.get(&key[..]) {
            None => 0,
            Some(b) => kv_api::counter_value(b).ok_or(KvError::NotACounter)?,
        };
        let next = now.checked_add(delta).ok_or(KvError::Overflow)?;
        self.store(key, Some(Bytes::from(next.to_le_bytes())));
        Ok(next)
    }

    fn scan(&mut self, start: Bytes, limit: u32) -> Result<kv_api::Entries, KvError> {
        check_key(&start)?;
        Ok(self
            .state
            .map
            .range::<[u8], _>((Bound::Included(&start[..]), Bound::Unbounded))
            .take(limit.min(MAX_SCAN) as usize)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn stats(&mut self) -> KvStats {
        KvStats {
            keys: self.state.map.len() as u64,
            heap_used: self.state.bytes,
            heap_size: 0,
            updates: self.state.updates,
        }
    }
}

/// [`KvPlain`] with two deliberate faults, for tests (see the crate docs).
#[derive(Debug, Default)]
pub struct KvPlainFaulty(KvPlain);

impl Distill for KvPlainFaulty {
    const VERSION: u32 = 1;
    type Snapshot = KvState;
    fn distill(&self) -> &KvState {
        &self.0.state
    }
    fn reconstitute(state: KvState) -> Self {
        KvPlainFaulty(KvPlain::reconstitute(state))
    }
    fn track_changes(&mut self, on: bool) -> bool {
        self.0.track_changes(on)
    }
    fn write_changes(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError> {
        self.0.write_changes(out)
    }
    fn forget_changes(&mut self) {
        self.0.forget_changes()
    }
    fn apply_changes(&mut self, delta: &[u8]) -> Result<(), DistillError> {
        self.0.apply_changes(delta)
    }
}

impl KvPlainFaulty {
    /// `incr` of `relay/K`: increments `K` in the server `peer` (a call to another server),
    /// then `relay/K` here by the peer's new value; returns that value. `relay-nondet/K` does
    /// the same but calls with a clock-dependent delta: a replay makes another call than the
    /// first run made (a divergence the companion must detect).
    fn relay(&mut self, key: Bytes, delta: i64) -> Result<i64, KvError> {
        let (rest, delta) = match key.strip_prefix(b"relay/") {
            Some(rest) => (rest.to_vec(), delta),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                (
                    key[b"relay-nondet/".len()..].to_vec(),
                    delta + i64::from(nanos % 1000) + 1,
                )
            }
        };
        let peer = txipc_runtime::connect("peer")
            .unwrap_or_else(|e| panic!("kv-plain-faulty: relay: cannot reach `peer`: {e}"));
        let n = kv_api::KvClient::new(peer)
            .incr(Bytes::from(rest), delta)
            .unwrap_or_else(|e| panic!("kv-plain-faulty: relay: the call failed: {e}"));
        self.0.incr(key, n)?;
        Ok(n)
    }
}

impl Kv for KvPlainFaulty {
    fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
        // Calls from a readonly request: `relay-get/K` increments K in `peer` (a state-changing
        // call, which the callee must refuse), `relay-read/K` reads it (allowed). The outcome
        // comes back as the value: the counter, or `error: ...`.
        for (prefix, write) in [(&b"relay-get/"[..], true), (&b"relay-read/"[..], false)] {
            if let Some(rest) = key.strip_prefix(prefix) {
                let peer = txipc_runtime::connect("peer")
                    .unwrap_or_else(|e| panic!("kv-plain-faulty: relay: cannot reach `peer`: {e}"));
                let peer = kv_api::KvClient::new(peer);
                let rest = Bytes::from(rest.to_vec());
                let out = if write {
                    peer.incr(rest, 1).map(|n| n.to_string())
                } else {
                    peer.get(rest)
                        .map(|v| v.map_or(0, |b| kv_api::counter_value(&b).unwrap_or(-1)))
                        .map(|n| n.to_string())
                };
                let text = out.unwrap_or_else(|e| format!("error: {e}"));
                return Ok(Some(Bytes::from(text.into_bytes())));
            }
        }
        self.0.get(key)
    }
    fn put(&mut self, key: Bytes, value: Bytes) -> Result<Option<Bytes>, KvError> {
        let poison = key.starts_with(b"poison/");
        let prev = self.0.put(key, value)?;
        if poison {
            panic!("kv-plain-faulty: a poison request (its put already changed the map)");
        }
        Ok(prev)
    }
    fn delete(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
        self.0.delete(key)
    }
    fn cas(
        &mut self,
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<CasOutcome, KvError> {
        self.0.cas(key, expected, new)
    }
    fn incr(&mut self, key: Bytes, delta: i64) -> Result<i64, KvError> {
        let key = match key.strip_prefix(b"session/") {
            Some(rest) => {
                let mut k = format!("session/{}/", txipc_runtime::current_session()).into_bytes();
                k.extend_from_slice(rest);
                Bytes::from(k)
            }
            None => key,
        };
        if key.starts_with(b"relay/") || key.starts_with(b"relay-nondet/") {
            return self.relay(key, delta);
        }
        if key.starts_with(b"slow/") {
            // A slow (but deterministic) handler: 300 ms, so that a test can see at what
            // priority a following standby replays it.
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let delta = if key.starts_with(b"nondet/") {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            delta + i64::from(nanos % 1000) + 1
        } else {
            delta
        };
        self.0.incr(key, delta)
    }
    fn scan(&mut self, start: Bytes, limit: u32) -> Result<kv_api::Entries, KvError> {
        self.0.scan(start, limit)
    }
    fn stats(&mut self) -> KvStats {
        self.0.stats()
    }
}

/// The server as the built-in `kv-plain` of the txipc binary.
pub fn builtin() -> PlainBuiltin {
    PlainBuiltin::of::<KvCompanion<KvPlain>>("kv-plain")
}

/// The faulty variant as the built-in `kv-plain-faulty` (tests only).
pub fn faulty_builtin() -> PlainBuiltin {
    PlainBuiltin::of::<KvCompanion<KvPlainFaulty>>("kv-plain-faulty")
}

#[cfg(test)]
mod tests {
    use super::*;
    use txipc_service::Companion;

    #[test]
    fn distill_and_reconstitute_roundtrip() {
        let mut kv = KvCompanion::new(KvPlain::default());
        let mut reply = Vec::new();
        for i in 0..100u32 {
            let mut req = Vec::new();
            req.extend(postcard::to_stdvec(&Bytes::from(i.to_le_bytes())).unwrap());
            req.extend(postcard::to_stdvec(&Bytes::from(vec![i as u8; 100])).unwrap());
            txipc_service::Dispatch::dispatch(
                &mut kv,
                kv_api::KvMethod::Put.id(),
                &req,
                &mut reply,
            )
            .unwrap();
        }
        let mut snap = Vec::new();
        kv.distill_into(&mut snap).unwrap();
        // One length and one copy per byte string (`Bytes` serialises as bytes).
        assert!(snap.len() < 100 * (4 + 100 + 4) + 16, "{}", snap.len());
        let back = KvCompanion::<KvPlain>::reconstitute_from(&snap).unwrap();
        assert_eq!(back.into_inner().state, kv.into_inner().state);
        assert!(KvCompanion::<KvPlain>::reconstitute_from(&snap[..snap.len() - 3]).is_err());
    }

    fn put(kv: &mut KvCompanion<KvPlain>, key: &[u8], value: &[u8]) {
        let mut req = postcard::to_stdvec(&Bytes::from(key)).unwrap();
        req.extend(postcard::to_stdvec(&Bytes::from(value)).unwrap());
        txipc_service::Dispatch::dispatch(kv, kv_api::KvMethod::Put.id(), &req, &mut Vec::new())
            .unwrap();
    }

    /// A base, then deltas of only the changed keys (puts, overwrites, deletes), applied in
    /// order, give the state; a server that tracks nothing writes an empty delta.
    #[test]
    fn a_base_and_its_deltas_in_order_give_the_state() {
        let mut kv = KvCompanion::new(KvPlain::default());
        assert!(kv.track_changes(true));
        for i in 0..50u32 {
            put(&mut kv, &i.to_le_bytes(), &[i as u8; 100]);
        }
        let mut base = Vec::new();
        kv.distill_into(&mut base).unwrap();
        kv.forget_changes();
        let mut deltas = Vec::new();
        for round in 0..3u32 {
            for i in (round * 7)..(round * 7 + 5) {
                put(&mut kv, &i.to_le_bytes(), &[round as u8 + 100; 50]);
            }
            let del = (40 + round).to_le_bytes();
            let req = postcard::to_stdvec(&Bytes::from(&del[..])).unwrap();
            txipc_service::Dispatch::dispatch(
                &mut kv,
                kv_api::KvMethod::Delete.id(),
                &req,
                &mut Vec::new(),
            )
            .unwrap();
            let mut d = Vec::new();
            kv.write_changes(&mut d).unwrap();
            kv.forget_changes();
            // Only the 6 changed keys: far smaller than the base.
            assert!(
                d.len() * 5 < base.len(),
                "{} against {}",
                d.len(),
                base.len()
            );
            deltas.push(d);
        }
        let mut back = KvCompanion::<KvPlain>::reconstitute_from(&base).unwrap();
        for d in &deltas {
            back.apply_changes(d).unwrap();
        }
        assert_eq!(back.into_inner().state, kv.into_inner().state);
        // Garbage is an error, not a wrong state.
        let mut other = KvCompanion::<KvPlain>::reconstitute_from(&base).unwrap();
        assert!(other.apply_changes(&deltas[0][..3]).is_err());
    }
}
