//! Where the needles of an erasure-coded volume lie: live needles packed into blocks (a needle
//! never crosses a block's end), block `b` in data shard `b % k` at row `b / k`, and the
//! lengths every shard file and every stripe have. Pure arithmetic, no I/O.

/// Alignment of every range the codec works on (reed-solomon-simd works on 64-byte chunks; a
/// range that starts and ends on this alignment codes the same bytes as the whole row).
pub const CODE_ALIGN: u64 = 64;

/// The shape of one generation of an erasure-coded volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Data shards.
    pub k: u8,
    /// Parity shards.
    pub m: u8,
    /// Block size: every block but the last holds exactly this many bytes (needles, then
    /// zeros up to the block's end).
    pub block_bytes: u64,
    /// Blocks of packed needles (0 for a volume with no live needle).
    pub blocks: u64,
    /// Bytes of the last block (0 when there is no block).
    pub last_block_len: u64,
}

impl Geometry {
    pub fn shards(&self) -> usize {
        self.k as usize + self.m as usize
    }

    /// Rows of blocks (a stripe is one row: k data blocks and their m parity blocks).
    pub fn rows(&self) -> u64 {
        self.blocks.div_ceil(self.k as u64)
    }

    /// Bytes of block `b` (0 past the last block).
    pub fn block_len(&self, b: u64) -> u64 {
        if b + 1 < self.blocks {
            self.block_bytes
        } else if b + 1 == self.blocks {
            self.last_block_len
        } else {
            0
        }
    }

    /// Bytes of shard `i`'s row `r` (parity rows are as long as the row's longest block,
    /// which is its first).
    pub fn row_len(&self, shard: usize, r: u64) -> u64 {
        let k = self.k as u64;
        if shard < self.k as usize {
            self.block_len(r * k + shard as u64)
        } else {
            self.block_len(r * k)
        }
    }

    /// Bytes of shard data in shard `i`'s file (after its header).
    pub fn shard_len(&self, shard: usize) -> u64 {
        let rows = self.rows();
        if rows == 0 {
            return 0;
        }
        (rows - 1) * self.block_bytes + self.row_len(shard, rows - 1)
    }

    /// Where byte `offset` of block `block` lies: (shard, offset in that shard's data).
    pub fn locate(&self, block: u64, offset: u64) -> (usize, u64) {
        let k = self.k as u64;
        (
            (block % k) as usize,
            (block / k) * self.block_bytes + offset,
        )
    }

    /// Total bytes of shard data over all shards (the bytes on disk, headers aside).
    pub fn total_len(&self) -> u64 {
        (0..self.shards()).map(|i| self.shard_len(i)).sum()
    }

    /// The aligned range of a row covering `[offset, offset + len)` inside it: what a
    /// degraded read fetches from each surviving shard.
    pub fn aligned(offset_in_row: u64, len: u64) -> (u64, u64) {
        let start = offset_in_row / CODE_ALIGN * CODE_ALIGN;
        let end = (offset_in_row + len).div_ceil(CODE_ALIGN) * CODE_ALIGN;
        (start, end - start)
    }
}

/// A needle in the packed layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub key: u64,
    pub alt: u32,
    /// Its offset in the source volume file.
    pub src_offset: u64,
    pub block: u64,
    pub offset: u64,
    pub extent: u32,
}

/// Packs needles (given in the order they are read from the source: by offset) into blocks.
/// Fails when one needle is larger than a block.
pub fn pack(
    needles: &[(u64, u32, u64, u32)],
    k: u8,
    m: u8,
    block_bytes: u64,
) -> Result<(Geometry, Vec<Placed>), String> {
    let mut placed = Vec::with_capacity(needles.len());
    let mut block = 0u64;
    let mut used = 0u64;
    for &(key, alt, src_offset, extent) in needles {
        let e = extent as u64;
        if e > block_bytes {
            return Err(format!(
                "needle {key}/{alt} has {e} bytes, more than a block ({block_bytes}): choose larger blocks"
            ));
        }
        if used + e > block_bytes {
            block += 1;
            used = 0;
        }
        placed.push(Placed {
            key,
            alt,
            src_offset,
            block,
            offset: used,
            extent,
        });
        used += e;
    }
    let g = if placed.is_empty() {
        Geometry {
            k,
            m,
            block_bytes,
            blocks: 0,
            last_block_len: 0,
        }
    } else {
        Geometry {
            k,
            m,
            block_bytes,
            blocks: block + 1,
            last_block_len: used,
        }
    };
    Ok((g, placed))
}

/// Checks a scheme and block size an operator asked for.
pub fn check_scheme(k: u8, m: u8, block_bytes: u64) -> Result<(), String> {
    if k == 0 || m == 0 {
        return Err("k and m must both be at least 1".into());
    }
    if k as usize + m as usize > 64 {
        return Err("k + m must be at most 64".into());
    }
    if block_bytes < 64 << 10 || !block_bytes.is_multiple_of(4096) || block_bytes > 4 << 30 {
        return Err("block_bytes must be a multiple of 4096 between 64 KiB and 4 GiB".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_needles_inside_blocks() {
        let needles: Vec<_> = (0..100u64)
            .map(|i| (i, 0u32, 64 + i * 1000, (8 + (i * 37 % 50) * 8) as u32))
            .collect();
        let (g, p) = pack(&needles, 3, 2, 1024).unwrap();
        for n in &p {
            assert!(n.offset + n.extent as u64 <= g.block_len(n.block));
        }
        let total: u64 = needles.iter().map(|n| n.3 as u64).sum();
        let data: u64 = (0..3).map(|i| g.shard_len(i)).sum();
        assert!(data >= total);
        assert_eq!(g.blocks, p.last().unwrap().block + 1);
        // Parity shards are as long as the longest data shard.
        let longest = (0..3).map(|i| g.shard_len(i)).max().unwrap();
        assert_eq!(g.shard_len(3), longest);
        assert_eq!(g.shard_len(4), longest);
    }

    #[test]
    fn a_needle_larger_than_a_block_is_refused() {
        assert!(pack(&[(1, 0, 64, 2048)], 2, 1, 1024).is_err());
    }

    #[test]
    fn empty_volume_has_no_rows() {
        let (g, p) = pack(&[], 4, 2, 1 << 20).unwrap();
        assert!(p.is_empty());
        assert_eq!(g.rows(), 0);
        assert_eq!(g.total_len(), 0);
    }

    #[test]
    fn locate_and_row_lengths() {
        let g = Geometry {
            k: 4,
            m: 2,
            block_bytes: 100,
            blocks: 6,
            last_block_len: 30,
        };
        assert_eq!(g.rows(), 2);
        assert_eq!(g.locate(5, 7), (1, 107));
        assert_eq!(g.row_len(1, 1), 30);
        assert_eq!(g.row_len(2, 1), 0);
        assert_eq!(g.row_len(4, 1), 100);
        assert_eq!(g.shard_len(0), 200);
        assert_eq!(g.shard_len(1), 130);
        assert_eq!(g.shard_len(3), 100);
        assert_eq!(g.shard_len(5), 200);
        assert_eq!(Geometry::aligned(70, 10), (64, 64));
        assert_eq!(Geometry::aligned(64, 64), (64, 64));
    }
}
