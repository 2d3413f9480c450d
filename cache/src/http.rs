//! The cache's HTTP server (actix-web): needles and videos with the semantics a CDN origin
//! needs, purge, forwarding to the owning peer, /health, /v1/stats and /metrics. Errors become
//! statuses in one place, [`error_response`]. docs/API.md ("Cache") documents every route.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{MessageBody, SizedStream};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpResponseBuilder, HttpServer};
use bytes::Bytes;
use haystack_proto::auth::Access;
use haystack_proto::needle::NEEDLES_PREFIX;
use haystack_proto::range::{decide, if_none_match, RangeDecision};
use haystack_proto::{parse_cookie, ErrorBody, NeedleAddr};
use haystack_service::auth::Guard;

use crate::error::CacheError;
use crate::memory::{Needle, NeedleKey};
use crate::node::{Node, HOP_HEADER};
use crate::upstream::Clients;
use crate::video::Video;

/// What every successful needle or video answer says to browsers and CDNs: the bytes under a
/// URL never change (a photo id and cookie are never reused; a delete makes the URL 404).
const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";

/// What a needle or video answer says instead when the directory could not confirm that its
/// photo is live (unreachable; the store's bytes are served for availability, but the photo
/// may have been deleted while that store was down): a minute, as long as a node a purge
/// missed may serve a deleted photo by default (`recheck_hits_after_ms`), rather than a year;
/// still storable, so that a CDN absorbs repeated reads of a popular photo during the outage.
/// Revalidation (`If-None-Match`) after that minute gets the usual answer once the directory
/// is back, or a 404 if the photo was deleted.
const CACHE_BRIEFLY: &str = "public, max-age=60";

type Result<T> = std::result::Result<T, CacheError>;

/// The status and error code of every error: the one place they are decided.
fn status_of(e: &CacheError) -> (StatusCode, &'static str) {
    use CacheError::*;
    match e {
        BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        NotFound => (StatusCode::NOT_FOUND, "not_found"),
        NoSuchVolume(_) => (StatusCode::NOT_FOUND, "no_such_volume"),
        NoRoute => (StatusCode::NOT_FOUND, "no_such_route"),
        MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        StoreUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        DirectoryUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable"),
        InconsistentVideo { .. } => (StatusCode::BAD_GATEWAY, "inconsistent_video"),
        PeerPurge(_) => (StatusCode::BAD_GATEWAY, "peer_purge_failed"),
        Config(_) | Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// An error as the API answers it: the status, a JSON [`ErrorBody`], `Cache-Control: no-store`
/// (an error must not outlive its cause in a CDN), and `Retry-After` on a 503.
pub fn error_response(e: &CacheError, retry_after_secs: u64) -> HttpResponse {
    let (status, code) = status_of(e);
    if status.is_server_error() {
        tracing::warn!(error = %e, code, "request failed");
    }
    let mut r = HttpResponse::build(status);
    r.insert_header((header::CACHE_CONTROL, "no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
    }
    r.json(ErrorBody {
        error: code.into(),
        message: e.to_string(),
    })
}

fn bad(m: impl Into<String>) -> CacheError {
    CacheError::BadRequest(m.into())
}

/// The segments of a path after `prefix`, exactly `N` of them.
fn segments<'a, const N: usize>(path: &'a str, prefix: &str, shape: &str) -> Result<[&'a str; N]> {
    let rest = path.strip_prefix(prefix).ok_or(CacheError::NoRoute)?;
    let mut out = [""; N];
    let mut it = rest.split('/');
    for slot in out.iter_mut() {
        *slot = it
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(format!("expected {shape}")))?;
    }
    if it.next().is_some() {
        return Err(bad(format!("expected {shape}")));
    }
    Ok(out)
}

fn parse_u32(s: &str, what: &str) -> Result<u32> {
    s.parse()
        .map_err(|_| bad(format!("{what} {s:?} is not a 32-bit unsigned integer")))
}

fn parse_u64(s: &str, what: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| bad(format!("{what} {s:?} is not a 64-bit unsigned integer")))
}

fn parse_cookie_seg(s: &str) -> Result<u64> {
    parse_cookie(s).ok_or_else(|| bad(format!("cookie {s:?} is not 1 to 16 hex digits")))
}

/// `/v1/needles/{volume}/{key}/{alt}/{cookie}` ([`NeedleAddr`]).
fn needle_addr(path: &str) -> Result<(NeedleKey, u64)> {
    if !path.starts_with(NEEDLES_PREFIX) {
        return Err(CacheError::NoRoute);
    }
    let a = NeedleAddr::parse_path(path).map_err(|e| bad(e.to_string()))?;
    Ok((
        NeedleKey {
            volume: a.volume,
            key: a.key,
            alt: a.alt,
        },
        a.cookie,
    ))
}

/// `/v1/videos/{volume}/{id}/{cookie}`.
fn video_addr(path: &str) -> Result<(u32, u64, u64)> {
    let [v, id, c] = segments::<3>(path, "/v1/videos/", "/v1/videos/{volume}/{id}/{cookie}")?;
    Ok((
        parse_u32(v, "volume id")?,
        parse_u64(id, "video id")?,
        parse_cookie_seg(c)?,
    ))
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The body of a HEAD answer: declares a length, sends nothing.
struct HeadBody(u64);

impl MessageBody for HeadBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(self.0)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<Bytes, Self::Error>>> {
        std::task::Poll::Ready(None)
    }
}

/// Headers every 200/206/304 of a needle or video carries: its ETag, and for how long it may
/// be kept ([`CACHE_FOREVER`], or [`CACHE_BRIEFLY`] when its photo's liveness is unknown).
fn cacheable(r: &mut HttpResponseBuilder, etag: &HeaderValue, live_unknown: bool) {
    let cc = if live_unknown {
        CACHE_BRIEFLY
    } else {
        CACHE_FOREVER
    };
    r.insert_header((header::ETAG, etag.clone()))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static(cc)));
}

fn not_satisfiable(len: u64) -> HttpResponse {
    HttpResponse::RangeNotSatisfiable()
        .insert_header((header::CONTENT_RANGE, format!("bytes */{len}")))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(ErrorBody {
            error: "range_not_satisfiable".into(),
            message: format!("the resource has {len} bytes"),
        })
}

/// The request's Range, which only a GET has (RFC 9110 §14.2: ignored on a HEAD, as the store
/// does).
fn range_of(req: &HttpRequest) -> Option<&str> {
    if req.method() == Method::GET {
        header_str(req, header::RANGE)
    } else {
        None
    }
}

/// Answers a GET or HEAD of a needle held in memory: 304, 200, 206 or 416.
fn needle_response(req: &HttpRequest, n: &Needle, node: &Node) -> HttpResponse {
    if if_none_match(header_str(req, header::IF_NONE_MATCH), etag_str(&n.etag)) {
        let mut r = HttpResponse::NotModified();
        cacheable(&mut r, &n.etag, n.live_unknown);
        return r.finish();
    }
    let len = n.data.len() as u64;
    let head = req.method() == Method::HEAD;
    let (mut r, body) = match decide(range_of(req), len) {
        RangeDecision::Full => (HttpResponse::Ok(), n.data.clone()),
        RangeDecision::Partial { start, end } => {
            let mut r = HttpResponse::PartialContent();
            r.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")));
            (r, n.data.slice(start as usize..=end as usize))
        }
        RangeDecision::Unsatisfiable => return not_satisfiable(len),
    };
    r.insert_header((header::CONTENT_TYPE, n.content_type.clone()))
        .insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    cacheable(&mut r, &n.etag, n.live_unknown);
    if head {
        return r.body(HeadBody(body.len() as u64));
    }
    node.stats.bytes_served.add(body.len() as u64);
    r.body(body)
}

fn etag_str(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("")
}

/// Sends a GET or HEAD on to the peer that owns the photo and relays its answer. `None` when
/// the peer cannot be reached (the caller then serves the request itself).
async fn forward(req: &HttpRequest, node: &Node, c: &Clients, peer: &str) -> Option<HttpResponse> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(req.path());
    let url = format!("{peer}{path}");
    let method = if req.method() == Method::HEAD {
        reqwest::Method::HEAD
    } else {
        reqwest::Method::GET
    };
    let who = if node.from_cdn(req) { "cdn" } else { "user" };
    let mut rb = c.http.request(method, &url).header(HOP_HEADER, who);
    for h in [header::RANGE, header::IF_NONE_MATCH] {
        if let Some(v) = req.headers().get(&h) {
            rb = rb.header(h.as_str(), v.as_bytes());
        }
    }
    // `peer_timeout_ms` bounds the wait for the answer's head only: the body is relayed as
    // fast as the client reads it (the client's idle read timeout covers a peer that stalls).
    let sent = tokio::time::timeout(Duration::from_millis(node.cfg.peer_timeout_ms), rb.send());
    let resp = match sent.await {
        Ok(Ok(r)) => r,
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {} ms", node.cfg.peer_timeout_ms),
            };
            node.stats.forward_failures.add(1);
            tracing::warn!(peer, %error, "forwarding to the owning peer failed; serving here");
            return None;
        }
    };
    node.stats.forwarded.add(1);
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = HttpResponse::build(status);
    for (name, value) in resp.headers() {
        let keep = matches!(
            name.as_str(),
            "content-type"
                | "etag"
                | "cache-control"
                | "content-range"
                | "accept-ranges"
                | "retry-after"
        );
        if keep {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                r.insert_header((n, v));
            }
        }
    }
    // The header, not reqwest's body size (which is 0 for a HEAD).
    let len = resp
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if status == StatusCode::NOT_MODIFIED {
        return Some(r.finish());
    }
    if req.method() == Method::HEAD {
        return Some(r.body(HeadBody(len.unwrap_or(0))));
    }
    let stream = PeerBody {
        inner: Box::pin(resp.bytes_stream()),
        idle: Duration::from_millis(node.cfg.peer_timeout_ms),
        timer: None,
    };
    Some(match len {
        Some(n) => r.body(SizedStream::new(n, stream)),
        None => r.streaming(stream),
    })
}

/// A body relayed from a peer: it fails when the peer sends nothing for `idle` while a read
/// waits for it. Its clock runs only while this stream is polled and the peer has nothing: a
/// client that reads slowly (the stream not polled while its socket is full) is not the
/// peer's stall. (reqwest's read timeout kept running while the body was not polled, and cut
/// the bodies of slow clients.)
struct PeerBody<S> {
    inner: std::pin::Pin<Box<S>>,
    idle: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> futures_util::Stream for PeerBody<S>
where
    S: futures_util::Stream<Item = reqwest::Result<Bytes>>,
{
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(item) => {
                self.timer = None;
                Poll::Ready(item.map(|r| r.map_err(std::io::Error::other)))
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the owning peer sent nothing for {idle:?} mid-body"),
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Everything under `/v1/needles/`: GET and HEAD serve, DELETE purges.
async fn needles(
    req: HttpRequest,
    node: web::Data<Arc<Node>>,
    c: web::Data<Clients>,
) -> HttpResponse {
    let retry = node.cfg.retry_after_secs;
    match needles_inner(&req, &node, &c).await {
        Ok(r) => r,
        Err(e) => error_response(&e, retry),
    }
}

async fn needles_inner(req: &HttpRequest, node: &Arc<Node>, c: &Clients) -> Result<HttpResponse> {
    let (k, cookie) = needle_addr(req.path())?;
    match *req.method() {
        Method::GET | Method::HEAD => {
            if let Some(peer) = node.forward_to(req, k.volume, k.key) {
                if let Some(r) = forward(req, node, c, peer).await {
                    return Ok(r);
                }
            }
            let n = node.needle(c, k, cookie, node.from_cdn(req)).await?;
            Ok(needle_response(req, &n, node))
        }
        Method::DELETE => purge(req, node, c, k).await,
        _ => Err(CacheError::MethodNotAllowed),
    }
}

/// Forgets a photo here (every alternate key, its chunk list, reads under way) and, unless a
/// peer sent it, on every peer. 204 once all confirmed; the entry need not exist.
async fn purge(req: &HttpRequest, node: &Node, c: &Clients, k: NeedleKey) -> Result<HttpResponse> {
    let removed = node.purge(k.volume, k.key);
    tracing::info!(volume = k.volume, key = k.key, removed, "photo purged");
    if let (Some(ring), false) = (&node.ring, req.headers().contains_key(HOP_HEADER)) {
        let path = req.path();
        let calls = ring
            .nodes()
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != node.me)
            .map(|(_, peer)| {
                let url = format!("{peer}{path}");
                async move {
                    let mut r = c
                        .http
                        .delete(&url)
                        .timeout(Duration::from_millis(node.cfg.peer_timeout_ms))
                        .header(HOP_HEADER, "user");
                    if let Some(auth) = c.creds.header() {
                        r = r.header("authorization", auth);
                    }
                    let r = r.send().await;
                    match r {
                        Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => None,
                        Ok(r) => Some(format!("{peer} answered {}", r.status().as_u16())),
                        Err(e) => Some(format!("{peer}: {e}")),
                    }
                }
            });
        let failed: Vec<String> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !failed.is_empty() {
            return Err(CacheError::PeerPurge(failed.join("; ")));
        }
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `GET|HEAD /v1/videos/{volume}/{id}/{cookie}`: the whole video, Range across chunks.
async fn videos(
    req: HttpRequest,
    node: web::Data<Arc<Node>>,
    c: web::Data<Clients>,
) -> HttpResponse {
    let retry = node.cfg.retry_after_secs;
    match videos_inner(&req, &node, &c).await {
        Ok(r) => r,
        Err(e) => error_response(&e, retry),
    }
}

async fn videos_inner(req: &HttpRequest, node: &Arc<Node>, c: &Clients) -> Result<HttpResponse> {
    let (volume, id, cookie) = video_addr(req.path())?;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(CacheError::MethodNotAllowed);
    }
    if let Some(peer) = node.forward_to(req, volume, id) {
        if let Some(r) = forward(req, node, c, peer).await {
            return Ok(r);
        }
    }
    let v = node.videos.get(c, id, &node.live, &node.stats).await?;
    if v.volume != volume || v.cookie != cookie {
        return Err(CacheError::NotFound);
    }
    if if_none_match(header_str(req, header::IF_NONE_MATCH), etag_str(&v.etag)) {
        let mut r = HttpResponse::NotModified();
        cacheable(&mut r, &v.etag, false);
        return Ok(r.finish());
    }
    let (mut r, start, end) = match decide(range_of(req), v.len) {
        RangeDecision::Full => (HttpResponse::Ok(), 0, v.len.checked_sub(1)),
        RangeDecision::Partial { start, end } => {
            let mut r = HttpResponse::PartialContent();
            r.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", v.len),
            ));
            (r, start, Some(end))
        }
        RangeDecision::Unsatisfiable => return Ok(not_satisfiable(v.len)),
    };
    r.insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    cacheable(&mut r, &v.etag, false);
    let Some(end) = end else {
        // An empty video.
        r.insert_header((header::CONTENT_TYPE, "application/octet-stream"));
        return Ok(r.body(Bytes::new()));
    };
    // The first chunk is read before answering, so that a missing or unreachable video gets
    // a proper status (and its content type), not a cut-off 200.
    let from_cdn = node.from_cdn(req);
    let chunks = v.chunks_for(start, end);
    let first = *chunks.start();
    let n = chunk(node, c, &v, first, from_cdn).await?;
    r.insert_header((header::CONTENT_TYPE, n.content_type.clone()));
    if n.live_unknown {
        // The chunk list vouches for the video (asked within `directory_info_ttl_ms`), but the
        // chunk's own check could not be made: short-lived, as for a needle.
        cacheable(&mut r, &v.etag, true);
    }
    let len = end - start + 1;
    if req.method() == Method::HEAD {
        return Ok(r.body(HeadBody(len)));
    }
    let stream = VideoStream {
        node: node.clone(),
        c: c.clone(),
        video: v,
        next: first,
        last: *chunks.end(),
        start,
        end,
        from_cdn,
    }
    .into_stream(n);
    Ok(r.body(SizedStream::new(len, stream)))
}

/// One chunk of a video, checked against the size the directory records.
async fn chunk(
    node: &Arc<Node>,
    c: &Clients,
    v: &Video,
    i: usize,
    from_cdn: bool,
) -> Result<Arc<Needle>> {
    let ch = v.chunks[i];
    let k = NeedleKey {
        volume: v.volume,
        key: v.id,
        alt: ch.alt,
    };
    let n = node.needle(c, k, v.cookie, from_cdn).await?;
    if n.data.len() as u64 != ch.size {
        return Err(CacheError::InconsistentVideo {
            id: v.id,
            alt: ch.alt,
            got: n.data.len() as u64,
            want: ch.size,
        });
    }
    Ok(n)
}

/// The bytes `start..=end` of a video, chunk by chunk; the next chunk is read while the
/// current one is sent.
struct VideoStream {
    node: Arc<Node>,
    c: Clients,
    video: Arc<Video>,
    next: usize,
    last: usize,
    start: u64,
    end: u64,
    from_cdn: bool,
}

type Prefetch = tokio::task::JoinHandle<Result<Arc<Needle>>>;

impl VideoStream {
    fn prefetch(&self, i: usize) -> Option<Prefetch> {
        (i <= self.last).then(|| {
            let (node, c, v, cdn) = (
                self.node.clone(),
                self.c.clone(),
                self.video.clone(),
                self.from_cdn,
            );
            tokio::spawn(async move { chunk(&node, &c, &v, i, cdn).await })
        })
    }

    fn into_stream(
        self,
        first: Arc<Needle>,
    ) -> impl futures_util::Stream<Item = std::result::Result<Bytes, std::io::Error>> {
        let ahead = self.prefetch(self.next + 1);
        futures_util::stream::unfold(
            (self, Some(Ok(first)), ahead),
            |(mut s, have, ahead)| async move {
                if s.next > s.last {
                    return None;
                }
                // `ahead` holds the read of chunk `next + 1` (or, when `have` is empty, of
                // chunk `next`); once it is taken, the read of the chunk after it starts.
                let (got, ahead) = match have {
                    Some(r) => (r, ahead),
                    None => match ahead {
                        Some(h) => {
                            let r = h.await.unwrap_or_else(|e| {
                                Err(CacheError::StoreUnavailable {
                                    volume: s.video.volume,
                                    detail: format!("chunk read failed: {e}"),
                                })
                            });
                            (r, s.prefetch(s.next + 1))
                        }
                        None => return None,
                    },
                };
                let n = match got {
                    Ok(n) => n,
                    Err(e) => {
                        // Headers are gone: the client sees a body shorter than its
                        // Content-Length, which is how HTTP says "failed midway".
                        tracing::warn!(video = s.video.id, error = %e, "video chunk read failed midway");
                        s.next = s.last + 1;
                        return Some((Err(std::io::Error::other(e.to_string())), (s, None, None)));
                    }
                };
                let ch = s.video.chunks[s.next];
                // The range's bytes within this chunk (none of an empty one).
                let from = s.start.max(ch.offset) - ch.offset;
                let to = (s.end + 1)
                    .min(ch.offset + ch.size)
                    .saturating_sub(ch.offset);
                let part = n.data.slice((from.min(to) as usize)..(to as usize));
                s.node.stats.bytes_served.add(part.len() as u64);
                s.next += 1;
                Some((Ok(part), (s, None, ahead)))
            },
        )
    }
}

async fn health(node: web::Data<Arc<Node>>) -> HttpResponse {
    let s = node.snapshot();
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "pid": std::process::id(),
        "entries": s.entries,
        "bytes": s.bytes,
        "capacity_bytes": s.capacity_bytes,
        "peers": node.ring.as_ref().map_or(1, |r| r.nodes().len()),
        "admission": node.cfg.admission,
    }))
}

async fn stats(node: web::Data<Arc<Node>>) -> HttpResponse {
    HttpResponse::Ok().json(node.snapshot())
}

async fn metrics_page(node: web::Data<Arc<Node>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render(&node.snapshot()))
}

async fn not_found(node: web::Data<Arc<Node>>) -> HttpResponse {
    error_response(&CacheError::NoRoute, node.cfg.retry_after_secs)
}

async fn method_not_allowed(node: web::Data<Arc<Node>>) -> HttpResponse {
    error_response(&CacheError::MethodNotAllowed, node.cfg.retry_after_secs)
}

/// The route a path belongs to, as a metrics label (string checks: cheaper than the router).
fn route_label(path: &str) -> &'static str {
    if path.starts_with("/v1/needles/") {
        "/v1/needles/{volume}/{key}/{alt}/{cookie}"
    } else if path.starts_with("/v1/videos/") {
        "/v1/videos/{volume}/{id}/{cookie}"
    } else {
        match path {
            "/health" => "/health",
            "/metrics" => "/metrics",
            "/v1/stats" => "/v1/stats",
            _ => "other",
        }
    }
}

async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> std::result::Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
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

/// The access class of a request to the cache (docs/API.md, "Authentication"): needle and
/// video reads, `/health` and `/metrics` are public; `/v1/stats` needs a read token; a purge
/// (`DELETE` of a needle URL) is the directory's (internal); anything else, and any route added
/// later that is not named here, is an admin action.
pub fn access(method: &Method, path: &str) -> Access {
    let read = matches!(*method, Method::GET | Method::HEAD);
    match (read, route_label(path)) {
        (
            true,
            "/v1/needles/{volume}/{key}/{alt}/{cookie}" | "/v1/videos/{volume}/{id}/{cookie}",
        ) => Access::Public,
        (true, "/health" | "/metrics") => Access::Public,
        (true, "/v1/stats") => Access::Read,
        (false, "/v1/needles/{volume}/{key}/{alt}/{cookie}") if *method == Method::DELETE => {
            Access::Internal
        }
        _ => Access::Admin,
    }
}

/// The cache's routes, for embedding in an actix `App` (with `Data<Arc<Node>>` and
/// `Data<Clients>` registered).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/v1/needles").default_service(web::to(needles)))
        .service(web::scope("/v1/videos").default_service(web::to(videos)))
        .service(
            web::resource("/health")
                .route(web::get().to(health))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/stats")
                .route(web::get().to(stats))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/metrics")
                .route(web::get().to(metrics_page))
                .default_service(web::to(method_not_allowed)),
        );
}

/// Builds the actix server (not yet awaited); kept out of `run` so that `run`'s future holds
/// only `Send` state.
fn build_server(
    listener: TcpListener,
    node: Arc<Node>,
    shared: Clients,
) -> std::io::Result<actix_web::dev::Server> {
    let workers = node.cfg.http_workers;
    let shutdown_secs = node.cfg.shutdown_timeout_secs;
    let guard =
        Guard::serving_reads("cache", &node.cfg.security, access).map_err(std::io::Error::other)?;
    let tls = node.cfg.security.tls.clone();
    guard
        .check_listener(listener.local_addr()?)
        .map_err(std::io::Error::other)?;
    let data = web::Data::new(node.clone());
    let mut server = HttpServer::new(move || {
        // Each worker thread gets its own clients, so its connections to stores and peers
        // live on its own runtime.
        let clients = Clients::new(&node, Some(&shared)).unwrap_or_else(|_| shared.clone());
        App::new()
            .app_data(data.clone())
            .app_data(web::Data::new(clients))
            .wrap(guard.layer())
            .wrap(actix_web::middleware::from_fn(record_metrics))
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .client_request_timeout(haystack_service::REQUEST_HEAD_TIMEOUT)
    .shutdown_timeout(shutdown_secs);
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(haystack_service::tls::listen(server, listener, tls.as_deref())?.run())
}

/// Serves the cache on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish (up to `shutdown_timeout_secs`).
pub async fn run(
    listener: TcpListener,
    config: crate::CacheConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), CacheError> {
    crate::metrics::install();
    let node = Node::new(config)?;
    let shared = Clients::new(&node, None)?;
    let directories = shared.directory.base_urls().to_vec();
    let addr = listener
        .local_addr()
        .map_err(|e| CacheError::io("reading the listener's address", e))?;
    let server = build_server(listener, node.clone(), shared)
        .map_err(|e| CacheError::io("starting the HTTP server", e))?;
    let handle = server.handle();
    tracing::info!(
        %addr,
        capacity_bytes = node.cfg.capacity_bytes,
        admission = ?node.cfg.admission,
        peers = node.cfg.peers.len(),
        ?directories,
        "cache listening"
    );
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("cache shutting down; finishing in-flight requests");
        handle.stop(true).await;
    });
    server
        .await
        .map_err(|e| CacheError::io("serving HTTP", e))?;
    tracing::info!("cache stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let (k, c) = needle_addr("/v1/needles/3/78716483502080513/4/9f86d081884c7d65").unwrap();
        assert_eq!(
            (k.volume, k.key, k.alt, c),
            (3, 78716483502080513, 4, 0x9f86d081884c7d65)
        );
        // Every malformed needle path is proto's to refuse (NeedleAddr's tests); here only
        // how a refusal maps: a bad path is a 400, another route is not ours.
        assert!(matches!(
            needle_addr("/v1/needles/3/7/4/zz"),
            Err(CacheError::BadRequest(_))
        ));
        assert!(matches!(
            needle_addr("/v1/videos/3/7/4/ab"),
            Err(CacheError::NoRoute)
        ));
        assert_eq!(video_addr("/v1/videos/1/2/3").unwrap(), (1, 2, 3));
        assert!(video_addr("/v1/videos/1/2").is_err());
    }

    #[test]
    fn every_error_has_one_status() {
        let errors = [
            (CacheError::BadRequest("x".into()), 400),
            (CacheError::NotFound, 404),
            (CacheError::NoSuchVolume(1), 404),
            (CacheError::NoRoute, 404),
            (CacheError::MethodNotAllowed, 405),
            (
                CacheError::StoreUnavailable {
                    volume: 1,
                    detail: "x".into(),
                },
                503,
            ),
            (CacheError::DirectoryUnavailable("x".into()), 503),
        ];
        for (e, want) in errors {
            let r = error_response(&e, 7);
            assert_eq!(r.status().as_u16(), want, "{e}");
            assert_eq!(
                r.headers()
                    .get(header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap()),
                (want == 503).then_some("7")
            );
        }
    }
}
