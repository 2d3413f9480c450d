//! Volume benchmark: writes photos of 4 variants through `Volume::write_batch`, then measures
//! reopen time, the heap the index holds per photo and the heap's peak during the open
//! (writable, then sealed with the mapped index). Heap is counted by a counting global allocator: live bytes requested.
//!
//!     cargo bench -p haystack-store --bench volume -- [PHOTOS] [DATA_BYTES] [DIR]
//!
//! Defaults: 10_000_000 photos (40 M needles), 16 bytes of data per needle (the figures are
//! about the index, and 40 M real photos would not fit on this disk), DIR
//! /tmp/haystack-bench-volume (wiped first).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use haystack_store::{EngineKind, IoEngine, NeedleData, Volume, VolumeConfig};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The highest `LIVE` since the last `reset_peak`.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            grew(new);
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Starts a new peak at the live heap now, and returns that.
fn reset_peak() -> usize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let photos: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let data_len: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let dir = std::path::PathBuf::from(
        args.get(2)
            .cloned()
            .unwrap_or("/tmp/haystack-bench-volume".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = IoEngine::new(EngineKind::Auto).expect("engine");
    let needle_bytes = haystack_store::format::needle_extent(0, data_len);
    let cfg = VolumeConfig {
        max_bytes: (photos * 4 * needle_bytes + (1 << 30)).max(1 << 30),
        max_needle_bytes: 1 << 20,
        max_write_bytes: 64 << 20,
        prealloc_step: 1 << 30,
    };
    println!(
        "# {} photos x 4 variants, {data_len} data bytes per needle, engine {}, dir {}",
        photos,
        engine.kind().as_str(),
        dir.display()
    );

    // Keys like real ids: ms timestamp << 22 | node << 12 | sequence, a few photos per ms.
    let t0 = 1_790_000_000_000u64;
    let key_of = |i: u64| ((t0 + i / 4) << 22) | (3 << 12) | (i % 4);
    let data = Bytes::from(vec![0xa5u8; data_len]);
    let vol = Volume::create(&dir, 1, engine.clone(), cfg.clone()).expect("create");
    let started = Instant::now();
    rt.block_on(async {
        let per_batch = 4096u64; // photos per write call (4 needles each)
        let mut i = 0;
        while i < photos {
            let end = (i + per_batch).min(photos);
            let mut ns = Vec::with_capacity(((end - i) * 4) as usize);
            for p in i..end {
                for alt in 0..4 {
                    ns.push(NeedleData {
                        key: key_of(p),
                        alt,
                        cookie: p,
                        content_type: String::new(),
                        data: data.clone(),
                    });
                }
            }
            vol.write_batch(ns).await.expect("write");
            i = end;
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "write: {:.1} s, {:.0} needles/s (batches of 16384 needles)",
        secs,
        photos as f64 * 4.0 / secs
    );
    let heap_writable_live = vol.index_heap_bytes();
    vol.flush_index();
    drop(vol);

    let before = reset_peak();
    let t = Instant::now();
    let vol = Volume::open(&dir, 1, engine.clone(), cfg.clone()).expect("reopen");
    let open_s = t.elapsed().as_secs_f64();
    let heap = live() - before;
    let heap_peak = peak() - before;
    println!(
        "reopen writable: {:.3} s for {} needles; heap after open {} bytes = {:.2} bytes/photo, peak during open {} bytes (index's own count {:.2} bytes/photo; before reopen {:.2})",
        open_s,
        photos * 4,
        heap,
        heap as f64 / photos as f64,
        heap_peak,
        vol.index_heap_bytes() as f64 / photos as f64,
        heap_writable_live as f64 / photos as f64,
    );
    // Spot check: random reads come back.
    rt.block_on(async {
        for p in [0, photos / 2, photos - 1] {
            let n = vol.read(key_of(p), 2, p).await.expect("read back");
            assert_eq!(n.data.len(), data_len);
        }
    });
    let t = Instant::now();
    rt.block_on(vol.seal()).expect("seal");
    println!("seal: {:.3} s", t.elapsed().as_secs_f64());
    drop(vol);
    let before = reset_peak();
    let t = Instant::now();
    let vol = Volume::open(&dir, 1, engine, cfg).expect("reopen sealed");
    let open_s = t.elapsed().as_secs_f64();
    let heap = live() - before;
    println!(
        "reopen sealed: {:.3} s; heap after open {} bytes = {:.3} bytes/photo, peak during open {} bytes",
        open_s,
        heap,
        heap as f64 / photos as f64,
        peak() - before
    );
    rt.block_on(async {
        let n = vol
            .read(key_of(photos / 3), 1, photos / 3)
            .await
            .expect("read sealed");
        assert_eq!(n.data.len(), data_len);
    });
    drop(vol);
    let _ = std::fs::remove_dir_all(&dir);
}
