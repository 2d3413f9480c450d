//! The S3 role's metrics on the process's one Prometheus recorder (`haystack_service::metrics`),
//! rendered on its /metrics: requests by operation, method and status, errors by S3 code.

pub fn install() {
    haystack_service::metrics::install();
}

pub fn render() -> String {
    haystack_service::metrics::render()
}

/// Counts one request and records its latency (`haystack_s3_http_*`, route = the operation).
pub fn record_request(op: &'static str, method: &str, status: u16, secs: f64) {
    haystack_service::metrics::record_request("haystack_s3", op, method, status, secs);
}

/// Counts an error answer by its S3 code.
pub fn record_error(code: &'static str) {
    metrics::counter!("haystack_s3_errors_total", "code" => code).increment(1);
}
