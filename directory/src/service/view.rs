//! The instance's snapshot of the volume and store tables and what is derived from it: each
//! volume's effective state, replicas and free space, the writable set assigns draw from.

use super::*;

#[derive(Default)]
pub(super) struct State {
    pub(super) volumes: BTreeMap<u32, Versioned<LogicalVolume>>,
    pub(super) stores: BTreeMap<u64, Versioned<StoreMachine>>,
}

/// One volume as seen now.
pub(super) struct VolumeView {
    pub(super) info: LogicalVolumeInfo,
    pub(super) replicas: Vec<Replica>,
    /// Its replicas are placed but not all created yet.
    pub(super) pending: bool,
    /// Assigns since the counter last decayed (the "recent writes" of balancing).
    pub(super) recent: Arc<AtomicU64>,
}

impl VolumeView {
    pub(super) fn free_bytes(&self) -> u64 {
        self.info
            .capacity_bytes
            .saturating_sub(self.info.used_bytes)
    }
}

/// A snapshot built from [`State`] after every change.
#[derive(Default)]
pub(super) struct View {
    pub(super) volumes: BTreeMap<u32, VolumeView>,
    pub(super) stores: BTreeMap<u64, StoreMachine>,
    pub(super) writable: Vec<u32>,
}

pub(super) struct Lease {
    pub(super) node: u16,
    pub(super) holder: u64,
    pub(super) version: u64,
    pub(super) expires_ms: u64,
}

pub(super) fn store_up(s: &StoreMachine) -> bool {
    s.state == StoreState::Up && s.healthy
}

pub(super) fn needle_url(base: &str, volume: u32, id: u64, alt: u32, cookie: u64) -> String {
    haystack_client::urls::needle(base, &NeedleAddr::new(volume, id, alt, cookie))
}

pub(super) fn build_view(state: &State, config: &DirectoryConfig, old: &View) -> View {
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
                    remote_replicas: remote_statuses(state, vol),
                    reason,
                    ec: vol.ec.clone(),
                    moved_away: vol.moved_away.iter().map(|m| m.store_id).collect(),
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

/// The remote replicas of `vol` and their lag as the store shipping to them reported it
/// (the most recent report among the volume's replicas).
fn remote_statuses(state: &State, vol: &LogicalVolume) -> Vec<RemoteReplicaStatus> {
    vol.remote
        .iter()
        .map(|rid| {
            let store = state.stores.get(rid).map(|s| &s.value);
            let report = vol
                .replicas
                .iter()
                .filter_map(|sid| state.stores.get(sid).map(|s| &s.value))
                .filter(|s| store_up(s))
                .flat_map(|s| {
                    s.shipping
                        .iter()
                        .filter(|x| x.volume == vol.id && x.store_id == *rid)
                })
                .min_by_key(|x| x.lag_bytes);
            RemoteReplicaStatus {
                store_id: *rid,
                url: store.map(|s| s.url.clone()).unwrap_or_default(),
                up: store.is_some_and(store_up),
                lag_bytes: report.map(|r| r.lag_bytes),
                lag_secs: report.map(|r| r.lag_secs),
                error: report.and_then(|r| r.error.clone()),
            }
        })
        .collect()
}

pub(super) fn store_info(s: &StoreMachine, replicas: u32) -> StoreInfo {
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
        lifecycle: s.lifecycle,
        replicas,
    }
}

/// Store `s` as placement sees it: its zone, rack and free bytes, and how many logical
/// volumes of `view` have a replica (or shard) on it.
pub(super) fn placement_candidate(view: &View, s: &StoreMachine) -> Candidate {
    Candidate {
        store_id: s.id,
        zone: s.zone.clone(),
        rack: s.rack.clone(),
        free_bytes: s.free_bytes,
        volumes: view
            .volumes
            .values()
            .filter(|o| o.info.replicas.iter().any(|r| r.store_id == s.id))
            .count() as u32,
    }
}

/// Whether new replicas may be placed on the store: up, healthy and active (not draining or
/// retired).
pub(super) fn takes_replicas(s: &StoreMachine) -> bool {
    store_up(s) && s.lifecycle == StoreLifecycle::Active && !s.remote
}

pub(super) fn check_url(url: &str) -> Result<(), DirectoryError> {
    if (url.starts_with("http://") || url.starts_with("https://")) && url.len() > 8 {
        Ok(())
    } else {
        Err(DirectoryError::BadRequest(format!(
            "public_url {url:?} is not an http(s) URL"
        )))
    }
}
