//! The kernel process of txipc: the trusted supervisor.
//!
//! It boots a system from a [`txipc_core::manifest::Manifest`], owns every shared object (heaps, undo logs, channels,
//! doorbells, status pages), grants channels to clients that the manifest allows, supervises
//! server incarnations through pidfds and crash reports, and drives recovery (ARCHITECTURE.md
//! §6). It is never on the data path of a call.
//!
//! Design principles:
//! - **Single-threaded and event-driven** (one epoll set): every decision happens in one place,
//!   in order, so recovery never races a grant or a shutdown.
//! - **Confirm, then act**: shared state of a server is touched only once its incarnation can no
//!   longer run (dead, or SIGSTOPped and seen stopped in `/proc`).
//! - **Recover before teardown**: a crashing server stops itself; the kernel recovers and
//!   activates the hot standby first, and kills the stopped incarnation afterwards.
//! - **Decisions are pure**: what to do with each in-flight request is
//!   [`txipc_core::recovery::decide_slot`], tested without processes.
//!
//! Layout, one concern per module: `event_loop` (the loop and its tokens), `boot`,
//! `server` (the record of one server), `clients`, `control` (operator controls, `ps`), `channels`, `zygotes`, `incarnations`, `lifecycle` (performing the lifecycle's commands),
//! `watchdog`, `recovery`, `spare` (the standby that takes over by itself), `nested` (transactions across servers), `companion` (policy
//! companion: the message log, checkpoints, poison accounting), `shutdown`, `errors`.
#![forbid(unsafe_code)]

mod boot;
mod channels;
mod clients;
mod companion;
mod control;
mod errors;
mod event_loop;
mod fuse;
mod incarnations;
mod lifecycle;
mod nested;
mod recovery;
mod server;
mod shutdown;
mod spare;
mod watchdog;
mod zygotes;

pub use boot::{KERNEL_NICE_BOOST, Options};
pub use errors::KernelError;
pub use event_loop::run;
