//! The repair worker against a delete that lands while it copies: the copy must not leave the
//! deleted photo's needle live on the replica it filled. Two scripted store machines (test
//! doubles over loopback HTTP): the source, whose needle GET deletes the photo through the
//! directory before it answers (the delete arriving mid-copy, deterministically), and the
//! target, which does not hold the needle yet (its needle DELETE answers 404, as a store's
//! does) and records what it is asked.

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use haystack_proto::directory::{
    AssignRequest, CommitRequest, KeyedCommit, PhotoKind, RepairAction, Variant,
};

use haystack_directory::DirectoryConfig;

use crate::common::*;

/// A scripted store: `source` deletes the photo through the directory at `dir` on a needle
/// GET, then answers the needle's bytes; otherwise needle DELETEs answer 404, a repair
/// answers that every needle was written, anything else 200. Returns its URL and request log.
fn scripted_store(dir: String, source: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let listener = loopback();
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = HttpServer::new(move || {
        let (l, dir) = (l.clone(), dir.clone());
        App::new().default_service(web::to(move |req: HttpRequest| {
            let (l, dir) = (l.clone(), dir.clone());
            async move {
                let line = format!("{} {}", req.method(), req.path());
                l.lock().expect("log").push(line.clone());
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
                    ("DELETE", true) if !source => HttpResponse::NotFound().json(
                        serde_json::json!({"error": "not_found", "message": "no such needle"}),
                    ),
                    ("POST", false) if req.path().ends_with("/repair") => HttpResponse::Ok()
                        .json(serde_json::json!({"results": [{"outcome": "appended"}]})),
                    _ => HttpResponse::Ok().json(serde_json::json!({})),
                }
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    (url, log)
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
    let mut assigned = None;
    for _ in 0..MAX_POLLS {
        for s in stores.iter_mut() {
            s.heartbeat(&dir.client).await;
        }
        if let Ok(a) = dir.client.assign(&AssignRequest::default()).await {
            assigned = Some(a);
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let a = assigned.expect("a volume on both scripted stores");
    let target = stores[1].id;
    assert!(a.replicas.iter().any(|r| r.store_id == target), "{a:?}");
    // The write reached the source only: the commit names the target as still missing it.
    dir.client
        .commit_keyed(&KeyedCommit {
            commit: CommitRequest {
                id: a.id,
                cookie: a.cookie,
                volume_id: a.volume_id,
                kind: PhotoKind::Photo,
                variants: vec![Variant {
                    name: "original".into(),
                    alt: 0,
                    size_bytes: 4096,
                    content_type: "image/jpeg".into(),
                }],
                chunks: Vec::new(),
            },
            idempotency_key: None,
            request_hash: None,
            pending_replicas: vec![target],
        })
        .await
        .expect("commit");
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
