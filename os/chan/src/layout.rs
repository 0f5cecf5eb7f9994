//! The channel's memory layout, slot states and status codes: pure data, no memory access.
//!
//! Everything here is plain arithmetic over a validated [`ChannelLayout`]; the offsets it
//! computes are the only ones the rest of the crate dereferences. ARCHITECTURE.md §4 is the
//! normative description; keep the two in step.

use serde::{Deserialize, Serialize};

use crate::ChanError;

/// `b"TXIPCCH1"` read as a little-endian `u64`: first word of every channel memfd.
pub const CHANNEL_MAGIC: u64 = u64::from_le_bytes(*b"TXIPCCH1");
/// Version of the channel layout written by this build.
pub const CHANNEL_VERSION: u32 = 4;
/// Most slots a channel may have.
pub const MAX_SLOTS: u32 = 1024;
/// Largest request or reply area of one slot (16 MiB).
pub const MAX_AREA: u32 = 16 << 20;
/// Largest total channel size (1 GiB).
pub const MAX_CHANNEL_BYTES: usize = 1 << 30;

/// Cache line size used for every block of the layout.
pub(crate) const LINE: usize = 64;
// The request and reply lines are exactly full: fields, then the inline message.
const _: () = assert!(ctl::ATTEMPT + 4 == ctl::INLINE_REQ);
const _: () = assert!(ctl::INLINE_REQ + INLINE_REQ_MAX == LINE);
const _: () = assert!(rep::ATTEMPT + 4 == rep::INLINE_REPLY);
const _: () = assert!(rep::INLINE_REPLY + INLINE_REPLY_MAX == LINE);

/// Page size the total is rounded to.
pub(crate) const PAGE: usize = 4096;

/// Size of the channel header: the read-mostly line and the bell line.
pub(crate) const HEADER: usize = 2 * LINE;

/// Byte offsets inside the channel header (read-mostly line at offset 0).
pub(crate) mod hdr {
    pub const MAGIC: usize = 0; // u64
    pub const VERSION: usize = 8; // u32
    pub const NSLOTS: usize = 12; // u32
    pub const REQ_CAP: usize = 16; // u32
    pub const REPLY_CAP: usize = 20; // u32
    pub const GENERATION: usize = 24; // AtomicU64
    pub const FLAGS: usize = 32; // AtomicU32
}

/// Byte offsets of the channel's bell line (offset 64): how this channel's client wakes the
/// server. Only this channel's client and its server (and the kernel) map it, so a client that
/// scribbles on it can only stop its own wake-ups.
pub(crate) mod bell {
    /// AtomicU32: a futex word the sleeping server waits on (with every other channel's and
    /// the doorbell's, in one `futex_waitv`); the client bumps it when it rings.
    pub const WORD: usize = 64;
    /// AtomicU32: 1 while the server is (about to be) asleep; server writes, client reads.
    pub const SERVER_SLEEPING: usize = 68;
    /// AtomicU32: CPU the server last ran on (spin hint for the client); server writes.
    pub const SERVER_CPU: usize = 72;
    /// AtomicU32: CPU the client last ran on (spin hint for the server); client writes.
    pub const CLIENT_CPU: usize = 76;
}

/// A CPU hint meaning "not known yet".
pub(crate) const NO_CPU: u32 = u32::MAX;

/// Byte offsets inside a slot's request line (the first of its two control lines): written by
/// the client, except the state transitions of the server and the kernel.
pub(crate) mod ctl {
    pub const STATE: usize = 0; // AtomicU32: the slot's state word (+ epoch)
    pub const REQ_LEN: usize = 4; // AtomicU32
    pub const SEQ: usize = 8; // AtomicU64
    pub const METHOD: usize = 16; // AtomicU32
    pub const ATTEMPT: usize = 20; // AtomicU32
    /// Requests of at most `INLINE_REQ_MAX` bytes live here instead of the request area.
    pub const INLINE_REQ: usize = 24;
}

/// Byte offsets inside a slot's reply line (the second control line, at +64): written by the
/// server (the kernel during recovery), read by the client, which writes only
/// `client_waiting`. The client waits on this line alone, so its polling never pulls the
/// request line away from the server.
pub(crate) mod rep {
    /// AtomicU32: the client's futex word. Holds the low 32 bits of the `seq` of the last
    /// published reply; a kernel kick (DEAD/REVOKED) stores another value.
    pub const DONE: usize = 0;
    pub const CLIENT_WAITING: usize = 4; // AtomicU32
    pub const STATUS: usize = 8; // AtomicU32
    pub const REPLY_LEN: usize = 12; // AtomicU32
    /// AtomicU32: copy of the request's `attempt` when it was answered.
    pub const ATTEMPT: usize = 16;
    /// Replies of at most `INLINE_REPLY_MAX` bytes live here instead of the reply area.
    pub const INLINE_REPLY: usize = 20;
}

/// Requests up to this many bytes travel inside the slot's request line (no extra cache-line
/// transfer); longer ones in the slot's request area.
pub const INLINE_REQ_MAX: usize = 40;
/// Replies up to this many bytes travel inside the slot's reply line.
pub const INLINE_REPLY_MAX: usize = 44;

/// Bytes of one slot's control block: the request line, a gap, the reply line, a gap. The two
/// lines sit in different 128-byte pairs, because the adjacent-line prefetcher of x86 cores
/// fetches a line's 128-byte buddy: a client polling a reply line whose buddy is the request
/// line could pull the request line away from the server as it polls (the reason
/// crossbeam's `CachePadded` pads to 128 bytes on x86-64). Not measured to matter here: on
/// the shared project machine the two layouts were within noise.
pub(crate) const SLOT_CTL: usize = 4 * LINE;
/// Offset of a slot's reply line from its request line.
pub(crate) const REPLY_LINE: usize = 2 * LINE;

/// Channel header flag: the server is gone for good; every waiting client gets
/// [`ChanError::Dead`].
pub const FLAG_DEAD: u32 = 1;
/// Channel header flag: the grant was revoked; every waiting client gets
/// [`ChanError::Revoked`].
pub const FLAG_REVOKED: u32 = 2;
/// Channel header flag: a spare is taking over the server (set by it at its claim, cleared
/// once it has served its first batch, or by the kernel's recovery if it failed meanwhile):
/// a client woken without its reply spins for it instead of sleeping again (the re-run is
/// on its way from the server's own CPU). Neither an error nor a promise: a client that sees
/// it only waits differently, bounded.
pub const FLAG_TAKEOVER: u32 = 4;

/// Encoding of the slot state word (`Slot::state`, the client's futex word).
///
/// Bits 0..8 hold the state proper; bits 8..32 hold an *epoch* that is raised by every release
/// of the slot to FREE and by every kernel *kick* (DEAD/REVOKED). The epoch makes the CAS of the
/// kernel's recovery operations immune to ABA (a slot freed and re-posted between the kernel's
/// snapshot and its CAS no longer compares equal), and a kick changes the futex word so that a
/// client about to sleep on it cannot miss it.
pub(crate) mod st {
    pub const MASK: u32 = 0xff;
    pub const EPOCH_ONE: u32 = 0x100;
    pub const FREE: u32 = 0;
    pub const CLAIMED: u32 = 1;
    pub const POSTED: u32 = 2;
    pub const TAKEN: u32 = 3;
    pub const REPLIED: u32 = 4;

    /// `w` with its state replaced by `to`.
    #[inline]
    pub fn with(w: u32, to: u32) -> u32 {
        (w & !MASK) | to
    }

    /// `w` released to FREE: epoch raised.
    #[inline]
    pub fn freed(w: u32) -> u32 {
        (w & !MASK).wrapping_add(EPOCH_ONE) | FREE
    }
}

/// The state of a slot as decoded from its state word.
///
/// Written by: FREE→CLAIMED, CLAIMED→POSTED, REPLIED→FREE (and POSTED→FREE when a call times
/// out before any server took it): the client. POSTED→TAKEN, TAKEN→REPLIED: the server.
/// TAKEN→POSTED, TAKEN→REPLIED, POSTED→REPLIED: the kernel, only while no incarnation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlotState {
    /// Available to the client.
    Free,
    /// The client is writing a request.
    Claimed,
    /// A request waits for the server.
    Posted,
    /// The server (or, after its death, the kernel) owns the slot.
    Taken,
    /// A reply waits for the client.
    Replied,
    /// A value the protocol never writes: someone scribbled on the slot.
    Invalid(u32),
}

impl SlotState {
    /// Decodes the state bits of a state word.
    pub fn from_word(w: u32) -> Self {
        match w & st::MASK {
            st::FREE => Self::Free,
            st::CLAIMED => Self::Claimed,
            st::POSTED => Self::Posted,
            st::TAKEN => Self::Taken,
            st::REPLIED => Self::Replied,
            other => Self::Invalid(other),
        }
    }
}

/// The outcome of a call, as the server (or the kernel) wrote it into the slot. A `u32` on the
/// wire; [`Status::from_wire`] rejects unknown values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum Status {
    /// The handler ran and committed; the reply bytes are its answer.
    Ok = 0,
    /// The server could not validate the request (bad length, undecodable bytes). The request
    /// had no effect. Not retryable as is.
    Malformed = 1,
    /// The request named a method the server does not have. No effect.
    UnknownMethod = 2,
    /// Poison request: it made the server fail `attempt` times (the `attempt` field of the
    /// reply); every attempt was rolled back, so it had no effect. Written by the kernel.
    Aborted = 3,
    /// The server restarted (policy `restart`) while handling the request; its state may have
    /// been lost with the old incarnation. Whether the request ran is unknown. Kernel.
    Restarted = 4,
    /// No server is available (policy `none` after a crash, or held down by policy). The
    /// request did not run. Kernel.
    Unavailable = 5,
    /// The reply did not fit the channel's reply area; the handler's effects are committed but
    /// the reply is empty. Server.
    TooLarge = 6,
    /// The grant was revoked while the request was in flight; it did not run. Kernel.
    Revoked = 7,
    /// The server refused the request for a reason of its own (e.g. its heap is exhausted);
    /// the request had no effect.
    Refused = 8,
    /// The server is gone for good (held down, or policy `none`) while it had taken the
    /// request: under `none` and `restart` whether it ran is unknown. Written by the kernel
    /// *before* it marks the channel DEAD, so a client learns it from the slot alone and never
    /// waits after seeing the flag. Kernel.
    Interrupted = 9,
}

impl Status {
    /// The wire value.
    #[inline]
    pub fn to_wire(self) -> u32 {
        self as u32
    }

    /// Decodes a wire value; `None` for values this build does not know.
    #[inline]
    pub fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Ok,
            1 => Self::Malformed,
            2 => Self::UnknownMethod,
            3 => Self::Aborted,
            4 => Self::Restarted,
            5 => Self::Unavailable,
            6 => Self::TooLarge,
            7 => Self::Revoked,
            8 => Self::Refused,
            9 => Self::Interrupted,
            _ => return None,
        })
    }
}

/// The shape of a channel: how many slots, how large their request and reply areas are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelLayout {
    /// Number of slots (concurrent calls in flight), `1..=MAX_SLOTS`.
    pub nslots: u32,
    /// Capacity of each request area in bytes, `0..=MAX_AREA`.
    pub req_cap: u32,
    /// Capacity of each reply area in bytes, `0..=MAX_AREA`.
    pub reply_cap: u32,
}

impl Default for ChannelLayout {
    fn default() -> Self {
        Self {
            nslots: 8,
            req_cap: 4096,
            reply_cap: 4096,
        }
    }
}

#[inline]
fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl ChannelLayout {
    /// Checks the limits. Every other method assumes a layout that passed this.
    pub fn validate(&self) -> Result<(), ChanError> {
        if self.nslots == 0 {
            return Err(ChanError::BadLayout("a channel needs at least one slot"));
        }
        if self.nslots > MAX_SLOTS {
            return Err(ChanError::BadLayout("too many slots"));
        }
        if self.req_cap > MAX_AREA || self.reply_cap > MAX_AREA {
            return Err(ChanError::BadLayout("request or reply area too large"));
        }
        // With the limits above every product fits a u64; check the total in u64.
        let per_slot = round_up(self.req_cap as usize, LINE) as u64
            + round_up(self.reply_cap as usize, LINE) as u64;
        let total = HEADER as u64 + (SLOT_CTL as u64 + per_slot) * self.nslots as u64;
        if total > MAX_CHANNEL_BYTES as u64 {
            return Err(ChanError::BadLayout("channel larger than 1 GiB"));
        }
        Ok(())
    }

    /// Request area size of one slot, rounded to a cache line.
    #[inline]
    pub(crate) fn req_stride(&self) -> usize {
        round_up(self.req_cap as usize, LINE)
    }

    /// Reply area size of one slot, rounded to a cache line.
    #[inline]
    pub(crate) fn reply_stride(&self) -> usize {
        round_up(self.reply_cap as usize, LINE)
    }

    /// Offset of slot `i`'s request line.
    #[inline]
    pub(crate) fn ctl_offset(&self, i: usize) -> usize {
        HEADER + i * SLOT_CTL
    }

    /// Offset of slot `i`'s reply line.
    #[inline]
    pub(crate) fn rep_offset(&self, i: usize) -> usize {
        self.ctl_offset(i) + REPLY_LINE
    }

    /// Where slot `i`'s request of `len` bytes lives (inline or in the request area).
    #[inline]
    pub(crate) fn req_bytes_offset(&self, i: usize, len: usize) -> usize {
        if len <= INLINE_REQ_MAX {
            self.ctl_offset(i) + ctl::INLINE_REQ
        } else {
            self.req_offset(i)
        }
    }

    /// Where slot `i`'s reply of `len` bytes lives (inline or in the reply area).
    #[inline]
    pub(crate) fn reply_bytes_offset(&self, i: usize, len: usize) -> usize {
        if len <= INLINE_REPLY_MAX {
            self.rep_offset(i) + rep::INLINE_REPLY
        } else {
            self.reply_offset(i)
        }
    }

    /// Offset of slot `i`'s request area.
    #[inline]
    pub(crate) fn req_offset(&self, i: usize) -> usize {
        HEADER + self.nslots as usize * SLOT_CTL + i * (self.req_stride() + self.reply_stride())
    }

    /// Offset of slot `i`'s reply area.
    #[inline]
    pub(crate) fn reply_offset(&self, i: usize) -> usize {
        self.req_offset(i) + self.req_stride()
    }

    /// Total size of the memfd, rounded up to a page.
    pub fn total_size(&self) -> usize {
        round_up(self.req_offset(self.nslots as usize), PAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_limits() {
        assert!(ChannelLayout::default().validate().is_ok());
        let bad = [
            ChannelLayout {
                nslots: 0,
                req_cap: 1,
                reply_cap: 1,
            },
            ChannelLayout {
                nslots: MAX_SLOTS + 1,
                req_cap: 1,
                reply_cap: 1,
            },
            ChannelLayout {
                nslots: 1,
                req_cap: MAX_AREA + 1,
                reply_cap: 1,
            },
            ChannelLayout {
                nslots: MAX_SLOTS,
                req_cap: MAX_AREA,
                reply_cap: MAX_AREA,
            },
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?}");
        }
    }

    #[test]
    fn layout_blocks_do_not_overlap() {
        let l = ChannelLayout {
            nslots: 3,
            req_cap: 100,
            reply_cap: 1,
        };
        l.validate().unwrap();
        assert_eq!(l.ctl_offset(0), 128);
        assert_eq!(l.rep_offset(0), 256);
        assert_eq!(l.req_offset(0), 128 + 3 * 256);
        assert_eq!(l.reply_offset(0), l.req_offset(0) + 128);
        assert_eq!(l.req_offset(1), l.reply_offset(0) + 64);
        assert!(l.reply_offset(2) + l.reply_stride() <= l.total_size());
        assert_eq!(l.total_size() % PAGE, 0);
        assert_eq!(l.req_bytes_offset(1, 40), 384 + 24);
        assert_eq!(l.req_bytes_offset(1, 41), l.req_offset(1));
        assert_eq!(l.reply_bytes_offset(2, 44), 640 + 128 + 20);
        assert_eq!(l.reply_bytes_offset(2, 45), l.reply_offset(2));
        for i in 0..3 {
            assert_eq!(l.req_offset(i) % LINE, 0);
            assert_eq!(l.reply_offset(i) % LINE, 0);
        }
    }

    #[test]
    fn status_round_trip() {
        for v in 0..64 {
            if let Some(s) = Status::from_wire(v) {
                assert_eq!(s.to_wire(), v);
            }
        }
        assert_eq!(Status::from_wire(9), Some(Status::Interrupted));
        assert_eq!(Status::from_wire(10), None);
        assert_eq!(Status::from_wire(u32::MAX), None);
    }

    #[test]
    fn state_word_epoch() {
        let w = st::with(5 * st::EPOCH_ONE, st::REPLIED);
        assert_eq!(SlotState::from_word(w), SlotState::Replied);
        let f = st::freed(w);
        assert_eq!(SlotState::from_word(f), SlotState::Free);
        assert_eq!(f >> 8, 6);
        assert_eq!(st::freed(!st::MASK) & st::MASK, st::FREE);
        assert_eq!(SlotState::from_word(0x1ff), SlotState::Invalid(0xff));
    }
}
