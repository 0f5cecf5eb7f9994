//! The key-value server.
//!
//! Its whole state is a [`KvRoot`] in the recoverable heap: an ordered map (B+ tree) from byte
//! strings to byte strings and an update counter. Every method runs inside the transaction the
//! runtime opened for the request, so under policy `txipc` a fault at any instant rolls the
//! request back and it is re-executed; under `none` and `restart` the same code runs with
//! tracking off.
//!
//! A full heap is an error for the request that needed the space: its partial updates are rolled
//! back to a savepoint and it answers [`KvError::Full`]; other requests go on.
#![forbid(unsafe_code)]

use std::ops::Bound;

use kv_api::{
    Bytes, BytesRef, CasOutcome, Kv, KvDispatcher, KvError, KvGetReply, KvStats, MAX_KEY, MAX_SCAN,
    MAX_VALUE,
};
use txipc_heap::{Heap, HeapError, PBTreeMap, PBytes, PCell, Persistent, Tx};
use txipc_runtime::{Builtin, Instance, StartArgs, TxCell, TxHost, fail_point};
use txipc_service::Replied;

pub mod integrity;
pub mod sites;
use sites::*;

/// The kv server's state in the heap.
#[derive(Persistent)]
#[repr(C)]
pub struct KvRoot {
    map: PBTreeMap<PBytes, PBytes>,
    updates: PCell<u64>,
}

impl std::fmt::Debug for KvRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvRoot")
            .field("keys", &self.map.len())
            .field("updates", &self.updates.get())
            .finish()
    }
}

/// The kv server.
#[derive(Debug)]
pub struct KvServer {
    heap: &'static Heap,
    root: &'static KvRoot,
    tx: TxCell,
    /// Integrity checks on (built-in `kv-checked`, [`integrity`]).
    checked: bool,
}

impl TxHost for KvServer {
    fn tx_cell(&mut self) -> &mut TxCell {
        &mut self.tx
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

/// Runs `f` as one all-or-nothing step of the request: on a heap error its partial updates are
/// undone (back to a savepoint) and the request answers `Full`. Any other heap error is a bug
/// in the server or a corrupted heap: it faults, and recovery rolls the request back.
fn atomically<T>(
    tx: &mut Tx<'static>,
    f: impl FnOnce(&mut Tx<'static>) -> Result<T, HeapError>,
) -> Result<T, KvError> {
    let sp = tx.savepoint().expect("savepoint");
    match f(tx) {
        Ok(v) => Ok(v),
        Err(e @ (HeapError::Full { .. } | HeapError::LogFull { .. })) => {
            // Under tracking Off nothing can be undone; the baseline policies accept that.
            let _ = tx.rollback_to(sp);
            Err(KvError::Full {
                detail: e.to_string(),
            })
        }
        Err(e) => panic!("kv: heap operation failed: {e}"),
    }
}

impl KvServer {
    /// The value stored under `key`, borrowed from the heap (checked against its checksum
    /// when integrity checks are on).
    fn stored(&mut self, key: &[u8]) -> Option<&[u8]> {
        let (root, checked) = (self.root, self.checked);
        root.map.get(self.tx.tx(), key).map(|v| {
            if checked {
                integrity::verified(key, v.as_slice())
            } else {
                v.as_slice()
            }
        })
    }

    fn current(&mut self, key: &[u8]) -> Option<Bytes> {
        let mut v = self.stored(key).map(Bytes::from);
        if let (Some(c), Some(v)) = (fail_point(LOOKUP), v.as_mut()) {
            c.flip(v);
        }
        v
    }

    fn store(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), KvError> {
        let root = self.root;
        let checked = self.checked;
        // With integrity checks, the value is stored with its checksum, computed here from the
        // request's bytes: a corruption from here on shows as a mismatch.
        let sealed = match value {
            Some(v) if checked => Some(integrity::seal(key, v)),
            _ => None,
        };
        let value = sealed.as_deref().or(value);
        // A copy only when a corruption is injected: the hot path stores the caller's bytes.
        let corrupted;
        let value = match (fail_point(STORE_BEFORE_INSERT), value) {
            (Some(c), Some(v)) => {
                let mut copy = v.to_vec();
                c.flip(&mut copy);
                corrupted = copy;
                Some(&corrupted[..])
            }
            (_, v) => v,
        };
        atomically(self.tx.tx(), |tx| {
            match value {
                Some(v) => {
                    root.map.insert(tx, key, v)?;
                }
                None => {
                    root.map.remove(tx, key)?;
                }
            }
            fail_point(STORE_AFTER_INSERT);
            if checked && value.is_some() {
                // Read back what the map now holds: the bytes must match their checksum.
                let stored = root.map.get(tx, key).map(|v| v.as_slice().to_vec());
                integrity::verified(key, &stored.unwrap_or_default());
            }
            root.updates.update(tx, |n| n + 1)?;
            fail_point(STORE_AFTER_COUNT);
            Ok(())
        })
    }
}

impl Kv for KvServer {
    /// A get as the dispatcher serves it: the key borrowed from the request, the value lent
    /// from the heap to the reply (copied once, from the heap into the channel; nothing is
    /// allocated). Fail points see what [`Kv::get`]'s would: `LOOKUP` then `GET_FOUND`, each
    /// flipping a private copy of the value when armed to corrupt it.
    fn serve_get(&mut self, key: &[u8], reply: KvGetReply<'_>) -> Replied {
        if let Err(e) = check_key(key) {
            return reply.send(&Err(e));
        }
        let stored = self.stored(key);
        let lookup = fail_point(LOOKUP);
        let found = fail_point(GET_FOUND);
        match stored {
            Some(v) if lookup.is_some() || found.is_some() => {
                let mut v = Bytes::from(v);
                for c in [lookup, found].into_iter().flatten() {
                    c.flip(&mut v);
                }
                reply.send_owned(&Ok(Some(v)))
            }
            v => reply.send(&Ok(v.map(BytesRef))),
        }
    }

    fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        let mut v = self.current(&key);
        if let (Some(c), Some(v)) = (fail_point(GET_FOUND), v.as_mut()) {
            c.flip(v);
        }
        Ok(v)
    }

    fn put(&mut self, key: Bytes, mut value: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        check_value(&value)?;
        if let Some(c) = fail_point(PUT_VALUE) {
            c.flip(&mut value);
        }
        let mut prev = self.current(&key);
        self.store(&key, Some(&value))?;
        if let (Some(c), Some(p)) = (fail_point(PUT_STORED), prev.as_mut()) {
            c.flip(p);
        }
        Ok(prev)
    }

    fn delete(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
        check_key(&key)?;
        let prev = self.current(&key);
        if prev.is_some() {
            fail_point(DELETE_FOUND);
            self.store(&key, None)?;
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
        let mut new = new;
        if let (Some(c), Some(v)) = (fail_point(CAS_MATCHED), new.as_mut()) {
            c.flip(v);
        }
        if current.is_some() || new.is_some() {
            self.store(&key, new.as_ref().map(|v| v.as_slice()))?;
        }
        Ok(CasOutcome {
            swapped: true,
            current: new,
        })
    }

    fn incr(&mut self, key: Bytes, delta: i64) -> Result<i64, KvError> {
        check_key(&key)?;
        let now = match self.current(&key) {
            None => 0,
            Some(b) => kv_api::counter_value(&b).ok_or(KvError::NotACounter)?,
        };
        let now = match fail_point(INCR_READ) {
            Some(c) => c.flip_u64(now as u64) as i64,
            None => now,
        };
        let next = now.checked_add(delta).ok_or(KvError::Overflow)?;
        self.store(&key, Some(&next.to_le_bytes()))?;
        fail_point(INCR_STORED);
        Ok(next)
    }

    fn scan(&mut self, start: Bytes, limit: u32) -> Result<kv_api::Entries, KvError> {
        check_key(&start)?;
        let tx = self.tx.tx();
        let mut entries: kv_api::Entries = self
            .root
            .map
            .range(tx, Bound::Included(&start[..]), Bound::Unbounded)
            .take(limit.min(MAX_SCAN) as usize)
            .map(|(k, v)| {
                let v = if self.checked {
                    integrity::verified(k.as_slice(), v.as_slice())
                } else {
                    v.as_slice()
                };
                (Bytes::from(k.as_slice()), Bytes::from(v))
            })
            .collect();
        if let (Some(c), Some((_, v))) = (fail_point(SCAN_ENTRY), entries.first_mut()) {
            c.flip(v);
        }
        Ok(entries)
    }

    fn stats(&mut self) -> KvStats {
        let s = self.heap.stats();
        KvStats {
            keys: self.root.map.len() as u64,
            heap_used: s.used_bytes,
            heap_size: s.size,
            updates: self.root.updates.get(),
        }
    }
}

fn start(args: StartArgs<'_>) -> Result<Box<dyn Instance>, String> {
    start_with(args, false)
}

fn start_checked(args: StartArgs<'_>) -> Result<Box<dyn Instance>, String> {
    start_with(args, true)
}

fn start_with(args: StartArgs<'_>, checked: bool) -> Result<Box<dyn Instance>, String> {
    let root = args
        .heap
        .root_or_init(|_tx| {
            Ok(KvRoot {
                map: PBTreeMap::new(),
                updates: PCell::new(0),
            })
        })
        .map_err(|e| format!("kv: {e}"))?;
    Ok(Box::new(KvDispatcher::new(KvServer {
        heap: args.heap,
        root,
        tx: TxCell::new(),
        checked,
    })))
}

/// The kv server as a built-in of the txipc binary.
pub const BUILTIN: Builtin = Builtin { name: "kv", start };

/// The kv server with integrity checks ([`integrity`]): every stored value carries a checksum,
/// verified whenever it is read and right after it is stored.
pub const BUILTIN_CHECKED: Builtin = Builtin {
    name: "kv-checked",
    start: start_checked,
};
