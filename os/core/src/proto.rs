//! Control-plane messages (postcard over `SOCK_SEQPACKET` sockets).
//!
//! Three conversations, each its own socket:
//! - client ⇄ kernel (the system socket): [`Request`] / [`Response`];
//! - kernel ⇄ zygote: [`ZygoteInit`] then [`ToZygote`] / [`FromZygote`];
//! - kernel ⇄ incarnation: [`ToServer`] / [`FromServer`], plus the 8-byte crash report of
//!   `txipc_sys::crash` (first byte `0xFF`, which no postcard enum here starts with).
//!
//! File descriptors travel beside a message as SCM_RIGHTS; each message documents which.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::manifest::{Policy, Tracking};

/// Protocol version; a client of another version is refused with a clear error.
///
/// Version 2 (additive over 1: new variants at the end of each enum, new fields at the end of
/// [`ServerInfo`]): [`Request::Restart`], [`Request::Release`], [`Request::Kill`],
/// [`Request::Status`], [`Response::Status`], [`Response::Released`], the operator grant
/// ([`ErrorKind::NotOperator`]), and the fault facts of [`ServerInfo`].
///
/// Version 3: [`ServerInfo::latency`], [`ServerInfo::faults`].
pub const PROTO_VERSION: u32 = 3;
/// Largest control message.
pub const MAX_CONTROL_MSG: usize = 256 * 1024;

/// Client → kernel.
///
/// `Connect`, `Ps` and `Status` need no operator grant (`Connect` needs the manifest's
/// `[[grant]]` for the service). Every request that acts on the system itself — `Shutdown`,
/// `Inject`, `Restart`, `Release`, `Kill` — needs the manifest's operator grant
/// (`[[operator]]`, by default the user that started the kernel); without it the answer is
/// [`Response::Error`] with [`ErrorKind::NotOperator`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Open a channel to a server. Answer: [`Response::Connected`] with fds `[channel]` (the client gets no doorbell: it wakes the server through its own channel).
    Connect {
        /// Protocol version of the client.
        version: u32,
        /// The server's name.
        service: String,
    },
    /// List the servers. Answer: [`Response::Ps`].
    Ps,
    /// Stop the system. Answer: [`Response::Ok`], then the socket closes.
    Shutdown,
    /// Arm a fail point in a server: its next request reaching `point` faults with `kind`.
    /// Answer: [`Response::Ok`]. Operator only.
    Inject {
        /// The server's name.
        server: String,
        /// What fault.
        kind: crate::failpoint::FailKind,
        /// Where.
        point: crate::failpoint::FailPoint,
    },
    /// Arm the fail point `arm` in a server (any site, with its argument), or disarm with
    /// `None`, replacing whatever was armed. Answer: [`Response::FailPoint`] with what was armed
    /// before (`None`: nothing, or it fired).
    FailPoint {
        /// The server's name.
        server: String,
        /// What to arm.
        arm: Option<crate::failpoint::FailSpec>,
    },
    /// Restart a server now, bypassing its restart limits. A running server is stopped and
    /// recovered exactly as after a fault (under `txipc` its in-flight calls are rolled back and
    /// re-run; under `restart` and `none` it comes back empty and they fail); a `held` or `dead`
    /// server is released (as [`Request::Release`]). Answer: [`Response::Ok`]. Operator only.
    /// A server that is `booting` or `recovering` is refused with [`ErrorKind::WrongState`].
    Restart {
        /// The server's name.
        server: String,
    },
    /// Take a `held` or `dead` server out of that state and start it again (its restart limits
    /// start afresh). Its old channels stay dead: clients connect again. A server held because
    /// its undo log was unusable, or dead under policy `none`, starts empty. Answer:
    /// [`Response::Released`] with the reason it was held. Operator only. Any other state is
    /// refused with [`ErrorKind::WrongState`].
    Release {
        /// The server's name.
        server: String,
    },
    /// Send signal number `signal` (1..=64) to the server's active incarnation, as `kill(2)`
    /// would: for demonstrations and tests of fault handling (a SIGKILL is then recovered like
    /// any death). Answer: [`Response::Ok`]. Operator only. A server with no active incarnation
    /// is refused with [`ErrorKind::WrongState`].
    Kill {
        /// The server's name.
        server: String,
        /// The signal number.
        signal: i32,
    },
    /// The system's status: the kernel's pid and uptime and every server. Answer:
    /// [`Response::Status`].
    Status,
    /// Keep a FUSE connection (the `/dev/fuse` fd rides along; none to only update `minor`)
    /// for the front end serving `mountpoint`, so the mount outlives the front end. The
    /// connection is held by this client until its control connection closes. Answer:
    /// [`Response::Ok`]. Operator only. Refused with [`ErrorKind::WrongState`] while another
    /// live front end holds `mountpoint`.
    FuseKeep {
        /// The mount point (canonical path).
        mountpoint: String,
        /// The negotiated FUSE protocol minor (0: `INIT` not answered yet).
        minor: u32,
        /// The front end's session tag (request ids for exactly-once replay embed it).
        session: u64,
    },
    /// Adopt the kept connection of `mountpoint` after its front end died. Answer:
    /// [`Response::Fuse`] with the fd; this client holds it from now on. Operator only.
    /// Refused with [`ErrorKind::WrongState`] if none is kept or while its front end
    /// is alive.
    FuseAdopt {
        /// The mount point (canonical path).
        mountpoint: String,
    },
    /// Forget the kept connection of `mountpoint` (its front end unmounted it). Answer:
    /// [`Response::Ok`]. Operator only.
    FuseForget {
        /// The mount point (canonical path).
        mountpoint: String,
    },
}

/// Kernel → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A channel was created; fds `[channel]` ride along.
    Connected(Connected),
    /// The servers.
    Ps(Vec<ServerInfo>),
    /// Done.
    Ok,
    /// The fail point that was armed before a [`Request::FailPoint`] (`None`: nothing was, or
    /// it fired).
    FailPoint(Option<crate::failpoint::FailSpec>),
    /// Refused or failed.
    Error(KernelError),
    /// Answer to [`Request::Status`].
    Status(SystemStatus),
    /// Answer to [`Request::Release`]: the server left `held`/`dead` and is starting again.
    Released(Released),
    /// Answer to [`Request::FuseAdopt`]: the kept connection; its fd rides along.
    Fuse(KeptFuse),
}

/// A FUSE connection the kernel keeps for a mount point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFuse {
    /// The mount point.
    pub mountpoint: String,
    /// The negotiated protocol minor (0: `INIT` was never answered).
    pub minor: u32,
    /// The session tag of the front end that mounted it.
    pub session: u64,
}

/// The system as [`Request::Status`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemStatus {
    /// The system's name.
    pub system: String,
    /// The kernel's pid.
    pub kernel_pid: i32,
    /// Time since the kernel started, milliseconds.
    pub uptime_ms: u64,
    /// The servers, in manifest order (as [`Response::Ps`]).
    pub servers: Vec<ServerInfo>,
}

/// What [`Request::Release`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The server's name.
    pub server: String,
    /// The state it left: `held` or `dead`.
    pub was: String,
    /// Why it was in that state, in words (e.g. `restart storm: 200 restarts within 1000 ms`).
    pub reason: String,
    /// Whether it starts with an empty heap (policy `none` or `restart`, or an unusable undo
    /// log) rather than its recovered state.
    pub fresh: bool,
}

/// The last fault of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultInfo {
    /// The cause in words: `SIGSEGV at fail point after-handle`, `panic: <message>`,
    /// `hang: call ran 2.1 s > deadline 2 s`, `killed by SIGKILL`, `exited with status 3`,
    /// `restart requested by the operator`.
    pub cause: String,
    /// The generation that faulted.
    pub generation: u64,
    /// When, in milliseconds of kernel uptime.
    pub at_ms: u64,
}

/// A granted channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    /// The server's name.
    pub service: String,
    /// The channel's index among the server's channels.
    pub channel: u32,
    /// The server generation at connect time.
    pub generation: u64,
    /// The server's policy.
    pub policy: Policy,
}

/// One server as `txipc ps` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Name.
    pub name: String,
    /// Pid of the running incarnation (0 if none).
    pub pid: i32,
    /// Generation of the running incarnation.
    pub generation: u64,
    /// Policy.
    pub policy: Policy,
    /// Tracking mode.
    pub tracking: Tracking,
    /// `booting`, `running`, `recovering`, `held` (restart storm, unusable undo log) or `dead`
    /// (policy none).
    pub state: String,
    /// Restarts so far.
    pub restarts: u64,
    /// Requests failed as poison.
    pub aborted_requests: u64,
    /// Requests re-executed after a rollback.
    pub retried_requests: u64,
    /// Calls completed.
    pub calls: u64,
    /// Open channels.
    pub channels: u32,
    /// Last recovery time (fault seen → new incarnation serving), microseconds.
    pub last_recovery_us: Option<f64>,
    /// Pid of the hot standby (0 if none).
    pub standby_pid: i32,
    /// Pid of the zygote (0 if none).
    pub zygote_pid: i32,
    /// The last fault, if any.
    pub last_fault: Option<FaultInfo>,
    /// When the last recovery completed, in milliseconds of kernel uptime.
    pub last_recovery_at_ms: Option<u64>,
    /// Why the server is `held` or `dead`, in words; `None` in any other state.
    pub held_reason: Option<String>,
    /// Policy companion: checkpoints and the log.
    pub companion: Option<CompanionInfo>,
    /// The server holds a prepared sub-transaction of another server's root, not yet decided
    /// (nested transactions, ARCHITECTURE.md §13): its log says ACTIVE with a root and a
    /// published reply.
    pub prepared: bool,
    /// The running incarnation's handler waits for the reply of a call to another server (its
    /// busy word says so: policies companion and txipc); a fault now is not charged to its
    /// request.
    #[serde(default)]
    pub in_call: bool,
    /// Service times of a sample of its calls (transaction begin → replies published), by
    /// every incarnation, as the server alleges them in its status page (clamped by the
    /// kernel); empty when none was timed yet.
    pub latency: crate::latency::Histogram,
    /// Faults the kernel recorded (each one set `last_fault`: crashes, hangs, operator kills
    /// and restarts), whatever followed (a recovery, `held`, `dead`).
    pub faults: u64,
    /// When the kernel saw each step of the last recovery.
    #[serde(default)]
    pub last_recovery_steps: Option<RecoverySteps>,
    /// The standby is armed as the spare of the serving incarnation: it takes over by itself
    /// if that one fails (ARCHITECTURE.md §6, "The spare").
    #[serde(default)]
    pub spare_armed: bool,
}

/// When the kernel saw each step of a recovery, in `CLOCK_MONOTONIC` nanoseconds (the clock of
/// every process on the machine, so a client can place them against its own times).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RecoverySteps {
    /// The fault seen: a crash report, the pidfd of a dead incarnation, a hang.
    pub fault_ns: u64,
    /// The standby activated: the old incarnation confirmed dead or stopped, its waiting
    /// requests settled, the activation sent.
    pub activated_ns: u64,
    /// The new incarnation said it serves (after its restore and replay, under companion).
    pub serving_ns: u64,
    /// The spare recovered the server itself (ARCHITECTURE.md §6, "The spare"): `fault_ns` is
    /// when it woke, `activated_ns` when it had rolled back and settled, `serving_ns` when it
    /// served, all its own stamps.
    pub by_spare: bool,
}

/// A companion server's checkpoints and log, as the kernel saw them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CompanionInfo {
    /// Checkpoints received.
    pub checkpoints: u64,
    /// The last logged request of the newest checkpoint.
    pub checkpoint_index: u64,
    /// Size of the newest snapshot.
    pub snapshot_bytes: u64,
    /// Log bytes behind the newest checkpoint.
    pub log_bytes: u64,
    /// Checkpoints the server forked itself (its fallback when the log is ¾ full; with a
    /// following standby every other checkpoint is the standby's, which stalls nothing).
    #[serde(default)]
    pub server_checkpoints: u64,
    /// Longest service stall a checkpoint caused (the fork), microseconds.
    pub max_stall_us: u64,
    /// Stall of the newest checkpoint, microseconds.
    pub last_stall_us: u64,
    /// Records replayed at the last recovery.
    pub last_replayed: u64,
    /// Time the last recovery spent restoring the snapshot and replaying, microseconds.
    pub last_replay_us: u64,
    /// The last recovery found its checkpoint already restored by the warm standby.
    #[serde(default)]
    pub last_warm: bool,
    /// The checkpoint (its last request's index) the standby has restored in advance; a
    /// following standby: the last request its replica has applied (reported when it caught
    /// up with the log); 0: none.
    #[serde(default)]
    pub standby_index: u64,
    /// The last recovery: log records the standby's replica had not applied when the kernel
    /// saw the fault (its lag then; a cold activation: the records behind the checkpoint).
    /// The activation replayed `last_replayed` of them; the replica applied the rest between
    /// the fault and the activation.
    #[serde(default)]
    pub last_lag_records: u64,
    /// A following standby, live: the last request its replica has applied (unlike
    /// `standby_index`, also while it is behind); 0: none, or no following standby.
    #[serde(default)]
    pub standby_applied: u64,
    /// A following standby, live: log bytes past its replica (the last record always is: it
    /// is applied only once its successor is logged).
    #[serde(default)]
    pub standby_lag_bytes: u64,
    /// Of `checkpoints`, the deltas (incremental checkpoints: the changes since the previous
    /// link of the chain, for a server with the delta form of `Distill`).
    #[serde(default)]
    pub deltas: u64,
    /// Links of the kernel's newest checkpoint chain: its base and the deltas after it (0: no
    /// checkpoint).
    #[serde(default)]
    pub chain_len: u64,
    /// Bytes of the chain's deltas (`snapshot_bytes` is its base's).
    #[serde(default)]
    pub chain_delta_bytes: u64,
}

/// Why the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What happened and what to do.
    pub message: String,
}

/// Classes of kernel errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// No server of that name.
    UnknownService,
    /// The manifest grants the client no access.
    NotGranted,
    /// The server is down for good (policy none, or held down).
    Unavailable,
    /// The request could not be decoded, or is of another protocol version.
    BadRequest,
    /// The kernel failed (out of memory, too many channels...).
    Internal,
    /// The request acts on the system itself and the manifest grants the client no operator
    /// access (`[[operator]]`).
    NotOperator,
    /// The server is not in a state that allows the request (e.g. `release` of a running
    /// server); the message says which state it is in.
    WrongState,
    /// A limit of the manifest was reached (channels per client or per server); the message
    /// names the limit and its value.
    Limit,
}

/// What a zygote needs to prepare incarnations. Sent once, first; fds `[heap, log, doorbell,
/// status]` ride along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZygoteInit {
    /// The server's configuration.
    pub config: ServerConfig,
}

/// Everything an incarnation needs to know about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// The system's name.
    pub system: String,
    /// The server's name.
    pub name: String,
    /// The built-in server to run.
    pub builtin: String,
    /// Policy.
    pub policy: Policy,
    /// Tracking (policy txipc).
    pub tracking: Tracking,
    /// Where the heap is mapped in every incarnation.
    pub heap_base: u64,
    /// Heap size in bytes.
    pub heap_size: u64,
    /// Most requests in one transaction.
    pub batch_max: u32,
    /// Pin to this CPU.
    pub cpu: Option<usize>,
    /// The server's index in the manifest: its identity as the coordinator of nested
    /// transactions (the root `(index, txid)` every nested call carries).
    pub index: u32,
    /// The manifest's per-call deadline: a prepared participant asks the kernel for its root's
    /// decision, and answers calls of other roots with a conflict, after a quarter of it.
    pub deadline_ms: u64,
    /// Policy companion: checkpoint after this many logged requests.
    pub checkpoint_every: u64,
    /// Policy companion: checkpoint this long after the previous one (0: never by time).
    pub checkpoint_ms: u64,
    /// Policy companion: most bytes of message log behind the last checkpoint; a log this full
    /// forces a checkpoint (and waits for it).
    pub log_cap: u64,
    /// Policy companion: the standby follows the log and takes the checkpoints (else the
    /// server forks them and the standby restores each one).
    pub follow: bool,
    /// Policy companion, following standby: past this many records behind, the replica
    /// replays at its own priority (0: always at nice 19).
    pub follow_max_lag: u64,
}

/// Kernel → zygote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToZygote {
    /// Fork a standby incarnation; fd `[incarnation control socket]` rides along.
    Spawn {
        /// Its generation, if activated.
        generation: u64,
    },
    /// Exit.
    Exit,
}

/// Zygote → kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromZygote {
    /// Initialised, ready to spawn.
    Ready,
    /// Forked; fd `[pidfd]` rides along.
    Spawned {
        /// The generation it was spawned for.
        generation: u64,
        /// Its pid.
        pid: i32,
    },
    /// Could not fork.
    Failed {
        /// Why.
        message: String,
    },
    /// A child (an incarnation) ended and the zygote reaped it: how it ended, so that the
    /// kernel can say it even when the zombie was gone before the kernel looked. Sent for every
    /// child the zygote reaps, as soon as it ends (the zygote watches each child's pidfd).
    Reaped {
        /// Its pid.
        pid: i32,
        /// Its exit status, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
}

/// Kernel → incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToServer {
    /// Serve these channels too; one fd per index rides along, in order.
    AddChannels {
        /// The channels' indices.
        indices: Vec<u32>,
    },
    /// Stop serving this channel (revoked).
    RemoveChannel {
        /// Its index.
        index: u32,
    },
    /// Attach the heap and start serving as `generation`.
    Activate {
        /// The generation.
        generation: u64,
        /// Reformat the heap instead of recovering it (policy restart / first boot).
        fresh: bool,
    },
    /// Exit now.
    Shutdown,
    /// A channel this server opened to another service (answer to [`FromServer::Connect`], or,
    /// at spawn, one opened by an earlier incarnation in a committed transaction); fds
    /// `[channel]` ride along.
    Connected(Connected),
    /// How root `(server, txid)` ended (nested transactions, ARCHITECTURE.md §13): sent to a
    /// participant that asked ([`FromServer::Resolve`]), and to every server when the kernel
    /// settles a root while recovering its coordinator or a participant.
    Decided {
        /// The root's coordinator (server index).
        server: u32,
        /// The root transaction's id.
        txid: u64,
        /// Whether it committed.
        commit: bool,
    },
    /// Root `(server, txid)` is still undecided (its coordinator runs it): the answer to a
    /// [`FromServer::Resolve`] when nothing is known yet.
    Undecided {
        /// The root's coordinator (server index).
        server: u32,
        /// The root transaction's id.
        txid: u64,
    },
    /// The kernel refused [`FromServer::Connect`].
    ConnectRefused {
        /// The service asked for.
        service: String,
        /// Why.
        message: String,
    },
    /// Policy companion: start serving as `generation` after reconstituting the server from
    /// the last checkpoint (its chain's fds ride along when `snapshot` is true: the base, then
    /// its deltas in order) and replaying
    /// the message log behind it (see `crate::companion`).
    ActivateCompanion(CompanionStart),
    /// Policy companion, to a standby: the newest accepted checkpoint (its chain's sealed
    /// snapshot fds ride along, the base first, then its deltas). The standby restores it now — reconstitutes the server from it in
    /// advance — so that its activation only replays the log behind it (the warm standby).
    Warm,
    /// Policy companion, to a standby when it registers: where the log starts and the
    /// requests replay must skip, for a standby that follows the log as it is written
    /// (manifest `standby = "follow"`). `snapshot`: a [`ToServer::Warm`] with the newest
    /// checkpoint follows (else it follows the log from `log_start`, the server empty).
    Follow {
        /// Where the log starts when there is no snapshot (as [`CompanionStart::log_start`]).
        log_start: u64,
        /// As [`CompanionStart::skip`].
        skip: Vec<(u32, u32, u64)>,
        /// A checkpoint follows in a `Warm`.
        snapshot: bool,
    },
    /// To a standby (policy txipc): it is the spare of generation `old_generation`, which
    /// serves as process `old_pid`; fd `[that process's pidfd]` rides along. Once it sees that
    /// incarnation dead (the pidfd) or stopped after a crash (the spare's bell rings), it may
    /// claim the takeover word of the status page and recover and serve as `generation`
    /// itself (ARCHITECTURE.md §6, "The spare").
    Arm {
        /// The standby's own generation.
        generation: u64,
        /// The generation it watches.
        old_generation: u64,
        /// That generation's process.
        old_pid: i32,
        /// The manifest's `retry_limit` (the spare settles as the kernel would).
        retry_limit: u32,
    },
}

/// What a companion incarnation needs to reconstitute its server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompanionStart {
    /// The generation.
    pub generation: u64,
    /// A sealed snapshot memfd rides along; without one the server starts empty and replays
    /// the log from its start.
    pub snapshot: bool,
    /// Where replay starts when there is no snapshot (0, or where the log was reset).
    pub log_start: u64,
    /// Requests `(channel, slot, seq)` failed by the kernel (poison, or the server held down):
    /// replay skips their records, so their effects are absent.
    pub skip: Vec<(u32, u32, u64)>,
}

/// A checkpoint taken by a companion server (its forked child).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The last logged request the snapshot includes.
    pub index: u64,
    /// Log offset just after that request's record.
    pub log_offset: u64,
    /// Snapshot size in bytes (header included).
    pub bytes: u64,
    /// How long the server stopped serving for it (the fork), microseconds.
    pub stall_us: u64,
    /// How long the child took to distill, checksum and write it, microseconds.
    pub write_us: u64,
}

/// Incarnation → kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromServer {
    /// Channels mapped, waiting for `Activate`.
    Standby,
    /// Attached and serving.
    Active {
        /// Its generation.
        generation: u64,
    },
    /// Open a channel to another service, inside transaction `txid` (0: outside any). If that
    /// transaction is rolled back, the kernel revokes the channel.
    Connect {
        /// The service's name.
        service: String,
        /// The transaction the connection belongs to.
        txid: u64,
    },
    /// A prepared participant waited long for the decision of root `(server, txid)`: the
    /// kernel answers [`ToServer::Decided`] once it is known.
    Resolve {
        /// The root's coordinator (server index).
        server: u32,
        /// The root transaction's id.
        txid: u64,
    },
    /// Could not start (bad heap, mapping conflict...): the server is not restartable as is.
    Fatal {
        /// Why, and what to do.
        message: String,
    },
    /// Policy companion: a checkpoint was written; fd `[snapshot memfd, sealed]` rides along.
    /// Sent by the server's checkpoint child.
    Checkpoint(CheckpointInfo),
    /// Policy companion: the server reconstituted itself and replayed its log; sent before
    /// `Active`.
    Replayed {
        /// Log records replayed.
        records: u64,
        /// The index of the last request the state replay started from had applied (the
        /// replica's or the snapshot's; 0: none).
        from_index: u64,
        /// Snapshot bytes restored.
        snapshot_bytes: u64,
        /// Time to restore the snapshot and replay, microseconds.
        us: u64,
        /// The checkpoint had been restored in advance by this incarnation as a standby.
        warm: bool,
    },
    /// Policy companion, from a standby: it restored the checkpoint whose last request is
    /// `index` (after [`ToServer::Warm`]).
    Warmed {
        /// The checkpoint's last request.
        index: u64,
    },
    /// Policy companion: the server cannot be served correctly (a corrupt log record or
    /// snapshot, a divergent replay): hold it down and tell the operator why.
    Hold {
        /// What was found, and what to do.
        message: String,
    },
    /// The incarnation's address-space keeper (`txipc_sys::keeper`) runs; fd `[its pidfd]`
    /// rides along. The kernel kills it once the incarnation is gone and its successor serves
    /// (the teardown of the address space, off the recovery path), and at shutdown.
    Keeper,
    /// The spare took over from the generation it watched (after [`ToServer::Arm`]): it
    /// rolled the heap back, settled the taken slots, attached the heap and serves. Stands for
    /// [`FromServer::Active`].
    TookOver(TakeoverReport),
}

/// What a spare did when it took over (ARCHITECTURE.md §6, "The spare"): the kernel's
/// bookkeeping of a recovery it did not run itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TakeoverReport {
    /// The spare's generation (now serving).
    pub generation: u64,
    /// The generation it took over from.
    pub old_generation: u64,
    /// The undo log as the rollback found it, in words.
    pub log: String,
    /// Undo records undone.
    pub undone: u64,
    /// Requests `(channel, slot, seq)` re-posted and charged with this fault.
    pub charged: Vec<(u32, u32, u64)>,
    /// Requests re-posted.
    pub reposted: u64,
    /// Committed replies published.
    pub published: u64,
    /// The spare woke: the watched incarnation's pidfd fired, or its crash bell rang
    /// (monotonic ns).
    pub woke_ns: u64,
    /// The watched incarnation seen dead or stopped and the takeover claimed (monotonic ns).
    pub claimed_ns: u64,
    /// Rolled back and settled (monotonic ns).
    pub settled_ns: u64,
    /// Heap attached, server started: serving (monotonic ns).
    pub serving_ns: u64,
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed control message: {0}")]
pub struct ProtoError(pub String);

/// Encodes a control message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("control messages always encode")
}

/// Decodes a control message strictly (no trailing bytes).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Ok(v),
        Ok(_) => Err(ProtoError("trailing bytes".into())),
        Err(e) => Err(ProtoError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        let r = Request::Connect {
            version: PROTO_VERSION,
            service: "kv".into(),
        };
        assert_eq!(decode::<Request>(&encode(&r)).unwrap(), r);
        assert!(decode::<Request>(&[0xFF, 1, 2]).is_err());
        for n in 0..200u32 {
            let bytes: Vec<u8> = (0..n % 17).map(|i| (i * 31 + n) as u8).collect();
            let _ = decode::<Request>(&bytes);
            let _ = decode::<ToServer>(&bytes);
        }
    }

    #[test]
    fn crash_magic_is_not_a_message() {
        // The first byte of an encoded enum is its variant index, far below 0xFF.
        assert!(encode(&FromServer::Standby)[0] < 0x80);
    }
}
