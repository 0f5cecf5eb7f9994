//! The `txipc` command as operators use it, driven through the built binary: global flags in
//! every position, `--json` as exactly one object on stdout (success and error), exit codes,
//! binary kv values, operator controls, manifests, completions and the man page.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs `txipc ARGS...` (with `stdin` as its input) and returns its output.
fn txipc_in(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(exe())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting txipc");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("running txipc")
}

fn txipc(args: &[&str]) -> Output {
    txipc_in(args, b"")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

/// Parses stdout as exactly one JSON object on one line.
fn one_object(args: &[&str], o: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "txipc {args:?}: stdout must be one JSON line, got {stdout:?}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("txipc {args:?}: not JSON ({e}): {stdout}"));
    assert!(v.is_object(), "txipc {args:?}: not an object: {v}");
    v
}

/// Runs with `--json` already among `args`, expects exit `want` and one object.
fn json_run(args: &[&str], want: i32) -> Value {
    let o = txipc(args);
    let v = one_object(args, &o);
    assert_eq!(code(&o), want, "txipc {args:?}: exit code; {v}");
    if want == 0 {
        assert_ne!(v["ok"], false, "txipc {args:?}: {v}");
    } else {
        assert_eq!(v["ok"], false, "txipc {args:?}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert!(v["kind"].is_string(), "{v}");
    }
    v
}

fn kv_system(tag: &str) -> txipc_runtime::client::SystemProcess {
    boot(tag, &(server("kv", "kv", "txipc", "") + &grant("*", "kv")))
}

/// `--system`, `--json`, `--service`, `--timeout` (and `--quiet`) are accepted before the
/// command, between the command and its operation, and after the operation's arguments.
#[test]
fn global_flags_in_every_position() {
    let sys = kv_system("flags");
    let name = sys.name().to_string();
    let flags: [&[&str]; 5] = [
        &["--system", &name],
        &["--json"],
        &["--service", "kv"],
        &["--timeout", "20s"],
        &["-q"],
    ];
    // Each command split into its words; a flag set may be inserted at any boundary.
    let commands: [&[&str]; 8] = [
        &["kv", "put", "a", "1"],
        &["kv", "get", "a"],
        &["kv", "scan"],
        &["kv", "incr", "n"],
        &["ps"],
        &["top", "--iterations=1"],
        &["logs", "--lines=2"],
        &["restart", "kv"],
    ];
    for cmd in commands {
        for pos in 0..=cmd.len() {
            // All flags at one position...
            let mut args: Vec<&str> = cmd[..pos].to_vec();
            for f in flags {
                args.extend_from_slice(f);
            }
            args.extend_from_slice(&cmd[pos..]);
            json_run(&args, 0);
            // ... and `--system` alone there, with `--json` at the far end.
            let mut args: Vec<&str> = cmd[..pos].to_vec();
            args.extend_from_slice(&["--system", &name]);
            args.extend_from_slice(&cmd[pos..]);
            args.push("--json");
            let v = json_run(&args, 0);
            if cmd == ["kv", "get", "a"] {
                assert_eq!(v["value"], "1", "{args:?}: {v}");
            }
        }
    }
    // `--service` really chooses the server; `--timeout` is validated.
    let v = json_run(
        &[
            "kv",
            "get",
            "a",
            "--service",
            "nope",
            "--system",
            &name,
            "--json",
        ],
        3,
    );
    assert_eq!(v["kind"], "unknown_server", "{v}");
    let v = json_run(&["--timeout", "soon", "ps", "--json"], 2);
    assert_eq!(v["kind"], "usage", "{v}");
    drop(sys);
}

/// Errors are one JSON object too, with the documented exit codes: 2 usage, 3 not found,
/// 1 other failures; and without `--json`, nothing but the text goes to stdout.
#[test]
fn json_errors_and_exit_codes() {
    let sys = kv_system("codes");
    let name = sys.name().to_string();
    let s = name.as_str();
    let v = json_run(&["kv", "get", "missing", "--system", s, "--json"], 3);
    assert_eq!(v["kind"], "not_found");
    assert_eq!(v["value"], Value::Null);
    let v = json_run(&["kv", "del", "missing", "--system", s, "--json"], 3);
    assert_eq!(v["kind"], "not_found");
    let v = json_run(&["ps", "--system", "t-no-such-system", "--json"], 3);
    assert_eq!(v["kind"], "not_running");
    let v = json_run(&["kv", "get", "--system", s, "--json"], 2);
    assert_eq!(v["kind"], "usage");
    let v = json_run(&["--json", "no-such-command"], 2);
    assert_eq!(v["kind"], "usage");
    let v = json_run(
        &["kill", "kv", "--signal", "NOPE", "--system", s, "--json"],
        2,
    );
    assert_eq!(v["kind"], "usage");
    json_run(&["kv", "put", "t", "text", "--system", s, "--json"], 0);
    let v = json_run(&["kv", "incr", "t", "--system", s, "--json"], 1);
    assert_eq!(v["kind"], "error");
    assert!(
        v["error"].as_str().unwrap().contains("not a counter"),
        "{v}"
    );
    let v = json_run(&["bench", "recovery", "--fault", "kill", "--json"], 2);
    assert!(
        v["error"].as_str().unwrap().contains("sigkill"),
        "one vocabulary: {v}"
    );
    // Text mode: a missing key prints nothing on stdout, says so on stderr, exits 3.
    let o = txipc(&["kv", "get", "missing", "--system", s]);
    assert_eq!(code(&o), 3);
    assert!(o.stdout.is_empty(), "{:?}", o.stdout);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no value under key `missing`"));
    // Usage errors without --json are clap's (exit 2, message on stderr).
    let o = txipc(&["kv", "--system", s, "frobnicate"]);
    assert_eq!(code(&o), 2);
    // Help is not an error.
    let o = txipc(&["kv", "--help"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("--hex"));
    drop(sys);
}

/// Every byte value survives put/get/scan, given as an argument, in hex, in base64, on
/// standard input or in a file; counters print as numbers; scan lines stay one per entry.
#[test]
fn binary_values_round_trip() {
    let sys = kv_system("bytes");
    let name = sys.name().to_string();
    let s = name.as_str();
    let all: Vec<u8> = (0..=255u8).collect();
    let hex: String = all.iter().map(|b| format!("{b:02x}")).collect();
    // Standard input, exact bytes back with --raw.
    let o = txipc_in(&["kv", "put", "bin", "-", "--system", s], &all);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let o = txipc(&["kv", "get", "bin", "--raw", "--system", s]);
    assert_eq!(o.stdout, all);
    // Hex out and in.
    let o = txipc(&["kv", "--hex", "get", "bin", "--system", s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), hex);
    txipc(&["kv", "put", "bin2", &hex, "--hex", "--system", s]);
    let o = txipc(&["kv", "get", "bin2", "--raw", "--system", s]);
    assert_eq!(o.stdout, all);
    // Base64 out and in; JSON shows non-UTF-8 as base64.
    let v = json_run(&["kv", "get", "bin", "--system", s, "--json"], 0);
    let b64 = v["value"]["base64"]
        .as_str()
        .expect("base64 in JSON")
        .to_owned();
    let o = txipc(&["kv", "get", "bin", "--base64", "--system", s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), b64);
    txipc(&["kv", "put", "bin3", "--base64", &b64, "--system", s]);
    let o = txipc(&["kv", "get", "bin3", "--raw", "--system", s]);
    assert_eq!(o.stdout, all);
    // A file.
    let dir = std::env::temp_dir().join(format!("txipc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("value.bin");
    std::fs::write(&file, &all[..100]).unwrap();
    let o = txipc(&[
        "kv",
        "put",
        "f",
        "--file",
        file.to_str().unwrap(),
        "--system",
        s,
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let o = txipc(&["kv", "get", "f", "--raw", "--system", s]);
    assert_eq!(o.stdout, &all[..100]);
    // Text mode escapes what is not printable; counters are numbers.
    let o = txipc(&["kv", "get", "bin", "--system", s]);
    let text = String::from_utf8(o.stdout).expect("escaped output is UTF-8");
    assert!(text.starts_with("\\x00\\x01"), "{text}");
    txipc(&["kv", "incr", "hits", "41", "--system", s]);
    let o = txipc(&["kv", "incr", "hits", "--system", s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
    let o = txipc(&["kv", "get", "hits", "--system", s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
    let v = json_run(&["kv", "get", "hits", "--system", s, "--json"], 0);
    assert_eq!(v["counter"], 42);
    // Keys and values with tabs and newlines: one scan line per entry, escapes reversible.
    txipc_in(&["kv", "put", "k\tey\n2", "-", "--system", s], b"v\ta\nl");
    let o = txipc(&["kv", "scan", "--limit", "100", "--system", s]);
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines.contains(&"k\\tey\\n2\tv\\ta\\nl"), "{text}");
    assert!(lines.contains(&"hits\t42"), "{text}");
    // An escaped key as scan prints it reaches the same entry.
    let o = txipc(&[
        "kv",
        "get",
        "--escaped",
        "k\\tey\\n2",
        "--raw",
        "--system",
        s,
    ]);
    assert_eq!(o.stdout, b"v\ta\nl");
    let v = json_run(&["kv", "scan", "--system", s, "--json"], 0);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 6, "{v}");
    assert!(
        entries
            .iter()
            .any(|e| e["key"] == "k\tey\n2" && e["value"] == "v\ta\nl")
    );
    // Bad encodings are usage errors, before anything is stored.
    let v = json_run(
        &["kv", "put", "x", "--hex", "abc", "--system", s, "--json"],
        2,
    );
    assert!(v["error"].as_str().unwrap().contains("hex"), "{v}");
    json_run(&["kv", "get", "x", "--system", s, "--json"], 3);
    drop(sys);
}

/// A verbose system started by `txipc run` in the background, as the README tour does: `ls`
/// lists it, `kill` faults its server (which recovers, state kept), `logs` shows the
/// recovery, `stop` ends it and `ls` no longer lists it.
#[test]
fn operator_controls() {
    let name = unique("ops");
    let log = RemoveLog(name.clone());
    let manifest = server("kv", "kv", "txipc", "") + &grant("*", "kv");
    let mut child = Command::new(exe())
        .args(["run", "-", "--system", &name, "--die-with-parent"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let guard = Reap(child);
    let mut first = [0u8; 5];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("ready line");
    assert_eq!(&first, b"ready");
    let s = name.as_str();
    let v = json_run(&["ls", "--json"], 0);
    let listed = v["systems"].as_array().unwrap();
    let me = listed
        .iter()
        .find(|x| x["name"] == s)
        .unwrap_or_else(|| panic!("{s} not listed: {v}"));
    assert_eq!(me["kernel_pid"], guard.0.id());
    let v = json_run(&["ps", "--system", s, "--json"], 0);
    assert_eq!(v["kernel"]["pid"], guard.0.id());
    let pid = v["servers"][0]["pid"].as_i64().unwrap();
    json_run(&["kv", "put", "a", "1", "--system", s, "--json"], 0);
    let v = json_run(
        &["kill", "kv", "--signal", "KILL", "--system", s, "--json"],
        0,
    );
    assert_eq!(v["pid"], pid);
    assert_eq!(v["signal"], "SIGKILL");
    wait_until("kv recovered", Duration::from_secs(20), || {
        let v = json_run(&["ps", "--system", s, "--json"], 0);
        v["servers"][0]["generation"] == 2 && v["servers"][0]["state"] == "running"
    });
    let o = txipc(&["kv", "get", "a", "--system", s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
    wait_until("recovery logged", Duration::from_secs(10), || {
        let v = json_run(&["logs", "--system", s, "--json"], 0);
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("generation 2 serving"))
    });
    let v = json_run(&["stop", "--system", s, "--json", "--timeout", "20s"], 0);
    assert_eq!(v["kernel_pid"], guard.0.id());
    let v = json_run(&["ls", "--json"], 0);
    assert!(
        !v["systems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == s),
        "{v}"
    );
    json_run(&["stop", "--system", s, "--json"], 3);
    let mut guard = guard;
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "{status}");
    // The log outlives the system: post-mortem `logs`, listed by `ls`.
    let v = json_run(&["logs", "--system", s, "--json", "-n", "1000"], 0);
    assert_eq!(v["running"], false, "{v}");
    let lines: Vec<&str> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("generation 2 serving")),
        "{v}"
    );
    assert!(lines.last().unwrap().contains("stopped"), "{v}");
    let o = txipc(&["logs", "--follow", "--system", s]);
    assert_eq!(
        code(&o),
        0,
        "a stopped system's log is printed, not followed"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("stopped"));
    let v = json_run(&["ls", "--json"], 0);
    assert!(
        v["stopped_with_log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == s),
        "{v}"
    );
    drop(log);
    json_run(&["logs", "--system", s, "--json"], 3);
}

/// Removes a system's log when dropped (the log outlives the system; tests leave no files).
struct RemoveLog(String);

impl Drop for RemoveLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(txipc_core::paths::log_path(&self.0));
    }
}

/// The demo checks its arguments before it prints or starts anything.
#[test]
fn demo_refuses_bad_arguments_first() {
    for bad in [
        &["--seconds", "0"][..],
        &["--clients", "0"],
        &["--policy", "bogus"],
        &["--fault", "kill"],
        &["--fault", "bitflip-reg"],
    ] {
        let mut args = vec!["demo"];
        args.extend_from_slice(bad);
        let o = txipc(&args);
        assert_eq!(code(&o), 2, "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("txipc demo:"),
            "{args:?} printed its banner: {err}"
        );
        args.push("--json");
        let v = json_run(&args, 2);
        assert_eq!(v["kind"], "usage");
    }
}

/// A server that stays dead (policy `none`) still gets a report: one JSON object with
/// `state_verified: false`, and a non-zero exit.
#[test]
fn demo_reports_a_server_that_stays_dead() {
    let args = [
        "demo",
        "--policy",
        "none",
        "--seconds",
        "2",
        "--clients",
        "1",
        "--fault",
        "sigkill",
        "--fault-interval-ms",
        "300",
        "--json",
        "--quiet",
    ];
    let v = json_run(&args, 1);
    let _log = RemoveLog(v["system"].as_str().unwrap().to_string());
    assert_eq!(v["state_verified"], false, "{v}");
    assert_eq!(v["state_readable"], false, "{v}");
    assert_eq!(v["kind"], "state_differs", "{v}");
    assert!(v["faults_injected"].as_u64().unwrap() >= 1, "{v}");
    // The demo's system log stays for after the run: the kill and the server left dead.
    let logs = json_run(
        &[
            "logs",
            "-n",
            "1000",
            "--json",
            "--system",
            v["system"].as_str().unwrap(),
        ],
        0,
    );
    let text = logs["lines"].to_string();
    assert!(
        text.contains("killed by SIGKILL") && text.contains("stopped"),
        "{logs}"
    );
    // Without --json the verdict is on stdout; progress lines (not a terminal) on stderr.
    let o = txipc(&args[..args.len() - 2]);
    let out = String::from_utf8_lossy(&o.stdout);
    let system = out
        .split("txipc logs --system ")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .unwrap_or_else(|| panic!("no log named: {out}"));
    let _log2 = RemoveLog(system.to_string());
    assert_eq!(code(&o), 1);
    assert!(out.contains("state NOT verified"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("[ ")).collect();
    assert!(!progress.is_empty(), "{err}");
    assert!(
        progress
            .iter()
            .all(|l| l.contains(" ops/s ") && l.contains(" kv ") && l.contains(" p99 ")),
        "{err}"
    );
}

/// Manifests: the shipped examples are valid, `manifest default` is what `run` boots, and a
/// wrong manifest is refused with the cause.
#[test]
fn manifests_check_and_default() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    let mut n = 0;
    for e in std::fs::read_dir(&root).expect("manifests/ folder") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            json_run(&["manifest", "check", p.to_str().unwrap(), "--json"], 0);
            n += 1;
        }
    }
    assert!(n >= 2, "expected example manifests in {}", root.display());
    let shipped = std::fs::read_to_string(root.join("default.toml")).unwrap();
    assert_eq!(
        txipc_core::manifest::Manifest::parse(&shipped).unwrap(),
        txipc_core::manifest::Manifest::default_system(),
        "manifests/default.toml must describe the built-in default"
    );
    let o = txipc(&["manifest", "default"]);
    let o = txipc_in(&["manifest", "check", "-"], &o.stdout);
    assert_eq!(code(&o), 0);
    let o = txipc_in(&["manifest", "check", "-", "--json"], b"name = \"x\"\n");
    let v = one_object(&["manifest", "check"], &o);
    assert_eq!(code(&o), 1);
    assert_eq!(v["kind"], "manifest");
    assert!(v["error"].as_str().unwrap().contains("no servers"), "{v}");
    json_run(&["manifest", "check", "/nonexistent/m.toml", "--json"], 3);
}

/// Completions and the man page come from the command's own definition.
#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let o = txipc(&["completions", shell]);
        assert_eq!(code(&o), 0, "{shell}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("txipc") && text.contains("kv"),
            "{shell}: {text}"
        );
    }
    let o = txipc(&["man"]);
    assert_eq!(code(&o), 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(".TH") && text.contains("txipc"), "{text}");
}

/// `restart` and `release` through the binary: a server held after a restart storm says why
/// in `ps`, `release` brings it back on its recovered state, `restart` recovers a running one
/// (state kept under txipc), and both refuse what does not apply.
#[test]
fn restart_and_release_a_held_server() {
    let sys = boot(
        "held",
        &(server(
            "kv",
            "kv",
            "txipc",
            "[server.restart]\nmax_restarts = 1\nwindow_ms = 600000",
        ) + &grant("*", "kv")),
    );
    let name = sys.name().to_string();
    let s = name.as_str();
    let ps = |s: &str| json_run(&["ps", "--system", s, "--json"], 0)["servers"][0].clone();
    json_run(&["kv", "put", "a", "1", "--system", s, "--json"], 0);
    let v = json_run(&["release", "kv", "--system", s, "--json"], 1);
    assert_eq!(v["kind"], "wrong_state", "{v}");
    json_run(&["kill", "kv", "--system", s, "--json"], 0);
    wait_until("generation 2", Duration::from_secs(20), || {
        let k = ps(s);
        k["generation"] == 2 && k["state"] == "running"
    });
    json_run(
        &[
            "--system",
            s,
            "kill",
            "--service",
            "kv",
            "-s",
            "SEGV",
            "--json",
        ],
        0,
    );
    wait_until("held", Duration::from_secs(20), || ps(s)["state"] == "held");
    let k = ps(s);
    let reason = k["held_reason"].as_str().expect("held reason").to_owned();
    assert!(reason.contains("restart storm"), "{k}");
    assert!(
        k["last_fault"]["cause"]
            .as_str()
            .unwrap()
            .contains("SIGSEGV"),
        "{k}"
    );
    let o = txipc(&["ps", "--system", s]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("held because restart storm"), "{text}");
    assert!(
        text.contains(&format!("txipc --system {s} release kv")),
        "{text}"
    );
    let v = json_run(&["kv", "get", "a", "--system", s, "--json"], 1);
    assert!(v["error"].as_str().unwrap().contains("held"), "{v}");
    json_run(&["restart", "--system", s, "--json"], 2);
    let v = json_run(&["release", "kv", "--system", s, "--json"], 0);
    assert_eq!(v["was"], "held", "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert_eq!(v["fresh"], false, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let o = txipc(&["kv", "get", "a", "--system", s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1", "state kept");
    let before = ps(s)["generation"].as_u64().unwrap();
    let v = json_run(&["restart", "kv", "--system", s, "--json"], 0);
    assert_eq!(v["was"], "running", "{v}");
    assert!(v["generation"].as_u64().unwrap() > before, "{v}");
    let o = txipc(&["kv", "get", "a", "--system", s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1", "state kept");
    assert!(
        ps(s)["last_fault"]["cause"]
            .as_str()
            .unwrap()
            .contains("operator"),
    );
    json_run(&["restart", "nope", "--system", s, "--json"], 3);
    drop(sys);
}

/// `top` off a terminal: plain lines per server per refresh, bounded by `--iterations`; one
/// object with `--json`; and it ends by itself when the system stops.
#[test]
fn top_plain_lines_json_and_end() {
    let sys = kv_system("top");
    let name = sys.name().to_string();
    let s = name.as_str();
    json_run(&["kv", "incr", "n", "--system", s, "--json"], 0);
    let o = txipc(&["top", "-n", "2", "--interval", "100ms", "--system", s]);
    assert_eq!(code(&o), 0);
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines.iter().all(|l| l.contains(" kv running gen 1 ")),
        "{text}"
    );
    assert!(lines.iter().all(|l| l.contains(" p99 ")), "{text}");
    // Calls during the interval: calls/s and the interval's p99 (from the difference of the
    // server's latency histograms).
    // The caller is calling before the interval starts (a loaded machine may take long to
    // connect), and the interval is long enough for many sampled calls (one in 64 is timed).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let made = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let caller = {
        let (conn, stop, made) = (sys.connect().unwrap(), stop.clone(), made.clone());
        std::thread::spawn(move || {
            let kv = kv_api::KvClient::new(open(&conn, "kv"));
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 10_000_000 {
                kv.incr(b"busy", 1).unwrap();
                n += 1;
                made.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    wait_until("the caller to be calling", Duration::from_secs(20), || {
        made.load(std::sync::atomic::Ordering::Relaxed) >= 500
    });
    let v = json_run(&["top", "--json", "-i", "1s", "--system", s], 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    caller.join().unwrap();
    let kv = &v["servers"][0];
    assert_eq!(kv["name"], "kv", "{v}");
    assert!(kv["calls_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(kv["interval_timed_calls"].as_u64().unwrap() >= 1, "{v}");
    assert!(kv["interval_p99_us"].as_f64().unwrap() > 0.0, "{v}");
    json_run(&["top", "--json", "--service", "nope", "--system", s], 3);
    // Unbounded, it stops with the system.
    let top = Command::new(exe())
        .args(["top", "-i", "100ms", "--system", s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut top = Reap(top);
    std::thread::sleep(Duration::from_millis(300));
    drop(sys);
    wait_until("top to end", Duration::from_secs(10), || {
        top.0.try_wait().unwrap().is_some()
    });
    assert!(top.0.wait().unwrap().success());
}

/// `run --detach` returns once the system serves (the README tour starts this way), refuses a
/// second system of the same name (without touching its log), reports a bad manifest in the
/// foreground, and `stop` ends the detached system; its log stays for `logs`.
#[test]
fn run_detach_then_stop() {
    let name = unique("detach");
    let _log = RemoveLog(name.clone());
    let s = name.as_str();
    let manifest = server("kv", "kv", "txipc", "") + &grant("*", "kv");
    let o = txipc_in(
        &["run", "--detach", "-", "--system", s, "--json"],
        manifest.as_bytes(),
    );
    let v = one_object(&["run", "--detach"], &o);
    assert_eq!(code(&o), 0, "{v}");
    /// Kills the detached kernel (its servers die with it) if the test fails before `stop`.
    struct Kernel(i32);
    impl Drop for Kernel {
        fn drop(&mut self) {
            let _ = txipc_sys::process::kill(self.0, rustix::process::Signal::KILL);
        }
    }
    let kernel = Kernel(v["kernel_pid"].as_i64().unwrap() as i32);
    json_run(&["kv", "put", "a", "1", "--system", s, "--json"], 0);
    let o = txipc_in(
        &["run", "-d", "-", "--system", s, "--json"],
        manifest.as_bytes(),
    );
    let v = one_object(&["run", "-d"], &o);
    assert_eq!(code(&o), 1, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("already running"),
        "{v}"
    );
    let v = json_run(&["logs", "--system", s, "--json"], 0);
    assert!(!v["lines"].as_array().unwrap().is_empty(), "{v}");
    let o = txipc_in(
        &["run", "-d", "-", "--system", "t-bad", "--json"],
        b"name = \"x\"\n",
    );
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no servers"));
    json_run(&["stop", "--system", s, "--json"], 0);
    assert!(txipc_sys::process::state(kernel.0).is_none_or(|c| c == 'Z'));
    json_run(&["ps", "--system", s, "--json"], 3);
    // A detached system's log, after it stopped.
    let v = json_run(&["logs", "--system", s, "--json"], 0);
    let last = v["lines"].as_array().unwrap().last().unwrap().clone();
    assert!(last.as_str().unwrap().contains("stopped"), "{v}");
}

/// Every process of a server is named by server, system and role: `txipc kv@NAME g1` for the
/// incarnation, `... standby`, `... zygote` (command line), and `kv@NAME ...` as the command
/// name (cut to 15 bytes) that `top` shows.
#[test]
fn process_names_say_what_runs() {
    let sys = kv_system("names");
    let name = sys.name().to_string();
    let conn = sys.connect().unwrap();
    let who = format!("kv@{name}");
    let cmdline = |pid: i32| {
        let b = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let s = String::from_utf8_lossy(&b).replace('\0', " ");
        s.trim().to_string()
    };
    let comm = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    // A fresh fork carries its zygote's name until it names itself, a moment later.
    wait_until("named processes", Duration::from_secs(10), || {
        let s = conn.ps().unwrap().remove(0);
        s.standby_pid > 0
            && cmdline(s.standby_pid) == format!("txipc {who} standby")
            && cmdline(s.pid) == format!("txipc {who} g1")
    });
    let s = conn.ps().unwrap().remove(0);
    assert_eq!(cmdline(s.pid), format!("txipc {who} g1"));
    assert_eq!(cmdline(s.zygote_pid), format!("txipc {who} zygote"));
    let short: String = who.chars().take(15).collect();
    assert!(
        comm(s.pid).starts_with(&short[..short.len().min(12)]),
        "{}",
        comm(s.pid)
    );
    assert_eq!(
        comm(s.zygote_pid),
        format!("{who} zyg").chars().take(15).collect::<String>()
    );
    drop(conn);
    drop(sys);
}

/// The README's tour, as written, in a fresh shell (`bash -e`, its own runtime directory): every
/// line runs without error, and the kill is recovered with the state kept. The install lines are
/// replaced by this build's binary on PATH.
#[test]
fn the_readme_tour_runs() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
    )
    .unwrap();
    let tour = &readme[readme.find("## A short tour").expect("the tour section")..];
    let start = tour.find("```sh\n").expect("a sh block") + 6;
    let block = &tour[start..start + tour[start..].find("```").unwrap()];
    let bin_dir = exe().parent().unwrap().to_str().unwrap().to_owned();
    let mut script = format!("set -euo pipefail\nexport PATH={bin_dir}:$PATH\n");
    for line in block.lines() {
        if line.starts_with("cargo build") || line.starts_with("export PATH") {
            continue;
        }
        script.push_str(line);
        script.push('\n');
    }
    assert!(script.contains("txipc stop"), "the tour stops its system");
    let dir = std::env::temp_dir().join(format!("txipc-tour-{}", std::process::id()));
    /// Stops the tour's system if the script failed before its `txipc stop`, then removes the
    /// runtime directory.
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new(exe())
                .args(["stop", "--timeout", "10s"])
                .env("TXIPC_RUNTIME_DIR", &self.0)
                .output();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let o = Command::new("bash")
        .args(["-c", &script])
        .env("TXIPC_RUNTIME_DIR", &dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "the tour failed: {}\n--- script\n{script}--- stdout\n{out}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("killed by SIGKILL"), "{out}");
    assert!(out.contains("stopped"), "{out}");
    assert!(out.contains(" P99 "), "ps shows latency: {out}");
    assert!(
        out.contains("system `default` stopped at"),
        "the log read after the stop: {out}"
    );
}

/// The runtime times a sample of the calls into its status page; `ps` reports p50/p99 from
/// them and counts faults.
#[test]
fn ps_reports_call_latency_and_faults() {
    let sys = kv_system("lat");
    let name = sys.name().to_string();
    let s = name.as_str();
    let conn = sys.connect().unwrap();
    let kv = kv_api::KvClient::new(open(&conn, "kv"));
    for i in 0..2000u32 {
        kv.put(format!("k{i}").into_bytes(), b"v").unwrap();
    }
    let v = json_run(&["ps", "--json", "--system", s, "--service", "kv"], 0);
    let kvs = &v["servers"][0];
    let lat = &kvs["latency"];
    // One batch in 64 is timed; a single client's calls are one per batch.
    let timed = lat["timed_calls"].as_u64().unwrap_or(0);
    assert!((30..=2000).contains(&timed), "{v}");
    let (p50, p99, max) = (
        lat["p50_us"].as_f64().unwrap(),
        lat["p99_us"].as_f64().unwrap(),
        lat["max_us"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{v}");
    assert_eq!(kvs["faults"], 0, "{v}");
    let o = txipc(&["ps", "--system", s]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("P99"), "{text}");
    json_run(&["kill", "kv", "--system", s, "--json"], 0);
    wait_until("kv to recover", Duration::from_secs(10), || {
        let v = json_run(&["ps", "--json", "--system", s, "--service", "kv"], 0);
        v["servers"][0]["state"] == "running" && v["servers"][0]["generation"] == 2
    });
    let v = json_run(&["ps", "--json", "--system", s, "--service", "kv"], 0);
    assert_eq!(v["servers"][0]["faults"], 1, "{v}");
    // The histogram outlives the incarnation that wrote it.
    assert!(
        v["servers"][0]["latency"]["timed_calls"].as_u64() >= Some(timed),
        "{v}"
    );
}

/// `txipc mount --json`: stdout carries exactly one object, at the end (`ready DIR` goes to
/// stderr then), and one object for an error.
#[test]
fn mount_with_json_prints_one_object() {
    let sys = boot("mountjson", &common::fsmount::fs_manifest("txipc"));
    let name = sys.name().to_string();
    let dir = std::env::temp_dir().join(unique("mountjson"));
    std::fs::create_dir(&dir).unwrap();
    struct Guard(std::path::PathBuf, Option<std::process::Child>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(mut c) = self.1.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if fs_fuse::is_fuse_mount(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let mut g = Guard(dir.clone(), None);
    let child = Command::new(exe())
        .args(["mount", "--json", "--system", &name])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    g.1 = Some(child);
    wait_until("the mount", Duration::from_secs(20), || {
        fs_fuse::is_fuse_mount(&dir)
    });
    std::fs::write(dir.join("f"), b"x").unwrap();
    txipc_sys::process::kill(pid, rustix::process::Signal::TERM).unwrap();
    let o = g.1.take().unwrap().wait_with_output().unwrap();
    let args = ["mount", "--json"];
    let v = one_object(&args, &o);
    assert_eq!(code(&o), 0, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["ended"], "signal", "{v}");
    assert_eq!(v["respawns"], 0, "{v}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("ready "));
    assert!(!fs_fuse::is_fuse_mount(&dir));
    // An error is one object too.
    let missing = dir.join("no-such-dir");
    let v = json_run(
        &[
            "mount",
            missing.to_str().unwrap(),
            "--json",
            "--system",
            &name,
        ],
        3,
    );
    assert!(v["error"].as_str().unwrap().contains("no-such-dir"), "{v}");
    drop(g);
    drop(sys);
}

/// Every command, under `--json`, prints exactly one JSON object on stdout, for success and for
/// an error: the ones the other tests do not cover (bench, inject, bank, top's non-terminal
/// mode, logs, ls, manifest, completions, man), each also with the global flags before the
/// command.
#[test]
fn json_is_one_object_for_every_command() {
    let sys = kv_system("every");
    let name = sys.name().to_string();
    let s = name.as_str();
    let o = txipc(&["bank", "manifest", "--name", "placeholder", "--json"]);
    let bank_manifest = one_object(&["bank", "manifest"], &o)["manifest"]
        .as_str()
        .unwrap_or_else(|| panic!("bank manifest --json: {o:?}"))
        .to_string();
    let bank = boot("everybank", &bank_manifest);
    let b = bank.name().to_string();
    let plots = std::env::temp_dir().join(unique("plots"));
    /// Removes a directory or a file.
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(plots.clone());
    let report = std::env::temp_dir()
        .join(unique("inject"))
        .with_extension("json");
    let _rm2 = Rm(report.clone());
    let results = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/results");
    let kv_all = format!("{results}/kv_all.txt");
    let rec16 = format!("{results}/recovery_16_after_reorder.txt");
    let good: Vec<Vec<&str>> = vec![
        vec!["bench", "ipc", "--iterations", "200", "--batches", "1"],
        vec!["bench", "tx"],
        vec![
            "bench",
            "plot",
            &kv_all,
            &rec16,
            "--out-dir",
            plots.to_str().unwrap(),
        ],
        vec![
            "inject",
            "--fault",
            "sigkill",
            "--runs",
            "2",
            "--policy",
            "txipc",
            "--quiet",
            "--out",
            report.to_str().unwrap(),
        ],
        vec!["bank", "open", "alice", "100", "--system", &b],
        vec!["bank", "open", "bob", "0", "--system", &b],
        vec!["bank", "transfer", "alice", "bob", "30", "--system", &b],
        vec!["bank", "balance", "bob", "--system", &b],
        vec!["bank", "total", "--system", &b],
        vec!["bank", "ledger", "alice", "--system", &b],
        vec!["bank", "accounts", "--system", &b],
        vec!["top", "-n", "1", "-i", "50ms", "--system", s],
        vec!["logs", "-n", "3", "--system", s],
        vec!["ls"],
        vec!["manifest", "default"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["restart", "kv", "--system", s],
    ];
    for args in &good {
        let mut a = args.clone();
        a.push("--json");
        json_run(&a, 0);
    }
    // The global flags before the command too.
    json_run(&["--json", "--system", &b, "bank", "total"], 0);
    json_run(
        &["--system", s, "--json", "top", "-n", "1", "-i", "50ms"],
        0,
    );
    let v = json_run(&["bank", "balance", "bob", "--system", &b, "--json"], 0);
    assert_eq!(v["balance"], 30, "{v}");
    // Errors: usage (2), not found (3), failures (1).
    let bad: Vec<(Vec<&str>, i32)> = vec![
        (vec!["bench", "ipc", "--iterations", "many"], 2),
        (vec!["bench", "kv", "--workload", "z", "--records", "10"], 2),
        (vec!["bench", "plot", "/nonexistent/report.txt"], 1),
        (vec!["inject", "--fault", "bogus", "--runs", "1"], 2),
        (vec!["bank", "total", "--system", "no-such-system"], 3),
        (vec!["bank", "balance", "nobody", "--system", &b], 3),
        (vec!["top", "--system", "no-such-system"], 3),
        (vec!["logs", "--system", "no-such-system"], 3),
        (vec!["manifest", "check", "/nonexistent.toml"], 3),
        (vec!["completions", "tcsh"], 2),
        (vec!["restart", "nope", "--system", s], 3),
    ];
    for (args, want) in &bad {
        let mut a = args.clone();
        a.push("--json");
        json_run(&a, *want);
    }
    assert!(report.exists(), "inject wrote its report");
    drop(_rm2);
    assert!(!report.exists());
    drop(bank);
    drop(sys);
}
