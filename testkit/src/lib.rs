//! A small real cluster on loopback for integration tests: the embedded directory and store
//! machines, in this process, each on its own runtime thread and its own port.
//!
//! The uploader's, the cache's and the ops tests all start one of these instead of each
//! wiring a directory and stores by hand. Every part is the real one (redb metadata, volume
//! files with fdatasync, io_uring when the kernel has it, real HTTP); only the process
//! boundary is missing, so a store "dies" by a graceful stop of its server (connections are
//! refused from then on) and comes back on the same port and data directory.
//!
//! Every cluster has its own random cluster secret (`keys`, `security`), as a production
//! cluster does: tests that call internal or admin routes directly use [`Cluster::admin_http`]
//! or [`Cluster::credentials`], and start the cache and the uploader with
//! [`Cluster::security`].
//!
//! The roles' Prometheus recorders are process-wide: in a test process the first role to
//! start owns it, and the others' /metrics say so. Tests that read metrics should read the
//! service under test in its own process or tolerate that.

pub mod netns;
pub mod placement;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haystack_client::Credentials;
use haystack_proto::auth::{ClusterKeys, Role};
use haystack_proto::directory::LogicalVolumeInfo;
use haystack_service::auth::{unix_now, Security};
use haystack_store::StoreConfig;
pub use haystack_store::{EngineKind, ScrubConfig};
use tokio::sync::watch;

/// What to start. `Default` is two stores, replication 2, 64 MiB volumes.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Store machines.
    pub stores: usize,
    /// Replicas per logical volume.
    pub replication: usize,
    /// Size of each volume (directory plan and store maximum), bytes.
    pub volume_bytes: u64,
    /// Largest needle a store accepts, bytes.
    pub max_needle_bytes: u64,
    /// Writable logical volumes the directory keeps ready (and `start` waits for).
    pub min_writable_volumes: usize,
    /// Base of read URLs (the cache tier), when one is part of the test.
    pub cache_url: Option<String>,
    /// Caches the directory tells to purge on delete (default: `cache_url`).
    pub cache_purge_urls: Vec<String>,
    /// Store I/O engine.
    pub engine: EngineKind,
    /// Silence after which the directory marks a store down, ms.
    pub store_timeout_ms: u64,
    /// Down time after which the directory re-replicates a store's volumes, ms (0: never).
    pub rereplicate_after_ms: u64,
    /// How long the directory keeps a moved replica's old copy before it drops it, ms.
    pub moved_copy_keep_ms: u64,
    /// The directory's anti-entropy interval, ms (0: off, the default here).
    pub anti_entropy_interval_ms: u64,
    /// The stores' scrubber (off by default here: `bytes_per_sec: Some(0)`).
    pub scrub: haystack_store::ScrubConfig,
    /// Benchmarks: store `.0` answers every batch write `.1` ms late (a slow replica).
    pub slow_store: Option<(usize, u64)>,
    /// TLS for the directory and the stores (their URLs turn https://), and for every client
    /// of the cluster's own (`admin_http`, the roles' internal clients).
    pub tls: Option<std::sync::Arc<haystack_service::tls::Tls>>,
    /// Signed read URLs with this lifetime, seconds (`Security::signed_reads_ttl_secs`): the
    /// directory signs, the stores (and caches started with [`Cluster::security`]) check.
    pub signed_reads_ttl_secs: Option<u64>,
    /// Stores in the remote zone `remote` (after the `stores` local ones: indices
    /// `stores..stores + remote_stores`), holding asynchronous remote replicas only.
    pub remote_stores: usize,
    /// The directory's automatic encode policy: age in seconds (0: off, the default), scheme
    /// `k+m` and block size (`encode_after_secs`, `encode_scheme`, `encode_block_bytes`).
    pub encode_after_secs: u64,
    pub encode_scheme: String,
    pub encode_block_bytes: u64,
    /// The directory's placement of new volumes' replicas (`spread`, the default, or
    /// `chained`).
    pub placement: haystack_directory::placement::Policy,
    /// A directory URL nothing answers (a port bound, then closed) listed before the real
    /// directory: the stores register and heartbeat through the list, and
    /// [`Cluster::directory_urls`] answers it, so that every role a test starts with it fails
    /// over. Default false.
    pub dead_directory_first: bool,
}

/// The zone of a test cluster's remote stores (`ClusterOptions::remote_stores`).
pub const REMOTE_ZONE: &str = "remote";

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            stores: 2,
            replication: 2,
            volume_bytes: 64 << 20,
            max_needle_bytes: 16 << 20,
            min_writable_volumes: 2,
            cache_url: None,
            cache_purge_urls: Vec::new(),
            engine: EngineKind::Auto,
            store_timeout_ms: 3_000,
            rereplicate_after_ms: 0,
            moved_copy_keep_ms: 600_000,
            anti_entropy_interval_ms: 0,
            scrub: haystack_store::ScrubConfig {
                bytes_per_sec: Some(0),
                ..Default::default()
            },
            slow_store: None,
            tls: None,
            signed_reads_ttl_secs: None,
            remote_stores: 0,
            encode_after_secs: 0,
            encode_scheme: "2+1".to_string(),
            encode_block_bytes: 64 << 10,
            placement: Default::default(),
            dead_directory_first: false,
        }
    }
}

/// One role running on its own thread and runtime; stopped (gracefully) on `stop` or drop.
pub struct Node {
    addr: SocketAddr,
    scheme: &'static str,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// `http://127.0.0.1:PORT` (`https://` for a node started with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The same node, its URL said with `https://` (it serves TLS).
    pub fn with_https(mut self) -> Node {
        self.scheme = "https";
        self
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server (in-flight requests finish) and waits for its thread.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `body` (a role serving `listener` until the watch turns true) on its own thread and
/// runtime; the cache and uploader tests start their role next to a cluster with it.
pub fn spawn_node<F, Fut>(name: &str, listener: TcpListener, body: F) -> Node
where
    F: FnOnce(TcpListener, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let addr = listener.local_addr().expect("bound listener");
    let (tx, rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("node runtime");
            rt.block_on(body(listener, rx));
        })
        .expect("node thread");
    Node {
        addr,
        scheme: "http",
        stop: tx,
        thread: Some(thread),
    }
}

/// Resolves when the watch turns true (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Binds 127.0.0.1 on a free port.
pub fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// Installs a test log subscriber once (RUST_LOG, default warn), writing through the test
/// harness's capture.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A loopback URL nothing listens on: a port bound, then closed (connections are refused;
/// another test could take the port later, which is unlikely within one test).
pub fn dead_url() -> String {
    format!("http://{}", bind_loopback().local_addr().expect("addr"))
}

/// A directory and `stores` store machines on loopback, data in a temporary directory.
pub struct Cluster {
    opts: ClusterOptions,
    root: tempfile::TempDir,
    directory: Node,
    /// The dead URL listed first when `dead_directory_first`.
    dead_directory: Option<String>,
    stores: Vec<Option<Node>>,
    store_addrs: Vec<SocketAddr>,
    keys: ClusterKeys,
}

/// A fresh random cluster secret (64 hex digits), as `haystack server` makes one.
pub fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

impl Cluster {
    /// Starts the directory and the stores and waits (up to 60 s) until the directory has
    /// `min_writable_volumes` writable logical volumes whose replicas all exist.
    pub async fn start(opts: ClusterOptions) -> Cluster {
        init_logs();
        let root = tempfile::Builder::new()
            .prefix("haystack-cluster-")
            .tempdir()
            .expect("temp dir");
        let keys = ClusterKeys::from_secret(&random_secret()).expect("a valid secret");
        let dir_listener = bind_loopback();
        let security = Security {
            tls: opts.tls.clone(),
            signed_reads_ttl_secs: opts.signed_reads_ttl_secs,
            ..Security::with_keys(keys.clone())
        };
        let https = opts.tls.is_some();
        let dcfg = haystack_directory::DirectoryConfig {
            security,
            metadata: format!("embedded:{}", root.path().join("directory").display()),
            replication_factor: opts.replication,
            heartbeat_interval_secs: 1,
            store_timeout_ms: opts.store_timeout_ms,
            maintenance_interval_ms: 200,
            volume_capacity_bytes: opts.volume_bytes,
            min_writable_volumes: opts.min_writable_volumes,
            min_writable_free_bytes: 0,
            // Tests count and fill volumes themselves: no volumes made ahead of the write rate.
            writable_headroom_secs: 0,
            cache_url: opts.cache_url.clone(),
            cache_purge_urls: opts.cache_purge_urls.clone(),
            notify_timeout_ms: 2_000,
            rereplicate_after_ms: opts.rereplicate_after_ms,
            moved_copy_keep_ms: opts.moved_copy_keep_ms,
            anti_entropy_interval_ms: opts.anti_entropy_interval_ms,
            remote_zones: if opts.remote_stores > 0 {
                vec![REMOTE_ZONE.to_string()]
            } else {
                Vec::new()
            },
            encode_after_secs: opts.encode_after_secs,
            encode_scheme: opts.encode_scheme.clone(),
            encode_block_bytes: opts.encode_block_bytes,
            placement: opts.placement,
            ..Default::default()
        };
        let mut directory = spawn_node("directory", dir_listener, move |l, rx| async move {
            if let Err(e) = haystack_directory::run(l, dcfg, stopped(rx)).await {
                panic!("directory failed: {e}");
            }
        });
        if https {
            directory = directory.with_https();
        }
        let dead_directory = opts.dead_directory_first.then(dead_url);
        let mut c = Cluster {
            opts,
            root,
            directory,
            dead_directory,
            stores: Vec::new(),
            store_addrs: Vec::new(),
            keys,
        };
        for i in 0..c.opts.stores + c.opts.remote_stores {
            let l = bind_loopback();
            c.store_addrs.push(l.local_addr().expect("addr"));
            let node = c.spawn_store(i, l);
            c.stores.push(Some(node));
        }
        c.wait_writable(c.opts.min_writable_volumes).await;
        c
    }

    fn spawn_store(&self, i: usize, listener: TcpListener) -> Node {
        let cfg = StoreConfig {
            data_dir: self.store_dir(i),
            engine: self.opts.engine,
            max_volume_bytes: self.opts.volume_bytes,
            max_needle_bytes: self.opts.max_needle_bytes,
            max_write_bytes: self.opts.max_needle_bytes * 4 + 4096,
            prealloc_step: 4 << 20,
            security: self.security(),
            ..Default::default()
        };
        let directory_urls = self.directory_urls();
        let scrub = self.opts.scrub.clone();
        let scheme = self.scheme();
        let remote = (self.opts.stores..self.opts.stores + self.opts.remote_stores).contains(&i);
        let zone = remote.then(|| REMOTE_ZONE.to_string());
        let slow_batch_ms = match self.opts.slow_store {
            Some((s, ms)) if s == i => ms,
            _ => 0,
        };
        let node = spawn_node(&format!("store-{i}"), listener, move |l, rx| async move {
            let public_url = format!("{scheme}://{}", l.local_addr().expect("addr"));
            let run = haystack_store::RunConfig {
                store: cfg,
                heartbeat: Some(haystack_store::heartbeat::HeartbeatConfig {
                    directory_urls,
                    public_url,
                    zone,
                    rack: None,
                    interval: Duration::from_secs(1),
                }),
                scrub,
                http: haystack_store::http::ServerOptions {
                    slow_batch_ms,
                    ..Default::default()
                },
                ..Default::default()
            };
            haystack_store::run(l, run, stopped(rx))
                .await
                .expect("store server");
        });
        if scheme == "https" {
            node.with_https()
        } else {
            node
        }
    }

    /// `https` when the cluster runs TLS, else `http`.
    fn scheme(&self) -> &'static str {
        if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The cluster's keys (from its random secret).
    pub fn keys(&self) -> &ClusterKeys {
        &self.keys
    }

    /// The security settings a role of this cluster runs with (the cache's and the
    /// uploader's configs take them).
    pub fn security(&self) -> Security {
        Security {
            tls: self.opts.tls.clone(),
            signed_reads_ttl_secs: self.opts.signed_reads_ttl_secs,
            ..Security::with_keys(self.keys.clone())
        }
    }

    /// Internal credentials for haystack-client's clients in tests.
    pub fn credentials(&self) -> Credentials {
        Credentials::internal(Some(&self.keys), "test")
    }

    /// An admin token valid for an hour.
    pub fn admin_token(&self) -> String {
        self.keys.mint(Role::Admin, "test", unix_now() + 3600)
    }

    /// A reqwest client that sends an admin token with every request (for tests that call
    /// internal or admin routes by hand).
    pub fn admin_http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {}", self.admin_token());
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&value).expect("a visible ASCII token"),
        );
        self.security()
            .http_builder()
            .default_headers(headers)
            .build()
            .expect("reqwest client")
    }

    /// The directory's base URL.
    pub fn directory_url(&self) -> String {
        self.directory.url()
    }

    /// The directory URLs the stores use: the directory's, after a dead one when
    /// `dead_directory_first`.
    pub fn directory_urls(&self) -> Vec<String> {
        self.dead_directory
            .iter()
            .cloned()
            .chain([self.directory.url()])
            .collect()
    }

    /// Store `i`'s base URL (also while it is stopped).
    pub fn store_url(&self, i: usize) -> String {
        format!("{}://{}", self.scheme(), self.store_addrs[i])
    }

    /// Every store's base URL, in start order.
    pub fn store_urls(&self) -> Vec<String> {
        (0..self.store_addrs.len())
            .map(|i| self.store_url(i))
            .collect()
    }

    /// Store `i`'s data directory (volume files).
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("store-{i}"))
    }

    /// The cluster's temporary root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Stops store `i` (its port refuses connections from then on).
    pub fn stop_store(&mut self, i: usize) {
        if let Some(mut n) = self.stores[i].take() {
            n.stop();
        }
    }

    /// Adds a new, empty store machine (a local one) and returns its index.
    pub fn add_store(&mut self) -> usize {
        let l = bind_loopback();
        let i = self.store_addrs.len();
        self.store_addrs.push(l.local_addr().expect("addr"));
        let node = self.spawn_store(i, l);
        self.stores.push(Some(node));
        i
    }

    /// Starts store `i` again on its port and data directory.
    pub fn start_store(&mut self, i: usize) {
        if self.stores[i].is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let l = loop {
            match TcpListener::bind(self.store_addrs[i]) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "port not free yet");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.store_addrs[i]),
            }
        };
        let node = self.spawn_store(i, l);
        self.stores[i] = Some(node);
    }

    /// The directory's logical volumes.
    pub async fn volumes(&self) -> Vec<LogicalVolumeInfo> {
        let url = format!("{}/v1/volumes", self.directory.url());
        let resp = self
            .admin_http()
            .get(&url)
            .send()
            .await
            .expect("GET /v1/volumes");
        let v: serde_json::Value = resp.json().await.expect("volumes JSON");
        // The directory answers a bare list; tolerate an object with "volumes" as well.
        let list = v.get("volumes").cloned().unwrap_or(v);
        serde_json::from_value(list).expect("LogicalVolumeInfo list")
    }

    /// Waits (up to 60 s) until `n` logical volumes are writable with every replica reported.
    pub async fn wait_writable(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = self.admin_http();
        loop {
            let ok = match http
                .get(format!("{}/v1/volumes", self.directory.url()))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    let list = v.get("volumes").cloned().unwrap_or(v);
                    let vols: Vec<LogicalVolumeInfo> =
                        serde_json::from_value(list).unwrap_or_default();
                    vols.iter()
                        .filter(|v| v.writable && v.replicas.iter().all(|r| r.up && r.reported))
                        .count()
                        >= n
                }
                _ => false,
            };
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster: {n} writable volumes did not appear within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in self.stores.iter_mut() {
            if let Some(mut n) = s.take() {
                n.stop();
            }
        }
        self.directory.stop();
    }
}
