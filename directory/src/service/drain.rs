//! Draining and removing store machines (issue 16): `draining` stores take no new replicas
//! and the drain worker moves every replica they hold onto other machines, one volume at a
//! time, with the re-replication machinery (the target store imports the volume from a
//! healthy replica, the copy's needle count is checked, then the directory's replica is
//! replaced); an emptied store turns `retired`. A store is removed from the records only when
//! it holds no replica and is no longer heartbeating.
//!
//! A volume being moved is read-only for the copy (recorded state, reason "moving a replica
//! off draining store N"), as in `haystack volume repair`: a write after the copy started
//! would be missing from it. A copy whose needle count differs from its source is not used;
//! the move is tried again in the next round. An upload assigned before the volume turned
//! read-only can still land on the source after the count was compared: once the replica is
//! replaced, the replicas are compared by digests (anti-entropy, `repairs.rs`) and any
//! difference is queued for repair.

use super::volumes::copy_sources;
use super::*;

impl Directory {
    /// Every store with the number of logical volumes that have a replica or shard on it.
    pub(super) fn replica_counts(view: &View) -> BTreeMap<u64, u32> {
        let mut n: BTreeMap<u64, u32> = BTreeMap::new();
        for v in view.volumes.values() {
            let mut on: HashSet<u64> = v.info.replicas.iter().map(|r| r.store_id).collect();
            if let Some(ec) = &v.info.ec {
                on.extend(ec.retired.iter().copied());
            }
            for s in on {
                *n.entry(s).or_default() += 1;
            }
        }
        n
    }

    /// Sets a store's lifecycle (`POST /v1/stores/{id}/lifecycle`). `retired` is refused while
    /// the store holds replicas (drain it: `draining`).
    pub async fn set_store_lifecycle(
        &self,
        id: u64,
        lifecycle: StoreLifecycle,
    ) -> Result<StoreInfo, DirectoryError> {
        let held = Self::replica_counts(&self.view())
            .get(&id)
            .copied()
            .unwrap_or(0);
        if lifecycle == StoreLifecycle::Retired && held > 0 {
            return Err(DirectoryError::Conflict(format!(
                "store {id} holds replicas of {held} volumes: drain it (lifecycle draining), \
                 it turns retired once empty"
            )));
        }
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.meta.get_store(id).await? else {
                return Err(DirectoryError::NotFound(format!("store {id} not found")));
            };
            let mut machine = cur.value;
            if machine.lifecycle == lifecycle {
                return Ok(store_info(&machine, held));
            }
            machine.lifecycle = lifecycle;
            if let Cas::Applied { version } = self
                .meta
                .put_store(&machine, Expect::Version(cur.version))
                .await?
            {
                tracing::warn!(
                    store_id = id,
                    ?lifecycle,
                    replicas = held,
                    "store lifecycle set"
                );
                let info = store_info(&machine, held);
                self.remember_store(Versioned {
                    version,
                    value: machine,
                });
                return Ok(info);
            }
        }
        Err(DirectoryError::Conflict(
            "store record is contended; retry".into(),
        ))
    }

    /// Removes a store from the records (`DELETE /v1/stores/{id}`): refused while any volume
    /// has a replica or shard on it, and while it still heartbeats (stop it first, or it
    /// registers again).
    pub async fn remove_store(&self, id: u64) -> Result<(), DirectoryError> {
        let held = Self::replica_counts(&self.view())
            .get(&id)
            .copied()
            .unwrap_or(0);
        if held > 0 {
            return Err(DirectoryError::Conflict(format!(
                "store {id} holds replicas of {held} volumes: drain it first \
                 (`haystack store drain {id}`)"
            )));
        }
        let Some(cur) = self.meta.get_store(id).await? else {
            return Err(DirectoryError::NotFound(format!("store {id} not found")));
        };
        if cur.value.state == StoreState::Up {
            return Err(DirectoryError::Conflict(format!(
                "store {id} is still up (heartbeating): stop it first, or it registers again"
            )));
        }
        match self.meta.delete_store(id, cur.version).await? {
            Cas::Applied { .. } => {
                tracing::warn!(store_id = id, url = %cur.value.url, "store removed");
                self.with_state(|st| {
                    st.stores.remove(&id);
                });
                Ok(())
            }
            Cas::Conflict { .. } => Err(DirectoryError::Conflict(
                "store record changed meanwhile; retry".into(),
            )),
        }
    }

    /// One step of the drain worker: moves one replica off a draining store, or retires a
    /// draining store that holds nothing. Returns the volume moved.
    pub async fn drain_once(&self) -> Result<Option<u32>, DirectoryError> {
        let view = self.view();
        let draining: Vec<u64> = view
            .stores
            .values()
            .filter(|s| s.lifecycle == StoreLifecycle::Draining)
            .map(|s| s.id)
            .collect();
        if draining.is_empty() {
            return Ok(None);
        }
        let counts = Self::replica_counts(&view);
        for sid in draining {
            if counts.get(&sid).copied().unwrap_or(0) == 0 {
                self.set_store_lifecycle(sid, StoreLifecycle::Retired)
                    .await?;
                tracing::warn!(store_id = sid, "drained store holds nothing: retired");
                continue;
            }
            for v in view.volumes.values() {
                if !v.info.replicas.iter().any(|r| r.store_id == sid) {
                    continue;
                }
                // An erasure-coded volume's shard is rebuilt from the others onto a store that
                // takes replicas and holds no shard of it; the record then names that store,
                // and the drained store's file is dropped once its heartbeats show it
                // (`drop_ec`).
                if v.info.ec.is_some() {
                    let Some(shard) = v.info.replicas.iter().position(|r| r.store_id == sid) else {
                        continue;
                    };
                    let req = haystack_proto::directory::EcRebuildRequest {
                        shard: shard as u16,
                        to: None,
                    };
                    match self.rebuild_shard(v.info.id, req).await {
                        Ok(_) => {
                            tracing::info!(
                                volume_id = v.info.id,
                                shard,
                                store_id = sid,
                                "shard moved off a draining store"
                            );
                            return Ok(Some(v.info.id));
                        }
                        Err(e) => {
                            tracing::warn!(volume_id = v.info.id, shard, store_id = sid, error = %e, "moving a shard off a draining store failed; retried later")
                        }
                    }
                    continue;
                }
                match self.move_replica(&view, v.info.id, sid, None).await {
                    Ok(true) => return Ok(Some(v.info.id)),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(volume_id = v.info.id, store_id = sid, error = %e, "moving a replica off a draining store failed; retried later")
                    }
                }
            }
        }
        Ok(None)
    }

    /// Copies volume `id` onto a store that takes replicas (placement rules kept against the
    /// replicas that stay; `only_to`: that store or none) and replaces the replica on `from`
    /// with it. `Ok(false)`: nothing could be done now (no healthy source, no target).
    pub(super) async fn move_replica(
        &self,
        view: &View,
        id: u32,
        from: u64,
        only_to: Option<u64>,
    ) -> Result<bool, DirectoryError> {
        let Some(v) = view.volumes.get(&id) else {
            return Ok(false);
        };
        let as_candidate = |s: &StoreMachine| placement_candidate(view, s);
        let kept: Vec<Candidate> = v
            .info
            .replicas
            .iter()
            .filter(|r| r.store_id != from)
            .filter_map(|r| view.stores.get(&r.store_id))
            .map(as_candidate)
            .collect();
        let candidates: Vec<Candidate> = view
            .stores
            .values()
            .filter(|s| takes_replicas(s))
            .filter(|s| only_to.is_none_or(|t| t == s.id))
            .filter(|s| !v.info.replicas.iter().any(|r| r.store_id == s.id))
            .filter(|s| !v.info.moved_away.contains(&s.id))
            .map(as_candidate)
            .collect();
        // The sources, tried in turn: the replica moved away first while it serves (it holds
        // every needle it acknowledged, and a write acknowledged under a quorum or one
        // write-ack may be on it alone, its copies to the others still queued: copying from
        // another replica and dropping it would lose that photo; a delete it missed is found
        // by the comparison after the move), then the other healthy replicas.
        let mut sources: Vec<&ReplicaStatus> = copy_sources(view, v);
        sources.sort_by_key(|r| r.store_id != from);
        if sources.is_empty() {
            tracing::warn!(volume_id = id, "no healthy replica to move from yet");
            return Ok(false);
        }
        let sources: Vec<&str> = sources.iter().map(|r| r.url.as_str()).collect();
        let need = v.info.used_bytes.max(1 << 20);
        let to = match self.config.placement {
            Policy::Chained => placement::place_chained_beside(&candidates, &kept, from, need),
            Policy::Spread => placement::place_beside(&candidates, &kept, need),
        };
        let Ok(to) = to else {
            tracing::warn!(
                volume_id = id,
                store_id = from,
                "no store can take the replica being moved"
            );
            return Ok(false);
        };
        let Some(target) = view.stores.get(&to) else {
            return Ok(false);
        };
        let Some(cur) = self.meta.get_volume(id).await? else {
            return Ok(false);
        };
        if cur.value.ec.is_some() {
            // Encoded since the view was built (a rebalance plan racing an encode): its
            // replicas are shard slots now, moved by a shard rebuild, never by a copy.
            tracing::info!(volume_id = id, "volume erasure-coded meanwhile: not moved");
            return Ok(false);
        }
        let was_writable = cur.value.state == VolumeState::Writable;
        if was_writable {
            self.set_volume_state(
                id,
                VolumeState::ReadOnly,
                Some(format!("moving a replica off store {from}")),
            )
            .await?;
        }
        tracing::warn!(volume_id = id, from_store = from, sources = ?sources, to = %target.url, "moving a replica");
        let moved = self.copy_and_replace(id, from, &sources, target).await;
        if was_writable {
            if let Err(e) = self.set_volume_state(id, VolumeState::Writable, None).await {
                tracing::error!(volume_id = id, error = %e, "volume stays read-only after a move");
            }
        }
        moved.map(|()| true)
    }

    /// Copies volume `id` onto `target` from the first of `sources` whose copy succeeds, checks
    /// the copy's needle count against that source's, and replaces the replica on `from`.
    async fn copy_and_replace(
        &self,
        id: u32,
        from: u64,
        sources: &[&str],
        target: &StoreMachine,
    ) -> Result<(), DirectoryError> {
        let stores = super::erasure::bulk_client(&self.config.security)?;
        let mut failed = Vec::new();
        let mut copied = None;
        for &source in sources {
            match stores.import(&target.url, id, source).await {
                Ok(c) => {
                    copied = Some((c, source));
                    break;
                }
                Err(e) => {
                    tracing::warn!(volume_id = id, %source, to = %target.url, error = %e, "copy failed; trying the next replica");
                    failed.push(format!("from {source}: {e}"));
                }
            }
        }
        let Some((copied, source)) = copied else {
            return Err(DirectoryError::Unavailable(format!(
                "copy onto {}: {}",
                target.url,
                failed.join("; ")
            )));
        };
        let checked = match stores.volume(source, id).await {
            Err(e) => Err(DirectoryError::Unavailable(format!("source {source}: {e}"))),
            Ok(src) if copied.needles != src.needles => Err(DirectoryError::Conflict(format!(
                "the copy on {} has {} needles, the source {}: not used",
                target.url, copied.needles, src.needles
            ))),
            Ok(_) => Ok(()),
        };
        // replace_replica compares the replicas once the record switched (a write or a
        // delete that reached the source after the copy was taken is queued for repair).
        let replaced = match checked {
            Ok(()) => self.replace_replica(id, from, target.id).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = replaced {
            self.retire_unused_copy(id, target.id).await;
            return Err(e);
        }
        metrics::counter!("haystack_directory_drain_moves_total").increment(1);
        Ok(())
    }

    /// A copy imported onto `store` that no record names (its move failed after the import:
    /// the copy did not match its source, or the replace was refused): listed in the volume's
    /// `moved_away` (`replaced_by` 0), so that the repair worker drops it once nothing needs
    /// it, and the store takes no replica of the volume until then. Left alone when the records
    /// name the store meanwhile (another instance's move switched it in: a real replica now).
    /// A one-off DELETE here could hit such a replica; the list is read and written under a
    /// version check instead. Best effort: a failure is logged.
    pub(super) async fn retire_unused_copy(&self, id: u32, store: u64) {
        for _ in 0..CAS_RETRIES {
            let cur = match self.meta.get_volume(id).await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(volume_id = id, store_id = store, error = %e, "an unused copy could not be listed for dropping; it stays on the store");
                    return;
                }
            };
            let v = &cur.value;
            if v.replicas.contains(&store) || v.remote.contains(&store) || v.has_moved_copy(store) {
                return;
            }
            let mut vol = cur.value.clone();
            vol.moved_away.push(crate::model::MovedCopy {
                store_id: store,
                moved_ms: self.clock.now_ms(),
                replaced_by: 0,
            });
            match self
                .meta
                .put_volume(&vol, Expect::Version(cur.version))
                .await
            {
                Ok(Cas::Applied { version }) => {
                    tracing::warn!(
                        volume_id = id,
                        store_id = store,
                        "copy not used; listed to be dropped from its store"
                    );
                    self.remember_volume(id, version, vol);
                    return;
                }
                Ok(Cas::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(volume_id = id, store_id = store, error = %e, "an unused copy could not be listed for dropping; it stays on the store");
                    return;
                }
            }
        }
    }
}
