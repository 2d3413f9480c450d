//! The bytes of an erasure-coded volume's files (docs/FORMAT.md, "Erasure-coded volumes"):
//! the shard file's header and its table of piece CRCs, the index file, the delete log and the
//! manifest. Pure: encode and decode, every field checked.

use serde::{Deserialize, Serialize};

use super::layout::Geometry;

pub const SHARD_MAGIC: [u8; 8] = *b"HSECSHD1";
pub const INDEX_MAGIC: [u8; 8] = *b"HSECIDX1";
pub const DELETE_MAGIC: [u8; 8] = *b"HSECDEL1";
pub const VERSION: u32 = 1;
pub const SHARD_HEADER_LEN: u64 = 64;
pub const INDEX_HEADER_LEN: usize = 48;
pub const INDEX_RECORD_LEN: usize = 24;
pub const DELETE_HEADER_LEN: usize = 16;
pub const DELETE_RECORD_LEN: usize = 16;
/// The shard data is checksummed in pieces of this many bytes (the last one shorter).
pub const PIECE_BYTES: u64 = 1 << 20;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// The header of a shard file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub volume: u32,
    pub generation: u32,
    pub shard: u16,
    pub geometry: Geometry,
}

impl ShardHeader {
    pub fn encode(&self) -> [u8; SHARD_HEADER_LEN as usize] {
        let mut b = [0u8; SHARD_HEADER_LEN as usize];
        let g = &self.geometry;
        b[0..8].copy_from_slice(&SHARD_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.volume.to_le_bytes());
        b[16..20].copy_from_slice(&self.generation.to_le_bytes());
        b[20..22].copy_from_slice(&self.shard.to_le_bytes());
        b[22] = g.k;
        b[23] = g.m;
        b[24..32].copy_from_slice(&g.block_bytes.to_le_bytes());
        b[32..40].copy_from_slice(&g.blocks.to_le_bytes());
        b[40..48].copy_from_slice(&g.last_block_len.to_le_bytes());
        b[48..56].copy_from_slice(&g.shard_len(self.shard as usize).to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<ShardHeader, String> {
        if b.len() < SHARD_HEADER_LEN as usize {
            return Err("short shard header".into());
        }
        if b[0..8] != SHARD_MAGIC {
            return Err("not a shard file (magic)".into());
        }
        if crc32fast::hash(&b[0..60]) != u32_at(b, 60) {
            return Err("shard header CRC mismatch".into());
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!("unknown shard format version {version}"));
        }
        let h = ShardHeader {
            volume: u32_at(b, 12),
            generation: u32_at(b, 16),
            shard: u16::from_le_bytes([b[20], b[21]]),
            geometry: Geometry {
                k: b[22],
                m: b[23],
                block_bytes: u64_at(b, 24),
                blocks: u64_at(b, 32),
                last_block_len: u64_at(b, 40),
            },
        };
        if h.shard as usize >= h.geometry.shards() || b[56..60] != [0; 4] {
            return Err("shard header fields out of range".into());
        }
        if u64_at(b, 48) != h.geometry.shard_len(h.shard as usize) {
            return Err("shard length does not match the geometry".into());
        }
        Ok(h)
    }

    /// Bytes of the CRC table that follows the shard data: a CRC32 per piece, then the CRC32
    /// of those.
    pub fn table_len(&self) -> u64 {
        pieces(self.geometry.shard_len(self.shard as usize)) * 4 + 4
    }

    /// The whole file's length.
    pub fn file_len(&self) -> u64 {
        SHARD_HEADER_LEN + self.geometry.shard_len(self.shard as usize) + self.table_len()
    }
}

/// Pieces of shard data of `len` bytes.
pub fn pieces(len: u64) -> u64 {
    len.div_ceil(PIECE_BYTES)
}

/// The CRC table's bytes for these piece CRCs.
pub fn encode_table(crcs: &[u32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(crcs.len() * 4 + 4);
    for c in crcs {
        b.extend_from_slice(&c.to_le_bytes());
    }
    let t = crc32fast::hash(&b);
    b.extend_from_slice(&t.to_le_bytes());
    b
}

pub fn decode_table(b: &[u8], pieces: u64) -> Result<Vec<u32>, String> {
    let n = pieces as usize;
    if b.len() != n * 4 + 4 {
        return Err("CRC table has the wrong length".into());
    }
    if crc32fast::hash(&b[..n * 4]) != u32_at(b, n * 4) {
        return Err("CRC table checksum mismatch".into());
    }
    Ok((0..n).map(|i| u32_at(b, i * 4)).collect())
}

/// A needle of an erasure-coded volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    pub key: u64,
    pub alt: u32,
    pub block: u32,
    pub offset: u32,
    pub extent: u32,
}

/// The index file: what every shard store holds, so any of them can find a needle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    pub volume: u32,
    pub generation: u32,
    /// The tag of the source volume's needles (its superblock's).
    pub tag: u32,
    pub geometry: Geometry,
    /// Sorted by (key, alt), strictly ascending.
    pub records: Vec<IndexRecord>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; INDEX_HEADER_LEN];
        let g = &self.geometry;
        b[0..8].copy_from_slice(&INDEX_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.volume.to_le_bytes());
        b[16..20].copy_from_slice(&self.generation.to_le_bytes());
        b[20..24].copy_from_slice(&self.tag.to_le_bytes());
        b[24] = g.k;
        b[25] = g.m;
        b[26..32].copy_from_slice(&(self.records.len() as u64).to_le_bytes()[..6]);
        b[32..40].copy_from_slice(&g.block_bytes.to_le_bytes());
        // Blocks and the last block's length in 4 bytes each (records name blocks in 4
        // bytes; a block is at most 4 GiB, `layout::check_scheme`).
        b[40..44].copy_from_slice(&(g.blocks as u32).to_le_bytes());
        b[44..48].copy_from_slice(&(g.last_block_len as u32).to_le_bytes());
        for r in &self.records {
            b.extend_from_slice(&r.key.to_le_bytes());
            b.extend_from_slice(&r.alt.to_le_bytes());
            b.extend_from_slice(&r.block.to_le_bytes());
            b.extend_from_slice(&r.offset.to_le_bytes());
            b.extend_from_slice(&r.extent.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<IndexFile, String> {
        if b.len() < INDEX_HEADER_LEN + 4 || b[0..8] != INDEX_MAGIC {
            return Err("not an erasure-coded index file".into());
        }
        let body = b.len() - 4;
        if crc32fast::hash(&b[..body]) != u32_at(b, body) {
            return Err("index file CRC mismatch".into());
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!("unknown index format version {version}"));
        }
        let mut count = [0u8; 8];
        count[..6].copy_from_slice(&b[26..32]);
        let count = u64::from_le_bytes(count) as usize;
        if body != INDEX_HEADER_LEN + count * INDEX_RECORD_LEN {
            return Err("index file length does not match its record count".into());
        }
        let geometry = Geometry {
            k: b[24],
            m: b[25],
            block_bytes: u64_at(b, 32),
            blocks: u32_at(b, 40) as u64,
            last_block_len: u32_at(b, 44) as u64,
        };
        let mut records = Vec::with_capacity(count);
        for c in b[INDEX_HEADER_LEN..body].chunks_exact(INDEX_RECORD_LEN) {
            let r = IndexRecord {
                key: u64_at(c, 0),
                alt: u32_at(c, 8),
                block: u32_at(c, 12),
                offset: u32_at(c, 16),
                extent: u32_at(c, 20),
            };
            if let Some(p) = records.last() {
                let p: &IndexRecord = p;
                if (p.key, p.alt) >= (r.key, r.alt) {
                    return Err("index records are not strictly ascending".into());
                }
            }
            if (r.block as u64) >= geometry.blocks
                || r.offset as u64 + r.extent as u64 > geometry.block_len(r.block as u64)
            {
                return Err("index record points outside its block".into());
            }
            records.push(r);
        }
        Ok(IndexFile {
            volume: u32_at(b, 12),
            generation: u32_at(b, 16),
            tag: u32_at(b, 20),
            geometry,
            records,
        })
    }
}

pub fn delete_header(volume: u32) -> [u8; DELETE_HEADER_LEN] {
    let mut b = [0u8; DELETE_HEADER_LEN];
    b[0..8].copy_from_slice(&DELETE_MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&volume.to_le_bytes());
    b
}

pub fn delete_record(key: u64, alt: u32) -> [u8; DELETE_RECORD_LEN] {
    let mut b = [0u8; DELETE_RECORD_LEN];
    b[0..8].copy_from_slice(&key.to_le_bytes());
    b[8..12].copy_from_slice(&alt.to_le_bytes());
    let crc = crc32fast::hash(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The deletes of a delete log, up to its first bad record (a torn append).
pub fn parse_deletes(b: &[u8], volume: u32) -> Result<Vec<(u64, u32)>, String> {
    if b.len() < DELETE_HEADER_LEN
        || b[0..8] != DELETE_MAGIC
        || u32_at(b, 8) != VERSION
        || u32_at(b, 12) != volume
    {
        return Err("not this volume's delete log".into());
    }
    let mut out = Vec::new();
    for c in b[DELETE_HEADER_LEN..].chunks_exact(DELETE_RECORD_LEN) {
        if crc32fast::hash(&c[0..12]) != u32_at(c, 12) {
            break;
        }
        out.push((u64_at(c, 0), u32_at(c, 8)));
    }
    Ok(out)
}

/// `ec-{v}.ecm`: which generation is current and where every shard lives. Written under a
/// temporary name, synced and renamed: its rename is a store's switch to a generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub volume: u32,
    pub generation: u32,
    pub k: u8,
    pub m: u8,
    /// The shard this store holds.
    pub shard: u16,
    /// Base URL of the store holding each shard, by shard index.
    pub shards: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            k: 4,
            m: 2,
            block_bytes: 1 << 20,
            blocks: 9,
            last_block_len: 4096,
        }
    }

    #[test]
    fn shard_header_round_trip_and_every_bit_flip_refused() {
        let h = ShardHeader {
            volume: 7,
            generation: 2,
            shard: 5,
            geometry: geometry(),
        };
        let b = h.encode();
        assert_eq!(ShardHeader::decode(&b).unwrap(), h);
        for bit in 0..b.len() * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(ShardHeader::decode(&c).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn index_round_trip_and_damage_refused() {
        let f = IndexFile {
            volume: 3,
            generation: 1,
            tag: 0xabcd,
            geometry: geometry(),
            records: vec![
                IndexRecord {
                    key: 1,
                    alt: 0,
                    block: 0,
                    offset: 0,
                    extent: 64,
                },
                IndexRecord {
                    key: 1,
                    alt: 2,
                    block: 8,
                    offset: 64,
                    extent: 128,
                },
            ],
        };
        let b = f.encode();
        assert_eq!(IndexFile::decode(&b).unwrap(), f);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(IndexFile::decode(&c).is_err(), "byte {i}");
        }
        assert!(IndexFile::decode(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn delete_log_stops_at_a_torn_record() {
        let mut b = delete_header(9).to_vec();
        b.extend_from_slice(&delete_record(5, 1));
        b.extend_from_slice(&delete_record(6, 0));
        let mut torn = delete_record(7, 0);
        torn[3] ^= 1;
        b.extend_from_slice(&torn);
        assert_eq!(parse_deletes(&b, 9).unwrap(), vec![(5, 1), (6, 0)]);
        assert!(parse_deletes(&b, 8).is_err());
    }

    #[test]
    fn crc_table_round_trip() {
        let t = encode_table(&[1, 2, 3]);
        assert_eq!(decode_table(&t, 3).unwrap(), vec![1, 2, 3]);
        let mut bad = t.clone();
        bad[0] ^= 1;
        assert!(decode_table(&bad, 3).is_err());
    }
}
