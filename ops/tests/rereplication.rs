//! Automatic re-replication: a store that stays down has its replicas copied from the
//! surviving ones onto another store, and the directory switches to the copies.

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
