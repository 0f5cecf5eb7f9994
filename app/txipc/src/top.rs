//! `txipc top`: a live view of a running system.
//!
//! Every interval it asks the kernel for the system's status and shows, per server, its state,
//! generation, pid, calls per second (the difference of the kernel's call counter over the
//! interval), restarts, requests re-executed and aborted, the last recovery time and the cause
//! of the last fault; below, the last lines of the system's log.
//!
//! - On a terminal: a full-screen view (ratatui) refreshed in place; `q`, Esc or Ctrl-C quits.
//! - Otherwise (a pipe, a file): one plain line per server per interval.
//! - With `--json`: one snapshot object (rates over one interval), then it exits.
//!
//! It always ends by itself when the system stops, and after `--iterations N` refreshes or
//! `--timeout` if given. The kernel keeps no latency histogram, so no percentile is shown.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
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

/// One refresh: the status and the calls per second since the previous one.
struct Sample {
    status: SystemStatus,
    rates: Vec<f64>,
}

struct Sampler {
    sys: System,
    service: Option<String>,
    last: Option<(Instant, Vec<(String, u64)>)>,
}

impl Sampler {
    fn sample(&mut self) -> Result<Sample> {
        let mut status = self.sys.status()?;
        if let Some(name) = &self.service {
            status.servers.retain(|s| &s.name == name);
        }
        let now = Instant::now();
        let calls: Vec<(String, u64)> = status
            .servers
            .iter()
            .map(|s| (s.name.clone(), s.calls))
            .collect();
        let rates = match &self.last {
            Some((t, prev)) => {
                let dt = now.duration_since(*t).as_secs_f64().max(1e-6);
                calls
                    .iter()
                    .map(|(n, c)| {
                        prev.iter()
                            .find(|(p, _)| p == n)
                            .map_or(0.0, |(_, pc)| c.saturating_sub(*pc) as f64 / dt)
                    })
                    .collect()
            }
            None => vec![0.0; calls.len()],
        };
        self.last = Some((now, calls));
        Ok(Sample { status, rates })
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
    let mut sampler = Sampler {
        sys,
        service: service.map(str::to_owned),
        last: None,
    };
    let first = sampler.sample()?;
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
        let s = sampler.sample()?;
        let up = s.status.uptime_ms;
        let servers: Vec<serde_json::Value> = s
            .status
            .servers
            .iter()
            .zip(&s.rates)
            .map(|(srv, r)| {
                let mut v = server_json(srv, up);
                v["calls_per_sec"] = json!(r);
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
        live(system, &mut sampler, &args, end)?;
    } else {
        plain(system, &mut sampler, &args, end, quiet)?;
    }
    Ok(None)
}

/// The last `n` lines of the system's log (empty if it keeps none).
fn recent_log(system: &str, n: usize) -> Vec<String> {
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

/// Plain lines, one per server per refresh.
fn plain(
    system: &str,
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
        let Ok(s) = sampler.sample() else {
            crate::say!(quiet, "txipc top: system `{system}` stopped");
            return Ok(());
        };
        let t = s.status.uptime_ms as f64 / 1000.0;
        for (srv, rate) in s.status.servers.iter().zip(&s.rates) {
            writeln!(
                out,
                "[{t:>8.1}s] {} {} gen {} pid {} calls/s {:.0} restarts {} retried {} aborted {} last-recovery {} last-fault {}",
                srv.name,
                srv.state,
                srv.generation,
                srv.pid,
                rate,
                srv.restarts,
                srv.retried_requests,
                srv.aborted_requests,
                recovery_words(srv),
                fault_words(srv, s.status.uptime_ms)
            )
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
fn live(system: &str, sampler: &mut Sampler, args: &TopArgs, end: Option<Instant>) -> Result<()> {
    let mut terminal = ratatui::init();
    let result = live_loop(&mut terminal, system, sampler, args, end);
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
    sampler: &mut Sampler,
    args: &TopArgs,
    end: Option<Instant>,
) -> Result<Option<String>> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut n = 0u64;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            let Ok(s) = sampler.sample() else {
                return Ok(Some(format!("system `{system}` stopped")));
            };
            n += 1;
            next = Instant::now() + args.interval;
            let logs = recent_log(system, 8);
            terminal.draw(|f| draw(f, system, &s, &logs, args.interval))?;
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

fn draw(f: &mut ratatui::Frame<'_>, system: &str, s: &Sample, logs: &[String], interval: Duration) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
    let [head, body, log] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(s.status.servers.len() as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(format!(
            "txipc top — system `{system}`, kernel pid {}, up {} — every {:?} — q quits",
            s.status.kernel_pid,
            human_duration(s.status.uptime_ms as f64 / 1000.0),
            interval
        )),
        head,
    );
    let header = Row::new([
        "SERVER",
        "STATE",
        "GEN",
        "PID",
        "CALLS/S",
        "RESTARTS",
        "RETRIED",
        "ABORTED",
        "LAST-RECOV",
        "LAST FAULT",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = s.status.servers.iter().zip(&s.rates).map(|(srv, r)| {
        Row::new([
            srv.name.clone(),
            srv.state.clone(),
            srv.generation.to_string(),
            srv.pid.to_string(),
            format!("{r:.0}"),
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
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Min(20),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title("servers")),
        body,
    );
    let text = if logs.is_empty() {
        "(this system keeps no log: it was started with --quiet or by a test)".to_string()
    } else {
        logs.join("\n")
    };
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title("log")),
        log,
    );
}
