//! The store's erasure-coding operations: opening the shards found at start, building shards
//! from a sealed volume into a staging directory, installing a shard from another store's
//! staging (fetched, checked, synced, then switched to by the manifest's rename), rebuilding a
//! lost shard from k others, and dropping a replica once the directory switched to the shards.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use haystack_proto::VolumeInfo;
use serde::{Deserialize, Serialize};

use super::build::{self, staged_name, staging_dir, BuildReport, VolumeFileSource};
use super::format::{IndexFile, Manifest, ShardHeader, PIECE_BYTES, SHARD_HEADER_LEN};
use super::layout::{check_scheme, CODE_ALIGN};
use super::{index_path, manifest_path, shard_path, write_atomic, EcInfo, EcVolume};
use crate::engine::IoEngine;
use crate::error::{Result, StoreError};
use crate::store::Store;

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io(io::Error::other(e.to_string()))
}

/// Opens every erasure-coded volume whose manifest is in `dir`; one that does not open is
/// quarantined like a volume. Leftover temporary files of an install are removed.
pub(crate) async fn open_all(
    dir: &Path,
    engine: &IoEngine,
    quarantined: &mut HashMap<u32, VolumeInfo>,
) -> Result<HashMap<u32, Arc<EcVolume>>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("ec-") && name.ends_with(".tmp") {
            tracing::warn!(file = %path.display(), "removing an unfinished erasure-coding install");
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            continue;
        }
        if let Some(id) = name
            .strip_prefix("ec-")
            .and_then(|s| s.strip_suffix(".ecm"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    let mut out = HashMap::new();
    for id in ids {
        let (d, e) = (dir.to_path_buf(), engine.clone());
        match tokio::task::spawn_blocking(move || EcVolume::open(&d, id, e))
            .await
            .map_err(join_err)?
        {
            Ok(v) => {
                out.insert(id, v);
            }
            Err(e) => {
                tracing::error!(volume = id, error = %e, "erasure-coded volume cannot be opened; quarantined");
                quarantined.insert(
                    id,
                    VolumeInfo {
                        id,
                        state: haystack_proto::VolumeState::Unavailable,
                        size_bytes: 0,
                        max_bytes: 0,
                        needles: 0,
                        deleted_needles: 0,
                        dead_bytes: 0,
                        reason: Some(format!("unavailable: {e}")),
                        compaction: None,
                        scrubbed_unix: None,
                        tag: None,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// `POST /v1/ec/{v}/build`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuildRequest {
    pub generation: u32,
    pub k: u8,
    pub m: u8,
    pub block_bytes: u64,
}

/// `POST /v1/ec/{v}/install`: take shard `shard` of generation `generation` from the staging
/// of the store at `from`; `shards` names the store of every shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstallRequest {
    pub generation: u32,
    pub shard: u16,
    pub from: String,
    pub shards: Vec<String>,
    /// Switch to it at once (an encode); false: only install, `activate` later (a
    /// re-encode, whose stores switch after every one has its new shard).
    #[serde(default = "yes")]
    pub activate: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/ec/{v}/activate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActivateRequest {
    pub generation: u32,
    pub shard: u16,
    pub shards: Vec<String>,
}

/// Reads the needles of an erasure-coded volume for a re-encode (on a blocking thread).
struct EcSource {
    handle: tokio::runtime::Handle,
    ec: Arc<EcVolume>,
    peers: haystack_client::StoreClient,
    by_key: HashMap<(u64, u32), super::format::IndexRecord>,
}

impl build::NeedleSource for EcSource {
    fn read(&self, key: u64, alt: u32, _src_offset: u64, _extent: u32) -> Result<Vec<u8>> {
        let rec = self.by_key.get(&(key, alt)).ok_or(StoreError::NotFound)?;
        self.handle
            .block_on(self.ec.read_verified(rec, &self.peers))
    }
}

/// `POST /v1/ec/{v}/rebuild`: make shard `shard` here from k other shards; `shards` names the
/// store of every shard (this one included, at `shard`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RebuildRequest {
    pub generation: u32,
    pub shard: u16,
    pub shards: Vec<String>,
}

/// What a rebuild did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RebuildReport {
    pub volume: u32,
    pub shard: u16,
    pub bytes: u64,
    pub elapsed_ms: u64,
}

impl Store {
    /// This store's shard of erasure-coded volume `id`, if it holds one.
    pub fn ec_volume(&self, id: u32) -> Option<Arc<EcVolume>> {
        haystack_service::sync::read(&self.ec).get(&id).cloned()
    }

    /// Every shard of an erasure-coded volume this store holds.
    pub fn ec_volumes(&self) -> Vec<Arc<EcVolume>> {
        haystack_service::sync::read(&self.ec)
            .values()
            .cloned()
            .collect()
    }

    pub fn ec_volume_or_404(&self, id: u32) -> Result<Arc<EcVolume>> {
        self.ec_volume(id).ok_or(StoreError::NoVolume(id))
    }

    pub fn peers(&self) -> &haystack_client::StoreClient {
        &self.peers
    }

    /// Builds the shards of sealed volume `id` into a staging directory here: from its
    /// replica, or (a re-encode) from the live needles of the erasure-coded volume, read from
    /// their shards (or rebuilt), for a later generation.
    pub async fn ec_build(&self, id: u32, req: BuildRequest) -> Result<BuildReport> {
        check_scheme(req.k, req.m, req.block_bytes).map_err(StoreError::BadRequest)?;
        let _g = self.ec_lock.lock().await;
        let vol = match self.volume(id) {
            Err(StoreError::NoVolume(_)) if self.ec_volume(id).is_some() => {
                return self.ec_rebuild_generation(id, req).await;
            }
            r => r?,
        };
        if vol.info().state != haystack_proto::VolumeState::Sealed {
            return Err(StoreError::ReadOnly {
                volume: id,
                reason: "only a sealed volume can be erasure-coded: seal it first".into(),
            });
        }
        let (mut entries, file) = vol.live_entries();
        entries.sort_by_key(|e| e.2.offset);
        let needles: Vec<(u64, u32, u64, u32)> = entries
            .iter()
            .map(|(k, a, l)| (*k, *a, l.offset, l.extent))
            .collect();
        let (dir, disk, tag) = (
            self.config().data_dir.clone(),
            self.engine().disk().clone(),
            vol.tag(),
        );
        tokio::task::spawn_blocking(move || {
            let src = VolumeFileSource {
                disk: &disk,
                file: &file,
                tag,
            };
            build::build(
                &disk,
                &src,
                &needles,
                id,
                req.generation,
                tag,
                (req.k, req.m, req.block_bytes),
                &dir,
            )
        })
        .await
        .map_err(join_err)?
        .map_err(|e| match e {
            StoreError::Corrupt { offset, detail, .. } => StoreError::Corrupt {
                volume: id,
                offset,
                detail: format!("{detail}; repair the volume before encoding it"),
            },
            e => e,
        })
    }

    async fn ec_rebuild_generation(&self, id: u32, req: BuildRequest) -> Result<BuildReport> {
        let ec = self.ec_volume_or_404(id)?;
        if req.generation <= ec.generation() {
            return Err(StoreError::BadRequest(format!(
                "a re-encode needs a generation above the current {}",
                ec.generation()
            )));
        }
        let recs = ec.live_records();
        let g = ec.geometry();
        let needles: Vec<(u64, u32, u64, u32)> = recs
            .iter()
            .map(|r| {
                (
                    r.key,
                    r.alt,
                    r.block as u64 * g.block_bytes + r.offset as u64,
                    r.extent,
                )
            })
            .collect();
        let by_key: HashMap<(u64, u32), super::format::IndexRecord> =
            recs.iter().map(|r| ((r.key, r.alt), *r)).collect();
        let (dir, disk, tag) = (
            self.config().data_dir.clone(),
            self.engine().disk().clone(),
            ec.tag(),
        );
        let source = EcSource {
            handle: tokio::runtime::Handle::current(),
            ec,
            peers: self.peers.clone(),
            by_key,
        };
        tokio::task::spawn_blocking(move || {
            build::build(
                &disk,
                &source,
                &needles,
                id,
                req.generation,
                tag,
                (req.k, req.m, req.block_bytes),
                &dir,
            )
        })
        .await
        .map_err(join_err)?
    }

    /// Switches this store to generation `generation` of its shard (installed with
    /// `activate: false`): a re-encode's switch, store by store.
    pub async fn ec_activate(&self, id: u32, req: ActivateRequest) -> Result<EcInfo> {
        let _g = self.ec_lock.lock().await;
        let dir = self.config().data_dir.clone();
        let ix = std::fs::read(index_path(&dir, id, req.generation)).map_err(|_| {
            StoreError::BadRequest(format!(
                "generation {} is not installed here",
                req.generation
            ))
        })?;
        let index = IndexFile::decode(&ix).map_err(StoreError::BadRequest)?;
        if !shard_path(&dir, id, req.generation, req.shard as usize).exists() {
            return Err(StoreError::BadRequest(format!(
                "shard {} of generation {} is not installed here",
                req.shard, req.generation
            )));
        }
        if self
            .ec_volume(id)
            .is_some_and(|v| v.generation() == req.generation)
        {
            return Ok(self.ec_volume_or_404(id)?.ec_info());
        }
        self.switch_to(id, req.generation, req.shard, req.shards, index.geometry)
            .await
    }

    /// Removes the files of every generation but the current one, and the staging directories
    /// of other generations' builds (a re-encode that crashed before dropping its staging).
    pub async fn ec_cleanup(&self, id: u32) -> Result<u64> {
        let _g = self.ec_lock.lock().await;
        let cur = self.ec_volume_or_404(id)?.generation();
        let prefix = format!("ec-{id}-");
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.config().data_dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let Some(gen) = rest.split('.').next().and_then(|g| g.parse::<u32>().ok()) else {
                continue;
            };
            if gen == cur {
                continue;
            }
            // Files of other generations, and the staging of a build whose re-encode never
            // finished (a crash before its `drop_staged`).
            if path.is_dir() {
                if name.ends_with(".build") || name.ends_with(".build.tmp") {
                    std::fs::remove_dir_all(&path)?;
                    removed += 1;
                }
            } else {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        std::fs::File::open(&self.config().data_dir)?.sync_all()?;
        tracing::info!(
            volume = id,
            generation = cur,
            removed,
            "older erasure-coding generations removed"
        );
        Ok(removed)
    }

    /// The erasure-coded volumes this store holds any file of (`ec-{id}.*`, `ec-{id}-*`:
    /// manifest, delete log, shards, indexes, staging), served or not; sent in heartbeats.
    pub fn ec_file_volumes(&self) -> Vec<u32> {
        let mut ids = std::collections::BTreeSet::new();
        let Ok(entries) = std::fs::read_dir(&self.config().data_dir) else {
            return Vec::new();
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ec-")) else {
                continue;
            };
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if let Ok(id) = rest[..end].parse::<u32>() {
                ids.insert(id);
            }
        }
        ids.into_iter().collect()
    }

    /// Removes every file of erasure-coded volume `id` here and stops serving it: the
    /// manifest first (so a crash half way leaves files no manifest opens, reported and
    /// removed again at the next heartbeat), then shards and indexes of every generation,
    /// the delete log and builds' staging. The directory asks it (heartbeat answer,
    /// `drop_ec`) when the volume's record does not name this store: an abandoned encode's
    /// shard, or one rebuilt elsewhere. Replica files (`vol-{id}.*`) are not touched.
    pub async fn ec_discard(&self, id: u32) -> Result<u64> {
        let _g = self.ec_lock.lock().await;
        haystack_service::sync::write(&self.ec).remove(&id);
        let dir = self.config().data_dir.clone();
        let removed = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let mut removed = 0;
            match std::fs::remove_file(manifest_path(&dir, id)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let (a, b) = (format!("ec-{id}-"), format!("ec-{id}."));
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !name.starts_with(&a) && !name.starts_with(&b) {
                    continue;
                }
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
                removed += 1;
            }
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(removed)
        })
        .await
        .map_err(join_err)??;
        self.change_notify().notify_one();
        tracing::warn!(
            volume = id,
            removed,
            "erasure-coding files the directory's record does not name removed"
        );
        Ok(removed)
    }

    /// The path of a staged file (`s{i}` or `ecx`) of a finished build.
    pub fn ec_staged_path(
        &self,
        id: u32,
        generation: u32,
        name: &str,
    ) -> Result<std::path::PathBuf> {
        let ok = name == "ecx"
            || name
                .strip_prefix('s')
                .is_some_and(|n| n.parse::<u16>().is_ok());
        if !ok {
            return Err(StoreError::BadRequest(format!("no staged file {name:?}")));
        }
        let p = staging_dir(&self.config().data_dir, id, generation).join(name);
        if !p.exists() {
            return Err(StoreError::NotFound);
        }
        Ok(p)
    }

    /// Drops a build's staging directory.
    pub async fn ec_drop_staged(&self, id: u32, generation: u32) -> Result<()> {
        let d = staging_dir(&self.config().data_dir, id, generation);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
            tracing::info!(volume = id, generation, "erasure-coding staging dropped");
        }
        Ok(())
    }

    /// Installs a shard from another store's staging: index and shard fetched, every piece's
    /// CRC checked against the shard's table, both synced under their final names, then the
    /// manifest written (temporary file, sync, rename, directory sync): the switch.
    pub async fn ec_install(&self, id: u32, req: InstallRequest) -> Result<EcInfo> {
        let _g = self.ec_lock.lock().await;
        let dir = self.config().data_dir.clone();
        let bad = |m: String| StoreError::BadRequest(format!("install from {}: {m}", req.from));
        let ix_resp = self
            .peers
            .ec_staged(&req.from, id, req.generation, &staged_name(None))
            .await
            .map_err(|e| bad(e.to_string()))?;
        let ix_bytes = ix_resp.bytes().await.map_err(|e| bad(e.to_string()))?;
        let index = IndexFile::decode(&ix_bytes).map_err(bad)?;
        if index.volume != id || index.generation != req.generation {
            return Err(bad("the index is another volume's or generation's".into()));
        }
        if req.shards.len() != index.geometry.shards() || req.shard as usize >= req.shards.len() {
            return Err(StoreError::BadRequest(format!(
                "{} shard URLs for a {}+{} scheme",
                req.shards.len(),
                index.geometry.k,
                index.geometry.m
            )));
        }
        let shard = req.shard as usize;
        if !req.activate
            && self
                .ec_volume(id)
                .is_some_and(|v| v.generation() == req.generation)
        {
            return Err(StoreError::Busy(format!(
                "generation {} of volume {id} is the one serving here",
                req.generation
            )));
        }
        let final_path = shard_path(&dir, id, req.generation, shard);
        let tmp = final_path.with_extension(format!("s{shard}.tmp"));
        let resp = self
            .peers
            .ec_staged(&req.from, id, req.generation, &staged_name(Some(shard)))
            .await
            .map_err(|e| bad(e.to_string()))?;
        let mut file = std::fs::File::create(&tmp)?;
        let mut body = resp.bytes_stream();
        let copied: Result<()> = async move {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| bad(e.to_string()))?;
                file = tokio::task::spawn_blocking(move || {
                    file.write_all(&chunk)?;
                    Ok::<_, io::Error>(file)
                })
                .await
                .map_err(join_err)??;
            }
            Ok(())
        }
        .await;
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        crate::pause::at(&dir, "ec-install").await;
        let geometry = index.geometry;
        let (d2, t2, disk) = (dir.clone(), tmp.clone(), self.engine().disk().clone());
        let checked = tokio::task::spawn_blocking(move || -> Result<()> {
            let f = disk.open(&t2, OpenOptions::new().read(true).write(true))?;
            check_shard_file(&disk, &f, id, req.generation, shard, geometry)?;
            disk.sync_all(&f)?;
            std::fs::write(
                index_path(&d2, id, req.generation).with_extension("ecx.tmp"),
                &ix_bytes,
            )?;
            let ixt = index_path(&d2, id, req.generation).with_extension("ecx.tmp");
            std::fs::File::open(&ixt)?.sync_all()?;
            std::fs::rename(&ixt, index_path(&d2, id, req.generation))?;
            std::fs::rename(&t2, shard_path(&d2, id, req.generation, shard))?;
            std::fs::File::open(&d2)?.sync_all()?;
            Ok(())
        })
        .await
        .map_err(join_err)?;
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if !req.activate {
            // A re-encode's install: the new generation's files are in place, and this store
            // goes on serving its current one until `activate` (docs/FORMAT.md, re-encode
            // step 2). The answer is the serving shard's state.
            tracing::info!(
                volume = id,
                generation = req.generation,
                shard,
                "erasure-coded shard installed, not switched to yet"
            );
            return self.ec_volume_or_404(id).map(|v| v.ec_info());
        }
        self.switch_to(id, req.generation, req.shard, req.shards, geometry)
            .await
    }

    /// Writes the manifest (the switch) and opens the volume's new generation.
    async fn switch_to(
        &self,
        id: u32,
        generation: u32,
        shard: u16,
        shards: Vec<String>,
        geometry: super::layout::Geometry,
    ) -> Result<EcInfo> {
        let dir = self.config().data_dir.clone();
        let man = Manifest {
            version: 1,
            volume: id,
            generation,
            k: geometry.k,
            m: geometry.m,
            shard,
            shards,
        };
        let (d2, e2) = (dir.clone(), self.engine().clone());
        let bytes = serde_json::to_vec_pretty(&man).map_err(|e| io::Error::other(e.to_string()))?;
        let d3 = d2.clone();
        tokio::task::spawn_blocking(move || {
            crate::pause::blocking(&d3, "ec-switch");
            write_atomic(&d3, &manifest_path(&d3, id), &bytes)
        })
        .await
        .map_err(join_err)??;
        // No delete runs from the read of the delete log (in `open`) to the swap: one
        // acknowledged meanwhile would be marked on the old instance only.
        let switch = self.ec_deletes.write().await;
        let v = tokio::task::spawn_blocking(move || {
            let v = EcVolume::open(&d2, id, e2)?;
            crate::pause::blocking(&d2, "ec-switch-opened");
            Ok::<_, crate::error::StoreError>(v)
        })
        .await
        .map_err(join_err)??;
        let old = haystack_service::sync::write(&self.ec).insert(id, v.clone());
        drop(switch);
        // Another shard of the same generation (an abandoned encode's) is removed at once; an
        // older generation stays until `cleanup`, since peers still on it read its ranges
        // here (docs/FORMAT.md, re-encode steps 3 and 5).
        if let Some(old) = old {
            if old.generation() == generation && old.shard() != shard as usize {
                let _ = std::fs::remove_file(shard_path(&dir, id, generation, old.shard()));
            }
        }
        self.change_notify().notify_one();
        tracing::info!(
            volume = id,
            generation,
            shard,
            "erasure-coded shard installed"
        );
        Ok(v.ec_info())
    }

    /// Rebuilds shard `req.shard` here from k other shards, a piece at a time, then switches
    /// to it like an install. The index and the deletes come from a peer.
    pub async fn ec_rebuild(&self, id: u32, req: RebuildRequest) -> Result<RebuildReport> {
        let started = std::time::Instant::now();
        let _g = self.ec_lock.lock().await;
        let dir = self.config().data_dir.clone();
        let shard = req.shard as usize;
        // The index from any peer that has it.
        let mut index = None;
        let mut deletes = Vec::new();
        for (s, url) in req.shards.iter().enumerate() {
            if s == shard {
                continue;
            }
            let got: std::result::Result<EcPeerState, _> =
                self.peers.ec_get(url, id, Some("state")).await;
            let Ok(st) = got else { continue };
            if st.generation != req.generation {
                continue;
            }
            for (k, a) in &st.deleted {
                if let Ok(k) = k.parse::<u64>() {
                    deletes.push((k, *a));
                }
            }
            if index.is_none() {
                if let Ok(b) = self.peers.ec_index(url, id).await {
                    index = IndexFile::decode(&b)
                        .ok()
                        .filter(|ix| ix.generation == req.generation);
                }
            }
        }
        let index = index.ok_or_else(|| {
            StoreError::BadRequest("no other shard's store answered with the index".into())
        })?;
        let g = index.geometry;
        if req.shards.len() != g.shards() || shard >= g.shards() {
            return Err(StoreError::BadRequest(
                "shard list does not match the scheme".into(),
            ));
        }
        // A scratch volume handle over the peers (its own shard is the one being rebuilt, so
        // every range comes from the others).
        let final_path = shard_path(&dir, id, req.generation, shard);
        let tmp = final_path.with_extension(format!("s{shard}.tmp"));
        let disk = self.engine().disk().clone();
        let f = Arc::new(disk.create(&tmp)?);
        let shard_len = g.shard_len(shard);
        let fetcher = RangeFetcher {
            id,
            generation: req.generation,
            geometry: g,
            shards: req.shards.clone(),
            peers: self.peers.clone(),
        };
        let mut at = 0u64;
        let result: Result<()> = async {
            while at < shard_len {
                let len = PIECE_BYTES.min(shard_len - at);
                let alen = len.div_ceil(CODE_ALIGN) * CODE_ALIGN;
                let bytes = fetcher.rebuild(shard, at, alen).await?;
                self.engine()
                    .write_all_at(&f, SHARD_HEADER_LEN + at, bytes[..len as usize].to_vec())
                    .await?;
                at += len;
            }
            let h = ShardHeader {
                volume: id,
                generation: req.generation,
                shard: req.shard,
                geometry: g,
            };
            let (d2, f2) = (disk.clone(), f.clone());
            tokio::task::spawn_blocking(move || build::finish_shard(&d2, &f2, &h))
                .await
                .map_err(join_err)??;
            let ixp = index_path(&dir, id, req.generation);
            let ix_bytes = index.encode();
            let d3 = dir.clone();
            let t2 = tmp.clone();
            tokio::task::spawn_blocking(move || -> io::Result<()> {
                write_atomic(&d3, &ixp, &ix_bytes)?;
                std::fs::rename(&t2, shard_path(&d3, id, req.generation, shard))?;
                std::fs::File::open(&d3)?.sync_all()
            })
            .await
            .map_err(join_err)??;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let gen = req.generation;
        self.switch_to(id, gen, req.shard, req.shards, g).await?;
        if let Some(v) = self.ec_volume(id) {
            v.learn_deletes(&deletes).await?;
        }
        let report = RebuildReport {
            volume: id,
            shard: req.shard,
            bytes: shard_len,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        metrics::counter!("haystack_store_ec_shards_rebuilt_total").increment(1);
        tracing::info!(
            volume = id,
            shard,
            bytes = shard_len,
            elapsed_ms = report.elapsed_ms,
            "erasure-coded shard rebuilt"
        );
        Ok(report)
    }

    /// Drops a replica of a volume (`DELETE /v1/volumes/{v}`): a sealed one once the directory
    /// serves the volume from its shards, or (`moved`) one in any state once the directory
    /// moved the replica to another store and no repair needs this copy any more.
    pub async fn drop_replica(&self, id: u32, moved: bool) -> Result<()> {
        let _g = self.create_lock.lock().await;
        let v = match self.volume(id) {
            Ok(v) => Some(v),
            // A moved copy that cannot be opened (quarantined), or whose files an earlier drop
            // that failed half-way left: they go by name (404 when there are none).
            Err(StoreError::NoVolume(_) | StoreError::Unavailable { .. }) if moved => None,
            Err(e) => return Err(e),
        };
        if let Some(v) = &v {
            if !moved && v.info().state != haystack_proto::VolumeState::Sealed {
                return Err(StoreError::ReadOnly {
                    volume: id,
                    reason: "only a sealed replica can be dropped (or one moved away: ?moved=true)"
                        .into(),
                });
            }
        }
        // No write, delete, shipped append or compaction's final phase of it is in flight from
        // here on (a compaction committing after the unlinks would rename its files back into
        // place); those that waited find the copy gone (503), not a file unlinked under them.
        let _quiet = match &v {
            Some(v) => Some(v.quiesce().await),
            None => None,
        };
        crate::pause::at(&self.config().data_dir, "ec-drop").await;
        if let Some(v) = &v {
            // Imports and re-seeds replace a copy under `create_lock`, held here: the map
            // still holds `v`. Checked all the same, so that no other copy's files go.
            let mut volumes = haystack_service::sync::write(&self.volumes);
            if !volumes.get(&id).is_some_and(|cur| Arc::ptr_eq(cur, v)) {
                return Err(StoreError::Unavailable {
                    volume: id,
                    reason: "the copy was replaced meanwhile; nothing dropped".into(),
                });
            }
            volumes.remove(&id);
            drop(volumes);
            // It serves no write or delete again, whatever happens to its files below.
            v.set_superseded();
        }
        // In `all_files` order: the compaction marker first, the volume file late (while it
        // is there, a retry finds something to drop), the remote-copy mark last.
        let dir = &self.config().data_dir;
        let removed = crate::store::remove_if_present(&crate::volume::all_files(dir, id))?;
        // A quarantined copy whose files went: out of the heartbeats too. An erasure-coded
        // volume quarantined under the same id (its manifest is here) keeps its entry.
        if v.is_none() && !super::manifest_path(dir, id).exists() {
            haystack_service::sync::write(&self.quarantined).remove(&id);
        }
        std::fs::File::open(dir)?.sync_all()?;
        if v.is_none() && removed == 0 {
            return Err(StoreError::NoVolume(id));
        }
        self.change_notify().notify_one();
        if moved {
            tracing::info!(
                volume = id,
                files = removed,
                "replica dropped (moved to another store)"
            );
        } else {
            tracing::info!(volume = id, "sealed replica dropped (erasure-coded now)");
        }
        Ok(())
    }
}

/// A shard store's state as a peer rebuilding a shard needs it (`GET /v1/ec/{v}/state`); the
/// index file itself is `GET /v1/ec/{v}/index`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EcPeerState {
    pub generation: u32,
    /// Deleted needles: (decimal key, alt).
    pub deleted: Vec<(String, u32)>,
}

impl EcPeerState {
    pub fn of(v: &EcVolume) -> EcPeerState {
        EcPeerState {
            generation: v.generation(),
            deleted: v
                .deleted()
                .into_iter()
                .map(|(k, a)| (k.to_string(), a))
                .collect(),
        }
    }
}

/// Rebuilds ranges of a shard from the others, fetched over HTTP. Every source range is
/// asked `checked`: a store answers it only when the pieces it lies in match its shard's CRC
/// table, so a corrupt shard counts as missing and another one is decoded from; with fewer
/// than k good sources the rebuild fails (and writes nothing), rather than computing a new
/// CRC table over wrong bytes.
struct RangeFetcher {
    id: u32,
    generation: u32,
    geometry: super::layout::Geometry,
    shards: Vec<String>,
    peers: haystack_client::StoreClient,
}

impl RangeFetcher {
    async fn rebuild(&self, lost: usize, at: u64, len: u64) -> Result<Vec<u8>> {
        let g = self.geometry;
        let mut pending = futures_util::stream::FuturesUnordered::new();
        for s in 0..g.shards() {
            if s == lost {
                continue;
            }
            let url = self.shards[s].clone();
            pending.push(async move {
                let r = self
                    .peers
                    .ec_shard_range(&url, self.id, s, self.generation, (at, len), true)
                    .await;
                (s, r)
            });
        }
        let mut got: Vec<Option<Vec<u8>>> = vec![None; g.shards()];
        let mut have = 0;
        let mut failed = Vec::new();
        while let Some((s, r)) = pending.next().await {
            match r {
                Ok(b) if b.len() as u64 <= len => {
                    let mut b = b.to_vec();
                    b.resize(len as usize, 0);
                    got[s] = Some(b);
                    have += 1;
                    if have == g.k as usize {
                        break;
                    }
                }
                Ok(b) => failed.push(format!("shard {s}: {} bytes for {len}", b.len())),
                Err(e) => {
                    tracing::warn!(volume = self.id, shard = s, offset = at, error = %e, "rebuild source not used");
                    failed.push(format!("shard {s}: {e}"));
                }
            }
        }
        if have < g.k as usize {
            return Err(StoreError::Io(io::Error::other(format!(
                "rebuilding shard {lost} at offset {at}: only {have} other shards answered with \
                 pieces matching their CRCs, {} needed ({})",
                g.k,
                failed.join("; ")
            ))));
        }
        let refs: Vec<Option<&[u8]>> = got.iter().map(|r| r.as_deref()).collect();
        super::codec::reconstruct(g.k as usize, g.m as usize, &refs, lost)
            .map_err(|e| StoreError::Io(io::Error::other(e)))
    }
}

/// Checks a fetched shard file: header fields, length, CRC table and every piece.
fn check_shard_file(
    disk: &crate::disk::Disk,
    f: &std::fs::File,
    id: u32,
    generation: u32,
    shard: usize,
    geometry: super::layout::Geometry,
) -> Result<()> {
    let bad = |m: String| StoreError::BadRequest(format!("shard {shard} of volume {id}: {m}"));
    let mut hb = [0u8; SHARD_HEADER_LEN as usize];
    disk.read_exact_at(f, &mut hb, 0)?;
    let h = ShardHeader::decode(&hb).map_err(bad)?;
    if h.volume != id
        || h.generation != generation
        || h.shard as usize != shard
        || h.geometry != geometry
    {
        return Err(bad("header does not match the index".into()));
    }
    if f.metadata()?.len() != h.file_len() {
        return Err(bad("wrong length".into()));
    }
    let len = geometry.shard_len(shard);
    let mut table = vec![0u8; h.table_len() as usize];
    disk.read_exact_at(f, &mut table, SHARD_HEADER_LEN + len)?;
    let want = super::format::decode_table(&table, super::format::pieces(len)).map_err(bad)?;
    let got = build::piece_crcs(disk, f, len)?;
    if want != got {
        return Err(bad("a piece does not match its CRC".into()));
    }
    Ok(())
}
