//! The cache's integration tests, one binary: each test starts a real cluster (directory and
//! stores from haystack-testkit, on loopback, in this process) and cache nodes in front of it.

mod common;

mod admission;
mod coalescing;
mod delete;
mod erasure;
mod eviction;
mod failover;
mod peers;
mod readrepair;
mod semantics;
mod video;
