//! Policy `companion` with real processes and real faults: replay from a checkpoint and the
//! message log, poison requests, corrupt log records and snapshots, divergent replays, a full
//! log, checkpoints under load, sessions, the checkpoint writer killed, and storms of SIGKILLs
//! and fail points under 8 client processes checked against exact models.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use kv_api::KvClient;
use txipc_core::failpoint::{FailKind, FailPoint};
use txipc_core::proto::{CompanionInfo, ServerInfo};
use txipc_runtime::client::{System, SystemProcess};
use txipc_service::{CallError, Error as SvcError};

fn companion_system(tag: &str, builtin: &str, extra: &str) -> SystemProcess {
    boot(
        tag,
        &(server("kv", builtin, "companion", extra) + &grant("*", "kv")),
    )
}

fn info(conn: &System) -> ServerInfo {
    conn.ps().unwrap().remove(0)
}

fn companion(conn: &System) -> CompanionInfo {
    info(conn)
        .companion
        .expect("a companion server reports its log")
}

/// SIGKILLs the running incarnation and waits until its successor serves.
fn kill_and_wait(conn: &System) {
    let before = info(conn).generation;
    txipc_sys::process::kill(server_pid(conn, "kv"), rustix::process::Signal::KILL).unwrap();
    wait_until("the next incarnation", Duration::from_secs(20), || {
        let i = info(conn);
        i.generation > before && i.state == "running" || i.state == "held"
    });
}

/// SIGKILLs the running incarnation, waits until the server is held and returns why.
fn kill_until_held(conn: &System) -> String {
    txipc_sys::process::kill(server_pid(conn, "kv"), rustix::process::Signal::KILL).unwrap();
    wait_until("held", Duration::from_secs(10), || {
        info(conn).state == "held"
    });
    info(conn).held_reason.unwrap()
}

/// The keepers among the children of `pid`.
fn keepers(pid: i32) -> Vec<i32> {
    let mut k = children(pid);
    k.retain(|&p| alive(p) && is_keeper(p));
    k
}

fn counter(v: Option<txipc_service::Bytes>) -> i64 {
    v.map_or(0, |b| kv_api::counter_value(&b).unwrap())
}

/// The basic promise: state built by requests before and after a checkpoint survives a SIGKILL
/// (the snapshot restores the first part, the replay of the log the rest).
#[test]
fn state_survives_from_the_checkpoint_and_the_replayed_log() {
    let sys = companion_system(
        "basic",
        "kv-plain",
        "checkpoint_every = 50\ncheckpoint_ms = 0\nstandby = \"warm\"",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..120u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    // A bound, not a speed check: the writer runs at nice 19 (and gets its parent's priority
    // back after 5 s); starved on a loaded machine it may take seconds.
    wait_until("a checkpoint", Duration::from_secs(120), || {
        companion(&conn).checkpoint_index >= 100
    });
    // Where the last checkpoint lands depends on when its writer ran (50, 100, or as late as
    // 120); ten more updates stay behind it whatever it was, since the next is due 50 later.
    for i in 120..130u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    // The checkpoint recovery restores (the new incarnation may take another after replay).
    let at = companion(&conn).checkpoint_index;
    assert!((100..=120).contains(&at), "checkpoint at {at}");
    kill_and_wait(&conn);
    for i in 0..130u32 {
        assert_eq!(
            kv.get(format!("k{i}")).unwrap(),
            Some(format!("v{i}").into()),
            "k{i}"
        );
    }
    let c = companion(&conn);
    assert!(c.checkpoints >= 2, "{c:?}");
    assert_eq!(
        c.last_replayed,
        130 - at,
        "replayed exactly the log behind the checkpoint: {c:?}"
    );
    assert!(c.last_replayed >= 10, "{c:?}");
    assert_eq!(kv.stats().unwrap().updates, 130);
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// A request that faults the server on every run: its first run and each replay fault, then it
/// is failed alone with `Aborted`, its effects absent from the replayed state, and a bystander
/// in another session is served throughout.
#[test]
fn a_poison_request_is_failed_alone_on_replay() {
    let sys = companion_system("poison", "kv-plain-faulty", "retry_limit = 2");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    let other = KvClient::new(open(&conn, "kv"));
    kv.put("before", "1").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let bystander = std::thread::spawn(move || {
        let mut n = 0;
        while !s2.load(Ordering::Relaxed) {
            n += 1;
            assert_eq!(other.incr("bystander", 1).unwrap(), n);
        }
        (n, other)
    });
    match kv.put("poison/x", "boom") {
        Err(SvcError::Call(CallError::Aborted { attempts })) => assert_eq!(attempts, 3),
        other => panic!("expected Aborted, got {other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    let (n, other) = bystander.join().unwrap();
    // Its put changed the map before panicking, each time: none of it is left.
    assert_eq!(kv.get("poison/x").unwrap(), None);
    assert_eq!(kv.get("before").unwrap(), Some("1".into()));
    assert_eq!(counter(other.get("bystander").unwrap()), n);
    // And it stays absent through later recoveries (replay skips its record).
    kill_and_wait(&conn);
    assert_eq!(kv.get("poison/x").unwrap(), None);
    assert_eq!(counter(kv.get("bystander").unwrap()), n);
    let i = info(&conn);
    assert_eq!(i.aborted_requests, 1);
    assert_eq!(i.state, "running");
    drop((kv, other, conn));
    sys.shutdown().unwrap();
}

/// The kernel's descriptor of the message log (`/memfd:txipc-clog-kv`), opened for writing
/// from outside: the test plays a wild write of the server (which maps the log).
fn open_kernel_log(kernel: u32) -> std::fs::File {
    for e in std::fs::read_dir(format!("/proc/{kernel}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if target.to_string_lossy().contains("txipc-clog-kv") {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.path())
                .unwrap();
        }
    }
    panic!("the kernel holds no message log");
}

#[test]
fn a_corrupt_log_record_is_detected_and_the_server_held() {
    let sys = companion_system(
        "corruptlog",
        "kv-plain",
        "checkpoint_ms = 0\nstandby = \"warm\"",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..20u32 {
        kv.put(format!("k{i}"), vec![i as u8; 100]).unwrap();
    }
    // A byte inside the 5th record's request (records are 64 + ~110 bytes; the ring follows
    // the log's header page). The server maps the log, so this is what its own wild write
    // would do.
    open_kernel_log(sys.pid())
        .write_all_at(&[0xEE], 4096 + 4 * 176 + 100)
        .unwrap();
    let reason = kill_until_held(&conn);
    assert!(
        reason.contains("message log record") && reason.contains("corrupt"),
        "{reason}"
    );
    assert!(matches!(
        kv.get("k1"),
        Err(SvcError::Call(CallError::Unavailable { .. }))
    ));
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// Waits until the standby has restored the newest checkpoint (at least `min`); returns it.
/// Bounded generously: the writer (nice 19) and the standby's restore may be starved on a
/// loaded machine.
fn wait_warm(conn: &System, min: u64) -> u64 {
    wait_until("a warm standby", Duration::from_secs(120), || {
        let c = companion(conn);
        c.checkpoint_index >= min && c.standby_index == c.checkpoint_index
    });
    companion(conn).checkpoint_index
}

/// The warm standby: every accepted checkpoint is restored by the standby as it is taken, so
/// a recovery reconstitutes nothing and replays only the log behind the checkpoint.
#[test]
fn the_warm_standby_restores_each_checkpoint_so_recovery_only_replays_the_tail() {
    let sys = companion_system(
        "warm",
        "kv-plain",
        "checkpoint_every = 20\ncheckpoint_ms = 0\nstandby = \"warm\"",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..45u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    let at = wait_warm(&conn, 40);
    // Under the warm standby every checkpoint is the server's own fork.
    let c = companion(&conn);
    assert_eq!(c.server_checkpoints, c.checkpoints, "{c:?}");
    kill_and_wait(&conn);
    let c = companion(&conn);
    assert!(
        c.last_warm,
        "the standby had restored checkpoint {at}: {c:?}"
    );
    assert_eq!(c.last_replayed, 45 - at, "{c:?}");
    for i in 0..45u32 {
        assert_eq!(
            kv.get(format!("k{i}")).unwrap(),
            Some(format!("v{i}").into())
        );
    }
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The companion itself killed: its durable half is the kernel (the log and the checkpoints);
/// its other processes are the warm standby and the checkpoint writers. A SIGKILLed standby
/// is replaced by a fresh one, which is warmed with the newest checkpoint at once; then the
/// server's own death is recovered from it, nothing lost.
#[test]
fn the_warm_standby_killed_is_replaced_and_warmed_again() {
    let sys = companion_system(
        "warmkill",
        "kv-plain",
        "checkpoint_every = 20\ncheckpoint_ms = 0\nstandby = \"warm\"",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..30u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    wait_warm(&conn, 20);
    let standby = info(&conn).standby_pid;
    assert!(standby > 0);
    txipc_sys::process::kill(standby, rustix::process::Signal::KILL).unwrap();
    wait_until("a new standby", Duration::from_secs(20), || {
        let i = info(&conn);
        i.standby_pid > 0 && i.standby_pid != standby
    });
    for i in 30..50u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    let at = wait_warm(&conn, 40);
    assert_eq!(info(&conn).state, "running");
    kill_and_wait(&conn);
    let c = companion(&conn);
    assert!(c.last_warm, "{c:?}");
    assert_eq!(c.last_replayed, 50 - at, "{c:?}");
    for i in 0..50u32 {
        assert_eq!(
            kv.get(format!("k{i}")).unwrap(),
            Some(format!("v{i}").into())
        );
    }
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The bound of a wait for work of the following standby (its replay, its checkpoints): it
/// runs at nice 19 where the test runs as root, and a nice-19 process on a loaded two-CPU
/// machine gets well under 1% of a CPU — a checkpoint of a few ms of work can take tens of
/// seconds then (a 30 s bound failed under a loaded workspace run). Each wait is for its
/// property; the bound only stops a test that would hang.
const STANDBY_WAIT: Duration = Duration::from_secs(120);

/// Waits until a following standby's replica has applied request `index` (it reports its
/// position when it has caught up with the log).
fn wait_following(conn: &System, index: u64) {
    wait_until("the replica caught up", STANDBY_WAIT, || {
        companion(conn).standby_index >= index
    });
}

/// Every companion incarnation (a standby too: it becomes one) starts a keeper, a process
/// sharing its address space (`txipc_sys::keeper`), so that a SIGKILL is seen (the pidfd
/// fires) without the teardown of its state, replica and mapped log coming first. Its crash
/// points: the keeper killed (nothing happens to the server, which goes on serving, and a
/// later SIGKILL still recovers everything) and the incarnation killed (its keeper is killed
/// by the kernel once the successor serves: none is left behind).
#[test]
fn a_companion_incarnation_has_a_keeper_and_none_is_left_behind() {
    let sys = companion_system(
        "keeper",
        "kv-plain",
        "checkpoint_every = 20\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..30u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    let server = server_pid(&conn, "kv");
    let first = keepers(server);
    assert_eq!(first.len(), 1, "one keeper of the incarnation: {first:?}");
    let maps = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert_eq!(
        maps(first[0]),
        maps(server),
        "the keeper shares the address space"
    );
    // The keeper killed: not the server's fault, which goes on serving.
    txipc_sys::process::kill(first[0], rustix::process::Signal::KILL).unwrap();
    wait_until("the killed keeper gone", Duration::from_secs(10), || {
        !alive(first[0])
    });
    kv.put("after-keeper", "1").unwrap();
    assert_eq!(info(&conn).restarts, 0, "a keeper's death is not a fault");
    // The incarnation killed (without a keeper), then again with one: every update kept, and
    // no keeper outlives its incarnation.
    kill_and_wait(&conn);
    let server = server_pid(&conn, "kv");
    let second = keepers(server);
    assert_eq!(
        second.len(),
        1,
        "the new incarnation has its keeper: {second:?}"
    );
    kill_and_wait(&conn);
    wait_until(
        "the dead incarnation's keeper gone",
        Duration::from_secs(10),
        || !alive(second[0]),
    );
    assert_eq!(keepers(server_pid(&conn, "kv")).len(), 1);
    for i in 0..30u32 {
        assert_eq!(
            kv.get(format!("k{i}")).unwrap(),
            Some(format!("v{i}").into())
        );
    }
    assert_eq!(kv.get("after-keeper").unwrap(), Some("1".into()));
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The keeper of a SIGKILLed companion incarnation outlives it (`Until::Killed`): its
/// teardown of the dead incarnation's state, replica and log mapping is left to the kernel,
/// which kills it at a watchdog tick once the successor serves — not run during the
/// recovery, where it took the client's CPU (ARCHITECTURE.md §16, "Recovery"). Checked
/// without a clock: with the kernel stopped nothing can kill the keeper but its own end, so a
/// keeper that died with its incarnation (`Until::CreatorDies`, the earlier design) is gone
/// and one that waits for the kernel is not; once the kernel runs again it recovers the
/// server and kills the keeper.
#[test]
fn a_dead_companion_incarnations_keeper_outlives_it_until_the_kernel_kills_it() {
    let sys = companion_system("keeper-killed", "kv-plain", "checkpoint_ms = 0");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..10u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    let server = server_pid(&conn, "kv");
    let mut keeper = Vec::new();
    wait_until("the incarnation's keeper", Duration::from_secs(10), || {
        keeper = keepers(server);
        !keeper.is_empty()
    });
    assert_eq!(keeper.len(), 1, "one keeper: {keeper:?}");
    let keeper = keeper[0];
    let kernel = sys.pid() as i32;
    let before = info(&conn).generation;
    {
        txipc_sys::process::kill(kernel, rustix::process::Signal::STOP).unwrap();
        let _resume = ContinueOnDrop(kernel);
        txipc_sys::process::kill(server, rustix::process::Signal::KILL).unwrap();
        wait_until("the incarnation dead", Duration::from_secs(10), || {
            !alive(server)
        });
        // A parent-death signal would have been sent while the incarnation exited; give a
        // keeper killed by it the time to finish dying (on a loaded machine, generously).
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            alive(keeper),
            "the keeper died with its incarnation: its teardown would run during the recovery"
        );
        let ppid = std::fs::read_to_string(format!("/proc/{keeper}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("PPid:")
                    .map(|v| v.trim().parse::<i32>().unwrap())
            });
        assert_eq!(
            ppid,
            Some(kernel),
            "the orphaned keeper belongs to the kernel (its subreaper)"
        );
    }
    // The kernel runs again: it recovers the server, then kills the old keeper.
    wait_until("the next incarnation", Duration::from_secs(20), || {
        let i = info(&conn);
        i.generation > before && i.state == "running"
    });
    wait_until(
        "the dead incarnation's keeper killed by the kernel",
        Duration::from_secs(20),
        || !alive(keeper),
    );
    for i in 0..10u32 {
        assert_eq!(
            kv.get(format!("k{i}")).unwrap(),
            Some(format!("v{i}").into())
        );
    }
    drop((kv, conn));
    let procs = descendants(kernel);
    sys.shutdown().unwrap();
    for p in procs {
        assert!(!alive(p), "process {p} survived the shutdown");
    }
}

/// The following standby (the default, `standby = "follow"`): it replays the log as it is
/// written, one request behind the server, and takes the checkpoints from its own state. The
/// server never forks for them (every accepted checkpoint reports no stall), and a recovery
/// replays only the request the replica had not applied — the last one.
#[test]
fn the_following_standby_takes_the_checkpoints_and_recovery_replays_only_the_last_request() {
    let sys = companion_system(
        "follow",
        "kv-plain",
        "checkpoint_every = 20\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..45u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    // Request 45 is the last in the log: the replica stops just before it.
    wait_following(&conn, 44);
    // The replica's position says nothing about its checkpoint writers (nice 19): the first
    // checkpoint may still be on its way (on a loaded machine it was, and this failed).
    wait_until(
        "the standby's first checkpoint",
        Duration::from_secs(120),
        || companion(&conn).checkpoints >= 1,
    );
    let c = companion(&conn);
    assert!((20..=44).contains(&c.checkpoint_index), "{c:?}");
    assert_eq!(c.max_stall_us, 0, "the server forked a checkpoint: {c:?}");
    assert_eq!(c.server_checkpoints, 0, "{c:?}");
    assert!(
        checkpoint_children(server_pid(&conn, "kv")).is_empty(),
        "a checkpoint child of the server"
    );
    kill_and_wait(&conn);
    let c = companion(&conn);
    assert!(c.last_warm, "{c:?}");
    assert_eq!(c.last_replayed, 1, "{c:?}");
    for i in 0..45u32 {
        assert_eq!(
            kv.get(format!("k{i}")).unwrap(),
            Some(format!("v{i}").into())
        );
    }
    // And again, from the replica of the next standby (which started from the newest
    // checkpoint and followed the log behind it).
    kv.put("after", "1").unwrap();
    kv.put("after2", "2").unwrap();
    wait_following(&conn, 46);
    kill_and_wait(&conn);
    let c = companion(&conn);
    assert!(c.last_warm, "{c:?}");
    assert_eq!(c.last_replayed, 1, "{c:?}");
    assert_eq!(kv.get("after").unwrap(), Some("1".into()));
    assert_eq!(kv.get("after2").unwrap(), Some("2".into()));
    assert_eq!(kv.stats().unwrap().updates, 47);
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The nice value of a process (`/proc/PID/stat` field 19).
fn nice_of(pid: i32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(16).unwrap().parse().unwrap()
}

/// The standby's pid.
fn standby_pid(conn: &System) -> i32 {
    let pid = info(conn).standby_pid;
    assert!(pid > 0, "no standby: {:?}", info(conn));
    pid
}

/// An activation takes a following standby's replica over at once, between two records, even
/// in the middle of a long replay step (it does not wait for the replica to finish its lag:
/// the activation, at its own priority, replays the rest); the kernel reports the replica's
/// lag at the fault. Past `follow_max_lag` records behind, the replica replays at its own
/// priority, not nice 19. The standby is stopped (SIGSTOP) to make the lag, to catch it in
/// the middle of its step, and while the kernel activates it, so that the activation arrives
/// mid-step whatever the machine's speed.
#[test]
fn an_activation_takes_the_replica_over_mid_replay_and_the_lag_is_reported() {
    use rustix::process::Signal;
    const N: u32 = 8_000;
    let sys = companion_system(
        "midreplay",
        "kv-plain",
        "checkpoint_every = 1000000\ncheckpoint_ms = 0\nfollow_max_lag = 1000",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..10u32 {
        kv.put(format!("k{i}"), "x").unwrap();
    }
    wait_following(&conn, 9);
    let standby = standby_pid(&conn);
    txipc_sys::process::kill(standby, Signal::STOP).unwrap();
    for i in 0..N {
        kv.put(format!("n{i}"), i.to_le_bytes()).unwrap();
    }
    let before = companion(&conn).standby_applied;
    assert!(before <= 10, "the stopped replica applied: {before}");
    // Resumed: caught as soon as it has published a position inside its step, and stopped
    // there again.
    txipc_sys::process::kill(standby, Signal::CONT).unwrap();
    let start = std::time::Instant::now();
    let mid = loop {
        let applied = companion(&conn).standby_applied;
        if applied > before {
            txipc_sys::process::kill(standby, Signal::STOP).unwrap();
            break companion(&conn).standby_applied;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the replica never published a position inside its step"
        );
        std::thread::yield_now();
    };
    assert!(
        mid < u64::from(N),
        "the replica finished its step before it was stopped ({mid}): its position is not published while it applies"
    );
    // 8,000 records behind, over the bound of 1,000: it replays at its own priority.
    let server = server_pid(&conn, "kv");
    assert_eq!(
        nice_of(standby),
        nice_of(server),
        "a replica past follow_max_lag replays at its own priority"
    );
    // The fault: the kernel activates the stopped standby; resumed, it sees the activation
    // after at most the record group it was in, and the activation replays the rest.
    let g = info(&conn).generation;
    txipc_sys::process::kill(server, Signal::KILL).unwrap();
    wait_until("the fault seen", Duration::from_secs(20), || {
        info(&conn).state != "running" || info(&conn).generation > g
    });
    std::thread::sleep(Duration::from_millis(50));
    txipc_sys::process::kill(standby, Signal::CONT).unwrap();
    wait_until("the next incarnation", Duration::from_secs(20), || {
        let i = info(&conn);
        i.generation > g && i.state == "running"
    });
    let c = companion(&conn);
    assert!(c.last_warm, "the replica was used: {c:?}");
    assert!(
        c.last_replayed > 1,
        "the activation waited for the replica's whole step (it replayed only the last record): {c:?}"
    );
    // The lag at the fault: every record past the replica's published position then (it was
    // stopped there); the replica applied at most the rest of its record group after it was
    // resumed, and the activation the remainder.
    assert_eq!(c.last_lag_records, u64::from(N) + 10 - mid, "{c:?}");
    assert!(c.last_replayed + 64 >= c.last_lag_records, "{c:?}");
    for i in (0..N).step_by(997) {
        assert_eq!(
            kv.get(format!("n{i}")).unwrap(),
            Some(i.to_le_bytes().to_vec().into())
        );
    }
    assert_eq!(kv.stats().unwrap().keys, u64::from(N) + 10);
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The kernel gives an activated companion standby its servers' priority at once: a replica
/// caught in a replay step at nice 19 (where a busy machine gives it ~1.5% of a CPU) would
/// otherwise reach the record boundary at which it sees the activation, and replay the rest,
/// that slowly. Checked without a clock: the standby is stopped at nice 19, so only the
/// kernel can change its priority.
#[test]
fn an_activated_standby_gets_its_servers_priority_from_the_kernel_at_once() {
    use rustix::process::Signal;
    let sys = companion_system("activate-nice", "kv-plain", "checkpoint_ms = 0");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..10u32 {
        kv.put(format!("k{i}"), "x").unwrap();
    }
    wait_following(&conn, 9);
    let standby = standby_pid(&conn);
    let server = server_pid(&conn, "kv");
    let server_nice = nice_of(server);
    // As in a replay step at nice 19 (the replica lowers itself so), and stopped there.
    rustix::process::setpriority_process(rustix::process::Pid::from_raw(standby), 19).unwrap();
    txipc_sys::process::kill(standby, Signal::STOP).unwrap();
    let _resume = ContinueOnDrop(standby);
    assert_eq!(nice_of(standby), 19);
    let g = info(&conn).generation;
    txipc_sys::process::kill(server, Signal::KILL).unwrap();
    wait_until(
        "the stopped standby reniced by the kernel's activation",
        Duration::from_secs(20),
        || match std::fs::read_to_string(format!("/proc/{standby}/stat")) {
            Ok(_) if alive(standby) => nice_of(standby) == server_nice,
            _ => panic!(
                "the stopped standby was killed (its activation timed out) and was never reniced by the kernel"
            ),
        },
    );
    txipc_sys::process::kill(standby, Signal::CONT).unwrap();
    wait_until("the next incarnation", Duration::from_secs(20), || {
        let i = info(&conn);
        i.generation > g && i.state == "running"
    });
    assert_eq!(server_pid(&conn, "kv"), standby, "the standby serves");
    for i in 0..10u32 {
        assert_eq!(kv.get(format!("k{i}")).unwrap(), Some("x".into()));
    }
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// Lets a stopped process go on when dropped (also when the test fails).
struct ContinueOnDrop(i32);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        let _ = txipc_sys::process::kill(self.0, rustix::process::Signal::CONT);
    }
}

/// Requests 1 and 2 (`first`, `second`), then, once the replica has applied the first, stops
/// the following standby; returns its pid and the guard that lets it go on.
fn stop_the_following_standby(
    conn: &System,
    kv: &KvClient<txipc_runtime::client::Channel>,
) -> (i32, ContinueOnDrop) {
    kv.put("first", "1").unwrap();
    kv.put("second", "2").unwrap();
    wait_following(conn, 1);
    let standby = info(conn).standby_pid;
    assert!(standby > 0);
    txipc_sys::process::kill(standby, rustix::process::Signal::STOP).unwrap();
    (standby, ContinueOnDrop(standby))
}

/// Samples the standby's nice value until its replica has applied request `index`; returns
/// the values seen.
fn nice_while_following(conn: &System, standby: i32, index: u64) -> Vec<i64> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + STANDBY_WAIT;
    let mut k = 0u32;
    loop {
        let n = nice_of(standby);
        if !seen.contains(&n) {
            seen.push(n);
        }
        k += 1;
        if k % 16 == 0 && companion(conn).standby_index >= index {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not reach request {index}: {:?}",
            companion(conn)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A following standby replays at nice 19, in the CPU time the server and its clients leave —
/// until it has fallen behind by 1/8 of the ring: then it replays at its own priority until it
/// has caught up (starved at nice 19 by a server and a client that both spin on two CPUs, it
/// lagged until the log was 3/4 full and the server forked a checkpoint of its own). A slow
/// request (300 ms) shows the priority a replay runs at. Without the privilege to come back
/// from nice 19 (root, or `RLIMIT_NICE`) a standby never lowers its priority, and only the
/// catch-up half holds.
#[test]
fn a_following_standby_that_fell_behind_catches_up_at_its_own_priority() {
    let sys = companion_system(
        "catchup",
        "kv-plain-faulty",
        "log_mb = 1\ncheckpoint_every = 1000000\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    let (standby, stopped) = stop_the_following_standby(&conn, &kv);
    // Behind: the standby stopped while ~215 KiB are logged (more than 1/8 of the 1 MiB ring,
    // less than the 3/4 at which the server would fork a checkpoint itself).
    for i in 0..200u32 {
        kv.put(format!("k{i}"), vec![i as u8; 1000]).unwrap();
    }
    assert_eq!(kv.incr("slow/behind", 1).unwrap(), 1);
    kv.put("after-slow", "x").unwrap();
    drop(stopped);
    // Requests 1-2, 3-202 the puts, 203 the slow one, 204 the last (not applied).
    let seen = nice_while_following(&conn, standby, 203);
    assert!(
        !seen.contains(&19),
        "the standby replayed its back-log at nice 19 (seen {seen:?})"
    );
    // Not behind: a slow request replays at nice 19 (where the standby may come back from it).
    let may = rustix::process::geteuid().is_root()
        || rustix::process::getrlimit(rustix::process::Resource::Nice)
            .current
            .is_some_and(|c| c >= 20);
    assert_eq!(kv.incr("slow/ahead", 1).unwrap(), 1);
    kv.put("after-slow-2", "y").unwrap();
    let seen = nice_while_following(&conn, standby, 205);
    if may {
        assert!(
            seen.contains(&19),
            "a replay with no back-log ran at {seen:?}, not nice 19"
        );
    }
    let c = companion(&conn);
    assert_eq!(
        c.server_checkpoints, 0,
        "the server forked a checkpoint: {c:?}"
    );
    // And the replica is the state: a recovery from it replays only the last request.
    kill_and_wait(&conn);
    let c = companion(&conn);
    assert!(c.last_warm, "{c:?}");
    assert_eq!(c.last_replayed, 1, "{c:?}");
    assert_eq!(kv.get("k199").unwrap(), Some(vec![199u8; 1000].into()));
    assert_eq!(kv.get("after-slow-2").unwrap(), Some("y".into()));
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The catch-up bound in records (wave 7): a following standby 4,096 records behind replays at
/// its own priority even when those records are small — here ~0.4 MB of counter increments,
/// far below the bytes bound (1/8 of a 64 MiB ring, at most 4 MiB), which alone let a log of
/// small records lag by ~40,000 of them, all replayed by an activation (the p99 of `bench
/// recovery --policy companion`). Fails without the records bound: the back-log replays at
/// nice 19. (Without the privilege to come back from nice 19 a standby never lowers its
/// priority, and the test holds trivially.)
#[test]
fn a_following_standby_4096_small_records_behind_catches_up_at_its_own_priority() {
    let sys = companion_system(
        "catchup-records",
        "kv-plain-faulty",
        "log_mb = 64\ncheckpoint_every = 1000000\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    let (standby, stopped) = stop_the_following_standby(&conn, &kv);
    for _ in 0..4200u32 {
        kv.incr("counter", 1).unwrap();
    }
    let c = companion(&conn);
    assert!(
        c.standby_lag_bytes < 4 << 20,
        "the back-log is below the bytes bound: {c:?}"
    );
    assert_eq!(kv.incr("slow/behind", 1).unwrap(), 1);
    kv.put("after-slow", "x").unwrap();
    drop(stopped);
    // Requests 1-2, 3-4202 the increments, 4203 the slow one, 4204 the last (not applied).
    let seen = nice_while_following(&conn, standby, 4203);
    assert!(
        !seen.contains(&19),
        "the standby replayed its back-log of small records at nice 19 (seen {seen:?})"
    );
    assert_eq!(companion(&conn).server_checkpoints, 0);
    kill_and_wait(&conn);
    assert_eq!(counter(kv.get("counter").unwrap()), 4200);
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The CPUs process `pid` may run on (`/proc/PID/status`, `Cpus_allowed_list`).
fn cpus_of(pid: i32) -> std::collections::BTreeSet<usize> {
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

/// A following standby replays off the CPU its server is pinned to (when another is left):
/// on it, a catch-up step held the server's next request for a whole scheduler slice. Once
/// activated it runs on that CPU, and the next standby keeps off it again. Fails without the
/// change: the standby may run on every CPU.
#[test]
fn a_following_standby_replays_off_the_cpu_its_server_is_pinned_to() {
    let ours = cpus_of(std::process::id() as i32);
    let Some(&pin) = ours.iter().next_back() else {
        return;
    };
    if ours.len() < 2 {
        eprintln!("one CPU: nothing to avoid");
        return;
    }
    let sys = companion_system("follow-cpu", "kv-plain", &format!("cpu = {pin}"));
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    kv.put("a", "1").unwrap();
    kv.put("b", "2").unwrap();
    wait_following(&conn, 1);
    let mut off = ours.clone();
    off.remove(&pin);
    let standby = standby_pid(&conn);
    assert_eq!(cpus_of(standby), off, "the standby keeps off CPU {pin}");
    kill_and_wait(&conn);
    assert_eq!(
        cpus_of(server_pid(&conn, "kv")),
        [pin].into(),
        "the activated standby serves on its server's CPU"
    );
    kv.put("c", "3").unwrap();
    kv.put("d", "4").unwrap();
    // The next standby follows (it set its CPUs before it registered).
    wait_following(&conn, 3);
    let next = standby_pid(&conn);
    assert_ne!(next, standby);
    assert_eq!(cpus_of(next), off, "the next standby keeps off CPU {pin}");
    assert_eq!(kv.get("b").unwrap(), Some("2".into()));
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The following standby killed, and its checkpoint writer faulting: a killed standby is
/// replaced by one that restores the newest checkpoint and follows the log behind it; a
/// checkpoint whose writer (the standby's forked child) dies is lost, not the server's
/// fault, and the next one is taken. A server fault afterwards recovers every update from
/// the new replica.
#[test]
fn the_following_standby_or_its_checkpoint_writer_killed_loses_nothing() {
    let sys = companion_system(
        "followkill",
        "kv-plain",
        "checkpoint_every = 10\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..25u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    wait_following(&conn, 24);
    let standby = info(&conn).standby_pid;
    txipc_sys::process::kill(standby, rustix::process::Signal::KILL).unwrap();
    wait_until("a new standby", Duration::from_secs(20), || {
        let i = info(&conn);
        i.standby_pid > 0 && i.standby_pid != standby
    });
    // A quiet point first: the new standby has restored and caught up, and the checkpoint it
    // takes right after a replay is done (it is not the one under test: a writer that passed
    // its fail point before the fault was armed would count). No writer for 300 ms in a row.
    let new_standby = info(&conn).standby_pid;
    wait_following(&conn, 24);
    let mut quiet_since = std::time::Instant::now();
    wait_until(
        "the new standby's first checkpoint done",
        Duration::from_secs(120),
        || {
            if !checkpoint_children(new_standby).is_empty() {
                quiet_since = std::time::Instant::now();
            }
            quiet_since.elapsed() > Duration::from_millis(300)
        },
    );
    // Its next checkpoint writer faults: that checkpoint is lost, and taken again by itself
    // after a back-off (its requests are given back to the counter). So the checkpoints after
    // the fault, once the writers are quiet, are exactly one: the one taken again, not the
    // faulted one. (Counting right after the fault raced with that retake.) The 15 requests
    // make one checkpoint due (10 after the quiet point), and leave fewer than 10 behind the
    // retake, which comes after the faulted one: no second one is due. If that checkpoint is
    // a delta (the changes since the chain's end, ARCHITECTURE.md §16 "Incremental
    // checkpoints"), its writer is the standby itself, which then dies and is replaced like a
    // killed one (its own test: `a_chain_of_deltas_restores_and_a_killed_or_corrupt_delta_is_caught`).
    let before = companion(&conn).checkpoints;
    conn.inject("kv", FailKind::Segv, FailPoint::Checkpoint)
        .unwrap();
    for i in 25..40u32 {
        kv.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    wait_following(&conn, 39);
    let replaced = info(&conn).standby_pid != new_standby;
    let mut quiet_since = std::time::Instant::now();
    if !replaced {
        wait_until(
            "the lost checkpoint taken again, and no writer for 300 ms",
            Duration::from_secs(120),
            || {
                if !checkpoint_children(new_standby).is_empty() {
                    quiet_since = std::time::Instant::now();
                }
                companion(&conn).checkpoints > before
                    && quiet_since.elapsed() > Duration::from_millis(300)
            },
        );
        let c = companion(&conn);
        assert_eq!(
            c.checkpoints,
            before + 1,
            "the faulted checkpoint counted: {c:?}"
        );
    }
    let n = 40u32;
    assert_eq!(info(&conn).restarts, 0);
    kill_and_wait(&conn);
    let c = companion(&conn);
    assert!(c.last_warm, "{c:?}");
    assert_eq!(c.last_replayed, 1, "{c:?}");
    for i in 0..n {
        assert_eq!(
            kv.get(format!("k{i}")).unwrap(),
            Some(format!("v{i}").into())
        );
    }
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// Incremental checkpoints: the following standby checkpoints a base, then only the changes
/// (deltas, written by the standby itself: no fork); the kernel keeps the chain and a new
/// standby restores base + deltas in order. Crash points: the writer killed mid-delta (the
/// standby dies: replaced, restored from the chain, nothing lost, not the server's fault) and a
/// corrupt delta (a wild write after its checksum: the kernel accepts the sealed delta, the
/// next restore finds it and drops it, and the recovery that needs it holds the server).
#[test]
fn a_chain_of_deltas_restores_and_a_killed_or_corrupt_delta_is_caught() {
    let sys = companion_system(
        "deltas",
        "kv-plain",
        // The first checkpoint (a base) after the bulk below: with a base taken before most of
        // it (every 10 requests, as it was), the bulk went into a delta whenever the standby
        // kept up, the chain's deltas outgrew its base, the next checkpoint was a base again,
        // and the fail point armed for a delta fired in its forked writer instead of the
        // standby (the test then waited for a standby death that never came).
        "checkpoint_every = 150\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    // State that does not change afterwards (in the base only), so that the chain's deltas
    // stay smaller than three bases (else the next checkpoint is a base again).
    for i in 0..100u32 {
        kv.put(format!("bulk{i}"), vec![3u8; 2000]).unwrap();
    }
    let mut n = 0u32;
    // Puts (some overwrites, some deletes) until the chain has `links` links.
    let mut grow = |links: u64| {
        wait_until("the chain grows", STANDBY_WAIT, || {
            if companion(&conn).chain_len >= links {
                return true;
            }
            kv.put(format!("k{}", n % 17), format!("v{n}")).unwrap();
            if n % 5 == 4 {
                kv.delete(format!("k{}", (n + 3) % 17)).unwrap();
            }
            n += 1;
            false
        });
    };
    grow(3);
    let c = companion(&conn);
    assert!(c.deltas >= 2, "{c:?}");
    assert!(
        c.chain_delta_bytes / c.deltas < c.snapshot_bytes,
        "a delta is smaller than the base: {c:?}"
    );
    // The model: what the server says now.
    let model = |kv: &KvClient<_>| -> Vec<Option<txipc_service::Bytes>> {
        (0..17).map(|k| kv.get(format!("k{k}")).unwrap()).collect()
    };
    let expect = model(&kv);
    // A new standby restores base + deltas.
    let standby = info(&conn).standby_pid;
    txipc_sys::process::kill(standby, rustix::process::Signal::KILL).unwrap();
    wait_until("a new standby", Duration::from_secs(20), || {
        let i = info(&conn);
        i.standby_pid > 0 && i.standby_pid != standby
    });
    wait_following(&conn, companion(&conn).checkpoint_index);
    // The writer killed mid-delta: the standby itself dies at the fail point.
    let standby = info(&conn).standby_pid;
    let links = companion(&conn).chain_len;
    conn.inject("kv", FailKind::Segv, FailPoint::Checkpoint)
        .unwrap();
    let mut k = 0u32;
    wait_until("the standby killed mid-checkpoint", STANDBY_WAIT, || {
        let i = info(&conn);
        if i.standby_pid != standby {
            return true;
        }
        kv.incr("counter", 1).unwrap();
        k += 1;
        false
    });
    wait_until("a new standby", Duration::from_secs(20), || {
        info(&conn).standby_pid > 0
    });
    assert!(companion(&conn).chain_len >= links);
    kv.incr("counter", 1).unwrap();
    k += 1;
    wait_following(&conn, companion(&conn).checkpoint_index);
    // A recovery from the replica of the replaced standby: every update is there.
    kill_and_wait(&conn);
    assert_eq!(
        info(&conn).restarts,
        1,
        "the standby's death is not the server's"
    );
    assert_eq!(model(&kv), expect);
    assert_eq!(counter(kv.get("counter").unwrap()), i64::from(k));
    // A corrupt delta: accepted sealed, found by the next restore.
    wait_until("a standby", Duration::from_secs(20), || {
        info(&conn).standby_pid > 0
    });
    let before = companion(&conn);
    conn.inject("kv", FailKind::Corrupt, FailPoint::Checkpoint)
        .unwrap();
    wait_until("the corrupt delta accepted", STANDBY_WAIT, || {
        let c = companion(&conn);
        if c.deltas > before.deltas && c.chain_len > 1 {
            return true;
        }
        kv.incr("counter", 1).unwrap();
        false
    });
    // The standby that wrote it has its replica (it never reads its own delta); the next one
    // restores the chain, finds the delta corrupt and has no replica to offer, so the
    // recovery after that restores the chain itself — and holds.
    kill_and_wait(&conn);
    assert_eq!(info(&conn).state, "running");
    wait_until("a standby", Duration::from_secs(20), || {
        info(&conn).standby_pid > 0
    });
    let reason = kill_until_held(&conn);
    assert!(
        reason.contains("of the checkpoint chain") && reason.contains("snapshot is corrupt"),
        "{reason}"
    );
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// A wild write into the one record a following standby has not applied (the last): the
/// activation replays it from the log, finds it corrupt and holds the server.
#[test]
fn a_corrupt_record_past_the_replica_is_detected_and_the_server_held() {
    let sys = companion_system("followcorrupt", "kv-plain", "checkpoint_ms = 0");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..20u32 {
        kv.put(format!("k{i}"), vec![i as u8; 100]).unwrap();
    }
    wait_following(&conn, 19);
    let log = open_kernel_log(sys.pid());
    let mut word = [0u8; 8];
    log.read_exact_at(&mut word, 16).unwrap();
    let tail = u64::from_le_bytes(word) & ((1u64 << 48) - 1);
    // A byte of the last record's value.
    log.write_all_at(&[0xEE], 4096 + tail - 20).unwrap();
    let reason = kill_until_held(&conn);
    assert!(
        reason.contains("message log record") && reason.contains("corrupt"),
        "{reason}"
    );
    drop((kv, log, conn));
    sys.shutdown().unwrap();
}

/// A wild write in the following standby while it writes a checkpoint (after the checksum):
/// the kernel accepts the sealed snapshot (its header checks), the replica itself is sound and
/// serves the first recovery; the next standby restores the snapshot, finds it corrupt and
/// drops it, and the recovery after that — which needs the snapshot — holds the server.
#[test]
fn a_corrupt_snapshot_of_the_following_standby_is_detected_before_it_is_used() {
    let sys = companion_system(
        "followsnap",
        "kv-plain",
        "checkpoint_every = 10\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    conn.inject("kv", FailKind::Corrupt, FailPoint::Checkpoint)
        .unwrap();
    for i in 0..12u32 {
        kv.put(format!("k{i}"), "v").unwrap();
    }
    wait_until("the checkpoint", Duration::from_secs(120), || {
        companion(&conn).checkpoints >= 1
    });
    kill_and_wait(&conn);
    assert_eq!(info(&conn).state, "running");
    assert_eq!(kv.get("k11").unwrap(), Some("v".into()));
    // The next standby.
    wait_until("a standby", Duration::from_secs(20), || {
        info(&conn).standby_pid > 0
    });
    // Whether it has tried the snapshot yet or not, it has no replica to offer: the
    // activation restores the snapshot itself.
    let reason = kill_until_held(&conn);
    assert!(reason.contains("snapshot is corrupt"), "{reason}");
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// The log's end is the tail word the server stores after each record (the log point). A wild
/// write into it — here one that makes the log look shorter, which would silently drop
/// acknowledged requests if it were believed — is caught by its check and holds the server.
#[test]
fn a_corrupt_tail_word_is_detected_and_the_server_held() {
    let sys = companion_system("corrupttail", "kv-plain", "checkpoint_ms = 0");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..20u32 {
        kv.put(format!("k{i}"), vec![i as u8; 100]).unwrap();
    }
    let log = open_kernel_log(sys.pid());
    let mut word = [0u8; 8];
    log.read_exact_at(&mut word, 16).unwrap();
    // The offset of the 10th record's end, with the check bits left as they were.
    let shorter = (u64::from_le_bytes(word) & !((1u64 << 48) - 1)) | (10 * 176);
    log.write_all_at(&shorter.to_le_bytes(), 16).unwrap();
    let reason = kill_until_held(&conn);
    assert!(reason.contains("tail word"), "{reason}");
    assert!(matches!(
        kv.get("k15"),
        Err(SvcError::Call(CallError::Unavailable { .. }))
    ));
    // An operator's release starts it empty, on a log restarted past the old one: what it
    // logs from then on is replayed after the next fault.
    conn.release("kv").unwrap();
    wait_until("released", Duration::from_secs(10), || {
        info(&conn).state == "running"
    });
    let kv = KvClient::new(open(&conn, "kv"));
    assert_eq!(kv.get("k1").unwrap(), None);
    kv.put("after", "release").unwrap();
    kill_and_wait(&conn);
    assert_eq!(kv.get("after").unwrap(), Some("release".into()));
    drop((kv, log, conn));
    sys.shutdown().unwrap();
}

#[test]
fn a_corrupt_snapshot_is_detected_and_the_server_held() {
    let sys = companion_system(
        "corruptsnap",
        "kv-plain",
        "checkpoint_every = 10\ncheckpoint_ms = 0\nstandby = \"warm\"",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    // A wild write in the checkpoint writer, after its checksum: the snapshot is sealed corrupt.
    conn.inject("kv", FailKind::Corrupt, FailPoint::Checkpoint)
        .unwrap();
    for i in 0..10u32 {
        kv.put(format!("k{i}"), "v").unwrap();
    }
    wait_until("the checkpoint", Duration::from_secs(120), || {
        companion(&conn).checkpoints >= 1
    });
    let reason = kill_until_held(&conn);
    assert!(reason.contains("snapshot is corrupt"), "{reason}");
    assert!(matches!(
        kv.get("k1"),
        Err(SvcError::Call(CallError::Unavailable { .. }))
    ));
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// A handler that is not deterministic: its replay gives another reply than the one logged,
/// and the companion holds the server instead of serving the different state.
#[test]
fn a_divergent_replay_is_detected() {
    let sys = companion_system("diverge", "kv-plain-faulty", "checkpoint_ms = 0");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    kv.incr("nondet/x", 1).unwrap();
    // The next record carries the digest of that reply.
    kv.put("after", "1").unwrap();
    let reason = kill_until_held(&conn);
    assert!(
        reason.contains("divergent replay") && reason.contains("incr"),
        "{reason}"
    );
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// Checkpoints taken while clients keep writing (every 25 logged requests, and SIGKILLs in
/// between): every update stands, and the stall each checkpoint caused is reported.
#[test]
fn checkpoints_during_load_keep_every_update() {
    let sys = companion_system(
        "load",
        "kv-plain",
        "checkpoint_every = 25\ncheckpoint_ms = 0\nslots = 2\nstandby = \"warm\"",
    );
    let conn = sys.connect().unwrap();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let kv = KvClient::new(open(&conn, "kv"));
            std::thread::spawn(move || {
                for n in 1..=400i64 {
                    assert_eq!(kv.incr(format!("w{w}"), 1).unwrap(), n);
                }
            })
        })
        .collect();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        kill_and_wait(&conn);
    }
    for w in writers {
        w.join().unwrap();
    }
    let kv = KvClient::new(open(&conn, "kv"));
    for w in 0..3 {
        assert_eq!(counter(kv.get(format!("w{w}")).unwrap()), 400);
    }
    // 1,200 logged requests make dozens of checkpoints due; how many writers (nice 19) have
    // finished by now is a speed, and those due are taken once the last one is done.
    wait_until("two checkpoints", Duration::from_secs(120), || {
        companion(&conn).checkpoints >= 2
    });
    let c = companion(&conn);
    assert!(c.max_stall_us > 0, "{c:?}");
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// A log of 1 MiB and no checkpoint by count or time: 4 MiB of puts force checkpoints (a full
/// log waits for one), and nothing is lost.
#[test]
fn a_full_log_forces_a_checkpoint() {
    let sys = companion_system(
        "full",
        "kv-plain",
        "log_mb = 1\ncheckpoint_every = 1000000\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    for i in 0..100u32 {
        kv.put(format!("k{}", i % 30), vec![i as u8; 40_000])
            .unwrap();
    }
    let c = companion(&conn);
    assert!(c.checkpoints >= 3, "{c:?}");
    assert!(c.log_bytes <= 1 << 20, "{c:?}");
    kill_and_wait(&conn);
    for i in 70..100u32 {
        assert_eq!(
            kv.get(format!("k{}", i % 30)).unwrap(),
            Some(vec![i as u8; 40_000].into())
        );
    }
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// Several connected sessions, each with its own per-connection state in the server, go on
/// through restarts without reconnecting, and each finds its own state.
#[test]
fn sessions_survive_a_restart() {
    let sys = companion_system(
        "sessions",
        "kv-plain-faulty",
        "checkpoint_every = 7\ncheckpoint_ms = 0",
    );
    let conn = sys.connect().unwrap();
    let sessions: Vec<_> = (0..3).map(|_| KvClient::new(open(&conn, "kv"))).collect();
    let mut expect = [0i64; 3];
    for round in 0..4 {
        for (s, kv) in sessions.iter().enumerate() {
            for _ in 0..=s {
                expect[s] += 1;
                // The same key, counted per session.
                assert_eq!(kv.incr("session/n", 1).unwrap(), expect[s], "round {round}");
            }
        }
        kill_and_wait(&conn);
    }
    assert_eq!(info(&conn).restarts, 4);
    drop((sessions, conn));
    sys.shutdown().unwrap();
}

/// "The companion itself killed": the checkpoint writer (the server's forked child, the only
/// process of the companion besides the kernel) dies by a fault and by SIGKILL mid-checkpoint.
/// The checkpoint is lost, the log behind it is kept, the next checkpoint succeeds, and a
/// server fault afterwards recovers every update.
#[test]
fn the_checkpoint_writer_killed_loses_nothing() {
    let sys = companion_system(
        "writer",
        "kv-plain",
        "checkpoint_every = 20\ncheckpoint_ms = 0\nstandby = \"warm\"",
    );
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    // A sizeable state, so that a checkpoint takes a moment.
    for i in 0..300u32 {
        kv.put(format!("big{i}"), vec![7u8; 8_000]).unwrap();
    }
    // A fault in the writer: the next checkpoint dies of SIGSEGV. First a quiet point: a
    // checkpoint of every logged request, none running, none due.
    // The writer runs at nice 19: while the other tests of this binary spin their clients on
    // both CPUs it gets a sliver of CPU time, so its bound is generous (it is a bound, not a
    // speed check). A writer starved past its deadline is killed and its checkpoint lost; its
    // requests are given back to the counter, so the next one is taken after a back-off even
    // though no request comes (`a_lost_checkpoint_is_taken_again_without_new_requests`).
    // A checkpoint that was due while a writer still ran starts when that writer ends, past a
    // multiple of 20, and may leave fewer than 20 requests behind it, which no trigger covers
    // (`checkpoint_ms = 0`): while no writer runs and the checkpoint is behind, the test
    // rewrites `big0` with its own value now and then (one more logged request, same state).
    let server = server_pid(&conn, "kv");
    let mut logged = 300u64;
    let mut last_pad = std::time::Instant::now();
    wait_until("the bulk checkpoints", Duration::from_secs(120), || {
        if companion(&conn).checkpoint_index == logged {
            return true;
        }
        if checkpoint_children(server).is_empty() && last_pad.elapsed() > Duration::from_millis(200)
        {
            kv.put("big0", vec![7u8; 8_000]).unwrap();
            logged += 1;
            last_pad = std::time::Instant::now();
        }
        false
    });
    // The faulted checkpoint is lost and taken again by itself after a back-off (its requests
    // are given back to the counter): once the writers are quiet, exactly one checkpoint more,
    // the one taken again. (Counting once the faulting writer was gone raced with that
    // retake.) The 25 requests make one checkpoint due, and leave fewer than 20 behind the
    // retake: no second one is due.
    let ok_before = companion(&conn).checkpoints;
    conn.inject("kv", FailKind::Segv, FailPoint::Checkpoint)
        .unwrap();
    let mut n = 0i64;
    for _ in 0..25 {
        n += 1;
        assert_eq!(kv.incr("n", 1).unwrap(), n);
    }
    let mut quiet_since = std::time::Instant::now();
    wait_until(
        "the lost checkpoint taken again, and no writer for 300 ms",
        Duration::from_secs(120),
        || {
            if !checkpoint_children(server).is_empty() {
                quiet_since = std::time::Instant::now();
            }
            companion(&conn).checkpoints > ok_before
                && quiet_since.elapsed() > Duration::from_millis(300)
        },
    );
    assert_eq!(
        companion(&conn).checkpoints,
        ok_before + 1,
        "a faulted checkpoint is not taken"
    );
    // SIGKILLs of the writer mid-checkpoint (each loss backs the next attempt off: 100 ms,
    // then twice as long each time, so the loop runs by time, bounded).
    let mut killed = 0;
    let start = std::time::Instant::now();
    while killed < 3 && start.elapsed() < Duration::from_secs(60) {
        n += 1;
        assert_eq!(kv.incr("n", 1).unwrap(), n);
        if let Some(child) = checkpoint_children(server).first() {
            let _ = txipc_sys::process::kill(*child, rustix::process::Signal::KILL);
            killed += 1;
        }
    }
    assert!(killed > 0, "no checkpoint writer seen");
    let before = companion(&conn).checkpoints;
    for _ in 0..40 {
        n += 1;
        assert_eq!(kv.incr("n", 1).unwrap(), n);
    }
    wait_until(
        "a checkpoint after the kills",
        Duration::from_secs(60),
        || companion(&conn).checkpoints > before,
    );
    kill_and_wait(&conn);
    assert_eq!(counter(kv.get("n").unwrap()), n);
    assert_eq!(kv.stats().unwrap().keys, 301);
    assert_eq!(
        info(&conn).restarts,
        1,
        "the writer's deaths are not the server's"
    );
    drop((kv, conn));
    sys.shutdown().unwrap();
}

/// A lost checkpoint (its writer faulted) gives its requests back to the counter: the next
/// checkpoint is taken after a short back-off even if no request comes any more — before, the
/// counter had been reset when the writer started, so a quiet server went without a newer
/// checkpoint until `checkpoint_every` more requests were logged. Both writers: the server's
/// own (`standby = "warm"`) and the following standby's.
#[test]
fn a_lost_checkpoint_is_taken_again_without_new_requests() {
    for (tag, extra, logged, index) in [
        (
            "lostwarm",
            "checkpoint_every = 20\ncheckpoint_ms = 0\nstandby = \"warm\"",
            20u32,
            20u64,
        ),
        // The replica applies a record once the next is logged: 11 requests, 10 applied.
        (
            "lostfollow",
            "checkpoint_every = 10\ncheckpoint_ms = 0",
            11,
            10,
        ),
    ] {
        let sys = companion_system(tag, "kv-plain", extra);
        let conn = sys.connect().unwrap();
        let kv = KvClient::new(open(&conn, "kv"));
        // The first checkpoint's writer faults.
        conn.inject("kv", FailKind::Segv, FailPoint::Checkpoint)
            .unwrap();
        for i in 0..logged {
            kv.put(format!("k{i}"), format!("v{i}")).unwrap();
        }
        // No request any more: the lost checkpoint is taken again by itself.
        wait_until(
            "the lost checkpoint taken again",
            Duration::from_secs(60),
            || companion(&conn).checkpoint_index == index,
        );
        let c = companion(&conn);
        assert_eq!(c.checkpoints, 1, "{tag}: {c:?}");
        assert_eq!(
            info(&conn).restarts,
            0,
            "{tag}: the writer's fault is not the server's"
        );
        kill_and_wait(&conn);
        for i in 0..logged {
            assert_eq!(
                kv.get(format!("k{i}")).unwrap(),
                Some(format!("v{i}").into()),
                "{tag}"
            );
        }
        drop((kv, conn));
        sys.shutdown().unwrap();
    }
}

fn demo(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(exe())
        .arg("demo")
        .args(args)
        .args(["--json", "--quiet", "--policy", "companion"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "demo printed no JSON ({e}): stdout {stdout}\nstderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    remove_demo_log(&v);
    assert!(out.status.success(), "{v}");
    v
}

/// One storm's report, checked for everything but its counts (a speed: `storms_until` counts
/// them across its storms).
fn check_exactly_once(v: &serde_json::Value) {
    assert_eq!(v["state_verified"], true, "{v}");
    assert_eq!(v["lost_updates"], 0, "{v}");
    assert_eq!(v["duplicated_updates"], 0, "{v}");
    assert_eq!(v["divergent_keys"], 0, "{v}");
    assert_eq!(v["failed_requests"], 0, "{v}");
}

/// Storms (`common::storms_until`), each verified exactly-once, until `min_faults` faults and
/// 1,000 requests in all.
fn exactly_once_storms(base: &[&str], seconds: u64, seed: u64, min_faults: u64) {
    storms_until(base, seconds, seed, (min_faults, 1000), |args| {
        let v = demo(args);
        check_exactly_once(&v);
        v
    });
}

/// Hundreds of SIGKILLs at random instants while 8 client processes run counters,
/// compare-and-swap chains and puts, under companion: nothing lost or duplicated, no call hangs.
#[test]
fn sigkill_storm_companion() {
    // A 20 ms interval: 16-20 faults a second in a debug build.
    exactly_once_storms(
        &[
            "--clients",
            "8",
            "--faults",
            "sigkill",
            "--fault-interval-ms",
            "20",
        ],
        20,
        11,
        300,
    );
}

/// The long storm for the report: 10,000 SIGKILLs under companion, in storms of 230 s until
/// the count is reached (at most 6, each verified exactly-once, its report printed): a fault
/// goes only into a serving server, and one storm at load 22 niced got 2,562. Run by hand:
/// `cargo test --release -p txipc --test companion -- --ignored --nocapture`.
#[test]
#[ignore]
fn sigkill_storm_companion_10k_faults() {
    storms_up_to(
        6,
        &[
            "--clients",
            "8",
            "--fault",
            "sigkill",
            "--fault-interval-ms",
            "20",
        ],
        230,
        7,
        (10_000, 1000),
        |args| {
            let v = demo(args);
            println!("{v}");
            check_exactly_once(&v);
            v
        },
    );
}

/// Every fail point kind at every point of a call, and SIGKILLs, at random instants.
#[test]
fn fail_point_storm_companion() {
    exactly_once_storms(
        &[
            "--clients",
            "8",
            "--faults",
            "sigkill,panic,segv,abort,hang,exit",
            "--fault-interval-ms",
            "40",
        ],
        6,
        12,
        80,
    );
}

/// Issue 7, defect 13 (`#[readonly]` is used by the runtime): under `companion`, a method
/// declared `#[readonly]` (`get`) is not appended to the message log, a state-changing one
/// (`put`) is: after a SIGKILL the replay runs the two puts, not the 50 gets between them.
#[test]
fn readonly_requests_are_not_logged() {
    let sys = companion_system("cmp-readonly", "kv-plain", "");
    let conn = sys.connect().unwrap();
    let kv = KvClient::new(open(&conn, "kv"));
    kv.put(b"k", b"v").unwrap();
    for _ in 0..50 {
        assert_eq!(
            kv.get(b"k").unwrap().map(|v| v.to_vec()),
            Some(b"v".to_vec())
        );
    }
    kv.put(b"k", b"w").unwrap();
    kill_and_wait(&conn);
    let replayed = companion(&conn).last_replayed;
    assert!(
        replayed <= 2,
        "{replayed} records replayed: the gets were logged"
    );
    assert_eq!(
        kv.get(b"k").unwrap().map(|v| v.to_vec()),
        Some(b"w".to_vec()),
        "the puts were logged (or checkpointed)"
    );
    drop((kv, conn));
    sys.shutdown().unwrap();
}
