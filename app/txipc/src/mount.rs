//! `txipc mount DIR`: the fs service through FUSE, in the foreground.

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `txipc mount`.
#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The directory to mount on (it must exist).
    pub dir: PathBuf,
    /// Threads reading FUSE requests (requests served at once).
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

/// Mounts service `service` (the global `--service`, default `fs`) of system `system` (the
/// global `--system`), serves until SIGINT/SIGTERM, an unmount or the end of the system,
/// unmounts.
pub fn run(args: MountArgs, system: &str, service: &str, quiet: bool) -> Result<()> {
    let opts = fs_fuse::MountOptions {
        dir: args.dir,
        system: system.into(),
        service: service.into(),
        threads: args.threads,
    };
    let ended = fs_fuse::run(&opts, |start| {
        // The first line on stdout is the readiness signal for scripts and tests.
        println!("ready {}", opts.dir.display());
        if quiet {
            return;
        }
        eprintln!(
            "txipc: service `{}` of system `{}` {} {}; Ctrl-C (or `umount {}`) unmounts.",
            opts.service,
            opts.system,
            match start {
                fs_fuse::Start::Mounted => "mounted on",
                fs_fuse::Start::Adopted => "adopted (requests in flight re-sent) on",
            },
            opts.dir.display(),
            opts.dir.display()
        );
    })?;
    if quiet {
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
