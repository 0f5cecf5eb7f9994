//! In-process behaviour of the tracker: pre-images, dirty lists, re-protection, coalescing,
//! untracked writes, races between threads, and a property test against a model.
//!
//! One tracker per process: every test takes `LOCK`.

mod common;

use std::sync::Mutex;

use common::{Recorder, Region, page_size, protections, record};
use proptest::prelude::*;
use txipc_pagetrack::{PageTracker, TrackError};

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn install(region: &Region, rec: &Recorder) -> PageTracker {
    // SAFETY: the region outlives the tracker in every test (declared before it); the recorder
    // too; `record` is async-signal-safe and does not write the region.
    unsafe { PageTracker::install(region.ptr, region.len, record, rec.ctx()) }.unwrap()
}

#[test]
fn first_write_captures_preimage_once() {
    let _g = lock();
    let region = Region::new(8);
    for p in 0..8 {
        region.fill(p, p as u8 + 1);
    }
    let rec = Recorder::new(16);
    let mut t = install(&region, &rec);
    t.begin().unwrap();
    assert_eq!(rec.count(), 0, "begin alone captures nothing");
    for v in 10..20 {
        region.write(5, 7, v);
        region.write(2, 0, v);
        region.write(5, 4095 % page_size(), v);
    }
    let recs = rec.records();
    assert_eq!(recs.len(), 2, "one sink call per first-written page");
    assert_eq!(recs[0], (5, vec![6; page_size()]), "pre-image of page 5");
    assert_eq!(recs[1], (2, vec![3; page_size()]), "pre-image of page 2");
    assert_eq!(t.dirty_pages(), &[5, 2]);
    assert_eq!(region.read(5, 7), 19, "the faulting writes took effect");
    assert_eq!(region.read(2, 0), 19);
    assert!(!t.is_protected(5) && !t.is_protected(2));
    assert!(t.is_protected(0) && t.is_protected(7));
    assert!(t.is_tracking(region.ptr as usize + 3 * page_size() + 5));
    assert!(!t.is_tracking(region.ptr as usize + region.len));
    assert_eq!(t.stats().captures, 2);
    t.end();
    assert_eq!(
        t.dirty_pages(),
        &[5, 2],
        "dirty_pages still shows the ended transaction"
    );
    drop(t);
    assert_eq!(
        protections(region.ptr, region.len),
        "wwwwwwww",
        "drop unprotects"
    );
}

#[test]
fn end_then_begin_reprotects_only_dirtied_pages_in_runs() {
    let _g = lock();
    let region = Region::new(10);
    let rec = Recorder::new(64);
    let mut t = install(&region, &rec);
    assert_eq!(
        protections(region.ptr, region.len),
        "wwwwwwwwww",
        "install protects nothing"
    );
    t.begin().unwrap();
    assert_eq!(
        t.stats().protect_calls,
        1,
        "first begin: one mprotect for the whole region"
    );
    assert_eq!(protections(region.ptr, region.len), "rrrrrrrrrr");
    for p in [3, 1, 2, 7] {
        region.write(p, 0, 0xAA);
    }
    t.end();
    assert_eq!(
        protections(region.ptr, region.len),
        "rwwwrrrwrr",
        "after end, exactly the dirtied pages are writable"
    );
    rec.clear();
    t.begin().unwrap();
    assert_eq!(
        t.stats().protect_calls,
        3,
        "second begin: one mprotect per run ([1,4) and [7,8))"
    );
    assert_eq!(protections(region.ptr, region.len), "rrrrrrrrrr");
    assert!(t.dirty_pages().is_empty());
    region.write(2, 1, 0xBB);
    region.write(9, 1, 0xCC);
    let recs = rec.records();
    assert_eq!(
        recs.len(),
        2,
        "previously dirtied page 2 faults again; page 9 first time"
    );
    assert_eq!(recs[0].0, 2);
    assert_eq!(
        recs[0].1[0], 0xAA,
        "pre-image is the state committed by the last transaction"
    );
    assert_eq!(recs[0].1[1], 0);
    assert_eq!(recs[1], (9, vec![0; page_size()]));
    assert_eq!(t.dirty_pages(), &[2, 9]);
    t.end();
    assert_eq!(protections(region.ptr, region.len), "rrwrrrrrrw");
    assert!(matches!(t.begin(), Ok(())));
    assert!(matches!(t.begin(), Err(TrackError::InTransaction)));
    t.end();
    drop(t);
}

#[test]
fn writes_outside_a_transaction_are_untracked_and_reprotected() {
    let _g = lock();
    let region = Region::new(4);
    let rec = Recorder::new(8);
    let mut t = install(&region, &rec);
    t.begin().unwrap();
    t.end();
    region.write(3, 0, 1);
    assert_eq!(rec.count(), 0, "no sink call outside a transaction");
    assert_eq!(t.stats().untracked_writes, 1);
    assert!(
        t.dirty_pages().is_empty(),
        "the ended transaction dirtied nothing"
    );
    t.begin().unwrap();
    assert!(
        t.is_protected(3),
        "begin re-protects pages written between transactions"
    );
    region.write(3, 0, 2);
    assert_eq!(
        rec.records(),
        vec![(3, {
            let mut v = vec![0; page_size()];
            v[0] = 1;
            v
        })]
    );
    t.end();
}

#[test]
fn write_straddling_two_pages_captures_both() {
    let _g = lock();
    let region = Region::new(4);
    region.fill(1, 0x11);
    region.fill(2, 0x22);
    let rec = Recorder::new(8);
    let mut t = install(&region, &rec);
    t.begin().unwrap();
    // An unaligned 8-byte store across the 1|2 boundary, both pages protected.
    // SAFETY: in bounds of the region.
    unsafe {
        region
            .page(2)
            .sub(4)
            .cast::<u64>()
            .write_unaligned(0x0102_0304_0506_0708)
    };
    let mut pages: Vec<usize> = rec.records().iter().map(|r| r.0).collect();
    pages.sort();
    assert_eq!(pages, [1, 2]);
    t.end();
    // Now page 1 is writable and page 2 protected: the fault address is in page 2.
    t.begin().unwrap();
    region.write(1, 0, 9);
    rec.clear();
    // SAFETY: in bounds.
    unsafe {
        region
            .page(2)
            .sub(4)
            .cast::<u64>()
            .write_unaligned(u64::MAX)
    };
    assert_eq!(rec.records().iter().map(|r| r.0).collect::<Vec<_>>(), [2]);
    t.end();
}

#[test]
fn syscalls_get_efault_until_prepare_write() {
    let _g = lock();
    let region = Region::new(2);
    let rec = Recorder::new(4);
    let mut t = install(&region, &rec);
    t.begin().unwrap();
    let (r, w) = rustix::pipe::pipe().unwrap();
    rustix::io::write(&w, b"hello").unwrap();
    // SAFETY: the buffer is inside the region; the kernel checks its protection.
    let buf = unsafe { std::slice::from_raw_parts_mut(region.page(1), 5) };
    assert_eq!(
        rustix::io::read(&r, &mut *buf).unwrap_err(),
        rustix::io::Errno::FAULT,
        "the kernel does not fault on a protected page: EFAULT"
    );
    t.prepare_write(region.page(1) as usize, 5).unwrap();
    assert_eq!(rustix::io::read(&r, &mut *buf).unwrap(), 5);
    assert_eq!(region.read(1, 4), b'o');
    assert_eq!(rec.records(), vec![(1, vec![0; page_size()])]);
    assert_eq!(t.dirty_pages(), &[1]);
    assert!(matches!(
        t.prepare_write(region.page(1) as usize, 2 * page_size()),
        Err(TrackError::OutOfRegion { .. })
    ));
    t.end();
}

#[test]
fn install_rejects_bad_regions_and_a_second_tracker() {
    let _g = lock();
    let region = Region::new(2);
    let rec = Recorder::new(1);
    // SAFETY: fails before touching anything.
    let r = unsafe { PageTracker::install(region.ptr.add(1), page_size(), record, rec.ctx()) };
    assert!(matches!(r, Err(TrackError::Misaligned { .. })));
    // SAFETY: as above.
    let r = unsafe { PageTracker::install(region.ptr, 0, record, rec.ctx()) };
    assert!(matches!(r, Err(TrackError::Misaligned { .. })));
    let t = install(&region, &rec);
    // SAFETY: as above (refused: one tracker per process).
    let r = unsafe { PageTracker::install(region.ptr, region.len, record, rec.ctx()) };
    assert!(matches!(r, Err(TrackError::AlreadyInstalled)));
    drop(t);
    let t = install(&region, &rec);
    drop(t);
}

#[test]
fn drop_restores_the_previous_sigsegv_action() {
    let _g = lock();
    let before = current_sigsegv();
    let region = Region::new(2);
    let rec = Recorder::new(2);
    let mut t = install(&region, &rec);
    assert_ne!(current_sigsegv(), before, "install replaces the action");
    t.begin().unwrap();
    drop(t);
    assert_eq!(current_sigsegv(), before, "drop restores it");
    region.write(0, 0, 1); // unprotected: no fault
    assert_eq!(rec.count(), 0);
}

fn current_sigsegv() -> usize {
    // SAFETY: query only.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: null act queries; valid out-pointer.
    let r = unsafe { libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) };
    assert_eq!(r, 0);
    old.sa_sigaction
}

#[test]
fn threads_racing_for_the_same_pages_capture_each_once() {
    let _g = lock();
    const PAGES: usize = 64;
    let region = Region::new(PAGES);
    for p in 0..PAGES {
        region.fill(p, p as u8);
    }
    let rec = Recorder::new(PAGES);
    let mut t = install(&region, &rec);
    for round in 0..3u8 {
        rec.clear();
        t.begin().unwrap();
        let base = region.ptr as usize;
        std::thread::scope(|s| {
            for th in 0..4usize {
                s.spawn(move || {
                    for i in 0..PAGES {
                        let p = (i * 7 + th * 13) % PAGES; // different orders per thread
                        let a = (base + p * page_size() + 8 + th) as *mut u8;
                        // SAFETY: inside the region; tracked.
                        unsafe { a.write_volatile(round + 1) };
                    }
                });
            }
        });
        let recs = rec.records();
        let mut pages: Vec<usize> = recs.iter().map(|r| r.0).collect();
        pages.sort();
        assert_eq!(
            pages,
            (0..PAGES).collect::<Vec<_>>(),
            "each page exactly once"
        );
        for (p, img) in &recs {
            assert_eq!(img[0], *p as u8, "pre-image of page {p}");
            let expect_prev = if round == 0 { *p as u8 } else { round };
            assert_eq!(
                img[8], expect_prev,
                "pre-image of page {p} holds last round's write"
            );
        }
        let mut dirty = t.dirty_pages().to_vec();
        dirty.sort();
        assert_eq!(dirty, (0..PAGES).collect::<Vec<_>>());
        t.end();
    }
}

/// Model: the committed content of each page (one byte per page suffices: writes set a byte at
/// an offset; we model the whole page as a map offset -> value).
#[derive(Debug, Clone)]
struct Op {
    page: usize,
    off: usize,
    val: u8,
}

fn op(pages: usize) -> impl Strategy<Value = Op> {
    (0..pages, 0..64usize, any::<u8>()).prop_map(|(page, off, val)| Op { page, off, val })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random writes to random pages over several transactions: the pre-images captured are the
    /// model's page contents at `begin`, each first-written page exactly once, and nothing else.
    #[test]
    fn preimages_match_a_model(
        txs in proptest::collection::vec(
            (proptest::collection::vec(op(12), 0..40), any::<bool>()), 1..8)
    ) {
        let _g = lock();
        const PAGES: usize = 12;
        let region = Region::new(PAGES);
        let rec = Recorder::new(PAGES * 2);
        let mut t = install(&region, &rec);
        let ps = page_size();
        let mut model = vec![vec![0u8; ps]; PAGES];
        for (ops, write_between) in txs {
            rec.clear();
            t.begin().unwrap();
            let at_begin = model.clone();
            let mut expected_order = Vec::new();
            for o in &ops {
                if !expected_order.contains(&o.page) {
                    expected_order.push(o.page);
                }
                // SAFETY: inside the region (off < 64 < page size).
                unsafe { region.page(o.page).add(o.off).write_volatile(o.val) };
                model[o.page][o.off] = o.val;
            }
            let recs = rec.records();
            let got: Vec<usize> = recs.iter().map(|r| r.0).collect();
            prop_assert_eq!(&got, &expected_order);
            for (p, img) in &recs {
                prop_assert_eq!(img, &at_begin[*p], "pre-image of page {}", p);
            }
            prop_assert_eq!(t.dirty_pages(), &expected_order[..]);
            t.end();
            if write_between {
                // An untracked write between transactions: allowed, not captured.
                region.write(PAGES - 1, 100, 0x5A);
                model[PAGES - 1][100] = 0x5A;
                prop_assert_eq!(rec.count(), recs.len());
            }
            for (p, m) in model.iter().enumerate() {
                prop_assert_eq!(&region.page_bytes(p), m, "content of page {}", p);
            }
        }
        drop(t);
    }
}

/// `install_announced`: announced writes are captured with no protection, no fault and no
/// system call, and `begin` re-protects nothing; `arm` write-protects exactly the pages not
/// captured in the open transaction, after which unannounced writes are captured by faults,
/// also on pages an earlier transaction left open.
#[test]
fn announced_writes_capture_without_protection_until_armed() {
    let _g = lock();
    let region = Region::new(6);
    for p in 0..6 {
        region.fill(p, p as u8 + 1);
    }
    let rec = Recorder::new(32);
    // SAFETY: as in `install`.
    let mut t =
        unsafe { PageTracker::install_announced(region.ptr, region.len, record, rec.ctx()) }
            .unwrap();
    assert!(!t.is_armed());
    let base = region.ptr as usize;
    let ps = page_size();
    let mut logged = Vec::new();
    t.begin().unwrap();
    assert_eq!(
        protections(region.ptr, region.len),
        "wwwwww",
        "nothing protected"
    );
    // A write straddling pages 1 and 2, announced first.
    t.announce(
        base + 2 * ps - 4,
        8,
        |p, src| {
            // SAFETY: src is a readable page of the region (announce's contract).
            logged.push((p, unsafe { *src }));
            Ok::<(), ()>(())
        },
        |_, _| panic!("no savepoint was taken"),
    )
    .unwrap();
    region.write(1, ps - 1, 0xAA);
    region.write(2, 0, 0xBB);
    // Announcing again in the same transaction captures nothing.
    t.announce(base + ps, 2 * ps, |_, _| Err(()), |_, _| Err(()))
        .unwrap();
    assert_eq!(logged, vec![(1, 2), (2, 3)], "pre-images before the writes");
    assert_eq!(rec.count(), 0, "no fault reached the signal-handler sink");
    t.end();
    t.begin().unwrap();
    assert_eq!(t.stats().protect_calls, 0, "begin made no mprotect");
    assert_eq!(protections(region.ptr, region.len), "wwwwww");
    // A failing sink leaves the page uncaptured (announced again later, it is captured).
    assert!(
        t.announce(base + ps, 1, |_, _| Err(7), |_, _| Ok(()))
            .is_err()
    );
    assert_eq!(t.dirty_pages(), &[] as &[usize]);
    t.announce(base + 4 * ps, 1, |_, _| Ok::<(), ()>(()), |_, _| Ok(()))
        .unwrap();
    region.write(4, 0, 0xCC);
    // Arm inside the transaction: page 4 (captured) stays writable, every other page,
    // including 1 and 2 left open by the previous transaction, is protected.
    t.arm().unwrap();
    assert!(t.is_armed());
    assert_eq!(protections(region.ptr, region.len), "rrrrwr");
    region.write(1, 5, 0x11);
    region.write(4, 1, 0x22);
    let recs = rec.records();
    assert_eq!(
        recs.len(),
        1,
        "the unannounced write to page 1 faulted once"
    );
    assert_eq!(recs[0].0, 1);
    assert_eq!(
        recs[0].1[ps - 1],
        0xAA,
        "its pre-image is the committed page"
    );
    assert_eq!(t.dirty_pages(), &[4, 1]);
    t.end();
    // Armed, begin re-protects what the transaction dirtied, as `install` does.
    t.begin().unwrap();
    assert_eq!(protections(region.ptr, region.len), "rrrrrr");
    t.end();
    drop(t);
}

/// An unarmed savepoint reopens nothing: a page captured before it is not captured again (its
/// announced writes go to the `exact` sink, once per announcement, with the exact range),
/// a page not yet captured is captured whole, and arming after the savepoint protects the
/// pages captured before it again (an unannounced write to one then faults and is captured),
/// while the page captured after it stays writable. Armed, a savepoint is a new capture
/// epoch. Fails if `savepoint` reopens the pages (the shared page is captured twice) or if
/// `arm` leaves the pages captured before the savepoint writable.
#[test]
fn an_unarmed_savepoint_keeps_pages_captured_and_asks_for_exact_bytes() {
    let _g = lock();
    let region = Region::new(4);
    for p in 0..4 {
        region.fill(p, p as u8 + 1);
    }
    let rec = Recorder::new(32);
    // SAFETY: as in `install`.
    let mut t =
        unsafe { PageTracker::install_announced(region.ptr, region.len, record, rec.ctx()) }
            .unwrap();
    let base = region.ptr as usize;
    let ps = page_size();
    let whole = std::cell::RefCell::new(Vec::new());
    let exact = std::cell::RefCell::new(Vec::new());
    let announce = |t: &PageTracker, addr: usize, len: usize| {
        t.announce(
            addr,
            len,
            |p, _| {
                whole.borrow_mut().push(p);
                Ok::<(), ()>(())
            },
            |a, l| {
                exact.borrow_mut().push((a, l));
                Ok(())
            },
        )
        .unwrap();
    };
    t.begin().unwrap();
    announce(&t, base + ps + 8, 16);
    region.write(1, 8, 0x11);
    t.savepoint().unwrap();
    // Page 1 again (captured before the savepoint), straddling into page 2 (not captured).
    announce(&t, base + 2 * ps - 4, 8);
    region.write(1, ps - 1, 0x22);
    region.write(2, 0, 0x33);
    // Page 2 again: captured after the savepoint, nothing more to log.
    announce(&t, base + 2 * ps + 64, 8);
    t.savepoint().unwrap();
    // Both pages are now captured before the latest savepoint.
    announce(&t, base + 2 * ps + 128, 4);
    announce(&t, base + ps, 1);
    assert_eq!(
        *whole.borrow(),
        vec![1, 2],
        "each page captured once in the transaction"
    );
    assert_eq!(
        *exact.borrow(),
        vec![
            (base + 2 * ps - 4, 8),
            (base + 2 * ps + 128, 4),
            (base + ps, 1)
        ],
        "exact ranges for the writes to pages captured before the latest savepoint"
    );
    assert_eq!(
        t.stats().protect_calls,
        0,
        "an unarmed savepoint makes no system call"
    );
    assert_eq!(protections(region.ptr, region.len), "wwww");
    // Arm after a third savepoint and one more capture (page 3): pages 1 and 2, captured
    // before it, are protected again; page 3 stays writable.
    t.savepoint().unwrap();
    announce(&t, base + 3 * ps, 1);
    t.arm().unwrap();
    assert_eq!(protections(region.ptr, region.len), "rrrw");
    region.write(1, 100, 0x44);
    let recs = rec.records();
    assert_eq!(recs.len(), 1, "the unannounced write to page 1 faulted");
    assert_eq!(recs[0].0, 1);
    assert_eq!(
        recs[0].1[ps - 1],
        0x22,
        "its pre-image is the page as it is now"
    );
    assert_eq!(t.dirty_pages(), &[3, 1]);
    // Armed, a savepoint protects the dirty pages again.
    t.savepoint().unwrap();
    assert_eq!(protections(region.ptr, region.len), "rrrr");
    t.end();
    drop(t);
}
