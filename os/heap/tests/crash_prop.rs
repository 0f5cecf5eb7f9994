//! Model-based property tests with simulated crashes.
//!
//! Each case: a random committed prefix of operations on every collection (checked against a
//! std model), then a random transaction stopped at a random undo-log record (the appender
//! fails once the log holds `k` records: the heap is exactly as a server killed just before
//! record `k + 1` would leave it). The "server" then vanishes (no commit, no abort), a
//! recovery that itself dies midway is simulated, and a full `recover` runs from a separate
//! mapping. The heap must equal its pre-transaction bytes, the collections the model, and the
//! allocator's invariants must hold.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::os::fd::AsFd;

use proptest::prelude::*;
use txipc_heap::{
    Heap, HeapError, PBTreeMap, PBytes, PCell, PHashMap, PVec, Persistent, Tracking, TxState,
    create_heap_memfd, create_log_memfd, heap_bytes, recover, rollback_partial,
};

const BASE: usize = 0x6200_0000_0000;

#[derive(Persistent)]
#[repr(C)]
struct Root {
    map: PBTreeMap<PBytes, PBytes>,
    vec: PVec<u64>,
    hm: PHashMap<u16, PBytes>,
    blobs: PVec<PBytes>,
    counter: PCell<u64>,
}

#[derive(Default, Clone, Debug, PartialEq)]
struct Model {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    vec: Vec<u64>,
    hm: HashMap<u16, Vec<u8>>,
    blobs: Vec<Vec<u8>>,
    counter: u64,
}

#[derive(Clone, Debug)]
enum Op {
    MapInsert(u8, Vec<u8>),
    MapRemove(u8),
    VecPush(u64),
    VecPop,
    VecSet(usize, u64),
    HmInsert(u16, Vec<u8>),
    HmRemove(u16),
    BlobPush(usize, u8),
    BlobPop,
    Count,
}

fn key(n: u8) -> Vec<u8> {
    let mut k = vec![b'k'; 1 + (n % 7) as usize];
    k.push(n);
    k
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..48)).prop_map(|(k, v)| Op::MapInsert(k, v)),
        2 => any::<u8>().prop_map(Op::MapRemove),
        1 => any::<u64>().prop_map(Op::VecPush),
        1 => Just(Op::VecPop),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Op::VecSet(i, v)),
        2 => (0u16..300, prop::collection::vec(any::<u8>(), 0..24)).prop_map(|(k, v)| Op::HmInsert(k, v)),
        1 => (0u16..300).prop_map(Op::HmRemove),
        1 => (0usize..9000, any::<u8>()).prop_map(|(n, b)| Op::BlobPush(n, b)),
        1 => Just(Op::BlobPop),
        1 => Just(Op::Count),
    ]
}

fn apply(root: &Root, tx: &mut txipc_heap::Tx<'_>, op: &Op) -> Result<(), HeapError> {
    match op {
        Op::MapInsert(k, v) => root.map.insert(tx, &key(*k), v).map(drop),
        Op::MapRemove(k) => root.map.remove(tx, &key(*k)).map(drop),
        Op::VecPush(v) => root.vec.push(tx, *v),
        Op::VecPop => root.vec.pop(tx).map(drop),
        Op::VecSet(i, v) => {
            if root.vec.is_empty() {
                Ok(())
            } else {
                root.vec.set(tx, i % root.vec.len(), *v)
            }
        }
        Op::HmInsert(k, v) => root.hm.insert(tx, *k, v).map(drop),
        Op::HmRemove(k) => root.hm.remove(tx, k).map(drop),
        Op::BlobPush(n, b) => root.blobs.push(tx, &vec![*b; *n]),
        Op::BlobPop => root.blobs.pop(tx).map(drop),
        Op::Count => root.counter.update(tx, |c| c + 1).map(drop),
    }
}

fn apply_model(m: &mut Model, op: &Op) {
    match op {
        Op::MapInsert(k, v) => {
            m.map.insert(key(*k), v.clone());
        }
        Op::MapRemove(k) => {
            m.map.remove(&key(*k));
        }
        Op::VecPush(v) => m.vec.push(*v),
        Op::VecPop => {
            m.vec.pop();
        }
        Op::VecSet(i, v) => {
            if !m.vec.is_empty() {
                let n = m.vec.len();
                m.vec[i % n] = *v;
            }
        }
        Op::HmInsert(k, v) => {
            m.hm.insert(*k, v.clone());
        }
        Op::HmRemove(k) => {
            m.hm.remove(k);
        }
        Op::BlobPush(n, b) => m.blobs.push(vec![*b; *n]),
        Op::BlobPop => {
            m.blobs.pop();
        }
        Op::Count => m.counter += 1,
    }
}

fn read_model(heap: &Heap, root: &Root, txid: u64) -> Model {
    let tx = heap.begin(txid).unwrap();
    let m = Model {
        map: root
            .map
            .iter(&tx)
            .take(1 << 16)
            .map(|(k, v)| (k.as_slice().to_vec(), v.as_slice().to_vec()))
            .collect(),
        vec: root.vec.iter(&tx).copied().collect(),
        hm: root
            .hm
            .iter(&tx)
            .map(|(k, v)| (*k, v.as_slice().to_vec()))
            .collect(),
        blobs: root
            .blobs
            .iter(&tx)
            .map(|b| b.as_slice().to_vec())
            .collect(),
        counter: root.counter.get(),
    };
    // Point lookups and a range agree with the iteration.
    for (k, v) in &m.map {
        assert_eq!(root.map.get(&tx, k).map(|x| x.as_slice()), Some(&v[..]));
    }
    let lo = key(40);
    let hi = key(90);
    let got: Vec<Vec<u8>> = root
        .map
        .range(&tx, Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))
        .map(|(k, _)| k.as_slice().to_vec())
        .collect();
    let want: Vec<Vec<u8>> = m
        .map
        .range::<Vec<u8>, _>((Bound::Included(&lo), Bound::Excluded(&hi)))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(got, want, "range scan");
    for (k, v) in &m.hm {
        assert_eq!(root.hm.get(&tx, k).map(|x| x.as_slice()), Some(&v[..]));
    }
    tx.commit().unwrap();
    m
}

fn new_root() -> Root {
    Root {
        map: PBTreeMap::new(),
        vec: PVec::new(),
        hm: PHashMap::new(),
        blobs: PVec::new(),
        counter: PCell::new(0),
    }
}

fn run_case(prefix: &[Vec<Op>], crash_ops: &[Op], limit: u64, partial: usize, commit: bool) {
    let hfd = create_heap_memfd("prop-heap", 8 << 20).unwrap();
    let lfd = create_log_memfd("prop-log", 8 << 20).unwrap();
    let mut model = Model::default();
    let mut txid = 1;
    {
        let heap = Heap::attach(&hfd, &lfd, BASE, Tracking::Typed).unwrap();
        let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
        for batch in prefix {
            let mut tx = heap.begin(txid).unwrap();
            txid += 1;
            for op in batch {
                apply(root, &mut tx, op).unwrap();
                apply_model(&mut model, op);
            }
            tx.commit().unwrap();
        }
        assert_eq!(read_model(&heap, root, txid), model);
        txid += 1;
        heap.check(true).unwrap();

        let before = heap_bytes(hfd.as_fd()).unwrap();
        let mut tx = heap.begin(txid).unwrap();
        tx.set_record_limit(limit);
        let mut stopped = false;
        for op in crash_ops {
            if apply(root, &mut tx, op).is_err() {
                stopped = true;
                break;
            }
        }
        if !stopped && commit {
            tx.commit().unwrap();
            for op in crash_ops {
                apply_model(&mut model, op);
            }
        } else {
            // The server dies here, at record `limit` (or after its last op).
            std::mem::forget(tx);
            rollback_partial(hfd.as_fd(), lfd.as_fd(), partial).unwrap();
            let r = recover(hfd.as_fd(), lfd.as_fd()).unwrap();
            assert_eq!(r.prior, TxState::Active(txid));
            assert_eq!(
                heap_bytes(hfd.as_fd()).unwrap(),
                before,
                "heap after rollback differs"
            );
        }
    }
    let heap = Heap::attach(&hfd, &lfd, BASE, Tracking::Typed).unwrap();
    let root: &Root = heap.root().unwrap().unwrap();
    heap.check(true).unwrap();
    assert_eq!(read_model(&heap, root, txid + 1), model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn crash_at_any_record_rolls_back_exactly(
        prefix in prop::collection::vec(prop::collection::vec(op(), 0..40), 0..6),
        crash_ops in prop::collection::vec(op(), 1..120),
        limit in 0u64..600,
        partial in 0usize..400,
        commit in any::<bool>(),
    ) {
        run_case(&prefix, &crash_ops, limit, partial, commit);
    }
}
