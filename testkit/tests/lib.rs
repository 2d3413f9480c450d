//! The harness itself: a cluster starts, takes a photo on every replica, loses a store and
//! gets it back with its data.

use haystack_proto::directory::{AssignRequest, AssignResponse};
use haystack_proto::format_cookie;
use haystack_testkit::{Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_starts_writes_and_restarts_a_store() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let a: AssignResponse = http
        .post(format!("{}/v1/assign", c.directory_url()))
        .json(&AssignRequest::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a.replicas.len(), 2);
    let path = format!(
        "/v1/needles/{}/{}/0/{}",
        a.volume_id,
        a.id,
        format_cookie(a.cookie)
    );
    for r in &a.replicas {
        let s = http
            .put(format!("{}{path}", r.url))
            .body("hello")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 201, "{}", r.url);
    }
    let i = c
        .store_urls()
        .iter()
        .position(|u| *u == a.replicas[0].url)
        .expect("replica is one of ours");
    c.stop_store(i);
    assert!(http
        .get(format!("{}{path}", c.store_url(i)))
        .send()
        .await
        .is_err());
    c.start_store(i);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{}{path}", c.store_url(i))).send().await {
            assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
