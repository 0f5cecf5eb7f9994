//! Fail points: faults the kernel can arm in a server, fired by the runtime at a chosen point of
//! the commit protocol, or by a server's handler at one of its own sites. They let tests, the
//! demo and fault-injection campaigns hit chosen instants on purpose.
//!
//! A fail point is one word in the server's status page (written by the kernel, fired and
//! cleared by the incarnation): `arg << 32 | kind << 16 | site` ([`FailSpec::word`]). Sites 1..=31
//! belong to the runtime ([`FailPoint`] and [`RUNTIME_SITES`]); a server numbers its own from 32
//! up. Checking an
//! unarmed site costs one relaxed load.

use serde::{Deserialize, Serialize};

/// What the fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailKind {
    /// `panic!`.
    Panic = 1,
    /// A hardware SIGSEGV (store to an unmapped address).
    Segv = 2,
    /// `abort()`.
    Abort = 3,
    /// An infinite loop: the kernel's deadline must catch it.
    Hang = 4,
    /// `exit(3)`: a death the server does not report.
    Exit = 5,
    /// Flip one bit (chosen by the argument) of the data the site handles: a wrong value, not a
    /// crash; nothing detects it unless the server checks its own data. At
    /// [`FailPoint::Checkpoint`] it flips a byte of the snapshot a companion writes, after its
    /// checksum was computed (a wild write).
    Corrupt = 6,
    /// Sleep for the argument's milliseconds, then go on.
    Delay = 7,
}

impl FailKind {
    /// Every kind that stops the server (crash, hang, exit): each one is detected by the kernel.
    pub const ALL: [FailKind; 5] = [
        FailKind::Panic,
        FailKind::Segv,
        FailKind::Abort,
        FailKind::Hang,
        FailKind::Exit,
    ];
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FailKind::Panic => "panic",
            FailKind::Segv => "segv",
            FailKind::Abort => "abort",
            FailKind::Hang => "hang",
            FailKind::Exit => "exit",
            FailKind::Corrupt => "corrupt",
            FailKind::Delay => "delay",
        }
    }

    /// The kind with wire value `v`.
    pub fn from_u8(v: u8) -> Option<FailKind> {
        Some(match v {
            1 => FailKind::Panic,
            2 => FailKind::Segv,
            3 => FailKind::Abort,
            4 => FailKind::Hang,
            5 => FailKind::Exit,
            6 => FailKind::Corrupt,
            7 => FailKind::Delay,
            _ => return None,
        })
    }
}

/// Where in the life of a call the fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailPoint {
    /// Transaction begun, handler not yet run.
    BeforeHandle = 1,
    /// Handler ran and wrote its updates and reply; not committed (rollback must undo it all).
    AfterHandle = 2,
    /// Committed, reply not yet published (the kernel must publish it, not re-run it).
    AfterCommit = 3,
    /// Nested transactions, coordinator: committed and published, the participants not yet
    /// told (the kernel tells them: commit).
    AfterPublish = 4,
    /// Nested transactions, participant: a reply to a nested call published, the
    /// sub-transaction prepared, the root undecided (the root aborts unless it committed).
    Prepared = 5,
    /// Nested transactions, participant: the root's decision received, not yet applied.
    OnDecide = 6,
    /// Policy companion: in the checkpoint child, after the snapshot is distilled and
    /// checksummed, before it is written and sealed. Not in [`FailPoint::ALL`] (those are the
    /// points of a call).
    Checkpoint = 7,
    /// Policy companion, a server calling another: the callee's reply received, its record
    /// not yet in the caller's log (the callee applied the call; the caller's log does not know
    /// it). Its replay sends the call again with the same call id, and the callee answers it
    /// from its record.
    CallReplied = 8,
    /// Policy companion, a server calling another: the call's record written, the handler not
    /// yet given the reply (its replay answers the call from the record, sending nothing).
    CallRecorded = 9,
}

impl FailPoint {
    /// Every point.
    pub const ALL: [FailPoint; 3] = [
        FailPoint::BeforeHandle,
        FailPoint::AfterHandle,
        FailPoint::AfterCommit,
    ];
    /// The points of nested transactions (ARCHITECTURE.md §13), fired only by servers that
    /// take part in one.
    pub const NESTED: [FailPoint; 3] = [
        FailPoint::AfterPublish,
        FailPoint::Prepared,
        FailPoint::OnDecide,
    ];
    /// The points of a companion server's calls to other servers (ARCHITECTURE.md §16).
    pub const COMPANION_CALLS: [FailPoint; 2] = [FailPoint::CallReplied, FailPoint::CallRecorded];
}

impl FailPoint {
    /// The site number of this protocol point.
    pub fn site(self) -> u16 {
        self as u16
    }
}

/// A fail point armed at any site: what, where, and the kind's argument (the bit a `Corrupt`
/// flips, the milliseconds of a `Delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailSpec {
    /// What fault.
    pub kind: FailKind,
    /// Where: a [`RUNTIME_SITES`] number or one of the server's own (32 and up).
    pub site: u16,
    /// The kind's argument.
    pub arg: u32,
}

impl FailSpec {
    /// The status-page word that arms it (never 0: kinds start at 1).
    pub fn word(self) -> u64 {
        u64::from(self.arg) << 32 | u64::from(self.kind as u8) << 16 | u64::from(self.site)
    }

    /// Decodes a status-page word; `None` for 0 (nothing armed) or an unknown kind.
    pub fn from_word(w: u64) -> Option<FailSpec> {
        Some(FailSpec {
            kind: FailKind::from_u8((w >> 16) as u8)?,
            site: w as u16,
            arg: (w >> 32) as u32,
        })
    }
}

/// A place in code where a fail point can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// Its number.
    pub id: u16,
    /// Its name in reports (`runtime.before-handle`, `kv.put.value`, ...).
    pub name: &'static str,
    /// Whether the site has data that a `Corrupt` fault can flip a bit of.
    pub data: bool,
}

/// First site number a server may use for its own sites.
pub const FIRST_SERVER_SITE: u16 = 32;

/// Runtime site: slot taken, request copied out, transaction not begun (data: the request).
pub const SITE_AFTER_TAKE: u16 = 10;
/// Runtime site: handler done, reply not yet written to the slot (data: the reply).
pub const SITE_BEFORE_REPLY: u16 = 11;
/// Runtime site: a root batch's replies published, the incarnation not yet idle.
pub const SITE_PUBLISHED: u16 = 12;
/// Runtime site, fired only by a spare taking over (ARCHITECTURE.md §6, "The spare"): the
/// takeover claimed and the heap rolled back, the taken slots not yet settled. Not in
/// [`RUNTIME_SITES`] (no call passes it).
pub const SITE_TAKEOVER: u16 = 13;

/// The runtime's sites that every call of every server passes, in the order it passes them
/// (the nested-transaction points fire only in servers that take part in one).
pub const RUNTIME_SITES: &[Site] = &[
    Site {
        id: SITE_AFTER_TAKE,
        name: "runtime.after-take",
        data: true,
    },
    Site {
        id: FailPoint::BeforeHandle as u16,
        name: "runtime.before-handle",
        data: true,
    },
    Site {
        id: SITE_BEFORE_REPLY,
        name: "runtime.before-reply",
        data: true,
    },
    Site {
        id: FailPoint::AfterHandle as u16,
        name: "runtime.after-handle",
        data: false,
    },
    Site {
        id: FailPoint::AfterCommit as u16,
        name: "runtime.after-commit",
        data: false,
    },
    Site {
        id: SITE_PUBLISHED,
        name: "runtime.published",
        data: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_word_roundtrip() {
        for kind in (1..=7).filter_map(FailKind::from_u8) {
            let s = FailSpec {
                kind,
                site: 40,
                arg: 0xdead_beef,
            };
            assert_ne!(s.word(), 0);
            assert_eq!(FailSpec::from_word(s.word()), Some(s));
        }
        assert_eq!(FailSpec::from_word(0), None);
        assert_eq!(FailPoint::AfterCommit.site(), 3);
        assert!(RUNTIME_SITES.iter().all(|s| s.id < FIRST_SERVER_SITE));
    }
}
