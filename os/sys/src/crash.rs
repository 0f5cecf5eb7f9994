//! The crash reporter of a server incarnation.
//!
//! On a fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS) or a panic, the
//! incarnation sends a [`CrashReport`] on its control socket and stops itself with SIGSTOP. A
//! stopped process cannot touch shared memory any more, so the kernel can recover the server at
//! once — roll back, re-post, start the standby — and kill the stopped incarnation afterwards:
//! the address-space teardown of a large heap is then off the recovery path. A process killed
//! from outside (SIGKILL) cannot report; the kernel learns of it from its pidfd instead.
//!
//! With a spare armed to take over (the status page's takeover word ARMED, see
//! [`die_when_a_spare_is_armed`]) the incarnation kills itself instead of stopping: its pidfd,
//! which the spare sleeps on, then fires the moment it can no longer run — an event, where a
//! stop can only be seen by polling `/proc` — and its keeper ([`crate::keeper`]) holding the
//! address space keeps the teardown of its heap off that path.
//!
//! Everything the signal handler does is async-signal-safe: atomic loads, `send(2)` with
//! `MSG_DONTWAIT`, `write(2)` on the spare's bell (an eventfd), `kill(2)`, `sigaction(2)`.

use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use crate::status::{StatusPage, Takeover};

/// First byte of a crash report; no control message encoding starts with it.
pub const CRASH_MAGIC: u8 = 0xFF;

/// What kind of fault a report describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    /// A fatal signal, with its number.
    Signal(i32),
    /// A Rust panic.
    Panic,
    /// A failed integrity check (heap canary, invariant).
    Integrity,
}

/// Most bytes of detail (a panic's message) a report carries after its 8-byte head.
pub const MAX_DETAIL: usize = 240;

/// A crash report as sent on the wire: 8 bytes, then optionally up to [`MAX_DETAIL`] bytes of
/// UTF-8 detail (a panic's message). The detail is an allegation of the crashed process: the
/// kernel only shows it, lossily decoded and bounded, and never decides anything from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashReport {
    /// The kind of fault.
    pub kind: CrashKind,
}

impl CrashReport {
    /// Encodes the report.
    pub fn encode(&self) -> [u8; 8] {
        let (k, v) = match self.kind {
            CrashKind::Signal(s) => (1u8, s),
            CrashKind::Panic => (2, 0),
            CrashKind::Integrity => (3, 0),
        };
        let v = v.to_le_bytes();
        [CRASH_MAGIC, k, 0, 0, v[0], v[1], v[2], v[3]]
    }

    /// Decodes a report; `None` if `bytes` is not one. See [`CrashReport::detail`] for the
    /// bytes after the head.
    pub fn decode(bytes: &[u8]) -> Option<CrashReport> {
        if bytes.len() < 8 || bytes.len() > 8 + MAX_DETAIL || bytes[0] != CRASH_MAGIC {
            return None;
        }
        let v = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let kind = match bytes[1] {
            1 => CrashKind::Signal(v),
            2 => CrashKind::Panic,
            3 => CrashKind::Integrity,
            _ => return None,
        };
        Some(CrashReport { kind })
    }

    /// The detail of an encoded report (empty if none), lossily decoded as UTF-8 with control
    /// characters replaced, at most [`MAX_DETAIL`] bytes.
    pub fn detail(bytes: &[u8]) -> String {
        let tail = bytes.get(8..).unwrap_or_default();
        let tail = &tail[..tail.len().min(MAX_DETAIL)];
        String::from_utf8_lossy(tail)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
/// The spare's bell ([`set_spare_bell`]): an eventfd rung after the report, before the stop.
static SPARE_BELL: AtomicI32 = AtomicI32::new(-1);

/// Rings the spare's bell, if one is set: the spare armed to take over from this incarnation
/// wakes and waits for it to be stopped (ARCHITECTURE.md §6, "The spare"). Async-signal-safe.
fn ring_spare() {
    let fd = SPARE_BELL.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    let one = 1u64.to_ne_bytes();
    // SAFETY: `one` is a live 8-byte stack buffer; a write on a stale fd is harmless (EBADF);
    // write(2) is async-signal-safe.
    unsafe {
        libc::write(fd, one.as_ptr().cast(), one.len());
    }
}

/// Sets the spare's bell: an eventfd that every incarnation of the server shares (created by
/// its zygote). After a crash report and before stopping itself, the incarnation adds 1 to it,
/// so that an armed spare polling it learns of the crash without waiting for the kernel. A
/// private duplicate is kept for the life of the process (as the report socket's).
pub fn set_spare_bell(bell: impl std::os::fd::AsFd) -> std::io::Result<()> {
    let own = rustix::io::fcntl_dupfd_cloexec(&bell, 3)?;
    SPARE_BELL.store(std::os::fd::IntoRawFd::into_raw_fd(own), Ordering::Release);
    Ok(())
}

/// The status page whose takeover word decides how a crashed incarnation ends
/// ([`die_when_a_spare_is_armed`]); null: it always stops itself.
static STATUS: AtomicPtr<StatusPage> = AtomicPtr::new(std::ptr::null_mut());

/// From now on a crash of this process, once reported, ends in its death (SIGKILL to itself)
/// while `status`'s takeover word is ARMED, and in a stop (SIGSTOP) otherwise. Call it only
/// when a keeper shares the address space (`crate::keeper`): the death then only drops a
/// reference to it, so the pidfd fires within microseconds whatever the heap's size.
///
/// Why: the armed spare may serve only once the failed incarnation can no longer write the
/// shared state. A death is an event on the pidfd the spare already sleeps on; a stop is not
/// (Linux tells only the parent and a tracer), so the spare had to poll `/proc/PID/stat`.
/// When no spare is armed the kernel recovers, and it confirms a stop sooner than a death
/// (the stop is a few microseconds of the crashed process, the death its whole exit).
pub fn die_when_a_spare_is_armed(status: &'static StatusPage) {
    STATUS.store(std::ptr::from_ref(status).cast_mut(), Ordering::Release);
}

/// Whether a crashed process ends in its death (a spare is armed) rather than a stop.
fn a_spare_is_armed() -> bool {
    let p = STATUS.load(Ordering::Acquire);
    // SAFETY: a non-null `p` came from the `&'static StatusPage` given to
    // `die_when_a_spare_is_armed`, alive until the process ends; `takeover` is one atomic
    // load of the mapped page (async-signal-safe).
    !p.is_null() && matches!(unsafe { &*p }.takeover(), Takeover::Armed(_))
}

/// Ends the process after its crash report: dies with a spare armed (the spare's pidfd fires),
/// else rings the spare's bell (a spare armed meanwhile wakes and confirms the stop) and
/// stops. Returns only if someone continues the stopped process. Async-signal-safe.
fn end_after_report() {
    if a_spare_is_armed() {
        // SAFETY: getpid(2) is async-signal-safe and takes no pointers.
        let pid = unsafe { libc::getpid() };
        // The crash word first (one store, for the spare's stamp of the fault), then the
        // death the spare confirms by the pidfd before it serves.
        let p = STATUS.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: as in `a_spare_is_armed`: a non-null `p` points to the
            // `&'static StatusPage` given to `die_when_a_spare_is_armed`; one atomic store.
            unsafe { &*p }.set_crashed(pid);
        }
        // SAFETY: kill(2) is async-signal-safe and takes no pointers.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    ring_spare();
    stop_self();
}

const FATAL: [i32; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
];

fn send_report(report: CrashReport) {
    send_report_with(report, &[]);
}

/// Sends a report with `detail` appended (truncated to [`MAX_DETAIL`]); builds it in a stack
/// buffer, so it is async-signal-safe when `detail` is empty.
fn send_report_with(report: CrashReport, detail: &[u8]) {
    let fd = REPORT_FD.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 8 + MAX_DETAIL];
    buf[..8].copy_from_slice(&report.encode());
    let d = detail.len().min(MAX_DETAIL);
    buf[8..8 + d].copy_from_slice(&detail[..d]);
    let bytes = &buf[..8 + d];
    // SAFETY: `bytes` is a live stack buffer of the given length; `send` on a possibly stale fd
    // is harmless (EBADF). send(2) is async-signal-safe.
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

fn stop_self() {
    // SAFETY: kill(2) and getpid(2) are async-signal-safe and take no pointers.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGSTOP);
    }
}

extern "C" fn on_fatal_signal(
    sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    send_report(CrashReport {
        kind: CrashKind::Signal(sig),
    });
    end_after_report();
    // Only reached if someone continues us: die the ordinary way. Restore the default action and
    // return; the faulting instruction faults again (or, for abort/raise, re-raise).
    // SAFETY: resetting a signal's disposition to SIG_DFL and raising it are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs the crash reporter: fatal signals and panics are reported on `report` (a
/// connected SEQPACKET socket to the kernel), then the process stops itself.
///
/// The reporter keeps its own duplicate of `report`, open for the life of the process, so the
/// signal handler never writes to a descriptor number that was closed or reused meanwhile. It
/// refuses anything but a socket. Installing again replaces the descriptor (the old duplicate
/// stays open: the handler may be running on another thread).
pub fn install(report: impl std::os::fd::AsFd) -> std::io::Result<()> {
    let st = rustix::fs::fstat(&report)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(std::io::Error::other(
            "the crash reporter needs a socket to the kernel",
        ));
    }
    let own = rustix::io::fcntl_dupfd_cloexec(&report, 3)?;
    // Never closed: the handler may use it until the process ends.
    let report_fd = std::os::fd::IntoRawFd::into_raw_fd(own);
    REPORT_FD.store(report_fd, Ordering::Release);
    for sig in FATAL {
        // SAFETY: an all-zero sigaction is a valid starting value; every field we rely on is set
        // below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_fatal_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        // SAFETY: `sa.sa_mask` is a valid sigset_t owned by us.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: `sa` is fully initialised and the handler only performs async-signal-safe
        // operations; the old action is not needed.
        let rc = unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // Report first, then one line on stderr, then stop: the default hook would symbolise a
    // backtrace (hundreds of milliseconds with RUST_BACKTRACE set) before the kernel even
    // hears of the fault. The kernel acts on the report once it sees the process stopped.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        send_report_with(
            CrashReport {
                kind: CrashKind::Panic,
            },
            msg.as_bytes(),
        );
        // One write(2): `eprintln!` writes each piece of the formatted line by itself (stderr
        // is unbuffered), and when stderr is the system log's pipe every write wakes the
        // kernel process's copying thread, on this CPU, before this process may stop or die
        // (bench recovery: a panicking incarnation took milliseconds from its report to its
        // death on a loaded machine, a SIGSEGV microseconds).
        let line = format!("txipc server panicked: {info}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        // After the message: the spare woken by the bell finds this process stopped sooner.
        end_after_report();
        std::process::abort();
    }));
    Ok(())
}

/// Undoes [`install`] in a child forked from a server (a companion's checkpoint writer): its
/// faults must not be reported as the server's. Fatal signals get their default action back and
/// a panic exits the child quietly with status 70.
pub fn disarm() {
    REPORT_FD.store(-1, Ordering::Release);
    SPARE_BELL.store(-1, Ordering::Release);
    STATUS.store(std::ptr::null_mut(), Ordering::Release);
    for sig in FATAL {
        // SAFETY: restoring the default disposition of a signal has no preconditions.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    std::panic::set_hook(Box::new(|_| std::process::exit(70)));
}

/// Reports a crash of the given kind and stops the process; if it is ever continued, it aborts.
/// Used for panics and failed integrity checks.
pub fn report_and_stop(kind: CrashKind) -> ! {
    send_report(CrashReport { kind });
    end_after_report();
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_roundtrip() {
        for kind in [
            CrashKind::Signal(11),
            CrashKind::Panic,
            CrashKind::Integrity,
        ] {
            let r = CrashReport { kind };
            assert_eq!(CrashReport::decode(&r.encode()), Some(r));
        }
        assert_eq!(CrashReport::decode(&[0u8; 8]), None);
        assert_eq!(
            CrashReport::decode(&[CRASH_MAGIC, 9, 0, 0, 0, 0, 0, 0]),
            None
        );
        let mut with = CrashReport {
            kind: CrashKind::Panic,
        }
        .encode()
        .to_vec();
        with.extend_from_slice(b"boom\n\xff");
        assert_eq!(
            CrashReport::decode(&with).map(|r| r.kind),
            Some(CrashKind::Panic)
        );
        assert_eq!(CrashReport::detail(&with), "boom \u{fffd}");
        assert_eq!(CrashReport::detail(&with[..8]), "");
        assert_eq!(
            CrashReport::decode(&vec![CRASH_MAGIC; 8 + MAX_DETAIL + 1]),
            None
        );
    }
}

/// Fault kinds a fail point can inject (the wire values of `txipc_core::failpoint::FailKind`).
pub mod inject_kind {
    /// `panic!`.
    pub const PANIC: u8 = 1;
    /// A write to an unmapped address (SIGSEGV from the hardware).
    pub const SEGV: u8 = 2;
    /// `abort()` (SIGABRT).
    pub const ABORT: u8 = 3;
    /// An infinite loop (caught by the kernel's per-call deadline).
    pub const HANG: u8 = 4;
    /// `exit(3)`: death without a signal.
    pub const EXIT: u8 = 5;
    /// Flip a bit of the site's data (done by the site, not by [`inject`](super::inject)).
    pub const CORRUPT: u8 = 6;
    /// Sleep, then go on (done by the runtime, not by [`inject`](super::inject)).
    pub const DELAY: u8 = 7;
}

/// A store to address 8, in the first page, which Linux never maps (`vm.mmap_min_addr`): it
/// faults in hardware exactly like a null-pointer bug would.
///
/// It is an `asm!` store, not a Rust one: a Rust write through a dangling pointer is undefined
/// behaviour by definition (the compiler may assume it does not happen and remove or move it),
/// whereas the effect of an `asm!` block is only what the hardware does.
fn hardware_segv() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the store faults before it writes anything (address 8 is never mapped); the
    // SIGSEGV handler stops the process, and if it is continued the handler restores the
    // default action and returns, so the store faults again and the process dies. No memory
    // Rust knows of is touched; the block clobbers no register it does not declare.
    unsafe {
        std::arch::asm!("mov byte ptr [{p}], 1", p = in(reg) 8usize, options(nostack));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        std::arch::asm!("strb wzr, [{p}]", p = in(reg) 8usize, options(nostack));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    // SAFETY: raise(2) takes no pointers.
    unsafe {
        libc::raise(libc::SIGSEGV);
    }
}

/// Injects a fault of `kind` (see [`inject_kind`]) right here. Unknown kinds do nothing.
pub fn inject(kind: u8) {
    match kind {
        inject_kind::PANIC => panic!("txipc: injected panic at a fail point"),
        inject_kind::SEGV => hardware_segv(),
        inject_kind::ABORT => std::process::abort(),
        inject_kind::HANG => loop {
            std::hint::spin_loop();
        },
        inject_kind::EXIT => std::process::exit(3),
        _ => {}
    }
}
