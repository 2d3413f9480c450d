//! Internal glue shared by the haystack services, so that every role runs its background
//! work, stops and reports it the same way: [`worker`] (named background loops with
//! throttling, back-off, triggers and a shutdown deadline, their state on /metrics),
//! [`metrics`] (the process's one Prometheus recorder and the per-request HTTP metrics) and
//! [`sync`] (lock helpers). Depends on tokio, tracing, metrics and its Prometheus exporter: no HTTP stack, no
//! service's internals.

pub mod metrics;
pub mod sync;
pub mod worker;

pub use tokio_util::sync::CancellationToken;
pub use worker::{Next, Worker, WorkerSet};
