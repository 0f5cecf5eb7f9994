//! Real faults must still crash: each case runs in a forked child that faults, and the parent
//! checks how it died (waitpid, bounded, always reaped). The parent never installs a tracker.

mod common;

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Recorder, Region, assert_sigsegv, in_child, page_size, record};
use nix::sys::wait::WaitStatus;
use rustix::mm::MprotectFlags;
use txipc_pagetrack::PageTracker;

/// In the child: a region of `pages` pages with a live tracker inside a transaction.
fn tracked(pages: usize) -> (Region, Box<Recorder>, PageTracker) {
    let region = Region::new(pages);
    let rec = Recorder::new(pages);
    // SAFETY: the child keeps region and recorder alive until it dies or exits.
    let mut t = unsafe { PageTracker::install(region.ptr, region.len, record, rec.ctx()) }.unwrap();
    t.begin().unwrap();
    (region, rec, t)
}

/// Sets SIGSEGV to SIG_DFL in the child (replacing Rust's stack-overflow handler), so the
/// tracker's "no previous handler" path is exercised.
fn default_sigsegv() {
    // SAFETY: all-zero sigaction is SIG_DFL.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid action.
    let r = unsafe { libc::sigaction(libc::SIGSEGV, &dfl, std::ptr::null_mut()) };
    assert_eq!(r, 0);
}

fn volatile_write(addr: usize) {
    // SAFETY: not safe at all, and that is the point: every caller expects this to fault.
    unsafe { (addr as *mut u8).write_volatile(1) }
}

#[test]
fn tracked_writes_do_not_kill() {
    let st = in_child(|| {
        let (region, rec, mut t) = tracked(4);
        region.write(1, 0, 1);
        region.write(1, 1, 1);
        assert_eq!(rec.count(), 1);
        t.end();
    });
    assert_eq!(st, WaitStatus::Exited(st.pid().unwrap(), 0));
}

#[test]
fn write_through_stale_pointer_outside_region_kills() {
    for dfl in [false, true] {
        let st = in_child(|| {
            if dfl {
                default_sigsegv();
            }
            let (region, _rec, _t) = tracked(4);
            region.write(0, 0, 1);
            let stale = Region::new(1);
            let addr = stale.ptr as usize;
            drop(stale); // unmapped: a stale pointer
            volatile_write(addr);
        });
        assert_sigsegv(st);
    }
}

#[test]
fn null_write_kills() {
    for dfl in [false, true] {
        let st = in_child(|| {
            if dfl {
                default_sigsegv();
            }
            let (_region, _rec, _t) = tracked(2);
            volatile_write(0);
        });
        assert_sigsegv(st);
    }
}

#[test]
fn write_to_region_page_protected_by_someone_else_kills() {
    let st = in_child(|| {
        default_sigsegv();
        let (region, rec, _t) = tracked(4);
        region.write(2, 0, 1); // captured: now writable as far as the tracker knows
        assert_eq!(rec.count(), 1);
        // Someone else (a bug) makes it read-only behind the tracker's back.
        // SAFETY: page 2 of our mapping.
        unsafe { rustix::mm::mprotect(region.page(2).cast(), page_size(), MprotectFlags::READ) }
            .unwrap();
        region.write(2, 0, 2);
    });
    assert_sigsegv(st);
}

#[test]
fn read_of_prot_none_page_in_region_kills() {
    let st = in_child(|| {
        default_sigsegv();
        let (region, _rec, _t) = tracked(4);
        // SAFETY: page 3 of our mapping.
        unsafe { rustix::mm::mprotect(region.page(3).cast(), page_size(), MprotectFlags::empty()) }
            .unwrap();
        let _ = region.read(3, 0);
    });
    assert_sigsegv(st);
}

#[test]
fn write_to_region_after_uninstall_kills() {
    let st = in_child(|| {
        let (region, _rec, mut t) = tracked(4);
        t.end();
        drop(t);
        region.write(0, 0, 1); // unprotected by drop: fine
        // SAFETY: our mapping.
        unsafe { rustix::mm::mprotect(region.ptr.cast(), region.len, MprotectFlags::READ) }
            .unwrap();
        region.write(0, 0, 2);
    });
    assert_sigsegv(st);
}

#[test]
fn sigsegv_sent_by_kill_is_not_swallowed() {
    let st = in_child(|| {
        default_sigsegv();
        let (_region, _rec, _t) = tracked(1);
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGSEGV).unwrap();
        // Give the signal no chance to be lost silently: if we get here, it was.
        std::process::abort();
    });
    assert_sigsegv(st);
}

/// A sink that faults (writes through null).
///
/// # Safety
///
/// None: it is meant to fault.
unsafe fn faulting_sink(_ctx: *mut (), _page: usize, _bytes: *const u8) {
    volatile_write(0);
}

/// A sink that writes into the tracked region (forbidden): a nested tracking fault.
///
/// # Safety
///
/// `ctx` is the region's base address.
unsafe fn region_writing_sink(ctx: *mut (), _page: usize, _bytes: *const u8) {
    volatile_write(ctx as usize + page_size()); // page 1, protected
}

#[test]
fn fault_inside_the_sink_kills_instead_of_recursing() {
    for sink in [
        faulting_sink as txipc_pagetrack::PreimageSink,
        region_writing_sink,
    ] {
        let st = in_child(|| {
            default_sigsegv();
            let region = Region::new(4);
            // SAFETY: region alive until the child dies.
            let mut t =
                unsafe { PageTracker::install(region.ptr, region.len, sink, region.ptr.cast()) }
                    .unwrap();
            t.begin().unwrap();
            region.write(2, 0, 1);
        });
        assert_sigsegv(st);
    }
}

// --- chaining to a handler installed before the tracker (the runtime's crash reporter) ---

/// Address the previous handler expects to be told about.
static EXPECTED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn reporter_siginfo(_sig: c_int, info: *mut libc::siginfo_t, _uc: *mut c_void) {
    // SAFETY: kernel-provided siginfo for a fault.
    let addr = unsafe { (*info).si_addr() } as usize;
    let code = if addr == EXPECTED.load(Ordering::SeqCst) {
        42
    } else {
        43
    };
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(code) }
}

extern "C" fn reporter_plain(_sig: c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(44) }
}

fn install_reporter(siginfo: bool) {
    // SAFETY: all-zero is a valid base.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    if siginfo {
        sa.sa_sigaction = reporter_siginfo as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
    } else {
        sa.sa_sigaction = reporter_plain as *const () as usize;
    }
    // SAFETY: valid action; the handlers are async-signal-safe.
    let r = unsafe { libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0);
}

#[test]
fn real_faults_chain_to_the_previous_siginfo_handler() {
    let st = in_child(|| {
        install_reporter(true);
        let (region, rec, _t) = tracked(4);
        // Tracking faults never reach the reporter (it would exit 43).
        for p in 0..4 {
            region.write(p, 0, 1);
        }
        assert_eq!(rec.count(), 4);
        EXPECTED.store(8, Ordering::SeqCst);
        volatile_write(8);
    });
    assert_eq!(
        st,
        WaitStatus::Exited(st.pid().unwrap(), 42),
        "reporter saw si_addr"
    );
}

#[test]
fn real_faults_chain_to_the_previous_plain_handler() {
    let st = in_child(|| {
        install_reporter(false);
        let (region, _rec, _t) = tracked(2);
        region.write(1, 0, 1);
        volatile_write(0);
    });
    assert_eq!(st, WaitStatus::Exited(st.pid().unwrap(), 44));
}

#[test]
fn fault_inside_the_sink_reaches_the_previous_handler() {
    let st = in_child(|| {
        install_reporter(true);
        EXPECTED.store(0, Ordering::SeqCst);
        let region = Region::new(2);
        // SAFETY: region alive until the child dies.
        let mut t = unsafe {
            PageTracker::install(region.ptr, region.len, faulting_sink, std::ptr::null_mut())
        }
        .unwrap();
        t.begin().unwrap();
        region.write(0, 0, 1);
    });
    assert_eq!(st, WaitStatus::Exited(st.pid().unwrap(), 42));
}

/// The handler installed over the first tracker: chains to whatever it replaced (our handler).
static REPLACED: AtomicUsize = AtomicUsize::new(0);

/// Calls of `chaining_back`, in memory shared with the parent.
static CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn chaining_back(sig: c_int, info: *mut libc::siginfo_t, uc: *mut c_void) {
    let calls = CALLS.load(Ordering::SeqCst) as *const AtomicUsize;
    // SAFETY: CALLS points at an AtomicUsize in a shared mapping that outlives the child.
    unsafe { (*calls).fetch_add(1, Ordering::SeqCst) };
    let h = REPLACED.load(Ordering::SeqCst);
    // SAFETY: REPLACED holds the SA_SIGINFO handler that was installed (the tracker's).
    let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
        unsafe { std::mem::transmute(h) };
    f(sig, info, uc);
}

#[test]
fn a_handler_chaining_back_to_us_does_not_loop() {
    let shared = Region::new(1); // MAP_SHARED: the child's counts are visible here
    // SAFETY: page-aligned, in bounds, zero-initialised: a valid AtomicUsize.
    let calls = unsafe { &*shared.ptr.cast::<AtomicUsize>() };
    CALLS.store(shared.ptr as usize, Ordering::SeqCst);
    let st = in_child(|| {
        default_sigsegv();
        let (region_a, _rec_a, mut a) = tracked(2);
        // Someone installs a handler over the tracker's that chains back to it.
        // SAFETY: all-zero is a valid base.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = chaining_back as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        // SAFETY: zeroed out-param for the old action.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: valid action and out-pointer.
        let r = unsafe { libc::sigaction(libc::SIGSEGV, &sa, &mut old) };
        assert_eq!(r, 0);
        REPLACED.store(old.sa_sigaction, Ordering::SeqCst);
        region_a.write(0, 0, 1); // tracking still works through the chain
        a.end();
        drop(a); // leaves `chaining_back` in place (not ours to remove)
        // A second tracker now has `chaining_back` as its previous handler, which chains to the
        // (stateless) tracker handler: a real fault must still end in death, not a loop.
        let (_region_b, _rec_b, _b) = tracked(2);
        volatile_write(16);
    });
    assert_sigsegv(st);
    // One call for the tracked write of tracker A (chained through `chaining_back`), one for the
    // real fault; without the re-entry guard it recurses until the alternate stack overflows.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
