//! The kernel process: boots a system from a manifest, grants channels, supervises servers and drives recovery.
#![forbid(unsafe_code)]
