//! Many threads and several processes calling through one channel: every reply matches its
//! request.

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use common::{CLIENT_WAITING, DONE, RawMap, SERVER_SLEEPING, ctl, payload};
use nix::unistd::Pid;
use txipc_chan::baseline::{EVENT_STOP, fork_child, run_echo_server};
use txipc_chan::{
    ChannelLayout, ClientChannel, Doorbell, KernelChannel, ServerChannel, Status, create_channel,
    create_doorbell,
};

const CALLS: u32 = 1500;
/// Bound of one call, and of the wait for a process: a hang becomes a failure that explains
/// itself (slot states, the server's state), not a stuck run. Far above what a call needs.
const BOUND: Duration = Duration::from_secs(60);

/// `Ok` when every reply echoed its request, else what broke.
fn client_loop(c: &ClientChannel, who: u32, calls: u32) -> Result<(), String> {
    let mut reply = Vec::new();
    for i in 0..calls {
        let req = payload(who, i, 200);
        match c.call(who, &req, &mut reply, Some(BOUND)) {
            Ok(r) if r.status == Status::Ok && r.attempt == 0 && reply == req => {}
            Ok(r) => return Err(format!("call {i}: wrong reply {r:?}")),
            Err(e) => return Err(format!("call {i}: {e}")),
        }
    }
    Ok(())
}

/// Everything that tells a hang's cause: every slot's state word, seq, `done` and
/// `client_waiting`, the server's sleeping flag, and the server process's scheduler state and
/// wait channel (a server asleep in `futex_wait` with POSTED slots and `server_sleeping` 0 was
/// never rung; one in `futex_wait` with `server_sleeping` 1 missed its bell).
fn explain(chan: impl AsFd, server: Pid) -> String {
    let k = KernelChannel::map(&chan).unwrap();
    let raw = RawMap::new(&chan, k.layout().total_size());
    let mut out = format!(
        "server_sleeping {}; ",
        raw.u32(SERVER_SLEEPING)
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    for s in k.slots() {
        let line = ctl(s.slot);
        out += &format!(
            "slot {}: {:?} seq {} done {} client_waiting {}; ",
            s.slot,
            s.state,
            s.seq,
            raw.u32(line + DONE)
                .load(std::sync::atomic::Ordering::SeqCst),
            raw.u32(line + CLIENT_WAITING)
                .load(std::sync::atomic::Ordering::SeqCst),
        );
    }
    let proc_file = |f: &str| {
        std::fs::read_to_string(format!("/proc/{server}/{f}")).unwrap_or_else(|e| format!("({e})"))
    };
    let stat = proc_file("stat");
    let state = stat.rsplit(") ").next().and_then(|r| r.split(' ').next());
    out += &format!(
        "server {server}: state {} wchan {}",
        state.unwrap_or("?"),
        proc_file("wchan")
    );
    out
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
                    Ok(c) => match client_loop(&c, 100 + p, CALLS) {
                        Ok(()) => 0,
                        Err(_) => 3,
                    },
                    Err(_) => 5,
                })
            }
            .unwrap()
        })
        .collect();

    let client = ClientChannel::map(&chan).unwrap();
    let threads: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u32)
            .map(|t| {
                let client = &client;
                s.spawn(move || client_loop(client, t, CALLS))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let procs: Vec<Option<i32>> = procs
        .into_iter()
        .map(|child| child.wait_within(BOUND).unwrap())
        .collect();
    let failed = threads.iter().any(Result::is_err) || procs.iter().any(|c| *c != Some(0));
    // Explained before the server is stopped, while the slots are as the hang left them.
    let why = if failed {
        explain(&chan, srv.pid())
    } else {
        String::new()
    };
    assert!(
        !failed,
        "threads {threads:?}, client processes' exits {procs:?} (3: a call failed, None: hung); {why}"
    );
    sbell.notify(EVENT_STOP);
    assert_eq!(
        srv.wait_within(BOUND).unwrap(),
        Some(0),
        "server saw a different number of requests (4) or hung (None)"
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
    assert_eq!(srv.wait_within(BOUND).unwrap(), Some(0));
}
