//! `haystack gc`: finds needles that no photo references (uploads that failed before their
//! commit, deleted photos whose store deletes were missed) and deletes them.
//!
//! A needle is referenced when the directory knows its key as a live photo on the same
//! logical volume with that alternate key among its variants or video chunks. Needles whose
//! id is younger than the grace period are left alone: their upload may still be running
//! (ids carry their creation time). A photo the directory cannot answer for (an error other
//! than a clear answer) keeps its needles.
//!
//! gc never deletes on an answer that could go stale. It asks the directory to *condemn* each
//! id (`POST /v1/photos/{id}/condemn`) rather than merely looking it up: an id no photo has
//! gets a tombstone, after which no commit, retry or idempotent replay can ever make it a
//! photo; a live photo is answered as it is. Both answers are final (a photo never changes
//! volume or alternate keys, and a deleted or condemned id never comes back), so one answer
//! per id serves every replica of the run, however long the run takes. A dry run only looks
//! ids up and condemns nothing.
//!
//! S3 data (ids of kind `object`) is live as a photo to the directory whatever S3 records
//! name it. Before it walks the replicas, gc lists every S3 part and object record
//! (`haystack_s3::gc::named_data`); an `object` id none names, committed at least
//! `--s3-min-age-secs` (and `--grace-secs`) before that listing began, is deleted through the
//! directory (final, as for an S3 DELETE) and its needles are then orphans like any other.
//! Why that cannot race a record being written: `haystack_s3::gc`. When the listing fails,
//! every S3 id is kept.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haystack_client::DirectoryClient;
use haystack_proto::directory::{CondemnResponse, CondemnState, PhotoInfo, PhotoKind};
use serde::{Deserialize, Serialize};

use crate::client::clients;

#[derive(Deserialize)]
struct Listed {
    key: String,
    alt: u32,
    deleted: bool,
}

#[derive(Deserialize)]
struct Listing {
    needles: Vec<Listed>,
}

#[derive(Serialize, Deserialize)]
struct GcNeedle {
    key: String,
    alt: u32,
}

#[derive(Deserialize)]
struct GcAnswer {
    deleted: u64,
}

#[derive(Serialize, Default)]
struct ReplicaGc {
    volume: u32,
    url: String,
    live_needles: u64,
    too_young: u64,
    unreferenced: u64,
    /// S3 data ids on this replica that no S3 record names (their needles are among
    /// `unreferenced`).
    s3_unnamed: u64,
    deleted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What the directory says of a photo id.
enum Known {
    /// A live photo (final: its volume and alternate keys never change).
    Photo(PhotoInfo),
    /// Deleted, or condemned by this run or an earlier one (final: never a photo again).
    Gone,
    /// No clear answer: its needles are kept, and the next replica asks again.
    Unknown,
}

/// Condemns `key` (see the module comment); a dry run only looks it up, and its "not found"
/// is reported as gone without making it so.
async fn condemn(dir: &DirectoryClient, key: u64, dry_run: bool) -> Known {
    if dry_run {
        return match dir.lookup(key).await {
            Ok(p) => Known::Photo(p),
            Err(e) if e.is_not_found() => Known::Gone,
            Err(_) => Known::Unknown,
        };
    }
    match dir.condemn(key).await {
        Ok(CondemnResponse {
            state: CondemnState::Live,
            photo: Some(p),
            ..
        }) => Known::Photo(p),
        Ok(CondemnResponse {
            state: CondemnState::Deleted | CondemnState::Condemned,
            ..
        }) => Known::Gone,
        _ => Known::Unknown,
    }
}

pub async fn run(
    directory: &[String],
    grace_secs: u64,
    s3_min_age_secs: u64,
    dry_run: bool,
    json: bool,
) -> Result<(), String> {
    let (dir, stores) = clients(directory, Duration::from_secs(600))?;
    let vols = dir.volumes().await.map_err(|e| e.to_string())?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let young_after = now_ms.saturating_sub(grace_secs.saturating_mul(1000));
    // Taken before the listing begins (see the module comment).
    let s3_old_before = now_ms.saturating_sub(s3_min_age_secs.max(grace_secs).saturating_mul(1000));
    let mut s3_failed = None;
    let s3_named = match haystack_s3::gc::named_data(&haystack_s3::meta::Meta::new(dir.clone()))
        .await
    {
        Ok(n) => {
            if !json {
                println!(
                        "S3 records: {} bucket(s), {} part(s), {} object(s), {} upload(s) being completed: {} data id(s) named",
                        n.buckets,
                        n.parts,
                        n.objects,
                        n.held,
                        n.ids.len()
                    );
            }
            Some(n.ids)
        }
        Err(e) => {
            eprintln!("listing the S3 records failed ({e}): every S3 data id is kept");
            s3_failed = Some(e.to_string());
            None
        }
    };
    // S3 data ids found unnamed (and deleted through the directory unless a dry run).
    let mut s3_unnamed: std::collections::HashSet<u64> = Default::default();
    let mut photos: HashMap<u64, Known> = HashMap::new();
    let k_unknown = Known::Unknown;
    let mut out = Vec::new();
    let pb = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(vols.iter().map(|v| v.replicas.len() as u64).sum())
    };
    for vol in &vols {
        for r in &vol.replicas {
            pb.set_message(format!("volume {} on {}", vol.id, r.url));
            let mut rep = ReplicaGc {
                volume: vol.id,
                url: r.url.clone(),
                ..Default::default()
            };
            if !r.up {
                rep.error = Some("store is down; skipped".into());
                out.push(rep);
                pb.inc(1);
                continue;
            }
            let listing: Listing = match stores.needles(&r.url, vol.id).await {
                Ok(l) => l,
                Err(e) => {
                    rep.error = Some(e.to_string());
                    out.push(rep);
                    pb.inc(1);
                    continue;
                }
            };
            let mut by_key: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
            for n in listing.needles.iter().filter(|n| !n.deleted) {
                if let Ok(k) = n.key.parse::<u64>() {
                    by_key.entry(k).or_default().push(n.alt);
                }
            }
            let mut orphans = Vec::new();
            for (key, alts) in by_key {
                rep.live_needles += alts.len() as u64;
                if haystack_proto::id::decode(key).unix_ms >= young_after {
                    rep.too_young += alts.len() as u64;
                    continue;
                }
                // Only final answers are kept for the later replicas.
                if let std::collections::hash_map::Entry::Vacant(e) = photos.entry(key) {
                    let k = condemn(&dir, key, dry_run).await;
                    if !matches!(k, Known::Unknown) {
                        e.insert(k);
                    }
                }
                let unnamed = s3_unnamed.contains(&key)
                    || match (photos.get(&key), &s3_named) {
                        (Some(Known::Photo(p)), Some(named)) => {
                            p.kind == PhotoKind::Object
                                && p.created_ms < s3_old_before
                                && !named.contains(&key)
                        }
                        _ => false,
                    };
                if unnamed {
                    rep.s3_unnamed += 1;
                    if !s3_unnamed.contains(&key) && !dry_run {
                        // Deleted as an S3 DELETE deletes its data: final, never live again.
                        match dir.delete(key).await {
                            Ok(_) => {
                                photos.insert(key, Known::Gone);
                            }
                            Err(e) => {
                                tracing::warn!(id = key, error = %e, "deleting unnamed S3 data failed; kept");
                                rep.s3_unnamed -= 1;
                                continue;
                            }
                        }
                    }
                    s3_unnamed.insert(key);
                }
                let known = photos.get(&key).unwrap_or(&k_unknown);
                for alt in alts {
                    let referenced = match known {
                        _ if unnamed => false,
                        Known::Unknown => true,
                        Known::Gone => false,
                        Known::Photo(p) => {
                            p.volume_id == vol.id
                                && (p.variants.iter().any(|v| v.alt == alt)
                                    || p.chunks.iter().any(|ch| ch.alt == alt))
                        }
                    };
                    if !referenced {
                        orphans.push(GcNeedle {
                            key: key.to_string(),
                            alt,
                        });
                    }
                }
            }
            rep.unreferenced = orphans.len() as u64;
            if !dry_run {
                for chunk in orphans.chunks(1000) {
                    let body = serde_json::json!({ "needles": chunk });
                    match stores.gc::<_, GcAnswer>(&r.url, vol.id, &body).await {
                        Ok(a) => rep.deleted += a.deleted,
                        Err(e) => {
                            rep.error = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            out.push(rep);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "{:>6}  {:<28} {:>10} {:>10} {:>13} {:>8}",
            "volume", "replica", "live", "too young", "unreferenced", "deleted"
        );
        for r in &out {
            println!(
                "{:>6}  {:<28} {:>10} {:>10} {:>13} {:>8}{}{}",
                r.volume,
                r.url,
                r.live_needles,
                r.too_young,
                r.unreferenced,
                r.deleted,
                if r.s3_unnamed > 0 {
                    format!("  ({} unnamed S3 data id(s))", r.s3_unnamed)
                } else {
                    String::new()
                },
                r.error
                    .as_ref()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default()
            );
        }
        if dry_run {
            println!("dry run: nothing deleted");
        }
    }
    let failed = out.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        return Err(format!("{failed} replica(s) could not be collected"));
    }
    if let Some(e) = s3_failed {
        // Everything else was collected; the exit status says S3 data was not looked at.
        return Err(format!(
            "the S3 records could not be listed ({e}; gc needs an admin token): S3 data was kept"
        ));
    }
    Ok(())
}
