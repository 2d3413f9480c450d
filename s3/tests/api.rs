//! The S3 operations end to end: buckets, object round trips with their headers, ranges,
//! conditional requests, copy, multi-delete, listing 10,000 keys with delimiters and pages
//! (and keys holding U+10FFFF), a 100 MB multipart upload read back in ranges across parts,
//! and UploadPartCopy.

use base64::Engine;
use md5::{Digest, Md5};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_and_object_round_trips() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("photos-1").await;
    let (s, code) = error_code(c.send(Req::new("PUT", "/photos-1".into())).await).await;
    assert_eq!((s, code.as_str()), (409, "BucketAlreadyOwnedByYou"));
    let r = c.send(Req::new("HEAD", "/photos-1".into())).await;
    assert_eq!(r.status(), 200);
    let (s, code) = error_code(c.get("nope-bucket", "k").await).await;
    assert_eq!((s, code.as_str()), (404, "NoSuchBucket"));

    // A PUT with every stored header and user metadata, and a Content-MD5 that matches.
    let body = b"hello, haystack".to_vec();
    let md5 = Md5::digest(&body);
    let r = c
        .send(
            Req::new("PUT", key_path("photos-1", "dir/hello world.txt"))
                .h("content-type", "text/plain")
                .h("content-encoding", "identity")
                .h("cache-control", "max-age=60")
                .h("content-disposition", "attachment; filename=\"h.txt\"")
                .h("x-amz-meta-colour", "blue")
                .h(
                    "content-md5",
                    &base64::engine::general_purpose::STANDARD.encode(md5),
                )
                .body(body.clone()),
        )
        .await;
    assert_eq!(r.status(), 200);
    let etag = format!("\"{}\"", hex::encode(md5));
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = c.get("photos-1", "dir/hello world.txt").await;
    assert_eq!(r.status(), 200);
    for (k, v) in [
        ("content-type", "text/plain"),
        ("content-encoding", "identity"),
        ("cache-control", "max-age=60"),
        ("content-disposition", "attachment; filename=\"h.txt\""),
        ("x-amz-meta-colour", "blue"),
        ("etag", etag.as_str()),
        ("content-length", "15"),
    ] {
        assert_eq!(r.headers()[k], v, "{k}");
    }
    assert_eq!(r.bytes().await.expect("body").as_ref(), body.as_slice());
    // HEAD: the headers, no body.
    let r = c
        .send(Req::new(
            "HEAD",
            key_path("photos-1", "dir/hello world.txt"),
        ))
        .await;
    assert_eq!(r.headers()["content-length"], "15");
    assert!(r.bytes().await.expect("body").is_empty());
    // Ranges.
    let r = c
        .send(Req::new("GET", key_path("photos-1", "dir/hello world.txt")).h("range", "bytes=7-"))
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 7-14/15");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"haystack");
    let r = c
        .send(Req::new("GET", key_path("photos-1", "dir/hello world.txt")).h("range", "bytes=99-"))
        .await;
    assert_eq!(error_code(r).await, (416, "InvalidRange".to_string()));
    // A wrong Content-MD5: BadDigest and nothing written.
    let r = c
        .send(
            Req::new("PUT", key_path("photos-1", "bad-md5"))
                .h("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")
                .body(b"data".to_vec()),
        )
        .await;
    assert_eq!(error_code(r).await, (400, "BadDigest".to_string()));
    assert_eq!(error_code(c.get("photos-1", "bad-md5").await).await.0, 404);
    // An empty object.
    assert_eq!(c.put("photos-1", "empty", Vec::new()).await.status(), 200);
    let r = c.get("photos-1", "empty").await;
    assert_eq!(r.headers()["content-length"], "0");
    // Overwrite, then delete; a bucket with objects is not deleted.
    assert_eq!(
        c.put("photos-1", "empty", b"now full".to_vec())
            .await
            .status(),
        200
    );
    assert_eq!(
        c.get("photos-1", "empty")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        b"now full"
    );
    let (s, code) = error_code(c.send(Req::new("DELETE", "/photos-1".into())).await).await;
    assert_eq!((s, code.as_str()), (409, "BucketNotEmpty"));
    // DeleteObjects.
    let r = c
        .send(
            Req::new("POST", "/photos-1".into())
                .q("delete", "")
                .body("<Delete><Object><Key>empty</Key></Object><Object><Key>dir/hello world.txt</Key></Object><Object><Key>never-there</Key></Object></Delete>"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    assert_eq!(
        all_between(&text, "<Deleted><Key>", "</Key>").len(),
        3,
        "{text}"
    );
    assert_eq!(
        c.send(Req::new("DELETE", "/photos-1".into()))
            .await
            .status(),
        204
    );
    let (s, _) = error_code(c.send(Req::new("HEAD", "/photos-1".into())).await).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_host_style_addresses_the_same_bucket() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("vhost").await;
    let port = h.url.rsplit(':').next().expect("port").to_string();
    let v = Client {
        host: Some(format!("vhost.s3.localhost:{port}")),
        ..h.client()
    };
    let r = v
        .send(Req::new("PUT", "/dir/k.txt".into()).body(b"by host".to_vec()))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get("vhost", "dir/k.txt")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        b"by host"
    );
    let text = v
        .send(Req::new("GET", "/".into()).q("list-type", "2"))
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(all_between(&text, "<Key>", "</Key>"), ["dir/k.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_and_copy() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("cond").await;
    let r = c.put("cond", "a", b"version one".to_vec()).await;
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    let last_modified = c.get("cond", "a").await.headers()["last-modified"]
        .to_str()
        .expect("date")
        .to_string();
    let get = |hk: &'static str, hv: String| {
        let c = &c;
        async move {
            c.send(Req::new("GET", key_path("cond", "a")).h(hk, &hv))
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("if-match", etag.clone()).await, 200);
    assert_eq!(get("if-match", "\"nope\"".into()).await, 412);
    assert_eq!(get("if-none-match", etag.clone()).await, 304);
    assert_eq!(get("if-none-match", "\"nope\"".into()).await, 200);
    assert_eq!(get("if-modified-since", last_modified.clone()).await, 304);
    assert_eq!(
        get("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT".into()).await,
        200
    );
    assert_eq!(get("if-unmodified-since", last_modified.clone()).await, 200);
    assert_eq!(
        get(
            "if-unmodified-since",
            "Mon, 01 Jan 2001 00:00:00 GMT".into()
        )
        .await,
        412
    );
    // PUT If-None-Match: * creates only.
    let r = c
        .send(
            Req::new("PUT", key_path("cond", "a"))
                .h("if-none-match", "*")
                .body(b"two".to_vec()),
        )
        .await;
    assert_eq!(error_code(r).await, (412, "PreconditionFailed".to_string()));
    assert_eq!(
        c.get("cond", "a")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        b"version one"
    );
    let r = c
        .send(
            Req::new("PUT", key_path("cond", "new"))
                .h("if-none-match", "*")
                .body(b"x".to_vec()),
        )
        .await;
    assert_eq!(r.status(), 200);

    // Copy: metadata kept (COPY) or replaced (REPLACE); copying onto itself unchanged is refused.
    let r = c
        .send(
            Req::new("PUT", key_path("cond", "meta"))
                .h("x-amz-meta-k", "v1")
                .h("content-type", "text/x-one")
                .body(b"copied bytes".to_vec()),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = c
        .send(Req::new("PUT", key_path("cond", "copy1")).h("x-amz-copy-source", "/cond/meta"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").contains("<CopyObjectResult"));
    let r = c.get("cond", "copy1").await;
    assert_eq!(r.headers()["x-amz-meta-k"], "v1");
    assert_eq!(r.headers()["content-type"], "text/x-one");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"copied bytes");
    let r = c
        .send(
            Req::new("PUT", key_path("cond", "copy2"))
                .h("x-amz-copy-source", "cond/meta")
                .h("x-amz-metadata-directive", "REPLACE")
                .h("x-amz-meta-k", "v2")
                .h("content-type", "text/x-two"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = c.get("cond", "copy2").await;
    assert_eq!(r.headers()["x-amz-meta-k"], "v2");
    assert_eq!(r.headers()["content-type"], "text/x-two");
    // The source named with versionId=null (the current object) copies; another version id,
    // or a copy-source date condition that fails, is refused.
    let r = c
        .send(
            Req::new("PUT", key_path("cond", "copy3"))
                .h("x-amz-copy-source", "/cond/meta?versionId=null")
                .h(
                    "x-amz-copy-source-if-modified-since",
                    "Mon, 01 Jan 2001 00:00:00 GMT",
                ),
        )
        .await;
    assert_eq!(r.status(), 200);
    for (k, v) in [
        (
            "x-amz-copy-source",
            "/cond/meta?versionId=L4kqtJlcpXroDTDmpUMLUo",
        ),
        (
            "x-amz-copy-source-if-modified-since",
            "Fri, 01 Jan 2100 00:00:00 GMT",
        ),
        (
            "x-amz-copy-source-if-unmodified-since",
            "Mon, 01 Jan 2001 00:00:00 GMT",
        ),
    ] {
        let mut r = Req::new("PUT", key_path("cond", "copy4")).h(k, v);
        if k != "x-amz-copy-source" {
            r = r.h("x-amz-copy-source", "/cond/meta");
        }
        let (status, _) = error_code(c.send(r).await).await;
        assert_eq!(
            status,
            if k == "x-amz-copy-source" { 400 } else { 412 },
            "{k}"
        );
    }
    assert_eq!(error_code(c.get("cond", "copy4").await).await.0, 404);
    // The source deleted: the copies keep their own bytes.
    assert_eq!(
        c.send(Req::new("DELETE", key_path("cond", "meta")))
            .await
            .status(),
        204
    );
    assert_eq!(
        c.get("cond", "copy2")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        b"copied bytes"
    );
    let r = c
        .send(Req::new("PUT", key_path("cond", "copy1")).h("x-amz-copy-source", "/cond/copy1"))
        .await;
    assert_eq!(error_code(r).await, (400, "InvalidRequest".to_string()));
}

/// If-Range (RFC 9110 §13.1.5, as S3 honours it): a download resumed with `Range` and the
/// old object's validator after the key was overwritten gets the whole new object (200), not
/// a range of it to splice onto the old prefix. The Range is served only when If-Range is the
/// current strong ETag or a date equal to Last-Modified; a weak ETag never matches; If-Range
/// without Range changes nothing; HEAD answers as GET would. Preconditions come first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_range_serves_the_range_only_while_the_object_is_unchanged() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("resume").await;
    let v1 = c.put("resume", "k", b"version one".to_vec()).await;
    assert_eq!(v1.status(), 200);
    let etag1 = v1.headers()["etag"].to_str().expect("etag").to_string();
    let body2 = b"version two, longer".to_vec();
    let v2 = c.put("resume", "k", body2.clone()).await;
    assert_eq!(v2.status(), 200);
    let etag2 = v2.headers()["etag"].to_str().expect("etag").to_string();
    assert_ne!(etag1, etag2);
    let last_modified = c.get("resume", "k").await.headers()["last-modified"]
        .to_str()
        .expect("date")
        .to_string();
    let send = |method: &'static str, headers: Vec<(&'static str, String)>| {
        let c = &c;
        async move {
            let mut r = Req::new(method, key_path("resume", "k"));
            for (k, v) in &headers {
                r = r.h(k, v);
            }
            c.send(r).await
        }
    };
    let full = format!("{}", body2.len());
    let tail = format!("{}", body2.len() - 5);
    let range = format!("bytes 5-{}/{}", body2.len() - 1, body2.len());
    // (If-Range, Range, whether the range is served).
    let cases: Vec<(String, &str, bool)> = vec![
        (etag1.clone(), "bytes=5-", false),
        (etag2.clone(), "bytes=5-", true),
        (etag2.trim_matches('"').to_string(), "bytes=5-", true),
        (format!("W/{etag2}"), "bytes=5-", false),
        (last_modified.clone(), "bytes=5-", true),
        ("Mon, 01 Jan 2001 00:00:00 GMT".into(), "bytes=5-", false),
        ("Fri, 01 Jan 2100 00:00:00 GMT".into(), "bytes=5-", false),
        ("not a validator".into(), "bytes=5-", false),
        // A range past the end is ignored with the rest when If-Range does not match.
        (etag1.clone(), "bytes=999-", false),
    ];
    for (if_range, range_h, served) in &cases {
        let label = format!("If-Range {if_range}, Range {range_h}");
        for method in ["GET", "HEAD"] {
            let r = send(
                method,
                vec![
                    ("range", range_h.to_string()),
                    ("if-range", if_range.clone()),
                ],
            )
            .await;
            let status = r.status().as_u16();
            let cl = r.headers()["content-length"]
                .to_str()
                .expect("cl")
                .to_string();
            let cr = r
                .headers()
                .get("content-range")
                .map(|v| v.to_str().expect("cr").to_string());
            let got = r.bytes().await.expect("body");
            if *served {
                assert_eq!(status, 206, "{method} {label}");
                assert_eq!(cl, tail, "{method} {label}");
                assert_eq!(cr.as_deref(), Some(range.as_str()), "{method} {label}");
                if method == "GET" {
                    assert_eq!(got.as_ref(), &body2[5..], "{method} {label}");
                }
            } else {
                assert_eq!(status, 200, "{method} {label}");
                assert_eq!(cl, full, "{method} {label}");
                assert_eq!(cr, None, "{method} {label}");
                if method == "GET" {
                    assert_eq!(got.as_ref(), body2.as_slice(), "{method} {label}");
                }
            }
            if method == "HEAD" {
                assert!(got.is_empty(), "{method} {label}");
            }
        }
    }
    // The current ETag and an unsatisfiable range: 416 as without If-Range.
    let r = send(
        "GET",
        vec![("range", "bytes=999-".into()), ("if-range", etag2.clone())],
    )
    .await;
    assert_eq!(error_code(r).await, (416, "InvalidRange".to_string()));
    // If-Range without Range is ignored.
    let r = send("GET", vec![("if-range", etag1.clone())]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), body2.as_slice());
    // The preconditions decide first: a failing If-Match is 412, a matching If-None-Match 304.
    let r = send(
        "GET",
        vec![
            ("range", "bytes=5-".into()),
            ("if-range", etag1.clone()),
            ("if-match", etag1.clone()),
        ],
    )
    .await;
    assert_eq!(error_code(r).await, (412, "PreconditionFailed".to_string()));
    let r = send(
        "GET",
        vec![
            ("range", "bytes=5-".into()),
            ("if-range", etag1.clone()),
            ("if-none-match", etag2.clone()),
        ],
    )
    .await;
    assert_eq!(r.status(), 304);
}

async fn list_all(
    c: &Client,
    bucket: &str,
    params: &[(&str, &str)],
    v2: bool,
) -> (Vec<String>, Vec<String>, usize) {
    let (mut keys, mut prefixes, mut pages) = (Vec::new(), Vec::new(), 0);
    let mut token: Option<String> = None;
    loop {
        let mut r = Req::new("GET", format!("/{bucket}"));
        if v2 {
            r = r.q("list-type", "2");
        }
        for (k, v) in params {
            r = r.q(k, v);
        }
        if let Some(t) = &token {
            r = r.q(if v2 { "continuation-token" } else { "marker" }, t);
        }
        let text = c.send(r).await.text().await.expect("body");
        pages += 1;
        keys.extend(all_between(&text, "<Key>", "</Key>"));
        prefixes.extend(all_between(&text, "<CommonPrefixes><Prefix>", "</Prefix>"));
        if between(&text, "<IsTruncated>", "</IsTruncated>").as_deref() != Some("true") {
            return (keys, prefixes, pages);
        }
        token = if v2 {
            between(&text, "<NextContinuationToken>", "</NextContinuationToken>")
        } else {
            between(&text, "<NextMarker>", "</NextMarker>").or_else(|| keys.last().cloned())
        };
        assert!(
            token.is_some(),
            "a truncated page without a next marker: {text}"
        );
        assert!(pages < 100, "listing does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_ten_thousand_keys_with_delimiters_and_pages() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("many").await;
    // 100 directories of 100 empty objects, plus a few at the top; created 64 at a time.
    let mut all: Vec<String> = (0..10_000)
        .map(|i| format!("d{:03}/f{:03}", i / 100, i % 100))
        .collect();
    all.extend(["a-top".to_string(), "z-top".to_string()]);
    for batch in all.chunks(64) {
        let puts = batch.iter().map(|k| c.put("many", k, Vec::new()));
        for r in futures_util::future::join_all(puts).await {
            assert_eq!(r.status(), 200);
        }
    }
    let mut sorted = all.clone();
    sorted.sort();
    // Everything, V2 in pages of 1000 and V1 in pages of 700.
    let (keys, prefixes, pages) = list_all(&c, "many", &[], true).await;
    assert_eq!((keys.len(), prefixes.len(), pages), (10_002, 0, 11));
    assert_eq!(keys, sorted);
    let (keys, _, pages) = list_all(&c, "many", &[("max-keys", "700")], false).await;
    assert_eq!((keys.len(), pages), (10_002, 15));
    assert_eq!(keys, sorted);
    // With a delimiter: 100 common prefixes and the two top-level keys, in 3 pages of 40.
    let (keys, prefixes, pages) =
        list_all(&c, "many", &[("delimiter", "/"), ("max-keys", "40")], true).await;
    assert_eq!(keys, ["a-top", "z-top"]);
    assert_eq!(prefixes.len(), 100);
    assert_eq!(prefixes[0], "d000/");
    assert_eq!(prefixes[99], "d099/");
    assert_eq!(pages, 3);
    let (keys, prefixes, _) =
        list_all(&c, "many", &[("delimiter", "/"), ("max-keys", "33")], false).await;
    assert_eq!((keys.len(), prefixes.len()), (2, 100));
    // A prefix, with start-after.
    let (keys, _, _) = list_all(
        &c,
        "many",
        &[("prefix", "d042/"), ("start-after", "d042/f089")],
        true,
    )
    .await;
    assert_eq!(keys.len(), 10);
    assert_eq!(keys[0], "d042/f090");
    // max-keys 0 and a prefix nothing has.
    let text = c
        .send(
            Req::new("GET", "/many".into())
                .q("list-type", "2")
                .q("max-keys", "0"),
        )
        .await
        .text()
        .await
        .expect("body");
    assert!(text.contains("<KeyCount>0</KeyCount>"), "{text}");
    let (keys, _, _) = list_all(&c, "many", &[("prefix", "nothing/")], true).await;
    assert!(keys.is_empty());
}

/// Keys holding U+10FFFF, the largest character, right after a common prefix: listing with a
/// delimiter must still step past the prefix (each comes back once, pages end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_steps_past_prefixes_of_keys_holding_the_largest_character() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("maxchar").await;
    for k in [
        "a/\u{10FFFF}x",
        "a/\u{10FFFF}\u{10FFFF}",
        "a/\u{10FFFF}/deeper",
        "a/b",
        "b/y",
        "c",
    ] {
        assert_eq!(
            c.put("maxchar", k, b"v".to_vec()).await.status(),
            200,
            "{k}"
        );
    }
    for v2 in [true, false] {
        // One page.
        let (keys, prefixes, pages) = list_all(&c, "maxchar", &[("delimiter", "/")], v2).await;
        assert_eq!(
            (keys, prefixes, pages),
            (
                vec!["c".to_string()],
                vec!["a/".to_string(), "b/".to_string()],
                1
            )
        );
        // Pages of one entry.
        let (keys, prefixes, pages) =
            list_all(&c, "maxchar", &[("delimiter", "/"), ("max-keys", "1")], v2).await;
        assert_eq!(
            (keys, prefixes, pages),
            (
                vec!["c".to_string()],
                vec!["a/".to_string(), "b/".to_string()],
                3
            )
        );
        // Under a/, with the largest character as the delimiter itself.
        let (keys, prefixes, _) = list_all(
            &c,
            "maxchar",
            &[
                ("prefix", "a/"),
                ("delimiter", "\u{10FFFF}"),
                ("max-keys", "1"),
            ],
            v2,
        )
        .await;
        assert_eq!(
            (keys, prefixes),
            (vec!["a/b".to_string()], vec!["a/\u{10FFFF}".to_string()])
        );
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_of_100_mb_read_in_ranges_across_parts() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("big").await;
    let part = 8 << 20;
    let total = 100 << 20;
    let body = pseudo_random(total, 7);
    let r = c
        .send(
            Req::new("POST", key_path("big", "video.bin"))
                .q("uploads", "")
                .h("content-type", "video/mp4"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let upload =
        between(&r.text().await.expect("body"), "<UploadId>", "</UploadId>").expect("upload id");
    let chunks: Vec<&[u8]> = body.chunks(part).collect();
    let mut etags = Vec::new();
    let mut md5s = Vec::new();
    for (i, p) in chunks.iter().enumerate() {
        let r = c
            .send(
                Req::new("PUT", key_path("big", "video.bin"))
                    .q("partNumber", &(i + 1).to_string())
                    .q("uploadId", &upload)
                    .body(p.to_vec())
                    .unsigned_payload(),
            )
            .await;
        assert_eq!(r.status(), 200, "part {}", i + 1);
        etags.push(r.headers()["etag"].to_str().expect("etag").to_string());
        md5s.extend_from_slice(&Md5::digest(p));
    }
    // ListParts sees them all.
    let text = c
        .send(Req::new("GET", key_path("big", "video.bin")).q("uploadId", &upload))
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(
        all_between(&text, "<PartNumber>", "</PartNumber>").len(),
        chunks.len()
    );
    // The upload is listed until it completes.
    let text = c
        .send(Req::new("GET", "/big".into()).q("uploads", ""))
        .await
        .text()
        .await
        .expect("body");
    assert!(text.contains(&upload), "{text}");
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (i, e) in etags.iter().enumerate() {
        xml.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{e}</ETag></Part>",
            i + 1
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    let r = c
        .send(
            Req::new("POST", key_path("big", "video.bin"))
                .q("uploadId", &upload)
                .body(xml),
        )
        .await;
    assert_eq!(r.status(), 200);
    let want = format!("\"{}-{}\"", hex::encode(Md5::digest(&md5s)), chunks.len());
    let text = r.text().await.expect("body");
    assert!(
        text.contains(&want.replace('"', "&quot;")) || text.contains(&want),
        "{text}"
    );
    let r = c.send(Req::new("HEAD", key_path("big", "video.bin"))).await;
    assert_eq!(r.headers()["content-length"], total.to_string().as_str());
    assert_eq!(r.headers()["etag"], want.as_str());
    assert_eq!(r.headers()["content-type"], "video/mp4");
    // Ranges inside a part, across one boundary, across several, the tail.
    for (a, b) in [
        (0usize, 99usize),
        (part - 10, part + 10),
        (3 * part - 1, 6 * part + 5),
        (total - 1000, total - 1),
    ] {
        let r = c
            .send(
                Req::new("GET", key_path("big", "video.bin")).h("range", &format!("bytes={a}-{b}")),
            )
            .await;
        assert_eq!(r.status(), 206);
        let got = r.bytes().await.expect("body");
        assert!(got.as_ref() == &body[a..=b], "range {a}-{b}");
    }
    let whole = c.get("big", "video.bin").await.bytes().await.expect("body");
    assert_eq!(whole.len(), total);
    assert!(whole.as_ref() == body.as_slice());
    // Completed: no longer listed, its parts gone.
    let text = c
        .send(Req::new("GET", "/big".into()).q("uploads", ""))
        .await
        .text()
        .await
        .expect("body");
    assert!(!text.contains(&upload), "{text}");
}

/// `haystack gc` deletes a needle only after the directory's condemn answers that its id is
/// not a live photo: an object's data ids answer live, a replaced object's old ids answer
/// deleted (garbage), and the object reads back whole after gc's question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_sees_object_data_as_live() {
    use haystack_proto::directory::CondemnState;
    use haystack_s3::meta::ObjectRecord;

    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("gc-bucket").await;
    let body = vec![9u8; (2 << 20) + 5];
    assert_eq!(c.put("gc-bucket", "obj", body.clone()).await.status(), 200);
    let bucket = h.s3.bucket("gc-bucket").await.expect("bucket").value;
    let rec: ObjectRecord = h.s3.object(&bucket, "obj").await.expect("record").value;
    assert_eq!(rec.data.len(), 1);
    assert_eq!(rec.data[0].chunks.len(), 3, "1 MiB chunks");
    let dir = h.s3.meta.directory();
    let old = rec.data[0].photo;
    assert_eq!(
        dir.condemn(old).await.expect("condemn").state,
        CondemnState::Live
    );
    assert!(
        c.get("gc-bucket", "obj")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref()
            == body.as_slice()
    );
    // Overwritten: the old id is garbage, the new one live.
    assert_eq!(
        c.put("gc-bucket", "obj", b"new".to_vec()).await.status(),
        200
    );
    let rec: ObjectRecord = h.s3.object(&bucket, "obj").await.expect("record").value;
    assert_eq!(
        dir.condemn(old).await.expect("condemn").state,
        CondemnState::Deleted
    );
    assert_eq!(
        dir.condemn(rec.data[0].photo).await.expect("condemn").state,
        CondemnState::Live
    );
    assert_eq!(
        c.get("gc-bucket", "obj")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        b"new"
    );
}

/// A store that stops taking writes (down, full, read-only) must not fail PUTs while other
/// volumes can take them: the first chunk moves to another volume, as the uploader's photos
/// do. Regression: the S3 role answered 503 SlowDown for every PUT assigned to such a volume
/// (seen as failed PUTs in the Garage side-by-side run when a volume filled up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_move_to_another_volume_when_a_store_refuses_them() {
    let mut h = Harness::start_with(haystack_testkit::ClusterOptions {
        stores: 2,
        replication: 1,
        min_writable_volumes: 4,
        volume_bytes: 256 << 20,
        // The directory keeps assigning the stopped store's volumes for the whole test.
        store_timeout_ms: 120_000,
        ..Default::default()
    })
    .await;
    let c = h.client();
    c.create_bucket("moves").await;
    // Writable volumes on both stores: the cluster may have made its first ones before the
    // second store registered, so more are created (placement favours the store with fewer)
    // until both hold some.
    let urls = [h.cluster.store_url(0), h.cluster.store_url(1)];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let vols = h.cluster.volumes().await;
        let on = |url: &str| {
            vols.iter()
                .filter(|v| v.writable && v.replicas.iter().any(|r| r.url == url))
                .count()
        };
        if urls.iter().all(|u| on(u) > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "precondition: writable volumes on both stores: {vols:?}"
        );
        let n = vols.len();
        let r = h
            .cluster
            .admin_http()
            .post(format!("{}/v1/volumes", h.cluster.directory_url()))
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("create volume");
        assert!(r.status().is_success(), "{:?}", r.text().await);
        h.cluster.wait_writable(n + 1).await;
    }
    h.cluster.stop_store(1);
    // Small objects (one chunk) and one of 2.5 chunks (1 MiB chunks in this harness), until
    // some PUT was assigned a volume of the stopped store and moved (at least 12, at most 80).
    let moved = || async {
        let metrics = reqwest::get(format!("{}/metrics", h.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        metrics
            .lines()
            .find(|l| l.starts_with("haystack_s3_chunk_write_failures_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            > 0.0
    };
    for i in 0..80usize {
        if i >= 12 && moved().await {
            return;
        }
        let size = if i == 5 { (5 << 20) / 2 } else { 1000 + i };
        let body: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
        let r = c
            .send(Req::new("PUT", key_path("moves", &format!("k{i}"))).body(body.clone()))
            .await;
        assert_eq!(r.status(), 200, "PUT {i}: {:?}", r.text().await);
        let r = c.get("moves", &format!("k{i}")).await;
        assert_eq!(r.status(), 200, "GET {i}");
        assert_eq!(
            r.bytes().await.expect("body").as_ref(),
            body.as_slice(),
            "k{i}"
        );
    }
    panic!("80 PUTs and none was assigned a volume of the stopped store");
}

/// When every writable volume fills at once, the directory answers assigns 503
/// `no_writable_volume` until its maintenance has made new ones: a PUT waits for them (about
/// 3 s), as the uploader does. Regression: the S3 role passed the 503 on as SlowDown at once
/// (three 1 MiB PUTs of the Garage side-by-side run of 2026-12-02 20:08 UTC failed so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_wait_for_new_volumes_when_every_writable_one_fills() {
    let h = Harness::start_with(haystack_testkit::ClusterOptions {
        stores: 2,
        replication: 1,
        min_writable_volumes: 1,
        // Room for two 1 MiB objects per volume.
        volume_bytes: 5 << 19,
        ..Default::default()
    })
    .await;
    let c = h.client();
    c.create_bucket("fills").await;
    let mut failed = Vec::new();
    for round in 0..4usize {
        // Six at once: more than the writable volumes hold.
        let puts = (0..6usize).map(|i| {
            let c = &c;
            async move {
                let k = format!("r{round}-{i}");
                let body = vec![(round * 6 + i) as u8; 1 << 20];
                let r = c
                    .send(Req::new("PUT", key_path("fills", &k)).body(body))
                    .await;
                (k, r.status().as_u16(), r.text().await.unwrap_or_default())
            }
        });
        for (k, status, text) in futures_util::future::join_all(puts).await {
            if status != 200 {
                failed.push(format!("{k}: {status} {text}"));
            }
        }
    }
    assert!(failed.is_empty(), "PUTs failed: {failed:#?}");
    for round in 0..4usize {
        for i in 0..6usize {
            let r = c.get("fills", &format!("r{round}-{i}")).await;
            assert_eq!(r.status(), 200);
            let b = r.bytes().await.expect("body");
            assert!(b.len() == 1 << 20 && b.iter().all(|x| *x == (round * 6 + i) as u8));
        }
    }
}

/// Starts a multipart upload of `bucket/key`; its upload id.
async fn start_upload(c: &Client, bucket: &str, key: &str) -> String {
    let r = c
        .send(Req::new("POST", key_path(bucket, key)).q("uploads", ""))
        .await;
    assert_eq!(r.status(), 200);
    between(&r.text().await.expect("body"), "<UploadId>", "</UploadId>").expect("upload id")
}

/// UploadPartCopy of `source` (`/bucket/key` as sent) into part `n`, with more headers.
async fn copy_part(
    c: &Client,
    (bucket, key, upload): (&str, &str, &str),
    n: u32,
    source: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = Req::new("PUT", key_path(bucket, key))
        .q("partNumber", &n.to_string())
        .q("uploadId", upload)
        .h("x-amz-copy-source", source);
    for (k, v) in headers {
        r = r.h(k, v);
    }
    c.send(r).await
}

/// Completes an upload with these parts (number, quoted ETag); the answer.
async fn complete_upload(
    c: &Client,
    bucket: &str,
    key: &str,
    upload: &str,
    parts: &[(u32, String)],
) -> reqwest::Response {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (n, e) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    c.send(
        Req::new("POST", key_path(bucket, key))
            .q("uploadId", upload)
            .body(xml),
    )
    .await
}

/// The quoted ETag of a CopyPartResult (XML-escaped quotes or not).
fn copy_part_etag(text: &str) -> String {
    let e = between(text, "<ETag>", "</ETag>").unwrap_or_else(|| panic!("no ETag: {text}"));
    e.replace("&quot;", "\"")
}

/// UploadPartCopy: a part copied from a whole object, one from a range of it, and one
/// uploaded, completed into one object with the multipart ETag; the object keeps its bytes
/// when the source is overwritten and deleted (its data ids stay live for gc, the source's
/// old ones do not). A range across the parts of a multipart source copies too. Before
/// UploadPartCopy was implemented every copy here answered 501 NotImplemented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_part_copy_whole_ranged_and_uploaded_parts() {
    use haystack_proto::directory::CondemnState;
    use haystack_s3::meta::ObjectRecord;

    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("pc-src").await;
    c.create_bucket("pc-dst").await;
    // 6 MiB + 123 bytes: seven 1 MiB chunks in this harness, the last a short one.
    let src = pseudo_random((6 << 20) + 123, 11);
    let r = c.put("pc-src", "dir/source one.bin", src.clone()).await;
    assert_eq!(r.status(), 200);
    let src_etag = r.headers()["etag"].to_str().expect("etag").to_string();
    let upload = start_upload(&c, "pc-dst", "joined.bin").await;
    let dst = ("pc-dst", "joined.bin", upload.as_str());

    // Part 1: the whole source (the copy source URL-encoded, as SDKs send it).
    let r = copy_part(&c, dst, 1, "/pc-src/dir/source%20one.bin", &[]).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    assert!(text.contains("<CopyPartResult"), "{text}");
    assert!(text.contains("<LastModified>"), "{text}");
    let e1 = copy_part_etag(&text);
    assert_eq!(e1, src_etag, "a whole copy's ETag is the source's MD5");
    // Part 2: an unaligned range across chunk boundaries, 5 MiB + 10 bytes, with a source
    // condition that holds (no leading slash, versionId=null: both as S3 takes them).
    let (first, last) = (1000usize, 1000 + (5 << 20) + 9);
    let r = copy_part(
        &c,
        dst,
        2,
        "pc-src/dir/source%20one.bin?versionId=null",
        &[
            ("x-amz-copy-source-range", &format!("bytes={first}-{last}")),
            ("x-amz-copy-source-if-match", &src_etag),
            (
                "x-amz-copy-source-if-unmodified-since",
                "Fri, 01 Jan 2100 00:00:00 GMT",
            ),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let e2 = copy_part_etag(&r.text().await.expect("body"));
    assert_eq!(
        e2,
        format!("\"{}\"", hex::encode(Md5::digest(&src[first..=last])))
    );
    // Part 3: uploaded.
    let tail = b"and an uploaded tail".to_vec();
    let r = c
        .send(
            Req::new("PUT", key_path("pc-dst", "joined.bin"))
                .q("partNumber", "3")
                .q("uploadId", &upload)
                .body(tail.clone()),
        )
        .await;
    assert_eq!(r.status(), 200);
    let e3 = r.headers()["etag"].to_str().expect("etag").to_string();
    // ListParts sees the copied sizes.
    let text = c
        .send(Req::new("GET", key_path("pc-dst", "joined.bin")).q("uploadId", &upload))
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(
        all_between(&text, "<Size>", "</Size>"),
        [
            src.len().to_string(),
            (last - first + 1).to_string(),
            tail.len().to_string()
        ]
    );
    let r = complete_upload(
        &c,
        "pc-dst",
        "joined.bin",
        &upload,
        &[(1, e1.clone()), (2, e2.clone()), (3, e3.clone())],
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut md5s = Vec::new();
    for e in [&e1, &e2, &e3] {
        md5s.extend(hex::decode(e.trim_matches('"')).expect("hex etag"));
    }
    let want_etag = format!("\"{}-3\"", hex::encode(Md5::digest(&md5s)));
    let mut want = src.clone();
    want.extend_from_slice(&src[first..=last]);
    want.extend_from_slice(&tail);
    // The boundary between the two copied parts is at src.len().
    let boundary = src.len();
    let check = |label: &'static str| {
        let (c, want, want_etag) = (&c, &want, &want_etag);
        async move {
            let r = c.get("pc-dst", "joined.bin").await;
            assert_eq!(r.status(), 200, "{label}");
            assert_eq!(r.headers()["etag"], want_etag.as_str(), "{label}");
            let got = r.bytes().await.expect("body");
            assert!(got.as_ref() == want.as_slice(), "{label}: bytes differ");
            let (a, b) = (boundary - 5, boundary + 15);
            let r = c
                .send(
                    Req::new("GET", key_path("pc-dst", "joined.bin"))
                        .h("range", &format!("bytes={a}-{b}")),
                )
                .await;
            assert_eq!(r.status(), 206, "{label}");
            let got = r.bytes().await.expect("body");
            assert!(got.as_ref() == &want[a..=b], "{label}: range differs");
        }
    };
    check("completed").await;

    // The source overwritten, then deleted: the copied parts keep their own bytes.
    let bucket = h.s3.bucket("pc-src").await.expect("bucket").value;
    let old: ObjectRecord =
        h.s3.object(&bucket, "dir/source one.bin")
            .await
            .expect("record")
            .value;
    assert_eq!(
        c.put("pc-src", "dir/source one.bin", b"replaced".to_vec())
            .await
            .status(),
        200
    );
    check("source overwritten").await;
    assert_eq!(
        c.send(Req::new("DELETE", key_path("pc-src", "dir/source one.bin")))
            .await
            .status(),
        204
    );
    check("source deleted").await;
    // What gc asks of every id: the source's old data is garbage, the object's is live.
    let dir = h.s3.meta.directory();
    for d in &old.data {
        assert_eq!(
            dir.condemn(d.photo).await.expect("condemn").state,
            CondemnState::Deleted
        );
    }
    let dst_bucket = h.s3.bucket("pc-dst").await.expect("bucket").value;
    let joined: ObjectRecord =
        h.s3.object(&dst_bucket, "joined.bin")
            .await
            .expect("record")
            .value;
    assert_eq!(joined.data.len(), 3);
    for d in &joined.data {
        assert!(
            old.data.iter().all(|o| o.photo != d.photo),
            "shared data id"
        );
        assert_eq!(
            dir.condemn(d.photo).await.expect("condemn").state,
            CondemnState::Live
        );
    }
    check("after gc's questions").await;

    // A range across the parts of a multipart source (the object just made), as the one part
    // of another upload.
    let upload2 = start_upload(&c, "pc-dst", "second.bin").await;
    let (a, b) = (src.len() - 100, src.len() + 100);
    let r = copy_part(
        &c,
        ("pc-dst", "second.bin", &upload2),
        1,
        "/pc-dst/joined.bin",
        &[("x-amz-copy-source-range", &format!("bytes={a}-{b}"))],
    )
    .await;
    assert_eq!(r.status(), 200);
    let e = copy_part_etag(&r.text().await.expect("body"));
    let r = complete_upload(&c, "pc-dst", "second.bin", &upload2, &[(1, e)]).await;
    assert_eq!(r.status(), 200);
    let got = c
        .get("pc-dst", "second.bin")
        .await
        .bytes()
        .await
        .expect("body");
    assert!(got.as_ref() == &want[a..=b]);
}

/// UploadPartCopy refusals, each an S3 error that records no part: a range past the source
/// or malformed, a missing source key or bucket, a source condition that fails, a version
/// other than null, a key that may not read the source bucket, an unknown upload. A copied
/// part keeps UploadPart's size rule at completion (EntityTooSmall but the last). Before
/// UploadPartCopy was implemented these answered 501 NotImplemented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_part_copy_refusals_commit_nothing() {
    use haystack_s3::keys::Grant;

    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("pcr-src").await;
    c.create_bucket("pcr-dst").await;
    let r = c.put("pcr-src", "small", b"0123456789".to_vec()).await;
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    let upload = start_upload(&c, "pcr-dst", "k").await;
    let dst = ("pcr-dst", "k", upload.as_str());
    let src = "/pcr-src/small";
    let refused = |n: u32, source: &'static str, headers: Vec<(&'static str, String)>| {
        let c = &c;
        async move {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            error_code(copy_part(c, dst, n, source, &hs).await).await
        }
    };
    let invalid = (400, "InvalidArgument".to_string());
    // Ranges: past the end (S3 answers InvalidArgument), reversed, malformed, open-ended.
    for range in ["bytes=0-10", "bytes=10-10", "bytes=5-4"] {
        assert_eq!(
            refused(4, src, vec![("x-amz-copy-source-range", range.into())]).await,
            invalid,
            "{range}"
        );
    }
    for range in ["bytes=3-", "bytes=-3", "0-3", "bytes=a-b", "bytes=0-1,3-4"] {
        assert_eq!(
            refused(4, src, vec![("x-amz-copy-source-range", range.into())]).await,
            invalid,
            "{range}"
        );
    }
    // Missing source key, bucket; a malformed source.
    assert_eq!(
        refused(4, "/pcr-src/nope", vec![]).await,
        (404, "NoSuchKey".into())
    );
    assert_eq!(
        refused(4, "/no-such-bucket-x/small", vec![]).await,
        (404, "NoSuchBucket".into())
    );
    assert_eq!(refused(4, "/pcr-src", vec![]).await, invalid);
    // Versions other than null.
    assert_eq!(
        refused(4, "/pcr-src/small?versionId=3HL4kqtJlcpXroDTDmJ", vec![]).await,
        invalid
    );
    // Source conditions that fail: 412.
    let failed = (412, "PreconditionFailed".to_string());
    for (k, v) in [
        ("x-amz-copy-source-if-match", "\"0000\"".to_string()),
        ("x-amz-copy-source-if-none-match", etag.clone()),
        (
            "x-amz-copy-source-if-unmodified-since",
            "Mon, 01 Jan 2001 00:00:00 GMT".to_string(),
        ),
        (
            "x-amz-copy-source-if-modified-since",
            "Fri, 01 Jan 2100 00:00:00 GMT".to_string(),
        ),
    ] {
        assert_eq!(refused(4, src, vec![(k, v)]).await, failed, "{k}");
    }
    // An unknown upload.
    let r = copy_part(&c, ("pcr-dst", "k", "0000nosuchupload"), 1, src, &[]).await;
    assert_eq!(error_code(r).await, (404, "NoSuchUpload".to_string()));
    // A bad part number.
    assert_eq!(refused(0, src, vec![]).await, invalid);
    // A key that may write the destination but not read the source bucket.
    let (id, secret) =
        h.s3.create_key(
            vec![Grant {
                bucket: "pcr-dst".into(),
                read: true,
                write: true,
            }],
            false,
        )
        .await
        .expect("key");
    let writer = Client {
        key: id,
        secret,
        ..h.client()
    };
    let r = copy_part(&writer, dst, 4, src, &[]).await;
    assert_eq!(error_code(r).await, (403, "AccessDenied".to_string()));
    // Nothing was recorded for any of them.
    let text = c
        .send(Req::new("GET", key_path("pcr-dst", "k")).q("uploadId", &upload))
        .await
        .text()
        .await
        .expect("body");
    assert!(
        all_between(&text, "<PartNumber>", "</PartNumber>").is_empty(),
        "{text}"
    );

    // The same key may copy within its own bucket; a small copied part that is not the last
    // fails completion as a small uploaded part does.
    assert_eq!(c.put("pcr-dst", "own", b"abc".to_vec()).await.status(), 200);
    let r = copy_part(&writer, dst, 1, "/pcr-dst/own", &[]).await;
    assert_eq!(r.status(), 200);
    let e1 = copy_part_etag(&r.text().await.expect("body"));
    let r = copy_part(&c, dst, 2, src, &[("x-amz-copy-source-range", "bytes=2-5")]).await;
    assert_eq!(r.status(), 200);
    let e2 = copy_part_etag(&r.text().await.expect("body"));
    let r = complete_upload(
        &c,
        "pcr-dst",
        "k",
        &upload,
        &[(1, e1.clone()), (2, e2.clone())],
    )
    .await;
    assert_eq!(error_code(r).await, (400, "EntityTooSmall".to_string()));
    // As the one part, it completes.
    let r = complete_upload(&c, "pcr-dst", "k", &upload, &[(2, e2)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get("pcr-dst", "k")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        b"2345"
    );
}

/// Regression: CompleteMultipartUpload read the parts and then wrote the object record, and
/// nothing held the upload in between: a part uploaded again meanwhile had the data it
/// replaced deleted, an abort meanwhile deleted every part's data, and a second complete
/// could pick other parts; the completed (acknowledged) object then named deleted bytes.
/// Now a complete claims the upload first (`Upload::completing_ms`): while the claim is
/// fresh, aborts and other completes are refused and a replaced part's data is kept; after
/// a complete that died (its claim expired), an abort keeps the data the object names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_holds_its_upload_against_part_replacement_and_abort() {
    use haystack_s3::error::S3Error;
    use haystack_s3::meta::{upload_key, ObjectRecord, Part, Upload};
    let h = Harness::start().await;
    let s3 = &h.s3;
    let dir = s3.meta.directory().clone();
    s3.create_bucket("claims").await.unwrap();
    let b = s3.bucket("claims").await.unwrap().value;
    let up = s3.create_upload(&b, "k", Default::default()).await.unwrap();
    let (b, up) = (&b, &up);
    let part = |n: u32, bytes: &'static [u8]| async move {
        let mut w = s3.data.writer(bytes.len() as u64);
        w.write(bytes::Bytes::from_static(bytes)).await.unwrap();
        let w = w.finish_uncommitted().await.unwrap().unwrap();
        let p = Part {
            number: n,
            etag: format!("{n}"),
            size: bytes.len() as u64,
            last_modified_ms: 1,
            data: Some(w.data.clone()),
        };
        s3.put_part(b, "k", &p, up, Some(w.commit)).await.unwrap();
        w.data
    };
    let first = part(1, b"first version of part 1").await;
    let other = part(2, b"part 2").await;
    // A complete claims the upload (as `S3::complete` does before it reads the parts).
    let claim = |at: u64| async move {
        let u = s3.upload(b, "k", up).await.unwrap();
        let held = Upload {
            completing_ms: Some(at),
            ..u.value
        };
        assert!(s3
            .meta
            .put(b.uploads(), &upload_key("k", up), Some(u.version), &held)
            .await
            .unwrap());
    };
    // A complete that fails before its write (a part it names does not match) releases
    // its claim: the upload is free again at once.
    assert!(matches!(
        s3.complete(b, "k", up, &[(1, "not-the-etag".into())]).await,
        Err(S3Error::InvalidPart)
    ));
    let u = s3.upload(b, "k", up).await.unwrap();
    assert_eq!(
        u.value.completing_ms, None,
        "a failed complete kept its claim"
    );
    claim(haystack_s3::service::now_ms()).await;
    assert!(
        matches!(
            s3.abort(b, "k", up).await,
            Err(S3Error::ConditionalRequestConflict)
        ),
        "an abort went under a complete"
    );
    assert!(
        matches!(
            s3.complete(b, "k", up, &[(1, "1".into())]).await,
            Err(S3Error::ConditionalRequestConflict)
        ),
        "a second complete went under the first"
    );
    // A part write that passed its check before the claim lands now: the data it replaces
    // may be what the complete read, so it stays.
    let second = part(1, b"second version of part 1").await;
    assert!(
        dir.lookup(first.photo).await.is_ok(),
        "the replaced part's data was deleted under a complete"
    );
    // That complete died after writing the object (naming the first version), before it
    // removed the upload; its claim expired. An abort now removes the upload and the data
    // of its parts, except what the object names.
    let rec = ObjectRecord {
        size: 23,
        etag: "x-1".into(),
        last_modified_ms: 1,
        headers: Default::default(),
        data: vec![first.clone()],
        part_sizes: vec![23],
        checksum: None,
    };
    s3.put_object(b, "k", &rec, false, None, None)
        .await
        .unwrap();
    claim(1).await;
    s3.abort(b, "k", up).await.unwrap();
    assert!(
        dir.lookup(first.photo).await.is_ok(),
        "the object's data was deleted"
    );
    for (what, d) in [("the second version", &second), ("part 2", &other)] {
        let e = dir.lookup(d.photo).await.expect_err(what);
        assert!(e.is_not_found(), "{what} was not deleted: {e}");
    }
    assert!(matches!(
        s3.upload(b, "k", up).await,
        Err(S3Error::NoSuchUpload)
    ));
}

/// After a complete that died past its object write (its claim expired), a complete again
/// answers the object the first one wrote while it stands, and writes nothing once it was
/// deleted (its data went with it). Before, it claimed the upload anew and wrote the object
/// again: a deleted object came back, naming deleted bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_after_one_that_died_settles_and_never_revives_a_deleted_object() {
    use haystack_s3::error::S3Error;
    use haystack_s3::meta::{upload_key, ObjectRecord, Part, Upload};
    let h = Harness::start().await;
    let s3 = &h.s3;
    let dir = s3.meta.directory().clone();
    s3.create_bucket("settle").await.unwrap();
    let b = &s3.bucket("settle").await.unwrap().value;
    let mut uploads = Vec::new();
    for key in ["a", "b"] {
        let up = s3.create_upload(b, key, Default::default()).await.unwrap();
        let mut w = s3.data.writer(5);
        w.write(bytes::Bytes::from_static(b"bytes")).await.unwrap();
        let w = w.finish_uncommitted().await.unwrap().unwrap();
        let p = Part {
            number: 1,
            etag: "0123abcd".into(),
            size: 5,
            last_modified_ms: 1,
            data: Some(w.data.clone()),
        };
        s3.put_part(b, key, &p, &up, Some(w.commit)).await.unwrap();
        // A complete claimed the upload long ago, wrote the object and died.
        let rec = ObjectRecord {
            size: 5,
            etag: "x-1".into(),
            last_modified_ms: 1,
            headers: Default::default(),
            data: vec![w.data.clone()],
            part_sizes: vec![5],
            checksum: None,
        };
        s3.put_object(b, key, &rec, false, None, None)
            .await
            .unwrap();
        let u = s3.upload(b, key, &up).await.unwrap();
        let stale = Upload {
            completing_ms: Some(1),
            ..u.value
        };
        assert!(s3
            .meta
            .put(b.uploads(), &upload_key(key, &up), Some(u.version), &stale)
            .await
            .unwrap());
        uploads.push((key, up, w.data));
    }
    let listed = [(1i64, "\"0123abcd\"".to_string())];
    // "a" stands: the complete answers it and finishes the upload; its data stays.
    let (key, up, data) = &uploads[0];
    let o = s3.complete(b, key, up, &listed).await.unwrap();
    assert_eq!(o.data[0].photo, data.photo);
    assert!(matches!(
        s3.upload(b, key, up).await,
        Err(S3Error::NoSuchUpload)
    ));
    assert!(dir.lookup(data.photo).await.is_ok());
    // "b" was deleted since, its data with it: nothing is written, no object comes back.
    let (key, up, data) = &uploads[1];
    s3.delete_object(b, key).await.unwrap();
    assert!(dir.lookup(data.photo).await.is_err());
    assert!(matches!(
        s3.complete(b, key, up, &listed).await,
        Err(S3Error::NoSuchUpload)
    ));
    assert!(
        matches!(s3.object(b, key).await, Err(S3Error::NoSuchKey)),
        "a deleted object came back"
    );
    // The upload can still be aborted.
    s3.abort(b, key, up).await.unwrap();
}
