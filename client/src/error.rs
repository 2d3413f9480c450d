//! [`ClientError`]: why a call to another service failed, with what the service answered.

use haystack_proto::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service could not be reached, the connection failed or the request timed out
    /// (reqwest's error names the URL).
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// A connection of [`crate::StoreReader`] failed, timed out or answered something that is
    /// not HTTP/1.1 as the store speaks it.
    #[error("{url}: {detail}")]
    Conn {
        url: String,
        kind: ConnFailure,
        detail: String,
    },
    /// The service answered with an error status; `body` is its JSON error body (or, when it
    /// sent none, code `http` and the text it sent).
    #[error("{url} answered {status}: {} ({})", body.message, body.error)]
    Api {
        url: String,
        status: u16,
        body: ErrorBody,
    },
    /// The answer was not the JSON expected.
    #[error("{url}: undecodable answer: {detail}")]
    Decode { url: String, detail: String },
}

/// How a [`ClientError::Conn`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnFailure {
    /// The connection could not be made.
    Connect,
    /// No whole answer within the timeout.
    Timeout,
    /// The connection failed or was closed mid-exchange.
    Io,
    /// The answer was not HTTP/1.1 as expected.
    Protocol,
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The JSON error code of an error answer (`not_found`, `volume_full`...).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.error),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The server has no such route (404 or 405): an older version, without the call.
    pub fn is_unsupported(&self) -> bool {
        matches!(self.status(), Some(404 | 405))
    }

    /// Worth retrying later: transport failures and 503s.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Transport(_) | ClientError::Conn { .. })
            || self.status() == Some(503)
    }

    /// The request timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Transport(e) if e.is_timeout())
            || matches!(
                self,
                ClientError::Conn {
                    kind: ConnFailure::Timeout,
                    ..
                }
            )
    }

    /// The connection could not be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Transport(e) if e.is_connect())
            || matches!(
                self,
                ClientError::Conn {
                    kind: ConnFailure::Connect,
                    ..
                }
            )
    }
}
