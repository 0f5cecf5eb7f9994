//! Zygote, standby and the event loop of a server incarnation.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use txipc_chan::{Doorbell, ServerChannel, SlotReply, Status};
use txipc_core::failpoint::{FailPoint, SITE_AFTER_TAKE, SITE_BEFORE_REPLY, SITE_PUBLISHED};
use txipc_core::latency;
use txipc_core::manifest::{Policy, Tracking as ManifestTracking};
use txipc_core::proto::{
    self, FromServer, FromZygote, ServerConfig, ToServer, ToZygote, ZygoteInit,
};
use txipc_heap::{BatchEntry, Heap, RootId, Tracking, Tx};
use txipc_service::{CallError, Dispatch, DispatchError, ReplyWriter, Transport};

use crate::client::{Channel, ClientError};
use crate::nested;
use txipc_sys::{fdpass, process, status::StatusPage};

/// Where the runtime lends the running transaction to the server while it handles a request.
///
/// The runtime opens the transaction (begin, batch descriptor), puts it here, calls the
/// dispatcher, takes it back and commits it after the replies are written: the server can
/// change its heap only between those two points, and only through this transaction.
#[derive(Debug, Default)]
pub struct TxCell {
    tx: Option<Tx<'static>>,
}

impl TxCell {
    /// An empty cell.
    pub fn new() -> TxCell {
        TxCell { tx: None }
    }

    /// The running transaction. Called only from inside a handler; outside one it is a broken
    /// runtime contract, reported as an integrity fault (the request is rolled back and
    /// retried like any crash).
    pub fn tx(&mut self) -> &mut Tx<'static> {
        match self.tx.as_mut() {
            Some(tx) => tx,
            None => txipc_sys::crash::report_and_stop(txipc_sys::crash::CrashKind::Integrity),
        }
    }

    /// Lends `tx` to the handlers that run next: what the serve loop does after its begin
    /// (public for drivers that run an [`Instance`] in process, such as the allocation test of
    /// the kv server's get path).
    pub fn put(&mut self, tx: Tx<'static>) {
        self.tx = Some(tx);
    }

    /// Opens transaction `txid` of `heap` straight in this cell and lends it to the handlers
    /// that run next ([`Heap::begin_into`]: lazily when `lazy`, as
    /// [`Heap::begin_lazy_in`] does): the serve loop's begin, with no move of the
    /// transaction object. Returns it, for the batch entries.
    ///
    /// # Errors
    /// As [`Heap::begin_in`]; [`txipc_heap::HeapError::TxOpen`] if this cell holds an open
    /// transaction (it stays).
    #[inline]
    pub fn begin(
        &mut self,
        heap: &'static Heap,
        txid: u64,
        root: Option<RootId>,
        lazy: bool,
    ) -> Result<&mut Tx<'static>, txipc_heap::HeapError> {
        heap.begin_into(txid, root, lazy, &mut self.tx)
    }

    /// Takes the lent transaction back, to commit or abort it.
    pub fn take(&mut self) -> Option<Tx<'static>> {
        self.tx.take()
    }
}

/// A server whose handlers run inside the runtime's transactions.
pub trait TxHost {
    /// The cell the runtime lends the running transaction through.
    fn tx_cell(&mut self) -> &mut TxCell;
}

/// A server instance as the runtime drives it. Every `#[service]` dispatcher whose server is a
/// [`TxHost`] is one.
pub trait Instance {
    /// Runs one request inside the transaction the runtime opened. `reply` is filled with the
    /// encoded reply (a `Vec<u8>`, or the slot of the request, written straight into).
    fn handle(
        &mut self,
        method: u32,
        request: &[u8],
        reply: &mut dyn ReplyWriter,
    ) -> Result<(), DispatchError>;
    /// The cell the runtime lends the running transaction through.
    fn tx_cell(&mut self) -> &mut TxCell;
}

impl<D> Instance for D
where
    D: Dispatch,
    D::Inner: TxHost,
{
    #[inline]
    fn handle(
        &mut self,
        method: u32,
        request: &[u8],
        reply: &mut dyn ReplyWriter,
    ) -> Result<(), DispatchError> {
        self.dispatch(method, request, reply)
    }
    fn tx_cell(&mut self) -> &mut TxCell {
        self.inner_mut().tx_cell()
    }
}

/// What a built-in server's constructor receives.
#[derive(Debug)]
pub struct StartArgs<'a> {
    /// The heap, attached at its fixed address in the tracking mode of the server's policy. It
    /// lives as long as the incarnation.
    pub heap: &'static Heap,
    /// The server's configuration.
    pub config: &'a ServerConfig,
    /// True when the heap was just formatted (first boot, or policy `restart`).
    pub fresh: bool,
}

/// A server compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Its name in manifests (`builtin = "..."`).
    pub name: &'static str,
    /// Builds the server on its heap (find the root, or create it when fresh).
    pub start: fn(StartArgs<'_>) -> Result<Box<dyn Instance>, String>,
}

thread_local! {
    static ATTEMPT: Cell<u32> = const { Cell::new(0) };
    /// The transaction being run (0 outside any).
    static TXID: Cell<u64> = const { Cell::new(0) };
    /// The control socket to the kernel.
    static CTL: RefCell<Option<Rc<OwnedFd>>> = const { RefCell::new(None) };
    /// Channels this server opened to other services, by service name.
    static OUTGOING: RefCell<HashMap<String, Outgoing>> = RefCell::new(HashMap::new());
    /// Whether this server's calls to others are nested transactions (policy txipc).
    static NESTED_ON: Cell<bool> = const { Cell::new(false) };
    /// Whether this server's calls to others are recorded in its message log (policy companion).
    static COMPANION_ON: Cell<bool> = const { Cell::new(false) };
    /// The heap of this incarnation (policy txipc), whose running transaction is begun lazily:
    /// activated before a handler's call or `connect` leaves the server (see
    /// [`activate_running_transaction`]).
    static HEAP: Cell<Option<&'static Heap>> = const { Cell::new(None) };
    /// Control messages that arrived while a handler waited for the kernel.
    static PENDING: RefCell<VecDeque<(Vec<u8>, Vec<OwnedFd>)>> = const { RefCell::new(VecDeque::new()) };
}

/// A channel this server opened to another service ([`connect`]): the transport of a client stub.
#[derive(Debug, Clone)]
pub struct Outgoing(Rc<Channel>);

impl Outgoing {
    /// What the kernel said when granting it.
    pub fn info(&self) -> &txipc_core::proto::Connected {
        self.0.info()
    }
}

/// The serve loop begins a root transaction lazily (`Heap::begin_lazy_in`: nothing shared is
/// written until its first heap write). Before anything whose outcome depends on that
/// transaction's commit record leaves the server — a nested call (the participant is then
/// prepared for this root, which the kernel decides from this log's header), or a kernel
/// object made for it (`connect`, undone by the kernel if the header says ACTIVE) — the
/// header must say ACTIVE(txid): this writes it now if the handler has not written yet.
fn activate_running_transaction() {
    if TXID.with(Cell::get) != 0 {
        if let Some(h) = HEAP.with(Cell::get) {
            h.activate_open();
        }
    }
}

impl Transport for Outgoing {
    /// Under policy txipc, a call made from inside a handler is part of the handler's
    /// transaction (a nested call, ARCHITECTURE.md §13); otherwise an ordinary call.
    fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        if NESTED_ON.with(Cell::get) {
            activate_running_transaction();
            nested::call(&self.0, TXID.with(Cell::get), method, request, reply)
        } else if COMPANION_ON.with(Cell::get) {
            crate::companion::outgoing_call(&self.0, method, request, reply)
        } else {
            self.0.call(method, request, reply)
        }
    }
}

/// Sets up a plain (ordinary-state) incarnation for calls to other servers: [`connect`] talks
/// to the kernel on `ctl`; under policy companion the calls go through its record.
pub(crate) fn init_plain_calls(ctl: &Rc<OwnedFd>, companion: bool) {
    CTL.with(|c| *c.borrow_mut() = Some(ctl.clone()));
    COMPANION_ON.with(|c| c.set(companion));
}

/// Reclaims the slots a previous incarnation left in the inherited outgoing channels.
pub(crate) fn adopt_outgoing() {
    OUTGOING.with(|o| {
        for out in o.borrow().values() {
            out.0.adopt_slots();
        }
    });
}

/// A control message that arrived while a handler waited for the kernel (in `connect`).
pub(crate) fn take_pending() -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    PENDING.with(|p| p.borrow_mut().pop_front())
}

/// Keeps a channel the kernel handed over (`Connected`), unless this process already has one
/// to that service that is not revoked: then that one stays, and the new one is dropped.
///
/// A following standby replays handlers, so it may ask for a channel (`connect`) while the
/// kernel's copy of the serving incarnation's channel is still queued on its control socket;
/// the kernel then opens a second channel for it. Replacing the first with it made the
/// standby, once activated, re-send a call by call id on another channel than the one its
/// callee had answered it on — and a callee keeps its answers per channel, so it ran the
/// call twice (a transfer's debit applied twice: `bank_storm_under_companion` with
/// `state_verified` false, wave 7). Kept, every incarnation calls on the same channel.
fn restore_outgoing(info: txipc_core::proto::Connected, fds: Vec<OwnedFd>) {
    let service = info.service.clone();
    let have = OUTGOING.with(|o| {
        o.borrow()
            .get(&service)
            .is_some_and(|out| !out.0.is_revoked())
    });
    if have {
        return;
    }
    if let Ok(ch) = Channel::from_fds(fds, info) {
        OUTGOING.with(|o| o.borrow_mut().insert(service, Outgoing(Rc::new(ch))));
    }
}

/// Opens (or finds again) a channel from this server to `service`. Called from a handler, the
/// channel is a kernel object of the running transaction: if the transaction rolls back, the
/// kernel revokes it; once committed, every later incarnation of this server inherits it, so
/// calling `connect` again after a restart finds it without asking the kernel.
pub fn connect(service: &str) -> Result<Outgoing, ClientError> {
    if let Some(o) = OUTGOING.with(|o| o.borrow().get(service).cloned()) {
        if !o.0.is_revoked() {
            return Ok(o);
        }
        // Revoked: it was opened in a transaction that rolled back. Ask again.
        OUTGOING.with(|m| m.borrow_mut().remove(service));
    }
    let ctl = CTL
        .with(|c| c.borrow().clone())
        .ok_or_else(|| ClientError::Io("connect is for servers run by the txipc runtime".into()))?;
    activate_running_transaction();
    let msg = FromServer::Connect {
        service: service.into(),
        txid: TXID.with(Cell::get),
    };
    fdpass::send(&*ctl, &proto::encode(&msg), &[]).map_err(|e| ClientError::Io(e.to_string()))?;
    let mut buf = vec![0u8; proto::MAX_CONTROL_MSG];
    loop {
        let (n, fds) = fdpass::recv(&*ctl, &mut buf, false)
            .map_err(|e| ClientError::Io(e.to_string()))?
            .ok_or_else(|| ClientError::Io("no answer from the kernel".into()))?;
        match proto::decode::<ToServer>(&buf[..n]) {
            Ok(ToServer::Connected(info)) => {
                let mine = info.service == service;
                restore_outgoing(info, fds);
                if mine {
                    return OUTGOING
                        .with(|o| o.borrow().get(service).cloned())
                        .ok_or_else(|| ClientError::Channel("could not map the channel".into()));
                }
            }
            Ok(ToServer::ConnectRefused {
                service: s,
                message,
            }) if s == service => {
                return Err(ClientError::Refused {
                    kind: txipc_core::proto::ErrorKind::NotGranted,
                    message,
                });
            }
            _ => PENDING.with(|p| p.borrow_mut().push_back((buf[..n].to_vec(), fds))),
        }
    }
}

/// How many times the request being handled was already rolled back after a fault (0 on its
/// first run). For fault-injection servers that fault only on some attempts.
pub fn current_attempt() -> u32 {
    ATTEMPT.with(Cell::get)
}

fn die(msg: &str) -> ! {
    eprintln!("txipc zygote: {msg}");
    std::process::exit(71)
}

/// Entry point of a zygote process (the binary run as `txipc __zygote`). Never returns.
///
/// Protocol (ARCHITECTURE.md §2): receive [`ZygoteInit`] with fds `[heap, log, doorbell,
/// status]`, answer `Ready`; then for every `Spawn` fork a standby incarnation and answer
/// `Spawned` with its pidfd.
pub fn zygote_main(builtins: &[Builtin]) -> ! {
    zygote_main_with(builtins, &[])
}

/// [`zygote_main`] for a binary that also has servers with ordinary Rust state
/// ([`crate::PlainBuiltin`]: they run under `none`, `restart` and `companion`). Under policy
/// `companion` the init message carries one more fd, the message log's memfd.
pub fn zygote_main_with(builtins: &[Builtin], plain: &[crate::PlainBuiltin]) -> ! {
    let fd: i32 = std::env::var("TXIPC_CTRL_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| die("TXIPC_CTRL_FD is not set: zygotes are started by the kernel"));
    let ctl = txipc_sys::process::adopt_inherited_fd(fd)
        .unwrap_or_else(|e| die(&format!("TXIPC_CTRL_FD={fd}: {e}")));
    // The kernel runs above its servers (ARCHITECTURE.md §6, "Detection"): it forked us at
    // its raised priority, so go back to the one it was started with. Lowering one's own
    // priority needs no privilege.
    if let Some(nice) = std::env::var("TXIPC_SERVER_NICE")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        let _ = rustix::process::setpriority_process(None, nice);
    }
    let kernel_pid = process::getppid();
    if let Err(e) = process::die_with_parent(kernel_pid) {
        die(&format!("prctl: {e}"));
    }
    // The kernel's pidfd (opened once its parenthood is confirmed above, so the pid is the
    // kernel's): each incarnation's keeper watches it, to end with the kernel.
    let kernel_pidfd = process::pidfd_open(kernel_pid)
        .unwrap_or_else(|e| die(&format!("pidfd_open of the kernel: {e}")));
    let mut buf = vec![0u8; proto::MAX_CONTROL_MSG];
    let (n, fds) = match fdpass::recv(&ctl, &mut buf, false) {
        Ok(Some(m)) => m,
        Ok(None) => die("no init message"),
        Err(e) => die(&format!("init: {e}")),
    };
    let init: ZygoteInit = proto::decode(&buf[..n]).unwrap_or_else(|e| die(&e.to_string()));
    let mut fds = fds;
    let companion_fds = if init.config.policy == Policy::Companion {
        if fds.len() != 5 {
            die("a companion server's init must carry 5 descriptors");
        }
        let log = fds.pop().expect("5 fds");
        // The following standby's bell (ARCHITECTURE.md §16, "Catch-up and log sizing"):
        // shared by every incarnation forked from here, rung by the serving one when its
        // sleeping replica has fallen `FOLLOW_WAKE_RECORDS` behind, polled by the standby.
        let bell = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .unwrap_or_else(|e| die(&format!("eventfd: {e}")));
        Some(crate::companion::LogFds { log, bell })
    } else {
        None
    };
    let [heap_fd, log_fd, doorbell_fd, status_fd]: [OwnedFd; 4] = fds
        .try_into()
        .unwrap_or_else(|_| die("init must carry 4 descriptors"));
    let found = builtins
        .iter()
        .find(|b| b.name == init.config.builtin)
        .copied()
        .map(Which::Heap)
        .or_else(|| {
            plain
                .iter()
                .find(|b| b.name == init.config.builtin)
                .copied()
                .map(Which::Plain)
        });
    let problem = match (&found, init.config.policy) {
        (None, _) => Some(format!(
            "no built-in server `{}` in this binary",
            init.config.builtin
        )),
        (Some(Which::Heap(_)), Policy::Companion) => Some(format!(
            "built-in `{}` keeps its state in the recoverable heap and cannot run under policy `companion`",
            init.config.builtin
        )),
        (Some(Which::Plain(_)), Policy::Txipc) => Some(format!(
            "built-in `{}` keeps ordinary Rust state and cannot run under policy `txipc`; use `companion`",
            init.config.builtin
        )),
        _ => None,
    };
    let Some(which) = found.filter(|_| problem.is_none()) else {
        let _ = fdpass::send(
            &ctl,
            &proto::encode(&FromZygote::Failed {
                message: problem.unwrap_or_default(),
            }),
            &[],
        );
        std::process::exit(72);
    };
    name_process(&init.config, "zygote");
    // The spare's bell (ARCHITECTURE.md §6, "The spare"): shared by every incarnation forked
    // from here, rung by a crashing one, polled by an armed spare.
    let bell = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
    .unwrap_or_else(|e| die(&format!("eventfd: {e}")));
    let _ = fdpass::send(&ctl, &proto::encode(&FromZygote::Ready), &[]);
    let my_pid = process::getpid();
    // A pidfd per live child: the zygote reaps a child as soon as it ends and tells the kernel
    // how it ended (`Reaped`), so that the kernel can say it even if the zombie is gone first.
    let mut children: Vec<(i32, OwnedFd)> = Vec::new();
    loop {
        for (pid, how) in process::reap_children_status() {
            children.retain(|(p, _)| *p != pid);
            let (code, signal) = match how {
                Ok(c) => (Some(c), None),
                Err(sig) => (None, Some(sig)),
            };
            let _ = fdpass::send(
                &ctl,
                &proto::encode(&FromZygote::Reaped { pid, code, signal }),
                &[],
            );
        }
        let ready = {
            let mut fds: Vec<rustix::event::PollFd<'_>> = vec![rustix::event::PollFd::new(
                &ctl,
                rustix::event::PollFlags::IN,
            )];
            fds.extend(
                children
                    .iter()
                    .map(|(_, f)| rustix::event::PollFd::new(f, rustix::event::PollFlags::IN)),
            );
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => !fds[0].revents().is_empty(),
                Err(_) => false,
            }
        };
        if !ready {
            continue; // a child ended: reap it at the top
        }
        let (n, mut fds) = match fdpass::recv(&ctl, &mut buf, false) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(_) => std::process::exit(0), // the kernel is gone
        };
        match proto::decode::<ToZygote>(&buf[..n]) {
            Ok(ToZygote::Spawn { generation }) if fds.len() == 1 => {
                let inc_sock = fds.pop().expect("one fd");
                match process::fork() {
                    Ok(process::Forked::Child) => {
                        drop(ctl);
                        children.clear();
                        if process::die_with_parent(my_pid).is_err() {
                            std::process::exit(73);
                        }
                        let fds = IncFds {
                            heap: &heap_fd,
                            log: &log_fd,
                            doorbell: &doorbell_fd,
                            status: &status_fd,
                            kernel: &kernel_pidfd,
                            bell: &bell,
                        };
                        match which {
                            Which::Heap(builtin) => {
                                incarnation_main(&init.config, builtin, fds, inc_sock)
                            }
                            Which::Plain(builtin) => crate::companion::incarnation_main(
                                &init.config,
                                builtin,
                                fds.doorbell,
                                fds.status,
                                fds.kernel,
                                companion_fds.as_ref(),
                                inc_sock,
                            ),
                        }
                    }
                    Ok(process::Forked::Parent { child }) => {
                        drop(inc_sock);
                        if let Ok(own) = process::pidfd_open(child) {
                            children.push((child, own));
                        }
                        let reply = match process::pidfd_open(child) {
                            Ok(pidfd) => fdpass::send(
                                &ctl,
                                &proto::encode(&FromZygote::Spawned {
                                    generation,
                                    pid: child,
                                }),
                                &[pidfd.as_fd()],
                            ),
                            Err(e) => fdpass::send(
                                &ctl,
                                &proto::encode(&FromZygote::Failed {
                                    message: format!("pidfd_open: {e}"),
                                }),
                                &[],
                            ),
                        };
                        if reply.is_err() {
                            std::process::exit(0);
                        }
                    }
                    Err(e) => {
                        let _ = fdpass::send(
                            &ctl,
                            &proto::encode(&FromZygote::Failed {
                                message: format!("fork: {e}"),
                            }),
                            &[],
                        );
                    }
                }
            }
            Ok(ToZygote::Exit) => std::process::exit(0),
            _ => {
                let _ = fdpass::send(
                    &ctl,
                    &proto::encode(&FromZygote::Failed {
                        message: "malformed zygote command".into(),
                    }),
                    &[],
                );
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Heap(Builtin),
    Plain(crate::PlainBuiltin),
}

struct IncFds<'a> {
    heap: &'a OwnedFd,
    log: &'a OwnedFd,
    doorbell: &'a OwnedFd,
    status: &'a OwnedFd,
    /// The kernel's pidfd (what the keeper watches).
    kernel: &'a OwnedFd,
    /// The spare's bell (an eventfd every incarnation of the server shares).
    bell: &'a OwnedFd,
}

fn tracking_for(policy: Policy, tracking: ManifestTracking) -> Tracking {
    match (policy, tracking) {
        (Policy::Txipc, ManifestTracking::Typed) => Tracking::Typed,
        (Policy::Txipc, ManifestTracking::Page) => Tracking::Page,
        _ => Tracking::Off,
    }
}

pub(crate) struct Chan {
    pub(crate) index: u32,
    pub(crate) chan: ServerChannel,
    /// The channel's memfd: a spare that takes over maps it as the kernel does, to settle it.
    pub(crate) fd: OwnedFd,
}

/// Names this process after its server, system and role (`ps` shows `txipc kv@default g3`,
/// `top` shows `kv@default g3`). Best effort: a name that cannot be set changes nothing else.
/// Called only while the process has a single thread (zygote, fresh fork, before serving).
pub(crate) fn name_process(config: &ServerConfig, role: &str) {
    let who = format!("{}@{}", config.name, config.system);
    let comm = match role {
        "zygote" => format!("{who} zyg"),
        "standby" => format!("{who} sb"),
        "keeper" => format!("{who} kp"),
        _ => format!("{who} {role}"),
    };
    let _ = txipc_sys::title::set(&comm, &format!("txipc {who} {role}"));
}

/// One incarnation: standby until activated, then serving. Never returns.
fn incarnation_main(config: &ServerConfig, builtin: Builtin, fds: IncFds<'_>, ctl: OwnedFd) -> ! {
    let fatal = |ctl: &OwnedFd, message: String| -> ! {
        let _ = fdpass::send(ctl, &proto::encode(&FromServer::Fatal { message }), &[]);
        std::process::exit(74)
    };
    if let Err(e) = txipc_sys::crash::install(&ctl) {
        fatal(&ctl, format!("cannot install the crash reporter: {e}"));
    }
    // Rung after a crash report: the spare armed to take over from this incarnation wakes.
    let _ = txipc_sys::crash::set_spare_bell(fds.bell);
    if let Some(cpu) = config.cpu {
        let _ = process::pin_to_cpu(cpu);
    }
    // A process sharing this address space, so that a SIGKILL of this incarnation is noticed
    // without first tearing down its heap mappings (txipc_sys::keeper). It outlives this
    // incarnation until the kernel kills it (after the successor serves) or the kernel ends:
    // a keeper that died with the incarnation tore the address space down while the recovery
    // ran, and at 1 GiB that delayed the pidfd itself by milliseconds. Without it recovery
    // still works, only slower for a large heap.
    // (Named first so that `ps` tells the keeper from the incarnation: it inherits the name.)
    name_process(config, "keeper");
    let kept =
        txipc_sys::keeper::spawn(txipc_sys::keeper::Until::Killed(fds.kernel.as_fd())).map(|k| {
            let _ = fdpass::send(
                &ctl,
                &proto::encode(&FromServer::Keeper),
                &[k.pidfd.as_fd()],
            );
        });
    name_process(config, "standby");
    let doorbell = Doorbell::map(fds.doorbell.as_fd())
        .unwrap_or_else(|e| fatal(&ctl, format!("doorbell: {e}")));
    // The status page lives as long as the incarnation; handlers' fail points read it too.
    let status: &'static StatusPage = Box::leak(Box::new(
        StatusPage::map(fds.status.as_fd()).unwrap_or_else(|e| fatal(&ctl, format!("status: {e}"))),
    ));
    crate::failpoint::install(status);
    // A crash while a spare is armed ends in this incarnation's death, which the spare sleeps
    // on (its pidfd), rather than in a stop it would have to poll for; only with a keeper, so
    // that the death tears nothing down (ARCHITECTURE.md §6, "The spare").
    if kept.is_ok() {
        txipc_sys::crash::die_when_a_spare_is_armed(status);
    }
    let mut chans: Vec<Chan> = Vec::new();
    let mut buf = vec![0u8; proto::MAX_CONTROL_MSG];
    let ctl = Rc::new(ctl);
    CTL.with(|c| *c.borrow_mut() = Some(ctl.clone()));
    SPARE.with(|sp| {
        *sp.borrow_mut() = fds
            .bell
            .try_clone()
            .ok()
            .map(|bell| SpareCtx { status, bell });
    });
    let (generation, fresh, took_over) = match standby(&ctl, &mut chans, &mut buf, None, &mut |_| None)
    {
        Activation::Txipc { generation, fresh } => (generation, fresh, None),
        Activation::Takeover(c) => {
            // The spare recovers the server itself (crate::spare): from here it is the only
            // process that may write the shared state.
            match crate::spare::recover(&c, status, &chans, fds.heap, fds.log) {
                Ok(report) => (c.generation, false, Some(report)),
                // The undo log is unusable: die; the kernel finds TAKING(us) dead, recovers
                // itself and holds the server.
                Err(e) => {
                    eprintln!("txipc server: takeover: undo log unusable: {e}");
                    std::process::exit(75)
                }
            }
        }
        Activation::Companion(..) => fatal(
            &ctl,
            "told to activate as a companion server, but this server keeps its state in the recoverable heap".into(),
        ),
    };
    name_process(config, &format!("g{generation}"));
    // The previous incarnation may have died inside calls to other servers: the slots of the
    // inherited channels it left behind are reclaimed once their replies are in.
    OUTGOING.with(|o| {
        for out in o.borrow().values() {
            out.0.adopt_slots();
        }
    });
    NESTED_ON.with(|n| n.set(config.policy == Policy::Txipc));
    nested::set_me(config.index);
    let heap_fd = fds
        .heap
        .try_clone()
        .unwrap_or_else(|e| fatal(&ctl, format!("dup: {e}")));
    let log_fd = fds
        .log
        .try_clone()
        .unwrap_or_else(|e| fatal(&ctl, format!("dup: {e}")));
    let heap = Heap::attach(
        heap_fd,
        log_fd,
        config.heap_base as usize,
        tracking_for(config.policy, config.tracking),
    )
    .unwrap_or_else(|e| fatal(&ctl, format!("heap: {e}")));
    // The heap lives exactly as long as this incarnation: give it the 'static lifetime that lets
    // the server keep references to its root.
    let heap: &'static Heap = Box::leak(Box::new(heap));
    HEAP.with(|h| h.set(Some(heap)));
    let instance = (builtin.start)(StartArgs {
        heap,
        config,
        fresh,
    })
    .unwrap_or_else(|e| fatal(&ctl, format!("server start: {e}")));
    let said = match took_over {
        Some(mut report) => {
            report.serving_ns = txipc_sys::time::monotonic_ns();
            FromServer::TookOver(report)
        }
        None => FromServer::Active { generation },
    };
    let took_over = matches!(said, FromServer::TookOver(_));
    // A standby the kernel activated says `Active` now. A spare that took over sends its
    // report now (a fault in its first batch is then charged) and says `Active` only after
    // that batch (below): the kernel answers `Active` by asking the zygote for the next
    // standby, and that fork, on a machine whose two CPUs the client and the server fill, ran
    // on the client's CPU while the spare's first replies waited for it.
    let _ = fdpass::send(&ctl, &proto::encode(&said), &[]);
    let calls = status.calls();
    let mut lp = Loop {
        config,
        heap,
        instance,
        chans,
        doorbell,
        status,
        ctl,
        txid: generation << 40,
        calls,
        batches: 0,
        // Each incarnation starts at another channel (as the companion loop does), so that a
        // server that faults often does not serve its first channels first every time and
        // starve the last ones. Poison isolation does not depend on the order: a request
        // waiting TAKEN in the backlog while a re-run request faults is not charged (the
        // kernel charges the requests the rolled-back transaction's descriptor names).
        next_chan: (generation as usize).wrapping_mul(7) ^ calls as usize,
        batch: Vec::new(),
        bufs: Vec::new(),
        reply: Vec::with_capacity(4096),
        ctl_buf: buf,
        backlog: VecDeque::new(),
        decided: Vec::new(),
        aborted_roots: VecDeque::new(),
    };
    // A spare that took over still runs at the kernel's priority: it serves the requests it
    // re-posted (the recovery ends at their replies), then goes back to the server's, as a
    // standby the kernel activated does at once.
    if took_over {
        lp.serve_batch();
        crate::spare::end_takeover(&lp.chans);
        let _ = fdpass::send(
            &lp.ctl,
            &proto::encode(&FromServer::Active { generation }),
            &[],
        );
    }
    crate::spare::serve_as_server();
    lp.run()
}

/// What a standby may take over with (policy txipc): the status page and the spare's bell.
pub(crate) struct SpareCtx {
    status: &'static StatusPage,
    bell: OwnedFd,
}

thread_local! {
    /// Set by a txipc incarnation before its standby phase: it can be armed as a spare.
    static SPARE: RefCell<Option<SpareCtx>> = const { RefCell::new(None) };
}

/// How the kernel activated a standby.
pub(crate) enum Activation {
    /// Attach the heap (`fresh`: format it) and serve.
    Txipc { generation: u64, fresh: bool },
    /// The spare claimed the takeover (crate::spare): recover, attach the heap and serve.
    Takeover(crate::spare::Claimed),
    /// Reconstitute from the checkpoint chain (its snapshot fds, base first; none: no
    /// checkpoint) and the log, then serve.
    Companion(proto::CompanionStart, Vec<OwnedFd>),
}

/// The standby phase of an incarnation: says `Standby`, maps channels as they come, until
/// activated. Exits on `Shutdown` or when the kernel is gone. A companion standby is handed
/// each accepted checkpoint (`Warm`) and told where the log starts (`Follow`); `work` handles
/// them — a `Warm` only the newest of those queued, and only when no other message waits —
/// and is called whenever no message waits (a following standby replays the log then); it
/// says how long to wait for a message before calling it again.
pub(crate) fn standby(
    ctl: &Rc<OwnedFd>,
    chans: &mut Vec<Chan>,
    buf: &mut [u8],
    bell: Option<&OwnedFd>,
    work: &mut dyn FnMut(StandbyWork) -> Option<Duration>,
) -> Activation {
    // Rings of crashes before this standby existed are not of the incarnation it may watch.
    SPARE.with(|sp| {
        if let Some(c) = sp.borrow().as_ref() {
            crate::spare::drain(&c.bell);
        }
    });
    let _ = fdpass::send(&**ctl, &proto::encode(&FromServer::Standby), &[]);
    let mut pending: Option<Vec<OwnedFd>> = None;
    // How long to wait for a message before the next idle step (None: until one comes).
    let mut wait: Option<Duration> = None;
    // Armed as the spare of the serving incarnation (policy txipc only).
    let mut armed: Option<crate::spare::Armed> = None;
    loop {
        if let Some(a) = &mut armed
            && pending.is_none()
            && wait.is_none()
        {
            let woke = SPARE.with(|sp| {
                sp.borrow()
                    .as_ref()
                    .map(|c| crate::spare::wait(ctl, a, &c.bell, c.status))
            });
            match woke {
                Some(crate::spare::Woke::Gone(at)) => {
                    let claimed = SPARE.with(|sp| {
                        sp.borrow()
                            .as_ref()
                            .and_then(|c| crate::spare::claim(c.status, a, at))
                    });
                    match claimed {
                        Some(c) => return Activation::Takeover(c),
                        // The kernel disarmed us first: it recovers and will activate us.
                        None => armed = None,
                    }
                    continue;
                }
                // Not seen stopped: the kernel decides (it kills what it cannot confirm, and
                // its death wakes us again).
                Some(crate::spare::Woke::NotStopped) => continue,
                // The kernel disarmed us: an ordinary standby until the next `Arm`.
                Some(crate::spare::Woke::Disarmed) => {
                    armed = None;
                    continue;
                }
                Some(crate::spare::Woke::Control) | None => {}
            }
        }
        let nonblocking = match (&pending, wait) {
            (Some(_), _) => true,
            (None, None) => false,
            (None, Some(d)) => {
                let ts = rustix::time::Timespec {
                    tv_sec: d.as_secs() as _,
                    tv_nsec: d.subsec_nanos() as _,
                };
                // With a following standby's bell: the serving incarnation rings it when the
                // replica, asleep, has fallen behind (crate::companion, `Ring::nudge`).
                let mut fds = [
                    rustix::event::PollFd::new(&**ctl, rustix::event::PollFlags::IN),
                    rustix::event::PollFd::new(bell.unwrap_or(ctl), rustix::event::PollFlags::IN),
                ];
                let n = if bell.is_some() { 2 } else { 1 };
                let _ = rustix::event::poll(&mut fds[..n], Some(&ts));
                if let Some(b) = bell
                    && !fds[1].revents().is_empty()
                {
                    let _ = rustix::io::read(b, &mut [0u8; 8]);
                }
                true
            }
        };
        // A message that arrived while a handler waited for the kernel in `connect` (a
        // following standby replays handlers) comes first.
        let queued = take_pending().map(|(msg, fds)| {
            buf[..msg.len()].copy_from_slice(&msg);
            (msg.len(), fds)
        });
        let received = match queued {
            Some(m) => Ok(Some(m)),
            None => fdpass::recv(&**ctl, buf, nonblocking),
        };
        let (n, mut fds_in) = match received {
            Ok(Some(m)) => m,
            Ok(None) => {
                wait = match pending.take() {
                    Some(fds) => work(StandbyWork::Warm(fds)),
                    None => work(StandbyWork::Idle),
                };
                continue;
            }
            Err(_) => std::process::exit(0),
        };
        match proto::decode::<ToServer>(&buf[..n]) {
            Ok(ToServer::AddChannels { indices }) => add_channels(chans, indices, fds_in),
            Ok(ToServer::RemoveChannel { index }) => chans.retain(|c| c.index != index),
            Ok(ToServer::Activate { generation, fresh }) => {
                return Activation::Txipc { generation, fresh };
            }
            Ok(ToServer::ActivateCompanion(start)) => {
                if !start.snapshot {
                    fds_in.clear();
                }
                return Activation::Companion(start, fds_in);
            }
            Ok(ToServer::Warm) => {
                if !fds_in.is_empty() {
                    pending = Some(fds_in);
                }
            }
            Ok(ToServer::Follow {
                log_start,
                skip,
                snapshot,
            }) => {
                wait = work(StandbyWork::Follow {
                    log_start,
                    skip,
                    snapshot,
                });
            }
            Ok(ToServer::Connected(info)) => restore_outgoing(info, fds_in),
            Ok(ToServer::Arm {
                generation,
                old_generation,
                old_pid,
                retry_limit,
            }) => {
                let have = SPARE.with(|sp| sp.borrow().is_some());
                if have && let Some(fd) = fds_in.pop() {
                    crate::spare::armed();
                    armed = Some(crate::spare::Armed::new(
                        generation,
                        old_generation,
                        old_pid,
                        retry_limit,
                        fd,
                    ));
                }
            }
            Ok(ToServer::ConnectRefused { .. })
            | Ok(ToServer::Decided { .. })
            | Ok(ToServer::Undecided { .. }) => {}
            Ok(ToServer::Shutdown) | Err(_) => std::process::exit(0),
        }
    }
}

/// What a standby is handed, or may do, while it waits to be activated (policy companion).
pub(crate) enum StandbyWork {
    /// The newest accepted checkpoint chain, base first (only the newest of several queued
    /// ones): restore it.
    Warm(Vec<OwnedFd>),
    /// Follow the log as it is written ([`ToServer::Follow`]).
    Follow {
        /// Where the log starts without a snapshot.
        log_start: u64,
        /// Requests replay skips.
        skip: Vec<(u32, u32, u64)>,
        /// A `Warm` with the newest checkpoint follows.
        snapshot: bool,
    },
    /// No message waits: a step of background work. The answer of every call is how long to
    /// wait for a message before the next idle step (None: until one comes).
    Idle,
}

pub(crate) fn add_channels(chans: &mut Vec<Chan>, indices: Vec<u32>, fds: Vec<OwnedFd>) {
    for (index, fd) in indices.into_iter().zip(fds) {
        // A channel that does not map is skipped: it is the client's object to corrupt, and the
        // client will find its calls unanswered only if it broke its own channel.
        if let Ok(chan) = ServerChannel::map(fd.as_fd()) {
            chans.retain(|c| c.index != index);
            chans.push(Chan { index, chan, fd });
        }
    }
}

struct Taken {
    chan: usize,
    slot: usize,
    seq: u64,
    method: u32,
    attempt: u32,
    malformed: bool,
}

struct Loop<'a> {
    config: &'a ServerConfig,
    heap: &'static Heap,
    instance: Box<dyn Instance>,
    chans: Vec<Chan>,
    doorbell: Doorbell,
    status: &'static StatusPage,
    ctl: Rc<OwnedFd>,
    txid: u64,
    /// Calls completed by every incarnation so far (this one is the only writer now).
    calls: u64,
    /// Batches run by this incarnation: one in `latency::SAMPLE_EVERY` is timed.
    batches: u64,
    next_chan: usize,
    batch: Vec<Taken>,
    bufs: Vec<Vec<u8>>,
    reply: Vec<u8>,
    ctl_buf: Vec<u8>,
    /// Requests taken but not yet served (taken while prepared for another root, or a
    /// nested call or decision found in a batch).
    backlog: VecDeque<(Taken, Vec<u8>)>,
    /// Decisions the kernel sent (root, commit), not yet applied.
    decided: Vec<(RootId, bool)>,
    /// Roots the kernel said were rolled back (bounded): nested calls of them are refused.
    aborted_roots: VecDeque<RootId>,
}

/// How long the server spins for work before sleeping on its doorbell.
const SERVER_SPIN: Duration = Duration::from_micros(50);

impl Loop<'_> {
    fn run(&mut self) -> ! {
        loop {
            // A plain load first: the swap would take the doorbell line away from clients,
            // which read it on every call.
            if self.doorbell.pending_events() != 0 && self.doorbell.take_events() != 0 {
                self.drain_control();
            }
            if self.serve_batch() == 0 {
                self.doorbell
                    .wait(self.chans.iter().map(|c| &c.chan), SERVER_SPIN, None);
            }
        }
    }

    fn drain_control(&mut self) {
        loop {
            let pending = PENDING.with(|p| p.borrow_mut().pop_front());
            let (n, fds) = match pending {
                Some((bytes, fds)) => {
                    self.ctl_buf[..bytes.len()].copy_from_slice(&bytes);
                    (bytes.len(), fds)
                }
                None => match fdpass::recv(&*self.ctl, &mut self.ctl_buf, true) {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(_) => std::process::exit(0),
                },
            };
            match proto::decode::<ToServer>(&self.ctl_buf[..n]) {
                Ok(ToServer::Connected(info)) => restore_outgoing(info, fds),
                Ok(ToServer::ConnectRefused { .. }) => {}
                Ok(ToServer::AddChannels { indices }) => {
                    add_channels(&mut self.chans, indices, fds)
                }
                Ok(ToServer::RemoveChannel { index }) => self.chans.retain(|c| c.index != index),
                Ok(ToServer::Shutdown) | Err(_) => std::process::exit(0),
                Ok(
                    ToServer::Activate { .. }
                    | ToServer::ActivateCompanion(_)
                    | ToServer::Warm
                    | ToServer::Follow { .. }
                    | ToServer::Arm { .. }
                    | ToServer::Undecided { .. },
                ) => {}
                Ok(ToServer::Decided {
                    server,
                    txid,
                    commit,
                }) => {
                    let root = RootId { server, txid };
                    if !commit && !self.aborted_roots.contains(&root) {
                        if self.aborted_roots.len() >= 64 {
                            self.aborted_roots.pop_front();
                        }
                        self.aborted_roots.push_back(root);
                    }
                    self.decided.push((root, commit));
                }
            }
        }
    }

    /// Takes up to `batch_max` posted requests and runs them as one transaction. Returns how
    /// many were served. Nested calls and decisions (ARCHITECTURE.md §13) are served one at a
    /// time, each by its own path.
    fn serve_batch(&mut self) -> usize {
        if let Some((t, buf)) = self.backlog.pop_front() {
            return self.serve_taken(t, buf);
        }
        let max = self.config.batch_max.max(1) as usize;
        self.batch.clear();
        let nchans = self.chans.len();
        if nchans == 0 {
            return 0;
        }
        if self.bufs.len() < max {
            self.bufs.resize_with(max, || Vec::with_capacity(4096));
        }
        // Round robin from `next_chan` (no division on the hot path; a removed channel may
        // have left it past the end).
        let mut ci = if self.next_chan < nchans {
            self.next_chan
        } else {
            0
        };
        for _ in 0..nchans {
            while self.batch.len() < max {
                let buf = &mut self.bufs[self.batch.len()];
                match self.chans[ci].chan.take_into(buf) {
                    Some(t) => self.batch.push(Taken {
                        chan: ci,
                        slot: t.slot,
                        seq: t.seq,
                        method: t.method,
                        attempt: t.attempt,
                        malformed: t.malformed,
                    }),
                    None => break,
                }
            }
            ci += 1;
            if ci == nchans {
                ci = 0;
            }
            if self.batch.len() >= max {
                self.next_chan = ci;
                break;
            }
        }
        let n = self.batch.len();
        if n == 0 {
            return 0;
        }
        if self.batch.iter().any(|t| is_nested_protocol(t.method)) {
            // Serve them one by one, each by its own path.
            for (i, t) in std::mem::take(&mut self.batch).into_iter().enumerate() {
                let buf = std::mem::take(&mut self.bufs[i]);
                self.backlog.push_back((t, buf));
            }
            return n;
        }
        if n > 1 && self.batch.iter().any(|t| t.attempt > 0) {
            // A request re-posted after a fault runs alone: the batch it was rolled back with
            // may have held a poison request, and running it in a batch again would charge it
            // for someone else's fault once more (poison isolation under group commit). The
            // others of this batch still run together.
            let mut keep = 0;
            for (i, t) in std::mem::take(&mut self.batch).into_iter().enumerate() {
                let buf = std::mem::take(&mut self.bufs[i]);
                if t.attempt > 0 {
                    self.backlog.push_back((t, buf));
                } else {
                    self.bufs[keep] = buf;
                    self.batch.push(t);
                    keep += 1;
                }
            }
            if keep > 0 {
                self.run_roots(keep);
            }
            return n;
        }
        self.run_roots(n);
        n
    }

    /// Serves one request taken earlier.
    fn serve_taken(&mut self, t: Taken, buf: Vec<u8>) -> usize {
        if !t.malformed && t.method == nested::DECIDE {
            // A decision for a root this server is not prepared for (any more): it applied it
            // already, or the kernel settled it. Acknowledge.
            let _ = self.chans[t.chan].chan.write_reply(t.slot, Status::Ok, &[]);
            let _ = self.chans[t.chan].chan.publish(t.slot);
            return 1;
        }
        if !t.malformed && t.method & nested::NESTED_BIT != 0 && self.config.policy == Policy::Txipc
        {
            self.serve_nested(t, buf);
            return 1;
        }
        self.batch.clear();
        self.batch.push(t);
        if self.bufs.is_empty() {
            self.bufs.push(Vec::new());
        }
        self.bufs[0] = buf;
        self.run_roots(1);
        1
    }

    /// Runs the `n` requests of `self.batch` as one transaction that is its own root: the
    /// coordinator's side of nested transactions. A root whose nested call failed is rolled
    /// back in place and run again after a back-off, within [`nested::ROOT_RETRY_BUDGET`]; then its
    /// requests fail alone with `Aborted`.
    fn run_roots(&mut self, n: usize) {
        let mut retry = 0u32;
        // When the root first failed on its callees (read only then: no clock on the hot path).
        let mut first_doomed: Option<Instant> = None;
        // A sample of the batches is timed, begin → published (the status page's latency
        // histogram): a clock read costs too much to pay on every null call.
        let timed = self.batches & (latency::SAMPLE_EVERY - 1) == 0;
        self.batches = self.batches.wrapping_add(1);
        let start = if timed {
            txipc_sys::time::monotonic_ns()
        } else {
            0
        };
        loop {
            self.txid += 1;
            TXID.with(|t| t.set(self.txid));
            self.status.set_busy(self.txid);
            // One look at the fail-point word per batch: when none is armed (always, outside
            // campaigns) the protocol sites below cost nothing more. One armed while the batch
            // runs fires from the next batch on.
            let armed = crate::failpoint::any_armed();
            if armed {
                if let Some(c) = crate::failpoint::fail_point(SITE_AFTER_TAKE) {
                    c.flip(&mut self.bufs[0]);
                }
            }
            nested::start(None);
            self.begin(None);
            if armed {
                if let Some(c) = crate::failpoint::fail_point(FailPoint::BeforeHandle.site()) {
                    c.flip(&mut self.bufs[0]);
                }
            }
            for i in 0..n {
                self.run_one(i, armed);
            }
            if armed {
                self.fail_point(FailPoint::AfterHandle);
            }
            let root = RootId {
                server: self.config.index,
                txid: self.txid,
            };
            let rollback = nested::take_rollback();
            if rollback && !nested::doomed() {
                // The handler gave up: roll everything back, answer what it replied.
                let touched = nested::touched();
                if let Some(tx) = self.instance.tx_cell().take() {
                    let _ = tx.abort();
                }
                nested::decide_all(&touched, root, false);
                if n == 1 {
                    let t = &self.batch[0];
                    let _ = self.chans[t.chan].chan.publish(t.slot);
                } else {
                    // The other requests of the batch must not share its fate: run each alone.
                    for (i, t) in std::mem::take(&mut self.batch)
                        .into_iter()
                        .enumerate()
                        .rev()
                    {
                        let buf = std::mem::take(&mut self.bufs[i]);
                        self.backlog.push_front((t, buf));
                    }
                    TXID.with(|t| t.set(0));
                    self.status.set_idle(self.calls);
                    return;
                }
                break;
            }
            if nested::doomed() {
                let touched = nested::touched();
                if let Some(tx) = self.instance.tx_cell().take() {
                    let _ = tx.abort();
                }
                nested::decide_all(&touched, root, false);
                // A callee that failed the call as poison has retried it already: the root
                // is the poison request, failed alone. Any other failure is the callees' (one
                // recovering, or prepared for another root), not this request's: it is run
                // again with back-off within the budget, never declared poison for it.
                let since = *first_doomed.get_or_insert_with(Instant::now);
                if !nested::poisoned() && since.elapsed() < nested::ROOT_RETRY_BUDGET {
                    std::thread::sleep(nested::backoff(retry, self.txid));
                    retry += 1;
                    continue;
                }
                if !nested::poisoned() {
                    eprintln!(
                        "txipc: server `{}`: a request whose nested calls kept failing for {:?} ({} re-runs; its callees did not recover) is failed with Aborted: it did not run",
                        self.config.name,
                        nested::ROOT_RETRY_BUDGET,
                        retry
                    );
                }
                // The poison request: it keeps failing; fail it alone.
                for t in &self.batch {
                    let chan = &self.chans[t.chan].chan;
                    let _ = chan.write_reply(t.slot, Status::Aborted, &[]);
                    let _ = chan.publish(t.slot);
                }
                break;
            }
            // The commit point: after every reply of the batch is written, before any is
            // published. For a root with participants it is also the decision record.
            match self.instance.tx_cell().take().map(Tx::commit) {
                Some(Ok(())) => {}
                _ => txipc_sys::crash::report_and_stop(txipc_sys::crash::CrashKind::Integrity),
            }
            if armed {
                self.fail_point(FailPoint::AfterCommit);
            }
            for t in &self.batch {
                let _ = self.chans[t.chan].chan.publish(t.slot);
            }
            if armed {
                crate::failpoint::fail_point(SITE_PUBLISHED);
            }
            let touched = nested::touched();
            if !touched.is_empty() {
                self.fail_point(FailPoint::AfterPublish);
                nested::decide_all(&touched, root, true);
            }
            break;
        }
        TXID.with(|t| t.set(0));
        if timed {
            let took = txipc_sys::time::monotonic_ns().saturating_sub(start);
            self.status.add_latency(latency::bucket(took), n as u64);
        }
        self.calls += n as u64;
        self.status.set_idle(self.calls);
        if PENDING.with(|p| !p.borrow().is_empty()) {
            self.drain_control();
        }
    }

    /// Handles the nested call `t` (a participant's side): runs it as a sub-transaction of
    /// its root, publishes the reply before committing (prepared), then serves only calls of
    /// the same root until the root decides.
    fn serve_nested(&mut self, t: Taken, buf: Vec<u8>) {
        let Some((root, _)) = nested::decode_ctx(&buf) else {
            let chan = &self.chans[t.chan].chan;
            let _ = chan.write_reply(t.slot, Status::Malformed, &[]);
            let _ = chan.publish(t.slot);
            return;
        };
        // A call re-posted after this server faulted may belong to a root that was rolled back
        // meanwhile (its caller died too): ask the kernel before running it again.
        let stale = t.attempt > 0 && self.root_is_decided(root);
        if stale || root.server == self.config.index || self.aborted_roots.contains(&root) {
            // A call to itself would wait for itself; a rolled-back root runs no more.
            let code = if root.server == self.config.index {
                nested::CODE_CONFLICT
            } else {
                nested::CODE_ROOT_ABORTED
            };
            let chan = &self.chans[t.chan].chan;
            let _ = chan.write_reply(t.slot, Status::Ok, &[code]);
            let _ = chan.publish(t.slot);
            return;
        }
        self.txid += 1;
        TXID.with(|x| x.set(self.txid));
        nested::start(Some(root));
        self.batch.clear();
        self.begin(Some(root));
        if !self.nested_call(&t, &buf) {
            self.finish_sub(root, false);
            return;
        }
        self.prepared(root);
    }

    /// Asks the kernel whether `root` is decided already (it cannot be committed while a call
    /// of it is still to run, so decided means rolled back). Waits for the answer.
    fn root_is_decided(&mut self, root: RootId) -> bool {
        let msg = FromServer::Resolve {
            server: root.server,
            txid: root.txid,
        };
        if fdpass::send(&*self.ctl, &proto::encode(&msg), &[]).is_err() {
            return false;
        }
        let mut buf = vec![0u8; proto::MAX_CONTROL_MSG];
        loop {
            let Ok(Some((n, fds))) = fdpass::recv(&*self.ctl, &mut buf, false) else {
                return false;
            };
            match proto::decode::<ToServer>(&buf[..n]) {
                Ok(ToServer::Decided { server, txid, .. }) if (RootId { server, txid }) == root => {
                    return true;
                }
                Ok(ToServer::Undecided { server, txid }) if (RootId { server, txid }) == root => {
                    return false;
                }
                _ => PENDING.with(|p| p.borrow_mut().push_back((buf[..n].to_vec(), fds))),
            }
        }
    }

    /// Runs one nested call of the open sub-transaction and publishes its reply (prepared).
    /// Returns false when the call doomed the root (the sub-transaction must roll back; the
    /// caller has been told).
    fn nested_call(&mut self, t: &Taken, buf: &[u8]) -> bool {
        self.status.set_busy(self.txid);
        self.fail_point(FailPoint::BeforeHandle);
        ATTEMPT.with(|a| a.set(t.attempt));
        let req = &buf[nested::CTX_LEN..];
        let mut out = vec![nested::CODE_OK];
        let status =
            match self
                .instance
                .handle(t.method & !nested::NESTED_BIT, req, &mut self.reply)
            {
                Ok(()) => {
                    out.extend_from_slice(&self.reply);
                    Status::Ok
                }
                Err(DispatchError::Malformed { .. }) => Status::Malformed,
                Err(DispatchError::UnknownMethod { .. }) => Status::UnknownMethod,
            };
        self.fail_point(FailPoint::AfterHandle);
        let chan = &self.chans[t.chan].chan;
        if nested::take_rollback() || nested::doomed() || status != Status::Ok {
            let reply = if status == Status::Ok {
                vec![nested::CODE_ROOT_ABORTED]
            } else {
                Vec::new()
            };
            let _ = chan.write_reply(t.slot, status, &reply);
            let _ = chan.publish(t.slot);
            self.status.set_idle(self.calls);
            return false;
        }
        self.instance.tx_cell().tx().mark_prepared();
        if chan.write_reply(t.slot, Status::Ok, &out).is_err() {
            let _ = chan.write_reply(t.slot, Status::TooLarge, &[]);
        }
        let _ = chan.publish(t.slot);
        self.fail_point(FailPoint::Prepared);
        self.calls += 1;
        // Waiting for the root's decision is not a hang: the kernel's watchdog watches the
        // coordinator, whose deadline bounds the wait.
        self.status.set_idle(self.calls);
        true
    }

    /// Ends the open sub-transaction of `root`: tells this server's own participants first,
    /// then commits or rolls back.
    fn finish_sub(&mut self, root: RootId, commit: bool) {
        self.status.set_busy(self.txid);
        self.fail_point(FailPoint::OnDecide);
        let touched = nested::touched();
        nested::decide_all(&touched, root, commit);
        if let Some(tx) = self.instance.tx_cell().take() {
            if commit {
                let _ = tx.commit();
                self.fail_point(FailPoint::AfterCommit);
            } else {
                let _ = tx.abort();
            }
        }
        TXID.with(|x| x.set(0));
        self.status.set_idle(self.calls);
    }

    /// Prepared for `root`: serve its calls and wait for its decision (from the coordinator,
    /// or from the kernel). Other requests wait in the backlog; nested calls of other roots
    /// that wait longer than a quarter of the deadline are refused as conflicts (a cycle, or
    /// a root that holds this server too long), and the kernel is asked for the decision.
    fn prepared(&mut self, root: RootId) {
        let bound = Duration::from_millis((self.config.deadline_ms / 4).clamp(1, 500));
        let mut asked = Instant::now();
        let mut others: Vec<(Taken, Vec<u8>, Instant)> = Vec::new();
        let outcome = 'wait: loop {
            if self.doorbell.pending_events() != 0 && self.doorbell.take_events() != 0 {
                self.drain_control();
            }
            if let Some(k) = self.decided.iter().position(|d| d.0 == root) {
                let commit = self.decided.swap_remove(k).1;
                break 'wait commit;
            }
            let mut did = false;
            for ci in 0..self.chans.len() {
                loop {
                    let mut buf = Vec::new();
                    let Some(x) = self.chans[ci].chan.take_into(&mut buf) else {
                        break;
                    };
                    did = true;
                    let t = Taken {
                        chan: ci,
                        slot: x.slot,
                        seq: x.seq,
                        method: x.method,
                        attempt: x.attempt,
                        malformed: x.malformed,
                    };
                    if t.malformed {
                        self.backlog.push_back((t, buf));
                    } else if t.method == nested::DECIDE {
                        match nested::decode_decide(&buf) {
                            Some((r, commit)) if r == root => {
                                self.finish_sub(root, commit);
                                let chan = &self.chans[t.chan].chan;
                                let _ = chan.write_reply(t.slot, Status::Ok, &[]);
                                let _ = chan.publish(t.slot);
                                self.requeue(others);
                                return;
                            }
                            _ => self.backlog.push_front((t, buf)),
                        }
                    } else if t.method & nested::NESTED_BIT != 0 {
                        match nested::decode_ctx(&buf) {
                            Some((r, _)) if r == root => {
                                if !self.nested_call(&t, &buf) {
                                    break 'wait false;
                                }
                            }
                            _ => others.push((t, buf, Instant::now())),
                        }
                    } else {
                        self.backlog.push_back((t, buf));
                    }
                }
            }
            // Calls of other roots that waited too long: refuse them (their roots retry).
            others.retain(|(t, _, since)| {
                if since.elapsed() < bound {
                    return true;
                }
                let chan = &self.chans[t.chan].chan;
                let _ = chan.write_reply(t.slot, Status::Ok, &[nested::CODE_CONFLICT]);
                let _ = chan.publish(t.slot);
                false
            });
            if asked.elapsed() >= bound {
                asked = Instant::now();
                let msg = FromServer::Resolve {
                    server: root.server,
                    txid: root.txid,
                };
                let _ = fdpass::send(&*self.ctl, &proto::encode(&msg), &[]);
            }
            if !did {
                self.doorbell.wait(
                    self.chans.iter().map(|c| &c.chan),
                    SERVER_SPIN,
                    Some(Duration::from_millis(1)),
                );
            }
        };
        self.finish_sub(root, outcome);
        self.requeue(others);
    }

    /// Puts nested calls of other roots, taken while prepared, in front of the backlog.
    fn requeue(&mut self, others: Vec<(Taken, Vec<u8>, Instant)>) {
        for (t, buf, _) in others.into_iter().rev() {
            self.backlog.push_front((t, buf));
        }
    }

    /// Fires the fail point armed at protocol point `point`, if any (one relaxed load
    /// otherwise). A `Corrupt` armed here has no data to flip: it does nothing.
    #[inline]
    fn fail_point(&self, point: FailPoint) {
        crate::failpoint::fail_point(point.site());
    }

    /// Opens the transaction of the batch (a participant's sub-transaction of `root`, or its
    /// own root) and records which requests it serves.
    fn begin(&mut self, root: Option<RootId>) {
        // Its own root: begun lazily, so a request that writes nothing costs no log write (the
        // log keeps saying how the previous transaction ended; ARCHITECTURE.md §5). A crash
        // before its first write then charges every TAKEN request of the channel, as a
        // committed log names none of them: exact while nothing waits in the backlog, so
        // with a backlog (requests taken but not in this batch, which a fault of this batch
        // must not be charged to) it begins at once, naming the batch. A participant's
        // sub-transaction publishes its reply before its commit (prepared): also at once.
        // Built in the cell, where the handlers find it (no move of the transaction object).
        let lazy = root.is_none() && self.backlog.is_empty();
        let cell = self.instance.tx_cell();
        let tx = match cell.begin(self.heap, self.txid, root, lazy) {
            Ok(tx) => tx,
            Err(_) => txipc_sys::crash::report_and_stop(txipc_sys::crash::CrashKind::Integrity),
        };
        for t in &self.batch {
            let e = BatchEntry {
                chan: self.chans[t.chan].index,
                slot: t.slot as u32,
                seq: t.seq,
            };
            if tx.add_batch_entry(e).is_err() {
                txipc_sys::crash::report_and_stop(txipc_sys::crash::CrashKind::Integrity);
            }
        }
    }

    /// Runs request `i` of the batch and writes its reply. `armed`: a fail point may be armed
    /// (`failpoint::any_armed`, read once per batch).
    fn run_one(&mut self, i: usize, armed: bool) {
        let t = &self.batch[i];
        let chan = &self.chans[t.chan].chan;
        // The reply is encoded straight into the slot (one copy), unless a fail point is armed
        // to corrupt it on its way: that one is encoded into `self.reply` and flipped there.
        let corrupt_reply = armed && crate::failpoint::armed_at(SITE_BEFORE_REPLY);
        if !t.malformed && !corrupt_reply {
            if let Ok(out) = chan.reply_to(t.slot) {
                ATTEMPT.with(|a| a.set(t.attempt));
                let mut out = SlotWriter(out);
                let status = match self.instance.handle(t.method, &self.bufs[i], &mut out) {
                    Ok(()) => Status::Ok,
                    Err(DispatchError::Malformed { .. }) => Status::Malformed,
                    Err(DispatchError::UnknownMethod { .. }) => Status::UnknownMethod,
                };
                if status != Status::Ok {
                    out.0.clear();
                }
                // Too large for the reply area: the handler's effects stand (they are part of
                // this transaction), the client learns the reply did not fit (`TooLarge`).
                let _ = out.0.finish_here(status);
                return;
            }
        }
        let status = if t.malformed {
            self.reply.clear();
            Status::Malformed
        } else {
            ATTEMPT.with(|a| a.set(t.attempt));
            let req = &self.bufs[i];
            match self.instance.handle(t.method, req, &mut self.reply) {
                Ok(()) => {
                    if let Some(c) = crate::failpoint::fail_point(SITE_BEFORE_REPLY) {
                        c.flip(&mut self.reply);
                    }
                    Status::Ok
                }
                Err(DispatchError::Malformed { .. }) => {
                    self.reply.clear();
                    Status::Malformed
                }
                Err(DispatchError::UnknownMethod { .. }) => {
                    self.reply.clear();
                    Status::UnknownMethod
                }
            }
        };
        if chan.write_reply(t.slot, status, &self.reply).is_err() {
            // Too large for the reply area: the handler's effects stand (they are part of this
            // transaction), the client learns the reply did not fit.
            let _ = chan.write_reply(t.slot, Status::TooLarge, &[]);
        }
    }
}

/// A reply encoded straight into its request's slot ([`ServerChannel::reply_to`]).
pub(crate) struct SlotWriter<'a>(SlotReply<'a>);

impl ReplyWriter for SlotWriter<'_> {
    #[inline]
    fn reset(&mut self) {
        self.0.clear();
    }
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0.put(bytes);
    }
}

/// Whether `method` belongs to the nested-transaction protocol (a nested call or a decision).
fn is_nested_protocol(method: u32) -> bool {
    method == nested::DECIDE || method & nested::NESTED_BIT != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(service: &str, channel: u32) -> (txipc_core::proto::Connected, Vec<OwnedFd>) {
        let fd =
            txipc_chan::create_channel("t-outgoing", txipc_chan::ChannelLayout::default()).unwrap();
        let info = txipc_core::proto::Connected {
            service: service.into(),
            channel,
            generation: 1,
            policy: Policy::Companion,
        };
        (info, vec![fd])
    }

    /// A second channel to a service this process already has a channel to is not taken in
    /// its place: the first stays (a following standby asked for one while the kernel's copy
    /// of the serving incarnation's was queued; with the second, its re-sent calls reached the
    /// callee on another channel and ran twice).
    #[test]
    fn a_second_channel_to_the_same_service_does_not_replace_the_first() {
        let (info, fds) = grant("t-peer", 3);
        restore_outgoing(info, fds);
        let (info, fds) = grant("t-peer", 7);
        restore_outgoing(info, fds);
        let kept = OUTGOING.with(|o| o.borrow().get("t-peer").map(|c| c.info().channel));
        assert_eq!(kept, Some(3), "the first channel stays");
        // Another service is added as before.
        let (info, fds) = grant("t-other", 1);
        restore_outgoing(info, fds);
        let other = OUTGOING.with(|o| o.borrow().get("t-other").map(|c| c.info().channel));
        assert_eq!(other, Some(1));
    }
}
