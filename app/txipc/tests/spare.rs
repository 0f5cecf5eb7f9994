//! The spare (ARCHITECTURE.md §6, "The spare"): the standby armed to take over from the
//! serving incarnation recovers every fault kind by itself, exactly once, and each of its own
//! crash points — killed while parked or spinning, a crash word without a death, dying,
//! crashing or hanging while taking over — is
//! recovered by the kernel as before. Real processes, real faults.

mod common;

use std::time::Duration;

use common::*;
use probe_server::{Fault, FaultyClient};
use txipc_core::failpoint::{FailKind, FailSpec, SITE_TAKEOVER};
use txipc_core::proto::ServerInfo;
use txipc_runtime::client::System;

fn info(conn: &System) -> ServerInfo {
    conn.ps().unwrap().remove(0)
}

/// Waits until the standby is armed as the spare of a serving incarnation.
fn wait_armed(conn: &System) -> ServerInfo {
    let mut last = None;
    wait_until(
        "the standby armed as the spare",
        Duration::from_secs(30),
        || {
            let i = info(conn);
            let ok = i.state == "running" && i.spare_armed && i.standby_pid > 0;
            last = Some(i);
            ok
        },
    );
    last.unwrap()
}

/// Waits until the kernel has accounted for `restarts` recoveries and serves again; returns
/// who recovered the last one (`true`: the spare).
fn recovered(conn: &System, restarts: u64) -> bool {
    let mut by_spare = false;
    wait_until(
        "the recovery accounted for",
        Duration::from_secs(30),
        || {
            let i = info(conn);
            by_spare = i.last_recovery_steps.is_some_and(|s| s.by_spare);
            i.restarts >= restarts && i.state == "running"
        },
    );
    by_spare
}

fn system(tag: &str, extra: &str) -> txipc_runtime::client::SystemProcess {
    boot(
        tag,
        &(server(
            "f",
            "faulty",
            "txipc",
            &format!("retry_limit = 3\ndeadline_ms = 300\n{extra}"),
        ) + &grant("*", "f")),
    )
}

fn arm_takeover_fault(conn: &System, kind: FailKind) {
    conn.fail_point(
        "f",
        Some(FailSpec {
            kind,
            site: SITE_TAKEOVER,
            arg: 0,
        }),
    )
    .unwrap();
}

/// Every fault kind of the serving incarnation — a crash that stops it (panic, SIGSEGV,
/// abort), a death it cannot report (exit, SIGKILL from outside), a hang the kernel kills —
/// is recovered by the spare itself (the kernel's stamps say so), and each update is applied
/// exactly once. With `takeover = false` the kernel recovers.
#[test]
fn every_fault_kind_is_taken_over_by_the_spare_exactly_once() {
    let sys = system("spare-kinds", "takeover = true");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    let kinds = [
        Fault::Panic,
        Fault::Segv,
        Fault::Abort,
        Fault::Exit,
        Fault::Hang,
        // SIGKILL from outside, while a request waits.
        Fault::None,
    ];
    let (mut counter, mut restarts, mut sum, mut killed) = (0u32, 0u64, 0i64, 0u64);
    for kind in kinds {
        // The kernel recovers itself when the spare does not claim within its grace (a machine
        // so loaded that the spare gets no CPU for milliseconds): that recovery is as correct,
        // and the kind is tried again, a bounded number of times.
        let mut by_spare = false;
        for _ in 0..5 {
            let armed = wait_armed(&conn);
            let value = if kind == Fault::None {
                txipc_sys::process::kill(armed.pid, rustix::process::Signal::KILL).unwrap();
                killed += 1;
                f.add(counter, 5, Fault::None, 0).unwrap()
            } else {
                f.add(counter, 5, kind, 1).unwrap()
            };
            assert_eq!(value, 5, "{kind:?}");
            restarts += 1;
            sum += 5;
            by_spare = recovered(&conn, restarts);
            assert_eq!(f.get(counter).unwrap(), 5, "{kind:?}");
            counter += 1;
            if by_spare {
                break;
            }
        }
        assert!(
            by_spare,
            "{kind:?}: never recovered by the spare: {:?}",
            info(&conn)
        );
    }
    let i = info(&conn);
    // Every fault re-ran its request but the SIGKILLs, which came before the request did.
    assert_eq!(i.restarts, restarts, "{i:?}");
    assert!(i.retried_requests >= restarts - killed, "{i:?}");
    assert_eq!(i.aborted_requests, 0);
    assert_eq!(f.sum().unwrap(), sum);
    drop((f, conn));
    sys.shutdown().unwrap();

    let sys = system("spare-off", "takeover = false");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    wait_until("a standby", Duration::from_secs(30), || {
        info(&conn).standby_pid > 0
    });
    assert!(!info(&conn).spare_armed);
    assert_eq!(f.add(0, 5, Fault::Segv, 1).unwrap(), 5);
    assert!(
        !recovered(&conn, 1),
        "takeover = false: the kernel recovers"
    );
    drop((f, conn));
    sys.shutdown().unwrap();
}

/// A poison request under takeovers: the spare re-posts it while it is below the retry
/// limit, the kernel counts each fault, stops arming the spare at the limit and fails it
/// `Aborted` itself; it leaves no trace.
#[test]
fn a_poison_request_is_still_aborted_after_takeovers() {
    let sys = system("spare-poison", "takeover = true");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    wait_armed(&conn);
    match f.add(0, 100, Fault::Segv, u32::MAX) {
        Err(txipc_service::Error::Call(txipc_service::CallError::Aborted { attempts })) => {
            assert_eq!(attempts, 4)
        }
        other => panic!("expected Aborted, got {other:?}"),
    }
    assert_eq!(f.get(0).unwrap(), 0);
    recovered(&conn, 4);
    let i = info(&conn);
    assert_eq!((i.aborted_requests, i.restarts), (1, 4), "{i:?}");
    drop((f, conn));
    sys.shutdown().unwrap();
}

/// Crash point "spare killed while parked": the spare and the serving incarnation are
/// SIGKILLed together. The kernel disarms the dead spare (or finds it dead at the rollback,
/// or waits out its grace) and recovers with a new standby; nothing is lost and nothing
/// waits for the dead spare.
#[test]
fn a_spare_killed_while_parked_leaves_the_recovery_to_the_kernel() {
    let sys = system("spare-parked", "takeover = true");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(1, 3, Fault::None, 0).unwrap(), 3);
    for round in 1..=2u64 {
        let armed = wait_armed(&conn);
        txipc_sys::process::kill(armed.standby_pid, rustix::process::Signal::KILL).unwrap();
        txipc_sys::process::kill(armed.pid, rustix::process::Signal::KILL).unwrap();
        assert_eq!(f.add(1, 3, Fault::None, 0).unwrap(), 3 + 3 * round as i64);
        recovered(&conn, round);
        let i = info(&conn);
        assert!(
            i.pid != armed.standby_pid && i.pid != armed.pid && alive(i.pid),
            "the dead spare cannot serve: {i:?}"
        );
    }
    assert_eq!(f.get(1).unwrap(), 9);
    drop((f, conn));
    sys.shutdown().unwrap();
}

/// Waits until the armed spare `pid` spins: `SCHED_IDLE`, its wait loop running. A machine
/// without the privilege to leave `SCHED_IDLE` again keeps the sleeping spare: `false`.
fn wait_spinning(pid: i32) -> bool {
    if !txipc_sys::process::may_leave_sched_idle() {
        eprintln!("no CAP_SYS_NICE nor RLIMIT_NICE: the spare sleeps instead of spinning");
        return false;
    }
    wait_until(
        "the armed spare spinning at SCHED_IDLE",
        Duration::from_secs(30),
        || txipc_sys::process::sched_policy(pid) == Some(txipc_sys::process::SchedPolicy::Idle),
    );
    true
}

/// Crash point "the spare is killed while spinning": the armed spare waits at `SCHED_IDLE`,
/// busy (ARCHITECTURE.md §6, "The spinning spare"); SIGKILLed then, with the serving
/// incarnation, it leaves the recovery to the kernel, which recovers with a new standby (or
/// to that standby, armed in time), never serving itself; the next one armed spins again.
#[test]
fn an_armed_spare_spins_at_sched_idle_and_one_killed_while_spinning_leaves_the_recovery_to_the_kernel()
 {
    let sys = system("spare-spins", "takeover = true");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(1, 2, Fault::None, 0).unwrap(), 2);
    let armed = wait_armed(&conn);
    if !wait_spinning(armed.standby_pid) {
        return;
    }
    txipc_sys::process::kill(armed.standby_pid, rustix::process::Signal::KILL).unwrap();
    txipc_sys::process::kill(armed.pid, rustix::process::Signal::KILL).unwrap();
    assert_eq!(f.add(1, 2, Fault::None, 0).unwrap(), 4);
    // Recovered by the kernel, or by the next standby if it was armed before the kernel saw
    // the old incarnation's death (a loaded machine): never by the killed spare.
    recovered(&conn, 1);
    let i = info(&conn);
    assert!(
        i.pid != armed.standby_pid && i.pid != armed.pid && alive(i.pid),
        "{i:?}"
    );
    // The next spare spins too, and serves after a fault.
    let again = wait_armed(&conn);
    assert!(wait_spinning(again.standby_pid));
    assert_eq!(f.add(1, 2, Fault::Segv, 1).unwrap(), 6);
    recovered(&conn, 2);
    assert_eq!(f.get(1).unwrap(), 6);
    drop((f, conn));
    sys.shutdown().unwrap();
}

/// A spinning spare that the kernel disarms — here because another server connects to its
/// server (nested transactions need the kernel, §13) — stops spinning: it sees the takeover
/// word leave ARMED(it), goes back to `SCHED_OTHER` and sleeps as an ordinary standby, instead
/// of spinning on for good (ARCHITECTURE.md §6, "The spinning spare").
#[test]
fn a_disarmed_spare_stops_spinning_and_sleeps_as_a_standby() {
    let extra = "takeover = true\nretry_limit = 3";
    let sys = boot(
        "spare-disarm",
        &(server("f", "faulty", "txipc", extra)
            + &server("g", "faulty", "txipc", extra)
            + &grant("*", "f")
            + &grant("*", "g")
            + &grant("f", "g")),
    );
    let conn = sys.connect().unwrap();
    let g_info = |conn: &System| {
        conn.ps()
            .unwrap()
            .into_iter()
            .find(|s| s.name == "g")
            .unwrap()
    };
    let mut armed = None;
    wait_until("g's spare armed", Duration::from_secs(30), || {
        let i = g_info(&conn);
        let ok = i.state == "running" && i.spare_armed && i.standby_pid > 0;
        armed = Some(i);
        ok
    });
    let armed = armed.unwrap();
    if !wait_spinning(armed.standby_pid) {
        return;
    }
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(
        f.relay("g".into(), 0, 1, Fault::None, Fault::None, 0)
            .unwrap(),
        1
    );
    wait_until(
        "g's disarmed spare asleep at SCHED_OTHER",
        Duration::from_secs(30),
        || {
            let i = g_info(&conn);
            !i.spare_armed
                && txipc_sys::process::sched_policy(armed.standby_pid)
                    == Some(txipc_sys::process::SchedPolicy::Other)
                && txipc_sys::process::state(armed.standby_pid) == Some('S')
        },
    );
    assert_eq!(
        g_info(&conn).standby_pid,
        armed.standby_pid,
        "the same standby"
    );
    drop((f, conn));
    sys.shutdown().unwrap();
}

/// Maps server `name`'s status page, found among the kernel's descriptors (its memfd is
/// named `txipc-status-NAME`): what a wild writer of the shared page could do.
fn status_page(kernel: i32, name: &str) -> txipc_sys::status::StatusPage {
    let want = format!("/memfd:txipc-status-{name} ");
    for e in std::fs::read_dir(format!("/proc/{kernel}/fd")).unwrap() {
        let path = e.unwrap().path();
        let Ok(link) = std::fs::read_link(&path) else {
            continue;
        };
        if link.to_string_lossy().starts_with(&want) {
            let fd = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            return txipc_sys::status::StatusPage::map(fd).unwrap();
        }
    }
    panic!("no status page of `{name}` among the kernel's descriptors");
}

/// Crash point "the crash word is written by a process that keeps running" (a wild or
/// hostile write of the status page): the spare takes the word as a stamp only, and claims
/// only once the pidfd says the incarnation is dead. The word written with the serving
/// incarnation's pid, the spare consumes it (so it saw it) and keeps spinning; the incarnation
/// serves on, no recovery happens; its real death later is recovered by the same spare.
#[test]
fn a_crash_word_written_while_the_incarnation_lives_does_not_make_the_spare_serve() {
    let sys = system("spare-word", "takeover = true");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    let armed = wait_armed(&conn);
    if !wait_spinning(armed.standby_pid) {
        return;
    }
    let page = status_page(sys.pid() as i32, "f");
    page.set_crashed(armed.pid);
    wait_until(
        "the spare saw the crash word",
        Duration::from_secs(30),
        || page.crashed() == 0,
    );
    for n in 2..=4 {
        assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), n);
    }
    let i = info(&conn);
    assert_eq!(i.restarts, 0, "a word is not a death: {i:?}");
    assert_eq!(i.pid, armed.pid, "the live incarnation still serves: {i:?}");
    assert!(
        i.spare_armed && i.standby_pid == armed.standby_pid && alive(armed.pid),
        "the spare still waits: {i:?}"
    );
    // Its real death is still the spare's to recover (or the kernel's, on a machine too
    // loaded for the spare: correct either way).
    txipc_sys::process::kill(armed.pid, rustix::process::Signal::KILL).unwrap();
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 5);
    recovered(&conn, 1);
    assert_eq!(f.get(0).unwrap(), 5);
    drop((f, conn, page));
    sys.shutdown().unwrap();
}

/// Crash points "spare dies while taking over" (exit: a death it does not report, as a
/// SIGKILL), "double fault" (it crashes, stopping itself) and "hang during takeover" (the
/// kernel's activation timeout): each time after it claimed the takeover and rolled the heap
/// back, before it settled the taken request. The kernel recovers (again: the rollback is
/// idempotent), the request runs exactly once, and the server serves.
#[test]
fn a_spare_that_fails_while_taking_over_is_recovered_by_the_kernel() {
    let sys = system("spare-fails", "takeover = true");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    let (mut counter, mut sum) = (0u32, 0i64);
    for kind in [FailKind::Exit, FailKind::Segv, FailKind::Hang] {
        // The spare's fail point fires only if the spare, not the kernel, recovers the fault
        // (on a machine so loaded that the spare misses its grace, the kernel does, as
        // correctly): tried again, a bounded number of times.
        let mut fired = false;
        for _ in 0..5 {
            let before = info(&conn).restarts;
            wait_armed(&conn);
            arm_takeover_fault(&conn, kind);
            // The serving incarnation crashes after its update; the spare takes over and fails.
            assert_eq!(f.add(counter, 7, Fault::Segv, 1).unwrap(), 7, "{kind:?}");
            sum += 7;
            fired = conn.fail_point("f", None).unwrap().is_none();
            let by_spare = recovered(&conn, before + 1);
            assert_eq!(f.get(counter).unwrap(), 7, "{kind:?}");
            counter += 1;
            if fired {
                assert!(!by_spare, "{kind:?}: the last recovery was the kernel's");
                break;
            }
        }
        assert!(fired, "{kind:?}: the spare never took over");
    }
    assert_eq!(f.sum().unwrap(), sum);
    assert_eq!(info(&conn).aborted_requests, 0);
    drop((f, conn));
    sys.shutdown().unwrap();
}

/// Crash point "the serving incarnation crashes with a spare armed": it reports, then kills
/// itself (its keeper holds the address space), so the spare wakes on its pidfd — an event —
/// and serves without the kernel: the kernel is stopped (SIGSTOP) from before the fault until
/// the re-run request is answered. Resumed, the kernel finds the crash report and the death
/// queued together and names the crash, not the SIGKILL, as the cause. (Before, the crashed
/// incarnation stopped itself and the spare polled `/proc` for the stop: it stayed `T`.)
#[test]
fn a_crash_with_a_spare_armed_ends_in_death_and_the_spare_serves_without_the_kernel() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};
    let sys = system("spare-dies", "takeover = true");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    let armed = wait_armed(&conn);
    let old = txipc_sys::process::pidfd_open(armed.pid).unwrap();
    let kernel = sys.pid() as i32;
    // Resumes the kernel when dropped (also on a failed assertion), or after 60 s if the
    // spare never serves (then the kernel recovers, the call returns and the test fails).
    let (done, wait) = mpsc::channel::<()>();
    let late = Arc::new(AtomicBool::new(false));
    let guard = {
        let late = late.clone();
        std::thread::spawn(move || {
            if wait.recv_timeout(Duration::from_secs(60)).is_err() {
                late.store(true, Ordering::SeqCst);
            }
            let _ = txipc_sys::process::kill(kernel, rustix::process::Signal::CONT);
        })
    };
    struct Resume(Option<mpsc::Sender<()>>);
    impl Drop for Resume {
        fn drop(&mut self) {
            drop(self.0.take());
        }
    }
    let resume = Resume(Some(done));
    txipc_sys::process::kill(kernel, rustix::process::Signal::STOP).unwrap();
    wait_until("the kernel stopped", Duration::from_secs(20), || {
        txipc_sys::process::state(kernel) == Some('T')
    });
    assert_eq!(f.add(0, 5, Fault::Segv, 1).unwrap(), 6);
    let state = txipc_sys::process::state(armed.pid);
    assert!(
        !late.load(Ordering::SeqCst),
        "the spare did not serve while the kernel was stopped"
    );
    assert!(
        txipc_sys::process::pidfd_exited(&old),
        "the crashed incarnation is dead, not stopped: state {state:?}"
    );
    drop(resume);
    guard.join().unwrap();
    assert!(recovered(&conn, 1), "the spare recovered it");
    let i = info(&conn);
    let cause = i.last_fault.as_ref().map(|f| f.cause.clone());
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("SIGSEGV")),
        "the crash report names the cause: {i:?}"
    );
    assert_eq!(f.get(0).unwrap(), 6);
    drop((f, conn));
    sys.shutdown().unwrap();
}
