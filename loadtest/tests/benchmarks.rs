//! The benchmark page: rendered from fragments in name order and saved runs, the runs
//! placed where a fragment asks for them; and the repository's BENCHMARKS.md is exactly
//! what its bench/results/ render to (it is generated, never edited by hand).

use std::path::Path;
use std::time::Duration;

use haystack_loadtest::benchmarks::{render, DIRECTIVE, REGENERATE};
use haystack_loadtest::report::{ResultFile, RunReport};
use haystack_loadtest::stats::{Op, Recorder};

fn saved_run(title: &str) -> String {
    let rec = Recorder::new();
    rec.ok(Op::Put, Duration::from_micros(1500), 4096);
    serde_json::to_string(&ResultFile::Run(Box::new(RunReport {
        title: title.into(),
        command: "haystack-loadtest run --directory http://127.0.0.1:8082 -d 5".into(),
        started_utc: "2026-11-21T03:00:00Z".into(),
        load_before: "0.10 0.20 0.30".into(),
        load_after: "1.00 0.50 0.40".into(),
        phases: vec![rec.snapshot("run", Duration::from_secs(1))],
        ..Default::default()
    })))
    .unwrap()
}

#[test]
fn renders_fragments_in_order_with_runs_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("loadtest")).unwrap();
    std::fs::write(d.join("20-b.md"), "## B\n\ntext b\n").unwrap();
    std::fs::write(d.join("10-a.md"), "## A\n\ntext a\n\n\n").unwrap();
    std::fs::write(
        d.join("30-end.md"),
        format!("## End to end\n\n{DIRECTIVE}\nafter\n"),
    )
    .unwrap();
    std::fs::write(d.join("README.md"), "not part of the page\n").unwrap();
    std::fs::write(d.join("loadtest/2-second.json"), saved_run("Second")).unwrap();
    std::fs::write(d.join("loadtest/1-first.json"), saved_run("First")).unwrap();
    let page = render(d).unwrap();
    assert!(page.starts_with("# Benchmarks\n"));
    assert!(page.contains(REGENERATE));
    assert!(!page.contains("not part of the page"));
    assert!(!page.contains(DIRECTIVE));
    let pos = |s: &str| {
        page.find(s)
            .unwrap_or_else(|| panic!("{s:?} missing from\n{page}"))
    };
    assert!(pos("## A") < pos("## B") && pos("## B") < pos("## End to end"));
    assert!(pos("## End to end") < pos("### First") && pos("### First") < pos("### Second"));
    assert!(pos("### Second") < pos("\nafter\n"));
    // each run carries its command, date and load
    assert!(page.contains("    haystack-loadtest run --directory http://127.0.0.1:8082 -d 5"));
    assert!(page.contains("Run 2026-11-21T03:00:00Z"));
    assert!(page.contains("load average 0.10 0.20 0.30 before, 1.00 0.50 0.40 after"));
    assert!(page.contains("| put | 1 |"));
    assert!(page.ends_with("after\n") && !page.ends_with("\n\n"));
    // rendering depends on the files only
    assert_eq!(page, render(d).unwrap());
}

#[test]
fn runs_without_a_place_go_last_and_bad_json_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("loadtest")).unwrap();
    std::fs::write(d.join("10-a.md"), "## A\n").unwrap();
    std::fs::write(d.join("loadtest/x.json"), saved_run("")).unwrap();
    let page = render(d).unwrap();
    assert!(page.find("## A").unwrap() < page.find("## Load generator").unwrap());
    assert!(
        page.contains("### x"),
        "a run without a title is named by its file"
    );
    std::fs::write(d.join("loadtest/y.json"), "{not json").unwrap();
    let e = render(d).unwrap_err().to_string();
    assert!(e.contains("y.json"), "{e}");
}

#[test]
fn benchmarks_md_is_generated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let want = render(&root.join("bench/results")).unwrap();
    let have = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap();
    assert!(
        have == want,
        "BENCHMARKS.md differs from what bench/results/ renders to: edit the fragment in \
         bench/results/ (not BENCHMARKS.md), then run `{REGENERATE}` from the workspace root"
    );
}
