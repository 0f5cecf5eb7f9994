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
    let sys = boot(
        "batch-poison",
        &(server(
            "f",
            "faulty",
            "txipc",
            "batch_max = 8\nretry_limit = 2\nslots = 8",
        ) + &grant("*", "f")),
    );
    let conn = sys.connect().unwrap();
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
    let poison = FaultyClient::new(open(&conn, "f"));
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
