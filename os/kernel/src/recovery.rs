//! Recovery: confirm the failed incarnation cannot run, roll back, settle slots, restart per policy.

use std::os::fd::AsFd;

use txipc_chan::{KernelChannel, Settle, SlotState, Status};
use txipc_core::manifest::Policy;
use txipc_core::recovery::{
    FailReason, LogState, SlotAction, TakenSlot, decide_slot, fault_counts,
};

use crate::event_loop::Kernel;
use crate::server::{RolledBack, Server};

impl Kernel {
    /// Rolls back the shared state generation `g` left (it can no longer run: confirmed by
    /// the lifecycle; the coordinator of a root it is prepared for cannot write its header:
    /// confirmed by `start_roll_back`). `stopped`: the coordinator's generation the kernel
    /// stopped for this, resumed unless the root must abort. Returns whether the undo log
    /// was usable.
    pub(crate) fn roll_back(&mut self, i: usize, g: u64, stopped: Option<u64>) -> bool {
        // Nested transactions: a sub-transaction of another server's root is decided first.
        self.settle_dead_participant(i, stopped);
        let s = &mut self.servers[i];
        if std::mem::take(&mut s.empty_on_rollback) {
            s.reset_heap();
        }
        // A spare that failed while taking over left its flag: clients wait as usual again.
        if s.spec.policy == Policy::Txipc {
            for c in s.channels.values() {
                c.k.set_takeover(false);
            }
        }
        let mut log_state = LogState::Idle;
        let mut batch = Vec::new();
        let mut running = Vec::new();
        let mut undone = 0u64;
        let mut usable = true;
        match s.spec.policy {
            Policy::Txipc => match txipc_heap::recover(s.heap_fd.as_fd(), s.log_fd.as_fd()) {
                Ok(r) => {
                    log_state = match r.prior {
                        txipc_heap::TxState::Idle => LogState::Idle,
                        txipc_heap::TxState::Active(t) => LogState::Active(t),
                        txipc_heap::TxState::Committed(t) => LogState::Committed(t),
                        txipc_heap::TxState::Aborted(t) => LogState::Aborted(t),
                    };
                    batch = r.batch;
                    running = r.running;
                    undone = r.undone.records;
                }
                Err(e) => {
                    // The heap cannot be trusted: the lifecycle holds the server down.
                    eprintln!(
                        "txipc kernel: {}: undo log unusable ({e}); holding the server down",
                        s.spec.name
                    );
                    s.log_unusable = true;
                    usable = false;
                }
            },
            // Restart empty: zero the heap and log (sparse again), the next incarnation formats.
            Policy::Restart => s.reset_heap(),
            Policy::None => {}
            // The fault is charged now (the incarnation can no longer run, so its busy word is
            // final); the message log is settled with the slots. A poison request whose handler
            // made calls to other servers holds the server (fail-stop) rather than fail alone.
            Policy::Companion => {
                if let Some(reason) = crate::companion::charge(s) {
                    eprintln!("txipc kernel: server `{}` held: {reason}", s.spec.name);
                    s.hold_message = Some(reason);
                    s.life.hold_at_decision();
                }
            }
        }
        s.rolled_back = Some(RolledBack {
            log_state,
            batch,
            running,
        });
        let name = s.spec.name.clone();
        let cause = s
            .last_fault
            .as_ref()
            .map_or("?", |f| f.cause.as_str())
            .to_string();
        self.log(format!(
            "{name}: generation {g} failed ({cause}); undo log: {log_state}, {undone} records undone"
        ));
        usable
    }

    /// Settles every TAKEN slot (ARCHITECTURE.md §6) and undoes the kernel objects of a
    /// rolled-back transaction. `held`: the server will not run again soon.
    pub(crate) fn settle_slots(&mut self, i: usize, held: bool) {
        let RolledBack {
            log_state,
            batch,
            running,
        } = self.servers[i].rolled_back.take().unwrap_or_default();
        let s = &mut self.servers[i];
        if !held {
            s.restarts += 1;
        }
        if s.spec.policy == Policy::Companion {
            let rec = crate::companion::settle(s, held);
            let name = s.spec.name.clone();
            self.log(format!("{name}: {}", rec.summary));
            return;
        }
        let (published, reposted, failed) = settle(s, held, log_state, &batch, &running);
        let undone_objects = match log_state {
            LogState::Active(t) => self.undo_kernel_objects(i, t),
            _ => 0,
        };
        // Nested transactions: this server's own root is decided; its participants are told.
        self.settle_dead_coordinator(i, log_state);
        let name = self.servers[i].spec.name.clone();
        self.log(format!(
            "{name}: {published} replies published, {reposted} re-posted, {failed} failed, {undone_objects} kernel objects undone{}",
            if held { "; held" } else { "" }
        ));
    }
}

/// Fails every POSTED slot with `Unavailable` (the server will not run again).
pub(crate) fn fail_posted(k: &KernelChannel) {
    for snap in k.slots() {
        if snap.state == SlotState::Posted {
            k.fail(snap.slot, snap.seq, Status::Unavailable);
        }
    }
}

/// What the companion policy's settling found (`companion::settle`).
pub(crate) struct Recovered {
    /// One line for the log.
    pub(crate) summary: String,
    /// The log's state (always idle: the companion has no undo log).
    #[allow(dead_code)]
    pub(crate) log_state: LogState,
    /// Why the message log could not be used, if so.
    #[allow(dead_code)]
    pub(crate) log_error: Option<String>,
}

/// Settles every TAKEN slot of `s` from what the rollback found (`batch`: the committed
/// transaction's requests; `running`: the rolled-back one's); returns (published, re-posted,
/// failed). The per-channel loop is `KernelChannel::settle_taken`, shared with the spare's
/// takeover (`txipc_runtime`'s `spare::recover`); this is the kernel's decision.
fn settle(
    s: &mut Server,
    held: bool,
    log_state: LogState,
    batch: &[txipc_heap::BatchEntry],
    running: &[txipc_heap::BatchEntry],
) -> (u64, u64, u64) {
    let policy = s.spec.policy;
    let committed = matches!(log_state, LogState::Committed(_));
    // The incarnation died waiting for a nested call's reply: the fault is not its requests'
    // (the callee is recovering, slow or prepared for another root), so re-posting them costs
    // no attempt — only faults in their own handlers make a request poison.
    let in_call = policy == Policy::Txipc && txipc_core::nested::tx_in_call(s.status.busy());
    let names = txipc_heap::BatchEntry::names;
    let (mut published, mut reposted, mut failed) = (0, 0, 0);
    for (&ci, c) in &s.channels {
        let done = c.k.settle_taken(|snap| {
            let in_batch = committed && names(batch, ci, snap.slot, snap.seq);
            // Only a request the rolled-back transaction was serving is charged: one taken
            // but waiting in the backlog (while a re-run request ran alone) is not.
            let named = (!running.is_empty()).then(|| names(running, ci, snap.slot, snap.seq));
            let charged = fault_counts(log_state, named, in_call);
            // The slot's attempt word is the client's to write: decide from what the kernel
            // itself did.
            let key = (ci, snap.slot as u32, snap.seq);
            let action = decide_slot(
                policy,
                s.spec.retry_limit,
                held,
                TakenSlot {
                    in_committed_batch: in_batch,
                    attempt: s.attempts.attempts(key),
                    charged,
                },
            );
            let settle = match action {
                SlotAction::PublishWritten => Settle::PublishWritten,
                SlotAction::Repost => Settle::Repost,
                SlotAction::Fail(reason) => Settle::Fail(match reason {
                    FailReason::Poison { .. } => Status::Aborted,
                    // Effect unknown; "restarted" (a new, empty incarnation serves) or
                    // "interrupted" (the server is gone for good: settled before the
                    // channel is marked DEAD, so the client reads it from its slot).
                    FailReason::Restarted => Status::Restarted,
                    FailReason::Interrupted => Status::Interrupted,
                    FailReason::Unavailable => Status::Unavailable,
                }),
            };
            (settle, (key, charged))
        });
        for (_, settle, (key, charged)) in done {
            match settle {
                Settle::PublishWritten => published += 1,
                Settle::Repost => {
                    reposted += 1;
                    s.retried += 1;
                    if charged {
                        s.attempts.reposted(key);
                    }
                }
                Settle::Fail(status) => {
                    failed += 1;
                    if status == Status::Aborted {
                        s.aborted += 1;
                    }
                }
            }
        }
    }
    // Forget requests that are no longer in flight.
    let mut live = std::collections::HashSet::new();
    for (&ci, c) in &s.channels {
        for snap in c.k.slots() {
            if matches!(snap.state, SlotState::Posted | SlotState::Taken) {
                live.insert((ci, snap.slot as u32, snap.seq));
            }
        }
    }
    s.attempts.retain(|k| live.contains(&k));
    (published, reposted, failed)
}
