//! Shutdown: stop incarnations, then zygotes, then remove the socket.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use txipc_core::proto::{self, ToServer, ToZygote};
use txipc_sys::{fdpass, process};

use crate::event_loop::Kernel;
use crate::server::CONTROL_EVENT;

impl Kernel {
    pub(crate) fn shutdown(&mut self) {
        self.fuse_shutdown();
        let deadline = Instant::now() + Duration::from_secs(3);
        // No spare takes over from an incarnation that exits because it is told to.
        for i in 0..self.servers.len() {
            self.disarm(i);
        }
        for s in &mut self.servers {
            for inc in [s.active(), s.standby()].into_iter().flatten() {
                let _ = fdpass::send(&inc.sock, &proto::encode(&ToServer::Shutdown), &[]);
            }
            s.doorbell.notify(CONTROL_EVENT);
        }
        // Incarnations first (they die with their zygote anyway), then zygotes. Shutdown is
        // the one place the kernel waits for peers, bounded (3 s, then SIGKILL).
        for s in &mut self.servers {
            let mut keepers = std::mem::take(&mut s.keepers);
            keepers.append(&mut s.keepers_due);
            for inc in std::mem::take(&mut s.procs).into_values() {
                wait_or_kill(&inc.pidfd, deadline);
                keepers.extend(inc.keeper);
            }
            // The keepers (they would also end with the kernel, which they watch): killed and
            // waited for, so that none outlives the system.
            for k in &keepers {
                let _ = process::pidfd_signal(k, Signal::KILL);
            }
            for k in &keepers {
                wait_or_kill(k, deadline);
            }
            if let Some(mut z) = s.zygote.take() {
                let _ = fdpass::send(&z.sock, &proto::encode(&ToZygote::Exit), &[]);
                wait_or_kill(&z.pidfd, deadline);
                let _ = z.child.wait();
            }
        }
        process::reap_children();
        let _ = std::fs::remove_file(&self.socket_path);
        // The runtime directory goes too when no other system of this user still runs
        // (remove_dir fails, harmlessly, on a non-empty directory).
        if let Some(dir) = self.socket_path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

pub(crate) fn wait_or_kill(pidfd: &OwnedFd, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let ts = rustix::time::Timespec {
        tv_sec: left.as_secs() as _,
        tv_nsec: left.subsec_nanos() as _,
    };
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    let done = matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0);
    if !done {
        let _ = process::pidfd_signal(pidfd, Signal::KILL);
        let mut fds = [rustix::event::PollFd::new(
            pidfd,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 2,
                tv_nsec: 0,
            }),
        );
    }
}
