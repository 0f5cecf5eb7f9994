//! Page tracking: typed collections and an unmodified `hashbrown` map in the heap, rolled back
//! from whole-page records; real faults still kill the process.
//!
//! One page tracker per process, so the in-process cases run in one test, in sequence.

mod common;

use std::os::fd::AsFd;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use txipc_heap::{
    Heap, HeapAlloc, PageBackend, StableState, Tracking, TxState, create_heap_memfd,
    create_log_memfd, heap_bytes, recover,
};

type HMap = hashbrown::HashMap<u64, u64, StableState, HeapAlloc>;

/// The tracker is process-wide (and a fork inherits it): these tests take turns.
static ONE_TRACKER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn page_tracking_rolls_back_typed_and_hashbrown() {
    let _g = ONE_TRACKER.lock().unwrap_or_else(|e| e.into_inner());
    rolls_back(PageBackend::Sigsegv, 0);
    rolls_back(PageBackend::Uffd, 0x10_0000_0000);
}

/// The in-process cases with one page tracker; heaps at the usual bases plus `shift`.
fn rolls_back(backend: PageBackend, shift: usize) {
    let attach = |h: &std::os::fd::OwnedFd, l: &std::os::fd::OwnedFd, base: usize, t: Tracking| {
        let heap = Heap::attach_with(h, l, base + shift, t, backend).unwrap();
        if t == Tracking::Page {
            let want = match backend {
                PageBackend::Uffd => "uffd",
                PageBackend::Sigsegv => "sigsegv",
            };
            assert_eq!(
                heap.page_tracker(),
                Some(want),
                "{backend:?} on this kernel"
            );
        }
        heap
    };
    // Typed collections, tracked by pages: in-place abort and crash + recover.
    {
        let hfd = create_heap_memfd("pg", 4 << 20).unwrap();
        let lfd = create_log_memfd("pl", 4 << 20).unwrap();
        let heap = attach(&hfd, &lfd, 0x6500_0000_0000, Tracking::Page);
        let root: &common::Root = heap.root_or_init(|_| Ok(common::new_root())).unwrap();
        for t in 1..50 {
            let mut tx = heap.begin(t).unwrap();
            common::run_tx(root, &mut tx, t).unwrap();
            tx.commit().unwrap();
        }
        let before = heap_bytes(hfd.as_fd()).unwrap();
        let mut tx = heap.begin(50).unwrap();
        for t in 50..80 {
            common::run_tx(root, &mut tx, t).unwrap();
        }
        // The SIGSEGV tracker logs pre-images at each first write, the uffd tracker when it
        // moves written pages into the memfd (commit, savepoint): take a savepoint so that
        // both have logged by now.
        let _ = tx.savepoint().unwrap();
        assert!(tx.records() > 0, "pages were captured");
        assert_eq!(tx.log_used() % (4096 + 16), 0, "whole-page records");
        tx.abort().unwrap();
        assert_eq!(heap_bytes(hfd.as_fd()).unwrap(), before);

        // Savepoint inside a page-tracked transaction.
        let mut tx = heap.begin(51).unwrap();
        common::run_tx(root, &mut tx, 51).unwrap();
        let sp = tx.savepoint().unwrap();
        // Taken after the savepoint: the uffd tracker moves the working copy into the memfd
        // there (the SIGSEGV tracker writes the memfd in place all along).
        let mid = heap_bytes(hfd.as_fd()).unwrap();
        for t in 52..60 {
            common::run_tx(root, &mut tx, t).unwrap();
        }
        tx.rollback_to(sp).unwrap();
        assert_eq!(heap_bytes(hfd.as_fd()).unwrap(), mid);
        common::run_tx(root, &mut tx, 99).unwrap();
        tx.abort().unwrap();
        assert_eq!(heap_bytes(hfd.as_fd()).unwrap(), before);

        // Crash: forget the transaction, recover from another mapping.
        let mut tx = heap.begin(52).unwrap();
        for t in 100..130 {
            common::run_tx(root, &mut tx, t).unwrap();
        }
        std::mem::forget(tx);
        let r = recover(hfd.as_fd(), lfd.as_fd()).unwrap();
        assert_eq!(r.prior, TxState::Active(52));
        assert_eq!(heap_bytes(hfd.as_fd()).unwrap(), before);
    }

    // hashbrown in the heap through the allocator handle.
    let hfd = create_heap_memfd("pg2", 8 << 20).unwrap();
    let lfd = create_log_memfd("pl2", 8 << 20).unwrap();
    let heap = attach(&hfd, &lfd, 0x6600_0000_0000, Tracking::Page);
    heap.page_root_or_init::<HMap>(|a| HMap::with_hasher_in(StableState, a))
        .unwrap();
    let mut tx = heap.begin(1).unwrap();
    {
        let m = tx.page_root::<HMap>().unwrap();
        for i in 0..2000 {
            m.insert(i, i * 2);
        }
    }
    tx.commit().unwrap();
    let before = heap_bytes(hfd.as_fd()).unwrap();
    let mut tx = heap.begin(2).unwrap();
    {
        let m = tx.page_root::<HMap>().unwrap();
        for i in 0..1000 {
            m.remove(&i);
        }
        for i in 10_000..20_000 {
            m.insert(i, i);
        }
        assert_eq!(m.len(), 11_000);
    }
    tx.abort().unwrap();
    assert_eq!(
        heap_bytes(hfd.as_fd()).unwrap(),
        before,
        "hashbrown map rolled back"
    );
    let mut tx = heap.begin(3).unwrap();
    {
        let m = tx.page_root::<HMap>().unwrap();
        assert_eq!(m.len(), 2000);
        assert!((0..2000).all(|i| m.get(&i) == Some(&(i * 2))));
    }
    tx.commit().unwrap();
    drop(heap);
    // Typed tracking refuses the untracked &mut access.
    let heap = attach(&hfd, &lfd, 0x6600_0000_0000, Tracking::Typed);
    let mut tx = heap.begin(4).unwrap();
    assert!(tx.page_root::<HMap>().is_err());
    assert!(heap.allocator().is_err());
    tx.abort().unwrap();
}

/// Forks a child that attaches a page-tracked heap, writes to it (tracked faults), then does
/// `bad`; returns how the child ended.
fn child_fault(base: usize, bad: fn(usize, usize)) -> WaitStatus {
    let hfd = create_heap_memfd("seg", 1 << 20).unwrap();
    let lfd = create_log_memfd("segl", 1 << 20).unwrap();
    // SAFETY: the child only runs the code below and _exits.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            common::no_core();
            let r = (|| -> Result<(), txipc_heap::HeapError> {
                let heap = Heap::attach(&hfd, &lfd, base, Tracking::Page)?;
                let root: &common::Root = heap.root_or_init(|_| Ok(common::new_root()))?;
                let mut tx = heap.begin(1)?;
                common::run_tx(root, &mut tx, 1)?;
                bad(heap.base(), heap.size());
                Ok(())
            })();
            // SAFETY: forked child, no destructors.
            unsafe { nix::libc::_exit(if r.is_ok() { 0 } else { 4 }) }
        }
        ForkResult::Parent { child } => waitpid(child, None).unwrap(),
    }
}

#[test]
fn real_segfaults_still_kill_under_page_tracking() {
    let _g = ONE_TRACKER.lock().unwrap_or_else(|e| e.into_inner());
    use nix::sys::signal::Signal;
    // A stale pointer just past the heap (unmapped).
    let st = child_fault(0x6700_0000_0000, |base, size| {
        let p = (base + size + (64 << 20)) as *mut u64;
        // SAFETY: deliberately invalid: the child must die of SIGSEGV here.
        unsafe { p.write_volatile(1) };
    });
    assert!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGSEGV, _)),
        "{st:?}"
    );
    // A null write.
    let st = child_fault(0x6800_0000_0000, |_, _| {
        // SAFETY: deliberately invalid.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    });
    assert!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGSEGV, _)),
        "{st:?}"
    );
    // A write to read-only memory of the program (a string literal).
    let st = child_fault(0x6900_0000_0000, |_, _| {
        let p = "read-only".as_ptr() as *mut u8;
        // SAFETY: deliberately invalid.
        unsafe { p.write_volatile(1) };
    });
    assert!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGSEGV, _)),
        "{st:?}"
    );
}

/// A nested participant's prepared transaction (ARCHITECTURE.md §13) is committed by the kernel
/// after the participant died: its writes must be in the heap memfd from the moment its
/// prepared reply can be seen. Under the uffd tracker they live in the private working copy
/// until a flush, so `mark_prepared` flushes; without that, this test finds the memfd without
/// the transaction's writes after `commit_prepared`.
#[test]
fn a_prepared_transaction_committed_after_its_death_keeps_its_writes() {
    let _g = ONE_TRACKER.lock().unwrap_or_else(|e| e.into_inner());
    use nix::sys::signal::Signal;
    let hfd = create_heap_memfd("prep", 1 << 20).unwrap();
    let lfd = create_log_memfd("prepl", 4 << 20).unwrap();
    let base = 0x6a00_0000_0000;
    // The model: both transactions applied.
    let expected = {
        let mut m = common::Model::default();
        for t in 1..=2 {
            common::model_tx(&mut m, t);
        }
        m
    };
    // SAFETY: the child only runs the code below and dies (SIGKILL) or _exits.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            common::no_core();
            let r = (|| -> Result<(), txipc_heap::HeapError> {
                let heap = Heap::attach_with(&hfd, &lfd, base, Tracking::Page, PageBackend::Uffd)?;
                if heap.page_tracker() != Some("uffd") {
                    return Err(txipc_heap::HeapError::Invalid("no uffd tracker here"));
                }
                let root: &common::Root = heap.root_or_init(|_| Ok(common::new_root()))?;
                let mut tx = heap.begin(1)?;
                common::run_tx(root, &mut tx, 1)?;
                tx.commit()?;
                let mut tx = heap.begin(2)?;
                common::run_tx(root, &mut tx, 2)?;
                // The prepared reply is about to be published; then the participant dies.
                tx.mark_prepared();
                let _ = nix::sys::signal::raise(Signal::SIGKILL);
                Ok(())
            })();
            // SAFETY: forked child, no destructors.
            unsafe { nix::libc::_exit(if r.is_ok() { 0 } else { 4 }) }
        }
        ForkResult::Parent { child } => {
            let st = waitpid(child, None).unwrap();
            assert!(
                matches!(st, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
                "{st:?}"
            );
        }
    }
    // The kernel's decision: the root committed.
    assert_eq!(
        txipc_heap::commit_prepared(lfd.as_fd()).unwrap(),
        Some(2),
        "the log says ACTIVE(2)"
    );
    let heap = Heap::attach(&hfd, &lfd, base, Tracking::Typed).unwrap();
    let root: &common::Root = heap.root().unwrap().expect("root");
    let tx = heap.begin(3).unwrap();
    assert_eq!(
        common::read(root, &tx),
        expected,
        "every write of the prepared transaction is in the heap"
    );
    tx.abort().unwrap();
}

/// Writes made through the typed API are announced: their pages are logged whole with no
/// write protection and no fault (SIGSEGV tracker: no `mprotect` at all) or no page-table scan
/// (uffd tracker: the flush moves exactly the announced pages), a full log is an error of the
/// write (not the end of the process), and once the heap is armed (`arm_page_tracking`, which
/// `allocator` and `page_root` call) a raw write is captured even on a page no transaction
/// protected before: an abort restores it.
#[test]
fn announced_writes_need_no_protection_until_the_heap_is_armed() {
    let _g = ONE_TRACKER.lock().unwrap_or_else(|e| e.into_inner());
    announced(PageBackend::Sigsegv, 0x6a00_0000_0000);
    announced(PageBackend::Uffd, 0x6b00_0000_0000);
}

fn announced(backend: PageBackend, base: usize) {
    let hfd = create_heap_memfd("pga", 4 << 20).unwrap();
    let lfd = create_log_memfd("pla", 4 << 20).unwrap();
    let heap = Heap::attach_with(&hfd, &lfd, base, Tracking::Page, backend).unwrap();
    let s0 = heap.page_stats().unwrap();
    let root: &common::Root = heap.root_or_init(|_| Ok(common::new_root())).unwrap();
    for t in 1..40 {
        let mut tx = heap.begin(t).unwrap();
        common::run_tx(root, &mut tx, t).unwrap();
        tx.commit().unwrap();
    }
    let s = heap.page_stats().unwrap();
    assert!(s.captures > 0, "typed writes logged their pages: {s:?}");
    assert_eq!(s.protect_calls, 0, "no page was write-protected: {s:?}");
    assert_eq!(s.scans, s0.scans, "no page table was scanned: {s:?}");
    assert!(!s.armed);

    // Abort and crash recovery with announced pages only.
    let before = heap_bytes(hfd.as_fd()).unwrap();
    let mut tx = heap.begin(40).unwrap();
    for t in 40..60 {
        common::run_tx(root, &mut tx, t).unwrap();
    }
    assert_eq!(tx.log_used() % (4096 + 16), 0, "whole-page records");
    tx.abort().unwrap();
    assert!(heap_bytes(hfd.as_fd()).unwrap() == before, "heap restored");

    // A full log fails the write that needed it (SIGSEGV: pre-images are logged at the
    // announcement) or the flush (uffd: at the savepoint); the transaction aborts cleanly.
    let mut tx = heap.begin(41).unwrap();
    tx.set_record_limit(2);
    let mut r = Ok(());
    for t in 60..200 {
        r = common::run_tx(root, &mut tx, t);
        if r.is_err() {
            break;
        }
    }
    if backend == PageBackend::Uffd {
        assert!(r.is_ok(), "{r:?}");
        r = tx.savepoint().map(drop);
    }
    assert!(
        matches!(r, Err(txipc_heap::HeapError::LogFull { .. })),
        "{r:?}"
    );
    tx.abort().unwrap();
    assert!(heap_bytes(hfd.as_fd()).unwrap() == before, "heap restored");

    // Armed inside a transaction: a raw write to the last page (never protected, never
    // captured) faults (SIGSEGV) or is found by the scan (uffd), so the abort restores it.
    let mut tx = heap.begin(42).unwrap();
    common::run_tx(root, &mut tx, 42).unwrap();
    heap.arm_page_tracking().unwrap();
    assert!(heap.page_stats().unwrap().armed);
    let last = (heap.base() + heap.size() - 8) as *mut u64;
    // SAFETY: the last word of the heap: mapped, in the never-allocated area, and no
    // reference to it exists; the tracker makes the page writable on the fault.
    unsafe { last.write_volatile(0x5eed) };
    tx.abort().unwrap();
    assert!(
        heap_bytes(hfd.as_fd()).unwrap() == before,
        "raw write rolled back"
    );
    // Armed, begin protects again what a transaction dirtied.
    for t in 43..46 {
        let mut tx = heap.begin(t).unwrap();
        common::run_tx(root, &mut tx, t).unwrap();
        tx.commit().unwrap();
    }
    let a = heap.page_stats().unwrap();
    assert!(
        a.protect_calls > s.protect_calls || a.scans > s.scans,
        "{a:?}"
    );
    drop(heap);
    let r = recover(hfd.as_fd(), lfd.as_fd()).unwrap();
    assert!(matches!(r.prior, TxState::Committed(45)), "{:?}", r.prior);
}

/// Group commit under page tracking by SIGSEGV (unarmed): requests run in one transaction,
/// each behind its own savepoint (as the server's batch runs kv's handler), capture the pages
/// they share once; a page captured by an earlier request gets exact-byte records. The same
/// requests one per transaction, on an identical heap, capture every page they write each
/// time. Then the batch's state is checked against the model, a `rollback_to` the last
/// request's savepoint restores the heap to that point exactly, the abort restores the state
/// before the batch, and so does crash recovery of a batch left active. Fails without the
/// unarmed savepoint (`PageTracker::savepoint` reopening the pages: the batch captures as
/// many pages as the single transactions).
#[test]
fn a_group_commit_captures_the_pages_its_requests_share_once() {
    let _g = ONE_TRACKER.lock().unwrap_or_else(|e| e.into_inner());
    let base = 0x6c00_0000_0000;
    let fresh = || {
        let hfd = create_heap_memfd("pgb", 4 << 20).unwrap();
        let lfd = create_log_memfd("plb", 4 << 20).unwrap();
        (hfd, lfd)
    };
    fn load(heap: &Heap) -> &common::Root {
        let root: &common::Root = heap.root_or_init(|_| Ok(common::new_root())).unwrap();
        for t in 1..30 {
            let mut tx = heap.begin(t).unwrap();
            common::run_tx(root, &mut tx, t).unwrap();
            tx.commit().unwrap();
        }
        root
    }
    let requests = 30..38u64;
    let mut model = common::Model::default();
    for t in 1..30 {
        common::model_tx(&mut model, t);
    }
    for t in requests.clone() {
        common::model_tx(&mut model, t);
    }
    // One request per transaction.
    let singles = {
        let (hfd, lfd) = fresh();
        let heap =
            Heap::attach_with(&hfd, &lfd, base, Tracking::Page, PageBackend::Sigsegv).unwrap();
        let root = load(&heap);
        let s0 = heap.page_stats().unwrap();
        for t in requests.clone() {
            let mut tx = heap.begin(t).unwrap();
            let _ = tx.savepoint().unwrap();
            common::run_tx(root, &mut tx, t).unwrap();
            tx.commit().unwrap();
        }
        let tx = heap.begin(100).unwrap();
        assert_eq!(common::read(root, &tx), model);
        tx.abort().unwrap();
        heap.page_stats().unwrap().captures - s0.captures
    };
    // The same requests as one batch, on an identical heap.
    let (hfd, lfd) = fresh();
    let heap = Heap::attach_with(&hfd, &lfd, base, Tracking::Page, PageBackend::Sigsegv).unwrap();
    let root = load(&heap);
    let before = heap_bytes(hfd.as_fd()).unwrap();
    let s0 = heap.page_stats().unwrap();
    let mut tx = heap.begin(30).unwrap();
    let mut last = None;
    for t in requests.clone() {
        let sp = tx.savepoint().unwrap();
        if t == requests.end - 1 {
            last = Some((sp, heap_bytes(hfd.as_fd()).unwrap()));
        }
        common::run_tx(root, &mut tx, t).unwrap();
    }
    let batch = heap.page_stats().unwrap().captures - s0.captures;
    assert!(
        batch < singles,
        "the batch captured {batch} pages, the single transactions {singles}: nothing shared"
    );
    assert!(
        tx.log_used() % (4096 + 16) != 0,
        "exact-byte records beside the whole pages"
    );
    assert_eq!(common::read(root, &tx), model, "the batch's state");
    let (sp, mid) = last.unwrap();
    tx.rollback_to(sp).unwrap();
    assert!(
        heap_bytes(hfd.as_fd()).unwrap() == mid,
        "rollback_to the last request's savepoint"
    );
    common::run_tx(root, &mut tx, requests.end - 1).unwrap();
    tx.abort().unwrap();
    assert!(heap_bytes(hfd.as_fd()).unwrap() == before, "abort");
    // A batch left active (the incarnation died): recovery restores the state before it.
    let mut tx = heap.begin(31).unwrap();
    for t in requests.clone() {
        let _ = tx.savepoint().unwrap();
        common::run_tx(root, &mut tx, t).unwrap();
    }
    std::mem::forget(tx);
    drop(heap);
    let r = recover(hfd.as_fd(), lfd.as_fd()).unwrap();
    assert_eq!(r.prior, TxState::Active(31));
    assert!(heap_bytes(hfd.as_fd()).unwrap() == before, "recovery");
    eprintln!("pages captured: {singles} one request per transaction, {batch} as one batch");
}
