//! Interface of the file-system service: what clients of `fs` (the FUSE front end, tests,
//! benchmarks) depend on.
//!
//! The service is a POSIX file system kept in the server's memory: inodes with mode, owner,
//! link count and three timestamps; directories; regular files (sparse, any size up to
//! [`MAX_FILE_SIZE`], read and written at any offset); hard links; symbolic links; device,
//! FIFO and socket nodes (metadata only); open handles. Each method is one transaction on the
//! server: under policy `txipc` it takes effect exactly once, whatever instant the server dies
//! at, so a program whose requests go through the FUSE front end never sees the fault.
//!
//! Methods mirror the FUSE low-level operations (inode numbers, not paths): the root directory
//! is inode [`ROOT_INO`]. Every method that checks permissions takes the [`Caller`] (uid, gid,
//! supplementary groups) and applies POSIX's rules for that caller; uid 0 is the superuser.
//! Errors are the errno values POSIX specifies for each case ([`Errno`]).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
pub use txipc_service::Bytes;
use txipc_service::service;

/// Inode number of the root directory (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: u64 = 1;
/// Longest name of a directory entry, in bytes (`NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Longest symbolic-link target, in bytes (`PATH_MAX - 1`).
pub const MAX_SYMLINK: usize = 4095;
/// Most bytes one `read` or `write` moves (the front end's `max_write`/`max_read`).
pub const MAX_IO: usize = 128 * 1024;
/// Size of a file's data blocks: a sparse file costs only the blocks that were written.
pub const BLOCK_SIZE: usize = 4096;
/// Largest file size (offsets past it are `EFBIG`).
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// Most entries one `readdir` returns.
pub const MAX_READDIR: u32 = 1024;
/// Most hard links to one inode (`LINK_MAX`).
pub const MAX_LINKS: u32 = 65000;

/// File-type bits of a mode (`S_IFMT` and its values).
pub mod mode {
    /// Mask of the type bits.
    pub const S_IFMT: u32 = 0o170000;
    /// Socket.
    pub const S_IFSOCK: u32 = 0o140000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o120000;
    /// Regular file.
    pub const S_IFREG: u32 = 0o100000;
    /// Block device.
    pub const S_IFBLK: u32 = 0o060000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o040000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o020000;
    /// FIFO.
    pub const S_IFIFO: u32 = 0o010000;
    /// Set-user-id.
    pub const S_ISUID: u32 = 0o4000;
    /// Set-group-id.
    pub const S_ISGID: u32 = 0o2000;
    /// Sticky (restricted deletion in directories).
    pub const S_ISVTX: u32 = 0o1000;
    /// Permission bits and the three special bits.
    pub const PERM: u32 = 0o7777;
}

/// `open(2)` flags the server looks at (Linux values).
pub mod oflag {
    /// Access-mode mask.
    pub const O_ACCMODE: u32 = 0o3;
    /// Read only.
    pub const O_RDONLY: u32 = 0;
    /// Write only.
    pub const O_WRONLY: u32 = 1;
    /// Read and write.
    pub const O_RDWR: u32 = 2;
    /// Fail if the entry exists (create).
    pub const O_EXCL: u32 = 0o200;
    /// Truncate on open.
    pub const O_TRUNC: u32 = 0o1000;
    /// Every write goes to the end.
    pub const O_APPEND: u32 = 0o2000;
}

/// `access(2)` bits.
pub mod amode {
    /// Read.
    pub const R_OK: u32 = 4;
    /// Write.
    pub const W_OK: u32 = 2;
    /// Execute or search.
    pub const X_OK: u32 = 1;
}

/// `setxattr(2)` flags.
pub mod xattr_flags {
    /// Fail with `EEXIST` if the attribute exists.
    pub const XATTR_CREATE: u32 = 1;
    /// Fail with `ENODATA` if the attribute does not exist.
    pub const XATTR_REPLACE: u32 = 2;
}

/// Longest extended-attribute name, namespace prefix included (`XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME: usize = 255;
/// Largest extended-attribute value (`XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 65536;
/// Most bytes of one inode's list of attribute names, NUL terminators included
/// (`XATTR_LIST_MAX`): a `setxattr` that would pass it is `ENOSPC`.
pub const MAX_XATTR_LIST: usize = 65536;

/// `fallocate(2)` modes the server implements (any other bit is `EOPNOTSUPP`).
pub mod falloc {
    /// Allocate, but leave the file's size as it is.
    pub const KEEP_SIZE: u32 = 1;
    /// Deallocate the range (with [`KEEP_SIZE`]): it reads as zeros afterwards.
    pub const PUNCH_HOLE: u32 = 2;
}

/// `renameat2(2)` flags.
pub mod rename_flags {
    /// Fail with `EEXIST` if the target exists.
    pub const RENAME_NOREPLACE: u32 = 1;
    /// Swap the two entries atomically.
    pub const RENAME_EXCHANGE: u32 = 2;
}

/// An errno value, as Linux numbers it: what a failed method answers, passed unchanged to the
/// program through FUSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(2);
    /// I/O error (used only for internal inconsistencies).
    pub const EIO: Errno = Errno(5);
    /// Bad file descriptor (unknown handle, or a handle not open for this access).
    pub const EBADF: Errno = Errno(9);
    /// Permission denied.
    pub const EACCES: Errno = Errno(13);
    /// File exists.
    pub const EEXIST: Errno = Errno(17);
    /// Cross-device link (not produced: one file system).
    pub const EXDEV: Errno = Errno(18);
    /// Not a directory.
    pub const ENOTDIR: Errno = Errno(20);
    /// Is a directory.
    pub const EISDIR: Errno = Errno(21);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// File too large.
    pub const EFBIG: Errno = Errno(27);
    /// No space left on device (the server's heap is full; nothing was changed).
    pub const ENOSPC: Errno = Errno(28);
    /// Too many links.
    pub const EMLINK: Errno = Errno(31);
    /// File name too long.
    pub const ENAMETOOLONG: Errno = Errno(36);
    /// Function not implemented.
    pub const ENOSYS: Errno = Errno(38);
    /// Directory not empty.
    pub const ENOTEMPTY: Errno = Errno(39);
    /// No such attribute (`ENOATTR`).
    pub const ENODATA: Errno = Errno(61);
    /// Result too large for the buffer, or an attribute name too long.
    pub const ERANGE: Errno = Errno(34);
    /// Argument list too long (an attribute value too large).
    pub const E2BIG: Errno = Errno(7);
    /// No such device (`fallocate` of a file that is not a regular file).
    pub const ENODEV: Errno = Errno(19);
    /// Too many levels of symbolic links / not a symlink where one is required.
    pub const ELOOP: Errno = Errno(40);
    /// Operation not supported.
    pub const EOPNOTSUPP: Errno = Errno(95);

    /// The symbolic name, for messages.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            7 => "E2BIG",
            19 => "ENODEV",
            34 => "ERANGE",
            61 => "ENODATA",
            2 => "ENOENT",
            5 => "EIO",
            9 => "EBADF",
            13 => "EACCES",
            17 => "EEXIST",
            18 => "EXDEV",
            20 => "ENOTDIR",
            21 => "EISDIR",
            22 => "EINVAL",
            27 => "EFBIG",
            28 => "ENOSPC",
            31 => "EMLINK",
            36 => "ENAMETOOLONG",
            38 => "ENOSYS",
            39 => "ENOTEMPTY",
            40 => "ELOOP",
            95 => "EOPNOTSUPP",
            _ => "errno",
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl std::error::Error for Errno {}

/// Who makes a call: the credentials permission checks use (FUSE passes the calling process's
/// fsuid and fsgid; the front end adds its supplementary groups), and which request it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// File-system user id (0: superuser, passes every permission check).
    pub uid: u32,
    /// File-system group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The request this call serves, for exactly-once replay (see [`RequestId`]); `None` for
    /// callers that never re-send.
    pub request: Option<RequestId>,
}

/// Names a request of a client that may send it again after its own crash (the FUSE front
/// end: a successor re-sends the requests the kernel had given the dead one).
///
/// The server records the result of every changing call that names its request, in the same
/// transaction, in a ring of the last [`REPLAY_SLOTS`] results. A call marked `resent` whose
/// request is in the ring is not executed again: it answers the recorded result. So a
/// `mkdir` that ran and committed just before its front end died answers the successor's
/// re-sent `mkdir` with its original success, not `EEXIST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The client's session (for FUSE: one per mount, kept with the connection).
    pub session: u64,
    /// The request's number in the session (for FUSE: the kernel's `unique`).
    pub unique: u64,
    /// Whether this is a re-sent request (look for a recorded result first).
    pub resent: bool,
}

/// How many recent results the server keeps for [`RequestId`] replay (more than the requests
/// a front end can have in flight).
pub const REPLAY_SLOTS: usize = 256;

impl Caller {
    /// The superuser.
    pub fn root() -> Caller {
        Caller::user(0, 0)
    }

    /// A caller with no supplementary groups, naming no request.
    pub fn user(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            groups: Vec::new(),
            request: None,
        }
    }

    /// Whether the caller is in group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// A point in time, seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Timespec {
    /// Seconds.
    pub sec: i64,
    /// Nanoseconds, < 10⁹.
    pub nsec: u32,
}

/// A timestamp a `setattr` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    /// The server's current time (`UTIME_NOW`): the owner or anyone with write permission.
    Now,
    /// A given time: only the owner or the superuser.
    At(Timespec),
}

/// An inode's attributes (what `stat(2)` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes (a symlink: its target's length).
    pub size: u64,
    /// 512-byte blocks holding data (a sparse file counts only its written blocks).
    pub blocks: u64,
    /// Last access (changed only by `setattr`: the server keeps no access times on reads).
    pub atime: Timespec,
    /// Last data change.
    pub mtime: Timespec,
    /// Last status change.
    pub ctime: Timespec,
    /// Type and permission bits ([`mode`]).
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
}

impl Attr {
    /// The type bits of the mode.
    pub fn kind(&self) -> u32 {
        self.mode & mode::S_IFMT
    }
}

/// What a `setattr` changes (`None`: leave as is). Applied all or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits (`chmod`; the type bits are ignored).
    pub mode: Option<u32>,
    /// New owner (`chown`: superuser only, unless unchanged).
    pub uid: Option<u32>,
    /// New group (`chown`: the owner may pick one of their groups).
    pub gid: Option<u32>,
    /// New size (`truncate`, `ftruncate`).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// The handle the change came through (`ftruncate`: permission was checked at open).
    pub fh: Option<u64>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Inode of the entry.
    pub ino: u64,
    /// Type bits of its mode ([`mode::S_IFMT`]).
    pub kind: u32,
    /// Name.
    pub name: Bytes,
    /// Position after this entry: pass it as the next `readdir`'s `offset`. Positions stay
    /// valid while entries are added and removed (each entry keeps its own).
    pub next: u64,
}

/// File-system statistics (`statvfs(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    /// Block size.
    pub bsize: u32,
    /// Total blocks (the heap, in blocks).
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes in use plus free.
    pub files: u64,
    /// Free inodes (bounded by free space).
    pub ffree: u64,
    /// Longest name.
    pub namelen: u32,
}

/// The result of `create`: the new inode and a handle open on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// Attributes of the new file.
    pub attr: Attr,
    /// Handle, as from `open`.
    pub fh: u64,
}

/// Data read from a file.
pub type Data = Bytes;

/// The file-system service.
///
/// Under policy `txipc` each call is one transaction: all of it happens or none of it, and a
/// server fault during it is invisible to the caller (the call completes after recovery).
#[service]
pub trait Fs {
    /// The entry `name` in directory `parent` (search permission on `parent`).
    #[readonly]
    fn lookup(&mut self, caller: Caller, parent: u64, name: Bytes) -> Result<Attr, Errno>;
    /// Attributes of `ino`.
    #[readonly]
    fn getattr(&mut self, ino: u64) -> Result<Attr, Errno>;
    /// Changes attributes (`chmod`, `chown`, `truncate`, `utimensat`), with POSIX's permission
    /// rules; clears set-user-id and set-group-id bits where POSIX says so.
    fn setattr(&mut self, caller: Caller, ino: u64, set: SetAttr) -> Result<Attr, Errno>;
    /// Creates a node that is not a directory (regular file, FIFO, socket, device) with type
    /// and permission `mode` (less `umask`).
    fn mknod(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<Attr, Errno>;
    /// Creates and opens a regular file (`O_CREAT`); `EEXIST` if `name` exists.
    fn create(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        mode: u32,
        umask: u32,
        flags: u32,
    ) -> Result<Created, Errno>;
    /// Creates a directory.
    fn mkdir(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        mode: u32,
        umask: u32,
    ) -> Result<Attr, Errno>;
    /// Removes a non-directory entry; its inode goes when its last link and handle are gone.
    fn unlink(&mut self, caller: Caller, parent: u64, name: Bytes) -> Result<(), Errno>;
    /// Removes an empty directory.
    fn rmdir(&mut self, caller: Caller, parent: u64, name: Bytes) -> Result<(), Errno>;
    /// Creates a symbolic link `name` → `target`.
    fn symlink(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        target: Bytes,
    ) -> Result<Attr, Errno>;
    /// The target of a symbolic link.
    #[readonly]
    fn readlink(&mut self, ino: u64) -> Result<Bytes, Errno>;
    /// A new hard link `newparent/newname` to `ino` (not a directory).
    fn link(
        &mut self,
        caller: Caller,
        ino: u64,
        newparent: u64,
        newname: Bytes,
    ) -> Result<Attr, Errno>;
    /// Renames `parent/name` to `newparent/newname` with POSIX's rules (an existing target
    /// is replaced atomically if compatible; a directory cannot move into itself), plus the
    /// `renameat2` flags ([`rename_flags`]).
    fn rename(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        newparent: u64,
        newname: Bytes,
        flags: u32,
    ) -> Result<(), Errno>;
    /// Opens `ino` with `open(2)` flags; returns a handle. `O_TRUNC` truncates.
    fn open(&mut self, caller: Caller, ino: u64, flags: u32) -> Result<u64, Errno>;
    /// Closes a handle (an unlinked inode goes with its last handle).
    fn release(&mut self, caller: Caller, fh: u64) -> Result<(), Errno>;
    /// Up to `size` bytes at `offset` through handle `fh` (fewer at the end of the file;
    /// holes read as zeros).
    #[readonly]
    fn read(&mut self, fh: u64, offset: u64, size: u32) -> Result<Data, Errno>;
    /// Writes `data` at `offset` (at the end of the file for an `O_APPEND` handle); the file
    /// grows, with a hole if `offset` is past its end. Returns the bytes written (all of them).
    fn write(&mut self, caller: Caller, fh: u64, offset: u64, data: Bytes) -> Result<u32, Errno>;
    /// Entries of directory `ino` after position `offset` (0: from the start, `.` and `..`
    /// first), at most `max` of them (read permission on the directory).
    #[readonly]
    fn readdir(
        &mut self,
        caller: Caller,
        ino: u64,
        offset: u64,
        max: u32,
    ) -> Result<Vec<DirEntry>, Errno>;
    /// Checks `access(2)` bits ([`amode`]) for the caller.
    #[readonly]
    fn access(&mut self, caller: Caller, ino: u64, mask: u32) -> Result<(), Errno>;
    /// File-system statistics.
    #[readonly]
    fn statfs(&mut self) -> StatFs;
    /// Flushes a file to stable storage. Here every completed call is already committed in
    /// the server's recoverable heap, so this returns at once: data survives crashes of the
    /// server and the front end (policy `txipc`), not a crash of the machine or of the txipc
    /// kernel, which keeps the heap in memory.
    #[readonly]
    fn fsync(&mut self, fh: u64) -> Result<(), Errno>;
    /// Sets extended attribute `name` (`namespace.rest`) of `ino` to `value` ([`xattr_flags`]).
    /// Namespaces: `user.` (regular files and directories only, write permission needed, and
    /// in a sticky directory the owner's), `trusted.` and `security.` (superuser only; anyone
    /// may read `security.`); `system.` (POSIX ACLs) and any other prefix are `EOPNOTSUPP`.
    /// `ERANGE` for an empty or too long name, `E2BIG` for a value over
    /// [`MAX_XATTR_VALUE`], `ENOSPC` past [`MAX_XATTR_LIST`]. Changes `ctime`.
    fn setxattr(
        &mut self,
        caller: Caller,
        ino: u64,
        name: Bytes,
        value: Bytes,
        flags: u32,
    ) -> Result<(), Errno>;
    /// The value of extended attribute `name` of `ino` (`ENODATA` if it has none).
    #[readonly]
    fn getxattr(&mut self, caller: Caller, ino: u64, name: Bytes) -> Result<Bytes, Errno>;
    /// The names of `ino`'s extended attributes the caller may see, each followed by a NUL
    /// (`trusted.` ones only for the superuser), in name order.
    #[readonly]
    fn listxattr(&mut self, caller: Caller, ino: u64) -> Result<Bytes, Errno>;
    /// Removes extended attribute `name` of `ino` (`ENODATA` if it has none). Changes `ctime`.
    fn removexattr(&mut self, caller: Caller, ino: u64, name: Bytes) -> Result<(), Errno>;
    /// `fallocate(2)` through handle `fh` (open for writing: else `EBADF`): mode 0 allocates
    /// `length` bytes at `offset` (holes become zeroed blocks; the file grows if the range
    /// passes its end), [`falloc::KEEP_SIZE`] the same without growing,
    /// [`falloc::PUNCH_HOLE`]` | KEEP_SIZE` frees the range (whole blocks go, partial ones are
    /// zeroed). Other modes are `EOPNOTSUPP`; a zero length `EINVAL`; an end past
    /// [`MAX_FILE_SIZE`] `EFBIG`; a full heap `ENOSPC` with nothing changed.
    fn fallocate(
        &mut self,
        caller: Caller,
        fh: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> Result<(), Errno>;
}
