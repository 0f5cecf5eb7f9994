//! Fail points: faults the kernel can arm in a server, fired by the runtime at a chosen point of
//! the commit protocol. They let tests and the demo hit the worst instants on purpose.

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
    /// Flip a byte of what is being written, after its checksum was computed (a wild write):
    /// only at [`FailPoint::Checkpoint`], where it corrupts the snapshot a companion writes.
    Corrupt = 6,
}

impl FailKind {
    /// Every kind.
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
        }
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
}
