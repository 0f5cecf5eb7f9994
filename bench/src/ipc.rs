//! `txipc bench ipc`: the null call through the whole system against raw baselines.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use probe_server::NullClient;
use serde::Serialize;
use txipc_chan::baseline::{self, BenchConfig, IpcBaselines, Placement, Rtt};
use txipc_runtime::client::SystemProcess;

/// One placement's results.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementResult {
    /// The raw baselines (forked ping-pong pairs).
    pub baselines: IpcBaselines,
    /// The txipc null call: client stub → channel → server runtime (transaction, commit) → reply.
    pub txipc_rtt_ns: Rtt,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct IpcReport {
    /// Client on CPU 0, server on CPU 1.
    pub cross_core: PlacementResult,
    /// Both on CPU 0.
    pub same_core: PlacementResult,
}

fn manifest(cpu: usize, policy: &str) -> String {
    format!(
        "name = \"bench\"\n[[server]]\nname = \"null\"\nbuiltin = \"null\"\npolicy = \"{policy}\"\nheap_mb = 4\ncpu = {cpu}\nslots = 1\nrequest_max = 4096\nreply_max = 4096\n[[grant]]\nclient = \"*\"\nservice = \"null\"\n"
    )
}

/// Measures the txipc null call for one placement.
pub fn txipc_null_rtt(exe: &Path, placement: Placement, cfg: &BenchConfig) -> Result<Rtt> {
    let (client_cpu, server_cpu) = match placement {
        Placement::CrossCore => (0, 1),
        Placement::SameCore => (0, 0),
    };
    let name = crate::unique_system("bench-ipc");
    let sys = SystemProcess::spawn(
        exe,
        &manifest(server_cpu, "txipc"),
        &name,
        crate::BOOT_TIMEOUT,
    )
    .context("booting the benchmark system")?;
    let conn = sys.connect()?;
    let client = NullClient::new(conn.open("null")?);
    txipc_sys::process::pin_to_cpu(client_cpu).context("pinning the client")?;
    for _ in 0..cfg.warmup {
        client.ping()?;
    }
    let mut means = Vec::with_capacity(cfg.batches as usize);
    for _ in 0..cfg.batches {
        let t = Instant::now();
        for _ in 0..cfg.iterations {
            client.ping()?;
        }
        means.push(t.elapsed().as_nanos() as f64 / cfg.iterations as f64);
    }
    let _ = txipc_sys::process::pin_to_cpu_set_all();
    drop(client);
    drop(conn);
    sys.shutdown()?;
    let min = means.iter().copied().fold(f64::INFINITY, f64::min);
    let max = means.iter().copied().fold(0.0, f64::max);
    Ok(Rtt {
        median_ns: crate::median(&mut means),
        min_ns: min,
        max_ns: max,
        iterations: cfg.iterations,
        batches: cfg.batches,
    })
}

/// Runs every measurement. The raw baselines run first, while this process is still
/// single-threaded (they fork).
pub fn run(exe: &Path, cfg: &BenchConfig) -> Result<IpcReport> {
    let cross = baseline::measure_all(Placement::CrossCore, cfg)?;
    let same = baseline::measure_all(Placement::SameCore, cfg)?;
    let tx_cross = txipc_null_rtt(exe, Placement::CrossCore, cfg)?;
    let tx_same = txipc_null_rtt(exe, Placement::SameCore, cfg)?;
    Ok(IpcReport {
        cross_core: PlacementResult {
            baselines: cross,
            txipc_rtt_ns: tx_cross,
        },
        same_core: PlacementResult {
            baselines: same,
            txipc_rtt_ns: tx_same,
        },
    })
}
