//! Nested transactions: the kernel settles the sub-transactions of dead participants, tells
//! live participants how their root ended when its coordinator died, and answers participants
//! that waited long for a decision (ARCHITECTURE.md §13). The decisions themselves are pure
//! ([`txipc_core::nested`]); this module reads logs, stops and resumes coordinators, and sends
//! messages.

use std::os::fd::AsFd;
use std::time::Duration;

use rustix::process::Signal;
use txipc_chan::SlotState;
use txipc_chan::Status;
use txipc_core::manifest::Policy;
use txipc_core::nested::{Outcome, Settle, resolve, settle_participant};
use txipc_core::proto::{self, ToServer};
use txipc_core::recovery::LogState;
use txipc_heap::{LogSnapshot, RootId, TxState};
use txipc_sys::{fdpass, process};

use crate::channels::Owner;
use crate::event_loop::Kernel;
use crate::server::CONTROL_EVENT;

fn log_state(s: TxState) -> LogState {
    match s {
        TxState::Idle => LogState::Idle,
        TxState::Active(t) => LogState::Active(t),
        TxState::Committed(t) => LogState::Committed(t),
        TxState::Aborted(t) => LogState::Aborted(t),
    }
}

/// Whether server `s` holds a prepared, undecided sub-transaction (for `ps`).
pub(crate) fn holds_prepared(s: &crate::server::Server) -> bool {
    s.spec.policy == Policy::Txipc
        && txipc_heap::read_log(s.log_fd.as_fd()).is_ok_and(|l| {
            matches!(l.state, TxState::Active(_)) && l.root.is_some() && l.prepared > 0
        })
}

impl Kernel {
    fn read_log_of(&self, i: usize) -> Option<LogSnapshot> {
        let s = self.servers.get(i)?;
        if s.spec.policy != Policy::Txipc {
            return None;
        }
        txipc_heap::read_log(s.log_fd.as_fd()).ok()
    }

    /// Before the heap of failed server `i` is recovered: if it died inside a sub-transaction
    /// of another server's root, decide that sub-transaction (commit it, or roll it back and,
    /// when the root is undecided and its caller saw its effects, abort the root by faulting
    /// the coordinator). Called with the incarnation confirmed stopped or dead.
    pub(crate) fn settle_dead_participant(&mut self, i: usize) {
        let Some(snap) = self.read_log_of(i) else {
            return;
        };
        let (TxState::Active(_), Some(root)) = (snap.state, snap.root) else {
            return;
        };
        let c = root.server as usize;
        if c >= self.servers.len() || c == i {
            return;
        }
        let known = self.decisions.get(root.server, root.txid);
        // The coordinator's header must not change while we read it: stop the coordinator
        // (unless it is stopped or dead already), read, and resume it unless it must fault.
        let mut resumed_pid = None;
        let coord = if known.is_none() && snap.prepared > 0 {
            if let Some(a) = self.servers[c].active() {
                let was_stopped =
                    matches!(process::state(a.pid), Some('T' | 't' | 'Z' | 'X') | None);
                if !was_stopped {
                    let _ = process::pidfd_signal(&a.pidfd, Signal::STOP);
                    if process::wait_not_running(a.pid, Duration::from_millis(500)) {
                        resumed_pid = Some(a.generation);
                    } else {
                        // It will not stop: treat the root as undecided and fault it.
                        resumed_pid = None;
                    }
                }
            }
            self.read_log_of(c)
                .map_or(LogState::Idle, |l| log_state(l.state))
        } else {
            LogState::Idle
        };
        let settle = settle_participant(snap.prepared, root.txid, known, coord);
        let name = self.servers[i].spec.name.clone();
        match settle {
            Settle::Commit => {
                let _ = txipc_heap::commit_prepared(self.servers[i].log_fd.as_fd());
                self.decide_root(root, Outcome::Commit, Some(i));
                self.log(format!(
                    "{name}: prepared sub-transaction of root {root:?} committed (the root committed)"
                ));
            }
            Settle::Abort => {
                if snap.prepared > 0 {
                    self.decide_root(root, Outcome::Abort, Some(i));
                }
            }
            Settle::AbortRoot => {
                self.log(format!(
                    "{name}: died prepared for undecided root {root:?}: the root aborts"
                ));
                resumed_pid = None;
                if let Some(g) = self.servers[c].life.active() {
                    self.fault_starts(c, g, "a participant of its transaction failed".into());
                    self.feed(c, txipc_core::lifecycle::Event::Hang(g));
                }
                // The coordinator's recovery decided Abort and told the others.
                self.decide_root(root, Outcome::Abort, Some(i));
            }
        }
        if let Some(generation) = resumed_pid {
            if let Some(a) = self.servers[c]
                .active()
                .filter(|a| a.generation == generation)
            {
                let _ = process::pidfd_signal(&a.pidfd, Signal::CONT);
            }
        }
    }

    /// After the heap of failed server `i` was recovered with its log in `state`: its own
    /// root (if any participant took part) is decided — committed if the header says
    /// COMMITTED, rolled back if it said ACTIVE — and every participant is told. Calls the
    /// dead coordinator left POSTED in its own outgoing channels are withdrawn.
    pub(crate) fn settle_dead_coordinator(&mut self, i: usize, state: LogState) {
        let index = i as u32;
        let (txid, outcome) = match state {
            LogState::Committed(t) => (t, Outcome::Commit),
            LogState::Active(t) => (t, Outcome::Abort),
            _ => (0, Outcome::Abort),
        };
        if txid != 0 {
            // A participant's sub-transaction is not a root: only record roots that this
            // server coordinated (its header had no root). Recording a participant's own txid
            // as a root is harmless (no one carries it) but noise: skip it.
            self.decide_root(
                RootId {
                    server: index,
                    txid,
                },
                outcome,
                None,
            );
        }
        // Calls this server made and nobody took yet: withdrawn (the caller is gone; its
        // successor adopts the slots once they are answered).
        for t in &self.servers {
            for c in t.channels.values() {
                if matches!(c.owner, Owner::Server { server, .. } if server == i) {
                    for snap in c.k.slots() {
                        if snap.state == SlotState::Posted {
                            c.k.fail(snap.slot, snap.seq, Status::Aborted);
                        }
                    }
                }
            }
        }
    }

    /// Records how `root` ended and tells every live server prepared for it (and, for an
    /// abort, every server that may still be running a call of it). `except`: a server being
    /// recovered right now.
    pub(crate) fn decide_root(&mut self, root: RootId, outcome: Outcome, except: Option<usize>) {
        self.decisions.record(root.server, root.txid, outcome);
        let c = root.server as usize;
        for p in 0..self.servers.len() {
            if Some(p) == except || p == c {
                continue;
            }
            let prepared = self
                .read_log_of(p)
                .is_some_and(|l| matches!(l.state, TxState::Active(_)) && l.root == Some(root));
            let runs_a_call = outcome == Outcome::Abort
                && self.servers[p].channels.values().any(|ch| {
                    matches!(ch.owner, Owner::Server { server, .. } if server == c)
                        && ch.k.slots().any(|s| s.state == SlotState::Taken)
                });
            if prepared || runs_a_call {
                self.send_decided(p, root, outcome);
            }
        }
    }

    fn send_decided(&self, p: usize, root: RootId, outcome: Outcome) {
        let s = &self.servers[p];
        if let Some(a) = s.active() {
            let msg = ToServer::Decided {
                server: root.server,
                txid: root.txid,
                commit: outcome == Outcome::Commit,
            };
            let _ = fdpass::send(&a.sock, &proto::encode(&msg), &[]);
            s.doorbell.notify(CONTROL_EVENT);
        }
    }

    /// A live participant `p` asks how `root` ended: answered once it is known.
    pub(crate) fn resolve_root(&mut self, p: usize, root: RootId) {
        let c = root.server as usize;
        if c >= self.servers.len() {
            self.send_decided(p, root, Outcome::Abort);
            return;
        }
        let known = self.decisions.get(root.server, root.txid);
        let coord = self
            .read_log_of(c)
            .map_or(LogState::Idle, |l| log_state(l.state));
        match resolve(root.txid, known, coord) {
            Some(outcome) => self.send_decided(p, root, outcome),
            None => {
                if let Some(a) = self.servers[p].active() {
                    let msg = ToServer::Undecided {
                        server: root.server,
                        txid: root.txid,
                    };
                    let _ = fdpass::send(&a.sock, &proto::encode(&msg), &[]);
                    self.servers[p].doorbell.notify(CONTROL_EVENT);
                }
            }
        }
    }
}
