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

pub use txipc_macros::service;

/// Why a call did not produce the service's reply. Produced by the transport (channel) or the
/// client stub; never by the service itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request faulted the server more often than its retry limit allows. Every update it
    /// made was rolled back; the server goes on serving others. Retrying will likely fault again.
    #[error(
        "aborted: the request faulted the server {attempts} times and was rolled back (poison request)"
    )]
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
                | CallError::TooLarge {
                    what: "request",
                    ..
                }
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

/// Support for the code `#[service]` generates. Not a stable API: it changes with the macro.
#[doc(hidden)]
pub mod __private {
    use super::{CallError, DispatchError, Error, Transport};
    use serde::{Serialize, de::DeserializeOwned};
    use std::cell::Cell;

    pub use serde;

    /// The bound every argument, return and error type of a service method must meet. The
    /// generated code asserts it once per type, with the type's span, so a type that can't cross
    /// a channel is reported where it is written.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot cross a channel: service argument, return and error types must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
        label = "not `Serialize + DeserializeOwned`",
        note = "derive both with `#[derive(serde::Serialize, serde::Deserialize)]`, or use an owned type that has them (`Vec<u8>`, `String`, ...)"
    )]
    pub trait Wire: Serialize + DeserializeOwned {}
    impl<T: Serialize + DeserializeOwned> Wire for T {}

    /// Compile-time check that `T` is a wire type (see [`Wire`]); does nothing at run time.
    pub const fn assert_wire<T: Wire>() {}

    thread_local! {
        /// Request and reply buffers reused across the calls of one thread, so a call does not
        /// allocate once the buffers have grown. Taken out (not borrowed) for the duration of a
        /// call, so a transport that calls back into a client on the same thread (an in-process
        /// loopback serving a nested call) simply gets fresh buffers.
        static BUFFERS: Cell<(Vec<u8>, Vec<u8>)> = const { Cell::new((Vec::new(), Vec::new())) };
    }

    /// Buffers larger than this are not kept for the next call.
    const KEEP_CAP: usize = 64 * 1024;

    /// One call of an infallible method: encodes `args`, calls, decodes the reply strictly.
    pub fn call<T, A, R>(transport: &T, method: u32, args: &A) -> Result<R, CallError>
    where
        T: Transport + ?Sized,
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        // `try_with`: during thread teardown the buffers may be gone; then allocate.
        let (mut request, mut reply) = BUFFERS.try_with(Cell::take).unwrap_or_default();
        let result = call_with(transport, method, args, &mut request, &mut reply);
        if request.capacity() <= KEEP_CAP && reply.capacity() <= KEEP_CAP {
            let _ = BUFFERS.try_with(|buffers| buffers.set((request, reply)));
        }
        result
    }

    fn call_with<T, A, R>(
        transport: &T,
        method: u32,
        args: &A,
        request: &mut Vec<u8>,
        reply: &mut Vec<u8>,
    ) -> Result<R, CallError>
    where
        T: Transport + ?Sized,
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        super::encode(args, request)?;
        reply.clear();
        transport.call(method, request, reply)?;
        super::decode(reply).map_err(|e| CallError::BadReply(e.to_string()))
    }

    /// One call of a fallible method (declared `-> Result<R, E>`): the reply is the encoded
    /// `Result<R, E>`; the service's error becomes [`Error::Service`].
    pub fn call_fallible<T, A, R, E>(transport: &T, method: u32, args: &A) -> Result<R, Error<E>>
    where
        T: Transport + ?Sized,
        A: Serialize + ?Sized,
        R: DeserializeOwned,
        E: DeserializeOwned,
    {
        call::<T, A, Result<R, E>>(transport, method, args)?.map_err(Error::Service)
    }

    /// Decodes a request's arguments; bytes that do not decode (including trailing bytes) are
    /// [`DispatchError::Malformed`]. Never panics.
    pub fn decode_request<A: DeserializeOwned>(
        method: u32,
        request: &[u8],
    ) -> Result<A, DispatchError> {
        super::decode(request).map_err(|_| DispatchError::Malformed { method })
    }

    /// Encodes a method's return value into `reply`.
    ///
    /// # Panics
    ///
    /// If the value cannot be encoded, which only a hand-written `Serialize` impl that fails can
    /// cause. The method has run by then and may have changed state, so reporting an error as if
    /// the request had not run would be a lie: the panic makes the runtime treat it as a fault of
    /// this request (rolled back under `txipc`, then failed alone as a poison request).
    #[track_caller]
    pub fn encode_reply<R: Serialize + ?Sized>(method: u32, value: &R, reply: &mut Vec<u8>) {
        if let Err(e) = super::encode(value, reply) {
            panic!("the reply of method {method} cannot be encoded: {e}");
        }
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
