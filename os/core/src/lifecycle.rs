//! The life of one server as a pure state machine: events in, commands out.
//!
//! The kernel feeds every fact it learns about a server — a crash report, a death seen on a
//! pidfd, a hang its watchdog measured, a standby that is ready, a zygote that died, a timer
//! tick — to [`Lifecycle::handle`], and performs the [`Command`]s it returns, in order. It takes
//! no lifecycle decision of its own. That makes the protocol testable without processes: the
//! proptest below drives random event orders (a fault while recovering, a standby dying during
//! activation, a zygote death mid-restart, a delayed restart followed by another fault, stopped
//! peers that never answer) against the invariants
//!
//! 1. at most one incarnation can touch the server's shared state: a generation is activated,
//!    or its predecessor's state rolled back, only once every earlier activated generation is
//!    confirmed unable to run (dead, or seen stopped);
//! 2. every posted call is eventually settled: whatever happened, once the world answers, the
//!    server ends up serving (a generation activated and serving) or held with its calls failed;
//! 3. held (or dead) means no incarnation: none active, none standby, every one killed.
//!
//! Nothing here waits: a peer that does not answer in time is a fault (activation timeout,
//! spawn timeout), decided on [`Event::Tick`].

use crate::manifest::{Policy, RestartLimits};
use crate::recovery::{RestartDecision, RestartGovernor};

/// A server generation (one per incarnation, never reused).
pub type Gen = u64;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Starting: no generation has served yet.
    Booting,
    /// A generation serves.
    Running,
    /// A generation failed; its successor is not serving yet.
    Recovering,
    /// Held down (restart storm, unusable undo log) until an operator releases it.
    Held,
    /// Down for good (policy `none`) until an operator releases it.
    Dead,
}

impl Phase {
    /// The word `ps` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Booting => "booting",
            Phase::Running => "running",
            Phase::Recovering => "recovering",
            Phase::Held => "held",
            Phase::Dead => "dead",
        }
    }
}

/// Why a server is held or dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// Too many restarts in the manifest's window.
    RestartStorm,
    /// Policy `none`: a fault is final.
    PolicyNone,
    /// The undo log could not be read: the heap cannot be trusted.
    LogUnusable,
    /// The incarnation said it cannot serve correctly ([`Event::Unservable`]).
    ServerRefused,
}

/// What the kernel learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The zygote is initialised and can fork.
    ZygoteReady,
    /// The zygote died (its pidfd). Its incarnations die with it; their deaths follow.
    ZygoteDied,
    /// The zygote could not fork the generation asked for.
    SpawnFailed,
    /// The standby of this generation is forked and has its channels.
    StandbyReady(Gen),
    /// This generation reports that it serves (after [`Command::Activate`]).
    Serving(Gen),
    /// This generation sent a crash report (it stops itself, normally).
    CrashReport(Gen),
    /// This generation's call or waiting request exceeded the deadline, or it does not read
    /// its control socket (full): the active one is a fault, a standby is replaced.
    Hang(Gen),
    /// This generation is dead (its pidfd).
    Died(Gen),
    /// This generation says it cannot serve correctly (e.g. its state cannot be rebuilt): it
    /// is killed and the server held.
    Unservable(Gen),
    /// Answer to [`Command::ConfirmStop`]: seen stopped, it cannot run.
    Stopped(Gen),
    /// Answer to [`Command::ConfirmStop`]: not seen stopped in time (or its state could not be
    /// read): it may still run.
    StopUnconfirmed(Gen),
    /// Answer to [`Command::RollBack`]: whether the undo log could be used.
    RolledBack {
        /// `false`: the heap cannot be trusted.
        log_usable: bool,
    },
    /// Answer to [`Command::RollBack`] instead of [`Event::RolledBack`]: the standby `spare`,
    /// armed to take over from the failing generation, claimed the takeover word before the
    /// kernel (ARCHITECTURE.md §6, "The spare"): it rolls back, settles and serves itself.
    /// `serving`: it already said so ([`Event::Serving`] is implied).
    TakenOver {
        /// The spare's generation.
        spare: Gen,
        /// It already serves.
        serving: bool,
    },
    /// Time passed (the kernel's watchdog tick).
    Tick,
    /// The operator asks for a restart now.
    OperatorRestart,
    /// The operator releases a held or dead server.
    Release,
}

/// What the kernel must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start a zygote (answer: [`Event::ZygoteReady`] or [`Event::ZygoteDied`]).
    StartZygote,
    /// Kill the zygote: it did not answer in time (answer: [`Event::ZygoteDied`]).
    KillZygote,
    /// Ask the zygote for a standby of this generation (answer: [`Event::StandbyReady`] or
    /// [`Event::SpawnFailed`]).
    Spawn(Gen),
    /// Let this standby serve: set the generation on the status page and channels, send it
    /// `Activate` (answer: [`Event::Serving`]).
    Activate(Gen),
    /// Check that this generation is stopped (answer: [`Event::Stopped`] or
    /// [`Event::StopUnconfirmed`]; never wait inline).
    ConfirmStop(Gen),
    /// SIGKILL this generation (its death arrives as [`Event::Died`]).
    Kill(Gen),
    /// Recover the shared state the failed generation left: roll the heap back from the undo
    /// log (answer: [`Event::RolledBack`]).
    RollBack(Gen),
    /// Settle every TAKEN slot (publish, re-post or fail, per `decide_slot`); `held`: the server
    /// will not run again soon.
    SettleSlots {
        /// Passed to `decide_slot`.
        held: bool,
    },
    /// Hold the server down: mark its channels dead and fail every posted call.
    Hold(HoldReason),
}

/// Timing and policy of one server's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// The server's policy.
    pub policy: Policy,
    /// Restart-storm bounds.
    pub limits: RestartLimits,
    /// A spawn (fork) not answered within this is a stuck zygote.
    pub spawn_timeout_ms: u64,
    /// A zygote not ready within this is stuck.
    pub zygote_timeout_ms: u64,
    /// An activated generation not serving within this is hung.
    pub activate_timeout_ms: u64,
}

impl LifecycleConfig {
    /// The timeouts the kernel uses for a server with this deadline.
    pub fn for_server(policy: Policy, limits: RestartLimits, deadline_ms: u64) -> Self {
        LifecycleConfig {
            policy,
            limits,
            // Generous: these catch stopped or stuck peers, and a slow (loaded) machine must not
            // look stuck — a false positive costs a kill and a respawn.
            spawn_timeout_ms: deadline_ms.max(5000),
            zygote_timeout_ms: 30_000,
            activate_timeout_ms: deadline_ms.max(3000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zygote {
    /// Started at this time, not ready yet.
    Starting(u64),
    Ready,
    /// Asked to die (stuck); waiting for its death.
    Killing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for [`Event::Stopped`] / [`Event::StopUnconfirmed`] (or its death).
    Confirming,
    /// Killed; waiting for its death.
    Killing,
    /// Confirmed; waiting for [`Event::RolledBack`].
    RollingBack(RestartDecision),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failing {
    generation: Gen,
    stage: Stage,
    forced: bool,
}

/// The lifecycle of one server.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    cfg: LifecycleConfig,
    governor: RestartGovernor,
    phase: Phase,
    zygote: Zygote,
    next_gen: Gen,
    /// A spawn asked for, and when.
    spawning: Option<(Gen, u64)>,
    standby: Option<Gen>,
    /// The activated generation, and since when it was activated if it does not serve yet.
    active: Option<(Gen, Option<u64>)>,
    failing: Option<Failing>,
    /// Confirmed stopped, not yet killed (killed once a successor serves, or when held).
    doomed: Vec<Gen>,
    restart_at: Option<u64>,
    held: Option<HoldReason>,
    /// Hold once the failing generation is recovered, for this reason.
    hold_after: Option<HoldReason>,
}

impl Lifecycle {
    /// A server about to boot; the kernel starts its zygote at once.
    pub fn new(cfg: LifecycleConfig, now_ms: u64) -> (Lifecycle, Vec<Command>) {
        let l = Lifecycle {
            cfg,
            governor: RestartGovernor::new(cfg.policy, cfg.limits),
            phase: Phase::Booting,
            zygote: Zygote::Starting(now_ms),
            next_gen: 1,
            spawning: None,
            standby: None,
            active: None,
            failing: None,
            doomed: Vec::new(),
            restart_at: None,
            held: None,
            hold_after: None,
        };
        (l, vec![Command::StartZygote])
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// Why it is held or dead.
    pub fn hold_reason(&self) -> Option<HoldReason> {
        self.held
    }
    /// The activated generation (serving or about to).
    pub fn active(&self) -> Option<Gen> {
        self.active.map(|(g, _)| g)
    }
    /// The activated generation if it serves.
    pub fn serving(&self) -> Option<Gen> {
        self.active
            .and_then(|(g, since)| since.is_none().then_some(g))
    }
    /// The standby generation.
    pub fn standby(&self) -> Option<Gen> {
        self.standby
    }
    /// The generation that failed and is being recovered.
    pub fn failing(&self) -> Option<Gen> {
        self.failing.map(|f| f.generation)
    }
    /// Whether a delayed restart is pending.
    pub fn restart_pending(&self) -> bool {
        self.restart_at.is_some()
    }

    /// The standby that may be armed to take over from the serving generation if it fails
    /// (ARCHITECTURE.md §6, "The spare"): one serves, one standby is ready, nothing is being
    /// recovered, and a failure now would be restarted at once (a failure later too: see
    /// [`RestartGovernor::would_restart_now`]). The kernel adds the conditions it alone knows.
    pub fn takeover_allowed(&self, now_ms: u64) -> Option<Gen> {
        (self.phase == Phase::Running
            && self.serving().is_some()
            && self.failing.is_none()
            && self.restart_at.is_none()
            && self.hold_after.is_none()
            && self.governor.would_restart_now(now_ms))
        .then_some(self.standby)
        .flatten()
    }

    /// Feeds one event at `now_ms`; returns what the kernel must do, in order. The
    /// operator's events ([`Event::OperatorRestart`], [`Event::Release`]) in a phase that does
    /// not allow them return `Err` with that phase and change nothing.
    pub fn handle(&mut self, ev: Event, now_ms: u64) -> Result<Vec<Command>, Phase> {
        let mut out = Vec::new();
        match ev {
            Event::ZygoteReady => {
                if self.zygote != Zygote::Killing {
                    self.zygote = Zygote::Ready;
                }
                self.proceed(now_ms, &mut out);
            }
            Event::ZygoteDied => {
                self.zygote = Zygote::Starting(now_ms);
                self.spawning = None;
                out.push(Command::StartZygote);
            }
            Event::SpawnFailed => {
                // Retried at the next tick.
                self.spawning = None;
            }
            Event::StandbyReady(g) => {
                if self.spawning.map(|(s, _)| s) != Some(g) || self.standby.is_some() {
                    out.push(Command::Kill(g));
                } else {
                    self.spawning = None;
                    if matches!(self.phase, Phase::Held | Phase::Dead) {
                        out.push(Command::Kill(g));
                    } else {
                        self.standby = Some(g);
                        self.proceed(now_ms, &mut out);
                    }
                }
            }
            Event::Serving(g) => {
                if let Some((a, Some(_))) = self.active
                    && a == g
                {
                    self.active = Some((g, None));
                    self.phase = Phase::Running;
                    for d in std::mem::take(&mut self.doomed) {
                        out.push(Command::Kill(d));
                    }
                    self.proceed(now_ms, &mut out);
                }
            }
            Event::CrashReport(g) => {
                if self.active() == Some(g) {
                    self.fault(g, Stage::Confirming, false, &mut out);
                } else if self.standby == Some(g) {
                    self.standby = None;
                    out.push(Command::Kill(g));
                    self.proceed(now_ms, &mut out);
                }
            }
            Event::Hang(g) => {
                if self.active() == Some(g) {
                    self.fault(g, Stage::Killing, false, &mut out);
                } else if self.standby == Some(g) {
                    // A standby that does not read its socket: replace it.
                    self.standby = None;
                    out.push(Command::Kill(g));
                    self.proceed(now_ms, &mut out);
                }
            }
            Event::Died(g) => {
                if self.active() == Some(g) {
                    self.active = None;
                    self.phase_recovering();
                    self.failing = Some(Failing {
                        generation: g,
                        stage: Stage::Killing,
                        forced: false,
                    });
                    self.confirmed(now_ms, &mut out);
                } else if let Some(f) = self.failing.filter(|f| f.generation == g) {
                    if matches!(f.stage, Stage::Confirming | Stage::Killing) {
                        self.confirmed(now_ms, &mut out);
                    }
                } else if self.standby == Some(g) {
                    self.standby = None;
                    self.proceed(now_ms, &mut out);
                }
                self.doomed.retain(|&d| d != g);
            }
            Event::Unservable(g) => {
                if self.active() == Some(g) {
                    self.hold_after = Some(HoldReason::ServerRefused);
                    self.fault(g, Stage::Killing, false, &mut out);
                } else if self.standby == Some(g) {
                    self.standby = None;
                    out.push(Command::Kill(g));
                    self.proceed(now_ms, &mut out);
                }
            }
            Event::Stopped(g) => {
                if let Some(f) = self.failing.filter(|f| f.generation == g)
                    && f.stage == Stage::Confirming
                {
                    self.doomed.push(g);
                    self.confirmed(now_ms, &mut out);
                }
            }
            Event::StopUnconfirmed(g) => {
                if let Some(f) = self.failing.as_mut().filter(|f| f.generation == g)
                    && f.stage == Stage::Confirming
                {
                    // Fail closed: it may still run, so only its death confirms.
                    f.stage = Stage::Killing;
                    out.push(Command::Kill(g));
                }
            }
            Event::RolledBack { log_usable } => {
                if let Some(Failing {
                    stage: Stage::RollingBack(decision),
                    ..
                }) = self.failing
                {
                    self.failing = None;
                    self.decide(decision, log_usable, now_ms, &mut out);
                }
            }
            Event::TakenOver { spare, serving } => {
                // Only as the answer to `RollBack` (the failing generation is confirmed unable
                // to run) and only by the standby: then the spare is the active generation, as
                // if activated now. The restart decision taken at the confirmation was counted
                // by the governor; the kernel armed the spare only while the governor would
                // restart at once (`takeover_allowed`).
                if let Some(Failing {
                    stage: Stage::RollingBack(_),
                    ..
                }) = self.failing
                    && self.standby == Some(spare)
                    && !matches!(self.phase, Phase::Held | Phase::Dead)
                {
                    self.failing = None;
                    self.standby = None;
                    self.hold_after = None;
                    self.active = Some((spare, Some(now_ms)));
                    // No `SettleSlots`: the spare settled the slots itself, and the kernel
                    // must not touch the ones it serves now.
                    if serving {
                        return self.handle(Event::Serving(spare), now_ms).map(|mut more| {
                            out.append(&mut more);
                            out
                        });
                    }
                }
            }
            Event::Tick => self.tick(now_ms, &mut out),
            Event::OperatorRestart => match self.phase {
                Phase::Held | Phase::Dead => self.release(now_ms, &mut out),
                Phase::Running if self.serving().is_some() => {
                    let g = self.serving().expect("serving");
                    self.fault(g, Stage::Killing, true, &mut out);
                }
                p => return Err(p),
            },
            Event::Release => match self.phase {
                Phase::Held | Phase::Dead => self.release(now_ms, &mut out),
                p => return Err(p),
            },
        }
        Ok(out)
    }

    fn phase_recovering(&mut self) {
        if !matches!(self.phase, Phase::Held | Phase::Dead) {
            self.phase = Phase::Recovering;
        }
    }

    /// The active generation `g` failed: stop using it, confirm it cannot run.
    fn fault(&mut self, g: Gen, stage: Stage, forced: bool, out: &mut Vec<Command>) {
        self.active = None;
        self.phase_recovering();
        self.failing = Some(Failing {
            generation: g,
            stage,
            forced,
        });
        out.push(match stage {
            Stage::Confirming => Command::ConfirmStop(g),
            _ => Command::Kill(g),
        });
    }

    /// The failing generation can no longer run: roll back.
    /// The kernel found, while recovering the failed generation's state (between
    /// [`Command::RollBack`] and its answer), that the server must not serve again: the
    /// decision that follows holds it with [`HoldReason::ServerRefused`] (e.g. a companion
    /// server's poison request whose handler made calls to other servers).
    pub fn hold_at_decision(&mut self) {
        if self.failing.is_some() {
            self.hold_after = Some(HoldReason::ServerRefused);
        }
    }

    fn confirmed(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let Some(f) = self.failing.as_mut() else {
            return;
        };
        let decision = if f.forced {
            RestartDecision::Now
        } else {
            self.governor.on_failure(now_ms)
        };
        f.stage = Stage::RollingBack(decision);
        out.push(Command::RollBack(f.generation));
    }

    fn decide(
        &mut self,
        decision: RestartDecision,
        log_usable: bool,
        now_ms: u64,
        out: &mut Vec<Command>,
    ) {
        let hold = match decision {
            _ if self.hold_after.is_some() => self.hold_after.take(),
            RestartDecision::Never => Some(HoldReason::PolicyNone),
            _ if !log_usable => Some(HoldReason::LogUnusable),
            RestartDecision::HoldDown => Some(HoldReason::RestartStorm),
            _ => None,
        };
        match (hold, decision) {
            (Some(reason), _) => {
                self.phase = if reason == HoldReason::PolicyNone {
                    Phase::Dead
                } else {
                    Phase::Held
                };
                self.held = Some(reason);
                self.restart_at = None;
                // Settle first, then hold (mark the channels DEAD): the settling tells each
                // taken request's client what became of it in its slot (`Interrupted` when the
                // server is gone for good), so a client that sees DEAD never waits for it.
                out.push(Command::SettleSlots { held: true });
                out.push(Command::Hold(reason));
                if let Some(sb) = self.standby.take() {
                    out.push(Command::Kill(sb));
                }
                for d in std::mem::take(&mut self.doomed) {
                    out.push(Command::Kill(d));
                }
            }
            (None, RestartDecision::After(ms)) => {
                out.push(Command::SettleSlots { held: false });
                self.restart_at = Some(now_ms + ms);
                for d in std::mem::take(&mut self.doomed) {
                    out.push(Command::Kill(d));
                }
            }
            (None, _) => {
                out.push(Command::SettleSlots { held: false });
                self.proceed(now_ms, out);
            }
        }
    }

    fn release(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        self.phase = Phase::Recovering;
        self.held = None;
        self.governor = RestartGovernor::new(self.cfg.policy, self.cfg.limits);
        self.proceed(now_ms, out);
    }

    /// Moves towards serving: activate the standby if the server needs a generation and none
    /// could still run, and keep one standby forked.
    fn proceed(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        if matches!(self.phase, Phase::Held | Phase::Dead) {
            return;
        }
        let needs = self.active.is_none() && self.failing.is_none() && self.restart_at.is_none();
        if needs && let Some(g) = self.standby.take() {
            self.active = Some((g, Some(now_ms)));
            out.push(Command::Activate(g));
        }
        if self.standby.is_none() && self.spawning.is_none() && self.zygote == Zygote::Ready {
            // The next standby is forked once the active one serves, so that the fork does not
            // compete with the activation for the CPU; unless no standby would exist otherwise.
            if self.serving().is_some() || self.active.is_none() {
                let g = self.next_gen;
                self.next_gen += 1;
                self.spawning = Some((g, now_ms));
                out.push(Command::Spawn(g));
            }
        }
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        if self.restart_at.is_some_and(|t| now_ms >= t) {
            self.restart_at = None;
        }
        if let Some((g, Some(since))) = self.active
            && now_ms.saturating_sub(since) > self.cfg.activate_timeout_ms
        {
            // Activated but never serving (stopped, or stuck): a hang.
            self.fault(g, Stage::Killing, false, out);
        }
        let stuck_zygote = match (self.zygote, self.spawning) {
            (Zygote::Killing, _) => false,
            (Zygote::Starting(since), _) => {
                now_ms.saturating_sub(since) > self.cfg.zygote_timeout_ms
            }
            (Zygote::Ready, Some((_, since))) => {
                now_ms.saturating_sub(since) > self.cfg.spawn_timeout_ms
            }
            (Zygote::Ready, None) => false,
        };
        if stuck_zygote {
            self.zygote = Zygote::Killing;
            out.push(Command::KillZygote);
        }
        self.proceed(now_ms, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn cfg(policy: Policy, max_restarts: u32, min_interval_ms: u64) -> LifecycleConfig {
        LifecycleConfig {
            policy,
            limits: RestartLimits {
                min_interval_ms,
                max_restarts,
                window_ms: 1000,
            },
            spawn_timeout_ms: 50,
            zygote_timeout_ms: 200,
            activate_timeout_ms: 30,
        }
    }

    /// One process as the simulated world sees it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Proc {
        /// Forked, not activated.
        Standby,
        /// Activated: it can touch the shared state while it runs.
        Activated,
        /// Stopped (cannot run).
        Stopped,
        Dead,
    }

    /// The world: processes, the zygote, and the answers still owed to the machine.
    #[derive(Debug, Default)]
    struct World {
        procs: BTreeMap<Gen, Proc>,
        /// Ever activated (had access to the shared state).
        activated: Vec<Gen>,
        zygote_alive: bool,
        zygote_ready: bool,
        zygote_stopped: bool,
        /// Events owed (answers to commands), delivered when the test chooses.
        owed: Vec<Event>,
        held_posted_failed: bool,
        rolled_back: Vec<Gen>,
        /// Generations whose `StandbyReady` reached the machine: only then can their death
        /// (the kernel watches a pidfd it got with that message).
        announced: Vec<Gen>,
        /// Died before being announced: the death follows the announcement.
        pending_death: Vec<Gen>,
    }

    impl World {
        /// Carries out a command, checking invariant 1.
        fn perform(&mut self, c: Command, stopped_standbys: bool) {
            match c {
                Command::StartZygote => {
                    self.zygote_alive = true;
                    self.zygote_ready = false;
                    self.zygote_stopped = false;
                    self.owed.push(Event::ZygoteReady);
                }
                Command::KillZygote => {
                    self.kill_zygote();
                }
                Command::Spawn(g) => {
                    assert!(!self.procs.contains_key(&g), "generation {g} reused");
                    if self.zygote_alive && !self.zygote_stopped {
                        self.procs.insert(g, Proc::Standby);
                        self.owed.push(Event::StandbyReady(g));
                    }
                }
                Command::Activate(g) => {
                    self.assert_alone(g);
                    if self.procs.get(&g) == Some(&Proc::Dead) {
                        // Died (with its zygote) before the machine heard of it: its death is
                        // on the way.
                        return;
                    }
                    assert_eq!(self.procs.get(&g), Some(&Proc::Standby), "activate {g}");
                    self.procs.insert(g, Proc::Activated);
                    self.activated.push(g);
                    if !stopped_standbys {
                        self.owed.push(Event::Serving(g));
                    }
                }
                Command::ConfirmStop(g) => match self.procs.get(&g) {
                    Some(Proc::Stopped) => self.owed.push(Event::Stopped(g)),
                    _ => self.owed.push(Event::StopUnconfirmed(g)),
                },
                Command::Kill(g) => self.die(g),
                Command::RollBack(g) => {
                    // Invariant 1: the failed generation and every other activated one
                    // cannot run while its state is rolled back.
                    for &a in &self.activated {
                        assert!(
                            matches!(self.procs[&a], Proc::Stopped | Proc::Dead),
                            "rollback of {g} while generation {a} may run: {:?}",
                            self.procs
                        );
                    }
                    self.rolled_back.push(g);
                    self.owed.push(Event::RolledBack { log_usable: true });
                }
                Command::SettleSlots { .. } => {}
                Command::Hold(_) => self.held_posted_failed = true,
            }
        }

        fn assert_alone(&self, g: Gen) {
            for &a in &self.activated {
                assert!(
                    a == g || matches!(self.procs[&a], Proc::Stopped | Proc::Dead),
                    "activating {g} while generation {a} may run: {:?}",
                    self.procs
                );
            }
        }

        fn die(&mut self, g: Gen) {
            if let Some(p) = self.procs.get_mut(&g)
                && *p != Proc::Dead
            {
                *p = Proc::Dead;
                if self.announced.contains(&g) {
                    self.owed.push(Event::Died(g));
                } else {
                    self.pending_death.push(g);
                }
            }
        }

        /// The machine heard of `ev`: deaths that had to wait for it follow.
        fn delivered(&mut self, ev: Event) {
            if let Event::StandbyReady(g) = ev {
                self.announced.push(g);
                if let Some(k) = self.pending_death.iter().position(|&d| d == g) {
                    self.pending_death.swap_remove(k);
                    self.owed.push(Event::Died(g));
                }
            }
        }

        fn kill_zygote(&mut self) {
            if self.zygote_alive {
                self.zygote_alive = false;
                self.owed.push(Event::ZygoteDied);
                // Its incarnations die with it.
                let gens: Vec<Gen> = self.procs.keys().copied().collect();
                for g in gens {
                    self.die(g);
                }
            }
        }
    }

    /// What the hostile world does next.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Deliver the owed answer at this index (mod len).
        Deliver(usize),
        /// Drop the owed answer at this index (a peer that never answers: stopped).
        Lose(usize),
        /// The active generation crashes and stops itself, reporting.
        CrashAndStop,
        /// The active generation reports a crash but keeps running.
        CrashNoStop,
        /// The active generation is SIGKILLed from outside.
        KillActive,
        /// The standby dies.
        KillStandby,
        /// The zygote dies.
        KillZygote,
        /// The zygote is stopped (answers nothing).
        StopZygote,
        /// The watchdog sees a hang of the active generation.
        Hang,
        /// Time passes.
        Tick(u64),
        OperatorRestart,
        Release,
        /// The next rollback finds the undo log unusable.
        BadLog,
        /// The active generation says it cannot serve.
        Unservable,
        /// The next rollback's answer is a takeover by the standby, if one is alive (the
        /// spare claimed the takeover word first), already serving or not.
        TakeOver(bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => any::<usize>().prop_map(Step::Deliver),
            1 => any::<usize>().prop_map(Step::Lose),
            2 => Just(Step::CrashAndStop),
            1 => Just(Step::CrashNoStop),
            2 => Just(Step::KillActive),
            1 => Just(Step::KillStandby),
            1 => Just(Step::KillZygote),
            1 => Just(Step::StopZygote),
            1 => Just(Step::Hang),
            2 => (1u64..80).prop_map(Step::Tick),
            1 => Just(Step::OperatorRestart),
            1 => Just(Step::Release),
            1 => Just(Step::BadLog),
            1 => Just(Step::Unservable),
            2 => any::<bool>().prop_map(Step::TakeOver),
        ]
    }

    fn feed(l: &mut Lifecycle, w: &mut World, ev: Event, now: u64, stopped_standbys: bool) {
        let cmds = l.handle(ev, now).unwrap_or_default();
        w.delivered(ev);
        for c in cmds {
            w.perform(c, stopped_standbys);
        }
        if !matches!(l.phase(), Phase::Held | Phase::Dead) {
            w.held_posted_failed = false;
        }
        check_held(l);
    }

    /// Invariant 3 (the machine's side): held or dead means no incarnation.
    fn check_held(l: &Lifecycle) {
        if matches!(l.phase(), Phase::Held | Phase::Dead) {
            assert_eq!(l.active(), None);
            assert_eq!(l.standby(), None);
            assert_eq!(l.failing(), None);
        }
        // At most one activated generation at a time.
        if let (Some(a), Some(f)) = (l.active(), l.failing()) {
            panic!("active {a} while {f} is failing");
        }
    }

    fn run(policy: Policy, max_restarts: u32, interval: u64, steps: Vec<Step>) {
        let mut now = 0u64;
        let (mut l, cmds) = Lifecycle::new(cfg(policy, max_restarts, interval), now);
        let mut w = World::default();
        for c in cmds {
            w.perform(c, false);
        }
        let mut bad_log = false;
        let mut take_over: Option<bool> = None;
        for s in steps {
            match s {
                Step::Deliver(i) | Step::Lose(i) if !w.owed.is_empty() => {
                    let mut ev = w.owed.remove(i % w.owed.len());
                    if let Step::Lose(_) = s {
                        // Only answers a stopped peer would never give may be lost; deaths
                        // and our own rollback results always arrive.
                        if matches!(
                            ev,
                            Event::Serving(_) | Event::StandbyReady(_) | Event::ZygoteReady
                        ) {
                            continue;
                        }
                    }
                    if let Event::RolledBack { .. } = ev {
                        ev = Event::RolledBack {
                            log_usable: !std::mem::take(&mut bad_log),
                        };
                        // The spare claimed the takeover before the kernel: it may touch the
                        // shared state only once every activated generation cannot run.
                        if let Some(serving) = take_over.take()
                            && let Some(sp) = l.standby()
                            && w.procs.get(&sp) == Some(&Proc::Standby)
                        {
                            w.assert_alone(sp);
                            w.procs.insert(sp, Proc::Activated);
                            w.activated.push(sp);
                            if !serving {
                                w.owed.push(Event::Serving(sp));
                            }
                            ev = Event::TakenOver { spare: sp, serving };
                        }
                    }
                    feed(&mut l, &mut w, ev, now, false);
                }
                Step::Deliver(_) | Step::Lose(_) => {}
                Step::CrashAndStop | Step::CrashNoStop => {
                    if let Some(g) = w
                        .procs
                        .iter()
                        .find(|(_, p)| **p == Proc::Activated)
                        .map(|(g, _)| *g)
                    {
                        if let Step::CrashAndStop = s {
                            w.procs.insert(g, Proc::Stopped);
                        }
                        feed(&mut l, &mut w, Event::CrashReport(g), now, false);
                    }
                }
                Step::KillActive | Step::KillStandby => {
                    let want = if let Step::KillActive = s {
                        Proc::Activated
                    } else {
                        Proc::Standby
                    };
                    if let Some(g) = w.procs.iter().find(|(_, p)| **p == want).map(|(g, _)| *g) {
                        w.die(g);
                    }
                }
                Step::KillZygote => {
                    w.kill_zygote();
                }
                Step::StopZygote => {
                    w.zygote_stopped = true;
                    w.owed
                        .retain(|e| !matches!(e, Event::ZygoteReady | Event::StandbyReady(_)));
                }
                Step::Hang => {
                    if let Some(g) = l.active() {
                        feed(&mut l, &mut w, Event::Hang(g), now, false);
                    }
                }
                Step::Tick(dt) => {
                    now += dt;
                    feed(&mut l, &mut w, Event::Tick, now, false);
                }
                Step::OperatorRestart => feed(&mut l, &mut w, Event::OperatorRestart, now, false),
                Step::Release => feed(&mut l, &mut w, Event::Release, now, false),
                Step::BadLog => bad_log = true,
                Step::TakeOver(serving) => take_over = Some(serving),
                Step::Unservable => {
                    if let Some(g) = l.active() {
                        feed(&mut l, &mut w, Event::Unservable(g), now, false);
                    }
                }
            }
        }
        // Invariant 2: from here the world answers everything (a stopped zygote is eventually
        // killed by the machine's timeout; its replacement answers). Within a bounded number of
        // steps the server serves, or is held with its calls failed.
        for _ in 0..10_000 {
            if let Some(ev) = (!w.owed.is_empty()).then(|| w.owed.remove(0)) {
                let ev = match ev {
                    Event::RolledBack { .. } => Event::RolledBack { log_usable: true },
                    e => e,
                };
                feed(&mut l, &mut w, ev, now, false);
            } else {
                let settled = match l.phase() {
                    Phase::Running => l.serving().is_some(),
                    Phase::Held | Phase::Dead => w.held_posted_failed,
                    _ => false,
                };
                if settled {
                    break;
                }
                now += 10;
                feed(&mut l, &mut w, Event::Tick, now, false);
            }
        }
        match l.phase() {
            Phase::Running => {
                let g = l.serving().expect("running means serving");
                assert_eq!(w.procs[&g], Proc::Activated);
            }
            Phase::Held | Phase::Dead => {
                assert!(
                    w.held_posted_failed,
                    "held without failing the posted calls"
                );
                // Invariant 3 (the world's side): nothing activated can still run.
                w.assert_alone(0);
            }
            p => panic!("never settled: {p:?}, {l:?}, {w:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn random_event_orders_keep_the_invariants(
            policy in prop_oneof![Just(Policy::Txipc), Just(Policy::Restart), Just(Policy::None)],
            max_restarts in 1u32..6,
            interval in prop_oneof![Just(0u64), 1u64..60],
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            run(policy, max_restarts, interval, steps);
        }
    }

    fn drive(l: &mut Lifecycle, w: &mut World, now: u64, stopped_standbys: bool) {
        while !w.owed.is_empty() {
            let ev = w.owed.remove(0);
            feed(l, w, ev, now, stopped_standbys);
        }
    }

    #[test]
    fn boot_then_fault_then_serve_again() {
        let (mut l, cmds) = Lifecycle::new(cfg(Policy::Txipc, 5, 0), 0);
        let mut w = World::default();
        for c in cmds {
            w.perform(c, false);
        }
        drive(&mut l, &mut w, 0, false);
        assert_eq!(l.phase(), Phase::Running);
        assert_eq!(l.serving(), Some(1));
        assert_eq!(l.standby(), Some(2));
        w.procs.insert(1, Proc::Stopped);
        let cmds = l.handle(Event::CrashReport(1), 1).unwrap();
        assert_eq!(cmds, vec![Command::ConfirmStop(1)]);
        let cmds = l.handle(Event::Stopped(1), 1).unwrap();
        assert_eq!(cmds, vec![Command::RollBack(1)]);
        let cmds = l.handle(Event::RolledBack { log_usable: true }, 1).unwrap();
        assert_eq!(
            cmds,
            vec![Command::SettleSlots { held: false }, Command::Activate(2)]
        );
        let cmds = l.handle(Event::Serving(2), 2).unwrap();
        assert_eq!(cmds, vec![Command::Kill(1), Command::Spawn(3)]);
    }

    #[test]
    fn a_takeover_answers_the_rollback_without_settling_and_is_allowed_only_while_serving() {
        let (mut l, cmds) = Lifecycle::new(cfg(Policy::Txipc, 5, 0), 0);
        let mut w = World::default();
        for c in cmds {
            w.perform(c, false);
        }
        drive(&mut l, &mut w, 0, false);
        assert_eq!(
            l.takeover_allowed(0),
            Some(2),
            "serving with a standby ready"
        );
        w.procs.insert(1, Proc::Stopped);
        l.handle(Event::CrashReport(1), 1).unwrap();
        assert_eq!(
            l.takeover_allowed(1),
            None,
            "nothing is armed while recovering"
        );
        // Not an answer to a rollback yet: ignored.
        assert_eq!(
            l.handle(
                Event::TakenOver {
                    spare: 2,
                    serving: true
                },
                1
            )
            .unwrap(),
            vec![]
        );
        assert_eq!(l.active(), None);
        assert_eq!(
            l.handle(Event::Stopped(1), 1).unwrap(),
            vec![Command::RollBack(1)]
        );
        // The spare claimed first and already serves: no SettleSlots (it settled), no
        // Activate; the stopped generation is killed and the next standby forked.
        let cmds = l
            .handle(
                Event::TakenOver {
                    spare: 2,
                    serving: true,
                },
                1,
            )
            .unwrap();
        assert_eq!(cmds, vec![Command::Kill(1), Command::Spawn(3)]);
        assert_eq!(
            (l.phase(), l.serving(), l.standby()),
            (Phase::Running, Some(2), None)
        );
        // A spare that claimed but has not said it serves is activated, not serving: its
        // activation timeout applies.
        feed(&mut l, &mut w, Event::StandbyReady(3), 2, false);
        w.procs.insert(2, Proc::Dead);
        l.handle(Event::Died(2), 3).unwrap();
        let cmds = l
            .handle(
                Event::TakenOver {
                    spare: 3,
                    serving: false,
                },
                3,
            )
            .unwrap();
        assert_eq!(cmds, vec![]);
        assert_eq!((l.active(), l.serving()), (Some(3), None));
        assert_eq!(l.handle(Event::Tick, 100).unwrap()[0], Command::Kill(3));
    }

    #[test]
    fn a_stopped_standby_is_a_hang_at_activation() {
        let (mut l, cmds) = Lifecycle::new(cfg(Policy::Txipc, 5, 0), 0);
        let mut w = World::default();
        for c in cmds {
            w.perform(c, false);
        }
        drive(&mut l, &mut w, 0, false);
        w.procs.insert(1, Proc::Dead);
        // The standby (2) is stopped: it will never say it serves.
        feed(&mut l, &mut w, Event::Died(1), 1, true);
        drive(&mut l, &mut w, 1, true);
        assert_eq!(l.active(), Some(2));
        assert_eq!(l.serving(), None);
        let cmds = l.handle(Event::Tick, 100).unwrap();
        // Killed (a hang); a fresh standby is forked meanwhile, activated once 2 is dead.
        assert_eq!(cmds, vec![Command::Kill(2), Command::Spawn(3)]);
        assert_eq!(l.phase(), Phase::Recovering);
    }

    #[test]
    fn an_unusable_log_holds_and_release_restarts() {
        let (mut l, cmds) = Lifecycle::new(cfg(Policy::Txipc, 5, 0), 0);
        let mut w = World::default();
        for c in cmds {
            w.perform(c, false);
        }
        drive(&mut l, &mut w, 0, false);
        l.handle(Event::Died(1), 1).unwrap();
        let cmds = l
            .handle(Event::RolledBack { log_usable: false }, 1)
            .unwrap();
        assert_eq!(
            cmds,
            vec![
                Command::SettleSlots { held: true },
                Command::Hold(HoldReason::LogUnusable),
                Command::Kill(2)
            ]
        );
        assert_eq!(l.phase(), Phase::Held);
        assert_eq!(l.handle(Event::OperatorRestart, 2).map(|_| ()), Ok(()));
        assert_eq!(l.phase(), Phase::Recovering);
        assert_eq!(l.handle(Event::Release, 2), Err(Phase::Recovering));
    }
}
