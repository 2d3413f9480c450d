//! What the load is driven against, through its public HTTP API only: the uploader (writes
//! and deletes; reads through the URLs it returns, i.e. the cache tier), the directory and
//! the stores directly (assign, PUT to every replica, commit: the path of `haystack photo
//! put`, for clusters without an uploader), nginx serving one file per photo (WebDAV PUT,
//! GET of the same path: the baseline Haystack replaced), or any S3 endpoint (SigV4-signed
//! PUT, GET and DELETE of objects by path, see [`crate::s3`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use haystack_client::urls;
use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, PhotoInfo, PhotoKind, Variant,
};
use haystack_proto::NeedleAddr;
use reqwest::{header, StatusCode};

use crate::error::{LoadError, Result};
use crate::s3::{now_secs, S3Endpoint};
use crate::stats::Failure;

/// The variants a photo may have, in the order [`Object::urls`] keeps them.
pub const VARIANTS: [&str; 4] = ["original", "large", "medium", "thumb"];

/// Which kind of service is driven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// `POST {url}/v1/photos`, `DELETE {url}/v1/photos/{id}`, `POST {url}/v1/videos`.
    Uploader {
        url: String,
        api_key: Option<String>,
    },
    /// `POST {directory}/v1/assign`, `PUT {replica}/v1/needles/...`, `POST {directory}/v1/photos`,
    /// with `token` (an internal or admin token, `haystack token create`) as the bearer when
    /// the cluster has a secret.
    Direct {
        directory: String,
        token: Option<String>,
    },
    /// `PUT {url}/dav/{tag}/xx/yy/n`, GET of the same URL.
    Nginx { url: String, tag: String },
    /// `PUT`, `GET` and `DELETE {url}/{bucket}/{prefix}/{n}`, signed (SigV4).
    S3(S3Endpoint),
}

impl TargetKind {
    /// `uploader http://127.0.0.1:8080` and the like.
    pub fn describe(&self) -> String {
        match self {
            TargetKind::Uploader { url, .. } => format!("uploader {url}"),
            TargetKind::Direct { directory, .. } => {
                format!("directory + stores (no uploader) via {directory}")
            }
            TargetKind::Nginx { url, .. } => format!("nginx file-per-photo {url}"),
            TargetKind::S3(e) => format!("S3 {} bucket {}", e.url, e.bucket),
        }
    }

    /// The base URLs the run starts from (all checked by [`check_loopback`]).
    pub fn urls(&self) -> Vec<&str> {
        match self {
            TargetKind::Uploader { url, .. } | TargetKind::Nginx { url, .. } => vec![url],
            TargetKind::Direct { directory, .. } => vec![directory],
            TargetKind::S3(e) => vec![&e.url],
        }
    }
}

/// An object's lifecycle as this run knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjState {
    /// Acknowledged and not deleted.
    Live = 0,
    /// A delete was sent and has not answered yet.
    Deleting = 1,
    /// The delete was acknowledged: every URL must answer 404.
    Deleted = 2,
    /// The delete failed: the object may or may not exist.
    Unknown = 3,
}

/// An acknowledged upload.
#[derive(Debug)]
pub struct Object {
    /// Photo or video id (decimal), or nginx path.
    pub id: String,
    /// Read URL per entry of [`VARIANTS`] (videos: one URL in slot 0).
    pub urls: [Option<Box<str>>; 4],
    /// Bytes uploaded.
    pub size: u64,
    /// What the payload was made from (see [`crate::payload`]).
    pub seed: u64,
    state: AtomicU8,
}

impl Object {
    /// A live object.
    pub fn new(id: String, urls: [Option<Box<str>>; 4], size: u64, seed: u64) -> Object {
        Object {
            id,
            urls,
            size,
            seed,
            state: AtomicU8::new(ObjState::Live as u8),
        }
    }

    /// The URL of a variant, or of the original when the photo has no such variant.
    pub fn url(&self, variant: usize) -> &str {
        self.urls[variant]
            .as_deref()
            .or(self.urls[0].as_deref())
            .unwrap_or("")
    }

    /// Where the object is in its life.
    pub fn state(&self) -> ObjState {
        match self.state.load(Ordering::Acquire) {
            0 => ObjState::Live,
            1 => ObjState::Deleting,
            2 => ObjState::Deleted,
            _ => ObjState::Unknown,
        }
    }

    /// Moves the object on.
    pub fn set_state(&self, s: ObjState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Live → Deleting; false when another task got there first.
    pub fn start_delete(&self) -> bool {
        self.state
            .compare_exchange(
                ObjState::Live as u8,
                ObjState::Deleting as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// Refuses a URL whose host is not a loopback address, unless remote traffic was allowed.
pub fn check_loopback(url: &str, allow_remote: bool) -> Result<()> {
    if allow_remote {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| LoadError::Config(format!("URL {url:?} does not parse: {e}")))?;
    let host = parsed.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<IpAddr>()
            .map(|a| a.is_loopback())
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(LoadError::NotLoopback {
            url: url.to_string(),
        })
    }
}

/// A target and the HTTP client that drives it.
#[derive(Clone)]
pub struct Target {
    pub kind: TargetKind,
    client: reqwest::Client,
    allow_remote: bool,
}

/// What one request returned: the body, or why it failed.
pub type Outcome<T> = std::result::Result<T, Failure>;

impl Target {
    /// A client with a pool large enough for `connections` and the given request timeout.
    pub fn new(
        kind: TargetKind,
        connections: usize,
        timeout: Duration,
        allow_remote: bool,
    ) -> Result<Target> {
        if let TargetKind::S3(e) = &kind {
            e.validate()?;
        }
        for u in kind.urls() {
            check_loopback(u, allow_remote)?;
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let TargetKind::Direct { token: Some(t), .. } = &kind {
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                .map_err(|_| LoadError::Config("--token must be visible ASCII".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(connections.max(1))
            .connect_timeout(Duration::from_secs(3).min(timeout))
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()?;
        Ok(Target {
            kind,
            client,
            allow_remote,
        })
    }

    /// The HTTP client (for reads by URL).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn loopback(&self, url: &str) -> Outcome<()> {
        check_loopback(url, self.allow_remote).map_err(|_| Failure::NotLoopback)
    }

    /// Uploads a photo; `n` numbers the upload within the run (nginx paths use it).
    pub async fn upload(&self, body: Vec<u8>, n: u64, seed: u64) -> Outcome<Object> {
        let size = body.len() as u64;
        match &self.kind {
            TargetKind::Uploader { url, api_key } => {
                let mut req = self
                    .client
                    .post(urls::uploader::photos(url))
                    .header(header::CONTENT_TYPE, "image/jpeg")
                    .body(body);
                if let Some(k) = api_key {
                    req = req.bearer_auth(k);
                }
                let resp = req.send().await.map_err(|e| Failure::of(&e))?;
                if resp.status() != StatusCode::CREATED && resp.status() != StatusCode::OK {
                    return Err(Failure::Status(resp.status().as_u16()));
                }
                let v: serde_json::Value = resp.json().await.map_err(|e| Failure::of(&e))?;
                let id = json_id(&v).ok_or(Failure::Mismatch)?;
                let mut urls: [Option<Box<str>>; 4] = Default::default();
                for (i, name) in VARIANTS.iter().enumerate() {
                    if let Some(u) = v
                        .get("urls")
                        .and_then(|u| u.get(*name))
                        .and_then(|u| u.as_str())
                    {
                        self.loopback(u)?;
                        urls[i] = Some(u.into());
                    }
                }
                if urls[0].is_none() {
                    return Err(Failure::Mismatch);
                }
                Ok(Object::new(id, urls, size, seed))
            }
            TargetKind::Direct { directory, .. } => self.direct_upload(directory, body, seed).await,
            TargetKind::Nginx { url, tag } => {
                // Two levels of hashed directories, as a file-per-photo store lays them out.
                let h = (n.wrapping_mul(2_654_435_761) >> 16) & 0xFFFF;
                let path = format!("/dav/{tag}/{:02x}/{:02x}/{n}", h >> 8, h & 0xFF);
                let u = format!("{url}{path}");
                let resp = self
                    .client
                    .put(&u)
                    .header(header::CONTENT_TYPE, "image/jpeg")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Failure::of(&e))?;
                if !resp.status().is_success() {
                    return Err(Failure::Status(resp.status().as_u16()));
                }
                let mut urls: [Option<Box<str>>; 4] = Default::default();
                urls[0] = Some(u.into());
                Ok(Object::new(path, urls, size, seed))
            }
            TargetKind::S3(e) => {
                let u = e.object_url(n);
                let hash = e.put_payload_hash(&body);
                let resp = self
                    .s3_request(e, reqwest::Method::PUT, &u, &hash)?
                    .header(header::CONTENT_TYPE, "image/jpeg")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Failure::of(&e))?;
                if resp.status() != StatusCode::OK {
                    return Err(Failure::Status(resp.status().as_u16()));
                }
                let mut urls: [Option<Box<str>>; 4] = Default::default();
                urls[0] = Some(u.into());
                Ok(Object::new(n.to_string(), urls, size, seed))
            }
        }
    }

    /// A request to an S3 endpoint with its signature headers (`payload_hash` is what
    /// `x-amz-content-sha256` says of the body).
    fn s3_request(
        &self,
        e: &S3Endpoint,
        method: reqwest::Method,
        url: &str,
        payload_hash: &str,
    ) -> Outcome<reqwest::RequestBuilder> {
        self.loopback(url)?;
        let parsed = reqwest::Url::parse(url).map_err(|_| Failure::Mismatch)?;
        let mut req = self.client.request(method.clone(), parsed.clone());
        for (k, v) in e.sign(method.as_str(), &parsed, payload_hash, now_secs()) {
            req = req.header(k, v);
        }
        Ok(req)
    }

    async fn direct_upload(&self, directory: &str, body: Vec<u8>, seed: u64) -> Outcome<Object> {
        let size = body.len() as u64;
        let resp = self
            .client
            .post(urls::directory::assign(directory))
            .json(&AssignRequest {
                size_hint_bytes: size,
                ..Default::default()
            })
            .send()
            .await
            .map_err(|e| Failure::of(&e))?;
        if !resp.status().is_success() {
            return Err(Failure::Status(resp.status().as_u16()));
        }
        let a: AssignResponse = resp.json().await.map_err(|e| Failure::of(&e))?;
        let body = Bytes::from(body);
        let puts = a.replicas.iter().map(|r| {
            let url = urls::needle(&r.url, &NeedleAddr::new(a.volume_id, a.id, 0, a.cookie));
            let req = self
                .client
                .put(url.clone())
                .header(header::CONTENT_TYPE, "image/jpeg")
                .body(body.clone());
            async move {
                self.loopback(&url)?;
                let resp = req.send().await.map_err(|e| Failure::of(&e))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(Failure::Status(resp.status().as_u16()))
                }
            }
        });
        for r in join_all(puts).await {
            r?;
        }
        let commit = CommitRequest {
            id: a.id,
            cookie: a.cookie,
            volume_id: a.volume_id,
            kind: PhotoKind::Photo,
            variants: vec![Variant {
                name: "original".into(),
                alt: 0,
                size_bytes: size,
                content_type: "image/jpeg".into(),
            }],
            chunks: Vec::new(),
        };
        let resp = self
            .client
            .post(urls::directory::photos(directory))
            .json(&commit)
            .send()
            .await
            .map_err(|e| Failure::of(&e))?;
        if !resp.status().is_success() {
            return Err(Failure::Status(resp.status().as_u16()));
        }
        let p: PhotoInfo = resp.json().await.map_err(|e| Failure::of(&e))?;
        let url = p
            .variants
            .iter()
            .find(|v| v.alt == 0)
            .map(|v| v.url.clone())
            .ok_or(Failure::Mismatch)?;
        self.loopback(&url)?;
        let mut urls: [Option<Box<str>>; 4] = Default::default();
        urls[0] = Some(url.into());
        Ok(Object::new(a.id.to_string(), urls, size, seed))
    }

    /// Deletes a photo or object (204 from the uploader and S3, 200 from the directory).
    pub async fn delete(&self, obj: &Object) -> Outcome<()> {
        let req = match &self.kind {
            TargetKind::Uploader { url, api_key } => {
                let mut r = self.client.delete(urls::uploader::photo(url, obj_id(obj)?));
                if let Some(k) = api_key {
                    r = r.bearer_auth(k);
                }
                r
            }
            TargetKind::Direct { directory, .. } => self
                .client
                .delete(urls::directory::photo(directory, obj_id(obj)?)),
            TargetKind::Nginx { .. } => {
                // the baseline's nginx allows PUT only; deletes are not part of the comparison
                return Err(Failure::Status(405));
            }
            TargetKind::S3(e) => self.s3_request(
                e,
                reqwest::Method::DELETE,
                obj.url(0),
                haystack_s3::sigv4::EMPTY_SHA256,
            )?,
        };
        let resp = req.send().await.map_err(|e| Failure::of(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Failure::Status(resp.status().as_u16()))
        }
    }

    /// Uploads a video (uploader only): the id and its URL.
    pub async fn upload_video(&self, body: Vec<u8>, seed: u64) -> Outcome<Object> {
        let TargetKind::Uploader { url, api_key } = &self.kind else {
            return Err(Failure::Status(405));
        };
        let size = body.len() as u64;
        let mut req = self
            .client
            .post(urls::uploader::videos(url))
            .header(header::CONTENT_TYPE, "video/mp4")
            .body(body);
        if let Some(k) = api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| Failure::of(&e))?;
        if !resp.status().is_success() {
            return Err(Failure::Status(resp.status().as_u16()));
        }
        let v: serde_json::Value = resp.json().await.map_err(|e| Failure::of(&e))?;
        let id = json_id(&v).ok_or(Failure::Mismatch)?;
        let u = v
            .get("url")
            .and_then(|u| u.as_str())
            .ok_or(Failure::Mismatch)?;
        self.loopback(u)?;
        let mut urls: [Option<Box<str>>; 4] = Default::default();
        urls[0] = Some(u.into());
        Ok(Object::new(id, urls, size, seed))
    }

    /// GETs a URL (optionally a byte range `start..end`); the body of a 200 or 206.
    /// An S3 target signs the request.
    pub async fn get(&self, url: &str, range: Option<(u64, u64)>) -> Outcome<Bytes> {
        let mut req = match &self.kind {
            TargetKind::S3(e) => self.s3_request(
                e,
                reqwest::Method::GET,
                url,
                haystack_s3::sigv4::EMPTY_SHA256,
            )?,
            _ => self.client.get(url),
        };
        if let Some((a, b)) = range {
            req = req.header(header::RANGE, format!("bytes={a}-{}", b - 1));
        }
        let resp = req.send().await.map_err(|e| Failure::of(&e))?;
        let st = resp.status();
        let expected = if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if st != expected {
            return Err(Failure::Status(st.as_u16()));
        }
        resp.bytes().await.map_err(|e| Failure::of(&e))
    }
}

/// `"id": "123"` (or a number, tolerated).
fn json_id(v: &serde_json::Value) -> Option<String> {
    match v.get("id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The photo id of an object the uploader or the directory made (a decimal u64).
fn obj_id(obj: &Object) -> Outcome<u64> {
    obj.id.parse().map_err(|_| Failure::Mismatch)
}
