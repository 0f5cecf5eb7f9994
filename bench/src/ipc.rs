//! `txipc bench ipc`: the null call through the whole system against raw baselines.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use kv_api::KvClient;
use probe_server::NullClient;
use serde::Serialize;
use txipc_chan::baseline::{self, BenchConfig, IpcBaselines, Placement, Rtt};
use txipc_runtime::client::SystemProcess;

/// One placement's results.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementResult {
    /// The raw baselines (forked ping-pong pairs).
    pub baselines: IpcBaselines,
    /// The txipc null call: client stub → channel → server runtime (transaction, commit) → reply.
    pub txipc_rtt_ns: Rtt,
    /// The txipc calls with payloads, measured interleaved with the null call.
    pub payload: PayloadRtts,
}

/// Calls that move byte strings, measured in the same system and the same batches as the null
/// call (each batch runs every call in turn, so drift hits them alike).
#[derive(Debug, Clone, Serialize)]
pub struct PayloadRtts {
    /// Payload size, bytes.
    pub bytes: usize,
    /// `Null::echo` of `bytes` bytes: the byte string crosses both ways.
    pub echo_rtt_ns: Rtt,
    /// `Kv::get` of a key whose value has `bytes` bytes (typed tracking, read-only).
    pub kv_get_rtt_ns: Rtt,
}

/// Other IPC systems' round trips, cross-core, measured in the same run (`--peers`).
#[derive(Debug, Clone, Serialize)]
pub struct PeerRtts {
    /// iceoryx2 request-response, `u64` each way, both sides busy-polling.
    pub iceoryx2_rtt_ns: Rtt,
    /// Servo's ipc-channel, `u64` each way, blocking receive.
    pub ipc_channel_rtt_ns: Rtt,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct IpcReport {
    /// The peers (cross-core), with `--peers`.
    pub peers: Option<PeerRtts>,
    /// Client on CPU 0, server on CPU 1.
    pub cross_core: PlacementResult,
    /// Both on CPU 0.
    pub same_core: PlacementResult,
}

/// Payload of the echo and kv-get rows.
pub const PAYLOAD_BYTES: usize = 1000;

fn manifest(cpu: usize, policy: &str) -> String {
    format!(
        "name = \"bench\"\n\
         [[server]]\nname = \"null\"\nbuiltin = \"null\"\npolicy = \"{policy}\"\nheap_mb = 4\ncpu = {cpu}\nslots = 1\nrequest_max = 4096\nreply_max = 4096\n\
         [[server]]\nname = \"kv\"\nbuiltin = \"kv\"\npolicy = \"{policy}\"\ntracking = \"typed\"\nheap_mb = 8\ncpu = {cpu}\nslots = 1\nrequest_max = 4096\nreply_max = 4096\n\
         [[grant]]\nclient = \"*\"\nservice = \"null\"\n[[grant]]\nclient = \"*\"\nservice = \"kv\"\n"
    )
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

/// Mean ns per call of `f` over one batch.
fn batch(cfg: &BenchConfig, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..cfg.iterations {
        f()?;
    }
    Ok(t.elapsed().as_nanos() as f64 / cfg.iterations as f64)
}

/// Measures the txipc null call, and the payload calls beside it, for one placement.
pub fn txipc_rtts(
    exe: &Path,
    placement: Placement,
    cfg: &BenchConfig,
) -> Result<(Rtt, PayloadRtts)> {
    let (client_cpu, server_cpu) = match placement {
        Placement::CrossCore => (0, 1),
        Placement::SameCore => (0, 0),
    };
    let name = crate::unique_system("bench-ipc");
    let sys = SystemProcess::spawn(
        exe,
        &manifest(server_cpu, "txipc"),
        &name,
        crate::BOOT_TIMEOUT,
    )
    .context("booting the benchmark system")?;
    let conn = sys.connect()?;
    let null = NullClient::new(conn.open("null")?);
    let kv = KvClient::new(conn.open("kv")?);
    let payload = vec![0x5a_u8; PAYLOAD_BYTES];
    let key = b"bench-ipc-key".to_vec();
    kv.put(key.clone(), payload.clone())
        .map_err(|e| anyhow::anyhow!("kv put: {e}"))?;
    txipc_sys::process::pin_to_cpu(client_cpu).context("pinning the client")?;
    let ping = || null.ping().map_err(anyhow::Error::from);
    let echo = || {
        let back = null.echo(&payload)?;
        anyhow::ensure!(
            back.len() == PAYLOAD_BYTES,
            "echo returned {} bytes",
            back.len()
        );
        Ok(())
    };
    let get = || {
        let v = kv.get(&key).map_err(|e| anyhow::anyhow!("kv get: {e}"))?;
        anyhow::ensure!(
            v.as_ref().map(|v| v.len()) == Some(PAYLOAD_BYTES),
            "kv get returned the wrong value"
        );
        Ok(())
    };
    let warm = BenchConfig {
        iterations: cfg.warmup.max(1),
        ..*cfg
    };
    batch(&warm, ping)?;
    batch(&warm, echo)?;
    batch(&warm, get)?;
    let (mut p, mut e, mut g) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.batches {
        p.push(batch(cfg, ping)?);
        e.push(batch(cfg, echo)?);
        g.push(batch(cfg, get)?);
    }
    let _ = txipc_sys::process::pin_to_cpu_set_all();
    drop(null);
    drop(kv);
    drop(conn);
    sys.shutdown()?;
    Ok((
        rtt(p, cfg),
        PayloadRtts {
            bytes: PAYLOAD_BYTES,
            echo_rtt_ns: rtt(e, cfg),
            kv_get_rtt_ns: rtt(g, cfg),
        },
    ))
}

/// Runs every measurement. The raw baselines run first, while this process is still
/// single-threaded (they fork); then the peers (with `peers`, started as processes of their
/// own), then txipc.
pub fn run(exe: &Path, cfg: &BenchConfig, peers: bool) -> Result<IpcReport> {
    let cross = baseline::measure_all(Placement::CrossCore, cfg)?;
    let same = baseline::measure_all(Placement::SameCore, cfg)?;
    let peers = if peers {
        Some(measure_peers(exe, cfg)?)
    } else {
        None
    };
    let (tx_cross, pay_cross) = txipc_rtts(exe, Placement::CrossCore, cfg)?;
    let (tx_same, pay_same) = txipc_rtts(exe, Placement::SameCore, cfg)?;
    Ok(IpcReport {
        peers,
        cross_core: PlacementResult {
            baselines: cross,
            txipc_rtt_ns: tx_cross,
            payload: pay_cross,
        },
        same_core: PlacementResult {
            baselines: same,
            txipc_rtt_ns: tx_same,
            payload: pay_same,
        },
    })
}

#[cfg(feature = "peers")]
fn measure_peers(exe: &Path, cfg: &BenchConfig) -> Result<PeerRtts> {
    let r = crate::peers::measure_all(exe, 0, 1, cfg);
    let _ = txipc_sys::process::pin_to_cpu_set_all();
    r
}

#[cfg(not(feature = "peers"))]
fn measure_peers(_exe: &Path, _cfg: &BenchConfig) -> Result<PeerRtts> {
    anyhow::bail!("this txipc was built without the `peers` feature (see the README)")
}
