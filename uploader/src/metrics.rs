//! The process-wide Prometheus recorder behind the `metrics` facade, rendered on the
//! uploader's /metrics (the store's pattern: no exporter listener, one recorder per process).
//!
//! In a process that hosts several roles the first one to install a recorder owns it; a host
//! that installs its own can hand the handle over with [`use_handle`] before calling `run`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Installs the recorder once; later calls are no-ops. If another recorder was installed
/// first, /metrics says so instead of failing.
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

/// Uses a handle installed by the host process. False when the uploader already has one.
pub fn use_handle(handle: PrometheusHandle) -> bool {
    HANDLE.set(Some(handle)).is_ok()
}

/// The Prometheus text exposition of every metric of this process.
pub fn render() -> String {
    install();
    match HANDLE.get().and_then(|h| h.as_ref()) {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => "# metrics recorder owned by another component of this process\n".into(),
    }
}

/// Counts one HTTP request and records its latency.
pub fn record_request(route: &'static str, method: &str, status: u16, secs: f64) {
    metrics::counter!(
        "haystack_uploader_http_requests_total",
        "route" => route,
        "method" => method.to_owned(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "haystack_uploader_http_request_duration_seconds",
        "route" => route,
        "method" => method.to_owned()
    )
    .record(secs);
}

/// Counts a refused request by its error code.
pub fn record_error(code: &'static str) {
    metrics::counter!("haystack_uploader_http_errors_total", "code" => code).increment(1);
}
