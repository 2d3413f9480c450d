//! Deletes: once the directory's DELETE returns, no cache node serves the photo or video,
//! whichever node had it and however it got there.

use crate::common::{bytes, get, needle_url, video_url, Env};
use haystack_proto::directory::PhotoInfo;

const HOP: &str = "x-haystack-cache-hop";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_purges_every_node() {
    // Three nodes in a ring; the directory knows only the first, which fans the purge out.
    let env = Env::start(Default::default(), 3, |_, _| {}).await;
    let p = env
        .put_photo(&[
            (0, bytes(3000, 100), "image/jpeg"),
            (4, bytes(300, 101), "image/jpeg"),
        ])
        .await;
    let v = env
        .put_video(&[bytes(5000, 102), bytes(700, 103)], "video/mp4")
        .await;
    // Every node holds both variants and the video: the owner through forwarding, the others
    // because a peer's hop header makes them serve (and keep) it themselves.
    for n in &env.caches {
        for alt in [0, 4] {
            let (st, _, _) = get(&env.http, &needle_url(&n.url, &p, alt), &[]).await;
            assert_eq!(st, 200);
            let (st, _, _) = get(&env.http, &needle_url(&n.url, &p, alt), &[(HOP, "user")]).await;
            assert_eq!(st, 200);
        }
        let (st, _, _) = get(&env.http, &video_url(&n.url, &v), &[(HOP, "user")]).await;
        assert_eq!(st, 200);
    }
    for n in &env.caches {
        assert!(n.stats().await.entries >= 4, "{}", n.url);
    }
    for id in [p.id, v.id] {
        let d = env.dir.delete(id).await.expect("delete");
        assert_eq!(d.cache_purges_failed, 0, "{d:?}");
        assert!(d.cache_purges_ok >= 1, "{d:?}");
    }
    for n in &env.caches {
        for hop in [None, Some("user")] {
            let h: Vec<(&str, &str)> = hop.map(|v| (HOP, v)).into_iter().collect();
            for alt in [0, 4] {
                let (st, _, _) = get(&env.http, &needle_url(&n.url, &p, alt), &h).await;
                assert_eq!(st, 404, "{} alt {alt} hop {hop:?}", n.url);
            }
            let (st, _, _) = get(&env.http, &video_url(&n.url, &v), &h).await;
            assert_eq!(st, 404, "video on {} hop {hop:?}", n.url);
        }
        let s = n.stats().await;
        assert_eq!(s.entries, 0, "{}: {s:?}", n.url);
        assert!(s.purges >= 2, "{}: {s:?}", n.url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_of_an_unknown_needle_is_204() {
    let env = Env::single(|_| {}).await;
    let r = env
        .http
        .delete(format!("{}/v1/needles/1/12345/0/abcdef", env.cache().url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = env
        .http
        .delete(format!("{}/v1/needles/1/x/0/abcdef", env.cache().url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_missed_the_delete_does_not_bring_the_photo_back() {
    use haystack_cache::Admission;
    // Nothing kept: every read is a miss that may go to either replica.
    // (With check_live_on_miss off, the first of these reads fails: checked when written.)
    let mut env = Env::single(|c| c.admission = Admission::None).await;
    let store0 = env.cluster.store_url(0);
    let p = env
        .put_photo_on(Some(&store0), &[(0, bytes(2000, 104), "image/jpeg")])
        .await;
    let url = needle_url(&env.cache().url, &p, 0);
    let (st, _, _) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    let d = env.dir.delete(p.id).await.expect("delete");
    assert_eq!(d.store_deletes_failed, 0, "{d:?}");
    // Store 1 holds a live copy of the deleted photo's needle anyway: the state a store that
    // missed the delete is in until the directory's retry (or anti-entropy) reaches it. (The
    // directory retries missed deletes within seconds now, so stopping the store during the
    // delete no longer leaves the orphan long enough to test; the needle is written there.)
    let orphan = write_orphan(&mut env, &p, bytes(2000, 104)).await;
    let (st, _, _) = get(&env.http, &orphan, &[]).await;
    assert_eq!(st, 200, "the test needs the orphan needle on store 1");
    // Many misses, each choosing a replica: none serves the deleted photo.
    for i in 0..40 {
        let (st, _, _) = get(&env.http, &url, &[]).await;
        assert_eq!(st, 404, "read {i} served a deleted photo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_liveness_lookups_and_still_refuse_deleted_photos() {
    use haystack_cache::Admission;
    // Every read a miss, every photo new to the cache: each miss needs the directory's word.
    let mut env = Env::single(|c| c.admission = Admission::None).await;
    let store0 = env.cluster.store_url(0);
    let mut photos = vec![
        env.put_photo_on(Some(&store0), &[(0, bytes(1500, 200), "image/jpeg")])
            .await,
    ];
    for i in 1..48u64 {
        photos.push(
            env.put_photo(&[(0, bytes(1500, 200 + i), "image/jpeg")])
                .await,
        );
    }
    // One of them (written to store 0 only) deleted, with its needle on store 1 (a store that missed the
    // delete, as in the test above).
    let dead = photos.remove(0);
    env.dir.delete(dead.id).await.expect("delete");
    write_orphan(&mut env, &dead, bytes(1500, 200)).await;
    // One read first, so that the volume's replicas are known and the burst below asks the
    // directory about liveness only.
    let warm = photos.remove(0);
    let (st, _, _) = get(&env.http, &needle_url(&env.cache().url, &warm, 0), &[]).await;
    assert_eq!(st, 200);
    let before = env.cache().stats().await.directory_requests;
    // Every photo read at once, the deleted one several times among them.
    let mut urls: Vec<(String, Option<Vec<u8>>)> = photos
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let want = bytes(1500, 202 + i as u64);
            (needle_url(&env.cache().url, p, 0), Some(want))
        })
        .collect();
    for at in [0, 10, 20, 30, 40] {
        urls.insert(at, (needle_url(&env.cache().url, &dead, 0), None));
    }
    let reads =
        futures_util::future::join_all(urls.iter().map(|(u, _)| get(&env.http, u, &[]))).await;
    for ((url, want), (st, _, body)) in urls.iter().zip(reads) {
        match want {
            Some(w) => {
                assert_eq!(st, 200, "{url}");
                assert!(body == *w, "{url}: wrong bytes");
            }
            None => assert_eq!(st, 404, "{url}: a deleted photo was served"),
        }
    }
    // Misses that came while a lookup was under way shared the next one: fewer requests to
    // the directory than photos (one lookup per photo before batching).
    let asked = env.cache().stats().await.directory_requests - before;
    let distinct = photos.len() as u64 + 1;
    assert!(
        asked < distinct,
        "{asked} directory requests for {distinct} photos missed at once"
    );
}

/// Writes deleted photo `p`'s needle on store 1, as a store that missed its delete would hold
/// it; returns the needle's URL on that store. The photo must have been written to store 0
/// only: store 1 refuses to write a needle it holds deleted for good, and one whose delete it
/// answered 404 until it restarts, so it is restarted first, once the directory's repair
/// queue is empty (the copy the write to store 0 alone queued for store 1 turns into that
/// delete when the worker reaches it: landing during the write below, it refused it, 410).
async fn write_orphan(env: &mut Env, p: &PhotoInfo, body: Vec<u8>) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !env.dir.repairs().await.expect("repairs").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the repair queue never emptied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    env.cluster.stop_store(1);
    env.cluster.start_store(1);
    let orphan = needle_url(&env.cluster.store_url(1), p, 0);
    let health = format!("{}/health", env.cluster.store_url(1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !env
        .http
        .get(&health)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "store 1 did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let put = env
        .http
        .put(&orphan)
        .header("content-type", "image/jpeg")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    orphan
}

/// A node the purge never reaches (here one the directory does not know and no peer fans out
/// to; in production a peer unreachable during the fan-out) stops serving a deleted photo once
/// its entry is older than `recheck_hits_after_ms`: the hit asks whether the photo is still
/// live, and drops it. Before, hits were never checked and such a node served the deleted
/// photo until the entry was evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_purge_missed_stops_serving_the_deleted_photo() {
    use haystack_cache::Admission;
    let env = Env::single(|_| {}).await;
    let mut cfg = env.node_config();
    cfg.admission = Admission::All;
    cfg.recheck_hits_after_ms = 300;
    cfg.directory_info_ttl_ms = 100;
    let lone = crate::common::CacheNode::start(haystack_testkit::bind_loopback(), cfg);
    crate::common::wait_healthy(&lone.url).await;
    let data = bytes(2500, 105);
    let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
    let url = needle_url(&lone.url, &p, 0);
    let (st, _, body) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    assert!(body == data);
    // A hit (kept, and younger than the recheck age).
    let (st, _, _) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    env.dir.delete(p.id).await.expect("delete");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (st, _, _) = get(&env.http, &url, &[]).await;
        if st == 404 {
            break;
        }
        assert_eq!(st, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the node the purge missed still serves the deleted photo"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // And it stays gone.
    let (st, _, _) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 404);
}

/// The stale-hit recheck asks the directory afresh: the per-photo liveness memory (kept
/// `directory_info_ttl_ms`) answers misses, not rechecks. Before, a recheck was satisfied by
/// the "live" answer the miss remembered just before the delete, so a node the purge missed
/// served the deleted photo for the whole TTL (here 10 minutes), not `recheck_hits_after_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_hit_recheck_is_not_answered_from_the_remembered_liveness() {
    use haystack_cache::Admission;
    let env = Env::single(|_| {}).await;
    let mut cfg = env.node_config();
    cfg.admission = Admission::All;
    cfg.recheck_hits_after_ms = 200;
    cfg.directory_info_ttl_ms = 600_000;
    // A node the directory does not know: no purge reaches it.
    let lone = crate::common::CacheNode::start(haystack_testkit::bind_loopback(), cfg);
    crate::common::wait_healthy(&lone.url).await;
    let data = bytes(2500, 106);
    let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
    let url = needle_url(&lone.url, &p, 0);
    // A miss: the photo's liveness is remembered (for 10 minutes), the needle kept.
    let (st, _, body) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    assert!(body == data);
    env.dir.delete(p.id).await.expect("delete");
    // Past the recheck age: the hit asks the directory, which says the photo is deleted.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (st, _, _) = get(&env.http, &url, &[]).await;
    assert_eq!(
        st, 404,
        "a recheck was answered by the liveness remembered before the delete"
    );
    let s = lone.stats().await;
    assert_eq!(s.entries, 0, "{s:?}");
    // And it stays gone (the next read is a miss, which must not trust the old answer either).
    let (st, _, _) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 404);
}
