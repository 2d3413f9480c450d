//! Working memory of opening a volume: recovery holds the index it builds plus fixed
//! buffers, never a copy per record of the index file or of the scanned tail (issue 18: a
//! million-needle volume could not open inside a 64 MiB memory limit).
//!
//! Heap is counted per thread by this binary's allocator, so tests running beside this one
//! do not disturb the figure; the open runs on the test's own thread (the sync engine).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use haystack_store::volume::volume_paths;
use haystack_store::EngineKind;

use crate::common::*;

struct PerThread;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            account(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            account(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        account(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            // Both blocks exist for a moment when realloc moves.
            account(new as isize);
            account(-(l.size() as isize));
        }
        q
    }
}

#[global_allocator]
static ALLOC: PerThread = PerThread;

/// Runs `f` and returns its result with the peak of this thread's live heap above where it
/// started.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(|p| p.get());
    (out, (peak - start).max(0) as usize)
}

const NEEDLES: u64 = 200_000;
/// Fixed buffers recovery may hold beside the index (read chunks, a batch of records).
const FIXED: usize = 4 << 20;

fn write_many(dir: &std::path::Path) {
    rt().block_on(async {
        let vol = create(dir, 1, EngineKind::Sync);
        let mut k = 0;
        while k < NEEDLES {
            let batch = (k..(k + 10_000).min(NEEDLES))
                .map(|k| needle(k, 0, 7, &k.to_le_bytes()))
                .collect();
            vol.write_batch(batch).await.unwrap();
            k += 10_000;
        }
        for k in (0..NEEDLES).step_by(1000) {
            vol.delete(k, 0, 7).await.unwrap();
        }
        vol.flush_index();
    });
}

fn check(vol: &std::sync::Arc<haystack_store::Volume>) {
    rt().block_on(async {
        for k in (0..NEEDLES).step_by(997) {
            let r = vol.read(k, 0, 7).await;
            if k % 1000 == 0 {
                assert!(r.is_err(), "deleted needle {k} came back");
            } else {
                assert_eq!(&r.unwrap().data[..], &k.to_le_bytes());
            }
        }
    });
}

#[test]
fn opening_a_volume_holds_the_index_not_the_index_file() {
    let dir = tempfile::tempdir().unwrap();
    write_many(dir.path());
    let (vol, peak) = peak_heap(|| reopen(dir.path(), 1, EngineKind::Sync));
    let index = vol.index_heap_bytes();
    eprintln!("open from the index file: peak {peak} B, index {index} B, {NEEDLES} needles");
    assert!(
        peak <= index + FIXED,
        "open peaked at {peak} B of heap for an index of {index} B ({} B per needle)",
        peak as u64 / NEEDLES
    );
    check(&vol);
}

#[test]
fn opening_a_volume_by_scanning_it_holds_only_the_index() {
    let dir = tempfile::tempdir().unwrap();
    write_many(dir.path());
    // The index checkpoint lost: recovery scans every needle of the volume file.
    let (_, idx, _) = volume_paths(dir.path(), 1);
    std::fs::remove_file(&idx).unwrap();
    let (vol, peak) = peak_heap(|| reopen(dir.path(), 1, EngineKind::Sync));
    let index = vol.index_heap_bytes();
    eprintln!("open by a scan: peak {peak} B, index {index} B, {NEEDLES} needles");
    assert!(
        peak <= index + FIXED,
        "open peaked at {peak} B of heap for an index of {index} B ({} B per needle)",
        peak as u64 / NEEDLES
    );
    check(&vol);
}
