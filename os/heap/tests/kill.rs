//! Real processes, real SIGKILL: a child runs transactions on the heap and is killed at random
//! instants; the parent recovers from the log (as the kernel does) and checks the heap against
//! a model of the committed transactions, every time. Typed and page tracking.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use common::{Model, model_tx, new_root, no_core, read, run_tx, run_tx_steps};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use txipc_heap::{
    BatchEntry, Heap, PageBackend, Tracking, TxState, create_heap_memfd, create_log_memfd, recover,
};

fn child(
    hfd: &OwnedFd,
    lfd: &OwnedFd,
    base: usize,
    (tracking, backend): (Tracking, PageBackend),
    start: u64,
) -> ! {
    let code = (|| -> Result<(), txipc_heap::HeapError> {
        let heap = Heap::attach_with(hfd, lfd, base, tracking, backend)?;
        if tracking == Tracking::Page
            && backend == PageBackend::Uffd
            && heap.page_tracker() != Some("uffd")
        {
            // This kernel lacks asynchronous write-protect: the campaign would test the
            // SIGSEGV tracker twice. Exit code 3 fails it.
            return Err(txipc_heap::HeapError::Invalid("no uffd tracker here"));
        }
        let root: &common::Root = heap.root_or_init(|_| Ok(new_root()))?;
        for txid in start..start + 1_000_000 {
            let mut tx = heap.begin(txid)?;
            tx.add_batch_entry(BatchEntry {
                chan: 0,
                slot: (txid % 7) as u32,
                seq: txid,
            })?;
            // Every other transaction takes a savepoint before each operation (the shape of a
            // group commit): under page tracking its later writes to pages captured before
            // a savepoint are exact-byte records, killed at random instants too.
            if txid % 2 == 0 {
                run_tx_steps(root, &mut tx, txid)?;
            } else {
                run_tx(root, &mut tx, txid)?;
            }
            tx.commit()?;
        }
        Ok(())
    })();
    // SAFETY: _exit in a forked child: no destructors, no atexit handlers of the test harness.
    unsafe { nix::libc::_exit(if code.is_ok() { 0 } else { 3 }) }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn campaign(tracking: (Tracking, PageBackend), base: usize, runs: usize, seed: u64) {
    let hfd = create_heap_memfd("kill-heap", 4 << 20).unwrap();
    let lfd = create_log_memfd("kill-log", 2 << 20).unwrap();
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut last = 0u64; // last committed txid (0 = root init)
    let mut committed_runs = 0;
    let mut active_runs = 0;
    for run in 0..runs {
        // SAFETY: the child only runs heap code and _exits; it never returns into the harness.
        let pid = match unsafe { fork() }.unwrap() {
            ForkResult::Child => child(&hfd, &lfd, base, tracking, last + 1),
            ForkResult::Parent { child } => child,
        };
        std::thread::sleep(Duration::from_micros(rng.next() % 3000));
        let _ = kill(pid, Signal::SIGKILL);
        match waitpid(pid, None).unwrap() {
            WaitStatus::Signaled(_, Signal::SIGKILL, _) => {}
            other => panic!("run {run}: child ended with {other:?}"),
        }
        let r = recover(hfd.as_fd(), lfd.as_fd()).unwrap();
        let now = match r.prior {
            TxState::Idle => last,
            TxState::Committed(t) => {
                committed_runs += 1;
                // txid 0 is the root's initialisation, which serves no request.
                let want = if t == 0 {
                    vec![]
                } else {
                    vec![BatchEntry {
                        chan: 0,
                        slot: (t % 7) as u32,
                        seq: t,
                    }]
                };
                assert_eq!(
                    r.batch, want,
                    "run {run}: batch descriptor of committed tx {t}"
                );
                t
            }
            TxState::Active(t) | TxState::Aborted(t) => {
                if matches!(r.prior, TxState::Active(_)) {
                    active_runs += 1;
                }
                // t never committed; everything before it did (t - 1 may be the parent's
                // verification transaction, which aborts and counts as nothing).
                t.saturating_sub(1)
            }
        };
        assert!(now >= last, "run {run}: went back from {last} to {now}");
        for t in last + 1..=now {
            model_tx(&mut model, t);
        }
        last = now;
        let heap = Heap::attach(&hfd, &lfd, base, Tracking::Typed).unwrap();
        if let Some(root) = heap.root::<common::Root>().unwrap() {
            // Read inside transaction last + 1, then abort it: the log says ABORTED(last + 1),
            // which the next run reads as "nothing after `last`".
            let tx = heap.begin(last + 1).unwrap();
            assert_eq!(
                read(root, &tx),
                model,
                "run {run}: heap differs from the model at tx {last}"
            );
            tx.abort().unwrap();
            heap.check(false).unwrap();
        } else {
            assert_eq!(last, 0);
        }
    }
    eprintln!(
        "{tracking:?}: {runs} kills, {last} transactions committed, killed mid-transaction {active_runs} times, after a commit {committed_runs} times"
    );
    assert!(
        active_runs > runs / 10,
        "kills should land inside transactions"
    );
}

#[test]
fn sigkill_at_random_instants_typed() {
    no_core();
    campaign(
        (Tracking::Typed, PageBackend::Sigsegv),
        0x6300_0000_0000,
        500,
        0x5eed_1234,
    );
}

#[test]
fn sigkill_at_random_instants_page() {
    no_core();
    campaign(
        (Tracking::Page, PageBackend::Sigsegv),
        0x6400_0000_0000,
        300,
        0x5eed_9876,
    );
}

/// The same with the uffd tracker: a kill lands before, inside or after a flush (the working
/// copy moved into the memfd at commit), and the memfd is always the last committed state.
#[test]
fn sigkill_at_random_instants_page_uffd() {
    no_core();
    campaign(
        (Tracking::Page, PageBackend::Uffd),
        0x6c00_0000_0000,
        300,
        0x5eed_4321,
    );
}
