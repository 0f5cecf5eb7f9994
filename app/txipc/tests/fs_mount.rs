//! The fs service on a real FUSE mount, used by ordinary system calls and programs: file and
//! directory semantics, errno values, permissions as a non-root user, rename and link edge
//! cases, sparse and large files, concurrent writers, and SIGKILLs of the fs server while a
//! tree is copied (zero errors, every byte checked). Every mount is gone when a test ends,
//! failed or not (`Mounted`'s Drop).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::fsmount::*;
use common::*;

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap_or(-1)
}

#[test]
fn file_and_directory_semantics_on_a_real_mount() {
    let mut m = Mounted::new("fsm-posix", "txipc");
    let f = m.path("f");
    std::fs::write(&f, b"hello").unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"hello");
    // Append, positioned writes and reads, truncate.
    let mut h = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    h.write_all(b" world").unwrap();
    drop(h);
    let h = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    h.write_all_at(b"J", 0).unwrap();
    let mut buf = [0u8; 5];
    h.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"world");
    h.set_len(3).unwrap();
    drop(h);
    assert_eq!(std::fs::read(&f).unwrap(), b"Jel");
    // errno values.
    assert_eq!(errno(std::fs::read(m.path("missing"))), 2); // ENOENT
    assert_eq!(
        errno(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&f)
        ),
        17
    ); // EEXIST
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/inner"), b"x").unwrap();
    assert_eq!(errno(std::fs::remove_dir(m.path("d"))), 39); // ENOTEMPTY
    assert_eq!(
        errno(std::fs::OpenOptions::new().write(true).open(m.path("d"))),
        21
    ); // EISDIR
    assert_eq!(errno(std::fs::read(m.path("f/x"))), 20); // ENOTDIR
    assert_eq!(errno(std::fs::remove_file(m.path("d"))), 21); // EISDIR (unlink of a dir)
    assert_eq!(errno(std::fs::create_dir(m.path(&"n".repeat(256)))), 36); // ENAMETOOLONG
    // Rename: over an existing file, a directory into itself, across directories.
    std::fs::write(m.path("g"), b"g").unwrap();
    std::fs::rename(m.path("g"), &f).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"g");
    assert_eq!(errno(std::fs::rename(m.path("d"), m.path("d/sub"))), 22); // EINVAL
    std::fs::create_dir(m.path("e")).unwrap();
    std::fs::rename(m.path("d"), m.path("e/d")).unwrap();
    assert_eq!(std::fs::read(m.path("e/d/inner")).unwrap(), b"x");
    assert_eq!(std::fs::metadata(m.path("e")).unwrap().nlink(), 3);
    std::fs::create_dir(m.path("full")).unwrap();
    std::fs::write(m.path("full/x"), b"").unwrap();
    assert_eq!(errno(std::fs::rename(m.path("e/d"), m.path("full"))), 39); // ENOTEMPTY
    // Hard links and symlinks.
    std::fs::hard_link(&f, m.path("f2")).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().nlink(), 2);
    assert_eq!(
        std::fs::metadata(&f).unwrap().ino(),
        std::fs::metadata(m.path("f2")).unwrap().ino()
    );
    std::os::unix::fs::symlink("e/d/inner", m.path("s")).unwrap();
    assert_eq!(
        std::fs::read_link(m.path("s")).unwrap(),
        Path::new("e/d/inner")
    );
    assert_eq!(std::fs::read(m.path("s")).unwrap(), b"x");
    // An unlinked file stays readable through an open descriptor.
    let mut open = std::fs::File::open(m.path("f2")).unwrap();
    std::fs::remove_file(m.path("f2")).unwrap();
    std::fs::remove_file(&f).unwrap();
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "g");
    drop(open);
    // A directory with many entries lists completely, also while it is emptied.
    std::fs::create_dir(m.path("many")).unwrap();
    for i in 0..300 {
        std::fs::write(
            m.path(&format!("many/entry-with-a-longish-name-{i:04}")),
            b"",
        )
        .unwrap();
    }
    assert_eq!(std::fs::read_dir(m.path("many")).unwrap().count(), 300);
    std::fs::remove_dir_all(m.path("many")).unwrap();
    assert!(!m.path("many").exists());
    // chmod, chown.
    std::fs::set_permissions(m.path("e"), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        std::fs::metadata(m.path("e")).unwrap().mode() & 0o7777,
        0o700
    );
    std::os::unix::fs::chown(m.path("e"), Some(1234), Some(5678)).unwrap();
    let md = std::fs::metadata(m.path("e")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    // Sparse and large files.
    let sp = m.path("sparse");
    let mut h = std::fs::File::create(&sp).unwrap();
    h.seek(SeekFrom::Start(1 << 30)).unwrap();
    h.write_all(b"end").unwrap();
    drop(h);
    let md = std::fs::metadata(&sp).unwrap();
    assert_eq!(md.len(), (1 << 30) + 3);
    assert!(
        md.blocks() <= 16,
        "a sparse file costs its written blocks ({})",
        md.blocks()
    );
    let h = std::fs::File::open(&sp).unwrap();
    let mut hole = vec![1u8; 8192];
    h.read_exact_at(&mut hole, 1 << 29).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    let big: Vec<u8> = (0..(24u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(m.path("big"), &big).unwrap();
    assert!(std::fs::read(m.path("big")).unwrap() == big);
    // statfs works.
    let out = Command::new("df").arg(&m.dir).output().unwrap();
    assert!(out.status.success());
    // SIGTERM unmounts and exits cleanly.
    let pid = m.child.as_ref().unwrap().id() as i32;
    txipc_sys::process::kill(pid, rustix::process::Signal::TERM).unwrap();
    assert!(m.wait_front_end().success());
    assert!(!fs_fuse::is_fuse_mount(&m.dir));
}

/// Runs `script` with `sh -c` as uid/gid 65534 (nobody) with no supplementary groups.
fn as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv (util-linux) runs")
}

#[test]
fn permissions_as_a_non_root_user_and_concurrent_writers() {
    let mut m = Mounted::new("fsm-perm", "txipc");
    std::fs::create_dir(m.path("rootonly")).unwrap();
    std::fs::write(m.path("rootonly/secret"), b"s").unwrap();
    std::fs::set_permissions(
        m.path("rootonly/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir(m.path("tmp")).unwrap();
    std::fs::set_permissions(m.path("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(m.path("tmp/roots"), b"r").unwrap();
    std::fs::set_permissions(m.path("tmp/roots"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let d = m.dir.display();
    let denied = |script: String| {
        let out = as_nobody(&script);
        assert!(!out.status.success(), "{script} succeeded as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Permission denied") || err.contains("Operation not permitted"),
            "{script}: {err}"
        );
    };
    denied(format!("echo x > {d}/rootonly/new"));
    denied(format!("cat {d}/rootonly/secret"));
    denied(format!("rm -f {d}/tmp/roots"));
    denied(format!("chmod 777 {d}/tmp/roots"));
    let ok = as_nobody(&format!(
        "echo mine > {d}/tmp/mine && cat {d}/tmp/mine && echo more >> {d}/tmp/roots && mkdir {d}/tmp/sub && mv {d}/tmp/mine {d}/tmp/sub/ && ls {d}/tmp/sub"
    ));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "mine\nmine\n");
    let md = std::fs::metadata(m.path("tmp/sub/mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    assert_eq!(std::fs::read(m.path("tmp/roots")).unwrap(), b"rmore\n");

    // Concurrent writers: threads on their own files and on disjoint regions of one file.
    let shared = Arc::new(std::fs::File::create(m.path("shared")).unwrap());
    let threads: Vec<_> = (0..6u8)
        .map(|t| {
            let (own, shared) = (m.path(&format!("own{t}")), shared.clone());
            std::thread::spawn(move || {
                let mut f = std::fs::File::create(&own).unwrap();
                for k in 0..200u32 {
                    f.write_all(&[t; 1000]).unwrap();
                    shared
                        .write_all_at(&[t + 1; 512], (u64::from(k) * 6 + u64::from(t)) * 512)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..6u8 {
        assert!(std::fs::read(m.path(&format!("own{t}"))).unwrap() == vec![t; 200_000]);
    }
    let all = std::fs::read(m.path("shared")).unwrap();
    assert_eq!(all.len(), 200 * 6 * 512);
    for (i, chunk) in all.chunks(512).enumerate() {
        assert!(chunk.iter().all(|&b| b == (i % 6) as u8 + 1), "chunk {i}");
    }
    drop(shared);
    // An unmount from outside ends the front end cleanly.
    fs_fuse::unmount(&m.dir).unwrap();
    assert!(m.wait_front_end().success());
}

#[test]
fn sigkills_of_the_fs_server_while_a_tree_is_copied() {
    let mut m = Mounted::new("fsm-kill", "txipc");
    let src = std::env::temp_dir().join(unique("fsm-src"));
    make_tree(&src, 150);
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(src.clone());

    let sys = m.system();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let killer = {
        let (stop, kills, sys) = (stop.clone(), kills.clone(), sys.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let pid = server_pid(&sys, "fs");
                if txipc_sys::process::kill(pid, rustix::process::Signal::KILL).is_ok() {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Copy the tree three times under fire; each copy is checked byte for byte.
    for round in 0..3 {
        let dst = m.path(&format!("copy{round}"));
        let st = Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(st.success(), "cp failed in round {round}");
        same_tree(&src, &dst);
    }
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    let restarts = sys.ps().unwrap()[0].restarts;
    eprintln!(
        "{} kills sent, {restarts} recoveries",
        kills.load(Ordering::Relaxed)
    );
    assert!(restarts >= 10, "too few kills landed ({restarts})");
    // Stopping the system ends the front end cleanly.
    drop(sys);
    m.sys.take().unwrap().shutdown().unwrap();
    assert!(m.wait_front_end().success());
    assert!(!fs_fuse::is_fuse_mount(&m.dir));
}

#[test]
fn the_front_end_survives_its_own_death() {
    let mut m = Mounted::new("fsm-fe", "txipc");
    let src = std::env::temp_dir().join(unique("fsm-fe-src"));
    make_tree(&src, 120);
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(src.clone());
    // The copier is an ordinary program; it must see no error while its file system's front
    // end is SIGKILLed and replaced under it, over and over. It copies until the kills are
    // done (at least once).
    let done = Arc::new(AtomicBool::new(false));
    let copier = {
        let (src, dir, done) = (src.clone(), m.dir.clone(), done.clone());
        std::thread::spawn(move || {
            let mut round = 0;
            while round == 0 || !done.load(Ordering::Relaxed) {
                let dst = dir.join(format!("copy{round}"));
                let st = Command::new("cp")
                    .arg("-r")
                    .arg(&src)
                    .arg(&dst)
                    .status()
                    .unwrap();
                assert!(st.success(), "cp failed in round {round}");
                same_tree(&src, &dst);
                std::fs::remove_dir_all(&dst).unwrap();
                round += 1;
            }
            round
        })
    };
    // The front end's worker is SIGKILLed over and over; its supervisor starts a successor
    // each time, which adopts the connection the kernel kept. Once, the whole front end
    // (supervisor too) is killed and a new `txipc mount` adopts it instead.
    let mut worker = m.worker_pid(None);
    for replaced in 0..8 {
        std::thread::sleep(Duration::from_millis(50));
        if replaced == 4 {
            m.kill_whole_front_end();
            // The mount stays: the kernel keeps the connection.
            assert!(fs_fuse::is_fuse_mount(&m.dir));
            // Past the kernel's attribute cache (1 s): a stat of the mount point would now
            // wait for a front end, so the new `txipc mount` must not make one.
            std::thread::sleep(Duration::from_millis(1100));
            m.start_front_end();
            worker = m.worker_pid(None);
        } else {
            // The successor is already running: the standby, started (and past its execve)
            // while this worker served.
            let standby = m.standby_pid();
            txipc_sys::process::kill(worker, rustix::process::Signal::KILL).unwrap();
            assert!(fs_fuse::is_fuse_mount(&m.dir));
            // Nobody starts the successor but the supervisor.
            worker = m.worker_pid(Some(worker));
            assert_eq!(worker, standby, "the standby took over");
        }
    }
    done.store(true, Ordering::Relaxed);
    let rounds = copier.join().expect("the copies saw no error");
    eprintln!("front end replaced 8 times during {rounds} copies");
    let pid = m.child.as_ref().unwrap().id() as i32;
    txipc_sys::process::kill(pid, rustix::process::Signal::TERM).unwrap();
    assert!(m.wait_front_end().success());
    assert!(!fs_fuse::is_fuse_mount(&m.dir));
}

#[test]
fn extended_attributes_and_fallocate_on_a_real_mount() {
    use rustix::fs::{FallocateFlags, XattrFlags};
    let m = Mounted::new("fsm-xattr", "txipc");
    let f = m.path("f");
    std::fs::write(&f, b"data").unwrap();
    let err = |r: rustix::io::Result<()>| r.unwrap_err().raw_os_error();
    let get = |p: &Path, n: &str| -> rustix::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        let n = rustix::fs::getxattr(p, n, &mut buf[..])?;
        buf.truncate(n);
        Ok(buf)
    };

    // set / get / size query / ERANGE / list / flags / remove.
    rustix::fs::setxattr(&f, "user.color", b"blue", XattrFlags::empty()).unwrap();
    assert_eq!(get(&f, "user.color").unwrap(), b"blue");
    assert_eq!(rustix::fs::getxattr_query(&f, "user.color").unwrap(), 4);
    let mut small = [0u8; 2];
    assert_eq!(
        rustix::fs::getxattr(&f, "user.color", &mut small[..])
            .unwrap_err()
            .raw_os_error(),
        34,
        "ERANGE"
    );
    rustix::fs::setxattr(&f, "user.a", b"1", XattrFlags::empty()).unwrap();
    let mut list = vec![0u8; 256];
    let n = rustix::fs::listxattr(&f, &mut list[..]).unwrap();
    assert_eq!(&list[..n], b"user.a\0user.color\0");
    assert_eq!(rustix::fs::listxattr_query(&f).unwrap(), n);
    assert_eq!(
        err(rustix::fs::setxattr(&f, "user.a", b"2", XattrFlags::CREATE)),
        17,
        "EEXIST"
    );
    assert_eq!(
        err(rustix::fs::setxattr(
            &f,
            "user.b",
            b"2",
            XattrFlags::REPLACE
        )),
        61,
        "ENODATA"
    );
    assert_eq!(get(&f, "user.none").unwrap_err().raw_os_error(), 61);
    rustix::fs::removexattr(&f, "user.a").unwrap();
    assert_eq!(err(rustix::fs::removexattr(&f, "user.a")), 61);
    assert_eq!(
        err(rustix::fs::setxattr(
            &f,
            "bogus.a",
            b"2",
            XattrFlags::empty()
        )),
        95,
        "EOPNOTSUPP"
    );
    rustix::fs::setxattr(&f, "trusted.t", b"root only", XattrFlags::empty()).unwrap();
    assert_eq!(get(&f, "trusted.t").unwrap(), b"root only");
    // user.* on a symlink is EPERM.
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    assert_eq!(
        err(rustix::fs::lsetxattr(
            m.path("l"),
            "user.k",
            b"v",
            XattrFlags::empty()
        )),
        1,
        "EPERM"
    );
    // As nobody: no write permission, trusted.* hidden and not settable.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = format!(
        "P=/usr/bin/python3; \
         $P -c 'import os,sys; print(sorted(os.listxattr(sys.argv[1])))' {f}; \
         $P -c 'import os,sys; print(os.getxattr(sys.argv[1], \"user.color\"))' {f}; \
         $P -c 'import os,sys; os.setxattr(sys.argv[1], \"user.x\", b\"v\")' {f} 2>&1 | tail -1",
        f = f.display()
    );
    let out = as_nobody(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("['user.color']") && text.contains("b'blue'"),
        "{text}"
    );
    assert!(text.contains("Permission denied"), "{text}");
    // Attributes survive a kill of the server.
    let sys = m.system();
    txipc_sys::process::kill(server_pid(&sys, "fs"), rustix::process::Signal::KILL).unwrap();
    assert_eq!(get(&f, "user.color").unwrap(), b"blue");

    // fallocate: mode 0, KEEP_SIZE, PUNCH_HOLE; other modes EOPNOTSUPP.
    let g = m.path("g");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&g)
        .unwrap();
    rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, 1 << 20).unwrap();
    let md = file.metadata().unwrap();
    assert_eq!(md.len(), 1 << 20);
    assert!(md.blocks() >= 2048, "allocated: {} blocks", md.blocks());
    rustix::fs::fallocate(&file, FallocateFlags::KEEP_SIZE, 1 << 20, 1 << 20).unwrap();
    let md = file.metadata().unwrap();
    assert_eq!(md.len(), 1 << 20);
    assert!(md.blocks() >= 4096);
    file.write_all_at(&vec![9u8; 3 * 4096], 0).unwrap();
    rustix::fs::fallocate(
        &file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        100,
        8192,
    )
    .unwrap();
    let mut back = vec![0u8; 3 * 4096];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back[..100].iter().all(|&b| b == 9));
    assert!(back[100..100 + 8192].iter().all(|&b| b == 0));
    assert!(back[100 + 8192..].iter().all(|&b| b == 9));
    assert_eq!(
        err(rustix::fs::fallocate(
            &file,
            FallocateFlags::COLLAPSE_RANGE,
            0,
            4096
        )),
        95
    );
    // The command-line tool too.
    let st = Command::new("fallocate")
        .args(["-l", "64KiB"])
        .arg(m.path("h"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::metadata(m.path("h")).unwrap().len(), 65536);
}

/// The fs storm's hang, made deterministic. Whoever starts a replacement front end may hold
/// files of the mount open (the storm's test process does, while its git thread writes one;
/// so may a user's shell). The new `txipc mount` inherits those descriptors (close-on-exec),
/// and its own `execve` closes them; a close on FUSE sends `FLUSH` and waits for the answer,
/// from a front end that only this process can become. The kernel's stack of the stuck
/// process: `execve → begin_new_exec → do_close_on_exec → filp_flush → fuse_flush →
/// request_wait_answer`. The front end therefore opens every file with `FOPEN_NOFLUSH`
/// (writes are synchronous: a close has nothing to flush), and a close never waits for it.
#[test]
fn a_front_end_started_by_a_process_with_a_file_of_the_mount_open_comes_up() {
    let wd = common::watchdog::Watchdog::arm(
        "a replacement front end started with a file of the mount open",
        Duration::from_secs(60),
        &[],
    );
    let mut m = Mounted::new("fsm-noflush", "txipc");
    wd.watch_mount(&m.dir);
    wd.front_end(Some(m.supervisor_pid()));
    // Open (close-on-exec, as std opens everything) while the front end serves.
    let mut f = std::fs::File::create(m.path("open-across")).unwrap();
    f.write_all(b"before ").unwrap();
    wd.front_end(None);
    m.kill_whole_front_end();
    // Started by this process, which holds `f` open: it comes up and serves.
    m.start_front_end();
    wd.front_end(Some(m.supervisor_pid()));
    f.write_all(b"after").unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(m.path("open-across")).unwrap(),
        b"before after"
    );
    drop(m);
    wd.finish();
}
