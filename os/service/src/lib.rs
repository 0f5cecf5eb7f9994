//! What generated service code stands on.
//!
//! `#[service]` (in `txipc-macros`) turns a trait into request/reply encodings, a client stub
//! generic over [`Transport`] and a server dispatcher implementing [`Dispatch`]. This crate holds
//! those two traits, the wire codec and the errors a client can see, and nothing that touches
//! shared memory: interface crates depend on it, never on the runtime.
//!
//! Interface crates depend on this crate only: it re-exports the macro as
//! [`txipc_service::service`](service), and everything the macro generates names items here by
//! absolute path. See the macro's documentation for what it generates and the wire format.
//!
//! Design principles:
//! - A client always learns *why* a call failed: the service's own error ([`Error::Service`])
//!   is kept apart from the system's ([`CallError`]), and the system's say whether the request
//!   was rolled back (safe to retry) or may have run.
//! - Bytes from the other process are an allegation: decoding never panics and a malformed
//!   request is answered with [`DispatchError::Malformed`], not acted on.
//! - Byte payloads cost one length and one copy: interfaces carry them as [`Bytes`], never as
//!   `Vec<u8>` (which serde moves one element at a time).
//! - A call need not allocate: for every method with byte strings, the generated code also
//!   has a borrowed form on each side ([`BytesRef`]; a client's `<method>_with` reads the reply
//!   where it landed, a server's `serve_<method>` lends its state's bytes to the reply).
#![forbid(unsafe_code)]

mod bytes;

pub use bytes::{Bytes, BytesRef};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

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
    /// The client gave up waiting and withdrew the request before any server took it: it did
    /// not run, and is safe to send again.
    #[error(
        "no reply within the client's deadline of {after_ms} ms; the request was withdrawn before a server took it: it did not run"
    )]
    Withdrawn {
        /// The deadline that expired, in milliseconds.
        after_ms: u64,
    },
    /// The server failed while it had the request and nothing rolled it back (policy `none`,
    /// or `restart` held down); the server is down. The request may have taken effect, wholly
    /// or partly.
    #[error(
        "the server failed while running the request and is down; the request may have taken effect"
    )]
    Interrupted,
    /// The server refused the request for a reason of its own (e.g. its heap is full); it had
    /// no effect.
    #[error("the server refused the request (e.g. out of memory); it had no effect")]
    Refused,
    /// The request ran (its effects stand) but its reply did not fit the channel's reply area
    /// of `cap` bytes, so it was lost.
    #[error(
        "the request ran but its reply exceeds the channel's reply limit of {cap} bytes and was lost"
    )]
    ReplyTooLarge {
        /// The channel's reply limit.
        cap: usize,
    },
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
                | CallError::Withdrawn { .. }
                | CallError::Refused
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

/// Where a dispatcher writes the encoded reply: a `Vec<u8>`, or (in the runtime) the slot of
/// the channel the request came from, so that a reply is encoded straight into shared memory
/// and copied once (ARCHITECTURE.md §4). A `&mut Vec<u8>` converts to a `&mut dyn
/// ReplyWriter` where one is expected.
pub trait ReplyWriter {
    /// Drops what was written (a dispatch starts with it).
    fn reset(&mut self);
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl ReplyWriter for Vec<u8> {
    #[inline]
    fn reset(&mut self) {
        self.clear();
    }
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Proof that a server's `serve_<method>` answered: only the reply handle the dispatcher gives
/// it can make one (its `send`), so a lending handler cannot forget to reply.
#[derive(Debug)]
#[must_use = "return it from `serve_<method>`"]
pub struct Replied(());

/// Encodes a value with the wire codec (postcard) at the end of `out`.
pub fn encode_to<T: Serialize + ?Sized>(
    value: &T,
    out: &mut dyn ReplyWriter,
) -> Result<(), CallError> {
    /// postcard's output, through a [`ReplyWriter`]: a byte string goes in one `put`.
    struct Out<'a>(&'a mut dyn ReplyWriter);
    impl postcard::ser_flavors::Flavor for Out<'_> {
        type Output = ();
        #[inline]
        fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
            self.0.put(&[byte]);
            Ok(())
        }
        #[inline]
        fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
            self.0.put(bytes);
            Ok(())
        }
        fn finalize(self) -> postcard::Result<()> {
            Ok(())
        }
    }
    postcard::serialize_with_flavor(value, Out(out))
        .map_err(|e| CallError::BadReply(format!("encode: {e}")))
}

/// A server-side dispatcher generated by `#[service]`: decodes a request, calls the method on
/// the wrapped server, encodes the reply.
pub trait Dispatch {
    /// The server type the dispatcher wraps.
    type Inner;
    /// The service's name (the trait's name), as used in manifests and grants.
    const SERVICE: &'static str;
    /// Runs one request. `reply` is reset and filled with the encoded reply (pass a
    /// `&mut Vec<u8>`, or any other [`ReplyWriter`]).
    fn dispatch(
        &mut self,
        method: u32,
        request: &[u8],
        reply: &mut dyn ReplyWriter,
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

/// Where the companion may capture (checkpoint) the server's state, per method: the method
/// attribute `#[capture(now)]` or `#[capture(defer)]` of `#[service]`; a method without one is
/// [`Capture::Allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// A checkpoint may be taken after this method, when the manifest's counters say so.
    Allowed,
    /// Take a checkpoint right after this method, whatever the counters say (e.g. after a bulk
    /// load, so that a replay never has to run it again).
    Now,
    /// No checkpoint right after this method: the state is between two steps of a protocol
    /// that spans several requests; capture waits for a method that allows it.
    Defer,
}

/// The distillation of a server's state: what a companion checkpoints, and how a new
/// incarnation is reconstituted from it (policy `companion`).
///
/// The snapshot is the part of the server that *is* its state (caches and handles need not be
/// in it); the runtime encodes it with postcard, stamps it with [`Distill::VERSION`], checksums
/// it and seals it. Handlers of a server that implements `Distill` must be **deterministic**:
/// the same state and the same request give the same reply and the same new state (no clocks,
/// no randomness, no iteration over `HashMap` order into replies). The companion replays logged
/// requests after a fault and compares a digest of every reply with the one logged when the
/// request first ran: a divergent replay holds the server down instead of serving different
/// state.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run under policy `companion`: it does not implement `txipc_service::Distill`",
    label = "no distillation of its state",
    note = "implement `txipc_service::Distill` for `{Self}`: `type Snapshot` (the serde type holding its state), `const VERSION`, `fn distill(&self) -> &Self::Snapshot` and `fn reconstitute(Self::Snapshot) -> Self`"
)]
pub trait Distill: Sized {
    /// Version of the snapshot format; a snapshot of another version is refused, not misread.
    const VERSION: u32;
    /// The state, as it is checkpointed. `Default` is the state of a server that never ran.
    type Snapshot: Serialize + DeserializeOwned + Default;
    /// The server's state (borrowed: a checkpoint is written by a forked child from its copy
    /// of the parent's memory, so nothing is cloned).
    fn distill(&self) -> &Self::Snapshot;
    /// A server whose state is `snapshot`.
    fn reconstitute(snapshot: Self::Snapshot) -> Self;

    /// **The delta form** (optional: a server without it is checkpointed whole every time).
    /// Starts (`on`) or stops tracking the changes to the state, with nothing tracked yet, and
    /// says whether the server has a delta form (the default: `false`, tracks nothing). The
    /// companion turns tracking on in its replica only (the serving incarnation does not pay
    /// for it), then checkpoints a base now and then and, between bases, only the changes.
    fn track_changes(&mut self, on: bool) -> bool {
        let _ = on;
        false
    }

    /// Writes the changes tracked since tracking started or since the last
    /// [`Distill::forget_changes`] (postcard of a type of the server's choosing), such that
    /// [`Distill::apply_changes`] of them to the state they were tracked from gives this state.
    fn write_changes(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError> {
        let _ = out;
        Err(DistillError::Encode("this server has no delta form".into()))
    }

    /// Forgets the changes tracked so far (they are in a checkpoint now); tracking goes on.
    fn forget_changes(&mut self) {}

    /// Applies changes [`Distill::write_changes`] wrote (restoring a chain: a base, then each
    /// delta in order).
    fn apply_changes(&mut self, delta: &[u8]) -> Result<(), DistillError> {
        let _ = delta;
        Err(DistillError::Decode(
            "this server has no delta form, but the snapshot is a delta".into(),
        ))
    }
}

/// Why a state could not be distilled or reconstituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistillError {
    /// The state did not encode (only a failing hand-written `Serialize` does that).
    #[error("the server's state could not be encoded: {0}")]
    Encode(String),
    /// The snapshot did not decode as the server's state.
    #[error("the snapshot does not decode as the server's state: {0}")]
    Decode(String),
}

/// A dispatcher that can run under policy `companion`: generated by `#[service]` as
/// `<Trait>Companion<S>` for every `S` that implements the trait and [`Distill`].
pub trait Companion: Dispatch + Sized {
    /// The server's [`Distill::VERSION`].
    const STATE_VERSION: u32;
    /// Where a checkpoint may follow `method` (its `#[capture]` annotation). Unknown methods
    /// are [`Capture::Allowed`] (they change nothing: they are answered `UnknownMethod`).
    fn capture(method: u32) -> Capture;
    /// Appends the distilled state (postcard) to `out`.
    fn distill_into(&self, out: &mut Vec<u8>) -> Result<(), DistillError>;
    /// Writes the distilled state (postcard, the same bytes as [`Companion::distill_into`])
    /// to `out` as it is encoded: a checkpoint writer passes the snapshot file, so a large
    /// state is not first built in memory (that copy and its page faults were most of a
    /// checkpoint's cost at 100 MB of state).
    fn distill_to(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError>;
    /// A dispatcher over the server reconstituted from `payload`.
    fn reconstitute_from(payload: &[u8]) -> Result<Self, DistillError>;
    /// A dispatcher over a server that never ran (its snapshot's `Default`).
    fn fresh() -> Self;
    /// [`Distill::track_changes`] of the server.
    fn track_changes(&mut self, on: bool) -> bool;
    /// [`Distill::write_changes`] of the server.
    fn write_changes(&self, out: &mut dyn std::io::Write) -> Result<(), DistillError>;
    /// [`Distill::forget_changes`] of the server.
    fn forget_changes(&mut self);
    /// [`Distill::apply_changes`] of the server.
    fn apply_changes(&mut self, delta: &[u8]) -> Result<(), DistillError>;
}

/// Writes `value` with the wire codec (postcard) to `out` as it is encoded: what a server's
/// delta form ([`Distill::write_changes`]) writes its changes with.
pub fn write_encoded<T: Serialize + ?Sized>(
    value: &T,
    out: &mut dyn std::io::Write,
) -> Result<(), DistillError> {
    postcard::to_io(value, out)
        .map(|_| ())
        .map_err(|e| DistillError::Encode(e.to_string()))
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

/// Decodes a value that may borrow from `bytes` (a [`BytesRef`], a `&[u8]`, a `&str`) with the
/// wire codec; trailing bytes are an error.
pub fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Support for the code `#[service]` generates. Not a stable API: it changes with the macro.
///
/// Arguments are encoded and decoded one at a time, each through a call that names its type, so
/// that a type that is not a wire type is reported by the compiler at the type in the trait.
/// Postcard encodes a tuple as its elements back to back, so a request is exactly the encoding
/// of the argument tuple.
#[doc(hidden)]
pub mod __private {
    use super::{CallError, DispatchError, Error, Replied, Transport};
    use serde::{Deserialize, Serialize, de::DeserializeOwned};
    use std::cell::Cell;

    /// A type a service can send: its arguments at the client, its results at the server.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent over a channel: it does not implement `serde::Serialize`",
        label = "not `Serialize`",
        note = "service argument, return and error types are wire types: `Serialize + DeserializeOwned`; derive them with `#[derive(serde::Serialize, serde::Deserialize)]`, or use an owned type that has them"
    )]
    pub trait Encode: Serialize {}
    impl<T: Serialize + ?Sized> Encode for T {}

    /// A type a service can receive: its arguments at the server, its results at the client.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be received over a channel: it does not implement `serde::de::DeserializeOwned`",
        label = "not `DeserializeOwned`",
        note = "service argument, return and error types are wire types: `Serialize + DeserializeOwned`; derive them with `#[derive(serde::Serialize, serde::Deserialize)]`, or use an owned type that has them"
    )]
    pub trait Decode: DeserializeOwned {}
    impl<T: DeserializeOwned> Decode for T {}

    thread_local! {
        /// Request and reply buffers reused across the calls of one thread, so a call does not
        /// allocate once the buffers have grown. Taken out (not borrowed) for the duration of a
        /// call, so a transport that calls back into a client on the same thread (an in-process
        /// loopback serving a nested call) simply gets fresh buffers.
        static BUFFERS: Cell<(Vec<u8>, Vec<u8>)> = const { Cell::new((Vec::new(), Vec::new())) };
    }

    /// Buffers larger than this are not kept for the next call.
    const KEEP_CAP: usize = 64 * 1024;

    /// One call being made by a client stub: `new`, `arg` for each argument in order, then
    /// `finish` (or `finish_fallible`).
    #[derive(Debug)]
    pub struct Call<'t, T: Transport + ?Sized> {
        transport: &'t T,
        method: u32,
        request: Vec<u8>,
        reply: Vec<u8>,
    }

    impl<'t, T: Transport + ?Sized> Call<'t, T> {
        pub fn new(transport: &'t T, method: u32) -> Self {
            // `try_with`: during thread teardown the buffers may be gone; then allocate.
            let (mut request, reply) = BUFFERS.try_with(Cell::take).unwrap_or_default();
            request.clear();
            Call {
                transport,
                method,
                request,
                reply,
            }
        }

        /// Appends one argument to the request.
        pub fn arg<A: Encode + ?Sized>(&mut self, value: &A) -> Result<(), CallError> {
            let request = std::mem::take(&mut self.request);
            self.request = postcard::to_extend(value, request)
                .map_err(|e| CallError::BadReply(format!("encode: {e}")))?;
            Ok(())
        }

        /// Sends the request and decodes the reply strictly.
        /// Encodes a byte-string argument from borrowed bytes: the encoding of a
        /// [`Bytes`](crate::Bytes) holding them (serde's bytes path: one length, one copy).
        pub fn arg_bytes(&mut self, bytes: &[u8]) -> Result<(), CallError> {
            self.arg(&crate::bytes::BytesRef(bytes))
        }

        /// Sends the request; the reply stays in the call's buffer for [`Self::view`].
        pub fn send(&mut self) -> Result<(), CallError> {
            self.reply.clear();
            self.transport
                .call(self.method, &self.request, &mut self.reply)
        }

        /// Decodes the reply [`Self::send`] received, strictly, as a value that may borrow from
        /// it (the view of a `<method>_with`: its byte strings are `&[u8]` into the reply).
        pub fn view<'a, V: Deserialize<'a>>(&'a self) -> Result<V, CallError> {
            super::decode_borrowed(&self.reply).map_err(|e| CallError::BadReply(e.to_string()))
        }

        pub fn finish<R: Decode>(mut self) -> Result<R, CallError> {
            self.reply.clear();
            self.transport
                .call(self.method, &self.request, &mut self.reply)?;
            super::decode(&self.reply).map_err(|e| CallError::BadReply(e.to_string()))
        }

        /// Like `finish`, for a method declared `-> Result<R, E>`: the reply is the encoded
        /// `Result`, and the service's error becomes [`Error::Service`].
        pub fn finish_fallible<R: Decode, E: Decode>(self) -> Result<R, Error<E>> {
            self.finish::<Result<R, E>>()?.map_err(Error::Service)
        }
    }

    impl<T: Transport + ?Sized> Drop for Call<'_, T> {
        fn drop(&mut self) {
            if self.request.capacity() <= KEEP_CAP && self.reply.capacity() <= KEEP_CAP {
                let buffers = (
                    std::mem::take(&mut self.request),
                    std::mem::take(&mut self.reply),
                );
                let _ = BUFFERS.try_with(|b| b.set(buffers));
            }
        }
    }

    /// [`crate::Companion::distill_into`] for a server `S`.
    pub fn distill_into<S: crate::Distill>(
        server: &S,
        out: &mut Vec<u8>,
    ) -> Result<(), crate::DistillError> {
        let buf = std::mem::take(out);
        *out = postcard::to_extend(server.distill(), buf)
            .map_err(|e| crate::DistillError::Encode(e.to_string()))?;
        Ok(())
    }

    /// [`crate::Companion::distill_to`] for a server `S`.
    pub fn distill_to<S: crate::Distill>(
        server: &S,
        out: &mut dyn std::io::Write,
    ) -> Result<(), crate::DistillError> {
        postcard::to_io(server.distill(), out)
            .map(|_| ())
            .map_err(|e| crate::DistillError::Encode(e.to_string()))
    }

    /// [`crate::Companion::reconstitute_from`] for a server `S`.
    pub fn reconstitute<S: crate::Distill>(payload: &[u8]) -> Result<S, crate::DistillError> {
        let snapshot: S::Snapshot =
            super::decode(payload).map_err(|e| crate::DistillError::Decode(e.to_string()))?;
        Ok(S::reconstitute(snapshot))
    }

    /// Decodes the next argument of a request from `rest`, advancing it. Never panics.
    pub fn decode_arg<A: Decode>(method: u32, rest: &mut &[u8]) -> Result<A, DispatchError> {
        let (value, tail) =
            postcard::take_from_bytes(rest).map_err(|_| DispatchError::Malformed { method })?;
        *rest = tail;
        Ok(value)
    }

    /// Decodes the next argument of a request, a byte string, borrowed from `rest` (no
    /// allocation), advancing it. Never panics.
    pub fn decode_bytes_arg<'a>(
        method: u32,
        rest: &mut &'a [u8],
    ) -> Result<&'a [u8], DispatchError> {
        let (value, tail) = postcard::take_from_bytes::<crate::BytesRef<'a>>(rest)
            .map_err(|_| DispatchError::Malformed { method })?;
        *rest = tail;
        Ok(value.0)
    }

    /// Where a `serve_<method>` writes its reply: wrapped by the method's generated reply type,
    /// whose `send` takes exactly the method's result (or its lent form).
    pub struct ReplyTo<'w> {
        method: u32,
        out: &'w mut dyn crate::ReplyWriter,
    }

    impl std::fmt::Debug for ReplyTo<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ReplyTo")
                .field("method", &self.method)
                .finish_non_exhaustive()
        }
    }

    impl<'w> ReplyTo<'w> {
        pub fn new(method: u32, out: &'w mut dyn crate::ReplyWriter) -> Self {
            ReplyTo { method, out }
        }

        /// Encodes `value` as the reply (see [`encode_reply`], whose panic it shares).
        #[track_caller]
        pub fn send<R: Encode + ?Sized>(self, value: &R) -> Replied {
            encode_reply(self.method, value, self.out);
            Replied(())
        }
    }

    /// Checks that the request had nothing after its last argument.
    pub fn end_of_request(method: u32, rest: &[u8]) -> Result<(), DispatchError> {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(DispatchError::Malformed { method })
        }
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
    pub fn encode_reply<R: Encode + ?Sized>(
        method: u32,
        value: &R,
        reply: &mut dyn crate::ReplyWriter,
    ) {
        reply.reset();
        if let Err(e) = super::encode_to(value, reply) {
            panic!("the reply of method {method} cannot be encoded: {e}");
        }
    }

    /// [`encode_reply`] for a method declared `-> Result<R, E>`.
    ///
    /// # Panics
    ///
    /// As [`encode_reply`].
    #[track_caller]
    pub fn encode_reply_fallible<R: Encode, E: Encode>(
        method: u32,
        value: &Result<R, E>,
        reply: &mut dyn crate::ReplyWriter,
    ) {
        encode_reply(method, value, reply);
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
        assert!(CallError::Withdrawn { after_ms: 5 }.did_not_run());
        assert!(!CallError::Interrupted.did_not_run());
        assert!(CallError::Refused.did_not_run());
        assert!(!CallError::ReplyTooLarge { cap: 64 }.did_not_run());
        assert!(
            CallError::ReplyTooLarge { cap: 64 }
                .to_string()
                .contains("64 bytes")
        );
    }

    /// Decoding argument by argument (what the dispatcher does) accepts exactly the bytes that
    /// decode as the argument tuple, with the same values: the request is the tuple's encoding.
    fn per_argument_matches_tuple(bytes: &[u8]) {
        type Args = (Vec<u8>, Option<u32>, String, (u8, i64));
        let tuple = decode::<Args>(bytes).ok();
        let per_arg = (|| {
            let mut rest = bytes;
            let a = __private::decode_arg::<Vec<u8>>(1, &mut rest)?;
            let b = __private::decode_arg::<Option<u32>>(1, &mut rest)?;
            let c = __private::decode_arg::<String>(1, &mut rest)?;
            let d = __private::decode_arg::<(u8, i64)>(1, &mut rest)?;
            __private::end_of_request(1, rest)?;
            Ok::<Args, DispatchError>((a, b, c, d))
        })();
        if let Err(e) = &per_arg {
            assert_eq!(*e, DispatchError::Malformed { method: 1 });
        }
        assert_eq!(per_arg.ok(), tuple);
    }

    proptest::proptest! {
        #[test]
        fn per_argument_decoding_is_tuple_decoding(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)) {
            per_argument_matches_tuple(&bytes);
        }

        #[test]
        fn per_argument_encoding_is_tuple_encoding(a: Vec<u8>, b: Option<u32>, c: String, d: (u8, i64)) {
            struct Echo;
            impl Transport for Echo {
                fn call(&self, _: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
                    reply.extend_from_slice(request);
                    Ok(())
                }
            }
            let mut call = __private::Call::new(&Echo, 1);
            call.arg(&a).unwrap();
            call.arg(&b).unwrap();
            call.arg(&c).unwrap();
            call.arg(&d).unwrap();
            let back: (Vec<u8>, Option<u32>, String, (u8, i64)) = call.finish().unwrap();
            proptest::prop_assert_eq!(&back, &(a, b, c, d));
            let mut tuple = Vec::new();
            encode(&back, &mut tuple).unwrap();
            per_argument_matches_tuple(&tuple);
        }
    }
}
