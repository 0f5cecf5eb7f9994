//! Channels and kernel objects: granting, handing out and revoking channels; channels a server opens inside a transaction.

use std::os::fd::{AsFd, OwnedFd};

use txipc_chan::{ChannelLayout, KernelChannel};
use txipc_core::lifecycle::{Event, Phase};
use txipc_core::manifest::Principal;
use txipc_core::proto::{self, Connected, ErrorKind, KernelError as WireError, ToServer};
use txipc_sys::fdpass;

use crate::errors::internal;
use crate::event_loop::Kernel;
use crate::server::CONTROL_EVENT;

/// Who holds the client end of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// An outside client, by its control connection.
    Client(u64),
    /// A server of this system, opened inside transaction `txid` (a kernel object logged under
    /// that transaction: revoked if it rolls back).
    Server { server: usize, txid: u64 },
}

#[derive(Debug)]
pub(crate) struct Chan {
    pub(crate) fd: OwnedFd,
    pub(crate) k: KernelChannel,
    pub(crate) owner: Owner,
}

impl Kernel {
    /// Checks the grant, creates a channel to `service` for `who`, hands it to the service's
    /// incarnations. Returns the target server's index and the grant.
    pub(crate) fn open_channel(
        &mut self,
        who: &Principal,
        service: &str,
        owner: Owner,
    ) -> Result<(usize, Connected), WireError> {
        let Some((si, _)) = self.manifest.server(service) else {
            let known: Vec<&str> = self
                .manifest
                .servers
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            return Err(WireError {
                kind: ErrorKind::UnknownService,
                message: format!(
                    "no service `{service}` in system `{}` (it has: {})",
                    self.opts.system,
                    known.join(", ")
                ),
            });
        };
        if !self.manifest.is_granted(who, service) {
            return Err(WireError {
                kind: ErrorKind::NotGranted,
                message: format!(
                    "permission denied: the manifest grants {who:?} no access to `{service}` (add a [[grant]] for it)"
                ),
            });
        }
        if let Owner::Client(c) = owner {
            let held = self.clients.get(&c).map_or(0, |c| c.channels.len());
            let limit = self.manifest.max_channels_per_client as usize;
            if held >= limit {
                return Err(WireError {
                    kind: ErrorKind::Limit,
                    message: format!(
                        "this connection holds {held} channels, the manifest's max_channels_per_client: close some, or raise the limit"
                    ),
                });
            }
        }
        let s = &mut self.servers[si];
        if s.channels.len() >= s.spec.max_channels as usize {
            return Err(WireError {
                kind: ErrorKind::Limit,
                message: format!(
                    "service `{service}` has {} channels open, its max_channels: try again later, or raise the limit in the manifest",
                    s.channels.len()
                ),
            });
        }
        if matches!(s.phase(), Phase::Dead | Phase::Held) {
            return Err(WireError {
                kind: ErrorKind::Unavailable,
                message: format!(
                    "service `{service}` is {} and takes no new connections ({}); an operator can `release` it",
                    s.phase().as_str(),
                    s.held_reason.as_deref().unwrap_or("no reason recorded")
                ),
            });
        }
        let layout = ChannelLayout {
            nslots: s.spec.slots,
            req_cap: s.spec.request_max,
            reply_cap: s.spec.reply_max,
        };
        let index = s.next_chan;
        let fd = txipc_chan::create_channel(&format!("txipc-chan-{service}-{index}"), layout)
            .map_err(internal)?;
        let k = KernelChannel::map(fd.as_fd()).map_err(internal)?;
        let generation = s.life.active().unwrap_or(0);
        k.set_generation(generation);
        s.next_chan += 1;
        let mut full = Vec::new();
        for inc in [s.active(), s.standby()].into_iter().flatten() {
            if is_full(fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::AddChannels {
                    indices: vec![index],
                }),
                &[fd.as_fd()],
            )) {
                full.push(inc.generation);
            }
        }
        s.doorbell.notify(CONTROL_EVENT);
        s.channels.insert(index, Chan { fd, k, owner });
        // An incarnation whose socket stays full does not read it: it is hung (the kernel
        // never waits for it). Its successor gets every channel at spawn.
        for g in full {
            self.feed(si, Event::Hang(g));
        }
        let s = &self.servers[si];
        Ok((
            si,
            Connected {
                service: service.into(),
                channel: index,
                generation,
                policy: s.spec.policy,
            },
        ))
    }

    /// Revokes channel `ci` of server `si`: its client's calls fail with `Revoked`, the server
    /// stops serving it, the memfd is dropped.
    pub(crate) fn revoke_channel(&mut self, si: usize, ci: u32) {
        let s = &mut self.servers[si];
        if let Some(ch) = s.channels.remove(&ci) {
            ch.k.mark_revoked();
            let mut full = Vec::new();
            for inc in [s.active(), s.standby()].into_iter().flatten() {
                if is_full(fdpass::send(
                    &inc.sock,
                    &proto::encode(&ToServer::RemoveChannel { index: ci }),
                    &[],
                )) {
                    full.push(inc.generation);
                }
            }
            s.doorbell.notify(CONTROL_EVENT);
            for g in full {
                self.feed(si, Event::Hang(g));
            }
        }
    }

    /// A server asks for a channel to another service (inside transaction `txid`).
    pub(crate) fn server_connect(&mut self, i: usize, generation: u64, service: &str, txid: u64) {
        let who = Principal::Server(self.servers[i].spec.name.clone());
        let result = self.open_channel(&who, service, Owner::Server { server: i, txid });
        // Nested transactions may involve both servers now: no spare of either takes over by
        // itself (before the caller has the channel, so before any nested call on it).
        if let Ok((ti, _)) = &result {
            self.disarm(*ti);
            self.disarm(i);
        }
        let s = &self.servers[i];
        let Some(inc) = s.incarnation(generation) else {
            return;
        };
        let _ = match &result {
            Ok((ti, info)) => {
                let t = &self.servers[*ti];
                let fds = [t.channels[&info.channel].fd.as_fd()];
                // The standby inherits it at once; if the transaction rolls back, the channel
                // is revoked and the standby's runtime drops it when it finds it revoked.
                if let Some(sb) = s.standby().filter(|sb| sb.generation != generation) {
                    let _ = fdpass::send(
                        &sb.sock,
                        &proto::encode(&ToServer::Connected(info.clone())),
                        &fds,
                    );
                }
                fdpass::send(
                    &inc.sock,
                    &proto::encode(&ToServer::Connected(info.clone())),
                    &fds,
                )
            }
            Err(e) => fdpass::send(
                &inc.sock,
                &proto::encode(&ToServer::ConnectRefused {
                    service: service.into(),
                    message: e.message.clone(),
                }),
                &[],
            ),
        };
        let name = self.servers[i].spec.name.clone();
        match result {
            Ok((_, info)) => self.log(format!(
                "{name}: opened channel {} to {service} in transaction {txid} (for generation {generation})",
                info.channel
            )),
            Err(e) => self.log(format!(
                "{name}: channel to {service} refused: {}",
                e.message
            )),
        }
    }

    /// Channels opened by server `i`, which every new incarnation of it inherits.
    pub(crate) fn outgoing_of(&self, i: usize) -> Vec<(usize, u32)> {
        let mut v = Vec::new();
        for (ti, t) in self.servers.iter().enumerate() {
            for (ci, c) in &t.channels {
                if matches!(c.owner, Owner::Server { server, .. } if server == i) {
                    v.push((ti, *ci));
                }
            }
        }
        v
    }

    /// Undoes the kernel objects server `i` created in transaction `txid`, which was rolled
    /// back: its channels are revoked.
    pub(crate) fn undo_kernel_objects(&mut self, i: usize, txid: u64) -> usize {
        let doomed: Vec<(usize, u32)> = self
            .servers
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                t.channels
                    .iter()
                    .filter(move |(_, c)| c.owner == Owner::Server { server: i, txid })
                    .map(move |(ci, _)| (ti, *ci))
            })
            .collect();
        for &(ti, ci) in &doomed {
            self.revoke_channel(ti, ci);
        }
        doomed.len()
    }
}

/// Whether a send failed because the peer's socket is full (it does not read).
pub(crate) fn is_full(r: Result<(), fdpass::FdPassError>) -> bool {
    matches!(r, Err(fdpass::FdPassError::Io { source, .. })
        if source.kind() == std::io::ErrorKind::WouldBlock)
}
