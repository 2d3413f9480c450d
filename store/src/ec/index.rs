//! The in-memory needle index of an erasure-coded shard store: (key, alt) → the needle's block,
//! offset in the block and extent, packed in a [`MemIndex`] (a few bytes a needle) instead of
//! the index file's 24-byte records. Every one of the k + m shard stores holds the whole index,
//! so this is the store's largest use of memory at scale (docs/CAPACITY.md).

use super::format::IndexRecord;
use crate::index::{Loc, MemIndex};

/// The index of one erasure-coded volume. A needle's place is kept as one position in the
/// volume's logical data (`block * block_bytes + offset`); deletes are kept apart (the shard's
/// delete log), so the packed entries never change after open.
pub(crate) struct EcIndex {
    map: MemIndex,
    block_bytes: u64,
}

impl EcIndex {
    /// The index of `records` in a volume of blocks of `block_bytes` (> 0).
    pub(crate) fn new(records: impl IntoIterator<Item = IndexRecord>, block_bytes: u64) -> EcIndex {
        let block_bytes = block_bytes.max(1);
        let map = MemIndex::from_sorted(records.into_iter().map(|r| {
            let loc = Loc {
                offset: r.block as u64 * block_bytes + r.offset as u64,
                extent: r.extent,
                deleted: false,
            };
            (r.key, r.alt, loc)
        }));
        EcIndex { map, block_bytes }
    }

    fn record(&self, key: u64, alt: u32, loc: Loc) -> IndexRecord {
        IndexRecord {
            key,
            alt,
            block: (loc.offset / self.block_bytes) as u32,
            offset: (loc.offset % self.block_bytes) as u32,
            extent: loc.extent,
        }
    }

    pub(crate) fn get(&self, key: u64, alt: u32) -> Option<IndexRecord> {
        self.map.get(key, alt).map(|l| self.record(key, alt, l))
    }

    /// Every record, by (key, alt).
    pub(crate) fn iter(&self) -> impl Iterator<Item = IndexRecord> + '_ {
        self.map.iter().map(|(k, a, l)| self.record(k, a, l))
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.map.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needles as the encoder lays them out: photo-sized extents packed into blocks in key
    /// order, four alternate keys a photo.
    fn layout(photos: u64, block_bytes: u64) -> Vec<IndexRecord> {
        let mut out = Vec::new();
        let (mut block, mut at) = (0u32, 0u64);
        for p in 0..photos {
            for (alt, extent) in [
                (0u32, 2_000_016u32),
                (1, 400_008),
                (2, 100_000),
                (3, 15_040),
            ] {
                if at + extent as u64 > block_bytes {
                    block += 1;
                    at = 0;
                }
                out.push(IndexRecord {
                    key: (1_700_000_000_000u64 + p * 3) << 22 | (p % 7) << 12,
                    alt,
                    block,
                    offset: at as u32,
                    extent,
                });
                at += extent as u64;
            }
        }
        out
    }

    #[test]
    fn records_round_trip_and_the_index_is_a_few_bytes_a_needle() {
        let block_bytes = 1 << 30;
        let records = layout(50_000, block_bytes);
        let index = EcIndex::new(records.iter().copied(), block_bytes);
        assert_eq!(index.len(), records.len());
        assert!(
            index.iter().eq(records.iter().copied()),
            "iteration differs"
        );
        for r in records.iter().step_by(97) {
            assert_eq!(index.get(r.key, r.alt), Some(*r));
        }
        assert_eq!(index.get(records[0].key, 9), None);
        assert_eq!(index.get(1, 0), None);
        // The index file's record is 24 bytes a needle in memory; packed it must be a small
        // fraction of that.
        let per_needle = index.heap_bytes() as f64 / records.len() as f64;
        eprintln!(
            "EC index: {} needles, {} heap bytes, {per_needle:.2} a needle",
            records.len(),
            index.heap_bytes()
        );
        assert!(per_needle < 8.0, "{per_needle:.2} bytes a needle");
    }

    #[test]
    fn odd_offsets_and_one_byte_blocks_still_round_trip() {
        let records = [
            IndexRecord {
                key: 5,
                alt: 0,
                block: 3,
                offset: 7,
                extent: 13,
            },
            IndexRecord {
                key: 6,
                alt: 1,
                block: 0,
                offset: 0,
                extent: 8,
            },
        ];
        let index = EcIndex::new(records.iter().copied(), 64);
        assert!(index.iter().eq(records.iter().copied()));
    }
}
