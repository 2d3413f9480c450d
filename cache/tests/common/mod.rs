//! Shared helpers of the cache's integration tests: a real cluster (testkit) with cache nodes
//! in front, and ways to put photos and videos into it.

use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haystack_cache::{CacheConfig, StatsSnapshot};
use haystack_client::{Credentials, DirectoryClient};
use haystack_proto::directory::{
    AssignRequest, CommitRequest, PhotoInfo, PhotoKind, Variant, VideoChunk,
};
use haystack_testkit::{bind_loopback, Cluster, ClusterOptions};
use tokio::sync::oneshot;

/// A cache node running `haystack_cache::run` on its own thread and runtime; stopped
/// (gracefully) on drop.
pub struct CacheNode {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// What the node's `/v1/stats` asks for (a read token of its cluster).
    creds: Credentials,
}

impl CacheNode {
    /// Starts a node on an already bound listener.
    pub fn start(listener: TcpListener, cfg: CacheConfig) -> CacheNode {
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let creds = Credentials::internal(cfg.security.keys.as_ref(), "test");
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cache".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("cache runtime");
                rt.block_on(async move {
                    haystack_cache::run(listener, cfg, async move {
                        let _ = rx.await;
                    })
                    .await
                    .expect("cache runs");
                });
            })
            .expect("cache thread");
        CacheNode {
            url,
            stop: Some(tx),
            thread: Some(thread),
            creds,
        }
    }

    /// Stops the node and waits for it.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The node's counters.
    pub async fn stats(&self) -> StatsSnapshot {
        let mut r = reqwest::Client::new().get(format!("{}/v1/stats", self.url));
        if let Some(h) = self.creds.header() {
            r = r.header("authorization", h);
        }
        r.send()
            .await
            .expect("GET /v1/stats")
            .json()
            .await
            .expect("stats JSON")
    }
}

impl Drop for CacheNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster and cache nodes in front of it.
pub struct Env {
    pub cluster: Cluster,
    pub caches: Vec<CacheNode>,
    pub dir: DirectoryClient,
    pub http: reqwest::Client,
}

/// Settings the tests share: small, quick to notice failures.
pub fn test_config(directory_url: &str) -> CacheConfig {
    CacheConfig {
        directory_url: Some(directory_url.to_string()),
        capacity_bytes: 64 << 20,
        shards: 4,
        store_timeout_ms: 2_000,
        http_workers: 2,
        shutdown_timeout_secs: 2,
        ..Default::default()
    }
}

impl Env {
    /// A cluster (`opts`) with `nodes` cache nodes; `tune` adjusts each node's config (node
    /// index given). With more than one node they form a ring, and the directory tells only
    /// the first to purge (the first fans out).
    pub async fn start(
        opts: ClusterOptions,
        nodes: usize,
        tune: impl Fn(usize, &mut CacheConfig),
    ) -> Env {
        let listeners: Vec<TcpListener> = (0..nodes).map(|_| bind_loopback()).collect();
        let urls: Vec<String> = listeners
            .iter()
            .map(|l| format!("http://{}", l.local_addr().expect("addr")))
            .collect();
        let cluster = Cluster::start(ClusterOptions {
            cache_url: urls.first().cloned(),
            ..opts
        })
        .await;
        let mut caches = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let mut cfg = test_config(&cluster.directory_url());
            cfg.security = cluster.security();
            if nodes > 1 {
                cfg.peers = urls.clone();
                cfg.self_url = Some(urls[i].clone());
            }
            tune(i, &mut cfg);
            caches.push(CacheNode::start(l, cfg));
        }
        for c in &caches {
            wait_healthy(&c.url).await;
        }
        let dir = DirectoryClient::new(&cluster.directory_url())
            .expect("directory client")
            .with_credentials(cluster.credentials());
        let http = cluster.admin_http();
        Env {
            cluster,
            caches,
            dir,
            http,
        }
    }

    /// The test settings of another node in front of this cluster (its secret included).
    pub fn node_config(&self) -> CacheConfig {
        let mut c = test_config(&self.cluster.directory_url());
        c.security = self.cluster.security();
        c
    }

    /// One cache node, default cluster.
    pub async fn single(tune: impl Fn(&mut CacheConfig)) -> Env {
        Env::start(ClusterOptions::default(), 1, |_, c| tune(c)).await
    }

    pub fn cache(&self) -> &CacheNode {
        &self.caches[0]
    }

    /// Stores a photo with these variants (alt, bytes, content type) on every replica and
    /// commits it.
    pub async fn put_photo(&self, variants: &[(u32, Vec<u8>, &str)]) -> PhotoInfo {
        self.put_photo_on(None, variants).await
    }

    /// [`Env::put_photo`], the needles written only to the replica at `only` when given (a
    /// write the other replicas missed, committed as a `quorum` or `one` write is).
    pub async fn put_photo_on(
        &self,
        only: Option<&str>,
        variants: &[(u32, Vec<u8>, &str)],
    ) -> PhotoInfo {
        let total: u64 = variants.iter().map(|v| v.1.len() as u64).sum();
        let a = self
            .dir
            .assign(&AssignRequest {
                kind: PhotoKind::Photo,
                size_hint_bytes: total,
                idempotency_key: None,
                exclude_volumes: Vec::new(),
            })
            .await
            .expect("assign");
        for r in a
            .replicas
            .iter()
            .filter(|r| only.is_none_or(|u| u == r.url))
        {
            for (alt, data, ct) in variants {
                self.put_needle(&r.url, a.volume_id, a.id, *alt, a.cookie, data, ct)
                    .await;
            }
        }
        self.dir
            .commit(&CommitRequest {
                id: a.id,
                cookie: a.cookie,
                volume_id: a.volume_id,
                kind: PhotoKind::Photo,
                variants: variants
                    .iter()
                    .map(|(alt, data, ct)| Variant {
                        name: format!("v{alt}"),
                        alt: *alt,
                        size_bytes: data.len() as u64,
                        content_type: ct.to_string(),
                    })
                    .collect(),
                chunks: Vec::new(),
            })
            .await
            .expect("commit")
    }

    /// Stores a video: chunk i has alternate key i + 1.
    pub async fn put_video(&self, chunks: &[Vec<u8>], content_type: &str) -> PhotoInfo {
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let a = self
            .dir
            .assign(&AssignRequest {
                kind: PhotoKind::Video,
                size_hint_bytes: total,
                idempotency_key: None,
                exclude_volumes: Vec::new(),
            })
            .await
            .expect("assign");
        for r in &a.replicas {
            for (i, data) in chunks.iter().enumerate() {
                self.put_needle(
                    &r.url,
                    a.volume_id,
                    a.id,
                    i as u32 + 1,
                    a.cookie,
                    data,
                    content_type,
                )
                .await;
            }
        }
        let mut offset = 0;
        let list = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ch = VideoChunk {
                    alt: i as u32 + 1,
                    offset,
                    size_bytes: c.len() as u64,
                };
                offset += c.len() as u64;
                ch
            })
            .collect();
        self.dir
            .commit(&CommitRequest {
                id: a.id,
                cookie: a.cookie,
                volume_id: a.volume_id,
                kind: PhotoKind::Video,
                variants: Vec::new(),
                chunks: list,
            })
            .await
            .expect("commit video")
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_needle(
        &self,
        store: &str,
        volume: u32,
        id: u64,
        alt: u32,
        cookie: u64,
        data: &[u8],
        ct: &str,
    ) {
        let r = self
            .http
            .put(format!(
                "{store}/v1/needles/{volume}/{id}/{alt}/{cookie:016x}"
            ))
            .header("content-type", ct)
            .body(data.to_vec())
            .send()
            .await
            .expect("PUT needle");
        assert_eq!(r.status().as_u16(), 201, "PUT to {store}");
    }
}

/// `{base}/v1/needles/{volume}/{id}/{alt}/{cookie}`.
pub fn needle_url(base: &str, p: &PhotoInfo, alt: u32) -> String {
    format!(
        "{base}/v1/needles/{}/{}/{alt}/{:016x}",
        p.volume_id, p.id, p.cookie
    )
}

/// `{base}/v1/videos/{volume}/{id}/{cookie}`.
pub fn video_url(base: &str, p: &PhotoInfo) -> String {
    format!(
        "{base}/v1/videos/{}/{}/{:016x}",
        p.volume_id, p.id, p.cookie
    )
}

/// `n` bytes that differ from any other call's (xorshift from `seed`).
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Waits (up to 10 s) until `/health` answers.
pub async fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/health")).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GET with headers; returns status, headers and body.
pub async fn get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut rb = http.get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("GET");
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let body = r.bytes().await.expect("body").to_vec();
    (status, h, body)
}

/// A header as a string ("" when absent).
pub fn hdr<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The `error` code of a JSON error body.
pub fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_default()
}

/// A TCP relay in front of a service (a cache node's way to its directory) that a test can
/// cut: [`Relay::cut`] closes its listener and every connection through it, so that from then
/// on connections to it are refused, while everything else (the stores) stays reachable.
pub struct Relay {
    pub url: String,
    cut: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying connections to `to` (`http://host:port`).
    pub async fn start(to: &str) -> Relay {
        let target = to
            .strip_prefix("http://")
            .expect("an http URL")
            .trim_end_matches('/')
            .to_string();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let (tx, mut rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    a = l.accept() => {
                        let Ok((mut down, _)) = a else { continue };
                        let target = target.clone();
                        conns.spawn(async move {
                            if let Ok(mut up) = tokio::net::TcpStream::connect(&target).await {
                                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            }
                        });
                    }
                }
            }
            drop(l);
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        });
        Relay {
            url,
            cut: Some(tx),
            task: Some(task),
        }
    }

    /// Closes the listener and every relayed connection (returns once they are closed).
    pub async fn cut(&mut self) {
        if let Some(tx) = self.cut.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
