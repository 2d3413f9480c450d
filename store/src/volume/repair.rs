//! Needle repair from a good copy (read repair, scrubbing, anti-entropy) and the digests
//! replicas are compared by.
//!
//! A needle the index knows but whose bytes fail a check is rewritten in place: the good
//! copy, encoded for this volume (its tag), has exactly the extent the index records, so the
//! index, the counts and a sealed volume's sorted index stay as they are. The rewrite holds
//! the volume's gate exclusively, so no delete of the needle can land between the check and
//! the write (a rewrite writes the flag byte clear: it must never clear a delete), and it is
//! synced before it is acknowledged. A needle the index does not know is appended like any
//! write, which only a writable volume takes. A deleted needle is never repaired: repair
//! never undoes a delete.

use std::sync::Arc;

use super::NeedleData;
use crate::error::{Result, StoreError};
use crate::format::{encode_needle, parse_needle, NeedleIn};

use super::{VolIndex, Volume};

/// What a repair of one needle did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairOutcome {
    /// The needle here was intact: nothing written.
    Intact,
    /// The corrupt copy was overwritten in place by the good one (synced).
    Rewritten,
    /// The volume lacked the needle; the good copy was appended (synced).
    Appended,
    /// The needle is deleted here: left deleted.
    Deleted,
}

/// A set-digest of a volume's needle list (keys, alternate keys, delete flags, extents),
/// split into buckets by a hash of (key, alternate key): equal replicas have equal buckets,
/// and a difference is found by listing only the buckets that differ.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Digest {
    pub volume: u32,
    /// Needles listed (live and deleted).
    pub needles: u64,
    /// One digest per bucket, as 16 hex digits (count and sum of entry hashes folded).
    pub buckets: Vec<String>,
}

/// One needle of a bucket listing (`GET /v1/volumes/{id}/needles?bucket=B&buckets=N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedleEntry {
    pub key: u64,
    pub alt: u32,
    pub deleted: bool,
    pub extent: u32,
}

/// The most buckets a digest may be asked for.
pub const MAX_DIGEST_BUCKETS: u32 = 65_536;

/// A 64-bit mix (the finaliser of SplitMix64): spreads keys over buckets and entry hashes.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bucket of (key, alt) among `buckets`.
pub fn bucket_of(key: u64, alt: u32, buckets: u32) -> u32 {
    (mix(key ^ mix(u64::from(alt) ^ 0x9e37_79b9_7f4a_7c15)) % u64::from(buckets.max(1))) as u32
}

fn entry_hash(e: &NeedleEntry) -> u64 {
    let h = mix(e.key);
    let h = mix(h ^ u64::from(e.alt));
    mix(h ^ (u64::from(e.extent) << 1) ^ u64::from(e.deleted))
}

impl Volume {
    /// Every needle the index knows, with its delete flag and extent.
    pub fn needle_entries(&self) -> Vec<NeedleEntry> {
        let st = self.read_index();
        let entry = |(key, alt, l): (u64, u32, crate::index::Loc)| NeedleEntry {
            key,
            alt,
            deleted: l.deleted,
            extent: l.extent,
        };
        match &st.index {
            VolIndex::Mem(m) => m.iter().map(entry).collect(),
            VolIndex::Sealed(s) => s.iter().map(entry).collect(),
        }
    }

    /// The digest of the needle list in `buckets` buckets (1 to [`MAX_DIGEST_BUCKETS`]).
    pub fn digest(&self, buckets: u32) -> Result<Digest> {
        if buckets == 0 || buckets > MAX_DIGEST_BUCKETS {
            return Err(StoreError::BadRequest(format!(
                "buckets must be 1 to {MAX_DIGEST_BUCKETS}"
            )));
        }
        let entries = self.needle_entries();
        let mut acc = vec![(0u64, 0u64); buckets as usize];
        for e in &entries {
            let b = &mut acc[bucket_of(e.key, e.alt, buckets) as usize];
            b.0 += 1;
            b.1 = b.1.wrapping_add(entry_hash(e));
        }
        Ok(Digest {
            volume: self.id,
            needles: entries.len() as u64,
            buckets: acc
                .into_iter()
                .map(|(n, sum)| format!("{:016x}", mix(sum ^ mix(n))))
                .collect(),
        })
    }

    /// Repairs one needle from a good copy (read from another replica with its cookie).
    pub async fn repair(self: &Arc<Self>, good: NeedleData) -> Result<RepairOutcome> {
        let v = self.clone();
        // Its own task: a dropped request must not leave a rewrite half-synced.
        let outcome = tokio::spawn(async move { v.repair_inner(good).await })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("repair task: {e}"))))??;
        metrics::counter!("haystack_store_repairs_total", "outcome" => outcome_label(outcome))
            .increment(1);
        Ok(outcome)
    }

    async fn repair_inner(self: &Arc<Self>, good: NeedleData) -> Result<RepairOutcome> {
        let (key, alt) = (good.key, good.alt);
        {
            let _gate = self.gate.write().await;
            self.check_deletable()?;
            let (loc, file) = {
                let st = self.read_index();
                match st.get(key, alt) {
                    Some(l) if l.deleted => return Ok(RepairOutcome::Deleted),
                    l => (l, st.file.clone()),
                }
            };
            if let Some(loc) = loc {
                let cur = self
                    .engine
                    .read_at(&file, loc.offset, loc.extent as usize)
                    .await
                    .map_err(|e| self.read_error(loc, e))?;
                match parse_needle(&cur) {
                    Ok(p)
                        if p.header.key == key
                            && p.header.alt == alt
                            && p.header.tag == self.tag =>
                    {
                        if p.header.deleted() {
                            self.learn_deleted(key, alt, loc);
                            return Ok(RepairOutcome::Deleted);
                        }
                        return Ok(RepairOutcome::Intact);
                    }
                    _ => {}
                }
                let mut buf = Vec::with_capacity(loc.extent as usize);
                let extent = encode_needle(
                    &mut buf,
                    &NeedleIn {
                        key,
                        alt,
                        cookie: good.cookie,
                        content_type: &good.content_type,
                        data: &good.data,
                        tag: self.tag,
                    },
                );
                if extent != u64::from(loc.extent) {
                    return Err(StoreError::Mismatch(format!(
                        "the good copy of {key}/{alt} is {extent} bytes on disk, the damaged one {}: not the same needle",
                        loc.extent
                    )));
                }
                if let Err(e) = self.engine.write_all_at(&file, loc.offset, buf).await {
                    if crate::engine::never_started(&e) {
                        // Given up before it started: it never runs, the file is as it was.
                    } else if e.kind() == std::io::ErrorKind::TimedOut {
                        // The rewrite (flag clear) may still land after this answer, over the
                        // flag of a delete taken meanwhile: no delete until a restart.
                        self.set_failed(format!("an in-place repair write timed out: {e}"));
                    } else {
                        self.set_read_only(format!("disk error: {e}"));
                    }
                    return Err(StoreError::Io(e));
                }
                if let Err(e) = self.commit.commit(&self.engine, &file, 1).await {
                    self.set_read_only(format!("disk error: {e}"));
                    return Err(StoreError::Io(e));
                }
                tracing::info!(
                    volume = self.id,
                    key,
                    alt,
                    offset = loc.offset,
                    "corrupt needle rewritten in place from a good copy"
                );
                return Ok(RepairOutcome::Rewritten);
            }
        }
        // Not in the index: an append, which only a writable volume takes. A delete of it in
        // the last minutes refuses it (a write never undoes a delete): left deleted.
        match self.write_batch(vec![good]).await {
            Err(StoreError::Deleted { .. }) => return Ok(RepairOutcome::Deleted),
            r => {
                r?;
            }
        }
        tracing::info!(
            volume = self.id,
            key,
            alt,
            "missing needle appended from a good copy"
        );
        Ok(RepairOutcome::Appended)
    }
}

fn outcome_label(o: RepairOutcome) -> &'static str {
    match o {
        RepairOutcome::Intact => "intact",
        RepairOutcome::Rewritten => "rewritten",
        RepairOutcome::Appended => "appended",
        RepairOutcome::Deleted => "deleted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_spread_and_stay_in_range() {
        let mut counts = [0u32; 16];
        for key in 0..16_000u64 {
            let b = bucket_of(key << 20, 0, 16);
            counts[b as usize] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "uneven buckets: {counts:?}");
        }
        assert_eq!(bucket_of(7, 1, 1), 0);
    }

    #[test]
    fn entry_hash_sees_every_field() {
        let e = NeedleEntry {
            key: 1,
            alt: 2,
            deleted: false,
            extent: 64,
        };
        let h = entry_hash(&e);
        assert_ne!(h, entry_hash(&NeedleEntry { key: 2, ..e }));
        assert_ne!(h, entry_hash(&NeedleEntry { alt: 3, ..e }));
        assert_ne!(h, entry_hash(&NeedleEntry { deleted: true, ..e }));
        assert_ne!(h, entry_hash(&NeedleEntry { extent: 72, ..e }));
    }
}
