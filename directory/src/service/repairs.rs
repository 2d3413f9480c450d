//! Self-healing: the repair queue (damage reports from readers and scrubbers, replicas a
//! quorum write left behind, needle deletes a store missed), the worker step that works it
//! off, and anti-entropy (replicas compared by digests of their needle lists).
//!
//! The photo record decides every repair: a needle is copied onto a replica only while its
//! photo is live, and deleted from one only when its photo is deleted or condemned. A repair
//! never undoes a delete: the store refuses to rewrite a needle it holds deleted, and a
//! needle deleted on one replica of a live photo is reported, not resurrected.

use futures_util::stream::{self, StreamExt};
use haystack_proto::directory::{
    digest_buckets, DamageKind, DamageReply, DamageReport, RepairAction, RepairTaskInfo,
    MAX_LISTED_BUCKETS,
};

use super::*;
use crate::model::{RepairRecord, RepairTask};

/// Longest pause between two tries of a failing repair.
const MAX_BACKOFF_MS: u64 = 300_000;
/// A store that is down is asked again after this long (no attempt is counted).
const DOWN_RETRY_MS: u64 = 5_000;
/// A moved-away copy is kept at most this long while the replicas differ on a live photo
/// with no repair queued (an anomaly: a needle deleted on a replica of a live photo), for an
/// operator to recover from; then it is dropped like the others.
const MOVED_COPY_MAX_KEEP_MS: u64 = 86_400_000;
/// Repair records worked on at once.
const PARALLEL_REPAIRS: usize = 8;
/// A copy queued by a commit is kept this long while its photo is not recorded yet (the
/// commit queues the copy first, then writes the photo).
const COMMIT_GRACE_MS: u64 = 60_000;
/// Past that grace, how often such a copy looks for its photo again while the commit can
/// still be completed from its idempotency key.
const CUT_COMMIT_RETRY_MS: u64 = 60_000;

/// What one anti-entropy pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AntiEntropyReport {
    /// Volumes whose replicas were compared.
    pub compared: usize,
    /// Of those, volumes whose replicas differed.
    pub differing: usize,
    /// Repairs queued.
    pub queued: usize,
}

/// A needle as one replica lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
struct Listed {
    #[serde(with = "haystack_proto::directory::dec_u64")]
    key: u64,
    alt: u32,
    deleted: bool,
}

#[derive(serde::Deserialize)]
struct Listing {
    needles: Vec<Listed>,
}

#[derive(serde::Deserialize)]
struct DigestAnswer {
    needles: u64,
    buckets: Vec<String>,
}

#[derive(serde::Deserialize)]
struct RepairResult {
    outcome: String,
}

#[derive(serde::Deserialize)]
struct RepairAnswer {
    results: Vec<RepairResult>,
}

/// How one try of a task ended.
enum Tried {
    Done,
    /// Not tried (its store is down, its photo not recorded yet): again after this many ms,
    /// no attempt counted.
    Wait(u64),
    Failed(String),
}

fn backoff_ms(attempts: u32) -> u64 {
    1_000u64
        .saturating_mul(1u64 << attempts.min(20))
        .min(MAX_BACKOFF_MS)
}

fn action_label(a: RepairAction) -> &'static str {
    match a {
        RepairAction::Copy => "copy",
        RepairAction::Delete => "delete",
    }
}

impl Directory {
    /// Queues `action` on the needles of `photo_id` for the replica on `store_id` (durably:
    /// the task survives a restart of the directory). A delete supersedes a queued copy for
    /// the same replica; a copy is not queued over a delete. Returns whether a task was added.
    pub async fn enqueue_repair(
        &self,
        photo_id: u64,
        volume_id: u32,
        store_id: u64,
        action: RepairAction,
        alts: Vec<u32>,
        reason: &str,
    ) -> Result<bool, DirectoryError> {
        let task = RepairTask {
            store_id,
            action,
            reason: reason.to_string(),
            alts,
            attempts: 0,
            next_ms: 0,
            last_error: None,
        };
        for _ in 0..CAS_RETRIES {
            let (expect, mut rec) = match self.meta.get_repair(photo_id).await? {
                Some(r) => (Expect::Version(r.version), r.value),
                None => (
                    Expect::Absent,
                    RepairRecord {
                        volume_id,
                        tasks: Vec::new(),
                        created_ms: self.clock.now_ms(),
                    },
                ),
            };
            if let Some(t) = rec.tasks.iter_mut().find(|t| t.store_id == store_id) {
                if t.action == action || t.action == RepairAction::Delete {
                    return Ok(false);
                }
                *t = task.clone();
            } else {
                rec.tasks.push(task.clone());
            }
            if let Cas::Applied { .. } = self.meta.put_repair(photo_id, &rec, expect).await? {
                metrics::counter!("haystack_directory_repairs_queued_total", "action" => action_label(action))
                    .increment(1);
                tracing::info!(
                    photo_id,
                    volume_id,
                    store_id,
                    action = action_label(action),
                    reason,
                    "repair queued"
                );
                self.repair_wake.notify_one();
                return Ok(true);
            }
        }
        Err(DirectoryError::Conflict(format!(
            "repair record of photo {photo_id} is contended; retry"
        )))
    }

    /// A reader or a scrubber found one replica of a needle damaged or missing. Checked
    /// against the records (a live photo on that volume with that alternate key and cookie,
    /// a replica of that volume) before a copy is queued, so a wrong report changes nothing.
    pub async fn report_damage(&self, r: DamageReport) -> Result<DamageReply, DirectoryError> {
        let kind = match r.kind {
            DamageKind::Corrupt => "corrupt",
            DamageKind::Missing => "missing",
        };
        let refuse = |reason: String| {
            metrics::counter!("haystack_directory_damage_reports_total", "kind" => kind, "queued" => "false")
                .increment(1);
            Ok(DamageReply {
                queued: false,
                reason: Some(reason),
            })
        };
        let store_id = {
            let view = self.view();
            let Some(v) = view.volumes.get(&r.volume) else {
                return refuse(format!("no logical volume {}", r.volume));
            };
            if v.info.ec.is_some() {
                // Its shard stores rebuild what they lose from k others, not from a copy.
                return refuse(format!("volume {} is erasure-coded", r.volume));
            }
            let url = r.store_url.trim_end_matches('/');
            match v
                .replicas
                .iter()
                .find(|x| x.url.trim_end_matches('/') == url)
            {
                Some(x) => x.store_id,
                None => return refuse(format!("{url} holds no replica of volume {}", r.volume)),
            }
        };
        let Some(p) = self.meta.get_photo(r.key).await? else {
            return refuse(format!("no photo {}", r.key));
        };
        let p = p.value;
        if p.volume_id != r.volume || !p.alts().any(|a| a == r.alt) {
            return refuse(format!(
                "photo {} has no needle {}/{}",
                r.key, r.volume, r.alt
            ));
        }
        if r.cookie.is_some_and(|c| c != p.cookie) {
            return refuse("wrong cookie".into());
        }
        if !p.live() {
            return refuse(format!("photo {} is deleted", r.key));
        }
        self.enqueue_repair(
            p.id,
            p.volume_id,
            store_id,
            RepairAction::Copy,
            Vec::new(),
            &format!("{kind} needle reported"),
        )
        .await?;
        metrics::counter!("haystack_directory_damage_reports_total", "kind" => kind, "queued" => "true")
            .increment(1);
        Ok(DamageReply {
            queued: true,
            reason: None,
        })
    }

    /// The queued repairs, oldest photo first.
    pub async fn repairs(&self) -> Result<Vec<RepairTaskInfo>, DirectoryError> {
        let mut out = Vec::new();
        let mut recs = self.meta.list_repairs().await?;
        recs.sort_by_key(|(k, _)| *k);
        for (photo_id, r) in recs {
            for t in r.value.tasks {
                out.push(RepairTaskInfo {
                    photo_id,
                    volume: r.value.volume_id,
                    store_id: t.store_id,
                    action: t.action,
                    reason: t.reason,
                    attempts: t.attempts,
                    last_error: t.last_error,
                });
            }
        }
        Ok(out)
    }

    /// One pass over the repair queue: every task that is due is tried once. Returns how
    /// many tasks are still queued.
    pub async fn repair_once(&self) -> Result<usize, DirectoryError> {
        let recs = self.meta.list_repairs().await?;
        let now = self.clock.now_ms();
        // Volumes with a copy queued at the start of the pass keep their moved-away copies
        // (a last-resort source); queued deletes never read them.
        let queued: std::collections::HashSet<u32> = recs
            .iter()
            .filter(|(_, r)| r.value.tasks.iter().any(|t| t.action == RepairAction::Copy))
            .map(|(_, r)| r.value.volume_id)
            .collect();
        let due: Vec<(u64, Versioned<RepairRecord>)> = recs
            .into_iter()
            .filter(|(_, r)| r.value.tasks.iter().any(|t| t.next_ms <= now))
            .collect();
        let left: Vec<Result<usize, DirectoryError>> = stream::iter(due)
            .map(|(id, rec)| self.work_record(id, rec))
            .buffer_unordered(PARALLEL_REPAIRS)
            .collect()
            .await;
        let mut remaining = 0;
        for l in left {
            remaining += l?;
        }
        metrics::gauge!("haystack_directory_repairs_pending").set(remaining as f64);
        self.drop_moved_copies(&queued).await?;
        Ok(remaining)
    }

    /// Drops the copies that moves replaced (`LogicalVolume::moved_away`) once they are
    /// `moved_copy_keep_ms` old, their volume has no copy queued for repair (`queued`: such a
    /// copy is the last-resort source of one) and its current replicas compare equal (a
    /// difference queues repairs first, which may need it). Until then it serves the photos
    /// deleted since the move to whoever holds its URL, and its store is no target for the
    /// volume. A store that confirms (or no longer has it, or is gone: unregistered, or its
    /// URL taken by another store id) leaves the list; one that is down is skipped, one that
    /// fails is tried next pass.
    async fn drop_moved_copies(
        &self,
        queued: &std::collections::HashSet<u32>,
    ) -> Result<(), DirectoryError> {
        let now = self.clock.now_ms();
        let keep = self.config.moved_copy_keep_ms;
        let due: Vec<u32> = {
            let view = self.view();
            view.volumes
                .values()
                .filter(|v| !queued.contains(&v.info.id))
                .filter(|v| {
                    // Something to do now: a store up to drop from, or one that is gone.
                    v.info.moved_away.iter().any(|sid| {
                        view.stores
                            .get(sid)
                            .is_none_or(|s| store_up(s) || url_taken(&view, s))
                    })
                })
                .map(|v| v.info.id)
                .collect()
        };
        for id in due {
            let Some(cur) = self.meta.get_volume(id).await? else {
                continue;
            };
            let view = self.view();
            let ec = cur.value.ec.is_some();
            let ready: Vec<crate::model::MovedCopy> = cur
                .value
                .moved_away
                .iter()
                .filter(|m| now.saturating_sub(m.moved_ms) >= keep)
                // A replica again is never dropped; on an erasure-coded volume `replicas`
                // are its shard stores, whose shard files a replica drop never touches.
                .filter(|m| ec || !cur.value.replicas.contains(&m.store_id))
                .filter(|m| !cur.value.remote.contains(&m.store_id))
                .copied()
                .collect();
            if ready.is_empty() {
                continue;
            }
            if !ec {
                let Some(v) = view.volumes.get(&id) else {
                    continue;
                };
                // The replicas the record names now, not an older view's: a copy is dropped
                // only while they agree.
                let mut seen: Vec<u64> = v.replicas.iter().map(|r| r.store_id).collect();
                let mut named = cur.value.replicas.clone();
                seen.sort_unstable();
                named.sort_unstable();
                let all_up = seen == named
                    && v.replicas
                        .iter()
                        .all(|r| view.stores.get(&r.store_id).is_some_and(store_up));
                if !all_up {
                    continue;
                }
                match self.compare_volume(id, &v.replicas).await {
                    // Equal, or differing only about needles of no live photo (garbage a
                    // failed upload left on some replicas, deletes the worker applies without
                    // it): no copy repair can need the moved copy. A live photo's difference
                    // keeps it, whether its copy was queued now, earlier, or cannot be.
                    Ok(None) => {}
                    Ok(Some(d)) if d.live == 0 => {}
                    // Repairs queued now (the next pass sees them queued): kept for them.
                    Ok(Some(d)) if d.queued > 0 => {
                        tracing::info!(
                            volume_id = id,
                            queued = d.queued,
                            "replicas differ on live photos; moved-away copies kept for the repairs"
                        );
                        continue;
                    }
                    // A live photo's difference no repair is queued for (a needle deleted on a
                    // replica of a live photo is left deleted): the copy is kept a day for an
                    // operator to look at, not for good.
                    Ok(Some(d)) => {
                        let oldest = ready
                            .iter()
                            .map(|m| now.saturating_sub(m.moved_ms))
                            .max()
                            .unwrap_or(0);
                        if oldest < MOVED_COPY_MAX_KEEP_MS {
                            tracing::info!(
                                volume_id = id,
                                live = d.live,
                                "replicas differ on live photos; moved-away copies kept"
                            );
                            continue;
                        }
                        metrics::counter!(
                            "haystack_directory_moved_copies_dropped_differing_total"
                        )
                        .increment(1);
                        tracing::warn!(
                            volume_id = id,
                            live = d.live,
                            "replicas still differ on live photos a day after the move, with nothing to repair; dropping the moved-away copies"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(volume_id = id, error = %e, "comparing replicas failed; moved-away copies kept");
                        continue;
                    }
                }
            }
            let mut gone = Vec::new();
            for m in ready {
                let s = match view.stores.get(&m.store_id) {
                    Some(s) if !url_taken(&view, s) => s,
                    // Unregistered, or its machine replaced by a store under another id at
                    // the same URL: the copy went with it (a DELETE there would hit the new
                    // store's volume).
                    _ => {
                        gone.push(m.store_id);
                        continue;
                    }
                };
                if !store_up(s) {
                    continue;
                }
                match self.repair_stores.drop_moved_copy(&s.url, id).await {
                    Ok(()) => {
                        tracing::info!(
                            volume_id = id,
                            store_id = m.store_id,
                            "moved-away copy dropped"
                        );
                        metrics::counter!("haystack_directory_moved_copies_dropped_total")
                            .increment(1);
                        gone.push(m.store_id);
                    }
                    Err(e) if e.status() == Some(404) => gone.push(m.store_id),
                    Err(e) => {
                        tracing::warn!(volume_id = id, store_id = m.store_id, error = %e, "dropping a moved-away copy failed; tried again next pass")
                    }
                }
            }
            if gone.is_empty() {
                continue;
            }
            // Only the entries dropped leave (a move meanwhile may have added one); a
            // conflict leaves them for the next pass, where the store answers 404.
            let mut vol = cur.value.clone();
            vol.moved_away.retain(|m| !gone.contains(&m.store_id));
            if let Cas::Applied { version } = self
                .meta
                .put_volume(&vol, Expect::Version(cur.version))
                .await?
            {
                self.remember_volume(id, version, vol);
            }
        }
        Ok(())
    }

    /// Tries the due tasks of one record and writes back what is left (the record is removed
    /// when nothing is). Returns the tasks left.
    async fn work_record(
        &self,
        photo_id: u64,
        rec: Versioned<RepairRecord>,
    ) -> Result<usize, DirectoryError> {
        let photo = self.meta.get_photo(photo_id).await?.map(|p| p.value);
        let now = self.clock.now_ms();
        let mut outcomes: Vec<(RepairTask, Tried)> = Vec::new();
        for t in &rec.value.tasks {
            if t.next_ms > now {
                continue;
            }
            let r = self
                .work_task(photo_id, &rec.value, photo.as_ref(), t)
                .await;
            outcomes.push((t.clone(), r));
        }
        // Write back: done tasks leave, failed ones are pushed back; tasks queued meanwhile
        // (a conflict) are kept.
        let mut current = rec;
        for _ in 0..CAS_RETRIES {
            let mut tasks = Vec::new();
            for t in &current.value.tasks {
                match outcomes.iter().find(|(o, _)| o == t) {
                    None => tasks.push(t.clone()),
                    Some((_, Tried::Done)) => {}
                    Some((_, Tried::Wait(ms))) => {
                        let mut t = t.clone();
                        t.next_ms = now + ms;
                        tasks.push(t);
                    }
                    Some((_, Tried::Failed(e))) => {
                        let mut t = t.clone();
                        t.attempts += 1;
                        t.next_ms = now + backoff_ms(t.attempts);
                        t.last_error = Some(e.clone());
                        tasks.push(t);
                    }
                }
            }
            let left = tasks.len();
            let cas = if tasks.is_empty() {
                self.meta.delete_repair(photo_id, current.version).await?
            } else {
                let mut rec = current.value.clone();
                rec.tasks = tasks;
                self.meta
                    .put_repair(photo_id, &rec, Expect::Version(current.version))
                    .await?
            };
            if let Cas::Applied { .. } = cas {
                return Ok(left);
            }
            match self.meta.get_repair(photo_id).await? {
                Some(r) => current = r,
                None => return Ok(0),
            }
        }
        Err(DirectoryError::Conflict(format!(
            "repair record of photo {photo_id} is contended"
        )))
    }

    /// One try of one task.
    async fn work_task(
        &self,
        photo_id: u64,
        rec: &RepairRecord,
        photo: Option<&Photo>,
        t: &RepairTask,
    ) -> Tried {
        // The store's URL, whether it is up, and whether it holds an asynchronous remote
        // replica (its `no_such_volume` then means "still seeding", not done), all from the
        // same source: this view, or the records when the view does not know the replica.
        let seen = {
            let view = self.view();
            view.stores.get(&t.store_id).and_then(|s| {
                let v = view.volumes.get(&rec.volume_id)?;
                let ordinary = v.replicas.iter().any(|r| r.store_id == t.store_id);
                // A remote replica takes queued deletes, never copies (shipping fills it).
                let remote = !ordinary
                    && t.action == RepairAction::Delete
                    && v.info
                        .remote_replicas
                        .iter()
                        .any(|r| r.store_id == t.store_id);
                (ordinary || remote).then(|| (s.url.clone(), store_up(s), remote))
            })
        };
        let (url, up, remote) = match seen {
            Some(s) => s,
            // This view may be older than the task: another instance may have switched the
            // replica in (or the store registered through it) and queued the task since. The
            // records decide before the task is dropped.
            None => match self.replica_in_records(rec.volume_id, t).await {
                Ok(Some(s)) => s,
                // The store was removed, or the replica moved (bulk repair, re-replication):
                // nothing left to repair on it; a copy came from a good replica.
                Ok(None) => return Tried::Done,
                Err(e) => return Tried::Failed(format!("re-reading the records: {e}")),
            },
        };
        if !up {
            return Tried::Wait(DOWN_RETRY_MS);
        }
        let Some(p) = photo else {
            // Not recorded: a commit that queued its copies may not have written the photo
            // yet. A keyed commit cut between its two writes is completed from its key's
            // record by the next request with the key, as long as the key is live
            // (`idempotency_ttl_ms` from its binding, which follows the queueing): the copy
            // waits for that too. Past both the photo never comes (the upload failed): its
            // needles are garbage collection's.
            let age = self.clock.now_ms().saturating_sub(rec.created_ms);
            if age < COMMIT_GRACE_MS {
                return Tried::Wait(2_000);
            }
            if age < COMMIT_GRACE_MS.saturating_add(self.config.idempotency_ttl_ms) {
                return Tried::Wait(CUT_COMMIT_RETRY_MS);
            }
            return Tried::Done;
        };
        let action = if !p.live() {
            RepairAction::Delete
        } else if t.action == RepairAction::Delete {
            tracing::warn!(
                photo_id,
                store_id = t.store_id,
                "delete queued for a live photo; not applied"
            );
            return Tried::Done;
        } else {
            RepairAction::Copy
        };
        let alts: Vec<u32> = if t.alts.is_empty() {
            p.alts().collect()
        } else {
            t.alts.clone()
        };
        let r = match action {
            RepairAction::Copy => match self.copy_needles(p, t.store_id, &url, &alts).await {
                Ok(()) => self.undo_copy_if_deleted(p, &url, &alts).await,
                Err(e) => Err(e),
            },
            RepairAction::Delete => {
                self.delete_needles(p.volume_id, photo_id, &url, &alts, remote)
                    .await
            }
        };
        let label = action_label(action);
        match r {
            Ok(()) => {
                metrics::counter!("haystack_directory_repairs_total", "action" => label, "result" => "done")
                    .increment(1);
                tracing::info!(
                    photo_id,
                    store_id = t.store_id,
                    action = label,
                    reason = %t.reason,
                    "repair done"
                );
                Tried::Done
            }
            Err(e) => {
                metrics::counter!("haystack_directory_repairs_total", "action" => label, "result" => "failed")
                    .increment(1);
                tracing::warn!(photo_id, store_id = t.store_id, action = label, error = %e, "repair failed; will retry");
                Tried::Failed(e)
            }
        }
    }

    /// Whether the task's store holds a replica of `volume` (a remote one counts for a
    /// delete) by the records as they are now, not this instance's view; its URL, whether it
    /// is up and whether the replica is a remote one if so.
    async fn replica_in_records(
        &self,
        volume: u32,
        t: &RepairTask,
    ) -> Result<Option<(String, bool, bool)>, DirectoryError> {
        let Some(v) = self.meta.get_volume(volume).await? else {
            return Ok(None);
        };
        let ordinary = v.value.replicas.contains(&t.store_id);
        let remote =
            !ordinary && t.action == RepairAction::Delete && v.value.remote.contains(&t.store_id);
        if !ordinary && !remote {
            return Ok(None);
        }
        Ok(self
            .meta
            .get_store(t.store_id)
            .await?
            .map(|s| (s.value.url.clone(), store_up(&s.value), remote)))
    }

    /// After a copy: if the photo was deleted (or condemned, or is gone) while the copy ran,
    /// the copy is deleted again. The delete reached the target before the copy did, found no
    /// needle (a store answers 404 and keeps no mark) and counted as done, so without this the
    /// copy would serve the deleted photo until anti-entropy or gc came by.
    async fn undo_copy_if_deleted(
        &self,
        p: &Photo,
        target: &str,
        alts: &[u32],
    ) -> Result<(), String> {
        let now = self
            .meta
            .get_photo(p.id)
            .await
            .map_err(|e| format!("re-reading the photo after the copy: {e}"))?;
        if now.is_some_and(|n| n.value.live()) {
            return Ok(());
        }
        metrics::counter!("haystack_directory_repair_copies_undone_total").increment(1);
        tracing::info!(photo_id = p.id, %target, "the photo was deleted during its repair copy; the copy is deleted");
        self.delete_needles(p.volume_id, p.id, target, alts, false)
            .await
            .map_err(|e| format!("the photo was deleted during the copy; deleting the copy: {e}"))
    }

    /// Copies every needle in `alts` of photo `p` onto the replica at `target` from the other
    /// replicas (each needle from the first one that serves it intact, checked by its CRC on
    /// that store).
    async fn copy_needles(
        &self,
        p: &Photo,
        target_id: u64,
        target: &str,
        alts: &[u32],
    ) -> Result<(), String> {
        let sources: Vec<String> = {
            let view = self.view();
            let Some(v) = view.volumes.get(&p.volume_id) else {
                return Err(format!("volume {} unknown", p.volume_id));
            };
            let mut s: Vec<(bool, String)> = v
                .replicas
                .iter()
                .filter(|r| r.store_id != target_id)
                .map(|r| {
                    let up = view.stores.get(&r.store_id).is_some_and(store_up);
                    (!up, r.url.clone())
                })
                .collect();
            s.sort();
            // Last: the copies moves replaced and not dropped yet (a needle that reached only
            // the moved replica, after its copy was taken).
            s.into_iter()
                .map(|(_, u)| u)
                .chain(
                    v.info
                        .moved_away
                        .iter()
                        .filter(|&&sid| sid != target_id)
                        .filter_map(|sid| view.stores.get(sid))
                        .filter(|s| store_up(s))
                        .map(|s| s.url.clone()),
                )
                .collect()
        };
        for &alt in alts {
            let addr = NeedleAddr::new(p.volume_id, p.id, alt, p.cookie);
            let mut good = None;
            let mut why = Vec::new();
            for src in &sources {
                match self.repair_stores.get_needle(src, &addr).await {
                    Ok(n) => {
                        good = Some(n);
                        break;
                    }
                    Err(e) => why.push(format!("{src}: {e}")),
                }
            }
            let Some(n) = good else {
                return Err(format!(
                    "no replica serves {}/{}/{alt} intact: {}",
                    p.volume_id,
                    p.id,
                    why.join("; ")
                ));
            };
            let body = haystack_client::store::encode_batch(
                p.id,
                p.cookie,
                &[haystack_client::store::Needle {
                    alt,
                    content_type: n.content_type_str().to_string(),
                    data: n.data.clone(),
                }],
            );
            let answer: RepairAnswer = self
                .stores
                .repair(target, p.volume_id, body)
                .await
                .map_err(|e| format!("{target}: {e}"))?;
            if let Some(r) = answer.results.first() {
                if r.outcome == "deleted" {
                    metrics::counter!("haystack_directory_repair_anomalies_total").increment(1);
                    tracing::warn!(
                        photo_id = p.id,
                        alt,
                        %target,
                        "a live photo's needle is deleted on a replica; left deleted"
                    );
                }
            }
        }
        Ok(())
    }

    /// Deletes the needles `alts` of `photo_id` on the replica at `target`, whatever their
    /// cookie (the store's garbage-collection delete); a needle already gone is done, and so
    /// is a volume the store does not hold, unless `target` is an asynchronous `remote`
    /// replica (then it is still seeding: its seed may hold the needle).
    async fn delete_needles(
        &self,
        volume_id: u32,
        photo_id: u64,
        target: &str,
        alts: &[u32],
        remote: bool,
    ) -> Result<(), String> {
        let body = serde_json::json!({
            "needles": alts
                .iter()
                .map(|a| serde_json::json!({"key": photo_id.to_string(), "alt": a}))
                .collect::<Vec<_>>()
        });
        match self
            .repair_stores
            .gc::<_, serde_json::Value>(target, volume_id, &body)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("no_such_volume") && !remote => Ok(()),
            Err(e) => Err(format!("{target}: {e}")),
        }
    }

    /// One anti-entropy pass: the replicas of every volume whose replicas are all up are
    /// compared by the digests of their needle lists (one hash each when they are equal; per
    /// bucket, then the differing buckets' listings, when not), and every difference the
    /// photo records explain is queued for repair.
    pub async fn anti_entropy_once(&self) -> Result<AntiEntropyReport, DirectoryError> {
        let volumes: Vec<(u32, Vec<Replica>)> = {
            let view = self.view();
            view.volumes
                .iter()
                .filter(|(_, v)| !v.pending && v.replicas.len() >= 2)
                // Shards of an erasure-coded volume are not copies of each other.
                .filter(|(_, v)| v.info.ec.is_none())
                .filter(|(_, v)| {
                    v.replicas
                        .iter()
                        .all(|r| view.stores.get(&r.store_id).is_some_and(store_up))
                })
                .map(|(id, v)| (*id, v.replicas.clone()))
                .collect()
        };
        let mut report = AntiEntropyReport::default();
        for (id, replicas) in volumes {
            match self.compare_volume(id, &replicas).await {
                Ok(None) => report.compared += 1,
                Ok(Some(d)) => {
                    report.compared += 1;
                    report.differing += 1;
                    report.queued += d.queued;
                }
                Err(e) => {
                    tracing::warn!(volume = id, error = %e, "anti-entropy: comparing replicas failed")
                }
            }
        }
        metrics::counter!("haystack_directory_antientropy_volumes_total")
            .increment(report.compared as u64);
        metrics::counter!("haystack_directory_antientropy_queued_total")
            .increment(report.queued as u64);
        Ok(report)
    }

    async fn digests(
        &self,
        id: u32,
        replicas: &[Replica],
        buckets: u32,
    ) -> Result<Vec<DigestAnswer>, String> {
        let mut out = Vec::with_capacity(replicas.len());
        for r in replicas {
            let d: DigestAnswer = self
                .repair_stores
                .digest(&r.url, id, buckets)
                .await
                .map_err(|e| format!("{}: {e}", r.url))?;
            if d.buckets.len() != buckets as usize {
                return Err(format!("{} answered {} buckets", r.url, d.buckets.len()));
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Compares one volume's replicas. `None`: equal; `Some(d)`: they differed (`d.queued`
    /// repairs were queued now; `d.live` differences concern a live photo's needle, whether a
    /// copy was queued for it now, was queued already, or none can be: an anomaly).
    pub(super) async fn compare_volume(
        &self,
        id: u32,
        replicas: &[Replica],
    ) -> Result<Option<Differences>, String> {
        let roots = self.digests(id, replicas, 1).await?;
        if roots.iter().all(|d| d.buckets == roots[0].buckets) {
            return Ok(None);
        }
        let most = roots.iter().map(|d| d.needles).max().unwrap_or(0);
        let n = digest_buckets(most);
        let per = self.digests(id, replicas, n).await?;
        let differing: Vec<u32> = (0..n)
            .filter(|b| {
                let b = *b as usize;
                per.iter().any(|d| d.buckets[b] != per[0].buckets[b])
            })
            .collect();
        let mut found = Differences::default();
        for chunk in differing.chunks(MAX_LISTED_BUCKETS) {
            // (key, alt) -> per replica: None absent, Some(deleted).
            let mut seen: BTreeMap<(u64, u32), Vec<Option<bool>>> = BTreeMap::new();
            for (i, r) in replicas.iter().enumerate() {
                let l: Listing = self
                    .repair_stores
                    .needles_in_buckets(&r.url, id, chunk, n)
                    .await
                    .map_err(|e| format!("{}: {e}", r.url))?;
                for x in l.needles {
                    seen.entry((x.key, x.alt))
                        .or_insert_with(|| vec![None; replicas.len()])[i] = Some(x.deleted);
                }
            }
            for ((key, alt), states) in seen {
                if states.iter().all(|s| *s == states[0]) {
                    continue;
                }
                let (queued, live) = self
                    .settle_difference(id, replicas, key, alt, &states)
                    .await
                    .map_err(|e| e.to_string())?;
                found.queued += queued;
                found.live += usize::from(live);
            }
        }
        Ok(Some(found))
    }

    /// One needle the replicas disagree on; the photo record decides. Returns the repairs
    /// queued, and whether the needle is a live photo's.
    async fn settle_difference(
        &self,
        volume: u32,
        replicas: &[Replica],
        key: u64,
        alt: u32,
        states: &[Option<bool>],
    ) -> Result<(usize, bool), DirectoryError> {
        let Some(p) = self.meta.get_photo(key).await? else {
            // An upload not committed (yet, or ever): garbage collection's business.
            return Ok((0, false));
        };
        let p = p.value;
        let mut queued = 0;
        if !p.live() {
            for (r, s) in replicas.iter().zip(states) {
                if *s == Some(false) {
                    let added = self
                        .enqueue_repair(
                            key,
                            volume,
                            r.store_id,
                            RepairAction::Delete,
                            vec![alt],
                            "anti-entropy: a delete the replica missed",
                        )
                        .await?;
                    queued += usize::from(added);
                }
            }
            return Ok((queued, false));
        }
        if p.volume_id != volume || !p.alts().any(|a| a == alt) {
            return Ok((0, false));
        }
        let any_live = states.contains(&Some(false));
        for (r, s) in replicas.iter().zip(states) {
            match s {
                None if any_live => {
                    let added = self
                        .enqueue_repair(
                            key,
                            volume,
                            r.store_id,
                            RepairAction::Copy,
                            Vec::new(),
                            "anti-entropy: needle missing on the replica",
                        )
                        .await?;
                    queued += usize::from(added);
                }
                Some(true) => {
                    metrics::counter!("haystack_directory_repair_anomalies_total").increment(1);
                    tracing::warn!(
                        photo_id = key,
                        alt,
                        store_id = r.store_id,
                        "anti-entropy: a live photo's needle is deleted on a replica; left deleted"
                    );
                }
                _ => {}
            }
        }
        Ok((queued, true))
    }
}

/// What a comparison of a volume's replicas found (see [`Directory::compare_volume`]).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Differences {
    /// Repairs queued by this comparison.
    pub(super) queued: usize,
    /// Differences about a live photo's needle.
    pub(super) live: usize,
}

/// Whether another store id is registered at `s`'s URL (its machine replaced and registered
/// anew): what `s`'s id names there is gone.
fn url_taken(view: &View, s: &StoreMachine) -> bool {
    view.stores.values().any(|o| o.id != s.id && o.url == s.url)
}
