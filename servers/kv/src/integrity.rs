//! Optional integrity checks of the kv server (built-in `kv-checked`).
//!
//! Every value is stored followed by an 8-byte checksum of its key and bytes (a word-wise
//! multiply-rotate hash in four lanes, 64 bits; see [`checksum`]), computed from the request as
//! soon as the handler has it. The stored bytes are
//! verified whenever they are read (every lookup, every scan entry) and right after every
//! store, inside the same transaction. A mismatch is a *detected* corruption: the handler
//! panics, which the runtime reports as a crash, so under `txipc` the request is rolled back
//! and retried — a corruption made while handling it (a wild write into the value between the
//! checksum and the insert) is then undone; one that came from outside the transaction (a bit
//! flipped in memory) makes every request that reads the key fail as a poison request, which
//! is detected, not silent.
//!
//! What the checks cannot see: a value corrupted before its checksum is computed (a bad
//! request), or after it is verified (a wrong reply).

/// Odd multiplier of every step (the 64-bit golden ratio, as in many word hashes).
const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// Starting states of the four lanes (distinct, arbitrary).
const SEEDS: [u64; 4] = [
    0x243F_6A88_85A3_08D3,
    0x1319_8A2E_0370_7344,
    0xA409_3822_299F_31D0,
    0x082E_FA98_EC4E_6C89,
];

/// One step: `h` absorbs the word `w`. A bijection of `h` for a fixed `w` and of `w` for a
/// fixed `h` (xor, a multiplication by an odd constant, a rotation), so a change confined to
/// one word always changes the result; the rotation carries high bits back into low ones.
#[inline]
fn step(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(K).rotate_left(29)
}

/// Absorbs `bytes` 8 at a time (the last word zero-padded), word `i` into lane `i % 4`: four
/// independent chains, so the multiplications overlap.
#[inline]
fn absorb(lanes: &mut [u64; 4], bytes: &[u8]) {
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        for (l, w) in lanes.iter_mut().zip(c.chunks_exact(8)) {
            *l = step(*l, u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
    }
    for (l, w) in lanes.iter_mut().zip(chunks.remainder().chunks(8)) {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        *l = step(*l, u64::from_le_bytes(b));
    }
}

/// The checksum of `key` → `value`: key and value absorbed word by word in four lanes (each
/// part from a fresh word), then the lanes and both lengths folded, each fold a bijection of
/// the running value, and a final avalanche. Every flipped bit, and every change confined to
/// one 8-byte word of the key or the value, is detected with certainty; other corruptions
/// pass with a probability near 2^-64. About 1,000 bytes in some tens of ns (FNV-1a, byte by
/// byte, took microseconds: `kv_get_parts`).
pub fn checksum(key: &[u8], value: &[u8]) -> u64 {
    let mut lanes = SEEDS;
    absorb(&mut lanes, key);
    let mut vlanes = SEEDS.map(|s| s.rotate_left(32));
    absorb(&mut vlanes, value);
    let mut h = step(0, key.len() as u64);
    h = step(h, value.len() as u64);
    for l in lanes.into_iter().chain(vlanes) {
        h = step(h, l);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

/// `value` followed by its checksum: what the map stores.
pub fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 8);
    v.extend_from_slice(value);
    v.extend_from_slice(&checksum(key, value).to_le_bytes());
    v
}

/// The value of stored bytes, if their checksum matches.
pub fn open<'a>(key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    let split = stored.len().checked_sub(8)?;
    let (value, sum) = stored.split_at(split);
    (checksum(key, value).to_le_bytes() == sum).then_some(value)
}

/// The value of stored bytes; a mismatch is a detected corruption and faults the server.
pub fn verified<'a>(key: &[u8], stored: &'a [u8]) -> &'a [u8] {
    match open(key, stored) {
        Some(v) => v,
        None => panic!(
            "kv: integrity check failed: the value stored under {:?} does not match its checksum",
            String::from_utf8_lossy(key)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_flipped_bit_is_seen() {
        let s = seal(b"k", b"value");
        assert_eq!(open(b"k", &s), Some(&b"value"[..]));
        assert_eq!(open(b"other", &s), None, "bound to its key");
        for bit in 0..s.len() * 8 {
            let mut c = s.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(open(b"k", &c), None, "bit {bit}");
        }
        assert_eq!(open(b"k", &s[..7]), None);
        assert_eq!(open(b"k", &seal(b"k", b"")), Some(&b""[..]));
    }

    /// A key and a value are told apart from the same bytes split elsewhere, and any change
    /// of one 8-byte word of a 1,000-byte value (here: to each of 64 other values) is seen.
    #[test]
    fn the_split_and_any_changed_word_are_seen() {
        assert_ne!(checksum(b"ab", b"c"), checksum(b"a", b"bc"));
        assert_ne!(checksum(b"", b"k"), checksum(b"k", b""));
        assert_ne!(checksum(b"k", b"v"), checksum(b"k", b"v\0"));
        let value: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        let sum = checksum(b"key", &value);
        for word in 0..value.len().div_ceil(8) {
            for x in 1..=64u64 {
                let mut c = value.clone();
                let end = (word * 8 + 8).min(c.len());
                for (i, b) in c[word * 8..end].iter_mut().enumerate() {
                    *b ^= (x.wrapping_mul(0x0101_0101_0101_0101) >> (i * 8)) as u8 | 1;
                }
                assert_ne!(checksum(b"key", &c), sum, "word {word}, change {x}");
            }
        }
    }
}
