//! [`StoreClient`]: the client of the store machines' HTTP API (docs/API.md, "Store machine"):
//! needle writes, reads and deletes, batch writes, and the volume administration the
//! directory and the operator tools use (create, list, seal, verify, compact, rebuild the
//! index, export, import, list needles, gc). One client serves every store: each call names
//! the store's base URL. The writes to every replica of a volume at once (the uploader's) are
//! here too.
//!
//! The store's answers to administration calls (verify, compaction and rebuild reports...) are
//! the store's types: those calls are generic over the type to decode, so that this crate does
//! not depend on the store.

use std::time::Duration;

use bytes::Bytes;
use haystack_proto::directory::Replica;
use haystack_proto::{NeedleAddr, VolumeInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::{api_error, call, send};
use crate::urls::{self, store as url};
use crate::{ClientError, Credentials, StoreReaders};

/// A client of the store machines over one reqwest client (one connection pool).
#[derive(Clone, Debug)]
pub struct StoreClient {
    http: reqwest::Client,
    timeout: Option<Duration>,
    creds: Credentials,
}

/// A needle read from a store: its bytes and the headers that describe them, as the store
/// sent them.
#[derive(Clone, Debug)]
pub struct NeedleBody {
    pub content_type: Option<Bytes>,
    pub etag: Option<Bytes>,
    pub data: Bytes,
}

impl NeedleBody {
    /// The content type, or `application/octet-stream` when the store sent none (or one that
    /// is not visible ASCII).
    pub fn content_type_str(&self) -> &str {
        self.content_type
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .unwrap_or("application/octet-stream")
    }
}

impl StoreClient {
    /// Requests use `http`'s own timeouts.
    pub fn new(http: reqwest::Client) -> Self {
        StoreClient {
            http,
            timeout: None,
            creds: Credentials::None,
        }
    }

    /// The same client, proving `creds` on every call.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        self.creds = creds;
        self
    }

    /// Every request gives up after `timeout` (the body included).
    pub fn with_timeout(http: reqwest::Client, timeout: Duration) -> Self {
        StoreClient {
            http,
            timeout: Some(timeout),
            creds: Credentials::None,
        }
    }

    /// Needle readers ([`StoreReaders`], for one runtime) that read as this client does: the
    /// same credentials, and its timeout ([`crate::reader::DEFAULT_TIMEOUT`] when it has none).
    pub fn readers(&self) -> StoreReaders {
        StoreReaders::new(
            self.timeout.unwrap_or(crate::reader::DEFAULT_TIMEOUT),
            self.creds.clone(),
        )
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.creds.apply(self.http.request(method, url));
        match self.timeout {
            Some(t) => r.timeout(t),
            None => r,
        }
    }

    /// Writes one needle (`PUT /v1/needles/...`); Ok once the store answered 201 (durable).
    pub async fn put_needle(
        &self,
        store: &str,
        addr: &NeedleAddr,
        content_type: &str,
        data: Bytes,
    ) -> Result<(), ClientError> {
        let u = urls::needle(store, addr);
        let r = self
            .req(reqwest::Method::PUT, &u)
            .header("content-type", content_type)
            .body(data);
        send(r, &u).await.map(drop)
    }

    /// [`StoreClient::put_needle`] of a needle whose bytes are `parts` one after the other,
    /// sent as they are (hyper writes them with `writev`), never copied into one buffer.
    pub async fn put_needle_parts(
        &self,
        store: &str,
        addr: &NeedleAddr,
        content_type: &str,
        parts: &[Bytes],
    ) -> Result<(), ClientError> {
        if let [one] = parts {
            return self
                .put_needle(store, addr, content_type, one.clone())
                .await;
        }
        let len: usize = parts.iter().map(Bytes::len).sum();
        let frames = parts
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .map(Ok::<Bytes, std::convert::Infallible>)
            .collect::<Vec<_>>();
        let u = urls::needle(store, addr);
        // The length is known: said in the header, hyper sends the body with it rather than
        // chunked (the store reads a needle body of a declared length).
        let r = self
            .req(reqwest::Method::PUT, &u)
            .header("content-type", content_type)
            .header("content-length", len)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                frames,
            )));
        send(r, &u).await.map(drop)
    }

    /// Writes a batch body (`haystack_proto::batch`) to volume `volume`; Ok once the store
    /// answered 201 (every needle durable).
    pub async fn put_batch(
        &self,
        store: &str,
        volume: u32,
        body: Bytes,
    ) -> Result<(), ClientError> {
        let u = url::volume_op(store, volume, "batch");
        let r = self
            .req(reqwest::Method::POST, &u)
            .header("content-type", "application/octet-stream")
            .body(body);
        send(r, &u).await.map(drop)
    }

    /// Reads a needle whole.
    pub async fn get_needle(
        &self,
        store: &str,
        addr: &NeedleAddr,
    ) -> Result<NeedleBody, ClientError> {
        self.read(store, addr, None).await
    }

    /// Reads bytes `first..=last` of a needle (fewer when it is shorter).
    pub async fn get_needle_range(
        &self,
        store: &str,
        addr: &NeedleAddr,
        first: u64,
        last: u64,
    ) -> Result<NeedleBody, ClientError> {
        self.read(store, addr, Some(format!("bytes={first}-{last}")))
            .await
    }

    async fn read(
        &self,
        store: &str,
        addr: &NeedleAddr,
        range: Option<String>,
    ) -> Result<NeedleBody, ClientError> {
        let u = urls::needle(store, addr);
        let mut r = self.req(reqwest::Method::GET, &u);
        if let Some(range) = range {
            r = r.header("range", range);
        }
        let resp = r.send().await?;
        if !resp.status().is_success() {
            return Err(api_error(resp, &u).await);
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| Bytes::copy_from_slice(v.as_bytes()))
        };
        let content_type = header("content-type");
        let etag = header("etag");
        let data = resp.bytes().await?;
        Ok(NeedleBody {
            content_type,
            etag,
            data,
        })
    }

    /// Deletes a needle. A 404 is an error ([`ClientError::is_not_found`]): callers that
    /// only want it gone take it as done.
    pub async fn delete_needle(&self, store: &str, addr: &NeedleAddr) -> Result<(), ClientError> {
        let u = urls::needle(store, addr);
        send(self.req(reqwest::Method::DELETE, &u), &u)
            .await
            .map(drop)
    }

    /// Creates volume `id` on the store now (`POST /v1/volumes/{id}`).
    pub async fn create_volume(&self, store: &str, id: u32) -> Result<(), ClientError> {
        let u = url::volume(store, id);
        send(self.req(reqwest::Method::POST, &u), &u)
            .await
            .map(drop)
    }

    /// The store's volumes (`GET /v1/volumes`).
    pub async fn volumes(&self, store: &str) -> Result<Vec<VolumeInfo>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Listing {
            volumes: Vec<VolumeInfo>,
        }
        let u = url::volumes(store);
        let l: Listing = call(self.req(reqwest::Method::GET, &u), &u).await?;
        Ok(l.volumes)
    }

    /// One volume (`GET /v1/volumes/{id}`).
    pub async fn volume(&self, store: &str, id: u32) -> Result<VolumeInfo, ClientError> {
        let u = url::volume(store, id);
        call(self.req(reqwest::Method::GET, &u), &u).await
    }

    async fn post_op<B: Serialize, T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
        op: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let u = url::volume_op(store, id, op);
        let mut r = self.req(reqwest::Method::POST, &u);
        if let Some(b) = body {
            r = r.json(b);
        }
        call(r, &u).await
    }

    /// Seals the volume (read-only for good).
    pub async fn seal(&self, store: &str, id: u32) -> Result<VolumeInfo, ClientError> {
        self.post_op::<(), _>(store, id, "seal", None).await
    }

    /// A full CRC scan of the volume; `T` is the store's verify report.
    pub async fn verify<T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
    ) -> Result<T, ClientError> {
        self.post_op::<(), _>(store, id, "verify", None).await
    }

    /// Compacts the volume; answers when it is done. `T` is the store's compaction report.
    pub async fn compact<T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
    ) -> Result<T, ClientError> {
        self.post_op::<(), _>(store, id, "compact", None).await
    }

    /// Rebuilds the volume's index from its file; `T` is the store's rebuild report.
    pub async fn rebuild_index<T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
    ) -> Result<T, ClientError> {
        self.post_op::<(), _>(store, id, "rebuild-index", None)
            .await
    }

    /// Makes the store copy volume `id` from the store at `from` (its export) and open it.
    pub async fn import(
        &self,
        store: &str,
        id: u32,
        from: &str,
    ) -> Result<VolumeInfo, ClientError> {
        let body = serde_json::json!({ "from": from });
        self.post_op(store, id, "import", Some(&body)).await
    }

    /// Seeds (or, with `replace`, re-seeds) an asynchronous remote replica of volume `id` on
    /// `store` from `from`'s export; it is marked a remote copy before it opens.
    pub async fn import_remote_copy(
        &self,
        store: &str,
        id: u32,
        from: &str,
        replace: bool,
    ) -> Result<VolumeInfo, ClientError> {
        let body = serde_json::json!({ "from": from, "remote_copy": true, "replace": replace });
        self.post_op(store, id, "import", Some(&body)).await
    }

    /// Makes the remote copy of volume `id` on `store` an ordinary replica (after the
    /// directory promoted it).
    pub async fn promote_remote_copy(
        &self,
        store: &str,
        id: u32,
    ) -> Result<VolumeInfo, ClientError> {
        self.post_op::<(), _>(store, id, "promote", None).await
    }

    /// Where the asynchronous remote replica of volume `id` on `store` stands.
    pub async fn ship_position(
        &self,
        store: &str,
        id: u32,
    ) -> Result<haystack_proto::ShipPosition, ClientError> {
        let u = url::ship(store, id, None);
        call(self.req(reqwest::Method::GET, &u), &u).await
    }

    /// Appends shipped bytes at `offset` of the remote replica; its new position.
    pub async fn ship_append(
        &self,
        store: &str,
        id: u32,
        offset: u64,
        bytes: Bytes,
    ) -> Result<haystack_proto::ShipPosition, ClientError> {
        let u = url::ship(store, id, Some(offset));
        call(
            self.req(reqwest::Method::POST, &u)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
            &u,
        )
        .await
    }

    /// Drops a sealed replica of volume `id` (`DELETE /v1/volumes/{id}`: after the volume was
    /// erasure-coded and the directory switched to its shards).
    pub async fn drop_volume(&self, store: &str, id: u32) -> Result<(), ClientError> {
        let u = url::volume(store, id);
        send(self.req(reqwest::Method::DELETE, &u), &u)
            .await
            .map(drop)
    }

    /// Drops a store's copy of volume `id` that a move replaced, in whatever state it is
    /// (`DELETE /v1/volumes/{id}?moved=true`).
    pub async fn drop_moved_copy(&self, store: &str, id: u32) -> Result<(), ClientError> {
        let u = format!("{}?moved=true", url::volume(store, id));
        send(self.req(reqwest::Method::DELETE, &u), &u)
            .await
            .map(drop)
    }

    /// A POST to an erasure-coded volume's operation with a JSON body; `T` is the store's
    /// answer (`build`, `install`, `verify`, `rebuild`, `manifest`).
    pub async fn ec_op<B: Serialize, T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
        op: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let u = url::ec(store, id, Some(op));
        call(self.req(reqwest::Method::POST, &u).json(body), &u).await
    }

    /// Tells a shard store where every shard of an erasure-coded volume is now
    /// (`PUT /v1/ec/{id}/manifest`, body `{"shards": [...]}`); `T` is its answer.
    pub async fn ec_put_manifest<B: Serialize, T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
        body: &B,
    ) -> Result<T, ClientError> {
        let u = url::ec(store, id, Some("manifest"));
        call(self.req(reqwest::Method::PUT, &u).json(body), &u).await
    }

    /// A GET of an erasure-coded volume's description (`op` None) or listing; `T` decodes it.
    pub async fn ec_get<T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
        op: Option<&str>,
    ) -> Result<T, ClientError> {
        let u = url::ec(store, id, op);
        call(self.req(reqwest::Method::GET, &u), &u).await
    }

    /// The index file of a store's erasure-coded volume (`GET /v1/ec/{id}/index`).
    pub async fn ec_index(&self, store: &str, id: u32) -> Result<Bytes, ClientError> {
        let u = url::ec(store, id, Some("index"));
        let r = send(self.req(reqwest::Method::GET, &u), &u).await?;
        Ok(r.bytes().await?)
    }

    /// A staged file of an erasure-coding build, as a stream.
    pub async fn ec_staged(
        &self,
        store: &str,
        id: u32,
        generation: u32,
        name: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let u = url::ec_staged(store, id, generation, Some(name));
        send(self.req(reqwest::Method::GET, &u), &u).await
    }

    /// Drops the staged files of a build.
    pub async fn ec_drop_staged(
        &self,
        store: &str,
        id: u32,
        generation: u32,
    ) -> Result<(), ClientError> {
        let u = url::ec_staged(store, id, generation, None);
        send(self.req(reqwest::Method::DELETE, &u), &u)
            .await
            .map(drop)
    }

    /// Raw bytes `offset..offset + len` of shard `shard`'s data (fewer at its end): what a
    /// degraded read or a rebuild fetches. `checked`: the store answers them only when every
    /// 1 MiB piece they lie in matches its shard's CRC table (500 `corrupt_needle` otherwise).
    pub async fn ec_shard_range(
        &self,
        store: &str,
        id: u32,
        shard: usize,
        generation: u32,
        (offset, len): (u64, u64),
        checked: bool,
    ) -> Result<Bytes, ClientError> {
        let u = url::ec_shard_range(store, id, shard, generation, (offset, len), checked);
        let r = send(self.req(reqwest::Method::GET, &u), &u).await?;
        Ok(r.bytes().await?)
    }

    /// The volume file as a stream (`GET /v1/volumes/{id}/export`): the answer once its
    /// status is a success, for the caller to read with `bytes_stream` or `chunk`.
    pub async fn export(&self, store: &str, id: u32) -> Result<reqwest::Response, ClientError> {
        let u = url::volume_op(store, id, "export");
        send(self.req(reqwest::Method::GET, &u), &u).await
    }

    /// The volume's needle listing (`GET /v1/volumes/{id}/needles`); `T` is the listing.
    pub async fn needles<T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
    ) -> Result<T, ClientError> {
        let u = url::volume_op(store, id, "needles");
        call(self.req(reqwest::Method::GET, &u), &u).await
    }

    /// The digest of the volume's needle list (`GET /v1/volumes/{id}/digest`); `T` is the
    /// store's `Digest`.
    pub async fn digest<T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
        buckets: u32,
    ) -> Result<T, ClientError> {
        let u = url::digest(store, id, buckets);
        call(self.req(reqwest::Method::GET, &u), &u).await
    }

    /// The needles of some digest buckets (at most
    /// `haystack_proto::directory::MAX_LISTED_BUCKETS`); `T` is the listing.
    pub async fn needles_in_buckets<T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
        bucket: &[u32],
        buckets: u32,
    ) -> Result<T, ClientError> {
        let u = url::needles_in_buckets(store, id, bucket, buckets);
        call(self.req(reqwest::Method::GET, &u), &u).await
    }

    /// Repairs needles of volume `id` from good copies (a batch body of needles read from
    /// another replica, `POST /v1/volumes/{id}/repair`); `T` is the store's answer.
    pub async fn repair<T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let u = url::volume_op(store, id, "repair");
        let r = self
            .req(reqwest::Method::POST, &u)
            .header("content-type", "application/octet-stream")
            .body(body);
        call(r, &u).await
    }

    /// Garbage collection: deletes the needles `body` lists (`POST /v1/volumes/{id}/gc`).
    pub async fn gc<B: Serialize, T: DeserializeOwned>(
        &self,
        store: &str,
        id: u32,
        body: &B,
    ) -> Result<T, ClientError> {
        self.post_op(store, id, "gc", Some(body)).await
    }
}

/// One needle to write: the alternate key, the media type stored with it, the bytes.
#[derive(Clone, Debug)]
pub struct Needle {
    pub alt: u32,
    pub content_type: String,
    pub data: Bytes,
}

/// Encodes needles of one photo as a store batch body (`haystack_proto::batch`).
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

/// How many replicas must acknowledge a write before it is committed (`Haystack-Write-Ack`,
/// the uploader's `write_ack`). Ordered from the weakest to the strictest.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WriteAck {
    /// One replica.
    One,
    /// A majority of the replicas (2 of 3, 2 of 2).
    Quorum,
    /// Every replica (the default).
    #[default]
    All,
}

impl WriteAck {
    /// Replicas that must acknowledge, of `n`.
    pub fn needed(self, n: usize) -> usize {
        match self {
            WriteAck::One => n.min(1),
            WriteAck::Quorum => n / 2 + 1,
            WriteAck::All => n,
        }
        .min(n)
    }
}

impl std::str::FromStr for WriteAck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "one" => Ok(WriteAck::One),
            "quorum" => Ok(WriteAck::Quorum),
            "all" => Ok(WriteAck::All),
            other => Err(format!(
                "write acknowledgement {other:?} is not one of all, quorum, one"
            )),
        }
    }
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
    fn of(replica: &str, e: ClientError) -> Self {
        let (status, code, detail) = match &e {
            ClientError::Api { status, body, .. } => (
                Some(*status),
                (body.error != "http").then(|| body.error.clone()),
                format!("{status}: {}", body.message),
            ),
            other => (None, None, other.to_string()),
        };
        ReplicaError {
            url: replica.to_string(),
            status,
            code,
            detail,
        }
    }

    /// A store's 413: the needle can never fit, on any volume.
    pub fn is_too_large(&self) -> bool {
        self.status == Some(413)
    }

    /// The replica answered that it will not take this write, however often asked: any 4xx
    /// but 408 and 429 (409 `read_only`, 413 `too_large`, 404 `no_such_volume`...) and any
    /// 5xx but 502, 503 and 504 (507 `volume_full`, 500 `disk_error`, after which the volume
    /// stays read-only). Not a transport failure or a timeout: a replica that is slow, away
    /// or briefly unavailable may take the needles later (a repair copy); one that refuses
    /// never does.
    pub fn is_definitive(&self) -> bool {
        self.status
            .is_some_and(|s| s >= 400 && !matches!(s, 408 | 429 | 502 | 503 | 504))
    }
}

impl StoreClient {
    /// The batch to every replica at once; Ok only when every one acknowledged. The errors of
    /// the replicas that failed otherwise.
    pub async fn write_batch_all(
        &self,
        replicas: &[Replica],
        volume: u32,
        body: Bytes,
    ) -> Result<(), Vec<ReplicaError>> {
        let writes = replicas.iter().map(|r| {
            let body = body.clone();
            async move {
                self.put_batch(&r.url, volume, body)
                    .await
                    .map_err(|e| ReplicaError::of(&r.url, e))
            }
        });
        collect(futures_util::future::join_all(writes).await)
    }

    /// The batch to every replica at once, acknowledged per `ack`: Ok once that many replicas
    /// answered 201, with the store ids of the replicas that had not (yet) answered, or
    /// failed in a way that may pass (a transport error, a timeout, a 503: the directory's
    /// repair worker copies the needles onto them later). The writes still under way go on
    /// in the background; their outcome is not waited for. Err with the failures once too
    /// many replicas failed for `ack` to be met, or as soon as one replica refused for good
    /// ([`ReplicaError::is_definitive`]: a sealed or full volume, which no repair copy
    /// could fill either), as with [`WriteAck::All`]: the caller moves to another volume.
    /// A refusal that arrives after the acknowledgements can no longer fail the write: it
    /// is logged (`warn`) with the replica.
    pub async fn write_batch_acked(
        &self,
        replicas: &[Replica],
        volume: u32,
        body: Bytes,
        ack: WriteAck,
    ) -> Result<Vec<u64>, Vec<ReplicaError>> {
        if ack == WriteAck::All {
            return self
                .write_batch_all(replicas, volume, body)
                .await
                .map(|()| Vec::new());
        }
        let need = ack.needed(replicas.len());
        let mut pending: futures_util::stream::FuturesUnordered<_> = replicas
            .iter()
            .map(|r| {
                let (client, body, r) = (self.clone(), body.clone(), r.clone());
                tokio::spawn(async move {
                    let res = client
                        .put_batch(&r.url, volume, body)
                        .await
                        .map_err(|e| ReplicaError::of(&r.url, e));
                    (r.store_id, res)
                })
            })
            .collect();
        let mut acked: Vec<u64> = Vec::new();
        let mut failed: Vec<ReplicaError> = Vec::new();
        let record = |joined, acked: &mut Vec<u64>, failed: &mut Vec<ReplicaError>| match joined {
            Ok((id, Ok(()))) => acked.push(id),
            Ok((_, Err(e))) => failed.push(e),
            Err(e) => failed.push(ReplicaError {
                url: String::new(),
                status: None,
                code: None,
                detail: format!("write task failed: {e}"),
            }),
        };
        while let Some(joined) = futures_util::StreamExt::next(&mut pending).await {
            record(joined, &mut acked, &mut failed);
            if failed.iter().any(ReplicaError::is_definitive) {
                return Err(failed);
            }
            if acked.len() >= need {
                // Answers already in count too: a refusal that came with the last
                // acknowledgement is not named pending.
                while let Some(Some(joined)) = futures_util::FutureExt::now_or_never(
                    futures_util::StreamExt::next(&mut pending),
                ) {
                    record(joined, &mut acked, &mut failed);
                }
                if failed.iter().any(ReplicaError::is_definitive) {
                    return Err(failed);
                }
                if !pending.is_empty() {
                    tokio::spawn(async move {
                        while let Some(joined) = futures_util::StreamExt::next(&mut pending).await {
                            if let Ok((_, Err(e))) = joined {
                                if e.is_definitive() {
                                    tracing::warn!(volume, replica = %e.url, error = %e.detail, "a replica refused a batch after the write was acknowledged; the directory's repair cannot copy onto it");
                                }
                            }
                        }
                    });
                }
                return Ok(replicas
                    .iter()
                    .map(|r| r.store_id)
                    .filter(|id| !acked.contains(id))
                    .collect());
            }
            if failed.len() > replicas.len() - need {
                return Err(failed);
            }
        }
        Err(failed)
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
        let addr = NeedleAddr::new(volume, key, needle.alt, cookie);
        let writes = replicas.iter().map(|r| async move {
            self.put_needle(&r.url, &addr, &needle.content_type, needle.data.clone())
                .await
                .map_err(|e| ReplicaError::of(&r.url, e))
        });
        collect(futures_util::future::join_all(writes).await)
    }

    /// [`StoreClient::put_needle_all`] of a needle whose bytes are `parts` one after the
    /// other ([`StoreClient::put_needle_parts`]: no copy into one buffer).
    #[allow(clippy::too_many_arguments)]
    pub async fn put_needle_parts_all(
        &self,
        replicas: &[Replica],
        volume: u32,
        key: u64,
        cookie: u64,
        alt: u32,
        content_type: &str,
        parts: &[Bytes],
    ) -> Result<(), Vec<ReplicaError>> {
        let addr = NeedleAddr::new(volume, key, alt, cookie);
        let writes = replicas.iter().map(|r| async move {
            self.put_needle_parts(&r.url, &addr, content_type, parts)
                .await
                .map_err(|e| ReplicaError::of(&r.url, e))
        });
        collect(futures_util::future::join_all(writes).await)
    }

    /// Reads up to `len` bytes from the start of a needle, trying the replicas in order: its
    /// content type and the bytes. None when no replica answers with the needle.
    pub async fn read_head(
        &self,
        replicas: &[Replica],
        addr: &NeedleAddr,
        len: u64,
    ) -> Option<(String, Bytes)> {
        for r in replicas {
            match self
                .get_needle_range(&r.url, addr, 0, len.saturating_sub(1))
                .await
            {
                Ok(n) => {
                    let ct = n
                        .content_type
                        .as_deref()
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .unwrap_or("application/octet-stream")
                        .to_string();
                    return Some((ct, n.data));
                }
                Err(e) => tracing::debug!(store = %r.url, error = %e, "needle read failed"),
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
