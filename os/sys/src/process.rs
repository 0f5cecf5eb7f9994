//! Processes: pidfds, the child subreaper, states from `/proc`, signals, fork.

use std::io;

use rustix::fd::{AsFd, OwnedFd};
use rustix::process::{Pid, PidfdFlags, Signal};

/// Opens a pidfd for `pid`. The pidfd becomes readable when the process exits, and stays valid
/// (and unambiguous) even after the pid is reused.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends a signal through a pidfd (no pid-reuse race).
pub fn pidfd_signal(pidfd: impl AsFd, sig: Signal) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends a signal by pid (for processes we hold no pidfd of). A missing process is not an error.
pub fn kill(pid: i32, sig: Signal) -> io::Result<()> {
    let Some(pid) = Pid::from_raw(pid) else {
        return Ok(());
    };
    match rustix::process::kill_process(pid, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes this process the reaper of every orphaned descendant, so that no server process can
/// escape supervision by having its parent (a zygote) die.
pub fn become_subreaper() -> io::Result<()> {
    Ok(rustix::process::set_child_subreaper(Some(
        rustix::process::getpid(),
    ))?)
}

/// Asks for `SIGKILL` when the parent dies, then checks the parent did not die before the
/// request took effect (in which case this process is an orphan and exits).
pub fn die_with_parent(expected_parent: i32) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if ppid != expected_parent {
        std::process::exit(70);
    }
    Ok(())
}

/// This process's pid.
pub fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// The parent's pid (0 if none).
pub fn getppid() -> i32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

/// The one-letter state of a process from `/proc/PID/stat` (`R`, `S`, `T` stopped, `t` traced,
/// `Z` zombie, `X` dead), or `None` if the process is gone.
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// How a process that has exited but not yet been reaped (a zombie) ended, from the
/// `exit_code` field of `/proc/PID/stat`: `Some(Ok(status))` for an exit, `Some(Err(signal))`
/// for a death by signal; `None` if `pid` is not a zombie (gone, reaped, or still running), so a
/// reused pid is never mistaken for it.
pub fn zombie_exit(pid: i32) -> Option<Result<i32, i32>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); exit_code is field 52.
    if fields.first() != Some(&"Z") {
        return None;
    }
    let code: i32 = fields.get(52 - 3)?.parse().ok()?;
    Some(if code & 0x7f != 0 {
        Err(code & 0x7f)
    } else {
        Ok((code >> 8) & 0xff)
    })
}

/// Waits until `pid` can no longer run user code: stopped (`T`/`t`), zombie or gone. Bounded by
/// `timeout`; returns whether that state was reached. For tests and tools only: the kernel
/// never waits for a peer (it re-checks on its confirm timer instead), and "gone" here
/// includes a `/proc` read that failed, which the kernel does not take as proof.
pub fn wait_not_running(pid: i32, timeout: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        match state(pid) {
            None | Some('T') | Some('t') | Some('Z') | Some('X') => return true,
            _ => {}
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// Whether the process behind `pidfd` has exited as a whole (its pidfd is readable: every
/// thread is gone, so it can write no shared memory any more). Never waits.
pub fn pidfd_exited(pidfd: impl AsFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let now = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

/// Number of threads of this process (from `/proc/self/status`).
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Which side of a fork this is.
#[derive(Debug)]
pub enum Forked {
    /// The parent, with the child's pid.
    Parent {
        /// The child's pid.
        child: i32,
    },
    /// The child.
    Child,
}

/// Forks this process. Refuses (with an error) unless the process is single-threaded, which is
/// what makes the child's use of the allocator and locks sound.
pub fn fork() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "fork refused: the process has {threads} threads (only a single-threaded process may fork)"
        )));
    }
    // SAFETY: the process is single-threaded (checked just above, and a single-threaded process
    // cannot gain threads between the check and the fork), so the child inherits no lock held by
    // another thread and may run arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent {
            child: child.as_raw(),
        }),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Reaps every exited child without blocking; returns how many were reaped.
pub fn reap_children() -> usize {
    reap_children_status().len()
}

/// Reaps every exited child without blocking; returns each one's pid and how it ended:
/// `Ok(status)` for an exit, `Err(signal)` for a death by signal.
pub fn reap_children_status() -> Vec<(i32, Result<i32, i32>)> {
    use nix::sys::wait::WaitStatus;
    let mut out = Vec::new();
    loop {
        match nix::sys::wait::waitpid(
            None::<nix::unistd::Pid>,
            Some(nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid.as_raw(), Ok(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid.as_raw(), Err(sig as i32))),
            Ok(_) => {}
        }
    }
}

/// Takes ownership of a descriptor inherited across exec, whose number was passed by the parent
/// (the kernel hands each zygote one control socket this way). Fails unless `fd` is an open
/// socket. Close-on-exec is set again so that it is not leaked further.
pub fn adopt_inherited_fd(fd: i32) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::other("refusing to adopt a standard stream"));
    }
    let meta = std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .map_err(|_| io::Error::other(format!("descriptor {fd} is not open")))?;
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        return Err(io::Error::other(format!("descriptor {fd} is not a socket")));
    }
    // SAFETY: `fd` is open (checked above) and, by the spawn contract, nothing else in this
    // process owns it: the exec'd program received it for this purpose alone, so taking
    // ownership creates no second owner.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// Clears close-on-exec on `fd` so that a child started with exec inherits it.
pub fn inherit_on_exec(fd: impl AsFd) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(&fd)?;
    rustix::io::fcntl_setfd(&fd, flags - rustix::io::FdFlags::CLOEXEC)?;
    Ok(())
}

/// Pins the calling thread to one CPU (for measurements).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// The CPUs the calling thread may run on.
pub fn affinity() -> io::Result<nix::sched::CpuSet> {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(io::Error::from)
}

/// Sets the CPUs thread `pid` (0: the calling thread) may run on.
pub fn set_affinity(pid: i32, set: &nix::sched::CpuSet) -> io::Result<()> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), set).map_err(io::Error::from)
}

/// `set` without `cpus`, or `None` if that leaves nothing or changes nothing.
pub fn without_cpus(set: &nix::sched::CpuSet, cpus: &[usize]) -> Option<nix::sched::CpuSet> {
    let mut out = *set;
    let mut changed = false;
    for &c in cpus {
        if out.is_set(c).unwrap_or(false) {
            let _ = out.unset(c);
            changed = true;
        }
    }
    let any = (0..nix::sched::CpuSet::count()).any(|c| out.is_set(c).unwrap_or(false));
    (changed && any).then_some(out)
}

/// Lets the calling thread run on every CPU of the machine again.
pub fn pin_to_cpu_set_all() -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    let n = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| {
            s.trim()
                .rsplit(['-', ','])
                .next()
                .and_then(|x| x.parse::<usize>().ok())
        })
        .unwrap_or(0);
    for cpu in 0..=n.min(nix::sched::CpuSet::count() - 1) {
        set.set(cpu).map_err(io::Error::from)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// The calling thread's scheduling policy, as `sched_setscheduler(2)` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedPolicy {
    /// `SCHED_OTHER`: the fair class at the thread's nice value.
    Other,
    /// `SCHED_IDLE`: runs only when nothing else on its CPU wants to, and any other task
    /// woken there preempts it at once.
    Idle,
}

/// Sets the scheduling policy of thread `tid` (0: the calling thread; a process's pid names
/// its main thread), keeping its nice value. Entering `SCHED_IDLE` needs no privilege;
/// leaving it does (CAP_SYS_NICE, or an RLIMIT_NICE that allows the thread's nice value:
/// [`may_leave_sched_idle`]), as does changing another user's thread.
pub fn set_sched_policy(tid: i32, policy: SchedPolicy) -> io::Result<()> {
    let p = match policy {
        SchedPolicy::Other => libc::SCHED_OTHER,
        SchedPolicy::Idle => libc::SCHED_IDLE,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid policy and a valid `sched_param` on this stack; the kernel only reads
    // `param`; a `tid` that names no thread is an error (ESRCH), not undefined behaviour.
    let rc = unsafe { libc::sched_setscheduler(tid, p, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The scheduling policy of process `pid`'s main thread, from `/proc/PID/stat`; `None` if
/// it cannot be read or is neither of [`SchedPolicy`]'s.
pub fn sched_policy(pid: i32) -> Option<SchedPolicy> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 41 (`policy`), counted after the parenthesised command name, which may hold
    // spaces: field 3 is the first after its closing parenthesis.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    match after.split_whitespace().nth(41 - 3)?.parse::<i32>().ok()? {
        libc::SCHED_OTHER => Some(SchedPolicy::Other),
        libc::SCHED_IDLE => Some(SchedPolicy::Idle),
        _ => None,
    }
}

/// Whether the calling thread, put in `SCHED_IDLE`, could go back to `SCHED_OTHER` at its
/// current nice value: it has CAP_SYS_NICE, or its RLIMIT_NICE allows that value (Linux's
/// `can_nice`). A thread that could not would stay in `SCHED_IDLE` for good.
pub fn may_leave_sched_idle() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let cap = std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0);
    if cap {
        return true;
    }
    let nice = rustix::process::getpriority_process(None).unwrap_or(0);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nice)
        .current
        .unwrap_or(u64::MAX);
    // RLIMIT_NICE is 20 - nice: 1 allows nice 19, 40 allows -20.
    u64::try_from(20 - nice).is_ok_and(|need| need <= limit)
}

/// Number of CPUs this process may run on.
pub fn cpus_available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn own_state_is_running() {
        // The main thread may be sleeping while a test thread runs: alive, not stopped.
        assert!(matches!(state(getpid()), Some('R') | Some('S')));
        assert_eq!(state(i32::MAX - 1), None);
    }

    #[test]
    fn fork_refused_when_multithreaded() {
        // The test harness runs tests on threads: the process has more than one.
        if thread_count().unwrap() > 1 {
            assert!(fork().is_err());
        }
    }

    const FIVE_S: rustix::time::Timespec = rustix::time::Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };

    #[test]
    fn a_zombie_tells_how_it_ended() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(zombie_exit(pid), None);
        let pidfd = pidfd_open(pid).unwrap();
        pidfd_signal(&pidfd, Signal::KILL).unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&FIVE_S)).unwrap();
        assert_eq!(zombie_exit(pid), Some(Err(9)));
        child.wait().unwrap();
        assert_eq!(zombie_exit(pid), None);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid).unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&FIVE_S)).unwrap();
        assert_eq!(zombie_exit(pid), Some(Ok(3)));
        child.wait().unwrap();
    }

    #[test]
    fn stopped_child_is_seen_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid).unwrap();
        pidfd_signal(&pidfd, Signal::STOP).unwrap();
        let start = Instant::now();
        while state(pid) != Some('T') {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never seen stopped"
            );
            std::thread::yield_now();
        }
        assert!(!pidfd_exited(&pidfd), "stopped is not dead");
        pidfd_signal(&pidfd, Signal::KILL).unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&FIVE_S)).unwrap();
        assert!(pidfd_exited(&pidfd));
        child.wait().unwrap();
    }
}
