//! Many threads and several processes calling through one channel: every reply matches its
//! request.

mod common;

use std::time::Duration;

use common::payload;
use txipc_chan::baseline::{EVENT_STOP, fork_child, run_echo_server};
use txipc_chan::{
    ChannelLayout, ClientChannel, Doorbell, ServerChannel, Status, create_channel, create_doorbell,
};

const CALLS: u32 = 1500;

/// Returns 0 when every reply echoed its request, else a code saying what broke.
fn client_loop(c: &ClientChannel, who: u32, calls: u32) -> i32 {
    let mut reply = Vec::new();
    for i in 0..calls {
        let req = payload(who, i, 200);
        match c.call(who, &req, &mut reply, Some(Duration::from_secs(60))) {
            Ok(r) if r.status == Status::Ok && r.attempt == 0 && reply == req => {}
            Ok(_) => return 2,
            Err(_) => return 3,
        }
    }
    0
}

#[test]
fn echo_many_threads_and_processes_one_channel() {
    // Fewer slots than concurrent callers: claiming also waits for free slots.
    let layout = ChannelLayout {
        nslots: 4,
        req_cap: 256,
        reply_cap: 256,
    };
    let chan = create_channel("echo", layout).unwrap();
    let bell = create_doorbell().unwrap();
    let server = ServerChannel::map(&chan).unwrap();
    let sbell = Doorbell::map(&bell).unwrap();
    // SAFETY: fork_child items 1-3: the test thread forks while the harness's other threads run; the
    // child only uses channel/doorbell mappings made before the fork (atomics, raw copies, futexes)
    // and returns a code: it takes no lock, owns nothing with an outside effect, and prints only
    // in a panic, that is when the test fails anyway.
    let srv = unsafe {
        fork_child(|| {
            let n = run_echo_server(
                std::slice::from_ref(&server),
                &sbell,
                Duration::from_micros(20),
            );
            // 3 processes and 4 threads, CALLS each.
            if n == 7 * CALLS as u64 { 0 } else { 4 }
        })
    }
    .unwrap();
    drop(server);

    let procs: Vec<_> = (0..3u32)
        .map(|p| {
            // SAFETY: fork_child items 1-3: the test thread forks while the harness's other threads run; the
            // child only uses channel/doorbell mappings made before the fork (atomics, raw copies, futexes)
            // and returns a code: it takes no lock, owns nothing with an outside effect, and prints only
            // in a panic, that is when the test fails anyway.
            unsafe {
                fork_child(|| match ClientChannel::map(&chan) {
                    Ok(c) => client_loop(&c, 100 + p, CALLS),
                    Err(_) => 5,
                })
            }
            .unwrap()
        })
        .collect();

    let client = ClientChannel::map(&chan).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let client = &client;
            s.spawn(move || assert_eq!(client_loop(client, t, CALLS), 0, "thread {t}"));
        }
    });
    for (p, child) in procs.into_iter().enumerate() {
        assert_eq!(child.wait().unwrap(), 0, "client process {p}");
    }
    sbell.notify(EVENT_STOP);
    assert_eq!(
        srv.wait().unwrap(),
        0,
        "server saw a different number of requests"
    );
}

#[test]
fn echo_across_inline_and_area_sizes_and_too_large() {
    let layout = ChannelLayout {
        nslots: 2,
        req_cap: 64,
        reply_cap: 64,
    };
    let chan = create_channel("sizes", layout).unwrap();
    let bell = create_doorbell().unwrap();
    let server = ServerChannel::map(&chan).unwrap();
    let sbell = Doorbell::map(&bell).unwrap();
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
    let client = ClientChannel::map(&chan).unwrap();
    let mut reply = Vec::new();
    for len in 0..=64usize {
        let req: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        let r = client.call(1, &req, &mut reply, None).unwrap();
        assert_eq!(r.status, Status::Ok);
        assert_eq!(reply, req, "len {len}");
    }
    let err = client.call(1, &[0; 65], &mut reply, None).unwrap_err();
    assert!(
        matches!(
            err,
            txipc_chan::ChanError::RequestTooLarge { len: 65, cap: 64 }
        ),
        "{err}"
    );
    sbell.notify(EVENT_STOP);
    assert_eq!(srv.wait().unwrap(), 0);
}
