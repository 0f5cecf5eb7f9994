//! The skeleton with real processes: boot from a manifest, grants, many clients, bad input,
//! crashes under the baseline policies.

mod common;

use std::time::Duration;

use common::*;
use kv_api::KvClient;
use probe_server::{Fault, FaultyClient, NullClient};
use txipc_core::proto::ErrorKind;
use txipc_runtime::client::ClientError;
use txipc_service::{CallError, Error as SvcError, Transport};

#[test]
fn kv_operations_and_ps() {
    let sys = boot(
        "kvops",
        &(server("kv", "kv", "txipc", "") + &grant("*", "kv")),
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    assert_eq!(kv.put(b"a", b"1").unwrap(), None);
    assert_eq!(kv.put(b"a", b"2").unwrap(), Some(b"1".into()));
    assert_eq!(kv.get(b"a").unwrap(), Some(b"2".into()));
    assert_eq!(kv.incr(b"n", 5).unwrap(), 5);
    assert_eq!(kv.incr(b"n", -2).unwrap(), 3);
    assert!(matches!(
        kv.incr(b"a", 1),
        Err(SvcError::Service(kv_api::KvError::NotACounter))
    ));
    let c = kv.cas(b"a", Some(b"2".into()), Some(b"3".into())).unwrap();
    assert!(c.swapped);
    let c = kv.cas(b"a", Some(b"2".into()), None).unwrap();
    assert!(!c.swapped);
    assert_eq!(c.current, Some(b"3".into()));
    for i in 0..50u32 {
        kv.put(format!("k{i:03}").into_bytes(), vec![i as u8])
            .unwrap();
    }
    let page = kv.scan(b"k010", 5).unwrap();
    let keys: Vec<_> = page.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        vec![
            b"k010".to_vec(),
            b"k011".to_vec(),
            b"k012".to_vec(),
            b"k013".to_vec(),
            b"k014".to_vec()
        ]
    );
    assert_eq!(kv.delete(b"k010").unwrap(), Some(vec![10].into()));
    assert_eq!(kv.get(b"k010").unwrap(), None);
    assert!(matches!(
        kv.put(vec![0; kv_api::MAX_KEY + 1], vec![]),
        Err(SvcError::Service(kv_api::KvError::KeyTooLarge { .. }))
    ));
    let stats = kv.stats().unwrap();
    assert_eq!(stats.keys, 2 + 49);
    let ps = conn.ps().unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].name, "kv");
    assert_eq!(ps[0].state, "running");
    assert_eq!(ps[0].generation, 1);
    assert!(ps[0].pid > 0);
    assert!(ps[0].calls >= 60);
    drop(kv);
    drop(conn);
    sys.shutdown().unwrap();
}

#[test]
fn many_concurrent_client_processes() {
    let sys = boot(
        "many",
        &(server("kv", "kv", "txipc", "") + &grant("*", "kv")),
    );
    let name = sys.name().to_string();
    // 8 client processes at once, each doing 10 increments through the command line.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let name = name.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let out = std::process::Command::new(exe())
                        .args(["kv", "--system", &name, "incr", "shared", "1"])
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let out = std::process::Command::new(exe())
        .args(["kv", "--system", &name, "--json", "get", "shared"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    let v = kv.get(b"shared").unwrap().unwrap();
    assert_eq!(kv_api::counter_value(&v), Some(80));
    // The kernel revoked the channels of the 81 client processes that exited.
    let ps = conn.ps().unwrap();
    assert_eq!(ps[0].channels, 1, "only this test's channel remains");
    drop(kv);
    drop(conn);
    sys.shutdown().unwrap();
}

#[test]
fn concurrent_threads_share_a_channel() {
    let sys = boot(
        "threads",
        &(server("kv", "kv", "txipc", "slots = 4") + &grant("*", "kv")),
    );
    let conn = sys.connect().unwrap();
    let kv = std::sync::Arc::new(KvClient::new(open(&conn, "kv")));
    let hs: Vec<_> = (0..6)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let key = format!("t{t}").into_bytes();
                    assert_eq!(kv.incr(key, 1).unwrap(), i + 1);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    drop(kv);
    drop(conn);
    sys.shutdown().unwrap();
}

#[test]
fn permission_refused_and_unknown_service() {
    let m = server("kv", "kv", "txipc", "") + &grant("uid:4242", "kv");
    let sys = boot("perm", &m);
    let conn = sys.connect().unwrap();
    match conn.open("kv") {
        Err(ClientError::Refused { kind, message }) => {
            assert_eq!(kind, ErrorKind::NotGranted);
            assert!(message.contains("permission denied"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match conn.open("fs") {
        Err(ClientError::Refused { kind, message }) => {
            assert_eq!(kind, ErrorKind::UnknownService);
            assert!(message.contains("no service `fs`"), "{message}");
        }
        other => panic!("expected unknown service, got {other:?}"),
    }
    // The command line says the same.
    let out = std::process::Command::new(exe())
        .args(["kv", "--system", sys.name(), "get", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    drop(conn);
    sys.shutdown().unwrap();
}

#[test]
fn no_such_system_is_a_clear_error() {
    let out = std::process::Command::new(exe())
        .args(["ps", "--system", "t-nobody-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no system `t-nobody-here` is running"),
        "{err}"
    );
}

#[test]
fn bad_manifests_are_refused_with_the_cause() {
    for (manifest, want) in [
        ("name = \"x\"\n", "no servers"),
        (&*server("kv", "nope", "txipc", ""), "not a built-in"),
        (&*server("kv", "kv", "sometimes", ""), "policy"),
        (
            &*(server("kv", "kv", "txipc", "") + &grant("*", "fs")),
            "no server of that name",
        ),
    ] {
        let mut child = std::process::Command::new(exe())
            .args(["run", "-", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "manifest {manifest:?}: {err}");
    }
}

#[test]
fn malformed_and_oversized_requests_do_not_harm_others() {
    let m = server("kv", "kv", "txipc", "request_max = 1024\nreply_max = 4096") + &grant("*", "kv");
    let sys = boot("malformed", &m);
    let conn = sys.connect().unwrap();
    let good = KvClient::new(open(&conn, "kv"));
    good.put(b"x", b"1").unwrap();
    let raw = open(&conn, "kv");
    let mut reply = Vec::new();
    // Unknown method.
    assert_eq!(
        raw.call(999, &[], &mut reply),
        Err(CallError::UnknownMethod { method: 999 })
    );
    // Bytes that do not decode as the method's arguments, of many shapes.
    for n in 0..64usize {
        let garbage: Vec<u8> = (0..n).map(|i| (i * 97 + n * 13) as u8 | 0x80).collect();
        for method in 1..=7 {
            match raw.call(method, &garbage, &mut reply) {
                Err(CallError::Malformed) | Ok(()) => {}
                other => panic!("method {method}, {n} garbage bytes: {other:?}"),
            }
        }
    }
    // Oversized: refused by the stub before anything is sent.
    let big = vec![7u8; 4096];
    assert!(matches!(
        raw.call(2, &big, &mut reply),
        Err(CallError::TooLarge {
            what: "request",
            ..
        })
    ));
    // The well-behaved client was served throughout, by the same incarnation.
    assert_eq!(good.get(b"x").unwrap(), Some(b"1".into()));
    let ps = conn.ps().unwrap();
    assert_eq!(ps[0].generation, 1);
    assert_eq!(ps[0].restarts, 0);
    drop((good, raw, conn));
    sys.shutdown().unwrap();
}

/// A reply longer than the channel's reply area (the server encodes replies straight into the
/// slot) is answered `ReplyTooLarge` with the channel's limit; the request ran (a put's effect
/// stands), the slot is clean for the next call, and replies up to the limit, inline or not,
/// arrive intact.
#[test]
fn a_reply_larger_than_the_channel_is_lost_but_its_request_ran() {
    let m = server("kv", "kv", "txipc", "request_max = 4096\nreply_max = 256") + &grant("*", "kv");
    let sys = boot("replybig", &m);
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    let big = vec![0xb7u8; 1000];
    assert_eq!(kv.put(b"k", &big).unwrap(), None);
    match kv.get(b"k") {
        Err(SvcError::Call(e @ CallError::ReplyTooLarge { cap: 256 })) => assert!(!e.did_not_run()),
        other => panic!("expected ReplyTooLarge, got {other:?}"),
    }
    // The put whose reply (the 1,000-byte previous value) is lost still ran.
    assert!(matches!(
        kv.put(b"k", b"small"),
        Err(SvcError::Call(CallError::ReplyTooLarge { cap: 256 }))
    ));
    assert_eq!(kv.get(b"k").unwrap(), Some(b"small".into()));
    // Every length up to the limit, either side of the inline limit, arrives intact.
    for len in [0usize, 1, 40, 41, 42, 43, 60, 200, 250, 251, 252] {
        let v: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        kv.put(b"v", &v).unwrap();
        assert_eq!(kv.get(b"v").unwrap(), Some(v.into()), "{len} bytes");
    }
    drop((kv, conn));
    sys.shutdown().unwrap();
}

#[test]
fn crash_under_policy_none_is_final() {
    let m = server("f", "faulty", "none", "") + &grant("*", "f");
    let sys = boot("none", &m);
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 5, Fault::None, 0).unwrap(), 5);
    // The crashing request had run partly and nothing rolls it back: not "did not run".
    match f.add(0, 1, Fault::Segv, 1) {
        Err(SvcError::Call(e @ CallError::Interrupted)) => assert!(!e.did_not_run()),
        other => panic!("expected Interrupted, got {other:?}"),
    }
    // Every later call fails fast, and new connections are refused.
    assert!(matches!(
        f.get(0),
        Err(SvcError::Call(CallError::Unavailable { .. }))
    ));
    assert!(matches!(
        conn.open("f"),
        Err(ClientError::Refused {
            kind: ErrorKind::Unavailable,
            ..
        })
    ));
    let ps = conn.ps().unwrap();
    assert_eq!(ps[0].state, "dead");
    drop((f, conn));
    sys.shutdown().unwrap();
}

#[test]
fn crash_under_policy_restart_comes_back_empty() {
    let m = server("f", "faulty", "restart", "") + &grant("*", "f");
    let sys = boot("restart", &m);
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(3, 7, Fault::None, 0).unwrap(), 7);
    let gen1 = conn.ps().unwrap()[0].generation;
    // The call in flight gets a typed error saying its effect is unknown...
    match f.add(3, 1, Fault::Panic, 1) {
        Err(SvcError::Call(CallError::Restarted)) => {}
        other => panic!("expected Restarted, got {other:?}"),
    }
    // ...the connection survives, later calls succeed, and the state is gone.
    assert_eq!(f.get(3).unwrap(), 0);
    assert_eq!(f.add(3, 2, Fault::None, 0).unwrap(), 2);
    let ps = conn.ps().unwrap();
    assert!(ps[0].generation > gen1);
    assert_eq!(ps[0].restarts, 1);
    // SIGKILL from outside, like `kill -9` of the pid `txipc ps` shows.
    let pid = server_pid(&conn, "f");
    txipc_sys::process::kill(pid, rustix::process::Signal::KILL).unwrap();
    wait_until("a new generation", Duration::from_secs(10), || {
        conn.ps().unwrap()[0].generation > ps[0].generation
    });
    assert_eq!(f.get(3).unwrap(), 0);
    drop((f, conn));
    sys.shutdown().unwrap();
}

#[test]
fn kill_9_under_txipc_keeps_the_state() {
    let sys = boot(
        "kill9",
        &(server("kv", "kv", "txipc", "") + &grant("*", "kv")),
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..100 {
        kv.put(format!("k{i}").into_bytes(), vec![i as u8; 100])
            .unwrap();
    }
    for round in 0..5u64 {
        let before = conn.ps().unwrap()[0].generation;
        txipc_sys::process::kill(server_pid(&conn, "kv"), rustix::process::Signal::KILL).unwrap();
        wait_until("recovery", Duration::from_secs(10), || {
            let ps = conn.ps().unwrap();
            ps[0].generation > before && ps[0].state == "running"
        });
        assert_eq!(kv.incr(b"n", 1).unwrap(), round as i64 + 1);
    }
    for i in 0..100 {
        assert_eq!(
            kv.get(format!("k{i}").into_bytes()).unwrap(),
            Some(vec![i as u8; 100].into())
        );
    }
    drop((kv, conn));
    sys.shutdown().unwrap();
}

#[test]
fn null_service_answers() {
    let sys = boot(
        "null",
        &(server("null", "null", "txipc", "") + &grant("*", "null")),
    );
    let conn = sys.connect().unwrap();
    let n = NullClient::new(open(&conn, "null"));
    n.ping().unwrap();
    assert_eq!(n.echo(b"hello").unwrap(), b"hello".to_vec());
    drop((n, conn));
    sys.shutdown().unwrap();
}

#[test]
fn a_server_that_will_not_start_is_named() {
    for (exec, want) in [
        ("/nonexistent/server", "cannot execute /nonexistent/server"),
        ("/bin/false", "is it a txipc server binary"),
    ] {
        let m = format!(
            "[[server]]\nname = \"x\"\nexec = \"{exec}\"\npolicy = \"txipc\"\n{}",
            grant("*", "x")
        );
        assert!(
            txipc_runtime::client::SystemProcess::spawn(
                exe(),
                &m,
                &unique("nostart"),
                Duration::from_secs(30)
            )
            .is_err()
        );
        // The kernel names the server and the cause on its stderr.
        let name = unique("nostart");
        let mut child = std::process::Command::new(exe())
            .args(["run", "-", "--quiet", "--system", &name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("server `x`") && text.contains(want),
            "{exec}: {text}"
        );
        // A failed boot leaves no socket behind.
        assert!(
            !txipc_core::paths::socket_path(&name).exists(),
            "{exec}: socket left"
        );
    }
}

#[test]
fn a_full_heap_fails_the_request_not_the_server() {
    let m =
        server("kv", "kv", "txipc", "").replace("heap_mb = 16", "heap_mb = 1") + &grant("*", "kv");
    let sys = boot("full", &m);
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    let value = vec![0xabu8; 40 * 1024];
    let mut stored = 0;
    let full = loop {
        match kv.put(format!("k{stored}").into_bytes(), value.clone()) {
            Ok(_) => stored += 1,
            Err(SvcError::Service(kv_api::KvError::Full { detail })) => break detail,
            other => panic!("after {stored} puts: {other:?}"),
        }
        assert!(stored < 1000, "a 1 MiB heap never filled");
    };
    assert!(full.contains("heap full"), "{full}");
    // Nothing of the refused put is left; everything stored before is intact.
    assert_eq!(kv.get(format!("k{stored}").into_bytes()).unwrap(), None);
    for i in 0..stored {
        assert_eq!(
            kv.get(format!("k{i}").into_bytes())
                .unwrap()
                .map(|v| v.len()),
            Some(value.len())
        );
    }
    // Freeing space makes room again; the server never restarted.
    kv.delete(b"k0").unwrap();
    kv.put(b"again", value.clone()).unwrap();
    let ps = conn.ps().unwrap();
    assert_eq!(ps[0].restarts, 0);
    drop((kv, conn));
    sys.shutdown().unwrap();
}
