//! The heap's layout: the header at offset 0 of every heap (with the allocator's metadata in
//! it), the constants that fix where things are, and the tracking modes recorded in it. Owned
//! by its users (`heap`, `alloc`, `page`, `recover`), which all depend on it; it depends only on
//! the cell type its fields are made of ([`crate::tracking`] is apart, so that errors can
//! name a mode without depending on the layout).

use std::sync::atomic::AtomicU32;

use crate::cell::PCell;

/// Page size of the large-object path.
pub const PAGE: usize = 4096;
/// Number of small size classes.
pub const NCLASS: usize = 28;

/// Magic number at the start of every heap.
pub const HEAP_MAGIC: u64 = u64::from_le_bytes(*b"TXIPCHP1");
/// Version of the heap layout.
pub const HEAP_VERSION: u32 = 1;
/// Offset of the first allocatable byte (the header owns page 0).
pub const HEAP_DATA_OFFSET: usize = 4096;
/// Smallest heap.
pub const MIN_HEAP_SIZE: usize = 64 * 1024;
/// Start of the default range for heap bases (32 TiB): far above the usual brk area and below
/// the top-down mmap area and the stack of 47-bit user space. The kernel maps server number `i`
/// at [`default_base`]`(i)`; 64 servers of at most 1 TiB each end at 96 TiB, below 128 TiB.
pub const DEFAULT_BASE: usize = 0x2000_0000_0000;
/// Distance between the default bases of two servers (1 TiB; heaps are at most this large).
pub const BASE_STRIDE: usize = 1 << 40;

/// The default fixed base for server number `index` (0, 1, 2, ...).
pub fn default_base(index: usize) -> usize {
    DEFAULT_BASE + index * BASE_STRIDE
}

/// The header at offset 0 of every heap.
#[repr(C)]
pub(crate) struct HeapHeader {
    pub(crate) magic: u64,
    pub(crate) version: u32,
    pub(crate) hdr_size: u32,
    pub(crate) size: u64,
    pub(crate) base: u64,
    pub(crate) layout: u64,
    /// Tracking mode of the process that has the heap attached (not transactional; lets the
    /// allocator handle refuse to run untracked under typed tracking).
    pub(crate) attach_mode: AtomicU32,
    pub(crate) _pad: u32,
    pub(crate) root: PCell<u64>,
    pub(crate) root_tag: PCell<u64>,
    pub(crate) alloc: AllocMeta,
}

const _: () = assert!(std::mem::size_of::<HeapHeader>() <= HEAP_DATA_OFFSET);

impl HeapHeader {
    pub(crate) fn size_bytes(&self) -> usize {
        self.size as usize
    }
}

/// Allocator metadata, in the heap header. Offsets are from the heap base; list heads and
/// links are absolute addresses (the heap is always mapped at its base by the server).
#[repr(C)]
pub(crate) struct AllocMeta {
    pub(crate) sbump: PCell<u64>,
    pub(crate) lbump: PCell<u64>,
    pub(crate) large: PCell<u64>,
    pub(crate) small: [PCell<u64>; NCLASS],
}
