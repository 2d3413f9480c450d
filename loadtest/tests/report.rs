//! The report: percentiles from the HDR histogram, failures by kind, ratios against nginx,
//! the table and the JSON that scripts and the benchmark page read.

use std::time::Duration;

use haystack_loadtest::machine::{utc_timestamp, Machine};
use haystack_loadtest::report::{
    ratios, thousands, CompareReport, PhaseReport, ResultFile, RunReport, VerifyReport,
};
use haystack_loadtest::stats::{Failure, Op, Recorder};

fn sample_phase(name: &str, ops: &[(Op, u64)]) -> PhaseReport {
    let rec = Recorder::new();
    for (op, base_us) in ops {
        for i in 1..=1000u64 {
            rec.ok(*op, Duration::from_micros(base_us * i), 4096);
        }
    }
    rec.snapshot(name, Duration::from_secs(2))
}

#[test]
fn percentiles_counts_and_failures() {
    let rec = Recorder::new();
    // 1..=10000 µs: p50 ~5000, p90 ~9000, p99 ~9900, p99.9 ~9990, max 10000
    for us in 1..=10_000u64 {
        rec.ok(Op::Get, Duration::from_micros(us), 100);
    }
    rec.fail(Op::Get, &Failure::Status(503));
    rec.fail(Op::Get, &Failure::Status(503));
    rec.fail(Op::Get, &Failure::Timeout);
    rec.fail(Op::Put, &Failure::Connect);
    rec.raced_delete(Op::Get);
    assert_eq!(rec.totals(), (10_000, 4));
    let p = rec.snapshot("run", Duration::from_secs(4));
    let g = &p.ops["get"];
    assert_eq!(g.ok, 10_000);
    assert_eq!(g.failed, 3);
    assert_eq!(g.raced_deletes, 1);
    assert_eq!(g.requests, 10_004);
    assert_eq!(g.bytes, 1_000_000);
    assert!((g.ops_per_s - 2500.0).abs() < 1e-6);
    let near = |got: u64, want: u64| (got as f64 / want as f64 - 1.0).abs() < 0.002;
    let l = &g.latency_us;
    assert!(near(l.p50, 5000), "p50 {}", l.p50);
    assert!(near(l.p90, 9000), "p90 {}", l.p90);
    assert!(near(l.p99, 9900), "p99 {}", l.p99);
    assert!(near(l.p999, 9990), "p99.9 {}", l.p999);
    assert!(near(l.max, 10_000), "max {}", l.max);
    assert_eq!(g.failures["http_503"], 2);
    assert_eq!(g.failures["timeout"], 1);
    let put = &p.ops["put"];
    assert_eq!((put.ok, put.failed), (0, 1));
    assert_eq!(put.failures["connect"], 1);
    assert!(
        !p.ops.contains_key("delete"),
        "operations that never ran are left out"
    );
    let t = p.table();
    assert!(t.contains("http_503:2 timeout:1"), "{t}");
    assert!(t.contains("raced deletes: 1"), "{t}");
    assert!(
        p.markdown().contains("| get | 10,000 | 2,500 |"),
        "{}",
        p.markdown()
    );
}

#[test]
fn failure_kinds_are_named() {
    assert_eq!(Failure::Status(404).key(), "http_404");
    assert_eq!(Failure::Connect.key(), "connect");
    assert_eq!(Failure::Timeout.key(), "timeout");
    assert_eq!(Failure::Body.key(), "body");
    assert_eq!(Failure::Mismatch.key(), "mismatch");
}

#[test]
fn ratios_against_nginx() {
    let h = RunReport {
        phases: vec![
            sample_phase("put", &[(Op::Put, 10)]),
            sample_phase("get", &[(Op::Get, 2)]),
        ],
        ..Default::default()
    };
    let mut n = h.clone();
    // nginx: same counts over twice the time -> half the rate
    for p in &mut n.phases {
        for o in p.ops.values_mut() {
            o.ops_per_s /= 2.0;
        }
    }
    let r = ratios(&h, &n);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].test, "put");
    assert_eq!(r[1].test, "get");
    assert!((r[0].ratio - 2.0).abs() < 1e-9 && (r[1].ratio - 2.0).abs() < 1e-9);
    assert_eq!(r[1].haystack_ops_per_s, 500.0);
    let c = CompareReport {
        haystack: h,
        nginx: n,
        ratios: r,
    };
    assert!(c.table().contains("= 2.00x"), "{}", c.table());
    assert!(
        c.ratios_markdown().contains("| get | 500 | 250 | 2.00× |"),
        "{}",
        c.ratios_markdown()
    );
}

#[test]
fn results_round_trip_as_json() {
    let r = ResultFile::Run(Box::new(RunReport {
        title: "t".into(),
        command: "haystack-loadtest run --directory http://127.0.0.1:1".into(),
        started_utc: utc_timestamp(0),
        machine: Machine::detect(),
        phases: vec![sample_phase("run", &[(Op::Put, 3), (Op::Get, 1)])],
        verify: Some(VerifyReport {
            checked: 3,
            ok: 3,
            ..Default::default()
        }),
        ..Default::default()
    }));
    let text = serde_json::to_string_pretty(&r).unwrap();
    assert!(text.contains("\"kind\": \"run\""));
    assert!(text.contains("\"p99\""));
    let back: ResultFile = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
}

#[test]
fn verify_verdict() {
    let mut v = VerifyReport {
        checked: 10,
        ok: 10,
        ..Default::default()
    };
    assert!(v.passed());
    assert!(v.summary().contains("PASS"));
    v.mismatched = 1;
    assert!(!v.passed());
    assert!(v.summary().contains("FAIL"));
    v.mismatched = 0;
    v.deleted_served = 1;
    assert!(!v.passed());
}

#[test]
fn machine_and_time() {
    assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(utc_timestamp(1_795_226_400), "2026-11-21T02:00:00Z");
    let m = Machine::detect();
    assert!(m.cpus >= 1);
    assert!(m.describe().contains("CPUs"));
    assert_eq!(thousands(1_234_567.8), "1,234,567");
    assert_eq!(thousands(12.34), "12.3");
    assert_eq!(thousands(999.0), "999");
}
