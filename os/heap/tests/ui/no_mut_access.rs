// Heap data cannot be written without the transaction: there is no `&mut` to it and no
// setter without `&Tx`; and a value read through `&Tx` cannot outlive a structural change.
use txipc_heap::{PBTreeMap, PBytes, PCell, Tx};

fn write_untracked(c: &PCell<u64>) {
    c.set(5);
}

fn use_after_remove(map: &PBTreeMap<PBytes, PBytes>, tx: &mut Tx<'_>) {
    let v = map.get(tx, b"k").unwrap();
    map.remove(tx, b"k").unwrap();
    println!("{:?}", v.as_slice());
}

fn main() {}
