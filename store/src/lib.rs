//! The store machine of a Haystack-style photo store: volumes of appended needles, an
//! in-memory index per volume, io_uring I/O, group-committed durable writes, and the HTTP
//! server that exposes them. See docs/ARCHITECTURE.md for the map and the durability contract.

pub mod checkpoint;
pub mod disk;
pub mod ec;
pub mod engine;
pub mod error;
pub mod format;
pub mod heartbeat;
pub mod http;
pub mod http_ec;
pub mod index;
pub mod metrics;
pub(crate) mod pause;
pub mod scrub;
pub mod server;
pub mod ship;
#[cfg(feature = "test-hooks")]
pub mod sim;
pub mod store;
pub mod volume;

pub use engine::{EngineKind, Fault, IoEngine};
pub use error::StoreError;
pub use scrub::ScrubConfig;
pub use server::{run, run_with, RunConfig};
pub use store::{Store, StoreConfig};
pub use volume::{
    bucket_of, CompactReport, CorruptNeedle, Damage, DamageKind, Digest, Needle, NeedleData,
    NeedleEntry, RebuildReport, RepairOutcome, VerifyReport, Volume, VolumeConfig,
    MAX_DIGEST_BUCKETS,
};
#[cfg(feature = "test-hooks")]
pub use volume::{CompactPause, CrashPoint};
