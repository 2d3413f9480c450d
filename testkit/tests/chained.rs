//! Chained declustering on a real cluster (issue 16): with `placement = "chained"`, once a
//! store stops, every volume it held has its surviving replica on one of its two ring
//! neighbours, which serve the volume's photos.

use haystack_directory::placement::Policy;
use haystack_testkit::placement::{create_volumes, ring_neighbours, stores, upload, wait_down};
use haystack_testkit::{Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stores_volumes_survive_on_its_ring_neighbours() {
    let n = 6;
    let mut c = Cluster::start(ClusterOptions {
        stores: n,
        replication: 2,
        min_writable_volumes: 0,
        volume_bytes: 8 << 20,
        placement: Policy::Chained,
        ..Default::default()
    })
    .await;
    let vols = create_volumes(&c, n, 2 * n).await;
    let ring: Vec<u64> = stores(&c).await.iter().map(|s| s.store_id).collect();
    // Consecutive volumes start on consecutive machines, each on two ring neighbours.
    for v in &vols {
        let ids: Vec<u64> = v.replicas.iter().map(|r| r.store_id).collect();
        assert_eq!(ids.len(), 2, "{v:?}");
        assert_eq!(ring_neighbours(&ring, ids[0]).1, ids[1], "volume {}", v.id);
    }
    let photos = upload(&c, vols.len(), 1, 1024).await;
    let lost_index = 2;
    let lost_url = c.store_url(lost_index);
    let lost = stores(&c)
        .await
        .iter()
        .find(|s| s.url == lost_url)
        .map(|s| s.store_id)
        .expect("the stopped store is registered");
    c.stop_store(lost_index);
    wait_down(&c, lost).await;
    let (left, right) = ring_neighbours(&ring, lost);
    let http = c.admin_http();
    let mut held = 0;
    for v in c.volumes().await {
        if !v.replicas.iter().any(|r| r.store_id == lost) {
            continue;
        }
        held += 1;
        let survivors: Vec<_> = v.replicas.iter().filter(|r| r.store_id != lost).collect();
        assert_eq!(survivors.len(), 1, "{v:?}");
        let s = survivors[0];
        assert!(
            s.store_id == left || s.store_id == right,
            "volume {} survives on store {}, not on {lost}'s neighbours {left} and {right}",
            v.id,
            s.store_id
        );
        assert!(s.up, "{v:?}");
        let photo = photos.iter().find(|p| p.volume == v.id).expect("a photo");
        let r = http
            .get(format!("{}{}", s.url, photo.path))
            .send()
            .await
            .expect("GET from the neighbour");
        assert!(r.status().is_success(), "{}: {}", s.url, r.status());
    }
    // Twelve volumes on a ring of six, two replicas each: every store holds four.
    assert_eq!(held, 4);
}
