//! The CPU parts of a 1,000-byte kv get, each measured alone in this process (no channel, no
//! second core): what the server's handler, its encoder and the client's decoder cost, against
//! a plain copy of the bytes; the owned forms (`get`, a handler returning a `Bytes`) and the
//! borrowed ones (`serve_get` lending the value, `get_with` reading it in place). The rest of a kv get's round trip over the null call is the
//! transfer of the reply's 16 cache lines to the client's core.
//!
//! `cargo run --release -p txipc-bench --example kv_get_parts -- [ROUNDS]` prints, per part,
//! the median over ROUNDS (default 21) batches of 20,000 operations, in ns per operation.

use std::hint::black_box;
use std::time::Instant;

use kv_api::{Bytes, BytesRef, KvError};

const OPS: u32 = 20_000;

fn median_ns(rounds: usize, mut batch: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            batch();
            t.elapsed().as_nanos() as f64 / f64::from(OPS)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(21);
    let value = vec![0x5a_u8; 1000];
    let reply: Result<Option<Bytes>, KvError> = Ok(Some(Bytes::from(&value[..])));
    let mut encoded = Vec::new();
    txipc_service::encode(&reply, &mut encoded).expect("encode");
    let mut dst = vec![0u8; 1000];

    let copy = median_ns(rounds, || {
        for _ in 0..OPS {
            dst.copy_from_slice(black_box(&value));
            black_box(&dst);
        }
    });
    // The same copy to a destination 4 bytes past a line start: where the lent value lands in
    // the reply area (after the `Ok`, `Some` and 2-byte length of its encoding).
    let mut dst4 = vec![0u8; 1004];
    let copy_at_4 = median_ns(rounds, || {
        for _ in 0..OPS {
            dst4[4..].copy_from_slice(black_box(&value));
            black_box(&dst4);
        }
    });
    // The integrity check of `kv-checked` (off in the plain `kv` that `bench ipc` runs): the
    // checksum of key and value that every get verifies there.
    let key = b"bench-ipc-key";
    let checksum = median_ns(rounds.min(5), || {
        for _ in 0..OPS {
            black_box(kv_server::integrity::checksum(
                black_box(key),
                black_box(&value),
            ));
        }
    });
    // The handler's result: the value copied out of the heap into a new `Bytes`.
    let result = median_ns(rounds, || {
        for _ in 0..OPS {
            black_box(Bytes::from(black_box(&value[..])));
        }
    });
    // The dispatcher's encoding of `Result<Option<Bytes>, KvError>` (into a reused buffer;
    // into the slot it is the same `put` of 1,000 bytes).
    let mut out = Vec::with_capacity(2048);
    let encode = median_ns(rounds, || {
        for _ in 0..OPS {
            txipc_service::encode(black_box(&reply), &mut out).expect("encode");
            black_box(&out);
        }
    });
    // The same through `ReplyWriter` (what the runtime's dispatch does, here into a Vec).
    let encode_to = median_ns(rounds, || {
        for _ in 0..OPS {
            txipc_service::ReplyWriter::reset(&mut out);
            txipc_service::encode_to(black_box(&reply), &mut out).expect("encode");
            black_box(&out);
        }
    });
    // What the lending `serve_get` sends: the value borrowed from where it is (here `value`,
    // on the server the heap), encoded through `ReplyWriter`.
    let encode_lent = median_ns(rounds, || {
        for _ in 0..OPS {
            let lent: Result<Option<BytesRef<'_>>, KvError> = Ok(Some(BytesRef(black_box(&value))));
            txipc_service::ReplyWriter::reset(&mut out);
            txipc_service::encode_to(&lent, &mut out).expect("encode");
            black_box(&out);
        }
    });
    // `get_with`'s decoding: the value borrowed from the reply buffer, no allocation.
    let decode_borrowed = median_ns(rounds, || {
        for _ in 0..OPS {
            let r: Result<Option<&[u8]>, KvError> =
                txipc_service::decode_borrowed(black_box(&encoded)).expect("decode");
            let _ = black_box(r);
        }
    });
    // The client stub's decoding of the reply into a new `Bytes`.
    let decode = median_ns(rounds, || {
        for _ in 0..OPS {
            let r: Result<Option<Bytes>, KvError> =
                txipc_service::decode(black_box(&encoded)).expect("decode");
            let _ = black_box(r);
        }
    });
    println!(
        "1,000-byte kv get, CPU parts (ns per operation, median of {rounds} batches of {OPS})"
    );
    println!("  copy of 1,000 bytes (memcpy)           {copy:>7.1}");
    println!("  the same copy to a line start + 4      {copy_at_4:>7.1}");
    println!("  kv-checked's checksum (1,013 B)       {checksum:>7.1}");
    println!("  handler's result (allocate + copy)     {result:>7.1}");
    println!("  encode the reply (postcard)            {encode:>7.1}");
    println!("  encode through ReplyWriter (dispatch)  {encode_to:>7.1}");
    println!("  decode the reply (allocate + copy)     {decode:>7.1}");
    println!("  encode the lent reply (serve_get)      {encode_lent:>7.1}");
    println!("  decode borrowed (get_with)             {decode_borrowed:>7.1}");
}
