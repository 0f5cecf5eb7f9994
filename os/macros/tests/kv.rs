//! End to end: the `Kv` example from the brief, called through its generated client over an
//! in-process loopback transport that hands each request to the generated dispatcher.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use txipc_service::{CallError, Dispatch, DispatchError, Error, Transport, service};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvError {
    TooLarge { len: u64 },
}

/// The interface from the brief, verbatim.
#[service]
#[allow(
    clippy::type_complexity,
    reason = "the interface from the brief, verbatim"
)]
pub trait Kv {
    #[readonly]
    fn get(&mut self, key: Vec<u8>) -> Result<Option<Vec<u8>>, KvError>;
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), KvError>;
    fn cas(
        &mut self,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, KvError>;
    #[readonly]
    fn scan(&mut self, start: Vec<u8>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError>;
    fn ping(&mut self); // infallible, no args
    #[readonly]
    fn len(&mut self) -> u64;
}

const MAX_VALUE: usize = 16;

#[derive(Debug, Default)]
struct Store {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Handler invocations, to show that a rejected request never reaches the server.
    calls: u32,
}

impl Kv for Store {
    fn get(&mut self, key: Vec<u8>) -> Result<Option<Vec<u8>>, KvError> {
        self.calls += 1;
        Ok(self.map.get(&key).cloned())
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), KvError> {
        self.calls += 1;
        if value.len() > MAX_VALUE {
            return Err(KvError::TooLarge {
                len: value.len() as u64,
            });
        }
        self.map.insert(key, value);
        Ok(())
    }
    fn cas(
        &mut self,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, KvError> {
        self.calls += 1;
        if self.map.get(&key) != expected.as_ref() {
            return Ok(false);
        }
        match new {
            Some(v) => self.map.insert(key, v),
            None => self.map.remove(&key),
        };
        Ok(true)
    }
    fn scan(&mut self, start: Vec<u8>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        self.calls += 1;
        let pairs = self.map.range(start..).take(limit as usize);
        Ok(pairs.map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn ping(&mut self) {
        self.calls += 1;
    }
    fn len(&mut self) -> u64 {
        self.calls += 1;
        self.map.len() as u64
    }
}

/// A transport that dispatches in-process, the way the runtime maps dispatch errors to call
/// errors.
#[derive(Debug)]
struct Loopback<D> {
    dispatcher: RefCell<D>,
    /// Methods seen, in order.
    seen: RefCell<Vec<u32>>,
}

impl<D: Dispatch> Loopback<D> {
    fn new(dispatcher: D) -> Self {
        Loopback {
            dispatcher: RefCell::new(dispatcher),
            seen: RefCell::default(),
        }
    }
}

fn to_call_error(e: DispatchError) -> CallError {
    match e {
        DispatchError::Malformed { .. } => CallError::Malformed,
        DispatchError::UnknownMethod { method } => CallError::UnknownMethod { method },
    }
}

impl<D: Dispatch> Transport for Loopback<D> {
    fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        self.seen.borrow_mut().push(method);
        self.dispatcher
            .borrow_mut()
            .dispatch(method, request, reply)
            .map_err(to_call_error)
    }
}

fn client() -> KvClient<Loopback<KvDispatcher<Store>>> {
    KvClient::new(Loopback::new(KvDispatcher::new(Store::default())))
}

fn store(kv: &KvClient<Loopback<KvDispatcher<Store>>>) -> std::cell::Ref<'_, Store> {
    std::cell::Ref::map(kv.transport().dispatcher.borrow(), |d| d.inner())
}

#[test]
fn every_method_round_trips() -> Result<(), Error<KvError>> {
    let kv = client();
    kv.ping()?;
    assert_eq!(kv.len()?, 0);
    assert_eq!(kv.get(b"a".to_vec())?, None);
    kv.put(b"a".to_vec(), b"1".to_vec())?;
    kv.put(b"b".to_vec(), b"2".to_vec())?;
    kv.put(b"c".to_vec(), Vec::new())?;
    assert_eq!(kv.get(b"a".to_vec())?, Some(b"1".to_vec()));
    assert_eq!(kv.get(b"c".to_vec())?, Some(Vec::new()));
    assert_eq!(kv.len()?, 3);

    assert!(!kv.cas(b"a".to_vec(), Some(b"wrong".to_vec()), Some(b"x".to_vec()))?);
    assert!(kv.cas(b"a".to_vec(), Some(b"1".to_vec()), Some(b"x".to_vec()))?);
    assert!(kv.cas(b"b".to_vec(), Some(b"2".to_vec()), None)?);
    assert!(kv.cas(b"new".to_vec(), None, Some(b"n".to_vec()))?);

    assert_eq!(
        kv.scan(b"a".to_vec(), 2)?,
        vec![(b"a".to_vec(), b"x".to_vec()), (b"c".to_vec(), Vec::new())]
    );
    assert_eq!(kv.scan(b"z".to_vec(), 10)?, vec![]);
    assert_eq!(kv.scan(Vec::new(), 0)?, vec![]);

    // Each call is exactly one transport call with the method's number.
    let seen = kv.transport().seen.borrow().clone();
    use KvMethod::*;
    let expected = [
        Ping, Len, Get, Put, Put, Put, Get, Get, Len, Cas, Cas, Cas, Cas, Scan, Scan, Scan,
    ];
    assert_eq!(seen, expected.map(KvMethod::id));
    assert_eq!(store(&kv).calls, expected.len() as u32);
    Ok(())
}

#[test]
fn service_error_is_kept_apart_from_call_error() {
    let kv = client();
    let err = kv.put(b"k".to_vec(), vec![0; MAX_VALUE + 1]).unwrap_err();
    assert_eq!(
        err,
        Error::Service(KvError::TooLarge {
            len: MAX_VALUE as u64 + 1
        })
    );
    assert_eq!(kv.len(), Ok(0));

    // A transport failure is a call error, for fallible and infallible methods alike.
    struct Down;
    impl Transport for Down {
        fn call(&self, _: u32, _: &[u8], _: &mut Vec<u8>) -> Result<(), CallError> {
            Err(CallError::Unavailable {
                reason: "held down".into(),
            })
        }
    }
    let down = KvClient::new(Down);
    let unavailable = CallError::Unavailable {
        reason: "held down".into(),
    };
    assert_eq!(
        down.get(b"k".to_vec()),
        Err(Error::Call(unavailable.clone()))
    );
    assert_eq!(down.len(), Err(unavailable.clone()));
    assert_eq!(down.ping(), Err(unavailable));
}

/// A transport whose replies are whatever the test says.
struct Canned(Vec<u8>);

impl Transport for Canned {
    fn call(&self, _: u32, _: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        reply.extend_from_slice(&self.0);
        Ok(())
    }
}

#[test]
fn replies_are_decoded_strictly() {
    fn bad_reply<T: std::fmt::Debug>(r: Result<T, CallError>) {
        assert!(matches!(r, Err(CallError::BadReply(_))), "{r:?}");
    }
    // `len`: a u64 reply. Empty, trailing bytes, truncated varint.
    bad_reply(KvClient::new(Canned(vec![])).len());
    bad_reply(KvClient::new(Canned(vec![5, 0])).len());
    bad_reply(KvClient::new(Canned(vec![0x80])).len());
    assert_eq!(KvClient::new(Canned(vec![5])).len(), Ok(5));
    // `ping`: a unit reply is no bytes; anything else is bad.
    assert_eq!(KvClient::new(Canned(vec![])).ping(), Ok(()));
    bad_reply(KvClient::new(Canned(vec![0])).ping());
    // `get`: a Result. Unknown variant, trailing bytes.
    let get = |bytes: Vec<u8>| KvClient::new(Canned(bytes)).get(Vec::new());
    assert_eq!(get(vec![0, 0]), Ok(None));
    assert_eq!(
        get(vec![1, 0, 7]),
        Err(Error::Service(KvError::TooLarge { len: 7 }))
    );
    assert!(matches!(
        get(vec![2, 0]),
        Err(Error::Call(CallError::BadReply(_)))
    ));
    assert!(matches!(
        get(vec![0, 0, 0]),
        Err(Error::Call(CallError::BadReply(_)))
    ));
}

#[test]
fn wire_format_is_postcard_of_the_argument_tuple() {
    /// Records the request, replies with a fixed reply.
    struct Spy(RefCell<Vec<(u32, Vec<u8>)>>, Vec<u8>);
    impl Transport for Spy {
        fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
            self.0.borrow_mut().push((method, request.to_vec()));
            reply.extend_from_slice(&self.1);
            Ok(())
        }
    }
    let spy = KvClient::new(Spy(
        RefCell::default(),
        postcard::to_allocvec(&Ok::<(), KvError>(())).unwrap(),
    ));
    spy.put(b"key".to_vec(), b"value".to_vec()).unwrap();
    let (method, request) = spy.transport().0.borrow()[0].clone();
    assert_eq!(method, 2);
    assert_eq!(
        request,
        postcard::to_allocvec(&(b"key".to_vec(), b"value".to_vec())).unwrap()
    );
    // Both arguments back to back, no framing: postcard's tuple encoding.
    assert_eq!(request, b"\x03key\x05value");

    let unit = KvClient::new(Spy(RefCell::default(), vec![]));
    unit.ping().unwrap();
    assert_eq!(unit.transport().0.borrow()[0], (5, vec![]));

    // The dispatcher's replies.
    let mut d = KvDispatcher::new(Store::default());
    let mut reply = vec![0xAA; 3]; // stale contents are replaced
    d.dispatch(5, &[], &mut reply).unwrap();
    assert_eq!(reply, b"");
    d.dispatch(2, b"\x01k\x01v", &mut reply).unwrap();
    assert_eq!(reply, b"\x00"); // Ok(())
    d.dispatch(1, b"\x01k", &mut reply).unwrap();
    assert_eq!(reply, b"\x00\x01\x01v"); // Ok(Some(b"v"))
    d.dispatch(2, b"\x01k\x11AAAAAAAAAAAAAAAAA", &mut reply)
        .unwrap();
    assert_eq!(reply, b"\x01\x00\x11"); // Err(TooLarge { len: 17 })
    d.dispatch(6, &[], &mut reply).unwrap();
    assert_eq!(reply, b"\x01");
}

#[test]
fn malformed_requests_are_rejected_before_the_server_runs() {
    let mut d = KvDispatcher::new(Store::default());
    let mut reply = vec![1, 2, 3];
    let malformed: &[(u32, &[u8])] = &[
        (1, b""),                         // get: missing key
        (1, b"\x05ab"),                   // get: key shorter than its length
        (1, b"\x01k\x00"),                // get: trailing byte
        (2, b"\x01k"),                    // put: missing value
        (3, b"\x01k\x02"),                // cas: Option tag 2
        (4, b"\x00\xff\xff\xff\xff\xff"), // scan: limit overflows u32
        (5, b"\x00"),                     // ping: takes no bytes
        (6, b"\x00"),                     // len: takes no bytes
    ];
    for &(method, request) in malformed {
        assert_eq!(
            d.dispatch(method, request, &mut reply),
            Err(DispatchError::Malformed { method }),
            "method {method}, request {request:?}"
        );
        assert!(reply.is_empty(), "the reply is cleared on error");
    }
    assert_eq!(d.inner().calls, 0);
    assert!(d.inner().map.is_empty());

    // Through the client, the runtime's mapping makes it a call error that did not run.
    let kv = client();
    let e = kv
        .transport()
        .call(1, b"\x01k\x00", &mut Vec::new())
        .unwrap_err();
    assert_eq!(e, CallError::Malformed);
    assert!(e.did_not_run());
}

#[test]
fn unknown_methods_are_rejected() {
    let mut d = KvDispatcher::new(Store::default());
    let mut reply = Vec::new();
    for method in [0, 7, 8, 1000, u32::MAX] {
        assert_eq!(
            d.dispatch(method, &[], &mut reply),
            Err(DispatchError::UnknownMethod { method })
        );
        assert_eq!(KvDispatcher::<Store>::method_name(method), None);
        assert!(!KvDispatcher::<Store>::is_readonly(method));
        assert_eq!(KvMethod::from_id(method), None);
    }
    assert_eq!(d.inner().calls, 0);
}

#[test]
fn method_table() {
    type D = KvDispatcher<Store>;
    assert_eq!(KV_SERVICE_NAME, "Kv");
    assert_eq!(<D as Dispatch>::SERVICE, "Kv");
    let table: Vec<(u32, &str, bool)> = KvMethod::ALL
        .iter()
        .map(|m| (m.id(), m.name(), m.is_readonly()))
        .collect();
    assert_eq!(
        table,
        [
            (1, "get", true),
            (2, "put", false),
            (3, "cas", false),
            (4, "scan", true),
            (5, "ping", false),
            (6, "len", true)
        ]
    );
    for m in KvMethod::ALL {
        assert_eq!(KvMethod::from_id(m.id()), Some(m));
        assert_eq!(D::method_name(m.id()), Some(m.name()));
        assert_eq!(D::is_readonly(m.id()), m.is_readonly());
        assert_eq!(m as u32, m.id());
    }
}

#[test]
fn dispatcher_gives_the_server_back() {
    let mut d = KvDispatcher::new(Store::default());
    d.inner_mut().map.insert(b"k".to_vec(), b"v".to_vec());
    let mut reply = Vec::new();
    d.dispatch(KvMethod::Len.id(), &[], &mut reply).unwrap();
    assert_eq!(reply, [1]);
    let store = d.into_inner();
    assert_eq!(store.calls, 1);
    let t = KvClient::new(Canned(vec![])).into_transport();
    assert!(t.0.is_empty());
}

/// A server that, while handling a request, calls another service on the same thread (nested
/// IPC in-process): the client's reusable buffers must not be shared between the two calls.
#[service]
pub trait Front {
    fn relay(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<u64, KvError>;
}

struct Relay(KvClient<Loopback<KvDispatcher<Store>>>);

impl Front for Relay {
    fn relay(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<u64, KvError> {
        match self.0.put(key.clone(), value) {
            Ok(()) => {}
            Err(Error::Service(e)) => return Err(e),
            Err(Error::Call(e)) => panic!("{e}"),
        }
        assert_eq!(self.0.get(key).unwrap().map(|v| v.len()), Some(3));
        Ok(self.0.len().unwrap())
    }
}

#[test]
fn nested_calls_on_one_thread() {
    let front = FrontClient::new(Loopback::new(FrontDispatcher::new(Relay(client()))));
    assert_eq!(front.relay(b"a".to_vec(), b"one".to_vec()), Ok(1));
    assert_eq!(front.relay(b"b".to_vec(), b"two".to_vec()), Ok(2));
    assert_eq!(
        front.relay(b"c".to_vec(), vec![0; 20]),
        Err(Error::Service(KvError::TooLarge { len: 20 }))
    );
}

proptest! {
    /// Any bytes, any method: `dispatch` answers or rejects, never panics, and never leaves a
    /// reply behind a rejection.
    #[test]
    fn dispatch_never_panics(method in 0u32..9, request in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut d = KvDispatcher::new(Store::default());
        let mut reply = vec![0xEE];
        match d.dispatch(method, &request, &mut reply) {
            Ok(()) => prop_assert_eq!(d.inner().calls, 1),
            Err(DispatchError::UnknownMethod { method: m }) => {
                prop_assert_eq!(m, method);
                prop_assert!(KvMethod::from_id(method).is_none());
                prop_assert!(reply.is_empty());
            }
            Err(DispatchError::Malformed { method: m }) => {
                prop_assert_eq!(m, method);
                prop_assert_eq!(d.inner().calls, 0);
                prop_assert!(reply.is_empty());
            }
        }
    }

    /// Whatever a client sends, the request bytes decode back to exactly its arguments.
    #[test]
    fn requests_round_trip(key in proptest::collection::vec(any::<u8>(), 0..24),
                           expected in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                           new in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))) {
        let kv = client();
        if let Some(e) = &expected {
            kv.put(key.clone(), e.clone()).unwrap();
        }
        prop_assert_eq!(kv.cas(key.clone(), expected.clone(), new.clone()), Ok(true));
        prop_assert_eq!(kv.get(key), Ok(new));
    }
}

/// Every request of up to two bytes, for every method number around the table: each is
/// answered or rejected, never a panic.
#[test]
fn dispatch_exhaustive_short_requests() {
    let mut reply = Vec::new();
    let mut d = KvDispatcher::new(Store::default());
    let mut answered = 0;
    for method in 0..=8u32 {
        let requests = std::iter::once(vec![])
            .chain((0..=255u8).map(|a| vec![a]))
            .chain((0..=u16::MAX).map(|n| n.to_le_bytes().to_vec()));
        for r in requests {
            answered += u32::from(d.dispatch(method, &r, &mut reply).is_ok());
        }
    }
    // ping and len: only the empty request; get: key lengths 0 and 1 (one byte follows).
    assert!(answered > 0);
}
