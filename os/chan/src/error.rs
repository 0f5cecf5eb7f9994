//! Errors of channel and doorbell operations.

use std::time::Duration;

use crate::layout::SlotState;

/// Why a channel or doorbell operation failed, and what the caller may do about it.
///
/// Variants fall into four families:
/// - *setup* (`Io`, `BadLayout`, `BadMagic`, `BadVersion`, `TooSmall`, `NotSealed`): the fd or
///   the layout is unusable; nothing was sent.
/// - *the channel is gone* (`Dead`, `Revoked`): no call on this channel will succeed again.
/// - *this call* (`RequestTooLarge`, `Timeout`): see each variant for whether the request may
///   have run.
/// - *the peer broke the protocol* (`Protocol`, `BadStatus`, `BadSlot`, `WrongState`,
///   `ReplyTooLarge`): the other side wrote something the protocol forbids. Never undefined
///   behaviour, only this error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChanError {
    /// A system call failed (memfd_create, ftruncate, mmap, fcntl, fstat).
    #[error("system call failed: {0}")]
    Io(#[from] rustix::io::Errno),
    /// The requested or mapped layout is outside the supported limits.
    #[error("invalid channel layout: {0}")]
    BadLayout(&'static str),
    /// The memfd does not start with the expected magic number.
    #[error("not a txipc {what}: bad magic {found:#018x}")]
    BadMagic {
        /// `"channel"` or `"doorbell"`.
        what: &'static str,
        /// The value found.
        found: u64,
    },
    /// The memfd has a layout version this build does not speak.
    #[error("unsupported {what} version {found} (this build speaks {expected})")]
    BadVersion {
        /// `"channel"` or `"doorbell"`.
        what: &'static str,
        /// The version found.
        found: u32,
        /// The version this build writes.
        expected: u32,
    },
    /// The memfd is smaller than the layout its header claims.
    #[error("{what} memfd too small: {actual} bytes, the layout needs {needed}")]
    TooSmall {
        /// `"channel"` or `"doorbell"`.
        what: &'static str,
        /// Size of the memfd.
        actual: u64,
        /// Size the layout needs.
        needed: u64,
    },
    /// The memfd may still be shrunk by a peer (which would turn our accesses into SIGBUS).
    #[error("{what} memfd is not sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed {
        /// `"channel"` or `"doorbell"`.
        what: &'static str,
    },
    /// The kernel marked the channel DEAD: its server is gone for good. Whether an in-flight
    /// request ran is unknown; no later call can succeed.
    #[error("the server is gone for good (channel marked dead)")]
    Dead,
    /// The kernel revoked this channel's grant. No later call can succeed.
    #[error("the channel's grant was revoked")]
    Revoked,
    /// The request does not fit the channel's request area. Nothing was sent.
    #[error("request of {len} bytes exceeds the channel's request capacity of {cap}")]
    RequestTooLarge {
        /// Request length.
        len: usize,
        /// The channel's `req_cap`.
        cap: usize,
    },
    /// A reply does not fit the reply area (server side), or a reply length written by the
    /// server exceeds it (client side).
    #[error("reply of {len} bytes exceeds the channel's reply capacity of {cap}")]
    ReplyTooLarge {
        /// Reply length.
        len: usize,
        /// The channel's `reply_cap`.
        cap: usize,
    },
    /// The call's timeout expired.
    ///
    /// `retracted == true`: the request was withdrawn before any server took it; it never ran
    /// and is safe to retry. `retracted == false`: a server had taken it; it may complete later
    /// (its reply is then discarded and the slot reused).
    #[error("call timed out after {after:?} (retracted: {retracted})")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
        /// Whether the request was withdrawn unexecuted.
        retracted: bool,
    },
    /// A slot index outside the channel.
    #[error("slot index {0} is outside the channel")]
    BadSlot(usize),
    /// The slot is not in the state the operation requires (e.g. `publish` on a slot that is not
    /// TAKEN): someone else changed it.
    #[error("slot {slot} is in state {found:?}, not the one this operation needs")]
    WrongState {
        /// Slot index.
        slot: usize,
        /// The state found.
        found: SlotState,
    },
    /// The peer wrote something the slot protocol forbids.
    #[error("the peer broke the slot protocol: {0}")]
    Protocol(&'static str),
    /// The reply carries a status value this build does not know.
    #[error("reply carries unknown status value {0}")]
    BadStatus(u32),
}
