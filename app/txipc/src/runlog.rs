//! The log of every system: everything its kernel and servers write to stderr goes to
//! `RUNTIME_DIR/NAME.log` (`txipc_core::paths::log_path`; what `txipc logs` and `txipc top`
//! read) and, unless the system runs `--quiet`, to the terminal as before.
//!
//! The kernel process (`txipc run`, however it was started: in the foreground, `--detach`, by
//! the demo, a test or a benchmark through `SystemProcess`) replaces its fd 2 by a pipe before
//! booting; a thread copies the pipe to the file and, if asked, to the original stderr. The
//! servers' zygotes inherit fd 2, so their messages (panic texts) land there too. The file is
//! bounded: past [`MAX_LOG`] bytes it starts again from empty.
//!
//! The log outlives the system (post-mortem `txipc logs`): it ends with a line saying when the
//! system stopped, and stays until a system of the same name starts (it starts a new log), the
//! log is pruned (each start keeps the [`KEEP_STOPPED`] newest logs of stopped systems), or the
//! `SystemProcess` of a test or benchmark that booted it is dropped (it removes the log: tests
//! leave no files).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest log file; past it the file starts again from empty.
pub const MAX_LOG: u64 = 4 << 20;

/// Logs of stopped systems kept in the runtime directory (the newest ones).
pub const KEEP_STOPPED: usize = 16;

/// A running tee of stderr into the log file.
#[derive(Debug)]
pub struct RunLog {
    system: String,
    original: OwnedFd,
    done: std::sync::mpsc::Receiver<()>,
}

impl RunLog {
    /// Creates system `system`'s log file (a new one) and routes stderr through it; with
    /// `terminal`, everything is also copied to the original stderr.
    pub fn start(system: &str, terminal: bool) -> std::io::Result<RunLog> {
        let dir = txipc_core::paths::runtime_dir();
        txipc_core::paths::create_runtime_dir(&dir).map_err(std::io::Error::other)?;
        prune(&dir, system);
        let path = txipc_core::paths::log_path(system);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        let original = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 3)?;
        let mut term = if terminal {
            Some(File::from(rustix::io::fcntl_dupfd_cloexec(&original, 3)?))
        } else {
            None
        };
        let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        rustix::stdio::dup2_stderr(&wr)?;
        drop(wr);
        let (tx, done) = std::sync::mpsc::channel();
        // The copying thread must never take a signal: the kernel blocks SIGTERM and SIGINT in
        // its own thread only and reads them from a signalfd, so a thread with them unblocked
        // would be killed by them (and the process with it). It inherits this mask.
        let old = nix::sys::signal::SigSet::all()
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .map_err(std::io::Error::from)?;
        let spawned = std::thread::Builder::new()
            .name("txipc-log".into())
            .spawn(move || {
                let mut rd = File::from(rd);
                let mut buf = [0u8; 8192];
                let mut written = 0u64;
                loop {
                    let n = match rd.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if let Some(t) = &mut term {
                        let _ = t.write_all(&buf[..n]);
                    }
                    if written + n as u64 > MAX_LOG {
                        let _ = file.set_len(0);
                        let _ = std::io::Seek::rewind(&mut file);
                        written = 0;
                    }
                    if file.write_all(&buf[..n]).is_ok() {
                        written += n as u64;
                    }
                }
                let _ = tx.send(());
            });
        let _ = old.thread_set_mask();
        spawned?;
        Ok(RunLog {
            system: system.into(),
            original,
            done,
        })
    }

    /// Says in the log that the system stopped, puts stderr back and waits (bounded) for the
    /// copy to drain. The file stays (post-mortem `txipc logs`).
    pub fn finish(self, how: &str) {
        eprintln!(
            "[txipc] system `{}` stopped{how} at {} (this log stays for `txipc logs --system {}`)",
            self.system,
            unix_time_words(),
            self.system
        );
        let _ = rustix::stdio::dup2_stderr(&self.original);
        let _ = self.done.recv_timeout(Duration::from_secs(2));
    }

    /// Puts stderr back and removes the log (a boot that failed: nothing ran, and the error is
    /// shown on stderr).
    pub fn discard(self) {
        let _ = rustix::stdio::dup2_stderr(&self.original);
        let _ = self.done.recv_timeout(Duration::from_secs(2));
        let _ = std::fs::remove_file(txipc_core::paths::log_path(&self.system));
        // The kernel removes the runtime directory when it is empty; the log kept it.
        let _ = std::fs::remove_dir(txipc_core::paths::runtime_dir());
    }
}

/// `2026-12-01 11:20:03 UTC`.
fn unix_time_words() -> String {
    civil(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Seconds since the epoch as a UTC date and time.
fn civil(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Logs of systems that are not running (no socket), newest first.
pub fn stopped_logs(dir: &Path) -> Vec<(String, PathBuf, std::time::SystemTime)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut logs: Vec<_> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".log")?.to_owned();
            if !txipc_core::paths::valid_system_name(&name)
                || crate::control::kernel_of(&name).is_ok()
            {
                return None;
            }
            let at = e.metadata().ok()?.modified().ok()?;
            Some((name, e.path(), at))
        })
        .collect();
    logs.sort_by_key(|l| std::cmp::Reverse(l.2));
    logs
}

/// Removes the logs of stopped systems beyond the [`KEEP_STOPPED`] newest (and `starting`'s
/// own old log, which the new one replaces).
fn prune(dir: &Path, starting: &str) {
    let logs: Vec<_> = stopped_logs(dir)
        .into_iter()
        .filter(|(n, _, _)| n != starting)
        .collect();
    for (_, path, _) in logs.iter().skip(KEEP_STOPPED) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil() {
        assert_eq!(super::civil(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::civil(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(super::civil(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }
}
