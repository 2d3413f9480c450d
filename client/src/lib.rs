//! Rust clients of the haystack services' HTTP APIs (docs/API.md): [`DirectoryClient`] (one
//! directory, or a list of equivalent ones with failover), [`StoreClient`] (any store machine: needles and volume administration),
//! [`CacheClient`] (purges), and [`StoreReader`], a pipelined HTTP/1.1 reader of needles for
//! the cache's misses and the S3 role's object GETs (without reqwest). Every URL a service builds to call another service is built here,
//! in [`urls`]; the servers' own route tables stay with the servers.
//!
//! The crate depends on haystack-proto and the HTTP client only, so that a service calling
//! another never links its internals (a cache or uploader build does not include the
//! directory's databases). Every call answers [`ClientError`], which keeps the status and the
//! JSON error code of an error answer so callers decide what it means for them.

pub mod auth;
pub mod cache;
pub mod directory;
pub mod error;
pub mod reader;
pub mod store;
pub mod urls;

mod http;

pub use auth::Credentials;
pub use cache::CacheClient;
pub use directory::DirectoryClient;
pub use error::{ClientError, ConnFailure};
pub use reader::{StoreReader, StoreReaders};
pub use store::StoreClient;
