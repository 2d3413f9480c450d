//! Metrics: the process-wide Prometheus recorder rendered on /metrics (the store's pattern),
//! and the node's own counters, kept per instance so that several cache nodes in one test
//! process each count their own (and `/v1/stats` can show them).
//!
//! Counters touched on every request are sharded over cache lines and handed to the recorder
//! when /metrics is rendered. Store latency is a histogram recorded per store read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

/// Installs the process's recorder (`haystack_service::metrics`) once.
pub fn install() {
    haystack_service::metrics::install();
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
    /// Directory requests that moved from one directory of the list to the next.
    pub directory_failovers: Sharded,
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
    #[serde(default)]
    pub directory_failovers: u64,
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
            directory_failovers: self.directory_failovers.get(),
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
    let counters: [(&'static str, u64); 15] = [
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
        (
            "haystack_cache_directory_failovers_total",
            s.directory_failovers,
        ),
        ("haystack_cache_evictions_total", s.evictions),
    ];
    for (name, v) in counters {
        metrics::counter!(name).absolute(v);
    }
    metrics::gauge!("haystack_cache_entries").set(s.entries as f64);
    metrics::gauge!("haystack_cache_bytes").set(s.bytes as f64);
    metrics::gauge!("haystack_cache_capacity_bytes").set(s.capacity_bytes as f64);
    haystack_service::metrics::render()
}

/// Counts one HTTP request and records its latency (`haystack_cache_http_*`).
pub fn record_request(
    route: &'static str,
    method: &actix_web::http::Method,
    status: u16,
    secs: f64,
) {
    haystack_service::metrics::record_request(
        "haystack_cache",
        route,
        method.as_str(),
        status,
        secs,
    );
}
