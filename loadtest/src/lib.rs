//! The load generator and benchmark harness: realistic photo-store workloads driven through
//! a cluster's public HTTP API (uploads of photo-sized JPEGs, reads by Zipf popularity over
//! recency, deletes, video range reads; closed- or open-loop, bounded in count and time),
//! HDR-histogram reports, a byte-for-byte verify mode, a side-by-side comparison with nginx
//! serving one file per photo, and the generator of BENCHMARKS.md.
//!
//! Map: [`dist`] (sizes, Zipf), [`payload`] (JPEG pool, video bytes), [`schedule`]
//! (open-loop send times), [`target`] (uploader, directory + stores, nginx, S3), [`s3`] (the
//! S3 target's SigV4-signed requests), [`workload`]
//! (phases, population, progress), [`stats`] and [`report`] (figures), [`verify`],
//! [`driver`] (whole runs and comparisons), [`machine`], [`benchmarks`] (BENCHMARKS.md),
//! [`rtt`] (the loopback round trip, the floor under any added hop), [`floor`] (the ceiling
//! of each candidate HTTP stack).

pub mod benchmarks;
pub mod dist;
pub mod driver;
pub mod error;
pub mod floor;
pub mod machine;
pub mod payload;
pub mod report;
pub mod rtt;
pub mod s3;
pub mod schedule;
pub mod stats;
pub mod target;
pub mod verify;
pub mod workload;

pub use driver::{compare, run, CompareConfig, RunConfig};
pub use error::{LoadError, Result};
