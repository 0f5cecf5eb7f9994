//! `PBuf`: in-place writes log exactly what they overwrite and roll back exactly.

use txipc_heap::{
    Heap, HeapError, PBTreeMap, PBuf, Persistent, Tracking, create_heap_memfd, create_log_memfd,
};

#[derive(Persistent)]
#[repr(C)]
struct Root {
    blocks: PBTreeMap<u64, PBuf>,
}

#[test]
fn pbuf_writes_in_place_and_rolls_back_exactly() {
    let hfd = create_heap_memfd("buf", 1 << 20).unwrap();
    let lfd = create_log_memfd("buf-log", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, 0x6300_0000_0000, Tracking::Typed).unwrap();
    let root: &Root = heap
        .root_or_init(|_| {
            Ok(Root {
                blocks: PBTreeMap::new(),
            })
        })
        .unwrap();

    let mut tx = heap.begin(1).unwrap();
    root.blocks.insert(&mut tx, 7, &[0u8; 4096]).unwrap();
    tx.commit().unwrap();

    // A 100-byte write logs about 100 bytes (plus the record header), not the block.
    let tx = heap.begin(2).unwrap();
    let before = tx.log_used();
    let b = root.blocks.get(&tx, &7).unwrap();
    b.write_at(&tx, 1000, &[0xab; 100]).unwrap();
    let logged = tx.log_used() - before;
    assert!((100..200).contains(&logged), "logged {logged} bytes");
    let mut out = [0u8; 102];
    b.read_at(&tx, 999, &mut out).unwrap();
    assert_eq!(out[0], 0);
    assert!(out[1..101].iter().all(|&x| x == 0xab));
    assert_eq!(out[101], 0);
    tx.commit().unwrap();

    // An aborted overwrite and zeroing restore the committed bytes.
    let tx = heap.begin(3).unwrap();
    let b = root.blocks.get(&tx, &7).unwrap();
    b.write_at(&tx, 1050, &[0x11; 2000]).unwrap();
    b.zero(&tx, 0, 4096).unwrap();
    tx.abort().unwrap();
    let tx = heap.begin(4).unwrap();
    let v = root.blocks.get(&tx, &7).unwrap().to_vec(&tx);
    let mut want = vec![0u8; 4096];
    want[1000..1100].fill(0xab);
    assert_eq!(v, want);

    // Out-of-range accesses are errors and change nothing.
    let b = root.blocks.get(&tx, &7).unwrap();
    assert!(matches!(
        b.write_at(&tx, 4000, &[1; 97]),
        Err(HeapError::Invalid(_))
    ));
    assert!(matches!(
        b.read_at(&tx, usize::MAX, &mut [0; 2]),
        Err(HeapError::Invalid(_))
    ));
    assert_eq!(b.to_vec(&tx), want);
    tx.commit().unwrap();
    heap.check(true).unwrap();
}
