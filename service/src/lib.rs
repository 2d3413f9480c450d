//! Internal glue shared by the haystack services, so that every role runs its background
//! work, stops and reports it the same way: [`worker`] (named background loops with
//! throttling, back-off, triggers and a shutdown deadline, their state on /metrics),
//! [`metrics`] (the process's one Prometheus recorder and the per-request HTTP metrics) and
//! [`sync`] (lock helpers) and [`auth`] (the one authentication layer every HTTP server wraps
//! its app in, with the audit log). Depends on tokio, tracing, metrics and its Prometheus
//! exporter, actix-web (for the auth middleware) and haystack-proto: no service's internals.

pub mod auth;
pub mod metrics;
pub mod sync;
pub mod worker;

pub use tokio_util::sync::CancellationToken;
pub use worker::{Next, Worker, WorkerSet};
