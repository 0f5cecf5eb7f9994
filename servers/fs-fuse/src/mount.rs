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
    /// A standby: connect to the system, then wait for a line on stdin before adopting the
    /// kept connection (end quietly, touching nothing, on SIGINT/SIGTERM or the end of
    /// stdin).
    pub standby: bool,
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
    /// The front-end worker could not serve (it said why on stderr).
    #[error("the front-end worker ended: {status}")]
    Worker {
        /// How it ended.
        status: std::process::ExitStatus,
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

/// The absolute path of mount point `dir` without touching `dir` itself: a FUSE mount whose
/// front end is dead (and not yet replaced) would block a `stat` of it. The parent is
/// resolved (symlinks too), the last component is kept as given.
pub fn mount_path(dir: &Path) -> PathBuf {
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(dir)
    };
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    match (clean.parent(), clean.file_name()) {
        (Some(p), Some(name)) => p.canonicalize().unwrap_or(p.to_path_buf()).join(name),
        _ => clean,
    }
}

/// Whether `dir` is a mount point of a FUSE file system (from `/proc/self/mountinfo`; never
/// touches `dir`).
pub fn is_fuse_mount(dir: &Path) -> bool {
    let dir = mount_path(dir);
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
    // A server that restarted (policy `restart`) or died under the probe (`none`, `restart`
    // while it comes back) still exists: ask again, for a bounded while (the probe only reads).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs.getattr(fs_api::ROOT_INO) {
            Ok(_) => return Ok((sys, fs)),
            Err(txipc_service::Error::Call(
                txipc_service::CallError::Restarted | txipc_service::CallError::Interrupted,
            )) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                return Err(err(format!(
                    "the service does not answer as a file system: {e}"
                )));
            }
        }
    }
}

/// Serves requests on `session` with `threads` readers until a stop condition; reports why.
/// `keep` is called with the negotiated minor once `INIT` has been answered.
fn serve(
    session: Arc<Session<Channel>>,
    sys: &System,
    threads: usize,
    sigfd: SignalFd,
    mut keep: impl FnMut(u32),
) -> Result<Ended, MountError> {
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

    let mut kept_minor = session.minor();
    let mut last_check = Instant::now();
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &sigfd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
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
        if session.minor() != kept_minor {
            kept_minor = session.minor();
            keep(kept_minor);
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

/// A session tag unlikely to repeat (time and pid).
fn new_session_tag() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64).rotate_left(17) ^ u64::from(std::process::id())
}

/// A standby's wait: true when the supervisor's line comes on stdin (adopt now), false on
/// SIGINT/SIGTERM or the end of stdin (the supervisor is gone or stops: end, touching nothing).
fn wait_for_go(sigfd: &SignalFd) -> Result<bool, MountError> {
    let stdin = std::io::stdin();
    loop {
        let mut fds = [
            rustix::event::PollFd::new(sigfd, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&stdin, rustix::event::PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(sys("poll")(e)),
        }
        let input = !fds[1].revents().is_empty();
        if let Ok(Some(_)) = sigfd.read_signal() {
            return Ok(false);
        }
        if input {
            let mut line = String::new();
            return Ok(matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0));
        }
    }
}

/// How this front end got its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// It mounted the file system.
    Mounted,
    /// It adopted the kept connection of a dead front end and had the kernel re-send the
    /// requests that one had not answered.
    Adopted,
}

/// `txipc mount`: mounts the fs service on `opts.dir` (or adopts the connection the kernel
/// kept for it when its previous front end died) and serves it in the foreground until
/// SIGINT/SIGTERM, an unmount from outside, or the end of the system; then unmounts.
///
/// `ready` is called once requests are served.
pub fn run(opts: &MountOptions, ready: impl FnOnce(Start)) -> Result<Ended, MountError> {
    // SIGINT/SIGTERM arrive on a signalfd from the start (a signal before serving still ends
    // in a clean unmount); the mask is inherited by the reader threads.
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
    let (sys, fs) = connect(opts)?;
    if opts.standby && !wait_for_go(&sigfd)? {
        return Ok(Ended::Signal);
    }
    let mp = mount_path(&opts.dir);
    let mps = mp.to_string_lossy().into_owned();
    let sys_err = |what: &str, e: txipc_runtime::client::ClientError| MountError::Service {
        system: opts.system.clone(),
        service: opts.service.clone(),
        detail: format!("{what}: {e}"),
    };

    // A connection kept for this mount point, whose front end died: adopt it.
    let mut adopted = None;
    // A front end that just died may not have been noticed by the kernel yet: ask again for a
    // moment before calling it alive (every millisecond: a standby asks the instant its
    // predecessor dies, and this wait is most of its takeover).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match sys.fuse_adopt(&mps) {
            Ok((kept, fd)) => {
                if is_fuse_mount(&mp) {
                    adopted = Some((kept, fd));
                } else {
                    // Unmounted since (its front end died after the unmount, before forgetting).
                    let _ = sys.fuse_forget(&mps);
                }
            }
            Err(txipc_runtime::client::ClientError::Refused { message, .. })
                if message.contains("is alive") =>
            {
                if Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                return Err(MountError::MountPoint {
                    dir: mp,
                    detail: format!("{message}: stop it first"),
                });
            }
            Err(_) => {}
        }
        break;
    }

    let (session, start) = match adopted {
        Some((kept, fd)) => {
            let s = Arc::new(Session::new(Arc::new(fd), fs, kept.minor, kept.session));
            // Every request the dead front end read and did not answer comes again.
            s.notify_resend().map_err(|e| MountError::Sys {
                op: "FUSE_NOTIFY_RESEND (needs Linux 6.9 or later)",
                source: e,
            })?;
            (s, Start::Adopted)
        }
        None => {
            let dev = mount(&mp)?;
            let tag = new_session_tag();
            if let Err(e) = sys.fuse_keep(&mps, 0, tag, Some(dev.as_fd())) {
                eprintln!(
                    "txipc: warning: the kernel does not keep this mount's connection ({e}); the mount will not survive the death of this front end"
                );
            }
            (
                Arc::new(Session::new(Arc::new(dev), fs, 0, tag)),
                Start::Mounted,
            )
        }
    };
    ready(start);
    let tag = session.session();
    let ended = serve(session, &sys, opts.threads, sigfd, |minor| {
        let _ = sys.fuse_keep(&mps, minor, tag, None);
    });
    // Whatever happened, the mount goes (it may already be gone: unmounted from outside),
    // and the kernel forgets the connection.
    let unmounted = if is_fuse_mount(&mp) {
        unmount(&mp)
    } else {
        Ok(())
    };
    if let Err(e) = sys.fuse_forget(&mps)
        && !matches!(ended, Ok(Ended::SystemStopped))
    {
        eprintln!(
            "txipc: warning: {}",
            sys_err("forgetting the connection", e)
        );
    }
    unmounted?;
    ended
}
