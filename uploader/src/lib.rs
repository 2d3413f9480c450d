//! The uploader: the public upload API. Photos are validated by decoding, resized into the
//! configured variants, written as one batch to every replica of a logical volume and
//! committed to the directory only once every replica holds them; videos are streamed to
//! the replicas in chunks. docs/API.md ("Uploader") is the HTTP reference.
//!
//! Code map:
//! - [`config`]: [`UploaderConfig`], every field with its default, validated at start-up.
//! - [`images`]: format sniffing, header limits, decoding with EXIF orientation, resizing
//!   and encoding of variants (pure, synchronous).
//! - [`service`]: the upload, lookup and delete flows, retries and idempotency.
//! - [`http`]: the actix-web server; errors become HTTP statuses there and nowhere else.
//! - [`metrics`]: the process's Prometheus recorder.

pub mod config;
pub mod error;
pub mod http;
pub mod images;
pub mod metrics;
pub mod service;

use std::future::Future;
use std::net::TcpListener;

pub use config::{ApiKey, UploaderConfig, VariantSpec};
pub use error::UploaderError;
pub use service::Uploader;

/// Serves the uploader on `listener` until `shutdown` resolves, then lets in-flight uploads
/// finish. Refuses to start on a non-loopback address without an API key unless
/// `allow_public_without_key` is set.
pub async fn run(
    listener: TcpListener,
    config: UploaderConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), UploaderError> {
    config.validate()?;
    let addr = listener.local_addr()?;
    if config.api_key.is_none()
        && config.api_keys.is_empty()
        && !addr.ip().is_loopback()
        && !config.allow_public_without_key
    {
        return Err(UploaderError::Config(format!(
            "refusing to serve uploads on {addr} without an API key: set --api-key (or \
             HAYSTACK_API_KEY), bind a loopback address, or allow it explicitly \
             (allow_public_without_key)"
        )));
    }
    listener.set_nonblocking(true)?;
    let uploader = Uploader::new(config)?;
    http::serve(listener, uploader, shutdown).await
}
