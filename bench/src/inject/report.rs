//! Outcome classes, their counts with 95% Wilson intervals, the table, the JSON and the chart.
//!
//! # Outcome of a run (precise definitions; ARCHITECTURE.md §11 repeats them)
//!
//! Per run the campaign observes: whether the fault was **injected** (the action was carried
//! out: fail point armed, signal sent, ptrace change written), whether it **fired** (the armed
//! fail point was reached and cleared; the signal was delivered; the ptrace change was written
//! into a server stopped inside a call), whether the system **detected** a fault (the kernel
//! restarted the server, or holds it down / declared it dead), what the client saw (**errors**:
//! any call that ended in a system error; **wrong replies**: a reply that contradicts the
//! model), whether every call returned (**timeout**), and the **oracle**'s verdict (the state
//! read back equals background ∪ model).
//!
//! | class | definition |
//! | --- | --- |
//! | `not_activated` | the fault was not carried out (a ptrace fault that could not be placed inside a call: whatever followed is the injector's doing), or it did not fire (a fail point never reached) and nothing went wrong |
//! | `hang` | a call did not return within the client's bound, or the state could not be read back in time |
//! | `failed` | not a hang, and a client saw a system error, or the system detected the fault and the state or a reply is wrong |
//! | `silent` | not a hang, no error, nothing detected, and a reply or the state is wrong (silent corruption) |
//! | `recovered` | the fault was detected, recovery ran, no client saw an error or a wrong reply, and the oracle holds |
//! | `masked` | the fault fired, nothing was detected, no error, no wrong reply, and the oracle holds |
//!
//! The classes are exclusive and tried in the order above. *Activated* = every class but
//! `not_activated`; *manifested* = activated − `masked`. `recovery_rate` = recovered /
//! manifested; `correct_rate` = (masked + recovered) / activated.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde::Serialize;

/// The outcome class of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The fault did not fire.
    NotActivated,
    /// Fired, no effect, state right.
    Masked,
    /// Detected, recovered, nothing seen by clients, state right.
    Recovered,
    /// A client saw an error, or detected and wrong.
    Failed,
    /// No progress within the bound.
    Hang,
    /// Undetected wrong state or reply.
    Silent,
}

impl Outcome {
    /// Every class, in report order.
    pub const ALL: [Outcome; 6] = [
        Outcome::NotActivated,
        Outcome::Masked,
        Outcome::Recovered,
        Outcome::Failed,
        Outcome::Hang,
        Outcome::Silent,
    ];

    /// The JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NotActivated => "not_activated",
            Outcome::Masked => "masked",
            Outcome::Recovered => "recovered",
            Outcome::Failed => "failed",
            Outcome::Hang => "hang",
            Outcome::Silent => "silent",
        }
    }
}

/// What a run observed (the inputs of [`classify`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// The fault fired.
    pub fired: bool,
    /// The system detected a fault (restart, hold-down, death).
    pub detected: bool,
    /// Calls that ended in a system error.
    pub errors: u32,
    /// Replies that contradicted the model.
    pub wrong_replies: u32,
    /// Keys where the state read back differs from the model.
    pub divergent_keys: u32,
    /// A call or the read-back did not finish within its bound.
    pub timeout: bool,
    /// The fault was carried out (fail point armed, signal sent, ptrace change written). A
    /// ptrace fault that could not be placed may still have disturbed the server (the
    /// injector's stops, or its kill when it cannot detach): what follows is then the
    /// injector's doing, not the fault's.
    pub injected: bool,
}

/// The class of a run (module docs).
pub fn classify(o: &Observation) -> Outcome {
    let wrong = o.wrong_replies > 0 || o.divergent_keys > 0;
    let clean = !o.detected && o.errors == 0 && !wrong && !o.timeout;
    if !o.injected || (!o.fired && clean) {
        Outcome::NotActivated
    } else if o.timeout {
        Outcome::Hang
    } else if o.errors > 0 || (o.detected && wrong) {
        Outcome::Failed
    } else if wrong {
        Outcome::Silent
    } else if o.detected {
        Outcome::Recovered
    } else {
        Outcome::Masked
    }
}

/// A 95% Wilson score interval for `x` successes in `n` trials, as fractions.
pub fn wilson(x: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let z = 1.959_963_984_540_054_f64;
    let (n, p) = (n as f64, x as f64 / n as f64);
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
    ((c - h).max(0.0), (c + h).min(1.0))
}

/// Counts of one group of runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<Outcome, u64>);

impl Counts {
    /// Adds a run.
    pub fn add(&mut self, o: Outcome) {
        *self.0.entry(o).or_default() += 1;
    }
    /// Runs of class `o`.
    pub fn get(&self, o: Outcome) -> u64 {
        self.0.get(&o).copied().unwrap_or(0)
    }
    /// All runs (faults injected).
    pub fn runs(&self) -> u64 {
        self.0.values().sum()
    }
    /// Runs whose fault was activated.
    pub fn activated(&self) -> u64 {
        self.runs() - self.get(Outcome::NotActivated)
    }
    /// Activated runs whose fault had an effect.
    pub fn manifested(&self) -> u64 {
        self.activated() - self.get(Outcome::Masked)
    }

    /// The JSON object of these counts: each class with its share of injected, activated and
    /// manifested runs, and the rates with Wilson intervals.
    pub fn json(&self) -> serde_json::Value {
        let (n, a, m) = (self.runs(), self.activated(), self.manifested());
        let pct = |x: u64, d: u64| {
            if d == 0 {
                serde_json::Value::Null
            } else {
                serde_json::json!(100.0 * x as f64 / d as f64)
            }
        };
        let rate = |x: u64, d: u64| {
            let (lo, hi) = wilson(x, d);
            serde_json::json!({
                "value": if d == 0 { serde_json::Value::Null } else { serde_json::json!(x as f64 / d as f64) },
                "ci95_low": if d == 0 { serde_json::Value::Null } else { serde_json::json!(lo) },
                "ci95_high": if d == 0 { serde_json::Value::Null } else { serde_json::json!(hi) },
                "of": d,
            })
        };
        let mut v = serde_json::json!({
            "runs": n,
            "activated": a,
            "manifested": m,
        });
        let mut shares = serde_json::Map::new();
        for o in Outcome::ALL {
            let x = self.get(o);
            v[o.as_str()] = serde_json::json!(x);
            let mut s = serde_json::json!({ "of_injected_pct": pct(x, n) });
            let (lo, hi) = wilson(x, n);
            s["of_injected_ci95_pct"] = serde_json::json!([100.0 * lo, 100.0 * hi]);
            if o != Outcome::NotActivated {
                s["of_activated_pct"] = pct(x, a);
            }
            if !matches!(o, Outcome::NotActivated | Outcome::Masked) {
                s["of_manifested_pct"] = pct(x, m);
            }
            shares.insert(o.as_str().into(), s);
        }
        v["shares"] = serde_json::Value::Object(shares);
        let rec = self.get(Outcome::Recovered);
        v["recovery_rate"] = if m == 0 {
            serde_json::Value::Null
        } else {
            serde_json::json!(rec as f64 / m as f64)
        };
        v["recovery"] = rate(rec, m);
        v["correct"] = rate(rec + self.get(Outcome::Masked), a);
        v["silent_of_activated"] = rate(self.get(Outcome::Silent), a);
        v
    }
}

/// Aggregates per (variant, fault) cell.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Counts per variant (policy label), then per fault kind.
    pub cells: BTreeMap<String, BTreeMap<String, Counts>>,
    /// Variants in the order they ran.
    pub order: Vec<String>,
}

impl Tally {
    /// Adds a run.
    pub fn add(&mut self, variant: &str, fault: &str, o: Outcome) {
        if !self.order.iter().any(|v| v == variant) {
            self.order.push(variant.to_string());
        }
        self.cells
            .entry(variant.to_string())
            .or_default()
            .entry(fault.to_string())
            .or_default()
            .add(o);
    }

    fn total(&self, pick: impl Fn(&str, &str) -> bool) -> Counts {
        let mut c = Counts::default();
        for (v, fs) in &self.cells {
            for (f, counts) in fs {
                if pick(v, f) {
                    for (o, n) in &counts.0 {
                        *c.0.entry(*o).or_default() += n;
                    }
                }
            }
        }
        c
    }

    fn faults(&self) -> Vec<String> {
        let mut f: Vec<String> = self
            .cells
            .values()
            .flat_map(|m| m.keys().cloned())
            .collect();
        let rank = |s: &str| {
            super::fault::FaultKind::from_name(s).map_or(usize::MAX, |k| {
                super::fault::FaultKind::ALL
                    .iter()
                    .position(|x| *x == k)
                    .unwrap_or(0)
            })
        };
        f.sort_by_key(|s| rank(s));
        f.dedup();
        f
    }

    /// The campaign's JSON (contract keys at the top, over every run).
    pub fn json(&self) -> serde_json::Value {
        let mut v = self.total(|_, _| true).json();
        let mut by_policy = serde_json::Map::new();
        for p in &self.order {
            let mut pv = self.total(|v, _| v == p).json();
            let mut bf = serde_json::Map::new();
            for (f, c) in &self.cells[p] {
                bf.insert(f.clone(), c.json());
            }
            pv["by_fault"] = serde_json::Value::Object(bf);
            by_policy.insert(p.clone(), pv);
        }
        let mut by_fault = serde_json::Map::new();
        for f in self.faults() {
            by_fault.insert(f.clone(), self.total(|_, ff| ff == f).json());
        }
        v["by_policy"] = serde_json::Value::Object(by_policy);
        v["by_fault"] = serde_json::Value::Object(by_fault);
        v
    }

    /// The markdown table: one row per variant and fault kind, plus one per variant.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| policy | fault | runs | not act. | masked | recovered | failed | hang | silent | recovered / manifested (95% CI) | silent / activated |"
        );
        let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
        let row = |t: &mut String, p: &str, f: &str, c: &Counts| {
            let (m, a) = (c.manifested(), c.activated());
            let rec = c.get(Outcome::Recovered);
            let (lo, hi) = wilson(rec, m);
            let rate = if m == 0 {
                "—".to_string()
            } else {
                format!(
                    "{:.1}% ({:.1}–{:.1}%)",
                    100.0 * rec as f64 / m as f64,
                    100.0 * lo,
                    100.0 * hi
                )
            };
            let silent = if a == 0 {
                "—".to_string()
            } else {
                format!("{:.1}%", 100.0 * c.get(Outcome::Silent) as f64 / a as f64)
            };
            let _ = writeln!(
                t,
                "| {p} | {f} | {} | {} | {} | {} | {} | {} | {} | {rate} | {silent} |",
                c.runs(),
                c.get(Outcome::NotActivated),
                c.get(Outcome::Masked),
                c.get(Outcome::Recovered),
                c.get(Outcome::Failed),
                c.get(Outcome::Hang),
                c.get(Outcome::Silent),
            );
        };
        for p in &self.order {
            let faults = &self.cells[p];
            for f in self.faults() {
                if let Some(c) = faults.get(&f) {
                    row(&mut t, p, &f, c);
                }
            }
            if faults.len() > 1 {
                row(&mut t, p, "**all**", &self.total(|v, _| v == p));
            }
        }
        t
    }

    /// Stacked bars: the share of each class among injected faults, per variant and fault.
    pub fn chart(&self, out: &Path, title: &str) -> Result<()> {
        let rows: Vec<(String, Counts)> = self
            .order
            .iter()
            .flat_map(|p| {
                self.faults()
                    .into_iter()
                    .filter_map(|f| Some((format!("{p} · {f}"), self.cells[p].get(&f)?.clone())))
                    .collect::<Vec<_>>()
            })
            .collect();
        let h = 120 + 26 * rows.len() as u32;
        let root = SVGBackend::new(out, (1000, h.max(300))).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting: {e}");
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let n = rows.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(230)
            .build_cartesian_2d(0f64..100f64, 0f64..n as f64)
            .map_err(|e| err(&e))?;
        let labels: Vec<String> = rows.iter().map(|(l, _)| l.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&move |y| {
                let i = y - 0.5;
                let r = i.round();
                if (i - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < labels.len() {
                    labels[labels.len() - 1 - r as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_desc("% of injected faults")
            .draw()
            .map_err(|e| err(&e))?;
        let colors = [
            RGBColor(0xbb, 0xbb, 0xbb),
            RGBColor(0x9e, 0xcf, 0xe8),
            RGBColor(0x2c, 0xa0, 0x2c),
            RGBColor(0xd6, 0x27, 0x28),
            RGBColor(0xff, 0x7f, 0x0e),
            RGBColor(0x94, 0x67, 0xbd),
        ];
        for (ci, o) in Outcome::ALL.iter().enumerate() {
            let color = colors[ci];
            let bars: Vec<Rectangle<(f64, f64)>> = rows
                .iter()
                .enumerate()
                .map(|(ri, (_, c))| {
                    let total = c.runs().max(1) as f64;
                    let before: u64 = Outcome::ALL[..ci].iter().map(|x| c.get(*x)).sum();
                    let x0 = 100.0 * before as f64 / total;
                    let x1 = x0 + 100.0 * c.get(*o) as f64 / total;
                    let y = (rows.len() - 1 - ri) as f64;
                    Rectangle::new([(x0, y + 0.15), (x1, y + 0.85)], color.filled())
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| err(&e))?
                .label(o.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_definitions() {
        let base = Observation {
            injected: true,
            ..Observation::default()
        };
        assert_eq!(classify(&base), Outcome::NotActivated);
        let disturbed = Observation {
            injected: false,
            detected: true,
            ..base
        };
        assert_eq!(classify(&disturbed), Outcome::NotActivated);
        let fired = Observation {
            fired: true,
            ..base
        };
        assert_eq!(classify(&fired), Outcome::Masked);
        let det = Observation {
            detected: true,
            ..fired
        };
        assert_eq!(classify(&det), Outcome::Recovered);
        assert_eq!(
            classify(&Observation {
                divergent_keys: 1,
                ..det
            }),
            Outcome::Failed
        );
        assert_eq!(
            classify(&Observation { errors: 1, ..fired }),
            Outcome::Failed
        );
        assert_eq!(
            classify(&Observation {
                wrong_replies: 1,
                ..fired
            }),
            Outcome::Silent
        );
        assert_eq!(
            classify(&Observation {
                timeout: true,
                ..det
            }),
            Outcome::Hang
        );
        // Something went wrong though the fault never fired: classified by what was seen.
        assert_eq!(
            classify(&Observation {
                divergent_keys: 2,
                ..base
            }),
            Outcome::Silent
        );
    }

    #[test]
    fn wilson_interval() {
        let (lo, hi) = wilson(1000, 1000);
        assert!(lo > 0.996 && lo < 0.9965 && hi == 1.0, "{lo}");
        let (lo, hi) = wilson(50, 100);
        assert!((lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3);
        assert!(wilson(0, 0).0.is_nan());
    }

    #[test]
    fn tally_json_has_the_contract_keys() {
        let mut t = Tally::default();
        t.add("txipc", "sigkill", Outcome::Recovered);
        t.add("txipc", "sigkill", Outcome::Masked);
        t.add("restart", "sigkill", Outcome::Failed);
        let v = t.json();
        for k in [
            "runs",
            "not_activated",
            "masked",
            "recovered",
            "failed",
            "hang",
            "silent",
            "recovery_rate",
            "by_policy",
            "by_fault",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["runs"], 3);
        assert_eq!(v["by_policy"]["txipc"]["recovery_rate"], 1.0);
        assert_eq!(
            v["by_policy"]["restart"]["by_fault"]["sigkill"]["failed"],
            1
        );
        assert!(t.table().contains("| restart | sigkill | 1 |"));
    }
}
