//! Where a page-tracked kv request spends its time, in one process (no IPC).
//!
//! `cargo run --release -p txipc-heap --example page_kv -- MODE RECORDS OPS [BATCH]` with MODE one of
//! `off`, `typed`, `sigsegv`, `uffd`, `sigsegv-armed`, `uffd-armed` (armed: every write
//! captured by a fault or a scan, as before announced writes; `Heap::arm_page_tracking`). It loads RECORDS values of 1,000 bytes into a
//! `PBTreeMap<PBytes, PBytes>` (the kv server's root, same heap sizing as `txipc bench kv`),
//! then runs OPS YCSB-A-like requests exactly as the kv server does (`get`: begin, lookup,
//! commit; `put`: begin, lookup, savepoint, insert, counter update, commit), on uniformly
//! random keys, and prints the mean time of each step per request, and the page-tracking
//! counters per put. With BATCH > 1 (default 1), BATCH requests share one transaction, as the
//! server's group commit runs them (one begin and commit per batch; each put behind its own
//! savepoint, as kv's handler takes it): the counters then show what a batch shares.

use std::time::Instant;

use txipc_heap::{
    Heap, PBTreeMap, PBytes, PCell, PageBackend, Persistent, Tracking, create_heap_memfd,
    create_log_memfd, default_base,
};

#[derive(Persistent)]
#[repr(C)]
struct Root {
    map: PBTreeMap<PBytes, PBytes>,
    updates: PCell<u64>,
}

fn key(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("sigsegv", String::as_str);
    let records: u64 = args.get(2).map_or(Ok(20_000), |s| s.parse())?;
    let ops: u64 = args.get(3).map_or(Ok(20_000), |s| s.parse())?;
    let batch: u64 = args.get(4).map_or(Ok(1), |s| s.parse())?;
    if batch == 0 {
        return Err("BATCH must be at least 1".into());
    }
    let (tracking, backend) = match mode {
        "off" => (Tracking::Off, PageBackend::Sigsegv),
        "typed" => (Tracking::Typed, PageBackend::Sigsegv),
        "sigsegv" => (Tracking::Page, PageBackend::Sigsegv),
        "uffd" | "uffd-armed" => (Tracking::Page, PageBackend::Uffd),
        "sigsegv-armed" => (Tracking::Page, PageBackend::Sigsegv),
        m => {
            return Err(
                format!("unknown mode {m}: off, typed, sigsegv(-armed), uffd(-armed)").into(),
            );
        }
    };
    // As `txipc bench kv`: records × (value + 128) × 1.6, in MiB.
    let heap_mb = ((records as f64 * 1128.0 * 1.6) / (1 << 20) as f64).ceil() as usize + 4;
    let hfd = create_heap_memfd("page-kv", heap_mb << 20)?;
    let lfd = create_log_memfd("page-kv-log", 64 << 20)?;
    let heap = Heap::attach_with(&hfd, &lfd, default_base(40), tracking, backend)?;
    println!(
        "mode {mode} ({}), heap {heap_mb} MiB, {records} records, {batch} requests per transaction",
        heap.page_tracker().unwrap_or("-")
    );
    let root: &Root = heap.root_or_init(|_| {
        Ok(Root {
            map: PBTreeMap::new(),
            updates: PCell::new(0),
        })
    })?;
    let value = vec![7u8; 1000];
    let mut txid = 1;
    for chunk in (0..records).collect::<Vec<_>>().chunks(100) {
        txid += 1;
        let mut tx = heap.begin(txid)?;
        for &i in chunk {
            root.map.insert(&mut tx, &key(i), &value)?;
        }
        tx.commit()?;
    }
    if mode.ends_with("-armed") {
        heap.arm_page_tracking()?;
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let stats0 = heap.page_stats();
    let (mut t_begin, mut t_get, mut t_sp, mut t_ins, mut t_commit) = (0u128, 0, 0, 0, 0);
    let (mut gets, mut puts) = (0u64, 0u64);
    let (mut t_get_total, mut t_put_total) = (0u128, 0u128);
    let mut newval = vec![0u8; 1000];
    let mut open: Option<txipc_heap::Tx<'_>> = None;
    let mut log_bytes = 0u64;
    for n in 0..ops {
        let r = next();
        let k = key(r % records);
        let is_put = r >> 63 == 1;
        let t0 = Instant::now();
        let mut tx = match open.take() {
            Some(tx) => tx,
            None => {
                txid += 1;
                heap.begin(txid)?
            }
        };
        let t1 = Instant::now();
        let cur = root.map.get(&tx, &k).map(|v| v.as_slice().to_vec());
        std::hint::black_box(&cur);
        let t2 = Instant::now();
        let (t3, t4) = if is_put {
            newval[..8].copy_from_slice(&n.to_le_bytes());
            let _sp = tx.savepoint()?;
            let t3 = Instant::now();
            root.map.insert(&mut tx, &k, &newval)?;
            root.updates.update(&tx, |u| u + 1)?;
            (t3, Instant::now())
        } else {
            (t2, t2)
        };
        if (n + 1) % batch == 0 || n + 1 == ops {
            log_bytes += tx.log_used() as u64;
            tx.commit()?;
        } else {
            open = Some(tx);
        }
        let t5 = Instant::now();
        t_begin += (t1 - t0).as_nanos();
        t_get += (t2 - t1).as_nanos();
        t_sp += (t3 - t2).as_nanos();
        t_ins += (t4 - t3).as_nanos();
        t_commit += (t5 - t4).as_nanos();
        if is_put {
            puts += 1;
            t_put_total += (t5 - t0).as_nanos();
        } else {
            gets += 1;
            t_get_total += (t5 - t0).as_nanos();
        }
    }
    let stats = heap.page_stats();
    let per = |t: u128| t as f64 / ops as f64;
    println!(
        "per request (ns): begin {:.0} lookup {:.0} savepoint {:.0} insert+count {:.0} commit {:.0}",
        per(t_begin),
        per(t_get),
        per(t_sp),
        per(t_ins),
        per(t_commit)
    );
    println!(
        "get {:.0} ns, put {:.0} ns, mean {:.0} ns ({gets} gets, {puts} puts)",
        t_get_total as f64 / gets.max(1) as f64,
        t_put_total as f64 / puts.max(1) as f64,
        (t_get_total + t_put_total) as f64 / ops as f64
    );
    if let (Some(a), Some(b)) = (stats0, stats) {
        let p = puts.max(1) as f64;
        // The SIGSEGV tracker has logged everything before the commit; uffd logs at its
        // flushes, the commit's included, which `log_used` before the commit misses.
        let log = if heap.page_tracker() == Some("sigsegv") {
            format!("{:.0}", log_bytes as f64 / p)
        } else {
            "-".into()
        };
        println!(
            "per put: pages captured {:.2}, log bytes {log}, page scans {:.2}, pages scanned {:.0}, protect calls {:.2}",
            (b.captures - a.captures) as f64 / p,
            (b.scans - a.scans) as f64 / p,
            (b.pages_scanned - a.pages_scanned) as f64 / p,
            (b.protect_calls - a.protect_calls) as f64 / p,
        );
    }
    Ok(())
}
