//! `txipc demo --workload bank`: money transfers across three servers under live faults,
//! verified to the last unit at the end.
//!
//! The demo boots a `bank` server and two account servers (`account-0`, `account-1`), opens
//! accounts spread over both, and starts client processes (`txipc __bank-client`) that transfer
//! random amounts between random accounts (the same server, another server, or the same
//! account), each transfer with its own id. Meanwhile it hits **every server of the tree**:
//! SIGKILL, or a fail point armed at a random point of the commit protocol, nested points
//! included (coordinator after publish; participant prepared, on the decision). At the end it
//! reads every ledger and balance back and checks that:
//!
//! - the total of all balances is what was deposited (no money made or lost);
//! - every acknowledged transfer is in exactly one debit entry (at its source) and one credit
//!   entry (at its destination), each applied once;
//! - no other transfer left a trace, and none is half applied (a debit without its credit);
//! - every balance equals its opening amount plus its ledger;
//! - no client waited forever, and no account server is left with a prepared
//!   sub-transaction (`ps`).
//!
//! Under `restart` and `none` the same run shows what those policies lose.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bank_api::BankClient;
use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use txipc_core::failpoint::FailPoint;
use txipc_core::vocab::{Fault, PolicyName};
use txipc_runtime::client::{System, SystemProcess};
use txipc_service::Error as SvcError;

use crate::demo::{Common, DemoArgs};
use crate::live;
use crate::out::{Failed, Kind, Report, usage};

/// Accounts opened by the demo.
pub const ACCOUNTS: usize = 16;
/// Opening balance of each.
pub const OPENING: i64 = 100_000;
const SERVERS: [&str; 3] = ["bank", "account-0", "account-1"];

/// Arguments of the hidden `txipc __bank-client`.
#[derive(clap::Args, Debug)]
pub struct BankClientArgs {
    /// This client's number (its transfer ids are `id << 40 | n`).
    #[arg(long)]
    pub id: u32,
    /// How long to run.
    #[arg(long)]
    pub millis: u64,
    /// Seed of the transfer mix.
    #[arg(long)]
    pub seed: u64,
    /// Where to write the acknowledged transfers (16 bytes each).
    #[arg(long)]
    pub out: PathBuf,
}

/// What a client reports at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BankClientReport {
    /// Client number.
    pub id: u32,
    /// Transfers acknowledged.
    pub acked: u64,
    /// Transfers refused by the bank (insufficient funds): no effect expected.
    pub refused: u64,
    /// Transfers that failed with an error saying they did not run.
    pub failed: u64,
    /// Transfer ids whose effect is unknown (an ambiguous error; none under txipc).
    pub uncertain: Vec<u64>,
    /// The errors of failed and uncertain transfers, by message (numbers blanked), with counts.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// Median and 99th percentile latency, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
}

/// Counts an error message, its digits blanked (ids and times), at most 16 distinct ones.
fn note_error(errors: &mut BTreeMap<String, u64>, message: &str) {
    let key: String = message
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    if errors.len() < 16 || errors.contains_key(&key) {
        *errors.entry(key).or_default() += 1;
    }
}

fn account(k: usize) -> String {
    format!("acct-{k:02}")
}

/// One client process: transfers until its time is up.
pub fn client_main(args: BankClientArgs, system: &str) -> Result<()> {
    let sys = System::connect(system)?;
    let mut ch = sys.open("bank")?;
    // No call may wait forever: a call that takes this long is a failure of the system.
    ch.set_timeout(Some(Duration::from_secs(20)));
    let bank = BankClient::new(ch);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut rep = BankClientReport {
        id: args.id,
        ..Default::default()
    };
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| args.out.display().to_string())?,
    );
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3)?;
    let deadline = Instant::now() + Duration::from_millis(args.millis);
    let mut last_progress = Instant::now();
    let mut n = 0u64;
    let out = std::io::stdout();
    while Instant::now() < deadline {
        n += 1;
        let id = (u64::from(args.id) + 1) << 40 | n;
        let from = rng.random_range(0..ACCOUNTS);
        // One in eight to the same account, else any other.
        let to = if rng.random_range(0..8u32) == 0 {
            from
        } else {
            rng.random_range(0..ACCOUNTS)
        };
        let amount = rng.random_range(1..500i64);
        let t = Instant::now();
        match bank.transfer(id, account(from), account(to), amount) {
            Ok(()) => {
                rep.acked += 1;
                let _ = hist.record((t.elapsed().as_nanos() as u64).max(100));
                file.write_all(&id.to_le_bytes())?;
                file.write_all(&(from as u16).to_le_bytes())?;
                file.write_all(&(to as u16).to_le_bytes())?;
                file.write_all(&(amount as u32).to_le_bytes())?;
            }
            Err(SvcError::Service(bank_api::BankError::Account {
                error: bank_api::AccountError::Insufficient { .. },
                ..
            })) => rep.refused += 1,
            Err(SvcError::Service(e)) => {
                // A nested call failed below the bank (under the baselines: an account server
                // died): whether the debit stands is unknown.
                rep.uncertain.push(id);
                note_error(&mut rep.errors, &format!("bank: {e}"));
            }
            Err(SvcError::Call(e)) => {
                note_error(&mut rep.errors, &format!("call: {e}"));
                if e.did_not_run() {
                    rep.failed += 1;
                } else {
                    rep.uncertain.push(id);
                }
                if matches!(e, txipc_service::CallError::Unavailable { .. }) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(250) {
            let mut o = out.lock();
            let _ = writeln!(
                o,
                "progress {} {} {}",
                rep.acked,
                rep.failed + rep.uncertain.len() as u64,
                hist.value_at_quantile(0.99)
            );
            let _ = o.flush();
            last_progress = Instant::now();
        }
    }
    file.flush()?;
    rep.p50_ns = hist.value_at_quantile(0.5);
    rep.p99_ns = hist.value_at_quantile(0.99);
    let mut o = out.lock();
    writeln!(o, "result {}", serde_json::to_string(&rep)?)?;
    o.flush()?;
    Ok(())
}

/// The bank demo's verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BankDemoReport {
    /// The workload (`bank`).
    pub workload: String,
    /// Every server's policy.
    pub policy: String,
    /// Transfers acknowledged by the bank.
    pub requests: u64,
    /// Transfers refused for insufficient funds (no effect).
    pub refused: u64,
    /// Faults injected (in any server of the tree).
    pub faults_injected: u64,
    /// Faults by server.
    pub faults_by_server: BTreeMap<String, u64>,
    /// Faults by kind.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Restarts the kernel performed, all servers.
    pub recoveries: u64,
    /// Requests re-executed after a rollback, all servers.
    pub retried_requests: u64,
    /// Transfers that ended in a system error.
    pub failed_requests: u64,
    /// Those errors by message (digits blanked), with counts, all clients.
    pub errors: BTreeMap<String, u64>,
    /// Acknowledged transfers missing a ledger entry.
    pub lost_updates: u64,
    /// Ledger entries applied more than once.
    pub duplicated_updates: u64,
    /// Transfers with a debit but no credit, or the other way round, or a trace of a transfer
    /// that was never acknowledged.
    pub half_applied: u64,
    /// Accounts whose balance is not their opening amount plus their ledger.
    pub divergent_keys: u64,
    /// Transfers whose outcome the clients could not know (none under txipc).
    pub uncertain_transfers: u64,
    /// What was deposited.
    pub total_expected: i64,
    /// The sum of the balances read back.
    pub total_found: i64,
    /// Servers left with a prepared (undecided) sub-transaction.
    pub prepared_left: u64,
    /// Client processes that did not report (a call never returned).
    pub clients_missing: u64,
    /// Everything checks out.
    pub state_verified: bool,
    /// Why not, in words.
    pub verdict_reason: String,
    /// Transfers per second.
    pub ops_per_sec: f64,
    /// Worst client's median latency, µs.
    pub p50_us: f64,
    /// Worst client's 99th percentile, µs.
    pub p99_us: f64,
    /// Seconds the clients ran.
    pub seconds: f64,
}

fn demo_manifest(system: &str, policy: &str) -> String {
    // Under companion: frequent checkpoints and a small log keep the log a fault replays short
    // (a full log forces a checkpoint); the state a recovery decodes still grows with the
    // ledgers.
    let checkpoints = if policy == "companion" {
        "checkpoint_every = 5000\ncheckpoint_ms = 100\nlog_mb = 4\n"
    } else {
        ""
    };
    // 1 GiB heaps (sparse): a long storm writes millions of ledger entries.
    crate::bank::manifest(
        system,
        2,
        policy,
        1024,
        &format!(
            "deadline_ms = 300\nretry_limit = 10\n{checkpoints}[server.restart]\nmin_interval_ms = 0\nmax_restarts = 100000\nwindow_ms = 1000"
        ),
    )
}

/// Runs the bank demo.
pub fn run(args: &DemoArgs, common: &Common) -> Result<Report> {
    if args.seconds == 0 || args.clients == 0 || args.fault_interval_ms == 0 {
        return Err(usage(
            "--seconds, --clients and --fault-interval-ms must be at least 1",
        ));
    }
    const ALLOWED: [Fault; 6] = [
        Fault::Sigkill,
        Fault::Panic,
        Fault::Segv,
        Fault::Abort,
        Fault::Hang,
        Fault::Exit,
    ];
    let faults = txipc_core::vocab::parse_faults(&args.fault, &ALLOWED).map_err(usage)?;
    let policy = PolicyName::parse(&args.policy).map_err(usage)?;
    let (mp, _) = policy.manifest();
    let policy_name = mp.as_str().to_string();
    if !["txipc", "companion", "restart", "none"].contains(&policy_name.as_str()) {
        return Err(usage(format!(
            "--workload bank runs under txipc, companion, restart or none (not `{}`)",
            args.policy
        )));
    }
    let system = common
        .system
        .clone()
        .unwrap_or_else(|| format!("bankdemo-{}", std::process::id()));
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let exe = std::env::current_exe().context("locating the txipc binary")?;
    let quiet = common.quiet;
    crate::say!(
        quiet,
        "txipc demo: bank + 2 account servers under policy `{policy_name}`, {} client processes for {} s, a fault every ~{} ms in any server; seed {seed}",
        args.clients,
        args.seconds,
        args.fault_interval_ms
    );
    let mut sys = SystemProcess::spawn(
        &exe,
        &demo_manifest(&system, &policy_name),
        &system,
        Duration::from_secs(20),
    )?;
    // Its log stays after the demo (`txipc logs --system bankdemo-PID`).
    sys.keep_log();
    let conn = sys.connect()?;
    let mut ch = conn.open("bank")?;
    ch.set_timeout(Some(Duration::from_secs(20)));
    let bank = BankClient::new(ch);
    for k in 0..ACCOUNTS {
        bank.open(account(k), OPENING)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", account(k)))?;
    }
    let dir = std::env::temp_dir().join(format!("txipc-bankdemo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let millis = args.seconds * 1000;
    let mut clients = Vec::new();
    let mut outs = Vec::new();
    for id in 0..args.clients {
        let out = dir.join(format!("client-{id}.bin"));
        let cseed = seed.wrapping_add(u64::from(id) * 7919);
        let mut a: Vec<std::ffi::OsString> =
            format!("__bank-client --system {system} --quiet --id {id} --millis {millis} --seed {cseed} --out")
                .split(' ')
                .map(Into::into)
                .collect();
        a.push(out.clone().into());
        clients.push(live::spawn_client(&exe, &a)?);
        outs.push(out);
    }
    let mut report = BankDemoReport {
        workload: "bank".into(),
        policy: policy_name.clone(),
        total_expected: ACCOUNTS as i64 * OPENING,
        ..Default::default()
    };
    let storm = live::Storm {
        system: &system,
        conn: &conn,
        servers: &SERVERS,
        faults: &faults,
        interval_ms: args.fault_interval_ms,
        millis,
        seed,
        grace: Duration::from_secs(40),
        unit: "transfers",
        quiet,
        json: common.json,
    };
    let out: live::Outcome<BankClientReport> =
        live::drive(&storm, &mut clients, &mut |c, server, kind, rng| {
            inject(c, server, kind, policy_name == "companion", rng)
        })?;
    report.faults_injected = out.faults_injected;
    report.faults_by_server = out.faults_by_server;
    report.faults_by_kind = out.faults_by_kind;
    report.seconds = out.seconds;
    report.clients_missing = out.results.iter().filter(|r| r.is_none()).count() as u64;
    let ps = out.servers;
    report.recoveries = ps.iter().map(|s| s.restarts).sum();
    report.retried_requests = ps.iter().map(|s| s.retried_requests).sum();
    report.prepared_left = ps.iter().filter(|s| s.prepared).count() as u64;
    let mut acks: Vec<(u64, u16, u16, u32)> = Vec::new();
    for path in &outs {
        let mut b = Vec::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            f.read_to_end(&mut b)?;
        }
        for r in b.chunks_exact(16) {
            acks.push((
                u64::from_le_bytes(r[0..8].try_into()?),
                u16::from_le_bytes(r[8..10].try_into()?),
                u16::from_le_bytes(r[10..12].try_into()?),
                u32::from_le_bytes(r[12..16].try_into()?),
            ));
        }
    }
    let results: Vec<BankClientReport> = out.results.into_iter().flatten().collect();
    report.requests = acks.len() as u64;
    report.refused = results.iter().map(|r| r.refused).sum();
    report.failed_requests = results
        .iter()
        .map(|r| r.failed + r.uncertain.len() as u64)
        .sum();
    let uncertain: std::collections::HashSet<u64> = results
        .iter()
        .flat_map(|r| r.uncertain.iter().copied())
        .collect();
    report.uncertain_transfers = uncertain.len() as u64;
    for r in &results {
        for (k, n) in &r.errors {
            *report.errors.entry(k.clone()).or_default() += n;
        }
    }
    report.ops_per_sec = report.requests as f64 / report.seconds.max(0.001);
    report.p50_us = results.iter().map(|r| r.p50_ns).max().unwrap_or(0) as f64 / 1000.0;
    report.p99_us = results.iter().map(|r| r.p99_ns).max().unwrap_or(0) as f64 / 1000.0;
    let mut reasons = Vec::new();
    // A fail point armed near the end may fire during the read-back: try a few times.
    let mut state = read_back(&conn);
    for _ in 0..4 {
        if state.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        state = read_back(&conn);
    }
    match state {
        Ok(state) => verify(&state, &acks, &uncertain, &mut report),
        Err(e) => reasons.push(format!(
            "the bank did not answer the read-back ({e:#}): its accounts are gone"
        )),
    }
    if (policy_name == "txipc" || policy_name == "companion") && report.uncertain_transfers > 0 {
        reasons.push(format!(
            "{} transfers ended without a definite answer (a call timed out or its effect is unknown)",
            report.uncertain_transfers
        ));
    }
    if report.total_found != report.total_expected {
        reasons.push(format!(
            "the total is {} where {} was deposited",
            report.total_found, report.total_expected
        ));
    }
    if report.lost_updates + report.duplicated_updates + report.half_applied + report.divergent_keys
        > 0
    {
        reasons.push("the ledgers differ from the acknowledged transfers".into());
    }
    if report.clients_missing > 0 {
        reasons.push(format!(
            "{} clients did not report: a call never completed",
            report.clients_missing
        ));
    }
    if report.prepared_left > 0 {
        reasons.push(format!(
            "{} servers were left with an undecided prepared sub-transaction",
            report.prepared_left
        ));
    }
    if report.requests == 0 {
        reasons.push("no transfer was acknowledged: nothing to verify".into());
    }
    report.state_verified = reasons.is_empty();
    report.verdict_reason = reasons.join("; ");
    drop(bank);
    drop(conn);
    sys.shutdown()?;
    let text = format!(
        "txipc demo (bank, policy {}): {} transfers acknowledged, {} refused, {} faults injected in {:?}, {} recoveries;\n\
         total {} of {} deposited, {} lost, {} duplicated, {} half-applied, {} divergent accounts: {}",
        report.policy,
        report.requests,
        report.refused,
        report.faults_injected,
        report.faults_by_server,
        report.recoveries,
        report.total_found,
        report.total_expected,
        report.lost_updates,
        report.duplicated_updates,
        report.half_applied,
        report.divergent_keys,
        if report.state_verified {
            "every ledger VERIFIED".to_string()
        } else {
            format!("NOT verified ({})", report.verdict_reason)
        }
    );
    let text = format!("{text}\n{}", crate::demo::log_words(&system));
    let mut v = serde_json::to_value(&report)?;
    v["system"] = json!(system);
    v["log"] = json!(crate::control::log_path(&system));
    if report.state_verified {
        v["ok"] = json!(true);
        Ok(Report::new(v, text))
    } else {
        Err(Failed {
            kind: Kind::StateDiffers,
            message: format!("state not verified: {}", report.verdict_reason),
            json: v,
            text,
        }
        .into())
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fault in `server`: SIGKILL at whatever instant, or a fail point at a random point of the
/// protocol that this server's role reaches.
fn inject(
    conn: &System,
    server: &str,
    kind: Fault,
    companion: bool,
    rng: &mut impl Rng,
) -> Result<()> {
    if let Some(fail) = kind.fail_kind() {
        let points: &[FailPoint] = if companion && server == "bank" {
            // The points of a call, and those of the bank's calls to the account servers.
            &[
                FailPoint::BeforeHandle,
                FailPoint::AfterHandle,
                FailPoint::AfterCommit,
                FailPoint::CallReplied,
                FailPoint::CallRecorded,
            ]
        } else if companion {
            &[
                FailPoint::BeforeHandle,
                FailPoint::AfterHandle,
                FailPoint::AfterCommit,
            ]
        } else if server == "bank" {
            &[
                FailPoint::BeforeHandle,
                FailPoint::AfterHandle,
                FailPoint::AfterCommit,
                FailPoint::AfterPublish,
            ]
        } else {
            &[
                FailPoint::BeforeHandle,
                FailPoint::AfterHandle,
                FailPoint::Prepared,
                FailPoint::OnDecide,
                FailPoint::AfterCommit,
            ]
        };
        let point = points[rng.random_range(0..points.len())];
        return Ok(conn.inject(server, fail, point)?);
    }
    let pid = conn
        .ps()?
        .into_iter()
        .find(|s| s.name == server)
        .map(|s| s.pid)
        .filter(|&p| p > 0)
        .context("no running incarnation")?;
    let pid = rustix::process::Pid::from_raw(pid).context("bad pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .context("the incarnation was already gone")?;
    Ok(())
}

/// Balances and ledgers read back through the bank.
#[derive(Default)]
struct State {
    balances: HashMap<String, i64>,
    ledgers: HashMap<String, Vec<bank_api::LedgerEntry>>,
}

fn read_back(conn: &System) -> Result<State> {
    let mut ch = conn.open("bank")?;
    ch.set_timeout(Some(Duration::from_secs(10)));
    let bank = BankClient::new(ch);
    let mut st = State::default();
    for (name, balance, _) in bank.accounts().map_err(|e| anyhow::anyhow!("{e}"))? {
        let entries = crate::bank::read_ledger(&bank, &name)?;
        st.balances.insert(name.clone(), balance);
        st.ledgers.insert(name, entries);
    }
    if st.balances.is_empty() {
        bail!("no account left");
    }
    Ok(st)
}

fn verify(
    st: &State,
    acks: &[(u64, u16, u16, u32)],
    uncertain: &std::collections::HashSet<u64>,
    r: &mut BankDemoReport,
) {
    r.total_found = st.balances.values().sum();
    // id -> (debit: (account, delta, times), credit: ...)
    type Side = Option<(String, i64, u32)>;
    let mut seen: HashMap<u64, (Side, Side)> = HashMap::new();
    for k in 0..ACCOUNTS {
        let name = account(k);
        let Some(entries) = st.ledgers.get(&name) else {
            r.divergent_keys += 1;
            continue;
        };
        let sum: i64 = entries.iter().map(|e| e.delta * i64::from(e.times)).sum();
        if st.balances.get(&name) != Some(&(OPENING + sum)) {
            r.divergent_keys += 1;
        }
        for e in entries {
            if e.times > 1 {
                r.duplicated_updates += u64::from(e.times - 1);
            }
            let s = seen.entry(e.transfer).or_default();
            let side = if e.delta < 0 { &mut s.0 } else { &mut s.1 };
            *side = Some((name.clone(), e.delta, e.times));
        }
    }
    for &(id, from, to, amount) in acks {
        let want_d = Some((account(from as usize), -i64::from(amount), 1));
        let want_c = Some((account(to as usize), i64::from(amount), 1));
        match seen.remove(&id) {
            None => r.lost_updates += 1,
            Some((d, c)) => {
                let ok = |got: &Side, want: &Side| {
                    got.as_ref().map(|g| (&g.0, g.1)) == want.as_ref().map(|w| (&w.0, w.1))
                };
                if !ok(&d, &want_d) || !ok(&c, &want_c) {
                    r.lost_updates += 1;
                }
            }
        }
    }
    // Traces of transfers that were not acknowledged: fine when the client could not know
    // (an ambiguous error) and both halves are there; anything else is half applied.
    for (id, (d, c)) in seen {
        if !(uncertain.contains(&id) && d.is_some() && c.is_some()) {
            r.half_applied += 1;
        }
    }
}
