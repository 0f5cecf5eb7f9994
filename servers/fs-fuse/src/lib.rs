//! The FUSE front end of the fs service: unmodified programs use the file system through the
//! kernel's FUSE driver, and every FUSE request becomes exactly one call of the fs service
//! (one transaction), so a server fault is invisible to the program doing I/O: its request
//! completes after recovery.
//!
//! Design principles:
//! - **One request, one call.** The front end keeps no file-system state of its own (no inode
//!   table, no handle table): node ids are the server's inode numbers and file handles are the
//!   server's handles. A front end that dies therefore loses nothing but the requests it was
//!   holding, and the kernel can hand those to a successor.
//! - **The raw protocol, spoken here.** The `/dev/fuse` protocol is implemented directly
//!   (`abi`, `session`) instead of through the `fuser` crate: `fuser` always starts a session
//!   with `INIT`, and a replacement front end must adopt a connection that was initialised
//!   long ago (no `INIT` comes again) and ask the kernel to re-send the requests in flight.
//!   Both a fresh mount and an adopted one go through the same request loop.
//! - **No libfuse.** Mounting is one `mount(2)` with `fd=N` (as root), unmounting one
//!   `umount2(2)`; nothing but the Rust toolchain is needed to build it.
#![forbid(unsafe_code)]

pub mod abi;
pub mod mount;
pub mod session;
pub mod supervise;

pub use mount::{Ended, MountError, MountOptions, Start, is_fuse_mount, mount_path, run, unmount};
pub use session::Session;
pub use supervise::{Event, Outcome, Role, follow_parent, supervise};
