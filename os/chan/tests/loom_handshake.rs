//! Loom models of the wake-up handshakes (the algorithms, restated over loom atomics: the real
//! code's atomics live in shared memory, which loom cannot instrument).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p txipc-chan --test loom_handshake --release`.
//! A lost wake-up shows up as a loom deadlock (a thread blocked forever). The `*_without_fence`
//! models are negative controls (`--ignored`, one at a time): they must fail, or the model
//! proves nothing.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU32, Ordering::*, fence};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// The kernel futex: the compare and the enqueue happen under the bucket lock, and so does the
/// wake, exactly the property the real protocol relies on.
#[derive(Default)]
struct Futex {
    bucket: Mutex<()>,
    cv: Condvar,
}

impl Futex {
    fn wait(&self, word: &AtomicU32, seen: u32) {
        let g = self.bucket.lock().unwrap();
        if word.load(SeqCst) == seen {
            drop(self.cv.wait(g).unwrap());
        }
    }
    fn wake(&self) {
        let _g = self.bucket.lock().unwrap();
        self.cv.notify_all();
    }
}

#[derive(Default)]
struct Bell {
    posted: AtomicU32,
    sleeping: AtomicU32,
    word: AtomicU32,
    futex: Futex,
}

fn doorbell(with_fences: bool) {
    loom::model(move || {
        let b = Arc::new(Bell::default());
        let server = {
            let b = b.clone();
            thread::spawn(move || {
                // Doorbell::wait after its spin budget.
                loop {
                    b.sleeping.store(1, Relaxed);
                    if with_fences {
                        fence(SeqCst);
                    }
                    let seen = b.word.load(Acquire);
                    if b.posted.load(Relaxed) != 0 {
                        b.sleeping.store(0, Relaxed);
                        return;
                    }
                    b.futex.wait(&b.word, seen);
                    b.sleeping.store(0, Relaxed);
                }
            })
        };
        // Client: POSTED store, then Doorbell::ring.
        b.posted.store(1, Release);
        if with_fences {
            fence(SeqCst);
        }
        if b.sleeping.load(Relaxed) != 0 {
            b.word.fetch_add(1, Release);
            b.futex.wake();
        }
        server.join().unwrap();
    });
}

#[test]
fn doorbell_never_loses_a_post() {
    doorbell(true);
}

#[test]
#[ignore = "negative control: must fail with a loom deadlock (which aborts the process)"]
fn doorbell_without_fence_loses_a_post() {
    doorbell(false);
}

const POSTED: u32 = 2;
const REPLIED: u32 = 4;
const EPOCH: u32 = 0x100;
const DEAD: u32 = 1;

#[derive(Default)]
struct Slot {
    state: AtomicU32,
    client_waiting: AtomicU32,
    flags: AtomicU32,
    futex: Futex,
}

/// ClientChannel::wait_reply after its spin budget. Returns true for a reply, false for DEAD.
fn client_wait(s: &Slot, with_fences: bool) -> bool {
    loop {
        s.client_waiting.store(1, Relaxed);
        if with_fences {
            fence(SeqCst);
        }
        let w = s.state.load(Acquire);
        if w & 0xff == REPLIED {
            return true;
        }
        if s.flags.load(Acquire) & DEAD != 0 {
            return false;
        }
        s.futex.wait(&s.state, w);
    }
}

fn reply_handshake(with_fences: bool) {
    loom::model(move || {
        let s = Arc::new(Slot::default());
        s.state.store(POSTED, Relaxed);
        let client = {
            let s = s.clone();
            thread::spawn(move || assert!(client_wait(&s, with_fences)))
        };
        // ServerChannel::publish.
        let w = s.state.load(Relaxed);
        s.state
            .compare_exchange(w, (w & !0xff) | REPLIED, Release, Relaxed)
            .unwrap();
        if with_fences {
            fence(SeqCst);
        }
        if s.client_waiting.load(Relaxed) != 0 {
            s.futex.wake();
        }
        client.join().unwrap();
    });
}

#[test]
fn reply_never_lost() {
    reply_handshake(true);
}

#[test]
#[ignore = "negative control: must fail with a loom deadlock (which aborts the process)"]
fn reply_without_fence_is_lost() {
    reply_handshake(false);
}

#[test]
fn mark_dead_always_wakes_the_client() {
    loom::model(|| {
        let s = Arc::new(Slot::default());
        s.state.store(POSTED, Relaxed);
        let client = {
            let s = s.clone();
            thread::spawn(move || assert!(!client_wait(&s, true)))
        };
        // KernelChannel::mark_dead: flag, kick (epoch), wake.
        s.flags.fetch_or(DEAD, SeqCst);
        s.state.fetch_add(EPOCH, SeqCst);
        s.futex.wake();
        client.join().unwrap();
    });
}
