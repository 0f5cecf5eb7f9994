//! Control-plane messages (postcard over `SOCK_SEQPACKET` sockets).
//!
//! Three conversations, each its own socket:
//! - client ⇄ kernel (the system socket): [`Request`] / [`Response`];
//! - kernel ⇄ zygote: [`ZygoteInit`] then [`ToZygote`] / [`FromZygote`];
//! - kernel ⇄ incarnation: [`ToServer`] / [`FromServer`], plus the 8-byte crash report of
//!   `txipc_sys::crash` (first byte `0xFF`, which no postcard enum here starts with).
//!
//! File descriptors travel beside a message as SCM_RIGHTS; each message documents which.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::manifest::{Policy, Tracking};

/// Protocol version; a client of another version is refused with a clear error.
pub const PROTO_VERSION: u32 = 1;
/// Largest control message.
pub const MAX_CONTROL_MSG: usize = 256 * 1024;

/// Client → kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Open a channel to a server. Answer: [`Response::Connected`] with fds `[channel, doorbell]`.
    Connect {
        /// Protocol version of the client.
        version: u32,
        /// The server's name.
        service: String,
    },
    /// List the servers. Answer: [`Response::Ps`].
    Ps,
    /// Stop the system. Answer: [`Response::Ok`], then the socket closes.
    Shutdown,
    /// Arm a fail point in a server: its next request reaching `point` faults with `kind`.
    /// Answer: [`Response::Ok`].
    Inject {
        /// The server's name.
        server: String,
        /// What fault.
        kind: crate::failpoint::FailKind,
        /// Where.
        point: crate::failpoint::FailPoint,
    },
}

/// Kernel → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A channel was created; fds `[channel, doorbell]` ride along.
    Connected(Connected),
    /// The servers.
    Ps(Vec<ServerInfo>),
    /// Done.
    Ok,
    /// Refused or failed.
    Error(KernelError),
}

/// A granted channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    /// The server's name.
    pub service: String,
    /// The channel's index among the server's channels.
    pub channel: u32,
    /// The server generation at connect time.
    pub generation: u64,
    /// The server's policy.
    pub policy: Policy,
}

/// One server as `txipc ps` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Name.
    pub name: String,
    /// Pid of the running incarnation (0 if none).
    pub pid: i32,
    /// Generation of the running incarnation.
    pub generation: u64,
    /// Policy.
    pub policy: Policy,
    /// Tracking mode.
    pub tracking: Tracking,
    /// `running`, `recovering`, `held` (restart storm) or `dead` (policy none).
    pub state: String,
    /// Restarts so far.
    pub restarts: u64,
    /// Requests failed as poison.
    pub aborted_requests: u64,
    /// Requests re-executed after a rollback.
    pub retried_requests: u64,
    /// Calls completed.
    pub calls: u64,
    /// Open channels.
    pub channels: u32,
    /// Last recovery time (fault seen → new incarnation serving), microseconds.
    pub last_recovery_us: Option<f64>,
}

/// Why the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What happened and what to do.
    pub message: String,
}

/// Classes of kernel errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// No server of that name.
    UnknownService,
    /// The manifest grants the client no access.
    NotGranted,
    /// The server is down for good (policy none, or held down).
    Unavailable,
    /// The request could not be decoded, or is of another protocol version.
    BadRequest,
    /// The kernel failed (out of memory, too many channels...).
    Internal,
}

/// What a zygote needs to prepare incarnations. Sent once, first; fds `[heap, log, doorbell,
/// status]` ride along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZygoteInit {
    /// The server's configuration.
    pub config: ServerConfig,
}

/// Everything an incarnation needs to know about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// The system's name.
    pub system: String,
    /// The server's name.
    pub name: String,
    /// The built-in server to run.
    pub builtin: String,
    /// Policy.
    pub policy: Policy,
    /// Tracking (policy txipc).
    pub tracking: Tracking,
    /// Where the heap is mapped in every incarnation.
    pub heap_base: u64,
    /// Heap size in bytes.
    pub heap_size: u64,
    /// Most requests in one transaction.
    pub batch_max: u32,
    /// Pin to this CPU.
    pub cpu: Option<usize>,
}

/// Kernel → zygote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToZygote {
    /// Fork a standby incarnation; fd `[incarnation control socket]` rides along.
    Spawn {
        /// Its generation, if activated.
        generation: u64,
    },
    /// Exit.
    Exit,
}

/// Zygote → kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromZygote {
    /// Initialised, ready to spawn.
    Ready,
    /// Forked; fd `[pidfd]` rides along.
    Spawned {
        /// The generation it was spawned for.
        generation: u64,
        /// Its pid.
        pid: i32,
    },
    /// Could not fork.
    Failed {
        /// Why.
        message: String,
    },
}

/// Kernel → incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToServer {
    /// Serve these channels too; one fd per index rides along, in order.
    AddChannels {
        /// The channels' indices.
        indices: Vec<u32>,
    },
    /// Stop serving this channel (revoked).
    RemoveChannel {
        /// Its index.
        index: u32,
    },
    /// Attach the heap and start serving as `generation`.
    Activate {
        /// The generation.
        generation: u64,
        /// Reformat the heap instead of recovering it (policy restart / first boot).
        fresh: bool,
    },
    /// Exit now.
    Shutdown,
    /// A channel this server opened to another service (answer to [`FromServer::Connect`], or,
    /// at spawn, one opened by an earlier incarnation in a committed transaction); fds
    /// `[channel, doorbell]` ride along.
    Connected(Connected),
    /// The kernel refused [`FromServer::Connect`].
    ConnectRefused {
        /// The service asked for.
        service: String,
        /// Why.
        message: String,
    },
}

/// Incarnation → kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromServer {
    /// Channels mapped, waiting for `Activate`.
    Standby,
    /// Attached and serving.
    Active {
        /// Its generation.
        generation: u64,
    },
    /// Open a channel to another service, inside transaction `txid` (0: outside any). If that
    /// transaction is rolled back, the kernel revokes the channel.
    Connect {
        /// The service's name.
        service: String,
        /// The transaction the connection belongs to.
        txid: u64,
    },
    /// Could not start (bad heap, mapping conflict...): the server is not restartable as is.
    Fatal {
        /// Why, and what to do.
        message: String,
    },
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed control message: {0}")]
pub struct ProtoError(pub String);

/// Encodes a control message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("control messages always encode")
}

/// Decodes a control message strictly (no trailing bytes).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Ok(v),
        Ok(_) => Err(ProtoError("trailing bytes".into())),
        Err(e) => Err(ProtoError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        let r = Request::Connect {
            version: PROTO_VERSION,
            service: "kv".into(),
        };
        assert_eq!(decode::<Request>(&encode(&r)).unwrap(), r);
        assert!(decode::<Request>(&[0xFF, 1, 2]).is_err());
        for n in 0..200u32 {
            let bytes: Vec<u8> = (0..n % 17).map(|i| (i * 31 + n) as u8).collect();
            let _ = decode::<Request>(&bytes);
            let _ = decode::<ToServer>(&bytes);
        }
    }

    #[test]
    fn crash_magic_is_not_a_message() {
        // The first byte of an encoded enum is its variant index, far below 0xFF.
        assert!(encode(&FromServer::Standby)[0] < 0x80);
    }
}
