//! Operator commands on running systems: `ps`, `ls`, `stop`, `restart`, `release`, `kill`,
//! `logs`.
//!
//! A running system is its kernel process and the socket it listens on in this user's runtime
//! directory. `ps` and `ls` ask the kernel for its status; `stop`, `restart`, `release` and
//! `kill` are control requests the kernel grants only to the manifest's operators (by default
//! the user who started the system).

use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use txipc_core::latency::{self, Histogram};
use txipc_core::proto::ServerInfo;
use txipc_runtime::client::{ClientError, System};

use crate::out::{Report, usage};

/// Connects to system `name`, with `timeout` for the kernel's answers if given.
pub fn connect(name: &str, timeout: Option<Duration>) -> Result<System> {
    let mut sys = System::connect(name)?;
    if let Some(t) = timeout {
        sys.set_control_timeout(t)?;
    }
    Ok(sys)
}

/// The kernel process of a running system.
#[derive(Debug, Clone, Copy)]
pub struct KernelInfo {
    /// Its pid.
    pub pid: i32,
    /// How long it has run, seconds.
    pub uptime_s: f64,
}

/// Finds the kernel behind system `name`'s socket (the socket's peer).
pub fn kernel_of(name: &str) -> Result<KernelInfo, ClientError> {
    let path = txipc_core::paths::socket_path(name);
    let io = |e: rustix::io::Errno| ClientError::Io(format!("{}: {e}", path.display()));
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io)?;
    let addr = rustix::net::SocketAddrUnix::new(&path).map_err(io)?;
    match rustix::net::connect(&sock, &addr) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::CONNREFUSED) => {
            return Err(ClientError::NotRunning {
                name: name.into(),
                path,
            });
        }
        Err(e) => return Err(io(e)),
    }
    let cred = rustix::net::sockopt::socket_peercred(&sock).map_err(io)?;
    let pid = cred.pid.as_raw_nonzero().get();
    Ok(KernelInfo {
        pid,
        uptime_s: process_uptime(pid).unwrap_or(0.0),
    })
}

/// Seconds since process `pid` started (from `/proc`).
pub fn process_uptime(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // Fields after the command: state is field 3, starttime field 22 (1-based).
    let start_ticks: f64 = rest.split(' ').nth(22 - 3)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((up - start_ticks / ticks).max(0.0))
}

/// `1h02m`, `3m05s`, `4.2s`.
pub fn human_duration(s: f64) -> String {
    let t = s as u64;
    if t >= 86_400 {
        format!("{}d{:02}h", t / 86_400, t % 86_400 / 3600)
    } else if t >= 3600 {
        format!("{}h{:02}m", t / 3600, t % 3600 / 60)
    } else if t >= 60 {
        format!("{}m{:02}s", t / 60, t % 60)
    } else {
        format!("{s:.1}s")
    }
}

/// One server as JSON (the `ps` contract: name, pid, generation, policy, restarts,
/// aborted_requests, and more). `uptime_ms` is the kernel's, to say how long ago things were.
pub fn server_json(s: &ServerInfo, uptime_ms: u64) -> Value {
    let ago = |at_ms: u64| uptime_ms.saturating_sub(at_ms) as f64 / 1000.0;
    json!({
        "name": s.name, "pid": s.pid, "generation": s.generation,
        "policy": s.policy.as_str(), "tracking": format!("{:?}", s.tracking).to_lowercase(),
        "state": s.state, "restarts": s.restarts, "faults": s.faults,
        "aborted_requests": s.aborted_requests, "retried_requests": s.retried_requests,
        "calls": s.calls, "channels": s.channels, "last_recovery_us": s.last_recovery_us,
        "last_recovery_ago_s": s.last_recovery_at_ms.map(ago),
        "standby_pid": s.standby_pid, "zygote_pid": s.zygote_pid,
        "last_fault": s.last_fault.as_ref().map(|f| json!({
            "cause": f.cause, "generation": f.generation, "at_ms": f.at_ms, "ago_s": ago(f.at_ms),
        })),
        "held_reason": s.held_reason,
        "latency": latency_json(&s.latency),
    })
}

/// Percentiles of a latency histogram (`null` when no call was timed): the service time of a
/// sample of the calls, transaction begin → replies published, as the server reports it.
pub fn latency_json(h: &Histogram) -> Value {
    if h.total() == 0 {
        return Value::Null;
    }
    let us = |q: f64| h.quantile_ns(q).map(|ns| ns as f64 / 1000.0);
    json!({
        "timed_calls": h.total(), "sample_every": latency::SAMPLE_EVERY,
        "p50_us": us(0.50), "p99_us": us(0.99), "max_us": us(1.0),
    })
}

/// A percentile for a table: `12.4 µs`, or `-` when nothing was timed.
pub fn quantile_words(h: &Histogram, q: f64) -> String {
    h.quantile_ns(q).map_or("-".into(), latency::human_ns)
}

/// The servers of a status, only `service` if given (an unknown name is "not found").
fn servers(all: &[ServerInfo], system: &str, service: Option<&str>) -> Result<Vec<ServerInfo>> {
    let list: Vec<ServerInfo> = all
        .iter()
        .filter(|s| service.is_none_or(|n| s.name == n))
        .cloned()
        .collect();
    match service {
        Some(name) if list.is_empty() => Err(ClientError::Refused {
            kind: txipc_core::proto::ErrorKind::UnknownService,
            message: format!("system `{system}` has no server `{name}` (see `txipc ps`)"),
        }
        .into()),
        _ => Ok(list),
    }
}

/// `txipc ps`: the kernel's pid and uptime; per server its processes, generation, state,
/// policy, counters, and the cause of its last fault in words.
pub fn ps(system: &str, service: Option<&str>, timeout: Option<Duration>) -> Result<Report> {
    let sys = connect(system, timeout)?;
    let status = sys.status()?;
    let list = servers(&status.servers, system, service)?;
    let up = status.uptime_ms;
    let mut text = format!(
        "system `{system}`: kernel pid {}, up {}\n",
        status.kernel_pid,
        human_duration(up as f64 / 1000.0)
    );
    text.push_str(&format!(
        "{:<12} {:>8} {:>5} {:<8} {:<6} {:<10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>12}\n",
        "NAME",
        "PID",
        "GEN",
        "POLICY",
        "TRACK",
        "STATE",
        "RESTARTS",
        "RETRIED",
        "ABORTED",
        "CALLS",
        "P50",
        "P99",
        "LAST-RECOV"
    ));
    for s in &list {
        text.push_str(&format!(
            "{:<12} {:>8} {:>5} {:<8} {:<6} {:<10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>12}\n",
            s.name,
            s.pid,
            s.generation,
            s.policy.as_str(),
            format!("{:?}", s.tracking).to_lowercase(),
            s.state,
            s.restarts,
            s.retried_requests,
            s.aborted_requests,
            s.calls,
            quantile_words(&s.latency, 0.50),
            quantile_words(&s.latency, 0.99),
            s.last_recovery_us
                .map_or("-".into(), |us| format!("{us:.0} µs"))
        ));
    }
    // What happened, in words, like `systemctl status`.
    for s in &list {
        if let Some(f) = &s.last_fault {
            let ago = human_duration(up.saturating_sub(f.at_ms) as f64 / 1000.0);
            text.push_str(&format!(
                "{}: last fault {ago} ago, generation {}: {}",
                s.name, f.generation, f.cause
            ));
            if let Some(us) = s.last_recovery_us {
                text.push_str(&format!("; recovered in {us:.0} µs"));
            }
            text.push('\n');
        }
        if let Some(why) = &s.held_reason {
            let sys_arg = if system == "default" {
                String::new()
            } else {
                format!("--system {system} ")
            };
            text.push_str(&format!(
                "{}: {} because {why}; `txipc {sys_arg}release {}` starts it again\n",
                s.name, s.state, s.name
            ));
        }
    }
    let servers: Vec<Value> = list.iter().map(|s| server_json(s, up)).collect();
    Ok(Report::new(
        json!({
            "ok": true, "system": system,
            "kernel": {"pid": status.kernel_pid, "uptime_s": up as f64 / 1000.0},
            "servers": servers,
        }),
        text,
    ))
}

/// `txipc ls`: this user's running systems (sockets in the runtime directory that answer).
pub fn ls() -> Result<Report> {
    let dir = txipc_core::paths::runtime_dir();
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".sock")
                    .map(str::to_owned)
            })
            .filter(|n| txipc_core::paths::valid_system_name(n))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    names.sort();
    let mut systems = Vec::new();
    let mut text = format!(
        "{:<24} {:>8} {:>10} {:>3}  SERVERS\n",
        "SYSTEM", "KERNEL", "UPTIME", "N"
    );
    let mut stale = Vec::new();
    for name in names {
        let Ok(status) = connect(&name, Some(Duration::from_secs(2))).and_then(|s| Ok(s.status()?))
        else {
            stale.push(name);
            continue;
        };
        let list = &status.servers;
        let k = KernelInfo {
            pid: status.kernel_pid,
            uptime_s: status.uptime_ms as f64 / 1000.0,
        };
        let servers: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        text.push_str(&format!(
            "{:<24} {:>8} {:>10} {:>3}  {}\n",
            name,
            k.pid,
            human_duration(k.uptime_s),
            list.len(),
            servers.join(", ")
        ));
        systems.push(json!({
            "name": name, "kernel_pid": k.pid, "uptime_s": k.uptime_s, "servers": servers,
        }));
    }
    if systems.is_empty() {
        text = format!("no running systems (runtime directory {})\n", dir.display());
    }
    let stopped: Vec<String> = crate::runlog::stopped_logs(&dir)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    if !stopped.is_empty() {
        text.push_str(&format!(
            "stopped, log kept (`txipc logs --system NAME`): {}\n",
            stopped.join(", ")
        ));
    }
    Ok(Report::new(
        json!({"ok": true, "runtime_dir": dir, "systems": systems, "stale_sockets": stale,
               "stopped_with_log": stopped}),
        text,
    ))
}

/// `txipc stop`: asks the kernel to shut the system down and waits (bounded) until it is gone.
pub fn stop(system: &str, timeout: Option<Duration>) -> Result<Report> {
    let sys = connect(system, timeout)?;
    let kernel = KernelInfo {
        pid: sys.status()?.kernel_pid,
        uptime_s: 0.0,
    };
    sys.shutdown()?;
    drop(sys);
    let timeout = timeout.unwrap_or(Duration::from_secs(10));
    let socket = txipc_core::paths::socket_path(system);
    let start = Instant::now();
    loop {
        let gone = matches!(
            txipc_sys::process::state(kernel.pid),
            None | Some('Z') | Some('X')
        );
        if gone && !socket.exists() {
            break;
        }
        if start.elapsed() >= timeout {
            bail!(
                "system `{system}` (kernel pid {}) did not stop within {timeout:?}; `kill {}` ends it",
                kernel.pid,
                kernel.pid
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Report::new(
        json!({"ok": true, "system": system, "kernel_pid": kernel.pid,
               "stopped_after_ms": start.elapsed().as_secs_f64() * 1000.0}),
        format!("system `{system}` stopped (kernel pid {})", kernel.pid),
    ))
}

/// Parses a signal: `KILL`, `SIGKILL`, `kill` or `9`; returns its name (`SIGKILL`) too.
pub fn parse_signal(s: &str) -> Result<(String, rustix::process::Signal)> {
    use rustix::process::Signal;
    const SIGNALS: [(&str, i32, Signal); 14] = [
        ("HUP", 1, Signal::HUP),
        ("INT", 2, Signal::INT),
        ("QUIT", 3, Signal::QUIT),
        ("ILL", 4, Signal::ILL),
        ("ABRT", 6, Signal::ABORT),
        ("BUS", 7, Signal::BUS),
        ("FPE", 8, Signal::FPE),
        ("KILL", 9, Signal::KILL),
        ("USR1", 10, Signal::USR1),
        ("SEGV", 11, Signal::SEGV),
        ("USR2", 12, Signal::USR2),
        ("TERM", 15, Signal::TERM),
        ("CONT", 18, Signal::CONT),
        ("STOP", 19, Signal::STOP),
    ];
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    SIGNALS
        .iter()
        .find(|(n, num, _)| *n == name || num.to_string() == name)
        .map(|&(n, _, sig)| (format!("SIG{n}"), sig))
        .ok_or_else(|| {
            let all: Vec<&str> = SIGNALS.iter().map(|s| s.0).collect();
            usage(format!(
                "unknown signal `{s}`: use one of {}",
                all.join(", ")
            ))
        })
}

/// `txipc kill SERVER [--signal S]`: the kernel sends a signal to the server's active
/// incarnation (for demonstrations: it then recovers the server by its policy).
pub fn kill(system: &str, server: &str, signal: &str, timeout: Option<Duration>) -> Result<Report> {
    let (name, sig) = parse_signal(signal)?;
    let sys = connect(system, timeout)?;
    let status = sys.status()?;
    let s = servers(&status.servers, system, Some(server))?.remove(0);
    sys.kill(server, sig.as_raw())
        .with_context(|| format!("sending {name} to `{server}`"))?;
    Ok(Report::new(
        json!({"ok": true, "server": server, "pid": s.pid, "generation": s.generation,
               "signal": name}),
        format!(
            "sent {name} to `{server}` (pid {}, generation {})",
            s.pid, s.generation
        ),
    ))
}

/// Waits (bounded) until `server` runs a generation above `above` and returns its info.
fn wait_running(
    sys: &System,
    server: &str,
    above: u64,
    timeout: Duration,
) -> Result<Option<ServerInfo>> {
    let start = Instant::now();
    loop {
        let s = sys.ps()?.into_iter().find(|s| s.name == server);
        if let Some(s) = s.filter(|s| s.state == "running" && s.generation > above) {
            return Ok(Some(s));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `txipc restart SERVER`: recovers a running server as after a fault (under `txipc` its state
/// is kept), or starts a `held` or `dead` one again; waits (bounded) until it serves.
pub fn restart(system: &str, server: &str, timeout: Option<Duration>) -> Result<Report> {
    let sys = connect(system, timeout)?;
    let status = sys.status()?;
    let before = servers(&status.servers, system, Some(server))?.remove(0);
    sys.restart(server)?;
    let wait = timeout.unwrap_or(Duration::from_secs(10));
    let after = wait_running(&sys, server, before.generation, wait)?;
    let state = after.as_ref().map_or("starting", |_| "running");
    Ok(Report::new(
        json!({"ok": true, "server": server, "was": before.state,
               "previous_generation": before.generation,
               "generation": after.as_ref().map(|s| s.generation),
               "pid": after.as_ref().map(|s| s.pid), "state": state}),
        match &after {
            Some(s) => format!(
                "`{server}` restarted: generation {} → {} (pid {}), was {}",
                before.generation, s.generation, s.pid, before.state
            ),
            None => format!(
                "`{server}` restart requested (was {}); it is not serving yet after {wait:?}: see `txipc ps`",
                before.state
            ),
        },
    ))
}

/// `txipc release SERVER`: takes a `held` or `dead` server out of that state (with the reason
/// it was in it) and starts it again; waits (bounded) until it serves.
pub fn release(system: &str, server: &str, timeout: Option<Duration>) -> Result<Report> {
    let sys = connect(system, timeout)?;
    let status = sys.status()?;
    let before = servers(&status.servers, system, Some(server))?.remove(0);
    let r = sys.release(server)?;
    let wait = timeout.unwrap_or(Duration::from_secs(10));
    let after = wait_running(&sys, server, before.generation, wait)?;
    Ok(Report::new(
        json!({"ok": true, "server": server, "was": r.was, "reason": r.reason,
               "fresh": r.fresh, "generation": after.as_ref().map(|s| s.generation),
               "pid": after.as_ref().map(|s| s.pid),
               "state": after.as_ref().map_or("starting", |_| "running")}),
        format!(
            "`{server}` released: it was {} because {}; {}{}",
            r.was,
            r.reason,
            if r.fresh {
                "it starts empty"
            } else {
                "it starts on its recovered state"
            },
            match &after {
                Some(s) => format!(", now generation {} (pid {})", s.generation, s.pid),
                None => format!(", not serving yet after {wait:?} (see `txipc ps`)"),
            }
        ),
    ))
}

/// The log file of system `name` (`txipc_core::paths::log_path`).
pub fn log_path(name: &str) -> PathBuf {
    txipc_core::paths::log_path(name)
}

/// The last `n` lines of a file.
pub fn tail_lines(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let f = std::fs::File::open(path)?;
    let mut lines = std::collections::VecDeque::with_capacity(n + 1);
    for line in std::io::BufReader::new(f).lines() {
        lines.push_back(line?);
        if lines.len() > n {
            lines.pop_front();
        }
    }
    Ok(lines.into())
}

/// `txipc logs [-n N] [--follow]`.
pub fn logs(
    system: &str,
    lines: usize,
    follow: bool,
    json_out: bool,
    timeout: Option<Duration>,
) -> Result<Report> {
    let path = log_path(system);
    let last = match tail_lines(&path, lines) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No log: say whether the system runs at all.
            kernel_of(system)?;
            bail!(
                "system `{system}` runs but has no log at {} (its log was removed, or its runtime directory differs: check TXIPC_RUNTIME_DIR)",
                path.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let running = kernel_of(system).is_ok();
    if !follow || json_out || !running {
        let text = last.join("\n");
        return Ok(Report::new(
            json!({"ok": true, "system": system, "path": path, "running": running,
                   "lines": last}),
            text,
        ));
    }
    // Follow: print what is there, then what is appended, until the system stops (or the
    // timeout passes).
    let mut o = std::io::stdout().lock();
    for l in &last {
        writeln!(o, "{l}")?;
    }
    o.flush()?;
    let mut f = std::fs::File::open(&path)?;
    let mut pos = f.seek(std::io::SeekFrom::End(0))?;
    let start = Instant::now();
    let mut buf = String::new();
    loop {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Rotated: start over from the new file.
            f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(_) => break,
            };
            pos = 0;
        }
        f.seek(std::io::SeekFrom::Start(pos))?;
        buf.clear();
        let mut r = std::io::BufReader::new(&f);
        while r.read_line(&mut buf)? > 0 {}
        pos += buf.len() as u64;
        o.write_all(buf.as_bytes())?;
        o.flush()?;
        if !path.exists() || kernel_of(system).is_err() {
            break;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Report::new(json!({"ok": true}), ""))
}
