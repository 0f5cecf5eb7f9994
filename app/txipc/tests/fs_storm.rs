//! The fault storm on a real mount: SIGKILLs, fail points (panic, SIGSEGV, abort at each point
//! of the commit protocol) and hangs (an endless loop the kernel's watchdog must catch) in the
//! fs server at random instants, and SIGKILLs of the front end (its worker, replaced by the
//! supervisor; now and then the whole front end, replaced by a new `txipc mount`), while at
//! the same time a tree is copied and verified by `diff -r`, a git repository is built commit
//! by commit and `git fsck` must be clean, and SQLite runs transactions whose every committed
//! row must be there with `PRAGMA integrity_check` ok. Under `txipc` the programs see zero
//! errors; under `restart` the same storm shows what a user loses.
//!
//! CI runs a short storm (`storm_in_ci_under_txipc`, 8 s of faults). The long ones run by hand:
//! `cargo test --release -p txipc --test fs_storm -- --ignored --nocapture`
//! (`TXIPC_STORM_SECS` sets their length, default 60).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::fsmount::*;
use common::watchdog::Watchdog;
use common::*;
use txipc_core::failpoint::{FailKind, FailPoint};

/// What the programs saw.
#[derive(Debug, Default)]
struct Outcome {
    copies: u64,
    copy_errors: Vec<String>,
    commits: u64,
    git_errors: Vec<String>,
    sqlite_txns: u64,
    sqlite_errors: Vec<String>,
    server_kills: u64,
    fail_points: u64,
    hangs: u64,
    front_end_kills: u64,
    whole_front_end_kills: u64,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{cmd:?}: {} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    run(Command::new("git")
        .args(["-c", "user.name=storm", "-c", "user.email=storm@localhost"])
        .args(["-c", "safe.directory=*"])
        .args(args)
        .current_dir(dir))
}

fn sqlite(db: &Path, sql: &str) -> Result<String, String> {
    run(Command::new("sqlite3").arg(db).arg(sql))
}

/// The storm's length: `TXIPC_STORM_SECS`, else `default`.
fn secs(default: u64) -> u64 {
    std::env::var("TXIPC_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The fs server of the storm: a 1 s call deadline, so that a hang is caught quickly.
fn storm_manifest(policy: &str) -> String {
    fs_manifest(policy).replace("[[server]]\n", "[[server]]\ndeadline_ms = 1000\n")
}

/// How long the programs may take, after the faults end, to finish their last round; past it
/// the storm's watchdog fails the storm with a dump of what was blocked.
const DRAIN: Duration = Duration::from_secs(90);
/// Booting the system and mounting, under the same bound.
const BOOT: Duration = Duration::from_secs(30);

/// The programs of the storm (as `/proc/PID/comm` names them), killed by its watchdog.
const PROGRAMS: &[&str] = &["cp", "diff", "git", "sqlite3"];

/// Removes a directory when dropped.
struct Rm(std::path::PathBuf);
impl Drop for Rm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn storm(policy: &str, secs: u64, kill_front_end: bool) -> Outcome {
    // The bound of the whole storm, which a hang cannot stall. It is made first so that it
    // outlives the mount: the unmount and the shutdown of the system are under it too.
    let wd = Watchdog::arm(
        &format!("the storm under {policy}"),
        BOOT + Duration::from_secs(secs) + DRAIN,
        PROGRAMS,
    );
    let src = std::env::temp_dir().join(unique("storm-src"));
    let _rm = Rm(src.clone());
    make_tree(&src, 200);
    let mut m = Mounted::with_manifest(&format!("storm-{policy}"), &storm_manifest(policy));
    wd.watch_mount(&m.dir);
    wd.remove_at_exit(&m.dir);
    wd.remove_at_exit(&src);
    wd.front_end(Some(m.supervisor_pid()));
    let stop = Arc::new(AtomicBool::new(false));
    let end = Instant::now() + Duration::from_secs(secs);

    // The three programs, each in its own thread, each keeping what it saw.
    let copier = {
        let (src, dir, stop) = (src.clone(), m.dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut n, mut errors) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let dst = dir.join(format!("copy{n}"));
                let r = run(Command::new("cp").arg("-r").arg(&src).arg(&dst)).and_then(|_| {
                    run(Command::new("diff").arg("-r").arg(&src).arg(&dst)).map(|_| ())
                });
                match r {
                    Ok(()) => {
                        let _ = std::fs::remove_dir_all(&dst);
                    }
                    Err(e) => errors.push(e),
                }
                n += 1;
            }
            (n, errors)
        })
    };
    let gitter = {
        let (dir, stop) = (m.dir.join("repo"), stop.clone());
        std::thread::spawn(move || {
            let (mut n, mut errors) = (0u64, Vec::new());
            if let Err(e) = std::fs::create_dir(&dir)
                .map_err(|e| e.to_string())
                .and_then(|()| git(&dir, &["init", "-q"]).map(|_| ()))
            {
                return (0, vec![e]);
            }
            while !stop.load(Ordering::Relaxed) {
                let f = dir.join(format!("f{}", n % 17));
                let r = std::fs::write(&f, format!("commit {n}\n").repeat(50))
                    .map_err(|e| e.to_string())
                    .and_then(|()| git(&dir, &["add", "-A"]))
                    .and_then(|_| git(&dir, &["commit", "-qm", &format!("c{n}")]));
                match r {
                    Ok(_) => n += 1,
                    Err(e) => {
                        errors.push(e);
                        break;
                    }
                }
            }
            if let Err(e) = git(&dir, &["fsck", "--strict", "--no-progress"]) {
                errors.push(format!("fsck: {e}"));
            }
            match git(&dir, &["rev-list", "--count", "HEAD"]) {
                Ok(c) if c.trim() == n.to_string() => {}
                Ok(c) => errors.push(format!("{n} commits made, {} in the log", c.trim())),
                Err(e) => errors.push(e),
            }
            (n, errors)
        })
    };
    let sqliter = {
        let (db, stop) = (m.dir.join("storm.db"), stop.clone());
        std::thread::spawn(move || {
            let (mut n, mut errors) = (0u64, Vec::new());
            if let Err(e) = sqlite(&db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);") {
                return (0, vec![e]);
            }
            while !stop.load(Ordering::Relaxed) {
                let mut sql = String::from("BEGIN;");
                for r in 0..10 {
                    sql.push_str(&format!(
                        "INSERT INTO t VALUES({}, 'row {n} {r}');",
                        n * 10 + r
                    ));
                }
                sql.push_str("COMMIT;");
                match sqlite(&db, &sql) {
                    Ok(_) => n += 1,
                    Err(e) => {
                        errors.push(e);
                        break;
                    }
                }
            }
            match sqlite(&db, "PRAGMA integrity_check; SELECT count(*) FROM t;") {
                Ok(out) => {
                    let want = format!("ok\n{}\n", n * 10);
                    if out != want {
                        errors.push(format!("after {n} transactions: {out:?}, want {want:?}"));
                    }
                }
                Err(e) => errors.push(e),
            }
            (n, errors)
        })
    };

    // The faults.
    let sys = m.system();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut kills, mut fail_points, mut hangs) = (0, 0, 0);
    let (mut fe_kills, mut whole_fe_kills) = (0, 0);
    let mut worker = m.worker_pid(None);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20 + next() % 60));
        let r = next() % 20;
        if r < 8 {
            if let Ok(pid) = std::panic::catch_unwind(|| server_pid(&sys, "fs"))
                && txipc_sys::process::kill(pid, rustix::process::Signal::KILL).is_ok()
            {
                kills += 1;
            }
        } else if r < 14 || (r >= 17 && !kill_front_end) {
            let kind = [FailKind::Panic, FailKind::Segv, FailKind::Abort][(next() % 3) as usize];
            if sys.inject("fs", kind, point(next())).is_ok() {
                fail_points += 1;
            }
        } else if r < 17 {
            // A hang: the server loops until the kernel's deadline kills it.
            if sys.inject("fs", FailKind::Hang, point(next())).is_ok() {
                hangs += 1;
            }
        } else if r < 19 {
            // The worker dies; only its supervisor replaces it.
            let _ = txipc_sys::process::kill(worker, rustix::process::Signal::KILL);
            worker = m.worker_pid(Some(worker));
            fe_kills += 1;
        } else {
            // The whole front end dies; a new `txipc mount` adopts the connection.
            wd.front_end(None);
            m.kill_whole_front_end();
            m.start_front_end();
            wd.front_end(Some(m.supervisor_pid()));
            worker = m.worker_pid(None);
            whole_fe_kills += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Bounded by the watchdog: a program stuck on a request no front end answers makes it
    // fire, which aborts the connection (ending the stuck programs) and fails the storm with
    // what was blocked.
    let (copies, copy_errors) = copier.join().unwrap();
    let (commits, git_errors) = gitter.join().unwrap();
    let (sqlite_txns, sqlite_errors) = sqliter.join().unwrap();
    drop(m);
    wd.finish();
    Outcome {
        copies,
        copy_errors,
        commits,
        git_errors,
        sqlite_txns,
        sqlite_errors,
        server_kills: kills,
        fail_points,
        hangs,
        front_end_kills: fe_kills,
        whole_front_end_kills: whole_fe_kills,
    }
}

/// A point of the commit protocol.
fn point(r: u64) -> FailPoint {
    [
        FailPoint::BeforeHandle,
        FailPoint::AfterHandle,
        FailPoint::AfterCommit,
    ][(r % 3) as usize]
}

fn report(policy: &str, o: &Outcome) {
    eprintln!(
        "storm under {policy}: {} server SIGKILLs, {} crash fail points, {} hangs; {} front-end worker kills, {} whole front-end kills; {} tree copies ({} failed), {} git commits ({} errors), {} SQLite transactions ({} errors)",
        o.server_kills,
        o.fail_points,
        o.hangs,
        o.front_end_kills,
        o.whole_front_end_kills,
        o.copies,
        o.copy_errors.len(),
        o.commits,
        o.git_errors.len(),
        o.sqlite_txns,
        o.sqlite_errors.len()
    );
    // The first errors each program saw.
    for (what, errors) in [
        ("cp/diff", &o.copy_errors),
        ("git", &o.git_errors),
        ("sqlite3", &o.sqlite_errors),
    ] {
        for e in errors.iter().take(3) {
            eprintln!("  {what}: {}", e.chars().take(300).collect::<String>());
        }
    }
}

fn assert_clean(o: &Outcome) {
    assert!(o.copy_errors.is_empty() && o.git_errors.is_empty() && o.sqlite_errors.is_empty());
    assert!(o.copies > 0 && o.commits > 0 && o.sqlite_txns > 0);
}

/// The storm CI runs: 8 s of every kind of fault, bounded by its watchdog. It hung once in a
/// fresh-clone CI run before the front end opened files with `FOPEN_NOFLUSH`: the replacement
/// `txipc mount` this test starts inherited the git thread's open file of the mount and
/// waited, inside its own `execve`, for a `FLUSH` only it could answer
/// (`fs_mount::a_front_end_started_by_a_process_with_a_file_of_the_mount_open_comes_up`).
#[test]
fn storm_in_ci_under_txipc() {
    let o = storm("txipc", secs(8), true);
    report("txipc", &o);
    assert_clean(&o);
    assert!(o.server_kills + o.fail_points + o.hangs > 0);
}

#[test]
#[ignore]
fn storm_under_txipc_programs_see_no_error() {
    let o = storm("txipc", secs(60), true);
    report("txipc", &o);
    assert_clean(&o);
    assert!(o.server_kills > 0 && o.fail_points > 0 && o.hangs > 0 && o.front_end_kills > 0);
}

#[test]
#[ignore]
fn storm_under_restart_shows_what_is_lost() {
    let o = storm("restart", secs(60), true);
    report("restart", &o);
}

/// The storm's bound binds: a front end that stops answering (SIGSTOPped, as a front end
/// that hangs would be) while a program waits on the mount makes the watchdog fire within its
/// bound. It names the blocked program and where it waits, aborts the connection (the
/// program ends), kills the front end, detaches the mount, and fails the test.
///
/// The watchdog under test is armed once the program waits in FUSE: armed before, a loaded
/// machine could spend its bound stopping the front end and starting `cat`, and its diagnosis
/// then had no `cat` to name (a failure seen under load). A first watchdog with a generous
/// bound covers the way there, so even a `cat` that never reaches the mount ends the test
/// with a diagnosis instead of a hang.
#[test]
fn the_watchdog_turns_a_stalled_front_end_into_a_failure() {
    let m = Mounted::new("storm-wd", "txipc");
    std::fs::write(m.path("f"), b"x").unwrap();
    let (sup, worker) = (m.supervisor_pid(), m.worker_pid(None));
    let arm = |what: &str, bound: Duration| {
        let wd = Watchdog::arm(what, bound, &["cat"]);
        wd.watch_mount(&m.dir);
        wd.front_end(Some(sup));
        wd
    };
    let on_the_way = arm("cat reaching the stalled mount", Duration::from_secs(120));
    for pid in [sup, worker] {
        txipc_sys::process::kill(pid, rustix::process::Signal::STOP).unwrap();
    }
    // A name never looked up: the lookup goes to the front end, which does not answer.
    let mut cat = Command::new("cat")
        .arg(m.path("never-looked-up"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waits_in_fuse = || {
        let read = |f: &str| {
            common::watchdog::read_bounded(format!("/proc/{}/{f}", cat.id())).unwrap_or_default()
        };
        read("comm").trim() == "cat" && {
            let w = read("wchan");
            w.contains("fuse") || w.contains("request_wait")
        }
    };
    // Bounded by `on_the_way`: if it fires, the test fails with its diagnosis.
    while !waits_in_fuse() && on_the_way.fired().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    on_the_way.finish();
    let wd = arm("a stalled front end", Duration::from_secs(3));
    let d = wd
        .wait_fired(Duration::from_secs(120))
        .expect("the watchdog fired");
    let cat_block = d
        .split("\n  pid ")
        .find(|b| b.contains(&format!("{} ", cat.id())) && b.contains("comm cat"))
        .unwrap_or_else(|| panic!("the diagnosis names the blocked cat:\n{d}"));
    assert!(
        cat_block.contains("fuse"),
        "the diagnosis says cat waits in FUSE:\n{d}"
    );
    assert!(d.contains("aborted"), "{d}");
    wait_until("cat to end", Duration::from_secs(30), || {
        cat.try_wait().unwrap().is_some()
    });
    assert!(!cat.wait().unwrap().success());
    wait_until("the front end to end", Duration::from_secs(30), || {
        !alive(sup) && !alive(worker)
    });
    assert!(!fs_fuse::is_fuse_mount(&m.dir));
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wd.finish()));
    let msg = failed.expect_err("finishing a watchdog that fired fails the test");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("did not finish within its bound"), "{msg}");
}

/// What a killed run leaves (its dirs, named after its pid) is removed by the next run once
/// that pid is gone; what a live process owns is not touched.
#[test]
fn leftovers_of_killed_runs_are_swept() {
    let tmp = std::env::temp_dir();
    // A "run" that makes its dirs and dies without cleaning up.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "d={}/t-storm-src-$$-0; mkdir -p $d/a && echo x > $d/a/f && echo $$",
            tmp.display()
        ))
        .output()
        .unwrap();
    let dead: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let stale = tmp.join(format!("t-storm-src-{dead}-0"));
    let _rm = Rm(stale.clone());
    assert!(stale.join("a/f").exists());
    // A live process's dir (ours) stays.
    let live = tmp.join(unique("storm-src"));
    let _rm_live = Rm(live.clone());
    std::fs::create_dir(&live).unwrap();
    sweep_stale(&["storm"]);
    assert!(!stale.exists(), "the dead run's dir is swept");
    assert!(live.exists(), "a live run's dir is kept");
}
