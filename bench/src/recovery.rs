//! `txipc bench recovery`: time from a fault to the first reply of the new incarnation, as a
//! client sees it.
//!
//! One system, one kv server under policy `txipc` with a heap of the requested size, filled to
//! a fraction (default 80%) with 32 KiB values. With `--policy companion` the server is
//! `kv-plain` (ordinary Rust state) and `--heap-mb` is the size of its state: recovery then
//! restores the last checkpoint and replays the log behind it, and each sample records how
//! many log records were replayed. Before every run the whole key space is read
//! back (a scan), so the running incarnation has the populated heap *mapped*: its page tables
//! are as large as they get, which is what makes the dying process's address-space teardown
//! expensive.
//!
//! Each run: a client thread, pinned to the client CPU, calls `incr` on a counter in a tight
//! loop; at a random instant 2–12 ms later the fault comes:
//!
//! - `sigkill`: the bench sends SIGKILL to the server pid (from `ps`). The fault instant is just
//!   before the `kill` system call. This is a death the server cannot report: the kernel learns
//!   of it from the pidfd, which fires only after the dead process's address space is torn
//!   down.
//! - `segv`, `panic` (self-detected): a fail point is armed at `after-handle` (the handler ran
//!   and wrote its updates, the transaction is not committed). The call that trips it is rolled
//!   back and re-executed by the next incarnation; the fault instant is bounded below by that
//!   call's start, which is what the measurement uses (an over-estimate by the few
//!   microseconds of handling before the fail point).
//!
//! The recovery time ends at the reply of the first call that completes on the new generation
//! (`Channel::generation()` read after the reply). Beside it the bench records, from a pidfd of
//! its own on the old incarnation, when that process was gone (for SIGKILL this is the
//! teardown the recovery had to wait for), and the kernel's own `last_recovery_us` (fault
//! seen → new incarnation serving). At the end the counter is read back: every successful
//! `incr` must be in it exactly once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv_api::KvClient;
use serde::Serialize;
use txipc_core::failpoint::{FailKind, FailPoint};
use txipc_runtime::client::{Channel, System, SystemProcess};
use txipc_sys::time::monotonic_ns;

use crate::ycsb::Rng;

/// How the server is made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// SIGKILL from outside (fail-stop the server cannot report).
    Sigkill,
    /// A SIGSEGV in the handler (after its updates, before commit).
    Segv,
    /// A panic in the handler (after its updates, before commit).
    Panic,
    /// The handler never returns (after its updates, before commit); the kernel's watchdog
    /// kills the incarnation once the call ran past `deadline_ms` ([`HANG_DEADLINE_MS`] here).
    /// Measured from the kernel's declaration of the hang (its watchdog saw the call past the
    /// deadline, and sends the SIGKILL): detection takes the deadline (plus up to one watchdog
    /// tick) by design, and is not recovery.
    Hang,
}

/// `deadline_ms` of the benchmark's kv server when `hang` is measured (the other faults do not
/// depend on it).
pub const HANG_DEADLINE_MS: u64 = 300;

impl Fault {
    /// Every kind, in measurement order.
    pub const ALL: [Fault; 4] = [Fault::Sigkill, Fault::Segv, Fault::Panic, Fault::Hang];

    /// The name in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Sigkill => "sigkill",
            Fault::Segv => "segv",
            Fault::Panic => "panic",
            Fault::Hang => "hang",
        }
    }

    /// Whether the server detects (and reports) the fault itself.
    pub fn self_detected(self) -> bool {
        !matches!(self, Fault::Sigkill | Fault::Hang)
    }
}

/// Parameters of the run.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryConfig {
    /// Heap size, MiB.
    pub heap_mb: u64,
    /// Runs per fault kind.
    pub runs: u32,
    /// Fraction of the heap filled with data before the runs.
    pub fill: f64,
    /// Fault kinds, in order.
    pub faults: Vec<Fault>,
    /// Seed of the random fault instants.
    pub seed: u64,
    /// CPU of the server.
    pub server_cpu: Option<usize>,
    /// CPU of the client.
    pub client_cpu: Option<usize>,
    /// `txipc` (kv, recoverable heap) or `companion` (kv-plain: checkpoint + log replay).
    pub policy: String,
    /// Policy companion: the manifest's `checkpoint_every`.
    pub checkpoint_every: u64,
    /// Policy companion: the manifest's `checkpoint_ms`.
    pub checkpoint_ms: u64,
    /// Policy companion: the manifest's `standby` (`follow` or `warm`).
    pub standby: String,
    /// Policy companion: the manifest's `follow_max_lag` (0: the replica always replays at
    /// nice 19).
    pub follow_max_lag: u64,
    /// Policy txipc: the manifest's `takeover` (the spare takes over by itself).
    pub takeover: bool,
}

/// Where the time of one recovery went, from the kernel's own stamps of its steps
/// (`ServerInfo::last_recovery_steps`, on the machine's monotonic clock) placed between the
/// client's fault instant and its first reply on the new generation. The four parts add up to
/// the recovery time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Steps {
    /// Fault → the kernel saw it (a crash report; for SIGKILL the dead process's pidfd, which
    /// fires only after its address space is torn down), µs.
    pub detect_us: f64,
    /// Seen → the standby activated: the old incarnation confirmed dead or stopped, waiting
    /// requests settled, the activation sent, µs.
    pub confirm_us: f64,
    /// Activated → the new incarnation serving (its wake-up, restore — none when its state
    /// is ready — and the replay of the log past it, its `Active` message), or → the
    /// client's reply if the replay answered it before that, µs.
    pub activate_us: f64,
    /// Serving → the client's first reply on the new generation (its waiting request re-run
    /// after the replay, or its wake-up); 0 when the replay answered it, µs.
    pub client_us: f64,
}

/// One fault and its recovery.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The fault.
    pub fault: Fault,
    /// Fault → first reply on the new generation, µs (client's clock).
    pub recovery_us: f64,
    /// Fault → the old incarnation gone (its pidfd readable), µs; `None` if not seen in 5 s.
    pub old_exit_us: Option<f64>,
    /// The kernel's measure (fault seen → new incarnation serving), µs.
    pub kernel_us: Option<f64>,
    /// Generation before and after.
    pub generation: (u64, u64),
    /// Policy companion: log records replayed, and the server's own restore + replay time, µs.
    pub replayed: Option<(u64, u64)>,
    /// Policy companion: the standby's state was used (the warm standby had restored the
    /// checkpoint, or the following standby's replica was ready).
    pub warm: Option<bool>,
    /// Policy companion: log records the following standby's replica had not applied when
    /// the kernel saw the fault (its lag then: what the replica and the activation still had
    /// to replay; cold: the records behind the checkpoint).
    pub lag_records: Option<u64>,
    /// The client's waiting request was answered by the replay, before the new incarnation
    /// said it serves.
    pub answered_in_replay: Option<bool>,
    /// Where the time went (None when the kernel's stamps were not of this recovery).
    pub steps: Option<Steps>,
    /// The spare recovered the server by itself (its own stamps are the steps: woke,
    /// settled, serving); `false`: the kernel did.
    pub by_spare: Option<bool>,
    /// The same instants on the machine's monotonic clock (`CLOCK_MONOTONIC` ns), to place a
    /// sample in a system-wide trace (`perf record -k CLOCK_MONOTONIC`).
    pub at_ns: At,
}

/// The instants of one sample, `CLOCK_MONOTONIC` nanoseconds (0: not known).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct At {
    /// The fault instant the recovery is measured from.
    pub fault: u64,
    /// The kernel saw the fault.
    pub seen: u64,
    /// The kernel activated the standby.
    pub activated: u64,
    /// The kernel received the new incarnation's `Active`.
    pub serving: u64,
    /// The client's first reply on the new generation.
    pub reply: u64,
}

/// Percentiles of one group of samples.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Runs.
    pub runs: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile (nearest rank), µs.
    pub p99_us: f64,
    /// Worst, µs.
    pub max_us: f64,
    /// Median of the kernel's own measure, µs.
    pub kernel_p50_us: Option<f64>,
    /// Median time from the fault to the old incarnation's exit, µs.
    pub old_exit_p50_us: Option<f64>,
    /// Median of each step of the recovery ([`Steps`]), µs.
    pub steps_p50: Option<Steps>,
    /// The steps of the sample at the 99th percentile (nearest rank): where the tail went.
    pub p99_sample_steps: Option<Steps>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// The configuration.
    pub config: RecoveryConfig,
    /// Heap bytes in use after the fill.
    pub heap_used_bytes: u64,
    /// Heap size, bytes.
    pub heap_size_bytes: u64,
    /// Keys stored by the fill.
    pub fill_keys: u64,
    /// How long one re-read of the whole heap took (median), ms.
    pub rewarm_ms: f64,
    /// All samples.
    pub samples: Vec<Sample>,
    /// Calls that failed (none expected under policy txipc).
    pub errors: u64,
    /// The counter equals the number of successful increments (exactly-once held).
    pub exactly_once: bool,
    /// Hang runs left out because the kernel's stamps of their recovery were not seen (a
    /// later recovery's were), so their start could not be placed.
    pub unplaced: u64,
}

/// Nearest-rank percentile of sorted data.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = v.flatten().collect();
    if v.is_empty() {
        None
    } else {
        Some(crate::median(&mut v))
    }
}

/// Summarises the samples `pick` selects.
pub fn summarize(samples: &[Sample], pick: impl Fn(&Sample) -> bool) -> Summary {
    let mut chosen: Vec<&Sample> = samples.iter().filter(|s| pick(s)).collect();
    chosen.sort_by(|a, b| a.recovery_us.total_cmp(&b.recovery_us));
    let v: Vec<f64> = chosen.iter().map(|s| s.recovery_us).collect();
    let p99_sample_steps = (!chosen.is_empty())
        .then(|| {
            let rank = (0.99 * chosen.len() as f64).ceil() as usize;
            chosen[rank.clamp(1, chosen.len()) - 1].steps
        })
        .flatten();
    Summary {
        runs: v.len(),
        p50_us: percentile(&v, 0.5),
        p99_us: percentile(&v, 0.99),
        max_us: v.last().copied().unwrap_or(f64::NAN),
        kernel_p50_us: median_opt(chosen.iter().map(|s| s.kernel_us)),
        old_exit_p50_us: median_opt(chosen.iter().map(|s| s.old_exit_us)),
        steps_p50: (|| {
            let step =
                |f: fn(&Steps) -> f64| median_opt(chosen.iter().map(|s| s.steps.map(|x| f(&x))));
            Some(Steps {
                detect_us: step(|x| x.detect_us)?,
                confirm_us: step(|x| x.confirm_us)?,
                activate_us: step(|x| x.activate_us)?,
                client_us: step(|x| x.client_us)?,
            })
        })(),
        p99_sample_steps,
    }
}

const FILL_VALUE: usize = 32 * 1024;
const SCAN_CHUNK: u32 = 96;

fn manifest(cfg: &RecoveryConfig) -> String {
    let cpu = cfg
        .server_cpu
        .map_or(String::new(), |c| format!("cpu = {c}\n"));
    let (builtin, policy) = if cfg.policy == "companion" {
        ("kv-plain", "companion")
    } else {
        ("kv", "txipc")
    };
    let checkpoints = if cfg.policy == "companion" {
        format!(
            "checkpoint_every = {}\ncheckpoint_ms = {}\nstandby = \"{}\"\nfollow_max_lag = {}\n",
            cfg.checkpoint_every, cfg.checkpoint_ms, cfg.standby, cfg.follow_max_lag
        )
    } else {
        format!("takeover = {}\n", cfg.takeover)
    };
    let deadline = if cfg.faults.contains(&Fault::Hang) {
        HANG_DEADLINE_MS
    } else {
        5000
    };
    format!(
        "name = \"bench\"\n[[server]]\nname = \"kv\"\nbuiltin = \"{builtin}\"\npolicy = \"{policy}\"\ntracking = \"typed\"\nheap_mb = {}\ndeadline_ms = {deadline}\nretry_limit = 3\nslots = 1\nrequest_max = {}\nreply_max = {}\n{checkpoints}{cpu}[server.restart]\nmin_interval_ms = 0\nmax_restarts = 100000\nwindow_ms = 1000\n[[grant]]\nclient = \"*\"\nservice = \"kv\"\n",
        cfg.heap_mb,
        FILL_VALUE + 4096,
        (SCAN_CHUNK as usize + 1) * (FILL_VALUE + 256) + 4096,
    )
}

fn call_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Fills the heap to `cfg.fill` with 32 KiB values; returns (keys, used bytes, size).
fn fill(kv: &KvClient<Channel>, cfg: &RecoveryConfig) -> Result<(u64, u64, u64)> {
    let st = kv.stats().map_err(call_err)?;
    // A server with ordinary state (kv-plain) has no heap: `--heap-mb` sizes its state.
    let size = if st.heap_size == 0 {
        cfg.heap_mb << 20
    } else {
        st.heap_size
    };
    let target = (size as f64 * cfg.fill) as u64;
    let mut rng = Rng::new(cfg.seed ^ 0xF111);
    let mut value = vec![0u8; FILL_VALUE];
    crate::ycsb::fill_value(&mut rng, &mut value);
    let mut keys = 0u64;
    let mut used = st.heap_used;
    while used + FILL_VALUE as u64 * 2 < target {
        for _ in 0..32 {
            value[..8].copy_from_slice(&keys.to_le_bytes());
            match kv.put(format!("fill{keys:08}").into_bytes(), value.clone()) {
                Ok(_) => keys += 1,
                Err(txipc_service::Error::Service(kv_api::KvError::Full { .. })) => {
                    let st = kv.stats().map_err(call_err)?;
                    return Ok((keys, st.heap_used, size));
                }
                Err(e) => bail!("filling the heap: {e}"),
            }
        }
        used = kv.stats().map_err(call_err)?.heap_used;
    }
    let st = kv.stats().map_err(call_err)?;
    Ok((keys, st.heap_used, size))
}

/// Reads every value back, so the running incarnation maps the whole populated heap.
fn rewarm(kv: &KvClient<Channel>) -> Result<()> {
    let mut start = kv_api::Bytes::from(b"fill");
    loop {
        let entries = kv.scan(start.clone(), SCAN_CHUNK).map_err(call_err)?;
        let Some((last, _)) = entries.last() else {
            return Ok(());
        };
        if !last.starts_with(b"fill") {
            return Ok(());
        }
        start = last.clone();
        start.push(0);
        if entries.len() < SCAN_CHUNK as usize {
            return Ok(());
        }
    }
}

/// Policy companion: waits (bounded, 10 s) until the standby's state is ready — the warm
/// standby has restored the newest checkpoint, or the following standby's replica has caught
/// up with the log (it says so once it has) —, so that the run measures a ready standby's
/// recovery (each sample says whether it was). A standby not ready in time is measured as it
/// is.
fn wait_warm(sys: &System, follow: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let c = sys
            .ps()?
            .into_iter()
            .find(|s| s.name == "kv")
            .and_then(|s| s.companion);
        match c {
            Some(c)
                if (follow && (c.standby_index == 0 || c.standby_index < c.checkpoint_index))
                    || (!follow
                        && c.checkpoint_index > 0
                        && c.standby_index != c.checkpoint_index) =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

fn wait_running(sys: &System) -> Result<(i32, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = sys.ps()?;
        if let Some(s) = ps.iter().find(|s| s.name == "kv")
            && s.state == "running"
            && s.pid > 0
        {
            return Ok((s.pid, s.generation));
        }
        if Instant::now() > deadline {
            bail!("the kv server is not running again after 10 s: {ps:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The client loop of one run: `incr` until the first reply on a later generation than `g0`,
/// then a few more calls. Returns (that reply's time, that call's start time, successful
/// increments, errors).
fn client_loop(
    kv: &KvClient<Channel>,
    g0: u64,
    started: &AtomicBool,
    cpu: Option<usize>,
) -> (u64, u64, u64, u64) {
    if let Some(c) = cpu {
        let _ = txipc_sys::process::pin_to_cpu(c);
    }
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut found: Option<(u64, u64)> = None;
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t0 = monotonic_ns();
        let r = kv.incr(b"counter", 1);
        let t1 = monotonic_ns();
        started.store(true, Ordering::Release);
        match r {
            Ok(_) => ok += 1,
            Err(_) => errors += 1,
        }
        if found.is_none() && kv.transport().generation() > g0 {
            found = Some((t1, t0));
        }
        if found.is_some() {
            after += 1;
            if after > 100 {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let (t_reply, t_start) = found.unwrap_or((0, 0));
    (t_reply, t_start, ok, errors)
}

/// Watches `pid` until it is gone; returns the time (monotonic ns) it was seen gone.
fn watch_exit(pid: i32) -> Option<std::thread::JoinHandle<Option<u64>>> {
    let fd = txipc_sys::process::pidfd_open(pid).ok()?;
    Some(std::thread::spawn(move || {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::time::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) if n > 0 => Some(monotonic_ns()),
            _ => None,
        }
    }))
}

/// A run that recovered slower than this keeps the system's log (`txipc logs`) for its
/// diagnosis, instead of removing it with the system.
const KEEP_LOG_OVER_US: f64 = 100_000.0;

/// Runs the benchmark.
pub fn run(
    exe: &Path,
    cfg: &RecoveryConfig,
    mut progress: impl FnMut(&str),
) -> Result<RecoveryReport> {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        progress(
            "warning: RUST_BACKTRACE is set and servers inherit it: a panicking server then \
             symbolises a backtrace before it reports the crash, which adds ~100+ ms to panic \
             recovery. Run with `env -u RUST_BACKTRACE` for the figure without it.",
        );
    }
    let name = crate::unique_system("bench-recovery");
    let mut proc = SystemProcess::spawn(exe, &manifest(cfg), &name, crate::BOOT_TIMEOUT)
        .context("booting the benchmark system")?;
    let sys = proc.connect()?;
    let kv = KvClient::new(sys.open("kv")?);
    if let Some(c) = cfg.client_cpu {
        let _ = txipc_sys::process::pin_to_cpu(c);
    }
    let t = Instant::now();
    let (fill_keys, used, size) = fill(&kv, cfg)?;
    progress(&format!(
        "filled the {} MiB heap: {} keys, {:.0} MiB used, in {:.1} s",
        cfg.heap_mb,
        fill_keys,
        used as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    ));
    let mut rng = Rng::new(cfg.seed);
    let mut samples = Vec::new();
    let mut rewarms = Vec::new();
    let (mut total_ok, mut errors) = (0u64, 0u64);
    let mut unplaced = 0u64;
    let mut slow = 0u64;
    for &fault in &cfg.faults {
        for run in 0..cfg.runs {
            let (pid, g0) = wait_running(&sys)?;
            let t = Instant::now();
            rewarm(&kv)?;
            rewarms.push(t.elapsed().as_secs_f64() * 1e3);
            // Let the previous incarnation's teardown and the standby's fork settle.
            std::thread::sleep(Duration::from_millis(20));
            if cfg.policy == "companion" {
                wait_warm(&sys, cfg.standby == "follow")?;
            }
            let started = AtomicBool::new(false);
            let delay_us = rng.range_inclusive(2_000, 12_000);
            let (client, t_fault, exit) = std::thread::scope(|s| -> Result<_> {
                let h = s.spawn(|| client_loop(&kv, g0, &started, cfg.client_cpu));
                while !started.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                std::thread::sleep(Duration::from_micros(delay_us));
                let exit = watch_exit(pid);
                let t_fault = monotonic_ns();
                match fault {
                    Fault::Sigkill => {
                        txipc_sys::process::kill(pid, rustix::process::Signal::KILL)
                            .context("killing the server")?;
                    }
                    Fault::Segv => sys.inject("kv", FailKind::Segv, FailPoint::AfterHandle)?,
                    Fault::Panic => sys.inject("kv", FailKind::Panic, FailPoint::AfterHandle)?,
                    Fault::Hang => sys.inject("kv", FailKind::Hang, FailPoint::AfterHandle)?,
                }
                let client = h.join().expect("client thread panicked");
                Ok((client, t_fault, exit))
            })?;
            let (t_reply, t_start, ok, errs) = client;
            total_ok += ok;
            errors += errs;
            if t_reply == 0 {
                bail!(
                    "{}: run {run}: no reply from a new generation",
                    fault.as_str()
                );
            }
            let exit_ns = exit.and_then(|h| h.join().ok().flatten());
            let (_, g1) = wait_running(&sys)?;
            let info = sys.ps()?.into_iter().find(|s| s.name == "kv");
            let kernel_us = info.as_ref().and_then(|s| s.last_recovery_us);
            // This recovery's stamps were all taken after the fault instant.
            let stamps = info
                .as_ref()
                .and_then(|s| s.last_recovery_steps)
                .filter(|k| k.fault_ns >= t_fault);
            let from = match fault {
                Fault::Sigkill => t_fault,
                // A hang is declared by the kernel's watchdog once the call ran past its
                // deadline (by design, not recovery); that declaration is also the instant the
                // kernel sends the SIGKILL. Recovery is measured from it, so the hang's detect
                // step is zero and the kill's cost (until the pidfd fires) is in confirm. (It
                // was measured from the hung incarnation's end, after the kernel's stamp: its
                // detect step came out negative.)
                // Stamps of a later recovery (a second fault before `ps` was read: their
                // declaration comes after this reply) do not place this one: the run is
                // counted as unplaced and left out.
                Fault::Hang => match stamps.map(|k| k.fault_ns).filter(|&f| f <= t_reply) {
                    Some(f) => f,
                    None => {
                        progress(&format!(
                            "hang run {}/{}: the kernel's stamps of this recovery were not seen; run left out (unplaced)",
                            run + 1,
                            cfg.runs
                        ));
                        unplaced += 1;
                        continue;
                    }
                },
                Fault::Segv | Fault::Panic => t_start,
            };
            let at = |a: u64, b: u64| (a as f64 - b as f64) / 1e3;
            // The stamps of this recovery: seen after the fault instant (less a millisecond of
            // clock slack), activated before the client's reply. The reply may come before
            // the new incarnation says it serves: the replay answers the request it
            // inherited (SEGV after the log point, or a SIGKILL after it); then the activate
            // step ends at the reply and the client step is 0.
            let kstamps = stamps.filter(|k| {
                k.fault_ns >= from.saturating_sub(1_000_000)
                    && k.activated_ns >= k.fault_ns
                    && k.activated_ns <= t_reply
                    && k.serving_ns >= k.activated_ns
            });
            let steps = kstamps.map(|k| {
                let end = k.serving_ns.min(t_reply);
                Steps {
                    detect_us: at(k.fault_ns, from),
                    confirm_us: at(k.activated_ns, k.fault_ns),
                    activate_us: at(end, k.activated_ns),
                    client_us: at(t_reply, end),
                }
            });
            let answered_in_replay = kstamps.map(|k| t_reply < k.serving_ns);
            let at_ns = At {
                fault: from,
                seen: kstamps.map_or(0, |k| k.fault_ns),
                activated: kstamps.map_or(0, |k| k.activated_ns),
                serving: kstamps.map_or(0, |k| k.serving_ns),
                reply: t_reply,
            };
            let comp = info.and_then(|s| s.companion);
            let replayed = comp.as_ref().map(|c| (c.last_replayed, c.last_replay_us));
            let warm = comp.as_ref().map(|c| c.last_warm);
            let lag_records = comp.as_ref().map(|c| c.last_lag_records);
            let sample = Sample {
                fault,
                recovery_us: t_reply.saturating_sub(from) as f64 / 1e3,
                old_exit_us: exit_ns.map(|e| e.saturating_sub(from) as f64 / 1e3),
                kernel_us,
                generation: (g0, g1),
                replayed,
                warm,
                lag_records,
                answered_in_replay: answered_in_replay.filter(|_| cfg.policy == "companion"),
                steps,
                at_ns,
                by_spare: kstamps.map(|k| k.by_spare),
            };
            progress(&format!(
                "{} run {}/{}: recovered in {:.0} µs{} (old incarnation gone after {} µs, kernel {} µs{})",
                fault.as_str(),
                run + 1,
                cfg.runs,
                sample.recovery_us,
                if sample.by_spare == Some(true) {
                    " by the spare"
                } else {
                    ""
                },
                sample.old_exit_us.map_or("?".into(), |v| format!("{v:.0}")),
                sample.kernel_us.map_or("?".into(), |v| format!("{v:.0}")),
                sample.replayed.map_or(String::new(), |(n, us)| format!(
                    ", replica {} records behind at the fault, {n} log records replayed, {} + replay {us} µs",
                    sample.lag_records.unwrap_or(0),
                    if sample.warm == Some(true) {
                        "warm standby"
                    } else {
                        "cold restore"
                    }
                )),
            ));
            if sample.recovery_us > KEEP_LOG_OVER_US {
                slow += 1;
            }
            samples.push(sample);
        }
    }
    if slow > 0 {
        // An outlier is kept for its diagnosis: the system's log (the kernel's lines need
        // `TXIPC_VERBOSE=1`) stays after the system stops.
        proc.keep_log();
        progress(&format!(
            "{slow} run(s) took over {:.0} ms: the system's log is kept: {}{}",
            KEEP_LOG_OVER_US / 1e3,
            txipc_core::paths::log_path(&name).display(),
            if std::env::var_os("TXIPC_VERBOSE").is_some_and(|v| v == "1") {
                ""
            } else {
                " (run with TXIPC_VERBOSE=1 for the kernel's lines in it)"
            }
        ));
    }
    let counter = kv
        .get_with(b"counter", |b| b.and_then(kv_api::counter_value))
        .map_err(call_err)?
        .unwrap_or(0);
    drop(kv);
    drop(sys);
    proc.shutdown()
        .context("shutting the benchmark system down")?;
    let _ = txipc_sys::process::pin_to_cpu_set_all();
    Ok(RecoveryReport {
        config: cfg.clone(),
        heap_used_bytes: used,
        heap_size_bytes: size,
        fill_keys,
        rewarm_ms: crate::median(&mut rewarms),
        samples,
        errors,
        unplaced,
        exactly_once: counter == total_ok as i64,
    })
}

/// The markdown table of a report.
pub fn table(r: &RecoveryReport) -> String {
    let mut t = String::from(
        "| heap | fault | runs | p50 µs | p99 µs | max µs | kernel p50 µs | old incarnation gone p50 µs |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let opt = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0}"));
    let mut row = |label: &str, s: Summary| {
        if s.runs == 0 {
            return;
        }
        t.push_str(&format!(
            "| {} MiB | {label} | {} | {:.0} | {:.0} | {:.0} | {} | {} |\n",
            r.config.heap_mb,
            s.runs,
            s.p50_us,
            s.p99_us,
            s.max_us,
            opt(s.kernel_p50_us),
            opt(s.old_exit_p50_us),
        ));
    };
    for f in &r.config.faults {
        row(f.as_str(), summarize(&r.samples, |s| s.fault == *f));
    }
    row(
        "self-detected (segv+panic)",
        summarize(&r.samples, |s| s.fault.self_detected()),
    );
    // Where the time went: the kernel's stamps of each step between the fault and the reply.
    t.push_str("\n| fault | runs with stamps | answered by the replay | recovered by the spare | detect p50 µs | confirm + settle p50 µs | activate (wake, restore, replay) p50 µs | client p50 µs |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for f in &r.config.faults {
        let of = |s: &&Sample| s.fault == *f;
        let stamped = r
            .samples
            .iter()
            .filter(of)
            .filter(|s| s.steps.is_some())
            .count();
        let by_replay = r
            .samples
            .iter()
            .filter(of)
            .filter(|s| s.answered_in_replay == Some(true))
            .count();
        let by_spare = r
            .samples
            .iter()
            .filter(of)
            .filter(|s| s.by_spare == Some(true))
            .count();
        let sum = summarize(&r.samples, |s| s.fault == *f);
        if let Some(x) = sum.steps_p50 {
            t.push_str(&format!(
                "| {} | {stamped} | {by_replay} | {by_spare} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                f.as_str(),
                x.detect_us,
                x.confirm_us,
                x.activate_us,
                x.client_us
            ));
        }
        if let Some(x) = sum.p99_sample_steps {
            t.push_str(&format!(
                "| {} p99 sample ({:.0} µs) | | | | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                f.as_str(),
                sum.p99_us,
                x.detect_us,
                x.confirm_us,
                x.activate_us,
                x.client_us
            ));
        }
    }
    let mut replayed: Vec<f64> = r
        .samples
        .iter()
        .filter_map(|s| s.replayed.map(|(n, _)| n as f64))
        .collect();
    let mut replay_us: Vec<f64> = r
        .samples
        .iter()
        .filter_map(|s| s.replayed.map(|(_, us)| us as f64))
        .collect();
    if !replayed.is_empty() {
        let max = replayed.iter().copied().fold(0.0, f64::max);
        let mut lag: Vec<f64> = r
            .samples
            .iter()
            .filter_map(|s| s.lag_records.map(|n| n as f64))
            .collect();
        let lag_max = lag.iter().copied().fold(0.0, f64::max);
        t.push_str(&format!(
            "\npolicy companion (standby `{}`, follow_max_lag {}): the replica's lag at the fault p50 {:.0} records (max {lag_max:.0}); log records replayed by the activation p50 {:.0} (max {max:.0}); the server's restore + replay p50 {:.0} µs\n",
            r.config.standby,
            r.config.follow_max_lag,
            crate::median(&mut lag),
            crate::median(&mut replayed),
            crate::median(&mut replay_us),
        ));
        // Recovery against the log's length (records replayed), warm standby or not.
        t.push_str("\n| log records replayed | warm | runs | recovery p50 µs | max µs |\n|---|---|---:|---:|---:|\n");
        let bins: [(u64, u64, &str); 4] = [
            (0, 100, "0–99"),
            (100, 1000, "100–999"),
            (1000, 10_000, "1 000–9 999"),
            (10_000, u64::MAX, "≥ 10 000"),
        ];
        for (lo, hi, name) in bins {
            for warm in [true, false] {
                let g = summarize(&r.samples, |s| {
                    s.warm == Some(warm) && s.replayed.is_some_and(|(n, _)| n >= lo && n < hi)
                });
                if g.runs > 0 {
                    t.push_str(&format!(
                        "| {name} | {} | {} | {:.0} | {:.0} |\n",
                        if warm { "yes" } else { "no" },
                        g.runs,
                        g.p50_us,
                        g.max_us
                    ));
                }
            }
        }
    }
    t
}

/// The JSON report (the command-line contract, ARCHITECTURE.md §14): top-level `p50_us`, `p99_us` over every run of
/// every fault kind, `heap_mb`; per-kind detail under `sigkill`, `segv`, `panic`, and
/// `self_detected` (segv and panic together); every sample under `samples`.
pub fn json(r: &RecoveryReport) -> serde_json::Value {
    let all = summarize(&r.samples, |_| true);
    let mut v = serde_json::json!({
        "p50_us": all.p50_us,
        "p99_us": all.p99_us,
        "max_us": all.max_us,
        "runs": all.runs,
        "heap_mb": r.config.heap_mb,
        "policy": r.config.policy,
        "heap_used_bytes": r.heap_used_bytes,
        "fill_keys": r.fill_keys,
        "rewarm_ms": r.rewarm_ms,
        "errors": r.errors,
        "exactly_once": r.exactly_once,
        "unplaced": r.unplaced,
        "self_detected": summarize(&r.samples, |s| s.fault.self_detected()),
        "config": r.config,
        "samples": r.samples,
    });
    for f in Fault::ALL {
        let s = summarize(&r.samples, |s| s.fault == f);
        if s.runs > 0 {
            v[f.as_str()] = serde_json::to_value(s).expect("serialisable");
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..5], 0.99), 5.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
