//! Nested transactions across servers: a request's call tree is one transaction, whatever
//! server of the tree faults at whatever point of the protocol (ARCHITECTURE.md §11).

mod common;

use common::*;
use probe_server::{Fault, FaultyClient};

fn pair(tag: &str, extra: &str) -> txipc_runtime::client::SystemProcess {
    let m = server("f", "faulty", "txipc", extra)
        + &server("g", "faulty", "txipc", extra)
        + &grant("*", "f")
        + &grant("*", "g")
        + &grant("f", "g");
    boot(tag, &m)
}

/// The first test: a request whose nested call increments a counter in another server,
/// with a fault in the caller after the nested call, counts once.
#[test]
fn a_fault_after_a_nested_call_counts_once() {
    let sys = pair("nested-once", "retry_limit = 3");
    let conn = sys.connect().unwrap();
    let f = FaultyClient::new(open(&conn, "f"));
    let g = FaultyClient::new(open(&conn, "g"));
    for (i, kind) in [Fault::Panic, Fault::Segv, Fault::Abort, Fault::Exit]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            f.relay("g".into(), i as u32, 1, kind, 1).unwrap(),
            1,
            "{kind:?}"
        );
        assert_eq!(g.get(i as u32).unwrap(), 1, "{kind:?}: counted once");
    }
    drop((f, g, conn));
    sys.shutdown().unwrap();
}
