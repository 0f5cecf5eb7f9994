//! Carrying out the lifecycle: every fact about a server's incarnations goes to its
//! [`txipc_core::lifecycle::Lifecycle`], and the commands that come back are performed here,
//! in order. The kernel takes no lifecycle decision of its own and never waits for a peer: a
//! stop is confirmed by re-checking on a short timer, a death through the pidfd.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::time::Instant;

use rustix::process::Signal;
use txipc_core::lifecycle::{Command, Event, Gen, HoldReason, Phase};
use txipc_core::proto::{self, ToServer, ToZygote};
use txipc_sys::{fdpass, process};

use crate::event_loop::Kernel;
use crate::recovery::fail_posted;

/// Checks of a stop before it counts as unconfirmed (then the incarnation is killed and only
/// its death confirms). With [`CONFIRM_INTERVAL_US`] between checks: about 5 ms.
pub(crate) const CONFIRM_TRIES: u32 = 100;
/// Time between two checks of a stop, microseconds.
pub(crate) const CONFIRM_INTERVAL_US: u64 = 50;
/// Time before the first re-check of a stop that was not seen at once, microseconds: a
/// process that reported a crash stops itself within microseconds of its report, so the
/// first look after it comes sooner than the regular interval.
pub(crate) const FIRST_CONFIRM_INTERVAL_US: u64 = 10;
/// Time between two checks once a stop went unconfirmed and only a death can confirm,
/// microseconds (the death itself comes through the pidfd; this re-check is the fallback).
pub(crate) const SLOW_CONFIRM_INTERVAL_US: u64 = 5_000;

impl Kernel {
    /// Feeds `ev` to server `i`'s lifecycle and performs what it answers, then the answers'
    /// follow-up events, until nothing is left.
    pub(crate) fn feed(&mut self, i: usize, ev: Event) {
        let _ = self.feed_checked(i, ev);
    }

    /// As [`Kernel::feed`]; `Err(phase)` if the lifecycle refused the event in that phase (an
    /// operator's request at the wrong time). Nothing was done then.
    pub(crate) fn feed_checked(&mut self, i: usize, ev: Event) -> Result<(), Phase> {
        let mut queue = VecDeque::new();
        let seen = Instant::now();
        let now = self.now_ms();
        let before = self.servers[i].life.phase();
        let cmds = self.servers[i].life.handle(ev, now)?;
        self.perform_all(i, cmds, &mut queue);
        while let Some(ev) = queue.pop_front() {
            let now = self.now_ms();
            if let Ok(cmds) = self.servers[i].life.handle(ev, now) {
                self.perform_all(i, cmds, &mut queue);
            }
        }
        self.phase_changed(i, before, seen);
        // A spare that took over now serves: its recovery is accounted for; a ready standby
        // is armed as the next spare.
        self.account_takeover(i);
        self.maybe_arm(i);
        Ok(())
    }

    fn perform_all(&mut self, i: usize, cmds: Vec<Command>, queue: &mut VecDeque<Event>) {
        for c in cmds {
            if let Some(ev) = self.perform(i, c) {
                queue.push_back(ev);
            }
        }
    }

    /// Performs one command; returns the event that answers it at once, if any.
    fn perform(&mut self, i: usize, c: Command) -> Option<Event> {
        match c {
            Command::StartZygote => {
                if let Err(e) = self.start_zygote(i) {
                    if self.servers[i].life.phase() == Phase::Booting {
                        self.fatal.get_or_insert(e);
                    } else {
                        eprintln!(
                            "txipc kernel: {}: cannot start a zygote: {e}",
                            self.servers[i].spec.name
                        );
                    }
                }
                None
            }
            Command::KillZygote => {
                if let Some(z) = &self.servers[i].zygote {
                    self.log(format!(
                        "{}: zygote (pid {}) does not answer: killing it",
                        self.servers[i].spec.name,
                        z.child.id()
                    ));
                    let _ = process::pidfd_signal(&z.pidfd, Signal::KILL);
                    None
                } else {
                    Some(Event::ZygoteDied)
                }
            }
            Command::Spawn(g) => self.spawn(i, g),
            Command::Activate(g) => self.activate(i, g),
            Command::ConfirmStop(g) => {
                // A process that reported a crash stops itself within microseconds: look once
                // now, then on the confirm timer, an event of the loop like any other (the
                // kernel never waits for a peer inline).
                self.servers[i].confirming = Some((g, 0));
                self.check_stop(i)
            }
            Command::Kill(g) => {
                if self.opts.verbose {
                    // (An activated generation that never served is killed silently otherwise.)
                    self.log(format!(
                        "{}: killing generation {g}",
                        self.servers[i].spec.name
                    ));
                }
                if let Some(inc) = self.servers[i].procs.get(&g) {
                    // Without a keeper its exit tears its address space down: at the lowest
                    // priority, so that it yields to the servers that run. With one (the
                    // usual case) the exit only closes descriptors and drops a reference, and
                    // a hang's recovery waits for it (its pidfd): at nice 19 it waited for
                    // whatever else ran on its CPU. The keeper tears down at SCHED_IDLE.
                    if inc.keeper.is_none()
                        && let Some(pid) = rustix::process::Pid::from_raw(inc.pid)
                    {
                        let _ = rustix::process::setpriority_process(Some(pid), 19);
                    }
                    let _ = process::pidfd_signal(&inc.pidfd, Signal::KILL);
                    self.unwatch(inc.sock.as_fd());
                }
                None
            }
            // Answered now, or once a coordinator whose header the rollback needs is confirmed
            // unable to write it (`nested::AwaitCoordinator`).
            // The spare may have claimed the recovery, or may within a grace (`spare`).
            Command::RollBack(g) => self.roll_back_or_spare(i, g, true),
            Command::SettleSlots { held } => {
                // A companion server that refused to serve: every waiting request is failed
                // `Unavailable` and skipped by replay, before the usual settling (which then
                // finds nothing), as when this ran first thing in `Hold`.
                let s = &mut self.servers[i];
                if held
                    && s.life.hold_reason() == Some(HoldReason::ServerRefused)
                    && s.companion.is_some()
                {
                    let _ = crate::companion::settle_held(s);
                }
                self.settle_slots(i, held);
                None
            }
            Command::Hold(reason) => {
                let s = &mut self.servers[i];
                let cause = s
                    .last_fault
                    .as_ref()
                    .map_or_else(|| "none recorded".to_string(), |f| f.cause.clone());
                s.held_reason = Some(match reason {
                    HoldReason::RestartStorm => format!(
                        "restart storm: {} restarts within {} ms (last fault: {cause})",
                        s.spec.restart.max_restarts, s.spec.restart.window_ms
                    ),
                    HoldReason::PolicyNone => {
                        format!("policy none: a fault is final (last fault: {cause})")
                    }
                    HoldReason::LogUnusable => format!(
                        "undo log unusable: the heap cannot be trusted (last fault: {cause})"
                    ),
                    HoldReason::ServerRefused => s
                        .hold_message
                        .take()
                        .unwrap_or_else(|| "the server asked to be held".into()),
                });
                s.fault_at = None;
                // Taken slots were settled (`SettleSlots` comes first); the waiting ones are
                // failed, then the channel is marked DEAD. A request posted after this pass is
                // withdrawn by its own client once it sees the flag (`ClientChannel`).
                for c in s.channels.values() {
                    fail_posted(&c.k);
                    c.k.mark_dead();
                }
                None
            }
        }
    }

    /// Asks the zygote for a standby of generation `g`.
    fn spawn(&mut self, i: usize, g: Gen) -> Option<Event> {
        let s = &mut self.servers[i];
        let Some(z) = &s.zygote else {
            return Some(Event::SpawnFailed);
        };
        let Ok((ours, theirs)) = fdpass::seqpacket_pair() else {
            return Some(Event::SpawnFailed);
        };
        if rustix::io::ioctl_fionbio(&ours, true).is_err() {
            return Some(Event::SpawnFailed);
        }
        match fdpass::send(
            &z.sock,
            &proto::encode(&ToZygote::Spawn { generation: g }),
            &[theirs.as_fd()],
        ) {
            Ok(()) => {
                s.spawning = Some((g, ours));
                None
            }
            // A full socket: the zygote does not read; its spawn timeout will kill it.
            Err(_) => Some(Event::SpawnFailed),
        }
    }

    /// Lets standby `g` serve.
    fn activate(&mut self, i: usize, g: Gen) -> Option<Event> {
        let server_nice = self.server_nice;
        let s = &mut self.servers[i];
        s.steps.activated_ns = txipc_sys::time::monotonic_ns();
        let inc = s.procs.get(&g)?;
        if s.companion.is_some()
            && let Some(pid) = rustix::process::Pid::from_raw(inc.pid)
        {
            // A following standby may be in the middle of a replay step at nice 19, where a
            // busy machine gives it ~1.5% of a CPU: it would reach the record boundary at
            // which it sees this activation (and the activation's own replay) only as slowly.
            // It gets its servers' priority back now, not when it has seen the activation.
            // (Without the privilege to raise a priority this fails, harmlessly.)
            let _ = rustix::process::setpriority_process(Some(pid), server_nice);
        }
        s.status.set_generation(g);
        for c in s.channels.values() {
            c.k.set_generation(g);
        }
        let fresh = std::mem::replace(&mut s.fresh_next, false);
        let sent = match &mut s.companion {
            Some(c) => {
                let (start, fds) = c.start_message(g);
                fdpass::send(
                    &inc.sock,
                    &proto::encode(&ToServer::ActivateCompanion(start)),
                    &fds,
                )
            }
            None => fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::Activate {
                    generation: g,
                    fresh,
                }),
                &[],
            ),
        };
        if self.opts.verbose {
            let line = format!("{}: activating generation {g} ({sent:?})", s.spec.name);
            self.log(line);
        }
        // A full socket is a hang; a closed one a death, which its pidfd reports.
        match sent {
            Err(fdpass::FdPassError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Some(Event::Hang(g))
            }
            _ => None,
        }
    }

    /// One check of the stop being confirmed: stopped → `Stopped`; too many checks →
    /// `StopUnconfirmed`; else another check on the confirm timer.
    pub(crate) fn check_stop(&mut self, i: usize) -> Option<Event> {
        let s = &mut self.servers[i];
        let (g, tries) = s.confirming?;
        let Some(inc) = s.procs.get(&g) else {
            // Dead already: its pidfd event confirms.
            s.confirming = None;
            return None;
        };
        match process::state(inc.pid) {
            Some('T') | Some('t') => {
                s.confirming = None;
                Some(Event::Stopped(g))
            }
            // A zombie is dead: its pidfd is readable and will confirm.
            Some('Z') | Some('X') => {
                s.confirming = None;
                None
            }
            // Running, or its state unreadable: fail closed, never count it as gone.
            _ if tries >= CONFIRM_TRIES => {
                s.confirming = None;
                Some(Event::StopUnconfirmed(g))
            }
            _ => {
                s.confirming = Some((g, tries + 1));
                self.arm_confirm_timer(if tries == 0 {
                    FIRST_CONFIRM_INTERVAL_US
                } else {
                    CONFIRM_INTERVAL_US
                });
                None
            }
        }
    }

    /// The confirm timer fired: re-check every stop being confirmed, and every rollback
    /// waiting for its coordinator.
    pub(crate) fn on_confirm_timer(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.confirm_timer, &mut buf);
        for i in 0..self.servers.len() {
            if self.servers[i].confirming.is_some()
                && let Some(ev) = self.check_stop(i)
            {
                self.feed(i, ev);
            }
            if self.servers[i].awaiting.is_some()
                && let Some(ev) = self.check_awaiting(i)
            {
                self.feed(i, ev);
            }
            if self.servers[i].awaiting_spare.is_some()
                && let Some(ev) = self.check_spare(i)
            {
                self.feed(i, ev);
            }
        }
        // Re-arm for what is still waiting (a check above may have armed the fast interval).
        let slow = self
            .servers
            .iter()
            .any(|s| s.awaiting.is_some_and(|a| a.faulted));
        let fast = self
            .servers
            .iter()
            .any(|s| s.confirming.is_some() || s.awaiting.is_some_and(|a| !a.faulted))
            || self.awaiting_any_spare();
        if fast {
            self.arm_confirm_timer(CONFIRM_INTERVAL_US);
        } else if slow {
            self.arm_confirm_timer(SLOW_CONFIRM_INTERVAL_US);
        }
    }

    /// Arms the one-shot confirm timer `us` microseconds from now (replacing its due time:
    /// callers arm the fast interval whenever anything needs it, and [`Self::on_confirm_timer`]
    /// re-checks everything that waits).
    pub(crate) fn arm_confirm_timer(&self, us: u64) {
        let ts = rustix::time::Timespec {
            tv_sec: (us / 1_000_000) as _,
            tv_nsec: ((us % 1_000_000) * 1000) as _,
        };
        let _ = rustix::time::timerfd_settime(
            &self.confirm_timer,
            rustix::time::TimerfdTimerFlags::empty(),
            &rustix::time::Itimerspec {
                it_interval: rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: ts,
            },
        );
    }

    /// Bookkeeping when the phase changed: recovery time (fault seen → the event that made it
    /// serve again was `seen`), logs.
    fn phase_changed(&mut self, i: usize, before: Phase, seen: Instant) {
        let now_ms = self.now_ms();
        let s = &mut self.servers[i];
        let after = s.life.phase();
        if after == before {
            return;
        }
        if after == Phase::Running {
            let g = s.life.serving().unwrap_or(0);
            s.held_reason = None;
            if let Some(t) = s.fault_at.take() {
                // A takeover's steps are the spare's own stamps (`account_takeover`, at the
                // takeover: it serves in the lifecycle only at its `Active`, after its first
                // batch); the kernel's are its own.
                let us = if s.steps.by_spare
                    && let Some(us) = s.last_recovery_us
                {
                    us
                } else {
                    s.steps.serving_ns = txipc_sys::time::monotonic_ns()
                        .saturating_sub(seen.elapsed().as_nanos() as u64);
                    let us = seen.saturating_duration_since(t).as_secs_f64() * 1e6;
                    s.last_recovery_us = Some(us);
                    us
                };
                s.last_steps = Some(s.steps);
                s.last_recovery_at_ms = Some(now_ms);
                let name = s.spec.name.clone();
                self.log(format!(
                    "{name}: generation {g} serving, recovered in {us:.0} µs"
                ));
            }
        } else if matches!(after, Phase::Recovering) && before == Phase::Running {
            if s.fault_at.is_none() {
                s.steps = txipc_core::proto::RecoverySteps {
                    fault_ns: txipc_sys::time::monotonic_ns(),
                    ..Default::default()
                };
                if let Some(c) = &mut s.companion {
                    c.on_fault();
                }
            }
            s.fault_at.get_or_insert_with(Instant::now);
        }
    }
}
