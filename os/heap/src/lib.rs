//! The recoverable heap: a server's state in shared memory, changed only inside transactions
//! whose undo log another process (the kernel) can apply if the server dies.
//!
//! # What it is for
//!
//! Under the TxIPC policy every request a server handles is a transaction over the server's
//! state (ARCHITECTURE.md §5). That state lives here:
//!
//! * a **heap**: a memfd mapped at the same fixed address in every incarnation
//!   ([`Heap::attach`]), with a header, a root object ([`Heap::root_or_init`]) and a
//!   transactional allocator whose metadata is in the heap;
//! * an **undo log**: a second memfd holding the transaction state (`IDLE / ACTIVE(t) /
//!   COMMITTED(t) / ABORTED(t)` in one atomic word — the commit point is one store), the batch
//!   descriptor of the requests the transaction answers, and the pre-images of every byte range
//!   the transaction changed;
//! * **typed tracking**: persistent data ([`Persistent`], `#[derive(Persistent)]`) is reached
//!   by shared reference and changed only by methods that log first ([`PCell`], [`PVec`],
//!   [`PHashMap`], [`PBTreeMap`], [`PBytes`], [`PBuf`]);
//! * **page tracking** ([`Tracking::Page`]): pages are write-protected at begin and their
//!   pre-image logged on first write (via `txipc-pagetrack`), so unmodified allocator-aware
//!   collections ([`HeapAlloc`], `hashbrown`) can live in the heap;
//! * the **kernel side** ([`recover`], [`read_log`], [`create_heap_memfd`],
//!   [`create_log_memfd`]), which maps the memfds anywhere and uses only offsets.
//!
//! # Design principles
//!
//! 1. **Log before write.** No heap byte changes before its pre-image is a published record
//!    (record bytes, then the record count with release order, then the heap write). A reader
//!    that finds the server dead at any instruction sees a log that restores the heap exactly.
//! 2. **Rollback is idempotent** and uses offsets only: apply the records in reverse; do it
//!    again after a crash during recovery and get the same heap.
//! 3. **Nothing untracked by construction.** No `&mut` into the heap escapes under typed
//!    tracking; reads borrow the transaction (`&Tx`), structural changes need `&mut Tx`, so no
//!    reference outlives the object it points to. `unsafe` lives in this crate only, each block
//!    argued.
//! 4. **Failure is an error, not a crash.** A full heap, a full log or a full batch descriptor
//!    is a [`HeapError`]; the handler can [`Tx::abort`] or [`Tx::rollback_to`] a savepoint and
//!    fail the request cleanly.
//! 5. **Bytes from another process are an allegation.** The kernel side checks every record
//!    against the log and heap sizes before it writes a byte.
//!
//! # Example
//!
//! ```
//! use txipc_heap::{Heap, PBTreeMap, PBytes, PCell, Persistent, Tracking};
//!
//! #[derive(Persistent)]
//! #[repr(C)]
//! struct KvRoot {
//!     map: PBTreeMap<PBytes, PBytes>,
//!     puts: PCell<u64>,
//! }
//!
//! let heap_fd = txipc_heap::create_heap_memfd("kv-heap", 1 << 20)?;
//! let log_fd = txipc_heap::create_log_memfd("kv-log", 1 << 20)?;
//! # let base = txipc_heap::default_base(7);
//! let heap = Heap::attach(&heap_fd, &log_fd, base, Tracking::Typed)?;
//! let root: &KvRoot = heap.root_or_init(|_tx| {
//!     Ok(KvRoot { map: PBTreeMap::new(), puts: PCell::new(0) })
//! })?;
//!
//! let mut tx = heap.begin(1)?;
//! root.map.insert(&mut tx, b"hello", b"world")?;
//! root.puts.update(&tx, |n| n + 1)?;
//! tx.commit()?;
//!
//! let tx = heap.begin(2)?;
//! assert_eq!(root.map.get(&tx, b"hello").map(|v| v.as_slice()), Some(&b"world"[..]));
//! tx.commit()?;
//! # Ok::<(), txipc_heap::HeapError>(())
//! ```
#![deny(clippy::undocumented_unsafe_blocks)]

// Lets `#[derive(Persistent)]` (which names `::txipc_heap`) work inside this crate.
extern crate self as txipc_heap;

mod alloc;
pub mod bench;
mod cell;
mod collections;
mod error;
mod hash;
mod heap;
mod layout;
mod log;
mod map;
mod page;
mod recover;
mod tracking;
mod txcore;

pub use alloc::{CLASS_SIZES, HeapStats, MAX_SMALL};
pub use cell::{PCell, Persistent};
pub use collections::btree::{PBTreeMap, Range};
pub use collections::buf::PBuf;
pub use collections::bytes::PBytes;
pub use collections::hashmap::PHashMap;
pub use collections::vec::PVec;
pub use collections::{PKey, PValue, StableHasher, stable_hash};
pub use error::HeapError;
pub use heap::{AttachKind, Heap, PageBackend, Savepoint, Tx};
pub use layout::{
    BASE_STRIDE, DEFAULT_BASE, HEAP_DATA_OFFSET, HEAP_MAGIC, HEAP_VERSION, MIN_HEAP_SIZE, NCLASS,
    PAGE, default_base,
};
pub use log::{
    BatchEntry, FLAG_OVERFLOW, LOG_AREA_OFFSET, LOG_MAGIC, LOG_VERSION, LogSnapshot, MAX_BATCH,
    MAX_TXID, MIN_LOG_SIZE, RollbackCount, RootId, TxState,
};
pub use page::{HeapAlloc, PageSafe, PageStats, StableState};
pub use recover::{
    Recovery, commit_prepared, create_heap_memfd, create_log_memfd, heap_bytes, heap_is_formatted,
    read_log, recover, rollback_partial,
};
pub use tracking::Tracking;
pub use txipc_heap_derive::Persistent;
