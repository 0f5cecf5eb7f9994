//! The `txipc` command: boot a system, call its servers, operate it, benchmark, demo.
//!
//! Conventions (every command):
//! - `--system NAME`, `--service NAME`, `--timeout DURATION`, `--json` and `--quiet` are global:
//!   they may stand anywhere on the command line.
//! - With `--json`, stdout carries exactly one JSON object, errors included (`ok: false`,
//!   `error`, `kind`); tables and progress go to stderr.
//! - Exit codes: 0 ok, 1 error, 2 usage, 3 not found (no such key, system or server).
//! - Faults and policies have one vocabulary ([`txipc_core::vocab`]): `sigkill`, `panic`,
//!   `abort`, `segv`, `hang`, `exit`, ...; `none`, `restart`, `txipc`, `page`.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use txipc_core::manifest::Manifest;
use txipc_runtime::Builtin;

mod bank;
mod bankdemo;
mod control;
mod demo;
mod kvcmd;
mod live;
mod mount;
mod out;
mod runlog;
mod top;
mod values;

use out::{Report, usage};

/// Every server compiled into this binary.
fn builtins() -> Vec<Builtin> {
    let mut v = vec![
        kv_server::BUILTIN,
        kv_server::BUILTIN_CHECKED,
        fs_server::BUILTIN,
    ];
    v.extend(probe_server::BUILTINS);
    v.extend([bank_server::BUILTIN, account_server::BUILTIN]);
    v
}

#[derive(Parser, Debug)]
#[command(
    name = "txipc",
    version,
    about = "A multi-server OS personality whose servers recover from faults without losing state",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found (no such key, system or server).\n\
                  With --json, stdout carries exactly one JSON object, errors included."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every command takes, in any position.
#[derive(Args, Debug, Clone)]
struct Global {
    /// The system to talk to (default `default`); for `run`, the name of the system it boots
    /// (default: the manifest's `name`).
    #[arg(long, global = true, value_name = "NAME")]
    system: Option<String>,
    /// The server a command addresses (`kv`: default `kv`; `ps`, `top`: only this one).
    #[arg(long, global = true, value_name = "SERVER")]
    service: Option<String>,
    /// Give up on a call or a wait after this long: `500ms`, `5s`, `2m` (a bare number is
    /// seconds).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print exactly one JSON object on stdout (errors included); tables go to stderr.
    #[arg(long, global = true)]
    json: bool,
    /// No progress lines or event logs.
    #[arg(long, short, global = true)]
    quiet: bool,
}

impl Global {
    fn system(&self) -> &str {
        self.system.as_deref().unwrap_or("default")
    }

    /// The server a command names: its argument, else `--service`.
    fn server(&self, arg: Option<String>, cmd: &str) -> Result<String> {
        arg.or_else(|| self.service.clone())
            .ok_or_else(|| usage(format!("name the server: `txipc {cmd} SERVER`")))
    }
}

/// `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 500ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit `{other}`: use ms, s, m or h")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(format!("`{s}`: a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot a system from a manifest (the built-in default when none is given; `-` reads it
    /// from standard input) and serve until SIGINT/SIGTERM or `txipc stop`. Its log is also
    /// kept in the runtime directory, after it stops too (`txipc logs`).
    Run {
        /// Manifest file (TOML), or `-` for standard input.
        manifest: Option<PathBuf>,
        /// Run in the background: return once every server serves (or with the boot's error),
        /// leaving the system running until `txipc stop`. Its log is `txipc logs`.
        #[arg(long, short)]
        detach: bool,
        /// Exit (taking every server with it) when the parent process dies. Used by programs
        /// that boot a private system (tests, benchmarks, the demo).
        #[arg(long, hide = true)]
        die_with_parent: bool,
    },
    /// Stop a running system (all its servers; their state goes with the kernel).
    Stop,
    /// This user's running systems.
    Ls,
    /// The servers of a running system, with the kernel's pid and uptime.
    Ps,
    /// Restart a server: a running one is recovered as after a fault (under `txipc` it keeps
    /// its state); a `held` or `dead` one starts again. Needs the operator grant.
    Restart {
        /// The server (default: `--service`).
        server: Option<String>,
    },
    /// Take a `held` or `dead` server out of that state (says why it was held) and start it
    /// again. Needs the operator grant.
    Release {
        /// The server (default: `--service`).
        server: Option<String>,
    },
    /// Have the kernel send a signal to a server's running incarnation (a demonstration fault:
    /// the kernel recovers the server by its policy). Needs the operator grant.
    Kill {
        /// The server (default: `--service`).
        server: Option<String>,
        /// The signal: KILL, SEGV, ABRT, TERM, ... or a number.
        #[arg(long, short, default_value = "KILL")]
        signal: String,
    },
    /// A live view of a running system: per server state, calls/s, restarts, the last fault;
    /// the recent log. Full screen on a terminal (`q` quits), plain lines otherwise.
    Top(top::TopArgs),
    /// The log of a system (kernel events, recoveries, servers' messages), running or stopped
    /// (the logs of the newest stopped systems are kept; `txipc ls` lists them).
    Logs {
        /// How many of the last lines to print.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines until the system stops (or `--timeout` passes).
        #[arg(long, short)]
        follow: bool,
    },
    /// Call the kv server of a running system.
    Kv(kvcmd::KvArgs),
    /// Check a manifest file, or print the built-in default one.
    Manifest {
        #[command(subcommand)]
        what: ManifestCmd,
    },
    /// Benchmarks (numbers are ratios against baselines measured in the same run).
    Bench {
        #[command(subcommand)]
        what: txipc_bench::cli::BenchCmd,
    },
    /// Mount the fs service through FUSE and serve it in the foreground (until SIGINT/SIGTERM,
    /// an unmount, or the end of the system).
    Mount(mount::MountArgs),
    /// Boot the default system, run clients, inject faults live, verify the state at the end.
    Demo(demo::DemoArgs),
    /// Shell completions for bash, zsh, fish, elvish or powershell, from this command's own
    /// definition (e.g. `txipc completions bash > /etc/bash_completion.d/txipc`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The manual page (roff), from this command's own definition (`txipc man | man -l -`).
    Man,
    /// Call the bank example (a `bank` server and its account servers).
    Bank(bank::BankArgs),
    /// A fault-injection campaign with an oracle, under every policy (`--fault`, `--policy`,
    /// `--runs`, `--seed`; `--replay SEED` reruns one run).
    Inject(txipc_bench::inject::InjectArgs),
    /// Internal: one demo client process (started by `txipc demo`).
    #[command(name = "__client", hide = true)]
    Client(demo::ClientArgs),
    /// Internal: one bank demo client process (started by `txipc demo --workload bank`).
    #[command(name = "__bank-client", hide = true)]
    BankClient(bankdemo::BankClientArgs),
    /// Internal: the zygote of a server (started by the kernel).
    #[command(name = "__zygote", hide = true)]
    Zygote,
}

#[derive(Subcommand, Debug)]
enum ManifestCmd {
    /// Parse and validate FILE (`-`: standard input); the error names the field and what to do.
    Check {
        /// The manifest (TOML).
        file: PathBuf,
    },
    /// Print the built-in default manifest (a starting point for your own).
    Default,
}

/// Whether `--json` appears among the arguments (before a `--`), for errors raised before or
/// during parsing.
fn json_in_args() -> bool {
    std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

fn main() {
    // The zygote path first: it must not pay for anything else.
    if std::env::args().nth(1).as_deref() == Some("__zygote") {
        txipc_runtime::zygote_main_with(
            &builtins(),
            &[
                kv_plain::builtin(),
                kv_plain::faulty_builtin(),
                bank_server::plain::builtin(),
                bank_server::plain::faulty_builtin(),
                account_server::plain::builtin(),
            ],
        );
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion) || !json_in_args() {
                e.exit();
            }
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let msg = first.strip_prefix("error: ").unwrap_or(first);
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": msg, "kind": "usage", "detail": text})
            );
            std::process::exit(2);
        }
    };
    let json = cli.global.json;
    match dispatch(cli) {
        Ok(Some(report)) => out::show(&report, json),
        Ok(None) => {}
        Err(e) => std::process::exit(out::fail(&e, json)),
    }
}

/// Runs a command. `None`: the command printed its own output (streams, benches).
fn dispatch(cli: Cli) -> Result<Option<Report>> {
    let g = cli.global;
    match cli.cmd {
        Cmd::Run {
            manifest,
            detach: true,
            ..
        } => detach(manifest, g.system.clone(), g.timeout).map(Some),
        Cmd::Run {
            manifest,
            die_with_parent,
            ..
        } => {
            if die_with_parent {
                txipc_sys::process::die_with_parent(txipc_sys::process::getppid())?;
            }
            run(manifest, g.system.clone(), g.quiet)?;
            Ok(None)
        }
        Cmd::Stop => control::stop(g.system(), g.timeout).map(Some),
        Cmd::Ls => control::ls().map(Some),
        Cmd::Ps => control::ps(g.system(), g.service.as_deref(), g.timeout).map(Some),
        Cmd::Restart { server } => {
            control::restart(g.system(), &g.server(server, "restart")?, g.timeout).map(Some)
        }
        Cmd::Release { server } => {
            control::release(g.system(), &g.server(server, "release")?, g.timeout).map(Some)
        }
        Cmd::Kill { server, signal } => {
            control::kill(g.system(), &g.server(server, "kill")?, &signal, g.timeout).map(Some)
        }
        Cmd::Top(args) => top::run(
            g.system(),
            g.service.as_deref(),
            g.timeout,
            g.json,
            g.quiet,
            args,
        ),
        Cmd::Logs { lines, follow } => {
            control::logs(g.system(), lines, follow, g.json, g.timeout).map(Some)
        }
        Cmd::Kv(args) => kvcmd::run(
            g.system(),
            g.service.as_deref().unwrap_or("kv"),
            g.timeout,
            g.json,
            args,
        )
        .map(Some),
        Cmd::Manifest { what } => manifest_cmd(what).map(Some),
        Cmd::Bench { what } => {
            let exe = std::env::current_exe().context("locating the txipc binary")?;
            txipc_bench::cli::run(&exe, what, g.json)?;
            Ok(None)
        }
        Cmd::Demo(args) => demo::run(args, &g.demo()).map(Some),
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "txipc", &mut script);
            let script = String::from_utf8_lossy(&script).into_owned();
            Ok(Some(Report::new(
                serde_json::json!({"ok": true, "shell": shell.to_string(), "script": script}),
                script,
            )))
        }
        Cmd::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .context("writing the manual page")?;
            let page = String::from_utf8_lossy(&page).into_owned();
            Ok(Some(Report::new(
                serde_json::json!({"ok": true, "man": page}),
                page,
            )))
        }
        Cmd::Client(args) => {
            demo::client_main(args, g.system())?;
            Ok(None)
        }
        Cmd::Mount(args) => mount::run(
            args,
            g.system(),
            g.service.as_deref().unwrap_or("fs"),
            g.quiet,
            g.json,
        )
        .map(Some),
        Cmd::Bank(args) => bank::run(
            g.system(),
            g.service.as_deref().unwrap_or("bank"),
            g.timeout,
            args,
        )
        .map(Some),
        Cmd::BankClient(args) => {
            bankdemo::client_main(args, g.system())?;
            Ok(None)
        }
        Cmd::Inject(args) => {
            let exe = std::env::current_exe().context("locating the txipc binary")?;
            txipc_bench::inject::run(&exe, args, g.json, g.quiet)?;
            Ok(None)
        }
        Cmd::Zygote => unreachable!("handled before parsing"),
    }
}

impl Global {
    fn demo(&self) -> demo::Common {
        demo::Common {
            system: self.system.clone(),
            quiet: self.quiet,
            json: self.json,
        }
    }
}

fn read_manifest_text(path: &std::path::Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the manifest from standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            out::Failed {
                kind: out::Kind::NotFound,
                message: format!("reading the manifest {}: {e}", path.display()),
                json: serde_json::json!({"file": path}),
                text: String::new(),
            }
            .into()
        })
    }
}

fn load_manifest(path: Option<PathBuf>) -> Result<Manifest> {
    match path {
        None => Ok(Manifest::default_system()),
        Some(p) => Ok(Manifest::parse(&read_manifest_text(&p)?)?),
    }
}

fn manifest_cmd(what: ManifestCmd) -> Result<Report> {
    match what {
        ManifestCmd::Default => {
            let text = txipc_core::manifest::DEFAULT_MANIFEST;
            Ok(Report::new(
                serde_json::json!({"ok": true, "manifest": text}),
                text,
            ))
        }
        ManifestCmd::Check { file } => {
            let m = Manifest::parse(&read_manifest_text(&file)?)
                .with_context(|| file.display().to_string())?;
            let servers: Vec<serde_json::Value> = m
                .servers
                .iter()
                .map(|s| {
                    serde_json::json!({"name": s.name, "policy": s.policy.as_str(),
                        "tracking": format!("{:?}", s.tracking).to_lowercase(), "heap_mb": s.heap_mb})
                })
                .collect();
            let names: Vec<String> = m
                .servers
                .iter()
                .map(|s| format!("{} ({})", s.name, s.policy.as_str()))
                .collect();
            Ok(Report::new(
                serde_json::json!({"ok": true, "name": m.name, "servers": servers,
                                   "grants": m.grants.len()}),
                format!(
                    "{}: system `{}` is valid: {} server(s): {}; {} grant(s)",
                    file.display(),
                    m.name,
                    m.servers.len(),
                    names.join(", "),
                    m.grants.len()
                ),
            ))
        }
    }
}

/// `txipc run --detach`: checks the manifest here, then starts `txipc run -` in its own
/// process group (so the terminal's Ctrl-C does not reach it) and waits until its kernel
/// answers with every server serving, or until it exits (its error is shown).
fn detach(
    manifest: Option<PathBuf>,
    system: Option<String>,
    timeout: Option<Duration>,
) -> Result<Report> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let text = match &manifest {
        None => txipc_core::manifest::DEFAULT_MANIFEST.to_string(),
        Some(p) => read_manifest_text(p)?,
    };
    let m = Manifest::parse(&text)?;
    let system = system.unwrap_or_else(|| m.name.clone());
    if !txipc_core::paths::valid_system_name(&system) {
        return Err(usage(format!(
            "system name `{system}` is not valid: use 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    if control::kernel_of(&system).is_ok() {
        anyhow::bail!(
            "a system named `{system}` is already running: stop it first (`txipc stop --system {system}`), or pick another --system name"
        );
    }
    let exe = std::env::current_exe().context("locating the txipc binary")?;
    let mut child = std::process::Command::new(&exe)
        .args(["run", "-", "--system", &system])
        .process_group(0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the kernel")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .context("handing the manifest to the kernel")?;
    // Collect what it says until it is up; if it exits first, that is the error.
    let mut err = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut buf);
        let _ = tx.send(buf);
    });
    let wait = timeout.unwrap_or(Duration::from_secs(30));
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let said = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
            anyhow::bail!(
                "system `{system}` did not start ({status}): {}",
                String::from_utf8_lossy(&said).trim()
            );
        }
        let up = txipc_runtime::client::System::connect(&system)
            .and_then(|s| s.status())
            .ok()
            .filter(|st| st.servers.iter().all(|s| s.state == "running"));
        if let Some(st) = up {
            let names: Vec<&str> = st.servers.iter().map(|s| s.name.as_str()).collect();
            return Ok(Report::new(
                serde_json::json!({"ok": true, "system": system, "kernel_pid": st.kernel_pid,
                                   "servers": names, "log": control::log_path(&system)}),
                format!(
                    "system `{system}` is running in the background (kernel pid {}): {}. `txipc logs` shows its log, `txipc stop` stops it.",
                    st.kernel_pid,
                    names.join(", ")
                ),
            ));
        }
        if start.elapsed() >= wait {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("system `{system}` was not serving within {wait:?}; it was stopped");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run(manifest: Option<PathBuf>, system: Option<String>, quiet: bool) -> Result<()> {
    let manifest = load_manifest(manifest)?;
    let system = system.unwrap_or_else(|| manifest.name.clone());
    if !txipc_core::paths::valid_system_name(&system) {
        return Err(usage(format!(
            "system name `{system}` is not valid: use 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    let names: Vec<String> = manifest
        .servers
        .iter()
        .map(|s| format!("{} ({})", s.name, s.policy.as_str()))
        .collect();
    // Every system keeps its log in the runtime directory (`txipc logs`; `--quiet` only keeps
    // it off the terminal). It starts before the boot so that the servers' zygotes inherit it
    // too, unless a system of that name already answers (the kernel will refuse to boot; that
    // system's log must not be clobbered).
    let log = if control::kernel_of(&system).is_ok() {
        None
    } else {
        match runlog::RunLog::start(&system, !quiet) {
            Ok(log) => Some(log),
            Err(e) => {
                crate::say!(quiet, "txipc: system `{system}` keeps no log: {e}");
                None
            }
        }
    };
    let opts = txipc_kernel::Options {
        exe: std::env::current_exe().context("locating the txipc binary")?,
        system: system.clone(),
        verbose: !quiet || log.is_some(),
    };
    let mut served = false;
    let result = txipc_kernel::run(manifest, opts, |path| {
        served = true;
        // The first line on stdout is the readiness signal (SystemProcess waits for it).
        println!("ready {}", path.display());
        if quiet {
            return;
        }
        // In a terminal's foreground, Ctrl-C stops it too (not when detached).
        let ctrl_c = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            " (or Ctrl-C here)"
        } else {
            ""
        };
        eprintln!(
            "txipc: system `{system}` is running: {}. Try `txipc kv put a 1`, `txipc ps`; `txipc stop`{ctrl_c} stops it.",
            names.join(", ")
        );
    });
    if let Some(log) = log {
        match &result {
            // A boot that failed ran nothing: its error is on stderr, the log goes.
            _ if !served => log.discard(),
            Ok(()) => log.finish(""),
            Err(e) => log.finish(&format!(" with an error ({e})")),
        }
    }
    result?;
    Ok(())
}
