//! The uploader's HTTP server (actix-web): photo and video uploads, lookups, deletes,
//! /health and /metrics. Request parsing (raw or multipart bodies, limits, auth, the
//! Idempotency-Key header) lives here, and so does the one mapping from [`UploaderError`] to
//! an HTTP status and error code. docs/API.md ("Uploader") documents every route.

use haystack_client::store::WriteAck;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use haystack_proto::auth::Access;
use haystack_proto::ErrorBody;
use haystack_service::auth::Guard;
use sha2::{Digest, Sha256};

use crate::error::UploaderError;
use crate::service::{Outcome, Uploader, MAX_IDEMPOTENCY_KEY};

impl UploaderError {
    /// The HTTP status and error code of every error: the one place they are decided.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use UploaderError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            InvalidImage(_) => (StatusCode::BAD_REQUEST, "invalid_image"),
            UnsupportedFormat(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_format"),
            TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            TooManyPixels { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "too_many_pixels"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            NoRoute => (StatusCode::NOT_FOUND, "no_such_route"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            WriteFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "write_failed"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Config(_) | Io(_) | Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl ResponseError for UploaderError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.status_and_code();
        crate::metrics::record_error(code);
        if status.is_server_error() {
            tracing::error!(error = %self, code, "request failed");
        } else {
            tracing::debug!(error = %self, code, "request refused");
        }
        let mut r = HttpResponse::build(status);
        match self {
            UploaderError::Unauthorized => {
                r.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            UploaderError::Unavailable(_) | UploaderError::WriteFailed(_) => {
                r.insert_header((header::RETRY_AFTER, "1"));
            }
            UploaderError::RateLimited {
                retry_after_secs, ..
            } => {
                r.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            _ => {}
        }
        r.json(ErrorBody {
            error: code.into(),
            message: self.to_string(),
        })
    }
}

type ApiResult<T> = Result<T, UploaderError>;

/// Shared state of the handlers.
struct State {
    uploader: Uploader,
    limits: Limits,
}

type ClientLimiter = governor::DefaultKeyedRateLimiter<IpAddr>;

/// The upload limits: per client address a token bucket (governor's GCRA) and a count of
/// uploads in progress; the API keys, each with its own bucket and count.
struct Limits {
    rate: Option<ClientLimiter>,
    max_in_flight: usize,
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Every key that opens POST and DELETE (`api_key` and `api_keys`); empty: no key needed.
    keys: Vec<Arc<KeyEntry>>,
    /// When `rate` last dropped the buckets of clients that went quiet (ms since `started`).
    swept_ms: AtomicU64,
    started: Instant,
}

/// How often the per-client buckets of quiet clients are dropped, at most.
const SWEEP_EVERY_MS: u64 = 1_000;

/// The client an upload counts against: its address, an IPv6 one by its /64 (one site's
/// network, whose addresses its hosts pick freely: a client rotating them is one client), an
/// IPv4-mapped one as the IPv4 address.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !(u128::from(u64::MAX)),
            )),
        },
        v4 => v4,
    }
}

/// One API key as the server holds it: the SHA-256 of the key, its limits and its uploads in
/// progress.
struct KeyEntry {
    name: String,
    digest: [u8; 32],
    rate: Option<governor::DefaultDirectRateLimiter>,
    max_in_flight: usize,
    in_flight: AtomicUsize,
}

/// An upload in progress: its client's count (and its key's) goes down when it is dropped.
struct UploadSlot {
    ip: IpAddr,
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
    _key: Option<KeySlot>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut m = haystack_service::sync::lock(&self.in_flight);
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// One upload counted against its key until dropped.
struct KeySlot(Arc<KeyEntry>);

impl Drop for KeySlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bucket(per_min: u32, burst: u32) -> Option<governor::Quota> {
    std::num::NonZeroU32::new(per_min).map(|per_min| {
        let burst = std::num::NonZeroU32::new(burst).unwrap_or(per_min);
        governor::Quota::per_minute(per_min).allow_burst(burst)
    })
}

fn rate_limited(
    limit: &'static str,
    what: String,
    not_until: governor::NotUntil<governor::clock::QuantaInstant>,
) -> UploaderError {
    let wait = not_until.wait_time_from(governor::clock::Clock::now(
        &governor::clock::DefaultClock::default(),
    ));
    metrics::counter!("haystack_uploader_rate_limited_total", "limit" => limit).increment(1);
    UploaderError::RateLimited {
        what,
        retry_after_secs: wait.as_secs() + 1,
    }
}

impl Limits {
    /// Drops the buckets of clients whose bucket is full again (they would start afresh
    /// anyway), at most once per [`SWEEP_EVERY_MS`], so that the addresses ever seen do not
    /// pile up in memory.
    fn sweep(&self, rate: &ClientLimiter) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.swept_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= SWEEP_EVERY_MS
            && self
                .swept_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }

    fn new(cfg: &crate::UploaderConfig) -> Limits {
        let rate = bucket(
            cfg.uploads_per_minute_per_client,
            cfg.upload_burst_per_client,
        )
        .map(governor::RateLimiter::keyed);
        let mut keys: Vec<Arc<KeyEntry>> = Vec::new();
        if let Some(k) = &cfg.api_key {
            keys.push(Arc::new(KeyEntry {
                name: "api_key".into(),
                digest: Sha256::digest(k.as_bytes()).into(),
                rate: None,
                max_in_flight: 0,
                in_flight: AtomicUsize::new(0),
            }));
        }
        for k in &cfg.api_keys {
            // validate() has checked every digest.
            let Some(digest) = k.digest() else { continue };
            keys.push(Arc::new(KeyEntry {
                name: k.name.clone(),
                digest,
                rate: bucket(k.uploads_per_minute, k.upload_burst)
                    .map(governor::RateLimiter::direct),
                max_in_flight: k.max_concurrent_uploads,
                in_flight: AtomicUsize::new(0),
            }));
        }
        Limits {
            rate,
            max_in_flight: cfg.max_concurrent_uploads_per_client,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            keys,
            swept_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Checks `Authorization: Bearer <key>` when keys are configured: the key's SHA-256 is
    /// compared with every configured one in constant time. Returns the key (None when no key
    /// is needed).
    fn authorize(&self, req: &HttpRequest) -> ApiResult<Option<Arc<KeyEntry>>> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if given.is_empty() {
            return Err(UploaderError::Unauthorized);
        }
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            let diff = k
                .digest
                .iter()
                .zip(d)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(k.clone());
            }
        }
        found.map(Some).ok_or(UploaderError::Unauthorized)
    }

    /// Admits an upload from `req`'s client under `key`, or refuses it with 429: the key's
    /// rate and bound on uploads in progress, then the client address's.
    fn admit(&self, req: &HttpRequest, key: Option<Arc<KeyEntry>>) -> ApiResult<UploadSlot> {
        let ip = client_of(
            req.peer_addr()
                .map(|a| a.ip())
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        );
        let key_slot = match key {
            Some(k) => {
                if let Some(rate) = &k.rate {
                    if let Err(not_until) = rate.check() {
                        return Err(rate_limited(
                            "key_rate",
                            format!("API key {} is over its upload rate", k.name),
                            not_until,
                        ));
                    }
                }
                let before = k.in_flight.fetch_add(1, Ordering::Relaxed);
                let slot = KeySlot(k);
                if slot.0.max_in_flight > 0 && before >= slot.0.max_in_flight {
                    metrics::counter!("haystack_uploader_rate_limited_total", "limit" => "key_concurrent")
                        .increment(1);
                    return Err(UploaderError::RateLimited {
                        what: format!(
                            "API key {} has {before} uploads in progress already",
                            slot.0.name
                        ),
                        retry_after_secs: 1,
                    });
                }
                Some(slot)
            }
            None => None,
        };
        if let Some(rate) = &self.rate {
            let checked = rate.check_key(&ip);
            self.sweep(rate);
            if let Err(not_until) = checked {
                return Err(rate_limited(
                    "rate",
                    format!("{ip} is over its upload rate"),
                    not_until,
                ));
            }
        }
        let mut m = haystack_service::sync::lock(&self.in_flight);
        let n = m.entry(ip).or_insert(0);
        if self.max_in_flight > 0 && *n >= self.max_in_flight {
            metrics::counter!("haystack_uploader_rate_limited_total", "limit" => "concurrent")
                .increment(1);
            return Err(UploaderError::RateLimited {
                what: format!("{ip} has {} uploads in progress already", *n),
                retry_after_secs: 1,
            });
        }
        *n += 1;
        if let Some(k) = &key_slot {
            tracing::debug!(api_key = %k.0.name, %ip, "upload admitted");
        }
        Ok(UploadSlot {
            ip,
            in_flight: self.in_flight.clone(),
            _key: key_slot,
        })
    }
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> ApiResult<Option<&str>> {
    match req.headers().get(&name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| UploaderError::BadRequest(format!("{name} is not visible ASCII"))),
    }
}

fn idempotency_key(req: &HttpRequest) -> ApiResult<Option<String>> {
    let Some(k) = header_str(req, header::HeaderName::from_static("idempotency-key"))? else {
        return Ok(None);
    };
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UploaderError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(Some(k.to_string()))
}

/// The request's `Haystack-Write-Ack` (all, quorum, one), if any.
fn write_ack(req: &HttpRequest) -> ApiResult<Option<WriteAck>> {
    header_str(req, header::HeaderName::from_static("haystack-write-ack"))?
        .map(|v| v.parse::<WriteAck>().map_err(UploaderError::BadRequest))
        .transpose()
}

fn content_length(req: &HttpRequest) -> ApiResult<Option<u64>> {
    header_str(req, header::CONTENT_LENGTH)?
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| UploaderError::BadRequest("Content-Length is not a number".into()))
        })
        .transpose()
}

/// The media type without parameters, lowercased; None when absent.
fn media_type(req: &HttpRequest) -> ApiResult<Option<String>> {
    Ok(header_str(req, header::CONTENT_TYPE)?.map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }))
}

/// Reads a stream into memory up to `max` bytes; past it, `TooLarge` at once; when no piece
/// arrives for `idle`, `BodyTimeout`.
async fn read_limited<S, E>(
    mut s: S,
    max: u64,
    hint: Option<u64>,
    idle: std::time::Duration,
) -> ApiResult<Bytes>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    // Reserve at most 1 MiB before bytes arrive: headers alone cannot reserve gigabytes.
    let mut buf = BytesMut::with_capacity(hint.unwrap_or(0).min(max).min(1 << 20) as usize);
    while let Some(piece) = haystack_service::body::next_within(&mut s, idle)
        .await
        .map_err(|e| UploaderError::BodyTimeout(e.to_string()))?
    {
        let piece = piece
            .map_err(|e| UploaderError::BadRequest(format!("reading the body failed: {e}")))?;
        if buf.len() as u64 + piece.len() as u64 > max {
            return Err(UploaderError::TooLarge { max });
        }
        buf.extend_from_slice(&piece);
    }
    Ok(buf.freeze())
}

/// What a multipart form may hold besides its file, in all: boundaries, field headers and the
/// other fields (read and dropped). A declared `Content-Length` gets the same allowance.
const FORM_ALLOWANCE: u64 = 64 << 10;

/// The form's next field, or `BodyTimeout` when the form sends nothing for `idle` (the
/// preamble, a field's header, the gap before the next field: a form that stalls there is cut
/// off as one that stalls in a field's data).
async fn next_field(
    form: &mut actix_multipart::Multipart,
    idle: std::time::Duration,
) -> ApiResult<Option<actix_multipart::Field>> {
    haystack_service::body::next_within(form, idle)
        .await
        .map_err(|e| UploaderError::BodyTimeout(e.to_string()))?
        .transpose()
        .map_err(multipart_error)
}

/// Reads a field that is not the file and drops it, counting its bytes against `left` (what
/// the whole form may still hold); past it, `TooLarge { max }` at once.
async fn skip_field(
    mut field: actix_multipart::Field,
    left: &mut u64,
    max: u64,
    idle: std::time::Duration,
) -> ApiResult<()> {
    while let Some(piece) = haystack_service::body::next_within(&mut field, idle)
        .await
        .map_err(|e| UploaderError::BodyTimeout(e.to_string()))?
    {
        let piece = piece
            .map_err(|e| UploaderError::BadRequest(format!("reading the body failed: {e}")))?;
        *left = left
            .checked_sub(piece.len() as u64)
            .ok_or(UploaderError::TooLarge { max })?;
    }
    Ok(())
}

const PHOTO_TYPES: &[&str] = &[
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "application/octet-stream",
];

/// The photo's bytes from a raw body or the multipart field `file`.
async fn photo_body(
    req: &HttpRequest,
    payload: web::Payload,
    max: u64,
    idle: std::time::Duration,
) -> ApiResult<Bytes> {
    let declared = content_length(req)?;
    let mt = media_type(req)?;
    if mt.as_deref() == Some("multipart/form-data") {
        // The form's own framing is small; the file inside is held to `max` by itself.
        if declared.is_some_and(|n| n > max + FORM_ALLOWANCE) {
            return Err(UploaderError::TooLarge { max });
        }
        let mut form = actix_multipart::Multipart::new(req.headers(), payload);
        // Every field counts toward one total, so a chunked form is held to the limit too.
        let mut left = max + FORM_ALLOWANCE;
        while let Some(field) = next_field(&mut form, idle).await? {
            if field.name() == Some("file") {
                return read_limited(field, max.min(left), declared, idle)
                    .await
                    .map_err(|e| match e {
                        UploaderError::TooLarge { .. } => UploaderError::TooLarge { max },
                        e => e,
                    });
            }
            // Other fields are read and dropped.
            skip_field(field, &mut left, max, idle).await?;
        }
        return Err(UploaderError::BadRequest(
            "the multipart form has no field named \"file\"".into(),
        ));
    }
    if let Some(t) = mt.as_deref() {
        if !t.is_empty() && !PHOTO_TYPES.contains(&t) {
            return Err(UploaderError::UnsupportedFormat(format!(
                "Content-Type {t} (JPEG, PNG, WebP and GIF are taken)"
            )));
        }
    }
    if declared.is_some_and(|n| n > max) {
        return Err(UploaderError::TooLarge { max });
    }
    read_limited(payload, max, declared, idle).await
}

fn multipart_error(e: actix_multipart::MultipartError) -> UploaderError {
    UploaderError::BadRequest(format!("malformed multipart form: {e}"))
}

fn created<T: serde::Serialize>(outcome: Outcome, location: String, body: &T) -> HttpResponse {
    let mut r = HttpResponse::Created();
    r.insert_header((header::LOCATION, location));
    if outcome == Outcome::Replayed {
        r.insert_header(("Idempotent-Replayed", "true"));
    }
    r.json(body)
}

async fn post_photo(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> ApiResult<HttpResponse> {
    let api_key = state.limits.authorize(&req)?;
    let _slot = state.limits.admit(&req, api_key)?;
    let key = idempotency_key(&req)?;
    let ack = write_ack(&req)?;
    let cfg = state.uploader.config();
    let body = photo_body(&req, payload, cfg.max_photo_bytes, cfg.body_idle_timeout()).await?;
    let (photo, outcome) = state
        .uploader
        .upload_photo(body, key.as_deref(), ack)
        .await?;
    Ok(created(outcome, format!("/v1/photos/{}", photo.id), &photo))
}

const VIDEO_TYPES: &[&str] = &["application/octet-stream"];

async fn post_video(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> ApiResult<HttpResponse> {
    let api_key = state.limits.authorize(&req)?;
    let _slot = state.limits.admit(&req, api_key)?;
    let key = idempotency_key(&req)?;
    let max = state.uploader.config().max_video_bytes;
    let declared = content_length(&req)?;
    let mt = media_type(&req)?.filter(|t| !t.is_empty());
    let (video, outcome) = if mt.as_deref() == Some("multipart/form-data") {
        if declared.is_some_and(|n| n > max + FORM_ALLOWANCE) {
            return Err(UploaderError::TooLarge { max });
        }
        let mut form = actix_multipart::Multipart::new(req.headers(), payload);
        let idle = state.uploader.config().body_idle_timeout();
        // The fields before the file, all together, within the form's allowance.
        let mut left = FORM_ALLOWANCE;
        loop {
            let Some(field) = next_field(&mut form, idle).await? else {
                return Err(UploaderError::BadRequest(
                    "the multipart form has no field named \"file\"".into(),
                ));
            };
            if field.name() != Some("file") {
                skip_field(field, &mut left, max, idle).await?;
                continue;
            }
            let ct = field
                .content_type()
                .map(|m| m.essence_str().to_ascii_lowercase())
                .unwrap_or_else(|| "application/octet-stream".into());
            check_video_type(&ct)?;
            break state
                .uploader
                .upload_video(ct, declared.map(|n| n.min(max)), field, key.as_deref())
                .await?;
        }
    } else {
        let ct = mt.unwrap_or_else(|| "application/octet-stream".into());
        check_video_type(&ct)?;
        state
            .uploader
            .upload_video(ct, declared, payload, key.as_deref())
            .await?
    };
    Ok(created(outcome, format!("/v1/photos/{}", video.id), &video))
}

/// The longest media type a store keeps with a needle (docs/FORMAT.md).
const MAX_CONTENT_TYPE_LEN: usize = 255;

fn check_video_type(t: &str) -> ApiResult<()> {
    if t.len() > MAX_CONTENT_TYPE_LEN {
        return Err(UploaderError::BadRequest(format!(
            "Content-Type longer than {MAX_CONTENT_TYPE_LEN} bytes"
        )));
    }
    if t.starts_with("video/") || VIDEO_TYPES.contains(&t) {
        Ok(())
    } else {
        Err(UploaderError::UnsupportedFormat(format!(
            "Content-Type {t} (a video/* type or application/octet-stream is taken)"
        )))
    }
}

fn path_id(req: &HttpRequest) -> ApiResult<u64> {
    let s = req.match_info().get("id").unwrap_or("");
    s.parse()
        .map_err(|_| UploaderError::BadRequest(format!("photo id {s:?} is not a decimal u64")))
}

async fn get_photo(req: HttpRequest, state: web::Data<State>) -> ApiResult<HttpResponse> {
    let id = path_id(&req)?;
    Ok(HttpResponse::Ok().json(state.uploader.get(id).await?))
}

async fn delete_photo(req: HttpRequest, state: web::Data<State>) -> ApiResult<HttpResponse> {
    state.limits.authorize(&req)?;
    let id = path_id(&req)?;
    state.uploader.delete(id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn health(state: web::Data<State>) -> HttpResponse {
    let up = tokio::time::timeout(Duration::from_secs(2), state.uploader.directory_up())
        .await
        .unwrap_or(false);
    let body = serde_json::json!({
        "status": if up { "ok" } else { "degraded" },
        "directory": if up { "up" } else { "down" },
        "pid": std::process::id(),
    });
    if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

async fn no_route() -> ApiResult<HttpResponse> {
    Err(UploaderError::NoRoute)
}

async fn wrong_method() -> ApiResult<HttpResponse> {
    Err(UploaderError::MethodNotAllowed)
}

/// The route of a path, as a metrics label.
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/photos" => "/v1/photos",
        "/v1/videos" => "/v1/videos",
        "/health" => "/health",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/photos/") && p[11..].bytes().all(|b| b != b'/') => {
            "/v1/photos/{id}"
        }
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
        method.as_str(),
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(res)
}

/// The uploader's routes, for embedding in an actix `App`.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/photos")
            .route(web::post().to(post_photo))
            .default_service(web::to(wrong_method)),
    )
    .service(
        web::resource("/v1/photos/{id}")
            .route(web::get().to(get_photo))
            .route(web::head().to(get_photo))
            .route(web::delete().to(delete_photo))
            .default_service(web::to(wrong_method)),
    )
    .service(
        web::resource("/v1/videos")
            .route(web::post().to(post_video))
            .default_service(web::to(wrong_method)),
    )
    .service(
        web::resource("/health")
            .route(web::get().to(health))
            .default_service(web::to(wrong_method)),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics_page))
            .default_service(web::to(wrong_method)),
    );
}

/// The access class of a request to the uploader, for the cluster's auth layer: the upload
/// API (its own API key is checked by the handlers), `/health` and `/metrics` are public;
/// any other route, one added later included, needs an admin token.
pub fn access(_method: &actix_web::http::Method, path: &str) -> Access {
    match route_label(path) {
        "other" => Access::Admin,
        _ => Access::Public,
    }
}

fn build_server(
    listener: TcpListener,
    state: web::Data<State>,
    workers: usize,
    shutdown_timeout_secs: u64,
) -> std::io::Result<actix_web::dev::Server> {
    let tls = state.uploader.config().security.tls.clone();
    let guard = Guard::new("uploader", &state.uploader.config().security, access)
        .map_err(std::io::Error::other)?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(guard.layer())
            .wrap(actix_web::middleware::from_fn(record_metrics))
            .configure(routes)
            .default_service(web::to(no_route))
    })
    .disable_signals()
    .client_request_timeout(haystack_service::REQUEST_HEAD_TIMEOUT)
    .workers(workers)
    .shutdown_timeout(shutdown_timeout_secs);
    Ok(haystack_service::tls::listen(server, listener, tls.as_deref())?.run())
}

/// Serves `uploader` on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight uploads finish (up to `shutdown_timeout_secs`).
pub(crate) async fn serve(
    listener: TcpListener,
    uploader: Uploader,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), UploaderError> {
    crate::metrics::install();
    let addr = listener.local_addr()?;
    let cfg = uploader.config().clone();
    let limits = Limits::new(uploader.config());
    let state = web::Data::new(State { uploader, limits });
    let server = build_server(listener, state, cfg.http_workers, cfg.shutdown_timeout_secs)?;
    let handle = server.handle();
    tracing::info!(
        %addr,
        directories = ?cfg.directories().unwrap_or_default(),
        auth = cfg.api_key.is_some(),
        "uploader listening"
    );
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("uploader shutting down; finishing in-flight uploads");
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!("uploader stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(ip: &str) -> HttpRequest {
        actix_web::test::TestRequest::default()
            .peer_addr(std::net::SocketAddr::new(ip.parse().unwrap(), 40_000))
            .to_http_request()
    }

    /// The per-client buckets of clients that went quiet are dropped (at most once a second,
    /// on an admission): before, every address ever seen kept its entry for good.
    #[test]
    fn the_client_limiter_forgets_clients_that_went_quiet() {
        let cfg = crate::UploaderConfig {
            uploads_per_minute_per_client: 60_000,
            upload_burst_per_client: 1,
            ..Default::default()
        };
        let limits = Limits::new(&cfg);
        for i in 0..500u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            drop(limits.admit(&from(&ip), None).unwrap());
        }
        let rate = limits.rate.as_ref().expect("a client rate is configured");
        assert!(rate.len() >= 499, "{}", rate.len());
        // Every bucket is full again after 1 ms; the sweep runs at most once a second.
        std::thread::sleep(Duration::from_millis(1_100));
        drop(limits.admit(&from("10.200.0.1"), None).unwrap());
        assert!(rate.len() <= 2, "buckets kept: {}", rate.len());
    }

    /// The addresses of one IPv6 /64 (one site's network, handed out freely inside it) count
    /// as one client: before, each address had a bucket of its own.
    #[test]
    fn the_addresses_of_one_ipv6_64_are_one_client() {
        let cfg = crate::UploaderConfig {
            uploads_per_minute_per_client: 1,
            upload_burst_per_client: 1,
            ..Default::default()
        };
        let limits = Limits::new(&cfg);
        drop(limits.admit(&from("2001:db8:1:2::1"), None).unwrap());
        assert!(matches!(
            limits.admit(&from("2001:db8:1:2::abcd"), None),
            Err(UploaderError::RateLimited { .. })
        ));
        drop(limits.admit(&from("2001:db8:1:3::1"), None).unwrap());
        drop(limits.admit(&from("192.0.2.1"), None).unwrap());
        assert!(matches!(
            limits.admit(&from("::ffff:192.0.2.1"), None),
            Err(UploaderError::RateLimited { .. })
        ));
    }

    #[test]
    fn route_labels() {
        assert_eq!(route_label("/v1/photos"), "/v1/photos");
        assert_eq!(route_label("/v1/photos/123"), "/v1/photos/{id}");
        assert_eq!(route_label("/v1/photos/1/2"), "other");
        assert_eq!(route_label("/nope"), "other");
    }

    #[test]
    fn every_error_is_a_4xx_or_5xx() {
        for e in [
            UploaderError::Unauthorized,
            UploaderError::TooLarge { max: 1 },
            UploaderError::InvalidImage("x".into()),
            UploaderError::WriteFailed("x".into()),
        ] {
            let s = e.status_and_code().0;
            assert!(s.is_client_error() || s.is_server_error());
        }
    }
}
