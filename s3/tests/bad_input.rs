//! Bad input gets a clear S3 error and commits nothing: malformed XML, oversize headers, bad
//! part numbers, completes with parts out of order or missing, a body shorter than its
//! Content-Length, unsupported sub-resources.

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
