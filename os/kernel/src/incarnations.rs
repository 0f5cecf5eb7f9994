//! Incarnations: standby hand-over, activation, their messages and deaths.

use std::os::fd::{AsFd, OwnedFd};

use rustix::process::Signal;
use txipc_core::proto::{self, Connected, FromServer, ToServer};
use txipc_sys::crash::{CrashKind, CrashReport};
use txipc_sys::{fdpass, process};

use crate::control::fail_point_words;
use crate::event_loop::{Kernel, T_INC_CTL, T_INC_PID, token};
use crate::server::SrvState;

#[derive(Debug)]
pub(crate) struct Inc {
    pub(crate) generation: u64,
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) sock: OwnedFd,
}

impl Kernel {
    pub(crate) fn on_spawned(&mut self, i: usize, generation: u64, pid: i32, pidfd: OwnedFd) {
        let Some(sock) = self.servers[i].spawning.take() else {
            return;
        };
        let inc = Inc {
            generation,
            pid,
            pidfd,
            sock,
        };
        let _ = self.watch(inc.sock.as_fd(), token(T_INC_CTL, i, generation));
        let _ = self.watch(inc.pidfd.as_fd(), token(T_INC_PID, i, generation));
        // Hand it every open channel.
        let s = &self.servers[i];
        let all: Vec<(u32, std::os::fd::BorrowedFd<'_>)> = s
            .channels
            .iter()
            .map(|(ci, c)| (*ci, c.fd.as_fd()))
            .collect();
        for chunk in all.chunks(fdpass::MAX_FDS) {
            let indices = chunk.iter().map(|(ci, _)| *ci).collect();
            let fds: Vec<_> = chunk.iter().map(|(_, fd)| *fd).collect();
            let _ = fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::AddChannels { indices }),
                &fds,
            );
        }
        for (ti, ci) in self.outgoing_of(i) {
            let t = &self.servers[ti];
            let info = Connected {
                service: t.spec.name.clone(),
                channel: ci,
                generation: t.active.as_ref().map_or(0, |a| a.generation),
                policy: t.spec.policy,
            };
            let _ = fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::Connected(info)),
                &[t.channels[&ci].fd.as_fd()],
            );
        }
        let s = &mut self.servers[i];
        s.standby = Some(inc);
        let wants = match s.state {
            SrvState::Booting => s.active.is_none(),
            SrvState::Recovering => s.active.is_none() && s.restart_at.is_none(),
            _ => false,
        };
        if wants {
            self.activate_or_spawn(i);
        }
    }

    /// Activates the standby (or asks for one, and activates it when it arrives).
    pub(crate) fn activate_or_spawn(&mut self, i: usize) {
        let Some(inc) = self.servers[i].standby.take() else {
            self.spawn_incarnation(i);
            return;
        };
        let s = &mut self.servers[i];
        let generation = inc.generation;
        s.status.set_generation(generation);
        for c in s.channels.values() {
            c.k.set_generation(generation);
        }
        let fresh = std::mem::replace(&mut s.fresh_next, false);
        let sent = match &mut s.companion {
            Some(c) => {
                let (start, snap) = c.start_message(generation);
                let fds: Vec<_> = snap.map(|f| f.as_fd()).into_iter().collect();
                fdpass::send(
                    &inc.sock,
                    &proto::encode(&ToServer::ActivateCompanion(start)),
                    &fds,
                )
            }
            None => fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::Activate { generation, fresh }),
                &[],
            ),
        };
        s.active = Some(inc);
        // The next standby is forked once this one serves (`Active`), so that the fork does
        // not compete with the activation for the CPU. If the send failed, the incarnation
        // died as a standby: its pidfd reports it and recovery starts over.
        let _ = sent;
    }

    pub(crate) fn on_inc_msg(&mut self, i: usize, generation: u64) {
        loop {
            let s = &self.servers[i];
            let Some(inc) = s.incarnation(generation) else {
                return;
            };
            let (n, mut fds) = match fdpass::recv(&inc.sock, &mut self.buf, true) {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(_) => {
                    self.unwatch(inc.sock.as_fd());
                    return;
                }
            };
            if let Some(report) = CrashReport::decode(&self.buf[..n]) {
                let is_active = s
                    .active
                    .as_ref()
                    .is_some_and(|a| a.generation == generation);
                let detail = CrashReport::detail(&self.buf[..n]);
                let what = match report.kind {
                    CrashKind::Signal(sig) => signal_name(sig),
                    CrashKind::Panic => format!("panic: {detail}"),
                    CrashKind::Integrity => "integrity check failed".into(),
                };
                if is_active {
                    let at = fail_point_words(self.servers[i].fired_fail_point());
                    self.fault(i, format!("{what}{at}"));
                } else {
                    // A standby that crashed before activation: replace it.
                    self.log(format!("{}: standby crashed ({what})", s.spec.name));
                    if let Some(sb) = self.servers[i].standby.take() {
                        self.retire(i, sb);
                    }
                    self.spawn_incarnation(i);
                }
                return;
            }
            match proto::decode::<FromServer>(&self.buf[..n]) {
                Ok(FromServer::Active { generation: g }) if g == generation => {
                    let s = &mut self.servers[i];
                    if matches!(s.state, SrvState::Booting | SrvState::Recovering) {
                        s.state = SrvState::Running;
                        let recovered = s.fault_at.take().map(|t| t.elapsed());
                        // Now that the new incarnation serves: kill its failed predecessor
                        // and fork the next standby.
                        self.kill_doomed(i);
                        self.spawn_incarnation(i);
                        if let Some(t) = recovered {
                            let us = t.as_secs_f64() * 1e6;
                            let now_ms = self.now_ms();
                            let s = &mut self.servers[i];
                            s.last_recovery_us = Some(us);
                            s.last_recovery_at_ms = Some(now_ms);
                            let name = s.spec.name.clone();
                            self.log(format!(
                                "{name}: generation {g} serving, recovered in {us:.0} µs"
                            ));
                        }
                    }
                }
                Ok(FromServer::Resolve { server, txid }) => {
                    self.resolve_root(i, txipc_heap::RootId { server, txid });
                }
                Ok(FromServer::Checkpoint(info)) if fds.len() == 1 => {
                    let fd = fds.pop().expect("one fd");
                    self.companion_checkpoint(i, info, fd);
                }
                Ok(FromServer::Replayed { records, us, .. }) => {
                    if let Some(c) = &mut self.servers[i].companion {
                        c.info.last_replayed = records;
                        c.info.last_replay_us = us;
                    }
                }
                Ok(FromServer::Hold { message }) => {
                    self.companion_hold(i, generation, message);
                    return;
                }
                Ok(FromServer::Connect { service, txid }) => {
                    self.server_connect(i, generation, &service, txid);
                }
                Ok(FromServer::Fatal { message }) => {
                    let name = self.servers[i].spec.name.clone();
                    eprintln!("txipc kernel: server `{name}` cannot start: {message}");
                    if self.servers[i].state == SrvState::Booting {
                        eprintln!("txipc kernel: giving up: fix the cause above and start again");
                        self.shutting_down = true;
                    }
                }
                _ => {}
            }
        }
    }

    pub(crate) fn on_inc_died(&mut self, i: usize, generation: u64) {
        let s = &mut self.servers[i];
        if s.active
            .as_ref()
            .is_some_and(|a| a.generation == generation)
        {
            // Still a zombie (its zygote reaps it only at the next spawn): its exit status says
            // how it died.
            let pid = s.active.as_ref().map_or(0, |a| a.pid);
            let how = match process::zombie_exit(pid) {
                Some(Err(sig)) => format!("killed by {}", signal_name(sig)),
                Some(Ok(code)) => format!("exited with status {code}"),
                None => "died (exit status unknown)".into(),
            };
            let at = fail_point_words(s.fired_fail_point());
            self.fault(i, format!("{how}{at}"));
        } else if s
            .standby
            .as_ref()
            .is_some_and(|a| a.generation == generation)
        {
            let sb = s.standby.take().expect("standby");
            self.retire(i, sb);
            self.spawn_incarnation(i);
        } else if let Some(z) = s.zombies.remove(&generation) {
            self.unwatch(z.pidfd.as_fd());
            self.unwatch(z.sock.as_fd());
        } else if let Some(k) = s.doomed.iter().position(|d| d.generation == generation) {
            // A failed incarnation that was dead already (SIGKILL from outside).
            let d = s.doomed.swap_remove(k);
            self.unwatch(d.pidfd.as_fd());
        }
    }

    /// Kills an incarnation we no longer need, keeping its pidfd watched until it is gone (its
    /// teardown happens off the recovery path).
    pub(crate) fn retire(&mut self, i: usize, inc: Inc) {
        let _ = process::pidfd_signal(&inc.pidfd, Signal::KILL);
        self.unwatch(inc.sock.as_fd());
        self.servers[i].zombies.insert(inc.generation, inc);
    }
}

/// `SIGSEGV` for 11; `signal 40` for a number with no name.
pub(crate) fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}
