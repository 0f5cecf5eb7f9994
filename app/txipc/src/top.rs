//! `txipc top`: a live view of a running system, and the view the demo shows while it runs.
//!
//! Every interval it asks the kernel for the system's status and shows, per server, its state,
//! generation, pid, calls per second (the difference of the kernel's call counter over the
//! interval), p99 service time over the interval (from the difference of the server's latency
//! histograms, `txipc_core::latency`), faults, recoveries, requests re-executed and aborted,
//! the last recovery time and the cause of the last fault; below, the last lines of the
//! system's log.
//!
//! - On a terminal: a full-screen view (ratatui) refreshed in place; `q`, Esc or Ctrl-C quits.
//! - Otherwise (a pipe, a file): one plain line per server per interval.
//! - With `--json`: one snapshot object (rates and p99 over one interval), then it exits.
//!
//! It always ends by itself when the system stops, and after `--iterations N` refreshes or
//! `--timeout` if given.
//!
//! [`Sampler`], [`draw`] and [`Inline`] are shared with `txipc demo`, which shows the same table
//! (inline, under its own header line) while its clients run.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use txipc_core::latency::{Histogram, human_ns};
use txipc_core::proto::{ServerInfo, SystemStatus};
use txipc_runtime::client::System;

use crate::control::{human_duration, log_path, server_json, tail_lines};
use crate::out::Report;

/// Arguments of `txipc top`.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Time between refreshes: `500ms`, `2s`, ...
    #[arg(long, short, default_value = "1s", value_parser = crate::parse_duration)]
    pub interval: Duration,
    /// Stop after this many refreshes (default: until `q`, Ctrl-C or the system stops).
    #[arg(long, short = 'n')]
    pub iterations: Option<u64>,
}

/// One server over one interval.
#[derive(Debug, Clone)]
pub struct Row {
    /// What the kernel said about it.
    pub info: ServerInfo,
    /// Calls per second over the interval.
    pub calls_per_sec: f64,
    /// Service times of the calls timed during the interval.
    pub window: Histogram,
}

impl Row {
    /// The interval's p99 in words, `-` when no call was timed in it.
    pub fn p99_words(&self) -> String {
        self.window.quantile_ns(0.99).map_or("-".into(), human_ns)
    }
}

/// One refresh: the status and, per server, what changed since the previous one.
pub struct Sample {
    /// The kernel's answer.
    pub status: SystemStatus,
    /// One per server of `status`, in its order.
    pub rows: Vec<Row>,
}

/// Turns successive statuses into rates and interval percentiles.
#[derive(Default)]
pub struct Sampler {
    service: Option<String>,
    last: Option<(Instant, Vec<ServerInfo>)>,
}

impl Sampler {
    /// A sampler showing only `service` if given.
    pub fn new(service: Option<&str>) -> Sampler {
        Sampler {
            service: service.map(str::to_owned),
            last: None,
        }
    }

    /// Asks `sys` for its status and returns the interval since the previous sample (the first
    /// one: since boot for the histogram, no rate).
    pub fn sample(&mut self, sys: &System) -> Result<Sample> {
        let status = sys.status()?;
        Ok(self.feed(status, Instant::now()))
    }

    fn feed(&mut self, mut status: SystemStatus, now: Instant) -> Sample {
        if let Some(name) = &self.service {
            status.servers.retain(|s| &s.name == name);
        }
        let rows = status
            .servers
            .iter()
            .map(|s| {
                let prev = self
                    .last
                    .as_ref()
                    .and_then(|(t, l)| Some((*t, l.iter().find(|p| p.name == s.name)?)));
                let (calls_per_sec, window) = match prev {
                    Some((t, p)) => {
                        let dt = now.duration_since(t).as_secs_f64().max(1e-6);
                        (
                            s.calls.saturating_sub(p.calls) as f64 / dt,
                            s.latency.since(&p.latency),
                        )
                    }
                    None => (0.0, s.latency.clone()),
                };
                Row {
                    info: s.clone(),
                    calls_per_sec,
                    window,
                }
            })
            .collect();
        self.last = Some((now, status.servers.clone()));
        Sample { status, rows }
    }
}

/// Runs `txipc top`.
pub fn run(
    system: &str,
    service: Option<&str>,
    timeout: Option<Duration>,
    json: bool,
    quiet: bool,
    args: TopArgs,
) -> Result<Option<Report>> {
    let sys = crate::control::connect(system, timeout)?;
    let mut sampler = Sampler::new(service);
    let first = sampler.sample(&sys)?;
    if let Some(name) = service
        && first.status.servers.is_empty()
    {
        return Err(txipc_runtime::client::ClientError::Refused {
            kind: txipc_core::proto::ErrorKind::UnknownService,
            message: format!("system `{system}` has no server `{name}` (see `txipc ps`)"),
        }
        .into());
    }
    if json {
        std::thread::sleep(args.interval);
        let s = sampler.sample(&sys)?;
        let up = s.status.uptime_ms;
        let servers: Vec<serde_json::Value> = s
            .rows
            .iter()
            .map(|r| {
                let mut v = server_json(&r.info, up);
                v["calls_per_sec"] = json!(r.calls_per_sec);
                v["interval_p99_us"] = json!(r.window.quantile_ns(0.99).map(|n| n as f64 / 1e3));
                v["interval_timed_calls"] = json!(r.window.total());
                v
            })
            .collect();
        return Ok(Some(Report::new(
            json!({"ok": true, "system": system, "kernel_pid": s.status.kernel_pid,
                   "uptime_s": up as f64 / 1000.0, "interval_s": args.interval.as_secs_f64(),
                   "servers": servers, "log": recent_log(system, 5)}),
            "",
        )));
    }
    let end = timeout.map(|t| Instant::now() + t);
    if std::io::stdout().is_terminal() {
        live(system, &sys, &mut sampler, &args, end)?;
    } else {
        plain(system, &sys, &mut sampler, &args, end, quiet)?;
    }
    Ok(None)
}

/// The last `n` lines of the system's log (empty if it keeps none).
pub fn recent_log(system: &str, n: usize) -> Vec<String> {
    tail_lines(&log_path(system), n).unwrap_or_default()
}

/// The cause of the last fault, with how long ago.
fn fault_words(s: &ServerInfo, uptime_ms: u64) -> String {
    match (&s.held_reason, &s.last_fault) {
        (Some(why), _) => format!("{}: {why}", s.state),
        (None, Some(f)) => format!(
            "{} ago: {}",
            human_duration(uptime_ms.saturating_sub(f.at_ms) as f64 / 1000.0),
            f.cause
        ),
        (None, None) => "-".into(),
    }
}

fn recovery_words(s: &ServerInfo) -> String {
    s.last_recovery_us
        .map_or("-".into(), |us| format!("{us:.0} µs"))
}

/// One plain line for a server (`top` piped, the demo's progress when not on a terminal).
pub fn plain_line(r: &Row, uptime_ms: u64) -> String {
    let s = &r.info;
    format!(
        "{} {} gen {} pid {} calls/s {:.0} p99 {} faults {} recoveries {} retried {} aborted {} last-recovery {} last-fault {}",
        s.name,
        s.state,
        s.generation,
        s.pid,
        r.calls_per_sec,
        r.p99_words(),
        s.faults,
        s.restarts,
        s.retried_requests,
        s.aborted_requests,
        recovery_words(s),
        fault_words(s, uptime_ms)
    )
}

/// Plain lines, one per server per refresh.
fn plain(
    system: &str,
    sys: &System,
    sampler: &mut Sampler,
    args: &TopArgs,
    end: Option<Instant>,
    quiet: bool,
) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    loop {
        std::thread::sleep(args.interval);
        let Ok(s) = sampler.sample(sys) else {
            crate::say!(quiet, "txipc top: system `{system}` stopped");
            return Ok(());
        };
        let t = s.status.uptime_ms as f64 / 1000.0;
        for r in &s.rows {
            writeln!(out, "[{t:>8.1}s] {}", plain_line(r, s.status.uptime_ms))
                .context("writing to stdout")?;
        }
        out.flush()?;
        n += 1;
        if args.iterations.is_some_and(|max| n >= max) || end.is_some_and(|e| Instant::now() >= e) {
            return Ok(());
        }
    }
}

/// The full-screen view.
fn live(
    system: &str,
    sys: &System,
    sampler: &mut Sampler,
    args: &TopArgs,
    end: Option<Instant>,
) -> Result<()> {
    let mut terminal = ratatui::init();
    let result = live_loop(&mut terminal, system, sys, sampler, args, end);
    ratatui::restore();
    if let Some(msg) = result? {
        eprintln!("txipc top: {msg}");
    }
    Ok(())
}

/// Runs the view until a quit key, the end of the system, or the bound; returns why it ended
/// if that is worth saying.
fn live_loop(
    terminal: &mut ratatui::DefaultTerminal,
    system: &str,
    sys: &System,
    sampler: &mut Sampler,
    args: &TopArgs,
    end: Option<Instant>,
) -> Result<Option<String>> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut n = 0u64;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            let Ok(s) = sampler.sample(sys) else {
                return Ok(Some(format!("system `{system}` stopped")));
            };
            n += 1;
            next = Instant::now() + args.interval;
            let logs = recent_log(system, 8);
            let head = format!(
                "txipc top — system `{system}`, kernel pid {}, up {} — every {:?} — q quits",
                s.status.kernel_pid,
                human_duration(s.status.uptime_ms as f64 / 1000.0),
                args.interval
            );
            terminal.draw(|f| draw(f, &[head], &s, &logs))?;
            if args.iterations.is_some_and(|max| n >= max) {
                return Ok(None);
            }
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            return Ok(None);
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if event::poll(wait)?
            && let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                return Ok(None);
            }
        }
    }
}

/// Lines [`draw`] needs for `servers` servers, `head` header lines and `logs` log lines.
pub fn height(head: usize, servers: usize, logs: usize) -> u16 {
    (head + servers + 3 + logs + 2) as u16
}

/// Draws the header lines, the per-server table and the recent log (`top` and the demo).
pub fn draw(f: &mut ratatui::Frame<'_>, head: &[String], s: &Sample, logs: &[String]) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Borders, Paragraph, Row as TRow, Table};
    let [top, body, log] = Layout::vertical([
        Constraint::Length(head.len() as u16),
        Constraint::Length(s.rows.len() as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(head.join("\n")), top);
    let header = TRow::new([
        "SERVER",
        "STATE",
        "GEN",
        "PID",
        "CALLS/S",
        "P99",
        "FAULTS",
        "RECOVERIES",
        "RETRIED",
        "ABORTED",
        "LAST-RECOV",
        "LAST FAULT",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = s.rows.iter().map(|r| {
        let srv = &r.info;
        TRow::new([
            srv.name.clone(),
            srv.state.clone(),
            srv.generation.to_string(),
            srv.pid.to_string(),
            format!("{:.0}", r.calls_per_sec),
            r.p99_words(),
            srv.faults.to_string(),
            srv.restarts.to_string(),
            srv.retried_requests.to_string(),
            srv.aborted_requests.to_string(),
            recovery_words(srv),
            fault_words(srv, s.status.uptime_ms),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Min(20),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title("servers")),
        body,
    );
    let text = if logs.is_empty() {
        "(no log lines yet)".to_string()
    } else {
        logs.join("\n")
    };
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title("log")),
        log,
    );
}

/// The view drawn inline on a terminal (not full screen): it refreshes in place, and what it
/// showed last stays above what is printed after it (the demo's verdict). Ctrl-C keeps its
/// usual meaning (no raw mode).
pub struct Inline {
    terminal: ratatui::Terminal<ratatui::backend::CrosstermBackend<std::io::Stdout>>,
    /// Where the last frame was drawn.
    area: Option<ratatui::layout::Rect>,
}

impl Inline {
    /// An inline view `lines` high at the cursor, if stdout is a terminal.
    pub fn on_terminal(lines: u16) -> Option<Inline> {
        if !std::io::stdout().is_terminal() {
            return None;
        }
        let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
        let terminal = ratatui::Terminal::with_options(
            backend,
            ratatui::TerminalOptions {
                viewport: ratatui::Viewport::Inline(lines),
            },
        )
        .ok()?;
        Some(Inline {
            terminal,
            area: None,
        })
    }

    /// Redraws it.
    pub fn show(&mut self, head: &[String], s: &Sample, logs: &[String]) -> Result<()> {
        let mut area = None;
        self.terminal.draw(|f| {
            area = Some(f.area());
            draw(f, head, s, logs);
        })?;
        self.area = area;
        Ok(())
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        // What follows goes below the view, which stays on the screen.
        if let Some(a) = self.area {
            let bottom = a.bottom().saturating_sub(1);
            let _ = self.terminal.set_cursor_position((0, bottom));
        }
        let _ = self.terminal.show_cursor();
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txipc_core::latency::{BUCKETS, bucket};

    fn info(name: &str, calls: u64, lat: &[(u64, u64)]) -> ServerInfo {
        let mut counts = vec![0; BUCKETS];
        for &(ns, n) in lat {
            counts[bucket(ns)] += n;
        }
        ServerInfo {
            name: name.into(),
            pid: 1,
            generation: 1,
            policy: txipc_core::manifest::Policy::Txipc,
            tracking: txipc_core::manifest::Tracking::Typed,
            state: "running".into(),
            restarts: 0,
            aborted_requests: 0,
            retried_requests: 0,
            calls,
            channels: 0,
            last_recovery_us: None,
            standby_pid: 0,
            zygote_pid: 0,
            last_fault: None,
            last_recovery_at_ms: None,
            held_reason: None,
            companion: None,
            prepared: false,
            in_call: false,
            latency: Histogram { counts },
            faults: 0,
            last_recovery_steps: None,
            spare_armed: false,
        }
    }

    fn status(servers: Vec<ServerInfo>) -> SystemStatus {
        SystemStatus {
            system: "t".into(),
            kernel_pid: 1,
            uptime_ms: 1000,
            servers,
        }
    }

    #[test]
    fn rates_and_p99_come_from_the_interval_only() {
        let mut s = Sampler::new(None);
        let t0 = Instant::now();
        // Before the interval: slow calls (10 ms). During it: fast ones (1 µs) only.
        s.feed(status(vec![info("kv", 100, &[(10_000_000, 100)])]), t0);
        let b = s.feed(
            status(vec![info("kv", 1100, &[(10_000_000, 100), (1_000, 1000)])]),
            t0 + Duration::from_secs(2),
        );
        let r = &b.rows[0];
        assert!(
            (r.calls_per_sec - 500.0).abs() < 1e-6,
            "{}",
            r.calls_per_sec
        );
        let p99 = r.window.quantile_ns(0.99).unwrap();
        assert!((1_000..1_250).contains(&p99), "{p99}");
        assert!(
            plain_line(r, 1000).contains(" p99 1.0 µs "),
            "{}",
            plain_line(r, 1000)
        );
        // Nothing timed in the next interval: no p99, not the lifetime one.
        let c = s.feed(
            status(vec![info("kv", 1100, &[(10_000_000, 100), (1_000, 1000)])]),
            t0 + Duration::from_secs(3),
        );
        assert_eq!(c.rows[0].p99_words(), "-");
    }
}
