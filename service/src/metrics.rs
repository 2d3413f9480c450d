//! The process's one Prometheus recorder (metrics-exporter-prometheus behind the `metrics`
//! facade), shared by every role the process runs, rendered by each role on its own
//! /metrics (no exporter listener), and the per-request HTTP metrics every service records.
//!
//! One recorder per process is what the facade allows: before this module each role kept its
//! own, and in a process running several roles (the test clusters) only the first one's
//! /metrics showed anything.

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets of every histogram whose name ends in `seconds`.
/// 50 us (a page-cache GET) to 2 minutes (a large upload).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// Buckets of the counting histograms (`..._per_fsync`, `..._per_append`).
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Installs the recorder once (later calls return the same handle). `None` when something
/// else in the process installed a recorder of its own first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("per_fsync".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("per_append".into()), COUNT_BUCKETS)
                })
                .and_then(|b| b.install_recorder());
            match built {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "prometheus recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text exposition of every metric of this process.
pub fn render() -> String {
    match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => "# metrics recorder owned by another component of this process\n".into(),
    }
}

type RouteKey = (&'static str, &'static str, String, u16);

thread_local! {
    static ROUTES: std::cell::RefCell<HashMap<RouteKey, (metrics::Counter, metrics::Histogram)>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Counts one HTTP request of `service` (the metric prefix, e.g. `haystack_store`) and
/// records its latency: `{service}_http_requests_total{route,method,status}` and
/// `{service}_http_request_duration_seconds{route,method}`. Handles are cached per thread.
pub fn record_request(
    service: &'static str,
    route: &'static str,
    method: &str,
    status: u16,
    secs: f64,
) {
    ROUTES.with(|m| {
        let mut m = m.borrow_mut();
        let key = (service, route, method.to_owned(), status);
        let (c, h) = m
            .entry(key)
            .or_insert_with_key(|(service, route, method, status)| {
                (
                    metrics::counter!(format!("{service}_http_requests_total"), "route" => *route, "method" => method.clone(), "status" => status.to_string()),
                    metrics::histogram!(format!("{service}_http_request_duration_seconds"), "route" => *route, "method" => method.clone()),
                )
            });
        c.increment(1);
        h.record(secs);
    });
}
