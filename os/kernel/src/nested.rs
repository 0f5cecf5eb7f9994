//! Nested transactions: the kernel settles the sub-transactions of dead participants, tells
//! live participants how their root ended when its coordinator died, and answers participants
//! that waited long for a decision (ARCHITECTURE.md §13). The decisions themselves are pure
//! ([`txipc_core::nested`]); this module reads logs, stops and resumes coordinators, and sends
//! messages.

use std::os::fd::AsFd;

use rustix::process::Signal;
use txipc_chan::SlotState;
use txipc_chan::Status;
use txipc_core::lifecycle::{Event, Gen};
use txipc_core::manifest::Policy;
use txipc_core::nested::{Outcome, Settle, resolve, settle_participant};
use txipc_core::proto::{self, ToServer};
use txipc_core::recovery::LogState;
use txipc_heap::{LogSnapshot, RootId, TxState};
use txipc_sys::{fdpass, process};

use crate::channels::Owner;
use crate::event_loop::Kernel;
use crate::server::CONTROL_EVENT;

/// A participant's rollback waiting until the coordinator whose header it must read is
/// confirmed stopped or dead (a state of the kernel, re-checked on the confirm timer; the
/// participant's lifecycle waits in `RollingBack` meanwhile).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AwaitCoordinator {
    /// The participant's failed generation.
    pub(crate) generation: Gen,
    /// The coordinator server.
    pub(crate) coordinator: usize,
    /// The coordinator's generation the kernel sent SIGSTOP (resumed after the settlement).
    pub(crate) stopped: Option<Gen>,
    /// Checks so far.
    pub(crate) tries: u32,
    /// The coordinator could not be confirmed stopped and was faulted: only its death (or a
    /// recorded decision) lets the rollback go on.
    pub(crate) faulted: bool,
}

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

    /// The root of another server that failed participant `i` (confirmed unable to run) is
    /// prepared for and whose outcome the kernel does not know: its coordinator's header must
    /// be read, unchanging, to settle it. `(root, coordinator)`.
    fn undecided_root(&self, i: usize) -> Option<(RootId, usize)> {
        let snap = self.read_log_of(i)?;
        let (TxState::Active(_), Some(root)) = (snap.state, snap.root) else {
            return None;
        };
        let c = root.server as usize;
        if c >= self.servers.len() || c == i || snap.prepared == 0 {
            return None;
        }
        if self.decisions.get(root.server, root.txid).is_some() {
            return None;
        }
        Some((root, c))
    }

    /// Whether no incarnation of server `c` that may write its heap can run: each one but the
    /// standby (which writes nothing before it is activated) is seen stopped, or its pidfd
    /// says it has exited. Anything else — running, uninterruptible, frozen, a zombie leader
    /// whose threads still run, a `/proc` read that failed — is "may still write": fail
    /// closed.
    fn coordinator_quiet(&self, c: usize) -> bool {
        let s = &self.servers[c];
        let standby = s.life.standby();
        s.procs
            .values()
            .filter(|p| Some(p.generation) != standby)
            .all(|p| {
                process::pidfd_exited(&p.pidfd) || matches!(process::state(p.pid), Some('T' | 't'))
            })
    }

    /// Performs the lifecycle's `RollBack(g)` of server `i`: at once if nothing it must read
    /// can change, else stops the coordinator whose header it needs and answers
    /// `RolledBack` from the confirm timer once that coordinator is confirmed stopped or dead
    /// ([`Kernel::check_awaiting`]). The kernel never waits for the coordinator inline.
    pub(crate) fn start_roll_back(&mut self, i: usize, g: Gen) -> Option<Event> {
        if let Some((root, c)) = self.undecided_root(i)
            && !self.coordinator_quiet(c)
        {
            let stopped = self.servers[c].active().map(|a| {
                let _ = process::pidfd_signal(&a.pidfd, Signal::STOP);
                a.generation
            });
            let (name, coord) = (
                self.servers[i].spec.name.clone(),
                self.servers[c].spec.name.clone(),
            );
            self.log(format!(
                "{name}: prepared for undecided root {root:?}: stopping its coordinator {coord} to read its decision"
            ));
            self.servers[i].awaiting = Some(AwaitCoordinator {
                generation: g,
                coordinator: c,
                stopped,
                tries: 0,
                faulted: false,
            });
            self.arm_confirm_timer(crate::lifecycle::CONFIRM_INTERVAL_US);
            return None;
        }
        let log_usable = self.roll_back(i, g, None);
        Some(Event::RolledBack { log_usable })
    }

    /// One re-check of a rollback waiting for its coordinator (confirm timer): the
    /// coordinator is quiet, or the root's outcome became known → roll back now. Not quiet
    /// after `CONFIRM_TRIES` checks → fail closed: fault the coordinator (it is killed, and its
    /// death — or its recovery's decision of the root — lets the rollback go on); until then
    /// the participant stays recovering and the rest of the system is served.
    pub(crate) fn check_awaiting(&mut self, i: usize) -> Option<Event> {
        let a = self.servers[i].awaiting?;
        let ready = self
            .undecided_root(i)
            .is_none_or(|(_, c)| self.coordinator_quiet(c));
        if ready {
            self.servers[i].awaiting = None;
            let log_usable = self.roll_back(i, a.generation, a.stopped);
            return Some(Event::RolledBack { log_usable });
        }
        if a.faulted || a.tries < crate::lifecycle::CONFIRM_TRIES {
            self.servers[i].awaiting = Some(AwaitCoordinator {
                tries: a.tries.saturating_add(1),
                ..a
            });
            return None;
        }
        let c = a.coordinator;
        self.servers[i].awaiting = Some(AwaitCoordinator {
            faulted: true,
            stopped: None,
            ..a
        });
        let (name, coord) = (
            self.servers[i].spec.name.clone(),
            self.servers[c].spec.name.clone(),
        );
        self.log(format!(
            "{name}: its coordinator {coord} cannot be confirmed stopped: faulting it; {name} waits for its death"
        ));
        if let Some(g) = self.servers[c].life.active() {
            self.fault_starts(
                c,
                g,
                format!("it could not be stopped to settle a prepared participant ({name})"),
            );
            self.feed(c, Event::Hang(g));
        }
        None
    }

    /// Before the heap of failed server `i` is recovered: if it died inside a sub-transaction
    /// of another server's root, decide that sub-transaction (commit it, or roll it back and,
    /// when the root is undecided and its caller saw its effects, abort the root by faulting
    /// the coordinator). Called with the incarnation confirmed stopped or dead and the
    /// coordinator's header unable to change ([`Kernel::start_roll_back`]); `stopped` is the
    /// coordinator's generation stopped for this, resumed unless it must fault.
    pub(crate) fn settle_dead_participant(&mut self, i: usize, stopped: Option<Gen>) {
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
        let mut resumed_pid = stopped;
        let coord = if known.is_none() && snap.prepared > 0 {
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
                    self.feed(c, Event::Hang(g));
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
