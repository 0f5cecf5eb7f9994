//! Clients: control connections, reading their requests, answering them (operator controls
//! and status are in `control`).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use txipc_core::manifest::Principal;
use txipc_core::proto::{self, ErrorKind, KernelError as WireError, Request, Response};
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
                Err(
                    rustix::io::Errno::MFILE
                    | rustix::io::Errno::NFILE
                    | rustix::io::Errno::NOBUFS
                    | rustix::io::Errno::NOMEM,
                ) => {
                    // Out of descriptors: the pending connection stays in the backlog and the
                    // listener stays readable; stop watching it until the next tick instead
                    // of spinning on it. Connected clients are still served.
                    // The shortage is logged when it begins, not at every tick it lasts.
                    match &mut self.fd_shortage {
                        Some((_, ticks)) => *ticks += 1,
                        None => {
                            eprintln!(
                                "txipc kernel: out of file descriptors: not accepting connections until some are closed (close channels, or raise the limits)"
                            );
                            self.fd_shortage = Some((Instant::now(), 1));
                        }
                    }
                    if !self.accept_paused {
                        self.accept_paused = true;
                        self.unwatch(self.listener.as_fd());
                    }
                    return;
                }
                Err(_) => return,
            };
            if let Some((since, ticks)) = self.fd_shortage.take() {
                eprintln!(
                    "txipc kernel: accepting connections again after {:.1} s without descriptors ({ticks} refused attempts)",
                    since.elapsed().as_secs_f64()
                );
            }
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
            let (n, fds) = match msg {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(_) => {
                    self.drop_client(id);
                    return;
                }
            };
            // A spare may have answered this client before the kernel heard of the takeover:
            // take in what its processes already said, so that what it answers (`ps`, ...)
            // includes that recovery. The request's bytes are copied out first (the handlers
            // below reuse the buffer).
            if self.any_takeover_pending() {
                let req = self.buf[..n].to_vec();
                self.catch_up_takeovers();
                self.buf[..n].copy_from_slice(&req);
            }
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
                Ok(
                    req @ (Request::FuseKeep { .. }
                    | Request::FuseAdopt { .. }
                    | Request::FuseForget { .. }),
                ) => {
                    // They carry an fd one way or the other: answered and sent here.
                    let who = self.clients[&id].principal.clone();
                    let r = self.fuse_request(id, &who, req, fds);
                    let c = &self.clients[&id];
                    let sent = match &r {
                        Ok((resp, fd)) => fdpass::send(
                            &c.sock,
                            &proto::encode(resp),
                            &fd.iter().map(|f| f.as_fd()).collect::<Vec<_>>(),
                        ),
                        Err(e) => {
                            fdpass::send(&c.sock, &proto::encode(&Response::Error(e.clone())), &[])
                        }
                    };
                    if sent.is_err() {
                        self.drop_client(id);
                        return;
                    }
                    continue;
                }
                Ok(req) => {
                    let who = self.clients[&id].principal.clone();
                    self.control(&who, req).map(|r| (r, None))
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
                    fdpass::send(&c.sock, &proto::encode(&r), &[s.channels[&ci].fd.as_fd()])
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
        self.fuse_client_gone(id);
        for (si, ci) in c.channels {
            self.revoke_channel(si, ci);
        }
    }
}
