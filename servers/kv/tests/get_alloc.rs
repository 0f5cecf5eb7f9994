//! A kv get allocates nothing, on either side, once the buffers it reuses have grown: the
//! client's `get_with` reads the value where the reply landed, the dispatcher borrows the key
//! from the request, and the server lends the value from its heap to the reply, which is
//! encoded straight into the channel's slot (`serve_get`).
//!
//! A real channel between two threads of this process: the client thread calls through the
//! generated stub, the server thread takes each request, runs it in a transaction of a real
//! heap through the generated dispatcher and the kv server, encodes the reply into the slot
//! and publishes it, as the runtime's serve loop does. Each thread counts its own allocations
//! (a counting global allocator with a thread-local counter).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kv_api::KvClient;
use txipc_chan::{ChannelLayout, ClientChannel, ServerChannel, SlotReply, Status, create_channel};
use txipc_core::manifest::{Policy, Tracking};
use txipc_core::proto::ServerConfig;
use txipc_heap::{Heap, create_heap_memfd, create_log_memfd, default_base};
use txipc_runtime::{Instance, StartArgs};
use txipc_service::{CallError, ReplyWriter, Transport};

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

/// The client's transport: the channel's call, and the runtime's mapping of its status.
struct Chan(ClientChannel);

impl Transport for Chan {
    fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        let r = self
            .0
            .call(method, request, reply, Some(Duration::from_secs(20)))
            .map_err(|e| CallError::Disconnected(e.to_string()))?;
        txipc_runtime::client::status_to_result(r.status, r.attempt)
    }
}

/// The reply encoded into its slot (the runtime's own writer is crate-private).
struct Slot<'a>(SlotReply<'a>);

impl ReplyWriter for Slot<'_> {
    fn reset(&mut self) {
        self.0.clear();
    }
    fn put(&mut self, bytes: &[u8]) {
        self.0.put(bytes);
    }
}

/// Calls the server thread makes, split into the two sides of the count: the transaction's
/// own begin and commit (the heap's, not the generated path's), and everything else.
#[derive(Debug, Default, Clone, Copy)]
struct ServerCount {
    served: u64,
    /// Take, dispatch (decode, handler, encode into the slot), finish and publish.
    path: u64,
    /// Begin and commit.
    tx: u64,
}

/// Serves `n` requests of `chan` on `instance`, counting the allocations of the last `counted`.
fn serve(
    instance: &mut dyn Instance,
    heap: &'static Heap,
    chan: &ServerChannel,
    n: u64,
    counted: u64,
    stop: &AtomicBool,
) -> ServerCount {
    let mut buf = Vec::with_capacity(4096);
    let mut count = ServerCount::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.served < n && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let a0 = allocs();
        let Some(t) = chan.take_into(&mut buf) else {
            std::hint::spin_loop();
            continue;
        };
        let a1 = allocs();
        let tx = heap.begin(count.served + 1).expect("begin");
        instance.tx_cell().put(tx);
        let a2 = allocs();
        let mut out = Slot(chan.reply_to(t.slot).expect("a TAKEN slot"));
        let status = match instance.handle(t.method, &buf, &mut out) {
            Ok(()) => Status::Ok,
            Err(_) => Status::Malformed,
        };
        out.0.finish(status).expect("the reply fits");
        let a3 = allocs();
        instance
            .tx_cell()
            .take()
            .expect("the transaction")
            .commit()
            .expect("commit");
        let a4 = allocs();
        chan.publish(t.slot).expect("publish");
        let a5 = allocs();
        count.served += 1;
        if count.served > n - counted {
            count.path += (a1 - a0) + (a3 - a2) + (a5 - a4);
            count.tx += (a2 - a1) + (a4 - a3);
        }
    }
    count
}

/// Stops the server thread if the client side fails before its last call.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_kv_get_allocates_nothing_on_either_side_once_its_buffers_have_grown() {
    const WARM: u64 = 20;
    const COUNTED: u64 = 200;
    // Calls: one put, WARM gets of each form, then COUNTED `get_with`s.
    const CALLS: u64 = 1 + 2 * WARM + COUNTED;

    let hfd = create_heap_memfd("kv-get-alloc-heap", 8 << 20).expect("heap memfd");
    let lfd = create_log_memfd("kv-get-alloc-log", 1 << 20).expect("log memfd");
    let heap: &'static Heap = Box::leak(Box::new(
        Heap::attach(&hfd, &lfd, default_base(42), txipc_heap::Tracking::Typed).expect("heap"),
    ));
    let config = ServerConfig {
        system: "test".into(),
        name: "kv".into(),
        builtin: "kv".into(),
        policy: Policy::Txipc,
        tracking: Tracking::Typed,
        heap_base: default_base(42) as u64,
        heap_size: 8 << 20,
        batch_max: 1,
        cpu: None,
        index: 0,
        deadline_ms: 1000,
        checkpoint_every: 0,
        checkpoint_ms: 0,
        log_cap: 0,
        follow: false,
        follow_max_lag: 0,
    };
    let mut instance = (kv_server::BUILTIN.start)(StartArgs {
        heap,
        config: &config,
        fresh: true,
    })
    .expect("kv starts");

    let layout = ChannelLayout {
        nslots: 1,
        req_cap: 4096,
        reply_cap: 4096,
    };
    let fd = create_channel("kv-get-alloc", layout).expect("channel");
    let server_chan = ServerChannel::map(&fd).expect("server side");
    let client = KvClient::new(Chan(ClientChannel::map(&fd).expect("client side")));

    // The heap and the server stay on this thread (neither is `Send`); the client runs on
    // its own, and its thread's count comes back with its result.
    let stop = Arc::new(AtomicBool::new(false));
    let client_stop = StopOnDrop(stop.clone());
    let client = std::thread::spawn(move || {
        let _stop = client_stop;
        let key = b"user000000000042";
        let value = vec![0x5a_u8; 1000];
        client.put(key, &value).expect("put");
        let mut out = Vec::new();
        let mut copy_into = |v: Option<&[u8]>| {
            out.clear();
            out.extend_from_slice(v.expect("the key is there"));
        };
        // The first calls grow the per-thread buffers (both forms: the owned one still works).
        for _ in 0..WARM {
            assert_eq!(client.get(key).expect("get").as_deref(), Some(&value));
            client.get_with(key, &mut copy_into).expect("get_with");
        }
        let before = allocs();
        for _ in 0..COUNTED {
            client.get_with(key, &mut copy_into).expect("get_with");
        }
        let n = allocs() - before;
        assert_eq!(out, value);
        n
    });
    let count = serve(&mut *instance, heap, &server_chan, CALLS, COUNTED, &stop);
    let client_allocs = client.join().expect("the client thread");
    assert_eq!(count.served, CALLS, "every call was served");
    assert_eq!(
        client_allocs, 0,
        "the client's get_with allocated {client_allocs} times in {COUNTED} calls"
    );
    assert_eq!(
        count.path, 0,
        "the server's take, dispatch, handler, reply and publish allocated {} times in {COUNTED} gets",
        count.path
    );
    assert_eq!(
        count.tx, 0,
        "the server's begin and commit allocated {} times in {COUNTED} gets",
        count.tx
    );
}
