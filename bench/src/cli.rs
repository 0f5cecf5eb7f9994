//! The `txipc bench` subcommands.
//!
//! `--json` is the command line's global flag, passed to [`run`]: with it, stdout carries only
//! the one JSON object and every table goes to stderr (the `table!` macro does that).

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use txipc_chan::baseline::BenchConfig;
use txipc_core::vocab::UsageError;

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
        /// Also measure iceoryx2 request-response and Servo's ipc-channel between two
        /// processes, cross-core, in the same run (needs a txipc built with `--features peers`).
        #[arg(long)]
        peers: bool,
        /// The manifest's `takeover` for both servers: `on` arms each one's standby as its
        /// spare (it spins at `SCHED_IDLE` on the server's CPU while armed), to measure what
        /// that costs a healthy server; `off` (the default) is the manifest's default.
        #[arg(long, default_value = "off")]
        takeover: String,
    },
    /// Serves one peer of `bench ipc --peers` (started by it; not for use by hand).
    #[command(hide = true)]
    PeerServe {
        /// `iceoryx2` or `ipc-channel`.
        #[arg(long)]
        peer: String,
        /// CPU to pin to.
        #[arg(long)]
        cpu: usize,
        /// iceoryx2 service name.
        #[arg(long)]
        name: String,
    },
    /// YCSB core workloads on the kv server under several policies, interleaved in rounds
    /// (the baseline `none` is always measured beside the others).
    Kv {
        /// Workload: a, b, c, d, e, f, a comma-separated list, or `all`.
        #[arg(long, default_value = "a")]
        workload: String,
        /// Policies: none, restart, txipc (typed tracking), page (page tracking; with
        /// `--batch N` > 1 also page tracking with group commit), companion (kv-plain with the
        /// following standby, against `none-plain`), companion-warm (the same with the server
        /// forking its checkpoints), a comma-separated list, or `all`. `none` is always
        /// measured as the baseline.
        #[arg(long, default_value = "all")]
        policy: String,
        /// Records loaded before each workload.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// Operations per policy per round (all clients together).
        #[arg(long, default_value_t = 50_000)]
        ops: u64,
        /// Client threads, each with its own channel. One (a clean ping-pong across the two
        /// CPUs) gives the steadiest figures; group commit needs two or more to form batches.
        #[arg(long, default_value_t = 1)]
        clients: u32,
        /// `batch_max` of the group-commit page-tracking run (1: no group-commit run).
        #[arg(long, default_value_t = 8)]
        batch: u32,
        /// Rounds; medians are reported.
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Operations per slice: each round runs the systems in turn, this many operations at
        /// a time, so that the machine's drift hits every policy alike.
        #[arg(long, default_value_t = 2_500)]
        slice: u64,
        /// Bytes per record (YCSB: 10 fields of 100 B, stored as one value).
        #[arg(long, default_value_t = 1000)]
        value_size: usize,
        /// Seed of the request streams.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// CPU of the servers (`none`: not pinned).
        #[arg(long, default_value = "1")]
        server_cpu: String,
        /// CPU of the client threads (`none`: not pinned).
        #[arg(long, default_value = "0")]
        client_cpu: String,
        /// Policy companion: checkpoint after this many logged requests (the manifest's
        /// `checkpoint_every`).
        #[arg(long, default_value_t = 50_000)]
        checkpoint_every: u64,
        /// Policy companion: checkpoint this many ms after the last one (`checkpoint_ms`; 0:
        /// only by count and by a full log).
        #[arg(long, default_value_t = 1000)]
        checkpoint_ms: u64,
        /// Policy companion: the message log's ring, MiB (`log_mb`). The standby checkpoints
        /// when the log behind the last checkpoint is half of it, so it must hold what the
        /// server logs in two `--checkpoint-ms` (about 190 MB/s on workload A on a quiet
        /// machine): at 64 MiB the log, not the manifest's period, set the pace, six full
        /// checkpoints a second.
        #[arg(long, default_value_t = 512)]
        log_mb: u64,
        /// Policy companion, following standby: the manifest's `follow_max_lag` (a replica
        /// more than this many records behind replays at its own priority; 0: never).
        #[arg(long, default_value_t = 0)]
        follow_max_lag: u64,
    },
    /// Fault → first reply of the new incarnation, measured by a client, on a kv server whose
    /// heap is filled and mapped: SIGKILL, and self-detected faults (SIGSEGV, panic).
    Recovery {
        /// Heap size of the kv server, MiB.
        #[arg(long, default_value_t = 16)]
        heap_mb: u64,
        /// Runs per fault kind.
        #[arg(long, default_value_t = 50)]
        runs: u32,
        /// Fraction of the heap filled with data (and mapped by the server) before the runs.
        #[arg(long, default_value_t = 0.8)]
        fill: f64,
        /// Faults: sigkill, segv, panic, hang, comma-separated, or `all` (the names of every
        /// `--fault`). With hang the server's deadline is 300 ms.
        #[arg(long, default_value = "all")]
        fault: String,
        /// Seed of the random fault instants.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// CPU of the server (`none`: not pinned).
        #[arg(long, default_value = "1")]
        server_cpu: String,
        /// CPU of the client (`none`: not pinned).
        #[arg(long, default_value = "0")]
        client_cpu: String,
        /// `txipc` (kv on the recoverable heap) or `companion` (kv-plain: the last checkpoint
        /// restored and the log behind it replayed; `--heap-mb` sizes its state).
        #[arg(long, default_value = "txipc")]
        policy: String,
        /// Policy companion: the manifest's `checkpoint_every` (logged requests between
        /// checkpoints; with the warm standby it bounds the log a recovery replays).
        #[arg(long, default_value_t = 50_000)]
        checkpoint_every: u64,
        /// Policy companion: the manifest's `checkpoint_ms` (0: no checkpoint by time).
        #[arg(long, default_value_t = 1000)]
        checkpoint_ms: u64,
        /// Policy companion: the manifest's `standby`: `follow` (the standby replays the log as
        /// it is written and takes the checkpoints) or `warm` (the server forks them, the
        /// standby restores each one).
        #[arg(long, default_value = "follow")]
        standby: String,
        /// Policy companion, `--standby follow`: the manifest's `follow_max_lag` (a replica
        /// more than this many records behind replays at its own priority, not nice 19; 0:
        /// never, the manifest's default).
        #[arg(long, default_value_t = 0)]
        follow_max_lag: u64,
        /// Policy txipc: the manifest's `takeover`: `on` (the standby, armed as the spare,
        /// takes over by itself) or `off` (the kernel recovers and activates it; the
        /// manifest's default).
        #[arg(long, default_value = "off")]
        takeover: String,
    },
    /// SVG plots (`kv_throughput.svg`, `recovery.svg`) and markdown tables from saved JSON
    /// reports of `bench kv` and `bench recovery`; without files, every committed plot of
    /// `bench/results` from its committed reports.
    Plot {
        /// Report files (the output of a `--json` run; the last JSON line is used). Without
        /// any: every committed plot, from the committed reports in `--out-dir`.
        files: Vec<std::path::PathBuf>,
        /// Where to write the SVG files (and, without files, where the reports are).
        #[arg(long, default_value = "bench/results")]
        out_dir: std::path::PathBuf,
        /// Prefix of the SVG file names (`companion_` gives `companion_kv_throughput.svg`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Transaction costs inside one process: undo record, page-tracking fault, commit, rollback.
    Tx,
    /// A bank transfer as one transaction across three servers against the same two calls
    /// without a transaction, at several client counts (`bench/src/nested.rs`).
    Nested {
        /// Client threads, comma-separated.
        #[arg(long, default_value = "1,2,8")]
        clients: String,
        /// Transfers per client per measurement.
        #[arg(long, default_value_t = 2000)]
        ops: u64,
        /// Rounds (medians are reported).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Policies of the transfer through the bank: `txipc` (always, against `none`), and
        /// `companion` to measure it under the companion too (`txipc,companion`).
        #[arg(long, default_value = "txipc")]
        policy: String,
    },
    /// The fs server through FUSE (`txipc mount`) under none, txipc and restart, with tmpfs as
    /// the ceiling, in the same run: metadata ops/s, 4 KiB and 1 MiB throughput, untar, git
    /// status, SQLite transactions. Needs root (it mounts).
    Fs(crate::fs::FsArgs),
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// A usage error (exit code 2) unless `ok`.
fn check(ok: bool, what: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(UsageError(what.into()).into())
    }
}

/// The hidden `bench peer-serve` command.
fn peer_serve(peer: &str, cpu: usize, name: &str) -> Result<()> {
    #[cfg(feature = "peers")]
    {
        let peer = match peer {
            "iceoryx2" => crate::peers::Peer::Iceoryx2,
            "ipc-channel" => crate::peers::Peer::IpcChannel,
            other => {
                return Err(UsageError(format!(
                    "--peer `{other}`: give `iceoryx2` or `ipc-channel`"
                ))
                .into());
            }
        };
        crate::peers::serve(peer, cpu, name)
    }
    #[cfg(not(feature = "peers"))]
    {
        let _ = (peer, cpu, name);
        Err(
            UsageError("bench peer-serve needs a txipc built with the `peers` feature".into())
                .into(),
        )
    }
}

fn parse_cpu(s: &str) -> Result<Option<usize>> {
    if s == "none" {
        return Ok(None);
    }
    let cpu: usize = s
        .parse()
        .map_err(|_| UsageError(format!("CPU `{s}`: give a CPU number or `none`")))?;
    let n = txipc_sys::process::cpus_available();
    check(cpu < n, format!("CPU {cpu}: this machine has CPUs 0..{n}"))?;
    Ok(Some(cpu))
}

/// Writes a table line: to stdout, or to stderr when stdout carries the JSON object.
macro_rules! table {
    ($json:expr, $($t:tt)*) => {
        if $json { eprintln!($($t)*) } else { println!($($t)*) }
    };
}

/// Writes preformatted table text (see [`table!`]).
fn table_text(json: bool, text: &str) {
    if json {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

/// Runs a benchmark command; `exe` is the txipc binary (to boot systems). With `json`, stdout
/// carries exactly one JSON object and the tables go to stderr.
pub fn run(exe: &Path, cmd: BenchCmd, json: bool) -> Result<()> {
    match cmd {
        BenchCmd::Nested {
            clients,
            ops,
            rounds,
            policy,
        } => {
            let mut companion = false;
            for p in policy.split(',').map(str::trim) {
                match p {
                    "txipc" => {}
                    "companion" => companion = true,
                    other => {
                        return Err(UsageError(format!(
                            "--policy takes txipc and companion (comma-separated), not `{other}`: the transfer is always measured under txipc against the same calls under none"
                        ))
                        .into());
                    }
                }
            }
            let clients: Vec<u32> = clients
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|&n| (1..=64).contains(&n))
                })
                .collect::<Option<_>>()
                .ok_or_else(|| UsageError("--clients is a list of 1..=64, e.g. 1,2,8".into()))?;
            check(
                ops >= 1 && rounds >= 1,
                "--ops and --rounds must be at least 1",
            )?;
            let cfg = crate::nested::NestedConfig {
                clients,
                ops,
                rounds,
                companion,
            };
            let rows = crate::nested::run(exe, &cfg, |m| eprintln!("bench nested: {m}"))?;
            table_text(json, &crate::nested::table(&rows, &cfg.clients));
            if json {
                println!("{}", crate::nested::json(&rows, &cfg.clients));
            }
            Ok(())
        }
        BenchCmd::Kv {
            workload,
            policy,
            records,
            ops,
            clients,
            batch,
            rounds,
            slice,
            value_size,
            seed,
            server_cpu,
            client_cpu,
            checkpoint_every,
            checkpoint_ms,
            log_mb,
            follow_max_lag,
        } => {
            check(
                (1..=4096).contains(&log_mb),
                "--log-mb must be 1..=4096 (the manifest's log_mb)",
            )?;
            check(
                (1..=64).contains(&batch),
                "--batch must be 1..=64 (batch_max)",
            )?;
            check(
                records >= 1 && ops >= 1 && clients >= 1 && rounds >= 1,
                "--records, --ops, --clients and --rounds must be at least 1",
            )?;
            check(
                value_size <= kv_api::MAX_VALUE,
                format!("--value-size is at most {}", kv_api::MAX_VALUE),
            )?;
            let cfg = crate::kv::KvConfig {
                workloads: crate::kv::parse_workloads(&workload)
                    .map_err(|e| UsageError(e.to_string()))?,
                variants: crate::kv::parse_policies(&policy, batch)
                    .map_err(|e| UsageError(e.to_string()))?,
                records,
                ops,
                clients,
                rounds,
                slice_ops: slice.max(1),
                value_size,
                seed,
                server_cpu: parse_cpu(&server_cpu)?,
                client_cpu: parse_cpu(&client_cpu)?,
                checkpoint_every: checkpoint_every.max(1),
                checkpoint_ms,
                log_mb,
                follow_max_lag,
            };
            let results = crate::kv::run(exe, &cfg, |m| eprintln!("bench kv: {m}"))?;
            table_text(json, &crate::kv::table(&results));
            if json {
                println!("{}", crate::kv::json(&cfg, &results));
            }
            Ok(())
        }
        BenchCmd::PeerServe { peer, cpu, name } => peer_serve(&peer, cpu, &name),
        BenchCmd::Ipc {
            iterations,
            batches,
            peers,
            takeover,
        } => {
            check(
                iterations >= 1 && batches >= 1,
                "--iterations and --batches must be at least 1",
            )?;
            check(
                takeover == "on" || takeover == "off",
                "--takeover is `on` or `off`",
            )?;
            #[cfg(not(feature = "peers"))]
            check(
                !peers,
                "--peers needs a txipc built with the `peers` feature: \
                 `cargo build --release -p txipc --features peers` \
                 (iceoryx2 needs libclang: `apt-get install libclang-dev`; see the README)",
            )?;
            let cfg = BenchConfig {
                warmup: iterations / 4,
                iterations,
                batches,
            };
            let r = crate::ipc::run(exe, &cfg, peers, takeover == "on")?;
            let c = &r.cross_core;
            let s = &r.same_core;
            let rows = [
                (
                    "txipc null call",
                    c.txipc_rtt_ns.median_ns,
                    s.txipc_rtt_ns.median_ns,
                ),
                (
                    "txipc echo, 1000 B each way",
                    c.payload.echo_rtt_ns.median_ns,
                    s.payload.echo_rtt_ns.median_ns,
                ),
                (
                    "txipc kv get, 1000 B value (get_with)",
                    c.payload.kv_get_rtt_ns.median_ns,
                    s.payload.kv_get_rtt_ns.median_ns,
                ),
                (
                    "txipc kv get, 1000 B value (owned get)",
                    c.payload.kv_get_owned_rtt_ns.median_ns,
                    s.payload.kv_get_owned_rtt_ns.median_ns,
                ),
                (
                    "raw spinning ping-pong, 1000 B reply",
                    c.payload.raw_spin_reply_rtt_ns.median_ns,
                    s.payload.raw_spin_reply_rtt_ns.median_ns,
                ),
                (
                    "channel alone, 1000 B reply",
                    c.payload.chan_reply_rtt_ns.median_ns,
                    s.payload.chan_reply_rtt_ns.median_ns,
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
            table!(json, "| round trip (median ns) | cross-core | same core |");
            table!(json, "|---|---:|---:|");
            for (name, x, y) in rows {
                table!(json, "| {name} | {x:.0} | {y:.0} |");
            }
            // The cross-core ratios of the goals are taken batch by batch (interleaved batches),
            // then their median: a load change mid-run hits both sides of each ratio alike.
            let vs_spin = c.ratios.null_over_raw_spin.median;
            let vs_futex_same = ratio(
                s.txipc_rtt_ns.median_ns,
                s.baselines.raw_futex_rtt_ns.median_ns,
            );
            let unix_speedup = ratio(
                c.baselines.unix_socket_rtt_ns.median_ns,
                c.txipc_rtt_ns.median_ns,
            );
            if let Some(p) = &r.peers {
                table!(
                    json,
                    "| iceoryx2 request-response | {:.0} | |",
                    p.iceoryx2_rtt_ns.median_ns
                );
                table!(
                    json,
                    "| ipc-channel | {:.0} | |",
                    p.ipc_channel_rtt_ns.median_ns
                );
                table!(
                    json,
                    "iceoryx2 / txipc (cross-core) = {:.2}x; ipc-channel / txipc (cross-core) = {:.2}x (goal: both > 1)",
                    ratio(p.iceoryx2_rtt_ns.median_ns, c.txipc_rtt_ns.median_ns),
                    ratio(p.ipc_channel_rtt_ns.median_ns, c.txipc_rtt_ns.median_ns)
                );
            }
            let get_vs_null = c.ratios.kv_get_over_null.median;
            let per_batch = |r: &crate::ipc::RatioSeries| {
                r.per_batch
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            table!(
                json,
                "per batch (cross-core, interleaved): null call / raw spin = {}; channel / raw spin = {}; null call / channel = {}; kv get / null call = {}",
                per_batch(&c.ratios.null_over_raw_spin),
                per_batch(&c.ratios.chan_over_raw_spin),
                per_batch(&c.ratios.null_over_chan),
                per_batch(&c.ratios.kv_get_over_null)
            );
            table!(
                json,
                "channel / raw spin (cross-core) = {:.2}x; null call / channel (cross-core) = {:.2}x (medians of the per-batch ratios)",
                c.ratios.chan_over_raw_spin.median,
                c.ratios.null_over_chan.median
            );
            table!(
                json,
                "kv get of 1000 B / null call (cross-core) = {get_vs_null:.2}x (goal <= 1.5)"
            );
            table!(
                json,
                "txipc / raw spin (cross-core) = {vs_spin:.2}x (goal <= 1.2); txipc / raw futex (same core) = {vs_futex_same:.2}x (goal <= 1.2); unix socket / txipc (cross-core) = {unix_speedup:.1}x (goal >= 10)"
            );
            if json {
                let mut v = serde_json::json!({
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
                    "echo_1000_rtt_ns": c.payload.echo_rtt_ns.median_ns,
                    "kv_get_1000_rtt_ns": c.payload.kv_get_rtt_ns.median_ns,
                    "kv_get_owned_1000_rtt_ns": c.payload.kv_get_owned_rtt_ns.median_ns,
                    "raw_spin_reply_1000_rtt_ns": c.payload.raw_spin_reply_rtt_ns.median_ns,
                    "chan_reply_1000_rtt_ns": c.payload.chan_reply_rtt_ns.median_ns,
                    "ratio_kv_get_owned_1000_over_null_cross": c.ratios.kv_get_owned_over_null.median,
                    "ratio_kv_get_1000_over_null_cross": get_vs_null,
                    "ratio_txipc_over_raw_spin_cross": vs_spin,
                    "ratio_chan_over_raw_spin_cross": c.ratios.chan_over_raw_spin.median,
                    "ratio_txipc_over_chan_cross": c.ratios.null_over_chan.median,
                    "ratio_txipc_over_raw_futex_same": vs_futex_same,
                    "ratio_unix_over_txipc_cross": unix_speedup,
                    "detail": r,
                });
                if let Some(p) = &r.peers {
                    v["iceoryx2_rtt_ns"] = p.iceoryx2_rtt_ns.median_ns.into();
                    v["ipc_channel_rtt_ns"] = p.ipc_channel_rtt_ns.median_ns.into();
                }
                println!("{v}");
            }
            Ok(())
        }
        BenchCmd::Recovery {
            heap_mb,
            runs,
            fill,
            fault,
            seed,
            server_cpu,
            client_cpu,
            policy,
            checkpoint_every,
            checkpoint_ms,
            standby,
            follow_max_lag,
            takeover,
        } => {
            use crate::recovery::Fault;
            check(
                takeover == "on" || takeover == "off",
                "--takeover is `on` or `off`",
            )?;
            check(
                standby == "follow" || standby == "warm",
                "--standby is `follow` or `warm`",
            )?;
            check(
                policy == "txipc" || policy == "companion",
                "--policy is `txipc` or `companion` for bench recovery",
            )?;
            check(runs >= 1, "--runs must be at least 1")?;
            check(
                (0.0..=0.95).contains(&fill),
                "--fill is a fraction of the heap, 0..=0.95",
            )?;
            use txipc_core::vocab::Fault as F;
            let faults =
                txipc_core::vocab::parse_faults(&fault, &[F::Sigkill, F::Segv, F::Panic, F::Hang])
                    .map_err(UsageError)?
                    .into_iter()
                    .map(|f| match f {
                        F::Sigkill => Fault::Sigkill,
                        F::Segv => Fault::Segv,
                        F::Panic => Fault::Panic,
                        F::Hang => Fault::Hang,
                        other => unreachable!("`{other}` is not in the allowed list"),
                    })
                    .collect();
            let cfg = crate::recovery::RecoveryConfig {
                heap_mb,
                runs,
                fill,
                faults,
                seed,
                server_cpu: parse_cpu(&server_cpu)?,
                client_cpu: parse_cpu(&client_cpu)?,
                policy,
                checkpoint_every: checkpoint_every.max(1),
                checkpoint_ms,
                standby,
                follow_max_lag,
                takeover: takeover == "on",
            };
            let r = crate::recovery::run(exe, &cfg, |m| eprintln!("bench recovery: {m}"))?;
            table_text(json, &crate::recovery::table(&r));
            table!(
                json,
                "exactly-once held: {}; call errors: {}; one re-read of the heap: {:.1} ms",
                r.exactly_once,
                r.errors,
                r.rewarm_ms
            );
            if json {
                println!("{}", crate::recovery::json(&r));
            }
            Ok(())
        }
        BenchCmd::Plot {
            files,
            out_dir,
            prefix,
        } => {
            let md = if files.is_empty() {
                crate::plot::run_committed(&out_dir, &out_dir)?
            } else {
                crate::plot::run(&files, &out_dir, &prefix)?
            };
            table_text(json, &md);
            eprintln!("bench plot: SVG files written to {}", out_dir.display());
            if json {
                let v = serde_json::json!({"ok": true, "out_dir": out_dir, "markdown": md});
                println!("{v}");
            }
            Ok(())
        }
        BenchCmd::Fs(args) => crate::fs::cli(exe, args, json),
        BenchCmd::Tx => {
            let r = txipc_heap::bench::bench_tx(&txipc_heap::bench::TxBenchOptions::default())?;
            table!(json, "| transaction cost | ns |");
            table!(json, "|---|---:|");
            table!(
                json,
                "| one undo record (typed write) | {:.1} |",
                r.undo_record_ns
            );
            table!(
                json,
                "| page-tracking fault (first write to a page) | {:.0} |",
                r.page_fault_ns
            );
            table!(json, "| commit | {:.1} |", r.commit_ns);
            table!(
                json,
                "| begin, one batch entry, commit | {:.1} |",
                r.batch_commit_ns
            );
            table!(
                json,
                "| the same begun lazily, nothing written | {:.1} |",
                r.read_only_commit_ns
            );
            table!(
                json,
                "| rollback, per record | {:.1} |",
                r.rollback_ns_per_record
            );
            table!(
                json,
                "| kv put, typed tracking | {:.0} |",
                r.kv_put_typed_ns
            );
            table!(json, "| kv put, tracking off | {:.0} |", r.kv_put_off_ns);
            table!(json, "| kv get | {:.0} |", r.kv_get_ns);
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
    }
}
