//! No lost wake-up: both sides forced onto the futex path, many times, across processes.
//! A lost wake-up shows up as a call that times out (a failure), never as a hung test.

mod common;

use std::sync::atomic::Ordering;
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
    // SAFETY: fork_child items 1-3: the test thread forks while the harness's other threads run; the
    // child only uses channel/doorbell mappings made before the fork (atomics, raw copies, futexes)
    // and returns a code: it takes no lock, owns nothing with an outside effect, and prints only
    // in a panic, that is when the test fails anyway.
    let srv = unsafe {
        fork_child(|| {
            run_echo_server(std::slice::from_ref(&server), &sbell, Duration::ZERO);
            0
        })
    }
    .unwrap();
    // Two client processes and this thread, all with zero spin.
    let clients: Vec<_> = (0..2u32)
        .map(|p| {
            // SAFETY: fork_child items 1-3: the test thread forks while the harness's other threads run; the
            // child only uses channel/doorbell mappings made before the fork (atomics, raw copies, futexes)
            // and returns a code: it takes no lock, owns nothing with an outside effect, and prints only
            // in a panic, that is when the test fails anyway.
            unsafe {
                fork_child(|| {
                    let c = ClientChannel::map(&chan).unwrap().with_spin(NO_SPIN);
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
            }
            .unwrap()
        })
        .collect();
    let c = ClientChannel::map(&chan).unwrap().with_spin(NO_SPIN);
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
        assert_eq!(ch.wait_within(Duration::from_secs(60)).unwrap(), Some(0));
    }
    sbell.notify(EVENT_STOP);
    assert_eq!(srv.wait_within(Duration::from_secs(60)).unwrap(), Some(0));
}

/// Defect "one client can starve the others": a client that keeps scribbling on every word
/// it was given (its whole channel, the bell line included: `server_sleeping` cleared, the
/// bell word rewritten) while the server sleeps between requests must not delay another
/// client's calls. The honest client uses zero spin, so the server falls asleep before nearly
/// every request and each call depends on its wake-up.
#[test]
fn a_client_scribbling_on_its_channel_cannot_stop_anothers_wakeups() {
    let layout = ChannelLayout {
        nslots: 2,
        req_cap: 64,
        reply_cap: 64,
    };
    let honest_fd = create_channel("honest", layout).unwrap();
    let hostile_fd = create_channel("hostile", layout).unwrap();
    let bell = create_doorbell().unwrap();
    let chans = [
        ServerChannel::map(&honest_fd).unwrap(),
        ServerChannel::map(&hostile_fd).unwrap(),
    ];
    let sbell = Doorbell::map(&bell).unwrap();
    // SAFETY: fork_child items 1-3: the echo server child touches only mappings made before the
    // fork (atomics, raw copies, futexes) and returns a code; no lock, nothing it owns has an
    // outside effect, and it prints only in a panic, when the test fails anyway.
    let srv = unsafe {
        fork_child(|| {
            run_echo_server(&chans, &sbell, Duration::ZERO);
            0
        })
    }
    .unwrap();
    let hostile_map = common::RawMap::new(&hostile_fd, 4096);
    let stop = common::RawMap::new(make_shm(), 4096);
    // SAFETY: fork_child items 1-3: the hostile child only stores to two mappings made before the
    // fork, in a loop bounded by a flag and a time limit, and returns.
    let hostile = unsafe {
        fork_child(|| {
            let t = std::time::Instant::now();
            let mut k = 0u32;
            while stop.u32(0).load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(60)
            {
                // Everything the bell line holds, and the slot words, over and over.
                for off in (64..256).step_by(4) {
                    hostile_map
                        .u32(off)
                        .store(if k & 1 == 0 { 0 } else { k }, Ordering::SeqCst);
                }
                k = k.wrapping_add(1);
            }
            0
        })
    }
    .unwrap();
    let c = ClientChannel::map(&honest_fd).unwrap().with_spin(NO_SPIN);
    let mut reply = Vec::new();
    let mut failed = None;
    for i in 0..ROUNDS / 5 {
        let req = payload(7, i, 32);
        match c.call(0, &req, &mut reply, Some(Duration::from_secs(2))) {
            Ok(r) if r.status == Status::Ok && reply == req => {}
            other => {
                failed = Some(format!("round {i}: {other:?}"));
                break;
            }
        }
    }
    stop.u32(0).store(1, Ordering::Relaxed);
    assert_eq!(
        hostile.wait_within(Duration::from_secs(60)).unwrap(),
        Some(0)
    );
    sbell.notify(EVENT_STOP);
    assert_eq!(srv.wait_within(Duration::from_secs(60)).unwrap(), Some(0));
    assert_eq!(failed, None, "the honest client was starved");
}

/// Control events wake a sleeping server.
#[test]
fn notify_wakes_a_sleeping_server() {
    let bell = create_doorbell().unwrap();
    let sbell = Doorbell::map(&bell).unwrap();
    let srv =
        // SAFETY: fork_child items 1-3: the test thread forks while the harness's other threads run; the
        // child only uses channel/doorbell mappings made before the fork (atomics, raw copies, futexes)
        // and returns a code: it takes no lock, owns nothing with an outside effect, and prints only
    // in a panic, that is when the test fails anyway.
        unsafe { fork_child(
            || match sbell.wait(std::iter::empty::<&ServerChannel>(), Duration::ZERO, Some(Duration::from_secs(20))) {
                Wake::Events if sbell.take_events() == 0x40 => 0,
                _ => 1,
            },
        ) }
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    Doorbell::map(&bell).unwrap().notify(0x40);
    assert_eq!(srv.wait_within(Duration::from_secs(60)).unwrap(), Some(0));
}

fn make_shm() -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create("shm", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    fd
}
