//! Boot and the runtime socket: signals, the listening socket, the servers' shared objects, the zygotes.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::epoll;
use txipc_core::manifest::Manifest;
use txipc_core::proto;
use txipc_sys::process;

use crate::errors::{KernelError, os};
use crate::event_loop::{Kernel, T_CONFIRM, T_LISTEN, T_SIGNAL, T_TIMER, token};
use crate::server::Server;

/// How the kernel is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The txipc binary (re-executed as `__zygote` for every server).
    pub exe: PathBuf,
    /// The system's name (the socket is named after it).
    pub system: String,
    /// Print recovery events on stderr.
    pub verbose: bool,
}

/// How far below its servers' nice value the kernel runs: a woken kernel preempts a spinning
/// client or server instead of waiting for a CPU (ARCHITECTURE.md §6, "Detection").
pub const KERNEL_NICE_BOOST: i32 = 10;

impl Kernel {
    pub(crate) fn boot(manifest: Manifest, opts: Options) -> Result<Kernel, KernelError> {
        // Signals arrive through a signalfd, in order with everything else.
        let mut mask = SigSet::empty();
        for s in [
            NixSignal::SIGINT,
            NixSignal::SIGTERM,
            NixSignal::SIGCHLD,
            NixSignal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(os("blocking signals"))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(os("signalfd"))?;
        process::become_subreaper().map_err(os("PR_SET_CHILD_SUBREAPER"))?;
        // Every channel is a descriptor: use all the descriptors the hard limit allows.
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if lim.current < lim.maximum {
            let _ = rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit {
                    current: lim.maximum,
                    maximum: lim.maximum,
                },
            );
        }

        // The kernel runs above what it supervises: KERNEL_NICE_BOOST below the nice value it
        // was started with, so that when a death, a crash report or a timer wakes it, it
        // preempts a spinning client or server at once instead of waiting for a CPU (on two
        // CPUs a client and a server spinning on both delayed the kernel's sight of a SIGKILL
        // by 2-3 ms in 4 of 10 companion recoveries). Its servers go back to the starting
        // value (`TXIPC_SERVER_NICE`, set by the zygote), so only the kernel is raised. Without
        // the privilege (CAP_SYS_NICE or RLIMIT_NICE) it stays where it is, and says so.
        let server_nice = rustix::process::getpriority_process(None).unwrap_or(0);
        let boosted =
            rustix::process::setpriority_process(None, (server_nice - KERNEL_NICE_BOOST).max(-20))
                .is_ok();

        let dir = txipc_core::paths::runtime_dir();
        txipc_core::paths::create_runtime_dir(&dir).map_err(KernelError::RuntimeDir)?;
        let socket_path = txipc_core::paths::socket_path(&opts.system);
        if socket_path.exists() {
            if txipc_sys_connect_probe(&socket_path) {
                return Err(KernelError::AlreadyRunning(opts.system.clone()));
            }
            let _ = std::fs::remove_file(&socket_path); // stale, from a kernel that was killed
        }
        let listener = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )
        .map_err(os("socket"))?;
        let addr = rustix::net::SocketAddrUnix::new(&socket_path)
            .map_err(os(format!("socket path {}", socket_path.display())))?;
        // Another system's kernel may remove the (empty) runtime directory between our
        // create_dir_all and bind: recreate it and try again, a bounded number of times.
        let mut tries = 0;
        loop {
            match rustix::net::bind(&listener, &addr) {
                Ok(()) => break,
                Err(rustix::io::Errno::NOENT) if tries < 5 => {
                    tries += 1;
                    txipc_core::paths::create_runtime_dir(&dir).map_err(KernelError::RuntimeDir)?;
                }
                Err(e) => return Err(os(format!("bind {}", socket_path.display()))(e)),
            }
        }
        rustix::net::listen(&listener, 128).map_err(os("listen"))?;

        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(os("epoll_create"))?;
        let timer = rustix::time::timerfd_create(
            rustix::time::TimerfdClockId::Monotonic,
            rustix::time::TimerfdFlags::CLOEXEC | rustix::time::TimerfdFlags::NONBLOCK,
        )
        .map_err(os("timerfd"))?;

        // The kernel runs beside its servers, not on them: off every CPU a server is pinned to
        // (when that leaves one). At the kernel's priority, woken by a crash report or a death
        // on the server's CPU (the waker's), it preempted the failing process before that could
        // die, and the spare after it: on two CPUs, 0.2-1.2 ms of the kernel's own bookkeeping
        // on the server's CPU in a traced SIGSEGV recovery by the spare. Zygotes get the
        // starting set back (`zygotes.rs`), so unpinned servers run anywhere as before.
        let cpus = process::affinity().ok();
        let pinned: Vec<usize> = manifest.servers.iter().filter_map(|s| s.cpu).collect();
        if let Some(set) = cpus
            .as_ref()
            .and_then(|c| process::without_cpus(c, &pinned))
        {
            let _ = process::set_affinity(0, &set);
        }

        let mut servers = Vec::new();
        let mut first = Vec::new();
        for (i, spec) in manifest.servers.iter().enumerate() {
            let (s, cmds) = Server::create(i, spec, &opts.system, 0)?;
            servers.push(s);
            first.push(cmds);
        }
        let confirm_timer = rustix::time::timerfd_create(
            rustix::time::TimerfdClockId::Monotonic,
            rustix::time::TimerfdFlags::CLOEXEC | rustix::time::TimerfdFlags::NONBLOCK,
        )
        .map_err(os("timerfd"))?;
        let mut k = Kernel {
            manifest,
            opts,
            epoll,
            listener,
            socket_path,
            sigfd,
            timer,
            servers,
            clients: HashMap::new(),
            next_client: 1,
            shutting_down: false,
            ready_announced: false,
            started: Instant::now(),
            buf: vec![0u8; proto::MAX_CONTROL_MSG],
            owner_uid: rustix::process::getuid().as_raw(),
            decisions: Default::default(),
            fuse: Default::default(),
            confirm_timer,
            accept_paused: false,
            fd_shortage: None,
            fatal: None,
            server_nice,
            server_cpus: cpus,
        };
        if !boosted {
            k.log(format!(
                "kernel: could not raise its own priority (nice {server_nice} - {KERNEL_NICE_BOOST}: no CAP_SYS_NICE or RLIMIT_NICE); it runs at its servers' nice {server_nice}, so a busy machine may delay its sight of a fault"
            ));
        }
        k.watch(k.listener.as_fd(), token(T_LISTEN, 0, 0))?;
        k.watch(k.sigfd.as_fd(), token(T_SIGNAL, 0, 0))?;
        k.watch(k.timer.as_fd(), token(T_TIMER, 0, 0))?;
        k.watch(k.confirm_timer.as_fd(), token(T_CONFIRM, 0, 0))?;
        let tick = k
            .servers
            .iter()
            .map(|s| s.spec.deadline_ms / 4)
            .min()
            .unwrap_or(100)
            .clamp(1, 100);
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: (tick * 1_000_000) as _,
        };
        rustix::time::timerfd_settime(
            &k.timer,
            rustix::time::TimerfdTimerFlags::empty(),
            &rustix::time::Itimerspec {
                it_interval: ts,
                it_value: ts,
            },
        )
        .map_err(os("timerfd_settime"))?;
        for (i, cmds) in first.into_iter().enumerate() {
            // The lifecycle's first command: start the zygote.
            debug_assert_eq!(cmds, vec![txipc_core::lifecycle::Command::StartZygote]);
            if let Err(e) = k.start_zygote(i) {
                // Stop the zygotes already started and remove the socket: a failed boot leaves
                // nothing behind.
                k.shutdown();
                return Err(e);
            }
        }
        Ok(k)
    }
}

pub(crate) fn txipc_sys_connect_probe(path: &std::path::Path) -> bool {
    let Ok(sock) = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = rustix::net::SocketAddrUnix::new(path) else {
        return false;
    };
    rustix::net::connect(&sock, &addr).is_ok()
}
