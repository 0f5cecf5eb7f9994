//! The server runtime and the client library of txipc.
//!
//! Server side ([`zygote_main`]): a server binary is started by the kernel as a *zygote*, which
//! initialises once and forks incarnations on demand. An incarnation maps its channels, waits as
//! a hot standby until the kernel activates it, attaches the recoverable heap at its fixed
//! address and runs the event loop. Under policy `txipc` every request (or batch of requests) is
//! a transaction (ARCHITECTURE.md §5):
//!
//! take → copy out + validate → begin → handle → write reply → **commit point** → publish.
//!
//! The runtime never publishes a reply before the commit point, so a reply a client has seen is
//! never rolled back, and a request whose reply was not committed is rolled back by the kernel
//! and re-executed.
//!
//! Policy `companion` ([`companion`], [`zygote_main_with`]): a server with ordinary Rust state
//! ([`PlainBuiltin`]) logs every state-changing request to a kernel-owned log before it runs,
//! forks checkpoint writers, and after a fault is reconstituted from the last checkpoint and
//! the log replayed behind it (ARCHITECTURE.md §16).
//!
//! Client side ([`client`]): connect to a running system by name, open channels to its servers
//! (a [`txipc_service::Transport`] for generated stubs), list servers, stop the system; and
//! [`client::SystemProcess`], which boots a kernel as a child process for tests, benchmarks and
//! the demo.
#![forbid(unsafe_code)]

pub mod client;
pub mod companion;
pub mod failpoint;
pub mod nested;
mod server;
mod spare;

pub use companion::{PlainBuiltin, PlainInstance, current_session};
pub use failpoint::{Corrupt, fail_point};
pub use nested::rollback_request;
pub use server::{
    Builtin, Instance, Outgoing, StartArgs, TxCell, TxHost, connect, current_attempt, zygote_main,
    zygote_main_with,
};
