//! Replica failover: a store that dies under load costs no failed read; with every replica
//! gone the cache answers 503 with Retry-After, and recovers when a store returns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use haystack_cache::Admission;

use crate::common::{bytes, error_code, get, hdr, needle_url, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dying_mid_load_fails_no_read() {
    // Nothing is kept, so every read goes to a store.
    let mut env = Env::single(|c| c.admission = Admission::None).await;
    let mut photos = Vec::new();
    for i in 0..8 {
        let data = bytes(20_000 + i * 100, 80 + i as u64);
        let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
        photos.push((needle_url(&env.cache().url, &p, 0), data));
    }
    let photos = Arc::new(photos);
    let done = Arc::new(AtomicUsize::new(0));
    const READERS: usize = 4;
    const READS: usize = 150;
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (http, photos, done) = (env.http.clone(), photos.clone(), done.clone());
            tokio::spawn(async move {
                for i in 0..READS {
                    let (url, data) = &photos[(r + i) % photos.len()];
                    let (st, _, body) = get(&http, url, &[]).await;
                    assert_eq!(
                        st,
                        200,
                        "read {i} of reader {r}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    assert!(body == *data, "read {i} of reader {r}: wrong bytes");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Stop a store once the load is under way (bounded wait: the readers finish regardless).
    for _ in 0..200 {
        if done.load(Ordering::Relaxed) >= READERS * READS / 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let at_stop = done.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| env.cluster.stop_store(0));
    for r in readers {
        r.await.expect("reader");
    }
    // The store is down for sure now: reads go on (and, had the load ended before the store
    // stopped, these are the reads that meet it).
    for i in 0..50 {
        let (url, data) = &photos[i % photos.len()];
        let (st, _, body) = get(&env.http, url, &[]).await;
        assert_eq!(st, 200, "read {i} after the stop");
        assert!(body == *data, "read {i} after the stop: wrong bytes");
    }
    let s = env.cache().stats().await;
    assert_eq!(s.misses, (READERS * READS + 50) as u64, "{s:?}");
    assert_eq!(s.store_reads + s.coalesced, s.misses, "{s:?}");
    assert!(
        s.store_failovers > 0,
        "no read met the stopped store ({at_stop} of {} reads done when it stopped): {s:?}",
        READERS * READS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_down_is_503_with_retry_after() {
    let mut env = Env::single(|c| c.admission = Admission::None).await;
    let data = bytes(5000, 90);
    let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
    let url = needle_url(&env.cache().url, &p, 0);
    let (st, _, _) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    tokio::task::block_in_place(|| {
        env.cluster.stop_store(0);
        env.cluster.stop_store(1);
    });
    let (st, h, body) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 503);
    assert_eq!(error_code(&body), "store_unavailable");
    assert_eq!(hdr(&h, "retry-after"), "1");
    assert_eq!(hdr(&h, "cache-control"), "no-store");
    // A store comes back on its port: reads work again.
    tokio::task::block_in_place(|| env.cluster.start_store(1));
    let mut ok = false;
    for _ in 0..50 {
        let (st, _, body) = get(&env.http, &url, &[]).await;
        if st == 200 {
            assert!(body == data);
            ok = true;
            break;
        }
        assert_eq!(st, 503);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "reads did not recover after the store came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_directory_and_nothing_known_is_503() {
    // A directory URL where nothing listens (bound, then closed).
    let dead = {
        let l = haystack_testkit::bind_loopback();
        format!("http://{}", l.local_addr().unwrap())
    };
    let node = crate::common::CacheNode::start(
        haystack_testkit::bind_loopback(),
        crate::common::test_config(&dead),
    );
    crate::common::wait_healthy(&node.url).await;
    let http = reqwest::Client::new();
    for path in ["/v1/needles/1/2/0/abc", "/v1/videos/1/2/abc"] {
        let (st, h, body) = get(&http, &format!("{}{path}", node.url), &[]).await;
        assert_eq!(st, 503, "{path}");
        assert_eq!(error_code(&body), "directory_unavailable", "{path}");
        assert_eq!(hdr(&h, "retry-after"), "1", "{path}");
    }
}

/// The directory unreachable (its host cut off from the cache; the stores still reachable):
/// what a store has is served, for availability, but the photo may have been deleted while
/// that store was down, so the answer must not be cacheable for a year and the needle is not
/// kept. The same holds for a stale hit whose recheck cannot be answered. Before, both were
/// served `public, max-age=31536000, immutable` and the miss was admitted into memory (the
/// second GET a hit): a CDN would have kept a possibly deleted photo for a year.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_whose_liveness_is_unknown_is_served_short_lived_and_not_kept() {
    use crate::common::{wait_healthy, CacheNode, Relay};
    let env = Env::start(
        haystack_testkit::ClusterOptions {
            min_writable_volumes: 1,
            ..Default::default()
        },
        1,
        |_, _| {},
    )
    .await;
    let mut relay = Relay::start(&env.cluster.directory_url()).await;
    let mut cfg = env.node_config();
    cfg.directory_url = Some(relay.url.clone());
    // The volume's replicas stay known through the outage; hits are rechecked quickly.
    cfg.directory_info_ttl_ms = 600_000;
    cfg.recheck_hits_after_ms = 300;
    let node = CacheNode::start(haystack_testkit::bind_loopback(), cfg);
    wait_healthy(&node.url).await;
    let a_data = bytes(3000, 91);
    let a = env.put_photo(&[(0, a_data.clone(), "image/jpeg")]).await;
    // Photo b in a's volume, so that reading a teaches the node where b's needles are.
    let b_data = bytes(4000, 92);
    let mut b = env.put_photo(&[(0, b_data.clone(), "image/jpeg")]).await;
    for _ in 0..20 {
        if b.volume_id == a.volume_id {
            break;
        }
        b = env.put_photo(&[(0, b_data.clone(), "image/jpeg")]).await;
    }
    assert_eq!(b.volume_id, a.volume_id, "no photo landed in a's volume");
    let (a_url, b_url) = (needle_url(&node.url, &a, 0), needle_url(&node.url, &b, 0));
    // Liveness confirmed: cacheable for good, and kept.
    let (st, h, _) = get(&env.http, &a_url, &[]).await;
    assert_eq!(st, 200);
    assert_eq!(
        hdr(&h, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let (st, _, _) = get(&env.http, &a_url, &[]).await;
    assert_eq!(st, 200);
    assert_eq!(node.stats().await.hits, 1);

    relay.cut().await;
    // Misses whose liveness cannot be learnt: served, short-lived, not kept.
    let before = node.stats().await;
    for i in 0..2 {
        let (st, h, body) = get(&env.http, &b_url, &[]).await;
        assert_eq!(st, 200, "read {i}: {}", String::from_utf8_lossy(&body));
        assert!(body == b_data, "read {i}: wrong bytes");
        let cc = hdr(&h, "cache-control");
        assert_eq!(cc, "public, max-age=60", "read {i}");
        let etag = hdr(&h, "etag").to_string();
        assert!(!etag.is_empty());
        // A revalidation says the same.
        let (st, h, _) = get(&env.http, &b_url, &[("if-none-match", &etag)]).await;
        assert_eq!(st, 304, "read {i}");
        assert_eq!(hdr(&h, "cache-control"), "public, max-age=60", "read {i}");
    }
    let s = node.stats().await;
    assert_eq!(
        s.hits, before.hits,
        "a needle of unknown liveness was kept: {s:?}"
    );
    assert_eq!(s.store_reads - before.store_reads, 4, "{s:?}");
    assert_eq!(s.admitted, before.admitted, "{s:?}");
    assert_eq!(s.not_admitted - before.not_admitted, 4, "{s:?}");
    assert_eq!(s.entries, before.entries, "{s:?}");

    // A stale hit whose recheck cannot be answered: served from memory, short-lived too.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (st, h, body) = get(&env.http, &a_url, &[]).await;
    assert_eq!(st, 200);
    assert!(body == a_data);
    assert_eq!(hdr(&h, "cache-control"), "public, max-age=60");
    let s = node.stats().await;
    assert_eq!(s.hits, before.hits + 1, "{s:?}");
}
