//! The bytes of a volume's index checkpoint file (`vol-N.idx`, docs/FORMAT.md): a 16-byte
//! header, then fixed 32-byte put and delete records, each with its own CRC. Pure (no I/O)
//! and fuzzed (`fuzz/fuzz_targets/checkpoint.rs`): any bytes parse to records or to `None`,
//! never a panic.

use crate::index::Loc;

/// File magic.
pub const MAGIC: [u8; 8] = *b"HSIDXLG1";
/// Format version written in the header.
pub const VERSION: u32 = 1;
/// Header bytes: magic, version, volume id.
pub const HEADER_LEN: usize = 16;
/// Record bytes.
pub const RECORD_LEN: usize = 32;
/// Record kind: a needle was written at this location.
pub const PUT: u8 = 1;
/// Record kind: the needle at this location was deleted.
pub const DELETE: u8 = 2;

/// The header for volume `id`.
pub fn header(id: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&id.to_le_bytes());
    h
}

/// Whether `raw` starts with the header of volume `id`.
pub fn header_ok(raw: &[u8], id: u32) -> bool {
    raw.len() >= HEADER_LEN && raw[..HEADER_LEN] == header(id)
}

/// One record: kind, alternate key, key, offset, extent, CRC32 of the first 28 bytes.
pub fn record(kind: u8, key: u64, alt: u32, loc: Loc) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0] = kind;
    r[4..8].copy_from_slice(&alt.to_le_bytes());
    r[8..16].copy_from_slice(&key.to_le_bytes());
    r[16..24].copy_from_slice(&loc.offset.to_le_bytes());
    r[24..28].copy_from_slice(&loc.extent.to_le_bytes());
    let crc = crc32fast::hash(&r[0..28]);
    r[28..32].copy_from_slice(&crc.to_le_bytes());
    r
}

/// A record read back and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub key: u64,
    pub alt: u32,
    pub offset: u64,
    pub extent: u32,
}

impl Record {
    /// The index entry a put record stands for.
    pub fn entry(&self) -> (u64, u32, Loc) {
        let loc = Loc {
            offset: self.offset,
            extent: self.extent,
            deleted: false,
        };
        (self.key, self.alt, loc)
    }
}

/// Parses one record; `None` for anything but a whole record with a good CRC, a known kind
/// and zero padding.
pub fn parse_record(r: &[u8]) -> Option<Record> {
    if r.len() != RECORD_LEN {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let u64_at = |i: usize| (u32_at(i) as u64) | (u32_at(i + 4) as u64) << 32;
    if crc32fast::hash(&r[0..28]) != u32_at(28) || r[1..4] != [0, 0, 0] {
        return None;
    }
    let kind = r[0];
    if kind != PUT && kind != DELETE {
        return None;
    }
    Some(Record {
        kind,
        alt: u32_at(4),
        key: u64_at(8),
        offset: u64_at(16),
        extent: u32_at(24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let loc = Loc {
            offset: 4096,
            extent: 72,
            deleted: false,
        };
        let r = record(PUT, 1 << 40, 3, loc);
        let p = parse_record(&r).unwrap();
        assert_eq!(
            (p.kind, p.key, p.alt, p.offset, p.extent),
            (PUT, 1 << 40, 3, 4096, 72)
        );
        for i in 0..RECORD_LEN {
            let mut bad = r;
            bad[i] ^= 0x10;
            assert_eq!(parse_record(&bad), None, "byte {i}");
        }
        assert_eq!(parse_record(&r[..31]), None);
        assert!(header_ok(&header(9), 9));
        assert!(!header_ok(&header(9), 8));
    }
}
