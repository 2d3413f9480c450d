//! Prometheus metrics: one process-wide recorder from metrics-exporter-prometheus, rendered as
//! text on `/metrics` by the directory itself (no exporter listener).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder once. When another recorder is already installed (another role
/// in the same process did it), `/metrics` renders nothing of ours and says so.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// Uses a handle installed by someone else (e.g. the `haystack server` process installing one
/// recorder for every role), so `/metrics` renders the process's metrics. Returns false when
/// the directory already has a handle.
pub fn use_handle(handle: PrometheusHandle) -> bool {
    HANDLE.set(Some(handle)).is_ok()
}

/// The Prometheus text exposition of every metric of the process.
pub fn render() -> String {
    match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => "# metrics recorder owned by another component of this process\n".to_string(),
    }
}
