//! The uploader's error type. Each variant maps to one HTTP status and error code, in
//! `http.rs` (`status_and_code`), and nowhere else.

use haystack_client::ClientError;

/// Everything that can go wrong in the uploader, from start-up to a single request.
#[derive(Debug, thiserror::Error)]
pub enum UploaderError {
    /// The configuration is refused at start-up.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// POST or DELETE without the right `Authorization: Bearer` key.
    #[error("missing or wrong API key (Authorization: Bearer <key>)")]
    Unauthorized,
    /// A malformed request: headers, multipart form, path.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not a decodable image (not an image at all, truncated, corrupt).
    #[error("not a valid image: {0}")]
    InvalidImage(String),
    /// An image or media type the uploader does not take.
    #[error("unsupported format: {0}")]
    UnsupportedFormat(String),
    /// The body is larger than the configured maximum.
    #[error("body larger than {max} bytes")]
    TooLarge { max: u64 },
    /// No part of the body arrived within `body_idle_timeout_ms`.
    #[error("{0}")]
    BodyTimeout(String),
    /// The header declares more pixels (or a longer side) than allowed.
    #[error("image of {width}x{height} pixels is over the limit ({limit})")]
    TooManyPixels {
        width: u32,
        height: u32,
        limit: String,
    },
    /// No such photo (or it was deleted).
    #[error("no such photo")]
    NotFound,
    /// No such route.
    #[error("no such route (see docs/API.md)")]
    NoRoute,
    /// A known route with another method.
    #[error("method not allowed on this route (see docs/API.md)")]
    MethodNotAllowed,
    /// The request conflicts with what exists (an idempotency key reused for other contents
    /// or for a deleted photo).
    #[error("{0}")]
    Conflict(String),
    /// The directory cannot be reached or has no writable volume now; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The replicas did not all take the photo on any of the attempts; nothing was committed.
    #[error("{0}")]
    WriteFailed(String),
    /// The client is over an upload limit (rate or concurrent uploads); retry after the
    /// given seconds.
    #[error("{what}; retry after {retry_after_secs} s")]
    RateLimited { what: String, retry_after_secs: u64 },
    /// A bug or an answer that makes no sense.
    #[error("internal error: {0}")]
    Internal(String),
}

impl UploaderError {
    /// Maps a directory client error: 404 is `NotFound`, unreachable or 503 is `Unavailable`,
    /// anything else is internal (the uploader sent something the directory refused).
    pub fn from_directory(action: &str, e: ClientError) -> UploaderError {
        if e.is_not_found() {
            UploaderError::NotFound
        } else if e.is_retryable() {
            UploaderError::Unavailable(format!("directory unavailable while {action}: {e}"))
        } else if e.status() == Some(409) {
            UploaderError::Conflict(format!("directory refused {action}: {e}"))
        } else {
            UploaderError::Internal(format!("directory refused {action}: {e}"))
        }
    }
}
