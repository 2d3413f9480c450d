//! Videos through the cache: the whole video with one Content-Length, ranges within and across
//! chunks, 416, 304, HEAD, and only the chunks a range needs are read.

use crate::common::{bytes, error_code, get, hdr, video_url, Env};

fn video_chunks() -> Vec<Vec<u8>> {
    vec![bytes(300_000, 11), bytes(300_000, 12), bytes(123_457, 13)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_video_and_ranges_across_chunks() {
    let env = Env::single(|_| {}).await;
    let chunks = video_chunks();
    let whole: Vec<u8> = chunks.concat();
    let len = whole.len();
    let v = env.put_video(&chunks, "video/mp4").await;
    let url = video_url(&env.cache().url, &v);

    // A range inside the last chunk reads that chunk only.
    let (st, h, body) = get(&env.http, &url, &[("range", "bytes=600000-600099")]).await;
    assert_eq!(st, 206);
    assert_eq!(
        hdr(&h, "content-range"),
        format!("bytes 600000-600099/{len}")
    );
    assert_eq!(body, &whole[600_000..600_100]);
    assert_eq!(env.cache().stats().await.store_reads, 1);

    let (st, h, body) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    assert_eq!(hdr(&h, "content-length"), len.to_string());
    assert_eq!(hdr(&h, "content-type"), "video/mp4");
    assert_eq!(hdr(&h, "accept-ranges"), "bytes");
    assert_eq!(
        hdr(&h, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert!(body == whole, "whole video differs");
    let etag = hdr(&h, "etag").to_string();
    assert!(!etag.is_empty());

    for (range, a, b) in [
        ("bytes=299990-300009", 299_990usize, 300_009usize),
        ("bytes=0-0", 0, 0),
        ("bytes=299999-600000", 299_999, 600_000),
        ("bytes=1-723456", 1, len - 1),
        ("bytes=600000-", 600_000, len - 1),
        ("bytes=-10", len - 10, len - 1),
        ("bytes=100-99999999", 100, len - 1),
    ] {
        let (st, h, body) = get(&env.http, &url, &[("range", range)]).await;
        assert_eq!(st, 206, "{range}");
        assert_eq!(
            hdr(&h, "content-range"),
            format!("bytes {a}-{b}/{len}"),
            "{range}"
        );
        assert_eq!(
            hdr(&h, "content-length"),
            (b - a + 1).to_string(),
            "{range}"
        );
        assert!(body == whole[a..=b], "{range}: wrong bytes");
    }
    let (st, h, body) = get(&env.http, &url, &[("range", &format!("bytes={len}-"))]).await;
    assert_eq!(st, 416);
    assert_eq!(hdr(&h, "content-range"), format!("bytes */{len}"));
    assert_eq!(error_code(&body), "range_not_satisfiable");

    let (st, _, body) = get(&env.http, &url, &[("if-none-match", &etag)]).await;
    assert_eq!((st, body.len()), (304, 0));

    let r = env.http.head(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(hdr(r.headers(), "content-length"), len.to_string());
    assert_eq!(hdr(r.headers(), "etag"), etag);
    let r = env
        .http
        .head(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    // Range applies to GET only (RFC 9110 §14.2): a HEAD describes the whole video.
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(hdr(r.headers(), "content-length"), len.to_string());

    // Every chunk was read from a store once, then kept.
    let s = env.cache().stats().await;
    assert_eq!(s.store_reads, 3, "{s:?}");
    assert_eq!(
        s.directory_requests, 2,
        "one chunk list and one volume: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cookie_volume_or_kind_is_404() {
    let env = Env::single(|_| {}).await;
    let v = env
        .put_video(&[bytes(1000, 21), bytes(10, 22)], "video/webm")
        .await;
    let base = &env.cache().url;
    let mut bad = v.clone();
    bad.cookie ^= 0x10;
    let (st, _, body) = get(&env.http, &video_url(base, &bad), &[]).await;
    assert_eq!((st, error_code(&body).as_str()), (404, "not_found"));
    let mut bad = v.clone();
    bad.volume_id += 1;
    let (st, _, _) = get(&env.http, &video_url(base, &bad), &[]).await;
    assert_eq!(st, 404);
    let mut bad = v.clone();
    bad.id += 12345;
    let (st, _, _) = get(&env.http, &video_url(base, &bad), &[]).await;
    assert_eq!(st, 404);
    // A photo is not a video.
    let p = env.put_photo(&[(0, bytes(10, 23), "image/jpeg")]).await;
    let (st, _, _) = get(&env.http, &video_url(base, &p), &[]).await;
    assert_eq!(st, 404);
    // The right URL works, and its chunks are needles of their own.
    let (st, _, body) = get(&env.http, &video_url(base, &v), &[]).await;
    assert_eq!((st, body.len()), (200, 1010));
    let r = env.http.post(video_url(base, &v)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

/// A video whose chunk list holds an empty chunk (the directory takes one; the uploader never
/// writes one) is served whole and by ranges around it. Before, the stream's range arithmetic
/// underflowed on it (`offset + size - 1`) and the worker panicked mid-answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_chunk_in_the_list_is_served_as_nothing() {
    let env = Env::single(|_| {}).await;
    let chunks = vec![bytes(1_000, 21), Vec::new(), bytes(1_000, 22)];
    let whole: Vec<u8> = chunks.concat();
    let v = env.put_video(&chunks, "video/mp4").await;
    let url = video_url(&env.cache().url, &v);
    let (st, _, body) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    assert!(body == whole, "whole video differs");
    for (range, a, b) in [
        ("bytes=990-1009", 990usize, 1009usize),
        ("bytes=0-999", 0, 999),
    ] {
        let (st, _, body) = get(&env.http, &url, &[("range", range)]).await;
        assert_eq!(st, 206, "{range}");
        assert_eq!(body, &whole[a..=b], "{range}");
    }
}
