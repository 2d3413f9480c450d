//! Shipping to asynchronous remote replicas (issue 13): the directory names, in its answers
//! to heartbeats, the volumes this store ships and their remote replicas; the worker here
//! asks each remote where it stands, seeds it from this store's export when it has nothing
//! (or re-seeds it when the two files no longer agree, after a compaction), and otherwise
//! sends what is durable here after the remote's end, in order, a few MiB a request. The
//! remote keeps its own position (the end of its file), so shipping resumes from there after
//! any failure or restart on either side. Lags are reported in heartbeats and on /metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haystack_client::StoreClient;
use haystack_proto::{ShipOrder, ShipStatus};
use haystack_service::sync::lock;
use haystack_service::Next;

use crate::store::Store;

/// Bytes per shipping request (a larger needle goes whole).
pub const SHIP_BATCH_BYTES: u64 = 4 << 20;
/// Requests per volume and remote in one step, so that one busy volume cannot starve others.
const BATCHES_PER_STEP: usize = 16;
/// How often an idle shipper looks for new appends.
const IDLE_POLL: Duration = Duration::from_millis(200);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the heartbeat and the shipper share: the directory's orders and the lags.
#[derive(Default)]
pub struct Shipping {
    orders: Mutex<Vec<ShipOrder>>,
    status: Mutex<HashMap<(u32, u64), Progress>>,
    wake: tokio::sync::Notify,
}

#[derive(Clone, Default)]
struct Progress {
    /// The remote's end, when known.
    remote_tail: Option<u64>,
    /// Last time the remote held everything durable here (Unix seconds; 0: not yet).
    caught_up_secs: u64,
    shipped_bytes: u64,
    error: Option<String>,
    /// Failures in a row, and when to try again (a remote that is down is not hammered).
    failures: u32,
    retry_at: Option<std::time::Instant>,
}

impl Shipping {
    /// The directory's orders from its last heartbeat answer (replacing the earlier ones).
    pub fn set_orders(&self, orders: Vec<ShipOrder>) {
        let keep: std::collections::HashSet<(u32, u64)> = orders
            .iter()
            .flat_map(|o| o.targets.iter().map(move |t| (o.volume, t.store_id)))
            .collect();
        lock(&self.status).retain(|k, _| keep.contains(k));
        let changed = *lock(&self.orders) != orders;
        *lock(&self.orders) = orders;
        if changed {
            self.wake.notify_one();
        }
    }

    fn orders(&self) -> Vec<ShipOrder> {
        lock(&self.orders).clone()
    }

    /// Lags for the heartbeat (and the gauges).
    pub fn statuses(&self, store: &Store) -> Vec<ShipStatus> {
        let now = now_secs();
        let mut out: Vec<ShipStatus> = lock(&self.status)
            .iter()
            .map(|(&(volume, store_id), p)| {
                let durable = store.volume(volume).map(|v| v.durable_tail()).ok();
                let lag_bytes = match (durable, p.remote_tail) {
                    // Past the end here: the file changed under it (a compaction), so all of
                    // it is to be sent again.
                    (Some(d), Some(t)) if t > d => d,
                    (Some(d), Some(t)) => d - t,
                    (Some(d), None) => d,
                    _ => 0,
                };
                let lag_secs = if lag_bytes == 0 && p.remote_tail.is_some() {
                    0
                } else if p.caught_up_secs == 0 {
                    // Never caught up since this process started: count from then.
                    now.saturating_sub(*START_SECS)
                } else {
                    now.saturating_sub(p.caught_up_secs)
                };
                ShipStatus {
                    volume,
                    store_id,
                    lag_bytes,
                    lag_secs,
                    shipped_bytes: p.shipped_bytes,
                    error: p.error.clone(),
                }
            })
            .collect();
        out.sort_by_key(|s| (s.volume, s.store_id));
        for s in &out {
            let labels = [
                ("volume", s.volume.to_string()),
                ("remote", s.store_id.to_string()),
            ];
            metrics::gauge!("haystack_store_ship_lag_bytes", &labels).set(s.lag_bytes as f64);
            metrics::gauge!("haystack_store_ship_lag_seconds", &labels).set(s.lag_secs as f64);
        }
        out
    }

    fn update(&self, key: (u32, u64), f: impl FnOnce(&mut Progress)) {
        f(lock(&self.status).entry(key).or_default());
    }
}

static START_SECS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(now_secs);

/// The shipping worker (`haystack_service::worker`).
pub struct Shipper {
    store: Arc<Store>,
    /// Appends and positions (a minute per request).
    client: StoreClient,
    /// Seeding: the remote copies the whole volume before it answers.
    seed_client: StoreClient,
}

impl Shipper {
    pub fn new(store: Arc<Store>) -> Self {
        let sec = &store.config().security;
        let creds = || haystack_client::Credentials::internal(sec.keys.as_ref(), "store");
        let build = |t: Duration| {
            let http = sec
                .http_builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default();
            StoreClient::with_timeout(http, t).with_credentials(creds())
        };
        // Lags count from this process's start until the first catch-up.
        let _ = *START_SECS;
        Shipper {
            client: build(Duration::from_secs(60)),
            seed_client: build(Duration::from_secs(6 * 3600)),
            store,
        }
    }

    /// Ships volume `o.volume` to one remote; whether it sent anything.
    async fn ship_one(&self, o: &ShipOrder, remote_id: u64, remote: &str) -> Result<bool, String> {
        let key = (o.volume, remote_id);
        let shipping = &self.store.shipping;
        let v = self.store.volume(o.volume).map_err(|e| e.to_string())?;
        // The file the remote is checked against: reads of a later one (a compaction
        // finishing mid-step) come back empty, and the next step checks again.
        let generation = v.file_generation();
        let pos = match self.client.ship_position(remote, o.volume).await {
            Ok(p) => Some(p),
            Err(e) if e.code() == Some("no_such_volume") => None,
            Err(e) => return Err(format!("asking {remote} where it stands: {e}")),
        };
        let agrees = match &pos {
            Some(p) => v.ship_agrees(p).await.map_err(|e| e.to_string())?,
            None => false,
        };
        let mut tail = match pos {
            Some(p) if agrees => p.tail,
            other => {
                let replace = other.is_some();
                tracing::info!(
                    volume = o.volume,
                    remote,
                    replace,
                    "seeding an asynchronous remote replica from this store's export"
                );
                let info = self
                    .seed_client
                    .import_remote_copy(remote, o.volume, &o.source_url, replace)
                    .await
                    .map_err(|e| format!("seeding {remote}: {e}"))?;
                metrics::counter!("haystack_store_ship_seeds_total").increment(1);
                let p = self
                    .client
                    .ship_position(remote, o.volume)
                    .await
                    .map_err(|e| format!("asking {remote} where it stands: {e}"))?;
                shipping.update(key, |s| s.shipped_bytes += p.tail);
                tracing::info!(
                    volume = o.volume,
                    remote,
                    needles = info.needles,
                    tail = p.tail,
                    "remote replica seeded"
                );
                p.tail
            }
        };
        shipping.update(key, |s| s.remote_tail = Some(tail));
        let mut sent = false;
        for _ in 0..BATCHES_PER_STEP {
            let Some(bytes) = v
                .ship_read(tail, SHIP_BATCH_BYTES, generation)
                .await
                .map_err(|e| e.to_string())?
            else {
                break;
            };
            let n = bytes.len() as u64;
            let p = self
                .client
                .ship_append(remote, o.volume, tail, bytes)
                .await
                .map_err(|e| format!("shipping {n} bytes at {tail} to {remote}: {e}"))?;
            tail = p.tail;
            sent = true;
            metrics::counter!("haystack_store_ship_sent_bytes_total").increment(n);
            shipping.update(key, |s| {
                s.remote_tail = Some(tail);
                s.shipped_bytes += n;
            });
        }
        if v.file_generation() == generation && tail >= v.durable_tail() {
            shipping.update(key, |s| {
                s.caught_up_secs = now_secs();
                s.error = None;
            });
        }
        Ok(sent)
    }
}

impl haystack_service::Worker for Shipper {
    async fn step(&mut self) -> Result<Next, String> {
        let orders = self.store.shipping.orders();
        let mut busy = false;
        for o in &orders {
            for t in &o.targets {
                let key = (o.volume, t.store_id);
                let wait = lock(&self.store.shipping.status)
                    .get(&key)
                    .and_then(|p| p.retry_at)
                    .is_some_and(|at| at > std::time::Instant::now());
                if wait {
                    continue;
                }
                match self.ship_one(o, t.store_id, &t.url).await {
                    Ok(sent) => {
                        busy |= sent;
                        self.store.shipping.update(key, |s| {
                            s.failures = 0;
                            s.retry_at = None;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(volume = o.volume, remote = %t.url, error = %e, "shipping to a remote replica failed; will retry");
                        metrics::counter!("haystack_store_ship_failures_total").increment(1);
                        self.store.shipping.update(key, |s| {
                            s.error = Some(e);
                            s.failures = s.failures.saturating_add(1);
                            let pause = Duration::from_millis(500 << s.failures.min(6));
                            s.retry_at = Some(std::time::Instant::now() + pause);
                        });
                    }
                }
            }
        }
        if busy {
            return Ok(Next::Busy);
        }
        // Idle: wait for appends (polled) or new orders.
        tokio::select! {
            _ = self.store.shipping.wake.notified() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
        Ok(Next::Busy)
    }
}
