//! Transaction costs measured inside one process (`txipc bench tx --json`).
//!
//! Method: every figure is the median of several runs (after a warm-up run), each run a loop of
//! many operations timed as a whole (no per-operation clock reads). Heaps are mapped at
//! [`crate::default_base`]`(40)` and `(41)`; page tracking installs the
//! process's one SIGSEGV tracker for the duration of the run, so do not run this beside another
//! page-tracked heap in the same process.

use std::hint::black_box;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{
    Heap, HeapError, PBTreeMap, PBytes, PCell, Persistent, Tracking, create_heap_memfd,
    create_log_memfd, default_base,
};

/// Results of [`bench_tx`], in nanoseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxBench {
    /// One typed undo record plus its write: `PCell<u64>::set` (8-byte pre-image).
    pub undo_record_ns: f64,
    /// Page tracking: the first write to a write-protected page, including its 4 KiB undo
    /// record (SIGSEGV, handler, copy, `mprotect`, retry).
    pub page_fault_ns: f64,
    /// Fixed cost of a transaction: `begin` (log reset, header ACTIVE) plus `commit` (the
    /// commit-point store), with nothing in between.
    pub commit_ns: f64,
    /// What the serve loop paid per transaction for a request that writes nothing, before
    /// the lazy begin: `begin`, one batch entry, `commit`.
    pub batch_commit_ns: f64,
    /// What it pays now: [`Heap::begin_lazy_in`], one batch entry, `commit`, nothing written
    /// (no shared write at all).
    pub read_only_commit_ns: f64,
    /// In-place rollback, per 8-byte record.
    pub rollback_ns_per_record: f64,
    /// kv-style put (replace a 100-byte value in a 10,000-key `PBTreeMap<PBytes, PBytes>`,
    /// inside a transaction of one put), typed tracking.
    pub kv_put_typed_ns: f64,
    /// The same with tracking off (policy none): the baseline of the ≤5% target.
    pub kv_put_off_ns: f64,
    /// kv-style get on the same map.
    pub kv_get_ns: f64,
    /// Runs per figure (median taken).
    pub runs: usize,
}

/// Options of [`bench_tx`].
#[derive(Clone, Debug)]
pub struct TxBenchOptions {
    /// Runs per figure (the median is reported); one warm-up run is added.
    pub runs: usize,
    /// Operations per run for the per-record figures.
    pub ops: usize,
    /// Pages written per run for `page_fault_ns`.
    pub pages: usize,
}

impl Default for TxBenchOptions {
    fn default() -> Self {
        TxBenchOptions {
            runs: 7,
            ops: 100_000,
            pages: 2048,
        }
    }
}

#[derive(Persistent)]
#[repr(C)]
struct BenchRoot {
    cells: [PCell<u64>; 512],
    kv: PBTreeMap<PBytes, PBytes>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn runs(n: usize, mut f: impl FnMut() -> Result<f64, HeapError>) -> Result<f64, HeapError> {
    f()?; // warm-up
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(f()?);
    }
    Ok(median(v))
}

fn kv_setup(heap: &Heap) -> Result<&BenchRoot, HeapError> {
    let root: &BenchRoot = heap.root_or_init(|_| {
        Ok(BenchRoot {
            cells: std::array::from_fn(|_| PCell::new(0)),
            kv: PBTreeMap::new(),
        })
    })?;
    let mut tx = heap.begin(1)?;
    let v = [7u8; 100];
    for i in 0..10_000u64 {
        root.kv
            .insert(&mut tx, format!("user{i:012}").as_bytes(), &v)?;
    }
    tx.commit()?;
    Ok(root)
}

fn kv_put(heap: &Heap, root: &BenchRoot, ops: usize) -> Result<f64, HeapError> {
    let v = [9u8; 100];
    let keys: Vec<Vec<u8>> = (0..ops as u64)
        .map(|i| format!("user{:012}", i.wrapping_mul(7919) % 10_000).into_bytes())
        .collect();
    let t = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        let mut tx = heap.begin(i as u64 + 2)?;
        root.kv.insert(&mut tx, k, &v)?;
        tx.commit()?;
    }
    Ok(t.elapsed().as_nanos() as f64 / ops as f64)
}

/// Measures the costs of transactions, typed and page tracking, in this process.
///
/// # Errors
/// Heap errors (e.g. the bench's fixed addresses are taken, or a page tracker is already
/// installed in this process).
pub fn bench_tx(opts: &TxBenchOptions) -> Result<TxBench, HeapError> {
    let ops = opts.ops.max(1000);
    let hfd = create_heap_memfd("bench-tx-heap", 64 << 20)?;
    let lfd = create_log_memfd(
        "bench-tx-log",
        (ops * 32 + (64 << 10)).next_multiple_of(4096),
    )?;
    let heap = Heap::attach(&hfd, &lfd, default_base(40), Tracking::Typed)?;
    let root = kv_setup(&heap)?;

    let undo_record_ns = runs(opts.runs, || {
        let tx = heap.begin(2)?;
        let t = Instant::now();
        for i in 0..ops {
            root.cells[i & 511].set(&tx, black_box(i as u64))?;
        }
        let ns = t.elapsed().as_nanos() as f64 / ops as f64;
        tx.abort()?;
        Ok(ns)
    })?;

    let commit_ns = runs(opts.runs, || {
        let t = Instant::now();
        for i in 0..ops {
            heap.begin(i as u64 + 3)?.commit()?;
        }
        Ok(t.elapsed().as_nanos() as f64 / ops as f64)
    })?;

    let entry = |i: usize| crate::BatchEntry {
        chan: 1,
        slot: 0,
        seq: i as u64 + 1,
    };
    let batch_commit_ns = runs(opts.runs, || {
        let t = Instant::now();
        for i in 0..ops {
            let mut tx = heap.begin(i as u64 + 3)?;
            tx.add_batch_entry(black_box(entry(i)))?;
            tx.commit()?;
        }
        Ok(t.elapsed().as_nanos() as f64 / ops as f64)
    })?;
    let read_only_commit_ns = runs(opts.runs, || {
        let t = Instant::now();
        for i in 0..ops {
            let mut tx = heap.begin_lazy_in(i as u64 + 3, None)?;
            tx.add_batch_entry(black_box(entry(i)))?;
            tx.commit()?;
        }
        Ok(t.elapsed().as_nanos() as f64 / ops as f64)
    })?;

    let rollback_ns_per_record = runs(opts.runs, || {
        let tx = heap.begin(4)?;
        for i in 0..ops {
            root.cells[i & 511].set(&tx, i as u64)?;
        }
        let n = tx.records();
        let t = Instant::now();
        tx.abort()?;
        Ok(t.elapsed().as_nanos() as f64 / n as f64)
    })?;

    let kv_put_typed_ns = runs(opts.runs, || kv_put(&heap, root, ops / 4))?;
    let kv_get_ns = runs(opts.runs, || {
        let tx = heap.begin(5)?;
        let keys: Vec<Vec<u8>> = (0..ops as u64)
            .map(|i| format!("user{:012}", i.wrapping_mul(7919) % 10_000).into_bytes())
            .collect();
        let t = Instant::now();
        let mut sum = 0usize;
        for k in &keys {
            sum += root.kv.get(&tx, k).map_or(0, |v| v.len());
        }
        black_box(sum);
        let ns = t.elapsed().as_nanos() as f64 / ops as f64;
        tx.commit()?;
        Ok(ns)
    })?;
    drop(heap);

    let ofd = create_heap_memfd("bench-tx-off", 64 << 20)?;
    let olfd = create_log_memfd("bench-tx-off-log", 64 << 10)?;
    let heap = Heap::attach(&ofd, &olfd, default_base(41), Tracking::Off)?;
    let root = kv_setup(&heap)?;
    let kv_put_off_ns = runs(opts.runs, || kv_put(&heap, root, ops / 4))?;
    drop(heap);

    let pages = opts.pages.max(16);
    let pfd = create_heap_memfd("bench-tx-page", (pages + 64) * 4096)?;
    let plfd = create_log_memfd("bench-tx-page-log", (pages + 8) * (4096 + 16) + 4096)?;
    let heap = Heap::attach(&pfd, &plfd, default_base(40), Tracking::Page)?;
    // The writes below are raw stores the heap cannot announce: every page must fault.
    heap.arm_page_tracking()?;
    let base = heap.base() + 32 * 4096;
    let mut txid = 10;
    let page_fault_ns = runs(opts.runs, || {
        txid += 1;
        let tx = heap.begin(txid)?;
        let t = Instant::now();
        for i in 0..pages {
            // SAFETY: base + i*4096 is inside the heap's data area, never allocated by anyone
            // (this heap has no root and no objects); a volatile byte store to memory we own.
            unsafe { ((base + i * 4096) as *mut u8).write_volatile(i as u8) };
        }
        let ns = t.elapsed().as_nanos() as f64 / pages as f64;
        tx.commit()?;
        Ok(ns)
    })?;
    drop(heap);

    Ok(TxBench {
        undo_record_ns,
        page_fault_ns,
        commit_ns,
        batch_commit_ns,
        read_only_commit_ns,
        rollback_ns_per_record,
        kv_put_typed_ns,
        kv_put_off_ns,
        kv_get_ns,
        runs: opts.runs,
    })
}
