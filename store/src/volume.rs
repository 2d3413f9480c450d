//! One volume: a preallocated file of appended needles, its index and index checkpoint file,
//! reads, deletes and sealing. Writes and group commit are in `write`, recovery in
//! `recover`, compaction and the index rebuild in `compact`, the checkpoint's bytes in
//! `crate::checkpoint`. The durability contract these follow is written once, in
//! docs/ARCHITECTURE.md ("Durability contract (store)"); the comments refer to its steps.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use haystack_proto::{VolumeInfo, VolumeState};

use crate::checkpoint::{
    header as idx_header, parse_record as parse_idx_record, record as idx_record,
    Record as IdxRecord, DELETE as IDX_DELETE, HEADER_LEN as IDX_HEADER_LEN, PUT as IDX_PUT,
    RECORD_LEN as IDX_RECORD_LEN,
};
use crate::engine::IoEngine;
use crate::error::{Result, StoreError};
use crate::format::{
    self, encode_needle, parse_needle, NeedleHeader, NeedleIn, Superblock, FLAGS_OFFSET,
    FLAG_DELETED, HEADER_LEN, MAX_CONTENT_TYPE_LEN, SUPERBLOCK_LEN,
};
use crate::index::{Loc, MemIndex, SortedIndex};

mod compact;
mod recent;
mod recover;
mod repair;
mod ship;
mod write;

#[cfg(feature = "test-hooks")]
pub use compact::CompactPause;
#[cfg(feature = "test-hooks")]
pub use compact::CrashPoint;
pub use compact::{CompactReport, ExportSnapshot, RebuildReport};
use recover::{recover_writable, Recovered};
pub use recover::{Damage, DamageKind};
pub use repair::{bucket_of, Digest, NeedleEntry, RepairOutcome, MAX_DIGEST_BUCKETS};
pub use ship::{mark_remote_copy, unmark_remote_copy};
use write::{Append, GroupCommit, Queued};

/// Why a volume stopped taking writes when its file could not grow for want of space on the
/// file system (ENOSPC): the volume has room, the disk has not. It is reported in the
/// volume's `reason` (store and directory status) and answered as 507 `disk_full`.
pub const DISK_FULL: &str = "disk full: no space left on device";

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

/// The index checkpoint file: a header, then fixed 32-byte records appended (docs/FORMAT.md).
struct IdxLog {
    disk: crate::disk::Disk,
    file: Arc<File>,
    buf: Vec<u8>,
}

const IDX_FLUSH_AT: usize = 64 << 10;

impl IdxLog {
    fn push(&mut self, kind: u8, key: u64, alt: u32, loc: Loc) {
        self.buf.extend_from_slice(&idx_record(kind, key, alt, loc));
    }

    fn maybe_flush(&mut self) {
        if self.buf.len() >= IDX_FLUSH_AT {
            let _ = self.flush();
        }
    }

    /// Writes buffered records. The index file is a checkpoint: a failure here costs a longer
    /// tail scan on the next open, never data (a caller that must vouch for its records, a
    /// delete, looks at the result). An append that fails is cut back to the records before
    /// it: a part of a record left there would misalign every record after it, and the next
    /// open would cut them all off as a bad tail.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let before = self.file.metadata().map(|m| m.len());
        let r = self.disk.append(&self.file, &self.buf);
        if let Err(e) = &r {
            tracing::warn!(error = %e, "append to index file failed; the next open scans further");
            if let Ok(len) = before {
                if let Err(e) = self.disk.set_len(&self.file, len) {
                    tracing::warn!(error = %e, "cutting a failed index append back failed");
                }
            }
        }
        self.buf.clear();
        r
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
    /// The tag every needle of this volume carries (`Superblock::tag`).
    tag: u32,
    /// Writers and deleters hold it shared; sealing holds it exclusively.
    gate: tokio::sync::RwLock<()>,
    /// A re-seed replaced this copy's file (set under the gate's write side): writes and
    /// deletes that waited for the swap are refused (503), and the caller's retry reaches
    /// the copy that replaced it. Reads go on from the open file until the last handle goes.
    replaced: AtomicBool,
    /// Its file was renamed over: `replaced` is never cleared again ([`Volume::set_superseded`]).
    superseded: AtomicBool,
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
    /// When the scrubber last finished a pass (Unix seconds; 0: never).
    scrubbed: AtomicU64,
    /// Every byte below it is durable (a group commit covered it): what shipping to remote
    /// replicas may send (`ship`).
    durable: AtomicU64,
    /// Which file the offsets mean: bumped each time a compaction or rebuild adopts a new
    /// one (under the gate), so that a shipper that agreed with a remote on one file never
    /// sends bytes of the next at the first one's offsets.
    generation: AtomicU64,
    /// An asynchronous remote replica (`vol-{id}.remote` exists): byte for byte its source's
    /// file, extended only by shipping, never compacted on its own.
    remote_copy: AtomicBool,
    /// The deletes of the last minutes, so that the writes they overtook are refused
    /// (`recent`). Taken under the index lock's read side by a delete and its write side by a
    /// write's indexing, so that one of the two always sees the other.
    recent_deletes: Mutex<recent::RecentDeletes>,
    /// While a re-seed downloads the copy that replaces this one: every delete taken since it
    /// began, for the new copy ([`Volume::take_deletes_of`]). Unbounded while it lasts
    /// (`size_of::<DeleteOf>()`, 32 bytes, a delete), unlike the delete memory, which forgets after 10 minutes and past
    /// 4096 needles. A leaf lock.
    reseed_journal: Mutex<Option<Vec<DeleteOf>>>,
    /// Told each time a write in flight (`recent`) is settled: a delete of its needle waits.
    writes_settled: tokio::sync::Notify,
}

/// A write of these needles in flight, from its check until it is indexed and settled
/// (flags of a refused write synced) or failed: a delete of one of them waits for it.
struct Writing<'a> {
    vol: &'a Volume,
    needles: Vec<(u64, u32)>,
}

impl<'a> Writing<'a> {
    /// Counts the write in; the caller holds `recent` (the lock of its check).
    fn begin(
        vol: &'a Volume,
        recent: &mut recent::RecentDeletes,
        needles: Vec<(u64, u32)>,
    ) -> Self {
        recent.begin_writes(&needles);
        Writing { vol, needles }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        lock(&self.vol.recent_deletes).end_writes(&self.needles);
        self.vol.writes_settled.notify_waiters();
    }
}

use haystack_service::sync::lock;

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

/// Every file of volume `id` in `dir`, in the order a drop removes them: a compaction's or
/// index rebuild's leftovers (the commit marker first), the sorted index, the index file, the
/// volume file, and the remote-copy mark last (without it, a volume file left would open as
/// an ordinary replica).
pub(crate) fn all_files(dir: &Path, id: u32) -> Vec<PathBuf> {
    let (dat, idx, sidx) = volume_paths(dir, id);
    let mut files = compact::leftovers(dir, id).to_vec();
    files.extend([sidx, idx, dat, ship::remote_marker(dir, id)]);
    files
}

/// A delete taken: key, alternate key, and the cookie it named (None: garbage collection's).
type DeleteOf = (u64, u32, Option<u64>);

/// Ends a re-seed's delete journal when dropped ([`Volume::journal_deletes`]).
pub(crate) struct DeleteJournal<'a>(&'a Volume);

impl Drop for DeleteJournal<'_> {
    fn drop(&mut self) {
        *lock(&self.0.reseed_journal) = None;
    }
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
                // Never 0 (the tag of version 1 volumes, which carry none).
                tag: rand::random::<u32>().max(1),
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
        // A new volume is no remote copy, whatever an earlier one of this id was.
        unmark_remote_copy(dir, id)?;
        Self::open(dir, id, engine, cfg)
    }

    /// Opens an existing volume and recovers its index (see the module docs). Blocking: call
    /// it from a blocking context at start-up.
    pub fn open(dir: &Path, id: u32, engine: IoEngine, cfg: VolumeConfig) -> Result<Arc<Self>> {
        Self::open_vouched(dir, id, engine, cfg, 0)
    }

    /// [`Volume::open`] of a file whose first `vouched_end` bytes are known to be the volume's
    /// (an import: the source's file up to its tail): below that, a bad or zeroed header is
    /// damage, skipped to the next needle, never taken for the end of the volume.
    pub fn open_vouched(
        dir: &Path,
        id: u32,
        engine: IoEngine,
        cfg: VolumeConfig,
        vouched_end: u64,
    ) -> Result<Arc<Self>> {
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
            let mut kept = 0usize;
            let read = recover::read_idx_records(&disk, &idx_file, id, |rec| {
                kept += 1;
                if rec.kind == IDX_DELETE
                    && s.get(rec.key, rec.alt).map(|l| (l.offset, l.deleted))
                        == Some((rec.offset, false))
                {
                    s.mark_deleted(rec.key, rec.alt);
                }
                true
            })?;
            // A torn record at the end (a crash in an append) would hide every delete logged
            // after it at the next open.
            recover::cut_bad_idx_tail(&disk, &idx_file, id, &read, kept);
            let mut end = SUPERBLOCK_LEN;
            for (_, _, l) in s.iter() {
                end = end.max(l.offset + l.extent as u64);
                stats.count(&l);
            }
            (VolIndex::Sealed(s), end, Mode::Sealed)
        } else {
            let Recovered {
                index,
                tail,
                problem,
                damage,
            } = recover_writable(
                &disk,
                recover::Identity {
                    id,
                    max_bytes: sb.max_bytes,
                    tag: sb.tag,
                    vouched_end,
                },
                &file,
                file_len,
                &mut idx_file,
                &cfg,
            )?;
            found_damage = damage;
            for (_, _, l) in index.iter() {
                stats.count(&l);
            }
            let mode = if let Some(p) = problem {
                Mode::ReadOnly(p)
            } else if sb.max_bytes.saturating_sub(tail) < format::needle_extent(0, 0) {
                Mode::ReadOnly("full".into())
            } else {
                Mode::Writable
            };
            (VolIndex::Mem(index), tail, mode)
        };
        let v = Volume {
            id,
            dat_path: dat,
            sidx_path,
            engine,
            max_bytes: sb.max_bytes,
            tag: sb.tag,
            cfg,
            gate: tokio::sync::RwLock::new(()),
            replaced: AtomicBool::new(false),
            superseded: AtomicBool::new(false),
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
            scrubbed: AtomicU64::new(0),
            durable: AtomicU64::new(tail),
            generation: AtomicU64::new(0),
            remote_copy: AtomicBool::new(ship::remote_marker(dir, id).exists()),
            recent_deletes: Mutex::new(recent::RecentDeletes::default()),
            reseed_journal: Mutex::new(None),
            writes_settled: tokio::sync::Notify::new(),
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

    /// The tag every needle of this volume carries (its superblock's).
    pub fn tag(&self) -> u32 {
        self.tag
    }

    pub fn path(&self) -> &Path {
        &self.dat_path
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, State> {
        haystack_service::sync::read(&self.state)
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        haystack_service::sync::write(&self.state)
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
        self.check_current()?;
        match &*lock(&self.mode) {
            Mode::Writable => Ok(()),
            Mode::ReadOnly(r) if r == "full" => Err(StoreError::Full(self.id)),
            Mode::ReadOnly(r) if r == DISK_FULL => Err(StoreError::DiskFull(self.id)),
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
        self.check_current()?;
        match &*lock(&self.mode) {
            Mode::Failed(r) => Err(StoreError::ReadOnly {
                volume: self.id,
                reason: r.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Waits until no write, delete, shipped append or compaction of this volume is in
    /// flight, and keeps new ones out while the guard lives (a re-seed swapping files).
    pub(crate) async fn quiesce(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// Marks this copy replaced by a re-seed (or not, when the swap failed and it goes on
    /// serving). Caller holds the gate's write side ([`Volume::quiesce`]).
    pub(crate) fn set_replaced(&self, replaced: bool) {
        // A copy whose file was renamed over stays replaced, whatever a later re-seed that
        // failed before its own rename says.
        if replaced || !self.superseded.load(Ordering::Acquire) {
            self.replaced.store(replaced, Ordering::Release);
        }
    }

    /// Marks this copy's file as renamed over (a re-seed that failed after its rename): it
    /// refuses writes and deletes until a restart opens the file now in its place.
    pub(crate) fn set_superseded(&self) {
        self.superseded.store(true, Ordering::Release);
        self.replaced.store(true, Ordering::Release);
    }

    /// A write or delete of a copy a re-seed replaced while it waited: "later", not "not
    /// here" (a 404 is done for a delete's caller, and the new copy may hold the needle).
    pub(super) fn check_current(&self) -> Result<()> {
        if self.replaced.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable {
                volume: self.id,
                reason: "this copy was replaced by a re-seed meanwhile; retry".into(),
            });
        }
        Ok(())
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

    /// A live needle's location and the file it is in.
    fn lookup(&self, key: u64, alt: u32) -> Result<(Loc, Arc<File>)> {
        let st = self.read_index();
        match st.get(key, alt) {
            Some(l) if !l.deleted => Ok((l, st.file.clone())),
            _ => Err(StoreError::NotFound),
        }
    }

    /// [`Volume::lookup`] for a delete. Every delete is remembered (`recent`), under the same
    /// read lock, before it looks further: a write it overtook is refused whether the needle
    /// is held here, held live but being deleted, or not held at all. Also says whether a
    /// write of the needle is in flight (the delete then waits for it before it answers).
    fn lookup_for_delete(
        &self,
        key: u64,
        alt: u32,
        cookie: Option<u64>,
    ) -> (Result<(Loc, Arc<File>)>, bool) {
        let st = self.read_index();
        let mut recent = lock(&self.recent_deletes);
        recent.insert(key, alt, cookie, std::time::Instant::now());
        if let Some(j) = lock(&self.reseed_journal).as_mut() {
            j.push((key, alt, cookie));
        }
        let found = match st.get(key, alt) {
            Some(l) if !l.deleted => Ok((l, st.file.clone())),
            Some(_) => Err(StoreError::NotFound),
            None if recent.unsettled(key, alt) => Err(self.unsettled_error()),
            None => Err(StoreError::NotFound),
        };
        (found, recent.writing(key, alt))
    }

    /// A delete of a needle a failed write may have left in the file unindexed: not "not
    /// here" (the next open may take those bytes live), but "later" (503; the caller retries,
    /// and after a restart the delete finds the needle or nothing).
    fn unsettled_error(&self) -> StoreError {
        metrics::counter!("haystack_store_deletes_refused_unsettled_total").increment(1);
        StoreError::Unavailable {
            volume: self.id,
            reason: "a write of this needle failed after its bytes may have reached the disk: \
                     the delete is taken once the store has restarted"
                .into(),
        }
    }

    /// Takes the deletes `old` (the copy this one replaces: a re-seed) holds that this copy
    /// does not: the needles `old` holds deleted and this one live, and every delete `old`
    /// remembers (so that a late write is refused here too). A delete the old copy took while
    /// this one was downloading would otherwise be lost with it. Returns how many needles were
    /// deleted here.
    pub(crate) async fn take_deletes_of(&self, old: &Volume) -> Result<usize> {
        let mut carry = old.deletes_to_carry(std::time::Instant::now());
        {
            let st = self.read_index();
            carry.extend(
                old.needle_entries()
                    .into_iter()
                    .filter(|e| e.deleted && st.get(e.key, e.alt).is_some_and(|l| !l.deleted))
                    .map(|e| (e.key, e.alt, None)),
            );
        }
        let mut deleted = 0;
        for (key, alt, cookie) in carry {
            match self.delete_inner(key, alt, cookie).await {
                Ok(()) => deleted += 1,
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Remembers every delete `old` remembers or journaled (a re-seed's new copy, opened in
    /// place after it took them as flags in its file): a needle shipped later, or a write,
    /// that would undo one is laid down deleted or refused, as on the old copy.
    pub(crate) fn remember_deletes_of(&self, old: &Volume) {
        let now = std::time::Instant::now();
        let carry = old.deletes_to_carry(now);
        let mut recent = lock(&self.recent_deletes);
        for (key, alt, cookie) in carry {
            recent.insert(key, alt, cookie, now);
        }
    }

    /// The deletes this copy remembers and those its re-seed journal holds (for the copy
    /// that replaces it).
    fn deletes_to_carry(&self, now: std::time::Instant) -> Vec<DeleteOf> {
        let mut carry = lock(&self.recent_deletes).remembered(now);
        if let Some(j) = lock(&self.reseed_journal).as_ref() {
            carry.extend(j.iter().copied());
        }
        carry
    }

    /// Journals every delete this copy takes from now until the guard drops (a re-seed's
    /// download: see `reseed_journal`).
    pub(crate) fn journal_deletes(&self) -> DeleteJournal<'_> {
        *lock(&self.reseed_journal) = Some(Vec::new());
        DeleteJournal(self)
    }

    /// Notes that a write of these needles failed after its bytes may have reached the file.
    pub(super) fn write_failed(&self, needles: &[(u64, u32)]) {
        lock(&self.recent_deletes).mark_unsettled(needles);
    }

    /// Waits until no write of `(key, alt)` is in flight. A write that starts after a delete
    /// was remembered is refused at its check, so this ends once those in flight settle.
    async fn writes_of_settled(&self, key: u64, alt: u32) {
        loop {
            let mut settled = std::pin::pin!(self.writes_settled.notified());
            {
                let recent = lock(&self.recent_deletes);
                if !recent.writing(key, alt) {
                    return;
                }
                // Registered under the lock the writer takes to end its write: its
                // notification cannot be missed.
                settled.as_mut().enable();
            }
            settled.await;
        }
    }

    /// Whether a write of this needle would undo a delete: the index holds it deleted, or a
    /// delete of it (with this cookie, or garbage collection's) was taken in the last minutes
    /// (`recent`). Called with the index lock held (either side).
    fn undoes_delete(
        &self,
        st: &State,
        key: u64,
        alt: u32,
        cookie: u64,
        recent: &recent::RecentDeletes,
    ) -> bool {
        st.get(key, alt).is_some_and(|l| l.deleted)
            || (!recent.is_empty() && recent.holds(key, alt, cookie, std::time::Instant::now()))
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
        if p.header.tag != self.tag {
            return Err(self.corrupt(loc, "the needle carries another volume's tag".into()));
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
        let (found, writing) = self.lookup_for_delete(key, alt, cookie);
        let answer = match found {
            Ok((loc, file)) => self.delete_at(key, alt, cookie, loc, &file, false).await,
            Err(e) => Err(e),
        };
        if !writing {
            return answer;
        }
        // A write of this needle was in flight when the delete was remembered: it is refused
        // when it is indexed (laid down, then flagged deleted), or it failed. The delete
        // answers only once that write is over and the newest copy's flag is set and synced by
        // this delete itself, so that no power cut after the answer can bring back bytes the
        // write laid down (they may have reached the disk live before their flag did, or
        // their flag may have failed to).
        self.writes_of_settled(key, alt).await;
        let newest = {
            let st = self.read_index();
            st.get(key, alt).map(|l| (l, st.file.clone()))
        };
        if newest.is_none() && lock(&self.recent_deletes).unsettled(key, alt) {
            return Err(self.unsettled_error());
        }
        if let Some((loc, file)) = newest {
            metrics::counter!("haystack_store_deletes_waited_for_writes_total").increment(1);
            match self.delete_at(key, alt, cookie, loc, &file, true).await {
                Ok(()) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        answer
    }

    /// Sets the delete flag of the needle at `loc` and syncs it, then its index record. A
    /// wrong cookie is `NotFound`; so is a needle flagged deleted already, unless `settle`,
    /// which sets and syncs the flag again (whether an earlier write of it was durable is
    /// not known).
    async fn delete_at(
        &self,
        key: u64,
        alt: u32,
        cookie: Option<u64>,
        loc: Loc,
        file: &Arc<File>,
        settle: bool,
    ) -> Result<()> {
        let buf = self.engine.read_at(file, loc.offset, HEADER_LEN).await?;
        let h = NeedleHeader::decode(&buf).map_err(|e| self.corrupt(loc, e.to_string()))?;
        if h.key != key || h.alt != alt {
            return Err(self.corrupt(loc, "header does not match the index".into()));
        }
        if h.deleted() && !settle {
            self.learn_deleted(key, alt, loc);
            return Err(StoreError::NotFound);
        }
        if cookie.is_some_and(|c| c != h.cookie) {
            return Err(StoreError::NotFound);
        }
        if let Err(e) = self
            .engine
            .write_all_at(
                file,
                loc.offset + FLAGS_OFFSET,
                vec![h.flags | FLAG_DELETED],
            )
            .await
        {
            self.set_read_only(format!("disk error: {e}"));
            return Err(StoreError::Io(e));
        }
        if let Err(e) = self.commit.commit(&self.engine, file, 1).await {
            self.set_read_only(format!("disk error: {e}"));
            return Err(StoreError::Io(e));
        }
        let _ = self.note_deleted(key, alt, loc);
        // The delete record reaches the index file, synced, before the delete is acknowledged:
        // on open the index file is trusted for the needles it covers (their headers are not
        // read again), so a lost record would leave a deleted needle counted live, listed live
        // to garbage collection and to replica comparison. Reads were never at risk (they
        // check the flag in the volume file). Concurrent deletes share the sync.
        let (idx_file, appended) = {
            let mut log = lock(&self.idx_log);
            log.push(IDX_DELETE, key, alt, loc);
            let appended = log.flush();
            (log.file.clone(), appended)
        };
        if let Err(e) = appended {
            // As a failed sync of it, below: the flag is durable, the record is not.
            self.set_read_only(format!("disk error on the index file: {e}"));
            return Err(StoreError::Io(e));
        }
        if let Err(e) = self.idx_commit.commit(&self.engine, &idx_file, 1).await {
            // The flag in the volume file is durable (reads see the delete), but without its
            // record the next open would count the needle live: the delete is not
            // acknowledged (the caller retries), and the volume takes no more writes.
            self.set_read_only(format!("disk error on the index file: {e}"));
            return Err(StoreError::Io(e));
        }
        self.journal(|j| {
            j.touched.insert((key, alt));
        });
        Ok(())
    }

    /// Seals the volume: no more writes; the index moves to a sorted file mapped from disk.
    pub async fn seal(&self) -> Result<()> {
        let _gate = self.gate.write().await;
        // A seal that waited while a re-seed replaced this copy would write its sorted index
        // over the new copy's.
        self.check_current()?;
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
        let _ = lock(&self.idx_log).flush();
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
        let _ = lock(&self.idx_log).flush();
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
            scrubbed_unix: Some(self.scrubbed_unix()).filter(|t| *t > 0),
            tag: (self.tag != 0).then_some(self.tag),
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
        let (entries, file) = self.live_entries();
        let mut report = VerifyReport {
            volume: self.id,
            checked: 0,
            bytes: 0,
            corrupt: Vec::new(),
            unindexed: lock(&self.damage).clone(),
        };
        for (key, alt, loc) in entries {
            report.checked += 1;
            report.bytes += u64::from(loc.extent);
            if let Some(detail) = self.check_needle(&file, key, alt, loc).await? {
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

    /// The live needles the index knows and the file they are in (a snapshot: verify and the
    /// scrubber walk it while writes go on).
    pub fn live_entries(&self) -> (Vec<IndexEntry>, Arc<File>) {
        let st = self.read_index();
        let e = match &st.index {
            VolIndex::Mem(m) => m.iter().filter(|e| !e.2.deleted).collect(),
            VolIndex::Sealed(s) => s.iter().filter(|e| !e.2.deleted).collect(),
        };
        (e, st.file.clone())
    }

    /// Reads one needle of a [`Volume::live_entries`] snapshot and checks it (magic, header
    /// CRC, key and alternate key, tag, footer, data CRC). `Some(detail)`: it is corrupt
    /// (counted in `haystack_store_crc_errors_total`). A read error is an error.
    pub async fn check_needle(
        &self,
        file: &Arc<File>,
        key: u64,
        alt: u32,
        loc: Loc,
    ) -> Result<Option<String>> {
        let buf = self
            .engine
            .read_at(file, loc.offset, loc.extent as usize)
            .await?;
        let problem = match parse_needle(&buf) {
            Err(e) => Some(e.to_string()),
            Ok(p) if p.header.key != key || p.header.alt != alt => {
                Some("the needle at this offset has another key".to_string())
            }
            Ok(p) if p.header.tag != self.tag => {
                Some("the needle carries another volume's tag".to_string())
            }
            Ok(_) => None,
        };
        if problem.is_some() {
            metrics::counter!("haystack_store_crc_errors_total").increment(1);
        }
        Ok(problem)
    }

    /// When the scrubber last finished a pass over this volume (Unix seconds; 0: never).
    pub fn scrubbed_unix(&self) -> u64 {
        self.scrubbed.load(Ordering::Relaxed)
    }

    /// Records a finished scrub pass (the scrubber; also restored from its state file).
    pub fn set_scrubbed_unix(&self, at: u64) {
        self.scrubbed.store(at, Ordering::Relaxed);
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
pub type IndexEntry = (u64, u32, Loc);
