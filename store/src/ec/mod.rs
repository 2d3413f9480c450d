//! Erasure-coded sealed volumes (f4-style warm storage, docs/FORMAT.md "Erasure-coded
//! volumes"). A store holds one shard of such a volume, the volume's whole index and its
//! delete log, and a manifest naming the store of every shard. A read is one index lookup and
//! one disk read on the store holding the needle's data shard (read locally, or fetched from
//! that store as a raw range); when that store is down or the bytes fail their checks, the
//! needle's range is rebuilt from the same range of any k other shards (a degraded read,
//! counted). `layout` places needles, `codec` is the Reed-Solomon code, `format` the bytes of
//! the files, `build` the encoder.

pub mod build;
pub mod codec;
pub mod format;
mod index;
pub mod layout;
pub mod ops;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use haystack_client::StoreClient;
use haystack_proto::{VolumeInfo, VolumeState};
use serde::{Deserialize, Serialize};

use crate::engine::IoEngine;
use crate::error::{Result, StoreError};
use crate::volume::{Needle, NeedleEntry};
use format::{
    decode_table, delete_header, delete_record, parse_deletes, IndexFile, IndexRecord, Manifest,
    ShardHeader, DELETE_HEADER_LEN, DELETE_RECORD_LEN, PIECE_BYTES, SHARD_HEADER_LEN,
};
use index::EcIndex;
use layout::Geometry;

/// The largest raw range one request may ask of a shard.
pub const MAX_RANGE_BYTES: u64 = 64 << 20;

/// File names of an erasure-coded volume under a data directory.
pub fn manifest_path(dir: &Path, volume: u32) -> PathBuf {
    dir.join(format!("ec-{volume}.ecm"))
}
pub fn shard_path(dir: &Path, volume: u32, generation: u32, shard: usize) -> PathBuf {
    dir.join(format!("ec-{volume}-{generation}.s{shard}"))
}
pub fn index_path(dir: &Path, volume: u32, generation: u32) -> PathBuf {
    dir.join(format!("ec-{volume}-{generation}.ecx"))
}
pub fn delete_log_path(dir: &Path, volume: u32) -> PathBuf {
    dir.join(format!("ec-{volume}.ecd"))
}

/// What `GET /v1/ec/{v}` answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EcInfo {
    pub volume: u32,
    pub generation: u32,
    pub k: u8,
    pub m: u8,
    pub shard: u16,
    pub block_bytes: u64,
    pub blocks: u64,
    pub needles: u64,
    pub deleted_needles: u64,
    /// Bytes of live needles.
    pub live_bytes: u64,
    /// Bytes of deleted needles (what a re-encode would give back, over k data shards).
    pub dead_bytes: u64,
    /// Bytes of this store's shard file.
    pub shard_file_bytes: u64,
    pub shards: Vec<String>,
}

/// What `POST /v1/ec/{v}/verify` found on this store's shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EcVerifyReport {
    pub volume: u32,
    pub generation: u32,
    pub shard: u16,
    pub pieces: u64,
    /// Pieces (of `format::PIECE_BYTES`) whose CRC does not match the shard's table.
    pub bad_pieces: Vec<u64>,
    /// Needles of this data shard checked one by one, and those that failed.
    pub needles_checked: u64,
    pub corrupt: Vec<String>,
    /// For a parity shard: pieces checked against parity recomputed from the data shards
    /// (fetched from their stores), and those that differ.
    pub parity_checked: u64,
    pub parity_mismatches: Vec<u64>,
}

impl EcVerifyReport {
    pub fn ok(&self) -> bool {
        self.bad_pieces.is_empty() && self.corrupt.is_empty() && self.parity_mismatches.is_empty()
    }
}

/// One store's part of an erasure-coded volume.
pub struct EcVolume {
    id: u32,
    dir: PathBuf,
    engine: IoEngine,
    manifest: RwLock<Manifest>,
    geometry: Geometry,
    generation: u32,
    shard: usize,
    tag: u32,
    file: Arc<File>,
    file_len: u64,
    index: EcIndex,
    deleted: RwLock<HashSet<(u64, u32)>>,
    delete_log: Mutex<Arc<File>>,
    /// Held across an append to the delete log and, when it fails, the cut back to the
    /// records before it.
    delete_append: Arc<Mutex<()>>,
}

fn corrupt(volume: u32, offset: u64, detail: String) -> StoreError {
    metrics::counter!("haystack_store_crc_errors_total").increment(1);
    StoreError::Corrupt {
        volume,
        offset,
        detail,
    }
}

/// Reads `offset..offset + len` of a shard file's data (clamped to its end) after checking
/// every piece it lies in against the file's CRC table: a piece that does not match (or a
/// table that does not check out) is `Corrupt`, never answered. Blocking.
fn read_checked(
    disk: &crate::disk::Disk,
    f: &File,
    volume: u32,
    shard_len: u64,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let end = shard_len.min(offset.saturating_add(len));
    if offset >= end {
        return Ok(Vec::new());
    }
    let npieces = format::pieces(shard_len);
    let mut tb = vec![0u8; (npieces * 4 + 4) as usize];
    disk.read_exact_at(f, &mut tb, SHARD_HEADER_LEN + shard_len)?;
    let table = decode_table(&tb, npieces)
        .map_err(|e| corrupt(volume, offset, format!("shard CRC table: {e}")))?;
    let mut out = Vec::with_capacity((end - offset) as usize);
    for p in offset / PIECE_BYTES..end.div_ceil(PIECE_BYTES) {
        let at = p * PIECE_BYTES;
        let plen = PIECE_BYTES.min(shard_len - at);
        let b = build::read_padded(disk, f, at, plen, shard_len)?;
        if crc32fast::hash(&b) != table[p as usize] {
            tracing::warn!(
                volume,
                piece = p,
                "shard piece does not match its CRC; not answered"
            );
            return Err(corrupt(
                volume,
                at,
                format!("shard piece {p} does not match its CRC"),
            ));
        }
        let (from, to) = (offset.max(at) - at, end.min(at + plen) - at);
        out.extend_from_slice(&b[from as usize..to as usize]);
    }
    Ok(out)
}

/// Reads the whole file at `path`.
fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename (the directory
/// synced after).
pub fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

impl EcVolume {
    /// Opens the erasure-coded volume `volume` of a data directory from its manifest.
    /// Blocking.
    pub fn open(dir: &Path, volume: u32, engine: IoEngine) -> Result<Arc<EcVolume>> {
        let bad = |m: String| StoreError::Unavailable {
            volume,
            reason: format!("erasure-coded volume: {m}"),
        };
        let manifest: Manifest = serde_json::from_slice(&read_file(&manifest_path(dir, volume))?)
            .map_err(|e| bad(format!("manifest: {e}")))?;
        if manifest.version != 1 || manifest.volume != volume {
            return Err(bad("manifest of another version or volume".into()));
        }
        let generation = manifest.generation;
        let shard = manifest.shard as usize;
        let index = IndexFile::decode(&read_file(&index_path(dir, volume, generation))?)
            .map_err(|e| bad(format!("index: {e}")))?;
        let disk = engine.disk();
        let file = disk.open(
            &shard_path(dir, volume, generation, shard),
            OpenOptions::new().read(true),
        )?;
        let mut hb = [0u8; SHARD_HEADER_LEN as usize];
        disk.read_exact_at(&file, &mut hb, 0)?;
        let h = ShardHeader::decode(&hb).map_err(|e| bad(format!("shard header: {e}")))?;
        if h.volume != volume
            || h.generation != generation
            || h.shard as usize != shard
            || h.geometry != index.geometry
            || index.volume != volume
            || index.generation != generation
            || manifest.shards.len() != h.geometry.shards()
        {
            return Err(bad("shard, index and manifest disagree".into()));
        }
        let file_len = file.metadata()?.len();
        if file_len != h.file_len() {
            return Err(bad(format!(
                "shard file has {file_len} bytes, its header says {}",
                h.file_len()
            )));
        }
        let dpath = delete_log_path(dir, volume);
        let log = disk.open(
            &dpath,
            OpenOptions::new().read(true).append(true).create(true),
        )?;
        let raw = disk.read_all(&log)?;
        let deleted: HashSet<(u64, u32)> = if raw.is_empty() {
            disk.append(&log, &delete_header(volume))?;
            disk.sync_all(&log)?;
            HashSet::new()
        } else {
            let records =
                parse_deletes(&raw, volume).map_err(|e| bad(format!("delete log: {e}")))?;
            // A record torn by a power cut, a short write or a full disk (never acknowledged:
            // a delete answers after its record's sync) is cut off, synced, before anything
            // is appended: a record appended after it would be unreadable at the next open.
            let whole = (DELETE_HEADER_LEN + records.len() * DELETE_RECORD_LEN) as u64;
            if (raw.len() as u64) > whole {
                tracing::warn!(
                    volume,
                    bytes = raw.len() as u64 - whole,
                    "erasure-coded delete log: a torn record at its end cut off"
                );
                disk.set_len(&log, whole)?;
                disk.sync_all(&log)?;
            }
            records.into_iter().collect()
        };
        tracing::info!(
            volume,
            generation,
            shard,
            needles = index.records.len(),
            deleted = deleted.len(),
            "erasure-coded volume opened"
        );
        Ok(Arc::new(EcVolume {
            id: volume,
            dir: dir.to_path_buf(),
            engine,
            geometry: h.geometry,
            generation,
            shard,
            tag: index.tag,
            file: Arc::new(file),
            file_len,
            index: EcIndex::new(index.records, h.geometry.block_bytes),
            deleted: RwLock::new(deleted),
            delete_log: Mutex::new(Arc::new(log)),
            delete_append: Arc::new(Mutex::new(())),
            manifest: RwLock::new(manifest),
        }))
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn manifest(&self) -> Manifest {
        haystack_service::sync::read(&self.manifest).clone()
    }

    fn is_deleted(&self, key: u64, alt: u32) -> bool {
        haystack_service::sync::read(&self.deleted).contains(&(key, alt))
    }

    fn lookup(&self, key: u64, alt: u32) -> Result<IndexRecord> {
        let r = self.index.get(key, alt).ok_or(StoreError::NotFound)?;
        if self.is_deleted(key, alt) {
            return Err(StoreError::NotFound);
        }
        Ok(r)
    }

    /// Heap bytes of the needle index (packed: a few bytes a needle).
    pub fn index_heap_bytes(&self) -> usize {
        self.index.heap_bytes()
    }

    /// Every needle (listing for garbage collection and the encode's reconciliation).
    pub fn needles(&self) -> Vec<NeedleEntry> {
        let del = haystack_service::sync::read(&self.deleted);
        self.index
            .iter()
            .map(|r| NeedleEntry {
                key: r.key,
                alt: r.alt,
                deleted: del.contains(&(r.key, r.alt)),
                extent: r.extent,
            })
            .collect()
    }

    pub fn ec_info(&self) -> EcInfo {
        let del = haystack_service::sync::read(&self.deleted);
        let (mut live, mut dead, mut ndel) = (0u64, 0u64, 0u64);
        for r in self.index.iter() {
            if del.contains(&(r.key, r.alt)) {
                dead += r.extent as u64;
                ndel += 1;
            } else {
                live += r.extent as u64;
            }
        }
        let man = self.manifest();
        EcInfo {
            volume: self.id,
            generation: self.generation,
            k: self.geometry.k,
            m: self.geometry.m,
            shard: self.shard as u16,
            block_bytes: self.geometry.block_bytes,
            blocks: self.geometry.blocks,
            needles: self.index.len() as u64,
            deleted_needles: ndel,
            live_bytes: live,
            dead_bytes: dead,
            shard_file_bytes: self.file_len,
            shards: man.shards,
        }
    }

    /// The volume as heartbeats and listings show it: sealed.
    pub fn info(&self) -> VolumeInfo {
        let e = self.ec_info();
        VolumeInfo {
            id: self.id,
            state: VolumeState::Sealed,
            size_bytes: e.live_bytes + e.dead_bytes,
            max_bytes: e.live_bytes + e.dead_bytes,
            needles: e.needles,
            deleted_needles: e.deleted_needles,
            dead_bytes: e.dead_bytes,
            reason: Some(format!("erasure-coded {}+{}, shard {}", e.k, e.m, e.shard)),
            compaction: None,
            scrubbed_unix: None,
            tag: None,
        }
    }

    /// Raw bytes of this store's shard data (what peers fetch): clamped to the shard's end.
    /// `checked`: only after every piece they lie in matched the shard's CRC table (else
    /// `Corrupt`): what a rebuild asks, so that a corrupt shard is never decoded from.
    pub async fn shard_range(
        &self,
        shard: usize,
        generation: u32,
        (offset, len): (u64, u64),
        checked: bool,
    ) -> Result<Vec<u8>> {
        if len > MAX_RANGE_BYTES {
            return Err(StoreError::BadRequest(format!(
                "at most {MAX_RANGE_BYTES} bytes per range"
            )));
        }
        if shard != self.shard {
            return Err(StoreError::NotFound);
        }
        if generation == self.generation {
            if checked {
                return self.read_local_checked(offset, len).await;
            }
            return self.read_local(offset, len).await;
        }
        // Another generation's file still here (a re-encode's new one installed but not
        // switched to yet, or the previous one a peer has not left yet).
        let path = shard_path(&self.dir, self.id, generation, shard);
        let disk = self.engine.disk().clone();
        let id = self.id;
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
                Err(e) => return Err(e.into()),
            };
            let mut hb = [0u8; SHARD_HEADER_LEN as usize];
            disk.read_exact_at(&f, &mut hb, 0)?;
            let h = ShardHeader::decode(&hb)
                .map_err(|e| StoreError::Io(io::Error::other(format!("shard header: {e}"))))?;
            let shard_len = h.geometry.shard_len(shard);
            if checked {
                return read_checked(&disk, &f, id, shard_len, offset, len);
            }
            Ok(build::read_padded(&disk, &f, offset, len, shard_len)?
                [..shard_len.saturating_sub(offset).min(len) as usize]
                .to_vec())
        })
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?
    }

    /// Live needles in layout order (a re-encode's source).
    pub fn live_records(&self) -> Vec<IndexRecord> {
        let del = haystack_service::sync::read(&self.deleted);
        let mut v: Vec<IndexRecord> = self
            .index
            .iter()
            .filter(|r| !del.contains(&(r.key, r.alt)))
            .collect();
        v.sort_by_key(|r| (r.block, r.offset));
        v
    }

    /// The tag of the needles (the source volume's).
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// A needle's whole extent, checked (magic, CRCs, key, tag; not the cookie): from its data
    /// shard, else rebuilt from k others. What a re-encode copies.
    pub async fn read_verified(&self, rec: &IndexRecord, peers: &StoreClient) -> Result<Vec<u8>> {
        let (shard, at) = self.geometry.locate(rec.block as u64, rec.offset as u64);
        let healthy = if shard == self.shard {
            self.read_local(at, rec.extent as u64).await
        } else {
            let url = self.manifest().shards[shard].clone();
            peers
                .ec_shard_range(
                    &url,
                    self.id,
                    shard,
                    self.generation,
                    (at, rec.extent as u64),
                    false,
                )
                .await
                .map(|b| b.to_vec())
                .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))
        };
        if let Ok(b) = healthy {
            if build::check_needle(&b, rec.key, rec.alt, self.tag, at).is_ok() {
                return Ok(b);
            }
        }
        metrics::counter!("haystack_store_ec_degraded_reads_total").increment(1);
        let b = self.rebuild_range(rec, shard, peers, false).await?;
        if build::check_needle(&b, rec.key, rec.alt, self.tag, at).is_ok() {
            return Ok(b);
        }
        // A source shard's bytes were wrong: again, from pieces that match their CRC tables.
        tracing::warn!(
            volume = self.id,
            key = rec.key,
            alt = rec.alt,
            "degraded read decoded wrong bytes; decoding again from checked pieces"
        );
        let b = self.rebuild_range(rec, shard, peers, true).await?;
        build::check_needle(&b, rec.key, rec.alt, self.tag, at).map_err(|e| match e {
            StoreError::Corrupt { offset, detail, .. } => corrupt(self.id, offset, detail),
            e => e,
        })?;
        Ok(b)
    }

    async fn read_local(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let shard_len = self.geometry.shard_len(self.shard);
        let have = shard_len.saturating_sub(offset).min(len);
        if have == 0 {
            return Ok(Vec::new());
        }
        let (b, ops) = self
            .engine
            .read_at_counted(&self.file, SHARD_HEADER_LEN + offset, have as usize)
            .await
            .map_err(|e| {
                metrics::counter!("haystack_store_read_errors_total").increment(1);
                StoreError::Io(e)
            })?;
        crate::metrics::hot().get_disk_reads.increment(ops as u64);
        crate::metrics::hot().bytes_read.increment(b.len() as u64);
        Ok(b)
    }

    /// [`read_local`](Self::read_local), the pieces checked against the shard's CRC table.
    async fn read_local_checked(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (disk, f, id) = (self.engine.disk().clone(), self.file.clone(), self.id);
        let shard_len = self.geometry.shard_len(self.shard);
        tokio::task::spawn_blocking(move || read_checked(&disk, &f, id, shard_len, offset, len))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?
    }

    /// A needle's bytes checked (magic, CRCs, key, alternate key, tag) and turned into a
    /// [`Needle`]; a wrong cookie or the deleted flag is `NotFound`.
    fn finish(&self, rec: &IndexRecord, cookie: u64, buf: Vec<u8>) -> Result<Needle> {
        let at = rec.block as u64 * self.geometry.block_bytes + rec.offset as u64;
        let p =
            crate::format::parse_needle(&buf).map_err(|e| corrupt(self.id, at, e.to_string()))?;
        if p.header.key != rec.key || p.header.alt != rec.alt || p.header.tag != self.tag {
            return Err(corrupt(self.id, at, "the bytes are another needle".into()));
        }
        if p.header.deleted() || p.header.cookie != cookie {
            return Err(StoreError::NotFound);
        }
        let buf = Bytes::from(buf);
        Ok(Needle {
            key: rec.key,
            alt: rec.alt,
            cookie,
            crc: p.crc,
            content_type: String::from_utf8_lossy(&buf[p.content_type.clone()]).into_owned(),
            data: buf.slice(p.data),
        })
    }

    /// Reads a needle: from its data shard (here, or on the store holding it), else rebuilt
    /// from k other shards.
    pub async fn read(
        &self,
        key: u64,
        alt: u32,
        cookie: u64,
        peers: &StoreClient,
    ) -> Result<Needle> {
        let rec = self.lookup(key, alt)?;
        let (shard, at) = self.geometry.locate(rec.block as u64, rec.offset as u64);
        let healthy = if shard == self.shard {
            metrics::counter!("haystack_store_ec_reads_total", "path" => "local").increment(1);
            self.read_local(at, rec.extent as u64).await
        } else {
            metrics::counter!("haystack_store_ec_reads_total", "path" => "remote").increment(1);
            let url = self.manifest().shards[shard].clone();
            peers
                .ec_shard_range(
                    &url,
                    self.id,
                    shard,
                    self.generation,
                    (at, rec.extent as u64),
                    false,
                )
                .await
                .map(|b| b.to_vec())
                .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))
        };
        let first = match healthy {
            Ok(b) if b.len() == rec.extent as usize => self.finish(&rec, cookie, b),
            Ok(b) => Err(corrupt(
                self.id,
                at,
                format!("shard answered {} bytes of {}", b.len(), rec.extent),
            )),
            Err(e) => Err(e),
        };
        match first {
            Err(StoreError::Corrupt { .. }) | Err(StoreError::Io(_)) => {}
            other => return other,
        }
        if let Err(e) = &first {
            tracing::warn!(volume = self.id, key, alt, shard, error = %e, "data shard read failed; degraded read");
        }
        metrics::counter!("haystack_store_ec_degraded_reads_total").increment(1);
        let buf = self.rebuild_range(&rec, shard, peers, false).await?;
        match self.finish(&rec, cookie, buf) {
            Err(StoreError::Corrupt { .. }) => {
                // A source shard's bytes were wrong (the needle's CRC caught it): again, from
                // pieces that match their shards' CRC tables, skipping the corrupt shard.
                tracing::warn!(
                    volume = self.id,
                    key,
                    alt,
                    "degraded read decoded wrong bytes; decoding again from checked pieces"
                );
                let buf = self.rebuild_range(&rec, shard, peers, true).await?;
                self.finish(&rec, cookie, buf)
            }
            other => other,
        }
    }

    /// Rebuilds a needle's bytes from the same range of k shards other than `lost`;
    /// `checked`: from pieces that match their shards' CRC tables only.
    async fn rebuild_range(
        &self,
        rec: &IndexRecord,
        lost: usize,
        peers: &StoreClient,
        checked: bool,
    ) -> Result<Vec<u8>> {
        let (a0, alen) = Geometry::aligned(rec.offset as u64, rec.extent as u64);
        let row_base = (rec.block as u64 / self.geometry.k as u64) * self.geometry.block_bytes;
        let ranges = self
            .fetch_row_ranges(lost, (row_base + a0, alen), peers, checked)
            .await?;
        let g = &self.geometry;
        let refs: Vec<Option<&[u8]>> = ranges.iter().map(|r| r.as_deref()).collect();
        let out = codec::reconstruct(g.k as usize, g.m as usize, &refs, lost)
            .map_err(|e| StoreError::Io(io::Error::other(e)))?;
        let from = (rec.offset as u64 - a0) as usize;
        Ok(out[from..from + rec.extent as usize].to_vec())
    }

    /// The range `at..at + len` of shard data from k shards other than `lost` (zeros past a
    /// shard's end), fetched at once from every other shard; `None` for the others.
    /// `checked`: a shard answers only pieces that match its CRC table, so a corrupt one
    /// counts as missing and another is used.
    pub async fn fetch_row_ranges(
        &self,
        lost: usize,
        (at, len): (u64, u64),
        peers: &StoreClient,
        checked: bool,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let g = self.geometry;
        let man = self.manifest();
        let mut pending = FuturesUnordered::new();
        for s in 0..g.shards() {
            if s == lost {
                continue;
            }
            let url = man.shards[s].clone();
            let local = s == self.shard;
            pending.push(async move {
                let r = if local && checked {
                    self.read_local_checked(at, len).await
                } else if local {
                    self.read_local(at, len).await
                } else {
                    peers
                        .ec_shard_range(&url, self.id, s, self.generation, (at, len), checked)
                        .await
                        .map(|b| b.to_vec())
                        .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))
                };
                (s, r)
            });
        }
        let mut out: Vec<Option<Vec<u8>>> = vec![None; g.shards()];
        let mut have = 0;
        let mut last_err = None;
        while let Some((s, r)) = pending.next().await {
            match r {
                Ok(mut b) if b.len() as u64 <= len => {
                    b.resize(len as usize, 0);
                    out[s] = Some(b);
                    have += 1;
                    if have == g.k as usize {
                        return Ok(out);
                    }
                }
                Ok(_) => last_err = Some(format!("shard {s} answered too many bytes")),
                Err(e) => {
                    tracing::warn!(volume = self.id, shard = s, error = %e, "shard range unavailable");
                    last_err = Some(e.to_string());
                }
            }
        }
        Err(StoreError::Io(io::Error::other(format!(
            "only {have} of the {} shards needed answered: {}",
            g.k,
            last_err.unwrap_or_default()
        ))))
    }

    /// Deletes a needle: a record appended to the delete log and synced, then hidden. `cookie`
    /// None: whatever its cookie (garbage collection).
    pub async fn delete(
        &self,
        key: u64,
        alt: u32,
        cookie: Option<u64>,
        peers: &StoreClient,
    ) -> Result<()> {
        let rec = self.lookup(key, alt)?;
        if let Some(c) = cookie {
            // The cookie is in the needle: read it (healthy or degraded).
            self.read(rec.key, rec.alt, c, peers).await?;
        }
        self.append_deletes(delete_record(key, alt).to_vec())
            .await?;
        haystack_service::sync::write(&self.deleted).insert((key, alt));
        tracing::info!(
            volume = self.id,
            key,
            alt,
            "needle deleted on an erasure-coded volume"
        );
        Ok(())
    }

    /// This store's shard's CRC table: one CRC32 per piece of `format::PIECE_BYTES`; `None`
    /// when the table itself does not check out.
    pub async fn crc_table(&self) -> Result<Option<Vec<u32>>> {
        let shard_len = self.geometry.shard_len(self.shard);
        let npieces = format::pieces(shard_len);
        let table = self
            .engine
            .read_at(
                &self.file,
                SHARD_HEADER_LEN + shard_len,
                (npieces * 4 + 4) as usize,
            )
            .await?;
        Ok(decode_table(&table, npieces).ok())
    }

    /// Pieces of this store's shard (the scrubber's unit of work).
    pub fn pieces(&self) -> u64 {
        format::pieces(self.geometry.shard_len(self.shard))
    }

    /// Reads piece `p` of this store's shard and checks it against `want`, its CRC in the
    /// table; answers whether it matched and how many bytes were read.
    pub async fn check_piece(&self, p: u64, want: u32) -> Result<(bool, u64)> {
        let shard_len = self.geometry.shard_len(self.shard);
        let at = p * PIECE_BYTES;
        let b = self
            .read_local(at, PIECE_BYTES.min(shard_len.saturating_sub(at)))
            .await?;
        let ok = crc32fast::hash(&b) == want;
        if !ok {
            metrics::counter!("haystack_store_crc_errors_total").increment(1);
        }
        Ok((ok, b.len() as u64))
    }

    /// Checks this store's shard: every piece against the CRC table, every needle of a data
    /// shard, and for a parity shard with `parity` set, every piece against parity recomputed
    /// from the data shards.
    pub async fn verify(&self, parity: bool, peers: &StoreClient) -> Result<EcVerifyReport> {
        let g = self.geometry;
        let shard_len = g.shard_len(self.shard);
        let npieces = self.pieces();
        let mut report = EcVerifyReport {
            volume: self.id,
            generation: self.generation,
            shard: self.shard as u16,
            pieces: npieces,
            bad_pieces: Vec::new(),
            needles_checked: 0,
            corrupt: Vec::new(),
            parity_checked: 0,
            parity_mismatches: Vec::new(),
        };
        let Some(crcs) = self.crc_table().await? else {
            report.bad_pieces = (0..npieces).collect();
            return Ok(report);
        };
        for (p, want) in crcs.iter().enumerate() {
            if !self.check_piece(p as u64, *want).await?.0 {
                report.bad_pieces.push(p as u64);
            }
        }
        if self.shard < g.k as usize {
            for r in self.index.iter() {
                let (s, at) = g.locate(r.block as u64, r.offset as u64);
                if s != self.shard {
                    continue;
                }
                report.needles_checked += 1;
                let b = self.read_local(at, r.extent as u64).await?;
                if let Err(e) = build::check_needle(&b, r.key, r.alt, self.tag, at) {
                    report.corrupt.push(format!("{}/{}: {e}", r.key, r.alt));
                }
            }
        } else if parity {
            let k = g.k as usize;
            for (p, _) in crcs.iter().enumerate() {
                let at = p as u64 * PIECE_BYTES;
                let len = PIECE_BYTES.min(shard_len - at);
                let alen = len.div_ceil(layout::CODE_ALIGN) * layout::CODE_ALIGN;
                let man = self.manifest();
                let mut data = Vec::with_capacity(k);
                for s in 0..k {
                    let mut b = peers
                        .ec_shard_range(
                            &man.shards[s],
                            self.id,
                            s,
                            self.generation,
                            (at, alen),
                            false,
                        )
                        .await
                        .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?
                        .to_vec();
                    b.resize(alen as usize, 0);
                    data.push(b);
                }
                let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                let par = codec::parity(k, g.m as usize, &refs)
                    .map_err(|e| StoreError::Io(io::Error::other(e)))?;
                let mine = self.read_local(at, len).await?;
                report.parity_checked += 1;
                if par[self.shard - k][..len as usize] != mine[..] {
                    report.parity_mismatches.push(p as u64);
                }
            }
        }
        if !report.ok() {
            tracing::error!(
                volume = self.id,
                shard = self.shard,
                bad_pieces = report.bad_pieces.len(),
                corrupt = report.corrupt.len(),
                parity_mismatches = report.parity_mismatches.len(),
                "erasure-coded shard failed verification"
            );
        }
        Ok(report)
    }

    /// Replaces the shard locations (after a shard moved to another store).
    pub fn set_shards(&self, shards: Vec<String>) -> Result<()> {
        let mut man = self.manifest();
        if shards.len() != man.shards.len() {
            return Err(StoreError::BadRequest(format!(
                "{} shard URLs for {} shards",
                shards.len(),
                man.shards.len()
            )));
        }
        man.shards = shards;
        write_atomic(
            &self.dir,
            &manifest_path(&self.dir, self.id),
            &serde_json::to_vec_pretty(&man).map_err(|e| io::Error::other(e.to_string()))?,
        )?;
        *haystack_service::sync::write(&self.manifest) = man;
        Ok(())
    }

    /// The deletes this store knows (a rebuilt shard's store starts from its peers').
    pub fn deleted(&self) -> Vec<(u64, u32)> {
        haystack_service::sync::read(&self.deleted)
            .iter()
            .copied()
            .collect()
    }

    /// Applies deletes learnt from a peer (durably, as deletes).
    pub async fn learn_deletes(&self, dels: &[(u64, u32)]) -> Result<()> {
        let fresh: Vec<(u64, u32)> = dels
            .iter()
            .copied()
            .filter(|(k, a)| !self.is_deleted(*k, *a))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for (k, a) in &fresh {
            bytes.extend_from_slice(&delete_record(*k, *a));
        }
        self.append_deletes(bytes).await?;
        haystack_service::sync::write(&self.deleted).extend(fresh);
        Ok(())
    }

    /// Appends whole delete records to the log and syncs it. An append that fails is cut
    /// back to the records before it (a part of a record left there would make every record
    /// after it unreadable at the next open).
    async fn append_deletes(&self, bytes: Vec<u8>) -> Result<()> {
        let log = haystack_service::sync::lock(&self.delete_log).clone();
        let disk = self.engine.disk().clone();
        let serial = self.delete_append.clone();
        let l2 = log.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = haystack_service::sync::lock(&serial);
            let before = l2.metadata()?.len();
            disk.append(&l2, &bytes).inspect_err(|_| {
                let _ = disk.set_len(&l2, before);
            })
        })
        .await
        .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))??;
        self.engine.fdatasync(&log).await?;
        Ok(())
    }

    /// The index file's bytes (a rebuilt shard's store fetches them from a peer).
    pub fn index_bytes(&self) -> io::Result<Vec<u8>> {
        read_file(&index_path(&self.dir, self.id, self.generation))
    }
}
