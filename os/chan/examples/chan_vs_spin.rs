//! Cross-core null call through a channel against the raw spinning ping-pong, interleaved in
//! many short rounds: for comparing builds on a shared machine, where only the quietest
//! batches say anything (each batch mean is inflated by every preemption inside it).
//!
//! `cargo run --release -p txipc-chan --example chan_vs_spin -- [rounds]` prints, per
//! mechanism, the median over rounds of each round's median batch, and the fastest batch.

use txipc_chan::baseline::{BenchConfig, Placement, chan_rtt_ns, raw_spin_rtt_ns};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let cfg = BenchConfig {
        warmup: 2000,
        iterations: 2000,
        batches: 21,
    };
    let (mut spin, mut chan) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        spin.push(raw_spin_rtt_ns(Placement::CrossCore, &cfg).expect("raw spin"));
        chan.push(chan_rtt_ns(Placement::CrossCore, &cfg).expect("channel"));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let report = |name: &str, r: &[txipc_chan::baseline::Rtt]| {
        let mut m: Vec<f64> = r.iter().map(|x| x.median_ns).collect();
        let min = r.iter().map(|x| x.min_ns).fold(f64::INFINITY, f64::min);
        println!(
            "{name:<9} median {:>7.1} ns   fastest batch {min:>7.1} ns",
            med(&mut m)
        );
        min
    };
    let s = report("raw spin", &spin);
    let c = report("channel", &chan);
    println!("channel / raw spin (fastest batches) = {:.2}", c / s);
}
