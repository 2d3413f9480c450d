//! The figures of a run as data (serde, the `--json` output and the files BENCHMARKS.md is
//! rendered from) and as text: a table for people, a Markdown table for the benchmark page,
//! and the ratios of a side-by-side run against nginx.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::machine::Machine;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    /// Reads the percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// One operation's figures in one phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpReport {
    /// Requests finished (ok + failed + raced_deletes).
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    /// Reads that found their photo deleted by this run's own concurrent delete.
    #[serde(default)]
    pub raced_deletes: u64,
    /// Failures by kind: `http_503`, `connect`, `timeout`, `body`, `mismatch`.
    pub failures: BTreeMap<String, u64>,
    /// Successful operations per second of the phase's wall time.
    pub ops_per_s: f64,
    /// Payload bytes moved by successful operations.
    pub bytes: u64,
    pub mib_per_s: f64,
    /// Of successful operations; in an open-loop phase measured from the intended send time.
    pub latency_us: Latency,
}

/// One phase of a run (preload, the measured run, verify).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    pub elapsed_s: f64,
    /// By operation name (`put`, `get`, `delete`, `video_get`, `video_put`, `verify`).
    pub ops: BTreeMap<String, OpReport>,
    /// Open loop only: how late requests left after their intended time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<Latency>,
}

/// What `--verify` found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Acknowledged, not deleted uploads read back.
    pub checked: u64,
    /// Equal byte for byte.
    pub ok: u64,
    /// Read but different bytes (or length).
    pub mismatched: u64,
    /// Answered 404: an acknowledged upload is gone.
    pub missing: u64,
    /// Could not be read (other status, connection, timeout).
    pub errors: u64,
    /// Deleted photos checked to answer 404.
    pub deleted_checked: u64,
    /// Deleted photos that were still served.
    pub deleted_served: u64,
    /// The first few problems, for people.
    pub examples: Vec<String>,
}

impl VerifyReport {
    /// True when every acknowledged upload came back intact and no deleted one was served.
    pub fn passed(&self) -> bool {
        self.mismatched == 0 && self.missing == 0 && self.errors == 0 && self.deleted_served == 0
    }
}

/// A whole run of the load generator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// A title for the benchmark page (`--title`), else empty.
    #[serde(default)]
    pub title: String,
    /// The command line that produced it.
    pub command: String,
    pub started_utc: String,
    pub machine: Machine,
    /// /proc/loadavg before and after.
    pub load_before: String,
    pub load_after: String,
    /// What was driven (`uploader http://127.0.0.1:8080`).
    pub target: String,
    /// `closed-loop, 32 connections` or `open-loop, 500/s poisson`.
    pub mode: String,
    /// Mix, sizes, popularity.
    pub workload: String,
    pub phases: Vec<PhaseReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
}

/// One line of a side-by-side run: the same workload against the store and nginx.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// `put` or `get`.
    pub test: String,
    pub haystack_ops_per_s: f64,
    pub nginx_ops_per_s: f64,
    /// haystack / nginx throughput.
    pub ratio: f64,
    pub haystack_p50_us: u64,
    pub nginx_p50_us: u64,
    pub haystack_p99_us: u64,
    pub nginx_p99_us: u64,
}

/// A side-by-side run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    pub haystack: RunReport,
    pub nginx: RunReport,
    pub ratios: Vec<Ratio>,
}

/// What a results file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ResultFile {
    Run(Box<RunReport>),
    Compare(Box<CompareReport>),
}

/// Ratios of the phases named `put` and `get` (or of the op of that name in a phase `run`).
pub fn ratios(haystack: &RunReport, nginx: &RunReport) -> Vec<Ratio> {
    let mut out = Vec::new();
    for test in ["put", "get"] {
        let (Some(h), Some(n)) = (phase_op(haystack, test), phase_op(nginx, test)) else {
            continue;
        };
        out.push(Ratio {
            test: test.to_string(),
            haystack_ops_per_s: round1(h.ops_per_s),
            nginx_ops_per_s: round1(n.ops_per_s),
            ratio: if n.ops_per_s > 0.0 {
                (h.ops_per_s / n.ops_per_s * 1000.0).round() / 1000.0
            } else {
                0.0
            },
            haystack_p50_us: h.latency_us.p50,
            nginx_p50_us: n.latency_us.p50,
            haystack_p99_us: h.latency_us.p99,
            nginx_p99_us: n.latency_us.p99,
        });
    }
    out
}

fn phase_op<'a>(r: &'a RunReport, test: &str) -> Option<&'a OpReport> {
    r.phases
        .iter()
        .find(|p| p.name == test)
        .and_then(|p| p.ops.get(test))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `0.412` ms from microseconds, with a precision that suits the value.
pub fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.3}")
    } else if v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// `12,345` or `1,234.5`: thousands separated.
pub fn thousands(v: f64) -> String {
    let whole = v.trunc() as u64;
    let s = whole.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 100.0 && v.fract() != 0.0 {
        let _ = write!(out, ".{}", ((v.fract() * 10.0).round() as u64).min(9));
    }
    out
}

fn failures(f: &BTreeMap<String, u64>) -> String {
    if f.is_empty() {
        return "-".into();
    }
    f.iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl PhaseReport {
    /// A fixed-width table for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "phase {} ({:.1} s)", self.name, self.elapsed_s);
        let _ = writeln!(
            s,
            "  {:<10} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}  failures",
            "op", "ok", "ok/s", "MiB/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (name, o) in &self.ops {
            let l = &o.latency_us;
            let mut f = failures(&o.failures);
            if o.raced_deletes > 0 {
                f.push_str(&format!(" (raced deletes: {})", o.raced_deletes));
            }
            let _ = writeln!(
                s,
                "  {:<10} {:>9} {:>10.1} {:>8.1} {:>8} {:>8} {:>8} {:>9} {:>9}  {}",
                name,
                o.ok,
                o.ops_per_s,
                o.mib_per_s,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                f
            );
        }
        if let Some(l) = &self.send_lag_us {
            let _ = writeln!(
                s,
                "  send lag behind schedule: p50 {} ms, p99 {} ms, max {} ms",
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            );
        }
        s
    }

    /// A Markdown table (for BENCHMARKS.md).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| op | ok | ops/s | MiB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | failures |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for (name, o) in &self.ops {
            let l = &o.latency_us;
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
                thousands(o.ok as f64),
                thousands(o.ops_per_s),
                o.mib_per_s,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                failures(&o.failures)
            );
        }
        s
    }
}

impl RunReport {
    /// The whole report for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "target:   {}", self.target);
        let _ = writeln!(s, "mode:     {}", self.mode);
        let _ = writeln!(s, "workload: {}", self.workload);
        let _ = writeln!(
            s,
            "machine:  {}; load {} -> {}",
            self.machine.describe(),
            self.load_before,
            self.load_after
        );
        for p in &self.phases {
            s.push_str(&p.table());
        }
        if let Some(v) = &self.verify {
            s.push_str(&v.summary());
        }
        s
    }
}

impl VerifyReport {
    /// One paragraph for a terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "verify: {} of {} acknowledged uploads intact ({} mismatched, {} missing, {} unreadable); {} deleted checked, {} still served: {}\n",
            self.ok,
            self.checked,
            self.mismatched,
            self.missing,
            self.errors,
            self.deleted_checked,
            self.deleted_served,
            if self.passed() { "PASS" } else { "FAIL" }
        );
        for e in &self.examples {
            let _ = writeln!(s, "  {e}");
        }
        s
    }
}

impl CompareReport {
    /// Both runs and the ratios, for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str("== haystack\n");
        s.push_str(&self.haystack.table());
        s.push_str("== nginx file-per-photo\n");
        s.push_str(&self.nginx.table());
        s.push_str("== haystack / nginx\n");
        for r in &self.ratios {
            let _ = writeln!(
                s,
                "  {:<4} {:>10.1} ops/s vs {:>10.1} ops/s = {:.2}x   p50 {} vs {} ms, p99 {} vs {} ms",
                r.test,
                r.haystack_ops_per_s,
                r.nginx_ops_per_s,
                r.ratio,
                ms(r.haystack_p50_us),
                ms(r.nginx_p50_us),
                ms(r.haystack_p99_us),
                ms(r.nginx_p99_us)
            );
        }
        s
    }

    /// The ratios as a Markdown table.
    pub fn ratios_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| test | haystack ops/s | nginx ops/s | haystack / nginx | haystack p50 / p99 ms | nginx p50 / p99 ms |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in &self.ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2}× | {} / {} | {} / {} |",
                r.test,
                thousands(r.haystack_ops_per_s),
                thousands(r.nginx_ops_per_s),
                r.ratio,
                ms(r.haystack_p50_us),
                ms(r.haystack_p99_us),
                ms(r.nginx_p50_us),
                ms(r.nginx_p99_us)
            );
        }
        s
    }
}
