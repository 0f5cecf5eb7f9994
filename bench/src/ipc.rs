//! `txipc bench ipc`: the null call through the whole system against raw baselines.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use kv_api::KvClient;
use probe_server::NullClient;
use serde::Serialize;
use txipc_chan::SpinConfig;
use txipc_chan::baseline::{
    self, BenchConfig, EchoChannel, IpcBaselines, PingPong, Placement, ReplyPath, Rtt,
    batch_warmup, warmup_before,
};
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
    /// Ratios taken batch by batch: raw spin, channel alone, null call and the payload calls
    /// run one batch each in turn, so a change of load mid-run hits numerator and denominator
    /// alike.
    pub ratios: Ratios,
}

/// One ratio per batch (numerator and denominator from the same round of batches) and their
/// median.
#[derive(Debug, Clone, Serialize)]
pub struct RatioSeries {
    /// Median of `per_batch`.
    pub median: f64,
    /// Numerator batch mean / denominator batch mean, in batch order.
    pub per_batch: Vec<f64>,
}

impl RatioSeries {
    fn new(num: &[f64], den: &[f64]) -> RatioSeries {
        let mut per_batch: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
        let mut sorted = per_batch.clone();
        let median = crate::median(&mut sorted);
        per_batch.shrink_to_fit();
        RatioSeries { median, per_batch }
    }
}

/// The ratios the IPC goals are stated in, per batch.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// txipc null call / raw spinning ping-pong (goal cross-core: at most 1.2).
    pub null_over_raw_spin: RatioSeries,
    /// Channel alone / raw spinning ping-pong.
    pub chan_over_raw_spin: RatioSeries,
    /// txipc null call / channel alone: what the runtime adds above the channel.
    pub null_over_chan: RatioSeries,
    /// kv get of a 1,000-byte value (`get_with`) / txipc null call (goal cross-core: at most
    /// 1.5).
    pub kv_get_over_null: RatioSeries,
    /// The same through the owned stub `get` / txipc null call.
    pub kv_get_owned_over_null: RatioSeries,
}

/// Calls that move byte strings, measured in the same system and the same batches as the null
/// call (each batch runs every call in turn, so drift hits them alike).
#[derive(Debug, Clone, Serialize)]
pub struct PayloadRtts {
    /// Payload size, bytes.
    pub bytes: usize,
    /// `Null::echo` of `bytes` bytes: the byte string crosses both ways.
    pub echo_rtt_ns: Rtt,
    /// `Kv::get` of a key whose value has `bytes` bytes (typed tracking, read-only), through
    /// the borrowing stub `get_with` (the value read where the reply landed: no allocation on
    /// either side).
    pub kv_get_rtt_ns: Rtt,
    /// The same get through the owned stub `get` (the value returned as a new `Bytes`).
    pub kv_get_owned_rtt_ns: Rtt,
    /// The raw spinning ping-pong with `bytes` bytes in every reply (written by the partner
    /// before its reply word, copied out by the caller after it): against `raw_spin_rtt_ns`,
    /// what moving the bytes from one core to the other costs by itself, the floor under a
    /// get's excess over the null call. The bytes move the fastest way measured
    /// (`ReplyPath::Both`: the partner claims the reply lines with `prefetchw` when the
    /// request arrives, the caller prefetches all of them when it sees the reply word; the
    /// `reply_floor` example of `txipc-chan` measures every way).
    pub raw_spin_reply_rtt_ns: Rtt,
    /// The channel alone (no runtime: a forked loop that takes and answers) with `bytes` bytes
    /// in every reply: against `chan_rtt_ns`, what the channel's data path costs a long reply
    /// (reply area, prefetches, copies), against `raw_spin_reply_rtt_ns` the raw floor of it.
    pub chan_reply_rtt_ns: Rtt,
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

fn manifest(cpu: usize, policy: &str, takeover: bool) -> String {
    format!(
        "name = \"bench\"\n\
         [[server]]\nname = \"null\"\nbuiltin = \"null\"\npolicy = \"{policy}\"\nheap_mb = 4\ncpu = {cpu}\nslots = 1\nrequest_max = 4096\nreply_max = 4096\ntakeover = {takeover}\n\
         [[server]]\nname = \"kv\"\nbuiltin = \"kv\"\npolicy = \"{policy}\"\ntracking = \"typed\"\nheap_mb = 8\ncpu = {cpu}\nslots = 1\nrequest_max = 4096\nreply_max = 4096\ntakeover = {takeover}\n\
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

/// The raw ping-pong and the bare channel of one placement, forked (parked) before any system
/// boots, so that their batches can be interleaved with txipc's.
#[derive(Debug)]
pub struct Partners {
    spin: PingPong,
    spin_reply: PingPong,
    chan: EchoChannel,
    chan_reply: EchoChannel,
}

impl Partners {
    /// Forks both partners (call it while this process has one thread).
    pub fn start(placement: Placement) -> Result<Partners> {
        Ok(Partners {
            spin: PingPong::start(placement, false).context("raw spin partner")?,
            spin_reply: PingPong::with_reply_path(placement, PAYLOAD_BYTES, ReplyPath::Both)
                .context("raw spin partner with a reply")?,
            chan: EchoChannel::start(placement, SpinConfig::default(), baseline::SERVER_SPIN)
                .context("channel partner")?,
            chan_reply: EchoChannel::with_reply(
                placement,
                SpinConfig::default(),
                baseline::SERVER_SPIN,
                PAYLOAD_BYTES,
            )
            .context("channel partner with a reply")?,
        })
    }

    fn stop(self) -> Result<()> {
        self.spin.stop().context("raw spin partner")?;
        self.spin_reply
            .stop()
            .context("raw spin partner with a reply")?;
        self.chan.stop().context("channel partner")?;
        self.chan_reply
            .stop()
            .context("channel partner with a reply")?;
        Ok(())
    }
}

/// What one placement's interleaved batches measured.
#[derive(Debug)]
pub struct Interleaved {
    /// Raw spinning ping-pong.
    pub raw_spin: Rtt,
    /// Channel alone.
    pub chan: Rtt,
    /// txipc null call.
    pub null: Rtt,
    /// Payload calls.
    pub payload: PayloadRtts,
    /// Per-batch ratios.
    pub ratios: Ratios,
}

/// Measures, for one placement, the raw spin, the channel alone, the txipc null call and the
/// payload calls in interleaved batches: each round runs one batch of each in turn.
pub fn interleaved(
    exe: &Path,
    placement: Placement,
    partners: &mut Partners,
    cfg: &BenchConfig,
    takeover: bool,
) -> Result<Interleaved> {
    let (client_cpu, server_cpu) = match placement {
        Placement::CrossCore => (0, 1),
        Placement::SameCore => (0, 0),
    };
    let name = crate::unique_system("bench-ipc");
    let sys = SystemProcess::spawn(
        exe,
        &manifest(server_cpu, "txipc", takeover),
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
        let n = kv
            .get_with(&key, |v| v.map(<[u8]>::len))
            .map_err(|e| anyhow::anyhow!("kv get: {e}"))?;
        anyhow::ensure!(n == Some(PAYLOAD_BYTES), "kv get returned the wrong value");
        Ok(())
    };
    let get_owned = || {
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
    batch(&warm, get_owned)?;
    let per_batch = BenchConfig {
        iterations: batch_warmup(cfg),
        ..*cfg
    };
    let (mut r, mut rr, mut c, mut cr, mut p, mut e, mut g, mut go) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for b in 0..cfg.batches {
        let w = warmup_before(cfg, b);
        r.push(partners.spin.batch(w, cfg.iterations)?);
        rr.push(partners.spin_reply.batch(w, cfg.iterations)?);
        c.push(partners.chan.batch(w, cfg.iterations)?);
        cr.push(partners.chan_reply.batch(w, cfg.iterations)?);
        // The servers slept while the partners ran: wake them untimed, as the partners are.
        batch(&per_batch, ping)?;
        p.push(batch(cfg, ping)?);
        batch(&per_batch, echo)?;
        e.push(batch(cfg, echo)?);
        batch(&per_batch, get)?;
        g.push(batch(cfg, get)?);
        batch(&per_batch, get_owned)?;
        go.push(batch(cfg, get_owned)?);
    }
    let _ = txipc_sys::process::pin_to_cpu_set_all();
    drop(null);
    drop(kv);
    drop(conn);
    sys.shutdown()?;
    let ratios = Ratios {
        null_over_raw_spin: RatioSeries::new(&p, &r),
        chan_over_raw_spin: RatioSeries::new(&c, &r),
        null_over_chan: RatioSeries::new(&p, &c),
        kv_get_over_null: RatioSeries::new(&g, &p),
        kv_get_owned_over_null: RatioSeries::new(&go, &p),
    };
    Ok(Interleaved {
        raw_spin: rtt(r, cfg),
        chan: rtt(c, cfg),
        null: rtt(p, cfg),
        payload: PayloadRtts {
            bytes: PAYLOAD_BYTES,
            echo_rtt_ns: rtt(e, cfg),
            kv_get_rtt_ns: rtt(g, cfg),
            kv_get_owned_rtt_ns: rtt(go, cfg),
            raw_spin_reply_rtt_ns: rtt(rr, cfg),
            chan_reply_rtt_ns: rtt(cr, cfg),
        },
        ratios,
    })
}

/// Runs every measurement. The partners of both placements are forked first, while this
/// process is still single-threaded; then the futex and socket baselines run (back to back:
/// no goal is a ratio to them across cores), then the peers (with `peers`, processes of their
/// own), then, per placement, raw spin, channel alone and txipc in interleaved batches.
/// `takeover`: the servers' standbys are armed as their spares (the manifest's `takeover`).
pub fn run(exe: &Path, cfg: &BenchConfig, peers: bool, takeover: bool) -> Result<IpcReport> {
    let mut cross_partners = Partners::start(Placement::CrossCore)?;
    let mut same_partners = Partners::start(Placement::SameCore)?;
    let others = |placement| -> Result<(Rtt, Rtt)> {
        Ok((
            baseline::raw_futex_rtt_ns(placement, cfg)?,
            baseline::unix_socket_rtt_ns(placement, cfg)?,
        ))
    };
    let (cross_futex, cross_unix) = others(Placement::CrossCore)?;
    let (same_futex, same_unix) = others(Placement::SameCore)?;
    let peers = if peers {
        Some(measure_peers(exe, cfg)?)
    } else {
        None
    };
    let cross = interleaved(
        exe,
        Placement::CrossCore,
        &mut cross_partners,
        cfg,
        takeover,
    )?;
    let same = interleaved(exe, Placement::SameCore, &mut same_partners, cfg, takeover)?;
    cross_partners.stop()?;
    same_partners.stop()?;
    let result = |placement, i: Interleaved, futex, unix| PlacementResult {
        baselines: IpcBaselines {
            placement,
            raw_spin_rtt_ns: i.raw_spin,
            raw_futex_rtt_ns: futex,
            unix_socket_rtt_ns: unix,
            chan_rtt_ns: i.chan,
        },
        txipc_rtt_ns: i.null,
        payload: i.payload,
        ratios: i.ratios,
    };
    Ok(IpcReport {
        peers,
        cross_core: result(Placement::CrossCore, cross, cross_futex, cross_unix),
        same_core: result(Placement::SameCore, same, same_futex, same_unix),
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
