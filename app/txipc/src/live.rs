//! The live-fault driver of `txipc demo` (both workloads): client processes run while faults
//! are injected into the system's servers, with a live display, until every client reported.
//!
//! Each client process prints `progress OPS FAILED P99_NS` lines while it runs and one
//! `result JSON` line at the end. The driver collects them, injects a fault of a random kind
//! into a random server every ~`interval` (jittered ±50%, from one seeded generator, so a seed
//! replays the schedule), and shows once a second:
//!
//! A fault goes only into a server that is serving (`ps` says `running`): when the chosen one is
//! still recovering from the previous fault, the fault waits for the next tick. Otherwise, with
//! recovery slower than the interval (a debug build, a loaded machine), each new incarnation
//! would meet an armed fail point on the first request it runs, the same waiting request every
//! time, which is then rightly charged as a poison request: the storm would test the poison
//! rule instead of recovery. Faults during recovery are crash points of their own tests.
//!
//! - on a terminal (stdout, not `--json`, not `--quiet`): `txipc top`'s per-server table
//!   (calls/s, p99, faults, recoveries, the last fault) and the system's recent log, under the
//!   demo's own line, refreshed in place ([`crate::top::Inline`]);
//! - otherwise: one plain progress line on stderr.
//!
//! A client that has not reported `grace` after the end is stuck in a call (no call may wait
//! forever): it is killed, and counted missing by the caller. After the clients, the driver
//! waits (bounded) for the last recovery to finish.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{RngExt, SeedableRng};
use serde::de::DeserializeOwned;
use txipc_core::latency::human_ns;
use txipc_core::proto::ServerInfo;
use txipc_core::vocab::Fault;
use txipc_runtime::client::System;

use crate::top::{Inline, Sampler};

/// A client process and its stdout lines.
pub struct ClientProc {
    /// The process.
    pub child: Child,
    rx: mpsc::Receiver<String>,
}

/// Starts `exe ARGS...` as a client process, its stdout read line by line.
pub fn spawn_client(exe: &Path, args: &[OsString]) -> Result<ClientProc> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a client process")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(ClientProc { child, rx })
}

/// What to run.
pub struct Storm<'a> {
    /// The system (its name: for its log).
    pub system: &'a str,
    /// Its control connection.
    pub conn: &'a System,
    /// The servers faults go to (one chosen at random for each).
    pub servers: &'a [&'a str],
    /// The kinds of fault (one chosen at random for each).
    pub faults: &'a [Fault],
    /// Mean time between two faults.
    pub interval_ms: u64,
    /// How long the clients run.
    pub millis: u64,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// How long past the end a client may take to report.
    pub grace: Duration,
    /// What a client's operation is called in the progress line (`ops`, `transfers`).
    pub unit: &'a str,
    /// No display at all.
    pub quiet: bool,
    /// `--json`: stdout is the report's only, so the display goes to stderr lines.
    pub json: bool,
}

/// What happened.
pub struct Outcome<R> {
    /// Each client's report (`None`: it did not report and was killed).
    pub results: Vec<Option<R>>,
    /// Faults injected (delivered).
    pub faults_injected: u64,
    /// Faults by kind.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Faults by server.
    pub faults_by_server: BTreeMap<String, u64>,
    /// Seconds the clients ran.
    pub seconds: f64,
    /// The servers once settled (every one running, or one dead or held), or as last seen.
    pub servers: Vec<ServerInfo>,
}

/// Injects one fault: `(connection, server, kind, generator)`; `Ok` if it was delivered.
pub type Inject<'a> = dyn FnMut(&System, &str, Fault, &mut rand::rngs::StdRng) -> Result<()> + 'a;

/// Runs the clients to their end under faults; see the module documentation.
pub fn drive<R: DeserializeOwned>(
    storm: &Storm<'_>,
    clients: &mut [ClientProc],
    inject: &mut Inject<'_>,
) -> Result<Outcome<R>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(storm.seed);
    let n = clients.len();
    let mut out = Outcome {
        results: (0..n).map(|_| None).collect(),
        faults_injected: 0,
        faults_by_kind: BTreeMap::new(),
        faults_by_server: BTreeMap::new(),
        seconds: 0.0,
        servers: Vec::new(),
    };
    let start = Instant::now();
    let end = start + Duration::from_millis(storm.millis);
    let jitter = |rng: &mut rand::rngs::StdRng| {
        let lo = storm.interval_ms / 2;
        Duration::from_millis(rng.random_range(lo..=storm.interval_ms + lo).max(1))
    };
    let mut next_fault = start + jitter(&mut rng);
    let mut next_show = start + Duration::from_secs(1);
    let (mut ops, mut failed, mut p99s) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    let mut last = (start, 0u64);
    let mut display = Display::new(storm);
    // Until every client reported (bounded: clients stop by themselves at `end`).
    let hard_stop = end + storm.grace;
    while out.results.iter().any(Option::is_none) && Instant::now() < hard_stop {
        for (i, c) in clients.iter().enumerate() {
            while let Ok(line) = c.rx.try_recv() {
                if let Some(rest) = line.strip_prefix("progress ") {
                    let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                    if let [o, f, p] = v[..] {
                        (ops[i], failed[i], p99s[i]) = (o, f, p);
                    }
                } else if let Some(rest) = line.strip_prefix("result ") {
                    out.results[i] =
                        Some(serde_json::from_str(rest).context("reading a client's report")?);
                }
            }
        }
        let now = Instant::now();
        if now >= next_fault && now < end {
            let kind = storm.faults[rng.random_range(0..storm.faults.len())];
            let server = if storm.servers.len() == 1 {
                storm.servers[0]
            } else {
                storm.servers[rng.random_range(0..storm.servers.len())]
            };
            let serving = storm.conn.ps().is_ok_and(|servers| {
                servers
                    .iter()
                    .any(|s| s.name == server && s.state == "running")
            });
            if serving {
                if inject(storm.conn, server, kind, &mut rng).is_ok() {
                    out.faults_injected += 1;
                    *out.faults_by_kind.entry(kind.as_str().into()).or_default() += 1;
                    *out.faults_by_server.entry(server.into()).or_default() += 1;
                }
                next_fault = now + jitter(&mut rng);
            }
        }
        if now >= next_show {
            let total: u64 = ops.iter().sum();
            let rate = (total - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            let line = format!(
                "[{:>4.1}s] {:>8.0} {}/s  requests {:>8}  faults {:>4}  failed {:>3}  client p99 {}",
                now.duration_since(start).as_secs_f64(),
                rate,
                storm.unit,
                total,
                out.faults_injected,
                failed.iter().sum::<u64>(),
                human_ns(p99s.iter().copied().max().unwrap_or(0))
            );
            display.show(storm, line);
            last = (now, total);
            next_show = now + Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(display);
    out.seconds = start
        .elapsed()
        .as_secs_f64()
        .min(storm.millis as f64 / 1000.0);
    // A client that has not reported by now is stuck in a call: kill it so the demo itself
    // never hangs.
    for (i, c) in clients.iter_mut().enumerate() {
        if out.results[i].is_none() {
            let _ = c.child.kill();
        }
        let _ = c.child.wait();
    }
    // Let the last recovery finish, and the last decisions arrive (bounded): a coordinator
    // publishes a root's replies before it tells the participants (ARCHITECTURE.md §13), so a
    // client may have its last reply, and be gone, while a participant is still prepared for
    // it. Read at once, a storm on a loaded machine reported such a participant as left
    // undecided (`nested::bank_storm_in_every_server`: 1 of 3 runs beside two busy loops).
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(10) {
        match storm.conn.ps() {
            Ok(ps) if ps.iter().all(|s| s.state == "running" && !s.prepared) => break,
            Ok(ps) if ps.iter().any(|s| s.state == "dead" || s.state == "held") => break,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    out.servers = storm.conn.ps().unwrap_or_default();
    Ok(out)
}

/// The live display: the top view on a terminal, else plain lines on stderr, or nothing.
enum Display {
    Quiet,
    Lines(Sampler),
    View(Sampler, Inline),
}

/// Log lines the view shows.
const VIEW_LOG_LINES: usize = 6;

impl Display {
    fn new(storm: &Storm<'_>) -> Display {
        if storm.quiet {
            return Display::Quiet;
        }
        let sampler = Sampler::new(None);
        if storm.json {
            return Display::Lines(sampler);
        }
        let lines = crate::top::height(1, storm.servers.len(), VIEW_LOG_LINES);
        match Inline::on_terminal(lines) {
            Some(view) => Display::View(sampler, view),
            None => Display::Lines(sampler),
        }
    }

    fn show(&mut self, storm: &Storm<'_>, line: String) {
        match self {
            Display::Quiet => {}
            Display::Lines(sampler) => {
                // The servers' state and interval p99 after the clients' figures.
                let servers = sampler.sample(storm.conn).map_or_else(
                    |_| " (no status)".to_string(),
                    |s| {
                        s.rows
                            .iter()
                            .map(|r| {
                                format!(
                                    "  {} {} p99 {} recoveries {}",
                                    r.info.name,
                                    r.info.state,
                                    r.p99_words(),
                                    r.info.restarts
                                )
                            })
                            .collect()
                    },
                );
                eprintln!("{line}{servers}");
            }
            Display::View(sampler, view) => {
                if let Ok(s) = sampler.sample(storm.conn) {
                    let logs = crate::top::recent_log(storm.system, VIEW_LOG_LINES);
                    let _ = view.show(&[line], &s, &logs);
                }
            }
        }
    }
}
