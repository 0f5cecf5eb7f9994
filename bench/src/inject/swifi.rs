//! Software-implemented fault injection through ptrace (safe code: nix's ptrace calls).
//!
//! One injection: `PTRACE_SEIZE` the running incarnation (no stop), then repeatedly
//! `PTRACE_INTERRUPT` it at random instants until it is stopped *inside a call*: its status
//! page's `busy` word (read from the stopped process's memory; the page is found by its memfd
//! name in `/proc/PID/maps`) holds the id of the transaction being handled. Then one fault is
//! applied to the stopped process — a bit of a register flipped, a bit of a stack or heap word
//! flipped, or the instruction at `rip` skipped (its length decoded with `iced-x86`) — and the
//! process is detached, which lets it run on with the fault.
//!
//! Rules that keep the system around it sound:
//! - The injector never leaves a traced or stopped process behind: `Seized` detaches in
//!   `Drop`; if the tracee cannot be brought to a ptrace-stop to detach it, it is killed.
//! - The kernel's own stops are not confused with ours: a signal that arrives while we hold the
//!   process (the crash reporter's SIGSTOP, a SIGSEGV, the watchdog's SIGSTOP) is handed back at
//!   once by detaching *with* that signal, and the attempt is given up; the kernel then sees
//!   exactly what it would have seen untraced. Our stops last microseconds, far below any
//!   deadline, and the fault itself runs only after the detach, so every crash it causes is
//!   reported by the untraced server as usual.

use std::time::{Duration, Instant};

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::Serialize;

use super::fault::Action;
use crate::ycsb::Rng;

/// Where things are in the server process.
#[derive(Debug, Clone)]
pub struct Target {
    /// The incarnation.
    pub pid: i32,
    /// Address of its status page.
    pub status_addr: u64,
    /// Start of its recoverable heap mapping.
    pub heap_start: u64,
    /// Length of the mapping.
    pub heap_len: u64,
    /// The heap memfd, reached through the process's descriptor table (`/proc/PID/fd/N`);
    /// `None` for a server whose state is in its private heap (`[heap]`, written by ptrace).
    pub heap_file: Option<std::path::PathBuf>,
}

/// Finds the status page and the heap of server `server` in process `pid`.
pub fn locate(pid: i32, server: &str) -> Result<Target, String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("reading /proc/{pid}/maps: {e}"))?;
    let status_name = format!("memfd:txipc-status-{server} ");
    let heap_name = format!("memfd:txipc-heap-{server} ");
    let (mut status, mut heap) = (None, None::<(u64, u64)>);
    for line in maps.lines() {
        let Some((range, _)) = line.split_once(' ') else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        // `/memfd:NAME (deleted)`.
        let path = format!(
            "{} ",
            line.split_whitespace()
                .nth(5)
                .unwrap_or("")
                .trim_start_matches('/')
        );
        if path.starts_with(&status_name) && status.is_none() {
            status = Some(a);
        } else if path.starts_with(&heap_name) && heap.is_none_or(|(_, len)| b - a > len) {
            heap = Some((a, b - a));
        }
    }
    let status_addr = status.ok_or_else(|| format!("no status page mapped in pid {pid}"))?;
    // A server without a recoverable heap (policy companion: ordinary Rust state) keeps its
    // state in the process's own heap.
    let (heap_start, heap_len, heap_file) = match heap {
        Some((a, len)) => {
            let file = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map_err(|e| format!("reading /proc/{pid}/fd: {e}"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    std::fs::read_link(p).is_ok_and(|l| {
                        l.to_string_lossy()
                            .trim_start_matches('/')
                            .starts_with(heap_name.trim_end())
                    })
                })
                .ok_or_else(|| format!("no heap descriptor in pid {pid}"))?;
            (a, len, Some(file))
        }
        None => {
            let (a, b) = maps
                .lines()
                .find(|l| l.ends_with("[heap]"))
                .and_then(|l| {
                    let (a, b) = l.split_once(' ')?.0.split_once('-')?;
                    Some((
                        u64::from_str_radix(a, 16).ok()?,
                        u64::from_str_radix(b, 16).ok()?,
                    ))
                })
                .ok_or_else(|| format!("no heap mapped in pid {pid}"))?;
            (a, b - a, None)
        }
    };
    Ok(Target {
        pid,
        status_addr,
        heap_start,
        heap_len,
        heap_file,
    })
}

/// What one injection did.
#[derive(Debug, Clone, Serialize)]
pub struct Injection {
    /// Whether the fault was applied to the process.
    pub injected: bool,
    /// What was done, or why nothing was.
    pub detail: String,
    /// Calls tried before one reached the injection point.
    pub attempts: u32,
    /// The injector could not detach the server and killed it (the run says nothing about
    /// the fault).
    pub killed: bool,
    /// Whether the changed state differs from the old (a flip always does; a skip of a 0-length
    /// decode never happens).
    #[serde(skip)]
    pub changed: bool,
}

impl Injection {
    fn not(detail: String, attempts: u32) -> Injection {
        Injection {
            injected: false,
            detail,
            attempts,
            killed: false,
            changed: false,
        }
    }
}

/// A seized process; detached (or, failing that, killed) when dropped.
#[derive(Debug)]
struct Seized {
    pid: Pid,
    attached: bool,
    /// A hardware watchpoint is set in the tracee.
    watching: bool,
}

impl Seized {
    fn seize(pid: i32) -> Result<Seized, String> {
        let pid = Pid::from_raw(pid);
        ptrace::seize(pid, ptrace::Options::empty()).map_err(|e| format!("PTRACE_SEIZE: {e}"))?;
        Ok(Seized {
            pid,
            attached: true,
            watching: false,
        })
    }

    /// Waits (bounded) for the tracee's next stop.
    fn wait_stop(&self, bound: Duration) -> Result<WaitStatus, String> {
        let end = Instant::now() + bound;
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < end => std::hint::spin_loop(),
                Ok(WaitStatus::StillAlive) => return Err("the tracee did not stop".into()),
                Ok(s) => return Ok(s),
                Err(e) => return Err(format!("waitpid: {e}")),
            }
        }
    }

    /// Stops the tracee; `Ok(None)` when it stopped for us, `Ok(Some(reason))` when the attempt
    /// must be given up (a signal arrived and was handed back, or the process is gone).
    fn stop(&mut self) -> Result<Option<String>, String> {
        ptrace::interrupt(self.pid).map_err(|e| format!("PTRACE_INTERRUPT: {e}"))?;
        for _ in 0..64 {
            match self.wait_stop(Duration::from_millis(50))? {
                WaitStatus::PtraceEvent(_, _, ev) if ev == libc::PTRACE_EVENT_STOP => {
                    return Ok(None);
                }
                WaitStatus::Stopped(_, Signal::SIGSTOP) => {
                    // The server stopping itself after a crash report, or the watchdog's stop:
                    // hand it back untouched (the kernel waits to see the process stopped) and
                    // leave.
                    self.attached = false;
                    ptrace::detach(self.pid, Signal::SIGSTOP)
                        .map_err(|e| format!("PTRACE_DETACH: {e}"))?;
                    return Ok(Some("the server stopped itself first (a crash)".into()));
                }
                WaitStatus::Stopped(_, sig) => {
                    // Any other signal (a page-tracking write fault is a SIGSEGV the server
                    // handles itself): deliver it as if we were not there, and wait for our
                    // interrupt, which is still pending.
                    ptrace::cont(self.pid, sig).map_err(|e| format!("PTRACE_CONT: {e}"))?;
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.attached = false;
                    return Ok(Some("the server exited first".into()));
                }
                other => return Ok(Some(format!("unexpected stop {other:?}"))),
            }
        }
        Ok(Some("signals kept arriving".into()))
    }

    /// Sets (or clears) a hardware write watchpoint on the 8 bytes at `addr` (DR0, DR7).
    fn watch(&mut self, addr: Option<u64>) -> Result<(), String> {
        const DR: usize = std::mem::offset_of!(libc::user, u_debugreg);
        let dr7: u64 = match addr {
            // L0 enable, RW0 = 01 (data writes), LEN0 = 10 (8 bytes).
            Some(_) => 1 | 0b01 << 16 | 0b10 << 18,
            None => 0,
        };
        if let Some(a) = addr {
            ptrace::write_user(self.pid, DR as ptrace::AddressType, a as libc::c_long)
                .map_err(|e| format!("setting DR0: {e}"))?;
        }
        ptrace::write_user(
            self.pid,
            (DR + 7 * 8) as ptrace::AddressType,
            dr7 as libc::c_long,
        )
        .map_err(|e| format!("setting DR7: {e}"))?;
        self.watching = addr.is_some();
        Ok(())
    }

    /// Lets the stopped tracee run until the watchpoint traps (bounded by `end`); other
    /// signals are delivered as if we were not there, as in [`Seized::stop`].
    fn run_to_trap(&mut self, end: Instant) -> Result<Option<String>, String> {
        let mut sig = None;
        loop {
            ptrace::cont(self.pid, sig).map_err(|e| format!("PTRACE_CONT: {e}"))?;
            let left = end.saturating_duration_since(Instant::now());
            let st = match self.wait_stop(left) {
                Ok(st) => st,
                Err(_) => {
                    // No call came in time: stop it again, so that it can be released.
                    self.stop()?;
                    return Ok(Some("no call started within the time budget".into()));
                }
            };
            match st {
                WaitStatus::Stopped(_, Signal::SIGTRAP) => return Ok(None),
                WaitStatus::Stopped(_, Signal::SIGSTOP) => {
                    let _ = self.watch(None);
                    self.attached = false;
                    ptrace::detach(self.pid, Signal::SIGSTOP)
                        .map_err(|e| format!("PTRACE_DETACH: {e}"))?;
                    return Ok(Some("the server stopped itself first (a crash)".into()));
                }
                WaitStatus::Stopped(_, other) => sig = Some(other),
                WaitStatus::PtraceEvent(..) => sig = None,
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.attached = false;
                    return Ok(Some("the server exited first".into()));
                }
                other => return Ok(Some(format!("unexpected stop {other:?}"))),
            }
        }
    }

    /// Lets the tracee go: detached if possible, killed if it cannot be brought to a stop to be
    /// detached. Returns whether it had to be killed.
    fn release(&mut self) -> bool {
        if !self.attached {
            return false;
        }
        // A watchpoint left set would trap the server once we are gone (SIGTRAP is fatal to
        // it): clear it first (possible only while it is stopped).
        let clean = !self.watching || self.watch(None).is_ok();
        self.attached = false;
        // Detach needs a ptrace-stop: try as is (stopped), then after an interrupt.
        if clean && ptrace::detach(self.pid, None::<Signal>).is_ok() {
            return false;
        }
        if ptrace::interrupt(self.pid).is_ok()
            && matches!(
                self.wait_stop(Duration::from_millis(200)),
                Ok(WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..))
            )
            && (!self.watching || self.watch(None).is_ok())
            && ptrace::detach(self.pid, None::<Signal>).is_ok()
        {
            return false;
        }
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        let _ = self.wait_stop(Duration::from_millis(500));
        true
    }

    /// Executes one instruction of the stopped tracee; as [`Seized::stop`] for signals.
    fn step(&mut self) -> Result<Option<String>, String> {
        let mut sig = None;
        for _ in 0..64 {
            ptrace::step(self.pid, sig).map_err(|e| format!("PTRACE_SINGLESTEP: {e}"))?;
            match self.wait_stop(Duration::from_millis(500))? {
                WaitStatus::Stopped(_, Signal::SIGTRAP) => return Ok(None),
                WaitStatus::Stopped(_, Signal::SIGSTOP) => {
                    self.attached = false;
                    ptrace::detach(self.pid, Signal::SIGSTOP)
                        .map_err(|e| format!("PTRACE_DETACH: {e}"))?;
                    return Ok(Some("the server stopped itself first (a crash)".into()));
                }
                // Deliver it (a page-tracking fault, a crash signal) and step on.
                WaitStatus::Stopped(_, other) => sig = Some(other),
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.attached = false;
                    return Ok(Some("the server exited first".into()));
                }
                other => return Ok(Some(format!("unexpected stop {other:?}"))),
            }
        }
        Ok(Some("signals kept arriving".into()))
    }

    fn read(&self, addr: u64) -> Result<u64, String> {
        ptrace::read(self.pid, addr as ptrace::AddressType)
            .map(|v| v as u64)
            .map_err(|e| format!("reading {addr:#x}: {e}"))
    }

    fn write(&self, addr: u64, v: u64) -> Result<(), String> {
        ptrace::write(self.pid, addr as ptrace::AddressType, v as libc::c_long)
            .map_err(|e| format!("writing {addr:#x}: {e}"))
    }

    fn detach(&mut self) -> Result<(), String> {
        if self.watching {
            self.watch(None)?;
        }
        self.attached = false;
        ptrace::detach(self.pid, None::<Signal>).map_err(|e| format!("PTRACE_DETACH: {e}"))
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        self.release();
    }
}

fn flip_reg(regs: &mut libc::user_regs_struct, reg: &str, bit: u32) -> Result<(), String> {
    let r = match reg {
        "rax" => &mut regs.rax,
        "rbx" => &mut regs.rbx,
        "rcx" => &mut regs.rcx,
        "rdx" => &mut regs.rdx,
        "rsi" => &mut regs.rsi,
        "rdi" => &mut regs.rdi,
        "rbp" => &mut regs.rbp,
        "rsp" => &mut regs.rsp,
        "r8" => &mut regs.r8,
        "r9" => &mut regs.r9,
        "r10" => &mut regs.r10,
        "r11" => &mut regs.r11,
        "r12" => &mut regs.r12,
        "r13" => &mut regs.r13,
        "r14" => &mut regs.r14,
        "r15" => &mut regs.r15,
        "rip" => &mut regs.rip,
        "eflags" => &mut regs.eflags,
        other => return Err(format!("no register {other}")),
    };
    *r ^= 1 << (bit % 64);
    Ok(())
}

/// The end of the mapping that contains `addr`, from `/proc/PID/maps`.
fn mapping_end(pid: i32, addr: u64) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|l| {
        let (a, b) = l.split_once(' ')?.0.split_once('-')?;
        let (a, b) = (
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        );
        (a <= addr && addr < b).then_some(b)
    })
}

/// Decodes the length of the instruction at `rip` from its first 16 bytes.
pub fn insn_len(bytes: &[u8; 16], rip: u64) -> Option<usize> {
    use iced_x86::{Decoder, DecoderOptions};
    let mut d = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = d.decode();
    (!insn.is_invalid()).then(|| insn.len())
}

/// Applies `action` to the stopped tracee.
fn apply(s: &Seized, t: &Target, action: &Action, heap_used: u64) -> Result<String, String> {
    let mut regs = ptrace::getregs(s.pid).map_err(|e| format!("PTRACE_GETREGS: {e}"))?;
    match *action {
        Action::Register { reg, bit } => {
            flip_reg(&mut regs, reg, bit)?;
            ptrace::setregs(s.pid, regs).map_err(|e| format!("PTRACE_SETREGS: {e}"))?;
            Ok(format!("flipped bit {bit} of {reg}"))
        }
        Action::Stack { word, bit } => {
            let end = mapping_end(t.pid, regs.rsp).ok_or("rsp is not in a mapping")?;
            let addr = regs.rsp + 8 * u64::from(word);
            let addr = if addr + 8 > end {
                regs.rsp + (addr - regs.rsp) % (end - regs.rsp).max(8) / 8 * 8
            } else {
                addr
            };
            let v = s.read(addr)?;
            s.write(addr, v ^ 1 << (bit % 64))?;
            Ok(format!(
                "flipped bit {bit} of the stack word at rsp+{}",
                addr - regs.rsp
            ))
        }
        Action::Heap { ppm, bit } => {
            let span = heap_used.clamp(8, t.heap_len);
            let off = (span as u128 * u128::from(ppm) / 1_000_000) as u64 / 8 * 8;
            // Through the memfd itself, not the process's mapping: a bit flip in memory does
            // not care for page protections (page tracking write-protects the heap, and
            // ptrace may not write a protected shared page).
            use std::os::unix::fs::FileExt;
            let off = off.min(t.heap_len - 8);
            let Some(path) = &t.heap_file else {
                let addr = t.heap_start + off;
                let v = s.read(addr)?;
                s.write(addr, v ^ 1 << (bit % 64))?;
                return Ok(format!(
                    "flipped bit {bit} of the private heap word at offset {off:#x}"
                ));
            };
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| format!("opening the heap memfd: {e}"))?;
            let mut w = [0u8; 8];
            f.read_exact_at(&mut w, off)
                .map_err(|e| format!("reading the heap: {e}"))?;
            let v = u64::from_le_bytes(w) ^ 1 << (bit % 64);
            f.write_all_at(&v.to_le_bytes(), off)
                .map_err(|e| format!("writing the heap: {e}"))?;
            Ok(format!(
                "flipped bit {bit} of the heap word at offset {off:#x}"
            ))
        }
        Action::SkipInsn => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&s.read(regs.rip)?.to_le_bytes());
            bytes[8..].copy_from_slice(&s.read(regs.rip + 8)?.to_le_bytes());
            let len = insn_len(&bytes, regs.rip).ok_or("undecodable instruction at rip")?;
            regs.rip += len as u64;
            ptrace::setregs(s.pid, regs).map_err(|e| format!("PTRACE_SETREGS: {e}"))?;
            Ok(format!("skipped a {len}-byte instruction"))
        }
        Action::Kill { .. } | Action::FailPoint { .. } => Err("not a ptrace fault".into()),
    }
}

/// Most single steps from the start of a call's handling to the injection point.
pub const MAX_STEPS: u64 = 1500;

/// Catches the server inside a call and applies `action` (bounded by `budget`). `heap_used` is
/// the used part of the heap (from the server's stats) for heap flips.
///
/// Placement, deterministic for a seed: a hardware write watchpoint (debug register DR0) is
/// set on the status page's `busy` word, and the server runs at full speed until it writes
/// it. A non-zero value is the start of a call's handling (`set_busy`, before the
/// transaction begins); then the watchpoint is cleared and the server is single-stepped
/// `steps` instructions (drawn from `0..MAX_STEPS`) into the call, still stopped for everyone
/// else, and the fault goes at that instruction. A call that ends first (`busy` back to 0) is
/// given up and the next one tried. Handling a given request on a given state takes the same
/// path, so a replayed run hits the same instruction of the same call.
pub fn inject(
    t: &Target,
    action: &Action,
    heap_used: u64,
    rng: &mut Rng,
    budget: Duration,
) -> Injection {
    let mut s = match Seized::seize(t.pid) {
        Ok(s) => s,
        Err(e) => return Injection::not(e, 0),
    };
    let end = Instant::now() + budget;
    let steps = rng.range_inclusive(0, MAX_STEPS - 1);
    let mut attempts = 0;
    match s.stop() {
        Ok(None) => {}
        Ok(Some(why)) => return give_up(&mut s, why, 0),
        Err(e) => return give_up(&mut s, e, 0),
    }
    let busy_addr = t.status_addr + 8;
    while Instant::now() < end {
        attempts += 1;
        // Run to the start of the next call.
        if let Err(e) = s.watch(Some(busy_addr)) {
            return give_up(&mut s, e, attempts);
        }
        let mut in_call = false;
        while Instant::now() < end {
            match s.run_to_trap(end) {
                Ok(None) => {}
                Ok(Some(why)) => return give_up(&mut s, why, attempts),
                Err(e) => return give_up(&mut s, e, attempts),
            }
            match s.read(busy_addr) {
                Ok(0) => {} // the end of a call (set_idle): on to the next
                Ok(_) => {
                    in_call = true;
                    break;
                }
                Err(e) => return give_up(&mut s, e, attempts),
            }
        }
        if let Err(e) = s.watch(None) {
            return give_up(&mut s, e, attempts);
        }
        if !in_call {
            break;
        }
        // `steps` instructions into it.
        let mut left = steps;
        let mut still = true;
        while left > 0 && Instant::now() < end {
            match s.step() {
                Ok(None) => {}
                Ok(Some(why)) => return give_up(&mut s, why, attempts),
                Err(e) => return give_up(&mut s, e, attempts),
            }
            left -= 1;
            if left % 8 == 0 {
                match s.read(busy_addr) {
                    Ok(0) => {
                        still = false;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => return give_up(&mut s, e, attempts),
                }
            }
        }
        if !still || left > 0 {
            continue; // the call ended first (or time ran out): the next one
        }
        let r = apply(&s, t, action, heap_used);
        let det = s.detach();
        return match (r, det) {
            (Ok(what), Ok(())) => Injection {
                injected: true,
                detail: format!("{what}, {steps} instructions into a call"),
                attempts,
                killed: false,
                changed: true,
            },
            (Err(e), _) | (_, Err(e)) => give_up(&mut s, e, attempts),
        };
    }
    give_up(
        &mut s,
        format!("no call reached {steps} instructions within the time budget ({attempts} calls)"),
        attempts,
    )
}

fn give_up(s: &mut Seized, why: String, attempts: u32) -> Injection {
    let killed = s.release();
    Injection {
        killed,
        ..Injection::not(
            if killed {
                format!("{why}; the server could not be detached and was killed")
            } else {
                why
            },
            attempts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_lengths() {
        let mut b = [0x90u8; 16]; // nop
        assert_eq!(insn_len(&b, 0x1000), Some(1));
        b[..3].copy_from_slice(&[0x48, 0x89, 0xe5]); // mov rbp, rsp
        assert_eq!(insn_len(&b, 0x1000), Some(3));
        b[..5].copy_from_slice(&[0xe8, 0, 0, 0, 0]); // call rel32
        assert_eq!(insn_len(&b, 0x1000), Some(5));
        assert_eq!(insn_len(&[0x0f; 16], 0x1000), None, "invalid");
    }

    #[test]
    fn register_names() {
        let mut r = zero_regs();
        for name in super::super::fault::REGISTERS {
            flip_reg(&mut r, name, 3).unwrap();
        }
        assert_eq!(r.rip, 8);
        assert!(flip_reg(&mut r, "cr3", 0).is_err());
    }

    fn zero_regs() -> libc::user_regs_struct {
        libc::user_regs_struct {
            r15: 0,
            r14: 0,
            r13: 0,
            r12: 0,
            rbp: 0,
            rbx: 0,
            r11: 0,
            r10: 0,
            r9: 0,
            r8: 0,
            rax: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            orig_rax: 0,
            rip: 0,
            cs: 0,
            eflags: 0,
            rsp: 0,
            ss: 0,
            fs_base: 0,
            gs_base: 0,
            ds: 0,
            es: 0,
            fs: 0,
            gs: 0,
        }
    }
}
