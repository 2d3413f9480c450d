//! A delete acknowledged while a store switches an erasure-coded volume to another
//! generation (a re-encode; the same switch serves an install and a rebuild) stays deleted on
//! that store. The store is held at the `ec-switch-opened` pause point (store/src/pause.rs:
//! the new generation opened, its delete log read, not yet in place) while the photo is
//! deleted. Before, the delete was marked on the instance being replaced only, and the store
//! served the deleted needle from the new one until it restarted.

use std::time::{Duration, Instant};

use haystack_proto::directory::{AssignRequest, AssignResponse, Replica};
use haystack_testkit::{Cluster, ClusterOptions};

use crate::common::{
    commit, encode_2_1, get_json, paused_at, post, put_photo, seal, store_id, until_gone,
};

/// Two photos put, their volume sealed on every replica and encoded 2+1: the first photo and
/// its needle path, the second and its path.
async fn encoded(
    c: &reqwest::Client,
    dir: &str,
) -> (AssignResponse, String, AssignResponse, String) {
    let (a, path, _) = put_photo(c, dir, 6_000, 3).await;
    let (b, b_path, _) = put_photo(c, dir, 6_000, 5).await;
    seal_and_encode(c, dir, a.volume_id, &a.replicas).await;
    (a, path, b, b_path)
}

/// The URL of the store of shard `shard` in a volume's record (`info`), and its index in the
/// cluster.
fn shard_store(cl: &Cluster, info: &serde_json::Value, shard: usize) -> (String, usize) {
    let url = info["replicas"][shard]["url"]
        .as_str()
        .expect("the shard's store")
        .to_string();
    let i = cl
        .store_urls()
        .iter()
        .position(|u| *u == url)
        .expect("a store of the cluster");
    (url, i)
}

/// Waits until every shard store of volume `v` answers 404 for the deleted photo at `path`,
/// and checks each still serves the other photo (`other`, when it is in the same volume);
/// returns the shard stores' URLs.
async fn gone_from_every_shard_store(
    c: &reqwest::Client,
    dir: &str,
    v: u32,
    path: &str,
    other: (&AssignResponse, &str),
) -> Vec<String> {
    let info = get_json(c, format!("{dir}/v1/volumes/{v}")).await;
    let urls: Vec<String> = info["replicas"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|r| r["url"].as_str().unwrap_or_default().to_string())
        .collect();
    for u in &urls {
        until_gone(c, &format!("{u}{path}"), u).await;
        if other.0.volume_id == v {
            let s = c
                .get(format!("{u}{}", other.1))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s, 200, "{u}");
        }
    }
    urls
}

/// Seals volume `v` (the directory's record and each replica's store, as `haystack volume
/// seal` does) and encodes it 2+1.
async fn seal_and_encode(c: &reqwest::Client, dir: &str, v: u32, replicas: &[Replica]) {
    let urls: Vec<&str> = replicas.iter().map(|r| r.url.as_str()).collect();
    seal(c, dir, v, &urls).await;
    let (s, body) = encode_2_1(c, dir, v).await;
    assert_eq!(s, 200, "encode: {s} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_generation_switch_stays_deleted() {
    let cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, path, b, b_path) = encoded(&c, &dir).await;
    let v = a.volume_id;
    let info = get_json(&c, format!("{dir}/v1/volumes/{v}")).await;
    let (held_url, held) = shard_store(&cl, &info, 1);
    assert_eq!(
        c.get(format!("{held_url}{path}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The re-encode, held on one shard store once its new generation is open.
    let armed = cl.store_dir(held).join("test-pause-ec-switch-opened");
    std::fs::write(&armed, b"").expect("arm");
    let (c2, d2) = (c.clone(), dir.clone());
    let reencode = tokio::spawn(async move {
        post(
            &c2,
            format!("{d2}/v1/volumes/{v}/encode"),
            serde_json::json!({"k": 2, "m": 1, "block_bytes": 65536, "reencode": true}),
        )
        .await
    });
    paused_at(&cl.store_dir(held), "ec-switch-opened").await;
    // The delete, while that store holds both generations.
    let (c3, d3, id) = (c.clone(), dir.clone(), a.id);
    let delete = tokio::spawn(async move {
        c3.delete(format!("{d3}/v1/photos/{id}"))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(&armed).expect("release");
    let (s, body) = reencode.await.expect("re-encode task");
    assert_eq!(s, 200, "re-encode: {body}");
    assert!(delete.await.expect("delete task").is_success());
    // Every shard store, the held one included, answers 404 for the deleted photo and still
    // serves the other.
    let urls = gone_from_every_shard_store(&c, &dir, v, &path, (&b, &b_path)).await;
    assert!(urls.contains(&held_url), "{urls:?}");
}

/// A shard rebuilt onto a new store learns its peers' deletes when it starts; a delete made
/// while it rebuilds goes to the shard stores of the record, which does not name the new one
/// yet. Once the record switched, the directory carries those deletes over to it. Before, the
/// rebuilt shard's store served the deleted photo for good (anti-entropy skips erasure-coded
/// volumes). The new store is held at `ec-switch` (rebuilt, not yet switched) while the photo
/// is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_shard_rebuild_reaches_the_rebuilt_shard() {
    let cl = Cluster::start(ClusterOptions {
        stores: 4,
        replication: 2,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, path, _, _) = encoded(&c, &dir).await;
    let v = a.volume_id;
    let info = get_json(&c, format!("{dir}/v1/volumes/{v}")).await;
    let shard_urls: Vec<String> = info["replicas"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|r| r["url"].as_str().unwrap_or_default().to_string())
        .collect();
    let urls = cl.store_urls();
    let z = urls
        .iter()
        .position(|u| !shard_urls.contains(u))
        .expect("a store with no shard");
    let z_id = store_id(&c, &dir, &urls[z]).await;
    let armed = cl.store_dir(z).join("test-pause-ec-switch");
    std::fs::write(&armed, b"").expect("arm");
    let (c2, d2) = (c.clone(), dir.clone());
    let rebuild = tokio::spawn(async move {
        post(
            &c2,
            format!("{d2}/v1/volumes/{v}/ec/rebuild"),
            serde_json::json!({"shard": 1, "to": z_id}),
        )
        .await
    });
    paused_at(&cl.store_dir(z), "ec-switch").await;
    let r = c
        .delete(format!("{dir}/v1/photos/{}", a.id))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "delete: {}", r.status());
    std::fs::remove_file(&armed).expect("release");
    let (s, body) = rebuild.await.expect("rebuild task");
    assert_eq!(s, 200, "rebuild: {body}");
    until_gone(
        &c,
        &format!("{}{path}", urls[z]),
        "the rebuilt shard's store",
    )
    .await;
}

/// An encode keeps one replica (the one holding every live photo's needles that any replica
/// holds) and drops the others. A needle whose id had no photo record yet counted as no
/// photo's: its commit could still come (a slow commit, or one cut short and completed later
/// from its idempotency key), and once it came the photo had no bytes left anywhere. Now the
/// encode condemns such an id (as garbage collection does): a commit after it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encode_never_drops_the_only_copy_of_a_photo_committed_after_it() {
    let cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, _, _) = put_photo(&c, &dir, 6_000, 3).await;
    let v = a.volume_id;
    // A second photo on the same volume, written to its second replica only, not committed.
    let mut late = None;
    for _ in 0..200 {
        let p: AssignResponse = c
            .post(format!("{dir}/v1/assign"))
            .json(&AssignRequest::default())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if p.volume_id == v && p.replicas.len() == 2 {
            late = Some(p);
            break;
        }
    }
    let p = late.expect("an assignment on the first photo's volume");
    let body = vec![7u8; 5_000];
    let path = format!(
        "/v1/needles/{v}/{}/0/{}",
        p.id,
        haystack_proto::format_cookie(p.cookie)
    );
    let s = c
        .put(format!("{}{path}", p.replicas[1].url))
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 201);
    seal_and_encode(&c, &dir, v, &a.replicas).await;
    let r = commit(&c, &dir, &p, body.len() as u64).await;
    let status = r.status();
    if status.is_success() {
        // Then its bytes must be somewhere: on a shard store of the volume.
        let info = get_json(&c, format!("{dir}/v1/volumes/{v}")).await;
        let mut read = Vec::new();
        for r in info["replicas"].as_array().expect("shards") {
            let url = r["url"].as_str().expect("url");
            let got = c.get(format!("{url}{path}")).send().await.unwrap();
            read.push(got.status().as_u16());
            if got.status() == 200 {
                assert_eq!(got.bytes().await.unwrap(), body);
                return;
            }
        }
        // (The photo committed before the encode reads back the same way.)
        let a_path = format!(
            "/v1/needles/{v}/{}/0/{}",
            a.id,
            haystack_proto::format_cookie(a.cookie)
        );
        let url = info["replicas"][0]["url"].as_str().expect("url");
        let got = c.get(format!("{url}{a_path}")).send().await.unwrap();
        assert_eq!(got.status(), 200, "the photo committed before the encode");
        panic!("the commit after the encode was accepted, and no shard store has the photo's bytes: {read:?}");
    }
    assert_eq!(
        status,
        409,
        "a commit of an id the encode condemned: {}",
        r.text().await.unwrap_or_default()
    );
}

/// Waits (at most 30 s) until `url` answers `status`.
async fn until_status(c: &reqwest::Client, url: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = c.get(url).send().await {
            if r.status().as_u16() == status {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An erasure-coded volume's delete log whose last record was torn (a power cut, a short
/// write or a full disk before its sync) is cut back to its whole records when the store opens
/// it. Before, the torn bytes stayed: the next delete's record went after them, synced and
/// acknowledged, and the open after that stopped reading at the torn record: that delete was
/// lost, and the store served the deleted photo again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_delete_log_record_does_not_hide_the_deletes_after_it() {
    let mut cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, path, _, _) = encoded(&c, &dir).await;
    let v = a.volume_id;
    let info = get_json(&c, format!("{dir}/v1/volumes/{v}")).await;
    let (url, i) = shard_store(&cl, &info, 0);
    // Half of a record at the end of that store's delete log.
    cl.stop_store(i);
    let log = cl.store_dir(i).join(format!("ec-{v}.ecd"));
    let mut bytes = std::fs::read(&log).expect("the delete log");
    bytes.extend_from_slice(&[0xab; 8]);
    std::fs::write(&log, bytes).expect("torn record written");
    cl.start_store(i);
    until_status(&c, &format!("{url}{path}"), 200).await;
    // The photo is deleted on that store (acknowledged: its record appended and synced),
    // then the store restarts.
    let holds_a = |state: &serde_json::Value| {
        state["deleted"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d[0].as_str().and_then(|k| k.parse::<u64>().ok()) == Some(a.id) && d[1] == 0
            })
        })
    };
    let r = c
        .delete(format!("{url}{path}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204, "delete");
    assert!(holds_a(
        &get_json(&c, format!("{url}/v1/ec/{v}/state")).await
    ));
    cl.stop_store(i);
    cl.start_store(i);
    until_status(&c, &format!("{url}/health"), 200).await;
    let state = get_json(&c, format!("{url}/v1/ec/{v}/state")).await;
    assert!(
        holds_a(&state),
        "the store lost the acknowledged delete of {} from its log: {state}",
        a.id
    );
    let r = c.get(format!("{url}{path}")).send().await.expect("get");
    assert_eq!(r.status(), 404, "the deleted photo is served again");
}

/// Regression: an encode placed shards on the volume's own replica stores too, and such a
/// store answered a needle DELETE, a gc and the needle listing from its replica while it held
/// both. A delete made after the build (the record still replicated) reached the replicas
/// only; the carry-over listed shard 0's store, saw the replica's view (already deleted) and
/// carried nothing, so the shard store holding no replica served the deleted photo for good.
/// Now a store holding both applies a delete to both, and the carry-over reads the shards'
/// own delete log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_an_encode_reaches_every_shard() {
    let cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, path, _) = put_photo(&c, &dir, 6_000, 3).await;
    let (b, b_path, _) = put_photo(&c, &dir, 6_000, 5).await;
    let v = a.volume_id;
    // Every store holds at install (encode step 2), after the build.
    let armed: Vec<_> = (0..3)
        .map(|i| cl.store_dir(i).join("test-pause-ec-install"))
        .collect();
    for f in &armed {
        std::fs::write(f, b"").expect("arm");
    }
    let (c2, d2, replicas) = (c.clone(), dir.clone(), a.replicas.clone());
    let encode = tokio::spawn(async move { seal_and_encode(&c2, &d2, v, &replicas).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..3).any(|i| cl.store_dir(i).join("test-paused-ec-install").exists()) {
        assert!(Instant::now() < deadline, "no store reached ec-install");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = c
        .delete(format!("{dir}/v1/photos/{}", a.id))
        .send()
        .await
        .unwrap()
        .status();
    assert!(s.is_success(), "{s}");
    for f in &armed {
        std::fs::remove_file(f).expect("release");
    }
    encode.await.expect("encode task");
    let urls = gone_from_every_shard_store(&c, &dir, v, &path, (&b, &b_path)).await;
    assert_eq!(urls.len(), 3, "{urls:?}");
}
