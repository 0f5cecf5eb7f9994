//! Policy `companion`: the kernel's half of the companion (ARCHITECTURE.md "Companion policy").
//!
//! The kernel owns what must outlive the server and must not be writable by it: the message
//! log (a memfd sealed against shrinking; the server gets only an append-only and a read-only
//! descriptor of it, never a mapping) and the newest checkpoint (a memfd the server's child
//! sealed against every write before handing it over). It keeps the log's segment starts
//! (where each incarnation began appending), charges every fault to the request the busy word
//! names (poison accounting), fails and skips poison requests, drops the log behind each new
//! checkpoint, and holds the server when an incarnation reports a corrupt log or snapshot or a
//! divergent replay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use txipc_chan::{SlotState, Status};
use txipc_core::companion::{self as fmt, SEQ_MASK, decode_busy};
use txipc_core::proto::{CheckpointInfo, CompanionInfo, CompanionStart};
use txipc_core::recovery::{
    CompanionAction, CompanionSlot, FailReason, LogState, decide_companion_slot,
};

use crate::errors::{KernelError, os};
use crate::event_loop::Kernel;
use crate::recovery::Recovered;
use crate::server::Server;

/// A companion server's log and checkpoint, held by the kernel.
#[derive(Debug)]
pub(crate) struct CompanionLog {
    /// The log memfd (read-write: only the kernel holds this descriptor).
    log: OwnedFd,
    /// `O_WRONLY | O_APPEND`, for the server.
    pub(crate) append: OwnedFd,
    /// `O_RDONLY`, for the server's replay.
    pub(crate) read: OwnedFd,
    /// The newest checkpoint: sealed snapshot memfd and what its writer said.
    snapshot: Option<(OwnedFd, CheckpointInfo)>,
    /// Where replay starts when there is no snapshot (raised by a reset).
    start: u64,
    /// Log offsets where incarnations started appending, behind the newest checkpoint.
    segments: Vec<u64>,
    /// Requests failed by the kernel whose records replay must skip (bounded, oldest first).
    skip: VecDeque<(u32, u32, u64)>,
    /// Faults charged to each waiting request `(chan, slot, seq & SEQ_MASK)`.
    charged: HashMap<(u32, u32, u64), u32>,
    /// The log's cap (from the manifest's `log_mb`): kept preallocated ahead of the end.
    cap: u64,
    pub(crate) info: CompanionInfo,
}

fn reopen(fd: &OwnedFd, append: bool) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut o = std::fs::OpenOptions::new();
    if append {
        o.append(true);
    } else {
        o.read(true);
    }
    Ok(OwnedFd::from(o.open(path)?))
}

impl CompanionLog {
    pub(crate) fn create(name: &str, cap: u64) -> Result<CompanionLog, KernelError> {
        let log = rustix::fs::memfd_create(
            format!("txipc-clog-{name}").as_str(),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(os(format!("{name}: creating the message log")))?;
        // Nobody may shrink it (or seal it further): what was appended stays.
        rustix::fs::fcntl_add_seals(&log, SealFlags::SHRINK | SealFlags::SEAL)
            .map_err(os(format!("{name}: sealing the message log")))?;
        let append = reopen(&log, true).map_err(os(format!("{name}: opening the log")))?;
        let read = reopen(&log, false).map_err(os(format!("{name}: opening the log")))?;
        let c = CompanionLog {
            log,
            append,
            read,
            snapshot: None,
            start: 0,
            segments: Vec::new(),
            skip: VecDeque::new(),
            charged: HashMap::new(),
            cap,
            info: CompanionInfo::default(),
        };
        c.preallocate();
        Ok(c)
    }

    fn size(&self) -> u64 {
        rustix::fs::fstat(&self.log).map_or(0, |s| s.st_size as u64)
    }

    /// Keeps the next `cap` bytes after the end allocated, so an append finds its pages.
    fn preallocate(&self) {
        let _ = rustix::fs::fallocate(&self.log, FallocateFlags::KEEP_SIZE, self.size(), self.cap);
    }

    /// Forgets the state: the next incarnation starts empty (an operator's release of a held
    /// server, or a forced restart under a baseline policy).
    pub(crate) fn reset(&mut self) {
        self.snapshot = None;
        self.start = self.size();
        self.segments.clear();
        self.skip.clear();
        self.charged.clear();
        let _ = rustix::fs::fallocate(
            &self.log,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            self.start & !4095,
        );
        self.info.log_bytes = 0;
    }

    /// What the next incarnation needs, and the snapshot fd to send with it. Notes the log's
    /// end as the start of its segment.
    pub(crate) fn start_message(&mut self, generation: u64) -> (CompanionStart, Option<&OwnedFd>) {
        let end = self.size();
        self.segments.push(end);
        let base = self
            .snapshot
            .as_ref()
            .map_or(self.start, |(_, i)| i.log_offset);
        self.info.log_bytes = end.saturating_sub(base);
        let start = CompanionStart {
            generation,
            snapshot: self.snapshot.is_some(),
            log_start: self.start,
            segments: self.segments.clone(),
            skip: self.skip.iter().copied().collect(),
        };
        (start, self.snapshot.as_ref().map(|(fd, _)| fd))
    }

    /// A checkpoint arrived from the server's child. Accepted only sealed against writes, with
    /// a header that checks and says what the message says, and newer than the one we have.
    /// Returns why it was refused.
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
        let mut h = [0u8; fmt::SNAPSHOT_HEADER];
        let n = rustix::io::pread(&fd, &mut h, 0).map_err(|e| e.to_string())?;
        let (meta, len) = fmt::check_snapshot_header(&h[..n]).map_err(|e| e.to_string())?;
        let size = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?.st_size as u64;
        if meta.index != info.index
            || meta.log_offset != info.log_offset
            || size != fmt::SNAPSHOT_HEADER as u64 + len
        {
            return Err("the snapshot's header does not match its message".into());
        }
        if info.log_offset > self.size() || info.log_offset < self.start {
            return Err(format!(
                "its log offset {} is outside the log ({}..{})",
                info.log_offset,
                self.start,
                self.size()
            ));
        }
        if let Some((_, old)) = &self.snapshot
            && old.index > info.index
        {
            return Err(format!(
                "older than the checkpoint we have ({} < {})",
                info.index, old.index
            ));
        }
        // The log behind the checkpoint is no longer needed: free its pages.
        let _ = rustix::fs::fallocate(
            &self.log,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            info.log_offset & !4095,
        );
        self.segments.retain(|&s| s > info.log_offset);
        self.preallocate();
        let log_bytes = self.size().saturating_sub(info.log_offset);
        let i = &mut self.info;
        i.checkpoints += 1;
        i.checkpoint_index = info.index;
        i.snapshot_bytes = info.bytes;
        i.last_stall_us = info.stall_us;
        i.max_stall_us = i.max_stall_us.max(info.stall_us);
        i.log_bytes = log_bytes;
        self.snapshot = Some((fd, info));
        Ok(())
    }

    fn push_skip(&mut self, key: (u32, u32, u64)) {
        if self.skip.len() >= fmt::MAX_SKIP {
            self.skip.pop_front();
        }
        self.skip.push_back(key);
    }
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
    if let Some(key) = decode_busy(busy) {
        *log.charged.entry(key).or_default() += 1;
    }
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
            let key = (ci, snap.slot as u32, snap.seq & SEQ_MASK);
            waiting.insert(key);
            let charged = log.charged.get(&key).copied().unwrap_or(0);
            match decide_companion_slot(retry_limit, held, CompanionSlot { charged }) {
                CompanionAction::Leave => left += 1,
                CompanionAction::FailAndSkip(reason) => {
                    let status = match reason {
                        FailReason::Poison { .. } => Status::Aborted,
                        // Effect unknown: the client tells "restarted" from "down" by the
                        // channel's DEAD flag, set before the slots are settled.
                        FailReason::Restarted | FailReason::Interrupted => Status::Restarted,
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
    Recovered {
        summary: format!(
            "companion: fault charged to {:?}, {left} waiting requests left to the next incarnation, {failed} failed and skipped",
            decode_busy(busy)
        ),
        log_state: LogState::Idle,
        log_error: None,
    }
}

impl Kernel {
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
            Ok(()) => self.log(format!(
                "{name}: checkpoint at request {index}, {bytes} bytes, stall {stall} µs"
            )),
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
        .map(|c| vec![c.append.as_fd(), c.read.as_fd()])
        .unwrap_or_default()
}
