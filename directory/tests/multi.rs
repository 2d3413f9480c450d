//! Several directory instances over one metadata store at once (issue 16): ids, commits,
//! lookups and deletes through either one agree; volumes are created once and a lost replica
//! is copied once (only the holder of the coordinator lease runs the background work); when
//! the coordinator stops, the other instance takes the lease and the work goes on.
//!
//! The embedded backend is one directory process by design (redb locks its file); here two
//! directory services in one test process share one embedded store object, which exercises
//! the same conditional writes and leases as several processes over ScyllaDB. The same
//! scenario runs over ScyllaDB when `HAYSTACK_TEST_SCYLLA` is set, and says SKIPPED otherwise.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use haystack_client::DirectoryClient;
use haystack_directory::config::ScyllaConfig;
use haystack_directory::meta::embedded::EmbeddedStore;
use haystack_directory::meta::faulty::FaultyStore;
use haystack_directory::meta::scylla::ScyllaStore;
use haystack_directory::meta::MetadataStore;
use haystack_proto::directory::{AssignRequest, CommitRequest, PhotoKind, Variant};

use crate::common::{test_config, FakeStore, TestDirectory, MAX_POLLS, POLL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_directories_over_one_embedded_store() {
    let data = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(data.path()).expect("open embedded store");
    two_directories(Arc::new(store), data.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_directories_over_scylla() {
    let Ok(host) = std::env::var("HAYSTACK_TEST_SCYLLA") else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "two_directories_over_scylla: SKIPPED: HAYSTACK_TEST_SCYLLA is not set (set it to \
             host:port of a ScyllaDB or Cassandra node; docs/directory.md shows how to start one)"
        );
        return;
    };
    let cfg = ScyllaConfig {
        replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}".into(),
        ..Default::default()
    };
    let ks = format!("haystack_multi_{}", std::process::id());
    let s = ScyllaStore::connect(&[host], &ks, &cfg)
        .await
        .expect("connect to HAYSTACK_TEST_SCYLLA");
    let data = tempfile::tempdir().expect("tempdir");
    two_directories(Arc::new(s), data.path()).await;
}

fn commit_of(a: &haystack_proto::directory::AssignResponse) -> CommitRequest {
    CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Photo,
        variants: vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: 100,
            content_type: "image/jpeg".into(),
        }],
        chunks: vec![],
    }
}

async fn two_directories(meta: Arc<dyn MetadataStore>, data: &std::path::Path) {
    // One backend, a wrapper each: the first directory's stop must not close it for the other.
    let for_a = Arc::new(FaultyStore::new(meta.clone()));
    for_a.set_keep_open(true);
    let for_b = Arc::new(FaultyStore::new(meta));
    let mut config = test_config(data);
    // A store silent for 1 s is down; its volumes are copied elsewhere 0.5 s later.
    config.store_timeout_ms = 1_000;
    config.rereplicate_after_ms = 500;
    let min_writable = config.min_writable_volumes;
    let a = TestDirectory::start_over(config.clone(), for_a).await;
    // Started second: the coordinator lease is the first one's.
    let b = TestDirectory::start_over(config, for_b).await;
    let dirs = [a.client.clone(), b.client.clone()];

    // Five stores (R = 3), registered with either directory, heartbeating to both in turn
    // (as a store with a list of directory URLs may), until told to stop.
    let mut stores = Vec::new();
    for i in 0..5 {
        let mut s = FakeStore::start(None).await;
        s.register(&dirs[i % 2]).await;
        stores.push(s);
    }
    let ids: Vec<u64> = stores.iter().map(|s| s.id).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        5,
        "store ids are unique: {ids:?}"
    );
    let logs: Vec<Arc<std::sync::Mutex<Vec<String>>>> =
        stores.iter().map(|s| s.log.clone()).collect();
    let alive: Arc<Vec<AtomicBool>> = Arc::new((0..5).map(|_| AtomicBool::new(true)).collect());
    let beating = {
        let (dirs, alive) = (dirs.clone(), alive.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                for (i, s) in stores.iter_mut().enumerate() {
                    if alive[i].load(Ordering::SeqCst) {
                        let c: &DirectoryClient = &dirs[(n + i) % 2];
                        if let Ok(reply) = c.heartbeat(&s.heartbeat_msg()).await {
                            for v in reply.create_volumes {
                                if !s.volumes.contains(&v) {
                                    s.volumes.push(v);
                                }
                            }
                        }
                    }
                }
                n += 1;
                tokio::time::sleep(POLL * 5).await;
            }
        })
    };

    // Both directories see writable volumes.
    for c in &dirs {
        let mut ok = false;
        for _ in 0..MAX_POLLS {
            if c.volumes()
                .await
                .expect("volumes")
                .iter()
                .any(|v| v.writable)
            {
                ok = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        assert!(ok, "{} never saw a writable volume", c.base_url());
    }

    // Concurrent uploads: assign on one directory, commit on the other, from 8 tasks.
    let mut tasks = Vec::new();
    for t in 0..8usize {
        let dirs = dirs.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..25usize {
                let (x, y) = (&dirs[(t + i) % 2], &dirs[(t + i + 1) % 2]);
                let a = x.assign(&AssignRequest::default()).await.expect("assign");
                let p = y.commit(&commit_of(&a)).await.expect("commit");
                assert_eq!((p.id, p.cookie, p.volume_id), (a.id, a.cookie, a.volume_id));
                done.push(a);
            }
            done
        }));
    }
    let mut photos = Vec::new();
    for t in tasks {
        photos.extend(t.await.expect("upload task"));
    }
    let unique: HashSet<u64> = photos.iter().map(|a| a.id).collect();
    assert_eq!(unique.len(), photos.len(), "every id assigned once");
    // Every photo looks up the same through both; a third is deleted through either.
    for (i, a) in photos.iter().enumerate() {
        if i % 3 == 0 {
            dirs[i % 2].delete(a.id).await.expect("delete");
        }
    }
    for (i, a) in photos.iter().enumerate() {
        for c in &dirs {
            match c.lookup(a.id).await {
                Ok(p) if i % 3 != 0 => assert_eq!((p.volume_id, p.cookie), (a.volume_id, a.cookie)),
                Ok(_) => panic!("deleted photo {} found through {}", a.id, c.base_url()),
                Err(e) if i % 3 == 0 && e.is_not_found() => {}
                Err(e) => panic!("photo {} through {}: {e}", a.id, c.base_url()),
            }
        }
    }

    // Volumes were created by one instance only: exactly as many as one directory makes.
    let vols = dirs[0].volumes().await.expect("volumes");
    assert_eq!(
        vols.len(),
        min_writable,
        "volumes created: {:?}",
        vols.iter().map(|v| v.id).collect::<Vec<_>>()
    );

    // The first instance took the coordinator lease when it started; the other did not.
    assert!(a.client.health().await.expect("health").coordinator);
    assert!(!b.client.health().await.expect("health").coordinator);

    // A store dies while both directories run: each volume it held is copied once.
    let mut copies: HashMap<u32, usize> = HashMap::new();
    kill_and_heal(&dirs[1], &alive, &ids, &mut copies).await;
    // Give a second copier, if there were one, time to act; then count the copies.
    tokio::time::sleep(POLL * 50).await;
    copied_once(&imports(&logs), &copies);

    // The coordinator stops (releasing its lease): the other instance takes the lease and
    // copies the volumes of the next store that dies.
    a.stop().await.expect("stop directory a");
    let mut took = false;
    for _ in 0..MAX_POLLS {
        if b.client.health().await.expect("health").coordinator {
            took = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(
        took,
        "the surviving directory never took the coordinator lease"
    );
    kill_and_heal(&dirs[1], &alive, &ids, &mut copies).await;
    tokio::time::sleep(POLL * 50).await;
    copied_once(&imports(&logs), &copies);
    beating.abort();
    b.stop().await.expect("stop directory b");
}

/// Stops the heartbeats of the first live store that holds a volume and waits until `c`
/// lists none of its volumes on it, each back to three replicas; adds the copies that
/// needed to `copies`.
async fn kill_and_heal(
    c: &DirectoryClient,
    alive: &[AtomicBool],
    ids: &[u64],
    copies: &mut HashMap<u32, usize>,
) {
    let vols = c.volumes().await.expect("volumes");
    let holds = |id: u64| {
        vols.iter()
            .filter(|v| v.replicas.iter().any(|r| r.store_id == id))
            .map(|v| v.id)
            .collect::<Vec<u32>>()
    };
    let dead = (0..ids.len())
        .find(|i| alive[*i].load(Ordering::SeqCst) && !holds(ids[*i]).is_empty())
        .expect("a live store holding a volume");
    let dead_id = ids[dead];
    let lost = holds(dead_id);
    alive[dead].store(false, Ordering::SeqCst);
    for v in &lost {
        *copies.entry(*v).or_default() += 1;
    }
    for _ in 0..MAX_POLLS * 2 {
        let vols = c.volumes().await.expect("volumes");
        if vols
            .iter()
            .filter(|v| lost.contains(&v.id))
            .all(|v| v.replicas.len() == 3 && v.replicas.iter().all(|r| r.store_id != dead_id))
        {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("the volumes of store {dead_id} ({lost:?}) were never re-replicated");
}

/// Every volume a dead store held was copied exactly as many times as it lost a replica (a
/// volume created meanwhile may have been copied too; it is not counted here).
fn copied_once(imports: &HashMap<u32, usize>, copies: &HashMap<u32, usize>) {
    for (v, n) in copies {
        assert_eq!(
            imports.get(v),
            Some(n),
            "volume {v} lost {n} replica(s); copies asked of the stores: {imports:?}"
        );
    }
}

/// The volume copies the stores were asked for (`POST /v1/volumes/{id}/import`), by volume.
fn imports(logs: &[Arc<std::sync::Mutex<Vec<String>>>]) -> HashMap<u32, usize> {
    let mut n: HashMap<u32, usize> = HashMap::new();
    for log in logs {
        for r in log.lock().expect("log").iter() {
            if let Some(v) = r
                .strip_prefix("POST /v1/volumes/")
                .and_then(|r| r.strip_suffix("/import"))
                .and_then(|v| v.parse::<u32>().ok())
            {
                *n.entry(v).or_default() += 1;
            }
        }
    }
    n
}
