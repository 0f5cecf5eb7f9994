//! `txipc mount DIR`: the fs service through FUSE, in the foreground.
//!
//! The process the user starts is a supervisor (`fs_fuse::supervise`): the front end proper
//! runs as its child (`txipc mount --worker`, hidden), and a worker that dies is replaced at
//! once by a successor that adopts the connection the txipc kernel kept, so programs doing
//! I/O on the mount never see the death.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;

use crate::out::Report;

/// Arguments of `txipc mount`.
#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The directory to mount on (it must exist).
    pub dir: PathBuf,
    /// Threads reading FUSE requests (requests served at once).
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Internal: run as the front-end worker of the supervisor with this pid.
    #[arg(long, hide = true, value_name = "SUPERVISOR_PID")]
    pub worker: Option<i32>,
    /// Internal: as a worker, wait on stdin (a standby) before adopting the connection.
    #[arg(long, hide = true, requires = "worker")]
    pub standby: bool,
}

/// Mounts service `service` (the global `--service`, default `fs`) of system `system` (the
/// global `--system`), serves until SIGINT/SIGTERM, an unmount or the end of the system,
/// unmounts. The front end that serves is a supervised worker, replaced whenever it dies.
///
/// Output: without `--json`, the first line on stdout is `ready DIR` once it serves (the
/// readiness signal for scripts and tests). With `--json`, stdout carries only the one JSON
/// object of the end (`ok`, `mountpoint`, `ended`, `respawns`) or the error's; `ready DIR` goes
/// to stderr then.
pub fn run(
    args: MountArgs,
    system: &str,
    service: &str,
    quiet: bool,
    json: bool,
) -> Result<Report> {
    if let Some(parent) = args.worker {
        worker(args, parent, system, service, quiet)?;
        return Ok(Report::new(json!({"ok": true}), ""));
    }
    // Said here, once: the worker's own error would reach only its stderr. A FUSE mount
    // point is not looked at: its front end may be dead (this command is to adopt it), and a
    // stat would wait for the front end that only this command can start.
    if !fs_fuse::is_fuse_mount(&args.dir) && !args.dir.is_dir() {
        return Err(crate::out::Failed {
            kind: crate::out::Kind::NotFound,
            message: format!(
                "{} is not a directory: create it first (`mkdir -p {}`)",
                args.dir.display(),
                args.dir.display()
            ),
            json: json!({"mountpoint": args.dir}),
            text: String::new(),
        }
        .into());
    }
    let exe = std::env::current_exe().context("finding the txipc executable")?;
    let dir = fs_fuse::mount_path(&args.dir);
    let me = std::process::id().to_string();
    let command = |role: fs_fuse::Role| {
        let mut c = Command::new(&exe);
        c.args([
            "mount",
            "--worker",
            &me,
            "--system",
            system,
            "--service",
            service,
        ]);
        c.arg("--threads").arg(args.threads.to_string());
        if role == fs_fuse::Role::Standby {
            c.arg("--standby");
        }
        if quiet {
            c.arg("--quiet");
        }
        c.arg(&dir);
        c
    };
    let mut respawns = 0u64;
    let on = |e: fs_fuse::Event| match e {
        // The first line on stdout is the readiness signal for scripts and tests (on stderr
        // under --json, where stdout is the one object of the end).
        fs_fuse::Event::Ready if json => eprintln!("ready {}", args.dir.display()),
        fs_fuse::Event::Ready => println!("ready {}", args.dir.display()),
        fs_fuse::Event::Respawn {
            dead,
            status,
            successor,
        } => {
            respawns += 1;
            crate::say!(
                quiet,
                "txipc: the front end (pid {dead}) ended ({status}); its successor (pid {successor}) adopts the mount"
            );
        }
        _ => {}
    };
    let give_up = |why: &str| {
        eprintln!("txipc: {why}; detaching {}", dir.display());
        let _ = fs_fuse::unmount(&dir);
        let _ = txipc_runtime::client::System::connect(system)
            .and_then(|s| s.fuse_forget(&dir.to_string_lossy()));
    };
    let outcome = fs_fuse::supervise(command, on, give_up)?;
    Ok(Report::new(
        json!({"ok": true, "system": system, "service": service, "mountpoint": dir,
        "respawns": respawns, "ended": match outcome {
            fs_fuse::Outcome::Done => "done",
            fs_fuse::Outcome::Signal => "signal",
        }}),
        "",
    ))
}

/// The front end proper: mounts (or adopts), serves, unmounts.
fn worker(args: MountArgs, parent: i32, system: &str, service: &str, quiet: bool) -> Result<()> {
    fs_fuse::follow_parent(parent)?;
    let opts = fs_fuse::MountOptions {
        dir: args.dir,
        system: system.into(),
        service: service.into(),
        threads: args.threads,
        standby: args.standby,
    };
    let mut served = false;
    let ended = fs_fuse::run(&opts, |start| {
        served = true;
        // The supervisor waits for this line.
        println!("ready {}", opts.dir.display());
        if quiet {
            return;
        }
        match start {
            fs_fuse::Start::Mounted => eprintln!(
                "txipc: service `{}` of system `{}` mounted on {}; Ctrl-C (or `umount {}`) unmounts.",
                opts.service,
                opts.system,
                opts.dir.display(),
                opts.dir.display()
            ),
            fs_fuse::Start::Adopted => eprintln!(
                "txipc: {} adopted (requests in flight re-sent)",
                opts.dir.display()
            ),
        }
    })?;
    // A standby told to end before it served has nothing to say.
    if quiet || !served {
        return Ok(());
    }
    eprintln!(
        "txipc: {} unmounted ({})",
        opts.dir.display(),
        match ended {
            fs_fuse::Ended::Signal => "signal",
            fs_fuse::Ended::Unmounted => "unmounted from outside",
            fs_fuse::Ended::SystemStopped => "the system stopped",
        }
    );
    Ok(())
}
