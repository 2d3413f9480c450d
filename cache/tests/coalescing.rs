//! Concurrent misses of one needle share one store read.

use crate::common::{bytes, get, needle_url, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_store_read() {
    let env = Env::single(|_| {}).await;
    let data = bytes(4 << 20, 31);
    let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
    let url = needle_url(&env.cache().url, &p, 0);
    const N: usize = 32;
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (http, url) = (env.http.clone(), url.clone());
            tokio::spawn(async move { get(&http, &url, &[]).await })
        })
        .collect();
    for t in tasks {
        let (st, _, body) = t.await.unwrap();
        assert_eq!(st, 200);
        assert!(body == data, "wrong bytes");
    }
    let s = env.cache().stats().await;
    // Every request either waited on the one read or came after it (a hit).
    assert_eq!(s.store_reads, 1, "{s:?}");
    assert_eq!(s.hits + s.misses, N as u64, "{s:?}");
    assert_eq!(s.coalesced + s.hits, N as u64 - 1, "{s:?}");
}
