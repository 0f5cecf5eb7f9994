//! Errors: why the kernel could not boot or run, and the wire errors it answers with.

use txipc_core::proto::{ErrorKind, KernelError as WireError};

/// Why the kernel could not boot or run.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Another system of that name runs.
    #[error(
        "a system named `{0}` is already running (its socket answers): stop it first, or pick another --system name"
    )]
    AlreadyRunning(String),
    /// A server did not come up.
    #[error("server `{server}` failed to start: {reason}")]
    ServerStart {
        /// Which.
        server: String,
        /// Why.
        reason: String,
    },
    /// The runtime directory is unsafe or cannot be made.
    #[error("{0}")]
    RuntimeDir(String),
    /// An OS call failed.
    #[error("{op}: {err}")]
    Os {
        /// What was being done.
        op: String,
        /// The error.
        err: String,
    },
}

pub(crate) fn os<E: std::fmt::Display>(op: impl Into<String>) -> impl FnOnce(E) -> KernelError {
    let op = op.into();
    move |e| KernelError::Os {
        op,
        err: e.to_string(),
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> WireError {
    WireError {
        kind: ErrorKind::Internal,
        message: e.to_string(),
    }
}
