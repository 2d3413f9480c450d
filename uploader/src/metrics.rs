//! The uploader's metrics on the process's one Prometheus recorder (`haystack_service::metrics`),
//! rendered on the uploader's /metrics.

/// Installs the process's recorder once.
pub fn install() {
    haystack_service::metrics::install();
}

/// The Prometheus text exposition of every metric of this process.
pub fn render() -> String {
    haystack_service::metrics::render()
}

/// Counts one HTTP request and records its latency (`haystack_uploader_http_*`).
pub fn record_request(route: &'static str, method: &str, status: u16, secs: f64) {
    haystack_service::metrics::record_request("haystack_uploader", route, method, status, secs);
}

/// Counts a refused request by its error code.
pub fn record_error(code: &'static str) {
    metrics::counter!("haystack_uploader_http_errors_total", "code" => code).increment(1);
}
