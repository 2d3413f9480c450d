//! Metrics: the process-wide Prometheus recorder rendered on /metrics (the store's pattern),
//! and the node's own counters, kept per instance so that several cache nodes in one test
//! process each count their own (and `/v1/stats` can show them).
//!
//! Counters touched on every request are sharded over cache lines and handed to the recorder
//! when /metrics is rendered. Store latency is a histogram recorded per store read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Installs the recorder once; later calls are no-ops. If another recorder was installed
/// first (another role in this process), /metrics says so instead of failing.
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS);
        match builder.and_then(|b| b.install_recorder()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "prometheus recorder not installed");
                None
            }
        }
    });
}

/// Uses a handle installed by someone else (a process hosting several roles), so /metrics
/// renders the process's metrics. Returns false when the cache already has one.
pub fn use_handle(handle: PrometheusHandle) -> bool {
    HANDLE.set(Some(handle)).is_ok()
}

/// A counter split over cache-line-sized shards, one per thread slot.
pub struct Sharded {
    shards: Box<[Padded]>,
}

#[repr(align(128))]
struct Padded(AtomicU64);

const SHARDS: usize = 16;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

impl Default for Sharded {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Padded(AtomicU64::new(0))).collect(),
        }
    }
}

impl Sharded {
    pub fn add(&self, n: u64) {
        let i = SLOT.with(|s| *s);
        self.shards[i].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// One cache node's counters.
#[derive(Default)]
pub struct Stats {
    /// Needle requests answered from memory.
    pub hits: Sharded,
    /// Needle requests not in memory (they read a store or waited on a read).
    pub misses: Sharded,
    /// Misses that waited on a read already under way instead of starting one.
    pub coalesced: Sharded,
    /// Needle reads started against the stores (one per coalesced group).
    pub store_reads: Sharded,
    /// Store read attempts that failed (error, timeout) and moved to another replica.
    pub store_failovers: Sharded,
    /// Needles kept in memory after a read.
    pub admitted: Sharded,
    /// Needles read but not kept (admission policy, size).
    pub not_admitted: Sharded,
    /// Body bytes sent to clients (whole or partial).
    pub bytes_served: Sharded,
    /// Bytes read from stores.
    pub bytes_fetched: Sharded,
    /// Requests forwarded to the owning peer.
    pub forwarded: Sharded,
    /// Forwards that failed (then served here).
    pub forward_failures: Sharded,
    /// Photos purged (DELETE).
    pub purges: Sharded,
    /// Directory requests (volume replicas, video chunk lists).
    pub directory_requests: Sharded,
}

/// A snapshot of a node's counters and memory (`GET /v1/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub store_reads: u64,
    pub store_failovers: u64,
    pub admitted: u64,
    pub not_admitted: u64,
    pub bytes_served: u64,
    pub bytes_fetched: u64,
    pub forwarded: u64,
    pub forward_failures: u64,
    pub purges: u64,
    pub directory_requests: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
}

impl Stats {
    /// The counters now, with the memory's figures.
    pub fn snapshot(&self, mem: crate::memory::MemoryStats, capacity: u64) -> StatsSnapshot {
        StatsSnapshot {
            hits: self.hits.get(),
            misses: self.misses.get(),
            coalesced: self.coalesced.get(),
            store_reads: self.store_reads.get(),
            store_failovers: self.store_failovers.get(),
            admitted: self.admitted.get(),
            not_admitted: self.not_admitted.get(),
            bytes_served: self.bytes_served.get(),
            bytes_fetched: self.bytes_fetched.get(),
            forwarded: self.forwarded.get(),
            forward_failures: self.forward_failures.get(),
            purges: self.purges.get(),
            directory_requests: self.directory_requests.get(),
            evictions: mem.evictions,
            entries: mem.entries,
            bytes: mem.bytes,
            capacity_bytes: capacity,
        }
    }
}

/// Records one store read attempt's latency; `outcome` is `ok`, `not_found` or `error`.
pub fn store_latency(outcome: &'static str, secs: f64) {
    metrics::histogram!("haystack_cache_store_request_duration_seconds", "outcome" => outcome)
        .record(secs);
}

/// The Prometheus text: this node's counters published into the recorder, then everything the
/// process's recorder holds.
pub fn render(s: &StatsSnapshot) -> String {
    install();
    let counters: [(&'static str, u64); 14] = [
        ("haystack_cache_hits_total", s.hits),
        ("haystack_cache_misses_total", s.misses),
        ("haystack_cache_coalesced_misses_total", s.coalesced),
        ("haystack_cache_store_reads_total", s.store_reads),
        ("haystack_cache_store_failovers_total", s.store_failovers),
        ("haystack_cache_admitted_total", s.admitted),
        ("haystack_cache_not_admitted_total", s.not_admitted),
        ("haystack_cache_bytes_served_total", s.bytes_served),
        ("haystack_cache_bytes_fetched_total", s.bytes_fetched),
        ("haystack_cache_forwarded_total", s.forwarded),
        ("haystack_cache_forward_failures_total", s.forward_failures),
        ("haystack_cache_purges_total", s.purges),
        (
            "haystack_cache_directory_requests_total",
            s.directory_requests,
        ),
        ("haystack_cache_evictions_total", s.evictions),
    ];
    for (name, v) in counters {
        metrics::counter!(name).absolute(v);
    }
    metrics::gauge!("haystack_cache_entries").set(s.entries as f64);
    metrics::gauge!("haystack_cache_bytes").set(s.bytes as f64);
    metrics::gauge!("haystack_cache_capacity_bytes").set(s.capacity_bytes as f64);
    match HANDLE.get().and_then(|h| h.as_ref()) {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => "# metrics recorder owned by another component of this process\n".into(),
    }
}

type RouteKey = (&'static str, actix_web::http::Method, u16);

thread_local! {
    static ROUTES: std::cell::RefCell<std::collections::HashMap<RouteKey, (metrics::Counter, metrics::Histogram)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Counts one HTTP request and records its latency, with per-thread cached handles.
pub fn record_request(
    route: &'static str,
    method: &actix_web::http::Method,
    status: u16,
    secs: f64,
) {
    ROUTES.with(|m| {
        let mut m = m.borrow_mut();
        let key = (route, method.clone(), status);
        let (c, h) = m.entry(key).or_insert_with_key(|(route, method, status)| {
            (
                metrics::counter!("haystack_cache_http_requests_total", "route" => *route, "method" => method.as_str().to_owned(), "status" => status.to_string()),
                metrics::histogram!("haystack_cache_http_request_duration_seconds", "route" => *route, "method" => method.as_str().to_owned()),
            )
        });
        c.increment(1);
        h.record(secs);
    });
}
