//! The harness: a cluster, the S3 role on a loopback port, an access key, and a SigV4 client
//! signed here independently of the server's code (same algorithm, same crates).

use std::net::TcpListener;
use std::thread::JoinHandle;

use haystack_s3::keys::Grant;
use haystack_s3::S3Config;
use haystack_testkit::{Cluster, ClusterOptions};
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// A key as a path: every segment encoded, `/` kept.
pub fn key_path(bucket: &str, key: &str) -> String {
    let k: Vec<String> = key.split('/').map(enc).collect();
    format!("/{bucket}/{}", k.join("/"))
}

pub struct Harness {
    pub cluster: Cluster,
    pub url: String,
    pub key: String,
    pub secret: String,
    pub s3: haystack_s3::service::S3,
    _dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(ClusterOptions {
            volume_bytes: 256 << 20,
            ..Default::default()
        })
        .await
    }

    /// The S3 role over a cluster started with `opts`.
    pub async fn start_with(opts: ClusterOptions) -> Harness {
        let cluster = Cluster::start(opts).await;
        let urls = cluster.directory_urls();
        Harness::start_on(cluster, urls).await
    }

    /// The S3 role over `cluster`, reaching its directory at `directory_urls` (a proxy).
    pub async fn start_on(cluster: Cluster, directory_urls: Vec<String>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = S3Config {
            directory_urls: Some(directory_urls),
            master_key_file: dir.path().join("master.key"),
            chunk_bytes: 1 << 20,
            security: cluster.security(),
            ..Default::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, rx) = watch::channel(false);
        let run_cfg = cfg.clone();
        let thread = std::thread::Builder::new()
            .name("s3".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("s3 runtime");
                rt.block_on(async move {
                    haystack_s3::run(listener, run_cfg, haystack_testkit::stopped(rx))
                        .await
                        .expect("s3 runs");
                });
            })
            .expect("s3 thread");
        // The same key file and directory as the server: what `haystack s3 key create` does.
        let s3 = haystack_s3::build(cfg.clone()).expect("s3 tool");
        let (key, secret) = s3
            .create_key(
                vec![Grant {
                    bucket: "*".into(),
                    read: true,
                    write: true,
                }],
                true,
            )
            .await
            .expect("create key");
        let h = Harness {
            cluster,
            url,
            key,
            secret,
            s3,
            _dir: dir,
            stop,
            thread: Some(thread),
        };
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("{}/health", h.url)).await {
                if r.status().is_success() {
                    return h;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the s3 role did not answer /health within 10 s");
    }

    pub fn client(&self) -> Client {
        Client {
            host: None,
            base: self.url.clone(),
            key: self.key.clone(),
            secret: self.secret.clone(),
            http: reqwest::Client::new(),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

pub fn amz_date(secs: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A request to sign and send.
pub struct Req<'a> {
    pub method: &'a str,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sign the payload's SHA-256 (else UNSIGNED-PAYLOAD).
    pub sign_payload: bool,
    /// An `x-amz-content-sha256` to send and sign instead (`STREAMING-...`).
    pub content_sha256: Option<String>,
}

impl<'a> Req<'a> {
    pub fn new(method: &'a str, path: String) -> Self {
        Req {
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            sign_payload: true,
            content_sha256: None,
        }
    }
    pub fn q(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.into(), v.into()));
        self
    }
    pub fn h(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_ascii_lowercase(), v.into()));
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    pub fn unsigned_payload(mut self) -> Self {
        self.sign_payload = false;
        self
    }
    /// Sends and signs `x-amz-content-sha256: {v}` (an aws-chunked framing).
    pub fn content_sha256(mut self, v: &str) -> Self {
        self.content_sha256 = Some(v.into());
        self
    }
}

pub struct Client {
    /// The Host header to send and sign instead of the URL's (virtual-host style).
    pub host: Option<String>,
    pub base: String,
    pub key: String,
    pub secret: String,
    pub http: reqwest::Client,
}

fn canonical_query(q: &[(String, String)]) -> String {
    let mut v: Vec<(String, String)> = q.iter().map(|(k, v)| (enc(k), enc(v))).collect();
    v.sort();
    v.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

impl Client {
    fn host(&self) -> String {
        self.host
            .clone()
            .unwrap_or_else(|| self.base.trim_start_matches("http://").to_string())
    }

    fn signing_key(&self, secret: &str, date: &str) -> Vec<u8> {
        let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"s3");
        hmac(&k, b"aws4_request")
    }

    /// Sends `r` signed with this client's secret.
    pub async fn send(&self, r: Req<'_>) -> reqwest::Response {
        let secret = self.secret.clone();
        self.send_with_secret(r, &secret).await
    }

    /// Sends `r` signed with `secret` (a wrong one, for the tests that want a refusal).
    pub async fn send_with_secret(&self, r: Req<'_>, secret: &str) -> reqwest::Response {
        let (url, headers) = self.sign(&r, secret);
        let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
        let mut b = self.http.request(method, url);
        for (k, v) in &headers {
            if k != "host" || self.host.is_some() {
                b = b.header(k.as_str(), v.as_str());
            }
        }
        b.body(r.body).send().await.expect("send")
    }

    /// The URL and the headers (authorization included) of `r` signed with `secret`.
    pub fn sign(&self, r: &Req<'_>, secret: &str) -> (String, Vec<(String, String)>) {
        let date = amz_date(now());
        let payload = if let Some(p) = &r.content_sha256 {
            p.clone()
        } else if r.sign_payload {
            sha256_hex(&r.body)
        } else {
            "UNSIGNED-PAYLOAD".to_string()
        };
        let mut headers = r.headers.clone();
        headers.push(("host".into(), self.host()));
        headers.push(("x-amz-content-sha256".into(), payload.clone()));
        headers.push(("x-amz-date".into(), date.clone()));
        headers.sort();
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let cq = canonical_query(&r.query);
        let mut cr = format!("{}\n{}\n{cq}\n", r.method, r.path);
        for (k, v) in &headers {
            cr.push_str(&format!("{k}:{}\n", v.trim()));
        }
        cr.push_str(&format!("\n{signed}\n{payload}"));
        let scope = format!("{}/us-east-1/s3/aws4_request", &date[..8]);
        let sts = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            sha256_hex(cr.as_bytes())
        );
        let sig = hex::encode(hmac(&self.signing_key(secret, &date[..8]), sts.as_bytes()));
        let url = if cq.is_empty() {
            format!("{}{}", self.base, r.path)
        } else {
            format!("{}{}?{cq}", self.base, r.path)
        };
        headers.push((
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}",
                self.key
            ),
        ));
        (url, headers)
    }

    /// A presigned URL for `method` on `path`, signed at `at` (seconds) for `expires` seconds.
    pub fn presign(&self, method: &str, path: &str, at: u64, expires: u64) -> String {
        let date = amz_date(at);
        let scope = format!("{}/us-east-1/s3/aws4_request", &date[..8]);
        let q = vec![
            (
                "X-Amz-Algorithm".to_string(),
                "AWS4-HMAC-SHA256".to_string(),
            ),
            (
                "X-Amz-Credential".to_string(),
                format!("{}/{scope}", self.key),
            ),
            ("X-Amz-Date".to_string(), date.clone()),
            ("X-Amz-Expires".to_string(), expires.to_string()),
            ("X-Amz-SignedHeaders".to_string(), "host".to_string()),
        ];
        let cq = canonical_query(&q);
        let cr = format!(
            "{method}\n{path}\n{cq}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
            self.host()
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            sha256_hex(cr.as_bytes())
        );
        let sig = hex::encode(hmac(
            &self.signing_key(&self.secret, &date[..8]),
            sts.as_bytes(),
        ));
        format!("{}{path}?{cq}&X-Amz-Signature={sig}", self.base)
    }

    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<Vec<u8>>,
    ) -> reqwest::Response {
        self.send(Req::new("PUT", key_path(bucket, key)).body(body))
            .await
    }

    pub async fn get(&self, bucket: &str, key: &str) -> reqwest::Response {
        self.send(Req::new("GET", key_path(bucket, key))).await
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let r = self.send(Req::new("PUT", format!("/{bucket}"))).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
}

/// The `<Code>` of an S3 error body.
pub async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    (
        status,
        between(&body, "<Code>", "</Code>").unwrap_or_default(),
    )
}

/// The text between the first `open` and the next `close`.
pub fn between(s: &str, open: &str, close: &str) -> Option<String> {
    let a = s.find(open)? + open.len();
    let b = s[a..].find(close)? + a;
    Some(s[a..b].to_string())
}

/// Every text between `open` and `close`.
pub fn all_between(s: &str, open: &str, close: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(a) = rest.find(open) {
        let from = a + open.len();
        let Some(b) = rest[from..].find(close) else {
            break;
        };
        out.push(rest[from..from + b].to_string());
        rest = &rest[from + b + close.len()..];
    }
    out
}
