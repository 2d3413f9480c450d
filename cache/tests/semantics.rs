//! Hits and misses and the HTTP semantics of a needle: ETag and If-None-Match, ranges, HEAD,
//! headers, wrong cookies and bad URLs.

use crate::common::{bytes, error_code, get, hdr, needle_url, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_with_the_stores_headers() {
    let env = Env::single(|_| {}).await;
    let data = bytes(10_000, 1);
    let p = env
        .put_photo(&[
            (0, data.clone(), "image/jpeg"),
            (4, bytes(500, 2), "image/webp"),
        ])
        .await;
    let url = needle_url(&env.cache().url, &p, 0);

    let (st, h, body) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    assert_eq!(body, data);
    assert_eq!(hdr(&h, "content-type"), "image/jpeg");
    assert_eq!(hdr(&h, "content-length"), "10000");
    assert_eq!(hdr(&h, "accept-ranges"), "bytes");
    assert_eq!(
        hdr(&h, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let etag = hdr(&h, "etag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag:?}");
    let s = env.cache().stats().await;
    assert_eq!((s.hits, s.misses, s.store_reads, s.admitted), (0, 1, 1, 1));

    // The same answer from memory, and the store's own ETag.
    let (st, h2, body) = get(&env.http, &url, &[]).await;
    assert_eq!((st, body), (200, data.clone()));
    assert_eq!(hdr(&h2, "etag"), etag);
    let store = needle_url(&env.cluster.store_url(0), &p, 0);
    let (_, hs, _) = get(&env.http, &store, &[]).await;
    assert_eq!(hdr(&hs, "etag"), etag);
    let s = env.cache().stats().await;
    assert_eq!((s.hits, s.misses, s.store_reads), (1, 1, 1));
    assert_eq!(s.entries, 1);

    // Another variant is another needle.
    let (st, h, body) = get(&env.http, &needle_url(&env.cache().url, &p, 4), &[]).await;
    assert_eq!((st, body.len()), (200, 500));
    assert_eq!(hdr(&h, "content-type"), "image/webp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_ranges_and_head() {
    let env = Env::single(|_| {}).await;
    let data = bytes(1000, 3);
    let p = env.put_photo(&[(0, data.clone(), "image/png")]).await;
    let url = needle_url(&env.cache().url, &p, 0);
    // HEAD on a miss: headers, no body.
    let r = env.http.head(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(hdr(r.headers(), "content-length"), "1000");
    assert_eq!(hdr(r.headers(), "content-type"), "image/png");
    let etag = hdr(r.headers(), "etag").to_string();
    assert!(!etag.is_empty());
    assert!(r.bytes().await.unwrap().is_empty());

    for cached in [false, true] {
        let _ = cached;
        // If-None-Match.
        let (st, h, body) = get(&env.http, &url, &[("if-none-match", &etag)]).await;
        assert_eq!(st, 304);
        assert_eq!(hdr(&h, "etag"), etag);
        assert!(body.is_empty());
        let (st, _, _) = get(&env.http, &url, &[("if-none-match", "\"other\"")]).await;
        assert_eq!(st, 200);
        let (st, _, _) = get(
            &env.http,
            &url,
            &[("if-none-match", &format!("\"x\", W/{etag}"))],
        )
        .await;
        assert_eq!(st, 304);
        // Ranges.
        let (st, h, body) = get(&env.http, &url, &[("range", "bytes=10-19")]).await;
        assert_eq!(st, 206);
        assert_eq!(hdr(&h, "content-range"), "bytes 10-19/1000");
        assert_eq!(hdr(&h, "content-length"), "10");
        assert_eq!(hdr(&h, "etag"), etag);
        assert_eq!(body, &data[10..20]);
        let (st, h, body) = get(&env.http, &url, &[("range", "bytes=-100")]).await;
        assert_eq!((st, hdr(&h, "content-range")), (206, "bytes 900-999/1000"));
        assert_eq!(body, &data[900..]);
        let (st, _, body) = get(&env.http, &url, &[("range", "bytes=990-5000")]).await;
        assert_eq!((st, body.as_slice()), (206, &data[990..]));
        let (st, h, body) = get(&env.http, &url, &[("range", "bytes=1000-")]).await;
        assert_eq!(st, 416);
        assert_eq!(hdr(&h, "content-range"), "bytes */1000");
        assert_eq!(error_code(&body), "range_not_satisfiable");
        // Several ranges: the whole body (RFC 9110 lets a server ignore them).
        let (st, _, body) = get(&env.http, &url, &[("range", "bytes=0-1,5-6")]).await;
        assert_eq!((st, body.len()), (200, 1000));
        // HEAD from memory.
        let r = env.http.head(&url).send().await.unwrap();
        assert_eq!(hdr(r.headers(), "content-length"), "1000");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cookie_is_404_cached_or_not() {
    let env = Env::single(|_| {}).await;
    let p = env.put_photo(&[(0, bytes(100, 4), "image/jpeg")]).await;
    let mut wrong = p.clone();
    wrong.cookie ^= 1;
    let bad = needle_url(&env.cache().url, &wrong, 0);
    // Not cached yet: the store refuses the cookie.
    let (st, h, body) = get(&env.http, &bad, &[]).await;
    assert_eq!((st, error_code(&body).as_str()), (404, "not_found"));
    assert_eq!(hdr(&h, "cache-control"), "no-store");
    // Cached under the right cookie: still 404 for the wrong one.
    let (st, _, _) = get(&env.http, &needle_url(&env.cache().url, &p, 0), &[]).await;
    assert_eq!(st, 200);
    let (st, _, body) = get(&env.http, &bad, &[]).await;
    assert_eq!((st, error_code(&body).as_str()), (404, "not_found"));
    let r = env.http.head(&bad).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Missing alternate key, missing photo.
    let (st, _, _) = get(&env.http, &needle_url(&env.cache().url, &p, 9), &[]).await;
    assert_eq!(st, 404);
    let mut other = p.clone();
    other.id += 1;
    let (st, _, _) = get(&env.http, &needle_url(&env.cache().url, &other, 0), &[]).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unknown_volumes() {
    let env = Env::single(|_| {}).await;
    let base = &env.cache().url;
    for path in [
        "/v1/needles/1/2/3",
        "/v1/needles/1/2/3/abc/extra",
        "/v1/needles/x/2/3/abc",
        "/v1/needles/1/y/3/abc",
        "/v1/needles/1/2/z/abc",
        "/v1/needles/1/2/3/nothex",
        "/v1/needles/1/2/3/00000000000000000",
        "/v1/needles/99999999999/2/3/abc",
        "/v1/videos/1/2",
        "/v1/videos/1/x/abc",
    ] {
        let (st, h, body) = get(&env.http, &format!("{base}{path}"), &[]).await;
        assert_eq!(st, 400, "{path}");
        assert_eq!(error_code(&body), "bad_request", "{path}");
        assert!(
            hdr(&h, "content-type").starts_with("application/json"),
            "{path}"
        );
    }
    let (st, _, body) = get(
        &env.http,
        &format!("{base}/v1/needles/4000000/1/0/abc"),
        &[],
    )
    .await;
    assert_eq!((st, error_code(&body).as_str()), (404, "no_such_volume"));
    let (st, _, body) = get(&env.http, &format!("{base}/nope"), &[]).await;
    assert_eq!((st, error_code(&body).as_str()), (404, "no_such_route"));
    let r = env
        .http
        .post(format!("{base}/v1/needles/1/2/3/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = env
        .http
        .post(format!("{base}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // /health and /metrics answer.
    let (st, _, body) = get(&env.http, &format!("{base}/health"), &[]).await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "ok");
    let (st, _, _) = get(&env.http, &format!("{base}/metrics"), &[]).await;
    assert_eq!(st, 200);
}

/// A Range header on a HEAD is ignored (RFC 9110 §14.2: Range applies to GET only), as the
/// store does: the HEAD describes the whole photo or video, 200 with its full length, for a hit,
/// a miss and a video alike. Before, the cache answered 206 with the range's length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_ignores_range() {
    use crate::common::video_url;
    let env = Env::single(|_| {}).await;
    let data = bytes(5_000, 71);
    let p = env.put_photo(&[(0, data, "image/jpeg")]).await;
    let v = env
        .put_video(&[bytes(3_000, 72), bytes(2_000, 73)], "video/mp4")
        .await;
    for (url, len) in [
        (needle_url(&env.cache().url, &p, 0), "5000"),
        (needle_url(&env.cache().url, &p, 0), "5000"),
        (video_url(&env.cache().url, &v), "5000"),
    ] {
        let r = env
            .http
            .head(&url)
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(hdr(r.headers(), "content-length"), len, "{url}");
        assert!(r.headers().get("content-range").is_none(), "{url}");
    }
}
