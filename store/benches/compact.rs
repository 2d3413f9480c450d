//! Compaction benchmark: a volume of photo-sized needles, half of them deleted, compacted
//! online while a writer keeps appending; reports the copy rate, the pause writers saw at the
//! swap (the final phase), and the writer's throughput and worst latency meanwhile.
//!
//!     cargo bench -p haystack-store --bench compact -- [NEEDLES] [BYTES] [DIR]
//!
//! Defaults: 20_000 needles of 50_000 bytes (1 GB), DIR /tmp/haystack-bench-compact (wiped).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haystack_store::{EngineKind, IoEngine, NeedleData, Volume, VolumeConfig};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let needles: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let size: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let dir = std::path::PathBuf::from(
        args.get(2)
            .cloned()
            .unwrap_or_else(|| "/tmp/haystack-bench-compact".into()),
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
            max_bytes: (needles * (size as u64 + 128)) * 2 + (256 << 20),
            prealloc_step: 256 << 20,
            ..VolumeConfig::default()
        };
        let engine = IoEngine::new(EngineKind::Auto).expect("engine");
        let vol = Volume::create(&dir, 1, engine, cfg).expect("volume");
        let data = Bytes::from(vec![0x5au8; size]);
        let t = Instant::now();
        for chunk in (0..needles).collect::<Vec<_>>().chunks(64) {
            let batch = chunk
                .iter()
                .map(|&k| NeedleData {
                    key: k,
                    alt: 0,
                    cookie: 7,
                    content_type: "image/jpeg".into(),
                    data: data.clone(),
                })
                .collect();
            vol.write_batch(batch).await.expect("write");
        }
        println!(
            "filled: {needles} needles of {size} B in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for k in (0..needles).step_by(2) {
            vol.delete(k, 0, 7).await.expect("delete");
        }
        let before = vol.info();
        println!(
            "before: {} B in use, {} B dead",
            before.size_bytes, before.dead_bytes
        );
        // A writer appending 4 KiB needles the whole time.
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let worst_us = Arc::new(AtomicU64::new(0));
        let writer = {
            let (vol, stop, written, worst_us) =
                (vol.clone(), stop.clone(), written.clone(), worst_us.clone());
            tokio::spawn(async move {
                let small = Bytes::from(vec![1u8; 4096]);
                let mut key = 1u64 << 40;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    vol.write_batch(vec![NeedleData {
                        key,
                        alt: 0,
                        cookie: 7,
                        content_type: "image/jpeg".into(),
                        data: small.clone(),
                    }])
                    .await
                    .expect("write during compaction");
                    worst_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    written.fetch_add(1, Ordering::Relaxed);
                    key += 1;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let w0 = written.load(Ordering::Relaxed);
        let t = Instant::now();
        let report = vol.compact().await.expect("compact");
        let secs = t.elapsed().as_secs_f64();
        let w1 = written.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("writer");
        println!("{report:?}");
        println!(
            "compaction: {:.2} s, {:.0} MB/s of live data copied, writes paused {} ms at the swap",
            secs,
            (report.after_bytes as f64 / 1e6) / secs,
            report.pause_ms
        );
        println!(
            "durable 4 KiB writes during it: {:.0}/s, worst write latency {:.1} ms",
            (w1 - w0) as f64 / secs,
            worst_us.load(Ordering::Relaxed) as f64 / 1000.0
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}
