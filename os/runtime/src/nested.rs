//! Nested transactions across servers, runtime side (ARCHITECTURE.md §13).
//!
//! A call a server makes from inside a handler ([`crate::Outgoing`]) carries the root of the
//! running transaction: `(coordinator index, root txid)`. The callee runs it as a
//! sub-transaction of that root, publishes its reply *before* committing (prepared), and from
//! then on takes only calls of the same root until the root decides. The coordinator commits
//! (its `COMMITTED` header is the decision), publishes its client's reply, then tells every
//! participant it called (`DECIDE`), which forward the decision down their own calls, commit or
//! roll back, and acknowledge.
//!
//! # Wire format (inside an ordinary channel call; the slot protocol is unchanged)
//!
//! ```text
//! nested call:  method | NESTED_BIT, request = ctx (16 bytes) ++ the method's request
//!               ctx = root_server: u32 LE, 0u32, root_txid: u64 LE
//!               reply (status Ok) = code: u8 ++ the method's reply
//!               code 0 handled (the callee is prepared), 1 conflict (another root holds the
//!               callee), 2 root aborted (the callee knows the root rolled back)
//! decide:       method = DECIDE, request = root_server: u32, commit: u32 (0/1), root_txid: u64
//!               reply = empty (acknowledged: the callee and its own participants applied it)
//! ```
//!
//! Every failure of a nested call dooms the root: the coordinator rolls its transaction back in
//! place, tells its participants to roll back, and runs the request again from the top after a
//! randomised back-off, for as long as [`ROOT_RETRY_BUDGET`] allows (a callee that is recovering
//! or held by another root is waited for, not taken for a poison request); a callee that failed
//! the call as poison fails the root alone with `Aborted` at once.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use txipc_heap::RootId;
use txipc_service::CallError;

use crate::client::Channel;

/// Method bit of a nested call (service methods are numbered from 1 and stay far below it).
pub const NESTED_BIT: u32 = 0x8000_0000;
/// Method number of a decision.
pub const DECIDE: u32 = 0xffff_fffe;
/// Bytes of the root context in front of a nested call's request.
pub const CTX_LEN: usize = 16;
/// Reply code: handled, the callee is prepared.
pub const CODE_OK: u8 = 0;
/// Reply code: the callee is prepared for another root (a cycle or a long wait).
pub const CODE_CONFLICT: u8 = 1;
/// Reply code: the callee knows the root was rolled back.
pub const CODE_ROOT_ABORTED: u8 = 2;
/// How long a root whose nested calls failed (a callee recovering, or prepared for another
/// root) is re-run in place with back-off before it fails: its own handler did not fault, so
/// it is not poison; it waits for its callees within this budget (well inside a client's
/// usual 20 s deadline, and far past a callee's recovery).
pub const ROOT_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    /// The root of the running transaction (`None`: the running transaction is its own root).
    static ROOT: Cell<Option<RootId>> = const { Cell::new(None) };
    /// This server's index (its identity as a coordinator).
    static ME: Cell<u32> = const { Cell::new(0) };
    /// Channels called in the running transaction whose callee is prepared.
    static TOUCHED: RefCell<Vec<Rc<Channel>>> = const { RefCell::new(Vec::new()) };
    /// A nested call of the running transaction failed: the root must roll back.
    static DOOMED: Cell<bool> = const { Cell::new(false) };
    /// A nested call failed as a poison request at its callee: re-running the root is futile.
    static POISONED: Cell<bool> = const { Cell::new(false) };
    /// The handler asked for its request's updates to be rolled back ([`rollback_request`]).
    static ROLLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Rolls back every update of the request being handled — in this server and in every server
/// it called — once the handler returns; the handler's reply is still sent. For a request that
/// finds, half-way through its nested calls, that it must fail (a bank transfer whose credit is
/// refused after the debit was applied). The whole transaction is rolled back, so a server
/// that uses it should run with `batch_max = 1` (with more, the other requests of the batch are
/// re-run alone).
pub fn rollback_request() {
    ROLLBACK.with(|r| r.set(true));
}

pub(crate) fn take_rollback() -> bool {
    ROLLBACK.with(|r| r.replace(false))
}

pub(crate) fn set_me(index: u32) {
    ME.with(|m| m.set(index));
}

/// Starts the bookkeeping of a transaction that belongs to `root` (`None`: its own root).
pub(crate) fn start(root: Option<RootId>) {
    // Written only when it changes: a server's own roots follow one another with `None`
    // here, and rewriting the 24-byte value each call (built on the stack by 8-byte stores,
    // copied by 16-byte loads) was the hottest instruction of a null call's serve loop.
    ROOT.with(|r| {
        if r.get() != root {
            r.set(root);
        }
    });
    DOOMED.with(|d| d.set(false));
    POISONED.with(|d| d.set(false));
    ROLLBACK.with(|r| r.set(false));
    TOUCHED.with(|t| {
        let mut t = t.borrow_mut();
        if !t.is_empty() {
            t.clear();
        }
    });
}

pub(crate) fn doomed() -> bool {
    DOOMED.with(Cell::get)
}

/// Whether a nested call of the doomed root failed as a poison request at its callee (it
/// faulted its server more often than the callee's retry limit allows).
pub(crate) fn poisoned() -> bool {
    POISONED.with(Cell::get)
}

/// The participants of the running transaction, taken out (empty, without allocating or
/// freeing, when it called none: the common case on the hot path).
pub(crate) fn touched() -> Vec<Rc<Channel>> {
    TOUCHED.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut *t)
        }
    })
}

/// The root the running transaction `txid` belongs to.
fn current_root(txid: u64) -> RootId {
    ROOT.with(Cell::get).unwrap_or(RootId {
        server: ME.with(Cell::get),
        txid,
    })
}

pub(crate) fn encode_ctx(root: RootId, out: &mut Vec<u8>) {
    out.extend_from_slice(&root.server.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&root.txid.to_le_bytes());
}

/// Splits a nested call's request into its root and the method's request.
pub(crate) fn decode_ctx(req: &[u8]) -> Option<(RootId, &[u8])> {
    if req.len() < CTX_LEN {
        return None;
    }
    let server = u32::from_le_bytes(req[0..4].try_into().ok()?);
    let txid = u64::from_le_bytes(req[8..16].try_into().ok()?);
    Some((RootId { server, txid }, &req[CTX_LEN..]))
}

pub(crate) fn encode_decide(root: RootId, commit: bool) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&root.server.to_le_bytes());
    b[4..8].copy_from_slice(&u32::from(commit).to_le_bytes());
    b[8..16].copy_from_slice(&root.txid.to_le_bytes());
    b
}

pub(crate) fn decode_decide(req: &[u8]) -> Option<(RootId, bool)> {
    if req.len() != 16 {
        return None;
    }
    let server = u32::from_le_bytes(req[0..4].try_into().ok()?);
    let commit = u32::from_le_bytes(req[4..8].try_into().ok()?);
    let txid = u64::from_le_bytes(req[8..16].try_into().ok()?);
    (commit <= 1).then_some((RootId { server, txid }, commit == 1))
}

fn doom(reason: &str) -> CallError {
    DOOMED.with(|d| d.set(true));
    CallError::Unavailable {
        reason: format!("{reason}; the whole request is rolled back and run again"),
    }
}

/// A call from inside a handler: part of the running transaction (`txid`, 0 outside any).
pub(crate) fn call(
    ch: &Rc<Channel>,
    txid: u64,
    method: u32,
    request: &[u8],
    reply: &mut Vec<u8>,
) -> Result<(), CallError> {
    use txipc_service::Transport;
    if txid == 0 {
        // Not inside a transaction (server start-up): an ordinary call.
        return ch.call(method, request, reply);
    }
    let root = current_root(txid);
    let mut req = Vec::with_capacity(CTX_LEN + request.len());
    encode_ctx(root, &mut req);
    req.extend_from_slice(request);
    // While the reply is awaited the server waits on its callee: a fault now is not charged
    // to the request, and the wait is not this server's hang.
    let status = crate::failpoint::status();
    if let Some(p) = status {
        p.set_busy(txid | txipc_core::nested::TX_IN_CALL);
    }
    let r = ch.call(method | NESTED_BIT, &req, reply);
    if let Some(p) = status {
        p.set_busy(txid);
    }
    if let Err(e) = r {
        // Whatever happened at the callee, this root cannot commit on it.
        let _ = doom("a nested call failed");
        if matches!(e, CallError::Aborted { .. }) {
            POISONED.with(|p| p.set(true));
        }
        return Err(e);
    }
    match reply.first().copied() {
        Some(CODE_OK) => {
            reply.remove(0);
            TOUCHED.with(|t| {
                let mut t = t.borrow_mut();
                if !t.iter().any(|c| Rc::ptr_eq(c, ch)) {
                    t.push(ch.clone());
                }
            });
            Ok(())
        }
        Some(CODE_CONFLICT) => Err(doom(
            "the callee is taken by another transaction (a cycle or a long wait)",
        )),
        Some(CODE_ROOT_ABORTED) => Err(doom("the callee rolled this transaction back")),
        _ => Err(doom("malformed nested reply")),
    }
}

/// Tells every participant in `chans` how `root` ended and waits for their acknowledgements.
/// A participant that died meanwhile is settled by the kernel (its re-run decide is answered by
/// its next incarnation), so errors here change nothing.
pub(crate) fn decide_all(chans: &[Rc<Channel>], root: RootId, commit: bool) {
    use txipc_service::Transport;
    let req = encode_decide(root, commit);
    let mut reply = Vec::new();
    for ch in chans {
        let _ = ch.call(DECIDE, &req, &mut reply);
    }
}

/// The back-off before re-running a root whose nested calls conflicted: randomised,
/// exponential, at most ~10 ms.
pub(crate) fn backoff(attempt: u32, salt: u64) -> std::time::Duration {
    let base = 20u64 << attempt.min(9);
    // A cheap per-server jitter (two roots that conflicted must not retry in lockstep).
    let mut x = salt ^ (u64::from(attempt) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    std::time::Duration::from_micros(base + x % (base + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctx_and_decide_round_trip() {
        let root = RootId {
            server: 3,
            txid: (7 << 40) | 99,
        };
        let mut v = Vec::new();
        encode_ctx(root, &mut v);
        v.extend_from_slice(b"abc");
        assert_eq!(decode_ctx(&v), Some((root, &b"abc"[..])));
        assert_eq!(decode_ctx(&v[..15]), None);
        for commit in [false, true] {
            assert_eq!(
                decode_decide(&encode_decide(root, commit)),
                Some((root, commit))
            );
        }
        let mut bad = encode_decide(root, true);
        bad[4] = 7;
        assert_eq!(decode_decide(&bad), None);
        assert_eq!(decode_decide(&bad[..8]), None);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(0, 1) < backoff(8, 1) * 2);
        for a in 0..40 {
            assert!(backoff(a, a as u64) <= std::time::Duration::from_millis(21));
        }
    }

    /// `start` skips the write of an unchanged root, never a changed one: a participant's
    /// root is seen, and the server's own root after it is its own again.
    #[test]
    fn start_sets_a_changed_root_and_keeps_an_unchanged_one() {
        set_me(4);
        start(None);
        assert_eq!(current_root(9), RootId { server: 4, txid: 9 });
        let r = RootId {
            server: 2,
            txid: 77,
        };
        start(Some(r));
        assert_eq!(current_root(10), r);
        start(Some(r));
        assert_eq!(current_root(11), r);
        let other = RootId {
            server: 2,
            txid: 78,
        };
        start(Some(other));
        assert_eq!(current_root(12), other);
        start(None);
        assert_eq!(
            current_root(13),
            RootId {
                server: 4,
                txid: 13
            }
        );
        start(None);
        assert_eq!(
            current_root(14),
            RootId {
                server: 4,
                txid: 14
            }
        );
    }
}
