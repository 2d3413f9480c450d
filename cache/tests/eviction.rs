//! The memory is bounded by bytes: the least recently used needles go first.

use haystack_cache::config::ENTRY_OVERHEAD_BYTES;

use crate::common::{bytes, get, needle_url, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_by_bytes() {
    const CAP: u64 = 64 << 10;
    let env = Env::single(|c| {
        c.capacity_bytes = CAP;
        c.shards = 1;
        c.max_entry_bytes = 16 << 10;
    })
    .await;
    let mut photos = Vec::new();
    for i in 0..12 {
        photos.push(
            env.put_photo(&[(0, bytes(8 << 10, 40 + i), "image/jpeg")])
                .await,
        );
    }
    for p in &photos {
        let (st, _, _) = get(&env.http, &needle_url(&env.cache().url, p, 0), &[]).await;
        assert_eq!(st, 200);
    }
    let per = (8 << 10) + ENTRY_OVERHEAD_BYTES;
    let fit = CAP / per;
    let s = env.cache().stats().await;
    assert_eq!(s.store_reads, 12);
    assert!(s.bytes <= CAP, "{s:?}");
    assert_eq!(s.entries, fit, "{s:?}");
    assert_eq!(s.bytes, fit * per);
    assert_eq!(s.evictions, 12 - fit, "{s:?}");
    // The newest is still there; the oldest is not.
    let (st, _, _) = get(
        &env.http,
        &needle_url(&env.cache().url, &photos[11], 0),
        &[],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(env.cache().stats().await.store_reads, 12);
    let (st, _, body) = get(&env.http, &needle_url(&env.cache().url, &photos[0], 0), &[]).await;
    assert_eq!((st, body.len()), (200, 8 << 10));
    let s = env.cache().stats().await;
    assert_eq!(s.store_reads, 13);
    assert!(s.bytes <= CAP);

    // A needle larger than max_entry_bytes is served, never kept.
    let big = env
        .put_photo(&[(0, bytes(40 << 10, 60), "image/jpeg")])
        .await;
    for _ in 0..2 {
        let (st, _, body) = get(&env.http, &needle_url(&env.cache().url, &big, 0), &[]).await;
        assert_eq!((st, body.len()), (200, 40 << 10));
    }
    let after = env.cache().stats().await;
    assert_eq!(after.store_reads, 15, "{after:?}");
    assert_eq!(after.not_admitted, 2, "{after:?}");
    assert_eq!((after.entries, after.bytes), (s.entries, s.bytes));
}
