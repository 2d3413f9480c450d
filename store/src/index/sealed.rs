//! Sorted, memory-mapped needle index of a sealed (read-only) volume; format in
//! FORMAT-sealed-index.md.
//!
//! The file is a 32-byte header and fixed-size 24-byte records sorted by (key, alt). The
//! records are used in place from a shared read-write mapping, so the index costs no heap;
//! only the deleted bit of a record is ever changed after the file is written.

use super::Loc;
use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// File magic.
pub const MAGIC: [u8; 8] = *b"HSIDX\0\0\x01";
/// Format version.
pub const VERSION: u32 = 1;
/// Header bytes.
pub const HEADER_SIZE: usize = 32;
/// Record bytes.
pub const RECORD_SIZE: usize = 24;
/// Deleted flag in the record's `extent / 8` word.
const DELETED: u32 = 1 << 31;
/// Byte of the record that holds the deleted bit (the top byte of the little-endian u32 at 12).
const DELETED_BYTE: usize = 15;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn invalid_input(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn encode_record(key: u64, alt: u32, loc: Loc) -> [u8; RECORD_SIZE] {
    let mut r = [0u8; RECORD_SIZE];
    r[0..8].copy_from_slice(&key.to_le_bytes());
    r[8..12].copy_from_slice(&alt.to_le_bytes());
    let ext = (loc.extent >> 3) | if loc.deleted { DELETED } else { 0 };
    r[12..16].copy_from_slice(&ext.to_le_bytes());
    r[16..24].copy_from_slice(&(loc.offset >> 3).to_le_bytes());
    r
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

fn record_id(r: &[u8]) -> (u64, u32) {
    (u64_at(r, 0), u32_at(r, 8))
}

fn record_loc(r: &[u8]) -> Loc {
    let ext = u32_at(r, 12);
    Loc {
        offset: u64_at(r, 16) << 3,
        extent: (ext & !DELETED) << 3,
        deleted: ext & DELETED != 0,
    }
}

/// CRC32 of the records with every deleted bit cleared: `mark_deleted` flips those bits in
/// the mapped file after the CRC was written, and the volume file's own flag is the durable
/// truth for them.
fn records_crc(records: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut buf = [0u8; RECORD_SIZE * 1024];
    for chunk in records.chunks(buf.len()) {
        let b = &mut buf[..chunk.len()];
        b.copy_from_slice(chunk);
        for r in b.chunks_exact_mut(RECORD_SIZE) {
            r[DELETED_BYTE] &= 0x7f;
        }
        h.update(b);
    }
    h.finalize()
}

fn header(count: u64, crc: u32) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(RECORD_SIZE as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The mapped index of a sealed volume.
pub struct SortedIndex {
    map: MmapMut,
    len: usize,
}

impl std::fmt::Debug for SortedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedIndex")
            .field("len", &self.len)
            .finish()
    }
}

impl SortedIndex {
    /// Writes entries (sorted, deduplicated) to `path` durably: write to a temp file in the
    /// same directory, fsync it, rename over `path`, fsync the directory.
    ///
    /// Entries out of order or with a duplicate (key, alt), and locations whose offset or
    /// extent is not a multiple of 8, are an error of kind InvalidInput.
    pub fn write(
        path: &Path,
        entries: impl IntoIterator<Item = (u64, u32, Loc)>,
    ) -> io::Result<()> {
        let name = path
            .file_name()
            .ok_or_else(|| invalid_input(format!("no file name in {}", path.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let result = Self::write_tmp(&tmp, entries).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }

    fn write_tmp(tmp: &Path, entries: impl IntoIterator<Item = (u64, u32, Loc)>) -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        let mut w = BufWriter::with_capacity(1 << 16, file);
        w.write_all(&header(0, 0))?;
        let mut h = crc32fast::Hasher::new();
        let mut count = 0u64;
        let mut prev: Option<(u64, u32)> = None;
        for (key, alt, loc) in entries {
            if prev.is_some_and(|p| p >= (key, alt)) {
                return Err(invalid_input(format!(
                    "entries not sorted or duplicated at ({key}, {alt})"
                )));
            }
            if !loc.offset.is_multiple_of(8) || !loc.extent.is_multiple_of(8) {
                return Err(invalid_input(format!("unaligned location {loc:?}")));
            }
            prev = Some((key, alt));
            let mut r = encode_record(key, alt, loc);
            w.write_all(&r)?;
            r[DELETED_BYTE] &= 0x7f;
            h.update(&r);
            count += 1;
        }
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header(count, h.finalize()))?;
        file.sync_all()
    }

    /// Maps the file read-write (MAP_SHARED) after checking magic, version, record count
    /// against file length, and a CRC32 of the records; a bad file is an io::Error of kind
    /// InvalidData.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let file_len = file.metadata()?.len();
        if file_len < HEADER_SIZE as u64 {
            return Err(invalid(format!("index file too short: {file_len} bytes")));
        }
        let file_len = usize::try_from(file_len)
            .map_err(|_| invalid(format!("index file too large: {file_len} bytes")))?;
        // SAFETY: the mapping is only valid while nobody else truncates or rewrites the file.
        // Sealed index files are written once (under a temporary name, then renamed) and only
        // this process opens them afterwards; all accesses below are bounds-checked.
        let map = unsafe { MmapOptions::new().len(file_len).map_mut(&file)? };
        let h = map
            .get(..HEADER_SIZE)
            .ok_or_else(|| invalid("short header"))?;
        if h[0..8] != MAGIC {
            return Err(invalid("bad index magic"));
        }
        let version = u32_at(h, 8);
        if version != VERSION {
            return Err(invalid(format!("unsupported index version {version}")));
        }
        let record_size = u32_at(h, 12);
        if record_size as usize != RECORD_SIZE {
            return Err(invalid(format!("bad record size {record_size}")));
        }
        if u32_at(h, 28) != 0 {
            return Err(invalid("reserved header field is not zero"));
        }
        let count = u64_at(h, 16);
        let expected_len = count
            .checked_mul(RECORD_SIZE as u64)
            .and_then(|n| n.checked_add(HEADER_SIZE as u64));
        if expected_len != Some(file_len as u64) {
            return Err(invalid(format!(
                "record count {count} does not match file length {file_len}"
            )));
        }
        let crc = u32_at(h, 24);
        let records = map
            .get(HEADER_SIZE..)
            .ok_or_else(|| invalid("short header"))?;
        let actual = records_crc(records);
        if actual != crc {
            return Err(invalid(format!(
                "index records CRC mismatch: header {crc:08x}, records {actual:08x}"
            )));
        }
        let mut prev: Option<(u64, u32)> = None;
        for r in records.chunks_exact(RECORD_SIZE) {
            let id = record_id(r);
            if prev.is_some_and(|p| p >= id) {
                return Err(invalid(format!("index records not sorted at {id:?}")));
            }
            prev = Some(id);
        }
        Ok(SortedIndex {
            len: records.len() / RECORD_SIZE,
            map,
        })
    }

    fn records(&self) -> &[u8] {
        self.map.get(HEADER_SIZE..).unwrap_or(&[])
    }

    fn find(&self, id: (u64, u32)) -> Option<usize> {
        let recs = self.records();
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = recs.get(mid * RECORD_SIZE..(mid + 1) * RECORD_SIZE)?;
            match record_id(r).cmp(&id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub fn get(&self, key: u64, alt: u32) -> Option<Loc> {
        let i = self.find((key, alt))?;
        self.records()
            .get(i * RECORD_SIZE..(i + 1) * RECORD_SIZE)
            .map(record_loc)
    }

    /// Sets the deleted bit of the record in the mapping (no fsync: the volume file's own
    /// flag is the durable truth) and returns the Loc as it was.
    pub fn mark_deleted(&mut self, key: u64, alt: u32) -> Option<Loc> {
        let i = self.find((key, alt))?;
        let at = HEADER_SIZE + i * RECORD_SIZE;
        let r = self.map.get_mut(at..at + RECORD_SIZE)?;
        let loc = record_loc(r);
        r[DELETED_BYTE] |= 0x80;
        Some(loc)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All records in (key, alt) order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32, Loc)> + '_ {
        self.records().chunks_exact(RECORD_SIZE).map(|r| {
            let (key, alt) = record_id(r);
            (key, alt, record_loc(r))
        })
    }

    /// Heap bytes held: none, the records live in the mapping.
    pub fn heap_bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "hsindex-sealed-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self) -> PathBuf {
            self.0.join("volume.idx")
        }

        fn files(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn loc(offset: u64, extent: u32, deleted: bool) -> Loc {
        Loc {
            offset,
            extent,
            deleted,
        }
    }

    fn sample() -> Vec<(u64, u32, Loc)> {
        vec![
            (0, 0, loc(0, 8, false)),
            (0, u32::MAX, loc(8, (u32::MAX >> 3) << 3, true)),
            (7, 1, loc((1 << 40) - 8, 64, false)),
            (1 << 63, 2, loc(u64::MAX - 7, 4096, false)),
            (u64::MAX, u32::MAX, loc(1 << 40, 8, false)),
        ]
    }

    fn kind(r: io::Result<SortedIndex>) -> io::ErrorKind {
        match r {
            Ok(_) => panic!("a corrupted index was accepted"),
            Err(e) => e.kind(),
        }
    }

    fn any_entries() -> impl Strategy<Value = BTreeMap<(u64, u32), Loc>> {
        let key = (
            prop_oneof![0u64..50, any::<u64>()],
            prop_oneof![0u32..4, any::<u32>()],
        );
        let l = (0u64..(1 << 61), 0u32..(1 << 29), any::<bool>())
            .prop_map(|(o, e, d)| loc(o * 8, e * 8, d));
        prop::collection::btree_map(key, l, 0..200)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip_matches_model(model in any_entries(), probes in prop::collection::vec((0u64..50, 0u32..4), 0..20)) {
            let dir = TempDir::new();
            SortedIndex::write(&dir.path(), model.iter().map(|(&(k, a), &l)| (k, a, l))).unwrap();
            let index = SortedIndex::open(&dir.path()).unwrap();
            prop_assert_eq!(index.len(), model.len());
            prop_assert_eq!(index.is_empty(), model.is_empty());
            let got: Vec<_> = index.iter().collect();
            let want: Vec<_> = model.iter().map(|(&(k, a), &l)| (k, a, l)).collect();
            prop_assert_eq!(got, want);
            for (&(k, a), &l) in &model {
                prop_assert_eq!(index.get(k, a), Some(l));
            }
            for (k, a) in probes {
                prop_assert_eq!(index.get(k, a), model.get(&(k, a)).copied());
            }
            prop_assert_eq!(index.heap_bytes(), 0);
            prop_assert_eq!(dir.files(), vec!["volume.idx".to_string()]);
        }
    }

    #[test]
    fn mark_deleted_survives_reopen() {
        let dir = TempDir::new();
        let entries = sample();
        SortedIndex::write(&dir.path(), entries.iter().copied()).unwrap();
        let mut index = SortedIndex::open(&dir.path()).unwrap();
        for &(k, a, l) in &entries {
            assert_eq!(index.mark_deleted(k, a), Some(l));
            assert_eq!(index.get(k, a), Some(Loc { deleted: true, ..l }));
            assert_eq!(index.mark_deleted(k, a), Some(Loc { deleted: true, ..l }));
        }
        assert_eq!(index.mark_deleted(1, 1), None);
        assert_eq!(index.mark_deleted(u64::MAX, 0), None);
        drop(index);
        // The CRC does not cover the deleted bits, so the changed file still opens.
        let index = SortedIndex::open(&dir.path()).unwrap();
        let want: Vec<_> = entries
            .iter()
            .map(|&(k, a, l)| (k, a, Loc { deleted: true, ..l }))
            .collect();
        assert_eq!(index.iter().collect::<Vec<_>>(), want);
    }

    #[test]
    fn empty_index() {
        let dir = TempDir::new();
        SortedIndex::write(&dir.path(), std::iter::empty()).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().len(),
            HEADER_SIZE as u64
        );
        let mut index = SortedIndex::open(&dir.path()).unwrap();
        assert_eq!(index.len(), 0);
        assert!(index.is_empty());
        assert_eq!(index.get(0, 0), None);
        assert_eq!(index.mark_deleted(0, 0), None);
        assert_eq!(index.iter().count(), 0);
    }

    #[test]
    fn header_layout() {
        let dir = TempDir::new();
        SortedIndex::write(&dir.path(), sample()).unwrap();
        let bytes = std::fs::read(dir.path()).unwrap();
        assert_eq!(bytes.len(), HEADER_SIZE + 5 * RECORD_SIZE);
        assert_eq!(&bytes[0..8], b"HSIDX\0\0\x01");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        assert_eq!(bytes[12..16], 24u32.to_le_bytes());
        assert_eq!(bytes[16..24], 5u64.to_le_bytes());
        assert_eq!(bytes[28..32], [0; 4]);
        // Second record: key 0, alt u32::MAX, extent/8 with the deleted bit, offset/8 = 1.
        let r = &bytes[HEADER_SIZE + RECORD_SIZE..HEADER_SIZE + 2 * RECORD_SIZE];
        assert_eq!(r[0..8], 0u64.to_le_bytes());
        assert_eq!(r[8..12], u32::MAX.to_le_bytes());
        assert_eq!(r[12..16], ((u32::MAX >> 3) | 1 << 31).to_le_bytes());
        assert_eq!(r[16..24], 1u64.to_le_bytes());
        // The CRC is over the records with the deleted bits cleared.
        let mut masked = bytes[HEADER_SIZE..].to_vec();
        for r in masked.chunks_exact_mut(RECORD_SIZE) {
            r[15] &= 0x7f;
        }
        assert_eq!(bytes[24..28], crc32fast::hash(&masked).to_le_bytes());
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let dir = TempDir::new();
        SortedIndex::write(&dir.path(), sample()).unwrap();
        let good = std::fs::read(dir.path()).unwrap();
        for i in 0..good.len() {
            for bit in 0..8 {
                let in_record = i >= HEADER_SIZE;
                if in_record && (i - HEADER_SIZE) % RECORD_SIZE == DELETED_BYTE && bit == 7 {
                    continue; // the deleted bit, which is meant to change
                }
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                std::fs::write(dir.path(), &bad).unwrap();
                assert_eq!(
                    kind(SortedIndex::open(&dir.path())),
                    io::ErrorKind::InvalidData,
                    "byte {i} bit {bit}"
                );
            }
        }
        // Flipping a deleted bit is accepted and shows.
        let mut flipped = good.clone();
        flipped[HEADER_SIZE + DELETED_BYTE] ^= 0x80;
        std::fs::write(dir.path(), &flipped).unwrap();
        let index = SortedIndex::open(&dir.path()).unwrap();
        assert_eq!(index.get(0, 0), Some(loc(0, 8, true)));
    }

    #[test]
    fn truncated_or_extended_file_is_rejected() {
        let dir = TempDir::new();
        SortedIndex::write(&dir.path(), sample()).unwrap();
        let good = std::fs::read(dir.path()).unwrap();
        for len in [
            0,
            1,
            8,
            31,
            32,
            33,
            56,
            good.len() - RECORD_SIZE,
            good.len() - 1,
        ] {
            std::fs::write(dir.path(), &good[..len]).unwrap();
            assert_eq!(
                kind(SortedIndex::open(&dir.path())),
                io::ErrorKind::InvalidData,
                "{len}"
            );
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; RECORD_SIZE]);
        std::fs::write(dir.path(), &longer).unwrap();
        assert_eq!(
            kind(SortedIndex::open(&dir.path())),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn unsorted_records_with_valid_crc_are_rejected() {
        let dir = TempDir::new();
        let mut records = Vec::new();
        for (k, a, l) in [(5u64, 0u32, loc(0, 8, false)), (3, 0, loc(8, 8, false))] {
            records.extend_from_slice(&encode_record(k, a, l));
        }
        let mut bytes = header(2, records_crc(&records)).to_vec();
        bytes.extend_from_slice(&records);
        std::fs::write(dir.path(), &bytes).unwrap();
        assert_eq!(
            kind(SortedIndex::open(&dir.path())),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn bad_input_is_refused_and_keeps_the_old_file() {
        let dir = TempDir::new();
        SortedIndex::write(&dir.path(), sample()).unwrap();
        let good = std::fs::read(dir.path()).unwrap();
        let bad_inputs = [
            vec![(2u64, 0u32, loc(0, 8, false)), (1, 0, loc(8, 8, false))],
            vec![(1, 0, loc(0, 8, false)), (1, 0, loc(8, 8, false))],
            vec![(1, 0, loc(4, 8, false))],
            vec![(1, 0, loc(0, 12, false))],
        ];
        for input in bad_inputs {
            let err = SortedIndex::write(&dir.path(), input).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(std::fs::read(dir.path()).unwrap(), good);
            assert_eq!(dir.files(), vec!["volume.idx".to_string()]);
        }
        // A good rewrite replaces the file.
        SortedIndex::write(&dir.path(), sample().into_iter().take(2)).unwrap();
        assert_eq!(SortedIndex::open(&dir.path()).unwrap().len(), 2);
        assert_eq!(dir.files(), vec!["volume.idx".to_string()]);
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = TempDir::new();
        let err = SortedIndex::open(&dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
