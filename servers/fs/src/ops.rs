//! The operations: each takes the running transaction and changes the state only after every
//! check passed, so an error leaves nothing changed (even with tracking off, where nothing
//! could be undone). A heap that fills up mid-operation is rolled back to the operation's start
//! and answered `ENOSPC` (see [`FsCore::atomically`]).

use fs_api::{
    Attr, BLOCK_SIZE, Caller, Created, DirEntry, Errno, MAX_FILE_SIZE, MAX_IO, MAX_LINKS,
    MAX_READDIR, MAX_SYMLINK, SetAttr, StatFs, TimeSet, amode, mode, oflag, rename_flags,
};
use txipc_heap::{Heap, HeapError, Tx};

use crate::data;
use crate::perm::{self, check, check_dir_write, check_name, check_new_name, check_sticky};
use crate::state::{
    COOKIE_DOT, COOKIE_DOTDOT, COOKIE_FIRST, Fail, FsRoot, Handle, Inode, R, Time, lkey, now,
    split_listed,
};

/// The file system over its root object in a heap. Every method runs inside a transaction the
/// caller opened (the runtime's, or a test's).
#[derive(Debug, Clone, Copy)]
pub struct FsCore {
    heap: &'static Heap,
    root: &'static FsRoot,
}

impl FsCore {
    /// Finds the file system in `heap`, formatting it (empty root directory owned by root,
    /// mode 0755) if the heap holds none yet.
    ///
    /// # Errors
    /// Heap errors (a heap too small for the root, a heap of another server).
    pub fn attach(heap: &'static Heap) -> Result<FsCore, HeapError> {
        let root: &'static FsRoot = heap.root_or_init(|_| Ok(FsRoot::new()))?;
        if root.inodes.is_empty() {
            let mut tx = heap.begin(0)?;
            let mut dir = Inode::new(mode::S_IFDIR | 0o755, 0, 0, now());
            dir.nlink = 2;
            dir.parent = fs_api::ROOT_INO;
            root.inodes.insert(&mut tx, fs_api::ROOT_INO, dir)?;
            tx.commit()?;
        }
        Ok(FsCore { heap, root })
    }

    /// The state (for statistics and checks).
    pub fn root(&self) -> &'static FsRoot {
        self.root
    }

    /// Runs a changing operation all or nothing: on any error its partial updates are undone
    /// (back to a savepoint); a full heap or undo log answers `ENOSPC`. Any other heap error is
    /// a bug or a corrupted heap: it faults the server, and recovery rolls the request back.
    /// Counts the operation in `updates` when it succeeds.
    pub(crate) fn atomically<T>(
        &self,
        tx: &mut Tx<'static>,
        f: impl FnOnce(&mut Tx<'static>) -> R<T>,
    ) -> Result<T, Errno> {
        let sp = tx.savepoint().expect("savepoint");
        let r = f(tx).and_then(|v| {
            self.root.updates.update(tx, |n| n + 1)?;
            Ok(v)
        });
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                // Under tracking off nothing can be undone; every operation checks before it
                // changes anything, so only a full heap can leave a partial change there.
                let _ = tx.rollback_to(sp);
                match e {
                    Fail::Errno(e) => Err(e),
                    Fail::Heap(HeapError::Full { .. } | HeapError::LogFull { .. }) => {
                        Err(Errno::ENOSPC)
                    }
                    Fail::Heap(e) => panic!("fs: heap operation failed: {e}"),
                }
            }
        }
    }

    // ---- lookups ----

    /// See [`fs_api::Fs::lookup`].
    pub fn lookup(&self, tx: &Tx<'_>, c: &Caller, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
        let dir = self.root.dir(tx, parent)?;
        check_name(name)?;
        check(c, &dir, amode::X_OK)?;
        let ino = match name {
            b"." => parent,
            b".." => dir.parent,
            _ => self.root.find(tx, parent, name).ok_or(Errno::ENOENT)?.ino,
        };
        Ok(self.root.inode(tx, ino)?.attr(ino))
    }

    /// See [`fs_api::Fs::getattr`].
    pub fn getattr(&self, tx: &Tx<'_>, ino: u64) -> Result<Attr, Errno> {
        Ok(self.root.inode(tx, ino)?.attr(ino))
    }

    /// See [`fs_api::Fs::readlink`].
    pub fn readlink(&self, tx: &Tx<'_>, ino: u64) -> Result<Vec<u8>, Errno> {
        let i = self.root.inode(tx, ino)?;
        if i.kind() != mode::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let t = self.root.symlinks.get(tx, &ino).ok_or(Errno::EIO)?;
        Ok(t.as_slice().to_vec())
    }

    /// See [`fs_api::Fs::access`].
    pub fn access(&self, tx: &Tx<'_>, c: &Caller, ino: u64, mask: u32) -> Result<(), Errno> {
        let i = self.root.inode(tx, ino)?;
        if mask & !(amode::R_OK | amode::W_OK | amode::X_OK) != 0 {
            return Err(Errno::EINVAL);
        }
        if mask == 0 {
            return Ok(());
        }
        check(c, &i, mask)
    }

    /// See [`fs_api::Fs::readdir`].
    pub fn readdir(
        &self,
        tx: &Tx<'_>,
        c: &Caller,
        ino: u64,
        offset: u64,
        max: u32,
    ) -> Result<Vec<DirEntry>, Errno> {
        let dir = self.root.dir(tx, ino)?;
        check(c, &dir, amode::R_OK)?;
        let max = max.clamp(1, MAX_READDIR) as usize;
        let mut out = Vec::new();
        for (cookie, name, target) in [
            (COOKIE_DOT, &b"."[..], ino),
            (COOKIE_DOTDOT, b"..", dir.parent),
        ] {
            if offset < cookie && out.len() < max {
                out.push(DirEntry {
                    ino: target,
                    kind: mode::S_IFDIR,
                    name: name.into(),
                    next: cookie,
                });
            }
        }
        let lo = lkey(ino, offset.saturating_add(1).max(COOKIE_FIRST));
        let hi = lkey(ino, u64::MAX);
        for (k, v) in self.root.dirlist.range(
            tx,
            std::ops::Bound::Included(&lo),
            std::ops::Bound::Included(&hi),
        ) {
            if out.len() >= max {
                break;
            }
            let (child, name) = split_listed(v.as_slice());
            let kind = self.root.inode(tx, child).map_err(|_| Errno::EIO)?.kind();
            out.push(DirEntry {
                ino: child,
                kind,
                name: name.into(),
                next: (*k & u128::from(u64::MAX)) as u64,
            });
        }
        Ok(out)
    }

    /// See [`fs_api::Fs::statfs`].
    pub fn statfs(&self) -> StatFs {
        let s = self.heap.stats();
        let bs = BLOCK_SIZE as u64;
        let free = s.free_bytes / bs;
        StatFs {
            bsize: BLOCK_SIZE as u32,
            blocks: s.size / bs,
            bfree: free,
            bavail: free,
            files: self.root.inodes.len() as u64 + free,
            ffree: free,
            namelen: fs_api::MAX_NAME as u32,
        }
    }

    // ---- creating ----

    /// Checks that `c` may add `name` to directory `parent`; returns the directory.
    fn creatable(&self, tx: &Tx<'_>, c: &Caller, parent: u64, name: &[u8]) -> R<Inode> {
        let dir = self.root.dir(tx, parent)?;
        check_new_name(name)?;
        check(c, &dir, amode::X_OK)?;
        if self.root.find(tx, parent, name).is_some() {
            return Err(Errno::EEXIST.into());
        }
        check_dir_write(c, &dir)?;
        if dir.nlink == 0 {
            // A removed directory (still someone's cwd) takes no new entries.
            return Err(Errno::ENOENT.into());
        }
        Ok(dir)
    }

    /// Makes a new inode `name` in `parent` (checked by `creatable`).
    fn make(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        parent: u64,
        mut dir: Inode,
        name: &[u8],
        new: impl FnOnce(u32) -> Inode,
    ) -> R<(u64, Inode)> {
        let t = now();
        let ino = self.root.alloc_ino(tx)?;
        let mut i = new(perm::new_gid(c, &dir));
        i.uid = c.uid;
        i.atime = t;
        i.mtime = t;
        i.ctime = t;
        if i.is_dir() {
            i.parent = parent;
            dir.nlink += 1;
        }
        self.root.put_inode(tx, ino, &i)?;
        self.root.add_entry(tx, parent, &mut dir, name, ino)?;
        dir.mtime = t;
        dir.ctime = t;
        self.root.put_inode(tx, parent, &dir)?;
        Ok((ino, i))
    }

    /// See [`fs_api::Fs::mknod`].
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        parent: u64,
        name: &[u8],
        mode_: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<Attr, Errno> {
        self.atomically(tx, |tx| {
            let dir = self.creatable(tx, c, parent, name)?;
            let kind = match mode_ & mode::S_IFMT {
                0 => mode::S_IFREG,
                k @ (mode::S_IFREG | mode::S_IFIFO | mode::S_IFSOCK) => k,
                k @ (mode::S_IFCHR | mode::S_IFBLK) => {
                    if c.uid != 0 {
                        return Err(Errno::EPERM.into());
                    }
                    k
                }
                _ => return Err(Errno::EINVAL.into()),
            };
            let (ino, i) = self.make(tx, c, parent, dir, name, |gid| {
                let mut i = Inode::new(perm::new_mode(c, kind, mode_, umask, gid), 0, gid, now());
                if kind == mode::S_IFCHR || kind == mode::S_IFBLK {
                    i.rdev = rdev;
                }
                i
            })?;
            Ok(i.attr(ino))
        })
    }

    /// See [`fs_api::Fs::mkdir`].
    pub fn mkdir(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        parent: u64,
        name: &[u8],
        mode_: u32,
        umask: u32,
    ) -> Result<Attr, Errno> {
        self.atomically(tx, |tx| {
            let dir = self.creatable(tx, c, parent, name)?;
            if dir.nlink >= MAX_LINKS {
                return Err(Errno::EMLINK.into());
            }
            let inherit = dir.mode & mode::S_ISGID;
            let (ino, i) = self.make(tx, c, parent, dir, name, |gid| {
                let mut i = Inode::new(
                    perm::new_mode(c, mode::S_IFDIR, mode_, umask, gid) | inherit,
                    0,
                    gid,
                    now(),
                );
                i.nlink = 2;
                i
            })?;
            Ok(i.attr(ino))
        })
    }

    /// See [`fs_api::Fs::symlink`].
    pub fn symlink(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<Attr, Errno> {
        self.atomically(tx, |tx| {
            if target.is_empty() {
                return Err(Errno::ENOENT.into());
            }
            if target.len() > MAX_SYMLINK {
                return Err(Errno::ENAMETOOLONG.into());
            }
            let dir = self.creatable(tx, c, parent, name)?;
            let (ino, i) = self.make(tx, c, parent, dir, name, |gid| {
                let mut i = Inode::new(mode::S_IFLNK | 0o777, 0, gid, now());
                i.size = target.len() as u64;
                i
            })?;
            self.root.symlinks.insert(tx, ino, target)?;
            Ok(i.attr(ino))
        })
    }

    /// See [`fs_api::Fs::create`].
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        parent: u64,
        name: &[u8],
        mode_: u32,
        umask: u32,
        flags: u32,
    ) -> Result<Created, Errno> {
        self.atomically(tx, |tx| {
            let dir = self.root.dir(tx, parent)?;
            check_new_name(name)?;
            check(c, &dir, amode::X_OK)?;
            if let Some(d) = self.root.find(tx, parent, name) {
                // O_CREAT on an existing file opens it, unless O_EXCL.
                if flags & oflag::O_EXCL != 0 {
                    return Err(Errno::EEXIST.into());
                }
                let fh = self.open_inner(tx, c, d.ino, flags)?;
                let attr = self.root.inode(tx, d.ino)?.attr(d.ino);
                return Ok(Created { attr, fh });
            }
            let dir = self.creatable(tx, c, parent, name).map(|_| dir)?;
            let (ino, _) = self.make(tx, c, parent, dir, name, |gid| {
                Inode::new(
                    perm::new_mode(c, mode::S_IFREG, mode_, umask, gid),
                    0,
                    gid,
                    now(),
                )
            })?;
            // The creator may write the new file whatever its mode (POSIX): no permission
            // check on this open.
            let fh = self.new_handle(tx, ino, flags & !oflag::O_TRUNC)?;
            let attr = self.root.inode(tx, ino)?.attr(ino);
            Ok(Created { attr, fh })
        })
    }

    /// See [`fs_api::Fs::link`].
    pub fn link(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        ino: u64,
        newparent: u64,
        newname: &[u8],
    ) -> Result<Attr, Errno> {
        self.atomically(tx, |tx| {
            let mut i = self.root.inode(tx, ino)?;
            let mut dir = self.creatable(tx, c, newparent, newname)?;
            if i.is_dir() {
                return Err(Errno::EPERM.into());
            }
            if i.nlink == 0 {
                return Err(Errno::ENOENT.into());
            }
            if i.nlink >= MAX_LINKS {
                return Err(Errno::EMLINK.into());
            }
            let t = now();
            i.nlink += 1;
            i.ctime = t;
            self.root.put_inode(tx, ino, &i)?;
            self.root.add_entry(tx, newparent, &mut dir, newname, ino)?;
            dir.mtime = t;
            dir.ctime = t;
            self.root.put_inode(tx, newparent, &dir)?;
            Ok(i.attr(ino))
        })
    }

    // ---- removing and renaming ----

    /// See [`fs_api::Fs::unlink`].
    pub fn unlink(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        parent: u64,
        name: &[u8],
    ) -> Result<(), Errno> {
        self.atomically(tx, |tx| {
            let mut dir = self.root.dir(tx, parent)?;
            check_name(name)?;
            check(c, &dir, amode::X_OK)?;
            let d = self.root.find(tx, parent, name).ok_or(Errno::ENOENT)?;
            let victim = self.root.inode(tx, d.ino)?;
            if victim.is_dir() {
                return Err(Errno::EISDIR.into());
            }
            check_dir_write(c, &dir)?;
            check_sticky(c, &dir, &victim)?;
            let t = now();
            self.root.remove_entry(tx, parent, &mut dir, name, d)?;
            dir.mtime = t;
            dir.ctime = t;
            self.root.put_inode(tx, parent, &dir)?;
            self.root.unlinked(tx, d.ino, victim, t)
        })
    }

    /// See [`fs_api::Fs::rmdir`].
    pub fn rmdir(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        parent: u64,
        name: &[u8],
    ) -> Result<(), Errno> {
        self.atomically(tx, |tx| {
            let mut dir = self.root.dir(tx, parent)?;
            check_name(name)?;
            if name == b"." {
                return Err(Errno::EINVAL.into());
            }
            if name == b".." {
                return Err(Errno::ENOTEMPTY.into());
            }
            check(c, &dir, amode::X_OK)?;
            let d = self.root.find(tx, parent, name).ok_or(Errno::ENOENT)?;
            let victim = self.root.inode(tx, d.ino)?;
            if !victim.is_dir() {
                return Err(Errno::ENOTDIR.into());
            }
            if victim.entries > 0 {
                return Err(Errno::ENOTEMPTY.into());
            }
            check_dir_write(c, &dir)?;
            check_sticky(c, &dir, &victim)?;
            let t = now();
            self.root.remove_entry(tx, parent, &mut dir, name, d)?;
            dir.nlink -= 1;
            dir.mtime = t;
            dir.ctime = t;
            self.root.put_inode(tx, parent, &dir)?;
            self.root.unlinked(tx, d.ino, victim, t)
        })
    }

    /// Whether directory `anc` is `ino` or one of its ancestors.
    fn is_ancestor(&self, tx: &Tx<'_>, anc: u64, mut ino: u64) -> R<bool> {
        // Bounded by the number of inodes: a cycle would be a corrupted tree.
        for _ in 0..=self.root.inodes.len() {
            if ino == anc {
                return Ok(true);
            }
            if ino == fs_api::ROOT_INO {
                return Ok(false);
            }
            ino = self.root.inode(tx, ino)?.parent;
        }
        Err(Errno::EIO.into())
    }

    /// See [`fs_api::Fs::rename`].
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        use rename_flags::{RENAME_EXCHANGE, RENAME_NOREPLACE};
        self.atomically(tx, |tx| {
            if flags & !(RENAME_EXCHANGE | RENAME_NOREPLACE) != 0
                || flags == RENAME_EXCHANGE | RENAME_NOREPLACE
            {
                return Err(Errno::EINVAL.into());
            }
            let sdir = self.root.dir(tx, parent)?;
            let ddir = self.root.dir(tx, newparent)?;
            check_name(name)?;
            check_name(newname)?;
            for n in [name, newname] {
                if n == b"." || n == b".." {
                    return Err(Errno::EINVAL.into());
                }
            }
            check(c, &sdir, amode::X_OK)?;
            check(c, &ddir, amode::X_OK)?;
            let sd = self.root.find(tx, parent, name).ok_or(Errno::ENOENT)?;
            let src = self.root.inode(tx, sd.ino)?;
            let target = self.root.find(tx, newparent, newname);
            check_dir_write(c, &sdir)?;
            check_dir_write(c, &ddir)?;
            check_sticky(c, &sdir, &src)?;
            if let Some(td) = target {
                check_sticky(c, &ddir, &self.root.inode(tx, td.ino)?)?;
            }
            let exchange = flags & RENAME_EXCHANGE != 0;
            if exchange && target.is_none() {
                return Err(Errno::ENOENT.into());
            }
            if flags & RENAME_NOREPLACE != 0 && target.is_some() {
                return Err(Errno::EEXIST.into());
            }
            // A directory cannot move below itself.
            if src.is_dir() && parent != newparent && self.is_ancestor(tx, sd.ino, newparent)? {
                return Err(Errno::EINVAL.into());
            }
            if let Some(td) = target {
                if td.ino == sd.ino {
                    // Two links of one file (or the entry itself): POSIX says do nothing.
                    return Ok(());
                }
                let tgt = self.root.inode(tx, td.ino)?;
                if exchange {
                    if tgt.is_dir()
                        && parent != newparent
                        && self.is_ancestor(tx, td.ino, parent)?
                    {
                        return Err(Errno::EINVAL.into());
                    }
                    return self.exchange(
                        tx,
                        c,
                        (parent, name, sd, src),
                        (newparent, newname, td, tgt),
                    );
                }
                match (src.is_dir(), tgt.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR.into()),
                    (false, true) => return Err(Errno::EISDIR.into()),
                    (true, true) if tgt.entries > 0 => return Err(Errno::ENOTEMPTY.into()),
                    _ => {}
                }
            }
            // A directory that changes parent needs write permission on itself (its `..`).
            if src.is_dir() && parent != newparent {
                check(c, &src, amode::W_OK)?;
                if target.is_none() && ddir.nlink >= MAX_LINKS {
                    return Err(Errno::EMLINK.into());
                }
            }

            // Every check passed: change.
            let t = now();
            let mut sdir = sdir;
            self.root.remove_entry(tx, parent, &mut sdir, name, sd)?;
            if src.is_dir() && parent != newparent {
                sdir.nlink -= 1;
            }
            sdir.mtime = t;
            sdir.ctime = t;
            self.root.put_inode(tx, parent, &sdir)?;
            // Re-read: when both entries are in one directory, sdir's changes are in it now.
            let mut ddir = self.root.inode(tx, newparent)?;
            if let Some(td) = target {
                let tgt = self.root.inode(tx, td.ino)?;
                self.root
                    .remove_entry(tx, newparent, &mut ddir, newname, td)?;
                if tgt.is_dir() {
                    ddir.nlink -= 1;
                }
                // Write ddir first: unlinked() may re-read nothing of it, but keep one order.
                self.root.put_inode(tx, newparent, &ddir)?;
                self.root.unlinked(tx, td.ino, tgt, t)?;
                ddir = self.root.inode(tx, newparent)?;
            }
            self.root
                .add_entry(tx, newparent, &mut ddir, newname, sd.ino)?;
            if src.is_dir() && parent != newparent {
                ddir.nlink += 1;
            }
            ddir.mtime = t;
            ddir.ctime = t;
            self.root.put_inode(tx, newparent, &ddir)?;
            let mut moved = self.root.inode(tx, sd.ino)?;
            moved.ctime = t;
            if moved.is_dir() {
                moved.parent = newparent;
            }
            self.root.put_inode(tx, sd.ino, &moved)?;
            Ok(())
        })
    }

    /// `RENAME_EXCHANGE`: the two entries swap inodes (each keeps its name and position).
    fn exchange(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        (p1, n1, d1, i1): (u64, &[u8], crate::state::Dirent, Inode),
        (p2, n2, d2, i2): (u64, &[u8], crate::state::Dirent, Inode),
    ) -> R<()> {
        if p1 != p2 {
            for i in [&i1, &i2] {
                if i.is_dir() {
                    check(c, i, amode::W_OK)?;
                }
            }
        }
        let t = now();
        // Replace each entry by one pointing at the other inode.
        let mut a = self.root.inode(tx, p1)?;
        self.root.remove_entry(tx, p1, &mut a, n1, d1)?;
        self.root.add_entry(tx, p1, &mut a, n1, d2.ino)?;
        a.mtime = t;
        a.ctime = t;
        self.root.put_inode(tx, p1, &a)?;
        let mut b = self.root.inode(tx, p2)?;
        self.root.remove_entry(tx, p2, &mut b, n2, d2)?;
        self.root.add_entry(tx, p2, &mut b, n2, d1.ino)?;
        b.mtime = t;
        b.ctime = t;
        self.root.put_inode(tx, p2, &b)?;
        if p1 != p2 {
            // Link counts of the parents follow the directories that moved.
            let dirs1 = u32::from(i1.is_dir());
            let dirs2 = u32::from(i2.is_dir());
            let mut a = self.root.inode(tx, p1)?;
            a.nlink = a.nlink - dirs1 + dirs2;
            self.root.put_inode(tx, p1, &a)?;
            let mut b = self.root.inode(tx, p2)?;
            b.nlink = b.nlink - dirs2 + dirs1;
            self.root.put_inode(tx, p2, &b)?;
        }
        for (ino, newp) in [(d1.ino, p2), (d2.ino, p1)] {
            let mut i = self.root.inode(tx, ino)?;
            i.ctime = t;
            if i.is_dir() {
                i.parent = newp;
            }
            self.root.put_inode(tx, ino, &i)?;
        }
        Ok(())
    }

    // ---- attributes ----

    /// See [`fs_api::Fs::setattr`].
    pub fn setattr(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        ino: u64,
        set: &SetAttr,
    ) -> Result<Attr, Errno> {
        self.atomically(tx, |tx| {
            let mut i = self.root.inode(tx, ino)?;
            let t = now();
            // Check everything first.
            if set.mode.is_some() && !perm::owns(c, &i) {
                return Err(Errno::EPERM.into());
            }
            if let Some(uid) = set.uid
                && uid != i.uid
                && c.uid != 0
            {
                return Err(Errno::EPERM.into());
            }
            if let Some(gid) = set.gid
                && gid != i.gid
                && c.uid != 0
                && !(c.uid == i.uid && c.in_group(gid))
            {
                return Err(Errno::EPERM.into());
            }
            if let Some(size) = set.size {
                if i.is_dir() {
                    return Err(Errno::EISDIR.into());
                }
                if !i.is_reg() {
                    return Err(Errno::EINVAL.into());
                }
                if size > MAX_FILE_SIZE {
                    return Err(Errno::EFBIG.into());
                }
                match set.fh {
                    Some(fh) => {
                        let h = self.handle(tx, fh)?;
                        if h.ino != ino || h.flags & oflag::O_ACCMODE == oflag::O_RDONLY {
                            return Err(Errno::EBADF.into());
                        }
                    }
                    None => check(c, &i, amode::W_OK)?,
                }
            }
            for ts in [set.atime, set.mtime].into_iter().flatten() {
                match ts {
                    TimeSet::Now => {
                        if !perm::owns(c, &i) && !perm::may(c, &i, amode::W_OK) {
                            return Err(Errno::EACCES.into());
                        }
                    }
                    TimeSet::At(_) => {
                        if !perm::owns(c, &i) {
                            return Err(Errno::EPERM.into());
                        }
                    }
                }
            }

            // Then change.
            if let Some(m) = set.mode {
                let mut m = m & mode::PERM;
                if c.uid != 0 && !c.in_group(i.gid) {
                    m &= !mode::S_ISGID;
                }
                i.mode = i.kind() | m;
                i.ctime = t;
            }
            if set.uid.is_some() || set.gid.is_some() {
                i.uid = set.uid.unwrap_or(i.uid);
                i.gid = set.gid.unwrap_or(i.gid);
                if !i.is_dir() {
                    i.mode &= !mode::S_ISUID;
                    if i.mode & 0o010 != 0 {
                        i.mode &= !mode::S_ISGID;
                    }
                }
                i.ctime = t;
            }
            if let Some(size) = set.size {
                data::truncate(self.root, tx, ino, &mut i, size)?;
                i.mtime = t;
                i.ctime = t;
            }
            let at = |ts: TimeSet| match ts {
                TimeSet::Now => t,
                TimeSet::At(x) => Time::from(x),
            };
            if let Some(a) = set.atime {
                i.atime = at(a);
                i.ctime = t;
            }
            if let Some(m) = set.mtime {
                i.mtime = at(m);
                i.ctime = t;
            }
            self.root.put_inode(tx, ino, &i)?;
            Ok(i.attr(ino))
        })
    }

    // ---- handles and data ----

    pub(crate) fn handle(&self, tx: &Tx<'_>, fh: u64) -> Result<Handle, Errno> {
        self.root.handles.get(tx, &fh).copied().ok_or(Errno::EBADF)
    }

    fn new_handle(&self, tx: &mut Tx<'static>, ino: u64, flags: u32) -> R<u64> {
        let fh = self.root.next_fh.get();
        self.root.next_fh.set(tx, fh + 1)?;
        self.root.handles.insert(
            tx,
            fh,
            Handle {
                ino,
                flags,
                _pad: 0,
            },
        )?;
        let mut i = self.root.inode(tx, ino)?;
        i.open += 1;
        if flags & oflag::O_TRUNC != 0 && i.is_reg() && i.size > 0 {
            let t = now();
            data::truncate(self.root, tx, ino, &mut i, 0)?;
            i.mtime = t;
            i.ctime = t;
        }
        self.root.put_inode(tx, ino, &i)?;
        Ok(fh)
    }

    fn open_inner(&self, tx: &mut Tx<'static>, c: &Caller, ino: u64, flags: u32) -> R<u64> {
        let i = self.root.inode(tx, ino)?;
        let acc = flags & oflag::O_ACCMODE;
        let want = match acc {
            oflag::O_RDONLY => amode::R_OK,
            oflag::O_WRONLY => amode::W_OK,
            oflag::O_RDWR => amode::R_OK | amode::W_OK,
            _ => return Err(Errno::EINVAL.into()),
        };
        if i.is_dir() && acc != oflag::O_RDONLY {
            return Err(Errno::EISDIR.into());
        }
        if i.kind() == mode::S_IFLNK {
            return Err(Errno::ELOOP.into());
        }
        let trunc = flags & oflag::O_TRUNC != 0 && i.is_reg();
        check(c, &i, if trunc { want | amode::W_OK } else { want })?;
        self.new_handle(tx, ino, flags)
    }

    /// See [`fs_api::Fs::open`].
    pub fn open(
        &self,
        tx: &mut Tx<'static>,
        c: &Caller,
        ino: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        self.atomically(tx, |tx| self.open_inner(tx, c, ino, flags))
    }

    /// See [`fs_api::Fs::release`].
    pub fn release(&self, tx: &mut Tx<'static>, fh: u64) -> Result<(), Errno> {
        self.atomically(tx, |tx| {
            let h = self.handle(tx, fh)?;
            self.root.handles.remove(tx, &fh)?;
            let mut i = self.root.inode(tx, h.ino)?;
            i.open = i.open.saturating_sub(1);
            self.root.put_inode(tx, h.ino, &i)?;
            self.root.reap(tx, h.ino, &i)
        })
    }

    /// See [`fs_api::Fs::fsync`].
    pub fn fsync(&self, tx: &Tx<'_>, fh: u64) -> Result<(), Errno> {
        self.handle(tx, fh).map(|_| ())
    }

    /// See [`fs_api::Fs::read`].
    pub fn read(&self, tx: &Tx<'_>, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let h = self.handle(tx, fh)?;
        if h.flags & oflag::O_ACCMODE == oflag::O_WRONLY {
            return Err(Errno::EBADF);
        }
        let i = self.root.inode(tx, h.ino)?;
        if i.is_dir() {
            return Err(Errno::EISDIR);
        }
        let len = u64::from(size).min(MAX_IO as u64);
        Ok(data::read(self.root, tx, h.ino, i.size, offset, len))
    }

    /// See [`fs_api::Fs::write`].
    pub fn write(
        &self,
        tx: &mut Tx<'static>,
        fh: u64,
        offset: u64,
        bytes: &[u8],
    ) -> Result<u32, Errno> {
        self.atomically(tx, |tx| {
            let h = self.handle(tx, fh)?;
            if h.flags & oflag::O_ACCMODE == oflag::O_RDONLY {
                return Err(Errno::EBADF.into());
            }
            if bytes.len() > MAX_IO {
                return Err(Errno::EINVAL.into());
            }
            let mut i = self.root.inode(tx, h.ino)?;
            if !i.is_reg() {
                return Err(Errno::EINVAL.into());
            }
            let off = if h.flags & oflag::O_APPEND != 0 {
                i.size
            } else {
                offset
            };
            let end = off
                .checked_add(bytes.len() as u64)
                .filter(|&e| e <= MAX_FILE_SIZE)
                .ok_or(Errno::EFBIG)?;
            if bytes.is_empty() {
                return Ok(0);
            }
            let created = data::write(self.root, tx, h.ino, off, bytes)?;
            let t = now();
            i.blocks += created;
            i.size = i.size.max(end);
            i.mtime = t;
            i.ctime = t;
            // Set-id bits are not touched here: the kernel clears them (with a setattr) when a
            // caller without CAP_FSETID writes, and only it knows the writer's capabilities.
            self.root.put_inode(tx, h.ino, &i)?;
            Ok(bytes.len() as u32)
        })
    }
}
