//! Helpers the ops tests share over an in-process cluster: a photo put the way the uploader
//! does (assign, a needle on every replica, commit), JSON calls, a store's id by its URL,
//! waiting for a deleted needle to be gone or a store to reach a pause point, and a JPEG.

use std::time::{Duration, Instant};

use haystack_proto::directory::{AssignRequest, AssignResponse, CommitRequest, Variant};
use haystack_proto::format_cookie;

/// POSTs `body` as JSON: the status and the answer's text.
pub async fn post(c: &reqwest::Client, url: String, body: serde_json::Value) -> (u16, String) {
    let r = c.post(&url).json(&body).send().await.expect("POST");
    let s = r.status().as_u16();
    (s, r.text().await.unwrap_or_default())
}

/// Seals volume `v`: the directory's record, then the copy on each of `stores` (as `haystack
/// volume seal` does).
pub async fn seal(c: &reqwest::Client, dir: &str, v: u32, stores: &[&str]) {
    let (s, body) = post(
        c,
        format!("{dir}/v1/volumes/{v}/state"),
        serde_json::json!({"state": "sealed"}),
    )
    .await;
    assert_eq!(s, 200, "seal: {body}");
    for url in stores {
        let (s, body) = post(
            c,
            format!("{url}/v1/volumes/{v}/seal"),
            serde_json::json!({}),
        )
        .await;
        assert_eq!(s, 200, "store seal: {body}");
    }
}

/// Encodes volume `v` 2+1 (64 KiB blocks), asking again for up to 30 s while the directory
/// answers that a replica has not reported its sealed copy yet; the last answer.
pub async fn encode_2_1(c: &reqwest::Client, dir: &str, v: u32) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = post(
            c,
            format!("{dir}/v1/volumes/{v}/encode"),
            serde_json::json!({"k": 2, "m": 1, "block_bytes": 65536}),
        )
        .await;
        let not_yet = s == 503 || (s != 200 && body.contains("seal"));
        if !not_yet || Instant::now() > deadline {
            return (s, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Copies volume `v` onto the store at `onto` from the one at `from` (`POST
/// /v1/volumes/{v}/import`).
pub async fn import(c: &reqwest::Client, onto: &str, v: u32, from: &str) {
    let (s, body) = post(
        c,
        format!("{onto}/v1/volumes/{v}/import"),
        serde_json::json!({ "from": from }),
    )
    .await;
    assert!((200..300).contains(&s), "import onto {onto}: {s} {body}");
}

/// Makes store `to` replace store `from` as a replica of volume `v` (`POST
/// /v1/volumes/{v}/replace`, after an [`import`]).
pub async fn replace(c: &reqwest::Client, dir: &str, v: u32, from: u64, to: u64) {
    let (s, body) = post(
        c,
        format!("{dir}/v1/volumes/{v}/replace"),
        serde_json::json!({
            "from_store_id": from.to_string(),
            "to_store_id": to.to_string(),
        }),
    )
    .await;
    assert!((200..300).contains(&s), "replace: {s} {body}");
}

/// GETs `url` as JSON.
pub async fn get_json(c: &reqwest::Client, url: String) -> serde_json::Value {
    c.get(&url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

/// The id of the store at `url`, from the directory's store list.
pub async fn store_id(c: &reqwest::Client, dir: &str, url: &str) -> u64 {
    let stores = get_json(c, format!("{dir}/v1/stores")).await;
    stores
        .as_array()
        .expect("stores")
        .iter()
        .find(|s| s["url"].as_str() == Some(url))
        .and_then(|s| s["store_id"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no store at {url}: {stores}"))
}

/// A photo of one needle (alt 0, `len` bytes seeded by `seed`) written to every replica and
/// committed: the assignment, its needle path and its bytes.
pub async fn put_photo(
    c: &reqwest::Client,
    dir: &str,
    len: u32,
    seed: u8,
) -> (AssignResponse, String, Vec<u8>) {
    let a: AssignResponse = c
        .post(format!("{dir}/v1/assign"))
        .json(&AssignRequest::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body: Vec<u8> = (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect();
    let path = format!(
        "/v1/needles/{}/{}/0/{}",
        a.volume_id,
        a.id,
        format_cookie(a.cookie)
    );
    for r in &a.replicas {
        let s = c
            .put(format!("{}{path}", r.url))
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 201);
    }
    let r = commit(c, dir, &a, body.len() as u64).await;
    assert!(r.status().is_success());
    (a, path, body)
}

/// Commits `a` as a photo of one JPEG variant (alt 0) of `len` bytes.
pub async fn commit(
    c: &reqwest::Client,
    dir: &str,
    a: &AssignResponse,
    len: u64,
) -> reqwest::Response {
    let commit = CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: Default::default(),
        variants: vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: len,
            content_type: "image/jpeg".into(),
        }],
        chunks: vec![],
    };
    c.post(format!("{dir}/v1/photos"))
        .json(&commit)
        .send()
        .await
        .unwrap()
}

/// Waits (at most 30 s, polling) until `url` answers 404; `what` names it in the failure.
pub async fn until_gone(c: &reqwest::Client, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.get(url).send().await.expect("GET").status();
        if s == 404 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still serves the deleted photo ({s})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 60 s) until the store whose data directory is `store_dir` holds at pause
/// point `point` (store/src/pause.rs).
pub async fn paused_at(store_dir: &std::path::Path, point: &str) {
    let paused = store_dir.join(format!("test-paused-{point}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paused.exists() {
        assert!(Instant::now() < deadline, "the store never reached {point}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small JPEG (64x48) whose blue channel is `shade`.
pub fn jpeg(shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, shade]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}
