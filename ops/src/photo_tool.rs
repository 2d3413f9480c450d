//! `haystack photo put|get|info|delete`: quick manual work on one photo, straight through
//! the directory and the stores (the original bytes only: variants are the uploader's job).

use std::path::Path;
use std::time::Duration;

use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, DeleteResponse, PhotoInfo, PhotoKind, Variant,
};
use haystack_proto::format_cookie;

use crate::client::json_of;

fn client() -> Result<reqwest::Client, String> {
    crate::client::client(Duration::from_secs(120))
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
pub async fn put(directory: &str, file: &Path) -> Result<(), String> {
    let directory = directory.trim_end_matches('/');
    let data = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let ct = content_type_of(file);
    let c = client()?;
    let a: AssignResponse = json_of(
        c.post(format!("{directory}/v1/assign"))
            .json(&AssignRequest {
                size_hint_bytes: data.len() as u64,
                ..Default::default()
            })
            .send()
            .await
            .map_err(|e| format!("assign: {e}"))?,
        "assign",
    )
    .await?;
    for r in &a.replicas {
        let url = format!(
            "{}/v1/needles/{}/{}/0/{}",
            r.url,
            a.volume_id,
            a.id,
            format_cookie(a.cookie)
        );
        let put = c
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, ct)
            .body(data.clone())
            .send()
            .await
            .map_err(|e| format!("PUT {url}: {e}"))?;
        if !put.status().is_success() {
            return Err(format!("PUT {url}: {}", put.status()));
        }
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
    let p: PhotoInfo = json_of(
        c.post(format!("{directory}/v1/photos"))
            .json(&commit)
            .send()
            .await
            .map_err(|e| format!("commit: {e}"))?,
        "commit",
    )
    .await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?
    );
    Ok(())
}

async fn lookup(c: &reqwest::Client, directory: &str, id: &str) -> Result<PhotoInfo, String> {
    let id: u64 = id
        .parse()
        .map_err(|_| format!("photo id {id:?} is not a 64-bit unsigned integer"))?;
    json_of(
        c.get(format!("{directory}/v1/photos/{id}"))
            .send()
            .await
            .map_err(|e| format!("lookup: {e}"))?,
        "lookup",
    )
    .await
}

/// Prints the photo as the directory records it.
pub async fn info(directory: &str, id: &str) -> Result<(), String> {
    let p = lookup(&client()?, directory.trim_end_matches('/'), id).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&p).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Writes variant `alt` of a photo to `out`, read from the first replica that answers.
pub async fn get(directory: &str, id: &str, alt: u32, out: &Path) -> Result<(), String> {
    let c = client()?;
    let p = lookup(&c, directory.trim_end_matches('/'), id).await?;
    let mut last = String::from("the photo has no replica");
    for r in &p.replicas {
        let url = format!(
            "{}/v1/needles/{}/{}/{alt}/{}",
            r.url,
            p.volume_id,
            p.id,
            format_cookie(p.cookie)
        );
        match c.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => {
                let b = resp.bytes().await.map_err(|e| e.to_string())?;
                std::fs::write(out, &b)
                    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
                eprintln!(
                    "{} bytes from {} written to {}",
                    b.len(),
                    r.url,
                    out.display()
                );
                return Ok(());
            }
            Ok(resp) => last = format!("GET {url}: {}", resp.status()),
            Err(e) => last = format!("GET {url}: {e}"),
        }
    }
    Err(last)
}

/// Deletes a photo (the directory tells the stores and caches).
pub async fn delete(directory: &str, id: &str) -> Result<(), String> {
    let c = client()?;
    let directory = directory.trim_end_matches('/');
    let id: u64 = id
        .parse()
        .map_err(|_| format!("photo id {id:?} is not a 64-bit unsigned integer"))?;
    let d: DeleteResponse = json_of(
        c.delete(format!("{directory}/v1/photos/{id}"))
            .send()
            .await
            .map_err(|e| format!("delete: {e}"))?,
        "delete",
    )
    .await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?
    );
    Ok(())
}
