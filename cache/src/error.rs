//! `CacheError`: everything that can go wrong in the cache. The HTTP status and error code of
//! each variant are decided in one place, `http::ApiError`.

use std::sync::Arc;

/// An error of the cache. Cloneable, so that one failed store read can be handed to every
/// request that waited on it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// A malformed request: path segment, header.
    #[error("{0}")]
    BadRequest(String),
    /// Missing, deleted, or the wrong cookie: all alike, so URLs cannot be probed.
    #[error("no such photo")]
    NotFound,
    /// The directory knows no such logical volume.
    #[error("logical volume {0} does not exist")]
    NoSuchVolume(u32),
    /// No route at this path.
    #[error("no such route (see docs/API.md)")]
    NoRoute,
    /// A known path with another method.
    #[error("method not allowed on this route (see docs/API.md)")]
    MethodNotAllowed,
    /// Every replica of the volume failed or timed out.
    #[error("no replica of volume {volume} answered: {detail}")]
    StoreUnavailable { volume: u32, detail: String },
    /// The directory could not be reached and nothing usable was cached.
    #[error("the directory is unreachable: {0}")]
    DirectoryUnavailable(String),
    /// A video's chunk does not have the size the directory records.
    #[error("video {id} chunk {alt} has {got} bytes, the directory says {want}")]
    InconsistentVideo {
        id: u64,
        alt: u32,
        got: u64,
        want: u64,
    },
    /// Some peers did not confirm a purge.
    #[error("purge not confirmed by peers: {0}")]
    PeerPurge(String),
    /// The configuration is invalid (start-up only).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O error of the server itself (start-up only).
    #[error("{action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl CacheError {
    pub(crate) fn io(action: &'static str, e: std::io::Error) -> Self {
        CacheError::Io {
            action,
            source: Arc::new(e),
        }
    }
}
