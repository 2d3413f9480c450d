//! The routes of the ordered keyspaces (`/v1/kv/{space}`, docs/API.md); their errors map to
//! statuses in [`crate::http`] like every other route's.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use haystack_proto::kv::{KvPut, KvReplace, MAX_SCAN};
use serde::Deserialize;

use crate::error::DirectoryError;
use crate::service::Directory;

type Res = Result<HttpResponse, DirectoryError>;
type Dir = web::Data<Arc<Directory>>;

/// Largest document accepted (a multipart object's record lists up to 10,000 parts).
const MAX_BODY: usize = 16 << 20;

fn space(s: &str) -> Result<u64, DirectoryError> {
    s.parse()
        .map_err(|_| DirectoryError::BadRequest(format!("space {s:?} is not a decimal u64")))
}

#[derive(Deserialize)]
struct KeyQuery {
    key: String,
    version: Option<u64>,
}

#[derive(Deserialize)]
struct ScanQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    after: String,
    limit: Option<usize>,
}

async fn get(dir: Dir, path: web::Path<String>, q: web::Query<KeyQuery>) -> Res {
    Ok(HttpResponse::Ok().json(dir.kv_get(space(&path)?, &q.key).await?))
}

async fn put(dir: Dir, path: web::Path<String>, q: web::Query<KeyQuery>, body: web::Bytes) -> Res {
    let put: KvPut = serde_json::from_slice(&body)
        .map_err(|e| DirectoryError::BadRequest(format!("malformed JSON body: {e}")))?;
    Ok(HttpResponse::Ok().json(dir.kv_put(space(&path)?, &q.key, put).await?))
}

async fn replace(
    dir: Dir,
    path: web::Path<String>,
    q: web::Query<KeyQuery>,
    body: web::Bytes,
) -> Res {
    let put: KvReplace = serde_json::from_slice(&body)
        .map_err(|e| DirectoryError::BadRequest(format!("malformed JSON body: {e}")))?;
    Ok(HttpResponse::Ok().json(dir.kv_replace(space(&path)?, &q.key, put).await?))
}

async fn delete(dir: Dir, path: web::Path<String>, q: web::Query<KeyQuery>) -> Res {
    let version = q
        .version
        .ok_or_else(|| DirectoryError::BadRequest("a delete needs ?version=".into()))?;
    Ok(HttpResponse::Ok().json(dir.kv_delete(space(&path)?, &q.key, version).await?))
}

async fn scan(dir: Dir, path: web::Path<String>, q: web::Query<ScanQuery>) -> Res {
    let limit = q.limit.unwrap_or(MAX_SCAN);
    Ok(HttpResponse::Ok().json(
        dir.kv_scan(space(&path)?, &q.prefix, &q.after, limit)
            .await?,
    ))
}

/// Registers the routes (called from [`crate::http::configure`]).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/kv")
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .route("/{space}", web::get().to(get))
            .route("/{space}", web::put().to(put))
            .route("/{space}", web::delete().to(delete))
            .route("/{space}/scan", web::get().to(scan))
            .route("/{space}/replace", web::put().to(replace)),
    );
}
