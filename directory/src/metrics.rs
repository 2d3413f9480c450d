//! Prometheus metrics: one process-wide recorder from metrics-exporter-prometheus, rendered as
//! text on `/metrics` by the directory itself (no exporter listener).

/// Installs the process's recorder (`haystack_service::metrics`) once.
pub fn install() {
    haystack_service::metrics::install();
}

/// The Prometheus text exposition of every metric of the process.
pub fn render() -> String {
    haystack_service::metrics::render()
}
