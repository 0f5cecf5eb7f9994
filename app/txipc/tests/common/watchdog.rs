//! A bound that binds, for tests on a real FUSE mount.
//!
//! A program stuck on a mount whose front end does not answer waits in the kernel
//! (`request_wait_answer`) for as long as the connection lives, and so would any loop of the
//! test that looks at it: a bound checked by the test's own thread can only fire once that
//! thread is free again. The [`Watchdog`] is a thread of its own that touches nothing on the
//! mount. When its bound passes before the test disarms it, it
//! 1. writes down every blocked (D-state), stopped or FUSE-waiting task of the machine: comm, wchan and
//!    kernel stack, each read from `/proc` on a thread of its own with a 1 s bound (never
//!    `cmdline` or `stat`, which can block behind a task stuck on the mount), and how many
//!    requests each watched connection has waiting;
//! 2. aborts the FUSE connection of each watched mount through fusectl
//!    (`/sys/fs/fuse/connections/N/abort`): every request waiting on it fails with
//!    `ENOTCONN`, which frees whatever waited on it;
//! 3. SIGKILLs the front end it was told about (the supervisor and its workers) and every
//!    descendant of this process named as one of the test's programs;
//! 4. detaches the mount (`umount -l`);
//! 5. records the diagnosis: [`Watchdog::finish`] (or the test's [`Watchdog::fired`]) turns it
//!    into a failure. If the test's thread does not get there within [`GRACE`] (it is blocked
//!    on something the abort did not free), the watchdog prints the diagnosis and ends the
//!    test process with a failure status itself, removing the dirs it was given.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::descendants;
use super::fsmount::children_of;

/// How long the test's thread has, once the watchdog fired, to reach [`Watchdog::finish`]
/// before the watchdog ends the process.
pub const GRACE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    disarmed: bool,
    diagnosis: Option<String>,
    mounts: Vec<PathBuf>,
    front_end: Option<i32>,
    remove_at_exit: Vec<PathBuf>,
}

struct Shared {
    what: String,
    programs: Vec<String>,
    state: Mutex<State>,
    cv: Condvar,
}

/// See the module's documentation.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog over `what` that fires `bound` from now. `programs`: command names
    /// (`comm`) of the test's programs, killed when it fires.
    pub fn arm(what: &str, bound: Duration, programs: &[&str]) -> Watchdog {
        let shared = Arc::new(Shared {
            what: what.into(),
            programs: programs.iter().map(|p| p.to_string()).collect(),
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(&s, Instant::now() + bound))
            .expect("spawning the watchdog");
        Watchdog {
            shared,
            thread: Some(thread),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mount to abort and detach when it fires.
    pub fn watch_mount(&self, dir: &Path) {
        self.state().mounts.push(dir.to_path_buf());
    }

    /// The running front end (its supervisor's pid), killed with its workers when it fires.
    pub fn front_end(&self, supervisor: Option<i32>) {
        self.state().front_end = supervisor;
    }

    /// A directory removed if the watchdog has to end the process itself.
    pub fn remove_at_exit(&self, dir: &Path) {
        self.state().remove_at_exit.push(dir.to_path_buf());
    }

    /// The diagnosis, if it fired.
    pub fn fired(&self) -> Option<String> {
        self.state().diagnosis.clone()
    }

    /// Waits (at most `timeout`) for it to fire; its diagnosis.
    pub fn wait_fired(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        while st.diagnosis.is_none() && Instant::now() < deadline {
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - Instant::now())
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.diagnosis.clone()
    }

    /// Disarms it; fails the test with the diagnosis if it fired.
    pub fn finish(mut self) {
        let diagnosis = self.disarm();
        if let Some(d) = diagnosis {
            panic!("{d}");
        }
    }

    fn disarm(&mut self) -> Option<String> {
        let d = {
            let mut st = self.state();
            st.disarmed = true;
            st.diagnosis.clone()
        };
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        d
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(d) = self.disarm()
            && !std::thread::panicking()
        {
            panic!("{d}");
        }
    }
}

fn watch(s: &Shared, deadline: Instant) {
    let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
    while !st.disarmed {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        st =
            s.cv.wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
    }
    if st.disarmed {
        return;
    }
    let mounts = st.mounts.clone();
    let front_end = st.front_end;
    drop(st);

    let mut report = format!(
        "watchdog: {} did not finish within its bound; what was blocked:\n",
        s.what
    );
    report.push_str(&blocked_tasks(&mounts));
    // Free whatever waits on the mounts, then end the storm's processes.
    for m in &mounts {
        report.push_str(&format!("  {}\n", abort_connection(m)));
    }
    if let Some(sup) = front_end {
        let workers = children_of(sup);
        let _ = txipc_sys::process::kill(sup, rustix::process::Signal::KILL);
        for w in workers {
            let _ = txipc_sys::process::kill(w, rustix::process::Signal::KILL);
        }
    }
    let mut killed = Vec::new();
    for pid in descendants(std::process::id() as i32) {
        let comm = read_bounded(format!("/proc/{pid}/comm")).unwrap_or_default();
        if s.programs.iter().any(|p| p == comm.trim()) {
            let _ = txipc_sys::process::kill(pid, rustix::process::Signal::KILL);
            killed.push(format!("{} {pid}", comm.trim()));
        }
    }
    report.push_str(&format!("  killed: {killed:?}\n"));
    for m in &mounts {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }

    let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
    st.diagnosis = Some(report.clone());
    s.cv.notify_all();
    // The test's thread now fails the test; if it cannot get there, end the process.
    let deadline = Instant::now() + GRACE;
    while !st.disarmed && Instant::now() < deadline {
        st =
            s.cv.wait_timeout(st, deadline - Instant::now())
                .unwrap_or_else(|e| e.into_inner())
                .0;
    }
    if !st.disarmed {
        eprintln!(
            "{report}watchdog: the test's thread is still blocked {GRACE:?} later; ending the test process"
        );
        for d in &st.remove_at_exit {
            let _ = std::fs::remove_dir_all(d);
        }
        std::process::exit(101);
    }
}

/// Reads `path` on a thread of its own, waiting at most 1 s (a `/proc` read can block behind
/// a task stuck on a mount; the thread is then left behind).
pub fn read_bounded(path: impl Into<PathBuf>) -> Option<String> {
    let path = path.into();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(path).ok());
    });
    rx.recv_timeout(Duration::from_secs(1)).ok().flatten()
}

/// Every task that is blocked (D state), stopped, or waiting in FUSE or on a page-cache
/// folio, or inside execve: pid, tid, comm, state, wchan, kernel stack, and its descriptors
/// of files under `mounts`.
pub fn blocked_tasks(mounts: &[PathBuf]) -> String {
    let mut out = String::new();
    let start = Instant::now();
    let mut procs: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    procs.sort_unstable();
    // This process's own descendants first: on a busy machine (other suites stopping servers,
    // other mounts' waiters) the list is cut short, and the test's programs must be in it.
    let mine = descendants(std::process::id() as i32);
    procs.sort_by_key(|&p| !mine.contains(&(p as i32)));
    let mut shown = 0;
    for pid in procs {
        if start.elapsed() > Duration::from_secs(30) || shown >= 64 {
            out.push_str("  (the list is cut short)\n");
            break;
        }
        let tasks: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for tid in tasks {
            let dir = format!("/proc/{pid}/task/{tid}");
            let Some(status) = read_bounded(format!("{dir}/status")) else {
                out.push_str(&format!("  pid {pid} tid {tid}: status unreadable\n"));
                continue;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("?")
                    .to_string()
            };
            let state = field("State:");
            // Unreadable (the read waits on the task's exec_update_lock): the task is inside
            // execve, where it can wait on a mount while closing its close-on-exec files.
            let wchan = read_bounded(format!("{dir}/wchan"))
                .unwrap_or_else(|| "(unreadable: inside execve)".into());
            let waits_on_fs = ["fuse", "request_wait", "folio", "execve"]
                .iter()
                .any(|w| wchan.contains(w));
            if !(state.starts_with('D') || state.starts_with('T') || waits_on_fs) {
                continue;
            }
            shown += 1;
            let comm = read_bounded(format!("{dir}/comm")).unwrap_or_default();
            let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .take(256)
                .filter_map(|e| {
                    let (tx, rx) = mpsc::channel();
                    let p = e.path();
                    std::thread::spawn(move || {
                        let _ = tx.send(std::fs::read_link(p).ok());
                    });
                    let target = rx.recv_timeout(Duration::from_secs(1)).ok().flatten()?;
                    let t = target.to_string_lossy().into_owned();
                    mounts
                        .iter()
                        .any(|m| t.starts_with(&*m.to_string_lossy()))
                        .then(|| format!("{} -> {t}", e.file_name().to_string_lossy()))
                })
                .collect();
            let stack = read_bounded(format!("{dir}/stack"))
                .unwrap_or_else(|| "(stack unreadable)\n".into());
            out.push_str(&format!(
                "  pid {pid} tid {tid} ppid {} comm {} state {state} wchan {}\n",
                field("PPid:"),
                comm.trim(),
                wchan.trim()
            ));
            if !fds.is_empty() {
                out.push_str(&format!("      open on a watched mount: {fds:?}\n"));
            }
            for l in stack.lines() {
                out.push_str(&format!("      {l}\n"));
            }
        }
    }
    if shown == 0 {
        out.push_str("  no task was blocked or stopped\n");
    }
    out
}

/// The fusectl name (the device minor) of the FUSE connection mounted on `dir`, from
/// `/proc/self/mountinfo` (never touches `dir`).
pub fn connection_of(dir: &Path) -> Option<String> {
    let dir = fs_fuse::mount_path(dir);
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|&x| x == "-")?;
        let fstype = f.get(sep + 1)?;
        (*f.get(4)? == dir.to_string_lossy() && fstype.starts_with("fuse"))
            .then(|| f.get(2)?.split(':').nth(1).map(str::to_string))
            .flatten()
    })
}

/// Aborts the FUSE connection mounted on `dir` through fusectl (mounting fusectl for the
/// moment if it is not mounted); says what it did and how many requests were waiting.
pub fn abort_connection(dir: &Path) -> String {
    let Some(conn) = connection_of(dir) else {
        return format!("{}: not a FUSE mount (nothing to abort)", dir.display());
    };
    let ctl = Path::new("/sys/fs/fuse/connections");
    let mounted_here = !ctl.join(&conn).exists()
        && Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(ctl)
            .status()
            .is_ok_and(|s| s.success());
    let waiting = read_bounded(ctl.join(&conn).join("waiting"));
    let r = std::fs::write(ctl.join(&conn).join("abort"), "1");
    if mounted_here {
        let _ = Command::new("umount").arg(ctl).status();
    }
    let waiting = waiting.as_deref().map_or("?", str::trim).to_string();
    match r {
        Ok(()) => format!(
            "FUSE connection {conn} ({}): {waiting} requests waiting; aborted",
            dir.display()
        ),
        Err(e) => format!(
            "FUSE connection {conn} ({}): {waiting} requests waiting; abort failed: {e}",
            dir.display()
        ),
    }
}
