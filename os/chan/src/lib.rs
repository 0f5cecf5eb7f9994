//! Shared-memory channels: request/reply slots, slot protocol, doorbells, adaptive waits.
#![deny(clippy::undocumented_unsafe_blocks)]
