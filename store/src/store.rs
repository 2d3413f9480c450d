//! The store machine: the set of volumes under one data directory and the engine they share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use haystack_proto::VolumeInfo;
use haystack_service::sync::{read, write};
use serde::{Deserialize, Serialize};

use crate::engine::{EngineKind, IoEngine};
use crate::error::{Result, StoreError};
use crate::volume::{Volume, VolumeConfig};

/// Runs `f` on the blocking pool; a task that panicked is an I/O error.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
}

/// Removes each of `paths` that exists, in order; how many were there.
pub(crate) fn remove_if_present<P: AsRef<std::path::Path>>(paths: &[P]) -> std::io::Result<usize> {
    let mut removed = 0;
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

fn lock_map(
    m: &std::sync::Mutex<HashMap<u32, u32>>,
) -> std::sync::MutexGuard<'_, HashMap<u32, u32>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets a re-seed's incoming tag when the import ends, however it ends.
struct Reseeding<'a> {
    map: &'a std::sync::Mutex<HashMap<u32, u32>>,
    id: u32,
}

impl Drop for Reseeding<'_> {
    fn drop(&mut self) {
        lock_map(self.map).remove(&self.id);
    }
}

/// What a quarantined volume looks like in listings and heartbeats.
fn quarantine_info(cfg: &StoreConfig, id: u32, reason: String) -> VolumeInfo {
    let (dat, _, _) = crate::volume::volume_paths(&cfg.data_dir, id);
    let size = std::fs::metadata(&dat).map(|m| m.len()).unwrap_or(0);
    VolumeInfo {
        id,
        state: haystack_proto::VolumeState::Unavailable,
        size_bytes: size,
        max_bytes: size,
        needles: 0,
        deleted_needles: 0,
        dead_bytes: 0,
        reason: Some(format!("unavailable: {reason}")),
        compaction: None,
        scrubbed_unix: None,
        tag: None,
    }
}

/// Store configuration. Every field has a default; validated once in [`Store::open`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory holding the volume files (`vol-N.dat`, `vol-N.idx`, `vol-N.sidx`).
    pub data_dir: PathBuf,
    /// I/O engine: `auto` (io_uring, else pread/pwrite), `io_uring` or `sync`.
    pub engine: EngineKind,
    /// Maximum size of a new volume file, bytes. Default 32 GiB.
    pub max_volume_bytes: u64,
    /// Largest needle (one photo variant or video chunk) accepted, bytes. Default 64 MiB.
    pub max_needle_bytes: u64,
    /// Largest batch write (request body of a batch PUT), bytes. Default 256 MiB.
    pub max_write_bytes: u64,
    /// Volume files grow by preallocated steps of this many bytes. Default 1 GiB.
    pub prealloc_step: u64,
    /// Automatic compaction: a volume whose dead bytes exceed this fraction of its size (and
    /// `auto_compact_min_dead_bytes`) is compacted. 0 turns it off. Default 0.3.
    pub auto_compact_dead_ratio: f64,
    /// Automatic compaction leaves volumes with fewer dead bytes than this alone. Default
    /// 64 MiB.
    pub auto_compact_min_dead_bytes: u64,
    /// How often volumes are checked for automatic compaction, seconds. Default 60.
    pub auto_compact_interval_secs: u64,
    /// A volume write or fdatasync that has not completed after this many seconds fails, and
    /// the volume turns read-only (a hung disk must not hold writers forever). Default 30.
    pub io_timeout_secs: u64,
    /// The cluster's keys and the audit log (not in the config file: `haystack` reads the
    /// secret from its own file or the environment).
    #[serde(skip)]
    pub security: haystack_service::auth::Security,
    /// Background scrubbing rate, MiB/s; 0 turns it off. Default (absent): the data
    /// directory's file system in about a week, at least 1 MiB/s.
    pub scrub_mib_per_sec: Option<u64>,
    /// A scrub read slower than this (ms) pauses the scrubber for a second. Default 50.
    pub scrub_slow_read_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let v = VolumeConfig::default();
        StoreConfig {
            data_dir: PathBuf::from("data/store"),
            engine: EngineKind::Auto,
            max_volume_bytes: v.max_bytes,
            max_needle_bytes: v.max_needle_bytes,
            max_write_bytes: v.max_write_bytes,
            prealloc_step: v.prealloc_step,
            auto_compact_dead_ratio: 0.3,
            auto_compact_min_dead_bytes: 64 << 20,
            auto_compact_interval_secs: 60,
            io_timeout_secs: 30,
            security: Default::default(),
            scrub_mib_per_sec: None,
            scrub_slow_read_ms: 50,
        }
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(StoreError::BadRequest(format!("invalid store config: {m}")));
        if self.max_needle_bytes == 0 || self.max_needle_bytes > u32::MAX as u64 / 2 {
            return bad("max_needle_bytes must be between 1 and 2 GiB");
        }
        if self.max_write_bytes < self.max_needle_bytes + 512 {
            return bad("max_write_bytes must exceed max_needle_bytes");
        }
        if !(0.0..1.0).contains(&self.auto_compact_dead_ratio) {
            return bad("auto_compact_dead_ratio must be in [0, 1)");
        }
        if self.max_volume_bytes < 1 << 20 {
            return bad("max_volume_bytes must be at least 1 MiB");
        }
        if self.prealloc_step < 1 << 20 {
            return bad("prealloc_step must be at least 1 MiB");
        }
        if self.io_timeout_secs == 0 {
            return bad("io_timeout_secs must be at least 1");
        }
        Ok(())
    }

    fn volume_config(&self, max_bytes: Option<u64>) -> VolumeConfig {
        VolumeConfig {
            max_bytes: max_bytes.unwrap_or(self.max_volume_bytes),
            max_needle_bytes: self.max_needle_bytes,
            max_write_bytes: self.max_write_bytes,
            prealloc_step: self.prealloc_step,
        }
    }
}

pub struct Store {
    cfg: StoreConfig,
    engine: IoEngine,
    pub(crate) volumes: RwLock<HashMap<u32, Arc<Volume>>>,
    /// Volumes whose files are here but did not open: what they look like to the directory.
    pub(crate) quarantined: RwLock<HashMap<u32, VolumeInfo>>,
    pub(crate) create_lock: tokio::sync::Mutex<()>,
    /// Remote copies being re-seeded, and the tag of the copy on its way: heartbeats report
    /// that tag while the old copy still serves, so that the directory keeps the shipping
    /// with the replica the new copy comes from (not the one the old copy came from).
    reseeding: std::sync::Mutex<HashMap<u32, u32>>,
    /// Woken when a volume is created or stops taking writes (full, disk error): the
    /// heartbeat goes at once.
    changed: Arc<tokio::sync::Notify>,
    /// This store's shards of erasure-coded volumes (`crate::ec`).
    pub(crate) ec: RwLock<HashMap<u32, Arc<crate::ec::EcVolume>>>,
    /// The client erasure-coded reads fetch other shards' ranges with.
    pub(crate) peers: haystack_client::StoreClient,
    /// One erasure-coding build, install or rebuild at a time per store.
    pub(crate) ec_lock: tokio::sync::Mutex<()>,
    /// Held shared by every delete on an erasure-coded volume (from finding the volume's
    /// open instance to marking it) and exclusively by a switch to another shard or
    /// generation (from opening the new instance, which reads the delete log, to putting it
    /// in place): a delete acknowledged during a switch is never marked on the instance being
    /// replaced only.
    pub(crate) ec_deletes: tokio::sync::RwLock<()>,
    /// Orders and lags of shipping to asynchronous remote replicas (`crate::ship`).
    pub shipping: crate::ship::Shipping,
}

impl Store {
    /// Opens every volume found in the data directory (creating the directory if needed).
    pub async fn open(cfg: StoreConfig) -> Result<Arc<Store>> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        crate::metrics::install();
        let engine = IoEngine::new(cfg.engine)?
            .with_timeout(std::time::Duration::from_secs(cfg.io_timeout_secs));
        tracing::info!(engine = engine.kind().as_str(), data_dir = %cfg.data_dir.display(), "store opening");
        metrics::gauge!("haystack_store_io_engine", "engine" => engine.kind().as_str()).set(1.0);
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&cfg.data_dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_prefix("vol-")
                .and_then(|s| s.strip_suffix(".dat"))
                .and_then(|s| s.parse::<u32>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        // A bulk copy that died half way (`vol-N.dat.import`) is worth nothing.
        for entry in std::fs::read_dir(&cfg.data_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "import") {
                tracing::warn!(file = %path.display(), "removing an unfinished volume import");
                std::fs::remove_file(&path)?;
            }
            // A re-seed's staging directory (`vol-N.reseed`): before its rename the old copy
            // is whole; after it the new file holds every delete (an index file left here
            // only saves a scan).
            if path.extension().is_some_and(|e| e == "reseed") && path.is_dir() {
                tracing::warn!(dir = %path.display(), "removing an unfinished re-seed's staging");
                std::fs::remove_dir_all(&path)?;
                continue;
            }
            // A volume whose creation died half way (`vol-N.dat.tmp`) never held a needle.
            if path.to_string_lossy().ends_with(".dat.tmp") {
                tracing::warn!(file = %path.display(), "removing an unfinished volume creation");
                std::fs::remove_file(&path)?;
            }
        }
        let mut volumes = HashMap::new();
        let mut quarantined = HashMap::new();
        for id in ids {
            let (dir, eng, vc) = (
                cfg.data_dir.clone(),
                engine.clone(),
                cfg.volume_config(None),
            );
            let opened = tokio::task::spawn_blocking(move || Volume::open(&dir, id, eng, vc))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))
                .and_then(|r| r);
            match opened {
                Ok(v) => {
                    volumes.insert(id, v);
                }
                // One bad volume must not take the machine's healthy ones down with it: it is
                // quarantined (answers 503, reported to the directory as unavailable, counted
                // on /metrics) and its files are left as they are for repair.
                Err(e) => {
                    tracing::error!(volume = id, error = %e, "volume cannot be opened; quarantined");
                    quarantined.insert(id, quarantine_info(&cfg, id, e.to_string()));
                }
            }
        }
        let ec = crate::ec::ops::open_all(&cfg.data_dir, &engine, &mut quarantined).await?;
        metrics::gauge!("haystack_store_volumes_quarantined").set(quarantined.len() as f64);
        let changed = Arc::new(tokio::sync::Notify::new());
        for v in volumes.values() {
            v.notify_changes(changed.clone());
        }
        let peers = cfg
            .security
            .http_builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .build()
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let peer_creds =
            haystack_client::Credentials::internal(cfg.security.keys.as_ref(), "store");
        Ok(Arc::new(Store {
            cfg,
            engine,
            volumes: RwLock::new(volumes),
            quarantined: RwLock::new(quarantined),
            create_lock: tokio::sync::Mutex::new(()),
            reseeding: std::sync::Mutex::new(HashMap::new()),
            changed,
            ec: RwLock::new(ec),
            peers: haystack_client::StoreClient::with_timeout(
                peers,
                std::time::Duration::from_secs(10),
            )
            .with_credentials(peer_creds),
            ec_lock: tokio::sync::Mutex::new(()),
            ec_deletes: tokio::sync::RwLock::new(()),
            shipping: Default::default(),
        }))
    }

    /// Resolves when a volume was created or stopped taking writes since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn engine(&self) -> &IoEngine {
        &self.engine
    }

    pub fn volume(&self, id: u32) -> Result<Arc<Volume>> {
        if let Some(v) = read(&self.volumes).get(&id) {
            return Ok(v.clone());
        }
        match read(&self.quarantined).get(&id) {
            Some(q) => Err(StoreError::Unavailable {
                volume: id,
                reason: q.reason.clone().unwrap_or_default(),
            }),
            None => Err(StoreError::NoVolume(id)),
        }
    }

    /// Creates a volume; `max_bytes` overrides the configured maximum size.
    pub async fn create_volume(&self, id: u32, max_bytes: Option<u64>) -> Result<Arc<Volume>> {
        let _g = self.create_lock.lock().await;
        if !matches!(self.volume(id), Err(StoreError::NoVolume(_))) || self.ec_volume(id).is_some()
        {
            return Err(StoreError::VolumeExists(id));
        }
        if let Some(m) = max_bytes {
            if m < 1 << 20 {
                return Err(StoreError::BadRequest(
                    "max_bytes must be at least 1 MiB".into(),
                ));
            }
        }
        let (dir, eng, vc) = (
            self.cfg.data_dir.clone(),
            self.engine.clone(),
            self.cfg.volume_config(max_bytes),
        );
        let v = tokio::task::spawn_blocking(move || Volume::create(&dir, id, eng, vc))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        v.notify_changes(self.changed.clone());
        write(&self.volumes).insert(id, v.clone());
        // The directory counts a new replica only once a heartbeat reports it: send one now.
        self.changed.notify_one();
        tracing::info!(volume = id, "volume created");
        Ok(v)
    }

    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        let mut v: Vec<_> = read(&self.volumes).values().cloned().collect();
        v.sort_by_key(|v| v.id());
        v
    }

    /// Every volume's state, quarantined ones included (heartbeats, `GET /v1/volumes`).
    pub fn list(&self) -> Vec<VolumeInfo> {
        let mut l: Vec<VolumeInfo> = self.volumes().iter().map(|v| v.info()).collect();
        l.extend(read(&self.quarantined).values().cloned());
        // An erasure-coded volume shows as sealed, unless a replica of it is still here (an
        // encode whose replicas are not dropped yet): one entry per id.
        let mut seen: std::collections::HashSet<u32> = l.iter().map(|v| v.id).collect();
        for e in read(&self.ec).values() {
            if seen.insert(e.id()) {
                l.push(e.info());
            }
        }
        l.sort_by_key(|v| v.id);
        let reseeding = lock_map(&self.reseeding);
        for v in l.iter_mut() {
            if let Some(t) = reseeding.get(&v.id) {
                v.tag = Some(*t).filter(|t| *t != 0);
            }
        }
        l
    }

    /// Copies volume `id` from the store at `from` (its `GET /v1/volumes/{id}/export`): the
    /// bytes go to `vol-N.dat.import`, are synced, checked (superblock, length), renamed into
    /// place and opened, which rebuilds the index by a full scan (every needle's CRC checked).
    /// A sealed source gives a sealed copy. An existing replica here is replaced only when it
    /// holds no needle (the directory may have asked for an empty one first).
    pub async fn import_volume(&self, id: u32, from: &str) -> Result<VolumeInfo> {
        self.import_inner(id, from, false, false).await
    }

    /// Seeds an asynchronous remote replica of volume `id` from `from`'s export: the same
    /// copy as [`Store::import_volume`], marked a remote copy (shipping extends it, compaction
    /// leaves it alone). With `replace`, a remote copy held here already (its source no
    /// longer agrees with it) keeps serving until the new copy is whole, synced and checked,
    /// then gives way to it; an ordinary replica never is replaced.
    pub async fn import_remote_copy(
        &self,
        id: u32,
        from: &str,
        replace: bool,
    ) -> Result<VolumeInfo> {
        self.import_inner(id, from, true, replace).await
    }

    async fn import_inner(
        &self,
        id: u32,
        from: &str,
        remote_copy: bool,
        replace: bool,
    ) -> Result<VolumeInfo> {
        use futures_util::StreamExt;
        use std::io::Write;
        let _g = self.create_lock.lock().await;
        // A remote copy being re-seeded keeps serving (and stays on disk) until its
        // replacement is whole: a source lost mid-copy must not leave this store with nothing.
        let mut reseeding = None;
        if let Ok(v) = self.volume(id) {
            if replace && v.is_remote_copy() {
                reseeding = Some(v);
            } else if v.is_remote_copy() != remote_copy && v.info().needles > 0 {
                return Err(StoreError::VolumeExists(id));
            }
        }
        if let Err(e @ StoreError::Unavailable { .. }) = self.volume(id) {
            return Err(StoreError::BadRequest(format!(
                "{e}; its files are kept for inspection: import to another store"
            )));
        }
        // Every delete the old copy takes from here on is journaled for the new one (its
        // delete memory alone forgets after 10 minutes and past 4096 needles).
        let _journal = reseeding.as_ref().map(|v| v.journal_deletes());
        if let (None, Ok(v)) = (&reseeding, self.volume(id)) {
            if v.info().needles > 0 {
                return Err(StoreError::VolumeExists(id));
            }
            write(&self.volumes).remove(&id);
            let (dat, idx, sidx) = crate::volume::volume_paths(&self.cfg.data_dir, id);
            for p in [dat, idx, sidx] {
                let _ = std::fs::remove_file(p);
            }
            tracing::info!(volume = id, "empty replica dropped for an import");
        }
        let http = self
            .cfg
            .security
            .http_builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let bad_source = |m: String| StoreError::BadRequest(format!("import from {from}: {m}"));
        let resp = haystack_client::StoreClient::new(http)
            .with_credentials(haystack_client::Credentials::internal(
                self.cfg.security.keys.as_ref(),
                "store",
            ))
            .export(from, id)
            .await
            .map_err(|e| bad_source(e.to_string()))?;
        let expected = resp
            .content_length()
            .ok_or_else(|| bad_source("no Content-Length".into()))?;
        let sealed = resp
            .headers()
            .get("x-haystack-sealed")
            .is_some_and(|v| v == "true");
        let tmp = self.cfg.data_dir.join(format!("vol-{id}.dat.import"));
        let mut file = std::fs::File::create(&tmp)?;
        let mut got = 0u64;
        let mut body = resp.bytes_stream();
        let _incoming = Reseeding {
            map: &self.reseeding,
            id,
        };
        let mut head: Vec<u8> = Vec::new();
        let copied: Result<std::fs::File> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| bad_source(e.to_string()))?;
                got += chunk.len() as u64;
                let sb_len = crate::format::SUPERBLOCK_LEN as usize;
                if reseeding.is_some() && head.len() < sb_len {
                    head.extend_from_slice(&chunk[..chunk.len().min(sb_len - head.len())]);
                    if head.len() == sb_len {
                        if let Ok(sb) = crate::format::Superblock::decode(&head) {
                            lock_map(&self.reseeding).insert(id, sb.tag);
                            self.changed.notify_one();
                        }
                    }
                }
                file = tokio::task::spawn_blocking(move || {
                    file.write_all(&chunk)?;
                    Ok::<_, std::io::Error>(file)
                })
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
            }
            if got != expected {
                return Err(bad_source(format!("{got} bytes received of {expected}")));
            }
            file.sync_all()?;
            Ok(file)
        }
        .await;
        match copied {
            Ok(f) => drop(f),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        let checked = {
            let tmp = tmp.clone();
            tokio::task::spawn_blocking(move || {
                let mut sb = [0u8; crate::format::SUPERBLOCK_LEN as usize];
                std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&tmp)?, &mut sb, 0)?;
                let parsed = crate::format::Superblock::decode(&sb)
                    .map_err(|source| StoreError::BadVolumeFile { volume: id, source })?;
                if parsed.volume_id != id {
                    return Err(StoreError::BadRequest(format!(
                        "the source sent volume {} for volume {id}",
                        parsed.volume_id
                    )));
                }
                Ok(())
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
        };
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let (dir, eng, vc) = (
            self.cfg.data_dir.clone(),
            self.engine.clone(),
            self.cfg.volume_config(None),
        );
        let v = match &reseeding {
            Some(old) => {
                self.reseed_swap(id, old, &tmp, got, sealed, (eng, vc))
                    .await?
            }
            None => {
                let swapped = {
                    let (dir, tmp) = (dir.clone(), tmp.clone());
                    blocking(move || {
                        if remote_copy {
                            crate::volume::mark_remote_copy(&dir, id)?;
                        } else {
                            crate::volume::unmark_remote_copy(&dir, id)?;
                        }
                        let (dat, idx, sidx) = crate::volume::volume_paths(&dir, id);
                        // Index files an earlier import left (it failed after its rename)
                        // describe another file: never over these bytes.
                        remove_if_present(&[&sidx, &idx])?;
                        std::fs::rename(&tmp, &dat)?;
                        std::fs::File::open(&dir)?.sync_all()?;
                        Ok(())
                    })
                    .await
                };
                if let Err(e) = swapped {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                // Every byte received is the source's file up to its tail: damage in it is
                // skipped at the open, never taken for the end.
                // Its configured maximum comes from the superblock.
                let v = blocking(move || Volume::open_vouched(&dir, id, eng, vc, got)).await?;
                if sealed {
                    v.seal().await?;
                }
                v
            }
        };
        v.notify_changes(self.changed.clone());
        write(&self.volumes).insert(id, v.clone());
        let info = v.info();
        tracing::info!(
            volume = id,
            from,
            bytes = got,
            needles = info.needles,
            "volume imported"
        );
        Ok(info)
    }

    /// A re-seed's last steps, once the new copy (`tmp`, `got` bytes) is whole and synced:
    /// the new copy is opened in a staging directory and takes every delete the old copy
    /// (`old`, still serving) took, then its files replace the old one's, then it is opened
    /// in place. The deletes are flags in the new file before it is renamed into place, so no
    /// failure after the rename (nor a restart then) loses them. From the old copy's quiesce
    /// on, its writes and deletes wait on its gate; they are refused with a 503 once it is
    /// replaced (`Volume::set_replaced`), never answered from the replaced file.
    async fn reseed_swap(
        &self,
        id: u32,
        old: &Arc<Volume>,
        tmp: &std::path::Path,
        got: u64,
        sealed: bool,
        (eng, vc): (crate::engine::IoEngine, crate::volume::VolumeConfig),
    ) -> Result<Arc<Volume>> {
        let dir = self.cfg.data_dir.clone();
        let staging = dir.join(format!("vol-{id}.reseed"));
        let cleanup = |staging: &std::path::Path| {
            let _ = std::fs::remove_dir_all(staging);
        };
        let staged = {
            let (staging, tmp, eng, vc) =
                (staging.clone(), tmp.to_path_buf(), eng.clone(), vc.clone());
            blocking(move || {
                if staging.exists() {
                    std::fs::remove_dir_all(&staging)?;
                }
                std::fs::create_dir(&staging)?;
                let (dat, _, _) = crate::volume::volume_paths(&staging, id);
                std::fs::rename(&tmp, &dat)?;
                // Every byte received is the source's file up to its tail: damage in it is
                // skipped at the open, never taken for the end.
                Volume::open_vouched(&staging, id, eng, vc, got)
            })
            .await
        };
        let staged = match staged {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                cleanup(&staging);
                return Err(e);
            }
        };
        // Only if it is still the remote copy it was when the download began (not promoted
        // meanwhile: promotion takes the same lock, so it waited or came first).
        let same = self.volume(id).is_ok_and(|c| Arc::ptr_eq(&c, old));
        if !same || !old.is_remote_copy() {
            drop(staged);
            cleanup(&staging);
            return Err(StoreError::BadRequest(format!(
                "volume {id} changed during its re-seed; nothing replaced"
            )));
        }
        // No write, delete, seal or compaction of the old copy is in flight past this. It
        // stays in the map, serving reads from its open file, until the new copy replaces it
        // there: a request meanwhile must not hear `no_such_volume` (a delete's caller takes
        // a 404 as done).
        let _quiet = old.quiesce().await;
        // Deletes the old copy took while the new one downloaded (its source may have
        // exported the needle before its own delete), flagged in the new file.
        let carried = async {
            let n = staged.take_deletes_of(old).await?;
            if sealed {
                staged.seal().await?;
            }
            Ok::<_, StoreError>(n)
        }
        .await;
        match carried {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("haystack_store_reseed_deletes_carried_total")
                    .increment(n as u64);
                tracing::info!(
                    volume = id,
                    deleted = n,
                    "deletes of the replaced copy carried over"
                );
            }
            Err(e) => {
                // Nothing replaced: the old copy goes on serving, with its deletes.
                drop(staged);
                cleanup(&staging);
                return Err(e);
            }
        }
        staged.flush_index();
        drop(staged);
        old.flush_index();
        old.set_replaced(true);
        let renamed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapped = {
            let (dir, staging, renamed) = (dir.clone(), staging.clone(), renamed.clone());
            blocking(move || {
                crate::pause::blocking(&dir, "reseed-swap");
                crate::pause::fail(&dir, "reseed-unlink")?;
                let (dat, idx, sidx) = crate::volume::volume_paths(&dir, id);
                let (new_dat, new_idx, new_sidx) = crate::volume::volume_paths(&staging, id);
                // The old index files go before the rename (and the rename only if they are
                // gone), so a crash in between leaves the old file, re-indexed by a scan,
                // never an old index over new bytes; the new ones follow the new file.
                // The sorted index first: a sealed copy left with it and no index file would
                // open without the deletes logged since its seal.
                remove_if_present(&[&sidx, &idx])?;
                crate::volume::mark_remote_copy(&dir, id)?;
                std::fs::rename(&new_dat, &dat)?;
                renamed.store(true, std::sync::atomic::Ordering::Release);
                crate::pause::fail(&dir, "reseed-renamed")?;
                for (from, to) in [(&new_idx, &idx), (&new_sidx, &sidx)] {
                    if from.exists() {
                        std::fs::rename(from, to)?;
                    }
                }
                std::fs::File::open(&dir)?.sync_all()?;
                let _ = std::fs::remove_dir_all(&staging);
                Ok(())
            })
            .await
        };
        if let Err(e) = swapped {
            if renamed.load(std::sync::atomic::Ordering::Acquire) {
                // The old file is gone from the directory: the old copy keeps serving reads
                // and refusing writes and deletes (503) until a restart opens the new one
                // (its deletes are in it), even if a later re-seed fails before its rename.
                old.set_superseded();
                tracing::error!(volume = id, error = %e, "a re-seed failed after its rename; writes and deletes wait for a restart");
            } else {
                // Its file is as it was: it goes on serving and taking writes (a scan
                // rebuilds its index at the next open if its index files went).
                old.set_replaced(false);
                cleanup(&staging);
            }
            return Err(e);
        }
        tracing::warn!(
            volume = id,
            "remote copy replaced by a re-seed from its source"
        );
        let opened = blocking(move || Volume::open(&dir, id, eng, vc)).await;
        match &opened {
            // The flags are in its file; the memory makes a needle shipped after its delete
            // land deleted here too.
            Ok(v) => v.remember_deletes_of(old),
            Err(e) => {
                old.set_superseded();
                tracing::error!(volume = id, error = %e, "the re-seeded copy did not open; writes and deletes wait for a restart");
            }
        }
        opened
    }

    /// Promotion: remote copy `id` becomes an ordinary replica. Under the lock imports take,
    /// so that a re-seed running meanwhile finds it promoted and replaces nothing.
    pub async fn promote(&self, id: u32) -> Result<VolumeInfo> {
        let _g = self.create_lock.lock().await;
        let v = self.volume(id)?;
        v.clear_remote_copy()?;
        Ok(v.info())
    }

    /// Whom to wake when a volume is created or stops taking writes (the heartbeat worker).
    pub fn change_notify(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// The volumes automatic compaction should take, most dead bytes first: those past
    /// `auto_compact_dead_ratio` and `auto_compact_min_dead_bytes` (policy only, no I/O).
    pub fn compaction_candidates(&self) -> Vec<Arc<Volume>> {
        let ratio = self.cfg.auto_compact_dead_ratio;
        if ratio <= 0.0 {
            return Vec::new();
        }
        let mut c: Vec<_> = self
            .volumes()
            .into_iter()
            .map(|v| (v.info(), v))
            .filter(|(info, v)| {
                info.compaction.is_none()
                    && !v.is_remote_copy()
                    && info.dead_bytes >= self.cfg.auto_compact_min_dead_bytes
                    && info.dead_bytes as f64 >= ratio * info.size_bytes as f64
            })
            .collect();
        c.sort_by_key(|(info, _)| std::cmp::Reverse(info.dead_bytes));
        c.into_iter().map(|(_, v)| v).collect()
    }

    /// Flushes index checkpoints; call after the last write finished.
    pub fn close(&self) {
        for v in self.volumes() {
            v.flush_index();
        }
    }
}
