//! kv-plain's get allocates nothing once the reply buffer has grown: the dispatcher borrows
//! the key from the request and `KvPlain::serve_get` lends the value from its map to the
//! reply, which answers byte for byte as the owned `Kv::get` would. Without the override the
//! provided `serve_get` copies the key into a `Bytes` and the value into another, two
//! allocations per get.
//!
//! In process, through the generated companion dispatcher (what the runtime calls under
//! policy `companion`); the thread counts its own allocations (a counting global allocator
//! with a thread-local counter).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kv_api::{Kv, KvCompanion, KvMethod};
use kv_plain::KvPlain;
use txipc_service::{Bytes, Dispatch};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to `System` unchanged; only counts (a const-initialised
// thread-local `Cell`, which needs no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn encode(v: &impl serde::Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    txipc_service::encode(v, &mut out).expect("encode");
    out
}

#[test]
fn a_kv_plain_get_allocates_nothing_and_answers_as_the_owned_get() {
    const COUNTED: u64 = 200;
    let mut kv = KvCompanion::new(KvPlain::default());
    let key = b"user000000000042";
    let value = vec![0x5a_u8; 1000];
    let mut put = encode(&Bytes::from(&key[..]));
    put.extend(encode(&Bytes::from(&value[..])));
    let mut reply = Vec::with_capacity(4096);
    kv.dispatch(KvMethod::Put.id(), &put, &mut reply)
        .expect("put");

    let get = encode(&Bytes::from(&key[..]));
    let missing = encode(&Bytes::from(&b"no such key"[..]));
    let too_long = encode(&Bytes::from(vec![b'k'; kv_api::MAX_KEY + 1]));
    // Each answer is the owned method's, encoded: found, missing, and a refused key.
    for req in [&get, &missing, &too_long] {
        kv.dispatch(KvMethod::Get.id(), req, &mut reply)
            .expect("get");
        let k: Bytes = txipc_service::decode(req).expect("the key");
        let owned = kv.inner_mut().get(k);
        assert_eq!(reply, encode(&owned), "serve_get answers as get does");
    }

    let before = allocs();
    for _ in 0..COUNTED {
        kv.dispatch(KvMethod::Get.id(), &get, &mut reply)
            .expect("get");
    }
    let n = allocs() - before;
    let back: Result<Option<Bytes>, kv_api::KvError> =
        txipc_service::decode(&reply).expect("the reply");
    assert_eq!(back.expect("found").as_deref(), Some(&value));
    assert_eq!(n, 0, "kv-plain's get allocated {n} times in {COUNTED} gets");
}
