//! The file-system logic in process, on a real recoverable heap: errno cases, rename and link
//! edge cases, permissions for a non-root caller, sparse and large files, a full heap.

use std::cell::Cell;
use std::os::fd::OwnedFd;

use fs_api::{
    Attr, BLOCK_SIZE, Caller, Errno, ROOT_INO, SetAttr, TimeSet, Timespec, mode, oflag,
    rename_flags,
};
use fs_server::FsCore;
use txipc_heap::{Heap, Tracking, Tx};

struct T {
    heap: &'static Heap,
    fs: FsCore,
    txid: Cell<u64>,
}

impl T {
    fn new(n: usize, heap_mb: usize, tracking: Tracking) -> T {
        let hfd: &'static OwnedFd = Box::leak(Box::new(
            txipc_heap::create_heap_memfd("fs-test", heap_mb << 20).unwrap(),
        ));
        let lfd: &'static OwnedFd = Box::leak(Box::new(
            txipc_heap::create_log_memfd("fs-test-log", 8 << 20).unwrap(),
        ));
        let base = 0x6400_0000_0000 + n * (1 << 36);
        let heap: &'static Heap =
            Box::leak(Box::new(Heap::attach(hfd, lfd, base, tracking).unwrap()));
        let fs = FsCore::attach(heap).unwrap();
        T {
            heap,
            fs,
            txid: Cell::new(1),
        }
    }

    /// One operation in its own committed transaction (as the runtime runs a request).
    fn run<X>(&self, f: impl FnOnce(&FsCore, &mut Tx<'static>) -> X) -> X {
        let id = self.txid.get();
        self.txid.set(id + 1);
        let mut tx = self.heap.begin(id).unwrap();
        let r = f(&self.fs, &mut tx);
        tx.commit().unwrap();
        r
    }

    fn mkdir(&self, c: &Caller, parent: u64, name: &str, m: u32) -> Result<Attr, Errno> {
        self.run(|fs, tx| fs.mkdir(tx, c, parent, name.as_bytes(), m, 0))
    }
    fn create(&self, c: &Caller, parent: u64, name: &str, m: u32) -> Result<(u64, u64), Errno> {
        self.run(|fs, tx| {
            fs.create(
                tx,
                c,
                parent,
                name.as_bytes(),
                m,
                0,
                oflag::O_RDWR | oflag::O_EXCL,
            )
        })
        .map(|cr| (cr.attr.ino, cr.fh))
    }
    fn lookup(&self, c: &Caller, parent: u64, name: &str) -> Result<Attr, Errno> {
        self.run(|fs, tx| fs.lookup(tx, c, parent, name.as_bytes()))
    }
    fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        self.run(|fs, tx| fs.getattr(tx, ino))
    }
    fn write(&self, fh: u64, off: u64, data: &[u8]) -> Result<u32, Errno> {
        self.run(|fs, tx| fs.write(tx, fh, off, data))
    }
    fn read(&self, fh: u64, off: u64, n: u32) -> Result<Vec<u8>, Errno> {
        self.run(|fs, tx| fs.read(tx, fh, off, n))
    }
    fn open(&self, c: &Caller, ino: u64, flags: u32) -> Result<u64, Errno> {
        self.run(|fs, tx| fs.open(tx, c, ino, flags))
    }
    fn release(&self, fh: u64) -> Result<(), Errno> {
        self.run(|fs, tx| fs.release(tx, fh))
    }
    fn unlink(&self, c: &Caller, parent: u64, name: &str) -> Result<(), Errno> {
        self.run(|fs, tx| fs.unlink(tx, c, parent, name.as_bytes()))
    }
    fn rmdir(&self, c: &Caller, parent: u64, name: &str) -> Result<(), Errno> {
        self.run(|fs, tx| fs.rmdir(tx, c, parent, name.as_bytes()))
    }
    fn rename(&self, c: &Caller, p: u64, n: &str, np: u64, nn: &str, fl: u32) -> Result<(), Errno> {
        self.run(|fs, tx| fs.rename(tx, c, p, n.as_bytes(), np, nn.as_bytes(), fl))
    }
    fn names(&self, dir: u64) -> Vec<String> {
        let mut out = vec![];
        let mut off = 0;
        loop {
            let batch = self
                .run(|fs, tx| fs.readdir(tx, &Caller::root(), dir, off, 3))
                .unwrap();
            let Some(last) = batch.last() else { break };
            off = last.next;
            out.extend(
                batch
                    .iter()
                    .map(|e| String::from_utf8(e.name.to_vec()).unwrap()),
            );
        }
        out
    }
    fn check(&self) {
        self.heap.check(true).unwrap();
    }
}

/// The error of a result that must have failed.
fn e<X: std::fmt::Debug>(x: Result<X, Errno>) -> Errno {
    x.unwrap_err()
}

fn root() -> Caller {
    Caller::root()
}

#[test]
fn files_and_directories() {
    let t = T::new(1, 16, Tracking::Typed);
    let r = root();
    let d = t.mkdir(&r, ROOT_INO, "d", 0o755).unwrap();
    assert_eq!(d.mode, mode::S_IFDIR | 0o755);
    assert_eq!(d.nlink, 2);
    assert_eq!(t.attr(ROOT_INO).unwrap().nlink, 3);
    let (f, fh) = t.create(&r, d.ino, "f", 0o644).unwrap();
    assert_eq!(t.write(fh, 0, b"hello world").unwrap(), 11);
    assert_eq!(t.read(fh, 6, 100).unwrap(), b"world");
    assert_eq!(t.read(fh, 11, 100).unwrap(), b"");
    assert_eq!(t.attr(f).unwrap().size, 11);
    assert_eq!(t.lookup(&r, d.ino, "f").unwrap().ino, f);
    assert_eq!(t.lookup(&r, d.ino, "..").unwrap().ino, ROOT_INO);
    // Readdir positions survive removals between batches.
    for i in 0..10 {
        t.create(&r, d.ino, &format!("n{i}"), 0o644).unwrap();
    }
    let first = t.run(|fs, tx| fs.readdir(tx, &r, d.ino, 0, 4)).unwrap();
    assert_eq!(first[0].name, b".");
    assert_eq!(first[1].name, b"..");
    t.unlink(&r, d.ino, "n0").unwrap();
    t.unlink(&r, d.ino, "n5").unwrap();
    let rest = t
        .run(|fs, tx| fs.readdir(tx, &r, d.ino, first[3].next, 100))
        .unwrap();
    let rest: Vec<_> = rest
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(rest, ["n1", "n2", "n3", "n4", "n6", "n7", "n8", "n9"]);
    assert_eq!(t.names(d.ino).len(), 2 + 10 - 1);
    // O_APPEND writes go to the end whatever the offset.
    let ah = t.open(&r, f, oflag::O_WRONLY | oflag::O_APPEND).unwrap();
    t.write(ah, 0, b"!").unwrap();
    assert_eq!(t.read(fh, 0, 100).unwrap(), b"hello world!");
    // O_TRUNC on open empties the file.
    let th = t.open(&r, f, oflag::O_WRONLY | oflag::O_TRUNC).unwrap();
    assert_eq!(t.attr(f).unwrap().size, 0);
    for h in [fh, ah, th] {
        t.release(h).unwrap();
    }
    // Symlinks.
    let s = t
        .run(|fs, tx| fs.symlink(tx, &r, ROOT_INO, b"s", b"d/f"))
        .unwrap();
    assert_eq!(s.mode, mode::S_IFLNK | 0o777);
    assert_eq!(s.size, 3);
    assert_eq!(t.run(|fs, tx| fs.readlink(tx, s.ino)).unwrap(), b"d/f");
    t.check();
}

#[test]
fn errno_values() {
    let t = T::new(2, 16, Tracking::Typed);
    let r = root();
    let d = t.mkdir(&r, ROOT_INO, "d", 0o755).unwrap().ino;
    let (f, fh) = t.create(&r, d, "f", 0o644).unwrap();
    assert_eq!(e(t.lookup(&r, d, "nope")), Errno::ENOENT);
    assert_eq!(e(t.lookup(&r, f, "x")), Errno::ENOTDIR);
    assert_eq!(e(t.lookup(&r, 9999, "x")), Errno::ENOENT);
    assert_eq!(e(t.lookup(&r, d, &"x".repeat(256))), Errno::ENAMETOOLONG);
    assert_eq!(e(t.create(&r, d, "f", 0o644)), Errno::EEXIST);
    assert_eq!(e(t.mkdir(&r, d, "f", 0o755)), Errno::EEXIST);
    assert_eq!(e(t.mkdir(&r, f, "x", 0o755)), Errno::ENOTDIR);
    assert_eq!(e(t.rmdir(&r, ROOT_INO, "d")), Errno::ENOTEMPTY);
    assert_eq!(e(t.rmdir(&r, d, "f")), Errno::ENOTDIR);
    assert_eq!(e(t.rmdir(&r, d, "nope")), Errno::ENOENT);
    assert_eq!(e(t.unlink(&r, ROOT_INO, "d")), Errno::EISDIR);
    assert_eq!(e(t.run(|fs, tx| fs.readlink(tx, f))), Errno::EINVAL);
    assert_eq!(
        e(t.run(|fs, tx| fs.symlink(tx, &r, d, b"s", b""))),
        Errno::ENOENT
    );
    assert_eq!(
        e(t.run(|fs, tx| fs.symlink(tx, &r, d, b"s", &[b'a'; 4096]))),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        e(t.run(|fs, tx| fs.link(tx, &r, d, ROOT_INO, b"dl"))),
        Errno::EPERM
    );
    assert_eq!(
        e(t.run(|fs, tx| fs.link(tx, &r, f, d, b"f"))),
        Errno::EEXIST
    );
    let ro = t.open(&r, f, oflag::O_RDONLY).unwrap();
    let wo = t.open(&r, f, oflag::O_WRONLY).unwrap();
    assert_eq!(e(t.write(ro, 0, b"x")), Errno::EBADF);
    assert_eq!(e(t.read(wo, 0, 1)), Errno::EBADF);
    assert_eq!(e(t.open(&r, d, oflag::O_RDWR)), Errno::EISDIR);
    assert_eq!(e(t.write(fh, fs_api::MAX_FILE_SIZE, b"x")), Errno::EFBIG);
    let trunc_dir = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        e(t.run(|fs, tx| fs.setattr(tx, &r, d, &trunc_dir))),
        Errno::EISDIR
    );
    for h in [ro, wo, fh] {
        t.release(h).unwrap();
    }
    assert_eq!(e(t.release(fh)), Errno::EBADF);
    assert_eq!(e(t.read(fh, 0, 1)), Errno::EBADF);
    assert_eq!(
        e(t.run(|fs, tx| fs.mknod(tx, &r, d, b"m", mode::S_IFDIR | 0o755, 0, 0))),
        Errno::EINVAL
    );
    // A failed operation changed nothing.
    assert_eq!(t.names(d), [".", "..", "f"]);
    t.check();
}

#[test]
fn rename_and_link_edge_cases() {
    let t = T::new(3, 16, Tracking::Typed);
    let r = root();
    let a = t.mkdir(&r, ROOT_INO, "a", 0o755).unwrap().ino;
    let b = t.mkdir(&r, ROOT_INO, "b", 0o755).unwrap().ino;
    let sub = t.mkdir(&r, a, "sub", 0o755).unwrap().ino;
    let (f, fh) = t.create(&r, a, "f", 0o644).unwrap();
    t.write(fh, 0, b"file f").unwrap();
    let (g, gh) = t.create(&r, b, "g", 0o644).unwrap();
    t.write(gh, 0, b"file g").unwrap();

    // Over an existing file, across directories: g's inode loses its only link but its open
    // handle keeps the data readable until it is released.
    t.rename(&r, a, "f", b, "g", 0).unwrap();
    assert_eq!(t.lookup(&r, b, "g").unwrap().ino, f);
    assert_eq!(t.lookup(&r, a, "f").unwrap_err(), Errno::ENOENT);
    assert_eq!(t.attr(g).unwrap().nlink, 0);
    assert_eq!(t.read(gh, 0, 100).unwrap(), b"file g");
    t.release(gh).unwrap();
    assert_eq!(t.attr(g).unwrap_err(), Errno::ENOENT);

    // Hard links: rename of one link onto another of the same inode does nothing.
    t.run(|fs, tx| fs.link(tx, &r, f, a, b"f2")).unwrap();
    assert_eq!(t.attr(f).unwrap().nlink, 2);
    t.rename(&r, a, "f2", b, "g", 0).unwrap();
    assert_eq!(t.lookup(&r, a, "f2").unwrap().ino, f);
    assert_eq!(t.lookup(&r, b, "g").unwrap().ino, f);
    t.unlink(&r, a, "f2").unwrap();
    assert_eq!(t.attr(f).unwrap().nlink, 1);
    assert_eq!(t.read(fh, 0, 100).unwrap(), b"file f");

    // Directories: into itself, over a file, a file over a directory, over a non-empty one.
    assert_eq!(t.rename(&r, ROOT_INO, "a", sub, "x", 0), Err(Errno::EINVAL));
    assert_eq!(t.rename(&r, ROOT_INO, "a", a, "x", 0), Err(Errno::EINVAL));
    assert_eq!(t.rename(&r, a, "sub", b, "g", 0), Err(Errno::ENOTDIR));
    assert_eq!(t.rename(&r, b, "g", a, "sub", 0), Err(Errno::EISDIR));
    t.create(&r, sub, "inner", 0o644).unwrap();
    let empty = t.mkdir(&r, b, "empty", 0o755).unwrap().ino;
    assert_eq!(t.rename(&r, b, "empty", a, "sub", 0), Err(Errno::ENOTEMPTY));
    // Over an empty directory, across parents: link counts and `..` follow.
    assert_eq!(t.attr(a).unwrap().nlink, 3);
    assert_eq!(t.attr(b).unwrap().nlink, 3);
    t.rename(&r, a, "sub", b, "empty", 0).unwrap();
    assert_eq!(t.attr(empty).unwrap_err(), Errno::ENOENT);
    assert_eq!(t.attr(a).unwrap().nlink, 2);
    assert_eq!(t.attr(b).unwrap().nlink, 3);
    assert_eq!(t.lookup(&r, sub, "..").unwrap().ino, b);
    assert_eq!(t.lookup(&r, sub, "inner").unwrap().kind(), mode::S_IFREG);

    // renameat2 flags.
    assert_eq!(
        t.rename(&r, b, "g", b, "empty", rename_flags::RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        t.rename(&r, b, "g", a, "none", rename_flags::RENAME_EXCHANGE),
        Err(Errno::ENOENT)
    );
    assert_eq!(t.rename(&r, b, "g", a, "x", 3), Err(Errno::EINVAL));
    // Exchange a file and a directory across parents.
    t.rename(&r, b, "g", ROOT_INO, "a", rename_flags::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(t.lookup(&r, ROOT_INO, "a").unwrap().ino, f);
    assert_eq!(t.lookup(&r, b, "g").unwrap().ino, a);
    assert_eq!(t.lookup(&r, a, "..").unwrap().ino, b);
    assert_eq!(t.attr(b).unwrap().nlink, 4);
    assert_eq!(t.attr(ROOT_INO).unwrap().nlink, 3);
    // Rename within one directory keeps everything else.
    t.rename(&r, ROOT_INO, "a", ROOT_INO, "renamed", 0).unwrap();
    assert_eq!(t.names(ROOT_INO), [".", "..", "b", "renamed"]);
    t.release(fh).unwrap();
    t.check();
}

#[test]
fn permissions_of_a_non_root_caller() {
    let t = T::new(4, 16, Tracking::Typed);
    let r = root();
    let u = Caller::user(1000, 1000);
    let other = Caller::user(1001, 1001);
    // The root directory is root's, 0755: a user cannot create in it.
    assert_eq!(t.mkdir(&u, ROOT_INO, "x", 0o755), Err(Errno::EACCES));
    let home = t.mkdir(&r, ROOT_INO, "home", 0o755).unwrap().ino;
    t.run(|fs, tx| {
        fs.setattr(
            tx,
            &r,
            home,
            &SetAttr {
                uid: Some(1000),
                gid: Some(1000),
                ..SetAttr::default()
            },
        )
    })
    .unwrap();
    let (f, fh) = t.create(&u, home, "private", 0o600).unwrap();
    t.release(fh).unwrap();
    assert_eq!(t.attr(f).unwrap().uid, 1000);
    assert_eq!(t.open(&other, f, oflag::O_RDONLY), Err(Errno::EACCES));
    assert_eq!(
        t.open(&u, f, oflag::O_RDONLY).map(|h| t.release(h)),
        Ok(Ok(()))
    );
    assert_eq!(
        t.run(|fs, tx| fs.access(tx, &other, f, fs_api::amode::R_OK)),
        Err(Errno::EACCES)
    );
    // Only the owner changes the mode; only root gives a file away; the owner may change the
    // group to one of their groups only.
    let chmod = SetAttr {
        mode: Some(0o644),
        ..SetAttr::default()
    };
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &other, f, &chmod))
            .unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &u, f, &chmod)).unwrap().mode,
        mode::S_IFREG | 0o644
    );
    let give = SetAttr {
        uid: Some(1001),
        ..SetAttr::default()
    };
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &u, f, &give)).unwrap_err(),
        Errno::EPERM
    );
    let chgrp = |g| SetAttr {
        gid: Some(g),
        ..SetAttr::default()
    };
    let mut member = u.clone();
    member.groups.push(50);
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &u, f, &chgrp(50)))
            .unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &member, f, &chgrp(50)))
            .unwrap()
            .gid,
        50
    );
    // Times: "now" needs write permission or ownership, explicit times ownership.
    let now = SetAttr {
        mtime: Some(TimeSet::Now),
        ..SetAttr::default()
    };
    let at = SetAttr {
        mtime: Some(TimeSet::At(Timespec {
            sec: 12345,
            nsec: 6,
        })),
        ..SetAttr::default()
    };
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &other, f, &now)).unwrap_err(),
        Errno::EACCES
    );
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &other, f, &at)).unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &u, f, &at)).unwrap().mtime,
        Timespec {
            sec: 12345,
            nsec: 6
        }
    );
    // Truncate needs write permission.
    let trunc = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        t.run(|fs, tx| fs.setattr(tx, &other, f, &trunc))
            .unwrap_err(),
        Errno::EACCES
    );
    // Search permission: a directory without x cannot be looked into.
    let closed = t.mkdir(&u, home, "closed", 0o600).unwrap().ino;
    t.create(&u, closed, "in", 0o644).unwrap_err(); // no x for the owner either
    assert_eq!(t.lookup(&u, closed, "in"), Err(Errno::EACCES));
    // A sticky world-writable directory: others' entries cannot be removed or renamed.
    let tmp = t.mkdir(&r, ROOT_INO, "tmp", 0o1777).unwrap().ino;
    let (_, h) = t.create(&u, tmp, "mine", 0o666).unwrap();
    t.release(h).unwrap();
    assert_eq!(t.unlink(&other, tmp, "mine"), Err(Errno::EPERM));
    assert_eq!(
        t.rename(&other, tmp, "mine", tmp, "stolen", 0),
        Err(Errno::EPERM)
    );
    t.unlink(&u, tmp, "mine").unwrap();
    // A set-group-id directory passes its group (and the bit, to directories) on.
    let shared = t.mkdir(&r, ROOT_INO, "shared", 0o2777).unwrap().ino;
    t.run(|fs, tx| fs.setattr(tx, &r, shared, &chgrp(77)))
        .unwrap();
    let sd = t.mkdir(&u, shared, "sd", 0o755).unwrap();
    assert_eq!(sd.gid, 77);
    assert_eq!(sd.mode & mode::S_ISGID, mode::S_ISGID);
    // Device nodes need the superuser.
    assert_eq!(
        t.run(|fs, tx| fs.mknod(tx, &u, home, b"dev", mode::S_IFCHR | 0o600, 0, 0x0103)),
        Err(Errno::EPERM)
    );
    let fifo = t
        .run(|fs, tx| fs.mknod(tx, &u, home, b"fifo", mode::S_IFIFO | 0o644, 0o022, 0))
        .unwrap();
    assert_eq!(fifo.mode, mode::S_IFIFO | 0o644);
    t.check();
}

#[test]
fn sparse_and_large_files() {
    let t = T::new(5, 64, Tracking::Typed);
    let r = root();
    let (f, fh) = t.create(&r, ROOT_INO, "sparse", 0o644).unwrap();
    // One byte at 1 TiB: a 1 TiB file that holds one block.
    let far = 1u64 << 40;
    t.write(fh, far, b"z").unwrap();
    let a = t.attr(f).unwrap();
    assert_eq!(a.size, far + 1);
    assert_eq!(a.blocks, (BLOCK_SIZE / 512) as u64);
    assert_eq!(t.read(fh, far - 3, 10).unwrap(), b"\0\0\0z");
    assert!(t.read(fh, 1 << 30, 4096).unwrap().iter().all(|&b| b == 0));
    // A write that straddles blocks, partial blocks at both ends.
    let pattern: Vec<u8> = (0..3 * BLOCK_SIZE as u32 + 77)
        .map(|i| (i % 251) as u8)
        .collect();
    t.write(fh, 1000, &pattern).unwrap();
    assert_eq!(t.read(fh, 1000, pattern.len() as u32).unwrap(), pattern);
    assert_eq!(t.read(fh, 0, 1000).unwrap(), vec![0; 1000]);
    // Shrinking zeroes the cut block's tail: growing again shows zeros, not old data.
    let shrink = |n| SetAttr {
        size: Some(n),
        ..SetAttr::default()
    };
    t.run(|fs, tx| fs.setattr(tx, &r, f, &shrink(1500)))
        .unwrap();
    assert_eq!(t.attr(f).unwrap().blocks, (BLOCK_SIZE / 512) as u64);
    t.run(|fs, tx| fs.setattr(tx, &r, f, &shrink(8000)))
        .unwrap();
    let back = t.read(fh, 0, 8000).unwrap();
    assert_eq!(&back[1000..1500], &pattern[..500]);
    assert!(back[1500..].iter().all(|&b| b == 0));
    // A large file written in 128 KiB pieces reads back exactly.
    let (g, gh) = t.create(&r, ROOT_INO, "large", 0o644).unwrap();
    let piece: Vec<u8> = (0..fs_api::MAX_IO).map(|i| (i * 7 % 256) as u8).collect();
    for k in 0..64u64 {
        t.write(gh, k * piece.len() as u64, &piece).unwrap();
    }
    assert_eq!(t.attr(g).unwrap().size, 8 << 20);
    assert_eq!(
        t.read(gh, 5 * piece.len() as u64, piece.len() as u32)
            .unwrap(),
        piece
    );
    t.release(gh).unwrap();
    t.unlink(&r, ROOT_INO, "large").unwrap();
    assert_eq!(t.attr(g).unwrap_err(), Errno::ENOENT);
    t.release(fh).unwrap();
    t.check();
}

#[test]
fn a_full_heap_is_enospc_with_nothing_changed() {
    let t = T::new(6, 2, Tracking::Typed);
    let r = root();
    let (f, fh) = t.create(&r, ROOT_INO, "big", 0o644).unwrap();
    let piece = vec![0x5a; fs_api::MAX_IO];
    let mut off = 0;
    let err = loop {
        match t.write(fh, off, &piece) {
            Ok(n) => off += u64::from(n),
            Err(e) => break e,
        }
        assert!(off < 4 << 20, "a 2 MiB heap took {off} bytes");
    };
    assert_eq!(err, Errno::ENOSPC);
    let a = t.attr(f).unwrap();
    assert_eq!(a.size, off, "the failed write left no trace in the size");
    let updates = t.fs.root().updates_for_tests();
    assert_eq!(t.write(fh, off, &piece), Err(Errno::ENOSPC));
    assert_eq!(t.fs.root().updates_for_tests(), updates);
    assert_eq!(
        t.read(fh, off.saturating_sub(10), 20).unwrap(),
        vec![0x5a; 10]
    );
    // Deleting makes room again.
    t.run(|fs, tx| {
        fs.setattr(
            tx,
            &r,
            f,
            &SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        )
    })
    .unwrap();
    t.write(fh, 0, &piece).unwrap();
    t.release(fh).unwrap();
    t.check();
}

#[test]
fn extended_attributes_with_linux_errno_rules() {
    use fs_api::xattr_flags::{XATTR_CREATE, XATTR_REPLACE};
    let t = T::new(7, 16, Tracking::Typed);
    let r = root();
    let alice = Caller::user(1000, 1000);
    let bob = Caller::user(1001, 1001);
    let set = |c: &Caller, ino: u64, n: &str, v: &[u8], fl: u32| {
        t.run(|fs, tx| fs.setxattr(tx, c, ino, n.as_bytes(), v, fl))
    };
    let get = |c: &Caller, ino: u64, n: &str| t.run(|fs, tx| fs.getxattr(tx, c, ino, n.as_bytes()));
    let list = |c: &Caller, ino: u64| t.run(|fs, tx| fs.listxattr(tx, c, ino));
    let remove =
        |c: &Caller, ino: u64, n: &str| t.run(|fs, tx| fs.removexattr(tx, c, ino, n.as_bytes()));
    let home = t.mkdir(&r, ROOT_INO, "home", 0o777).unwrap().ino;
    let (f, fh) = t.create(&alice, home, "f", 0o644).unwrap();
    t.release(fh).unwrap();
    let before = t.attr(f).unwrap().ctime;

    // Set, get, list, replace, remove.
    set(&alice, f, "user.color", b"blue", 0).unwrap();
    assert_eq!(get(&alice, f, "user.color").unwrap(), b"blue");
    assert!(t.attr(f).unwrap().ctime >= before);
    assert_eq!(
        e(set(&alice, f, "user.color", b"red", XATTR_CREATE)),
        Errno::EEXIST
    );
    assert_eq!(
        e(set(&alice, f, "user.shape", b"x", XATTR_REPLACE)),
        Errno::ENODATA
    );
    set(&alice, f, "user.color", b"red", XATTR_REPLACE).unwrap();
    set(&alice, f, "user.a", b"", 0).unwrap();
    assert_eq!(list(&bob, f).unwrap(), b"user.a\0user.color\0");
    assert_eq!(get(&bob, f, "user.color").unwrap(), b"red", "o+r reads it");
    assert_eq!(e(get(&alice, f, "user.none")), Errno::ENODATA);
    assert_eq!(e(remove(&alice, f, "user.none")), Errno::ENODATA);
    remove(&alice, f, "user.a").unwrap();
    assert_eq!(e(get(&alice, f, "user.a")), Errno::ENODATA);

    // Names, values, namespaces.
    assert_eq!(e(set(&alice, f, "", b"v", 0)), Errno::ERANGE);
    assert_eq!(
        e(set(
            &alice,
            f,
            &format!("user.{}", "n".repeat(251)),
            b"v",
            0
        )),
        Errno::ERANGE
    );
    assert_eq!(e(set(&alice, f, "user.", b"v", 0)), Errno::EINVAL);
    assert_eq!(e(set(&alice, f, "color", b"v", 0)), Errno::EOPNOTSUPP);
    assert_eq!(
        e(set(&r, f, "system.posix_acl_access", b"v", 0)),
        Errno::EOPNOTSUPP
    );
    assert_eq!(
        e(set(
            &alice,
            f,
            "user.big",
            &vec![0; fs_api::MAX_XATTR_VALUE + 1],
            0
        )),
        Errno::E2BIG
    );
    assert_eq!(e(set(&alice, f, "user.x", b"v", 4)), Errno::EINVAL);

    // Permissions: write permission for user.*, the superuser for trusted.* and security.*.
    assert_eq!(e(set(&bob, f, "user.color", b"green", 0)), Errno::EACCES);
    assert_eq!(e(remove(&bob, f, "user.color")), Errno::EACCES);
    assert_eq!(e(set(&alice, f, "trusted.t", b"1", 0)), Errno::EPERM);
    assert_eq!(e(set(&alice, f, "security.s", b"1", 0)), Errno::EPERM);
    set(&r, f, "trusted.t", b"1", 0).unwrap();
    set(&r, f, "security.s", b"2", 0).unwrap();
    assert_eq!(list(&r, f).unwrap(), b"security.s\0trusted.t\0user.color\0");
    assert_eq!(
        list(&alice, f).unwrap(),
        b"security.s\0user.color\0",
        "trusted is hidden"
    );
    assert_eq!(e(get(&alice, f, "trusted.t")), Errno::ENODATA);
    assert_eq!(get(&alice, f, "security.s").unwrap(), b"2");
    let (secret, sfh) = t.create(&alice, home, "secret", 0o600).unwrap();
    t.release(sfh).unwrap();
    set(&alice, secret, "user.k", b"v", 0).unwrap();
    assert_eq!(e(get(&bob, secret, "user.k")), Errno::EACCES);

    // user.* only on regular files and directories; a sticky directory only by its owner.
    let l = t
        .run(|fs, tx| fs.symlink(tx, &alice, home, b"l", b"f"))
        .unwrap()
        .ino;
    assert_eq!(e(set(&alice, l, "user.k", b"v", 0)), Errno::EPERM);
    assert_eq!(e(get(&alice, l, "user.k")), Errno::ENODATA);
    let d = t.mkdir(&alice, home, "d", 0o1777).unwrap().ino;
    set(&alice, d, "user.k", b"v", 0).unwrap();
    assert_eq!(e(set(&bob, d, "user.k", b"w", 0)), Errno::EPERM);

    // The list is bounded.
    let (g, gfh) = t.create(&r, home, "g", 0o644).unwrap();
    t.release(gfh).unwrap();
    let mut n = 0;
    let err = loop {
        match set(&r, g, &format!("user.{n:0>200}"), b"", 0) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000);
    };
    assert_eq!(err, Errno::ENOSPC);
    assert!(list(&r, g).unwrap().len() <= fs_api::MAX_XATTR_LIST);

    // They go with their inode.
    let entries = t.fs.root().xattr_count_for_tests();
    t.unlink(&r, home, "g").unwrap();
    assert_eq!(t.fs.root().xattr_count_for_tests(), entries - n);
    assert_eq!(e(get(&r, g, "user.k")), Errno::ENOENT);
    t.check();
}

#[test]
fn fallocate_allocates_keeps_size_and_punches_holes() {
    use fs_api::falloc::{KEEP_SIZE, PUNCH_HOLE};
    let t = T::new(8, 16, Tracking::Typed);
    let r = root();
    let fa =
        |fh: u64, m: u32, off: u64, len: u64| t.run(|fs, tx| fs.fallocate(tx, fh, m, off, len));
    let (f, fh) = t.create(&r, ROOT_INO, "f", 0o644).unwrap();
    let bs = BLOCK_SIZE as u64;
    // Mode 0: blocks and size.
    fa(fh, 0, 0, 10 * bs).unwrap();
    let a = t.attr(f).unwrap();
    assert_eq!((a.size, a.blocks), (10 * bs, 10 * bs / 512));
    assert_eq!(t.read(fh, 0, 4096).unwrap(), vec![0; 4096]);
    // Data written, then a range that overlaps it: nothing is lost.
    t.write(fh, 5, b"hello").unwrap();
    fa(fh, 0, 0, 11 * bs + 1).unwrap();
    let a = t.attr(f).unwrap();
    assert_eq!((a.size, a.blocks), (11 * bs + 1, 12 * bs / 512));
    assert_eq!(t.read(fh, 5, 5).unwrap(), b"hello");
    // KEEP_SIZE past the end: blocks, no size.
    fa(fh, KEEP_SIZE, 20 * bs, 2 * bs).unwrap();
    let a = t.attr(f).unwrap();
    assert_eq!((a.size, a.blocks), (11 * bs + 1, 14 * bs / 512));
    // PUNCH_HOLE: whole blocks go, partial ones are zeroed; the size stays.
    t.write(fh, 0, &vec![7u8; 3 * bs as usize]).unwrap();
    fa(fh, PUNCH_HOLE | KEEP_SIZE, 100, 2 * bs).unwrap();
    let a = t.attr(f).unwrap();
    assert_eq!(a.size, 11 * bs + 1);
    assert_eq!(a.blocks, 13 * bs / 512, "one whole block freed");
    let back = t.read(fh, 0, 3 * bs as u32).unwrap();
    assert!(back[..100].iter().all(|&b| b == 7));
    assert!(back[100..100 + 2 * bs as usize].iter().all(|&b| b == 0));
    assert!(back[100 + 2 * bs as usize..].iter().all(|&b| b == 7));
    // Punching the blocks past the end frees them too.
    fa(fh, PUNCH_HOLE | KEEP_SIZE, 20 * bs, 2 * bs).unwrap();
    assert_eq!(t.attr(f).unwrap().blocks, 11 * bs / 512);
    // Errors.
    assert_eq!(e(fa(fh, PUNCH_HOLE, 0, bs)), Errno::EOPNOTSUPP);
    assert_eq!(e(fa(fh, 0x8, 0, bs)), Errno::EOPNOTSUPP, "COLLAPSE_RANGE");
    assert_eq!(e(fa(fh, 0x10, 0, bs)), Errno::EOPNOTSUPP, "ZERO_RANGE");
    assert_eq!(e(fa(fh, 0, 0, 0)), Errno::EINVAL);
    assert_eq!(e(fa(fh, 0, fs_api::MAX_FILE_SIZE, 1)), Errno::EFBIG);
    let ro = t.open(&r, f, oflag::O_RDONLY).unwrap();
    assert_eq!(e(fa(ro, 0, 0, bs)), Errno::EBADF);
    t.release(ro).unwrap();
    assert_eq!(e(fa(999_999, 0, 0, bs)), Errno::EBADF);
    // A range the heap cannot hold is ENOSPC with nothing changed.
    let before = t.attr(f).unwrap();
    assert_eq!(e(fa(fh, 0, 0, 1 << 30)), Errno::ENOSPC);
    assert_eq!(t.attr(f).unwrap(), before);
    t.release(fh).unwrap();
    t.check();
}
