//! Optional integrity checks of the kv server (built-in `kv-checked`).
//!
//! Every value is stored followed by an 8-byte checksum of its key and bytes (FNV-1a, 64
//! bits), computed from the request as soon as the handler has it. The stored bytes are
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

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

/// The checksum of `key` → `value`.
pub fn checksum(key: &[u8], value: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in key.iter().chain(&[0xFF]).chain(value) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
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
}
