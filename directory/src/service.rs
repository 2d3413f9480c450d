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

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use haystack_client::{CacheClient, ClientError, StoreClient};
use haystack_proto::directory::{
    AssignRequest, AssignResponse, ChunkInfo, CommitRequest, CondemnResponse, CondemnState,
    DeleteResponse, DirectoryHealth, KeyedCommit, LogicalVolumeInfo, PhotoInfo, PhotoKind, Replica,
    ReplicaStatus, StoreInfo, StoreState, VariantInfo,
};
use haystack_proto::{
    Heartbeat, HeartbeatReply, NeedleAddr, StoreRegistered, StoreRegistration, VolumeState,
};
use rand::Rng;

use crate::clock::Clock;
use crate::config::DirectoryConfig;
use crate::error::DirectoryError;
use crate::ids::{self, IdGenerator, MAX_NODE_ID};
use crate::meta::{Cas, Expect, Meta, MetadataStore, Versioned};
use crate::model::{fnv1a64, LogicalVolume, NodeLease, Photo, StoreMachine, UploadKey};
use crate::placement::{self, Candidate};

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

#[derive(Default)]
struct State {
    volumes: BTreeMap<u32, Versioned<LogicalVolume>>,
    stores: BTreeMap<u64, Versioned<StoreMachine>>,
}

/// One volume as seen now.
struct VolumeView {
    info: LogicalVolumeInfo,
    replicas: Vec<Replica>,
    /// Its replicas are placed but not all created yet.
    pending: bool,
    /// Assigns since the counter last decayed (the "recent writes" of balancing).
    recent: Arc<AtomicU64>,
}

impl VolumeView {
    fn free_bytes(&self) -> u64 {
        self.info
            .capacity_bytes
            .saturating_sub(self.info.used_bytes)
    }
}

/// A snapshot built from [`State`] after every change.
#[derive(Default)]
struct View {
    volumes: BTreeMap<u32, VolumeView>,
    stores: BTreeMap<u64, StoreMachine>,
    writable: Vec<u32>,
}

struct Lease {
    node: u16,
    holder: u64,
    version: u64,
    expires_ms: u64,
}

/// The directory service.
pub struct Directory {
    config: DirectoryConfig,
    meta: Meta,
    clock: Arc<dyn Clock>,
    ids: IdGenerator,
    lease: Mutex<Option<Lease>>,
    state: Mutex<State>,
    view: RwLock<Arc<View>>,
    /// Calls to stores and caches (volume creation, delete notifications), with the
    /// notification timeout.
    stores: StoreClient,
    caches: CacheClient,
}

fn store_up(s: &StoreMachine) -> bool {
    s.state == StoreState::Up && s.healthy
}

fn needle_url(base: &str, volume: u32, id: u64, alt: u32, cookie: u64) -> String {
    haystack_client::urls::needle(base, &NeedleAddr::new(volume, id, alt, cookie))
}

fn build_view(state: &State, config: &DirectoryConfig, old: &View) -> View {
    let mut volumes = BTreeMap::new();
    let mut writable = Vec::new();
    for (&id, v) in &state.volumes {
        let vol = &v.value;
        let mut used = vol.used_bytes;
        let mut capacity: Option<u64> = None;
        let mut replicas = Vec::with_capacity(vol.replicas.len());
        let mut statuses = Vec::with_capacity(vol.replicas.len());
        let mut blocked: Option<String> = None;
        let mut pending = false;
        let mut any_down = false;
        for sid in &vol.replicas {
            let Some(store) = state.stores.get(sid).map(|s| &s.value) else {
                any_down = true;
                blocked.get_or_insert_with(|| format!("replica store {sid} is unknown"));
                statuses.push(ReplicaStatus {
                    store_id: *sid,
                    url: String::new(),
                    up: false,
                    reported: false,
                });
                continue;
            };
            let up = store_up(store);
            let report = store.volumes.iter().find(|r| r.id == id);
            replicas.push(Replica {
                store_id: *sid,
                url: store.url.clone(),
            });
            statuses.push(ReplicaStatus {
                store_id: *sid,
                url: store.url.clone(),
                up,
                reported: report.is_some(),
            });
            if !up {
                any_down = true;
                blocked.get_or_insert_with(|| format!("replica store {sid} is down"));
            }
            match report {
                None if vol.reported_by.contains(sid) => {
                    any_down = true;
                    blocked.get_or_insert_with(|| {
                        format!("replica on store {sid} is missing; repair it")
                    });
                }
                None => {
                    pending = true;
                    blocked.get_or_insert_with(|| {
                        format!("replica on store {sid} is not created yet")
                    });
                }
                Some(r) => {
                    used = used.max(r.size_bytes);
                    capacity = Some(capacity.map_or(r.max_bytes, |c| c.min(r.max_bytes)));
                    if r.state != VolumeState::Writable {
                        blocked.get_or_insert_with(|| {
                            r.reason
                                .clone()
                                .unwrap_or_else(|| format!("replica on store {sid} is read-only"))
                        });
                    }
                }
            }
        }
        let capacity = capacity.unwrap_or(vol.capacity_bytes);
        if blocked.is_none() && used as f64 >= capacity as f64 * config.full_fraction {
            blocked = Some("volume is full".to_string());
        }
        let (effective, reason) = if vol.state != VolumeState::Writable {
            (vol.state, vol.reason.clone())
        } else if let Some(why) = blocked {
            (VolumeState::ReadOnly, Some(why))
        } else {
            (VolumeState::Writable, None)
        };
        let is_writable = effective == VolumeState::Writable;
        if is_writable {
            writable.push(id);
        }
        let recent = old
            .volumes
            .get(&id)
            .map(|o| o.recent.clone())
            .unwrap_or_default();
        volumes.insert(
            id,
            VolumeView {
                info: LogicalVolumeInfo {
                    id,
                    state: vol.state,
                    effective_state: effective,
                    writable: is_writable,
                    capacity_bytes: capacity,
                    used_bytes: used,
                    replicas: statuses,
                    reason,
                },
                replicas,
                // On its way only while every replica's store is up to create it; a volume
                // stuck on a dead store must not hold back the creation of others.
                pending: pending && !any_down && vol.state == VolumeState::Writable,
                recent,
            },
        );
    }
    View {
        volumes,
        stores: state
            .stores
            .iter()
            .map(|(k, v)| (*k, v.value.clone()))
            .collect(),
        writable,
    }
}

fn store_info(s: &StoreMachine) -> StoreInfo {
    StoreInfo {
        store_id: s.id,
        url: s.url.clone(),
        zone: s.zone.clone(),
        rack: s.rack.clone(),
        capacity_bytes: s.capacity_bytes,
        free_bytes: s.free_bytes,
        last_heartbeat_ms: s.last_heartbeat_ms,
        state: s.state,
        healthy: s.healthy,
        volumes: s.volumes.iter().map(|v| v.id).collect(),
    }
}

fn check_url(url: &str) -> Result<(), DirectoryError> {
    if (url.starts_with("http://") || url.starts_with("https://")) && url.len() > 8 {
        Ok(())
    } else {
        Err(DirectoryError::BadRequest(format!(
            "public_url {url:?} is not an http(s) URL"
        )))
    }
}

impl Directory {
    /// Validates the config, claims a node id and loads the volume and store tables.
    pub async fn new(
        config: DirectoryConfig,
        store: Arc<dyn MetadataStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DirectoryError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.notify_timeout_ms))
            .build()
            .map_err(|e| DirectoryError::Internal(format!("building http client: {e}")))?;
        let mut dir = Self {
            meta: Meta::new(store),
            clock,
            ids: IdGenerator::new(0),
            lease: Mutex::new(None),
            state: Mutex::new(State::default()),
            view: RwLock::new(Arc::new(View::default())),
            stores: StoreClient::new(http.clone()),
            caches: CacheClient::new(http),
            config,
        };
        let node = match dir.config.node_id {
            Some(n) => n,
            None => dir.claim_node_id().await?,
        };
        dir.ids = IdGenerator::new(node);
        dir.refresh().await?;
        tracing::info!(node, backend = dir.meta.backend(), "directory started");
        Ok(dir)
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
                    (l.node, l.holder, l.version)
                }
                _ => return Ok(()),
            }
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
                tracing::error!(
                    node,
                    "node id lease taken by another instance; ids may collide until restart"
                );
            }
        }
        Ok(())
    }

    // ---- stores --------------------------------------------------------------------------

    /// A store's registration: a new id on first contact, or an update of a known one.
    pub async fn register(
        &self,
        req: StoreRegistration,
    ) -> Result<StoreRegistered, DirectoryError> {
        check_url(&req.public_url)?;
        let now = self.clock.now_ms();
        for _ in 0..CAS_RETRIES {
            let id = req.store_id.unwrap_or_else(|| self.ids.next_id());
            let existing = self.meta.get_store(id).await?;
            let (expect, mut machine) = match existing {
                Some(cur) => (Expect::Version(cur.version), cur.value),
                None => (
                    Expect::Absent,
                    StoreMachine {
                        id,
                        url: String::new(),
                        zone: None,
                        rack: None,
                        capacity_bytes: 0,
                        free_bytes: 0,
                        last_heartbeat_ms: now,
                        state: StoreState::Up,
                        healthy: true,
                        volumes: Vec::new(),
                        registered_ms: now,
                    },
                ),
            };
            machine.url = req.public_url.trim_end_matches('/').to_string();
            machine.zone = req.zone.clone();
            machine.rack = req.rack.clone();
            machine.capacity_bytes = req.capacity_bytes;
            machine.free_bytes = req.free_bytes;
            machine.last_heartbeat_ms = now;
            machine.state = StoreState::Up;
            machine.healthy = true;
            if let Cas::Applied { version } = self.meta.put_store(&machine, expect).await? {
                tracing::info!(store_id = id, url = %machine.url, zone = ?machine.zone, rack = ?machine.rack, "store registered");
                self.remember_store(Versioned {
                    version,
                    value: machine,
                });
                return Ok(StoreRegistered {
                    store_id: id,
                    heartbeat_interval_secs: self.config.heartbeat_interval_secs,
                });
            }
        }
        Err(DirectoryError::Conflict(
            "store record is contended; retry".into(),
        ))
    }

    /// A heartbeat: records liveness, space and volumes; answers which volumes to create.
    pub async fn heartbeat(
        &self,
        store_id: u64,
        hb: Heartbeat,
    ) -> Result<HeartbeatReply, DirectoryError> {
        if hb.store_id != store_id {
            return Err(DirectoryError::BadRequest(format!(
                "heartbeat for store {} sent to store {store_id}",
                hb.store_id
            )));
        }
        check_url(&hb.public_url)?;
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.meta.get_store(store_id).await? else {
                return Err(DirectoryError::NotFound(format!(
                    "store {store_id} is not registered; register again"
                )));
            };
            let was_down = cur.value.state == StoreState::Down || !cur.value.healthy;
            let mut machine = cur.value;
            machine.url = hb.public_url.trim_end_matches('/').to_string();
            machine.capacity_bytes = hb.capacity_bytes;
            machine.free_bytes = hb.free_bytes;
            machine.healthy = hb.healthy;
            machine.volumes = hb.volumes.clone();
            machine.last_heartbeat_ms = self.clock.now_ms();
            machine.state = StoreState::Up;
            if let Cas::Applied { version } = self
                .meta
                .put_store(&machine, Expect::Version(cur.version))
                .await?
            {
                if was_down && hb.healthy {
                    tracing::info!(store_id, "store is back up");
                } else if !hb.healthy {
                    tracing::warn!(store_id, "store reports itself unhealthy");
                }
                self.remember_store(Versioned {
                    version,
                    value: machine,
                });
                self.note_reported(store_id, &hb).await?;
                return Ok(self.volumes_to_create(store_id, &hb));
            }
        }
        Err(DirectoryError::Conflict(
            "store record is contended; retry".into(),
        ))
    }

    /// Records, once per replica, that a store has reported a volume it holds.
    async fn note_reported(&self, store_id: u64, hb: &Heartbeat) -> Result<(), DirectoryError> {
        let first_reports: Vec<u32> = {
            let view = self.view();
            hb.volumes
                .iter()
                .filter(|r| {
                    view.volumes
                        .get(&r.id)
                        .is_some_and(|v| v.info.replicas.iter().any(|x| x.store_id == store_id))
                })
                .map(|r| r.id)
                .filter(|id| {
                    self.read_state(|st| {
                        st.volumes
                            .get(id)
                            .is_some_and(|v| !v.value.reported_by.contains(&store_id))
                    })
                })
                .collect()
        };
        for id in first_reports {
            for _ in 0..CAS_RETRIES {
                let Some(cur) = self.meta.get_volume(id).await? else {
                    break;
                };
                if !cur.value.replicas.contains(&store_id)
                    || cur.value.reported_by.contains(&store_id)
                {
                    self.with_state(|st| {
                        st.volumes.insert(id, cur);
                    });
                    break;
                }
                let mut vol = cur.value;
                vol.reported_by.push(store_id);
                if let Cas::Applied { version } = self
                    .meta
                    .put_volume(&vol, Expect::Version(cur.version))
                    .await?
                {
                    self.with_state(|st| {
                        st.volumes.insert(
                            id,
                            Versioned {
                                version,
                                value: vol,
                            },
                        );
                    });
                    break;
                }
            }
        }
        Ok(())
    }

    fn volumes_to_create(&self, store_id: u64, hb: &Heartbeat) -> HeartbeatReply {
        let has: HashSet<u32> = hb.volumes.iter().map(|v| v.id).collect();
        let create_volumes = self.read_state(|st| {
            st.volumes
                .values()
                .filter(|v| v.value.state == VolumeState::Writable)
                .filter(|v| v.value.replicas.contains(&store_id) && !has.contains(&v.value.id))
                .filter(|v| !v.value.reported_by.contains(&store_id))
                .map(|v| v.value.id)
                .collect()
        });
        HeartbeatReply { create_volumes }
    }

    /// Marks down every store silent for longer than `store_timeout_ms`.
    pub async fn sweep_liveness(&self) -> Result<(), DirectoryError> {
        let now = self.clock.now_ms();
        let timeout = self.config.store_timeout_ms;
        let stale: Vec<u64> = self
            .view()
            .stores
            .values()
            .filter(|s| {
                s.state == StoreState::Up && now.saturating_sub(s.last_heartbeat_ms) > timeout
            })
            .map(|s| s.id)
            .collect();
        for id in stale {
            for _ in 0..CAS_RETRIES {
                let Some(cur) = self.meta.get_store(id).await? else {
                    break;
                };
                if cur.value.state == StoreState::Down
                    || now.saturating_sub(cur.value.last_heartbeat_ms) <= timeout
                {
                    // Someone else marked it, or it heartbeated through another instance.
                    self.remember_store(cur);
                    break;
                }
                let mut machine = cur.value;
                machine.state = StoreState::Down;
                if let Cas::Applied { version } = self
                    .meta
                    .put_store(&machine, Expect::Version(cur.version))
                    .await?
                {
                    tracing::warn!(
                        store_id = id,
                        silent_ms = now.saturating_sub(machine.last_heartbeat_ms),
                        "store marked down; its volumes are read-only"
                    );
                    metrics::counter!("haystack_directory_stores_marked_down_total").increment(1);
                    self.remember_store(Versioned {
                        version,
                        value: machine,
                    });
                    break;
                }
            }
        }
        Ok(())
    }

    pub fn stores(&self) -> Vec<StoreInfo> {
        self.view().stores.values().map(store_info).collect()
    }

    // ---- volumes -------------------------------------------------------------------------

    pub fn volumes(&self) -> Vec<LogicalVolumeInfo> {
        self.view()
            .volumes
            .values()
            .map(|v| v.info.clone())
            .collect()
    }

    pub fn volume(&self, id: u32) -> Result<LogicalVolumeInfo, DirectoryError> {
        self.view()
            .volumes
            .get(&id)
            .map(|v| v.info.clone())
            .ok_or_else(|| DirectoryError::NotFound(format!("logical volume {id} not found")))
    }

    /// Creates a logical volume on R machines chosen by [`placement::place`]; the stores create
    /// their replicas when their next heartbeat answer tells them to.
    pub async fn create_volume(&self) -> Result<LogicalVolumeInfo, DirectoryError> {
        for _ in 0..CAS_RETRIES {
            let view = self.view();
            // Bytes promised to volumes a store has not created yet.
            let candidates: Vec<Candidate> = view
                .stores
                .values()
                .filter(|s| store_up(s))
                .map(|s| {
                    let mut promised = 0u64;
                    let mut volumes = 0u32;
                    for v in view.volumes.values() {
                        if let Some(r) = v.info.replicas.iter().find(|r| r.store_id == s.id) {
                            volumes += 1;
                            if !r.reported {
                                promised += self.config.volume_capacity_bytes;
                            }
                        }
                    }
                    Candidate {
                        store_id: s.id,
                        zone: s.zone.clone(),
                        rack: s.rack.clone(),
                        free_bytes: s.free_bytes.saturating_sub(promised),
                        volumes,
                    }
                })
                .collect();
            let replicas = placement::place(
                &candidates,
                self.config.replication_factor,
                self.config.volume_capacity_bytes,
            )
            .map_err(|e| DirectoryError::NoWritableVolume(format!("cannot place a volume: {e}")))?;
            let id = view.volumes.keys().next_back().map_or(1, |m| m + 1);
            let vol = LogicalVolume {
                id,
                replicas,
                state: VolumeState::Writable,
                capacity_bytes: self.config.volume_capacity_bytes,
                used_bytes: 0,
                created_ms: self.clock.now_ms(),
                reason: None,
                reported_by: Vec::new(),
            };
            match self.meta.put_volume(&vol, Expect::Absent).await? {
                Cas::Applied { version } => {
                    tracing::info!(volume_id = id, replicas = ?vol.replicas, "logical volume created");
                    self.push_volume_creation(id, &vol.replicas, &view);
                    metrics::counter!("haystack_directory_volumes_created_total").increment(1);
                    self.with_state(|st| {
                        st.volumes.insert(
                            id,
                            Versioned {
                                version,
                                value: vol,
                            },
                        );
                    });
                    return self.volume(id);
                }
                // Another instance took this id: learn its volumes and try the next.
                Cas::Conflict { .. } => self.refresh().await?,
            }
        }
        Err(DirectoryError::Conflict(
            "volume ids are contended; retry".into(),
        ))
    }

    /// Sets a volume's recorded state (operators: seal, or take a volume out of rotation).
    /// A sealed volume stays sealed.
    pub async fn set_volume_state(
        &self,
        id: u32,
        state: VolumeState,
        reason: Option<String>,
    ) -> Result<LogicalVolumeInfo, DirectoryError> {
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.meta.get_volume(id).await? else {
                return Err(DirectoryError::NotFound(format!(
                    "logical volume {id} not found"
                )));
            };
            if cur.value.state == VolumeState::Sealed && state != VolumeState::Sealed {
                return Err(DirectoryError::BadRequest(format!(
                    "logical volume {id} is sealed for good"
                )));
            }
            let mut vol = cur.value;
            vol.state = state;
            vol.reason = if state == VolumeState::Writable {
                None
            } else {
                reason.clone()
            };
            if let Cas::Applied { version } = self
                .meta
                .put_volume(&vol, Expect::Version(cur.version))
                .await?
            {
                tracing::info!(volume_id = id, ?state, "logical volume state set");
                self.with_state(|st| {
                    st.volumes.insert(
                        id,
                        Versioned {
                            version,
                            value: vol,
                        },
                    );
                });
                return self.volume(id);
            }
        }
        Err(DirectoryError::Conflict(format!(
            "logical volume {id} is contended; retry"
        )))
    }

    /// Replaces replica `from` of a volume by store `to` (repair: after the volume was copied
    /// onto `to`). Idempotent: answers the volume if `to` already replaced `from`.
    pub async fn replace_replica(
        &self,
        id: u32,
        from: u64,
        to: u64,
    ) -> Result<LogicalVolumeInfo, DirectoryError> {
        if self.meta.get_store(to).await?.is_none() {
            return Err(DirectoryError::BadRequest(format!(
                "store {to} is not registered"
            )));
        }
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.meta.get_volume(id).await? else {
                return Err(DirectoryError::NotFound(format!(
                    "logical volume {id} not found"
                )));
            };
            let has_from = cur.value.replicas.contains(&from);
            let has_to = cur.value.replicas.contains(&to);
            match (has_from, has_to) {
                (false, true) => {
                    self.refresh().await?;
                    return self.volume(id);
                }
                (false, false) => {
                    return Err(DirectoryError::BadRequest(format!(
                        "store {from} holds no replica of volume {id}"
                    )))
                }
                (true, true) => {
                    return Err(DirectoryError::BadRequest(format!(
                        "store {to} already holds a replica of volume {id}"
                    )))
                }
                (true, false) => {}
            }
            let mut vol = cur.value;
            for r in vol.replicas.iter_mut() {
                if *r == from {
                    *r = to;
                }
            }
            vol.reported_by.retain(|r| *r != from);
            if let Cas::Applied { version } = self
                .meta
                .put_volume(&vol, Expect::Version(cur.version))
                .await?
            {
                tracing::info!(volume_id = id, from, to, "replica moved");
                self.refresh().await?;
                self.with_state(|st| {
                    st.volumes.insert(
                        id,
                        Versioned {
                            version,
                            value: vol,
                        },
                    );
                });
                self.push_volume_creation(id, &[to], &self.view());
                return self.volume(id);
            }
        }
        Err(DirectoryError::Conflict(format!(
            "logical volume {id} is contended; retry"
        )))
    }

    /// Automatic re-replication, one volume per call: the first volume with a replica on a
    /// store down for longer than `rereplicate_after_ms` gets a new replica on an up store
    /// that does not hold it (placement's rules), copied there by the store itself from a
    /// healthy replica (`POST {target}/v1/volumes/{id}/import`), then put in place of the dead
    /// one. The volume is read-only meanwhile (a replica is down), so the copy misses no
    /// write. Returns the volume it repaired. Run from its own loop: a copy takes as long as
    /// the volume is big.
    pub async fn rereplicate_once(&self) -> Result<Option<u32>, DirectoryError> {
        let after = self.config.rereplicate_after_ms;
        if after == 0 {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let view = self.view();
        let dead: HashSet<u64> = view
            .stores
            .values()
            .filter(|s| {
                s.state == StoreState::Down && now.saturating_sub(s.last_heartbeat_ms) > after
            })
            .map(|s| s.id)
            .collect();
        if dead.is_empty() {
            return Ok(None);
        }
        for v in view.volumes.values() {
            let Some(lost) = v.info.replicas.iter().find(|r| dead.contains(&r.store_id)) else {
                continue;
            };
            let Some(source) = v
                .info
                .replicas
                .iter()
                .find(|r| r.up && r.reported && !dead.contains(&r.store_id))
            else {
                tracing::error!(
                    volume_id = v.info.id,
                    "no healthy replica left to re-replicate from"
                );
                continue;
            };
            let candidates: Vec<Candidate> = view
                .stores
                .values()
                .filter(|s| store_up(s))
                .filter(|s| !v.info.replicas.iter().any(|r| r.store_id == s.id))
                .map(|s| Candidate {
                    store_id: s.id,
                    zone: s.zone.clone(),
                    rack: s.rack.clone(),
                    free_bytes: s.free_bytes,
                    volumes: view
                        .volumes
                        .values()
                        .filter(|o| o.info.replicas.iter().any(|r| r.store_id == s.id))
                        .count() as u32,
                })
                .collect();
            let need = v.info.used_bytes.max(1 << 20);
            let Ok(picked) = placement::place(&candidates, 1, need) else {
                tracing::warn!(volume_id = v.info.id, "no store can take a new replica yet");
                continue;
            };
            let Some(target) = view.stores.get(&picked[0]) else {
                continue;
            };
            let id = v.info.id;
            tracing::warn!(
                volume_id = id,
                lost_store = lost.store_id,
                from = %source.url,
                to = %target.url,
                "re-replicating a volume whose store stayed down"
            );
            let copy = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| DirectoryError::Internal(e.to_string()))?;
            if let Err(e) = StoreClient::new(copy)
                .import(&target.url, id, &source.url)
                .await
            {
                tracing::warn!(volume_id = id, to = %target.url, error = %e, "re-replication copy failed");
                continue;
            }
            self.replace_replica(id, lost.store_id, target.id).await?;
            metrics::counter!("haystack_directory_rereplications_total").increment(1);
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// Asks the replicas' stores to create the volume now (`POST /v1/volumes/{id}`), best
    /// effort and in the background; a store that misses it is told again in every heartbeat
    /// answer until it reports the volume.
    fn push_volume_creation(&self, id: u32, replicas: &[u64], view: &View) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for sid in replicas {
            let Some(store) = view.stores.get(sid) else {
                continue;
            };
            let stores = self.stores.clone();
            let url = store.url.clone();
            let store_id = *sid;
            rt.spawn(async move {
                match stores.create_volume(&url, id).await {
                    Ok(()) => {
                        tracing::debug!(store_id, volume_id = id, "store created the volume")
                    }
                    Err(e @ ClientError::Api { .. }) => tracing::info!(
                        store_id,
                        volume_id = id,
                        status = e.status(),
                        "store refused the volume now; its heartbeat answer asks again"
                    ),
                    Err(e) => tracing::info!(
                        store_id,
                        volume_id = id,
                        error = %e,
                        "store unreachable for volume creation; its heartbeat answer asks again"
                    ),
                }
            });
        }
    }

    /// Creates a volume when fewer than `min_writable_volumes` are writable or on their way,
    /// or when the writable ones have less room than `min_writable_free_bytes`.
    pub async fn ensure_capacity(&self) -> Result<Option<u32>, DirectoryError> {
        let view = self.view();
        let pending = view.volumes.values().filter(|v| v.pending).count();
        let free: u64 = view
            .writable
            .iter()
            .filter_map(|id| view.volumes.get(id))
            .map(|v| v.free_bytes())
            .sum();
        let enough_volumes = view.writable.len() + pending >= self.config.min_writable_volumes;
        let enough_space = free >= self.config.min_writable_free_bytes || pending > 0;
        if enough_volumes && enough_space {
            return Ok(None);
        }
        let info = self.create_volume().await?;
        Ok(Some(info.id))
    }

    /// One round of the maintenance loop.
    pub async fn maintain(&self) -> Result<(), DirectoryError> {
        self.refresh().await?;
        self.sweep_liveness().await?;
        if let Err(e) = self.ensure_capacity().await {
            match e {
                DirectoryError::NoWritableVolume(_) => {
                    tracing::debug!(error = %e, "no room for a new volume yet")
                }
                e => return Err(e),
            }
        }
        self.renew_lease().await?;
        for v in self.view().volumes.values() {
            let r = v.recent.load(Ordering::Relaxed);
            v.recent.store(r / 2, Ordering::Relaxed);
        }
        Ok(())
    }

    // ---- photos --------------------------------------------------------------------------

    /// A new id and cookie on a writable volume: the less recently written and the emptier,
    /// the likelier (best of two random choices). Touches no backend.
    pub fn assign(&self, req: &AssignRequest) -> Result<AssignResponse, DirectoryError> {
        let view = self.view();
        let fits: Vec<&VolumeView> = view
            .writable
            .iter()
            .filter_map(|id| view.volumes.get(id))
            .filter(|v| v.free_bytes() >= req.size_hint_bytes)
            .filter(|v| !req.exclude_volumes.contains(&v.info.id))
            .collect();
        if fits.is_empty() {
            return Err(DirectoryError::NoWritableVolume(format!(
                "none of {} writable volumes has {} bytes free; more are created as stores allow",
                view.writable.len(),
                req.size_hint_bytes
            )));
        }
        let mut rng = rand::rng();
        let a = fits[rng.random_range(0..fits.len())];
        let b = fits[rng.random_range(0..fits.len())];
        let score =
            |v: &VolumeView| v.free_bytes() as f64 / (1 + v.recent.load(Ordering::Relaxed)) as f64;
        let pick = if score(b) > score(a) { b } else { a };
        pick.recent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("haystack_directory_assign_total").increment(1);
        Ok(AssignResponse {
            id: self.ids.next_id(),
            cookie: ids::new_cookie(),
            volume_id: pick.info.id,
            replicas: pick.replicas.clone(),
            replayed: false,
            request_hash: None,
        })
    }

    /// Assign, honouring `req.idempotency_key` when set: while the key is bound to a committed
    /// photo (a keyed commit bound it less than `idempotency_ttl_ms` ago), the answer is that
    /// photo's id, cookie and volume with `replayed: true`; otherwise a fresh assignment. Assign
    /// never writes under the key and never hands out an id twice: a key is bound at commit
    /// ([`Directory::commit_keyed`]), so racing requests and retried attempts each write under
    /// their own id and only one of them can become the key's photo.
    pub async fn assign_idempotent(
        &self,
        req: &AssignRequest,
    ) -> Result<AssignResponse, DirectoryError> {
        let Some(key) = req.idempotency_key.as_deref() else {
            return self.assign(req);
        };
        let hash = key_hash(key)?;
        if let Some(u) = self.meta.get_upload(hash).await? {
            if u.value.key != key {
                return Err(key_collision());
            }
            if self.key_live(&u.value) {
                match self.settle(&u.value).await? {
                    Binding::Live(p) => return Ok(self.replay(&p, &u.value)),
                    Binding::Deleted(p) => return Ok(self.replay(&p, &u.value)),
                    Binding::Free => {}
                }
            }
        }
        self.assign(req)
    }

    /// Whether a key record is still within the idempotency window.
    fn key_live(&self, u: &UploadKey) -> bool {
        self.clock.now_ms().saturating_sub(u.created_ms) <= self.config.idempotency_ttl_ms
    }

    /// What a key record binds now. A binding whose photo record is missing (its committer
    /// died between the two writes) is completed here from the copy in the key record; one
    /// whose id garbage collection condemned meanwhile binds nothing.
    async fn settle(&self, u: &UploadKey) -> Result<Binding, DirectoryError> {
        for _ in 0..CAS_RETRIES {
            match self.meta.get_photo(u.id).await? {
                Some(p) if p.value.condemned => return Ok(Binding::Free),
                Some(p) if p.value.deleted => return Ok(Binding::Deleted(p.value)),
                Some(p) => return Ok(Binding::Live(p.value)),
                None => {
                    let Some(photo) = &u.photo else {
                        // An assign of an earlier version that was never committed.
                        return Ok(Binding::Free);
                    };
                    if let Cas::Applied { .. } = self.meta.put_photo(photo, Expect::Absent).await? {
                        tracing::info!(photo_id = photo.id, "commit completed from its key record");
                        metrics::counter!("haystack_directory_commit_total").increment(1);
                        return Ok(Binding::Live(photo.clone()));
                    }
                }
            }
        }
        Err(DirectoryError::Conflict(format!(
            "photo {} is contended; retry",
            u.id
        )))
    }

    fn replay(&self, p: &Photo, u: &UploadKey) -> AssignResponse {
        let replicas = self
            .view()
            .volumes
            .get(&p.volume_id)
            .map(|v| v.replicas.clone())
            .unwrap_or_default();
        AssignResponse {
            id: p.id,
            cookie: p.cookie,
            volume_id: p.volume_id,
            replicas,
            replayed: true,
            request_hash: u.request_hash.clone(),
        }
    }

    fn validate_commit(req: &CommitRequest) -> Result<(), DirectoryError> {
        let bad = |m: String| Err(DirectoryError::BadRequest(m));
        if req.id == 0 {
            return bad("id must not be 0".into());
        }
        match req.kind {
            PhotoKind::Photo if req.variants.is_empty() => {
                return bad("a photo needs at least one variant".into())
            }
            PhotoKind::Photo if !req.chunks.is_empty() => {
                return bad("a photo has no chunks".into())
            }
            PhotoKind::Video if req.chunks.is_empty() => {
                return bad("a video needs at least one chunk".into())
            }
            _ => {}
        }
        let mut alts = HashSet::new();
        let mut names = HashSet::new();
        for v in &req.variants {
            if v.name.is_empty() || v.content_type.is_empty() {
                return bad("every variant needs a name and a content_type".into());
            }
            if !names.insert(v.name.as_str()) {
                return bad(format!("variant name {:?} appears twice", v.name));
            }
            if !alts.insert(v.alt) {
                return bad(format!("alternate key {} appears twice", v.alt));
            }
        }
        let mut offset = 0u64;
        for c in &req.chunks {
            if !alts.insert(c.alt) {
                return bad(format!("alternate key {} appears twice", c.alt));
            }
            if c.offset != offset {
                return bad(format!(
                    "chunk {} starts at {} but the previous chunks end at {offset}",
                    c.alt, c.offset
                ));
            }
            offset = offset.saturating_add(c.size_bytes);
        }
        Ok(())
    }

    /// Records a photo whose needles are on every replica. Idempotent: committing the same
    /// photo again answers the stored one; a different photo under the same id is a conflict.
    pub async fn commit(&self, req: CommitRequest) -> Result<PhotoInfo, DirectoryError> {
        self.commit_keyed(KeyedCommit {
            commit: req,
            idempotency_key: None,
            request_hash: None,
        })
        .await
    }

    /// [`Directory::commit`], binding the request's idempotency key (if any) to the photo
    /// first. The key's record is written with a compare-and-set before the photo record, and
    /// carries the photo record, so a key is bound to one photo at a time whichever directory
    /// instance commits, and a commit cut between the two writes is completed by whoever reads
    /// the key next. Under a key already bound (within `idempotency_ttl_ms`) to another photo,
    /// the answer is that photo when both requests carry the same `request_hash` (a racing retry
    /// of the same upload), and a 409 otherwise; nothing is committed either way.
    pub async fn commit_keyed(&self, req: KeyedCommit) -> Result<PhotoInfo, DirectoryError> {
        let KeyedCommit {
            commit: req,
            idempotency_key,
            request_hash,
        } = req;
        Self::validate_commit(&req)?;
        let key = match idempotency_key.as_deref() {
            Some(k) => Some((k, key_hash(k)?)),
            None => None,
        };
        let known = self.view().volumes.contains_key(&req.volume_id)
            || self.meta.get_volume(req.volume_id).await?.is_some();
        if !known {
            return Err(DirectoryError::BadRequest(format!(
                "logical volume {} does not exist",
                req.volume_id
            )));
        }
        let mut photo = Photo {
            id: req.id,
            volume_id: req.volume_id,
            cookie: req.cookie,
            kind: req.kind,
            variants: req.variants,
            chunks: req.chunks,
            created_ms: self.clock.now_ms(),
            deleted: false,
            deleted_ms: None,
            condemned: false,
        };
        if let Some((key, hash)) = key {
            match self.bind_key(key, hash, &photo, request_hash).await? {
                Bound::Ours(p) => photo = p,
                Bound::Other(p) => return Ok(self.photo_info(&p)),
            }
        }
        match self.meta.put_photo(&photo, Expect::Absent).await? {
            Cas::Applied { .. } => {
                metrics::counter!("haystack_directory_commit_total").increment(1);
                Ok(self.photo_info(&photo))
            }
            Cas::Conflict { .. } => {
                let existing = self.meta.get_photo(photo.id).await?.ok_or_else(|| {
                    DirectoryError::Conflict(format!("photo {} is being written", photo.id))
                })?;
                let e = &existing.value;
                if e.condemned {
                    Err(DirectoryError::Conflict(format!(
                        "photo {} was condemned by garbage collection (its needles may be \
                         gone); upload it again",
                        photo.id
                    )))
                } else if !e.deleted && e.same_contents(&photo) {
                    Ok(self.photo_info(e))
                } else {
                    Err(DirectoryError::Conflict(format!(
                        "photo {} is already committed with other contents",
                        photo.id
                    )))
                }
            }
        }
    }

    /// Binds `key` to `photo` (compare-and-set on the key's record). `Ours`: the key is bound
    /// to this photo (now or by an earlier try of this commit; the record's copy is the one to
    /// write). `Other`: it is bound to another live photo committed with the same request hash.
    async fn bind_key(
        &self,
        key: &str,
        hash: u64,
        photo: &Photo,
        request_hash: Option<String>,
    ) -> Result<Bound, DirectoryError> {
        for _ in 0..CAS_RETRIES {
            let existing = self.meta.get_upload(hash).await?;
            let expect = match &existing {
                Some(u) if u.value.key != key => return Err(key_collision()),
                Some(u) if u.value.id == photo.id => match &u.value.photo {
                    Some(p) if p.same_contents(photo) => return Ok(Bound::Ours(p.clone())),
                    Some(_) => {
                        return Err(DirectoryError::Conflict(format!(
                            "photo {} is already bound to its key with other contents",
                            photo.id
                        )))
                    }
                    // A record of an earlier version's assign for this very id.
                    None => Expect::Version(u.version),
                },
                Some(u) if self.key_live(&u.value) => match self.settle(&u.value).await? {
                    Binding::Live(p) => {
                        let same_request = request_hash.is_some()
                            && u.value.request_hash == request_hash
                            && p.kind == photo.kind;
                        if same_request {
                            tracing::info!(
                                photo_id = photo.id,
                                bound = p.id,
                                "commit answered with the photo its key is bound to"
                            );
                            return Ok(Bound::Other(p));
                        }
                        return Err(DirectoryError::Conflict(format!(
                            "the idempotency key is bound to another upload (photo {})",
                            p.id
                        )));
                    }
                    Binding::Deleted(p) => {
                        return Err(DirectoryError::Conflict(format!(
                            "the idempotency key belongs to photo {}, which was deleted",
                            p.id
                        )))
                    }
                    Binding::Free => Expect::Version(u.version),
                },
                Some(u) => Expect::Version(u.version),
                None => Expect::Absent,
            };
            let record = UploadKey {
                key: key.to_string(),
                id: photo.id,
                cookie: photo.cookie,
                volume_id: photo.volume_id,
                kind: photo.kind,
                created_ms: self.clock.now_ms(),
                photo: Some(photo.clone()),
                request_hash: request_hash.clone(),
            };
            if let Cas::Applied { .. } = self.meta.put_upload(hash, &record, expect).await? {
                return Ok(Bound::Ours(photo.clone()));
            }
            // Another commit under the key changed its record: look again.
        }
        Err(DirectoryError::Conflict(
            "idempotency key is contended; retry".into(),
        ))
    }

    /// Garbage collection asks this before deleting needles of `id` that no photo references:
    /// a live photo is answered as it is; an id no photo has gets a tombstone (create-if-absent,
    /// so it cannot race a commit: one of the two wins), after which no commit, retry or replay
    /// of the id can succeed. So gc never deletes the needles of a photo that is, or can later
    /// become, committed, however long ago it looked.
    pub async fn condemn(&self, id: u64) -> Result<CondemnResponse, DirectoryError> {
        if id == 0 {
            return Err(DirectoryError::BadRequest("id must not be 0".into()));
        }
        let answer = |state, photo| CondemnResponse { id, state, photo };
        for _ in 0..CAS_RETRIES {
            match self.meta.get_photo(id).await? {
                Some(p) if p.value.condemned => return Ok(answer(CondemnState::Condemned, None)),
                Some(p) if p.value.deleted => return Ok(answer(CondemnState::Deleted, None)),
                Some(p) => return Ok(answer(CondemnState::Live, Some(self.photo_info(&p.value)))),
                None => {
                    let now = self.clock.now_ms();
                    let tombstone = Photo {
                        id,
                        volume_id: 0,
                        cookie: 0,
                        kind: PhotoKind::Photo,
                        variants: Vec::new(),
                        chunks: Vec::new(),
                        created_ms: now,
                        deleted: true,
                        deleted_ms: Some(now),
                        condemned: true,
                    };
                    if let Cas::Applied { .. } =
                        self.meta.put_photo(&tombstone, Expect::Absent).await?
                    {
                        tracing::info!(photo_id = id, "id condemned by garbage collection");
                        metrics::counter!("haystack_directory_condemned_total").increment(1);
                        return Ok(answer(CondemnState::Condemned, None));
                    }
                }
            }
        }
        Err(DirectoryError::Conflict(format!(
            "photo {id} is contended; retry"
        )))
    }

    fn read_base<'a>(&'a self, replicas: &'a [Replica], view: &'a View) -> &'a str {
        if let Some(cdn) = &self.config.cdn_prefix {
            return cdn;
        }
        if let Some(cache) = &self.config.cache_url {
            return cache;
        }
        replicas
            .iter()
            .find(|r| view.stores.get(&r.store_id).is_some_and(store_up))
            .or_else(|| replicas.first())
            .map_or("", |r| r.url.as_str())
    }

    fn photo_info(&self, p: &Photo) -> PhotoInfo {
        let view = self.view();
        let (replicas, writable) = match view.volumes.get(&p.volume_id) {
            Some(v) => (v.replicas.clone(), v.info.writable),
            None => (Vec::new(), false),
        };
        let base = self.read_base(&replicas, &view);
        PhotoInfo {
            id: p.id,
            cookie: p.cookie,
            volume_id: p.volume_id,
            kind: p.kind,
            variants: p
                .variants
                .iter()
                .map(|v| VariantInfo {
                    name: v.name.clone(),
                    alt: v.alt,
                    size_bytes: v.size_bytes,
                    content_type: v.content_type.clone(),
                    url: needle_url(base, p.volume_id, p.id, v.alt, p.cookie),
                })
                .collect(),
            chunks: p
                .chunks
                .iter()
                .map(|c| ChunkInfo {
                    alt: c.alt,
                    offset: c.offset,
                    size_bytes: c.size_bytes,
                    url: needle_url(base, p.volume_id, p.id, c.alt, p.cookie),
                })
                .collect(),
            created_ms: p.created_ms,
            replicas,
            volume_writable: writable,
        }
    }

    async fn live_photo(&self, id: u64) -> Result<Versioned<Photo>, DirectoryError> {
        match self.meta.get_photo(id).await? {
            Some(p) if !p.value.deleted => Ok(p),
            Some(p) if !p.value.condemned => {
                Err(DirectoryError::Deleted(format!("photo {id} was deleted")))
            }
            _ => Err(DirectoryError::NotFound(format!("photo {id} not found"))),
        }
    }

    /// A committed photo with its replicas and read URLs.
    pub async fn lookup(&self, id: u64) -> Result<PhotoInfo, DirectoryError> {
        let p = self.live_photo(id).await?;
        metrics::counter!("haystack_directory_lookup_total").increment(1);
        Ok(self.photo_info(&p.value))
    }

    /// The read URL of one variant or chunk (by alternate key).
    pub async fn read_url(&self, id: u64, alt: u32) -> Result<String, DirectoryError> {
        let p = self.live_photo(id).await?.value;
        if !p.alts().any(|a| a == alt) {
            return Err(DirectoryError::NotFound(format!(
                "photo {id} has no alternate key {alt}"
            )));
        }
        let view = self.view();
        let replicas = view
            .volumes
            .get(&p.volume_id)
            .map(|v| v.replicas.clone())
            .unwrap_or_default();
        let base = self.read_base(&replicas, &view);
        Ok(needle_url(base, p.volume_id, p.id, alt, p.cookie))
    }

    /// Marks a photo deleted (durably, first), then tells its stores to delete the needles and
    /// the caches to purge them, best effort: a store that misses it leaves an orphan needle for
    /// garbage collection, never a visible photo, since lookups stop at the mark.
    pub async fn delete(&self, id: u64) -> Result<DeleteResponse, DirectoryError> {
        let mut marked = None;
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self
                .meta
                .get_photo(id)
                .await?
                .filter(|p| !p.value.condemned)
            else {
                return Err(DirectoryError::NotFound(format!("photo {id} not found")));
            };
            if cur.value.deleted {
                marked = Some(cur.value);
                break;
            }
            let mut p = cur.value;
            p.deleted = true;
            p.deleted_ms = Some(self.clock.now_ms());
            if let Cas::Applied { .. } = self
                .meta
                .put_photo(&p, Expect::Version(cur.version))
                .await?
            {
                tracing::info!(
                    photo_id = id,
                    volume_id = p.volume_id,
                    "photo marked deleted"
                );
                metrics::counter!("haystack_directory_delete_total").increment(1);
                marked = Some(p);
                break;
            }
        }
        let photo = marked.ok_or_else(|| {
            DirectoryError::Conflict(format!("photo {id} is contended; retry the delete"))
        })?;
        Ok(self.notify_delete(&photo).await)
    }

    async fn notify_delete(&self, p: &Photo) -> DeleteResponse {
        let view = self.view();
        let store_urls: Vec<String> = view
            .volumes
            .get(&p.volume_id)
            .map(|v| v.replicas.iter().map(|r| r.url.clone()).collect())
            .unwrap_or_default();
        let caches = self.config.purge_targets();
        let alts: Vec<u32> = p.alts().collect();
        let done = |what: &'static str, base: &str, r: Result<(), ClientError>| match r {
            Ok(()) => true,
            Err(e) if e.is_not_found() => true,
            Err(e @ ClientError::Api { .. }) => {
                tracing::warn!(%base, what, status = e.status(), "delete notification refused");
                false
            }
            Err(e) => {
                tracing::warn!(%base, what, error = %e, "delete notification failed");
                false
            }
        };
        let addrs: Vec<NeedleAddr> = alts
            .iter()
            .map(|alt| NeedleAddr::new(p.volume_id, p.id, *alt, p.cookie))
            .collect();
        let store_calls = store_urls.iter().flat_map(|base| {
            addrs.iter().map(move |a| async move {
                done("store", base, self.stores.delete_needle(base, a).await)
            })
        });
        let cache_calls = caches.iter().flat_map(|base| {
            addrs
                .iter()
                .map(move |a| async move { done("cache", base, self.caches.purge(base, a).await) })
        });
        let store_results = join_all(store_calls.collect::<Vec<_>>()).await;
        let cache_results = join_all(cache_calls.collect::<Vec<_>>()).await;
        let count = |xs: &[bool], want: bool| xs.iter().filter(|x| **x == want).count() as u32;
        DeleteResponse {
            id: p.id,
            deleted: true,
            store_deletes_ok: count(&store_results, true),
            store_deletes_failed: count(&store_results, false),
            cache_purges_ok: count(&cache_results, true),
            cache_purges_failed: count(&cache_results, false),
        }
    }

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
        }
    }

    /// Closes the metadata store (the embedded file is released when this returns).
    pub async fn close(&self) {
        self.meta.raw().close().await;
    }
}
