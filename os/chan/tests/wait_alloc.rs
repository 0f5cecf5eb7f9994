//! A server that goes to sleep on its doorbell allocates nothing: the words it sleeps on are
//! gathered on the stack (`Doorbell::wait_with`, `futex::wait_any`). Counted with a global
//! allocator that counts this thread's allocations, over real sleeps on real mappings (each
//! wait ends by its timeout: nothing posts).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use txipc_chan::{
    ChannelLayout, Doorbell, ServerChannel, SpinConfig, SpinMode, Wake, create_channel,
    create_doorbell,
};

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

#[test]
fn a_server_goes_to_sleep_without_allocating() {
    let layout = ChannelLayout {
        nslots: 2,
        req_cap: 64,
        reply_cap: 64,
    };
    // Three channels: the doorbell word and three bell words per sleep.
    let fds: Vec<_> = (0..3)
        .map(|_| create_channel("wait-alloc", layout).unwrap())
        .collect();
    let chans: Vec<ServerChannel> = fds.iter().map(|f| ServerChannel::map(f).unwrap()).collect();
    let bell = Doorbell::map(create_doorbell().unwrap()).unwrap();
    let no_spin = SpinConfig {
        mode: SpinMode::Pure,
        budget: Duration::ZERO,
    };
    let wait = || bell.wait_with(chans.iter(), no_spin, Some(Duration::from_millis(1)));
    // A first wait, so that nothing lazily set up once (by the standard library or the
    // system's libraries) is counted.
    assert_eq!(wait(), Wake::TimedOut);
    let before = ALLOCS.with(Cell::get);
    for _ in 0..20 {
        assert_eq!(wait(), Wake::TimedOut, "nothing was posted");
    }
    assert_eq!(
        ALLOCS.with(Cell::get) - before,
        0,
        "going to sleep allocated"
    );
}
