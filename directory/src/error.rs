//! The directory's error type. Its mapping to HTTP status codes lives in one place,
//! [`crate::http`].

use crate::meta::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{0}")]
    NotFound(String),
    /// The photo existed and was deleted (404 like a missing one, with its own code so that
    /// an uploader replaying an idempotency key does not write it back).
    #[error("{0}")]
    Deleted(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// The metadata backend did not answer (or failed); the request changed nothing.
    #[error("metadata backend unavailable: {0}")]
    Unavailable(String),
    /// No logical volume takes writes now; new ones are being created when stores allow it.
    #[error("no writable logical volume: {0}")]
    NoWritableVolume(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<MetaError> for DirectoryError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Unavailable(m) => Self::Unavailable(m),
            MetaError::Corrupt(m) => Self::Internal(format!("corrupt metadata record: {m}")),
        }
    }
}

impl DirectoryError {
    /// The short machine-readable code of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Deleted(_) => "deleted",
            Self::BadRequest(_) => "bad_request",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "backend_unavailable",
            Self::NoWritableVolume(_) => "no_writable_volume",
            Self::Config(_) => "config",
            Self::Io(_) => "io",
            Self::Internal(_) => "internal",
        }
    }
}
