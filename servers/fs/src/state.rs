//! The persistent layout of the file system and its small accessors.
//!
//! Everything lives in seven ordered maps of the recoverable heap (typed tracking: every change
//! logs exactly the bytes it overwrites):
//!
//! | map | key | value |
//! | --- | --- | --- |
//! | `inodes` | inode number | [`Inode`] (fixed-size record, replaced whole) |
//! | `dirents` | parent inode (8 bytes, big-endian) ++ name | [`Dirent`] { inode, cookie } |
//! | `dirlist` | parent inode << 64 \| cookie | inode (8 bytes, little-endian) ++ name |
//! | `blocks` | inode << 64 \| block number | [`PBuf`] of [`BLOCK_SIZE`] bytes, written in place |
//! | `symlinks` | inode number | target bytes |
//! | `handles` | handle number | [`Handle`] { inode, open flags } |
//! | `xattrs` | inode (8 bytes, big-endian) ++ attribute name | value bytes |
//!
//! `dirents` answers lookups by name; `dirlist` lists a directory in the order entries were
//! made, by *cookie*: each entry gets the next cookie of its directory when it is added and
//! keeps it, so a `readdir` position (the cookie of the last entry returned) stays valid while
//! other entries come and go. Cookies 1 and 2 are `.` and `..`; real entries start at 3.
//!
//! A file's data is its blocks: block `b` holds bytes `b·4096 .. (b+1)·4096`. A block that was
//! never written is a hole (reads as zeros) and costs nothing; `Inode::blocks` counts the
//! blocks present. Bytes of a present block past the file's size are always zero (truncate
//! zeroes the tail of the block it cuts), so growing a file again never shows old data.

use fs_api::{Attr, BLOCK_SIZE, Errno, Timespec, mode};
use txipc_heap::{HeapError, PBTreeMap, PBuf, PBytes, PCell, PVec, Persistent, Tx};

/// Cookie of `.` in a directory listing.
pub(crate) const COOKIE_DOT: u64 = 1;
/// Cookie of `..`.
pub(crate) const COOKIE_DOTDOT: u64 = 2;
/// First cookie of a real entry.
pub(crate) const COOKIE_FIRST: u64 = 3;

/// The file system's root object in the heap.
#[derive(Persistent)]
#[repr(C)]
pub struct FsRoot {
    pub(crate) inodes: PBTreeMap<u64, Inode>,
    pub(crate) dirents: PBTreeMap<PBytes, Dirent>,
    pub(crate) dirlist: PBTreeMap<u128, PBytes>,
    pub(crate) blocks: PBTreeMap<u128, PBuf>,
    pub(crate) symlinks: PBTreeMap<u64, PBytes>,
    pub(crate) handles: PBTreeMap<u64, Handle>,
    pub(crate) xattrs: PBTreeMap<PBytes, PBytes>,
    pub(crate) next_ino: PCell<u64>,
    pub(crate) next_fh: PCell<u64>,
    /// Requests that changed state (committed ones only, so exactly once per request).
    pub(crate) updates: PCell<u64>,
    /// Results of the last requests that named themselves (`fs_api::RequestId`), a ring.
    pub(crate) replay: PVec<Replay>,
    pub(crate) replay_next: PCell<u64>,
}

/// Most bytes of a recorded result (the encoding of `Result<Created, Errno>` is under 200).
pub(crate) const REPLAY_BYTES: usize = 232;

/// One recorded result.
#[derive(Persistent, Clone, Copy, Debug)]
#[repr(C)]
pub struct Replay {
    pub(crate) session: u64,
    pub(crate) unique: u64,
    pub(crate) len: u32,
    pub(crate) _pad: u32,
    pub(crate) bytes: [u8; REPLAY_BYTES],
}

impl FsRoot {
    /// An empty root (the root directory is added by [`crate::FsCore::attach`]).
    pub fn new() -> FsRoot {
        FsRoot {
            inodes: PBTreeMap::new(),
            dirents: PBTreeMap::new(),
            dirlist: PBTreeMap::new(),
            blocks: PBTreeMap::new(),
            symlinks: PBTreeMap::new(),
            handles: PBTreeMap::new(),
            xattrs: PBTreeMap::new(),
            next_ino: PCell::new(fs_api::ROOT_INO + 1),
            next_fh: PCell::new(1),
            updates: PCell::new(0),
            replay: PVec::new(),
            replay_next: PCell::new(0),
        }
    }
}

impl Default for FsRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FsRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsRoot")
            .field("inodes", &self.inodes.len())
            .field("entries", &self.dirents.len())
            .field("blocks", &self.blocks.len())
            .field("handles", &self.handles.len())
            .finish()
    }
}

/// One inode. Stored by value in `inodes`; a change writes the whole record back.
#[derive(Persistent, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Inode {
    pub(crate) mode: u32,
    pub(crate) nlink: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    /// Data blocks present.
    pub(crate) blocks: u64,
    pub(crate) atime: Time,
    pub(crate) mtime: Time,
    pub(crate) ctime: Time,
    pub(crate) rdev: u32,
    /// Open handles.
    pub(crate) open: u32,
    /// Directories: the parent (the root is its own parent).
    pub(crate) parent: u64,
    /// Directories: cookie of the next entry.
    pub(crate) next_cookie: u64,
    /// Directories: entries (not counting `.` and `..`).
    pub(crate) entries: u64,
}

/// A timestamp in the heap.
#[derive(Persistent, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Time {
    pub(crate) sec: i64,
    pub(crate) nsec: u64,
}

impl From<Timespec> for Time {
    fn from(t: Timespec) -> Time {
        Time {
            sec: t.sec,
            nsec: u64::from(t.nsec),
        }
    }
}

impl From<Time> for Timespec {
    fn from(t: Time) -> Timespec {
        Timespec {
            sec: t.sec,
            nsec: t.nsec as u32,
        }
    }
}

/// The current time.
pub(crate) fn now() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time {
        sec: d.as_secs() as i64,
        nsec: u64::from(d.subsec_nanos()),
    }
}

impl Inode {
    /// A new inode of type and permission `mode`, owned by `uid:gid`, all times `t`.
    pub(crate) fn new(mode: u32, uid: u32, gid: u32, t: Time) -> Inode {
        Inode {
            mode,
            nlink: 1,
            uid,
            gid,
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            open: 0,
            parent: 0,
            next_cookie: COOKIE_FIRST,
            entries: 0,
        }
    }

    pub(crate) fn kind(&self) -> u32 {
        self.mode & mode::S_IFMT
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.kind() == mode::S_IFDIR
    }

    pub(crate) fn is_reg(&self) -> bool {
        self.kind() == mode::S_IFREG
    }

    pub(crate) fn attr(&self, ino: u64) -> Attr {
        Attr {
            ino,
            size: self.size,
            blocks: self.blocks * (BLOCK_SIZE as u64 / 512),
            atime: self.atime.into(),
            mtime: self.mtime.into(),
            ctime: self.ctime.into(),
            mode: self.mode,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
        }
    }
}

/// A directory entry's value in `dirents`.
#[derive(Persistent, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Dirent {
    pub(crate) ino: u64,
    pub(crate) cookie: u64,
}

/// An open handle.
#[derive(Persistent, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Handle {
    pub(crate) ino: u64,
    pub(crate) flags: u32,
    pub(crate) _pad: u32,
}

/// Why an operation failed inside the server: an errno for the caller, or a heap error
/// (a full heap becomes `ENOSPC`; anything else is a fault).
#[derive(Debug)]
pub(crate) enum Fail {
    Errno(Errno),
    Heap(HeapError),
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Fail {
        Fail::Errno(e)
    }
}

impl From<HeapError> for Fail {
    fn from(e: HeapError) -> Fail {
        Fail::Heap(e)
    }
}

pub(crate) type R<T> = Result<T, Fail>;

/// Key of `parent/name` in `dirents`.
pub(crate) fn dkey(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// Key of a listing position.
pub(crate) fn lkey(parent: u64, cookie: u64) -> u128 {
    (u128::from(parent) << 64) | u128::from(cookie)
}

/// Key of block `b` of `ino`.
pub(crate) fn bkey(ino: u64, b: u64) -> u128 {
    (u128::from(ino) << 64) | u128::from(b)
}

/// Splits a `dirlist` value into the inode and the name.
pub(crate) fn split_listed(v: &[u8]) -> (u64, &[u8]) {
    let (i, name) = v.split_at(8);
    (u64::from_le_bytes(i.try_into().expect("8 bytes")), name)
}

impl FsRoot {
    /// Committed changing requests so far.
    pub fn updates_for_tests(&self) -> u64 {
        self.updates.get()
    }

    /// Extended attributes stored, over all inodes.
    pub fn xattr_count_for_tests(&self) -> usize {
        self.xattrs.len()
    }

    pub(crate) fn inode(&self, tx: &Tx<'_>, ino: u64) -> Result<Inode, Errno> {
        self.inodes.get(tx, &ino).copied().ok_or(Errno::ENOENT)
    }

    pub(crate) fn put_inode(&self, tx: &mut Tx<'_>, ino: u64, i: &Inode) -> R<()> {
        self.inodes.insert(tx, ino, *i)?;
        Ok(())
    }

    pub(crate) fn dir(&self, tx: &Tx<'_>, ino: u64) -> Result<Inode, Errno> {
        let i = self.inode(tx, ino)?;
        if !i.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(i)
    }

    pub(crate) fn find(&self, tx: &Tx<'_>, parent: u64, name: &[u8]) -> Option<Dirent> {
        self.dirents.get(tx, &dkey(parent, name)).copied()
    }

    pub(crate) fn alloc_ino(&self, tx: &Tx<'_>) -> R<u64> {
        let n = self.next_ino.get();
        self.next_ino.set(tx, n + 1)?;
        Ok(n)
    }

    /// Adds `parent/name → ino` (the caller updates the parent's times and link count, and
    /// writes `dir` back).
    pub(crate) fn add_entry(
        &self,
        tx: &mut Tx<'_>,
        parent: u64,
        dir: &mut Inode,
        name: &[u8],
        ino: u64,
    ) -> R<()> {
        let cookie = dir.next_cookie;
        dir.next_cookie += 1;
        dir.entries += 1;
        self.dirents
            .insert(tx, &dkey(parent, name), Dirent { ino, cookie })?;
        let mut v = Vec::with_capacity(8 + name.len());
        v.extend_from_slice(&ino.to_le_bytes());
        v.extend_from_slice(name);
        self.dirlist.insert(tx, lkey(parent, cookie), &v)?;
        Ok(())
    }

    /// Removes `parent/name` (found as `d`).
    pub(crate) fn remove_entry(
        &self,
        tx: &mut Tx<'_>,
        parent: u64,
        dir: &mut Inode,
        name: &[u8],
        d: Dirent,
    ) -> R<()> {
        self.dirents.remove(tx, &dkey(parent, name))?;
        self.dirlist.remove(tx, &lkey(parent, d.cookie))?;
        dir.entries -= 1;
        Ok(())
    }

    /// Drops one link of `ino` (already re-read into `i`); frees the inode and its data when
    /// no link and no handle is left. Writes the inode back otherwise.
    pub(crate) fn unlinked(&self, tx: &mut Tx<'_>, ino: u64, mut i: Inode, t: Time) -> R<()> {
        i.nlink = i.nlink.saturating_sub(1);
        if i.is_dir() {
            // A removed directory has no links left: its own `.` goes with it.
            i.nlink = 0;
        }
        i.ctime = t;
        self.put_inode(tx, ino, &i)?;
        self.reap(tx, ino, &i)
    }

    /// The recorded result of request `(session, unique)`, if it is in the ring.
    pub(crate) fn replayed(&self, tx: &Tx<'_>, session: u64, unique: u64) -> Option<Vec<u8>> {
        self.replay
            .iter(tx)
            .find(|r| r.len > 0 && r.session == session && r.unique == unique)
            .map(|r| r.bytes[..r.len as usize].to_vec())
    }

    /// Records the result of request `(session, unique)` (a result too long is not recorded:
    /// none is, today).
    pub(crate) fn record(&self, tx: &mut Tx<'_>, session: u64, unique: u64, bytes: &[u8]) -> R<()> {
        if bytes.is_empty() || bytes.len() > REPLAY_BYTES {
            return Ok(());
        }
        let mut r = Replay {
            session,
            unique,
            len: bytes.len() as u32,
            _pad: 0,
            bytes: [0; REPLAY_BYTES],
        };
        r.bytes[..bytes.len()].copy_from_slice(bytes);
        let n = self.replay_next.get();
        let i = (n % fs_api::REPLAY_SLOTS as u64) as usize;
        if self.replay.len() < fs_api::REPLAY_SLOTS {
            self.replay.push(tx, r)?;
        } else {
            self.replay.set(tx, i, r)?;
        }
        self.replay_next.set(tx, n + 1)?;
        Ok(())
    }

    /// Frees `ino` if it has neither links nor handles.
    pub(crate) fn reap(&self, tx: &mut Tx<'_>, ino: u64, i: &Inode) -> R<()> {
        if i.nlink > 0 || i.open > 0 {
            return Ok(());
        }
        crate::data::free_blocks_from(self, tx, ino, 0)?;
        crate::xattr::free_all(self, tx, ino)?;
        self.symlinks.remove(tx, &ino)?;
        self.inodes.remove(tx, &ino)?;
        Ok(())
    }
}
