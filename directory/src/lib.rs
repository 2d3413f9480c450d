//! The haystack directory: photo id → logical volume → replicas, write placement, store
//! liveness and read URLs, as a stateless service over a metadata-store trait.
//!
//! Code map:
//! - [`config`]: the serde configuration and the `--metadata` URL.
//! - [`meta`]: the [`meta::MetadataStore`] trait, its embedded (redb) and ScyllaDB backends,
//!   and the typed record layer on top.
//! - [`model`]: the records kept in the metadata store.
//! - [`ids`]: k-sortable 64-bit photo ids and random cookies.
//! - [`placement`]: choosing replica machines for a new logical volume.
//! - [`service`]: the directory's behaviour (register, heartbeat, assign, commit, lookup, delete,
//!   liveness, volume creation).
//! - [`http`]: the actix-web API; every error becomes an HTTP status in one place there.
//! - [`server`]: [`run`], the entry point the `haystack directory` subcommand calls.

pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod http_kv;
pub mod ids;
pub mod meta;
pub mod metrics;
pub mod model;
pub mod placement;
pub mod server;
pub mod service;

pub use config::DirectoryConfig;
pub use error::DirectoryError;
pub use server::{run, run_with};
pub use service::{Directory, MAX_CREATES_PER_TICK};
