//! The watchdog tick: timers of the lifecycle (delayed restarts, activation, spawn and zygote
//! timeouts) and hang detection — a call running past the deadline, or a request POSTED and
//! not taken within it while the server makes no progress.

use std::time::{Duration, Instant};

use txipc_chan::SlotState;
use txipc_core::lifecycle::{Event, Phase};
use txipc_sys::process;

use std::os::fd::AsFd;

use crate::event_loop::{Kernel, T_LISTEN, token};
use crate::server::CONTROL_EVENT;

/// Keepers of dead incarnations a server may have queued while a recovery is under way; past
/// this, a tick kills the older ones even then.
const MAX_QUEUED_KEEPERS: usize = 8;

impl Kernel {
    pub(crate) fn on_tick(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.timer, &mut buf);
        if self.accept_paused
            && self
                .watch(self.listener.as_fd(), token(T_LISTEN, 0, 0))
                .is_ok()
        {
            self.accept_paused = false;
        }
        for i in 0..self.servers.len() {
            self.feed(i, Event::Tick);
            self.kill_keepers(i);
            if let Some((g, cause)) = self.hang_of(i) {
                let s = &self.servers[i];
                let pid = s.active().map_or(0, |a| a.pid);
                self.log(format!("{}: {cause} (pid {pid}): killing it", s.spec.name));
                self.fault_starts(i, g, cause);
                self.feed(i, Event::Hang(g));
            }
        }
    }

    /// Kills the keepers of server `i`'s dead incarnations that were queued before the last
    /// tick, unless a recovery of the server is under way: the teardown of their address
    /// spaces (milliseconds for a large heap) then runs, at nice 19, while the successor
    /// serves, never between a fault and the successor's first reply.
    fn kill_keepers(&mut self, i: usize) {
        let s = &mut self.servers[i];
        // Each queued keeper still holds its dead incarnation's page tables and private memory:
        // in a restart storm (a recovery under way at most ticks) more than a few are killed
        // anyway, so that what they hold stays bounded.
        if s.life.phase() == Phase::Recovering
            && s.keepers.len() + s.keepers_due.len() <= MAX_QUEUED_KEEPERS
        {
            return;
        }
        for k in std::mem::take(&mut s.keepers_due) {
            let _ = process::pidfd_signal(&k, rustix::process::Signal::KILL);
        }
        s.keepers_due = std::mem::take(&mut s.keepers);
    }

    /// Whether server `i`'s serving generation hangs, and how, in words.
    fn hang_of(&mut self, i: usize) -> Option<(u64, String)> {
        let now = Instant::now();
        let s = &mut self.servers[i];
        if s.life.phase() != Phase::Running {
            s.watch = None;
            s.posted_watch = None;
            return None;
        }
        let g = s.life.serving()?;
        let busy = s.status.busy();
        let mut deadline = Duration::from_millis(s.spec.deadline_ms);
        // A server waiting for the reply of a call to another server is not hung:
        // its callee is (or is recovering), and has its own watchdog. Only a wait far past any
        // recovery (a cycle of servers waiting on each other) is taken for a hang; the kill is
        // then not charged to the request (the busy word says it waited).
        if s.in_call() {
            deadline = (deadline * 10).max(IN_CALL_DEADLINE);
        }
        // A waiting request is judged on at least a second (twice, with the doorbell rung in
        // between): a loaded machine may leave a healthy server unscheduled that long.
        let waiting_deadline = deadline.max(Duration::from_secs(1));
        // A call running too long: the same batch seen busy for longer than the deadline. (The
        // server only stores its transaction id; the kernel keeps the clock, so the call path
        // pays no clock read.)
        match s.watch {
            Some((txid, since)) if txid == busy && busy != 0 => {
                let ran = now.duration_since(since);
                if ran > deadline {
                    return Some((
                        g,
                        format!(
                            "hang: call ran {:.1} s > deadline {} s",
                            ran.as_secs_f64(),
                            secs_words(s.spec.deadline_ms)
                        ),
                    ));
                }
            }
            _ => s.watch = (busy != 0).then_some((busy, now)),
        }
        // A request waiting too long: some slot POSTED while the server made no progress
        // (neither its call count nor its busy word moved) for longer than the deadline. The
        // progress words are the server's own (clients cannot write the status page), so a
        // client that fakes a POSTED slot cannot make a live server look hung: a live server
        // takes it, or makes progress elsewhere.
        let posted = s
            .channels
            .values()
            .any(|c| c.k.slots().any(|snap| snap.state == SlotState::Posted));
        let calls = s.status.calls();
        if !posted {
            s.posted_watch = None;
            return None;
        }
        match s.posted_watch {
            Some((_, c, b, _)) if c != calls || b != busy => {
                s.posted_watch = Some((now, calls, busy, false));
            }
            Some((since, c, b, rung)) if now.duration_since(since) > waiting_deadline => {
                let stopped = s
                    .active()
                    .and_then(|a| process::state(a.pid))
                    .is_some_and(|st| st == 'T' || st == 't');
                if stopped || rung {
                    let waited = now.duration_since(since).as_secs_f64();
                    return Some((
                        g,
                        format!(
                            "hang: a request waited {waited:.1} s > {} s, not taken ({})",
                            secs_words(waiting_deadline.as_millis() as u64),
                            if stopped {
                                "the server is stopped"
                            } else {
                                "the server makes no progress"
                            }
                        ),
                    ));
                }
                // Asleep on a doorbell nobody rang? Ring it, and give it one more deadline.
                s.doorbell.notify(CONTROL_EVENT);
                s.posted_watch = Some((now, c, b, true));
            }
            Some(_) => {}
            None => s.posted_watch = Some((now, calls, busy, false)),
        }
        None
    }
}

/// The least a companion server's wait for a call to another server may last before it is
/// taken for a hang (a cycle of servers waiting on each other).
const IN_CALL_DEADLINE: Duration = Duration::from_secs(20);

/// `2` for 2000 ms, `0.25` for 250 ms.
fn secs_words(ms: u64) -> String {
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}
