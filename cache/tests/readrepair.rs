//! Read repair: a replica that lacks a needle (a quorum write left it behind) never turns a
//! read into a 404, and a replica that holds it corrupt or lacks it is reported by the read
//! that met it and repaired from a good replica, with no operator.

use std::time::{Duration, Instant};

use haystack_cache::Admission;
use haystack_proto::directory::{AssignRequest, CommitRequest, PhotoKind, Variant};

use crate::common::*;

async fn eventually_serves(http: &reqwest::Client, url: &str, want: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, _, body) = get(http, url, &[]).await;
        if st == 200 && body == want {
            return;
        }
        assert!(Instant::now() < deadline, "within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lacking_the_needle_is_skipped_and_then_repaired() {
    let env = Env::single(|c| c.admission = Admission::None).await;
    let data = bytes(3000, 501);
    let a = env
        .dir
        .assign(&AssignRequest::default())
        .await
        .expect("assign");
    // Only the first replica gets the needle (as after a `one` write); the commit says
    // nothing of the other, so only reads can find out.
    let path = format!("/v1/needles/{}/{}/0/{:016x}", a.volume_id, a.id, a.cookie);
    let r = env
        .http
        .put(format!("{}{path}", a.replicas[0].url))
        .header("content-type", "image/jpeg")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let p = env
        .dir
        .commit(&CommitRequest {
            id: a.id,
            cookie: a.cookie,
            volume_id: a.volume_id,
            kind: PhotoKind::Photo,
            variants: vec![Variant {
                name: "original".into(),
                alt: 0,
                size_bytes: data.len() as u64,
                content_type: "image/jpeg".into(),
            }],
            chunks: Vec::new(),
        })
        .await
        .expect("commit");
    let url = needle_url(&env.cache().url, &p, 0);
    // Every miss picks a replica; before, a miss that tried the lacking one first answered
    // 404 for a committed photo.
    for i in 0..30 {
        let (st, _, body) = get(&env.http, &url, &[]).await;
        assert_eq!(st, 200, "read {i}");
        assert!(body == data, "read {i}: wrong bytes");
    }
    eventually_serves(
        &env.http,
        &format!("{}{path}", a.replicas[1].url),
        &data,
        "the lacking replica got the needle from the read's report",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_replica_met_by_a_read_is_repaired() {
    let env = Env::single(|c| c.admission = Admission::None).await;
    let data = bytes(5000, 502);
    let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
    let bad = p.replicas[1].url.clone();
    let i = env
        .cluster
        .store_urls()
        .iter()
        .position(|u| *u == bad)
        .unwrap();
    // Flip one byte of the needle's data in that replica's volume file.
    let vol = env
        .cluster
        .store_dir(i)
        .join(format!("vol-{}.dat", p.volume_id));
    let file = std::fs::read(&vol).unwrap();
    let at = file
        .windows(64)
        .position(|w| w == &data[..64])
        .expect("payload in the volume file")
        + 1000;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
        f.write_all_at(&[file[at] ^ 0x44], at as u64).unwrap();
    }
    let direct = needle_url(&bad, &p, 0);
    let (st, _, _) = get(&env.http, &direct, &[]).await;
    assert_eq!(st, 500, "the flipped byte is detected, never served");
    // Reads through the cache are served from the good replica; one of them meets the
    // corrupt one (each miss picks a replica) and reports it. Before read repair, 30 s of
    // such reads left the replica corrupt.
    let url = needle_url(&env.cache().url, &p, 0);
    for i in 0..30 {
        let (st, _, body) = get(&env.http, &url, &[]).await;
        assert_eq!(st, 200, "read {i}");
        assert!(body == data, "read {i}: wrong bytes");
    }
    eventually_serves(
        &env.http,
        &direct,
        &data,
        "the corrupt replica was rewritten from the good one",
    )
    .await;
    let m = env
        .http
        .get(format!("{}/metrics", env.cache().url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("haystack_cache_read_repairs_reported_total{kind=\"corrupt\",queued=\"true\"}"),
        "{m}"
    );
}
