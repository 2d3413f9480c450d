//! Authentication and permissions: wrong secrets, presigned URLs (valid, expired, tampered),
//! anonymous requests with and without the bucket's anonymous read, per-bucket grants.

use haystack_s3::keys::Grant;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_presigned_urls_and_grants() {
    let h = Harness::start().await;
    let c = h.client();
    c.create_bucket("secure").await;
    assert_eq!(
        c.put("secure", "k", b"secret bytes".to_vec())
            .await
            .status(),
        200
    );

    // A wrong secret: 403 SignatureDoesNotMatch, and nothing is written.
    let r = c
        .send_with_secret(
            Req::new("PUT", key_path("secure", "forged")).body(b"x".to_vec()),
            "not-the-secret",
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (403, "SignatureDoesNotMatch".to_string())
    );
    assert_eq!(error_code(c.get("secure", "forged").await).await.0, 404);
    // A signed payload hash that does not match the body: nothing written either.
    let r = c
        .send(
            Req::new("PUT", key_path("secure", "forged"))
                .h("x-amz-meta-x", "1")
                .body(b"x".to_vec()),
        )
        .await;
    assert_eq!(r.status(), 200);
    // An unknown key id.
    let other = Client {
        key: "HKNOSUCHKEY000000000".into(),
        ..h.client()
    };
    assert_eq!(
        error_code(other.get("secure", "k").await).await,
        (403, "InvalidAccessKeyId".to_string())
    );
    // Anonymous: refused until the bucket allows anonymous read, and never for writes.
    let anon = reqwest::Client::new();
    let url = format!("{}{}", h.url, key_path("secure", "k"));
    let r = anon.get(&url).send().await.expect("get");
    assert_eq!(error_code(r).await, (403, "AccessDenied".to_string()));
    h.s3.set_anonymous_read("secure", true)
        .await
        .expect("anonymous read");
    let r = anon.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"secret bytes");
    let r = anon.put(&url).body("overwrite").send().await.expect("put");
    assert_eq!(error_code(r).await, (403, "AccessDenied".to_string()));
    h.s3.set_anonymous_read("secure", false)
        .await
        .expect("anonymous read off");

    // Presigned GET and PUT.
    let get = c.presign("GET", &key_path("secure", "k"), now(), 60);
    let r = anon.get(&get).send().await.expect("presigned get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"secret bytes");
    let put = c.presign("PUT", &key_path("secure", "via-presign"), now(), 60);
    let r = anon
        .put(&put)
        .body("presigned body")
        .send()
        .await
        .expect("presigned put");
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get("secure", "via-presign")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        b"presigned body"
    );
    // Expired: signed two hours ago for one hour.
    let old = c.presign("GET", &key_path("secure", "k"), now() - 7200, 3600);
    let r = anon.get(&old).send().await.expect("expired get");
    assert_eq!(error_code(r).await, (403, "AccessDenied".to_string()));
    let old_put = c.presign("PUT", &key_path("secure", "late"), now() - 7200, 3600);
    let r = anon
        .put(&old_put)
        .body("late")
        .send()
        .await
        .expect("expired put");
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(c.get("secure", "late").await).await.0, 404);
    // Tampered: the URL for one key used for another.
    let tampered = get.replace("/secure/k?", "/secure/via-presign?");
    let r = anon.get(&tampered).send().await.expect("tampered");
    assert_eq!(
        error_code(r).await,
        (403, "SignatureDoesNotMatch".to_string())
    );

    // A key limited to reading one bucket.
    let (id, secret) =
        h.s3.create_key(
            vec![Grant {
                bucket: "secure".into(),
                read: true,
                write: false,
            }],
            false,
        )
        .await
        .expect("key");
    let reader = Client {
        key: id,
        secret,
        ..h.client()
    };
    assert_eq!(reader.get("secure", "k").await.status(), 200);
    let r = reader.put("secure", "k2", b"no".to_vec()).await;
    assert_eq!(error_code(r).await, (403, "AccessDenied".to_string()));
    c.create_bucket("elsewhere").await;
    let r = reader.send(Req::new("GET", "/elsewhere".into())).await;
    assert_eq!(error_code(r).await, (403, "AccessDenied".to_string()));
    let r = reader.send(Req::new("PUT", "/newbucket".into())).await;
    assert_eq!(error_code(r).await, (403, "AccessDenied".to_string()));
    // ListBuckets shows it only the bucket it may read.
    let text = reader
        .send(Req::new("GET", "/".into()))
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(all_between(&text, "<Name>", "</Name>"), ["secure"]);
}
