//! What the command prints and how it exits.
//!
//! - A command returns a [`Report`]: a JSON object and the text a person reads. With `--json`
//!   the object is the only thing on stdout (one line); without, the text is.
//! - A failure is an error classified into a [`Kind`], which decides the exit code; with
//!   `--json` it is printed as `{"ok": false, "error": ..., "kind": ...}` on stdout.
//!
//! Exit codes: 0 ok, 1 error, 2 usage (a bad argument), 3 not found (no such key, system or
//! server).

use serde_json::{Value, json};
use txipc_core::proto::ErrorKind;
use txipc_core::vocab::UsageError;
use txipc_runtime::client::ClientError;
use txipc_service::CallError;

/// What a successful command shows.
#[derive(Debug)]
pub struct Report {
    /// The JSON object printed with `--json`.
    pub json: Value,
    /// The text printed without `--json` (a trailing newline is added if missing; empty: none).
    pub text: String,
}

impl Report {
    /// A report.
    pub fn new(json: Value, text: impl Into<String>) -> Report {
        Report {
            json,
            text: text.into(),
        }
    }
}

/// The class of a failure, shown as `kind` in JSON and deciding the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bad argument or option value (exit 2).
    Usage,
    /// No value under the key (exit 3).
    NotFound,
    /// No system of that name runs (exit 3).
    NotRunning,
    /// No server of that name in the system (exit 3).
    UnknownServer,
    /// The manifest grants no access (exit 1).
    NotGranted,
    /// The server is down and will not come back by itself (exit 1).
    Unavailable,
    /// No answer in time (exit 1).
    Timeout,
    /// The manifest makes this user no operator of the system (exit 1).
    NotOperator,
    /// The server is not in a state that allows the request (exit 1).
    WrongState,
    /// A limit of the manifest was reached (exit 1).
    Limit,
    /// The demo's state read back differs from the clients' model (exit 1).
    StateDiffers,
    /// A manifest was refused (exit 1).
    Manifest,
    /// Anything else (exit 1).
    Error,
}

impl Kind {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::NotFound => "not_found",
            Kind::NotRunning => "not_running",
            Kind::UnknownServer => "unknown_server",
            Kind::NotGranted => "not_granted",
            Kind::Unavailable => "unavailable",
            Kind::Timeout => "timeout",
            Kind::NotOperator => "not_operator",
            Kind::WrongState => "wrong_state",
            Kind::Limit => "limit",
            Kind::StateDiffers => "state_differs",
            Kind::Manifest => "manifest",
            Kind::Error => "error",
        }
    }

    /// The process exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Usage => 2,
            Kind::NotFound | Kind::NotRunning | Kind::UnknownServer => 3,
            _ => 1,
        }
    }
}

/// A failure that comes with its own report (the demo's verdict, a missing key's `null`): with
/// `--json` the report is printed with `ok: false`, `error` and `kind` added.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failed {
    /// Class.
    pub kind: Kind,
    /// What happened and what to do.
    pub message: String,
    /// Fields to print beside `error` and `kind`.
    pub json: Value,
    /// Text for a person, printed on stdout before the error (empty: none).
    pub text: String,
}

/// A usage error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// A not-found failure (exit 3) with a JSON report.
pub fn not_found(message: impl Into<String>, json: Value) -> anyhow::Error {
    Failed {
        kind: Kind::NotFound,
        message: message.into(),
        json,
        text: String::new(),
    }
    .into()
}

fn call_kind(e: &CallError) -> Kind {
    match e {
        CallError::Timeout | CallError::Withdrawn { .. } => Kind::Timeout,
        CallError::Unavailable { .. } | CallError::Interrupted => Kind::Unavailable,
        _ => Kind::Error,
    }
}

/// Classifies an error by the first cause in its chain that says what it is.
pub fn classify(e: &anyhow::Error) -> Kind {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failed>() {
            return f.kind;
        }
        if cause.is::<UsageError>() || cause.is::<clap::Error>() {
            return Kind::Usage;
        }
        if cause.is::<txipc_core::manifest::ManifestError>() {
            return Kind::Manifest;
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::NotRunning { .. } => Kind::NotRunning,
                ClientError::Refused { kind, .. } => match kind {
                    ErrorKind::UnknownService => Kind::UnknownServer,
                    ErrorKind::NotGranted => Kind::NotGranted,
                    ErrorKind::Unavailable => Kind::Unavailable,
                    ErrorKind::NotOperator => Kind::NotOperator,
                    ErrorKind::WrongState => Kind::WrongState,
                    ErrorKind::Limit => Kind::Limit,
                    _ => Kind::Error,
                },
                ClientError::KernelTimeout { .. } => Kind::Timeout,
                _ => Kind::Error,
            };
        }
        if let Some(c) = cause.downcast_ref::<CallError>() {
            return call_kind(c);
        }
        if let Some(txipc_service::Error::Call(c)) =
            cause.downcast_ref::<txipc_service::Error<kv_api::KvError>>()
        {
            return call_kind(c);
        }
    }
    Kind::Error
}

/// Prints a failure the way the flags ask and returns the exit code.
pub fn fail(e: &anyhow::Error, json: bool) -> i32 {
    let kind = classify(e);
    let message = format!("{e:#}");
    let failed = e.chain().find_map(|c| c.downcast_ref::<Failed>());
    if json {
        let mut v = match failed {
            Some(f) if f.json.is_object() => f.json.clone(),
            _ => json!({}),
        };
        v["ok"] = json!(false);
        v["error"] = json!(message);
        v["kind"] = json!(kind.as_str());
        println!("{v}");
    } else {
        if let Some(f) = failed.filter(|f| !f.text.is_empty()) {
            print_text(&f.text);
        }
        eprintln!("txipc: {message}");
    }
    kind.exit_code()
}

/// Prints text with exactly one trailing newline (nothing for empty text).
pub fn print_text(text: &str) {
    if text.is_empty() {
        return;
    }
    if text.ends_with('\n') {
        print!("{text}");
    } else {
        println!("{text}");
    }
}

/// Prints a successful report.
pub fn show(r: &Report, json: bool) {
    if json {
        println!("{}", r.json);
    } else {
        print_text(&r.text);
    }
}

/// A byte string in JSON: a string when it is UTF-8, else `{"base64": "..."}`.
pub fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!({ "base64": crate::values::base64_encode(b) }),
    }
}

/// Writes a line to stderr unless quiet (progress, tables under `--json`).
#[macro_export]
macro_rules! say {
    ($quiet:expr, $($t:tt)*) => {
        if !$quiet { eprintln!($($t)*) }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_codes() {
        let e = usage("bad");
        assert_eq!(classify(&e), Kind::Usage);
        assert_eq!(classify(&e).exit_code(), 2);
        let e = anyhow::Error::from(ClientError::NotRunning {
            name: "x".into(),
            path: "/nope".into(),
        })
        .context("connecting");
        assert_eq!(classify(&e).exit_code(), 3);
        assert_eq!(classify(&not_found("k", json!({}))), Kind::NotFound);
        assert_eq!(classify(&anyhow::anyhow!("x")), Kind::Error);
        assert_eq!(bytes_json(b"a"), json!("a"));
        assert_eq!(bytes_json(&[0xff]), json!({"base64": "/w=="}));
    }
}
