//! Directory answers lost on the way back: the S3 role asked for a write, the directory did
//! it, and the answer never arrived. The PUT fails (500), but nothing the directory may have
//! written is undone: the object is whole afterwards, never a record naming deleted bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use haystack_testkit::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::Harness;

/// Where a head ends and the value of its `content-length` (0 without one).
fn head_of(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "the proxy relays bodies of a declared length only: {head}"
    );
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("content-length"));
    Some((end, len))
}

/// Reads one request or response (head and body) from `s`; None at a clean end.
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some((end, len)) = head_of(buf) {
            while buf.len() < end + len {
                let mut chunk = [0u8; 65536];
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf.drain(..end + len).collect());
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A proxy in front of the directory at `upstream`: each request goes on over a connection of
/// its own and its answer comes back, except that while `armed` is set the first request whose
/// head starts with `PUT /v1/kv/` is done by the directory and its answer dropped (the
/// connection closed). With `old`, it answers 404 to `PUT /v1/kv/{space}/replace` as a
/// directory older than that route does. Counts the directory's answers not relayed (dropped,
/// or replaced by that 404).
async fn lossy_proxy(
    upstream: SocketAddr,
    armed: Arc<AtomicBool>,
    old: bool,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let dropped = Arc::new(AtomicUsize::new(0));
    let counted = dropped.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let armed = armed.clone();
            let dropped = counted.clone();
            tokio::spawn(async move {
                let mut from_client = Vec::new();
                while let Some(req) = read_message(&mut client, &mut from_client).await {
                    let line = String::from_utf8_lossy(&req[..req.len().min(200)]).to_string();
                    if old && line.starts_with("PUT /v1/kv/") && line.contains("/replace?") {
                        let body = r#"{"error":"not_found","message":"no such route"}"#;
                        let answer = format!(
                            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        dropped.fetch_add(1, Ordering::SeqCst);
                        if client.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let mut dir = TcpStream::connect(upstream).await.expect("directory");
                    dir.write_all(&req).await.expect("relay request");
                    let mut from_dir = Vec::new();
                    let answer = read_message(&mut dir, &mut from_dir)
                        .await
                        .expect("directory answer");
                    if req.starts_with(b"PUT /v1/kv/") && armed.swap(false, Ordering::SeqCst) {
                        dropped.fetch_add(1, Ordering::SeqCst);
                        return; // the answer is lost with the connection
                    }
                    if client.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, dropped)
}

/// A cluster, and the S3 role reaching its directory through [`lossy_proxy`] (`old`: as an
/// older directory); the proxy's switch and count of answers dropped.
async fn behind_proxy(old: bool) -> (Harness, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let cluster = Cluster::start(ClusterOptions {
        volume_bytes: 64 << 20,
        ..Default::default()
    })
    .await;
    let upstream: SocketAddr = cluster
        .directory_url()
        .trim_start_matches("http://")
        .parse()
        .expect("directory address");
    let armed = Arc::new(AtomicBool::new(false));
    let (proxy, dropped) = lossy_proxy(upstream, armed.clone(), old).await;
    (
        Harness::start_on(cluster, vec![proxy]).await,
        armed,
        dropped,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_record_answer_is_lost_leaves_the_object_whole() {
    // Regression: the S3 role deleted the new data after any failed record write, also when
    // the directory had written the record and only its answer was lost: the object then
    // named deleted bytes (GET 500) and its previous version was gone too.
    let (h, armed, dropped) = behind_proxy(false).await;
    let c = h.client();
    c.create_bucket("lossy").await;
    let v1: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let v2: Vec<u8> = (0..7000u32).map(|i| (i * 13 + 1) as u8).collect();
    let r = c.put("lossy", "photo.jpg", v1.clone()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    armed.store(true, Ordering::SeqCst);
    let r = c.put("lossy", "photo.jpg", v2.clone()).await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the record write's answer was lost"
    );
    assert_eq!(r.status(), 500, "no answer is no success");
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("<Code>InternalError</Code>"), "{body}");

    // The directory wrote the record: the object is the new bytes, whole.
    let r = c.get("lossy", "photo.jpg").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(r.bytes().await.expect("body").as_ref(), v2.as_slice());

    // And the next PUT replaces it as usual.
    let r = c.put("lossy", "photo.jpg", v1.clone()).await;
    assert_eq!(r.status(), 200);
    let r = c.get("lossy", "photo.jpg").await;
    assert_eq!(r.bytes().await.expect("body").as_ref(), v1.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_go_on_through_a_directory_without_the_one_request_write() {
    // A rolling upgrade: S3 roles of this version in front of an older directory (no
    // `PUT /v1/kv/{space}/replace`) commit and write the record in two steps, as before.
    let (h, _, refused) = behind_proxy(true).await;
    let c = h.client();
    c.create_bucket("older").await;
    for round in 0..3u8 {
        let body: Vec<u8> = (0..4000u32).map(|i| (i as u8) ^ round).collect();
        let r = c.put("older", "k", body.clone()).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let r = c.get("older", "k").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.expect("body").as_ref(), body.as_slice());
    }
    assert!(
        refused.load(Ordering::SeqCst) >= 3,
        "each PUT tried the one-request write first"
    );
}
