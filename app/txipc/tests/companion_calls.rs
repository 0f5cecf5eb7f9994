//! Policy `companion`, a server calling other servers (ARCHITECTURE.md §16, "Calls between
//! companion servers"): every outgoing call is recorded in the caller's log with its reply, a
//! replay answers it from the record, a call re-sent by a caller that died before recording
//! the reply is answered by the callee from its own record (also across the callee's own
//! restart from a checkpoint), a replay that makes another call is detected, and the bank
//! system keeps its total under fail points at every point and storms of faults.

mod common;

use std::time::Duration;

use bank_api::BankClient;
use common::*;
use kv_api::KvClient;
use txipc_core::failpoint::{FailKind, FailPoint};
use txipc_core::proto::ServerInfo;
use txipc_runtime::client::{Channel, System, SystemProcess};

fn info(conn: &System, name: &str) -> ServerInfo {
    conn.ps()
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

fn restarts(conn: &System, name: &str) -> u64 {
    info(conn, name).restarts
}

fn counter(v: Option<txipc_service::Bytes>) -> i64 {
    v.map_or(0, |b| kv_api::counter_value(&b).unwrap())
}

/// `kv` (kv-plain-faulty, whose `relay/` increments call `peer`) and `peer` (kv-plain), both
/// under companion.
fn relay_system(tag: &str, kv_extra: &str, peer_extra: &str) -> SystemProcess {
    boot(
        tag,
        &(server("kv", "kv-plain-faulty", "companion", kv_extra)
            + &server("peer", "kv-plain", "companion", peer_extra)
            + &grant("*", "kv")
            + &grant("*", "peer")
            + &grant("kv", "peer")),
    )
}

/// The test under companion: a request whose call increments a counter in another
/// server, with a fault in the caller after the call (before and after its reply is recorded)
/// or in the callee, counts once.
#[test]
fn a_fault_after_a_call_to_another_server_counts_once() {
    let sys = relay_system("ccalls-once", "retry_limit = 3", "retry_limit = 3");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    let peer = KvClient::new(open(&conn, "peer"));
    let mut n = 0;
    for (server, point) in [
        ("kv", FailPoint::BeforeHandle),
        ("kv", FailPoint::CallReplied),
        ("kv", FailPoint::CallRecorded),
        ("kv", FailPoint::AfterHandle),
        ("kv", FailPoint::AfterCommit),
        ("peer", FailPoint::BeforeHandle),
        ("peer", FailPoint::AfterHandle),
        ("peer", FailPoint::AfterCommit),
    ] {
        for kind in [FailKind::Panic, FailKind::Segv, FailKind::Exit] {
            n += 1;
            let before = restarts(&conn, server);
            conn.inject(server, kind, point).unwrap();
            assert_eq!(
                kv.incr("relay/c", 1).unwrap(),
                n,
                "{server} {kind:?} at {point:?}"
            );
            assert_eq!(
                restarts(&conn, server),
                before + 1,
                "{server} {kind:?} at {point:?} fired"
            );
            assert_eq!(
                counter(peer.get("c").unwrap()),
                n,
                "{server} {kind:?} at {point:?}: counted once"
            );
        }
    }
    // The caller's own state agrees (each relay added the peer's new value).
    assert_eq!(counter(kv.get("relay/c").unwrap()), n * (n + 1) / 2);
    drop((kv, peer, conn));
    sys.shutdown().unwrap();
}

/// The exactly-once window across the callee's own restart: the caller stops after the callee
/// applied its call but before recording the reply (it hangs there), the callee is killed and
/// restored from a checkpoint taken right after that call (so the call's record is behind the
/// checkpoint, not in the log), then the caller is killed. The caller's
/// replay sends the call again with the same call id, and the callee answers it from the
/// answer its snapshot carries: the counter moves once.
#[test]
fn a_call_resent_after_the_caller_died_is_answered_from_the_callees_checkpoint() {
    let sys = relay_system(
        "ccalls-ckpt",
        "deadline_ms = 600000\nretry_limit = 3",
        "checkpoint_every = 1\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    let peer = KvClient::new(open(&conn, "peer"));
    assert_eq!(kv.incr("relay/c", 1).unwrap(), 1);
    for round in 2..=4i64 {
        let peer_before = restarts(&conn, "peer");
        let kv_before = restarts(&conn, "kv");
        conn.inject("kv", FailKind::Hang, FailPoint::CallReplied)
            .unwrap();
        let caller = {
            let kv = KvClient::new(open(&conn, "kv"));
            std::thread::spawn(move || kv.incr("relay/c", 1).unwrap())
        };
        // The peer applied the call (its logged request `round`) and checkpointed after it;
        // the caller hangs.
        wait_until("the peer's checkpoint", Duration::from_secs(20), || {
            info(&conn, "peer").companion.unwrap().checkpoint_index >= round as u64
        });
        assert_eq!(counter(peer.get("c").unwrap()), round);
        assert_eq!(restarts(&conn, "kv"), kv_before, "the caller still hangs");
        txipc_sys::process::kill(server_pid(&conn, "peer"), rustix::process::Signal::KILL).unwrap();
        wait_until("the peer's restart", Duration::from_secs(20), || {
            let i = info(&conn, "peer");
            i.restarts > peer_before && i.state == "running"
        });
        let c = info(&conn, "peer").companion.unwrap();
        assert_eq!(
            c.last_replayed, 0,
            "restored from the checkpoint alone: {c:?}"
        );
        assert_eq!(restarts(&conn, "kv"), kv_before, "the caller still hangs");
        txipc_sys::process::kill(server_pid(&conn, "kv"), rustix::process::Signal::KILL).unwrap();
        assert_eq!(caller.join().unwrap(), round, "round {round}");
        assert_eq!(restarts(&conn, "kv"), kv_before + 1);
        assert_eq!(
            counter(peer.get("c").unwrap()),
            round,
            "round {round}: the re-sent call was not applied again"
        );
    }
    drop((kv, peer, conn));
    sys.shutdown().unwrap();
}

/// A replayed request that makes another call than it made when it first ran is a divergence:
/// the caller is held with a reason naming the request, not served from different state.
#[test]
fn a_replay_that_makes_another_call_is_detected() {
    let sys = relay_system("ccalls-diverge", "checkpoint_ms = 0", "");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    kv.incr("relay-nondet/x", 1).unwrap();
    txipc_sys::process::kill(server_pid(&conn, "kv"), rustix::process::Signal::KILL).unwrap();
    wait_until("held", Duration::from_secs(20), || {
        info(&conn, "kv").state == "held"
    });
    let reason = info(&conn, "kv").held_reason.unwrap();
    assert!(
        reason.contains("divergent replay")
            && reason.contains("incr")
            && reason.contains("to `peer`"),
        "{reason}"
    );
    // The peer was not called a second time by the replay.
    let peer = KvClient::new(open(&conn, "peer"));
    assert_eq!(peer.stats().unwrap().updates, 1);
    drop((kv, peer, conn));
    sys.shutdown().unwrap();
}

fn bank_system(tag: &str, extra: &str) -> SystemProcess {
    let m = server("bank", "bank-plain", "companion", extra)
        + &server("account-0", "account-plain", "companion", extra)
        + &server("account-1", "account-plain", "companion", extra)
        + &grant("*", "bank")
        + &grant("bank", "account-0")
        + &grant("bank", "account-1");
    boot(tag, &m)
}

/// Every ledger entry of `name`.
fn ledger(bank: &BankClient<Channel>, name: &str) -> Vec<bank_api::LedgerEntry> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = bank.ledger(name.into(), after, 256).unwrap();
        let Some(last) = page.last() else {
            return out;
        };
        after = last.transfer;
        out.extend(page.iter().copied());
        if page.len() < 256 {
            return out;
        }
    }
}

/// The bank under companion, a fail point at every point of every server of the tree (the
/// bank between its calls, both account servers), every crash kind: each transfer happens
/// exactly once (balances, total, one debit and one credit ledger entry each).
#[test]
fn bank_under_companion_fail_points_at_every_point_of_every_server() {
    let sys = bank_system("ccalls-bank-fp", "deadline_ms = 300\nretry_limit = 4");
    let conn = sys.connect().unwrap();
    let bank = BankClient::new(open(&conn, "bank"));
    let accts: Vec<(String, usize)> = (0..6)
        .map(|k| {
            let name = format!("a{k}");
            bank.open(name.clone(), 1000).unwrap();
            let home = bank_api::home(&name, 2);
            (name, home)
        })
        .collect();
    let mut model: std::collections::HashMap<String, i64> =
        accts.iter().map(|(n, _)| (n.clone(), 1000)).collect();
    let mut done = Vec::new();
    let mut id = 0u64;
    for (server, home) in [
        ("bank", None),
        ("account-0", Some(0)),
        ("account-1", Some(1)),
    ] {
        let mut points = vec![
            FailPoint::BeforeHandle,
            FailPoint::AfterHandle,
            FailPoint::AfterCommit,
        ];
        if home.is_none() {
            points.extend(FailPoint::COMPANION_CALLS);
        }
        for point in points {
            for kind in FailKind::ALL {
                id += 1;
                let h = home.unwrap_or(id as usize % 2);
                let from = accts.iter().find(|a| a.1 == h).unwrap().0.clone();
                let to = accts
                    .iter()
                    .filter(|a| (a.1 == h) == (id % 3 == 0) && a.0 != from)
                    .nth(id as usize % 2)
                    .unwrap()
                    .0
                    .clone();
                let before = restarts(&conn, server);
                conn.inject(server, kind, point).unwrap();
                bank.transfer(id, from.clone(), to.clone(), 7)
                    .unwrap_or_else(|e| panic!("{server} {kind:?} at {point:?}: {e}"));
                *model.get_mut(&from).unwrap() -= 7;
                *model.get_mut(&to).unwrap() += 7;
                done.push((id, from, to));
                wait_until(
                    &format!("{server}: {kind:?} at {point:?} to fire"),
                    Duration::from_secs(10),
                    || restarts(&conn, server) > before,
                );
                assert_eq!(restarts(&conn, server), before + 1);
                for (name, want) in &model {
                    assert_eq!(
                        bank.balance(name.clone()).unwrap(),
                        *want,
                        "{name} after {server} {kind:?} at {point:?}"
                    );
                }
            }
        }
    }
    assert_eq!(bank.total().unwrap(), 6000);
    assert_eq!(bank.transfers().unwrap(), id);
    let mut seen: std::collections::HashMap<u64, (Option<String>, Option<String>)> =
        Default::default();
    for (name, _) in &accts {
        for e in ledger(&bank, name) {
            assert_eq!(
                e.times, 1,
                "{name}: transfer {} applied {} times",
                e.transfer, e.times
            );
            let entry = seen.entry(e.transfer).or_default();
            let side = if e.delta < 0 {
                &mut entry.0
            } else {
                &mut entry.1
            };
            assert!(
                side.replace(name.clone()).is_none(),
                "transfer {} twice",
                e.transfer
            );
        }
    }
    for (id, from, to) in done {
        assert_eq!(
            seen.remove(&id),
            Some((Some(from), Some(to))),
            "transfer {id}"
        );
    }
    assert!(seen.is_empty(), "{seen:?}");
    drop((bank, conn));
    sys.shutdown().unwrap();
}

fn demo(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(exe())
        .arg("demo")
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "demo printed no JSON ({e}): stdout {stdout}\nstderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    remove_demo_log(&v);
    v
}

fn check_bank_storm(v: &serde_json::Value, min_faults: u64) {
    assert_eq!(v["policy"], "companion", "{v}");
    assert_eq!(v["state_verified"], true, "{v}");
    assert_eq!(v["total_found"], v["total_expected"], "{v}");
    for k in [
        "lost_updates",
        "duplicated_updates",
        "half_applied",
        "divergent_keys",
        "uncertain_transfers",
        "clients_missing",
        "failed_requests",
    ] {
        assert_eq!(v[k], 0, "{k}: {v}");
    }
    assert!(v["faults_injected"].as_u64().unwrap() >= min_faults, "{v}");
    for s in ["bank", "account-0", "account-1"] {
        assert!(v["faults_by_server"][s].as_u64().unwrap() > 0, "{s}: {v}");
    }
    assert!(v["requests"].as_u64().unwrap() > 500, "{v}");
}

/// The storm under companion: 8 client processes transfer while SIGKILLs and fail points (the
/// bank's call points included) hit the bank and both account servers at random instants (a
/// few hundred faults): total conserved, every acknowledged transfer in exactly one debit and
/// one credit entry, no call hangs.
#[test]
fn bank_storm_under_companion() {
    let v = demo(&[
        "--workload",
        "bank",
        "--policy",
        "companion",
        "--seconds",
        "8",
        "--clients",
        "8",
        "--fault-interval-ms",
        "25",
        "--fault",
        "sigkill,panic,segv,abort,exit",
        "--seed",
        "12",
    ]);
    check_bank_storm(&v, 200);
}

/// The long storm for the report (run by hand: `cargo test --release -p txipc --test
/// companion_calls -- --ignored`).
#[test]
#[ignore]
fn bank_storm_under_companion_10k_faults() {
    let v = demo(&[
        "--workload",
        "bank",
        "--policy",
        "companion",
        "--seconds",
        "330",
        "--clients",
        "8",
        "--fault-interval-ms",
        "22",
        "--fault",
        "sigkill,panic,segv,abort,exit",
        "--seed",
        "13",
    ]);
    println!("{v}");
    check_bank_storm(&v, 10_000);
}
