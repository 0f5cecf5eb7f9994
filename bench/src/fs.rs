//! `txipc bench fs`: the fs server through FUSE under `none`, `txipc` and `restart`, with tmpfs
//! as the ceiling, all in the same run.
//!
//! Each policy gets its own system, booted once; every figure goes through the same FUSE path
//! *and the same mount point*: in each round the targets take turns in a rotating order
//! (tmpfs, none, txipc, restart, then shifted by one), and a FUSE target's turn mounts its
//! system's fs on the one shared directory with a fresh `txipc mount`, runs every line in fresh
//! directories, and unmounts. Medians over the rounds are reported (and every round's figure
//! in the JSON), so drift of the machine hits every target alike.
//!
//! Pinning (with two CPUs or more): every system (kernel, fs server: `cpu = 1` in its
//! manifest) and every front end run on CPU 1; the measuring thread and the programs it starts
//! (tar, git, sqlite3) on CPU 0. So each policy gets the same placement, the one that matters
//! on a small machine: the program and the server never share a CPU.
//!
//! Lines: metadata operations per second (create, stat, rename, unlink), sequential write and
//! read throughput with 4 KiB and 1 MiB calls, and application runs: unpacking a tar of a
//! generated source tree with a git repository, `git status` on the unpacked tree, and SQLite
//! transactions through the `sqlite3` command (skipped when it is not installed).

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::json;
use txipc_runtime::client::SystemProcess;

/// Arguments of `txipc bench fs`.
#[derive(clap::Args, Debug)]
pub struct FsArgs {
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Files of each metadata line.
    #[arg(long, default_value_t = 2000)]
    pub files: u32,
    /// MiB written and read by the 1 MiB lines (a quarter of it by the 4 KiB lines).
    #[arg(long, default_value_t = 64)]
    pub mb: u32,
    /// Files in the generated source tree (untar, git status).
    #[arg(long, default_value_t = 400)]
    pub tree_files: u32,
    /// SQLite transactions of 10 inserts each.
    #[arg(long, default_value_t = 200)]
    pub sqlite_txns: u32,
    /// Write an SVG plot here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// `txipc bench fs`: runs, prints the table (stderr with `--json`), the JSON object, the plot.
pub fn cli(exe: &Path, a: FsArgs, json_out: bool) -> Result<()> {
    if a.rounds == 0 || a.files == 0 || a.mb < 4 || a.tree_files == 0 || a.sqlite_txns == 0 {
        return Err(txipc_core::vocab::UsageError(
            "--rounds, --files, --tree-files and --sqlite-txns must be at least 1, --mb at least 4"
                .into(),
        )
        .into());
    }
    let cfg = FsConfig {
        rounds: a.rounds,
        files: a.files,
        mb: a.mb,
        tree_files: a.tree_files,
        sqlite_txns: a.sqlite_txns,
        svg: a.svg,
    };
    let r = run(exe, &cfg, |m| eprintln!("bench fs: {m}"))?;
    let t = table(&r);
    if json_out {
        eprint!("{t}");
    } else {
        print!("{t}");
    }
    if let Some(p) = &cfg.svg {
        chart(&r, p)?;
        eprintln!("bench fs: plot written to {}", p.display());
    }
    if json_out {
        println!("{}", json(&cfg, &r));
    }
    Ok(())
}

/// What `bench fs` runs.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Rounds (medians are reported).
    pub rounds: u32,
    /// Files of the metadata lines.
    pub files: u32,
    /// MiB written and read by the throughput lines.
    pub mb: u32,
    /// Files in the generated source tree.
    pub tree_files: u32,
    /// SQLite transactions.
    pub sqlite_txns: u32,
    /// Where to write the SVG plot (none: no plot).
    pub svg: Option<PathBuf>,
}

/// The unit of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Ops,
    Mbps,
}

const POLICIES: [&str; 3] = ["none", "txipc", "restart"];

/// CPU of the servers and front ends, and of the measuring thread (with two CPUs or more).
const SERVER_CPU: usize = 1;
const APP_CPU: usize = 0;

/// Runs `f` on CPU `cpu` (when pinning); children started in `f` inherit it.
fn on_cpu<T>(pin: bool, cpu: usize, f: impl FnOnce() -> T) -> T {
    if !pin {
        return f();
    }
    let _ = txipc_sys::process::pin_to_cpu(cpu);
    let r = f();
    let _ = txipc_sys::process::pin_to_cpu(APP_CPU);
    r
}

/// One target: tmpfs, or an fs server under a policy (a booted system, mounted on the shared
/// mount point during its turns).
struct Target {
    name: String,
    /// tmpfs: its directory. FUSE: the shared mount point.
    dir: PathBuf,
    sys: Option<SystemProcess>,
    front: Option<Child>,
}

impl Target {
    fn tmpfs() -> Result<Target> {
        let base = Path::new("/dev/shm");
        if !base.is_dir() {
            bail!("/dev/shm (tmpfs) is not there: the tmpfs ceiling needs it");
        }
        let dir = base.join(crate::unique_system("txipc-bench-fs"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Target {
            name: "tmpfs".into(),
            dir,
            sys: None,
            front: None,
        })
    }

    fn fuse(exe: &Path, policy: &str, mountpoint: &Path, pin: bool) -> Result<Target> {
        let name = crate::unique_system(&format!("bench-fs-{policy}"));
        let cpu = if pin {
            format!("cpu = {SERVER_CPU}\n")
        } else {
            String::new()
        };
        let manifest = format!(
            "[[server]]\nname = \"fs\"\nbuiltin = \"fs\"\npolicy = \"{policy}\"\nheap_mb = 2048\nlog_mb = 64\nslots = 8\nrequest_max = 139264\nreply_max = 139264\n{cpu}[[grant]]\nclient = \"*\"\nservice = \"fs\"\n"
        );
        let sys = on_cpu(pin, SERVER_CPU, || {
            SystemProcess::spawn(exe, &manifest, &name, crate::BOOT_TIMEOUT)
        })?;
        Ok(Target {
            name: policy.into(),
            dir: mountpoint.to_path_buf(),
            sys: Some(sys),
            front: None,
        })
    }

    /// Mounts this target's fs on its mount point (a FUSE target's turn starts).
    fn mount(&mut self, exe: &Path, pin: bool) -> Result<()> {
        let Some(sys) = &self.sys else {
            return Ok(());
        };
        let mut child = on_cpu(pin, SERVER_CPU, || {
            Command::new(exe)
                .args(["mount", "--quiet", "--system", sys.name()])
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
        })
        .context("starting txipc mount")?;
        let out = child.stdout.take().expect("piped");
        self.front = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(out).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(l)) if l.starts_with("ready") => Ok(()),
            other => bail!(
                "txipc mount for policy {} did not come up: {other:?}",
                self.name
            ),
        }
    }

    /// Unmounts (the turn ends): SIGTERM to the front end, which unmounts and exits.
    fn unmount(&mut self) {
        if let Some(mut c) = self.front.take() {
            let _ = txipc_sys::process::kill(c.id() as i32, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
            if is_mounted(&self.dir) {
                // Last resort, never blocks.
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.dir)
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let d = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*d)))
}

impl Drop for Target {
    fn drop(&mut self) {
        self.unmount();
        drop(self.sys.take());
        if self.name == "tmpfs" {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Inputs prepared once: a tar of a generated source tree with a git repository.
struct Inputs {
    tmp: PathBuf,
    tarball: PathBuf,
    has_sqlite: bool,
    has_git: bool,
}

impl Drop for Inputs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn prepare(cfg: &FsConfig) -> Result<Inputs> {
    let tmp = std::env::temp_dir().join(crate::unique_system("bench-fs-inputs"));
    let tree = tmp.join("tree");
    std::fs::create_dir_all(&tree)?;
    let inputs = Inputs {
        tarball: tmp.join("tree.tar"),
        tmp,
        has_sqlite: have("sqlite3"),
        has_git: have("git"),
    };
    // A source-like tree: nested directories, text files of 0.5-24 KiB.
    for i in 0..cfg.tree_files {
        let d = tree
            .join(format!("src{}", i % 12))
            .join(format!("m{}", i % 5));
        std::fs::create_dir_all(&d)?;
        let lines = 10 + (i * 37) % 600;
        let mut text = String::new();
        for l in 0..lines {
            text.push_str(&format!(
                "fn f{i}_{l}(x: u64) -> u64 {{ x.wrapping_mul({l}) ^ {i} }}\n"
            ));
        }
        std::fs::write(d.join(format!("file{i}.rs")), text)?;
    }
    if inputs.has_git {
        let git = |args: &[&str]| {
            sh(Command::new("git")
                .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
                .args(args)
                .current_dir(&tree))
        };
        git(&["init", "-q"])?;
        git(&["add", "-A"])?;
        git(&["commit", "-qm", "tree"])?;
    }
    sh(Command::new("tar")
        .arg("cf")
        .arg(&inputs.tarball)
        .arg("-C")
        .arg(&tree)
        .arg("."))?;
    Ok(inputs)
}

/// Files (metadata lines) or MiB (throughput lines) per slice.
const SLICE_FILES: u32 = 250;
const SLICE_MB: u32 = 4;

/// Prepares a line's directory on one target (not timed).
type PrepFn = fn(&Path, &FsConfig, &Inputs) -> Result<()>;
/// Runs slice `k` of a line in a prepared directory: (units done, seconds taken).
type SliceFn = fn(&Path, &FsConfig, &Inputs, u32) -> Result<(f64, f64)>;

/// One line of the report.
struct LineDef {
    name: &'static str,
    unit: Unit,
    /// How many slices a round has (1 for application runs).
    slices: fn(&FsConfig) -> u32,
    prep: PrepFn,
    slice: SliceFn,
    /// Wait this long after preparing every target (the kernel's attribute cache).
    settle: Duration,
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

fn file_slices(cfg: &FsConfig) -> u32 {
    cfg.files.div_ceil(SLICE_FILES)
}

fn mb_slices(cfg: &FsConfig) -> u32 {
    (cfg.mb / SLICE_MB).max(1)
}

fn one(_: &FsConfig) -> u32 {
    1
}

/// The files of slice `k`.
fn slice_names(dir: &Path, cfg: &FsConfig, k: u32) -> Vec<PathBuf> {
    let lo = k * SLICE_FILES;
    let hi = (lo + SLICE_FILES).min(cfg.files);
    (lo..hi).map(|i| dir.join(format!("f{i:06}"))).collect()
}

fn prep_none(_: &Path, _: &FsConfig, _: &Inputs) -> Result<()> {
    Ok(())
}

fn prep_files(dir: &Path, cfg: &FsConfig, _: &Inputs) -> Result<()> {
    for k in 0..file_slices(cfg) {
        for f in slice_names(dir, cfg, k) {
            std::fs::File::create(f)?;
        }
    }
    Ok(())
}

fn each_file(
    dir: &Path,
    cfg: &FsConfig,
    k: u32,
    f: impl Fn(&Path) -> std::io::Result<()>,
) -> Result<(f64, f64)> {
    let files = slice_names(dir, cfg, k);
    let s = timed(|| {
        for p in &files {
            f(p)?;
        }
        Ok(())
    })?;
    Ok((files.len() as f64, s))
}

fn slice_create(dir: &Path, cfg: &FsConfig, _: &Inputs, k: u32) -> Result<(f64, f64)> {
    each_file(dir, cfg, k, |p| std::fs::File::create(p).map(drop))
}

fn slice_stat(dir: &Path, cfg: &FsConfig, _: &Inputs, k: u32) -> Result<(f64, f64)> {
    each_file(dir, cfg, k, |p| std::fs::symlink_metadata(p).map(drop))
}

fn slice_rename(dir: &Path, cfg: &FsConfig, _: &Inputs, k: u32) -> Result<(f64, f64)> {
    each_file(dir, cfg, k, |p| std::fs::rename(p, p.with_extension("r")))
}

fn slice_unlink(dir: &Path, cfg: &FsConfig, _: &Inputs, k: u32) -> Result<(f64, f64)> {
    each_file(dir, cfg, k, |p| std::fs::remove_file(p))
}

fn write_file(path: &Path, total: usize, chunk: usize) -> Result<f64> {
    let buf: Vec<u8> = (0..chunk).map(|i| (i * 131 % 251) as u8).collect();
    timed(|| {
        let mut f = std::fs::File::create(path)?;
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk);
            f.write_all(&buf[..n])?;
            left -= n;
        }
        Ok(())
    })
}

fn read_file(path: &Path, chunk: usize) -> Result<(f64, f64)> {
    let mut buf = vec![0u8; chunk];
    let mut total = 0usize;
    let s = timed(|| {
        // A fresh open: FUSE drops the file's page cache, so the data comes from the server.
        let mut f = std::fs::File::open(path)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(())
    })?;
    Ok((total as f64 / 1e6, s))
}

const SLICE_BYTES: usize = (SLICE_MB as usize) << 20;

fn slice_write_4k(dir: &Path, _: &FsConfig, _: &Inputs, k: u32) -> Result<(f64, f64)> {
    // A quarter of the data: 4 KiB calls are slow.
    let n = SLICE_BYTES / 4;
    Ok((
        n as f64 / 1e6,
        write_file(&dir.join(format!("w{k}")), n, 4096)?,
    ))
}

fn slice_write_1m(dir: &Path, _: &FsConfig, _: &Inputs, k: u32) -> Result<(f64, f64)> {
    let n = SLICE_BYTES;
    Ok((
        n as f64 / 1e6,
        write_file(&dir.join(format!("w{k}")), n, 1 << 20)?,
    ))
}

fn prep_read(dir: &Path, cfg: &FsConfig, _: &Inputs) -> Result<()> {
    for k in 0..mb_slices(cfg) {
        write_file(&dir.join(format!("r{k}")), SLICE_BYTES, 1 << 20)?;
    }
    Ok(())
}

fn slice_read_4k(dir: &Path, _: &FsConfig, _: &Inputs, k: u32) -> Result<(f64, f64)> {
    read_file(&dir.join(format!("r{k}")), 4096)
}

fn slice_read_1m(dir: &Path, _: &FsConfig, _: &Inputs, k: u32) -> Result<(f64, f64)> {
    read_file(&dir.join(format!("r{k}")), 1 << 20)
}

fn untar(dir: &Path, inp: &Inputs) -> Result<()> {
    sh(Command::new("tar")
        .arg("xf")
        .arg(&inp.tarball)
        .arg("-C")
        .arg(dir))
}

fn slice_untar(dir: &Path, _: &FsConfig, inp: &Inputs, _: u32) -> Result<(f64, f64)> {
    Ok((1.0, timed(|| untar(dir, inp))?))
}

fn prep_untar(dir: &Path, _: &FsConfig, inp: &Inputs) -> Result<()> {
    untar(dir, inp)
}

fn slice_git_status(dir: &Path, _: &FsConfig, _: &Inputs, _: u32) -> Result<(f64, f64)> {
    let s = timed(|| {
        sh(Command::new("git")
            .args(["-c", "safe.directory=*", "status", "--porcelain"])
            .current_dir(dir)
            .stdout(Stdio::null()))
    })?;
    Ok((1.0, s))
}

fn slice_sqlite(dir: &Path, cfg: &FsConfig, _: &Inputs, _: u32) -> Result<(f64, f64)> {
    let mut script = String::from("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);\n");
    for t in 0..cfg.sqlite_txns {
        script.push_str("BEGIN;\n");
        for r in 0..10 {
            script.push_str(&format!(
                "INSERT INTO t(v) VALUES('row {t}-{r} of the benchmark');\n"
            ));
        }
        script.push_str("COMMIT;\n");
    }
    let db = dir.join("bench.db");
    let s = timed(|| {
        let mut child = Command::new("sqlite3")
            .arg(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    })?;
    Ok((f64::from(cfg.sqlite_txns), s))
}

/// The lines, in report order.
fn lines(inp: &Inputs) -> Vec<LineDef> {
    let z = Duration::ZERO;
    let l = |name, unit, slices, prep, slice, settle| LineDef {
        name,
        unit,
        slices,
        prep,
        slice,
        settle,
    };
    let mut v = vec![
        l(
            "create",
            Unit::Ops,
            file_slices as fn(&FsConfig) -> u32,
            prep_none as PrepFn,
            slice_create as SliceFn,
            z,
        ),
        // Past the kernel's 1 s attribute cache of the FUSE mounts: every stat reaches the server.
        l(
            "stat",
            Unit::Ops,
            file_slices,
            prep_files,
            slice_stat,
            Duration::from_millis(1100),
        ),
        l(
            "rename",
            Unit::Ops,
            file_slices,
            prep_files,
            slice_rename,
            z,
        ),
        l(
            "unlink",
            Unit::Ops,
            file_slices,
            prep_files,
            slice_unlink,
            z,
        ),
        l(
            "write 4 KiB",
            Unit::Mbps,
            mb_slices,
            prep_none,
            slice_write_4k,
            z,
        ),
        l(
            "write 1 MiB",
            Unit::Mbps,
            mb_slices,
            prep_none,
            slice_write_1m,
            z,
        ),
        l(
            "read 4 KiB",
            Unit::Mbps,
            mb_slices,
            prep_read,
            slice_read_4k,
            z,
        ),
        l(
            "read 1 MiB",
            Unit::Mbps,
            mb_slices,
            prep_read,
            slice_read_1m,
            z,
        ),
        l(
            "untar source tree",
            Unit::Ops,
            one,
            prep_none,
            slice_untar,
            z,
        ),
    ];
    if inp.has_git {
        v.push(l(
            "git status",
            Unit::Ops,
            one,
            prep_untar,
            slice_git_status,
            z,
        ));
    }
    if inp.has_sqlite {
        v.push(l(
            "sqlite transactions",
            Unit::Ops,
            one,
            prep_none,
            slice_sqlite,
            z,
        ));
    }
    v
}

/// One measured line of one target.
#[derive(Debug, Clone)]
pub struct FsResult {
    /// `tmpfs`, `none`, `txipc` or `restart`.
    pub target: String,
    /// The line's name.
    pub line: String,
    /// Whether the figure is MB/s (else operations, transactions or runs per second).
    pub mbps: bool,
    /// Median over the rounds.
    pub value: f64,
    /// Every round's figure.
    pub samples: Vec<f64>,
}

/// Runs the benchmark; `progress` gets one line per round.
///
/// A warm-up round first (not counted), then `rounds` rounds. Each round, the targets take
/// turns in a rotating order; a turn runs every line on one
/// target (a FUSE target mounted on the shared mount point for it), each line in a fresh
/// directory. A round's figure for a line and target is its units over its time; the median
/// over the rounds is reported.
pub fn run(exe: &Path, cfg: &FsConfig, mut progress: impl FnMut(&str)) -> Result<Vec<FsResult>> {
    let inputs = prepare(cfg)?;
    let pin = txipc_sys::process::cpus_available() >= 2;
    if pin {
        progress(&format!(
            "pinned: servers and front ends on CPU {SERVER_CPU}, the programs on CPU {APP_CPU}"
        ));
        let _ = txipc_sys::process::pin_to_cpu(APP_CPU);
    } else {
        progress("one CPU: nothing pinned");
    }
    let r = run_pinned(exe, cfg, &inputs, pin, &mut progress);
    if pin {
        let _ = txipc_sys::process::pin_to_cpu_set_all();
    }
    r
}

fn run_pinned(
    exe: &Path,
    cfg: &FsConfig,
    inputs: &Inputs,
    pin: bool,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<FsResult>> {
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let mountpoint = Dir(std::env::temp_dir().join(crate::unique_system("txipc-bench-fs")));
    std::fs::create_dir(&mountpoint.0)?;
    let mut targets = vec![Target::tmpfs()?];
    for p in POLICIES {
        targets.push(Target::fuse(exe, p, &mountpoint.0, pin)?);
    }
    let lines = lines(inputs);
    let nt = targets.len();
    let mut samples = vec![vec![Vec::new(); nt]; lines.len()];
    // Round 0 warms up (first touches of each server's heap, the page cache of the inputs,
    // the programs' own files) and is not counted.
    for round in 0..=cfg.rounds {
        for j in 0..nt {
            let ti = (j + round as usize) % nt;
            let t = &mut targets[ti];
            t.mount(exe, pin)?;
            let r = turn(t, &lines, cfg, inputs, round);
            t.unmount();
            for (li, v) in r?.into_iter().enumerate() {
                if round > 0 {
                    samples[li][ti].push(v);
                }
            }
        }
        progress(&if round == 0 {
            "warm-up round done".to_string()
        } else {
            format!("round {round}/{} done", cfg.rounds)
        });
    }
    let mut out = Vec::new();
    for (li, line) in lines.iter().enumerate() {
        for (ti, t) in targets.iter().enumerate() {
            let mut s = samples[li][ti].clone();
            out.push(FsResult {
                target: t.name.clone(),
                line: line.name.to_string(),
                mbps: line.unit == Unit::Mbps,
                value: crate::median(&mut s),
                samples: samples[li][ti].clone(),
            });
        }
    }
    drop(targets);
    Ok(out)
}

/// One target's turn: every line, each in a fresh directory; returns units per second.
fn turn(
    t: &Target,
    lines: &[LineDef],
    cfg: &FsConfig,
    inputs: &Inputs,
    round: u32,
) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (li, line) in lines.iter().enumerate() {
        let d = t.dir.join(format!("r{round}-{li}"));
        std::fs::create_dir(&d).with_context(|| format!("{}: creating {}", t.name, d.display()))?;
        (line.prep)(&d, cfg, inputs)
            .with_context(|| format!("preparing {} on {}", line.name, t.name))?;
        std::thread::sleep(line.settle);
        let (mut units, mut secs) = (0.0, 0.0);
        for k in 0..(line.slices)(cfg) {
            let (u, s) = (line.slice)(&d, cfg, inputs, k)
                .with_context(|| format!("{} on {}", line.name, t.name))?;
            units += u;
            secs += s;
        }
        out.push(units / secs);
        // Free the space (and the server's heap) for the next lines.
        let _ = std::fs::remove_dir_all(&d);
    }
    Ok(out)
}

fn find<'a>(r: &'a [FsResult], target: &str, line: &str) -> Option<&'a FsResult> {
    r.iter().find(|x| x.target == target && x.line == line)
}

fn line_names(r: &[FsResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for x in r {
        if !v.contains(&x.line) {
            v.push(x.line.clone());
        }
    }
    v
}

/// Markdown table: each policy's figure, its loss against `none`, its ratio to tmpfs.
pub fn table(r: &[FsResult]) -> String {
    let mut t = String::from(
        "| line | unit | tmpfs | none | txipc | restart | txipc loss vs none | restart loss vs none | txipc / tmpfs |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for line in line_names(r) {
        let get = |tg: &str| find(r, tg, &line).map_or(f64::NAN, |x| x.value);
        let unit = if find(r, "none", &line).is_some_and(|x| x.mbps) {
            "MB/s"
        } else {
            "ops/s"
        };
        let none = get("none");
        let loss = |x: f64| (none - x) / none * 100.0;
        t.push_str(&format!(
            "| {line} | {unit} | {:.1} | {:.1} | {:.1} | {:.1} | {:+.1}% | {:+.1}% | {:.2} |\n",
            get("tmpfs"),
            none,
            get("txipc"),
            get("restart"),
            loss(get("txipc")),
            loss(get("restart")),
            get("txipc") / get("tmpfs"),
        ));
    }
    t
}

/// The JSON report: `results`, one entry per policy and line.
pub fn json(cfg: &FsConfig, r: &[FsResult]) -> serde_json::Value {
    let mut results = Vec::new();
    for x in r.iter().filter(|x| x.target != "tmpfs") {
        let none = find(r, "none", &x.line).map_or(f64::NAN, |n| n.value);
        let tmpfs = find(r, "tmpfs", &x.line).map_or(f64::NAN, |n| n.value);
        let key = if x.mbps { "mb_per_sec" } else { "ops_per_sec" };
        results.push(json!({
            "policy": x.target,
            "line": x.line,
            key: x.value,
            "loss_vs_none_pct": (none - x.value) / none * 100.0,
            "vs_tmpfs": x.value / tmpfs,
            "samples": x.samples,
        }));
    }
    let tmpfs: Vec<_> = r
        .iter()
        .filter(|x| x.target == "tmpfs")
        .map(
            |x| json!({"line": x.line, if x.mbps { "mb_per_sec" } else { "ops_per_sec" }: x.value}),
        )
        .collect();
    json!({
        "benchmark": "fs",
        "rounds": cfg.rounds,
        "files": cfg.files,
        "mb": cfg.mb,
        "tree_files": cfg.tree_files,
        "sqlite_txns": cfg.sqlite_txns,
        "results": results,
        "tmpfs": tmpfs,
    })
}

/// A bar chart of each policy's throughput relative to `none`, per line.
pub fn chart(r: &[FsResult], out: &Path) -> Result<()> {
    let lines = line_names(r);
    let series = [
        ("txipc", RGBColor(0x1f, 0x77, 0xb4)),
        ("restart", RGBColor(0xff, 0x7f, 0x0e)),
    ];
    let rel = |tg: &str, line: &str| {
        let none = find(r, "none", line).map_or(f64::NAN, |x| x.value);
        find(r, tg, line).map_or(f64::NAN, |x| x.value / none)
    };
    let top = lines
        .iter()
        .flat_map(|l| series.iter().map(move |(s, _)| rel(s, l)))
        .filter(|x| x.is_finite())
        .fold(1.2f64, f64::max)
        * 1.1;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting: {e}");
    let root = SVGBackend::new(out, (1100, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = lines.len();
    let mut c = ChartBuilder::on(&root)
        .caption(
            "fs through FUSE: throughput relative to policy none (same run; 1.0 = none)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(|e| err(&e))?;
    let labels = lines.clone();
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("relative to none")
        .draw()
        .map_err(|e| err(&e))?;
    let w = 0.8 / series.len() as f64;
    for (si, (name, color)) in series.iter().enumerate() {
        let bars: Vec<_> = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let v = rel(name, l);
                v.is_finite().then(|| {
                    let x0 = i as f64 + 0.1 + si as f64 * w;
                    Rectangle::new([(x0, 0.0), (x0 + w * 0.95, v)], color.filled())
                })
            })
            .collect();
        c.draw_series(bars)
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    c.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (n as f64, 1.0)],
        BLACK.stroke_width(1),
    )))
    .map_err(|e| err(&e))?;
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
