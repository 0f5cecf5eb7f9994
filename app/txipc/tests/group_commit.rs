//! Group commit keeps poison isolation: a batch rolled back by a poison request is re-run one
//! request at a time, so the innocent requests it held are not charged again and again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use probe_server::{Fault, FaultyClient};
use txipc_service::{CallError, Error as SvcError};

#[test]
fn poison_requests_in_a_batch_fail_alone() {
    poison_in_a_batch("batch-poison", false);
}

/// The poison request's channel comes first, so the server takes it first: when its batch is
/// re-run one request at a time, the innocents wait TAKEN in the server's backlog while the
/// poison request faults again. They were not running, so the fault is not charged to them
/// (the kernel charges the requests the rolled-back transaction's descriptor names).
#[test]
fn poison_requests_in_a_batch_fail_alone_whatever_the_channel_order() {
    poison_in_a_batch("batch-poison-first", true);
}

fn poison_in_a_batch(tag: &str, poison_first: bool) {
    let sys = boot(
        tag,
        &(server(
            "f",
            "faulty",
            "txipc",
            "batch_max = 8\nretry_limit = 2\nslots = 8",
        ) + &grant("*", "f")),
    );
    let conn = sys.connect().unwrap();
    let first = poison_first.then(|| FaultyClient::new(open(&conn, "f")));
    let stop = Arc::new(AtomicBool::new(false));
    let mut honest = Vec::new();
    for c in 0..4u32 {
        let f = FaultyClient::new(open(&conn, "f"));
        let stop = stop.clone();
        honest.push(std::thread::spawn(move || {
            let (mut n, mut failed) = (0i64, 0u32);
            while !stop.load(Ordering::Relaxed) {
                match f.add(c, 1, Fault::None, 0) {
                    Ok(_) => n += 1,
                    Err(SvcError::Call(CallError::Aborted { .. })) => failed += 1,
                    Err(e) => panic!("honest client {c}: {e:?}"),
                }
            }
            (c, n, failed, f)
        }));
    }
    let poison = first.unwrap_or_else(|| FaultyClient::new(open(&conn, "f")));
    for _ in 0..6 {
        match poison.add(10, 1, Fault::Segv, u32::MAX) {
            Err(SvcError::Call(CallError::Aborted { .. })) => {}
            other => panic!("expected the poison request to fail Aborted, got {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut innocent_failed = 0;
    for h in honest {
        let (c, n, failed, f) = h.join().unwrap();
        innocent_failed += failed;
        // Exactly the successful calls took effect.
        assert_eq!(f.get(c).unwrap(), n, "client {c}");
    }
    assert_eq!(innocent_failed, 0, "innocent requests failed as poison");
    assert_eq!(poison.get(10).unwrap(), 0);
    let ps = conn.ps().unwrap();
    assert_eq!(ps[0].aborted_requests, 6);
    drop((poison, conn));
    sys.shutdown().unwrap();
}
