//! Operator controls and status: `Shutdown`, `Inject`, `Restart`, `Release`, `Kill` (each needs
//! the manifest's operator grant), and `Ps`/`Status` (anyone connected).

use std::time::Instant;

use rustix::process::Signal;
use txipc_core::failpoint::{FailKind, FailPoint};
use txipc_core::lifecycle::{Event, Phase};
use txipc_core::manifest::Policy;
use txipc_core::manifest::Principal;
use txipc_core::proto::{
    ErrorKind, KernelError as WireError, Released, Request, Response, ServerInfo, SystemStatus,
};
use txipc_sys::process;

use crate::event_loop::Kernel;

fn refuse(kind: ErrorKind, message: String) -> WireError {
    WireError { kind, message }
}

impl Kernel {
    /// Answers a request that is not `Connect`.
    pub(crate) fn control(&mut self, who: &Principal, req: Request) -> Result<Response, WireError> {
        match req {
            Request::Ps => return Ok(Response::Ps(self.ps())),
            Request::Status => {
                return Ok(Response::Status(SystemStatus {
                    system: self.opts.system.clone(),
                    kernel_pid: process::getpid(),
                    uptime_ms: self.now_ms(),
                    servers: self.ps(),
                }));
            }
            Request::Connect { .. } => unreachable!("Connect is answered by clients.rs"),
            _ => {}
        }
        let what = match &req {
            Request::Shutdown => "stop the system",
            Request::Inject { .. } | Request::FailPoint { .. } => "inject faults",
            Request::Restart { .. } => "restart a server",
            Request::Release { .. } => "release a server",
            Request::Kill { .. } => "signal a server",
            _ => "act on the system",
        };
        if !self.manifest.is_operator(who, self.owner_uid) {
            return Err(refuse(
                ErrorKind::NotOperator,
                format!(
                    "permission denied: only an operator may {what}, and the manifest makes {} none (add an [[operator]] entry for it; by default only the user that started the kernel, uid {}, is one)",
                    principal_words(who),
                    self.owner_uid
                ),
            ));
        }
        match req {
            Request::Shutdown => {
                self.log("shutdown requested");
                self.shutting_down = true;
                Ok(Response::Ok)
            }
            Request::Inject {
                server,
                kind,
                point,
            } => {
                let i = self.server_index(&server)?;
                self.servers[i].status.arm(kind as u8, point as u8);
                self.servers[i].armed = Some((kind, point));
                self.log(format!("{server}: fail point armed: {kind:?} at {point:?}"));
                Ok(Response::Ok)
            }
            Request::FailPoint { server, arm } => {
                // Any site, with its argument, or disarm; the answer says what was armed
                // before (nothing: it fired), which is how a campaign learns activation.
                let i = self.server_index(&server)?;
                let prev = self.servers[i]
                    .status
                    .swap_fail_word(arm.map_or(0, |f| f.word()));
                self.servers[i].armed = None;
                if let Some(f) = arm {
                    self.log(format!(
                        "{server}: fail point armed: {:?} at site {} (arg {})",
                        f.kind, f.site, f.arg
                    ));
                }
                Ok(Response::FailPoint(
                    txipc_core::failpoint::FailSpec::from_word(prev),
                ))
            }
            Request::Restart { server } => {
                let i = self.server_index(&server)?;
                match self.servers[i].phase() {
                    Phase::Held | Phase::Dead => {
                        self.release(i)?;
                    }
                    _ => {
                        let g = self.servers[i].life.serving();
                        if self.servers[i].spec.policy == Policy::None {
                            // Nothing to roll back from: restart empty.
                            self.servers[i].empty_on_rollback = true;
                        }
                        if let Err(p) = self.feed_checked(i, Event::OperatorRestart) {
                            self.servers[i].empty_on_rollback = false;
                            return Err(refuse(
                                ErrorKind::WrongState,
                                format!(
                                    "server `{server}` is {}: it restarts by itself; try again once it is running, held or dead",
                                    p.as_str()
                                ),
                            ));
                        }
                        if let Some(g) = g {
                            self.fault_starts(i, g, "restart requested by the operator".into());
                        }
                    }
                }
                Ok(Response::Ok)
            }
            Request::Release { server } => {
                let i = self.server_index(&server)?;
                Ok(Response::Released(self.release(i)?))
            }
            Request::Kill { server, signal } => {
                let i = self.server_index(&server)?;
                let Some(sig) = Signal::from_named_raw(signal) else {
                    return Err(refuse(
                        ErrorKind::BadRequest,
                        format!("signal {signal} is not a named signal (1-31)"),
                    ));
                };
                let s = &self.servers[i];
                let Some(a) = s.active() else {
                    return Err(refuse(
                        ErrorKind::WrongState,
                        format!(
                            "server `{server}` is {} and has no running incarnation to signal",
                            s.phase().as_str()
                        ),
                    ));
                };
                process::pidfd_signal(&a.pidfd, sig).map_err(|e| {
                    refuse(
                        ErrorKind::Internal,
                        format!("signalling pid {}: {e}", a.pid),
                    )
                })?;
                let (generation, pid) = (a.generation, a.pid);
                self.servers[i].signalled = Some((generation, signal));
                self.log(format!(
                    "{server}: signal {signal} sent to pid {pid} at the operator's request"
                ));
                Ok(Response::Ok)
            }
            Request::Ps | Request::Status | Request::Connect { .. } => unreachable!(),
            Request::FuseKeep { .. } | Request::FuseAdopt { .. } | Request::FuseForget { .. } => {
                unreachable!("FUSE requests are answered by clients.rs (they carry fds)")
            }
        }
    }

    fn server_index(&self, name: &str) -> Result<usize, WireError> {
        self.manifest.server(name).map(|(i, _)| i).ok_or_else(|| {
            let known: Vec<&str> = self
                .manifest
                .servers
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            refuse(
                ErrorKind::UnknownService,
                format!(
                    "no server `{name}` in system `{}` (it has: {})",
                    self.opts.system,
                    known.join(", ")
                ),
            )
        })
    }

    /// Takes a held or dead server out of that state and starts it again.
    fn release(&mut self, i: usize) -> Result<Released, WireError> {
        let s = &mut self.servers[i];
        let phase = s.phase();
        if !matches!(phase, Phase::Held | Phase::Dead) {
            return Err(refuse(
                ErrorKind::WrongState,
                format!(
                    "server `{}` is {}, not held or dead: nothing to release",
                    s.spec.name,
                    phase.as_str()
                ),
            ));
        }
        let reason = s
            .held_reason
            .take()
            .unwrap_or_else(|| "no reason recorded".into());
        // Its heap is trusted only if it was recovered under `txipc` from a readable log.
        let fresh = s.spec.policy != Policy::Txipc || s.log_unusable;
        if fresh {
            s.reset_heap();
        }
        s.log_unusable = false;
        s.fault_at = Some(Instant::now());
        s.steps = txipc_core::proto::RecoverySteps {
            fault_ns: txipc_sys::time::monotonic_ns(),
            ..Default::default()
        };
        s.restarts += 1;
        // The channels were marked dead: their clients connect again.
        let dead: Vec<u32> = s.channels.keys().copied().collect();
        for ci in dead {
            self.revoke_channel(i, ci);
        }
        let name = self.servers[i].spec.name.clone();
        self.log(format!(
            "{name}: released from {} ({reason}) at the operator's request; starting{}",
            phase.as_str(),
            if fresh { " empty" } else { "" }
        ));
        self.feed_checked(i, Event::Release).map_err(|p| {
            refuse(
                ErrorKind::WrongState,
                format!("server `{name}` is {}", p.as_str()),
            )
        })?;
        Ok(Released {
            server: name,
            was: phase.as_str().into(),
            reason,
            fresh,
        })
    }

    pub(crate) fn ps(&self) -> Vec<ServerInfo> {
        self.servers
            .iter()
            .map(|s| ServerInfo {
                name: s.spec.name.clone(),
                pid: s.active().map_or(0, |a| a.pid),
                generation: s.life.active().unwrap_or(0),
                policy: s.spec.policy,
                tracking: s.spec.tracking,
                state: s.phase().as_str().into(),
                restarts: s.restarts,
                faults: s.faults,
                aborted_requests: s.aborted,
                retried_requests: s.retried,
                calls: s.status.calls(),
                channels: s.channels.len() as u32,
                last_recovery_us: s.last_recovery_us,
                standby_pid: s.standby().map_or(0, |a| a.pid),
                zygote_pid: s.zygote.as_ref().map_or(0, |z| z.child.id() as i32),
                last_fault: s.last_fault.clone(),
                last_recovery_at_ms: s.last_recovery_at_ms,
                last_recovery_steps: s.last_steps,
                spare_armed: matches!(
                    s.status.takeover(),
                    txipc_sys::status::Takeover::Armed(g) if s.life.standby() == Some(g)
                ),
                held_reason: s.held_reason.clone(),
                companion: s.companion.as_ref().map(|c| c.ps_info()),
                prepared: crate::nested::holds_prepared(s),
                in_call: s.in_call(),
                // The server's own words: each bucket is clamped to the calls it claims.
                latency: txipc_core::latency::Histogram::from_alleged(
                    &s.status.latency(),
                    s.status.calls(),
                ),
            })
            .collect()
    }
}

fn principal_words(who: &Principal) -> String {
    match who {
        Principal::Uid(u) => format!("uid {u}"),
        Principal::Server(s) => format!("server `{s}`"),
    }
}

/// The cause of a fault at an armed fail point, in words: `at fail point after-handle`.
pub(crate) fn fail_point_words(armed: Option<(FailKind, FailPoint)>) -> String {
    match armed {
        Some((_, p)) => format!(
            " at fail point {}",
            match p {
                FailPoint::BeforeHandle => "before-handle",
                FailPoint::AfterHandle => "after-handle",
                FailPoint::AfterCommit => "after-commit",
                FailPoint::AfterPublish => "after-publish",
                FailPoint::Prepared => "prepared",
                FailPoint::OnDecide => "on-decide",
                FailPoint::Checkpoint => "checkpoint",
                FailPoint::CallReplied => "call-replied",
                FailPoint::CallRecorded => "call-recorded",
            }
        ),
        None => String::new(),
    }
}
