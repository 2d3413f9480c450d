//! The cache tier: hot photos and videos over HTTP in front of the stores, with the semantics
//! a CDN origin needs (ETag, conditional GET, byte ranges across video chunks, long immutable
//! caching, short-lived when liveness is unknown, purge on delete).
//!
//! A node keeps needles in a bounded LRU by bytes ([`memory`]), admits them by Haystack's
//! policy ([`config::Admission`]), reads misses from the replica with the fewest reads in
//! flight and fails over ([`upstream`]), shares one store read among concurrent misses of a
//! needle, serves videos by mapping ranges onto chunks ([`video`]), and in a tier of several
//! nodes forwards each photo to the node that owns it on a consistent-hash ring ([`ring`]).
//! The HTTP API is in docs/API.md ("Cache"); [`run`] is the entry point.

pub mod config;
pub mod error;
pub mod http;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod ring;
pub mod upstream;
pub mod video;

pub use config::{parse_size, Admission, CacheConfig};
pub use error::CacheError;
pub use http::run;
pub use metrics::StatsSnapshot;
