//! `PHashMap`: open addressing with linear probing, in the heap.

use std::marker::PhantomData;

use super::{PKey, PValue, Token, in_heap, log_elems, stable_hash};
use crate::{HeapError, PCell, Persistent, Tx};

const EMPTY: u64 = 0;
const TOMB: u64 = 1;
const FULL_BIT: u64 = 1 << 63;

#[repr(C)]
struct Bucket<K, V> {
    tag: u64,
    key: K,
    val: V,
}

/// A hash map with persistent keys and values. Hashing is deterministic ([`super::StableHasher`])
/// so the table stays valid in every incarnation.
#[repr(C)]
pub struct PHashMap<K: PKey, V: PValue> {
    table: PCell<u64>,
    cap: PCell<u64>,
    len: PCell<u64>,
    used: PCell<u64>,
    _m: PhantomData<(K, V)>,
}

// SAFETY: repr(C) of cells; `table` is 0 or a block of this heap owned by the map; keys and
// values are Persistent; every mutation is logged.
unsafe impl<K: PKey, V: PValue> Persistent for PHashMap<K, V> {}

impl<K: PKey, V: PValue> Default for PHashMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: PKey, V: PValue> std::fmt::Debug for PHashMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PHashMap")
            .field("len", &self.len())
            .finish()
    }
}

impl<K: PKey, V: PValue> PHashMap<K, V> {
    /// An empty map (allocates nothing).
    pub const fn new() -> Self {
        PHashMap {
            table: PCell::new(0),
            cap: PCell::new(0),
            len: PCell::new(0),
            used: PCell::new(0),
            _m: PhantomData,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len.get() as usize
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    fn bucket(&self, i: usize) -> *mut Bucket<K, V> {
        (self.table.get() as *mut Bucket<K, V>).wrapping_add(i)
    }

    /// Index of the bucket holding `q`, if any.
    fn find(&self, q: &K::Q, h: u64) -> Option<usize> {
        let cap = self.cap.get() as usize;
        if cap == 0 {
            return None;
        }
        let tag = h | FULL_BIT;
        let mut i = h as usize & (cap - 1);
        for _ in 0..cap {
            // SAFETY: i < cap; the table holds cap buckets; FULL buckets have initialised keys.
            unsafe {
                let b = self.bucket(i);
                let t = (*b).tag;
                if t == EMPTY {
                    return None;
                }
                if t == tag && (*b).key.key() == q {
                    return Some(i);
                }
            }
            i = (i + 1) & (cap - 1);
        }
        None
    }

    /// The value for `q`.
    pub fn get<'a>(&'a self, _tx: &'a Tx<'_>, q: &K::Q) -> Option<&'a V> {
        let i = self.find(q, stable_hash(q))?;
        // SAFETY: bucket i is FULL; it is only changed or freed under `&mut Tx`.
        Some(unsafe { &(*self.bucket(i)).val })
    }

    /// Whether `q` is a key.
    pub fn contains_key(&self, tx: &Tx<'_>, q: &K::Q) -> bool {
        self.get(tx, q).is_some()
    }

    fn rehash(&self, tx: &mut Tx<'_>, ncap: usize) -> Result<(), HeapError> {
        let sz = std::mem::size_of::<Bucket<K, V>>();
        let al = std::mem::align_of::<Bucket<K, V>>();
        let bytes = ncap
            .checked_mul(sz)
            .ok_or(HeapError::Invalid("map too large"))?;
        let nt = tx.alloc_raw(bytes, al)? as *mut Bucket<K, V>;
        // SAFETY: nt is fresh (pre-image logged by the allocator); zeroing marks all EMPTY.
        unsafe { std::ptr::write_bytes(nt.cast::<u8>(), 0, bytes) };
        let cap = self.cap.get() as usize;
        for i in 0..cap {
            // SAFETY: i < cap; FULL buckets are moved bitwise into the fresh table (their keys
            // and values keep owning the same blocks).
            unsafe {
                let b = self.bucket(i);
                if (*b).tag & FULL_BIT != 0 {
                    let mut j = (*b).tag as usize & (ncap - 1);
                    while (*nt.add(j)).tag != EMPTY {
                        j = (j + 1) & (ncap - 1);
                    }
                    std::ptr::copy_nonoverlapping(b, nt.add(j), 1);
                }
            }
        }
        if cap > 0 {
            // SAFETY: the old table came from alloc_raw(cap*sz, al); nothing refers to it now.
            unsafe { tx.free_raw(self.table.get() as *mut u8, cap * sz, al)? };
        }
        self.table.set(tx, nt as u64)?;
        self.cap.set(tx, ncap as u64)?;
        self.used.set(tx, self.len.get())
    }

    /// Inserts or replaces. Returns whether a value was replaced (the old one is freed).
    ///
    /// # Errors
    /// [`HeapError::Full`], [`HeapError::LogFull`], [`HeapError::NotInHeap`]; after an error,
    /// abort or roll back to a savepoint.
    pub fn insert(&self, tx: &mut Tx<'_>, k: K::In<'_>, v: V::In<'_>) -> Result<bool, HeapError> {
        in_heap(tx, self)?;
        let q = K::in_key(&k);
        let h = stable_hash(q);
        if let Some(i) = self.find(q, h) {
            let nv = V::create(tx, v, Token(()))?;
            // SAFETY: bucket i is FULL; the slot is logged before the write; the old value is
            // destroyed after nothing refers to it.
            unsafe {
                let p = &raw mut (*self.bucket(i)).val;
                let old = p.read();
                log_elems(tx, p, 1)?;
                p.write(nv);
                V::destroy(&old, tx, Token(()))?;
            }
            return Ok(true);
        }
        let cap = self.cap.get() as usize;
        if (self.used.get() as usize + 1) * 8 > cap * 7 {
            let ncap = if (self.len() + 1) * 2 > cap {
                (cap * 2).max(8)
            } else {
                cap.max(8)
            };
            self.rehash(tx, ncap)?;
        }
        let cap = self.cap.get() as usize;
        let mut i = h as usize & (cap - 1);
        // SAFETY: i < cap; a free bucket exists (load factor < 7/8).
        unsafe {
            while (*self.bucket(i)).tag & FULL_BIT != 0 {
                i = (i + 1) & (cap - 1);
            }
        }
        let key = K::create(tx, k, Token(()))?;
        let val = V::create(tx, v, Token(()))?;
        let b = self.bucket(i);
        // SAFETY: bucket i is EMPTY or TOMB; logged before the write.
        let was_empty = unsafe {
            let was = (*b).tag == EMPTY;
            log_elems(tx, b, 1)?;
            b.write(Bucket {
                tag: h | FULL_BIT,
                key,
                val,
            });
            was
        };
        self.len.set(tx, self.len.get() + 1)?;
        if was_empty {
            self.used.set(tx, self.used.get() + 1)?;
        }
        Ok(false)
    }

    /// Removes `q`. Returns whether it was present (its key and value are freed).
    ///
    /// # Errors
    /// Log errors.
    pub fn remove(&self, tx: &mut Tx<'_>, q: &K::Q) -> Result<bool, HeapError> {
        let Some(i) = self.find(q, stable_hash(q)) else {
            return Ok(false);
        };
        in_heap(tx, self)?;
        let b = self.bucket(i);
        // SAFETY: bucket i is FULL; its tag is logged before it becomes a tombstone; the key and
        // value are destroyed after (`&mut Tx`: nobody refers to them).
        unsafe {
            let key = (&raw const (*b).key).read();
            let val = (&raw const (*b).val).read();
            log_elems(tx, &raw const (*b).tag, 1)?;
            (*b).tag = TOMB;
            K::destroy(&key, tx, Token(()))?;
            V::destroy(&val, tx, Token(()))?;
        }
        self.len.set(tx, self.len.get() - 1)?;
        Ok(true)
    }

    /// Iterates over the entries (in table order).
    pub fn iter<'a>(&'a self, _tx: &'a Tx<'_>) -> impl Iterator<Item = (&'a K, &'a V)> + 'a {
        let cap = self.cap.get() as usize;
        (0..cap).filter_map(move |i| {
            // SAFETY: i < cap; FULL buckets are initialised and stay so for 'a (`&Tx`).
            unsafe {
                let b = self.bucket(i);
                ((*b).tag & FULL_BIT != 0).then(|| (&(*b).key, &(*b).val))
            }
        })
    }
}
