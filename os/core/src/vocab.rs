//! The command line's words for faults and policies, one vocabulary for every command
//! (`txipc demo --fault`, `txipc bench recovery --fault`, `txipc inject --fault`, `--policy`).
//!
//! Lists are comma-separated; `all` means every name the command supports. A command that
//! supports only some names passes them as `allowed`, and an unsupported name is refused with
//! the list of the ones it takes.

/// A fault the command line can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL from outside, at whatever instant the server is in (fail-stop).
    Sigkill,
    /// `panic!` at a fail point.
    Panic,
    /// `abort()` at a fail point.
    Abort,
    /// A hardware SIGSEGV at a fail point.
    Segv,
    /// An infinite loop at a fail point (the kernel's deadline catches it).
    Hang,
    /// `exit(3)` at a fail point: a death the server does not report.
    Exit,
    /// A corrupted value at a fail point.
    Corrupt,
    /// A delay at a fail point.
    Delay,
    /// A bit flipped in a register (ptrace SWIFI).
    BitflipReg,
    /// A bit flipped in the stack (ptrace SWIFI).
    BitflipStack,
    /// A bit flipped in the heap (ptrace SWIFI).
    BitflipHeap,
    /// An instruction skipped (ptrace SWIFI).
    SkipInsn,
}

impl Fault {
    /// Every fault name, in the order help texts list them.
    pub const ALL: [Fault; 12] = [
        Fault::Sigkill,
        Fault::Panic,
        Fault::Abort,
        Fault::Segv,
        Fault::Hang,
        Fault::Exit,
        Fault::Corrupt,
        Fault::Delay,
        Fault::BitflipReg,
        Fault::BitflipStack,
        Fault::BitflipHeap,
        Fault::SkipInsn,
    ];

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Sigkill => "sigkill",
            Fault::Panic => "panic",
            Fault::Abort => "abort",
            Fault::Segv => "segv",
            Fault::Hang => "hang",
            Fault::Exit => "exit",
            Fault::Corrupt => "corrupt",
            Fault::Delay => "delay",
            Fault::BitflipReg => "bitflip-reg",
            Fault::BitflipStack => "bitflip-stack",
            Fault::BitflipHeap => "bitflip-heap",
            Fault::SkipInsn => "skip-insn",
        }
    }

    /// The name's fault, if it is one.
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The fail point kind that injects this fault inside the server, if there is one.
    pub fn fail_kind(self) -> Option<crate::failpoint::FailKind> {
        use crate::failpoint::FailKind;
        Some(match self {
            Fault::Panic => FailKind::Panic,
            Fault::Abort => FailKind::Abort,
            Fault::Segv => FailKind::Segv,
            Fault::Hang => FailKind::Hang,
            Fault::Exit => FailKind::Exit,
            Fault::Corrupt => FailKind::Corrupt,
            Fault::Delay => FailKind::Delay,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Joins names for an error or help text: `a, b, c`.
pub fn names<T: Copy>(items: &[T], name: impl Fn(T) -> &'static str) -> String {
    items
        .iter()
        .map(|&x| name(x))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a comma-separated list of fault names (or `all`) restricted to `allowed`, without
/// duplicates, in the order given. The error names the bad entry and the accepted names.
pub fn parse_faults(list: &str, allowed: &[Fault]) -> Result<Vec<Fault>, String> {
    let accepted = || format!("{}, or all", names(allowed, Fault::as_str));
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        if item == "all" {
            for &f in allowed {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
            continue;
        }
        match Fault::from_name(item) {
            Some(f) if allowed.contains(&f) => {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
            Some(f) => {
                return Err(format!(
                    "fault `{f}` is not supported here: use {}",
                    accepted()
                ));
            }
            None => return Err(format!("unknown fault `{item}`: use {}", accepted())),
        }
    }
    if out.is_empty() {
        return Err(format!("no fault given: use {}", accepted()));
    }
    Ok(out)
}

/// How a server recovers, as the command line names it: a manifest policy plus, for `txipc`,
/// its tracking mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyName {
    /// A crash is final.
    None,
    /// Restarted empty.
    Restart,
    /// TxIPC with typed tracking.
    Txipc,
    /// TxIPC with page tracking.
    Page,
    /// Singularity's companion (message log, checkpoints, replay) over ordinary Rust state.
    Companion,
}

impl PolicyName {
    /// Every policy name.
    pub const ALL: [PolicyName; 5] = [
        PolicyName::None,
        PolicyName::Restart,
        PolicyName::Txipc,
        PolicyName::Page,
        PolicyName::Companion,
    ];

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::None => "none",
            PolicyName::Restart => "restart",
            PolicyName::Txipc => "txipc",
            PolicyName::Page => "page",
            PolicyName::Companion => "companion",
        }
    }

    /// Parses one policy name. The error names the accepted ones.
    pub fn parse(name: &str) -> Result<PolicyName, String> {
        PolicyName::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown policy `{name}`: use {}",
                    names(&PolicyName::ALL, PolicyName::as_str)
                )
            })
    }

    /// The manifest's policy and tracking for this name.
    pub fn manifest(self) -> (crate::manifest::Policy, crate::manifest::Tracking) {
        use crate::manifest::{Policy, Tracking};
        match self {
            PolicyName::None => (Policy::None, Tracking::Typed),
            PolicyName::Restart => (Policy::Restart, Tracking::Typed),
            PolicyName::Txipc => (Policy::Txipc, Tracking::Typed),
            PolicyName::Page => (Policy::Txipc, Tracking::Page),
            PolicyName::Companion => (Policy::Companion, Tracking::Typed),
        }
    }

    /// The built-in that serves the Kv interface under this policy: `kv` (state in the
    /// recoverable heap) or, under `companion`, `kv-plain` (ordinary Rust collections).
    pub fn kv_builtin(self) -> &'static str {
        match self {
            PolicyName::Companion => "kv-plain",
            _ => "kv",
        }
    }
}

/// A bad value on the command line (the `txipc` command exits with code 2, "usage", for it).
/// Commands wrap their argument checks in it so that the front end can tell a usage error
/// from a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists() {
        let demo = [Fault::Sigkill, Fault::Panic, Fault::Segv];
        assert_eq!(
            parse_faults("segv, sigkill,segv", &demo).unwrap(),
            vec![Fault::Segv, Fault::Sigkill]
        );
        assert_eq!(parse_faults("all", &demo).unwrap(), demo.to_vec());
        let e = parse_faults("kill", &demo).unwrap_err();
        assert!(
            e.contains("unknown fault `kill`") && e.contains("sigkill"),
            "{e}"
        );
        let e = parse_faults("bitflip-reg", &demo).unwrap_err();
        assert!(e.contains("not supported here"), "{e}");
        assert!(parse_faults(" , ", &demo).is_err());
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.as_str()), Some(f));
        }
    }

    #[test]
    fn policy_names() {
        for p in PolicyName::ALL {
            assert_eq!(PolicyName::parse(p.as_str()), Ok(p));
        }
        assert!(PolicyName::parse("bogus").unwrap_err().contains("txipc"));
    }
}
