//! Fault kinds and the fault of one run, derived from the run's seed alone.
//!
//! A campaign draws, for run `i`, a run seed from the campaign seed; the run's fault kind is
//! chosen from the fault list by that seed, and everything else about the fault (the call it
//! is aimed at, the fail-point site, the bit, the register, the delay) is derived from the
//! kind and the run seed. So the same run seed with the same fault list gives the same fault
//! under every policy, and `--replay SEED` reruns one run alone.

use serde::Serialize;
use txipc_core::failpoint::{FailKind, FailSpec, RUNTIME_SITES, Site};

use crate::ycsb::Rng;

/// A fault kind: the command line's vocabulary (`txipc_core::vocab`).
pub use txipc_core::vocab::Fault as FaultKind;

/// The fault families of reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// SIGKILL from outside at a random instant during a random call.
    FailStop,
    /// Fail points compiled into the runtime and the server, at a random site.
    FailPoint,
    /// Software-implemented fault injection through ptrace.
    Swifi,
}

/// The family of a kind.
pub fn family(k: FaultKind) -> Family {
    match k {
        FaultKind::Sigkill => Family::FailStop,
        FaultKind::BitflipReg
        | FaultKind::BitflipStack
        | FaultKind::BitflipHeap
        | FaultKind::SkipInsn => Family::Swifi,
        _ => Family::FailPoint,
    }
}

/// Parses a fault list: names, comma-separated, `all`, or a family (`fail-stop`,
/// `fail-points`, `swifi`).
pub fn parse_list(s: &str) -> Result<Vec<FaultKind>, String> {
    let mut names: Vec<&str> = Vec::new();
    for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let of = |fam: Family| {
            FaultKind::ALL
                .into_iter()
                .filter(move |k| family(*k) == fam)
                .map(FaultKind::as_str)
                .collect::<Vec<&'static str>>()
        };
        match f {
            "fail-stop" => names.extend(of(Family::FailStop)),
            "fail-points" | "failpoints" => names.extend(of(Family::FailPoint)),
            "swifi" => names.extend(of(Family::Swifi)),
            other => names.push(other),
        }
    }
    txipc_core::vocab::parse_faults(&names.join(","), &FaultKind::ALL)
        .map_err(|e| format!("{e} (or a family: fail-stop, fail-points, swifi)"))
}

/// Registers a ptrace fault may flip, by name (`user_regs_struct` fields).
pub const REGISTERS: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "eflags",
];

/// What exactly is done to the server in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "how", rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL `delay_us` after call `call` was started.
    Kill {
        /// Microseconds after the call started.
        delay_us: u32,
    },
    /// A fail point armed when call `call` starts.
    FailPoint {
        /// What the kernel arms.
        #[serde(skip)]
        spec: FailSpec,
        /// The site's name.
        site: &'static str,
        /// The kind's argument (bit, or milliseconds).
        arg: u32,
    },
    /// Flip `bit` of register `reg`.
    Register {
        /// The register's name.
        reg: &'static str,
        /// Which bit.
        bit: u32,
    },
    /// Flip `bit` of the stack word at `rsp + 8 * word`.
    Stack {
        /// Word index above the stack pointer.
        word: u32,
        /// Which bit.
        bit: u32,
    },
    /// Flip `bit` of the heap word at `fraction` of the used part of the heap.
    Heap {
        /// Position in the used part, in millionths.
        ppm: u32,
        /// Which bit.
        bit: u32,
    },
    /// Skip the instruction at rip.
    SkipInsn,
}

/// The fault of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultPlan {
    /// The kind.
    #[serde(serialize_with = "kind_name")]
    pub kind: FaultKind,
    /// The workload call the fault is aimed at (0-based).
    pub call: u32,
    /// How.
    pub action: Action,
    /// Microseconds the ptrace injector waits between attempts to catch the server inside a
    /// call (SWIFI), drawn per attempt from `0..=jitter_us`.
    #[serde(skip)]
    pub jitter_seed: u64,
}

fn kind_name<S: serde::Serializer>(k: &FaultKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

/// The fail-point sites a campaign on `server` may use for `kind`.
pub fn sites_for(server_sites: &[Site], kind: FailKind) -> Vec<Site> {
    RUNTIME_SITES
        .iter()
        .chain(server_sites)
        .filter(|s| kind != FailKind::Corrupt || s.data)
        .copied()
        .collect()
}

/// Derives run `index`'s seed from the campaign seed.
pub fn run_seed(campaign_seed: u64, index: u64) -> u64 {
    let mut r = Rng::new(campaign_seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.next_u64()
}

/// The kind of the run with `seed`, from the fault list.
pub fn kind_for(list: &[FaultKind], seed: u64) -> FaultKind {
    list[(Rng::new(seed ^ 0x4B49_4E44).next_u64() % list.len() as u64) as usize]
}

/// Derives the fault of a run from its kind and seed. `calls` is the workload's length;
/// `deadline_ms` the server's per-call deadline (delays are drawn up to twice it).
pub fn plan(
    kind: FaultKind,
    seed: u64,
    calls: u32,
    server_sites: &[Site],
    deadline_ms: u64,
) -> FaultPlan {
    let mut r = Rng::new(seed);
    // Aimed at the middle half of the workload: calls before it fill the state, calls after
    // it run on whatever the recovery left.
    let lo = u64::from(calls / 4);
    let hi = u64::from((3 * calls / 4).max(calls / 4 + 1)) - 1;
    let call = r.range_inclusive(lo, hi.max(lo)) as u32;
    let bit = r.next_u64() as u32;
    let action = match kind {
        FaultKind::Sigkill => Action::Kill {
            delay_us: r.range_inclusive(0, 30) as u32,
        },
        FaultKind::BitflipReg => Action::Register {
            reg: REGISTERS[r.range_inclusive(0, REGISTERS.len() as u64 - 1) as usize],
            bit: bit % 64,
        },
        FaultKind::BitflipStack => Action::Stack {
            word: r.range_inclusive(0, 255) as u32,
            bit: bit % 64,
        },
        FaultKind::BitflipHeap => Action::Heap {
            ppm: r.range_inclusive(0, 999_999) as u32,
            bit: bit % 64,
        },
        FaultKind::SkipInsn => Action::SkipInsn,
        _ => {
            let fk = kind.fail_kind().expect("a fail-point kind");
            debug_assert_eq!(family(kind), Family::FailPoint);
            let sites = sites_for(server_sites, fk);
            let site = sites[r.range_inclusive(0, sites.len() as u64 - 1) as usize];
            let arg = match fk {
                FailKind::Delay => r.range_inclusive(1, 2 * deadline_ms.max(1)) as u32,
                FailKind::Corrupt => bit,
                _ => 0,
            };
            Action::FailPoint {
                spec: FailSpec {
                    kind: fk,
                    site: site.id,
                    arg,
                },
                site: site.name,
                arg,
            }
        }
    };
    FaultPlan {
        kind,
        call,
        action,
        jitter_seed: r.next_u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITES: &[Site] = &[Site {
        id: 40,
        name: "x.y",
        data: false,
    }];

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("all").unwrap().len(), 12);
        assert_eq!(parse_list("sigkill").unwrap(), vec![FaultKind::Sigkill]);
        assert_eq!(parse_list("swifi").unwrap().len(), 4);
        assert_eq!(parse_list("fail-points").unwrap().len(), 7);
        assert_eq!(parse_list("sigkill,swifi,sigkill").unwrap().len(), 5);
        assert!(parse_list("bogus").unwrap_err().contains("bitflip-reg"));
        assert!(parse_list("").is_err());
    }

    #[test]
    fn a_seed_gives_the_same_fault() {
        for kind in FaultKind::ALL {
            for seed in 0..50 {
                let a = plan(kind, seed, 40, SITES, 100);
                assert_eq!(a, plan(kind, seed, 40, SITES, 100));
                assert!((10..30).contains(&a.call), "{a:?}");
                if let Action::FailPoint { spec, .. } = a.action {
                    assert!(
                        kind != FaultKind::Corrupt || spec.site != 40,
                        "no data there"
                    );
                }
            }
        }
        let list = parse_list("all").unwrap();
        let seen: std::collections::BTreeSet<_> =
            (0..500).map(|i| kind_for(&list, run_seed(7, i))).collect();
        assert_eq!(seen.len(), 12, "every kind is drawn");
    }
}
