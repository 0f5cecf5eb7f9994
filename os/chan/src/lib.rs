//! # txipc-chan — shared-memory channels
//!
//! (crate docs: see below; filled in with measured numbers)
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod baseline;
mod channel;
mod doorbell;
mod error;
pub mod futex;
mod layout;
mod mem;
mod spin;

pub use channel::{
    ClientChannel, KernelChannel, Reply, ServerChannel, SlotSnapshot, Taken, create_channel,
};
pub use doorbell::{DOORBELL_MAGIC, DOORBELL_VERSION, Doorbell, Wake, create_doorbell};
pub use error::ChanError;
pub use layout::{
    CHANNEL_MAGIC, CHANNEL_VERSION, ChannelLayout, FLAG_DEAD, FLAG_REVOKED, INLINE_REPLY_MAX,
    INLINE_REQ_MAX, MAX_AREA, MAX_CHANNEL_BYTES, MAX_SLOTS, SlotState, Status,
};
pub use spin::{SpinConfig, SpinMode};
