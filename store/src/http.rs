//! The store machine's HTTP server (actix-web): needle GET/HEAD/PUT/DELETE, batch PUT, volume
//! admin, /health and /metrics. Error → status mapping lives here, in [`ApiError`], and nowhere
//! else. docs/API.md documents every route.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use bytes::{Bytes, BytesMut};
use haystack_proto::auth::Access;
use haystack_proto::batch::{self, BatchError};
use haystack_proto::directory::MAX_LISTED_BUCKETS;
use haystack_proto::needle::NeedleAddrError;
use haystack_proto::range::{decide, if_none_match, RangeDecision};
use haystack_proto::{ErrorBody, NeedleAddr};
use haystack_service::auth::Guard;
use serde::Deserialize;

use crate::error::StoreError;
use crate::store::Store;
use crate::volume::{bucket_of, NeedleData, MAX_DIGEST_BUCKETS};

/// An error as the HTTP API answers it: a status and a JSON [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError(pub StoreError);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ApiError {
    fn code(&self) -> (StatusCode, &'static str) {
        use StoreError::*;
        match &self.0 {
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            NoRoute => (StatusCode::NOT_FOUND, "no_such_route"),
            NoVolume(_) => (StatusCode::NOT_FOUND, "no_such_volume"),
            Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "volume_unavailable"),
            VolumeExists(_) => (StatusCode::CONFLICT, "volume_exists"),
            ReadOnly { .. } => (StatusCode::CONFLICT, "read_only"),
            Full(_) => (StatusCode::INSUFFICIENT_STORAGE, "volume_full"),
            DiskFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_needle"),
            BadVolumeFile { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "bad_volume_file"),
            Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "disk_error"),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Busy(_) => (StatusCode::CONFLICT, "busy"),
            NoSpace(_) => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_space"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Mismatch(_) => (StatusCode::CONFLICT, "needle_mismatch"),
            ShipOutOfStep { .. } => (StatusCode::CONFLICT, "ship_out_of_step"),
            Deleted { .. } => (StatusCode::GONE, "deleted"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.code();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        HttpResponse::build(status).json(ErrorBody {
            error: code.into(),
            message: self.0.to_string(),
        })
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bad(m: impl Into<String>) -> ApiError {
    ApiError(StoreError::BadRequest(m.into()))
}

fn parse_volume(s: &str) -> ApiResult<u32> {
    s.parse()
        .map_err(|_| bad(format!("volume id {s:?} is not a 32-bit unsigned integer")))
}

/// The needle address in the request's path (`haystack_proto::NeedleAddr`, parsed by hand:
/// actix's router would run a regex per request for four dynamic segments).
fn needle_addr(req: &HttpRequest) -> ApiResult<NeedleAddr> {
    NeedleAddr::parse_path(req.path()).map_err(|e| match e {
        NeedleAddrError::Shape => ApiError(StoreError::NoRoute),
        e => bad(e.to_string()),
    })
}

/// Refuses a needle write that neither an internal bearer nor a write token in scope allows
/// (haystack_service::auth::check_write).
fn may_write(req: &HttpRequest, store: &Store, volume: u32, key: u64, alt: u32) -> ApiResult<()> {
    haystack_service::auth::check_write(
        req,
        store.config().security.keys.as_ref(),
        volume,
        key,
        alt,
    )
    .map_err(|e| ApiError(StoreError::Forbidden(format!("needle write refused: {e}"))))
}

/// Everything under `/v1/needles/`: dispatch on the method.
async fn needle_dispatch(
    req: HttpRequest,
    payload: web::Payload,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    match *req.method() {
        Method::GET | Method::HEAD => get_needle(req, store).await,
        Method::PUT => put_needle(req, payload, store).await,
        Method::DELETE => delete_needle(req, store).await,
        _ => {
            needle_addr(&req)?;
            Ok(method_not_allowed().await)
        }
    }
}

fn etag(crc: u32, len: usize) -> String {
    format!("\"{crc:08x}{len:x}\"")
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A volume of this store, or its shard of an erasure-coded volume.
pub(crate) enum Target {
    Replica(Arc<crate::volume::Volume>),
    Ec(Arc<crate::ec::EcVolume>),
}

/// The volume a request names: a replica here, else this store's shard of it.
pub(crate) fn target(store: &Store, id: u32) -> Result<Target, StoreError> {
    match store.volume(id) {
        Ok(v) => Ok(Target::Replica(v)),
        Err(StoreError::NoVolume(_)) => store
            .ec_volume(id)
            .map(Target::Ec)
            .ok_or(StoreError::NoVolume(id)),
        Err(e) => Err(e),
    }
}

async fn get_needle(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let a = needle_addr(&req)?;
    let vol = match target(&store, a.volume)? {
        Target::Replica(v) => v,
        Target::Ec(ec) => {
            let n = ec.read(a.key, a.alt, a.cookie, store.peers()).await?;
            crate::metrics::hot().gets.increment(1);
            return Ok(answer_needle(&req, n));
        }
    };
    if req.method() == Method::HEAD {
        let m = vol.read_meta(a.key, a.alt, a.cookie).await?;
        let mut r = HttpResponse::Ok();
        r.insert_header((
            header::CONTENT_TYPE,
            content_type_or_default(&m.content_type),
        ))
        .insert_header((header::ACCEPT_RANGES, "bytes"));
        return Ok(r.body(HeadBody(m.data_len as u64)));
    }
    let n = vol.read(a.key, a.alt, a.cookie).await?;
    crate::metrics::hot().gets.increment(1);
    Ok(answer_needle(&req, n))
}

/// The answer to a GET (or, for an erasure-coded volume, a HEAD) of a needle read whole:
/// ETag, If-None-Match, Range.
fn answer_needle(req: &HttpRequest, n: crate::volume::Needle) -> HttpResponse {
    let tag = etag(n.crc, n.data.len());
    if req.method() == Method::HEAD {
        let mut r = HttpResponse::Ok();
        r.insert_header((
            header::CONTENT_TYPE,
            content_type_or_default(&n.content_type),
        ))
        .insert_header((header::ACCEPT_RANGES, "bytes"));
        return r.body(HeadBody(n.data.len() as u64));
    }
    if if_none_match(header_str(req, header::IF_NONE_MATCH), &tag) {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, tag))
            .finish();
    }
    let len = n.data.len() as u64;
    let mut r = match decide(header_str(req, header::RANGE), len) {
        RangeDecision::Full => {
            let mut r = HttpResponse::Ok();
            r.insert_header((
                header::CONTENT_TYPE,
                content_type_or_default(&n.content_type),
            ));
            r.insert_header((header::ETAG, tag));
            r.insert_header((header::ACCEPT_RANGES, "bytes"));
            return r.body(n.data);
        }
        RangeDecision::Partial { start, end } => {
            let mut r = HttpResponse::PartialContent();
            r.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")));
            r.insert_header((
                header::CONTENT_TYPE,
                content_type_or_default(&n.content_type),
            ));
            r.insert_header((header::ETAG, tag));
            return r.body(n.data.slice(start as usize..=end as usize));
        }
        RangeDecision::Unsatisfiable => HttpResponse::RangeNotSatisfiable(),
    };
    r.insert_header((header::CONTENT_RANGE, format!("bytes */{len}")));
    r.json(ErrorBody {
        error: "range_not_satisfiable".into(),
        message: format!("the needle has {len} bytes"),
    })
}

/// The body of a HEAD answer: declares the needle's length, sends nothing.
struct HeadBody(u64);

impl MessageBody for HeadBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(self.0)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        std::task::Poll::Ready(None)
    }
}

fn content_type_or_default(ct: &str) -> HeaderValue {
    if ct.is_empty() {
        return HeaderValue::from_static("application/octet-stream");
    }
    HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// Reads a request body of at most `max` bytes: refuses by Content-Length before reading, and
/// stops reading as soon as a chunked body passes the limit.
async fn read_body(req: &HttpRequest, mut payload: web::Payload, max: u64) -> ApiResult<Bytes> {
    let declared = header_str(req, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared {
        if n > max {
            return Err(ApiError(StoreError::TooLarge { max }));
        }
    }
    // The declared length is only a hint: reserve at most 1 MiB before bytes arrive, so that
    // connections sending headers alone cannot reserve gigabytes.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
    let idle = haystack_service::body::BODY_IDLE_TIMEOUT;
    while let Some(chunk) = haystack_service::body::next_within(&mut payload, idle)
        .await
        .map_err(|e| ApiError(StoreError::BodyTimeout(e.to_string())))?
    {
        let chunk = chunk.map_err(|e| bad(format!("reading the body failed: {e}")))?;
        if buf.len() as u64 + chunk.len() as u64 > max {
            return Err(ApiError(StoreError::TooLarge { max }));
        }
        if buf.capacity() - buf.len() < chunk.len() {
            // Past the first MiB the bytes are arriving: make room for the rest of the
            // declared length at once rather than copying the body at every doubling.
            let rest = declared.unwrap_or(0).saturating_sub(buf.len() as u64) as usize;
            buf.reserve(rest.max(chunk.len()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn request_content_type(req: &HttpRequest) -> ApiResult<String> {
    match req.headers().get(header::CONTENT_TYPE) {
        None => Ok(String::new()),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| bad("Content-Type is not visible ASCII"))?;
            if s.len() > crate::format::MAX_CONTENT_TYPE_LEN {
                return Err(bad("Content-Type longer than 255 bytes"));
            }
            Ok(s.to_string())
        }
    }
}

async fn put_needle(
    req: HttpRequest,
    payload: web::Payload,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let a = needle_addr(&req)?;
    may_write(&req, &store, a.volume, a.key, a.alt)?;
    let vol = store.volume(a.volume)?;
    let content_type = request_content_type(&req)?;
    let data = read_body(&req, payload, store.config().max_needle_bytes).await?;
    let size = data.len();
    vol.write_batch(vec![NeedleData {
        key: a.key,
        alt: a.alt,
        cookie: a.cookie,
        content_type,
        data,
    }])
    .await?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "volume": a.volume, "key": a.key.to_string(), "alt": a.alt, "size": size,
    })))
}

/// A delete on this store's shard of erasure-coded volume `id`, in its own task, as every
/// write: a dropped request cannot cut it half way. The volume's instance is taken again
/// under the switch lock (`Store::ec_deletes`). `cookie`: None deletes whatever the cookie.
async fn ec_delete(
    store: &Arc<Store>,
    id: u32,
    key: u64,
    alt: u32,
    cookie: Option<u64>,
) -> Result<(), StoreError> {
    let store = store.clone();
    tokio::spawn(async move {
        let _switch = store.ec_deletes.read().await;
        let ec = store.ec_volume(id).ok_or(StoreError::NoVolume(id))?;
        ec.delete(key, alt, cookie, store.peers()).await
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
}

/// [`ec_delete`] when this store also holds a replica of the volume (between an encode's
/// install and the replica's drop): a delete must reach the shard too, or the shard (which
/// outlives the replica) serves the needle again. Whether it deleted anything.
async fn delete_on_shard_too(
    store: &Arc<Store>,
    id: u32,
    key: u64,
    alt: u32,
    cookie: Option<u64>,
) -> Result<bool, StoreError> {
    if store.ec_volume(id).is_none() {
        return Ok(false);
    }
    match ec_delete(store, id, key, alt, cookie).await {
        Ok(()) => Ok(true),
        Err(StoreError::NotFound | StoreError::NoVolume(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn delete_needle(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let a = needle_addr(&req)?;
    match target(&store, a.volume)? {
        Target::Replica(v) => {
            let on_replica = v.delete(a.key, a.alt, a.cookie).await;
            // The replica checked the cookie when it deleted the needle; otherwise the shard
            // checks it (reading the needle, maybe from peers).
            let cookie = on_replica.is_err().then_some(a.cookie);
            let on_shard = delete_on_shard_too(&store, a.volume, a.key, a.alt, cookie).await?;
            match on_replica {
                Err(StoreError::NotFound) if on_shard => {}
                r => r?,
            }
        }
        Target::Ec(_) => ec_delete(&store, a.volume, a.key, a.alt, Some(a.cookie)).await?,
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Parses a batch body (docs/API.md; the format is `haystack_proto::batch`) into needles that
/// share the body's buffer.
pub fn parse_batch(b: Bytes, max_needle: u64) -> Result<Vec<NeedleData>, StoreError> {
    let records = batch::parse(&b, max_needle).map_err(|e| match e {
        BatchError::TooLarge { max } => StoreError::TooLarge { max },
        e => StoreError::BadRequest(e.to_string()),
    })?;
    Ok(records
        .into_iter()
        .map(|r| NeedleData {
            key: r.key,
            alt: r.alt,
            cookie: r.cookie,
            content_type: r.content_type.to_string(),
            data: b.slice_ref(r.data),
        })
        .collect())
}

async fn put_batch(
    req: HttpRequest,
    payload: web::Payload,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let vol = store.volume(vid)?;
    let body = read_body(&req, payload, store.config().max_write_bytes).await?;
    let needles = parse_batch(body, store.config().max_needle_bytes)?;
    for n in &needles {
        may_write(&req, &store, vid, n.key, n.alt)?;
    }
    let n = needles.len();
    crate::pause::at(&store.config().data_dir, "batch-write").await;
    vol.write_batch(needles).await?;
    if let Some(s) = req.app_data::<web::Data<SlowBatches>>() {
        tokio::time::sleep(s.0).await;
    }
    Ok(HttpResponse::Created().json(serde_json::json!({ "volume": vid, "written": n })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateVolume {
    #[serde(default)]
    max_bytes: Option<u64>,
}

async fn create_volume(
    req: HttpRequest,
    body: Result<Bytes, actix_web::Error>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let body = small_body(body)?;
    let opts: CreateVolume = if body.iter().all(|b| b.is_ascii_whitespace()) {
        CreateVolume::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?
    };
    let v = store.create_volume(vid, opts.max_bytes).await?;
    Ok(HttpResponse::Created().json(v.info()))
}

async fn list_volumes(store: web::Data<Arc<Store>>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "volumes": store.list() }))
}

async fn get_volume(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    Ok(HttpResponse::Ok().json(match target(&store, vid)? {
        Target::Replica(v) => v.info(),
        Target::Ec(ec) => ec.info(),
    }))
}

async fn seal_volume(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let v = store.volume(vid)?;
    v.seal().await?;
    Ok(HttpResponse::Ok().json(v.info()))
}

async fn verify_volume(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    Ok(HttpResponse::Ok().json(store.volume(vid)?.verify().await?))
}

async fn compact_volume(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    Ok(HttpResponse::Ok().json(store.volume(vid)?.compact().await?))
}

async fn rebuild_index(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    Ok(HttpResponse::Ok().json(store.volume(vid)?.rebuild_index().await?))
}

async fn export_volume(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let snap = store.volume(vid)?.export_snapshot();
    const STEP: u64 = 4 << 20;
    let len = snap.len;
    let stream = futures_util::stream::unfold((snap.file, 0u64), move |(file, pos)| async move {
        if pos >= len {
            return None;
        }
        let n = STEP.min(len - pos) as usize;
        let f = file.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut b = vec![0u8; n];
            std::os::unix::fs::FileExt::read_exact_at(&*f, &mut b, pos).map(|_| Bytes::from(b))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match r {
            Ok(b) => Some((Ok::<_, std::io::Error>(b), (file, pos + n as u64))),
            // The stream ends short; the importer sees fewer bytes than Content-Length.
            Err(e) => Some((Err(e), (file, len))),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "x-haystack-sealed",
            if snap.sealed { "true" } else { "false" },
        ))
        .no_chunking(len)
        .streaming(stream))
}

#[derive(Deserialize)]
struct ImportRequest {
    from: String,
    /// Seed an asynchronous remote replica (marked before it opens).
    #[serde(default)]
    remote_copy: bool,
    /// With `remote_copy`: replace a remote replica held here already (a re-seed after its
    /// source was compacted); an ordinary replica is never replaced.
    #[serde(default)]
    replace: bool,
}

async fn import_volume(
    req: HttpRequest,
    body: web::Json<ImportRequest>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let ImportRequest {
        from,
        remote_copy,
        replace,
    } = body.into_inner();
    if !(from.starts_with("http://") || from.starts_with("https://")) {
        return Err(bad("from must be a store's base URL (http://host:port)"));
    }
    if replace && !remote_copy {
        return Err(bad("replace applies to remote copies only"));
    }
    let store = store.get_ref().clone();
    // Its own task: a dropped request does not leave a half-imported volume behind.
    let info = tokio::spawn(async move {
        if remote_copy {
            store.import_remote_copy(vid, &from, replace).await
        } else {
            store.import_volume(vid, &from).await
        }
    })
    .await
    .map_err(|e| ApiError(StoreError::Io(std::io::Error::other(e.to_string()))))??;
    Ok(HttpResponse::Created().json(info))
}

/// `GET /v1/volumes/{v}/ship`: where this asynchronous remote replica stands.
async fn ship_position(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let v = store.volume(vid)?;
    if !v.is_remote_copy() {
        return Err(ApiError(StoreError::BadRequest(format!(
            "volume {vid} is not an asynchronous remote replica here"
        ))));
    }
    Ok(HttpResponse::Ok().json(remote_position(&v).await?))
}

async fn remote_position(v: &crate::volume::Volume) -> ApiResult<haystack_proto::ShipPosition> {
    let mut pos = v.ship_position();
    if let Some(m) = pos.last.as_mut() {
        if let Some(h) = v.header_at(m.offset).await? {
            m.cookie = h.cookie;
        }
    }
    Ok(pos)
}

/// `POST /v1/volumes/{v}/promote`: this remote copy becomes an ordinary replica.
async fn promote_volume(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let info = store.promote(vid).await?;
    tracing::warn!(volume = vid, "remote copy promoted to a replica");
    Ok(HttpResponse::Ok().json(info))
}

#[derive(Deserialize)]
struct ShipQuery {
    offset: u64,
}

/// `POST /v1/volumes/{v}/ship?offset=N`: shipped bytes appended at N (this replica's end).
async fn ship_append(
    req: HttpRequest,
    q: web::Query<ShipQuery>,
    payload: web::Payload,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let v = store.volume(vid)?;
    let cfg = store.config();
    let max = cfg.max_write_bytes.max(cfg.max_needle_bytes + 4096);
    let body = read_body(&req, payload, max).await?;
    let v2 = v.clone();
    // Its own task: a dropped request does not cut an append between write and index.
    tokio::spawn(async move { v2.ship_append(q.offset, body.to_vec()).await })
        .await
        .map_err(|e| ApiError(StoreError::Io(std::io::Error::other(e.to_string()))))??;
    Ok(HttpResponse::Ok().json(remote_position(&v).await?))
}

#[derive(Deserialize)]
struct NeedlesQuery {
    /// Digest buckets to list: one, or several separated by commas.
    bucket: Option<String>,
    buckets: Option<u32>,
}

/// The volume's needle list, or some buckets of it (`?bucket=B[,B...]&buckets=N`, the buckets
/// of `digest`): keys, alternate keys, delete flags and extents. One pass over the index
/// whatever the number of buckets named.
async fn list_needles(
    req: HttpRequest,
    q: web::Query<NeedlesQuery>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let filter: Option<(std::collections::HashSet<u32>, u32)> = match (&q.bucket, q.buckets) {
        (None, None) => None,
        (Some(list), Some(n)) if (1..=MAX_DIGEST_BUCKETS).contains(&n) => {
            let mut set = std::collections::HashSet::new();
            for b in list.split(',') {
                match b.trim().parse::<u32>() {
                    Ok(b) if b < n => set.insert(b),
                    _ => return Err(bad(format!("bucket {b:?} is not a number below {n}"))),
                };
            }
            if set.len() > MAX_LISTED_BUCKETS {
                return Err(bad(format!(
                    "at most {MAX_LISTED_BUCKETS} buckets in one listing"
                )));
            }
            Some((set, n))
        }
        _ => {
            return Err(bad(format!(
                "bucket and buckets go together, with buckets from 1 to {MAX_DIGEST_BUCKETS}"
            )))
        }
    };
    let entries = match target(&store, vid)? {
        Target::Replica(v) => v.needle_entries(),
        Target::Ec(ec) => ec.needles(),
    };
    let needles: Vec<serde_json::Value> = entries
        .into_iter()
        .filter(|e| {
            filter
                .as_ref()
                .is_none_or(|(set, n)| set.contains(&bucket_of(e.key, e.alt, *n)))
        })
        .map(|e| {
            serde_json::json!({"key": e.key.to_string(), "alt": e.alt, "deleted": e.deleted, "extent": e.extent})
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"volume": vid, "needles": needles})))
}

#[derive(Deserialize)]
struct DigestQuery {
    buckets: Option<u32>,
}

/// The digest of the volume's needle list, for replica comparison (anti-entropy).
async fn volume_digest(
    req: HttpRequest,
    q: web::Query<DigestQuery>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    Ok(HttpResponse::Ok().json(store.volume(vid)?.digest(q.buckets.unwrap_or(1))?))
}

/// Repairs needles from good copies (a batch body, as `batch`, holding needles read from
/// another replica): each is left intact, rewritten in place, appended or left deleted.
async fn repair_needles(
    req: HttpRequest,
    payload: web::Payload,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let vol = store.volume(vid)?;
    let body = read_body(&req, payload, store.config().max_write_bytes).await?;
    let needles = parse_batch(body, store.config().max_needle_bytes)?;
    let mut results = Vec::with_capacity(needles.len());
    for n in needles {
        let (key, alt) = (n.key, n.alt);
        let outcome = vol.repair(n).await?;
        results.push(serde_json::json!({"key": key.to_string(), "alt": alt, "outcome": outcome}));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"volume": vid, "results": results})))
}

#[derive(Deserialize)]
struct GcNeedle {
    key: String,
    alt: u32,
}

#[derive(Deserialize)]
struct GcRequest {
    needles: Vec<GcNeedle>,
}

/// Deletes needles that no photo references, without their cookies (operators' gc).
async fn gc_volume(
    req: HttpRequest,
    body: web::Json<GcRequest>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let vid = parse_volume(req.match_info().get("volume").unwrap_or(""))?;
    let v = target(&store, vid)?;
    let mut keys = Vec::with_capacity(body.needles.len());
    for n in &body.needles {
        let key: u64 = n
            .key
            .parse()
            .map_err(|_| bad(format!("key {:?} is not a 64-bit unsigned integer", n.key)))?;
        keys.push((key, n.alt));
    }
    let (mut deleted, mut missing) = (0u64, 0u64);
    // Deletes on an erasure-coded volume hold the switch lock and use the instance current
    // under it (`Store::ec_deletes`).
    let _switch = match v {
        Target::Ec(_) => Some(store.ec_deletes.read().await),
        Target::Replica(_) => None,
    };
    let v = target(&store, vid)?;
    for (key, alt) in keys {
        let r = match &v {
            Target::Replica(v) => {
                let on_replica = v.delete_unreferenced(key, alt).await;
                match delete_on_shard_too(&store, vid, key, alt, None).await {
                    Ok(true) if matches!(on_replica, Err(StoreError::NotFound)) => Ok(()),
                    Ok(_) => on_replica,
                    Err(e) => Err(e),
                }
            }
            Target::Ec(ec) => ec.delete(key, alt, None, store.peers()).await,
        };
        match r {
            Ok(()) => deleted += 1,
            Err(StoreError::NotFound) => missing += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"volume": vid, "deleted": deleted, "missing": missing})))
}

async fn health(store: web::Data<Arc<Store>>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "pid": std::process::id(),
        "engine": store.engine().kind().as_str(),
        "volumes": store.volumes().len(),
    }))
}

async fn metrics_page(store: web::Data<Arc<Store>>) -> HttpResponse {
    for v in store.volumes() {
        let info = v.info();
        let id = info.id.to_string();
        metrics::gauge!("haystack_store_volume_size_bytes", "volume" => id.clone())
            .set(info.size_bytes as f64);
        metrics::gauge!("haystack_store_volume_dead_bytes", "volume" => id.clone())
            .set(info.dead_bytes as f64);
        metrics::gauge!("haystack_store_volume_needles", "volume" => id.clone())
            .set(info.needles as f64);
        metrics::gauge!("haystack_store_index_heap_bytes", "volume" => id)
            .set(v.index_heap_bytes() as f64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(ErrorBody {
        error: "no_such_route".into(),
        message: "no such route (see docs/API.md)".into(),
    })
}

pub(crate) async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed().json(ErrorBody {
        error: "method_not_allowed".into(),
        message: "method not allowed on this route (see docs/API.md)".into(),
    })
}

/// The route a path belongs to, as a metrics label. Cheap string checks on purpose: actix's
/// `match_pattern` runs the router's regexes again, which cost more than the whole GET.
fn route_label(path: &str) -> &'static str {
    let segs = path.split('/').filter(|s| !s.is_empty()).count();
    if let Some(rest) = path.strip_prefix("/v1/needles/") {
        return if rest.split('/').count() == 4 {
            "/v1/needles/{volume}/{key}/{alt}/{cookie}"
        } else {
            "other"
        };
    }
    if path.starts_with("/v1/ec/") {
        return crate::http_ec::route_label(path);
    }
    if path.starts_with("/v1/volumes") {
        return match (segs, path.rsplit('/').next()) {
            (2, _) => "/v1/volumes",
            (3, _) => "/v1/volumes/{volume}",
            (4, Some("batch")) => "/v1/volumes/{volume}/batch",
            (4, Some("seal")) => "/v1/volumes/{volume}/seal",
            (4, Some("verify")) => "/v1/volumes/{volume}/verify",
            (4, Some("compact")) => "/v1/volumes/{volume}/compact",
            (4, Some("export")) => "/v1/volumes/{volume}/export",
            (4, Some("import")) => "/v1/volumes/{volume}/import",
            (4, Some("needles")) => "/v1/volumes/{volume}/needles",
            (4, Some("gc")) => "/v1/volumes/{volume}/gc",
            (4, Some("digest")) => "/v1/volumes/{volume}/digest",
            (4, Some("ship")) => "/v1/volumes/{volume}/ship",
            (4, Some("promote")) => "/v1/volumes/{volume}/promote",
            (4, Some("repair")) => "/v1/volumes/{volume}/repair",
            (4, Some("rebuild-index")) => "/v1/volumes/{volume}/rebuild-index",
            _ => "other",
        };
    }
    match path {
        "/health" => "/health",
        "/metrics" => "/metrics",
        p if p.starts_with("/bench/memory/") => "/bench/memory/{volume}/{key}/{alt}/{cookie}",
        _ => "other",
    }
}

async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = route_label(req.path());
    let method = req.method().clone();
    let res = next.call(req).await?;
    crate::metrics::record_request(
        route,
        &method,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(res)
}

/// The access class of a request to the store (docs/API.md, "Authentication"). Needle reads
/// by URL, `/health` and `/metrics` are public; volume listings need a read token; needle
/// writes and deletes are the cluster's own; everything else, and any route added later
/// that is not named here, is an admin action.
pub fn access(method: &Method, path: &str) -> Access {
    let read = matches!(*method, Method::GET | Method::HEAD);
    if path.starts_with("/v1/needles/") {
        return match *method {
            Method::GET | Method::HEAD => Access::Public,
            Method::PUT => Access::Write,
            _ => Access::Internal,
        };
    }
    match route_label(path) {
        "/health" | "/metrics" if read => Access::Public,
        "/v1/volumes"
        | "/v1/volumes/{volume}"
        | "/v1/volumes/{volume}/needles"
        | "/v1/volumes/{volume}/digest"
            if read =>
        {
            Access::Read
        }
        "/v1/volumes/{volume}/batch" => Access::Write,
        // Shipping to asynchronous remote replicas is store to store.
        "/v1/volumes/{volume}/ship" => Access::Internal,
        "/bench/memory/{volume}/{key}/{alt}/{cookie}" => Access::Public,
        // Erasure-coded volumes: the description is a listing; what the directory drives
        // (build, install, activate, cleanup, rebuild, manifest, staged files) and what stores
        // read from each other (shard ranges, index, state) is the cluster's own; verify, like
        // every other operator action, is admin.
        "/v1/ec/{volume}" if read => Access::Read,
        "/v1/ec/{volume}/state"
        | "/v1/ec/{volume}/index"
        | "/v1/ec/{volume}/build"
        | "/v1/ec/{volume}/install"
        | "/v1/ec/{volume}/activate"
        | "/v1/ec/{volume}/cleanup"
        | "/v1/ec/{volume}/rebuild"
        | "/v1/ec/{volume}/manifest"
        | "/v1/ec/{volume}/staged/{generation}"
        | "/v1/ec/{volume}/staged/{generation}/{name}"
        | "/v1/ec/{volume}/shards/{shard}" => Access::Internal,
        _ => Access::Admin,
    }
}

/// Routes of the store API, for embedding in an actix `App`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    extractor_errors(cfg);
    cfg.service(web::scope("/v1/needles").default_service(web::to(needle_dispatch)))
        .service(
            web::resource("/v1/volumes/{volume}/batch")
                .route(web::post().to(put_batch))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/verify")
                .route(web::post().to(verify_volume))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/export")
                .route(web::get().to(export_volume))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/import")
                .route(web::post().to(import_volume))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/promote")
                .route(web::post().to(promote_volume))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/ship")
                .route(web::get().to(ship_position))
                .route(web::post().to(ship_append))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/needles")
                .route(web::get().to(list_needles))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/digest")
                .route(web::get().to(volume_digest))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/repair")
                .route(web::post().to(repair_needles))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/gc")
                .route(web::post().to(gc_volume))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/compact")
                .route(web::post().to(compact_volume))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/rebuild-index")
                .route(web::post().to(rebuild_index))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}/seal")
                .route(web::post().to(seal_volume))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes/{volume}")
                .route(web::get().to(get_volume))
                .route(web::post().to(create_volume))
                .route(web::delete().to(crate::http_ec::drop_volume))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/volumes")
                .route(web::get().to(list_volumes))
                .default_service(web::to(method_not_allowed)),
        )
        .configure(crate::http_ec::routes)
        .service(
            web::resource("/health")
                .route(web::get().to(health))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/metrics")
                .route(web::get().to(metrics_page))
                .default_service(web::to(method_not_allowed)),
        );
}

/// Extractor failures (a malformed query or JSON body, a body over the extractor's limit)
/// answer JSON like every other error.
fn extractor_errors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().error_handler(|e, _| {
        ApiError(StoreError::BadRequest(format!("malformed JSON body: {e}"))).into()
    }))
    .app_data(web::QueryConfig::default().error_handler(|e, _| {
        ApiError(StoreError::BadRequest(format!("malformed query: {e}"))).into()
    }));
}

/// The body of a request taken whole (small JSON control bodies, at most the extractor's
/// limit of 256 KiB), or its failure as a JSON error.
pub(crate) fn small_body(b: Result<Bytes, actix_web::Error>) -> ApiResult<Bytes> {
    b.map_err(|e| match e.as_error::<actix_web::error::PayloadError>() {
        Some(actix_web::error::PayloadError::Overflow) => {
            ApiError(StoreError::TooLarge { max: 256 << 10 })
        }
        _ => bad(format!("reading the body: {e}")),
    })
}

/// Serves the same needle URL from memory, through the same server and middleware, with
/// no index lookup and no disk read: the benchmark's ceiling (`--bench-memory-ceiling`).
async fn get_from_memory(
    req: HttpRequest,
    body: web::Data<MemoryCeiling>,
) -> ApiResult<HttpResponse> {
    let _ = needle_addr(&req)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header((header::ETAG, etag(0, body.0.len())))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .body(body.0.clone()))
}

#[derive(Clone)]
struct MemoryCeiling(Bytes);

/// Server options.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// When set, `GET /bench/memory/{volume}/{key}/{alt}/{cookie}` answers this many bytes
    /// from memory (benchmarks only; off by default).
    pub memory_ceiling_bytes: Option<usize>,
    /// actix worker threads; 0 means one per core.
    pub workers: usize,
    /// Seconds to let in-flight requests finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Benchmarks only: every batch write is answered this many ms late (a slow replica, for
    /// measuring write acknowledgement policies). 0 (the default) is off.
    pub slow_batch_ms: u64,
}

/// The delay of `ServerOptions::slow_batch_ms`.
#[derive(Clone, Copy)]
struct SlowBatches(std::time::Duration);

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            memory_ceiling_bytes: None,
            workers: 0,
            shutdown_timeout_secs: 30,
            slow_batch_ms: 0,
        }
    }
}

/// Builds the actix server (not yet awaited). Kept out of `run` so that `run`'s future holds
/// only `Send` state.
fn build_server(
    listener: TcpListener,
    store: Arc<Store>,
    opts: &ServerOptions,
) -> std::io::Result<actix_web::dev::Server> {
    let guard = Guard::serving_reads("store", &store.config().security, access)
        .map_err(std::io::Error::other)?;
    let tls = store.config().security.tls.clone();
    guard
        .check_listener(listener.local_addr()?)
        .map_err(std::io::Error::other)?;
    let data = web::Data::new(store);
    let slow = (opts.slow_batch_ms > 0)
        .then(|| SlowBatches(std::time::Duration::from_millis(opts.slow_batch_ms)));
    let ceiling = opts
        .memory_ceiling_bytes
        .map(|n| web::Data::new(MemoryCeiling(Bytes::from(vec![0x5a; n]))));
    let mut server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(data.clone())
            .wrap(guard.layer())
            .wrap(actix_web::middleware::from_fn(record_metrics))
            .configure(routes);
        if let Some(s) = slow {
            app = app.app_data(web::Data::new(s));
        }
        if let Some(c) = &ceiling {
            app = app
                .app_data(c.clone())
                .service(web::scope("/bench/memory").default_service(web::to(get_from_memory)));
        }
        app.default_service(web::to(not_found))
    })
    .disable_signals()
    .client_request_timeout(haystack_service::REQUEST_HEAD_TIMEOUT)
    .shutdown_timeout(opts.shutdown_timeout_secs);
    if opts.workers > 0 {
        server = server.workers(opts.workers);
    }
    Ok(haystack_service::tls::listen(server, listener, tls.as_deref())?.run())
}

/// Serves the store on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests (writes included) finish, and flushes the index checkpoints.
pub async fn run(
    listener: TcpListener,
    store: Arc<Store>,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::metrics::install();
    let addr = listener.local_addr()?;
    let server = build_server(listener, store.clone(), &opts)?;
    let handle = server.handle();
    tracing::info!(%addr, engine = store.engine().kind().as_str(), "store listening");
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("store shutting down; finishing in-flight requests");
        handle.stop(true).await;
    });
    server.await?;
    store.close();
    tracing::info!("store stopped");
    Ok(())
}
