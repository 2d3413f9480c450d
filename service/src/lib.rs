//! Internal glue shared by the haystack services, so that every role runs its background
//! work, stops and reports it the same way: [`worker`] (named background loops with
//! throttling, back-off, triggers and a shutdown deadline, their state on /metrics),
//! [`metrics`] (the process's one Prometheus recorder and the per-request HTTP metrics) and
//! [`sync`] (lock helpers) and [`auth`] (the one authentication layer every HTTP server wraps
//! its app in, with the audit log). Depends on tokio, tracing, metrics and its Prometheus
//! exporter, actix-web (for the auth middleware) and haystack-proto: no service's internals.

pub mod auth;
pub mod body;
pub mod metrics;
pub mod sync;
pub mod tls;
pub mod worker;

pub use tokio_util::sync::CancellationToken;

/// How long every HTTP server waits for a request's whole head (request line and headers)
/// before it answers 408 and closes the connection: a client sending one header byte a second
/// (slowloris) holds a connection this long at most. Every server sets it explicitly (actix's
/// own default is the same today; `0` would turn it off).
pub const REQUEST_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
pub use worker::{Next, Worker, WorkerSet};
