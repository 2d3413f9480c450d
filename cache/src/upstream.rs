//! The way to the stores on a miss: a logical volume's replicas from the directory (kept for a
//! while, asked again sooner after a failure), the replica with the fewest reads in flight
//! first (Petal's rule), and failover to the next one on an error, a timeout or a 404.
//!
//! Read repair: a replica that answered 404 or `corrupt_needle` for a needle another replica
//! then served is reported to the directory (`POST /v1/repairs`, in the background, once per
//! needle and replica per [`REPORT_EVERY`]), which checks the report against its records and
//! has the replica repaired from a good one.

use haystack_service::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;
use haystack_client::{
    ClientError, ConnFailure, Credentials, DirectoryClient, StoreClient, StoreReader, StoreReaders,
};
use haystack_proto::directory::{DamageKind, DamageReport};
use haystack_proto::NeedleAddr;

use crate::error::CacheError;
use crate::memory::{Needle, NeedleKey};
use crate::metrics::Stats;

/// After a replica failed, the volume's replicas are asked for again, but not more often than
/// this (a dead store that the directory still lists must not turn every miss into a
/// directory request).
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A store that failed a read is tried after the others for this long (the directory may
/// take many seconds to mark it down; until then every miss would try it first, and a store
/// that swallows packets would cost each of them a timeout).
const SUSPECT_FOR: Duration = Duration::from_secs(2);

/// A damaged replica of one needle is reported at most this often by one node.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Reports remembered for de-duplication, at most (older ones are dropped first).
const MAX_REPORTS_REMEMBERED: usize = 10_000;

/// Why one replica did not serve a needle.
enum Fail {
    /// The store says not found (missing, deleted, wrong cookie).
    NotFound,
    /// The store found the needle corrupt (never served).
    Corrupt(String),
    /// Any other failure (transport, timeout, another error).
    Other(String),
}

/// The HTTP clients of one worker thread: peers (a timeout on the answer's head, an idle one
/// on its body: `http::PeerBody`), the stores (over the
/// same connection pool, `store_timeout_ms` per read), the stores' needle readers (a pool of
/// plain HTTP/1.1 connections per store, for misses) and the directory (its own timeout).
#[derive(Clone, Debug)]
pub struct Clients {
    pub http: reqwest::Client,
    pub stores: StoreClient,
    /// One [`StoreReader`] per store base URL (`None`: an https store, read by `stores`), made
    /// by `stores` (its timeout and credentials); per worker, as their connections' tasks run
    /// on the worker's runtime.
    readers: StoreReaders,
    pub directory: DirectoryClient,
    /// This worker's liveness lookups, sent many to a request.
    pub live: Arc<crate::live::LiveBatcher>,
    /// What this node proves to its peers (purges it repeats).
    pub creds: Credentials,
}

impl Clients {
    /// The clients of `node`. With `share`, the directory client keeps `share`'s list and the
    /// directory it sticks to (over a pool of its own), so one failover serves every worker;
    /// without, a new one counts its failovers in the node's stats.
    pub fn new(
        node: &std::sync::Arc<crate::node::Node>,
        share: Option<&Clients>,
    ) -> Result<Clients, CacheError> {
        let cfg = &node.cfg;
        let io = |e: reqwest::Error| CacheError::Config(format!("building an HTTP client: {e}"));
        let connect = Duration::from_millis(cfg.store_timeout_ms.min(1_000));
        let http = cfg
            .security
            .http_builder()
            .connect_timeout(connect)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(io)?;
        let dir_http = cfg
            .security
            .http_builder()
            .timeout(Duration::from_millis(cfg.directory_timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.directory_timeout_ms.min(1_000)))
            .tcp_nodelay(true)
            .build()
            .map_err(io)?;
        let creds = Credentials::internal(cfg.security.keys.as_ref(), "cache");
        let store_timeout = Duration::from_millis(cfg.store_timeout_ms);
        let mut stores = StoreClient::with_timeout(http.clone(), store_timeout);
        // Needle reads are public unless reads are signed; then the cache proves itself to the
        // stores as the cluster's own (a token per read, so only then).
        if cfg.security.signed_reads_ttl_secs.is_some() {
            stores = stores.with_credentials(creds.clone());
        }
        let directory = match share {
            Some(s) => s.directory.with_pool(dir_http),
            None => {
                let counted = node.clone();
                DirectoryClient::with_urls(&cfg.directories()?, dir_http)
                    .map_err(CacheError::Config)?
                    .with_credentials(creds.clone())
                    .on_failover("cache", move || counted.stats.directory_failovers.add(1))
            }
        };
        Ok(Clients {
            readers: stores.readers(),
            stores,
            http,
            directory,
            live: Arc::new(crate::live::LiveBatcher::new(node.clone())),
            creds,
        })
    }
}

impl Clients {
    /// The needle reader of the store at `url`, made at its first use (`None` for a store
    /// this reader cannot speak to: https).
    fn reader(&self, url: &str) -> Option<Arc<StoreReader>> {
        self.readers.get(url)
    }
}

/// One replica of a volume as the cache uses it.
#[derive(Debug)]
pub struct ReplicaView {
    pub url: String,
    /// Whether the directory sees its store up (down replicas are tried last).
    pub up: bool,
    /// Reads in flight from this node and recent failures (shared by every volume on the store).
    state: Arc<StoreState>,
}

/// What this node knows of one store machine.
#[derive(Debug, Default)]
struct StoreState {
    inflight: AtomicUsize,
    /// Milliseconds since `Upstream::epoch` until which the store is tried last (0: never).
    suspect_until_ms: AtomicU64,
}

/// A logical volume as the cache uses it.
#[derive(Debug)]
pub struct VolumeView {
    pub id: u32,
    /// Write-enabled now (the admission policy keeps only such volumes' needles).
    pub writable: bool,
    pub replicas: Vec<ReplicaView>,
}

impl VolumeView {
    fn urls(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.replicas.iter().map(|r| r.url.as_str()).collect();
        v.sort_unstable();
        v
    }
}

struct VolEntry {
    view: Arc<VolumeView>,
    fetched: Instant,
    refresh_after: Instant,
}

/// Volume replicas and store reads.
pub struct Upstream {
    volumes: Mutex<HashMap<u32, VolEntry>>,
    /// Damage reports sent lately: (volume, key, alt, store URL) -> when.
    reported: Mutex<HashMap<(u32, u64, u32, String), Instant>>,
    stores: Mutex<HashMap<String, Arc<StoreState>>>,
    epoch: Instant,
    ttl: Duration,
}

/// Decrements a replica's in-flight count when the attempt ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn start(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a round over the replicas ended without a needle.
enum Miss {
    /// A store said the needle is not there (missing, deleted, wrong cookie).
    NotFound,
    /// Every replica failed; the last reasons.
    AllFailed(String),
}

impl Upstream {
    pub fn new(ttl: Duration) -> Upstream {
        Upstream {
            volumes: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            ttl,
        }
    }

    fn store_state(&self, url: &str) -> Arc<StoreState> {
        let mut m = lock(&self.stores);
        m.entry(url.to_string()).or_default().clone()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The volume's replicas: from memory while fresh, else from the directory. When the
    /// directory cannot be reached, what is remembered is used (and asked again a second
    /// later); with nothing remembered, `DirectoryUnavailable`.
    pub async fn volume(
        &self,
        c: &Clients,
        id: u32,
        stats: &Stats,
    ) -> Result<Arc<VolumeView>, CacheError> {
        let now = Instant::now();
        let cached = {
            let m = lock(&self.volumes);
            m.get(&id).map(|e| (e.view.clone(), e.refresh_after))
        };
        if let Some((view, refresh_after)) = &cached {
            if now < *refresh_after {
                return Ok(view.clone());
            }
        }
        stats.directory_requests.add(1);
        match c.directory.volume(id).await {
            Ok(info) => {
                let view = Arc::new(VolumeView {
                    id,
                    writable: info.writable,
                    replicas: info
                        .replicas
                        .iter()
                        .map(|r| ReplicaView {
                            url: r.url.trim_end_matches('/').to_string(),
                            up: r.up,
                            state: self.store_state(r.url.trim_end_matches('/')),
                        })
                        .collect(),
                });
                let now = Instant::now();
                lock(&self.volumes).insert(
                    id,
                    VolEntry {
                        view: view.clone(),
                        fetched: now,
                        refresh_after: now + self.ttl,
                    },
                );
                Ok(view)
            }
            Err(e) if e.is_not_found() => {
                lock(&self.volumes).remove(&id);
                Err(CacheError::NoSuchVolume(id))
            }
            Err(e) => match cached {
                Some((view, _)) => {
                    tracing::warn!(volume = id, error = %e, "refreshing volume replicas failed; using the ones known");
                    if let Some(en) = lock(&self.volumes).get_mut(&id) {
                        en.refresh_after = Instant::now() + MIN_REFRESH;
                    }
                    Ok(view)
                }
                None => Err(CacheError::DirectoryUnavailable(e.to_string())),
            },
        }
    }

    /// Asks the directory again at the next miss (at most once per second).
    fn mark_stale(&self, id: u32) {
        if let Some(e) = lock(&self.volumes).get_mut(&id) {
            e.refresh_after = e.refresh_after.min(e.fetched + MIN_REFRESH);
        }
    }

    /// Reads a needle from the volume's replicas. Returns it and whether the volume is
    /// write-enabled (for the admission policy).
    pub async fn read(
        &self,
        c: &Clients,
        k: NeedleKey,
        cookie: u64,
        stats: &Stats,
    ) -> Result<(Arc<Needle>, bool), CacheError> {
        let view = self.volume(c, k.volume, stats).await?;
        let first = match self.read_from(c, &view, k, cookie, stats).await {
            Ok(n) => return Ok((n, view.writable)),
            Err(Miss::NotFound) => return Err(CacheError::NotFound),
            Err(Miss::AllFailed(detail)) => detail,
        };
        // Every replica failed: the directory may know better (a replica moved by a repair).
        self.mark_stale(k.volume);
        let fresh = self.volume(c, k.volume, stats).await?;
        if fresh.urls() != view.urls() {
            tracing::info!(volume = k.volume, "replicas changed; reading again");
            match self.read_from(c, &fresh, k, cookie, stats).await {
                Ok(n) => return Ok((n, fresh.writable)),
                Err(Miss::NotFound) => return Err(CacheError::NotFound),
                Err(Miss::AllFailed(detail)) => {
                    return Err(CacheError::StoreUnavailable {
                        volume: k.volume,
                        detail,
                    })
                }
            }
        }
        Err(CacheError::StoreUnavailable {
            volume: k.volume,
            detail: first,
        })
    }

    /// One round over the replicas: fewest reads in flight first (ties broken at random so that
    /// idle replicas share the load), after every replica that is up and has not failed lately
    /// come the ones the directory sees down or that failed in the last `SUSPECT_FOR`.
    async fn read_from(
        &self,
        c: &Clients,
        view: &VolumeView,
        k: NeedleKey,
        cookie: u64,
        stats: &Stats,
    ) -> Result<Arc<Needle>, Miss> {
        let now = self.now_ms();
        let mut order: Vec<(bool, usize, u32, &ReplicaView)> = view
            .replicas
            .iter()
            .map(|r| {
                let suspect = r.state.suspect_until_ms.load(Ordering::Relaxed) > now;
                (
                    !r.up || suspect,
                    r.state.inflight.load(Ordering::Relaxed),
                    rand::random::<u32>(),
                    r,
                )
            })
            .collect();
        order.sort_unstable_by_key(|(down, load, tie, _)| (*down, *load, *tie));
        let mut reasons = Vec::new();
        // Replicas that answered for the needle but did not serve it: reported for repair if
        // another one serves it.
        let mut damaged: Vec<(&str, DamageKind)> = Vec::new();
        let mut not_found = false;
        for (i, (_, _, _, r)) in order.iter().enumerate() {
            if i > 0 {
                stats.store_failovers.add(1);
            }
            match self.read_one(c, r, k, cookie, stats).await {
                Ok(n) => {
                    r.state.suspect_until_ms.store(0, Ordering::Relaxed);
                    for (url, kind) in damaged {
                        self.report(c, k, cookie, url, kind);
                    }
                    return Ok(n);
                }
                Err(Fail::NotFound) => {
                    // Another replica may have it: a replica a quorum write left behind, or
                    // one that lost it. The directory's liveness check keeps a deleted photo
                    // from being served by a replica that missed the delete.
                    not_found = true;
                    damaged.push((r.url.as_str(), DamageKind::Missing));
                }
                Err(Fail::Corrupt(reason)) => {
                    tracing::warn!(store = %r.url, volume = k.volume, key = k.key, alt = k.alt, reason = %reason, "corrupt needle on a replica; reading another");
                    damaged.push((r.url.as_str(), DamageKind::Corrupt));
                    reasons.push(format!("{}: corrupt needle", r.url));
                }
                Err(Fail::Other(reason)) => {
                    let until = self.now_ms() + SUSPECT_FOR.as_millis() as u64;
                    let before = r.state.suspect_until_ms.swap(until, Ordering::Relaxed);
                    // One line per store going bad, not one per read that meets it.
                    if before <= now {
                        tracing::warn!(store = %r.url, volume = k.volume, key = k.key, alt = k.alt, reason = %reason, "store read failed; trying the other replicas first for a while");
                    } else {
                        tracing::debug!(store = %r.url, volume = k.volume, key = k.key, alt = k.alt, reason = %reason, "store read failed again");
                    }
                    self.mark_stale(k.volume);
                    reasons.push(format!("{}: {reason}", r.url));
                }
            }
        }
        // Not found only when every replica says so: one that failed otherwise may hold the
        // needle (the directory's liveness check answers 404 for a deleted photo anyway).
        if not_found && reasons.is_empty() {
            return Err(Miss::NotFound);
        }
        if reasons.is_empty() {
            reasons.push("the volume has no replicas".into());
        }
        Err(Miss::AllFailed(reasons.join("; ")))
    }

    /// Reports a damaged replica to the directory in the background (read repair), unless
    /// this node reported it within [`REPORT_EVERY`].
    fn report(&self, c: &Clients, k: NeedleKey, cookie: u64, url: &str, kind: DamageKind) {
        let now = Instant::now();
        {
            let mut m = lock(&self.reported);
            let id = (k.volume, k.key, k.alt, url.to_string());
            if m.get(&id)
                .is_some_and(|t| now.duration_since(*t) < REPORT_EVERY)
            {
                return;
            }
            if m.len() >= MAX_REPORTS_REMEMBERED {
                m.retain(|_, t| now.duration_since(*t) < REPORT_EVERY);
                if m.len() >= MAX_REPORTS_REMEMBERED {
                    m.clear();
                }
            }
            m.insert(id, now);
        }
        let label = match kind {
            DamageKind::Corrupt => "corrupt",
            DamageKind::Missing => "missing",
        };
        let report = DamageReport {
            volume: k.volume,
            key: k.key,
            alt: k.alt,
            cookie: Some(cookie),
            store_url: url.to_string(),
            kind,
        };
        let dir = c.directory.clone();
        tokio::spawn(async move {
            match dir.report_damage(&report).await {
                Ok(r) => {
                    metrics::counter!("haystack_cache_read_repairs_reported_total", "kind" => label, "queued" => if r.queued { "true" } else { "false" })
                        .increment(1);
                    tracing::info!(store = %report.store_url, volume = report.volume, key = report.key, alt = report.alt, kind = label, queued = r.queued, reason = r.reason.as_deref().unwrap_or(""), "damaged replica reported");
                }
                Err(e) => {
                    metrics::counter!("haystack_cache_read_repairs_reported_total", "kind" => label, "queued" => "error")
                        .increment(1);
                    tracing::warn!(store = %report.store_url, error = %e, "reporting a damaged replica failed");
                }
            }
        });
    }

    /// One read from one replica.
    async fn read_one(
        &self,
        c: &Clients,
        r: &ReplicaView,
        k: NeedleKey,
        cookie: u64,
        stats: &Stats,
    ) -> Result<Arc<Needle>, Fail> {
        let _busy = InFlight::start(&r.state.inflight);
        let addr = NeedleAddr::new(k.volume, k.key, k.alt, cookie);
        let started = Instant::now();
        let read = match c.reader(&r.url) {
            Some(reader) => reader.get_needle(&addr).await,
            None => c.stores.get_needle(&r.url, &addr).await,
        };
        let outcome = match read {
            Ok(n) => {
                let header = |v: Option<bytes::Bytes>| {
                    v.and_then(|b| HeaderValue::from_maybe_shared(b).ok())
                };
                let etag = header(n.etag).unwrap_or_else(|| fallback_etag(k, cookie, n.data.len()));
                Ok(Arc::new(Needle {
                    content_type: header(n.content_type)
                        .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                    data: n.data,
                    cookie,
                    etag,
                    fetched: std::time::Instant::now(),
                    live_at_ms: Default::default(),
                    live_unknown: false,
                }))
            }
            Err(e) if e.is_not_found() && e.code() == Some("no_such_volume") => Err(Fail::Other(
                "the store does not hold the volume".to_string(),
            )),
            Err(e) if e.is_not_found() => Err(Fail::NotFound),
            Err(e) if e.code() == Some("corrupt_needle") => Err(Fail::Corrupt(e.to_string())),
            Err(ClientError::Transport(e)) => Err(Fail::Other(describe(&e))),
            Err(ClientError::Conn { kind, detail, .. }) => Err(Fail::Other(match kind {
                ConnFailure::Timeout => "timed out".into(),
                ConnFailure::Connect => "connection failed".into(),
                _ => format!("request failed: {detail}"),
            })),
            Err(ClientError::Api { status, body, .. }) => {
                let code = if body.error == "http" {
                    String::new()
                } else {
                    body.error
                };
                Err(Fail::Other(format!("answered {status} {code}")))
            }
            Err(e) => Err(Fail::Other(e.to_string())),
        };
        let secs = started.elapsed().as_secs_f64();
        match &outcome {
            Ok(n) => {
                crate::metrics::store_latency("ok", secs);
                stats.bytes_fetched.add(n.data.len() as u64);
            }
            Err(Fail::NotFound) => crate::metrics::store_latency("not_found", secs),
            Err(_) => crate::metrics::store_latency("error", secs),
        }
        outcome
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        format!("request failed: {e}")
    }
}

/// An ETag for a store that sent none (the store always sends one; this keeps the cache
/// correct if one does not).
fn fallback_etag(k: NeedleKey, cookie: u64, len: usize) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "\"c{:x}-{:x}-{:x}-{cookie:x}-{len:x}\"",
        k.volume, k.key, k.alt
    ))
    .unwrap_or(HeaderValue::from_static("\"0\""))
}
