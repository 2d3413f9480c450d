//! The admission policy: Haystack's (users only, write-enabled volumes only) and the others,
//! with CDN requests recognised by header or by source address.

use haystack_cache::Admission;
use haystack_proto::VolumeState;

use crate::common::{bytes, get, needle_url, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haystack_policy_keeps_user_requests_on_writable_volumes_only() {
    let env = Env::single(|_| {}).await;
    let p = env.put_photo(&[(0, bytes(2000, 71), "image/jpeg")]).await;
    let url = needle_url(&env.cache().url, &p, 0);
    // Through a CDN (Via, CDN-Loop, or the configured header): served, not kept.
    for (h, v) in [
        ("via", "1.1 cdn.example"),
        ("cdn-loop", "cdn.example"),
        ("x-haystack-via-cdn", "1"),
    ] {
        let (st, _, body) = get(&env.http, &url, &[(h, v)]).await;
        assert_eq!((st, body.len()), (200, 2000));
    }
    let s = env.cache().stats().await;
    assert_eq!(
        (s.store_reads, s.not_admitted, s.entries),
        (3, 3, 0),
        "{s:?}"
    );
    // Straight from a user: kept.
    let (st, _, _) = get(&env.http, &url, &[]).await;
    assert_eq!(st, 200);
    let (st, _, _) = get(&env.http, &url, &[("via", "1.1 cdn.example")]).await;
    assert_eq!(st, 200);
    let s = env.cache().stats().await;
    assert_eq!(
        (s.store_reads, s.admitted, s.entries, s.hits),
        (4, 1, 1, 1),
        "{s:?}"
    );

    // A volume that is not write-enabled: its needles are not kept (a fresh node, so that
    // it asks the directory about the volume after the change).
    env.dir
        .set_volume_state(p.volume_id, VolumeState::ReadOnly, Some("test".into()))
        .await
        .expect("set read-only");
    let q = p.clone();
    let node =
        crate::common::CacheNode::start(haystack_testkit::bind_loopback(), env.node_config());
    crate::common::wait_healthy(&node.url).await;
    for _ in 0..2 {
        let (st, _, _) = get(&env.http, &needle_url(&node.url, &q, 0), &[]).await;
        assert_eq!(st, 200);
    }
    let s = node.stats().await;
    assert_eq!(
        (s.store_reads, s.not_admitted, s.entries),
        (2, 2, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_policies_and_source_networks() {
    let env = Env::start(Default::default(), 1, |_, c| {
        c.admission = Admission::All;
    })
    .await;
    let p = env.put_photo(&[(0, bytes(100, 72), "image/jpeg")]).await;
    // all: even CDN requests are kept.
    let (st, _, _) = get(
        &env.http,
        &needle_url(&env.cache().url, &p, 0),
        &[("via", "x")],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(env.cache().stats().await.entries, 1);

    // none: nothing is kept.
    let mut cfg = env.node_config();
    cfg.admission = Admission::None;
    let none = crate::common::CacheNode::start(haystack_testkit::bind_loopback(), cfg);
    // haystack with loopback as a CDN network: these requests come "through a CDN".
    let mut cfg = env.node_config();
    cfg.cdn_source_cidrs = vec!["127.0.0.0/8".into()];
    let cidr = crate::common::CacheNode::start(haystack_testkit::bind_loopback(), cfg);
    for n in [&none, &cidr] {
        crate::common::wait_healthy(&n.url).await;
        for _ in 0..2 {
            let (st, _, body) = get(&env.http, &needle_url(&n.url, &p, 0), &[]).await;
            assert_eq!((st, body.len()), (200, 100));
        }
        let s = n.stats().await;
        assert_eq!(
            (s.store_reads, s.entries, s.not_admitted),
            (2, 0, 2),
            "{s:?}"
        );
    }
}
