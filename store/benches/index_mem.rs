//! Bench: heap bytes per photo, build time and lookup latency of MemIndex and SortedIndex.
//!
//! Usage: `cargo bench -p haystack-store --bench index_mem -- [photos (default 10_000_000)]
//! [uploader nodes (default 1)]`.
//! Each photo is one k-sortable id (`ms << 22 | node << 12 | seq`, about 3 photos per ms)
//! with 4 variants (alt 0..3) written back to back; about 5% of the photos arrive one place
//! late. Heap use is measured with a counting global allocator.

use haystack_store::index::{Loc, MemIndex, SortedIndex};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// Wraps the system allocator, counting live requested bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Relaxed)
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[derive(Clone, Copy)]
struct Photo {
    key: u64,
    /// Offset of the first variant's needle.
    offset: u64,
    extents: [u32; 4],
}

#[derive(Clone, Copy)]
enum Dist {
    Tiny,
    Realistic,
}

/// Needle extent for `data` bytes: 56 bytes of header/footer, padded to 8.
fn extent(data: f64) -> u32 {
    let bytes = (data.max(1.0) as u64 + 56).div_ceil(8) * 8;
    bytes.min(u64::from(u32::MAX - 7)) as u32
}

fn extents(rng: &mut Rng, dist: Dist) -> [u32; 4] {
    match dist {
        Dist::Tiny => [(); 4].map(|()| extent((16 + rng.below(49)) as f64)),
        Dist::Realistic => {
            let mut jitter = |nominal: f64| nominal * (0.7 + 0.6 * rng.unit());
            let large = jitter(400e3);
            let medium = jitter(100e3);
            let thumb = jitter(15e3);
            let original = 2e6 * (0.4 * rng.normal()).exp();
            [
                extent(original),
                extent(large),
                extent(medium),
                extent(thumb),
            ]
        }
    }
}

/// Photos in arrival order, with offsets assigned in that order.
fn photos(n: usize, nodes: u64, dist: Dist, seed: u64) -> Vec<Photo> {
    let mut rng = Rng(seed);
    let mut t = 1_700_000_000_000.0f64;
    let mut last = vec![(0u64, 0u64); nodes as usize];
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        t += -(1.0 - rng.unit()).ln() / 3.0;
        let node = rng.below(nodes);
        let ms = t as u64;
        let (last_ms, seq) = &mut last[node as usize];
        if *last_ms == ms && *seq < 4095 {
            *seq += 1;
        } else {
            *last_ms = ms.max(*last_ms + u64::from(*last_ms == ms));
            *seq = 0;
        }
        let key = (*last_ms << 22) | ((17 + node) << 12) | *seq;
        v.push(Photo {
            key,
            offset: 0,
            extents: extents(&mut rng, dist),
        });
    }
    // Some uploads finish late: about 5% arrive one place after their successor.
    let mut i = 0;
    while i + 1 < v.len() {
        if rng.below(20) == 0 {
            v.swap(i, i + 1);
            i += 1;
        }
        i += 1;
    }
    let mut end = 8u64;
    for p in &mut v {
        p.offset = end;
        end += p.extents.iter().map(|&e| u64::from(e)).sum::<u64>();
    }
    v
}

fn entries(p: &Photo) -> impl Iterator<Item = (u64, u32, Loc)> + '_ {
    let mut offset = p.offset;
    (0..4u32).map(move |alt| {
        let extent = p.extents[alt as usize];
        let loc = Loc {
            offset,
            extent,
            deleted: false,
        };
        offset += u64::from(extent);
        (p.key, alt, loc)
    })
}

/// Prints the mean latency of `get` over `probes`: the first pass, and the best of three more
/// (the machine may be shared).
fn lookups(probes: &[(u64, u32)], get: impl Fn(u64, u32) -> Option<Loc>) {
    let first = lookup_ns(probes, &get);
    let best = (0..3)
        .map(|_| lookup_ns(probes, &get))
        .fold(f64::INFINITY, f64::min);
    println!(
        "    mean get over {} random lookups: {first:.0} ns first pass, {best:.0} ns best of 3 more",
        probes.len()
    );
}

/// Mean nanoseconds per lookup.
fn lookup_ns(probes: &[(u64, u32)], get: impl Fn(u64, u32) -> Option<Loc>) -> f64 {
    let t = Instant::now();
    let mut found = 0usize;
    for &(k, a) in probes {
        if let Some(l) = black_box(get(k, a)) {
            found += 1;
            black_box(l.offset);
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / probes.len() as f64;
    assert_eq!(found, probes.len(), "every probe must be found");
    ns
}

fn main() -> std::io::Result<()> {
    // `cargo bench` passes `--bench`; only positional arguments count.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let n: usize = args
        .next()
        .map(|s| s.replace('_', "").parse().expect("photo count"))
        .unwrap_or(10_000_000);
    let nodes: u64 = args
        .next()
        .map(|s| s.parse().expect("node count"))
        .unwrap_or(1)
        .clamp(1, 1000);
    println!(
        "photos: {n}, variants: 4, entries: {}, uploader nodes: {nodes}",
        4 * n
    );
    for (name, dist) in [("tiny", Dist::Tiny), ("realistic", Dist::Realistic)] {
        let arrival = photos(n, nodes, dist, 42);
        let late = arrival.windows(2).filter(|w| w[0].key > w[1].key).count();
        let mut sorted = arrival.clone();
        sorted.sort_unstable_by_key(|p| p.key);
        let mut rng = Rng(7);
        let probes: Vec<(u64, u32)> = (0..1_000_000)
            .map(|_| {
                (
                    arrival[rng.below(n as u64) as usize].key,
                    rng.below(4) as u32,
                )
            })
            .collect();
        println!(
            "\n[{name}] out-of-order arrivals: {late} ({:.1}%)",
            100.0 * late as f64 / n as f64
        );

        let before = live();
        let t = Instant::now();
        let mut by_insert = MemIndex::new();
        for p in &arrival {
            for (k, a, l) in entries(p) {
                by_insert.insert(k, a, l);
            }
        }
        let build = t.elapsed();
        report(
            "MemIndex insert     ",
            n,
            live() - before,
            by_insert.heap_bytes(),
            build,
        );
        lookups(&probes, |k, a| by_insert.get(k, a));

        let before = live();
        let t = Instant::now();
        let by_sorted = MemIndex::from_sorted(sorted.iter().flat_map(entries));
        let build = t.elapsed();
        report(
            "MemIndex from_sorted",
            n,
            live() - before,
            by_sorted.heap_bytes(),
            build,
        );
        lookups(&probes, |k, a| by_sorted.get(k, a));
        assert_eq!(by_sorted.len(), 4 * n);
        let t = Instant::now();
        let count = black_box(&by_sorted).iter().count();
        println!(
            "    full decode: {:.1} ns/entry",
            t.elapsed().as_nanos() as f64 / count as f64
        );
        assert!(by_insert.iter().eq(by_sorted.iter()), "both builds agree");
        assert!(
            by_sorted.iter().eq(sorted.iter().flat_map(entries)),
            "index matches input"
        );
        drop(by_sorted);

        let path = std::env::temp_dir().join(format!("hsindex-bench-{}.idx", std::process::id()));
        let t = Instant::now();
        SortedIndex::write(&path, by_insert.iter())?;
        let write = t.elapsed();
        drop(by_insert);
        let before = live();
        let t = Instant::now();
        let sealed = SortedIndex::open(&path)?;
        let open = t.elapsed();
        let heap = live() - before;
        println!(
            "  SortedIndex: live heap {:.2} B/photo, heap_bytes {:.2} B/photo, file {:.1} B/photo, write {:.2?}, open (CRC + order check) {:.2?}",
            heap as f64 / n as f64,
            sealed.heap_bytes() as f64 / n as f64,
            std::fs::metadata(&path)?.len() as f64 / n as f64,
            write,
            open
        );
        lookups(&probes, |k, a| sealed.get(k, a));
        drop(sealed);
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

fn report(what: &str, n: usize, live: usize, heap: usize, build: std::time::Duration) {
    println!(
        "  {what}: live heap {:.2} B/photo ({:.2} B/entry), heap_bytes {:.2} B/photo, build {:.2?} ({:.0} ns/entry)",
        live as f64 / n as f64,
        live as f64 / (4 * n) as f64,
        heap as f64 / n as f64,
        build,
        build.as_nanos() as f64 / (4 * n) as f64
    );
}
