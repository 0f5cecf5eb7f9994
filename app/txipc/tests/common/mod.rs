//! Helpers shared by the system tests: boot a system of real processes, open clients.
#![allow(dead_code)]

pub mod fsmount;
pub mod watchdog;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use txipc_runtime::client::{Channel, System, SystemProcess};

/// The txipc binary under test.
pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_txipc"))
}

/// A system name unique to this test process and call.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One server entry of a manifest.
pub fn server(name: &str, builtin: &str, policy: &str, extra: &str) -> String {
    format!(
        "[[server]]\nname = \"{name}\"\nbuiltin = \"{builtin}\"\npolicy = \"{policy}\"\nheap_mb = 16\n{extra}\n"
    )
}

/// A grant entry.
pub fn grant(client: &str, service: &str) -> String {
    format!("[[grant]]\nclient = \"{client}\"\nservice = \"{service}\"\n")
}

/// Boots `manifest` under a unique name.
pub fn boot(tag: &str, manifest: &str) -> SystemProcess {
    let name = unique(tag);
    SystemProcess::spawn(exe(), manifest, &name, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("booting {name}: {e}"))
}

/// Opens a channel with a generous timeout, so that a bug fails the test instead of hanging it.
pub fn open(sys: &System, service: &str) -> Channel {
    let mut ch = sys.open(service).expect("open channel");
    ch.set_timeout(Some(Duration::from_secs(30)));
    ch
}

/// Children of `pid` (every thread's, zombies included, each thread's oldest first), from
/// `/proc/PID/task/*/children`.
/// Only `pid`'s own entries are read: reading another process's `/proc/PID/stat` waits while
/// that process is inside `execve` (its exec_update_lock), which a process stuck on a FUSE
/// mount can be for as long as the mount is dead.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(*p));
    out
}

/// Pids of every live descendant of `pid`.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(x) = frontier.pop() {
        for p in children(x) {
            if !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out.retain(|&p| alive(p));
    out
}

/// Whether `pid` is an address-space keeper (`txipc_sys::keeper`): the only process of a
/// system whose descriptors are at most one pidfd (it closes its copy of the table first
/// thing but the kernel's pidfd it watches; a checkpoint writer, forked, keeps the server's).
/// Its name cannot tell: the 15 bytes of `comm` rarely reach the ` kp` suffix.
pub fn is_keeper(pid: i32) -> bool {
    let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let fds: Vec<_> = d.flatten().collect();
    fds.len() <= 1
        && fds.iter().all(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:[pidfd]")
        })
}

/// The live descendants of a server incarnation other than its keeper: its checkpoint writers.
pub fn checkpoint_children(pid: i32) -> Vec<i32> {
    let mut d = descendants(pid);
    d.retain(|&p| !is_keeper(p));
    d
}

/// Whether a process exists (zombies count as gone). Reads `/proc/PID/status`, which (unlike
/// `stat`) does not wait for a process inside `execve`.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| {
                let st = st.trim_start();
                !(st.starts_with('Z') || st.starts_with('X'))
            }),
        Err(_) => false,
    }
}

/// The running incarnation's pid of `server`.
pub fn server_pid(sys: &System, server: &str) -> i32 {
    sys.ps()
        .expect("ps")
        .into_iter()
        .find(|s| s.name == server)
        .map(|s| s.pid)
        .expect("server listed")
}

/// Waits (bounded) until `f` holds.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `txipc demo ARGS --json --quiet` and returns its report (the last line of its output);
/// removes the system log it kept. A demo whose state is not verified exits 1 with the whole
/// report: the caller checks the report's fields, which say more than the exit code.
pub fn demo(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(exe())
        .arg("demo")
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "demo printed no JSON ({e}): stdout {stdout}\nstderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    remove_demo_log(&v);
    v
}

/// Storms of `seconds` each (seeds `seed`, `seed + 1`, ...), each run and checked by `storm`
/// (given `base` plus `--seconds` and `--seed`; it returns the report), until `min_faults`
/// faults were injected and `min_requests` requests made in all, at most [`MAX_STORMS`] of
/// them; returns the reports.
///
/// A fault goes only into a serving server, so how many faults (and requests) fit in a storm
/// of a given length is how fast recovery is on this machine at the moment (a debug build
/// recovers in tens of ms, far slower under load): a fixed-length storm's counts are in effect
/// a speed check. The storms go on until the counts are reached instead of failing a loaded
/// machine, and counts still short after [`MAX_STORMS`] are a failure.
pub fn storms_until(
    base: &[&str],
    seconds: u64,
    seed: u64,
    mins: (u64, u64),
    storm: impl FnMut(&[&str]) -> serde_json::Value,
) -> Vec<serde_json::Value> {
    storms_up_to(MAX_STORMS, base, seconds, seed, mins, storm)
}

/// [`storms_until`] with at most `max_storms` storms (the hand-run 10,000-fault storms: a
/// fault goes only into a serving server, so on a loaded machine one storm of a fixed length
/// falls short of the count; its storms go on until the count is reached).
pub fn storms_up_to(
    max_storms: u64,
    base: &[&str],
    seconds: u64,
    seed: u64,
    (min_faults, min_requests): (u64, u64),
    mut storm: impl FnMut(&[&str]) -> serde_json::Value,
) -> Vec<serde_json::Value> {
    let mut reports = Vec::new();
    for k in 0..max_storms {
        let (secs, seed) = (seconds.to_string(), (seed + k).to_string());
        let mut args = base.to_vec();
        args.extend(["--seconds", &secs, "--seed", &seed]);
        reports.push(storm(&args));
        if total(&reports, "faults_injected") >= min_faults
            && total(&reports, "requests") >= min_requests
        {
            return reports;
        }
    }
    panic!(
        "{} faults and {} requests in {max_storms} storms of {seconds} s, fewer than {min_faults} and {min_requests}",
        total(&reports, "faults_injected"),
        total(&reports, "requests")
    );
}

/// Most storms [`storms_until`] runs.
pub const MAX_STORMS: u64 = 4;

/// The sum of `key` over `reports` (a field of [`storms_until`]'s reports).
pub fn total(reports: &[serde_json::Value], key: &str) -> u64 {
    reports.iter().map(|v| v[key].as_u64().unwrap_or(0)).sum()
}

/// Checks one bank storm's report (`txipc demo --workload bank`) under `policy` for
/// everything but its fault count: state verified, the total conserved, nothing lost,
/// duplicated, half-applied, uncertain or failed (and under txipc no prepared
/// sub-transaction left). (How many requests a storm makes is a speed: [`bank_storms_until`]
/// counts them across its storms.)
pub fn check_bank_report(v: &serde_json::Value, policy: &str) {
    assert_eq!(v["policy"], policy, "{v}");
    assert_eq!(v["state_verified"], true, "{v}");
    assert_eq!(v["total_found"], v["total_expected"], "{v}");
    let mut zero = vec![
        "lost_updates",
        "duplicated_updates",
        "half_applied",
        "divergent_keys",
        "uncertain_transfers",
        "clients_missing",
        "failed_requests",
    ];
    if policy == "txipc" {
        zero.push("prepared_left");
    }
    for k in zero {
        assert_eq!(v[k], 0, "{k}: {v}");
    }
}

/// Bank storms under `policy` ([`storms_until`], each checked by [`check_bank_report`]) until
/// `min_faults` faults and 500 requests, with every server hit in all.
pub fn bank_storms_until(base: &[&str], policy: &str, seconds: u64, seed: u64, min_faults: u64) {
    bank_storms_up_to(MAX_STORMS, base, policy, seconds, seed, min_faults);
}

/// [`bank_storms_until`] with at most `max_storms` storms, each report printed (the hand-run
/// 10,000-fault storms); returns the reports.
pub fn bank_storms_up_to(
    max_storms: u64,
    base: &[&str],
    policy: &str,
    seconds: u64,
    seed: u64,
    min_faults: u64,
) -> Vec<serde_json::Value> {
    let reports = storms_up_to(max_storms, base, seconds, seed, (min_faults, 500), |args| {
        let v = demo(args);
        println!("{v}");
        check_bank_report(&v, policy);
        v
    });
    for s in ["bank", "account-0", "account-1"] {
        let hits: u64 = reports
            .iter()
            .map(|v| v["faults_by_server"][s].as_u64().unwrap_or(0))
            .sum();
        assert!(hits > 0, "{s} never hit: {reports:?}");
    }
    reports
}

/// Removes the system log a `txipc demo` run keeps for after it (its JSON report names it in
/// `log`): tests leave no files.
pub fn remove_demo_log(report: &serde_json::Value) {
    if let Some(path) = report["log"].as_str() {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes what killed test processes left in the temp dir under these tags (`t-TAG-PID-N`,
/// named by [`unique`]) once the process that made them is gone: a test killed by a signal
/// or ended by its watchdog runs no Drop guard. A leftover that is still a mount is detached
/// first (`umount -l`, which never blocks on a dead front end).
pub fn sweep_stale(tags: &[&str]) {
    let me = std::process::id() as i32;
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("t-")) else {
            continue;
        };
        if !tags.iter().any(|t| rest.starts_with(&format!("{t}-"))) {
            continue;
        }
        let mut parts = rest.rsplitn(3, '-');
        let (Some(n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if n.parse::<u32>().is_err() || pid == me || alive(pid) {
            continue;
        }
        let path = e.path();
        if fs_fuse::is_fuse_mount(&path) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&path)
                .status();
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}
