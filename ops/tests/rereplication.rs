//! Automatic re-replication: a store that stays down has its replicas copied from the
//! surviving ones onto another store, and the directory switches to the copies; and a delete
//! made while a replica was being copied does not come back on the copy.

use std::time::{Duration, Instant};

use haystack_proto::directory::{AssignResponse, LogicalVolumeInfo, PhotoInfo, Replica};
use haystack_testkit::{Cluster, ClusterOptions};

use crate::common::{encode_2_1, import, put_photo, replace, seal, store_id, until_gone};

/// The store of `cl` that holds no replica of photo `a`'s volume (three stores, two replicas).
fn spare_of(cl: &Cluster, a: &AssignResponse) -> String {
    cl.store_urls()
        .into_iter()
        .find(|u| a.replicas.iter().all(|r| r.url != *u))
        .expect("a store without the volume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_past_the_timeout_is_replaced_by_a_copy() {
    let mut cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        store_timeout_ms: 2_000,
        rereplicate_after_ms: 1_000,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, path, body) = put_photo(&c, &dir, 20_000, 0).await;
    let lost_url = a.replicas[0].url.clone();
    let lost = cl.store_urls().iter().position(|u| *u == lost_url).unwrap();
    cl.stop_store(lost);
    let deadline = Instant::now() + Duration::from_secs(60);
    let vol = loop {
        let v: LogicalVolumeInfo = c
            .get(format!("{dir}/v1/volumes/{}", a.volume_id))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v.replicas
            .iter()
            .all(|r| r.url != lost_url && r.up && r.reported)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "volume {} was not re-replicated: {v:?}",
            a.volume_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(vol.replicas.len(), 2);
    assert!(vol.writable, "{vol:?}");
    let p: PhotoInfo = c
        .get(format!("{dir}/v1/photos/{}", a.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for r in &p.replicas {
        let got = c
            .get(format!("{}{path}", r.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.as_ref(), &body[..], "{}", r.url);
    }
}

/// A replica copy is taken while the volume is read-only, which stops writes, not deletes: a
/// delete made after the copy passed the needle reached the replicas of the time, not the copy
/// (it was not one yet). Here the copy is made first and the photo deleted after it, the
/// widest form of that race; once the copy replaces a replica (as re-replication, drain and
/// `haystack volume repair` do), the comparison the directory runs then deletes the needle on
/// it. Before, the copy served the deleted photo until the next anti-entropy pass (every 10
/// minutes by default; off in this cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_made_during_a_replica_copy_does_not_come_back_on_the_copy() {
    let cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, path, _) = put_photo(&c, &dir, 9_000, 1).await;
    let spare = spare_of(&cl, &a);
    let v = a.volume_id;
    // The copy onto the spare store, from the first replica.
    import(&c, &spare, v, &a.replicas[0].url).await;
    assert_eq!(
        c.get(format!("{spare}{path}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The delete: the replicas take it, the copy is not one yet.
    let r = c
        .delete(format!("{dir}/v1/photos/{}", a.id))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "delete: {}", r.status());
    assert_eq!(
        c.get(format!("{spare}{path}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The copy replaces the second replica.
    let spare_id = store_id(&c, &dir, &spare).await;
    replace(&c, &dir, v, a.replicas[1].store_id, spare_id).await;
    // The deleted photo is gone from the copy too (the repair worker applies the queued delete).
    until_gone(&c, &format!("{spare}{path}"), "the copy").await;
}

/// Regression: a replica that a move replaced kept its copy for good. Nothing told its store
/// of the deletes made after the move, so the copy served deleted photos to anyone holding its
/// URL (a cache or CDN with an older view), and a later move of the volume back onto that store
/// was refused (the store already held the volume). Now the directory drops the old copy
/// (`DELETE /v1/volumes/{v}?moved=true`) once it is `moved_copy_keep_ms` old and no repair of
/// the volume is queued. Before the fix this failed at the first wait: the old copy still served
/// the deleted photo after 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_replicas_old_copy_is_dropped_and_the_volume_can_move_back() {
    let cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        moved_copy_keep_ms: 0,
        ..Default::default()
    })
    .await;
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, path, _) = put_photo(&c, &dir, 9_000, 1).await;
    let v = a.volume_id;
    let spare = spare_of(&cl, &a);
    let spare_id = store_id(&c, &dir, &spare).await;
    let (kept, old) = (a.replicas[0].clone(), a.replicas[1].clone());
    let copy_and_replace = async |onto: &str, onto_id: u64, from: &str, replaced: u64| {
        import(&c, onto, v, from).await;
        replace(&c, &dir, v, replaced, onto_id).await;
    };
    // The second replica moves onto the spare store; then the photo is deleted.
    copy_and_replace(&spare, spare_id, &kept.url, old.store_id).await;
    let r = c
        .delete(format!("{dir}/v1/photos/{}", a.id))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "delete: {}", r.status());
    until_gone(&c, &format!("{}{path}", old.url), "the moved-away copy").await;
    let held = c
        .get(format!("{}/v1/volumes/{v}", old.url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(held, 404, "the old store still holds volume {v}");
    // The record lets the store go once it confirmed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let vol: LogicalVolumeInfo = c
            .get(format!("{dir}/v1/volumes/{v}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !vol.moved_away.contains(&old.store_id) {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {vol:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The volume moves back onto the old store (a copy of the spare's replica), and the photo
    // stays deleted there.
    copy_and_replace(&old.url, old.store_id, &spare, spare_id).await;
    assert_eq!(
        c.get(format!("{}{path}", old.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // The spare's copy, replaced in turn, is dropped too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = c
            .get(format!("{spare}/v1/volumes/{v}"))
            .send()
            .await
            .unwrap()
            .status();
        if held == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spare still holds volume {v} ({held})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vol: LogicalVolumeInfo = c
        .get(format!("{dir}/v1/volumes/{v}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now: Vec<u64> = vol.replicas.iter().map(|r| r.store_id).collect();
    assert_eq!(now.len(), 2);
    assert!(
        now.contains(&kept.store_id) && now.contains(&old.store_id),
        "{vol:?}"
    );
}

/// Moves the second replica of a fresh photo's volume onto the store holding none, then seals
/// the volume (record and the two replicas' stores); the photo, the store whose copy the move
/// replaced, and the volume.
async fn moved_then_sealed(cl: &Cluster) -> (AssignResponse, Replica, u32) {
    let c = cl.admin_http();
    let dir = cl.directory_url();
    let (a, _, _) = put_photo(&c, &dir, 9_000, 2).await;
    let v = a.volume_id;
    let spare = spare_of(cl, &a);
    let spare_id = store_id(&c, &dir, &spare).await;
    let (kept, old) = (a.replicas[0].clone(), a.replicas[1].clone());
    import(&c, &spare, v, &kept.url).await;
    replace(&c, &dir, v, old.store_id, spare_id).await;
    seal(&c, &dir, v, &[&kept.url, &spare]).await;
    (a, old, v)
}

/// An encode places no shard on a store that still holds a copy a move replaced (until the
/// repair worker drops it): that store would answer the volume's reads from the stale copy
/// (deletes since the move missing) before its shard. Here the only three stores are the
/// two replicas and the moved copy's store, so a 2+1 encode has nowhere to go but there;
/// before the fix it put a shard on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encode_places_no_shard_beside_a_moved_copy() {
    let cl = Cluster::start(ClusterOptions {
        stores: 3,
        replication: 2,
        ..Default::default()
    })
    .await;
    let (c, dir) = (cl.admin_http(), cl.directory_url());
    let (_, old, v) = moved_then_sealed(&cl).await;
    let (s, body) = encode_2_1(&c, &dir, v).await;
    let vol: LogicalVolumeInfo = c
        .get(format!("{dir}/v1/volumes/{v}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        vol.replicas.iter().all(|r| r.store_id != old.store_id),
        "a shard went to the store holding the moved copy: {s} {body} {vol:?}"
    );
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("cannot place"), "{body}");
}

/// Nor does an operator's shard rebuild naming that store as its target (409). Before, the
/// rebuild put the shard there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_rebuild_onto_a_store_holding_a_moved_copy_is_refused() {
    let cl = Cluster::start(ClusterOptions {
        stores: 4,
        replication: 2,
        ..Default::default()
    })
    .await;
    let (c, dir) = (cl.admin_http(), cl.directory_url());
    let (_, old, v) = moved_then_sealed(&cl).await;
    let (s, body) = encode_2_1(&c, &dir, v).await;
    assert_eq!(s, 200, "encode: {body}");
    let (s, body) = crate::common::post(
        &c,
        format!("{dir}/v1/volumes/{v}/ec/rebuild"),
        serde_json::json!({"shard": 0, "to": old.store_id}),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("move replaced"), "{body}");
}
