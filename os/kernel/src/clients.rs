//! Clients and grants: control connections, their requests, `ps`.

use std::os::fd::{AsFd, OwnedFd};

use txipc_core::manifest::Principal;
use txipc_core::proto::{self, ErrorKind, KernelError as WireError, Request, Response, ServerInfo};
use txipc_sys::fdpass;

use crate::channels::Owner;
use crate::event_loop::{Kernel, T_CLIENT, token};

#[derive(Debug)]
pub(crate) struct ClientConn {
    pub(crate) sock: OwnedFd,
    pub(crate) principal: Principal,
    pub(crate) channels: Vec<(usize, u32)>,
}

impl Kernel {
    pub(crate) fn accept(&mut self) {
        loop {
            let sock = match rustix::net::accept_with(
                &self.listener,
                rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            ) {
                Ok(s) => s,
                Err(_) => return,
            };
            let uid = match rustix::net::sockopt::socket_peercred(&sock) {
                Ok(c) => c.uid.as_raw(),
                Err(_) => continue,
            };
            let id = self.next_client;
            self.next_client += 1;
            if self.watch(sock.as_fd(), token(T_CLIENT, 0, id)).is_err() {
                continue;
            }
            self.clients.insert(
                id,
                ClientConn {
                    sock,
                    principal: Principal::Uid(uid),
                    channels: Vec::new(),
                },
            );
        }
    }

    pub(crate) fn on_client(&mut self, id: u64) {
        loop {
            let Some(c) = self.clients.get(&id) else {
                return;
            };
            let msg = fdpass::recv(&c.sock, &mut self.buf, true);
            let (n, _fds) = match msg {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(_) => {
                    self.drop_client(id);
                    return;
                }
            };
            let resp = match proto::decode::<Request>(&self.buf[..n]) {
                Ok(Request::Connect { version, service }) => {
                    if version != proto::PROTO_VERSION {
                        Err(WireError {
                            kind: ErrorKind::BadRequest,
                            message: format!(
                                "client protocol version {version}, kernel speaks {}: use the same txipc build for both",
                                proto::PROTO_VERSION
                            ),
                        })
                    } else {
                        self.connect(id, &service)
                    }
                }
                Ok(Request::Ps) => Ok((Response::Ps(self.ps()), None)),
                Ok(Request::Inject {
                    server,
                    kind,
                    point,
                }) => match self.manifest.server(&server) {
                    Some((si, _)) => {
                        self.servers[si].status.arm(kind as u8, point as u8);
                        self.log(format!("{server}: fail point armed: {kind:?} at {point:?}"));
                        Ok((Response::Ok, None))
                    }
                    None => Err(WireError {
                        kind: ErrorKind::UnknownService,
                        message: format!("no server `{server}`"),
                    }),
                },
                Ok(Request::Shutdown) => {
                    self.shutting_down = true;
                    Ok((Response::Ok, None))
                }
                Err(e) => Err(WireError {
                    kind: ErrorKind::BadRequest,
                    message: e.to_string(),
                }),
            };
            let c = &self.clients[&id];
            let sent = match resp {
                Ok((r, Some(si_ci))) => {
                    let (si, ci) = si_ci;
                    let s = &self.servers[si];
                    fdpass::send(
                        &c.sock,
                        &proto::encode(&r),
                        &[s.channels[&ci].fd.as_fd(), s.doorbell_fd.as_fd()],
                    )
                }
                Ok((r, None)) => fdpass::send(&c.sock, &proto::encode(&r), &[]),
                Err(e) => fdpass::send(&c.sock, &proto::encode(&Response::Error(e)), &[]),
            };
            if sent.is_err() {
                self.drop_client(id);
                return;
            }
            if self.shutting_down {
                return;
            }
        }
    }

    pub(crate) fn connect(
        &mut self,
        client: u64,
        service: &str,
    ) -> Result<(Response, Option<(usize, u32)>), WireError> {
        let who = self.clients[&client].principal.clone();
        let (si, info) = self.open_channel(&who, service, Owner::Client(client))?;
        self.clients
            .get_mut(&client)
            .expect("client exists")
            .channels
            .push((si, info.channel));
        let ci = info.channel;
        Ok((Response::Connected(info), Some((si, ci))))
    }

    pub(crate) fn drop_client(&mut self, id: u64) {
        let Some(c) = self.clients.remove(&id) else {
            return;
        };
        self.unwatch(c.sock.as_fd());
        for (si, ci) in c.channels {
            self.revoke_channel(si, ci);
        }
    }

    pub(crate) fn ps(&self) -> Vec<ServerInfo> {
        self.servers
            .iter()
            .map(|s| ServerInfo {
                name: s.spec.name.clone(),
                pid: s.active.as_ref().map_or(0, |a| a.pid),
                generation: s.active.as_ref().map_or(0, |a| a.generation),
                policy: s.spec.policy,
                tracking: s.spec.tracking,
                state: s.state.as_str().into(),
                restarts: s.restarts,
                aborted_requests: s.aborted,
                retried_requests: s.retried,
                calls: s.status.calls(),
                channels: s.channels.len() as u32,
                last_recovery_us: s.last_recovery_us,
            })
            .collect()
    }
}
