//! Test harness: a directory on a loopback port over a fault-injectable embedded backend, and
//! fake store machines (HTTP servers that record what they are asked) driven by the test.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use haystack_client::DirectoryClient;
use haystack_directory::clock::SystemClock;
use haystack_directory::meta::embedded::EmbeddedStore;
use haystack_directory::meta::faulty::FaultyStore;
use haystack_directory::{run_with, DirectoryConfig, DirectoryError};
use haystack_proto::{Heartbeat, StoreRegistration, VolumeInfo, VolumeState};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Sleep between polls of an eventual condition (never a bound on speed).
pub const POLL: Duration = Duration::from_millis(20);
/// Polls before an eventual condition counts as never reached (generous on purpose).
pub const MAX_POLLS: usize = 1500;

pub fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// The requests a scripted double got, as "METHOD /path", in order.
pub type RequestLog = Arc<Mutex<Vec<String>>>;

/// A scripted test double on a loopback port (one actix worker): every request is logged,
/// then answered by `handler`, which gets the request and how many the double has had,
/// this one included. Its URL and its log.
pub fn scripted<F, Fut>(handler: F) -> (String, RequestLog)
where
    F: Fn(HttpRequest, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = HttpResponse> + 'static,
{
    scripted_with_body(move |req, _, n| handler(req, n))
}

/// [`scripted`] whose handler also gets the request's body.
pub fn scripted_with_body<F, Fut>(handler: F) -> (String, RequestLog)
where
    F: Fn(HttpRequest, web::Bytes, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = HttpResponse> + 'static,
{
    let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let listener = loopback();
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = HttpServer::new(move || {
        let (l, handler) = (l.clone(), handler.clone());
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let n = {
                let mut log = l.lock().expect("log");
                log.push(format!("{} {}", req.method(), req.path()));
                log.len()
            };
            handler(req, body, n)
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    (url, log)
}

/// A config for tests: fast maintenance, R = 3, small planned volumes.
pub fn test_config(data: &Path) -> DirectoryConfig {
    DirectoryConfig {
        metadata: format!("embedded:{}", data.display()),
        replication_factor: 3,
        maintenance_interval_ms: 30,
        store_timeout_ms: 60_000,
        volume_capacity_bytes: 1 << 20,
        min_writable_volumes: 2,
        min_writable_free_bytes: 1 << 10,
        http_workers: 1,
        notify_timeout_ms: 2_000,
        metadata_timeout_ms: 500,
        ..Default::default()
    }
}

/// A directory running on a loopback port.
pub struct TestDirectory {
    pub url: String,
    pub client: DirectoryClient,
    pub faults: Arc<FaultyStore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), DirectoryError>>>,
}

impl TestDirectory {
    pub async fn start(config: DirectoryConfig, data: &Path) -> Self {
        let store = EmbeddedStore::open(data).expect("open embedded store");
        let faults = Arc::new(FaultyStore::new(Arc::new(store)));
        Self::start_over(config, faults).await
    }

    /// A directory over a metadata store another one may share.
    pub async fn start_over(config: DirectoryConfig, faults: Arc<FaultyStore>) -> Self {
        let listener = loopback();
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_with(
            listener,
            config,
            faults.clone(),
            Arc::new(SystemClock),
            async move {
                let _ = rx.await;
            },
        ));
        let client = DirectoryClient::new(&url).expect("client");
        let dir = Self {
            url,
            client,
            faults,
            shutdown: Some(tx),
            task: Some(task),
        };
        for _ in 0..MAX_POLLS {
            if dir.client.health().await.is_ok() {
                return dir;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("directory never answered /health");
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), DirectoryError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("directory task"),
            None => Ok(()),
        }
    }
}

/// A fake store machine: answers 200 to everything (a volume copy with the volume) and
/// records `METHOD path`.
pub struct FakeStore {
    pub id: u64,
    pub url: String,
    pub zone: Option<String>,
    pub volumes: Vec<u32>,
    pub log: Arc<Mutex<Vec<String>>>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeStore {
    pub async fn start(zone: Option<&str>) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let listener = loopback();
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = HttpServer::new(move || {
            let l = l.clone();
            App::new().default_service(web::to(move |req: HttpRequest| {
                let l = l.clone();
                async move {
                    l.lock()
                        .expect("log")
                        .push(format!("{} {}", req.method(), req.path()));
                    // A copy answers the volume it made, as a store does.
                    let imported = req
                        .path()
                        .strip_prefix("/v1/volumes/")
                        .and_then(|r| r.strip_suffix("/import"))
                        .and_then(|v| v.parse::<u32>().ok());
                    match imported {
                        Some(v) => HttpResponse::Ok().json(volume_info(v)),
                        None => HttpResponse::Ok().finish(),
                    }
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            id: 0,
            url,
            zone: zone.map(str::to_string),
            volumes: Vec::new(),
            log,
            handle,
        }
    }

    pub fn registration(&self) -> StoreRegistration {
        StoreRegistration {
            store_id: (self.id != 0).then_some(self.id),
            public_url: self.url.clone(),
            zone: self.zone.clone(),
            rack: None,
            capacity_bytes: 100 << 30,
            free_bytes: 50 << 30,
        }
    }

    pub fn heartbeat_msg(&self) -> Heartbeat {
        Heartbeat {
            store_id: self.id,
            public_url: self.url.clone(),
            capacity_bytes: 100 << 30,
            free_bytes: 50 << 30,
            healthy: true,
            volumes: self.volumes.iter().map(|v| volume_info(*v)).collect(),
            shipping: Vec::new(),
            ec_files: Vec::new(),
        }
    }

    pub async fn register(&mut self, c: &DirectoryClient) {
        let r = c.register(&self.registration()).await.expect("register");
        self.id = r.store_id;
    }

    /// Heartbeats and creates the volumes the directory asks for (as a real store would).
    pub async fn heartbeat(&mut self, c: &DirectoryClient) {
        let reply = c.heartbeat(&self.heartbeat_msg()).await.expect("heartbeat");
        for v in reply.create_volumes {
            if !self.volumes.contains(&v) {
                self.volumes.push(v);
            }
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

pub fn volume_info(id: u32) -> VolumeInfo {
    VolumeInfo {
        id,
        state: VolumeState::Writable,
        size_bytes: 4096,
        max_bytes: 1 << 20,
        needles: 0,
        deleted_needles: 0,
        dead_bytes: 0,
        reason: None,
        compaction: None,
        scrubbed_unix: None,
        tag: None,
    }
}

/// Registers the stores and heartbeats until the directory has a writable volume.
pub async fn bring_up(c: &DirectoryClient, stores: &mut [FakeStore]) {
    for s in stores.iter_mut() {
        s.register(c).await;
    }
    for _ in 0..MAX_POLLS {
        for s in stores.iter_mut() {
            s.heartbeat(c).await;
        }
        let vols = c.volumes().await.expect("volumes");
        if vols.iter().any(|v| v.writable) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("no volume became writable");
}
