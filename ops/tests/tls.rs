//! TLS end to end (issue 17): a test CA made here (rcgen), a directory and two stores that
//! demand client certificates (mutual TLS), a cache and an uploader over TLS; a photo goes up
//! through the uploader and comes back through the cache byte for byte, every hop in between
//! over TLS. Plain HTTP, a client without a certificate, one with a certificate of another CA
//! and one that does not trust the cluster's CA are all refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use haystack_service::tls::{Tls, TlsFiles};
use haystack_testkit::{bind_loopback, spawn_node, stopped, Cluster, ClusterOptions};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA (its PEM written to `dir/{name}-ca.pem`) and a leaf for 127.0.0.1 and localhost that
/// serves and authenticates clients, written to `dir/{name}.pem` and `dir/{name}.key`.
fn pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params");
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    let paths = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}-ca.pem")),
    );
    std::fs::write(&paths.0, leaf_cert.pem()).expect("write cert");
    std::fs::write(&paths.1, leaf_key.serialize_pem()).expect("write key");
    std::fs::write(&paths.2, ca_cert.pem()).expect("write CA");
    paths
}

fn tls(files: &(PathBuf, PathBuf, PathBuf), client_auth: bool) -> Arc<Tls> {
    Arc::new(
        Tls::load(TlsFiles {
            cert: files.0.clone(),
            key: files.1.clone(),
            ca: files.2.clone(),
            client_auth,
        })
        .expect("TLS settings load"),
    )
}

/// A client that trusts `ca` and, when given, presents `identity` (cert and key PEM files).
fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("CA PEM");
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA")])
        .timeout(std::time::Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        let mut id = std::fs::read(cert).expect("cert");
        id.extend(std::fs::read(key).expect("key"));
        b = b.identity(reqwest::Identity::from_pem(&id).expect("identity"));
    }
    b.build().expect("client")
}

fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([x as u8, y as u8, 99]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_mutual_tls_serves_end_to_end_and_refuses_plain_and_foreign_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = pki(dir.path(), "cluster");
    let foreign = pki(dir.path(), "foreign");
    let cache_l = bind_loopback();
    let cache_url = format!("https://{}", cache_l.local_addr().expect("addr"));
    let cluster = Cluster::start(ClusterOptions {
        stores: 2,
        replication: 2,
        cache_url: Some(cache_url.clone()),
        tls: Some(tls(&ours, true)),
        ..Default::default()
    })
    .await;
    assert!(cluster.directory_url().starts_with("https://"));
    // The public roles: TLS without demanding client certificates, presenting theirs to the
    // directory and the stores.
    let public_security = haystack_service::auth::Security {
        tls: Some(tls(&ours, false)),
        ..cluster.security()
    };
    let ccfg = haystack_cache::CacheConfig {
        directory_url: Some(cluster.directory_url()),
        capacity_bytes: 16 << 20,
        http_workers: 1,
        security: public_security.clone(),
        ..Default::default()
    };
    let _cache = spawn_node("cache", cache_l, move |l, rx| async move {
        haystack_cache::run(l, ccfg, stopped(rx))
            .await
            .expect("cache runs");
    })
    .with_https();
    let up_l = bind_loopback();
    let uploader_url = format!("https://{}", up_l.local_addr().expect("addr"));
    let ucfg = haystack_uploader::UploaderConfig {
        directory_url: Some(cluster.directory_url()),
        http_workers: 1,
        image_workers: 1,
        security: public_security.clone(),
        ..Default::default()
    };
    let _uploader = spawn_node("uploader", up_l, move |l, rx| async move {
        haystack_uploader::run(l, ucfg, stopped(rx))
            .await
            .expect("uploader runs");
    })
    .with_https();

    // A public client: trusts the CA, has no certificate.
    let public = client(&ours.2, None);
    let data = jpeg();
    let mut posted = None;
    for _ in 0..100 {
        if let Ok(r) = public
            .post(format!("{uploader_url}/v1/photos"))
            .header("content-type", "image/jpeg")
            .body(data.clone())
            .send()
            .await
        {
            assert_eq!(r.status(), 201, "upload over TLS");
            posted = Some(r.json::<serde_json::Value>().await.expect("JSON"));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let posted = posted.expect("the uploader answers over TLS");
    let original = posted["urls"]["original"]
        .as_str()
        .unwrap_or_else(|| panic!("an original URL in {posted}"))
        .to_string();
    assert!(
        original.starts_with(&cache_url),
        "{original} is not the cache's"
    );
    let r = public.get(&original).send().await.expect("cache GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &data[..]);

    // The stores demand a certificate of the cluster's CA: without one, with another CA's,
    // and in plain HTTP, nothing is served.
    let needle = original.replacen(&cache_url, &cluster.store_url(0), 1);
    assert!(
        public.get(&needle).send().await.is_err(),
        "a store served a client without a certificate"
    );
    let stranger = client(&ours.2, Some((&foreign.0, &foreign.1)));
    assert!(
        stranger.get(&needle).send().await.is_err(),
        "a store served a client with another CA's certificate"
    );
    let plain = needle.replacen("https://", "http://", 1);
    let r = reqwest::Client::new().get(&plain).send().await;
    assert!(
        !matches!(&r, Ok(resp) if resp.status().is_success()),
        "a store answered plain HTTP: {r:?}"
    );
    // With the cluster's certificate the store serves it (the cookie is the capability).
    let member = client(&ours.2, Some((&ours.0, &ours.1)));
    let r = member.get(&needle).send().await.expect("store GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &data[..]);
    // The S3 role over TLS: it answers its health, and an
    // unsigned listing gets S3's XML refusal; plain HTTP gets no answer.
    let s3_l = bind_loopback();
    let s3_url = format!("https://{}", s3_l.local_addr().expect("addr"));
    let s3cfg = haystack_s3::S3Config {
        directory_urls: Some(cluster.directory_urls()),
        master_key_file: dir.path().join("s3-master.key"),
        http_workers: 1,
        security: public_security,
        ..Default::default()
    };
    let _s3 = spawn_node("s3", s3_l, move |l, rx| async move {
        haystack_s3::run(l, s3cfg, stopped(rx))
            .await
            .expect("s3 runs");
    })
    .with_https();
    let mut health = None;
    for _ in 0..100 {
        if let Ok(r) = public.get(format!("{s3_url}/health")).send().await {
            health = Some(r.status());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(health, Some(reqwest::StatusCode::OK), "S3 health over TLS");
    let r = public
        .get(format!("{s3_url}/"))
        .send()
        .await
        .expect("S3 list");
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("<Code>AccessDenied</Code>"));
    let plain = s3_url.replacen("https://", "http://", 1);
    let r = reqwest::Client::new()
        .get(format!("{plain}/health"))
        .send()
        .await;
    assert!(
        !matches!(&r, Ok(resp) if resp.status().is_success()),
        "the S3 role answered plain HTTP: {r:?}"
    );
    // A client that does not trust the cluster's CA does not talk to the uploader.
    let untrusting = client(&foreign.2, None);
    assert!(untrusting
        .get(format!("{uploader_url}/health"))
        .send()
        .await
        .is_err());
}
