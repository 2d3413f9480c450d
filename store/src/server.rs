//! The store role's entry point: open the store, start its background workers (heartbeats
//! to the directory, automatic compaction, scrubbing) and the HTTP server, and stop them all on
//! shutdown: the server first (in-flight requests finish), then the workers (within a
//! deadline), then the index checkpoints are flushed.

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haystack_service::worker::Options;
use haystack_service::{CancellationToken, Next, Worker, WorkerSet};

use crate::error::{Result, StoreError};
use crate::heartbeat::{HeartbeatConfig, HeartbeatWorker};
use crate::http::ServerOptions;
use crate::scrub::{ScrubConfig, Scrubber};
use crate::store::{Store, StoreConfig};

/// Everything a store role needs besides its listener.
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    pub store: StoreConfig,
    pub http: ServerOptions,
    /// Where to register and heartbeat; `None` runs without a directory.
    pub heartbeat: Option<HeartbeatConfig>,
    /// Volumes to create at start when missing.
    pub create_volumes: Vec<u32>,
    /// Background scrubbing (on by default at the weekly rate).
    pub scrub: ScrubConfig,
}

/// Opens the store of `config` and runs it on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let store = Store::open(config.store.clone()).await?;
    for &id in &config.create_volumes {
        if store.volume(id).is_err() {
            store.create_volume(id, None).await?;
        }
    }
    run_with(listener, store, config, shutdown).await
}

/// [`run`] over a store already open (tests keep a handle on it).
pub async fn run_with(
    listener: TcpListener,
    store: Arc<Store>,
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Some(hb) = &config.heartbeat {
        haystack_client::directory::check_urls(&hb.directory_urls)
            .map_err(StoreError::BadRequest)?;
    }
    let token = CancellationToken::new();
    let workers = WorkerSet::new(token.child_token());
    let mut scrub = config.scrub.clone();
    if scrub.report_to.is_none() {
        scrub.report_to = config
            .heartbeat
            .as_ref()
            .map(|h| (h.directory_urls.clone(), h.public_url.clone()));
    }
    let scrubber = Scrubber::new(store.clone(), scrub);
    workers.spawn("scrub", scrubber, Options::default(), None);
    if let Some(hb) = config.heartbeat {
        // Shipping follows the directory's orders, which come with heartbeat answers.
        workers.spawn(
            "ship",
            crate::ship::Shipper::new(store.clone()),
            Options::default(),
            None,
        );
        let w = HeartbeatWorker::new(store.clone(), hb).map_err(StoreError::BadRequest)?;
        let opts = w.options();
        workers.spawn("heartbeat", w, opts, Some(store.change_notify()));
    }
    if config.store.auto_compact_dead_ratio > 0.0 {
        let every = Duration::from_secs(config.store.auto_compact_interval_secs.max(1));
        workers.spawn(
            "auto_compaction",
            AutoCompaction {
                store: store.clone(),
                every,
                failed: HashMap::new(),
            },
            Options::default(),
            None,
        );
    }
    let stop = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    let served = crate::http::run(listener, store.clone(), config.http, async move {
        token.cancelled().await
    })
    .await;
    workers.shutdown(Duration::from_secs(10)).await;
    store.close();
    served.map_err(StoreError::Io)
}

/// Automatic compaction: one volume per step, the one with the most dead bytes past the
/// configured ratio (`Store::compaction_candidates`); idle for `auto_compact_interval_secs`
/// when none is. A volume whose compaction failed (a corrupt needle waits for repair) is
/// left alone for ten intervals, so it cannot starve the others. A compaction runs as its
/// own task, so a shutdown that drops the step does not stop it half way.
pub struct AutoCompaction {
    pub store: Arc<Store>,
    pub every: Duration,
    pub failed: HashMap<u32, Instant>,
}

impl Worker for AutoCompaction {
    async fn step(&mut self) -> std::result::Result<Next, String> {
        let cooldown = self.every * 10;
        self.failed.retain(|_, at| at.elapsed() < cooldown);
        let next = self
            .store
            .compaction_candidates()
            .into_iter()
            .find(|v| !self.failed.contains_key(&v.id()));
        let Some(v) = next else {
            return Ok(Next::Idle(self.every));
        };
        let info = v.info();
        tracing::info!(
            volume = info.id,
            dead_bytes = info.dead_bytes,
            size = info.size_bytes,
            "automatic compaction"
        );
        if let Err(e) = v.compact().await {
            self.failed.insert(info.id, Instant::now());
            return Err(format!(
                "automatic compaction of volume {} failed: {e}",
                info.id
            ));
        }
        Ok(Next::Busy)
    }
}
