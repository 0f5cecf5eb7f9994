//! `txipc demo`: the default system under load, with faults injected live, verified at the end.
//!
//! The demo boots the kv server under policy `txipc`, starts client *processes* (`txipc
//! __client`), and while they run injects a fault every few hundred milliseconds: SIGKILL of the
//! server, or a fail point (panic, SIGSEGV, abort, hang) armed at a random point of the commit
//! protocol. Each client keeps an exact model of what it did: its own counter (`incr`), its own
//! compare-and-swap chain, its own keys (`put`), and its increments of one shared counter.
//! Because the model is exact, a lost update (a reply seen, effect missing), a duplicated one
//! (effect applied twice) or a half-applied one (some keys of a request changed) shows up as a
//! difference. At the end the demo reads the whole state back through the server and compares.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::live;
use crate::out::{Failed, Kind, Report, usage};
use kv_api::model::KvModel;
use kv_api::{CasOutcome, KvClient};
use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use txipc_core::failpoint::FailPoint;
use txipc_core::vocab::{Fault, PolicyName};
use txipc_runtime::client::{System, SystemProcess};
use txipc_service::{CallError, Error as SvcError};

/// Arguments of `txipc demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Client processes.
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// Mean time between two injected faults, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub fault_interval_ms: u64,
    /// Which faults to inject, comma-separated: sigkill, panic, segv, abort, hang, exit, or
    /// all.
    #[arg(
        long,
        alias = "faults",
        default_value = "sigkill,panic,segv,abort,hang"
    )]
    pub fault: String,
    /// Recovery policy of the kv server: txipc (typed tracking), page (txipc with page
    /// tracking), restart or none — the baselines show what the others lose.
    #[arg(long, default_value = "txipc")]
    pub policy: String,
    /// Seed of the fault schedule and the clients' operation mix.
    #[arg(long)]
    pub seed: Option<u64>,
    /// What the clients do: `kv` (counters, compare-and-swap chains, puts on the kv server) or
    /// `bank` (transfers through a bank server across two account servers, faults in all
    /// three).
    #[arg(long, default_value = "kv")]
    pub workload: String,
}

/// The global options the demo uses.
#[derive(Debug, Clone)]
pub struct Common {
    /// Name of the demo's private system (default `demo-PID`).
    pub system: Option<String>,
    /// No progress lines.
    pub quiet: bool,
    /// `--json`: the report is stdout's only content.
    pub json: bool,
}

/// The faults the demo can inject.
const DEMO_FAULTS: [Fault; 6] = [
    Fault::Sigkill,
    Fault::Panic,
    Fault::Segv,
    Fault::Abort,
    Fault::Hang,
    Fault::Exit,
];

/// Arguments of the hidden `txipc __client` (one demo client process; the system is the
/// global `--system`).
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// This client's number (its keys are `c<id>/...`).
    #[arg(long)]
    pub id: u32,
    /// How long to run.
    #[arg(long)]
    pub millis: u64,
    /// Seed of the operation mix.
    #[arg(long)]
    pub seed: u64,
}

/// What a client reports at the end (one JSON line prefixed with `result `).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientReport {
    /// Client number.
    pub id: u32,
    /// Calls that completed with the service's answer.
    pub ops: u64,
    /// Calls that failed with a system error (request did not take effect, or unknown).
    pub failed: u64,
    /// Updates whose effect went missing, seen in replies during the run.
    pub lost: u64,
    /// Updates applied more than once, seen in replies during the run.
    pub duplicated: u64,
    /// Keys whose final value is unknown (an ambiguous error: the request may or may not have
    /// run). Under `txipc` there are none.
    pub uncertain: Vec<String>,
    /// Final value of each own key, as the client knows it (hex).
    pub model: BTreeMap<String, String>,
    /// Successful increments of the shared counter.
    pub shared_incrs: u64,
    /// 99th percentile latency, nanoseconds.
    pub p99_ns: u64,
    /// Median latency, nanoseconds.
    pub p50_ns: u64,
    /// Worst latency, nanoseconds.
    pub max_ns: u64,
}

const SHARED: &[u8] = b"shared/ctr";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The client process: runs the operation mix until its time is up, then prints its report.
pub fn client_main(args: ClientArgs, system: &str) -> Result<()> {
    let sys = System::connect(system)?;
    let kv = KvClient::new(sys.open("kv")?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut rep = ClientReport {
        id: args.id,
        ..Default::default()
    };
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3)?;
    let mut window = hdrhistogram::Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3)?;
    let ctr_key = format!("c{}/ctr", args.id).into_bytes();
    let chain_key = format!("c{}/chain", args.id).into_bytes();
    // What this client's keys must hold (the shared counter aside): the model of the
    // fault-injection oracle. A call whose effect is unknown makes its key uncertain until a
    // reply says its value again.
    let mut model = KvModel::new();
    let mut shared_uncertain = false;
    // The next link of the compare-and-swap chain this client writes.
    let mut chain: u64 = 0;
    let deadline = Instant::now() + Duration::from_millis(args.millis);
    let mut last_progress = Instant::now();
    let out = std::io::stdout();
    // An error that may have left its request applied: the key's value is unknown.
    let unknown = |model: &mut KvModel, key: &[u8], e: &CallError| {
        if !e.did_not_run() {
            model.make_uncertain(key);
        }
    };
    while Instant::now() < deadline {
        let op = rng.random_range(0..100u32);
        let t = Instant::now();
        // Every branch: call, then compare the reply with the model.
        let outcome: Result<(), CallError> = match op {
            0..30 => match kv.incr(ctr_key.clone(), 1) {
                Ok(v) => {
                    if let Some(before) = model.counter(&ctr_key) {
                        let expect = before + 1;
                        if v > expect {
                            rep.duplicated += (v - expect) as u64;
                        } else if v < expect {
                            rep.lost += (expect - v) as u64;
                        }
                    }
                    model.set(&ctr_key, Some(&v.to_le_bytes()));
                    Ok(())
                }
                Err(SvcError::Service(e)) => bail!("kv refused incr: {e}"),
                Err(SvcError::Call(e)) => {
                    unknown(&mut model, &ctr_key, &e);
                    Err(e)
                }
            },
            30..50 => {
                let cur = chain.to_string().into_bytes();
                let next = (chain + 1).to_string().into_bytes();
                let expected = if chain == 0 { None } else { Some(cur.into()) };
                match kv.cas(chain_key.clone(), expected, Some(next.clone().into())) {
                    Ok(CasOutcome { swapped: true, .. }) => {
                        chain += 1;
                        model.set(&chain_key, Some(&next));
                        Ok(())
                    }
                    Ok(CasOutcome {
                        swapped: false,
                        current,
                    }) => {
                        // Only this client writes the chain: a failed swap means the request
                        // already ran once (duplicate) or an earlier one was lost, unless the
                        // chain's value was unknown (an ambiguous error before).
                        let current = current.map(|c| c.into_vec());
                        if model.expect(&chain_key).is_some() {
                            if current.as_deref() == Some(&next[..]) {
                                rep.duplicated += 1;
                            } else {
                                rep.lost += 1;
                            }
                        }
                        chain = current
                            .as_deref()
                            .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
                            .unwrap_or(0);
                        model.set(&chain_key, current.as_deref());
                        Ok(())
                    }
                    Err(SvcError::Service(e)) => bail!("kv refused cas: {e}"),
                    Err(SvcError::Call(e)) => {
                        unknown(&mut model, &chain_key, &e);
                        Err(e)
                    }
                }
            }
            50..80 => {
                let key = format!("c{}/k{}", args.id, rng.random_range(0..64u32)).into_bytes();
                let len = rng.random_range(1..200usize);
                let mut value = vec![0u8; len];
                rng.fill_bytes(&mut value);
                match kv.put(key.clone(), value.clone()) {
                    Ok(prev) => {
                        // The previous value the server saw must be the one we wrote last.
                        if !model.agrees(&key, prev.as_ref().map(|p| p.as_slice())) {
                            rep.lost += 1;
                        }
                        model.set(&key, Some(&value));
                        Ok(())
                    }
                    Err(SvcError::Service(e)) => bail!("kv refused put: {e}"),
                    Err(SvcError::Call(e)) => {
                        unknown(&mut model, &key, &e);
                        Err(e)
                    }
                }
            }
            80..90 => {
                let key = format!("c{}/k{}", args.id, rng.random_range(0..64u32)).into_bytes();
                match kv.get(key.clone()) {
                    Ok(v) => {
                        if !model.agrees(&key, v.as_ref().map(|p| p.as_slice())) {
                            rep.lost += 1;
                        }
                        Ok(())
                    }
                    Err(SvcError::Service(e)) => bail!("kv refused get: {e}"),
                    Err(SvcError::Call(e)) => Err(e),
                }
            }
            _ => match kv.incr(SHARED, 1) {
                Ok(_) => {
                    rep.shared_incrs += 1;
                    Ok(())
                }
                Err(SvcError::Service(e)) => bail!("kv refused incr: {e}"),
                Err(SvcError::Call(e)) => {
                    shared_uncertain |= !e.did_not_run();
                    Err(e)
                }
            },
        };
        let ns = t.elapsed().as_nanos() as u64;
        match outcome {
            Ok(()) => {
                rep.ops += 1;
                let _ = hist.record(ns.max(100));
                let _ = window.record(ns.max(100));
            }
            Err(e) => {
                rep.failed += 1;
                if matches!(
                    e,
                    CallError::Unavailable { .. } | CallError::Disconnected(_)
                ) {
                    // The server is gone for good (policy none): stop early, nothing to do.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(250) {
            let mut o = out.lock();
            let _ = writeln!(
                o,
                "progress {} {} {}",
                rep.ops,
                rep.failed,
                window.value_at_quantile(0.99)
            );
            let _ = o.flush();
            window.reset();
            last_progress = Instant::now();
        }
    }
    rep.model = model
        .entries()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), hex(v)))
        .collect();
    rep.uncertain = model
        .uncertain()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    if shared_uncertain {
        rep.uncertain
            .push(String::from_utf8_lossy(SHARED).into_owned());
    }
    rep.p99_ns = hist.value_at_quantile(0.99);
    rep.p50_ns = hist.value_at_quantile(0.5);
    rep.max_ns = hist.max();
    let mut o = out.lock();
    writeln!(o, "result {}", serde_json::to_string(&rep)?)?;
    o.flush()?;
    Ok(())
}

/// The demo's verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DemoReport {
    /// Calls completed by all clients.
    pub requests: u64,
    /// Faults injected.
    pub faults_injected: u64,
    /// Faults by kind.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Server restarts the kernel performed.
    pub recoveries: u64,
    /// Requests re-executed after a rollback.
    pub retried_requests: u64,
    /// Calls that ended in a system error.
    pub failed_requests: u64,
    /// Updates whose effect is missing.
    pub lost_updates: u64,
    /// Updates applied more than once.
    pub duplicated_updates: u64,
    /// Keys whose value differs from the clients' model in another way (half-applied or
    /// corrupted).
    pub divergent_keys: u64,
    /// Keys the clients could not know (ambiguous errors; none under txipc).
    pub uncertain_keys: u64,
    /// The state read back equals the model, nothing was lost or duplicated, and there was
    /// something to verify (at least one request).
    pub state_verified: bool,
    /// Whether the server answered the read-back at all (a server that stays dead under
    /// policy `none` does not: then every update is lost).
    pub state_readable: bool,
    /// Client processes that did not report (a call that never returned, or a client that
    /// died).
    pub clients_missing: u64,
    /// Why the state is not verified, in words (empty when it is).
    pub verdict_reason: String,
    /// Client-observed latency percentiles (worst client), microseconds.
    pub p50_us: f64,
    /// 99th percentile, worst client.
    pub p99_us: f64,
    /// Worst latency seen.
    pub max_us: f64,
    /// Throughput over the run.
    pub ops_per_sec: f64,
    /// Last recovery time the kernel measured (fault seen → new incarnation serving).
    pub last_recovery_us: Option<f64>,
    /// The kv server's policy.
    pub policy: String,
    /// Seconds the clients ran.
    pub seconds: f64,
}

/// The demo's system. The retry limit is high because the demo's faults come from outside at
/// random instants (a SIGKILL is not the request's fault), while the kernel cannot tell an
/// external SIGKILL from a request that makes the server exit: a lower limit would, in a
/// storm, fail a request that was merely unlucky enough to be in flight at several kills.
fn manifest(system: &str, policy: PolicyName) -> String {
    let builtin = policy.kv_builtin();
    // Under companion: checkpoints every 100 ms keep the log a fault replays short.
    let checkpoints = if policy == PolicyName::Companion {
        "checkpoint_every = 20000\ncheckpoint_ms = 100\n"
    } else {
        ""
    };
    let (policy, tracking) = policy.manifest();
    let (policy, tracking) = (policy.as_str(), format!("{tracking:?}").to_lowercase());
    format!(
        "name = \"{system}\"\n\
         [[server]]\nname = \"kv\"\nbuiltin = \"{builtin}\"\npolicy = \"{policy}\"\ntracking = \"{tracking}\"\n\
         heap_mb = 256\ndeadline_ms = 300\nretry_limit = 10\n{checkpoints}\
         [server.restart]\nmin_interval_ms = 0\nmax_restarts = 1000\nwindow_ms = 1000\n\
         [[grant]]\nclient = \"*\"\nservice = \"kv\"\n"
    )
}

/// Checked arguments of a demo run.
struct Plan {
    faults: Vec<Fault>,
    policy: PolicyName,
    seed: u64,
    system: String,
}

/// Checks every argument before anything is printed or started.
fn plan(args: &DemoArgs, common: &Common) -> Result<Plan> {
    if args.seconds == 0 {
        return Err(usage(
            "--seconds 0 runs nothing, so nothing could be verified: give at least 1",
        ));
    }
    if args.clients == 0 {
        return Err(usage(
            "--clients 0 makes no requests, so nothing could be verified: give at least 1",
        ));
    }
    if args.fault_interval_ms == 0 {
        return Err(usage("--fault-interval-ms must be at least 1"));
    }
    let faults = txipc_core::vocab::parse_faults(&args.fault, &DEMO_FAULTS).map_err(usage)?;
    let policy = PolicyName::parse(&args.policy).map_err(usage)?;
    let system = common
        .system
        .clone()
        .unwrap_or_else(|| format!("demo-{}", std::process::id()));
    if !txipc_core::paths::valid_system_name(&system) {
        return Err(usage(format!(
            "system name `{system}` is not valid: use 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(Plan {
        faults,
        policy,
        seed: args.seed.unwrap_or_else(time_seed),
        system,
    })
}

/// Runs the demo: the verdict is the report's text (stdout); with `--json`, the report. A
/// state that is not verified is a failure (exit code 1) that still carries the whole report.
pub fn run(args: DemoArgs, common: &Common) -> Result<Report> {
    match args.workload.as_str() {
        "kv" => {}
        "bank" => return crate::bankdemo::run(&args, common),
        w => {
            return Err(usage(format!(
                "--workload `{w}`: the workloads are kv and bank"
            )));
        }
    }
    let exe: PathBuf = std::env::current_exe().context("locating the txipc binary")?;
    let plan = plan(&args, common)?;
    let report = run_demo(&exe, &args, &plan, common)?;
    let verdict = format!("{}\n{}", verdict(&report), log_words(&plan.system));
    let mut v = serde_json::to_value(&report)?;
    v["system"] = json!(plan.system);
    v["log"] = json!(crate::control::log_path(&plan.system));
    if report.state_verified {
        v["ok"] = json!(true);
        Ok(Report::new(v, verdict))
    } else {
        Err(Failed {
            kind: Kind::StateDiffers,
            message: format!("state not verified: {}", report.verdict_reason),
            json: v,
            text: verdict,
        }
        .into())
    }
}

/// Where the demo's system log is, for after the run.
pub fn log_words(system: &str) -> String {
    format!("its log: `txipc logs --system {system}`")
}

/// The demo's verdict in words.
fn verdict(r: &DemoReport) -> String {
    format!(
        "txipc demo: {} requests, {} faults injected, {} recoveries ({} requests re-executed),\n\
         {} failed requests, {} lost, {} duplicated, {} divergent keys: {}",
        r.requests,
        r.faults_injected,
        r.recoveries,
        r.retried_requests,
        r.failed_requests,
        r.lost_updates,
        r.duplicated_updates,
        r.divergent_keys,
        if r.state_verified {
            "state VERIFIED against the clients' model".to_string()
        } else {
            format!("state NOT verified ({})", r.verdict_reason)
        }
    )
}

/// Runs the demo and returns its report.
fn run_demo(exe: &Path, args: &DemoArgs, plan: &Plan, common: &Common) -> Result<DemoReport> {
    let seed = plan.seed;
    let system = plan.system.clone();
    let fault_names: Vec<&str> = plan.faults.iter().map(|f| f.as_str()).collect();
    crate::say!(
        common.quiet,
        "txipc demo: kv under policy `{}`, {} client processes for {} s, a fault every ~{} ms ({}); seed {seed}",
        plan.policy.as_str(),
        args.clients,
        args.seconds,
        args.fault_interval_ms,
        fault_names.join(", ")
    );
    let mut sys = SystemProcess::spawn(
        exe,
        &manifest(&system, plan.policy),
        &system,
        Duration::from_secs(20),
    )?;
    // Its log stays after the demo (`txipc logs --system demo-PID`).
    sys.keep_log();
    let conn = sys.connect()?;
    let millis = args.seconds * 1000;
    let mut clients = Vec::new();
    for id in 0..args.clients {
        let cseed = seed.wrapping_add(id as u64 * 7919);
        let a = format!(
            "__client --system {system} --quiet --id {id} --millis {millis} --seed {cseed}"
        );
        let a: Vec<std::ffi::OsString> = a.split(' ').map(Into::into).collect();
        clients.push(live::spawn_client(exe, &a)?);
    }
    let mut report = DemoReport {
        policy: plan.policy.as_str().into(),
        ..Default::default()
    };
    let storm = live::Storm {
        system: &system,
        conn: &conn,
        servers: &["kv"],
        faults: &plan.faults,
        interval_ms: args.fault_interval_ms,
        millis,
        seed,
        grace: Duration::from_secs(30),
        unit: "ops",
        quiet: common.quiet,
        json: common.json,
    };
    let out: live::Outcome<ClientReport> =
        live::drive(&storm, &mut clients, &mut |c, _, kind, rng| {
            inject(c, kind, rng)
        })?;
    report.faults_injected = out.faults_injected;
    report.faults_by_kind = out.faults_by_kind;
    report.seconds = out.seconds;
    let results: Vec<ClientReport> = out.results.into_iter().flatten().collect();
    report.clients_missing = (clients.len() - results.len()) as u64;
    let ps = out.servers;
    if let Some(s) = ps.first() {
        report.recoveries = s.restarts;
        report.retried_requests = s.retried_requests;
        report.last_recovery_us = s.last_recovery_us;
    }
    let state = read_back(&conn);
    report.state_readable = state.is_ok();
    let unreadable = state.as_ref().err().map(|e| format!("{e:#}"));
    verify(&state.unwrap_or_default(), &results, &mut report);
    report.requests = results.iter().map(|r| r.ops).sum();
    report.failed_requests = results.iter().map(|r| r.failed).sum();
    report.ops_per_sec = report.requests as f64 / report.seconds.max(0.001);
    report.p50_us = results.iter().map(|r| r.p50_ns).max().unwrap_or(0) as f64 / 1000.0;
    report.p99_us = results.iter().map(|r| r.p99_ns).max().unwrap_or(0) as f64 / 1000.0;
    report.max_us = results.iter().map(|r| r.max_ns).max().unwrap_or(0) as f64 / 1000.0;
    let mut reasons = Vec::new();
    if let Some(e) = unreadable {
        reasons.push(format!(
            "the server did not answer the read-back ({e}): its state is gone"
        ));
    }
    if report.clients_missing > 0 {
        reasons.push(format!(
            "{} of {} clients did not report: a call never completed, or a client died (see its error above)",
            report.clients_missing,
            clients.len()
        ));
    }
    if report.requests == 0 {
        reasons.push("no request completed: there was nothing to verify".into());
    }
    if report.lost_updates + report.duplicated_updates + report.divergent_keys > 0 {
        reasons.push("the state read back differs from the clients' model".into());
    }
    report.state_verified = reasons.is_empty();
    report.verdict_reason = reasons.join("; ");
    drop(conn);
    sys.shutdown()?;
    Ok(report)
}

fn time_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

fn inject(conn: &System, kind: Fault, rng: &mut impl Rng) -> Result<()> {
    let point = FailPoint::ALL[rng.random_range(0..FailPoint::ALL.len())];
    if let Some(fail) = kind.fail_kind() {
        return Ok(conn.inject("kv", fail, point)?);
    }
    debug_assert_eq!(kind, Fault::Sigkill, "DEMO_FAULTS holds no other");
    let pid = conn
        .ps()?
        .first()
        .map(|s| s.pid)
        .filter(|&p| p > 0)
        .context("no running kv incarnation")?;
    // SIGKILL: the real fail-stop, at whatever instant the server happens to be in.
    // Counted only if delivered (the pid `ps` showed may have died a moment ago).
    let pid = rustix::process::Pid::from_raw(pid).context("bad pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .context("the incarnation was already gone")?;
    Ok(())
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Reads every key back through the server.
fn read_back(conn: &System) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut ch = conn.open("kv")?;
    ch.set_timeout(Some(Duration::from_secs(10)));
    let kv = KvClient::new(ch);
    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut start: Vec<u8> = Vec::new();
    loop {
        let page = kv.scan(start.clone(), kv_api::MAX_SCAN)?;
        let n = page.len();
        for (k, v) in page {
            start = k.to_vec();
            start.push(0);
            state.insert(k.into_vec(), v.into_vec());
        }
        if n < kv_api::MAX_SCAN as usize {
            break;
        }
    }
    Ok(state)
}

/// Compares the state read back with the union of the clients' models.
fn verify(state: &BTreeMap<Vec<u8>, Vec<u8>>, results: &[ClientReport], report: &mut DemoReport) {
    let mut lost = results.iter().map(|r| r.lost).sum::<u64>();
    let mut dup = results.iter().map(|r| r.duplicated).sum::<u64>();
    let mut divergent = 0;
    let uncertain: std::collections::BTreeSet<&str> = results
        .iter()
        .flat_map(|r| r.uncertain.iter().map(String::as_str))
        .collect();
    for r in results {
        // The client's model, as it reported it; its keys are `c<id>/...`.
        let mut model = KvModel::new();
        for (k, vhex) in &r.model {
            model.set(k.as_bytes(), Some(&unhex(vhex)));
        }
        for k in &r.uncertain {
            model.make_uncertain(k.as_bytes());
        }
        let prefix = format!("c{}/", r.id);
        let d = model.diff(state, |k| k.starts_with(prefix.as_bytes()));
        lost += d.missing.len() as u64;
        divergent += d.extra.len() as u64;
        for k in &d.wrong {
            let (got, want) = (&state[k], model.expect(k).flatten().unwrap_or_default());
            // Counters and chains say by how much: more is a duplicate, less a loss.
            let amounts = if k.ends_with(b"/ctr") {
                kv_api::counter_value(got).zip(kv_api::counter_value(want))
            } else if k.ends_with(b"/chain") {
                let n = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<i64>().ok();
                n(got).zip(n(want))
            } else {
                None
            };
            match amounts {
                Some((g, w)) if g > w => dup += (g - w) as u64,
                Some((g, w)) => lost += (w - g) as u64,
                None => divergent += 1,
            }
        }
    }
    let shared_expected: u64 = results.iter().map(|r| r.shared_incrs).sum();
    if !uncertain.contains("shared/ctr") {
        let got = state
            .get(SHARED)
            .and_then(|v| kv_api::counter_value(v))
            .unwrap_or(0) as u64;
        if got > shared_expected {
            dup += got - shared_expected;
        } else {
            lost += shared_expected - got;
        }
    }
    report.lost_updates = lost;
    report.duplicated_updates = dup;
    report.divergent_keys = divergent;
    report.uncertain_keys = uncertain.len() as u64;
}
