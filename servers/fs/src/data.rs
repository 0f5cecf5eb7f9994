//! File data: fixed-size blocks keyed by block number (see [`crate::state`]).

use std::ops::Bound;

use fs_api::BLOCK_SIZE;
use txipc_heap::Tx;

use crate::state::{FsRoot, Inode, R, bkey};

const BS: u64 = BLOCK_SIZE as u64;

/// Copies `len` bytes at `off` of file `ino` (whose size is `size`) out; holes read as zeros.
pub(crate) fn read(root: &FsRoot, tx: &Tx<'_>, ino: u64, size: u64, off: u64, len: u64) -> Vec<u8> {
    if off >= size {
        return Vec::new();
    }
    let end = size.min(off.saturating_add(len));
    let mut out = vec![0u8; (end - off) as usize];
    let (first, last) = (off / BS, (end - 1) / BS);
    let lo = bkey(ino, first);
    let hi = bkey(ino, last);
    for (k, buf) in root
        .blocks
        .range(tx, Bound::Included(&lo), Bound::Included(&hi))
    {
        let b = (*k & u128::from(u64::MAX)) as u64;
        let bstart = b * BS;
        let from = off.max(bstart);
        let to = end.min(bstart + BS);
        let dst = &mut out[(from - off) as usize..(to - off) as usize];
        buf.read_at(tx, (from - bstart) as usize, dst)
            .expect("range inside the block");
    }
    out
}

/// Writes `data` at `off` of file `ino`, creating the blocks it touches that are holes. The
/// caller updates size, block count and times; returns the number of blocks created.
pub(crate) fn write(root: &FsRoot, tx: &mut Tx<'_>, ino: u64, off: u64, data: &[u8]) -> R<u64> {
    let mut created = 0;
    let mut pos = 0usize;
    let mut block = vec![0u8; BLOCK_SIZE];
    while pos < data.len() {
        let at = off + pos as u64;
        let b = at / BS;
        let inb = (at % BS) as usize;
        let n = (BLOCK_SIZE - inb).min(data.len() - pos);
        let chunk = &data[pos..pos + n];
        let key = bkey(ino, b);
        match root.blocks.get(tx, &key) {
            Some(buf) => buf.write_at(tx, inb, chunk)?,
            None => {
                block.fill(0);
                block[inb..inb + n].copy_from_slice(chunk);
                root.blocks.insert(tx, key, &block)?;
                created += 1;
            }
        }
        pos += n;
    }
    Ok(created)
}

/// Removes every block of `ino` from block number `from` on; returns how many.
pub(crate) fn free_blocks_from(root: &FsRoot, tx: &mut Tx<'_>, ino: u64, from: u64) -> R<u64> {
    let lo = bkey(ino, from);
    let hi = bkey(ino, u64::MAX);
    let keys: Vec<u128> = root
        .blocks
        .range(tx, Bound::Included(&lo), Bound::Included(&hi))
        .map(|(k, _)| *k)
        .collect();
    for k in &keys {
        root.blocks.remove(tx, k)?;
    }
    Ok(keys.len() as u64)
}

/// Sets the size of `ino` (record `i`) to `size`: blocks wholly past the end are freed and the
/// tail of the block the new end falls in is zeroed; growing leaves a hole. Updates `i.size`
/// and `i.blocks` (the caller writes `i` back and sets the times).
pub(crate) fn truncate(
    root: &FsRoot,
    tx: &mut Tx<'_>,
    ino: u64,
    i: &mut Inode,
    size: u64,
) -> R<()> {
    if size < i.size {
        let keep = size.div_ceil(BS);
        let freed = free_blocks_from(root, tx, ino, keep)?;
        i.blocks = i.blocks.saturating_sub(freed);
        let tail = (size % BS) as usize;
        if tail != 0
            && let Some(buf) = root.blocks.get(tx, &bkey(ino, size / BS))
        {
            buf.zero(tx, tail, BLOCK_SIZE - tail)?;
        }
    }
    i.size = size;
    Ok(())
}
