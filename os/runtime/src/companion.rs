//! Servers with ordinary Rust state, and the companion that makes them recoverable.
//!
//! A [`PlainBuiltin`] is a `#[service]` server whose state is plain Rust data with a
//! [`Distill`](txipc_service::Distill) implementation, run through the generated
//! `<Trait>Companion<S>` dispatcher. Under policies `none` and `restart` this loop simply
//! serves. Under policy `companion` it is the in-process half of the companion (ARCHITECTURE.md
//! "Companion policy"):
//!
//! - every state-changing request (a known method not declared `#[readonly]`) is appended to the
//!   message log **before** the handler sees it: copied into a ring in a memfd the kernel
//!   owns and the server maps, then made part of the log by one store of the checked tail
//!   word — no system call; each record is checksummed and chained (its index, the digest of
//!   the previous request's reply), so a wild write into the log is detected at the next
//!   replay and holds the server;
//! - the standby follows the log as it is written (manifest `standby = "follow"`, the
//!   default): it replays each record once the next one is logged, so it is a replica one
//!   request behind the server, and every N applied requests or T ms it forks a child that
//!   distills the replica into a checksummed, versioned snapshot in a new memfd, seals it and
//!   hands it to the kernel — the server never stops for a checkpoint (it forks one itself only
//!   when its log fills faster than the replica follows). Under `standby = "warm"` the server
//!   forks the checkpoint child (the stall is the fork) and the standby restores each one;
//! - an incarnation activated after a fault takes its replica (or reconstitutes the server
//!   from the kernel's last snapshot), replays the log behind it in order (comparing reply digests: a divergent replay
//!   holds the server instead of serving different state), answers the requests whose clients
//!   still wait, and skips the ones the kernel failed (poison requests).
//!
//! Handlers must be deterministic. A companion server may call other servers
//! ([`crate::connect`]) from a state-changing request: every call and its reply is recorded in
//! the log, after the request's record, before the handler sees the reply, and a replay answers
//! the call from that record instead of sending it again. A call to another companion server
//! carries a call id (the caller's log offset of its request and the call's ordinal in it);
//! the callee keeps, per channel, the last call it answered, so a call re-sent by a caller that
//! died before recording the reply is answered again, not run twice (ARCHITECTURE.md §16,
//! "Calls between companion servers").

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use txipc_chan::{Doorbell, Status, Taken};
use txipc_core::companion::{
    self as fmt, Answer, BUSY_CALLED, BUSY_IN_CALL, CallMeta, ChainLink, Link, LogScan, RecordMeta,
    SNAPSHOT_HEADER, SnapshotMeta, busy_word, call_digest, reply_digest,
};
use txipc_core::failpoint::{FailKind, FailPoint};
use txipc_core::manifest::Policy;
use txipc_core::proto::{self, CheckpointInfo, FromServer, ServerConfig, ToServer};
use txipc_service::{Capture, Companion, DispatchError, DistillError};
use txipc_sys::{fdpass, process, shm::SharedBytes, status::StatusPage};

use crate::client::Channel;
use crate::server::{Activation, Chan, StandbyWork, add_channels, standby};

/// Method bit of a call that carries a call id: a companion server calling a companion server.
pub const CALL_ID_BIT: u32 = 0x4000_0000;
/// Bytes of the call id in front of such a call's request: the caller's log offset of the
/// request whose handler makes the call (u64 LE), the call's ordinal in it (u32 LE), 0u32.
pub const CALL_ID_LEN: usize = 16;
/// A call whose answer says "effect unknown" (the callee's channel timed out or it restarted)
/// is sent again with the same call id, with back-off, for this long: the callee answers a
/// repeated id from its record, so re-sending is safe, and a callee that is recovering is
/// waited for rather than its failure passed to the handler.
const CALL_RESEND_BUDGET: Duration = Duration::from_secs(10);

/// Method bit of a call made from a `#[readonly]` request's handler of a companion server to a
/// companion server: the callee runs it only if the method is `#[readonly]` too, and refuses
/// it (`Refused`, nothing run) otherwise. A readonly request is not logged, so it is not
/// replayed but run again after a fault: a state-changing call from it would be made twice.
pub const READONLY_CALL_BIT: u32 = 0x2000_0000;

/// Splits a request carrying a call id into the id, the method and the method's request.
fn split_call_id(method: u32, req: &[u8]) -> Option<((u64, u32), u32, &[u8])> {
    if method & CALL_ID_BIT == 0 || req.len() < CALL_ID_LEN {
        return None;
    }
    let off = u64::from_le_bytes(req[0..8].try_into().ok()?);
    let ord = u32::from_le_bytes(req[8..12].try_into().ok()?);
    Some(((off, ord), method & !CALL_ID_BIT, &req[CALL_ID_LEN..]))
}

/// One recorded call of the request being replayed.
struct Recorded {
    digest: u64,
    method: u32,
    status: u32,
    reply: Vec<u8>,
}

/// The calls of the request being handled, as [`outgoing_call`] sees them.
#[derive(Default)]
struct OutCalls {
    /// Inside a logged request's handler: its record's log offset and index.
    current: Option<(u64, u64)>,
    next_ordinal: u32,
    /// Replaying that request: its recorded calls not yet made again.
    recorded: VecDeque<Recorded>,
    /// Replaying: calls past the recorded ones are sent (the request is the last in the log,
    /// so its handler may have died before making or recording them); else they diverge.
    replaying: Option<bool>,
    /// The log's ring.
    ring: Option<Rc<Ring>>,
    rec: Vec<u8>,
    /// The control socket (to hold the server on a divergent replay).
    ctl: Option<Rc<OwnedFd>>,
    /// The name of the method being handled, for reports.
    name: Option<&'static str>,
    /// The busy word of the request being handled (with `BUSY_CALLED` once it made a call).
    busy: u64,
    /// Inside a `#[readonly]` request's handler (under policy companion).
    readonly: bool,
    /// A following standby replays: a divergence marks its replica stale instead of holding
    /// the server (the activation's own replay finds it again and holds then).
    following: bool,
    /// Set by a divergence while `following`.
    diverged: bool,
}

thread_local! {
    static OUT: RefCell<OutCalls> = RefCell::new(OutCalls::default());
}

/// A call from a handler of a companion server (through [`crate::Outgoing`]): recorded in the
/// log before the handler sees its reply; during a replay, answered from the record.
pub(crate) fn outgoing_call(
    ch: &Rc<Channel>,
    method: u32,
    request: &[u8],
    reply: &mut Vec<u8>,
) -> Result<(), txipc_service::CallError> {
    use txipc_service::Transport;
    let Some((offset, index)) = OUT.with(|o| o.borrow().current) else {
        if OUT.with(|o| o.borrow().readonly) && ch.info().policy == Policy::Companion {
            // A `#[readonly]` request is not logged: after a fault it runs again rather than
            // being replayed, so it may only make calls that change nothing. The callee checks.
            return match ch.call(method | READONLY_CALL_BIT, request, reply) {
                Err(txipc_service::CallError::Refused) => {
                    Err(txipc_service::CallError::Unavailable {
                        reason: format!(
                            "a #[readonly] request may only call #[readonly] methods: method {method} of `{}` changes state, and a readonly request is not logged (after a fault it runs again, so the call would be made twice); the call was refused and did not run. Declare the calling method state-changing (remove #[readonly]) or call a readonly method",
                            ch.info().service
                        ),
                    })
                }
                other => other,
            };
        }
        // Start-up, or a server under a baseline policy: an ordinary call.
        return ch.call(method, request, reply);
    };
    let service = ch.info().service.clone();
    let digest = call_digest(&service, method, request);
    let ordinal = OUT.with(|o| {
        let mut o = o.borrow_mut();
        o.next_ordinal += 1;
        o.next_ordinal - 1
    });
    // From now on the request has made a call whose effect stands at the callee: it is never
    // failed alone as poison (the kernel holds the server instead).
    let (busy, following) = OUT.with(|o| {
        let mut o = o.borrow_mut();
        o.busy |= BUSY_CALLED;
        (o.busy, o.following)
    });
    // (A following standby shares the status page with the serving incarnation: it never
    // touches its busy word.)
    let status_page = crate::failpoint::status().filter(|_| !following);
    if let Some(p) = status_page {
        p.set_busy(busy);
    }
    if let Some(tail) = OUT.with(|o| o.borrow().replaying) {
        match OUT.with(|o| o.borrow_mut().recorded.pop_front()) {
            Some(r) if r.digest == digest && r.method == method => {
                reply.clear();
                reply.extend_from_slice(&r.reply);
                return call_result(Status::from_wire(r.status), method);
            }
            Some(r) => {
                diverged(
                    index,
                    &format!(
                        "its call {ordinal} (to `{service}`, method {method}) is not the call it made when it first ran"
                    ),
                );
                // Only a following standby gets here: its replica is discarded.
                reply.clear();
                reply.extend_from_slice(&r.reply);
                return call_result(Status::from_wire(r.status), method);
            }
            None if !tail => {
                diverged(
                    index,
                    &format!(
                        "it made call {ordinal} (to `{service}`, method {method}), which it did not make when it first ran"
                    ),
                );
                return Err(txipc_service::CallError::Malformed);
            }
            None => {} // the calls it had not made (or recorded) before the fault: sent now
        }
    }
    let with_id = ch.info().policy == Policy::Companion;
    // While the reply is awaited the server waits on its callee: a fault now (a SIGKILL, the
    // watchdog) is not charged to this request, and the wait is not a hang of this server.
    if let Some(p) = status_page {
        p.set_busy(busy | BUSY_IN_CALL);
    }
    let status = if with_id {
        let mut req = Vec::with_capacity(CALL_ID_LEN + request.len());
        req.extend_from_slice(&offset.to_le_bytes());
        req.extend_from_slice(&ordinal.to_le_bytes());
        req.extend_from_slice(&0u32.to_le_bytes());
        req.extend_from_slice(request);
        let mut status = ch.call_status(method | CALL_ID_BIT, &req, reply);
        let mut resends = 0u32;
        let mut since: Option<Instant> = None;
        while status == Status::Restarted
            && since.get_or_insert_with(Instant::now).elapsed() < CALL_RESEND_BUDGET
        {
            // 1, 2, 4 … 32 ms: the callee is recovering (the busy word says this server waits
            // in a call, so none of this wait is charged to the request).
            std::thread::sleep(Duration::from_millis(1 << resends.min(5)));
            resends += 1;
            status = ch.call_status(method | CALL_ID_BIT, &req, reply);
        }
        status
    } else {
        ch.call_status(method, request, reply)
    };
    if let Some(p) = status_page {
        p.set_busy(busy);
    }
    crate::failpoint::fail_point(FailPoint::CallReplied.site());
    OUT.with(|o| {
        let mut o = o.borrow_mut();
        let o = &mut *o;
        o.rec.clear();
        fmt::encode_call_record(
            &CallMeta {
                index,
                ordinal,
                digest,
                method,
                status: status.to_wire(),
            },
            reply,
            &mut o.rec,
        );
        let fits = o.ring.as_ref().is_some_and(|r| r.fits(o.rec.len() as u64));
        if !fits {
            // No room in the log inside a handler (no checkpoint can be taken mid-request):
            // stop as a fault; the replay sends the call again with the same call id, and
            // the incarnation after it checkpoints at once.
            txipc_sys::crash::report_and_stop(txipc_sys::crash::CrashKind::Integrity);
        }
        if let Some(r) = &o.ring {
            r.push(index + 1, &o.rec);
        }
    });
    crate::failpoint::fail_point(FailPoint::CallRecorded.site());
    call_result(Some(status), method)
}

fn call_result(status: Option<Status>, method: u32) -> Result<(), txipc_service::CallError> {
    use txipc_service::CallError;
    match status {
        Some(s) => crate::client::status_to_result(s, 0).map_err(|e| match e {
            CallError::UnknownMethod { .. } => CallError::UnknownMethod { method },
            other => other,
        }),
        None => Err(CallError::Malformed),
    }
}

/// A replayed request's calls are not the calls it made when it first ran: hold the server
/// (returns only in a following standby, whose replica is then marked stale).
fn diverged(index: u64, what: &str) {
    let following = OUT.with(|o| {
        let mut o = o.borrow_mut();
        o.diverged |= o.following;
        o.following
    });
    if following {
        return;
    }
    let (ctl, name) = OUT.with(|o| {
        let o = o.borrow();
        (o.ctl.clone(), o.name)
    });
    let method = name.map_or(String::new(), |n| format!(" (method `{n}`)"));
    let message = format!(
        "divergent replay: logged request {index}{method} replayed differently: {what}; its handler is not deterministic, so the replayed state cannot be trusted: the server is held. Make the handler deterministic (no clocks, randomness or hash-order iteration)"
    );
    match ctl {
        Some(ctl) => hold(&ctl, message),
        None => std::process::exit(74),
    }
}

/// A server instance as the plain loop drives it: every generated `<Trait>Companion<S>` is one.
pub trait PlainInstance {
    /// Runs one request; `reply` is filled with the encoded reply.
    fn handle(
        &mut self,
        method: u32,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), DispatchError>;
    /// True if `method` exists and may change state (such requests are logged).
    fn is_logged(&self, method: u32) -> bool;
    /// The method's name, for reports.
    fn method_name(&self, method: u32) -> Option<&'static str>;
    /// Where a checkpoint may follow `method`.
    fn capture(&self, method: u32) -> Capture;
    /// Writes the distilled state to `out` as it is encoded.
    fn distill(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError>;
    /// The delta form ([`txipc_service::Distill::track_changes`]): starts or stops tracking
    /// changes; false: the server has no delta form (it is checkpointed whole).
    fn track_changes(&mut self, on: bool) -> bool;
    /// Writes the changes tracked since the last [`PlainInstance::forget_changes`].
    fn write_changes(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError>;
    /// Forgets the changes tracked so far.
    fn forget_changes(&mut self);
    /// Applies a delta's changes.
    fn apply_changes(&mut self, delta: &[u8]) -> Result<(), DistillError>;
}

impl<D: Companion> PlainInstance for D {
    fn handle(
        &mut self,
        method: u32,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), DispatchError> {
        self.dispatch(method, request, reply)
    }
    fn is_logged(&self, method: u32) -> bool {
        D::method_name(method).is_some() && !D::is_readonly(method)
    }
    fn method_name(&self, method: u32) -> Option<&'static str> {
        D::method_name(method)
    }
    fn capture(&self, method: u32) -> Capture {
        D::capture(method)
    }
    fn distill(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError> {
        self.distill_to(out)
    }
    fn track_changes(&mut self, on: bool) -> bool {
        Companion::track_changes(self, on)
    }
    fn write_changes(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError> {
        Companion::write_changes(self, out)
    }
    fn forget_changes(&mut self) {
        Companion::forget_changes(self)
    }
    fn apply_changes(&mut self, delta: &[u8]) -> Result<(), DistillError> {
        Companion::apply_changes(self, delta)
    }
}

/// A server with ordinary Rust state compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct PlainBuiltin {
    /// Its name in manifests (`builtin = "..."`).
    pub name: &'static str,
    /// The server's `Distill::VERSION`.
    pub state_version: u32,
    /// A server that never ran.
    pub fresh: fn() -> Box<dyn PlainInstance>,
    /// A server reconstituted from a snapshot's payload.
    pub reconstitute: Reconstitute,
}

/// How a [`PlainBuiltin`] is reconstituted from a snapshot's payload.
pub type Reconstitute = fn(&[u8]) -> Result<Box<dyn PlainInstance>, DistillError>;

impl PlainBuiltin {
    /// The built-in `name` served by the generated companion dispatcher `D`.
    pub fn of<D: Companion + 'static>(name: &'static str) -> PlainBuiltin {
        fn fresh<D: Companion + 'static>() -> Box<dyn PlainInstance> {
            Box::new(D::fresh())
        }
        fn reconstitute<D: Companion + 'static>(
            payload: &[u8],
        ) -> Result<Box<dyn PlainInstance>, DistillError> {
            Ok(Box::new(D::reconstitute_from(payload)?))
        }
        PlainBuiltin {
            name,
            state_version: D::STATE_VERSION,
            fresh: fresh::<D>,
            reconstitute: reconstitute::<D>,
        }
    }
}

thread_local! {
    static SESSION: Cell<u32> = const { Cell::new(u32::MAX) };
}

/// The session (connection) of the request being handled: the index of its channel, stable
/// for the life of the connection and across every restart of the server (a replayed request
/// runs in the session it first ran in). Per-connection state (open handles, cursors) is kept
/// in the server's state keyed by it, so it is distilled and survives with the rest.
/// `u32::MAX` outside a handler.
pub fn current_session() -> u32 {
    SESSION.with(Cell::get)
}

/// The message log's descriptor a companion server holds: the kernel's memfd (header page and
/// ring), sealed against resizing, mapped by the server to append and to replay.
#[derive(Debug)]
pub struct LogFds {
    /// The log memfd.
    pub log: OwnedFd,
    /// The following standby's bell: an eventfd every incarnation of the server shares (made by
    /// the zygote), rung by the serving incarnation when the sleeping replica is
    /// [`fmt::FOLLOW_WAKE_RECORDS`] behind, polled by the standby.
    pub bell: OwnedFd,
}

/// The message log's ring as this incarnation appends to it: shared by the request loop and
/// the recorder of outgoing calls (one thread: no lock).
#[derive(Debug)]
struct Ring {
    /// The log memfd mapped: header page and ring.
    map: SharedBytes,
    /// The ring's size.
    cap: u64,
    /// Log offset where the next record lands (the tail).
    end: Cell<u64>,
    /// A pad record's bytes, reused.
    pad: RefCell<Vec<u8>>,
    /// The following standby's bell, for the serving incarnation to ring ([`Ring::nudge`]);
    /// None in the standby itself.
    bell: Option<OwnedFd>,
    /// Ring bytes, from the ring's start, whose page-table entries this mapping has filled in
    /// ahead of use ([`Ring::populate_some`]); `cap`: all of them.
    populated: Cell<u64>,
}

/// How much of the ring a following standby populates per step ([`Ring::populate_some`]):
/// 64 pages, ~70 µs on this VM, so an activation that arrives meanwhile waits at most that.
const POPULATE_CHUNK: u64 = 256 << 10;

impl Ring {
    /// The log memfd mapped (header page and ring), nothing checked yet.
    fn mapping(fd: &OwnedFd, log_cap: u64) -> Result<Ring, String> {
        let len = fmt::LOG_HEADER as u64 + log_cap;
        let map = SharedBytes::map(fd, len as usize).map_err(|e| format!("message log: {e}"))?;
        Ok(Ring {
            map,
            cap: log_cap,
            end: Cell::new(0),
            pad: RefCell::new(Vec::with_capacity(fmt::RECORD_HEADER)),
            bell: None,
            populated: Cell::new(0),
        })
    }

    /// Fills in the page-table entries of the next [`POPULATE_CHUNK`] of the ring (none once
    /// all are), so that the appends of an incarnation that inherits this mapping take no
    /// page fault on their first lap of the ring (one per 4 KiB page, ~1.9 µs each here: a
    /// fault for every ~4 logged kv puts, on the server's critical path, until wave 8).
    /// Returns whether any is left to do.
    fn populate_some(&self) -> bool {
        let done = self.populated.get();
        if done >= self.cap {
            return false;
        }
        let n = POPULATE_CHUNK.min(self.cap - done);
        if self
            .map
            .populate_write(fmt::LOG_HEADER + done as usize, n as usize)
            .is_err()
        {
            // (Not supported: the pages fault in as they are written, as before.)
            self.populated.set(self.cap);
            return false;
        }
        self.populated.set(done + n);
        done + n < self.cap
    }

    /// [`Ring::populate_some`] until the whole ring is populated.
    fn populate_all(&self) {
        while self.populate_some() {}
    }

    /// Maps the message log (or takes over `mapped`, a following standby's mapping of it, with
    /// the page-table entries it populated) and checks its header against the manifest's cap;
    /// the log is `[from, tail)`, with the tail checked. `bell`: the following standby's, for
    /// the serving incarnation to ring.
    fn map(
        fd: &OwnedFd,
        log_cap: u64,
        from: u64,
        bell: Option<OwnedFd>,
        mapped: Option<Ring>,
    ) -> Result<(Ring, u64), String> {
        let mut ring = match mapped {
            Some(r) if r.cap == log_cap => r,
            _ => Ring::mapping(fd, log_cap)?,
        };
        let map = &ring.map;
        let magic = map.u64_at(fmt::LOG_MAGIC_AT).load(Ordering::Acquire);
        let cap = map.u64_at(fmt::LOG_CAP_AT).load(Ordering::Acquire);
        if magic != fmt::LOG_MAGIC || cap != log_cap {
            return Err(format!(
                "not a message log of {log_cap} bytes (magic {magic:#x}, cap {cap})"
            ));
        }
        let word = map.u64_at(fmt::LOG_TAIL_AT).load(Ordering::Acquire);
        let tail = match fmt::decode_tail(word) {
            Some(tail) if tail >= from && tail - from <= cap => tail,
            Some(tail) => {
                return Err(format!(
                    "the message log's tail ({tail}) is not within {cap} bytes after the checkpoint's offset {from}: the log is corrupt; the server is held rather than reconstituted from a log it cannot vouch for"
                ));
            }
            None => {
                return Err(format!(
                    "the message log's tail word {word:#018x} fails its check: the log is corrupt (a wild write?); the server is held rather than reconstituted from a log it cannot vouch for"
                ));
            }
        };
        ring.bell = bell;
        ring.end.set(tail);
        if tail == 0 {
            // Nothing was ever logged: the system's first incarnation (or one that failed
            // before its first logged request), so no recovery waits on this. The whole ring's
            // page-table entries now (~1 µs a page: 16 ms for 64 MiB), rather than a page fault
            // every ~4 KiB logged on the first lap; after a recovery the following standby
            // has populated the mapping it hands over (a chunk per step).
            ring.populate_all();
        }
        Ok((ring, tail))
    }

    /// A following standby's position in the header's replica words: the last request applied
    /// (`u64::MAX`: no replica) and the offset of the next record.
    fn publish_replica(&self, index: u64, offset: u64) {
        self.map
            .u64_at(fmt::LOG_REPLICA_OFFSET_AT)
            .store(offset, Ordering::Release);
        self.map
            .u64_at(fmt::LOG_REPLICA_AT)
            .store(index.wrapping_add(1), Ordering::Release);
    }

    /// After appending record `index`: wakes the following standby if it sleeps while its
    /// replica is [`fmt::FOLLOW_WAKE_RECORDS`] records or more behind (or the catch-up's bytes
    /// bound, `CATCH_UP`, for large records) — one load of a line the standby
    /// writes only around its sleeps, per record; a swap and a `write(2)` to the bell at most
    /// once per such sleep. No fence: a standby that set its asleep word just after this load
    /// is rung at the next append (the replica is still behind), and one that sleeps with no
    /// append coming has its timer.
    fn nudge(&self, index: u64) {
        let Some(bell) = &self.bell else { return };
        let asleep = self.map.u64_at(fmt::LOG_FOLLOW_ASLEEP_AT);
        if asleep.load(Ordering::Relaxed) == 0 {
            return;
        }
        // `index + 1` of the replica's last applied request; 0: no replica follows.
        let replica = self.map.u64_at(fmt::LOG_REPLICA_AT).load(Ordering::Relaxed);
        if replica == 0 {
            return;
        }
        // Behind by the records bound, or by the catch-up's bytes bound (large records).
        let at = self
            .map
            .u64_at(fmt::LOG_REPLICA_OFFSET_AT)
            .load(Ordering::Relaxed);
        let bytes = self.end.get().saturating_sub(at);
        if (index + 1).saturating_sub(replica) < fmt::FOLLOW_WAKE_RECORDS
            && bytes < (self.cap / CATCH_UP).min(CATCH_UP_MAX)
        {
            return;
        }
        if asleep
            .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let _ = rustix::io::write(bell, &1u64.to_ne_bytes());
        }
    }

    /// The following standby's asleep word ([`fmt::LOG_FOLLOW_ASLEEP_AT`]).
    fn set_asleep(&self, asleep: bool) {
        self.map
            .u64_at(fmt::LOG_FOLLOW_ASLEEP_AT)
            .store(asleep as u64, Ordering::Relaxed);
    }

    /// A copy of the log `[from, to)`.
    fn read(&self, from: u64, to: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.read_into(from, to, &mut bytes);
        bytes
    }

    /// A copy of the log `[from, to)` into `bytes` (cleared first; its capacity is kept, so a
    /// following standby that reads the log at every step allocates and faults in no new
    /// pages for it).
    fn read_into(&self, from: u64, to: u64, bytes: &mut Vec<u8>) {
        bytes.clear();
        bytes.reserve((to - from) as usize);
        for (at, n) in fmt::ring_ranges(from, to, self.cap) {
            self.map.copy_out(at, n, bytes);
        }
    }

    /// Where log offset `off` lives in the memfd.
    fn phys(&self, off: u64) -> usize {
        fmt::LOG_HEADER + (off % self.cap) as usize
    }

    /// The offset of the newest checkpoint the kernel accepted (the header word it writes).
    fn accepted(&self) -> u64 {
        self.map
            .u64_at(fmt::LOG_ACCEPTED_AT)
            .load(Ordering::Acquire)
    }

    /// Log bytes the kernel still needs (behind no accepted checkpoint).
    fn used(&self) -> u64 {
        self.end.get().saturating_sub(self.accepted())
    }

    /// Whether a record of `len` bytes can be appended without writing over log bytes the
    /// kernel may still need (those after its newest accepted checkpoint).
    fn fits(&self, len: u64) -> bool {
        let at = fmt::ring_place(self.end.get(), len, self.cap);
        (at + len).saturating_sub(self.accepted()) <= self.cap
    }

    /// Appends `rec` (the caller checked it [`fits`](Self::fits)): a pad first if it would
    /// cross the end of the lap (standing before request `next_index`), then the record past
    /// the tail, then the new tail word — the log point. Returns the record's offset.
    fn push(&self, next_index: u64, rec: &[u8]) -> u64 {
        self.push_parts(next_index, rec, &[])
    }

    /// [`Ring::push`] of the record `head` + `body` + zeros to a multiple of 8 bytes, copied
    /// piece by piece into the ring (a request record is its header and the request itself:
    /// no copy of the whole record is made first).
    fn push_parts(&self, next_index: u64, head: &[u8], body: &[u8]) -> u64 {
        let end = self.end.get();
        let len = (head.len() + body.len()).next_multiple_of(8) as u64;
        let at = fmt::ring_place(end, len, self.cap);
        if at - end >= fmt::RECORD_HEADER as u64 {
            let mut pad = self.pad.borrow_mut();
            pad.clear();
            fmt::encode_pad(next_index, at - end, &mut pad);
            self.map.copy_in(self.phys(end), &pad);
        }
        let p = self.phys(at);
        self.map.copy_in(p, head);
        self.map.copy_in(p + head.len(), body);
        let tail = len as usize - head.len() - body.len();
        self.map
            .copy_in(p + head.len() + body.len(), &[0u8; 8][..tail]);
        self.end.set(at + len);
        self.map
            .u64_at(fmt::LOG_TAIL_AT)
            .store(fmt::tail_word(at + len), Ordering::Release);
        at
    }
}

fn fatal(ctl: &OwnedFd, message: String) -> ! {
    let _ = fdpass::send(ctl, &proto::encode(&FromServer::Fatal { message }), &[]);
    std::process::exit(74)
}

/// Tells the kernel the server cannot be served correctly, then waits to be killed (exiting
/// would look like a new fault).
fn hold(ctl: &OwnedFd, message: String) -> ! {
    let _ = fdpass::send(ctl, &proto::encode(&FromServer::Hold { message }), &[]);
    let mut buf = vec![0u8; 4096];
    loop {
        match fdpass::recv(ctl, &mut buf, false) {
            Ok(Some(_)) | Ok(None) => {}
            Err(_) => std::process::exit(0),
        }
    }
}

/// The end of a checkpoint chain as its headers say: its base, its last link, how many links
/// and how many bytes of base and of deltas.
#[derive(Debug, Clone, Copy)]
struct ChainEnd {
    base: ChainLink,
    end: ChainLink,
    links: usize,
    base_bytes: u64,
    delta_bytes: u64,
}

impl ChainEnd {
    /// Whether the chain may take one more delta: it has room for a link (they travel in one
    /// message), and its deltas together are less than [`DELTA_BYTES_PER_BASE`] bases.
    fn takes_a_delta(&self) -> bool {
        self.links < MAX_CHAIN
            && self.delta_bytes < self.base_bytes.saturating_mul(DELTA_BYTES_PER_BASE)
    }
}

/// The chain's headers (and delta links), read from its fds without reading the payloads
/// (the kernel checked them when it accepted each; a restore checks everything again).
fn chain_of(fds: &[OwnedFd]) -> Option<ChainEnd> {
    let mut chain: Option<ChainEnd> = None;
    for fd in fds {
        let mut h = [0u8; SNAPSHOT_HEADER + fmt::DELTA_LINK];
        let n = rustix::io::pread(fd, &mut h, 0).ok()?;
        let (meta, len) = fmt::check_snapshot_header(&h[..n]).ok()?;
        let link = fmt::snapshot_link(&h[..n]);
        let after = match link {
            Link::Base { .. } => (meta.index, meta.index),
            Link::Delta { .. } => fmt::decode_delta_link(&h[SNAPSHOT_HEADER..n]).ok()?.0,
        };
        let l = ChainLink { meta, link, after };
        let bytes = SNAPSHOT_HEADER as u64 + len;
        chain = Some(match chain {
            None => ChainEnd {
                base: l,
                end: l,
                links: 1,
                base_bytes: bytes,
                delta_bytes: 0,
            },
            Some(c) => ChainEnd {
                end: l,
                links: c.links + 1,
                delta_bytes: c.delta_bytes + bytes,
                ..c
            },
        });
    }
    chain
}

/// A checkpoint restored: the server reconstituted from it, ready to replay the log behind it.
struct Restored {
    /// The header of the chain's last snapshot (sealed: it names the snapshot).
    header: [u8; SNAPSHOT_HEADER],
    meta: SnapshotMeta,
    instance: Box<dyn PlainInstance>,
    answers: Vec<Answer>,
    /// The snapshot's size.
    bytes: u64,
    /// A following standby's replica: the log start it follows (`meta` then says how far it
    /// got: the state after request `meta.index`, the next record at `meta.log_offset`).
    follows: Option<u64>,
    /// The chain it was restored from (None: none, a fresh server).
    chain: Option<ChainEnd>,
}

/// Reads, verifies and decodes the checkpoint chain in `fds` — a base, then its deltas in
/// order — and reconstitutes the server from it: the base, then each delta's changes applied.
/// Every link is checked whole (header, payload checksum, state version) and must extend the
/// chain before it (a delta of this very base, starting where the chain ends): a corrupt
/// delta, a gap, a delta of another base is an error naming it, never a wrong state.
fn restore(builtin: PlainBuiltin, fds: &[OwnedFd]) -> Result<Restored, String> {
    let Some((base_fd, deltas)) = fds.split_first() else {
        return Err("no snapshot to restore".into());
    };
    let bytes = read_all(base_fd, 0).map_err(|e| format!("reading the snapshot: {e}"))?;
    let (meta, payload) =
        fmt::decode_snapshot(&bytes, builtin.state_version).map_err(|e| e.to_string())?;
    let link = fmt::snapshot_link(&bytes);
    if !matches!(link, Link::Base { .. }) {
        return Err(
            "snapshot is corrupt: the checkpoint chain does not start with a full snapshot; the server is held rather than reconstituted from state it cannot vouch for"
                .into(),
        );
    }
    let (payload, mut answers) = fmt::split_payload(payload).map_err(|e| e.to_string())?;
    let mut instance = (builtin.reconstitute)(payload).map_err(|e| {
        format!("the snapshot passed its checksum but {e}: the state cannot be reconstituted")
    })?;
    let mut header = [0u8; SNAPSHOT_HEADER];
    header.copy_from_slice(&bytes[..SNAPSHOT_HEADER]);
    let base = ChainLink {
        meta,
        link,
        after: (meta.index, meta.index),
    };
    let mut chain = ChainEnd {
        base,
        end: base,
        links: 1,
        base_bytes: bytes.len() as u64,
        delta_bytes: 0,
    };
    drop(bytes);
    for (k, fd) in deltas.iter().enumerate() {
        let what = |e: String| format!("delta {} of the checkpoint chain: {e}", k + 1);
        let bytes = read_all(fd, 0).map_err(|e| what(format!("reading it: {e}")))?;
        let (m, payload) =
            fmt::decode_snapshot(&bytes, builtin.state_version).map_err(|e| what(e.to_string()))?;
        let (after, rest) = fmt::decode_delta_link(payload).map_err(|e| what(e.to_string()))?;
        let l = ChainLink {
            meta: m,
            link: fmt::snapshot_link(&bytes),
            after,
        };
        fmt::check_next_link(&base, &chain.end, &l).map_err(|e| what(e.to_string()))?;
        let (changes, a) = fmt::split_payload(rest).map_err(|e| what(e.to_string()))?;
        instance.apply_changes(changes).map_err(|e| {
            what(format!(
                "it passed its checksum but {e}: the state cannot be reconstituted"
            ))
        })?;
        answers = a;
        header.copy_from_slice(&bytes[..SNAPSHOT_HEADER]);
        chain.end = l;
        chain.links += 1;
        chain.delta_bytes += bytes.len() as u64;
    }
    Ok(Restored {
        header,
        meta: chain.end.meta,
        instance,
        answers,
        bytes: chain.base_bytes + chain.delta_bytes,
        follows: None,
        chain: Some(chain),
    })
}

/// The header of the snapshot in `fd`.
fn snapshot_header_of(fd: &OwnedFd) -> Option<[u8; SNAPSHOT_HEADER]> {
    let mut h = [0u8; SNAPSHOT_HEADER];
    match rustix::io::pread(fd, &mut h, 0) {
        Ok(n) if n == SNAPSHOT_HEADER => Some(h),
        _ => None,
    }
}

/// The standby restores checkpoints at nice 19 (in the CPU time the server and its clients
/// leave), and goes back to its priority after — only where it may (root, or a nice limit
/// that allows it): otherwise it restores at its own priority rather than risk serving at 19.
struct LowPriority(Option<i32>);

impl LowPriority {
    fn enter() -> LowPriority {
        let may = rustix::process::geteuid().is_root()
            || rustix::process::getrlimit(rustix::process::Resource::Nice)
                .current
                .is_some_and(|c| c >= 20);
        let old = may
            .then(|| rustix::process::getpriority_process(None).ok())
            .flatten();
        if old.is_some() {
            let _ = rustix::process::setpriority_process(None, 19);
        }
        LowPriority(old)
    }
}

impl Drop for LowPriority {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            let _ = rustix::process::setpriority_process(None, old);
        }
    }
}

/// Starts the life of a forked checkpoint writer: its own faults are its exit status (not the
/// server's crash report), it dies with its parent, and it yields the CPU to the server and its
/// clients (on two CPUs an equal share would take one from a spinning server or client).
fn become_checkpoint_writer() {
    txipc_sys::crash::disarm();
    if process::die_with_parent(process::getppid()).is_err() {
        std::process::exit(71);
    }
    let _ = rustix::process::setpriority_process(None, 19);
}

/// Ends the life of a forked checkpoint writer: seals the snapshot (`seal_snapshot`), hands it
/// to the kernel with its figures (`stall_us`: how long the server stopped for it; `write_us`:
/// since `started`), and exits with the status of the step that failed, if any.
fn send_checkpoint_and_exit(
    ctl: &OwnedFd,
    server: &str,
    instance: &dyn PlainInstance,
    answers: &HashMap<u32, Answer>,
    meta: &SnapshotMeta,
    status: &StatusPage,
    (stall_us, started): (u64, Instant),
) -> ! {
    let (fd, bytes) = match seal_snapshot(server, instance, answers, meta, status) {
        Ok(done) => done,
        Err(code) => std::process::exit(code),
    };
    let info = CheckpointInfo {
        index: meta.index,
        log_offset: meta.log_offset,
        bytes,
        stall_us,
        write_us: started.elapsed().as_micros() as u64,
    };
    let sent = fdpass::send(
        ctl,
        &proto::encode(&FromServer::Checkpoint(info)),
        &[fd.as_fd()],
    );
    std::process::exit(if sent.is_ok() { 0 } else { 79 })
}

/// Distills `instance` (and the answers of calls by call id) into a snapshot described by
/// `meta`, checksummed, in a new memfd sealed against every write. The state is streamed into
/// the memfd as it is encoded (`SnapshotFile`): no copy of it is built in memory first, so
/// the writer's cost is one encoding pass and the memfd's own pages. Fail point `checkpoint`
/// fires here (kind `corrupt`: a wild write after the checksum, which the restore must
/// notice). Returns the fd and the snapshot's size, or the exit status of the step that failed.
fn seal_snapshot(
    server: &str,
    instance: &dyn PlainInstance,
    answers: &HashMap<u32, Answer>,
    meta: &SnapshotMeta,
    status: &StatusPage,
) -> Result<(OwnedFd, u64), i32> {
    let name = format!("txipc-snap-{server}");
    let Ok(fd) = rustix::fs::memfd_create(
        name.as_str(),
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    ) else {
        return Err(76);
    };
    // The header goes in last (it carries the payload's length and checksum).
    if write_all(&fd, &[0u8; SNAPSHOT_HEADER]).is_err() {
        return Err(77);
    }
    let mut file = SnapshotFile {
        fd: &fd,
        buf: Vec::with_capacity(SNAPSHOT_CHUNK),
        crc: fmt::PayloadCrc::default(),
        abort: None,
    };
    // (A failed write of the memfd surfaces as an encoding error too.)
    if instance.distill(&mut file).is_err() {
        return Err(75);
    }
    let mut answers: Vec<Answer> = answers.values().cloned().collect();
    answers.sort_by_key(|a| a.chan);
    let mut section = Vec::new();
    fmt::answers_section(&answers, &mut section);
    if std::io::Write::write_all(&mut file, &section).is_err() || file.flush_buf().is_err() {
        return Err(77);
    }
    let payload_len = file.crc.len();
    let header = file.crc.clone().header(meta);
    if !pwrite_all(&fd, &header, 0) {
        return Err(77);
    }
    match status.fire_kind(FailPoint::Checkpoint as u8) {
        Some(k) if k == FailKind::Corrupt as u8 => {
            // A wild write into the payload after its checksum was taken.
            let at = (SNAPSHOT_HEADER as u64) + payload_len / 2;
            let mut b = [0u8; 1];
            if payload_len > 0 && rustix::io::pread(&fd, &mut b, at).is_ok() {
                b[0] ^= 0x5A;
                let _ = pwrite_all(&fd, &b, at);
            }
        }
        Some(k) => txipc_sys::crash::inject(k),
        None => {}
    }
    let seals = rustix::fs::SealFlags::SHRINK
        | rustix::fs::SealFlags::GROW
        | rustix::fs::SealFlags::WRITE
        | rustix::fs::SealFlags::SEAL;
    if rustix::fs::fcntl_add_seals(&fd, seals).is_err() {
        return Err(78);
    }
    Ok((fd, SNAPSHOT_HEADER as u64 + payload_len))
}

/// Writes a delta of the replica in `instance` (the changes since the chain's end, request
/// `after`, through request `meta.index`) into a new memfd, checksummed, sealed: the payload
/// is the delta's link (the base's index, `after`), the server's delta form, the runtime's
/// section. Written by the following standby itself (a delta is small: no fork, so no
/// copy-on-write faults afterwards), given up if an activation comes meanwhile. Fail point
/// `checkpoint` fires here: kind `corrupt` flips a payload byte after the checksum (the restore
/// must notice); any other kind kills the standby mid-delta. Returns the fd and its size, or
/// None (nothing was handed over; the changes stay tracked).
fn seal_delta(
    server: &str,
    instance: &dyn PlainInstance,
    answers: &HashMap<u32, Answer>,
    (meta, chain, after): (&SnapshotMeta, &ChainEnd, u64),
    status: &StatusPage,
    generation: u64,
) -> Option<(OwnedFd, u64)> {
    let Link::Base { crc: base_crc } = chain.base.link else {
        return None;
    };
    let name = format!("txipc-snap-{server}");
    let fd = rustix::fs::memfd_create(
        name.as_str(),
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .ok()?;
    write_all(&fd, &[0u8; SNAPSHOT_HEADER]).ok()?;
    let mut file = SnapshotFile {
        fd: &fd,
        buf: Vec::with_capacity(SNAPSHOT_CHUNK),
        crc: fmt::PayloadCrc::default(),
        abort: Some((status, generation)),
    };
    std::io::Write::write_all(
        &mut file,
        &fmt::encode_delta_link(chain.base.meta.index, after),
    )
    .ok()?;
    instance.write_changes(&mut file).ok()?;
    let mut answers: Vec<Answer> = answers.values().cloned().collect();
    answers.sort_by_key(|a| a.chan);
    let mut section = Vec::new();
    fmt::answers_section(&answers, &mut section);
    std::io::Write::write_all(&mut file, &section).ok()?;
    file.flush_buf().ok()?;
    let payload_len = file.crc.len();
    let header = file.crc.clone().delta_header(meta, base_crc);
    if !pwrite_all(&fd, &header, 0) {
        return None;
    }
    match status.fire_kind(FailPoint::Checkpoint as u8) {
        Some(k) if k == FailKind::Corrupt as u8 => {
            let at = (SNAPSHOT_HEADER as u64) + payload_len / 2;
            let mut b = [0u8; 1];
            if rustix::io::pread(&fd, &mut b, at).is_ok() {
                b[0] ^= 0x5A;
                let _ = pwrite_all(&fd, &b, at);
            }
        }
        Some(k) => {
            // The writer killed mid-delta: here the writer is the standby itself (its death
            // is the standby's, which the kernel replaces; not reported as the server's).
            txipc_sys::crash::disarm();
            txipc_sys::crash::inject(k);
            std::process::exit(70);
        }
        None => {}
    }
    let seals = rustix::fs::SealFlags::SHRINK
        | rustix::fs::SealFlags::GROW
        | rustix::fs::SealFlags::WRITE
        | rustix::fs::SealFlags::SEAL;
    rustix::fs::fcntl_add_seals(&fd, seals).ok()?;
    Some((fd, SNAPSHOT_HEADER as u64 + payload_len))
}

/// How much of the encoded state a checkpoint writer buffers before writing it to the memfd.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Why a delta's write stops when an activation comes (the error its writes return from then
/// on).
const DELTA_GIVEN_UP: &str =
    "the generation changed (an activation is coming): the delta is given up";

/// The payload of a snapshot as it is written: buffered into chunks appended to the memfd
/// (`write`), checksummed on the way.
struct SnapshotFile<'a> {
    fd: &'a OwnedFd,
    buf: Vec<u8>,
    crc: fmt::PayloadCrc,
    /// A following standby's delta, written in the standby itself: given up (an error) at the
    /// next chunk once the status page's generation is no longer this one (an activation is
    /// coming: it must not wait for the delta).
    abort: Option<(&'a StatusPage, u64)>,
}

impl SnapshotFile<'_> {
    /// An error once the delta must be given up (the generation changed).
    fn given_up(&self) -> std::io::Result<()> {
        match self.abort {
            // Not `ErrorKind::Interrupted`: `write_all` (and every serializer writing through
            // it) retries an interrupted write, so the standby looped here — a write that
            // failed and was retried forever — until the kernel's activation timeout killed
            // it (wave 7: the 5 s recoveries, ARCHITECTURE.md §16 "Crash points").
            Some((status, generation)) if status.generation() != generation => {
                Err(std::io::Error::other(DELTA_GIVEN_UP))
            }
            _ => Ok(()),
        }
    }

    fn flush_buf(&mut self) -> std::io::Result<()> {
        self.given_up()?;
        let r = write_all(self.fd, &self.buf);
        self.buf.clear();
        r
    }
}

impl std::io::Write for SnapshotFile<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.crc.update(data);
        if self.buf.len() + data.len() > SNAPSHOT_CHUNK {
            self.flush_buf()?;
        }
        if data.len() >= SNAPSHOT_CHUNK {
            // (A chunk written whole is looked at too.)
            self.given_up()?;
            write_all(self.fd, data)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_buf()
    }
}

fn pwrite_all(fd: &OwnedFd, mut bytes: &[u8], mut at: u64) -> bool {
    while !bytes.is_empty() {
        match rustix::io::pwrite(fd, bytes, at) {
            Ok(0) => return false,
            Ok(n) => {
                bytes = &bytes[n..];
                at += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
    true
}

fn read_all(fd: &OwnedFd, from: u64) -> std::io::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd)?.st_size as u64;
    let len = size.saturating_sub(from) as usize;
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = rustix::io::pread(fd, &mut out[done..], from + done as u64)?;
        if n == 0 {
            out.truncate(done);
            break;
        }
        done += n;
    }
    Ok(out)
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(std::io::Error::other("write returned 0")),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A checkpoint writer at work (a forked child): its pid, the log offset it captures, when it
/// started, and the logged requests it covers (given back to the counter if it is lost).
#[derive(Debug, Clone, Copy)]
struct Writer {
    pid: i32,
    offset: u64,
    /// The last request it captures.
    index: u64,
    started: Instant,
    since: u64,
    /// It got its parent's priority back (it ran past [`HURRY_AFTER`], or the log filled).
    hurried: bool,
}

/// A checkpoint writer still at work after this long gets its parent's priority back: at nice
/// 19 on a machine whose CPUs are all busy it may get almost no CPU time, and one starved
/// until [`CHILD_DEADLINE`] would be killed and its checkpoint lost.
const HURRY_AFTER: Duration = Duration::from_secs(5);

/// Gives writer `w` the priority this process runs at.
fn hurry_writer(w: &mut Writer) {
    if let Some(p) = rustix::process::Pid::from_raw(w.pid) {
        let own = rustix::process::getpriority_process(None).unwrap_or(0);
        let _ = rustix::process::setpriority_process(Some(p), own);
        w.hurried = true;
    }
}

/// What became of a checkpoint writer that was reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaped {
    /// Still at work.
    Running,
    /// It exited 0: its snapshot is with the kernel.
    Done,
    /// It faulted, failed, or was killed (at its deadline, or by anyone): its checkpoint is lost.
    Lost,
}

/// Reaps writer `w` if it is done (`block`: waits for it); a writer past [`CHILD_DEADLINE`] is
/// killed and lost.
fn reap_writer(w: &mut Writer, block: bool) -> Reaped {
    let Some(p) = rustix::process::Pid::from_raw(w.pid) else {
        return Reaped::Lost;
    };
    let opts = if block {
        rustix::process::WaitOptions::empty()
    } else {
        rustix::process::WaitOptions::NOHANG
    };
    match rustix::process::waitpid(Some(p), opts) {
        Ok(Some((_, st))) if st.exit_status() == Some(0) => Reaped::Done,
        Ok(Some(_)) | Err(_) => Reaped::Lost,
        Ok(None) if w.started.elapsed() > CHILD_DEADLINE => {
            let _ = process::kill(w.pid, nix_kill());
            let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
            Reaped::Lost
        }
        Ok(None) => {
            if !w.hurried && w.started.elapsed() > HURRY_AFTER {
                hurry_writer(w);
            }
            Reaped::Running
        }
    }
}

/// The first wait before a checkpoint is tried again after one was lost, and the longest: it
/// doubles with every loss in a row, so a writer that always fails does not fork in a loop.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// When a checkpoint may be tried again after lost ones (ARCHITECTURE.md §16, "Checkpoints"):
/// a lost checkpoint gives its requests back to the counter, so the next one is due at once —
/// but not before this back-off.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// Not before then (None: no loss since the last success).
    not_before: Option<Instant>,
    /// The wait after the next loss.
    next: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            not_before: None,
            next: RETRY_FIRST,
        }
    }
}

impl Retry {
    fn lost(&mut self) {
        self.not_before = Some(Instant::now() + self.next);
        self.next = (self.next * 2).min(RETRY_MAX);
    }
    fn done(&mut self) {
        *self = Retry::default();
    }
    /// Whether a checkpoint may be started now.
    fn allows(&self) -> bool {
        self.not_before.is_none_or(|t| Instant::now() >= t)
    }
    /// How long until it allows one (None: it does already, or nothing was lost).
    fn wait(&self) -> Option<Duration> {
        self.not_before
            .map(|t| t.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

/// How often a following standby looks at the log's tail while records keep coming, and the
/// longest it waits when they do not.
const FOLLOW_POLL: Duration = Duration::from_micros(500);
const FOLLOW_IDLE: Duration = Duration::from_millis(20);
/// With a lag bound (`follow_max_lag`), the longest a caught-up replica sleeps before it
/// looks at the log again: a burst must not run far past the bound unseen.
const FOLLOW_IDLE_BOUNDED: Duration = Duration::from_millis(1);
/// The replica applies this many records, then looks for a control message (an activation):
/// an activation waits for at most this many records of the replica's, never for its whole
/// lag (ARCHITECTURE.md §16, "The following standby").
const FOLLOW_CHUNK: usize = 64;
/// A following standby whose replica is behind the tail by `1 / CATCH_UP` of the ring, or by
/// `CATCH_UP_MAX` bytes, whichever is less, replays at its own priority, not at nice 19,
/// until it has caught up (the bytes bound keeps a large ring from allowing a lag that a
/// recovery would then replay: 4 MiB is ~4,000 kv puts of 1 KB).
const CATCH_UP: u64 = 8;
const CATCH_UP_MAX: u64 = 4 << 20;
/// … or by this many records (the number at which a sleeping replica is rung awake by the
/// server, `Ring::nudge`). The bytes bound alone let a log of small records (a counter's
/// increments, ~100 bytes each) lag by ~40,000 of them, which an activation then replays
/// (~0.2 µs each: 8 ms), the p99 of a recovery; 4,096 (wave 7) still let it lag by ~25,000,
/// because the replica slept through the burst (its timer backs off to 20 ms when idle) and
/// only its own look at the log could start a catch-up (ARCHITECTURE.md §16, "Catch-up and
/// log sizing").
const CATCH_UP_RECORDS: u64 = fmt::FOLLOW_WAKE_RECORDS;
/// A following standby keeps its log copy buffer between steps up to this capacity (a long
/// catch-up step's buffer is freed).
const LOG_COPY_KEEP: usize = 8 << 20;
/// Most links of a checkpoint chain (a base and its deltas), as the kernel keeps them: they
/// travel in one message. Past it — or once the deltas together are
/// [`DELTA_BYTES_PER_BASE`] times the base — the next checkpoint is a base.
const MAX_CHAIN: usize = txipc_sys::fdpass::MAX_FDS;
/// A chain takes deltas until they together are this many times the size of its base; then
/// the next checkpoint is a base. A base costs a fork of the replica, a child that encodes the
/// whole state, and copy-on-write faults in the standby while it lives; a chain's deltas cost
/// only their own bytes, but a restore (the next standby's, or a cold activation's) applies them
/// all. At 1 (wave 6) YCSB A took a base after every three or four deltas, and the base's
/// writer and its copy-on-write faults were a third of the companion's CPU beside the server;
/// at 3 bases come a third as often and a restore reads at most four times a base.
const DELTA_BYTES_PER_BASE: u64 = 3;
/// How long a following standby waits for the kernel's `Warm` that puts its last checkpoint
/// in the chain before it takes the next one as a base (the last was refused or lost).
const PENDING_MAX: Duration = Duration::from_secs(2);

/// A standby that follows the message log as it is written (manifest `standby = "follow"`,
/// ARCHITECTURE.md §16 "The following standby"): a replica of the server one request behind
/// it, which also takes the checkpoints, so that the server never forks for them and a
/// recovery replays only the requests the replica had not reached.
///
/// It applies record `i` only once record `i + 1` is in the log: then request `i` ran to its
/// end in an incarnation that went on (its outgoing calls are all recorded, its reply digest
/// is in record `i + 1` and is checked), and a request that faulted the server is never run
/// here (its fate — replayed, or failed as poison and skipped — is the activation's).
/// Anything it cannot vouch for (a record that fails its checks, a tail word that does not
/// check, a divergent reply, a handler that panics) makes the replica **stale**: it is not
/// used, and the activation takes the cold path (the newest snapshot and its whole log),
/// which finds the fault again and holds the server.
struct Follower {
    builtin: PlainBuiltin,
    config: ServerConfig,
    status: &'static StatusPage,
    /// The log memfd mapped (read; the server appends).
    ring: Option<Ring>,
    /// The log start the kernel named (a reset changes it).
    log_start: u64,
    /// Requests replay skips.
    skip: Vec<(u32, u32, u64)>,
    /// The replica (None: waiting for the checkpoint to start from).
    replica: Option<Restored>,
    answers: HashMap<u32, Answer>,
    stale: bool,
    reply: Vec<u8>,
    /// Applied since its last checkpoint, and when that was.
    since: u64,
    at: Instant,
    /// The last applied request's capture point.
    capture: Capture,
    wait: Duration,
    /// The position last reported to the kernel.
    reported: Option<u64>,
    /// The checkpoint child at work. An activation hands it to the server, which reaps it as
    /// its own.
    child: Option<Writer>,
    /// After a lost checkpoint: when the next may be tried.
    retry: Retry,
    /// A checkpoint was lost: the next is due (after the back-off) whatever the counters say.
    lost: bool,
    /// The buffer each step copies the log past the replica into (kept between steps).
    log_copy: Vec<u8>,
    /// The replica's server has the delta form (it tracks its changes).
    deltas: bool,
    /// The index since which the replica's changes are tracked (None: unknown, the next
    /// checkpoint is a base): a delta may be taken only if the kernel's chain ends there.
    tracked_from: Option<u64>,
    /// The kernel's newest chain, as its last `Warm` said.
    chain: Option<ChainEnd>,
    /// A checkpoint sent (a delta, or a base whose writer exited 0), and when: until the
    /// kernel's `Warm` says it is in the chain, no other is taken (bounded: [`PENDING_MAX`]).
    pending: Option<(u64, Instant)>,
    /// The status page's generation when the replica last looked: the kernel sets the next
    /// one just before it activates this standby, so a change stops a step between records.
    generation: u64,
}

impl Follower {
    fn new(builtin: PlainBuiltin, config: &ServerConfig, status: &'static StatusPage) -> Self {
        Follower {
            builtin,
            config: config.clone(),
            status,
            ring: None,
            log_start: 0,
            skip: Vec::new(),
            replica: None,
            answers: HashMap::new(),
            stale: false,
            reply: Vec::with_capacity(4096),
            since: 0,
            at: Instant::now(),
            capture: Capture::Allowed,
            wait: FOLLOW_POLL,
            reported: None,
            child: None,
            retry: Retry::default(),
            lost: false,
            log_copy: Vec::new(),
            deltas: false,
            tracked_from: None,
            chain: None,
            pending: None,
            generation: status.generation(),
        }
    }

    /// Publishes the replica's position in the log header's replica word (`ps`, and the lag
    /// the kernel notes at a fault): `index + 1` of the last applied request, 0 for none.
    fn publish_position(&self) {
        if let Some(ring) = &self.ring {
            match (&self.replica, self.stale) {
                (Some(r), false) => ring.publish_replica(r.meta.index, r.meta.log_offset),
                _ => ring.publish_replica(u64::MAX, 0),
            }
        }
    }

    /// The kernel said where the log starts (`Follow`): with no checkpoint yet, the replica
    /// starts empty there; else it waits for the `Warm` that follows.
    fn start(
        &mut self,
        fds: Option<&LogFds>,
        log_start: u64,
        skip: Vec<(u32, u32, u64)>,
        snapshot: bool,
    ) {
        self.log_start = log_start;
        self.skip = skip;
        if self.ring.is_none()
            && let Some(fds) = fds
        {
            self.ring = Ring::mapping(&fds.log, self.config.log_cap).ok();
        }
        if !snapshot && self.replica.is_none() {
            let mut instance = (self.builtin.fresh)();
            // The replica tracks its changes (the delta form), from nothing: its first
            // checkpoint is a base.
            self.deltas = instance.track_changes(true);
            self.tracked_from = None;
            self.replica = Some(Restored {
                header: [0; SNAPSHOT_HEADER],
                meta: SnapshotMeta {
                    state_version: self.builtin.state_version,
                    index: 0,
                    log_offset: log_start,
                    last_digest: None,
                },
                instance,
                answers: Vec::new(),
                bytes: 0,
                follows: Some(log_start),
                chain: None,
            });
        }
        self.publish_position();
    }

    /// A checkpoint chain the kernel accepted (its newest): the replica's state is ignored if
    /// the replica is there already (it is the replica's own, or older), but the chain is
    /// noted (the next delta must extend it; the verdict on a delta or base this standby sent);
    /// else (the replica is behind it, stale or not started) the replica restarts from it.
    fn warm(&mut self, fds: Vec<OwnedFd>) {
        let chain = chain_of(&fds);
        if let Some(c) = chain
            && self
                .pending
                .is_some_and(|(index, _)| index <= c.end.meta.index)
        {
            self.pending = None;
        }
        if let (Some(r), Some(c)) = (&self.replica, chain)
            && !self.stale
            && c.end.meta.index <= r.meta.index
        {
            self.chain = chain;
            return;
        }
        self.replica = None;
        self.answers.clear();
        self.chain = chain;
        self.tracked_from = None;
        self.pending = None;
        if let Ok(mut r) = restore(self.builtin, &fds) {
            r.follows = Some(self.log_start);
            self.answers = std::mem::take(&mut r.answers)
                .into_iter()
                .map(|a| (a.chan, a))
                .collect();
            // Its changes are tracked from the chain's end: the next checkpoint may be a
            // delta extending it.
            self.deltas = r.instance.track_changes(true);
            self.tracked_from = Some(r.meta.index);
            // (As verified link by link.)
            self.chain = r.chain;
            // (Its position is reported once it has caught up with the log behind it.)
            self.replica = Some(r);
            self.reported = None;
            self.stale = false;
            self.since = 0;
            self.at = Instant::now();
        }
        self.publish_position();
    }

    /// One look at the log: applies every complete request past the replica (all but the
    /// last record), then checkpoints if one is due. Returns how long to wait before the next.
    fn step(&mut self, ctl: &OwnedFd) -> Option<Duration> {
        // Awake: the server rings no more until this replica sleeps again.
        if let Some(ring) = &self.ring {
            ring.set_asleep(false);
        }
        let mut bytes = std::mem::take(&mut self.log_copy);
        let wait = self.step_with(ctl, &mut bytes);
        if bytes.capacity() > LOG_COPY_KEEP {
            bytes = Vec::new();
        }
        self.log_copy = bytes;
        // It sleeps until its timer or a control message — or the server's ring, once the
        // replica is `FOLLOW_WAKE_RECORDS` behind (a stale replica is never rung for).
        if let (Some(ring), Some(w)) = (&self.ring, wait)
            && !w.is_zero()
            && !self.stale
        {
            ring.set_asleep(true);
        }
        // The ring's page-table entries, a chunk a step, for the incarnation this standby
        // becomes (it takes this mapping over): its appends then take no page faults. Then
        // the next step comes soon, whatever the log does, until all are in.
        match &self.ring {
            Some(ring) if ring.populate_some() => {
                Some(wait.map_or(FOLLOW_POLL, |w| w.min(FOLLOW_POLL)))
            }
            _ => wait,
        }
    }

    /// [`Follower::step`] with `bytes`, the buffer it copies the log into.
    fn step_with(&mut self, ctl: &OwnedFd, bytes: &mut Vec<u8>) -> Option<Duration> {
        self.reap();
        if self.stale {
            return self.child.map(|_| FOLLOW_IDLE);
        }
        let (Some(ring), Some(r)) = (&self.ring, &mut self.replica) else {
            return None;
        };
        let from = r.meta.log_offset;
        let word = ring.map.u64_at(fmt::LOG_TAIL_AT).load(Ordering::Acquire);
        let Some(tail) = fmt::decode_tail(word).filter(|&t| t >= from && t - from <= ring.cap)
        else {
            // A tail word that fails its check, or a log reset past the replica.
            self.stale = true;
            return None;
        };
        ring.read_into(from, tail, bytes);
        if ring.accepted() > from {
            // A checkpoint past the replica was accepted (the server's own, forced by a log
            // filling faster than the replica follows): the ring behind it may be reused, so
            // these bytes may be torn. Its `Warm` restarts the replica.
            return Some(FOLLOW_POLL);
        }
        let Ok(scan) = fmt::read_log(bytes, from, ring.cap, r.meta.index + 1) else {
            self.stale = true;
            return None;
        };
        let n = scan.records.len();
        if n < 2 {
            // Caught up: says how far (`ps`: `standby_index`), once per position.
            if self.reported != Some(r.meta.index) {
                ring.publish_replica(r.meta.index, r.meta.log_offset);
                self.reported = Some(r.meta.index);
                let _ = fdpass::send(
                    ctl,
                    &proto::encode(&FromServer::Warmed {
                        index: r.meta.index,
                    }),
                    &[],
                );
            }
            let idle = if self.config.follow_max_lag > 0 {
                FOLLOW_IDLE_BOUNDED
            } else {
                FOLLOW_IDLE
            };
            self.wait = (self.wait * 2).min(idle);
            // A checkpoint due while no record comes: by time, or one lost and given back.
            if self.checkpoint_due(tail.saturating_sub(ring.accepted())) {
                self.checkpoint(ctl);
            }
            return Some(self.wait);
        }
        let mut calls: HashMap<u64, VecDeque<Recorded>> = HashMap::new();
        for c in &scan.calls {
            calls.entry(c.meta.index).or_default().push_back(Recorded {
                digest: c.meta.digest,
                method: c.meta.method,
                status: c.meta.status,
                reply: c.reply.to_vec(),
            });
        }
        let mut prev = r.meta.last_digest;
        let mut applied = 0;
        // Stopped between two records for a control message (an activation): the replica
        // ends there, and the step ends at once (no checkpoint).
        let mut interrupted = false;
        // It replays in the CPU time the server and its clients leave (and waits for
        // messages — an activation — at its own priority) — unless it is behind: past the
        // lag bound (`follow_max_lag`, so that a recovery never has much more to replay), or
        // by `CATCH_UP` of the ring. Starved at nice 19 by a spinning server and client (two
        // CPUs), it would otherwise lag until the log is ¾ full and the server forks a
        // checkpoint of its own (the stall the following standby exists to avoid), after
        // which the replica must restore that whole snapshot again.
        let bound = self.config.follow_max_lag;
        let behind = (bound > 0 && (n as u64) > bound)
            || n as u64 >= CATCH_UP_RECORDS
            || tail - from >= (ring.cap / CATCH_UP).min(CATCH_UP_MAX);
        // A step begun at nice 19 leaves it once the tail has run this many records past it
        // (the manifest's bound, else the catch-up one).
        let leave_at = if bound > 0 {
            bound.min(CATCH_UP_RECORDS)
        } else {
            CATCH_UP_RECORDS
        };
        let mut low = (!behind).then(LowPriority::enter);
        // Bytes per record in this step: a step begun within the bound leaves nice 19 as
        // soon as the log has run that far past it (at nice 19 a starved step takes long).
        let per_record = ((tail - from) / n as u64).max(1);
        OUT.with(|o| {
            let mut o = o.borrow_mut();
            o.following = true;
            o.diverged = false;
        });
        for (k, rec) in scan.records.iter().enumerate() {
            let m = rec.meta;
            if let (Some(ours), Some(logged)) = (prev, m.prev_digest)
                && ours != logged
            {
                self.stale = true;
                break;
            }
            let activating =
                k > 0 && k % FOLLOW_CHUNK == 0 && self.status.generation() != self.generation;
            if k + 1 == n || activating {
                // The last record: not applied (its request may still run, or have faulted);
                // or the kernel is activating this standby (it sets the status page's
                // generation before it sends the activation): the activation takes the
                // replica over here, at a record boundary, and replays the rest itself. The
                // replica now ends just before this record, verified up to it.
                interrupted = activating;
                // (Noted, so that a change that was not this standby's activation stops
                // one step only.)
                self.generation = self.status.generation();
                r.meta.index = m.index - 1;
                r.meta.log_offset = rec.offset;
                r.meta.last_digest = prev;
                break;
            }
            if k > 0 && k % FOLLOW_CHUNK == 0 {
                // Where it is, for `ps` and the kernel's note of its lag at a fault.
                ring.publish_replica(m.index - 1, rec.offset);
                if low.is_some() {
                    let now =
                        fmt::decode_tail(ring.map.u64_at(fmt::LOG_TAIL_AT).load(Ordering::Acquire))
                            .unwrap_or(tail);
                    if now.saturating_sub(rec.offset) / per_record > leave_at {
                        low = None;
                    }
                }
            }
            if self.skip.contains(&(m.chan, m.slot, m.seq)) {
                prev = None;
                continue;
            }
            let instance = &mut r.instance;
            let answers = &mut self.answers;
            let reply = &mut self.reply;
            let recorded = calls.remove(&m.index).unwrap_or_default();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rerun(&mut **instance, answers, reply, rec, recorded, false, 0)
            }));
            let diverged = OUT.with(|o| std::mem::take(&mut o.borrow_mut().diverged));
            match ran {
                Ok(status) if !diverged => {
                    prev = Some(reply_digest(status.to_wire(), &self.reply));
                    self.capture = r.instance.capture(m.method & !CALL_ID_BIT);
                    applied += 1;
                }
                _ => {
                    self.stale = true;
                    break;
                }
            }
        }
        OUT.with(|o| o.borrow_mut().following = false);
        drop(low);
        if self.stale {
            self.replica = None;
            self.publish_position();
            return None;
        }
        self.since += applied;
        self.wait = FOLLOW_POLL;
        self.publish_position();
        if interrupted {
            return Some(Duration::ZERO);
        }
        let used = tail.saturating_sub(ring.accepted());
        if used * 8 >= ring.cap * 5 {
            // The log is filling faster than the checkpoint writer (nice 19) finishes: it gets
            // the standby's priority back, before the server's fallback (¾) must fork.
            self.hurry_child();
        }
        if self.checkpoint_due(used) {
            self.checkpoint(ctl);
        }
        Some(self.wait)
    }

    /// Whether the replica should be checkpointed now (`used`: log bytes behind the accepted
    /// checkpoint), by the manifest's counters, the log's fill, the last method's capture
    /// point and the back-off after a lost one.
    fn checkpoint_due(&self, used: u64) -> bool {
        let cap = self.config.log_cap;
        self.capture != Capture::Defer
            && self.since > 0
            && self.child.is_none()
            && self.retry.allows()
            && (self.capture == Capture::Now
                || self.lost
                || self.since >= self.config.checkpoint_every
                || (self.config.checkpoint_ms > 0
                    && self.at.elapsed() >= Duration::from_millis(self.config.checkpoint_ms))
                || used * 2 >= cap)
    }

    /// Writes the replica as a checkpoint and hands it to the kernel (the server does not
    /// stop for it).
    /// Writes the replica as a checkpoint and hands it to the kernel: in a forked child (the
    /// replica's own copy-on-write image, not the server's), so that the standby goes on
    /// following — and answers an activation — while it is written. The server does not stop
    /// for it.
    fn checkpoint(&mut self, ctl: &OwnedFd) {
        if self.replica.is_none() || self.child.is_some() || !self.retry.allows() {
            return;
        }
        if let Some((_, sent)) = self.pending {
            if sent.elapsed() < PENDING_MAX {
                // The kernel's verdict on the last one first (its `Warm`).
                return;
            }
            // No `Warm` for it: refused (the chain changed meanwhile) or lost; a base next.
            self.pending = None;
            self.tracked_from = None;
        }
        let index = self.replica.as_ref().map_or(0, |r| r.meta.index);
        let delta = self.deltas
            && self.tracked_from.is_some_and(|from| from < index)
            && self
                .chain
                .is_some_and(|c| Some(c.end.meta.index) == self.tracked_from && c.takes_a_delta());
        if delta {
            self.write_delta(ctl);
            return;
        }
        let since = std::mem::take(&mut self.since);
        self.at = Instant::now();
        self.lost = false;
        let started = Instant::now();
        match process::fork() {
            Ok(process::Forked::Child) => {
                become_checkpoint_writer();
                let r = self.replica.as_ref().expect("a replica");
                send_checkpoint_and_exit(
                    ctl,
                    &self.config.name,
                    &*r.instance,
                    &self.answers,
                    &r.meta,
                    self.status,
                    (0, started),
                )
            }
            Ok(process::Forked::Parent { child }) => {
                let r = self.replica.as_mut().expect("a replica");
                // The base holds every change so far: deltas after it track from here.
                if self.deltas {
                    r.instance.forget_changes();
                    self.tracked_from = Some(index);
                }
                self.child = Some(Writer {
                    pid: child,
                    offset: r.meta.log_offset,
                    index,
                    started,
                    since,
                    hurried: false,
                });
            }
            Err(_) => {
                self.since += since;
                self.retry.lost();
                self.lost = true;
            }
        }
    }

    /// Writes a delta of the replica (its changes since the chain's end) and hands it to the
    /// kernel, here in the standby (no fork): small, so the replica's pages are not shared
    /// with a child and later writes take no copy-on-write faults. An activation meanwhile
    /// makes it give up (at the next chunk); a failure keeps the changes tracked and backs
    /// off like a lost checkpoint.
    fn write_delta(&mut self, ctl: &OwnedFd) {
        let (Some(r), Some(chain), Some(after)) =
            (self.replica.as_mut(), self.chain, self.tracked_from)
        else {
            return;
        };
        let started = Instant::now();
        let sealed = seal_delta(
            &self.config.name,
            &*r.instance,
            &self.answers,
            (&r.meta, &chain, after),
            self.status,
            self.generation,
        );
        let sent = sealed.and_then(|(fd, bytes)| {
            let info = CheckpointInfo {
                index: r.meta.index,
                log_offset: r.meta.log_offset,
                bytes,
                stall_us: 0,
                write_us: started.elapsed().as_micros() as u64,
            };
            fdpass::send(
                ctl,
                &proto::encode(&FromServer::Checkpoint(info)),
                &[fd.as_fd()],
            )
            .ok()
        });
        if sent.is_some() {
            r.instance.forget_changes();
            self.tracked_from = Some(r.meta.index);
            self.pending = Some((r.meta.index, Instant::now()));
            self.since = 0;
            self.at = Instant::now();
            self.lost = false;
            self.retry.done();
        } else if self.status.generation() == self.generation {
            self.retry.lost();
            self.lost = true;
        } else {
            // Given up for a change of generation: an activation of this standby comes next
            // (or it was another incarnation's: noted, so that it stops one attempt only).
            self.generation = self.status.generation();
        }
    }

    /// Gives the checkpoint child at work the priority the standby itself runs at.
    fn hurry_child(&mut self) {
        if let Some(w) = &mut self.child
            && !w.hurried
        {
            hurry_writer(w);
        }
    }

    /// Reaps the checkpoint child if it is done. A lost checkpoint gives its requests back to
    /// the counter (so the next one is due at once), after a back-off.
    fn reap(&mut self) {
        let Some(w) = &mut self.child else { return };
        match reap_writer(w, false) {
            Reaped::Running => {}
            Reaped::Done => {
                // Its base is with the kernel: deltas may follow once it is in the chain (its
                // `Warm` may have come already).
                if self.chain.is_none_or(|c| c.end.meta.index < w.index) {
                    self.pending = Some((w.index, Instant::now()));
                }
                self.child = None;
                self.retry.done();
            }
            Reaped::Lost => {
                self.since += w.since;
                // The changes since the previous checkpoint were forgotten at the fork: the
                // next checkpoint must be a base.
                self.tracked_from = None;
                self.child = None;
                self.retry.lost();
                self.lost = true;
            }
        }
    }

    /// The checkpoint child at work, for the activated server to reap.
    fn take_child(&mut self) -> Option<Writer> {
        self.reap();
        self.child.take()
    }

    /// The mapping of the log, for the activation (with the page-table entries populated).
    fn take_ring(&mut self) -> Option<Ring> {
        self.ring.take()
    }

    /// The replica, for the activation (None: stale, or never started).
    fn take(&mut self) -> Option<Restored> {
        if let Some(ring) = &self.ring {
            ring.set_asleep(false);
        }
        if self.stale {
            return None;
        }
        let mut r = self.replica.take()?;
        r.answers = std::mem::take(&mut self.answers).into_values().collect();
        // It serves now: nothing tracks its changes (the next standby's replica does).
        r.instance.track_changes(false);
        Some(r)
    }
}

/// One incarnation of a plain server. Never returns.
pub(crate) fn incarnation_main(
    config: &ServerConfig,
    builtin: PlainBuiltin,
    doorbell_fd: &OwnedFd,
    status_fd: &OwnedFd,
    kernel: &OwnedFd,
    log: Option<&LogFds>,
    ctl: OwnedFd,
) -> ! {
    if let Err(e) = txipc_sys::crash::install(&ctl) {
        fatal(&ctl, format!("cannot install the crash reporter: {e}"));
    }
    // A process sharing this address space (txipc_sys::keeper), as for heap servers: a SIGKILL
    // of this incarnation is then noticed (its pidfd fires) without first tearing down its
    // state, its replica (a following standby becomes the incarnation) and the mapped log. It
    // outlives this incarnation until the kernel kills it (at a watchdog tick once the
    // successor serves and no recovery is under way) or the kernel ends: a keeper that died
    // with the incarnation (`Until::CreatorDies`, until wave 6) tore the address space down
    // during the recovery, on whichever CPU was free — the client's, whose wake-up with the
    // reply then waited behind it (ARCHITECTURE.md §16, "Recovery"). Without it recovery still
    // works, only slower for a large state. (Named first: the keeper keeps the name. Started
    // before the incarnation pins itself, so that the teardown may run on any CPU, not on the
    // one its successor is pinned to.)
    crate::server::name_process(config, "keeper");
    if let Ok(k) = txipc_sys::keeper::spawn(txipc_sys::keeper::Until::Killed(kernel.as_fd())) {
        let _ = fdpass::send(
            &ctl,
            &proto::encode(&FromServer::Keeper),
            &[k.pidfd.as_fd()],
        );
    }
    crate::server::name_process(config, "standby");
    if let Some(cpu) = config.cpu {
        let _ = process::pin_to_cpu(cpu);
    }
    let doorbell = Doorbell::map(doorbell_fd.as_fd())
        .unwrap_or_else(|e| fatal(&ctl, format!("doorbell: {e}")));
    // The status page lives as long as the incarnation; the fail points of calls to other
    // servers (fired from inside handlers) read it too.
    let status: &'static StatusPage = Box::leak(Box::new(
        StatusPage::map(status_fd.as_fd()).unwrap_or_else(|e| fatal(&ctl, format!("status: {e}"))),
    ));
    crate::failpoint::install(status);
    let mut chans: Vec<Chan> = Vec::new();
    let mut buf = vec![0u8; proto::MAX_CONTROL_MSG];
    let ctl = Rc::new(ctl);
    crate::server::init_plain_calls(&ctl, config.policy == Policy::Companion);
    OUT.with(|o| o.borrow_mut().ctl = Some(ctl.clone()));
    // The warm standby: each accepted checkpoint the kernel hands over is restored now, so
    // that an activation only replays the log behind it. A following standby replays the log
    // itself as it is written, and takes the checkpoints.
    let companion = config.policy == Policy::Companion;
    let follow = companion && config.follow;
    let mut warm: Option<Restored> = None;
    let mut follower = follow.then(|| Follower::new(builtin, config, status));
    // It works in the CPU time the server and its clients leave: at nice 19 (where it may go
    // back), on any CPU.
    if follow {
        // Its replays must not be reported as the server's faults: a panic makes the replica
        // stale (caught), and the reporter is installed again at the activation. It follows
        // on any CPU.
        std::panic::set_hook(Box::new(|_| {}));
        let _ = process::pin_to_cpu_set_all();
        // Not on the CPU its server is pinned to, when another is left: a replay step there
        // (at its own priority once behind) held the server's next request for a whole
        // scheduler slice — 3.7 ms in a scheduler trace of `bench recovery --policy
        // companion`, where it was most of a SIGSEGV's "detect" step (the call that faults
        // waited for the server behind the standby). Elsewhere it takes the CPU from what
        // runs there (the client), between two calls rather than in the middle of one. The
        // activation pins it back (below).
        if let Some(cpu) = config.cpu
            && let Ok(all) = process::affinity()
            && let Some(off) = process::without_cpus(&all, &[cpu])
        {
            let _ = process::set_affinity(0, &off);
        }
    }
    // The bell the serving incarnation rings when the replica, asleep, has fallen
    // `FOLLOW_WAKE_RECORDS` behind (`Ring::nudge`): polled with the control socket.
    let bell = log.filter(|_| follow).and_then(|l| l.bell.try_clone().ok());
    let activation = standby(&ctl, &mut chans, &mut buf, bell.as_ref(), &mut |work| {
        if !companion {
            return None;
        }
        match (work, follower.as_mut()) {
            (
                StandbyWork::Follow {
                    log_start,
                    skip,
                    snapshot,
                },
                Some(f),
            ) => {
                f.start(log, log_start, skip, snapshot);
                f.step(&ctl)
            }
            (StandbyWork::Warm(fds), Some(f)) => {
                f.warm(fds);
                f.step(&ctl)
            }
            (StandbyWork::Idle, Some(f)) => f.step(&ctl),
            (StandbyWork::Warm(fds), None) => {
                warm = None;
                let low = LowPriority::enter();
                warm = restore(builtin, &fds).ok();
                drop(low);
                if let Some(w) = &warm {
                    let _ = fdpass::send(
                        &*ctl,
                        &proto::encode(&FromServer::Warmed {
                            index: w.meta.index,
                        }),
                        &[],
                    );
                }
                None
            }
            (_, None) => None,
        }
    });
    let mut follower_child = None;
    let mut follower_ring = None;
    if let Some(f) = follower.as_mut() {
        warm = f.take();
        follower_child = f.take_child();
        follower_ring = f.take_ring();
        if let Err(e) = txipc_sys::crash::install(&*ctl) {
            fatal(&ctl, format!("cannot install the crash reporter: {e}"));
        }
        if let Some(cpu) = config.cpu {
            let _ = process::pin_to_cpu(cpu);
        }
    }
    // The previous incarnation may have died inside calls to other servers: the slots it left
    // in the inherited channels are reclaimed once their replies are in.
    crate::server::adopt_outgoing();
    let calls = status.calls();
    let mut lp = PlainLoop {
        config,
        instance: (builtin.fresh)(),
        chans,
        doorbell,
        status,
        ctl,
        calls,
        next_chan: 0,
        req: Vec::with_capacity(4096),
        reply: Vec::with_capacity(4096),
        ctl_buf: buf,
        log: None,
        answers: HashMap::new(),
    };
    let (generation, inherited) = match activation {
        Activation::Txipc { generation, .. } if config.policy != Policy::Companion => {
            (generation, Vec::new())
        }
        Activation::Companion(start, snapshot) if config.policy == Policy::Companion => {
            let Some(fds) = log else {
                fatal(&lp.ctl, "policy companion without a message log".into())
            };
            let generation = start.generation;
            let inherited =
                lp.reconstitute(builtin, &start, snapshot, fds, warm.take(), follower_ring);
            if let Some(w) = lp.log.as_mut()
                && follower_child.is_some()
            {
                w.child = follower_child.take();
            }
            (generation, inherited)
        }
        _ => fatal(
            &lp.ctl,
            "activated for another policy than the manifest's".into(),
        ),
    };
    // Where the round robin over the channels starts: a different channel in each
    // incarnation. Starting every incarnation at channel 0 starves the last clients when the
    // server faults more often than it gets round its channels (seen in storms: a client's
    // request not taken for 20 s while the others were served).
    lp.next_chan = (generation as usize).wrapping_mul(7) ^ calls as usize;
    let _ = fdpass::send(
        &*lp.ctl,
        &proto::encode(&FromServer::Active { generation }),
        &[],
    );
    crate::server::name_process(config, &format!("g{generation}"));
    // Requests the failed incarnation took but never logged (or readonly ones): they had not
    // run, so they run now, as if just taken.
    for (ci, t) in inherited {
        lp.chans[ci].chan.read_request(&t, &mut lp.req);
        lp.run(ci, &t);
    }
    lp.serve()
}

/// The message log as this incarnation appends to it.
struct LogWriter {
    ring: Rc<Ring>,
    /// Index the next record gets.
    next_index: u64,
    /// Digest of the last logged request's reply (None: unknown, e.g. after a skipped one).
    prev_digest: Option<u64>,
    /// Logged since the state the last checkpoint (started) captured.
    since: u64,
    /// Offset the last checkpoint child that exited 0 captured: the kernel accepts it (and
    /// says so in the header's accepted word) once it has read its message.
    done: u64,
    /// When the last checkpoint was started.
    at: Instant,
    /// The checkpoint child at work.
    child: Option<Writer>,
    /// After a lost checkpoint: when the next may be tried.
    retry: Retry,
    /// The last request was `#[capture(defer)]`.
    deferred: bool,
    /// Take a checkpoint at the first chance (the log was just replayed).
    urgent: bool,
}

struct PlainLoop<'a> {
    config: &'a ServerConfig,
    instance: Box<dyn PlainInstance>,
    chans: Vec<Chan>,
    doorbell: Doorbell,
    status: &'static StatusPage,
    ctl: Rc<OwnedFd>,
    calls: u64,
    next_chan: usize,
    req: Vec<u8>,
    reply: Vec<u8>,
    ctl_buf: Vec<u8>,
    log: Option<LogWriter>,
    /// Per channel, the last call with a call id this server answered (what a caller that
    /// re-sends it gets again). Rebuilt by replay; carried in every snapshot.
    answers: HashMap<u32, Answer>,
}

/// How long the server spins for work before sleeping on its doorbell.
const SERVER_SPIN: Duration = Duration::from_micros(50);
/// A checkpoint child that has not finished after this long is killed (and a new one started
/// when one is due).
const CHILD_DEADLINE: Duration = Duration::from_secs(20);
/// How long a full log waits for the kernel to accept a checkpoint its child handed over.
const ACCEPT_DEADLINE: Duration = Duration::from_secs(5);

impl PlainLoop<'_> {
    fn serve(&mut self) -> ! {
        loop {
            if self.doorbell.pending_events() != 0 && self.doorbell.take_events() != 0 {
                self.drain_control();
            }
            if !self.serve_one() {
                if let Some(w) = &self.log
                    && w.child.is_some()
                {
                    self.reap(false);
                }
                self.maybe_checkpoint(Capture::Allowed, true);
                // Wake up to reap a checkpoint writer (and start the next one if it is due),
                // or when the time trigger comes.
                let timeout = self.log.as_ref().and_then(|w| {
                    if w.child.is_some() {
                        Some(Duration::from_millis(2))
                    } else if w.since > 0
                        && let Some(d) = w.retry.wait()
                    {
                        // A lost checkpoint is tried again after its back-off.
                        Some(d)
                    } else {
                        (w.since > 0 && self.config.checkpoint_ms > 0 && !self.config.follow)
                            .then(|| Duration::from_millis(self.config.checkpoint_ms))
                    }
                });
                self.doorbell
                    .wait(self.chans.iter().map(|c| &c.chan), SERVER_SPIN, timeout);
            }
        }
    }

    fn drain_control(&mut self) {
        loop {
            let (n, fds) = if let Some((msg, fds)) = crate::server::take_pending() {
                // Arrived while a handler waited for the kernel in `connect`.
                self.ctl_buf[..msg.len()].copy_from_slice(&msg);
                (msg.len(), fds)
            } else {
                match fdpass::recv(&*self.ctl, &mut self.ctl_buf, true) {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(_) => std::process::exit(0),
                }
            };
            match proto::decode::<ToServer>(&self.ctl_buf[..n]) {
                Ok(ToServer::AddChannels { indices }) => {
                    add_channels(&mut self.chans, indices, fds)
                }
                Ok(ToServer::RemoveChannel { index }) => self.chans.retain(|c| c.index != index),
                Ok(ToServer::Shutdown) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    }

    /// Takes and serves one posted request, round robin over the channels.
    fn serve_one(&mut self) -> bool {
        let n = self.chans.len();
        for k in 0..n {
            let ci = (self.next_chan + k) % n;
            if let Some(t) = self.chans[ci].chan.take_into(&mut self.req) {
                self.next_chan = (ci + 1) % n;
                self.run(ci, &t);
                return true;
            }
        }
        false
    }

    #[inline]
    fn fail_point(&self, point: FailPoint) {
        if let Some(kind) = self.status.fire_kind(point as u8) {
            txipc_sys::crash::inject(kind);
        }
    }

    /// Runs the request taken in `t` (its bytes in `self.req`): log, handle, reply, publish.
    fn run(&mut self, ci: usize, t: &Taken) {
        let chan_index = self.chans[ci].index;
        // One call in `SAMPLE_EVERY` is timed, log → published (the status page's histogram).
        let start = (self.calls & (txipc_core::latency::SAMPLE_EVERY - 1) == 0)
            .then(txipc_sys::time::monotonic_ns);
        let busy = busy_word(chan_index, t.slot as u32, t.seq);
        self.status.set_busy(busy);
        // A call from another companion server carries a call id.
        let call = if t.malformed {
            None
        } else {
            split_call_id(t.method, &self.req).map(|(id, m, _)| (id, m))
        };
        let mut method = call.map_or(t.method, |(_, m)| m);
        // A call from a `#[readonly]` request of another companion server: run only if the
        // method changes nothing (it is not logged); else refused, nothing run.
        let from_readonly = call.is_none() && !t.malformed && t.method & READONLY_CALL_BIT != 0;
        if from_readonly {
            method &= !READONLY_CALL_BIT;
            if self.instance.is_logged(method) {
                let chan = &self.chans[ci].chan;
                let _ = chan.write_reply(t.slot, Status::Refused, &[]);
                let _ = chan.publish(t.slot);
                self.calls += 1;
                self.status.set_idle(self.calls);
                return;
            }
        }
        let logged = !t.malformed && self.log.is_some() && self.instance.is_logged(method);
        if logged
            && let Some((id, _)) = call
            && let Some(a) = self.answers.get(&chan_index)
            && a.id >= id
        {
            // The caller sends again a call this server has run already (it died before it
            // recorded the reply, and its replay sends it again): answered from the record,
            // not run twice. An older id is a stale copy from a dead caller: refused.
            let (status, reply) = if a.id == id {
                (
                    Status::from_wire(a.status).unwrap_or(Status::Malformed),
                    &a.reply[..],
                )
            } else {
                (Status::Aborted, &[][..])
            };
            let chan = &self.chans[ci].chan;
            if chan.write_reply(t.slot, status, reply).is_err() {
                let _ = chan.write_reply(t.slot, Status::TooLarge, &[]);
            }
            let _ = chan.publish(t.slot);
            self.calls += 1;
            self.status.set_idle(self.calls);
            return;
        }
        if logged {
            let at = self.append(chan_index, t);
            OUT.with(|o| {
                let mut o = o.borrow_mut();
                o.current = Some(at);
                o.next_ordinal = 0;
                o.name = self.instance.method_name(method);
                o.busy = busy;
            });
        } else if self.log.is_some() {
            OUT.with(|o| o.borrow_mut().readonly = true);
        }
        self.fail_point(FailPoint::BeforeHandle);
        let status = if t.malformed || (t.method & CALL_ID_BIT != 0 && call.is_none()) {
            self.reply.clear();
            Status::Malformed
        } else {
            let req = if call.is_some() {
                &self.req[CALL_ID_LEN..]
            } else {
                &self.req[..]
            };
            SESSION.with(|s| s.set(chan_index));
            let r = self.instance.handle(method, req, &mut self.reply);
            SESSION.with(|s| s.set(u32::MAX));
            to_status(r, &mut self.reply)
        };
        OUT.with(|o| o.borrow_mut().readonly = false);
        if logged {
            OUT.with(|o| o.borrow_mut().current = None);
            if let Some(w) = &mut self.log {
                w.prev_digest = Some(reply_digest(status.to_wire(), &self.reply));
            }
            if let Some((id, _)) = call {
                self.answers.insert(
                    chan_index,
                    Answer {
                        chan: chan_index,
                        id,
                        status: status.to_wire(),
                        reply: self.reply.clone(),
                    },
                );
            }
        }
        self.fail_point(FailPoint::AfterHandle);
        let chan = &self.chans[ci].chan;
        if chan.write_reply(t.slot, status, &self.reply).is_err() {
            let _ = chan.write_reply(t.slot, Status::TooLarge, &[]);
        }
        self.fail_point(FailPoint::AfterCommit);
        let _ = chan.publish(t.slot);
        if let Some(start) = start {
            let took = txipc_sys::time::monotonic_ns().saturating_sub(start);
            self.status
                .add_latency(txipc_core::latency::bucket(took), 1);
        }
        self.calls += 1;
        self.status.set_idle(self.calls);
        if logged {
            let capture = self.instance.capture(method);
            self.maybe_checkpoint(capture, false);
        }
    }

    /// Appends the record of the request in `self.req` (taken in `t` on channel `chan`), first
    /// making room if the log is full: copies it into the ring past the tail, then stores the
    /// new tail word — the log point. Returns the record's log offset and index.
    fn append(&mut self, chan: u32, t: &Taken) -> (u64, u64) {
        let len = fmt::record_len(self.req.len()) as u64;
        if !self.log.as_ref().expect("logging").ring.fits(len) {
            // A full log forces a checkpoint, and this request waits for it: the ring bytes
            // behind an accepted checkpoint are the only ones the writer may reuse.
            self.force_checkpoint(len);
        }
        let w = self.log.as_mut().expect("logging");
        let meta = RecordMeta {
            index: w.next_index,
            chan,
            slot: t.slot as u32,
            seq: t.seq,
            method: t.method,
            prev_digest: w.prev_digest,
        };
        // The header, then the request straight from where it was taken into the ring.
        let head = fmt::record_header(&meta, &self.req);
        let offset = w.ring.push_parts(w.next_index, &head, &self.req);
        w.ring.nudge(w.next_index);
        let at = (offset, w.next_index);
        w.next_index += 1;
        w.since += 1;
        at
    }

    /// Reaps the checkpoint child if it is done (or, `block`, waits for it). A child that
    /// exited 0 handed its snapshot to the kernel: the log behind it no longer counts. A lost
    /// checkpoint gives its requests back to the counter, so the next one is due at once — after
    /// a back-off that doubles with every loss in a row.
    fn reap(&mut self, block: bool) {
        let follow = self.config.follow;
        let Some(w) = &mut self.log else { return };
        let Some(c) = &mut w.child else {
            return;
        };
        let c0 = *c;
        match reap_writer(c, block) {
            Reaped::Running => {}
            Reaped::Done => {
                w.child = None;
                w.done = c0.offset;
                w.retry.done();
            }
            Reaped::Lost => {
                w.child = None;
                w.since += c0.since;
                w.retry.lost();
                // Tried again once the back-off allows, whatever the counters say (with a
                // following standby the checkpoints are its own: the server's are only its
                // full-log fallback, which stays due by itself).
                w.urgent |= !follow;
            }
        }
    }

    /// Makes room in a full log for a record of `len` bytes: waits for the checkpoint at work
    /// (and for the kernel to accept it), or takes one and waits.
    fn force_checkpoint(&mut self, len: u64) {
        // The wait is the companion's, not the request's: the watchdog must not take it for a
        // hang (the busy word comes back before the request runs).
        let busy = self.status.busy();
        self.status.set_idle(self.calls);
        for _ in 0..3 {
            self.hurry_child();
            self.reap(true);
            if self.wait_accepted(len) {
                self.status.set_busy(busy);
                return;
            }
            self.start_checkpoint();
        }
        self.hurry_child();
        self.reap(true);
        if self.wait_accepted(len) {
            self.status.set_busy(busy);
            return;
        }
        // Still full (the checkpoints failed, or one request is larger than the log): give up
        // on this request as a fault rather than write over log the kernel may still need.
        txipc_sys::crash::report_and_stop(txipc_sys::crash::CrashKind::Integrity);
    }

    /// Waits (bounded) until the kernel has accepted the last completed checkpoint, and says
    /// whether a record of `len` bytes fits then.
    fn wait_accepted(&self, len: u64) -> bool {
        let w = self.log.as_ref().expect("logging");
        let deadline = Instant::now() + ACCEPT_DEADLINE;
        while w.ring.accepted() < w.done && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        w.ring.fits(len)
    }

    /// The checkpoint writer runs at nice 19; when the log is filling up (or full) it gets the
    /// server's priority back, so that it finishes before the log must wait for it.
    fn hurry_child(&self) {
        if let Some(c) = self.log.as_ref().and_then(|w| w.child)
            && let Some(p) = rustix::process::Pid::from_raw(c.pid)
        {
            // (Priority 0, not this process's own: it is not changed once it serves.)
            let _ = rustix::process::setpriority_process(Some(p), 0);
        }
    }

    /// Takes a checkpoint if one is due and allowed here.
    fn maybe_checkpoint(&mut self, capture: Capture, idle: bool) {
        let every = self.config.checkpoint_every;
        let ms = self.config.checkpoint_ms;
        let cap = self.config.log_cap;
        let Some(w) = &mut self.log else { return };
        if !idle {
            w.deferred = capture == Capture::Defer;
        }
        if w.deferred || (w.since == 0 && !w.urgent) {
            return;
        }
        if w.child.is_some() {
            self.reap(false);
        }
        let w = self.log.as_ref().expect("logging");
        if w.child.is_some() {
            if w.ring.used() * 4 >= cap * 3 {
                self.hurry_child();
            }
            return;
        }
        // With a following standby the checkpoints are its own: the server forks one only
        // when the log fills up faster than the standby follows.
        let follow = self.config.follow;
        let due = (!follow
            && ((!idle && capture == Capture::Now)
                || w.since >= every
                || (ms > 0 && w.at.elapsed() >= Duration::from_millis(ms))))
            || w.urgent
            || w.ring.used() * 4 >= cap * 3;
        // After a lost checkpoint, not before its back-off (a full log does not wait for it:
        // `force_checkpoint`, bounded).
        if due && w.retry.allows() {
            self.start_checkpoint();
        }
    }

    /// Forks the checkpoint child (between requests: the state is exactly that of every
    /// logged request so far).
    fn start_checkpoint(&mut self) {
        let started = Instant::now();
        match process::fork() {
            Ok(process::Forked::Child) => self.checkpoint_child(started),
            Ok(process::Forked::Parent { child }) => {
                let w = self.log.as_mut().expect("logging");
                w.child = Some(Writer {
                    pid: child,
                    offset: w.ring.end.get(),
                    index: w.next_index - 1,
                    started,
                    since: std::mem::take(&mut w.since),
                    hurried: false,
                });
                w.urgent = false;
                w.at = Instant::now();
            }
            Err(_) => {
                // Could not fork (out of memory): try again after the back-off.
                let w = self.log.as_mut().expect("logging");
                w.at = Instant::now();
                w.retry.lost();
            }
        }
    }

    /// In the forked child: distill, checksum, write, seal, hand to the kernel, exit.
    fn checkpoint_child(&mut self, fork_started: Instant) -> ! {
        let stall_us = fork_started.elapsed().as_micros() as u64;
        become_checkpoint_writer();
        let _ = process::pin_to_cpu_set_all();
        let t0 = Instant::now();
        let w = self.log.as_ref().expect("logging");
        let meta = SnapshotMeta {
            state_version: self.state_version(),
            index: w.next_index - 1,
            log_offset: w.ring.end.get(),
            last_digest: w.prev_digest,
        };
        send_checkpoint_and_exit(
            &self.ctl,
            &self.config.name,
            &*self.instance,
            &self.answers,
            &meta,
            self.status,
            (stall_us, t0),
        )
    }

    fn state_version(&self) -> u32 {
        STATE_VERSION.with(Cell::get)
    }

    /// Reconstitutes the server from the snapshot and the log (ActivateCompanion), answering
    /// every waiting request the log holds. Returns the inherited TAKEN slots it did not answer
    /// (not in the log: they have not run).
    fn reconstitute(
        &mut self,
        builtin: PlainBuiltin,
        start: &proto::CompanionStart,
        snapshot: Vec<OwnedFd>,
        fds: &LogFds,
        warm: Option<Restored>,
        mapped: Option<Ring>,
    ) -> Vec<(usize, Taken)> {
        let t0 = Instant::now();
        STATE_VERSION.with(|v| v.set(builtin.state_version));
        let ctl = self.ctl.clone();
        let mut snap_meta = SnapshotMeta {
            state_version: builtin.state_version,
            index: 0,
            log_offset: start.log_start,
            last_digest: None,
        };
        let mut snapshot_bytes = 0;
        // The standby's state is used if it is that of this very checkpoint (same sealed
        // header: a warm standby) or, for a standby that followed the log, if it followed
        // this log (the same start: no reset since) from this checkpoint or a later point.
        let ready = warm.filter(|w| match (w.follows, snapshot.last()) {
            (Some(from), None) => from == start.log_start,
            (Some(from), Some(fd)) => {
                from == start.log_start
                    && snapshot_header_of(fd)
                        .and_then(|h| fmt::check_snapshot_header(&h).ok())
                        .is_some_and(|(m, _)| m.index <= w.meta.index)
            }
            (None, Some(fd)) => snapshot_header_of(fd) == Some(w.header),
            (None, None) => false,
        });
        let was_warm = ready.is_some();
        let base = match ready {
            Some(w) => Some(w),
            None if !snapshot.is_empty() => {
                Some(restore(builtin, &snapshot).unwrap_or_else(|e| hold(&ctl, e)))
            }
            None => None,
        };
        if let Some(r) = base {
            snapshot_bytes = r.bytes;
            self.answers = r.answers.into_iter().map(|a| (a.chan, a)).collect();
            self.instance = r.instance;
            snap_meta = r.meta;
        }
        let (ring, tail) = Ring::map(
            &fds.log,
            self.config.log_cap,
            snap_meta.log_offset,
            fds.bell.try_clone().ok(),
            mapped,
        )
        .unwrap_or_else(|e| hold(&ctl, e));
        let ring = Rc::new(ring);
        // The replica is this incarnation's now: no standby follows until the next one says
        // where it is.
        ring.publish_replica(u64::MAX, 0);
        let bytes = ring.read(snap_meta.log_offset, tail);
        let scan: LogScan<'_> =
            fmt::read_log(&bytes, snap_meta.log_offset, ring.cap, snap_meta.index + 1)
                .unwrap_or_else(|e| hold(&ctl, e.to_string()));
        let mut waiting: HashMap<(u32, u32), (usize, Taken)> = HashMap::new();
        for (ci, c) in self.chans.iter().enumerate() {
            for t in c.chan.taken_slots() {
                waiting.insert((c.index, t.slot as u32), (ci, t));
            }
        }
        let mut prev = snap_meta.last_digest;
        let mut last: Option<(u64, u32)> = None;
        // The outgoing calls each replayed request made, answered from their records.
        let mut calls: HashMap<u64, VecDeque<Recorded>> = HashMap::new();
        for c in &scan.calls {
            calls.entry(c.meta.index).or_default().push_back(Recorded {
                digest: c.meta.digest,
                method: c.meta.method,
                status: c.meta.status,
                reply: c.reply.to_vec(),
            });
        }
        let tail_index = scan.records.last().map(|r| r.meta.index);
        // Calls the last request makes past its recorded ones are appended at the tail.
        OUT.with(|o| o.borrow_mut().ring = Some(ring.clone()));
        for rec in &scan.records {
            let m = rec.meta;
            if let (Some(ours), Some(logged), Some((index, method))) = (prev, m.prev_digest, last)
                && ours != logged
            {
                let name = self.instance.method_name(method).unwrap_or("?");
                hold(
                    &ctl,
                    format!(
                        "divergent replay: logged request {index} (method `{name}`) gave a different reply than when it first ran (digest {ours:#018x}, logged {logged:#018x}); its handler is not deterministic, so the replayed state cannot be trusted: the server is held. Make the handler deterministic (no clocks, randomness or hash-order iteration)"
                    ),
                );
            }
            if start.skip.contains(&(m.chan, m.slot, m.seq)) {
                prev = None;
                last = None;
                continue;
            }
            let busy = busy_word(m.chan, m.slot, m.seq);
            self.status.set_busy(busy);
            let status = rerun(
                &mut *self.instance,
                &mut self.answers,
                &mut self.reply,
                rec,
                calls.remove(&m.index).unwrap_or_default(),
                tail_index == Some(m.index),
                busy,
            );
            prev = Some(reply_digest(status.to_wire(), &self.reply));
            last = Some((m.index, m.method));
            if let Some((ci, t)) = waiting.get(&(m.chan, m.slot))
                && t.seq == m.seq
            {
                let chan = &self.chans[*ci].chan;
                if chan.write_reply(t.slot, status, &self.reply).is_err() {
                    let _ = chan.write_reply(t.slot, Status::TooLarge, &[]);
                }
                let _ = chan.publish(t.slot);
                waiting.remove(&(m.chan, m.slot));
            }
        }
        self.status.set_idle(self.calls);
        let replayed = scan.records.len() as u64;
        let from_index = snap_meta.index;
        drop(bytes);
        self.log = Some(LogWriter {
            ring,
            next_index: snap_meta.index + replayed + 1,
            prev_digest: prev,
            since: replayed,
            done: snap_meta.log_offset,
            at: Instant::now(),
            // A log that had to be replayed is checkpointed at the first chance, so that the
            // next recovery does not replay it again (and a server faulting often still makes
            // progress).
            // (A following standby replays it in the background instead.)
            urgent: replayed > 0 && !self.config.follow,
            child: None,
            retry: Retry::default(),
            deferred: false,
        });
        let _ = fdpass::send(
            &*ctl,
            &proto::encode(&FromServer::Replayed {
                records: replayed,
                from_index,
                snapshot_bytes,
                us: t0.elapsed().as_micros() as u64,
                warm: was_warm,
            }),
            &[],
        );
        let mut rest: Vec<(usize, Taken)> = waiting.into_values().collect();
        rest.sort_by_key(|(ci, t)| (*ci, t.slot));
        rest
    }
}

thread_local! {
    static STATE_VERSION: Cell<u32> = const { Cell::new(0) };
}

/// Runs logged request `rec` again — a replay after a fault, or a following standby — with its
/// outgoing calls answered from `recorded` (`tail`: it is the last request of the log, so
/// calls past the recorded ones are sent, its handler may have died before making them).
/// Keeps the answers of calls by call id; `reply` gets its reply. A divergent call holds the
/// server (a following standby: marks the replica stale).
fn rerun(
    instance: &mut dyn PlainInstance,
    answers: &mut HashMap<u32, Answer>,
    reply: &mut Vec<u8>,
    rec: &fmt::Record<'_>,
    recorded: VecDeque<Recorded>,
    tail: bool,
    busy: u64,
) -> Status {
    let m = rec.meta;
    let (call, method, request) = match split_call_id(m.method, rec.request) {
        Some((id, method, request)) => (Some(id), method, request),
        None => (None, m.method, rec.request),
    };
    OUT.with(|o| {
        let mut o = o.borrow_mut();
        o.current = Some((rec.offset, m.index));
        o.next_ordinal = 0;
        o.name = instance.method_name(method);
        o.recorded = recorded;
        o.replaying = Some(tail);
        o.busy = busy;
    });
    SESSION.with(|s| s.set(m.chan));
    let r = instance.handle(method, request, reply);
    SESSION.with(|s| s.set(u32::MAX));
    let left = OUT.with(|o| {
        let mut o = o.borrow_mut();
        o.current = None;
        o.replaying = None;
        std::mem::take(&mut o.recorded).len()
    });
    if left > 0 {
        diverged(
            m.index,
            &format!("it made {left} calls fewer than when it first ran"),
        );
    }
    let status = to_status(r, reply);
    if let Some(id) = call {
        answers.insert(
            m.chan,
            Answer {
                chan: m.chan,
                id,
                status: status.to_wire(),
                reply: reply.clone(),
            },
        );
    }
    status
}

fn nix_kill() -> rustix::process::Signal {
    rustix::process::Signal::KILL
}

fn to_status(r: Result<(), DispatchError>, reply: &mut Vec<u8>) -> Status {
    match r {
        Ok(()) => Status::Ok,
        Err(DispatchError::Malformed { .. }) => {
            reply.clear();
            Status::Malformed
        }
        Err(DispatchError::UnknownMethod { .. }) => {
            reply.clear();
            Status::UnknownMethod
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose changes are `len` bytes, written the way a serializer writes them: through
    /// `write_all`, in 64 KiB pieces.
    struct BigChanges {
        len: usize,
    }

    impl PlainInstance for BigChanges {
        fn handle(&mut self, _: u32, _: &[u8], _: &mut Vec<u8>) -> Result<(), DispatchError> {
            Ok(())
        }
        fn is_logged(&self, _: u32) -> bool {
            true
        }
        fn method_name(&self, _: u32) -> Option<&'static str> {
            None
        }
        fn capture(&self, _: u32) -> Capture {
            Capture::Allowed
        }
        fn distill(&self, _: &mut dyn std::io::Write) -> Result<(), DistillError> {
            Ok(())
        }
        fn track_changes(&mut self, _: bool) -> bool {
            true
        }
        fn write_changes(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError> {
            let piece = vec![7u8; 64 << 10];
            for _ in 0..self.len / piece.len() {
                out.write_all(&piece)
                    .map_err(|e| DistillError::Encode(e.to_string()))?;
            }
            Ok(())
        }
        fn forget_changes(&mut self) {}
        fn apply_changes(&mut self, _: &[u8]) -> Result<(), DistillError> {
            Ok(())
        }
    }

    /// This thread's minor page faults so far (`/proc/thread-self/stat`, field 10).
    fn thread_minor_faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split_whitespace().nth(7).unwrap().parse().unwrap()
    }

    /// A message log memfd as the kernel makes one (header, fallocated ring of `cap`), with
    /// its tail at `tail`.
    fn test_log(cap: u64, tail: u64) -> OwnedFd {
        let len = fmt::LOG_HEADER as u64 + cap;
        let fd = txipc_sys::shm::create_sealed("txipc-test-clog", len).unwrap();
        rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len).unwrap();
        let map = SharedBytes::map(&fd, fmt::LOG_HEADER).unwrap();
        map.u64_at(fmt::LOG_CAP_AT).store(cap, Ordering::Release);
        map.u64_at(fmt::LOG_MAGIC_AT)
            .store(fmt::LOG_MAGIC, Ordering::Release);
        map.u64_at(fmt::LOG_TAIL_AT)
            .store(fmt::tail_word(tail), Ordering::Release);
        fd
    }

    /// Minor faults this thread takes appending `n` records of 1 KiB to `ring`.
    fn faults_appending(ring: &Ring, n: u64) -> u64 {
        let rec = vec![0x5au8; 1024];
        let before = thread_minor_faults();
        for i in 0..n {
            ring.push(i + 1, &rec);
        }
        thread_minor_faults() - before
    }

    /// The ring's page-table entries are filled in before the server appends (wave 8): an
    /// incarnation that maps a log nothing was ever logged to (a system's first) populates the
    /// whole ring at once, and one activated from a following standby takes over the
    /// standby's mapping, which the standby populated a chunk a step. Either way a first lap
    /// of appends takes no page fault; a fresh mapping of a log with records in it (a cold
    /// activation) still takes one a page, as every incarnation did before.
    #[test]
    fn the_rings_first_lap_takes_no_page_faults_once_populated() {
        let cap = 2u64 << 20;
        let pages = cap / 4096;
        let records = cap / 1024 - 8;
        // A system's first incarnation.
        let fd = test_log(cap, 0);
        let (ring, tail) = Ring::map(&fd, cap, 0, None, None).unwrap();
        assert_eq!(tail, 0);
        let faults = faults_appending(&ring, records);
        assert!(
            faults < pages / 8,
            "{faults} faults in a first lap of {pages} pages"
        );
        // A log with records: a fresh mapping faults a page at a time...
        let fd = test_log(cap, 4096);
        let (ring, _) = Ring::map(&fd, cap, 0, None, None).unwrap();
        let cold = faults_appending(&ring, records);
        assert!(cold >= pages * 3 / 4, "only {cold} faults in {pages} pages");
        drop(ring);
        // ...but not the following standby's mapping, populated step by step and handed over.
        let fd = test_log(cap, 4096);
        let standby = Ring::mapping(&fd, cap).unwrap();
        let mut steps = 0;
        while standby.populate_some() {
            steps += 1;
        }
        assert_eq!(steps + 1, cap / POPULATE_CHUNK);
        let (ring, tail) = Ring::map(&fd, cap, 0, None, Some(standby)).unwrap();
        assert_eq!(tail, 4096);
        let faults = faults_appending(&ring, records);
        assert!(
            faults < pages / 8,
            "{faults} faults in a handed-over mapping of {pages} pages"
        );
    }

    /// A request record appended as its header and the request (the server's append, with no
    /// copy of the whole record) is the very bytes `encode_record` gives, its padding zeroed
    /// over whatever the ring held; the log reads back with every checksum.
    #[test]
    fn a_record_appended_in_pieces_is_the_encoded_record() {
        let cap = 64u64 << 10;
        let fd = test_log(cap, 0);
        let (ring, _) = Ring::map(&fd, cap, 0, None, None).unwrap();
        // Yesterday's lap: every ring byte 0xff.
        ring.map
            .copy_in(fmt::LOG_HEADER, &vec![0xffu8; cap as usize]);
        let mut want = Vec::new();
        let mut prev = None;
        let mut off = 0u64;
        for i in 1..=200u64 {
            let request: Vec<u8> = (0..(i * 37 % 700) as usize).map(|b| b as u8).collect();
            let meta = RecordMeta {
                index: i,
                chan: 3,
                slot: i as u32 % 7,
                seq: i * 11,
                method: 2,
                prev_digest: prev,
            };
            if off + fmt::record_len(request.len()) as u64 > cap {
                break;
            }
            let at = ring.push_parts(i, &fmt::record_header(&meta, &request), &request);
            let mut rec = Vec::new();
            fmt::encode_record(&meta, &request, &mut rec);
            assert_eq!(at, off, "no pad expected in the first lap");
            assert_eq!(ring.read(at, at + rec.len() as u64), rec, "record {i}");
            want.push(rec);
            off = at + want.last().unwrap().len() as u64;
            prev = Some(i * 1000);
        }
        let bytes = ring.read(0, off);
        let scan = fmt::read_log(&bytes, 0, cap, 1).unwrap();
        assert_eq!(scan.records.len(), want.len());
        assert_eq!(bytes, want.concat());
    }

    /// The crash point "an activation while the following standby writes a delta of more than
    /// one chunk" (ARCHITECTURE.md §16). The delta's writer gives up at the next chunk once the
    /// status page's generation changed — with an error `write_all` does not retry. It was
    /// `ErrorKind::Interrupted`, which `write_all` retries: the standby looped in the write
    /// until the kernel's activation timeout (5 s) killed it, and the recovery came from a
    /// cold standby after it (the 5.1 s recoveries of `bench recovery --policy companion`).
    #[test]
    fn an_activation_during_a_delta_write_makes_it_give_up_at_once() {
        let fd = StatusPage::create("t-delta-status").unwrap();
        let status = StatusPage::map(&fd).unwrap();
        status.set_generation(3);
        let snap = tempfile_memfd();
        let mut file = SnapshotFile {
            fd: &snap,
            buf: Vec::new(),
            crc: fmt::PayloadCrc::default(),
            abort: Some((&status, 3)),
        };
        // Same generation: the chunks are written.
        let chunk = vec![1u8; SNAPSHOT_CHUNK];
        std::io::Write::write_all(&mut file, &chunk[..1000]).unwrap();
        std::io::Write::write_all(&mut file, &chunk).unwrap();
        // The kernel is activating this standby: the next chunk fails, and not as a write to
        // retry.
        status.set_generation(4);
        let e = std::io::Write::write(&mut file, &chunk).unwrap_err();
        assert_ne!(e.kind(), std::io::ErrorKind::Interrupted, "{e}");
        assert!(e.to_string().contains("the delta is given up"), "{e}");
        let e = std::io::Write::write_all(&mut file, &chunk).unwrap_err();
        assert!(e.to_string().contains("the delta is given up"), "{e}");

        // A whole delta of 3 MiB (three chunks) through `seal_delta`: sealed while the
        // generation stays, given up (nothing handed over) once it changed.
        let meta = SnapshotMeta {
            state_version: 1,
            index: 20,
            log_offset: 160,
            last_digest: None,
        };
        let base_meta = SnapshotMeta {
            index: 10,
            log_offset: 80,
            ..meta
        };
        let base = ChainLink {
            meta: base_meta,
            link: Link::Base { crc: 0x1234 },
            after: (10, 10),
        };
        let chain = ChainEnd {
            base,
            end: base,
            links: 1,
            base_bytes: 64 << 20,
            delta_bytes: 0,
        };
        let big = BigChanges { len: 3 << 20 };
        let answers = HashMap::new();
        let sealed = seal_delta("t", &big, &answers, (&meta, &chain, 10), &status, 4);
        let (_, bytes) = sealed.expect("the generation did not change: the delta is sealed");
        assert!(bytes > 3 << 20);
        let given_up = seal_delta("t", &big, &answers, (&meta, &chain, 10), &status, 3);
        assert!(given_up.is_none(), "the generation changed: given up");
    }

    fn tempfile_memfd() -> OwnedFd {
        rustix::fs::memfd_create("t-delta", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    fn chain(links: usize, base_bytes: u64, delta_bytes: u64) -> ChainEnd {
        let link = ChainLink {
            meta: SnapshotMeta {
                state_version: 1,
                index: 1,
                log_offset: 0,
                last_digest: None,
            },
            link: Link::Base { crc: 0 },
            after: (1, 1),
        };
        ChainEnd {
            base: link,
            end: link,
            links,
            base_bytes,
            delta_bytes,
        }
    }

    /// A chain takes deltas until they together reach three times its base (not once they
    /// reach the base: a base every few deltas was a third of the companion's CPU on YCSB A),
    /// or until it has no room for another link.
    #[test]
    fn a_chain_takes_deltas_up_to_three_bases_and_sixteen_links() {
        assert!(chain(1, 100, 0).takes_a_delta());
        assert!(chain(4, 100, 150).takes_a_delta(), "deltas past one base");
        assert!(chain(8, 100, 299).takes_a_delta());
        assert!(!chain(9, 100, 300).takes_a_delta(), "three bases of deltas");
        assert!(
            !chain(MAX_CHAIN, 100, 10).takes_a_delta(),
            "no room for a link"
        );
        assert!(chain(MAX_CHAIN - 1, 100, 10).takes_a_delta());
        assert!(
            !chain(2, 0, 0).takes_a_delta(),
            "an empty base takes no delta"
        );
    }

    /// A ring over a fresh log memfd of `cap` bytes, with a bell (an eventfd) to ring.
    fn ring_with_bell(cap: u64) -> (Ring, OwnedFd) {
        let fd =
            txipc_sys::shm::create_sealed("t-follow-log", fmt::LOG_HEADER as u64 + cap).unwrap();
        let map = SharedBytes::map(&fd, fmt::LOG_HEADER + cap as usize).unwrap();
        let bell = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .unwrap();
        let ring = Ring {
            map,
            cap,
            end: Cell::new(0),
            pad: RefCell::new(Vec::new()),
            bell: Some(bell.try_clone().unwrap()),
            populated: Cell::new(0),
        };
        (ring, bell)
    }

    fn rung(bell: &OwnedFd) -> bool {
        rustix::io::read(bell, &mut [0u8; 8]).is_ok()
    }

    /// The lag bound's wake-up (ARCHITECTURE.md §16, "Catch-up and log sizing"): the serving
    /// incarnation rings a sleeping replica's bell once, when the replica is
    /// `FOLLOW_WAKE_RECORDS` behind, and not while it is awake, closer, or absent. Without the
    /// ring the replica slept through a burst (up to its 20 ms idle timer) and a recovery
    /// replayed ~25,000 records.
    #[test]
    fn a_sleeping_replica_is_rung_awake_once_it_is_the_wake_bound_behind() {
        let (ring, bell) = ring_with_bell(1 << 16);
        let bound = fmt::FOLLOW_WAKE_RECORDS;
        // The replica applied request 100 (its word is `index + 1`).
        ring.publish_replica(100, 0);
        // Awake: never rung, however far behind.
        ring.nudge(100 + 10 * bound);
        assert!(!rung(&bell), "an awake replica was rung");
        ring.set_asleep(true);
        // Asleep, but less than the bound behind: not rung.
        ring.nudge(100 + bound - 1);
        assert!(!rung(&bell), "rung before the bound");
        // The bound behind: rung, and its asleep word taken (no second ring for this sleep).
        ring.nudge(100 + bound);
        assert!(rung(&bell), "not rung at the bound");
        assert_eq!(
            ring.map
                .u64_at(fmt::LOG_FOLLOW_ASLEEP_AT)
                .load(Ordering::Relaxed),
            0
        );
        ring.nudge(100 + bound + 1);
        assert!(!rung(&bell), "rung twice for one sleep");
        // Asleep, a few large records behind: the catch-up's bytes bound (1/8 of the ring).
        ring.set_asleep(true);
        ring.publish_replica(100, 0);
        ring.end.set((1 << 16) / CATCH_UP - 1);
        ring.nudge(102);
        assert!(!rung(&bell), "rung below the bytes bound");
        ring.end.set((1 << 16) / CATCH_UP);
        ring.nudge(102);
        assert!(rung(&bell), "not rung at the bytes bound");
        // Asleep again, with no replica (stale, gone, or activated: word 0): not rung.
        ring.set_asleep(true);
        ring.publish_replica(u64::MAX, 0);
        ring.nudge(100 + 10 * bound);
        assert!(!rung(&bell), "rung with no replica");
    }
}
