//! Idempotency-Key under failures and races: a client key names at most one committed photo,
//! whatever the order of attempts, failures and concurrent requests, and a committed photo
//! serves the same bytes (its committed body) on every replica.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use haystack_proto::directory::LogicalVolumeInfo;
use haystack_testkit::ClusterOptions;
use haystack_uploader::service::PhotoResponse;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

async fn volumes(h: &Harness) -> Vec<LogicalVolumeInfo> {
    h.cluster.volumes().await
}

async fn set_state(h: &Harness, volume: u32, state: &str) {
    let r = h
        .admin
        .post(format!(
            "{}/v1/volumes/{volume}/state",
            h.cluster.directory_url()
        ))
        .json(&json!({"state": state, "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "set volume {volume} {state}");
}

/// Every id that has a live needle on any volume of any store and that the directory knows
/// as a committed photo.
async fn committed_ids(h: &Harness) -> BTreeSet<u64> {
    let mut keys = BTreeSet::new();
    for v in volumes(h).await {
        for r in &v.replicas {
            let l: Value = h
                .admin
                .get(format!("{}/v1/volumes/{}/needles", r.url, v.id))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for n in l["needles"].as_array().unwrap() {
                keys.insert(n["key"].as_str().unwrap().parse::<u64>().unwrap());
            }
        }
    }
    let mut committed = BTreeSet::new();
    for k in keys {
        let r = h
            .admin
            .get(format!("{}/v1/photos/{k}", h.cluster.directory_url()))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            committed.insert(k);
        }
    }
    committed
}

/// The review's scenario, exactly: attempt 0 (id X0) fails on a down replica, attempt 1
/// commits X1 and the client gets X1; the replica comes back; the client retries with the same
/// key. The retry must answer X1, and X0 must never be committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_failed_attempt_answers_the_committed_photo_and_commits_nothing_else() {
    let opts = ClusterOptions {
        stores: 3,
        replication: 2,
        min_writable_volumes: 1,
        store_timeout_ms: 120_000,
        ..Default::default()
    };
    let mut h = Harness::start_with(opts, |c| c.write_attempts = 3).await;
    let dir = h.cluster.directory_url();
    let urls = h.cluster.store_urls();
    // Find a store `s`, a volume `vd` with a replica on it and a volume `vh` without.
    let mut pick = None;
    for _ in 0..8 {
        let vols = volumes(&h).await;
        pick = urls.iter().enumerate().find_map(|(s, url)| {
            let vd = vols
                .iter()
                .find(|v| v.replicas.iter().any(|r| &r.url == url))?;
            let vh = vols
                .iter()
                .find(|v| v.replicas.iter().all(|r| &r.url != url))?;
            Some((s, vd.id, vh.id))
        });
        if pick.is_some() {
            break;
        }
        let r = h
            .admin
            .post(format!("{dir}/v1/volumes"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        h.cluster.wait_writable(volumes(&h).await.len()).await;
    }
    let (s, vd, vh) = pick.expect("volumes on different store pairs");
    // Only vd takes uploads; vh turns writable once attempt 0 has reached the dead replica.
    for v in volumes(&h).await {
        if v.id != vd {
            set_state(&h, v.id, "read_only").await;
        }
    }
    h.cluster.stop_store(s);
    let addr = urls[s].trim_start_matches("http://").to_string();
    let fake = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("rebind the store's port");
    let (http, dir2) = (h.admin.clone(), dir.clone());
    let dead_replica = tokio::spawn(async move {
        // The "down" replica: it answers attempt 0 with a 503 after vh became writable.
        let (mut conn, _) = fake.accept().await.expect("attempt 0 reaches the replica");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read request");
            assert!(n > 0, "request cut short");
            head.extend_from_slice(&buf[..n]);
        }
        let r = http
            .post(format!("{dir2}/v1/volumes/{vh}/state"))
            .json(&json!({"state": "writable"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let _ = conn
            .write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        let _ = conn.shutdown().await;
        String::from_utf8_lossy(&head).into_owned()
    });
    let body = jpeg(480, 320);
    let post = || {
        h.http
            .post(format!("{}/v1/photos", h.url))
            .header("content-type", "image/jpeg")
            .header("idempotency-key", "phone-9/upload-1")
            .body(body.clone())
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let x1: PhotoResponse = first.json().await.unwrap();
    let request = dead_replica.await.expect("fake replica");
    assert!(
        request.starts_with(&format!("POST /v1/volumes/{vd}/batch")),
        "attempt 0 wrote to vd: {request}"
    );
    assert_eq!(h.lookup(&x1.id.to_string()).await.volume_id, vh);

    // The replica comes back; the client retries with the same key.
    h.cluster.start_store(s);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !volumes(&h)
        .await
        .iter()
        .any(|v| v.id == vd && v.writable && v.replicas.iter().all(|r| r.up && r.reported))
    {
        assert!(Instant::now() < deadline, "vd writable again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = post().await.unwrap();
    assert_eq!(again.status().as_u16(), 201);
    let replayed = again.headers().get("idempotent-replayed").cloned();
    let again: PhotoResponse = again.json().await.unwrap();
    assert_eq!(
        again.id, x1.id,
        "the retry answers the photo the client got"
    );
    assert_eq!(replayed.expect("a replay").to_str().unwrap(), "true");
    assert_eq!(
        committed_ids(&h).await,
        BTreeSet::from([x1.id]),
        "one key, one committed photo"
    );
}

/// Two uploads racing with the same key and different bodies: one wins (201), the other is
/// refused (409), and the committed photo serves the winner's bytes on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_uploads_with_one_key_and_different_bodies_serve_one_body_everywhere() {
    let h = Harness::start().await;
    for round in 0..8 {
        let key = format!("race-{round}");
        let bodies = [jpeg(640, 480), jpeg(600 + round, 400)];
        let post = |i: usize| {
            h.http
                .post(format!("{}/v1/photos", h.url))
                .header("content-type", "image/jpeg")
                .header("idempotency-key", key.as_str())
                .body(bodies[i].clone())
                .send()
        };
        let (a, b) = tokio::join!(post(0), post(1));
        let answers = [a.unwrap(), b.unwrap()];
        let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            vec![201, 409],
            "round {round}: one wins, one is refused"
        );
        let winner = statuses.iter().position(|s| *s == 201).unwrap();
        let [a, b] = answers;
        let won: PhotoResponse = if winner == 0 { a } else { b }.json().await.unwrap();
        let info = h.lookup(&won.id.to_string()).await;
        for r in &info.replicas {
            let (status, bytes) = h.read_needle(&r.url, &info, 0).await;
            assert_eq!(status, 200, "round {round}: original on {}", r.url);
            assert!(
                bytes == bodies[winner],
                "round {round}: replica {} serves the other upload's body",
                r.url
            );
        }
    }
}
