//! `#[service]`: turns a Rust trait into a txipc service interface.
//!
//! A txipc server is a process that clients reach through shared-memory channels; what travels
//! is a method number and bytes. This crate writes, from one trait, everything both ends need to
//! agree on those bytes: the method numbers, the request and reply encoding, a client stub over
//! any `txipc_service::Transport` and a server dispatcher implementing `txipc_service::Dispatch`. Interface crates use it
//! through the re-export `txipc_service::service` and depend on nothing else of txipc.
//!
//! Design principles:
//! - **The trait is the contract.** Method numbers follow declaration order, so the interface
//!   file alone says what goes on the wire; there is no second description to keep in step.
//! - **Bytes from the other side are an allegation.** The dispatcher decodes a request fully
//!   (trailing bytes included) before the handler runs and answers bad input with
//!   `txipc_service::DispatchError`, never with a panic; the client decodes replies just as strictly.
//! - **Misuse is a compile error where it is written**, saying what to do instead.
//!
//! # Example
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use txipc_service::{Bytes, service};
//!
//! #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
//! pub enum KvError {
//!     TooLarge,
//! }
//!
//! #[service]
//! pub trait Kv {
//!     #[readonly]
//!     fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError>;
//!     fn put(&mut self, key: Bytes, value: Bytes) -> Result<(), KvError>;
//!     fn cas(&mut self, key: Bytes, expected: Option<Bytes>, new: Option<Bytes>) -> Result<bool, KvError>;
//!     #[readonly]
//!     fn scan(&mut self, start: Bytes, limit: u32) -> Result<Vec<(Bytes, Bytes)>, KvError>;
//!     fn ping(&mut self);   // infallible, no args
//!     #[readonly]
//!     fn len(&mut self) -> u64;
//! }
//!
//! // A server implements the trait...
//! #[derive(Default)]
//! struct Store(std::collections::BTreeMap<Bytes, Bytes>);
//!
//! impl Kv for Store {
//!     fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, KvError> {
//!         Ok(self.0.get(&key).cloned())
//!     }
//!     fn put(&mut self, key: Bytes, value: Bytes) -> Result<(), KvError> {
//!         self.0.insert(key, value);
//!         Ok(())
//!     }
//!     fn cas(&mut self, key: Bytes, expected: Option<Bytes>, new: Option<Bytes>) -> Result<bool, KvError> {
//!         if self.0.get(&key) != expected.as_ref() {
//!             return Ok(false);
//!         }
//!         match new {
//!             Some(v) => self.0.insert(key, v),
//!             None => self.0.remove(&key),
//!         };
//!         Ok(true)
//!     }
//!     fn scan(&mut self, start: Bytes, limit: u32) -> Result<Vec<(Bytes, Bytes)>, KvError> {
//!         let pairs = self.0.range(start..).take(limit as usize);
//!         Ok(pairs.map(|(k, v)| (k.clone(), v.clone())).collect())
//!     }
//!     fn ping(&mut self) {}
//!     fn len(&mut self) -> u64 {
//!         self.0.len() as u64
//!     }
//! }
//!
//! // ...the runtime runs it through the generated dispatcher...
//! use txipc_service::{CallError, Dispatch, Transport};
//! use std::cell::RefCell;
//!
//! struct Loopback(RefCell<KvDispatcher<Store>>);
//!
//! impl Transport for Loopback {
//!     fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
//!         self.0.borrow_mut().dispatch(method, request, reply).map_err(|e| match e {
//!             txipc_service::DispatchError::Malformed { .. } => CallError::Malformed,
//!             txipc_service::DispatchError::UnknownMethod { method } => CallError::UnknownMethod { method },
//!         })
//!     }
//! }
//!
//! // ...and a client calls it through the generated stub.
//! let kv = KvClient::new(Loopback(RefCell::new(KvDispatcher::new(Store::default()))));
//! kv.put(b"k", "v")?; // `Bytes` arguments take anything that converts into `Bytes`
//! assert_eq!(kv.get(b"k")?, Some(Bytes::from(b"v")));
//! assert_eq!(kv.len()?, 1);
//! assert_eq!(KvMethod::Get.id(), 1);
//! assert!(KvDispatcher::<Store>::is_readonly(KvMethod::Scan.id()));
//! assert_eq!(KV_SERVICE_NAME, "Kv");
//! # Ok::<(), txipc_service::Error<KvError>>(())
//! ```
//!
//! # What is generated
//!
//! For `#[service] pub trait Kv { .. }` (every item has the trait's visibility; all generated
//! items are documented and implement `Debug`):
//!
//! | item | what |
//! | --- | --- |
//! | `trait Kv` | the trait as written, `#[readonly]` removed (and `clippy::len_without_is_empty` allowed: a service's `len` is not a collection's), plus a provided `serve_<m>` per method with byte strings (below) |
//! | `const KV_SERVICE_NAME: &str` | `"Kv"`: the service's name in manifests and grants; the trait's name in `SCREAMING_SNAKE_CASE`, then `_SERVICE_NAME` |
//! | `enum KvMethod` | one variant per method in `UpperCamelCase` (`get` → `Get`), `#[repr(u32)]` with the method number as discriminant; `Copy + Eq + Hash`; `const ALL: [Self; N]`, `const fn id(self) -> u32`, `const fn from_id(u32) -> Option<Self>`, `const fn name(self) -> &'static str`, `const fn is_readonly(self) -> bool`, `const fn capture(self) -> txipc_service::Capture` |
//! | `struct KvClient<T: Transport>` | the client stub (`Clone` if `T` is): `const fn new(transport: T) -> Self`, `const fn transport(&self) -> &T`, `fn into_transport(self) -> T`, and per method `fn m(&self, args..) -> ..` with the trait method's arguments, docs, `#[allow]` and `#[deprecated]` (and `fn m_with` for a method whose result holds a `Bytes`, below) |
//! | `struct KvGetReply<'w>` | per method with byte strings: the reply handle of its serving form `Kv::serve_get` (see "Borrowed forms" below) |
//! | `struct KvDispatcher<S: Kv>` | the server side: `const fn new(server: S) -> Self`, `fn into_inner(self) -> S`, and `txipc_service::Dispatch` (`Inner = S`, `SERVICE = KV_SERVICE_NAME`) |
//! | `struct KvCompanion<S: Kv + Distill>` | the server side under policy `companion`: `Dispatch` as above, and `txipc_service::Companion` (the state version, `capture` per method, distill the state into postcard bytes, reconstitute from them, a fresh server). A server type without `txipc_service::Distill` is a compile error naming what to implement |
//!
//! A client method returns
//! - `Result<R, txipc_service::Error<E>>` when the trait method is declared `-> Result<R, E>`
//!   (any path whose last segment is `Result` with two type arguments):
//!   `txipc_service::Error::Service` is the server's own error, `txipc_service::Error::Call` the
//!   system's;
//! - `Result<R, txipc_service::CallError>` when it is declared `-> R`, and
//!   `Result<(), CallError>` when it returns nothing.
//!
//! An argument declared as `Bytes` (`txipc_service::Bytes`, any path ending in `Bytes`) is
//! taken by the client method as `impl AsRef<[u8]>`, so callers pass `b"key"`, `&[u8]`, `&str`,
//! `String`, `Vec<u8>` or `&Bytes` as they are, and the stub encodes the borrowed bytes
//! straight into its request buffer (no `Bytes` is built, nothing is allocated). Use `Bytes`,
//! not `Vec<u8>`, for byte payloads: it is encoded as one length and one copy, where serde
//! moves a `Vec<u8>` a byte at a time.
//!
//! A client reuses per-thread request and reply buffers, so a call allocates nothing once they
//! have grown (a nested call on the same thread, as an in-process loopback makes, gets its own).
//!
//! # Borrowed forms: calls with byte strings that allocate nothing
//!
//! Beside every method with a `Bytes` (as an argument, or anywhere in its result as written:
//! `Option<Bytes>`, `(Bytes, u32)`, `Vec<Bytes>`; not behind a type alias), `#[service]`
//! generates two more forms. Neither changes the wire format: they encode and decode the same
//! bytes as the owned method.
//!
//! - **Client, `fn get_with<O>(&self, key, f: impl FnOnce(Option<&[u8]>) -> O) -> Result<O, ..>`**
//!   (for a method whose result holds a `Bytes`): the call's result with every `Bytes` of it
//!   as a `&[u8]` borrowed from the reply buffer, handed to `f`, whose value is returned (for
//!   `-> Result<R, E>`: `f` gets `R`'s borrowed form, a service error is
//!   `txipc_service::Error::Service` as usual). Nothing is allocated once the per-thread buffers
//!   have grown; the value is copied once, out of the channel, and `f` copies it on only if it
//!   wants: `kv.get_with(key, |v| v.map(|v| out.extend_from_slice(v)))`.
//! - **Server, a provided trait method `fn serve_get(&mut self, key: &[u8], reply:
//!   KvGetReply<'_>) -> txipc_service::Replied`**: what the dispatcher calls. Every `Bytes`
//!   argument is borrowed from the request (already copied out of shared memory, fully
//!   decoded before the handler runs, as for the owned form); other arguments are as declared.
//!   The reply type `KvGetReply` (one per such method, `<Trait><Variant>Reply`) has `send`,
//!   which takes the result with every `Bytes` replaced by `txipc_service::BytesRef<'_>`
//!   (`&Result<Option<BytesRef<'_>>, KvError>`), and `send_owned`, which takes the declared
//!   result; the `Replied` they return is the only way to finish, so a handler cannot forget
//!   to answer. **The default body calls the owned method** (`get`) with owned copies and
//!   sends its result, so a server that does not care writes nothing; one that overrides it
//!   lends the bytes of its state to the reply, which the runtime encodes straight into the
//!   channel's slot: a value is copied once, from the server's state into shared memory, and
//!   nothing is allocated. An override must answer exactly as the owned method would (the
//!   companion's replay compares reply digests, and the owned method is what tests and other
//!   transports may still call).
//!
//! A method named like a generated form of another (`get_with`, `serve_get` beside a `get`
//! that has them) is a compile error.
//!
//! # Wire format
//!
//! - **Method number**: the method's position in the trait, counting from 1 (0 is reserved as
//!   "no method"). Numbers are the interface's ABI: add new methods at the end; never reorder,
//!   insert or remove (to retire a method, keep it and have servers return an error).
//! - **Request**: the arguments in [postcard](https://docs.rs/postcard), back to back: exactly
//!   the postcard encoding of the argument tuple, for any number of arguments (also above the
//!   16 that serde implements tuples for). A method without arguments sends no bytes.
//! - **Reply**: the return value in postcard; for `-> Result<R, E>` the whole `Result` (`0`
//!   then `R`, or `1` then `E`); for `()`, no bytes.
//!
//! Decoding is strict on both sides: bytes left over after the value are an error
//! (`DispatchError::Malformed` at the server, `CallError::BadReply` at the client). The
//! dispatcher decodes every argument before it calls the server, so a malformed request never
//! runs; it never panics on any input. A reply the server cannot encode (only a failing
//! hand-written `Serialize` can cause that) panics, as a fault of that request: the method has
//! already run, so answering as if it had not would be wrong.
//!
//! # Rules for the trait
//!
//! Breaking one is a compile error at the offending tokens that says what to write instead.
//!
//! - Every method takes **`&mut self`**: a server handles one request at a time, inside a
//!   transaction over its state, so a handler always has its state to itself. `&self` would
//!   suggest concurrent handlers and push state into interior mutability the runtime cannot see;
//!   a method that changes nothing is marked `#[readonly]` instead (the companion runtime then
//!   does not log it: `companion::readonly_requests_are_not_logged`; under `txipc` it still
//!   runs in a transaction, which logs nothing when nothing is written). `self` by value would consume the server, which outlives every request.
//! - Arguments and results are **owned wire types**, `Serialize + DeserializeOwned`: no
//!   references or borrowed lifetimes, no `impl Trait`, no `Self`. A type without the serde
//!   traits is reported by the compiler at the type ("cannot be sent over a channel" /
//!   "cannot be received over a channel").
//! - **No default bodies**: the interface crate is what clients compile against; server
//!   behaviour there would be invisible in the server crate, and a server could "implement" a
//!   method it never wrote. Put the body in the server's `impl`.
//! - No generics or `where` clauses, `async`, `unsafe`, `extern`, `const`, associated types or
//!   consts, or macro invocations among the items: none of them means anything on the other side
//!   of a channel.
//! - No `#[cfg]` on methods: it would renumber the methods after it.
//! - No method named `new`, `transport` or `into_transport` (the client's own methods), and no
//!   two methods with the same `UpperCamelCase` name.
//!
//! Attribute arguments: `#[service(name = "kv")]` sets the service name (default: the trait's
//! name). Method attributes: `#[readonly]`, without arguments (the method changes no state: the
//! companion does not log it); `#[capture(now)]` (the companion takes a checkpoint right after
//! this method) or `#[capture(defer)]` (never right after it: the state is between two steps of
//! a multi-request protocol), not on a `#[readonly]` method. `KvMethod::capture` returns it
//! (`txipc_service::Capture`). Whether a `#[readonly]` method really changes nothing cannot be
//! seen from the trait (no bodies; every method takes `&mut self`): it is the author's promise.
#![forbid(unsafe_code)]

mod expand;
mod model;

use proc_macro::TokenStream;

/// Turns a trait into a txipc service interface. See the [crate docs](crate) for what is
/// generated, the wire format and the rules.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::service(attr.into(), item.into()).into()
}
