//! The directory's one integration-test binary: the backend conformance suite, the service's
//! liveness and placement behaviour, the HTTP API over real loopback ports, the repair worker
//! against racing deletes, wire forms and house rules.

mod common;
mod conformance;
mod crash;
mod http_api;
mod model;
mod multi;
mod repairs;
mod service;
mod wire;
