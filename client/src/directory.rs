//! [`DirectoryClient`]: the client of the directory's HTTP API, used by the store (register,
//! heartbeat), the uploader (assign, commit), the cache (lookup, volume) and the operator
//! tools (volumes, state, replicas, condemn).

use std::time::Duration;

use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, CondemnResponse, DamageReply, DamageReport,
    DeleteResponse, DirectoryHealth, KeyedCommit, LogicalVolumeInfo, PhotoInfo, RepairTaskInfo,
    ReplaceReplicaRequest, StoreInfo, UrlResponse, VolumeStateRequest,
};
use haystack_proto::kv::{KvPut, KvRecord, KvScan, KvWriteResult};
use haystack_proto::{Heartbeat, HeartbeatReply, StoreRegistered, StoreRegistration, VolumeState};
use serde::de::DeserializeOwned;

use crate::http::call;
use crate::urls::directory as url;
use crate::{ClientError, Credentials};

/// A client of one directory base URL, e.g. `http://127.0.0.1:8080`.
#[derive(Clone, Debug)]
pub struct DirectoryClient {
    base: String,
    http: reqwest::Client,
    creds: Credentials,
}

impl DirectoryClient {
    /// A client with a 10 s request timeout.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self::with_http(base_url, http))
    }

    /// A client over an existing reqwest client (shares its connection pool and timeouts).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            creds: Credentials::None,
        }
    }

    /// The same client, proving `creds` on every call.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        self.creds = creds;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn get<T: DeserializeOwned>(&self, url: String) -> Result<T, ClientError> {
        call(self.creds.apply(self.http.get(&url)), &url).await
    }

    async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        url: String,
        body: &B,
    ) -> Result<T, ClientError> {
        call(self.creds.apply(self.http.post(&url).json(body)), &url).await
    }

    pub async fn register(&self, req: &StoreRegistration) -> Result<StoreRegistered, ClientError> {
        self.post(url::register(&self.base), req).await
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, ClientError> {
        self.post(url::heartbeat(&self.base, hb.store_id), hb).await
    }

    pub async fn assign(&self, req: &AssignRequest) -> Result<AssignResponse, ClientError> {
        self.post(url::assign(&self.base), req).await
    }

    pub async fn commit(&self, req: &CommitRequest) -> Result<PhotoInfo, ClientError> {
        self.post(url::photos(&self.base), req).await
    }

    /// A commit that binds an idempotency key: the answer may be another photo, the one the
    /// key is already bound to (same request hash).
    pub async fn commit_keyed(&self, req: &KeyedCommit) -> Result<PhotoInfo, ClientError> {
        self.post(url::photos(&self.base), req).await
    }

    /// Garbage collection: the photo, or a tombstone so that the id is never committed.
    pub async fn condemn(&self, id: u64) -> Result<CondemnResponse, ClientError> {
        self.post(url::condemn(&self.base, id), &serde_json::Value::Null)
            .await
    }

    pub async fn lookup(&self, id: u64) -> Result<PhotoInfo, ClientError> {
        self.get(url::photo(&self.base, id)).await
    }

    pub async fn read_url(&self, id: u64, alt: u32) -> Result<String, ClientError> {
        let r: UrlResponse = self.get(url::photo_url(&self.base, id, alt)).await?;
        Ok(r.url)
    }

    pub async fn delete(&self, id: u64) -> Result<DeleteResponse, ClientError> {
        let u = url::photo(&self.base, id);
        call(self.creds.apply(self.http.delete(&u)), &u).await
    }

    /// Reports a damaged or missing replica of a needle; the directory queues its repair.
    pub async fn report_damage(&self, r: &DamageReport) -> Result<DamageReply, ClientError> {
        self.post(url::repairs(&self.base), r).await
    }

    /// The queued repairs.
    pub async fn repairs(&self) -> Result<Vec<RepairTaskInfo>, ClientError> {
        self.get(url::repairs(&self.base)).await
    }

    pub async fn volumes(&self) -> Result<Vec<LogicalVolumeInfo>, ClientError> {
        self.get(url::volumes(&self.base)).await
    }

    pub async fn volume(&self, id: u32) -> Result<LogicalVolumeInfo, ClientError> {
        self.get(url::volume(&self.base, id)).await
    }

    /// The rebalance plan (`spread`: instead of the configured `rebalance_spread`).
    pub async fn rebalance_plan(
        &self,
        spread: Option<f64>,
    ) -> Result<haystack_proto::directory::RebalancePlan, ClientError> {
        self.get(url::rebalance(&self.base, spread)).await
    }

    /// Runs a rebalance plan now; what each move did.
    pub async fn rebalance(
        &self,
        spread: Option<f64>,
    ) -> Result<haystack_proto::directory::RebalancePlan, ClientError> {
        self.post(url::rebalance(&self.base, spread), &serde_json::json!({}))
            .await
    }

    /// Makes an asynchronous remote replica of volume `id` a replica (`haystack volume
    /// promote`).
    pub async fn promote_remote(
        &self,
        id: u32,
        store_id: u64,
    ) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(
            url::volume_promote(&self.base, id),
            &haystack_proto::directory::PromoteRequest { store_id },
        )
        .await
    }

    /// Creates a logical volume now (operators; volumes are otherwise created automatically).
    pub async fn create_volume(&self) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(url::volumes(&self.base), &serde_json::json!({}))
            .await
    }

    /// Sets a store's lifecycle: `draining` starts a drain, `active` stops one.
    pub async fn set_store_lifecycle(
        &self,
        id: u64,
        lifecycle: haystack_proto::directory::StoreLifecycle,
    ) -> Result<StoreInfo, ClientError> {
        self.post(
            url::store_lifecycle(&self.base, id),
            &haystack_proto::directory::StoreLifecycleRequest { lifecycle },
        )
        .await
    }

    /// Removes a store that holds nothing and is down from the records.
    pub async fn remove_store(&self, id: u64) -> Result<(), ClientError> {
        let u = url::store(&self.base, id);
        crate::http::send(self.creds.apply(self.http.delete(&u)), &u)
            .await
            .map(|_| ())
    }

    /// Sets a volume's recorded state (seal, read-only, writable again).
    pub async fn set_volume_state(
        &self,
        id: u32,
        state: VolumeState,
        reason: Option<String>,
    ) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(
            url::volume_state(&self.base, id),
            &VolumeStateRequest { state, reason },
        )
        .await
    }

    /// Erasure-codes sealed volume `id` (`POST /v1/volumes/{id}/encode`); answers when the
    /// shards serve and the replicas are dropped.
    pub async fn encode_volume(
        &self,
        id: u32,
        req: &haystack_proto::directory::EncodeRequest,
    ) -> Result<haystack_proto::directory::EncodeReport, ClientError> {
        self.post(url::volume_encode(&self.base, id), req).await
    }

    /// Rebuilds a shard of erasure-coded volume `id` on another store.
    pub async fn rebuild_shard(
        &self,
        id: u32,
        req: &haystack_proto::directory::EcRebuildRequest,
    ) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(url::volume_ec_rebuild(&self.base, id), req).await
    }

    /// Moves a replica of a volume from one store to another (repair).
    pub async fn replace_replica(
        &self,
        id: u32,
        from_store_id: u64,
        to_store_id: u64,
    ) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(
            url::volume_replace(&self.base, id),
            &ReplaceReplicaRequest {
                from_store_id,
                to_store_id,
            },
        )
        .await
    }

    pub async fn stores(&self) -> Result<Vec<StoreInfo>, ClientError> {
        self.get(url::stores(&self.base)).await
    }

    /// A record of an ordered keyspace; None when absent.
    pub async fn kv_get(&self, space: u64, key: &str) -> Result<Option<KvRecord>, ClientError> {
        match self.get(url::kv(&self.base, space, &[("key", key)])).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a record if it is at `expect_version` (absent when None).
    pub async fn kv_put(
        &self,
        space: u64,
        key: &str,
        expect_version: Option<u64>,
        value: String,
    ) -> Result<KvWriteResult, ClientError> {
        let u = url::kv(&self.base, space, &[("key", key)]);
        let body = KvPut {
            expect_version,
            value,
        };
        call(self.creds.apply(self.http.put(&u).json(&body)), &u).await
    }

    /// Removes a record if it is at `version`.
    pub async fn kv_delete(
        &self,
        space: u64,
        key: &str,
        version: u64,
    ) -> Result<KvWriteResult, ClientError> {
        let v = version.to_string();
        let u = url::kv(&self.base, space, &[("key", key), ("version", &v)]);
        call(self.creds.apply(self.http.delete(&u)), &u).await
    }

    /// Up to `limit` records whose key starts with `prefix` and sorts after `after`, in order.
    pub async fn kv_scan(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<KvRecord>, ClientError> {
        let l = limit.to_string();
        let u = url::kv_scan(
            &self.base,
            space,
            &[("prefix", prefix), ("after", after), ("limit", &l)],
        );
        let r: KvScan = self.get(u).await?;
        Ok(r.records)
    }

    /// `/health`; a degraded directory answers 503 with the same body, returned as `Api`.
    pub async fn health(&self) -> Result<DirectoryHealth, ClientError> {
        self.get(url::health(&self.base)).await
    }
}
