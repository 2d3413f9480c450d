//! Recovery of a writable volume on open and on an index rebuild: the checkpoint file, then
//! a scan of the volume past what it covers, torn tails cut, damage skipped and reported,
//! everything past the tail zeroed. Step 5 of the durability contract in
//! docs/ARCHITECTURE.md.

use super::*;

/// Loads the index file and scans the tail; returns the index and the tail offset. Repairs
/// the index file and cuts a torn tail as it goes.
///
/// Working memory is the index being built plus a few fixed buffers: the index file is read a
/// chunk at a time and every record goes straight into the index, so a volume of a million
/// needles opens inside a small memory limit (issue 18: the earlier version held the whole
/// file, every record and a sorted copy at once, about 120 bytes per needle at the peak).
pub(super) fn recover_writable(
    disk: &crate::disk::Disk,
    vol: Identity,
    file: &File,
    file_len: u64,
    idx_file: &mut File,
    cfg: &VolumeConfig,
) -> Result<Recovered> {
    let Identity {
        id,
        max_bytes,
        tag,
        vouched_end,
    } = vol;
    // 1. The index file. Newest put per (key, alt) wins; a delete applies to the put at its
    // offset, whichever of the two the file holds first.
    let mut index = MemIndex::new();
    let mut cover = Coverage::default();
    let mut deletes = PendingDeletes::default();
    let mut kept = 0usize;
    let read = read_idx_records(disk, idx_file, id, |rec| {
        let valid = rec.offset >= SUPERBLOCK_LEN
            && rec.offset % format::ALIGN == 0
            && rec.extent > 0
            && rec.offset + rec.extent as u64 <= file_len;
        if !valid {
            return false;
        }
        kept += 1;
        let loc = Loc {
            offset: rec.offset,
            extent: rec.extent,
            deleted: false,
        };
        if rec.kind == IDX_PUT {
            cover.add(rec.offset, rec.extent);
            put_newest(&mut index, rec.key, rec.alt, loc);
        } else if rec.kind == IDX_DELETE {
            deletes.apply_or_keep(&mut index, rec.key, rec.alt, rec.offset);
        }
        true
    })?;
    cut_bad_idx_tail(disk, idx_file, id, &read, kept);
    // Records reach the index file in the order writers finish their syncs, not in offset
    // order, and the newest are lost with the process: the file may cover a needle at a high
    // offset and miss one below it. The scan therefore starts at the first gap in the
    // coverage, not at the end of the highest indexed needle.
    let scan_from = cover.first_gap();
    // Needles the index file vouches for end here (or the caller's bound, if higher): a tail
    // is never cut below it.
    let indexed_end = cover.end().max(vouched_end.min(file_len));

    // 2. The tail past the last indexed needle.
    let limit = file_len.min(max_bytes);
    let mut pos = scan_from;
    let mut recovered = 0usize;
    let mut new_records = RecordSink::default();
    let mut problem = None;
    let mut damage: Vec<Damage> = Vec::new();
    loop {
        let scan = read_needle_at(disk, file, pos, limit, tag)?;
        match scan {
            Scan::Needle(h, extent) => {
                let loc = Loc {
                    offset: pos,
                    extent: extent as u32,
                    deleted: h.deleted(),
                };
                // Scanned needles are at least as new as every indexed one at a lower offset;
                // the highest offset wins, and a delete flag is never lost.
                put_newest(&mut index, h.key, h.alt, loc);
                recovered += 1;
                new_records.push(IDX_PUT, h.key, h.alt, loc);
                if loc.deleted {
                    new_records.push(IDX_DELETE, h.key, h.alt, loc);
                }
                if let Err(p) = new_records.flush_if_full(disk, file, idx_file, id) {
                    problem.get_or_insert(p);
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
                let next = match find_next_needle(disk, file, from, window_end, limit, tag)? {
                    Some(n) => Some(n),
                    // Past a damaged region longer than the window: the next needle the index
                    // file knows of, or the end of the last one. A tail is never cut below
                    // a needle the index file records.
                    None if pos < indexed_end => {
                        let known = cover.next_known(pos, &index);
                        if known > pos {
                            Some(known)
                        } else {
                            // Nothing the index file knows lies past here (a rebuild's full
                            // scan): the next needle below the vouched end, window by window,
                            // else the vouched end itself. Never back, never below it.
                            // From the last starts the window could not test (a header
                            // must fit in it) on.
                            let far = find_next_needle_far(
                                disk,
                                file,
                                window_end.saturating_sub(HEADER_LEN as u64).max(from),
                                indexed_end,
                                limit,
                                tag,
                                cfg.max_write_bytes.max(format::ALIGN),
                            )?;
                            Some(far.unwrap_or(indexed_end))
                        }
                    }
                    None => None,
                };
                match next {
                    Some(next) => {
                        // Valid needles follow: this is damage in the middle, not a torn tail.
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
    // Deletes whose put the index file did not hold may be of needles the scan found.
    deletes.apply_rest(&mut index);
    // Nothing past the tail may ever parse as a needle: a later scan would walk from a new
    // needle into the bytes of an unacknowledged write whose first page was lost, and index
    // them. Everything past the tail, to the end of the file, is made zeros (not only one
    // write's window: a write may be split in chunks, and an older crash may have left
    // bytes further on).
    // Past this point nothing is fatal: a volume that cannot be made clean for writes still
    // serves reads, read-only, with the reason reported.
    if let Err(e) = clear_past_tail(disk, file, pos, file_len) {
        tracing::error!(volume = id, offset = pos, error = %e, "clearing the bytes past the tail failed; volume stays read-only");
        problem = Some(format!(
            "stale bytes past the tail could not be cleared ({e})"
        ));
    }
    if let Err(p) = new_records.flush(disk, file, idx_file, id) {
        problem.get_or_insert(p);
    }
    if let Err(e) = disk.sync_data(idx_file) {
        tracing::warn!(volume = id, error = %e, "syncing the index file failed; the next open scans again");
    }
    let skipped_corrupt = damage
        .iter()
        .filter(|d| d.kind == DamageKind::Skipped)
        .count();
    if recovered > 0 || skipped_corrupt > 0 {
        tracing::info!(
            volume = id,
            recovered,
            skipped_corrupt,
            "needles recovered from the volume tail"
        );
    }
    Ok(Recovered {
        index,
        tail: pos,
        problem,
        damage,
    })
}

/// Puts `loc` for (key, alt) unless the index holds a newer (higher offset) needle; for the
/// same needle, a delete flag already set stays set.
fn put_newest(index: &mut MemIndex, key: u64, alt: u32, loc: Loc) {
    match index.get(key, alt) {
        Some(old) if old.offset > loc.offset => {}
        Some(old) if old.offset == loc.offset => {
            if loc.deleted && !old.deleted {
                index.mark_deleted(key, alt);
            }
        }
        _ => {
            index.insert(key, alt, loc);
        }
    }
}

/// Delete records whose put was not (yet) in the index when they were read: applied at the
/// end, to whatever needle then sits at their offset. Normally empty.
#[derive(Default)]
struct PendingDeletes(Vec<(u64, u32, u64)>);

impl PendingDeletes {
    fn apply_or_keep(&mut self, index: &mut MemIndex, key: u64, alt: u32, offset: u64) {
        match index.get(key, alt) {
            Some(l) if l.offset == offset => {
                index.mark_deleted(key, alt);
            }
            _ => self.0.push((key, alt, offset)),
        }
    }

    fn apply_rest(self, index: &mut MemIndex) {
        for (key, alt, offset) in self.0 {
            if index.get(key, alt).is_some_and(|l| l.offset == offset) {
                index.mark_deleted(key, alt);
            }
        }
    }
}

/// The byte ranges of the volume file that put records vouch for, merged: a handful of
/// intervals for a whole volume (records arrive nearly in offset order).
#[derive(Default)]
struct Coverage(std::collections::BTreeMap<u64, u64>);

impl Coverage {
    fn add(&mut self, offset: u64, extent: u32) {
        let (mut start, mut end) = (offset, offset + extent as u64);
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        while let Some((&s, &e)) = self.0.range(start..=end).next() {
            self.0.remove(&s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    /// Where the first needle the records do not cover may start.
    fn first_gap(&self) -> u64 {
        match self.0.first_key_value() {
            Some((&s, &e)) if s == SUPERBLOCK_LEN => e,
            _ => SUPERBLOCK_LEN,
        }
    }

    /// The end of the highest needle the records vouch for.
    fn end(&self) -> u64 {
        self.0.last_key_value().map_or(SUPERBLOCK_LEN, |(_, &e)| e)
    }

    /// The first place past `pos` where a needle the index file knows of starts (or its
    /// coverage ends): the end of a damaged region that no scan window bridged. Reads the
    /// whole index; only damage calls it.
    fn next_known(&self, pos: u64, index: &MemIndex) -> u64 {
        let in_index = index
            .iter()
            .map(|(_, _, l)| l.offset)
            .filter(|&o| o > pos)
            .min();
        let interval_end = self
            .0
            .range(..=pos)
            .next_back()
            .map(|(_, &e)| e)
            .filter(|&e| e > pos);
        let next_start = self.0.range(pos + 1..).next().map(|(&s, _)| s);
        [in_index, interval_end, next_start]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.end())
    }
}

/// Index records for needles the scan found, appended to the index file a chunk at a time,
/// each chunk only after the volume file's data is synced (the needles may never have been:
/// their writer died before its fdatasync). Once a sync fails nothing more is appended.
#[derive(Default)]
struct RecordSink {
    buf: Vec<u8>,
    failed: bool,
}

impl RecordSink {
    const CHUNK: usize = 1 << 20;

    fn push(&mut self, kind: u8, key: u64, alt: u32, loc: Loc) {
        if !self.failed {
            self.buf.extend_from_slice(&idx_record(kind, key, alt, loc));
        }
    }

    fn flush_if_full(
        &mut self,
        disk: &crate::disk::Disk,
        file: &File,
        idx_file: &File,
        id: u32,
    ) -> std::result::Result<(), String> {
        if self.buf.len() >= Self::CHUNK {
            self.flush(disk, file, idx_file, id)
        } else {
            Ok(())
        }
    }

    fn flush(
        &mut self,
        disk: &crate::disk::Disk,
        file: &File,
        idx_file: &File,
        id: u32,
    ) -> std::result::Result<(), String> {
        if self.buf.is_empty() || self.failed {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        match disk.sync_data(file) {
            // The index file is a checkpoint: without room for it (ENOSPC on a full disk) the
            // volume still opens; the next open scans the same tail again.
            Ok(()) => {
                if let Err(e) = disk.append(idx_file, &buf) {
                    tracing::warn!(volume = id, error = %e, "appending recovered records to the index file failed; the next open scans again");
                    self.failed = true;
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(volume = id, error = %e, "syncing recovered needles failed; volume stays read-only");
                self.failed = true;
                Err(format!("disk error: {e}"))
            }
        }
    }
}

/// What streaming the index file found.
pub(super) struct IdxRead {
    pub(super) header_ok: bool,
    /// Bytes of header and good records before the first bad one.
    pub(super) good_len: u64,
    pub(super) file_len: u64,
}

/// Cuts the index file back to its header and the records [`read_idx_records`] took (a new
/// header when it had none): appends after a torn or bad record would sit misaligned behind
/// it and be dropped at every later open. `kept` is how many records were taken (for the log).
pub(super) fn cut_bad_idx_tail(
    disk: &crate::disk::Disk,
    idx_file: &File,
    id: u32,
    read: &IdxRead,
    kept: usize,
) {
    if !read.header_ok || read.good_len != read.file_len {
        if read.file_len == 0 {
            // No index file yet (an imported or seeded volume): one is started, no warning.
            tracing::debug!(volume = id, "no index file yet; one is started");
        } else {
            tracing::warn!(
                volume = id,
                kept_records = kept,
                dropped_bytes = read.file_len - read.good_len,
                "index file has a bad tail; cutting it"
            );
        }
        let cut = if !read.header_ok {
            disk.set_len(idx_file, 0)
                .and_then(|()| disk.append(idx_file, &idx_header(id)))
        } else {
            disk.set_len(idx_file, read.good_len)
        };
        // A checkpoint that cannot be repaired (a full disk) costs a longer scan, not the
        // volume.
        if let Err(e) = cut {
            tracing::warn!(volume = id, error = %e, "repairing the index file failed; the next open scans again");
        }
    }
}

/// Streams the index file's records, in file order, a chunk at a time, to `f` until the first
/// record that does not parse or that `f` refuses (returns false). Nothing is read when the
/// header is not volume `id`'s.
pub(super) fn read_idx_records(
    disk: &crate::disk::Disk,
    idx_file: &File,
    id: u32,
    mut f: impl FnMut(&IdxRecord) -> bool,
) -> io::Result<IdxRead> {
    const CHUNK: usize = IDX_RECORD_LEN * 32 * 1024;
    let file_len = idx_file.metadata()?.len();
    let mut header = [0u8; IDX_HEADER_LEN];
    let got = disk.read_at(idx_file, &mut header, 0)?;
    let header_ok = crate::checkpoint::header_ok(&header[..got], id);
    let mut read = IdxRead {
        header_ok,
        good_len: 0,
        file_len,
    };
    if !header_ok {
        return Ok(read);
    }
    read.good_len = IDX_HEADER_LEN as u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let got = disk.read_at(idx_file, &mut buf, read.good_len)?;
        let whole = got - got % IDX_RECORD_LEN;
        for r in buf[..whole].chunks_exact(IDX_RECORD_LEN) {
            match parse_idx_record(r) {
                Some(rec) if f(&rec) => read.good_len += IDX_RECORD_LEN as u64,
                _ => return Ok(read),
            }
        }
        if got < CHUNK {
            return Ok(read);
        }
    }
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

/// Which volume recovery works on: its id, and from its superblock its size limit and tag.
#[derive(Clone, Copy, Debug)]
pub(super) struct Identity {
    pub(super) id: u32,
    pub(super) max_bytes: u64,
    pub(super) tag: u32,
    /// Bytes below this offset are never cut as a torn tail, whatever the index file holds:
    /// an index rebuild passes the tail the volume had (every needle below it was written by
    /// the volume, acknowledged or not), so that damage in the middle is skipped, not taken
    /// for the end. 0 at an open (the index file vouches).
    pub(super) vouched_end: u64,
}

/// What recovery of a writable volume found.
pub(super) struct Recovered {
    /// The volume's index.
    pub(super) index: MemIndex,
    /// Where the next needle goes.
    pub(super) tail: u64,
    /// Why the volume must stay read-only, if it must.
    pub(super) problem: Option<String>,
    /// What could not be indexed.
    pub(super) damage: Vec<Damage>,
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
fn read_needle_at(
    disk: &crate::disk::Disk,
    file: &File,
    pos: u64,
    limit: u64,
    tag: u32,
) -> io::Result<Scan> {
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
        // A whole, valid needle that is not this volume's (a version 2 volume's needles all
        // carry its tag): bytes of an upload that look like a needle, never one.
        Ok(_) if header.tag != tag => Scan::Bad(
            format!(
                "needle-shaped bytes with another tag ({:#010x})",
                header.tag
            ),
            None,
        ),
        Ok(_) => Scan::Needle(header, extent),
        Err(e) => Scan::Bad(e.to_string(), Some(extent)),
    })
}

/// Looks for the first offset in [from, to) where a whole valid needle starts.
/// [`find_next_needle`] over `[from, to)` in windows of `step` bytes (overlapping by a header,
/// so that none is missed at a window's edge): memory for one window at a time.
fn find_next_needle_far(
    disk: &crate::disk::Disk,
    file: &File,
    from: u64,
    to: u64,
    limit: u64,
    tag: u32,
    step: u64,
) -> io::Result<Option<u64>> {
    let step = (step / format::ALIGN).max(1) * format::ALIGN;
    let mut at = from.div_ceil(format::ALIGN) * format::ALIGN;
    while at < to {
        let end = to.min(at + step + HEADER_LEN as u64);
        if let Some(n) = find_next_needle(disk, file, at, end, limit, tag)? {
            return Ok(Some(n));
        }
        at += step;
    }
    Ok(None)
}

fn find_next_needle(
    disk: &crate::disk::Disk,
    file: &File,
    from: u64,
    to: u64,
    limit: u64,
    tag: u32,
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
            if let Scan::Needle(..) = read_needle_at(disk, file, at, limit, tag)? {
                return Ok(Some(at));
            }
        }
        i += format::ALIGN as usize;
    }
    Ok(None)
}
