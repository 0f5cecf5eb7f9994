//! The `txipc` command: boot a system, call its servers, benchmark, demo.
//!
//! Every reporting command accepts `--json` and then prints one JSON object as its last line
//! (DESIGN.md §12).
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kv_api::KvClient;
use txipc_core::manifest::Manifest;
use txipc_runtime::Builtin;
use txipc_runtime::client::System;

mod demo;

/// Every server compiled into this binary.
fn builtins() -> Vec<Builtin> {
    let mut v = vec![kv_server::BUILTIN, fs_server::BUILTIN];
    v.extend(probe_server::BUILTINS);
    v
}

#[derive(Parser, Debug)]
#[command(
    name = "txipc",
    version,
    about = "A multi-server OS personality whose servers recover from faults without losing state"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a system from a manifest (the built-in default when none is given; `-` reads it
    /// from standard input) and serve until SIGINT/SIGTERM.
    Run {
        /// Manifest file (TOML), or `-` for standard input.
        manifest: Option<PathBuf>,
        /// System name (default: the manifest's `name`).
        #[arg(long)]
        system: Option<String>,
        /// Quiet: do not log recovery events.
        #[arg(long, short)]
        quiet: bool,
        /// Exit (taking every server with it) when the parent process dies. Used by programs
        /// that boot a private system (tests, benchmarks, the demo).
        #[arg(long, hide = true)]
        die_with_parent: bool,
    },
    /// The servers of a running system.
    Ps {
        #[arg(long, default_value = "default")]
        system: String,
        #[arg(long)]
        json: bool,
    },
    /// Call the kv server of a running system.
    Kv {
        #[arg(long, default_value = "default")]
        system: String,
        /// The server's name in the manifest.
        #[arg(long, default_value = "kv")]
        service: String,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        op: KvOp,
    },
    /// Benchmarks (numbers are ratios against baselines measured in the same run).
    Bench {
        #[command(subcommand)]
        what: txipc_bench::cli::BenchCmd,
    },
    /// Boot the default system, run clients, inject faults live, verify the state at the end.
    Demo(demo::DemoArgs),
    /// Internal: one demo client process (started by `txipc demo`).
    #[command(name = "__client", hide = true)]
    Client(demo::ClientArgs),
    /// Internal: the zygote of a server (started by the kernel).
    #[command(name = "__zygote", hide = true)]
    Zygote,
}

#[derive(Subcommand, Debug)]
enum KvOp {
    /// The value under KEY.
    Get { key: String },
    /// Store VALUE under KEY.
    Put { key: String, value: String },
    /// Remove KEY.
    Del { key: String },
    /// Add DELTA to the counter under KEY.
    Incr {
        key: String,
        #[arg(allow_hyphen_values = true)]
        delta: i64,
    },
    /// Up to LIMIT entries from START on.
    Scan {
        #[arg(default_value = "")]
        start: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

fn main() {
    // The zygote path first: it must not pay for anything else.
    if std::env::args().nth(1).as_deref() == Some("__zygote") {
        txipc_runtime::zygote_main(&builtins());
    }
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli) {
        eprintln!("txipc: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run {
            manifest,
            system,
            quiet,
            die_with_parent,
        } => {
            if die_with_parent {
                txipc_sys::process::die_with_parent(txipc_sys::process::getppid())?;
            }
            run(manifest, system, quiet)
        }
        Cmd::Ps { system, json } => ps(&system, json),
        Cmd::Kv {
            system,
            service,
            json,
            op,
        } => kv(&system, &service, json, op),
        Cmd::Bench { what } => {
            let exe = std::env::current_exe().context("locating the txipc binary")?;
            txipc_bench::cli::run(&exe, what)
        }
        Cmd::Demo(args) => demo::run(args),
        Cmd::Client(args) => demo::client_main(args),
        Cmd::Zygote => unreachable!("handled before parsing"),
    }
}

fn load_manifest(path: Option<PathBuf>) -> Result<Manifest> {
    let text = match path {
        None => return Ok(Manifest::default_system()),
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the manifest from standard input")?;
            s
        }
        Some(p) => std::fs::read_to_string(&p)
            .with_context(|| format!("reading the manifest {}", p.display()))?,
    };
    Ok(Manifest::parse(&text)?)
}

fn run(manifest: Option<PathBuf>, system: Option<String>, quiet: bool) -> Result<()> {
    let manifest = load_manifest(manifest)?;
    let system = system.unwrap_or_else(|| manifest.name.clone());
    if !txipc_core::paths::valid_system_name(&system) {
        bail!("system name `{system}` is not valid: use 1-64 letters, digits, '-', '_' or '.'");
    }
    let names: Vec<String> = manifest
        .servers
        .iter()
        .map(|s| format!("{} ({})", s.name, s.policy.as_str()))
        .collect();
    let opts = txipc_kernel::Options {
        exe: std::env::current_exe().context("locating the txipc binary")?,
        system: system.clone(),
        verbose: !quiet,
    };
    txipc_kernel::run(manifest, opts, |path| {
        // The first line on stdout is the readiness signal (SystemProcess waits for it).
        println!("ready {}", path.display());
        if quiet {
            return;
        }
        eprintln!(
            "txipc: system `{system}` is running: {}. Try `txipc kv put a 1`, `txipc ps`; Ctrl-C stops it.",
            names.join(", ")
        );
    })?;
    Ok(())
}

fn ps(system: &str, json: bool) -> Result<()> {
    let list = System::connect(system)?.ps()?;
    if json {
        let servers: Vec<serde_json::Value> = list
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "pid": s.pid, "generation": s.generation,
                    "policy": s.policy.as_str(), "tracking": format!("{:?}", s.tracking).to_lowercase(),
                    "state": s.state, "restarts": s.restarts,
                    "aborted_requests": s.aborted_requests, "retried_requests": s.retried_requests,
                    "calls": s.calls, "channels": s.channels, "last_recovery_us": s.last_recovery_us,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "servers": servers }));
    } else {
        println!(
            "{:<12} {:>8} {:>5} {:<8} {:<10} {:>8} {:>8} {:>8} {:>10} {:>12}",
            "NAME",
            "PID",
            "GEN",
            "POLICY",
            "STATE",
            "RESTARTS",
            "RETRIED",
            "ABORTED",
            "CALLS",
            "LAST-RECOV"
        );
        for s in list {
            println!(
                "{:<12} {:>8} {:>5} {:<8} {:<10} {:>8} {:>8} {:>8} {:>10} {:>12}",
                s.name,
                s.pid,
                s.generation,
                s.policy.as_str(),
                s.state,
                s.restarts,
                s.retried_requests,
                s.aborted_requests,
                s.calls,
                s.last_recovery_us
                    .map_or("-".into(), |us| format!("{us:.0} µs"))
            );
        }
    }
    Ok(())
}

fn kv(system: &str, service: &str, json: bool, op: KvOp) -> Result<()> {
    let sys = System::connect(system)?;
    let client = KvClient::new(sys.open(service)?);
    let show =
        |v: &Option<kv_api::Bytes>| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let (text, value) = match op {
        KvOp::Get { key } => {
            let v = client.get(key.into_bytes())?;
            (
                show(&v).unwrap_or_else(|| "(not found)".into()),
                serde_json::json!(show(&v)),
            )
        }
        KvOp::Put { key, value } => {
            let prev = client.put(key.into_bytes(), value.clone().into_bytes())?;
            (
                "OK".into(),
                serde_json::json!({"value": value, "previous": show(&prev)}),
            )
        }
        KvOp::Del { key } => {
            let prev = client.delete(key.into_bytes())?;
            (
                if prev.is_some() {
                    "deleted"
                } else {
                    "(not found)"
                }
                .into(),
                serde_json::json!(show(&prev)),
            )
        }
        KvOp::Incr { key, delta } => {
            let v = client.incr(key.into_bytes(), delta)?;
            (v.to_string(), serde_json::json!(v))
        }
        KvOp::Scan { start, limit } => {
            let entries = client.scan(start.into_bytes(), limit)?;
            let lines: Vec<String> = entries
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}\t{}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect();
            let obj: Vec<serde_json::Value> = entries
                .iter()
                .map(|(k, v)| {
                    serde_json::json!([String::from_utf8_lossy(k), String::from_utf8_lossy(v)])
                })
                .collect();
            (lines.join("\n"), serde_json::json!(obj))
        }
    };
    if json {
        println!("{}", serde_json::json!({ "ok": true, "value": value }));
    } else {
        println!("{text}");
    }
    Ok(())
}
