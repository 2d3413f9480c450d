//! The workspace tidy test: habits every crate keeps, checked in one place (it replaced four
//! differing per-crate copies). Each rule names what it found, file and line.
//! - Every Rust file opens with a `//!` comment saying what it is for.
//! - No `.unwrap()` in production code (outside `#[cfg(test)]` modules, tests and benches):
//!   disk and network input is never unwrapped.
//! - URLs of other services (`"/v1/...` literals) are built only in the client crate and in
//!   the servers' own route tables (and tests, benches, the load generator's targets).
//! - Every `pub mod` of a library is named in its crate's paragraph of docs/ARCHITECTURE.md.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The workspace's crates: every top-level folder with a Cargo.toml, the fuzz crate too.
fn crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root())
        .expect("read the workspace root")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file() && !p.ends_with("target"))
        .collect();
    v.sort();
    v
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if !p.ends_with("target") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for c in crates() {
        for sub in ["src", "tests", "benches", "fuzz_targets", "bench"] {
            rust_files(&c.join(sub), &mut out);
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// The lines of production code: a `src` file up to its first top-level `#[cfg(test)]`.
fn production_lines(p: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        v.push((i + 1, line.to_string()));
    }
    v
}

fn is_production(p: &Path) -> bool {
    let r = rel(p);
    r.split('/').nth(1) == Some("src") && !r.starts_with("testkit/") && !r.starts_with("fuzz/")
}

#[test]
fn every_rust_file_opens_with_a_doc_comment() {
    let files = all_rust_files();
    assert!(files.len() > 50, "found only {} files", files.len());
    let bad: Vec<String> = files
        .iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|p| rel(p))
        .collect();
    assert!(
        bad.is_empty(),
        "files without a `//!` opening comment: {bad:#?}"
    );
}

#[test]
fn no_unwrap_in_production_code() {
    let mut bad = Vec::new();
    for p in all_rust_files().iter().filter(|p| is_production(p)) {
        for (n, line) in production_lines(p) {
            let comment = line.trim_start().starts_with("//");
            if !comment && line.contains(".unwrap()") {
                bad.push(format!("{}:{n}: {}", rel(p), line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "`.unwrap()` in production code (return an error, or `expect` with the invariant that makes it safe): {bad:#?}"
    );
}

/// Files allowed to hold `"/v1/` URL literals: the client crate, the servers' route tables
/// and what serves pages or documents routes.
const URL_OWNERS: &[&str] = &[
    "client/src/",
    "proto/src/needle.rs",
    "store/src/http.rs",
    "store/src/http_ec.rs",
    "directory/src/http.rs",
    "directory/src/http_kv.rs",
    "cache/src/http.rs",
    "uploader/src/http.rs",
    "directory/src/dashboard.html",
];

/// Files that still hold such literals, each for a reason: `ops/src/cluster.rs` prints curl
/// examples for a person. The test fails when a file is added, and when one is cleaned so
/// that it can leave this list.
const URL_STILL_BY_HAND: &[&str] = &["ops/src/cluster.rs"];

#[test]
fn service_urls_are_built_only_in_the_client_crate() {
    let mut found: Vec<String> = Vec::new();
    let mut new: Vec<String> = Vec::new();
    for p in all_rust_files().iter().filter(|p| is_production(p)) {
        let r = rel(p);
        if URL_OWNERS.iter().any(|o| r.starts_with(o)) {
            continue;
        }
        let hits: Vec<String> = production_lines(p)
            .into_iter()
            .filter(|(_, l)| {
                // A literal that starts a path, or a base URL followed by one; a message
                // that names a route ("only it answers POST /v1/videos") is not a URL.
                let code = if l.trim_start().starts_with("//") {
                    ""
                } else {
                    l
                };
                code.contains("\"/v1/") || code.contains("}/v1/")
            })
            .map(|(n, l)| format!("{r}:{n}: {}", l.trim()))
            .collect();
        if !hits.is_empty() {
            found.push(r.clone());
            if !URL_STILL_BY_HAND.contains(&r.as_str()) {
                new.extend(hits);
            }
        }
    }
    assert!(
        new.is_empty(),
        "service URLs built by hand outside the client crate: {new:#?}"
    );
    let stale: Vec<&&str> = URL_STILL_BY_HAND
        .iter()
        .filter(|f| !found.iter().any(|x| x == **f))
        .collect();
    assert!(
        stale.is_empty(),
        "clean now, remove from URL_STILL_BY_HAND: {stale:?}"
    );
}

#[test]
fn every_pub_mod_is_in_the_architecture_code_map() {
    let arch =
        std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let mut missing = Vec::new();
    for c in crates() {
        let lib = c.join("src/lib.rs");
        let Ok(text) = std::fs::read_to_string(&lib) else {
            continue;
        };
        let name = c
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        // The crate's paragraph: from its `### name/` heading to the next heading.
        let head = format!("### {name}/");
        let Some(start) = arch.find(&head) else {
            missing.push(format!("{name}: no `{head}` section"));
            continue;
        };
        let rest = &arch[start + head.len()..];
        let end = rest.find("\n### ").unwrap_or(rest.len());
        let section = &rest[..end];
        for line in text.lines() {
            let Some(m) = line.trim().strip_prefix("pub mod ") else {
                continue;
            };
            let m = m.trim_end_matches(';').trim();
            if !section.contains(&format!("`{m}`")) && !section.contains(&format!("`{m}/")) {
                missing.push(format!("{name}: `{m}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "pub mods not in docs/ARCHITECTURE.md's code map: {missing:#?}"
    );
}
