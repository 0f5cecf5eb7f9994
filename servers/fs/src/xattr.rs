//! Extended attributes and `fallocate`.
//!
//! Attributes live in `xattrs`, keyed by the inode (big-endian, so one inode's attributes are
//! one key range, in name order) followed by the full name (`user.foo`). The namespace rules
//! are Linux's (`xattr(7)`), checked here for the calling uid like every other permission:
//!
//! | namespace | read | write |
//! | --- | --- | --- |
//! | `user.` | read permission; regular files and directories only (else `ENODATA` / `EPERM`) | write permission; regular files and directories only (`EPERM`); in a sticky directory only its owner (`EPERM`) |
//! | `trusted.` | superuser only (others see none: `ENODATA`, not listed) | superuser only (`EPERM`) |
//! | `security.` | anyone | superuser only (`EPERM`) |
//! | `system.` and unknown | `EOPNOTSUPP` | `EOPNOTSUPP` |

use std::ops::Bound;

use fs_api::{
    BLOCK_SIZE, Caller, Errno, MAX_FILE_SIZE, MAX_XATTR_LIST, MAX_XATTR_NAME, MAX_XATTR_VALUE,
    amode, falloc, mode, oflag, xattr_flags,
};
use txipc_heap::Tx;

use crate::ops::FsCore;
use crate::perm;
use crate::state::{FsRoot, Inode, R, bkey, dkey, now};

const BS: u64 = BLOCK_SIZE as u64;

/// The namespace of an attribute name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    User,
    Trusted,
    Security,
}

fn namespace(name: &[u8]) -> Result<Ns, Errno> {
    if name.is_empty() || name.len() > MAX_XATTR_NAME {
        return Err(Errno::ERANGE);
    }
    let (ns, rest) = if let Some(r) = name.strip_prefix(b"user.") {
        (Ns::User, r)
    } else if let Some(r) = name.strip_prefix(b"trusted.") {
        (Ns::Trusted, r)
    } else if let Some(r) = name.strip_prefix(b"security.") {
        (Ns::Security, r)
    } else {
        return Err(Errno::EOPNOTSUPP);
    };
    // A bare prefix ("user.") names nothing.
    if rest.is_empty() {
        return Err(Errno::EINVAL);
    }
    Ok(ns)
}

fn user_ok(i: &Inode) -> bool {
    i.is_reg() || i.is_dir()
}

/// May `c` read attribute namespace `ns` of `i`? (`Ok(false)`: it reads as absent.)
fn may_read(c: &Caller, i: &Inode, ns: Ns) -> Result<bool, Errno> {
    match ns {
        Ns::User => {
            if !user_ok(i) {
                return Ok(false);
            }
            perm::check(c, i, amode::R_OK)?;
            Ok(true)
        }
        Ns::Trusted => Ok(c.uid == 0),
        Ns::Security => Ok(true),
    }
}

fn check_write(c: &Caller, i: &Inode, ns: Ns) -> Result<(), Errno> {
    match ns {
        Ns::User => {
            if !user_ok(i) {
                return Err(Errno::EPERM);
            }
            if i.is_dir() && i.mode & mode::S_ISVTX != 0 && !perm::owns(c, i) {
                return Err(Errno::EPERM);
            }
            perm::check(c, i, amode::W_OK)
        }
        Ns::Trusted | Ns::Security => {
            if c.uid == 0 {
                Ok(())
            } else {
                Err(Errno::EPERM)
            }
        }
    }
}

/// Bounds of `ino`'s attributes in `xattrs`.
fn span(ino: u64) -> (Vec<u8>, Vec<u8>) {
    (
        ino.to_be_bytes().to_vec(),
        ino.wrapping_add(1).to_be_bytes().to_vec(),
    )
}

/// Names of `ino`'s attributes (full names), in order.
fn names(root: &FsRoot, tx: &Tx<'_>, ino: u64) -> Vec<Vec<u8>> {
    let (lo, hi) = span(ino);
    root.xattrs
        .range(
            tx,
            Bound::Included(lo.as_slice()),
            Bound::Excluded(hi.as_slice()),
        )
        .map(|(k, _)| k.as_slice()[8..].to_vec())
        .collect()
}

/// Removes every attribute of `ino` (its inode is being freed).
pub(crate) fn free_all(root: &FsRoot, tx: &mut Tx<'_>, ino: u64) -> R<()> {
    if root.xattrs.is_empty() {
        return Ok(());
    }
    for n in names(root, tx, ino) {
        root.xattrs.remove(tx, &dkey(ino, &n))?;
    }
    Ok(())
}

impl FsCore {
    /// See [`fs_api::Fs::setxattr`].
    pub fn setxattr(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        let root = self.root();
        self.atomically(tx, |tx| {
            let mut i = root.inode(tx, ino)?;
            let ns = namespace(name)?;
            if value.len() > MAX_XATTR_VALUE {
                return Err(Errno::E2BIG.into());
            }
            if flags & !(xattr_flags::XATTR_CREATE | xattr_flags::XATTR_REPLACE) != 0 {
                return Err(Errno::EINVAL.into());
            }
            check_write(c, &i, ns)?;
            let key = dkey(ino, name);
            let exists = root.xattrs.contains_key(tx, &key);
            if exists && flags & xattr_flags::XATTR_CREATE != 0 {
                return Err(Errno::EEXIST.into());
            }
            if !exists && flags & xattr_flags::XATTR_REPLACE != 0 {
                return Err(Errno::ENODATA.into());
            }
            if !exists {
                let list: usize = names(root, tx, ino).iter().map(|n| n.len() + 1).sum();
                if list + name.len() + 1 > MAX_XATTR_LIST {
                    return Err(Errno::ENOSPC.into());
                }
            }
            root.xattrs.insert(tx, &key, value)?;
            i.ctime = now();
            root.put_inode(tx, ino, &i)?;
            Ok(())
        })
    }

    /// See [`fs_api::Fs::getxattr`].
    pub fn getxattr(
        &self,
        tx: &Tx<'_>,
        c: &Caller,
        ino: u64,
        name: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let root = self.root();
        let i = root.inode(tx, ino)?;
        let ns = namespace(name)?;
        if !may_read(c, &i, ns)? {
            return Err(Errno::ENODATA);
        }
        root.xattrs
            .get(tx, &dkey(ino, name))
            .map(|v| v.as_slice().to_vec())
            .ok_or(Errno::ENODATA)
    }

    /// See [`fs_api::Fs::listxattr`].
    pub fn listxattr(&self, tx: &Tx<'_>, c: &Caller, ino: u64) -> Result<Vec<u8>, Errno> {
        let root = self.root();
        root.inode(tx, ino)?;
        let mut out = Vec::new();
        for n in names(root, tx, ino) {
            if n.starts_with(b"trusted.") && c.uid != 0 {
                continue;
            }
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    /// See [`fs_api::Fs::removexattr`].
    pub fn removexattr(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        ino: u64,
        name: &[u8],
    ) -> Result<(), Errno> {
        let root = self.root();
        self.atomically(tx, |tx| {
            let mut i = root.inode(tx, ino)?;
            let ns = namespace(name)?;
            check_write(c, &i, ns)?;
            if !root.xattrs.remove(tx, &dkey(ino, name))? {
                return Err(Errno::ENODATA.into());
            }
            i.ctime = now();
            root.put_inode(tx, ino, &i)?;
            Ok(())
        })
    }

    /// See [`fs_api::Fs::fallocate`].
    pub fn fallocate(
        &self,
        tx: &mut Tx<'static>,
        fh: u64,
        fmode: u32,
        offset: u64,
        length: u64,
    ) -> Result<(), Errno> {
        let root = self.root();
        self.atomically(tx, |tx| {
            let h = self.handle(tx, fh)?;
            if h.flags & oflag::O_ACCMODE == oflag::O_RDONLY {
                return Err(Errno::EBADF.into());
            }
            let punch = fmode & falloc::PUNCH_HOLE != 0;
            if fmode & !(falloc::KEEP_SIZE | falloc::PUNCH_HOLE) != 0 {
                return Err(Errno::EOPNOTSUPP.into());
            }
            if punch && fmode & falloc::KEEP_SIZE == 0 {
                // Linux: PUNCH_HOLE must come with KEEP_SIZE.
                return Err(Errno::EOPNOTSUPP.into());
            }
            if length == 0 || offset > i64::MAX as u64 || length > i64::MAX as u64 {
                return Err(Errno::EINVAL.into());
            }
            let end = offset
                .checked_add(length)
                .filter(|&e| e <= MAX_FILE_SIZE)
                .ok_or(Errno::EFBIG)?;
            let mut i = root.inode(tx, h.ino)?;
            if i.is_dir() {
                return Err(Errno::EISDIR.into());
            }
            if !i.is_reg() {
                return Err(Errno::ENODEV.into());
            }
            let t = now();
            if punch {
                // Blocks allocated past the end (`KEEP_SIZE`) go too.
                punch_hole(root, tx, h.ino, &mut i, offset, end)?;
            } else {
                // Every hole in the range becomes a zeroed block.
                let zero = vec![0u8; BLOCK_SIZE];
                for b in offset / BS..end.div_ceil(BS) {
                    let key = bkey(h.ino, b);
                    if root.blocks.get(tx, &key).is_none() {
                        root.blocks.insert(tx, key, &zero)?;
                        i.blocks += 1;
                    }
                }
                if fmode & falloc::KEEP_SIZE == 0 && end > i.size {
                    i.size = end;
                    i.mtime = t;
                }
            }
            i.ctime = t;
            if punch {
                i.mtime = t;
            }
            root.put_inode(tx, h.ino, &i)?;
            Ok(())
        })
    }
}

/// Frees `[from, to)` of file `ino`: whole blocks go, the partial blocks at the ends are
/// zeroed over the range (only blocks present are visited: a hole costs nothing).
fn punch_hole(
    root: &FsRoot,
    tx: &mut Tx<'_>,
    ino: u64,
    i: &mut Inode,
    from: u64,
    to: u64,
) -> R<()> {
    if from >= to {
        return Ok(());
    }
    let (lo, hi) = (bkey(ino, from / BS), bkey(ino, (to - 1) / BS));
    let present: Vec<u128> = root
        .blocks
        .range(tx, Bound::Included(&lo), Bound::Included(&hi))
        .map(|(k, _)| *k)
        .collect();
    for key in present {
        let b = (key & u128::from(u64::MAX)) as u64;
        let (bs, be) = (b * BS, b * BS + BS);
        let (a, z) = (from.max(bs), to.min(be));
        if a == bs && z == be {
            root.blocks.remove(tx, &key)?;
            i.blocks -= 1;
        } else if let Some(buf) = root.blocks.get(tx, &key) {
            buf.zero(tx, (a - bs) as usize, (z - a) as usize)?;
        }
    }
    Ok(())
}
