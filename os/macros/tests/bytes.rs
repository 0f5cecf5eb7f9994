//! `Bytes` in a service: the client stub takes `impl AsRef<[u8]>`, and the wire format is the
//! one a `Vec<u8>` interface has (so switching an interface to `Bytes` keeps its ABI).

use std::cell::RefCell;

use txipc_service::{Bytes, CallError, Transport, service};

#[service]
pub trait Blob {
    fn put(&mut self, key: Bytes, value: txipc_service::Bytes, tag: Option<Bytes>) -> Bytes;
}

#[service]
pub trait BlobVec {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, tag: Option<Vec<u8>>) -> Vec<u8>;
}

struct Echo(RefCell<Vec<Vec<u8>>>);

impl Transport for Echo {
    fn call(&self, _: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        self.0.borrow_mut().push(request.to_vec());
        // Reply: the value argument, re-encoded (a server that returns `value`).
        let (_, value, _): (Vec<u8>, Vec<u8>, Option<Vec<u8>>) =
            txipc_service::decode(request).unwrap();
        txipc_service::encode(&value, reply)
    }
}

#[test]
fn bytes_arguments_take_anything_byte_like_and_keep_the_vec_wire_format() {
    let bytes = BlobClient::new(Echo(RefCell::new(Vec::new())));
    let vecs = BlobVecClient::new(Echo(RefCell::new(Vec::new())));
    let value: Vec<u8> = (0..=255).collect();
    let r1 = bytes.put(b"k", &value[..], Some(Bytes::from("t"))).unwrap();
    let r2 = bytes.put("k", value.clone(), Some("t".into())).unwrap();
    let r3 = bytes
        .put(
            String::from("k"),
            Bytes::from(value.clone()),
            Some(b"t".into()),
        )
        .unwrap();
    let v = vecs
        .put(b"k".to_vec(), value.clone(), Some(b"t".to_vec()))
        .unwrap();
    assert_eq!(r1, value);
    assert_eq!(r2, value);
    assert_eq!(r3, value);
    assert_eq!(v, value);
    let sent = bytes.transport().0.borrow();
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|r| *r == vecs.transport().0.borrow()[0]));
}

#[test]
fn a_bytes_server_decodes_a_vec_client_and_rejects_garbage() {
    #[derive(Default)]
    struct S(Vec<Bytes>);
    impl Blob for S {
        fn put(&mut self, key: Bytes, value: Bytes, tag: Option<Bytes>) -> Bytes {
            self.0.push(key);
            let _ = tag;
            value
        }
    }
    use txipc_service::Dispatch;
    let mut d = BlobDispatcher::new(S::default());
    let mut req = Vec::new();
    txipc_service::encode(
        &(b"key".to_vec(), vec![9u8; 1000], None::<Vec<u8>>),
        &mut req,
    )
    .unwrap();
    let mut reply = Vec::new();
    d.dispatch(BlobMethod::Put.id(), &req, &mut reply).unwrap();
    let back: Vec<u8> = txipc_service::decode(&reply).unwrap();
    assert_eq!(back, vec![9u8; 1000]);
    assert_eq!(d.inner().0, vec![Bytes::from("key")]);
    // Every truncation is malformed, never a panic.
    for cut in 0..req.len() {
        assert!(
            d.dispatch(BlobMethod::Put.id(), &req[..cut], &mut reply)
                .is_err()
        );
    }
}
