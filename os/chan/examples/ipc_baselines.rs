//! Measures the raw IPC baselines and the channel round trip for both placements.
//!
//! `cargo run --release -p txipc-chan --example ipc_baselines -- [--rounds N] [--quick] [--json]`
//!
//! Each round measures every mechanism for both placements back to back; the table shows,
//! per cell, the median over rounds of each round's median batch (noise from other processes
//! on a shared machine comes in bursts, which interleaving spreads over all columns).

use txipc_chan::baseline::{BenchConfig, IpcBaselines, Placement, measure_all};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let cfg = if args.iter().any(|a| a == "--quick") {
        BenchConfig::quick()
    } else {
        BenchConfig::default()
    };
    let mut runs: Vec<Vec<IpcBaselines>> = vec![Vec::new(); Placement::ALL.len()];
    for _ in 0..rounds {
        for (k, p) in Placement::ALL.into_iter().enumerate() {
            match measure_all(p, &cfg) {
                Ok(r) => runs[k].push(r),
                Err(e) => {
                    eprintln!("{p:?}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10}   {:>9} {:>10} {:>9}",
        "placement",
        "raw spin",
        "raw futex",
        "unix sock",
        "channel",
        "chan/spin",
        "chan/futex",
        "sock/chan"
    );
    let mut summary = Vec::new();
    for (k, p) in Placement::ALL.into_iter().enumerate() {
        let med = |f: fn(&IpcBaselines) -> f64| {
            let mut v: Vec<f64> = runs[k].iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let spin = med(|r| r.raw_spin_rtt_ns.median_ns);
        let futex = med(|r| r.raw_futex_rtt_ns.median_ns);
        let sock = med(|r| r.unix_socket_rtt_ns.median_ns);
        let chan = med(|r| r.chan_rtt_ns.median_ns);
        println!(
            "{:<10} {:>8.0}ns {:>8.0}ns {:>8.0}ns {:>8.0}ns   {:>9.2} {:>10.2} {:>9.1}",
            format!("{p:?}"),
            spin,
            futex,
            sock,
            chan,
            chan / spin,
            chan / futex,
            sock / chan
        );
        summary.push(serde_json::json!({
            "placement": p, "raw_spin_rtt_ns": spin, "raw_futex_rtt_ns": futex,
            "unix_socket_rtt_ns": sock, "chan_rtt_ns": chan, "rounds": rounds,
        }));
    }
    if json {
        println!("{}", serde_json::Value::Array(summary));
    }
}
