//! Kernel recovery operations against real (killed) server processes and waiting clients.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use txipc_chan::baseline::{EVENT_STOP, fork_child, run_echo_server};
use txipc_chan::{
    ChanError, ChannelLayout, ClientChannel, Doorbell, KernelChannel, ServerChannel, SlotState,
    SpinConfig, SpinMode, Status, create_channel, create_doorbell,
};

struct Setup {
    layout: ChannelLayout,
    chan: std::os::fd::OwnedFd,
    bell: std::os::fd::OwnedFd,
}

fn setup(nslots: u32) -> Setup {
    let layout = ChannelLayout {
        nslots,
        req_cap: 128,
        reply_cap: 128,
    };
    Setup {
        layout,
        chan: create_channel("rec", layout).unwrap(),
        bell: create_doorbell().unwrap(),
    }
}

const SLEEPER: SpinConfig = SpinConfig {
    mode: SpinMode::Pure,
    budget: Duration::ZERO,
};
const SPINNER: SpinConfig = SpinConfig {
    mode: SpinMode::Pure,
    budget: Duration::from_secs(3600),
};

/// A server incarnation that takes one request (and optionally writes its reply) and then
/// hangs until killed, as if it crashed mid-transaction.
fn take_and_hang(s: &Setup, write_reply: bool) -> txipc_chan::baseline::Child {
    let server = ServerChannel::map(&s.chan).unwrap();
    let bell = Doorbell::map(&s.bell).unwrap();
    // SAFETY: fork_child items 1-3: the test thread forks while the harness's other threads run; the
    // child only uses channel/doorbell mappings made before the fork (atomics, raw copies, futexes)
    // and returns a code: it takes no lock, owns nothing with an outside effect, and prints only
    // in a panic, that is when the test fails anyway.
    unsafe {
        fork_child(move || {
            let mut buf = Vec::new();
            loop {
                if let Some(t) = server.take_into(&mut buf) {
                    if write_reply {
                        let mut r = b"committed:".to_vec();
                        r.extend_from_slice(&buf);
                        let _ = server.write_reply(t.slot, Status::Ok, &r);
                    }
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                bell.wait([&server], Duration::ZERO, None);
            }
        })
    }
    .unwrap()
}

fn echo_server(s: &Setup) -> (txipc_chan::baseline::Child, Doorbell) {
    let server = ServerChannel::map(&s.chan).unwrap();
    let bell = Doorbell::map(&s.bell).unwrap();
    // SAFETY: fork_child items 1-3: the test thread forks while the harness's other threads run; the
    // child only uses channel/doorbell mappings made before the fork (atomics, raw copies, futexes)
    // and returns a code: it takes no lock, owns nothing with an outside effect, and prints only
    // in a panic, that is when the test fails anyway.
    let child = unsafe {
        fork_child(|| {
            run_echo_server(std::slice::from_ref(&server), &bell, Duration::ZERO);
            0
        })
    }
    .unwrap();
    (child, bell)
}

fn state(k: &KernelChannel, slot: usize) -> SlotState {
    k.snapshot(slot).unwrap().state
}

#[test]
fn taken_slot_is_reposted_with_attempt_raised_and_taken_again() {
    let s = setup(2);
    let k = KernelChannel::map(&s.chan).unwrap();
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(SLEEPER);
    std::thread::scope(|sc| {
        let call = sc.spawn(|| {
            let mut reply = Vec::new();
            let r = client.call(9, b"do it once", &mut reply, None).unwrap();
            (r, reply)
        });
        let dying = take_and_hang(&s, false);
        wait_until("the server to take the request", || {
            k.slots().any(|x| x.state == SlotState::Taken)
        });
        let snap = k.slots().find(|x| x.state == SlotState::Taken).unwrap();
        assert_eq!(snap.attempt, 0);
        dying.kill().unwrap(); // confirmed dead from here on

        assert!(
            !k.repost(snap.slot, snap.seq + 1),
            "wrong seq must be refused"
        );
        assert!(k.repost(snap.slot, snap.seq));
        assert!(!k.repost(snap.slot, snap.seq), "no longer TAKEN");
        let again = k.snapshot(snap.slot).unwrap();
        assert_eq!(
            (again.state, again.attempt, again.seq),
            (SlotState::Posted, 1, snap.seq)
        );

        k.set_generation(2);
        let (next, bell) = echo_server(&s);
        let (r, reply) = call.join().unwrap();
        assert_eq!((r.status, r.attempt), (Status::Ok, 1));
        assert_eq!(reply, b"do it once");
        assert_eq!(client.generation(), 2);
        bell.notify(EVENT_STOP);
        assert_eq!(next.wait_within(Duration::from_secs(60)).unwrap(), Some(0));
    });
}

fn fail_delivers_status(spin: SpinConfig, sleeping: bool) {
    let s = setup(1);
    let k = KernelChannel::map(&s.chan).unwrap();
    let raw = RawMap::new(&s.chan, s.layout.total_size());
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(spin);
    std::thread::scope(|sc| {
        let call = sc.spawn(|| client.call(1, b"poison", &mut Vec::new(), None));
        // A server takes it and dies with it.
        let dying = take_and_hang(&s, false);
        wait_until("TAKEN", || state(&k, 0) == SlotState::Taken);
        dying.kill().unwrap();
        if sleeping {
            wait_until("the client to sleep in futex_wait", || {
                raw.u32(ctl(0) + CLIENT_WAITING).load(Ordering::Acquire) == 1
            });
        } else {
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                raw.u32(ctl(0) + CLIENT_WAITING).load(Ordering::Acquire),
                0,
                "client spins"
            );
        }
        let seq = k.snapshot(0).unwrap().seq;
        assert!(k.fail(0, seq, Status::Aborted));
        let r = call.join().unwrap().unwrap();
        assert_eq!(r.status, Status::Aborted);
        assert_eq!(state(&k, 0), SlotState::Free, "the client freed the slot");
    });
}

#[test]
fn fail_delivers_status_to_a_client_sleeping_in_futex() {
    fail_delivers_status(SLEEPER, true);
}

#[test]
fn fail_delivers_status_to_a_spinning_client() {
    fail_delivers_status(SPINNER, false);
}

/// A client asleep on its reply and woken by a spare's takeover (`FLAG_TAKEOVER`, then
/// `wake_waiters`, at the spare's claim) does not go back to sleep: it spins for the reply, so
/// the re-run's reply finds it awake (ARCHITECTURE.md §6, "What a recovery does"). Seen as its
/// `client_waiting` word cleared after the wake; before, the client set it again and slept.
#[test]
fn a_client_woken_without_its_reply_spins_for_it_instead_of_sleeping_again() {
    let s = setup(1);
    let k = KernelChannel::map(&s.chan).unwrap();
    let raw = RawMap::new(&s.chan, s.layout.total_size());
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(SpinConfig {
        mode: SpinMode::Pure,
        budget: Duration::from_micros(20),
    });
    let waiting = || raw.u32(ctl(0) + CLIENT_WAITING).load(Ordering::Acquire);
    std::thread::scope(|sc| {
        let call = sc.spawn(|| client.call(1, b"re-run me", &mut Vec::new(), None));
        let dying = take_and_hang(&s, false);
        wait_until("TAKEN", || state(&k, 0) == SlotState::Taken);
        wait_until("the client to sleep in futex_wait", || waiting() == 1);
        dying.kill().unwrap();
        // A spare's claim: the TAKEOVER flag, then the wake (and later its settling): each
        // wake is followed by a bounded spin of the client, so the word is seen 0 after one
        // of them (the loop bounds the test, it times nothing).
        k.set_takeover(true);
        let mut spun = false;
        for _ in 0..2_000 {
            k.wake_waiters();
            std::thread::sleep(Duration::from_micros(100));
            if waiting() == 0 {
                spun = true;
                break;
            }
        }
        // Answered first, so that a failure below does not leave the client waiting.
        let seq = k.snapshot(0).unwrap().seq;
        assert!(k.fail(0, seq, Status::Interrupted));
        let r = call.join().unwrap().unwrap();
        assert!(
            spun,
            "the woken client went back to sleep instead of spinning"
        );
        assert_eq!(r.status, Status::Interrupted);
        assert_eq!(state(&k, 0), SlotState::Free, "the client freed the slot");
    });
}

#[test]
fn fail_works_on_posted_slots_while_no_server_runs() {
    let s = setup(1);
    let k = KernelChannel::map(&s.chan).unwrap();
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(SLEEPER);
    std::thread::scope(|sc| {
        let call = sc.spawn(|| client.call(1, b"anyone?", &mut Vec::new(), None));
        wait_until("POSTED", || state(&k, 0) == SlotState::Posted);
        let seq = k.snapshot(0).unwrap().seq;
        assert!(k.fail(0, seq, Status::Unavailable));
        assert_eq!(call.join().unwrap().unwrap().status, Status::Unavailable);
    });
}

#[test]
fn publish_written_delivers_a_committed_reply() {
    let s = setup(1);
    let k = KernelChannel::map(&s.chan).unwrap();
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(SLEEPER);
    std::thread::scope(|sc| {
        let call = sc.spawn(|| {
            let mut reply = Vec::new();
            let r = client.call(1, b"x", &mut reply, None);
            (r, reply)
        });
        let dying = take_and_hang(&s, true);
        wait_until("TAKEN", || state(&k, 0) == SlotState::Taken);
        // Reply written, commit point passed, not yet published: then the server dies.
        std::thread::sleep(Duration::from_millis(10));
        dying.kill().unwrap();
        let seq = k.snapshot(0).unwrap().seq;
        assert!(k.publish_written(0, seq));
        let (r, reply) = call.join().unwrap();
        assert_eq!(r.unwrap().status, Status::Ok);
        assert_eq!(reply, b"committed:x");
    });
}

fn close_wakes(spin: SpinConfig, dead: bool) {
    let s = setup(2);
    let k = KernelChannel::map(&s.chan).unwrap();
    let raw = RawMap::new(&s.chan, s.layout.total_size());
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(spin);
    std::thread::scope(|sc| {
        let call = sc.spawn(|| client.call(1, b"wait forever?", &mut Vec::new(), None));
        wait_until("POSTED", || k.slots().any(|x| x.state == SlotState::Posted));
        if spin == SLEEPER {
            wait_until("the client to sleep", || {
                (0..2).any(|i| raw.u32(ctl(i) + CLIENT_WAITING).load(Ordering::Acquire) == 1)
            });
        }
        if dead {
            k.mark_dead()
        } else {
            k.mark_revoked()
        }
        let e = call.join().unwrap().unwrap_err();
        if dead {
            assert!(matches!(e, ChanError::Dead), "{e}");
            assert!(client.is_dead());
            // Nobody settled the POSTED request (it stands for one posted after the kernel's
            // last pass over the slots): the client withdrew it itself when it saw the flag,
            // instead of waiting for a settlement that does not come (it used to wait 200 ms
            // and leave the slot POSTED).
            assert!(
                k.slots().all(|x| x.state == SlotState::Free),
                "a request left behind on a dead channel: {:?}",
                k.slots().map(|x| x.state).collect::<Vec<_>>()
            );
        } else {
            assert!(matches!(e, ChanError::Revoked), "{e}");
            assert!(client.is_revoked());
        }
    });
    // Later calls fail at once.
    let e = client
        .call(1, b"and now?", &mut Vec::new(), None)
        .unwrap_err();
    assert!(matches!(e, ChanError::Dead | ChanError::Revoked));
}

#[test]
fn mark_dead_wakes_a_sleeping_client_with_an_error() {
    close_wakes(SLEEPER, true);
}

#[test]
fn mark_dead_stops_a_spinning_client() {
    close_wakes(SPINNER, true);
}

/// The kernel's order when a server is gone for good: every taken slot settled
/// (`Interrupted`), then the channel marked DEAD. The client of the taken request reads the
/// status from its slot, sleeping or spinning, and a later call fails at once.
#[test]
fn a_taken_request_settled_interrupted_before_dead_is_answered_from_its_slot() {
    for spin in [SLEEPER, SPINNER] {
        let s = setup(1);
        let k = KernelChannel::map(&s.chan).unwrap();
        let client = ClientChannel::map(&s.chan).unwrap().with_spin(spin);
        std::thread::scope(|sc| {
            let call = sc.spawn(|| client.call(1, b"taken", &mut Vec::new(), None));
            let hung = take_and_hang(&s, false);
            wait_until("TAKEN", || state(&k, 0) == SlotState::Taken);
            hung.kill().unwrap();
            let seq = k.snapshot(0).unwrap().seq;
            assert!(k.fail(0, seq, Status::Interrupted));
            k.mark_dead();
            let r = call.join().unwrap().unwrap();
            assert_eq!(r.status, Status::Interrupted);
        });
        assert!(matches!(
            client.call(1, b"again", &mut Vec::new(), None),
            Err(ChanError::Dead)
        ));
    }
}

#[test]
fn mark_revoked_wakes_a_sleeping_client_with_an_error() {
    close_wakes(SLEEPER, false);
}

#[test]
fn timeout_retracts_an_untaken_request() {
    let s = setup(1);
    let k = KernelChannel::map(&s.chan).unwrap();
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(SLEEPER);
    let e = client
        .call(
            1,
            b"nobody",
            &mut Vec::new(),
            Some(Duration::from_millis(20)),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            ChanError::Timeout {
                retracted: true,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(state(&k, 0), SlotState::Free);
}

#[test]
fn timeout_leaves_a_taken_slot_that_is_reused_once_replied() {
    let s = setup(1);
    let k = KernelChannel::map(&s.chan).unwrap();
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(SLEEPER);
    let hung = take_and_hang(&s, false);
    let e = client
        .call(1, b"slow", &mut Vec::new(), Some(Duration::from_millis(50)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            ChanError::Timeout {
                retracted: false,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(state(&k, 0), SlotState::Taken);
    // Recovery answers it; the only slot must become usable again.
    hung.kill().unwrap();
    assert!(k.fail(0, k.snapshot(0).unwrap().seq, Status::Restarted));
    let (srv, bell) = echo_server(&s);
    let mut reply = Vec::new();
    let r = client
        .call(2, b"fresh", &mut reply, Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!((r.status, reply.as_slice()), (Status::Ok, &b"fresh"[..]));
    bell.notify(EVENT_STOP);
    assert_eq!(srv.wait_within(Duration::from_secs(60)).unwrap(), Some(0));
}

/// Crash point "after the REPLIED store, before the futex wake" (inside `publish`): the client
/// sleeps on an answered slot; `wake_waiters` (run by recovery) gets it its reply.
#[test]
fn wake_waiters_rescues_a_client_whose_server_died_before_waking_it() {
    let s = setup(1);
    let k = KernelChannel::map(&s.chan).unwrap();
    let raw = RawMap::new(&s.chan, s.layout.total_size());
    let server = ServerChannel::map(&s.chan).unwrap();
    let client = ClientChannel::map(&s.chan).unwrap().with_spin(SLEEPER);
    std::thread::scope(|sc| {
        let call = sc.spawn(|| {
            let mut reply = Vec::new();
            let r = client.call(1, b"q", &mut reply, None);
            (r, reply)
        });
        wait_until("POSTED", || state(&k, 0) == SlotState::Posted);
        let t = server.try_take().unwrap();
        server.write_reply(t.slot, Status::Ok, b"answer").unwrap();
        wait_until("the client to sleep", || {
            raw.u32(ctl(0) + CLIENT_WAITING).load(Ordering::Acquire) == 1
        });
        // The REPLIED transition of `publish`, and then the server "dies" before it announces
        // the reply on the reply line (and before its wake).
        let w = raw.u32(ctl(0) + STATE).load(Ordering::Acquire);
        assert_eq!(w & 0xff, TAKEN);
        raw.u32(ctl(0) + STATE)
            .store((w & !0xff) | REPLIED, Ordering::SeqCst);
        // Exactly one sleeper, still queued on its answered slot: nobody else will wake it.
        assert_eq!(k.wake_waiters(), 1);
        let (r, reply) = call.join().unwrap();
        assert_eq!(r.unwrap().status, Status::Ok);
        assert_eq!(reply, b"answer");
    });
}
