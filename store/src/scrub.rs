//! The scrubber: a background worker that reads and checks every live needle of every volume
//! at a throttled rate, the volume scrubbed longest ago first, and reports each corrupt needle
//! to the directory, which has it rewritten from a good replica (no reader needs to meet it).
//! The shards of erasure-coded volumes this store holds take their turn at the same rate:
//! every piece of the shard (data or parity) is read and checked against the shard's CRC
//! table; a shard with a bad piece (or a bad table) is rebuilt in place from k other shards
//! (`Store::ec_rebuild`, the path a lost shard takes; the manifest names every shard's store,
//! so no directory round trip is needed and the directory's record does not change). Parity
//! recomputed from the data shards is left to `POST /v1/ec/{v}/verify?parity=true`: it costs
//! k remote reads per piece.
//!
//! Throttling: each step checks about a tenth of a second's worth of the configured rate,
//! then sleeps for the rest of that tenth. A needle read slower than `slow_read_ms` means the
//! disk is busy with foreground work: the scrubber then pauses for a second (counted in
//! `haystack_store_scrub_pauses_total`). The last finished pass of each volume is kept in
//! `scrub.json` in the data directory, so a restart goes on with the volumes least recently
//! scrubbed instead of starting over.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use haystack_client::DirectoryClient;
use haystack_proto::directory::{DamageKind, DamageReport};
use haystack_service::Next;
use serde::{Deserialize, Serialize};

use crate::ec::ops::RebuildRequest;
use crate::ec::EcVolume;
use crate::store::Store;
use crate::volume::{IndexEntry, Volume};

/// The scrubber's settings (`[store]` section: `scrub_mib_per_sec`, `scrub_slow_read_ms`).
#[derive(Clone, Debug)]
pub struct ScrubConfig {
    /// Bytes per second to read; `None`: [`weekly_rate`] of the data directory's file system;
    /// 0 turns scrubbing off.
    pub bytes_per_sec: Option<u64>,
    /// A needle read slower than this pauses the scrubber for a second.
    pub slow_read: Duration,
    /// A volume is not scrubbed again sooner than this after its last pass.
    pub min_interval: Duration,
    /// Where to report corrupt needles: the directory's URLs (tried in order) and this store's
    /// public URL (the store fills it from its heartbeat settings).
    pub report_to: Option<(Vec<String>, String)>,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            bytes_per_sec: None,
            slow_read: Duration::from_millis(50),
            min_interval: Duration::from_secs(3600),
            report_to: None,
        }
    }
}

/// The rate that scrubs the data directory's whole file system about once a week, at least
/// 1 MiB/s.
pub fn weekly_rate(capacity_bytes: u64) -> u64 {
    (capacity_bytes / (7 * 24 * 3600)).max(1 << 20)
}

/// The persisted progress: the last finished pass per volume.
#[derive(Default, Serialize, Deserialize)]
struct State {
    /// Volume id -> Unix seconds of its last finished pass.
    volumes: BTreeMap<u32, u64>,
    /// Erasure-coded volume id -> Unix seconds of the last finished pass over this store's
    /// shard of it.
    #[serde(default)]
    shards: BTreeMap<u32, u64>,
}

const STATE_FILE: &str = "scrub.json";

/// A pass in progress: over a replica's live needles, or over this store's shard of an
/// erasure-coded volume.
enum Pass {
    Replica(ReplicaPass),
    Shard(ShardPass),
}

/// A pass over a shard, piece by piece against its CRC table (`None`: the table is bad).
struct ShardPass {
    ec: Arc<EcVolume>,
    crcs: Option<Vec<u32>>,
    next: u64,
}

/// A pass over one volume in progress.
struct ReplicaPass {
    volume: Arc<Volume>,
    entries: Vec<IndexEntry>,
    file: Arc<File>,
    next: usize,
    corrupt: u64,
}

/// The scrubber worker.
pub struct Scrubber {
    store: Arc<Store>,
    cfg: ScrubConfig,
    /// The rate in force (bytes per second; 0: off).
    rate: u64,
    pass: Option<Pass>,
    directory: Option<DirectoryClient>,
    state_path: PathBuf,
    /// Corrupt needles already reported, with when (reported again after an hour if still
    /// corrupt on the next pass).
    reported: HashMap<(u32, u64, u32), Instant>,
    /// Erasure-coded volume id -> Unix seconds of the last finished pass over its shard here.
    shards_scrubbed: HashMap<u32, u64>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Scrubber {
    /// A scrubber over `store`; restores each volume's last pass from `scrub.json`.
    pub fn new(store: Arc<Store>, cfg: ScrubConfig) -> Scrubber {
        let state_path = store.config().data_dir.join(STATE_FILE);
        let state: State = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for v in store.volumes() {
            if let Some(at) = state.volumes.get(&v.id()) {
                v.set_scrubbed_unix(*at);
                metrics::gauge!("haystack_store_scrub_last_pass_unix_seconds", "volume" => v.id().to_string())
                    .set(*at as f64);
            }
        }
        let directory = cfg.report_to.as_ref().and_then(|(dirs, _)| {
            crate::heartbeat::directory_client(&store, dirs, Duration::from_secs(10))
                .map_err(
                    |e| tracing::warn!(error = %e, "scrub: corrupt needles will not be reported"),
                )
                .ok()
        });
        let rate = cfg.bytes_per_sec.unwrap_or_else(|| {
            weekly_rate(crate::heartbeat::disk_space(&store.config().data_dir).0)
        });
        Scrubber {
            store,
            cfg,
            rate,
            pass: None,
            directory,
            state_path,
            reported: HashMap::new(),
            shards_scrubbed: state.shards.into_iter().collect(),
        }
    }

    /// Writes `scrub.json` (temporary file, then rename; losing it only repeats work).
    /// How long to rest after a step that read `spent` bytes since `started`: a second when
    /// a read was slow (foreground I/O comes first); otherwise this step's bytes take
    /// `spent / rate` seconds of budget, and a pass that ended rests at least a fifth of a
    /// second (small volumes would spin).
    fn pace(&self, spent: u64, started: Instant, done: bool, slow: bool) -> Next {
        if slow {
            metrics::counter!("haystack_store_scrub_pauses_total").increment(1);
            return Next::Idle(Duration::from_secs(1));
        }
        let want = Duration::from_secs_f64(spent as f64 / self.rate as f64);
        let rest = want.saturating_sub(started.elapsed());
        Next::Idle(if done {
            rest.max(Duration::from_millis(200))
        } else {
            rest
        })
    }

    fn save(&self) {
        let state = State {
            volumes: self
                .store
                .volumes()
                .iter()
                .filter(|v| v.scrubbed_unix() > 0)
                .map(|v| (v.id(), v.scrubbed_unix()))
                .collect(),
            shards: self
                .store
                .ec_volumes()
                .iter()
                .filter_map(|e| Some((e.id(), *self.shards_scrubbed.get(&e.id())?)))
                .collect(),
        };
        let tmp = self.state_path.with_extension("json.tmp");
        let r = serde_json::to_vec(&state)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.state_path));
        if let Err(e) = r {
            tracing::warn!(error = %e, "saving the scrubber's progress failed");
        }
    }

    /// Starts a pass over the volume or shard scrubbed longest ago (never scrubbed first).
    async fn start_pass(&mut self) -> bool {
        let replica = self
            .store
            .volumes()
            .into_iter()
            .map(|v| (v.scrubbed_unix(), 0u8, v.id()))
            .min();
        let shard = self
            .store
            .ec_volumes()
            .into_iter()
            .map(|e| {
                let at = self.shards_scrubbed.get(&e.id()).copied().unwrap_or(0);
                (at, 1u8, e.id())
            })
            .min();
        let Some((at, kind, id)) = replica.into_iter().chain(shard).min() else {
            return false;
        };
        if at + self.cfg.min_interval.as_secs() > now_unix() {
            return false;
        }
        if kind == 1 {
            let Some(ec) = self.store.ec_volume(id) else {
                return false;
            };
            let crcs = match ec.crc_table().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(volume = id, error = %e, "scrub: reading a shard's CRC table failed");
                    None
                }
            };
            tracing::debug!(
                volume = id,
                shard = ec.shard(),
                pieces = ec.pieces(),
                "scrub pass over a shard starts"
            );
            self.pass = Some(Pass::Shard(ShardPass { ec, crcs, next: 0 }));
            return true;
        }
        let Ok(v) = self.store.volume(id) else {
            return false;
        };
        let (entries, file) = v.live_entries();
        tracing::debug!(
            volume = v.id(),
            needles = entries.len(),
            "scrub pass starts"
        );
        self.pass = Some(Pass::Replica(ReplicaPass {
            volume: v,
            entries,
            file,
            next: 0,
            corrupt: 0,
        }));
        true
    }

    /// One step of a pass over a shard: pieces checked up to the step's budget; a bad one (or
    /// a bad table) ends the pass with a rebuild of the shard.
    async fn step_shard(&mut self) -> Result<Next, String> {
        let budget = (self.rate / 10).max(1);
        let started = Instant::now();
        let mut spent = 0u64;
        let mut slow = false;
        let Some(Pass::Shard(p)) = self.pass.as_mut() else {
            return Ok(Next::Busy);
        };
        let (id, shard) = (p.ec.id(), p.ec.shard());
        let mut bad = p.crcs.is_none();
        if bad {
            tracing::error!(
                volume = id,
                shard,
                "scrub: the shard's CRC table is corrupt"
            );
        }
        let mut failed = None;
        if let Some(crcs) = &p.crcs {
            while spent < budget && (p.next as usize) < crcs.len() {
                let piece = p.next;
                p.next += 1;
                let t = Instant::now();
                match p.ec.check_piece(piece, crcs[piece as usize]).await {
                    Ok((true, n)) => spent += n,
                    Ok((false, n)) => {
                        spent += n;
                        tracing::error!(
                            volume = id,
                            shard,
                            piece,
                            "scrub: a shard piece does not match its CRC"
                        );
                        bad = true;
                        break;
                    }
                    Err(e) => {
                        failed = Some(format!(
                            "scrub read of shard {shard} of volume {id} failed: {e}"
                        ));
                        break;
                    }
                }
                if t.elapsed() > self.cfg.slow_read {
                    slow = true;
                    break;
                }
            }
        }
        let done = p.crcs.as_ref().is_none_or(|c| p.next as usize >= c.len());
        metrics::counter!("haystack_store_scrub_bytes_total").increment(spent);
        if let Some(e) = failed {
            return Err(e);
        }
        if bad {
            let Some(Pass::Shard(p)) = self.pass.take() else {
                return Ok(Next::Busy);
            };
            metrics::counter!("haystack_store_scrub_corrupt_shards_total").increment(1);
            // A failed rebuild leaves the shard unscrubbed: the next pass starts with it.
            self.rebuild_shard(p.ec).await?;
            self.shards_scrubbed.insert(id, now_unix());
            self.save();
            return Ok(Next::Idle(Duration::from_millis(200)));
        }
        if done {
            if let Some(Pass::Shard(p)) = self.pass.take() {
                self.shards_scrubbed.insert(id, now_unix());
                tracing::info!(
                    volume = id,
                    shard,
                    pieces = p.next,
                    "scrub pass over a shard finished"
                );
                self.save();
            }
        }
        Ok(self.pace(spent, started, done, slow))
    }

    /// Rebuilds this store's shard of `ec` in place from k other shards (its own task, so a
    /// shutdown during the step does not cut it half way).
    async fn rebuild_shard(&self, ec: Arc<EcVolume>) -> Result<(), String> {
        let (id, shard) = (ec.id(), ec.shard());
        let req = RebuildRequest {
            generation: ec.generation(),
            shard: shard as u16,
            shards: ec.manifest().shards,
        };
        drop(ec);
        let store = self.store.clone();
        match tokio::spawn(async move { store.ec_rebuild(id, req).await }).await {
            Ok(Ok(r)) => {
                metrics::counter!("haystack_store_scrub_shards_rebuilt_total").increment(1);
                tracing::warn!(
                    volume = id,
                    shard,
                    bytes = r.bytes,
                    elapsed_ms = r.elapsed_ms,
                    "scrub: corrupt shard rebuilt from the other shards"
                );
                Ok(())
            }
            Ok(Err(e)) => Err(format!(
                "rebuilding corrupt shard {shard} of volume {id} failed: {e}"
            )),
            Err(e) => Err(format!(
                "rebuilding corrupt shard {shard} of volume {id}: {e}"
            )),
        }
    }

    async fn report(&mut self, volume: u32, key: u64, alt: u32) {
        let (Some(dir), Some((_, me))) = (&self.directory, &self.cfg.report_to) else {
            return;
        };
        let id = (volume, key, alt);
        if self
            .reported
            .get(&id)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3600))
        {
            return;
        }
        let r = DamageReport {
            volume,
            key,
            alt,
            cookie: None,
            store_url: me.clone(),
            kind: DamageKind::Corrupt,
        };
        match dir.report_damage(&r).await {
            Ok(reply) => {
                tracing::info!(
                    volume,
                    key,
                    alt,
                    queued = reply.queued,
                    reason = reply.reason.as_deref().unwrap_or(""),
                    "scrub: corrupt needle reported"
                );
                self.reported.insert(id, Instant::now());
            }
            Err(e) => {
                tracing::warn!(volume, key, alt, error = %e, "scrub: reporting a corrupt needle failed; reported again next pass")
            }
        }
    }
}

impl haystack_service::Worker for Scrubber {
    async fn step(&mut self) -> Result<Next, String> {
        if self.rate == 0 {
            return Ok(Next::Done);
        }
        if self.pass.is_none() && !self.start_pass().await {
            return Ok(Next::Idle(Duration::from_secs(10)));
        }
        if matches!(self.pass, Some(Pass::Shard(_))) {
            return self.step_shard().await;
        }
        let budget = (self.rate / 10).max(1);
        let started = Instant::now();
        let mut spent = 0u64;
        let mut found = Vec::new();
        let mut slow = false;
        let mut failed = None;
        let done = {
            let Some(Pass::Replica(p)) = self.pass.as_mut() else {
                return Ok(Next::Busy);
            };
            while spent < budget && p.next < p.entries.len() {
                let (key, alt, loc) = p.entries[p.next];
                p.next += 1;
                let t = Instant::now();
                match p.volume.check_needle(&p.file, key, alt, loc).await {
                    Ok(None) => {}
                    Ok(Some(detail)) => {
                        p.corrupt += 1;
                        tracing::error!(volume = p.volume.id(), key, alt, offset = loc.offset, %detail, "scrub: corrupt needle");
                        found.push((p.volume.id(), key, alt));
                    }
                    Err(e) => {
                        failed = Some(format!(
                            "scrub read of volume {} failed: {e}",
                            p.volume.id()
                        ));
                        break;
                    }
                }
                spent += u64::from(loc.extent);
                if t.elapsed() > self.cfg.slow_read {
                    slow = true;
                    break;
                }
            }
            p.next >= p.entries.len()
        };
        metrics::counter!("haystack_store_scrub_bytes_total").increment(spent);
        metrics::counter!("haystack_store_scrub_corrupt_total").increment(found.len() as u64);
        for (v, k, a) in found {
            self.report(v, k, a).await;
        }
        if let Some(e) = failed {
            // A read error: the pass goes on at the next needle after the back-off.
            return Err(e);
        }
        if done {
            if let Some(Pass::Replica(p)) = self.pass.take() {
                let at = now_unix();
                p.volume.set_scrubbed_unix(at);
                metrics::gauge!("haystack_store_scrub_last_pass_unix_seconds", "volume" => p.volume.id().to_string())
                    .set(at as f64);
                tracing::info!(
                    volume = p.volume.id(),
                    needles = p.entries.len(),
                    corrupt = p.corrupt,
                    "scrub pass finished"
                );
                self.save();
            }
        }
        Ok(self.pace(spent, started, done, slow))
    }
}
