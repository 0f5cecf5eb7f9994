//! Pure logic of txipc, testable without processes or shared memory.
//!
//! - [`manifest`]: the TOML description of a system (servers, policies, limits, grants), parsed
//!   and validated with errors that name the offending entry and what to do;
//! - [`proto`]: the control-plane messages between clients, the kernel, zygotes and
//!   incarnations (postcard over SEQPACKET sockets; the data path never uses them);
//! - [`recovery`]: what the kernel does with each in-flight slot after an incarnation dies, and
//!   when it may restart a server (restart-storm bounding);
//! - [`companion`]: the companion policy's message-log records and snapshot files (formats,
//!   checksums, the ring and its tail word, the log reader that finds corruption);
//! - [`lifecycle`]: the life of one server as a pure state machine (events in, commands out),
//!   proptested over random event orders;
//! - [`latency`]: per-call latency histograms (quarter-octave buckets) and their percentiles;
//! - [`failpoint`]: faults the kernel arms in a server at a chosen point of the commit protocol;
//! - [`paths`]: where a running system's socket lives;
//! - [`vocab`]: the command line's names of faults and policies, shared by every command.
#![forbid(unsafe_code)]

pub mod companion;
pub mod failpoint;
pub mod latency;
pub mod lifecycle;
pub mod manifest;
pub mod nested;
pub mod paths;
pub mod proto;
pub mod recovery;
pub mod vocab;
