//! Recovery decisions: what happens to each in-flight request when an incarnation dies, and when
//! the server may come back.
//!
//! The kernel gathers facts (the undo log's state, each TAKEN slot's attempt counter, whether the
//! slot's `(channel, slot, seq)` is in the committed batch) and asks [`decide_slot`]; it then
//! carries the answer out on shared memory. Keeping the decision here makes every combination
//! testable without processes.

use std::collections::VecDeque;

use crate::manifest::{Policy, RestartLimits};

/// The undo log's state when the kernel looked, before any rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogState {
    /// No transaction since the log was formatted.
    #[default]
    Idle,
    /// A transaction was running: its updates must be undone.
    Active(u64),
    /// The last transaction committed: its replies are written and must be published.
    Committed(u64),
    /// The last transaction was already rolled back.
    Aborted(u64),
}

/// A transaction id in words: `GENERATION.SEQUENCE` (the runtime numbers an incarnation's
/// transactions from `generation << 40`).
pub fn txid_words(txid: u64) -> String {
    format!("{}.{}", txid >> 40, txid & ((1 << 40) - 1))
}

impl std::fmt::Display for LogState {
    /// For the kernel's log: `transaction 1.4 had committed`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            LogState::Idle => f.write_str("no transaction yet"),
            LogState::Active(t) => write!(f, "transaction {} was running", txid_words(t)),
            LogState::Committed(t) => write!(f, "transaction {} had committed", txid_words(t)),
            LogState::Aborted(t) => {
                write!(f, "transaction {} was already rolled back", txid_words(t))
            }
        }
    }
}

/// Facts about one slot found TAKEN by the dead incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenSlot {
    /// The slot's `(channel, slot, seq)` is in the batch of the committed transaction.
    pub in_committed_batch: bool,
    /// Faults already charged to this request (re-posts that counted).
    pub attempt: u32,
    /// This fault counts against it ([`fault_counts`]): it may have been running.
    pub charged: bool,
}

/// Whether the fault that ended an incarnation counts against a request it had TAKEN: only
/// if the request may have been running then, so that only faults in a request's own
/// handler make it poison.
///
/// - `in_call`: the incarnation died waiting for a nested call's reply (the callee's fault,
///   slowness or conflict, not its requests'): no request is charged.
/// - `named`: with the undo log `Active`, whether the rolled-back transaction's batch
///   descriptor names the request (`None` when it names nobody: a nested sub-transaction).
///   A request it does not name was taken but not begun — waiting in the incarnation's
///   backlog while a re-run request ran alone — and is not charged.
/// - Any other log state (idle, committed, already rolled back: the incarnation died between
///   transactions or at a protocol point outside one) cannot tell: every TAKEN request is
///   charged, as a conservative rule (a committed batch's replies are published anyway).
pub fn fault_counts(log: LogState, named: Option<bool>, in_call: bool) -> bool {
    if in_call {
        return false;
    }
    match (log, named) {
        (LogState::Active(_), Some(named)) => named,
        _ => true,
    }
}

/// Why a request is failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// It faulted the server more than `retry_limit` times (poison request); rolled back.
    Poison {
        /// Times it ran.
        attempts: u32,
    },
    /// The server restarted without its state (policy restart).
    Restarted,
    /// The server is down for good, or held down; the request did not run (or was rolled back).
    Unavailable,
    /// The server failed with the request TAKEN and nothing rolled it back (policy `none`, or
    /// `restart` held down): it may have taken effect, wholly or partly, and the server is down.
    Interrupted,
}

/// What the kernel does with a TAKEN slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAction {
    /// The reply is written and committed: publish it.
    PublishWritten,
    /// Rolled back: give it to the next incarnation (attempt + 1).
    Repost,
    /// Answer it with an error.
    Fail(FailReason),
}

/// Decides the fate of one TAKEN slot. `held_down`: the server will not run again soon.
pub fn decide_slot(
    policy: Policy,
    retry_limit: u32,
    held_down: bool,
    slot: TakenSlot,
) -> SlotAction {
    // A committed reply is always delivered: a committed transaction is never rolled back, and
    // the reply is what the client must see (exactly-once).
    if slot.in_committed_batch {
        return SlotAction::PublishWritten;
    }
    match policy {
        // Nothing is rolled back under these: a TAKEN request may have half-run.
        Policy::None => SlotAction::Fail(FailReason::Interrupted),
        Policy::Restart if held_down => SlotAction::Fail(FailReason::Interrupted),
        Policy::Restart => SlotAction::Fail(FailReason::Restarted),
        // Companion servers are settled by `decide_companion_slot` (their requests are not
        // rolled back but logged); as a TAKEN slot it would be re-posted like txipc's.
        Policy::Txipc | Policy::Companion if slot.charged && slot.attempt >= retry_limit => {
            SlotAction::Fail(FailReason::Poison {
                attempts: slot.attempt.saturating_add(1),
            })
        }
        Policy::Txipc | Policy::Companion if held_down => SlotAction::Fail(FailReason::Unavailable),
        Policy::Txipc | Policy::Companion => SlotAction::Repost,
    }
}

/// Facts about one request of a companion server that still waits for its reply (its slot
/// POSTED or TAKEN with its seq) when an incarnation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompanionSlot {
    /// Faults charged to this request so far, this one included (the busy word named it).
    pub charged: u32,
}

/// What the kernel does with a waiting request of a companion server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompanionAction {
    /// Leave it: the next incarnation answers it (from its replay if the request is in the
    /// log, by running it otherwise).
    Leave,
    /// Fail it with this reason, and have every later replay skip its log record (if it has
    /// one), so that the failure tells the truth: its effects are absent.
    FailAndSkip(FailReason),
}

/// Decides the fate of one waiting request of a companion server. `held_down`: the server
/// will not run again soon.
pub fn decide_companion_slot(
    retry_limit: u32,
    held_down: bool,
    slot: CompanionSlot,
) -> CompanionAction {
    if slot.charged > retry_limit {
        CompanionAction::FailAndSkip(FailReason::Poison {
            attempts: slot.charged,
        })
    } else if held_down {
        CompanionAction::FailAndSkip(FailReason::Unavailable)
    } else {
        CompanionAction::Leave
    }
}

/// Slot key: channel index, slot index, the request's sequence number.
pub type SlotKey = (u32, u32, u64);

/// How many times the kernel itself re-posted each in-flight request.
///
/// The slot's own `attempt` word lives in the channel, which the client can write: it is the
/// client's allegation, fine for the client's own error message but not for the kernel's
/// decisions or counters. The kernel decides poison from this book (what it did), so a client
/// scribbling on its channel can neither make the kernel fail someone's request nor inflate
/// `ps`'s `aborted` count; the counts are bounded by the number of faults the kernel saw.
#[derive(Debug, Clone, Default)]
pub struct AttemptBook {
    reposts: std::collections::HashMap<SlotKey, u32>,
}

impl AttemptBook {
    /// Times the kernel re-posted the request `key` (0 if never).
    pub fn attempts(&self, key: SlotKey) -> u32 {
        self.reposts.get(&key).copied().unwrap_or(0)
    }

    /// The kernel re-posted `key` once more.
    pub fn reposted(&mut self, key: SlotKey) {
        let n = self.reposts.entry(key).or_default();
        *n = n.saturating_add(1);
    }

    /// Forgets every request for which `live` is false (answered, withdrawn, gone).
    pub fn retain(&mut self, mut live: impl FnMut(SlotKey) -> bool) {
        self.reposts.retain(|&k, _| live(k));
    }

    /// The most times any tracked request was re-posted (0 if none is tracked).
    pub fn max(&self) -> u32 {
        self.reposts.values().copied().max().unwrap_or(0)
    }

    /// Requests tracked.
    pub fn len(&self) -> usize {
        self.reposts.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.reposts.is_empty()
    }
}

/// The answer of the [`RestartGovernor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart at once.
    Now,
    /// Restart after this many milliseconds (minimum interval).
    After(u64),
    /// Too many restarts in the window: hold the server down.
    HoldDown,
    /// The policy does not restart.
    Never,
}

/// Bounds restart storms: a minimum interval between restarts and a maximum count per window.
#[derive(Debug, Clone)]
pub struct RestartGovernor {
    policy: Policy,
    limits: RestartLimits,
    history: VecDeque<u64>,
    last: Option<u64>,
}

impl RestartGovernor {
    /// A governor for a server with this policy and these limits.
    pub fn new(policy: Policy, limits: RestartLimits) -> Self {
        RestartGovernor {
            policy,
            limits,
            history: VecDeque::new(),
            last: None,
        }
    }

    /// Whether a failure at `now_ms` would be answered [`RestartDecision::Now`], without
    /// counting it. Stays true as time passes (the window only forgets, the minimum interval
    /// only elapses), so a spare armed on it never restarts a server the governor would hold.
    pub fn would_restart_now(&self, now_ms: u64) -> bool {
        if self.policy == Policy::None {
            return false;
        }
        let in_window = self
            .history
            .iter()
            .filter(|&&t| now_ms.saturating_sub(t) < self.limits.window_ms)
            .count();
        in_window < self.limits.max_restarts as usize
            && self
                .last
                .is_none_or(|l| now_ms >= l + self.limits.min_interval_ms)
    }

    /// The server failed at `now_ms`: may it restart, and when? A `Now`/`After` answer is
    /// counted as a restart.
    pub fn on_failure(&mut self, now_ms: u64) -> RestartDecision {
        if self.policy == Policy::None {
            return RestartDecision::Never;
        }
        while self
            .history
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= self.limits.window_ms)
        {
            self.history.pop_front();
        }
        if self.history.len() >= self.limits.max_restarts as usize {
            return RestartDecision::HoldDown;
        }
        let at = match self.last {
            Some(l) if now_ms < l + self.limits.min_interval_ms => l + self.limits.min_interval_ms,
            _ => now_ms,
        };
        self.history.push_back(at);
        self.last = Some(at);
        if at > now_ms {
            RestartDecision::After(at - now_ms)
        } else {
            RestartDecision::Now
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TakenSlot = TakenSlot {
        in_committed_batch: false,
        attempt: 0,
        charged: true,
    };

    #[test]
    fn log_states_in_words() {
        assert_eq!(
            LogState::Committed((1 << 40) + 4).to_string(),
            "transaction 1.4 had committed"
        );
        assert_eq!(
            LogState::Active((3 << 40) + 9).to_string(),
            "transaction 3.9 was running"
        );
        assert_eq!(LogState::Idle.to_string(), "no transaction yet");
    }

    #[test]
    fn committed_reply_is_always_published() {
        for policy in [Policy::None, Policy::Restart, Policy::Txipc] {
            for held in [false, true] {
                for attempt in [0, 1, 5] {
                    let s = TakenSlot {
                        in_committed_batch: true,
                        attempt,
                        charged: true,
                    };
                    assert_eq!(decide_slot(policy, 2, held, s), SlotAction::PublishWritten);
                }
            }
        }
    }

    #[test]
    fn txipc_retries_up_to_the_limit_then_poison() {
        assert_eq!(decide_slot(Policy::Txipc, 2, false, T), SlotAction::Repost);
        let s1 = TakenSlot { attempt: 1, ..T };
        assert_eq!(decide_slot(Policy::Txipc, 2, false, s1), SlotAction::Repost);
        let s2 = TakenSlot { attempt: 2, ..T };
        assert_eq!(
            decide_slot(Policy::Txipc, 2, false, s2),
            SlotAction::Fail(FailReason::Poison { attempts: 3 })
        );
        assert_eq!(
            decide_slot(Policy::Txipc, 0, false, T),
            SlotAction::Fail(FailReason::Poison { attempts: 1 })
        );
        assert_eq!(
            decide_slot(Policy::Txipc, 2, true, T),
            SlotAction::Fail(FailReason::Unavailable)
        );
    }

    #[test]
    fn only_a_request_that_may_have_been_running_is_charged() {
        let active = LogState::Active(7);
        assert!(fault_counts(active, Some(true), false));
        // Taken, waiting in the backlog while another request ran alone.
        assert!(!fault_counts(active, Some(false), false));
        // The descriptor names nobody (a nested sub-transaction): cannot tell, charged.
        assert!(fault_counts(active, None, false));
        for log in [LogState::Idle, LogState::Committed(7), LogState::Aborted(7)] {
            assert!(fault_counts(log, None, false), "{log}");
        }
        // Died waiting for a nested call: nobody's fault here.
        assert!(!fault_counts(active, Some(true), true));
        assert!(!fault_counts(LogState::Idle, None, true));
        // A request at its limit that this fault does not count against is re-run, not failed.
        let waiting = TakenSlot {
            attempt: 5,
            charged: false,
            ..T
        };
        assert_eq!(
            decide_slot(Policy::Txipc, 2, false, waiting),
            SlotAction::Repost
        );
        assert_eq!(
            decide_slot(Policy::Txipc, 2, true, waiting),
            SlotAction::Fail(FailReason::Unavailable)
        );
    }

    #[test]
    fn baselines() {
        assert_eq!(
            decide_slot(Policy::Restart, 2, false, T),
            SlotAction::Fail(FailReason::Restarted)
        );
        // Taken and not rolled back: it may have run (it is not "did not run").
        assert_eq!(
            decide_slot(Policy::Restart, 2, true, T),
            SlotAction::Fail(FailReason::Interrupted)
        );
        assert_eq!(
            decide_slot(Policy::None, 2, false, T),
            SlotAction::Fail(FailReason::Interrupted)
        );
    }

    #[test]
    fn companion_requests_wait_until_poison_or_held() {
        let s = |charged| CompanionSlot { charged };
        assert_eq!(
            decide_companion_slot(2, false, s(0)),
            CompanionAction::Leave
        );
        assert_eq!(
            decide_companion_slot(2, false, s(2)),
            CompanionAction::Leave
        );
        assert_eq!(
            decide_companion_slot(2, false, s(3)),
            CompanionAction::FailAndSkip(FailReason::Poison { attempts: 3 })
        );
        assert_eq!(
            decide_companion_slot(2, true, s(0)),
            CompanionAction::FailAndSkip(FailReason::Unavailable)
        );
        // Poison wins over held: the client learns its request was the cause.
        assert_eq!(
            decide_companion_slot(0, true, s(1)),
            CompanionAction::FailAndSkip(FailReason::Poison { attempts: 1 })
        );
    }

    #[test]
    fn a_huge_attempt_word_cannot_overflow_or_count() {
        let s = TakenSlot {
            attempt: u32::MAX,
            ..T
        };
        assert_eq!(
            decide_slot(Policy::Txipc, 2, false, s),
            SlotAction::Fail(FailReason::Poison { attempts: u32::MAX })
        );
        // The kernel decides from its own book, not from the word.
        let mut book = AttemptBook::default();
        let k = (0, 1, 7);
        assert_eq!(book.attempts(k), 0);
        let s = TakenSlot {
            attempt: book.attempts(k),
            ..T
        };
        assert_eq!(decide_slot(Policy::Txipc, 2, false, s), SlotAction::Repost);
        book.reposted(k);
        book.reposted(k);
        assert_eq!(book.attempts(k), 2);
        book.retain(|key| key != k);
        assert!(book.is_empty());
    }

    #[test]
    fn governor_bounds_storms() {
        let limits = RestartLimits {
            min_interval_ms: 10,
            max_restarts: 3,
            window_ms: 100,
        };
        let mut g = RestartGovernor::new(Policy::Txipc, limits);
        assert_eq!(g.on_failure(0), RestartDecision::Now);
        assert_eq!(g.on_failure(5), RestartDecision::After(5));
        assert_eq!(g.on_failure(20), RestartDecision::Now);
        assert_eq!(g.on_failure(30), RestartDecision::HoldDown);
        // The window slides: 100 ms after the first restart there is room again.
        assert_eq!(g.on_failure(101), RestartDecision::Now);
        let mut none = RestartGovernor::new(Policy::None, limits);
        assert_eq!(none.on_failure(0), RestartDecision::Never);
    }

    #[test]
    fn would_restart_now_predicts_the_governor_and_stays_true() {
        let limits = RestartLimits {
            min_interval_ms: 10,
            max_restarts: 3,
            window_ms: 100,
        };
        let mut g = RestartGovernor::new(Policy::Txipc, limits);
        let mut t = 0u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += x % 40;
            let predicted = g.would_restart_now(t);
            // Once true it stays true while no failure comes.
            if predicted {
                assert!((0..200).all(|d| g.would_restart_now(t + d)));
            }
            assert_eq!(
                predicted,
                g.clone().on_failure(t) == RestartDecision::Now,
                "at {t}"
            );
            if x % 3 == 0 {
                g.on_failure(t);
            }
        }
        assert!(!RestartGovernor::new(Policy::None, limits).would_restart_now(0));
    }
}
