//! Logical volumes: the list, creation and placement of replicas, recorded state (seal),
//! replica replacement, re-replication of the volumes of stores down too long, capacity, and
//! the maintenance round.

use super::*;

impl Directory {
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

    /// Creates a logical volume on R machines chosen by [`placement::place`] (or
    /// [`placement::place_chained`] under `placement = "chained"`); the stores create their
    /// replicas when their next heartbeat answer tells them to.
    pub async fn create_volume(&self) -> Result<LogicalVolumeInfo, DirectoryError> {
        for _ in 0..CAS_RETRIES {
            let view = self.view();
            // Bytes promised to volumes a store has not created yet.
            let candidates: Vec<Candidate> = view
                .stores
                .values()
                .filter(|s| takes_replicas(s))
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
            let (r, need) = (
                self.config.replication_factor,
                self.config.volume_capacity_bytes,
            );
            let replicas = match self.config.placement {
                Policy::Spread => placement::place(&candidates, r, need),
                Policy::Chained => {
                    // The newest replicated volume's first replica: the chain goes on after it.
                    let previous = view
                        .volumes
                        .values()
                        .rev()
                        .find(|v| v.info.ec.is_none())
                        .and_then(|v| v.info.replicas.first())
                        .map(|r| r.store_id);
                    placement::place_chained(&candidates, placement::chain_start(previous), r, need)
                }
            }
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
                remote: Vec::new(),
                ec: None,
                sealed_ms: None,
                moved_away: Vec::new(),
            };
            match self.meta.put_volume(&vol, Expect::Absent).await? {
                Cas::Applied { version } => {
                    tracing::info!(volume_id = id, replicas = ?vol.replicas, "logical volume created");
                    self.push_volume_creation(id, &vol.replicas, &view);
                    metrics::counter!("haystack_directory_volumes_created_total").increment(1);
                    self.remember_volume(id, version, vol);
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
            if state == VolumeState::Sealed && vol.sealed_ms.is_none() {
                vol.sealed_ms = Some(self.clock.now_ms());
            }
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
                self.remember_volume(id, version, vol);
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
            // An erasure-coded volume's replicas are its shard slots: `to` holds no shard, and
            // the old store's files would be dropped as no longer named (`drop_ec`), the real
            // shard with them. A shard moves by a rebuild (`POST /v1/volumes/{id}/ec/rebuild`).
            if cur.value.ec.is_some() {
                return Err(DirectoryError::BadRequest(format!(
                    "logical volume {id} is erasure-coded: a shard is moved by a shard \
                     rebuild (`POST /v1/volumes/{id}/ec/rebuild`), not by a replace"
                )));
            }
            let has_from = cur.value.replicas.contains(&from);
            let has_to = cur.value.replicas.contains(&to);
            match (has_from, has_to) {
                (false, true) => {
                    // Already replaced: a retry after an answer that was lost (the record
                    // switched, then the caller got an error). The comparison that attempt
                    // may not have reached is run here.
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(volume_id = id, error = %e, "refreshing the view failed; comparing from it as it is");
                    }
                    self.compare_moved(id).await;
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
            // Its old copy may still be dropped by a pass that read the record before: only
            // once it is gone (and `to` left the list) may `to` hold the volume again.
            if cur.value.has_moved_copy(to) {
                return Err(DirectoryError::Conflict(format!(
                    "store {to} still holds the copy of volume {id} that a move replaced; it is \
                     dropped within moved_copy_keep_ms once no repair needs it: choose another \
                     store or retry then"
                )));
            }
            let mut vol = cur.value;
            for r in vol.replicas.iter_mut() {
                if *r == from {
                    *r = to;
                }
            }
            vol.reported_by.retain(|r| *r != from);
            // The old copy stays until the repair worker drops it (`drop_moved_copies`).
            vol.moved_away.retain(|m| m.store_id != from);
            vol.moved_away.push(crate::model::MovedCopy {
                store_id: from,
                moved_ms: self.clock.now_ms(),
                replaced_by: to,
            });
            if let Cas::Applied { version } = self
                .meta
                .put_volume(&vol, Expect::Version(cur.version))
                .await?
            {
                tracing::info!(volume_id = id, from, to, "replica moved");
                // The move is done whatever follows: a failed refresh (it only learns what
                // other instances wrote) must not skip the creation push and the comparison.
                if let Err(e) = self.refresh().await {
                    tracing::warn!(volume_id = id, error = %e, "refreshing the view after a replica move failed; the next round does");
                }
                self.remember_volume(id, version, vol);
                self.push_volume_creation(id, &[to], &self.view());
                self.compare_moved(id).await;
                return self.volume(id);
            }
        }
        Err(DirectoryError::Conflict(format!(
            "logical volume {id} is contended; retry"
        )))
    }

    /// After a replica moved (re-replication, drain, `haystack volume repair`): the copy was
    /// taken while the volume was read-only, which stops writes, not deletes, and a delete
    /// that reached the source after the copy passed its needle never reached the new replica
    /// (it was not one yet); a write assigned before the volume turned read-only may also
    /// have landed after the copy. The replicas are compared now, as anti-entropy does, and
    /// every difference the photo records explain is queued for repair (a deleted photo's
    /// needle deleted, a live one's copied), instead of waiting for the next anti-entropy
    /// pass. Best effort: a failure is logged and left to that pass.
    async fn compare_moved(&self, id: u32) {
        // Every replica's store must be in the view (the new one may have registered
        // through another instance since the last refresh), or the new replica would be
        // left out of the comparison.
        let known = |d: &Self| {
            d.view()
                .volumes
                .get(&id)
                .filter(|v| v.replicas.len() == v.info.replicas.len())
                .map(|v| v.replicas.clone())
        };
        let mut replicas = known(self);
        if replicas.is_none() && self.refresh().await.is_ok() {
            replicas = known(self);
        }
        let Some(r) = replicas else {
            tracing::warn!(
                volume_id = id,
                "a replica's store is not known here; the moved replica is left to anti-entropy"
            );
            return;
        };
        match self.compare_volume(id, &r).await {
            Ok(Some(d)) => {
                tracing::warn!(
                    volume_id = id,
                    queued = d.queued,
                    "moved replica differed; repairs queued"
                )
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(volume_id = id, error = %e, "comparing the moved replica failed; left to anti-entropy")
            }
        }
    }

    /// Automatic re-replication, one volume per call: the first volume with a replica on a
    /// store down for longer than `rereplicate_after_ms` gets a new replica on an up store
    /// that does not hold it (placement's rules), copied there by the store itself from a
    /// healthy replica (`POST {target}/v1/volumes/{id}/import`), then put in place of the dead
    /// one. The volume is read-only meanwhile (a replica is down), so the copy misses no
    /// write; deletes made during the copy are found by the comparison `replace_replica`
    /// runs. Returns the volume it repaired. Run from its own loop: a copy takes as long as
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
        // Erasure-coded volumes lose shards, not replicas: those are rebuilt from k others.
        if let Some(id) = self.rebuild_lost_shard_once().await? {
            return Ok(Some(id));
        }
        for v in view.volumes.values() {
            if v.info.ec.is_some() {
                continue;
            }
            let Some(lost) = v.info.replicas.iter().find(|r| dead.contains(&r.store_id)) else {
                continue;
            };
            let sources: Vec<&ReplicaStatus> = copy_sources(&view, v)
                .into_iter()
                .filter(|r| !dead.contains(&r.store_id))
                .collect();
            if sources.is_empty() {
                tracing::error!(
                    volume_id = v.info.id,
                    "no healthy replica left to re-replicate from"
                );
                continue;
            }
            let candidates: Vec<Candidate> = view
                .stores
                .values()
                .filter(|s| takes_replicas(s))
                .filter(|s| !v.info.replicas.iter().any(|r| r.store_id == s.id))
                .filter(|s| !v.info.moved_away.contains(&s.id))
                .map(|s| placement_candidate(&view, s))
                .collect();
            let need = v.info.used_bytes.max(1 << 20);
            let picked = match self.config.placement {
                Policy::Spread => placement::place(&candidates, 1, need)
                    .map(|p| p.first().copied().unwrap_or_default()),
                Policy::Chained => {
                    // Next to the lost replica on the ring: the chain without the dead store.
                    let kept: Vec<Candidate> = v
                        .info
                        .replicas
                        .iter()
                        .filter(|r| r.store_id != lost.store_id)
                        .filter_map(|r| view.stores.get(&r.store_id))
                        .map(|s| placement_candidate(&view, s))
                        .collect();
                    placement::place_chained_beside(&candidates, &kept, lost.store_id, need)
                }
            };
            let Ok(picked) = picked else {
                tracing::warn!(volume_id = v.info.id, "no store can take a new replica yet");
                continue;
            };
            let Some(target) = view.stores.get(&picked) else {
                continue;
            };
            let id = v.info.id;
            let copy = super::erasure::bulk_client(&self.config.security)?;
            // Each healthy replica in turn until one copy is made: a source whose export
            // fails (a disk error since its last heartbeat) must not stall the volume.
            let mut copied = false;
            for source in &sources {
                tracing::warn!(
                    volume_id = id,
                    lost_store = lost.store_id,
                    from = %source.url,
                    to = %target.url,
                    "re-replicating a volume whose store stayed down"
                );
                match copy.import(&target.url, id, &source.url).await {
                    Ok(_) => {
                        copied = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(volume_id = id, from = %source.url, to = %target.url, error = %e, "re-replication copy failed; trying the next replica")
                    }
                }
            }
            if !copied {
                continue;
            }
            if let Err(e) = self.replace_replica(id, lost.store_id, target.id).await {
                // The copy no record names leaves the target (see `retire_unused_copy`).
                self.retire_unused_copy(id, target.id).await;
                return Err(e);
            }
            metrics::counter!("haystack_directory_rereplications_total").increment(1);
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// Asks the replicas' stores to create the volume now (`POST /v1/volumes/{id}`), best
    /// effort and in the background; a store that misses it is told again in every heartbeat
    /// answer until it reports the volume.
    pub(super) fn push_volume_creation(&self, id: u32, replicas: &[u64], view: &View) {
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

    /// One round of the maintenance loop.
    pub async fn maintain(&self) -> Result<(), DirectoryError> {
        // First: a round that fails further on must not let the node-id lease lapse (assigns
        // would be refused until a round got through).
        self.renew_lease().await?;
        self.refresh().await?;
        self.sweep_liveness().await?;
        // Volume creation and remote replicas are the coordinator's (one instance of several).
        if self.hold_coordinator().await? {
            self.sample_write_rate();
            if let Err(e) = self.ensure_capacity_all().await {
                match e {
                    DirectoryError::NoWritableVolume(_) => {
                        tracing::debug!(error = %e, "no room for a new volume yet")
                    }
                    e => return Err(e),
                }
            }
            if let Err(e) = self.ensure_remote_replicas().await {
                tracing::warn!(error = %e, "placing asynchronous remote replicas failed; next round");
            }
        }
        for v in self.view().volumes.values() {
            let r = v.recent.load(Ordering::Relaxed);
            v.recent.store(r / 2, Ordering::Relaxed);
        }
        Ok(())
    }

    // ---- photos --------------------------------------------------------------------------
}

/// The replicas of `v` a copy of the volume can be taken from, in the order to try them: on
/// a store that is up and healthy, and reported by it in a state that serves reads (a volume
/// its store reports `unavailable` is quarantined: it serves nothing, its export neither).
pub(super) fn copy_sources<'a>(view: &View, v: &'a VolumeView) -> Vec<&'a ReplicaStatus> {
    v.info
        .replicas
        .iter()
        .filter(|r| r.up && r.reported)
        .filter(|r| {
            view.stores.get(&r.store_id).is_some_and(|s| {
                s.volumes
                    .iter()
                    .any(|x| x.id == v.info.id && x.state != VolumeState::Unavailable)
            })
        })
        .collect()
}
