//! Video uploads: the body streamed in chunks to every replica, committed with the chunk list,
//! read back by concatenating the chunks.

use bytes::Bytes;
use haystack_proto::directory::PhotoKind;
use haystack_uploader::service::VideoResponse;
use serde_json::Value;

use crate::common::*;

/// Deterministic pseudo-random bytes (so a misplaced chunk cannot go unnoticed).
fn video_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_video_is_chunked_on_every_replica() {
    let h = Harness::start().await;
    // 5.5 chunks of 1 MiB, sent chunked (no Content-Length) in odd-sized pieces.
    let data = video_bytes((11 << 20) / 2 + 12345);
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(300_001)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = h
        .http
        .post(format!("{}/v1/videos", h.url))
        .header("content-type", "video/mp4")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let v: VideoResponse = resp.json().await.unwrap();
    assert_eq!(v.kind, PhotoKind::Video);
    assert_eq!(v.bytes, data.len() as u64);
    assert_eq!(v.chunks, 6);
    assert_eq!(v.content_type, "video/mp4");
    let info = h.lookup(&v.id.to_string()).await;
    assert_eq!(info.kind, PhotoKind::Video);
    assert_eq!(
        v.url,
        format!(
            "{}/v1/videos/{}/{}/{}",
            info.replicas
                .iter()
                .map(|r| r.url.clone())
                .find(|u| info.chunks[0].url.starts_with(u.as_str()))
                .expect("read URLs point at a replica here (no cache in this cluster)"),
            info.volume_id,
            info.id,
            haystack_proto::format_cookie(info.cookie)
        )
    );
    let mut offset = 0;
    for (i, c) in info.chunks.iter().enumerate() {
        assert_eq!(c.alt, i as u32 + 1, "chunks are alternate keys 1, 2, ...");
        assert_eq!(c.offset, offset);
        offset += c.size_bytes;
    }
    for r in &info.replicas {
        let mut whole = Vec::new();
        for c in &info.chunks {
            let (status, bytes) = h.read_needle(&r.url, &info, c.alt).await;
            assert_eq!(status, 200);
            assert_eq!(bytes.len() as u64, c.size_bytes);
            whole.extend_from_slice(&bytes);
        }
        assert!(
            whole == data,
            "the chunks on {} concatenate to the video",
            r.url
        );
    }
    // GET through the uploader describes the video.
    let got: VideoResponse = h
        .http
        .get(format!("{}/v1/photos/{}", h.url, v.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_limits_and_idempotency() {
    let h = Harness::start_with(Default::default(), |c| c.max_video_bytes = 3 << 20).await;
    // Over the limit by Content-Length.
    let resp = h
        .http
        .post(format!("{}/v1/videos", h.url))
        .header("content-type", "video/mp4")
        .body(video_bytes((3 << 20) + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    // Over the limit while streaming (no Content-Length).
    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..8)
        .map(|_| Ok(Bytes::from(video_bytes(512 << 10))))
        .collect();
    let resp = h
        .http
        .post(format!("{}/v1/videos", h.url))
        .header("content-type", "video/webm")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status().as_u16(), 413);
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"], "too_large");
    }
    // Exactly one chunk, with an Idempotency-Key, twice: one video.
    let data = video_bytes(1 << 20);
    let post = || {
        h.http
            .post(format!("{}/v1/videos", h.url))
            .header("content-type", "video/mp4")
            .header("idempotency-key", "cam-7/clip-1")
            .body(data.clone())
            .send()
    };
    let a = post().await.unwrap();
    assert_eq!(a.status().as_u16(), 201);
    let a: VideoResponse = a.json().await.unwrap();
    assert_eq!(a.chunks, 1);
    let b = post().await.unwrap();
    assert_eq!(b.status().as_u16(), 201);
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    let b: VideoResponse = b.json().await.unwrap();
    assert_eq!(a.id, b.id);
}

/// A client that sends slower than `store_timeout_ms` per chunk: each chunk's write goes on
/// while the next is read, in a task of its own. Before, the writes were futures that only
/// moved while the uploader waited for a slot, so a write started then and left while the body
/// paused timed out on its next poll, though the stores had answered (503 `write_failed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_writes_go_on_while_a_slow_body_is_read() {
    let h = Harness::start_with(Default::default(), |c| {
        c.store_timeout_ms = 1_000;
        c.video_chunk_bytes = 4096;
        c.video_chunks_in_flight = 2;
    })
    .await;
    // Two chunks and a bit, a pause, one more chunk's worth, a pause, the end: the third
    // chunk waits for a slot (both writes start, one finishes), then the body pauses past the
    // store timeout with the other write in flight.
    let data = video_bytes(3 * 4096 + 600);
    let pieces = vec![
        Bytes::copy_from_slice(&data[..2 * 4096 + 100]),
        Bytes::copy_from_slice(&data[2 * 4096 + 100..3 * 4096 + 100]),
        Bytes::copy_from_slice(&data[3 * 4096 + 100..]),
    ];
    let body = futures_util::stream::unfold((pieces, 0usize), |(pieces, i)| async move {
        let piece = pieces.get(i)?.clone();
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        }
        Some((Ok::<_, std::io::Error>(piece), (pieces, i + 1)))
    });
    let resp = h
        .http
        .post(format!("{}/v1/videos", h.url))
        .header("content-type", "video/mp4")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 201, "{text}");
    let v: VideoResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(v.bytes, data.len() as u64);
    assert_eq!(v.chunks, 4);
    let info = h.lookup(&v.id.to_string()).await;
    for r in &info.replicas {
        let mut whole = Vec::new();
        for c in &info.chunks {
            let (status, bytes) = h.read_needle(&r.url, &info, c.alt).await;
            assert_eq!(status, 200);
            whole.extend_from_slice(&bytes);
        }
        assert!(whole == data, "the chunks on {} are the video", r.url);
    }
}
