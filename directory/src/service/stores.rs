//! Store machines: registration, heartbeats (what they report, which volumes they are asked
//! to create), liveness sweeps, the store list.

use super::*;

impl Directory {
    /// A store's registration: a new id on first contact, or an update of a known one.
    pub async fn register(
        &self,
        req: StoreRegistration,
    ) -> Result<StoreRegistered, DirectoryError> {
        check_url(&req.public_url)?;
        let now = self.clock.now_ms();
        for _ in 0..CAS_RETRIES {
            let id = match req.store_id {
                Some(id) => id,
                None => self.next_id()?,
            };
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
                        lifecycle: StoreLifecycle::Active,
                        remote: false,
                        shipping: Vec::new(),
                    },
                ),
            };
            machine.url = req.public_url.trim_end_matches('/').to_string();
            machine.zone = req.zone.clone();
            machine.rack = req.rack.clone();
            machine.remote = self.config.is_remote_zone(req.zone.as_deref());
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
            machine.shipping = hb.shipping.clone();
            machine.remote = self.config.is_remote_zone(machine.zone.as_deref());
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
                let mut reply = self.volumes_to_create(store_id, &hb);
                reply.drop_ec = self.leftover_shards(store_id, &hb).await?;
                return Ok(reply);
            }
        }
        Err(DirectoryError::Conflict(
            "store record is contended; retry".into(),
        ))
    }

    /// Records, once per replica, that a store has reported a volume it holds.
    pub(super) async fn note_reported(
        &self,
        store_id: u64,
        hb: &Heartbeat,
    ) -> Result<(), DirectoryError> {
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
                    self.remember_volume(id, version, vol);
                    break;
                }
            }
        }
        Ok(())
    }

    pub(super) fn volumes_to_create(&self, store_id: u64, hb: &Heartbeat) -> HeartbeatReply {
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
        HeartbeatReply {
            create_volumes,
            ship: self.ship_orders(store_id),
            drop_ec: Vec::new(),
        }
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
        let view = self.view();
        let counts = Self::replica_counts(&view);
        view.stores
            .values()
            .map(|s| store_info(s, counts.get(&s.id).copied().unwrap_or(0)))
            .collect()
    }

    // ---- volumes -------------------------------------------------------------------------
}
