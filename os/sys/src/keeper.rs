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
//! descriptor table, blocks every signal, lowers itself to nice 19 and `SCHED_IDLE`, and
//! sleeps until it is killed or the process it watches ends ([`Until`]). The address space is
//! then freed by the keeper's exit, in the CPU time nobody else wants: `SCHED_IDLE` makes any
//! task woken on its CPU preempt it at the teardown's next rescheduling point (nice 19 alone
//! did not, on a kernel without full preemption: a client woken behind it waited up to a
//! tick). Its parent is gone by then, so the subreaper (the txipc kernel) reaps it.
//!
//! The keeper runs no code of the server: it cannot write the server's memory, so a server
//! confirmed dead or stopped stays confirmed.

use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// Stack of the keeper: enough for its few system calls (no Rust runtime runs there).
const STACK_BYTES: usize = 64 * 1024;

/// When a keeper ends.
#[derive(Debug, Clone, Copy)]
pub enum Until<'a> {
    /// With the thread that created it (`PR_SET_PDEATHSIG = SIGKILL`): the address space is
    /// then freed right after its creator died, while the recovery that follows runs.
    CreatorDies,
    /// When the process of this pidfd (the txipc kernel) ends, or when someone SIGKILLs it
    /// (the kernel does, once the creator's successor serves): the teardown then happens when
    /// the kernel chooses, off the recovery path. The keeper keeps only this descriptor.
    Killed(BorrowedFd<'a>),
}

/// A running keeper.
#[derive(Debug)]
pub struct Keeper {
    /// Its pid.
    pub pid: i32,
    /// A pidfd of it (close-on-exec), for whoever must kill it later.
    pub pidfd: OwnedFd,
}

/// What the keeper is given: plain integers, copied by value into its stack.
#[derive(Clone, Copy)]
#[repr(C)]
struct Arg {
    parent: libc::pid_t,
    /// The pidfd to watch, or -1 for [`Until::CreatorDies`].
    watch: c_int,
}

/// Starts a keeper for this process's address space.
///
/// With [`Until::CreatorDies`], call it from the thread whose death should end the keeper (the
/// parent-death signal follows the creating thread).
pub fn spawn(until: Until<'_>) -> io::Result<Keeper> {
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    let watch = match until {
        Until::CreatorDies => -1,
        Until::Killed(fd) => fd.as_raw_fd(),
    };
    // The keeper's stack and argument, leaked: they live in the shared address space for as
    // long as the keeper does, and the keeper may outlive every value of this process's Rust
    // code. 16-byte aligned (u128), as the x86-64 ABI wants the stack.
    let stack: &'static mut [u128] = Box::leak(vec![0u128; STACK_BYTES / 16].into_boxed_slice());
    let arg: &'static Arg = Box::leak(Box::new(Arg { parent, watch }));
    let top = stack.as_mut_ptr_range().end.cast::<c_void>();
    // SAFETY: `clone(CLONE_VM | SIGCHLD)` starts a process that shares this address space and
    // runs `keeper_main` on `stack`, which is valid, writable, large enough for it (a handful
    // of system calls, no recursion) and never freed (leaked above). The keeper reads only its
    // own stack and `arg` (leaked, never written after this point), and writes no memory of
    // this process, so no data race is possible, whatever threads this process has. It calls
    // only `libc::syscall`, which writes `errno` (thread-local storage of the *creating*
    // thread, whose TLS pointer the keeper inherits) when a call fails: the keeper's calls
    // either cannot fail or fail only when it is about to exit, and a stray `errno` write by
    // it is a plain store to memory nobody reads concurrently with meaning (the creator reads
    // `errno` only right after its own failed calls, and glibc's `clone` has returned by
    // then). `exit` does not return. glibc's `clone` wrapper calls `keeper_main` and then
    // exits the keeper with its return value; it never returns into this process's code in the
    // child.
    let pid = unsafe {
        libc::clone(
            keeper_main,
            top,
            libc::CLONE_VM | libc::SIGCHLD,
            (arg as *const Arg).cast_mut().cast::<c_void>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let pidfd = match crate::process::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = crate::process::kill(pid, rustix::process::Signal::KILL);
            return Err(e);
        }
    };
    Ok(Keeper { pid, pidfd })
}

/// The keeper's whole life. Runs in the shared address space on its own stack: raw system
/// calls only, nothing that allocates, locks, panics or uses thread-local storage.
extern "C" fn keeper_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points to the leaked, never-written `Arg` that `spawn` passed.
    let Arg { parent, watch } = unsafe { *arg.cast::<Arg>() };
    // Close the copy of the descriptor table (`close_range`, Linux ≥ 5.9) but the one it
    // watches: the keeper must not keep the server's sockets, memfds or a FUSE connection
    // alive.
    // SAFETY: plain system calls with valid arguments that dereference no memory.
    unsafe {
        if watch < 0 {
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        } else {
            if watch > 0 {
                libc::syscall(libc::SYS_close_range, 0u32, (watch - 1) as u32, 0u32);
            }
            libc::syscall(libc::SYS_close_range, (watch + 1) as u32, u32::MAX, 0u32);
        }
    }
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
    if watch < 0 {
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
    }
    // Nice 19: lowering one's own priority is always allowed.
    // SAFETY: valid `which`, `who` (0: this process) and priority.
    unsafe { libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, 0, 19) };
    // And SCHED_IDLE (allowed unprivileged since Linux 2.6.39): the teardown of the address
    // space runs in the keeper's exit, in the kernel, where a kernel built without full
    // preemption (`PREEMPT_NONE`, this project's VM) gives the CPU up only at its
    // `cond_resched` points and only if a reschedule was asked for. A woken nice-0 task does
    // not ask it of a nice-19 one that is still within its slice (EEVDF), so a client woken
    // on the keeper's CPU waited up to a tick (4 ms at HZ 250) behind the teardown — seen in
    // a scheduler trace of `bench recovery`: the companion client's reply published 0.15 ms
    // after `Active`, the client on the CPU 1.1 ms later. Any task woken on the CPU of a
    // SCHED_IDLE one asks at once (the fair class's wake-up preemption check), so the teardown yields
    // within one page-table page. A failure (a kernel without it) leaves nice 19.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid policy and a valid `sched_param` on this stack; pid 0 is this process.
    unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_IDLE,
            &param as *const libc::sched_param,
        )
    };
    loop {
        if watch < 0 {
            // With every signal blocked, only SIGKILL ends this.
            // SAFETY: pause takes no arguments.
            unsafe { libc::syscall(libc::SYS_pause) };
            continue;
        }
        let mut pfd = libc::pollfd {
            fd: watch,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on this stack; no timeout.
        let n =
            unsafe { libc::syscall(libc::SYS_poll, &mut pfd as *mut libc::pollfd, 1u64, -1i64) };
        // Readable (the watched process ended), or an error (a bad descriptor: nothing to
        // wait for; EINTR cannot happen with every signal blocked): either way the keeper has
        // no reason to live. Zero (no event) cannot happen without a timeout; poll again.
        if n != 0 {
            return 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// `/proc/PID/stat`'s `policy` (field 41) in [`stat_field`]'s numbering.
    const POLICY: usize = 38;
    const SCHED_IDLE: i64 = libc::SCHED_IDLE as i64;

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

    /// A keeper shares the address space, runs at nice 19 and `SCHED_IDLE` (so that its
    /// teardown yields to any task woken on its CPU), keeps no descriptor, and dies with the
    /// thread that made it.
    #[test]
    fn a_keeper_shares_the_mm_and_dies_with_its_creator() {
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let creator = std::thread::spawn(move || {
            pid_tx
                .send(spawn(Until::CreatorDies).expect("spawn a keeper").pid)
                .unwrap();
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
        });
        let keeper = pid_rx.recv().unwrap();
        let me = crate::process::getpid();
        let t = Instant::now();
        loop {
            // ppid is field 4 (index 1 here), nice field 19 (index 16).
            let nice = stat_field(keeper, 16);
            let policy = stat_field(keeper, POLICY);
            let fds = std::fs::read_dir(format!("/proc/{keeper}/fd")).map(|d| d.count());
            if nice == Some(19) && policy == Some(SCHED_IDLE) && matches!(fds, Ok(0)) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "keeper: nice {nice:?}, policy {policy:?}, fds {fds:?}"
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

    /// A keeper told to end with another process outlives the thread that made it, and ends
    /// (by itself, not killed) when that process ends. Before, every keeper died with its
    /// creator: at 1 GiB its teardown then ran while recovery waited for the pidfd.
    #[test]
    fn a_keeper_until_killed_outlives_its_creator_and_ends_with_the_watched_process() {
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut watched = Reap(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("sleep"),
        );
        let watched_fd = crate::process::pidfd_open(watched.0.id() as i32).expect("pidfd");
        let (tx, rx) = std::sync::mpsc::channel();
        let creator = std::thread::spawn(move || {
            let k = spawn(Until::Killed(std::os::fd::AsFd::as_fd(&watched_fd))).expect("spawn");
            tx.send(k).unwrap();
        });
        let keeper = rx.recv().unwrap();
        creator.join().unwrap();
        let pid = nix::unistd::Pid::from_raw(keeper.pid);
        // Its creator is gone; a keeper with a parent-death signal would be dying now.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Ok(nix::sys::wait::WaitStatus::StillAlive),
            "the keeper died with its creator"
        );
        let t = Instant::now();
        while stat_field(keeper.pid, 16) != Some(19)
            || stat_field(keeper.pid, POLICY) != Some(SCHED_IDLE)
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "keeper not at nice 19 and SCHED_IDLE"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // It keeps exactly one descriptor: the pidfd it watches.
        let fds = std::fs::read_dir(format!("/proc/{}/fd", keeper.pid)).map(|d| d.count());
        assert!(matches!(fds, Ok(1)), "keeper descriptors: {fds:?}");
        // The watched process ends: so does the keeper, by returning.
        let _ = watched.0.kill();
        let _ = watched.0.wait();
        let t = Instant::now();
        loop {
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => break,
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
                other => panic!("keeper: {other:?}"),
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the keeper outlived the process it watches"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
