//! Signed read URLs (issue 17, private photos): with signed reads on, the directory and the
//! uploader hand out read URLs with an expiry and an HMAC; the stores and the cache serve a
//! photo or a video only on a valid, unexpired signature for exactly that path (or to the
//! cluster's own callers, with a bearer token). Every refusal is the same 403, whether the
//! photo exists or not.

use haystack_proto::auth::{READ_EXPIRES_PARAM, READ_SIGNATURE_PARAM};
use haystack_service::auth::unix_now;
use haystack_testkit::{bind_loopback, Cluster, ClusterOptions};

fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(80, 60, |x, y| image::Rgb([x as u8, y as u8, 42]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

/// `url` without its query string.
fn bare(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// `url` with its signature replaced by one made with the cluster's keys for `path` until
/// `expires`.
fn resigned(
    url: &str,
    keys: &haystack_proto::auth::ClusterKeys,
    path: &str,
    expires: u64,
) -> String {
    format!("{}?{}", bare(url), keys.signed_read_query(path, expires))
}

async fn post(client: &reqwest::Client, url: &str, ct: &str, body: Vec<u8>) -> serde_json::Value {
    for _ in 0..200 {
        if let Ok(r) = client
            .post(url)
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
        {
            assert_eq!(r.status(), 201, "upload to {url}");
            return r.json().await.expect("JSON");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{url} never answered");
}

async fn answer(client: &reqwest::Client, url: &str) -> (u16, bytes::Bytes) {
    let r = client.get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_read_urls_are_served_and_anything_else_is_the_same_403() {
    let cache_l = bind_loopback();
    let cache_url = format!("http://{}", cache_l.local_addr().expect("addr"));
    let cluster = Cluster::start(ClusterOptions {
        stores: 2,
        replication: 2,
        cache_url: Some(cache_url.clone()),
        signed_reads_ttl_secs: Some(600),
        ..Default::default()
    })
    .await;
    let (_cache, _uploader, uploader_url) = crate::roles::cache_and_uploader(&cluster, cache_l);
    let public = reqwest::Client::new();
    let keys = cluster.keys().clone();

    let data = jpeg();
    let posted = post(
        &public,
        &format!("{uploader_url}/v1/photos"),
        "image/jpeg",
        data.clone(),
    )
    .await;
    let url = posted["urls"]["original"]
        .as_str()
        .expect("original URL")
        .to_string();
    assert!(url.starts_with(&cache_url), "{url}");
    let path = bare(&url)[cache_url.len()..].to_string();
    assert!(
        url.contains(&format!("?{READ_EXPIRES_PARAM}="))
            && url.contains(&format!("&{READ_SIGNATURE_PARAM}=")),
        "read URL {url} is not signed"
    );
    let expires: u64 = url
        .split(&format!("{READ_EXPIRES_PARAM}="))
        .nth(1)
        .and_then(|s| s.split('&').next())
        .and_then(|s| s.parse().ok())
        .expect("expiry");
    let now = unix_now();
    assert!(
        expires >= now + 590 && expires <= now + 600 + 150 + 10,
        "expiry {expires} is not about 600 s after {now}"
    );

    // The signed URL is served, by the cache and by a store directly, byte for byte.
    let (s, body) = answer(&public, &url).await;
    assert_eq!(
        (s, &body[..]),
        (200, &data[..]),
        "signed URL through the cache"
    );
    let on_store = format!(
        "{}{path}?{}",
        cluster.store_url(0),
        url.split('?').nth(1).expect("query")
    );
    let (s, body) = answer(&public, &on_store).await;
    assert_eq!((s, &body[..]), (200, &data[..]), "signed URL on a store");

    // Everything else is one and the same 403: no signature, a wrong one, an expired one, one
    // for another path, a later expiry under the old signature; for this photo and for one
    // that does not exist.
    let refused_body = {
        let (s, body) = answer(&public, bare(&url)).await;
        assert_eq!(s, 403, "unsigned URL through the cache");
        body
    };
    let sig_at = url.find(&format!("{READ_SIGNATURE_PARAM}=")).expect("sig")
        + READ_SIGNATURE_PARAM.len()
        + 1;
    let mut flipped = url.clone().into_bytes();
    flipped[sig_at] = if flipped[sig_at] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).expect("ASCII");
    let missing = path.replacen("/v1/needles/", "/v1/needles/9", 1);
    let other_alt = {
        let alt = posted["urls"]
            .as_object()
            .expect("urls")
            .iter()
            .map(|(_, u)| u.as_str().expect("URL").to_string())
            .find(|u| bare(u) != bare(&url))
            .expect("a second variant");
        // The original's signature on another variant's path.
        format!("{}?{}", bare(&alt), url.split('?').nth(1).expect("query"))
    };
    let later = url.replacen(
        &format!("{READ_EXPIRES_PARAM}={expires}"),
        &format!("{READ_EXPIRES_PARAM}={}", expires + 3600),
        1,
    );
    for base in [cache_url.clone(), cluster.store_url(1)] {
        let at = |u: &str| u.replacen(&cache_url, &base, 1);
        let cases = [
            ("unsigned", at(bare(&url))),
            ("wrong signature", at(&flipped)),
            ("expired", at(&resigned(&url, &keys, &path, now - 1))),
            ("another variant's signature", at(&other_alt)),
            ("a later expiry", at(&later)),
            (
                "a photo that does not exist, unsigned",
                format!("{base}{missing}"),
            ),
            (
                "a photo that does not exist, expired",
                format!(
                    "{base}{missing}?{}",
                    keys.signed_read_query(&missing, now - 1)
                ),
            ),
        ];
        for (what, u) in cases {
            let (s, body) = answer(&public, &u).await;
            assert_eq!(s, 403, "{what} on {base}: {u}");
            assert_eq!(body, refused_body, "{what} on {base}: the refusal differs");
            let head = public.head(&u).send().await.expect("HEAD");
            assert_eq!(head.status(), 403, "HEAD {what} on {base}");
        }
        // A photo that does not exist under a valid signature is a plain 404.
        let u = format!(
            "{base}{missing}?{}",
            keys.signed_read_query(&missing, now + 60)
        );
        assert_eq!(
            answer(&public, &u).await.0,
            404,
            "signed URL of a missing photo on {base}"
        );
    }

    // The cluster's own readers need no signature: a bearer token of the cluster's.
    let r = cluster
        .admin_http()
        .get(format!("{}{path}", cluster.store_url(0)))
        .send()
        .await
        .expect("GET with a token");
    assert_eq!(r.status(), 200, "a cluster token reads without a signature");

    // A whole video: its one URL from the uploader is signed too, and served.
    let video: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let posted = post(
        &public,
        &format!("{uploader_url}/v1/videos"),
        "video/mp4",
        video.clone(),
    )
    .await;
    let vurl = posted["url"].as_str().expect("video URL").to_string();
    assert!(
        vurl.contains(&format!("&{READ_SIGNATURE_PARAM}=")),
        "video URL {vurl} is not signed"
    );
    let (s, body) = answer(&public, &vurl).await;
    assert_eq!((s, body.len()), (200, video.len()), "signed video URL");
    assert!(body[..] == video[..], "video bytes differ");
    assert_eq!(
        answer(&public, bare(&vurl)).await.0,
        403,
        "unsigned video URL"
    );
}
