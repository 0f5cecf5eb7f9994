//! Raw Linux primitives: memfds, fixed mappings, futexes, pidfds, fd passing, fork.
#![deny(clippy::undocumented_unsafe_blocks)]
