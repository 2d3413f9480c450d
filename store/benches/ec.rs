//! Erasure-coding benchmark: a sealed volume of photo-sized needles (random bytes, so nothing
//! compresses) encoded into k + m shard files on the local disk with the store's encoder, for
//! several schemes: encode throughput (one thread: the build is single-threaded), the effective
//! storage factor from the bytes of the shard files against the bytes of the volume's needles,
//! and the time to rebuild one data shard from the other shards' files (reads, decode, writes,
//! CRC table, sync; local disk, no network).
//!
//!     cargo bench -p haystack-store --bench ec -- [NEEDLES] [BYTES] [DIR]
//!
//! Defaults: 10_000 needles of 107_374 bytes (1 GiB of needles), DIR /tmp/haystack-bench-ec
//! (wiped). Blocks of 64 MiB (16 blocks: a 1 GiB volume in 1 GiB blocks would be one block on
//! one data shard, a storage factor of 1 + m).

use std::time::Instant;

use bytes::Bytes;
use haystack_store::ec::build::{self, staging_dir, VolumeFileSource};
use haystack_store::ec::codec;
use haystack_store::ec::format::{ShardHeader, PIECE_BYTES};
use haystack_store::ec::layout::CODE_ALIGN;
use haystack_store::{EngineKind, IoEngine, NeedleData, Volume, VolumeConfig};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let needles: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let size: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(107_374);
    let dir = std::path::PathBuf::from(
        args.get(2)
            .cloned()
            .unwrap_or_else(|| "/tmp/haystack-bench-ec".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = VolumeConfig {
            max_bytes: needles * (size as u64 + 128) + (256 << 20),
            prealloc_step: 256 << 20,
            ..VolumeConfig::default()
        };
        let engine = IoEngine::new(EngineKind::Sync).expect("engine");
        let vol = Volume::create(&dir, 1, engine.clone(), cfg).expect("volume");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let t = Instant::now();
        for chunk in (0..needles).collect::<Vec<_>>().chunks(64) {
            let batch = chunk
                .iter()
                .map(|&k| {
                    let data: Vec<u8> = (0..size)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect();
                    NeedleData {
                        key: k,
                        alt: 0,
                        cookie: 7,
                        content_type: "image/jpeg".into(),
                        data: Bytes::from(data),
                    }
                })
                .collect();
            vol.write_batch(batch).await.expect("write");
        }
        vol.seal().await.expect("seal");
        let info = vol.info();
        let needle_bytes = info.size_bytes - 64;
        println!(
            "filled and sealed: {needles} needles of {size} B ({needle_bytes} B of needles) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        println!("replicas: storage factor 2.00 (R=2) / 3.00 (R=3) of the needle bytes");
        let (mut entries, file) = vol.live_entries();
        entries.sort_by_key(|e| e.2.offset);
        let list: Vec<(u64, u32, u64, u32)> = entries
            .iter()
            .map(|(k, a, l)| (*k, *a, l.offset, l.extent))
            .collect();
        let disk = engine.disk().clone();
        let tag = vol.tag();
        for (gen, (k, m)) in [(2u8, 1u8), (4, 2), (10, 4)].into_iter().enumerate() {
            let gen = gen as u32;
            let block = 64u64 << 20;
            let (d2, disk2, file2, list2, dir2) =
                (disk.clone(), disk.clone(), file.clone(), list.clone(), dir.clone());
            let t = Instant::now();
            let rep = tokio::task::spawn_blocking(move || {
                let src = VolumeFileSource {
                    disk: &disk2,
                    file: &file2,
                    tag,
                };
                build::build(&d2, &src, &list2, 1, gen, tag, (k, m, block), &dir2)
            })
            .await
            .expect("join")
            .expect("build");
            let secs = t.elapsed().as_secs_f64();
            let shard_bytes: u64 = rep.shard_file_bytes.iter().sum();
            println!(
                "{k}+{m}: encoded {} needles ({:.0} MB) in {secs:.2} s = {:.0} MB/s on one thread; shard files {shard_bytes} B, storage factor {:.3} (ideal {:.3})",
                rep.needles,
                rep.needle_bytes as f64 / 1e6,
                rep.needle_bytes as f64 / 1e6 / secs,
                shard_bytes as f64 / needle_bytes as f64,
                (k as f64 + m as f64) / k as f64
            );
            // Rebuild data shard 0 from the others' files.
            let sdir = staging_dir(&dir, 1, gen);
            let t = Instant::now();
            let d3 = disk.clone();
            let rebuilt = tokio::task::spawn_blocking(move || {
                let n = k as usize + m as usize;
                let files: Vec<std::fs::File> = (0..n)
                    .map(|i| std::fs::File::open(sdir.join(format!("s{i}"))).expect("shard"))
                    .collect();
                let mut hb = [0u8; 64];
                d3.read_exact_at(&files[0], &mut hb, 0).expect("header");
                let h = ShardHeader::decode(&hb).expect("header");
                let g = h.geometry;
                let out = d3.create(&sdir.join("s0.rebuilt")).expect("out");
                let len = g.shard_len(0);
                let mut at = 0;
                while at < len {
                    let plen = PIECE_BYTES.min(len - at);
                    let alen = plen.div_ceil(CODE_ALIGN) * CODE_ALIGN;
                    let ranges: Vec<Option<Vec<u8>>> = (0..n)
                        .map(|i| {
                            (i != 0).then(|| {
                                build::read_padded(&d3, &files[i], at, alen, g.shard_len(i))
                                    .expect("read")
                            })
                        })
                        .collect();
                    let refs: Vec<Option<&[u8]>> = ranges.iter().map(|r| r.as_deref()).collect();
                    let b = codec::reconstruct(k as usize, m as usize, &refs, 0).expect("decode");
                    d3.write_all_at(&out, &b[..plen as usize], 64 + at).expect("write");
                    at += plen;
                }
                build::finish_shard(&d3, &out, &h).expect("finish");
                let a = std::fs::read(sdir.join("s0")).expect("s0");
                let b = std::fs::read(sdir.join("s0.rebuilt")).expect("rebuilt");
                assert!(a == b, "the rebuilt shard differs");
                len
            })
            .await
            .expect("join");
            println!(
                "{k}+{m}: rebuilt data shard 0 ({:.0} MB) from the other {} shards' files in {:.2} s (identical to the original)",
                rebuilt as f64 / 1e6,
                k as usize + m as usize - 1,
                t.elapsed().as_secs_f64()
            );
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
