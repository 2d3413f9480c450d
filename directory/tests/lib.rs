//! The directory's one integration-test binary: the backend conformance suite, the service's
//! liveness and placement behaviour, and the HTTP API over real loopback ports.

mod common;
mod conformance;
mod http_api;
mod service;
