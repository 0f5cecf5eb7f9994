//! The kernel's record of one server: its shared objects, incarnations, channels and counters.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use txipc_chan::Doorbell;
use txipc_core::failpoint::{FailKind, FailPoint};
use txipc_core::manifest::ServerSpec;
use txipc_core::proto::{FaultInfo, ServerConfig};
use txipc_core::recovery::RestartGovernor;
use txipc_sys::status::StatusPage;

use crate::channels::Chan;
use crate::errors::{KernelError, os};
use crate::incarnations::Inc;
use crate::zygotes::Zygote;

/// Doorbell event bit: control messages wait on the incarnation's socket.
pub(crate) const CONTROL_EVENT: u32 = 1;

/// Heaps are mapped at `HEAP_BASE + index * HEAP_STRIDE` in every incarnation.
pub(crate) const HEAP_BASE: u64 = 0x2000_0000_0000;
pub(crate) const HEAP_STRIDE: u64 = 0x100_0000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SrvState {
    Booting,
    Running,
    Recovering,
    Held,
    Dead,
}

impl SrvState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SrvState::Booting => "booting",
            SrvState::Running => "running",
            SrvState::Recovering => "recovering",
            SrvState::Held => "held",
            SrvState::Dead => "dead",
        }
    }
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
    pub(crate) active: Option<Inc>,
    pub(crate) standby: Option<Inc>,
    /// Our end of the socket of the incarnation being forked.
    pub(crate) spawning: Option<OwnedFd>,
    pub(crate) next_gen: u64,
    pub(crate) channels: BTreeMap<u32, Chan>,
    pub(crate) next_chan: u32,
    pub(crate) governor: RestartGovernor,
    pub(crate) state: SrvState,
    pub(crate) restarts: u64,
    pub(crate) aborted: u64,
    pub(crate) retried: u64,
    pub(crate) fault_at: Option<Instant>,
    pub(crate) last_recovery_us: Option<f64>,
    pub(crate) restart_at: Option<Instant>,
    /// Watchdog: the busy transaction last seen, and since when.
    pub(crate) watch: Option<(u64, Instant)>,
    pub(crate) fresh_next: bool,
    /// Incarnations killed after recovery whose pidfds we still watch (to drop them).
    pub(crate) zombies: HashMap<u64, Inc>,
    /// Failed incarnations, stopped (or dead), kept until their successor serves: killing them
    /// earlier would put their address-space teardown on the recovery path.
    pub(crate) doomed: Vec<Inc>,
    /// The fail point the operator armed last and that has not been seen to fire.
    pub(crate) armed: Option<(FailKind, FailPoint)>,
    /// The last fault, in words.
    pub(crate) last_fault: Option<FaultInfo>,
    /// When the last recovery completed (ms of kernel uptime).
    pub(crate) last_recovery_at_ms: Option<u64>,
    /// Why the server is held or dead, in words.
    pub(crate) held_reason: Option<String>,
    /// The undo log could not be read at the last recovery: the heap is not trusted.
    pub(crate) log_unusable: bool,
    /// Policy companion: the message log and the newest checkpoint.
    pub(crate) companion: Option<crate::companion::CompanionLog>,
}

impl Server {
    /// The active or standby incarnation of `generation`.
    pub(crate) fn incarnation(&self, generation: u64) -> Option<&Inc> {
        [&self.active, &self.standby]
            .into_iter()
            .flatten()
            .find(|inc| inc.generation == generation)
    }

    pub(crate) fn create(i: usize, spec: &ServerSpec, system: &str) -> Result<Server, KernelError> {
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
            heap_base: HEAP_BASE + i as u64 * HEAP_STRIDE,
            heap_size,
            batch_max: spec.batch_max,
            cpu: spec.cpu,
            index: i as u32,
            deadline_ms: spec.deadline_ms,
            checkpoint_every: spec.checkpoint_every,
            checkpoint_ms: spec.checkpoint_ms,
            log_cap: spec.log_mb << 20,
        };
        let companion = match spec.policy {
            txipc_core::manifest::Policy::Companion => Some(
                crate::companion::CompanionLog::create(name, spec.log_mb << 20)?,
            ),
            _ => None,
        };
        Ok(Server {
            spec: spec.clone(),
            config,
            heap_fd,
            log_fd,
            doorbell_fd,
            status_fd,
            status,
            doorbell,
            zygote: None,
            active: None,
            standby: None,
            spawning: None,
            next_gen: 1,
            channels: BTreeMap::new(),
            next_chan: 0,
            governor: RestartGovernor::new(spec.policy, spec.restart),
            state: SrvState::Booting,
            restarts: 0,
            aborted: 0,
            retried: 0,
            fault_at: None,
            last_recovery_us: None,
            restart_at: None,
            watch: None,
            fresh_next: true,
            zombies: HashMap::new(),
            doomed: Vec::new(),
            armed: None,
            last_fault: None,
            last_recovery_at_ms: None,
            held_reason: None,
            log_unusable: false,
            companion,
        })
    }

    /// Empties the heap and the undo log (sparse again); the next incarnation formats them.
    pub(crate) fn reset_heap(&mut self) {
        let size = self.config.heap_size;
        let _ = rustix::fs::ftruncate(&self.heap_fd, 0);
        let _ = rustix::fs::ftruncate(&self.heap_fd, size);
        let log_size = self.spec.log_mb << 20;
        let _ = rustix::fs::ftruncate(&self.log_fd, 0);
        let _ = rustix::fs::ftruncate(&self.log_fd, log_size);
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
