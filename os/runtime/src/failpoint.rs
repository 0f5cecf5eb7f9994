//! Fail points inside a running incarnation: the runtime's protocol sites and a server's own.
//!
//! The kernel arms at most one fail point per server, as one word of the status page
//! (`txipc_core::failpoint::FailSpec`). Every site calls [`fail_point`] with its number: when
//! nothing is armed that is one relaxed load of a word no one writes (the status page line is
//! read-mostly), plus the load of the page's address; the rest is out of line. When the armed
//! site is reached the word is cleared (it fires once) and the fault happens right there:
//! panic, SIGSEGV, abort, hang and exit never return; a delay sleeps and returns `None`; a
//! corruption returns a [`Corrupt`] for the site to apply to its own data.
//!
//! Servers number their sites from `txipc_core::failpoint::FIRST_SERVER_SITE` (32) up and list
//! them (name, and whether a `Corrupt` has data to flip) so that campaigns can pick one.

use std::sync::OnceLock;
use std::time::Duration;

use txipc_sys::crash::inject_kind;
use txipc_sys::status::StatusPage;

/// The incarnation's status page (set once when it starts; forked children of the zygote each
/// set their own).
static STATUS: OnceLock<&'static StatusPage> = OnceLock::new();

pub(crate) fn install(status: &'static StatusPage) {
    let _ = STATUS.set(status);
}

/// The incarnation's status page, once installed.
pub(crate) fn status() -> Option<&'static StatusPage> {
    STATUS.get().copied()
}

/// A corruption to apply: flip one bit of the site's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt {
    /// Which bit (taken modulo the data's length in bits).
    pub bit: u32,
}

impl Corrupt {
    /// Flips the chosen bit of `bytes` (nothing for empty data).
    pub fn flip(self, bytes: &mut [u8]) {
        if bytes.is_empty() {
            return;
        }
        let bit = self.bit as usize % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
    }

    /// Flips the chosen bit of a 64-bit value.
    pub fn flip_u64(self, v: u64) -> u64 {
        v ^ 1 << (self.bit % 64)
    }
}

/// Fires the fail point armed at `site`, if any. Off unless the kernel armed this very site.
#[inline]
pub fn fail_point(site: u16) -> Option<Corrupt> {
    let word = STATUS.get()?.fire(site)?;
    fire(word)
}

/// Whether any fail point is armed (without firing it): one relaxed load. A loop that passes
/// several sites reads it once and skips them all when it is false.
#[inline]
pub fn any_armed() -> bool {
    STATUS.get().is_some_and(|s| s.armed_at_any())
}

/// Whether a fail point is armed at `site` (without firing it): a site that needs its data in
/// private memory to corrupt it takes its slower path only then.
#[inline]
pub fn armed_at(site: u16) -> bool {
    STATUS.get().is_some_and(|s| s.armed_at(site))
}

#[cold]
#[inline(never)]
fn fire(word: u64) -> Option<Corrupt> {
    let kind = (word >> 16) as u8;
    let arg = (word >> 32) as u32;
    match kind {
        inject_kind::CORRUPT => Some(Corrupt { bit: arg }),
        inject_kind::DELAY => {
            std::thread::sleep(Duration::from_millis(u64::from(arg)));
            None
        }
        k => {
            txipc_sys::crash::inject(k);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_one_bit() {
        let mut b = [0u8; 4];
        Corrupt { bit: 9 }.flip(&mut b);
        assert_eq!(b, [0, 2, 0, 0]);
        Corrupt { bit: 32 + 9 }.flip(&mut b);
        assert_eq!(b, [0, 0, 0, 0], "modulo the length");
        Corrupt { bit: 3 }.flip(&mut []);
        assert_eq!(Corrupt { bit: 65 }.flip_u64(0), 2);
    }

    #[test]
    fn unarmed_or_uninstalled_is_off() {
        assert_eq!(fail_point(40), None);
    }
}
