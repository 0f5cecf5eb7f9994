//! `txipc bench ipc --peers`: two other IPC systems' request-response round trips between two
//! processes, measured in the same run as txipc (feature `peers`).
//!
//! | peer | what crosses | how each side waits |
//! | --- | --- | --- |
//! | iceoryx2 (`ipc::Service`, request-response, `u64` request and response) | a shared-memory sample each way, loaned and sent with `send_copy` | both busy-poll (`receive` in a loop): iceoryx2's lowest-latency mode, the same as txipc's spinning phase |
//! | Servo's `ipc-channel` (`IpcSender<u64>` / `IpcReceiver<u64>`) | one message each way over its Unix-socket transport | blocking `recv` |
//!
//! The server is a second process: the txipc binary itself started as
//! `txipc bench peer-serve --peer KIND --cpu N --name NAME` (hidden), pinned to `N`; the client is
//! this process's calling thread, pinned to CPU 0. The server answers every request `x` with
//! `x + 1`, and the client checks each answer, so a peer that dropped or reordered a message
//! fails the bench instead of timing nothing. Request `u64::MAX` asks the server to exit; a
//! guard SIGKILLs and reaps it if the bench fails first.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use txipc_chan::baseline::{BenchConfig, Rtt};

use crate::ipc::PeerRtts;

/// Which peer a `peer-serve` process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// iceoryx2 request-response over shared memory.
    Iceoryx2,
    /// Servo's ipc-channel.
    IpcChannel,
}

impl Peer {
    fn arg(self) -> &'static str {
        match self {
            Peer::Iceoryx2 => "iceoryx2",
            Peer::IpcChannel => "ipc-channel",
        }
    }
}

/// The request that ends a server.
const QUIT: u64 = u64::MAX;

/// How long a peer server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one answer may take before the bench gives up on the peer (it is dead or stuck).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A started peer server: SIGKILLed and reaped on drop unless it exited.
struct Server {
    child: Child,
    /// The line it printed after `ready` (ipc-channel: the one-shot server's name).
    ready: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(exe: &Path, peer: Peer, cpu: usize, name: &str) -> Result<Server> {
        let mut child = Command::new(exe)
            .args(["bench", "peer-serve", "--peer", peer.arg(), "--cpu"])
            .arg(cpu.to_string())
            .args(["--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {} peer server", peer.arg()))?;
        let out = child.stdout.take().expect("stdout is piped");
        // Read the ready line on a thread so that a server that never answers cannot hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(out).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let mut server = Server {
            child,
            ready: String::new(),
        };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => bail!("reading the {} peer's ready line: {e}", peer.arg()),
            Err(_) => bail!(
                "the {} peer server did not say ready within {READY_TIMEOUT:?}",
                peer.arg()
            ),
        };
        let Some(rest) = line.trim_end().strip_prefix("ready") else {
            bail!(
                "the {} peer server failed to start (it printed {line:?}; see its stderr above)",
                peer.arg()
            );
        };
        server.ready = rest.trim().to_string();
        Ok(server)
    }

    /// Waits (bounded) for the server to exit after QUIT; an error if it failed.
    fn finish(mut self, peer: Peer) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait()? {
                ensure!(st.success(), "the {} peer server {st}", peer.arg());
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the {} peer server did not exit after quit", peer.arg());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn rtt(mut means: Vec<f64>, cfg: &BenchConfig) -> Rtt {
    let min = means.iter().copied().fold(f64::INFINITY, f64::min);
    let max = means.iter().copied().fold(0.0, f64::max);
    Rtt {
        median_ns: crate::median(&mut means),
        min_ns: min,
        max_ns: max,
        iterations: cfg.iterations,
        batches: cfg.batches,
    }
}

/// Times `cfg.batches` batches of `cfg.iterations` calls of `call` (after `cfg.warmup`), which
/// sends its argument and returns the answer; every answer is checked.
fn measure(cfg: &BenchConfig, mut call: impl FnMut(u64) -> Result<u64>) -> Result<Rtt> {
    let mut x = 0u64;
    let mut step = |call: &mut dyn FnMut(u64) -> Result<u64>| -> Result<()> {
        let y = call(x)?;
        ensure!(y == x + 1, "peer answered {y} to request {x}");
        x += 1;
        Ok(())
    };
    for _ in 0..cfg.warmup.max(1) {
        step(&mut call)?;
    }
    let mut means = Vec::with_capacity(cfg.batches as usize);
    for _ in 0..cfg.batches {
        let t = Instant::now();
        for _ in 0..cfg.iterations {
            step(&mut call)?;
        }
        means.push(t.elapsed().as_nanos() as f64 / f64::from(cfg.iterations.max(1)));
    }
    Ok(rtt(means, cfg))
}

fn unique_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("txipc-bench-{what}-{}-{nanos}", std::process::id())
}

/// Measures both peers cross-core: this thread on `client_cpu`, the server on `server_cpu`.
/// Leaves this thread pinned to `client_cpu`; the caller unpins.
pub fn measure_all(
    exe: &Path,
    client_cpu: usize,
    server_cpu: usize,
    cfg: &BenchConfig,
) -> Result<PeerRtts> {
    txipc_sys::process::pin_to_cpu(client_cpu).context("pinning the client")?;
    let iceoryx2_rtt_ns = iceoryx2_client(exe, server_cpu, cfg).context("iceoryx2 peer")?;
    let ipc_channel_rtt_ns =
        ipc_channel_client(exe, server_cpu, cfg).context("ipc-channel peer")?;
    Ok(PeerRtts {
        iceoryx2_rtt_ns,
        ipc_channel_rtt_ns,
    })
}

/// The hidden `txipc bench peer-serve` command: serves `peer` on `cpu` until told to quit.
pub fn serve(peer: Peer, cpu: usize, name: &str) -> Result<()> {
    txipc_sys::process::pin_to_cpu(cpu).context("pinning the peer server")?;
    match peer {
        Peer::Iceoryx2 => iceoryx2_server(name),
        Peer::IpcChannel => ipc_channel_server(),
    }
}

fn say_ready(extra: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {extra}")?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// iceoryx2
// ---------------------------------------------------------------------------------------------

/// The run's own iceoryx2 domain: its files under `/tmp/NAME/` and, in `/dev/shm`, named
/// `NAME_…`, so that [`Iceoryx2Files`] removes all of them after the run, the machine-wide
/// management segment included (iceoryx2 keeps it for later runs of its default domain).
fn iceoryx2_config(name: &str) -> Result<iceoryx2::config::Config> {
    use iceoryx2::prelude::*;
    let mut config = Config::default();
    let root = Path::new(format!("/tmp/{name}/").as_bytes())
        .map_err(|e| anyhow::anyhow!("iceoryx2 root path for {name:?}: {e:?}"))?;
    config.global.set_root_path(&root);
    config.global.prefix = FileName::new(format!("{name}_").as_bytes())
        .map_err(|e| anyhow::anyhow!("iceoryx2 file prefix for {name:?}: {e:?}"))?;
    Ok(config)
}

/// Removes the files of the run's iceoryx2 domain (see [`iceoryx2_config`]) when dropped,
/// however the run ends.
struct Iceoryx2Files(String);

impl Drop for Iceoryx2Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/tmp/{}", self.0));
        let prefix = format!("{}_", self.0);
        if let Ok(dir) = std::fs::read_dir("/dev/shm") {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

fn iceoryx2_service(
    name: &str,
) -> Result<(
    iceoryx2::node::Node<iceoryx2::service::ipc::Service>,
    iceoryx2::service::service_name::ServiceName,
)> {
    use iceoryx2::prelude::*;
    set_log_level(LogLevel::Error);
    let node = NodeBuilder::new()
        .config(&iceoryx2_config(name)?)
        .create::<ipc::Service>()
        .map_err(|e| anyhow::anyhow!("iceoryx2 node: {e:?}"))?;
    let service_name: ServiceName = name
        .try_into()
        .map_err(|e| anyhow::anyhow!("iceoryx2 service name {name:?}: {e:?}"))?;
    Ok((node, service_name))
}

fn iceoryx2_server(name: &str) -> Result<()> {
    let (node, service_name) = iceoryx2_service(name)?;
    let service = node
        .service_builder(&service_name)
        .request_response::<u64, u64>()
        .create()
        .map_err(|e| anyhow::anyhow!("iceoryx2 create service: {e:?}"))?;
    let server = service
        .server_builder()
        .create()
        .map_err(|e| anyhow::anyhow!("iceoryx2 server: {e:?}"))?;
    say_ready("")?;
    loop {
        let Some(req) = server
            .receive()
            .map_err(|e| anyhow::anyhow!("iceoryx2 receive: {e:?}"))?
        else {
            std::hint::spin_loop();
            continue;
        };
        let x = *req.payload();
        req.send_copy(x.wrapping_add(1))
            .map_err(|e| anyhow::anyhow!("iceoryx2 respond: {e:?}"))?;
        if x == QUIT {
            return Ok(());
        }
    }
}

fn iceoryx2_client(exe: &Path, server_cpu: usize, cfg: &BenchConfig) -> Result<Rtt> {
    let name = unique_name("iox2");
    // Dropped last: after the server has exited and the client's node is gone.
    let _files = Iceoryx2Files(name.clone());
    let server = Server::start(exe, Peer::Iceoryx2, server_cpu, &name)?;
    let (node, service_name) = iceoryx2_service(&name)?;
    let service = node
        .service_builder(&service_name)
        .request_response::<u64, u64>()
        .open()
        .map_err(|e| anyhow::anyhow!("iceoryx2 open service: {e:?}"))?;
    let client = service
        .client_builder()
        .create()
        .map_err(|e| anyhow::anyhow!("iceoryx2 client: {e:?}"))?;
    let call = |x: u64| -> Result<u64> {
        let pending = client
            .send_copy(x)
            .map_err(|e| anyhow::anyhow!("iceoryx2 request: {e:?}"))?;
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(resp) = pending
                .receive()
                .map_err(|e| anyhow::anyhow!("iceoryx2 response: {e:?}"))?
            {
                return Ok(*resp.payload());
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && start.elapsed() > ANSWER_TIMEOUT {
                bail!("no iceoryx2 response within {ANSWER_TIMEOUT:?}");
            }
        }
    };
    let r = measure(cfg, call)?;
    ensure!(call(QUIT)? == 0, "iceoryx2 peer did not acknowledge quit");
    server.finish(Peer::Iceoryx2)?;
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// ipc-channel
// ---------------------------------------------------------------------------------------------

/// What the server hands the client through the one-shot bootstrap: where to send requests and
/// where to read answers.
type Bootstrap = (
    ipc_channel::ipc::IpcSender<u64>,
    ipc_channel::ipc::IpcReceiver<u64>,
);

fn ipc_channel_server() -> Result<()> {
    use ipc_channel::ipc;
    let (boot, boot_name) =
        ipc::IpcOneShotServer::<Bootstrap>::new().context("ipc-channel: one-shot server")?;
    say_ready(&boot_name)?;
    // The client created both channels and sent us the reply sender and the request receiver.
    let (_, (rep_tx, req_rx)): (ipc::IpcReceiver<Bootstrap>, Bootstrap) =
        boot.accept().context("ipc-channel: accept")?;
    loop {
        let x = req_rx.recv().context("ipc-channel: receive")?;
        rep_tx
            .send(x.wrapping_add(1))
            .context("ipc-channel: reply")?;
        if x == QUIT {
            return Ok(());
        }
    }
}

fn ipc_channel_client(exe: &Path, server_cpu: usize, cfg: &BenchConfig) -> Result<Rtt> {
    use ipc_channel::ipc;
    let server = Server::start(exe, Peer::IpcChannel, server_cpu, "-")?;
    let (req_tx, req_rx) = ipc::channel::<u64>().context("ipc-channel: request channel")?;
    let (rep_tx, rep_rx) = ipc::channel::<u64>().context("ipc-channel: reply channel")?;
    let boot: ipc::IpcSender<Bootstrap> = ipc::IpcSender::connect(server.ready.clone())
        .context("ipc-channel: connecting to the server's bootstrap")?;
    boot.send((rep_tx, req_rx))
        .context("ipc-channel: sending the channels")?;
    let call = |x: u64| -> Result<u64> {
        req_tx.send(x).context("ipc-channel: request")?;
        // Blocking, as ipc-channel is meant to be used; a dead server closes the socket and
        // ends the wait with an error.
        rep_rx.recv().context("ipc-channel: answer")
    };
    let r = measure(cfg, call)?;
    ensure!(
        call(QUIT)? == 0,
        "ipc-channel peer did not acknowledge quit"
    );
    server.finish(Peer::IpcChannel)?;
    Ok(r)
}
