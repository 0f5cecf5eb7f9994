//! Raw IPC baselines and the channel's own round trip, measured between two processes.
//!
//! Each function forks a child (reaped on return, SIGKILLed and reaped if the parent panics),
//! pins the calling thread and the child according to a [`Placement`], warms up, then times
//! `batches` batches of `iterations` round trips and reports the median batch mean. These are
//! the numbers `txipc bench ipc` puts beside its own (ARCHITECTURE.md §14–§15).
//!
//! | function | mechanism |
//! | --- | --- |
//! | [`raw_spin_rtt_ns`] | one shared word, both sides busy-wait (same core: `sched_yield` in the loop, since pure spinning there measures the scheduler tick) |
//! | [`raw_futex_rtt_ns`] | one shared word, both sides `futex_wait`/`futex_wake` every time, no spinning |
//! | [`unix_socket_rtt_ns`] | 8-byte messages over a `socketpair(AF_UNIX, SOCK_STREAM)` |
//! | [`chan_rtt_ns`] | a null call through a [`ClientChannel`] to a minimal echo server loop ([`run_echo_server`]) |

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use serde::{Deserialize, Serialize};

use crate::mem::Mapping;
use crate::{
    ChanError, ChannelLayout, ClientChannel, Doorbell, ServerChannel, SpinConfig, Status, Wake,
    create_channel, create_doorbell, futex,
};

/// Where client and server run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Placement {
    /// Client pinned to CPU 0, server to CPU 1.
    CrossCore,
    /// Both pinned to CPU 0.
    SameCore,
}

impl Placement {
    /// Both placements, in report order.
    pub const ALL: [Placement; 2] = [Placement::CrossCore, Placement::SameCore];

    fn cpus(self) -> (usize, usize) {
        match self {
            Placement::CrossCore => (0, 1),
            Placement::SameCore => (0, 0),
        }
    }
}

/// How much to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Round trips before timing starts.
    pub warmup: u32,
    /// Round trips per batch.
    pub iterations: u32,
    /// Batches; the median batch is reported.
    pub batches: u32,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            warmup: 5_000,
            iterations: 20_000,
            batches: 7,
        }
    }
}

impl BenchConfig {
    /// A configuration small enough for tests.
    pub fn quick() -> Self {
        Self {
            warmup: 100,
            iterations: 500,
            batches: 3,
        }
    }
}

/// One measured round-trip time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    /// Median over batches of the mean round trip, in nanoseconds.
    pub median_ns: f64,
    /// Fastest batch mean.
    pub min_ns: f64,
    /// Slowest batch mean.
    pub max_ns: f64,
    /// Round trips per batch.
    pub iterations: u32,
    /// Number of batches.
    pub batches: u32,
}

/// Every baseline for one placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpcBaselines {
    /// Where client and server ran.
    pub placement: Placement,
    /// Busy-wait ping-pong on one shared word.
    pub raw_spin_rtt_ns: Rtt,
    /// futex wait/wake ping-pong.
    pub raw_futex_rtt_ns: Rtt,
    /// Unix stream socket ping-pong.
    pub unix_socket_rtt_ns: Rtt,
    /// Null call through a channel.
    pub chan_rtt_ns: Rtt,
}

/// Why a measurement could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaselineError {
    /// A system call failed.
    #[error("system call failed: {0}")]
    Sys(#[from] nix::Error),
    /// Channel setup or a call failed.
    #[error("channel error: {0}")]
    Chan(#[from] ChanError),
    /// Socket I/O failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The placement needs a CPU this process may not use.
    #[error("CPU {0} is not in this process's affinity mask")]
    NoSuchCpu(usize),
    /// The child exited early or with an error.
    #[error("benchmark child failed: {0}")]
    Child(String),
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A forked child process: SIGKILLed and reaped on drop unless [`Child::wait`]ed.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    reaped: bool,
}

/// Forks a child that runs `f` and `_exit`s with its return value (101 if it panics).
///
/// The child never returns into the caller's code and never runs atexit handlers; of the
/// parent's values it drops only what `f` owns, when `f` returns.
///
/// # Safety
///
/// The caller promises, for everything `f` does in the child:
/// 1. It waits for no lock or resource another thread of the parent may hold at the instant
///    of the fork: only the forking thread exists in the child. No `Mutex` shared with other
///    threads, no `println!`/`eprintln!` (the stdout/stderr locks; a panic message takes the
///    stderr lock too, so `f` should not panic while other threads may print), no allocator
///    other than glibc's `malloc` (which resets its locks at fork).
/// 2. It reads no memory another thread of the parent may have been writing at the fork (it
///    may be half-written in the child) and does not wait for another thread's progress.
/// 3. Nothing `f` owns has a destructor whose effect reaches outside the child (killing a
///    process, removing a file, sending on a socket the parent relies on): the child drops
///    `f`'s captures when `f` returns.
pub unsafe fn fork_child(f: impl FnOnce() -> i32) -> Result<Child, BaselineError> {
    // SAFETY: `fork` is sound when the child runs only async-signal-safe or fork-safe code
    // until it exits: it runs `f` (fork-safe by the caller's promise, items 1–3) and `_exit`s
    // without returning into the caller, so no state duplicated from other threads is
    // unwound or dropped.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(Child {
            pid: child,
            reaped: false,
        }),
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: `_exit` is async-signal-safe and does not return.
            unsafe { nix::libc::_exit(code) }
        }
    }
}

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits for the child to exit; its exit code (128 + signal number if killed).
    pub fn wait(mut self) -> Result<i32, BaselineError> {
        let code = self.reap()?;
        Ok(code)
    }

    /// SIGKILLs and reaps the child; its exit code as in [`Self::wait`].
    pub fn kill(mut self) -> Result<i32, BaselineError> {
        let _ = kill(self.pid, Signal::SIGKILL);
        self.reap()
    }

    fn reap(&mut self) -> Result<i32, BaselineError> {
        loop {
            match waitpid(self.pid, None) {
                Ok(WaitStatus::Exited(_, code)) => {
                    self.reaped = true;
                    return Ok(code);
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    self.reaped = true;
                    return Ok(128 + sig as i32);
                }
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    self.reaped = true;
                    return Err(e.into());
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = self.reap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pinning
// ---------------------------------------------------------------------------------------------

/// Pins the calling thread to `cpu`; restores the previous mask on drop.
#[derive(Debug)]
pub struct Pinned {
    old: CpuSet,
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> Result<Pinned, BaselineError> {
    let me = Pid::from_raw(0);
    let old = sched_getaffinity(me)?;
    if !old.is_set(cpu).unwrap_or(false) {
        return Err(BaselineError::NoSuchCpu(cpu));
    }
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(me, &set)?;
    // Make sure we run there before timing anything.
    rustix::thread::sched_yield();
    Ok(Pinned { old })
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.old);
    }
}

fn pin_child(cpu: usize) {
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = sched_setaffinity(Pid::from_raw(0), &set);
    }
    rustix::thread::sched_yield();
}

// ---------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------

fn measure(
    cfg: &BenchConfig,
    mut round_trip: impl FnMut() -> Result<(), BaselineError>,
) -> Result<Rtt, BaselineError> {
    for _ in 0..cfg.warmup {
        round_trip()?;
    }
    let iterations = cfg.iterations.max(1);
    let mut means = Vec::with_capacity(cfg.batches.max(1) as usize);
    for _ in 0..cfg.batches.max(1) {
        let t0 = Instant::now();
        for _ in 0..iterations {
            round_trip()?;
        }
        means.push(t0.elapsed().as_nanos() as f64 / iterations as f64);
    }
    means.sort_by(f64::total_cmp);
    Ok(Rtt {
        median_ns: means[means.len() / 2],
        min_ns: means[0],
        max_ns: means[means.len() - 1],
        iterations,
        batches: means.len() as u32,
    })
}

/// Sentinel the parent writes to stop a raw ping-pong child.
const STOP: u32 = u32::MAX;

fn ping_pong_child(word: &AtomicU32, same_core: bool, use_futex: bool) -> i32 {
    let mut expect = 1u32;
    loop {
        let mut v = word.load(Ordering::Acquire);
        while v != expect {
            if v == STOP {
                return 0;
            }
            if use_futex {
                futex::wait(word, v, None);
            } else if same_core {
                rustix::thread::sched_yield();
            } else {
                std::hint::spin_loop();
            }
            v = word.load(Ordering::Acquire);
        }
        word.store(expect + 1, Ordering::Release);
        if use_futex {
            futex::wake(word, 1);
        }
        expect = expect.wrapping_add(2);
        if expect == STOP {
            expect = 1;
        }
    }
}

fn raw_ping_pong(
    placement: Placement,
    cfg: &BenchConfig,
    use_futex: bool,
) -> Result<Rtt, BaselineError> {
    let (ccpu, scpu) = placement.cpus();
    let same = placement == Placement::SameCore;
    let shm = Mapping::anonymous_shared(4096)?;
    // SAFETY: fork_child items 1-3: the child pins itself and ping-pongs on one word of a mapping made
    // before the fork (atomics and futexes only); it owns nothing, takes no lock, never prints.
    let child = unsafe {
        fork_child(|| {
            pin_child(scpu);
            ping_pong_child(shm.u32_at(0), same, use_futex)
        })
    }?;
    let _pin = pin_to(ccpu)?;
    let word = shm.u32_at(0);
    let mut next = 1u32;
    let rtt = measure(cfg, || {
        word.store(next, Ordering::Release);
        if use_futex {
            futex::wake(word, 1);
        }
        let want = next + 1;
        let mut v = word.load(Ordering::Acquire);
        while v != want {
            if use_futex {
                futex::wait(word, v, None);
            } else if same {
                rustix::thread::sched_yield();
            } else {
                std::hint::spin_loop();
            }
            v = word.load(Ordering::Acquire);
        }
        next = next.wrapping_add(2);
        if next == STOP {
            next = 1;
        }
        Ok(())
    });
    word.store(STOP, Ordering::Release);
    futex::wake_all(word);
    let code = child.wait()?;
    let rtt = rtt?;
    if code != 0 {
        return Err(BaselineError::Child(format!(
            "ping-pong child exited with {code}"
        )));
    }
    Ok(rtt)
}

/// Round trip of a busy-wait ping-pong on one shared word (same core: with `sched_yield`).
pub fn raw_spin_rtt_ns(placement: Placement, cfg: &BenchConfig) -> Result<Rtt, BaselineError> {
    raw_ping_pong(placement, cfg, false)
}

/// Round trip of a futex ping-pong (wait/wake every time, no spinning).
pub fn raw_futex_rtt_ns(placement: Placement, cfg: &BenchConfig) -> Result<Rtt, BaselineError> {
    raw_ping_pong(placement, cfg, true)
}

const STOP_MSG: [u8; 8] = [0xff; 8];

/// Round trip of 8-byte messages over a Unix stream socket pair.
pub fn unix_socket_rtt_ns(placement: Placement, cfg: &BenchConfig) -> Result<Rtt, BaselineError> {
    let (ccpu, scpu) = placement.cpus();
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair()?;
    // SAFETY: fork_child items 1-3: the child pins itself and echoes on its own socket end (moved in;
    // closing it when the closure returns is what the parent waits for); no lock, no printing.
    let child = unsafe {
        fork_child(move || {
            pin_child(scpu);
            let mut buf = [0u8; 8];
            loop {
                if b.read_exact(&mut buf).is_err() {
                    return 1;
                }
                if buf == STOP_MSG {
                    return 0;
                }
                if b.write_all(&buf).is_err() {
                    return 1;
                }
            }
        })
    }?;
    // The parent's `b` was dropped with the closure.
    let _pin = pin_to(ccpu)?;
    let mut buf = [0u8; 8];
    let rtt = measure(cfg, || {
        a.write_all(&buf)?;
        a.read_exact(&mut buf)?;
        Ok(())
    });
    let _ = a.write_all(&STOP_MSG);
    let code = child.wait()?;
    let rtt = rtt?;
    if code != 0 {
        return Err(BaselineError::Child(format!(
            "socket child exited with {code}"
        )));
    }
    Ok(rtt)
}

/// Control event that stops [`run_echo_server`].
pub const EVENT_STOP: u32 = 1;

/// A minimal server loop: echoes every request (reply = request bytes, status `Ok`) on every
/// channel until the doorbell carries [`EVENT_STOP`]. Requests with a bad length are answered
/// [`Status::Malformed`]. Returns the number of requests served.
pub fn run_echo_server(chans: &[ServerChannel], bell: &Doorbell, spin: Duration) -> u64 {
    let mut buf = Vec::with_capacity(4096);
    let mut served = 0u64;
    loop {
        for ch in chans {
            if let Some(t) = ch.take_into(&mut buf) {
                let status = if t.malformed {
                    Status::Malformed
                } else {
                    Status::Ok
                };
                let _ = ch.reply(t.slot, status, &buf);
                served += 1;
            }
        }
        // No immediate re-scan: `wait` pauses before it looks, which keeps this loop off the
        // slot lines while the client writes its next request (see `spin`).
        match bell.wait(chans, spin, None) {
            Wake::Work | Wake::TimedOut => {}
            Wake::Events => {
                if bell.take_events() & EVENT_STOP != 0 {
                    return served;
                }
            }
        }
    }
}

/// Round trip of a null call (8-byte request, 8-byte echo) through a channel served by
/// [`run_echo_server`] in the child. `spin` is the client's spin policy; the server spins
/// `server_spin` before sleeping.
pub fn chan_rtt_ns_with(
    placement: Placement,
    cfg: &BenchConfig,
    spin: SpinConfig,
    server_spin: Duration,
) -> Result<Rtt, BaselineError> {
    let (ccpu, scpu) = placement.cpus();
    let layout = ChannelLayout {
        nslots: 4,
        req_cap: 64,
        reply_cap: 64,
    };
    let chan_fd = create_channel("bench", layout)?;
    let bell_fd = create_doorbell()?;
    let server = ServerChannel::map(&chan_fd)?;
    let server_bell = Doorbell::map(&bell_fd)?;
    // SAFETY: fork_child items 1-3: the child pins itself and runs the echo loop, which touches only
    // the channel and doorbell mappings (atomics, raw copies), a local buffer and futexes; it
    // owns nothing with an outside effect, takes no lock and never prints.
    let child = unsafe {
        fork_child(|| {
            pin_child(scpu);
            run_echo_server(std::slice::from_ref(&server), &server_bell, server_spin);
            0
        })
    }?;
    drop(server);
    let client = ClientChannel::map(&chan_fd)?.with_spin(spin);
    let _pin = pin_to(ccpu)?;
    let req = [7u8; 8];
    let mut reply = Vec::with_capacity(64);
    let rtt = measure(cfg, || {
        let r = client.call(1, &req, &mut reply, None)?;
        if r.status != Status::Ok || reply.len() != 8 {
            return Err(BaselineError::Child(format!("bad echo reply {r:?}")));
        }
        Ok(())
    });
    server_bell.notify(EVENT_STOP);
    let code = child.wait()?;
    let rtt = rtt?;
    if code != 0 {
        return Err(BaselineError::Child(format!(
            "echo server exited with {code}"
        )));
    }
    Ok(rtt)
}

/// Default server spin budget of the channel benchmark.
pub const SERVER_SPIN: Duration = Duration::from_micros(50);

/// [`chan_rtt_ns_with`] with the default client policy and [`SERVER_SPIN`].
pub fn chan_rtt_ns(placement: Placement, cfg: &BenchConfig) -> Result<Rtt, BaselineError> {
    chan_rtt_ns_with(placement, cfg, SpinConfig::default(), SERVER_SPIN)
}

/// Every baseline for one placement, measured back to back.
pub fn measure_all(placement: Placement, cfg: &BenchConfig) -> Result<IpcBaselines, BaselineError> {
    Ok(IpcBaselines {
        placement,
        raw_spin_rtt_ns: raw_spin_rtt_ns(placement, cfg)?,
        raw_futex_rtt_ns: raw_futex_rtt_ns(placement, cfg)?,
        unix_socket_rtt_ns: unix_socket_rtt_ns(placement, cfg)?,
        chan_rtt_ns: chan_rtt_ns(placement, cfg)?,
    })
}
