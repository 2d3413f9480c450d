//! The request plumbing the clients share: send, turn an error status into
//! [`ClientError::Api`], decode JSON.

use haystack_proto::ErrorBody;
use serde::de::DeserializeOwned;

use crate::ClientError;

/// Sends `req` (to `url`); a success answer is returned as is, an error status becomes
/// [`ClientError::Api`] with the service's error body.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<reqwest::Response, ClientError> {
    let resp = req.send().await?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    Err(api_error(resp, url).await)
}

/// The [`ClientError::Api`] of an answer with an error status.
pub(crate) async fn api_error(resp: reqwest::Response, url: &str) -> ClientError {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
        error: "http".to_string(),
        message: String::from_utf8_lossy(&bytes).into_owned(),
    });
    ClientError::Api {
        url: url.to_string(),
        status,
        body,
    }
}

/// Reads a success answer as JSON.
pub(crate) async fn json<T: DeserializeOwned>(
    resp: reqwest::Response,
    url: &str,
) -> Result<T, ClientError> {
    let bytes = resp.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

/// Sends `req` and decodes its JSON answer.
pub(crate) async fn call<T: DeserializeOwned>(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<T, ClientError> {
    let resp = send(req, url).await?;
    json(resp, url).await
}
