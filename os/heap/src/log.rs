//! The undo log: layout, the writer (server side) and the reader (kernel side).
//!
//! # Layout (little-endian, in its own memfd)
//!
//! ```text
//! offset 0     LogHeader (1088 bytes, padded to one page)
//!   magic: u64 "TXIPCLG1"   version: u32   flags: u32 (OVERFLOW)   size: u64
//!   state: u64   (kind << 62) | txid      kind: 0 IDLE, 1 ACTIVE, 2 COMMITTED, 3 ABORTED
//!   nrec: u64    number of published records
//!   nbatch: u64  number of published batch entries
//!   batch[64]:   { chan: u32, slot: u32, seq: u64 }
//!   root_server: u64  (server index + 1) of the root transaction's coordinator; 0: this
//!                     transaction is its own root
//!   root_txid: u64    the root transaction's id (meaningful only when root_server != 0)
//!   prepared: u64     replies this (sub-)transaction already published before its commit
//! offset 4096  records, back to back, each 8-aligned:
//!   { heap_off: u64, len: u32, kind: u32 }  then `len` bytes of pre-image (PREIMAGE) or
//!   nothing (ZERO: "these bytes were zero"), padded to 8
//! ```
//!
//! # Protocol: who writes what, when
//!
//! | field | written by | when |
//! | --- | --- | --- |
//! | magic, version, size | creator (kernel or first attach) | once, before anyone else maps the log |
//! | state | server: begin (ACTIVE), commit (COMMITTED), in-place abort (ABORTED); kernel: recovery (ABORTED) | the server only while alive; the kernel only once the server is dead or stopped |
//! | nrec, records | server, between begin and the end of the transaction | a record's bytes before `nrec` counts it (release) |
//! | nbatch, batch | server, between begin and commit | an entry's fields before `nbatch` counts it (release) |
//! | root_server, root_txid | server, in `begin` | before the state becomes ACTIVE: read only while ACTIVE |
//! | prepared | server, while ACTIVE | raised before each reply published ahead of the commit (nested calls) |
//!
//! The crash-consistency argument is in ARCHITECTURE.md §5.1.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, compiler_fence};

use serde::{Deserialize, Serialize};

use crate::HeapError;

/// Magic number at the start of every undo log.
pub const LOG_MAGIC: u64 = u64::from_le_bytes(*b"TXIPCLG1");
/// Version of the log layout.
pub const LOG_VERSION: u32 = 1;
/// Capacity of the batch descriptor.
pub const MAX_BATCH: usize = 64;
/// Offset of the record area in the log memfd.
pub const LOG_AREA_OFFSET: usize = 4096;
/// Smallest useful log memfd.
pub const MIN_LOG_SIZE: usize = 2 * LOG_AREA_OFFSET;

pub(crate) const REC_HDR: usize = 16;
const KIND_PREIMAGE: u32 = 0x5245_4301;
const KIND_ZERO: u32 = 0x5245_4302;
/// Header flag: a page-tracking capture found the log full and the incarnation killed itself
/// (the faulting page was never modified).
pub const FLAG_OVERFLOW: u32 = 1;

/// Transaction state recorded in the log header. The commit point is the single atomic store
/// that turns `Active(t)` into `Committed(t)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxState {
    /// No transaction since the log was created.
    Idle,
    /// Transaction `txid` is running (or its server died while running it).
    Active(u64),
    /// Transaction `txid` committed: its updates and replies stand.
    Committed(u64),
    /// Transaction `txid` was rolled back (in place by the server, or by recovery).
    Aborted(u64),
}

/// Largest transaction id (62 bits; two bits hold the state).
pub const MAX_TXID: u64 = (1 << 62) - 1;

impl TxState {
    /// Packs into the header word.
    #[inline]
    pub fn pack(self) -> u64 {
        match self {
            TxState::Idle => 0,
            TxState::Active(t) => (1 << 62) | (t & MAX_TXID),
            TxState::Committed(t) => (2 << 62) | (t & MAX_TXID),
            TxState::Aborted(t) => (3 << 62) | (t & MAX_TXID),
        }
    }

    /// Unpacks a header word (every word is some state).
    pub fn unpack(w: u64) -> TxState {
        let t = w & MAX_TXID;
        match w >> 62 {
            0 => TxState::Idle,
            1 => TxState::Active(t),
            2 => TxState::Committed(t),
            _ => TxState::Aborted(t),
        }
    }

    /// The transaction id, if any.
    pub fn txid(self) -> Option<u64> {
        match self {
            TxState::Idle => None,
            TxState::Active(t) | TxState::Committed(t) | TxState::Aborted(t) => Some(t),
        }
    }
}

/// One request served by a transaction: which channel, which slot, which client sequence
/// number. Written by the server between begin and commit; read by the kernel after a commit to
/// learn which replies are already written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchEntry {
    /// Channel index (kernel-assigned).
    pub chan: u32,
    /// Slot index in the channel.
    pub slot: u32,
    /// The client's sequence number of the request in that slot.
    pub seq: u64,
}

impl BatchEntry {
    /// Whether `list` names the request of sequence `seq` in `slot` of channel `chan` (the
    /// question every settling of TAKEN slots asks of a batch descriptor, kernel or spare).
    pub fn names(list: &[BatchEntry], chan: u32, slot: usize, seq: u64) -> bool {
        list.iter()
            .any(|b| b.chan == chan && b.slot as usize == slot && b.seq == seq)
    }
}

#[repr(C)]
struct BatchSlot {
    chan: AtomicU32,
    slot: AtomicU32,
    seq: AtomicU64,
}

#[repr(C)]
pub(crate) struct LogHeader {
    magic: AtomicU64,
    version: AtomicU32,
    flags: AtomicU32,
    size: AtomicU64,
    state: AtomicU64,
    nrec: AtomicU64,
    nbatch: AtomicU64,
    _reserved: [AtomicU64; 2],
    batch: [BatchSlot; MAX_BATCH],
    root_server: AtomicU64,
    root_txid: AtomicU64,
    prepared: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<LogHeader>() <= LOG_AREA_OFFSET);
const _: () = assert!(std::mem::size_of::<LogHeader>() == 64 + 16 * MAX_BATCH + 24);

/// The root of a nested transaction: the coordinator server (its index in the manifest) and
/// the root transaction's id in that server's log. Every sub-transaction of one client
/// request's call tree carries the same root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RootId {
    /// The coordinator's server index.
    pub server: u32,
    /// The root transaction's id in the coordinator's log.
    pub txid: u64,
}

/// What [`read_log`](crate::read_log) sees: the log header, copied out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSnapshot {
    /// Transaction state.
    pub state: TxState,
    /// Number of published undo records.
    pub records: u64,
    /// The batch descriptor, as published. Meaningful only when the state is `Committed`: in
    /// `Active` it may still be the previous transaction's (it is cleared just after begin).
    pub batch: Vec<BatchEntry>,
    /// The server overflowed the log from inside a page-tracking fault and killed itself.
    pub overflow: bool,
    /// Size of the log memfd.
    pub size: usize,
    /// The root this transaction belongs to when it is a participant of another server's
    /// transaction (a nested call); `None` when it is its own root. Meaningful only while
    /// `state` is `Active`.
    pub root: Option<RootId>,
    /// Replies the transaction published before its commit (a participant's prepared
    /// replies). Meaningful only while `state` is `Active`.
    pub prepared: u64,
}

/// A view of a mapped log: header plus record area. Does not own the mapping.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogView {
    pub(crate) hdr: *const LogHeader,
    pub(crate) area: *mut u8,
    pub(crate) cap: usize,
}

impl LogView {
    /// # Safety
    /// 1. `base..base+len` is a live read-write mapping of a log memfd for as long as the view
    ///    is used, 8-aligned (page-aligned in practice).
    /// 2. `len >= MIN_LOG_SIZE`.
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> LogView {
        LogView {
            hdr: base.cast(),
            // SAFETY: len >= MIN_LOG_SIZE > LOG_AREA_OFFSET (item 2).
            area: unsafe { base.add(LOG_AREA_OFFSET) },
            cap: len - LOG_AREA_OFFSET,
        }
    }

    #[inline]
    pub(crate) fn hdr(&self) -> &LogHeader {
        // SAFETY: the mapping is live (constructor's contract) and the header is all atomics,
        // so shared access from several processes is data-race free.
        unsafe { &*self.hdr }
    }

    /// Formats a zero-filled log, or validates an existing one.
    pub(crate) fn format_or_check(&self, size: usize) -> Result<(), HeapError> {
        let h = self.hdr();
        match h.magic.load(Ordering::Acquire) {
            0 => {
                h.version.store(LOG_VERSION, Ordering::Relaxed);
                h.size.store(size as u64, Ordering::Relaxed);
                h.state.store(TxState::Idle.pack(), Ordering::Relaxed);
                h.nrec.store(0, Ordering::Relaxed);
                h.nbatch.store(0, Ordering::Relaxed);
                h.magic.store(LOG_MAGIC, Ordering::Release);
                Ok(())
            }
            LOG_MAGIC => self.check(size),
            m => Err(HeapError::BadLog(format!("bad magic {m:#x}"))),
        }
    }

    pub(crate) fn check(&self, size: usize) -> Result<(), HeapError> {
        let h = self.hdr();
        let m = h.magic.load(Ordering::Acquire);
        if m != LOG_MAGIC {
            return Err(HeapError::BadLog(format!("bad magic {m:#x}")));
        }
        let v = h.version.load(Ordering::Relaxed);
        if v != LOG_VERSION {
            return Err(HeapError::BadLog(format!(
                "version {v}, this build reads {LOG_VERSION}"
            )));
        }
        let s = h.size.load(Ordering::Relaxed);
        if s != size as u64 {
            return Err(HeapError::BadLog(format!(
                "header says {s} bytes, memfd has {size}"
            )));
        }
        Ok(())
    }

    pub(crate) fn state(&self) -> TxState {
        TxState::unpack(self.hdr().state.load(Ordering::Acquire))
    }

    #[inline]
    pub(crate) fn set_state(&self, s: TxState) {
        // Every write to the heap made before this point is ordered before it: the compiler
        // fence keeps plain heap stores from sinking below the state store.
        compiler_fence(Ordering::SeqCst);
        self.hdr().state.store(s.pack(), Ordering::Release);
        compiler_fence(Ordering::SeqCst);
    }

    pub(crate) fn nrec(&self) -> u64 {
        self.hdr().nrec.load(Ordering::Acquire)
    }

    pub(crate) fn snapshot(&self, size: usize) -> LogSnapshot {
        let h = self.hdr();
        let n = (h.nbatch.load(Ordering::Acquire) as usize).min(MAX_BATCH);
        let batch = h.batch[..n]
            .iter()
            .map(|b| BatchEntry {
                chan: b.chan.load(Ordering::Relaxed),
                slot: b.slot.load(Ordering::Relaxed),
                seq: b.seq.load(Ordering::Relaxed),
            })
            .collect();
        LogSnapshot {
            state: self.state(),
            records: self.nrec(),
            batch,
            overflow: h.flags.load(Ordering::Relaxed) & FLAG_OVERFLOW != 0,
            size,
            root: match h.root_server.load(Ordering::Acquire) {
                0 => None,
                s => Some(RootId {
                    server: (s - 1) as u32,
                    txid: h.root_txid.load(Ordering::Relaxed),
                }),
            },
            prepared: h.prepared.load(Ordering::Acquire),
        }
    }

    /// Walks the published records from (`pos`, `first`) to `nrec`, checking every one against
    /// the area and the heap size, and returns them as owned, validated values: the rollback
    /// uses these and never reads a record's header from the log again (a log that changed
    /// after the walk cannot move a write).
    fn walk(
        &self,
        mut pos: usize,
        first: u64,
        nrec: u64,
        heap_len: usize,
    ) -> Result<Vec<UndoRecord>, HeapError> {
        let mut out = Vec::with_capacity((nrec.saturating_sub(first)).min(1 << 20) as usize);
        for i in first..nrec {
            if pos > self.cap || self.cap - pos < REC_HDR {
                return Err(HeapError::BadLog(format!(
                    "record {i} header at {pos} past the log end ({})",
                    self.cap
                )));
            }
            // SAFETY: pos + 16 <= cap (checked), the area is mapped (constructor), records are
            // 8-aligned by construction of `pos`. Read unaligned anyway: the bytes are an
            // allegation from another process. Read once: only the copies are used.
            let (off, len, kind) = unsafe {
                let p = self.area.add(pos);
                (
                    p.cast::<u64>().read_unaligned(),
                    p.add(8).cast::<u32>().read_unaligned() as usize,
                    p.add(12).cast::<u32>().read_unaligned(),
                )
            };
            let (payload, zero) = match kind {
                KIND_PREIMAGE => (round8(len), false),
                KIND_ZERO => (0, true),
                k => {
                    return Err(HeapError::BadLog(format!(
                        "record {i} at {pos}: unknown kind {k:#x}"
                    )));
                }
            };
            let off = usize::try_from(off).unwrap_or(usize::MAX);
            if off > heap_len || heap_len - off < len {
                return Err(HeapError::BadLog(format!(
                    "record {i}: heap range {off:#x}+{len} outside the heap ({heap_len:#x})"
                )));
            }
            if self.cap - pos - REC_HDR < payload {
                return Err(HeapError::BadLog(format!(
                    "record {i}: payload of {len} bytes past the log end"
                )));
            }
            out.push(UndoRecord {
                payload: pos + REC_HDR,
                off,
                len,
                zero,
            });
            pos += REC_HDR + payload;
        }
        Ok(out)
    }

    /// Applies the records `first..nrec` (starting at byte `pos`) to the heap in reverse order.
    /// Idempotent: running it again, from any intermediate heap state, gives the same heap.
    ///
    /// # Safety
    /// 1. `heap..heap+heap_len` is a live writable mapping of the heap this log belongs to.
    /// 2. No other thread or process writes the heap or the log meanwhile (the server is dead or
    ///    stopped, or this is the server itself undoing its own transaction).
    /// 3. No Rust reference to the heap bytes that are restored is live across the call, except
    ///    through `UnsafeCell` (the in-place abort consumes the transaction).
    pub(crate) unsafe fn rollback(
        &self,
        pos: usize,
        first: u64,
        nrec: u64,
        heap: *mut u8,
        heap_len: usize,
        max_apply: usize,
    ) -> Result<RollbackCount, HeapError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.rollback_hooked(pos, first, nrec, heap, heap_len, max_apply, || {}) }
    }

    /// [`Self::rollback`], with `between` run after the records were walked and validated and
    /// before any is applied (tests: a log that changes in between).
    ///
    /// # Safety
    /// As [`Self::rollback`]; `between` may write the log (not the heap).
    #[allow(clippy::too_many_arguments)]
    unsafe fn rollback_hooked(
        &self,
        pos: usize,
        first: u64,
        nrec: u64,
        heap: *mut u8,
        heap_len: usize,
        max_apply: usize,
        between: impl FnOnce(),
    ) -> Result<RollbackCount, HeapError> {
        let recs = self.walk(pos, first, nrec, heap_len)?;
        between();
        let mut bytes = 0usize;
        let mut applied = 0u64;
        for r in recs.iter().rev().take(max_apply) {
            applied += 1;
            // SAFETY: `walk` checked that the payload lies inside the area and that
            // `off..off+len` lies inside the heap, and these are its owned copies (a later
            // change of the log cannot move the write); items 1–2 make the writes race-free.
            // The payload bytes are copied as they are: any bytes are a valid pre-image.
            unsafe {
                let dst = heap.add(r.off);
                if r.zero {
                    std::ptr::write_bytes(dst, 0, r.len);
                } else {
                    std::ptr::copy_nonoverlapping(self.area.add(r.payload), dst, r.len);
                }
            }
            bytes += r.len;
        }
        compiler_fence(Ordering::SeqCst);
        Ok(RollbackCount {
            records: applied,
            bytes: bytes as u64,
        })
    }
}

/// One undo record as [`LogView::walk`] validated it: where its payload is in the area, and
/// the heap range it restores (inside the heap).
#[derive(Clone, Copy, Debug)]
struct UndoRecord {
    payload: usize,
    off: usize,
    len: usize,
    zero: bool,
}

/// How much a rollback restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackCount {
    /// Undo records applied.
    pub records: u64,
    /// Heap bytes restored.
    pub bytes: u64,
}

#[inline]
pub(crate) const fn round8(n: usize) -> usize {
    (n + 7) & !7
}

/// The server-side appender. Lives in a `Box` owned by the heap so that the page-tracking
/// sink can reach it through a stable pointer.
#[derive(Debug)]
pub(crate) struct LogWriter {
    pub(crate) view: LogView,
    /// Bytes of the area used by published records.
    pub(crate) used: usize,
    /// Published records.
    pub(crate) nrec: u64,
    /// Serialises appends from the page-tracking sink (which may run on any thread).
    pub(crate) lock: AtomicBool,
    /// Test hook: appends fail with `LogFull` once this many records exist (a simulated crash
    /// point); `u64::MAX` normally.
    pub(crate) limit: u64,
    /// A transaction opened lazily ([`LogWriter::begin_deferred`]) and not yet written to:
    /// its txid and root. Nothing of it is in the shared header yet; the first record (or a
    /// prepared reply, or [`LogWriter::activate`]) writes the header as [`LogWriter::begin`]
    /// does, then the batch entries held in `pending_batch`.
    pub(crate) pending: Option<(u64, Option<RootId>)>,
    /// The batch entries of the `pending` transaction (private memory).
    pub(crate) pending_batch: [BatchEntry; MAX_BATCH],
    /// How many of `pending_batch` are used.
    pub(crate) pending_n: usize,
}

impl LogWriter {
    /// A writer for `view`, with no transaction open.
    pub(crate) fn new(view: LogView) -> LogWriter {
        LogWriter {
            view,
            used: 0,
            nrec: 0,
            lock: AtomicBool::new(false),
            limit: u64::MAX,
            pending: None,
            pending_batch: [BatchEntry {
                chan: 0,
                slot: 0,
                seq: 0,
            }; MAX_BATCH],
            pending_n: 0,
        }
    }

    /// Opens transaction `txid`. The order matters (ARCHITECTURE.md §5.1): the record count is
    /// cleared while the header still says COMMITTED/ABORTED/IDLE (where records mean nothing),
    /// then the state becomes ACTIVE (zero records: nothing to undo), and only then is the batch
    /// descriptor cleared — clearing it first would let a crash show COMMITTED(prev) with an
    /// empty batch, and the kernel would re-run requests that prev already answered.
    ///
    /// The root (nested transactions) is written while the state still says the previous
    /// transaction ended, so a reader that sees ACTIVE(txid) sees this transaction's root.
    #[inline]
    pub(crate) fn begin(&mut self, txid: u64, root: Option<RootId>) {
        self.limit = u64::MAX;
        self.used = 0;
        self.nrec = 0;
        let h = self.view.hdr();
        h.nrec.store(0, Ordering::Release);
        h.prepared.store(0, Ordering::Relaxed);
        h.root_txid
            .store(root.map_or(0, |r| r.txid), Ordering::Relaxed);
        h.root_server.store(
            root.map_or(0, |r| u64::from(r.server) + 1),
            Ordering::Release,
        );
        self.view.set_state(TxState::Active(txid));
        h.nbatch.store(0, Ordering::Release);
        compiler_fence(Ordering::SeqCst);
    }

    /// Opens transaction `txid` lazily (ARCHITECTURE.md §5, "A transaction that writes
    /// nothing"): only private state changes. The shared header keeps saying how the previous
    /// transaction ended, with its batch, until [`LogWriter::activate`] runs — at the first
    /// record, at a prepared reply, or when the caller asks (before a nested call). A
    /// transaction that never activates leaves the log exactly as it found it, which is what a
    /// crash anywhere in it leaves too: the heap was not written.
    #[inline]
    pub(crate) fn begin_deferred(&mut self, txid: u64, root: Option<RootId>) {
        self.limit = u64::MAX;
        self.used = 0;
        self.nrec = 0;
        self.pending = Some((txid, root));
        self.pending_n = 0;
    }

    /// Writes the header of a deferred transaction ([`LogWriter::begin`]), then its batch
    /// entries; nothing if the transaction is active already.
    #[inline]
    pub(crate) fn activate(&mut self) {
        if let Some((txid, root)) = self.pending.take() {
            self.activate_slow(txid, root);
        }
    }

    #[cold]
    #[inline(never)]
    fn activate_slow(&mut self, txid: u64, root: Option<RootId>) {
        let (used, nrec, limit) = (self.used, self.nrec, self.limit);
        self.begin(txid, root);
        self.limit = limit;
        debug_assert!(
            used == 0 && nrec == 0,
            "a deferred transaction wrote no record"
        );
        for k in 0..self.pending_n {
            let e = self.pending_batch[k];
            // Cannot fail: pending_n <= MAX_BATCH (checked when each entry was added).
            let _ = self.add_batch(e);
        }
        self.pending_n = 0;
    }

    /// Ends a transaction that never activated: nothing to write.
    #[inline]
    pub(crate) fn end_deferred(&mut self) -> bool {
        self.pending_n = 0;
        self.pending.take().is_some()
    }

    pub(crate) fn truncate(&mut self, used: usize, nrec: u64) {
        self.used = used;
        self.nrec = nrec;
        if self.pending.is_some() {
            return;
        }
        self.view.hdr().nrec.store(nrec, Ordering::Release);
        compiler_fence(Ordering::SeqCst);
    }

    #[inline]
    fn reserve(&mut self, need: usize) -> Result<*mut u8, HeapError> {
        self.activate();
        if self.view.cap - self.used < need || self.nrec >= self.limit {
            return Err(HeapError::LogFull {
                requested: need,
                free: self.view.cap - self.used,
            });
        }
        // SAFETY: used + need <= cap, inside the mapped area.
        Ok(unsafe { self.view.area.add(self.used) })
    }

    #[inline]
    fn publish(&mut self, need: usize) {
        self.used += need;
        self.nrec += 1;
        // Release: the record's bytes are visible before the count that covers them.
        self.view.hdr().nrec.store(self.nrec, Ordering::Release);
        // And the caller's heap write that follows must not be hoisted above the count.
        compiler_fence(Ordering::SeqCst);
    }

    /// Appends a pre-image record of `len` bytes at heap offset `off`, copied from `src`.
    ///
    /// # Safety
    /// `src..src+len` is readable, and is the heap's copy of `off..off+len`.
    #[inline]
    pub(crate) unsafe fn append(
        &mut self,
        off: usize,
        src: *const u8,
        len: usize,
    ) -> Result<(), HeapError> {
        let len32 = u32::try_from(len).map_err(|_| HeapError::Invalid("undo record > 4 GiB"))?;
        let need = REC_HDR + round8(len);
        let p = self.reserve(need)?;
        // SAFETY: `p..p+need` is inside the log area (reserve); `src` is readable (contract);
        // the log and the heap are different mappings, so the copy does not overlap.
        unsafe {
            p.cast::<u64>().write(off as u64);
            p.add(8).cast::<u32>().write(len32);
            p.add(12).cast::<u32>().write(KIND_PREIMAGE);
            std::ptr::copy_nonoverlapping(src, p.add(REC_HDR), len);
        }
        self.publish(need);
        Ok(())
    }

    /// Appends a record saying heap bytes `off..off+len` were zero.
    #[inline]
    pub(crate) fn append_zero(&mut self, off: usize, len: usize) -> Result<(), HeapError> {
        let len32 = u32::try_from(len).map_err(|_| HeapError::Invalid("undo record > 4 GiB"))?;
        let p = self.reserve(REC_HDR)?;
        // SAFETY: `p..p+16` is inside the log area (reserve).
        unsafe {
            p.cast::<u64>().write(off as u64);
            p.add(8).cast::<u32>().write(len32);
            p.add(12).cast::<u32>().write(KIND_ZERO);
        }
        self.publish(REC_HDR);
        Ok(())
    }

    #[inline]
    pub(crate) fn add_batch(&mut self, e: BatchEntry) -> Result<(), HeapError> {
        if self.pending.is_some() {
            if self.pending_n >= MAX_BATCH {
                return Err(HeapError::BatchFull { max: MAX_BATCH });
            }
            self.pending_batch[self.pending_n] = e;
            self.pending_n += 1;
            return Ok(());
        }
        let h = self.view.hdr();
        let n = h.nbatch.load(Ordering::Relaxed) as usize;
        if n >= MAX_BATCH {
            return Err(HeapError::BatchFull { max: MAX_BATCH });
        }
        h.batch[n].chan.store(e.chan, Ordering::Relaxed);
        h.batch[n].slot.store(e.slot, Ordering::Relaxed);
        h.batch[n].seq.store(e.seq, Ordering::Relaxed);
        h.nbatch.store(n as u64 + 1, Ordering::Release);
        Ok(())
    }

    /// Counts one more reply published before the commit (release: before the reply).
    #[inline]
    pub(crate) fn add_prepared(&mut self) {
        self.activate();
        let h = self.view.hdr();
        let n = h.prepared.load(Ordering::Relaxed);
        h.prepared.store(n + 1, Ordering::Release);
        compiler_fence(Ordering::SeqCst);
    }

    pub(crate) fn set_overflow(&self) {
        self.view
            .hdr()
            .flags
            .fetch_or(FLAG_OVERFLOW, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 7, defect 7: the undo log is validated once into owned values, and the rollback
    /// uses only those. A log rewritten between the walk and the rollback (a record's heap
    /// offset moved elsewhere in the heap, its kind turned into ZERO) changes nothing: the
    /// validated record is applied where it said, with its pre-image.
    #[test]
    fn a_log_changed_after_its_walk_cannot_move_the_rollback() {
        let mut log = vec![0u64; MIN_LOG_SIZE / 8];
        let mut heap = vec![0xAAu8; 4096];
        let base = log.as_mut_ptr().cast::<u8>();
        // SAFETY: `log` is MIN_LOG_SIZE bytes, 8-aligned, alive for the whole test, and only
        // accessed through the view (and the raw writes below).
        let view = unsafe { LogView::new(base, MIN_LOG_SIZE) };
        view.format_or_check(MIN_LOG_SIZE).unwrap();
        let mut w = LogWriter::new(view);
        w.begin(1, None);
        let pre = [7u8; 16];
        // SAFETY: `pre` is readable for 16 bytes.
        unsafe { w.append(100, pre.as_ptr(), 16).unwrap() };
        let nrec = view.nrec();
        let rec = view.area;
        // SAFETY: `heap` is 4096 writable bytes; the hook writes only the log's first record
        // header, inside the area; nothing else touches either buffer meanwhile.
        let n = unsafe {
            view.rollback_hooked(
                0,
                0,
                nrec,
                heap.as_mut_ptr(),
                heap.len(),
                usize::MAX,
                || {
                    rec.cast::<u64>().write_unaligned(2000);
                    rec.add(12).cast::<u32>().write_unaligned(KIND_ZERO);
                },
            )
        }
        .unwrap();
        assert_eq!(n.records, 1);
        assert_eq!(
            &heap[100..116],
            &[7u8; 16],
            "restored where the walk validated"
        );
        assert!(
            heap[2000..2016].iter().all(|&b| b == 0xAA),
            "nothing written where the changed log now points"
        );
        // The walk itself refuses a record outside the heap.
        // SAFETY: as above (the header now says offset 5000 > 4096).
        unsafe { rec.cast::<u64>().write_unaligned(5000) };
        // SAFETY: as above.
        let bad = unsafe { view.rollback(0, 0, nrec, heap.as_mut_ptr(), heap.len(), usize::MAX) };
        assert!(matches!(bad, Err(HeapError::BadLog(_))));
    }
}
