//! Zygotes: one pre-initialised process per server that forks its incarnations.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use txipc_core::proto::{self, FromZygote, ZygoteInit};
use txipc_sys::{fdpass, process};

use crate::errors::{KernelError, os};
use crate::event_loop::{Kernel, T_ZYGOTE, T_ZYGOTE_PID, token};
use txipc_core::lifecycle::{Event, Phase};

#[derive(Debug)]
pub(crate) struct Zygote {
    pub(crate) child: Child,
    pub(crate) pidfd: OwnedFd,
    pub(crate) sock: OwnedFd,
    pub(crate) ready: bool,
}

impl Kernel {
    pub(crate) fn start_zygote(&mut self, i: usize) -> Result<(), KernelError> {
        let (ours, theirs) = fdpass::seqpacket_pair().map_err(os("socketpair"))?;
        process::inherit_on_exec(&theirs).map_err(os("fcntl"))?;
        // A built-in server runs from this binary; `exec` names another binary that links the
        // txipc runtime and answers `__zygote` the same way.
        let program = self.servers[i]
            .spec
            .exec
            .as_ref()
            .map_or_else(|| self.opts.exe.clone(), PathBuf::from);
        let child = Command::new(&program)
            .arg("__zygote")
            .env("TXIPC_CTRL_FD", theirs.as_raw_fd().to_string())
            .env("TXIPC_SERVER_NICE", self.server_nice.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Quiet systems keep servers' own messages (panic texts) off the terminal; every
            // fault still reaches the kernel through the crash report and its pidfd.
            .stderr(if self.opts.verbose {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(|e| KernelError::ServerStart {
                server: self.servers[i].spec.name.clone(),
                reason: format!(
                    "cannot execute {}: {e} (check the manifest's `exec` path and its permissions)",
                    program.display()
                ),
            })?;
        drop(theirs);
        // The zygote forks nothing before the kernel asks it to, so the CPUs the kernel was
        // started on are its own again before any incarnation exists.
        if let Some(set) = &self.server_cpus {
            let _ = process::set_affinity(child.id() as i32, set);
        }
        let pidfd = process::pidfd_open(child.id() as i32).map_err(os("pidfd_open"))?;
        let s = &self.servers[i];
        let init = ZygoteInit {
            config: s.config.clone(),
        };
        let mut fds = vec![
            s.heap_fd.as_fd(),
            s.log_fd.as_fd(),
            s.doorbell_fd.as_fd(),
            s.status_fd.as_fd(),
        ];
        fds.extend(crate::companion::zygote_fds(s));
        fdpass::send(&ours, &proto::encode(&init), &fds)
        .map_err(|e| KernelError::ServerStart {
            server: s.spec.name.clone(),
            reason: format!(
                "{} did not take its init message ({e}): it exited at once — is it a txipc server binary (it must answer `__zygote`)?",
                s.spec.exec.as_deref().unwrap_or("the txipc binary")
            ),
        })?;
        // From here on the kernel never blocks on it: a zygote that does not read is stuck,
        // and the lifecycle's spawn timeout replaces it.
        rustix::io::ioctl_fionbio(&ours, true).map_err(os("FIONBIO"))?;
        self.watch(ours.as_fd(), token(T_ZYGOTE, i, 0))?;
        self.watch(pidfd.as_fd(), token(T_ZYGOTE_PID, i, 0))?;
        self.servers[i].zygote = Some(Zygote {
            child,
            pidfd,
            sock: ours,
            ready: false,
        });
        Ok(())
    }

    pub(crate) fn on_zygote(&mut self, i: usize) -> Result<(), KernelError> {
        loop {
            let Some(z) = &self.servers[i].zygote else {
                return Ok(());
            };
            let (n, mut fds) = match fdpass::recv(&z.sock, &mut self.buf, true) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(_) => {
                    let z = self.servers[i].zygote.as_ref().expect("zygote");
                    self.unwatch(z.sock.as_fd());
                    return Ok(()); // its pidfd will tell us it died
                }
            };
            match proto::decode::<FromZygote>(&self.buf[..n]) {
                Ok(FromZygote::Ready) => {
                    self.servers[i].zygote.as_mut().expect("zygote").ready = true;
                    self.feed(i, Event::ZygoteReady);
                }
                Ok(FromZygote::Spawned { generation, pid }) if fds.len() == 1 => {
                    let pidfd = fds.pop().expect("one fd");
                    self.on_spawned(i, generation, pid, pidfd);
                }
                Ok(FromZygote::Failed { message }) => {
                    let name = self.servers[i].spec.name.clone();
                    self.servers[i].spawning = None;
                    if self.servers[i].phase() == Phase::Booting {
                        return Err(KernelError::ServerStart {
                            server: name,
                            reason: message,
                        });
                    }
                    self.log(format!("{name}: zygote failed: {message}"));
                    self.feed(i, Event::SpawnFailed);
                }
                Ok(FromZygote::Reaped { pid, code, signal }) => {
                    let how = match (code, signal) {
                        (_, Some(sig)) => Err(sig),
                        (Some(c), None) => Ok(c),
                        (None, None) => continue,
                    };
                    self.on_reaped(i, pid, how);
                }
                _ => self.log("malformed message from a zygote"),
            }
        }
    }

    pub(crate) fn on_zygote_died(&mut self, i: usize) -> Result<(), KernelError> {
        let Some(mut z) = self.servers[i].zygote.take() else {
            return Ok(());
        };
        self.unwatch(z.pidfd.as_fd());
        self.unwatch(z.sock.as_fd());
        let status = z.child.wait().ok();
        let name = self.servers[i].spec.name.clone();
        if self.servers[i].phase() == Phase::Booting {
            return Err(KernelError::ServerStart {
                server: name,
                reason: format!(
                    "its zygote ({}) exited during boot ({}): is it a txipc server binary (it must answer `__zygote`)? If it is, its own error is above",
                    self.servers[i]
                        .spec
                        .exec
                        .as_deref()
                        .unwrap_or("the txipc binary"),
                    status.map_or("status unknown".into(), |s| s.to_string())
                ),
            });
        }
        if !self.shutting_down {
            self.log(format!(
                "{name}: zygote died ({status:?}); starting a new one"
            ));
            self.servers[i].spawning = None;
            self.feed(i, Event::ZygoteDied);
        }
        Ok(())
    }
}
