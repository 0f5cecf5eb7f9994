//! The error type of every heap operation.

/// What went wrong in a heap, log, allocator or recovery operation.
///
/// Errors a request handler can meet mid-transaction ([`HeapError::Full`],
/// [`HeapError::LogFull`]) leave the transaction open and consistent: the handler may
/// [`Tx::abort`](crate::Tx::abort) or [`Tx::rollback_to`](crate::Tx::rollback_to) a savepoint
/// and answer the request with an error. Nothing in this crate panics on a full heap or log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeapError {
    /// The allocator has no block of the requested size. Abort the transaction (or roll back to
    /// a savepoint) and fail the request; the heap is intact.
    #[error(
        "heap full: requested {requested} bytes, {free} bytes free (largest pieces may be smaller)"
    )]
    Full {
        /// Bytes requested (after rounding to the size class or page).
        requested: usize,
        /// Bytes free in total (pristine area plus free lists).
        free: usize,
    },
    /// The undo log has no room for the next record. The write did not happen; abort the
    /// transaction and fail the request, or make the log memfd larger.
    #[error("undo log full: a record of {requested} bytes does not fit, {free} bytes left")]
    LogFull {
        /// Bytes the record needed (header included).
        requested: usize,
        /// Bytes left in the log's record area.
        free: usize,
    },
    /// The fixed address range is already mapped in this process (by another heap, a library,
    /// the stack...). Choose another base, or find who maps it (`/proc/self/maps`).
    #[error(
        "cannot map the heap at {base:#x}..{end:#x}: the range is already mapped in this process"
    )]
    AddressInUse {
        /// Requested start.
        base: usize,
        /// Requested end (exclusive).
        end: usize,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Sys {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The heap memfd does not hold a heap this build can use (magic, version, size or layout
    /// mismatch), or its metadata is inconsistent.
    #[error("invalid heap: {0}")]
    BadHeap(String),
    /// The undo-log memfd is not a valid log, or a record in it is out of bounds. Bytes from
    /// another process are an allegation: recovery refuses them rather than writing anywhere.
    #[error("invalid undo log: {0}")]
    BadLog(String),
    /// The heap was formatted for another fixed address; pointers inside it would be wrong here.
    #[error("heap was formatted for base {formatted:#x} but attached at {requested:#x}")]
    BaseMismatch {
        /// Base recorded in the heap header.
        formatted: usize,
        /// Base the caller asked for.
        requested: usize,
    },
    /// The root object in the heap is of another type than the one asked for.
    #[error("heap root is of another type (expected {expected})")]
    RootMismatch {
        /// Type the caller asked for.
        expected: &'static str,
    },
    /// A transaction is already open on this heap (one at a time).
    #[error("a transaction is already open on this heap")]
    TxOpen,
    /// A persistent object was used with a transaction of another heap, or lives outside any
    /// heap (e.g. a collection built on the stack and never moved into the heap).
    #[error("object at {addr:#x} is not inside this transaction's heap")]
    NotInHeap {
        /// Its address.
        addr: usize,
    },
    /// The batch descriptor already holds [`MAX_BATCH`](crate::MAX_BATCH) entries.
    #[error("batch descriptor full ({max} entries)")]
    BatchFull {
        /// Capacity.
        max: usize,
    },
    /// The operation is not available in this tracking mode.
    #[error("{what} is not supported with tracking {mode:?}")]
    Unsupported {
        /// What was attempted.
        what: &'static str,
        /// The heap's tracking mode.
        mode: crate::tracking::Tracking,
    },
    /// A caller error: bad size, alignment or index.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// Page tracking could not be installed or driven.
    #[error("page tracking: {0}")]
    PageTrack(#[from] txipc_pagetrack::TrackError),
}

impl HeapError {
    pub(crate) fn sys(op: &'static str, e: rustix::io::Errno) -> HeapError {
        HeapError::Sys {
            op,
            source: std::io::Error::from(e),
        }
    }
}
