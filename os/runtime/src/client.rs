//! The client library: reach a running system, open channels to its servers.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use txipc_chan::{ChanError, ClientChannel, Status};
use txipc_core::proto::{
    self, Connected, ErrorKind, Released, Request, Response, ServerInfo, SystemStatus,
};
use txipc_service::{CallError, Transport};
use txipc_sys::fdpass;

/// Why the client could not reach a system or open a channel.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No system of that name is running.
    #[error("no system `{name}` is running (no socket at {path}): start one with `txipc run`")]
    NotRunning {
        /// The system's name.
        name: String,
        /// Where its socket would be.
        path: PathBuf,
    },
    /// The kernel refused.
    #[error("{message}")]
    Refused {
        /// Class of refusal.
        kind: ErrorKind,
        /// The kernel's words.
        message: String,
    },
    /// Talking to the kernel failed.
    #[error("talking to the kernel: {0}")]
    Io(String),
    /// The kernel's answer made no sense.
    #[error("unexpected answer from the kernel: {0}")]
    Protocol(String),
    /// The granted channel could not be mapped.
    #[error("mapping the channel: {0}")]
    Channel(String),
    /// Booting a system failed.
    #[error("booting the system: {0}")]
    Boot(String),
    /// The kernel did not answer a control request in time (it may be overloaded or stopped).
    #[error(
        "the kernel of system `{system}` did not answer within {timeout:?}: is it stopped or overloaded? (`txipc ps` or the kernel's log)"
    )]
    KernelTimeout {
        /// The system's name.
        system: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// How long a control request ([`System::ps`], [`System::open`], ...) waits for the kernel's
/// answer unless [`System::set_control_timeout`] says otherwise.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Conn {
    sock: Mutex<OwnedFd>,
}

fn set_socket_timeout(sock: &OwnedFd, timeout: Duration) -> Result<(), ClientError> {
    let t = Some(timeout.max(Duration::from_millis(1)));
    rustix::net::sockopt::set_socket_timeout(sock, rustix::net::sockopt::Timeout::Recv, t)
        .and_then(|()| {
            rustix::net::sockopt::set_socket_timeout(sock, rustix::net::sockopt::Timeout::Send, t)
        })
        .map_err(|e| ClientError::Io(format!("setting the control timeout: {e}")))
}

/// A connection to a running system's kernel.
#[derive(Debug, Clone)]
pub struct System {
    name: String,
    conn: Arc<Conn>,
    timeout: Duration,
}

impl System {
    /// Connects to the system `name` of this user.
    pub fn connect(name: &str) -> Result<System, ClientError> {
        let path = txipc_core::paths::socket_path(name);
        let sock = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| ClientError::Io(e.to_string()))?;
        let addr = rustix::net::SocketAddrUnix::new(&path)
            .map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
        match rustix::net::connect(&sock, &addr) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::CONNREFUSED) => {
                return Err(ClientError::NotRunning {
                    name: name.into(),
                    path,
                });
            }
            Err(e) => return Err(ClientError::Io(format!("connect {}: {e}", path.display()))),
        }
        // A socket in a directory another user can write may be theirs, not our kernel's.
        if let Some(dir) = path.parent() {
            txipc_core::paths::check_runtime_dir(dir).map_err(ClientError::Io)?;
        }
        set_socket_timeout(&sock, CONTROL_TIMEOUT)?;
        Ok(System {
            name: name.into(),
            conn: Arc::new(Conn {
                sock: Mutex::new(sock),
            }),
            timeout: CONTROL_TIMEOUT,
        })
    }

    /// How long each control request waits for the kernel's answer (default
    /// [`CONTROL_TIMEOUT`]); past it the request fails with [`ClientError::KernelTimeout`].
    /// Applies to every handle of this connection.
    pub fn set_control_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let sock = self.conn.sock.lock().unwrap_or_else(|p| p.into_inner());
        set_socket_timeout(&sock, timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// The system's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn request(&self, req: &Request) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        self.request_with(req, &[])
    }

    fn request_with(
        &self,
        req: &Request,
        send_fds: &[BorrowedFd<'_>],
    ) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        let sock = self.conn.sock.lock().unwrap_or_else(|p| p.into_inner());
        let io = |e: fdpass::FdPassError| {
            // SO_RCVTIMEO/SO_SNDTIMEO expire as EAGAIN.
            if matches!(&e, fdpass::FdPassError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::WouldBlock)
            {
                ClientError::KernelTimeout {
                    system: self.name.clone(),
                    timeout: self.timeout,
                }
            } else {
                ClientError::Io(e.to_string())
            }
        };
        fdpass::send(&*sock, &proto::encode(req), send_fds).map_err(io)?;
        let mut buf = vec![0u8; proto::MAX_CONTROL_MSG];
        let (n, fds) = fdpass::recv(&*sock, &mut buf, false)
            .map_err(io)?
            .ok_or_else(|| ClientError::Io("no answer".into()))?;
        let resp: Response =
            proto::decode(&buf[..n]).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Response::Error(e) = resp {
            return Err(ClientError::Refused {
                kind: e.kind,
                message: e.message,
            });
        }
        Ok((resp, fds))
    }

    /// Opens a channel to the server `service`.
    pub fn open(&self, service: &str) -> Result<Channel, ClientError> {
        let (resp, fds) = self.request(&Request::Connect {
            version: proto::PROTO_VERSION,
            service: service.into(),
        })?;
        let Response::Connected(info) = resp else {
            return Err(ClientError::Protocol(format!("{resp:?}")));
        };
        let mut ch = Channel::from_fds(fds, info)?;
        ch._conn = Some(self.conn.clone());
        Ok(ch)
    }

    /// Hands the kernel the `/dev/fuse` fd of the mount at `mountpoint` (or, with `fd` `None`,
    /// updates the negotiated `minor`), so the mount outlives this front end; this connection
    /// holds it until it closes. Operator only.
    pub fn fuse_keep(
        &self,
        mountpoint: &str,
        minor: u32,
        session: u64,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let req = Request::FuseKeep {
            mountpoint: mountpoint.into(),
            minor,
            session,
        };
        match self.request_with(&req, fd.as_slice())?.0 {
            Response::Ok => Ok(()),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Adopts the kept FUSE connection of `mountpoint` (its front end died): its protocol
    /// state and the fd. Operator only.
    pub fn fuse_adopt(
        &self,
        mountpoint: &str,
    ) -> Result<(txipc_core::proto::KeptFuse, OwnedFd), ClientError> {
        let (resp, mut fds) = self.request(&Request::FuseAdopt {
            mountpoint: mountpoint.into(),
        })?;
        match (resp, fds.pop()) {
            (Response::Fuse(k), Some(fd)) => Ok((k, fd)),
            (other, _) => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Tells the kernel to drop the kept connection of `mountpoint` (it was unmounted).
    pub fn fuse_forget(&self, mountpoint: &str) -> Result<(), ClientError> {
        match self
            .request(&Request::FuseForget {
                mountpoint: mountpoint.into(),
            })?
            .0
        {
            Response::Ok => Ok(()),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The servers of the system.
    pub fn ps(&self) -> Result<Vec<ServerInfo>, ClientError> {
        match self.request(&Request::Ps)?.0 {
            Response::Ps(list) => Ok(list),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Arms a fail point in `server`: its next request reaching `point` faults with `kind`.
    pub fn inject(
        &self,
        server: &str,
        kind: txipc_core::failpoint::FailKind,
        point: txipc_core::failpoint::FailPoint,
    ) -> Result<(), ClientError> {
        match self
            .request(&Request::Inject {
                server: server.into(),
                kind,
                point,
            })?
            .0
        {
            Response::Ok => Ok(()),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Arms `arm` in `server` (any site, with its argument), or disarms with `None`; returns
    /// what was armed before (`None`: nothing, or it fired).
    pub fn fail_point(
        &self,
        server: &str,
        arm: Option<txipc_core::failpoint::FailSpec>,
    ) -> Result<Option<txipc_core::failpoint::FailSpec>, ClientError> {
        match self
            .request(&Request::FailPoint {
                server: server.into(),
                arm,
            })?
            .0
        {
            Response::FailPoint(prev) => Ok(prev),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Asks the kernel to stop the system (operator only).
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.expect_ok(&Request::Shutdown)
    }

    /// The kernel's pid and uptime and every server.
    pub fn status(&self) -> Result<SystemStatus, ClientError> {
        match self.request(&Request::Status)?.0 {
            Response::Status(s) => Ok(s),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Restarts `server` now (operator only); see [`Request::Restart`].
    pub fn restart(&self, server: &str) -> Result<(), ClientError> {
        self.expect_ok(&Request::Restart {
            server: server.into(),
        })
    }

    /// Takes a held or dead `server` out of that state (operator only); see
    /// [`Request::Release`].
    pub fn release(&self, server: &str) -> Result<Released, ClientError> {
        match self
            .request(&Request::Release {
                server: server.into(),
            })?
            .0
        {
            Response::Released(r) => Ok(r),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Sends signal number `signal` to `server`'s active incarnation (operator only).
    pub fn kill(&self, server: &str, signal: i32) -> Result<(), ClientError> {
        self.expect_ok(&Request::Kill {
            server: server.into(),
            signal,
        })
    }

    fn expect_ok(&self, req: &Request) -> Result<(), ClientError> {
        match self.request(req)?.0 {
            Response::Ok => Ok(()),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }
}

/// A channel to one server: the [`Transport`] of generated client stubs.
///
/// The channel stays valid while any handle of the [`System`] connection it was opened on is
/// alive; the kernel revokes it when that connection closes.
#[derive(Debug)]
pub struct Channel {
    chan: ClientChannel,
    info: Connected,
    timeout: Option<Duration>,
    /// The control connection the grant is tied to (none for a server's own channels, which
    /// live as long as the server).
    _conn: Option<Arc<Conn>>,
}

impl Channel {
    /// Maps a granted channel from its descriptors `[channel]` (a server's own channels,
    /// handed over its control socket). A client gets its channel and nothing else: no memory
    /// another client of the server can write.
    pub(crate) fn from_fds(fds: Vec<OwnedFd>, info: Connected) -> Result<Channel, ClientError> {
        let [chan_fd]: [OwnedFd; 1] = fds
            .try_into()
            .map_err(|_| ClientError::Protocol("a channel grant carries 1 descriptor".into()))?;
        let chan =
            ClientChannel::map(chan_fd.as_fd()).map_err(|e| ClientError::Channel(e.to_string()))?;
        Ok(Channel {
            chan,
            info,
            timeout: None,
            _conn: None,
        })
    }

    /// Takes over the slots a previous incarnation of this server left in the channel
    /// (see [`ClientChannel::adopt_slots`]).
    pub(crate) fn adopt_slots(&self) {
        self.chan.adopt_slots();
    }

    /// What the kernel said when granting it.
    pub fn info(&self) -> &Connected {
        &self.info
    }

    /// Gives up on calls after `timeout` (`CallError::Timeout`); `None` waits for the reply,
    /// which the system guarantees to come (reply or typed error) while the kernel runs.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Whether the kernel revoked the channel (its grant is gone; calls fail).
    pub fn is_revoked(&self) -> bool {
        self.chan.is_revoked()
    }

    /// The generation of the server incarnation currently serving the channel.
    pub fn generation(&self) -> u64 {
        self.chan.generation()
    }
}

/// Maps a slot status to the client's view.
pub fn status_to_result(status: Status, attempt: u32) -> Result<(), CallError> {
    match status {
        Status::Ok => Ok(()),
        Status::Malformed => Err(CallError::Malformed),
        Status::UnknownMethod => Err(CallError::UnknownMethod { method: 0 }),
        // `attempt` counts the re-posts: the request ran once more than that.
        Status::Aborted => Err(CallError::Aborted {
            attempts: attempt + 1,
        }),
        Status::Restarted => Err(CallError::Restarted),
        Status::Unavailable => Err(CallError::Unavailable {
            reason: "the server is down (policy none, or held); the request did not run".into(),
        }),
        // The channel's reply limit is filled in by `Channel::call`, which knows it.
        Status::TooLarge => Err(CallError::ReplyTooLarge { cap: 0 }),
        Status::Revoked => Err(CallError::Disconnected("the grant was revoked".into())),
        Status::Refused => Err(CallError::Refused),
        Status::Interrupted => Err(CallError::Interrupted),
    }
}

fn chan_error(e: ChanError) -> CallError {
    match e {
        ChanError::Timeout {
            after,
            retracted: true,
        } => CallError::Withdrawn {
            after_ms: after.as_millis() as u64,
        },
        ChanError::Timeout { .. } => CallError::Timeout,
        ChanError::Dead => CallError::Unavailable {
            reason: "the server is down for good (policy none, or held down after a restart storm)"
                .into(),
        },
        ChanError::RequestTooLarge { len, cap } => CallError::TooLarge {
            what: "request",
            len,
            cap,
        },
        other => CallError::Disconnected(other.to_string()),
    }
}

impl Channel {
    /// A call whose outcome is returned as the slot's status (a transport failure as the
    /// status that stands for it), for the companion, which records it and replays it.
    pub(crate) fn call_status(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Status {
        match self.chan.call(method, request, reply, self.timeout) {
            Ok(r) => r.status,
            Err(e) => {
                reply.clear();
                match e {
                    ChanError::RequestTooLarge { .. } => Status::Malformed,
                    ChanError::Timeout { .. } => Status::Restarted,
                    _ => Status::Unavailable,
                }
            }
        }
    }
}

impl Transport for Channel {
    fn call(&self, method: u32, request: &[u8], reply: &mut Vec<u8>) -> Result<(), CallError> {
        let r = self
            .chan
            .call(method, request, reply, self.timeout)
            .map_err(chan_error)?;
        status_to_result(r.status, r.attempt).map_err(|e| match e {
            CallError::UnknownMethod { .. } => CallError::UnknownMethod { method },
            CallError::ReplyTooLarge { .. } => CallError::ReplyTooLarge {
                cap: self.chan.layout().reply_cap as usize,
            },
            other => other,
        })
    }
}

/// A system booted as a child process (`txipc run -`), for tests, benchmarks and the demo.
/// Dropping it shuts the system down and waits for it (bounded), killing it if it does not stop.
#[derive(Debug)]
pub struct SystemProcess {
    name: String,
    child: Option<Child>,
    /// The log is this system's (it booted) and goes with it.
    remove_log: bool,
}

impl SystemProcess {
    /// Boots `manifest` (TOML text) under the system name `name` with the txipc binary `exe`,
    /// and waits until every server serves (bounded by `timeout`). The kernel runs `--quiet`
    /// unless `TXIPC_VERBOSE=1` is set.
    pub fn spawn(
        exe: &Path,
        manifest: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<SystemProcess, ClientError> {
        let mut cmd = Command::new(exe);
        cmd.args(["run", "-", "--system", name, "--die-with-parent"]);
        // Quiet unless asked: the kernel logs every recovery and servers print their panics,
        // which drowns a demo or a test log. TXIPC_VERBOSE=1 shows them.
        if std::env::var_os("TXIPC_VERBOSE").is_none_or(|v| v.is_empty() || v == "0") {
            cmd.arg("--quiet");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| ClientError::Boot(format!("{}: {e}", exe.display())))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut me = SystemProcess {
            name: name.into(),
            child: Some(child),
            remove_log: false,
        };
        stdin
            .write_all(manifest.as_bytes())
            .map_err(|e| ClientError::Boot(format!("writing the manifest: {e}")))?;
        drop(stdin);
        // Wait for the kernel's "ready" line, on a helper thread so the wait is bounded.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the kernel never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(timeout) {
            Ok(Some(Ok(line))) if line.starts_with("ready") => {
                me.remove_log = true;
                Ok(me)
            }
            Ok(Some(Ok(line))) => Err(ClientError::Boot(format!("kernel said: {line}"))),
            Ok(_) => {
                let status = me.child.as_mut().and_then(|c| c.wait().ok());
                Err(ClientError::Boot(format!(
                    "the kernel exited before it was ready ({status:?}); see its error above"
                )))
            }
            Err(_) => Err(ClientError::Boot(format!(
                "the system was not ready within {timeout:?}"
            ))),
        }
    }

    /// The system's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connects to it.
    pub fn connect(&self) -> Result<System, ClientError> {
        System::connect(&self.name)
    }

    /// The kernel's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Keeps the system's log (`txipc_core::paths::log_path`) after it stops, for
    /// `txipc logs` (the demo's); by default it is removed with the system, so that tests and
    /// benchmarks leave no files.
    pub fn keep_log(&mut self) {
        self.remove_log = false;
    }

    /// Shuts the system down and waits (bounded) for the kernel to exit.
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ClientError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Ask (needs the operator grant); else, or if refused, signal it.
        let asked = System::connect(&self.name).is_ok_and(|sys| sys.shutdown().is_ok());
        if !asked {
            let _ = txipc_sys::process::kill(child.id() as i32, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(ClientError::Boot(format!(
                        "the kernel exited with {status}"
                    )));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ClientError::Boot(
                        "the kernel did not stop within 10 s and was killed".into(),
                    ));
                }
            }
        }
    }
}

impl Drop for SystemProcess {
    fn drop(&mut self) {
        let _ = self.stop();
        if self.remove_log {
            let _ = std::fs::remove_file(txipc_core::paths::log_path(&self.name));
            // The kernel removes the runtime directory when it is empty; the log kept it.
            let _ = std::fs::remove_dir(txipc_core::paths::runtime_dir());
        }
    }
}
