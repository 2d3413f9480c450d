//! The store's one integration-test binary: volumes over both I/O engines, recovery,
//! corruption, and the HTTP API on loopback.

mod common;
mod compaction;
mod corruption;
mod engine;
mod faults;
mod http_api;
mod memory;
mod model;
mod powercut;
mod recovery;
mod repair;
mod scale;
mod trust;
