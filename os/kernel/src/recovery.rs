//! Recovery: confirm the failed incarnation cannot run, roll back, settle slots, restart per policy.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use txipc_chan::{KernelChannel, SlotState, Status};
use txipc_core::manifest::Policy;
use txipc_core::proto::FaultInfo;
use txipc_core::recovery::{
    FailReason, LogState, RestartDecision, SlotAction, TakenSlot, decide_slot,
};
use txipc_sys::process;

use crate::event_loop::Kernel;
use crate::server::{Server, SrvState};

impl Kernel {
    /// The active incarnation faulted (crash report, death or hang); `cause` says how, in words.
    /// Confirms it cannot run, recovers shared state, and restarts per policy.
    pub(crate) fn fault(&mut self, i: usize, cause: String) {
        self.fault_with(i, cause, false);
    }

    /// As [`Kernel::fault`]; `forced` (an operator's restart) restarts now whatever the restart
    /// limits say, and under policy `none` restarts empty.
    pub(crate) fn fault_with(&mut self, i: usize, cause: String, forced: bool) {
        let now = Instant::now();
        let Some(old) = self.servers[i].active.take() else {
            return;
        };
        let name = self.servers[i].spec.name.clone();
        if !process::wait_not_running(old.pid, Duration::from_millis(500)) {
            // It did not stop (a crash report from a process that keeps running): kill it and
            // wait for its death before touching anything it could still write.
            let _ = process::pidfd_signal(&old.pidfd, Signal::KILL);
            let _ = rustix::event::poll(
                &mut [rustix::event::PollFd::new(
                    &old.pidfd,
                    rustix::event::PollFlags::IN,
                )],
                Some(&rustix::time::Timespec {
                    tv_sec: 5,
                    tv_nsec: 0,
                }),
            );
        }
        // Nested transactions: a sub-transaction of another server's root is decided first.
        self.settle_dead_participant(i);
        let now_ms = self.now_ms();
        let s = &mut self.servers[i];
        s.fault_at = Some(now);
        s.state = SrvState::Recovering;
        s.last_fault = Some(FaultInfo {
            cause: cause.clone(),
            generation: old.generation,
            at_ms: now_ms,
        });
        let mut decision = if forced {
            RestartDecision::Now
        } else {
            s.governor.on_failure(now_ms)
        };
        if forced && s.spec.policy == Policy::None {
            s.reset_heap();
        }
        let held = matches!(decision, RestartDecision::HoldDown | RestartDecision::Never);
        let rec = recover_shared_state(s, held);
        let mut held_reason = match decision {
            RestartDecision::HoldDown => Some(format!(
                "restart storm: {} restarts within {} ms (last fault: {cause})",
                s.spec.restart.max_restarts, s.spec.restart.window_ms
            )),
            RestartDecision::Never => Some(format!(
                "policy none: a fault is final (last fault: {cause})"
            )),
            _ => None,
        };
        if let Some(e) = &rec.log_error {
            // The heap cannot be trusted: hold the server down rather than serve corrupt state.
            eprintln!("txipc kernel: {name}: undo log unusable ({e}); holding the server down");
            s.log_unusable = true;
            if decision != RestartDecision::Never {
                decision = RestartDecision::HoldDown;
            }
            held_reason = Some(format!(
                "undo log unusable ({e}): the heap cannot be trusted (last fault: {cause})"
            ));
        }
        let undone_objects = match rec.log_state {
            LogState::Active(t) => self.undo_kernel_objects(i, t),
            _ => 0,
        };
        // Nested transactions: this server's own root is decided; its participants are told.
        self.settle_dead_coordinator(i, rec.log_state);
        let summary = format!("{}, {undone_objects} kernel objects undone", rec.summary);
        let old_generation = old.generation;
        self.unwatch(old.sock.as_fd());
        self.servers[i].doomed.push(old);
        let s = &mut self.servers[i];
        match decision {
            RestartDecision::Now => {
                s.restarts += 1;
                // The standby first; the old incarnation is killed once the new one serves.
                self.activate_or_spawn(i);
            }
            RestartDecision::After(ms) => {
                s.restarts += 1;
                s.restart_at = Some(Instant::now() + Duration::from_millis(ms));
                self.kill_doomed(i);
            }
            RestartDecision::HoldDown | RestartDecision::Never => {
                s.state = if decision == RestartDecision::Never {
                    SrvState::Dead
                } else {
                    SrvState::Held
                };
                s.held_reason = held_reason;
                s.fault_at = None;
                for c in s.channels.values() {
                    c.k.mark_dead();
                    fail_posted(&c.k);
                }
                if let Some(sb) = s.standby.take() {
                    self.retire(i, sb);
                }
                self.kill_doomed(i);
            }
        }
        self.log(format!(
            "{name}: generation {old_generation} failed ({cause}); {summary}; decision {decision:?}"
        ));
    }

    /// Kills the failed incarnations of server `i`, at the lowest priority so that their
    /// address-space teardown yields to the servers that run.
    pub(crate) fn kill_doomed(&mut self, i: usize) {
        for inc in std::mem::take(&mut self.servers[i].doomed) {
            if let Some(pid) = rustix::process::Pid::from_raw(inc.pid) {
                let _ = rustix::process::setpriority_process(Some(pid), 19);
            }
            let _ = process::pidfd_signal(&inc.pidfd, Signal::KILL);
            self.servers[i].zombies.insert(inc.generation, inc);
        }
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

/// What [`recover_shared_state`] found and did.
pub(crate) struct Recovered {
    /// One line for the log.
    pub(crate) summary: String,
    /// The undo log's state before the rollback.
    pub(crate) log_state: LogState,
    /// The undo log could not be read: nothing was rolled back, every TAKEN slot was failed.
    pub(crate) log_error: Option<String>,
}

/// Rolls back the heap if needed and settles every TAKEN slot (ARCHITECTURE.md §6).
pub(crate) fn recover_shared_state(s: &mut Server, held: bool) -> Recovered {
    let policy = s.spec.policy;
    let mut log_state = LogState::Idle;
    let mut batch = Vec::new();
    let mut undone = 0u64;
    let mut log_error = None;
    match policy {
        Policy::Txipc => match txipc_heap::recover(s.heap_fd.as_fd(), s.log_fd.as_fd()) {
            Ok(r) => {
                log_state = match r.prior {
                    txipc_heap::TxState::Idle => LogState::Idle,
                    txipc_heap::TxState::Active(t) => LogState::Active(t),
                    txipc_heap::TxState::Committed(t) => LogState::Committed(t),
                    txipc_heap::TxState::Aborted(t) => LogState::Aborted(t),
                };
                batch = r.batch;
                undone = r.undone.records;
            }
            Err(e) => {
                // The log is unreadable: the heap cannot be trusted. The caller holds the
                // server down; every TAKEN slot is failed below (held), none re-run.
                log_error = Some(e.to_string());
            }
        },
        // Restart empty: zero the heap and log (sparse again), the next incarnation formats.
        Policy::Restart => s.reset_heap(),
        Policy::None => {}
        Policy::Companion => return crate::companion::settle(s, held),
    }
    // Crash point "after REPLIED, before the wake": the client sleeps on a slot that is
    // already answered. Wake every sleeper; each re-checks its slot.
    for c in s.channels.values() {
        c.k.wake_waiters();
    }
    let held = held || log_error.is_some();
    let committed = matches!(log_state, LogState::Committed(_));
    let (mut published, mut reposted, mut failed) = (0, 0, 0);
    for (&ci, c) in &s.channels {
        for snap in c.k.slots() {
            if snap.state != SlotState::Taken {
                continue;
            }
            let in_batch = committed
                && batch
                    .iter()
                    .any(|b| b.chan == ci && b.slot as usize == snap.slot && b.seq == snap.seq);
            let action = decide_slot(
                policy,
                s.spec.retry_limit,
                held,
                TakenSlot {
                    in_committed_batch: in_batch,
                    attempt: snap.attempt,
                },
            );
            match action {
                SlotAction::PublishWritten => {
                    if c.k.publish_written(snap.slot, snap.seq) {
                        published += 1;
                    }
                }
                SlotAction::Repost => {
                    if c.k.repost(snap.slot, snap.seq) {
                        reposted += 1;
                        s.retried += 1;
                    }
                }
                SlotAction::Fail(reason) => {
                    let status = match reason {
                        FailReason::Poison { .. } => {
                            s.aborted += 1;
                            Status::Aborted
                        }
                        FailReason::Restarted => Status::Restarted,
                        FailReason::Unavailable => Status::Unavailable,
                    };
                    if c.k.fail(snap.slot, snap.seq, status) {
                        failed += 1;
                    }
                }
            }
        }
    }
    Recovered {
        summary: format!(
            "log {log_state:?}, {undone} records undone, {published} replies published, {reposted} re-posted, {failed} failed"
        ),
        log_state,
        log_error,
    }
}
