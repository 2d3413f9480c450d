//! Online compaction of one volume (the live needles are copied into a new file while writes
//! and deletes go on, then the new file and its index replace the old ones under the gate),
//! and the index rebuild from the volume file alone.
//!
//! How it stays correct:
//! - A journal is switched on before the first snapshot of the index: every put indexed and
//!   every delete synced from then on is recorded in it (under the gate's read side, so the
//!   final phase, which holds the write side, sees all of them).
//! - Phase 1 copies the live needles of the snapshot, in offset order, checking each one
//!   (header, key, data CRC): a corrupt needle stops the compaction (repair it first with
//!   `haystack volume verify`), it is never copied nor dropped silently.
//! - Catch-up phases copy the journal's puts that are still current, without blocking
//!   writers, until little is left; the final phase takes the gate's write side (writes and
//!   deletes wait), copies the rest, resolves every key written or deleted since the snapshot
//!   against the current index (only the copy of its current live version stays live; every
//!   other copy is flagged deleted in the new file), syncs, and swaps.
//! - On disk, the new files are `vol-N.dat.compact`, `vol-N.idx.compact` and (sealed volumes)
//!   `vol-N.sidx.compact`, all synced before a marker `vol-N.compacted` is created and synced:
//!   the commit point. Then each is renamed over its original and the marker removed. On open,
//!   a marker means "roll forward" (finish the renames), no marker means "roll back" (delete
//!   the `.compact` files). A crash at any point therefore leaves either the old volume or
//!   the new one, whole. If anything fails after the marker, the volume turns read-only so
//!   that nothing more is acknowledged into the old file; the next open rolls forward.
//! - Readers take the file with the location under one lock (`State`): a read that looked
//!   up an old offset reads it in the old file, which stays open until its last reader is done.
//!
//! Memory: about 48 bytes per live needle while it runs (the snapshot, the new entries and
//! the old-to-new offset map), freed at the end.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::*;

/// Bytes read and written per copy step.
const RUN_BYTES: u64 = 8 << 20;
/// Catch-up phases stop once a phase had less than this to copy.
const CATCH_UP_DONE_BYTES: u64 = 4 << 20;
const CATCH_UP_PHASES: usize = 8;

/// Puts and deletes that happened while a compaction runs.
#[derive(Default)]
pub(super) struct Journal {
    /// Puts not yet looked at by a copy phase.
    pub(super) puts: Vec<IndexEntry>,
    /// Every key written or deleted since the snapshot: only their copies can be stale, and
    /// the final phase resolves them against the current index.
    pub(super) touched: HashSet<(u64, u32)>,
}

/// A running compaction, shared with the write and delete paths (the journal) and with
/// `info()` (progress).
#[derive(Default)]
pub(super) struct Compaction {
    pub(super) journal: Mutex<Journal>,
    done_bytes: AtomicU64,
    total_bytes: AtomicU64,
    #[cfg(feature = "test-hooks")]
    pause: Option<CompactPause>,
}

impl Compaction {
    #[cfg(feature = "test-hooks")]
    fn with_pause(pause: CompactPause) -> Compaction {
        Compaction {
            pause: Some(pause),
            ..Default::default()
        }
    }

    /// Where a test wants this compaction to fail as a disk error would.
    fn fail_at(&self) -> Option<CrashPoint> {
        #[cfg(feature = "test-hooks")]
        if let Some(p) = &self.pause {
            return p.fail_at;
        }
        None
    }

    /// Waits at the test's pause point, if one is set.
    async fn pause_point(&self) {
        #[cfg(feature = "test-hooks")]
        if let Some(p) = &self.pause {
            p.reached.notify_one();
            p.resume.notified().await;
        }
    }

    pub(super) fn progress(&self) -> haystack_proto::CompactionProgress {
        haystack_proto::CompactionProgress {
            done_bytes: self.done_bytes.load(Ordering::Relaxed),
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A pause between the first copy phase and the catch-up phases, so that a test can write
/// and delete while the snapshot's copies exist (test builds only).
#[cfg(feature = "test-hooks")]
#[derive(Clone, Default)]
pub struct CompactPause {
    /// Told when the first copy phase is done.
    pub reached: Arc<tokio::sync::Notify>,
    /// Waited for before the compaction goes on.
    pub resume: Arc<tokio::sync::Notify>,
    /// Fails the compaction at this point as a disk error would (the process goes on).
    pub fail_at: Option<CrashPoint>,
}

/// Points where a test can stop a compaction as a crash would (files left as they are);
/// reachable from outside the crate with the `test-hooks` feature only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The new files are written and synced; no marker yet.
    BeforeMarker,
    /// The marker exists; nothing renamed.
    AfterMarker,
    /// The new volume file is in place; the new index file is not.
    AfterDataRename,
    /// Every file is in place; the marker is still there.
    BeforeMarkerRemoval,
}

fn crash_here(stop: Option<CrashPoint>, fail: Option<CrashPoint>, at: CrashPoint) -> Result<()> {
    if stop == Some(at) {
        return Err(StoreError::Io(io::Error::other(format!(
            "compaction stopped at {at:?} (test)"
        ))));
    }
    if fail == Some(at) {
        return Err(StoreError::Io(io::Error::from_raw_os_error(libc::EIO)));
    }
    Ok(())
}

/// What a compaction did (`POST /v1/volumes/{id}/compact`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CompactReport {
    pub volume: u32,
    /// Volume file bytes in use before and after.
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub reclaimed_bytes: u64,
    /// Live needles in the new file.
    pub needles: u64,
    /// Copy passes: the snapshot, the catch-ups and the final one.
    pub phases: u32,
    /// How long writes and deletes waited (the final phase), milliseconds.
    pub pause_ms: u64,
    pub elapsed_ms: u64,
}

/// The temporary index file of an index rebuild.
fn rebuild_tmp(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("vol-{id}.idx.rebuild"))
}

/// Every file a compaction or an index rebuild of volume `id` may leave in `dir`: the commit
/// marker first (with it, an open rolls the new files forward into a volume).
pub(super) fn leftovers(dir: &Path, id: u32) -> [PathBuf; 5] {
    let p = Paths::new(dir, id);
    [p.marker, p.dat, p.idx, p.sidx, rebuild_tmp(dir, id)]
}

#[derive(Clone)]
struct Paths {
    dir: PathBuf,
    dat: PathBuf,
    idx: PathBuf,
    sidx: PathBuf,
    marker: PathBuf,
}

impl Paths {
    fn new(dir: &Path, id: u32) -> Paths {
        let (dat, idx, sidx) = volume_paths(dir, id);
        let c = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(".compact");
            PathBuf::from(s)
        };
        Paths {
            dir: dir.to_path_buf(),
            dat: c(&dat),
            idx: c(&idx),
            sidx: c(&sidx),
            marker: dir.join(format!("vol-{id}.compacted")),
        }
    }

    fn remove_all(&self, disk: &crate::disk::Disk) {
        for p in [&self.dat, &self.idx, &self.sidx] {
            if p.exists() {
                let _ = disk.remove(p);
            }
        }
    }
}

/// Finishes or undoes a compaction that a crash interrupted (called by `Volume::open`).
pub(super) fn recover_interrupted(disk: &crate::disk::Disk, dir: &Path, id: u32) -> io::Result<()> {
    let p = Paths::new(dir, id);
    let (dat, idx, sidx) = volume_paths(dir, id);
    if p.marker.exists() {
        for (from, to) in [(&p.dat, &dat), (&p.sidx, &sidx), (&p.idx, &idx)] {
            if from.exists() {
                disk.rename(from, to)?;
            }
        }
        disk.sync_dir(dir)?;
        disk.remove(&p.marker)?;
        disk.sync_dir(dir)?;
        tracing::warn!(volume = id, "interrupted compaction finished on open");
    } else if p.dat.exists() || p.idx.exists() || p.sidx.exists() {
        p.remove_all(disk);
        disk.sync_dir(dir)?;
        tracing::warn!(volume = id, "interrupted compaction rolled back on open");
    }
    Ok(())
}

/// A compaction that cannot tell which copy of a needle is live stops with nothing changed.
fn unresolved(volume: u32, key: u64, alt: u32, why: &str) -> StoreError {
    StoreError::Io(io::Error::other(format!(
        "compaction of volume {volume} stopped, nothing changed: {key}/{alt}: {why}"
    )))
}

/// The new files while they are being written.
struct NewFiles {
    disk: crate::disk::Disk,
    dat: File,
    idx: File,
    idx_buf: Vec<u8>,
    tail: u64,
    /// Index entries of the copies (at their new offsets) with the old offset each was copied
    /// from, in copy order.
    entries: Vec<(IndexEntry, u64)>,
    /// (old offset, new offset, extent) of every copy; sorted between phases.
    map: Vec<(u64, u64, u32)>,
}

impl NewFiles {
    fn create(
        disk: &crate::disk::Disk,
        paths: &Paths,
        id: u32,
        old: &File,
    ) -> io::Result<NewFiles> {
        let mut sb = [0u8; SUPERBLOCK_LEN as usize];
        disk.read_exact_at(old, &mut sb, 0)?;
        let dat = disk.create(&paths.dat)?;
        disk.write_all_at(&dat, &sb, 0)?;
        let idx = disk.create(&paths.idx)?;
        disk.write_all_at(&idx, &idx_header(id), 0)?;
        Ok(NewFiles {
            disk: disk.clone(),
            dat,
            idx,
            idx_buf: Vec::new(),
            tail: SUPERBLOCK_LEN,
            entries: Vec::new(),
            map: Vec::new(),
        })
    }

    /// Where the needle at `old_offset` was copied to, and its extent.
    fn copied(&self, old_offset: u64) -> Option<(u64, u32)> {
        self.map
            .binary_search_by_key(&old_offset, |m| m.0)
            .ok()
            .map(|i| (self.map[i].1, self.map[i].2))
    }

    /// Copies `todo` (live needles of `old`) to the end of the new file, checking each.
    fn copy(
        &mut self,
        volume: u32,
        old: &File,
        mut todo: Vec<IndexEntry>,
        progress: &Compaction,
    ) -> Result<()> {
        todo.sort_unstable_by_key(|e| e.2.offset);
        let mut out: Vec<u8> = Vec::with_capacity(RUN_BYTES as usize);
        let mut buf: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < todo.len() {
            // A run of needles that sit back to back in the old file: one read.
            let start = todo[i].2.offset;
            let mut end = start + todo[i].2.extent as u64;
            let mut j = i + 1;
            while j < todo.len()
                && todo[j].2.offset == end
                && end - start + (todo[j].2.extent as u64) <= RUN_BYTES
            {
                end += todo[j].2.extent as u64;
                j += 1;
            }
            buf.resize((end - start) as usize, 0);
            self.disk.read_exact_at(old, &mut buf, start)?;
            for &(key, alt, loc) in &todo[i..j] {
                let rel = (loc.offset - start) as usize;
                let bytes = &buf[rel..rel + loc.extent as usize];
                let corrupt = |detail: String| {
                    StoreError::Corrupt {
                    volume,
                    offset: loc.offset,
                    detail: format!(
                        "{detail}; compaction stopped, nothing changed (repair with `haystack volume verify`)"
                    ),
                }
                };
                let p = parse_needle(bytes).map_err(|e| corrupt(e.to_string()))?;
                if p.header.key != key || p.header.alt != alt {
                    return Err(corrupt("the index points at another needle".into()));
                }
                if p.header.deleted() {
                    // Deleted in the file, its index record lost: nothing to keep.
                    continue;
                }
                let new = Loc {
                    offset: self.tail,
                    extent: loc.extent,
                    deleted: false,
                };
                out.extend_from_slice(bytes);
                self.idx_buf
                    .extend_from_slice(&idx_record(IDX_PUT, key, alt, new));
                self.entries.push(((key, alt, new), loc.offset));
                self.map.push((loc.offset, new.offset, loc.extent));
                self.tail += loc.extent as u64;
            }
            if out.len() as u64 >= RUN_BYTES {
                self.flush_out(&mut out)?;
            }
            progress
                .done_bytes
                .fetch_add(end - start, Ordering::Relaxed);
            i = j;
        }
        self.flush_out(&mut out)?;
        self.map.sort_unstable();
        Ok(())
    }

    /// Decides, under the gate, which copy of each needle is the live one, and flags every
    /// other copy deleted in the new file (with a delete record in the new index file). A key
    /// nobody wrote or deleted since the snapshot has exactly one copy, current by
    /// construction. A touched key's copy is live only if it was copied from the offset the
    /// current index points at and that needle is not deleted: a needle copied early, then
    /// rewritten and deleted, must not come back with its old bytes. Returns the new index,
    /// one entry per key, sorted.
    fn resolve(
        &mut self,
        volume: u32,
        current: &HashMap<(u64, u32), Option<Loc>>,
    ) -> Result<Vec<IndexEntry>> {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_unstable_by_key(|(e, _)| (e.0, e.1, e.2.offset));
        let mut out: Vec<IndexEntry> = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            let (k, a) = (entries[i].0 .0, entries[i].0 .1);
            let mut j = i + 1;
            while j < entries.len() && (entries[j].0 .0, entries[j].0 .1) == (k, a) {
                j += 1;
            }
            let group = &entries[i..j];
            let live = match current.get(&(k, a)) {
                // Untouched since the snapshot: one copy, the current one.
                None => group.last().map(|g| g.0 .2.offset),
                Some(Some(cur)) if !cur.deleted => match group.iter().find(|g| g.1 == cur.offset) {
                    Some(g) => Some(g.0 .2.offset),
                    None => {
                        return Err(unresolved(
                            volume,
                            k,
                            a,
                            "its current version was not copied",
                        ))
                    }
                },
                Some(_) => None,
            };
            // The live copy must be the newest copy of its key: recovery from the new index
            // file lets the highest offset win.
            if let Some(l) = live {
                if group.last().map(|g| g.0 .2.offset) != Some(l) {
                    return Err(unresolved(
                        volume,
                        k,
                        a,
                        "a stale copy lies past the live one",
                    ));
                }
            }
            for &((_, _, loc), _) in group {
                if Some(loc.offset) == live {
                    continue;
                }
                let mut flags = [0u8; 1];
                self.disk
                    .read_exact_at(&self.dat, &mut flags, loc.offset + FLAGS_OFFSET)?;
                self.disk.write_all_at(
                    &self.dat,
                    &[flags[0] | FLAG_DELETED],
                    loc.offset + FLAGS_OFFSET,
                )?;
                self.idx_buf
                    .extend_from_slice(&idx_record(IDX_DELETE, k, a, loc));
            }
            let (_, _, last) = group[group.len() - 1].0;
            out.push((
                k,
                a,
                Loc {
                    deleted: Some(last.offset) != live,
                    ..last
                },
            ));
            i = j;
        }
        Ok(out)
    }

    fn flush_out(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            let at = self.tail - out.len() as u64;
            self.disk.write_all_at(&self.dat, out, at)?;
            out.clear();
        }
        if !self.idx_buf.is_empty() {
            self.disk.append(&self.idx, &self.idx_buf)?;
            self.idx_buf.clear();
        }
        Ok(())
    }
}

use crate::store::blocking;

impl Volume {
    /// Compacts the volume online (see the module docs). One at a time per volume; runs as
    /// its own task, so a dropped request does not stop it halfway.
    pub async fn compact(self: &Arc<Self>) -> Result<CompactReport> {
        self.compact_with(None, Default::default()).await
    }

    /// `compact`, stopped at `stop` as if the process died there: the files stay as they
    /// are, and this volume object must not be used again (tests reopen the volume).
    #[cfg(feature = "test-hooks")]
    pub async fn compact_until(
        self: &Arc<Self>,
        stop: Option<CrashPoint>,
    ) -> Result<CompactReport> {
        self.compact_with(stop, Default::default()).await
    }

    /// `compact`, pausing after its first copy phase until the test says so.
    #[cfg(feature = "test-hooks")]
    pub async fn compact_paused(self: &Arc<Self>, pause: CompactPause) -> Result<CompactReport> {
        self.compact_with(None, Compaction::with_pause(pause)).await
    }

    async fn compact_with(
        self: &Arc<Self>,
        stop: Option<CrashPoint>,
        c: Compaction,
    ) -> Result<CompactReport> {
        // An asynchronous remote copy follows its source's file byte for byte (shipping
        // checks offsets against it), and a re-seed may swap its files at any time.
        if self.is_remote_copy() {
            return Err(StoreError::BadRequest(format!(
                "volume {} is an asynchronous remote copy: it follows its source's file and is \
                 not compacted here",
                self.id
            )));
        }
        self.check_current()?;
        // A compaction that failed past its commit point left files that only a restart
        // (the roll-forward on open) may touch: a new compaction would truncate them.
        if let Mode::Failed(reason) = &*lock(&self.mode) {
            return Err(StoreError::Busy(format!(
                "volume {} cannot be compacted: {reason}",
                self.id
            )));
        }
        if Paths::new(&self.dir(), self.id).marker.exists() {
            return Err(StoreError::Busy(format!(
                "volume {} has an unfinished compaction (commit marker present); restart the store to finish it",
                self.id
            )));
        }
        let c = {
            let mut g = lock(&self.compaction);
            if g.is_some() {
                return Err(StoreError::Busy(format!(
                    "volume {} is being compacted already",
                    self.id
                )));
            }
            let c = Arc::new(c);
            *g = Some(c.clone());
            c
        };
        let v = self.clone();
        let r = tokio::spawn(async move {
            let r = v.compact_inner(&c, stop).await;
            *lock(&v.compaction) = None;
            r
        })
        .await
        .map_err(|e| StoreError::Io(io::Error::other(format!("compaction task failed: {e}"))))?;
        match &r {
            Ok(rep) => tracing::info!(
                volume = self.id,
                before = rep.before_bytes,
                after = rep.after_bytes,
                needles = rep.needles,
                pause_ms = rep.pause_ms,
                elapsed_ms = rep.elapsed_ms,
                "volume compacted"
            ),
            Err(e) => tracing::warn!(volume = self.id, error = %e, "compaction failed"),
        }
        r
    }

    /// The directory holding the volume's files.
    pub(super) fn dir(&self) -> PathBuf {
        self.dat_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The progress of a running compaction.
    pub(super) fn compaction_progress(&self) -> Option<haystack_proto::CompactionProgress> {
        lock(&self.compaction).as_ref().map(|c| c.progress())
    }

    /// Records a put or delete in the journal of a running compaction. Caller holds the gate.
    pub(super) fn journal(&self, f: impl FnOnce(&mut Journal)) {
        if let Some(c) = lock(&self.compaction).as_ref() {
            f(&mut lock(&c.journal));
        }
    }

    async fn compact_inner(
        self: &Arc<Self>,
        c: &Arc<Compaction>,
        stop: Option<CrashPoint>,
    ) -> Result<CompactReport> {
        let started = Instant::now();
        let dir = self.dir();
        let paths = Paths::new(&dir, self.id);
        let before = self.tail.load(Ordering::Acquire);
        let live = self.stats.live_bytes.load(Ordering::Relaxed);
        let (_, free) = crate::heartbeat::disk_space(&dir);
        if free < live + (64 << 20) {
            return Err(StoreError::NoSpace(format!(
                "compaction of volume {} needs {} bytes free, the disk has {free}",
                self.id,
                live + (64 << 20)
            )));
        }
        // The journal is on (set by `compact`) before this snapshot: nothing falls between.
        let (old_file, snapshot) = {
            let st = self.read_index();
            let e: Vec<IndexEntry> = match &st.index {
                VolIndex::Mem(m) => m.iter().filter(|e| !e.2.deleted).collect(),
                VolIndex::Sealed(s) => s.iter().filter(|e| !e.2.deleted).collect(),
            };
            (st.file.clone(), e)
        };
        c.total_bytes.store(
            snapshot.iter().map(|e| e.2.extent as u64).sum(),
            Ordering::Relaxed,
        );
        let result = self
            .compact_phases(c, old_file, snapshot, before, started, stop)
            .await;
        // A copy dropped or replaced meanwhile: its `vol-N.*` names are gone with it or
        // belong to another copy now (its own compaction's, perhaps); this one's new files
        // are unlinked inodes already.
        if result.is_err()
            && !paths.marker.exists()
            && stop.is_none()
            && self.check_current().is_ok()
        {
            paths.remove_all(self.engine.disk());
        }
        result
    }

    async fn compact_phases(
        self: &Arc<Self>,
        c: &Arc<Compaction>,
        old_file: Arc<File>,
        snapshot: Vec<IndexEntry>,
        before: u64,
        started: Instant,
        stop: Option<CrashPoint>,
    ) -> Result<CompactReport> {
        let id = self.id;
        let paths = &Paths::new(&self.dir(), id);
        let mut phases = 1u32;
        let fail = c.fail_at();
        let (nf, old_file) = {
            let (c, p, disk) = (c.clone(), paths.clone(), self.engine.disk().clone());
            blocking(move || {
                let mut nf = NewFiles::create(&disk, &p, id, &old_file)?;
                nf.copy(id, &old_file, snapshot, &c)?;
                Ok((nf, old_file))
            })
            .await?
        };
        let mut nf = nf;
        c.pause_point().await;
        // Catch up with what was written meanwhile, writers still running.
        for _ in 0..CATCH_UP_PHASES {
            // A copy dropped (moved elsewhere) meanwhile: no more copying into unlinked files.
            self.check_current()?;
            let todo = self.pending_puts(c, &nf);
            if todo.is_empty() {
                break;
            }
            let bytes: u64 = todo.iter().map(|e| e.2.extent as u64).sum();
            c.total_bytes.fetch_add(bytes, Ordering::Relaxed);
            phases += 1;
            let (c2, f) = (c.clone(), old_file.clone());
            nf = blocking(move || {
                nf.copy(id, &f, todo, &c2)?;
                Ok(nf)
            })
            .await?;
            if bytes < CATCH_UP_DONE_BYTES {
                break;
            }
        }

        // Most of the copy reaches the disk now, while writers still run: the sync under the
        // gate then only has the last phase's bytes to write.
        nf = blocking(move || {
            nf.disk.sync_data(&nf.dat)?;
            Ok(nf)
        })
        .await?;

        // Final phase: writes and deletes wait.
        let _gate = self.gate.write().await;
        // A copy dropped (moved elsewhere) or replaced by a re-seed while this one copied is
        // not put back: no commit, and the new files go with the error (no marker yet).
        self.check_current()?;
        let paused = Instant::now();
        let mut ap = self.append.lock().await;
        let todo = self.pending_puts(c, &nf);
        let (sealed, current) = {
            let st = self.read_index();
            let touched = std::mem::take(&mut lock(&c.journal).touched);
            let current: HashMap<(u64, u32), Option<Loc>> = touched
                .into_iter()
                .map(|(k, a)| ((k, a), st.get(k, a)))
                .collect();
            (matches!(st.index, VolIndex::Sealed(_)), current)
        };
        phases += 1;
        let (c2, f) = (c.clone(), old_file.clone());
        let p = paths.clone();
        let (nf, entries) = blocking(move || {
            let mut nf = nf;
            nf.copy(id, &f, todo, &c2)?;
            let dedup = nf.resolve(id, &current)?;
            let mut out = Vec::new();
            nf.flush_out(&mut out)?;
            nf.disk.sync_all(&nf.dat)?;
            nf.disk.sync_all(&nf.idx)?;
            if sealed {
                SortedIndex::write(&p.sidx, dedup.iter().copied())?;
            }
            crash_here(stop, fail, CrashPoint::BeforeMarker)?;
            // The commit point.
            let marker = nf.disk.create(&p.marker)?;
            nf.disk.sync_all(&marker)?;
            nf.disk.sync_dir(&p.dir)?;
            crash_here(stop, fail, CrashPoint::AfterMarker)?;
            Ok((nf, dedup))
        })
        .await?;

        // Past the marker the new volume is the truth on disk: from here a failure must stop
        // acknowledgements into the old file (the next open rolls forward).
        let swapped = {
            let p = paths.clone();
            let disk = self.engine.disk().clone();
            let (dat, idx, sidx) = volume_paths(&paths.dir, id);
            blocking(move || {
                disk.rename(&p.dat, &dat)?;
                disk.sync_dir(&p.dir)?;
                crash_here(stop, fail, CrashPoint::AfterDataRename)?;
                if sealed {
                    disk.rename(&p.sidx, &sidx)?;
                }
                disk.rename(&p.idx, &idx)?;
                disk.sync_dir(&p.dir)?;
                crash_here(stop, fail, CrashPoint::BeforeMarkerRemoval)?;
                disk.remove(&p.marker)?;
                disk.sync_dir(&p.dir)?;
                let index = if sealed {
                    VolIndex::Sealed(SortedIndex::open(&sidx)?)
                } else {
                    VolIndex::Mem(MemIndex::from_sorted(entries.iter().copied()))
                };
                Ok((index, entries))
            })
            .await
        };
        let (index, entries) = match swapped {
            Ok(x) => x,
            Err(e) if stop.is_some() => return Err(e),
            Err(e) => {
                self.set_failed(format!(
                    "compaction failed after its commit point ({e}); restart the store to finish it"
                ));
                return Err(e);
            }
        };
        let NewFiles { dat, idx, tail, .. } = nf;
        // SAFETY: plain syscall on an owned descriptor.
        unsafe { libc::posix_fadvise(dat.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        let (old_index, replaced) = {
            let mut st = self.write_index();
            (
                std::mem::replace(&mut st.index, index),
                std::mem::replace(&mut st.file, Arc::new(dat)),
            )
        };
        ap.allocated = tail;
        self.adopt(idx, &mut ap, tail, &entries);
        {
            let mut m = lock(&self.mode);
            if matches!(&*m, Mode::ReadOnly(r) if r == "full")
                && self.max_bytes.saturating_sub(tail) >= (self.max_bytes / 20).max(1 << 20)
            {
                *m = Mode::Writable;
            }
        }
        drop(ap);
        let pause_ms = paused.elapsed().as_millis() as u64;
        drop(_gate);
        // The old file is unlinked already: its last close frees its blocks (with discard:
        // the benchmark saw a ~1 s writer stall when it ran on an async worker). Never on an
        // async worker, never under a lock.
        tokio::task::spawn_blocking(move || drop((old_file, replaced, old_index)));
        metrics::counter!("haystack_store_compactions_total").increment(1);
        metrics::counter!("haystack_store_compaction_reclaimed_bytes_total")
            .increment(before.saturating_sub(tail));
        Ok(CompactReport {
            volume: id,
            before_bytes: before,
            after_bytes: tail,
            reclaimed_bytes: before.saturating_sub(tail),
            needles: entries.len() as u64,
            phases,
            pause_ms,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Takes on a new index file, tail and statistics after a compaction or a rebuild (the
    /// caller holds the gate and the append lock, and has swapped the index). Records
    /// buffered for the old index file describe old offsets: dropped, not flushed. Returns the
    /// deleted needles counted.
    fn adopt(&self, idx: File, ap: &mut Append, tail: u64, entries: &[IndexEntry]) -> u64 {
        {
            let mut log = lock(&self.idx_log);
            log.file = Arc::new(idx);
            log.buf.clear();
        }
        ap.tail = tail;
        self.tail.store(tail, Ordering::Release);
        // The new file is synced whole, and the old file's offsets mean nothing now: what is
        // durable ends at the new tail (shipping reads up to it, never past the file's end).
        self.durable.store(tail, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let (mut live_bytes, mut dead) = (0u64, 0u64);
        for e in entries {
            if e.2.deleted {
                dead += 1;
            } else {
                live_bytes += e.2.extent as u64;
            }
        }
        self.stats.live_bytes.store(live_bytes, Ordering::Relaxed);
        self.stats.deleted_needles.store(dead, Ordering::Relaxed);
        dead
    }

    /// The journal's puts that are still the current, live version and not copied yet.
    fn pending_puts(&self, c: &Compaction, nf: &NewFiles) -> Vec<IndexEntry> {
        let puts = std::mem::take(&mut lock(&c.journal).puts);
        let st = self.read_index();
        puts.into_iter()
            .filter(|&(k, a, l)| {
                st.get(k, a)
                    .is_some_and(|cur| cur.offset == l.offset && !cur.deleted)
                    && nf.copied(l.offset).is_none()
            })
            .collect()
    }
}

/// What an index rebuild found (`POST /v1/volumes/{id}/rebuild-index`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RebuildReport {
    pub volume: u32,
    /// Needles found by the scan (deleted ones included).
    pub needles: u64,
    pub deleted_needles: u64,
    /// End of the last needle found.
    pub size_bytes: u64,
    pub elapsed_ms: u64,
    /// Regions the scan could not index (skipped or cut), each with its reason.
    #[serde(default)]
    pub damage: Vec<Damage>,
}

impl Volume {
    /// Rebuilds the index from the volume file alone: a full scan, as on an open without an
    /// index file; the index file (and a sealed volume's sorted index) are written anew and
    /// renamed into place. Writes and deletes wait while it runs.
    pub async fn rebuild_index(self: &Arc<Self>) -> Result<RebuildReport> {
        let v = self.clone();
        tokio::spawn(async move { v.rebuild_inner().await })
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("rebuild task failed: {e}"))))?
    }

    async fn rebuild_inner(&self) -> Result<RebuildReport> {
        let started = Instant::now();
        let _gate = self.gate.write().await;
        self.check_deletable()?;
        let mut ap = self.append.lock().await;
        let id = self.id;
        let dir = self.dir();
        // Everything below the tail was laid down by this volume: damage in it is skipped by
        // the scan, never taken for the end.
        let vouched_end = ap.tail;
        let (file, sealed) = {
            let st = self.read_index();
            (st.file.clone(), matches!(st.index, VolIndex::Sealed(_)))
        };
        let (cfg, max_bytes, tag, disk) = (
            self.cfg.clone(),
            self.max_bytes,
            self.tag,
            self.engine.disk().clone(),
        );
        let (index, entries, tail, idx, damage) = blocking(move || {
            let (_, idx_path, sidx_path) = volume_paths(&dir, id);
            let tmp = rebuild_tmp(&dir, id);
            let mut idx = disk.create(&tmp)?;
            let file_len = file.metadata()?.len();
            let Recovered {
                index,
                tail,
                problem,
                damage,
            } = recover_writable(
                &disk,
                super::recover::Identity {
                    id,
                    max_bytes,
                    tag,
                    vouched_end,
                },
                &file,
                file_len,
                &mut idx,
                &cfg,
            )?;
            if let Some(p) = problem {
                return Err(StoreError::Io(io::Error::other(format!(
                    "index rebuild of volume {id}: {p}"
                ))));
            }
            // `adopt` counts every byte below the tail durable (shipping reads up to it). The
            // scan syncs the file before it records what it found, but not once appending
            // those records failed (a full disk), nor when the file ends at the tail: sync it
            // here whatever happened (nothing dirty, nothing to write, in the usual case).
            disk.sync_data(&file)?;
            disk.sync_all(&idx)?;
            disk.rename(&tmp, &idx_path)?;
            disk.sync_dir(&dir)?;
            let entries: Vec<IndexEntry> = index.iter().collect();
            let index = if sealed {
                drop(index);
                SortedIndex::write(&sidx_path, entries.iter().copied())?;
                VolIndex::Sealed(SortedIndex::open(&sidx_path)?)
            } else {
                VolIndex::Mem(index)
            };
            Ok((index, entries, tail, idx, damage))
        })
        .await?;
        self.write_index().index = index;
        *lock(&self.damage) = damage.clone();
        let dead = self.adopt(idx, &mut ap, tail, &entries);
        tracing::info!(
            volume = id,
            needles = entries.len(),
            "index rebuilt from the volume file"
        );
        Ok(RebuildReport {
            volume: id,
            needles: entries.len() as u64,
            deleted_needles: dead,
            size_bytes: tail,
            elapsed_ms: started.elapsed().as_millis() as u64,
            damage,
        })
    }
}

/// A consistent view of the volume file for a bulk copy: the file as it is now, the bytes in
/// use, and whether the volume is sealed.
pub struct ExportSnapshot {
    pub file: Arc<File>,
    pub len: u64,
    pub sealed: bool,
}

impl Volume {
    /// The file and its length for `GET /v1/volumes/{id}/export`. Needles appended later are
    /// not part of it (repair makes the volume read-only first); a compaction meanwhile swaps
    /// in a new file but this one stays readable until the export drops it.
    pub fn export_snapshot(&self) -> ExportSnapshot {
        let st = self.read_index();
        ExportSnapshot {
            file: st.file.clone(),
            len: self.tail.load(Ordering::Acquire),
            sealed: matches!(st.index, VolIndex::Sealed(_)),
        }
    }

    /// Every needle the index knows: key, alternate key, deleted (for garbage collection).
    pub fn needle_keys(&self) -> Vec<(u64, u32, bool)> {
        let st = self.read_index();
        match &st.index {
            VolIndex::Mem(m) => m.iter().map(|(k, a, l)| (k, a, l.deleted)).collect(),
            VolIndex::Sealed(s) => s.iter().map(|(k, a, l)| (k, a, l.deleted)).collect(),
        }
    }
}
