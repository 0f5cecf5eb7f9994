//! The deterministic hasher of persistent hash maps and hashbrown maps in the heap (the same
//! in every process and incarnation). Depends on nothing in the crate.

use std::hash::{Hash, Hasher};

/// Deterministic hasher (the same in every process and incarnation): a multiply-rotate mix
/// over 8-byte words with a final avalanche.
#[derive(Debug, Default, Clone, Copy)]
pub struct StableHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for StableHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut c = bytes.chunks_exact(8);
        for w in &mut c {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            h = (h.rotate_left(5) ^ v).wrapping_mul(K);
        }
        let r = c.remainder();
        if !r.is_empty() {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(r);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(b) ^ ((r.len() as u64) << 59))
                .wrapping_mul(K);
        }
        self.0 = h;
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

/// Hash of a key's borrowed form with [`StableHasher`].
pub fn stable_hash<Q: ?Sized + Hash>(q: &Q) -> u64 {
    let mut h = StableHasher::default();
    q.hash(&mut h);
    h.finish()
}
