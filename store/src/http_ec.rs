//! The store's routes of erasure-coded volumes (`/v1/ec/...`, docs/API.md "Erasure-coded
//! volumes") and `DELETE /v1/volumes/{v}`. Errors map to statuses in `http::ApiError`, as
//! every route's.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;

use crate::ec::ops::{ActivateRequest, BuildRequest, EcPeerState, InstallRequest, RebuildRequest};
use crate::error::StoreError;
use crate::http::{method_not_allowed, ApiError};
use crate::store::Store;

type ApiResult<T> = Result<T, ApiError>;

fn bad(m: impl Into<String>) -> ApiError {
    ApiError(StoreError::BadRequest(m.into()))
}

fn volume_of(req: &HttpRequest) -> ApiResult<u32> {
    let s = req.match_info().get("volume").unwrap_or("");
    s.parse()
        .map_err(|_| bad(format!("volume id {s:?} is not a 32-bit unsigned integer")))
}

fn json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn check_url(u: &str) -> ApiResult<()> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(bad(format!(
            "{u:?} is not a store's base URL (http://host:port)"
        )))
    }
}

/// Runs `f` as its own task: a dropped request does not cut a build, install or rebuild half
/// way (each also cleans up after itself on failure).
async fn own_task<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> ApiResult<T> {
    tokio::spawn(f)
        .await
        .map_err(|e| ApiError(StoreError::Io(std::io::Error::other(e.to_string()))))?
        .map_err(ApiError)
}

async fn ec_info(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let v = store.ec_volume_or_404(volume_of(&req)?)?;
    Ok(HttpResponse::Ok().json(v.ec_info()))
}

async fn ec_state(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let v = store.ec_volume_or_404(volume_of(&req)?)?;
    Ok(HttpResponse::Ok().json(EcPeerState::of(&v)))
}

async fn ec_index(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let v = store.ec_volume_or_404(volume_of(&req)?)?;
    let b = v.index_bytes().map_err(StoreError::Io)?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(b))
}

async fn ec_build(
    req: HttpRequest,
    body: Result<Bytes, actix_web::Error>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let id = volume_of(&req)?;
    let r: BuildRequest = json(&crate::http::small_body(body)?)?;
    let store = store.get_ref().clone();
    let report = own_task(async move { store.ec_build(id, r).await }).await?;
    Ok(HttpResponse::Ok().json(report))
}

async fn ec_staged(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let id = volume_of(&req)?;
    let generation: u32 = req
        .match_info()
        .get("generation")
        .unwrap_or("")
        .parse()
        .map_err(|_| bad("generation is not a 32-bit unsigned integer"))?;
    if req.method() == actix_web::http::Method::DELETE {
        store.ec_drop_staged(id, generation).await?;
        return Ok(HttpResponse::NoContent().finish());
    }
    let name = req.match_info().get("name").unwrap_or("").to_string();
    let path = store.ec_staged_path(id, generation, &name)?;
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|e| ApiError(StoreError::Io(std::io::Error::other(e.to_string()))))?
        .map_err(StoreError::Io)?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bytes))
}

async fn ec_install(
    req: HttpRequest,
    body: Result<Bytes, actix_web::Error>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let id = volume_of(&req)?;
    let r: InstallRequest = json(&crate::http::small_body(body)?)?;
    check_url(&r.from)?;
    for u in &r.shards {
        check_url(u)?;
    }
    let store = store.get_ref().clone();
    let info = own_task(async move { store.ec_install(id, r).await }).await?;
    Ok(HttpResponse::Created().json(info))
}

async fn ec_rebuild(
    req: HttpRequest,
    body: Result<Bytes, actix_web::Error>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let id = volume_of(&req)?;
    let r: RebuildRequest = json(&crate::http::small_body(body)?)?;
    for u in &r.shards {
        check_url(u)?;
    }
    let store = store.get_ref().clone();
    let report = own_task(async move { store.ec_rebuild(id, r).await }).await?;
    Ok(HttpResponse::Created().json(report))
}

async fn ec_activate(
    req: HttpRequest,
    body: Result<Bytes, actix_web::Error>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let id = volume_of(&req)?;
    let r: ActivateRequest = json(&crate::http::small_body(body)?)?;
    for u in &r.shards {
        check_url(u)?;
    }
    let store = store.get_ref().clone();
    let info = own_task(async move { store.ec_activate(id, r).await }).await?;
    Ok(HttpResponse::Ok().json(info))
}

async fn ec_cleanup(req: HttpRequest, store: web::Data<Arc<Store>>) -> ApiResult<HttpResponse> {
    let id = volume_of(&req)?;
    let store = store.get_ref().clone();
    let removed = own_task(async move { store.ec_cleanup(id).await }).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"volume": id, "removed_files": removed})))
}

#[derive(Deserialize)]
struct VerifyQuery {
    #[serde(default)]
    parity: bool,
}

async fn ec_verify(
    req: HttpRequest,
    q: web::Query<VerifyQuery>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let v = store.ec_volume_or_404(volume_of(&req)?)?;
    Ok(HttpResponse::Ok().json(v.verify(q.parity, store.peers()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestUpdate {
    shards: Vec<String>,
}

async fn ec_manifest(
    req: HttpRequest,
    body: Result<Bytes, actix_web::Error>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let v = store.ec_volume_or_404(volume_of(&req)?)?;
    let m: ManifestUpdate = json(&crate::http::small_body(body)?)?;
    for u in &m.shards {
        check_url(u)?;
    }
    let v2 = v.clone();
    own_task(async move { v2.set_shards(m.shards) }).await?;
    Ok(HttpResponse::Ok().json(v.ec_info()))
}

#[derive(Deserialize)]
struct RangeQuery {
    generation: u32,
    offset: u64,
    len: u64,
    /// Answer only pieces that match the shard's CRC table (a rebuild's reads).
    #[serde(default)]
    checked: bool,
}

async fn ec_shard_range(
    req: HttpRequest,
    q: Result<web::Query<RangeQuery>, actix_web::Error>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let id = volume_of(&req)?;
    let q = q.map_err(|e| bad(format!("generation, offset and len are required: {e}")))?;
    let shard: usize = req
        .match_info()
        .get("shard")
        .unwrap_or("")
        .parse()
        .map_err(|_| bad("shard is not a number"))?;
    let v = store.ec_volume_or_404(id)?;
    let b = v
        .shard_range(shard, q.generation, (q.offset, q.len), q.checked)
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(b))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DropQuery {
    #[serde(default)]
    moved: bool,
}

/// `DELETE /v1/volumes/{v}[?moved=true]`: drop a sealed replica (the directory, after switching
/// the volume to its shards), or with `moved` one in any state (the directory, once a move
/// replaced it and no repair needs it).
pub(crate) async fn drop_volume(
    req: HttpRequest,
    q: web::Query<DropQuery>,
    store: web::Data<Arc<Store>>,
) -> ApiResult<HttpResponse> {
    let id = volume_of(&req)?;
    store.drop_replica(id, q.moved).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The `/v1/ec` route table.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let na = || web::to(method_not_allowed);
    cfg.service(
        web::resource("/v1/ec/{volume}")
            .route(web::get().to(ec_info))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/state")
            .route(web::get().to(ec_state))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/index")
            .route(web::get().to(ec_index))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/build")
            .route(web::post().to(ec_build))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/staged/{generation}")
            .route(web::delete().to(ec_staged))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/staged/{generation}/{name}")
            .route(web::get().to(ec_staged))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/install")
            .route(web::post().to(ec_install))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/activate")
            .route(web::post().to(ec_activate))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/cleanup")
            .route(web::post().to(ec_cleanup))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/rebuild")
            .route(web::post().to(ec_rebuild))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/verify")
            .route(web::post().to(ec_verify))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/manifest")
            .route(web::put().to(ec_manifest))
            .default_service(na()),
    )
    .service(
        web::resource("/v1/ec/{volume}/shards/{shard}")
            .route(web::get().to(ec_shard_range))
            .default_service(na()),
    );
}

/// The metrics label of an `/v1/ec/...` path.
pub(crate) fn route_label(path: &str) -> &'static str {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (segs.len(), segs.get(3).copied()) {
        (3, _) => "/v1/ec/{volume}",
        (4, Some("state")) => "/v1/ec/{volume}/state",
        (4, Some("index")) => "/v1/ec/{volume}/index",
        (4, Some("build")) => "/v1/ec/{volume}/build",
        (4, Some("install")) => "/v1/ec/{volume}/install",
        (4, Some("activate")) => "/v1/ec/{volume}/activate",
        (4, Some("cleanup")) => "/v1/ec/{volume}/cleanup",
        (4, Some("rebuild")) => "/v1/ec/{volume}/rebuild",
        (4, Some("verify")) => "/v1/ec/{volume}/verify",
        (4, Some("manifest")) => "/v1/ec/{volume}/manifest",
        (5, Some("staged")) => "/v1/ec/{volume}/staged/{generation}",
        (6, Some("staged")) => "/v1/ec/{volume}/staged/{generation}/{name}",
        (5, Some("shards")) => "/v1/ec/{volume}/shards/{shard}",
        _ => "other",
    }
}
