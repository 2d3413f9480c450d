//! Placement experiments on a test cluster (issue 16): volumes created once every store has
//! registered, photos written to every replica, a bounded random read load sent straight to
//! the stores the directory names, and the count of reads each store served; the chained
//! placement's ring (store ids in order) and its neighbours. Used by the testkit's tests and
//! its `placement` bench.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use haystack_proto::directory::{AssignRequest, AssignResponse, LogicalVolumeInfo, StoreInfo};
use haystack_proto::format_cookie;
use rand::{Rng, SeedableRng};

use crate::Cluster;

/// One photo written to every replica of its volume: its volume and its needle path.
#[derive(Clone, Debug)]
pub struct Photo {
    pub volume: u32,
    pub path: String,
}

/// The directory's stores, by id (the chained placement's ring order).
pub async fn stores(c: &Cluster) -> Vec<StoreInfo> {
    let mut s: Vec<StoreInfo> = c
        .admin_http()
        .get(format!("{}/v1/stores", c.directory_url()))
        .send()
        .await
        .expect("GET /v1/stores")
        .json()
        .await
        .expect("stores JSON");
    s.sort_by_key(|s| s.store_id);
    s
}

/// The two neighbours of `id` on the ring of `ring` (ids in ascending order).
pub fn ring_neighbours(ring: &[u64], id: u64) -> (u64, u64) {
    let n = ring.len();
    let i = ring.iter().position(|r| *r == id).unwrap_or(0);
    (ring[(i + n - 1) % n], ring[(i + 1) % n])
}

/// Waits (up to 30 s) until `n` stores have registered, then creates `volumes` logical
/// volumes one after the other and waits (up to 60 s) until all their replicas exist. Start
/// the cluster with `min_writable_volumes: 0` so that no volume is placed before every store
/// is there.
pub async fn create_volumes(c: &Cluster, n: usize, volumes: usize) -> Vec<LogicalVolumeInfo> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while stores(c).await.len() < n {
        assert!(Instant::now() < deadline, "{n} stores did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = c.admin_http();
    for _ in 0..volumes {
        let r = http
            .post(format!("{}/v1/volumes", c.directory_url()))
            .send()
            .await
            .expect("POST /v1/volumes");
        assert!(r.status().is_success(), "volume creation: {}", r.status());
    }
    c.wait_writable(volumes).await;
    c.volumes().await
}

/// Writes photos of `bytes` bytes (assign, then a PUT on every replica) until every volume
/// has at least `per_volume` of them or `per_volume * volumes * 4` assigns were made.
pub async fn upload(c: &Cluster, volumes: usize, per_volume: usize, bytes: usize) -> Vec<Photo> {
    let http = c.admin_http();
    let body = vec![0x5au8; bytes];
    let mut photos = Vec::new();
    let mut count: BTreeMap<u32, usize> = BTreeMap::new();
    for _ in 0..per_volume * volumes * 4 {
        if count.len() == volumes && count.values().all(|n| *n >= per_volume) {
            break;
        }
        let a: AssignResponse = http
            .post(format!("{}/v1/assign", c.directory_url()))
            .json(&AssignRequest::default())
            .send()
            .await
            .expect("assign")
            .json()
            .await
            .expect("assign JSON");
        let path = format!(
            "/v1/needles/{}/{}/0/{}",
            a.volume_id,
            a.id,
            format_cookie(a.cookie)
        );
        for r in &a.replicas {
            let s = http
                .put(format!("{}{path}", r.url))
                .body(body.clone())
                .send()
                .await
                .expect("PUT needle")
                .status();
            assert_eq!(s.as_u16(), 201, "{}", r.url);
        }
        *count.entry(a.volume_id).or_default() += 1;
        photos.push(Photo {
            volume: a.volume_id,
            path,
        });
    }
    photos
}

/// What a read load did: the reads each store served (by store id) and the reads that failed.
#[derive(Clone, Debug, Default)]
pub struct Served {
    pub by_store: BTreeMap<u64, u64>,
    pub failed: u64,
}

/// `reads` GETs, one at a time: a volume at random, a photo of it at random, and one of the
/// volume's replicas the directory lists as up at random (as a reader spreads its reads over
/// the replicas it is given). Deterministic for a seed and a layout.
pub async fn read_load(c: &Cluster, photos: &[Photo], reads: usize, seed: u64) -> Served {
    let vols = c.volumes().await;
    let mut by_volume: BTreeMap<u32, Vec<&Photo>> = BTreeMap::new();
    for p in photos {
        by_volume.entry(p.volume).or_default().push(p);
    }
    let ids: Vec<u32> = by_volume.keys().copied().collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut served = Served::default();
    for _ in 0..reads {
        let vid = ids[rng.random_range(0..ids.len())];
        let list = &by_volume[&vid];
        let photo = list[rng.random_range(0..list.len())];
        let up: Vec<_> = vols
            .iter()
            .find(|v| v.id == vid)
            .map(|v| v.replicas.iter().filter(|r| r.up).collect())
            .unwrap_or_default();
        if up.is_empty() {
            served.failed += 1;
            continue;
        }
        let r = up[rng.random_range(0..up.len())];
        let ok = match http.get(format!("{}{}", r.url, photo.path)).send().await {
            Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            *served.by_store.entry(r.store_id).or_default() += 1;
        } else {
            served.failed += 1;
        }
    }
    served
}

/// Waits (up to 30 s) until the directory lists every replica on `store_id` as down.
pub async fn wait_down(c: &Cluster, store_id: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let vols = c.volumes().await;
        let down = vols
            .iter()
            .flat_map(|v| v.replicas.iter())
            .filter(|r| r.store_id == store_id)
            .all(|r| !r.up);
        if down {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "store {store_id} not marked down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
