//! The spare (ARCHITECTURE.md §6, "The spare"): arming the standby to take over from the
//! serving incarnation, deciding at each rollback whether the spare or the kernel recovers,
//! and the kernel's bookkeeping of a takeover it did not run.
//!
//! The status page's takeover word is the one place the race is decided: the kernel arms
//! (IDLE → ARMED(s)) and disarms (ARMED(s) → IDLE), the spare claims (ARMED(s) → TAKING(s)),
//! each a compare-and-swap, so exactly one of them recovers a fault. The kernel takes the
//! decision at `Command::RollBack` (the failed generation is confirmed unable to run): IDLE →
//! it rolls back; ARMED → it gives the spare [`TAKEOVER_GRACE_US`] to claim (the spare is
//! woken by the same event, on the server's own CPU), then disarms and rolls back itself;
//! TAKING by a live standby → `Event::TakenOver`; TAKING by a spare that is dead, or by the
//! failed generation itself → it rolls back (the rollback is idempotent: whatever the spare
//! did is redone or undone); TAKING by a standby the kernel already killed (it crashed) → it
//! waits for its death first.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use txipc_core::lifecycle::{Event, Gen};
use txipc_core::manifest::Policy;
use txipc_core::proto::{self, TakeoverReport, ToServer};
use txipc_sys::fdpass;
use txipc_sys::status::Takeover;

use crate::channels::Owner;
use crate::event_loop::Kernel;

/// How long the kernel leaves an armed spare to claim a recovery, once the failed
/// generation is confirmed unable to run, before it disarms it and recovers itself.
pub(crate) const TAKEOVER_GRACE_US: u64 = 5_000;

/// A rollback waiting for the spare (its claim within the grace, or its death).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AwaitSpare {
    /// The spare.
    pub(crate) spare: Gen,
    /// The failed generation whose rollback waits.
    pub(crate) failing: Gen,
    /// When the wait began.
    pub(crate) since: Instant,
}

impl Kernel {
    /// Arms the ready standby of server `i` as the spare of its serving incarnation, if the
    /// kernel's own recovery of a fault now would re-post every taken request and restart at
    /// once, and no nested transaction can involve the server.
    pub(crate) fn maybe_arm(&mut self, i: usize) {
        let now = self.now_ms();
        let s = &self.servers[i];
        if s.spec.policy != Policy::Txipc || !s.spec.takeover || s.companion.is_some() {
            return;
        }
        let Some(spare) = s.life.takeover_allowed(now) else {
            return;
        };
        if s.status.takeover() != Takeover::Idle || s.attempts.max() >= s.spec.retry_limit {
            return;
        }
        // Nested transactions need the kernel's coordination (§13): no server that calls
        // another, or that another server calls.
        let called = s
            .channels
            .values()
            .any(|c| matches!(c.owner, Owner::Server { .. }));
        if called || !self.outgoing_of(i).is_empty() {
            return;
        }
        let s = &self.servers[i];
        let Some(old) = s.life.serving() else {
            return;
        };
        let (Some(active), Some(sb)) = (s.procs.get(&old), s.procs.get(&spare)) else {
            return;
        };
        if !s.status.arm_takeover(spare) {
            return;
        }
        let sent = fdpass::send(
            &sb.sock,
            &proto::encode(&ToServer::Arm {
                generation: spare,
                old_generation: old,
                old_pid: active.pid,
                retry_limit: s.spec.retry_limit,
            }),
            &[active.pidfd.as_fd()],
        );
        if sent.is_err() {
            s.status.disarm_takeover(spare);
            return;
        }
        let watch = (spare, old);
        // The spare recovers in the kernel's stead: it runs at the kernel's priority (it
        // sleeps until then) and goes back to its server's before it serves.
        if let Some(pid) = rustix::process::Pid::from_raw(sb.pid)
            && let Ok(nice) = rustix::process::getpriority_process(None)
        {
            let _ = rustix::process::setpriority_process(Some(pid), nice);
        }
        self.servers[i].armed_watch = Some(watch);
    }

    /// Generation `g` of server `i` died: the spare armed to take over from it may be spinning at `SCHED_IDLE` (`txipc_runtime`'s spare),
    /// where on a CPU that other processes keep busy it gets almost no CPU, and the kernel's
    /// grace would pass before it claims. It is put back to `SCHED_OTHER` ([`nudge`]). On an
    /// otherwise idle CPU the spare has claimed long before the kernel gets here, and had left
    /// `SCHED_IDLE` itself: this changes nothing then. (Not at the crash report: `g` is still
    /// dying then, on the spare's CPU, and a spare spinning at the kernel's priority would
    /// take that CPU from its exit.)
    pub(crate) fn nudge_spare(&mut self, i: usize, g: Gen) {
        let s = &self.servers[i];
        if let Takeover::Armed(spare) = s.status.takeover()
            && s.armed_watch == Some((spare, g))
        {
            nudge(s, spare);
        }
    }

    /// Server `i` must not be taken over by its spare any more (a server now calls it):
    /// disarmed unless the spare claimed first.
    pub(crate) fn disarm(&mut self, i: usize) {
        let s = &self.servers[i];
        if let Takeover::Armed(g) = s.status.takeover()
            && s.status.disarm_takeover(g)
        {
            nudge(s, g);
        }
    }

    /// `Command::RollBack(g)`: the kernel or the spare recovers (module docs). The answer
    /// now, or `None` when it waits for the spare (`grace`: an armed spare may still claim).
    pub(crate) fn roll_back_or_spare(&mut self, i: usize, g: Gen, grace: bool) -> Option<Event> {
        self.servers[i].awaiting_spare = None;
        loop {
            let s = &mut self.servers[i];
            match s.status.takeover() {
                Takeover::Idle => return self.start_roll_back(i, g),
                Takeover::Armed(spare) => {
                    // `g` cannot run any more: the spare, which claims or is activated now,
                    // must get its CPU.
                    nudge(s, spare);
                    let ready = s.life.standby() == Some(spare) && s.procs.contains_key(&spare);
                    if ready && grace {
                        s.awaiting_spare = Some(AwaitSpare {
                            spare,
                            failing: g,
                            since: Instant::now(),
                        });
                        self.arm_confirm_timer(crate::lifecycle::CONFIRM_INTERVAL_US);
                        return None;
                    }
                    if s.status.disarm_takeover(spare) {
                        return self.start_roll_back(i, g);
                    }
                }
                Takeover::Taking(spare) => {
                    if spare == g || !s.procs.contains_key(&spare) {
                        // The spare itself failed, or died while taking over: whatever it
                        // did is redone or undone by the kernel's rollback and settling. The
                        // fault it recovered from still counts (poison accounting).
                        s.status.end_takeover(spare);
                        if let Some(r) = s.takeover_report.take() {
                            s.restarts += 1;
                            s.retried += r.reposted;
                            for &key in &r.charged {
                                s.attempts.reposted(key);
                            }
                        }
                        return self.start_roll_back(i, g);
                    }
                    if s.life.standby() == Some(spare) {
                        // It serves once it said `Active`, after its first batch (its report
                        // comes before that batch, so that a fault in it is charged).
                        let serving = s.spare_served.take() == Some(spare);
                        // Counted now, not when its report comes: a committed reply the spare
                        // published while settling may reach its client before the report.
                        s.restarts += 1;
                        return Some(Event::TakenOver { spare, serving });
                    }
                    // Killed already (it crashed as a standby) but not seen dead: its death
                    // lets the rollback go on (`spare_died`).
                    s.awaiting_spare = Some(AwaitSpare {
                        spare,
                        failing: g,
                        since: Instant::now(),
                    });
                    return None;
                }
            }
        }
    }

    /// Confirm timer, or an event of the spare: re-decides a rollback that waits for it.
    pub(crate) fn check_spare(&mut self, i: usize) -> Option<Event> {
        let a = self.servers[i].awaiting_spare?;
        let s = &self.servers[i];
        match s.status.takeover() {
            Takeover::Armed(sp)
                if sp == a.spare
                    && s.procs.contains_key(&sp)
                    && a.since.elapsed() < Duration::from_micros(TAKEOVER_GRACE_US) =>
            {
                None
            }
            Takeover::Taking(sp)
                if sp == a.spare && s.procs.contains_key(&sp) && s.life.standby() != Some(sp) =>
            {
                None
            }
            _ => self.roll_back_or_spare(i, a.failing, false),
        }
    }

    /// Whether a spare of any server claimed a takeover the kernel has not accounted for yet.
    pub(crate) fn any_takeover_pending(&self) -> bool {
        self.servers
            .iter()
            .any(|s| matches!(s.status.takeover(), Takeover::Taking(_)))
    }

    /// Takes in, now, what the processes of every server whose spare claimed a takeover
    /// already said: the failed incarnation's crash report or death, the spare's report. A
    /// spare sends its report before it serves, after it saw the failed incarnation dead or
    /// stopped (whose crash report was sent before it rang the bell), so a client that got
    /// its reply from the spare finds the recovery accounted for in what the kernel answers
    /// next. Each handler tolerates being called with nothing to read (the epoll reports the
    /// same events again later).
    pub(crate) fn catch_up_takeovers(&mut self) {
        use rustix::event::{PollFd, PollFlags, poll};
        for i in 0..self.servers.len() {
            let Takeover::Taking(spare) = self.servers[i].status.takeover() else {
                continue;
            };
            let gens: Vec<Gen> = self.servers[i]
                .procs
                .keys()
                .copied()
                .filter(|&g| g != spare)
                .collect();
            for g in gens.into_iter().chain([spare]) {
                self.on_inc_msg(i, g);
                let dead = self.servers[i].procs.get(&g).is_some_and(|inc| {
                    let mut fds = [PollFd::new(&inc.pidfd, PollFlags::IN)];
                    matches!(poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
                });
                if dead {
                    self.on_inc_died(i, g);
                }
            }
        }
    }

    /// Whether any rollback waits for a spare (the confirm timer keeps its fast interval).
    pub(crate) fn awaiting_any_spare(&self) -> bool {
        self.servers.iter().any(|s| s.awaiting_spare.is_some())
    }

    /// The spare of server `i` said it took over and serves.
    pub(crate) fn on_took_over(&mut self, i: usize, generation: Gen, report: TakeoverReport) {
        if report.generation != generation {
            return;
        }
        let s = &mut self.servers[i];
        s.takeover_report = Some(report);
        if s.awaiting_spare.is_some_and(|a| a.spare == generation)
            && let Some(ev) = self.check_spare(i)
        {
            self.feed(i, ev);
        }
        // Else the kernel has not reached the rollback of the failed generation yet (its
        // `RollBack` finds TAKING and the report), or it has and the report is accounted for
        // now (`account_takeover`, after every lifecycle step). The spare serves in the
        // lifecycle once it says `Active` (`on_spare_active`).
        self.account_takeover(i);
    }

    /// Generation `g` of server `i` said `Active`: a standby the kernel activated, or a spare
    /// that took over and served its first batch. The latter, said before the kernel accepted
    /// the takeover, is remembered for then.
    pub(crate) fn on_spare_active(&mut self, i: usize, g: Gen) {
        let s = &mut self.servers[i];
        if s.life.standby() == Some(g) && s.status.takeover() == Takeover::Taking(g) {
            s.spare_served = Some(g);
        }
        self.feed(i, Event::Serving(g));
    }

    /// A standby of server `i` died: a spare armed is disarmed, a rollback waiting for it
    /// goes on.
    pub(crate) fn spare_died(&mut self, i: usize, generation: Gen) {
        let s = &mut self.servers[i];
        if s.status.takeover() == Takeover::Armed(generation) {
            s.status.disarm_takeover(generation);
        }
        if s.awaiting_spare.is_some_and(|a| a.spare == generation)
            && let Some(ev) = self.check_spare(i)
        {
            self.feed(i, ev);
        }
    }

    /// Once the spare is the active generation in the lifecycle (serving, or about to: it
    /// says `Active` after its first batch): the kernel's bookkeeping of its recovery (what
    /// `settle_slots` counts: also when its first batch faults again, a poison request), its
    /// steps, and the takeover word back to IDLE.
    pub(crate) fn account_takeover(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let active = s.life.active();
        let Some(r) = s.takeover_report.take_if(|r| active == Some(r.generation)) else {
            return;
        };
        s.status.end_takeover(r.generation);
        s.retried += r.reposted;
        for &key in &r.charged {
            s.attempts.reposted(key);
        }
        // The fault was seen first by whichever of the kernel and the spare saw it first: a
        // hang is the kernel's declaration (its kill wakes the spare), a crash or a death
        // usually the spare's wake-up (the kernel's own sight of this fault was stamped by
        // `fault_starts` before the rollback that accepted the takeover).
        let seen = match s.steps.fault_ns {
            0 => r.woke_ns,
            k => k.min(r.woke_ns),
        };
        let steps = txipc_core::proto::RecoverySteps {
            fault_ns: seen,
            activated_ns: r.settled_ns,
            serving_ns: r.serving_ns,
            by_spare: true,
        };
        s.steps = steps;
        s.last_steps = Some(steps);
        s.last_recovery_us = Some(r.serving_ns.saturating_sub(seen) as f64 / 1e3);
        let name = s.spec.name.clone();
        self.log(format!(
            "{name}: generation {} took over from generation {} by itself in {:.0} µs; undo log: {}, {} records undone; {} replies published, {} re-posted",
            r.generation,
            r.old_generation,
            r.serving_ns.saturating_sub(r.woke_ns) as f64 / 1e3,
            r.log,
            r.undone,
            r.published,
            r.reposted
        ));
    }
}

/// Puts standby `spare` of `s` back to `SCHED_OTHER` (its nice is kept): an armed spare
/// spinning at `SCHED_IDLE` that must now run (it claims, or reads the kernel's message: a
/// disarmed spare is activated or told to stop) gets its CPU on a busy machine too. Needs the
/// kernel's privilege (CAP_SYS_NICE or the same user); without it the spare did not spin.
fn nudge(s: &crate::server::Server, spare: Gen) {
    if let Some(sb) = s.procs.get(&spare) {
        let _ =
            txipc_sys::process::set_sched_policy(sb.pid, txipc_sys::process::SchedPolicy::Other);
    }
}
