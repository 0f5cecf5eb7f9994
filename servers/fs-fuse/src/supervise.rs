//! The front end supervises itself: `txipc mount` is a small supervisor process that runs the
//! front end proper (the *worker*: the FUSE request loop) as a child, and starts a successor
//! whenever the worker dies, so that no one has to notice.
//!
//! The worker does everything a front end does ([`crate::run`]): it mounts (or adopts the
//! connection the txipc kernel kept when its predecessor died, and has the kernel re-send the
//! requests in flight with `FUSE_NOTIFY_RESEND`), serves, and unmounts at the end. The
//! supervisor reads nothing from `/dev/fuse`, makes no fs call and keeps no state but the
//! worker's pid: there is very little in it to fail.
//!
//! | the worker ... | the supervisor ... |
//! | --- | --- |
//! | prints `ready DIR` (first line on its stdout) | reports readiness once (the first worker only) |
//! | exits 0 (signal, unmount, system stopped: it unmounted) | exits 0 |
//! | exits non-zero before its first `ready` | gives up: the mount could not be made |
//! | serves (printed `ready`), with no standby beside it | starts a standby: a worker that connects to the system and waits on its stdin, already past `execve` |
//! | dies (any signal) or exits non-zero after `ready`, a standby waiting | tells the standby to adopt at once (a line on its stdin); a new standby once that one serves |
//! | dies (any signal) or exits non-zero after `ready`, no standby | starts a successor, which adopts |
//! | dies of a signal before `ready` | starts a successor after a pause that doubles with each such death in a row (10 ms up to 1 s) |
//! | exits non-zero before `ready` [`MAX_FAILED_STARTS`] times in a row (it cannot reach the system, say) | detaches the mount, forgets the kept connection, fails |
//!
//! A standby that dies before it is needed is replaced (after [`MAX_STANDBY_DEATHS`] such
//! deaths in a row none is started until a worker serves again). A standby told to stop, or
//! whose supervisor dies, ends without touching the mount.
//!
//! A SIGINT or SIGTERM to the supervisor is passed to the worker as SIGTERM (it unmounts and
//! exits 0). The worker asks for SIGTERM when the supervisor dies (`PR_SET_PDEATHSIG`), so a
//! killed supervisor still ends in a clean unmount, never in a stale mount.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags};

use crate::mount::MountError;

/// Successive workers that exit with an error before serving, after which the supervisor gives
/// up. (A worker killed by a signal is not counted: something outside kills it, and giving up
/// would lose the mount; its successors only come more slowly.)
pub const MAX_FAILED_STARTS: u32 = 5;
/// Longest pause before a successor, after deaths in a row before serving.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a stopping worker may take to unmount and exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the supervisor tells its caller as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first worker serves: the mount is ready.
    Ready,
    /// A worker died (`status`); a successor (`pid`) is starting.
    Respawn {
        /// The dead worker's pid.
        dead: u32,
        /// How it ended.
        status: ExitStatus,
        /// The successor's pid.
        successor: u32,
    },
    /// A successor serves (it adopted the connection).
    Adopted {
        /// Its pid.
        pid: u32,
    },
}

/// How supervision ended.
#[derive(Debug)]
pub enum Outcome {
    /// The worker ended by itself and unmounted (it said why on stderr).
    Done,
    /// A signal to the supervisor: the worker was told to stop and did.
    Signal,
}

fn sys(op: &'static str) -> impl FnOnce(std::io::Error) -> MountError {
    move |source| MountError::Sys { op, source }
}

/// One running worker: the process, its pidfd, its stdout until its first line.
struct Worker {
    child: Child,
    pidfd: OwnedFd,
    out: Option<std::process::ChildStdout>,
    line: Vec<u8>,
    ready: bool,
}

impl Worker {
    fn start(cmd: &mut Command, standby: bool) -> Result<Worker, MountError> {
        let mut child = cmd
            .stdin(if standby {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(sys("starting the front-end worker"))?;
        let pidfd = match txipc_sys::process::pidfd_open(child.id() as i32) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(sys("pidfd_open")(e));
            }
        };
        let out = child.stdout.take();
        if let Some(o) = &out {
            rustix::io::ioctl_fionbio(o, true).map_err(|e| sys("FIONBIO")(e.into()))?;
        }
        Ok(Worker {
            child,
            pidfd,
            out,
            line: Vec::new(),
            ready: false,
        })
    }

    /// Reads what the worker wrote; returns true when its first line says it serves.
    fn read_out(&mut self) -> bool {
        let Some(o) = &mut self.out else {
            return false;
        };
        let mut buf = [0u8; 512];
        loop {
            match o.read(&mut buf) {
                Ok(0) => {
                    self.out = None;
                    return false;
                }
                Ok(n) => {
                    if !self.ready {
                        self.line.extend_from_slice(&buf[..n]);
                        if let Some(nl) = self.line.iter().position(|&c| c == b'\n') {
                            self.ready = self.line[..nl].starts_with(b"ready");
                            self.line.clear();
                            if self.ready {
                                return true;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Tells a standby to adopt the connection now (a line on its stdin); false if it is
    /// gone.
    fn go(&mut self) -> bool {
        use std::io::Write;
        let Some(mut stdin) = self.child.stdin.take() else {
            return false;
        };
        stdin.write_all(b"go\n").is_ok()
    }

    /// Whether the process has ended (its pidfd is readable). Never waits.
    fn ended(&self) -> bool {
        txipc_sys::process::pidfd_exited(&self.pidfd)
    }

    /// Tells the worker to stop and waits (bounded) for it; kills it past the grace period.
    fn stop(mut self) -> ExitStatus {
        let _ = txipc_sys::process::pidfd_signal(&self.pidfd, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap_or_else(|_| exit_status_killed());
            }
            let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, Some(&ms(100)));
        }
    }
}

fn exit_status_killed() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(9)
}

fn ms(n: i64) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: n / 1000,
        tv_nsec: (n % 1000) * 1_000_000,
    }
}

/// What the supervisor starts a worker as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The first worker: it mounts (or adopts a connection kept from an earlier front end).
    First,
    /// A successor started after a death with no standby ready: it adopts at once.
    Successor,
    /// A standby: it starts, connects to the system and waits, already past `execve`, for a
    /// line on its stdin; then it adopts the connection of the worker that just died.
    Standby,
}

/// Standbys that died in a row (not told to adopt) after which no more are started: a
/// successor is then started on each death, as without standbys.
pub const MAX_STANDBY_DEATHS: u32 = 5;

/// Runs workers made by `command(role)` until one ends by itself or a signal comes; `on`
/// hears each [`Event`]. While a worker serves, a standby worker waits beside it (started
/// once the serving one is ready, so its `execve` and start-up never happen while the mount
/// has no front end); when the serving worker dies the standby is told to adopt at once, and
/// a new standby is started once it serves. `give_up` is called (with the reason) when
/// workers keep dying before they serve: it should detach the mount and forget its kept
/// connection.
pub fn supervise(
    mut command: impl FnMut(Role) -> Command,
    mut on: impl FnMut(Event),
    give_up: impl FnOnce(&str),
) -> Result<Outcome, MountError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block()
        .map_err(|e| sys("sigprocmask")(e.into()))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| sys("signalfd")(e.into()))?;
    // A worker starts with an empty signal mask (std resets it in the child) and blocks
    // SIGINT/SIGTERM into its own signalfd.
    let mut w = Worker::start(&mut command(Role::First), false)?;
    let mut standby: Option<Worker> = None;
    let mut standby_deaths = 0u32;
    let mut ever_ready = false;
    let mut failed_starts = 0u32;
    let mut backoff = Duration::ZERO;
    let stop_all = |w: Worker, standby: Option<Worker>| {
        if let Some(s) = standby {
            s.stop();
        }
        w.stop()
    };
    loop {
        // A standby waits beside a serving worker.
        if w.ready && standby.is_none() && standby_deaths < MAX_STANDBY_DEATHS {
            match Worker::start(&mut command(Role::Standby), true) {
                Ok(s) => standby = Some(s),
                Err(e) => {
                    eprintln!("txipc mount: starting a standby front end: {e}");
                    standby_deaths += 1;
                }
            }
        }
        let mut fds = vec![
            PollFd::new(&sigfd, PollFlags::IN),
            PollFd::new(&w.pidfd, PollFlags::IN),
        ];
        if let Some(s) = &standby {
            fds.push(PollFd::new(&s.pidfd, PollFlags::IN));
        }
        if let Some(o) = &w.out {
            fds.push(PollFd::new(o, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, Some(&ms(1000))) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(sys("poll")(e.into())),
        }
        drop(fds);
        if let Ok(Some(_)) = sigfd.read_signal() {
            stop_all(w, standby);
            return Ok(Outcome::Signal);
        }
        // A standby that died before it was needed is replaced (by the next round).
        if standby.as_ref().is_some_and(Worker::ended) {
            if let Some(mut s) = standby.take() {
                let _ = s.child.wait();
            }
            standby_deaths += 1;
        }
        if w.read_out() {
            failed_starts = 0;
            backoff = Duration::ZERO;
            standby_deaths = 0;
            if ever_ready {
                on(Event::Adopted { pid: w.child.id() });
            } else {
                ever_ready = true;
                on(Event::Ready);
            }
        }
        let status = match w.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => continue,
            // The worker cannot be waited for (reaped by someone else: ECHILD). It is no
            // longer ours to watch, and retrying would spin: treat it as dead of a signal, so
            // a successor adopts the connection.
            Err(e) => {
                eprintln!(
                    "txipc mount: the front-end worker {} cannot be waited for ({e}); starting a successor",
                    w.child.id()
                );
                exit_status_killed()
            }
        };
        // Anything it wrote before dying (a `ready` line it managed to print counts).
        if w.read_out() {
            ever_ready = true;
        }
        if status.success() {
            if let Some(s) = standby.take() {
                s.stop();
            }
            return Ok(Outcome::Done);
        }
        if !ever_ready && status.code().is_some() {
            // The first worker could not mount (it said why): nothing to keep alive.
            if let Some(s) = standby.take() {
                s.stop();
            }
            return Err(MountError::Worker { status });
        }
        let dead = w.child.id();
        // The standby adopts at once: no execve, no start-up while the mount has no front
        // end.
        if w.ready
            && let Some(mut s) = standby.take()
        {
            if s.go() {
                w = s;
                on(Event::Respawn {
                    dead,
                    status,
                    successor: w.child.id(),
                });
                continue;
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        if !w.ready {
            if status.code().is_some() {
                failed_starts += 1;
                if failed_starts >= MAX_FAILED_STARTS {
                    let why = format!(
                        "{failed_starts} front-end workers in a row failed before serving (the last: {status})"
                    );
                    if let Some(s) = standby.take() {
                        s.stop();
                    }
                    give_up(&why);
                    return Err(MountError::Worker { status });
                }
            }
            backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_BACKOFF);
            // The pause listens for signals: SIGINT/SIGTERM during it still end supervision.
            let mut fds = [PollFd::new(&sigfd, PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, Some(&ms(backoff.as_millis() as i64)));
            if let Ok(Some(_)) = sigfd.read_signal() {
                if let Some(s) = standby.take() {
                    s.stop();
                }
                give_up("stopped while no front end was serving");
                return Ok(Outcome::Signal);
            }
        }
        w = Worker::start(&mut command(Role::Successor), false)?;
        on(Event::Respawn {
            dead,
            status,
            successor: w.child.id(),
        });
    }
}

/// For a worker: asks for SIGTERM when the supervisor `parent` dies (so the worker unmounts
/// rather than serve unsupervised), and checks it did not die already.
pub fn follow_parent(parent: i32) -> Result<(), MountError> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .map_err(|e| sys("PR_SET_PDEATHSIG")(e.into()))?;
    if txipc_sys::process::getppid() != parent {
        return Err(MountError::Sys {
            op: "following the supervisor",
            source: std::io::Error::other("the supervisor is gone"),
        });
    }
    Ok(())
}
