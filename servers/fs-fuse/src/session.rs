//! One FUSE connection: decode each request, make the one fs call it maps to, write the reply.
//!
//! Bytes from the kernel are trusted as to layout (the kernel is the kernel) but still checked
//! for length: a short request is answered `EINVAL`, never read past.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use fs_api::{Attr, Caller, DirEntry, Errno, FsClient, RequestId, SetAttr, TimeSet, Timespec};
use txipc_service::{CallError, Error as SvcError, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::abi::{self, op};

/// How long the kernel may cache entries and attributes. Every change goes through this
/// mount, so the kernel's cache cannot go stale behind its back (unless the server loses its
/// state: policy `restart`).
const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel may send (and largest read it asks for).
pub const MAX_WRITE: u32 = fs_api::MAX_IO as u32;
/// Flags of every file this front end opens: `FOPEN_NOFLUSH`. Writes are synchronous (no
/// writeback cache), so a close has nothing to flush, and `FLUSH` would be a no-op here; sent
/// anyway, it makes every `close(2)` wait for the front end. That wait deadlocks a
/// replacement front end started by a process holding a file of this mount open: its own
/// `execve` closes the inherited close-on-exec descriptor, and the `FLUSH` waits for the front
/// end this process is about to become (ARCHITECTURE.md, "FUSE adoption").
pub const OPEN_FLAGS: u32 = abi::fopen::NOFLUSH;
/// Read buffer: a write request's headers plus `MAX_WRITE` bytes of data.
pub const BUFFER_SIZE: usize = MAX_WRITE as usize + 4096;

/// What the worker loop does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next request.
    Continue,
    /// The kernel said `DESTROY`: the file system is going away.
    Destroy,
}

/// Shared state of a connection: the device, the fs client, the negotiated protocol minor.
#[derive(Debug)]
pub struct Session<T: Transport> {
    dev: Arc<OwnedFd>,
    fs: FsClient<T>,
    minor: AtomicU32,
    /// Tag of this connection's requests for exactly-once replay (`fs_api::RequestId`).
    session: u64,
    /// Set when the system behind the service is gone (the mount should end).
    system_gone: AtomicBool,
}

/// Reads a `T` from the front of `b` and advances it.
fn take<T: FromBytes + KnownLayout + Immutable>(b: &mut &[u8]) -> Result<T, Errno> {
    let (v, rest) = T::read_from_prefix(b).map_err(|_| Errno::EINVAL)?;
    *b = rest;
    Ok(v)
}

/// Reads a NUL-terminated name from the front of `b` and advances it.
fn take_name<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], Errno> {
    let n = b.iter().position(|&c| c == 0).ok_or(Errno::EINVAL)?;
    let (name, rest) = b.split_at(n);
    *b = &rest[1..];
    Ok(name)
}

fn fuse_attr(a: &Attr) -> abi::Attr {
    abi::Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.sec as u64,
        mtime: a.mtime.sec as u64,
        ctime: a.ctime.sec as u64,
        atimensec: a.atime.nsec,
        mtimensec: a.mtime.nsec,
        ctimensec: a.ctime.nsec,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: fs_api::BLOCK_SIZE as u32,
        flags: 0,
    }
}

fn entry(a: &Attr) -> abi::EntryOut {
    abi::EntryOut {
        nodeid: a.ino,
        generation: 0,
        entry_valid: TTL.as_secs(),
        attr_valid: TTL.as_secs(),
        entry_valid_nsec: TTL.subsec_nanos(),
        attr_valid_nsec: TTL.subsec_nanos(),
        attr: fuse_attr(a),
    }
}

fn attr_out(a: &Attr) -> abi::AttrOut {
    abi::AttrOut {
        attr_valid: TTL.as_secs(),
        attr_valid_nsec: TTL.subsec_nanos(),
        dummy: 0,
        attr: fuse_attr(a),
    }
}

/// Supplementary groups of process `pid` (from `/proc/PID/status`); empty if it is gone.
fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Bit the kernel sets in `unique` of a request it re-sends after `FUSE_NOTIFY_RESEND`.
pub const UNIQUE_RESEND: u64 = 1 << 63;

fn caller(h: &abi::InHeader, session: u64) -> Caller {
    Caller {
        request: Some(RequestId {
            session,
            unique: h.unique & !UNIQUE_RESEND,
            resent: h.unique & UNIQUE_RESEND != 0,
        }),
        uid: h.uid,
        gid: h.gid,
        // The superuser passes every check: no need to look its groups up.
        groups: if h.uid == 0 || h.pid == 0 {
            Vec::new()
        } else {
            groups_of(h.pid)
        },
    }
}

impl<T: Transport> Session<T> {
    /// A session on the FUSE device `dev` serving through `fs`. `minor` is the negotiated
    /// protocol minor of an adopted connection (0: not negotiated yet, an `INIT` will come);
    /// `session` tags its requests (the same for every front end of one connection).
    pub fn new(dev: Arc<OwnedFd>, fs: FsClient<T>, minor: u32, session: u64) -> Session<T> {
        Session {
            dev,
            fs,
            minor: AtomicU32::new(minor),
            session,
            system_gone: AtomicBool::new(false),
        }
    }

    /// The negotiated protocol minor (0 before `INIT`).
    pub fn minor(&self) -> u32 {
        self.minor.load(Ordering::Acquire)
    }

    /// The session tag.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Whether a call found the system gone.
    pub fn system_gone(&self) -> bool {
        self.system_gone.load(Ordering::Relaxed)
    }

    /// The FUSE device.
    pub fn dev(&self) -> &OwnedFd {
        &self.dev
    }

    /// The fs client.
    pub fn fs(&self) -> &FsClient<T> {
        &self.fs
    }

    fn errno<V>(&self, r: Result<V, SvcError<Errno>>) -> Result<V, Errno> {
        r.map_err(|e| match e {
            SvcError::Service(e) => e,
            SvcError::Call(c) => {
                if matches!(
                    c,
                    CallError::Unavailable { .. } | CallError::Disconnected(_)
                ) {
                    self.system_gone.store(true, Ordering::Relaxed);
                }
                Errno::EIO
            }
        })
    }

    fn send(&self, unique: u64, error: i32, parts: &[&[u8]]) {
        let len = size_of::<abi::OutHeader>() + parts.iter().map(|p| p.len()).sum::<usize>();
        let h = abi::OutHeader {
            len: len as u32,
            error,
            unique,
        };
        let mut iov = Vec::with_capacity(parts.len() + 1);
        iov.push(std::io::IoSlice::new(h.as_bytes()));
        iov.extend(parts.iter().map(|p| std::io::IoSlice::new(p)));
        // ENOENT: the request was interrupted and is gone; nothing else can be done about a
        // failed reply either (the kernel aborts a connection whose replies it cannot parse).
        let _ = rustix::io::writev(self.dev.as_fd(), &iov);
    }

    fn ok(&self, unique: u64, payload: &[u8]) {
        self.send(unique, 0, &[payload]);
    }

    /// Answers a `GETXATTR`/`LISTXATTR` whose caller has a buffer of `size` bytes: 0 asks
    /// for the length only; a buffer too small is `ERANGE`.
    fn sized(&self, unique: u64, size: u32, v: &[u8]) -> Result<(), Errno> {
        if size == 0 {
            let out = abi::GetxattrOut {
                size: v.len() as u32,
                padding: 0,
            };
            self.ok(unique, out.as_bytes());
        } else if v.len() > size as usize {
            return Err(Errno::ERANGE);
        } else {
            self.ok(unique, v);
        }
        Ok(())
    }

    /// Writes `FUSE_NOTIFY_RESEND`: the kernel re-queues every request it has sent on this
    /// connection and not had a reply for, so a new reader gets them again.
    pub fn notify_resend(&self) -> std::io::Result<()> {
        let h = abi::OutHeader {
            len: size_of::<abi::OutHeader>() as u32,
            error: abi::notify::RESEND,
            unique: 0,
        };
        rustix::io::write(self.dev.as_fd(), h.as_bytes())?;
        Ok(())
    }

    /// Handles one request read from the device (`req` is exactly the bytes read).
    pub fn handle(&self, req: &[u8]) -> Next {
        let mut b = req;
        let Ok(h) = take::<abi::InHeader>(&mut b) else {
            return Next::Continue;
        };
        let body = b
            .get(
                ..(h.len as usize)
                    .saturating_sub(size_of::<abi::InHeader>())
                    .min(b.len()),
            )
            .unwrap_or(b);
        match h.opcode {
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT => Next::Continue,
            op::INIT => {
                self.init(&h, body);
                Next::Continue
            }
            op::DESTROY => {
                self.ok(h.unique, &[]);
                Next::Destroy
            }
            _ => {
                if let Err(e) = self.dispatch(&h, body) {
                    self.send(h.unique, -e.0, &[]);
                }
                Next::Continue
            }
        }
    }

    fn init(&self, h: &abi::InHeader, mut b: &[u8]) {
        let Ok(i) = take::<abi::InitIn>(&mut b) else {
            self.send(h.unique, -Errno::EINVAL.0, &[]);
            return;
        };
        if i.major != abi::KERNEL_VERSION {
            // A newer major: answer with ours only; the kernel retries or gives up.
            let out = abi::InitOut {
                major: abi::KERNEL_VERSION,
                minor: abi::KERNEL_MINOR_VERSION,
                ..abi::InitOut::default()
            };
            self.ok(h.unique, out.as_bytes());
            return;
        }
        if i.minor < abi::MIN_MINOR_VERSION {
            self.send(h.unique, -libc_eproto(), &[]);
            return;
        }
        let mut kflags = u64::from(i.flags);
        if kflags & abi::init::INIT_EXT != 0
            && let Ok(ext) = take::<abi::InitInExt>(&mut b)
        {
            kflags |= u64::from(ext.flags2) << 32;
        }
        let want = abi::init::ASYNC_READ
            | abi::init::ATOMIC_O_TRUNC
            | abi::init::BIG_WRITES
            | abi::init::PARALLEL_DIROPS;
        let flags = kflags & want;
        let minor = i.minor.min(abi::KERNEL_MINOR_VERSION);
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor,
            max_readahead: i.max_readahead,
            flags: flags as u32,
            max_background: 16,
            congestion_threshold: 12,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: (MAX_WRITE / 4096) as u16,
            ..abi::InitOut::default()
        };
        self.minor.store(minor, Ordering::Release);
        self.ok(h.unique, out.as_bytes());
    }

    fn dispatch(&self, h: &abi::InHeader, mut b: &[u8]) -> Result<(), Errno> {
        let fs = &self.fs;
        let ino = h.nodeid;
        let u = h.unique;
        match h.opcode {
            op::LOOKUP => {
                let name = take_name(&mut b)?;
                let a = self.errno(fs.lookup(caller(h, self.session), ino, name))?;
                self.ok(u, entry(&a).as_bytes());
            }
            op::GETATTR => {
                let a = self.errno(fs.getattr(ino))?;
                self.ok(u, attr_out(&a).as_bytes());
            }
            op::SETATTR => {
                let s = take::<abi::SetattrIn>(&mut b)?;
                let v = s.valid;
                let time = |now: u32, set: u32, sec: u64, nsec: u32| {
                    if v & now != 0 {
                        Some(TimeSet::Now)
                    } else if v & set != 0 {
                        Some(TimeSet::At(Timespec {
                            sec: sec as i64,
                            nsec,
                        }))
                    } else {
                        None
                    }
                };
                let set = SetAttr {
                    mode: (v & abi::fattr::MODE != 0).then_some(s.mode),
                    uid: (v & abi::fattr::UID != 0).then_some(s.uid),
                    gid: (v & abi::fattr::GID != 0).then_some(s.gid),
                    size: (v & abi::fattr::SIZE != 0).then_some(s.size),
                    atime: time(
                        abi::fattr::ATIME_NOW,
                        abi::fattr::ATIME,
                        s.atime,
                        s.atimensec,
                    ),
                    mtime: time(
                        abi::fattr::MTIME_NOW,
                        abi::fattr::MTIME,
                        s.mtime,
                        s.mtimensec,
                    ),
                    fh: (v & abi::fattr::FH != 0).then_some(s.fh),
                };
                let a = self.errno(fs.setattr(caller(h, self.session), ino, set))?;
                self.ok(u, attr_out(&a).as_bytes());
            }
            op::READLINK => {
                let t = self.errno(fs.readlink(ino))?;
                self.ok(u, &t);
            }
            op::SYMLINK => {
                let name = take_name(&mut b)?;
                let target = take_name(&mut b)?;
                let a = self.errno(fs.symlink(caller(h, self.session), ino, name, target))?;
                self.ok(u, entry(&a).as_bytes());
            }
            op::MKNOD => {
                let m = take::<abi::MknodIn>(&mut b)?;
                let name = take_name(&mut b)?;
                let a = self.errno(fs.mknod(
                    caller(h, self.session),
                    ino,
                    name,
                    m.mode,
                    m.umask,
                    m.rdev,
                ))?;
                self.ok(u, entry(&a).as_bytes());
            }
            op::MKDIR => {
                let m = take::<abi::MkdirIn>(&mut b)?;
                let name = take_name(&mut b)?;
                let a =
                    self.errno(fs.mkdir(caller(h, self.session), ino, name, m.mode, m.umask))?;
                self.ok(u, entry(&a).as_bytes());
            }
            op::UNLINK => {
                let name = take_name(&mut b)?;
                self.errno(fs.unlink(caller(h, self.session), ino, name))?;
                self.ok(u, &[]);
            }
            op::RMDIR => {
                let name = take_name(&mut b)?;
                self.errno(fs.rmdir(caller(h, self.session), ino, name))?;
                self.ok(u, &[]);
            }
            op::RENAME | op::RENAME2 => {
                let (newdir, flags) = if h.opcode == op::RENAME {
                    (take::<abi::RenameIn>(&mut b)?.newdir, 0)
                } else {
                    let r = take::<abi::Rename2In>(&mut b)?;
                    (r.newdir, r.flags)
                };
                let old = take_name(&mut b)?;
                let new = take_name(&mut b)?;
                self.errno(fs.rename(caller(h, self.session), ino, old, newdir, new, flags))?;
                self.ok(u, &[]);
            }
            op::LINK => {
                let l = take::<abi::LinkIn>(&mut b)?;
                let name = take_name(&mut b)?;
                let a = self.errno(fs.link(caller(h, self.session), l.oldnodeid, ino, name))?;
                self.ok(u, entry(&a).as_bytes());
            }
            op::OPEN => {
                let o = take::<abi::OpenIn>(&mut b)?;
                let fh = self.errno(fs.open(caller(h, self.session), ino, o.flags))?;
                let out = abi::OpenOut {
                    fh,
                    open_flags: OPEN_FLAGS,
                    backing_id: 0,
                };
                self.ok(u, out.as_bytes());
            }
            op::CREATE => {
                let c = take::<abi::CreateIn>(&mut b)?;
                let name = take_name(&mut b)?;
                let cr = self.errno(fs.create(
                    caller(h, self.session),
                    ino,
                    name,
                    c.mode,
                    c.umask,
                    c.flags,
                ))?;
                let out = abi::OpenOut {
                    fh: cr.fh,
                    open_flags: OPEN_FLAGS,
                    backing_id: 0,
                };
                self.send(u, 0, &[entry(&cr.attr).as_bytes(), out.as_bytes()]);
            }
            op::READ => {
                let r = take::<abi::ReadIn>(&mut b)?;
                let data = self.errno(fs.read(r.fh, r.offset, r.size.min(MAX_WRITE)))?;
                self.ok(u, &data);
            }
            op::WRITE => {
                let w = take::<abi::WriteIn>(&mut b)?;
                let data = b.get(..w.size as usize).ok_or(Errno::EINVAL)?;
                let n = self.errno(fs.write(caller(h, self.session), w.fh, w.offset, data))?;
                let out = abi::WriteOut {
                    size: n,
                    padding: 0,
                };
                self.ok(u, out.as_bytes());
            }
            op::RELEASE => {
                let r = take::<abi::ReleaseIn>(&mut b)?;
                self.errno(fs.release(caller(h, self.session), r.fh))?;
                self.ok(u, &[]);
            }
            op::FLUSH | op::RELEASEDIR | op::FSYNCDIR => self.ok(u, &[]),
            op::FSYNC => {
                let f = take::<abi::FsyncIn>(&mut b)?;
                self.errno(fs.fsync(f.fh))?;
                self.ok(u, &[]);
            }
            op::OPENDIR => {
                // Read permission is checked by readdir; the handle carries nothing.
                self.errno(fs.access(caller(h, self.session), ino, 0))?;
                let out = abi::OpenOut {
                    fh: 0,
                    open_flags: 0,
                    backing_id: 0,
                };
                self.ok(u, out.as_bytes());
            }
            op::READDIR => {
                let r = take::<abi::ReadIn>(&mut b)?;
                let max = (r.size / 32).max(1);
                let entries =
                    self.errno(fs.readdir(caller(h, self.session), ino, r.offset, max))?;
                self.ok(u, &pack_dirents(&entries, r.size as usize));
            }
            op::STATFS => {
                let s = self.errno(fs.statfs().map_err(SvcError::Call))?;
                let out = abi::StatfsOut {
                    blocks: s.blocks,
                    bfree: s.bfree,
                    bavail: s.bavail,
                    files: s.files,
                    ffree: s.ffree,
                    bsize: s.bsize,
                    namelen: s.namelen,
                    frsize: s.bsize,
                    padding: 0,
                    spare: [0; 6],
                };
                self.ok(u, out.as_bytes());
            }
            op::ACCESS => {
                let a = take::<abi::AccessIn>(&mut b)?;
                self.errno(fs.access(caller(h, self.session), ino, a.mask))?;
                self.ok(u, &[]);
            }
            op::SETXATTR => {
                let x = take::<abi::SetxattrIn>(&mut b)?;
                let name = take_name(&mut b)?;
                let value = b.get(..x.size as usize).ok_or(Errno::EINVAL)?;
                self.errno(fs.setxattr(caller(h, self.session), ino, name, value, x.flags))?;
                self.ok(u, &[]);
            }
            op::GETXATTR => {
                let x = take::<abi::GetxattrIn>(&mut b)?;
                let name = take_name(&mut b)?;
                let v = self.errno(fs.getxattr(caller(h, self.session), ino, name))?;
                self.sized(u, x.size, &v)?;
            }
            op::LISTXATTR => {
                let x = take::<abi::GetxattrIn>(&mut b)?;
                let v = self.errno(fs.listxattr(caller(h, self.session), ino))?;
                self.sized(u, x.size, &v)?;
            }
            op::REMOVEXATTR => {
                let name = take_name(&mut b)?;
                self.errno(fs.removexattr(caller(h, self.session), ino, name))?;
                self.ok(u, &[]);
            }
            op::FALLOCATE => {
                let f = take::<abi::FallocateIn>(&mut b)?;
                self.errno(fs.fallocate(
                    caller(h, self.session),
                    f.fh,
                    f.mode,
                    f.offset,
                    f.length,
                ))?;
                self.ok(u, &[]);
            }
            // Locks (the kernel keeps them locally), ioctl, poll, lseek, copy_file_range,
            // statx, tmpfile...: not implemented. The kernel remembers ENOSYS for most of them
            // and stops asking.
            _ => return Err(Errno::ENOSYS),
        }
        Ok(())
    }
}

/// Packs as many entries as fit in `size` bytes as `fuse_dirent`s.
fn pack_dirents(entries: &[DirEntry], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.min(64 * 1024));
    for e in entries {
        let len = size_of::<abi::Dirent>() + e.name.len();
        let padded = len.next_multiple_of(8);
        if out.len() + padded > size {
            break;
        }
        let d = abi::Dirent {
            ino: e.ino,
            off: e.next,
            namelen: e.name.len() as u32,
            typ: (e.kind >> 12) & 0xf,
        };
        out.extend_from_slice(d.as_bytes());
        out.extend_from_slice(&e.name);
        out.resize(out.len() + padded - len, 0);
    }
    out
}

fn libc_eproto() -> i32 {
    rustix::io::Errno::PROTO.raw_os_error()
}
