//! Measures the raw IPC baselines and the channel round trip for both placements.
//!
//! `cargo run --release -p txipc-chan --example ipc_baselines [-- --json] [-- --quick]`

use txipc_chan::baseline::{BenchConfig, Placement, measure_all};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let cfg = if args.iter().any(|a| a == "--quick") {
        BenchConfig::quick()
    } else {
        BenchConfig::default()
    };
    let mut all = Vec::new();
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12}   chan/spin chan/futex sock/chan",
        "placement", "raw spin", "raw futex", "unix sock", "channel"
    );
    for p in Placement::ALL {
        let r = match measure_all(p, &cfg) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{p:?}: {e}");
                std::process::exit(1);
            }
        };
        println!(
            "{:<10} {:>10.0}ns {:>10.0}ns {:>10.0}ns {:>10.0}ns   {:>9.2} {:>10.2} {:>9.1}",
            format!("{p:?}"),
            r.raw_spin_rtt_ns.median_ns,
            r.raw_futex_rtt_ns.median_ns,
            r.unix_socket_rtt_ns.median_ns,
            r.chan_rtt_ns.median_ns,
            r.chan_rtt_ns.median_ns / r.raw_spin_rtt_ns.median_ns,
            r.chan_rtt_ns.median_ns / r.raw_futex_rtt_ns.median_ns,
            r.unix_socket_rtt_ns.median_ns / r.chan_rtt_ns.median_ns,
        );
        all.push(r);
    }
    if json {
        println!("{}", serde_json_line(&all));
    }
}

fn serde_json_line(v: &[txipc_chan::baseline::IpcBaselines]) -> String {
    serde_json::to_string(v).expect("serialisable")
}
