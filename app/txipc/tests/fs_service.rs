//! The fs server as a service of a real system: its calls survive SIGKILLs of the server
//! (policy txipc) with every byte in place, and the restart baseline loses the tree.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fs_api::{Caller, Errno, FsClient, ROOT_INO, RequestId, oflag};
use txipc_service::Error as SvcError;

fn fs_system(tag: &str, policy: &str) -> txipc_runtime::client::SystemProcess {
    boot(
        tag,
        &(server(
            "fs",
            "fs",
            policy,
            "retry_limit = 50\nrequest_max = 139264\nreply_max = 139264",
        ) + &grant("*", "fs")),
    )
}

fn name(s: &str) -> String {
    s.to_string()
}

#[test]
fn fs_calls_survive_sigkills_of_the_server() {
    let sys = fs_system("fs-kill", "txipc");
    let conn = sys.connect().unwrap();
    let fs = FsClient::new(open(&conn, "fs"));
    let c = Caller::root();
    let dir = fs
        .mkdir(c.clone(), ROOT_INO, name("d"), 0o755, 0)
        .unwrap()
        .ino;

    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let killer = {
        let (stop, kills, conn) = (stop.clone(), kills.clone(), conn.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let pid = server_pid(&conn, "fs");
                if pid > 0 && txipc_sys::process::kill(pid, rustix::process::Signal::KILL).is_ok() {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // Files of distinct contents, written in pieces at increasing offsets, while the server
    // is killed over and over.
    let mut model = Vec::new();
    let start = Instant::now();
    for i in 0..400u32 {
        let cr = fs
            .create(
                c.clone(),
                dir,
                name(&format!("f{i}")),
                0o644,
                0,
                oflag::O_RDWR,
            )
            .unwrap();
        let content: Vec<u8> = (0..20_000 + i * 997).map(|k| (k * 31 + i) as u8).collect();
        for (k, piece) in content.chunks(7_000).enumerate() {
            let n = fs
                .write(c.clone(), cr.fh, (k * 7_000) as u64, piece)
                .unwrap();
            assert_eq!(n as usize, piece.len());
        }
        fs.release(c.clone(), cr.fh).unwrap();
        model.push((cr.attr.ino, content));
        // Read the previous file back while the killer goes on.
        if let Some((ino, content)) = model.get(model.len().wrapping_sub(2)) {
            let fh = fs.open(c.clone(), *ino, oflag::O_RDONLY).unwrap();
            assert!(fs.read(fh, 0, content.len() as u32).unwrap().as_slice() == content.as_slice());
            fs.release(c.clone(), fh).unwrap();
        }
        let enough = kills.load(Ordering::Relaxed) >= 40 && i >= 40;
        if enough || start.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    let restarts = conn.ps().unwrap()[0].restarts;
    eprintln!(
        "{} files, {} kills sent, {restarts} recoveries",
        model.len(),
        kills.load(Ordering::Relaxed)
    );
    assert!(
        restarts >= 10,
        "too few kills landed ({restarts} recoveries)"
    );

    // Every file is there with every byte; the names are exactly the model's.
    let entries = fs.readdir(c.clone(), dir, 0, 1000).unwrap();
    assert_eq!(entries.len(), model.len() + 2);
    for (i, (ino, content)) in model.iter().enumerate() {
        let a = fs.lookup(c.clone(), dir, name(&format!("f{i}"))).unwrap();
        assert_eq!(a.ino, *ino);
        assert_eq!(a.size, content.len() as u64);
        assert_eq!(a.nlink, 1);
        let fh = fs.open(c.clone(), *ino, oflag::O_RDONLY).unwrap();
        let back = fs.read(fh, 0, content.len() as u32).unwrap();
        assert!(back.as_slice() == content.as_slice(), "f{i} differs");
        fs.release(c.clone(), fh).unwrap();
    }
    drop((fs, conn));
    sys.shutdown().unwrap();
}

#[test]
fn the_restart_baseline_comes_back_empty() {
    let sys = fs_system("fs-restart", "restart");
    let conn = sys.connect().unwrap();
    let fs = FsClient::new(open(&conn, "fs"));
    let c = Caller::root();
    fs.mkdir(c.clone(), ROOT_INO, name("d"), 0o755, 0).unwrap();
    let pid = server_pid(&conn, "fs");
    txipc_sys::process::kill(pid, rustix::process::Signal::KILL).unwrap();
    wait_until("a new incarnation", Duration::from_secs(10), || {
        server_pid(&conn, "fs") != pid
    });
    assert_eq!(
        fs.lookup(c, ROOT_INO, name("d")).unwrap_err(),
        SvcError::Service(Errno::ENOENT)
    );
    drop((fs, conn));
    sys.shutdown().unwrap();
}

#[test]
fn a_resent_request_answers_its_recorded_result() {
    let sys = fs_system("fs-replay", "txipc");
    let conn = sys.connect().unwrap();
    let fs = FsClient::new(open(&conn, "fs"));
    let mut c = Caller::root();
    c.request = Some(RequestId {
        session: 7,
        unique: 42,
        resent: false,
    });
    let first = fs.mkdir(c.clone(), ROOT_INO, name("d"), 0o755, 0).unwrap();
    // The same request again, as a successor front end re-sends it: the recorded success.
    let mut again = c.clone();
    again.request = Some(RequestId {
        resent: true,
        ..c.request.unwrap()
    });
    assert_eq!(
        fs.mkdir(again, ROOT_INO, name("d"), 0o755, 0).unwrap(),
        first
    );
    // A new request doing the same is a new mkdir: EEXIST.
    let mut other = c.clone();
    other.request = Some(RequestId {
        session: 7,
        unique: 44,
        resent: true,
    });
    assert_eq!(
        fs.mkdir(other, ROOT_INO, name("d"), 0o755, 0).unwrap_err(),
        SvcError::Service(Errno::EEXIST)
    );
    // Recorded errors replay too, and the ring forgets the oldest results.
    for u in 100..100 + fs_api::REPLAY_SLOTS as u64 + 10 {
        let mut x = c.clone();
        x.request = Some(RequestId {
            session: 7,
            unique: u,
            resent: false,
        });
        fs.mkdir(x, ROOT_INO, name(&format!("m{u}")), 0o755, 0)
            .unwrap();
    }
    let mut old = c.clone();
    old.request = Some(RequestId {
        session: 7,
        unique: 42,
        resent: true,
    });
    assert_eq!(
        fs.mkdir(old, ROOT_INO, name("d"), 0o755, 0).unwrap_err(),
        SvcError::Service(Errno::EEXIST)
    );
    drop((fs, conn));
    sys.shutdown().unwrap();
}

/// Per-call cost of the fs service without FUSE, per policy (run by hand: `--ignored
/// --nocapture`; timings are printed, never asserted).
#[test]
#[ignore]
fn call_costs_per_policy() {
    for policy in ["none", "txipc", "restart"] {
        let sys = fs_system(&format!("fs-cost-{policy}"), policy);
        let conn = sys.connect().unwrap();
        let fs = FsClient::new(open(&conn, "fs"));
        let c = Caller::root();
        let t = Instant::now();
        for i in 0..500 {
            fs.mkdir(c.clone(), ROOT_INO, name(&format!("d{i}")), 0o755, 0)
                .unwrap();
        }
        let mkdir = t.elapsed() / 500;
        let cr = fs
            .create(c.clone(), ROOT_INO, name("f"), 0o644, 0, oflag::O_RDWR)
            .unwrap();
        let block = vec![7u8; 4096];
        let t = Instant::now();
        for i in 0..500u64 {
            fs.write(c.clone(), cr.fh, (i % 50) * 4096, &block[..])
                .unwrap();
        }
        let write = t.elapsed() / 500;
        let t = Instant::now();
        for _ in 0..500 {
            fs.getattr(cr.attr.ino).unwrap();
        }
        let getattr = t.elapsed() / 500;
        eprintln!("{policy}: mkdir {mkdir:?}, 4 KiB overwrite {write:?}, getattr {getattr:?}");
        drop((fs, conn));
        sys.shutdown().unwrap();
    }
}
