//! [`DirectoryClient`]: the client of the directory's HTTP API, used by the store (register,
//! heartbeat), the uploader (assign, commit), the cache (lookup, volume) and the operator
//! tools (volumes, state, replicas, condemn). It holds an ordered list of directory base URLs
//! and fails over between them (see [`DirectoryClient`] for which requests are sent again).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, CondemnResponse, DamageReply, DamageReport,
    DeleteResponse, DirectoryHealth, KeyedCommit, LiveRequest, LiveResponse, LogicalVolumeInfo,
    PhotoInfo, RepairTaskInfo, ReplaceReplicaRequest, StoreInfo, UrlResponse, VolumeStateRequest,
};
use haystack_proto::kv::{KvPut, KvRecord, KvReplace, KvReplaced, KvScan, KvWriteResult};
use haystack_proto::{Heartbeat, HeartbeatReply, StoreRegistered, StoreRegistration, VolumeState};
use serde::de::DeserializeOwned;

use crate::http::call;
use crate::urls::directory as url;
use crate::{ClientError, Credentials};

/// The directory URL of a role configured with none.
pub const DEFAULT_DIRECTORY_URL: &str = "http://127.0.0.1:8082";

/// Checks a list of directory base URLs: at least one, each `http://` or `https://` with a
/// host, none twice (a trailing `/` is ignored). Answers them without the trailing `/`, in
/// the order given; the error is a sentence naming the culprit.
pub fn check_urls(urls: &[String]) -> Result<Vec<String>, String> {
    if urls.is_empty() {
        return Err("no directory URL is given (at least one is needed)".to_string());
    }
    let mut out: Vec<String> = Vec::with_capacity(urls.len());
    for u in urls {
        let t = u.trim().trim_end_matches('/');
        let rest = t
            .strip_prefix("http://")
            .or_else(|| t.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            return Err(format!("directory URL {u:?} is not an http(s) URL"));
        }
        if out.iter().any(|o| o == t) {
            return Err(format!("directory URL {u:?} is listed twice"));
        }
        out.push(t.to_string());
    }
    Ok(out)
}

/// The directory URLs of a role's configuration, which has the single `directory_url` key
/// (kept for old files) and the list `directory_urls`: one of the two, or neither (then
/// [`DEFAULT_DIRECTORY_URL`]), never both. Checked by [`check_urls`].
pub fn resolve_urls(one: Option<&str>, list: Option<&[String]>) -> Result<Vec<String>, String> {
    match (one, list) {
        (Some(_), Some(_)) => {
            Err("set directory_url or directory_urls, not both (directory_urls is the list)".into())
        }
        (Some(u), None) => check_urls(&[u.to_string()]),
        (None, Some(l)) => check_urls(l),
        (None, None) => Ok(vec![DEFAULT_DIRECTORY_URL.to_string()]),
    }
}

/// Whether a request may be sent again to the next directory of the list after it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Repeating it changes nothing (a read, a heartbeat, an idempotent write): sent again
    /// after any transport error (refused, reset, timed out) or a 502, 503 or 504.
    Idempotent,
    /// Repeating it could do it twice: sent again only when the connection could not be made,
    /// so the first directory certainly never saw it.
    ConnectOnly,
}

impl Retry {
    fn fails_over(self, e: &ClientError) -> bool {
        match self {
            Retry::Idempotent => {
                matches!(e, ClientError::Transport(_) | ClientError::Conn { .. })
                    || matches!(e.status(), Some(502..=504))
            }
            Retry::ConnectOnly => e.is_connect(),
        }
    }
}

/// The list of directories, shared by a client's clones so that they all stick to the same.
#[derive(Debug)]
struct Directories {
    urls: Vec<String>,
    /// The index of the directory requests go to first: the last one that answered.
    current: AtomicUsize,
}

/// A failover counter a role hands in (its own metric).
type FailoverHook = Arc<dyn Fn() + Send + Sync>;

/// A client of the directory at one or several base URLs, e.g. `http://127.0.0.1:8080`.
///
/// Several URLs are an ordered list of equivalent directories (instances over one ScyllaDB
/// keyspace, or one directory behind several addresses). A request goes to the current one
/// (at first the first); when it fails in a way that allows it (below), it is sent to the
/// next one, each URL at most once per request, and the client (and its clones) then stays
/// with the one that answered, so a dead first directory costs one failed connection, not
/// one per request. An answer of a directory (any status but 502, 503, 504) ends the request
/// wherever it came from. When every directory failed, the error is the first answer a
/// directory gave (a 503 with its code) or, if none answered, the last transport error.
///
/// What is sent again, from reading the directory's handlers:
/// - after a transport error (refused, reset, timed out) or a 502, 503 or 504: the reads (every
///   GET), heartbeats, a registration that carries its store id, assign (writes nothing; a
///   lost answer wastes an id), commit (a create-if-absent: the same photo again answers the
///   stored one, a keyed commit of the same body answers its bound photo), condemn (a
///   condemned id answers `condemned` again), photo delete (a deleted photo is marked again
///   and its notifications resent), damage reports (a queued task is not queued twice),
///   volume state, store lifecycle and replica replacement (setting what is set is a no-op);
/// - only when the connection could not be made: a first registration (it mints a store id),
///   volume creation, store removal, the ordered keyspaces' conditional `kv_put` and
///   `kv_delete` (a repeat of an applied write answers "not applied"), and the long operator
///   actions (rebalance, promote, encode, shard rebuild), which a second directory would start
///   again beside the first.
#[derive(Clone)]
pub struct DirectoryClient {
    dirs: Arc<Directories>,
    http: reqwest::Client,
    creds: Credentials,
    role: &'static str,
    on_failover: Option<FailoverHook>,
}

impl std::fmt::Debug for DirectoryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryClient")
            .field("urls", &self.dirs.urls)
            .field("current", &self.base_url())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl DirectoryClient {
    /// A client of one directory with a 10 s request timeout.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self::with_http(base_url, http))
    }

    /// A client of one directory over an existing reqwest client (shares its connection pool
    /// and timeouts).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Self {
        Self::from_list(vec![base_url.trim_end_matches('/').to_string()], http)
    }

    /// A client of an ordered list of directories (checked by [`check_urls`]) over an
    /// existing reqwest client. Give that client a connect timeout: a failed connection is
    /// what lets every request, idempotent or not, move to the next directory.
    pub fn with_urls(urls: &[String], http: reqwest::Client) -> Result<Self, String> {
        Ok(Self::from_list(check_urls(urls)?, http))
    }

    fn from_list(urls: Vec<String>, http: reqwest::Client) -> Self {
        Self {
            dirs: Arc::new(Directories {
                urls,
                current: AtomicUsize::new(0),
            }),
            http,
            creds: Credentials::None,
            role: "client",
            on_failover: None,
        }
    }

    /// The same directories, the same choice among them (shared from now on) and the same
    /// credentials and failover counter, over another reqwest client (a worker thread's own
    /// connection pool).
    pub fn with_pool(&self, http: reqwest::Client) -> Self {
        Self {
            http,
            ..self.clone()
        }
    }

    /// The same client, proving `creds` on every call.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        self.creds = creds;
        self
    }

    /// The same client, naming `role` in its failover warnings and calling `count` once per
    /// failover (a request moving from one directory to the next): the role's counter.
    pub fn on_failover(
        mut self,
        role: &'static str,
        count: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        self.role = role;
        self.on_failover = Some(Arc::new(count));
        self
    }

    /// The directory requests go to first now (the last one that answered).
    pub fn base_url(&self) -> &str {
        let i = self.dirs.current.load(Ordering::Relaxed);
        self.dirs.urls.get(i).map_or("", |s| s.as_str())
    }

    /// Every directory, in the configured order.
    pub fn base_urls(&self) -> &[String] {
        &self.dirs.urls
    }

    /// Runs `attempt` against the current directory, then, while `retry` allows, the next
    /// ones (each once); remembers the one that answered.
    async fn failover<T, F, Fut>(&self, retry: Retry, attempt: F) -> Result<T, ClientError>
    where
        F: Fn(&str) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let urls = &self.dirs.urls;
        let n = urls.len().max(1);
        let start = self.dirs.current.load(Ordering::Relaxed) % n;
        let mut answered: Option<ClientError> = None;
        let mut i = 0;
        loop {
            let idx = (start + i) % n;
            let base = urls.get(idx).map_or("", |s| s.as_str());
            let r = attempt(base).await;
            let e = match r {
                Err(e) if retry.fails_over(&e) => e,
                r => {
                    // An answer (or a transport error that may not be retried): this directory
                    // is the one to ask first from now on if it answered.
                    let spoke =
                        !matches!(r, Err(ClientError::Transport(_) | ClientError::Conn { .. }));
                    if spoke && idx != start {
                        self.dirs.current.store(idx, Ordering::Relaxed);
                    }
                    return r;
                }
            };
            i += 1;
            if i >= n {
                return Err(answered.unwrap_or(e));
            }
            let next = urls.get((start + i) % n).map_or("", |s| s.as_str());
            tracing::warn!(
                role = self.role,
                failed_url = base,
                next_url = next,
                error = %e,
                "directory request failed; trying the next directory"
            );
            if let Some(count) = &self.on_failover {
                count();
            }
            if answered.is_none() && matches!(e, ClientError::Api { .. }) {
                answered = Some(e);
            }
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        url_of: impl Fn(&str) -> String,
    ) -> Result<T, ClientError> {
        self.failover(Retry::Idempotent, |base| {
            let u = url_of(base);
            async move { call(self.creds.apply(self.http.get(&u)), &u).await }
        })
        .await
    }

    async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        retry: Retry,
        url_of: impl Fn(&str) -> String,
        body: &B,
    ) -> Result<T, ClientError> {
        self.failover(retry, |base| {
            let u = url_of(base);
            async move { call(self.creds.apply(self.http.post(&u).json(body)), &u).await }
        })
        .await
    }

    /// Registers a store. With its id it is an update (sent again like a heartbeat); without,
    /// the directory mints an id, so it moves on only when the connection failed.
    pub async fn register(&self, req: &StoreRegistration) -> Result<StoreRegistered, ClientError> {
        let retry = if req.store_id.is_some() {
            Retry::Idempotent
        } else {
            Retry::ConnectOnly
        };
        self.post(retry, url::register, req).await
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, ClientError> {
        self.post(Retry::Idempotent, |b| url::heartbeat(b, hb.store_id), hb)
            .await
    }

    /// A fresh id and cookie on a writable volume (or a replay under an idempotency key).
    /// Nothing is written by it, so it is sent again like a read.
    pub async fn assign(&self, req: &AssignRequest) -> Result<AssignResponse, ClientError> {
        self.post(Retry::Idempotent, url::assign, req).await
    }

    /// Commits a photo; idempotent on the directory's side (the same photo again answers
    /// the stored one), so it is sent again like a read.
    pub async fn commit(&self, req: &CommitRequest) -> Result<PhotoInfo, ClientError> {
        self.post(Retry::Idempotent, url::photos, req).await
    }

    /// A commit that binds an idempotency key: the answer may be another photo, the one the
    /// key is already bound to (same request hash).
    pub async fn commit_keyed(&self, req: &KeyedCommit) -> Result<PhotoInfo, ClientError> {
        self.post(Retry::Idempotent, url::photos, req).await
    }

    /// Garbage collection: the photo, or a tombstone so that the id is never committed.
    pub async fn condemn(&self, id: u64) -> Result<CondemnResponse, ClientError> {
        self.post(
            Retry::Idempotent,
            |b| url::condemn(b, id),
            &serde_json::Value::Null,
        )
        .await
    }

    pub async fn lookup(&self, id: u64) -> Result<PhotoInfo, ClientError> {
        self.get(|b| url::photo(b, id)).await
    }

    /// Which of `ids` (at most [`haystack_proto::directory::MAX_LIVE_BATCH`]) are live photos,
    /// with their volume and cookie: one request for many lookups.
    pub async fn live(&self, ids: &[u64]) -> Result<LiveResponse, ClientError> {
        let req = LiveRequest { ids: ids.to_vec() };
        self.post(Retry::Idempotent, url::photos_live, &req).await
    }

    pub async fn read_url(&self, id: u64, alt: u32) -> Result<String, ClientError> {
        let r: UrlResponse = self.get(|b| url::photo_url(b, id, alt)).await?;
        Ok(r.url)
    }

    pub async fn delete(&self, id: u64) -> Result<DeleteResponse, ClientError> {
        self.failover(Retry::Idempotent, |base| {
            let u = url::photo(base, id);
            async move { call(self.creds.apply(self.http.delete(&u)), &u).await }
        })
        .await
    }

    /// Reports a damaged or missing replica of a needle; the directory queues its repair.
    pub async fn report_damage(&self, r: &DamageReport) -> Result<DamageReply, ClientError> {
        self.post(Retry::Idempotent, url::repairs, r).await
    }

    /// The queued repairs.
    pub async fn repairs(&self) -> Result<Vec<RepairTaskInfo>, ClientError> {
        self.get(url::repairs).await
    }

    pub async fn volumes(&self) -> Result<Vec<LogicalVolumeInfo>, ClientError> {
        self.get(url::volumes).await
    }

    pub async fn volume(&self, id: u32) -> Result<LogicalVolumeInfo, ClientError> {
        self.get(|b| url::volume(b, id)).await
    }

    /// The rebalance plan (`spread`: instead of the configured `rebalance_spread`).
    pub async fn rebalance_plan(
        &self,
        spread: Option<f64>,
    ) -> Result<haystack_proto::directory::RebalancePlan, ClientError> {
        self.get(|b| url::rebalance(b, spread)).await
    }

    /// Runs a rebalance plan now; what each move did.
    pub async fn rebalance(
        &self,
        spread: Option<f64>,
    ) -> Result<haystack_proto::directory::RebalancePlan, ClientError> {
        self.post(
            Retry::ConnectOnly,
            |b| url::rebalance(b, spread),
            &serde_json::json!({}),
        )
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
            Retry::ConnectOnly,
            |b| url::volume_promote(b, id),
            &haystack_proto::directory::PromoteRequest { store_id },
        )
        .await
    }

    /// Creates a logical volume now (operators; volumes are otherwise created automatically).
    pub async fn create_volume(&self) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(Retry::ConnectOnly, url::volumes, &serde_json::json!({}))
            .await
    }

    /// Sets a store's lifecycle: `draining` starts a drain, `active` stops one.
    pub async fn set_store_lifecycle(
        &self,
        id: u64,
        lifecycle: haystack_proto::directory::StoreLifecycle,
    ) -> Result<StoreInfo, ClientError> {
        self.post(
            Retry::Idempotent,
            |b| url::store_lifecycle(b, id),
            &haystack_proto::directory::StoreLifecycleRequest { lifecycle },
        )
        .await
    }

    /// Removes a store that holds nothing and is down from the records.
    pub async fn remove_store(&self, id: u64) -> Result<(), ClientError> {
        self.failover(Retry::ConnectOnly, |base| {
            let u = url::store(base, id);
            async move {
                crate::http::send(self.creds.apply(self.http.delete(&u)), &u)
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// Sets a volume's recorded state (seal, read-only, writable again).
    pub async fn set_volume_state(
        &self,
        id: u32,
        state: VolumeState,
        reason: Option<String>,
    ) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(
            Retry::Idempotent,
            |b| url::volume_state(b, id),
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
        self.post(Retry::ConnectOnly, |b| url::volume_encode(b, id), req)
            .await
    }

    /// Rebuilds a shard of erasure-coded volume `id` on another store.
    pub async fn rebuild_shard(
        &self,
        id: u32,
        req: &haystack_proto::directory::EcRebuildRequest,
    ) -> Result<LogicalVolumeInfo, ClientError> {
        self.post(Retry::ConnectOnly, |b| url::volume_ec_rebuild(b, id), req)
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
            Retry::Idempotent,
            |b| url::volume_replace(b, id),
            &ReplaceReplicaRequest {
                from_store_id,
                to_store_id,
            },
        )
        .await
    }

    pub async fn stores(&self) -> Result<Vec<StoreInfo>, ClientError> {
        self.get(url::stores).await
    }

    /// A record of an ordered keyspace; None when absent.
    pub async fn kv_get(&self, space: u64, key: &str) -> Result<Option<KvRecord>, ClientError> {
        match self.get(|b| url::kv(b, space, &[("key", key)])).await {
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
        let body = KvPut {
            expect_version,
            value,
        };
        self.failover(Retry::ConnectOnly, |base| {
            let u = url::kv(base, space, &[("key", key)]);
            let body = &body;
            async move { call(self.creds.apply(self.http.put(&u).json(body)), &u).await }
        })
        .await
    }

    /// Writes a record whatever version it is at, after committing `commit` when given (one
    /// request: `PUT /v1/kv/{space}/replace`); answers the record replaced. A directory older
    /// than the route answers 404 or 405 ([`ClientError::is_unsupported`]): commit and write
    /// with [`DirectoryClient::commit`] and [`DirectoryClient::kv_put`] instead.
    pub async fn kv_replace(
        &self,
        space: u64,
        key: &str,
        value: String,
        commit: Option<CommitRequest>,
    ) -> Result<KvReplaced, ClientError> {
        let body = KvReplace { value, commit };
        self.failover(Retry::ConnectOnly, |base| {
            let u = url::kv_replace(base, space, key);
            let body = &body;
            async move { call(self.creds.apply(self.http.put(&u).json(body)), &u).await }
        })
        .await
    }

    /// Removes a record if it is at `version`.
    pub async fn kv_delete(
        &self,
        space: u64,
        key: &str,
        version: u64,
    ) -> Result<KvWriteResult, ClientError> {
        let v = version.to_string();
        self.failover(Retry::ConnectOnly, |base| {
            let u = url::kv(base, space, &[("key", key), ("version", &v)]);
            async move { call(self.creds.apply(self.http.delete(&u)), &u).await }
        })
        .await
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
        let r: KvScan = self
            .get(|b| {
                url::kv_scan(
                    b,
                    space,
                    &[("prefix", prefix), ("after", after), ("limit", &l)],
                )
            })
            .await?;
        Ok(r.records)
    }

    /// `/health` of the first directory that answers it healthy; a degraded directory answers
    /// 503 with the same body, returned as `Api` when no other one is healthy.
    pub async fn health(&self) -> Result<DirectoryHealth, ClientError> {
        self.get(url::health).await
    }
}

/// Calls `call` until it succeeds or fails with an error that is not
/// [`ClientError::is_retryable`] (a 503 such as `no_writable_volume` while the directory
/// creates volumes, or a directory briefly unreachable), pausing 100 ms and then twice as long
/// each time: `retries` retries, about 3 s for 5. The last error is returned. `what` names the
/// call in the log.
pub async fn retrying<T, F, Fut>(what: &str, retries: u32, call: F) -> Result<T, ClientError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 0..retries {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                tracing::info!(error = %e, what, "directory not ready; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    call().await
}
