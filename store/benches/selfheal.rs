//! Self-healing costs on the store side: comparing two replicas by digest (equal, and with a
//! few needles missing), the rate of in-place repairs and of scrubbing, and what each does to
//! the p99 of concurrent reads of the same volume.
//!
//!     cargo bench -p haystack-store --bench selfheal -- [NEEDLES] [DIR]
//!
//! Defaults: 1,000,000 needles of 200 bytes in each of two volumes (the replicas), DIR
//! /tmp/haystack-bench-selfheal (wiped). Digests and listings are computed in process and
//! their JSON measured: what anti-entropy sends over HTTP, without the HTTP. Repairs and
//! scrubbing run on a third volume of 64 KiB needles, with 2 reader tasks reading random
//! needles of it the whole time; so does shipping that volume to an asynchronous remote
//! replica (in process, without the HTTP hop).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use haystack_store::{EngineKind, IoEngine, NeedleData, Volume, VolumeConfig};

const SMALL: usize = 200;
const PHOTO: usize = 64 << 10;
const PHOTOS: u64 = 4_000;

fn needle(key: u64, data: &Bytes) -> NeedleData {
    NeedleData {
        key,
        alt: 0,
        cookie: 7,
        content_type: "image/jpeg".into(),
        data: data.clone(),
    }
}

async fn fill(vol: &Arc<Volume>, keys: impl Iterator<Item = u64>, data: &Bytes) {
    let keys: Vec<u64> = keys.collect();
    for chunk in keys.chunks(1000) {
        vol.write_batch(chunk.iter().map(|&k| needle(k, data)).collect())
            .await
            .expect("write");
    }
}

fn p(lat: &mut [u64], q: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    lat.sort_unstable();
    lat[((lat.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

/// Reads random needles of `vol` until `stop`; returns the latencies in µs.
fn readers(vol: Arc<Volume>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let lat = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for t in 0..2u64 {
            let (vol, stop, lat) = (vol.clone(), stop.clone(), lat.clone());
            tasks.push(tokio::spawn(async move {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = x % PHOTOS;
                    let s = Instant::now();
                    let _ = vol.read(key, 0, 7).await;
                    mine.push(s.elapsed().as_micros() as u64);
                    // A page-cached read completes without yielding: let the others run.
                    tokio::task::yield_now().await;
                }
                lat.lock().expect("lat").extend(mine);
            }));
        }
        for t in tasks {
            t.await.expect("reader");
        }
        let v = lat.lock().expect("lat").clone();
        v
    })
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let needles: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::path::PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/tmp/haystack-bench-selfheal".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["a", "b", "c", "p"] {
        std::fs::create_dir_all(dir.join(sub)).expect("bench dir");
    }
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = VolumeConfig {
            max_bytes: needles * 512 + (1 << 30),
            max_write_bytes: 64 << 20,
            prealloc_step: 256 << 20,
            ..VolumeConfig::default()
        };
        let engine = IoEngine::new(EngineKind::Auto).expect("engine");
        let small = Bytes::from(vec![0x5au8; SMALL]);

        // Two replicas of the same needle list.
        let a = Volume::create(&dir.join("a"), 1, engine.clone(), cfg.clone()).expect("a");
        let b = Volume::create(&dir.join("b"), 1, engine.clone(), cfg.clone()).expect("b");
        let t = Instant::now();
        fill(&a, 0..needles, &small).await;
        fill(&b, 0..needles, &small).await;
        println!(
            "filled two replicas of {needles} needles of {SMALL} B in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let (da, db) = (a.digest(1).expect("digest"), b.digest(1).expect("digest"));
        let secs = t.elapsed().as_secs_f64();
        let bytes = serde_json::to_vec(&da).expect("json").len()
            + serde_json::to_vec(&db).expect("json").len();
        assert_eq!(da.buckets, db.buckets, "equal replicas digest alike");
        println!(
            "equal replicas: one digest each, {bytes} bytes of JSON in all, {:.3} s of store CPU for both ({:.0} ns per needle)",
            secs,
            secs * 1e9 / (2 * needles) as f64
        );

        // Ten needles missing on c: root digests, the second round's bucket digests (as
        // many buckets as the directory asks for, `digest_buckets`), one listing of the
        // differing buckets per replica.
        let c = Volume::create(&dir.join("c"), 1, engine.clone(), cfg.clone()).expect("c");
        let step = needles / 10;
        fill(&c, (0..needles).filter(|k| k % step != 3), &small).await;
        let t = Instant::now();
        let mut bytes = 0usize;
        let (ra, rc) = (a.digest(1).expect("d"), c.digest(1).expect("d"));
        bytes += serde_json::to_vec(&ra).expect("json").len() * 2;
        assert_ne!(ra.buckets, rc.buckets);
        let n = haystack_proto::directory::digest_buckets(ra.needles.max(rc.needles));
        let (ba, bc) = (a.digest(n).expect("d"), c.digest(n).expect("d"));
        bytes += serde_json::to_vec(&ba).expect("json").len() * 2;
        let differing: std::collections::HashSet<u32> = (0..n)
            .filter(|i| ba.buckets[*i as usize] != bc.buckets[*i as usize])
            .collect();
        let mut listed_needles = 0usize;
        for v in [&a, &c] {
            let listed: Vec<serde_json::Value> = v
                .needle_entries()
                .into_iter()
                .filter(|e| differing.contains(&haystack_store::bucket_of(e.key, e.alt, n)))
                .map(|e| serde_json::json!({"key": e.key.to_string(), "alt": e.alt, "deleted": e.deleted, "extent": e.extent}))
                .collect();
            listed_needles += listed.len();
            bytes += serde_json::to_vec(&listed).expect("json").len();
        }
        println!(
            "10 needles missing on one replica: {} differing buckets of {n}, {listed_needles} needles listed, {bytes} bytes of JSON in all, {:.2} s of store CPU",
            differing.len(),
            t.elapsed().as_secs_f64()
        );
        drop((a, b, c));

        // Repairs and scrubbing under reads.
        let photo = Bytes::from(vec![0xa5u8; PHOTO]);
        let v = Volume::create(&dir.join("p"), 1, engine.clone(), cfg.clone()).expect("p");
        fill(&v, 0..PHOTOS, &photo).await;
        let stop = Arc::new(AtomicBool::new(false));
        let r = readers(v.clone(), stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let mut base = r.await.expect("readers");
        println!(
            "reads alone (3 s, 2 readers, 64 KiB needles, page cache): {} reads, p50 {:.3} ms, p99 {:.3} ms",
            base.len(),
            p(&mut base, 0.5),
            p(&mut base, 0.99)
        );

        // Corrupt 500 needles on disk (one byte each), then repair them in place.
        let path = dir.join("p").join("vol-1.dat");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("volume file");
        let (entries, _) = v.live_entries();
        use std::os::unix::fs::FileExt;
        let bad: Vec<_> = entries.iter().step_by(8).take(500).collect();
        for (_, _, loc) in &bad {
            file.write_all_at(&[0xff], loc.offset + 200).expect("flip");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let r = readers(v.clone(), stop.clone());
        let t = Instant::now();
        let mut rewritten = 0;
        for (key, _, _) in &bad {
            let out = v.repair(needle(*key, &photo)).await.expect("repair");
            rewritten += usize::from(out == haystack_store::RepairOutcome::Rewritten);
        }
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut lat = r.await.expect("readers");
        println!(
            "in-place repair of {rewritten} corrupt 64 KiB needles (each synced) under reads: {:.2} s, {:.1} MB/s, {:.0} repairs/s; reads meanwhile p50 {:.3} ms, p99 {:.3} ms",
            secs,
            rewritten as f64 * PHOTO as f64 / 1e6 / secs,
            rewritten as f64 / secs,
            p(&mut lat, 0.5),
            p(&mut lat, 0.99)
        );

        // A full verify (the scrubber's per-needle check, unthrottled) under reads.
        let stop = Arc::new(AtomicBool::new(false));
        let r = readers(v.clone(), stop.clone());
        let t = Instant::now();
        let report = v.verify().await.expect("verify");
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut lat = r.await.expect("readers");
        println!(
            "unthrottled scrub of {} needles ({} MB, page cache) under reads: {:.2} s, {:.0} MB/s, {} corrupt; reads meanwhile p50 {:.3} ms, p99 {:.3} ms",
            report.checked,
            report.bytes / 1_000_000,
            secs,
            report.bytes as f64 / 1e6 / secs,
            report.corrupt.len(),
            p(&mut lat, 0.5),
            p(&mut lat, 0.99)
        );

        // Shipping the whole volume to an asynchronous remote replica (in process: the
        // shipper's reads and the remote's appends, syncs and indexing, without the HTTP hop)
        // under reads of the source.
        let remote_dir = dir.join("r");
        std::fs::create_dir_all(&remote_dir).expect("remote dir");
        let mut sb = vec![0u8; 64];
        file.read_exact_at(&mut sb, 0).expect("superblock");
        std::fs::write(remote_dir.join("vol-1.dat"), &sb).expect("remote superblock");
        haystack_store::volume::mark_remote_copy(&remote_dir, 1).expect("mark");
        let remote = Volume::open(&remote_dir, 1, engine.clone(), cfg.clone()).expect("remote");
        let stop = Arc::new(AtomicBool::new(false));
        let r = readers(v.clone(), stop.clone());
        let t = Instant::now();
        let mut tail = 64u64;
        let mut batches = 0;
        while let Some(b) = v
            .ship_read(tail, haystack_store::ship::SHIP_BATCH_BYTES, v.file_generation())
            .await
            .expect("ship read")
        {
            tail = remote.ship_append(tail, b.to_vec()).await.expect("ship append");
            batches += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut lat = r.await.expect("readers");
        assert_eq!(remote.info().needles, v.info().needles, "every needle shipped");
        println!(
            "shipping {} MB ({} needles) to a remote copy in {batches} batches of 4 MiB (each synced) under reads: {:.2} s, {:.0} MB/s; reads meanwhile p50 {:.3} ms, p99 {:.3} ms",
            (tail - 64) / 1_000_000,
            remote.info().needles,
            secs,
            (tail - 64) as f64 / 1e6 / secs,
            p(&mut lat, 0.5),
            p(&mut lat, 0.99)
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}
