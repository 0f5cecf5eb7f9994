//! A system with an fs server mounted through `txipc mount`, for tests: the mount is gone
//! when the guard drops, whatever happened (SIGTERM to the front end, then `umount -l`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use txipc_runtime::client::SystemProcess;

use super::{boot, exe, grant, unique};

pub fn fs_manifest(policy: &str) -> String {
    format!(
        "[[server]]\nname = \"fs\"\nbuiltin = \"fs\"\npolicy = \"{policy}\"\nheap_mb = 256\nlog_mb = 32\nretry_limit = 50\nslots = 8\nrequest_max = 139264\nreply_max = 139264\n"
    ) + &grant("*", "fs")
}

/// A system with an fs server, mounted on a fresh directory by a `txipc mount` child.
pub struct Mounted {
    pub sys: Option<SystemProcess>,
    pub child: Option<Child>,
    pub dir: PathBuf,
}

impl Mounted {
    pub fn new(tag: &str, policy: &str) -> Mounted {
        Mounted::with_manifest(tag, &fs_manifest(policy))
    }

    pub fn with_manifest(tag: &str, manifest: &str) -> Mounted {
        // What killed runs of these tests left behind.
        super::sweep_stale(&["fsm", "storm"]);
        let sys = boot(tag, manifest);
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir(&dir).unwrap();
        let mut m = Mounted {
            sys: Some(sys),
            child: None,
            dir,
        };
        m.start_front_end();
        m
    }

    pub fn start_front_end(&mut self) {
        let name = self.sys.as_ref().unwrap().name().to_string();
        let mut child = Command::new(exe())
            .args(["mount", "--quiet", "--system", &name])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Its first line says it serves ("ready DIR"); read it on a thread so the wait is
        // bounded.
        let out = child.stdout.take().unwrap();
        self.child = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(out).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(20));
        if !matches!(&line, Ok(Some(l)) if l.starts_with("ready")) {
            let status = self.child.as_mut().map(|c| c.try_wait());
            if let Some(c) = &self.child {
                // Where it is stuck, for the report (each read bounded: reading a task's
                // wchan or stack waits while it is inside execve).
                let read = |p: String| super::watchdog::read_bounded(p).unwrap_or_default();
                for t in std::fs::read_dir(format!("/proc/{}/task", c.id()))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let p = t.path().to_string_lossy().into_owned();
                    eprintln!(
                        "front end thread {}: wchan {} syscall {} stack:\n{}",
                        t.file_name().to_string_lossy(),
                        read(format!("{p}/wchan")),
                        read(format!("{p}/syscall")).trim(),
                        read(format!("{p}/stack"))
                    );
                }
                eprintln!(
                    "blocked tasks:\n{}",
                    super::watchdog::blocked_tasks(std::slice::from_ref(&self.dir))
                );
            }
            panic!("the front end did not come up: first line {line:?}, exit status {status:?}");
        }
        assert!(fs_fuse::is_fuse_mount(&self.dir));
    }

    /// The supervisor's pid (the `txipc mount` process).
    pub fn supervisor_pid(&self) -> i32 {
        self.child.as_ref().expect("front end running").id() as i32
    }

    /// Waits (bounded) for the supervisor's serving worker, the front end proper, other than
    /// `not`: its oldest live child (a standby is started only once the worker serves).
    pub fn worker_pid(&self, not: Option<i32>) -> i32 {
        let sup = self.supervisor_pid();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = children_of(sup).into_iter().find(|&p| Some(p) != not) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no front-end worker under supervisor {sup}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (bounded) for the supervisor's standby worker (its second live child).
    pub fn standby_pid(&self) -> i32 {
        let sup = self.supervisor_pid();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(&pid) = children_of(sup).get(1) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no standby front end under supervisor {sup}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the whole front end (supervisor and worker, so nothing replaces the worker):
    /// the supervisor is stopped first, then the worker is killed, then the supervisor.
    pub fn kill_whole_front_end(&mut self) {
        let sup = self.supervisor_pid();
        let worker = self.worker_pid(None);
        txipc_sys::process::kill(sup, rustix::process::Signal::STOP).unwrap();
        txipc_sys::process::kill(worker, rustix::process::Signal::KILL).unwrap();
        assert!(txipc_sys::process::wait_not_running(
            worker,
            Duration::from_secs(10)
        ));
        let mut c = self.child.take().unwrap();
        txipc_sys::process::kill(sup, rustix::process::Signal::KILL).unwrap();
        c.wait().unwrap();
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    pub fn system(&self) -> txipc_runtime::client::System {
        self.sys.as_ref().unwrap().connect().unwrap()
    }

    /// Waits (bounded) for the front end to exit; returns its stderr-independent status.
    pub fn wait_front_end(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("front end running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "the front end did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = txipc_sys::process::kill(c.id() as i32, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Last resort: a lazy unmount never blocks.
        if fs_fuse::is_fuse_mount(&self.dir) {
            let _ = rustix_unmount_lazy(&self.dir);
        }
        drop(self.sys.take());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn rustix_unmount_lazy(dir: &Path) -> std::io::Result<()> {
    let st = Command::new("umount").arg("-l").arg(dir).status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("umount -l failed"))
    }
}

/// Makes a tree of files with varied sizes (some empty, some sparse-looking) under `root`.
pub fn make_tree(root: &Path, files: u32) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 7)).join(format!("e{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let len = (i * 7919) % 200_000;
        let data: Vec<u8> = (0..len).map(|k| (k ^ (k >> 7) ^ i) as u8).collect();
        std::fs::write(dir.join(format!("file{i}")), data).unwrap();
    }
}

/// Every file under `a` is under `b` with the same bytes, and nothing else is.
pub fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Live (not zombie) children of `pid` (never reads another process's `/proc/PID/stat`; see
/// [`super::children`]).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut c = super::children(pid);
    c.retain(|&p| super::alive(p));
    c
}
