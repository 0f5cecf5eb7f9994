//! The file-system server: a POSIX file system whose whole state is in the recoverable heap.
//!
//! Design principles:
//! - **One request, one transaction.** Every method of [`fs_api::Fs`] runs inside the
//!   transaction the runtime opened for it; under policy `txipc` a fault at any instant rolls
//!   the request back and it runs again, so a program doing I/O through the FUSE front end
//!   never sees the fault. Under `none` and `restart` the same code runs with tracking off.
//! - **Check, then change.** Each operation validates everything (existence, types,
//!   permissions, limits) before its first write, so an error leaves nothing changed whatever
//!   the tracking mode; and changes run inside one savepoint of the transaction, which rolls a request
//!   that fills the heap back to its start and answers `ENOSPC`.
//! - **Sparse by construction.** File data is fixed-size blocks keyed by block number; a hole
//!   is a missing block, a partial write into a block logs only the bytes it overwrites.
//!
//! The layout of the state is described in [`state`]; the permission rules in `perm`. The
//! logic is [`FsCore`], usable in-process over any heap (the unit tests do that); [`FsServer`]
//! binds it to the runtime.
#![forbid(unsafe_code)]

mod data;
mod ops;
mod perm;
pub mod state;
mod xattr;

use fs_api::{
    Attr, Bytes, Caller, Created, Data, DirEntry, Errno, Fs, FsDispatcher, SetAttr, StatFs,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use txipc_heap::Tx;
use txipc_runtime::{Builtin, Instance, StartArgs, TxCell, TxHost};

pub use ops::FsCore;
pub use state::FsRoot;

/// The fs server: [`FsCore`] driven by the runtime's transactions.
#[derive(Debug)]
pub struct FsServer {
    core: FsCore,
    tx: TxCell,
}

impl FsServer {
    /// Runs a changing call exactly once per named request: a re-sent request whose result is
    /// recorded answers that result; otherwise the call runs and its result is recorded in the
    /// same transaction (see `fs_api::RequestId`).
    fn once<T: Serialize + DeserializeOwned>(
        &mut self,
        caller: &Caller,
        f: impl FnOnce(&FsCore, &mut Tx<'static>, &Caller) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let core = self.core;
        let tx = self.tx.tx();
        if let Some(r) = caller.request
            && r.resent
            && let Some(bytes) = core.root().replayed(tx, r.session, r.unique)
            && let Ok(v) = txipc_service::decode::<Result<T, Errno>>(&bytes)
        {
            return v;
        }
        let out = f(&core, tx, caller);
        if let Some(r) = caller.request {
            let mut bytes = Vec::new();
            if txipc_service::encode(&out, &mut bytes).is_ok() {
                // A full heap or log here only loses the record (the result stands).
                let sp = tx.savepoint().expect("savepoint");
                if core.root().record(tx, r.session, r.unique, &bytes).is_err() {
                    let _ = tx.rollback_to(sp);
                }
            }
        }
        out
    }
}

impl TxHost for FsServer {
    fn tx_cell(&mut self) -> &mut TxCell {
        &mut self.tx
    }
}

impl Fs for FsServer {
    fn lookup(&mut self, caller: Caller, parent: u64, name: Bytes) -> Result<Attr, Errno> {
        self.core.lookup(self.tx.tx(), &caller, parent, &name)
    }

    fn getattr(&mut self, ino: u64) -> Result<Attr, Errno> {
        self.core.getattr(self.tx.tx(), ino)
    }

    fn setattr(&mut self, caller: Caller, ino: u64, set: SetAttr) -> Result<Attr, Errno> {
        self.once(&caller, |fs, tx, c| fs.setattr(tx, c, ino, &set))
    }

    fn mknod(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<Attr, Errno> {
        self.once(&caller, |fs, tx, c| {
            fs.mknod(tx, c, parent, &name, mode, umask, rdev)
        })
    }

    fn create(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        mode: u32,
        umask: u32,
        flags: u32,
    ) -> Result<Created, Errno> {
        self.once(&caller, |fs, tx, c| {
            fs.create(tx, c, parent, &name, mode, umask, flags)
        })
    }

    fn mkdir(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        mode: u32,
        umask: u32,
    ) -> Result<Attr, Errno> {
        self.once(&caller, |fs, tx, c| {
            fs.mkdir(tx, c, parent, &name, mode, umask)
        })
    }

    fn unlink(&mut self, caller: Caller, parent: u64, name: Bytes) -> Result<(), Errno> {
        self.once(&caller, |fs, tx, c| fs.unlink(tx, c, parent, &name))
    }

    fn rmdir(&mut self, caller: Caller, parent: u64, name: Bytes) -> Result<(), Errno> {
        self.once(&caller, |fs, tx, c| fs.rmdir(tx, c, parent, &name))
    }

    fn symlink(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        target: Bytes,
    ) -> Result<Attr, Errno> {
        self.once(&caller, |fs, tx, c| {
            fs.symlink(tx, c, parent, &name, &target)
        })
    }

    fn readlink(&mut self, ino: u64) -> Result<Bytes, Errno> {
        self.core.readlink(self.tx.tx(), ino).map(Bytes::from)
    }

    fn link(
        &mut self,
        caller: Caller,
        ino: u64,
        newparent: u64,
        newname: Bytes,
    ) -> Result<Attr, Errno> {
        self.once(&caller, |fs, tx, c| {
            fs.link(tx, c, ino, newparent, &newname)
        })
    }

    fn rename(
        &mut self,
        caller: Caller,
        parent: u64,
        name: Bytes,
        newparent: u64,
        newname: Bytes,
        flags: u32,
    ) -> Result<(), Errno> {
        self.once(&caller, |fs, tx, c| {
            fs.rename(tx, c, parent, &name, newparent, &newname, flags)
        })
    }

    fn open(&mut self, caller: Caller, ino: u64, flags: u32) -> Result<u64, Errno> {
        self.once(&caller, |fs, tx, c| fs.open(tx, c, ino, flags))
    }

    fn release(&mut self, caller: Caller, fh: u64) -> Result<(), Errno> {
        self.once(&caller, |fs, tx, _| fs.release(tx, fh))
    }

    fn read(&mut self, fh: u64, offset: u64, size: u32) -> Result<Data, Errno> {
        self.core
            .read(self.tx.tx(), fh, offset, size)
            .map(Bytes::from)
    }

    fn write(&mut self, caller: Caller, fh: u64, offset: u64, data: Bytes) -> Result<u32, Errno> {
        self.once(&caller, |fs, tx, _| fs.write(tx, fh, offset, &data))
    }

    fn readdir(
        &mut self,
        caller: Caller,
        ino: u64,
        offset: u64,
        max: u32,
    ) -> Result<Vec<DirEntry>, Errno> {
        self.core.readdir(self.tx.tx(), &caller, ino, offset, max)
    }

    fn access(&mut self, caller: Caller, ino: u64, mask: u32) -> Result<(), Errno> {
        self.core.access(self.tx.tx(), &caller, ino, mask)
    }

    fn statfs(&mut self) -> StatFs {
        self.core.statfs()
    }

    fn fsync(&mut self, fh: u64) -> Result<(), Errno> {
        self.core.fsync(self.tx.tx(), fh)
    }

    fn setxattr(
        &mut self,
        caller: Caller,
        ino: u64,
        name: Bytes,
        value: Bytes,
        flags: u32,
    ) -> Result<(), Errno> {
        self.once(&caller, |fs, tx, c| {
            fs.setxattr(tx, c, ino, &name, &value, flags)
        })
    }

    fn getxattr(&mut self, caller: Caller, ino: u64, name: Bytes) -> Result<Bytes, Errno> {
        self.core
            .getxattr(self.tx.tx(), &caller, ino, &name)
            .map(Bytes::from)
    }

    fn listxattr(&mut self, caller: Caller, ino: u64) -> Result<Bytes, Errno> {
        self.core
            .listxattr(self.tx.tx(), &caller, ino)
            .map(Bytes::from)
    }

    fn removexattr(&mut self, caller: Caller, ino: u64, name: Bytes) -> Result<(), Errno> {
        self.once(&caller, |fs, tx, c| fs.removexattr(tx, c, ino, &name))
    }

    fn fallocate(
        &mut self,
        caller: Caller,
        fh: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> Result<(), Errno> {
        self.once(&caller, |fs, tx, _| {
            fs.fallocate(tx, fh, mode, offset, length)
        })
    }
}

fn start(args: StartArgs<'_>) -> Result<Box<dyn Instance>, String> {
    let core = FsCore::attach(args.heap).map_err(|e| format!("fs: {e}"))?;
    Ok(Box::new(FsDispatcher::new(FsServer {
        core,
        tx: TxCell::new(),
    })))
}

/// The fs server as a built-in of the txipc binary.
pub const BUILTIN: Builtin = Builtin { name: "fs", start };
