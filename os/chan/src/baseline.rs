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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
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

impl Rtt {
    /// The median, fastest and slowest of batch means (`iterations` round trips each).
    pub fn from_means(mut means: Vec<f64>, iterations: u32) -> Rtt {
        means.sort_by(f64::total_cmp);
        let n = means.len();
        Rtt {
            median_ns: if n == 0 { f64::NAN } else { means[n / 2] },
            min_ns: means.first().copied().unwrap_or(f64::NAN),
            max_ns: means.last().copied().unwrap_or(f64::NAN),
            iterations,
            batches: n as u32,
        }
    }
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
///    threads, no `OnceLock`/`LazyLock`/`Once` another thread may be initialising (the child
///    would wait forever for that thread; this crate's own waiting code uses none), no `println!`/`eprintln!` (the stdout/stderr locks; a panic message takes the
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

    /// Waits at most `bound` for the child to exit: its exit code as in [`Self::wait`], or
    /// `None` if it was still running, in which case it is SIGKILLed and reaped. For tests, whose
    /// every wait is bounded: a child that hangs becomes a failure, not a stuck run.
    pub fn wait_within(mut self, bound: Duration) -> Result<Option<i32>, BaselineError> {
        let until = Instant::now() + bound;
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(WaitStatus::StillAlive) => {
                    self.kill()?;
                    return Ok(None);
                }
                Ok(WaitStatus::Exited(_, code)) => {
                    self.reaped = true;
                    return Ok(Some(code));
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    self.reaped = true;
                    return Ok(Some(128 + sig as i32));
                }
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    self.reaped = true;
                    return Err(e.into());
                }
            }
        }
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
/// Sentinel the parent writes to park a raw ping-pong child between batches: it sleeps on the
/// word (futex) until the parent's next request, so it takes no CPU from what is measured
/// meanwhile.
const PARK: u32 = u32::MAX - 1;

/// The next request number of a ping-pong (odd; the reply is the request + 1, even). Both sides
/// advance the same way and wrap long before the sentinels.
fn next_request(x: u32) -> u32 {
    if x >= (1 << 30) { 1 } else { x + 2 }
}

/// Where a [`PingPong::with_reply`]'s reply bytes live: past the word's 128-byte pair.
const REPLY_OFF: usize = 128;

/// How the reply bytes of a [`PingPong::with_reply_path`] move from the partner's core to the
/// caller's: the parts of a long reply's transfer, measured one against the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReplyPath {
    /// The partner copies the bytes in, the caller copies them out: each side's copy touches
    /// one line after the other.
    Plain,
    /// The caller prefetches every line of the reply as soon as it sees the reply word, then
    /// copies: the line misses overlap.
    ReaderPrefetch,
    /// The partner takes every reply line exclusive (`prefetchw`) as soon as it sees the
    /// request, then copies: its ownership requests overlap.
    WriterClaim,
    /// Both of the above.
    Both,
    /// The caller prefetches every line of the reply at each poll of the reply word while it
    /// waits (pulling each line over as soon as it is written), then copies.
    ReaderPolls,
}

impl ReplyPath {
    /// Every path, in the order the examples report them.
    pub const ALL: [ReplyPath; 5] = [
        ReplyPath::Plain,
        ReplyPath::ReaderPrefetch,
        ReplyPath::WriterClaim,
        ReplyPath::Both,
        ReplyPath::ReaderPolls,
    ];

    fn reader_prefetches(self) -> bool {
        matches!(self, ReplyPath::ReaderPrefetch | ReplyPath::Both)
    }

    fn writer_claims(self) -> bool {
        matches!(self, ReplyPath::WriterClaim | ReplyPath::Both)
    }
}

/// The partner of a [`PingPong`]: answers each request by storing request + 1, after writing
/// `bytes` (a private buffer, as a server copies from its state; allocated before the fork, so
/// the child allocates nothing) at [`REPLY_OFF`].
fn ping_pong_child(
    shm: &Mapping,
    bytes: &mut [u8],
    same_core: bool,
    use_futex: bool,
    path: ReplyPath,
) -> i32 {
    let word = shm.u32_at(0);
    let reply = bytes.len();
    let mut expect = 1u32;
    loop {
        let mut v = word.load(Ordering::Acquire);
        while v != expect {
            if v == STOP {
                return 0;
            }
            if v == PARK {
                futex::wait(word, PARK, None);
            } else if use_futex {
                futex::wait(word, v, None);
            } else if same_core {
                rustix::thread::sched_yield();
            } else {
                std::hint::spin_loop();
            }
            v = word.load(Ordering::Acquire);
        }
        if reply > 0 {
            if path.writer_claims() {
                shm.prefetch_write(REPLY_OFF, reply);
            }
            bytes[0] = expect as u8;
            shm.copy_in(REPLY_OFF, bytes);
        }
        word.store(expect + 1, Ordering::Release);
        if use_futex {
            futex::wake(word, 1);
        }
        expect = next_request(expect);
    }
}

/// A raw ping-pong on one shared word with a forked partner that lives across batches: between
/// two [`PingPong::batch`]es the partner sleeps (parked on a futex), so batches of other
/// mechanisms can be interleaved with its own and see the same machine.
#[derive(Debug)]
pub struct PingPong {
    child: Option<Child>,
    shm: Mapping,
    next: u32,
    same: bool,
    use_futex: bool,
    client_cpu: usize,
    /// Where the reply bytes are copied out to (private, reused).
    reply: Vec<u8>,
    /// Bytes every reply carries (0: the word alone).
    reply_len: usize,
    /// How they move.
    path: ReplyPath,
}

impl PingPong {
    /// Forks the partner, pinned per `placement`, parked. `use_futex`: wait/wake every time
    /// instead of spinning.
    ///
    /// Fork it while this process has one thread (see [`fork_child`]): the partner itself only
    /// touches a shared word.
    pub fn start(placement: Placement, use_futex: bool) -> Result<PingPong, BaselineError> {
        Self::start_inner(placement, use_futex, 0, ReplyPath::Plain)
    }

    /// A spinning ping-pong whose every reply also carries `reply` bytes (at most 64 KiB):
    /// the partner writes them from a private buffer before its reply word, the caller copies
    /// them out after it, as a server and a client move a long reply. Against the plain
    /// ping-pong it gives what moving those bytes from one core to the other costs by itself.
    pub fn with_reply(placement: Placement, reply: usize) -> Result<PingPong, BaselineError> {
        Self::with_reply_path(placement, reply, ReplyPath::Plain)
    }

    /// [`Self::with_reply`] with the bytes moved as `path` says.
    pub fn with_reply_path(
        placement: Placement,
        reply: usize,
        path: ReplyPath,
    ) -> Result<PingPong, BaselineError> {
        Self::start_inner(placement, false, reply.min(64 << 10), path)
    }

    fn start_inner(
        placement: Placement,
        use_futex: bool,
        reply: usize,
        path: ReplyPath,
    ) -> Result<PingPong, BaselineError> {
        let (ccpu, scpu) = placement.cpus();
        let same = placement == Placement::SameCore;
        let shm = Mapping::anonymous_shared((REPLY_OFF + reply).next_multiple_of(4096))?;
        let bytes = vec![0x5a_u8; reply];
        shm.u32_at(0).store(PARK, Ordering::Release);
        // SAFETY: fork_child items 1-3: the child pins itself and ping-pongs on one word of a
        // mapping made before the fork (atomics and futexes only), copying its reply bytes from
        // a buffer allocated before the fork, which it never frees (`ManuallyDrop`: no
        // allocator call in the child); it takes no lock, never prints.
        let child = unsafe {
            fork_child(|| {
                let mut bytes = std::mem::ManuallyDrop::new(bytes);
                pin_child(scpu);
                ping_pong_child(&shm, &mut bytes, same, use_futex, path)
            })
        }?;
        Ok(PingPong {
            child: Some(child),
            shm,
            next: 1,
            same,
            use_futex,
            client_cpu: ccpu,
            reply: Vec::with_capacity(reply),
            reply_len: reply,
            path,
        })
    }

    /// One round trip; `wake`: also futex-wake the partner (it may be parked).
    fn round_trip(&mut self, wake: bool) {
        let word = self.shm.u32_at(0);
        let next = self.next;
        word.store(next, Ordering::Release);
        if self.use_futex || wake {
            futex::wake(word, 1);
        }
        let want = next + 1;
        let mut v = word.load(Ordering::Acquire);
        while v != want {
            if self.use_futex {
                futex::wait(word, v, None);
            } else if self.same {
                rustix::thread::sched_yield();
            } else if self.path == ReplyPath::ReaderPolls {
                self.shm.prefetch_read(REPLY_OFF, self.reply_len);
            } else {
                std::hint::spin_loop();
            }
            v = word.load(Ordering::Acquire);
        }
        if self.reply_len > 0 {
            if self.path.reader_prefetches() {
                self.shm.prefetch_read(REPLY_OFF, self.reply_len);
            }
            self.shm
                .copy_out(REPLY_OFF, self.reply_len, &mut self.reply);
            std::hint::black_box(&self.reply);
        }
        self.next = next_request(next);
    }

    /// Wakes the partner, makes `warmup` untimed round trips, then `iterations` timed ones,
    /// and parks the partner again. Mean ns per round trip. Pins the calling thread to the
    /// placement's client CPU for the duration.
    pub fn batch(&mut self, warmup: u32, iterations: u32) -> Result<f64, BaselineError> {
        let _pin = pin_to(self.client_cpu)?;
        // The partner sleeps on PARK: the first request wakes it.
        self.round_trip(true);
        for _ in 0..warmup {
            self.round_trip(false);
        }
        let iterations = iterations.max(1);
        let t0 = Instant::now();
        for _ in 0..iterations {
            self.round_trip(false);
        }
        let mean = t0.elapsed().as_nanos() as f64 / f64::from(iterations);
        let word = self.shm.u32_at(0);
        word.store(PARK, Ordering::Release);
        Ok(mean)
    }

    /// Stops the partner and checks that it exited cleanly.
    pub fn stop(mut self) -> Result<(), BaselineError> {
        let word = self.shm.u32_at(0);
        word.store(STOP, Ordering::Release);
        futex::wake_all(word);
        let code = self.child.take().map_or(Ok(0), Child::wait)?;
        if code != 0 {
            return Err(BaselineError::Child(format!(
                "ping-pong child exited with {code}"
            )));
        }
        Ok(())
    }
}

/// `batches` batches of one [`PingPong`], as an [`Rtt`].
fn raw_ping_pong(
    placement: Placement,
    cfg: &BenchConfig,
    use_futex: bool,
) -> Result<Rtt, BaselineError> {
    let mut pair = PingPong::start(placement, use_futex)?;
    let rtt = batches(cfg, |warm, iterations| pair.batch(warm, iterations))?;
    pair.stop()?;
    Ok(rtt)
}

/// Untimed round trips at the start of each interleaved batch (the partner was parked or asleep).
pub fn batch_warmup(cfg: &BenchConfig) -> u32 {
    (cfg.warmup / 4).clamp(1, 1000)
}

/// The untimed round trips before batch `b`: the whole warm-up before the first, then
/// [`batch_warmup`].
pub fn warmup_before(cfg: &BenchConfig, b: u32) -> u32 {
    if b == 0 {
        cfg.warmup
    } else {
        batch_warmup(cfg)
    }
}

/// `cfg.batches` batches (at least one) of `batch(warmup, iterations)`, each warmed up by
/// [`warmup_before`]; their means as an [`Rtt`].
fn batches(
    cfg: &BenchConfig,
    mut batch: impl FnMut(u32, u32) -> Result<f64, BaselineError>,
) -> Result<Rtt, BaselineError> {
    let means = (0..cfg.batches.max(1))
        .map(|b| batch(warmup_before(cfg, b), cfg.iterations))
        .collect::<Result<Vec<f64>, _>>()?;
    Ok(Rtt::from_means(means, cfg.iterations.max(1)))
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
    serve_until_stopped(chans, bell, spin, None)
}

/// [`run_echo_server`], answering every well-formed request with `reply` (a private buffer,
/// as a server copies a value from its state) instead of the request's bytes.
pub fn run_reply_server(
    chans: &[ServerChannel],
    bell: &Doorbell,
    spin: Duration,
    reply: &[u8],
) -> u64 {
    serve_until_stopped(chans, bell, spin, Some(reply))
}

fn serve_until_stopped(
    chans: &[ServerChannel],
    bell: &Doorbell,
    spin: Duration,
    fixed: Option<&[u8]>,
) -> u64 {
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
                let bytes = match fixed {
                    Some(r) if !t.malformed => r,
                    _ => &buf[..],
                };
                let _ = ch.reply(t.slot, status, bytes);
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

/// A channel served by [`run_echo_server`] in a forked child that lives across batches (it
/// sleeps on its doorbell between them), so batches of other mechanisms can be interleaved
/// with its own.
#[derive(Debug)]
pub struct EchoChannel {
    child: Option<Child>,
    client: ClientChannel,
    bell: Doorbell,
    client_cpu: usize,
    reply: Vec<u8>,
    /// Bytes of every reply (8: the request echoed).
    reply_len: usize,
}

impl EchoChannel {
    /// Creates the channel and forks its echo server, pinned per `placement`. `spin` is the
    /// client's spin policy; the server spins `server_spin` before sleeping.
    ///
    /// Fork it while this process has one thread (see [`fork_child`]).
    pub fn start(
        placement: Placement,
        spin: SpinConfig,
        server_spin: Duration,
    ) -> Result<EchoChannel, BaselineError> {
        Self::start_inner(placement, spin, server_spin, None)
    }

    /// [`Self::start`] with a server that answers every call with `reply` bytes (at most
    /// 64 KiB; the reply area holds them) instead of echoing: the channel's own way of moving a
    /// long reply, against [`PingPong::with_reply`]'s raw one.
    pub fn with_reply(
        placement: Placement,
        spin: SpinConfig,
        server_spin: Duration,
        reply: usize,
    ) -> Result<EchoChannel, BaselineError> {
        Self::start_inner(placement, spin, server_spin, Some(reply.min(64 << 10)))
    }

    fn start_inner(
        placement: Placement,
        spin: SpinConfig,
        server_spin: Duration,
        reply: Option<usize>,
    ) -> Result<EchoChannel, BaselineError> {
        let (ccpu, scpu) = placement.cpus();
        let layout = ChannelLayout {
            nslots: 4,
            req_cap: 64,
            reply_cap: reply.map_or(64, |n| n.max(64) as u32),
        };
        let fixed = reply.map(|n| vec![0x5a_u8; n]);
        let chan_fd = create_channel("bench", layout)?;
        let bell_fd = create_doorbell()?;
        let server = ServerChannel::map(&chan_fd)?;
        let server_bell = Doorbell::map(&bell_fd)?;
        // SAFETY: fork_child items 1-3: the child pins itself and runs the echo loop, which
        // touches only the channel and doorbell mappings (atomics, raw copies), a local buffer
        // and futexes (its reply bytes were allocated before the fork and are never freed in
        // it: `ManuallyDrop`); it owns nothing with an outside effect, takes no lock and never
        // prints.
        let child = unsafe {
            fork_child(|| {
                let fixed = std::mem::ManuallyDrop::new(fixed);
                pin_child(scpu);
                let chans = std::slice::from_ref(&server);
                match fixed.as_deref() {
                    None => run_echo_server(chans, &server_bell, server_spin),
                    Some(r) => run_reply_server(chans, &server_bell, server_spin, r),
                };
                0
            })
        }?;
        drop(server);
        Ok(EchoChannel {
            child: Some(child),
            client: ClientChannel::map(&chan_fd)?.with_spin(spin),
            bell: server_bell,
            client_cpu: ccpu,
            reply: Vec::with_capacity(reply.unwrap_or(64)),
            reply_len: reply.unwrap_or(8),
        })
    }

    fn call(&mut self) -> Result<(), BaselineError> {
        let req = [7u8; 8];
        let r = self.client.call(1, &req, &mut self.reply, None)?;
        if r.status != Status::Ok || self.reply.len() != self.reply_len {
            return Err(BaselineError::Child(format!("bad echo reply {r:?}")));
        }
        Ok(())
    }

    /// `warmup` untimed calls, then `iterations` timed ones: mean ns per call. Pins the
    /// calling thread to the placement's client CPU for the duration.
    pub fn batch(&mut self, warmup: u32, iterations: u32) -> Result<f64, BaselineError> {
        let _pin = pin_to(self.client_cpu)?;
        for _ in 0..warmup.max(1) {
            self.call()?;
        }
        let iterations = iterations.max(1);
        let t0 = Instant::now();
        for _ in 0..iterations {
            self.call()?;
        }
        Ok(t0.elapsed().as_nanos() as f64 / f64::from(iterations))
    }

    /// Stops the echo server and checks that it exited cleanly.
    pub fn stop(mut self) -> Result<(), BaselineError> {
        self.bell.notify(EVENT_STOP);
        let code = self.child.take().map_or(Ok(0), Child::wait)?;
        if code != 0 {
            return Err(BaselineError::Child(format!(
                "echo server exited with {code}"
            )));
        }
        Ok(())
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
    let mut pair = EchoChannel::start(placement, spin, server_spin)?;
    let rtt = batches(cfg, |warm, iterations| pair.batch(warm, iterations))?;
    pair.stop()?;
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
