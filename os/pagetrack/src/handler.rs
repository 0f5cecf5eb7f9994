//! The SIGSEGV handler: tell tracking faults from real ones, capture or pass on.
//!
//! Everything here runs in signal context and is async-signal-safe: atomics, thread-locals with a
//! constant initialiser and no destructor (plain `#[thread_local]` storage on Linux, no lazy
//! registration), raw syscalls through rustix, and `sigaction`/`pthread_sigmask`/`sched_yield`.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::{Capture, Shared};

/// The live tracker's state, or null. Written by install and drop only.
pub(crate) static SHARED: AtomicPtr<Shared> = AtomicPtr::new(null_mut());

/// Number of handler invocations currently between their load of [`SHARED`] and their return.
/// Drop unpublishes [`SHARED`] and then waits for zero before freeing (SeqCst on both sides: the
/// handler increments *then* loads, drop stores null *then* reads the count, so either the
/// handler sees null or drop sees it counted).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// `si_code` for "invalid permissions for mapped object" (`asm-generic/siginfo.h`); not exported
/// by the libc crate for Linux.
const SEGV_ACCERR: c_int = 2;

/// Values of [`DEPTH`].
const IDLE: u8 = 0;
const IN_TRACK: u8 = 1;
const IN_CHAIN: u8 = 2;

thread_local! {
    /// Where this thread is in our handler: [`IDLE`], [`IN_TRACK`] (classifying a fault and
    /// capturing, sink included: a fault now is never a tracking fault) or [`IN_CHAIN`] (calling
    /// the previous handler: a fault now must not be chained again).
    static DEPTH: Cell<u8> = const { Cell::new(IDLE) };
    /// `(address, epoch)` of the last fault on this thread that found its page already writable
    /// and was retried. The same pair again means no tracking progress happened in between, so
    /// the page is genuinely not writable: a real fault.
    static LAST_STALE: Cell<(usize, u64)> = const { Cell::new((0, u64::MAX)) };
}

/// The action currently installed for SIGSEGV.
pub(crate) fn current_action() -> Result<libc::sigaction, nix::errno::Errno> {
    // SAFETY: all-zero is a valid `sigaction` (SIG_DFL, empty mask, no flags); it is overwritten.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null `act` only queries; `old` is a valid out-pointer.
    let r = unsafe { libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) };
    nix::errno::Errno::result(r).map(|_| old)
}

/// The action to chain real faults to: the current one, except that our own handler (left in
/// place by a tracker whose action was replaced before it was dropped) counts as `SIG_DFL`, so
/// we never chain to ourselves.
pub(crate) fn previous_action() -> Result<libc::sigaction, nix::errno::Errno> {
    let mut prev = current_action()?;
    if prev.sa_sigaction == on_sigsegv as *const () as usize {
        // SAFETY: all-zero is SIG_DFL with an empty mask and no flags.
        prev = unsafe { std::mem::zeroed() };
    }
    Ok(prev)
}

/// Installs [`on_sigsegv`] (flags: see the crate docs, *Design*).
pub(crate) fn install_handler() -> Result<(), nix::errno::Errno> {
    let action = SigAction::new(
        SigHandler::SigAction(on_sigsegv),
        SaFlags::SA_SIGINFO | SaFlags::SA_NODEFER | SaFlags::SA_ONSTACK,
        SigSet::empty(),
    );
    // SAFETY: `on_sigsegv` is async-signal-safe (module docs) and stays valid (a static fn).
    unsafe { nix::sys::signal::sigaction(Signal::SIGSEGV, &action) }.map(drop)
}

/// Puts `prev` back if our handler is still the installed one; a handler installed over ours is
/// left alone (it would chain to a stale action otherwise, and it is its owner's business).
pub(crate) fn restore_previous(prev: &libc::sigaction) {
    let Ok(cur) = current_action() else { return };
    if cur.sa_sigaction == on_sigsegv as *const () as usize {
        // SAFETY: `prev` was returned by the kernel for SIGSEGV at install: a valid action.
        unsafe { libc::sigaction(libc::SIGSEGV, prev, null_mut()) };
    }
}

/// Waits (bounded, ~1 s) until no handler invocation is running. `false` if one never returned
/// (a chained handler jumped out of it, or is stuck): the caller must then leak the state.
pub(crate) fn wait_idle() -> bool {
    for i in 0..20_000u32 {
        if ACTIVE.load(Ordering::SeqCst) == 0 {
            return true;
        }
        if i < 10_000 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    false
}

/// Resets SIGSEGV to `SIG_DFL`: when the handler returns, the faulting instruction runs again,
/// faults again and the process dies of SIGSEGV (the kernel would do the same for a blocked or
/// ignored synchronous SIGSEGV).
fn reset_to_default() {
    // SAFETY: all-zero is SIG_DFL with an empty mask and no flags.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid action, null `oldact`; sigaction is async-signal-safe.
    unsafe { libc::sigaction(libc::SIGSEGV, &dfl, null_mut()) };
}

extern "C" fn on_sigsegv(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    // SAFETY: __errno_location returns this thread's errno slot. Saved and restored so the
    // interrupted code never sees errno change under it.
    let errno_slot = unsafe { libc::__errno_location() };
    // SAFETY: as above, a valid pointer.
    let saved_errno = unsafe { *errno_slot };

    ACTIVE.fetch_add(1, Ordering::SeqCst);
    let sh = SHARED.load(Ordering::SeqCst);
    if sh.is_null() {
        // The tracker was dropped while this fault was being delivered, or a handler installed
        // over ours chained to us: either way nobody tracks this address, it is a real fault.
        reset_to_default();
    } else {
        // SAFETY: a non-null SHARED is a live Box: drop unpublishes it and then waits until
        // ACTIVE (counted above, before the load) is zero before freeing it.
        let sh = unsafe { &*sh };
        match DEPTH.get() {
            IDLE => {
                DEPTH.set(IN_TRACK);
                // SAFETY: `info` and `uctx` come from the kernel for an SA_SIGINFO handler.
                let tracked = unsafe { try_track(sh, info, uctx) };
                if !tracked {
                    DEPTH.set(IN_CHAIN);
                    // SAFETY: same signal arguments; `sh.prev` is the action the kernel gave at
                    // install.
                    unsafe { real_fault(&sh.prev, sig, info, uctx, false) };
                }
                DEPTH.set(IDLE);
            }
            IN_TRACK => {
                // A fault inside try_track: in the sink, or the sink wrote a protected page.
                DEPTH.set(IN_CHAIN);
                // SAFETY: as above.
                unsafe { real_fault(&sh.prev, sig, info, uctx, true) };
                DEPTH.set(IN_TRACK);
            }
            _ => {
                // Re-entered from the handler we chained to (it chains back to us, or faulted
                // itself): chaining again could loop forever. Die.
                reset_to_default();
            }
        }
    }
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *errno_slot = saved_errno };
}

/// Returns `true` if the fault was a tracking fault and the write can be re-executed.
///
/// # Safety
///
/// `info` and `uctx` are the kernel's arguments to an `SA_SIGINFO` SIGSEGV handler.
unsafe fn try_track(sh: &Shared, info: *mut libc::siginfo_t, uctx: *mut c_void) -> bool {
    // SAFETY: the kernel passes a valid siginfo.
    let info = unsafe { &*info };
    if info.si_code != SEGV_ACCERR {
        return false; // unmapped address (SEGV_MAPERR), or sent by kill(): not ours
    }
    // SAFETY: for SIGSEGV with a kernel si_code, the fault-address union member is the one set.
    let addr = unsafe { info.si_addr() } as usize;
    let off = addr.wrapping_sub(sh.base);
    if off >= sh.len {
        return false;
    }
    // SAFETY: `uctx` is the kernel's ucontext for this signal.
    if !unsafe { is_write_fault(uctx) } {
        return false;
    }
    let page = off >> sh.page_shift;
    // SAFETY: page < npages since off < len; region and ctx valid by install's contract.
    match unsafe { sh.capture(page) } {
        Ok(Capture::Captured) => true,
        Ok(Capture::AlreadyWritable) => {
            let seen = (addr, sh.epoch.load(Ordering::Acquire));
            if LAST_STALE.get() == seen {
                false
            } else {
                LAST_STALE.set(seen);
                true
            }
        }
        Err(_) => false,
    }
}

/// Whether the faulting access was a write.
///
/// x86_64: the page-fault error code, saved by the kernel in `uc_mcontext.gregs[REG_ERR]`, has
/// bit 1 (`X86_PF_WRITE`) set for writes.
///
/// # Safety
///
/// `uctx` is the kernel's ucontext argument to a SIGSEGV handler.
#[cfg(target_arch = "x86_64")]
unsafe fn is_write_fault(uctx: *mut c_void) -> bool {
    const X86_PF_WRITE: libc::greg_t = 1 << 1;
    // SAFETY: the kernel passes a valid ucontext_t.
    let uc = unsafe { &*uctx.cast::<libc::ucontext_t>() };
    uc.uc_mcontext.gregs[libc::REG_ERR as usize] & X86_PF_WRITE != 0
}

/// Whether the faulting access was a write.
///
/// Other architectures: not decoded (aarch64 would read the ESR record in `__reserved`). Every
/// fault on a page *we* protected is taken as a write. That is still exact in practice: our
/// pages are `PROT_READ`, so a read cannot fault on them; an instruction fetch would, be taken as
/// a write, make the page writable and fault again on a page now `WRITABLE` — a real fault.
///
/// # Safety
///
/// None required; kept `unsafe` for symmetry with the x86_64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn is_write_fault(_uctx: *mut c_void) -> bool {
    true
}

/// Passes a real fault on: to the previous handler if there was one (then, if the fault was
/// nested inside our handler, makes sure the next fault kills), else to `SIG_DFL`.
///
/// # Safety
///
/// `prev` is an action the kernel returned for SIGSEGV; the other arguments are the kernel's
/// arguments to this handler invocation.
unsafe fn real_fault(
    prev: &libc::sigaction,
    sig: c_int,
    info: *mut libc::siginfo_t,
    uctx: *mut c_void,
    nested: bool,
) {
    let h = prev.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // SAFETY: the kernel passes a valid siginfo.
        let sent = unsafe { (*info).si_code } <= 0; // SI_USER, SI_QUEUE, SI_TKILL: not a fault
        if sent {
            // A SIGSEGV sent by kill() is not re-raised by returning: deliver it as the previous
            // disposition would have (SIG_IGN: dropped; SIG_DFL: kill).
            if h == libc::SIG_DFL {
                reset_to_default();
                // SAFETY: raise is async-signal-safe; SIGSEGV is not blocked here (SA_NODEFER),
                // so the default action (termination) happens now.
                unsafe { libc::raise(libc::SIGSEGV) };
            }
            return;
        }
        // A fault: the instruction runs again on return and faults again under SIG_DFL. (SIG_IGN
        // cannot ignore a synchronous SIGSEGV: the kernel forces SIG_DFL as well.)
        reset_to_default();
        return;
    }
    if prev.sa_flags & libc::SA_RESETHAND != 0 {
        reset_to_default();
    }
    // Run it under the mask it asked for, as the kernel would have.
    let mut mask = prev.sa_mask;
    let mut old_mask: libc::sigset_t = {
        // SAFETY: an all-zero sigset is valid (empty); it is overwritten below.
        unsafe { std::mem::zeroed() }
    };
    // SAFETY: `mask` and `old_mask` are valid sigsets; sigaddset and pthread_sigmask are
    // async-signal-safe.
    unsafe {
        if prev.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, libc::SIGSEGV);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &mask, &mut old_mask);
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO, sa_sigaction holds a three-argument handler (it is not
        // SIG_DFL/SIG_IGN, checked above).
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, uctx);
    } else {
        // SAFETY: without SA_SIGINFO, the field holds a one-argument sa_handler.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, null_mut()) };
    if nested {
        // A fault inside the sink or the handler cannot be retried into success: once the
        // previous handler has reported it (and returned), die.
        reset_to_default();
    }
}
