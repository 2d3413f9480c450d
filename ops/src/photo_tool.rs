//! `haystack photo put|get|info|delete`: quick manual work on one photo, straight through
//! the directory and the stores (the original bytes only: variants are the uploader's job).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use haystack_client::{DirectoryClient, StoreClient};
use haystack_proto::directory::{AssignRequest, CommitRequest, PhotoInfo, PhotoKind, Variant};
use haystack_proto::NeedleAddr;

use crate::client::clients;

fn client(directory: &[String]) -> Result<(DirectoryClient, StoreClient), String> {
    clients(directory, Duration::from_secs(120))
}

fn content_type_of(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// Stores a file as a photo's original (alt 0) on every replica, then commits it; prints the
/// photo as the directory records it.
pub async fn put(directory: &[String], file: &Path) -> Result<(), String> {
    let data = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let data = Bytes::from(data);
    let ct = content_type_of(file);
    let (dir, stores) = client(directory)?;
    let a = dir
        .assign(&AssignRequest {
            size_hint_bytes: data.len() as u64,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("assign: {e}"))?;
    let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
    for r in &a.replicas {
        stores
            .put_needle(&r.url, &addr, ct, data.clone())
            .await
            .map_err(|e| format!("PUT {addr} on {}: {e}", r.url))?;
    }
    let commit = CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Photo,
        variants: vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: data.len() as u64,
            content_type: ct.into(),
        }],
        chunks: Vec::new(),
    };
    let p = dir
        .commit(&commit)
        .await
        .map_err(|e| format!("commit: {e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn parse_id(id: &str) -> Result<u64, String> {
    id.parse()
        .map_err(|_| format!("photo id {id:?} is not a 64-bit unsigned integer"))
}

async fn lookup(dir: &DirectoryClient, id: &str) -> Result<PhotoInfo, String> {
    dir.lookup(parse_id(id)?)
        .await
        .map_err(|e| format!("lookup: {e}"))
}

/// Prints the photo as the directory records it.
pub async fn info(directory: &[String], id: &str) -> Result<(), String> {
    let p = lookup(&client(directory)?.0, id).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Writes variant `alt` of a photo to `out`, read from the first replica that answers.
pub async fn get(directory: &[String], id: &str, alt: u32, out: &Path) -> Result<(), String> {
    let (dir, stores) = client(directory)?;
    let p = lookup(&dir, id).await?;
    let addr = NeedleAddr::new(p.volume_id, p.id, alt, p.cookie);
    let mut last = String::from("the photo has no replica");
    for r in &p.replicas {
        match stores.get_needle(&r.url, &addr).await {
            Ok(n) => {
                std::fs::write(out, &n.data)
                    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
                eprintln!(
                    "{} bytes from {} written to {}",
                    n.data.len(),
                    r.url,
                    out.display()
                );
                return Ok(());
            }
            Err(e) => last = format!("GET {addr} on {}: {e}", r.url),
        }
    }
    Err(last)
}

/// Deletes a photo (the directory tells the stores and caches).
pub async fn delete(directory: &[String], id: &str) -> Result<(), String> {
    let (dir, _) = client(directory)?;
    let d = dir
        .delete(parse_id(id)?)
        .await
        .map_err(|e| format!("delete: {e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?
    );
    Ok(())
}
