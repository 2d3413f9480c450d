//! The load generator's error type: configuration mistakes and failures that stop a run
//! (per-request failures are not errors here; they are counted by kind in the report).

use std::path::PathBuf;

/// What stops a run or a report before it produces figures.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag or a combination of flags that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A URL that is not loopback while `--allow-remote` was not given.
    #[error("refusing to send traffic to {url}: not a loopback address (pass --allow-remote to allow it)")]
    NotLoopback { url: String },
    /// The target answered something the load generator cannot use.
    #[error("unexpected answer from {what}: {detail}")]
    Protocol { what: String, detail: String },
    /// Building a payload failed.
    #[error("generating payloads: {0}")]
    Payload(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A results file is not the JSON the report expects.
    #[error("reading {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl LoadError {
    /// An I/O error with the action and path it happened on.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Result with [`LoadError`].
pub type Result<T, E = LoadError> = std::result::Result<T, E>;
