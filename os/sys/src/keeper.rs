//! The address-space keeper: takes the teardown of a killed server's memory off the recovery
//! path.
//!
//! Linux tears down a dying process's address space *before* its pidfd becomes readable; for a
//! server with a large heap mapped that teardown is the whole cost of noticing a SIGKILL
//! (measured on the project machine: ~18 ms for 820 MiB of 4 KiB pages). If a second process
//! shares the address space, the dying one only drops a reference and its pidfd fires at once
//! (60 µs at 16 MiB, ~190 µs at 1 GiB); the teardown happens when the last sharer exits.
//!
//! [`spawn`] creates that sharer: a process made with `clone(CLONE_VM)` and *without*
//! `CLONE_THREAD` (its own thread group, pid and exit), which closes its copy of the
//! descriptor table, blocks every signal, lowers itself to nice 19 and sleeps. It dies with its
//! parent (`PR_SET_PDEATHSIG = SIGKILL`): when the server is killed, the keeper is killed right
//! after, and the address space is freed by the keeper's exit at nice 19, where it competes for
//! CPU with nobody on the recovery path (the kernel, the standby and the client run at nice 0
//! and preempt it). As the keeper's parent is gone by then, the subreaper (the txipc kernel)
//! reaps it.
//!
//! The keeper runs no code of the server: it cannot write the server's memory, so a server
//! confirmed dead or stopped stays confirmed.

use std::ffi::{c_int, c_void};
use std::io;

/// Stack of the keeper: enough for its few system calls (no Rust runtime runs there).
const STACK_BYTES: usize = 64 * 1024;

/// Starts a keeper for this process's address space; returns its pid.
///
/// Call it from the thread whose death should end the keeper (the parent-death signal follows
/// the creating thread): the server's main thread.
pub fn spawn() -> io::Result<i32> {
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    // The keeper's stack, leaked: it lives in the shared address space for as long as the
    // keeper does, and the keeper may outlive every value of this process's Rust code. 16-byte
    // aligned (u128), as the x86-64 ABI wants the stack.
    let stack: &'static mut [u128] = Box::leak(vec![0u128; STACK_BYTES / 16].into_boxed_slice());
    let top = stack.as_mut_ptr_range().end.cast::<c_void>();
    // SAFETY: `clone(CLONE_VM | SIGCHLD)` starts a process that shares this address space and
    // runs `keeper_main` on `stack`, which is valid, writable, large enough for it (a handful
    // of system calls, no recursion) and never freed (leaked above). The keeper touches only its
    // own stack and its argument (an integer passed by value): it reads and writes no memory of
    // this process, so no data race is possible, whatever threads this process has. It calls
    // only `libc::syscall`, which writes `errno` (thread-local storage of the *creating*
    // thread, whose TLS pointer the keeper inherits) only when a call fails; every call it makes
    // is valid and cannot fail (see `keeper_main`), and `exit` does not return. glibc's `clone`
    // wrapper calls `keeper_main` and then exits the keeper with its return value; it never
    // returns into this process's code in the child.
    let pid = unsafe {
        libc::clone(
            keeper_main,
            top,
            libc::CLONE_VM | libc::SIGCHLD,
            parent as usize as *mut c_void,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// The keeper's whole life. Runs in the shared address space on its own stack: raw system
/// calls only, nothing that allocates, locks, panics or uses thread-local storage.
extern "C" fn keeper_main(arg: *mut c_void) -> c_int {
    let parent = arg as usize as libc::pid_t;
    // Close the copy of the descriptor table (`close_range(0, ~0, 0)`, Linux ≥ 5.9): the
    // keeper must not keep the server's sockets, memfds or a FUSE connection alive.
    // SAFETY: a plain system call with valid arguments that dereferences no memory.
    unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    // Block every signal (SIGKILL and SIGSTOP cannot be): the signal handlers copied from the
    // server must never run here.
    let all: u64 = !0;
    // SAFETY: `all` is a valid 8-byte signal set on this stack; no old set is asked for.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    // SAFETY: valid prctl option and signal.
    unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // The parent may have died before the request took effect.
    // SAFETY: getppid cannot fail.
    if unsafe { libc::syscall(libc::SYS_getppid) } as libc::pid_t != parent {
        return 0;
    }
    // Nice 19: lowering one's own priority is always allowed.
    // SAFETY: valid `which`, `who` (0: this process) and priority.
    unsafe { libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, 0, 19) };
    loop {
        // With every signal blocked, only SIGKILL ends this.
        // SAFETY: pause takes no arguments.
        unsafe { libc::syscall(libc::SYS_pause) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn stat_field(pid: i32, n: usize) -> Option<i64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name; `n` counts from field 3 (state) as 0.
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(n)?
            .parse()
            .ok()
    }

    /// A keeper shares the address space, runs at nice 19, keeps no descriptor, and dies with
    /// the thread that made it.
    #[test]
    fn a_keeper_shares_the_mm_and_dies_with_its_creator() {
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let creator = std::thread::spawn(move || {
            pid_tx.send(spawn().expect("spawn a keeper")).unwrap();
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
        });
        let keeper = pid_rx.recv().unwrap();
        let me = crate::process::getpid();
        let t = Instant::now();
        loop {
            // ppid is field 4 (index 1 here), nice field 19 (index 16).
            let nice = stat_field(keeper, 16);
            let fds = std::fs::read_dir(format!("/proc/{keeper}/fd")).map(|d| d.count());
            if nice == Some(19) && matches!(fds, Ok(0)) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "keeper: nice {nice:?}, fds {fds:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(stat_field(keeper, 1), Some(i64::from(me)));
        // Same address space: the same mappings, to the line.
        let ours = std::fs::read_to_string(format!("/proc/{me}/maps")).unwrap();
        let theirs = std::fs::read_to_string(format!("/proc/{keeper}/maps")).unwrap();
        assert_eq!(ours.lines().next(), theirs.lines().next());
        // The creating thread ends: the parent-death signal kills the keeper.
        done_tx.send(()).unwrap();
        creator.join().unwrap();
        let t = Instant::now();
        loop {
            match nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(keeper),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                    assert_eq!(sig, nix::sys::signal::Signal::SIGKILL);
                    break;
                }
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
                other => panic!("keeper: {other:?}"),
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the keeper outlived its creator"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
