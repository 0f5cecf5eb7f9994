//! `txipc kv ...`: a client of a running system's kv server, lossless for any bytes.
//!
//! Text output (see [`crate::values`]): `get` prints printable text as is, a counter as its
//! number, other bytes escaped; `scan` prints one `KEY<TAB>VALUE` line per entry with both
//! sides escaped. `--hex` / `--base64` write values in that encoding and read VALUE in it;
//! `--raw` writes `get`'s exact bytes. JSON shows byte strings as strings when they are UTF-8,
//! else as `{"base64": "..."}`, and adds `counter` for counter values. A missing key exits with
//! code 3 (JSON: `"value": null`).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kv_api::KvClient;
use serde_json::{Value, json};
use txipc_runtime::client::System;

use crate::out::{Report, bytes_json, not_found, usage};
use crate::values::{self, Encoding};

/// `txipc kv`.
#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(flatten)]
    enc: EncArgs,
    #[command(subcommand)]
    op: KvOp,
}

/// How values are encoded on the command line (any position after `kv`).
#[derive(Args, Debug, Clone, Copy)]
struct EncArgs {
    /// Values in and out as hex digits.
    #[arg(long, global = true, conflicts_with_all = ["base64", "raw"])]
    hex: bool,
    /// Values in and out as base64.
    #[arg(long, global = true, conflicts_with = "raw")]
    base64: bool,
    /// `get`: write the value's exact bytes to stdout (for files and pipes).
    #[arg(long, global = true)]
    raw: bool,
    /// Keys (and scan's START) are given escaped, as `scan` prints them: `\\`, `\t`, `\n`,
    /// `\r`, `\0`, `\xNN`.
    #[arg(long, global = true)]
    escaped: bool,
}

impl EncArgs {
    fn encoding(self) -> Encoding {
        if self.hex {
            Encoding::Hex
        } else if self.base64 {
            Encoding::Base64
        } else if self.raw {
            Encoding::Raw
        } else {
            Encoding::Text
        }
    }
}

#[derive(Subcommand, Debug)]
enum KvOp {
    /// The value under KEY (exit code 3 if there is none).
    Get {
        /// The key (its bytes as given).
        key: OsString,
    },
    /// Store a value under KEY: VALUE, `-` for standard input, or `--file PATH`.
    Put {
        /// The key.
        key: OsString,
        /// The value (`-`: read standard input to its end). With `--hex`/`--base64`, in that
        /// encoding.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<OsString>,
        /// Read the value from this file (its exact bytes).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Remove KEY (exit code 3 if there was none).
    Del {
        /// The key.
        key: OsString,
    },
    /// Add DELTA (default 1) to the counter under KEY (absent counts as 0); prints the new value.
    Incr {
        /// The key.
        key: OsString,
        /// What to add (may be negative).
        #[arg(allow_hyphen_values = true, default_value_t = 1)]
        delta: i64,
    },
    /// Entries from START on, in key order: one `KEY<TAB>VALUE` line each, escaped.
    Scan {
        /// First key (default: the smallest).
        start: Option<OsString>,
        /// Most entries to list.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=kv_api::MAX_SCAN as i64))]
        limit: u32,
    },
}

/// Runs a kv command against `system`'s server `service`.
pub fn run(
    system: &str,
    service: &str,
    timeout: Option<Duration>,
    json: bool,
    args: KvArgs,
) -> Result<Report> {
    let enc = args.enc.encoding();
    let escaped = args.enc.escaped;
    let key_of = |k: &OsString| -> Result<Vec<u8>> {
        let b = k.as_bytes();
        if !escaped {
            return Ok(b.to_vec());
        }
        let s = std::str::from_utf8(b).map_err(|_| usage("an escaped key must be UTF-8"))?;
        values::unescape(s).map_err(|e| usage(format!("key `{s}`: {e}")))
    };
    let key = match &args.op {
        KvOp::Get { key } | KvOp::Put { key, .. } | KvOp::Del { key } | KvOp::Incr { key, .. } => {
            key_of(key)?
        }
        KvOp::Scan { start, .. } => start.as_ref().map(&key_of).transpose()?.unwrap_or_default(),
    };
    if key.len() > kv_api::MAX_KEY {
        return Err(usage(format!(
            "the key has {} bytes; kv takes at most {}",
            key.len(),
            kv_api::MAX_KEY
        )));
    }
    // Check the input before connecting: a bad argument is a usage error whatever runs.
    let put_value = match &args.op {
        KvOp::Put { value, file, .. } => Some(read_value(value.as_ref(), file.as_ref(), enc)?),
        _ => None,
    };
    let sys = System::connect(system)?;
    let mut ch = sys
        .open(service)
        .with_context(|| format!("opening a channel to `{service}`"))?;
    ch.set_timeout(Some(timeout.unwrap_or(Duration::from_secs(30))));
    let client = KvClient::new(ch);
    let show = |b: &[u8]| String::from_utf8_lossy(&values::show_value(b, enc)).into_owned();
    match args.op {
        KvOp::Get { .. } => match client.get(key.clone())? {
            Some(v) if enc == Encoding::Raw && !json => {
                let mut o = std::io::stdout().lock();
                o.write_all(&v).context("writing the value")?;
                o.flush()?;
                Ok(Report::new(json!({}), ""))
            }
            Some(v) => {
                let mut j = value_json(&key, &v);
                j["ok"] = json!(true);
                Ok(Report::new(j, show(&v)))
            }
            None => Err(not_found(
                format!("no value under key `{}`", values::escape(&key)),
                json!({"key": bytes_json(&key), "value": null}),
            )),
        },
        KvOp::Put { .. } => {
            let value = put_value.expect("read above");
            let prev = client.put(key.clone(), value.clone())?;
            Ok(Report::new(
                json!({
                    "ok": true, "key": bytes_json(&key), "value": bytes_json(&value),
                    "previous": prev.as_ref().map(|p| bytes_json(p)),
                }),
                "OK",
            ))
        }
        KvOp::Del { .. } => match client.delete(key.clone())? {
            Some(prev) => Ok(Report::new(
                json!({"ok": true, "key": bytes_json(&key), "previous": bytes_json(&prev)}),
                "deleted",
            )),
            None => Err(not_found(
                format!("no value under key `{}`", values::escape(&key)),
                json!({"key": bytes_json(&key), "previous": null}),
            )),
        },
        KvOp::Incr { delta, .. } => {
            let v = client.incr(key.clone(), delta)?;
            Ok(Report::new(
                json!({"ok": true, "key": bytes_json(&key), "value": v}),
                v.to_string(),
            ))
        }
        KvOp::Scan { limit, .. } => {
            let entries = client.scan(key, limit)?;
            let mut text = String::new();
            for (k, v) in &entries {
                text.push_str(&values::escape(k));
                text.push('\t');
                text.push_str(&values::show_in_line(v, enc));
                text.push('\n');
            }
            let list: Vec<Value> = entries.iter().map(|(k, v)| value_json(k, v)).collect();
            Ok(Report::new(
                json!({"ok": true, "entries": list, "more": entries.len() == limit as usize}),
                text,
            ))
        }
    }
}

/// `{"key": ..., "value": ..., "counter"?: n}`.
fn value_json(key: &[u8], v: &[u8]) -> Value {
    let mut j = json!({"key": bytes_json(key), "value": bytes_json(v)});
    if let Some(n) = values::as_counter(v) {
        j["counter"] = json!(n);
    }
    j
}

/// The value of `put`: the argument, standard input (`-`) or a file, decoded from hex/base64.
fn read_value(value: Option<&OsString>, file: Option<&PathBuf>, enc: Encoding) -> Result<Vec<u8>> {
    let raw = match (value, file) {
        (_, Some(path)) => std::fs::read(path)
            .map_err(|e| usage(format!("reading the value from {}: {e}", path.display())))?,
        (Some(v), None) if v == "-" => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .context("reading the value from standard input")?;
            b
        }
        (Some(v), None) => v.as_bytes().to_vec(),
        (None, None) => {
            return Err(usage(
                "give a VALUE, `-` for standard input, or --file PATH",
            ));
        }
    };
    let v = values::decode_input(&raw, enc).map_err(|e| usage(format!("the value is {e}")))?;
    if v.len() > kv_api::MAX_VALUE {
        return Err(usage(format!(
            "the value has {} bytes; kv takes at most {}",
            v.len(),
            kv_api::MAX_VALUE
        )));
    }
    Ok(v)
}
