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
