//! Policy `companion`: the kernel's half of the companion (ARCHITECTURE.md "Companion policy").
//!
//! The kernel owns what must outlive the server: the message log (a memfd sealed against
//! resizing: a header page and a ring the server maps and appends to; its records are
//! checksummed and chained, so what a faulty server does to it is detected at replay) and the
//! newest checkpoint (a memfd the server's child sealed against every write before handing it
//! over, so nobody can change it). It charges every fault to the request the busy word names
//! (poison accounting), fails and skips poison requests, publishes the offset of each accepted
//! checkpoint in the log's header (the writer may reuse the ring behind it), and holds the
//! server when an incarnation reports a corrupt log or snapshot or a divergent replay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use rustix::fs::{FallocateFlags, SealFlags};
use txipc_chan::{SlotState, Status};
use txipc_core::companion::{
    self as fmt, CHAN_MASK, SEQ_MASK, busy_called, busy_in_call, decode_busy,
};
use txipc_core::proto::{CheckpointInfo, CompanionInfo, CompanionStart};
use txipc_core::recovery::{
    CompanionAction, CompanionSlot, FailReason, LogState, decide_companion_slot,
};
use txipc_sys::shm::SharedBytes;

use crate::errors::{KernelError, os};
use crate::event_loop::Kernel;
use crate::recovery::Recovered;
use crate::server::Server;

/// Most links of a checkpoint chain (a base and its deltas): they travel in one message.
pub(crate) const MAX_CHAIN: usize = txipc_sys::fdpass::MAX_FDS;

/// A companion server's log and checkpoint, held by the kernel.
#[derive(Debug)]
pub(crate) struct CompanionLog {
    /// The log memfd (header page and ring), sealed against resizing; the server maps it.
    pub(crate) log: OwnedFd,
    /// The kernel's mapping of it: it writes the header's accepted word and reads the tail.
    map: SharedBytes,
    /// The newest checkpoint chain: a base and the deltas after it, in order (empty: no
    /// checkpoint). Each a sealed snapshot memfd, what its writer said, and its link.
    chain: Vec<(OwnedFd, CheckpointInfo, fmt::ChainLink)>,
    /// Where replay starts when there is no snapshot (raised by a reset).
    start: u64,
    /// Requests failed by the kernel whose records replay must skip (bounded, oldest first).
    skip: VecDeque<(u32, u32, u64)>,
    /// Faults charged to each waiting request `(chan & CHAN_MASK, slot, seq & SEQ_MASK)`.
    charged: HashMap<(u32, u32, u64), u32>,
    /// Waiting requests whose handler has made calls to other servers (the busy word said so
    /// at a fault): never failed alone, whose calls' effects stand at their callees.
    called: HashSet<(u32, u32, u64)>,
    /// The replica word ([`fmt::LOG_REPLICA_AT`]) when the fault was seen: the following
    /// standby's position then (`index + 1`; 0: no replica).
    replica_at_fault: u64,
    pub(crate) info: CompanionInfo,
}

impl CompanionLog {
    pub(crate) fn create(name: &str, cap: u64) -> Result<CompanionLog, KernelError> {
        let len = fmt::LOG_HEADER as u64 + cap;
        // Sealed against resizing: the server maps it, and so does the kernel.
        let log = txipc_sys::shm::create_sealed(&format!("txipc-clog-{name}"), len)
            .map_err(os(format!("{name}: creating the message log")))?;
        // Its pages allocated now, so appends do not allocate.
        let _ = rustix::fs::fallocate(&log, FallocateFlags::empty(), 0, len);
        let map = SharedBytes::map(&log, len as usize)
            .map_err(os(format!("{name}: mapping the message log")))?;
        map.u64_at(fmt::LOG_CAP_AT).store(cap, Ordering::Release);
        map.u64_at(fmt::LOG_MAGIC_AT)
            .store(fmt::LOG_MAGIC, Ordering::Release);
        let c = CompanionLog {
            log,
            map,
            chain: Vec::new(),
            start: 0,
            skip: VecDeque::new(),
            charged: HashMap::new(),
            called: HashSet::new(),
            replica_at_fault: 0,
            info: CompanionInfo::default(),
        };
        c.set_log(0, 0);
        Ok(c)
    }

    /// Restarts the log at `tail` with the newest accepted checkpoint at `accepted`.
    fn set_log(&self, tail: u64, accepted: u64) {
        self.map
            .u64_at(fmt::LOG_ACCEPTED_AT)
            .store(accepted, Ordering::Release);
        self.map
            .u64_at(fmt::LOG_TAIL_AT)
            .store(fmt::tail_word(tail), Ordering::Release);
    }

    /// The following standby's replica as its word says: `index + 1` of the last request it
    /// applied (0: none).
    fn replica_word(&self) -> u64 {
        self.map.u64_at(fmt::LOG_REPLICA_AT).load(Ordering::Acquire)
    }

    /// The active incarnation failed: remembers where the replica was (its lag is known once
    /// the activation says what it replayed, [`CompanionLog::on_replayed`]).
    pub(crate) fn on_fault(&mut self) {
        self.replica_at_fault = self.replica_word();
    }

    /// The activated incarnation replayed `records` past `from_index` (the last request of
    /// the state it started from: the replica's, or the checkpoint's when `warm` is false).
    pub(crate) fn on_replayed(&mut self, records: u64, from_index: u64, us: u64, warm: bool) {
        self.info.last_replayed = records;
        self.info.last_replay_us = us;
        self.info.last_warm = warm;
        // What the replica applied between the fault and the activation, plus what the
        // activation replayed: the records it was behind when the fault came.
        let applied_since = match self.replica_at_fault {
            0 => 0,
            at if warm => from_index.saturating_sub(at - 1),
            _ => 0,
        };
        self.info.last_lag_records = records + applied_since;
        self.replica_at_fault = 0;
    }

    /// The standby died, or was activated: no replica follows the log until the next one
    /// says so.
    pub(crate) fn standby_gone(&mut self) {
        self.info.standby_index = 0;
        self.map
            .u64_at(fmt::LOG_REPLICA_AT)
            .store(0, Ordering::Release);
    }

    /// What `ps` shows, with a following standby's position read live from its words (they
    /// are published as the replica applies, not only when it has caught up).
    pub(crate) fn ps_info(&self) -> CompanionInfo {
        let mut info = self.info.clone();
        if let Some(index) = self.replica_word().checked_sub(1) {
            info.standby_applied = index;
            let offset = self
                .map
                .u64_at(fmt::LOG_REPLICA_OFFSET_AT)
                .load(Ordering::Acquire);
            info.standby_lag_bytes = self.tail().unwrap_or(offset).saturating_sub(offset);
        }
        info
    }

    /// The log's end as the server's tail word says (None: the word fails its check).
    fn tail(&self) -> Option<u64> {
        fmt::decode_tail(self.map.u64_at(fmt::LOG_TAIL_AT).load(Ordering::Acquire))
    }

    /// Forgets the state: the next incarnation starts empty (an operator's release of a held
    /// server, or a forced restart under a baseline policy).
    /// No incarnation runs (it is called between incarnations), so nobody appends meanwhile.
    /// Offsets keep growing across a reset (a call id names its request by its log offset,
    /// and a callee refuses an id lower than one it answered): the new log starts past every
    /// offset the writer could have reached — its tail if the word checks, and never less
    /// than a whole ring past the newest checkpoint the kernel accepted.
    pub(crate) fn reset(&mut self) {
        let accepted = self.newest().map_or(self.start, |i| i.log_offset);
        let cap = self.map.len() as u64 - fmt::LOG_HEADER as u64;
        let start = self
            .tail()
            .unwrap_or(0)
            .max(accepted + cap)
            .next_multiple_of(8);
        self.chain.clear();
        self.start = start;
        self.set_log(start, start);
        self.skip.clear();
        self.charged.clear();
        self.called.clear();
        self.info.log_bytes = 0;
    }

    /// The newest checkpoint (the chain's last link).
    fn newest(&self) -> Option<&CheckpointInfo> {
        self.chain.last().map(|(_, i, _)| i)
    }

    /// The chain's snapshot fds, base first: what an incarnation restores, in order.
    pub(crate) fn chain_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.chain.iter().map(|(fd, _, _)| fd.as_fd()).collect()
    }

    /// What the next incarnation needs, and the snapshot fds (the chain) to send with it.
    pub(crate) fn start_message(
        &mut self,
        generation: u64,
    ) -> (CompanionStart, Vec<std::os::fd::BorrowedFd<'_>>) {
        // The standby is being activated: the next one restores from scratch.
        self.standby_gone();
        let base = self.newest().map_or(self.start, |i| i.log_offset);
        self.info.log_bytes = self.tail().unwrap_or(base).saturating_sub(base);
        let start = CompanionStart {
            generation,
            snapshot: !self.chain.is_empty(),
            log_start: self.start,
            skip: self.skip.iter().copied().collect(),
        };
        (start, self.chain_fds())
    }

    /// A checkpoint arrived from the server's child (or the following standby). Accepted only
    /// sealed against writes, with a header that checks and says what the message says, and
    /// newer than the one we have. A base replaces the chain; a delta must extend it: a delta
    /// of this very base, starting exactly where the chain ends (no gap), and the chain must
    /// have room (its links travel in one message: at most [`MAX_CHAIN`]). Returns why it was
    /// refused.
    pub(crate) fn on_checkpoint(
        &mut self,
        info: CheckpointInfo,
        fd: OwnedFd,
    ) -> Result<(), String> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| e.to_string())?;
        let need = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW;
        if !seals.contains(need) {
            return Err("the snapshot memfd is not sealed against writes".into());
        }
        let mut h = [0u8; fmt::SNAPSHOT_HEADER + fmt::DELTA_LINK];
        let n = rustix::io::pread(&fd, &mut h, 0).map_err(|e| e.to_string())?;
        let (meta, len) = fmt::check_snapshot_header(&h[..n]).map_err(|e| e.to_string())?;
        let size = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?.st_size as u64;
        if meta.index != info.index
            || meta.log_offset != info.log_offset
            || size != fmt::SNAPSHOT_HEADER as u64 + len
        {
            return Err("the snapshot's header does not match its message".into());
        }
        let Some(tail) = self.tail() else {
            return Err("the message log's tail word fails its check".into());
        };
        if info.log_offset > tail || info.log_offset < self.start {
            return Err(format!(
                "its log offset {} is outside the log ({}..{tail})",
                info.log_offset, self.start,
            ));
        }
        if let Some(old) = self.newest()
            && old.index > info.index
        {
            return Err(format!(
                "older than the checkpoint we have ({} < {})",
                info.index, old.index
            ));
        }
        let kind = fmt::snapshot_link(&h[..n]);
        let link = match kind {
            fmt::Link::Base { .. } => fmt::ChainLink {
                meta,
                link: kind,
                after: (meta.index, meta.index),
            },
            fmt::Link::Delta { .. } => {
                // (Its link is covered by the payload checksum, which the restore checks;
                // here it only decides whether the delta extends the chain.)
                let (after, _) = fmt::decode_delta_link(&h[fmt::SNAPSHOT_HEADER..n])
                    .map_err(|e| e.to_string())?;
                let link = fmt::ChainLink {
                    meta,
                    link: kind,
                    after,
                };
                let (Some((_, _, base)), Some((_, _, end))) =
                    (self.chain.first(), self.chain.last())
                else {
                    return Err("a delta with no base: the kernel holds no checkpoint".into());
                };
                fmt::check_next_link(base, end, &link).map_err(|e| e.to_string())?;
                if self.chain.len() >= MAX_CHAIN {
                    return Err(format!(
                        "the checkpoint chain has {MAX_CHAIN} links already: a full checkpoint is due"
                    ));
                }
                link
            }
        };
        // The log behind the checkpoint is no longer needed: the writer may reuse its ring
        // bytes from now on.
        self.map
            .u64_at(fmt::LOG_ACCEPTED_AT)
            .store(info.log_offset, Ordering::Release);
        let log_bytes = tail.saturating_sub(info.log_offset);
        let i = &mut self.info;
        i.checkpoints += 1;
        if info.stall_us > 0 {
            i.server_checkpoints += 1;
        }
        i.checkpoint_index = info.index;
        i.last_stall_us = info.stall_us;
        i.max_stall_us = i.max_stall_us.max(info.stall_us);
        i.log_bytes = log_bytes;
        match kind {
            fmt::Link::Base { .. } => {
                i.snapshot_bytes = info.bytes;
                i.chain_delta_bytes = 0;
                self.chain.clear();
            }
            fmt::Link::Delta { .. } => {
                i.deltas += 1;
                i.chain_delta_bytes += info.bytes;
            }
        }
        self.chain.push((fd, info, link));
        self.info.chain_len = self.chain.len() as u64;
        Ok(())
    }

    fn push_skip(&mut self, key: (u32, u32, u64)) {
        if self.skip.len() >= fmt::MAX_SKIP {
            self.skip.pop_front();
        }
        self.skip.push_back(key);
    }

    /// The logged request `key` names and the calls its handler made, as the log behind the
    /// newest checkpoint records them (for the reason a server is held).
    fn describe(&self, key: (u32, u32, u64)) -> String {
        // With no snapshot the log holds every request from index 1 (a reset starts over).
        let (base, first) = self
            .newest()
            .map_or((self.start, 1), |i| (i.log_offset, i.index + 1));
        let cap = self.map.len() as u64 - fmt::LOG_HEADER as u64;
        let Some(tail) = self.tail().filter(|&t| t >= base && t - base <= cap) else {
            return "(the message log's tail does not check)".into();
        };
        let mut bytes = Vec::with_capacity((tail - base) as usize);
        for (at, n) in fmt::ring_ranges(base, tail, cap) {
            self.map.copy_out(at, n, &mut bytes);
        }
        let scan = match fmt::read_log(&bytes, base, cap, first) {
            Ok(scan) => scan,
            Err(e) => return format!("(the message log does not read: {e})"),
        };
        let Some(rec) = scan
            .records
            .iter()
            .rev()
            .find(|r| (r.meta.chan & CHAN_MASK, r.meta.slot, r.meta.seq & SEQ_MASK) == key)
        else {
            return format!(
                "request (channel {}, slot {}, seq {}), not in the log behind the checkpoint",
                key.0, key.1, key.2
            );
        };
        let m = rec.meta;
        let calls: Vec<String> = scan
            .calls
            .iter()
            .filter(|c| c.meta.index == m.index)
            .map(|c| {
                format!(
                    "call {} (method {}) answered {}",
                    c.meta.ordinal,
                    c.meta.method,
                    txipc_chan::Status::from_wire(c.meta.status)
                        .map_or_else(|| format!("status {}", c.meta.status), |s| format!("{s:?}"))
                )
            })
            .collect();
        format!(
            "logged request {} (method {}, channel {}, slot {}, seq {}); its calls: {}{}",
            m.index,
            m.method & !(1 << 30),
            m.chan,
            m.slot,
            m.seq,
            if calls.is_empty() {
                "none recorded".to_string()
            } else {
                calls.join(", ")
            },
            "; and possibly one more sent but not recorded when it faulted"
        )
    }
}

/// Charges the fault of a companion server's failed incarnation (confirmed dead or stopped) to
/// the request its busy word names — unless the handler was waiting for a call to another
/// server then (the callee's recovery or slowness is not the request's fault). Returns the
/// reason to hold the server if that request is now poison but its handler has made calls to
/// other servers: failing it alone would leave those calls' effects standing (a half-applied
/// request; the companion has no undo), so the server is held instead (fail-stop).
pub(crate) fn charge(s: &mut Server) -> Option<String> {
    let busy = s.status.busy();
    let retry_limit = s.spec.retry_limit;
    let name = s.spec.name.clone();
    let log = s.companion.as_mut()?;
    let key = decode_busy(busy)?;
    if busy_called(busy) {
        log.called.insert(key);
    }
    if busy_in_call(busy) {
        return None;
    }
    let charged = log.charged.entry(key).or_default();
    *charged += 1;
    let charged = *charged;
    if charged <= retry_limit || !log.called.contains(&key) {
        return None;
    }
    Some(format!(
        "poison request with calls: {} faulted `{name}` {charged} times (retry_limit {retry_limit}) after its handler had made calls to other servers, whose effects stand at the callees; the companion cannot undo them, so failing the request alone would leave it half-applied: the server is held (fail-stop) and its clients get Unavailable. Fix the handler, then `txipc release {name}` (it restarts empty)",
        log.describe(key)
    ))
}

/// Settles the waiting requests of a failed companion server (its incarnation is confirmed
/// dead or stopped): charges the fault to the request the busy word names, fails poison
/// requests (and every waiting one if `held`) and has replay skip them; leaves the rest to the
/// next incarnation, which answers them from its replay or runs them.
pub(crate) fn settle(s: &mut Server, held: bool) -> Recovered {
    let busy = s.status.busy();
    let retry_limit = s.spec.retry_limit;
    let Some(log) = s.companion.as_mut() else {
        return Recovered {
            summary: "no message log".into(),
            log_state: LogState::Idle,
            log_error: Some("policy companion without a message log".into()),
        };
    };
    for c in s.channels.values() {
        c.k.wake_waiters();
    }
    let (mut left, mut failed) = (0, 0);
    let mut waiting = HashSet::new();
    for (&ci, c) in &s.channels {
        for snap in c.k.slots() {
            if !matches!(snap.state, SlotState::Taken | SlotState::Posted) {
                continue;
            }
            let key = (ci & CHAN_MASK, snap.slot as u32, snap.seq & SEQ_MASK);
            waiting.insert(key);
            let charged = log.charged.get(&key).copied().unwrap_or(0);
            match decide_companion_slot(retry_limit, held, CompanionSlot { charged }) {
                CompanionAction::Leave => left += 1,
                CompanionAction::FailAndSkip(reason) => {
                    let status = match reason {
                        FailReason::Poison { .. } => Status::Aborted,
                        // Effect unknown: the client tells "restarted" from "down" by the
                        // channel's DEAD flag, set before the slots are settled.
                        FailReason::Restarted => Status::Restarted,
                        FailReason::Interrupted => Status::Interrupted,
                        FailReason::Unavailable => Status::Unavailable,
                    };
                    if c.k.fail_after(snap.slot, snap.seq, status, charged.max(1)) {
                        failed += 1;
                        if status == Status::Aborted {
                            s.aborted += 1;
                        }
                        log.push_skip((ci, snap.slot as u32, snap.seq));
                    }
                }
            }
        }
    }
    // Only requests still waiting can be charged again.
    log.charged.retain(|k, _| waiting.contains(k));
    log.called.retain(|k| waiting.contains(k));
    Recovered {
        summary: format!(
            "companion: fault {} {:?}, {left} waiting requests left to the next incarnation, {failed} failed and skipped",
            if busy_in_call(busy) {
                "not charged (the handler was waiting for a call to another server):"
            } else {
                "charged to"
            },
            decode_busy(busy)
        ),
        log_state: LogState::Idle,
        log_error: None,
    }
}

impl Kernel {
    /// Hands the newest accepted checkpoint to standby `generation` of server `i`, which
    /// restores it in advance (the warm standby); when it `registering`, first where the log
    /// starts and what replay skips (`Follow`, for a standby that follows the log). A send that fails (its socket full) is
    /// harmless: its activation then restores the checkpoint itself.
    pub(crate) fn companion_warm(&mut self, i: usize, generation: u64, registering: bool) {
        let s = &self.servers[i];
        // (Not `incarnation`: when it registers, the lifecycle does not know it as the
        // standby yet.)
        let (Some(log), Some(inc)) = (s.companion.as_ref(), s.procs.get(&generation)) else {
            return;
        };
        // A following standby needs where the log starts and what replay skips first (sent
        // once, when it registers: a skip is only added at a fault, which activates it).
        if registering {
            let _ = txipc_sys::fdpass::send(
                &inc.sock,
                &txipc_core::proto::encode(&txipc_core::proto::ToServer::Follow {
                    log_start: log.start,
                    skip: log.skip.iter().copied().collect(),
                    snapshot: !log.chain.is_empty(),
                }),
                &[],
            );
        }
        if !log.chain.is_empty() {
            let _ = txipc_sys::fdpass::send(
                &inc.sock,
                &txipc_core::proto::encode(&txipc_core::proto::ToServer::Warm),
                &log.chain_fds(),
            );
        }
    }

    /// A companion incarnation reported why it cannot serve correctly: hold the server.
    /// (The lifecycle kills it and holds the server; the reason shown is `message`.)
    pub(crate) fn companion_hold(&mut self, i: usize, generation: u64, message: String) {
        let s = &mut self.servers[i];
        let name = s.spec.name.clone();
        eprintln!("txipc kernel: server `{name}` held: {message}");
        s.hold_message = Some(message.clone());
        if s.life.active() == Some(generation) {
            self.fault_starts(i, generation, format!("held by the server: {message}"));
        }
        self.feed(i, txipc_core::lifecycle::Event::Unservable(generation));
    }

    /// A checkpoint from server `i`'s child.
    pub(crate) fn companion_checkpoint(&mut self, i: usize, info: CheckpointInfo, fd: OwnedFd) {
        let s = &mut self.servers[i];
        let name = s.spec.name.clone();
        let Some(log) = s.companion.as_mut() else {
            return;
        };
        let index = info.index;
        let (stall, bytes) = (info.stall_us, info.bytes);
        match log.on_checkpoint(info, fd) {
            Ok(()) => {
                self.log(format!(
                    "{name}: checkpoint at request {index}, {bytes} bytes, stall {stall} µs"
                ));
                if let Some(g) = self.servers[i].life.standby() {
                    self.companion_warm(i, g, false);
                }
            }
            Err(e) => self.log(format!(
                "{name}: checkpoint at request {index} refused: {e}"
            )),
        }
    }
}

/// Fails every waiting request of a server being held (its replay skips them if it is ever
/// released).
pub(crate) fn settle_held(s: &mut Server) -> Recovered {
    let Some(log) = s.companion.as_mut() else {
        return settle(s, true);
    };
    log.charged.clear();
    log.called.clear();
    let mut failed = 0;
    let mut skips = Vec::new();
    for (&ci, c) in &s.channels {
        for snap in c.k.slots() {
            if matches!(snap.state, SlotState::Taken | SlotState::Posted)
                && c.k.fail(snap.slot, snap.seq, Status::Unavailable)
            {
                failed += 1;
                skips.push((ci, snap.slot as u32, snap.seq));
            }
        }
    }
    for k in skips {
        log.push_skip(k);
    }
    Recovered {
        summary: format!("held: {failed} waiting requests failed"),
        log_state: LogState::Idle,
        log_error: None,
    }
}

/// The fds a companion zygote gets after the usual four.
pub(crate) fn zygote_fds(s: &Server) -> Vec<std::os::fd::BorrowedFd<'_>> {
    s.companion
        .as_ref()
        .map(|c| vec![c.log.as_fd()])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed snapshot memfd: a base at `index` (`base: None`), or a delta of `base`
    /// (its payload checksum and index) starting after `after`.
    fn snapshot(index: u64, base: Option<(u32, u64)>, after: u64) -> (OwnedFd, CheckpointInfo) {
        let meta = fmt::SnapshotMeta {
            state_version: 1,
            index,
            log_offset: index * 8,
            last_digest: None,
        };
        let mut payload = Vec::new();
        if let Some((_, base_index)) = base {
            payload.extend_from_slice(&fmt::encode_delta_link(base_index, after));
        }
        payload.extend_from_slice(format!("state at {index}").as_bytes());
        let mut crc = fmt::PayloadCrc::default();
        crc.update(&payload);
        let header = match base {
            None => crc.header(&meta),
            Some((base_crc, _)) => crc.delta_header(&meta, base_crc),
        };
        let fd = rustix::fs::memfd_create(
            "t-snap",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::io::write(&fd, &header).unwrap();
        rustix::io::write(&fd, &payload).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW)
            .unwrap();
        let info = CheckpointInfo {
            index,
            log_offset: meta.log_offset,
            bytes: (header.len() + payload.len()) as u64,
            stall_us: 0,
            write_us: 0,
        };
        (fd, info)
    }

    fn base_crc(index: u64) -> u32 {
        let meta = fmt::SnapshotMeta {
            state_version: 1,
            index,
            log_offset: index * 8,
            last_digest: None,
        };
        let h = fmt::snapshot_header(&meta, format!("state at {index}").as_bytes());
        match fmt::snapshot_link(&h) {
            fmt::Link::Base { crc } => crc,
            fmt::Link::Delta { .. } => unreachable!("a base"),
        }
    }

    /// The kernel keeps a checkpoint chain — a base, then deltas each of that very base and
    /// starting where the chain ends — and refuses, naming why, a delta with no base, a gap, a
    /// delta of another base (the base was replaced while the delta was being written), and a
    /// delta past the chain's room; a base replaces the chain.
    #[test]
    fn a_delta_that_does_not_extend_the_chain_is_refused() {
        let mut log = CompanionLog::create("t-chain", 1 << 16).unwrap();
        log.set_log(10_000, 0);
        let offer = |log: &mut CompanionLog, (fd, info): (OwnedFd, CheckpointInfo)| {
            log.on_checkpoint(info, fd)
        };
        let e = offer(&mut log, snapshot(20, Some((base_crc(10), 10)), 10)).unwrap_err();
        assert!(e.contains("a delta with no base"), "{e}");
        offer(&mut log, snapshot(10, None, 0)).unwrap();
        offer(&mut log, snapshot(20, Some((base_crc(10), 10)), 10)).unwrap();
        // A gap: starts after 25, the chain ends at 20.
        let e = offer(&mut log, snapshot(30, Some((base_crc(10), 10)), 25)).unwrap_err();
        assert!(e.contains("a gap in the checkpoint chain"), "{e}");
        offer(&mut log, snapshot(30, Some((base_crc(10), 10)), 20)).unwrap();
        assert_eq!((log.chain.len(), log.info.deltas), (3, 2));
        assert_eq!(
            log.map.u64_at(fmt::LOG_ACCEPTED_AT).load(Ordering::Acquire),
            240
        );
        // The base is replaced (the server's own full checkpoint) while a delta of the old
        // one is being written: that delta is refused when it comes.
        offer(&mut log, snapshot(35, None, 0)).unwrap();
        assert_eq!(log.chain.len(), 1);
        let e = offer(&mut log, snapshot(40, Some((base_crc(10), 10)), 35)).unwrap_err();
        assert!(e.contains("a delta of another base"), "{e}");
        // The chain has room for MAX_CHAIN links; then a base is due.
        for k in 1..MAX_CHAIN as u64 {
            offer(
                &mut log,
                snapshot(35 + k, Some((base_crc(35), 35)), 35 + k - 1),
            )
            .unwrap();
        }
        let last = 35 + MAX_CHAIN as u64 - 1;
        let e = offer(&mut log, snapshot(last + 1, Some((base_crc(35), 35)), last)).unwrap_err();
        assert!(e.contains("a full checkpoint is due"), "{e}");
        assert_eq!(log.chain_fds().len(), MAX_CHAIN);
        // What an activation gets: the whole chain, base first.
        let (start, fds) = log.start_message(2);
        assert!(start.snapshot);
        assert_eq!(fds.len(), MAX_CHAIN);
    }
}
