//! The HTTP API end to end on loopback ports: register, heartbeat, assign, commit, lookup,
//! read URLs, delete with store and cache notifications, bad input, backend outage, liveness
//! and restart.

use haystack_client::ClientError;
use haystack_proto::directory::{
    AssignRequest, CommitRequest, CondemnState, KeyedCommit, PhotoKind, StoreState, Variant,
    VideoChunk,
};
use haystack_proto::{ErrorBody, VolumeState};

use crate::common::*;

fn commit_for(a: &haystack_proto::directory::AssignResponse) -> CommitRequest {
    CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Photo,
        variants: vec![
            Variant {
                name: "original".into(),
                alt: 0,
                size_bytes: 5000,
                content_type: "image/jpeg".into(),
            },
            Variant {
                name: "thumb".into(),
                alt: 4,
                size_bytes: 300,
                content_type: "image/jpeg".into(),
            },
        ],
        chunks: vec![],
    }
}

async fn three_stores() -> Vec<FakeStore> {
    vec![
        FakeStore::start(Some("z1")).await,
        FakeStore::start(Some("z2")).await,
        FakeStore::start(Some("z3")).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upload_flow_lookup_read_urls_and_delete() {
    let data = tempfile::tempdir().expect("tempdir");
    let cache = FakeStore::start(None).await;
    let mut config = test_config(data.path());
    config.cache_url = Some(cache.url.clone());
    let dir = TestDirectory::start(config, data.path()).await;
    let c = &dir.client;
    let mut stores = three_stores().await;
    bring_up(c, &mut stores).await;

    // Every store was also asked to create its replicas right away.
    let mut pushed = false;
    for _ in 0..MAX_POLLS {
        if stores.iter().all(|s| {
            s.requests()
                .iter()
                .any(|r| r.starts_with("POST /v1/volumes/"))
        }) {
            pushed = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(pushed, "volume creation never pushed to the stores");

    // The operators' dashboard is one static page that polls the JSON routes.
    for path in ["/", "/dashboard"] {
        let r = reqwest::get(format!("{}{path}", c.base_url()))
            .await
            .expect("dashboard");
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let page = r.text().await.expect("page");
        assert!(page.contains("/v1/volumes") && page.contains("/v1/stores"));
    }

    let a = c.assign(&AssignRequest::default()).await.expect("assign");
    assert_eq!(a.replicas.len(), 3);
    let mut replica_urls: Vec<&str> = a.replicas.iter().map(|r| r.url.as_str()).collect();
    replica_urls.sort();
    let mut store_urls: Vec<&str> = stores.iter().map(|s| s.url.as_str()).collect();
    store_urls.sort();
    assert_eq!(replica_urls, store_urls, "one replica on each machine");

    // A retry that names the volume it failed on never gets it back: with every writable
    // volume named, the answer is a 503 (the uploader then waits for a new volume).
    let writable: Vec<u32> = c
        .volumes()
        .await
        .expect("volumes")
        .iter()
        .filter(|v| v.writable)
        .map(|v| v.id)
        .collect();
    assert!(!writable.is_empty());
    let none = c
        .assign(&AssignRequest {
            exclude_volumes: writable.clone(),
            ..Default::default()
        })
        .await
        .expect_err("every writable volume excluded");
    assert_eq!(none.status(), Some(503));
    if let Some((keep, rest)) = writable.split_last().filter(|(_, r)| !r.is_empty()) {
        let other = c
            .assign(&AssignRequest {
                exclude_volumes: rest.to_vec(),
                ..Default::default()
            })
            .await
            .expect("assign avoiding failed volumes");
        assert_eq!(other.volume_id, *keep);
    }

    // An idempotency key is bound at commit: before, every assign is a fresh one; after, an
    // assign with the key answers the committed photo.
    let keyed = AssignRequest {
        idempotency_key: Some("upload-7f3a".into()),
        ..Default::default()
    };
    let k1 = c.assign(&keyed).await.expect("keyed assign");
    let k2 = c.assign(&keyed).await.expect("keyed retry");
    assert!(!k1.replayed && !k2.replayed);
    assert_ne!(k1.id, k2.id);
    let bound = KeyedCommit {
        commit: commit_for(&k2),
        idempotency_key: keyed.idempotency_key.clone(),
        request_hash: Some("sha256:00".into()),
        pending_replicas: Vec::new(),
    };
    assert_eq!(
        c.commit_keyed(&bound).await.expect("keyed commit").id,
        k2.id
    );
    let other = KeyedCommit {
        commit: commit_for(&k1),
        request_hash: Some("sha256:11".into()),
        pending_replicas: Vec::new(),
        ..bound.clone()
    };
    let refused = c.commit_keyed(&other).await.expect_err("another body");
    assert_eq!(refused.status(), Some(409));
    let k3 = c.assign(&keyed).await.expect("replay");
    assert!(k3.replayed);
    assert_eq!((k3.id, k3.cookie), (k2.id, k2.cookie));
    assert_eq!(k3.request_hash.as_deref(), Some("sha256:00"));
    let condemned = c.condemn(k1.id).await.expect("condemn");
    assert_eq!(condemned.state, CondemnState::Condemned);
    assert_eq!(
        c.condemn(k2.id).await.expect("condemn live").state,
        CondemnState::Live
    );
    let late = c.commit(&commit_for(&k1)).await.expect_err("condemned id");
    assert_eq!(late.status(), Some(409));

    let info = c.commit(&commit_for(&a)).await.expect("commit");
    assert_eq!(
        (info.id, info.cookie, info.volume_id),
        (a.id, a.cookie, a.volume_id)
    );
    // Committing the same photo again is idempotent.
    assert_eq!(c.commit(&commit_for(&a)).await.expect("recommit").id, a.id);

    let got = c.lookup(a.id).await.expect("lookup");
    assert_eq!(got.variants.len(), 2);
    assert!(got.volume_writable);
    let thumb = got
        .variants
        .iter()
        .find(|v| v.name == "thumb")
        .expect("thumb");
    assert_eq!(
        thumb.url,
        format!(
            "{}/v1/needles/{}/{}/4/{:016x}",
            cache.url, a.volume_id, a.id, a.cookie
        )
    );
    assert_eq!(c.read_url(a.id, 4).await.expect("url"), thumb.url);
    assert!(c
        .read_url(a.id, 9)
        .await
        .expect_err("no alt 9")
        .is_not_found());

    // The id travels as a decimal string in the raw JSON.
    let raw: serde_json::Value = reqwest::get(format!("{}/v1/photos/{}", dir.url, a.id))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(raw["id"], serde_json::Value::String(a.id.to_string()));

    let del = c.delete(a.id).await.expect("delete");
    assert!(del.deleted);
    assert_eq!((del.store_deletes_ok, del.store_deletes_failed), (6, 0));
    assert_eq!((del.cache_purges_ok, del.cache_purges_failed), (2, 0));
    for s in &stores {
        let reqs = s.requests();
        for alt in [0, 4] {
            let want = format!(
                "DELETE /v1/needles/{}/{}/{alt}/{:016x}",
                a.volume_id, a.id, a.cookie
            );
            assert!(reqs.contains(&want), "{want} not in {reqs:?}");
        }
    }
    assert_eq!(cache.requests().len(), 2);
    let e = c.lookup(a.id).await.expect_err("deleted");
    assert!(e.is_not_found(), "{e}");
    // A deleted id cannot be committed again.
    assert_eq!(
        c.commit(&commit_for(&a)).await.expect_err("gone").status(),
        Some(409)
    );

    // Deletes are best effort: a store that is gone is counted, the mark stands.
    let b = c.assign(&AssignRequest::default()).await.expect("assign");
    c.commit(&commit_for(&b)).await.expect("commit");
    stores[2].stop().await;
    let del = c.delete(b.id).await.expect("delete with a store gone");
    assert!(del.deleted);
    assert_eq!((del.store_deletes_ok, del.store_deletes_failed), (4, 2));
    let gone = c.lookup(b.id).await.expect_err("deleted");
    assert!(gone.is_not_found());
    assert!(
        matches!(&gone, haystack_client::ClientError::Api { body, .. } if body.error == "deleted"),
        "{gone}"
    );

    // A video: chunks with contiguous offsets.
    let v = c
        .assign(&AssignRequest {
            kind: PhotoKind::Video,
            size_hint_bytes: 1000,
            idempotency_key: None,
            exclude_volumes: Vec::new(),
        })
        .await
        .expect("assign video");
    let video = CommitRequest {
        id: v.id,
        cookie: v.cookie,
        volume_id: v.volume_id,
        kind: PhotoKind::Video,
        variants: vec![],
        chunks: vec![
            VideoChunk {
                alt: 1,
                offset: 0,
                size_bytes: 400,
            },
            VideoChunk {
                alt: 2,
                offset: 400,
                size_bytes: 100,
            },
        ],
    };
    let got = c.commit(&video).await.expect("commit video");
    assert_eq!(got.chunks.len(), 2);
    assert!(got.chunks[1]
        .url
        .ends_with(&format!("/2/{:016x}", v.cookie)));

    // Many lookups at once (the caches' liveness check): the live ones come back with their
    // volume and cookie; deleted, condemned and unknown ids are left out.
    let unknown = v.id + 1_000_000;
    let ids = [a.id, b.id, v.id, k2.id, k1.id, unknown, v.id];
    let mut live = c.live(&ids).await.expect("live").live;
    live.sort_by_key(|p| p.id);
    let mut want = vec![
        (v.id, v.volume_id, v.cookie),
        (k2.id, k2.volume_id, k2.cookie),
    ];
    want.sort();
    let got: Vec<(u64, u32, u64)> = live.iter().map(|p| (p.id, p.volume_id, p.cookie)).collect();
    assert_eq!(got, want);
    assert!(c.live(&[]).await.expect("no ids").live.is_empty());
    let too_many: Vec<u64> = (0..haystack_proto::directory::MAX_LIVE_BATCH as u64 + 1).collect();
    let e = c.live(&too_many).await.expect_err("too many ids");
    assert_eq!(e.status(), Some(400), "{e}");

    let metrics = reqwest::get(format!("{}/metrics", dir.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("haystack_directory_commit_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/v1/photos/{id}\""),
        "per-route request metrics: {metrics}"
    );
    dir.stop().await.expect("clean stop");
}

async fn raw_status(resp: reqwest::Response) -> (u16, ErrorBody) {
    let status = resp.status().as_u16();
    let body: ErrorBody = resp.json().await.expect("error body is JSON");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input_gets_clear_4xx() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = TestDirectory::start(test_config(data.path()), data.path()).await;
    let http = reqwest::Client::new();
    let u = &dir.url;

    let (s, b) = raw_status(
        http.post(format!("{u}/v1/photos"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((s, b.error.as_str()), (400, "bad_request"), "{}", b.message);

    let (s, _) = raw_status(
        http.post(format!("{u}/v1/assign"))
            .body("{\"kind\": 5}")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(s, 400);

    let (s, _) = raw_status(
        http.get(format!("{u}/v1/photos/abc"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(s, 400);
    let (s, b) = raw_status(
        http.get(format!("{u}/v1/photos/12345"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((s, b.error.as_str()), (404, "not_found"));
    let (s, _) = raw_status(
        http.get(format!("{u}/v1/nothing"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = raw_status(
        http.get(format!("{u}/v1/volumes/99"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = raw_status(
        http.get(format!("{u}/v1/photos/1/url?alt=x"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(s, 400);

    // A cookie that is not 16 hex digits.
    let (s, _) = raw_status(
        http.post(format!("{u}/v1/photos"))
            .json(&serde_json::json!({"id": "5", "cookie": "xyz", "volume_id": 1,
                "variants": [{"name": "o", "alt": 0, "size_bytes": 1, "content_type": "image/png"}]}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(s, 400);

    let c = &dir.client;
    let commit = CommitRequest {
        id: 5,
        cookie: 1,
        volume_id: 77,
        kind: PhotoKind::Photo,
        variants: vec![],
        chunks: vec![],
    };
    assert_eq!(
        c.commit(&commit).await.expect_err("no variants").status(),
        Some(400)
    );
    let mut with_variant = commit.clone();
    with_variant.variants.push(Variant {
        name: "o".into(),
        alt: 0,
        size_bytes: 1,
        content_type: "image/png".into(),
    });
    let e = c.commit(&with_variant).await.expect_err("unknown volume");
    assert_eq!(e.status(), Some(400), "{e}");

    let mut store = FakeStore::start(None).await;
    store.id = 424242;
    let e = c
        .heartbeat(&store.heartbeat_msg())
        .await
        .expect_err("unregistered");
    assert!(e.is_not_found(), "{e}");
    let mut reg = store.registration();
    reg.public_url = "not a url".into();
    assert_eq!(
        c.register(&reg).await.expect_err("bad url").status(),
        Some(400)
    );

    // With no stores there is nothing writable: 503 with a clear message.
    let e = c
        .assign(&AssignRequest::default())
        .await
        .expect_err("nothing writable");
    match e {
        ClientError::Api { status, body, .. } => {
            assert_eq!((status, body.error.as_str()), (503, "no_writable_volume"))
        }
        other => panic!("unexpected {other}"),
    }
    dir.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_down_answers_503_and_recovers() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = TestDirectory::start(test_config(data.path()), data.path()).await;
    let c = &dir.client;
    let mut stores = three_stores().await;
    bring_up(c, &mut stores).await;
    let a = c.assign(&AssignRequest::default()).await.expect("assign");
    c.commit(&commit_for(&a)).await.expect("commit");

    dir.faults.set_down(true);
    let e = c.lookup(a.id).await.expect_err("backend down");
    match &e {
        ClientError::Api { status, body, .. } => {
            assert_eq!(*status, 503);
            assert_eq!(body.error, "backend_unavailable");
            assert!(body.message.contains("unavailable"), "{}", body.message);
        }
        other => panic!("unexpected {other}"),
    }
    let b = c
        .assign(&AssignRequest::default())
        .await
        .expect("assign needs no backend");
    assert_eq!(
        c.commit(&commit_for(&b)).await.expect_err("down").status(),
        Some(503)
    );
    assert_eq!(c.health().await.expect_err("degraded").status(), Some(503));
    assert_eq!(
        c.heartbeat(&stores[0].heartbeat_msg())
            .await
            .expect_err("down")
            .status(),
        Some(503)
    );

    dir.faults.set_down(false);
    assert_eq!(c.lookup(a.id).await.expect("recovered").id, a.id);

    // A backend that hangs instead of failing: the timeout turns it into a 503 too.
    dir.faults.set_hang(true);
    let e = c.lookup(a.id).await.expect_err("hung backend");
    assert_eq!(e.status(), Some(503), "{e}");
    assert!(e.to_string().contains("did not answer"), "{e}");
    dir.faults.set_hang(false);
    assert_eq!(c.lookup(a.id).await.expect("recovered").id, a.id);
    // Nothing of the refused commit was kept; it goes through now.
    assert!(c
        .lookup(b.id)
        .await
        .expect_err("not committed")
        .is_not_found());
    c.commit(&commit_for(&b))
        .await
        .expect("commit after recovery");
    assert_eq!(c.health().await.expect("healthy").status, "ok");
    dir.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_silent_store_turns_its_volumes_read_only_until_it_returns() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(data.path());
    config.store_timeout_ms = 1_000;
    config.replication_factor = 2;
    let dir = TestDirectory::start(config, data.path()).await;
    let c = &dir.client;
    let mut stores = vec![FakeStore::start(None).await, FakeStore::start(None).await];
    bring_up(c, &mut stores).await;

    // Nobody heartbeats: both stores go down, every volume turns read-only.
    let mut down = false;
    for _ in 0..MAX_POLLS {
        let vols = c.volumes().await.expect("volumes");
        let ss = c.stores().await.expect("stores");
        if ss.iter().all(|s| s.state == StoreState::Down) && vols.iter().all(|v| !v.writable) {
            down = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(down, "stores never marked down");
    let v = c.volumes().await.expect("volumes");
    assert!(
        v[0].reason.as_deref().unwrap_or("").contains("down"),
        "{v:?}"
    );
    assert_eq!(
        c.assign(&AssignRequest::default())
            .await
            .expect_err("ro")
            .status(),
        Some(503)
    );

    // They come back with their next heartbeats.
    for s in stores.iter_mut() {
        s.heartbeat(c).await;
    }
    let vols = c.volumes().await.expect("volumes");
    assert!(vols.iter().any(|v| v.writable), "{vols:?}");
    c.assign(&AssignRequest::default())
        .await
        .expect("writable again");
    dir.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_restart_keeps_committed_photos_and_stores() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = TestDirectory::start(test_config(data.path()), data.path()).await;
    let mut stores = three_stores().await;
    bring_up(&dir.client, &mut stores).await;
    let a = dir
        .client
        .assign(&AssignRequest::default())
        .await
        .expect("assign");
    dir.client.commit(&commit_for(&a)).await.expect("commit");
    dir.stop().await.expect("clean stop");

    let dir = TestDirectory::start(test_config(data.path()), data.path()).await;
    let got = dir.client.lookup(a.id).await.expect("still there");
    assert_eq!((got.cookie, got.volume_id), (a.cookie, a.volume_id));
    assert_eq!(dir.client.stores().await.expect("stores").len(), 3);
    // A store keeps its id across registrations.
    let before = stores[0].id;
    stores[0].register(&dir.client).await;
    assert_eq!(stores[0].id, before);
    dir.stop().await.expect("clean stop");
}

/// A directory (replication 2) over two fake stores holding a writable volume, and a third
/// registered store holding nothing.
async fn two_replicas_and_a_spare(
    data: &std::path::Path,
) -> (
    TestDirectory,
    Vec<FakeStore>,
    haystack_proto::directory::LogicalVolumeInfo,
    FakeStore,
) {
    let mut config = test_config(data);
    config.replication_factor = 2;
    let dir = TestDirectory::start(config, data).await;
    let mut stores = vec![FakeStore::start(None).await, FakeStore::start(None).await];
    bring_up(&dir.client, &mut stores).await;
    let vol = dir
        .client
        .volumes()
        .await
        .expect("volumes")
        .into_iter()
        .find(|v| v.writable)
        .expect("a writable volume");
    let mut spare = FakeStore::start(None).await;
    spare.register(&dir.client).await;
    (dir, stores, vol, spare)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_operator_seals_a_volume_and_moves_a_replica() {
    let data = tempfile::tempdir().expect("tempdir");
    let (dir, mut stores, vol, mut spare) = two_replicas_and_a_spare(data.path()).await;
    let c = &dir.client;

    // Move the replica on stores[0] to a new machine, as a repair would after copying.
    let e = c
        .replace_replica(vol.id, stores[0].id, 999)
        .await
        .expect_err("unknown target");
    assert_eq!(e.status(), Some(400));
    let e = c
        .replace_replica(vol.id, 777, spare.id)
        .await
        .expect_err("store 777 holds no replica");
    assert_eq!(e.status(), Some(400));
    assert!(c
        .replace_replica(4242, stores[0].id, spare.id)
        .await
        .expect_err("no such volume")
        .is_not_found());
    let moved = c
        .replace_replica(vol.id, stores[0].id, spare.id)
        .await
        .expect("replace");
    let ids: Vec<u64> = moved.replicas.iter().map(|r| r.store_id).collect();
    assert!(
        ids.contains(&spare.id) && !ids.contains(&stores[0].id),
        "{ids:?}"
    );
    assert!(
        !moved.writable,
        "the new replica has not reported the volume yet"
    );
    // Idempotent when repeated.
    c.replace_replica(vol.id, stores[0].id, spare.id)
        .await
        .expect("replace again");
    spare.heartbeat(c).await;
    assert!(
        spare.volumes.contains(&vol.id),
        "told to create the moved replica"
    );
    spare.heartbeat(c).await;
    stores[1].heartbeat(c).await;
    assert!(c.volume(vol.id).await.expect("volume").writable);

    // Seal it: it leaves rotation for good.
    let sealed = c
        .set_volume_state(vol.id, VolumeState::Sealed, Some("operator".into()))
        .await
        .expect("seal");
    assert_eq!(sealed.effective_state, VolumeState::Sealed);
    assert!(!sealed.writable);
    let e = c
        .set_volume_state(vol.id, VolumeState::Writable, None)
        .await
        .expect_err("sealed for good");
    assert_eq!(e.status(), Some(400));
    for _ in 0..50 {
        if let Ok(a) = c.assign(&AssignRequest::default()).await {
            assert_ne!(a.volume_id, vol.id, "assigned to a sealed volume");
        }
    }
    dir.stop().await.expect("clean stop");
}

/// A replica of an erasure-coded volume is a shard slot: replacing it by a store that holds
/// no shard (a rebalance move planned before an encode switched the record) would point the
/// slot at nothing, and the drop of the old store's files would delete the real shard. The
/// replace is refused with a 400 and the record is left as it is. Before, the slot was
/// swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_replace_refuses_a_replica_of_an_erasure_coded_volume() {
    use haystack_directory::meta::Meta;
    let data = tempfile::tempdir().expect("tempdir");
    let (dir, stores, vol, spare) = two_replicas_and_a_spare(data.path()).await;
    // The encode's switch: the record now names the shards' stores (here the same two).
    let meta = Meta::new(dir.faults.clone());
    let cur = meta.get_volume(vol.id).await.expect("get").expect("volume");
    let mut encoded = cur.value.clone();
    encoded.state = VolumeState::Sealed;
    encoded.ec = Some(haystack_proto::directory::EcScheme {
        k: 1,
        m: 1,
        block_bytes: 1 << 20,
        generation: 1,
        retired: Vec::new(),
    });
    meta.put_volume(
        &encoded,
        haystack_directory::meta::Expect::Version(cur.version),
    )
    .await
    .expect("put");
    let before = meta.get_volume(vol.id).await.expect("get").expect("volume");

    let resp = reqwest::Client::new()
        .post(format!("{}/v1/volumes/{}/replace", dir.url, vol.id))
        .json(&serde_json::json!({
            "from_store_id": stores[0].id.to_string(),
            "to_store_id": spare.id.to_string(),
        }))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 400, "the replace was taken: {text}");
    let b: ErrorBody = serde_json::from_str(&text).expect("error body is JSON");
    assert_eq!(b.error, "bad_request", "{b:?}");
    assert!(b.message.contains("erasure-coded"), "{b:?}");
    let after = meta.get_volume(vol.id).await.expect("get").expect("volume");
    assert_eq!(after.version, before.version, "the record was written");
    assert_eq!(after.value.replicas, before.value.replicas);
    dir.stop().await.expect("clean stop");
}
