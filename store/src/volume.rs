//! One volume: a preallocated file of appended needles, its index, its index checkpoint file,
//! group commit, recovery on open, deletes and sealing.
//!
//! Durability contract (docs/ARCHITECTURE.md repeats it):
//! 1. A write encodes its needles into one buffer and queues it; the holder of the append lock
//!    writes every queued buffer back to back at the tail (write combining); the tail advances
//!    only when the write succeeded. Writes are therefore laid down in offset order with no
//!    holes.
//! 2. After its write completed the writer takes a sync ticket and waits for an fdatasync that
//!    started after the ticket was taken (group commit: one fdatasync covers every ticket taken
//!    before it started).
//! 3. Only then are the needles put in the in-memory index (so a reader never sees an
//!    unsynced needle) and their records appended to the index file, and the write is
//!    acknowledged.
//! 4. A delete sets the flag byte in the needle header in place, syncs the same way, then
//!    marks the index and appends a delete record. The flag in the volume file is the truth:
//!    a read checks it, so an index record lost in a crash can only make a delete look late
//!    to statistics, never resurrect a needle.
//! 5. Recovery loads the index file (stopping at its first bad record), then scans the volume
//!    from the end of the last indexed needle: every needle that parses and passes its CRC is
//!    indexed; at the first one that does not, a forward search looks for a later valid
//!    needle (bit rot in the middle, skipped and counted) and, when there is none, the torn
//!    tail is cut: zeroed and the tail set there.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use haystack_proto::{VolumeInfo, VolumeState};

use crate::engine::IoEngine;
use crate::error::{Result, StoreError};
use crate::format::{
    self, encode_needle, parse_needle, NeedleHeader, NeedleIn, Superblock, FLAGS_OFFSET,
    FLAG_DELETED, HEADER_LEN, MAX_CONTENT_TYPE_LEN, SUPERBLOCK_LEN,
};
use crate::index::{Loc, MemIndex, SortedIndex};

mod compact;
#[cfg(feature = "test-hooks")]
pub use compact::CompactPause;
pub use compact::{CompactReport, CrashPoint, ExportSnapshot, RebuildReport};

/// Limits of one volume.
#[derive(Clone, Debug)]
pub struct VolumeConfig {
    /// Maximum volume file size.
    pub max_bytes: u64,
    /// Largest needle data accepted.
    pub max_needle_bytes: u64,
    /// Largest single write (a batch); also the window searched past a bad needle on recovery.
    pub max_write_bytes: u64,
    /// The file is preallocated in steps of this many bytes (capped by `max_bytes`).
    pub prealloc_step: u64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            max_bytes: 32 << 30,
            max_needle_bytes: 64 << 20,
            max_write_bytes: 256 << 20,
            prealloc_step: 1 << 30,
        }
    }
}

/// A needle to write, owned (writes run as their own task so a dropped request cannot leave a
/// half-done append behind).
#[derive(Clone, Debug)]
pub struct NeedleData {
    pub key: u64,
    pub alt: u32,
    pub cookie: u64,
    pub content_type: String,
    pub data: Bytes,
}

/// A needle read back and verified.
#[derive(Clone, Debug)]
pub struct Needle {
    pub key: u64,
    pub alt: u32,
    pub cookie: u64,
    /// CRC32 of content type and data (the basis of the ETag).
    pub crc: u32,
    pub content_type: String,
    pub data: Bytes,
}

/// A needle's metadata, read with the header only (HEAD).
#[derive(Clone, Debug)]
pub struct NeedleMeta {
    pub key: u64,
    pub alt: u32,
    pub data_len: u32,
    pub content_type: String,
}

enum VolIndex {
    Mem(MemIndex),
    Sealed(SortedIndex),
}

/// The index and the file it points into, swapped together (compaction replaces both): a
/// reader takes its location and its file under one lock, so it never reads an old offset
/// in a new file.
struct State {
    index: VolIndex,
    file: Arc<File>,
}

impl std::ops::Deref for State {
    type Target = VolIndex;
    fn deref(&self) -> &VolIndex {
        &self.index
    }
}

impl std::ops::DerefMut for State {
    fn deref_mut(&mut self) -> &mut VolIndex {
        &mut self.index
    }
}

impl VolIndex {
    fn get(&self, key: u64, alt: u32) -> Option<Loc> {
        match self {
            VolIndex::Mem(m) => m.get(key, alt),
            VolIndex::Sealed(s) => s.get(key, alt),
        }
    }
    fn mark_deleted(&mut self, key: u64, alt: u32) -> Option<Loc> {
        match self {
            VolIndex::Mem(m) => m.mark_deleted(key, alt),
            VolIndex::Sealed(s) => s.mark_deleted(key, alt),
        }
    }
    fn len(&self) -> usize {
        match self {
            VolIndex::Mem(m) => m.len(),
            VolIndex::Sealed(s) => s.len(),
        }
    }
    fn heap_bytes(&self) -> usize {
        match self {
            VolIndex::Mem(m) => m.heap_bytes(),
            VolIndex::Sealed(s) => s.heap_bytes(),
        }
    }
}

/// A write waiting in the append queue, and where to say at which offset it landed.
struct Queued {
    buf: Vec<u8>,
    tx: tokio::sync::oneshot::Sender<Result<u64>>,
}

struct Append {
    /// Where the next needle goes.
    tail: u64,
    /// Bytes of the file allocated so far.
    allocated: u64,
}

/// Group commit: one fdatasync covers every writer that took a ticket before it started.
struct GroupCommit {
    requested: AtomicU64,
    requested_needles: AtomicU64,
    done: AtomicU64,
    done_needles: AtomicU64,
    lock: tokio::sync::Mutex<()>,
    failed: AtomicBool,
}

impl GroupCommit {
    fn new() -> Self {
        GroupCommit {
            requested: AtomicU64::new(0),
            requested_needles: AtomicU64::new(0),
            done: AtomicU64::new(0),
            done_needles: AtomicU64::new(0),
            lock: tokio::sync::Mutex::new(()),
            failed: AtomicBool::new(false),
        }
    }

    /// Returns once an fdatasync that started after this call has completed.
    async fn commit(&self, engine: &IoEngine, file: &Arc<File>, needles: u64) -> io::Result<()> {
        self.requested_needles.fetch_add(needles, Ordering::SeqCst);
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            if self.done.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            let _leader = self.lock.lock().await;
            if self.done.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            if self.failed.load(Ordering::Acquire) {
                return Err(io::Error::other(
                    "an earlier fdatasync of this volume failed",
                ));
            }
            let target = self.requested.load(Ordering::SeqCst);
            let target_needles = self.requested_needles.load(Ordering::SeqCst);
            if let Err(e) = engine.fdatasync(file).await {
                self.failed.store(true, Ordering::Release);
                return Err(e);
            }
            let prev = self.done_needles.swap(target_needles, Ordering::AcqRel);
            metrics::histogram!("haystack_store_needles_per_fsync")
                .record(target_needles.saturating_sub(prev) as f64);
            self.done.store(target, Ordering::Release);
        }
    }
}

/// The index checkpoint file: a header, then fixed 32-byte records appended (docs/FORMAT.md).
struct IdxLog {
    disk: crate::disk::Disk,
    file: Arc<File>,
    buf: Vec<u8>,
}

const IDX_MAGIC: [u8; 8] = *b"HSIDXLG1";
const IDX_HEADER_LEN: usize = 16;
const IDX_RECORD_LEN: usize = 32;
const IDX_PUT: u8 = 1;
const IDX_DELETE: u8 = 2;
const IDX_FLUSH_AT: usize = 64 << 10;

/// The index file's header for volume `id`.
fn idx_header(id: u32) -> [u8; IDX_HEADER_LEN] {
    let mut h = [0u8; IDX_HEADER_LEN];
    h[0..8].copy_from_slice(&IDX_MAGIC);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..16].copy_from_slice(&id.to_le_bytes());
    h
}

fn idx_record(kind: u8, key: u64, alt: u32, loc: Loc) -> [u8; IDX_RECORD_LEN] {
    let mut r = [0u8; IDX_RECORD_LEN];
    r[0] = kind;
    r[4..8].copy_from_slice(&alt.to_le_bytes());
    r[8..16].copy_from_slice(&key.to_le_bytes());
    r[16..24].copy_from_slice(&loc.offset.to_le_bytes());
    r[24..28].copy_from_slice(&loc.extent.to_le_bytes());
    let crc = crc32fast::hash(&r[0..28]);
    r[28..32].copy_from_slice(&crc.to_le_bytes());
    r
}

struct IdxRecord {
    kind: u8,
    key: u64,
    alt: u32,
    offset: u64,
    extent: u32,
}

impl IdxRecord {
    /// The index entry a put record stands for.
    fn entry(&self) -> IndexEntry {
        let loc = Loc {
            offset: self.offset,
            extent: self.extent,
            deleted: false,
        };
        (self.key, self.alt, loc)
    }
}

fn parse_idx_record(r: &[u8]) -> Option<IdxRecord> {
    let crc = u32::from_le_bytes(r[28..32].try_into().ok()?);
    if crc32fast::hash(&r[0..28]) != crc || r[1..4] != [0, 0, 0] {
        return None;
    }
    let kind = r[0];
    if kind != IDX_PUT && kind != IDX_DELETE {
        return None;
    }
    Some(IdxRecord {
        kind,
        alt: u32::from_le_bytes(r[4..8].try_into().ok()?),
        key: u64::from_le_bytes(r[8..16].try_into().ok()?),
        offset: u64::from_le_bytes(r[16..24].try_into().ok()?),
        extent: u32::from_le_bytes(r[24..28].try_into().ok()?),
    })
}

impl IdxLog {
    fn push(&mut self, kind: u8, key: u64, alt: u32, loc: Loc) {
        self.buf.extend_from_slice(&idx_record(kind, key, alt, loc));
    }

    fn maybe_flush(&mut self) {
        if self.buf.len() >= IDX_FLUSH_AT {
            self.flush();
        }
    }

    /// Writes buffered records. The index file is a checkpoint: a failure here costs a longer
    /// tail scan on the next open, never data, so it is logged and not returned.
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.disk.append(&self.file, &self.buf) {
            tracing::warn!(error = %e, "append to index file failed; the next open scans further");
        }
        self.buf.clear();
    }
}

#[derive(Default)]
struct Stats {
    live_bytes: AtomicU64,
    deleted_needles: AtomicU64,
}

impl Stats {
    /// Counts an index entry found on open.
    fn count(&self, l: &Loc) {
        if l.deleted {
            self.deleted_needles.fetch_add(1, Ordering::Relaxed);
        } else {
            self.live_bytes
                .fetch_add(l.extent as u64, Ordering::Relaxed);
        }
    }
}

/// Why a volume does not take writes.
#[derive(Clone, Debug)]
enum Mode {
    Writable,
    ReadOnly(String),
    Sealed,
    /// Takes no writes, no deletes, no compaction: files on disk are ahead of this process
    /// (a compaction failed past its commit point) and only a restart may reconcile them.
    Failed(String),
}

pub struct Volume {
    id: u32,
    dat_path: PathBuf,
    sidx_path: PathBuf,
    engine: IoEngine,
    cfg: VolumeConfig,
    max_bytes: u64,
    /// Writers and deleters hold it shared; sealing holds it exclusively.
    gate: tokio::sync::RwLock<()>,
    append: tokio::sync::Mutex<Append>,
    /// Encoded writes waiting for the holder of `append` to lay them down (write combining).
    queue: Mutex<Vec<Queued>>,
    /// Mirrors `append.tail` for readers of statistics.
    tail: AtomicU64,
    commit: GroupCommit,
    state: RwLock<State>,
    idx_log: Mutex<IdxLog>,
    /// Group commit of the index file, for delete records (see `delete_inner`).
    idx_commit: GroupCommit,
    mode: Mutex<Mode>,
    stats: Stats,
    /// The running compaction, if any (its journal and progress).
    compaction: Mutex<Option<Arc<compact::Compaction>>>,
    /// Told when the volume stops taking writes (the store's heartbeat then goes at once,
    /// so the directory stops assigning uploads to it within milliseconds, not a heartbeat).
    on_change: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    /// What the last recovery (open or index rebuild) could not index.
    damage: Mutex<Vec<Damage>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// File names of volume `id` under `dir`.
pub fn volume_paths(dir: &Path, id: u32) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(format!("vol-{id}.dat")),
        dir.join(format!("vol-{id}.idx")),
        dir.join(format!("vol-{id}.sidx")),
    )
}

impl Volume {
    /// Creates a new, empty volume (fails if its file exists).
    pub fn create(dir: &Path, id: u32, engine: IoEngine, cfg: VolumeConfig) -> Result<Arc<Self>> {
        let (dat, idx, _) = volume_paths(dir, id);
        if dat.exists() {
            return Err(StoreError::VolumeExists(id));
        }
        // Built under a temporary name and renamed into place once complete, so that a crash
        // mid-creation leaves no half-made volume for the next start to trip on (the store
        // removes leftover `.tmp` files on start; a failure here removes its own).
        let tmp = dir.join(format!("vol-{id}.dat.tmp"));
        let disk = engine.disk().clone();
        let built = (|| -> io::Result<()> {
            let f = disk.create(&tmp)?;
            let sb = Superblock {
                version: format::FORMAT_VERSION,
                volume_id: id,
                max_bytes: cfg.max_bytes,
                created_unix_ms: now_ms(),
            };
            disk.write_all_at(&f, &sb.encode(), 0)?;
            let first = cfg.prealloc_step.min(cfg.max_bytes).max(SUPERBLOCK_LEN);
            disk.fallocate(&f, 0, first, 0)?;
            disk.sync_all(&f)?;
            let ix = disk.create(&idx)?;
            disk.write_all_at(&ix, &idx_header(id), 0)?;
            disk.sync_all(&ix)?;
            disk.rename(&tmp, &dat)?;
            disk.sync_dir(dir)
        })();
        if let Err(e) = built {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        Self::open(dir, id, engine, cfg)
    }

    /// Opens an existing volume and recovers its index (see the module docs). Blocking: call
    /// it from a blocking context at start-up.
    pub fn open(dir: &Path, id: u32, engine: IoEngine, cfg: VolumeConfig) -> Result<Arc<Self>> {
        let started = std::time::Instant::now();
        let (dat, idx_path, sidx_path) = volume_paths(dir, id);
        let disk = engine.disk().clone();
        compact::recover_interrupted(&disk, dir, id)?;
        let file = disk.open(&dat, OpenOptions::new().read(true).write(true))?;
        // What this process serves from now on must be durable: a write or a delete flag that
        // an earlier process wrote but whose fdatasync failed (or never came) may still sit
        // in the page cache, where a read would see it and a power cut would take it back.
        disk.sync_data(&file)?;
        let mut sbuf = [0u8; SUPERBLOCK_LEN as usize];
        disk.read_exact_at(&file, &mut sbuf, 0)?;
        let sb = Superblock::decode(&sbuf)
            .map_err(|source| StoreError::BadVolumeFile { volume: id, source })?;
        if sb.volume_id != id {
            return Err(StoreError::BadVolumeFile {
                volume: id,
                source: format::FormatError::Field("volume id does not match the file name"),
            });
        }
        let file_len = file.metadata()?.len();
        // Needle reads are random: readahead would only spend disk bandwidth on neighbours.
        // SAFETY: plain syscall on an owned descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        let mut idx_file = disk.open(
            &idx_path,
            OpenOptions::new().read(true).append(true).create(true),
        )?;

        let stats = Stats::default();
        let mut found_damage = Vec::new();
        let (index, tail, mode) = if sidx_path.exists() {
            let mut s = SortedIndex::open(&sidx_path)?;
            // Deletes after sealing are flagged in the volume and logged in the index file;
            // the mapped index's own flag may not have reached the disk.
            let raw = disk.read_all(&idx_file)?;
            if raw.len() >= IDX_HEADER_LEN {
                for r in raw[IDX_HEADER_LEN..].chunks_exact(IDX_RECORD_LEN) {
                    let Some(rec) = parse_idx_record(r) else {
                        break;
                    };
                    if rec.kind == IDX_DELETE
                        && s.get(rec.key, rec.alt).map(|l| (l.offset, l.deleted))
                            == Some((rec.offset, false))
                    {
                        s.mark_deleted(rec.key, rec.alt);
                    }
                }
            }
            let mut end = SUPERBLOCK_LEN;
            for (_, _, l) in s.iter() {
                end = end.max(l.offset + l.extent as u64);
                stats.count(&l);
            }
            (VolIndex::Sealed(s), end, Mode::Sealed)
        } else {
            let Recovered {
                entries,
                tail,
                problem,
                damage,
            } = recover_writable(
                &disk,
                id,
                &file,
                file_len,
                &mut idx_file,
                &cfg,
                sb.max_bytes,
            )?;
            found_damage = damage;
            for (_, _, l) in &entries {
                stats.count(l);
            }
            let mode = if let Some(p) = problem {
                Mode::ReadOnly(p)
            } else if sb.max_bytes.saturating_sub(tail) < format::needle_extent(0, 0) {
                Mode::ReadOnly("full".into())
            } else {
                Mode::Writable
            };
            (VolIndex::Mem(MemIndex::from_sorted(entries)), tail, mode)
        };
        let v = Volume {
            id,
            dat_path: dat,
            sidx_path,
            engine,
            max_bytes: sb.max_bytes,
            cfg,
            gate: tokio::sync::RwLock::new(()),
            append: tokio::sync::Mutex::new(Append {
                tail,
                allocated: file_len,
            }),
            queue: Mutex::new(Vec::new()),
            tail: AtomicU64::new(tail),
            commit: GroupCommit::new(),
            state: RwLock::new(State {
                index,
                file: Arc::new(file),
            }),
            idx_commit: GroupCommit::new(),
            idx_log: Mutex::new(IdxLog {
                disk: disk.clone(),
                file: Arc::new(idx_file),
                buf: Vec::new(),
            }),
            mode: Mutex::new(mode),
            stats,
            compaction: Mutex::new(None),
            on_change: std::sync::OnceLock::new(),
            damage: Mutex::new(found_damage),
        };
        tracing::info!(
            volume = id,
            needles = v.read_index().len(),
            tail,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "volume opened"
        );
        Ok(Arc::new(v))
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.dat_path
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The current volume file. Stable while the gate is held (compaction swaps it under the
    /// gate's write side).
    fn file(&self) -> Arc<File> {
        self.read_index().file.clone()
    }

    fn set_read_only(&self, reason: String) {
        let mut m = lock(&self.mode);
        if matches!(*m, Mode::Writable) {
            tracing::warn!(volume = self.id, %reason, "volume turns read-only");
            *m = Mode::ReadOnly(reason);
            if let Some(n) = self.on_change.get() {
                n.notify_one();
            }
        }
    }

    /// Whom to tell when the volume stops taking writes (set once, by the store).
    pub fn notify_changes(&self, n: Arc<tokio::sync::Notify>) {
        let _ = self.on_change.set(n);
    }

    fn check_writable(&self) -> Result<()> {
        match &*lock(&self.mode) {
            Mode::Writable => Ok(()),
            Mode::ReadOnly(r) if r == "full" => Err(StoreError::Full(self.id)),
            Mode::ReadOnly(r) => Err(StoreError::ReadOnly {
                volume: self.id,
                reason: r.clone(),
            }),
            Mode::Sealed => Err(StoreError::ReadOnly {
                volume: self.id,
                reason: "sealed".into(),
            }),
            Mode::Failed(r) => Err(StoreError::ReadOnly {
                volume: self.id,
                reason: r.clone(),
            }),
        }
    }

    /// Deletes are refused only when the files on disk are ahead of this process.
    fn check_deletable(&self) -> Result<()> {
        match &*lock(&self.mode) {
            Mode::Failed(r) => Err(StoreError::ReadOnly {
                volume: self.id,
                reason: r.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Stops writes, deletes and compactions until a restart (see `Mode::Failed`).
    pub(crate) fn set_failed(&self, reason: String) {
        let mut m = lock(&self.mode);
        tracing::error!(volume = self.id, %reason, "volume stops taking writes and deletes until a restart");
        *m = Mode::Failed(reason);
        if let Some(n) = self.on_change.get() {
            n.notify_one();
        }
    }

    /// Appends needles as one contiguous write under one sync and indexes them; returns their
    /// locations. Runs as its own task: dropping the returned future does not cancel it.
    pub async fn write_batch(self: &Arc<Self>, needles: Vec<NeedleData>) -> Result<Vec<Loc>> {
        let v = self.clone();
        tokio::spawn(async move { v.write_batch_inner(needles).await })
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("write task failed: {e}"))))?
    }

    async fn write_batch_inner(&self, needles: Vec<NeedleData>) -> Result<Vec<Loc>> {
        if needles.is_empty() {
            return Ok(Vec::new());
        }
        for n in &needles {
            if n.data.len() as u64 > self.cfg.max_needle_bytes {
                return Err(StoreError::TooLarge {
                    max: self.cfg.max_needle_bytes,
                });
            }
            if n.content_type.len() > MAX_CONTENT_TYPE_LEN {
                return Err(StoreError::BadRequest(format!(
                    "content type longer than {MAX_CONTENT_TYPE_LEN} bytes"
                )));
            }
        }
        let mut buf = Vec::new();
        let mut rel = Vec::with_capacity(needles.len());
        for n in &needles {
            let start = buf.len() as u64;
            let extent = encode_needle(
                &mut buf,
                &NeedleIn {
                    key: n.key,
                    alt: n.alt,
                    cookie: n.cookie,
                    content_type: &n.content_type,
                    data: &n.data,
                },
            );
            rel.push((start, extent));
        }
        let len = buf.len() as u64;
        if len > self.cfg.max_write_bytes {
            return Err(StoreError::TooLarge {
                max: self.cfg.max_write_bytes,
            });
        }
        let _gate = self.gate.read().await;
        self.check_writable()?;
        let base = self.append(buf).await?;
        metrics::counter!("haystack_store_bytes_written_total").increment(len);
        if let Err(e) = self
            .commit
            .commit(&self.engine, &self.file(), needles.len() as u64)
            .await
        {
            self.set_read_only(format!("disk error: {e}"));
            return Err(StoreError::Io(e));
        }
        let mut locs = Vec::with_capacity(needles.len());
        {
            let mut idx = self.write_index();
            let mut log = lock(&self.idx_log);
            for (n, (start, extent)) in needles.iter().zip(rel) {
                let loc = Loc {
                    offset: base + start,
                    extent: extent as u32,
                    deleted: false,
                };
                locs.push(loc);
                if let VolIndex::Mem(m) = &mut idx.index {
                    // Newest wins: appends are in offset order, and a racing writer of the same
                    // (key, alt) may reach this point first.
                    match m.get(n.key, n.alt) {
                        Some(old) if old.offset > loc.offset => continue,
                        Some(old) => {
                            if !old.deleted {
                                self.stats
                                    .live_bytes
                                    .fetch_sub(old.extent as u64, Ordering::Relaxed);
                            } else {
                                self.stats.deleted_needles.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                        None => {}
                    }
                    m.insert(n.key, n.alt, loc);
                    self.stats
                        .live_bytes
                        .fetch_add(loc.extent as u64, Ordering::Relaxed);
                    log.push(IDX_PUT, n.key, n.alt, loc);
                }
            }
        }
        // The records go to the index file now (a write, no sync), outside the index lock:
        // after a process crash the file then vouches for every acknowledged needle, so
        // recovery never has to tell a damaged acknowledged needle from a torn tail there.
        lock(&self.idx_log).flush();
        self.journal(|j| {
            j.puts
                .extend(needles.iter().zip(&locs).map(|(n, l)| (n.key, n.alt, *l)))
        });
        Ok(locs)
    }

    /// Writes `buf` at the tail and returns its offset. Concurrent appends are combined:
    /// whoever gets the append lock writes every buffer queued so far, in queue order, with
    /// as few positioned writes as `max_write_bytes` allows, so a burst of uploads costs one
    /// write (and, in the group commit after it, one fdatasync).
    async fn append(&self, buf: Vec<u8>) -> Result<u64> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.queue).push(Queued { buf, tx });
        {
            let mut ap = self.append.lock().await;
            let batch = std::mem::take(&mut *lock(&self.queue));
            if !batch.is_empty() {
                self.write_queued(&mut ap, batch).await;
            }
        }
        rx.await
            .map_err(|_| StoreError::Io(io::Error::other("append abandoned")))?
    }

    /// Lays down queued writes back to back at the tail. Caller holds the append lock. Every
    /// queued write gets its answer: an offset, or why it was refused.
    async fn write_queued(&self, ap: &mut Append, batch: Vec<Queued>) {
        if self.check_writable().is_err() {
            for q in batch {
                let _ = q.tx.send(self.check_writable().map(|_| 0));
            }
            return;
        }
        // The prefix that fits in the volume; the rest is refused and the volume is full.
        let mut total = 0u64;
        let mut fit = 0;
        for q in &batch {
            if ap.tail + total + q.buf.len() as u64 > self.max_bytes {
                break;
            }
            total += q.buf.len() as u64;
            fit += 1;
        }
        let mut batch = batch;
        let refused = batch.split_off(fit);
        if !refused.is_empty() {
            self.set_read_only("full".into());
            for q in refused {
                let _ = q.tx.send(Err(StoreError::Full(self.id)));
            }
        }
        if batch.is_empty() {
            return;
        }
        if ap.tail + total > ap.allocated {
            let want = (ap.tail + total)
                .max(ap.allocated + self.cfg.prealloc_step)
                .min(self.max_bytes);
            let need = ap.tail + total;
            let (f, from, disk) = (self.file(), ap.allocated, self.engine.disk().clone());
            // A whole step first; on a disk without room for it, just what this write needs
            // (a volume is full when the write does not fit, not when a step does not).
            let r = tokio::task::spawn_blocking(move || {
                match disk.fallocate(&f, from, want - from, 0) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && need < want => {
                        disk.fallocate(&f, from, need - from, 0).map(|()| need)
                    }
                    r => r.map(|()| want),
                }
            })
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
            if let Err(e) = &r {
                let full = e.raw_os_error() == Some(libc::ENOSPC);
                if full {
                    self.set_read_only("full".into());
                } else {
                    self.set_read_only(format!("disk error: {e}"));
                }
                for q in batch {
                    let _ = q.tx.send(Err(if full {
                        StoreError::Full(self.id)
                    } else {
                        StoreError::Io(io::Error::new(e.kind(), e.to_string()))
                    }));
                }
                return;
            }
            ap.allocated = r.unwrap_or(want);
        }
        // Chunks of at most max_write_bytes (recovery's search window relies on it).
        let mut pending = batch.into_iter().peekable();
        while pending.peek().is_some() {
            let mut chunk: Vec<Queued> = Vec::new();
            let mut size = 0u64;
            while let Some(q) = pending.peek() {
                if !chunk.is_empty() && size + q.buf.len() as u64 > self.cfg.max_write_bytes {
                    break;
                }
                size += q.buf.len() as u64;
                chunk.extend(pending.next());
            }
            let base = ap.tail;
            let data = if chunk.len() == 1 {
                std::mem::take(&mut chunk[0].buf)
            } else {
                let mut d = Vec::with_capacity(size as usize);
                for q in &chunk {
                    d.extend_from_slice(&q.buf);
                }
                d
            };
            if let Err(e) = self.engine.write_all_at(&self.file(), base, data).await {
                self.set_read_only(format!("disk error: {e}"));
                for q in chunk.into_iter().chain(pending) {
                    let _ =
                        q.tx.send(Err(StoreError::Io(io::Error::new(e.kind(), e.to_string()))));
                }
                return;
            }
            metrics::histogram!("haystack_store_writes_per_append").record(chunk.len() as f64);
            let mut at = base;
            for q in chunk {
                let len = if q.buf.is_empty() {
                    size
                } else {
                    q.buf.len() as u64
                };
                let _ = q.tx.send(Ok(at));
                at += len;
            }
            ap.tail += size;
            self.tail.store(ap.tail, Ordering::Release);
        }
    }

    /// A live needle's location and the file it is in.
    fn lookup(&self, key: u64, alt: u32) -> Result<(Loc, Arc<File>)> {
        let st = self.read_index();
        match st.get(key, alt) {
            Some(l) if !l.deleted => Ok((l, st.file.clone())),
            _ => Err(StoreError::NotFound),
        }
    }

    /// A failed read (a bad sector, a flaky path): counted and reported; the caller reads
    /// another replica. It says nothing about writes, so the volume keeps taking them (a
    /// write or sync error turns it read-only).
    fn read_error(&self, loc: Loc, e: io::Error) -> StoreError {
        metrics::counter!("haystack_store_read_errors_total").increment(1);
        tracing::error!(volume = self.id, offset = loc.offset, error = %e, "needle read failed");
        StoreError::Io(e)
    }

    fn corrupt(&self, loc: Loc, detail: String) -> StoreError {
        metrics::counter!("haystack_store_crc_errors_total").increment(1);
        tracing::error!(volume = self.id, offset = loc.offset, %detail, "corrupt needle detected; not served");
        StoreError::Corrupt {
            volume: self.id,
            offset: loc.offset,
            detail,
        }
    }

    /// The deleted flag was found in the file but not in the index (its index record was lost
    /// in a crash): bring the index in line.
    fn note_deleted(&self, key: u64, alt: u32, loc: Loc) -> bool {
        let mut idx = self.write_index();
        if idx.get(key, alt).map(|l| l.offset) == Some(loc.offset) {
            if let Some(old) = idx.mark_deleted(key, alt) {
                if !old.deleted {
                    self.stats
                        .live_bytes
                        .fetch_sub(old.extent as u64, Ordering::Relaxed);
                    self.stats.deleted_needles.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
            }
        }
        false
    }

    /// A read met a delete flag the index did not know (a delete whose record a crash
    /// lost): the index learns it, and so does the index file (buffered), so that counts,
    /// listings and the next open agree with the volume file.
    fn learn_deleted(&self, key: u64, alt: u32, loc: Loc) {
        if self.note_deleted(key, alt, loc) {
            let mut log = lock(&self.idx_log);
            log.push(IDX_DELETE, key, alt, loc);
            log.maybe_flush();
        }
    }

    /// Reads a needle with one disk read and verifies it. A wrong cookie is `NotFound`.
    pub async fn read(&self, key: u64, alt: u32, cookie: u64) -> Result<Needle> {
        let (loc, file) = self.lookup(key, alt)?;
        let buf = match self
            .engine
            .read_at_counted(&file, loc.offset, loc.extent as usize)
            .await
        {
            Ok((b, ops)) => {
                crate::metrics::hot().get_disk_reads.increment(ops as u64);
                b
            }
            Err(e) => return Err(self.read_error(loc, e)),
        };
        crate::metrics::hot().bytes_read.increment(buf.len() as u64);
        let p = parse_needle(&buf).map_err(|e| self.corrupt(loc, e.to_string()))?;
        if p.header.key != key || p.header.alt != alt {
            return Err(self.corrupt(
                loc,
                format!(
                    "index points at needle {}/{} instead",
                    p.header.key, p.header.alt
                ),
            ));
        }
        if p.header.deleted() {
            self.learn_deleted(key, alt, loc);
            return Err(StoreError::NotFound);
        }
        if p.header.cookie != cookie {
            return Err(StoreError::NotFound);
        }
        let buf = Bytes::from(buf);
        let content_type = String::from_utf8_lossy(&buf[p.content_type.clone()]).into_owned();
        Ok(Needle {
            key,
            alt,
            cookie,
            crc: p.crc,
            content_type,
            data: buf.slice(p.data),
        })
    }

    /// Reads only a needle's header and content type (one small disk read) for HEAD.
    pub async fn read_meta(&self, key: u64, alt: u32, cookie: u64) -> Result<NeedleMeta> {
        let (loc, file) = self.lookup(key, alt)?;
        let want = (HEADER_LEN + MAX_CONTENT_TYPE_LEN).min(loc.extent as usize);
        let buf = self
            .engine
            .read_at(&file, loc.offset, want)
            .await
            .map_err(|e| self.read_error(loc, e))?;
        let h = NeedleHeader::decode(&buf).map_err(|e| self.corrupt(loc, e.to_string()))?;
        if h.key != key || h.alt != alt || h.extent() != loc.extent as u64 {
            return Err(self.corrupt(loc, "header does not match the index".into()));
        }
        if h.deleted() {
            self.learn_deleted(key, alt, loc);
            return Err(StoreError::NotFound);
        }
        if h.cookie != cookie {
            return Err(StoreError::NotFound);
        }
        let ct_end = HEADER_LEN + h.content_type_len as usize;
        let ct = buf
            .get(HEADER_LEN..ct_end)
            .ok_or_else(|| self.corrupt(loc, "short header read".into()))?;
        Ok(NeedleMeta {
            key,
            alt,
            data_len: h.data_len,
            content_type: String::from_utf8_lossy(ct).into_owned(),
        })
    }

    /// Deletes a needle: sets its flag in the file (synced), then in the index. The cookie
    /// must match. Runs as its own task.
    pub async fn delete(self: &Arc<Self>, key: u64, alt: u32, cookie: u64) -> Result<()> {
        let v = self.clone();
        tokio::spawn(async move { v.delete_inner(key, alt, Some(cookie)).await })
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("delete task failed: {e}"))))?
    }

    /// Deletes a needle whatever its cookie: garbage collection of needles that no photo
    /// references (the operator's `haystack gc`), whose cookies nobody knows.
    pub async fn delete_unreferenced(self: &Arc<Self>, key: u64, alt: u32) -> Result<()> {
        let v = self.clone();
        tokio::spawn(async move { v.delete_inner(key, alt, None).await })
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("delete task failed: {e}"))))?
    }

    async fn delete_inner(&self, key: u64, alt: u32, cookie: Option<u64>) -> Result<()> {
        let _gate = self.gate.read().await;
        self.check_deletable()?;
        let (loc, file) = self.lookup(key, alt)?;
        let buf = self.engine.read_at(&file, loc.offset, HEADER_LEN).await?;
        let h = NeedleHeader::decode(&buf).map_err(|e| self.corrupt(loc, e.to_string()))?;
        if h.key != key || h.alt != alt {
            return Err(self.corrupt(loc, "header does not match the index".into()));
        }
        if h.deleted() {
            self.learn_deleted(key, alt, loc);
            return Err(StoreError::NotFound);
        }
        if cookie.is_some_and(|c| c != h.cookie) {
            return Err(StoreError::NotFound);
        }
        if let Err(e) = self
            .engine
            .write_all_at(
                &file,
                loc.offset + FLAGS_OFFSET,
                vec![h.flags | FLAG_DELETED],
            )
            .await
        {
            self.set_read_only(format!("disk error: {e}"));
            return Err(StoreError::Io(e));
        }
        if let Err(e) = self.commit.commit(&self.engine, &file, 1).await {
            self.set_read_only(format!("disk error: {e}"));
            return Err(StoreError::Io(e));
        }
        let _ = self.note_deleted(key, alt, loc);
        // The delete record reaches the index file, synced, before the delete is acknowledged:
        // on open the index file is trusted for the needles it covers (their headers are not
        // read again), so a lost record would leave a deleted needle counted live, listed live
        // to garbage collection and to replica comparison. Reads were never at risk (they
        // check the flag in the volume file). Concurrent deletes share the sync.
        let idx_file = {
            let mut log = lock(&self.idx_log);
            log.push(IDX_DELETE, key, alt, loc);
            log.flush();
            log.file.clone()
        };
        if let Err(e) = self.idx_commit.commit(&self.engine, &idx_file, 1).await {
            // The flag in the volume file is durable (reads see the delete), but without its
            // record the next open would count the needle live: the delete is not
            // acknowledged (the caller retries), and the volume takes no more writes.
            self.set_read_only(format!("disk error on the index file: {e}"));
            return Err(StoreError::Io(e));
        }
        self.journal(|j| j.deletes.push((key, alt, loc.offset)));
        Ok(())
    }

    /// Seals the volume: no more writes; the index moves to a sorted file mapped from disk.
    pub async fn seal(&self) -> Result<()> {
        let _gate = self.gate.write().await;
        {
            let mut m = lock(&self.mode);
            if matches!(*m, Mode::Sealed) {
                return Ok(());
            }
            if let Mode::Failed(r) = &*m {
                return Err(StoreError::ReadOnly {
                    volume: self.id,
                    reason: r.clone(),
                });
            }
            *m = Mode::ReadOnly("sealing".into());
        }
        lock(&self.idx_log).flush();
        let entries: Vec<(u64, u32, Loc)> = match &self.read_index().index {
            VolIndex::Mem(m) => m.iter().collect(),
            VolIndex::Sealed(_) => return Ok(()),
        };
        let path = self.sidx_path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            SortedIndex::write(&path, entries)?;
            SortedIndex::open(&path)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        self.write_index().index = VolIndex::Sealed(opened);
        *lock(&self.mode) = Mode::Sealed;
        tracing::info!(volume = self.id, "volume sealed");
        Ok(())
    }

    /// Writes buffered index records out (on shutdown).
    pub fn flush_index(&self) {
        lock(&self.idx_log).flush();
    }

    pub fn info(&self) -> VolumeInfo {
        let (state, reason) = match &*lock(&self.mode) {
            Mode::Writable => (VolumeState::Writable, None),
            Mode::ReadOnly(r) | Mode::Failed(r) => (VolumeState::ReadOnly, Some(r.clone())),
            Mode::Sealed => (VolumeState::Sealed, None),
        };
        let size = self.tail.load(Ordering::Acquire);
        let live = self.stats.live_bytes.load(Ordering::Relaxed);
        VolumeInfo {
            id: self.id,
            state,
            size_bytes: size,
            max_bytes: self.max_bytes,
            needles: self.read_index().len() as u64,
            deleted_needles: self.stats.deleted_needles.load(Ordering::Relaxed),
            dead_bytes: size.saturating_sub(SUPERBLOCK_LEN).saturating_sub(live),
            reason,
            compaction: self.compaction_progress(),
        }
    }

    /// Heap bytes held by the index (a gauge on /metrics).
    pub fn index_heap_bytes(&self) -> usize {
        self.read_index().heap_bytes()
    }

    /// Reads every live needle the index knows and checks it (magic, header CRC, key and
    /// alternate key, footer, data CRC): the full scan behind `haystack volume verify`.
    /// Needles written during the scan are not included.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let (entries, file): (Vec<IndexEntry>, Arc<File>) = {
            let st = self.read_index();
            let e = match &st.index {
                VolIndex::Mem(m) => m.iter().filter(|e| !e.2.deleted).collect(),
                VolIndex::Sealed(s) => s.iter().filter(|e| !e.2.deleted).collect(),
            };
            (e, st.file.clone())
        };
        let mut report = VerifyReport {
            volume: self.id,
            checked: 0,
            bytes: 0,
            corrupt: Vec::new(),
            unindexed: lock(&self.damage).clone(),
        };
        for (key, alt, loc) in entries {
            let buf = self
                .engine
                .read_at(&file, loc.offset, loc.extent as usize)
                .await?;
            report.checked += 1;
            report.bytes += buf.len() as u64;
            let problem = match parse_needle(&buf) {
                Err(e) => Some(e.to_string()),
                Ok(p) if p.header.key != key || p.header.alt != alt => {
                    Some("the needle at this offset has another key".to_string())
                }
                Ok(_) => None,
            };
            if let Some(detail) = problem {
                metrics::counter!("haystack_store_crc_errors_total").increment(1);
                tracing::error!(volume = self.id, key, alt, offset = loc.offset, %detail, "verify: corrupt needle");
                report.corrupt.push(CorruptNeedle {
                    key: key.to_string(),
                    alt,
                    offset: loc.offset,
                    detail,
                });
            }
        }
        Ok(report)
    }
}

/// What a full CRC scan of a volume found (`POST /v1/volumes/{id}/verify`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub volume: u32,
    pub checked: u64,
    pub bytes: u64,
    pub corrupt: Vec<CorruptNeedle>,
    /// Regions the last open or index rebuild could not index (needles there cannot be
    /// checked needle by needle: compare with a replica).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unindexed: Vec<Damage>,
}

/// A needle that failed its checks; the key is a decimal string, as ids are in JSON.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CorruptNeedle {
    pub key: String,
    pub alt: u32,
    pub offset: u64,
    pub detail: String,
}

/// An index entry: key, alternate key, location.
type IndexEntry = (u64, u32, Loc);

/// Loads the index file and scans the tail; returns the index entries sorted by (key, alt)
/// and the tail offset. Repairs the index file and cuts a torn tail as it goes.
fn recover_writable(
    disk: &crate::disk::Disk,
    id: u32,
    file: &File,
    file_len: u64,
    idx_file: &mut File,
    cfg: &VolumeConfig,
    max_bytes: u64,
) -> Result<Recovered> {
    // 1. The index file.
    let raw = disk.read_all(idx_file)?;
    let mut records: Vec<IdxRecord> = Vec::new();
    let mut good_len = 0usize;
    let header_ok = raw.len() >= IDX_HEADER_LEN
        && raw[0..8] == IDX_MAGIC
        && raw[8..12] == 1u32.to_le_bytes()
        && raw[12..16] == id.to_le_bytes();
    if header_ok {
        good_len = IDX_HEADER_LEN;
        for r in raw[IDX_HEADER_LEN..].chunks_exact(IDX_RECORD_LEN) {
            match parse_idx_record(r) {
                Some(rec)
                    if rec.offset >= SUPERBLOCK_LEN
                        && rec.offset % format::ALIGN == 0
                        && rec.extent > 0
                        && rec.offset + rec.extent as u64 <= file_len =>
                {
                    records.push(rec);
                    good_len += IDX_RECORD_LEN;
                }
                _ => break,
            }
        }
    }
    if !header_ok || good_len != raw.len() {
        tracing::warn!(
            volume = id,
            kept_records = records.len(),
            dropped_bytes = raw.len() - good_len,
            "index file has a bad tail; cutting it"
        );
        let cut = if !header_ok {
            disk.set_len(idx_file, 0)
                .and_then(|()| disk.append(idx_file, &idx_header(id)))
        } else {
            disk.set_len(idx_file, good_len as u64)
        };
        // A checkpoint that cannot be repaired (a full disk) costs a longer scan, not the
        // volume.
        if let Err(e) = cut {
            tracing::warn!(volume = id, error = %e, "repairing the index file failed; the next open scans again");
        }
    }
    // Records reach the index file in the order writers finish their syncs, not in offset
    // order, and the newest are lost with the process: the file may cover a needle at a high
    // offset and miss one below it. The scan therefore starts at the first gap in the
    // coverage, not at the end of the highest indexed needle.
    let mut spans: Vec<(u64, u32)> = records
        .iter()
        .filter(|r| r.kind == IDX_PUT)
        .map(|r| (r.offset, r.extent))
        .collect();
    spans.sort_unstable();
    let mut scan_from = SUPERBLOCK_LEN;
    for &(o, e) in &spans {
        if o == scan_from {
            scan_from += e as u64;
        } else if o > scan_from {
            break;
        }
    }
    // Needles the index file vouches for end here: a tail is never cut below it.
    let indexed_end = spans
        .iter()
        .map(|&(o, e)| o + e as u64)
        .max()
        .unwrap_or(SUPERBLOCK_LEN);
    // Newest put per (key, alt) wins; a delete applies to the put at its offset.
    records.sort_unstable_by_key(|r| (r.key, r.alt, r.offset, r.kind));
    let mut entries: Vec<(u64, u32, Loc)> = Vec::with_capacity(records.len());
    for r in &records {
        match (entries.last_mut(), r.kind) {
            (Some(last), IDX_DELETE) if last.0 == r.key && last.1 == r.alt => {
                if last.2.offset == r.offset {
                    last.2.deleted = true;
                }
            }
            (_, IDX_DELETE) => {}
            (Some(last), _) if last.0 == r.key && last.1 == r.alt => *last = r.entry(),
            _ => entries.push(r.entry()),
        }
    }
    drop(records);

    // 2. The tail past the last indexed needle.
    let limit = file_len.min(max_bytes);
    let mut pos = scan_from;
    let mut scanned: Vec<(u64, u32, Loc)> = Vec::new();
    let mut new_records = Vec::new();
    let mut skipped_corrupt = 0u64;
    let mut damage: Vec<Damage> = Vec::new();
    loop {
        let scan = read_needle_at(disk, file, pos, limit)?;
        match scan {
            Scan::Needle(h, extent) => {
                let loc = Loc {
                    offset: pos,
                    extent: extent as u32,
                    deleted: h.deleted(),
                };
                scanned.push((h.key, h.alt, loc));
                new_records.extend_from_slice(&idx_record(IDX_PUT, h.key, h.alt, loc));
                if loc.deleted {
                    new_records.extend_from_slice(&idx_record(IDX_DELETE, h.key, h.alt, loc));
                }
                pos += extent;
            }
            // Zeros below needles the index file records are damage, not the end.
            Scan::End if pos >= indexed_end => break,
            Scan::End | Scan::Bad(..) => {
                let (reason, claimed) = match scan {
                    Scan::Bad(r, c) => (r, c),
                    _ => ("zeroed header below indexed needles".to_string(), None),
                };
                let window_end = limit.min(pos + cfg.max_write_bytes);
                // A needle whose header is intact but whose data is not (a torn write) may
                // carry bytes that look like needles: never search inside its own extent.
                let from = pos + claimed.unwrap_or(format::ALIGN).max(format::ALIGN);
                let next = match find_next_needle(disk, file, from, window_end, limit)? {
                    Some(n) => Some(n),
                    // Past a damaged region longer than the window: the next needle the index
                    // file knows of, or the end of the last one. A tail is never cut below
                    // a needle the index file records.
                    None if pos < indexed_end => Some(
                        spans
                            .iter()
                            .map(|&(o, _)| o)
                            .find(|&o| o > pos)
                            .unwrap_or(indexed_end),
                    ),
                    None => None,
                };
                match next {
                    Some(next) => {
                        // Valid needles follow: this is damage in the middle, not a torn tail.
                        skipped_corrupt += 1;
                        metrics::counter!("haystack_store_crc_errors_total").increment(1);
                        damage.push(Damage {
                            kind: DamageKind::Skipped,
                            offset: pos,
                            bytes: next - pos,
                            reason: reason.clone(),
                            action: "skipped: valid needles follow; repair from a replica".into(),
                        });
                        tracing::error!(
                            volume = id,
                            offset = pos,
                            skipped_bytes = next - pos,
                            %reason,
                            "corrupt region in volume skipped on recovery; repair from a replica"
                        );
                        pos = next;
                    }
                    None => {
                        tracing::warn!(
                            volume = id,
                            offset = pos,
                            %reason,
                            "torn tail cut off"
                        );
                        // Never vouched for by the index file and followed by nothing valid:
                        // a write that did not finish. Reported all the same, in case it was
                        // an acknowledged needle whose index record a power cut took.
                        metrics::counter!("haystack_store_recovery_cut_tails_total").increment(1);
                        damage.push(Damage {
                            kind: DamageKind::CutTail,
                            offset: pos,
                            bytes: claimed.unwrap_or(0),
                            reason: reason.clone(),
                            action: "cut: torn tail (an unfinished write)".into(),
                        });
                        break;
                    }
                }
            }
        }
    }
    // Nothing past the tail may ever parse as a needle: a later scan would walk from a new
    // needle into the bytes of an unacknowledged write whose first page was lost, and index
    // them. Everything past the tail, to the end of the file, is made zeros (not only one
    // write's window: a write may be split in chunks, and an older crash may have left
    // bytes further on).
    // Past this point nothing is fatal: a volume that cannot be made clean for writes still
    // serves reads, read-only, with the reason reported.
    let mut problem = None;
    if let Err(e) = clear_past_tail(disk, file, pos, file_len) {
        tracing::error!(volume = id, offset = pos, error = %e, "clearing the bytes past the tail failed; volume stays read-only");
        problem = Some(format!(
            "stale bytes past the tail could not be cleared ({e})"
        ));
    }
    if !new_records.is_empty() {
        // Needles found in the tail may never have been synced (their writer died before its
        // fdatasync): make them durable before the index file vouches for them.
        match disk.sync_data(file) {
            Ok(()) => {
                // The index file is a checkpoint: without room for it (ENOSPC on a full disk)
                // the volume still opens; the next open scans the same tail again.
                if let Err(e) = disk.append(idx_file, &new_records) {
                    tracing::warn!(volume = id, error = %e, "appending recovered records to the index file failed; the next open scans again");
                }
            }
            Err(e) => {
                tracing::error!(volume = id, error = %e, "syncing recovered needles failed; volume stays read-only");
                problem.get_or_insert_with(|| format!("disk error: {e}"));
            }
        }
    }
    if let Err(e) = disk.sync_data(idx_file) {
        tracing::warn!(volume = id, error = %e, "syncing the index file failed; the next open scans again");
    }
    if !scanned.is_empty() || skipped_corrupt > 0 {
        tracing::info!(
            volume = id,
            recovered = scanned.len(),
            skipped_corrupt,
            "needles recovered from the volume tail"
        );
        // Scanned needles are newer than every indexed one: merge, scanned last wins.
        scanned.sort_by_key(|e| (e.0, e.1)); // stable: later offsets stay later
        let mut merged: Vec<(u64, u32, Loc)> = Vec::with_capacity(entries.len() + scanned.len());
        let (mut a, mut b) = (
            entries.into_iter().peekable(),
            scanned.into_iter().peekable(),
        );
        loop {
            let take_a = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(x), Some(y)) => (x.0, x.1) <= (y.0, y.1),
            };
            let next = if take_a { a.next() } else { b.next() };
            if let Some(e) = next {
                match merged.last_mut() {
                    // The newest (highest offset) version of a needle wins.
                    Some(last) if (last.0, last.1) == (e.0, e.1) => {
                        if e.2.offset >= last.2.offset {
                            *last = e;
                        }
                    }
                    _ => merged.push(e),
                }
            }
        }
        entries = merged;
    }
    Ok(Recovered {
        entries,
        tail: pos,
        problem,
        damage,
    })
}

/// A region of a volume file that recovery could not index: skipped (valid needles follow)
/// or cut (a torn tail). Reported by `verify` and the index rebuild, never dropped silently.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Damage {
    pub kind: DamageKind,
    pub offset: u64,
    /// Bytes skipped, or the extent the cut needle's header claimed (0 if unreadable).
    pub bytes: u64,
    pub reason: String,
    pub action: String,
}

/// What recovery did with a region it could not index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// Valid needles follow: damage in the middle, skipped (repair from a replica).
    Skipped,
    /// Nothing valid follows and the index file never vouched for it: a write that did not
    /// finish, cut off (reported in case a power cut took an acknowledged needle's record).
    CutTail,
}

/// What recovery of a writable volume found.
struct Recovered {
    /// Index entries sorted by (key, alt).
    entries: Vec<IndexEntry>,
    /// Where the next needle goes.
    tail: u64,
    /// Why the volume must stay read-only, if it must.
    problem: Option<String>,
    /// What could not be indexed.
    damage: Vec<Damage>,
}

/// Makes `[from, file_len)` read as zeros, durably: `FALLOC_FL_ZERO_RANGE` (extents become
/// unwritten, no data written), or where the file system refuses it, zeros written over
/// every non-zero block. Cheap when the range is zeros already.
fn clear_past_tail(
    disk: &crate::disk::Disk,
    file: &File,
    from: u64,
    file_len: u64,
) -> io::Result<()> {
    if from >= file_len {
        return Ok(());
    }
    let zeroed = disk.fallocate(
        file,
        from,
        file_len - from,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
    );
    if zeroed.is_err() {
        const STEP: u64 = 1 << 20;
        let mut buf = vec![0u8; STEP as usize];
        let mut at = from;
        while at < file_len {
            let n = STEP.min(file_len - at) as usize;
            disk.read_exact_at(file, &mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                buf[..n].fill(0);
                disk.write_all_at(file, &buf[..n], at)?;
            }
            at += n as u64;
        }
    }
    disk.sync_data(file)
}

enum Scan {
    Needle(NeedleHeader, u64),
    End,
    /// Why, and the extent its header claims when the header itself is intact.
    Bad(String, Option<u64>),
}

/// Reads and fully checks the needle at `pos`. A read that fails is an error, never a bad
/// needle: a transient EIO must not make recovery cut (and zero) acknowledged needles.
fn read_needle_at(disk: &crate::disk::Disk, file: &File, pos: u64, limit: u64) -> io::Result<Scan> {
    if pos + HEADER_LEN as u64 > limit {
        return Ok(Scan::End);
    }
    let mut h = [0u8; HEADER_LEN];
    disk.read_exact_at(file, &mut h, pos)?;
    if h.iter().all(|&b| b == 0) {
        return Ok(Scan::End);
    }
    let header = match NeedleHeader::decode(&h) {
        Ok(x) => x,
        Err(e) => return Ok(Scan::Bad(e.to_string(), None)),
    };
    let extent = header.extent();
    if pos + extent > limit {
        return Ok(Scan::Bad(
            "needle runs past the end of the volume".into(),
            None,
        ));
    }
    let mut buf = vec![0u8; extent as usize];
    disk.read_exact_at(file, &mut buf, pos)?;
    Ok(match parse_needle(&buf) {
        Ok(_) => Scan::Needle(header, extent),
        Err(e) => Scan::Bad(e.to_string(), Some(extent)),
    })
}

/// Looks for the first offset in [from, to) where a whole valid needle starts.
fn find_next_needle(
    disk: &crate::disk::Disk,
    file: &File,
    from: u64,
    to: u64,
    limit: u64,
) -> io::Result<Option<u64>> {
    if from >= to {
        return Ok(None);
    }
    let mut window = vec![0u8; (to - from) as usize];
    let got = disk.read_at(file, &mut window, from)?;
    window.truncate(got);
    let magic = format::HEADER_MAGIC.to_le_bytes();
    let mut i = 0usize;
    while i + HEADER_LEN <= window.len() {
        if window[i..i + 4] == magic && NeedleHeader::decode(&window[i..]).is_ok() {
            let at = from + i as u64;
            if let Scan::Needle(..) = read_needle_at(disk, file, at, limit)? {
                return Ok(Some(at));
            }
        }
        i += format::ALIGN as usize;
    }
    Ok(None)
}
