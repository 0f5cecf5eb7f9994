//! The recoverable heap: fixed-address memfd region, undo log, transactional allocator, typed tracking and persistent collections.
#![deny(clippy::undocumented_unsafe_blocks)]
