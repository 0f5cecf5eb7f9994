//! The borrowed forms `#[service]` generates beside every method with byte strings: the
//! client's `<method>_with` (the result handed to a closure, its byte strings borrowed from
//! the reply) and the trait's `serve_<method>` (the dispatcher's entry: `Bytes` arguments
//! borrowed from the request, a reply whose `send` lends byte strings). Both keep the wire
//! format: a server that lends and one that answers with owned values send the same bytes,
//! and owned and borrowing clients read them alike.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use txipc_service::{
    Bytes, BytesRef, CallError, Dispatch, DispatchError, Error, Replied, Transport, service,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreError {
    Empty,
}

#[service]
pub trait Store {
    fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, StoreError>;
    fn set(&mut self, key: Bytes, value: Option<Bytes>);
    fn pair(&mut self, key: Bytes, n: u32) -> (Bytes, u32);
    fn all(&mut self) -> Vec<(Bytes, Bytes)>;
    /// No byte string anywhere: no borrowed forms.
    fn len(&mut self) -> u64;
}

/// Answers with owned values only (the default serving forms).
#[derive(Default)]
struct Owned(BTreeMap<Bytes, Bytes>);

impl Store for Owned {
    fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::Empty);
        }
        Ok(self.0.get(&key).cloned())
    }
    fn set(&mut self, key: Bytes, value: Option<Bytes>) {
        match value {
            Some(v) => self.0.insert(key, v),
            None => self.0.remove(&key),
        };
    }
    fn pair(&mut self, key: Bytes, n: u32) -> (Bytes, u32) {
        (self.0.get(&key).cloned().unwrap_or_default(), n)
    }
    fn all(&mut self) -> Vec<(Bytes, Bytes)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    fn len(&mut self) -> u64 {
        self.0.len() as u64
    }
}

/// The same store, lending: `get`, `pair` and `all` answer from the map without building a
/// `Bytes`; `set` takes its key borrowed. It counts how often each lending form ran.
#[derive(Default)]
struct Lending {
    inner: Owned,
    lent: u32,
}

impl Store for Lending {
    fn get(&mut self, _: Bytes) -> Result<Option<Bytes>, StoreError> {
        unreachable!("the dispatcher calls serve_get")
    }
    fn set(&mut self, key: Bytes, value: Option<Bytes>) {
        self.inner.set(key, value)
    }
    fn pair(&mut self, _: Bytes, _: u32) -> (Bytes, u32) {
        unreachable!("the dispatcher calls serve_pair")
    }
    fn all(&mut self) -> Vec<(Bytes, Bytes)> {
        unreachable!("the dispatcher calls serve_all")
    }
    fn len(&mut self) -> u64 {
        self.inner.len()
    }

    fn serve_get(&mut self, key: &[u8], reply: StoreGetReply<'_>) -> Replied {
        self.lent += 1;
        if key.is_empty() {
            return reply.send(&Err(StoreError::Empty));
        }
        reply.send(&Ok(self.inner.0.get(key).map(BytesRef::from)))
    }
    fn serve_pair(&mut self, key: &[u8], n: u32, reply: StorePairReply<'_>) -> Replied {
        self.lent += 1;
        let v = self.inner.0.get(key).map_or(&[][..], |v| v.as_slice());
        reply.send(&(BytesRef(v), n))
    }
    fn serve_all(&mut self, reply: StoreAllReply<'_>) -> Replied {
        self.lent += 1;
        let all: Vec<_> = self
            .inner
            .0
            .iter()
            .map(|(k, v)| (BytesRef::from(k), BytesRef::from(v)))
            .collect();
        reply.send(&all)
    }
}

struct Loop<S: Store>(RefCell<StoreDispatcher<S>>, RefCell<Vec<Vec<u8>>>);

impl<S: Store> Loop<S> {
    fn new(s: S) -> Self {
        Loop(
            RefCell::new(StoreDispatcher::new(s)),
            RefCell::new(Vec::new()),
        )
    }
}

impl<S: Store> Transport for Loop<S> {
    fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        self.0
            .borrow_mut()
            .dispatch(method, request, reply)
            .map_err(|e| match e {
                DispatchError::Malformed { .. } => CallError::Malformed,
                DispatchError::UnknownMethod { method } => CallError::UnknownMethod { method },
            })?;
        self.1.borrow_mut().push(reply.clone());
        Ok(())
    }
}

fn fill<T: Transport>(c: &StoreClient<T>) {
    c.set(b"a", Some(Bytes::from(vec![1u8; 300]))).unwrap();
    c.set("b", Some("two".into())).unwrap();
    c.set(b"c", Some(Bytes::new())).unwrap();
    c.set(b"c", None).unwrap();
}

/// Every call in both forms; what each returned, as text.
fn exercise<T: Transport>(c: &StoreClient<T>) -> Vec<String> {
    let mut out = Vec::new();
    for key in [&b"a"[..], b"b", b"c", b""] {
        let owned = c.get(key);
        let with = c.get_with(key, |v| v.map(<[u8]>::to_vec));
        // The borrowing form gives the same answer, the service's error apart.
        match &owned {
            Ok(v) => assert_eq!(with.clone().unwrap(), v.clone().map(Bytes::into_vec)),
            Err(Error::Service(e)) => {
                assert_eq!(with.clone().unwrap_err(), Error::Service(e.clone()))
            }
            Err(e) => panic!("{e:?}"),
        }
        out.push(format!("{owned:?} {with:?}"));
        let pair = c.pair(key, 7).unwrap();
        let with = c.pair_with(key, 9, |(v, n)| (v.to_vec(), n)).unwrap();
        assert_eq!((pair.0.to_vec(), 9), with);
        out.push(format!("{pair:?}"));
    }
    let all = c.all().unwrap();
    let keys = c
        .all_with(|all| all.iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(
        keys,
        all.iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>()
    );
    out.push(format!("{all:?} {}", c.len().unwrap()));
    out
}

#[test]
fn lending_and_owned_servers_send_the_same_bytes_and_both_client_forms_read_them() {
    let owned = StoreClient::new(Loop::new(Owned::default()));
    let lending = StoreClient::new(Loop::new(Lending::default()));
    fill(&owned);
    fill(&lending);
    let a = exercise(&owned);
    assert_eq!(exercise(&lending), a);
    assert!(a[0].starts_with("Ok(Some("), "{}", a[0]);
    // Byte for byte the same replies, and the lending forms did run.
    assert_eq!(
        *owned.transport().1.borrow(),
        *lending.transport().1.borrow()
    );
    assert!(lending.transport().0.borrow().inner().lent >= 10);
}

#[test]
fn a_borrowed_argument_is_decoded_as_strictly_as_an_owned_one() {
    let lending = StoreClient::new(Loop::new(Lending::default()));
    let d = &lending.transport().0;
    let get = StoreMethod::Get.id();
    let mut reply = Vec::new();
    // A length past the end, trailing bytes, nothing at all.
    for bad in [&[5u8, b'a'][..], &[1, b'a', 0], &[]] {
        assert_eq!(
            d.borrow_mut().dispatch(get, bad, &mut reply),
            Err(DispatchError::Malformed { method: get }),
            "{bad:?}"
        );
    }
    assert_eq!(d.borrow().inner().lent, 0, "a malformed request never runs");
}

#[test]
fn a_reply_the_client_cannot_borrow_from_is_a_bad_reply() {
    struct Garbage;
    impl Transport for Garbage {
        fn call(&self, _: u32, _: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
            // Ok, Some, a length of 5 with 1 byte.
            reply.extend_from_slice(&[0, 1, 5, 9]);
            Ok(())
        }
    }
    let c = StoreClient::new(Garbage);
    assert!(matches!(
        c.get_with(b"k", |_| ()),
        Err(Error::Call(CallError::BadReply(_)))
    ));
}
