//! The store's side of the directory protocol: register once (keeping the id the directory
//! gives in the data dir), then heartbeat with volumes, free space and health, and create the
//! volumes the directory asks for. Messages are `haystack_proto` types (docs/API.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use haystack_proto::{Heartbeat, HeartbeatReply, StoreRegistered, StoreRegistration, VolumeState};

use haystack_client::DirectoryClient;

use crate::store::Store;

/// Where the directory is and how this store presents itself to it.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    /// Base URLs of the directory, e.g. `http://127.0.0.1:8082`: one, or several equivalent
    /// instances (over one ScyllaDB keyspace) in the order they are tried. The store
    /// registers with and heartbeats to the first that answers and stays with it while it
    /// answers: liveness is a record in the shared metadata store, so a heartbeat through any
    /// instance keeps the store up for all of them.
    pub directory_urls: Vec<String>,
    /// Base URL at which other services reach this store.
    pub public_url: String,
    pub zone: Option<String>,
    pub rack: Option<String>,
    /// Interval used until the directory names its own.
    pub interval: Duration,
}

const STORE_ID_FILE: &str = "store-id";

fn read_store_id(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(STORE_ID_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn write_store_id(dir: &Path, id: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{STORE_ID_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{id}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(STORE_ID_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Total and free bytes of the file system holding `dir`.
pub fn disk_space(dir: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs fills the struct we own; the path is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    let frsize = s.f_frsize as u64;
    (s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize)
}

fn heartbeat(store: &Store, id: u64, cfg: &HeartbeatConfig) -> Heartbeat {
    let (capacity_bytes, free_bytes) = disk_space(&store.config().data_dir);
    let volumes = store.list();
    let healthy = !volumes.iter().any(|v| {
        v.state == VolumeState::ReadOnly
            && v.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("disk error"))
    });
    Heartbeat {
        store_id: id,
        public_url: cfg.public_url.clone(),
        capacity_bytes,
        free_bytes,
        healthy,
        volumes,
        shipping: store.shipping.statuses(store),
        ec_files: store.ec_file_volumes(),
    }
}

async fn register(
    client: &DirectoryClient,
    store: &Store,
    cfg: &HeartbeatConfig,
) -> Result<StoreRegistered, String> {
    let dir = &store.config().data_dir;
    let (capacity_bytes, free_bytes) = disk_space(dir);
    let reg = StoreRegistration {
        store_id: read_store_id(dir),
        public_url: cfg.public_url.clone(),
        zone: cfg.zone.clone(),
        rack: cfg.rack.clone(),
        capacity_bytes,
        free_bytes,
    };
    let ok: StoreRegistered = client.register(&reg).await.map_err(|e| e.to_string())?;
    if reg.store_id != Some(ok.store_id) {
        write_store_id(dir, ok.store_id).map_err(|e| format!("cannot keep the store id: {e}"))?;
    }
    Ok(ok)
}

async fn apply(store: &Store, reply: HeartbeatReply) {
    store.shipping.set_orders(reply.ship);
    for id in reply.drop_ec {
        if let Err(e) = store.ec_discard(id).await {
            tracing::warn!(volume = id, error = %e, "cannot remove erasure-coding leftovers");
        }
    }
    for id in reply.create_volumes {
        if store.volume(id).is_err() {
            match store.create_volume(id, None).await {
                Ok(_) => tracing::info!(volume = id, "volume created at the directory's request"),
                Err(e) => tracing::warn!(volume = id, error = %e, "cannot create requested volume"),
            }
        }
    }
}

/// The heartbeat as a background worker (`haystack_service::worker`): each step registers
/// (until the directory gave an id) or sends one heartbeat and applies the reply; then it
/// waits for the interval or for a change of the store's volumes (a volume created, full or
/// read-only: the directory hears of it at once). A failed step is retried after one
/// interval: liveness must not back off.
pub struct HeartbeatWorker {
    store: Arc<Store>,
    cfg: HeartbeatConfig,
    client: DirectoryClient,
    id: Option<u64>,
    interval: Duration,
}

/// The store's client of its directories: internal credentials, a short connect timeout (a
/// refused or unanswered connection moves any request to the next directory), failovers
/// counted in `haystack_store_directory_failovers_total`.
pub fn directory_client(
    store: &Store,
    urls: &[String],
    timeout: Duration,
) -> Result<DirectoryClient, String> {
    let http = store
        .config()
        .security
        .http_builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .build()
        .map_err(|e| format!("building the directory client: {e}"))?;
    Ok(DirectoryClient::with_urls(urls, http)?
        .with_credentials(haystack_client::Credentials::internal(
            store.config().security.keys.as_ref(),
            "store",
        ))
        .on_failover("store", || {
            metrics::counter!("haystack_store_directory_failovers_total").increment(1)
        }))
}

impl HeartbeatWorker {
    /// The worker, or why its directory URLs are refused (none, not http(s), one twice).
    pub fn new(store: Arc<Store>, cfg: HeartbeatConfig) -> Result<Self, String> {
        let client = directory_client(&store, &cfg.directory_urls, Duration::from_secs(5))?;
        let interval = cfg.interval;
        Ok(HeartbeatWorker {
            store,
            cfg,
            client,
            id: None,
            interval,
        })
    }

    /// How the runner should retry a failed step: after one interval, every time.
    pub fn options(&self) -> haystack_service::worker::Options {
        haystack_service::worker::Options {
            throttle: Duration::ZERO,
            backoff_min: self.cfg.interval,
            backoff_max: self.cfg.interval,
        }
    }
}

impl haystack_service::Worker for HeartbeatWorker {
    async fn step(&mut self) -> Result<haystack_service::Next, String> {
        use haystack_service::Next;
        let Some(sid) = self.id else {
            let r = register(&self.client, &self.store, &self.cfg)
                .await
                .map_err(|e| {
                    format!(
                        "registration with the directory ({}) failed: {e}",
                        self.cfg.directory_urls.join(", ")
                    )
                })?;
            tracing::info!(store_id = r.store_id, directory = %self.client.base_url(), "registered with the directory");
            self.id = Some(r.store_id);
            if r.heartbeat_interval_secs > 0 {
                self.interval = Duration::from_secs(r.heartbeat_interval_secs);
            }
            // The first heartbeat goes at once.
            return Ok(Next::Busy);
        };
        let hb = heartbeat(&self.store, sid, &self.cfg);
        let reply = match self.client.heartbeat(&hb).await {
            Ok(reply) => reply,
            Err(e) if e.status() == Some(404) => {
                tracing::warn!("the directory does not know this store; registering again");
                self.id = None;
                return Ok(Next::Busy);
            }
            Err(e) => return Err(format!("heartbeat failed: {e}")),
        };
        apply(&self.store, reply).await;
        Ok(Next::Idle(self.interval))
    }
}
