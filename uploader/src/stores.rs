//! Writes to store machines over their HTTP API: a photo's needles as one batch, a video's
//! chunks one needle at a time, always to every replica of a logical volume in parallel.
//! The uploader knows stores only through this API (docs/API.md, "Store machine").

use std::time::Duration;

use bytes::Bytes;
use haystack_proto::directory::Replica;
use haystack_proto::{format_cookie, ErrorBody};

/// One needle to write: the alternate key, the media type stored with it, the bytes.
#[derive(Clone, Debug)]
pub struct Needle {
    pub alt: u32,
    pub content_type: String,
    pub data: Bytes,
}

/// Why a replica did not take a write.
#[derive(Clone, Debug, thiserror::Error)]
#[error("replica {url} refused the write: {detail}")]
pub struct ReplicaError {
    pub url: String,
    /// The HTTP status, when the store answered.
    pub status: Option<u16>,
    /// The store's error code (`read_only`, `volume_full`...), when it sent one.
    pub code: Option<String>,
    pub detail: String,
}

impl ReplicaError {
    /// A store's 413: the needle can never fit, on any volume.
    pub fn is_too_large(&self) -> bool {
        self.status == Some(413)
    }
}

/// Encodes needles of one photo as a store batch body (docs/API.md: repeated `key u64, alt
/// u32, cookie u64, content_type_len u8, content_type, data_len u32, data`, little-endian).
/// The store's `parse_batch` is the inverse (a test checks the two agree).
pub fn encode_batch(key: u64, cookie: u64, needles: &[Needle]) -> Bytes {
    use haystack_proto::batch::{push_record, record_len};
    let len: usize = needles
        .iter()
        .map(|n| record_len(&n.content_type, n.data.len()))
        .sum();
    let mut out = Vec::with_capacity(len);
    for n in needles {
        push_record(&mut out, key, n.alt, cookie, &n.content_type, &n.data);
    }
    Bytes::from(out)
}

/// Client of the store machines.
#[derive(Clone, Debug)]
pub struct StoreClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl StoreClient {
    pub fn new(http: reqwest::Client, timeout: Duration) -> Self {
        StoreClient { http, timeout }
    }

    async fn send(
        &self,
        url: &str,
        replica: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(), ReplicaError> {
        let fail = |status: Option<u16>, code: Option<String>, detail: String| ReplicaError {
            url: replica.to_string(),
            status,
            code,
            detail,
        };
        let resp = req
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| fail(None, None, format!("{url}: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.bytes().await.unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => (Some(b.error), b.message),
            Err(_) => (None, String::from_utf8_lossy(&body).into_owned()),
        };
        Err(fail(
            Some(status.as_u16()),
            code,
            format!("{status}: {message}"),
        ))
    }

    /// Writes one batch body to one replica (`POST /v1/volumes/{volume}/batch`); Ok once the
    /// store answered 201 (the needles are durable there).
    pub async fn write_batch(
        &self,
        replica: &str,
        volume: u32,
        body: Bytes,
    ) -> Result<(), ReplicaError> {
        let url = format!("{replica}/v1/volumes/{volume}/batch");
        let req = self
            .http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(body);
        self.send(&url, replica, req).await
    }

    /// Writes one needle to one replica (`PUT /v1/needles/{volume}/{key}/{alt}/{cookie}`).
    pub async fn put_needle(
        &self,
        replica: &str,
        volume: u32,
        key: u64,
        cookie: u64,
        needle: &Needle,
    ) -> Result<(), ReplicaError> {
        let url = format!(
            "{replica}/v1/needles/{volume}/{key}/{}/{}",
            needle.alt,
            format_cookie(cookie)
        );
        let req = self
            .http
            .put(&url)
            .header("content-type", needle.content_type.as_str())
            .body(needle.data.clone());
        self.send(&url, replica, req).await
    }

    /// The batch to every replica at once; Ok only when every one acknowledged. The errors of
    /// the replicas that failed otherwise.
    pub async fn write_batch_all(
        &self,
        replicas: &[Replica],
        volume: u32,
        body: Bytes,
    ) -> Result<(), Vec<ReplicaError>> {
        let writes = replicas
            .iter()
            .map(|r| self.write_batch(&r.url, volume, body.clone()));
        collect(futures_util::future::join_all(writes).await)
    }

    /// One needle to every replica at once; Ok only when every one acknowledged.
    pub async fn put_needle_all(
        &self,
        replicas: &[Replica],
        volume: u32,
        key: u64,
        cookie: u64,
        needle: &Needle,
    ) -> Result<(), Vec<ReplicaError>> {
        let writes = replicas
            .iter()
            .map(|r| self.put_needle(&r.url, volume, key, cookie, needle));
        collect(futures_util::future::join_all(writes).await)
    }

    /// Reads up to `len` bytes from the start of a needle (`Range: bytes=0-`), trying the
    /// replicas in order. None when no replica answers with the needle.
    pub async fn read_head(
        &self,
        replicas: &[Replica],
        volume: u32,
        key: u64,
        alt: u32,
        cookie: u64,
        len: u64,
    ) -> Option<(String, Bytes)> {
        for r in replicas {
            let url = format!(
                "{}/v1/needles/{volume}/{key}/{alt}/{}",
                r.url,
                format_cookie(cookie)
            );
            let resp = self
                .http
                .get(&url)
                .header("range", format!("bytes=0-{}", len.saturating_sub(1)))
                .timeout(self.timeout)
                .send()
                .await;
            match resp {
                Ok(resp) if resp.status().is_success() => {
                    let ct = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/octet-stream")
                        .to_string();
                    match resp.bytes().await {
                        Ok(b) => return Some((ct, b)),
                        Err(e) => tracing::debug!(url, error = %e, "reading a needle failed"),
                    }
                }
                Ok(resp) => {
                    tracing::debug!(url, status = resp.status().as_u16(), "needle read refused")
                }
                Err(e) => tracing::debug!(url, error = %e, "needle read failed"),
            }
        }
        None
    }
}

fn collect(results: Vec<Result<(), ReplicaError>>) -> Result<(), Vec<ReplicaError>> {
    let failed: Vec<ReplicaError> = results.into_iter().filter_map(Result::err).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}
