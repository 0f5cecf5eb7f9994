//! The watchdog tick: delayed restarts and hang detection.

use std::time::{Duration, Instant};

use rustix::process::Signal;
use txipc_sys::process;

use crate::event_loop::Kernel;
use crate::server::SrvState;

impl Kernel {
    pub(crate) fn on_tick(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.timer, &mut buf);
        let now = Instant::now();
        for i in 0..self.servers.len() {
            let s = &self.servers[i];
            // Delayed restarts (minimum interval between restarts).
            if s.state == SrvState::Recovering && s.restart_at.is_some_and(|t| Instant::now() >= t)
            {
                self.servers[i].restart_at = None;
                self.activate_or_spawn(i);
                continue;
            }
            // Hangs: the same batch seen busy for longer than the deadline. (The server only
            // stores its transaction id; the kernel keeps the clock, so the call path pays no
            // clock read.)
            if s.state == SrvState::Running && s.active.is_some() {
                let busy = s.status.busy();
                let ran = match self.servers[i].watch {
                    Some((txid, since)) if txid == busy && busy != 0 => {
                        Some(now.duration_since(since))
                            .filter(|d| *d > Duration::from_millis(s.spec.deadline_ms))
                    }
                    _ => {
                        self.servers[i].watch = (busy != 0).then_some((busy, now));
                        None
                    }
                };
                let s = &self.servers[i];
                if let Some(ran) = ran {
                    let pid = s.active.as_ref().map_or(0, |a| a.pid);
                    self.log(format!(
                        "{}: call exceeded {} ms deadline (pid {pid}): stopping it",
                        s.spec.name, s.spec.deadline_ms
                    ));
                    if let Some(a) = &s.active {
                        let _ = process::pidfd_signal(&a.pidfd, Signal::STOP);
                    }
                    let cause = format!(
                        "hang: call ran {:.1} s > deadline {} s",
                        ran.as_secs_f64(),
                        secs_words(s.spec.deadline_ms)
                    );
                    self.fault(i, cause);
                }
            }
        }
    }
}

/// `2` for 2000 ms, `0.25` for 250 ms.
fn secs_words(ms: u64) -> String {
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}
