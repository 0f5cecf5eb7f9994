//! The tracking modes (how a transaction's writes reach the undo log). Depends on nothing in
//! the crate.

use serde::{Deserialize, Serialize};

/// How a transaction's writes reach the undo log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tracking {
    /// Every mutating method logs the exact bytes it is about to change (policy `txipc`, typed).
    Typed,
    /// Typed writes are not logged one by one; every page is write-protected at begin and its
    /// pre-image logged on its first write (policy `txipc`, page).
    Page,
    /// Nothing is logged (policies `none` and `restart`: same code, no undo).
    Off,
}

impl Tracking {
    pub(crate) fn code(self) -> u32 {
        match self {
            Tracking::Typed => 1,
            Tracking::Page => 2,
            Tracking::Off => 3,
        }
    }
    pub(crate) fn from_code(c: u32) -> Option<Tracking> {
        match c {
            1 => Some(Tracking::Typed),
            2 => Some(Tracking::Page),
            3 => Some(Tracking::Off),
            _ => None,
        }
    }
}
