//! Automatic re-replication: a store that stays down has its replicas copied from the
//! surviving ones onto another store, and the directory switches to the copies; and a delete
//! made while a replica was being copied does not come back on the copy.

use std::time::{Duration, Instant};

use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, LogicalVolumeInfo, PhotoInfo, Variant,
};
use haystack_proto::format_cookie;
use haystack_testkit::{Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_past_the_timeout_is_replaced_by_a_copy() {
    let mut cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        store_timeout_ms: 2_000,
        rereplicate_after_ms: 1_000,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let a: AssignResponse = c
        .post(format!("{dir}/v1/assign"))
        .json(&AssignRequest::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let path = format!(
        "/v1/needles/{}/{}/0/{}",
        a.volume_id,
        a.id,
        format_cookie(a.cookie)
    );
    for r in &a.replicas {
        let s = c
            .put(format!("{}{path}", r.url))
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 201);
    }
    let commit = CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: Default::default(),
        variants: vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: body.len() as u64,
            content_type: "image/jpeg".into(),
        }],
        chunks: vec![],
    };
    let r = c
        .post(format!("{dir}/v1/photos"))
        .json(&commit)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let lost_url = a.replicas[0].url.clone();
    let lost = cl.store_urls().iter().position(|u| *u == lost_url).unwrap();
    cl.stop_store(lost);
    let deadline = Instant::now() + Duration::from_secs(60);
    let vol = loop {
        let v: LogicalVolumeInfo = c
            .get(format!("{dir}/v1/volumes/{}", a.volume_id))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v.replicas
            .iter()
            .all(|r| r.url != lost_url && r.up && r.reported)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "volume {} was not re-replicated: {v:?}",
            a.volume_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(vol.replicas.len(), 2);
    assert!(vol.writable, "{vol:?}");
    let p: PhotoInfo = c
        .get(format!("{dir}/v1/photos/{}", a.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for r in &p.replicas {
        let got = c
            .get(format!("{}{path}", r.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.as_ref(), &body[..], "{}", r.url);
    }
}

/// A replica copy is taken while the volume is read-only, which stops writes, not deletes: a
/// delete made after the copy passed the needle reached the replicas of the time, not the copy
/// (it was not one yet). Here the copy is made first and the photo deleted after it, the
/// widest form of that race; once the copy replaces a replica (as re-replication, drain and
/// `haystack volume repair` do), the comparison the directory runs then deletes the needle on
/// it. Before, the copy served the deleted photo until the next anti-entropy pass (every 10
/// minutes by default; off in this cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_made_during_a_replica_copy_does_not_come_back_on_the_copy() {
    let cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let a: AssignResponse = c
        .post(format!("{dir}/v1/assign"))
        .json(&AssignRequest::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body: Vec<u8> = (0..9_000u32).map(|i| (i % 251) as u8).collect();
    let path = format!(
        "/v1/needles/{}/{}/0/{}",
        a.volume_id,
        a.id,
        format_cookie(a.cookie)
    );
    for r in &a.replicas {
        let s = c
            .put(format!("{}{path}", r.url))
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 201);
    }
    let commit = CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: Default::default(),
        variants: vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: body.len() as u64,
            content_type: "image/jpeg".into(),
        }],
        chunks: vec![],
    };
    let r = c
        .post(format!("{dir}/v1/photos"))
        .json(&commit)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let spare = cl
        .store_urls()
        .into_iter()
        .find(|u| a.replicas.iter().all(|r| r.url != *u))
        .expect("a store without the volume");
    let v = a.volume_id;
    // The copy onto the spare store, from the first replica.
    let r = c
        .post(format!("{spare}/v1/volumes/{v}/import"))
        .json(&serde_json::json!({ "from": a.replicas[0].url }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "import: {}", r.status());
    assert_eq!(
        c.get(format!("{spare}{path}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The delete: the replicas take it, the copy is not one yet.
    let r = c
        .delete(format!("{dir}/v1/photos/{}", a.id))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "delete: {}", r.status());
    assert_eq!(
        c.get(format!("{spare}{path}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The copy replaces the second replica.
    let stores: Vec<serde_json::Value> = c
        .get(format!("{dir}/v1/stores"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spare_id: u64 = stores
        .iter()
        .find(|s| s["url"].as_str() == Some(spare.as_str()))
        .and_then(|s| s["store_id"].as_str()?.parse().ok())
        .expect("the spare store's id");
    let r = c
        .post(format!("{dir}/v1/volumes/{v}/replace"))
        .json(&serde_json::json!({
            "from_store_id": a.replicas[1].store_id.to_string(),
            "to_store_id": spare_id.to_string(),
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "replace: {}", r.status());
    // The deleted photo is gone from the copy too (the repair worker applies the queued delete).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c
            .get(format!("{spare}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        if s == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted photo is still served by the copy ({s})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
