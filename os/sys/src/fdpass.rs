//! Messages carrying file descriptors over Unix sockets (SCM_RIGHTS).
//!
//! Control sockets in txipc are `SOCK_SEQPACKET`: one `send` is one message, so a message and the
//! descriptors it carries always arrive together or not at all.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 16;

/// Errors of fd passing.
#[derive(Debug, thiserror::Error)]
pub enum FdPassError {
    /// The syscall failed.
    #[error("{op}: {source}")]
    Io {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// More descriptors than [`MAX_FDS`].
    #[error("a message may carry at most {MAX_FDS} descriptors, got {0}")]
    TooManyFds(usize),
    /// The message or its descriptors did not fit the receive buffers.
    #[error("the received message was truncated (message or descriptors too large)")]
    Truncated,
    /// The peer closed the socket.
    #[error("the peer closed the connection")]
    Closed,
}

fn io(op: &'static str, e: rustix::io::Errno) -> FdPassError {
    FdPassError::Io {
        op,
        source: e.into(),
    }
}

/// Sends `bytes` and `fds` as one message.
pub fn send(sock: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), FdPassError> {
    if fds.len() > MAX_FDS {
        return Err(FdPassError::TooManyFds(fds.len()));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(FdPassError::TooManyFds(fds.len()));
    }
    let iov = [IoSlice::new(bytes)];
    loop {
        match rustix::net::sendmsg(&sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::PIPE) | Err(rustix::io::Errno::CONNRESET) => {
                return Err(FdPassError::Closed);
            }
            Err(e) => return Err(io("sendmsg", e)),
        }
    }
}

/// Receives one message into `buf`; returns its length and the descriptors it carried.
/// `nonblocking` returns `Ok(None)` when no message is waiting.
pub fn recv(
    sock: impl AsFd,
    buf: &mut [u8],
    nonblocking: bool,
) -> Result<Option<(usize, Vec<OwnedFd>)>, FdPassError> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let msg = loop {
        match rustix::net::recvmsg(&sock, &mut iov, &mut control, flags) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) if nonblocking => return Ok(None),
            Err(rustix::io::Errno::CONNRESET) => return Err(FdPassError::Closed),
            Err(e) => return Err(io("recvmsg", e)),
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::TRUNC) || msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(FdPassError::Truncated);
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Err(FdPassError::Closed);
    }
    Ok(Some((msg.bytes, fds)))
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (close-on-exec).
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), FdPassError> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io("socketpair", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;

    #[test]
    fn message_with_fds_roundtrip() {
        let (a, b) = seqpacket_pair().unwrap();
        let (x, _y) = seqpacket_pair().unwrap();
        send(&a, b"hello", &[x.as_fd(), a.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = recv(&b, &mut buf, false).unwrap().unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        assert!(recv(&b, &mut buf, true).unwrap().is_none());
        drop(a);
        drop(fds);
        assert!(matches!(
            recv(&b, &mut buf, false),
            Err(FdPassError::Closed)
        ));
    }

    #[test]
    fn too_many_fds_is_refused() {
        let (a, _b) = seqpacket_pair().unwrap();
        let fds: Vec<BorrowedFd<'_>> = (0..MAX_FDS + 1).map(|_| a.as_fd()).collect();
        assert!(matches!(
            send(&a, b"x", &fds),
            Err(FdPassError::TooManyFds(_))
        ));
    }

    #[test]
    fn truncated_message_is_an_error() {
        let (a, b) = seqpacket_pair().unwrap();
        send(&a, &[7u8; 100], &[]).unwrap();
        let mut buf = [0u8; 10];
        assert!(matches!(
            recv(&b, &mut buf, false),
            Err(FdPassError::Truncated)
        ));
    }
}
