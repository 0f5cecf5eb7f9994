//! A client stub allocates nothing for its byte-string arguments: they are encoded from the
//! caller's borrowed bytes straight into the per-thread request buffer (no `Bytes` is built).
//! Counted with a global allocator that counts this thread's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use txipc_service::{Bytes, CallError, Transport, service};

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

#[service]
pub trait Sink {
    fn put(&mut self, key: Bytes, value: Bytes) -> u32;
}

/// Checks the request's encoding and answers `7`, reusing the reply buffer.
struct Check;

impl Transport for Check {
    fn call(&self, _: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        // One length and the bytes, per argument: 1, "k", varint 1000, 1000 nines.
        assert_eq!(request.len(), 1004);
        assert_eq!(request[..4], [1, b'k', 0xe8, 0x07]);
        assert!(request[4..].iter().all(|&b| b == 9));
        reply.clear();
        reply.push(7);
        Ok(())
    }
}

#[test]
fn byte_string_arguments_are_encoded_without_allocating() {
    let client = SinkClient::new(Check);
    let value = vec![9u8; 1000];
    let bytes = Bytes::from(value.clone());
    // The first calls grow the per-thread buffers.
    assert_eq!(client.put(b"k", &value).unwrap(), 7);
    assert_eq!(client.put("k", &bytes).unwrap(), 7);
    let before = ALLOCS.with(Cell::get);
    for _ in 0..100 {
        assert_eq!(client.put(b"k", &value[..]).unwrap(), 7);
        assert_eq!(client.put(&b"k"[..], &bytes).unwrap(), 7);
    }
    assert_eq!(ALLOCS.with(Cell::get) - before, 0, "the stub allocated");
}
