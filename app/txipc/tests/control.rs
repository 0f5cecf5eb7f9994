//! The control plane: the operator grant, `restart`, `release`, `kill`, and a `ps`/`status`
//! that says what happened in words.

mod common;

use std::time::Duration;

use common::*;
use probe_server::{Fault, FaultyClient};
use txipc_core::failpoint::{FailKind, FailPoint};
use txipc_core::proto::ErrorKind;
use txipc_runtime::client::{ClientError, System};
use txipc_service::{CallError, Error as SvcError};

fn refused_kind(r: Result<impl std::fmt::Debug, ClientError>) -> (ErrorKind, String) {
    match r {
        Err(ClientError::Refused { kind, message }) => (kind, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn info(sys: &System) -> txipc_core::proto::ServerInfo {
    sys.ps().unwrap().remove(0)
}

fn wait_running(sys: &System, min_generation: u64) {
    wait_until("the server to run", Duration::from_secs(20), || {
        let s = info(sys);
        s.state == "running" && s.generation >= min_generation
    });
}

#[test]
fn operations_on_the_system_need_the_operator_grant() {
    // The operator is some other user: this process (the owner) may use the service and read
    // `ps`, but not act on the system.
    let sys = boot(
        "notop",
        &("operator = [{ client = \"uid:4000000\" }]\n".to_string()
            + &server("f", "faulty", "txipc", "")
            + &grant("*", "f")),
    );
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    let before = info(&conn);
    let checks: Vec<(&str, Result<(), ClientError>)> = vec![
        (
            "inject",
            conn.inject("f", FailKind::Segv, FailPoint::AfterHandle),
        ),
        ("restart", conn.restart("f")),
        ("release", conn.release("f").map(|_| ())),
        ("kill", conn.kill("f", 9)),
        ("shutdown", conn.shutdown()),
    ];
    for (what, r) in checks {
        let (kind, message) = refused_kind(r);
        assert_eq!(kind, ErrorKind::NotOperator, "{what}: {message}");
        assert!(message.contains("operator"), "{what}: {message}");
    }
    // Nothing happened: same incarnation, still serving, the fail point not armed.
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 2);
    let after = info(&conn);
    assert_eq!(
        (after.pid, after.generation),
        (before.pid, before.generation)
    );
    assert_eq!(after.restarts, 0);
    let st = conn.status().unwrap();
    assert_eq!(st.kernel_pid, sys.pid() as i32);
    drop((f, conn));
    // The system still stops (by signal: nobody here may ask it to).
    sys.shutdown().unwrap();
}

#[test]
fn ps_says_why_the_last_fault_happened() {
    let sys = boot(
        "cause",
        &(server("f", "faulty", "txipc", "deadline_ms = 300") + &grant("*", "f")),
    );
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert!(info(&conn).last_fault.is_none());

    conn.inject("f", FailKind::Segv, FailPoint::AfterHandle)
        .unwrap();
    assert_eq!(f.add(0, 1, Fault::None, 0).unwrap(), 1);
    let s = info(&conn);
    let fault = s.last_fault.expect("a fault recorded");
    assert_eq!(fault.cause, "SIGSEGV at fail point after-handle");
    assert_eq!(fault.generation, 1);

    assert_eq!(f.add(0, 1, Fault::Panic, 1).unwrap(), 2);
    assert_eq!(
        info(&conn).last_fault.unwrap().cause,
        "panic: faulty: injected panic"
    );

    assert_eq!(f.add(0, 1, Fault::Hang, 1).unwrap(), 3);
    let cause = info(&conn).last_fault.unwrap().cause;
    assert!(
        cause.starts_with("hang: call ran ") && cause.ends_with(" s > deadline 0.3 s"),
        "{cause}"
    );

    assert_eq!(f.add(0, 1, Fault::Exit, 1).unwrap(), 4);
    assert_eq!(
        info(&conn).last_fault.unwrap().cause,
        "exited with status 3"
    );

    let g = info(&conn).generation;
    conn.kill("f", 9).unwrap();
    wait_running(&conn, g + 1);
    let s = info(&conn);
    assert_eq!(s.last_fault.as_ref().unwrap().cause, "killed by SIGKILL");
    assert!(s.last_recovery_at_ms.unwrap() >= s.last_fault.unwrap().at_ms);
    assert!(s.standby_pid > 0 || s.zygote_pid > 0);
    assert_eq!(f.get(0).unwrap(), 4);

    let st = conn.status().unwrap();
    assert_eq!(st.kernel_pid, sys.pid() as i32);
    assert_eq!(st.servers.len(), 1);
    assert_eq!(st.servers[0].restarts, 5);
    drop((f, conn));
    sys.shutdown().unwrap();
}

#[test]
fn release_brings_a_held_server_back_with_its_state() {
    let sys = boot(
        "release",
        &(server(
            "f",
            "faulty",
            "txipc",
            "retry_limit = 10\n[server.restart]\nmax_restarts = 1\nwindow_ms = 600000",
        ) + &grant("*", "f")),
    );
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(3, 7, Fault::None, 0).unwrap(), 7);
    let (kind, _) = refused_kind(conn.release("f"));
    assert_eq!(kind, ErrorKind::WrongState);
    assert_eq!(f.add(0, 1, Fault::Panic, 1).unwrap(), 1);
    // The second restart in the window is refused: held.
    assert!(matches!(
        f.add(0, 1, Fault::Panic, 1),
        Err(SvcError::Call(CallError::Unavailable { .. }))
    ));
    let s = info(&conn);
    assert_eq!(s.state, "held");
    assert_eq!(s.pid, 0);
    let reason = s.held_reason.expect("a reason");
    assert!(reason.starts_with("restart storm"), "{reason}");
    let r = conn.release("f").unwrap();
    assert_eq!(r.was, "held");
    assert_eq!(r.reason, reason);
    assert!(!r.fresh);
    wait_running(&conn, 1);
    assert!(info(&conn).held_reason.is_none());
    // The old channel stays dead; a new one sees the recovered state.
    assert!(f.get(3).is_err());
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.get(3).unwrap(), 7);
    assert_eq!(f.get(0).unwrap(), 1);
    // Its restart limits start afresh.
    assert_eq!(f.add(0, 1, Fault::Panic, 1).unwrap(), 2);
    drop((f, conn));
    sys.shutdown().unwrap();
}

#[test]
fn restart_and_release_by_the_operator() {
    let sys = boot(
        "restart",
        &(server("f", "faulty", "txipc", "")
            + &server("n", "faulty", "none", "")
            + &grant("*", "f")
            + &grant("*", "n")),
    );
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    assert_eq!(f.add(1, 5, Fault::None, 0).unwrap(), 5);
    let g = info(&conn).generation;
    conn.restart("f").unwrap();
    wait_running(&conn, g + 1);
    let s = info(&conn);
    assert_eq!(
        s.last_fault.unwrap().cause,
        "restart requested by the operator"
    );
    assert_eq!(s.restarts, 1);
    // Under txipc the state survives a restart, and the same channel keeps working.
    assert_eq!(f.get(1).unwrap(), 5);

    // Policy none: a fault is final; release starts it empty.
    let n = FaultyClient::new(open(&conn, "n"));
    assert_eq!(n.add(1, 5, Fault::None, 0).unwrap(), 5);
    assert!(n.add(1, 1, Fault::Segv, 1).is_err());
    let s = &conn.ps().unwrap()[1];
    assert_eq!(s.state, "dead");
    assert!(
        s.held_reason.as_deref().unwrap().starts_with("policy none"),
        "{s:?}"
    );
    let (kind, _) = refused_kind(conn.kill("n", 9));
    assert_eq!(kind, ErrorKind::WrongState);
    conn.restart("n").unwrap();
    wait_until("n to run", Duration::from_secs(20), || {
        conn.ps().unwrap()[1].state == "running"
    });
    let n = FaultyClient::new(open(&conn, "n"));
    assert_eq!(n.get(1).unwrap(), 0);
    let (kind, _) = refused_kind(conn.kill("n", 99));
    assert_eq!(kind, ErrorKind::BadRequest);
    let (kind, _) = refused_kind(conn.restart("nope"));
    assert_eq!(kind, ErrorKind::UnknownService);
    drop((f, n, conn));
    sys.shutdown().unwrap();
}
