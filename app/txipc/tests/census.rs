//! Resource census: after crashes, restarts and shutdown, nothing is left behind — no process,
//! no memfd, no socket. Its own test binary, so no other test's objects are counted.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use kv_api::KvClient;
use probe_server::{Fault, FaultyClient};
use txipc_core::failpoint::{FailKind, FailPoint};

/// txipc memfds a process holds open or has mapped.
fn txipc_memfds_of(pid: i32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.contains("memfd:txipc"))
        .collect();
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        out.extend(
            maps.lines()
                .filter(|l| l.contains("memfd:txipc"))
                .map(str::to_owned),
        );
    }
    out
}

#[test]
fn nothing_survives_shutdown_after_faults() {
    let m = server("kv", "kv", "txipc", "deadline_ms = 200")
        + &server("f", "faulty", "restart", "")
        + &server("n", "null", "none", "")
        + &grant("*", "kv")
        + &grant("*", "f")
        + &grant("*", "n");
    let sys = boot("census", &m);
    let kernel = sys.pid() as i32;
    let socket = txipc_core::paths::socket_path(sys.name());
    assert!(socket.exists());
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    {
        let conn = sys.connect().unwrap();
        let kv = KvClient::new(open(&conn, "kv"));
        let f = FaultyClient::new(open(&conn, "f"));
        let n = probe_server::NullClient::new(open(&conn, "n"));
        for i in 0..20 {
            seen.extend(descendants(kernel));
            kv.put(format!("k{i}").into_bytes(), vec![1; 64]).unwrap();
            match i % 4 {
                0 => {
                    let pid = server_pid(&conn, "kv");
                    txipc_sys::process::kill(pid, rustix::process::Signal::KILL).unwrap();
                }
                1 => conn
                    .inject("kv", FailKind::Segv, FailPoint::AfterHandle)
                    .unwrap(),
                2 => conn
                    .inject("kv", FailKind::Hang, FailPoint::BeforeHandle)
                    .unwrap(),
                _ => {
                    let _ = f.add(0, 1, Fault::Panic, 1);
                }
            }
        }
        n.ping().unwrap();
        let _ = n.echo(vec![]);
        // Clients in other processes come and go too.
        for _ in 0..5 {
            let out = std::process::Command::new(exe())
                .args(["kv", "--system", sys.name(), "incr", "c", "1"])
                .output()
                .unwrap();
            assert!(out.status.success());
        }
        wait_until("kv running", Duration::from_secs(10), || {
            conn.ps().unwrap().iter().all(|s| s.state == "running")
        });
        seen.extend(descendants(kernel));
        assert!(
            seen.len() >= 3 + 10,
            "zygotes, incarnations and standbys: {seen:?}"
        );
        // While it runs, the live processes hold the memfds; this test process holds its
        // channels only.
        assert!(!txipc_memfds_of(std::process::id() as i32).is_empty());
    }
    // Clients closed: the kernel revoked their channels; this process holds no memfd.
    assert_eq!(
        txipc_memfds_of(std::process::id() as i32),
        Vec::<String>::new()
    );
    sys.shutdown().unwrap();
    for pid in &seen {
        assert!(!alive(*pid), "process {pid} survived the shutdown");
    }
    assert!(!alive(kernel));
    assert!(!socket.exists(), "socket {} left behind", socket.display());
    // The runtime directory is removed once empty (other tests' systems may still run in it).
    let dir = socket.parent().unwrap();
    let others = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    assert!(
        dir.exists() == (others > 0),
        "{} left behind empty",
        dir.display()
    );
    // No process anywhere still holds a memfd of this system (they all died with it).
    for pid in seen {
        assert!(txipc_memfds_of(pid).is_empty());
    }
}

#[test]
fn a_killed_kernel_takes_its_servers_with_it() {
    let sys = boot(
        "orphans",
        &(server("kv", "kv", "txipc", "") + &grant("*", "kv")),
    );
    let kernel = sys.pid() as i32;
    // Zygote, active incarnation and (forked once the active one serves) the standby.
    wait_until(
        "zygote, active and standby",
        Duration::from_secs(10),
        || descendants(kernel).len() >= 3,
    );
    let procs = descendants(kernel);
    // SIGKILL the kernel itself: zygotes die with it (parent-death signal), incarnations die
    // with their zygote. Nothing is left running.
    txipc_sys::process::kill(kernel, rustix::process::Signal::KILL).unwrap();
    wait_until("orphans gone", Duration::from_secs(10), || {
        procs.iter().all(|p| !alive(*p))
    });
    // A new kernel of the same name replaces the stale socket.
    let name = sys.name().to_string();
    drop(sys);
    let again = txipc_runtime::client::SystemProcess::spawn(
        exe(),
        &(server("kv", "kv", "txipc", "") + &grant("*", "kv")),
        &name,
        Duration::from_secs(30),
    )
    .unwrap();
    again.shutdown().unwrap();
}

/// The keeper of an incarnation (`txipc_sys::keeper`): the child of an incarnation that keeps
/// at most one descriptor (the kernel's pidfd it watches).
fn keeper_of(pid: i32) -> Option<i32> {
    children(pid)
        .into_iter()
        .find(|&c| std::fs::read_dir(format!("/proc/{c}/fd")).is_ok_and(|d| d.count() <= 1))
}

/// A keeper outlives its SIGKILLed incarnation (so that the teardown of the address space is
/// off the recovery path) and the kernel kills it once the successor serves: it does not stay
/// until shutdown. A keeper SIGKILLed while its incarnation serves (a crash point of its own)
/// harms nothing: the incarnation serves on, and its own SIGKILL is recovered from as usual.
#[test]
fn a_dead_incarnations_keeper_is_killed_once_its_successor_serves_and_a_killed_keeper_harms_nothing()
 {
    let sys = boot(
        "keepers",
        &(server("kv", "kv", "txipc", "") + &grant("*", "kv")),
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    kv.put(b"k", vec![7; 64]).unwrap();
    // Generation 1's keeper outlives it, and is killed by the kernel once generation 2 serves.
    let first = server_pid(&conn, "kv");
    let mut keeper = None;
    wait_until(
        "the first incarnation's keeper",
        Duration::from_secs(10),
        || {
            keeper = keeper_of(first);
            keeper.is_some()
        },
    );
    let keeper = keeper.unwrap();
    txipc_sys::process::kill(first, rustix::process::Signal::KILL).unwrap();
    assert_eq!(kv.get(b"k").unwrap().map(|v| v.len()), Some(64));
    wait_until(
        "the dead incarnation's keeper killed",
        Duration::from_secs(10),
        || !alive(keeper),
    );
    // Generation 2's keeper killed while it serves: nothing else changes.
    let second = server_pid(&conn, "kv");
    assert_ne!(second, first);
    let mut k2 = None;
    wait_until(
        "the second incarnation's keeper",
        Duration::from_secs(10),
        || {
            k2 = keeper_of(second);
            k2.is_some()
        },
    );
    txipc_sys::process::kill(k2.unwrap(), rustix::process::Signal::KILL).unwrap();
    wait_until("the killed keeper gone", Duration::from_secs(10), || {
        !alive(k2.unwrap())
    });
    for i in 0..20 {
        kv.put(format!("x{i}").into_bytes(), vec![1; 8]).unwrap();
    }
    assert_eq!(
        server_pid(&conn, "kv"),
        second,
        "the incarnation kept serving"
    );
    // And it is recovered from as usual when it dies (without a keeper: only slower).
    txipc_sys::process::kill(second, rustix::process::Signal::KILL).unwrap();
    assert_eq!(kv.get(b"x19").unwrap().map(|v| v.len()), Some(8));
    assert_eq!(kv.get(b"k").unwrap().map(|v| v.len()), Some(64));
    drop(kv);
    drop(conn);
    let kernel = sys.pid() as i32;
    let procs = descendants(kernel);
    sys.shutdown().unwrap();
    for p in procs {
        assert!(!alive(p), "process {p} survived the shutdown");
    }
}
