//! The entry point: open the metadata backend, start the maintenance loop, the other background
//! workers (re-replication, repair, anti-entropy, automatic encoding) and the HTTP server
//! on a given listener, and stop gracefully when the shutdown future completes.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use haystack_service::worker::Options;
use haystack_service::{Next, Worker, WorkerSet};

use actix_web::{App, HttpServer};

use crate::clock::{Clock, SystemClock};
use crate::config::{DirectoryConfig, MetadataUrl};
use crate::error::DirectoryError;
use crate::meta::embedded::EmbeddedStore;
use crate::meta::scylla::ScyllaStore;
use crate::meta::timeout::TimeoutStore;
use crate::meta::MetadataStore;
use crate::service::Directory;

/// Opens the backend named by `config.metadata`.
pub async fn open_metadata(
    config: &DirectoryConfig,
) -> Result<Arc<dyn MetadataStore>, DirectoryError> {
    match config.validate()? {
        MetadataUrl::Embedded(dir) => {
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
                .await
                .map_err(|e| DirectoryError::Internal(format!("opening embedded store: {e}")))??;
            Ok(Arc::new(store))
        }
        MetadataUrl::Scylla { hosts, keyspace } => Ok(Arc::new(
            ScyllaStore::connect(&hosts, &keyspace, &config.scylla).await?,
        )),
    }
}

/// Runs the directory on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: DirectoryConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DirectoryError> {
    let store = open_metadata(&config).await?;
    run_with(listener, config, store, Arc::new(SystemClock), shutdown).await
}

/// [`run`] over a given backend and clock (tests inject faults and time through these).
pub async fn run_with(
    listener: TcpListener,
    config: DirectoryConfig,
    store: Arc<dyn MetadataStore>,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DirectoryError> {
    crate::metrics::install();
    let guard =
        haystack_service::auth::Guard::new("directory", &config.security, crate::http::access)
            .map_err(DirectoryError::Config)?;
    guard
        .check_listener(listener.local_addr()?)
        .map_err(DirectoryError::Config)?;
    let store: Arc<dyn MetadataStore> = Arc::new(TimeoutStore::new(
        store,
        Duration::from_millis(config.metadata_timeout_ms),
    ));
    let workers = config.http_workers;
    let tls = config.security.tls.clone();
    let tick = Duration::from_millis(config.maintenance_interval_ms);
    let dir = match Directory::new(config, store.clone(), clock).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let app_dir = dir.clone();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(guard.layer())
            .wrap(actix_web::middleware::from_fn(crate::http::observe))
            .configure(crate::http::configure(app_dir.clone()))
    })
    .workers(workers)
    .disable_signals()
    .client_request_timeout(haystack_service::REQUEST_HEAD_TIMEOUT)
    .shutdown_timeout(10);
    let server = haystack_service::tls::listen(server, listener, tls.as_deref())?.run();
    let handle = server.handle();
    tracing::info!(%addr, node = dir.node_id(), "directory listening");

    let workers = WorkerSet::default();
    workers.spawn(
        "maintenance",
        Periodic {
            dir: dir.clone(),
            every: tick,
            round: Round::Maintenance,
        },
        Options {
            backoff_min: tick,
            backoff_max: tick,
            ..Options::default()
        },
        None,
    );
    // Re-replication copies whole volumes: its own worker, so liveness sweeps never wait on it.
    let rerep_every = tick.max(Duration::from_secs(1));
    workers.spawn(
        "rereplication",
        Periodic {
            dir: dir.clone(),
            every: rerep_every,
            round: Round::Rereplication,
        },
        Options {
            backoff_min: rerep_every,
            backoff_max: rerep_every,
            ..Options::default()
        },
        None,
    );

    // The repair queue: woken at once when a repair is queued, else once a second for the
    // tasks whose back-off ended.
    workers.spawn(
        "repair",
        Periodic {
            dir: dir.clone(),
            every: Duration::from_secs(1),
            round: Round::Repair,
        },
        Options::default(),
        Some(dir.repair_trigger()),
    );
    let ae_every = Duration::from_millis(dir.config().anti_entropy_interval_ms);
    if !ae_every.is_zero() {
        workers.spawn(
            "anti_entropy",
            Periodic {
                dir: dir.clone(),
                every: ae_every,
                round: Round::AntiEntropy,
            },
            Options {
                backoff_min: ae_every.min(Duration::from_secs(10)),
                backoff_max: ae_every,
                ..Options::default()
            },
            None,
        );
    }

    // Rebalancing: at most one replica move per interval (off when the interval is 0).
    if dir.config().rebalance_interval_ms > 0 {
        let every = Duration::from_millis(dir.config().rebalance_interval_ms);
        workers.spawn(
            "rebalance",
            Periodic {
                dir: dir.clone(),
                every,
                round: Round::Rebalance,
            },
            Options {
                backoff_min: every,
                backoff_max: every,
                ..Options::default()
            },
            None,
        );
    }

    // Automatic erasure coding of sealed volumes (off unless `encode_after_secs` is set).
    if dir.config().encode_after_secs > 0 {
        let every = tick.max(Duration::from_secs(1));
        workers.spawn(
            "auto_encode",
            Periodic {
                dir: dir.clone(),
                every,
                round: Round::Encode(Default::default()),
            },
            Options {
                backoff_min: every,
                backoff_max: every * 30,
                ..Options::default()
            },
            None,
        );
    }

    let server_task = tokio::spawn(server);
    shutdown.await;
    tracing::info!("directory shutting down");
    // Graceful: in-flight requests finish (their commits are durable before they answer).
    handle.stop(true).await;
    workers.shutdown(Duration::from_secs(10)).await;
    let served = server_task.await;
    dir.close().await;
    match served {
        Ok(r) => r.map_err(DirectoryError::from),
        Err(e) => Err(DirectoryError::Internal(format!("http server task: {e}"))),
    }
}

/// Which of the directory's periodic rounds a worker runs.
enum Round {
    /// Liveness sweeps, volume creation, the cached view (`Directory::maintain`).
    Maintenance,
    /// Copies of the volumes of stores down too long (`Directory::rereplicate_once`), then
    /// moves of replicas off draining stores (`Directory::drain_once`).
    Rereplication,
    /// The due tasks of the repair queue (`Directory::repair_once`); busy while tasks are
    /// left that are due.
    Repair,
    /// Replica comparison by digests (`Directory::anti_entropy_once`).
    AntiEntropy,
    /// One rebalancing move (`Directory::rebalance_once`).
    Rebalance,
    /// The automatic encode policy (`Directory::encode_due_once`), with its per-volume
    /// back-off; busy while volumes are due.
    Encode(std::collections::HashMap<u32, u64>),
}

/// A directory round as a background worker: one round per step, then idle for the
/// interval; a failed round is logged and retried after one interval.
struct Periodic {
    dir: Arc<Directory>,
    every: Duration,
    round: Round,
}

impl Worker for Periodic {
    async fn step(&mut self) -> Result<Next, String> {
        // With several directories over one metadata store, only the coordinator runs the
        // background rounds; the maintenance round (which takes the lease) runs everywhere.
        if !matches!(self.round, Round::Maintenance) && !self.dir.is_coordinator() {
            return Ok(Next::Idle(self.every));
        }
        let r = match self.round {
            Round::Maintenance => self.dir.maintain().await.map(|_| ()),
            // A lost replica first, then a move off a draining store.
            Round::Rereplication => match self.dir.rereplicate_once().await {
                Ok(None) => self.dir.drain_once().await.map(|_| ()),
                r => r.map(|_| ()),
            },
            Round::Repair => self.dir.repair_once().await.map(|_| ()),
            Round::AntiEntropy => self.dir.anti_entropy_once().await.map(|_| ()),
            Round::Rebalance => self.dir.rebalance_once().await.map(|_| ()),
            Round::Encode(ref mut not_before) => {
                if self
                    .dir
                    .encode_due_once(not_before)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    return Ok(Next::Busy);
                }
                Ok(())
            }
        };
        r.map_err(|e| e.to_string())?;
        Ok(Next::Idle(self.every))
    }
}
