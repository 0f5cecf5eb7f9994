//! Transactions begun lazily (`Heap::begin_lazy_in`): one that only reads writes nothing
//! shared, and one that writes is a whole transaction from its first write on — checked in
//! process and with a real process SIGKILLed at each point (ARCHITECTURE.md §5, "A transaction
//! that writes nothing").

mod common;

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use common::{new_root, no_core};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe};
use txipc_heap::{
    BatchEntry, Heap, Tracking, TxState, create_heap_memfd, create_log_memfd, read_log, recover,
};

/// Each test's heap lives at its own base: the tests run on threads of one process, and a
/// forked child inherits every heap mapped there at that instant (its `attach` at a base
/// another test holds fails with "already mapped").
fn base(n: usize) -> usize {
    0x6300_0000_0000 + n * (1 << 32)
}

fn entry(slot: u32, seq: u64) -> BatchEntry {
    BatchEntry { chan: 1, slot, seq }
}

/// The log's bytes, whole (header, batch descriptor and records).
fn log_bytes(lfd: &OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(lfd.try_clone().unwrap());
    let mut v = Vec::new();
    std::io::Seek::rewind(&mut f).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

/// One transaction that writes (txid 1, serving slot 0 seq 10), committed: the log then says
/// COMMITTED(1) with that batch.
fn committed_first(heap: &Heap, root: &common::Root) {
    let mut tx = heap.begin(1).unwrap();
    tx.add_batch_entry(entry(0, 10)).unwrap();
    root.txs.set(&tx, 5).unwrap();
    tx.commit().unwrap();
}

#[test]
fn a_lazy_transaction_that_only_reads_leaves_the_log_byte_for_byte_as_it_was() {
    let hfd = create_heap_memfd("lazy-h", 1 << 20).unwrap();
    let lfd = create_log_memfd("lazy-l", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(1), Tracking::Typed).unwrap();
    let root: &common::Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    committed_first(&heap, root);
    let before = log_bytes(&lfd);
    for txid in 2..50 {
        let mut tx = heap.begin_lazy_in(txid, None).unwrap();
        tx.add_batch_entry(entry((txid % 3) as u32, 100 + txid))
            .unwrap();
        assert!(tx.is_deferred() && heap.open_is_deferred());
        assert_eq!(root.txs.get(), 5);
        let sp = tx.savepoint().unwrap();
        tx.rollback_to(sp).unwrap();
        if txid % 2 == 0 {
            tx.commit().unwrap();
        } else {
            tx.abort().unwrap();
        }
    }
    assert_eq!(
        log_bytes(&lfd),
        before,
        "a transaction that wrote nothing changed the log"
    );
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!(snap.state, TxState::Committed(1));
    assert_eq!(snap.batch, vec![entry(0, 10)]);
}

#[test]
fn a_lazy_transaction_that_writes_names_its_whole_batch_and_commits_as_one() {
    let hfd = create_heap_memfd("lazy-h2", 1 << 20).unwrap();
    let lfd = create_log_memfd("lazy-l2", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(2), Tracking::Typed).unwrap();
    let root: &common::Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    committed_first(&heap, root);
    let mut tx = heap.begin_lazy_in(2, None).unwrap();
    tx.add_batch_entry(entry(1, 20)).unwrap();
    tx.add_batch_entry(entry(2, 21)).unwrap();
    assert_eq!(read_log(lfd.as_fd()).unwrap().state, TxState::Committed(1));
    // The first write makes it ACTIVE with the batch named, before its undo record.
    root.txs.set(&tx, 6).unwrap();
    assert!(!tx.is_deferred());
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!(snap.state, TxState::Active(2));
    assert_eq!(snap.records, 1);
    tx.add_batch_entry(entry(3, 22)).unwrap();
    tx.commit().unwrap();
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!(snap.state, TxState::Committed(2));
    assert_eq!(snap.batch, vec![entry(1, 20), entry(2, 21), entry(3, 22)]);
    // Activated on request (before a nested call) without a write: ACTIVE, batch named.
    let mut tx = heap.begin_lazy_in(3, None).unwrap();
    tx.add_batch_entry(entry(4, 30)).unwrap();
    heap.activate_open();
    assert!(!tx.is_deferred());
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!((snap.state, snap.records), (TxState::Active(3), 0));
    tx.commit().unwrap();
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!(snap.state, TxState::Committed(3));
    assert_eq!(snap.batch, vec![entry(4, 30)]);
    // Under page tracking the begin is eager (a page write is not seen before it happens).
    let hfd = create_heap_memfd("lazy-h3", 1 << 20).unwrap();
    let lfd = create_log_memfd("lazy-l3", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(3), Tracking::Page).unwrap();
    let tx = heap.begin_lazy_in(1, None).unwrap();
    assert!(!tx.is_deferred());
    assert_eq!(read_log(lfd.as_fd()).unwrap().state, TxState::Active(1));
    tx.commit().unwrap();
}

/// Kills its child on drop (a failed assertion must not leave it running).
struct Child(Pid);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
        let _ = waitpid(self.0, None);
    }
}

/// Forks a child that commits the first transaction, then runs `then` inside a lazy
/// transaction 2 serving slot 5 seq 50 and slot 6 seq 51, says so on a pipe and waits to be
/// killed; returns once it said so.
fn child_stopped_in_lazy_tx(hfd: &OwnedFd, lfd: &OwnedFd, at: usize, write: bool) -> Child {
    let (r, w) = pipe().unwrap();
    // SAFETY: the child runs heap code, writes one byte and spins until killed; it never
    // returns into the test harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            no_core();
            drop(r);
            let run = || -> Result<(), txipc_heap::HeapError> {
                let heap = Heap::attach(hfd, lfd, at, Tracking::Typed)?;
                let root: &common::Root = heap.root_or_init(|_| Ok(new_root()))?;
                committed_first(&heap, root);
                let mut tx = heap.begin_lazy_in(2, None)?;
                tx.add_batch_entry(entry(5, 50))?;
                tx.add_batch_entry(entry(6, 51))?;
                let _ = root.txs.get();
                if write {
                    root.txs.set(&tx, 99)?;
                }
                let _ = nix::unistd::write(&w, b"x");
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            };
            let e = run().unwrap_err();
            let _ = nix::unistd::write(std::io::stderr(), format!("lazy child: {e}\n").as_bytes());
            // SAFETY: `_exit` ends the forked child at once, without unwinding into the copy of
            // the test harness it runs in.
            unsafe { nix::libc::_exit(3) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let guard = Child(child);
            let mut f = std::fs::File::from(r);
            let mut b = [0u8; 1];
            assert_eq!(
                f.read(&mut b).unwrap(),
                1,
                "the child died before its point"
            );
            guard
        }
    }
}

fn kill_and_recover(c: Child, hfd: &OwnedFd, lfd: &OwnedFd) -> txipc_heap::Recovery {
    kill(c.0, Signal::SIGKILL).unwrap();
    match waitpid(c.0, None).unwrap() {
        WaitStatus::Signaled(_, Signal::SIGKILL, _) => {}
        other => panic!("child ended with {other:?}"),
    }
    std::mem::forget(c);
    recover(hfd.as_fd(), lfd.as_fd()).unwrap()
}

#[test]
fn a_process_killed_in_a_lazy_transaction_is_recovered_as_if_it_had_begun_at_its_first_write() {
    // Killed before any write: the log says how transaction 1 ended, with its batch (the
    // kernel publishes nothing new and re-posts the TAKEN requests, charged: a committed
    // log names none of them); nothing is undone.
    let hfd = create_heap_memfd("lazy-k1", 1 << 20).unwrap();
    let lfd = create_log_memfd("lazy-kl1", 1 << 16).unwrap();
    let c = child_stopped_in_lazy_tx(&hfd, &lfd, base(4), false);
    let r = kill_and_recover(c, &hfd, &lfd);
    assert_eq!(r.prior, TxState::Committed(1));
    assert_eq!(r.batch, vec![entry(0, 10)]);
    assert!(r.running.is_empty());
    assert_eq!(r.undone.records, 0);
    // Killed after its first write: ACTIVE(2), both of its requests named as running (the
    // fault is charged to them), the write undone.
    let hfd = create_heap_memfd("lazy-k2", 1 << 20).unwrap();
    let lfd = create_log_memfd("lazy-kl2", 1 << 16).unwrap();
    let c = child_stopped_in_lazy_tx(&hfd, &lfd, base(5), true);
    let r = kill_and_recover(c, &hfd, &lfd);
    assert_eq!(r.prior, TxState::Active(2));
    assert_eq!(r.running, vec![entry(5, 50), entry(6, 51)]);
    assert_eq!(r.undone.records, 1);
    let heap = Heap::attach(&hfd, &lfd, base(5), Tracking::Typed).unwrap();
    let root: &common::Root = heap.root().unwrap().unwrap();
    assert_eq!(
        root.txs.get(),
        5,
        "the killed transaction's write is undone"
    );
}

/// `Heap::begin_into` (the serve loop's begin: the transaction built in its holder's slot)
/// begins as `begin_lazy_in` / `begin_in` do: lazily, a write-free transaction leaves the log
/// as it was; eagerly, or at its first write, it is ACTIVE with its batch named. A second
/// begin into a slot whose transaction is open fails and leaves that one as it was.
#[test]
fn a_transaction_built_in_its_slot_begins_as_a_returned_one() {
    let hfd = create_heap_memfd("lazy-h4", 1 << 20).unwrap();
    let lfd = create_log_memfd("lazy-l4", 1 << 16).unwrap();
    let heap = Heap::attach(&hfd, &lfd, base(6), Tracking::Typed).unwrap();
    let root: &common::Root = heap.root_or_init(|_| Ok(new_root())).unwrap();
    committed_first(&heap, root);
    let before = log_bytes(&lfd);
    let mut slot = None;
    for txid in 2..10 {
        let tx = heap.begin_into(txid, None, true, &mut slot).unwrap();
        tx.add_batch_entry(entry(0, 100 + txid)).unwrap();
        assert!(tx.is_deferred() && heap.open_is_deferred());
        assert_eq!(slot.as_ref().map(|t| t.txid()), Some(txid));
        slot.take().unwrap().commit().unwrap();
    }
    assert_eq!(
        log_bytes(&lfd),
        before,
        "a write-free transaction wrote the log"
    );
    // Open in the slot: a second begin fails, the open one stays and still commits.
    let tx = heap.begin_into(10, None, true, &mut slot).unwrap();
    tx.add_batch_entry(entry(1, 110)).unwrap();
    assert!(matches!(
        heap.begin_into(11, None, true, &mut slot),
        Err(txipc_heap::HeapError::TxOpen)
    ));
    let tx = slot.as_mut().unwrap();
    assert_eq!(tx.txid(), 10);
    root.txs.set(tx, 7).unwrap();
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!((snap.state, snap.records), (TxState::Active(10), 1));
    slot.take().unwrap().commit().unwrap();
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!(snap.state, TxState::Committed(10));
    assert_eq!(snap.batch, vec![entry(1, 110)]);
    // Eager: ACTIVE at once, and its batch entry is in the log before any write.
    let tx = heap.begin_into(12, None, false, &mut slot).unwrap();
    assert!(!tx.is_deferred());
    tx.add_batch_entry(entry(2, 120)).unwrap();
    let snap = read_log(lfd.as_fd()).unwrap();
    assert_eq!(snap.state, TxState::Active(12));
    assert_eq!(snap.batch, vec![entry(2, 120)]);
    slot.take().unwrap().abort().unwrap();
    assert_eq!(root.txs.get(), 7);
    assert_eq!(read_log(lfd.as_fd()).unwrap().state, TxState::Aborted(12));
}
