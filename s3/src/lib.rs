//! The S3 role: an S3-compatible REST API whose objects live in the same volumes, with the
//! same replication, as the photos. Stateless like the uploader (any number side by side):
//! buckets, objects, multipart uploads and access keys are records in the directory's ordered
//! keyspaces, bytes are chunked needles on the stores. docs/API.md ("S3") is the reference.
//!
//! Code map:
//! - [`config`]: [`S3Config`], every field with its default, validated at start-up.
//! - [`sigv4`]: AWS Signature V4, pure (canonical requests, keys, chunk and trailer signatures).
//! - [`body`]: plain and aws-chunked bodies, decoded and checked while they stream.
//! - [`keys`]: access keys, their grants, and the master key that seals their secrets.
//! - [`meta`]: the records and their keyspaces, over the directory's `/v1/kv` API.
//! - [`data`]: object bytes as committed chunked ids on the stores.
//! - [`service`]: the bucket, object and multipart operations.
//! - [`xml`]: S3's XML answers and request bodies.
//! - [`http`]: the actix-web server, routing and authentication; errors become S3 XML there.
//! - [`metrics`], [`error`].

pub mod body;
pub mod config;
pub mod data;
pub mod error;
pub mod gc;
pub mod http;
pub mod keys;
pub mod meta;
pub mod metrics;
pub mod service;
pub mod sigv4;
pub mod xml;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

pub use config::S3Config;
pub use error::S3Error;

use haystack_client::{Credentials, DirectoryClient, StoreClient};

/// The role's state from its configuration: clients of the directory and the stores (proving
/// themselves with the cluster's keys), the master key.
pub fn build(config: S3Config) -> Result<service::S3, S3Error> {
    let creds = Credentials::internal(config.security.keys.as_ref(), "s3");
    build_with_credentials(config, creds)
}

/// The longest one request to a directory (or a store) may take, its body included.
pub const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(60);

/// [`build`] with the given credentials for the directory and the stores (the operator tools
/// pass theirs).
pub fn build_with_credentials(
    config: S3Config,
    creds: Credentials,
) -> Result<service::S3, S3Error> {
    config.validate()?;
    let master = keys::MasterKey::load_or_create(&config.master_key_file)?;
    let http = config
        .security
        .http_builder()
        .timeout(DIRECTORY_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| S3Error::Config(format!("http client: {e}")))?;
    let dir = DirectoryClient::with_urls(&config.directories()?, http.clone())
        .map_err(S3Error::Config)?
        .with_credentials(creds.clone())
        .on_failover("s3", || {
            ::metrics::counter!("haystack_s3_directory_failovers_total").increment(1)
        });
    let stores = StoreClient::with_timeout(http, DIRECTORY_TIMEOUT).with_credentials(creds);
    let data = data::Data::new(dir.clone(), stores, config.chunk_bytes);
    Ok(service::S3::new(meta::Meta::new(dir), data, config, master))
}

/// Serves the S3 API on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish.
pub async fn run(
    listener: TcpListener,
    config: S3Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), S3Error> {
    listener.set_nonblocking(true)?;
    let s3 = Arc::new(build(config)?);
    http::serve(listener, s3, shutdown).await
}
