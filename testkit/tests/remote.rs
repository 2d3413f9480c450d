//! Asynchronous remote replicas over a real cluster: a remote replica stopped during 1,000
//! uploads catches up when it returns (lag back to 0, every needle byte for byte, the deletes
//! it missed applied), reads never go to it while a local replica serves, and after every
//! local replica is lost `promote` makes it the replica reads come from.

use futures_util::StreamExt;
use haystack_client::DirectoryClient;
use haystack_proto::directory::LogicalVolumeInfo;
use haystack_proto::NeedleAddr;
use haystack_testkit::{Cluster, ClusterOptions};

use crate::selfheal::{clients, eventually, not_found, put_photo, serves};

/// Two local stores (replication 2) and one store in the remote zone (index 2).
fn options() -> ClusterOptions {
    ClusterOptions {
        stores: 2,
        replication: 2,
        remote_stores: 1,
        min_writable_volumes: 2,
        ..Default::default()
    }
}

/// Whether every volume has its remote replica and its shipper says it is 0 bytes behind.
async fn caught_up(dc: &DirectoryClient) -> bool {
    let vols: Vec<LogicalVolumeInfo> = dc.volumes().await.unwrap_or_default();
    !vols.is_empty()
        && vols
            .iter()
            .all(|v| v.remote_replicas.len() == 1 && v.remote_replicas[0].lag_bytes == Some(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_replica_stopped_during_1000_uploads_catches_up() {
    let mut c = Cluster::start(options()).await;
    let (dc, sc) = clients(&c);
    let remote = c.store_url(2);
    eventually(60, "every volume has a seeded remote replica", || {
        caught_up(&dc)
    })
    .await;

    c.stop_store(2);
    let photos: Vec<_> = futures_util::stream::iter(0..1000)
        .map(|_| put_photo(&dc, &sc))
        .buffer_unordered(8)
        .collect()
        .await;
    // Deletes the remote replica misses while it is down.
    let deleted: Vec<_> = photos.iter().take(20).collect();
    for (a, _) in &deleted {
        dc.delete(a.id).await.unwrap();
    }
    eventually(
        10,
        "the directory shows the remote replica behind",
        || async {
            let vols = dc.volumes().await.unwrap();
            vols.iter().any(|v| {
                v.remote_replicas
                    .iter()
                    .any(|r| r.lag_bytes.unwrap_or(0) > 0 && !r.up)
            })
        },
    )
    .await;
    // Reads go to local replicas only.
    let info = dc.lookup(photos[500].0.id).await.unwrap();
    assert!(
        info.replicas.iter().all(|r| r.url != remote),
        "a lookup named the remote replica: {info:?}"
    );

    c.start_store(2);
    eventually(120, "the remote replica catches up (lag 0)", || {
        caught_up(&dc)
    })
    .await;
    for (a, data) in photos.iter().skip(20) {
        let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
        assert!(
            serves(&sc, &remote, &addr, data).await,
            "photo {} on volume {} is not on the remote replica byte for byte",
            a.id,
            a.volume_id
        );
    }
    for (a, _) in &deleted {
        let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
        eventually(30, "a delete the remote replica missed is applied", || {
            not_found(&sc, &remote, &addr)
        })
        .await;
    }
    // The remote copy's file is byte for byte a prefix of its source's but for delete flags:
    // its own verify finds nothing wrong.
    for v in dc.volumes().await.unwrap() {
        let report: serde_json::Value = sc.verify(&remote, v.id).await.unwrap();
        assert_eq!(report["corrupt"], serde_json::json!([]), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_remote_replica_serves_after_every_local_one_is_lost() {
    let mut c = Cluster::start(options()).await;
    let (dc, sc) = clients(&c);
    let remote = c.store_url(2);
    let mut photos = Vec::new();
    for _ in 0..30 {
        photos.push(put_photo(&dc, &sc).await);
    }
    eventually(60, "the remote replicas catch up", || caught_up(&dc)).await;
    c.stop_store(0);
    c.stop_store(1);
    let vols = dc.volumes().await.unwrap();
    for v in &vols {
        let r = &v.remote_replicas[0];
        let after = dc.promote_remote(v.id, r.store_id).await.unwrap();
        assert_eq!(after.replicas[0].url, remote, "{after:?}");
        assert!(after.remote_replicas.is_empty(), "{after:?}");
    }
    // Promoting again is refused: it is a replica now.
    let again = dc
        .promote_remote(vols[0].id, vols[0].replicas[0].store_id)
        .await;
    assert_eq!(again.unwrap_err().status(), Some(400));
    for (a, data) in &photos {
        let info = dc.lookup(a.id).await.unwrap();
        assert_eq!(info.replicas[0].url, remote, "{info:?}");
        let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
        assert!(serves(&sc, &remote, &addr, data).await, "photo {}", a.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_source_reseeds_its_remote_replica() {
    let c = Cluster::start(ClusterOptions {
        min_writable_volumes: 1,
        ..options()
    })
    .await;
    let (dc, sc) = clients(&c);
    let remote = c.store_url(2);
    let mut photos = Vec::new();
    for _ in 0..20 {
        photos.push(put_photo(&dc, &sc).await);
    }
    eventually(60, "the remote replicas catch up", || caught_up(&dc)).await;
    for (a, _) in photos.iter().take(10) {
        dc.delete(a.id).await.unwrap();
    }
    // Compaction moves every needle after the first deleted one on both local replicas:
    // the remote's file no longer agrees with its shipper's.
    for v in dc.volumes().await.unwrap() {
        for r in &v.replicas {
            let _: serde_json::Value = sc.compact(&r.url, v.id).await.unwrap();
        }
    }
    for _ in 0..5 {
        photos.push(put_photo(&dc, &sc).await);
    }
    // Lags arrive with heartbeats: wait for the bytes themselves.
    for (i, (a, data)) in photos.iter().enumerate() {
        let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
        if i < 10 {
            assert!(not_found(&sc, &remote, &addr).await, "deleted photo {i}");
        } else {
            eventually(60, "the re-seeded remote replica serves the photo", || {
                serves(&sc, &remote, &addr, data)
            })
            .await;
        }
    }
    eventually(10, "the lag reported is 0 again", || caught_up(&dc)).await;
}
