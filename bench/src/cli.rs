//! The `txipc bench` subcommands.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use txipc_chan::baseline::BenchConfig;

/// What to benchmark.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Null-call round trip against raw spin, futex and Unix-socket ping-pongs, across cores and
    /// on one core.
    Ipc {
        /// Round trips per batch.
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
        /// Batches (the median is reported).
        #[arg(long, default_value_t = 7)]
        batches: u32,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
    /// Transaction costs inside one process: undo record, page-tracking fault, commit, rollback.
    Tx {
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(serde::Serialize)]
struct TxBenchPending {
    undo_record_ns: f64,
    page_fault_ns: f64,
    commit_ns: f64,
    rollback_ns_per_record: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// Runs a benchmark command; `exe` is the txipc binary (to boot systems).
pub fn run(exe: &Path, cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Ipc {
            iterations,
            batches,
            json,
        } => {
            let cfg = BenchConfig {
                warmup: iterations / 4,
                iterations,
                batches,
            };
            let r = crate::ipc::run(exe, &cfg)?;
            let c = &r.cross_core;
            let s = &r.same_core;
            let rows = [
                (
                    "txipc null call",
                    c.txipc_rtt_ns.median_ns,
                    s.txipc_rtt_ns.median_ns,
                ),
                (
                    "channel alone",
                    c.baselines.chan_rtt_ns.median_ns,
                    s.baselines.chan_rtt_ns.median_ns,
                ),
                (
                    "raw spin",
                    c.baselines.raw_spin_rtt_ns.median_ns,
                    s.baselines.raw_spin_rtt_ns.median_ns,
                ),
                (
                    "raw futex",
                    c.baselines.raw_futex_rtt_ns.median_ns,
                    s.baselines.raw_futex_rtt_ns.median_ns,
                ),
                (
                    "unix socket",
                    c.baselines.unix_socket_rtt_ns.median_ns,
                    s.baselines.unix_socket_rtt_ns.median_ns,
                ),
            ];
            println!("| round trip (median ns) | cross-core | same core |");
            println!("|---|---:|---:|");
            for (name, x, y) in rows {
                println!("| {name} | {x:.0} | {y:.0} |");
            }
            let vs_spin = ratio(
                c.txipc_rtt_ns.median_ns,
                c.baselines.raw_spin_rtt_ns.median_ns,
            );
            let vs_futex_same = ratio(
                s.txipc_rtt_ns.median_ns,
                s.baselines.raw_futex_rtt_ns.median_ns,
            );
            let unix_speedup = ratio(
                c.baselines.unix_socket_rtt_ns.median_ns,
                c.txipc_rtt_ns.median_ns,
            );
            println!(
                "txipc / raw spin (cross-core) = {vs_spin:.2}x (goal <= 1.2); txipc / raw futex (same core) = {vs_futex_same:.2}x (goal <= 1.2); unix socket / txipc (cross-core) = {unix_speedup:.1}x (goal >= 10)"
            );
            if json {
                let v = serde_json::json!({
                    "txipc_rtt_ns": c.txipc_rtt_ns.median_ns,
                    "raw_spin_rtt_ns": c.baselines.raw_spin_rtt_ns.median_ns,
                    "raw_futex_rtt_ns": c.baselines.raw_futex_rtt_ns.median_ns,
                    "unix_socket_rtt_ns": c.baselines.unix_socket_rtt_ns.median_ns,
                    "same_core": {
                        "txipc_rtt_ns": s.txipc_rtt_ns.median_ns,
                        "raw_spin_rtt_ns": s.baselines.raw_spin_rtt_ns.median_ns,
                        "raw_futex_rtt_ns": s.baselines.raw_futex_rtt_ns.median_ns,
                        "unix_socket_rtt_ns": s.baselines.unix_socket_rtt_ns.median_ns,
                        "chan_rtt_ns": s.baselines.chan_rtt_ns.median_ns,
                    },
                    "chan_rtt_ns": c.baselines.chan_rtt_ns.median_ns,
                    "ratio_txipc_over_raw_spin_cross": vs_spin,
                    "ratio_txipc_over_raw_futex_same": vs_futex_same,
                    "ratio_unix_over_txipc_cross": unix_speedup,
                    "detail": r,
                });
                println!("{v}");
            }
            Ok(())
        }
        BenchCmd::Tx { json } => {
            let r: TxBenchPending = anyhow::bail!("TEMP");
            println!("| transaction cost | ns |");
            println!("|---|---:|");
            println!(
                "| one undo record (typed write) | {:.1} |",
                r.undo_record_ns
            );
            println!(
                "| page-tracking fault (first write to a page) | {:.0} |",
                r.page_fault_ns
            );
            println!("| commit | {:.1} |", r.commit_ns);
            println!("| rollback, per record | {:.1} |", r.rollback_ns_per_record);
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
    }
}
