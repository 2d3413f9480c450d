//! The directory's behaviour over the metadata store: store registration and heartbeats,
//! liveness, volume creation and placement, assign, commit, lookup, delete and read URLs.
//!
//! The metadata store holds the truth. Each instance keeps a snapshot of the (small) volume
//! and store tables, refreshed by the maintenance loop and after its own writes, from which
//! it answers assigns without touching the backend and computes each volume's effective state:
//! a volume is writable only while its recorded state is writable, every replica's store is up
//! and healthy and reports the volume writable, and it is not full. So a store that goes silent
//! turns its volumes read-only at the next sweep, and they come back as soon as it heartbeats
//! again, with no write to the volume records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use haystack_client::{CacheClient, ClientError, Credentials, StoreClient};
use haystack_proto::directory::{
    AssignRequest, AssignResponse, ChunkInfo, CommitRequest, CondemnResponse, CondemnState,
    DeleteResponse, DirectoryHealth, KeyedCommit, LivePhoto, LiveResponse, LogicalVolumeInfo,
    PhotoInfo, PhotoKind, RebalanceMove, RebalancePlan, RemoteReplicaStatus, RepairAction, Replica,
    ReplicaStatus, StoreInfo, StoreLifecycle, StoreState, VariantInfo, MAX_LIVE_BATCH,
};
use haystack_proto::{
    Heartbeat, HeartbeatReply, NeedleAddr, ShipOrder, ShipTarget, StoreRegistered,
    StoreRegistration, VolumeState,
};
use rand::Rng;

use crate::clock::Clock;
use crate::config::DirectoryConfig;
use crate::error::DirectoryError;
use crate::ids::{self, IdGenerator, MAX_NODE_ID};
use crate::meta::{Cas, Expect, Meta, MetadataStore, Versioned};
use crate::model::{fnv1a64, LogicalVolume, NodeLease, Photo, StoreMachine, UploadKey};
use crate::placement::{self, Candidate, Policy};

mod capacity;
pub use capacity::MAX_CREATES_PER_TICK;
mod drain;
mod erasure;
pub(crate) use erasure::check_scheme;
mod kv;
mod photos;
mod rebalance;
mod remote;
mod repairs;
mod stores;

pub use rebalance::MAX_MOVES_PER_RUN as MAX_REBALANCE_MOVES;
pub use repairs::AntiEntropyReport;
mod view;
mod volumes;

use view::*;

/// Conditional-write retries before giving up on a contended record.
const CAS_RETRIES: usize = 16;

/// What an idempotency key's record binds.
enum Binding {
    /// A committed, live photo.
    Live(Photo),
    /// A photo committed and then deleted.
    Deleted(Photo),
    /// Nothing (an earlier version's assign never committed, or a condemned id).
    Free,
}

/// The outcome of binding a key at commit.
enum Bound {
    /// Bound to the photo being committed: write this record.
    Ours(Photo),
    /// Bound to another live photo of the same request: answer it.
    Other(Photo),
}

/// The table key of an idempotency key, after checking its length.
fn key_hash(key: &str) -> Result<u64, DirectoryError> {
    if key.is_empty() || key.len() > 255 {
        return Err(DirectoryError::BadRequest(
            "idempotency_key must be 1 to 255 bytes".into(),
        ));
    }
    Ok(fnv1a64(key.as_bytes()))
}

fn key_collision() -> DirectoryError {
    DirectoryError::Conflict(
        "idempotency key collides with another key's hash; use another key".into(),
    )
}

/// The directory service.
pub struct Directory {
    config: DirectoryConfig,
    meta: Meta,
    clock: Arc<dyn Clock>,
    ids: IdGenerator,
    lease: Mutex<Option<Lease>>,
    /// Random id of this instance (per start), the holder named in the coordinator lease.
    instance: u64,
    /// The coordinator lease while this instance holds it: (record version, expiry ms).
    coordinator: Mutex<Option<(u64, u64)>>,
    state: Mutex<State>,
    view: RwLock<Arc<View>>,
    /// Calls to stores and caches (volume creation, delete notifications), with the
    /// notification timeout.
    stores: StoreClient,
    caches: CacheClient,
    /// Calls of the repair worker and anti-entropy (needle copies: a longer timeout).
    repair_stores: StoreClient,
    /// Wakes the repair worker when a repair is queued.
    repair_wake: Arc<tokio::sync::Notify>,
    /// Erasure-coding leftovers (`service/erasure.rs`): (store, volume) -> the version of the
    /// volume's record when the store last reported files of it that the record does not
    /// name; and the volumes with a shard rebuild in flight here.
    ec_leftovers: Mutex<HashMap<(u64, u32), u64>>,
    ec_busy: Mutex<HashSet<u32>>,
    /// Bytes assigned by this instance (size hints), and the write rate sampled from it and
    /// the reported volume sizes once per maintenance tick (`service/capacity.rs`).
    assigned_bytes: AtomicU64,
    write_rate: Mutex<capacity::WriteRate>,
}

impl Directory {
    /// Validates the config, claims a node id and loads the volume and store tables.
    pub async fn new(
        config: DirectoryConfig,
        store: Arc<dyn MetadataStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DirectoryError> {
        config.validate()?;
        let http = config
            .security
            .http_builder()
            .timeout(Duration::from_millis(config.notify_timeout_ms))
            .build()
            .map_err(|e| DirectoryError::Internal(format!("building http client: {e}")))?;
        let mut dir = Self {
            meta: Meta::new(store),
            clock,
            ids: IdGenerator::new(0),
            lease: Mutex::new(None),
            instance: rand::random(),
            coordinator: Mutex::new(None),
            state: Mutex::new(State::default()),
            view: RwLock::new(Arc::new(View::default())),
            stores: StoreClient::new(http.clone()).with_credentials(Credentials::internal(
                config.security.keys.as_ref(),
                "directory",
            )),
            caches: CacheClient::new(http.clone()).with_credentials(Credentials::internal(
                config.security.keys.as_ref(),
                "directory",
            )),
            repair_stores: StoreClient::with_timeout(http, Duration::from_secs(60))
                .with_credentials(Credentials::internal(
                    config.security.keys.as_ref(),
                    "directory",
                )),
            repair_wake: Arc::new(tokio::sync::Notify::new()),
            ec_leftovers: Mutex::new(HashMap::new()),
            ec_busy: Mutex::new(HashSet::new()),
            assigned_bytes: AtomicU64::new(0),
            write_rate: Mutex::new(capacity::WriteRate::default()),
            config,
        };
        let node = match dir.config.node_id {
            Some(n) => n,
            None => dir.claim_node_id().await?,
        };
        dir.ids = IdGenerator::new(node);
        dir.refresh().await?;
        dir.hold_coordinator().await?;
        tracing::info!(node, backend = dir.meta.backend(), "directory started");
        Ok(dir)
    }

    /// Notified whenever a repair is queued (the repair worker's trigger).
    pub fn repair_trigger(&self) -> Arc<tokio::sync::Notify> {
        self.repair_wake.clone()
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    pub fn node_id(&self) -> u16 {
        self.ids.node()
    }

    pub fn backend(&self) -> &'static str {
        self.meta.backend()
    }

    fn view(&self) -> Arc<View> {
        match self.view.read() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let r = f(&mut guard);
        let old = self.view();
        let view = Arc::new(build_view(&guard, &self.config, &old));
        metrics::gauge!("haystack_directory_writable_volumes").set(view.writable.len() as f64);
        metrics::gauge!("haystack_directory_stores_up")
            .set(view.stores.values().filter(|s| store_up(s)).count() as f64);
        match self.view.write() {
            Ok(mut v) => *v = view,
            Err(p) => *p.into_inner() = view,
        }
        r
    }

    /// Reads the state without rebuilding the view.
    fn read_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&guard)
    }

    /// Takes a volume record this instance just wrote into its snapshot.
    fn remember_volume(&self, id: u32, version: u64, value: LogicalVolume) {
        self.with_state(|st| {
            st.volumes.insert(id, Versioned { version, value });
        });
    }

    fn remember_store(&self, s: Versioned<StoreMachine>) {
        self.with_state(|st| {
            let keep = st
                .stores
                .get(&s.value.id)
                .is_some_and(|cur| cur.version > s.version);
            if !keep {
                st.stores.insert(s.value.id, s);
            }
        });
    }

    /// Reloads the volume and store tables from the metadata store.
    pub async fn refresh(&self) -> Result<(), DirectoryError> {
        let volumes = self.meta.list_volumes().await?;
        let stores = self.meta.list_stores().await?;
        self.with_state(|st| {
            let mut vols = BTreeMap::new();
            for v in volumes {
                let id = v.value.id;
                match st.volumes.remove(&id) {
                    Some(cur) if cur.version > v.version => vols.insert(id, cur),
                    _ => vols.insert(id, v),
                };
            }
            let mut ss = BTreeMap::new();
            for s in stores {
                let id = s.value.id;
                match st.stores.remove(&id) {
                    Some(cur) if cur.version > s.version => ss.insert(id, cur),
                    _ => ss.insert(id, s),
                };
            }
            st.volumes = vols;
            st.stores = ss;
        });
        Ok(())
    }

    // ---- node id lease -------------------------------------------------------------------

    fn lease_ms(&self) -> u64 {
        (self.config.maintenance_interval_ms * 30).max(60_000)
    }

    /// Claims another node id after this instance's was lost, and hands out ids under it.
    async fn claim_new_node_id(&self) -> Result<(), DirectoryError> {
        let old = self.ids.node();
        let node = self.claim_node_id().await?;
        tracing::warn!(old, node, "directory hands out ids under a new node id");
        Ok(())
    }

    async fn claim_node_id(&self) -> Result<u16, DirectoryError> {
        let holder: u64 = rand::random();
        let start: u16 = rand::rng().random_range(0..=MAX_NODE_ID);
        for i in 0..=MAX_NODE_ID {
            let node = (start + i) & MAX_NODE_ID;
            let now = self.clock.now_ms();
            let lease = NodeLease {
                holder,
                expires_ms: now + self.lease_ms(),
            };
            let expect = match self.meta.get_lease(node).await? {
                None => Expect::Absent,
                Some(cur) if cur.value.expires_ms < now => Expect::Version(cur.version),
                Some(_) => continue,
            };
            if let Cas::Applied { version } = self.meta.put_lease(node, &lease, expect).await? {
                // Ids go under the new node id before the lease says they may be handed out.
                self.ids.set_node(node);
                *self
                    .lease
                    .lock()
                    .map_err(|_| DirectoryError::Internal("lease lock poisoned".into()))? =
                    Some(Lease {
                        node,
                        holder,
                        version,
                        expires_ms: lease.expires_ms,
                    });
                return Ok(node);
            }
        }
        Err(DirectoryError::Unavailable(
            "every node id (0..=1023) is leased by another directory instance".into(),
        ))
    }

    async fn renew_lease(&self) -> Result<(), DirectoryError> {
        let now = self.clock.now_ms();
        let current = {
            let g = self
                .lease
                .lock()
                .map_err(|_| DirectoryError::Internal("lease lock poisoned".into()))?;
            match &*g {
                Some(l) if l.expires_ms.saturating_sub(now) < self.lease_ms() / 2 => {
                    Some((l.node, l.holder, l.version))
                }
                Some(_) => return Ok(()),
                None if self.config.node_id.is_none() => None,
                None => return Ok(()),
            }
        };
        // No lease (given up to another instance, and claiming a new one failed then): claim
        // one now.
        let Some(current) = current else {
            return self.claim_new_node_id().await;
        };
        let (node, holder, version) = current;
        let lease = NodeLease {
            holder,
            expires_ms: now + self.lease_ms(),
        };
        match self
            .meta
            .put_lease(node, &lease, Expect::Version(version))
            .await?
        {
            Cas::Applied { version } => {
                if let Ok(mut g) = self.lease.lock() {
                    *g = Some(Lease {
                        node,
                        holder,
                        version,
                        expires_ms: lease.expires_ms,
                    });
                }
            }
            Cas::Conflict { .. } => {
                // Another instance holds this node id now (this one stalled past its lease):
                // no id is handed out under it again; another node id is claimed.
                if let Ok(mut g) = self.lease.lock() {
                    *g = None;
                }
                metrics::counter!("haystack_directory_node_leases_lost_total").increment(1);
                tracing::error!(
                    node,
                    "node id lease taken by another instance; claiming another node id"
                );
                self.claim_new_node_id().await?;
            }
        }
        Ok(())
    }

    /// The next photo or store id. Refused (503) while this instance's node-id lease has
    /// lapsed (it stalled past it: another instance may claim the node id and hand out the
    /// same ids) until the maintenance round renews it or claims another node id. A node id
    /// set in the config is the operator's to keep unique: not leased, never refused.
    pub(crate) fn next_id(&self) -> Result<u64, DirectoryError> {
        if self.config.node_id.is_none() {
            let now = self.clock.now_ms();
            let held = self
                .lease
                .lock()
                .map(|g| g.as_ref().is_some_and(|l| l.expires_ms > now))
                .unwrap_or(false);
            if !held {
                metrics::counter!("haystack_directory_ids_refused_lease_lapsed_total").increment(1);
                return Err(DirectoryError::Unavailable(
                    "this directory's node id lease lapsed: no ids until it is renewed".into(),
                ));
            }
        }
        Ok(self.ids.next_id())
    }

    // ---- coordinator lease -----------------------------------------------------------------

    /// How long the coordinator lease lasts unless renewed (renewed every maintenance round
    /// once half of it is gone): how long the background work waits after its coordinator
    /// crashed.
    fn coordinator_lease_ms(&self) -> u64 {
        (self.config.maintenance_interval_ms * 10).max(5_000)
    }

    /// Whether this instance holds the coordinator lease now: only the coordinator runs the
    /// background work that changes placement (volume creation, re-replication, drain, the
    /// repair queue, anti-entropy, rebalancing, automatic encoding, remote replicas), so
    /// several directories over one metadata store never do it twice. Requests (assign,
    /// commit, lookup, delete, heartbeats, an operator's commands) are served by every
    /// instance.
    pub fn is_coordinator(&self) -> bool {
        let now = self.clock.now_ms();
        let held = match self.coordinator.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        held.is_some_and(|(_, expires)| expires > now)
    }

    fn set_coordinator(&self, held: Option<(u64, u64)>) {
        match self.coordinator.lock() {
            Ok(mut g) => *g = held,
            Err(p) => *p.into_inner() = held,
        }
        metrics::gauge!("haystack_directory_coordinator").set(if held.is_some() {
            1.0
        } else {
            0.0
        });
    }

    /// Takes the coordinator lease when it is free or expired, renews it when held and half
    /// gone; whether this instance holds it now.
    pub(crate) async fn hold_coordinator(&self) -> Result<bool, DirectoryError> {
        let now = self.clock.now_ms();
        let span = self.coordinator_lease_ms();
        let held = match self.coordinator.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        if let Some((_, expires)) = held {
            if expires.saturating_sub(now) > span / 2 {
                return Ok(true);
            }
        }
        let expect = match held.filter(|(_, expires)| *expires > now) {
            Some((version, _)) => Expect::Version(version),
            None => match self.meta.get_coordinator().await? {
                None => Expect::Absent,
                Some(cur) if cur.value.holder == self.instance || cur.value.expires_ms <= now => {
                    Expect::Version(cur.version)
                }
                Some(_) => {
                    self.set_coordinator(None);
                    return Ok(false);
                }
            },
        };
        let lease = NodeLease {
            holder: self.instance,
            expires_ms: now + span,
        };
        match self.meta.put_coordinator(&lease, expect).await? {
            Cas::Applied { version } => {
                if held.is_none() {
                    tracing::info!(
                        node = self.ids.node(),
                        lease_ms = span,
                        "coordinator lease taken: this instance runs the background work"
                    );
                }
                self.set_coordinator(Some((version, lease.expires_ms)));
                Ok(true)
            }
            Cas::Conflict { .. } => {
                if held.is_some() {
                    tracing::warn!(
                        node = self.ids.node(),
                        "coordinator lease lost to another instance; background work stops here"
                    );
                }
                self.set_coordinator(None);
                Ok(false)
            }
        }
    }

    /// Gives the coordinator lease up (a clean shutdown), so that another instance, or this
    /// one restarted, takes it at once instead of after it expires.
    async fn release_coordinator(&self) {
        let held = match self.coordinator.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some((version, _)) = held {
            let lease = NodeLease {
                holder: self.instance,
                expires_ms: 0,
            };
            if let Err(e) = self
                .meta
                .put_coordinator(&lease, Expect::Version(version))
                .await
            {
                tracing::warn!(error = %e, "releasing the coordinator lease failed; it expires by itself");
            }
        }
    }

    // ---- stores --------------------------------------------------------------------------

    /// Health: whether the backend answers, and what is up.
    pub async fn health(&self) -> DirectoryHealth {
        let ok = self.meta.raw().ping().await.is_ok();
        let view = self.view();
        DirectoryHealth {
            status: if ok { "ok" } else { "degraded" }.to_string(),
            backend: self.meta.backend().to_string(),
            stores_up: view.stores.values().filter(|s| store_up(s)).count() as u32,
            writable_volumes: view.writable.len() as u32,
            pid: std::process::id(),
            coordinator: self.is_coordinator(),
        }
    }

    /// Closes the metadata store (the embedded file is released when this returns).
    pub async fn close(&self) {
        self.release_coordinator().await;
        self.meta.raw().close().await;
    }
}
