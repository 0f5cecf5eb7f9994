//! Compares spin policies of the channel against the raw baselines, interleaved.
//!
//! `cargo run --release -p txipc-chan --example chan_tuning -- [rounds]`

use std::time::Duration;

use txipc_chan::baseline::{
    BenchConfig, Placement, SERVER_SPIN, chan_rtt_ns_with, raw_futex_rtt_ns, raw_spin_rtt_ns,
};
use txipc_chan::{SpinConfig, SpinMode};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let cfg = BenchConfig {
        warmup: 2000,
        iterations: 10_000,
        batches: 5,
    };
    let us = Duration::from_micros;
    let variants: [(&str, SpinConfig, Duration); 5] = [
        (
            "auto 20us / srv 50us",
            SpinConfig {
                mode: SpinMode::Auto,
                budget: us(20),
            },
            SERVER_SPIN,
        ),
        (
            "pure 20us / srv 50us",
            SpinConfig {
                mode: SpinMode::Pure,
                budget: us(20),
            },
            SERVER_SPIN,
        ),
        (
            "yield 20us / srv 50us",
            SpinConfig {
                mode: SpinMode::Yield,
                budget: us(20),
            },
            SERVER_SPIN,
        ),
        (
            "auto 20us / srv 0",
            SpinConfig {
                mode: SpinMode::Auto,
                budget: us(20),
            },
            Duration::ZERO,
        ),
        (
            "no spin / srv 0",
            SpinConfig {
                mode: SpinMode::Pure,
                budget: Duration::ZERO,
            },
            Duration::ZERO,
        ),
    ];
    for p in Placement::ALL {
        let mut rows: Vec<(String, Vec<f64>)> =
            vec![("raw spin".into(), vec![]), ("raw futex".into(), vec![])];
        rows.extend(variants.iter().map(|v| (v.0.to_string(), vec![])));
        for _ in 0..rounds {
            rows[0].1.push(raw_spin_rtt_ns(p, &cfg).unwrap().median_ns);
            rows[1].1.push(raw_futex_rtt_ns(p, &cfg).unwrap().median_ns);
            for (k, (_, spin, srv)) in variants.iter().enumerate() {
                rows[2 + k]
                    .1
                    .push(chan_rtt_ns_with(p, &cfg, *spin, *srv).unwrap().median_ns);
            }
        }
        println!("{p:?}");
        for (name, mut v) in rows {
            v.sort_by(f64::total_cmp);
            println!(
                "  {name:<24} {:>9.0} ns   (rounds: {:?})",
                v[v.len() / 2],
                v.iter().map(|x| *x as u64).collect::<Vec<_>>()
            );
        }
    }
}
