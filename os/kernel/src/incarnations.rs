//! Incarnations: standby hand-over, activation, their messages and deaths.

use std::os::fd::{AsFd, OwnedFd};

use rustix::process::Signal;
use txipc_core::proto::{self, Connected, FromServer, ToServer};
use txipc_sys::crash::{CrashKind, CrashReport};
use txipc_sys::{fdpass, process};

use crate::control::fail_point_words;
use crate::event_loop::{Kernel, T_INC_CTL, T_INC_PID, token};
use txipc_core::lifecycle::{Event, Phase};
use txipc_core::proto::FaultInfo;

#[derive(Debug)]
pub(crate) struct Inc {
    pub(crate) generation: u64,
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) sock: OwnedFd,
    /// Its address-space keeper's pidfd, once it said it runs one ([`FromServer::Keeper`]).
    pub(crate) keeper: Option<OwnedFd>,
}

impl Kernel {
    pub(crate) fn on_spawned(&mut self, i: usize, generation: u64, pid: i32, pidfd: OwnedFd) {
        let Some((g, sock)) = self.servers[i].spawning.take() else {
            let _ = process::pidfd_signal(&pidfd, Signal::KILL);
            return;
        };
        if g != generation {
            // Not the generation asked for: a confused zygote. Kill what it forked.
            let _ = process::pidfd_signal(&pidfd, Signal::KILL);
            self.feed(i, Event::SpawnFailed);
            return;
        }
        let inc = Inc {
            generation,
            pid,
            pidfd,
            sock,
            keeper: None,
        };
        let _ = self.watch(inc.sock.as_fd(), token(T_INC_CTL, i, generation));
        let _ = self.watch(inc.pidfd.as_fd(), token(T_INC_PID, i, generation));
        // Hand it every open channel. A send that fails (full socket: it does not read) makes
        // it useless: it is replaced.
        let mut ok = true;
        let s = &self.servers[i];
        let all: Vec<(u32, std::os::fd::BorrowedFd<'_>)> = s
            .channels
            .iter()
            .map(|(ci, c)| (*ci, c.fd.as_fd()))
            .collect();
        for chunk in all.chunks(fdpass::MAX_FDS) {
            let indices = chunk.iter().map(|(ci, _)| *ci).collect();
            let fds: Vec<_> = chunk.iter().map(|(_, fd)| *fd).collect();
            ok &= fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::AddChannels { indices }),
                &fds,
            )
            .is_ok();
        }
        for (ti, ci) in self.outgoing_of(i) {
            let t = &self.servers[ti];
            let info = Connected {
                service: t.spec.name.clone(),
                channel: ci,
                generation: t.life.active().unwrap_or(0),
                policy: t.spec.policy,
            };
            ok &= fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::Connected(info)),
                &[t.channels[&ci].fd.as_fd()],
            )
            .is_ok();
        }
        self.servers[i].procs.insert(generation, inc);
        // A companion standby restores the newest checkpoint now (the warm standby).
        self.companion_warm(i, generation, true);
        self.feed(i, Event::StandbyReady(generation));
        if !ok {
            self.feed(i, Event::Hang(generation));
        }
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
                let detail = CrashReport::detail(&self.buf[..n]);
                let what = match report.kind {
                    CrashKind::Signal(sig) => signal_name(sig),
                    CrashKind::Panic => format!("panic: {detail}"),
                    CrashKind::Integrity => "integrity check failed".into(),
                };
                if s.life.active() == Some(generation) {
                    let at = fail_point_words(self.servers[i].fired_fail_point());
                    self.fault_starts(i, generation, format!("{what}{at}"));
                } else {
                    self.log(format!("{}: standby crashed ({what})", s.spec.name));
                }
                self.feed(i, Event::CrashReport(generation));
                return;
            }
            match proto::decode::<FromServer>(&self.buf[..n]) {
                Ok(FromServer::Active { generation: g }) if g == generation => {
                    self.on_spare_active(i, g);
                }
                Ok(FromServer::TookOver(report)) => {
                    self.on_took_over(i, generation, report);
                }
                Ok(FromServer::Keeper) if fds.len() == 1 => {
                    let fd = fds.pop().expect("one fd");
                    if let Some(inc) = self.servers[i].procs.get_mut(&generation) {
                        inc.keeper = Some(fd);
                    }
                }
                Ok(FromServer::Resolve { server, txid }) => {
                    self.resolve_root(i, txipc_heap::RootId { server, txid });
                }
                Ok(FromServer::Checkpoint(info)) if fds.len() == 1 => {
                    let fd = fds.pop().expect("one fd");
                    self.companion_checkpoint(i, info, fd);
                }
                Ok(FromServer::Replayed {
                    records,
                    from_index,
                    us,
                    warm,
                    ..
                }) => {
                    if let Some(c) = &mut self.servers[i].companion {
                        c.on_replayed(records, from_index, us, warm);
                    }
                }
                Ok(FromServer::Warmed { index }) => {
                    let s = &mut self.servers[i];
                    if s.life.standby() == Some(generation)
                        && let Some(c) = &mut s.companion
                    {
                        c.info.standby_index = index;
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
                    if self.servers[i].phase() == Phase::Booting {
                        eprintln!("txipc kernel: giving up: fix the cause above and start again");
                        self.shutting_down = true;
                    }
                }
                _ => {}
            }
        }
    }

    pub(crate) fn on_inc_died(&mut self, i: usize, generation: u64) {
        // What it said before it died comes first: a crashed incarnation with a spare armed
        // kills itself right after its crash report (`txipc_sys::crash`), and its pidfd may be
        // read before its socket; the fault's cause is the report's, not "killed by SIGKILL".
        self.on_inc_msg(i, generation);
        self.nudge_spare(i, generation);
        let s = &mut self.servers[i];
        let Some(inc) = s.procs.get(&generation) else {
            return;
        };
        if s.life.active() == Some(generation) {
            // Still a zombie (its zygote reaps it only at the next spawn): its exit status
            // says how it died.
            // Still a zombie, or reaped by its zygote, which reports how it ended (`Reaped`,
            // maybe still on its way: then the cause is completed when it arrives).
            let pid = inc.pid;
            let ended = process::zombie_exit(pid)
                .or_else(|| s.exits.iter().find(|e| e.0 == pid).map(|e| e.1));
            let at = fail_point_words(s.fired_fail_point());
            let how = match ended {
                Some(how) => exit_words(how),
                None => match s.signalled {
                    // The kernel knows what it sent itself.
                    Some((g, sig)) if g == generation => format!("killed by {}", signal_name(sig)),
                    _ => {
                        s.exit_pending = Some((pid, generation, at.clone()));
                        "died (its zygote has not reported how yet)".into()
                    }
                },
            };
            self.fault_starts(i, generation, format!("{how}{at}"));
        }
        let s = &mut self.servers[i];
        if s.life.standby() == Some(generation)
            && let Some(c) = &mut s.companion
        {
            // `ps` no longer shows a dead standby's position.
            c.standby_gone();
        }
        if let Some(inc) = s.procs.remove(&generation) {
            self.unwatch(inc.pidfd.as_fd());
            self.unwatch(inc.sock.as_fd());
            // Its keeper still holds the address space: killed later, once the successor
            // serves (`Kernel::kill_keepers`).
            if let Some(k) = inc.keeper {
                self.servers[i].keepers.push(k);
            }
        }
        self.feed(i, Event::Died(generation));
        // A spare armed is disarmed; a rollback waiting for this spare goes on.
        self.spare_died(i, generation);
    }

    /// The zygote of server `i` reaped `pid`, which ended `how`: remembered (the last 16), and
    /// the cause of a fault that waited for it completed.
    pub(crate) fn on_reaped(&mut self, i: usize, pid: i32, how: Result<i32, i32>) {
        let s = &mut self.servers[i];
        s.exits.push_back((pid, how));
        while s.exits.len() > 16 {
            s.exits.pop_front();
        }
        if let Some((p, g, at)) = s.exit_pending.take() {
            if p != pid {
                s.exit_pending = Some((p, g, at));
                return;
            }
            if let Some(f) = s.last_fault.as_mut().filter(|f| f.generation == g) {
                f.cause = format!("{}{at}", exit_words(how));
                // The fault was logged before this was known: say it now, so the log (and
                // not only `ps`) tells how the generation ended.
                let line = format!(
                    "{}: generation {g} {} (reported by its zygote)",
                    s.spec.name, f.cause
                );
                self.log(line);
            }
        }
    }

    /// The active generation `g` failed for `cause`: record it (the lifecycle decides what
    /// follows).
    pub(crate) fn fault_starts(&mut self, i: usize, g: u64, cause: String) {
        let now_ms = self.now_ms();
        let s = &mut self.servers[i];
        s.fault_at = Some(std::time::Instant::now());
        s.steps = txipc_core::proto::RecoverySteps {
            fault_ns: txipc_sys::time::monotonic_ns(),
            ..Default::default()
        };
        s.watch = None;
        s.posted_watch = None;
        s.faults += 1;
        if let Some(c) = &mut s.companion {
            c.on_fault();
        }
        s.last_fault = Some(FaultInfo {
            cause,
            generation: g,
            at_ms: now_ms,
        });
    }
}

/// `SIGSEGV` for 11; `signal 40` for a number with no name.
pub(crate) fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}

/// How a process ended, in words.
fn exit_words(how: Result<i32, i32>) -> String {
    match how {
        Err(sig) => format!("killed by {}", signal_name(sig)),
        Ok(code) => format!("exited with status {code}"),
    }
}
