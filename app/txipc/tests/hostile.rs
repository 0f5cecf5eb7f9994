//! Hostile clients against honest ones, with real processes.
//!
//! A client gets file descriptors from the kernel with its grant; whatever memory they reach it
//! can write. No word one client can write may decide whether another client is served.

mod common;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{boot, grant, server};
use probe_server::NullClient;
use txipc_core::proto::{self, Request, Response};

const HOSTILE_ENV: &str = "TXIPC_TEST_HOSTILE_SYSTEM";
const HOSTILE_DIR_ENV: &str = "TXIPC_TEST_HOSTILE_DIR";
/// Longest a hostile helper runs, whatever happens to the test.
const HOSTILE_LIMIT: Duration = Duration::from_secs(60);

/// The hostile client, run as its own process (this test binary, re-executed with
/// [`HOSTILE_ENV`] set; without it this "test" does nothing). It asks the kernel for a channel
/// to `null` by hand, then overwrites every byte of every descriptor it was given, zeros and
/// ones in turn, until told to stop: on the layout before the fix that included the server's
/// shared doorbell and its "sleeping" flag.
#[test]
fn hostile_helper_process() {
    let Ok(system) = std::env::var(HOSTILE_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(HOSTILE_DIR_ENV).expect("hostile dir"));
    let fds = raw_connect(&system, "null");
    assert!(!fds.is_empty(), "the grant carried no descriptors");
    let sizes: Vec<u64> = fds
        .iter()
        .map(|fd| rustix::fs::fstat(fd).expect("fstat").st_size as u64)
        .collect();
    let zeros = vec![0u8; 4096];
    let ones = vec![0xffu8; 4096];
    std::fs::write(dir.join("ready"), b"").expect("ready file");
    let t = Instant::now();
    let mut k = 0u64;
    while t.elapsed() < HOSTILE_LIMIT && !dir.join("stop").exists() {
        for _ in 0..64 {
            for (fd, &size) in fds.iter().zip(&sizes) {
                let page = if k % 8 == 7 { &ones } else { &zeros };
                let len = size.min(4096) as usize;
                let _ = rustix::io::pwrite(fd, &page[..len], 0);
            }
            k += 1;
        }
    }
}

/// Connect request by hand, as a hostile program would send it; returns the descriptors.
fn raw_connect(system: &str, service: &str) -> Vec<OwnedFd> {
    let path = txipc_core::paths::socket_path(system);
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = rustix::net::SocketAddrUnix::new(&path).expect("socket path");
    rustix::net::connect(&sock, &addr).expect("connect to the kernel");
    let req = Request::Connect {
        version: proto::PROTO_VERSION,
        service: service.into(),
    };
    txipc_sys::fdpass::send(&sock, &proto::encode(&req), &[]).expect("send");
    let mut buf = vec![0u8; proto::MAX_CONTROL_MSG];
    let (n, fds) = txipc_sys::fdpass::recv(&sock, &mut buf, false)
        .expect("recv")
        .expect("an answer");
    let resp: Response = proto::decode(&buf[..n]).expect("decode");
    assert!(
        matches!(resp, Response::Connected(_)),
        "connect refused: {resp:?}"
    );
    // Keep the connection (the grant lives as long as it) for the helper's lifetime.
    std::mem::forget(sock);
    fds
}

/// Kills and reaps the helper, and removes its directory, whatever happens.
struct Hostile {
    child: Child,
    dir: PathBuf,
}

impl Hostile {
    fn start(system: &str) -> Hostile {
        let dir = std::env::temp_dir().join(format!(
            "txipc-hostile-{}-{}",
            std::process::id(),
            txipc_sys::time::monotonic_ns()
        ));
        std::fs::create_dir_all(&dir).expect("hostile dir");
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "hostile_helper_process", "--nocapture"])
            .env(HOSTILE_ENV, system)
            .env(HOSTILE_DIR_ENV, &dir)
            .spawn()
            .expect("spawning the hostile client");
        let h = Hostile { child, dir };
        h.wait_ready();
        h
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while !self.dir.join("ready").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the hostile client never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir().join("stop"), b"");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue #7, defect 3: a client that keeps writing everything it was given (before the fix:
/// the server's shared doorbell, whose "sleeping" flag decided whether a posted call woke the
/// server) made every other client's calls time out. Now each client wakes the server through
/// its own channel; the honest client's calls all complete within their deadline while the
/// hostile one scribbles. The pause between calls lets the server fall asleep each time, so
/// every call depends on its wake-up.
#[test]
fn a_client_scribbling_on_all_it_was_given_delays_no_one() {
    let manifest = format!(
        "name = \"hostile\"\n{}{}",
        server("null", "null", "txipc", "deadline_ms = 5000"),
        grant("*", "null")
    );
    let sys = boot("hostile", &manifest);
    let conn = sys.connect().expect("connect");
    let mut ch = conn.open("null").expect("open");
    // The deadline of each honest call.
    ch.set_timeout(Some(Duration::from_secs(2)));
    let honest = NullClient::new(ch);
    honest
        .ping()
        .expect("a call before the hostile client starts");
    let hostile = Hostile::start(sys.name());
    let mut failures = Vec::new();
    for i in 0..60 {
        std::thread::sleep(Duration::from_millis(3));
        let t = Instant::now();
        if let Err(e) = honest.ping() {
            failures.push(format!("call {i}: {e} after {:?}", t.elapsed()));
            if failures.len() >= 3 {
                break;
            }
        }
    }
    drop(hostile);
    drop(honest);
    drop(conn);
    sys.shutdown().expect("shutdown");
    assert!(
        failures.is_empty(),
        "the honest client was starved by a hostile one: {failures:?}"
    );
}
