//! The entry point: open the metadata backend, start the maintenance loop and the HTTP server
//! on a given listener, and stop gracefully when the shutdown future completes.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

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
    let store: Arc<dyn MetadataStore> = Arc::new(TimeoutStore::new(
        store,
        Duration::from_millis(config.metadata_timeout_ms),
    ));
    let workers = config.http_workers;
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
            .wrap(actix_web::middleware::from_fn(crate::http::observe))
            .configure(crate::http::configure(app_dir.clone()))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tracing::info!(%addr, node = dir.node_id(), "directory listening");

    let maint_dir = dir.clone();
    let maintenance = tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(e) = maint_dir.maintain().await {
                tracing::warn!(error = %e, "maintenance round failed; retrying next tick");
            }
        }
    });

    // Re-replication copies whole volumes: its own loop, so liveness sweeps never wait on it.
    let rerep_dir = dir.clone();
    let rereplication = tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick.max(Duration::from_secs(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(e) = rerep_dir.rereplicate_once().await {
                tracing::warn!(error = %e, "re-replication round failed; retrying next tick");
            }
        }
    });

    let server_task = tokio::spawn(server);
    shutdown.await;
    tracing::info!("directory shutting down");
    // Graceful: in-flight requests finish (their commits are durable before they answer).
    handle.stop(true).await;
    maintenance.abort();
    let _ = maintenance.await;
    rereplication.abort();
    let _ = rereplication.await;
    let served = server_task.await;
    dir.close().await;
    match served {
        Ok(r) => r.map_err(DirectoryError::from),
        Err(e) => Err(DirectoryError::Internal(format!("http server task: {e}"))),
    }
}
