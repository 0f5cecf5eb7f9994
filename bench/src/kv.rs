//! `txipc bench kv`: the YCSB core workloads on the kv server, under every policy.
//!
//! For each workload, one system per policy variant is booted (all at once, each a kv server
//! pinned to the server CPU), each is loaded with the same records, and then the workload runs
//! on each in turn for several rounds, each round made of short slices (2 500 operations by
//! default) that visit every system in turn, the order rotated: `none, txipc, page, …`,
//! then `txipc, page, …, none`, and so on. The machine is shared and drifts (its speed changes
//! by 2× within seconds when other jobs run), so every comparison is made between slices tens
//! of milliseconds apart, and reported as the median over rounds of the per-round ratio to
//! `none`.
//!
//! Every policy gets the same client seeds, so each sees the same request stream.
//!
//! What is measured per policy: throughput (per round, the median over its slices of the
//! slice's operations over its wall time, so that a slice another job slowed down does not
//! count; the plain wall-time figure is reported beside it as `ops_per_sec_wall`) and the latency of each operation (hdrhistogram, all rounds merged). A
//! read-modify-write counts as one operation, as in YCSB.

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use kv_api::KvClient;
use serde::Serialize;
use txipc_runtime::client::{Channel, SystemProcess};

use crate::ycsb::{
    Generator, InsertSequence, Op, Rng, Workload, fill_value, key_name, key_name_into,
};

/// One server configuration to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Policy `none`: no tracking, a crash is final. The baseline.
    None,
    /// Policy `restart`: no tracking, restarted empty.
    Restart,
    /// Policy `txipc`, typed tracking.
    Txipc,
    /// Policy `txipc`, page tracking, one request per transaction.
    Page,
    /// Policy `txipc`, page tracking, group commit of up to this many requests.
    PageBatch(u32),
    /// Policy `none` on `kv-plain` (state in ordinary Rust collections): the baseline of
    /// `companion`, the same server code without the companion.
    PlainNone,
    /// Policy `companion` on `kv-plain`, checkpoints on (manifest defaults: every 50,000
    /// logged requests or 1 s, and when the log is 3/4 full), taken by the following standby
    /// from its replica (manifest default `standby = "follow"`).
    Companion,
    /// The same with `standby = "warm"`: the server forks each checkpoint, the standby
    /// restores it (the design before the following standby, measured beside it).
    CompanionWarm,
}

impl Variant {
    /// The label in tables and JSON (`policy`).
    pub fn label(self) -> String {
        match self {
            Variant::None => "none".into(),
            Variant::Restart => "restart".into(),
            Variant::Txipc => "txipc".into(),
            Variant::Page => "page".into(),
            Variant::PageBatch(n) => format!("page+batch{n}"),
            Variant::PlainNone => "none-plain".into(),
            Variant::Companion => "companion".into(),
            Variant::CompanionWarm => "companion-warm".into(),
        }
    }

    fn policy(self) -> &'static str {
        match self {
            Variant::None | Variant::PlainNone => "none",
            Variant::Restart => "restart",
            Variant::Companion | Variant::CompanionWarm => "companion",
            _ => "txipc",
        }
    }

    /// The built-in server it runs.
    fn builtin(self) -> &'static str {
        match self {
            Variant::PlainNone | Variant::Companion | Variant::CompanionWarm => "kv-plain",
            _ => "kv",
        }
    }

    /// The variant its loss is measured against: the same server code under `none`.
    fn baseline(self) -> Variant {
        match self {
            Variant::PlainNone | Variant::Companion | Variant::CompanionWarm => Variant::PlainNone,
            _ => Variant::None,
        }
    }

    /// The manifest's tracking mode (what the server runs with: `off` without policy txipc).
    fn tracking(self) -> &'static str {
        match self {
            Variant::Page | Variant::PageBatch(_) => "page",
            Variant::Txipc => "typed",
            Variant::None
            | Variant::Restart
            | Variant::PlainNone
            | Variant::Companion
            | Variant::CompanionWarm => "off",
        }
    }

    fn manifest_tracking(self) -> &'static str {
        match self {
            Variant::Page | Variant::PageBatch(_) => "page",
            _ => "typed",
        }
    }

    fn batch_max(self) -> u32 {
        match self {
            Variant::PageBatch(n) => n,
            _ => 1,
        }
    }
}

/// Parses `--policy`: `none|restart|txipc|page|all`, comma-separated lists allowed. `none` is
/// always measured (first), as the baseline; `page` with `batch > 1` also measures group
/// commit.
pub fn parse_policies(s: &str, batch: u32) -> Result<Vec<Variant>> {
    let mut v = vec![Variant::None];
    let mut add = |x: Variant| {
        if !v.contains(&x) {
            v.push(x);
        }
    };
    for p in s.split(',') {
        match p.trim() {
            "none" => {}
            "restart" => add(Variant::Restart),
            "txipc" | "typed" => add(Variant::Txipc),
            "page" => {
                add(Variant::Page);
                if batch > 1 {
                    add(Variant::PageBatch(batch));
                }
            }
            "companion" => {
                add(Variant::PlainNone);
                add(Variant::Companion);
            }
            "companion-warm" => {
                add(Variant::PlainNone);
                add(Variant::CompanionWarm);
            }
            "all" => {
                for x in [Variant::Txipc, Variant::Page, Variant::Restart] {
                    add(x);
                }
                if batch > 1 {
                    add(Variant::PageBatch(batch));
                }
                add(Variant::PlainNone);
                add(Variant::Companion);
            }
            other => {
                bail!(
                    "unknown policy `{other}`: use none, restart, txipc, page, companion, companion-warm or all"
                )
            }
        }
    }
    Ok(v)
}

/// Parses `--workload`: `a`..`f`, `all`, or a comma-separated list.
pub fn parse_workloads(s: &str) -> Result<Vec<Workload>> {
    if s == "all" {
        return Ok(Workload::ALL.to_vec());
    }
    s.split(',')
        .map(|w| {
            Workload::parse(w.trim())
                .with_context(|| format!("unknown workload `{w}`: use a, b, c, d, e, f or all"))
        })
        .collect()
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct KvConfig {
    /// Workloads, in order.
    pub workloads: Vec<Workload>,
    /// Server configurations; the first is the baseline (`none`).
    pub variants: Vec<Variant>,
    /// Records loaded before each workload.
    pub records: u64,
    /// Operations per policy per round (all clients together).
    pub ops: u64,
    /// Client threads, each with its own channel.
    pub clients: u32,
    /// Rounds (medians are reported).
    pub rounds: u32,
    /// Operations per slice: a round runs the systems in turn, this many operations at a time.
    pub slice_ops: u64,
    /// Bytes per record value (YCSB: 10 fields × 100 B = 1000 B, stored as one value).
    pub value_size: usize,
    /// Base seed of the clients' generators.
    pub seed: u64,
    /// CPU the servers are pinned to.
    pub server_cpu: Option<usize>,
    /// CPU the client threads are pinned to.
    pub client_cpu: Option<usize>,
    /// Policy companion: the manifest's `checkpoint_every`.
    pub checkpoint_every: u64,
    /// Policy companion: the manifest's `checkpoint_ms`.
    pub checkpoint_ms: u64,
    /// Policy companion: the manifest's `log_mb` (the other policies keep 64).
    pub log_mb: u64,
    /// Policy companion, following standby: the manifest's `follow_max_lag` (0: no bound).
    pub follow_max_lag: u64,
}

/// The result of one workload under one server configuration.
#[derive(Debug, Clone, Serialize)]
pub struct KvResult {
    /// YCSB workload letter.
    pub workload: Workload,
    /// `none`, `restart`, `txipc` (typed tracking), `page`, `page+batchN`.
    pub policy: String,
    /// The variant the losses are measured against (`none`, or `none-plain` for `companion`:
    /// the same server code without recovery).
    pub baseline: String,
    /// The manifest's policy.
    pub manifest_policy: &'static str,
    /// The manifest's tracking.
    pub tracking: &'static str,
    /// The manifest's `batch_max`.
    pub batch_max: u32,
    /// Throughput: the median over rounds of each round's median slice throughput (a slice
    /// that another job on the machine slowed down does not count).
    pub ops_per_sec: f64,
    /// Each round's throughput (median of its slices).
    pub ops_per_sec_rounds: Vec<f64>,
    /// Throughput over wall time, all slices of a round counted (median over rounds): what
    /// the machine delivered, interference included.
    pub ops_per_sec_wall: f64,
    /// Service rate without stalls: clients / mean latency of the operations that took at
    /// most 1 ms (median over rounds). Operations slower than that were preempted by other
    /// jobs on this shared machine; excluding them leaves the cost of the operation itself.
    /// Exact for one client; with several clients on one CPU it is an upper bound.
    pub ops_per_sec_unstalled: f64,
    /// Loss against `none` on `ops_per_sec_unstalled`, percent (median over rounds).
    pub loss_unstalled_pct: f64,
    /// Latency percentiles over all rounds, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// 99.99th percentile.
    pub p9999_ns: u64,
    /// Slowest operation.
    pub max_ns: u64,
    /// Mean latency.
    pub mean_ns: f64,
    /// Share of operations slower than 1 ms (preemption of the client or the server by
    /// something else: no kv operation needs that long here).
    pub over_1ms_share: f64,
    /// Share of the measured time spent in those operations.
    pub over_1ms_time_share: f64,
    /// Operations measured (all rounds).
    pub ops: u64,
    /// Throughput loss against `none`, percent: median over rounds of `1 - this/none` of the
    /// same round (slice medians). Negative means faster than `none` (noise).
    pub loss_vs_none_pct: f64,
    /// Each round's loss.
    pub loss_vs_none_pct_rounds: Vec<f64>,
    /// Load-phase throughput (records per second).
    pub load_ops_per_sec: f64,
    /// Calls that failed (none expected: no faults are injected).
    pub errors: u64,
    /// Policy companion: checkpoints taken during the measured rounds, and the longest stall
    /// (fork) one caused, µs.
    pub checkpoints: Option<(u64, u64)>,
    /// Policy companion: of those checkpoints, how many the server forked itself (its
    /// fallback when the log is ¾ full: the standby did not keep up).
    pub server_checkpoints: Option<u64>,
    /// Voluntary context switches of the client threads per operation in the measured
    /// slices (`/proc/thread-self/status`): a client that slept in the futex for its reply,
    /// or at the slice's start barrier.
    pub client_sleeps_per_op: f64,
    /// Involuntary context switches of the client threads per operation: a client preempted,
    /// typically by another client of the same CPU (what the stall filter excludes).
    pub client_preemptions_per_op: f64,
    /// Voluntary context switches of the server per operation over the measured rounds
    /// (`/proc/PID/status`): the server fell asleep and had to be woken by a client's bell.
    pub server_sleeps_per_op: Option<f64>,
    /// Involuntary context switches of the server per operation.
    pub server_preemptions_per_op: Option<f64>,
    /// Policy companion: CPU time of the server, the standby and its checkpoint writers
    /// during the measured rounds.
    pub companion_cpu: Option<CompanionCpu>,
}

/// `(voluntary, involuntary)` context switches in a `/proc/.../status` file.
fn switches(path: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((
        field("voluntary_ctxt_switches:")?,
        field("nonvoluntary_ctxt_switches:")?,
    ))
}

/// The kv server's pid in `p` (its first server).
fn server_pid(p: &SystemProcess) -> Option<i32> {
    Some(p.connect().ok()?.ps().ok()?.into_iter().next()?.pid)
}

/// Policy companion: CPU time of its processes during the measured rounds (from
/// `/proc/PID/stat` of the serving incarnation and of the standby: its own time, and its
/// reaped children's — the checkpoint writers it forked), seconds, and the standby's minor
/// page faults (copy-on-write after each fork among them).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CompanionCpu {
    /// The serving incarnation.
    pub server_s: f64,
    /// The standby (its replay of the log).
    pub standby_s: f64,
    /// The standby's checkpoint writers (reaped children).
    pub writers_s: f64,
    /// The standby's minor page faults.
    pub standby_minflt: u64,
    /// The serving incarnation's minor page faults (its first lap of the log's ring, unless
    /// populated ahead).
    pub server_minflt: u64,
    /// The standby's context switches (voluntary + involuntary, `/proc/PID/status`).
    pub standby_switches: u64,
}

/// `(utime + stime, cutime + cstime, minflt)` of a process, seconds.
fn proc_cpu(pid: i32) -> Option<(f64, f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let tick = 100.0; // USER_HZ (clock ticks of /proc/PID/stat), 100 on Linux
    let own = (num(11)? + num(12)?) as f64 / tick;
    let kids = (num(13)? + num(14)?) as f64 / tick;
    Some((own, kids, num(7)?))
}

/// Context switches of a process so far (voluntary + involuntary).
fn proc_switches(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum(),
    )
}

/// The companion's CPU counters now (see [`CompanionCpu`]).
fn companion_cpu_of(p: &SystemProcess) -> Option<CompanionCpu> {
    let i = p.connect().ok()?.ps().ok()?.into_iter().next()?;
    i.companion.as_ref()?;
    let (server_s, _, server_minflt) = proc_cpu(i.pid)?;
    let (standby_s, writers_s, standby_minflt) = proc_cpu(i.standby_pid)?;
    Some(CompanionCpu {
        server_s,
        standby_s,
        writers_s,
        standby_minflt,
        server_minflt,
        standby_switches: proc_switches(i.standby_pid)?,
    })
}

/// Checkpoints the kv server of `p` has taken so far, its longest stall, and how many of them
/// the server forked itself.
fn checkpoints_of(p: &SystemProcess) -> Option<(u64, u64, u64)> {
    let c = p.connect().ok()?.ps().ok()?.into_iter().next()?.companion?;
    Some((c.checkpoints, c.max_stall_us, c.server_checkpoints))
}

fn heap_mb(cfg: &KvConfig, w: Workload) -> u64 {
    let spec = w.spec();
    let inserts = (cfg.ops * u64::from(cfg.rounds)) as f64 * spec.insert;
    let records = cfg.records as f64 + inserts;
    // Value + key + B+ tree entry and allocator overhead, and head-room for the allocator.
    let bytes = records * (cfg.value_size as f64 + 128.0) * 1.6;
    (bytes / (1 << 20) as f64).ceil() as u64 + 32
}

fn manifest(cfg: &KvConfig, w: Workload, v: Variant) -> String {
    let cpu = cfg
        .server_cpu
        .map_or(String::new(), |c| format!("cpu = {c}\n"));
    let log_mb = if matches!(v, Variant::Companion | Variant::CompanionWarm) {
        cfg.log_mb
    } else {
        64
    };
    // A scan of 100 records must fit one reply.
    let reply_max = (101 * (cfg.value_size + 64) + 4096).max(64 * 1024);
    let checkpoints = if matches!(v, Variant::Companion | Variant::CompanionWarm) {
        format!(
            "checkpoint_every = {}\ncheckpoint_ms = {}\nfollow_max_lag = {}\nstandby = \"{}\"\n",
            cfg.checkpoint_every,
            cfg.checkpoint_ms,
            cfg.follow_max_lag,
            if v == Variant::Companion {
                "follow"
            } else {
                "warm"
            }
        )
    } else {
        String::new()
    };
    format!(
        "name = \"bench\"\n[[server]]\nname = \"kv\"\nbuiltin = \"{}\"\npolicy = \"{}\"\ntracking = \"{}\"\nbatch_max = {}\nheap_mb = {}\nlog_mb = {log_mb}\ndeadline_ms = 30000\nslots = 2\nrequest_max = {}\nreply_max = {reply_max}\n{checkpoints}{cpu}[[grant]]\nclient = \"*\"\nservice = \"kv\"\n",
        v.builtin(),
        v.policy(),
        v.manifest_tracking(),
        v.batch_max(),
        heap_mb(cfg, w),
        (cfg.value_size + 4096).max(64 * 1024),
    )
}

/// One booted system with its clients.
struct Sys {
    variant: Variant,
    _proc: SystemProcess,
    clients: Vec<KvClient<Channel>>,
    rounds: Vec<f64>,
    rounds_wall: Vec<f64>,
    rounds_unstalled: Vec<f64>,
    round_fast_ns: f64,
    round_fast_ops: u64,
    hist: Histogram<u64>,
    errors: u64,
    load_ops_per_sec: f64,
    ops: u64,
    /// Client threads' (voluntary, involuntary) context switches in the measured slices.
    client_switches: (u64, u64),
}

/// Operations slower than this were stalled by something else (preemption of the client or
/// the server); see [`KvResult::ops_per_sec_unstalled`].
const STALL_NS: u64 = 1_000_000;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn pin_client(cpu: Option<usize>) {
    if let Some(c) = cpu {
        let _ = txipc_sys::process::pin_to_cpu(c);
    }
}

/// Loads records `0..records`, split over the clients.
fn load(cfg: &KvConfig, s: &Sys) -> Result<f64> {
    let n = s.clients.len() as u64;
    let t = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = s
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                scope.spawn(move || -> Result<()> {
                    pin_client(cfg.client_cpu);
                    let mut rng = Rng::new(cfg.seed ^ 0x10AD ^ i as u64);
                    let mut value = vec![0u8; cfg.value_size];
                    let mut k = i as u64;
                    while k < cfg.records {
                        fill_value(&mut rng, &mut value);
                        c.put_with(key_name(k), &value, |_| ())
                            .map_err(|e| anyhow::anyhow!("load, record {k}: {e}"))?;
                        k += n;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("loader thread panicked")?;
        }
        Ok(())
    })?;
    Ok(cfg.records as f64 / t.elapsed().as_secs_f64())
}

/// One client's stream of one round.
struct Stream<'a> {
    ops: Generator<'a>,
    value: Vec<u8>,
    /// The current operation's key (reused: the client's calls allocate nothing).
    key: String,
}

/// One operation. Every call uses the borrowed forms (`get_with`, `put_with`): the key and the
/// value are encoded from the stream's own buffers and a value that comes back (the read, or
/// the put's previous value) is only inspected where the reply landed, so the client
/// allocates nothing per operation but a scan's entries.
fn run_op(c: &KvClient<Channel>, st: &mut Stream<'_>, inserts: &InsertSequence) -> bool {
    let mut ok = true;
    let found = |st: &Stream<'_>| matches!(c.get_with(&st.key, |v| v.is_some()), Ok(true));
    let put = |st: &mut Stream<'_>| {
        let head = st.value.len().min(8);
        st.ops.fill_value(&mut st.value[..head]);
        c.put_with(&st.key, &st.value, |_| ()).is_ok()
    };
    match st.ops.next_op() {
        Op::Read(k) => {
            key_name_into(k, &mut st.key);
            ok &= found(st);
        }
        Op::Update(k) => {
            key_name_into(k, &mut st.key);
            ok &= put(st);
        }
        Op::Insert(k) => {
            key_name_into(k, &mut st.key);
            ok &= put(st);
            inserts.acknowledge(k);
        }
        Op::Scan(k, len) => {
            key_name_into(k, &mut st.key);
            ok &= c.scan(&st.key, len).is_ok();
        }
        Op::ReadModifyWrite(k) => {
            key_name_into(k, &mut st.key);
            ok &= found(st);
            ok &= put(st);
        }
    }
    ok
}

/// Runs one slice on `s`: `ops` operations over all clients. Returns the wall time and the
/// operations done.
fn slice(
    cfg: &KvConfig,
    s: &mut Sys,
    streams: &mut [Stream<'_>],
    inserts: &InsertSequence,
    ops: u64,
) -> (Duration, u64) {
    let n = s.clients.len();
    let per = (ops / n as u64).max(1);
    let barrier = Barrier::new(n + 1);
    let (elapsed, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = s
            .clients
            .iter()
            .zip(streams.iter_mut())
            .map(|(c, st)| {
                let barrier = &barrier;
                let cpu = cfg.client_cpu;
                scope.spawn(move || {
                    pin_client(cpu);
                    let mut h = new_hist();
                    let mut errors = 0u64;
                    let sw0 = switches("/proc/thread-self/status");
                    barrier.wait();
                    for _ in 0..per {
                        let t = Instant::now();
                        if !run_op(c, st, inserts) {
                            errors += 1;
                        }
                        h.saturating_record(t.elapsed().as_nanos() as u64);
                    }
                    let sw = switches("/proc/thread-self/status")
                        .zip(sw0)
                        .map_or((0, 0), |(b, a)| (b.0 - a.0, b.1 - a.1));
                    (h, errors, sw)
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("client thread panicked"))
            .collect();
        (t.elapsed(), results)
    });
    for (h, e, sw) in results {
        s.client_switches.0 += sw.0;
        s.client_switches.1 += sw.1;
        for v in h.iter_recorded() {
            if v.value_iterated_to() <= STALL_NS {
                s.round_fast_ns += v.value_iterated_to() as f64 * v.count_at_value() as f64;
                s.round_fast_ops += v.count_at_value();
            }
        }
        let _ = s.hist.add(&h);
        s.errors += e;
    }
    let total = per * n as u64;
    s.ops += total;
    (elapsed, total)
}

/// Runs every workload under every variant. Each workload boots fresh systems.
pub fn run(exe: &Path, cfg: &KvConfig, mut progress: impl FnMut(&str)) -> Result<Vec<KvResult>> {
    let mut out = Vec::new();
    for &w in &cfg.workloads {
        progress(&format!(
            "workload {w}: booting {} systems, loading {} records each",
            cfg.variants.len(),
            cfg.records
        ));
        let mut systems = Vec::new();
        for &v in &cfg.variants {
            let name = crate::unique_system(&format!("bench-kv-{}", v.policy()));
            let proc = SystemProcess::spawn(exe, &manifest(cfg, w, v), &name, crate::BOOT_TIMEOUT)
                .with_context(|| format!("booting the {} system", v.label()))?;
            let sys = proc.connect()?;
            let clients = (0..cfg.clients.max(1))
                .map(|_| sys.open("kv").map(KvClient::new))
                .collect::<Result<Vec<_>, _>>()?;
            let mut s = Sys {
                variant: v,
                _proc: proc,
                clients,
                rounds: Vec::new(),
                rounds_wall: Vec::new(),
                rounds_unstalled: Vec::new(),
                round_fast_ns: 0.0,
                round_fast_ops: 0,
                hist: new_hist(),
                errors: 0,
                load_ops_per_sec: 0.0,
                ops: 0,
                client_switches: (0, 0),
            };
            s.load_ops_per_sec = load(cfg, &s)?;
            systems.push(s);
        }
        // Generators live across rounds (inserts go on, Zipfian state is kept); each system's
        // clients get the same seeds, so every policy sees the same requests.
        let total_ops = cfg.ops * u64::from(cfg.rounds);
        let inserts: Vec<InsertSequence> = systems
            .iter()
            .map(|_| InsertSequence::new(cfg.records.max(1)))
            .collect();
        let mut streams: Vec<Vec<Stream<'_>>> = inserts
            .iter()
            .map(|seq| {
                (0..cfg.clients.max(1))
                    .map(|i| {
                        let seed = cfg.seed.wrapping_add(u64::from(i) * 0x9E37_79B9_7F4A_7C15);
                        let mut value = vec![0u8; cfg.value_size];
                        fill_value(&mut Rng::new(seed), &mut value);
                        Stream {
                            ops: Generator::new(w, cfg.records, total_ops, seed, seq),
                            value,
                            key: String::with_capacity(32),
                        }
                    })
                    .collect()
            })
            .collect();
        let n = systems.len();
        let slices = (cfg.ops / cfg.slice_ops.max(1)).max(1);
        let checkpoints_before: Vec<Option<(u64, u64, u64)>> =
            systems.iter().map(|s| checkpoints_of(&s._proc)).collect();
        let server_pids: Vec<Option<i32>> = systems.iter().map(|s| server_pid(&s._proc)).collect();
        let server_switches_before: Vec<Option<(u64, u64)>> = server_pids
            .iter()
            .map(|p| p.and_then(|p| switches(&format!("/proc/{p}/status"))))
            .collect();
        let ops_before: Vec<u64> = systems.iter().map(|s| s.ops).collect();
        let cpu_before: Vec<Option<CompanionCpu>> =
            systems.iter().map(|s| companion_cpu_of(&s._proc)).collect();
        for r in 0..cfg.rounds as usize {
            // A round is `slices` short slices per system, interleaved (the order rotated every
            // slice and every round), so that a change of the machine's speed hits every
            // policy alike.
            let mut time = vec![Duration::ZERO; n];
            let mut done = vec![0u64; n];
            let mut per_slice: Vec<Vec<f64>> = vec![Vec::new(); n];
            for k in 0..slices as usize {
                for j in 0..n {
                    let idx = (j + k + r) % n;
                    let (t, ops) = slice(
                        cfg,
                        &mut systems[idx],
                        &mut streams[idx],
                        &inserts[idx],
                        cfg.ops / slices,
                    );
                    time[idx] += t;
                    done[idx] += ops;
                    per_slice[idx].push(ops as f64 / t.as_secs_f64());
                }
            }
            let mut line = format!("workload {w} round {}/{}:", r + 1, cfg.rounds);
            for (idx, s) in systems.iter_mut().enumerate() {
                let ops = crate::median(&mut per_slice[idx]);
                s.rounds.push(ops);
                s.rounds_wall
                    .push(done[idx] as f64 / time[idx].as_secs_f64());
                let clients = s.clients.len() as f64;
                s.rounds_unstalled
                    .push(s.round_fast_ops as f64 * 1e9 * clients / s.round_fast_ns.max(1.0));
                s.round_fast_ns = 0.0;
                s.round_fast_ops = 0;
                line.push_str(&format!(" {} {:.0}", s.variant.label(), ops));
            }
            progress(&format!("{line} ops/s"));
        }
        drop(streams);
        let baseline = |v: Variant| {
            systems
                .iter()
                .position(|s| s.variant == v.baseline())
                .unwrap_or(0)
        };
        let bases: Vec<(Vec<f64>, Vec<f64>)> = systems
            .iter()
            .map(|s| {
                let b = &systems[baseline(s.variant)];
                (b.rounds.clone(), b.rounds_unstalled.clone())
            })
            .collect();
        // The same incarnation throughout (no faults are injected): its pid still names it.
        let server_switches: Vec<Option<(u64, u64)>> = server_pids
            .iter()
            .zip(&server_switches_before)
            .map(|(p, before)| {
                let now = p.and_then(|p| switches(&format!("/proc/{p}/status")))?;
                let before = (*before)?;
                Some((now.0 - before.0, now.1 - before.1))
            })
            .collect();
        for (((((s, (base, base_unstalled)), before), server_sw), ops0), cpu0) in systems
            .iter_mut()
            .zip(bases)
            .zip(checkpoints_before)
            .zip(server_switches)
            .zip(ops_before)
            .zip(cpu_before)
        {
            let measured = (s.ops - ops0).max(1) as f64;
            let companion_cpu = companion_cpu_of(&s._proc)
                .zip(cpu0)
                .map(|(a, b)| CompanionCpu {
                    server_s: a.server_s - b.server_s,
                    standby_s: a.standby_s - b.standby_s,
                    writers_s: a.writers_s - b.writers_s,
                    standby_minflt: a.standby_minflt.saturating_sub(b.standby_minflt),
                    server_minflt: a.server_minflt.saturating_sub(b.server_minflt),
                    standby_switches: a.standby_switches.saturating_sub(b.standby_switches),
                });
            let counted = checkpoints_of(&s._proc)
                .zip(before)
                .map(|((n, stall, forks), (n0, _, forks0))| ((n - n0, stall), forks - forks0));
            let checkpoints = counted.map(|c| c.0);
            let server_checkpoints = counted.map(|c| c.1);
            let mut rounds = s.rounds.clone();
            let mut losses: Vec<f64> = s
                .rounds
                .iter()
                .zip(&base)
                .map(|(x, b)| (1.0 - x / b) * 100.0)
                .collect();
            let loss_rounds = losses.clone();
            out.push(KvResult {
                workload: w,
                policy: s.variant.label(),
                baseline: s.variant.baseline().label(),
                manifest_policy: s.variant.policy(),
                tracking: s.variant.tracking(),
                batch_max: s.variant.batch_max(),
                ops_per_sec: crate::median(&mut rounds),
                ops_per_sec_rounds: s.rounds.clone(),
                ops_per_sec_wall: crate::median(&mut s.rounds_wall.clone()),
                ops_per_sec_unstalled: crate::median(&mut s.rounds_unstalled.clone()),
                loss_unstalled_pct: crate::median(
                    &mut s
                        .rounds_unstalled
                        .iter()
                        .zip(&base_unstalled)
                        .map(|(x, b)| (1.0 - x / b) * 100.0)
                        .collect::<Vec<_>>(),
                ),
                p50_ns: s.hist.value_at_quantile(0.5),
                p99_ns: s.hist.value_at_quantile(0.99),
                p999_ns: s.hist.value_at_quantile(0.999),
                p9999_ns: s.hist.value_at_quantile(0.9999),
                max_ns: s.hist.max(),
                mean_ns: s.hist.mean(),
                over_1ms_share: {
                    let slow: u64 = s
                        .hist
                        .iter_recorded()
                        .filter(|v| v.value_iterated_to() > STALL_NS)
                        .map(|v| v.count_at_value())
                        .sum();
                    slow as f64 / s.hist.len().max(1) as f64
                },
                over_1ms_time_share: {
                    let (mut slow, mut all) = (0f64, 0f64);
                    for v in s.hist.iter_recorded() {
                        let t = v.value_iterated_to() as f64 * v.count_at_value() as f64;
                        all += t;
                        if v.value_iterated_to() > STALL_NS {
                            slow += t;
                        }
                    }
                    if all > 0.0 { slow / all } else { 0.0 }
                },
                ops: s.ops,
                loss_vs_none_pct: crate::median(&mut losses),
                loss_vs_none_pct_rounds: loss_rounds,
                load_ops_per_sec: s.load_ops_per_sec,
                errors: s.errors,
                checkpoints,
                server_checkpoints,
                client_sleeps_per_op: s.client_switches.0 as f64 / measured,
                client_preemptions_per_op: s.client_switches.1 as f64 / measured,
                server_sleeps_per_op: server_sw.map(|(v, _)| v as f64 / measured),
                server_preemptions_per_op: server_sw.map(|(_, i)| i as f64 / measured),
                companion_cpu,
            });
        }
        // Shut the systems down one by one (each waits for its kernel to exit).
        for s in systems {
            drop(s.clients);
            s._proc
                .shutdown()
                .context("shutting a benchmark system down")?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(out)
}

/// The markdown table: one row per workload and policy, loss against `none`.
pub fn table(results: &[KvResult]) -> String {
    let mut t = String::from(
        "| workload | policy | ops/s | loss vs none | ops/s unstalled | loss unstalled | p50 µs | p99 µs | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let (loss, loss_u) = if r.policy == r.baseline {
            ("—".to_string(), "—".to_string())
        } else {
            (
                format!("{:+.1}%", r.loss_vs_none_pct),
                format!("{:+.1}%", r.loss_unstalled_pct),
            )
        };
        t.push_str(&format!(
            "| {} | {} | {:.0} | {} | {:.0} | {} | {:.1} | {:.1} | {} |\n",
            r.workload.as_str().to_uppercase(),
            if r.baseline == "none" || r.policy == r.baseline {
                r.policy.clone()
            } else {
                format!("{} (vs {})", r.policy, r.baseline)
            },
            r.ops_per_sec,
            loss,
            r.ops_per_sec_unstalled,
            loss_u,
            r.p50_ns as f64 / 1e3,
            r.p99_ns as f64 / 1e3,
            r.errors
        ));
    }
    for r in results {
        if let Some((n, stall)) = r.checkpoints {
            t.push_str(&format!(
                "\n{} {}: {n} checkpoints during the measured rounds ({} forked by the server: log ¾ full); longest checkpoint stall (fork) {stall} µs",
                r.workload.as_str().to_uppercase(),
                r.policy,
                r.server_checkpoints.unwrap_or(0)
            ));
        }
        if let Some(c) = r.companion_cpu {
            t.push_str(&format!(
                "\n{} {}: CPU during the measured rounds: server {:.2} s, standby (replay) {:.2} s, checkpoint writers {:.2} s; minor faults: server {}, standby {}; standby context switches {}",
                r.workload.as_str().to_uppercase(),
                r.policy,
                c.server_s,
                c.standby_s,
                c.writers_s,
                c.server_minflt,
                c.standby_minflt,
                c.standby_switches
            ));
        }
    }
    t
}

/// The JSON report (the command-line contract, ARCHITECTURE.md §14): the top-level `ops_per_sec`, `p50_ns`, `p99_ns`,
/// `policy`, `workload` (and `loss_vs_none_pct`) are those of the *headline* result — the first
/// workload under the first requested policy other than the `none` baseline (`txipc` for
/// `all`; `none` itself when only `none` was asked for). `results` holds every workload ×
/// policy; `max_loss_txipc_pct` is the worst typed-tracking loss over the workloads run, against
/// the 5% goal.
pub fn json(cfg: &KvConfig, results: &[KvResult]) -> serde_json::Value {
    let headline_policy = cfg
        .variants
        .iter()
        .find(|v| **v == Variant::Txipc)
        .or_else(|| cfg.variants.get(1))
        .unwrap_or(&Variant::None)
        .label();
    let head = results
        .iter()
        .find(|r| r.policy == headline_policy)
        .or_else(|| results.first());
    let max_of = |f: fn(&KvResult) -> f64| {
        let m = results
            .iter()
            .filter(|r| r.policy == "txipc")
            .map(f)
            .fold(f64::NAN, f64::max);
        if m.is_nan() { None } else { Some(m) }
    };
    serde_json::json!({
        "workload": head.map(|r| r.workload),
        "policy": head.map(|r| r.policy.clone()),
        "ops_per_sec": head.map(|r| r.ops_per_sec),
        "p50_ns": head.map(|r| r.p50_ns),
        "p99_ns": head.map(|r| r.p99_ns),
        "loss_vs_none_pct": head.map(|r| r.loss_vs_none_pct),
        "max_loss_txipc_pct": max_of(|r| r.loss_vs_none_pct),
        "max_loss_unstalled_txipc_pct": max_of(|r| r.loss_unstalled_pct),
        "loss_goal_pct": 5.0,
        "config": cfg,
        "results": results,
    })
}
