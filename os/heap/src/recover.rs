//! The kernel's side: create the memfds, read a log, roll back a dead server's transaction.
//!
//! These functions map the memfds wherever the kernel likes (never at the server's fixed
//! address) and use only offsets from the log, so they work in any process.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::layout::{HEAP_DATA_OFFSET, HEAP_MAGIC, MIN_HEAP_SIZE};
use crate::log::{LogView, MIN_LOG_SIZE, RollbackCount};
use crate::map::{Mapping, create_memfd, fd_size};
use crate::{BatchEntry, HeapError, LogSnapshot, TxState};

/// Creates an (unformatted, all-zero) heap memfd of `size` bytes: a multiple of 4096, at least
/// 64 KiB. Sparse: untouched pages cost nothing. The first [`Heap::attach`](crate::Heap::attach)
/// formats it.
///
/// # Errors
/// [`HeapError::Invalid`] for a bad size; system errors.
pub fn create_heap_memfd(name: &str, size: usize) -> Result<OwnedFd, HeapError> {
    if size < MIN_HEAP_SIZE || size % HEAP_DATA_OFFSET != 0 {
        return Err(HeapError::Invalid(
            "heap size must be a multiple of 4096 and at least 64 KiB",
        ));
    }
    create_memfd(name, size)
}

/// Creates and formats an undo-log memfd of `size` bytes (a multiple of 8, at least 8 KiB; the
/// record area is `size - 4096`). A transaction can log about that many bytes of pre-images
/// (plus 16 bytes per record); page tracking logs 4 KiB per first-written page.
///
/// # Errors
/// [`HeapError::Invalid`] for a bad size; system errors.
pub fn create_log_memfd(name: &str, size: usize) -> Result<OwnedFd, HeapError> {
    if size < MIN_LOG_SIZE || size % 8 != 0 {
        return Err(HeapError::Invalid(
            "log size must be a multiple of 8 and at least 8 KiB",
        ));
    }
    let fd = create_memfd(name, size)?;
    let m = Mapping::anywhere(fd.as_fd(), size)?;
    // SAFETY: fresh mapping of `size >= MIN_LOG_SIZE` bytes, dropped after the view's use.
    let view = unsafe { LogView::new(m.ptr(), m.len()) };
    view.format_or_check(size)?;
    Ok(fd)
}

fn map_log(log_fd: BorrowedFd<'_>) -> Result<(Mapping, LogView), HeapError> {
    let size = fd_size(log_fd)?;
    if size < MIN_LOG_SIZE || size % 8 != 0 {
        return Err(HeapError::BadLog(format!("log memfd has {size} bytes")));
    }
    let m = Mapping::anywhere(log_fd, size)?;
    // SAFETY: live mapping of `size >= MIN_LOG_SIZE` bytes; the caller keeps `m` alive while
    // it uses the view (returned together).
    let view = unsafe { LogView::new(m.ptr(), size) };
    view.check(size)?;
    Ok((m, view))
}

/// Reads a log's header (state, record count, batch descriptor) without changing anything.
///
/// # Errors
/// [`HeapError::BadLog`] if the memfd is not a log; system errors.
pub fn read_log(log_fd: BorrowedFd<'_>) -> Result<LogSnapshot, HeapError> {
    let (m, view) = map_log(log_fd)?;
    Ok(view.snapshot(m.len()))
}

/// What [`recover`] found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// The log state before recovery.
    pub prior: TxState,
    /// When `prior` is `Committed`: the requests whose replies are written and must be
    /// published. Empty otherwise (every TAKEN slot is then re-run or failed by policy).
    pub batch: Vec<BatchEntry>,
    /// When `prior` is `Active`: the requests the rolled-back transaction was serving, as its
    /// batch descriptor names them — the ones the fault may be charged to; a request the
    /// incarnation had taken but not begun (waiting in its backlog) is not among them. Empty
    /// otherwise, and when the transaction's descriptor is empty (a nested sub-transaction:
    /// its call is not in it). If the incarnation died inside `begin`, between the state store
    /// and the descriptor's reset, these are the previous transaction's entries: requests
    /// already answered (no TAKEN slot matches them), or all of the TAKEN ones (an in-place
    /// abort's requests waiting to re-run alone) — never a wrong subset.
    pub running: Vec<BatchEntry>,
    /// What was undone (zero unless `prior` was `Active`).
    pub undone: RollbackCount,
    /// The server killed itself because a page capture found the log full.
    pub overflow: bool,
}

impl Recovery {
    /// The log state after recovery (`Active(t)` became `Aborted(t)`).
    pub fn after(&self) -> TxState {
        match self.prior {
            TxState::Active(t) => TxState::Aborted(t),
            s => s,
        }
    }
}

/// Recovers a server's heap after its incarnation died (or is confirmed stopped): if the log
/// says `ACTIVE(t)`, applies the undo records in reverse (the heap becomes exactly what it was
/// before `t`) and marks the log `ABORTED(t)`; otherwise changes nothing.
///
/// Idempotent: if the kernel itself dies during recovery, calling it again gives the same heap.
///
/// The caller must guarantee that no process writes the heap or the log meanwhile (the
/// incarnation is dead or stopped, and no new one is attached yet).
///
/// # Errors
/// [`HeapError::BadLog`] if the log (or a record in it) is invalid — recovery then writes
/// nothing beyond records already checked, and the heap should be treated as lost; system errors.
pub fn recover(heap_fd: BorrowedFd<'_>, log_fd: BorrowedFd<'_>) -> Result<Recovery, HeapError> {
    let (lm, view) = map_log(log_fd)?;
    let snap = view.snapshot(lm.len());
    let mut undone = RollbackCount::default();
    if let TxState::Active(t) = snap.state {
        let hsize = fd_size(heap_fd)?;
        if hsize < MIN_HEAP_SIZE {
            return Err(HeapError::BadHeap(format!("heap memfd has {hsize} bytes")));
        }
        let hm = Mapping::anywhere(heap_fd, hsize)?;
        // SAFETY: hm is a fresh mapping of the whole heap that no Rust reference points into;
        // the caller guarantees no other writer (documented precondition); records are checked
        // against both sizes before use.
        undone = unsafe { view.rollback(0, 0, snap.records, hm.ptr(), hsize, usize::MAX)? };
        view.set_state(TxState::Aborted(t));
        drop(hm);
    }
    // The batch descriptor is meaningful only once committed; in any other state it may be
    // the previous transaction's, not yet cleared.
    let (batch, running) = match snap.state {
        TxState::Committed(_) => (snap.batch, Vec::new()),
        TxState::Active(_) => (Vec::new(), snap.batch),
        _ => (Vec::new(), Vec::new()),
    };
    Ok(Recovery {
        prior: snap.state,
        batch,
        running,
        undone,
        overflow: snap.overflow,
    })
}

/// Commits a dead participant's prepared transaction: if the log says `ACTIVE(t)`, it becomes
/// `COMMITTED(t)` and the heap keeps every update (the root of `t` committed: ARCHITECTURE.md
/// §13). Returns `t`, or `None` when the log was not active (nothing changed).
///
/// The caller must guarantee, as for [`recover`], that no process writes the log meanwhile.
///
/// # Errors
/// [`HeapError::BadLog`] if the memfd is not a log; system errors.
pub fn commit_prepared(log_fd: BorrowedFd<'_>) -> Result<Option<u64>, HeapError> {
    let (_lm, view) = map_log(log_fd)?;
    match view.state() {
        TxState::Active(t) => {
            view.set_state(TxState::Committed(t));
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

/// Copies the whole heap out (for tests and tools: compare heaps byte for byte).
///
/// # Errors
/// System errors.
pub fn heap_bytes(heap_fd: BorrowedFd<'_>) -> Result<Vec<u8>, HeapError> {
    let size = fd_size(heap_fd)?;
    let m = Mapping::anywhere(heap_fd, size)?;
    let mut v = vec![0u8; size];
    // SAFETY: m maps `size` readable bytes; the copy reads them once.
    unsafe { std::ptr::copy_nonoverlapping(m.ptr(), v.as_mut_ptr(), size) };
    Ok(v)
}

/// Whether the heap memfd has been formatted.
///
/// # Errors
/// System errors.
pub fn heap_is_formatted(heap_fd: BorrowedFd<'_>) -> Result<bool, HeapError> {
    let size = fd_size(heap_fd)?;
    if size < 8 {
        return Ok(false);
    }
    let m = Mapping::anywhere(heap_fd, size.min(4096))?;
    // SAFETY: at least 8 mapped bytes.
    let magic = unsafe { m.ptr().cast::<u64>().read_volatile() };
    Ok(magic == HEAP_MAGIC)
}

/// Test hook: applies only the last `max` undo records of an `ACTIVE` transaction, in reverse,
/// and leaves the log `ACTIVE` — the heap as a recovery that died midway leaves it.
///
/// # Errors
/// As [`recover`].
#[doc(hidden)]
pub fn rollback_partial(
    heap_fd: BorrowedFd<'_>,
    log_fd: BorrowedFd<'_>,
    max: usize,
) -> Result<RollbackCount, HeapError> {
    let (_lm, view) = map_log(log_fd)?;
    if !matches!(view.state(), TxState::Active(_)) {
        return Ok(RollbackCount::default());
    }
    let hsize = fd_size(heap_fd)?;
    let hm = Mapping::anywhere(heap_fd, hsize)?;
    // SAFETY: as in `recover`.
    unsafe { view.rollback(0, 0, view.nrec(), hm.ptr(), hsize, max) }
}
