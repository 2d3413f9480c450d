//! The store's HTTP API on loopback: needle round trips, conditional and range GETs, batch
//! PUT, volume admin, and bad input answered with JSON 4xx.

use haystack_proto::batch;
use haystack_store::volume::NeedleData;
use reqwest::StatusCode;

use crate::common::*;

/// A batch body of these needles.
fn encode_batch(ns: &[NeedleData]) -> Vec<u8> {
    batch::encode(ns.iter().map(|n| batch::Record {
        key: n.key,
        alt: n.alt,
        cookie: n.cookie,
        content_type: &n.content_type,
        data: &n.data,
    }))
}

async fn json_error(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    (status, v["error"].as_str().expect("error code").to_string())
}

#[test]
fn needle_round_trip_and_http_semantics() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let s = start_server(dir.path(), kind).await;
            let c = reqwest::Client::new();
            let r = c.post(s.url("/v1/volumes/1")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let (st, code) = json_error(c.post(s.url("/v1/volumes/1")).send().await.unwrap()).await;
            assert_eq!((st, code.as_str()), (StatusCode::CONFLICT, "volume_exists"));

            let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
            let u = s.url("/v1/needles/1/77/2/00000000deadbeef");
            let r = c
                .put(&u)
                .header("content-type", "image/png")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);

            let r = c.get(&u).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-type"], "image/png");
            assert_eq!(r.headers()["content-length"], "1000");
            let etag = r.headers()["etag"].to_str().unwrap().to_string();
            assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);

            // The cookie in short hex form is the same cookie; a wrong one is a 404.
            assert_eq!(
                c.get(s.url("/v1/needles/1/77/2/deadbeef"))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                StatusCode::OK
            );
            let (st, code) = json_error(
                c.get(s.url("/v1/needles/1/77/2/deadbeee"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!((st, code.as_str()), (StatusCode::NOT_FOUND, "not_found"));

            let r = c
                .get(&u)
                .header("if-none-match", &etag)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
            let r = c
                .get(&u)
                .header("if-none-match", "\"other\"")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);

            let r = c
                .get(&u)
                .header("range", "bytes=10-19")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            assert_eq!(r.headers()["content-range"], "bytes 10-19/1000");
            assert_eq!(r.bytes().await.unwrap().as_ref(), &body[10..20]);
            let r = c.get(&u).header("range", "bytes=-5").send().await.unwrap();
            assert_eq!(r.bytes().await.unwrap().as_ref(), &body[995..]);
            let r = c
                .get(&u)
                .header("range", "bytes=1000-")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
            assert_eq!(r.headers()["content-range"], "bytes */1000");

            let r = c.head(&u).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-length"], "1000");
            assert_eq!(r.headers()["content-type"], "image/png");

            let r = c.delete(&u).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            assert_eq!(
                c.get(&u).send().await.unwrap().status(),
                StatusCode::NOT_FOUND
            );
            assert_eq!(
                c.head(&u).send().await.unwrap().status(),
                StatusCode::NOT_FOUND
            );
            assert_eq!(
                c.delete(&u).send().await.unwrap().status(),
                StatusCode::NOT_FOUND
            );
            s.stop().await;
        });
    }
}

#[test]
fn batch_put_admin_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = start_server(dir.path(), ENGINES[0]).await;
        let c = reqwest::Client::new();
        c.post(s.url("/v1/volumes/9"))
            .json(&serde_json::json!({"max_bytes": 2 << 20}))
            .send()
            .await
            .unwrap();
        let ns: Vec<_> = (0..4)
            .map(|a| needle(5, a, 0xabc, &vec![a as u8; 100 * (a as usize + 1)]))
            .collect();
        let r = c
            .post(s.url("/v1/volumes/9/batch"))
            .body(encode_batch(&ns))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        for a in 0..4u32 {
            let b = c
                .get(s.url(&format!("/v1/needles/9/5/{a}/abc")))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(b.as_ref(), &vec![a as u8; 100 * (a as usize + 1)][..]);
        }
        let v: serde_json::Value = c
            .get(s.url("/v1/volumes"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["volumes"][0]["id"], 9);
        assert_eq!(v["volumes"][0]["needles"], 4);
        assert_eq!(v["volumes"][0]["max_bytes"], 2 << 20);
        // Delete one, compact, rebuild the index: the rest still reads.
        let r = c
            .delete(s.url("/v1/needles/9/5/3/abc"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let rep: serde_json::Value = c
            .post(s.url("/v1/volumes/9/compact"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(rep["volume"], 9);
        assert_eq!(rep["needles"], 3);
        assert!(rep["reclaimed_bytes"].as_u64().unwrap() >= 400, "{rep}");
        let rep: serde_json::Value = c
            .post(s.url("/v1/volumes/9/rebuild-index"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(rep["needles"], 3, "{rep}");
        for a in 0..3u32 {
            let b = c
                .get(s.url(&format!("/v1/needles/9/5/{a}/abc")))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(b.as_ref(), &vec![a as u8; 100 * (a as usize + 1)][..]);
        }
        let (st, code) =
            json_error(c.get(s.url("/v1/volumes/9/compact")).send().await.unwrap()).await;
        assert_eq!(
            (st, code.as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        );
        let r = c.post(s.url("/v1/volumes/9/seal")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let (st, code) = json_error(
            c.put(s.url("/v1/needles/9/6/0/1"))
                .body("x")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((st, code.as_str()), (StatusCode::CONFLICT, "read_only"));
        let m = c
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for name in [
            "haystack_store_fsyncs_total",
            "haystack_store_needles_per_fsync",
            "haystack_store_disk_reads_total",
            "haystack_store_gets_total",
            "haystack_store_get_disk_reads_total",
            "haystack_store_io_engine",
            "haystack_store_http_request_duration_seconds",
        ] {
            assert!(m.contains(name), "{name} missing from /metrics");
        }
        let h: serde_json::Value = c
            .get(s.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(h["status"], "ok");
        s.stop().await;
    });
}

#[test]
fn bad_input_gets_json_4xx() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = start_server(dir.path(), ENGINES[0]).await;
        let c = reqwest::Client::new();
        c.post(s.url("/v1/volumes/1")).send().await.unwrap();
        let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
            (
                c.get(s.url("/v1/needles/x/1/0/1")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/needles/1/-1/0/1")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/needles/1/1/99999999999/1")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/needles/1/1/0/xyz")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            // Replica comparison and repair: bad parameters and bodies.
            (
                c.get(s.url("/v1/volumes/1/digest?buckets=0")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/volumes/1/digest?buckets=99999999")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/volumes/1/needles?bucket=3")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/volumes/1/needles?bucket=1,x&buckets=16")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/volumes/1/needles?bucket=16&buckets=16")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.post(s.url("/v1/volumes/1/repair")).body("not a batch"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/volumes/1/repair")),
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                c.get(s.url("/v1/needles/1/1/0/12345678901234567")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.get(s.url("/v1/needles/2/1/0/1")),
                StatusCode::NOT_FOUND,
                "no_such_volume",
            ),
            (
                c.get(s.url("/v1/needles/1/1/0/1")),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                c.get(s.url("/nope")),
                StatusCode::NOT_FOUND,
                "no_such_route",
            ),
            (
                c.patch(s.url("/v1/needles/1/1/0/1")),
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                c.put(s.url("/v1/needles/1/1/0/1"))
                    .body(vec![0u8; (1 << 20) + 1]),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                c.post(s.url("/v1/volumes/1/batch")).body(vec![1u8; 15]),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.post(s.url("/v1/volumes/1/batch")).body(vec![1u8; 30]),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                c.post(s.url("/v1/volumes/1/batch")).body(Vec::<u8>::new()),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.post(s.url("/v1/volumes/3")).body("{not json"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.post(s.url("/v1/volumes/3")).body("{\"max_bytes\": 5}"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            // Extractor failures answer JSON like every other error (they were text/plain,
            // and the two public pages answered a wrong method with an empty 405).
            (
                c.get(s.url("/v1/volumes/1/needles?buckets=abc")),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.post(s.url("/v1/volumes/1/gc"))
                    .header("content-type", "text/plain")
                    .body("{}"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.post(s.url("/v1/volumes/1/gc"))
                    .header("content-type", "application/json")
                    .body("{not json"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                c.post(s.url("/v1/volumes/4")).body(vec![b' '; 300 << 10]),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                c.post(s.url("/health")),
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                c.delete(s.url("/metrics")),
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
        ];
        for (i, (req, status, code)) in cases.into_iter().enumerate() {
            let (st, got) = json_error(req.send().await.unwrap()).await;
            assert_eq!((st, got.as_str()), (status, code), "case {i}");
        }
        // A body over the limit with no Content-Length (chunked) is refused too.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..40).map(|_| Ok(vec![0u8; 64 << 10])).collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let r = c.put(s.url("/v1/needles/1/1/0/1")).body(body).send().await;
        if let Ok(r) = r {
            assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        }
        // Filling the (4 MiB) volume ends in 507 and a read-only volume.
        let mut last = StatusCode::CREATED;
        for k in 0..10 {
            let r = c
                .put(s.url(&format!("/v1/needles/1/{k}/0/1")))
                .body(vec![1u8; 1 << 20])
                .send()
                .await
                .unwrap();
            last = r.status();
            if last != StatusCode::CREATED {
                let (st, code) = json_error(r).await;
                assert_eq!(
                    (st, code.as_str()),
                    (StatusCode::INSUFFICIENT_STORAGE, "volume_full")
                );
                break;
            }
        }
        assert_eq!(last, StatusCode::INSUFFICIENT_STORAGE);
        // The server is still fine.
        assert_eq!(
            c.get(s.url("/health")).send().await.unwrap().status(),
            StatusCode::OK
        );
        s.stop().await;
    });
}

#[test]
fn a_volume_is_copied_between_stores_and_needles_are_listed() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rt().block_on(async {
        let a = start_server(da.path(), ENGINES[0]).await;
        let b = start_server(db.path(), ENGINES[1]).await;
        let c = reqwest::Client::new();
        c.post(a.url("/v1/volumes/4")).send().await.unwrap();
        let ns: Vec<_> = (0..50u64)
            .map(|k| needle(k, 0, 0x77, &vec![k as u8; 1000 + k as usize]))
            .collect();
        let r = c
            .post(a.url("/v1/volumes/4/batch"))
            .body(encode_batch(&ns))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = c
            .delete(a.url("/v1/needles/4/7/0/77"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let listed: serde_json::Value = c
            .get(a.url("/v1/volumes/4/needles"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let list = listed["needles"].as_array().unwrap();
        assert_eq!(list.len(), 50);
        assert_eq!(
            list.iter().filter(|n| n["deleted"] == true).count(),
            1,
            "{listed}"
        );
        // An empty replica on the target (as the directory would create) is replaced.
        c.post(b.url("/v1/volumes/4")).send().await.unwrap();
        c.post(a.url("/v1/volumes/4/seal")).send().await.unwrap();
        let r = c
            .post(b.url("/v1/volumes/4/import"))
            .json(&serde_json::json!({"from": a.url("")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let info: serde_json::Value = r.json().await.unwrap();
        assert_eq!(info["state"], "sealed", "{info}");
        assert_eq!(info["needles"], 50, "{info}");
        for k in 0..50u64 {
            let r = c
                .get(b.url(&format!("/v1/needles/4/{k}/0/77")))
                .send()
                .await
                .unwrap();
            if k == 7 {
                assert_eq!(r.status(), StatusCode::NOT_FOUND);
            } else {
                assert_eq!(
                    r.bytes().await.unwrap().as_ref(),
                    &vec![k as u8; 1000 + k as usize][..]
                );
            }
        }
        // A replica with needles is never overwritten; a bad source is a clear 400.
        let (st, code) = json_error(
            c.post(b.url("/v1/volumes/4/import"))
                .json(&serde_json::json!({"from": a.url("")}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((st, code.as_str()), (StatusCode::CONFLICT, "volume_exists"));
        let (st, _) = json_error(
            c.post(b.url("/v1/volumes/5/import"))
                .json(&serde_json::json!({"from": a.url("")}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(!db.path().join("vol-5.dat.import").exists());
        a.stop().await;
        b.stop().await;
    });
}

/// A re-seed of a remote copy whose source fails (here: a source that is gone, and one
/// without the volume) leaves the copy held before whole and serving; one that
/// succeeds replaces it.
#[test]
fn a_failed_reseed_keeps_the_remote_copy_it_would_replace() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rt().block_on(async {
        let a = start_server(da.path(), ENGINES[0]).await;
        let b = start_server(db.path(), ENGINES[1]).await;
        let c = reqwest::Client::new();
        c.post(a.url("/v1/volumes/6")).send().await.unwrap();
        let ns: Vec<_> = (0..20u64)
            .map(|k| needle(k, 0, 0x66, &vec![k as u8; 500 + k as usize]))
            .collect();
        let r = c
            .post(a.url("/v1/volumes/6/batch"))
            .body(encode_batch(&ns))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let seed = |from: String, replace: bool| {
            c.post(b.url("/v1/volumes/6/import"))
                .json(&serde_json::json!({"from": from, "remote_copy": true, "replace": replace}))
                .send()
        };
        let r = seed(a.url(""), false).await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let serves_all = || async {
            for k in 0..20u64 {
                let r = c
                    .get(b.url(&format!("/v1/needles/6/{k}/0/66")))
                    .send()
                    .await
                    .unwrap();
                if r.status() != StatusCode::OK
                    || r.bytes().await.unwrap().as_ref() != &vec![k as u8; 500 + k as usize][..]
                {
                    return false;
                }
            }
            c.get(b.url("/v1/volumes/6/ship"))
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::OK
        };
        assert!(serves_all().await);
        // A source that answers nothing.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (st, _) = json_error(seed(gone, true).await.unwrap()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(
            serves_all().await,
            "a failed re-seed dropped the remote copy"
        );
        // A source without the volume (it answers 404).
        let a2 = tempfile::tempdir().unwrap();
        let empty = start_server(a2.path(), ENGINES[0]).await;
        let (st, _) = json_error(seed(empty.url(""), true).await.unwrap()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(
            serves_all().await,
            "a failed re-seed dropped the remote copy"
        );
        assert!(!db.path().join("vol-6.dat.import").exists());
        // A re-seed that succeeds replaces the copy: the source's newer needles are there.
        let more: Vec<_> = (20..30u64)
            .map(|k| needle(k, 0, 0x66, &vec![k as u8; 500 + k as usize]))
            .collect();
        c.post(a.url("/v1/volumes/6/batch"))
            .body(encode_batch(&more))
            .send()
            .await
            .unwrap();
        let r = seed(a.url(""), true).await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let info: serde_json::Value = r.json().await.unwrap();
        assert_eq!(info["needles"], 30, "{info}");
        assert!(serves_all().await);
        empty.stop().await;
        a.stop().await;
        b.stop().await;
    });
}

/// Three data directories: a source store, the store under test and a second source.
fn three_dirs() -> (tempfile::TempDir, tempfile::TempDir, tempfile::TempDir) {
    (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    )
}

/// A source that sends an export's head and first bytes, then waits for `go` before the rest;
/// if `go` is dropped instead, it closes the connection there (a download cut midway).
async fn stalling_source(
    real: String,
    go: tokio::sync::oneshot::Receiver<()>,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "the importer closed early");
            req.extend_from_slice(&b[..n]);
        }
        let body = reqwest::get(&real).await.unwrap().bytes().await.unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-haystack-sealed: false\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body[..4096]).await.unwrap();
        if go.await.is_err() {
            return;
        }
        s.write_all(&body[4096..]).await.unwrap();
        s.flush().await.unwrap();
    });
    (url, task)
}

/// Servers a, b and c on their directories, volume 6 on a and c with different needles
/// ([`two_sources_of_volume_6`]), and on b a remote copy of a's: the re-seed tests' start.
async fn b_holds_a_remote_copy_of_a(
    da: &tempfile::TempDir,
    db: &tempfile::TempDir,
    dc: &tempfile::TempDir,
) -> (TestServer, TestServer, TestServer, reqwest::Client) {
    let a = start_server(da.path(), ENGINES[0]).await;
    let b = start_server(db.path(), ENGINES[1]).await;
    let c = start_server(dc.path(), ENGINES[0]).await;
    let http = reqwest::Client::new();
    two_sources_of_volume_6(&http, &a, &c).await;
    b.store
        .import_remote_copy(6, &a.url(""), false)
        .await
        .unwrap();
    (a, b, c, http)
}

/// Volume 6 on `a` (needles 0..10) and on `c` (needles 100..130), each a file of its own
/// (distinct tags), 3,000 bytes of the key's low byte per needle, cookie 0x66.
async fn two_sources_of_volume_6(http: &reqwest::Client, a: &TestServer, c: &TestServer) {
    for (s, keys) in [(a, 0..10u64), (c, 100..130u64)] {
        http.post(s.url("/v1/volumes/6")).send().await.unwrap();
        let ns: Vec<_> = keys
            .map(|k| needle(k, 0, 0x66, &vec![k as u8; 3000]))
            .collect();
        http.post(s.url("/v1/volumes/6/batch"))
            .body(encode_batch(&ns))
            .send()
            .await
            .unwrap();
    }
}

/// Regression: while a re-seed downloaded, the remote reported the tag of the copy it was
/// replacing, so the directory gave shipping back to the replica that copy came from, which
/// re-seeded it in turn once the new copy was in. Now heartbeats carry the incoming copy's
/// tag from its first bytes on, the old copy serving until the swap; and a promotion asked
/// meanwhile waits for the swap and then promotes the new copy (never undone by it).
#[test]
fn a_reseed_reports_the_incoming_copy_and_a_promotion_waits_for_it() {
    let (da, db, dc) = three_dirs();
    rt().block_on(async {
        let a = start_server(da.path(), ENGINES[0]).await;
        let b = start_server(db.path(), ENGINES[1]).await;
        let c = start_server(dc.path(), ENGINES[0]).await;
        let http = reqwest::Client::new();
        // Two replicas of volume 6 with files of their own (distinct tags, other needles).
        two_sources_of_volume_6(&http, &a, &c).await;
        let (tag_a, tag_c) = (volume_tag(da.path(), 6), volume_tag(dc.path(), 6));
        assert_ne!(tag_a, tag_c);
        let b_tag = || {
            b.store
                .list()
                .iter()
                .find(|v| v.id == 6)
                .and_then(|v| v.tag)
        };
        b.store
            .import_remote_copy(6, &a.url(""), false)
            .await
            .unwrap();
        assert_eq!(b_tag(), Some(tag_a));
        // Re-seed from c through a source that stalls after the first 4 KiB.
        let (go, wait) = tokio::sync::oneshot::channel();
        let (slow, feeder) = stalling_source(c.url("/v1/volumes/6/export"), wait).await;
        let store = b.store.clone();
        let reseed = tokio::spawn(async move { store.import_remote_copy(6, &slow, true).await });
        let mut seen = None;
        for _ in 0..200 {
            seen = b_tag();
            if seen == Some(tag_c) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(seen, Some(tag_c), "the incoming copy's tag is not reported");
        // The old copy still serves meanwhile.
        assert_eq!(
            b.status(&http, "/v1/needles/6/3/0/66").await,
            StatusCode::OK
        );
        // A promotion asked now waits for the swap, then promotes the new copy.
        let store = b.store.clone();
        let promote = tokio::spawn(async move { store.promote(6).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !promote.is_finished(),
            "promotion did not wait for the re-seed"
        );
        go.send(()).unwrap();
        let info = reseed.await.unwrap().unwrap();
        assert_eq!(info.needles, 30);
        feeder.await.unwrap();
        promote.await.unwrap().unwrap();
        assert!(!b.store.volume(6).unwrap().is_remote_copy());
        assert_eq!(b_tag(), Some(tag_c));
        for k in 100..130u64 {
            let r = http
                .get(b.url(&format!("/v1/needles/6/{k}/0/66")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.bytes().await.unwrap().as_ref(), &vec![k as u8; 3000][..]);
        }
        a.stop().await;
        b.stop().await;
        c.stop().await;
    });
}

/// A re-seed of `b`'s remote copy of volume 6 from `c` through a [`stalling_source`], once its
/// download has begun (`import_file` exists): the source's `go`, its task, the re-seed's.
async fn stalled_reseed(
    b: &TestServer,
    c: &TestServer,
    import_file: &std::path::Path,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<Result<haystack_proto::VolumeInfo, haystack_store::StoreError>>,
) {
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let (source, feeder) = stalling_source(c.url("/v1/volumes/6/export"), wait).await;
    let store = b.store.clone();
    let reseed = tokio::spawn(async move { store.import_remote_copy(6, &source, true).await });
    for _ in 0..200 {
        if import_file.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(import_file.exists(), "the download did not begin");
    (go, feeder, reseed)
}

/// A re-seed cut midway (the source's connection closes after 4 KiB), and one the store
/// dies in the middle of (the download dropped, the store stopped and opened again on the
/// same directory), leave the remote copy held before: serving, still a remote copy with its
/// source's tag, and no half-downloaded file; a re-seed afterwards replaces it.
#[test]
fn a_reseed_cut_midway_or_by_a_restart_keeps_the_copy_it_would_replace() {
    let (da, db, dc) = three_dirs();
    rt().block_on(async {
        let a = start_server(da.path(), ENGINES[0]).await;
        let mut b = start_server(db.path(), ENGINES[1]).await;
        let c = start_server(dc.path(), ENGINES[0]).await;
        let http = reqwest::Client::new();
        two_sources_of_volume_6(&http, &a, &c).await;
        let tag_a = volume_tag(da.path(), 6);
        b.store
            .import_remote_copy(6, &a.url(""), false)
            .await
            .unwrap();
        let import_file = db.path().join("vol-6.dat.import");
        let holds_the_old_copy = |b: &TestServer| {
            let url = b.url("");
            let store = b.store.clone();
            let http = http.clone();
            async move {
                let v = store.volume(6).expect("volume 6 is there");
                assert!(v.is_remote_copy(), "no longer a remote copy");
                let tag = store.list().iter().find(|v| v.id == 6).and_then(|v| v.tag);
                assert_eq!(tag, Some(tag_a), "not the old copy's tag");
                for k in 0..10u64 {
                    let r = http
                        .get(format!("{url}/v1/needles/6/{k}/0/66"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK, "needle {k}");
                    assert_eq!(r.bytes().await.unwrap().as_ref(), &vec![k as u8; 3000][..]);
                }
            }
        };
        // Cut midway: the source closes after the first 4 KiB.
        let (go, feeder, reseed) = stalled_reseed(&b, &c, &import_file).await;
        drop(go);
        feeder.await.unwrap();
        let err = reseed.await.unwrap().unwrap_err();
        assert!(
            matches!(err, haystack_store::StoreError::BadRequest(_)),
            "{err:?}"
        );
        assert!(!import_file.exists(), "the cut download's file stayed");
        holds_the_old_copy(&b).await;
        // The store dies mid-download: the download is dropped where it stands (its file
        // stays, as after a crash), the store stops and opens again.
        let (go, feeder, reseed) = stalled_reseed(&b, &c, &import_file).await;
        reseed.abort();
        assert!(reseed.await.unwrap_err().is_cancelled());
        assert!(import_file.exists());
        b.stop().await;
        drop(go);
        feeder.await.unwrap();
        b = start_server(db.path(), ENGINES[1]).await;
        assert!(!import_file.exists(), "the dead download's file stayed");
        holds_the_old_copy(&b).await;
        // And a whole re-seed afterwards replaces it.
        let info = b
            .store
            .import_remote_copy(6, &c.url(""), true)
            .await
            .unwrap();
        assert_eq!(info.needles, 30);
        assert!(b.store.volume(6).unwrap().is_remote_copy());
        assert_eq!(
            b.store
                .list()
                .iter()
                .find(|v| v.id == 6)
                .and_then(|v| v.tag),
            Some(volume_tag(dc.path(), 6))
        );
        a.stop().await;
        b.stop().await;
        c.stop().await;
    });
}

/// A write never undoes a delete. A replica write the uploader did not wait for (write
/// acknowledgement `one` or `quorum`) can reach a store after the photo was deleted: the
/// delete found the needle there (a repair copy landed first) or found nothing (404). Either
/// way the late write is refused, 410 `deleted`, and the needle stays unreadable, by PUT and
/// by batch, before and after a restart of the store for the delete it held. A needle the
/// delete never named (another cookie for one it did not hold) is written as usual.
#[test]
fn a_write_arriving_after_the_delete_does_not_bring_the_needle_back() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let s = start_server(dir.path(), kind).await;
            let c = reqwest::Client::new();
            assert_eq!(
                c.post(s.url("/v1/volumes/1"))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                StatusCode::CREATED
            );
            let put = |path: &str| c.put(s.url(path)).body(vec![7u8; 100]).send();
            let batch = |key: u64, cookie: u64| {
                let body = encode_batch(&[needle(key, 0, cookie, &[9u8; 50])]);
                c.post(s.url("/v1/volumes/1/batch")).body(body).send()
            };

            // Held, then deleted: a late PUT or batch of the same needle is refused.
            let held = "/v1/needles/1/10/0/00000000000000aa";
            assert_eq!(put(held).await.unwrap().status(), StatusCode::CREATED);
            assert_eq!(
                c.delete(s.url(held)).send().await.unwrap().status(),
                StatusCode::NO_CONTENT
            );
            let (st, code) = json_error(put(held).await.unwrap()).await;
            assert_eq!((st, code.as_str()), (StatusCode::GONE, "deleted"));
            let (st, code) = json_error(batch(10, 0xaa).await.unwrap()).await;
            assert_eq!((st, code.as_str()), (StatusCode::GONE, "deleted"));
            assert_eq!(c.get(s.url(held)).send().await.unwrap().status(), 404);

            // Never held: the delete finds nothing (404) and the late write is refused too.
            let absent = "/v1/needles/1/11/0/00000000000000bb";
            assert_eq!(c.delete(s.url(absent)).send().await.unwrap().status(), 404);
            let (st, code) = json_error(put(absent).await.unwrap()).await;
            assert_eq!((st, code.as_str()), (StatusCode::GONE, "deleted"));
            let (st, code) = json_error(batch(11, 0xbb).await.unwrap()).await;
            assert_eq!((st, code.as_str()), (StatusCode::GONE, "deleted"));
            assert_eq!(c.get(s.url(absent)).send().await.unwrap().status(), 404);

            // Another cookie is another needle: written and read as usual.
            let absent = "/v1/needles/1/12/0/00000000000000bb";
            assert_eq!(c.delete(s.url(absent)).send().await.unwrap().status(), 404);
            let other = "/v1/needles/1/12/0/00000000000000cc";
            assert_eq!(put(other).await.unwrap().status(), StatusCode::CREATED);
            assert_eq!(c.get(s.url(other)).send().await.unwrap().status(), 200);
            s.stop().await;

            // After a restart the delete of the held needle is still on disk and still wins.
            let s = start_server(dir.path(), kind).await;
            let put = |path: &str| c.put(s.url(path)).body(vec![7u8; 100]).send();
            let (st, code) = json_error(put(held).await.unwrap()).await;
            assert_eq!((st, code.as_str()), (StatusCode::GONE, "deleted"));
            assert_eq!(c.get(s.url(held)).send().await.unwrap().status(), 404);
            s.stop().await;
        });
    }
}

/// An asynchronous remote replica can get a photo's delete before the shipper sends it the
/// needle (the shipper read it before its own delete): it answers 404 and remembers the
/// delete, and the needle, when it arrives, is indexed deleted and flagged so. Before, the
/// shipped needle was indexed live and the remote served the deleted photo (for good after a
/// promotion; anti-entropy does not compare remote replicas).
#[test]
fn a_needle_shipped_after_its_delete_reached_the_remote_stays_deleted() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rt().block_on(async {
        let a = start_server(da.path(), ENGINES[0]).await;
        let b = start_server(db.path(), ENGINES[0]).await;
        let c = reqwest::Client::new();
        assert_eq!(
            c.post(a.url("/v1/volumes/1"))
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
        let r = c
            .post(b.url("/v1/volumes/1/import"))
            .json(&serde_json::json!({"from": a.url(""), "remote_copy": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        let needle = "/v1/needles/1/5/0/00000000000000aa";
        let kept = "/v1/needles/1/6/0/00000000000000bb";
        for n in [needle, kept] {
            let r = c.put(a.url(n)).body(vec![3u8; 700]).send().await.unwrap();
            assert_eq!(r.status(), 201);
        }
        // The delete reaches the remote first (it does not hold the needle yet).
        assert_eq!(c.delete(b.url(needle)).send().await.unwrap().status(), 404);
        // The shipper's bytes: the source's file from the remote's end to its own.
        let pos: serde_json::Value = c
            .get(b.url("/v1/volumes/1/ship"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let from = pos["tail"].as_u64().expect("tail");
        let to = a.store.volume(1).unwrap().info().size_bytes;
        let file = std::fs::read(da.path().join("vol-1.dat")).unwrap();
        let r = c
            .post(b.url(&format!("/v1/volumes/1/ship?offset={from}")))
            .body(file[from as usize..to as usize].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        assert_eq!(c.get(b.url(needle)).send().await.unwrap().status(), 404);
        assert_eq!(c.get(b.url(kept)).send().await.unwrap().status(), 200);
        b.stop().await;
        // Still deleted after a restart that scans the volume file (its index file removed):
        // the flag in the file says so, not only the index records.
        std::fs::remove_file(db.path().join("vol-1.idx")).unwrap();
        let b = start_server(db.path(), ENGINES[0]).await;
        assert_eq!(c.get(b.url(needle)).send().await.unwrap().status(), 404);
        assert_eq!(c.get(b.url(kept)).send().await.unwrap().status(), 200);
        b.stop().await;
        a.stop().await;
    });
}

/// A delete a remote copy takes while a re-seed downloads its replacement is carried over to
/// the new copy. Before, the swap discarded the old copy with its delete flags and delete
/// memory: the new file (its source's export, read before the source's own delete, or on a
/// source the delete had not reached yet) held the needle live, and the remote copy served
/// the deleted needle for good (shipping never carries flags below the tail).
#[test]
fn a_delete_taken_during_a_reseed_holds_on_the_new_copy() {
    let (da, db, dc) = three_dirs();
    rt().block_on(async {
        let (a, b, c, http) = b_holds_a_remote_copy_of_a(&da, &db, &dc).await;
        let import_file = db.path().join("vol-6.dat.import");
        // A re-seed from the same source, stalled after its first bytes.
        let (go, feeder, reseed) = stalled_reseed(&b, &a, &import_file).await;
        let r = http
            .delete(b.url("/v1/needles/6/5/0/66"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        go.send(()).unwrap();
        reseed.await.unwrap().unwrap();
        feeder.await.unwrap();
        assert_eq!(
            b.status(&http, "/v1/needles/6/5/0/66").await,
            StatusCode::NOT_FOUND,
            "the delete taken during the re-seed was lost"
        );
        assert_eq!(
            b.status(&http, "/v1/needles/6/4/0/66").await,
            StatusCode::OK
        );
        // A write of it arriving late is refused too (the delete memory came along).
        assert!(matches!(
            b.store
                .volume(6)
                .unwrap()
                .write_batch(vec![needle(5, 0, 0x66, &[5; 3000])])
                .await,
            Err(haystack_store::StoreError::Deleted { .. })
                | Err(haystack_store::StoreError::ReadOnly { .. })
        ));
        a.stop().await;
        b.stop().await;
        c.stop().await;
    });
}

/// Removes a pause point's file when dropped: a held store goes on if an assertion fails (the
/// runtime's drop waits for it).
struct Disarm(std::path::PathBuf);

impl Drop for Disarm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A re-seed of b's remote copy of volume 6 from c, held at `reseed-swap` (new copy
/// downloaded and staged, old copy quiesced, files not swapped yet): the armed file (remove it
/// to let the re-seed go on), its guard, and the re-seed's task.
async fn reseed_held_in_its_swap(
    b: &TestServer,
    c: &TestServer,
    b_dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    Disarm,
    tokio::task::JoinHandle<Result<haystack_proto::VolumeInfo, haystack_store::StoreError>>,
) {
    let armed = b_dir.join("test-pause-reseed-swap");
    std::fs::write(&armed, b"").unwrap();
    let disarm = Disarm(armed.clone());
    let store = b.store.clone();
    let source = c.url("");
    let reseed = tokio::spawn(async move { store.import_remote_copy(6, &source, true).await });
    let paused = b_dir.join("test-paused-reseed-swap");
    for _ in 0..500 {
        if paused.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(paused.exists(), "the re-seed did not reach its swap");
    (armed, disarm, reseed)
}

/// Regression: a re-seed took its volume out of the store's map while it swapped files and
/// opened the new copy, so a delete arriving then answered 404 `no_such_volume`, which the
/// directory counts as done: the new copy (whose source exported the needle before its own
/// delete) then served the photo again. A delete already waiting on the old copy's gate
/// landed on the replaced file the same way. Now the old copy serves reads until the new one
/// replaces it, and writes and deletes that waited for the swap are refused with a 503 (the
/// caller retries and reaches the new copy).
#[test]
fn a_delete_during_a_reseeds_swap_is_not_answered_done_and_holds() {
    let (da, db, dc) = three_dirs();
    rt().block_on(async {
        let (a, b, c, http) = b_holds_a_remote_copy_of_a(&da, &db, &dc).await;
        // A re-seed from c, held inside its swap.
        let (armed, _disarm, reseed) = reseed_held_in_its_swap(&b, &c, db.path()).await;
        // The copy being replaced still serves.
        assert_eq!(
            b.status(&http, "/v1/needles/6/5/0/66").await,
            StatusCode::OK,
            "no copy served during the swap"
        );
        // A delete of a needle of the incoming copy, sent now, as the directory sends it.
        let del = {
            let (http, url) = (http.clone(), b.url("/v1/needles/6/105/0/66"));
            tokio::spawn(async move { http.delete(url).send().await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        std::fs::remove_file(&armed).unwrap();
        reseed.await.unwrap().unwrap();
        let r = del.await.unwrap();
        // The directory counts any 404 as done and retries anything else.
        if r.status() != StatusCode::NOT_FOUND {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            let r = http
                .delete(b.url("/v1/needles/6/105/0/66"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
        }
        assert_eq!(
            b.status(&http, "/v1/needles/6/105/0/66").await,
            StatusCode::NOT_FOUND,
            "a delete answered during the swap did not hold"
        );
        assert_eq!(
            b.status(&http, "/v1/needles/6/104/0/66").await,
            StatusCode::OK
        );
        a.stop().await;
        b.stop().await;
        c.stop().await;
    });
}

/// Regression: the deletes a remote copy took while its re-seed downloaded reached the new
/// copy only through the 10-minute delete memory, which also forgets past 4096 needles: more
/// deletes than that during one download (or a download longer than 10 minutes) and the
/// first of them were lost with the old file, their needles served again by the new copy
/// (whose source exported them before its own deletes). Now every delete taken during the
/// download is journaled for the new copy.
#[test]
fn every_delete_taken_during_a_reseeds_download_holds_past_the_delete_memory() {
    let (da, db, dc) = three_dirs();
    rt().block_on(async {
        let a = start_server(da.path(), ENGINES[0]).await;
        let b = start_server(db.path(), ENGINES[1]).await;
        let c = start_server(dc.path(), ENGINES[0]).await;
        let http = reqwest::Client::new();
        two_sources_of_volume_6(&http, &a, &c).await;
        // Past the delete memory's bound (4096 needles per volume).
        let n = 4096 + 4;
        let keys = 10_000..10_000 + n;
        let on_c = c.store.volume(6).unwrap();
        for chunk in keys.clone().collect::<Vec<_>>().chunks(512) {
            let ns: Vec<_> = chunk
                .iter()
                .map(|k| needle(*k, 0, 0x66, &[7; 16]))
                .collect();
            on_c.write_batch(ns).await.unwrap();
        }
        b.store
            .import_remote_copy(6, &a.url(""), false)
            .await
            .unwrap();
        let import_file = db.path().join("vol-6.dat.import");
        let (go, feeder, reseed) = stalled_reseed(&b, &c, &import_file).await;
        // The directory's deletes reach the remote copy during the download: it does not
        // hold these needles yet (404, done for the directory).
        let on_b = b.store.volume(6).unwrap();
        for k in keys.clone() {
            assert!(matches!(
                on_b.delete(k, 0, 0x66).await,
                Err(haystack_store::StoreError::NotFound)
            ));
        }
        go.send(()).unwrap();
        reseed.await.unwrap().unwrap();
        feeder.await.unwrap();
        for k in [keys.start, keys.start + 1, keys.end - 1] {
            assert_eq!(
                b.status(&http, &format!("/v1/needles/6/{k}/0/66")).await,
                StatusCode::NOT_FOUND,
                "needle {k}, deleted during the download, came back with the new copy"
            );
        }
        assert_eq!(
            b.status(&http, "/v1/needles/6/104/0/66").await,
            StatusCode::OK
        );
        a.stop().await;
        b.stop().await;
        c.stop().await;
    });
}

/// Regression (review of f36c0c7): the re-seeded copy that went into service was opened
/// afresh, with an empty delete memory; the old copy's memory went with it. A delete the
/// remote took during the download for a needle neither copy held yet (404, done for the
/// directory) was then forgotten: when the source shipped that needle afterwards (its own
/// delete still queued), it landed live. Now the new copy remembers the old copy's deletes.
#[test]
fn a_needle_shipped_after_a_reseed_stays_deleted_if_its_delete_came_during_the_download() {
    let (da, db, dc) = three_dirs();
    rt().block_on(async {
        let (a, b, c, http) = b_holds_a_remote_copy_of_a(&da, &db, &dc).await;
        let import_file = db.path().join("vol-6.dat.import");
        let (go, feeder, reseed) = stalled_reseed(&b, &c, &import_file).await;
        // The delete of needle 500, held by no copy yet, reaches the remote (404: done).
        assert!(matches!(
            b.store.volume(6).unwrap().delete(500, 0, 0x66).await,
            Err(haystack_store::StoreError::NotFound)
        ));
        go.send(()).unwrap();
        reseed.await.unwrap().unwrap();
        feeder.await.unwrap();
        // The source writes it (its delete still on the way) and ships it.
        let src = c.store.volume(6).unwrap();
        src.write_batch(vec![needle(500, 0, 0x66, &[5; 3000])])
            .await
            .unwrap();
        let remote = b.store.volume(6).unwrap();
        let tail = remote.info().size_bytes;
        let bytes = src
            .ship_read(tail, 1 << 20, src.file_generation())
            .await
            .unwrap()
            .expect("the needle's bytes");
        remote.ship_append(tail, bytes.to_vec()).await.unwrap();
        assert_eq!(
            b.status(&http, "/v1/needles/6/500/0/66").await,
            StatusCode::NOT_FOUND,
            "a needle deleted during the re-seed's download landed live when shipped after it"
        );
        a.stop().await;
        b.stop().await;
        c.stop().await;
    });
}

/// Regression (review of f36c0c7): a re-seed that failed after its rename left the old copy
/// replaced (its file renamed over), but a second re-seed that failed before its own rename
/// put it back in service: it took deletes (204) on its unlinked file, lost at the next
/// restart. A copy whose file was renamed over now stays replaced until a restart.
#[test]
fn a_copy_whose_file_was_renamed_over_is_never_put_back_in_service() {
    let (da, db, dc) = three_dirs();
    rt().block_on(async {
        let (a, b, c, http) = b_holds_a_remote_copy_of_a(&da, &db, &dc).await;
        let fail_renamed = db.path().join("test-fail-reseed-renamed");
        std::fs::write(&fail_renamed, b"").unwrap();
        assert!(b
            .store
            .import_remote_copy(6, &c.url(""), true)
            .await
            .is_err());
        std::fs::remove_file(&fail_renamed).unwrap();
        let fail_unlink = db.path().join("test-fail-reseed-unlink");
        std::fs::write(&fail_unlink, b"").unwrap();
        assert!(b
            .store
            .import_remote_copy(6, &c.url(""), true)
            .await
            .is_err());
        std::fs::remove_file(&fail_unlink).unwrap();
        // The copy still in the map is the one whose file was renamed over: no delete is
        // acknowledged on it.
        let r = http
            .delete(b.url("/v1/needles/6/5/0/66"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "a delete was acknowledged on a copy whose file is gone"
        );
        a.stop().await;
        b.stop().await;
        c.stop().await;
    });
}

/// Regression: a seal of a remote copy that waited on its gate while a re-seed replaced it
/// ran afterwards on the replaced copy and wrote that copy's sorted index (its offsets) as
/// `vol-6.sidx`, over the new copy's files: after a restart the new copy opened sealed with
/// the old one's index, and its needles were not found. Now the seal is refused (503) and the
/// new copy is untouched.
#[test]
fn a_seal_waiting_during_a_reseeds_swap_does_not_touch_the_new_copy() {
    let (da, db, dc) = three_dirs();
    rt().block_on(async {
        let (a, mut b, c, http) = b_holds_a_remote_copy_of_a(&da, &db, &dc).await;
        let (armed, _disarm, reseed) = reseed_held_in_its_swap(&b, &c, db.path()).await;
        let seal = {
            let (http, url) = (http.clone(), b.url("/v1/volumes/6/seal"));
            tokio::spawn(async move { http.post(url).send().await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        std::fs::remove_file(&armed).unwrap();
        reseed.await.unwrap().unwrap();
        let r = seal.await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Nor is a remote copy compacted (it follows its source's file byte for byte, and a
        // re-seed may swap its files).
        assert!(matches!(
            b.store.volume(6).unwrap().compact().await,
            Err(haystack_store::StoreError::BadRequest(_))
        ));
        b.stop().await;
        b = start_server(db.path(), ENGINES[1]).await;
        for k in [100u64, 105, 129] {
            assert_eq!(
                b.status(&http, &format!("/v1/needles/6/{k}/0/66")).await,
                StatusCode::OK,
                "needle {k} of the new copy"
            );
        }
        a.stop().await;
        b.stop().await;
        c.stop().await;
    });
}

/// An import (or a re-seed) of a volume whose file is damaged in the middle (a zeroed header)
/// keeps every needle after the damage: the imported bytes are the source's up to its tail, so
/// the damage is skipped, never taken for the end. Before, the new copy's first open had no
/// index file to vouch for anything, took the zeroed header for the end and cut and zeroed
/// everything after it.
#[test]
fn an_import_of_a_volume_damaged_in_the_middle_keeps_the_needles_after_the_damage() {
    use std::os::unix::fs::FileExt;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rt().block_on(async {
        let a = start_server(da.path(), ENGINES[0]).await;
        let b = start_server(db.path(), ENGINES[1]).await;
        let http = reqwest::Client::new();
        http.post(a.url("/v1/volumes/6")).send().await.unwrap();
        let vol = a.store.volume(6).unwrap();
        let mut locs = Vec::new();
        for k in 0..6u64 {
            locs.extend(
                vol.write_batch(vec![needle(k, 0, 0x66, &vec![k as u8; 3000])])
                    .await
                    .unwrap(),
            );
        }
        let (dat, _, _) = haystack_store::volume::volume_paths(da.path(), 6);
        let f = std::fs::OpenOptions::new().write(true).open(&dat).unwrap();
        f.write_all_at(&[0u8; haystack_store::format::HEADER_LEN], locs[3].offset)
            .unwrap();
        drop(f);
        b.store.import_volume(6, &a.url("")).await.unwrap();
        for k in [0u64, 1, 2, 4, 5] {
            let r = http
                .get(b.url(&format!("/v1/needles/6/{k}/0/66")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "needle {k} after the import");
            assert_eq!(r.bytes().await.unwrap().as_ref(), &vec![k as u8; 3000][..]);
        }
        a.stop().await;
        b.stop().await;
    });
}

/// A copy the directory moved elsewhere is dropped (`DELETE /v1/volumes/{v}?moved=true`, any
/// state) and stays dropped when a compaction of it was running: before, the drop unlinked
/// the files under the compaction, which then committed and renamed its new files into place,
/// so the store opened the volume again after a restart (and served photos deleted since the
/// move). Now the running compaction finds the copy gone at its final phase and commits
/// nothing. A plain DELETE of an unsealed copy is refused as before.
#[test]
fn a_moved_copy_dropped_during_its_compaction_stays_dropped() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = start_server(dir.path(), ENGINES[0]).await;
        let c = reqwest::Client::new();
        c.post(s.url("/v1/volumes/9"))
            .json(&serde_json::json!({"max_bytes": 2 << 20}))
            .send()
            .await
            .unwrap();
        let ns: Vec<_> = (0..4)
            .map(|a| needle(5, a, 0xabc, &vec![a as u8; 1000]))
            .collect();
        let r = c
            .post(s.url("/v1/volumes/9/batch"))
            .body(encode_batch(&ns))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = c
            .delete(s.url("/v1/needles/9/5/0/abc"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = c.delete(s.url("/v1/volumes/9")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT, "unsealed, not moved");

        let v = s.store.volume(9).unwrap();
        let pause = haystack_store::CompactPause::default();
        let compaction = {
            let (v, p) = (v.clone(), pause.clone());
            tokio::spawn(async move { v.compact_paused(p).await })
        };
        pause.reached.notified().await;
        let r = c
            .delete(s.url("/v1/volumes/9?moved=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        pause.resume.notify_one();
        let done = compaction.await.unwrap();
        assert!(done.is_err(), "the compaction committed: {done:?}");
        drop(v);
        s.stop().await;

        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vol-9"))
            .collect();
        assert!(left.is_empty(), "files left: {left:?}");
        let s = start_server(dir.path(), ENGINES[0]).await;
        let r = c.get(s.url("/v1/volumes/9")).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "the dropped copy came back"
        );
        s.stop().await;
    });
}

/// A moved copy that cannot be opened (quarantined) is dropped by name, and a drop whose
/// files were left (a failure half-way, the volume already out of service) is finished by the
/// next one. Before, the first answered 503 `volume_unavailable` forever, and the second
/// answered 404, which the directory takes as done, while the files stayed and a restart
/// opened the volume again.
#[test]
fn a_moved_copy_quarantined_or_half_dropped_is_dropped_by_name() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = start_server(dir.path(), ENGINES[0]).await;
        for id in [1u32, 2, 3] {
            let v = s.store.create_volume(id, None).await.unwrap();
            v.write_batch(vec![needle(1, 0, 5, b"hello")])
                .await
                .unwrap();
        }
        s.store.close();
        s.stop().await;
        // Volumes 2 and 3 cannot be opened: a byte of their superblock flipped.
        for id in [2, 3] {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.path().join(format!("vol-{id}.dat")))
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, 20).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], 20).unwrap();
        }
        let s = start_server(dir.path(), ENGINES[0]).await;
        let c = reqwest::Client::new();
        let r = c
            .delete(s.url("/v1/volumes/2?moved=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "the quarantined copy");
        // Volume 3's volume file is gone already (a drop that failed after it): the rest
        // goes, and so does its quarantine entry (else heartbeats report it for good).
        std::fs::remove_file(dir.path().join("vol-3.dat")).unwrap();
        let r = c
            .delete(s.url("/v1/volumes/3?moved=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "the half-dropped quarantined copy"
        );
        assert!(
            s.store.list().iter().all(|v| v.id != 3),
            "{:?}",
            s.store.list()
        );
        // Volume 1: its files stay after it is out of service (as a drop failing after it
        // took the copy out of the map leaves them); the next drop removes them.
        std::fs::copy(dir.path().join("vol-1.dat"), dir.path().join("keep.dat")).unwrap();
        let r = c
            .delete(s.url("/v1/volumes/1?moved=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        std::fs::rename(dir.path().join("keep.dat"), dir.path().join("vol-1.dat")).unwrap();
        let r = c
            .delete(s.url("/v1/volumes/1?moved=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "the files left behind");
        let r = c
            .delete(s.url("/v1/volumes/1?moved=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing left");
        s.stop().await;
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vol-"))
            .collect();
        assert!(left.is_empty(), "files left: {left:?}");
        let s = start_server(dir.path(), ENGINES[0]).await;
        assert!(s.store.list().is_empty(), "{:?}", s.store.list());
        s.stop().await;
    });
}
