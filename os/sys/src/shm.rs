//! Sealed shared memory: the one way txipc creates a memfd that another process will map.
//!
//! A memfd shared with a less trusted process is sealed against shrinking and growing (and
//! against removing the seals): a peer that could shrink it would make the next access of
//! every other mapper die of SIGBUS — the kernel's included. Writes stay allowed (that is what
//! the memory is for); zeroing punches holes, which keeps the size.
//!
//! Used for the status page ([`crate::status`]) and the heap and undo log (`txipc-heap`);
//! channels are created by `txipc-chan`'s own `create_sealed`, which applies the same seals.

use std::io;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};

/// The seals every shared memfd carries.
pub const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Creates a zero-filled memfd of `size` bytes, sealed with [`SEALS`].
pub fn create_sealed(name: &str, size: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, size)?;
    rustix::fs::fcntl_add_seals(&fd, SEALS)?;
    Ok(fd)
}

/// Checks that `fd` is sealed against shrinking and is at least `min` bytes; returns its size.
/// Map nothing shared that fails this: its owner could shrink it under you.
pub fn check_sealed(fd: impl AsFd, min: u64) -> io::Result<u64> {
    let seals = rustix::fs::fcntl_get_seals(&fd)
        .map_err(|e| io::Error::other(format!("not a sealed memfd ({e})")))?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(io::Error::other(
            "the memfd is not sealed against shrinking: another process could make its mappers fault",
        ));
    }
    let size = rustix::fs::fstat(&fd)?.st_size as u64;
    if size < min {
        return Err(io::Error::other(format!(
            "the memfd has {size} bytes, at least {min} are needed"
        )));
    }
    Ok(size)
}

/// Zeroes the first `len` bytes of a sealed memfd and frees their memory (holes read as
/// zeros); the size stays.
pub fn zero(fd: impl AsFd, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(
        &fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        0,
        len,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfds_cannot_change_size() {
        let fd = create_sealed("t", 8192).unwrap();
        assert_eq!(check_sealed(&fd, 4096).unwrap(), 8192);
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        assert!(rustix::fs::ftruncate(&fd, 1 << 20).is_err());
        rustix::io::pwrite(&fd, &[7u8; 16], 100).unwrap();
        zero(&fd, 8192).unwrap();
        let mut b = [1u8; 16];
        rustix::io::pread(&fd, &mut b, 100).unwrap();
        assert_eq!(b, [0u8; 16]);
        assert!(check_sealed(&fd, 1 << 20).is_err());
        let plain = rustix::fs::memfd_create("p", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&plain, 4096).unwrap();
        assert!(check_sealed(&plain, 4096).is_err());
    }
}
