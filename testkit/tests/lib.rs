//! The harness itself: a cluster starts, takes a photo on every replica, loses a store and
//! gets it back with its data; the self-healing of a cluster (`selfheal`); the multi-host
//! harness of network namespaces (`netns`); asynchronous remote replicas (`remote`); the
//! chained placement's layout after a store is lost (`chained`).

mod chained;
mod netns;
mod remote;
mod selfheal;

use haystack_proto::directory::{AssignRequest, AssignResponse};
use haystack_proto::format_cookie;
use haystack_testkit::{Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_starts_writes_and_restarts_a_store() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let http = c.admin_http();
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

/// Every role of a process renders the process's metrics on its /metrics: before one
/// recorder was shared (haystack_service::metrics), the role that installed second showed
/// only "# metrics recorder owned by another component of this process". The background
/// workers' state is there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_in_one_process_serves_the_process_metrics() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let http = reqwest::Client::new();
    let mut pages = Vec::new();
    for url in [c.directory_url(), c.store_url(0), c.store_url(1)] {
        let text = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !text.contains("owned by another component"),
            "{url}: {text}"
        );
        pages.push(text);
    }
    for text in &pages {
        assert!(text.contains("haystack_store_"), "{text}");
        assert!(
            text.contains("haystack_worker_state{worker=\"heartbeat\"}"),
            "{text}"
        );
        assert!(
            text.contains("haystack_worker_state{worker=\"maintenance\"}"),
            "{text}"
        );
    }
}
