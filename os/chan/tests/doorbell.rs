//! No lost wake-up: both sides forced onto the futex path, many times, across processes.
//! A lost wake-up shows up as a call that times out (a failure), never as a hung test.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::payload;
use txipc_chan::baseline::{EVENT_STOP, fork_child, run_echo_server};
use txipc_chan::{
    ChannelLayout, ClientChannel, Doorbell, ServerChannel, SpinConfig, SpinMode, Status, Wake,
    create_channel, create_doorbell,
};

const NO_SPIN: SpinConfig = SpinConfig {
    mode: SpinMode::Pure,
    budget: Duration::ZERO,
};
const ROUNDS: u32 = 5000;

#[test]
fn doorbell_and_reply_wakeups_are_never_lost_with_zero_spin() {
    let layout = ChannelLayout {
        nslots: 2,
        req_cap: 64,
        reply_cap: 64,
    };
    let chan = create_channel("stress", layout).unwrap();
    let bell = create_doorbell().unwrap();
    let server = ServerChannel::map(&chan).unwrap();
    let sbell = Doorbell::map(&bell).unwrap();
    // Server: zero spin, so it sleeps between nearly all requests.
    let srv = fork_child(|| {
        run_echo_server(std::slice::from_ref(&server), &sbell, Duration::ZERO);
        0
    })
    .unwrap();
    // Two client processes and this thread, all with zero spin.
    let clients: Vec<_> = (0..2u32)
        .map(|p| {
            fork_child(|| {
                let c = ClientChannel::map(&chan, &bell).unwrap().with_spin(NO_SPIN);
                let mut reply = Vec::new();
                for i in 0..ROUNDS {
                    let req = payload(p, i, 64);
                    match c.call(0, &req, &mut reply, Some(Duration::from_secs(20))) {
                        Ok(r) if r.status == Status::Ok && reply == req => {}
                        _ => return 1,
                    }
                }
                0
            })
            .unwrap()
        })
        .collect();
    let c = ClientChannel::map(&chan, &bell).unwrap().with_spin(NO_SPIN);
    let mut reply = Vec::new();
    for i in 0..ROUNDS {
        let req = payload(9, i, 64);
        let r = c.call(0, &req, &mut reply, Some(Duration::from_secs(20)));
        assert!(
            matches!(r, Ok(r) if r.status == Status::Ok),
            "round {i}: {r:?}"
        );
        assert_eq!(reply, req);
    }
    for ch in clients {
        assert_eq!(ch.wait().unwrap(), 0);
    }
    sbell.notify(EVENT_STOP);
    assert_eq!(srv.wait().unwrap(), 0);
}

/// The bare doorbell protocol: a counter in shared memory stands for "a slot was posted".
#[test]
fn bare_doorbell_wait_never_misses_a_ring() {
    let bell = create_doorbell().unwrap();
    // Shared counters: [0] posted by the client, [1] acknowledged by the server.
    let shm = common::RawMap::new(make_shm(), 4096);
    let sbell = Doorbell::map(&bell).unwrap();
    let posted = shm.u32(0);
    let acked = shm.u32(4);
    let srv = fork_child(|| {
        let mut seen = 0u32;
        while seen < ROUNDS {
            let r = sbell.wait(
                || posted.load(Ordering::Relaxed) == seen,
                Duration::ZERO,
                Some(Duration::from_secs(20)),
            );
            match r {
                Wake::Work => {
                    seen = posted.load(Ordering::Acquire);
                    acked.store(seen, Ordering::Release);
                    txipc_chan::futex::wake_all(acked);
                }
                Wake::TimedOut => return 2, // a lost wake-up
                Wake::Events => return 3,
            }
        }
        0
    })
    .unwrap();
    let cbell = Doorbell::map(&bell).unwrap();
    for i in 1..=ROUNDS {
        // SeqCst: the store half of the handshake, as the POSTED CAS is in ClientChannel.
        posted.store(i, Ordering::SeqCst);
        cbell.ring();
        wait_ack(acked, i);
    }
    assert_eq!(srv.wait().unwrap(), 0);
}

/// Control events wake a sleeping server.
#[test]
fn notify_wakes_a_sleeping_server() {
    let bell = create_doorbell().unwrap();
    let sbell = Doorbell::map(&bell).unwrap();
    let srv =
        fork_child(
            || match sbell.wait(|| true, Duration::ZERO, Some(Duration::from_secs(20))) {
                Wake::Events if sbell.take_events() == 0x40 => 0,
                _ => 1,
            },
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    Doorbell::map(&bell).unwrap().notify(0x40);
    assert_eq!(srv.wait().unwrap(), 0);
}

fn make_shm() -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create("shm", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    fd
}

fn wait_ack(acked: &AtomicU32, want: u32) {
    loop {
        let v = acked.load(Ordering::Acquire);
        if v >= want {
            return;
        }
        let r = txipc_chan::futex::wait(acked, v, Some(Duration::from_secs(20)));
        assert_ne!(
            r,
            txipc_chan::futex::FutexWait::TimedOut,
            "server never acknowledged {want}"
        );
    }
}
