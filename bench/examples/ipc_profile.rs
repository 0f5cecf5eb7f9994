//! A bounded number of null calls and 1,000-byte kv gets against a freshly booted system, for
//! profiling the call path.
//!
//! `cargo run --release -p txipc-bench --example ipc_profile -- TXIPC_EXE CALLS [SERVER_EXEC]`
//!
//! The client runs on CPU 0, the servers on CPU 1: `perf record -e cpu-clock -C 0,1` samples
//! both sides (perf has no hardware counters on the development VM, but its software clock
//! works). With `SERVER_EXEC`, a program that runs `TXIPC_EXE` with the arguments it is given,
//! both servers are started through it (a profiler wrapper; valgrind 3.19 cannot run a server:
//! it lacks `pidfd_open`). Prints the calls made and their time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kv_api::KvClient;
use probe_server::NullClient;
use txipc_runtime::client::SystemProcess;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let exe = PathBuf::from(
        args.next()
            .context("usage: ipc_profile TXIPC_EXE CALLS [SERVER_EXEC]")?,
    );
    let calls: u32 = args.next().context("CALLS missing")?.parse()?;
    let source = match args.next() {
        Some(wrapper) => format!("exec = \"{wrapper}\""),
        None => "builtin = \"{NAME}\"".to_string(),
    };
    let server = |name: &str| {
        format!(
            "[[server]]\nname = \"{name}\"\n{}\npolicy = \"txipc\"\ntracking = \"typed\"\nheap_mb = 8\ncpu = 1\nslots = 1\nrequest_max = 4096\nreply_max = 4096\n[[grant]]\nclient = \"*\"\nservice = \"{name}\"\n",
            source.replace("{NAME}", name)
        )
    };
    let manifest = format!("name = \"profile\"\n{}{}", server("null"), server("kv"));
    let name = format!("ipc-profile-{}", std::process::id());
    let sys = SystemProcess::spawn(&exe, &manifest, &name, Duration::from_secs(300))
        .context("booting the system")?;
    let conn = sys.connect()?;
    let null = NullClient::new(conn.open("null")?);
    let kv = KvClient::new(conn.open("kv")?);
    let value = vec![0x5a_u8; 1000];
    kv.put(b"key", &value)
        .map_err(|e| anyhow::anyhow!("kv put: {e}"))?;
    txipc_sys::process::pin_to_cpu(0).context("pinning the client")?;
    let t = Instant::now();
    for _ in 0..calls {
        null.ping()?;
    }
    let pings = t.elapsed();
    let t = Instant::now();
    for _ in 0..calls {
        let v = kv.get(b"key").map_err(|e| anyhow::anyhow!("kv get: {e}"))?;
        anyhow::ensure!(
            v.as_ref().map(|v| &v[..]) == Some(&value[..]),
            "kv get returned the wrong value"
        );
    }
    let gets = t.elapsed();
    println!("{calls} null calls in {pings:?}, {calls} kv gets of 1000 B in {gets:?}");
    drop((null, kv, conn));
    sys.shutdown()?;
    Ok(())
}
