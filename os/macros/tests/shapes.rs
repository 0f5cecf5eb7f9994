//! Trait shapes beyond the Kv example: no readonly methods, many arguments, names that could
//! capture generated locals, private traits in modules, raw identifiers, the long receiver form,
//! a renamed service, user types on the wire.

#![deny(missing_docs, missing_debug_implementations)]
//! (The lints above check that generated items are documented and debuggable.)

use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use txipc_service::{CallError, Dispatch, DispatchError, Transport};

/// A loopback transport over any dispatcher.
#[derive(Debug)]
pub struct Loopback<D>(RefCell<D>);

impl<D: Dispatch> Transport for Loopback<D> {
    fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        self.0
            .borrow_mut()
            .dispatch(method, request, reply)
            .map_err(|e| match e {
                DispatchError::Malformed { .. } => CallError::Malformed,
                DispatchError::UnknownMethod { method } => CallError::UnknownMethod { method },
            })
    }
}

/// A user type on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// x
    pub x: i32,
    /// y
    pub y: i32,
}

/// Arguments named like the generated code's locals and helpers.
#[txipc_service::service]
pub trait Shapes {
    /// Adds two points.
    fn add(&mut self, method: Point, request: Point) -> Point;
    /// Uses the names of the dispatcher's own locals and of the stub's receiver fields.
    fn names(&mut self, reply: u8, transport: u8, server: u8, arg0: u8, arg1: u8) -> u32;
    /// Twenty arguments: more than serde has tuple impls for.
    #[allow(clippy::too_many_arguments, reason = "testing many arguments")]
    fn many(
        &mut self,
        a0: u8,
        a1: u16,
        a2: u32,
        a3: u64,
        a4: i8,
        a5: i16,
        a6: i32,
        a7: i64,
        a8: String,
        a9: Vec<u8>,
        a10: bool,
        a11: char,
        a12: Option<u8>,
        a13: (u8, u8),
        a14: [u8; 3],
        a15: f32,
        a16: f64,
        a17: u128,
        a18: Point,
        a19: (),
    ) -> String;
    /// Explicit `-> ()` and the long receiver form.
    #[allow(clippy::needless_arbitrary_self_type, reason = "testing the long form")]
    fn unit(self: &mut Self) -> ();
    /// A raw identifier.
    fn r#type(&mut self, r#match: u8) -> u8;
    /// A fallible method whose error is a plain String.
    fn fail(&mut self, fail: bool) -> std::result::Result<u8, String>;
    /// A deprecated method: still served, and the client method says so too.
    #[deprecated = "use `add`"]
    fn old(&mut self) -> u8;
}

#[derive(Debug, Default)]
struct ShapesImpl {
    units: u32,
}

impl Shapes for ShapesImpl {
    fn add(&mut self, a: Point, b: Point) -> Point {
        Point {
            x: a.x + b.x,
            y: a.y + b.y,
        }
    }
    fn names(&mut self, reply: u8, transport: u8, server: u8, arg0: u8, arg1: u8) -> u32 {
        [reply, transport, server, arg0, arg1]
            .iter()
            .map(|&b| u32::from(b))
            .sum()
    }
    fn many(
        &mut self,
        a0: u8,
        a1: u16,
        a2: u32,
        a3: u64,
        a4: i8,
        a5: i16,
        a6: i32,
        a7: i64,
        a8: String,
        a9: Vec<u8>,
        a10: bool,
        a11: char,
        a12: Option<u8>,
        a13: (u8, u8),
        a14: [u8; 3],
        a15: f32,
        a16: f64,
        a17: u128,
        a18: Point,
        a19: (),
    ) -> String {
        format!(
            "{a0} {a1} {a2} {a3} {a4} {a5} {a6} {a7} {a8} {a9:?} {a10} {a11} {a12:?} {a13:?} {a14:?} {a15} {a16} {a17} {a18:?} {a19:?}"
        )
    }
    fn unit(&mut self) {
        self.units += 1;
    }
    fn r#type(&mut self, r#match: u8) -> u8 {
        r#match.wrapping_mul(2)
    }
    fn fail(&mut self, fail: bool) -> Result<u8, String> {
        if fail { Err("asked to".into()) } else { Ok(7) }
    }
    fn old(&mut self) -> u8 {
        1
    }
}

fn shapes() -> ShapesClient<Loopback<ShapesDispatcher<ShapesImpl>>> {
    ShapesClient::new(Loopback(RefCell::new(ShapesDispatcher::new(
        ShapesImpl::default(),
    ))))
}

#[test]
fn arguments_named_like_generated_locals() {
    let s = shapes();
    assert_eq!(
        s.add(Point { x: 1, y: 2 }, Point { x: 10, y: 20 }),
        Ok(Point { x: 11, y: 22 })
    );
    assert_eq!(s.names(1, 2, 3, 4, 5), Ok(15));
}

#[test]
fn twenty_arguments_go_back_to_back_on_the_wire() {
    let s = shapes();
    let text = s
        .many(
            1,
            2,
            3,
            4,
            -5,
            -6,
            -7,
            -8,
            "nine".into(),
            vec![10],
            true,
            'c',
            Some(12),
            (13, 13),
            [14; 3],
            1.5,
            2.5,
            17,
            Point { x: 18, y: 18 },
            (),
        )
        .unwrap();
    assert_eq!(
        text,
        "1 2 3 4 -5 -6 -7 -8 nine [10] true c Some(12) (13, 13) [14, 14, 14] 1.5 2.5 17 Point { x: 18, y: 18 } ()"
    );

    // The nesting used for more than 16 arguments does not show in the bytes.
    let mut d = ShapesDispatcher::new(ShapesImpl::default());
    let first16 = (
        1u8,
        2u16,
        3u32,
        4u64,
        -5i8,
        -6i16,
        -7i32,
        -8i64,
        "nine",
        vec![10u8],
        true,
        'c',
        Some(12u8),
        (13u8, 13u8),
        [14u8; 3],
        1.5f32,
    );
    let mut request = postcard::to_allocvec(&first16).unwrap();
    request.extend(postcard::to_allocvec(&(2.5f64, 17u128, Point { x: 18, y: 18 }, ())).unwrap());
    let mut reply = Vec::new();
    d.dispatch(ShapesMethod::Many.id(), &request, &mut reply)
        .unwrap();
    assert_eq!(postcard::from_bytes::<String>(&reply).unwrap(), text);
    request.push(0);
    assert_eq!(
        d.dispatch(ShapesMethod::Many.id(), &request, &mut reply),
        Err(DispatchError::Malformed { method: 3 })
    );
}

#[test]
fn unit_raw_and_fallible_string() {
    let s = shapes();
    assert_eq!(s.unit(), Ok(()));
    assert_eq!(s.unit(), Ok(()));
    assert_eq!(s.transport().0.borrow().inner().units, 2);
    assert_eq!(s.r#type(21), Ok(42));
    assert_eq!(ShapesMethod::Type.name(), "type");
    assert_eq!(s.fail(false), Ok(7));
    assert_eq!(
        s.fail(true),
        Err(txipc_service::Error::Service("asked to".to_string()))
    );
    assert!(ShapesMethod::ALL.iter().all(|m| !m.is_readonly()));
    assert_eq!(SHAPES_SERVICE_NAME, "Shapes");
    #[allow(deprecated, reason = "testing a deprecated method")]
    let old = s.old();
    assert_eq!(old, Ok(1));
}

mod private {
    use txipc_service::service;

    /// A private trait, a renamed service, a name in two words.
    #[service(name = "counter.v2")]
    pub(crate) trait CounterStore {
        /// Adds and returns the total.
        fn add(&mut self, n: u64) -> u64;
        /// The total.
        #[readonly]
        fn total(&mut self) -> u64;
    }

    #[derive(Debug, Default)]
    pub(crate) struct Counter(pub(crate) u64);

    impl CounterStore for Counter {
        fn add(&mut self, n: u64) -> u64 {
            self.0 += n;
            self.0
        }
        fn total(&mut self) -> u64 {
            self.0
        }
    }
}

#[test]
fn private_trait_in_a_module_with_a_given_name() {
    use private::*;
    let c = CounterStoreClient::new(Loopback(RefCell::new(CounterStoreDispatcher::new(
        Counter::default(),
    ))));
    assert_eq!(c.add(2), Ok(2));
    assert_eq!(c.add(3), Ok(5));
    assert_eq!(c.total(), Ok(5));
    assert_eq!(COUNTER_STORE_SERVICE_NAME, "counter.v2");
    assert_eq!(
        <CounterStoreDispatcher<Counter> as Dispatch>::SERVICE,
        "counter.v2"
    );
    assert!(CounterStoreDispatcher::<Counter>::is_readonly(2));
    assert!(!CounterStoreDispatcher::<Counter>::is_readonly(1));
    assert_eq!(
        CounterStoreDispatcher::<Counter>::method_name(2),
        Some("total")
    );
}

/// The client works over a borrowed transport too (`&T: Transport`), and is `Clone` when the
/// transport is.
#[test]
fn client_over_a_borrowed_transport() {
    let transport = Loopback(RefCell::new(ShapesDispatcher::new(ShapesImpl::default())));
    let a = ShapesClient::new(&transport);
    let b = a.clone();
    a.unit().unwrap();
    b.unit().unwrap();
    assert_eq!(transport.0.borrow().inner().units, 2);
}

/// Generated code names everything by absolute path: it compiles without the prelude.
mod no_prelude {
    #![no_implicit_prelude]

    /// Echo.
    #[::txipc_service::service]
    pub trait Bare {
        /// Echo.
        fn echo(&mut self, v: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8>;
        /// A count.
        #[readonly]
        fn count(&mut self) -> ::core::result::Result<u32, ::std::string::String>;
    }
}

/// A module named like the crates generated code uses does not capture its paths.
mod shadowing {
    #![allow(dead_code, reason = "only here to shadow")]
    mod txipc_service {}
    mod core {}
    mod std {}

    /// Ping.
    #[::txipc_service::service]
    pub trait Shadowed {
        /// Ping.
        fn ping(&mut self);
    }
}

#[test]
fn absolute_paths() {
    struct B;
    impl no_prelude::Bare for B {
        fn echo(&mut self, v: Vec<u8>) -> Vec<u8> {
            v
        }
        fn count(&mut self) -> Result<u32, String> {
            Ok(3)
        }
    }
    let c = no_prelude::BareClient::new(Loopback(RefCell::new(no_prelude::BareDispatcher::new(B))));
    assert_eq!(c.echo(vec![1, 2]), Ok(vec![1, 2]));
    assert_eq!(c.count(), Ok(3));
    assert_eq!(shadowing::ShadowedMethod::Ping.id(), 1);
}
