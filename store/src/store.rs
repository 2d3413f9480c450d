//! The store machine: the set of volumes under one data directory and the engine they share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use haystack_proto::VolumeInfo;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineKind, IoEngine};
use crate::error::{Result, StoreError};
use crate::volume::{Volume, VolumeConfig};

/// Store configuration. Every field has a default; validated once in [`Store::open`].
#[derive(Clone, Debug, Serialize, Deserialize)]
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
        if self.max_volume_bytes < 1 << 20 {
            return bad("max_volume_bytes must be at least 1 MiB");
        }
        if self.prealloc_step < 1 << 20 {
            return bad("prealloc_step must be at least 1 MiB");
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
    volumes: RwLock<HashMap<u32, Arc<Volume>>>,
    create_lock: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens every volume found in the data directory (creating the directory if needed).
    pub async fn open(cfg: StoreConfig) -> Result<Arc<Store>> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        crate::metrics::install();
        let engine = IoEngine::new(cfg.engine)?;
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
        let mut volumes = HashMap::new();
        for id in ids {
            let (dir, eng, vc) = (
                cfg.data_dir.clone(),
                engine.clone(),
                cfg.volume_config(None),
            );
            let v = tokio::task::spawn_blocking(move || Volume::open(&dir, id, eng, vc))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
            volumes.insert(id, v);
        }
        Ok(Arc::new(Store {
            cfg,
            engine,
            volumes: RwLock::new(volumes),
            create_lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn engine(&self) -> &IoEngine {
        &self.engine
    }

    pub fn volume(&self, id: u32) -> Result<Arc<Volume>> {
        self.volumes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or(StoreError::NoVolume(id))
    }

    /// Creates a volume; `max_bytes` overrides the configured maximum size.
    pub async fn create_volume(&self, id: u32, max_bytes: Option<u64>) -> Result<Arc<Volume>> {
        let _g = self.create_lock.lock().await;
        if self.volume(id).is_ok() {
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
        self.volumes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, v.clone());
        tracing::info!(volume = id, "volume created");
        Ok(v)
    }

    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        let mut v: Vec<_> = self
            .volumes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|v| v.id());
        v
    }

    pub fn list(&self) -> Vec<VolumeInfo> {
        self.volumes().iter().map(|v| v.info()).collect()
    }

    /// Flushes index checkpoints; call after the last write finished.
    pub fn close(&self) {
        for v in self.volumes() {
            v.flush_index();
        }
    }
}
