//! Encoding: the live needles of a sealed volume (or of an erasure-coded volume being
//! re-encoded) packed into blocks and written as k data shard files, then m parity shard files
//! computed a piece at a time, every file with its CRC table and header, and the index file:
//! all under a staging directory that is renamed into place only once every file is synced.
//! Blocking: run it on a blocking thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::disk::Disk;
use crate::error::{Result, StoreError};
use crate::format::parse_needle;

use super::codec;
use super::format::{
    encode_table, pieces, IndexFile, IndexRecord, ShardHeader, PIECE_BYTES, SHARD_HEADER_LEN,
};
use super::layout::{pack, Geometry, CODE_ALIGN};

/// Where a needle to encode comes from: a reader of its verified bytes.
pub trait NeedleSource {
    /// The needle's whole extent, checked (magic, CRCs, key, alternate key, tag).
    fn read(&self, key: u64, alt: u32, src_offset: u64, extent: u32) -> Result<Vec<u8>>;
}

/// A plain volume file as a source.
pub struct VolumeFileSource<'a> {
    pub disk: &'a Disk,
    pub file: &'a File,
    pub tag: u32,
}

impl NeedleSource for VolumeFileSource<'_> {
    fn read(&self, key: u64, alt: u32, src_offset: u64, extent: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; extent as usize];
        self.disk.read_exact_at(self.file, &mut buf, src_offset)?;
        check_needle(&buf, key, alt, self.tag, src_offset)?;
        Ok(buf)
    }
}

/// Refuses bytes that are not the needle asked for: corrupt bytes are never encoded.
pub fn check_needle(buf: &[u8], key: u64, alt: u32, tag: u32, offset: u64) -> Result<()> {
    let corrupt = |detail: String| StoreError::Corrupt {
        volume: 0,
        offset,
        detail,
    };
    let p = parse_needle(buf).map_err(|e| corrupt(e.to_string()))?;
    if p.header.key != key || p.header.alt != alt {
        return Err(corrupt("the needle has another key".into()));
    }
    if p.header.tag != tag {
        return Err(corrupt("the needle carries another volume's tag".into()));
    }
    Ok(())
}

/// What was built.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BuildReport {
    pub volume: u32,
    pub generation: u32,
    pub k: u8,
    pub m: u8,
    pub block_bytes: u64,
    pub blocks: u64,
    pub needles: u64,
    /// Bytes of the needles encoded.
    pub needle_bytes: u64,
    /// Bytes of every shard file (headers and CRC tables included).
    pub shard_file_bytes: Vec<u64>,
    pub elapsed_ms: u64,
}

/// The staging directory of a build.
pub fn staging_dir(data_dir: &Path, volume: u32, generation: u32) -> PathBuf {
    data_dir.join(format!("ec-{volume}-{generation}.build"))
}

/// A staged file's name: `s{i}` for shard i, `ecx` for the index.
pub fn staged_name(shard: Option<usize>) -> String {
    match shard {
        Some(i) => format!("s{i}"),
        None => "ecx".to_string(),
    }
}

/// The build itself. `needles` are (key, alt, source offset, extent), in source order.
#[allow(clippy::too_many_arguments)]
pub fn build(
    disk: &Disk,
    source: &dyn NeedleSource,
    needles: &[(u64, u32, u64, u32)],
    volume: u32,
    generation: u32,
    tag: u32,
    (k, m, block_bytes): (u8, u8, u64),
    data_dir: &Path,
) -> Result<BuildReport> {
    let started = std::time::Instant::now();
    let (g, placed) = pack(needles, k, m, block_bytes).map_err(StoreError::BadRequest)?;
    if g.blocks > u32::MAX as u64 {
        return Err(StoreError::BadRequest(
            "too many blocks: choose larger ones".into(),
        ));
    }
    let final_dir = staging_dir(data_dir, volume, generation);
    let tmp_dir = final_dir.with_extension("build.tmp");
    for d in [&tmp_dir, &final_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    std::fs::create_dir(&tmp_dir)?;
    let n = g.shards();
    let files: Vec<File> = (0..n)
        .map(|i| {
            disk.open(
                &tmp_dir.join(staged_name(Some(i))),
                OpenOptions::new().read(true).write(true).create_new(true),
            )
        })
        .collect::<io::Result<_>>()?;
    // 1. Data shards: every needle at its place; padding stays zeros.
    let mut needle_bytes = 0u64;
    for p in &placed {
        let buf = source.read(p.key, p.alt, p.src_offset, p.extent)?;
        let (shard, at) = g.locate(p.block, p.offset);
        disk.write_all_at(&files[shard], &buf, SHARD_HEADER_LEN + at)?;
        needle_bytes += p.extent as u64;
    }
    for (i, f) in files.iter().enumerate().take(k as usize) {
        disk.set_len(f, SHARD_HEADER_LEN + g.shard_len(i))?;
    }
    // 2. Parity, a piece of each row at a time.
    write_parity(disk, &g, &files)?;
    // 3. CRC tables and headers; every file synced.
    let mut sizes = Vec::with_capacity(n);
    for (i, f) in files.iter().enumerate() {
        let h = ShardHeader {
            volume,
            generation,
            shard: i as u16,
            geometry: g,
        };
        finish_shard(disk, f, &h)?;
        sizes.push(h.file_len());
    }
    // 4. The index.
    let mut records: Vec<IndexRecord> = placed
        .iter()
        .map(|p| IndexRecord {
            key: p.key,
            alt: p.alt,
            block: p.block as u32,
            offset: p.offset as u32,
            extent: p.extent,
        })
        .collect();
    records.sort_by_key(|r| (r.key, r.alt));
    let index = IndexFile {
        volume,
        generation,
        tag,
        geometry: g,
        records,
    };
    let ix = disk.create(&tmp_dir.join(staged_name(None)))?;
    disk.write_all_at(&ix, &index.encode(), 0)?;
    disk.sync_all(&ix)?;
    disk.sync_dir(&tmp_dir)?;
    crate::pause::blocking(data_dir, "ec-build");
    disk.rename(&tmp_dir, &final_dir)?;
    disk.sync_dir(data_dir)?;
    let report = BuildReport {
        volume,
        generation,
        k,
        m,
        block_bytes,
        blocks: g.blocks,
        needles: placed.len() as u64,
        needle_bytes,
        shard_file_bytes: sizes,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        volume,
        generation,
        k,
        m,
        needles = report.needles,
        needle_bytes,
        elapsed_ms = report.elapsed_ms,
        "erasure-coded shards built"
    );
    Ok(report)
}

/// Reads `len` bytes of shard data at `at` (after the header), zeros past `shard_len`.
pub fn read_padded(
    disk: &Disk,
    f: &File,
    at: u64,
    len: u64,
    shard_len: u64,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let have = shard_len.saturating_sub(at).min(len) as usize;
    if have > 0 {
        disk.read_exact_at(f, &mut buf[..have], SHARD_HEADER_LEN + at)?;
    }
    Ok(buf)
}

/// Computes every parity row from the data shards' rows, `PIECE_BYTES` at a time.
pub fn write_parity(disk: &Disk, g: &Geometry, files: &[File]) -> Result<()> {
    let k = g.k as usize;
    for r in 0..g.rows() {
        let row_len = g.row_len(k, r);
        let base = r * g.block_bytes;
        let mut o = 0;
        while o < row_len {
            let len = PIECE_BYTES.min(row_len - o);
            let alen = len.div_ceil(CODE_ALIGN) * CODE_ALIGN;
            let data: Vec<Vec<u8>> = (0..k)
                .map(|i| read_padded(disk, &files[i], base + o, alen, g.shard_len(i)))
                .collect::<io::Result<_>>()?;
            let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            let par = codec::parity(k, g.m as usize, &refs).map_err(io::Error::other)?;
            for (j, p) in par.iter().enumerate() {
                disk.write_all_at(
                    &files[k + j],
                    &p[..len as usize],
                    SHARD_HEADER_LEN + base + o,
                )?;
            }
            o += len;
        }
    }
    Ok(())
}

/// The CRC of every piece of a shard's data.
pub fn piece_crcs(disk: &Disk, f: &File, shard_len: u64) -> io::Result<Vec<u32>> {
    (0..pieces(shard_len))
        .map(|p| {
            let at = p * PIECE_BYTES;
            let len = PIECE_BYTES.min(shard_len - at);
            read_padded(disk, f, at, len, shard_len).map(|b| crc32fast::hash(&b))
        })
        .collect()
}

/// Writes a shard file's CRC table and header and syncs it.
pub fn finish_shard(disk: &Disk, f: &File, h: &ShardHeader) -> io::Result<()> {
    let len = h.geometry.shard_len(h.shard as usize);
    disk.set_len(f, SHARD_HEADER_LEN + len)?;
    let crcs = piece_crcs(disk, f, len)?;
    disk.write_all_at(f, &encode_table(&crcs), SHARD_HEADER_LEN + len)?;
    disk.write_all_at(f, &h.encode(), 0)?;
    disk.sync_all(f)
}
