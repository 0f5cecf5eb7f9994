//! Page tracking: write-protect a memory region and capture each page's pre-image on its first
//! write in a transaction.
//!
//! # What it is for
//!
//! Under the TxIPC policy every request a server handles is a transaction over its recoverable
//! heap. In the *page* tracking mode (ARCHITECTURE.md §5.3) the server's code is not rewritten to log its
//! writes; instead this crate makes logging transparent:
//!
//! 1. [`PageTracker::begin`] write-protects every page dirtied since the previous `begin` (all
//!    pages at the first one);
//! 2. the first write to a protected page raises SIGSEGV; our handler calls the caller's
//!    [`PreimageSink`] with the page while it still holds its pre-image, then makes the page
//!    writable and records it as dirty; the write is re-executed and succeeds;
//! 3. later writes to that page in the same transaction cost nothing;
//! 4. [`PageTracker::end`] closes the transaction (commit or abort — the tracker does not care);
//!    dirtied pages stay writable until the next `begin`.
//!
//! **Announced writes** ([`PageTracker::install_announced`]): when the owner can tell the
//! tracker of a write before making it ([`PageTracker::announce`]; the heap's typed API does,
//! for every write), nothing needs protecting. Pages start writable (`OPEN`), an announcement
//! captures the page's pre-image on this thread with no fault and no system call, and `begin`
//! only marks the previous transaction's pages `OPEN` again. [`PageTracker::arm`] switches to
//! the protocol above for good (it write-protects every page not captured in the open
//! transaction), for owners about to hand out memory whose writes they cannot announce.
//!
//! The crate is generic: it knows nothing of the undo-log format. The heap (`txipc-heap`) passes
//! a sink that appends the pre-image to its undo log.
//!
//! # Design
//!
//! * **One tracker per process.** A signal disposition is process-wide, so at most one
//!   [`PageTracker`] is live; [`PageTracker::install`] fails with [`TrackError::AlreadyInstalled`]
//!   otherwise. The handler finds the tracker through a global pointer.
//! * **No allocation in the handler.** Per-page state is a preallocated array of `AtomicU8`
//!   (`WRITABLE → PROTECTED → CAPTURING → WRITABLE`) and the dirty list a preallocated array of
//!   `npages` slots (a page enters it at most once per `begin`, so it cannot overflow). The
//!   handler only does atomics, the sink call, one `mprotect` (rustix's raw syscall, no errno) and,
//!   for real faults, `sigaction`/`pthread_sigmask`: all async-signal-safe.
//! * **Real faults still crash, immediately.** A fault is a *tracking* fault only if all hold:
//!   `si_code == SEGV_ACCERR`, `si_addr` inside the region, the access is a write (x86_64: bit 1
//!   of the page-fault error code in `uc_mcontext.gregs[REG_ERR]`), the faulting thread is not
//!   already inside our handler, and the page's state says *we* protected it. Anything else — a
//!   stale pointer, a null write, a read of a `PROT_NONE` page, a write to a page someone else
//!   made read-only, a fault inside the sink — is a real fault: if a handler was installed before
//!   us (the runtime's crash reporter, or Rust's own stack-overflow handler) we call it with the
//!   same `siginfo`/context (honouring its `SA_SIGINFO`, `sa_mask`, `SA_NODEFER`,
//!   `SA_RESETHAND`); otherwise we restore `SIG_DFL` and return, so the instruction faults again
//!   and the process dies of SIGSEGV with the right exit status and core.
//! * **Flags `SA_SIGINFO | SA_NODEFER | SA_ONSTACK`.** `SA_SIGINFO` for `si_addr` and the
//!   ucontext. `SA_NODEFER` so that a fault *inside* the handler (in the sink) is delivered to us
//!   again — we see the thread is already in the handler, classify it as real and pass it to the
//!   crash reporter — instead of the kernel silently force-killing the process because SIGSEGV is
//!   blocked. `SA_ONSTACK` so that a stack-overflow fault can still run the handler (and reach
//!   Rust's stack-overflow reporter) on the thread's alternate signal stack; threads without one
//!   just use their stack.
//! * **Coalesced `mprotect`.** `begin` sorts the dirty list and protects each contiguous run with
//!   one syscall; the first `begin` is a single `mprotect` over the whole region.
//! * **Races between threads** on the same page are resolved by a CAS `PROTECTED → CAPTURING`:
//!   exactly one thread calls the sink, the others wait until the page is writable and retry. A
//!   fault that finds the page already `WRITABLE` (the fault raced with another thread's
//!   unprotect) is retried once; if the same thread faults again at the same address with no
//!   tracking progress in between, it is real.
//!
//! # Cost (measured)
//!
//! Machine: 2 vCPUs, virtualised, Linux 6.18, x86_64, 4 KiB pages, release build, memfd
//! `MAP_SHARED` region populated beforehand, sink copying the 4 KiB pre-image into a preallocated
//! buffer, one byte written per page in address order. Command:
//! `cargo run --release -p txipc-pagetrack --example first_write -- PAGES RUNS` (which calls
//! [`bench_first_write`]); medians over the runs, per page:
//!
//! | pages per transaction | first write (fault + handler + sink + `mprotect` + retry) | `begin` (re-protect) | plain write |
//! | --- | --- | --- | --- |
//! | 64 (21 runs) | 2.9 µs | 32 ns | 4 ns |
//! | 1,024 (9 runs, 7 repetitions) | 3.2–5.4 µs (fastest run 3.1 µs) | 45–49 ns | 18 ns |
//! | 16,384 (5 runs, 2 repetitions) | 3.7–5.8 µs | 85–100 ns | 39 ns |
//!
//! The spread is load on the two shared cores (other builds running), not the tracker: under
//! heavy load medians up to 8 µs were seen while the fastest run stayed at 3.3 µs, so compare
//! only numbers taken in the same run (as `txipc bench` does).
//! The cost is dominated by the kernel: signal delivery and `sigreturn`, and the `mprotect` that
//! splits/merges a VMA and flushes the TLB entry; the handler itself is a few atomics and a
//! 4 KiB copy. Larger transactions cost more per page (TLB and cache misses on the page tables and
//! on the region itself — see the plain write). The project's reference (~6–7 µs) is the same
//! mechanism on the same class of machine; `begin` is negligible beside it because dirty pages
//! form runs and each run is one syscall.
//!
//! See [the userfaultfd experiment](#experiment-userfaultfd-write-protect) for the alternative.
//!
//! # Experiment: userfaultfd write-protect
//!
//! Command: `cargo run --release -p txipc-pagetrack --example uffd_wp -- PAGES RUNS` (same
//! machine, same memfd region, one byte per page, medians; root, Linux 6.18). Per page written
//! once in a transaction (the synchronous column was measured by the example's first version,
//! commit `057aa6b`, which declared its own ioctls; the example now prints
//! [`bench_first_write`] and [`bench_uffd_async`], which use this crate's [`uffd`] module, on a
//! private memfd mapping as the heap tracks it):
//!
//! | pages | SIGSEGV + `mprotect` (this crate) | uffd WP, sync (handler thread) | uffd WP async: write + `PAGEMAP_SCAN` + shadow copy |
//! | --- | --- | --- | --- |
//! | 64 | 2.85 µs | 2.82 µs | 0.51 + 0.05 + 0.08 = 0.64 µs |
//! | 1,024 (3 repetitions, one pinned to one CPU) | 3.16–3.43 µs | 3.02–3.15 µs | 0.63 + 0.01 + 0.28 = 0.92–0.94 µs |
//! | 16,384 | 3.70 µs | 3.65 µs | 0.85 + 0.01 + 0.63 = 1.49 µs |
//!
//! **Synchronous WP** (`UFFDIO_REGISTER_MODE_WP`, a thread reads the fault, copies the pre-image,
//! `UFFDIO_WRITEPROTECT` clears the bit and wakes the writer) is within noise of SIGSEGV: a
//! thread hand-off and two wake-ups replace signal delivery and `mprotect`. Its real advantages
//! are elsewhere: WP is per PTE, so no VMA splitting (no `vm.max_map_count` limit), and a
//! syscall writing into a protected page blocks on the uffd instead of failing with `EFAULT`.
//! Against that it needs a handler thread per server, runs the sink on that thread, deadlocks if
//! the handler thread itself writes a protected page, and needs a second mechanism for real
//! faults anyway. Not clearly better: **not offered**.
//!
//! **Asynchronous WP** (`UFFD_FEATURE_WP_ASYNC`: the kernel resolves the write fault itself and
//! only records it; `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` returns the written pages and
//! write-protects them again in one call) is 3.5–4.5× cheaper per page. But it cannot implement
//! this API: nobody is told before the write, so there is no pre-image to give the sink. Getting
//! them back needs a copy of the committed state. A separate shadow of the whole heap would make
//! crash recovery hard (the undo log would hold nothing, and which pages a dead incarnation
//! wrote is lost with its page tables). The heap avoids both with an inversion: **the heap memfd
//! itself is the committed copy**, and the server runs on a *private copy-on-write mapping* of
//! it, tracked by [`uffd::WpAsync`]. At commit (and savepoint, prepare) the written pages are
//! found with one `PAGEMAP_SCAN`, their memfd pages appended to the undo log as ordinary
//! pre-images, and only then copied into the memfd: a crash at any instant leaves the memfd
//! either untouched or covered by the log, so recovery is the unchanged undo-log rollback.
//! `txipc-heap` offers it as `PageBackend::Uffd` (`TXIPC_PAGE_TRACKER=uffd`); ARCHITECTURE.md
//! §5.3 has the protocol and its crash points. Its price is the scan: `PAGEMAP_SCAN` walks the
//! page table of the whole region, ~1.4 ns per page here (23 µs for 64 MiB, 4.7 µs for 8 MiB,
//! `cargo run --release -p txipc-pagetrack --example uffd_scan -- MIB K RUNS`), once per commit
//! whatever the transaction wrote, so [`PageTracker`] stays the default.
//!
//! # Rules for the sink
//!
//! The sink runs inside a SIGSEGV handler, on the faulting thread, possibly on its alternate
//! signal stack (a few KiB): it must be async-signal-safe. No allocation, no locks that the
//! interrupted code may hold (the interrupted code may be in the middle of `malloc` or of the
//! very heap operation that faulted), no `println!`, no panics (a panic cannot unwind out of the
//! handler and aborts the process). Copy the page into preallocated memory, outside the tracked
//! region, and publish with atomics. A fault inside the sink is treated as a real fault and kills
//! the process (after the previous handler, if any, has reported it).
//!
//! * **Stack**: threads created by Rust's std have an alternate signal stack of about 8 KiB, part
//!   of which holds the kernel's signal frame; keep the sink's stack use small (never a
//!   page-sized buffer on the stack).
//! * **No way to fail**: the sink returns nothing. If the undo log is full, the sink should call
//!   `libc::abort()` (async-signal-safe): the incarnation dies and recovery rolls the transaction
//!   back. Sizing the log for `page_count() × page_size()` bytes of pre-images avoids the case.
//! * `page` is valid only during the call; the sink must not write the region (that is a nested
//!   fault: real, fatal).
//!
//! # Things the caller must know
//!
//! * The region must be mapped `PROT_READ | PROT_WRITE` for the tracker's whole life; the tracker
//!   owns its protection while installed and [`Drop`] makes it read-write again.
//! * **System calls do not fault.** A syscall that writes into a protected page (`read(2)` into a
//!   heap buffer, `recv`, …) fails with `EFAULT` instead of raising SIGSEGV. Call
//!   [`PageTracker::prepare_write`] on the buffer first.
//! * `begin`, `end`, [`PageTracker::dirty_pages`] and drop must not run concurrently with writes to
//!   the region from other threads (the transaction owner guarantees quiescence). Writes from
//!   several threads *inside* a transaction are fine.
//! * Writes between `end` and the next `begin` to pages still protected are allowed and
//!   untracked: the page is made writable without calling the sink (there is no transaction to
//!   log into), counted in [`Stats::untracked_writes`], and re-protected at the next `begin`.
//! * Each protected/writable boundary splits a VMA: a transaction dirtying `k` scattered pages
//!   needs up to `2k + 1` VMAs, and `vm.max_map_count` (65,530 by default) bounds `k` to about
//!   32,000 scattered pages. Past it `mprotect` fails with `ENOMEM` and the write is treated as a
//!   real fault (the process crashes, the transaction is rolled back by recovery).
//! * Do not `fork` with a live tracker unless the child keeps using it (it inherits the handler
//!   and the state); install it in the incarnation, after the fork from the zygote.

#![deny(clippy::undocumented_unsafe_blocks)]

mod bench;
mod handler;
pub mod uffd;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use rustix::mm::MprotectFlags;

pub use bench::{
    FirstWriteReport, UffdAsyncReport, UffdScanReport, bench_first_write, bench_first_write_ns,
    bench_uffd_async, bench_uffd_scan,
};

/// Called from the SIGSEGV handler on the first write to a protected page in a transaction,
/// while the page still holds its pre-image and before it is made writable.
///
/// `ctx` is the pointer given to [`PageTracker::install`], `page_index` the page's index in the
/// region (`(addr - base) / page_size`), and `page` points at the page's first byte (it is
/// readable, `page_size` bytes long, and not writable during the call).
///
/// Must be async-signal-safe: see the crate docs, *Rules for the sink*. It may run on any thread
/// that writes the region, concurrently with itself for different pages.
pub type PreimageSink = unsafe fn(ctx: *mut (), page_index: usize, page: *const u8);

/// Errors of the tracker. Each says what failed and what the caller may do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// A tracker is already live in this process (the SIGSEGV handler is process-wide). Drop the
    /// other one first.
    #[error("a PageTracker is already installed in this process (the SIGSEGV handler is global)")]
    AlreadyInstalled,
    /// `base` or `len` is not a multiple of the page size, or `len` is zero. A caller bug.
    #[error("region {base:#x}+{len:#x} is empty or not page-aligned (page size {page_size:#x})")]
    Misaligned {
        /// Region start.
        base: usize,
        /// Region length.
        len: usize,
        /// The system page size.
        page_size: usize,
    },
    /// Installing the signal handler failed; nothing was changed.
    #[error("sigaction(SIGSEGV) failed: {0}")]
    Sigaction(#[source] nix::errno::Errno),
    /// `mprotect` failed (typically `ENOMEM`: too many VMAs, see `vm.max_map_count`). The tracker
    /// stays consistent: pages it could not protect stay writable and are retried at the next
    /// `begin`, but the transaction must not start — the caller should treat this as fatal for
    /// the incarnation (or retry `begin` after lowering the number of dirty pages).
    #[error("mprotect({addr:#x}, {len:#x}) failed: {source}")]
    Mprotect {
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        len: usize,
        /// The error from the kernel.
        #[source]
        source: rustix::io::Errno,
    },
    /// `begin` was called while a transaction is open. Call [`PageTracker::end`] first.
    #[error("begin() called while a transaction is open; call end() first")]
    InTransaction,
    /// userfaultfd write-protect tracking is not available or failed ([`uffd::WpAsync`]):
    /// the kernel lacks `UFFD_FEATURE_WP_ASYNC`/`PAGEMAP_SCAN` (Linux < 6.7) or this process
    /// may not create a userfaultfd. Use [`PageTracker`] instead.
    #[error("userfaultfd write tracking: {what}: {source}")]
    Uffd {
        /// The step that failed.
        what: &'static str,
        /// The error from the kernel.
        #[source]
        source: std::io::Error,
    },
    /// The range given to [`PageTracker::prepare_write`] is not inside the region.
    #[error("range {addr:#x}+{len:#x} is not inside the tracked region")]
    OutOfRegion {
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        len: usize,
    },
}

/// Why [`PageTracker::announce`] failed.
#[derive(Debug)]
pub enum AnnounceError<E> {
    /// The caller's sink failed for a page (it was not captured).
    Sink(E),
    /// The range is outside the region, or `mprotect` failed.
    Track(TrackError),
}

/// Counters kept by the tracker (since install). Cheap: relaxed atomics bumped on slow paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transactions begun.
    pub begins: u64,
    /// First writes inside a transaction: sink calls.
    pub captures: u64,
    /// First writes to protected pages outside a transaction (no sink call).
    pub untracked_writes: u64,
    /// `mprotect(PROT_READ)` calls made by `begin` (one per contiguous run of dirty pages).
    pub protect_calls: u64,
}

/// Page states (per page, `AtomicU8`).
///
/// Protocol: only `begin` (owner thread, no concurrent writers) moves `WRITABLE → PROTECTED`
/// after `mprotect(PROT_READ)` succeeded. Any faulting thread moves `PROTECTED → CAPTURING`
/// (CAS, so exactly one wins), calls the sink, makes the page writable, pushes it on the dirty
/// list and stores `WRITABLE` (release). Losers of the CAS wait for `WRITABLE`.
pub(crate) mod page_state {
    /// Writable (dirty since the last `begin`, or never protected).
    pub const WRITABLE: u8 = 0;
    /// Write-protected by us; the next write is a first write.
    pub const PROTECTED: u8 = 1;
    /// A thread is capturing the pre-image and will make the page writable.
    pub const CAPTURING: u8 = 2;
    /// Not armed (see [`PageTracker::install_announced`](crate::PageTracker::install_announced)):
    /// writable, and not yet captured in the current transaction. Only announced writes
    /// ([`PageTracker::announce`](crate::PageTracker::announce)) capture it; `begin` turns the
    /// pages captured by the previous transaction back into `OPEN`, with no system call.
    pub const OPEN: u8 = 3;
}

/// State shared between the owner and the signal handler. Allocated at install, reached from the
/// handler through [`handler::SHARED`]; freed by drop once no handler runs.
pub(crate) struct Shared {
    pub base: usize,
    pub len: usize,
    pub page_shift: u32,
    pub sink: PreimageSink,
    pub ctx: *mut (),
    /// One [`page_state`] per page.
    pub states: Box<[AtomicU8]>,
    /// Pages made writable since the last `begin`, in fault order; `dirty_len` entries valid.
    pub dirty: Box<[AtomicUsize]>,
    pub dirty_len: AtomicUsize,
    /// A transaction is open: first writes call the sink.
    pub in_tx: AtomicBool,
    /// Bumped at every state change that could make a faulting write succeed on retry (capture,
    /// begin); used to tell a stale fault from a real one. See `handler`.
    pub epoch: AtomicU64,
    /// The SIGSEGV action installed before ours.
    pub prev: libc::sigaction,
    pub captures: AtomicU64,
    pub untracked_writes: AtomicU64,
    /// Every page not captured in the transaction is write-protected (faults capture). `false`
    /// only for a tracker installed by `install_announced` until `arm`.
    pub armed: AtomicBool,
    /// The savepoint mark: bumped by every `begin` and by every unarmed
    /// [`PageTracker::savepoint`]. Only the owner thread writes it.
    pub mark: AtomicU32,
    /// Per page, the `mark` in force when the page was last captured. A `WRITABLE` page whose
    /// mark is older than `mark` was captured in this transaction *before* its latest
    /// savepoint: an announced write to it logs its exact bytes (see `announce`).
    pub cap_mark: Box<[AtomicU32]>,
}

/// Why [`Shared::capture_with`] did not capture.
#[derive(Debug)]
pub(crate) enum CaptureError<E> {
    /// The sink refused (the page keeps its state).
    Sink(E),
    /// `mprotect` failed (the page stays protected).
    Mprotect(rustix::io::Errno),
}

impl Shared {
    pub fn page_size(&self) -> usize {
        1 << self.page_shift
    }

    /// Capture page `page` if it is protected by us: call the sink (inside a transaction), make
    /// it writable, record it dirty. `Err` if `mprotect` failed (the page stays protected).
    ///
    /// Async-signal-safe (no allocation, no locks): called from the handler.
    ///
    /// # Safety
    ///
    /// 1. `page < self.states.len()`.
    /// 2. The region is mapped (install's contract) and `self.ctx` is valid for `self.sink`.
    pub unsafe fn capture(&self, page: usize) -> Result<Capture, rustix::io::Errno> {
        // SAFETY: forwarded contract; the stored sink is the installer's (item 2).
        let r = unsafe {
            self.capture_with(page, false, |p, src| {
                (self.sink)(self.ctx, p, src);
                Ok::<(), ()>(())
            })
        };
        match r {
            Ok(c) => Ok(c),
            Err(CaptureError::Mprotect(e)) => Err(e),
            Err(CaptureError::Sink(())) => unreachable!("the stored sink cannot fail"),
        }
    }

    /// [`capture`](Self::capture) with `sink` instead of the stored one; with `open`, an `OPEN`
    /// page is captured too (no `mprotect`: it is writable already). If `sink` fails the page
    /// keeps its state and nothing is recorded.
    ///
    /// # Safety
    ///
    /// As [`capture`](Self::capture); `sink` may read the page (`page_size` bytes).
    pub unsafe fn capture_with<E>(
        &self,
        page: usize,
        open: bool,
        sink: impl FnOnce(usize, *const u8) -> Result<(), E>,
    ) -> Result<Capture, CaptureError<E>> {
        use page_state::*;
        let st = &self.states[page];
        let from = loop {
            let cur = st.load(Ordering::Acquire);
            let want = match cur {
                PROTECTED => PROTECTED,
                OPEN if open => OPEN,
                CAPTURING => {
                    // Another thread is capturing this page: wait until it is done. It is
                    // running (or runnable), so this terminates; yield so it can run on a
                    // shared core.
                    while st.load(Ordering::Acquire) == CAPTURING {
                        std::hint::spin_loop();
                        // SAFETY: sched_yield has no preconditions.
                        unsafe { libc::sched_yield() };
                    }
                    continue;
                }
                // WRITABLE, or OPEN when not asked to capture it.
                _ => return Ok(Capture::AlreadyWritable),
            };
            if st
                .compare_exchange(want, CAPTURING, Ordering::Acquire, Ordering::Acquire)
                .is_ok()
            {
                break want;
            }
        };
        let addr = self.base + (page << self.page_shift);
        if self.in_tx.load(Ordering::Acquire) {
            // The page holds its pre-image: read-only (PROTECTED), or not written since the
            // transaction began except by announced writes, which capture first (OPEN).
            if let Err(e) = sink(page, addr as *const u8) {
                st.store(from, Ordering::Release);
                return Err(CaptureError::Sink(e));
            }
            self.captures.fetch_add(1, Ordering::Relaxed);
        } else if from == PROTECTED {
            self.untracked_writes.fetch_add(1, Ordering::Relaxed);
        }
        if from == PROTECTED {
            // SAFETY: the page lies in the region mapped read-write by the caller of install
            // (item 2); giving it back PROT_WRITE restores the caller's own protection.
            let r = unsafe {
                rustix::mm::mprotect(
                    addr as *mut _,
                    self.page_size(),
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            };
            if let Err(e) = r {
                st.store(PROTECTED, Ordering::Release);
                return Err(CaptureError::Mprotect(e));
            }
        }
        // A page enters the dirty list only on PROTECTED/OPEN -> WRITABLE, at most once per
        // begin (`arm`, which protects captured pages again, takes them off the list), and
        // begin resets the list: the index is < npages.
        let i = self.dirty_len.fetch_add(1, Ordering::AcqRel);
        self.dirty[i].store(page, Ordering::Relaxed);
        self.cap_mark[page].store(self.mark.load(Ordering::Relaxed), Ordering::Relaxed);
        st.store(WRITABLE, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::Release);
        Ok(Capture::Captured)
    }
}

/// Outcome of [`Shared::capture`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Capture {
    /// The page was protected by us; this call captured it (or waited for the thread that did)
    /// and it is now writable.
    Captured,
    /// The page was already writable as far as the tracker knows.
    AlreadyWritable,
}

/// Tracks first writes to the pages of one memory region. At most one per process.
///
/// See the crate docs for the protocol and the rules. Typical use by the heap:
///
/// ```no_run
/// # use txipc_pagetrack::PageTracker;
/// unsafe fn log_preimage(ctx: *mut (), page: usize, bytes: *const u8) {
///     // append (page, bytes[..4096]) to the undo log reached through ctx; no allocation
/// }
/// # fn f(base: *mut u8, len: usize, log: *mut ()) -> Result<(), txipc_pagetrack::TrackError> {
/// // SAFETY: base..base+len stays mapped read-write while the tracker lives; log is valid.
/// let mut t = unsafe { PageTracker::install(base, len, log_preimage, log)? };
/// t.begin()?;
/// // ... run the request; first writes to pages call log_preimage ...
/// t.end();
/// # Ok(()) }
/// ```
pub struct PageTracker {
    shared: *mut Shared,
    /// Scratch for `begin` (sorting the dirty list), preallocated to `npages`.
    scratch: Vec<usize>,
    /// Length of the dirty list at `end` (what `dirty_pages` shows between `end` and `begin`).
    tx_len: usize,
    begins: u64,
    protect_calls: u64,
}

// SAFETY: the tracker owns `shared` (a Box leaked to the handler); everything the handler touches
// is atomic or immutable, and the owner's `&mut self` methods may run on any thread. The sink's
// ctx is the installer's responsibility (install's contract).
unsafe impl Send for PageTracker {}

impl fmt::Debug for PageTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared();
        f.debug_struct("PageTracker")
            .field("base", &format_args!("{:#x}", s.base))
            .field("len", &s.len)
            .field("in_tx", &s.in_tx.load(Ordering::Relaxed))
            .field("dirty", &self.dirty_pages().len())
            .finish()
    }
}

impl PageTracker {
    /// Installs the tracker over `base..base + len` and its SIGSEGV handler. Pages are not
    /// protected until the first [`begin`](Self::begin).
    ///
    /// The SIGSEGV action in place now (e.g. the runtime's crash reporter) is saved: real faults
    /// are passed to it, and [`Drop`] restores it.
    ///
    /// # Errors
    ///
    /// [`TrackError::AlreadyInstalled`], [`TrackError::Misaligned`], [`TrackError::Sigaction`].
    ///
    /// # Safety
    ///
    /// 1. `base..base + len` is a mapping readable and writable (`PROT_READ | PROT_WRITE`) that
    ///    stays mapped for the tracker's whole life, and nobody else changes its protection.
    /// 2. `ctx` stays valid for `sink` for the tracker's whole life, and `sink` honours the rules
    ///    in the crate docs (async-signal-safe, does not write the region).
    /// 3. No other code changes the SIGSEGV disposition concurrently with `install` or drop.
    pub unsafe fn install(
        base: *mut u8,
        len: usize,
        sink: PreimageSink,
        ctx: *mut (),
    ) -> Result<PageTracker, TrackError> {
        // SAFETY: forwarded contract.
        unsafe { Self::install_inner(base, len, sink, ctx, true) }
    }

    /// [`install`](Self::install) for a region whose writes are *announced*: nothing is
    /// write-protected until [`arm`](Self::arm). Until then every page is writable and a
    /// transaction captures a page only when [`announce`](Self::announce) is called for it,
    /// before the write; `begin` makes no system call. The owner must announce every write
    /// made in a transaction, or arm the tracker before any write it cannot announce (the
    /// heap arms it when it hands out a `&mut` into itself).
    ///
    /// # Errors
    /// As [`install`](Self::install).
    ///
    /// # Safety
    /// As [`install`](Self::install).
    pub unsafe fn install_announced(
        base: *mut u8,
        len: usize,
        sink: PreimageSink,
        ctx: *mut (),
    ) -> Result<PageTracker, TrackError> {
        // SAFETY: forwarded contract.
        unsafe { Self::install_inner(base, len, sink, ctx, false) }
    }

    /// # Safety
    /// As [`install`](Self::install).
    unsafe fn install_inner(
        base: *mut u8,
        len: usize,
        sink: PreimageSink,
        ctx: *mut (),
        armed: bool,
    ) -> Result<PageTracker, TrackError> {
        let page_size = rustix::param::page_size();
        let base_u = base as usize;
        if len == 0 || base_u % page_size != 0 || len % page_size != 0 {
            return Err(TrackError::Misaligned {
                base: base_u,
                len,
                page_size,
            });
        }
        let npages = len / page_size;
        let prev = handler::previous_action().map_err(TrackError::Sigaction)?;
        let shared = Box::into_raw(Box::new(Shared {
            base: base_u,
            len,
            page_shift: page_size.trailing_zeros(),
            sink,
            ctx,
            states: (0..npages)
                .map(|_| {
                    AtomicU8::new(if armed {
                        page_state::WRITABLE
                    } else {
                        page_state::OPEN
                    })
                })
                .collect(),
            // Armed, every page starts "dirty": the first begin protects them all (one run).
            dirty: (0..npages).map(AtomicUsize::new).collect(),
            dirty_len: AtomicUsize::new(if armed { npages } else { 0 }),
            in_tx: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            prev,
            captures: AtomicU64::new(0),
            untracked_writes: AtomicU64::new(0),
            armed: AtomicBool::new(armed),
            mark: AtomicU32::new(0),
            cap_mark: (0..npages).map(|_| AtomicU32::new(0)).collect(),
        }));
        if handler::SHARED
            .compare_exchange(
                std::ptr::null_mut(),
                shared,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            // SAFETY: `shared` came from Box::into_raw above and was never published.
            drop(unsafe { Box::from_raw(shared) });
            return Err(TrackError::AlreadyInstalled);
        }
        if let Err(e) = handler::install_handler() {
            handler::SHARED.store(std::ptr::null_mut(), Ordering::SeqCst);
            handler::wait_idle();
            // SAFETY: unpublished again and no handler runs (wait_idle), so we own it.
            drop(unsafe { Box::from_raw(shared) });
            return Err(TrackError::Sigaction(e));
        }
        Ok(PageTracker {
            shared,
            scratch: Vec::with_capacity(npages),
            tx_len: 0,
            begins: 0,
            protect_calls: 0,
        })
    }

    fn shared(&self) -> &Shared {
        // SAFETY: `shared` is a live Box owned by self until drop.
        unsafe { &*self.shared }
    }

    /// Opens a transaction: write-protects the pages dirtied since the last `begin` (all pages at
    /// the first), one `mprotect` per contiguous run, and clears the dirty list.
    ///
    /// Must not run concurrently with writes to the region from other threads.
    ///
    /// # Errors
    ///
    /// [`TrackError::InTransaction`] if a transaction is open; [`TrackError::Mprotect`] (the
    /// transaction is not open; pages not protected stay on the dirty list).
    pub fn begin(&mut self) -> Result<(), TrackError> {
        // SAFETY: `shared` is a live Box owned by self until drop; borrowed apart from `self` so
        // the scratch and counters can be updated.
        let s: &Shared = unsafe { &*self.shared };
        if s.in_tx.load(Ordering::Relaxed) {
            return Err(TrackError::InTransaction);
        }
        let n = s.dirty_len.load(Ordering::Acquire);
        if !s.armed.load(Ordering::Relaxed) {
            // Announced writes only: the pages the last transaction captured become OPEN
            // (captured again at their next announced write), with no system call.
            for d in &s.dirty[..n] {
                s.states[d.load(Ordering::Relaxed)].store(page_state::OPEN, Ordering::Release);
            }
            s.dirty_len.store(0, Ordering::Release);
            self.tx_len = 0;
            self.begins += 1;
            s.mark.fetch_add(1, Ordering::Relaxed);
            s.epoch.fetch_add(1, Ordering::Release);
            s.in_tx.store(true, Ordering::Release);
            return Ok(());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend(s.dirty[..n].iter().map(|d| d.load(Ordering::Relaxed)));
        scratch.sort_unstable();
        let mut result = Ok(());
        let mut calls = 0;
        let mut i = 0;
        while i < scratch.len() {
            let start = scratch[i];
            let mut end = start + 1;
            i += 1;
            while i < scratch.len() && scratch[i] == end {
                end += 1;
                i += 1;
            }
            let addr = s.base + (start << s.page_shift);
            let len = (end - start) << s.page_shift;
            calls += 1;
            // SAFETY: [start, end) are pages of the region (indices come from the dirty list),
            // mapped by install's contract; PROT_READ keeps them readable to everyone.
            match unsafe { rustix::mm::mprotect(addr as *mut _, len, MprotectFlags::READ) } {
                Ok(()) => {
                    for st in &s.states[start..end] {
                        st.store(page_state::PROTECTED, Ordering::Release);
                    }
                }
                Err(source) => {
                    result = Err(TrackError::Mprotect { addr, len, source });
                    break;
                }
            }
        }
        self.protect_calls += calls;
        // Rebuild the dirty list: the pages still writable (none on success).
        let mut kept = 0;
        for &p in &scratch {
            if s.states[p].load(Ordering::Relaxed) == page_state::WRITABLE {
                s.dirty[kept].store(p, Ordering::Relaxed);
                kept += 1;
            }
        }
        s.dirty_len.store(kept, Ordering::Release);
        self.scratch = scratch;
        result?;
        self.tx_len = 0;
        self.begins += 1;
        s.mark.fetch_add(1, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
        s.in_tx.store(true, Ordering::Release);
        Ok(())
    }

    /// Pages first-written in the current transaction (after [`end`](Self::end): in the
    /// transaction just ended), in the order of their first write, each once.
    ///
    /// Precise when no other thread is writing the region during the call.
    pub fn dirty_pages(&self) -> &[usize] {
        let s = self.shared();
        let n = if s.in_tx.load(Ordering::Acquire) {
            s.dirty_len.load(Ordering::Acquire)
        } else {
            self.tx_len
        };
        // SAFETY: AtomicUsize has the same size, alignment and bit validity as usize; the first
        // `n` slots are initialised and, by this method's contract (no concurrent writers to the
        // region), not written while the returned borrow lives: the handler only writes slots
        // past `dirty_len`, and `begin`, which rewrites them, takes `&mut self`.
        unsafe { std::slice::from_raw_parts(s.dirty.as_ptr().cast::<usize>(), n) }
    }

    /// Closes the transaction (committed or aborted: the tracker does not care). Dirtied pages
    /// stay writable until the next [`begin`](Self::begin); writes to still-protected pages are
    /// untracked until then (see the crate docs).
    pub fn end(&mut self) {
        let s = self.shared();
        if s.in_tx.swap(false, Ordering::AcqRel) {
            self.tx_len = s.dirty_len.load(Ordering::Acquire);
        }
    }

    /// Marks a savepoint of the open transaction: from now on, a write must leave the undo
    /// information that returns the region to its state at this point, for the pages captured
    /// before it as well.
    ///
    /// Armed, that is a new capture epoch: `end` and `begin` (the dirty pages are protected
    /// again and captured anew, whole, at their next write). Unarmed, nothing is reopened: the
    /// savepoint mark is bumped, and an [`announce`](Self::announce)d write to a page captured
    /// before the mark is handed to its `exact` sink (the caller logs exactly the bytes about
    /// to change), while pages not yet captured are captured whole as before. So a group of
    /// requests in one transaction, each behind its own savepoint, captures a page they share
    /// once, plus the bytes each later one changes in it. Outside a transaction it is `end`
    /// and `begin` (it opens one), as it was for every tracker before unarmed savepoints.
    ///
    /// # Errors
    /// As [`begin`](Self::begin) (armed only).
    pub fn savepoint(&mut self) -> Result<(), TrackError> {
        let s = self.shared();
        if s.armed.load(Ordering::Acquire) || !s.in_tx.load(Ordering::Acquire) {
            self.end();
            return self.begin();
        }
        s.mark.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a transaction is open (between `begin` and `end`).
    pub fn in_transaction(&self) -> bool {
        self.shared().in_tx.load(Ordering::Acquire)
    }

    /// Whether `addr` lies in the tracked region.
    pub fn is_tracking(&self, addr: usize) -> bool {
        let s = self.shared();
        addr.wrapping_sub(s.base) < s.len
    }

    /// Whether page `page` is currently write-protected by the tracker (its next write will be a
    /// first write). `false` for out-of-range indices.
    pub fn is_protected(&self, page: usize) -> bool {
        self.shared().states.get(page).is_some_and(|st| {
            matches!(
                st.load(Ordering::Acquire),
                page_state::PROTECTED | page_state::CAPTURING
            )
        })
    }

    /// Captures the pages covering `addr..addr + len` as if they had been written (sink call in a
    /// transaction, page made writable), without a fault. Use it before handing a region buffer
    /// to a system call that writes into it: the kernel does not fault on protected pages, the
    /// syscall would fail with `EFAULT`.
    ///
    /// # Errors
    ///
    /// [`TrackError::OutOfRegion`] if the range is not inside the region; [`TrackError::Mprotect`]
    /// if a page could not be made writable (pages before it were captured).
    pub fn prepare_write(&self, addr: usize, len: usize) -> Result<(), TrackError> {
        let s = self.shared();
        let off = addr.wrapping_sub(s.base);
        if off > s.len || len > s.len - off {
            return Err(TrackError::OutOfRegion { addr, len });
        }
        if len == 0 {
            return Ok(());
        }
        let first = off >> s.page_shift;
        let last = (off + len - 1) >> s.page_shift;
        for page in first..=last {
            // SAFETY: page < npages (range checked above); the region and ctx are valid by
            // install's contract.
            unsafe { s.capture(page) }.map_err(|source| TrackError::Mprotect {
                addr: s.base + (page << s.page_shift),
                len: s.page_size(),
                source,
            })?;
        }
        Ok(())
    }

    /// Announces that `addr..addr + len` is about to be written in the current transaction:
    /// each of its pages not yet captured in it is captured now, `sink` receiving the page
    /// index and its pre-image (instead of the sink given at install; it runs on this thread,
    /// not in a signal handler, so it may fail). An `OPEN` page costs no system call, a
    /// protected one an `mprotect` (no fault). If a page of the range was captured before the
    /// transaction's latest unarmed [`savepoint`](Self::savepoint), `exact(addr, len)` is
    /// called once, after the captures, and must log the range's current bytes (its whole-page
    /// record holds the state before the savepoint, not at it). Outside a transaction it does
    /// nothing.
    ///
    /// # Errors
    /// [`TrackError::OutOfRegion`]; [`AnnounceError::Sink`] if `sink` or `exact` failed (the
    /// range must not be written; pages captured before the failure stay captured);
    /// [`AnnounceError::Track`] with [`TrackError::Mprotect`] as for
    /// [`prepare_write`](Self::prepare_write).
    pub fn announce<E>(
        &self,
        addr: usize,
        len: usize,
        mut sink: impl FnMut(usize, *const u8) -> Result<(), E>,
        exact: impl FnOnce(usize, usize) -> Result<(), E>,
    ) -> Result<(), AnnounceError<E>> {
        let s = self.shared();
        let off = addr.wrapping_sub(s.base);
        if off > s.len || len > s.len - off {
            return Err(AnnounceError::Track(TrackError::OutOfRegion { addr, len }));
        }
        if len == 0 || !s.in_tx.load(Ordering::Relaxed) {
            return Ok(());
        }
        let first = off >> s.page_shift;
        let last = (off + len - 1) >> s.page_shift;
        let mark = s.mark.load(Ordering::Relaxed);
        let mut before_savepoint = false;
        for page in first..=last {
            // Fast path: captured already in this transaction (since its latest savepoint, or
            // before it: then the exact bytes are logged below).
            if s.states[page].load(Ordering::Acquire) == page_state::WRITABLE {
                before_savepoint |= s.cap_mark[page].load(Ordering::Relaxed) != mark;
                continue;
            }
            // SAFETY: page < npages (range checked above); the region is valid by install's
            // contract; `sink` only reads the page.
            match unsafe { s.capture_with(page, true, &mut sink) } {
                Ok(_) => {}
                Err(CaptureError::Sink(e)) => return Err(AnnounceError::Sink(e)),
                Err(CaptureError::Mprotect(source)) => {
                    return Err(AnnounceError::Track(TrackError::Mprotect {
                        addr: s.base + (page << s.page_shift),
                        len: s.page_size(),
                        source,
                    }));
                }
            }
        }
        if before_savepoint {
            exact(addr, len).map_err(AnnounceError::Sink)?;
        }
        Ok(())
    }

    /// Whether every page not captured in the current transaction is write-protected (always,
    /// for [`install`](Self::install); after [`arm`](Self::arm) for
    /// [`install_announced`](Self::install_announced)).
    pub fn is_armed(&self) -> bool {
        self.shared().armed.load(Ordering::Acquire)
    }

    /// From now on, capture every write, announced or not: write-protects every `OPEN` page
    /// (one `mprotect` per contiguous run), after which the tracker behaves as one made by
    /// [`install`](Self::install). May be called inside a transaction: the pages it has
    /// captured since its latest [`savepoint`](Self::savepoint) stay writable (their
    /// pre-images are logged); pages captured before that savepoint are protected again (an
    /// unannounced write to them would leave nothing to return to the savepoint), so their
    /// next write captures them anew. Idempotent.
    ///
    /// Must not run concurrently with writes to the region from other threads.
    ///
    /// # Errors
    /// [`TrackError::Mprotect`]: the tracker stays unarmed (pages already protected stay so,
    /// and are captured by faults or announcements as usual).
    pub fn arm(&mut self) -> Result<(), TrackError> {
        // SAFETY: `shared` is a live Box owned by self until drop; borrowed apart from `self`
        // so the counters can be updated.
        let s: &Shared = unsafe { &*self.shared };
        if s.armed.load(Ordering::Acquire) {
            return Ok(());
        }
        let n = s.states.len();
        let mark = s.mark.load(Ordering::Relaxed);
        let in_tx = s.in_tx.load(Ordering::Acquire);
        // To protect: OPEN pages, and (in a transaction) pages captured before its latest
        // savepoint.
        let stale = |i: usize| match s.states[i].load(Ordering::Acquire) {
            page_state::OPEN => true,
            page_state::WRITABLE => in_tx && s.cap_mark[i].load(Ordering::Relaxed) != mark,
            _ => false,
        };
        let mut calls = 0;
        let mut reprotected = false;
        let mut i = 0;
        while i < n {
            if !stale(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && stale(i) {
                reprotected |= s.states[i].load(Ordering::Acquire) == page_state::WRITABLE;
                i += 1;
            }
            let addr = s.base + (start << s.page_shift);
            let len = (i - start) << s.page_shift;
            calls += 1;
            // SAFETY: [start, i) are pages of the region, mapped by install's contract;
            // PROT_READ keeps them readable to everyone.
            let r = unsafe { rustix::mm::mprotect(addr as *mut _, len, MprotectFlags::READ) };
            if let Err(source) = r {
                self.protect_calls += calls;
                return Err(TrackError::Mprotect { addr, len, source });
            }
            for st in &s.states[start..i] {
                st.store(page_state::PROTECTED, Ordering::Release);
            }
        }
        self.protect_calls += calls;
        if reprotected {
            // Captured pages protected again leave the dirty list (their next fault enters
            // them once more); the rest keep their order.
            let len = s.dirty_len.load(Ordering::Acquire);
            let mut kept = 0;
            for j in 0..len {
                let p = s.dirty[j].load(Ordering::Relaxed);
                if s.states[p].load(Ordering::Acquire) == page_state::WRITABLE {
                    s.dirty[kept].store(p, Ordering::Relaxed);
                    kept += 1;
                }
            }
            s.dirty_len.store(kept, Ordering::Release);
        }
        s.epoch.fetch_add(1, Ordering::Release);
        s.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Region start.
    pub fn base(&self) -> *mut u8 {
        self.shared().base as *mut u8
    }

    /// Region length in bytes.
    pub fn len(&self) -> usize {
        self.shared().len
    }

    /// Always `false`: a region is never empty (install refuses it). For clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The page size the tracker works in.
    pub fn page_size(&self) -> usize {
        self.shared().page_size()
    }

    /// Counters since install.
    pub fn stats(&self) -> Stats {
        let s = self.shared();
        Stats {
            begins: self.begins,
            captures: s.captures.load(Ordering::Relaxed),
            untracked_writes: s.untracked_writes.load(Ordering::Relaxed),
            protect_calls: self.protect_calls,
        }
    }
}

impl Drop for PageTracker {
    /// Makes the whole region read-write again, restores the SIGSEGV action saved at install
    /// (unless someone replaced ours since, in which case theirs is left alone), and frees the
    /// state once no handler is running.
    fn drop(&mut self) {
        let s = self.shared();
        // SAFETY: the region is mapped read-write by install's contract; this restores it.
        let r = unsafe {
            rustix::mm::mprotect(
                s.base as *mut _,
                s.len,
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        };
        debug_assert!(r.is_ok(), "pagetrack: unprotect on drop failed: {r:?}");
        handler::restore_previous(&s.prev);
        handler::SHARED.store(std::ptr::null_mut(), Ordering::SeqCst);
        if handler::wait_idle() {
            // SAFETY: unpublished, and no handler is running or can still load the pointer
            // (wait_idle saw the in-handler count at zero after the store above).
            drop(unsafe { Box::from_raw(self.shared) });
        }
        // Otherwise a handler never returned (a chained handler jumped out): leak the state
        // rather than free it under a possible reader.
    }
}
