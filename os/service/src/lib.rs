//! What generated service code stands on.
//!
//! `#[service]` (in `txipc-macros`) turns a trait into request/reply encodings, a client stub
//! generic over [`Transport`] and a server dispatcher implementing [`Dispatch`]. This crate holds
//! those two traits, the wire codec and the errors a client can see, and nothing that touches
//! shared memory: interface crates depend on it, never on the runtime.
//!
//! Design principles:
//! - A client always learns *why* a call failed: the service's own error ([`Error::Service`])
//!   is kept apart from the system's ([`CallError`]), and the system's say whether the request
//!   was rolled back (safe to retry) or may have run.
//! - Bytes from the other process are an allegation: decoding never panics and a malformed
//!   request is answered with [`DispatchError::Malformed`], not acted on.
#![forbid(unsafe_code)]

use serde::{Serialize, de::DeserializeOwned};

/// Why a call did not produce the service's reply. Produced by the transport (channel) or the
/// client stub; never by the service itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request faulted the server more often than its retry limit allows. Every update it
    /// made was rolled back; the server goes on serving others. Retrying will likely fault again.
    #[error("aborted: the request faulted the server {attempts} times and was rolled back (poison request)")]
    Aborted {
        /// How many times it was attempted.
        attempts: u32,
    },
    /// The server died while the request was in flight and came back without its state
    /// (policy `restart`): the request may or may not have taken effect before the crash.
    #[error("the server restarted while the request was in flight; its effect is unknown")]
    Restarted,
    /// The server is down and will not be restarted (policy `none`, or held down after a
    /// restart storm). The request did not run.
    #[error("the server is unavailable: {reason}")]
    Unavailable {
        /// Why, as the kernel put it.
        reason: String,
    },
    /// The server could not decode the request; it did not run.
    #[error("the server rejected the request as malformed")]
    Malformed,
    /// The server does not know this method (interface version mismatch); it did not run.
    #[error("the server does not implement method {method}")]
    UnknownMethod {
        /// The method number sent.
        method: u32,
    },
    /// The request (or the reply) does not fit the channel's slot.
    #[error("{what} of {len} bytes exceeds the channel limit of {cap} bytes")]
    TooLarge {
        /// "request" or "reply".
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        cap: usize,
    },
    /// The reply could not be decoded by the client stub.
    #[error("the server's reply could not be decoded: {0}")]
    BadReply(String),
    /// The client gave up waiting; the request may still run.
    #[error("no reply within the client's deadline; the request may still run")]
    Timeout,
    /// The channel is gone (revoked by the kernel, or the kernel itself is gone).
    #[error("the channel is disconnected: {0}")]
    Disconnected(String),
}

impl CallError {
    /// True when the request certainly did not take effect, so resending it cannot duplicate it.
    pub fn did_not_run(&self) -> bool {
        matches!(
            self,
            CallError::Aborted { .. }
                | CallError::Unavailable { .. }
                | CallError::Malformed
                | CallError::UnknownMethod { .. }
                | CallError::TooLarge { what: "request", .. }
        )
    }
}

/// The error of a call to a fallible service method: the service's own error, or the system's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error<E> {
    /// The service ran the request and answered with its own error.
    #[error("service error: {0}")]
    Service(E),
    /// The call did not produce the service's answer.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// How a client stub reaches a server: one request, one reply.
pub trait Transport {
    /// Sends `request` (already encoded) for `method` and waits for the reply, whose encoded
    /// bytes replace the contents of `reply`.
    fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError>;
}

impl<T: Transport + ?Sized> Transport for &T {
    fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        (**self).call(method, request, reply)
    }
}

/// Why a dispatcher could not run a request. The runtime turns these into the reply status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// The request bytes do not decode as the method's arguments.
    #[error("malformed request for method {method}")]
    Malformed {
        /// The method number.
        method: u32,
    },
    /// No such method.
    #[error("unknown method {method}")]
    UnknownMethod {
        /// The method number.
        method: u32,
    },
}

/// A server-side dispatcher generated by `#[service]`: decodes a request, calls the method on
/// the wrapped server, encodes the reply.
pub trait Dispatch {
    /// The server type the dispatcher wraps.
    type Inner;
    /// The service's name (the trait's name), as used in manifests and grants.
    const SERVICE: &'static str;
    /// Runs one request. `reply` is cleared and filled with the encoded reply.
    fn dispatch(
        &mut self,
        method: u32,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), DispatchError>;
    /// True for methods annotated `#[readonly]` (they change no state and are never logged).
    fn is_readonly(method: u32) -> bool;
    /// The method's name, for logs and reports.
    fn method_name(method: u32) -> Option<&'static str>;
    /// The wrapped server.
    fn inner(&self) -> &Self::Inner;
    /// The wrapped server, mutably (the runtime begins and commits transactions through it).
    fn inner_mut(&mut self) -> &mut Self::Inner;
}

/// Encodes a value with the wire codec (postcard).
pub fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CallError> {
    out.clear();
    let bytes = postcard::to_extend(value, std::mem::take(out))
        .map_err(|e| CallError::BadReply(format!("encode: {e}")))?;
    *out = bytes;
    Ok(())
}

/// Decodes a value with the wire codec; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_roundtrip_and_trailing_bytes() {
        let mut buf = Vec::new();
        encode(&(7u32, b"key".to_vec()), &mut buf).unwrap();
        let back: (u32, Vec<u8>) = decode(&buf).unwrap();
        assert_eq!(back, (7, b"key".to_vec()));
        buf.push(0);
        assert!(decode::<(u32, Vec<u8>)>(&buf).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..64u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = decode::<(u32, Vec<u8>, Option<String>)>(&bytes);
        }
    }

    #[test]
    fn did_not_run_classification() {
        assert!(CallError::Aborted { attempts: 3 }.did_not_run());
        assert!(!CallError::Restarted.did_not_run());
        assert!(!CallError::Timeout.did_not_run());
    }
}
