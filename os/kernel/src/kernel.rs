//! The kernel's event loop.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::epoll;
use rustix::process::Signal;
use txipc_chan::{ChannelLayout, Doorbell, KernelChannel, SlotState, Status};
use txipc_core::manifest::{Manifest, Policy, Principal, ServerSpec};
use txipc_core::proto::{
    self, Connected, ErrorKind, FromServer, FromZygote, KernelError as WireError, Request,
    Response, ServerConfig, ServerInfo, ToServer, ToZygote, ZygoteInit,
};
use txipc_core::recovery::{
    FailReason, LogState, RestartDecision, RestartGovernor, SlotAction, TakenSlot, decide_slot,
};
use txipc_sys::crash::{CrashKind, CrashReport};
use txipc_sys::status::StatusPage;
use txipc_sys::{fdpass, process};

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

/// Why the kernel could not boot or run.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Another system of that name runs.
    #[error(
        "a system named `{0}` is already running (its socket answers): stop it first, or pick another --system name"
    )]
    AlreadyRunning(String),
    /// A server did not come up.
    #[error("server `{server}` failed to start: {reason}")]
    ServerStart {
        /// Which.
        server: String,
        /// Why.
        reason: String,
    },
    /// An OS call failed.
    #[error("{op}: {err}")]
    Os {
        /// What was being done.
        op: String,
        /// The error.
        err: String,
    },
}

fn os<E: std::fmt::Display>(op: impl Into<String>) -> impl FnOnce(E) -> KernelError {
    let op = op.into();
    move |e| KernelError::Os {
        op,
        err: e.to_string(),
    }
}

// Event tokens: kind in the top byte, server index in the next 16 bits, an id below.
const T_LISTEN: u64 = 1;
const T_CLIENT: u64 = 2;
const T_ZYGOTE: u64 = 3;
const T_ZYGOTE_PID: u64 = 4;
const T_INC_CTL: u64 = 5;
const T_INC_PID: u64 = 6;
const T_SIGNAL: u64 = 7;
const T_TIMER: u64 = 8;

/// Doorbell event bit: control messages wait on the incarnation's socket.
const CONTROL_EVENT: u32 = 1;

fn token(kind: u64, server: usize, id: u64) -> u64 {
    (kind << 56) | ((server as u64 & 0xffff) << 40) | (id & 0xff_ffff_ffff)
}
fn untoken(t: u64) -> (u64, usize, u64) {
    (t >> 56, ((t >> 40) & 0xffff) as usize, t & 0xff_ffff_ffff)
}

/// Heaps are mapped at `HEAP_BASE + index * HEAP_STRIDE` in every incarnation.
const HEAP_BASE: u64 = 0x2000_0000_0000;
const HEAP_STRIDE: u64 = 0x100_0000_0000;

#[derive(Debug)]
struct Inc {
    generation: u64,
    pid: i32,
    pidfd: OwnedFd,
    sock: OwnedFd,
}

#[derive(Debug)]
struct Zygote {
    child: Child,
    pidfd: OwnedFd,
    sock: OwnedFd,
    ready: bool,
}

/// Who holds the client end of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// An outside client, by its control connection.
    Client(u64),
    /// A server of this system, opened inside transaction `txid` (a kernel object logged under
    /// that transaction: revoked if it rolls back).
    Server { server: usize, txid: u64 },
}

#[derive(Debug)]
struct Chan {
    fd: OwnedFd,
    k: KernelChannel,
    owner: Owner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SrvState {
    Booting,
    Running,
    Recovering,
    Held,
    Dead,
}

impl SrvState {
    fn as_str(self) -> &'static str {
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
struct Server {
    spec: ServerSpec,
    config: ServerConfig,
    heap_fd: OwnedFd,
    log_fd: OwnedFd,
    doorbell_fd: OwnedFd,
    status_fd: OwnedFd,
    status: StatusPage,
    doorbell: Doorbell,
    zygote: Option<Zygote>,
    active: Option<Inc>,
    standby: Option<Inc>,
    /// Our end of the socket of the incarnation being forked.
    spawning: Option<OwnedFd>,
    next_gen: u64,
    channels: BTreeMap<u32, Chan>,
    next_chan: u32,
    governor: RestartGovernor,
    state: SrvState,
    restarts: u64,
    aborted: u64,
    retried: u64,
    fault_at: Option<Instant>,
    last_recovery_us: Option<f64>,
    restart_at: Option<Instant>,
    /// Watchdog: the busy transaction last seen, and since when.
    watch: Option<(u64, Instant)>,
    fresh_next: bool,
    /// Incarnations killed after recovery whose pidfds we still watch (to drop them).
    zombies: HashMap<u64, Inc>,
    /// Failed incarnations, stopped (or dead), kept until their successor serves: killing them
    /// earlier would put their address-space teardown on the recovery path.
    doomed: Vec<Inc>,
}

#[derive(Debug)]
struct ClientConn {
    sock: OwnedFd,
    principal: Principal,
    channels: Vec<(usize, u32)>,
}

struct Kernel {
    manifest: Manifest,
    opts: Options,
    epoll: OwnedFd,
    listener: OwnedFd,
    socket_path: PathBuf,
    sigfd: SignalFd,
    timer: OwnedFd,
    servers: Vec<Server>,
    clients: HashMap<u64, ClientConn>,
    next_client: u64,
    shutting_down: bool,
    ready_announced: bool,
    started: Instant,
    buf: Vec<u8>,
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

impl Kernel {
    fn boot(manifest: Manifest, opts: Options) -> Result<Kernel, KernelError> {
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

        let dir = txipc_core::paths::runtime_dir();
        std::fs::create_dir_all(&dir).map_err(os(format!("creating {}", dir.display())))?;
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
                    std::fs::create_dir_all(&dir)
                        .map_err(os(format!("creating {}", dir.display())))?;
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

        let mut servers = Vec::new();
        for (i, spec) in manifest.servers.iter().enumerate() {
            servers.push(Server::create(i, spec, &opts.system)?);
        }
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
        };
        k.watch(k.listener.as_fd(), token(T_LISTEN, 0, 0))?;
        k.watch(k.sigfd.as_fd(), token(T_SIGNAL, 0, 0))?;
        k.watch(k.timer.as_fd(), token(T_TIMER, 0, 0))?;
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
        for i in 0..k.servers.len() {
            if let Err(e) = k.start_zygote(i) {
                // Stop the zygotes already started and remove the socket: a failed boot leaves
                // nothing behind.
                k.shutdown();
                return Err(e);
            }
        }
        Ok(k)
    }

    fn watch(&self, fd: std::os::fd::BorrowedFd<'_>, tok: u64) -> Result<(), KernelError> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(tok),
            epoll::EventFlags::IN,
        )
        .map_err(os("epoll_ctl"))
    }

    fn unwatch(&self, fd: std::os::fd::BorrowedFd<'_>) {
        let _ = epoll::delete(&self.epoll, fd);
    }

    fn log(&self, msg: impl std::fmt::Display) {
        if self.opts.verbose {
            eprintln!(
                "[txipc kernel {:>9.3}s] {msg}",
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn start_zygote(&mut self, i: usize) -> Result<(), KernelError> {
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
        let pidfd = process::pidfd_open(child.id() as i32).map_err(os("pidfd_open"))?;
        let s = &self.servers[i];
        let init = ZygoteInit {
            config: s.config.clone(),
        };
        fdpass::send(
            &ours,
            &proto::encode(&init),
            &[
                s.heap_fd.as_fd(),
                s.log_fd.as_fd(),
                s.doorbell_fd.as_fd(),
                s.status_fd.as_fd(),
            ],
        )
        .map_err(|e| KernelError::ServerStart {
            server: s.spec.name.clone(),
            reason: format!(
                "{} did not take its init message ({e}): it exited at once — is it a txipc server binary (it must answer `__zygote`)?",
                s.spec.exec.as_deref().unwrap_or("the txipc binary")
            ),
        })?;
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

    fn event_loop(&mut self, on_ready: impl FnOnce(&std::path::Path)) -> Result<(), KernelError> {
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
                if self.shutting_down {
                    break;
                }
            }
            if !self.ready_announced && self.servers.iter().all(|s| s.state == SrvState::Running) {
                self.ready_announced = true;
                self.log("all servers running");
                if let Some(f) = on_ready.take() {
                    f(&self.socket_path);
                }
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, tok: u64) -> Result<(), KernelError> {
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
            _ => {}
        }
        Ok(())
    }

    // ---- signals and timer ----

    fn on_signal(&mut self) {
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            if info.ssi_signo == NixSignal::SIGCHLD as u32 {
                process::reap_children();
            } else {
                self.log("signal: shutting down");
                self.shutting_down = true;
            }
        }
    }

    fn on_tick(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.timer, &mut buf);
        let now = Instant::now();
        for i in 0..self.servers.len() {
            let s = &self.servers[i];
            // Delayed restarts (minimum interval between restarts).
            if s.state == SrvState::Recovering && s.restart_at.is_some_and(|t| Instant::now() >= t)
            {
                self.servers[i].restart_at = None;
                self.activate_or_spawn(i);
                continue;
            }
            // Hangs: the same batch seen busy for longer than the deadline. (The server only
            // stores its transaction id; the kernel keeps the clock, so the call path pays no
            // clock read.)
            if s.state == SrvState::Running && s.active.is_some() {
                let busy = s.status.busy();
                let hung = match self.servers[i].watch {
                    Some((txid, since)) if txid == busy && busy != 0 => {
                        now.duration_since(since) > Duration::from_millis(s.spec.deadline_ms)
                    }
                    _ => {
                        self.servers[i].watch = (busy != 0).then_some((busy, now));
                        false
                    }
                };
                let s = &self.servers[i];
                if hung {
                    let pid = s.active.as_ref().map_or(0, |a| a.pid);
                    self.log(format!(
                        "{}: call exceeded {} ms deadline (pid {pid}): stopping it",
                        s.spec.name, s.spec.deadline_ms
                    ));
                    if let Some(a) = &s.active {
                        let _ = process::pidfd_signal(&a.pidfd, Signal::STOP);
                    }
                    self.fault(i, "hang");
                }
            }
        }
    }

    // ---- clients ----

    fn accept(&mut self) {
        loop {
            let sock = match rustix::net::accept_with(
                &self.listener,
                rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            ) {
                Ok(s) => s,
                Err(_) => return,
            };
            let uid = match rustix::net::sockopt::socket_peercred(&sock) {
                Ok(c) => c.uid.as_raw(),
                Err(_) => continue,
            };
            let id = self.next_client;
            self.next_client += 1;
            if self.watch(sock.as_fd(), token(T_CLIENT, 0, id)).is_err() {
                continue;
            }
            self.clients.insert(
                id,
                ClientConn {
                    sock,
                    principal: Principal::Uid(uid),
                    channels: Vec::new(),
                },
            );
        }
    }

    fn on_client(&mut self, id: u64) {
        loop {
            let Some(c) = self.clients.get(&id) else {
                return;
            };
            let msg = fdpass::recv(&c.sock, &mut self.buf, true);
            let (n, _fds) = match msg {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(_) => {
                    self.drop_client(id);
                    return;
                }
            };
            let resp = match proto::decode::<Request>(&self.buf[..n]) {
                Ok(Request::Connect { version, service }) => {
                    if version != proto::PROTO_VERSION {
                        Err(WireError {
                            kind: ErrorKind::BadRequest,
                            message: format!(
                                "client protocol version {version}, kernel speaks {}: use the same txipc build for both",
                                proto::PROTO_VERSION
                            ),
                        })
                    } else {
                        self.connect(id, &service)
                    }
                }
                Ok(Request::Ps) => Ok((Response::Ps(self.ps()), None)),
                Ok(Request::Inject {
                    server,
                    kind,
                    point,
                }) => match self.manifest.server(&server) {
                    Some((si, _)) => {
                        self.servers[si].status.arm(kind as u8, point as u8);
                        self.log(format!("{server}: fail point armed: {kind:?} at {point:?}"));
                        Ok((Response::Ok, None))
                    }
                    None => Err(WireError {
                        kind: ErrorKind::UnknownService,
                        message: format!("no server `{server}`"),
                    }),
                },
                Ok(Request::Shutdown) => {
                    self.shutting_down = true;
                    Ok((Response::Ok, None))
                }
                Err(e) => Err(WireError {
                    kind: ErrorKind::BadRequest,
                    message: e.to_string(),
                }),
            };
            let c = &self.clients[&id];
            let sent = match resp {
                Ok((r, Some(si_ci))) => {
                    let (si, ci) = si_ci;
                    let s = &self.servers[si];
                    fdpass::send(
                        &c.sock,
                        &proto::encode(&r),
                        &[s.channels[&ci].fd.as_fd(), s.doorbell_fd.as_fd()],
                    )
                }
                Ok((r, None)) => fdpass::send(&c.sock, &proto::encode(&r), &[]),
                Err(e) => fdpass::send(&c.sock, &proto::encode(&Response::Error(e)), &[]),
            };
            if sent.is_err() {
                self.drop_client(id);
                return;
            }
            if self.shutting_down {
                return;
            }
        }
    }

    fn connect(
        &mut self,
        client: u64,
        service: &str,
    ) -> Result<(Response, Option<(usize, u32)>), WireError> {
        let who = self.clients[&client].principal.clone();
        let (si, info) = self.open_channel(&who, service, Owner::Client(client))?;
        self.clients
            .get_mut(&client)
            .expect("client exists")
            .channels
            .push((si, info.channel));
        let ci = info.channel;
        Ok((Response::Connected(info), Some((si, ci))))
    }

    /// Checks the grant, creates a channel to `service` for `who`, hands it to the service's
    /// incarnations. Returns the target server's index and the grant.
    fn open_channel(
        &mut self,
        who: &Principal,
        service: &str,
        owner: Owner,
    ) -> Result<(usize, Connected), WireError> {
        let Some((si, _)) = self.manifest.server(service) else {
            let known: Vec<&str> = self
                .manifest
                .servers
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            return Err(WireError {
                kind: ErrorKind::UnknownService,
                message: format!(
                    "no service `{service}` in system `{}` (it has: {})",
                    self.opts.system,
                    known.join(", ")
                ),
            });
        };
        if !self.manifest.is_granted(who, service) {
            return Err(WireError {
                kind: ErrorKind::NotGranted,
                message: format!(
                    "permission denied: the manifest grants {who:?} no access to `{service}` (add a [[grant]] for it)"
                ),
            });
        }
        let s = &mut self.servers[si];
        if matches!(s.state, SrvState::Dead | SrvState::Held) {
            return Err(WireError {
                kind: ErrorKind::Unavailable,
                message: format!(
                    "service `{service}` is {} and takes no new connections",
                    s.state.as_str()
                ),
            });
        }
        let layout = ChannelLayout {
            nslots: s.spec.slots,
            req_cap: s.spec.request_max,
            reply_cap: s.spec.reply_max,
        };
        let index = s.next_chan;
        let fd = txipc_chan::create_channel(&format!("txipc-chan-{service}-{index}"), layout)
            .map_err(internal)?;
        let k = KernelChannel::map(fd.as_fd()).map_err(internal)?;
        let generation = s
            .active
            .as_ref()
            .map_or(s.next_gen.saturating_sub(1), |a| a.generation);
        k.set_generation(generation);
        s.next_chan += 1;
        for inc in [&s.active, &s.standby].into_iter().flatten() {
            let _ = fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::AddChannels {
                    indices: vec![index],
                }),
                &[fd.as_fd()],
            );
        }
        s.doorbell.notify(CONTROL_EVENT);
        s.channels.insert(index, Chan { fd, k, owner });
        Ok((
            si,
            Connected {
                service: service.into(),
                channel: index,
                generation,
                policy: s.spec.policy,
            },
        ))
    }

    /// Revokes channel `ci` of server `si`: its client's calls fail with `Revoked`, the server
    /// stops serving it, the memfd is dropped.
    fn revoke_channel(&mut self, si: usize, ci: u32) {
        let s = &mut self.servers[si];
        if let Some(ch) = s.channels.remove(&ci) {
            ch.k.mark_revoked();
            for inc in [&s.active, &s.standby].into_iter().flatten() {
                let _ = fdpass::send(
                    &inc.sock,
                    &proto::encode(&ToServer::RemoveChannel { index: ci }),
                    &[],
                );
            }
            s.doorbell.notify(CONTROL_EVENT);
        }
    }

    /// A server asks for a channel to another service (inside transaction `txid`).
    fn server_connect(&mut self, i: usize, generation: u64, service: &str, txid: u64) {
        let who = Principal::Server(self.servers[i].spec.name.clone());
        let result = self.open_channel(&who, service, Owner::Server { server: i, txid });
        let s = &self.servers[i];
        let Some(inc) = s.incarnation(generation) else {
            return;
        };
        let _ = match &result {
            Ok((ti, info)) => {
                let t = &self.servers[*ti];
                let fds = [t.channels[&info.channel].fd.as_fd(), t.doorbell_fd.as_fd()];
                // The standby inherits it at once; if the transaction rolls back, the channel
                // is revoked and the standby's runtime drops it when it finds it revoked.
                if let Some(sb) = s.standby.as_ref().filter(|sb| sb.generation != generation) {
                    let _ = fdpass::send(
                        &sb.sock,
                        &proto::encode(&ToServer::Connected(info.clone())),
                        &fds,
                    );
                }
                fdpass::send(
                    &inc.sock,
                    &proto::encode(&ToServer::Connected(info.clone())),
                    &fds,
                )
            }
            Err(e) => fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::ConnectRefused {
                    service: service.into(),
                    message: e.message.clone(),
                }),
                &[],
            ),
        };
        let name = self.servers[i].spec.name.clone();
        match result {
            Ok(_) => self.log(format!(
                "{name}: opened a channel to {service} in transaction {txid}"
            )),
            Err(e) => self.log(format!(
                "{name}: channel to {service} refused: {}",
                e.message
            )),
        }
    }

    /// Channels opened by server `i`, which every new incarnation of it inherits.
    fn outgoing_of(&self, i: usize) -> Vec<(usize, u32)> {
        let mut v = Vec::new();
        for (ti, t) in self.servers.iter().enumerate() {
            for (ci, c) in &t.channels {
                if matches!(c.owner, Owner::Server { server, .. } if server == i) {
                    v.push((ti, *ci));
                }
            }
        }
        v
    }

    /// Undoes the kernel objects server `i` created in transaction `txid`, which was rolled
    /// back: its channels are revoked.
    fn undo_kernel_objects(&mut self, i: usize, txid: u64) -> usize {
        let doomed: Vec<(usize, u32)> = self
            .servers
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                t.channels
                    .iter()
                    .filter(move |(_, c)| c.owner == Owner::Server { server: i, txid })
                    .map(move |(ci, _)| (ti, *ci))
            })
            .collect();
        for &(ti, ci) in &doomed {
            self.revoke_channel(ti, ci);
        }
        doomed.len()
    }

    fn drop_client(&mut self, id: u64) {
        let Some(c) = self.clients.remove(&id) else {
            return;
        };
        self.unwatch(c.sock.as_fd());
        for (si, ci) in c.channels {
            self.revoke_channel(si, ci);
        }
    }

    fn ps(&self) -> Vec<ServerInfo> {
        self.servers
            .iter()
            .map(|s| ServerInfo {
                name: s.spec.name.clone(),
                pid: s.active.as_ref().map_or(0, |a| a.pid),
                generation: s.active.as_ref().map_or(0, |a| a.generation),
                policy: s.spec.policy,
                tracking: s.spec.tracking,
                state: s.state.as_str().into(),
                restarts: s.restarts,
                aborted_requests: s.aborted,
                retried_requests: s.retried,
                calls: s.status.calls(),
                channels: s.channels.len() as u32,
                last_recovery_us: s.last_recovery_us,
            })
            .collect()
    }

    // ---- zygotes and incarnations ----

    fn on_zygote(&mut self, i: usize) -> Result<(), KernelError> {
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
                    self.spawn_incarnation(i);
                }
                Ok(FromZygote::Spawned { generation, pid }) if fds.len() == 1 => {
                    let pidfd = fds.pop().expect("one fd");
                    self.on_spawned(i, generation, pid, pidfd);
                }
                Ok(FromZygote::Failed { message }) => {
                    let name = self.servers[i].spec.name.clone();
                    self.servers[i].spawning = None;
                    if self.servers[i].state == SrvState::Booting {
                        return Err(KernelError::ServerStart {
                            server: name,
                            reason: message,
                        });
                    }
                    self.log(format!("{name}: zygote failed: {message}"));
                }
                _ => self.log("malformed message from a zygote"),
            }
        }
    }

    fn on_zygote_died(&mut self, i: usize) -> Result<(), KernelError> {
        let Some(mut z) = self.servers[i].zygote.take() else {
            return Ok(());
        };
        self.unwatch(z.pidfd.as_fd());
        self.unwatch(z.sock.as_fd());
        let status = z.child.wait().ok();
        let name = self.servers[i].spec.name.clone();
        if self.servers[i].state == SrvState::Booting {
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
            self.start_zygote(i)?;
        }
        Ok(())
    }

    fn spawn_incarnation(&mut self, i: usize) {
        let s = &mut self.servers[i];
        if s.spawning.is_some() || s.standby.is_some() {
            return;
        }
        let Some(z) = &s.zygote else { return };
        if !z.ready {
            return;
        }
        let Ok((ours, theirs)) = fdpass::seqpacket_pair() else {
            return;
        };
        let generation = s.next_gen;
        s.next_gen += 1;
        if fdpass::send(
            &z.sock,
            &proto::encode(&ToZygote::Spawn { generation }),
            &[theirs.as_fd()],
        )
        .is_ok()
        {
            s.spawning = Some(ours);
        }
    }

    fn on_spawned(&mut self, i: usize, generation: u64, pid: i32, pidfd: OwnedFd) {
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
                &[t.channels[&ci].fd.as_fd(), t.doorbell_fd.as_fd()],
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
    fn activate_or_spawn(&mut self, i: usize) {
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
        let sent = fdpass::send(
            &inc.sock,
            &proto::encode(&ToServer::Activate { generation, fresh }),
            &[],
        );
        s.active = Some(inc);
        // The next standby is forked once this one serves (`Active`), so that the fork does
        // not compete with the activation for the CPU. If the send failed, the incarnation
        // died as a standby: its pidfd reports it and recovery starts over.
        let _ = sent;
    }

    fn on_inc_msg(&mut self, i: usize, generation: u64) {
        loop {
            let s = &self.servers[i];
            let Some(inc) = s.incarnation(generation) else {
                return;
            };
            let (n, _fds) = match fdpass::recv(&inc.sock, &mut self.buf, true) {
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
                let what = match report.kind {
                    CrashKind::Signal(sig) => format!("signal {sig}"),
                    CrashKind::Panic => "panic".into(),
                    CrashKind::Integrity => "integrity check".into(),
                };
                if is_active {
                    self.fault(i, &what);
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
                            let s = &mut self.servers[i];
                            s.last_recovery_us = Some(us);
                            let name = s.spec.name.clone();
                            self.log(format!(
                                "{name}: generation {g} serving, recovered in {us:.0} µs"
                            ));
                        }
                    }
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

    fn on_inc_died(&mut self, i: usize, generation: u64) {
        let s = &mut self.servers[i];
        if s.active
            .as_ref()
            .is_some_and(|a| a.generation == generation)
        {
            self.fault(i, "death");
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
    fn retire(&mut self, i: usize, inc: Inc) {
        let _ = process::pidfd_signal(&inc.pidfd, Signal::KILL);
        self.unwatch(inc.sock.as_fd());
        self.servers[i].zombies.insert(inc.generation, inc);
    }

    // ---- recovery ----

    /// The active incarnation faulted (crash report, death or hang). Confirms it cannot run,
    /// recovers shared state, and restarts per policy.
    fn fault(&mut self, i: usize, cause: &str) {
        let now = Instant::now();
        let Some(old) = self.servers[i].active.take() else {
            return;
        };
        let name = self.servers[i].spec.name.clone();
        if !process::wait_not_running(old.pid, Duration::from_millis(500)) {
            // It did not stop (a crash report from a process that keeps running): kill it and
            // wait for its death before touching anything it could still write.
            let _ = process::pidfd_signal(&old.pidfd, Signal::KILL);
            let _ = rustix::event::poll(
                &mut [rustix::event::PollFd::new(
                    &old.pidfd,
                    rustix::event::PollFlags::IN,
                )],
                Some(&rustix::time::Timespec {
                    tv_sec: 5,
                    tv_nsec: 0,
                }),
            );
        }
        let s = &mut self.servers[i];
        s.fault_at = Some(now);
        s.state = SrvState::Recovering;
        let now_ms = self.started.elapsed().as_millis() as u64;
        let decision = s.governor.on_failure(now_ms);
        let held = matches!(decision, RestartDecision::HoldDown | RestartDecision::Never);
        let (summary, log_state) = recover_shared_state(s, held);
        let undone_objects = match log_state {
            LogState::Active(t) => self.undo_kernel_objects(i, t),
            _ => 0,
        };
        let summary = format!("{summary}, {undone_objects} kernel objects undone");
        let old_generation = old.generation;
        self.unwatch(old.sock.as_fd());
        self.servers[i].doomed.push(old);
        let s = &mut self.servers[i];
        match decision {
            RestartDecision::Now => {
                s.restarts += 1;
                // The standby first; the old incarnation is killed once the new one serves.
                self.activate_or_spawn(i);
            }
            RestartDecision::After(ms) => {
                s.restarts += 1;
                s.restart_at = Some(Instant::now() + Duration::from_millis(ms));
                self.kill_doomed(i);
            }
            RestartDecision::HoldDown | RestartDecision::Never => {
                s.state = if decision == RestartDecision::Never {
                    SrvState::Dead
                } else {
                    SrvState::Held
                };
                s.fault_at = None;
                for c in s.channels.values() {
                    c.k.mark_dead();
                    fail_posted(&c.k);
                }
                if let Some(sb) = s.standby.take() {
                    self.retire(i, sb);
                }
                self.kill_doomed(i);
            }
        }
        self.log(format!(
            "{name}: generation {old_generation} failed ({cause}); {summary}; decision {decision:?}"
        ));
    }

    /// Kills the failed incarnations of server `i`, at the lowest priority so that their
    /// address-space teardown yields to the servers that run.
    fn kill_doomed(&mut self, i: usize) {
        for inc in std::mem::take(&mut self.servers[i].doomed) {
            if let Some(pid) = rustix::process::Pid::from_raw(inc.pid) {
                let _ = rustix::process::setpriority_process(Some(pid), 19);
            }
            let _ = process::pidfd_signal(&inc.pidfd, Signal::KILL);
            self.servers[i].zombies.insert(inc.generation, inc);
        }
    }

    fn shutdown(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        for s in &mut self.servers {
            for inc in [&s.active, &s.standby].into_iter().flatten() {
                let _ = fdpass::send(&inc.sock, &proto::encode(&ToServer::Shutdown), &[]);
            }
            s.doorbell.notify(CONTROL_EVENT);
        }
        // Incarnations first (they die with their zygote anyway), then zygotes.
        for s in &mut self.servers {
            for inc in [s.active.take(), s.standby.take()]
                .into_iter()
                .flatten()
                .chain(std::mem::take(&mut s.zombies).into_values())
                .chain(std::mem::take(&mut s.doomed))
            {
                wait_or_kill(&inc.pidfd, deadline);
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

fn wait_or_kill(pidfd: &OwnedFd, deadline: Instant) {
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

fn internal(e: impl std::fmt::Display) -> WireError {
    WireError {
        kind: ErrorKind::Internal,
        message: e.to_string(),
    }
}

fn txipc_sys_connect_probe(path: &std::path::Path) -> bool {
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

/// Fails every POSTED slot with `Unavailable` (the server will not run again).
fn fail_posted(k: &KernelChannel) {
    for snap in k.slots() {
        if snap.state == SlotState::Posted {
            k.fail(snap.slot, snap.seq, Status::Unavailable);
        }
    }
}

/// Rolls back the heap if needed and settles every TAKEN slot (ARCHITECTURE.md §6). Returns a
/// one-line summary for the log.
fn recover_shared_state(s: &mut Server, held: bool) -> (String, LogState) {
    let policy = s.spec.policy;
    let mut log_state = LogState::Idle;
    let mut batch = Vec::new();
    let mut undone = 0u64;
    match policy {
        Policy::Txipc => match txipc_heap::recover(s.heap_fd.as_fd(), s.log_fd.as_fd()) {
            Ok(r) => {
                log_state = match r.prior {
                    txipc_heap::TxState::Idle => LogState::Idle,
                    txipc_heap::TxState::Active(t) => LogState::Active(t),
                    txipc_heap::TxState::Committed(t) => LogState::Committed(t),
                    txipc_heap::TxState::Aborted(t) => LogState::Aborted(t),
                };
                batch = r.batch;
                undone = r.undone.records;
            }
            Err(e) => {
                // The log is unreadable: the heap cannot be trusted. Hold the server down
                // rather than serve corrupt state.
                eprintln!(
                    "txipc kernel: {}: undo log unusable ({e}); holding the server down",
                    s.spec.name
                );
                for c in s.channels.values() {
                    c.k.mark_dead();
                }
                return (format!("log unusable: {e}"), LogState::Idle);
            }
        },
        Policy::Restart => {
            // Restart empty: zero the heap and log (sparse again), the next incarnation formats.
            let size = s.config.heap_size;
            let _ = rustix::fs::ftruncate(&s.heap_fd, 0);
            let _ = rustix::fs::ftruncate(&s.heap_fd, size);
            let log_size = s.spec.log_mb << 20;
            let _ = rustix::fs::ftruncate(&s.log_fd, 0);
            let _ = rustix::fs::ftruncate(&s.log_fd, log_size);
            s.fresh_next = true;
        }
        Policy::None => {}
    }
    // Crash point "after REPLIED, before the wake": the client sleeps on a slot that is
    // already answered. Wake every sleeper; each re-checks its slot.
    for c in s.channels.values() {
        c.k.wake_waiters();
    }
    let committed = matches!(log_state, LogState::Committed(_));
    let (mut published, mut reposted, mut failed) = (0, 0, 0);
    for (&ci, c) in &s.channels {
        for snap in c.k.slots() {
            if snap.state != SlotState::Taken {
                continue;
            }
            let in_batch = committed
                && batch
                    .iter()
                    .any(|b| b.chan == ci && b.slot as usize == snap.slot && b.seq == snap.seq);
            let action = decide_slot(
                policy,
                s.spec.retry_limit,
                held,
                TakenSlot {
                    in_committed_batch: in_batch,
                    attempt: snap.attempt,
                },
            );
            match action {
                SlotAction::PublishWritten => {
                    if c.k.publish_written(snap.slot, snap.seq) {
                        published += 1;
                    }
                }
                SlotAction::Repost => {
                    if c.k.repost(snap.slot, snap.seq) {
                        reposted += 1;
                        s.retried += 1;
                    }
                }
                SlotAction::Fail(reason) => {
                    let status = match reason {
                        FailReason::Poison { .. } => {
                            s.aborted += 1;
                            Status::Aborted
                        }
                        FailReason::Restarted => Status::Restarted,
                        FailReason::Unavailable => Status::Unavailable,
                    };
                    if c.k.fail(snap.slot, snap.seq, status) {
                        failed += 1;
                    }
                }
            }
        }
    }
    (
        format!(
            "log {log_state:?}, {undone} records undone, {published} replies published, {reposted} re-posted, {failed} failed"
        ),
        log_state,
    )
}

impl Server {
    /// The active or standby incarnation of `generation`.
    fn incarnation(&self, generation: u64) -> Option<&Inc> {
        [&self.active, &self.standby]
            .into_iter()
            .flatten()
            .find(|inc| inc.generation == generation)
    }

    fn create(i: usize, spec: &ServerSpec, system: &str) -> Result<Server, KernelError> {
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
        })
    }
}
