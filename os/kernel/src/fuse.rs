//! FUSE connections kept for their mount points, so a mount outlives its front end.
//!
//! Protocol (ARCHITECTURE.md, "FUSE adoption"): a front end that mounts sends its `/dev/fuse`
//! fd with `FuseKeep` (and again, without an fd, once `INIT` is answered, with the negotiated
//! minor). The kernel keeps the fd and records the client connection that holds it. When that
//! connection closes (the front end died or exited), the entry is orphaned, not dropped: the
//! kernel's copy of the fd keeps the connection alive, and with it the mount. A new front end
//! `FuseAdopt`s it (only an orphaned entry: two live front ends on one connection would both
//! answer re-sent requests) and becomes its holder. `FuseForget` drops it after an unmount.
//! The kernel never reads or writes the fd.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use txipc_core::manifest::Principal;
use txipc_core::proto::{ErrorKind, KeptFuse, KernelError as WireError, Request, Response};

use crate::event_loop::Kernel;

/// One kept connection.
#[derive(Debug)]
pub(crate) struct Kept {
    fd: OwnedFd,
    minor: u32,
    session: u64,
    /// The client connection of the live front end, if any.
    holder: Option<u64>,
}

/// Kept connections by mount point.
pub(crate) type KeptMap = HashMap<String, Kept>;

fn refuse(kind: ErrorKind, message: String) -> WireError {
    WireError { kind, message }
}

impl Kernel {
    /// Answers `FuseKeep`, `FuseAdopt`, `FuseForget` from `client`; `fds` came with the
    /// request. Returns the answer and the fd to send with it.
    pub(crate) fn fuse_request(
        &mut self,
        client: u64,
        who: &Principal,
        req: Request,
        mut fds: Vec<OwnedFd>,
    ) -> Result<(Response, Option<OwnedFd>), WireError> {
        if !self.manifest.is_operator(who, self.owner_uid) {
            return Err(refuse(
                ErrorKind::NotOperator,
                "permission denied: only an operator may keep or adopt a FUSE connection".into(),
            ));
        }
        match req {
            Request::FuseKeep {
                mountpoint,
                minor,
                session,
            } => {
                let fd = fds.pop();
                match self.fuse.get_mut(&mountpoint) {
                    Some(k) if k.holder.is_some() && k.holder != Some(client) => Err(refuse(
                        ErrorKind::WrongState,
                        format!("{mountpoint}: another live front end holds its connection"),
                    )),
                    Some(k) => {
                        if let Some(fd) = fd {
                            k.fd = fd;
                        }
                        k.minor = minor;
                        k.session = session;
                        k.holder = Some(client);
                        Ok((Response::Ok, None))
                    }
                    None => {
                        let Some(fd) = fd else {
                            return Err(refuse(
                                ErrorKind::BadRequest,
                                format!("{mountpoint}: FuseKeep of a new mount carries its fd"),
                            ));
                        };
                        self.log(format!("fuse: keeping the connection of {mountpoint}"));
                        self.fuse.insert(
                            mountpoint,
                            Kept {
                                fd,
                                minor,
                                session,
                                holder: Some(client),
                            },
                        );
                        Ok((Response::Ok, None))
                    }
                }
            }
            Request::FuseAdopt { mountpoint } => {
                let Some(k) = self.fuse.get_mut(&mountpoint) else {
                    return Err(refuse(
                        ErrorKind::WrongState,
                        format!("{mountpoint}: no FUSE connection is kept for it"),
                    ));
                };
                if k.holder.is_some() {
                    return Err(refuse(
                        ErrorKind::WrongState,
                        format!(
                            "{mountpoint}: its front end is alive (only the connection of a dead front end can be adopted)"
                        ),
                    ));
                }
                let dup =
                    k.fd.as_fd().try_clone_to_owned().map_err(|e| {
                        refuse(ErrorKind::Internal, format!("duplicating the fd: {e}"))
                    })?;
                k.holder = Some(client);
                let info = KeptFuse {
                    mountpoint: mountpoint.clone(),
                    minor: k.minor,
                    session: k.session,
                };
                self.log(format!("fuse: {mountpoint} adopted by a new front end"));
                Ok((Response::Fuse(info), Some(dup)))
            }
            Request::FuseForget { mountpoint } => {
                if let Some(k) = self.fuse.get(&mountpoint)
                    && k.holder.is_some()
                    && k.holder != Some(client)
                {
                    return Err(refuse(
                        ErrorKind::WrongState,
                        format!("{mountpoint}: another live front end holds its connection"),
                    ));
                }
                if self.fuse.remove(&mountpoint).is_some() {
                    self.log(format!("fuse: {mountpoint} forgotten (unmounted)"));
                }
                Ok((Response::Ok, None))
            }
            _ => Err(refuse(ErrorKind::BadRequest, "not a FUSE request".into())),
        }
    }

    /// The system stops: a kept connection whose front end is gone would leave a dead mount
    /// behind ("Transport endpoint is not connected") once the kernel's fd closes, so it is
    /// detached first. A live front end unmounts by itself when it sees the system stop.
    pub(crate) fn fuse_shutdown(&mut self) {
        for (m, k) in std::mem::take(&mut self.fuse) {
            if k.holder.is_none() {
                let r = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH);
                self.log(format!(
                    "fuse: {m} had no front end; unmounted at shutdown ({})",
                    match r {
                        Ok(()) => "ok".to_string(),
                        Err(e) => e.to_string(),
                    }
                ));
            }
        }
    }

    /// A client connection closed: the connections it held are orphaned (kept for adoption).
    pub(crate) fn fuse_client_gone(&mut self, client: u64) {
        let mut orphaned = Vec::new();
        for (m, k) in &mut self.fuse {
            if k.holder == Some(client) {
                k.holder = None;
                orphaned.push(m.clone());
            }
        }
        for m in orphaned {
            self.log(format!(
                "fuse: the front end of {m} is gone; its connection is kept for a successor (`txipc mount {m}`)"
            ));
        }
    }
}
