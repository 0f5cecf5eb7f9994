//! # txipc-chan — shared-memory channels
//!
//! The data path of txipc: how a client's request reaches a server process and how the reply
//! comes back, without the kernel (the supervisor) on the way. IPC latency is won or lost here.
//!
//! ## Design
//!
//! - A **channel** is a memfd shared by exactly one client, one server and the kernel: a header
//!   and `nslots` request/reply slots (layout and slot protocol: ARCHITECTURE.md §4, the
//!   [`layout`](ChannelLayout) constants, the `channel` module docs). Possession of the fd is
//!   the capability. The kernel creates it ([`create_channel`]) and seals its size.
//! - Three **views** of the same memory, each a safe API: [`ClientChannel`] (claim a slot,
//!   post, wait, copy the reply out), [`ServerChannel`] (take, copy the request out, write the
//!   reply, publish — two steps, so the transactional runtime can put its commit point between
//!   them) and [`KernelChannel`] (recovery while the server is confirmed dead: re-post, fail,
//!   publish a committed reply, mark DEAD/REVOKED).
//! - **Waking the server** ([`Doorbell`]): each channel has a bell line that only its client
//!   and the server map; the server sleeps in one `futex_waitv` on every channel's bell and on
//!   its doorbell (kernel control events; never given to clients). A client pays for a wake-up
//!   syscall only when the server sleeps, and no word one client can write decides whether
//!   another is served (doorbell module docs).
//! - **Adaptive waiting** ([`SpinConfig`]): spin briefly (a hand-off between spinning cores
//!   costs ~0.1–0.4 µs, a cross-core futex wake 15–45 µs on this class of machine), `sched_yield`
//!   instead when the peer shares the CPU (spinning there only burns the slice the peer needs),
//!   then sleep on a shared futex. Each sleep is preceded by *store flag; SeqCst fence; re-check*,
//!   and each wake-up by *store; SeqCst fence; load flag*: no lost wake-ups (proof in the
//!   doorbell module docs; stress-tested in `tests/doorbell.rs`).
//! - **A small call moves in one cache line, its reply in one other**: requests ≤ 40 bytes
//!   ride in the slot's request line with its state word, replies ≤ 44 bytes in its reply line
//!   with the `done` word the client waits on. Each side writes only its own line on the hot
//!   path, and the client's polling never touches the request line; larger messages use
//!   per-slot areas.
//! - **Distrust**: every length, state and status written by the other side is an allegation,
//!   copied once and checked; request and reply bytes are copied with raw-pointer copies and
//!   never referenced while a peer may write them; a hostile client can only break its own
//!   channel (`tests/malformed.rs`), a lying server only earns its client an error.
//! - **No call waits forever**: every call ends with a reply, a kernel-written error status,
//!   `Dead`/`Revoked` (the kernel raises every slot's epoch to wake sleepers), or its timeout.
//!
//! ## Measured (`cargo run --release -p txipc-chan --example ipc_baselines`)
//!
//! Round trip in ns, 2 vCPUs (KVM, Xeon), each cell the median over 3 interleaved rounds of
//! the median of 7 batches of 20,000 round trips (`-- --rounds 3`), machine otherwise idle:
//!
//! | placement | raw spin | raw futex | Unix socket | **channel** | channel / spin | channel / futex | socket / channel |
//! | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
//! | cross-core (client CPU 0, server CPU 1) | 130 | 39,825 | 59,374 | **267** | 2.05 | 0.01 | 222 |
//! | same core (both CPU 0) | 1,102 | 1,733 | 3,174 | **1,244** | 1.13 | 0.72 | 2.6 |
//!
//! "Raw spin" on one core spins with `sched_yield` (pure spinning there measures the scheduler
//! tick: ~23 µs, as the channel with `SpinMode::Pure` does). Against the targets (ARCHITECTURE.md §15):
//! same core ≤ 1.2× raw futex — met (0.72×: the `Auto` policy yields instead of spinning);
//! ≥ 10× faster than a Unix socket across cores — met (~200×); ≤ 1.2× raw spin across cores —
//! **not met on this machine**: raw spin is 0.12–0.13 µs here (the targets assumed 0.4 µs), and
//! the slot protocol's fixed extra cost (~0.1–0.14 µs: the TAKEN CAS is one more ownership
//! transfer of the slot line, each side polls only every ~30 ns so as not to steal the line
//! from a writer, plus claim/validate/copy) does not shrink with it. History of the cross-core
//! number: 512 ns (request/reply in separate lines) → ~530 ns (inline small messages, but
//! back-to-back polling) → 286 ns (polls ~100 ns apart) → 243–267 ns (server pauses before its
//! first look) → ~140 ns (request and reply lines, bell lines) → ~98 ns (polls ~30 ns apart;
//! `examples/chan_vs_spin.rs`, fastest batches, raw spin ~62 ns in the same run). Numbers on a
//! shared 2-vCPU machine move by ±30% with other load; compare columns of the same run only.
//!
//! ## Unsafe
//!
//! Confined to `mem` (mapping, atomics through references into the mapping, raw copies) and
//! `baseline` (fork). The argument for atomics in cross-process memory is in the `mem` module
//! docs.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod baseline;
mod channel;
mod doorbell;
mod error;
pub mod futex;
mod layout;
mod mem;
mod spin;

pub use channel::{
    ClientChannel, KernelChannel, Reply, ServerChannel, Settle, SlotReply, SlotSnapshot, Taken,
    create_channel,
};
pub use doorbell::{DOORBELL_MAGIC, DOORBELL_VERSION, Doorbell, Wake, create_doorbell};
pub use error::ChanError;
pub use layout::{
    CHANNEL_MAGIC, CHANNEL_VERSION, ChannelLayout, FLAG_DEAD, FLAG_REVOKED, FLAG_TAKEOVER,
    INLINE_REPLY_MAX, INLINE_REQ_MAX, MAX_AREA, MAX_CHANNEL_BYTES, MAX_SLOTS, SlotState, Status,
};
pub use spin::{SpinConfig, SpinMode};
