//! Interface of the key-value service: what clients of `kv` depend on.
//!
//! Keys and values are byte strings ([`Bytes`]: one length and one copy on the wire; the client
//! methods take anything that converts into it, `b"key"`, `&str`, `Vec<u8>`). Every method is one transaction on the server: under
//! policy `txipc` it happens exactly once, whatever instant the server dies at.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use txipc_service::service;
pub use txipc_service::{Bytes, BytesRef};

/// Largest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 48 * 1024;
/// Most entries one scan returns.
pub const MAX_SCAN: u32 = 1000;

/// Errors of the kv service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The key is longer than [`MAX_KEY`].
    #[error("key of {len} bytes is longer than the {MAX_KEY}-byte limit")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
    },
    /// The value is longer than [`MAX_VALUE`].
    #[error("value of {len} bytes is longer than the {MAX_VALUE}-byte limit")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
    },
    /// The server's heap is full; nothing was changed. Delete keys or give the server a larger
    /// `heap_mb` in the manifest.
    #[error("the server's heap is full ({detail}); nothing was changed")]
    Full {
        /// What the heap said.
        detail: String,
    },
    /// The value stored under the key is not an 8-byte little-endian counter.
    #[error("the value under this key is not a counter (8-byte little-endian integer)")]
    NotACounter,
    /// A counter would overflow.
    #[error("counter overflow")]
    Overflow,
}

/// The result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasOutcome {
    /// Whether the swap happened.
    pub swapped: bool,
    /// The value under the key after the call.
    pub current: Option<Bytes>,
}

/// Server statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStats {
    /// Keys stored.
    pub keys: u64,
    /// Heap bytes in use.
    pub heap_used: u64,
    /// Heap size.
    pub heap_size: u64,
    /// Requests that changed state, counted in the heap (so exactly once per committed request).
    pub updates: u64,
}

/// Entries of a scan, in key order.
pub type Entries = Vec<(Bytes, Bytes)>;

/// The key-value service.
#[service]
pub trait Kv {
    /// The value under `key`.
    #[readonly]
    fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError>;
    /// Stores `value` under `key`; returns the previous value.
    fn put(&mut self, key: Bytes, value: Bytes) -> Result<Option<Bytes>, KvError>;
    /// Removes `key`; returns the removed value.
    fn delete(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError>;
    /// If the value under `key` equals `expected` (`None`: absent), replaces it with `new`
    /// (`None`: delete).
    fn cas(
        &mut self,
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<CasOutcome, KvError>;
    /// Adds `delta` to the counter under `key` (absent counts as 0); returns the new value.
    fn incr(&mut self, key: Bytes, delta: i64) -> Result<i64, KvError>;
    /// Up to `limit` entries with keys `>= start`, in key order.
    #[readonly]
    fn scan(&mut self, start: Bytes, limit: u32) -> Result<Entries, KvError>;
    /// Statistics.
    #[readonly]
    fn stats(&mut self) -> KvStats;
}

pub mod model;

/// Decodes a counter value.
pub fn counter_value(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.try_into().ok()?))
}
