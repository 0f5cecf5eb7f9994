//! The transactional allocator.
//!
//! # Design
//!
//! All metadata lives in the heap header and in free blocks, and every change to it goes
//! through the transaction's log like any other write, so an aborted transaction also aborts its
//! allocations and frees. Layout of the data area (`4096..size`):
//!
//! ```text
//! 4096            sbump                         lbump                 size
//!  | small blocks  ->|   pristine (all zero)     |<-  large extents    |
//! ```
//!
//! * **Small** requests (≤ 2048 bytes, align ≤ 16) are rounded to one of 28 size classes and
//!   served from that class's LIFO free list (link in the block's first 8 bytes) or carved from
//!   the bottom bump pointer. A block never changes class.
//! * **Large** requests (and align > 16, up to 4096) take whole pages from an address-ordered,
//!   coalesced list of free extents (node `{next, pages}` in the extent's first 16 bytes;
//!   first fit, split from the extent's tail) or from the top bump pointer, growing down.
//! * The area between the two bump pointers is **pristine**: never used, so all zero. Carving
//!   from it logs a payload-free ZERO record; reusing a freed block logs the block's pre-image
//!   (its old bytes), so a rollback restores the heap byte for byte.
//! * A full heap is [`HeapError::Full`], never a crash.

use std::sync::atomic::{Ordering, compiler_fence};

use serde::{Deserialize, Serialize};

use crate::HeapError;
use crate::layout::{AllocMeta, HEAP_DATA_OFFSET, HeapHeader, NCLASS, PAGE};
use crate::txcore::TxCore;

/// The small size classes, in bytes.
pub const CLASS_SIZES: [u32; NCLASS] = [
    16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 320, 384, 448, 512,
    640, 768, 896, 1024, 1280, 1536, 1792, 2048,
];
/// Largest small request.
pub const MAX_SMALL: usize = 2048;

#[inline]
pub(crate) fn class_of(size: usize) -> usize {
    if size <= 256 {
        size.max(1).div_ceil(16) - 1
    } else {
        let mut c = 16;
        while (CLASS_SIZES[c] as usize) < size {
            c += 1;
        }
        c
    }
}

pub(crate) fn format_meta(m: &AllocMeta, size: usize) {
    // Raw initialisation on a fresh heap (no transaction exists yet).
    m.sbump.init_raw(HEAP_DATA_OFFSET as u64);
    m.lbump.init_raw(size as u64);
}

#[repr(C)]
struct LargeNode {
    next: u64,
    pages: u64,
}

impl TxCore {
    fn meta(&self) -> &AllocMeta {
        // SAFETY: the header is at base, inside the live mapping; AllocMeta is all cells.
        unsafe { &(*(self.base as *const HeapHeader)).alloc }
    }

    fn full(&self, requested: usize) -> HeapError {
        let s = stats(self.meta(), self.base, self.end - self.base);
        HeapError::Full {
            requested,
            free: s.free_bytes as usize,
        }
    }

    fn bad(&self, what: &str, p: u64) -> HeapError {
        HeapError::BadHeap(format!("allocator: {what} ({p:#x})"))
    }

    /// Allocates `size` bytes aligned to `align` (≤ 4096). The block's bytes are logged (or
    /// known zero), so the caller may initialise them without logging.
    pub(crate) fn alloc(&self, size: usize, align: usize) -> Result<*mut u8, HeapError> {
        if size == 0 || !align.is_power_of_two() || align > PAGE {
            return Err(HeapError::Invalid(
                "allocation of size 0 or alignment > 4096",
            ));
        }
        if size <= MAX_SMALL && align <= 16 {
            self.alloc_small(class_of(size))
        } else {
            let pages = size.div_ceil(PAGE);
            self.alloc_large(pages)
        }
    }

    fn alloc_small(&self, c: usize) -> Result<*mut u8, HeapError> {
        let m = self.meta();
        let cs = CLASS_SIZES[c] as usize;
        let head = m.small[c].get();
        let sb = m.sbump.get();
        if head != 0 {
            if head < (self.base + HEAP_DATA_OFFSET) as u64
                || head + cs as u64 > self.base as u64 + sb
                || head % 16 != 0
            {
                return Err(self.bad("small free-list head out of range", head));
            }
            let p = head as *mut u8;
            // SAFETY: p..p+cs is a free block inside the small area (checked); its first word
            // is the list link.
            unsafe {
                let next = p.cast::<u64>().read();
                self.log(p, cs)?;
                m.small[c].set_core(self, next)?;
            }
            return Ok(p);
        }
        let lb = m.lbump.get();
        if lb - sb < cs as u64 {
            return Err(self.full(cs));
        }
        m.sbump.set_core(self, sb + cs as u64)?;
        let p = self.base + sb as usize;
        self.log_zero(p, cs)?;
        Ok(p as *mut u8)
    }

    fn alloc_large(&self, pages: usize) -> Result<*mut u8, HeapError> {
        let m = self.meta();
        let need = pages * PAGE;
        let lb = m.lbump.get();
        let mut link: *mut u64 = m.large.as_ptr();
        // SAFETY: link points at the head cell (in the heap header).
        let mut cur = unsafe { link.read() };
        let mut guard = (self.end - self.base) / PAGE + 1;
        while cur != 0 {
            guard -= 1;
            if guard == 0 {
                return Err(self.bad("large free list has a cycle", cur));
            }
            if cur % PAGE as u64 != 0 || cur < self.base as u64 + lb || cur >= self.end as u64 {
                return Err(self.bad("large extent out of range", cur));
            }
            let node = cur as *mut LargeNode;
            // SAFETY: `node` is a free extent inside the large area (checked); its first 16
            // bytes are the node; nothing else references free memory.
            unsafe {
                let np = (*node).pages;
                let next = (*node).next;
                if np == pages as u64 {
                    self.set_u64(link, next)?;
                    self.log(cur as *const u8, need)?;
                    return Ok(cur as *mut u8);
                }
                if np > pages as u64 {
                    let rest = np - pages as u64;
                    self.set_u64(&raw mut (*node).pages, rest)?;
                    let blk = cur as usize + rest as usize * PAGE;
                    self.log(blk as *const u8, need)?;
                    return Ok(blk as *mut u8);
                }
                link = &raw mut (*node).next;
                cur = next;
            }
        }
        let sb = m.sbump.get();
        if lb - sb < need as u64 {
            return Err(self.full(need));
        }
        let nl = lb - need as u64;
        m.lbump.set_core(self, nl)?;
        let p = self.base + nl as usize;
        self.log_zero(p, need)?;
        Ok(p as *mut u8)
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `p` was returned by `alloc(size, align)` on this heap, is not freed yet, and no live
    /// reference points into it.
    pub(crate) unsafe fn free(
        &self,
        p: *mut u8,
        size: usize,
        align: usize,
    ) -> Result<(), HeapError> {
        let m = self.meta();
        let a = p as u64;
        if size <= MAX_SMALL && align <= 16 {
            let c = class_of(size);
            if a < (self.base + HEAP_DATA_OFFSET) as u64
                || a + CLASS_SIZES[c] as u64 > self.base as u64 + m.sbump.get()
                || a % 16 != 0
            {
                return Err(self.bad("free of a small block outside the small area", a));
            }
            // SAFETY: p is our block (contract), 16-aligned (checked).
            unsafe { self.set_u64(p.cast(), m.small[c].get())? };
            return m.small[c].set_core(self, a);
        }
        let pages = size.div_ceil(PAGE) as u64;
        if a % PAGE as u64 != 0
            || a < self.base as u64 + m.lbump.get()
            || a + pages * PAGE as u64 > self.end as u64
        {
            return Err(self.bad("free of a large block outside the large area", a));
        }
        let mut link: *mut u64 = m.large.as_ptr();
        let mut prev: *mut LargeNode = std::ptr::null_mut();
        // SAFETY: link is the head cell.
        let mut cur = unsafe { link.read() };
        let mut guard = (self.end - self.base) / PAGE + 1;
        // SAFETY: (whole block) every node visited lies in the large area (it was put there by
        // this function, and is re-checked); `p` is ours (contract).
        unsafe {
            while cur != 0 && cur < a {
                guard -= 1;
                if guard == 0 || cur % PAGE as u64 != 0 || cur >= self.end as u64 {
                    return Err(self.bad("large free list corrupt", cur));
                }
                prev = cur as *mut LargeNode;
                link = &raw mut (*prev).next;
                cur = (*prev).next;
            }
            if cur == a
                || (!prev.is_null() && prev as u64 + (*prev).pages * PAGE as u64 > a)
                || (cur != 0 && a + pages * PAGE as u64 > cur)
            {
                return Err(self.bad("double free or overlap of a large block", a));
            }
            let merge_prev = !prev.is_null() && prev as u64 + (*prev).pages * PAGE as u64 == a;
            let merge_next = cur != 0 && a + pages * PAGE as u64 == cur;
            let nextnode = cur as *mut LargeNode;
            match (merge_prev, merge_next) {
                (true, true) => {
                    self.log(prev.cast(), 16)?;
                    (*prev).pages += pages + (*nextnode).pages;
                    (*prev).next = (*nextnode).next;
                }
                (true, false) => {
                    self.set_u64(&raw mut (*prev).pages, (*prev).pages + pages)?;
                }
                (false, true) => {
                    let node = p.cast::<LargeNode>();
                    self.log(p, 16)?;
                    node.write(LargeNode {
                        next: (*nextnode).next,
                        pages: pages + (*nextnode).pages,
                    });
                    self.set_u64(link, a)?;
                }
                (false, false) => {
                    let node = p.cast::<LargeNode>();
                    self.log(p, 16)?;
                    node.write(LargeNode { next: cur, pages });
                    self.set_u64(link, a)?;
                }
            }
        }
        compiler_fence(Ordering::SeqCst);
        Ok(())
    }
}

/// Allocator usage, from [`Heap::stats`](crate::Heap::stats).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeapStats {
    /// Heap size.
    pub size: u64,
    /// Bytes in live allocations (carved minus free-listed).
    pub used_bytes: u64,
    /// Never-used bytes between the two bump pointers.
    pub pristine_bytes: u64,
    /// Bytes on the small free lists.
    pub free_small_bytes: u64,
    /// Bytes in free large extents.
    pub free_large_bytes: u64,
    /// Number of free large extents.
    pub free_large_extents: u64,
    /// All free bytes.
    pub free_bytes: u64,
    /// Largest contiguous free piece (pristine area or extent).
    pub largest_free: u64,
    /// 1 − largest_free / free_bytes: 0 when all free memory is one piece.
    pub fragmentation: f64,
    /// Free blocks per small class.
    pub free_small_blocks: Vec<u64>,
}

pub(crate) fn stats(m: &AllocMeta, base: usize, size: usize) -> HeapStats {
    let sb = m.sbump.get();
    let lb = m.lbump.get();
    let mut s = HeapStats {
        size: size as u64,
        pristine_bytes: lb.saturating_sub(sb),
        free_small_blocks: vec![0; NCLASS],
        ..HeapStats::default()
    };
    let limit = size / 16 + 1;
    for (c, head) in m.small.iter().enumerate() {
        let mut p = head.get();
        let mut n = 0;
        while p != 0 && n < limit {
            if p < base as u64 || p + 8 > (base + size) as u64 {
                break;
            }
            n += 1;
            // SAFETY: p is inside the heap (checked); reading a free block's link.
            p = unsafe { (p as *const u64).read() };
        }
        s.free_small_blocks[c] = n as u64;
        s.free_small_bytes += n as u64 * u64::from(CLASS_SIZES[c]);
    }
    let mut p = m.large.get();
    let mut n = 0;
    while p != 0 && n < limit {
        if p < base as u64 || p + 16 > (base + size) as u64 {
            break;
        }
        // SAFETY: inside the heap (checked).
        let (next, pages) = unsafe {
            (
                (*(p as *const LargeNode)).next,
                (*(p as *const LargeNode)).pages,
            )
        };
        s.free_large_bytes += pages * PAGE as u64;
        s.largest_free = s.largest_free.max(pages * PAGE as u64);
        s.free_large_extents += 1;
        n += 1;
        p = next;
    }
    s.largest_free = s.largest_free.max(s.pristine_bytes);
    s.free_bytes = s.pristine_bytes + s.free_small_bytes + s.free_large_bytes;
    let carved = (size as u64 - HEAP_DATA_OFFSET as u64).saturating_sub(s.pristine_bytes);
    s.used_bytes = carved.saturating_sub(s.free_small_bytes + s.free_large_bytes);
    s.fragmentation = if s.free_bytes == 0 {
        0.0
    } else {
        1.0 - s.largest_free as f64 / s.free_bytes as f64
    };
    s
}

pub(crate) fn check_meta(m: &AllocMeta, _base: usize, size: usize) -> Result<(), String> {
    let sb = m.sbump.get();
    let lb = m.lbump.get();
    if sb < HEAP_DATA_OFFSET as u64
        || sb > lb
        || lb > size as u64
        || sb % 16 != 0
        || lb % PAGE as u64 != 0
    {
        return Err(format!(
            "bump pointers inconsistent: sbump {sb:#x}, lbump {lb:#x}, size {size:#x}"
        ));
    }
    Ok(())
}

pub(crate) fn check_free(
    m: &AllocMeta,
    base: usize,
    size: usize,
    deep: bool,
) -> Result<(), String> {
    let sb = base as u64 + m.sbump.get();
    let lb = base as u64 + m.lbump.get();
    let end = (base + size) as u64;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let limit = size / 16 + 1;
    for (c, head) in m.small.iter().enumerate() {
        let cs = u64::from(CLASS_SIZES[c]);
        let mut p = head.get();
        let mut n = 0;
        while p != 0 {
            n += 1;
            if n > limit {
                return Err(format!("class {c}: free list longer than the heap (cycle)"));
            }
            if p < (base + HEAP_DATA_OFFSET) as u64 || p + cs > sb || p % 16 != 0 {
                return Err(format!(
                    "class {c}: free block {p:#x} outside the small area"
                ));
            }
            ranges.push((p, p + cs));
            // SAFETY: inside the heap (checked).
            p = unsafe { (p as *const u64).read() };
        }
    }
    let mut p = m.large.get();
    let mut last_end = 0u64;
    let mut n = 0;
    while p != 0 {
        n += 1;
        if n > limit {
            return Err("large free list has a cycle".into());
        }
        if p % PAGE as u64 != 0 || p < lb || p + 16 > end {
            return Err(format!("large extent {p:#x} outside the large area"));
        }
        // SAFETY: inside the heap (checked).
        let (next, pages) = unsafe {
            (
                (*(p as *const LargeNode)).next,
                (*(p as *const LargeNode)).pages,
            )
        };
        if pages == 0 || p + pages * PAGE as u64 > end {
            return Err(format!("large extent {p:#x} has bad length {pages}"));
        }
        if p < last_end {
            return Err(format!("large extents unsorted or overlapping at {p:#x}"));
        }
        if p == last_end {
            return Err(format!("large extents not coalesced at {p:#x}"));
        }
        last_end = p + pages * PAGE as u64;
        ranges.push((p, last_end));
        p = next;
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(format!(
                "free blocks overlap: {:#x?} and {:#x?}",
                w[0], w[1]
            ));
        }
    }
    if deep {
        // SAFETY: sb..lb is inside the heap mapping (check_meta).
        let pristine = unsafe { std::slice::from_raw_parts(sb as *const u8, (lb - sb) as usize) };
        if let Some(i) = pristine.iter().position(|&b| b != 0) {
            return Err(format!("pristine area not zero at {:#x}", sb + i as u64));
        }
    }
    Ok(())
}
