//! The kv server's fail-point sites (numbers from `txipc_core::failpoint::FIRST_SERVER_SITE`).
//!
//! Each is a call to `txipc_runtime::fail_point` in a handler: off (one relaxed load) unless the
//! kernel armed that very site. Sites with data apply a `Corrupt` fault to it (the value being
//! stored, a value being returned, a counter read); the others only crash, hang or delay.

use txipc_core::failpoint::Site;

/// `get`: the value found, before it is returned (data: the value).
pub const GET_FOUND: u16 = 32;
/// `put`: the request's value, before anything is read (data: the value).
pub const PUT_VALUE: u16 = 33;
/// `put`: stored, the previous value not yet returned (data: the previous value).
pub const PUT_STORED: u16 = 34;
/// `delete`: the key exists, nothing removed yet.
pub const DELETE_FOUND: u16 = 35;
/// `cas`: the expected value matched, nothing stored yet (data: the new value).
pub const CAS_MATCHED: u16 = 36;
/// `incr`: the counter read, the new value not computed (data: the counter).
pub const INCR_READ: u16 = 37;
/// `incr`: the new value stored, not yet returned.
pub const INCR_STORED: u16 = 38;
/// Every update: before the map insert (data: the value to store).
pub const STORE_BEFORE_INSERT: u16 = 39;
/// Every update: the map changed, the update count not yet.
pub const STORE_AFTER_INSERT: u16 = 40;
/// Every update: map and update count changed.
pub const STORE_AFTER_COUNT: u16 = 41;
/// `scan`: entries collected, not yet returned (data: the first entry's value).
pub const SCAN_ENTRY: u16 = 42;
/// Every lookup of a key's current value (data: the value read).
pub const LOOKUP: u16 = 43;

const fn site(id: u16, name: &'static str, data: bool) -> Site {
    Site { id, name, data }
}

/// Every site of the kv server.
pub const SITES: &[Site] = &[
    site(GET_FOUND, "kv.get.found", true),
    site(PUT_VALUE, "kv.put.value", true),
    site(PUT_STORED, "kv.put.stored", true),
    site(DELETE_FOUND, "kv.delete.found", false),
    site(CAS_MATCHED, "kv.cas.matched", true),
    site(INCR_READ, "kv.incr.read", true),
    site(INCR_STORED, "kv.incr.stored", false),
    site(STORE_BEFORE_INSERT, "kv.store.before-insert", true),
    site(STORE_AFTER_INSERT, "kv.store.after-insert", false),
    site(STORE_AFTER_COUNT, "kv.store.after-count", false),
    site(SCAN_ENTRY, "kv.scan.entry", true),
    site(LOOKUP, "kv.lookup", true),
];

#[cfg(test)]
mod tests {
    use super::*;
    use txipc_core::failpoint::{FIRST_SERVER_SITE, RUNTIME_SITES};

    #[test]
    fn sites_are_distinct_and_in_the_server_range() {
        let mut ids: Vec<u16> = SITES.iter().map(|s| s.id).collect();
        ids.extend(RUNTIME_SITES.iter().map(|s| s.id));
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
        assert!(SITES.iter().all(|s| s.id >= FIRST_SERVER_SITE));
    }
}
