//! Bad input gets a clear S3 error and commits nothing: malformed XML, oversize headers, bad
//! part numbers, completes with parts out of order or missing, a body shorter than its
//! Content-Length, unsupported sub-resources, an aws-chunked chunk declared huge or trailer
//! lines without end, `response-*` overrides that are no header values.

use std::io::{Read, Write};

use crate::common::*;

async fn new_upload(c: &Client, key: &str) -> String {
    let r = c
        .send(Req::new("POST", key_path("bad", key)).q("uploads", ""))
        .await;
    between(&r.text().await.expect("body"), "<UploadId>", "</UploadId>").expect("upload id")
}

async fn put_part(
    c: &Client,
    key: &str,
    upload: &str,
    n: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    c.send(
        Req::new("PUT", key_path("bad", key))
            .q("partNumber", n)
            .q("uploadId", upload)
            .body(body)
            .unsigned_payload(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_commits_nothing() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("bad").await;

    // Malformed XML bodies.
    let r = c
        .send(
            Req::new("POST", "/bad".into())
                .q("delete", "")
                .body("<Delete><Object><Key>x</Key>"),
        )
        .await;
    assert_eq!(error_code(r).await, (400, "MalformedXML".to_string()));
    let upload = new_upload(&c, "mp").await;
    let r = c
        .send(
            Req::new("POST", key_path("bad", "mp"))
                .q("uploadId", &upload)
                .body("not xml at all"),
        )
        .await;
    assert_eq!(error_code(r).await, (400, "MalformedXML".to_string()));

    // Part numbers: zero, negative, too large, not a number.
    for n in ["0", "-1", "10001", "99999999999999999999", "abc"] {
        let r = put_part(&c, "mp", &upload, n, b"x".to_vec()).await;
        assert_eq!(
            error_code(r).await,
            (400, "InvalidArgument".to_string()),
            "part {n}"
        );
    }
    // A part of an upload that does not exist.
    let r = put_part(&c, "mp", "0000nosuchupload", "1", b"x".to_vec()).await;
    assert_eq!(error_code(r).await, (404, "NoSuchUpload".to_string()));

    // Complete with parts out of order, missing, with a wrong ETag, or too small.
    let p1 = vec![1u8; 5 << 20];
    let e1 = put_part(&c, "mp", &upload, "1", p1).await.headers()["etag"]
        .to_str()
        .expect("etag")
        .to_string();
    let e2 = put_part(&c, "mp", &upload, "2", vec![2u8; 1000])
        .await
        .headers()["etag"]
        .to_str()
        .expect("etag")
        .to_string();
    let complete = |parts: &[(u32, &str)]| {
        let mut x = String::from("<CompleteMultipartUpload>");
        for (n, e) in parts {
            x.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
            ));
        }
        x.push_str("</CompleteMultipartUpload>");
        x
    };
    for (parts, want) in [
        (vec![(2, e2.as_str()), (1, e1.as_str())], "InvalidPartOrder"),
        (vec![(1, e1.as_str()), (3, e2.as_str())], "InvalidPart"),
        (vec![(1, "\"0123\""), (2, e2.as_str())], "InvalidPart"),
        (vec![(2, e2.as_str()), (3, e2.as_str())], "InvalidPart"),
        (vec![], "MalformedXML"),
    ] {
        let r = c
            .send(
                Req::new("POST", key_path("bad", "mp"))
                    .q("uploadId", &upload)
                    .body(complete(&parts)),
            )
            .await;
        assert_eq!(error_code(r).await, (400, want.to_string()), "{parts:?}");
        assert_eq!(
            error_code(c.get("bad", "mp").await).await.0,
            404,
            "nothing committed"
        );
    }
    // A first part under 5 MiB: EntityTooSmall.
    let small = new_upload(&c, "small").await;
    let s1 = put_part(&c, "small", &small, "1", vec![1u8; 10])
        .await
        .headers()["etag"]
        .to_str()
        .expect("etag")
        .to_string();
    let s2 = put_part(&c, "small", &small, "2", vec![1u8; 10])
        .await
        .headers()["etag"]
        .to_str()
        .expect("etag")
        .to_string();
    let r = c
        .send(
            Req::new("POST", key_path("bad", "small"))
                .q("uploadId", &small)
                .body(complete(&[(1, s1.as_str()), (2, s2.as_str())])),
        )
        .await;
    assert_eq!(error_code(r).await, (400, "EntityTooSmall".to_string()));
    // The right list still completes afterwards; an abort removes the other upload.
    let r = c
        .send(
            Req::new("POST", key_path("bad", "mp"))
                .q("uploadId", &upload)
                .body(complete(&[(1, e1.as_str()), (2, e2.as_str())])),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get("bad", "mp").await.bytes().await.expect("body").len(),
        (5 << 20) + 1000
    );
    let r = c
        .send(Req::new("DELETE", key_path("bad", "small")).q("uploadId", &small))
        .await;
    assert_eq!(r.status(), 204);
    let r = put_part(&c, "small", &small, "3", vec![1u8; 10]).await;
    assert_eq!(error_code(r).await, (404, "NoSuchUpload".to_string()));

    // Oversize headers.
    let big = "v".repeat(20 << 10);
    let r = c
        .send(
            Req::new("PUT", key_path("bad", "hdr"))
                .h("x-amz-meta-big", &big)
                .body(b"x".to_vec()),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (400, "RequestHeaderSectionTooLarge".to_string())
    );
    let meta = "m".repeat(3000);
    let r = c
        .send(
            Req::new("PUT", key_path("bad", "hdr"))
                .h("x-amz-meta-m", &meta)
                .body(b"x".to_vec()),
        )
        .await;
    assert_eq!(error_code(r).await, (400, "MetadataTooLarge".to_string()));
    assert_eq!(error_code(c.get("bad", "hdr").await).await.0, 404);

    // Unsupported sub-resources say so.
    let r = c.send(Req::new("GET", "/bad".into()).q("policy", "")).await;
    assert_eq!(error_code(r).await, (501, "NotImplemented".to_string()));

    // A body shorter than its Content-Length (the client gives up half way): an error or a
    // closed connection, and no object.
    let host = h.url.trim_start_matches("http://").to_string();
    let r = Req::new("PUT", key_path("bad", "short")).unsigned_payload();
    let (_, headers) = c.sign(&r, &c.secret);
    let mut s = std::net::TcpStream::connect(&host).expect("connect");
    let mut req = format!(
        "PUT {} HTTP/1.1\r\ncontent-length: 1000\r\n",
        key_path("bad", "short")
    );
    for (k, v) in &headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n0123456789");
    s.write_all(req.as_bytes()).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Nothing was stored.
    assert_eq!(error_code(c.get("bad", "short").await).await.0, 404);
}

/// Sends a signed PUT whose aws-chunked body (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`) is written
/// by hand: the headers with `content-length` and `x-amz-decoded-content-length` as given,
/// then `body` (maybe only its start), the connection left open. Reads the answer: its status
/// and S3 error code.
async fn put_aws_chunked(
    h: &Harness,
    c: &Client,
    path: &str,
    content_length: u64,
    decoded_length: u64,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = Req::new("PUT", path.to_string())
        .h("content-encoding", "aws-chunked")
        .h("x-amz-decoded-content-length", &decoded_length.to_string())
        .content_sha256("STREAMING-UNSIGNED-PAYLOAD-TRAILER");
    let (_, headers) = c.sign(&r, &c.secret);
    let mut req = format!("PUT {path} HTTP/1.1\r\ncontent-length: {content_length}\r\n");
    for (k, v) in &headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(h.url.trim_start_matches("http://"))
        .await
        .expect("connect");
    s.write_all(req.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    // Read the head, then the body up to its Content-Length (the server may keep the
    // connection open, waiting for the rest of the request).
    let mut answer = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                break;
            }
        }
        let n = s.read(&mut piece).await.expect("read the answer");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&piece[..n]);
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (
        status,
        between(&text, "<Code>", "</Code>").unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_chunk_declared_huge_is_refused_before_its_bytes() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("bad").await;
    // A 5 GiB object in one 5 GiB chunk: only its header is sent. Buffering the chunk whole
    // would wait for (and hold) all 5 GiB; the header alone must get the refusal.
    let size: u64 = 0x1_4000_0000;
    let path = key_path("bad", "huge");
    let (status, code) = put_aws_chunked(
        &h,
        &c,
        &path,
        size + 100,
        size,
        format!("{size:x}\r\n").as_bytes(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "InvalidRequest"));
    assert_eq!(error_code(c.get("bad", "huge").await).await.0, 404);
    // A chunk just over the limit is refused too; one at it is taken.
    let over = (16u64 << 20) + 1;
    let (status, code) = put_aws_chunked(
        &h,
        &c,
        &path,
        over + 100,
        over,
        format!("{over:x}\r\n").as_bytes(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "InvalidRequest"));
    assert_eq!(error_code(c.get("bad", "huge").await).await.0, 404);
    let at = 16usize << 20;
    let mut body = format!("{at:x}\r\n").into_bytes();
    body.extend(std::iter::repeat_n(b'x', at));
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _) = put_aws_chunked(&h, &c, &path, body.len() as u64, at as u64, &body).await;
    assert_eq!(status, 200);
    let got = c.get("bad", "huge").await.bytes().await.expect("body");
    assert_eq!(got.len(), at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_aws_chunked_trailer_lines_are_refused() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("bad").await;
    let path = key_path("bad", "trailers");
    let body_with = |lines: usize| {
        let mut b = b"5\r\nhello\r\n0\r\n".to_vec();
        for i in 0..lines {
            b.extend_from_slice(format!("x-amz-pad-{i}:v\r\n").as_bytes());
        }
        b.extend_from_slice(b"\r\n");
        b
    };
    // Far more trailer lines than any client sends: refused, nothing written.
    let body = body_with(1000);
    let (status, code) = put_aws_chunked(&h, &c, &path, body.len() as u64, 5, &body).await;
    assert_eq!((status, code.as_str()), (400, "InvalidRequest"));
    assert_eq!(error_code(c.get("bad", "trailers").await).await.0, 404);
    // Trailer lines of 8 KiB in all, each under the line limit: refused too.
    let mut body = b"5\r\nhello\r\n0\r\n".to_vec();
    for i in 0..3 {
        body.extend_from_slice(format!("x-amz-pad-{i}:{}\r\n", "v".repeat(3000)).as_bytes());
    }
    body.extend_from_slice(b"\r\n");
    let (status, code) = put_aws_chunked(&h, &c, &path, body.len() as u64, 5, &body).await;
    assert_eq!((status, code.as_str()), (400, "InvalidRequest"));
    assert_eq!(error_code(c.get("bad", "trailers").await).await.0, 404);
    // A few are fine.
    let body = body_with(3);
    let (status, _) = put_aws_chunked(&h, &c, &path, body.len() as u64, 5, &body).await;
    assert_eq!(status, 200);
    let got = c.get("bad", "trailers").await.bytes().await.expect("body");
    assert_eq!(&got[..], b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_override_that_is_no_header_value_is_invalid_argument() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("bad").await;
    assert_eq!(c.put("bad", "obj", b"hello".to_vec()).await.status(), 200);
    for (name, value) in [
        ("response-content-type", "a\nb"),
        ("response-content-disposition", "attachment\r\nx-evil: 1"),
        ("response-cache-control", "no\u{0}store"),
        ("response-expires", "\u{7f}"),
    ] {
        for method in ["GET", "HEAD"] {
            let r = c
                .send(Req::new(method, key_path("bad", "obj")).q(name, value))
                .await;
            let status = r.status().as_u16();
            if method == "GET" {
                assert_eq!(
                    error_code(r).await,
                    (400, "InvalidArgument".to_string()),
                    "{method} {name}={value:?}"
                );
            } else {
                assert_eq!(status, 400, "{method} {name}={value:?}");
            }
        }
    }
    // A valid override still applies.
    let r = c
        .send(Req::new("GET", key_path("bad", "obj")).q("response-content-type", "text/plain"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
}
