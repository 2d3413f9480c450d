//! Recovery of a writable volume on open and on an index rebuild: the checkpoint file, then
//! a scan of the volume past what it covers, torn tails cut, damage skipped and reported,
//! everything past the tail zeroed. Step 5 of the durability contract in
//! docs/ARCHITECTURE.md.

use super::*;

/// Loads the index file and scans the tail; returns the index entries sorted by (key, alt)
/// and the tail offset. Repairs the index file and cuts a torn tail as it goes.
pub(super) fn recover_writable(
    disk: &crate::disk::Disk,
    vol: Identity,
    file: &File,
    file_len: u64,
    idx_file: &mut File,
    cfg: &VolumeConfig,
) -> Result<Recovered> {
    let Identity { id, max_bytes, tag } = vol;
    // 1. The index file.
    let raw = disk.read_all(idx_file)?;
    let mut records: Vec<IdxRecord> = Vec::new();
    let mut good_len = 0usize;
    let header_ok = crate::checkpoint::header_ok(&raw, id);
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
                let next = match find_next_needle(disk, file, from, window_end, limit, tag)? {
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
    let skipped_corrupt = damage
        .iter()
        .filter(|d| d.kind == DamageKind::Skipped)
        .count();
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

/// Which volume recovery works on: its id, and from its superblock its size limit and tag.
#[derive(Clone, Copy, Debug)]
pub(super) struct Identity {
    pub(super) id: u32,
    pub(super) max_bytes: u64,
    pub(super) tag: u32,
}

/// What recovery of a writable volume found.
pub(super) struct Recovered {
    /// Index entries sorted by (key, alt).
    pub(super) entries: Vec<IndexEntry>,
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
