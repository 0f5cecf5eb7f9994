//! Mounting, serving until told to stop, unmounting.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fs_api::FsClient;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};
use txipc_runtime::client::{Channel, System};

use crate::session::{BUFFER_SIZE, Next, Session};

/// What `txipc mount` was asked for.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The directory to mount on.
    pub dir: PathBuf,
    /// The running system.
    pub system: String,
    /// The fs service's name in its manifest.
    pub service: String,
    /// Threads reading the FUSE device (requests in flight at once).
    pub threads: usize,
}

/// Why the mount could not be made or served.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The system or the service could not be reached.
    #[error("reaching service `{service}` of system `{system}`: {detail}")]
    Service {
        /// The system.
        system: String,
        /// The service.
        service: String,
        /// What went wrong.
        detail: String,
    },
    /// The mount point is not usable.
    #[error("{dir}: {detail}")]
    MountPoint {
        /// The directory.
        dir: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// What was attempted.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn sys(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> MountError {
    move |e| MountError::Sys {
        op,
        source: e.into(),
    }
}

/// Why serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// SIGINT or SIGTERM.
    Signal,
    /// The file system was unmounted from outside (`umount`, `fusermount3 -u`).
    Unmounted,
    /// The txipc system stopped.
    SystemStopped,
}

/// Whether `dir` is a mount point of a FUSE file system (from `/proc/self/mountinfo`).
pub fn is_fuse_mount(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|&x| x == "-");
        match (f.get(4), sep.and_then(|s| f.get(s + 1))) {
            (Some(mp), Some(fstype)) => {
                unescape(mp) == dir.to_string_lossy() && fstype.starts_with("fuse")
            }
            _ => false,
        }
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `dir`: normally, or lazily if it is busy (open files keep it alive until closed).
pub fn unmount(dir: &Path) -> Result<(), MountError> {
    match rustix::mount::unmount(dir, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            rustix::mount::unmount(dir, UnmountFlags::DETACH).map_err(sys("umount (lazy)"))
        }
        Err(e) => Err(sys("umount")(e)),
    }
}

/// Opens `/dev/fuse` and mounts it on `dir`; returns the device.
fn mount(dir: &Path) -> Result<OwnedFd, MountError> {
    let meta = std::fs::metadata(dir).map_err(|e| MountError::MountPoint {
        dir: dir.into(),
        detail: format!("{e}: create the directory first"),
    })?;
    if !meta.is_dir() {
        return Err(MountError::MountPoint {
            dir: dir.into(),
            detail: "not a directory".into(),
        });
    }
    if is_fuse_mount(dir) {
        return Err(MountError::MountPoint {
            dir: dir.into(),
            detail: "a FUSE file system is already mounted here: unmount it first (`umount DIR`)"
                .into(),
        });
    }
    let dev = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| MountError::MountPoint {
            dir: dir.into(),
            detail: format!(
                "opening /dev/fuse: {e} (the fuse module must be loaded, and mounting needs root)"
            ),
        })?;
    let data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},allow_other,default_permissions",
        dev.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let data = std::ffi::CString::new(data).expect("no NUL in mount options");
    rustix::mount::mount(
        "txipc",
        dir,
        "fuse.txipc",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .map_err(|e| MountError::MountPoint {
        dir: dir.into(),
        detail: format!("mount: {e} (mounting a FUSE file system without fusermount needs root)"),
    })?;
    Ok(dev)
}

/// Connects to the fs service.
fn connect(opts: &MountOptions) -> Result<(System, FsClient<Channel>), MountError> {
    let err = |detail: String| MountError::Service {
        system: opts.system.clone(),
        service: opts.service.clone(),
        detail,
    };
    let sys = System::connect(&opts.system).map_err(|e| err(e.to_string()))?;
    let ch = sys.open(&opts.service).map_err(|e| err(e.to_string()))?;
    let fs = FsClient::new(ch);
    fs.getattr(fs_api::ROOT_INO)
        .map_err(|e| err(format!("the service does not answer as a file system: {e}")))?;
    Ok((sys, fs))
}

/// Serves requests on `session` with `threads` readers until a stop condition; reports why.
fn serve(
    session: Arc<Session<Channel>>,
    sys: &System,
    threads: usize,
) -> Result<Ended, MountError> {
    // SIGINT/SIGTERM arrive on a signalfd; the mask is inherited by the readers.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().map_err(|e| MountError::Sys {
        op: "sigprocmask",
        source: e.into(),
    })?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| MountError::Sys {
            op: "signalfd",
            source: e.into(),
        })?;

    let (done_tx, done_rx) = mpsc::channel::<Next>();
    for i in 0..threads.max(1) {
        let s = session.clone();
        let done = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("fuse-{i}"))
            .spawn(move || {
                let _ = done.send(reader(&s));
            })
            .map_err(|e| MountError::Sys {
                op: "spawning a reader thread",
                source: e,
            })?;
    }
    drop(done_tx);

    let mut last_check = Instant::now();
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &sigfd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        if let Ok(Some(_)) = sigfd.read_signal() {
            return Ok(Ended::Signal);
        }
        match done_rx.try_recv() {
            Ok(_) | Err(mpsc::TryRecvError::Disconnected) => return Ok(Ended::Unmounted),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if session.system_gone() {
            return Ok(Ended::SystemStopped);
        }
        if last_check.elapsed() > Duration::from_millis(500) {
            last_check = Instant::now();
            if sys.ps().is_err() {
                return Ok(Ended::SystemStopped);
            }
        }
    }
}

/// One reader: requests until the device says the file system is gone.
fn reader(s: &Session<Channel>) -> Next {
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        match rustix::io::read(s.dev().as_fd(), &mut buf) {
            Ok(n) => {
                if s.handle(&buf[..n]) == Next::Destroy {
                    return Next::Destroy;
                }
            }
            // Interrupted, or a request that was interrupted before we read it.
            Err(rustix::io::Errno::INTR | rustix::io::Errno::NOENT | rustix::io::Errno::AGAIN) => {}
            // ENODEV: unmounted (or the connection was aborted).
            Err(_) => return Next::Destroy,
        }
    }
}

/// `txipc mount`: mounts the fs service on `opts.dir` and serves it in the foreground until
/// SIGINT/SIGTERM, an unmount from outside, or the end of the system; then unmounts.
///
/// `ready` is called once the mount is up.
pub fn run(opts: &MountOptions, ready: impl FnOnce()) -> Result<Ended, MountError> {
    let (sys, fs) = connect(opts)?;
    let dev = Arc::new(mount(&opts.dir)?);
    let session = Arc::new(Session::new(dev, fs, 0));
    ready();
    let ended = serve(session, &sys, opts.threads);
    // Whatever happened, the mount goes (it may already be gone: unmounted from outside).
    if is_fuse_mount(&opts.dir) {
        unmount(&opts.dir)?;
    }
    ended
}
