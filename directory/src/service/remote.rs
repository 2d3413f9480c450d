//! Asynchronous remote replicas (issue 13): their placement on stores in remote zones, the
//! shipping orders handed to each volume's shipper in heartbeat answers, and promotion of a
//! remote replica to a replica after every local one was lost.

use super::*;

impl Directory {
    /// The volumes store `store_id` ships and to whom: it is the shipper of a replicated
    /// volume with remote replicas when, of the volume's replicas that are up and hold it, it
    /// is the first whose file a remote copy was made from (the same tag), else the first
    /// (one shipper at a time; the next takes over when it goes down). A remote copy agrees
    /// only with the file it was made from: naming another shipper costs a full re-seed, so
    /// a replica that returns after a failover does not take shipping back, and a new
    /// volume's first shipper keeps it when the other replicas report the volume later.
    pub(super) fn ship_orders(&self, store_id: u64) -> Vec<ShipOrder> {
        let view = self.view();
        let Some(me) = view.stores.get(&store_id) else {
            return Vec::new();
        };
        self.read_state(|st| {
            st.volumes
                .values()
                .map(|v| &v.value)
                .filter(|v| v.ec.is_none() && !v.remote.is_empty())
                .filter(|v| shipper(&view, v) == Some(store_id))
                .map(|v| ShipOrder {
                    volume: v.id,
                    source_url: me.url.clone(),
                    targets: v
                        .remote
                        .iter()
                        .filter_map(|rid| view.stores.get(rid))
                        .map(|s| ShipTarget {
                            store_id: s.id,
                            url: s.url.clone(),
                        })
                        .collect(),
                })
                .collect()
        })
    }

    /// Gives every replicated volume its `async_replicas` remote replicas, on up stores in
    /// remote zones (zones not used by the volume's other remote replicas first, then the
    /// most free bytes). Returns how many were placed. The shipper seeds them.
    pub async fn ensure_remote_replicas(&self) -> Result<usize, DirectoryError> {
        if self.config.remote_zones.is_empty() || self.config.async_replicas == 0 {
            return Ok(0);
        }
        let want = self.config.async_replicas;
        let short: Vec<u32> = self.read_state(|st| {
            st.volumes
                .values()
                .map(|v| &v.value)
                .filter(|v| v.ec.is_none() && v.remote.len() < want && !v.replicas.is_empty())
                .map(|v| v.id)
                .collect()
        });
        let mut placed = 0;
        for id in short {
            for _ in 0..CAS_RETRIES {
                let Some(cur) = self.meta.get_volume(id).await? else {
                    break;
                };
                let mut vol = cur.value;
                if vol.ec.is_some() || vol.remote.len() >= want {
                    break;
                }
                let view = self.view();
                let candidates: Vec<Candidate> = view
                    .stores
                    .values()
                    .filter(|s| {
                        s.remote
                            && store_up(s)
                            && s.lifecycle == StoreLifecycle::Active
                            && !vol.replicas.contains(&s.id)
                            && !vol.remote.contains(&s.id)
                            && !vol.has_moved_copy(s.id)
                    })
                    .map(|s| placement_candidate(&view, s))
                    .collect();
                let kept: Vec<Candidate> = vol
                    .remote
                    .iter()
                    .filter_map(|sid| view.stores.get(sid))
                    .map(|s| placement_candidate(&view, s))
                    .collect();
                let Ok(pick) =
                    placement::place_beside(&candidates, &kept, self.config.volume_capacity_bytes)
                else {
                    break;
                };
                vol.remote.push(pick);
                if let Cas::Applied { version } = self
                    .meta
                    .put_volume(&vol, Expect::Version(cur.version))
                    .await?
                {
                    tracing::info!(volume_id = id, remote = ?vol.remote, "asynchronous remote replica placed");
                    metrics::counter!("haystack_directory_remote_replicas_placed_total")
                        .increment(1);
                    self.remember_volume(id, version, vol);
                    placed += 1;
                    break;
                }
            }
        }
        Ok(placed)
    }

    /// Makes remote replica `store_id` of volume `id` a replica: the source of reads and of
    /// repairs once every local replica is lost. It joins the front of the replica list (the
    /// lost replicas stay listed, so re-replication replaces them from it) and stops being
    /// shipped to. What it had not received yet when the local replicas were lost is lost:
    /// the answer's `remote_replicas` said how far behind it was.
    pub async fn promote_remote(
        &self,
        id: u32,
        store_id: u64,
    ) -> Result<LogicalVolumeInfo, DirectoryError> {
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.meta.get_volume(id).await? else {
                return Err(DirectoryError::NotFound(format!(
                    "logical volume {id} not found"
                )));
            };
            let mut vol = cur.value;
            if !vol.remote.contains(&store_id) {
                return Err(DirectoryError::BadRequest(format!(
                    "store {store_id} holds no remote replica of volume {id}"
                )));
            }
            vol.remote.retain(|s| *s != store_id);
            vol.replicas.insert(0, store_id);
            if !vol.reported_by.contains(&store_id) {
                vol.reported_by.push(store_id);
            }
            if let Cas::Applied { version } = self
                .meta
                .put_volume(&vol, Expect::Version(cur.version))
                .await?
            {
                tracing::warn!(volume_id = id, store_id, replicas = ?vol.replicas, "remote replica promoted to a replica");
                metrics::counter!("haystack_directory_remote_promotions_total").increment(1);
                self.remember_volume(id, version, vol);
                let url = self
                    .view()
                    .stores
                    .get(&store_id)
                    .map(|s| s.url.clone())
                    .unwrap_or_default();
                // The store stops treating it as a remote copy (compaction, writes).
                if let Err(e) = self.stores.promote_remote_copy(&url, id).await {
                    tracing::warn!(volume_id = id, store_id, error = %e, "the promoted replica's store did not clear its remote-copy mark; it stays out of compaction until it does");
                }
                return self.volume(id);
            }
        }
        Err(DirectoryError::Conflict(format!(
            "volume {id} is contended; retry the promotion"
        )))
    }
}

/// The shipper of volume `v` (see [`Directory::ship_orders`]).
fn shipper(view: &View, v: &LogicalVolume) -> Option<u64> {
    let held = |sid: &u64| {
        view.stores
            .get(sid)
            .and_then(|s| s.volumes.iter().find(|r| r.id == v.id))
    };
    // The tags remote copies last reported, whether or not their stores are up now.
    let copied_from: Vec<u32> = v
        .remote
        .iter()
        .filter_map(|rid| held(rid).and_then(|r| r.tag))
        .collect();
    let candidates: Vec<(u64, Option<u32>)> = v
        .replicas
        .iter()
        .filter(|sid| view.stores.get(sid).is_some_and(store_up))
        .filter_map(|sid| held(sid).map(|r| (*sid, r.tag)))
        .collect();
    candidates
        .iter()
        .find(|(_, tag)| tag.is_some_and(|t| copied_from.contains(&t)))
        .or(candidates.first())
        .map(|(sid, _)| *sid)
}
