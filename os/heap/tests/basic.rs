//! Single-process behaviour of the heap, the log, the allocator and the collections.

use std::ops::Bound;
use std::os::fd::AsFd;

use txipc_heap::{
    BatchEntry, Heap, HeapError, PBTreeMap, PBytes, PCell, PHashMap, PVec, Persistent, Tracking,
    TxState, create_heap_memfd, create_log_memfd, heap_bytes, read_log, recover,
};

fn base(n: usize) -> usize {
    0x6100_0000_0000 + n * (1 << 32)
}

#[derive(Persistent)]
#[repr(C)]
struct Root {
    map: PBTreeMap<PBytes, PBytes>,
    count: PCell<u64>,
    vec: PVec<u64>,
    hm: PHashMap<u64, PBytes>,
}

fn new_root() -> Root {
    Root {
        map: PBTreeMap::new(),
        count: PCell::new(0),
        vec: PVec::new(),
        hm: PHashMap::new(),
    }
}

#[test]
fn format_then_validate_on_reattach() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 16).unwrap();
    {
        let heap = Heap::attach(&hfd, &lfd, base(1), Tracking::Typed).unwrap();
        let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
        let mut tx = heap.begin(1).unwrap();
        root.map.insert(&mut tx, b"k", b"v").unwrap();
        root.count.set(&tx, 7).unwrap();
        tx.commit().unwrap();
    }
    // Same base: validated, state is there.
    let heap = Heap::attach(&hfd, &lfd, base(1), Tracking::Typed).unwrap();
    let root: &Root = heap.root().unwrap().unwrap();
    let tx = heap.begin(2).unwrap();
    assert_eq!(root.map.get(&tx, b"k").unwrap().as_slice(), b"v");
    assert_eq!(root.count.get(), 7);
    tx.commit().unwrap();
    drop(heap);
    // Another base: refused (pointers inside would be wrong).
    match Heap::attach(&hfd, &lfd, base(2), Tracking::Typed) {
        Err(HeapError::BaseMismatch { .. }) => {}
        other => panic!("expected BaseMismatch, got {other:?}"),
    }
}

#[test]
fn address_in_use_is_a_clear_error() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 16).unwrap();
    let h2 = create_heap_memfd("t2", 1 << 20).unwrap();
    let l2 = create_log_memfd("l2", 1 << 16).unwrap();
    let _heap = Heap::attach(&hfd, &lfd, base(3), Tracking::Typed).unwrap();
    let e = Heap::attach(&h2, &l2, base(3), Tracking::Typed).unwrap_err();
    assert!(matches!(e, HeapError::AddressInUse { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{:#x}", base(3))), "{e}");
}

#[test]
fn wrong_root_type_is_refused() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(4), Tracking::Typed).unwrap();
    let _: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    assert!(matches!(
        heap.root::<PCell<u64>>(),
        Err(HeapError::RootMismatch { .. })
    ));
}

#[test]
fn commit_abort_savepoint_and_batch() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(5), Tracking::Typed).unwrap();
    let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    let before = heap_bytes(hfd.as_fd()).unwrap();

    let mut tx = heap.begin(10).unwrap();
    for i in 0..100u64 {
        root.map
            .insert(&mut tx, format!("key{i}").as_bytes(), b"x")
            .unwrap();
        root.vec.push(&mut tx, i).unwrap();
        root.hm.insert(&mut tx, i, b"hello").unwrap();
    }
    root.count.set(&tx, 5).unwrap();
    let r = tx.abort().unwrap();
    assert!(r.records > 0);
    assert_eq!(
        heap_bytes(hfd.as_fd()).unwrap(),
        before,
        "abort restores byte for byte"
    );
    assert_eq!(read_log(lfd.as_fd()).unwrap().state, TxState::Aborted(10));

    let mut tx = heap.begin(11).unwrap();
    tx.add_batch_entry(BatchEntry {
        chan: 1,
        slot: 2,
        seq: 3,
    })
    .unwrap();
    tx.add_batch_entry(BatchEntry {
        chan: 4,
        slot: 5,
        seq: 6,
    })
    .unwrap();
    root.map.insert(&mut tx, b"a", b"1").unwrap();
    let sp = tx.savepoint().unwrap();
    root.map.insert(&mut tx, b"b", b"2").unwrap();
    root.map.insert(&mut tx, b"a", b"changed").unwrap();
    tx.rollback_to(sp).unwrap();
    root.map.insert(&mut tx, b"c", b"3").unwrap();
    assert_eq!(read_log(lfd.as_fd()).unwrap().state, TxState::Active(11));
    tx.commit().unwrap();
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!(snap.state, TxState::Committed(11));
    assert_eq!(
        snap.batch,
        vec![
            BatchEntry {
                chan: 1,
                slot: 2,
                seq: 3
            },
            BatchEntry {
                chan: 4,
                slot: 5,
                seq: 6
            }
        ]
    );
    let tx = heap.begin(12).unwrap();
    let all: Vec<(Vec<u8>, Vec<u8>)> = root
        .map
        .iter(&tx)
        .map(|(k, v)| (k.as_slice().to_vec(), v.as_slice().to_vec()))
        .collect();
    assert_eq!(
        all,
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"c".to_vec(), b"3".to_vec())
        ]
    );
    drop(tx); // drop aborts
    assert_eq!(read_log(lfd.as_fd()).unwrap().state, TxState::Aborted(12));
}

#[test]
fn batch_descriptor_is_bounded() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(6), Tracking::Typed).unwrap();
    let mut tx = heap.begin(1).unwrap();
    for i in 0..64 {
        tx.add_batch_entry(BatchEntry {
            chan: 0,
            slot: i,
            seq: 0,
        })
        .unwrap();
    }
    assert!(matches!(
        tx.add_batch_entry(BatchEntry {
            chan: 0,
            slot: 64,
            seq: 0
        }),
        Err(HeapError::BatchFull { .. })
    ));
    tx.commit().unwrap();
}

#[test]
fn full_heap_and_full_log_are_errors_and_abort_cleanly() {
    let hfd = create_heap_memfd("t", 256 << 10).unwrap();
    let lfd = create_log_memfd("l", 1 << 20).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(7), Tracking::Typed).unwrap();
    let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    let before = heap_bytes(hfd.as_fd()).unwrap();
    let mut tx = heap.begin(1).unwrap();
    let big = vec![7u8; 1000];
    let mut n = 0u64;
    let err = loop {
        match root.map.insert(&mut tx, format!("{n:08}").as_bytes(), &big) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1_000_000);
    };
    assert!(matches!(err, HeapError::Full { .. }), "{err}");
    tx.abort().unwrap();
    assert_eq!(heap_bytes(hfd.as_fd()).unwrap(), before);
    heap.check(true).unwrap();

    // A small log: LogFull, then abort restores.
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 16 << 10).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(8), Tracking::Typed).unwrap();
    let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    let mut tx = heap.begin(1).unwrap();
    for i in 0..50u64 {
        root.hm.insert(&mut tx, i, b"v").unwrap();
    }
    tx.commit().unwrap();
    let before = heap_bytes(hfd.as_fd()).unwrap();
    let mut tx = heap.begin(2).unwrap();
    let err = loop {
        if let Err(e) = root.vec.push(&mut tx, 1) {
            break e;
        }
    };
    assert!(matches!(err, HeapError::LogFull { .. }), "{err}");
    tx.abort().unwrap();
    assert_eq!(heap_bytes(hfd.as_fd()).unwrap(), before);
}

#[test]
fn recover_rolls_back_an_active_transaction_from_another_mapping() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 20).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(9), Tracking::Typed).unwrap();
    let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    let mut tx = heap.begin(1).unwrap();
    for i in 0..300u64 {
        root.map
            .insert(&mut tx, &i.to_be_bytes(), b"first")
            .unwrap();
    }
    tx.commit().unwrap();
    let before = heap_bytes(hfd.as_fd()).unwrap();
    let mut tx = heap.begin(2).unwrap();
    tx.add_batch_entry(BatchEntry {
        chan: 9,
        slot: 1,
        seq: 77,
    })
    .unwrap();
    for i in 0..300u64 {
        if i % 3 == 0 {
            root.map.remove(&mut tx, &i.to_be_bytes()).unwrap();
        } else {
            root.map
                .insert(&mut tx, &(i * 7).to_be_bytes(), b"second")
                .unwrap();
        }
    }
    // The server "dies" here: no commit, no abort.
    std::mem::forget(tx);
    let r = recover(hfd.as_fd(), lfd.as_fd()).unwrap();
    assert_eq!(r.prior, TxState::Active(2));
    assert!(
        r.batch.is_empty(),
        "batch is reported only for committed transactions"
    );
    assert!(r.undone.records > 0);
    assert_eq!(heap_bytes(hfd.as_fd()).unwrap(), before);
    // Again: nothing to do.
    let r2 = recover(hfd.as_fd(), lfd.as_fd()).unwrap();
    assert_eq!(r2.prior, TxState::Aborted(2));
    assert_eq!(r2.undone.records, 0);
    drop(heap);
    let heap = Heap::attach(&hfd, &lfd, base(9), Tracking::Typed).unwrap();
    let root: &Root = heap.root().unwrap().unwrap();
    let tx = heap.begin(3).unwrap();
    assert_eq!(root.map.len(), 300);
    let lo = 10u64.to_be_bytes();
    let hi = 20u64.to_be_bytes();
    let keys: Vec<u64> = root
        .map
        .range(&tx, Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))
        .map(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().unwrap()))
        .collect();
    assert_eq!(keys, (10..20).collect::<Vec<_>>());
    tx.commit().unwrap();
}

#[test]
fn collections_on_the_stack_refuse_to_grow() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(10), Tracking::Typed).unwrap();
    let local: PVec<u64> = PVec::new();
    let mut tx = heap.begin(1).unwrap();
    assert!(matches!(
        local.push(&mut tx, 1),
        Err(HeapError::NotInHeap { .. })
    ));
    let cell = PCell::new(1u64);
    assert!(matches!(cell.set(&tx, 2), Err(HeapError::NotInHeap { .. })));
    tx.abort().unwrap();
}

#[test]
fn off_tracking_logs_nothing() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(11), Tracking::Off).unwrap();
    let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    let mut tx = heap.begin(1).unwrap();
    root.map.insert(&mut tx, b"a", b"b").unwrap();
    assert_eq!(tx.records(), 0);
    tx.commit().unwrap();
    let tx = heap.begin(2).unwrap();
    assert_eq!(root.map.get(&tx, b"a").unwrap().as_slice(), b"b");
    tx.commit().unwrap();
}

#[test]
fn stats_report_usage() {
    let hfd = create_heap_memfd("t", 1 << 20).unwrap();
    let lfd = create_log_memfd("l", 1 << 20).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(12), Tracking::Typed).unwrap();
    let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    let s0 = heap.stats();
    let mut tx = heap.begin(1).unwrap();
    for i in 0..200u64 {
        root.hm.insert(&mut tx, i, &[1u8; 40]).unwrap();
    }
    for i in 0..100u64 {
        root.hm.remove(&mut tx, &i).unwrap();
    }
    tx.commit().unwrap();
    let s1 = heap.stats();
    assert!(s1.used_bytes > s0.used_bytes);
    assert!(s1.free_small_bytes > 0);
    assert!(s1.fragmentation >= 0.0 && s1.fragmentation <= 1.0);
    heap.check(true).unwrap();
}

/// A map update with a byte string of the same length overwrites the stored bytes in their
/// block (no allocation, no free: the block's address stays), logged like any write, so abort
/// and crash recovery restore the old bytes; a different length still moves the value to a
/// new block. Fails if the same-length update allocates (the address changes).
#[test]
fn a_same_length_update_is_made_in_place_and_rolls_back() {
    let hfd = create_heap_memfd("tip", 1 << 20).unwrap();
    let lfd = create_log_memfd("lip", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(40), Tracking::Typed).unwrap();
    let root: &Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    let mut tx = heap.begin(1).unwrap();
    root.map.insert(&mut tx, b"k", b"aaaa").unwrap();
    root.map.insert(&mut tx, b"other", b"zz").unwrap();
    tx.commit().unwrap();
    let before = heap_bytes(hfd.as_fd()).unwrap();
    let addr = |tx: &txipc_heap::Tx<'_>| root.map.get(tx, b"k").unwrap().as_slice().as_ptr();
    let mut tx = heap.begin(2).unwrap();
    let a0 = addr(&tx);
    assert!(
        root.map.insert(&mut tx, b"k", b"bbbb").unwrap(),
        "an update"
    );
    assert_eq!(root.map.get(&tx, b"k").unwrap().as_slice(), b"bbbb");
    assert_eq!(addr(&tx), a0, "same length: overwritten in its block");
    tx.abort().unwrap();
    assert!(
        heap_bytes(hfd.as_fd()).unwrap() == before,
        "abort restores the old bytes"
    );
    // Committed in place, then a longer value moves to a new block.
    let mut tx = heap.begin(3).unwrap();
    root.map.insert(&mut tx, b"k", b"cccc").unwrap();
    tx.commit().unwrap();
    let mut tx = heap.begin(4).unwrap();
    assert_eq!(root.map.get(&tx, b"k").unwrap().as_slice(), b"cccc");
    assert_eq!(addr(&tx), a0);
    let after_commit = heap_bytes(hfd.as_fd()).unwrap();
    root.map.insert(&mut tx, b"k", b"dddddddd").unwrap();
    assert_eq!(root.map.get(&tx, b"k").unwrap().as_slice(), b"dddddddd");
    // A crash in the middle of a same-length update: recovery restores the committed bytes.
    tx.commit().unwrap();
    let mut tx = heap.begin(5).unwrap();
    let a1 = addr(&tx);
    root.map.insert(&mut tx, b"k", b"eeeeeeee").unwrap();
    assert_eq!(addr(&tx), a1);
    std::mem::forget(tx);
    drop(heap);
    let r = recover(hfd.as_fd(), lfd.as_fd()).unwrap();
    assert_eq!(r.prior, TxState::Active(5));
    let heap = Heap::attach(&hfd, &lfd, base(40), Tracking::Typed).unwrap();
    let root: &Root = heap.root().unwrap().unwrap();
    let tx = heap.begin(6).unwrap();
    assert_eq!(root.map.get(&tx, b"k").unwrap().as_slice(), b"dddddddd");
    assert_eq!(root.map.get(&tx, b"other").unwrap().as_slice(), b"zz");
    tx.abort().unwrap();
    let _ = after_commit;
}
