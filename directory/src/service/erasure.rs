//! Erasure-coded volumes (issue 14, f4): encoding a sealed volume onto k + m stores with an
//! atomic switch of its record, carrying over deletes and dropping the replicas afterwards, and
//! rebuilding a lost shard onto another store (by an operator, or automatically for a store down
//! longer than `rereplicate_after_ms`), and the automatic encode policy (`encode_after_secs`:
//! sealed volumes old enough are encoded by a background worker). The stores do the byte work (`/v1/ec/...`); this module
//! only orders it. The order and what a crash at each step leaves: docs/FORMAT.md, "Encode
//! order of operations". Leftovers (an abandoned encode's shards on stores its rerun did not
//! pick, a build's staging) are found from the stores' heartbeats and dropped by them
//! ([`Directory::leftover_shards`]).

use std::collections::HashMap;

use haystack_proto::directory::{EcRebuildRequest, EcScheme, EncodeReport, EncodeRequest};

use super::*;

/// How long the automatic encode policy leaves a volume alone after it worked on it (a
/// failed encode, or retired replicas still to drop), ms.
const ENCODE_RETRY_MS: u64 = 60_000;

/// Needles per gc request when deletes are carried over to the shards.
const CARRY_CHUNK: usize = 10_000;

/// The automatic encode policy, apart from any I/O (so it is tested alone): the volumes an
/// encode round should work on, oldest first. A sealed volume still on replicas is due once
/// it was sealed at least `after_ms` ago (counted from its creation when the seal time was
/// not recorded); an erasure-coded volume is due while retired replicas are left to drop (a
/// crash after the switch: encoding it again finishes the drops). A volume in `not_before` is
/// left alone until that time.
pub(crate) fn due_for_encode<'a>(
    volumes: impl IntoIterator<Item = &'a LogicalVolume>,
    now_ms: u64,
    after_ms: u64,
    not_before: &HashMap<u32, u64>,
) -> Vec<u32> {
    let mut due: Vec<(u64, u32)> = volumes
        .into_iter()
        .filter(|v| not_before.get(&v.id).is_none_or(|t| now_ms >= *t))
        .filter_map(|v| match &v.ec {
            Some(ec) => (!ec.retired.is_empty()).then_some((0, v.id)),
            None if v.state == VolumeState::Sealed => {
                let since = v.sealed_ms.unwrap_or(v.created_ms);
                (now_ms.saturating_sub(since) >= after_ms).then_some((since, v.id))
            }
            None => None,
        })
        .collect();
    due.sort_unstable();
    due.into_iter().map(|(_, id)| id).collect()
}

/// Marks a volume's shard rebuild in flight on this instance until dropped: its target holds
/// the new shard before the record names it, so it must not be taken for a leftover.
struct Busy<'a> {
    set: &'a Mutex<HashSet<u32>>,
    id: u32,
}

impl<'a> Busy<'a> {
    fn new(set: &'a Mutex<HashSet<u32>>, id: u32) -> Self {
        haystack_service::sync::lock(set).insert(id);
        Busy { set, id }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        haystack_service::sync::lock(self.set).remove(&self.id);
    }
}

/// The store's build report, as far as the directory reads it.
#[derive(serde::Deserialize)]
struct BuildReport {
    needles: u64,
}

/// The store's description of its shard, as far as the directory reads it.
#[derive(serde::Deserialize)]
struct EcInfo {
    generation: u32,
    needles: u64,
    #[serde(default)]
    shard_file_bytes: u64,
}

/// A needle in a store's listing.
#[derive(serde::Deserialize)]
struct Listed {
    key: String,
    alt: u32,
    deleted: bool,
}

#[derive(serde::Deserialize)]
struct Listing {
    needles: Vec<Listed>,
}

/// The replica an encode builds from: one that holds every needle of a committed, live photo
/// any replica holds. The encode drops every replica once the shards serve, so such a needle
/// only some replicas have (a write the first replica missed under a quorum write, a copy
/// repair still pending, a needle a damaged index lost) must be in the build, or it is gone.
/// Every replica must be up to be compared. Not required: a needle deleted on any replica
/// (its delete is carried over to the shards after the switch) and a needle whose photo is
/// deleted or condemned, or whose id has no photo record: such an id is condemned first (as
/// garbage collection does, `Directory::condemn`), because its commit may still come (a slow
/// one, or one cut short and completed later from its idempotency key) and would then name
/// needles the encode dropped; an upload still in flight on the sealed volume then fails its
/// commit and is retried elsewhere. Refused (the caller retries later) when no replica holds
/// them all: the repairs must land first.
async fn encode_source(
    dir: &Directory,
    id: u32,
    replicas: &[ReplicaStatus],
    client: &StoreClient,
) -> Result<ReplicaStatus, DirectoryError> {
    if replicas.is_empty() {
        return Err(DirectoryError::Unavailable(format!(
            "volume {id} has no replica"
        )));
    }
    if let Some(r) = replicas.iter().find(|r| !(r.up && r.reported)) {
        return Err(DirectoryError::Unavailable(format!(
            "the replica of volume {id} on store {} is not up: every replica is compared \
             before an encode drops them",
            r.store_id
        )));
    }
    let mut deleted: HashSet<(String, u32)> = HashSet::new();
    let mut live: Vec<HashSet<(String, u32)>> = Vec::with_capacity(replicas.len());
    for r in replicas {
        let l: Listing = client
            .needles(&r.url, id)
            .await
            .map_err(|e| store_failed("listing a replica before the encode", e))?;
        let mut mine = HashSet::with_capacity(l.needles.len());
        for n in l.needles {
            if n.deleted {
                deleted.insert((n.key, n.alt));
            } else {
                mine.insert((n.key, n.alt));
            }
        }
        live.push(mine);
    }
    let wanted: HashSet<&(String, u32)> = live
        .iter()
        .flatten()
        .filter(|n| !deleted.contains(*n))
        .collect();
    // Whether photo `key` is committed and live (asked once per photo).
    let mut photo_live: HashMap<String, bool> = HashMap::new();
    let mut fewest = usize::MAX;
    for (r, mine) in replicas.iter().zip(&live) {
        let mut lacking: Vec<&String> = wanted
            .iter()
            .filter(|n| !mine.contains(**n))
            .map(|n| &n.0)
            .collect();
        lacking.sort_unstable();
        lacking.dedup();
        let mut required = 0;
        for key in lacking {
            let is_live = match photo_live.get(key) {
                Some(l) => *l,
                None => {
                    // A key that is not a photo id cannot be a committed photo's needle.
                    let l = match key.parse::<u64>() {
                        Ok(pid) => matches!(
                            dir.condemn_by(pid, "an erasure-coding encode").await?.state,
                            CondemnState::Live
                        ),
                        Err(_) => false,
                    };
                    photo_live.insert(key.clone(), l);
                    l
                }
            };
            if is_live {
                required += 1;
            }
        }
        if required == 0 {
            return Ok(r.clone());
        }
        fewest = fewest.min(required);
    }
    metrics::counter!("haystack_directory_encodes_refused_total", "reason" => "replicas_differ")
        .increment(1);
    Err(DirectoryError::Conflict(format!(
        "no replica of volume {id} holds every live photo's needles the others hold (the \
         fullest lacks {fewest} photos): the replicas must be repaired before the volume is \
         encoded"
    )))
}

/// A client for the stores' long erasure-coding steps: no overall timeout, the directory's
/// TLS settings and internal credentials.
/// A store client for bulk operations (copies, builds, installs): no overall timeout, a
/// 5 s connect timeout, the directory's internal credentials.
pub(super) fn bulk_client(
    security: &haystack_service::auth::Security,
) -> Result<StoreClient, DirectoryError> {
    let http = security
        .http_builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| DirectoryError::Internal(e.to_string()))?;
    Ok(
        StoreClient::new(http).with_credentials(haystack_client::Credentials::internal(
            security.keys.as_ref(),
            "directory",
        )),
    )
}

fn store_failed(what: &str, e: ClientError) -> DirectoryError {
    match e.status() {
        Some(s) if (400..500).contains(&s) => DirectoryError::BadRequest(format!("{what}: {e}")),
        _ => DirectoryError::Unavailable(format!("{what}: {e}")),
    }
}

/// Checks an encode's scheme and block size.
pub(crate) fn check_scheme(r: &EncodeRequest) -> Result<(), DirectoryError> {
    if r.k == 0 || r.m == 0 || r.k as usize + r.m as usize > 64 {
        return Err(DirectoryError::BadRequest(
            "k and m must be at least 1, and k + m at most 64".into(),
        ));
    }
    if r.block_bytes < 64 << 10 || !r.block_bytes.is_multiple_of(4096) || r.block_bytes > 4 << 30 {
        return Err(DirectoryError::BadRequest(
            "block_bytes must be a multiple of 4096 between 64 KiB and 4 GiB".into(),
        ));
    }
    Ok(())
}

impl Directory {
    /// One round of the automatic encode policy (`encode_after_secs`; 0: off): encodes the
    /// first volume [`due_for_encode`] names with `encode_scheme` and `encode_block_bytes`.
    /// Whatever the outcome, that volume is then left alone for `ENCODE_RETRY_MS` (kept in
    /// `not_before`, the worker's). Answers the volume worked on, if any.
    pub async fn encode_due_once(
        &self,
        not_before: &mut HashMap<u32, u64>,
    ) -> Result<Option<u32>, DirectoryError> {
        let after = self.config.encode_after_secs;
        if after == 0 {
            return Ok(None);
        }
        let req = self.config.encode_request()?;
        let now = self.clock.now_ms();
        not_before.retain(|_, t| *t > now);
        let due = self.with_state(|st| {
            due_for_encode(
                st.volumes.values().map(|v| &v.value),
                now,
                after.saturating_mul(1000),
                not_before,
            )
        });
        let Some(&id) = due.first() else {
            return Ok(None);
        };
        not_before.insert(id, now + ENCODE_RETRY_MS);
        tracing::info!(
            volume_id = id,
            k = req.k,
            m = req.m,
            after_secs = after,
            "automatic encode of a sealed volume"
        );
        match self.encode_volume(id, req).await {
            Ok(r) => {
                metrics::counter!("haystack_directory_auto_encodes_total", "result" => "ok")
                    .increment(1);
                tracing::info!(
                    volume_id = id,
                    needles = r.needles,
                    replicas_dropped = r.replicas_dropped,
                    already = r.already,
                    "automatic encode done"
                );
            }
            Err(e) => {
                metrics::counter!("haystack_directory_auto_encodes_total", "result" => "error")
                    .increment(1);
                tracing::warn!(volume_id = id, error = %e, retry_ms = ENCODE_RETRY_MS, "automatic encode failed; the volume is tried again later");
            }
        }
        Ok(Some(id))
    }

    /// Erasure-codes sealed volume `id`: the store of a replica holding every live photo's
    /// needles any replica holds ([`encode_source`]; every replica up) builds the shards, each chosen
    /// store installs its shard (checked and synced), the record switches to the shards in one
    /// conditional write, deletes the replicas took meanwhile are carried over, the replicas
    /// are dropped. Again on an erasure-coded volume: finishes what a crash left (drops).
    pub async fn encode_volume(
        &self,
        id: u32,
        req: EncodeRequest,
    ) -> Result<EncodeReport, DirectoryError> {
        check_scheme(&req)?;
        self.refresh().await?;
        let cur =
            self.meta.get_volume(id).await?.ok_or_else(|| {
                DirectoryError::NotFound(format!("logical volume {id} not found"))
            })?;
        let client = bulk_client(&self.config.security)?;
        if let Some(ec) = cur.value.ec.clone() {
            let dropped = self.drop_retired(id, &client, true).await?;
            if req.reencode {
                let mut r = self.reencode(id, &req, &client).await?;
                r.replicas_dropped = dropped;
                return Ok(r);
            }
            return Ok(EncodeReport {
                volume: id,
                k: ec.k,
                m: ec.m,
                block_bytes: ec.block_bytes,
                generation: ec.generation,
                shards: cur.value.replicas.clone(),
                needles: 0,
                deletes_carried: 0,
                replicas_dropped: dropped,
                already: true,
                shard_bytes_before: 0,
                shard_bytes_after: 0,
            });
        }
        if cur.value.state != VolumeState::Sealed {
            return Err(DirectoryError::Conflict(format!(
                "volume {id} is {:?}: seal it before encoding it",
                cur.value.state
            )));
        }
        let view = self.view();
        let info = self.volume(id)?;
        let source = encode_source(self, id, &info.replicas, &client).await?;
        let n = req.k as usize + req.m as usize;
        // Not a store still holding a copy a move replaced: its stale copy would answer the
        // volume's reads there before the shard does, until it is dropped.
        let candidates: Vec<Candidate> = view
            .stores
            .values()
            .filter(|s| takes_replicas(s))
            .filter(|s| !cur.value.has_moved_copy(s.id))
            .map(|s| placement_candidate(&view, s))
            .collect();
        let need = info.used_bytes / req.k as u64 + (1 << 20);
        let targets = placement::place(&candidates, n, need).map_err(|e| {
            DirectoryError::Conflict(format!("cannot place {n} shards on distinct stores: {e}"))
        })?;
        let urls: Vec<String> = targets
            .iter()
            .map(|t| {
                view.stores
                    .get(t)
                    .map(|s| s.url.clone())
                    .unwrap_or_default()
            })
            .collect();
        let generation = 0u32;
        tracing::info!(volume_id = id, k = req.k, m = req.m, from = %source.url, shards = ?targets, "erasure-coding a volume");
        // 1. Build on the source.
        let body = serde_json::json!({
            "generation": generation, "k": req.k, "m": req.m, "block_bytes": req.block_bytes,
        });
        let built: BuildReport = client
            .ec_op(&source.url, id, "build", &body)
            .await
            .map_err(|e| store_failed("building the shards", e))?;
        // 2. Every shard installed (checked and synced) on its store.
        let installs = urls.iter().enumerate().map(|(i, url)| {
            let body = serde_json::json!({
                "generation": generation, "shard": i, "from": source.url, "shards": urls,
            });
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .ec_op::<_, EcInfo>(&url, id, "install", &body)
                    .await
                    .map_err(|e| store_failed(&format!("installing shard {i} on {url}"), e))
            }
        });
        for r in join_all(installs).await {
            let got = r?;
            if got.generation != generation || got.needles != built.needles {
                return Err(DirectoryError::Internal(format!(
                    "a shard store holds {} needles of generation {}, the build made {}",
                    got.needles, got.generation, built.needles
                )));
            }
        }
        // 3. The switch: one conditional write of the record.
        let retired = cur.value.replicas.clone();
        let mut vol = cur.value.clone();
        vol.replicas = targets.clone();
        vol.reported_by = targets.clone();
        vol.ec = Some(EcScheme {
            k: req.k,
            m: req.m,
            block_bytes: req.block_bytes,
            generation,
            retired: retired.clone(),
        });
        match self
            .meta
            .put_volume(&vol, Expect::Version(cur.version))
            .await?
        {
            Cas::Applied { version } => {
                self.remember_volume(id, version, vol);
            }
            Cas::Conflict { .. } => {
                return Err(DirectoryError::Conflict(format!(
                    "volume {id} changed during the encode; run it again"
                )))
            }
        }
        metrics::counter!("haystack_directory_volumes_encoded_total").increment(1);
        tracing::info!(volume_id = id, shards = ?targets, "volume switched to its erasure-coded shards");
        // 4. Deletes the replicas took since the build, then the replicas dropped.
        let carried = self
            .carry_deletes(id, &retired, &urls, &client)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(volume_id = id, error = %e, "carrying deletes over failed; retired replicas are kept");
                u64::MAX
            });
        let dropped = if carried == u64::MAX {
            0
        } else {
            // Carried just above.
            self.drop_retired(id, &client, false).await?
        };
        if let Err(e) = client.ec_drop_staged(&source.url, id, generation).await {
            tracing::warn!(volume_id = id, error = %e, "dropping the encode's staging failed");
        }
        Ok(EncodeReport {
            volume: id,
            k: req.k,
            m: req.m,
            block_bytes: req.block_bytes,
            generation,
            shards: targets,
            needles: built.needles,
            deletes_carried: if carried == u64::MAX { 0 } else { carried },
            replicas_dropped: dropped,
            already: false,
            shard_bytes_before: 0,
            shard_bytes_after: 0,
        })
    }

    /// Re-encodes an erasure-coded volume without its deleted needles, online: a shard store
    /// builds generation g + 1 from the live needles (reads go on from generation g), every
    /// shard store installs its new shard without switching, then each switches (a store
    /// still on g reads its peers' g files, kept until every store switched), the record
    /// takes the new generation, and the old files are removed.
    async fn reencode(
        &self,
        id: u32,
        req: &EncodeRequest,
        client: &StoreClient,
    ) -> Result<EncodeReport, DirectoryError> {
        let info = self.volume(id)?;
        if info.replicas.len() != req.k as usize + req.m as usize {
            return Err(DirectoryError::BadRequest(format!(
                "volume {id} has {} shards; a re-encode keeps its k + m",
                info.replicas.len()
            )));
        }
        if let Some(r) = info.replicas.iter().find(|r| !r.up) {
            return Err(DirectoryError::Unavailable(format!(
                "shard store {} is down: rebuild its shard first",
                r.store_id
            )));
        }
        let urls: Vec<String> = info.replicas.iter().map(|r| r.url.clone()).collect();
        let mut generation = 0;
        let mut before = 0;
        for u in &urls {
            let e: EcInfo = client
                .ec_get(u, id, None)
                .await
                .map_err(|e| store_failed("reading a shard's state", e))?;
            generation = generation.max(e.generation);
            before += e.shard_file_bytes;
        }
        let generation = generation + 1;
        let source = urls[0].clone();
        let body = serde_json::json!({
            "generation": generation, "k": req.k, "m": req.m, "block_bytes": req.block_bytes,
        });
        let built: BuildReport = client
            .ec_op(&source, id, "build", &body)
            .await
            .map_err(|e| store_failed("building the new generation", e))?;
        let installs = urls.iter().enumerate().map(|(i, url)| {
            let body = serde_json::json!({
                "generation": generation, "shard": i, "from": source, "shards": urls,
                "activate": false,
            });
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .ec_op::<_, EcInfo>(&url, id, "install", &body)
                    .await
                    .map_err(|e| store_failed(&format!("installing shard {i} on {url}"), e))
            }
        });
        for r in join_all(installs).await {
            r?;
        }
        let mut after = 0;
        for (i, url) in urls.iter().enumerate() {
            let body = serde_json::json!({"generation": generation, "shard": i, "shards": urls});
            let e: EcInfo = client
                .ec_op(url, id, "activate", &body)
                .await
                .map_err(|e| store_failed(&format!("switching shard {i}"), e))?;
            after += e.shard_file_bytes;
        }
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.meta.get_volume(id).await? else {
                break;
            };
            let mut vol = cur.value.clone();
            if let Some(e) = vol.ec.as_mut() {
                e.generation = generation;
                e.k = req.k;
                e.m = req.m;
                e.block_bytes = req.block_bytes;
            }
            if let Cas::Applied { version } = self
                .meta
                .put_volume(&vol, Expect::Version(cur.version))
                .await?
            {
                self.remember_volume(id, version, vol);
                break;
            }
        }
        for url in &urls {
            let r: Result<serde_json::Value, _> = client
                .ec_op(url, id, "cleanup", &serde_json::json!({}))
                .await;
            if let Err(e) = r {
                tracing::warn!(volume_id = id, error = %e, "removing an old generation failed");
            }
        }
        if let Err(e) = client.ec_drop_staged(&source, id, generation).await {
            tracing::warn!(volume_id = id, error = %e, "dropping the re-encode's staging failed");
        }
        metrics::counter!("haystack_directory_volumes_reencoded_total").increment(1);
        tracing::info!(
            volume_id = id,
            generation,
            needles = built.needles,
            before,
            after,
            "volume re-encoded"
        );
        Ok(EncodeReport {
            volume: id,
            k: req.k,
            m: req.m,
            block_bytes: req.block_bytes,
            generation,
            shards: info.replicas.iter().map(|r| r.store_id).collect(),
            needles: built.needles,
            deletes_carried: 0,
            replicas_dropped: 0,
            already: false,
            shard_bytes_before: before,
            shard_bytes_after: after,
        })
    }

    /// Deletes found on any old replica but not in a shard store's delete log are applied to
    /// that shard store (gc requests of at most [`CARRY_CHUNK`] needles). Returns the most any
    /// one shard store lacked.
    async fn carry_deletes(
        &self,
        id: u32,
        retired: &[u64],
        shard_urls: &[String],
        client: &StoreClient,
    ) -> Result<u64, DirectoryError> {
        let view = self.view();
        let mut deleted: HashSet<(String, u32)> = HashSet::new();
        for sid in retired {
            let Some(s) = view.stores.get(sid) else {
                continue;
            };
            let l: Listing = match client.needles(&s.url, id).await {
                Ok(l) => l,
                // Dropped already, by a run whose carry-over had succeeded (its record update
                // then lost): nothing left to carry from it.
                Err(e) if e.code() == Some("no_such_volume") => continue,
                Err(e) => return Err(store_failed("listing a replica", e)),
            };
            deleted.extend(
                l.needles
                    .into_iter()
                    .filter(|n| n.deleted)
                    .map(|n| (n.key, n.alt)),
            );
        }
        // Each shard store's own delete log, not a needle listing: a shard store that still
        // holds a retired replica answers listings from the replica, whose deletes its shard
        // (and the shard stores without a replica) may lack.
        #[derive(serde::Deserialize)]
        struct ShardState {
            deleted: Vec<(String, u32)>,
        }
        let mut carried = 0u64;
        for url in shard_urls {
            let st: ShardState = client
                .ec_get(url, id, Some("state"))
                .await
                .map_err(|e| store_failed("reading a shard's deletes", e))?;
            let have: HashSet<(String, u32)> = st.deleted.into_iter().collect();
            let todo: Vec<serde_json::Value> = deleted
                .iter()
                .filter(|d| !have.contains(*d))
                .map(|(key, alt)| serde_json::json!({"key": key, "alt": alt}))
                .collect();
            for chunk in todo.chunks(CARRY_CHUNK) {
                let body = serde_json::json!({ "needles": chunk });
                let _: serde_json::Value = client
                    .gc(url, id, &body)
                    .await
                    .map_err(|e| store_failed("carrying deletes over", e))?;
            }
            carried = carried.max(todo.len() as u64);
        }
        if carried > 0 {
            tracing::info!(
                volume_id = id,
                deletes = carried,
                "deletes carried over to the shards"
            );
        }
        Ok(carried)
    }

    /// Drops the replicas an encode retired (each store that confirms leaves the list).
    async fn drop_retired(
        &self,
        id: u32,
        client: &StoreClient,
        carry_first: bool,
    ) -> Result<u64, DirectoryError> {
        let view = self.view();
        let Some(cur) = self.meta.get_volume(id).await? else {
            return Ok(0);
        };
        let Some(ec) = cur.value.ec.clone() else {
            return Ok(0);
        };
        if ec.retired.is_empty() {
            return Ok(0);
        }
        if carry_first {
            // Deletes the retired replicas took that a shard store lacks go to it first: this may
            // be a run finishing what a crash, a lost answer or a failed carry-over left after the
            // switch (then nothing carried them yet), and a retired replica is the only record of
            // a delete made before its shard was installed.
            let urls: Vec<String> = cur
                .value
                .replicas
                .iter()
                .map(|sid| {
                    view.stores.get(sid).map(|s| s.url.clone()).ok_or_else(|| {
                        DirectoryError::Unavailable(format!(
                            "shard store {sid} of volume {id} is unknown: retired replicas kept"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            self.carry_deletes(id, &ec.retired, &urls, client).await?;
        }
        let mut left = Vec::new();
        let mut dropped = 0;
        for sid in &ec.retired {
            let Some(s) = view.stores.get(sid) else {
                continue;
            };
            match client.drop_volume(&s.url, id).await {
                Ok(()) => dropped += 1,
                Err(e) if e.status() == Some(404) => {}
                Err(e) => {
                    tracing::warn!(volume_id = id, store_id = sid, error = %e, "dropping a retired replica failed; kept for the next run");
                    left.push(*sid);
                }
            }
        }
        if left.len() != ec.retired.len() {
            let mut vol = cur.value.clone();
            if let Some(e) = vol.ec.as_mut() {
                e.retired = left;
            }
            if let Cas::Applied { version } = self
                .meta
                .put_volume(&vol, Expect::Version(cur.version))
                .await?
            {
                self.remember_volume(id, version, vol);
            }
        }
        Ok(dropped)
    }

    /// The erasure-coded volumes a heartbeating store should remove its files of: among
    /// those it reports files of (`ec_files`), each whose record is erasure-coded and does
    /// not name the store, seen so at two heartbeats in a row with the record unchanged in
    /// between (read from the metadata store, not this instance's snapshot) and with no
    /// rebuild of it in flight here. A shard the current record names is never dropped; the
    /// second look keeps a rebuild's new shard (installed just before the record names it)
    /// safe from another directory instance too, unless that instance stalls for a whole
    /// heartbeat interval between the two.
    pub(super) async fn leftover_shards(
        &self,
        store_id: u64,
        hb: &Heartbeat,
    ) -> Result<Vec<u32>, DirectoryError> {
        let candidates: Vec<u32> = self.read_state(|st| {
            hb.ec_files
                .iter()
                .copied()
                .filter(|id| {
                    st.volumes.get(id).is_some_and(|v| {
                        v.value.ec.is_some() && !v.value.replicas.contains(&store_id)
                    })
                })
                .collect()
        });
        haystack_service::sync::lock(&self.ec_leftovers)
            .retain(|(s, v), _| *s != store_id || candidates.contains(v));
        let mut out = Vec::new();
        for id in candidates {
            if haystack_service::sync::lock(&self.ec_busy).contains(&id) {
                continue;
            }
            let Some(cur) = self.meta.get_volume(id).await? else {
                continue;
            };
            let mut seen = haystack_service::sync::lock(&self.ec_leftovers);
            if cur.value.ec.is_none() || cur.value.replicas.contains(&store_id) {
                seen.remove(&(store_id, id));
                continue;
            }
            if seen.insert((store_id, id), cur.version) == Some(cur.version) {
                seen.remove(&(store_id, id));
                tracing::warn!(
                    volume_id = id,
                    store_id,
                    "store holds erasure-coding files its volume's record does not name; asked to drop them"
                );
                metrics::counter!("haystack_directory_ec_leftovers_dropped_total").increment(1);
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Rebuilds shard `req.shard` of erasure-coded volume `id` onto store `req.to` (or one
    /// the placement picks among the up stores holding no shard of it), then points the
    /// record and every shard store's manifest at it.
    pub async fn rebuild_shard(
        &self,
        id: u32,
        req: EcRebuildRequest,
    ) -> Result<LogicalVolumeInfo, DirectoryError> {
        let _busy = Busy::new(&self.ec_busy, id);
        self.refresh().await?;
        let cur =
            self.meta.get_volume(id).await?.ok_or_else(|| {
                DirectoryError::NotFound(format!("logical volume {id} not found"))
            })?;
        let Some(ec) = cur.value.ec.clone() else {
            return Err(DirectoryError::BadRequest(format!(
                "volume {id} is not erasure-coded"
            )));
        };
        let shard = req.shard as usize;
        if shard >= cur.value.replicas.len() {
            return Err(DirectoryError::BadRequest(format!(
                "volume {id} has {} shards",
                cur.value.replicas.len()
            )));
        }
        let view = self.view();
        let to = match req.to {
            Some(t) => {
                if !view.stores.get(&t).is_some_and(store_up) {
                    return Err(DirectoryError::BadRequest(format!(
                        "store {t} is not registered or not up"
                    )));
                }
                if cur
                    .value
                    .replicas
                    .iter()
                    .enumerate()
                    .any(|(i, r)| *r == t && i != shard)
                {
                    return Err(DirectoryError::BadRequest(format!(
                        "store {t} holds another shard of volume {id}"
                    )));
                }
                if cur.value.has_moved_copy(t) {
                    return Err(DirectoryError::Conflict(format!(
                        "store {t} still holds a copy of volume {id} that a move replaced (its \
                         reads would come from it before the shard); choose another store or \
                         retry once it is dropped"
                    )));
                }
                t
            }
            None => {
                let candidates: Vec<Candidate> = view
                    .stores
                    .values()
                    .filter(|s| takes_replicas(s) && !cur.value.replicas.contains(&s.id))
                    .filter(|s| !cur.value.has_moved_copy(s.id))
                    .map(|s| Candidate {
                        store_id: s.id,
                        zone: s.zone.clone(),
                        rack: s.rack.clone(),
                        free_bytes: s.free_bytes,
                        volumes: 0,
                    })
                    .collect();
                placement::place(&candidates, 1, 1 << 20).map_err(|e| {
                    DirectoryError::Conflict(format!("no store can take the shard: {e}"))
                })?[0]
            }
        };
        let mut shards = cur.value.replicas.clone();
        shards[shard] = to;
        let urls: Vec<String> = shards
            .iter()
            .map(|s| {
                view.stores
                    .get(s)
                    .map(|s| s.url.clone())
                    .unwrap_or_default()
            })
            .collect();
        let client = bulk_client(&self.config.security)?;
        let body = serde_json::json!({
            "generation": ec.generation, "shard": shard, "shards": urls,
        });
        let _: serde_json::Value = client
            .ec_op(&urls[shard], id, "rebuild", &body)
            .await
            .map_err(|e| store_failed(&format!("rebuilding shard {shard}"), e))?;
        let mut vol = cur.value.clone();
        vol.replicas = shards.clone();
        vol.reported_by.retain(|r| shards.contains(r));
        if !vol.reported_by.contains(&to) {
            vol.reported_by.push(to);
        }
        match self
            .meta
            .put_volume(&vol, Expect::Version(cur.version))
            .await?
        {
            Cas::Applied { version } => self.remember_volume(id, version, vol),
            Cas::Conflict { .. } => {
                return Err(DirectoryError::Conflict(format!(
                    "volume {id} changed during the rebuild; run it again"
                )))
            }
        }
        // Every other shard store learns where the shard is now (best effort: one that is
        // down learns it by the next rebuild or repair run).
        let body = serde_json::json!({ "shards": urls });
        for (i, url) in urls.iter().enumerate() {
            if i == shard {
                continue;
            }
            let r: Result<serde_json::Value, _> = client.ec_put_manifest(url, id, &body).await;
            if let Err(e) = r {
                tracing::warn!(volume_id = id, shard = i, error = %e, "shard store did not take the new shard list");
            }
        }
        // Deletes made while the shard was rebuilt went to the shard stores of the record at
        // the time, not the new one (it learned its peers' deletes when it started): carried
        // over now that the record names it (later deletes reach it directly).
        let peers: Vec<u64> = shards
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != shard)
            .map(|(_, s)| *s)
            .collect();
        match self
            .carry_deletes(id, &peers, &urls[shard..=shard], &client)
            .await
        {
            Ok(n) if n > 0 => {
                tracing::info!(
                    volume_id = id,
                    shard,
                    deletes = n,
                    "deletes made during the rebuild carried over"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(volume_id = id, shard, error = %e, "carrying deletes to the rebuilt shard failed; a delete made during the rebuild may be served by it")
            }
        }
        metrics::counter!("haystack_directory_ec_shards_rebuilt_total").increment(1);
        tracing::info!(volume_id = id, shard, to, "erasure-coded shard rebuilt");
        self.refresh().await?;
        self.volume(id)
    }

    /// Automatic shard rebuild, one shard per call: the first shard of an erasure-coded volume
    /// whose store has been down longer than `rereplicate_after_ms` is rebuilt elsewhere.
    pub async fn rebuild_lost_shard_once(&self) -> Result<Option<u32>, DirectoryError> {
        let after = self.config.rereplicate_after_ms;
        if after == 0 {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let view = self.view();
        for v in view.volumes.values() {
            if v.info.ec.is_none() {
                continue;
            }
            for (i, r) in v.info.replicas.iter().enumerate() {
                let dead = view.stores.get(&r.store_id).is_none_or(|s| {
                    s.state == StoreState::Down && now.saturating_sub(s.last_heartbeat_ms) > after
                });
                if !dead {
                    continue;
                }
                let id = v.info.id;
                tracing::warn!(
                    volume_id = id,
                    shard = i,
                    store_id = r.store_id,
                    "rebuilding the shard of a store that stayed down"
                );
                match self
                    .rebuild_shard(
                        id,
                        EcRebuildRequest {
                            shard: i as u16,
                            to: None,
                        },
                    )
                    .await
                {
                    Ok(_) => return Ok(Some(id)),
                    Err(e) => {
                        tracing::warn!(volume_id = id, shard = i, error = %e, "automatic shard rebuild failed");
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(id: u32, state: VolumeState, created_ms: u64, sealed_ms: Option<u64>) -> LogicalVolume {
        LogicalVolume {
            id,
            replicas: vec![1, 2],
            state,
            capacity_bytes: 1 << 30,
            used_bytes: 0,
            created_ms,
            reason: None,
            reported_by: vec![1, 2],
            remote: Vec::new(),
            ec: None,
            sealed_ms,
            moved_away: Vec::new(),
        }
    }

    #[test]
    fn sealed_volumes_old_enough_are_due_oldest_first() {
        let mut encoded = vol(5, VolumeState::Sealed, 0, Some(0));
        encoded.ec = Some(EcScheme {
            k: 2,
            m: 1,
            block_bytes: 1 << 20,
            generation: 0,
            retired: vec![],
        });
        let mut half_done = encoded.clone();
        half_done.id = 6;
        half_done.ec.as_mut().unwrap().retired = vec![2];
        let vols = [
            vol(1, VolumeState::Writable, 0, None),
            vol(2, VolumeState::Sealed, 0, Some(9_000)),
            vol(3, VolumeState::Sealed, 0, Some(5_000)),
            vol(4, VolumeState::Sealed, 1_000, None),
            vol(7, VolumeState::ReadOnly, 0, None),
            encoded,
            half_done,
        ];
        let none = HashMap::new();
        // At 10 s with a 4 s age: 4 (created at 1 s, no seal time) and 3 (sealed at 5 s);
        // 2 (sealed at 9 s) is too young; 6 has a replica left to drop.
        assert_eq!(due_for_encode(&vols, 10_000, 4_000, &none), vec![6, 4, 3]);
        assert_eq!(
            due_for_encode(&vols, 13_000, 4_000, &none),
            vec![6, 4, 3, 2]
        );
        // A volume in its back-off is left alone until its time.
        let wait = HashMap::from([(4, 20_000), (6, 10_000)]);
        assert_eq!(due_for_encode(&vols, 10_000, 4_000, &wait), vec![6, 3]);
    }
}
