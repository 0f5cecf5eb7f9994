//! The kernel's record of one server: its shared objects, incarnations, channels and counters.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use txipc_chan::Doorbell;
use txipc_core::failpoint::{FailKind, FailPoint};
use txipc_core::lifecycle::{Command, Gen, Lifecycle, LifecycleConfig, Phase};
use txipc_core::manifest::ServerSpec;
use txipc_core::proto::{FaultInfo, ServerConfig};
use txipc_core::recovery::LogState;
use txipc_sys::status::StatusPage;

use crate::channels::Chan;
use crate::errors::{KernelError, os};
use crate::incarnations::Inc;
use crate::zygotes::Zygote;

/// Doorbell event bit: control messages wait on the incarnation's socket.
pub(crate) const CONTROL_EVENT: u32 = 1;

/// What a rollback found in the undo log, for settling the TAKEN slots.
#[derive(Debug, Default)]
pub(crate) struct RolledBack {
    /// The log's state before the rollback.
    pub(crate) log_state: LogState,
    /// Committed: the requests whose replies are written (`txipc_heap::Recovery::batch`).
    pub(crate) batch: Vec<txipc_heap::BatchEntry>,
    /// Active: the requests the rolled-back transaction served (`Recovery::running`).
    pub(crate) running: Vec<txipc_heap::BatchEntry>,
}

#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) spec: ServerSpec,
    pub(crate) config: ServerConfig,
    pub(crate) heap_fd: OwnedFd,
    pub(crate) log_fd: OwnedFd,
    pub(crate) doorbell_fd: OwnedFd,
    pub(crate) status_fd: OwnedFd,
    pub(crate) status: StatusPage,
    pub(crate) doorbell: Doorbell,
    pub(crate) zygote: Option<Zygote>,
    /// The lifecycle: every decision about incarnations is its (`txipc_core::lifecycle`).
    pub(crate) life: Lifecycle,
    /// Every incarnation whose pidfd we still watch (active, standby, failing, killed), by
    /// generation. Removed when its pidfd says it is dead.
    pub(crate) procs: BTreeMap<Gen, Inc>,
    /// Pidfds of the address-space keepers of incarnations that are gone: killed at a
    /// watchdog tick once no recovery of this server is under way (`Kernel::kill_keepers`).
    pub(crate) keepers: Vec<OwnedFd>,
    /// Keepers queued before the last tick: the next tick that finds no recovery kills them.
    pub(crate) keepers_due: Vec<OwnedFd>,
    /// The generation being forked, and our end of its control socket.
    pub(crate) spawning: Option<(Gen, OwnedFd)>,
    /// A stop being confirmed: generation and checks so far.
    pub(crate) confirming: Option<(Gen, u32)>,
    /// A rollback of this (participant) server waiting for its coordinator to be confirmed
    /// unable to write the header the rollback must read.
    pub(crate) awaiting: Option<crate::nested::AwaitCoordinator>,
    /// What the last rollback found, for settling the slots.
    pub(crate) rolled_back: Option<RolledBack>,
    /// A rollback waiting for the armed spare to claim it (or for its death).
    pub(crate) awaiting_spare: Option<crate::spare::AwaitSpare>,
    /// The last arming: (spare, the generation it watches). Whose death nudges the spare
    /// (`Kernel::nudge_spare`).
    pub(crate) armed_watch: Option<(u64, u64)>,
    /// What the spare said it did when it took over, until the lifecycle has it serving.
    pub(crate) takeover_report: Option<txipc_core::proto::TakeoverReport>,
    /// A spare that took over said `Active` (its first batch served) before the kernel
    /// accepted its takeover: the lifecycle makes it serving at once when it does.
    pub(crate) spare_served: Option<u64>,
    /// The next rollback empties the heap (an operator's restart under policy `none`).
    pub(crate) empty_on_rollback: bool,
    pub(crate) channels: BTreeMap<u32, Chan>,
    pub(crate) next_chan: u32,
    pub(crate) restarts: u64,
    /// Faults recorded (each `last_fault` set; operator restarts and kills included).
    pub(crate) faults: u64,
    pub(crate) aborted: u64,
    pub(crate) retried: u64,
    pub(crate) fault_at: Option<Instant>,
    /// The steps of the recovery under way, and of the last one completed.
    pub(crate) steps: txipc_core::proto::RecoverySteps,
    pub(crate) last_steps: Option<txipc_core::proto::RecoverySteps>,
    pub(crate) last_recovery_us: Option<f64>,
    /// Watchdog: the busy transaction last seen, and since when.
    pub(crate) watch: Option<(u64, Instant)>,
    /// Watchdog: a POSTED request was seen waiting since then, with the server's progress
    /// (calls, busy) at that time, and whether its doorbell was rung since.
    pub(crate) posted_watch: Option<(Instant, u64, u64, bool)>,
    pub(crate) fresh_next: bool,
    /// The fail point the operator armed last and that has not been seen to fire.
    pub(crate) armed: Option<(FailKind, FailPoint)>,
    /// The last signal the kernel itself sent at an operator's request: (generation, signal).
    /// How a death is told when the zombie's exit status is already gone (its zygote may reap
    /// it at a spawn before the kernel looks).
    pub(crate) signalled: Option<(u64, i32)>,
    /// How the last few children of the zygote ended, as it reported them (`Reaped`).
    pub(crate) exits: std::collections::VecDeque<(i32, Result<i32, i32>)>,
    /// The failed active incarnation whose end was not known when its death was seen (its
    /// zygote reaped it first and has not reported yet): pid, generation, fail-point words.
    pub(crate) exit_pending: Option<(i32, u64, String)>,
    /// The last fault, in words.
    pub(crate) last_fault: Option<FaultInfo>,
    /// When the last recovery completed (ms of kernel uptime).
    pub(crate) last_recovery_at_ms: Option<u64>,
    /// Why the server is held or dead, in words.
    pub(crate) held_reason: Option<String>,
    /// The undo log could not be read at the last recovery: the heap is not trusted.
    pub(crate) log_unusable: bool,
    /// Times the kernel re-posted each in-flight request (decides poison; the slot's own word
    /// is the client's).
    pub(crate) attempts: txipc_core::recovery::AttemptBook,
    /// Why the server itself asked to be held (policy companion), for `ps`.
    pub(crate) hold_message: Option<String>,
    /// Policy companion: the message log and the newest checkpoint.
    pub(crate) companion: Option<crate::companion::CompanionLog>,
}

impl Server {
    /// Whether the running incarnation's handler waits for the reply of a call to another
    /// server, as its busy word says (policies companion and txipc).
    pub(crate) fn in_call(&self) -> bool {
        let busy = self.status.busy();
        match self.spec.policy {
            txipc_core::manifest::Policy::Companion => txipc_core::companion::busy_in_call(busy),
            txipc_core::manifest::Policy::Txipc => txipc_core::nested::tx_in_call(busy),
            _ => false,
        }
    }

    /// The active or standby incarnation of `generation` (not a failing or killed one).
    pub(crate) fn incarnation(&self, generation: u64) -> Option<&Inc> {
        if self.life.active() == Some(generation) || self.life.standby() == Some(generation) {
            self.procs.get(&generation)
        } else {
            None
        }
    }

    /// The activated incarnation (serving, or about to).
    pub(crate) fn active(&self) -> Option<&Inc> {
        self.life.active().and_then(|g| self.procs.get(&g))
    }

    /// The hot standby.
    pub(crate) fn standby(&self) -> Option<&Inc> {
        self.life.standby().and_then(|g| self.procs.get(&g))
    }

    /// The phase, as `ps` shows it.
    pub(crate) fn phase(&self) -> Phase {
        self.life.phase()
    }

    /// Creates the server's shared objects; the returned commands (start the zygote) are the
    /// lifecycle's first.
    pub(crate) fn create(
        i: usize,
        spec: &ServerSpec,
        system: &str,
        now_ms: u64,
    ) -> Result<(Server, Vec<Command>), KernelError> {
        let name = &spec.name;
        let heap_size = spec.heap_mb << 20;
        let heap_fd =
            txipc_heap::create_heap_memfd(&format!("txipc-heap-{name}"), heap_size as usize)
                .map_err(os(format!("{name}: creating the heap")))?;
        let log_fd = txipc_heap::create_log_memfd(
            &format!("txipc-log-{name}"),
            (spec.log_mb << 20) as usize,
        )
        .map_err(os(format!("{name}: creating the undo log")))?;
        let doorbell_fd =
            txipc_chan::create_doorbell().map_err(os(format!("{name}: creating the doorbell")))?;
        let status_fd = StatusPage::create(&format!("txipc-status-{name}"))
            .map_err(os(format!("{name}: creating the status page")))?;
        let status = StatusPage::map(&status_fd).map_err(os("mapping the status page"))?;
        let doorbell = Doorbell::map(doorbell_fd.as_fd()).map_err(os("mapping the doorbell"))?;
        let config = ServerConfig {
            system: system.into(),
            name: name.clone(),
            builtin: spec.builtin.clone().unwrap_or_else(|| spec.name.clone()),
            policy: spec.policy,
            tracking: spec.tracking,
            // One definition of where heaps live: the heap crate's.
            heap_base: txipc_heap::default_base(i) as u64,
            heap_size,
            batch_max: spec.batch_max,
            cpu: spec.cpu,
            index: i as u32,
            deadline_ms: spec.deadline_ms,
            checkpoint_every: spec.checkpoint_every,
            checkpoint_ms: spec.checkpoint_ms,
            log_cap: spec.log_mb << 20,
            follow: spec.standby == txipc_core::manifest::Standby::Follow,
            follow_max_lag: spec.follow_max_lag,
        };
        let companion = match spec.policy {
            txipc_core::manifest::Policy::Companion => Some(
                crate::companion::CompanionLog::create(name, spec.log_mb << 20)?,
            ),
            _ => None,
        };
        let (life, first) = Lifecycle::new(
            LifecycleConfig::for_server(spec.policy, spec.restart, spec.deadline_ms),
            now_ms,
        );
        Ok((
            Server {
                spec: spec.clone(),
                config,
                heap_fd,
                log_fd,
                doorbell_fd,
                status_fd,
                status,
                doorbell,
                zygote: None,
                life,
                procs: BTreeMap::new(),
                keepers: Vec::new(),
                keepers_due: Vec::new(),
                spawning: None,
                confirming: None,
                awaiting: None,
                rolled_back: None,
                empty_on_rollback: false,
                channels: BTreeMap::new(),
                next_chan: 0,
                restarts: 0,
                faults: 0,
                aborted: 0,
                retried: 0,
                fault_at: None,
                steps: Default::default(),
                last_steps: None,
                last_recovery_us: None,
                watch: None,
                posted_watch: None,
                fresh_next: true,
                armed: None,
                signalled: None,
                exits: std::collections::VecDeque::new(),
                exit_pending: None,
                last_fault: None,
                last_recovery_at_ms: None,
                held_reason: None,
                log_unusable: false,
                hold_message: None,
                attempts: Default::default(),
                awaiting_spare: None,
                armed_watch: None,
                takeover_report: None,
                spare_served: None,
                companion,
            },
            first,
        ))
    }

    /// Empties the heap and the undo log (sparse again); the next incarnation formats them.
    pub(crate) fn reset_heap(&mut self) {
        // The memfds are sealed (no shrinking): punch their contents out instead.
        let size = self.config.heap_size;
        let _ = txipc_sys::shm::zero(&self.heap_fd, size);
        let log_size = self.spec.log_mb << 20;
        let _ = txipc_sys::shm::zero(&self.log_fd, log_size);
        if let Some(c) = &mut self.companion {
            c.reset();
        }
        self.fresh_next = true;
    }

    /// The armed fail point if the status page shows it fired (the incarnation clears the word
    /// when it fires); disarms our record either way once it fired.
    pub(crate) fn fired_fail_point(&mut self) -> Option<(FailKind, FailPoint)> {
        if self.armed.is_some() && self.status.armed_word() == 0 {
            self.armed.take()
        } else {
            None
        }
    }
}
