//! The process-wide Prometheus recorder behind the `metrics` facade, rendered on /metrics.
//!
//! One recorder per process: `haystack server` runs every role in one process and they all
//! share it (every metric name carries its service prefix).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Installs the recorder once; later calls are no-ops. If another recorder was installed
/// first, /metrics says so instead of failing.
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("per_fsync".into()), COUNT_BUCKETS)
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Suffix("per_append".into()),
                            COUNT_BUCKETS,
                        )
                    })
            });
        match builder.and_then(|b| b.install_recorder()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "prometheus recorder not installed");
                None
            }
        }
    });
}

/// The Prometheus text exposition of every metric of this process.
pub fn render() -> String {
    install();
    let hot = hot();
    for c in [
        &hot.gets,
        &hot.disk_reads,
        &hot.bytes_read,
        &hot.get_disk_reads,
    ] {
        c.publish();
    }
    match HANDLE.get().and_then(|h| h.as_ref()) {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => "# metrics recorder unavailable in this process\n".into(),
    }
}

/// A counter split over cache-line-sized shards, one per thread slot, so that cores counting
/// every GET do not fight over one cache line. Its total is handed to the recorder when
/// /metrics is rendered.
pub struct Sharded {
    shards: Box<[Padded]>,
    counter: metrics::Counter,
}

#[repr(align(128))]
struct Padded(std::sync::atomic::AtomicU64);

const SHARDS: usize = 16;

static NEXT_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS;
}

impl Sharded {
    fn new(counter: metrics::Counter) -> Self {
        Sharded {
            shards: (0..SHARDS)
                .map(|_| Padded(std::sync::atomic::AtomicU64::new(0)))
                .collect(),
            counter,
        }
    }

    pub fn increment(&self, n: u64) {
        let i = SLOT.with(|s| *s);
        self.shards[i]
            .0
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn publish(&self) {
        let total = self
            .shards
            .iter()
            .map(|s| s.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        self.counter.absolute(total);
    }
}

/// The counters touched on every GET, registered once. Installs the recorder first, so the
/// handles are live.
pub struct Hot {
    pub gets: Sharded,
    pub disk_reads: Sharded,
    pub bytes_read: Sharded,
    /// Read operations issued by GETs: divided by `gets`, the disk reads per GET (the Haystack
    /// promise: exactly one).
    pub get_disk_reads: Sharded,
}

static HOT: OnceLock<Hot> = OnceLock::new();

pub fn hot() -> &'static Hot {
    HOT.get_or_init(|| {
        install();
        Hot {
            gets: Sharded::new(metrics::counter!("haystack_store_gets_total")),
            disk_reads: Sharded::new(metrics::counter!("haystack_store_disk_reads_total")),
            bytes_read: Sharded::new(metrics::counter!("haystack_store_bytes_read_total")),
            get_disk_reads: Sharded::new(metrics::counter!("haystack_store_get_disk_reads_total")),
        }
    })
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
                metrics::counter!("haystack_store_http_requests_total", "route" => *route, "method" => method.as_str().to_owned(), "status" => status.to_string()),
                metrics::histogram!("haystack_store_http_request_duration_seconds", "route" => *route, "method" => method.as_str().to_owned()),
            )
        });
        c.increment(1);
        h.record(secs);
    });
}
