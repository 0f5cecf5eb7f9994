//! The documents' claims that can be checked are checked: every test ARCHITECTURE.md, the
//! README and MEASUREMENTS.md name exists.
//!
//! A name in backticks that reads like a test (`a_poison_request_is_failed_alone_on_replay`,
//! `companion_calls::a_readonly_request_may_only_make_readonly_calls`: snake case with at least
//! three underscores in its last segment) must be a `fn` in the repository's Rust sources, or a
//! field (`name:`), which is how the documents also quote struct fields such as `ps`'s
//! `last_recovery_at_ms`. With a path, its first segment names the file: `nested::x` must be in
//! a `nested.rs`. A test renamed or deleted while a document still names it fails here.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file below `dir`, skipping build output and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type().unwrap().is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `src` defines `name` as a function (`fn name`) or a field (`name:`, not `name::`).
fn defines(src: &str, name: &str) -> bool {
    let bytes = src.as_bytes();
    let mut from = 0;
    while let Some(at) = src[from..].find(name) {
        let (start, end) = (from + at, from + at + name.len());
        from = end;
        if start > 0 && is_ident_byte(bytes[start - 1]) {
            continue;
        }
        if end < bytes.len() && is_ident_byte(bytes[end]) {
            continue;
        }
        if let Some(head) = src[..start].trim_end().strip_suffix("fn")
            && !head.bytes().last().is_some_and(is_ident_byte)
        {
            return true;
        }
        let rest = src[end..].trim_start();
        if rest.starts_with(':') && !rest.starts_with("::") {
            return true;
        }
    }
    false
}

/// The backticked names in `doc` that read like tests: (line, whole path, last segment).
fn named_tests(doc: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        let mut spans = line.split('`');
        spans.next(); // before the first backtick
        while let Some(span) = spans.next() {
            let segments: Vec<&str> = span.split("::").collect();
            let ident = |s: &&str| {
                s.starts_with(|c: char| c.is_ascii_lowercase())
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            };
            let last = segments[segments.len() - 1];
            if segments.iter().all(ident) && last.matches('_').count() >= 3 {
                out.push((i + 1, span.to_string(), last.to_string()));
            }
            spans.next(); // the text up to the next opening backtick
        }
    }
    out
}

#[test]
fn every_test_the_documents_name_exists() {
    let root = repo_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, std::fs::read_to_string(p).unwrap())
        })
        .collect();
    assert!(
        sources.len() > 50,
        "found only {} Rust files",
        sources.len()
    );
    let mut checked = 0;
    let mut missing = Vec::new();
    for doc in ["ARCHITECTURE.md", "README.md", "MEASUREMENTS.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (line, path, name) in named_tests(&text) {
            let first = path.split("::").next().unwrap();
            let in_file = |stem: &str| path == name || stem == first;
            // A path whose first segment names no file is a module path inside one.
            let any_file = !sources.iter().any(|(stem, _)| stem == first);
            let found = sources
                .iter()
                .any(|(stem, src)| (any_file || in_file(stem)) && defines(src, &name));
            checked += 1;
            if !found {
                missing.push(format!("{doc}:{line}: `{path}`"));
            }
        }
    }
    assert!(checked > 100, "the documents name only {checked} tests");
    assert!(
        missing.is_empty(),
        "the documents name tests (or fields) that no Rust file defines; rename them in the \
         document or restore the test:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_checker_tells_a_definition_from_a_mention() {
    let src = "fn a_b_c_d() {}\nstruct S { e_f_g_h: u8 }\n// i_j_k_l is only mentioned\nuse x::m_n_o_p::q;\nfn xa_b_c_d() {}";
    assert!(defines(src, "a_b_c_d"));
    assert!(defines(src, "e_f_g_h"));
    assert!(!defines(src, "i_j_k_l"));
    assert!(!defines(src, "m_n_o_p"));
    assert!(!defines(src, "b_c_d"));
    let doc = "see `nested::a_b_c_d` and `a_b` and `x_y_z_w()` and `p_q_r_s`";
    let names: Vec<String> = named_tests(doc).into_iter().map(|(_, p, _)| p).collect();
    assert_eq!(names, ["nested::a_b_c_d", "p_q_r_s"]);
}
