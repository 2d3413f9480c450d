//! Several cache nodes: each photo is kept by the node that owns it on the ring; the others
//! forward to it (one hop), and serve it themselves when it is unreachable.

use haystack_cache::ring::{Ring, VNODES};

use crate::common::{bytes, get, hdr, needle_url, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_forwarded_to_the_owner() {
    let mut env = Env::start(Default::default(), 2, |_, _| {}).await;
    let urls: Vec<String> = env.caches.iter().map(|c| c.url.clone()).collect();
    let ring = Ring::new(&urls, VNODES);
    let data = bytes(6000, 110);
    let p = env.put_photo(&[(0, data.clone(), "image/gif")]).await;
    let owner = ring.owner(p.volume_id, p.id);
    let other = 1 - owner;

    let url = needle_url(&urls[other], &p, 0);
    let (st, h, body) = get(&env.http, &url, &[]).await;
    assert_eq!((st, body.as_slice()), (200, data.as_slice()));
    assert_eq!(hdr(&h, "content-type"), "image/gif");
    assert_eq!(
        hdr(&h, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let etag = hdr(&h, "etag").to_string();
    let (st, h, body) = get(&env.http, &url, &[("range", "bytes=100-199")]).await;
    assert_eq!((st, hdr(&h, "content-range")), (206, "bytes 100-199/6000"));
    assert_eq!(body, &data[100..200]);
    let (st, _, _) = get(&env.http, &url, &[("if-none-match", &etag)]).await;
    assert_eq!(st, 304);
    let r = env.http.head(&url).send().await.unwrap();
    assert_eq!(hdr(r.headers(), "content-length"), "6000");

    let so = env.caches[owner].stats().await;
    let sx = env.caches[other].stats().await;
    assert_eq!((so.store_reads, so.entries), (1, 1), "owner {so:?}");
    assert_eq!(
        (sx.store_reads, sx.entries, sx.forwarded),
        (0, 0, 4),
        "other {sx:?}"
    );

    // A CDN request forwarded keeps its CDN mark: the owner does not keep it.
    let q = env.put_photo(&[(0, bytes(100, 111), "image/gif")]).await;
    let q_owner = ring.owner(q.volume_id, q.id);
    let (st, _, _) = get(
        &env.http,
        &needle_url(&urls[1 - q_owner], &q, 0),
        &[("via", "1.1 cdn")],
    )
    .await;
    assert_eq!(st, 200);
    let s = env.caches[q_owner].stats().await;
    assert!(s.not_admitted >= 1, "{s:?}");

    // The owner is gone: the other node serves by itself.
    let before = env.caches[other].stats().await;
    env.caches[owner].stop();
    let (st, _, body) = get(&env.http, &url, &[]).await;
    assert_eq!((st, body.as_slice()), (200, data.as_slice()));
    let sx = env.caches[other].stats().await;
    assert_eq!(sx.forward_failures, before.forward_failures + 1, "{sx:?}");
    assert_eq!(sx.store_reads, before.store_reads + 1, "{sx:?}");
}

/// A body relayed from the owning peer is not cut at `peer_timeout_ms`: that bounds the wait
/// for the peer's answer, not how long a slow client takes to read the body. Before, the
/// timeout was reqwest's total one, which covers the body too: a relay outliving it was cut
/// short after a full Content-Length had been promised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_the_whole_body_relayed_from_the_owner() {
    use crate::common::video_url;
    let env = Env::start(Default::default(), 2, |_, c| {
        c.peer_timeout_ms = 300;
        c.store_timeout_ms = 300;
    })
    .await;
    let urls: Vec<String> = env.caches.iter().map(|c| c.url.clone()).collect();
    let ring = Ring::new(&urls, VNODES);
    let chunks: Vec<Vec<u8>> = (0..16).map(|i| bytes(1 << 20, 40 + i)).collect();
    let whole = chunks.concat();
    let v = env.put_video(&chunks, "video/mp4").await;
    let other = 1 - ring.owner(v.volume_id, v.id);
    let mut r = env
        .http
        .get(video_url(&urls[other], &v))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = Vec::with_capacity(whole.len());
    let mut pauses = 0;
    while let Some(c) = r.chunk().await.expect("the relayed body is not cut short") {
        got.extend_from_slice(&c);
        // A slow reader for a while (well past the peer timeout), then a fast one.
        if pauses < 12 {
            pauses += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert_eq!(got.len(), whole.len());
    assert!(got == whole, "the relayed video differs");
}
