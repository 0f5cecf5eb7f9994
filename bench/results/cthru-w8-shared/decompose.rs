//! Per-logged-put costs of the companion server's critical path, in isolation (release build,
//! one CPU): the record encoding (copy + crc32s), the reply digest, the copy into a populated
//! but cold 512 MiB ring, the old path (encode_record into a buffer, then one copy) against the
//! new (record_header, then header and request copied), and a first lap's page faults.
//! Medians of 7 rounds.
use std::time::Instant;
use txipc_core::companion::{self as fmt, RecordMeta};
fn med(mut v: Vec<f64>) -> f64 { v.sort_by(|a, b| a.partial_cmp(b).unwrap()); v[v.len() / 2] }
fn main() {
    let iters = 100_000usize;
    let req = vec![7u8; 1030]; // a put's arguments: key ~24 B, value 1000 B, lengths
    let reply = vec![9u8; 1003]; // Ok(Some(old value))
    let mut rec = Vec::with_capacity(4096);
    let meta = RecordMeta { index: 1, chan: 0, slot: 0, seq: 1, method: 2, prev_digest: Some(5) };
    let cap: usize = 512 << 20;
    let fd = txipc_sys::shm::create_sealed("dec", (4096 + cap) as u64).unwrap();
    rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, (4096 + cap) as u64).unwrap();
    let ring = txipc_sys::shm::SharedBytes::map(&fd, 4096 + cap).unwrap();
    let reclen = fmt::record_len(req.len());
    let recs = cap / reclen;
    // First lap, not populated: faults.
    let t = Instant::now();
    let n0 = recs / 2;
    for i in 0..n0 { rec.clear(); fmt::encode_record(&meta, &req, &mut rec); ring.copy_in(4096 + i * reclen, &rec); }
    let first_lap = t.elapsed().as_nanos() as f64 / n0 as f64;
    let t = Instant::now();
    ring.populate_write(4096 + n0 * reclen, cap - n0 * reclen).unwrap();
    let populate_per_rec = t.elapsed().as_nanos() as f64 / (recs - n0) as f64;
    let mut r: [Vec<f64>; 6] = Default::default();
    let mut pos = n0;
    for _ in 0..7 {
        let t = Instant::now();
        for i in 0..iters { rec.clear(); let mut m = meta; m.index = i as u64; fmt::encode_record(&m, &req, &mut rec); std::hint::black_box(&rec); }
        r[0].push(t.elapsed().as_nanos() as f64 / iters as f64);
        let t = Instant::now();
        for _ in 0..iters { std::hint::black_box(crc32fast::hash(std::hint::black_box(&rec))); }
        r[1].push(t.elapsed().as_nanos() as f64 / iters as f64);
        let t = Instant::now();
        for _ in 0..iters { std::hint::black_box(fmt::reply_digest(0, std::hint::black_box(&reply))); }
        r[2].push(t.elapsed().as_nanos() as f64 / iters as f64);
        let t = Instant::now();
        for _ in 0..iters { ring.copy_in(4096 + pos % recs * reclen, &rec); pos += 1; }
        r[3].push(t.elapsed().as_nanos() as f64 / iters as f64);
        // old path: encode into the buffer, copy it into the ring
        let t = Instant::now();
        for i in 0..iters { rec.clear(); let mut m = meta; m.index = i as u64; fmt::encode_record(&m, &req, &mut rec); ring.copy_in(4096 + pos % recs * reclen, &rec); pos += 1; }
        r[4].push(t.elapsed().as_nanos() as f64 / iters as f64);
        // new path: header, then header and request straight into the ring
        let t = Instant::now();
        for i in 0..iters { let mut m = meta; m.index = i as u64; let h = fmt::record_header(&m, &req); let at = 4096 + pos % recs * reclen; ring.copy_in(at, &h); ring.copy_in(at + 64, &req); ring.copy_in(at + 64 + req.len(), &[0u8; 8][..reclen - 64 - req.len()]); pos += 1; }
        r[5].push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    println!("per 1 KiB put (record {reclen} B), medians of 7 rounds of {iters}:");
    println!("  encode_record (copy into a buffer + record and header crc32) {:.0} ns; crc32 of the record alone {:.0} ns", med(r[0].clone()), med(r[1].clone()));
    println!("  reply_digest of a 1003-byte reply {:.0} ns", med(r[2].clone()));
    println!("  copy of the record into the populated, cold ring {:.0} ns", med(r[3].clone()));
    println!("  append, wave 7 (encode into a buffer + copy) {:.0} ns; wave 8 (header + pieces) {:.0} ns", med(r[4].clone()), med(r[5].clone()));
    println!("  first lap, not populated (encode + copy + page faults) {first_lap:.0} ns per record; populating the rest {populate_per_rec:.0} ns per record");
}
