//! Nested transactions across servers: the kernel's decisions, as pure functions.
//!
//! A client request's call tree is one transaction (ARCHITECTURE.md §13). The server that took
//! the client's request is the *coordinator*; its transaction is the *root* `(server, txid)`.
//! Every server that handles a nested call of the root runs a *sub-transaction* that carries
//! the root in its undo-log header, publishes its replies before it commits (it is then
//! *prepared*: `prepared > 0`), and commits or rolls back when the root decides. The root's
//! `COMMITTED` log header is the decision record.
//!
//! The kernel settles sub-transactions whose server died, and answers prepared servers that
//! waited too long for a decision. Both use only what the kernel can read: the participant's
//! log header, the coordinator's log header (stable: the coordinator is stopped or dead when it
//! matters), and the decisions it has recorded itself while recovering coordinators.
//!
//! The invariant that makes "the coordinator moved on" mean "aborted": a coordinator never
//! begins another transaction while a participant of a committed root is undecided — its
//! runtime waits for every participant's acknowledgement, and when the coordinator dies after
//! its commit point the kernel records the decision (and tells the participants) before the
//! next incarnation runs.

use serde::{Deserialize, Serialize};

use crate::recovery::LogState;

/// Flag of a txipc server's busy word (its running transaction id): the handler waits for the
/// reply of a nested call. A fault now is not the request's doing (the callee is recovering,
/// slow, or prepared for another root): the kernel re-posts the request without charging it
/// an attempt, and the watchdog does not take the wait for this server's hang.
pub const TX_IN_CALL: u64 = 1 << 62;

/// Whether a txipc server's busy word says it waits in a nested call.
pub fn tx_in_call(word: u64) -> bool {
    word >> 63 == 0 && word & TX_IN_CALL != 0
}

/// How a root ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The root committed: every sub-transaction keeps its updates.
    Commit,
    /// The root rolled back: every sub-transaction is undone.
    Abort,
}

/// What to do with a dead participant's sub-transaction (its log says `ACTIVE(t)` with a root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Keep the updates: the log becomes `COMMITTED(t)`.
    Commit,
    /// Roll the sub-transaction back. When it had published nothing yet, its nested call is
    /// simply re-run (the caller is still waiting for the reply); otherwise the root is known
    /// to be aborted.
    Abort,
    /// The root is undecided and the caller has already seen this participant's effects: the
    /// root must abort. Fault the coordinator (its recovery rolls the root back and retries the
    /// client's request from the top), then roll this sub-transaction back.
    AbortRoot,
}

/// Settles a dead participant's sub-transaction of root `root_txid`.
///
/// - `prepared`: replies the sub-transaction published before dying;
/// - `known`: the decision the kernel recorded for the root, if any;
/// - `coordinator`: the coordinator's log header, read while the coordinator cannot change it
///   (stopped or dead).
pub fn settle_participant(
    prepared: u64,
    root_txid: u64,
    known: Option<Outcome>,
    coordinator: LogState,
) -> Settle {
    match known {
        Some(Outcome::Commit) => return Settle::Commit,
        Some(Outcome::Abort) => return Settle::Abort,
        None => {}
    }
    if prepared == 0 {
        // Nobody saw anything of it: undo it and re-run the call, whatever the root does.
        return Settle::Abort;
    }
    match coordinator {
        LogState::Committed(t) if t == root_txid => Settle::Commit,
        LogState::Active(t) if t == root_txid => Settle::AbortRoot,
        // The coordinator moved on (or rolled the root back): by the invariant above, the
        // root did not commit.
        _ => Settle::Abort,
    }
}

/// Answers a live, prepared participant that asks how root `root_txid` ended. `None`: still
/// undecided (the coordinator is running it, or is about to be recovered); ask again later.
pub fn resolve(root_txid: u64, known: Option<Outcome>, coordinator: LogState) -> Option<Outcome> {
    if known.is_some() {
        return known;
    }
    match coordinator {
        LogState::Committed(t) if t == root_txid => Some(Outcome::Commit),
        LogState::Active(t) if t == root_txid => None,
        _ => Some(Outcome::Abort),
    }
}

/// The decisions the kernel recorded while recovering coordinators, newest last, bounded.
#[derive(Debug, Default)]
pub struct Decisions {
    entries: std::collections::VecDeque<((u32, u64), Outcome)>,
}

/// How many decisions are kept. A decision is needed only while a participant of its root is
/// undecided: a handful at a time; the bound only keeps memory finite.
pub const MAX_DECISIONS: usize = 4096;

impl Decisions {
    /// Records how root `(server, txid)` ended.
    pub fn record(&mut self, server: u32, txid: u64, outcome: Outcome) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == (server, txid)) {
            e.1 = outcome;
            return;
        }
        if self.entries.len() >= MAX_DECISIONS {
            self.entries.pop_front();
        }
        self.entries.push_back(((server, txid), outcome));
    }

    /// How root `(server, txid)` ended, if recorded.
    pub fn get(&self, server: u32, txid: u64) -> Option<Outcome> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.0 == (server, txid))
            .map(|e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_call_flag_is_a_txid_flag() {
        assert!(!tx_in_call(0) && !tx_in_call(41));
        assert!(tx_in_call(41 | TX_IN_CALL));
        // A companion busy word (bit 63) is not a txid.
        assert!(!tx_in_call(1 << 63 | TX_IN_CALL));
    }

    #[test]
    fn a_known_decision_wins() {
        for coord in [LogState::Active(5), LogState::Committed(5), LogState::Idle] {
            assert_eq!(
                settle_participant(1, 5, Some(Outcome::Commit), coord),
                Settle::Commit
            );
            assert_eq!(
                settle_participant(1, 5, Some(Outcome::Abort), coord),
                Settle::Abort
            );
            assert_eq!(
                resolve(5, Some(Outcome::Abort), coord),
                Some(Outcome::Abort)
            );
        }
    }

    #[test]
    fn nothing_published_is_rerun() {
        for coord in [
            LogState::Active(5),
            LogState::Committed(4),
            LogState::Aborted(5),
        ] {
            assert_eq!(settle_participant(0, 5, None, coord), Settle::Abort);
        }
    }

    #[test]
    fn the_coordinators_header_decides() {
        assert_eq!(
            settle_participant(2, 5, None, LogState::Committed(5)),
            Settle::Commit
        );
        assert_eq!(
            settle_participant(2, 5, None, LogState::Active(5)),
            Settle::AbortRoot
        );
        for moved_on in [
            LogState::Active(6),
            LogState::Committed(6),
            LogState::Aborted(5),
            LogState::Idle,
        ] {
            assert_eq!(settle_participant(2, 5, None, moved_on), Settle::Abort);
            assert_eq!(resolve(5, None, moved_on), Some(Outcome::Abort));
        }
        assert_eq!(resolve(5, None, LogState::Active(5)), None);
        assert_eq!(
            resolve(5, None, LogState::Committed(5)),
            Some(Outcome::Commit)
        );
    }

    #[test]
    fn decisions_are_bounded_and_updated() {
        let mut d = Decisions::default();
        d.record(1, 7, Outcome::Abort);
        d.record(1, 7, Outcome::Commit);
        assert_eq!(d.get(1, 7), Some(Outcome::Commit));
        assert_eq!(d.get(2, 7), None);
        for t in 0..(MAX_DECISIONS as u64 + 10) {
            d.record(3, t, Outcome::Abort);
        }
        assert_eq!(d.get(1, 7), None, "the oldest fell out");
        assert_eq!(d.get(3, MAX_DECISIONS as u64 + 9), Some(Outcome::Abort));
    }
}
