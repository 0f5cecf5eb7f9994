//! The spare: a standby armed by the kernel to take over from the serving incarnation
//! (policy txipc; ARCHITECTURE.md §6, "The spare").
//!
//! The kernel arms a ready standby (`ToServer::Arm`, with the serving incarnation's pidfd)
//! after setting the status page's takeover word to ARMED(spare). The spare then sleeps in
//! `poll` on its control socket, that pidfd and the server's *spare bell* (an eventfd shared
//! by every incarnation of the server). A crash of the serving incarnation while the word is
//! ARMED ends, after its crash report, in its death (`txipc_sys::crash`: it SIGKILLs itself,
//! its keeper holding the address space), so the pidfd is the event for every fault kind:
//! SIGKILL, exit, the kernel's kill of a hang, a crash. Only a crash that read the word
//! before the kernel armed it stops itself instead and rings the bell; then `/proc/PID/stat`
//! must show it stopped (polled, bounded). Once the incarnation is dead or stopped no process
//! can write the shared state any more; the spare claims the takeover
//! (ARMED(spare) → TAKING(spare), a compare-and-swap the kernel's disarm races against) and
//! recovers the server itself — rollback, settling of the taken slots, generation words —,
//! attaches the heap and serves, then tells the kernel what it did (`FromServer::TookOver`).
//! The kernel stays the authority: it arms only when its own recovery would re-post every
//! taken request and restart at once (`Lifecycle::takeover_allowed`), it disarms whenever it
//! wants to recover itself, and it recovers a spare that fails as any other incarnation.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use txipc_chan::{KernelChannel, Settle};
use txipc_core::manifest::Policy;
use txipc_core::proto::TakeoverReport;
use txipc_core::recovery::{LogState, SlotAction, TakenSlot, decide_slot, fault_counts};
use txipc_sys::process;
use txipc_sys::status::{StatusPage, Takeover};

use crate::server::Chan;

/// Checks of a stop after the bell rang before the spare gives up and leaves the recovery to
/// the kernel, with [`STOP_RECHECK`] between them (about 4 ms).
const STOP_TRIES: u32 = 200;
/// Time between two checks of the stop (the spare sleeps on the pidfd meanwhile, so a death
/// is seen at once).
const STOP_RECHECK: Duration = Duration::from_micros(20);

/// What the kernel armed this standby for.
pub(crate) struct Armed {
    /// The standby's own generation.
    pub(crate) generation: u64,
    /// The generation it watches.
    pub(crate) old_generation: u64,
    pub(crate) retry_limit: u32,
    old_pid: i32,
    pidfd: OwnedFd,
    /// It waits spinning at `SCHED_IDLE` ([`wait`]); `false`: asleep in `poll`.
    spin: bool,
    /// When it saw the watched incarnation's crash word (monotonic ns): the first sight of
    /// a crash, which the death it waits for follows.
    crash_seen: Option<u64>,
}

impl Armed {
    pub(crate) fn new(
        generation: u64,
        old_generation: u64,
        old_pid: i32,
        retry_limit: u32,
        pidfd: OwnedFd,
    ) -> Self {
        Armed {
            generation,
            old_generation,
            retry_limit,
            old_pid,
            pidfd,
            spin: spin_allowed(),
            crash_seen: None,
        }
    }
}

/// Whether an armed spare spins: it must be able to leave `SCHED_IDLE` again when it takes
/// over (CAP_SYS_NICE or RLIMIT_NICE, `txipc_sys::process::may_leave_sched_idle`), or it
/// would serve at idle priority; `TXIPC_SPARE_SPIN=0` makes it sleep in `poll` instead (the
/// wave-7 spare, for A/B measurements).
fn spin_allowed() -> bool {
    std::env::var("TXIPC_SPARE_SPIN").map_or(true, |v| v != "0") && process::may_leave_sched_idle()
}

/// `SCHED_IDLE` while it lives, `SCHED_OTHER` again when dropped: the spinning spare's
/// policy, left before it does anything but wait.
struct IdleWhileSpinning(bool);

impl IdleWhileSpinning {
    fn enter() -> Self {
        IdleWhileSpinning(process::set_sched_policy(0, process::SchedPolicy::Idle).is_ok())
    }
}

impl Drop for IdleWhileSpinning {
    fn drop(&mut self) {
        if self.0
            && let Err(e) = process::set_sched_policy(0, process::SchedPolicy::Other)
        {
            // Checked before spinning (`spin_allowed`); a spare that cannot leave idle
            // priority must not serve at it.
            eprintln!("txipc spare: cannot leave SCHED_IDLE ({e}); exiting");
            std::process::exit(76);
        }
    }
}

/// Why the spare woke.
pub(crate) enum Woke {
    /// A control message waits.
    Control,
    /// The watched incarnation cannot run any more (dead, or stopped after its crash
    /// report), seen at this instant (monotonic ns).
    Gone(u64),
    /// The bell rang but the incarnation was not seen stopped: the kernel decides.
    NotStopped,
    /// The kernel disarmed this spare (the takeover word is no longer ARMED(it)): it stops
    /// spinning and waits as an ordinary standby until armed again.
    Disarmed,
}

/// Prepares a standby just armed: timers as exact as the kernel allows (a re-check of a stop
/// sleeps [`STOP_RECHECK`], not that plus the default 50 µs slack).
pub(crate) fn armed() {
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
}

/// Empties the bell (rings of earlier crashes, not of the incarnation now watched).
pub(crate) fn drain(bell: &OwnedFd) {
    let mut b = [0u8; 8];
    while rustix::io::read(bell, &mut b).is_ok() {}
}

/// Waits until a control message, the watched incarnation's death or the bell. The bell is
/// emptied when the standby starts, not when it is armed: a crash that rang it between the
/// kernel's arming and this standby's reading of `Arm` is seen at once.
///
/// Spinning (`Armed::spin`, the default): at `SCHED_IDLE` on the server's CPU, so it runs only
/// when the serving incarnation does not want the CPU and any task woken there preempts it at
/// once. Each round reads the takeover word (still ARMED(it), or it stops spinning:
/// [`Woke::Disarmed`]) and the crash word (loads of the status page, in this CPU's cache),
/// polls the three descriptors with a zero timeout and yields. When the serving incarnation
/// dies its CPU is free at once and this process is already running there: no wake-up is on
/// the path. It takes the crash word as a stamp only (the first sight of a crash); it claims
/// only once the pidfd says the incarnation is dead (or, after the bell, `/proc` says it is
/// stopped), whoever wrote the word. Sleeping: in `poll`, as in wave 7.
pub(crate) fn wait(ctl: &OwnedFd, armed: &mut Armed, bell: &OwnedFd, status: &StatusPage) -> Woke {
    use rustix::event::{PollFd, PollFlags, poll};
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let idle = armed.spin.then(IdleWhileSpinning::enter);
    let (ctl_in, dead, rung, woke) = loop {
        // Disarmed (a server connected to this one, or the kernel recovers itself): spinning
        // is for an armed spare only. (Its own claim is the only other way out of ARMED(it).)
        if armed.spin && status.takeover() != Takeover::Armed(armed.generation) {
            return Woke::Disarmed;
        }
        if armed.spin && armed.crash_seen.is_none() && status.crashed() == armed.old_pid {
            let now = txipc_sys::time::monotonic_ns();
            // Consumed, so that a later spare never reads it; a word that is not the
            // watched incarnation's pid is not ours to touch.
            if status.clear_crashed(armed.old_pid) {
                armed.crash_seen = Some(now);
            }
        }
        let mut fds = [
            PollFd::new(ctl, PollFlags::IN),
            PollFd::new(&armed.pidfd, PollFlags::IN),
            PollFd::new(bell, PollFlags::IN),
        ];
        let timeout = if armed.spin { Some(&zero) } else { None };
        match poll(&mut fds, timeout) {
            Ok(0) => {
                rustix::thread::sched_yield();
                continue;
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return Woke::Control,
        }
        break (
            !fds[0].revents().is_empty(),
            !fds[1].revents().is_empty(),
            !fds[2].revents().is_empty(),
            txipc_sys::time::monotonic_ns(),
        );
    };
    // Back at SCHED_OTHER (and the kernel's nice) before anything else: a message to handle,
    // the claim and the recovery.
    drop(idle);
    let first = armed.crash_seen.map_or(woke, |c| c.min(woke));
    // A message first: a Shutdown or an Activate (the kernel disarmed) is the kernel's word.
    if ctl_in {
        return Woke::Control;
    }
    if dead {
        return Woke::Gone(first);
    }
    if rung {
        drain(bell);
        return confirm_stop(armed, first);
    }
    Woke::Control
}

/// The bell rang: a crash reporter that found no spare armed (it read the takeover word just
/// before the kernel armed this one) stops itself right after ringing; a crash with a spare
/// armed dies without ringing. Seen stopped (or dead) → gone; else re-checked every
/// [`STOP_RECHECK`], sleeping on the pidfd, [`STOP_TRIES`] times.
fn confirm_stop(armed: &Armed, woke: u64) -> Woke {
    use rustix::event::{PollFd, PollFlags, poll};
    // The bell rings just before the crashed process stops itself, and on the server's CPU the
    // spare woken by it may have preempted it: let it run to its stop first.
    rustix::thread::sched_yield();
    for _ in 0..STOP_TRIES {
        match process::state(armed.old_pid) {
            Some('T') | Some('t') | Some('Z') | Some('X') => return Woke::Gone(woke),
            // Gone from /proc: reaped, so dead (its pidfd says so; checked below).
            None => {}
            _ => {}
        }
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: STOP_RECHECK.as_nanos() as _,
        };
        let mut fds = [PollFd::new(&armed.pidfd, PollFlags::IN)];
        if matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
            return Woke::Gone(woke);
        }
    }
    Woke::NotStopped
}

/// What the spare claimed: it owns the recovery from now on.
pub(crate) struct Claimed {
    pub(crate) generation: u64,
    pub(crate) retry_limit: u32,
    pub(crate) old_generation: u64,
    pub(crate) woke_ns: u64,
    pub(crate) claimed_ns: u64,
}

/// ARMED(spare) → TAKING(spare); `None` if the kernel disarmed first.
pub(crate) fn claim(status: &StatusPage, armed: &Armed, woke_ns: u64) -> Option<Claimed> {
    status.claim_takeover(armed.generation).then(|| Claimed {
        generation: armed.generation,
        retry_limit: armed.retry_limit,
        old_generation: armed.old_generation,
        woke_ns,
        claimed_ns: txipc_sys::time::monotonic_ns(),
    })
}

/// The spare has served its first batch: clients woken from now on wait as usual
/// (`txipc_chan::FLAG_TAKEOVER` cleared on every channel of the server).
pub(crate) fn end_takeover(chans: &[Chan]) {
    for ch in chans {
        if let Ok(k) = KernelChannel::map(ch.fd.as_fd()) {
            k.set_takeover(false);
        }
    }
}

/// The spare's takeover is done: back to its server's priority (the kernel raised it to its
/// own when it armed it) and the default timer slack, before it serves. Lowering one's own
/// priority needs no privilege.
pub(crate) fn serve_as_server() {
    if let Some(nice) = std::env::var("TXIPC_SERVER_NICE")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        let _ = rustix::process::setpriority_process(None, nice);
    }
    let _ = rustix::thread::set_current_timer_slack(None);
}

/// The recovery the kernel would have run (ARCHITECTURE.md §6, "Sequence" steps 4–6), by the
/// spare that claimed it: generation words, rollback, settling of every TAKEN slot, a wake of
/// every sleeping client. Every request taken and not in the committed batch is re-posted:
/// the kernel armed the spare only while none had reached the retry limit, which is when its
/// own `decide_slot` re-posts them all. `Err`: the undo log is unusable (the caller exits; the
/// kernel then recovers and holds the server).
pub(crate) fn recover(
    c: &Claimed,
    status: &StatusPage,
    chans: &[Chan],
    heap_fd: &OwnedFd,
    log_fd: &OwnedFd,
) -> Result<TakeoverReport, String> {
    let retry_limit = c.retry_limit;
    status.set_generation(c.generation);
    let kernel: Vec<(u32, KernelChannel)> = chans
        .iter()
        .filter_map(|ch| Some((ch.index, KernelChannel::map(ch.fd.as_fd()).ok()?)))
        .collect();
    // Every sleeping client is woken now, before the rollback, not only when its slot is
    // settled: a client woken without its reply while the channel says TAKEOVER spins for it
    // (`ClientChannel::call`), so its wake-up (tens of µs on the project's VM) runs beside the
    // rollback, the attach and the re-run instead of after the reply. The incarnation that
    // could publish is dead. The flag is cleared after the first batch (`end_takeover`).
    for (_, k) in &kernel {
        k.set_generation(c.generation);
        k.set_takeover(true);
        k.wake_waiters();
    }
    let r = txipc_heap::recover(heap_fd.as_fd(), log_fd.as_fd()).map_err(|e| e.to_string())?;
    let log_state = match r.prior {
        txipc_heap::TxState::Idle => LogState::Idle,
        txipc_heap::TxState::Active(t) => LogState::Active(t),
        txipc_heap::TxState::Committed(t) => LogState::Committed(t),
        txipc_heap::TxState::Aborted(t) => LogState::Aborted(t),
    };
    // A fault here is a fault during the takeover (tests): rolled back, nothing settled.
    let _ = crate::failpoint::fail_point(txipc_core::failpoint::SITE_TAKEOVER);
    let committed = matches!(log_state, LogState::Committed(_));
    let names = txipc_heap::BatchEntry::names;
    let mut report = TakeoverReport {
        generation: c.generation,
        old_generation: c.old_generation,
        log: log_state.to_string(),
        undone: r.undone.records,
        woke_ns: c.woke_ns,
        claimed_ns: c.claimed_ns,
        ..Default::default()
    };
    // The kernel's own loop (`KernelChannel::settle_taken`), with the decision the kernel
    // would take here: no nested transactions (the kernel arms no server that calls or is
    // called by another server, so the incarnation was never waiting in a call), attempt 0
    // (every request it tracks is below the retry limit, or it would not have armed us).
    for (ci, k) in &kernel {
        let done = k.settle_taken(|snap| {
            let in_batch = committed && names(&r.batch, *ci, snap.slot, snap.seq);
            let named =
                (!r.running.is_empty()).then(|| names(&r.running, *ci, snap.slot, snap.seq));
            let charged = fault_counts(log_state, named, false);
            let action = decide_slot(
                Policy::Txipc,
                retry_limit,
                false,
                TakenSlot {
                    in_committed_batch: in_batch,
                    attempt: 0,
                    charged,
                },
            );
            let settle = match action {
                SlotAction::PublishWritten => Settle::PublishWritten,
                SlotAction::Repost => Settle::Repost,
                // Not reached with attempt 0 and a retry limit above 0; a limit of 0 fails
                // the request as the kernel would.
                SlotAction::Fail(_) => Settle::Fail(txipc_chan::Status::Aborted),
            };
            (settle, charged)
        });
        for (snap, settle, charged) in done {
            match settle {
                Settle::PublishWritten => report.published += 1,
                Settle::Repost => {
                    report.reposted += 1;
                    if charged {
                        report.charged.push((*ci, snap.slot as u32, snap.seq));
                    }
                }
                Settle::Fail(_) => {}
            }
        }
    }
    report.settled_ns = txipc_sys::time::monotonic_ns();
    Ok(report)
}
