//! What the per-call latency histogram costs a server, per call: the server runtime's sampling
//! code (`Loop::run_roots`: one batch in `SAMPLE_EVERY` timed with two clock reads and added to
//! a bucket of the status page) run in a loop against a real status page, beside the same loop
//! without it, interleaved in rounds; medians. The clock alone is measured too.
//!
//! `cargo run --release -p txipc-runtime --example latency_cost -- [calls per round] [rounds]`
//!
//! The difference is the cost a null call pays (compare with `txipc bench ipc`'s null call,
//! ~210 ns cross-core on a quiet machine); `txipc bench ipc` itself cannot resolve a few ns
//! on a shared machine.

use std::hint::black_box;
use std::time::Instant;

use txipc_core::latency;
use txipc_sys::status::StatusPage;
use txipc_sys::time::monotonic_ns;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    let fd = StatusPage::create("latency-cost").expect("status page");
    let page = StatusPage::map(&fd).expect("map");
    let (mut clock, mut without, mut with) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        // The clock alone.
        let t = Instant::now();
        let mut acc = 0u64;
        for _ in 0..calls / 4 {
            acc = acc.wrapping_add(monotonic_ns());
        }
        black_box(acc);
        clock.push(t.elapsed().as_nanos() as f64 / (calls / 4) as f64);
        // A batch of one call without the sampling: what `run_roots` did before.
        let t = Instant::now();
        let mut done = 0u64;
        for _ in 0..calls {
            done = black_box(done + 1);
            page.set_idle(done);
        }
        without.push(t.elapsed().as_nanos() as f64 / calls as f64);
        // With it, exactly as `run_roots` does it.
        let t = Instant::now();
        let (mut done, mut batches) = (0u64, 0u64);
        for _ in 0..calls {
            let timed = batches & (latency::SAMPLE_EVERY - 1) == 0;
            batches = batches.wrapping_add(1);
            let start = if timed { monotonic_ns() } else { 0 };
            done = black_box(done + 1);
            if timed {
                let took = monotonic_ns().saturating_sub(start);
                page.add_latency(latency::bucket(took), 1);
            }
            page.set_idle(done);
        }
        with.push(t.elapsed().as_nanos() as f64 / calls as f64);
    }
    let (c, a, b) = (median(&mut clock), median(&mut without), median(&mut with));
    println!(
        "clock read {c:.1} ns; per call: without sampling {a:.2} ns, with {b:.2} ns: +{:.2} ns per call (one batch in {} timed); {} calls x {rounds} rounds",
        b - a,
        latency::SAMPLE_EVERY,
        calls
    );
    let total: u64 = page.latency().iter().sum();
    println!("timed calls in the histogram: {total}");
}
