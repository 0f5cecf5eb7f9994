//! `PBTreeMap`: an ordered map (B+ tree) with range scans, in the heap.
//!
//! Nodes hold up to 16 keys. Leaves are chained for range scans. Inserting into a full node
//! splits it (the whole old node is logged once, the new node is fresh memory). Removal does
//! not rebalance: a leaf may become empty and stays in the chain (lookups and scans skip it);
//! the tree never shrinks, which costs memory only after mass deletion.

use std::marker::PhantomData;
use std::mem::{MaybeUninit, size_of};
use std::ops::Bound;

use super::{PKey, PValue, Token, in_heap, log_elems};
use crate::{HeapError, PCell, Persistent, Tx};

const CAP: usize = 16;
/// Entries the left leaf keeps after a split (of CAP + 1).
const LEAF_LEFT: usize = CAP / 2 + 1;
/// Index of the key that moves up when an inner node of CAP + 1 keys splits.
const INNER_UP: usize = CAP / 2;
const MAX_HEIGHT: usize = 48;

#[repr(C)]
struct Leaf<K, V> {
    is_leaf: u32,
    n: u32,
    next: u64,
    keys: [MaybeUninit<K>; CAP],
    vals: [MaybeUninit<V>; CAP],
}

#[repr(C)]
struct Inner<K> {
    is_leaf: u32,
    n: u32,
    _pad: u64,
    keys: [MaybeUninit<K>; CAP],
    kids: [u64; CAP + 1],
}

/// An ordered map with persistent keys and values and range scans. For a key-value store:
/// `PBTreeMap<PBytes, PBytes>`, looked up with `&[u8]`.
#[repr(C)]
pub struct PBTreeMap<K: PKey, V: PValue> {
    root: PCell<u64>,
    len: PCell<u64>,
    height: PCell<u64>,
    _m: PhantomData<(K, V)>,
}

// SAFETY: repr(C) of cells; `root` is 0 or a node of this heap owned by the map; keys and
// values are Persistent; every mutation is logged.
unsafe impl<K: PKey, V: PValue> Persistent for PBTreeMap<K, V> {}

impl<K: PKey, V: PValue> Default for PBTreeMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: PKey, V: PValue> std::fmt::Debug for PBTreeMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PBTreeMap")
            .field("len", &self.len())
            .finish()
    }
}

struct Path {
    n: usize,
    at: [(u64, usize); MAX_HEIGHT],
}

// Raw accessors. SAFETY of all: callers pass a live node of the right kind and i < CAP (+1).
#[inline]
unsafe fn lk<K, V>(l: *mut Leaf<K, V>, i: usize) -> *mut K {
    // SAFETY: see above.
    unsafe { (&raw mut (*l).keys).cast::<K>().add(i) }
}
#[inline]
unsafe fn lv<K, V>(l: *mut Leaf<K, V>, i: usize) -> *mut V {
    // SAFETY: see above.
    unsafe { (&raw mut (*l).vals).cast::<V>().add(i) }
}
#[inline]
unsafe fn ik<K>(n: *mut Inner<K>, i: usize) -> *mut K {
    // SAFETY: see above.
    unsafe { (&raw mut (*n).keys).cast::<K>().add(i) }
}
#[inline]
unsafe fn kid<K>(n: *mut Inner<K>, i: usize) -> *mut u64 {
    // SAFETY: see above.
    unsafe { (&raw mut (*n).kids).cast::<u64>().add(i) }
}

impl<K: PKey, V: PValue> PBTreeMap<K, V> {
    /// An empty map (allocates nothing).
    pub const fn new() -> Self {
        PBTreeMap {
            root: PCell::new(0),
            len: PCell::new(0),
            height: PCell::new(0),
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

    /// First index in leaf `l` whose key is >= q (or > q if `strict`), and whether it equals q.
    ///
    /// # Safety
    /// `l` is a live leaf.
    #[inline]
    unsafe fn leaf_pos(l: *mut Leaf<K, V>, q: &K::Q, strict: bool) -> (usize, bool) {
        // SAFETY: l is live (contract); keys 0..n are initialised.
        unsafe {
            let (mut lo, mut hi) = (0usize, (*l).n as usize);
            while lo < hi {
                let mid = (lo + hi) / 2;
                let k = (*lk(l, mid)).key();
                let go_right = if strict { k <= q } else { k < q };
                if go_right {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let found = !strict && lo < (*l).n as usize && (*lk(l, lo)).key() == q;
            (lo, found)
        }
    }

    /// Index of the child of inner node `n` that may hold q: the number of keys <= q.
    ///
    /// # Safety
    /// `n` is a live inner node.
    #[inline]
    unsafe fn child_pos(n: *mut Inner<K>, q: &K::Q) -> usize {
        // SAFETY: n is live; keys 0..n initialised.
        unsafe {
            let (mut lo, mut hi) = (0usize, (*n).n as usize);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if (*ik(n, mid)).key() <= q {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        }
    }

    /// The leaf that may hold `q` (`None`: leftmost), recording the path if asked.
    fn descend(&self, q: Option<&K::Q>, mut path: Option<&mut Path>) -> *mut Leaf<K, V> {
        let mut node = self.root.get();
        let h = (self.height.get() as usize).min(MAX_HEIGHT);
        for _ in 0..h {
            let nd = node as *mut Inner<K>;
            // SAFETY: levels above 0 are inner nodes of this map.
            let c = unsafe { q.map_or(0, |q| Self::child_pos(nd, q)) };
            if let Some(p) = path.as_deref_mut() {
                p.at[p.n] = (node, c);
                p.n += 1;
            }
            // SAFETY: c <= n, kids 0..=n are set.
            node = unsafe { *kid(nd, c) };
        }
        node as *mut Leaf<K, V>
    }

    /// The value for `q`.
    pub fn get<'a>(&'a self, _tx: &'a Tx<'_>, q: &K::Q) -> Option<&'a V> {
        if self.root.get() == 0 {
            return None;
        }
        let l = self.descend(Some(q), None);
        // SAFETY: l is a live leaf; value i is initialised when found; nodes are only changed
        // or freed under `&mut Tx`, which cannot coexist with the `&Tx` borrow bounding 'a.
        unsafe {
            let (i, found) = Self::leaf_pos(l, q, false);
            found.then(|| &*lv(l, i))
        }
    }

    /// Whether `q` is a key.
    pub fn contains_key(&self, tx: &Tx<'_>, q: &K::Q) -> bool {
        self.get(tx, q).is_some()
    }

    /// Entries with keys in `(lo, hi)` bounds, in key order.
    pub fn range<'a>(
        &'a self,
        _tx: &'a Tx<'_>,
        lo: Bound<&K::Q>,
        hi: Bound<&'a K::Q>,
    ) -> Range<'a, K, V> {
        if self.root.get() == 0 {
            return Range {
                leaf: std::ptr::null_mut(),
                i: 0,
                hi,
                _m: PhantomData,
            };
        }
        let (leaf, i) = match lo {
            Bound::Unbounded => (self.descend(None, None), 0),
            Bound::Included(q) | Bound::Excluded(q) => {
                let l = self.descend(Some(q), None);
                // SAFETY: live leaf.
                let (i, _) = unsafe { Self::leaf_pos(l, q, matches!(lo, Bound::Excluded(_))) };
                (l, i)
            }
        };
        Range {
            leaf,
            i,
            hi,
            _m: PhantomData,
        }
    }

    /// All entries in key order.
    pub fn iter<'a>(&'a self, tx: &'a Tx<'_>) -> Range<'a, K, V> {
        self.range(tx, Bound::Unbounded, Bound::Unbounded)
    }

    fn new_leaf(tx: &mut Tx<'_>) -> Result<*mut Leaf<K, V>, HeapError> {
        let l = tx.alloc_raw(size_of::<Leaf<K, V>>(), align_of::<Leaf<K, V>>())? as *mut Leaf<K, V>;
        // SAFETY: fresh block (pre-image logged by the allocator).
        unsafe {
            (*l).is_leaf = 1;
            (*l).n = 0;
            (*l).next = 0;
        }
        Ok(l)
    }

    fn new_inner(tx: &mut Tx<'_>) -> Result<*mut Inner<K>, HeapError> {
        let n = tx.alloc_raw(size_of::<Inner<K>>(), align_of::<Inner<K>>())? as *mut Inner<K>;
        // SAFETY: fresh block.
        unsafe {
            (*n).is_leaf = 0;
            (*n).n = 0;
            (*n)._pad = 0;
        }
        Ok(n)
    }

    /// Inserts or replaces. Returns whether a value was replaced (the old one is freed).
    ///
    /// # Errors
    /// [`HeapError::Full`], [`HeapError::LogFull`], [`HeapError::NotInHeap`]; after an error,
    /// abort or roll back to a savepoint.
    pub fn insert(&self, tx: &mut Tx<'_>, k: K::In<'_>, v: V::In<'_>) -> Result<bool, HeapError> {
        in_heap(tx, self)?;
        if self.root.get() == 0 {
            let l = Self::new_leaf(tx)?;
            self.root.set(tx, l as u64)?;
            self.height.set(tx, 0)?;
        }
        if self.height.get() as usize >= MAX_HEIGHT - 1 {
            return Err(HeapError::BadHeap("B-tree too tall".into()));
        }
        let mut path = Path {
            n: 0,
            at: [(0, 0); MAX_HEIGHT],
        };
        let q = K::in_key(&k);
        let leaf = self.descend(Some(q), Some(&mut path));
        // SAFETY: live leaf.
        let (i, found) = unsafe { Self::leaf_pos(leaf, q, false) };
        if found {
            // SAFETY: value i is initialised and live; the reference ends before the slot is
            // touched below.
            if V::replace_in_place(unsafe { &*lv(leaf, i) }, tx, &v, Token(()))? {
                return Ok(true);
            }
            let nv = V::create(tx, v, Token(()))?;
            // SAFETY: value i is initialised; logged before the overwrite; the old value is
            // destroyed once nothing refers to it.
            unsafe {
                let p = lv(leaf, i);
                let old = p.read();
                log_elems(tx, p, 1)?;
                p.write(nv);
                V::destroy(&old, tx, Token(()))?;
            }
            return Ok(true);
        }
        let key = K::create(tx, k, Token(()))?;
        let val = V::create(tx, v, Token(()))?;
        self.len.set(tx, self.len.get() + 1)?;
        // SAFETY: leaf is live; slots are logged before they change; moves are bitwise.
        unsafe {
            let n = (*leaf).n as usize;
            if n < CAP {
                log_elems(tx, lk(leaf, i), n + 1 - i)?;
                log_elems(tx, lv(leaf, i), n + 1 - i)?;
                log_elems(tx, &raw const (*leaf).n, 1)?;
                std::ptr::copy(lk(leaf, i), lk(leaf, i + 1), n - i);
                std::ptr::copy(lv(leaf, i), lv(leaf, i + 1), n - i);
                lk(leaf, i).write(key);
                lv(leaf, i).write(val);
                (*leaf).n = n as u32 + 1;
                return Ok(false);
            }
            // Split: gather CAP + 1 entries, left keeps LEAF_LEFT.
            let r = Self::new_leaf(tx)?;
            log_elems(tx, leaf, 1)?;
            let mut tk: [MaybeUninit<K>; CAP + 1] = [const { MaybeUninit::uninit() }; CAP + 1];
            let mut tv: [MaybeUninit<V>; CAP + 1] = [const { MaybeUninit::uninit() }; CAP + 1];
            let tkp = tk.as_mut_ptr().cast::<K>();
            let tvp = tv.as_mut_ptr().cast::<V>();
            std::ptr::copy_nonoverlapping(lk(leaf, 0), tkp, i);
            std::ptr::copy_nonoverlapping(lv(leaf, 0), tvp, i);
            tkp.add(i).write(key);
            tvp.add(i).write(val);
            std::ptr::copy_nonoverlapping(lk(leaf, i), tkp.add(i + 1), CAP - i);
            std::ptr::copy_nonoverlapping(lv(leaf, i), tvp.add(i + 1), CAP - i);
            std::ptr::copy_nonoverlapping(tkp, lk(leaf, 0), LEAF_LEFT);
            std::ptr::copy_nonoverlapping(tvp, lv(leaf, 0), LEAF_LEFT);
            let rn = CAP + 1 - LEAF_LEFT;
            std::ptr::copy_nonoverlapping(tkp.add(LEAF_LEFT), lk(r, 0), rn);
            std::ptr::copy_nonoverlapping(tvp.add(LEAF_LEFT), lv(r, 0), rn);
            (*r).n = rn as u32;
            (*r).next = (*leaf).next;
            (*leaf).next = r as u64;
            (*leaf).n = LEAF_LEFT as u32;
            let sep = (*lk(r, 0)).dup(tx, Token(()))?;
            self.propagate(tx, &mut path, sep, r as u64)?;
        }
        Ok(false)
    }

    fn propagate(
        &self,
        tx: &mut Tx<'_>,
        path: &mut Path,
        mut sep: K,
        mut right: u64,
    ) -> Result<(), HeapError> {
        while path.n > 0 {
            path.n -= 1;
            let (node, idx) = path.at[path.n];
            let nd = node as *mut Inner<K>;
            // SAFETY: nd is a live inner node on the descent path, idx <= n; logged before
            // change; moves are bitwise.
            unsafe {
                let n = (*nd).n as usize;
                if n < CAP {
                    log_elems(tx, ik(nd, idx), n + 1 - idx)?;
                    log_elems(tx, kid(nd, idx + 1), n + 1 - idx)?;
                    log_elems(tx, &raw const (*nd).n, 1)?;
                    std::ptr::copy(ik(nd, idx), ik(nd, idx + 1), n - idx);
                    std::ptr::copy(kid(nd, idx + 1), kid(nd, idx + 2), n - idx);
                    ik(nd, idx).write(sep);
                    kid(nd, idx + 1).write(right);
                    (*nd).n = n as u32 + 1;
                    return Ok(());
                }
                let q = Self::new_inner(tx)?;
                log_elems(tx, nd, 1)?;
                let mut tk: [MaybeUninit<K>; CAP + 1] = [const { MaybeUninit::uninit() }; CAP + 1];
                let mut tc = [0u64; CAP + 2];
                let tkp = tk.as_mut_ptr().cast::<K>();
                std::ptr::copy_nonoverlapping(ik(nd, 0), tkp, idx);
                tkp.add(idx).write(sep);
                std::ptr::copy_nonoverlapping(ik(nd, idx), tkp.add(idx + 1), CAP - idx);
                tc[..=idx].copy_from_slice(std::slice::from_raw_parts(kid(nd, 0), idx + 1));
                tc[idx + 1] = right;
                tc[idx + 2..]
                    .copy_from_slice(std::slice::from_raw_parts(kid(nd, idx + 1), CAP - idx));
                // Left: keys 0..INNER_UP, kids 0..=INNER_UP; key INNER_UP moves up; right: the rest.
                std::ptr::copy_nonoverlapping(tkp, ik(nd, 0), INNER_UP);
                std::ptr::copy_nonoverlapping(tc.as_ptr(), kid(nd, 0), INNER_UP + 1);
                (*nd).n = INNER_UP as u32;
                let rn = CAP - INNER_UP;
                std::ptr::copy_nonoverlapping(tkp.add(INNER_UP + 1), ik(q, 0), rn);
                std::ptr::copy_nonoverlapping(tc.as_ptr().add(INNER_UP + 1), kid(q, 0), rn + 1);
                (*q).n = rn as u32;
                sep = tkp.add(INNER_UP).read();
                right = q as u64;
            }
        }
        let r = Self::new_inner(tx)?;
        // SAFETY: r is fresh.
        unsafe {
            ik(r, 0).write(sep);
            kid(r, 0).write(self.root.get());
            kid(r, 1).write(right);
            (*r).n = 1;
        }
        self.root.set(tx, r as u64)?;
        self.height.set(tx, self.height.get() + 1)
    }

    /// Removes `q`. Returns whether it was present (its key and value are freed).
    ///
    /// # Errors
    /// Log errors.
    pub fn remove(&self, tx: &mut Tx<'_>, q: &K::Q) -> Result<bool, HeapError> {
        if self.root.get() == 0 {
            return Ok(false);
        }
        let leaf = self.descend(Some(q), None);
        // SAFETY: live leaf.
        let (i, found) = unsafe { Self::leaf_pos(leaf, q, false) };
        if !found {
            return Ok(false);
        }
        in_heap(tx, self)?;
        // SAFETY: entry i is initialised; slots logged before the shift; key and value are
        // destroyed after nothing refers to them (`&mut Tx`).
        unsafe {
            let n = (*leaf).n as usize;
            let key = lk(leaf, i).read();
            let val = lv(leaf, i).read();
            log_elems(tx, lk(leaf, i), n - i)?;
            log_elems(tx, lv(leaf, i), n - i)?;
            log_elems(tx, &raw const (*leaf).n, 1)?;
            std::ptr::copy(lk(leaf, i + 1), lk(leaf, i), n - i - 1);
            std::ptr::copy(lv(leaf, i + 1), lv(leaf, i), n - i - 1);
            (*leaf).n = n as u32 - 1;
            K::destroy(&key, tx, Token(()))?;
            V::destroy(&val, tx, Token(()))?;
        }
        self.len.set(tx, self.len.get() - 1)?;
        Ok(true)
    }
}

/// Iterator over a key range of a [`PBTreeMap`].
pub struct Range<'a, K: PKey, V: PValue> {
    leaf: *mut Leaf<K, V>,
    i: usize,
    hi: Bound<&'a K::Q>,
    _m: PhantomData<&'a (K, V)>,
}

impl<K: PKey, V: PValue> std::fmt::Debug for Range<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Range").field("i", &self.i).finish()
    }
}

impl<'a, K: PKey, V: PValue> Iterator for Range<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.leaf.is_null() {
            let l = self.leaf;
            // SAFETY: l is a live leaf of the map; the map cannot change during 'a (`&Tx`).
            unsafe {
                if self.i < (*l).n as usize {
                    let k = &*lk(l, self.i);
                    let past = match self.hi {
                        Bound::Unbounded => false,
                        Bound::Included(h) => k.key() > h,
                        Bound::Excluded(h) => k.key() >= h,
                    };
                    if past {
                        self.leaf = std::ptr::null_mut();
                        return None;
                    }
                    let v = &*lv(l, self.i);
                    self.i += 1;
                    return Some((k, v));
                }
                self.leaf = (*l).next as *mut Leaf<K, V>;
                self.i = 0;
            }
        }
        None
    }
}
