//! The log of a system started by `txipc run`: everything the kernel and its servers write to
//! stderr goes to the terminal as before and, while the system runs, to
//! `RUNTIME_DIR/NAME.log` (what `txipc logs` and `txipc top` read).
//!
//! Stderr (fd 2) is replaced by a pipe; a thread copies the pipe to the original stderr and to
//! the file. The servers' zygotes inherit fd 2, so their messages (panic texts) land there too.
//! The file is bounded: past [`MAX_LOG`] bytes it starts again from empty. It is removed when
//! the system stops.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest log file; past it the file starts again from empty.
pub const MAX_LOG: u64 = 4 << 20;

/// A running tee of stderr into the log file.
#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    original: OwnedFd,
    done: std::sync::mpsc::Receiver<()>,
}

impl RunLog {
    /// Creates the log file and routes stderr through it.
    pub fn start(path: &Path) -> std::io::Result<RunLog> {
        if let Some(dir) = path.parent() {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        let original = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 3)?;
        let mut term = File::from(rustix::io::fcntl_dupfd_cloexec(&original, 3)?);
        let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        rustix::stdio::dup2_stderr(&wr)?;
        drop(wr);
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut rd = File::from(rd);
            let mut buf = [0u8; 8192];
            let mut written = 0u64;
            loop {
                let n = match rd.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let _ = term.write_all(&buf[..n]);
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
        Ok(RunLog {
            path: path.to_owned(),
            original,
            done,
        })
    }

    /// Puts stderr back, waits (bounded) for the copy to drain, and removes the file.
    pub fn finish(self) {
        let _ = rustix::stdio::dup2_stderr(&self.original);
        let _ = self.done.recv_timeout(Duration::from_secs(2));
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            // The kernel removes the runtime directory when it is empty; the log kept it.
            let _ = std::fs::remove_dir(dir);
        }
    }
}
