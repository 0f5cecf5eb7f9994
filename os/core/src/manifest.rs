//! The manifest: a system described in TOML.
//!
//! ```toml
//! name = "default"
//!
//! [[server]]
//! name = "kv"              # how clients ask for it
//! builtin = "kv"           # a server compiled into the txipc binary (or: exec = "/path")
//! policy = "txipc"         # none | restart | txipc | companion
//! tracking = "typed"       # typed | page   (policy txipc)
//! heap_mb = 64             # recoverable heap (sparse: costs nothing until touched)
//! deadline_ms = 2000       # a call running longer is a hang: the incarnation is killed
//! retry_limit = 2          # faults a request may cause before it is failed as poison
//! checkpoint_every = 50000 # policy companion: checkpoint after this many logged requests ...
//! checkpoint_ms = 1000     # ... or this long after the last one (whichever comes first)
//! standby = "follow"       # policy companion: the standby replays the log as it is written
//!                          # and takes the checkpoints (or "warm": the server forks them)
//! follow_max_lag = 0       # policy companion, follow: past this many records behind the log
//!                          # the replica replays at its own priority, not nice 19 (0: never)
//! takeover = false         # policy txipc: true: the standby takes over by itself when the
//!                          # server fails, the kernel confirming and accounting in parallel
//! [server.restart]
//! min_interval_ms = 0      # at least this long between two restarts
//! max_restarts = 200       # at most this many restarts ...
//! window_ms = 1000         # ... in any window this long, then the server is held down
//!
//! [[grant]]
//! client = "*"             # "*" (anyone), "uid:N" (local processes of user N), or a server name
//! service = "kv"
//!
//! [[operator]]             # who may act on the system itself: stop, inject, restart, release, kill
//! client = "owner"         # "owner" (the user that started the kernel), "uid:N", or "*"
//! ```
//!
//! A manifest with no `[[operator]]` entry makes the owner the only operator; `operator = []`
//! (a top-level key, before the first table) makes nobody one: the system then stops only by
//! signal.
//!
//! Parsing never panics; every error names the entry and the field, and says what to do.

use serde::{Deserialize, Serialize};

/// The built-in manifest used by `txipc run` with no argument.
pub const DEFAULT_MANIFEST: &str = r#"
name = "default"

[[server]]
name = "kv"
builtin = "kv"
policy = "txipc"
tracking = "typed"
heap_mb = 256
deadline_ms = 2000
retry_limit = 2

[[server]]
name = "fs"
builtin = "fs"
policy = "txipc"
tracking = "typed"
heap_mb = 1024
log_mb = 64
deadline_ms = 2000
retry_limit = 10
slots = 8
request_max = 139264
reply_max = 139264

[[grant]]
client = "*"
service = "kv"

[[grant]]
client = "*"
service = "fs"

[[operator]]
client = "owner"
"#;

/// How a server recovers from a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// A crash is final: clients get `Unavailable`.
    None,
    /// The server is restarted empty; in-flight calls get `Restarted`.
    Restart,
    /// Every call is a transaction; a fault rolls it back and the call is re-executed.
    Txipc,
    /// Singularity's companion: every state-changing request is logged outside the server
    /// before it runs, the server's ordinary Rust state is checkpointed now and then, and a
    /// fault restarts it from the last checkpoint and replays the log.
    Companion,
}

impl Policy {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Restart => "restart",
            Policy::Txipc => "txipc",
            Policy::Companion => "companion",
        }
    }
}

/// How writes to the heap are tracked under policy `txipc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tracking {
    /// Every write through `&mut Tx` logs its exact bytes (fast).
    #[default]
    Typed,
    /// Pages are write-protected and saved on first write (transparent).
    Page,
}

/// Policy companion: how the standby incarnation keeps itself ready, and who takes the
/// checkpoints (ARCHITECTURE.md §16, "The following standby").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Standby {
    /// The standby replays the message log as it is written (a replica one record behind the
    /// server) and writes the checkpoints from its own state: the server never forks for
    /// them (only when its log fills up faster than the standby follows).
    #[default]
    Follow,
    /// The server forks a child for every checkpoint; the standby restores each accepted one.
    Warm,
}

/// Restart-storm bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartLimits {
    /// Minimum time between two restarts of the server, in milliseconds.
    pub min_interval_ms: u64,
    /// Most restarts allowed in any window of `window_ms`; past it the server is held down.
    pub max_restarts: u32,
    /// The window, in milliseconds.
    pub window_ms: u64,
}

impl Default for RestartLimits {
    fn default() -> Self {
        RestartLimits {
            min_interval_ms: 0,
            max_restarts: 200,
            window_ms: 1000,
        }
    }
}

/// One server of the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// The name clients connect to.
    pub name: String,
    /// A server compiled into the txipc binary.
    #[serde(default)]
    pub builtin: Option<String>,
    /// An executable that links the txipc runtime.
    #[serde(default)]
    pub exec: Option<String>,
    /// Recovery policy.
    pub policy: Policy,
    /// Tracking mode (policy txipc).
    #[serde(default)]
    pub tracking: Tracking,
    /// Heap size in MiB.
    #[serde(default = "default_heap_mb")]
    pub heap_mb: u64,
    /// Undo-log size in MiB.
    #[serde(default = "default_log_mb")]
    pub log_mb: u64,
    /// Per-call deadline in milliseconds (hang detection).
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// How many times a request may fault the server before it is failed as poison.
    #[serde(default = "default_retry_limit")]
    pub retry_limit: u32,
    /// Slots per channel (calls in flight per client connection).
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Largest request, in bytes.
    #[serde(default = "default_msg_max")]
    pub request_max: u32,
    /// Largest reply, in bytes.
    #[serde(default = "default_msg_max")]
    pub reply_max: u32,
    /// Group commit: most requests run as one transaction (1 disables batching).
    #[serde(default = "default_batch")]
    pub batch_max: u32,
    /// Pin the server to this CPU.
    #[serde(default)]
    pub cpu: Option<usize>,
    /// Restart-storm bounds.
    #[serde(default)]
    pub restart: RestartLimits,
    /// Most channels open to this server at once (from every client and server together);
    /// past it a connect is refused with `ErrorKind::Limit`.
    #[serde(default = "default_max_channels")]
    pub max_channels: u32,
    /// Policy companion: take a checkpoint after this many logged (state-changing) requests.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Policy companion: take a checkpoint this many milliseconds after the previous one, if
    /// anything was logged since (0: only by count and by a full log).
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_ms: u64,
    /// Policy companion: what the standby does while the server serves.
    #[serde(default)]
    pub standby: Standby,
    /// Policy companion, `standby = "follow"`: a replica more than this many records behind
    /// the log replays at its own priority instead of nice 19, until it has caught up, so
    /// that a recovery never replays much more than this (it trades CPU time of the server
    /// and its clients for recovery time under a load that leaves no CPU idle); 0: always at
    /// nice 19, however far behind.
    #[serde(default)]
    pub follow_max_lag: u64,
    /// Policy txipc: the standby is armed as the *spare* of the serving incarnation and takes
    /// over by itself when it fails (ARCHITECTURE.md §6, "The spare"); `false`: the kernel
    /// always recovers and activates the standby itself. Off by default: in the quiet wave-6
    /// A/B the spare recovered SIGKILL and hangs ~0.1 ms faster at the median but every fault
    /// kind slower at p99 (SIGSEGV ~8 ms against 1.2-2.8 ms; README, "Quiet re-run, wave 6").
    #[serde(default = "default_takeover")]
    pub takeover: bool,
}

fn default_takeover() -> bool {
    false
}
fn default_max_channels() -> u32 {
    1024
}
fn default_max_channels_per_client() -> u32 {
    256
}
fn default_heap_mb() -> u64 {
    64
}
fn default_log_mb() -> u64 {
    16
}
fn default_deadline_ms() -> u64 {
    2000
}
fn default_retry_limit() -> u32 {
    2
}
fn default_slots() -> u32 {
    4
}
fn default_msg_max() -> u32 {
    64 * 1024
}
fn default_batch() -> u32 {
    1
}
fn default_checkpoint_every() -> u64 {
    50_000
}
fn default_checkpoint_ms() -> u64 {
    1000
}

/// Who may connect to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `*`, `uid:N`, or a server name.
    pub client: String,
    /// A server name.
    pub service: String,
}

/// Who may act on the system itself (`Shutdown`, `Inject`, `Restart`, `Release`, `Kill`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// `owner` (the user that started the kernel), `uid:N`, or `*`.
    pub client: String,
}

/// A whole system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The system's name (the socket is named after it).
    #[serde(default = "default_name")]
    pub name: String,
    /// The servers.
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerSpec>,
    /// The grants.
    #[serde(default, rename = "grant")]
    pub grants: Vec<Grant>,
    /// The operators; `None` (no `[[operator]]` entry): the owner only.
    #[serde(default, rename = "operator")]
    pub operators: Option<Vec<Operator>>,
    /// Most channels one client connection may hold at once; past it a connect is refused
    /// with `ErrorKind::Limit`.
    #[serde(default = "default_max_channels_per_client")]
    pub max_channels_per_client: u32,
}

fn default_name() -> String {
    "default".into()
}

/// A client identity, as the kernel established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A local process of this user id (from SO_PEERCRED).
    Uid(u32),
    /// A server of the system.
    Server(String),
}

/// What is wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not valid TOML, or fields of the wrong type or unknown.
    #[error("manifest is not valid: {0}")]
    Syntax(String),
    /// A field has a value that cannot work.
    #[error("server `{server}`: {field} {problem}")]
    Field {
        /// The server entry.
        server: String,
        /// The field.
        field: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// Any other inconsistency.
    #[error("manifest: {0}")]
    Invalid(String),
}

/// Built-in server names the txipc binary knows (the binary checks again at boot).
pub const BUILTINS: &[&str] = &[
    "kv",
    "kv-checked",
    "fs",
    "null",
    "faulty",
    "bank",
    "account",
    "kv-plain",
    "kv-plain-faulty",
    "bank-plain",
    "bank-plain-faulty",
    "account-plain",
];

/// Built-in servers whose state is ordinary Rust data with a distillation (they can run under
/// policy `companion`, and only under it or the baselines).
pub const COMPANION_BUILTINS: &[&str] = &[
    "kv-plain",
    "kv-plain-faulty",
    "bank-plain",
    "bank-plain-faulty",
    "account-plain",
];

const MAX_HEAP_MB: u64 = 64 * 1024;

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// The built-in default manifest.
    pub fn default_system() -> Manifest {
        Manifest::parse(DEFAULT_MANIFEST).expect("the built-in manifest is valid")
    }

    /// Checks every rule; the first violation is returned.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if !crate::paths::valid_system_name(&self.name) {
            return Err(ManifestError::Invalid(format!(
                "system name `{}` is not valid: use 1-64 letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        if self.servers.is_empty() {
            return Err(ManifestError::Invalid(
                "no servers: add at least one [[server]] entry".into(),
            ));
        }
        if self.max_channels_per_client == 0 || self.max_channels_per_client > 65_536 {
            return Err(ManifestError::Invalid(format!(
                "max_channels_per_client must be 1..=65536, got {}",
                self.max_channels_per_client
            )));
        }
        if self.servers.len() > 64 {
            return Err(ManifestError::Invalid(format!(
                "{} servers: at most 64 are supported",
                self.servers.len()
            )));
        }
        for (i, s) in self.servers.iter().enumerate() {
            let field = |field, problem: String| ManifestError::Field {
                server: s.name.clone(),
                field,
                problem,
            };
            if !crate::paths::valid_system_name(&s.name) {
                return Err(field(
                    "name",
                    "must be 1-64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if self.servers[..i].iter().any(|o| o.name == s.name) {
                return Err(field(
                    "name",
                    "is used by two servers: names must be unique".into(),
                ));
            }
            match (&s.builtin, &s.exec) {
                (None, None) => {
                    return Err(field(
                        "builtin",
                        format!("missing: give `builtin` (one of {BUILTINS:?}) or `exec`"),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(field(
                        "exec",
                        "and `builtin` are both given: keep one".into(),
                    ));
                }
                (Some(b), None) if !BUILTINS.contains(&b.as_str()) => {
                    return Err(field(
                        "builtin",
                        format!("`{b}` is not a built-in server; known: {BUILTINS:?}"),
                    ));
                }
                _ => {}
            }
            if s.heap_mb == 0 || s.heap_mb > MAX_HEAP_MB {
                return Err(field(
                    "heap_mb",
                    format!("must be 1..={MAX_HEAP_MB}, got {}", s.heap_mb),
                ));
            }
            if s.log_mb == 0 || s.log_mb > 4096 {
                return Err(field(
                    "log_mb",
                    format!("must be 1..=4096, got {}", s.log_mb),
                ));
            }
            if s.deadline_ms == 0 {
                return Err(field("deadline_ms", "must be at least 1".into()));
            }
            if s.retry_limit > 100 {
                return Err(field(
                    "retry_limit",
                    format!("must be 0..=100, got {}", s.retry_limit),
                ));
            }
            if s.slots == 0 || s.slots > 256 {
                return Err(field("slots", format!("must be 1..=256, got {}", s.slots)));
            }
            for (name, v) in [("request_max", s.request_max), ("reply_max", s.reply_max)] {
                if !(64..=16 << 20).contains(&v) {
                    return Err(field(
                        if name == "request_max" {
                            "request_max"
                        } else {
                            "reply_max"
                        },
                        format!("must be 64 bytes..=16 MiB, got {v}"),
                    ));
                }
            }
            if s.max_channels == 0 || s.max_channels > 65_536 {
                return Err(field(
                    "max_channels",
                    format!("must be 1..=65536, got {}", s.max_channels),
                ));
            }
            if s.batch_max == 0 || s.batch_max > 64 {
                return Err(field(
                    "batch_max",
                    format!("must be 1..=64, got {}", s.batch_max),
                ));
            }
            if let Some(b) = &s.builtin {
                let plain = COMPANION_BUILTINS.contains(&b.as_str());
                if s.policy == Policy::Companion && !plain {
                    return Err(field(
                        "policy",
                        format!(
                            "`companion` needs a server whose state is ordinary Rust data with a distillation; built-in `{b}` keeps its state in the recoverable heap: use one of {COMPANION_BUILTINS:?} (`kv-plain` serves the same Kv interface), or policy `txipc`"
                        ),
                    ));
                }
                if s.policy == Policy::Txipc && plain {
                    return Err(field(
                        "policy",
                        format!(
                            "`txipc` needs a server whose state is in the recoverable heap; built-in `{b}` keeps ordinary Rust data: use policy `companion` (or `kv` for the Kv interface under txipc)"
                        ),
                    ));
                }
            }
            if s.policy == Policy::Companion && s.checkpoint_every == 0 {
                return Err(field(
                    "checkpoint_every",
                    "must be at least 1 (logged requests between two checkpoints)".into(),
                ));
            }
            if s.restart.max_restarts == 0 || s.restart.window_ms == 0 {
                return Err(field(
                    "restart",
                    "max_restarts and window_ms must be at least 1 (use policy = \"none\" for no restarts)"
                        .into(),
                ));
            }
        }
        for g in &self.grants {
            if !self.servers.iter().any(|s| s.name == g.service) {
                return Err(ManifestError::Invalid(format!(
                    "grant to `{}`: no server of that name",
                    g.service
                )));
            }
            let ok = g.client == "*"
                || g.client
                    .strip_prefix("uid:")
                    .is_some_and(|u| u.parse::<u32>().is_ok())
                || self.servers.iter().any(|s| s.name == g.client);
            if !ok {
                return Err(ManifestError::Invalid(format!(
                    "grant client `{}` is neither `*`, `uid:N`, nor a server of this system",
                    g.client
                )));
            }
        }
        for o in self.operators.iter().flatten() {
            let ok = o.client == "*"
                || o.client == "owner"
                || o.client
                    .strip_prefix("uid:")
                    .is_some_and(|u| u.parse::<u32>().is_ok());
            if !ok {
                return Err(ManifestError::Invalid(format!(
                    "operator client `{}` is neither `owner`, `uid:N` nor `*`",
                    o.client
                )));
            }
        }
        Ok(())
    }

    /// Whether `who` may act on the system itself; `owner_uid` is the user that started the
    /// kernel. Servers never are operators.
    pub fn is_operator(&self, who: &Principal, owner_uid: u32) -> bool {
        let Principal::Uid(uid) = who else {
            return false;
        };
        let Some(ops) = &self.operators else {
            return *uid == owner_uid;
        };
        ops.iter().any(|o| match o.client.as_str() {
            "*" => true,
            "owner" => *uid == owner_uid,
            c => c.strip_prefix("uid:") == Some(uid.to_string().as_str()),
        })
    }

    /// The server named `name`, with its index.
    pub fn server(&self, name: &str) -> Option<(usize, &ServerSpec)> {
        self.servers
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
    }

    /// Whether `who` may connect to `service`.
    pub fn is_granted(&self, who: &Principal, service: &str) -> bool {
        self.grants.iter().any(|g| {
            g.service == service
                && match (g.client.as_str(), who) {
                    ("*", _) => true,
                    (c, Principal::Uid(u)) => {
                        c.strip_prefix("uid:") == Some(u.to_string().as_str())
                    }
                    (c, Principal::Server(s)) => c == s,
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_manifest_is_valid() {
        let m = Manifest::default_system();
        assert_eq!(m.name, "default");
        assert_eq!(m.servers[0].policy, Policy::Txipc);
        assert!(m.is_granted(&Principal::Uid(1000), "kv"));
        assert!(m.is_granted(&Principal::Uid(1000), "fs"));
        assert!(!m.is_granted(&Principal::Uid(1000), "nonexistent"));
    }

    fn err(text: &str) -> String {
        Manifest::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_cause() {
        assert!(err("name = 3").contains("not valid"));
        assert!(err("name = \"x\"").contains("no servers"));
        let base = "[[server]]\nname = \"kv\"\npolicy = \"txipc\"\n";
        assert!(err(base).contains("builtin"));
        assert!(err(&format!("{base}builtin = \"nope\"")).contains("not a built-in"));
        assert!(err(&format!("{base}builtin = \"kv\"\nheap_mb = 0")).contains("heap_mb"));
        assert!(err(&format!("{base}builtin = \"kv\"\nbogus = 1")).contains("bogus"));
        assert!(
            err("[[server]]\nname = \"kv\"\nbuiltin = \"kv\"\npolicy = \"sometimes\"")
                .contains("policy")
                || err("[[server]]\nname = \"kv\"\nbuiltin = \"kv\"\npolicy = \"sometimes\"")
                    .contains("variant")
        );
        let two = format!("{base}builtin = \"kv\"\n{base}builtin = \"kv\"\n");
        assert!(err(&two).contains("unique"));
        let grant =
            format!("{base}builtin = \"kv\"\n[[grant]]\nclient = \"*\"\nservice = \"fs\"\n");
        assert!(err(&grant).contains("no server of that name"));
        let grant =
            format!("{base}builtin = \"kv\"\n[[grant]]\nclient = \"bob\"\nservice = \"kv\"\n");
        assert!(err(&grant).contains("neither"));
    }

    #[test]
    fn operators_default_to_the_owner() {
        let base = "[[server]]\nname = \"kv\"\nbuiltin = \"kv\"\npolicy = \"none\"\n";
        let m = Manifest::parse(base).unwrap();
        assert!(m.is_operator(&Principal::Uid(7), 7));
        assert!(!m.is_operator(&Principal::Uid(8), 7));
        assert!(!m.is_operator(&Principal::Server("kv".into()), 7));
        let m = Manifest::parse(&format!("operator = []\n{base}")).unwrap();
        assert!(!m.is_operator(&Principal::Uid(7), 7));
        let m = Manifest::parse(&format!("{base}[[operator]]\nclient = \"uid:9\"\n")).unwrap();
        assert!(m.is_operator(&Principal::Uid(9), 7));
        assert!(!m.is_operator(&Principal::Uid(7), 7));
        let d = Manifest::default_system();
        assert!(d.is_operator(&Principal::Uid(1000), 1000));
        assert!(!d.is_operator(&Principal::Uid(1001), 1000));
        let bad = format!("{base}[[operator]]\nclient = \"bob\"\n");
        assert!(err(&bad).contains("operator client `bob`"));
    }

    #[test]
    fn grants_by_uid_and_server() {
        let m = Manifest::parse(
            "[[server]]\nname = \"kv\"\nbuiltin = \"kv\"\npolicy = \"none\"\n\
             [[server]]\nname = \"bank\"\nbuiltin = \"null\"\npolicy = \"none\"\n\
             [[grant]]\nclient = \"uid:12345\"\nservice = \"kv\"\n\
             [[grant]]\nclient = \"bank\"\nservice = \"kv\"\n",
        )
        .unwrap();
        assert!(m.is_granted(&Principal::Uid(12345), "kv"));
        assert!(!m.is_granted(&Principal::Uid(0), "kv"));
        assert!(m.is_granted(&Principal::Server("bank".into()), "kv"));
        assert!(!m.is_granted(&Principal::Server("kv".into()), "bank"));
    }
}
