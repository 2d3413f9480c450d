//! Shared helpers: engines to run over, small volume configs, an in-process server.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use haystack_store::{EngineKind, IoEngine, NeedleData, Store, StoreConfig, Volume, VolumeConfig};

/// Every storage test runs over both engines.
pub const ENGINES: [EngineKind; 2] = [EngineKind::IoUring, EngineKind::Sync];

pub fn small_volume() -> VolumeConfig {
    VolumeConfig {
        max_bytes: 64 << 20,
        max_needle_bytes: 1 << 20,
        max_write_bytes: 8 << 20,
        prealloc_step: 1 << 20,
    }
}

pub fn engine(kind: EngineKind) -> IoEngine {
    IoEngine::new(kind).expect("engine starts")
}

pub fn create(dir: &Path, id: u32, kind: EngineKind) -> Arc<Volume> {
    Volume::create(dir, id, engine(kind), small_volume()).expect("volume created")
}

pub fn reopen(dir: &Path, id: u32, kind: EngineKind) -> Arc<Volume> {
    Volume::open(dir, id, engine(kind), small_volume()).expect("volume reopens")
}

pub fn needle(key: u64, alt: u32, cookie: u64, data: &[u8]) -> NeedleData {
    NeedleData {
        key,
        alt,
        cookie,
        content_type: "image/jpeg".into(),
        data: Bytes::copy_from_slice(data),
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A store server on 127.0.0.1 in this process; dropped with its runtime's shutdown.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The status of a GET of `path` here.
    pub async fn status(&self, http: &reqwest::Client, path: &str) -> reqwest::StatusCode {
        http.get(self.url(path)).send().await.expect("GET").status()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.done.await.expect("server task").expect("server ran");
    }
}

pub async fn start_server(dir: &Path, kind: EngineKind) -> TestServer {
    let cfg = StoreConfig {
        data_dir: dir.to_path_buf(),
        engine: kind,
        max_volume_bytes: 4 << 20,
        max_needle_bytes: 1 << 20,
        max_write_bytes: 2 << 20,
        prealloc_step: 1 << 20,
        ..Default::default()
    };
    let store = Store::open(cfg).await.expect("store opens");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = haystack_store::http::ServerOptions {
        workers: 1,
        shutdown_timeout_secs: 5,
        memory_ceiling_bytes: None,
        slow_batch_ms: 0,
    };
    let done = tokio::spawn(haystack_store::http::run(
        listener,
        store.clone(),
        opts,
        async move {
            let _ = rx.await;
        },
    ));
    TestServer {
        addr,
        store,
        stop: Some(tx),
        done,
    }
}

/// The tag of volume `id` under `dir` (version 2 superblocks), for tests that write needles
/// into a volume file by hand.
pub fn volume_tag(dir: &Path, id: u32) -> u32 {
    let bytes = std::fs::read(dir.join(format!("vol-{id}.dat"))).expect("volume file");
    haystack_store::format::Superblock::decode(&bytes[..64])
        .expect("superblock")
        .tag
}

/// Flips bit 5 of the byte at `at` in the file at `path` (the store may have it open).
pub fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flipping");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read the byte");
    b[0] ^= 0x20;
    f.write_all_at(&b, at).expect("write the byte");
}
