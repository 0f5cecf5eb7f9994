//! Operator commands on running systems: `ps`, `ls`, `stop`, `kill`, `logs`.
//!
//! A running system is its kernel process and the socket it listens on in this user's runtime
//! directory. The kernel's pid is read from the socket itself (`SO_PEERCRED`), so it is the
//! process that answers, not a pid file that may be stale.

use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use txipc_core::proto::ServerInfo;
use txipc_runtime::client::{ClientError, System};

use crate::out::{Report, usage};

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
/// aborted_requests, and more).
pub fn server_json(s: &ServerInfo) -> Value {
    json!({
        "name": s.name, "pid": s.pid, "generation": s.generation,
        "policy": s.policy.as_str(), "tracking": format!("{:?}", s.tracking).to_lowercase(),
        "state": s.state, "restarts": s.restarts,
        "aborted_requests": s.aborted_requests, "retried_requests": s.retried_requests,
        "calls": s.calls, "channels": s.channels, "last_recovery_us": s.last_recovery_us,
    })
}

/// The servers of `sys`, only `service` if given (an unknown name is "not found").
fn servers(sys: &System, service: Option<&str>) -> Result<Vec<ServerInfo>> {
    let mut list = sys.ps()?;
    if let Some(name) = service {
        list.retain(|s| s.name == name);
        if list.is_empty() {
            return Err(ClientError::Refused {
                kind: txipc_core::proto::ErrorKind::UnknownService,
                message: format!(
                    "system `{}` has no server `{name}` (see `txipc ps`)",
                    sys.name()
                ),
            }
            .into());
        }
    }
    Ok(list)
}

/// `txipc ps`.
pub fn ps(system: &str, service: Option<&str>) -> Result<Report> {
    let sys = System::connect(system)?;
    let kernel = kernel_of(system)?;
    let list = servers(&sys, service)?;
    let mut text = format!(
        "system `{system}`: kernel pid {}, up {}\n",
        kernel.pid,
        human_duration(kernel.uptime_s)
    );
    text.push_str(&format!(
        "{:<12} {:>8} {:>5} {:<8} {:<6} {:<10} {:>8} {:>8} {:>8} {:>10} {:>12}\n",
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
        "LAST-RECOV"
    ));
    for s in &list {
        text.push_str(&format!(
            "{:<12} {:>8} {:>5} {:<8} {:<6} {:<10} {:>8} {:>8} {:>8} {:>10} {:>12}\n",
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
            s.last_recovery_us
                .map_or("-".into(), |us| format!("{us:.0} µs"))
        ));
    }
    let servers: Vec<Value> = list.iter().map(server_json).collect();
    Ok(Report::new(
        json!({
            "ok": true, "system": system,
            "kernel": {"pid": kernel.pid, "uptime_s": kernel.uptime_s},
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
        let (Ok(sys), Ok(k)) = (System::connect(&name), kernel_of(&name)) else {
            stale.push(name);
            continue;
        };
        let Ok(list) = sys.ps() else {
            stale.push(name);
            continue;
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
    Ok(Report::new(
        json!({"ok": true, "runtime_dir": dir, "systems": systems, "stale_sockets": stale}),
        text,
    ))
}

/// `txipc stop`: asks the kernel to shut the system down and waits (bounded) until it is gone.
pub fn stop(system: &str, timeout: Option<Duration>) -> Result<Report> {
    let kernel = kernel_of(system)?;
    let sys = System::connect(system)?;
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

/// `txipc kill SERVER [--signal S]`: sends a signal to the server's running incarnation (for
/// demonstrations: the kernel sees the fault and recovers the server by its policy).
pub fn kill(system: &str, server: &str, signal: &str) -> Result<Report> {
    let (name, sig) = parse_signal(signal)?;
    let sys = System::connect(system)?;
    let s = servers(&sys, Some(server))?.remove(0);
    if s.pid <= 0 {
        bail!(
            "server `{server}` has no running incarnation (state {}): nothing to signal",
            s.state
        );
    }
    let pid = rustix::process::Pid::from_raw(s.pid).context("bad pid")?;
    rustix::process::kill_process(pid, sig)
        .with_context(|| format!("sending {name} to `{server}` (pid {})", s.pid))?;
    Ok(Report::new(
        json!({"ok": true, "server": server, "pid": s.pid, "generation": s.generation,
               "signal": name}),
        format!(
            "sent {name} to `{server}` (pid {}, generation {})",
            s.pid, s.generation
        ),
    ))
}

/// The log file of system `name` (written by `txipc run` while it runs).
pub fn log_path(name: &str) -> PathBuf {
    txipc_core::paths::runtime_dir().join(format!("{name}.log"))
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
            // Say whether the system runs at all (a quiet or private system keeps no log).
            kernel_of(system)?;
            bail!(
                "system `{system}` keeps no log at {} (it was started with --quiet, or not by `txipc run`)",
                path.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !follow || json_out {
        let text = last.join("\n");
        return Ok(Report::new(
            json!({"ok": true, "system": system, "path": path, "lines": last}),
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
