//! The bytes on disk: the volume superblock and the needle record (docs/FORMAT.md, version 1).
//!
//! Everything here is pure: encoding into buffers and checked decoding out of them. Decoders
//! never panic on any input; they return [`FormatError`] (fuzzed by `fuzz/`).

use thiserror::Error;

/// Format version written into new superblocks.
pub const FORMAT_VERSION: u32 = 2;
/// Magic at the start of every volume file.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"HAYSTACK";
/// Bytes of the superblock; the first needle starts here.
pub const SUPERBLOCK_LEN: u64 = 64;
/// Every needle starts at a multiple of this.
pub const ALIGN: u64 = 8;
/// Magic at the start of a needle header ("HSN1" little-endian).
pub const HEADER_MAGIC: u32 = 0x314e_5348;
/// Magic at the start of a needle footer ("HSF1" little-endian).
pub const FOOTER_MAGIC: u32 = 0x3146_5348;
/// Fixed header bytes before the content type.
pub const HEADER_LEN: usize = 40;
/// Footer bytes after the data: magic and CRC32.
pub const FOOTER_LEN: usize = 8;
/// Offset of the flags byte inside a needle header.
pub const FLAGS_OFFSET: u64 = 4;
/// Flag bit: the needle is deleted.
pub const FLAG_DELETED: u8 = 0x01;
/// Longest content type a needle can carry.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;

/// A decoding failure: the bytes are not a valid superblock or needle.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("buffer too short: need {need} bytes, have {have}")]
    Short { need: usize, have: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("header checksum mismatch")]
    HeaderCrc,
    #[error("unknown flag bits {0:#04x}")]
    Flags(u8),
    #[error("bad footer magic")]
    FooterMagic,
    #[error("data checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    DataCrc { stored: u32, computed: u32 },
    #[error("content type is not valid UTF-8")]
    ContentType,
    #[error("superblock field out of range: {0}")]
    Field(&'static str),
}

/// Rounds `n` up to the needle alignment.
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Bytes a needle with this content-type length and data length takes on disk.
pub fn needle_extent(content_type_len: usize, data_len: usize) -> u64 {
    align_up((HEADER_LEN + content_type_len + data_len + FOOTER_LEN) as u64)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The first 64 bytes of a volume file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub volume_id: u32,
    /// Maximum size of the volume file in bytes.
    pub max_bytes: u64,
    pub created_unix_ms: u64,
    /// Version 2: a random tag every needle of the volume carries in its header (covered by
    /// the header CRC). Recovery indexes a needle only when its tag is the volume's, so bytes
    /// of an upload that happen to (or were made to) look like a needle are never taken for
    /// one: the uploader cannot know the tag. 0 in version 1 volumes (no such protection).
    pub tag: u32,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN as usize] {
        let mut b = [0u8; SUPERBLOCK_LEN as usize];
        b[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.volume_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.max_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        b[32..36].copy_from_slice(&(ALIGN as u32).to_le_bytes());
        b[36..40].copy_from_slice(&self.tag.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let need = SUPERBLOCK_LEN as usize;
        if b.len() < need {
            return Err(FormatError::Short {
                need,
                have: b.len(),
            });
        }
        if b[0..8] != SUPERBLOCK_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32fast::hash(&b[0..60]) != le_u32(b, 60) {
            return Err(FormatError::HeaderCrc);
        }
        let version = le_u32(b, 8);
        if version != 1 && version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        let tag = if version >= 2 { le_u32(b, 36) } else { 0 };
        if le_u32(b, 32) as u64 != ALIGN {
            return Err(FormatError::Field("alignment"));
        }
        let max_bytes = le_u64(b, 16);
        if max_bytes <= SUPERBLOCK_LEN {
            return Err(FormatError::Field("max_bytes"));
        }
        Ok(Superblock {
            version,
            volume_id: le_u32(b, 12),
            max_bytes,
            created_unix_ms: le_u64(b, 24),
            tag,
        })
    }
}

/// The identity and metadata of a needle, as held in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedleHeader {
    pub flags: u8,
    pub content_type_len: u8,
    pub cookie: u64,
    pub key: u64,
    pub alt: u32,
    pub data_len: u32,
    /// The volume's tag (version 2; 0 in version 1 volumes).
    pub tag: u32,
}

impl NeedleHeader {
    /// Bytes the whole needle takes on disk.
    pub fn extent(&self) -> u64 {
        needle_extent(self.content_type_len as usize, self.data_len as usize)
    }

    pub fn deleted(&self) -> bool {
        self.flags & FLAG_DELETED != 0
    }

    fn crc(b: &[u8]) -> u32 {
        // The flags byte (offset 4) is left out: a delete flips it in place. The checksum
        // itself sits at 32..36; the reserved bytes 36..40 are covered.
        let mut h = crc32fast::Hasher::new();
        h.update(&b[0..4]);
        h.update(&b[5..32]);
        h.update(&b[36..40]);
        h.finalize()
    }

    /// Decodes and checks the fixed header (magic, checksum, flags). `b` must hold at least
    /// [`HEADER_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < HEADER_LEN {
            return Err(FormatError::Short {
                need: HEADER_LEN,
                have: b.len(),
            });
        }
        if le_u32(b, 0) != HEADER_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if Self::crc(b) != le_u32(b, 32) {
            return Err(FormatError::HeaderCrc);
        }
        if b[6] != 0 || b[7] != 0 {
            return Err(FormatError::Field("reserved header bytes"));
        }
        let flags = b[4];
        if flags & !FLAG_DELETED != 0 {
            return Err(FormatError::Flags(flags));
        }
        Ok(NeedleHeader {
            flags,
            content_type_len: b[5],
            cookie: le_u64(b, 8),
            key: le_u64(b, 16),
            alt: le_u32(b, 24),
            data_len: le_u32(b, 28),
            tag: le_u32(b, 36),
        })
    }
}

/// A needle to append.
#[derive(Clone, Debug)]
pub struct NeedleIn<'a> {
    pub key: u64,
    pub alt: u32,
    pub cookie: u64,
    pub content_type: &'a str,
    pub data: &'a [u8],
    /// The volume's tag ([`Superblock::tag`]).
    pub tag: u32,
}

/// Appends the encoded needle to `out` (which must already be 8-aligned relative to the
/// volume) and returns the bytes written (its extent).
pub fn encode_needle(out: &mut Vec<u8>, n: &NeedleIn<'_>) -> u64 {
    let ct = n.content_type.as_bytes();
    let ct_len = ct.len().min(MAX_CONTENT_TYPE_LEN);
    let ct = &ct[..ct_len];
    let start = out.len();
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    h[4] = 0;
    h[5] = ct_len as u8;
    h[8..16].copy_from_slice(&n.cookie.to_le_bytes());
    h[16..24].copy_from_slice(&n.key.to_le_bytes());
    h[24..28].copy_from_slice(&n.alt.to_le_bytes());
    h[28..32].copy_from_slice(&(n.data.len() as u32).to_le_bytes());
    h[36..40].copy_from_slice(&n.tag.to_le_bytes());
    let crc = NeedleHeader::crc(&h);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(ct);
    out.extend_from_slice(n.data);
    let mut dh = crc32fast::Hasher::new();
    dh.update(ct);
    dh.update(n.data);
    out.extend_from_slice(&FOOTER_MAGIC.to_le_bytes());
    out.extend_from_slice(&dh.finalize().to_le_bytes());
    let extent = needle_extent(ct_len, n.data.len());
    out.resize(start + extent as usize, 0);
    extent
}

/// A fully checked needle: where its content type and data sit inside the buffer it was
/// decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedNeedle {
    pub header: NeedleHeader,
    pub content_type: std::ops::Range<usize>,
    pub data: std::ops::Range<usize>,
    /// CRC32 of content type and data, as stored and verified.
    pub crc: u32,
}

/// Decodes a whole needle from `b` (which starts at its header) and verifies header checksum,
/// footer magic and the data CRC. Never returns bytes that fail a check.
pub fn parse_needle(b: &[u8]) -> Result<ParsedNeedle, FormatError> {
    let header = NeedleHeader::decode(b)?;
    let ct_end = HEADER_LEN + header.content_type_len as usize;
    let data_end = ct_end + header.data_len as usize;
    let need = data_end + FOOTER_LEN;
    if b.len() < need {
        return Err(FormatError::Short {
            need,
            have: b.len(),
        });
    }
    if le_u32(b, data_end) != FOOTER_MAGIC {
        return Err(FormatError::FooterMagic);
    }
    let stored = le_u32(b, data_end + 4);
    let computed = crc32fast::hash(&b[HEADER_LEN..data_end]);
    if stored != computed {
        return Err(FormatError::DataCrc { stored, computed });
    }
    if std::str::from_utf8(&b[HEADER_LEN..ct_end]).is_err() {
        return Err(FormatError::ContentType);
    }
    Ok(ParsedNeedle {
        header,
        content_type: HEADER_LEN..ct_end,
        data: ct_end..data_end,
        crc: stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode_needle(
            &mut out,
            &NeedleIn {
                key: 42,
                alt: 3,
                cookie: 0xdead_beef_0bad_cafe,
                content_type: "image/jpeg",
                data: b"hello needle",
                tag: 0x5eed_7a91,
            },
        );
        out
    }

    #[test]
    fn needle_round_trip_and_alignment() {
        let b = sample();
        assert_eq!(b.len() % 8, 0);
        assert_eq!(b.len() as u64, needle_extent(10, 12));
        let p = parse_needle(&b).unwrap();
        assert_eq!(p.header.key, 42);
        assert_eq!(p.header.alt, 3);
        assert_eq!(p.header.cookie, 0xdead_beef_0bad_cafe);
        assert_eq!(&b[p.content_type.clone()], b"image/jpeg");
        assert_eq!(&b[p.data.clone()], b"hello needle");
        assert!(!p.header.deleted());
    }

    #[test]
    fn every_single_bit_flip_is_detected_or_harmless() {
        let b = sample();
        let good = parse_needle(&b).unwrap();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                match parse_needle(&c) {
                    Err(_) => {}
                    Ok(p) => {
                        // Only the delete flag and the padding may change without an error.
                        let is_flag = i == 4 && bit == 0;
                        let is_pad = i >= HEADER_LEN + 10 + 12 + FOOTER_LEN;
                        assert!(is_flag || is_pad, "flip at byte {i} bit {bit} undetected");
                        if is_pad {
                            assert_eq!(p, good);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn truncated_needles_are_errors() {
        let b = sample();
        for len in 0..HEADER_LEN + 10 + 12 + FOOTER_LEN {
            assert!(parse_needle(&b[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn version_1_superblocks_still_open_with_no_tag() {
        let mut b = Superblock {
            version: 1,
            volume_id: 7,
            max_bytes: 1 << 30,
            created_unix_ms: 1234,
            tag: 0,
        }
        .encode();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        let s = Superblock::decode(&b).unwrap();
        assert_eq!((s.version, s.tag), (1, 0));
    }

    #[test]
    fn superblock_round_trip_and_corruption() {
        let s = Superblock {
            version: FORMAT_VERSION,
            volume_id: 7,
            max_bytes: 1 << 30,
            created_unix_ms: 1234,
            tag: 0xabcd_0123,
        };
        let b = s.encode();
        assert_eq!(Superblock::decode(&b).unwrap(), s);
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(Superblock::decode(&c).is_err(), "byte {i}");
        }
        assert!(Superblock::decode(&b[..63]).is_err());
    }
}
