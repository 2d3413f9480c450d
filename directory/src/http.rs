//! The directory's HTTP API on actix-web. Every error becomes an HTTP status and a JSON
//! [`ErrorBody`] here, in [`ResponseError for DirectoryError`](DirectoryError), and nowhere else.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use haystack_proto::auth::{Access, WriteScope, WRITE_TOKEN_TTL_SECS};
use haystack_proto::directory::{
    AssignRequest, DamageReport, KeyedCommit, LiveRequest, ReplaceReplicaRequest, UrlResponse,
    VolumeStateRequest,
};
use haystack_proto::{ErrorBody, Heartbeat, StoreRegistration};
use serde::Deserialize;

use crate::error::DirectoryError;
use crate::service::Directory;

impl ResponseError for DirectoryError {
    fn status_code(&self) -> StatusCode {
        match self {
            DirectoryError::NotFound(_) | DirectoryError::Deleted(_) => StatusCode::NOT_FOUND,
            DirectoryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DirectoryError::Conflict(_) => StatusCode::CONFLICT,
            DirectoryError::Unavailable(_) | DirectoryError::NoWritableVolume(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DirectoryError::Config(_) | DirectoryError::Io(_) | DirectoryError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, code = self.code(), "request failed");
        }
        metrics::counter!("haystack_directory_http_errors_total", "code" => self.code())
            .increment(1);
        let mut resp = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.insert_header(("Retry-After", "1"));
        }
        resp.json(ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
        })
    }
}

/// Counts requests and times them per route pattern, method and status.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let status = res.status().as_u16().to_string();
    metrics::histogram!(
        "haystack_directory_http_request_duration_seconds",
        "route" => route.clone(),
        "method" => method.clone()
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "haystack_directory_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => status
    )
    .increment(1);
    Ok(res)
}

type Res = Result<HttpResponse, DirectoryError>;
type Dir = web::Data<Arc<Directory>>;

fn parse_u64(s: &str, what: &str) -> Result<u64, DirectoryError> {
    s.parse()
        .map_err(|_| DirectoryError::BadRequest(format!("{what} {s:?} is not a decimal u64")))
}

fn parse_u32(s: &str, what: &str) -> Result<u32, DirectoryError> {
    s.parse()
        .map_err(|_| DirectoryError::BadRequest(format!("{what} {s:?} is not a decimal u32")))
}

async fn register(dir: Dir, body: web::Json<StoreRegistration>) -> Res {
    Ok(HttpResponse::Ok().json(dir.register(body.into_inner()).await?))
}

async fn heartbeat(dir: Dir, path: web::Path<String>, body: web::Json<Heartbeat>) -> Res {
    let id = parse_u64(&path, "store id")?;
    Ok(HttpResponse::Ok().json(dir.heartbeat(id, body.into_inner()).await?))
}

async fn stores(dir: Dir) -> Res {
    Ok(HttpResponse::Ok().json(dir.stores()))
}

async fn set_store_lifecycle(
    dir: Dir,
    path: web::Path<String>,
    body: web::Json<haystack_proto::directory::StoreLifecycleRequest>,
) -> Res {
    let id = parse_u64(&path, "store id")?;
    Ok(HttpResponse::Ok().json(
        dir.set_store_lifecycle(id, body.into_inner().lifecycle)
            .await?,
    ))
}

async fn remove_store(dir: Dir, path: web::Path<String>) -> Res {
    dir.remove_store(parse_u64(&path, "store id")?).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn volumes(dir: Dir) -> Res {
    Ok(HttpResponse::Ok().json(dir.volumes()))
}

async fn volume(dir: Dir, path: web::Path<String>) -> Res {
    Ok(HttpResponse::Ok().json(dir.volume(parse_u32(&path, "volume id")?)?))
}

async fn create_volume(dir: Dir) -> Res {
    Ok(HttpResponse::Created().json(dir.create_volume().await?))
}

async fn set_volume_state(
    dir: Dir,
    path: web::Path<String>,
    body: web::Json<VolumeStateRequest>,
) -> Res {
    let id = parse_u32(&path, "volume id")?;
    let b = body.into_inner();
    Ok(HttpResponse::Ok().json(dir.set_volume_state(id, b.state, b.reason).await?))
}

async fn encode_volume(
    dir: Dir,
    path: web::Path<String>,
    body: web::Json<haystack_proto::directory::EncodeRequest>,
) -> Res {
    let id = parse_u32(&path, "volume id")?;
    Ok(HttpResponse::Ok().json(dir.encode_volume(id, body.into_inner()).await?))
}

async fn rebuild_shard(
    dir: Dir,
    path: web::Path<String>,
    body: web::Json<haystack_proto::directory::EcRebuildRequest>,
) -> Res {
    let id = parse_u32(&path, "volume id")?;
    Ok(HttpResponse::Ok().json(dir.rebuild_shard(id, body.into_inner()).await?))
}

async fn replace_replica(
    dir: Dir,
    path: web::Path<String>,
    body: web::Json<ReplaceReplicaRequest>,
) -> Res {
    let id = parse_u32(&path, "volume id")?;
    let b = body.into_inner();
    Ok(HttpResponse::Ok().json(
        dir.replace_replica(id, b.from_store_id, b.to_store_id)
            .await?,
    ))
}

async fn promote_remote(
    dir: Dir,
    path: web::Path<String>,
    body: web::Json<haystack_proto::directory::PromoteRequest>,
) -> Res {
    let id = parse_u32(&path, "volume id")?;
    Ok(HttpResponse::Ok().json(dir.promote_remote(id, body.into_inner().store_id).await?))
}

#[derive(serde::Deserialize)]
struct RebalanceQuery {
    /// Overrides `rebalance_spread` for this plan.
    spread: Option<f64>,
}

fn check_spread(q: &RebalanceQuery) -> Result<(), DirectoryError> {
    match q.spread {
        Some(s) if !(0.0..=1.0).contains(&s) => Err(DirectoryError::BadRequest(
            "spread must be a fraction between 0 and 1".into(),
        )),
        _ => Ok(()),
    }
}

async fn rebalance_plan(dir: Dir, q: web::Query<RebalanceQuery>) -> Res {
    check_spread(&q)?;
    Ok(HttpResponse::Ok().json(dir.rebalance_plan(q.spread, crate::service::MAX_REBALANCE_MOVES)))
}

async fn rebalance_run(dir: Dir, q: web::Query<RebalanceQuery>) -> Res {
    check_spread(&q)?;
    Ok(HttpResponse::Ok().json(dir.rebalance(q.spread).await?))
}

async fn assign(dir: Dir, body: web::Bytes) -> Res {
    // The body is optional; when present it must be a valid AssignRequest.
    let req = if body.iter().all(|b| b.is_ascii_whitespace()) {
        AssignRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| DirectoryError::BadRequest(format!("malformed JSON body: {e}")))?
    };
    let mut a = dir.assign_idempotent(&req).await?;
    if let (Some(keys), false) = (&dir.config().security.keys, a.replayed) {
        let scope = WriteScope {
            volume: a.volume_id,
            key: a.id,
            alt_min: 0,
            alt_max: u32::MAX,
        };
        a.write_token = Some(keys.mint_write(
            scope,
            haystack_service::auth::unix_now() + WRITE_TOKEN_TTL_SECS,
        ));
    }
    Ok(HttpResponse::Ok().json(a))
}

async fn commit(dir: Dir, body: web::Json<KeyedCommit>) -> Res {
    Ok(HttpResponse::Ok().json(dir.commit_keyed(body.into_inner()).await?))
}

async fn report_damage(dir: Dir, body: web::Json<DamageReport>) -> Res {
    Ok(HttpResponse::Ok().json(dir.report_damage(body.into_inner()).await?))
}

async fn repairs(dir: Dir) -> Res {
    Ok(HttpResponse::Ok().json(dir.repairs().await?))
}

async fn condemn(dir: Dir, path: web::Path<String>) -> Res {
    Ok(HttpResponse::Ok().json(dir.condemn(parse_u64(&path, "photo id")?).await?))
}

async fn lookup(dir: Dir, path: web::Path<String>) -> Res {
    Ok(HttpResponse::Ok().json(dir.lookup(parse_u64(&path, "photo id")?).await?))
}

async fn live(dir: Dir, body: web::Json<LiveRequest>) -> Res {
    Ok(HttpResponse::Ok().json(dir.live(&body.ids).await?))
}

async fn delete(dir: Dir, path: web::Path<String>) -> Res {
    Ok(HttpResponse::Ok().json(dir.delete(parse_u64(&path, "photo id")?).await?))
}

#[derive(Deserialize)]
struct AltQuery {
    alt: Option<String>,
}

async fn read_url(dir: Dir, path: web::Path<String>, q: web::Query<AltQuery>) -> Res {
    let id = parse_u64(&path, "photo id")?;
    let alt = match &q.alt {
        Some(a) => parse_u32(a, "alt")?,
        None => 0,
    };
    Ok(HttpResponse::Ok().json(UrlResponse {
        url: dir.read_url(id, alt).await?,
    }))
}

async fn health(dir: Dir) -> HttpResponse {
    let h = dir.health().await;
    if h.status == "ok" {
        HttpResponse::Ok().json(h)
    } else {
        HttpResponse::ServiceUnavailable().json(h)
    }
}

/// The operators' dashboard: one static page that polls `/health`, `/v1/stores` and
/// `/v1/volumes` (no build step, no dependencies).
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .body(include_str!("dashboard.html"))
}

async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

async fn not_found(req: HttpRequest) -> Res {
    Err(DirectoryError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

fn json_error(e: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    DirectoryError::BadRequest(format!("malformed JSON body: {e}")).into()
}

fn query_error(e: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    DirectoryError::BadRequest(format!("malformed query: {e}")).into()
}

/// The access class of a request to the directory (docs/API.md, "Authentication"): the
/// dashboard page, `/health` and `/metrics` are public; listings and lookups (they show
/// cookies and the cluster's layout) need a read token; what stores and uploaders call is
/// internal; volume creation, state, replacement and photo deletes and condemnations are admin
/// actions, as is any route added later that is not named here.
pub fn access(method: &actix_web::http::Method, path: &str) -> Access {
    use actix_web::http::Method;
    let read = matches!(*method, Method::GET | Method::HEAD);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (read, segs.as_slice()) {
        (true, [] | ["dashboard"] | ["health"] | ["metrics"]) => Access::Public,
        (true, ["v1", "stores"] | ["v1", "volumes"] | ["v1", "volumes", _]) => Access::Read,
        (true, ["v1", "photos", _] | ["v1", "photos", _, "url"]) => Access::Read,
        // A lookup of many photos at once (the caches' liveness check), sent as a POST.
        (false, ["v1", "photos", "live"]) => Access::Read,
        (true, ["v1", "repairs"] | ["v1", "rebalance"]) => Access::Read,
        // Damage reports come from the caches (read repair) and the stores (scrubbing).
        (false, ["v1", "repairs"]) => Access::Internal,
        // The ordered keyspaces hold the S3 role's buckets, objects and sealed key secrets:
        // the S3 role's (and the operators' `haystack s3` tools, with an admin token).
        (_, ["v1", "kv", ..]) => Access::Internal,
        (false, ["v1", "stores", "register"] | ["v1", "stores", _, "heartbeat"]) => {
            Access::Internal
        }
        (false, ["v1", "assign"] | ["v1", "photos"]) => Access::Internal,
        _ if *method == Method::DELETE && matches!(segs.as_slice(), ["v1", "photos", _]) => {
            Access::Internal
        }
        _ => Access::Admin,
    }
}

/// Registers the routes on an actix-web app.
pub fn configure(dir: Arc<Directory>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(dir))
            .app_data(
                web::JsonConfig::default()
                    .limit(1 << 20)
                    .error_handler(json_error),
            )
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .route("/", web::get().to(dashboard))
            .route("/dashboard", web::get().to(dashboard))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(metrics_text))
            // Dynamic segments are matched by regex, one resource after another: scopes with
            // static prefixes keep a request from trying every other family's patterns (twice:
            // routing, then `match_pattern` for the metrics' route label).
            .configure(crate::http_kv::routes)
            .service(
                web::scope("/v1/photos")
                    .route("", web::post().to(commit))
                    .route("/live", web::post().to(live))
                    .route("/{id}", web::get().to(lookup))
                    .route("/{id}", web::delete().to(delete))
                    .route("/{id}/url", web::get().to(read_url))
                    .route("/{id}/condemn", web::post().to(condemn)),
            )
            .route("/v1/assign", web::post().to(assign))
            .service(
                web::scope("/v1/stores")
                    .route("", web::get().to(stores))
                    .route("/register", web::post().to(register))
                    .route("/{store_id}/heartbeat", web::post().to(heartbeat))
                    .route("/{store_id}/lifecycle", web::post().to(set_store_lifecycle))
                    .route("/{store_id}", web::delete().to(remove_store)),
            )
            .service(
                web::scope("/v1/volumes")
                    .route("", web::get().to(volumes))
                    .route("", web::post().to(create_volume))
                    .route("/{volume_id}", web::get().to(volume))
                    .route("/{volume_id}/state", web::post().to(set_volume_state))
                    .route("/{volume_id}/replace", web::post().to(replace_replica))
                    .route("/{volume_id}/promote", web::post().to(promote_remote))
                    .route("/{volume_id}/encode", web::post().to(encode_volume))
                    .route("/{volume_id}/ec/rebuild", web::post().to(rebuild_shard)),
            )
            .route("/v1/rebalance", web::get().to(rebalance_plan))
            .route("/v1/rebalance", web::post().to(rebalance_run))
            .route("/v1/repairs", web::post().to(report_damage))
            .route("/v1/repairs", web::get().to(repairs))
            .default_service(web::to(not_found));
    }
}
