//! `DirectoryClient`: the Rust client of the directory's HTTP API, used by the store
//! (register, heartbeat), the uploader (assign, commit) and the cache (lookup, volume).

use std::time::Duration;

use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, CondemnResponse, DeleteResponse, DirectoryHealth,
    KeyedCommit, LogicalVolumeInfo, PhotoInfo, ReplaceReplicaRequest, StoreInfo, UrlResponse,
    VolumeStateRequest,
};
use haystack_proto::{
    ErrorBody, Heartbeat, HeartbeatReply, StoreRegistered, StoreRegistration, VolumeState,
};
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The directory could not be reached or the connection failed.
    #[error("directory request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The directory answered with an error status and body.
    #[error("directory answered {status}: {} ({})", body.message, body.error)]
    Api { status: u16, body: ErrorBody },
    /// The answer was not the JSON expected.
    #[error("directory answer undecodable: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Worth retrying later: transport failures and 503s.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Transport(_)) || self.status() == Some(503)
    }
}

/// A client of one directory base URL, e.g. `http://127.0.0.1:8080`.
#[derive(Clone, Debug)]
pub struct DirectoryClient {
    base: String,
    http: reqwest::Client,
}

impl DirectoryClient {
    /// A client with a 10 s request timeout.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self::with_http(base_url, http))
    }

    /// A client over an existing reqwest client (shares its connection pool).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
        } else {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: "http".to_string(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
            Err(ClientError::Api {
                status: status.as_u16(),
                body,
            })
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        Self::decode(resp).await
    }

    async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await?;
        Self::decode(resp).await
    }

    pub async fn register(&self, req: &StoreRegistration) -> Result<StoreRegistered, ClientError> {
        self.post("/v1/stores/register", req).await
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, ClientError> {
        self.post(&format!("/v1/stores/{}/heartbeat", hb.store_id), hb)
            .await
    }

    pub async fn assign(&self, req: &AssignRequest) -> Result<AssignResponse, ClientError> {
        self.post("/v1/assign", req).await
    }

    pub async fn commit(&self, req: &CommitRequest) -> Result<PhotoInfo, ClientError> {
        self.post("/v1/photos", req).await
    }

    /// A commit that binds an idempotency key: the answer may be another photo, the one the
    /// key is already bound to (same request hash).
    pub async fn commit_keyed(&self, req: &KeyedCommit) -> Result<PhotoInfo, ClientError> {
        self.post("/v1/photos", req).await
    }

    /// Garbage collection: the photo, or a tombstone so that the id is never committed.
    pub async fn condemn(&self, id: u64) -> Result<CondemnResponse, ClientError> {
        self.post(
            &format!("/v1/photos/{id}/condemn"),
            &serde_json::Value::Null,
        )
        .await
    }

    pub async fn lookup(&self, id: u64) -> Result<PhotoInfo, ClientError> {
        self.get(&format!("/v1/photos/{id}")).await
    }

    pub async fn read_url(&self, id: u64, alt: u32) -> Result<String, ClientError> {
        let r: UrlResponse = self.get(&format!("/v1/photos/{id}/url?alt={alt}")).await?;
        Ok(r.url)
    }

    pub async fn delete(&self, id: u64) -> Result<DeleteResponse, ClientError> {
        let resp = self
            .http
            .delete(format!("{}/v1/photos/{id}", self.base))
            .send()
            .await?;
        Self::decode(resp).await
    }

    pub async fn volumes(&self) -> Result<Vec<LogicalVolumeInfo>, ClientError> {
        self.get("/v1/volumes").await
    }

    pub async fn volume(&self, id: u32) -> Result<LogicalVolumeInfo, ClientError> {
        self.get(&format!("/v1/volumes/{id}")).await
    }

    /// Creates a logical volume now (operators; volumes are otherwise created automatically).
    pub async fn create_volume(&self) -> Result<LogicalVolumeInfo, ClientError> {
        self.post("/v1/volumes", &serde_json::json!({})).await
    }

    /// Sets a volume's recorded state (seal, read-only, writable again).
    pub async fn set_volume_state(
        &self,
        id: u32,
        state: VolumeState,
        reason: Option<String>,
    ) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(
            &format!("/v1/volumes/{id}/state"),
            &VolumeStateRequest { state, reason },
        )
        .await
    }

    /// Moves a replica of a volume from one store to another (repair).
    pub async fn replace_replica(
        &self,
        id: u32,
        from_store_id: u64,
        to_store_id: u64,
    ) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(
            &format!("/v1/volumes/{id}/replace"),
            &ReplaceReplicaRequest {
                from_store_id,
                to_store_id,
            },
        )
        .await
    }

    pub async fn stores(&self) -> Result<Vec<StoreInfo>, ClientError> {
        self.get("/v1/stores").await
    }

    /// `/health`; a degraded directory answers 503 with the same body, returned as `Api`.
    pub async fn health(&self) -> Result<DirectoryHealth, ClientError> {
        self.get("/health").await
    }
}
