//! Raw Linux primitives for txipc, fenced in one crate.
//!
//! Everything here wraps a syscall or a piece of shared memory behind a safe API so that the
//! kernel, runtime and command-line crates can be `#![forbid(unsafe_code)]`:
//!
//! - [`fdpass`]: messages with file descriptors over Unix sockets (SCM_RIGHTS), the only way
//!   capabilities (memfds) move between processes;
//! - [`process`]: pidfds, the child subreaper, process states read from `/proc`, stopping and
//!   killing, fork-and-exec;
//! - [`crash`]: the crash reporter a server installs on entry: on a fatal signal or a panic it
//!   tells the kernel and stops itself (SIGSTOP), so the kernel recovers the server *before* the
//!   dead incarnation's address space is torn down;
//! - [`keeper`]: a process sharing a server's address space, so that a SIGKILLed server's
//!   memory is torn down after recovery, at nice 19, instead of before its death is noticed;
//! - [`status`]: the status page, a small shared-memory record per server that the kernel's
//!   watchdog reads (the id of the batch being handled, which the watchdog times itself, and
//!   the served-call counters);
//! - [`time`]: the monotonic clock in nanoseconds;
//! - [`title`]: process names (`comm` and the command line) that say which server runs.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod crash;
pub mod fdpass;
pub mod keeper;
pub mod process;
pub mod shm;
pub mod status;
pub mod time;
pub mod title;

pub use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
