//! The event loop: one epoll set, every event dispatched in order by its token.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signal::Signal as NixSignal;
use nix::sys::signalfd::SignalFd;
use rustix::event::epoll;
use txipc_core::lifecycle::Phase;
use txipc_core::manifest::Manifest;
use txipc_sys::process;

use crate::boot::Options;
use crate::clients::ClientConn;
use crate::errors::{KernelError, os};
use crate::server::Server;

/// The kernel: every server, every client connection, and the fds the event loop waits on.
pub(crate) struct Kernel {
    pub(crate) manifest: Manifest,
    pub(crate) opts: Options,
    pub(crate) epoll: OwnedFd,
    pub(crate) listener: OwnedFd,
    pub(crate) socket_path: PathBuf,
    pub(crate) sigfd: SignalFd,
    pub(crate) timer: OwnedFd,
    pub(crate) servers: Vec<Server>,
    pub(crate) clients: HashMap<u64, ClientConn>,
    pub(crate) next_client: u64,
    pub(crate) shutting_down: bool,
    pub(crate) ready_announced: bool,
    pub(crate) started: Instant,
    pub(crate) buf: Vec<u8>,
    /// One-shot timer for re-checking stops being confirmed (`lifecycle::CONFIRM_INTERVAL_US`).
    pub(crate) confirm_timer: OwnedFd,
    /// The listener is not watched (the kernel ran out of descriptors); watched again at the
    /// next tick.
    pub(crate) accept_paused: bool,
    /// When the current shortage of descriptors began (logged once, when it begins, and once
    /// more when a connection is accepted again), and how many ticks it has lasted.
    pub(crate) fd_shortage: Option<(Instant, u64)>,
    /// A fatal error found while performing a command during boot.
    pub(crate) fatal: Option<KernelError>,
    /// The user that started the kernel: the operator unless the manifest says otherwise.
    pub(crate) owner_uid: u32,
    /// How roots of nested transactions ended, as learnt while recovering (`nested`).
    pub(crate) decisions: txipc_core::nested::Decisions,
    /// FUSE connections kept for their mount points (`fuse`).
    pub(crate) fuse: crate::fuse::KeptMap,
    /// The nice value the kernel was started with: its servers run at it (the kernel itself
    /// runs `KERNEL_NICE_BOOST` below, when allowed).
    pub(crate) server_nice: i32,
    /// The CPUs the kernel was started on: its zygotes (and so its servers) get them back
    /// (the kernel itself avoids the CPUs its servers are pinned to, `boot.rs`).
    pub(crate) server_cpus: Option<nix::sched::CpuSet>,
}

/// Boots the system and serves until SIGINT/SIGTERM or a `Shutdown` request. `on_ready` is
/// called once every server serves. Returns after everything is stopped and cleaned up.
pub fn run(
    manifest: Manifest,
    opts: Options,
    on_ready: impl FnOnce(&std::path::Path),
) -> Result<(), KernelError> {
    let mut k = Kernel::boot(manifest, opts)?;
    let result = k.event_loop(on_ready);
    k.shutdown();
    result
}

// Event tokens (epoll user data): kind in the top byte, server index in the next 16 bits, an id below.
pub(crate) const T_LISTEN: u64 = 1;
pub(crate) const T_CLIENT: u64 = 2;
pub(crate) const T_ZYGOTE: u64 = 3;
pub(crate) const T_ZYGOTE_PID: u64 = 4;
pub(crate) const T_INC_CTL: u64 = 5;
pub(crate) const T_INC_PID: u64 = 6;
pub(crate) const T_SIGNAL: u64 = 7;
pub(crate) const T_TIMER: u64 = 8;
pub(crate) const T_CONFIRM: u64 = 9;

pub(crate) fn token(kind: u64, server: usize, id: u64) -> u64 {
    (kind << 56) | ((server as u64 & 0xffff) << 40) | (id & 0xff_ffff_ffff)
}
pub(crate) fn untoken(t: u64) -> (u64, usize, u64) {
    (t >> 56, ((t >> 40) & 0xffff) as usize, t & 0xff_ffff_ffff)
}

impl Kernel {
    pub(crate) fn event_loop(
        &mut self,
        on_ready: impl FnOnce(&std::path::Path),
    ) -> Result<(), KernelError> {
        let mut on_ready = Some(on_ready);
        let mut events = Vec::with_capacity(64);
        while !self.shutting_down {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(os("epoll_wait")(e)),
            }
            let toks: Vec<u64> = events.iter().map(|e| e.data.u64()).collect();
            for tok in toks {
                self.dispatch(tok)?;
                if let Some(e) = self.fatal.take() {
                    return Err(e);
                }
                if self.shutting_down {
                    break;
                }
            }
            if !self.ready_announced && self.servers.iter().all(|s| s.phase() == Phase::Running) {
                self.ready_announced = true;
                self.log("all servers running");
                if let Some(f) = on_ready.take() {
                    f(&self.socket_path);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn dispatch(&mut self, tok: u64) -> Result<(), KernelError> {
        let (kind, si, id) = untoken(tok);
        match kind {
            T_LISTEN => self.accept(),
            T_CLIENT => self.on_client(id),
            T_ZYGOTE => self.on_zygote(si)?,
            T_ZYGOTE_PID => self.on_zygote_died(si)?,
            T_INC_CTL => self.on_inc_msg(si, id),
            T_INC_PID => self.on_inc_died(si, id),
            T_SIGNAL => self.on_signal(),
            T_TIMER => self.on_tick(),
            T_CONFIRM => self.on_confirm_timer(),
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn on_signal(&mut self) {
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            if info.ssi_signo == NixSignal::SIGCHLD as u32 {
                process::reap_children();
            } else {
                self.log("signal: shutting down");
                self.shutting_down = true;
            }
        }
    }

    pub(crate) fn watch(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        tok: u64,
    ) -> Result<(), KernelError> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(tok),
            epoll::EventFlags::IN,
        )
        .map_err(os("epoll_ctl"))
    }

    pub(crate) fn unwatch(&self, fd: std::os::fd::BorrowedFd<'_>) {
        let _ = epoll::delete(&self.epoll, fd);
    }

    /// Milliseconds since the kernel started.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn log(&self, msg: impl std::fmt::Display) {
        if self.opts.verbose {
            log_line(
                &mut std::io::stderr().lock(),
                self.started.elapsed().as_secs_f64(),
                msg,
            );
        }
    }
}

/// Writes one line of the kernel's log to `out` in **one** `write` call. The kernel's stderr is
/// the system log's pipe (`app/txipc/src/runlog.rs`) and is unbuffered: `eprintln!` writes each
/// piece of the formatted line by itself, and every write woke the log's copying thread, which
/// then ran on the kernel's CPU before the kernel went on — at a fault, a few lines of pieces
/// were ~30 wake-ups and switches between the fault and the activation (a scheduler trace of
/// `bench recovery --policy companion`, wave 8).
pub(crate) fn log_line(out: &mut impl std::io::Write, secs: f64, msg: impl std::fmt::Display) {
    let line = format!("[txipc kernel {secs:>9.3}s] {msg}\n");
    let _ = out.write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    /// Counts the `write` calls it gets.
    struct Writes(usize, Vec<u8>);

    impl std::io::Write for Writes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += 1;
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_kernel_log_line_is_one_write() {
        let mut w = Writes(0, Vec::new());
        super::log_line(&mut w, 1.5, format_args!("kv: generation {} serving", 7));
        assert_eq!(w.0, 1, "one write per line, not one per formatted piece");
        assert_eq!(
            String::from_utf8(w.1).unwrap(),
            "[txipc kernel     1.500s] kv: generation 7 serving\n"
        );
    }
}
