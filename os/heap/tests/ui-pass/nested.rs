#![forbid(unsafe_code)]
use txipc_heap::{PBTreeMap, PBytes, PCell, PHashMap, PVec, Persistent};

#[derive(Persistent)]
#[repr(C)]
struct Inner {
    a: PCell<u64>,
    b: [u32; 4],
}

#[derive(Persistent)]
#[repr(C)]
struct Root<T: Copy> {
    inner: Inner,
    map: PBTreeMap<PBytes, PBytes>,
    hm: PHashMap<u64, u64>,
    v: PVec<PBytes>,
    t: PCell<T>,
}

#[derive(Persistent)]
#[repr(transparent)]
struct Wrapper(PCell<u64>);

fn main() {
    fn assert<T: Persistent>() {}
    assert::<Root<u32>>();
    assert::<Wrapper>();
}
