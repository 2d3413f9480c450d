//! The uploader's behaviour behind the HTTP layer: a photo (process, assign, write every needle
//! to every replica as one batch, commit, retry on another volume), a streamed video (chunks
//! written while the body arrives), lookups and deletes through the directory.
//!
//! The rule every path keeps: the directory commit happens only after every replica of the
//! assigned volume acknowledged every needle (the stores acknowledge after fdatasync), and a
//! success is answered only after the commit. Needles of a failed attempt stay behind as
//! orphans for garbage collection; they are never reachable through the directory.
//!
//! Idempotency: every attempt of every request writes under a fresh id, never under an id
//! another attempt or request wrote, so the needles of a committed photo are exactly the bytes
//! of the request that committed it. The client's key is bound to one photo by the commit
//! itself (the directory's compare-and-set, with a SHA-256 of the body): a later or racing
//! request with the same key and body is answered that photo, another body under the key 409.

use haystack_client::store::WriteAck;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use haystack_client::store::{encode_batch, Needle, ReplicaError};
use haystack_client::{ClientError, DirectoryClient, StoreClient};
use haystack_proto::directory::{
    dec_u64, AssignRequest, AssignResponse, CommitRequest, KeyedCommit, PhotoInfo, PhotoKind,
    Variant, VideoChunk,
};
use haystack_proto::needle::NEEDLES_PREFIX;
use haystack_proto::NeedleAddr;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::UploaderConfig;
use crate::error::UploaderError;
use crate::images::{self, EncodeOptions, ImageLimits, Processed};

/// The JSON answer for a photo (`POST /v1/photos`, `GET /v1/photos/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoResponse {
    #[serde(with = "dec_u64")]
    pub id: u64,
    /// Always `photo`.
    pub kind: PhotoKind,
    /// Absolute read URLs by variant name: `original` and every configured variant.
    pub urls: BTreeMap<String, String>,
    /// Display size of the original (EXIF orientation applied).
    pub width: u32,
    pub height: u32,
    /// Media type of the original as uploaded.
    pub content_type: String,
    /// Size of the original in bytes.
    pub bytes: u64,
}

/// The JSON answer for a video (`POST /v1/videos`, `GET /v1/photos/{id}` of a video).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoResponse {
    #[serde(with = "dec_u64")]
    pub id: u64,
    /// Always `video`.
    pub kind: PhotoKind,
    /// The whole video through the cache tier: `{base}/v1/videos/{volume}/{id}/{cookie}`
    /// (Range requests seek across chunks).
    pub url: String,
    pub content_type: String,
    pub bytes: u64,
    /// Number of chunks (needles) the video is stored as.
    pub chunks: u32,
}

/// Either answer, for `GET /v1/photos/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MediaResponse {
    Photo(PhotoResponse),
    Video(VideoResponse),
}

/// Whether an answer describes a new upload or replays an earlier one (Idempotency-Key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Replayed,
}

/// The uploader service: configuration, the directory and store clients, and the bound on
/// concurrent image work.
pub struct Uploader {
    cfg: Arc<UploaderConfig>,
    dir: DirectoryClient,
    stores: StoreClient,
    image_slots: Arc<Semaphore>,
    /// `image_memory_bytes` in MiB permits, reserved per photo for its estimated peak.
    image_memory: Arc<Semaphore>,
}

/// Bytes as permits of the image memory semaphore (MiB, rounded up; at most u32::MAX >> 4,
/// what `acquire_many` and the semaphore take).
fn memory_permits(bytes: u64) -> usize {
    bytes.div_ceil(1 << 20).min(u64::from(u32::MAX >> 4)) as usize
}

/// The longest client Idempotency-Key taken (the directory takes up to 255 bytes).
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The request digest bound with a key at commit: `sha256:` and the hex digest of the body.
fn request_hash(digest: Sha256) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.finalize() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// [`haystack_client::directory::retrying`], its last error as the uploader's.
async fn directory_retrying<T, F, Fut>(
    what: &str,
    retries: u32,
    call: F,
) -> Result<T, UploaderError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    haystack_client::directory::retrying(what, retries, call)
        .await
        .map_err(|e| UploaderError::from_directory(what, e))
}

/// Needle bytes on disk beyond the data (header, footer, padding; generous).
const NEEDLE_OVERHEAD: u64 = 64;

impl Uploader {
    /// A service over `cfg` (already validated).
    pub fn new(cfg: UploaderConfig) -> Result<Uploader, UploaderError> {
        let dir_http = cfg
            .security
            .http_builder()
            .timeout(Duration::from_millis(cfg.directory_timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| UploaderError::Config(format!("building the HTTP client: {e}")))?;
        let store_http = cfg
            .security
            .http_builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| UploaderError::Config(format!("building the HTTP client: {e}")))?;
        let creds = haystack_client::Credentials::internal(cfg.security.keys.as_ref(), "uploader");
        let dir = DirectoryClient::with_urls(&cfg.directories()?, dir_http)
            .map_err(UploaderError::Config)?
            .with_credentials(creds.clone())
            .on_failover("uploader", || {
                metrics::counter!("haystack_uploader_directory_failovers_total").increment(1)
            });
        Ok(Uploader {
            dir,
            stores: StoreClient::with_timeout(
                store_http,
                Duration::from_millis(cfg.store_timeout_ms),
            )
            .with_credentials(creds),
            image_slots: Arc::new(Semaphore::new(cfg.image_workers)),
            image_memory: Arc::new(Semaphore::new(memory_permits(cfg.image_memory_bytes))),
            cfg: Arc::new(cfg),
        })
    }

    pub fn config(&self) -> &UploaderConfig {
        &self.cfg
    }

    /// Decodes and resizes on a blocking thread, at most `image_workers` at once and within
    /// `image_memory_bytes` together (each reserves its estimated peak first, from its header,
    /// read on a blocking thread too). The reservations last as long as the work, even when
    /// the request is gone before it ends.
    async fn process(&self, body: Bytes) -> Result<Processed, UploaderError> {
        let limits = ImageLimits {
            max_pixels: self.cfg.max_pixels,
            max_dimension: self.cfg.max_dimension,
        };
        // The header alone: a body that is no image, or too large, is refused before it waits.
        let probe = {
            let body = body.clone();
            tokio::task::spawn_blocking(move || images::probe(&body, limits))
                .await
                .map_err(|e| UploaderError::Internal(format!("image task failed: {e}")))??
        };
        let need = memory_permits(images::decode_memory(
            probe.width as u64 * probe.height as u64,
            body.len() as u64,
        ));
        let budget = memory_permits(self.cfg.image_memory_bytes);
        if need > budget {
            // Not with a valid config (it holds the largest photo taken); kept as a guard.
            return Err(UploaderError::TooManyPixels {
                width: probe.width,
                height: probe.height,
                limit: format!(
                    "decoding it takes up to {need} MiB, over the uploader's image memory \
                     ({budget} MiB)"
                ),
            });
        }
        let memory = match self
            .image_memory
            .clone()
            .try_acquire_many_owned(need as u32)
        {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!("haystack_uploader_image_memory_waits_total").increment(1);
                self.image_memory
                    .clone()
                    .acquire_many_owned(need as u32)
                    .await
                    .map_err(|_| UploaderError::Unavailable("shutting down".into()))?
            }
        };
        let slot = self
            .image_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| UploaderError::Unavailable("shutting down".into()))?;
        let cfg = self.cfg.clone();
        let started = Instant::now();
        let res = tokio::task::spawn_blocking(move || {
            let _held = (memory, slot);
            images::process(
                &body,
                &cfg.variants,
                limits,
                EncodeOptions {
                    jpeg_quality: cfg.jpeg_quality,
                },
            )
        })
        .await
        .map_err(|e| UploaderError::Internal(format!("image task failed: {e}")))?;
        metrics::histogram!("haystack_uploader_image_seconds").record(started.elapsed());
        res
    }

    /// Uploads a photo: validates and makes its variants, then writes and commits them. With
    /// an idempotency key, a repeated request answers the photo the first one committed.
    pub async fn upload_photo(
        &self,
        body: Bytes,
        idempotency_key: Option<&str>,
        ack: Option<WriteAck>,
    ) -> Result<(PhotoResponse, Outcome), UploaderError> {
        let ack = ack.map_or(self.cfg.write_ack, |a| a.max(self.cfg.write_ack));
        let original_len = body.len() as u64;
        let hash = match idempotency_key {
            Some(_) => {
                let b = body.clone();
                Some(
                    tokio::task::spawn_blocking(move || request_hash(Sha256::new_with_prefix(&b)))
                        .await
                        .map_err(|e| UploaderError::Internal(format!("hash task failed: {e}")))?,
                )
            }
            None => None,
        };
        let p = self.process(body.clone()).await?;
        let mut needles = Vec::with_capacity(1 + p.variants.len());
        needles.push(Needle {
            alt: 0,
            content_type: p.format.mime().to_string(),
            data: body,
        });
        let mut variants = vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: original_len,
            content_type: p.format.mime().to_string(),
        }];
        for r in &p.variants {
            variants.push(Variant {
                name: r.name.clone(),
                alt: r.alt,
                size_bytes: r.data.len() as u64,
                content_type: r.content_type.to_string(),
            });
        }
        let (width, height, format) = (p.width, p.height, p.format);
        needles.extend(p.variants.into_iter().map(|r| Needle {
            alt: r.alt,
            content_type: r.content_type.to_string(),
            data: Bytes::from(r.data),
        }));
        let size_hint: u64 = needles
            .iter()
            .map(|n| n.data.len() as u64 + NEEDLE_OVERHEAD)
            .sum();
        let answer = |info: &PhotoInfo| PhotoResponse {
            id: info.id,
            kind: PhotoKind::Photo,
            urls: info
                .variants
                .iter()
                .map(|v| (v.name.clone(), v.url.clone()))
                .collect(),
            width,
            height,
            content_type: format.mime().to_string(),
            bytes: original_len,
        };

        let mut failures: Vec<String> = Vec::new();
        let mut failed_volumes: Vec<u32> = Vec::new();
        for attempt in 0..self.cfg.write_attempts {
            // Every attempt asks with the client's key: once any request has committed under
            // it, that photo is the answer and nothing more is written.
            let a = self
                .assign(
                    PhotoKind::Photo,
                    size_hint,
                    idempotency_key.map(str::to_string),
                    &failed_volumes,
                )
                .await?;
            if a.replayed {
                let info = self.committed(&a, PhotoKind::Photo).await?;
                let other_body = match (&a.request_hash, &hash) {
                    (Some(theirs), Some(ours)) => theirs != ours,
                    // Bound without a digest (an earlier version): compare sizes.
                    _ => info
                        .variants
                        .iter()
                        .any(|v| v.alt == 0 && v.size_bytes != original_len),
                };
                if other_body {
                    return Err(UploaderError::Conflict(
                        "the Idempotency-Key was used for another photo".into(),
                    ));
                }
                tracing::info!(id = info.id, "photo upload replayed");
                return Ok((answer(&info), Outcome::Replayed));
            }
            let batch = encode_batch(a.id, a.cookie, &needles);
            let written = if a.replicas.is_empty() {
                Err(vec![ReplicaError {
                    url: String::new(),
                    status: None,
                    code: None,
                    detail: format!("volume {} has no replicas", a.volume_id),
                }])
            } else {
                self.stores
                    .write_batch_acked(&a.replicas, a.volume_id, batch, ack)
                    .await
            };
            let pending_replicas = match written {
                Ok(pending) => {
                    if !pending.is_empty() {
                        metrics::counter!("haystack_uploader_partial_writes_total").increment(1);
                        tracing::info!(id = a.id, volume = a.volume_id, ?pending, ?ack, "photo committed before every replica acknowledged; the directory repairs the rest");
                    }
                    metrics::counter!("haystack_uploader_bytes_written_total")
                        .increment(size_hint * a.replicas.len() as u64);
                    pending
                }
                Err(errs) => {
                    if errs.iter().any(ReplicaError::is_too_large) {
                        return Err(UploaderError::TooLarge { max: original_len });
                    }
                    let detail = errs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::warn!(
                        id = a.id,
                        volume = a.volume_id,
                        attempt,
                        error = %detail,
                        "photo write failed; retrying on another volume"
                    );
                    metrics::counter!("haystack_uploader_write_retries_total").increment(1);
                    failures.push(format!("volume {}: {detail}", a.volume_id));
                    failed_volumes.push(a.volume_id);
                    continue;
                }
            };
            let info = self
                .commit(KeyedCommit {
                    commit: CommitRequest {
                        id: a.id,
                        cookie: a.cookie,
                        volume_id: a.volume_id,
                        kind: PhotoKind::Photo,
                        variants: variants.clone(),
                        chunks: Vec::new(),
                    },
                    idempotency_key: idempotency_key.map(str::to_string),
                    request_hash: hash.clone(),
                    pending_replicas,
                })
                .await?;
            if info.id != a.id {
                // A racing request with the same key and body committed first; this attempt's
                // needles are orphans for garbage collection.
                tracing::info!(
                    id = info.id,
                    orphan = a.id,
                    "photo upload replayed at commit"
                );
                return Ok((answer(&info), Outcome::Replayed));
            }
            metrics::counter!("haystack_uploader_photos_total").increment(1);
            tracing::info!(
                id = info.id,
                volume = info.volume_id,
                bytes = original_len,
                width,
                height,
                "photo committed"
            );
            return Ok((answer(&info), Outcome::Created));
        }
        metrics::counter!("haystack_uploader_write_failures_total").increment(1);
        Err(UploaderError::WriteFailed(format!(
            "no volume took the photo in {} attempts: {}",
            self.cfg.write_attempts,
            failures.join(" | ")
        )))
    }

    /// An assignment avoiding the volumes this upload already failed on. While the directory
    /// has no writable volume (they just filled up; it is creating new ones) or is briefly
    /// unreachable, waits with a growing pause, about 3 s in all, before giving up.
    async fn assign(
        &self,
        kind: PhotoKind,
        size_hint_bytes: u64,
        idempotency_key: Option<String>,
        exclude_volumes: &[u32],
    ) -> Result<AssignResponse, UploaderError> {
        let req = AssignRequest {
            kind,
            size_hint_bytes,
            idempotency_key,
            exclude_volumes: exclude_volumes.to_vec(),
        };
        directory_retrying("assigning a volume", 5, || self.dir.assign(&req)).await
    }

    /// For a replayed assignment: the photo the key is bound to. A deleted photo or one of
    /// the other kind is a conflict.
    async fn committed(
        &self,
        a: &AssignResponse,
        kind: PhotoKind,
    ) -> Result<PhotoInfo, UploaderError> {
        match self.dir.lookup(a.id).await {
            Ok(info) if info.kind == kind && info.cookie == a.cookie => Ok(info),
            Ok(_) => Err(UploaderError::Conflict(
                "the Idempotency-Key was used for another upload".into(),
            )),
            Err(ClientError::Api {
                status: 404, body, ..
            }) if body.error == "deleted" => Err(UploaderError::Conflict(
                "the Idempotency-Key belongs to a deleted upload".into(),
            )),
            Err(e) => Err(UploaderError::from_directory("looking up a replay", e)),
        }
    }

    /// Commits (binding the idempotency key, if any), retrying a few times when the directory
    /// is unreachable (commits are idempotent: the same photo again answers the stored one).
    async fn commit(&self, req: KeyedCommit) -> Result<PhotoInfo, UploaderError> {
        directory_retrying("committing", 3, || self.dir.commit_keyed(&req)).await
    }

    /// Uploads a video from a body stream: chunks of `video_chunk_bytes` are written to every
    /// replica while the next one is read, at most `video_chunks_in_flight` at once (so memory
    /// stays near `(in_flight + 1) × chunk` whatever the video's size), then committed. A video
    /// cannot move to another volume mid-stream: a failed chunk answers 503, nothing committed.
    pub async fn upload_video<S, E>(
        &self,
        content_type: String,
        declared_len: Option<u64>,
        mut body: S,
        idempotency_key: Option<&str>,
    ) -> Result<(VideoResponse, Outcome), UploaderError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let max = self.cfg.max_video_bytes;
        if declared_len.is_some_and(|n| n > max) {
            return Err(UploaderError::TooLarge { max });
        }
        let chunk_bytes = self.cfg.video_chunk_bytes as usize;
        let hint = declared_len.unwrap_or(chunk_bytes as u64);
        let chunks_hint = hint.div_ceil(chunk_bytes as u64).max(1);
        let a = self
            .assign(
                PhotoKind::Video,
                hint + chunks_hint * NEEDLE_OVERHEAD,
                idempotency_key.map(str::to_string),
                &[],
            )
            .await?;
        if a.replayed {
            let info = self.committed(&a, PhotoKind::Video).await?;
            tracing::info!(id = info.id, "video upload replayed");
            return Ok((
                video_answer(&self.config().security, &info, content_type),
                Outcome::Replayed,
            ));
        }
        let mut digest = idempotency_key.map(|_| Sha256::new());
        if a.replicas.is_empty() {
            return Err(UploaderError::WriteFailed(format!(
                "volume {} has no replicas",
                a.volume_id
            )));
        }
        let a = Arc::new(a);
        // Each chunk's write is a task of its own, so it goes on while the body is read (a
        // future here would only move while polled, and its store timeout would run out
        // while the client paused). Dropping the set (a failed upload) aborts the rest.
        let mut in_flight = tokio::task::JoinSet::new();
        let mut chunks: Vec<VideoChunk> = Vec::new();
        let mut buf = BytesMut::with_capacity(chunk_bytes);
        let mut total: u64 = 0;
        let mut ended = false;
        let idle = self.cfg.body_idle_timeout();
        while !ended {
            // Fill one chunk (or reach the end of the body).
            while buf.len() < chunk_bytes {
                let next = haystack_service::body::next_within(&mut body, idle)
                    .await
                    .map_err(|e| UploaderError::BodyTimeout(e.to_string()))?;
                match next {
                    Some(Ok(mut piece)) => {
                        total += piece.len() as u64;
                        if total > max {
                            return Err(UploaderError::TooLarge { max });
                        }
                        if let Some(d) = digest.as_mut() {
                            d.update(&piece);
                        }
                        while !piece.is_empty() {
                            let take = (chunk_bytes - buf.len()).min(piece.len());
                            buf.extend_from_slice(&piece.split_to(take));
                            if buf.len() == chunk_bytes && !piece.is_empty() {
                                // A full chunk and more bytes in hand: send this one first.
                                let data = std::mem::replace(
                                    &mut buf,
                                    BytesMut::with_capacity(chunk_bytes),
                                )
                                .freeze();
                                self.send_chunk(
                                    &a,
                                    &mut chunks,
                                    &mut in_flight,
                                    data,
                                    &content_type,
                                )
                                .await?;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        return Err(UploaderError::BadRequest(format!(
                            "reading the video body failed: {e}"
                        )))
                    }
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            if !buf.is_empty() {
                let cap = if ended { 0 } else { chunk_bytes };
                let data = std::mem::replace(&mut buf, BytesMut::with_capacity(cap)).freeze();
                self.send_chunk(&a, &mut chunks, &mut in_flight, data, &content_type)
                    .await?;
            }
        }
        if total == 0 {
            return Err(UploaderError::BadRequest("the video body is empty".into()));
        }
        while let Some(r) = in_flight.join_next().await {
            chunk_written(r)?;
        }
        let n_chunks = chunks.len() as u32;
        let info = self
            .commit(KeyedCommit {
                commit: CommitRequest {
                    id: a.id,
                    cookie: a.cookie,
                    volume_id: a.volume_id,
                    kind: PhotoKind::Video,
                    variants: Vec::new(),
                    chunks,
                },
                idempotency_key: idempotency_key.map(str::to_string),
                request_hash: digest.map(request_hash),
                pending_replicas: Vec::new(),
            })
            .await?;
        if info.id != a.id {
            tracing::info!(
                id = info.id,
                orphan = a.id,
                "video upload replayed at commit"
            );
            return Ok((
                video_answer(&self.config().security, &info, content_type),
                Outcome::Replayed,
            ));
        }
        metrics::counter!("haystack_uploader_videos_total").increment(1);
        tracing::info!(
            id = info.id,
            volume = info.volume_id,
            bytes = total,
            chunks = n_chunks,
            "video committed"
        );
        Ok((
            video_answer(&self.config().security, &info, content_type),
            Outcome::Created,
        ))
    }

    /// Starts writing one chunk to every replica (a task), first waiting for a slot when
    /// `video_chunks_in_flight` writes are already running.
    async fn send_chunk(
        &self,
        a: &Arc<AssignResponse>,
        chunks: &mut Vec<VideoChunk>,
        in_flight: &mut tokio::task::JoinSet<Result<(), UploaderError>>,
        data: Bytes,
        content_type: &str,
    ) -> Result<(), UploaderError> {
        while in_flight.len() >= self.cfg.video_chunks_in_flight {
            if let Some(r) = in_flight.join_next().await {
                chunk_written(r)?;
            }
        }
        let offset = chunks.last().map_or(0, |c| c.offset + c.size_bytes);
        let alt = chunks.len() as u32 + 1;
        chunks.push(VideoChunk {
            alt,
            offset,
            size_bytes: data.len() as u64,
        });
        let needle = Needle {
            alt,
            content_type: content_type.to_string(),
            data,
        };
        let (a, stores) = (a.clone(), self.stores.clone());
        in_flight.spawn(async move {
            let len = needle.data.len() as u64;
            stores
                .put_needle_all(&a.replicas, a.volume_id, a.id, a.cookie, &needle)
                .await
                .map_err(|errs| {
                    let detail = errs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::warn!(id = a.id, volume = a.volume_id, alt, error = %detail, "video chunk write failed");
                    metrics::counter!("haystack_uploader_write_failures_total").increment(1);
                    if errs.iter().any(ReplicaError::is_too_large) {
                        UploaderError::Internal(format!(
                            "the stores refuse {len}-byte chunks: lower video_chunk_bytes"
                        ))
                    } else {
                        UploaderError::WriteFailed(format!(
                            "chunk {alt} of video {} was not written: {detail}",
                            a.id
                        ))
                    }
                })?;
            metrics::counter!("haystack_uploader_bytes_written_total")
                .increment(len * a.replicas.len() as u64);
            Ok(())
        });
        Ok(())
    }

    /// The photo or video with its URLs (404 when missing or deleted).
    pub async fn get(&self, id: u64) -> Result<MediaResponse, UploaderError> {
        let info = self
            .dir
            .lookup(id)
            .await
            .map_err(|e| UploaderError::from_directory("looking up", e))?;
        match info.kind {
            // The S3 role's data: not a photo or video of this API.
            PhotoKind::Object => Err(UploaderError::NotFound),
            PhotoKind::Video => {
                let first = info.chunks.first().map(|c| c.alt).unwrap_or(1);
                let ct = self
                    .stores
                    .read_head(
                        &info.replicas,
                        &NeedleAddr::new(info.volume_id, info.id, first, info.cookie),
                        1,
                    )
                    .await
                    .map(|(ct, _)| ct)
                    .unwrap_or_else(|| "application/octet-stream".into());
                Ok(MediaResponse::Video(video_answer(
                    &self.config().security,
                    &info,
                    ct,
                )))
            }
            PhotoKind::Photo => {
                let original = info.variants.iter().find(|v| v.alt == 0);
                let (content_type, bytes) = original
                    .map(|v| (v.content_type.clone(), v.size_bytes))
                    .unwrap_or_default();
                // The directory keeps no pixel sizes: read them from the original's header.
                let mut size = None;
                for len in [256 << 10, self.cfg.max_photo_bytes] {
                    if let Some((_, head)) = self
                        .stores
                        .read_head(
                            &info.replicas,
                            &NeedleAddr::new(info.volume_id, info.id, 0, info.cookie),
                            len,
                        )
                        .await
                    {
                        size = images::display_size(&head);
                    }
                    if size.is_some() || len >= bytes {
                        break;
                    }
                }
                let (width, height) = size.unwrap_or((0, 0));
                Ok(MediaResponse::Photo(PhotoResponse {
                    id: info.id,
                    kind: PhotoKind::Photo,
                    urls: info
                        .variants
                        .iter()
                        .map(|v| (v.name.clone(), v.url.clone()))
                        .collect(),
                    width,
                    height,
                    content_type,
                    bytes,
                }))
            }
        }
    }

    /// Deletes through the directory (which marks it deleted, then tells stores and caches).
    /// Only a photo or a video: the S3 role's data (kind `object`) is 404 here, as for GET,
    /// so an API key of this service cannot delete an acknowledged S3 object's bytes. (An
    /// id's kind never changes: ids are never reused.) An id already deleted is passed on,
    /// so a repeated DELETE is answered as the first was and its notifications are resent.
    pub async fn delete(&self, id: u64) -> Result<(), UploaderError> {
        match self.dir.lookup(id).await {
            Ok(info) if info.kind == PhotoKind::Object => return Err(UploaderError::NotFound),
            Ok(_) => {}
            Err(ClientError::Api {
                status: 404, body, ..
            }) if body.error == "deleted" => {}
            Err(e) => return Err(UploaderError::from_directory("looking up", e)),
        }
        let r = self
            .dir
            .delete(id)
            .await
            .map_err(|e| UploaderError::from_directory("deleting", e))?;
        tracing::info!(
            id,
            store_deletes_failed = r.store_deletes_failed,
            cache_purges_failed = r.cache_purges_failed,
            "photo deleted"
        );
        metrics::counter!("haystack_uploader_deletes_total").increment(1);
        Ok(())
    }

    /// Whether the directory answers (for /health).
    pub async fn directory_up(&self) -> bool {
        self.dir.health().await.is_ok()
    }
}

/// The outcome of one chunk's write task.
fn chunk_written(
    r: Result<Result<(), UploaderError>, tokio::task::JoinError>,
) -> Result<(), UploaderError> {
    r.map_err(|e| UploaderError::Internal(format!("video chunk task failed: {e}")))?
}

/// The video's one URL: the base of its read URLs (cut before `/v1/needles/`) and
/// `/v1/videos/{volume}/{id}/{cookie}`, the path the cache serves whole videos under.
pub fn video_url(info: &PhotoInfo) -> String {
    let base = info
        .chunks
        .first()
        .map(|c| c.url.as_str())
        .and_then(|u| u.find(NEEDLES_PREFIX).map(|i| &u[..i]))
        .unwrap_or("");
    haystack_client::urls::cache::video(base, info.volume_id, info.id, info.cookie)
}

fn video_answer(
    security: &haystack_service::auth::Security,
    info: &PhotoInfo,
    content_type: String,
) -> VideoResponse {
    VideoResponse {
        id: info.id,
        kind: PhotoKind::Video,
        // Signed like the directory's read URLs when signed reads are on.
        url: security.sign_read_url(video_url(info)),
        content_type,
        bytes: info.chunks.iter().map(|c| c.size_bytes).sum(),
        chunks: info.chunks.len() as u32,
    }
}
