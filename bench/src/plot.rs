//! `txipc bench plot`: SVG plots and markdown tables from the JSON reports of `bench kv` and
//! `bench recovery` (the last line of their `--json` output, saved to files).
//!
//! - `kv_throughput.svg`: per workload, each policy's throughput relative to `none` (median of
//!   the per-round ratios), with the 95% line of the ≤ 5% loss goal.
//! - `recovery.svg`: the distribution (CDF) of recovery times per heap size and fault kind, on
//!   a logarithmic time axis, with the 0.5 ms goal.
//!
//! It works on `serde_json::Value`s, so reports written by older builds still plot as long as
//! they carry the contract keys.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::Value;

const PALETTE: [RGBColor; 8] = [
    RGBColor(0x44, 0x44, 0x44),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// One report file, classified.
#[derive(Debug)]
pub enum Report {
    /// From `bench kv --json`.
    Kv(Value),
    /// From `bench recovery --json`.
    Recovery(Value),
}

/// Reads a report: the last non-empty line of the file that parses as JSON (so the whole
/// output of a command can be saved, table included).
pub fn read(path: &Path) -> Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .with_context(|| format!("{}: no JSON line", path.display()))?;
    if v.get("results").is_some() {
        Ok(Report::Kv(v))
    } else if v.get("samples").is_some() {
        Ok(Report::Recovery(v))
    } else {
        bail!(
            "{}: neither a `bench kv` nor a `bench recovery` report",
            path.display()
        )
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// The kv results of several reports, in order.
fn kv_rows(reports: &[&Value]) -> Vec<Value> {
    reports
        .iter()
        .flat_map(|r| r["results"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Markdown table of kv results.
pub fn kv_table(reports: &[&Value]) -> String {
    let mut t = String::from(
        "| workload | policy | ops/s | loss vs none | ops/s unstalled | loss unstalled | p50 µs | p99 µs |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in kv_rows(reports) {
        let policy = s(&r["policy"]);
        let pct = |k: &str| {
            if policy == "none" {
                "—".to_string()
            } else {
                r[k].as_f64().map_or("—".into(), |x| format!("{x:+.1}%"))
            }
        };
        let unstalled = r["ops_per_sec_unstalled"]
            .as_f64()
            .map_or("—".into(), |x| format!("{x:.0}"));
        t.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1} |\n",
            s(&r["workload"]).to_uppercase(),
            policy,
            f(&r["ops_per_sec"]),
            pct("loss_vs_none_pct"),
            unstalled,
            pct("loss_unstalled_pct"),
            f(&r["p50_ns"]) / 1e3,
            f(&r["p99_ns"]) / 1e3,
        ));
    }
    t
}

/// Markdown table of recovery reports.
pub fn recovery_table(reports: &[&Value]) -> String {
    let mut t = String::from(
        "| heap | fault | runs | p50 µs | p99 µs | max µs | kernel's own p50 µs | old incarnation gone, p50 µs after the fault |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        for kind in ["sigkill", "segv", "panic", "self_detected"] {
            let k = &r[kind];
            if k.is_null() {
                continue;
            }
            let opt = |v: &Value| v.as_f64().map_or("—".into(), |x| format!("{x:.0}"));
            t.push_str(&format!(
                "| {} MiB | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |\n",
                r["heap_mb"],
                if kind == "self_detected" {
                    "self-detected (segv+panic)"
                } else {
                    kind
                },
                k["runs"],
                f(&k["p50_us"]),
                f(&k["p99_us"]),
                f(&k["max_us"]),
                opt(&k["kernel_p50_us"]),
                opt(&k["old_exit_p50_us"]),
            ));
        }
    }
    t
}

/// Grouped bars: throughput relative to `none` per workload and policy.
pub fn kv_chart(reports: &[&Value], out: &Path) -> Result<()> {
    let rows = kv_rows(reports);
    let mut workloads: Vec<String> = Vec::new();
    let mut policies: Vec<String> = Vec::new();
    for r in &rows {
        let (w, p) = (s(&r["workload"]), s(&r["policy"]));
        if !workloads.contains(&w) {
            workloads.push(w);
        }
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    if rows.is_empty() {
        bail!("no kv results to plot");
    }
    let rel = |w: &str, p: &str| {
        rows.iter()
            .find(|r| s(&r["workload"]) == w && s(&r["policy"]) == p)
            .map(|r| 1.0 - f(&r["loss_vs_none_pct"]) / 100.0)
    };
    let top = rows
        .iter()
        .map(|r| 1.0 - f(&r["loss_vs_none_pct"]) / 100.0)
        .filter(|x| x.is_finite())
        .fold(1.2f64, f64::max)
        * 1.35;
    let root = SVGBackend::new(out, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let nw = workloads.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "YCSB on kv: throughput relative to policy none (median of interleaved rounds)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..nw as f64 - 0.5, 0f64..top)
        .map_err(plot_err)?;
    let wl = workloads.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(nw * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < wl.len() {
                format!("workload {}", wl[i as usize].to_uppercase())
            } else {
                String::new()
            }
        })
        .y_desc("throughput / throughput of none")
        .draw()
        .map_err(plot_err)?;
    let width = 0.8 / policies.len() as f64;
    for (pi, p) in policies.iter().enumerate() {
        let color = PALETTE[pi % PALETTE.len()];
        let bars: Vec<Rectangle<(f64, f64)>> = workloads
            .iter()
            .enumerate()
            .filter_map(|(wi, w)| {
                let y = rel(w, p)?;
                let x0 = wi as f64 - 0.4 + pi as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, y)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(plot_err)?
            .label(p.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(-0.5, 0.95), (nw as f64 - 0.5, 0.95)],
            RED.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("0.95: the ≤ 5% loss goal for txipc")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// CDF of recovery times per heap size and fault kind.
pub fn recovery_chart(reports: &[&Value], out: &Path) -> Result<()> {
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for r in reports {
        let heap = &r["heap_mb"];
        for kind in ["sigkill", "segv", "panic"] {
            let mut v: Vec<f64> = r["samples"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|x| x["fault"] == kind)
                .map(|x| f(&x["recovery_us"]))
                .filter(|x| x.is_finite() && *x > 0.0)
                .collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            series.push((format!("{heap} MiB, {kind}"), v));
        }
    }
    if series.is_empty() {
        bail!("no recovery samples to plot");
    }
    let lo = series
        .iter()
        .map(|(_, v)| v[0])
        .fold(f64::INFINITY, f64::min)
        .min(100.0)
        * 0.8;
    let hi = series
        .iter()
        .map(|(_, v)| v[v.len() - 1])
        .fold(0.0, f64::max)
        .max(1000.0)
        * 1.25;
    let root = SVGBackend::new(out, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "kv recovery: fault → first reply of the new incarnation (client-measured)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("recovery time, µs (log scale)")
        .y_desc("fraction of runs ≤ x")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(plot_err)?;
    for (i, (label, v)) in series.iter().enumerate() {
        let color = PALETTE[(i + 1) % PALETTE.len()];
        let n = v.len() as f64;
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .flat_map(|(k, &x)| [(x, k as f64 / n), (x, (k + 1) as f64 / n)])
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2)));
    }
    chart
        .draw_series(LineSeries::new([(500.0, 0.0), (500.0, 1.0)], RED))
        .map_err(plot_err)?
        .label("0.5 ms goal (16 MiB)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Every plot committed under `bench/results`, with the committed reports it is drawn from:
/// (file name prefix, reports). `txipc bench plot` without files draws them all.
pub const COMMITTED: [(&str, [&str; 3]); 2] = [
    (
        "",
        [
            "kv_all.txt",
            "recovery_16_after_reorder.txt",
            "recovery_1024_after_reorder.txt",
        ],
    ),
    (
        "companion_",
        [
            "kv_companion.txt",
            "recovery_companion_16.txt",
            "recovery_companion_128.txt",
        ],
    ),
];

/// Redraws every plot of [`COMMITTED`] from the reports in `results` into `out_dir`
/// (normally the same directory); returns the markdown tables.
pub fn run_committed(results: &Path, out_dir: &Path) -> Result<String> {
    let mut md = String::new();
    for (prefix, files) in COMMITTED {
        let files: Vec<_> = files.iter().map(|f| results.join(f)).collect();
        md.push_str(&run(&files, out_dir, prefix)?);
        md.push('\n');
    }
    Ok(md)
}

/// Plots and tabulates the given reports into `out_dir` (`PREFIXkv_throughput.svg`,
/// `PREFIXrecovery.svg`); returns the markdown tables.
pub fn run(files: &[impl AsRef<Path>], out_dir: &Path, prefix: &str) -> Result<String> {
    let reports = files
        .iter()
        .map(|p| read(p.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    let kv: Vec<&Value> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Kv(v) => Some(v),
            Report::Recovery(_) => None,
        })
        .collect();
    let rec: Vec<&Value> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Recovery(v) => Some(v),
            Report::Kv(_) => None,
        })
        .collect();
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut md = String::new();
    if !kv.is_empty() {
        kv_chart(&kv, &out_dir.join(format!("{prefix}kv_throughput.svg")))?;
        md.push_str(&kv_table(&kv));
        md.push('\n');
    }
    if !rec.is_empty() {
        recovery_chart(&rec, &out_dir.join(format!("{prefix}recovery.svg")))?;
        md.push_str(&recovery_table(&rec));
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_from_reports() {
        let kv = serde_json::json!({"results": [
            {"workload": "a", "policy": "none", "ops_per_sec": 100.0, "loss_vs_none_pct": 0.0, "p50_ns": 4000, "p99_ns": 7000},
            {"workload": "a", "policy": "txipc", "ops_per_sec": 97.0, "loss_vs_none_pct": 3.0, "p50_ns": 4100, "p99_ns": 7100},
            {"workload": "b", "policy": "none", "ops_per_sec": 100.0, "loss_vs_none_pct": 0.0, "p50_ns": 4000, "p99_ns": 7000},
            {"workload": "b", "policy": "txipc", "ops_per_sec": 99.0, "loss_vs_none_pct": 1.0, "p50_ns": 4000, "p99_ns": 7000},
        ]});
        let rec = serde_json::json!({"heap_mb": 16, "samples": [
            {"fault": "sigkill", "recovery_us": 400.0},
            {"fault": "sigkill", "recovery_us": 450.0},
            {"fault": "segv", "recovery_us": 300.0},
        ], "sigkill": {"runs": 2, "p50_us": 400.0, "p99_us": 450.0, "max_us": 450.0}});
        let dir = std::env::temp_dir().join(format!("txipc-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("kv.json"), dir.join("rec.json"));
        std::fs::write(&a, format!("| table |\n{kv}\n")).unwrap();
        std::fs::write(&b, rec.to_string()).unwrap();
        let md = run(&[&a, &b], &dir, "").unwrap();
        assert!(md.contains("| A | txipc | 97 | +3.0% | — | — |"), "{md}");
        assert!(md.contains("| 16 MiB | sigkill | 2 | 400 | 450 |"), "{md}");
        for svg in ["kv_throughput.svg", "recovery.svg"] {
            let text = std::fs::read_to_string(dir.join(svg)).unwrap();
            assert!(text.starts_with("<svg"), "{svg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The committed plots are what the committed reports draw (none is stale).
    #[test]
    fn committed_plots_are_current() {
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        let dir = std::env::temp_dir().join(format!("txipc-plot-committed-{}", std::process::id()));
        struct Rm(std::path::PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _rm = Rm(dir.clone());
        run_committed(&results, &dir).unwrap();
        for (prefix, _) in COMMITTED {
            for name in ["kv_throughput.svg", "recovery.svg"] {
                let name = format!("{prefix}{name}");
                let drawn = std::fs::read(dir.join(&name)).unwrap();
                let committed = std::fs::read(results.join(&name)).unwrap();
                assert!(
                    drawn == committed,
                    "bench/results/{name} is not what its reports draw: run `txipc bench plot`"
                );
            }
        }
    }
}
