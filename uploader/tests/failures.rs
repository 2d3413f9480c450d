//! Replica failures: an upload is retried on another logical volume or answers a clean 503,
//! and no committed photo ever lacks a needle on any replica of its volume.

use haystack_proto::directory::{AssignRequest, AssignResponse, PhotoKind};
use haystack_testkit::ClusterOptions;
use haystack_uploader::service::PhotoResponse;
use serde_json::Value;

use crate::common::*;

/// Every needle of the photo is on every replica of its volume, byte-identical.
async fn assert_fully_written(h: &Harness, id: &str) {
    let info = h.lookup(id).await;
    for v in &info.variants {
        let mut first: Option<Vec<u8>> = None;
        for r in &info.replicas {
            let (status, bytes) = h.read_needle(&r.url, &info, v.alt).await;
            assert_eq!(status, 200, "photo {id} alt {} on {}", v.alt, r.url);
            assert_eq!(bytes.len() as u64, v.size_bytes);
            match &first {
                None => first = Some(bytes),
                Some(f) => assert!(f == &bytes),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_moves_uploads_to_other_volumes() {
    // Three stores, pairs of replicas: with store 2 gone, only volumes on stores 0 and 1 can
    // take a photo. Until the directory notices (3 s), it still assigns the others.
    let opts = ClusterOptions {
        stores: 3,
        replication: 2,
        min_writable_volumes: 6,
        ..Default::default()
    };
    let mut h = Harness::start_with(opts, |c| c.write_attempts = 6).await;
    let dead = h.cluster.store_url(2);
    h.cluster.stop_store(2);
    let body = jpeg(500, 400);
    let mut created = 0;
    for i in 0..8 {
        let resp = h.post_photo(body.clone(), "image/jpeg").await;
        let status = resp.status().as_u16();
        if status == 201 {
            let p: PhotoResponse = resp.json().await.unwrap();
            let info = h.lookup(&p.id.to_string()).await;
            assert!(
                info.replicas.iter().all(|r| r.url != dead),
                "photo {i} committed on a volume with the dead replica"
            );
            assert_fully_written(&h, &p.id.to_string()).await;
            created += 1;
        } else {
            assert_eq!(status, 503, "upload {i}: a clean 503 or a success");
            let e: Value = resp.json().await.unwrap();
            assert!(
                e["error"] == "write_failed" || e["error"] == "unavailable",
                "{e}"
            );
        }
    }
    assert!(created > 0, "some uploads found a healthy volume");
}

/// What the directory answers an assign with an idempotency key: the photo bound to the key
/// (`replayed`), or a fresh assignment; None when the key is bound to nothing and no volume
/// can take an upload now (a 503).
async fn replay(h: &Harness, key: &str) -> Option<AssignResponse> {
    let r = h
        .admin
        .post(format!("{}/v1/assign", h.cluster.directory_url()))
        .json(&AssignRequest {
            kind: PhotoKind::Photo,
            size_hint_bytes: 0,
            idempotency_key: Some(key.to_string()),
            exclude_volumes: Vec::new(),
        })
        .send()
        .await
        .unwrap();
    if r.status().as_u16() == 503 {
        return None;
    }
    assert!(r.status().is_success(), "{}", r.status());
    Some(r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_volume_is_a_clean_503_and_nothing_is_committed() {
    // Two stores, replication 2: every volume has a replica on each, so with one store gone no
    // volume can take a photo.
    let mut h = Harness::start().await;
    h.cluster.stop_store(1);
    let body = jpeg(640, 480);
    let post = || {
        h.http
            .post(format!("{}/v1/photos", h.url))
            .header("content-type", "image/jpeg")
            .header("idempotency-key", "retry-me")
            .body(body.clone())
            .send()
    };
    let resp = post().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let e: Value = resp.json().await.unwrap();
    assert!(
        e["error"] == "write_failed" || e["error"] == "unavailable",
        "{e}"
    );
    // The failed upload bound nothing to its key: the directory replays no photo for it.
    if let Some(a) = replay(&h, "retry-me").await {
        assert!(!a.replayed, "nothing is committed under the key");
    }
    // The store comes back; the client's retry with the same key succeeds, fully written.
    h.cluster.start_store(1);
    h.cluster.wait_writable(2).await;
    let mut done = None;
    for _ in 0..20 {
        let resp = post().await.unwrap();
        if resp.status().as_u16() == 201 {
            done = Some(resp.json::<PhotoResponse>().await.unwrap());
            break;
        }
        assert_eq!(resp.status().as_u16(), 503);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let p = done.expect("the retry succeeds once the store is back");
    assert_fully_written(&h, &p.id.to_string()).await;
}

/// Write acknowledgement: with one of two replicas dead (and the directory not yet aware),
/// an uploader configured with `write_ack = "one"` commits at once and the directory copies
/// the needles onto the dead replica when it returns; a request's `Haystack-Write-Ack: all`
/// is stricter and wins (503 here); a value that is none of all/quorum/one is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_ack_one_commits_with_a_replica_down_and_the_replica_catches_up() {
    let opts = ClusterOptions {
        store_timeout_ms: 120_000,
        ..Default::default()
    };
    let mut h = Harness::start_with(opts, |c| {
        c.write_attempts = 1;
        c.write_ack = haystack_client::store::WriteAck::One;
    })
    .await;
    let body = jpeg(300, 200);
    let (http, url) = (h.http.clone(), h.url.clone());
    let post = |ack: &'static str| {
        http.post(format!("{url}/v1/photos"))
            .header("content-type", "image/jpeg")
            .header("haystack-write-ack", ack)
            .body(body.clone())
            .send()
    };
    let bad = post("most").await.unwrap();
    assert_eq!(bad.status(), 400);
    let e: Value = bad.json().await.unwrap();
    assert_eq!(e["error"], "bad_request", "{e}");

    h.cluster.stop_store(1);
    let all = post("all").await.unwrap();
    assert_eq!(all.status(), 503, "the request asked for every replica");
    let one = h.post_photo(body.clone(), "image/jpeg").await;
    assert_eq!(one.status(), 201);
    let p: PhotoResponse = one.json().await.unwrap();
    h.cluster.start_store(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let info = h.lookup(&p.id.to_string()).await;
        let mut complete = true;
        for v in &info.variants {
            for r in &info.replicas {
                let (status, bytes) = h.read_needle(&r.url, &info, v.alt).await;
                complete &= status == 200 && bytes.len() as u64 == v.size_bytes;
            }
        }
        if complete {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the returned replica did not get the photo's needles"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_fully_written(&h, &p.id.to_string()).await;
}

/// A replica that refuses a write for good (its copy of the volume sealed, before a heartbeat
/// tells the directory) fails that attempt under `write_ack = "one"` as under `all`: the photo
/// moves to another assignment or the upload answers 503, and is never committed with the
/// refusing replica named pending (the directory's repair can never copy onto a sealed copy,
/// so the photo would stay under-replicated). Store 0 answers batches late, so the refusal
/// arrives before the acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_refuses_is_not_left_pending_under_write_ack_one() {
    let opts = ClusterOptions {
        slow_store: Some((0, 1_500)),
        ..Default::default()
    };
    let h = Harness::start_with(opts, |c| {
        c.write_ack = haystack_client::store::WriteAck::One;
    })
    .await;
    let refusing = h.cluster.store_url(1);
    for v in h.cluster.volumes().await {
        if v.writable {
            let r = h
                .admin
                .post(format!("{refusing}/v1/volumes/{}/seal", v.id))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "seal {}: {}", v.id, r.status());
        }
    }
    let resp = h.post_photo(jpeg(300, 200), "image/jpeg").await;
    let status = resp.status().as_u16();
    if status != 201 {
        assert_eq!(status, 503, "a clean 503 or a success");
        let e: Value = resp.json().await.unwrap();
        assert!(
            e["error"] == "write_failed" || e["error"] == "unavailable",
            "{e}"
        );
        return;
    }
    let p: PhotoResponse = resp.json().await.unwrap();
    let id = p.id.to_string();
    // Committed: on a volume every replica of which takes it (a late replica catches up).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let info = h.lookup(&id).await;
        let mut complete = true;
        for v in &info.variants {
            for r in &info.replicas {
                let (status, _) = h.read_needle(&r.url, &info, v.alt).await;
                complete &= status == 200;
            }
        }
        if complete {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "photo {id} committed on volume {} whose replica {refusing} refused it",
            info.volume_id
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_fully_written(&h, &id).await;
}
