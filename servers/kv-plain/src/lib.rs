//! The key-value server with its state in ordinary Rust collections.
//!
//! The same [`Kv`] interface as `kv-server`, but the state is a `std` [`BTreeMap`] from keys
//! to values and two counters in the process's own memory: no recoverable heap, no
//! transactions. It runs under policies `none` and `restart`, and under `companion`, where its
//! [`Distill`] implementation lets the companion checkpoint the state and reconstitute it
//! after a fault (the generated `KvCompanion` dispatcher logs every state-changing request
//! before it runs).
//!
//! Every handler is deterministic (the map is ordered; nothing reads a clock or a random
//! source), as replay requires. One structure serves both kinds of request:
//! - an update is one search of the tree (`entry`): a key that exists gets the new value in
//!   place and the old one is moved out as the reply (not copied);
//! - a `scan` walks the tree's leaves in order, the values beside their keys.
//!
//! Keys of up to [`INLINE_KEY`] bytes (YCSB's `user<number>` keys are at most 24) are stored
//! inside the tree's nodes ([`Key`]), so a search compares keys without following a pointer
//! per comparison. History: until wave 6 the state was an ordered tree of heap-allocated keys,
//! searched twice per update with the old value cloned (the key comparisons, a cache miss
//! each, were most of a following standby's replay of YCSB A); wave 7 kept the values in a
//! hash map and the key order in a separate ordered set, which made every scanned key a hash
//! lookup (YCSB E's `none-plain` fell from 19.2k to 11.3k ops/s; in a microbenchmark of 100,000
//! keys a scanned entry cost ~660-940 ns against ~50-85 ns in the tree of inline keys, and an
//! update cost about the same in both).
//!
//! [`KvPlainFaulty`] is the same server with two deliberate faults,
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

use std::borrow::Borrow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;

use kv_api::{
    BytesRef, CasOutcome, Kv, KvCompanion, KvError, KvGetReply, KvStats, MAX_KEY, MAX_SCAN,
    MAX_VALUE,
};
use serde::{Deserialize, Serialize};
use txipc_runtime::PlainBuiltin;
use txipc_service::{Bytes, Distill, DistillError, Replied};

/// Keys up to this many bytes are stored inline in a [`Key`] (in the tree's node itself).
pub const INLINE_KEY: usize = 30;

/// A stored key: up to [`INLINE_KEY`] bytes inline, a longer one on the heap. It compares,
/// hashes and borrows as its bytes (`[u8]`), so the map is searched with a `&[u8]`.
#[derive(Clone)]
pub enum Key {
    /// The length, then the bytes (the rest zero).
    Inline(u8, [u8; INLINE_KEY]),
    /// A key longer than [`INLINE_KEY`].
    Heap(Box<[u8]>),
}

impl Key {
    /// The key's bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline(len, b) => &b[..usize::from(*len)],
            Key::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for Key {
    fn from(k: &[u8]) -> Key {
        if k.len() <= INLINE_KEY {
            let mut b = [0u8; INLINE_KEY];
            b[..k.len()].copy_from_slice(k);
            // (Cannot truncate: at most INLINE_KEY.)
            Key::Inline(k.len() as u8, b)
        } else {
            Key::Heap(k.into())
        }
    }
}

impl From<Bytes> for Key {
    /// A long key keeps its allocation.
    fn from(k: Bytes) -> Key {
        if k.len() <= INLINE_KEY {
            Key::from(&k[..])
        } else {
            Key::Heap(k.into_vec().into_boxed_slice())
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    fn eq(&self, o: &Key) -> bool {
        self.as_slice() == o.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Key {
    fn cmp(&self, o: &Key) -> std::cmp::Ordering {
        self.as_slice().cmp(o.as_slice())
    }
}

impl Hash for Key {
    /// As the bytes hash (a set of keys is searched with a `&[u8]`).
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_slice().hash(h);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.as_slice().escape_ascii())
    }
}

impl Serialize for Key {
    /// As a byte string, like [`Bytes`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        BytesRef(self.as_slice()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Key {
    /// From a byte string, copied straight into the key (no allocation for an inline one).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Key, E> {
                Ok(Key::from(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Key, E> {
                Ok(Key::from(Bytes::from(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The kv server's whole state: what a checkpoint holds.
///
/// Encoded as the map from keys to values in key order, then the counters (the snapshot
/// format of state version 1, unchanged since wave 6).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct KvState {
    /// The values by key, in key order.
    map: BTreeMap<Key, Bytes>,
    /// Requests that changed state.
    updates: u64,
    /// Bytes of keys and values stored.
    bytes: u64,
}

/// [`KvState`] as it is decoded.
#[derive(Deserialize)]
struct StateIn {
    map: EntriesIn,
    updates: u64,
    bytes: u64,
}

/// The entries of a snapshot, decoded into a list, then built into the tree at once.
struct EntriesIn(Vec<(Key, Bytes)>);

impl<'de> Deserialize<'de> for EntriesIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EntriesIn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of byte strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<EntriesIn, A::Error> {
                // (A hint from the input is not trusted for more than a bounded allocation.)
                let hint = a.size_hint().unwrap_or(0).min(1 << 20);
                let mut entries = Vec::with_capacity(hint);
                while let Some(e) = a.next_entry::<Key, Bytes>()? {
                    entries.push(e);
                }
                Ok(EntriesIn(entries))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for KvState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StateIn::deserialize(d)?;
        let mut entries = s.map.0;
        // Written in key order; anything else (not written by this server) is sorted first.
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            if entries.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(serde::de::Error::custom("a key appears twice"));
            }
        }
        Ok(KvState {
            // Built from a sorted list: no search per key.
            map: entries.into_iter().collect(),
            updates: s.updates,
            bytes: s.bytes,
        })
    }
}

/// The kv server with ordinary Rust state.
#[derive(Debug, Default)]
pub struct KvPlain {
    state: KvState,
    /// While tracking (the delta form): the keys changed since the last delta or base (a hash
    /// set: one more ordered-tree search per update was a quarter of the replica's CPU time in
    /// a profile of YCSB A, with heap-allocated keys).
    changed: Option<HashSet<Key>>,
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

struct ChangedEntries<'a>(&'a KvState, &'a HashSet<Key>);

impl Serialize for ChangedEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.1.iter().map(|k| (k, self.0.map.get(k.as_slice()))))
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
                c.insert(Key::from(&k[..]));
            }
            self.state.set(k, v);
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

impl KvState {
    /// Sets `key` to `value` (`None`: removes it) and returns the value it had: one search of
    /// the tree; a key that exists gets the new value in place, the old one moved out.
    fn set(&mut self, key: Bytes, value: Option<Bytes>) -> Option<Bytes> {
        let klen = key.len() as u64;
        let old = match value {
            Some(v) => {
                self.bytes += klen + v.len() as u64;
                match self.map.entry(Key::from(key)) {
                    Entry::Occupied(mut e) => Some(e.insert(v)),
                    Entry::Vacant(e) => {
                        e.insert(v);
                        None
                    }
                }
            }
            None => self.map.remove(&key[..]),
        };
        if let Some(o) = &old {
            self.bytes -= klen + o.len() as u64;
        }
        old
    }
}

impl KvPlain {
    /// An update: notes the key while tracking (the delta form), sets it, counts the update;
    /// returns the value it had.
    fn store(&mut self, key: Bytes, value: Option<Bytes>) -> Option<Bytes> {
        if let Some(c) = &mut self.changed
            && !c.contains(&key[..])
        {
            c.insert(Key::from(&key[..]));
        }
        self.state.updates += 1;
        self.state.set(key, value)
    }
}

impl Kv for KvPlain {
    /// A get as the dispatcher serves it: the key borrowed from the request, the value lent
    /// from the map to the reply (copied once, into the channel; nothing is allocated). Answers
    /// exactly as [`Kv::get`] does.
    fn serve_get(&mut self, key: &[u8], reply: KvGetReply<'_>) -> Replied {
        if let Err(e) = check_key(key) {
            return reply.send(&Err(e));
        }
        reply.send(&Ok(self.state.map.get(key).map(|v| BytesRef(&v[..]))))
    }

    fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        Ok(self.state.map.get(&key[..]).cloned())
    }

    fn put(&mut self, key: Bytes, value: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        check_value(&value)?;
        // The previous value is moved out, not copied: it is the reply.
        Ok(self.store(key, Some(value)))
    }

    fn delete(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        if !self.state.map.contains_key(&key[..]) {
            return Ok(None);
        }
        Ok(self.store(key, None))
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
        let current = self.state.map.get(&key[..]);
        if current != expected.as_ref() {
            return Ok(CasOutcome {
                swapped: false,
                current: current.cloned(),
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
        let s = &self.state;
        Ok(s.map
            .range::<[u8], _>((Bound::Included(&start[..]), Bound::Unbounded))
            .take(limit.min(MAX_SCAN) as usize)
            .map(|(k, v)| (Bytes::from(k.as_slice()), v.clone()))
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

    /// An update of a key that exists hands back the value it replaced itself (moved out of
    /// the map, not a copy of it: the same allocation), and so do `delete` and a swapping
    /// `cas`'s predecessor.
    #[test]
    fn an_update_moves_the_old_value_out_instead_of_copying_it() {
        let mut kv = KvPlain::default();
        let first = Bytes::from(vec![1u8; 1000]);
        let at = first.as_ptr();
        assert_eq!(kv.put(Bytes::from(&b"k"[..]), first).unwrap(), None);
        let second = Bytes::from(vec![2u8; 1000]);
        let at2 = second.as_ptr();
        let old = kv.put(Bytes::from(&b"k"[..]), second).unwrap().unwrap();
        assert_eq!(old.as_ptr(), at, "the previous value was copied");
        assert_eq!(old[..], [1u8; 1000][..]);
        let gone = kv.delete(Bytes::from(&b"k"[..])).unwrap().unwrap();
        assert_eq!(gone.as_ptr(), at2);
        assert_eq!(kv.delete(Bytes::from(&b"k"[..])).unwrap(), None);
    }

    /// Key `i` of the model test: 40 stems, each padded with `x` to 8 lengths from 24 to 38
    /// bytes, so that keys are prefixes of each other on both sides of the inline limit.
    fn model_key(i: u64) -> Bytes {
        let mut k = format!("user{}", i % 40).into_bytes();
        k.resize(24 + 2 * (i as usize / 40 % 8), b'x');
        Bytes::from(k)
    }

    /// The tree of inline and long keys is the state of an ordered map of byte strings: after
    /// a pseudo-random mix of puts, deletes, and swapping and failing `cas`es over a few
    /// hundred keys (inline and heap keys, prefixes of each other across the inline limit),
    /// every read, a scan from every key, the counters and the snapshot agree with an ordered
    /// map of `Bytes` that did the same; the snapshot's bytes are those of that ordered map
    /// (the format of state version 1), and decode back to the same state; a snapshot naming a
    /// key twice, or out of order, is read as the map would (the former an error).
    #[test]
    fn the_tree_of_inline_and_long_keys_agrees_with_an_ordered_map() {
        #[derive(Serialize)]
        struct Wave6 {
            map: BTreeMap<Bytes, Bytes>,
            updates: u64,
            bytes: u64,
        }
        use std::collections::BTreeMap;
        let mut kv = KvPlain::default();
        let mut model: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let mut updates = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let r = next();
            let key = model_key(r % 320);
            let value = Bytes::from(vec![(r >> 8) as u8; (r >> 16) as usize % 64]);
            match r >> 40 & 3 {
                0 | 1 => {
                    let prev = kv.put(key.clone(), value.clone()).unwrap();
                    assert_eq!(prev, model.insert(key, value));
                    updates += 1;
                }
                2 => {
                    let prev = kv.delete(key.clone()).unwrap();
                    let had = model.remove(&key);
                    updates += u64::from(had.is_some());
                    assert_eq!(prev, had);
                }
                _ => {
                    let expected = if r & 1 == 0 {
                        model.get(&key).cloned()
                    } else {
                        None
                    };
                    let new = (r & 2 == 0).then(|| value.clone());
                    let out = kv.cas(key.clone(), expected.clone(), new.clone()).unwrap();
                    let swap = model.get(&key) == expected.as_ref();
                    assert_eq!(out.swapped, swap);
                    if swap && (expected.is_some() || new.is_some()) {
                        updates += 1;
                        match new {
                            Some(v) => model.insert(key, v),
                            None => model.remove(&key),
                        };
                    }
                }
            }
        }
        let bytes: u64 = model.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        let stats = kv.stats();
        assert_eq!(
            (stats.keys, stats.heap_used, stats.updates),
            (model.len() as u64, bytes, updates)
        );
        assert!((0..320).any(|i| matches!(Key::from(model_key(i)), Key::Heap(_))));
        assert!((0..320).any(|i| matches!(Key::from(model_key(i)), Key::Inline(..))));
        let between = [
            &b""[..],
            b"user",
            b"user3",
            b"user39xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ];
        for k in (0..320).map(model_key).chain(between.map(Bytes::from)) {
            assert_eq!(kv.get(k.clone()).unwrap(), model.get(&k).cloned());
            let scanned = kv.scan(k.clone(), 7).unwrap();
            let want: Vec<(Bytes, Bytes)> = model
                .range(k..)
                .take(7)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(scanned, want);
        }
        let snap = postcard::to_stdvec(kv.distill()).unwrap();
        let wave6 = Wave6 {
            map: model,
            updates,
            bytes,
        };
        assert_eq!(snap, postcard::to_stdvec(&wave6).unwrap());
        let back: KvState = postcard::from_bytes(&snap).unwrap();
        assert_eq!(&back, kv.distill());
        // A snapshot naming a key twice is an error, not a state with a lost value.
        let twice = postcard::to_stdvec(&(
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"a".to_vec(), b"2".to_vec()),
            ],
            0u64,
            0u64,
        ))
        .unwrap();
        assert!(postcard::from_bytes::<KvState>(&twice).is_err());
        // One out of order is sorted (a long key first, then an inline one).
        let long = vec![b'z'; 40];
        let unordered = postcard::to_stdvec(&(
            vec![
                (long.clone(), b"1".to_vec()),
                (b"a".to_vec(), b"2".to_vec()),
            ],
            2u64,
            43u64,
        ))
        .unwrap();
        let back: KvState = postcard::from_bytes(&unordered).unwrap();
        let mut want = KvPlain::default();
        want.put(Bytes::from(&b"a"[..]), Bytes::from(&b"2"[..]))
            .unwrap();
        want.put(Bytes::from(long), Bytes::from(&b"1"[..])).unwrap();
        assert_eq!(&back, want.distill());
    }
}
