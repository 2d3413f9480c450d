//! Photo uploads over a real cluster: every format, variant sizes, EXIF orientation, bytes on
//! every replica, idempotency, lookups and deletes, multipart.

use std::collections::BTreeMap;

use haystack_uploader::service::PhotoResponse;
use serde_json::Value;

use crate::common::*;

/// Expected display sizes per variant name.
type Sizes = BTreeMap<&'static str, (u32, u32)>;

fn sizes(list: &[(&'static str, (u32, u32))]) -> Sizes {
    list.iter().cloned().collect()
}

/// Checks a 201 answer against the directory and every replica: the original is the uploaded
/// bytes, each variant decodes to its expected size and media type, and every replica holds
/// the same bytes. Returns the answer.
async fn check_upload(
    h: &Harness,
    resp: reqwest::Response,
    uploaded: &[u8],
    content_type: &str,
    expect: &Sizes,
    variant_type: Option<&str>,
) -> PhotoResponse {
    assert_eq!(
        resp.status().as_u16(),
        201,
        "upload answered {}",
        resp.status()
    );
    let photo: PhotoResponse = resp.json().await.expect("photo JSON");
    assert_eq!(photo.content_type, content_type);
    assert_eq!(photo.bytes, uploaded.len() as u64);
    assert_eq!((photo.width, photo.height), expect["original"]);
    let names: Vec<&str> = photo.urls.keys().map(String::as_str).collect();
    assert_eq!(names, ["large", "medium", "original", "thumb"]);
    for url in photo.urls.values() {
        assert!(url.starts_with("http://127.0.0.1:"), "absolute URL: {url}");
        assert!(
            url.contains(&format!("/{}/", photo.id)),
            "URL names the id: {url}"
        );
    }
    let info = h.lookup(&photo.id.to_string()).await;
    assert_eq!(info.replicas.len(), 2, "replication 2");
    for v in &info.variants {
        let mut first: Option<Vec<u8>> = None;
        for r in &info.replicas {
            let (status, bytes) = h.read_needle(&r.url, &info, v.alt).await;
            assert_eq!(status, 200, "variant {} on {}", v.name, r.url);
            assert_eq!(
                bytes.len() as u64,
                v.size_bytes,
                "size of {} on {}",
                v.name,
                r.url
            );
            match &first {
                None => first = Some(bytes),
                Some(f) => assert!(f == &bytes, "{} differs between replicas", v.name),
            }
        }
        let bytes = first.expect("a replica");
        if v.name == "original" {
            assert_eq!(v.alt, 0);
            assert!(bytes == uploaded, "the original is stored byte for byte");
            assert_eq!(v.content_type, content_type);
            continue;
        }
        if let Some(t) = variant_type {
            assert_eq!(v.content_type, t, "media type of {}", v.name);
        }
        let img = image::load_from_memory(&bytes).expect("variant decodes");
        assert_eq!(
            (img.width(), img.height()),
            expect[v.name.as_str()],
            "size of variant {}",
            v.name
        );
        let alt = match v.name.as_str() {
            "large" => 1,
            "medium" => 2,
            "thumb" => 3,
            other => panic!("unexpected variant {other}"),
        };
        assert_eq!(v.alt, alt, "alternate key of {}", v.name);
    }
    photo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_stored_with_its_variants_on_every_replica() {
    let h = Harness::start().await;

    // JPEG smaller than `large`: large keeps the original size (never upscaled).
    let body = jpeg(1200, 900);
    let resp = h.post_photo(body.clone(), "image/jpeg").await;
    let expect = sizes(&[
        ("original", (1200, 900)),
        ("large", (1200, 900)),
        ("medium", (1024, 768)),
        ("thumb", (320, 240)),
    ]);
    check_upload(&h, resp, &body, "image/jpeg", &expect, Some("image/jpeg")).await;

    // A wide PNG with transparency: variants stay PNG (JPEG would lose the alpha).
    let body = png_with_alpha(3000, 1000);
    let resp = h.post_photo(body.clone(), "image/png").await;
    let expect = sizes(&[
        ("original", (3000, 1000)),
        ("large", (2048, 683)),
        ("medium", (1024, 341)),
        ("thumb", (320, 107)),
    ]);
    check_upload(&h, resp, &body, "image/png", &expect, Some("image/png")).await;

    // Lossless WebP, portrait, sent as application/octet-stream: the bytes decide the type.
    let body = webp(600, 1500);
    let resp = h.post_photo(body.clone(), "application/octet-stream").await;
    let expect = sizes(&[
        ("original", (600, 1500)),
        ("large", (600, 1500)),
        ("medium", (410, 1024)),
        ("thumb", (128, 320)),
    ]);
    let photo = check_upload(&h, resp, &body, "image/webp", &expect, None).await;
    assert_eq!(photo.width, 600);

    // A tiny GIF: every variant keeps its size.
    let body = gif(100, 80);
    let resp = h.post_photo(body.clone(), "image/gif").await;
    let expect = sizes(&[
        ("original", (100, 80)),
        ("large", (100, 80)),
        ("medium", (100, 80)),
        ("thumb", (100, 80)),
    ]);
    let info_resp = check_upload(&h, resp, &body, "image/gif", &expect, None).await;
    // A lossless source without alpha: PNG where smaller, else JPEG; either is fine here.
    let info = h.lookup(&info_resp.id.to_string()).await;
    for v in info.variants.iter().filter(|v| v.alt != 0) {
        assert!(
            v.content_type == "image/png" || v.content_type == "image/jpeg",
            "{}",
            v.content_type
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exif_orientation_is_applied_to_the_variants() {
    let h = Harness::start().await;
    // 400x200 stored, Orientation 6: displayed 200 wide and 400 high.
    let body = jpeg_with_orientation(400, 200, 6);
    let resp = h.post_photo(body.clone(), "image/jpeg").await;
    let expect = sizes(&[
        ("original", (200, 400)),
        ("large", (200, 400)),
        ("medium", (200, 400)),
        ("thumb", (160, 320)),
    ]);
    let photo = check_upload(&h, resp, &body, "image/jpeg", &expect, Some("image/jpeg")).await;
    // The rotation is real, not only the size: the stored picture's left column (dark red
    // end of the gradient) is the top row of the displayed one after a clockwise turn.
    let info = h.lookup(&photo.id.to_string()).await;
    let (_, large) = h.read_needle(&info.replicas[0].url, &info, 1).await;
    let img = image::load_from_memory(&large).unwrap().to_rgb8();
    let top_right = img.get_pixel(199, 0)[0] as i32;
    let bottom_left = img.get_pixel(0, 399)[0] as i32;
    assert!(
        top_right < 40 && bottom_left > 200,
        "rotated 90° clockwise (red at top right {top_right}, bottom left {bottom_left})"
    );
    // GET answers the same display size, read back from the stored original's header.
    let got: Value = h
        .http
        .get(format!("{}/v1/photos/{}", h.url, photo.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["width"], 200);
    assert_eq!(got["height"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_photo() {
    let h = Harness::start().await;
    let body = jpeg(640, 480);
    let post = |key: &'static str| {
        h.http
            .post(format!("{}/v1/photos", h.url))
            .header("content-type", "image/jpeg")
            .header("idempotency-key", key)
            .body(body.clone())
            .send()
    };
    let first = post("phone-42/upload-17").await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: PhotoResponse = first.json().await.unwrap();
    let again = post("phone-42/upload-17").await.unwrap();
    assert_eq!(again.status().as_u16(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: PhotoResponse = again.json().await.unwrap();
    assert_eq!(again, first, "the same photo, URLs and all");
    let other: PhotoResponse = post("phone-42/upload-18")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other.id, first.id, "another key is another photo");
    // Without a key, two posts are two photos.
    let a: PhotoResponse = h
        .post_photo(body.clone(), "image/jpeg")
        .await
        .json()
        .await
        .unwrap();
    let b: PhotoResponse = h
        .post_photo(body.clone(), "image/jpeg")
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(a.id, b.id);
    // The key of a deleted photo is not reused to write it again.
    let del = h
        .http
        .delete(format!("{}/v1/photos/{}", h.url, first.id))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 204);
    let after = post("phone-42/upload-17").await.unwrap();
    assert_eq!(after.status().as_u16(), 409);
    let e: Value = after.json().await.unwrap();
    assert_eq!(e["error"], "conflict");
    let info_404 = h
        .http
        .get(format!("{}/v1/photos/{}", h.url, first.id))
        .send()
        .await
        .unwrap();
    assert_eq!(info_404.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_then_delete_then_every_url_is_404() {
    let h = Harness::start().await;
    let body = png(900, 700);
    let created: PhotoResponse = h.post_photo(body, "image/png").await.json().await.unwrap();
    let got = h
        .http
        .get(format!("{}/v1/photos/{}", h.url, created.id))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    let got: PhotoResponse = got.json().await.unwrap();
    assert_eq!(got, created, "GET answers what POST answered");
    // The id is a string in JSON.
    let raw: Value = h
        .http
        .get(format!("{}/v1/photos/{}", h.url, created.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["id"], Value::String(created.id.to_string()));
    let info = h.lookup(&created.id.to_string()).await;
    for url in created.urls.values() {
        assert_eq!(h.http.get(url).send().await.unwrap().status().as_u16(), 200);
    }
    let del = h
        .http
        .delete(format!("{}/v1/photos/{}", h.url, created.id))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 204);
    for url in created.urls.values() {
        assert_eq!(
            h.http.get(url).send().await.unwrap().status().as_u16(),
            404,
            "{url}"
        );
    }
    for r in &info.replicas {
        for v in &info.variants {
            let (status, _) = h.read_needle(&r.url, &info, v.alt).await;
            assert_eq!(status, 404, "{} alt {} after delete", r.url, v.alt);
        }
    }
    let gone = h
        .http
        .get(format!("{}/v1/photos/{}", h.url, created.id))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    let e: Value = gone.json().await.unwrap();
    assert_eq!(e["error"], "not_found");
    let missing = h
        .http
        .delete(format!("{}/v1/photos/12345", h.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}

/// The S3 role's data (a directory record of kind `object`) is not a photo of this API: GET
/// answers 404 and so does DELETE, which leaves the record and its needles alone. Before,
/// DELETE passed any id to the directory, so any API key holder could delete an
/// acknowledged S3 object's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_object_is_neither_read_nor_deleted_through_the_uploader() {
    use haystack_proto::directory::{
        AssignRequest, AssignResponse, CommitRequest, PhotoKind, VideoChunk,
    };
    let h = Harness::start().await;
    let dir = h.cluster.directory_url();
    let a: AssignResponse = h
        .admin
        .post(format!("{dir}/v1/assign"))
        .json(&AssignRequest {
            kind: PhotoKind::Video,
            size_hint_bytes: 4096,
            ..Default::default()
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = b"the bytes of an acknowledged S3 object".to_vec();
    for r in &a.replicas {
        let put = h
            .admin
            .put(format!(
                "{}/v1/needles/{}/{}/1/{}",
                r.url,
                a.volume_id,
                a.id,
                haystack_proto::format_cookie(a.cookie)
            ))
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201, "needle PUT on {}", r.url);
    }
    let commit = h
        .admin
        .post(format!("{dir}/v1/photos"))
        .json(&CommitRequest {
            id: a.id,
            cookie: a.cookie,
            volume_id: a.volume_id,
            kind: PhotoKind::Object,
            variants: Vec::new(),
            chunks: vec![VideoChunk {
                alt: 1,
                offset: 0,
                size_bytes: data.len() as u64,
            }],
        })
        .send()
        .await
        .unwrap();
    assert!(commit.status().is_success(), "commit: {}", commit.status());
    let got = h
        .http
        .get(format!("{}/v1/photos/{}", h.url, a.id))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 404);
    let del = h
        .http
        .delete(format!("{}/v1/photos/{}", h.url, a.id))
        .send()
        .await
        .unwrap();
    let status = del.status().as_u16();
    let text = del.text().await.unwrap_or_default();
    assert_eq!(status, 404, "DELETE of an S3 object: {text}");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["error"], "not_found");
    let info = h.lookup(&a.id.to_string()).await;
    assert_eq!(info.kind, PhotoKind::Object);
    for r in &info.replicas {
        let (status, bytes) = h.read_needle(&r.url, &info, 1).await;
        assert_eq!(status, 200, "the object's needle on {}", r.url);
        assert_eq!(bytes, data);
    }
}

/// A multipart/form-data body with one text field and the file, by hand.
fn multipart(boundary: &str, file: &[u8], file_type: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nhello\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\nContent-Type: {file_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(file);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_field_file_is_the_photo() {
    let h = Harness::start().await;
    let body = jpeg(800, 600);
    let form = multipart("XyZbOuNdArY", &body, "image/jpeg");
    let resp = h
        .post_photo(form, "multipart/form-data; boundary=XyZbOuNdArY")
        .await;
    let expect = sizes(&[
        ("original", (800, 600)),
        ("large", (800, 600)),
        ("medium", (800, 600)),
        ("thumb", (320, 240)),
    ]);
    check_upload(&h, resp, &body, "image/jpeg", &expect, Some("image/jpeg")).await;
}
