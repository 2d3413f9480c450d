//! What a run measures while it runs: per operation an HDR histogram of latencies (µs) of
//! successful requests, counts, bytes moved, and failures by kind; shared by every worker
//! task and snapshotted into a [`PhaseReport`](crate::report::PhaseReport) at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{Latency, OpReport, PhaseReport};

/// The operations a workload performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Upload a photo (uploader POST, direct assign + PUTs + commit, or nginx PUT).
    Put,
    /// Read a photo's variant by its URL.
    Get,
    /// Delete a photo.
    Delete,
    /// Read a byte range of a video.
    Video,
    /// Upload a video (before the measured phase).
    VideoPut,
    /// Read-back of an acknowledged upload in `--verify`.
    Verify,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 6] = [
        Op::Put,
        Op::Get,
        Op::Delete,
        Op::Video,
        Op::VideoPut,
        Op::Verify,
    ];

    /// The name in reports and flags.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Delete => "delete",
            Op::Video => "video_get",
            Op::VideoPut => "video_put",
            Op::Verify => "verify",
        }
    }
}

/// Why a request failed, as the report counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with an unexpected HTTP status.
    Status(u16),
    /// No connection could be made.
    Connect,
    /// The request or the connection timed out.
    Timeout,
    /// The connection broke while sending or reading a body.
    Body,
    /// The answer was well-formed HTTP but wrong: bad JSON, wrong length or bytes.
    Mismatch,
    /// The answer pointed the load generator at a non-loopback address.
    NotLoopback,
}

impl Failure {
    /// `http_503`, `connect`, `timeout`, `body`, `mismatch`, `not_loopback`.
    pub fn key(&self) -> String {
        match self {
            Failure::Status(s) => format!("http_{s}"),
            Failure::Connect => "connect".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Body => "body".into(),
            Failure::Mismatch => "mismatch".into(),
            Failure::NotLoopback => "not_loopback".into(),
        }
    }

    /// Classifies a client error.
    pub fn of(e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_connect() {
            Failure::Connect
        } else if let Some(s) = e.status() {
            Failure::Status(s.as_u16())
        } else if e.is_decode() {
            Failure::Mismatch
        } else {
            Failure::Body
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

struct Slot {
    hist: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    raced: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            hist: Mutex::new(histogram()),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            raced: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
        }
    }
}

/// The measurements of one phase.
pub struct Recorder {
    slots: Vec<Slot>,
    lag: Mutex<Histogram<u64>>,
    started: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// Starts the phase's clock now.
    pub fn new() -> Recorder {
        Recorder {
            slots: Op::ALL.iter().map(|_| Slot::new()).collect(),
            lag: Mutex::new(histogram()),
            started: Instant::now(),
        }
    }

    fn slot(&self, op: Op) -> &Slot {
        &self.slots[Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("every op has a slot")]
    }

    /// A success that took `latency` and moved `bytes` of payload.
    pub fn ok(&self, op: Op, latency: Duration, bytes: u64) {
        let s = self.slot(op);
        s.ok.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        let us = (latency.as_micros() as u64).max(1);
        s.hist.lock().expect("histogram lock").saturating_record(us);
    }

    /// A failure.
    pub fn fail(&self, op: Op, why: &Failure) {
        let s = self.slot(op);
        s.failed.fetch_add(1, Ordering::Relaxed);
        *s.failures
            .lock()
            .expect("failures lock")
            .entry(why.key())
            .or_insert(0) += 1;
    }

    /// A read that found its photo deleted by this run's own concurrent delete: neither a
    /// success nor a failure of the system under test.
    pub fn raced_delete(&self, op: Op) {
        self.slot(op).raced.fetch_add(1, Ordering::Relaxed);
    }

    /// How late an open-loop request was sent after its intended time.
    pub fn send_lag(&self, lag: Duration) {
        let us = (lag.as_micros() as u64).max(1);
        self.lag.lock().expect("lag lock").saturating_record(us);
    }

    /// Requests finished so far (successes, failures) over every operation.
    pub fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(o, f), s| {
            (
                o + s.ok.load(Ordering::Relaxed),
                f + s.failed.load(Ordering::Relaxed),
            )
        })
    }

    /// Time since the phase started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The phase's figures, over `elapsed` (the phase's wall time).
    pub fn snapshot(&self, name: &str, elapsed: Duration) -> PhaseReport {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut ops = BTreeMap::new();
        for (op, s) in Op::ALL.iter().zip(&self.slots) {
            let ok = s.ok.load(Ordering::Relaxed);
            let failed = s.failed.load(Ordering::Relaxed);
            let raced = s.raced.load(Ordering::Relaxed);
            if ok + failed + raced == 0 {
                continue;
            }
            let bytes = s.bytes.load(Ordering::Relaxed);
            let h = s.hist.lock().expect("histogram lock");
            ops.insert(
                op.name().to_string(),
                OpReport {
                    requests: ok + failed + raced,
                    ok,
                    failed,
                    raced_deletes: raced,
                    failures: s.failures.lock().expect("failures lock").clone(),
                    ops_per_s: ok as f64 / secs,
                    bytes,
                    mib_per_s: bytes as f64 / secs / (1u64 << 20) as f64,
                    latency_us: Latency::of(&h),
                },
            );
        }
        let lag = self.lag.lock().expect("lag lock");
        PhaseReport {
            name: name.to_string(),
            elapsed_s: secs,
            ops,
            send_lag_us: (!lag.is_empty()).then(|| Latency::of(&lag)),
        }
    }
}
