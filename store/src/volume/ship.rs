//! A volume's side of asynchronous remote replicas (issue 13): the source reads the durable
//! bytes after the remote's end, cut at needle boundaries; the remote appends them at that
//! same offset, so its file stays byte for byte a prefix of the source's (delete flags
//! aside, which deletes set in place on both), syncs, and indexes the needles in them.

use super::*;

use haystack_proto::{ShipMark, ShipPosition};

use crate::format::NeedleHeader;

/// The marker file of a remote copy (its presence is the whole content).
pub(super) fn remote_marker(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("vol-{id}.remote"))
}

/// Marks volume `id` under `dir` as an asynchronous remote replica (before it is opened).
pub fn mark_remote_copy(dir: &Path, id: u32) -> io::Result<()> {
    let f = File::create(remote_marker(dir, id))?;
    f.sync_all()?;
    File::open(dir)?.sync_all()
}

/// Removes the marker (the volume was dropped or promoted to a replica).
pub fn unmark_remote_copy(dir: &Path, id: u32) -> io::Result<()> {
    match std::fs::remove_file(remote_marker(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => File::open(dir)?.sync_all(),
    }
}

impl Volume {
    /// Every byte below it is durable here.
    pub fn durable_tail(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Which file the volume's offsets mean now (see [`Volume::ship_read`]).
    pub fn file_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether this volume is an asynchronous remote replica.
    pub fn is_remote_copy(&self) -> bool {
        self.remote_copy.load(Ordering::Acquire)
    }

    /// A remote replica's position: its end, its tag and the needle nearest before the end.
    pub fn ship_position(&self) -> ShipPosition {
        let tail = self.tail.load(Ordering::Acquire);
        let st = self.read_index();
        let mut last: Option<(u64, u64, u32)> = None;
        let mut see = |key: u64, alt: u32, l: Loc| {
            if last.is_none_or(|(o, _, _)| l.offset > o) {
                last = Some((l.offset, key, alt));
            }
        };
        match &st.index {
            VolIndex::Mem(m) => m.iter().for_each(|(k, a, l)| see(k, a, l)),
            VolIndex::Sealed(s) => s.iter().for_each(|(k, a, l)| see(k, a, l)),
        }
        drop(st);
        ShipPosition {
            tail,
            tag: self.tag,
            // The cookie is read when the source checks the mark; filled by the caller.
            last: last.map(|(offset, key, alt)| ShipMark {
                offset,
                key,
                alt,
                cookie: 0,
            }),
        }
    }

    /// The cookie of the needle at `offset` (a ship mark's last field), read from the file.
    pub async fn header_at(&self, offset: u64) -> Result<Option<NeedleHeader>> {
        let file = self.file();
        if offset + HEADER_LEN as u64 > self.tail.load(Ordering::Acquire) {
            return Ok(None);
        }
        let b = self.engine.read_at(&file, offset, HEADER_LEN).await?;
        Ok(NeedleHeader::decode(&b).ok().filter(|h| h.tag == self.tag))
    }

    /// Whether a remote replica at `pos` still holds a prefix of this volume's file: same
    /// tag, an end within what is durable here, and the same needle at its mark.
    pub async fn ship_agrees(&self, pos: &ShipPosition) -> Result<bool> {
        if pos.tag != self.tag || pos.tail > self.durable_tail() || pos.tail < SUPERBLOCK_LEN {
            return Ok(false);
        }
        let Some(m) = pos.last else {
            return Ok(true);
        };
        Ok(self.header_at(m.offset).await?.is_some_and(|h| {
            h.key == m.key
                && h.alt == m.alt
                && h.cookie == m.cookie
                && m.offset + h.extent() <= pos.tail
        }))
    }

    /// The durable bytes from `from` on, at most about `max` of them (more when one needle
    /// is larger), ending on a needle boundary; None when nothing durable is past `from`.
    /// A region no needle header explains (a torn write recovery stepped over) is sent as it
    /// is, up to the next needle the index knows, so the remote stays byte for byte in step.
    /// `generation` is [`Volume::file_generation`] when the shipper checked the remote
    /// against this file: None too when a compaction or rebuild has swapped the file since
    /// (the shipper checks again), so no byte of a new file goes out at an old file's offset.
    pub async fn ship_read(&self, from: u64, max: u64, generation: u64) -> Result<Option<Bytes>> {
        // The file cannot be swapped while this is held (compaction adopts under the write
        // side), so the read below is of the generation checked here.
        let _gate = self.gate.read().await;
        if self.file_generation() != generation {
            return Ok(None);
        }
        let end = self.durable_tail();
        if from >= end {
            return Ok(None);
        }
        let file = self.file();
        let want = (end - from).min(max.max(HEADER_LEN as u64)) as usize;
        let mut buf = self.engine.read_at(&file, from, want).await?;
        let mut cut = 0usize;
        while cut + HEADER_LEN <= buf.len() {
            match NeedleHeader::decode(&buf[cut..]) {
                Ok(h) if h.tag == self.tag => {
                    let extent = h.extent() as usize;
                    if cut + extent <= buf.len() {
                        cut += extent;
                        continue;
                    }
                    if cut == 0 && from + extent as u64 <= end {
                        // One needle larger than `max`: send it whole.
                        buf = self.engine.read_at(&file, from, extent).await?;
                        cut = extent;
                    }
                    break;
                }
                _ => {
                    if cut > 0 {
                        break;
                    }
                    // Not a needle of this volume: send up to the next known one.
                    let next = self.next_known_offset(from).unwrap_or(end).min(end);
                    if next <= from {
                        return Ok(None);
                    }
                    let n = (next - from) as usize;
                    if n > buf.len() {
                        buf = self.engine.read_at(&file, from, n).await?;
                    }
                    cut = n;
                    break;
                }
            }
        }
        if cut == 0 {
            return Ok(None);
        }
        buf.truncate(cut);
        Ok(Some(Bytes::from(buf)))
    }

    /// The lowest offset above `after` the index knows a needle at.
    fn next_known_offset(&self, after: u64) -> Option<u64> {
        let st = self.read_index();
        let above = |l: &Loc| l.offset > after;
        match &st.index {
            VolIndex::Mem(m) => m.iter().map(|e| e.2).filter(above).map(|l| l.offset).min(),
            VolIndex::Sealed(s) => s.iter().map(|e| e.2).filter(above).map(|l| l.offset).min(),
        }
    }

    /// The remote side: appends shipped bytes at `offset`, which must be this volume's end,
    /// syncs them, then indexes every needle in them (a deleted one as deleted). Returns the
    /// new end.
    pub async fn ship_append(self: &Arc<Self>, offset: u64, bytes: Vec<u8>) -> Result<u64> {
        if !self.is_remote_copy() {
            return Err(StoreError::BadRequest(format!(
                "volume {} is not an asynchronous remote replica",
                self.id
            )));
        }
        if bytes.is_empty() || !(bytes.len() as u64).is_multiple_of(format::ALIGN) {
            return Err(StoreError::BadRequest(
                "shipped bytes must be a non-empty multiple of 8".into(),
            ));
        }
        let _gate = self.gate.read().await;
        self.check_current()?;
        let len = bytes.len() as u64;
        let mut applied = 0u64;
        let (base, shipped, _writing) = {
            let mut ap = self.append.lock().await;
            if ap.tail != offset {
                return Err(StoreError::ShipOutOfStep {
                    offset,
                    tail: ap.tail,
                });
            }
            // A needle whose delete reached this replica before the needle did (it answered
            // 404 and remembered it, `recent`; the shipper read it before its own delete) is
            // laid down with its delete flag already set: it never reaches the disk live. A
            // delete landing while these bytes are in flight waits for them (`Writing`) and
            // is caught when they are indexed, below.
            let mut shipped = self.needles_in(&bytes, offset);
            let mut bytes = bytes;
            let writing = {
                let st = self.read_index();
                let mut recent = lock(&self.recent_deletes);
                for (key, alt, cookie, loc) in shipped.iter_mut() {
                    if !loc.deleted && self.undoes_delete(&st, *key, *alt, *cookie, &recent) {
                        bytes[(loc.offset - offset + FLAGS_OFFSET) as usize] |= FLAG_DELETED;
                        loc.deleted = true;
                        applied += 1;
                    }
                }
                Writing::begin(self, &mut recent, keys_of(&shipped))
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let batch = vec![Queued { buf: bytes, tx }];
            self.write_queued(&mut ap, batch).await;
            let appended = rx
                .await
                .map_err(|_| StoreError::Io(io::Error::other("append abandoned")))
                .and_then(|r| r);
            let base = match appended {
                Ok(b) => b,
                Err(e) => {
                    if matches!(e, StoreError::Io(_)) {
                        self.write_failed(&keys_of(&shipped));
                    }
                    return Err(e);
                }
            };
            (base, shipped, writing)
        };
        debug_assert_eq!(
            base, offset,
            "shipped bytes land at the end they were checked at"
        );
        if let Err(e) = self.commit.commit(&self.engine, &self.file(), 1).await {
            self.write_failed(&keys_of(&shipped));
            self.set_read_only(format!("disk error: {e}"));
            return Err(StoreError::Io(e));
        }
        self.durable.fetch_max(base + len, Ordering::AcqRel);
        // A delete that landed while these bytes were in flight: indexed deleted; that delete
        // waits for this append (`Writing`), then sets and syncs the flag itself.
        let mut found: Vec<(u64, u32, Loc)> = Vec::with_capacity(shipped.len());
        {
            let mut idx = self.write_index();
            let mut log = lock(&self.idx_log);
            let recent = lock(&self.recent_deletes);
            for &(key, alt, cookie, loc) in &shipped {
                let undone = !loc.deleted && self.undoes_delete(&idx, key, alt, cookie, &recent);
                let loc = if undone {
                    applied += 1;
                    Loc {
                        deleted: true,
                        ..loc
                    }
                } else {
                    loc
                };
                found.push((key, alt, loc));
            }
            if let VolIndex::Mem(m) = &mut idx.index {
                for &(key, alt, loc) in &found {
                    match m.get(key, alt) {
                        Some(old) if old.offset > loc.offset => continue,
                        Some(old) if old.deleted => {
                            self.stats.deleted_needles.fetch_sub(1, Ordering::Relaxed)
                        }
                        Some(old) => self
                            .stats
                            .live_bytes
                            .fetch_sub(old.extent as u64, Ordering::Relaxed),
                        None => 0,
                    };
                    m.insert(key, alt, loc);
                    self.stats.count(&loc);
                    log.push(IDX_PUT, key, alt, loc);
                    if loc.deleted {
                        log.push(IDX_DELETE, key, alt, loc);
                    }
                }
            }
        }
        let _ = lock(&self.idx_log).flush();
        self.journal(|j| {
            j.puts.extend(found.iter().copied());
            j.touched.extend(found.iter().map(|(k, a, _)| (*k, *a)))
        });
        if applied > 0 {
            metrics::counter!("haystack_store_ship_deletes_applied_total").increment(applied);
        }
        metrics::counter!("haystack_store_ship_received_bytes_total").increment(len);
        Ok(base + len)
    }

    /// The needles of this volume inside `b` (which sits at `base` in the file), each fully
    /// checked, with their cookies; bytes that are not one are stepped over 8 at a time.
    fn needles_in(&self, b: &[u8], base: u64) -> Vec<(u64, u32, u64, Loc)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + HEADER_LEN <= b.len() {
            match parse_needle(&b[at..]) {
                Ok(p) if p.header.tag == self.tag => {
                    let extent = p.header.extent();
                    out.push((
                        p.header.key,
                        p.header.alt,
                        p.header.cookie,
                        Loc {
                            offset: base + at as u64,
                            extent: extent as u32,
                            deleted: p.header.deleted(),
                        },
                    ));
                    at += extent as usize;
                }
                _ => at += format::ALIGN as usize,
            }
        }
        out
    }

    /// A remote replica becomes an ordinary replica (promotion): shipping stops, and it may
    /// be compacted and written like any other.
    pub fn clear_remote_copy(&self) -> Result<()> {
        unmark_remote_copy(&self.dir(), self.id)?;
        self.remote_copy.store(false, Ordering::Release);
        Ok(())
    }
}

/// The (key, alt) of shipped needles.
fn keys_of(shipped: &[(u64, u32, u64, Loc)]) -> Vec<(u64, u32)> {
    shipped.iter().map(|&(k, a, _, _)| (k, a)).collect()
}
