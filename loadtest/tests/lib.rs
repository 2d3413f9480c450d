//! The load generator's tests, one binary: the distributions, payloads, the open-loop
//! schedule, the report and the benchmark page (pure), then short bounded workloads and
//! verify against a real cluster on loopback (haystack-testkit), and the S3 target against
//! the S3 role on such a cluster.

mod benchmarks;
mod cluster;
mod dist;
mod fake_dav;
mod full_stack;
mod payload;
mod report;
mod s3;
mod schedule;
