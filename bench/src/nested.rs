//! `txipc bench nested`: the price of running a bank transfer as one transaction across three
//! servers (ARCHITECTURE.md §13), at 1, 2 and 8 clients.
//!
//! Three ways to move one unit from an account on `account-0` to one on `account-1`, measured
//! in interleaved rounds (medians reported):
//!
//! - `nested`: `bank.transfer` under policy `txipc` — the bank's two calls are nested calls,
//!   the account servers stay prepared until the bank commits, then two decisions;
//! - `plain`: the same `bank.transfer` under policy `none` — the same two calls through the same
//!   bank, without any transaction around them (or inside them);
//! - `direct`: the client makes the two `apply` calls itself on the `txipc` system — each its
//!   own transaction, nothing ties them together (what a client without nested transactions
//!   would do);
//! - `companion` (with `--policy ...,companion`): `bank.transfer` under policy `companion`
//!   (`bank-plain`, `account-plain`) — no transaction; the bank logs the request and records
//!   both calls with their replies, each account server logs its `apply` (with the call id)
//!   before running it (ARCHITECTURE.md §16).
//!
//! Each client is a thread with its own channel. Throughput is all clients together; latency
//! is per transfer.

use std::time::Instant;

use anyhow::{Result, anyhow};
use bank_api::{AccountClient, BankClient};
use serde::Serialize;
use txipc_runtime::client::SystemProcess;

use crate::{BOOT_TIMEOUT, median, unique_system};

/// What to run.
#[derive(Debug, Clone)]
pub struct NestedConfig {
    /// Client counts.
    pub clients: Vec<u32>,
    /// Transfers per client per measurement.
    pub ops: u64,
    /// Rounds (medians are reported).
    pub rounds: u32,
    /// Also measure the transfer under policy `companion`.
    pub companion: bool,
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct NestedRow {
    /// `nested`, `plain`, `direct` or `companion`.
    pub variant: String,
    /// Client threads.
    pub clients: u32,
    /// Transfers per second, all clients (median of the rounds).
    pub ops_per_sec: f64,
    /// Median latency of a transfer, ns (median of the rounds).
    pub p50_ns: f64,
    /// 99th percentile, ns (median of the rounds).
    pub p99_ns: f64,
}

const VARIANTS: [&str; 4] = ["nested", "plain", "direct", "companion"];
/// Accounts per account server.
const PER_SERVER: usize = 32;

fn manifest(name: &str, policy: &str) -> String {
    let mut m = format!("name = \"{name}\"\n");
    let (bank, account) = if policy == "companion" {
        ("bank-plain", "account-plain")
    } else {
        ("bank", "account")
    };
    for (n, b) in [
        ("bank", bank),
        ("account-0", account),
        ("account-1", account),
    ] {
        m += &format!(
            "[[server]]\nname = \"{n}\"\nbuiltin = \"{b}\"\npolicy = \"{policy}\"\nheap_mb = 256\nslots = 16\n"
        );
    }
    for s in ["bank", "account-0", "account-1"] {
        m += &format!("[[grant]]\nclient = \"*\"\nservice = \"{s}\"\n");
    }
    m += "[[grant]]\nclient = \"bank\"\nservice = \"account-0\"\n";
    m += "[[grant]]\nclient = \"bank\"\nservice = \"account-1\"\n";
    m
}

/// Names of accounts homed on `account-k`.
fn accounts_on(k: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("b{i}"))
        .filter(|n| bank_api::home(n, 2) == k)
        .take(PER_SERVER)
        .collect()
}

fn open_accounts(sys: &SystemProcess) -> Result<()> {
    let conn = sys.connect()?;
    let bank = BankClient::new(conn.open("bank")?);
    for k in 0..2 {
        for a in accounts_on(k) {
            bank.open(a, 1 << 40).map_err(|e| anyhow!("open: {e}"))?;
        }
    }
    Ok(())
}

/// Runs `clients` threads of `ops` transfers each; returns (ops/s, p50 ns, p99 ns).
fn measure(
    sys: &SystemProcess,
    variant: &str,
    clients: u32,
    ops: u64,
    id_base: u64,
) -> Result<(f64, f64, f64)> {
    let from = accounts_on(0);
    let to = accounts_on(1);
    let start = std::sync::Barrier::new(clients as usize + 1);
    let (results, wall) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (from, to, start) = (&from, &to, &start);
                s.spawn(move || -> Result<hdrhistogram::Histogram<u64>> {
                    let conn = sys.connect()?;
                    let mut h =
                        hdrhistogram::Histogram::<u64>::new_with_bounds(100, 10_000_000_000, 3)?;
                    let bank = BankClient::new(conn.open("bank")?);
                    let a0 = AccountClient::new(conn.open("account-0")?);
                    let a1 = AccountClient::new(conn.open("account-1")?);
                    start.wait();
                    for i in 0..ops {
                        let id = id_base + (u64::from(c) << 32) + i + 1;
                        let f = from[(i as usize + c as usize) % from.len()].clone();
                        let t = to[(i as usize * 7 + c as usize) % to.len()].clone();
                        let t0 = Instant::now();
                        match variant {
                            "direct" => {
                                a0.apply(f, id, -1).map_err(|e| anyhow!("debit: {e}"))?;
                                a1.apply(t, id, 1).map_err(|e| anyhow!("credit: {e}"))?;
                            }
                            _ => bank
                                .transfer(id, f, t, 1)
                                .map_err(|e| anyhow!("transfer: {e}"))?,
                        }
                        let _ = h.record((t0.elapsed().as_nanos() as u64).max(100));
                    }
                    Ok(h)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let r: Vec<Result<hdrhistogram::Histogram<u64>>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
            })
            .collect();
        (r, t0.elapsed())
    });
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(100, 10_000_000_000, 3)?;
    for r in results {
        all.add(r?)?;
    }
    let total = ops * u64::from(clients);
    Ok((
        total as f64 / wall.as_secs_f64().max(1e-9),
        all.value_at_quantile(0.5) as f64,
        all.value_at_quantile(0.99) as f64,
    ))
}

/// Runs the benchmark.
pub fn run(
    exe: &std::path::Path,
    cfg: &NestedConfig,
    log: impl Fn(&str),
) -> Result<Vec<NestedRow>> {
    let txipc_name = unique_system("bench-nested-txipc");
    let none_name = unique_system("bench-nested-none");
    let tx_sys = SystemProcess::spawn(
        exe,
        &manifest(&txipc_name, "txipc"),
        &txipc_name,
        BOOT_TIMEOUT,
    )?;
    let none_sys =
        SystemProcess::spawn(exe, &manifest(&none_name, "none"), &none_name, BOOT_TIMEOUT)?;
    let comp_sys = if cfg.companion {
        let name = unique_system("bench-nested-companion");
        Some(SystemProcess::spawn(
            exe,
            &manifest(&name, "companion"),
            &name,
            BOOT_TIMEOUT,
        )?)
    } else {
        None
    };
    open_accounts(&tx_sys)?;
    open_accounts(&none_sys)?;
    if let Some(c) = &comp_sys {
        open_accounts(c)?;
    }
    let variants: Vec<&str> = VARIANTS
        .iter()
        .copied()
        .filter(|v| *v != "companion" || cfg.companion)
        .collect();
    // samples[variant][clients] = (ops/s, p50, p99) per round
    let mut samples: Vec<Vec<Vec<(f64, f64, f64)>>> =
        vec![vec![Vec::new(); cfg.clients.len()]; variants.len()];
    let mut id_base = 0u64;
    for round in 0..cfg.rounds {
        log(&format!("round {} of {}", round + 1, cfg.rounds));
        for (ci, &clients) in cfg.clients.iter().enumerate() {
            for (vi, variant) in variants.iter().enumerate() {
                let sys = match *variant {
                    "plain" => &none_sys,
                    "companion" => comp_sys.as_ref().expect("companion system"),
                    _ => &tx_sys,
                };
                id_base += 1 << 40;
                samples[vi][ci].push(measure(sys, variant, clients, cfg.ops, id_base)?);
            }
        }
    }
    let mut rows = Vec::new();
    for (vi, variant) in variants.iter().enumerate() {
        for (ci, &clients) in cfg.clients.iter().enumerate() {
            let s = &samples[vi][ci];
            let mut t: Vec<f64> = s.iter().map(|x| x.0).collect();
            let mut p50: Vec<f64> = s.iter().map(|x| x.1).collect();
            let mut p99: Vec<f64> = s.iter().map(|x| x.2).collect();
            rows.push(NestedRow {
                variant: (*variant).into(),
                clients,
                ops_per_sec: median(&mut t),
                p50_ns: median(&mut p50),
                p99_ns: median(&mut p99),
            });
        }
    }
    tx_sys.shutdown()?;
    none_sys.shutdown()?;
    if let Some(c) = comp_sys {
        c.shutdown()?;
    }
    Ok(rows)
}

fn find<'a>(rows: &'a [NestedRow], variant: &str, clients: u32) -> Option<&'a NestedRow> {
    rows.iter()
        .find(|r| r.variant == variant && r.clients == clients)
}

/// The markdown table.
pub fn table(rows: &[NestedRow], clients: &[u32]) -> String {
    let companion = rows.iter().any(|r| r.variant == "companion");
    let mut s = String::from(
        "| clients | nested transfer (txipc) | same two calls, no transaction (none) | two direct calls (txipc, not atomic) | nested / no transaction |",
    );
    if companion {
        s += " transfer under companion | companion / no transaction |";
    }
    s += "\n|---:|---:|---:|---:|---:|";
    if companion {
        s += "---:|---:|";
    }
    s += "\n";
    let cell = |r: &NestedRow| {
        format!(
            "{:.0}/s, p50 {:.1} µs, p99 {:.1} µs",
            r.ops_per_sec,
            r.p50_ns / 1e3,
            r.p99_ns / 1e3
        )
    };
    for &c in clients {
        let (Some(n), Some(p), Some(d)) = (
            find(rows, "nested", c),
            find(rows, "plain", c),
            find(rows, "direct", c),
        ) else {
            continue;
        };
        s += &format!(
            "| {c} | {} | {} | {} | {:.2}× throughput, {:.2}× p50 |",
            cell(n),
            cell(p),
            cell(d),
            n.ops_per_sec / p.ops_per_sec,
            n.p50_ns / p.p50_ns,
        );
        if let Some(k) = find(rows, "companion", c) {
            s += &format!(
                " {} | {:.2}× throughput, {:.2}× p50 |",
                cell(k),
                k.ops_per_sec / p.ops_per_sec,
                k.p50_ns / p.p50_ns
            );
        }
        s += "\n";
    }
    s
}

/// The JSON report (`results` per variant and client count; `loss_vs_none_pct` of the nested
/// transfer against the plain one; `companion_loss_vs_none_pct` of the companion transfer).
pub fn json(rows: &[NestedRow], clients: &[u32]) -> serde_json::Value {
    let loss: serde_json::Map<String, serde_json::Value> = clients
        .iter()
        .filter_map(|&c| {
            let n = find(rows, "nested", c)?;
            let p = find(rows, "plain", c)?;
            Some((
                c.to_string(),
                serde_json::json!((1.0 - n.ops_per_sec / p.ops_per_sec) * 100.0),
            ))
        })
        .collect();
    let companion_loss: serde_json::Map<String, serde_json::Value> = clients
        .iter()
        .filter_map(|&c| {
            let k = find(rows, "companion", c)?;
            let p = find(rows, "plain", c)?;
            Some((
                c.to_string(),
                serde_json::json!((1.0 - k.ops_per_sec / p.ops_per_sec) * 100.0),
            ))
        })
        .collect();
    serde_json::json!({
        "results": rows,
        "loss_vs_none_pct": loss,
        "companion_loss_vs_none_pct": companion_loss,
    })
}
