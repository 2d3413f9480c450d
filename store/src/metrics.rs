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
                        b.set_buckets_for_metric(Matcher::Suffix("per_get".into()), COUNT_BUCKETS)
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
    match HANDLE.get().and_then(|h| h.as_ref()) {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => "# metrics recorder unavailable in this process\n".into(),
    }
}

/// Handles of the metrics touched on every GET, registered once (a `counter!` call looks its
/// key up in the registry each time). Installs the recorder first, so the handles are live.
pub struct Hot {
    pub gets: metrics::Counter,
    pub disk_reads: metrics::Counter,
    pub bytes_read: metrics::Counter,
    /// Read operations each GET issued (the Haystack promise: exactly one).
    pub disk_reads_per_get: metrics::Histogram,
}

static HOT: OnceLock<Hot> = OnceLock::new();

pub fn hot() -> &'static Hot {
    HOT.get_or_init(|| {
        install();
        Hot {
            gets: metrics::counter!("haystack_store_gets_total"),
            disk_reads: metrics::counter!("haystack_store_disk_reads_total"),
            bytes_read: metrics::counter!("haystack_store_bytes_read_total"),
            disk_reads_per_get: metrics::histogram!("haystack_store_disk_reads_per_get"),
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
