//! `txipc inject`: fault-injection campaigns with an oracle, under every recovery policy.
//!
//! A campaign boots one system per policy variant (kv under `none`, `restart`, `txipc` with
//! typed or page tracking) and, on each, runs first a fault-free run (which must pass the
//! oracle, or the campaign stops: the oracle or the system would be wrong), then `--runs` runs
//! with one fault each. Run `i` has a seed drawn from the campaign seed; the seed alone (with
//! the fault list) fixes the run's fault kind, the call it is aimed at, the site, bit, register
//! or delay, and the workload's operations — so every policy gets the same fault list, and
//! `--replay SEED` reruns one run alone.
//!
//! One run (`Campaign::run_one`): a client thread runs the workload ([`workload`]) in the
//! run's own key namespace, checking every reply against its exact model, while an injector
//! thread waits for the aimed-at call to start and then injects the fault ([`fault`]: SIGKILL,
//! a fail point armed through the kernel, or a ptrace change by [`swifi`]). Then the fail point
//! is disarmed (which tells whether it fired), the oracle reads the whole store back through
//! the service and compares it with the background set and the model, the kernel's counters
//! tell whether the fault was detected, and the run is classified ([`report`]). The store is
//! reset to the background set through the service, so one booted system serves many runs; it
//! is rebooted only when a run leaves it unusable (policy `none` after a crash, a hung call).

pub mod fault;
pub mod report;
pub mod swifi;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv_api::KvClient;
use serde::Serialize;
use txipc_core::proto::ServerInfo;
use txipc_runtime::client::{Channel, System, SystemProcess};

use self::fault::{Action, FaultKind, FaultPlan};
use self::report::{Observation, Outcome, Tally, classify};
use crate::ycsb::Rng;

/// Arguments of `txipc inject`.
#[derive(clap::Args, Debug, Clone)]
pub struct InjectArgs {
    /// The server to inject faults into (a server with a workload model: kv).
    #[arg(long, default_value = "kv")]
    pub server: String,
    /// The workload run against it while the fault comes (kv: counters, compare-and-swap
    /// chains, puts, deletes, gets and scans, with an exact model).
    #[arg(long, default_value = "kv")]
    pub workload: String,
    /// Fault kinds, comma-separated: sigkill, panic, abort, segv, hang, corrupt, delay,
    /// bitflip-reg, bitflip-stack, bitflip-heap, skip-insn; or a family (fail-stop,
    /// fail-points, swifi); or all. Each run draws one kind from the list.
    #[arg(long, default_value = "sigkill")]
    pub fault: String,
    /// Faulty runs per policy (each after the fault-free run).
    #[arg(long, default_value_t = 100)]
    pub runs: u64,
    /// Policies, comma-separated: none, restart, txipc (typed tracking), page (txipc with page
    /// tracking), companion (the companion over the kv-plain server), or all.
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// Integrity checks of the kv server (built-in `kv-checked`: a checksum with every stored
    /// value, verified when read and right after every store): off, on, or both (every policy
    /// twice; companion runs only without).
    #[arg(long, default_value = "off")]
    pub integrity: String,
    /// Campaign seed (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start at run index K (with `--runs 1`: rerun run K of a campaign alone).
    #[arg(long, default_value_t = 0)]
    pub skip: u64,
    /// Rerun the single run with this run seed (as recorded in a report, hex or decimal).
    #[arg(long)]
    pub replay: Option<String>,
    /// Calls per run.
    #[arg(long, default_value_t = 40)]
    pub calls: u32,
    /// The server's per-call deadline (hang detection), milliseconds. Default: 150, or 1000
    /// when the list has ptrace faults (the injector single-steps the server inside a call for
    /// up to 40% of the deadline, which must not look like a hang).
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// A client call that takes longer than this is a hang, milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub call_timeout_ms: u64,
    /// Write the full report (summary and every run) to this JSON file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the outcome chart (SVG) to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// A policy variant of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Variant {
    /// Its label in reports (`txipc`, `page`, `restart+checks`, ...).
    pub label: String,
    /// Manifest policy.
    pub policy: &'static str,
    /// Manifest tracking.
    pub tracking: &'static str,
    /// The built-in server.
    pub builtin: &'static str,
    /// Companion checkpoints (every 100 ms, as the demo) in the manifest.
    pub checkpoints: bool,
}

fn parse_variants(policy: &str, integrity: &str) -> Result<Vec<Variant>> {
    use txipc_core::vocab::PolicyName;
    let mut base: Vec<PolicyName> = Vec::new();
    for p in policy.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let names: Vec<PolicyName> = match p {
            "all" => PolicyName::ALL.to_vec(),
            "typed" => vec![PolicyName::Txipc],
            one => vec![PolicyName::parse(one).map_err(anyhow::Error::msg)?],
        };
        for n in names {
            if !base.contains(&n) {
                base.push(n);
            }
        }
    }
    if base.is_empty() {
        bail!("--policy names no policy");
    }
    let checks: &[bool] = match integrity {
        "off" => &[false],
        "on" => &[true],
        "both" => &[false, true],
        other => bail!("--integrity `{other}`: use off, on or both"),
    };
    let mut v = Vec::new();
    for &c in checks {
        for &n in &base {
            if c && n == PolicyName::Companion {
                // kv-plain has no checks of its own (the companion checksums its log and
                // checkpoints, outside the server).
                continue;
            }
            let (policy, tracking) = n.manifest();
            v.push(Variant {
                label: if c {
                    format!("{}+checks", n.as_str())
                } else {
                    n.as_str().into()
                },
                policy: policy.as_str(),
                tracking: match tracking {
                    txipc_core::manifest::Tracking::Typed => "typed",
                    txipc_core::manifest::Tracking::Page => "page",
                },
                builtin: if c { "kv-checked" } else { n.kv_builtin() },
                checkpoints: n == PolicyName::Companion,
            });
        }
    }
    Ok(v)
}

fn parse_seed(s: &str) -> Result<u64> {
    let t = s.trim();
    let r = match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.with_context(|| format!("seed `{s}`: give a number (decimal, or hex with 0x)"))
}

fn kind_names<S: serde::Serializer>(k: &[FaultKind], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(k.iter().map(|k| k.as_str()))
}

/// The configuration of a campaign.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Server name.
    pub server: String,
    /// Fault list.
    #[serde(serialize_with = "kind_names")]
    pub faults: Vec<FaultKind>,
    /// Variants, in order.
    pub variants: Vec<Variant>,
    /// Campaign seed.
    pub seed: u64,
    /// First run index.
    pub skip: u64,
    /// Runs per variant.
    pub runs: u64,
    /// A single run seed to replay instead of the campaign's.
    pub replay: Option<u64>,
    /// Calls per run.
    pub calls: u32,
    /// Server deadline, ms.
    pub deadline_ms: u64,
    /// Client call timeout, ms.
    pub call_timeout_ms: u64,
}

impl Config {
    /// Checks and converts the command-line arguments.
    pub fn from_args(a: &InjectArgs) -> Result<Config> {
        if a.server != "kv" {
            bail!(
                "--server `{}`: only kv has a workload model so far",
                a.server
            );
        }
        if a.workload != "kv" {
            bail!(
                "--workload `{}`: the kv server's workload is `kv`",
                a.workload
            );
        }
        anyhow::ensure!((8..=10_000).contains(&a.calls), "--calls must be 8..=10000");
        let faults = fault::parse_list(&a.fault).map_err(anyhow::Error::msg)?;
        let swifi = faults
            .iter()
            .any(|k| fault::family(*k) == fault::Family::Swifi);
        let deadline_ms = a.deadline_ms.unwrap_or(if swifi { 1000 } else { 150 });
        anyhow::ensure!(deadline_ms >= 10, "--deadline-ms must be at least 10");
        anyhow::ensure!(
            a.call_timeout_ms > 2 * deadline_ms,
            "--call-timeout-ms must be more than twice the deadline ({deadline_ms} ms): a hang is detected and recovered first"
        );
        let replay = a.replay.as_deref().map(parse_seed).transpose()?;
        Ok(Config {
            server: a.server.clone(),
            faults,
            variants: parse_variants(&a.policy, &a.integrity)?,
            seed: a
                .seed
                .unwrap_or_else(|| txipc_sys::time::monotonic_ns() ^ 0x5EED),
            skip: a.skip,
            runs: if replay.is_some() { 1 } else { a.runs },
            replay,
            calls: a.calls,
            deadline_ms,
            call_timeout_ms: a.call_timeout_ms,
        })
    }
}

/// One run, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Policy variant.
    pub variant: String,
    /// Run index in the campaign.
    pub index: u64,
    /// The run seed (replay it with `--replay`).
    pub seed: String,
    /// The fault kind.
    pub fault: &'static str,
    /// The call it was aimed at.
    pub call: u32,
    /// What was to be done.
    pub action: Action,
    /// Whether it was carried out.
    pub injected: bool,
    /// What was done or why not.
    pub detail: String,
    /// What was observed.
    pub observed: Observation,
    /// The class.
    pub outcome: Outcome,
    /// First client error.
    pub first_error: Option<String>,
    /// First wrong reply.
    pub first_wrong: Option<String>,
    /// How the state differed.
    pub divergence: Option<String>,
    /// Wall time of the run, ms.
    pub ms: f64,
}

/// A running system of one variant.
struct Sys {
    _proc: SystemProcess,
    conn: System,
    kv: KvClient<Channel>,
    boots: u32,
}

fn manifest(name: &str, v: &Variant, cfg: &Config) -> String {
    let checkpoints = if v.checkpoints {
        "checkpoint_every = 20000\ncheckpoint_ms = 100\n"
    } else {
        ""
    };
    format!(
        "name = \"{name}\"\n[[server]]\nname = \"{server}\"\nbuiltin = \"{b}\"\npolicy = \"{p}\"\ntracking = \"{t}\"\nheap_mb = 64\nlog_mb = 4\ndeadline_ms = {d}\nretry_limit = 3\n{checkpoints}[server.restart]\nmin_interval_ms = 0\nmax_restarts = 1000000\nwindow_ms = 1000\n[[grant]]\nclient = \"*\"\nservice = \"{server}\"\n",
        server = cfg.server,
        b = v.builtin,
        p = v.policy,
        t = v.tracking,
        d = cfg.deadline_ms,
    )
}

/// How a run left the system.
enum After {
    Usable,
    Reboot,
}

/// A campaign in progress.
pub struct Campaign<'a> {
    exe: &'a Path,
    cfg: &'a Config,
    bg: BTreeMap<Vec<u8>, Vec<u8>>,
    stop: Arc<AtomicBool>,
    sites: &'static [txipc_core::failpoint::Site],
}

impl std::fmt::Debug for Campaign<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Campaign").field("cfg", self.cfg).finish()
    }
}

/// What a campaign produced.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Counts.
    pub tally: Tally,
    /// Every run.
    pub records: Vec<RunRecord>,
    /// Whether it was interrupted before the end.
    pub interrupted: bool,
    /// Wall time, seconds.
    pub seconds: f64,
    /// System boots.
    pub boots: u32,
}

fn info(conn: &System, server: &str) -> Result<ServerInfo> {
    conn.ps()?
        .into_iter()
        .find(|s| s.name == server)
        .with_context(|| format!("no server `{server}` in the system"))
}

impl<'a> Campaign<'a> {
    /// A campaign; `stop` is raised to end it after the current run.
    pub fn new(exe: &'a Path, cfg: &'a Config, stop: Arc<AtomicBool>) -> Campaign<'a> {
        Campaign {
            exe,
            cfg,
            bg: workload::background(cfg.seed),
            stop,
            sites: kv_server::sites::SITES,
        }
    }

    fn boot(&self, v: &Variant, boots: u32) -> Result<Sys> {
        let name = crate::unique_system("inject");
        let proc = SystemProcess::spawn(
            self.exe,
            &manifest(&name, v, self.cfg),
            &name,
            crate::BOOT_TIMEOUT,
        )
        .with_context(|| format!("booting the {} system", v.label))?;
        let conn = proc.connect()?;
        let mut ch = conn.open(&self.cfg.server)?;
        ch.set_timeout(Some(Duration::from_millis(self.cfg.call_timeout_ms)));
        let kv = KvClient::new(ch);
        workload::reset(&kv, &BTreeMap::new(), &self.bg).map_err(anyhow::Error::msg)?;
        Ok(Sys {
            _proc: proc,
            conn,
            kv,
            boots: boots + 1,
        })
    }

    /// Runs the whole campaign, reporting progress through `progress`.
    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<Results> {
        let t0 = Instant::now();
        let mut res = Results::default();
        'variants: for v in &self.cfg.variants {
            let mut sys = self.boot(v, 0)?;
            // The fault-free run: the same workload, no fault; the oracle must hold.
            let (rec, after) = self.run_one(&mut sys, v, u64::MAX, self.cfg.seed ^ 0xF4EE, None)?;
            if rec.outcome != Outcome::NotActivated {
                bail!(
                    "the fault-free run under {} did not pass the oracle ({:?}: error {:?}, wrong reply {:?}, state {:?}): the oracle or the system is wrong; campaign stopped",
                    v.label,
                    rec.outcome,
                    rec.first_error,
                    rec.first_wrong,
                    rec.divergence
                );
            }
            if matches!(after, After::Reboot) {
                bail!(
                    "the fault-free run under {} left the system unusable",
                    v.label
                );
            }
            let mut last = Instant::now();
            let mut done_here = 0u64;
            for i in self.cfg.skip..self.cfg.skip + self.cfg.runs {
                if self.stop.load(Ordering::Acquire) {
                    res.interrupted = true;
                    break 'variants;
                }
                let seed = self
                    .cfg
                    .replay
                    .unwrap_or_else(|| fault::run_seed(self.cfg.seed, i));
                let kind = fault::kind_for(&self.cfg.faults, seed);
                let plan =
                    fault::plan(kind, seed, self.cfg.calls, self.sites, self.cfg.deadline_ms);
                let (rec, after) = self.run_one(&mut sys, v, i, seed, Some(plan))?;
                if self.stop.load(Ordering::Acquire) {
                    // The interrupt reached the system too: this run's outcome means nothing.
                    res.interrupted = true;
                    break 'variants;
                }
                res.tally.add(&v.label, kind.as_str(), rec.outcome);
                res.records.push(rec);
                done_here += 1;
                if let After::Reboot = after {
                    let boots = sys.boots;
                    drop(sys);
                    sys = self.boot(v, boots)?;
                }
                if last.elapsed() >= Duration::from_secs(2) || done_here == self.cfg.runs {
                    let c = &res.tally.cells[&v.label];
                    let mut all = report::Counts::default();
                    for counts in c.values() {
                        for (o, n) in &counts.0 {
                            for _ in 0..*n {
                                all.add(*o);
                            }
                        }
                    }
                    progress(&format!(
                        "{}: {done_here}/{} runs ({:.0} s) — {}",
                        v.label,
                        self.cfg.runs,
                        t0.elapsed().as_secs_f64(),
                        Outcome::ALL
                            .iter()
                            .map(|o| format!("{} {}", o.as_str(), all.get(*o)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    last = Instant::now();
                }
            }
            res.boots += sys.boots;
        }
        res.seconds = t0.elapsed().as_secs_f64();
        Ok(res)
    }

    /// One run: the workload with (or without) one fault, then the oracle.
    fn run_one(
        &self,
        sys: &mut Sys,
        v: &Variant,
        index: u64,
        seed: u64,
        plan: Option<FaultPlan>,
    ) -> Result<(RunRecord, After)> {
        let t0 = Instant::now();
        let server = &self.cfg.server;
        let pre = info(&sys.conn, server)?;
        let ns = workload::namespace(if index == u64::MAX { 999_999 } else { index });
        // Room to run on while a ptrace injector tries to catch the server inside a call.
        let ops = workload::ops(seed, &ns, self.cfg.calls * 50);
        let heap_used = match plan.as_ref().map(|p| &p.action) {
            Some(Action::Heap { .. }) => sys.kv.stats().map(|s| s.heap_used).unwrap_or(0),
            _ => 0,
        };
        let sync = workload::Sync::default();
        // A fail point is armed before the aimed-at call starts (the workload waits for it);
        // SIGKILL and ptrace faults strike while the call runs.
        let wait_at = match plan.as_ref() {
            Some(
                p @ FaultPlan {
                    action: Action::FailPoint { .. },
                    ..
                },
            ) => p.call,
            _ => u32::MAX,
        };
        sync.wait_at.store(wait_at, Ordering::Release);
        let done = AtomicBool::new(false);
        let min_calls = self.cfg.calls as usize;
        let (obs, inj) = std::thread::scope(|s| {
            let injector = s.spawn(|| {
                let r = plan
                    .as_ref()
                    .map(|p| self.inject(&sys.conn, &pre, p, heap_used, &sync, &done));
                sync.ready.store(true, Ordering::Release);
                sync.injector_done.store(true, Ordering::Release);
                r
            });
            let obs = workload::run(&sys.kv, &ns, &ops, min_calls, &sync);
            done.store(true, Ordering::Release);
            (obs, injector.join().expect("the injector thread panicked"))
        });
        let (injected, mut fired, killed, mut detail) = match &inj {
            Some(i) => (i.injected, i.fired, i.killed, i.detail.clone()),
            None => (false, false, false, "no fault (fault-free run)".to_string()),
        };
        // Disarm a fail point that never fired (and learn whether it did), before the oracle's
        // reads could trip it.
        if let Some(FaultPlan {
            action: Action::FailPoint { .. },
            ..
        }) = &plan
            && injected
        {
            match sys.conn.fail_point(server, None) {
                Ok(Some(_)) => {
                    fired = false;
                    detail.push_str("; never reached");
                }
                Ok(None) => fired = true,
                Err(e) => detail.push_str(&format!("; disarming failed: {e}")),
            }
        }
        // Let a recovery in progress finish (bounded), then read the state back.
        let settle_until = Instant::now() + Duration::from_millis(self.cfg.call_timeout_ms);
        let mut timeout = obs.timed_out;
        let mut post = info(&sys.conn, server)?;
        while post.state == "recovering" && Instant::now() < settle_until {
            std::thread::sleep(Duration::from_millis(1));
            post = info(&sys.conn, server)?;
        }
        if post.state == "recovering" {
            timeout = true;
        }
        let (divergence, state) = match workload::read_all(&sys.kv) {
            Ok(state) => {
                let d = workload::oracle(&state, &self.bg, &obs.model, &ns);
                (Some(d), Some(state))
            }
            Err(e) => {
                if e.contains("deadline") || e.contains("no reply") {
                    timeout = true;
                }
                detail.push_str(&format!("; {e}"));
                (None, None)
            }
        };
        let post = info(&sys.conn, server)?;
        let detected = post.restarts > pre.restarts
            || post.generation != pre.generation
            || post.state != "running";
        let divergent = match &divergence {
            Some(d) => d.len() as u32,
            None => (self.bg.len() + obs.model.entries().count()) as u32,
        };
        let o = Observation {
            fired: fired || (injected && detected),
            detected,
            errors: obs.errors,
            wrong_replies: obs.wrong_replies,
            divergent_keys: divergent,
            timeout,
            injected,
        };
        let outcome = classify(&o);
        // Back to the background set for the next run, through the service, and checked. A
        // ptrace fault that was placed may have left damage no read shows (a flipped bit in
        // free memory or in the allocator's lists, written behind the undo log's back): the
        // system is rebooted after it, so that no run inherits another's fault.
        let swifi = plan
            .as_ref()
            .is_some_and(|p| fault::family(p.kind) == fault::Family::Swifi);
        let after = match (&state, post.state.as_str(), timeout) {
            _ if swifi && (injected || killed) => After::Reboot,
            (Some(st), "running", false) => match workload::reset(&sys.kv, st, &self.bg) {
                Ok(()) if workload::read_all(&sys.kv).is_ok_and(|s| s == self.bg) => After::Usable,
                _ => After::Reboot,
            },
            _ => After::Reboot,
        };
        let rec = RunRecord {
            variant: v.label.clone(),
            index,
            seed: format!("{seed:#x}"),
            fault: plan.as_ref().map_or("none", |p| p.kind.as_str()),
            call: plan.as_ref().map_or(0, |p| p.call),
            action: plan.map_or(Action::SkipInsn, |p| p.action),
            injected,
            detail,
            observed: o,
            outcome,
            first_error: obs.first_error,
            first_wrong: obs.first_wrong,
            divergence: divergence.filter(|d| !d.is_empty()).map(|d| d.summary()),
            ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        Ok((rec, after))
    }

    /// The injector thread: waits until the aimed-at call starts, then injects.
    fn inject(
        &self,
        conn: &System,
        pre: &ServerInfo,
        plan: &FaultPlan,
        heap_used: u64,
        sync: &workload::Sync,
        done: &AtomicBool,
    ) -> Injected {
        let deadline = Instant::now() + Duration::from_secs(30);
        // A fail point is armed right before the call (the workload waits at it); the others
        // wait for the call to start.
        let arm_first = matches!(plan.action, Action::FailPoint { .. });
        let reached = |n: u32| {
            if arm_first {
                n >= plan.call
            } else {
                n > plan.call
            }
        };
        while !reached(sync.started.load(Ordering::Acquire)) {
            if done.load(Ordering::Acquire) || Instant::now() > deadline {
                return Injected::not("the workload ended before the aimed-at call");
            }
            std::hint::spin_loop();
        }
        let mut rng = Rng::new(plan.jitter_seed);
        match &plan.action {
            Action::Kill { delay_us } => {
                let until = Instant::now() + Duration::from_micros(u64::from(*delay_us));
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                match txipc_sys::process::kill(pre.pid, rustix::process::Signal::KILL) {
                    Ok(()) => Injected {
                        injected: true,
                        fired: true,
                        killed: false,
                        detail: format!("SIGKILL {delay_us} µs into call {}", plan.call),
                    },
                    Err(e) => Injected::not(&format!("kill: {e}")),
                }
            }
            Action::FailPoint { spec, site, arg } => {
                match conn.fail_point(&self.cfg.server, Some(*spec)) {
                    Ok(_) => Injected {
                        injected: true,
                        fired: false,
                        killed: false,
                        detail: format!("{:?} at {site} (arg {arg})", spec.kind),
                    },
                    Err(e) => Injected::not(&format!("arming: {e}")),
                }
            }
            action => {
                let target = match swifi::locate(pre.pid, &self.cfg.server) {
                    Ok(t) => t,
                    Err(e) => return Injected::not(&e),
                };
                // Stepping inside a call must stay well below the deadline, or the kernel's
                // watchdog would take our stepping for a hang.
                let i = swifi::inject(
                    &target,
                    action,
                    heap_used,
                    &mut rng,
                    Duration::from_millis(self.cfg.deadline_ms * 2 / 5),
                );
                Injected {
                    injected: i.injected,
                    fired: i.injected,
                    killed: i.killed,
                    detail: i.detail,
                }
            }
        }
    }
}

struct Injected {
    injected: bool,
    fired: bool,
    killed: bool,
    detail: String,
}

impl Injected {
    fn not(why: &str) -> Injected {
        Injected {
            injected: false,
            fired: false,
            killed: false,
            detail: why.to_string(),
        }
    }
}

/// The full report: summary (contract keys), configuration, every run.
pub fn full_json(cfg: &Config, res: &Results) -> serde_json::Value {
    let mut v = summary_json(cfg, res);
    v["records"] = serde_json::to_value(&res.records).expect("serialisable");
    v
}

/// The summary JSON (what `--json` prints).
pub fn summary_json(cfg: &Config, res: &Results) -> serde_json::Value {
    let mut v = res.tally.json();
    v["seed"] = serde_json::json!(cfg.seed);
    v["config"] = serde_json::to_value(cfg).expect("serialisable");
    v["interrupted"] = serde_json::json!(res.interrupted);
    v["seconds"] = serde_json::json!(res.seconds);
    v["boots"] = serde_json::json!(res.boots);
    v
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts) and raises `stop`
/// when one arrives, so an interrupted campaign ends after its current run and still reports.
fn watch_interrupts(stop: Arc<AtomicBool>) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT")?;
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            stop.store(true, Ordering::Release);
            eprintln!("txipc inject: interrupted; finishing with the runs done so far");
        }
    });
    Ok(())
}

/// Runs `txipc inject`; with `json`, one JSON object on stdout and the table on stderr; with
/// `quiet`, no progress lines.
pub fn run(exe: &Path, args: InjectArgs, json: bool, quiet: bool) -> Result<()> {
    // Every refusal of `from_args` is a bad argument (exit code 2, `kind: usage`).
    let cfg =
        Config::from_args(&args).map_err(|e| txipc_core::vocab::UsageError(format!("{e:#}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_interrupts(stop.clone())?;
    let say = |s: &str| {
        if !quiet {
            eprintln!("txipc inject: {s}");
        }
    };
    say(&format!(
        "{} on {} under {}: {} runs each, faults {}; seed {}",
        cfg.workload_name(),
        cfg.server,
        cfg.variants
            .iter()
            .map(|v| v.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.runs,
        cfg.faults
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(","),
        cfg.seed
    ));
    let res = Campaign::new(exe, &cfg, stop).run(|m| say(m))?;
    let table = res.tally.table();
    if json {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    say(&format!(
        "{} runs in {:.1} s ({} system boots){}",
        res.records.len(),
        res.seconds,
        res.boots,
        if res.interrupted { ", interrupted" } else { "" }
    ));
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&full_json(&cfg, &res))?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        res.tally.chart(
            path,
            &format!(
                "txipc inject: {} faults into {} ({} runs per policy)",
                cfg.faults
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                cfg.server,
                cfg.runs
            ),
        )?;
    }
    if json {
        println!("{}", summary_json(&cfg, &res));
    }
    Ok(())
}

impl Config {
    fn workload_name(&self) -> &'static str {
        "kv workload"
    }
}
