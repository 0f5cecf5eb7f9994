//! Recovery: confirm the failed incarnation cannot run, roll back, settle slots, restart per policy.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use txipc_chan::{KernelChannel, SlotState, Status};
use txipc_core::manifest::Policy;
use txipc_core::recovery::{
    FailReason, LogState, RestartDecision, SlotAction, TakenSlot, decide_slot,
};
use txipc_sys::process;

use crate::event_loop::Kernel;
use crate::server::{Server, SrvState};

impl Kernel {
    /// The active incarnation faulted (crash report, death or hang). Confirms it cannot run,
    /// recovers shared state, and restarts per policy.
    pub(crate) fn fault(&mut self, i: usize, cause: &str) {
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
        let s = &mut self.servers[i];
        s.fault_at = Some(now);
        s.state = SrvState::Recovering;
        let now_ms = self.started.elapsed().as_millis() as u64;
        let decision = s.governor.on_failure(now_ms);
        let held = matches!(decision, RestartDecision::HoldDown | RestartDecision::Never);
        let (summary, log_state) = recover_shared_state(s, held);
        let undone_objects = match log_state {
            LogState::Active(t) => self.undo_kernel_objects(i, t),
            _ => 0,
        };
        let summary = format!("{summary}, {undone_objects} kernel objects undone");
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

/// Rolls back the heap if needed and settles every TAKEN slot (ARCHITECTURE.md §6). Returns a
/// one-line summary for the log.
pub(crate) fn recover_shared_state(s: &mut Server, held: bool) -> (String, LogState) {
    let policy = s.spec.policy;
    let mut log_state = LogState::Idle;
    let mut batch = Vec::new();
    let mut undone = 0u64;
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
                // The log is unreadable: the heap cannot be trusted. Hold the server down
                // rather than serve corrupt state.
                eprintln!(
                    "txipc kernel: {}: undo log unusable ({e}); holding the server down",
                    s.spec.name
                );
                for c in s.channels.values() {
                    c.k.mark_dead();
                }
                return (format!("log unusable: {e}"), LogState::Idle);
            }
        },
        Policy::Restart => {
            // Restart empty: zero the heap and log (sparse again), the next incarnation formats.
            let size = s.config.heap_size;
            let _ = rustix::fs::ftruncate(&s.heap_fd, 0);
            let _ = rustix::fs::ftruncate(&s.heap_fd, size);
            let log_size = s.spec.log_mb << 20;
            let _ = rustix::fs::ftruncate(&s.log_fd, 0);
            let _ = rustix::fs::ftruncate(&s.log_fd, log_size);
            s.fresh_next = true;
        }
        Policy::None => {}
    }
    // Crash point "after REPLIED, before the wake": the client sleeps on a slot that is
    // already answered. Wake every sleeper; each re-checks its slot.
    for c in s.channels.values() {
        c.k.wake_waiters();
    }
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
    (
        format!(
            "log {log_state:?}, {undone} records undone, {published} replies published, {reposted} re-posted, {failed} failed"
        ),
        log_state,
    )
}
