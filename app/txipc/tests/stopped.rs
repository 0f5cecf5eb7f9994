//! No call waits forever and the kernel never waits for a peer: servers, standbys and zygotes
//! that are stopped (SIGSTOP) or do not read their sockets are found hung and replaced; calls
//! end in their reply or a typed error; `ps` keeps answering and says what happened.

mod common;

use std::time::Duration;

use common::*;
use probe_server::{Fault, FaultyClient};
use rustix::process::Signal;
use txipc_runtime::client::System;

fn info(sys: &System) -> txipc_core::proto::ServerInfo {
    sys.ps().unwrap().remove(0)
}

fn stop(pid: i32) {
    assert!(pid > 0, "no such process");
    txipc_sys::process::kill(pid, Signal::STOP).unwrap();
}

fn faulty(tag: &str) -> txipc_runtime::client::SystemProcess {
    boot(
        tag,
        &(server("f", "faulty", "txipc", "deadline_ms = 200") + &grant("*", "f")),
    )
}

#[test]
fn a_call_to_a_stopped_server_is_served_after_recovery() {
    let sys = faulty("stopped");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    let before = info(&conn);
    // Stopped between calls: it takes nothing; the kernel must notice the waiting request.
    stop(before.pid);
    assert_eq!(
        info(&conn).state,
        "running",
        "ps answers while it is stopped"
    );
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 2);
    let after = info(&conn);
    assert!(after.generation > before.generation);
    // Stopped idle: the waiting request is timed; stopped just before it marked itself idle
    // after its last reply: its "call" is.
    let cause = after.last_fault.unwrap().cause;
    assert!(
        (cause.starts_with("hang: a request waited") && cause.contains("stopped"))
            || cause.starts_with("hang: call ran"),
        "{cause}"
    );
    wait_until(
        "the stopped incarnation to be killed",
        Duration::from_secs(20),
        || !alive(before.pid),
    );
    drop((f, conn));
    sys.shutdown().unwrap();
}

#[test]
fn a_stopped_standby_does_not_hold_recovery() {
    let sys = faulty("stopped-standby");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    wait_until("a standby", Duration::from_secs(20), || {
        info(&conn).standby_pid > 0
    });
    let s = info(&conn);
    stop(s.standby_pid);
    txipc_sys::process::kill(s.pid, Signal::KILL).unwrap();
    // The stopped standby is activated, never answers, is found hung and replaced.
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 2);
    let after = info(&conn);
    assert_eq!(after.state, "running");
    assert!(after.generation > s.generation + 1, "{after:?}");
    wait_until(
        "the stopped standby to be killed",
        Duration::from_secs(20),
        || !alive(s.standby_pid),
    );
    drop((f, conn));
    sys.shutdown().unwrap();
}

#[test]
fn a_stopped_zygote_does_not_hold_recovery() {
    let sys = faulty("stopped-zygote");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    wait_until("a standby", Duration::from_secs(20), || {
        info(&conn).standby_pid > 0
    });
    let s = info(&conn);
    stop(s.zygote_pid);
    // The first fault uses the standby; the second needs the stopped zygote to fork.
    assert_eq!(f.add(0, 1, Fault::Panic, 1).unwrap(), 2);
    assert_eq!(f.add(0, 1, Fault::Panic, 1).unwrap(), 3);
    let after = info(&conn);
    assert_eq!(after.state, "running");
    assert_ne!(
        after.zygote_pid, s.zygote_pid,
        "the stuck zygote was replaced"
    );
    wait_until(
        "the stopped zygote to be killed",
        Duration::from_secs(20),
        || !alive(s.zygote_pid),
    );
    drop((f, conn));
    sys.shutdown().unwrap();
}

#[test]
fn a_server_that_does_not_read_cannot_block_the_kernel() {
    let sys = boot(
        "full",
        &("max_channels_per_client = 1000\n".to_string()
            + &server(
                "f",
                "faulty",
                "txipc",
                "deadline_ms = 200\nmax_channels = 2000",
            )
            + &grant("*", "f")),
    );
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    let s = info(&conn);
    stop(s.pid);
    // Every connect hands the stopped server a channel on its control socket, which it does
    // not read: the socket fills. The kernel must not block on it.
    let mut chans = Vec::new();
    for _ in 0..600 {
        chans.push(conn.open("f").expect("connect while the server is stopped"));
    }
    // The kernel still answers a new client at once; it replaces the stopped server when the
    // deadline finds it (on a loaded machine that may come after the connects are done).
    let other = System::connect(sys.name()).unwrap();
    wait_until(
        "the stopped server replaced",
        Duration::from_secs(20),
        || info(&other).generation > s.generation,
    );
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 2);
    drop((f, chans, conn, other));
    sys.shutdown().unwrap();
}

#[test]
fn a_timeout_says_whether_the_request_was_withdrawn() {
    let sys = boot(
        "withdrawn",
        &(server("f", "faulty", "txipc", "deadline_ms = 5000") + &grant("*", "f")),
    );
    let conn = sys.connect().unwrap();
    let mut ch = conn.open("f").unwrap();
    ch.set_timeout(Some(Duration::from_millis(100)));
    let f = FaultyClient::new(ch);
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    stop(info(&conn).pid);
    // Nobody takes it: withdrawn, did not run, safe to resend.
    match f.add(0, 1, Fault::None, 0) {
        Err(txipc_service::Error::Call(e @ txipc_service::CallError::Withdrawn { .. })) => {
            assert!(e.did_not_run(), "{e}")
        }
        other => panic!("expected Withdrawn, got {other:?}"),
    }
    drop((f, conn));
    sys.shutdown().unwrap();
}

/// Issue 7 (race of `ps` after a death): the zygote reaps each child as soon as it ends and
/// reports how it ended, so `ps` names the signal of a server killed by someone other than the
/// kernel even when the zombie is gone before the kernel looks. The kernel is stopped while
/// the server is SIGKILLed and reaped; resumed, it must still say `killed by SIGKILL`.
#[test]
fn ps_names_the_end_of_a_server_its_zygote_reaped_first() {
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = txipc_sys::process::kill(self.0, Signal::CONT);
        }
    }
    let sys = faulty("reaped-first");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    let before = info(&conn);
    let kernel = sys.pid() as i32;
    stop(kernel);
    let resume = Resume(kernel);
    txipc_sys::process::kill(before.pid, Signal::KILL).unwrap();
    wait_until(
        "its zygote to reap it while the kernel is stopped",
        Duration::from_secs(20),
        || !std::path::Path::new(&format!("/proc/{}", before.pid)).exists(),
    );
    drop(resume);
    wait_until("ps to say how it ended", Duration::from_secs(20), || {
        info(&conn)
            .last_fault
            .is_some_and(|f| f.generation == before.generation && f.cause == "killed by SIGKILL")
    });
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 2, "and it recovered");
    drop((f, conn));
}

/// The nice value of a thread group's leader, from `/proc/PID/stat` (field 19).
fn nice_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(16).unwrap().parse().unwrap()
}

/// The kernel runs above what it supervises (ARCHITECTURE.md §6, "Detection"): its nice value
/// is `KERNEL_NICE_BOOST` below the one it was started with, so a death or a crash report that
/// wakes it preempts a spinning client or server at once; its servers run at the starting value.
/// Without the privilege the kernel stays at the starting value and its log says why.
#[test]
fn the_kernel_runs_above_its_servers() {
    let sys = boot(
        "nice",
        &(server("f", "faulty", "txipc", "") + &grant("*", "f")),
    );
    let conn = sys.connect().unwrap();
    let ours = rustix::process::getpriority_process(None).unwrap();
    let server = info(&conn).pid;
    assert_eq!(
        nice_of(server),
        ours,
        "the server runs at the nice value the kernel started at"
    );
    let kernel = nice_of(sys.pid() as i32);
    let boosted = (ours - txipc_kernel::KERNEL_NICE_BOOST).max(-20);
    if kernel != boosted {
        assert_eq!(kernel, ours);
        // The log is written through a pipe: a bounded wait.
        let log = txipc_core::paths::log_path(sys.name());
        wait_until("the log to say why", Duration::from_secs(10), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("could not raise its own priority")
        });
    }
    drop(conn);
    sys.shutdown().unwrap();
}

/// The CPUs a thread group's leader may run on, from `/proc/PID/status`.
fn cpus_of(pid: &str) -> std::collections::BTreeSet<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let mut set = std::collections::BTreeSet::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        set.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    set
}

/// The kernel runs beside its servers (ARCHITECTURE.md §6, "Detection"): off the CPU a
/// server is pinned to, so that when a crash report or a death on that CPU wakes it, it does
/// not preempt the failing process or its spare there; a server that is not pinned runs on
/// every CPU the kernel was started on, and a pinned one on its own.
#[test]
fn the_kernel_runs_off_the_cpus_its_servers_are_pinned_to() {
    let ours = cpus_of("self");
    let Some(&pin) = ours.iter().next_back() else {
        return;
    };
    if ours.len() < 2 {
        eprintln!("one CPU: nothing to avoid");
        return;
    }
    let sys = boot(
        "cpus",
        &(server("f", "faulty", "txipc", &format!("cpu = {pin}"))
            + &server("g", "faulty", "txipc", "")
            + &grant("*", "f")
            + &grant("*", "g")),
    );
    let conn = sys.connect().unwrap();
    let ps = conn.ps().unwrap();
    let pid_of = |name: &str| ps.iter().find(|s| s.name == name).unwrap().pid;
    let kernel = cpus_of(&sys.pid().to_string());
    let mut expected = ours.clone();
    expected.remove(&pin);
    assert_eq!(kernel, expected, "the kernel avoids CPU {pin}");
    assert_eq!(
        cpus_of(&pid_of("g").to_string()),
        ours,
        "an unpinned server runs where the kernel was started"
    );
    assert_eq!(
        cpus_of(&pid_of("f").to_string()),
        [pin].into(),
        "a pinned server on its CPU"
    );
    drop(conn);
    sys.shutdown().unwrap();
}
