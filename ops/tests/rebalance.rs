//! Rebalancing: a new, empty store joins a cluster whose stores hold every volume;
//! `haystack rebalance --dry-run` shows moves onto it and moves nothing, `haystack rebalance`
//! moves replicas onto it until the spread is within bounds, and every photo still reads back
//! byte for byte from the replicas the directory names.

use std::time::{Duration, Instant};

use haystack_proto::directory::{
    AssignResponse, LogicalVolumeInfo, PhotoInfo, RebalancePlan, StoreInfo,
};
use haystack_proto::format_cookie;
use haystack_testkit::{Cluster, ClusterOptions};

async fn rebalance(cl: &Cluster, extra: &[&str]) -> RebalancePlan {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(["rebalance", "--json", "--directory", &cl.directory_url()])
        .args(extra)
        .env("HAYSTACK_TOKEN", cl.admin_token())
        .output()
        .await
        .expect("haystack rebalance");
    assert!(
        out.status.success(),
        "rebalance: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan JSON")
}

/// Uploads one photo of `len` bytes through the directory and the stores; its bytes.
async fn put(cl: &Cluster, len: usize, seed: u32) -> (AssignResponse, Vec<u8>) {
    let (a, _, body) = crate::common::put_photo(
        &cl.admin_http(),
        &cl.directory_url(),
        len as u32,
        seed as u8,
    )
    .await;
    (a, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_gets_replicas_moved_onto_it() {
    let mut cl = Cluster::start(ClusterOptions {
        stores: 2,
        replication: 1,
        min_writable_volumes: 4,
        ..Default::default()
    })
    .await;
    let mut photos = Vec::new();
    for i in 0..40 {
        photos.push(put(&cl, 50_000, i).await);
    }
    let new = cl.add_store();
    let new_url = cl.store_url(new);
    let c = cl.admin_http();
    let dir = cl.directory_url();
    // Wait until the directory knows the new store.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_id = loop {
        let stores: Vec<StoreInfo> = c
            .get(format!("{dir}/v1/stores"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(s) = stores.iter().find(|s| s.url == new_url) {
            break s.store_id;
        }
        assert!(Instant::now() < deadline, "the new store never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The stores share one file system here, so disk use fractions are tiny: ask for a
    // spread below the one the new store causes.
    let spread = "0.0000001";
    // Volume sizes reach the directory with heartbeats (every second here).
    let deadline = Instant::now() + Duration::from_secs(30);
    let plan = loop {
        let plan = rebalance(&cl, &["--dry-run", "--spread", spread]).await;
        if !plan.moves.is_empty() {
            break plan;
        }
        assert!(Instant::now() < deadline, "no plan: {plan:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The greedy plan fills the new store; with a spread this narrow it may also even out the
    // old stores between themselves (that depends on which volumes the random assigns
    // filled), so not every move need go to the new store, but none leaves it.
    assert!(
        plan.moves.iter().any(|m| m.to_store_id == new_id),
        "{plan:?}"
    );
    assert!(
        plan.moves.iter().all(|m| m.from_store_id != new_id),
        "{plan:?}"
    );
    let before: Vec<LogicalVolumeInfo> = cl.volumes().await;
    assert!(
        before
            .iter()
            .all(|v| v.replicas.iter().all(|r| r.url != new_url)),
        "a dry run moved nothing"
    );
    let ran = rebalance(&cl, &["--spread", spread]).await;
    let done: Vec<_> = ran.moves.iter().filter(|m| m.done == Some(true)).collect();
    let done_to_new = done.iter().filter(|m| m.to_store_id == new_id).count();
    assert!(done_to_new > 0, "{ran:?}");
    let after: Vec<LogicalVolumeInfo> = cl.volumes().await;
    // Every volume moved there has its replica there (the directory may also have made new
    // volumes on the new, emptiest store while moved ones were read-only: not counted).
    for m in done.iter().filter(|m| m.to_store_id == new_id) {
        let v = after.iter().find(|v| v.id == m.volume).unwrap();
        assert!(
            v.replicas.iter().any(|r| r.url == new_url),
            "volume {} not on the new store: {v:?}",
            m.volume
        );
    }
    // Moved volumes are writable again, and every photo reads back from where the
    // directory says it is now.
    for m in &done {
        let v = after.iter().find(|v| v.id == m.volume).unwrap();
        assert_eq!(v.state, haystack_proto::VolumeState::Writable, "{v:?}");
    }
    for (a, body) in &photos {
        let info: PhotoInfo = c
            .get(format!("{dir}/v1/photos/{}", a.id))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = format!(
            "{}/v1/needles/{}/{}/0/{}",
            info.replicas[0].url,
            a.volume_id,
            a.id,
            format_cookie(a.cookie)
        );
        let got = c.get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(got.as_ref(), body.as_slice(), "photo {}", a.id);
    }
    // Once the stores have reported the moved replicas, the spread is narrower.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let again = rebalance(&cl, &["--dry-run", "--spread", spread]).await;
        if again.spread < plan.spread {
            break;
        }
        assert!(Instant::now() < deadline, "{again:?} vs {plan:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
