//! Deletes against work under way: the repair worker copying when a delete lands (the copy
//! must not leave the deleted photo's needle live on the replica it filled), and a replica
//! switched in while a delete's calls are under way (it must get the delete too). Two scripted store machines (test
//! doubles over loopback HTTP): the source, whose needle GET deletes the photo through the
//! directory before it answers (the delete arriving mid-copy, deterministically), and the
//! target, which does not hold the needle yet (its needle DELETE answers 404, as a store's
//! does) and records what it is asked.

use std::sync::{Arc, Mutex};

use actix_web::HttpResponse;
use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, KeyedCommit, PhotoKind, RepairAction, Variant,
};

use haystack_directory::DirectoryConfig;

use crate::common::*;

/// A scripted store: `source` deletes the photo through the directory at `dir` on a needle
/// GET, then answers the needle's bytes; otherwise needle DELETEs answer 404, a repair
/// answers that every needle was written, anything else 200. Returns its URL and request log.
fn scripted_store(dir: String, source: bool) -> (String, RequestLog) {
    scripted(move |req, _| {
        let dir = dir.clone();
        async move {
            let needle = req.path().starts_with("/v1/needles/");
            match (req.method().as_str(), needle) {
                ("GET", true) if source => {
                    let photo = req.path().split('/').nth(4).unwrap_or("").to_string();
                    let r = reqwest::Client::new()
                        .delete(format!("{dir}/v1/photos/{photo}"))
                        .send()
                        .await
                        .expect("delete through the directory");
                    assert!(r.status().is_success(), "delete: {}", r.status());
                    HttpResponse::Ok()
                        .content_type("image/jpeg")
                        .body(vec![7u8; 4096])
                }
                ("DELETE", true) if !source => HttpResponse::NotFound()
                    .json(serde_json::json!({"error": "not_found", "message": "no such needle"})),
                ("POST", false) if req.path().ends_with("/repair") => HttpResponse::Ok()
                    .json(serde_json::json!({"results": [{"outcome": "appended"}]})),
                _ => HttpResponse::Ok().json(serde_json::json!({})),
            }
        }
    })
}

/// Heartbeats `stores` until the directory assigns a photo (a volume placed on them).
async fn assign_on(dir: &TestDirectory, stores: &mut [&mut FakeStore]) -> AssignResponse {
    for _ in 0..MAX_POLLS {
        for s in stores.iter_mut() {
            s.heartbeat(&dir.client).await;
        }
        if let Ok(a) = dir.client.assign(&AssignRequest::default()).await {
            return a;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("no volume was placed on the stores");
}

/// Commits assignment `a` as a photo of one JPEG variant per alternate key of `alts`, the
/// replicas in `pending` named as not written yet.
async fn commit_photo(dir: &TestDirectory, a: &AssignResponse, alts: &[u32], pending: Vec<u64>) {
    dir.client
        .commit_keyed(&KeyedCommit {
            commit: CommitRequest {
                id: a.id,
                cookie: a.cookie,
                volume_id: a.volume_id,
                kind: PhotoKind::Photo,
                variants: alts
                    .iter()
                    .map(|&alt| Variant {
                        name: format!("v{alt}"),
                        alt,
                        size_bytes: 4096,
                        content_type: "image/jpeg".into(),
                    })
                    .collect(),
                chunks: Vec::new(),
            },
            idempotency_key: None,
            request_hash: None,
            pending_replicas: pending,
        })
        .await
        .expect("commit");
}

/// Before the fix the target kept the copy: the delete had reached it first (404, counted as
/// done) and the repair worker never looked at the photo again after copying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_repair_copy_leaves_no_live_copy() {
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = DirectoryConfig {
        replication_factor: 2,
        min_writable_volumes: 1,
        ..test_config(data.path())
    };
    let dir = TestDirectory::start(cfg, data.path()).await;
    let (src_url, _) = scripted_store(dir.url.clone(), true);
    let (dst_url, dst_log) = scripted_store(dir.url.clone(), false);
    let mut stores = Vec::new();
    for url in [src_url, dst_url.clone()] {
        let mut s = FakeStore::start(None).await;
        s.url = url;
        s.register(&dir.client).await;
        stores.push(s);
    }
    let a = {
        let mut refs: Vec<&mut FakeStore> = stores.iter_mut().collect();
        assign_on(&dir, &mut refs).await
    };
    let target = stores[1].id;
    assert!(a.replicas.iter().any(|r| r.store_id == target), "{a:?}");
    // The write reached the source only: the commit names the target as still missing it.
    commit_photo(&dir, &a, &[0], vec![target]).await;
    let queued = dir.client.repairs().await.expect("repairs");
    assert!(
        queued
            .iter()
            .any(|t| t.photo_id == a.id && t.action == RepairAction::Copy),
        "{queued:?}"
    );
    // The worker copies (the source deletes the photo mid-copy) until nothing is queued.
    for _ in 0..MAX_POLLS {
        if dir.client.repairs().await.expect("repairs").is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(dir.client.repairs().await.expect("repairs").is_empty());
    let photo = dir.client.lookup(a.id).await;
    assert!(photo.is_err(), "the photo is deleted: {photo:?}");
    // The target took the copy, then a delete of it: no live copy is left.
    let log = dst_log.lock().expect("log").clone();
    let v = a.volume_id;
    let repaired = log
        .iter()
        .rposition(|l| *l == format!("POST /v1/volumes/{v}/repair"))
        .unwrap_or_else(|| panic!("the copy reached the target: {log:?}"));
    assert!(
        log[repaired..]
            .iter()
            .any(|l| *l == format!("POST /v1/volumes/{v}/gc")),
        "the copy made after the delete was left live: {log:?}"
    );
}

/// A scripted store whose needle DELETE first moves volume `plan.0`'s replica from store
/// `plan.1` to store `plan.2` through the directory at `dir` (once), then answers 204: the
/// record switching while a delete's calls are under way, deterministically. Anything else
/// answers 200. Returns its URL and request log.
fn switching_store(dir: String, plan: Arc<Mutex<Option<(u32, u64, u64)>>>) -> (String, RequestLog) {
    scripted(move |req, _| {
        let (dir, plan) = (dir.clone(), plan.clone());
        async move {
            let needle_delete = req.method() == "DELETE" && req.path().starts_with("/v1/needles/");
            let step = if needle_delete {
                plan.lock().expect("plan").take()
            } else {
                None
            };
            if let Some((v, from, to)) = step {
                let r = reqwest::Client::new()
                    .post(format!("{dir}/v1/volumes/{v}/replace"))
                    .json(&serde_json::json!({
                        "from_store_id": from.to_string(),
                        "to_store_id": to.to_string(),
                    }))
                    .send()
                    .await
                    .expect("replace through the directory");
                assert!(r.status().is_success(), "replace: {}", r.status());
            }
            if needle_delete {
                HttpResponse::NoContent().finish()
            } else {
                HttpResponse::Ok().json(serde_json::json!({}))
            }
        }
    })
}

/// A delete whose calls to the stores are under way while the volume's replica moves (re-
/// replication, a drain, `haystack volume repair`): the new replica, not one when the delete
/// read the record, must get the delete too. Store B moves the replica from A to C when its
/// delete arrives. Before, the delete called A and B only and C kept the needle live (the
/// move's own comparison of the replicas could run before B's delete had landed; until
/// anti-entropy, and nothing at all for an erasure-coded shard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_switched_in_during_a_delete_gets_the_delete() {
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = DirectoryConfig {
        replication_factor: 2,
        min_writable_volumes: 1,
        ..test_config(data.path())
    };
    let dir = TestDirectory::start(cfg, data.path()).await;
    let plan = Arc::new(Mutex::new(None));
    let (b_url, _) = switching_store(dir.url.clone(), plan.clone());
    let mut a = FakeStore::start(None).await;
    let mut b = FakeStore::start(None).await;
    b.url = b_url;
    a.register(&dir.client).await;
    b.register(&dir.client).await;
    let x = assign_on(&dir, &mut [&mut a, &mut b]).await;
    // C joins once the volume is placed (on A and B: the only stores then).
    let mut c = FakeStore::start(None).await;
    c.register(&dir.client).await;
    c.heartbeat(&dir.client).await;
    commit_photo(&dir, &x, &[0], Vec::new()).await;
    *plan.lock().expect("plan") = Some((x.volume_id, a.id, c.id));
    dir.client.delete(x.id).await.expect("delete");
    let info = dir.client.volume(x.volume_id).await.expect("volume");
    assert!(
        info.replicas.iter().any(|r| r.store_id == c.id),
        "the replica moved to C during the delete: {info:?}"
    );
    let needle = format!(
        "DELETE /v1/needles/{}/{}/0/{}",
        x.volume_id,
        x.id,
        haystack_proto::format_cookie(x.cookie)
    );
    assert!(
        c.requests().contains(&needle),
        "the replica switched in during the delete never got it: {:?}",
        c.requests()
    );
}

/// A cache node that refuses the first `refusals` purges (503), then takes them (204);
/// returns its URL and request log.
fn flaky_cache(refusals: usize) -> (String, RequestLog) {
    scripted(move |_, n| async move {
        if n <= refusals {
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"error": "unavailable", "message": "not now"}))
        } else {
            HttpResponse::NoContent().finish()
        }
    })
}

/// A cache that misses a delete's purges is asked again, once per photo, until it takes it.
/// Before, the failure was counted and never retried: the node served the deleted photo from memory until
/// its hit recheck (60 s by default) or eviction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_cache_purge_is_retried_until_taken() {
    let data = tempfile::tempdir().expect("tempdir");
    let (cache_url, cache_log) = flaky_cache(2);
    let cfg = DirectoryConfig {
        replication_factor: 1,
        min_writable_volumes: 1,
        cache_purge_urls: vec![cache_url],
        ..test_config(data.path())
    };
    let dir = TestDirectory::start(cfg, data.path()).await;
    let mut s = FakeStore::start(None).await;
    s.register(&dir.client).await;
    let x = assign_on(&dir, &mut [&mut s]).await;
    commit_photo(&dir, &x, &[0, 1], Vec::new()).await;
    let d = dir.client.delete(x.id).await.expect("delete");
    // Both alternate keys' purges refused; a purge forgets the whole photo, so the retry
    // (after 1 s) sends one, which is taken; then no more.
    assert_eq!((d.cache_purges_ok, d.cache_purges_failed), (0, 2), "{d:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cache_log.lock().expect("log").len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the purge was not retried: {:?}",
            cache_log.lock().expect("log")
        );
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let log = cache_log.lock().expect("log").clone();
    let purge = |alt: u32| {
        format!(
            "DELETE /v1/needles/{}/{}/{alt}/{}",
            x.volume_id,
            x.id,
            haystack_proto::format_cookie(x.cookie)
        )
    };
    assert_eq!(log.len(), 3, "taken on the retry, then left alone: {log:?}");
    let mut first = log[..2].to_vec();
    first.sort();
    assert_eq!(first, vec![purge(0), purge(1)], "{log:?}");
    assert!(first.contains(&log[2]), "{log:?}");
}
