//! The directory's behaviour without HTTP, on a hand-driven clock: liveness, placement,
//! automatic volume creation, several instances racing over one backend, idempotency keys
//! bound at commit and ids condemned by garbage collection.

use std::collections::HashSet;
use std::sync::Arc;

use haystack_directory::clock::ManualClock;
use haystack_directory::meta::embedded::EmbeddedStore;
use haystack_directory::meta::{Expect, Meta, MetadataStore};
use haystack_directory::model::{fnv1a64, Photo, UploadKey};
use haystack_directory::{Directory, DirectoryConfig, DirectoryError};
use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, CondemnState, KeyedCommit, PhotoKind, StoreState,
    Variant,
};
use haystack_proto::{Heartbeat, HeartbeatReply, StoreRegistration, VolumeInfo, VolumeState};

use crate::common::volume_info;

const T0: u64 = 1_800_000_000_000;

fn config(r: usize) -> DirectoryConfig {
    DirectoryConfig {
        metadata: "embedded:/unused".into(),
        replication_factor: r,
        store_timeout_ms: 10_000,
        volume_capacity_bytes: 1 << 30,
        min_writable_volumes: 2,
        min_writable_free_bytes: 1 << 20,
        ..Default::default()
    }
}

async fn directory(
    cfg: DirectoryConfig,
    store: Arc<dyn MetadataStore>,
    clock: Arc<ManualClock>,
) -> Directory {
    Directory::new(cfg, store, clock).await.expect("directory")
}

async fn register(d: &Directory, n: u32, zone: Option<&str>) -> u64 {
    d.register(StoreRegistration {
        store_id: None,
        public_url: format!("http://127.0.0.1:{}", 9000 + n),
        zone: zone.map(str::to_string),
        rack: None,
        capacity_bytes: 100 << 30,
        free_bytes: 10 << 30,
    })
    .await
    .expect("register")
    .store_id
}

/// Heartbeats store `id` with these volumes; the directory's whole answer.
async fn heartbeat(d: &Directory, id: u64, volumes: Vec<VolumeInfo>) -> HeartbeatReply {
    let url = d
        .stores()
        .into_iter()
        .find(|s| s.store_id == id)
        .expect("known store")
        .url;
    d.heartbeat(
        id,
        Heartbeat {
            store_id: id,
            public_url: url,
            capacity_bytes: 100 << 30,
            free_bytes: 10 << 30,
            healthy: true,
            volumes,
            shipping: Vec::new(),
            ec_files: Vec::new(),
        },
    )
    .await
    .expect("heartbeat")
}

/// Heartbeats store `id` with these volumes; the volumes the answer asks it to create.
async fn beat(d: &Directory, id: u64, volumes: Vec<VolumeInfo>) -> Vec<u32> {
    heartbeat(d, id, volumes).await.create_volumes
}

fn embedded() -> (tempfile::TempDir, Arc<dyn MetadataStore>) {
    let d = tempfile::tempdir().expect("tempdir");
    let s = EmbeddedStore::open(d.path()).expect("open");
    (d, Arc::new(s))
}

#[tokio::test]
async fn silent_store_is_marked_down_and_its_volumes_come_back_with_it() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let d = directory(config(3), store, clock.clone()).await;
    let ids = [
        register(&d, 1, None).await,
        register(&d, 2, None).await,
        register(&d, 3, None).await,
    ];
    let vol = d.create_volume().await.expect("create").id;
    assert!(
        !d.volume(vol).expect("vol").writable,
        "not created on the stores yet"
    );
    for id in ids {
        assert_eq!(beat(&d, id, vec![]).await, vec![vol], "told to create it");
        assert!(beat(&d, id, vec![volume_info(vol)]).await.is_empty());
    }
    assert!(d.volume(vol).expect("vol").writable);
    d.assign(&AssignRequest::default()).expect("assign");

    clock.advance_ms(6_000);
    beat(&d, ids[0], vec![volume_info(vol)]).await;
    beat(&d, ids[1], vec![volume_info(vol)]).await;
    d.sweep_liveness().await.expect("sweep");
    assert!(
        d.volume(vol).expect("vol").writable,
        "nobody silent long enough yet"
    );

    clock.advance_ms(6_000); // ids[2] silent for 12 s > 10 s
    d.sweep_liveness().await.expect("sweep");
    let states: Vec<StoreState> = d.stores().iter().map(|s| s.state).collect();
    assert_eq!(states.iter().filter(|s| **s == StoreState::Down).count(), 1);
    let v = d.volume(vol).expect("vol");
    assert!(!v.writable);
    assert_eq!(v.effective_state, VolumeState::ReadOnly);
    assert_eq!(v.state, VolumeState::Writable, "the record is untouched");
    assert!(matches!(
        d.assign(&AssignRequest::default()),
        Err(DirectoryError::NoWritableVolume(_))
    ));

    beat(&d, ids[2], vec![volume_info(vol)]).await;
    assert!(
        d.volume(vol).expect("vol").writable,
        "back with its heartbeat"
    );
    assert!(d.stores().iter().all(|s| s.state == StoreState::Up));
}

#[tokio::test]
async fn an_unhealthy_or_full_replica_makes_the_volume_read_only() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let d = directory(config(2), store, clock).await;
    let a = register(&d, 1, None).await;
    let b = register(&d, 2, None).await;
    let vol = d.create_volume().await.expect("create").id;
    beat(&d, a, vec![volume_info(vol)]).await;
    beat(&d, b, vec![volume_info(vol)]).await;
    assert!(d.volume(vol).expect("vol").writable);

    let mut full = volume_info(vol);
    full.size_bytes = full.max_bytes;
    beat(&d, b, vec![full]).await;
    let v = d.volume(vol).expect("vol");
    assert!(!v.writable);
    assert_eq!(v.reason.as_deref(), Some("volume is full"));

    let mut ro = volume_info(vol);
    ro.state = VolumeState::ReadOnly;
    ro.reason = Some("disk error".into());
    beat(&d, b, vec![ro]).await;
    assert_eq!(
        d.volume(vol).expect("vol").reason.as_deref(),
        Some("disk error")
    );
}

#[tokio::test]
async fn placement_spreads_replicas_over_zones_and_balances_machines() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let d = directory(config(3), store, clock).await;
    let mut zone_of = std::collections::HashMap::new();
    for (n, z) in ["a", "a", "b", "b", "c", "c"].iter().enumerate() {
        let id = register(&d, n as u32, Some(z)).await;
        zone_of.insert(id, *z);
    }
    let mut per_store = std::collections::HashMap::new();
    for _ in 0..4 {
        let v = d.create_volume().await.expect("create");
        let ids: HashSet<u64> = v.replicas.iter().map(|r| r.store_id).collect();
        assert_eq!(ids.len(), 3, "distinct machines");
        let zones: HashSet<&str> = ids.iter().map(|i| zone_of[i]).collect();
        assert_eq!(zones.len(), 3, "distinct zones");
        for i in ids {
            *per_store.entry(i).or_insert(0) += 1;
        }
    }
    // 12 replicas over 6 machines, balanced by promised space.
    assert!(per_store.values().all(|n| *n == 2), "{per_store:?}");
}

#[tokio::test]
async fn too_few_machines_cannot_hold_a_volume() {
    let (_d, store) = embedded();
    let d = directory(config(3), store, Arc::new(ManualClock::new(T0))).await;
    register(&d, 1, None).await;
    register(&d, 2, None).await;
    assert!(matches!(
        d.create_volume().await,
        Err(DirectoryError::NoWritableVolume(_))
    ));
}

#[tokio::test]
async fn volumes_are_created_when_writable_space_runs_low() {
    let (_d, store) = embedded();
    let d = directory(config(1), store, Arc::new(ManualClock::new(T0))).await;
    let s = register(&d, 1, None).await;
    let first = d.ensure_capacity().await.expect("ensure").expect("created");
    let second = d.ensure_capacity().await.expect("ensure").expect("created");
    assert_ne!(first, second);
    assert_eq!(
        d.ensure_capacity().await.expect("ensure"),
        None,
        "two on their way"
    );
    beat(&d, s, vec![volume_info(first), volume_info(second)]).await;
    assert_eq!(
        d.ensure_capacity().await.expect("ensure"),
        None,
        "two writable"
    );

    // One fills up: a third is created without an operator.
    let mut full = volume_info(first);
    full.size_bytes = full.max_bytes;
    beat(&d, s, vec![full, volume_info(second)]).await;
    let third = d.ensure_capacity().await.expect("ensure").expect("created");
    assert!(third > second);
}

/// A volume as a store reports it: `used` of 1 GiB written.
fn gib_volume(id: u32, used: u64) -> VolumeInfo {
    let mut v = volume_info(id);
    v.max_bytes = 1 << 30;
    v.size_bytes = used;
    v
}

#[tokio::test]
async fn a_burst_of_writes_gets_volumes_made_ahead_of_it() {
    // Regression: volumes were made only when the writable ones had less than
    // `min_writable_free_bytes` left, one per tick; under a burst every writable volume filled
    // at once and writes waited (503) for the next one (S3 PUT 1 MiB stalled at each volume).
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let d = directory(config(1), store, clock.clone()).await;
    let s = register(&d, 1, None).await;
    d.maintain().await.expect("tick");
    let ids: Vec<u32> = d.volumes().iter().map(|v| v.id).collect();
    assert_eq!(ids.len(), 2, "min_writable_volumes");
    beat(&d, s, ids.iter().map(|&v| gib_volume(v, 0)).collect()).await;
    clock.advance_ms(1_000);
    d.maintain().await.expect("tick");
    assert_eq!(d.volumes().len(), 2, "quiet: 2 GiB writable is enough");

    // 600 MiB assigned in one second: 15 s of that is 9,000 MiB, and 2 GiB is writable.
    for _ in 0..600 {
        d.assign(&AssignRequest {
            kind: PhotoKind::Video,
            size_hint_bytes: 1 << 20,
            ..Default::default()
        })
        .expect("assign");
    }
    clock.advance_ms(1_000);
    d.maintain().await.expect("tick");
    assert_eq!(d.wanted_writable_bytes(), (600 * 15) << 20);
    assert_eq!(
        d.volumes().len(),
        2 + haystack_directory::MAX_CREATES_PER_TICK,
        "as many as one tick makes"
    );

    // The stores create them; the next tick makes the rest: 9 GiB >= 9,000 MiB.
    let ids: Vec<u32> = d.volumes().iter().map(|v| v.id).collect();
    beat(&d, s, ids.iter().map(|&v| gib_volume(v, 0)).collect()).await;
    clock.advance_ms(1_000);
    d.maintain().await.expect("tick");
    assert_eq!(d.volumes().len(), 9, "enough room for the rate");
    let ids: Vec<u32> = d.volumes().iter().map(|v| v.id).collect();
    beat(&d, s, ids.iter().map(|&v| gib_volume(v, 0)).collect()).await;
    clock.advance_ms(1_000);
    d.maintain().await.expect("tick");
    assert_eq!(d.volumes().len(), 9, "and no more");

    // The burst is over: after the rate's window it is 0, and nothing more is made.
    clock.advance_ms(20_000);
    beat(&d, s, ids.iter().map(|&v| gib_volume(v, 0)).collect()).await;
    d.maintain().await.expect("tick");
    clock.advance_ms(1_000);
    d.maintain().await.expect("tick");
    assert_eq!(d.sample_write_rate(), 0);
    assert_eq!(d.wanted_writable_bytes(), 1 << 20);
    assert_eq!(d.volumes().len(), 9);
}

/// A directory with one store and one writable volume, and an id assigned on it.
async fn one_store_and_an_assignment() -> (tempfile::TempDir, Directory, AssignResponse) {
    let (dir, store) = embedded();
    let d = directory(config(1), store, Arc::new(ManualClock::new(T0))).await;
    let s = register(&d, 1, None).await;
    let v = d.ensure_capacity().await.expect("ensure").expect("created");
    beat(&d, s, vec![volume_info(v)]).await;
    let a = d
        .assign(&AssignRequest {
            kind: PhotoKind::Video,
            ..Default::default()
        })
        .expect("assign");
    (dir, d, a)
}

/// S3 data commits as kind `object`: chunks like a video, never variants, and its lookup
/// says `object` (so that gc tells it from the photo API's videos).
#[tokio::test]
async fn an_object_id_has_chunks_and_no_variants_and_keeps_its_kind() {
    use haystack_proto::directory::{Variant, VideoChunk};
    let (_d, d, a) = one_store_and_an_assignment().await;
    let chunk = VideoChunk {
        alt: 1,
        offset: 0,
        size_bytes: 10,
    };
    let commit = |variants: Vec<Variant>, chunks: Vec<VideoChunk>| CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Object,
        variants,
        chunks,
    };
    let variant = Variant {
        name: "original".into(),
        alt: 0,
        size_bytes: 10,
        content_type: "image/jpeg".into(),
    };
    for (what, bad) in [
        ("no chunks", commit(vec![], vec![])),
        ("a variant", commit(vec![variant], vec![chunk.clone()])),
    ] {
        let e = d.commit(bad).await.expect_err(what);
        assert!(matches!(e, DirectoryError::BadRequest(_)), "{what}: {e:?}");
    }
    let info = d.commit(commit(vec![], vec![chunk])).await.expect("commit");
    assert_eq!(info.kind, PhotoKind::Object);
    assert_eq!(
        d.lookup(a.id).await.expect("lookup").kind,
        PhotoKind::Object
    );
}

#[tokio::test]
async fn kv_replace_commits_then_writes_and_answers_what_it_replaced() {
    use haystack_proto::directory::VideoChunk;
    use haystack_proto::kv::KvReplace;
    let (_d, d, a) = one_store_and_an_assignment().await;
    let commit = CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Video,
        variants: Vec::new(),
        chunks: vec![VideoChunk {
            alt: 1,
            offset: 0,
            size_bytes: 10,
        }],
    };
    let put = |value: &str, commit: Option<CommitRequest>| KvReplace {
        value: value.to_string(),
        commit,
    };
    assert!(d.lookup(a.id).await.is_err(), "not committed yet");
    let r = d
        .kv_replace(7, "k", put("{\"n\":1}", Some(commit.clone())))
        .await
        .expect("replace");
    assert!(r.previous.is_none());
    let first = r.version;
    assert_eq!(d.lookup(a.id).await.expect("committed").id, a.id);

    let r = d
        .kv_replace(7, "k", put("{\"n\":2}", None))
        .await
        .expect("replace");
    assert_eq!(r.version, first + 1);
    assert_eq!(r.previous.expect("replaced").value, "{\"n\":1}");

    // A commit the directory refuses writes nothing.
    let bad = CommitRequest {
        volume_id: 999,
        ..commit
    };
    assert!(matches!(
        d.kv_replace(7, "k", put("{\"n\":3}", Some(bad))).await,
        Err(DirectoryError::BadRequest(_))
    ));
    assert_eq!(d.kv_get(7, "k").await.expect("get").value, "{\"n\":2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_over_one_backend_race_safely() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let a = Arc::new(directory(config(1), store.clone(), clock.clone()).await);
    let b = Arc::new(directory(config(1), store.clone(), clock.clone()).await);
    assert_ne!(
        a.node_id(),
        b.node_id(),
        "each instance claims its own node id"
    );
    register(&a, 1, None).await;
    b.refresh().await.expect("refresh");

    let mut tasks = Vec::new();
    for i in 0..6 {
        let d = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { d.create_volume().await }));
    }
    let mut vols = HashSet::new();
    for t in tasks {
        let v = t.await.expect("task").expect("create");
        assert!(vols.insert(v.id), "volume id {} handed out twice", v.id);
    }
    a.refresh().await.expect("refresh");
    assert_eq!(a.volumes().len(), 6);

    // Ids from both instances never collide.
    let sid = a.stores()[0].store_id;
    beat(&a, sid, vols.iter().map(|v| volume_info(*v)).collect()).await;
    b.refresh().await.expect("refresh");
    let mut ids = HashSet::new();
    for _ in 0..2000 {
        assert!(ids.insert(a.assign(&AssignRequest::default()).expect("a").id));
        assert!(ids.insert(b.assign(&AssignRequest::default()).expect("b").id));
    }
}

fn keyed(k: &str) -> AssignRequest {
    AssignRequest {
        idempotency_key: Some(k.to_string()),
        ..Default::default()
    }
}

fn keyed_commit(a: &AssignResponse, key: &str, hash: Option<&str>) -> KeyedCommit {
    KeyedCommit {
        commit: CommitRequest {
            id: a.id,
            cookie: a.cookie,
            volume_id: a.volume_id,
            kind: PhotoKind::Photo,
            variants: vec![Variant {
                name: "original".into(),
                alt: 0,
                size_bytes: 100,
                content_type: "image/jpeg".into(),
            }],
            chunks: vec![],
        },
        idempotency_key: Some(key.to_string()),
        request_hash: hash.map(str::to_string),
        pending_replicas: Vec::new(),
    }
}

/// One store, one writable volume, on a manual clock.
async fn one_volume(
    ttl_ms: u64,
) -> (
    tempfile::TempDir,
    Arc<dyn MetadataStore>,
    Arc<ManualClock>,
    Arc<Directory>,
) {
    let (dir, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(1);
    cfg.idempotency_ttl_ms = ttl_ms;
    let d = Arc::new(directory(cfg, store.clone(), clock.clone()).await);
    let s = register(&d, 1, None).await;
    let v = d.create_volume().await.expect("create").id;
    beat(&d, s, vec![volume_info(v)]).await;
    (dir, store, clock, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_bound_to_one_photo_at_commit_until_it_expires() {
    let (_dir, _store, clock, d) = one_volume(60_000).await;
    let key = "phone-42/upload-1";
    // Assigns under a key write nothing: every attempt of a request has its own id.
    let a1 = d.assign_idempotent(&keyed(key)).await.expect("assign");
    let a2 = d
        .assign_idempotent(&keyed(key))
        .await
        .expect("assign again");
    assert!(!a1.replayed && !a2.replayed);
    assert_ne!(a1.id, a2.id, "an id is never handed out twice");

    // Eight attempts of one request (one request hash) commit at once: the key is bound to
    // one of them, and every commit answers that one.
    let attempts: Vec<AssignResponse> = (0..8)
        .map(|_| d.assign(&AssignRequest::default()).expect("assign"))
        .collect();
    let mut tasks = Vec::new();
    for a in &attempts {
        let (d, c) = (d.clone(), keyed_commit(a, key, Some("sha256:aa")));
        tasks.push(tokio::spawn(async move { d.commit_keyed(c).await }));
    }
    let mut answered = HashSet::new();
    for t in tasks {
        answered.insert(t.await.expect("task").expect("commit").id);
    }
    assert_eq!(answered.len(), 1, "every commit answers the bound photo");
    let bound = *answered.iter().next().expect("one");
    assert!(attempts.iter().any(|a| a.id == bound));
    for a in attempts.iter().filter(|a| a.id != bound) {
        assert!(
            matches!(d.lookup(a.id).await, Err(DirectoryError::NotFound(_))),
            "attempt {} must not be committed",
            a.id
        );
    }
    // Another body (or none) under the key is refused, and commits nothing.
    for hash in [Some("sha256:bb"), None] {
        let b = d.assign(&AssignRequest::default()).expect("assign");
        assert!(matches!(
            d.commit_keyed(keyed_commit(&b, key, hash)).await,
            Err(DirectoryError::Conflict(_))
        ));
        assert!(matches!(
            d.lookup(b.id).await,
            Err(DirectoryError::NotFound(_))
        ));
    }
    // A replayed assign answers the bound photo and the hash it was committed with.
    let r = d.assign_idempotent(&keyed(key)).await.expect("replay");
    assert!(r.replayed);
    assert_eq!(r.id, bound);
    assert_eq!(r.request_hash.as_deref(), Some("sha256:aa"));
    // The same commit again is idempotent.
    let winner = attempts.iter().find(|a| a.id == bound).expect("winner");
    let again = d
        .commit_keyed(keyed_commit(winner, key, Some("sha256:aa")))
        .await
        .expect("recommit");
    assert_eq!(again.id, bound);

    let other = d
        .assign_idempotent(&keyed("phone-42/upload-2"))
        .await
        .expect("other");
    assert!(!other.replayed);
    assert!(matches!(
        d.assign_idempotent(&keyed("")).await,
        Err(DirectoryError::BadRequest(_))
    ));

    // After the TTL the key is free again: a new upload binds it. (The hand-driven clock
    // jumps past the node-id lease too, which a maintenance round renews, as it does every
    // `maintenance_interval_ms` when the clock runs.)
    clock.advance_ms(61_000);
    let store = d.stores()[0].store_id;
    let volumes = d.volumes().iter().map(|v| volume_info(v.id)).collect();
    beat(&d, store, volumes).await;
    d.maintain().await.expect("maintenance");
    let fresh = d
        .assign_idempotent(&keyed(key))
        .await
        .expect("after expiry");
    assert!(!fresh.replayed);
    let c = d
        .commit_keyed(keyed_commit(&fresh, key, Some("sha256:cc")))
        .await
        .expect("binds anew");
    assert_eq!(c.id, fresh.id);
    assert_eq!(
        d.assign_idempotent(&keyed(key)).await.expect("replay").id,
        fresh.id
    );
}

#[tokio::test]
async fn a_commit_cut_between_its_two_writes_is_completed_or_void() {
    let (_dir, store, _clock, d) = one_volume(60_000).await;
    let meta = Meta::new(store);
    // The key's record is written, the photo's is not: the committer died in between.
    let cut = |a: &AssignResponse, key: &str| {
        let photo = Photo {
            id: a.id,
            volume_id: a.volume_id,
            cookie: a.cookie,
            kind: PhotoKind::Photo,
            variants: keyed_commit(a, key, None).commit.variants,
            chunks: vec![],
            created_ms: T0,
            deleted: false,
            deleted_ms: None,
            condemned: false,
        };
        UploadKey {
            key: key.to_string(),
            id: a.id,
            cookie: a.cookie,
            volume_id: a.volume_id,
            kind: PhotoKind::Photo,
            created_ms: T0,
            photo: Some(photo),
            request_hash: Some("sha256:aa".into()),
        }
    };
    let a = d.assign(&AssignRequest::default()).expect("assign");
    let rec = cut(&a, "k-1");
    meta.put_upload(fnv1a64(b"k-1"), &rec, Expect::Absent)
        .await
        .expect("put");
    assert!(matches!(
        d.lookup(a.id).await,
        Err(DirectoryError::NotFound(_))
    ));
    // The next request with the key completes the commit and answers it.
    let r = d.assign_idempotent(&keyed("k-1")).await.expect("replay");
    assert!(r.replayed);
    assert_eq!(r.id, a.id);
    assert_eq!(d.lookup(a.id).await.expect("completed").id, a.id);

    // Garbage collection condemned the id first: the binding is void, the key free.
    let b = d.assign(&AssignRequest::default()).expect("assign");
    let rec = cut(&b, "k-2");
    meta.put_upload(fnv1a64(b"k-2"), &rec, Expect::Absent)
        .await
        .expect("put");
    assert_eq!(
        d.condemn(b.id).await.expect("condemn").state,
        CondemnState::Condemned
    );
    let r = d.assign_idempotent(&keyed("k-2")).await.expect("assign");
    assert!(!r.replayed);
    assert_ne!(r.id, b.id);
    assert!(matches!(
        d.commit_keyed(keyed_commit(&b, "k-2", Some("sha256:aa")))
            .await,
        Err(DirectoryError::Conflict(_))
    ));
    let c = d
        .commit_keyed(keyed_commit(&r, "k-2", Some("sha256:aa")))
        .await
        .expect("a new attempt binds the key");
    assert_eq!(c.id, r.id);
}

#[tokio::test]
async fn condemn_answers_live_photos_and_tombstones_unknown_ids() {
    let (_dir, _store, _clock, d) = one_volume(60_000).await;
    let a = d.assign(&AssignRequest::default()).expect("assign");
    d.commit(keyed_commit(&a, "x", None).commit)
        .await
        .expect("commit");
    let live = d.condemn(a.id).await.expect("condemn live");
    assert_eq!(live.state, CondemnState::Live);
    assert_eq!(live.photo.expect("photo").id, a.id);

    let b = d.assign(&AssignRequest::default()).expect("assign");
    for _ in 0..2 {
        assert_eq!(
            d.condemn(b.id).await.expect("condemn").state,
            CondemnState::Condemned
        );
    }
    assert!(matches!(
        d.commit(keyed_commit(&b, "x", None).commit).await,
        Err(DirectoryError::Conflict(_))
    ));
    assert!(matches!(
        d.lookup(b.id).await,
        Err(DirectoryError::NotFound(_))
    ));
    assert!(matches!(
        d.delete(b.id).await,
        Err(DirectoryError::NotFound(_))
    ));

    d.delete(a.id).await.expect("delete");
    assert_eq!(
        d.condemn(a.id).await.expect("condemn deleted").state,
        CondemnState::Deleted
    );
}

#[tokio::test]
async fn a_volume_stuck_on_a_dead_store_does_not_block_new_ones() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(1);
    cfg.min_writable_volumes = 1;
    let d = directory(cfg, store, clock.clone()).await;
    let dead = register(&d, 1, None).await;
    let first = d.ensure_capacity().await.expect("ensure").expect("created");
    assert_eq!(
        d.ensure_capacity().await.expect("ensure"),
        None,
        "one on its way"
    );
    // The store dies before creating it; another machine joins.
    clock.advance_ms(11_000);
    let alive = register(&d, 2, None).await;
    d.sweep_liveness().await.expect("sweep");
    let second = d
        .ensure_capacity()
        .await
        .expect("ensure")
        .expect("created again");
    assert_ne!(second, first);
    let v = d.volume(second).expect("volume");
    assert_eq!(
        v.replicas[0].store_id, alive,
        "placed on the live store only"
    );
    assert_ne!(alive, dead);
}

#[tokio::test]
async fn a_store_that_loses_a_volume_is_not_told_to_recreate_it_empty() {
    let (_d, store) = embedded();
    let d = directory(config(2), store, Arc::new(ManualClock::new(T0))).await;
    let a = register(&d, 1, None).await;
    let b = register(&d, 2, None).await;
    let vol = d.create_volume().await.expect("create").id;
    beat(&d, a, vec![volume_info(vol)]).await;
    beat(&d, b, vec![volume_info(vol)]).await;
    assert!(d.volume(vol).expect("vol").writable);

    // Store b comes back without the volume (a lost disk): no create, read-only, needs repair.
    assert!(
        beat(&d, b, vec![]).await.is_empty(),
        "must not recreate an empty replica"
    );
    let v = d.volume(vol).expect("vol");
    assert!(!v.writable);
    assert!(
        v.reason.as_deref().unwrap_or("").contains("missing"),
        "{v:?}"
    );

    // Repair: the volume is copied onto c, then the replica is moved there.
    let c = register(&d, 3, None).await;
    d.replace_replica(vol, b, c).await.expect("replace");
    assert_eq!(
        beat(&d, c, vec![]).await,
        vec![vol],
        "the new replica is asked for"
    );
    beat(&d, c, vec![volume_info(vol)]).await;
    assert!(d.volume(vol).expect("vol").writable);
}

/// Heartbeats store `id` with these volumes; the volumes the answer orders it to ship.
async fn ship_orders(d: &Directory, id: u64, volumes: Vec<VolumeInfo>) -> Vec<u32> {
    heartbeat(d, id, volumes)
        .await
        .ship
        .iter()
        .map(|o| o.volume)
        .collect()
}

#[tokio::test]
async fn the_shipper_stays_the_replica_its_remote_copy_was_made_from() {
    // Regression: the shipper was always the first replica up, so when a volume's first
    // replica reported it after the second had seeded the remote copy, or came back after a
    // failover, shipping moved to it and the remote copy (agreeing only with the file it was
    // made from) was re-seeded in full; while both held orders they re-seeded it in turns.
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let d = directory(
        DirectoryConfig {
            remote_zones: vec!["far".into()],
            async_replicas: 1,
            ..config(2)
        },
        store,
        clock.clone(),
    )
    .await;
    let locals = [register(&d, 1, None).await, register(&d, 2, None).await];
    let remote = register(&d, 3, Some("far")).await;
    let vol = d.create_volume().await.expect("create").id;
    d.ensure_remote_replicas().await.expect("place remote");
    let info = d.volume(vol).expect("vol");
    assert_eq!(info.remote_replicas.len(), 1, "{info:?}");
    let order: Vec<u64> = info.replicas.iter().map(|r| r.store_id).collect();
    assert_eq!(order.len(), 2);
    assert!(locals.iter().all(|s| order.contains(s)));
    let tagged = |tag: u32| VolumeInfo {
        tag: Some(tag),
        ..volume_info(vol)
    };
    // The second replica reports first: it ships, and seeds the remote from its file.
    assert!(ship_orders(&d, order[0], vec![]).await.is_empty());
    assert_eq!(
        ship_orders(&d, order[1], vec![tagged(0xB)]).await,
        vec![vol]
    );
    assert!(ship_orders(&d, remote, vec![tagged(0xB)]).await.is_empty());
    // The first replica reports the volume later: shipping stays where the copy came from.
    assert!(ship_orders(&d, order[0], vec![tagged(0xA)])
        .await
        .is_empty());
    assert_eq!(
        ship_orders(&d, order[1], vec![tagged(0xB)]).await,
        vec![vol]
    );
    // Its shipper down, the other replica takes over (and re-seeds the copy from its file).
    clock.advance_ms(12_000);
    assert!(ship_orders(&d, order[0], vec![tagged(0xA)])
        .await
        .is_empty());
    ship_orders(&d, remote, vec![tagged(0xB)]).await;
    d.sweep_liveness().await.expect("sweep");
    assert_eq!(
        ship_orders(&d, order[0], vec![tagged(0xA)]).await,
        vec![vol]
    );
    ship_orders(&d, remote, vec![tagged(0xA)]).await;
    // The old shipper returns: the copy is now the other's, so shipping does not move back.
    assert!(ship_orders(&d, order[1], vec![tagged(0xB)])
        .await
        .is_empty());
    assert_eq!(
        ship_orders(&d, order[0], vec![tagged(0xA)]).await,
        vec![vol]
    );
    // A remote copy of neither file (none yet): the first replica up that holds it.
    ship_orders(&d, remote, vec![]).await;
    assert_eq!(
        ship_orders(&d, order[0], vec![tagged(0xA)]).await,
        vec![vol]
    );
    assert!(ship_orders(&d, order[1], vec![tagged(0xB)])
        .await
        .is_empty());
}

/// A directory with one store and one writable volume, on a hand-driven clock set just past
/// its node-id lease (it stalled): its metadata, the lease as it was, its node id, store, volume.
struct Stalled {
    _dir: tempfile::TempDir,
    d: Directory,
    meta: Meta,
    lease: haystack_directory::meta::Versioned<haystack_directory::model::NodeLease>,
    node: u16,
    s: u64,
    v: u32,
}

async fn stalled_past_its_lease() -> Stalled {
    let (_dir, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let d = directory(config(1), store.clone(), clock.clone()).await;
    let s = register(&d, 1, None).await;
    let v = d.ensure_capacity().await.expect("ensure").expect("created");
    beat(&d, s, vec![volume_info(v)]).await;
    let node = d.node_id();
    let id = d.assign(&AssignRequest::default()).unwrap().id;
    assert_eq!(haystack_proto::id::decode(id).node, node);
    let meta = Meta::new(store);
    let lease = meta.get_lease(node).await.unwrap().expect("the lease");
    clock.set_ms(lease.value.expires_ms + 1);
    // The store heartbeats meanwhile (it did not stall).
    beat(&d, s, vec![volume_info(v)]).await;
    Stalled {
        _dir,
        d,
        meta,
        lease,
        node,
        s,
        v,
    }
}

/// A directory whose node-id lease another instance took (this one stalled past its lease;
/// the other claimed the expired id) stops handing out ids under that node id: they would
/// collide with the other's, and an upload under a colliding id overwrites another photo's
/// needle (a store takes a rewrite of a live needle), an acknowledged photo lost. Before, it
/// logged the conflict and went on with the same node id until restarted.
#[tokio::test]
async fn a_directory_whose_node_id_was_taken_stops_using_it() {
    use haystack_directory::model::NodeLease;
    let Stalled {
        _dir,
        d,
        meta,
        lease,
        node,
        ..
    } = stalled_past_its_lease().await;
    let node_of = |id: u64| haystack_proto::id::decode(id).node;
    // Another instance claims the expired node id.
    let taken = meta
        .put_lease(
            node,
            &NodeLease {
                holder: 42,
                expires_ms: lease.value.expires_ms + 3_600_000,
            },
            Expect::Version(lease.version),
        )
        .await
        .unwrap();
    assert!(matches!(
        taken,
        haystack_directory::meta::Cas::Applied { .. }
    ));
    // With its lease lapsed it hands out no id under that node id...
    match d.assign(&AssignRequest::default()) {
        Ok(a) => assert_ne!(node_of(a.id), node, "an id under a lapsed node id"),
        Err(e) => assert!(matches!(e, DirectoryError::Unavailable(_)), "{e:?}"),
    }
    // ...and its next maintenance round finds the id taken and claims another.
    d.maintain().await.expect("maintenance");
    let a = d.assign(&AssignRequest::default()).expect("assign");
    assert_ne!(
        node_of(a.id),
        node,
        "an id under the node id another instance holds"
    );
    assert_ne!(d.node_id(), node);
}

/// A directory that lost its node id and could not claim another at once (here every node id
/// is leased by others) claims one at a later maintenance round, as soon as one is free.
/// Before, the failed claim left it without a lease for good, refusing every assign (503)
/// until a restart.
#[tokio::test]
async fn a_directory_that_could_not_claim_a_new_node_id_claims_one_later() {
    use haystack_directory::model::NodeLease;
    let Stalled {
        _dir,
        d,
        meta,
        lease,
        node,
        s,
        v,
    } = stalled_past_its_lease().await;
    // Other instances hold every node id, this one's included.
    let other = |until| NodeLease {
        holder: 42,
        expires_ms: until,
    };
    let far = lease.value.expires_ms + 3_600_000;
    for n in 0..=haystack_proto::id::MAX_NODE_ID {
        let expect = match meta.get_lease(n).await.unwrap() {
            Some(cur) => Expect::Version(cur.version),
            None => Expect::Absent,
        };
        meta.put_lease(n, &other(far), expect).await.unwrap();
    }
    assert!(d.maintain().await.is_err(), "no node id to claim");
    assert!(d.assign(&AssignRequest::default()).is_err());
    // One node id comes free (its holder's lease expired).
    let freed = (node + 1) & haystack_proto::id::MAX_NODE_ID;
    let cur = meta.get_lease(freed).await.unwrap().expect("leased");
    meta.put_lease(
        freed,
        &other(lease.value.expires_ms),
        Expect::Version(cur.version),
    )
    .await
    .unwrap();
    beat(&d, s, vec![volume_info(v)]).await;
    d.maintain().await.expect("maintenance");
    let a = d
        .assign(&AssignRequest::default())
        .expect("assign under the new node id");
    assert_eq!(haystack_proto::id::decode(a.id).node, freed);
}

/// Scripted store machines for volume copies, all alike: an import answers the volume it made
/// (as a store does) unless its source is in `refused` (400: the source's export failed, as a
/// store answers when its source fails); `GET /v1/volumes/{id}` answers the volume; anything
/// else 200 `{}`. Every import's source is logged in `imports`, in order.
struct CopyStores {
    refused: Arc<std::sync::Mutex<HashSet<String>>>,
    imports: Arc<std::sync::Mutex<Vec<String>>>,
}

impl CopyStores {
    fn new() -> Self {
        Self {
            refused: Arc::default(),
            imports: Arc::default(),
        }
    }

    /// Starts one; its URL.
    fn start(&self) -> String {
        let (refused, imports) = (self.refused.clone(), self.imports.clone());
        crate::common::scripted_with_body(move |req, body, _| {
            let (refused, imports) = (refused.clone(), imports.clone());
            async move {
                let volume = |suffix: &str| {
                    req.path()
                        .strip_prefix("/v1/volumes/")
                        .and_then(|r| r.strip_suffix(suffix))
                        .and_then(|v| v.parse::<u32>().ok())
                };
                if let (Some(v), "POST") = (volume("/import"), req.method().as_str()) {
                    let b: serde_json::Value = serde_json::from_slice(&body).expect("import body");
                    let from = b["from"].as_str().expect("from").to_string();
                    imports.lock().expect("imports").push(from.clone());
                    if refused.lock().expect("refused").contains(&from) {
                        return actix_web::HttpResponse::BadRequest().json(serde_json::json!({
                            "error": "bad_request", "message": "the source's export failed"
                        }));
                    }
                    return actix_web::HttpResponse::Ok().json(volume_info(v));
                }
                if let (Some(v), "GET") = (volume(""), req.method().as_str()) {
                    return actix_web::HttpResponse::Ok().json(volume_info(v));
                }
                actix_web::HttpResponse::Ok().json(serde_json::json!({}))
            }
        })
        .0
    }
}

async fn register_at(d: &Directory, url: &str) -> u64 {
    d.register(StoreRegistration {
        store_id: None,
        public_url: url.to_string(),
        zone: None,
        rack: None,
        capacity_bytes: 100 << 30,
        free_bytes: 10 << 30,
    })
    .await
    .expect("register")
    .store_id
}

/// A volume on three scripted stores and a fourth store that holds nothing; the stores'
/// URLs by id, the volume's replicas in record order, the spare.
async fn three_replicas_and_a_spare(
    d: &Directory,
    copies: &CopyStores,
) -> (std::collections::HashMap<u64, String>, u32, Vec<u64>, u64) {
    let mut urls = std::collections::HashMap::new();
    for _ in 0..3 {
        let url = copies.start();
        urls.insert(register_at(d, &url).await, url);
    }
    let vol = d.create_volume().await.expect("create").id;
    for id in urls.keys() {
        beat(d, *id, vec![volume_info(vol)]).await;
    }
    let order: Vec<u64> = d
        .volume(vol)
        .expect("volume")
        .replicas
        .iter()
        .map(|r| r.store_id)
        .collect();
    let url = copies.start();
    let spare = register_at(d, &url).await;
    urls.insert(spare, url);
    beat(d, spare, vec![]).await;
    (urls, vol, order, spare)
}

fn quarantined(id: u32) -> VolumeInfo {
    VolumeInfo {
        state: VolumeState::Unavailable,
        reason: Some("volume cannot be opened; quarantined".into()),
        ..volume_info(id)
    }
}

/// A volume with one replica on a store down too long, one quarantined (its store reports it
/// `unavailable`: it serves nothing, its export neither) and one healthy gets its new copy
/// from the healthy one. Before, the quarantined replica was taken as the source (up and
/// reported), the copy failed, and every later round picked it again: never re-replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rereplication_copies_from_a_healthy_replica_not_a_quarantined_one() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(3);
    cfg.rereplicate_after_ms = 1_000;
    cfg.min_writable_volumes = 1;
    let d = directory(cfg, store, clock.clone()).await;
    let copies = CopyStores::new();
    let (urls, vol, order, spare) = three_replicas_and_a_spare(&d, &copies).await;
    let (bad, good, dead) = (order[0], order[1], order[2]);
    copies
        .refused
        .lock()
        .expect("refused")
        .insert(urls[&bad].clone());
    clock.advance_ms(12_000);
    beat(&d, bad, vec![quarantined(vol)]).await;
    beat(&d, good, vec![volume_info(vol)]).await;
    beat(&d, spare, vec![]).await;
    d.sweep_liveness().await.expect("sweep");

    assert_eq!(
        d.rereplicate_once().await.expect("rereplicate"),
        Some(vol),
        "imports tried: {:?}",
        copies.imports.lock().expect("imports")
    );
    let now: Vec<u64> = d
        .volume(vol)
        .expect("volume")
        .replicas
        .iter()
        .map(|r| r.store_id)
        .collect();
    assert!(now.contains(&spare) && !now.contains(&dead), "{now:?}");
    assert_eq!(
        copies.imports.lock().expect("imports").last(),
        Some(&urls[&good]),
        "copied from the healthy replica"
    );
}

/// Regression: two instances re-replicating the same lost replica (the second with a view
/// older than the first's switch) each copied the volume onto a store; the second's replace
/// was refused (the lost replica was no longer in the record) and its copy stayed on its
/// target, named by nothing: never dropped, and every later import of the volume there
/// refused. The copy is now listed in `moved_away` for the repair worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rereplication_that_lost_the_race_lists_its_copy_for_dropping() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.rereplicate_after_ms = 1_000;
    cfg.min_writable_volumes = 1;
    let d1 = directory(cfg.clone(), store.clone(), clock.clone()).await;
    let d2 = directory(cfg, store, clock.clone()).await;
    let copies = CopyStores::new();
    let (a, b) = (
        register_at(&d1, &copies.start()).await,
        register_at(&d1, &copies.start()).await,
    );
    let vol = d1.create_volume().await.expect("create").id;
    beat(&d1, a, vec![volume_info(vol)]).await;
    beat(&d1, b, vec![volume_info(vol)]).await;
    let first = register_at(&d1, &copies.start()).await;
    beat(&d1, first, vec![]).await;
    d2.refresh().await.expect("refresh");
    // A stays silent; B and the first spare keep beating.
    clock.advance_ms(12_000);
    for d in [&d1, &d2] {
        beat(d, b, vec![volume_info(vol)]).await;
        beat(d, first, vec![]).await;
    }
    d1.sweep_liveness().await.expect("sweep");
    assert_eq!(d1.rereplicate_once().await.expect("rereplicate"), Some(vol));
    // A second spare with the most room, known to the second instance only, whose view of
    // the volume is from before the first's switch.
    let second = d2
        .register(StoreRegistration {
            store_id: None,
            public_url: copies.start(),
            zone: None,
            rack: None,
            capacity_bytes: 1000 << 30,
            free_bytes: 900 << 30,
        })
        .await
        .expect("register")
        .store_id;
    beat(&d2, second, vec![]).await;
    // The first spare takes no more replicas (an operator drains it), so the second
    // instance's only target is the second spare.
    d2.set_store_lifecycle(first, haystack_proto::directory::StoreLifecycle::Draining)
        .await
        .expect("drain");
    d2.sweep_liveness().await.expect("sweep");
    let r = d2.rereplicate_once().await;
    assert!(r.is_err(), "the second replace is refused: {r:?}");
    let v = d1
        .refresh()
        .await
        .map(|()| d1.volume(vol).expect("volume"))
        .expect("refresh");
    let now: Vec<u64> = v.replicas.iter().map(|r| r.store_id).collect();
    assert!(now.contains(&first) && !now.contains(&second), "{now:?}");
    assert!(
        v.moved_away.contains(&second),
        "the second copy is named by nothing: {v:?}"
    );
}

/// A drain takes its copy from a healthy replica: a quarantined one is never the source, and
/// when the import from the first source (the draining store itself) fails the next one is
/// tried. Before, the first replica up and reported was the only source tried (the
/// quarantined one): the move failed in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_copies_from_the_next_healthy_replica_when_one_fails() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(3);
    cfg.min_writable_volumes = 1;
    let d = directory(cfg, store, clock.clone()).await;
    let copies = CopyStores::new();
    let (urls, vol, order, spare) = three_replicas_and_a_spare(&d, &copies).await;
    let (bad, failing, draining) = (order[0], order[1], order[2]);
    beat(&d, bad, vec![quarantined(vol)]).await;
    {
        let mut refused = copies.refused.lock().expect("refused");
        refused.insert(urls[&bad].clone());
        refused.insert(urls[&draining].clone());
    }
    d.set_store_lifecycle(
        draining,
        haystack_proto::directory::StoreLifecycle::Draining,
    )
    .await
    .expect("drain");

    assert_eq!(
        d.drain_once().await.expect("drain"),
        Some(vol),
        "imports tried: {:?}",
        copies.imports.lock().expect("imports")
    );
    let now: Vec<u64> = d
        .volume(vol)
        .expect("volume")
        .replicas
        .iter()
        .map(|r| r.store_id)
        .collect();
    assert!(now.contains(&spare) && !now.contains(&draining), "{now:?}");
    let imports = copies.imports.lock().expect("imports").clone();
    assert!(!imports.contains(&urls[&bad]), "{imports:?}");
    assert_eq!(
        imports,
        vec![urls[&draining].clone(), urls[&failing].clone()],
        "the draining store (refusing), then the next"
    );
}

/// Regression: a move whose copy did not match its source (needle counts differ: damage, or
/// an append after the export began) left that copy on the target, which then refused every
/// later import of the volume (409: it holds needles), so the move failed for good. Now the
/// unused copy is listed in the volume's `moved_away` (the record's replicas untouched) and
/// the repair worker drops it (`?moved=true`) as it drops a moved replica's old copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_does_not_match_its_source_is_dropped_from_the_target() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.min_writable_volumes = 1;
    cfg.moved_copy_keep_ms = 0;
    let d = directory(cfg, store, clock.clone()).await;
    let drops: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let drops = drops.clone();
        move |req: actix_web::HttpRequest, _| {
            let drops = drops.clone();
            async move {
                let path = req.path().to_string();
                let v: u32 = path
                    .trim_start_matches("/v1/volumes/")
                    .split('/')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                match (req.method().as_str(), path.rsplit('/').next().unwrap_or("")) {
                    ("POST", "import") => actix_web::HttpResponse::Ok().json(VolumeInfo {
                        needles: 5,
                        ..volume_info(v)
                    }),
                    ("GET", "digest") => actix_web::HttpResponse::Ok().json(serde_json::json!({
                        "volume": v, "needles": 6, "buckets": ["0000000000000000"]
                    })),
                    ("GET", _) => actix_web::HttpResponse::Ok().json(VolumeInfo {
                        needles: 6,
                        ..volume_info(v)
                    }),
                    ("DELETE", _) => {
                        drops.lock().expect("drops").push(format!(
                            "{} {}?{}",
                            req.connection_info().host(),
                            path,
                            req.query_string()
                        ));
                        actix_web::HttpResponse::NoContent().finish()
                    }
                    _ => actix_web::HttpResponse::Ok().json(serde_json::json!({})),
                }
            }
        }
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (url, _) = crate::common::scripted(handler.clone());
        ids.push(register_at(&d, &url).await);
    }
    let vol = d.create_volume().await.expect("create").id;
    for id in &ids {
        beat(&d, *id, vec![volume_info(vol)]).await;
    }
    let (spare_url, spare_log) = crate::common::scripted(handler);
    let spare = register_at(&d, &spare_url).await;
    beat(&d, spare, vec![]).await;
    d.set_store_lifecycle(ids[0], haystack_proto::directory::StoreLifecycle::Draining)
        .await
        .expect("drain");
    assert_eq!(
        d.drain_once().await.expect("drain"),
        None,
        "the move failed"
    );
    let import = format!("POST /v1/volumes/{vol}/import");
    assert!(spare_log.lock().expect("log").contains(&import));
    let v = d.volume(vol).expect("volume");
    let now: Vec<u64> = v.replicas.iter().map(|r| r.store_id).collect();
    assert!(now.contains(&ids[0]) && !now.contains(&spare), "{now:?}");
    assert_eq!(v.moved_away, vec![spare], "the unused copy is not listed");
    d.repair_once().await.expect("repair round");
    let host = spare_url.trim_start_matches("http://");
    let dropped = format!("{host} /v1/volumes/{vol}?moved=true");
    assert!(
        drops.lock().expect("drops").contains(&dropped),
        "the unused copy stayed on the target: {:?}",
        drops.lock().expect("drops")
    );
    assert!(d.volume(vol).expect("volume").moved_away.is_empty());
}

/// Regression: a drain or rebalance copied the moved replica from another replica and tried
/// the replica being moved last, then replaced it: a photo acknowledged under a quorum or one
/// write-ack lives on one replica until its queued copies land, and when that replica was the
/// one moved (its copies unable to land, on a sealed or full volume) the photo was lost with
/// it. Now the replica being moved is the first source while it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_copies_from_the_replica_it_moves_first() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(3);
    cfg.min_writable_volumes = 1;
    let d = directory(cfg, store, clock.clone()).await;
    let copies = CopyStores::new();
    let (urls, vol, order, spare) = three_replicas_and_a_spare(&d, &copies).await;
    let draining = order[0];
    d.set_store_lifecycle(
        draining,
        haystack_proto::directory::StoreLifecycle::Draining,
    )
    .await
    .expect("drain");
    assert_eq!(d.drain_once().await.expect("drain"), Some(vol));
    let now: Vec<u64> = d
        .volume(vol)
        .expect("volume")
        .replicas
        .iter()
        .map(|r| r.store_id)
        .collect();
    assert!(now.contains(&spare) && !now.contains(&draining), "{now:?}");
    let imports = copies.imports.lock().expect("imports").clone();
    assert_eq!(
        imports,
        vec![urls[&draining].clone()],
        "the new replica is a copy of the one it replaces"
    );
}

/// A volume on two of the three registered stores `ids` (replication 2), every store
/// heartbeating (the two with the volume); the volume, its replicas and the third store.
async fn volume_beside_a_spare(d: &Directory, ids: &[u64]) -> (u32, Vec<u64>, u64) {
    let vol = d.create_volume().await.expect("create").id;
    let replicas: Vec<u64> = d
        .volume(vol)
        .expect("volume")
        .replicas
        .iter()
        .map(|r| r.store_id)
        .collect();
    let spare = *ids.iter().find(|i| !replicas.contains(i)).expect("spare");
    for id in ids {
        let held = if *id == spare {
            vec![]
        } else {
            vec![volume_info(vol)]
        };
        beat(d, *id, held).await;
    }
    (vol, replicas, spare)
}

/// A scripted store whose replicas compare equal (every digest the same), logging each
/// DELETE with its query; its URL and that log.
fn equal_store() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let drops: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = drops.clone();
    let (url, _) = crate::common::scripted(move |req, _| {
        let seen = seen.clone();
        async move {
            if req.method() == actix_web::http::Method::DELETE {
                seen.lock()
                    .expect("drops")
                    .push(format!("{}?{}", req.path(), req.query_string()));
                return actix_web::HttpResponse::NoContent().finish();
            }
            if req.path().ends_with("/digest") {
                return actix_web::HttpResponse::Ok().json(serde_json::json!({
                    "volume": 1, "needles": 0, "buckets": ["0000000000000000"]
                }));
            }
            actix_web::HttpResponse::Ok().json(serde_json::json!({}))
        }
    });
    (url, drops)
}

/// A scripted store whose digests are all `fill` (so stores with different fills differ)
/// and whose needle listing is `needles`, logging each DELETE with its query.
fn digest_store(
    fill: char,
    needles: Arc<std::sync::Mutex<serde_json::Value>>,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let drops: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = drops.clone();
    let (url, _) = crate::common::scripted(move |req, _| {
        let (seen, needles) = (seen.clone(), needles.lock().expect("needles").clone());
        async move {
            if req.method() == actix_web::http::Method::DELETE {
                seen.lock()
                    .expect("drops")
                    .push(format!("{}?{}", req.path(), req.query_string()));
                return actix_web::HttpResponse::NoContent().finish();
            }
            if req.path().ends_with("/digest") {
                let n: usize = req
                    .query_string()
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("buckets="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let b: String = std::iter::repeat_n(fill, 16).collect();
                return actix_web::HttpResponse::Ok().json(serde_json::json!({
                    "volume": 1, "needles": 1, "buckets": vec![b; n]
                }));
            }
            if req.path().ends_with("/needles") {
                return actix_web::HttpResponse::Ok()
                    .json(serde_json::json!({ "volume": 1, "needles": needles }));
            }
            actix_web::HttpResponse::Ok().json(serde_json::json!({}))
        }
    });
    (url, drops)
}

/// Regression: replicas that differ only by needles no photo record names (garbage a failed
/// upload left on some of them) counted as "replicas differ" for the drop of a moved copy,
/// although no repair was queued: the copy was never dropped, and every pass compared the
/// replicas again. Such a difference no longer holds the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_copy_is_dropped_when_replicas_differ_only_by_garbage() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.min_writable_volumes = 1;
    cfg.moved_copy_keep_ms = 0;
    let d = directory(cfg, store, clock.clone()).await;
    let garbage = serde_json::json!([{ "key": "77", "alt": 0, "deleted": false }]);
    let mut ids = Vec::new();
    let mut logs = Vec::new();
    for (i, fill) in ['0', '1', '2'].into_iter().enumerate() {
        let listed = if i == 0 {
            garbage.clone()
        } else {
            serde_json::json!([])
        };
        let (url, drops) = digest_store(fill, Arc::new(std::sync::Mutex::new(listed)));
        ids.push(register_at(&d, &url).await);
        logs.push(drops);
    }
    let (vol, replicas, spare) = volume_beside_a_spare(&d, &ids).await;
    let old = replicas[0];
    let old_log = logs[ids.iter().position(|i| *i == old).expect("old")].clone();
    d.replace_replica(vol, old, spare).await.expect("replace");
    d.repair_once().await.expect("repair round");
    assert!(d.repairs().await.expect("repairs").is_empty());
    assert!(
        old_log
            .lock()
            .expect("log")
            .contains(&format!("/v1/volumes/{vol}?moved=true")),
        "the moved copy was kept: {:?}",
        old_log.lock().expect("log")
    );
    assert!(d.volume(vol).expect("volume").moved_away.is_empty());
}

/// The other side of the rule above: replicas that differ about a live photo's needle keep
/// the moved copy, even when the comparison queued nothing (here a needle deleted on one
/// replica and absent on the other: an anomaly no copy repair is queued for, where the moved
/// copy may hold the only live needle), for a day (then it goes: nothing would repair it).
/// 9c1dc24 dropped it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_copy_is_kept_while_replicas_differ_on_a_live_photo() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.min_writable_volumes = 1;
    cfg.moved_copy_keep_ms = 0;
    let d = directory(cfg, store, clock.clone()).await;
    let mut ids = Vec::new();
    let mut logs = Vec::new();
    let mut listings = Vec::new();
    for fill in ['0', '1', '2'] {
        let listing = Arc::new(std::sync::Mutex::new(serde_json::json!([])));
        let (url, drops) = digest_store(fill, listing.clone());
        ids.push(register_at(&d, &url).await);
        logs.push(drops);
        listings.push(listing);
    }
    let (vol, replicas, spare) = volume_beside_a_spare(&d, &ids).await;
    let a = d.assign(&AssignRequest::default()).expect("assign");
    d.commit(keyed_commit(&a, "k", None).commit)
        .await
        .expect("commit");
    let (old, kept) = (replicas[0], replicas[1]);
    let at = |id: u64| ids.iter().position(|i| *i == id).expect("store");
    d.replace_replica(vol, old, spare).await.expect("replace");
    // The kept replica holds the live photo's needle deleted; the new one lacks it.
    *listings[at(kept)].lock().expect("listing") =
        serde_json::json!([{ "key": a.id.to_string(), "alt": 0, "deleted": true }]);
    d.repair_once().await.expect("repair round");
    assert!(
        logs[at(old)].lock().expect("log").is_empty(),
        "the moved copy was dropped: {:?}",
        logs[at(old)].lock().expect("log")
    );
    assert_eq!(d.volume(vol).expect("volume").moved_away, vec![old]);
    // Nothing repairs such a difference: the copy is kept a day, not for good.
    clock.advance_ms(86_400_000);
    for (id, held) in [
        (kept, vec![volume_info(vol)]),
        (spare, vec![volume_info(vol)]),
    ] {
        beat(&d, id, held).await;
    }
    beat(&d, old, vec![volume_info(vol)]).await;
    d.repair_once().await.expect("repair round");
    assert!(
        logs[at(old)]
            .lock()
            .expect("log")
            .contains(&format!("/v1/volumes/{vol}?moved=true")),
        "kept past a day: {:?}",
        d.volume(vol)
    );
}

/// A moved-away copy whose store's machine was replaced, a new store id registered at the
/// same URL, leaves the list without a DELETE: that URL's volume is the new store's now
/// (it may even be a replica of the same volume, placed there by id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_copy_whose_url_another_store_took_is_forgotten_not_dropped() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.min_writable_volumes = 1;
    cfg.moved_copy_keep_ms = 0;
    let d = directory(cfg, store, clock.clone()).await;
    let mut ids = Vec::new();
    let mut logs = Vec::new();
    for _ in 0..3 {
        let (url, drops) = equal_store();
        ids.push((register_at(&d, &url).await, url));
        logs.push(drops);
    }
    let vol = d.create_volume().await.expect("create").id;
    let replicas: Vec<u64> = d
        .volume(vol)
        .expect("volume")
        .replicas
        .iter()
        .map(|r| r.store_id)
        .collect();
    let spare = ids
        .iter()
        .find(|(i, _)| !replicas.contains(i))
        .expect("spare")
        .0;
    for (id, _) in &ids {
        let held = if *id == spare {
            vec![]
        } else {
            vec![volume_info(vol)]
        };
        beat(&d, *id, held).await;
    }
    let old = replicas[0];
    let pos = ids.iter().position(|(i, _)| *i == old).expect("old");
    d.replace_replica(vol, old, spare).await.expect("replace");
    // The old machine is replaced: a new store id at its URL.
    let fresh = register_at(&d, &ids[pos].1).await;
    assert_ne!(fresh, old);
    beat(&d, fresh, vec![]).await;
    d.repair_once().await.expect("repair round");
    assert!(
        logs[pos].lock().expect("log").is_empty(),
        "a DELETE reached the URL's new store: {:?}",
        logs[pos].lock().expect("log")
    );
    assert!(d.volume(vol).expect("volume").moved_away.is_empty());
}

/// The copy a move replaced is dropped by the repair worker (`DELETE /v1/volumes/{v}?moved=true`
/// on its store), and only once it is `moved_copy_keep_ms` old and no repair of its volume is
/// queued (a repair may still need it as a last-resort source); until then its store is not a
/// target for the volume. Before, nothing ever dropped it (see the ops test
/// `rereplication::a_moved_replicas_old_copy_is_dropped_and_the_volume_can_move_back`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_replicas_old_copy_is_dropped_once_old_enough_and_unneeded() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.min_writable_volumes = 1;
    cfg.moved_copy_keep_ms = 5_000;
    let meta = Meta::new(store.clone());
    let d = directory(cfg, store, clock.clone()).await;
    let mut ids = Vec::new();
    let mut logs = Vec::new();
    for _ in 0..3 {
        let (url, drops) = equal_store();
        ids.push(register_at(&d, &url).await);
        logs.push(drops);
    }
    let vol = d.create_volume().await.expect("create").id;
    let replicas: Vec<u64> = d
        .volume(vol)
        .expect("volume")
        .replicas
        .iter()
        .map(|r| r.store_id)
        .collect();
    let spare = *ids.iter().find(|i| !replicas.contains(i)).expect("spare");
    let old = replicas[0];
    let old_log = logs[ids.iter().position(|i| *i == old).expect("old")].clone();
    for id in &ids {
        let held = if *id == spare {
            vec![]
        } else {
            vec![volume_info(vol)]
        };
        beat(&d, *id, held).await;
    }
    d.replace_replica(vol, old, spare).await.expect("replace");
    assert_eq!(d.volume(vol).expect("volume").moved_away, vec![old]);
    // Its store takes the volume back only once the old copy is dropped.
    assert!(matches!(
        d.replace_replica(vol, spare, old).await,
        Err(DirectoryError::Conflict(_))
    ));
    let drop_call = format!("/v1/volumes/{vol}?moved=true");
    let dropped = || old_log.lock().expect("log").contains(&drop_call);

    d.repair_once().await.expect("repair round");
    assert!(!dropped(), "dropped before moved_copy_keep_ms");
    clock.advance_ms(6_000);
    assert!(d
        .enqueue_repair(
            12_345,
            vol,
            spare,
            haystack_proto::directory::RepairAction::Copy,
            Vec::new(),
            "a copy the move left behind",
        )
        .await
        .expect("enqueue"));
    d.repair_once().await.expect("repair round");
    assert!(
        !dropped(),
        "dropped while a repair of the volume was queued"
    );
    assert_eq!(d.volume(vol).expect("volume").moved_away, vec![old]);
    // The repair is done (here: taken off the queue), and the next pass drops the copy.
    let rec = meta.get_repair(12_345).await.expect("get").expect("queued");
    meta.delete_repair(12_345, rec.version)
        .await
        .expect("delete");
    d.repair_once().await.expect("repair round");
    assert!(dropped(), "{:?}", old_log.lock().expect("log"));
    assert!(d.volume(vol).expect("volume").moved_away.is_empty());
}

/// Regression: the repair worker judged "an asynchronous remote replica" from its own view
/// even when the records, not its view, had told it the task's store holds a replica: with a
/// view older than the remote's placement, a still-seeding remote's `no_such_volume` answer to
/// a queued delete counted as done (as for an ordinary replica), and the seed, exported
/// before the delete, kept the photo live there. Now the records say whether it is remote.
/// Before the fix the task left the queue after the first pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeding_remote_known_only_from_the_records_keeps_its_delete_queued() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(1);
    cfg.min_writable_volumes = 1;
    cfg.remote_zones = vec!["far".into()];
    cfg.async_replicas = 1;
    let d1 = directory(cfg.clone(), store.clone(), clock.clone()).await;
    let d2 = directory(cfg, store, clock.clone()).await;
    let (a_url, _) = crate::common::scripted(|_, _| async {
        actix_web::HttpResponse::Ok().json(serde_json::json!({}))
    });
    let a = register_at(&d1, &a_url).await;
    let vol = d1.create_volume().await.expect("create").id;
    beat(&d1, a, vec![volume_info(vol)]).await;
    // The second instance's view: the volume, no remote yet.
    d2.refresh().await.expect("refresh");
    let (r_url, r_log) = crate::common::scripted(|_, _| async {
        actix_web::HttpResponse::NotFound().json(serde_json::json!({
            "error": "no_such_volume", "message": "no such volume here"
        }))
    });
    let r = d1
        .register(StoreRegistration {
            store_id: None,
            public_url: r_url,
            zone: Some("far".into()),
            rack: None,
            capacity_bytes: 100 << 30,
            free_bytes: 10 << 30,
        })
        .await
        .expect("register")
        .store_id;
    beat(&d1, r, vec![]).await;
    d1.ensure_remote_replicas().await.expect("remote placed");
    assert!(
        d1.volume(vol)
            .expect("volume")
            .remote_replicas
            .iter()
            .any(|x| x.store_id == r),
        "no remote replica placed"
    );
    let x = d1.assign(&AssignRequest::default()).expect("assign");
    assert_eq!(x.volume_id, vol);
    d1.commit(keyed_commit(&x, "k", None).commit)
        .await
        .expect("commit");
    // The delete's own call to the remote is answered no_such_volume, which queues it
    // (60ffd9e); queued here too in case that call went otherwise.
    d1.delete(x.id).await.expect("delete");
    d1.enqueue_repair(
        x.id,
        vol,
        r,
        haystack_proto::directory::RepairAction::Delete,
        Vec::new(),
        "a delete the seeding remote answered no_such_volume",
    )
    .await
    .expect("enqueue");
    // The queue is worked by the second instance, whose view is older than the remote.
    d2.repair_once().await.expect("repair round");
    let gc = format!("POST /v1/volumes/{vol}/gc");
    assert!(
        r_log.lock().expect("log").contains(&gc),
        "the delete was not tried: {:?}",
        r_log.lock().expect("log")
    );
    let queue = d2.repairs().await.expect("repairs");
    assert!(
        queue.iter().any(|t| t.store_id == r && t.photo_id == x.id),
        "the seeding remote's delete left the queue: {queue:?}"
    );
}

/// Regression: a commit naming, as left behind by its quorum write, a replica that a move
/// replaced after the assignment was refused (400 "holds no replica", a 500 to the uploader's
/// client) although the photo's bytes were on a quorum. Now the copy is queued for the store
/// that replaced it (whose copy of the volume may predate the write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_commit_naming_a_replica_moved_since_queues_its_copy_for_the_replacement() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.min_writable_volumes = 1;
    let d = directory(cfg, store, clock.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (url, _) = crate::common::scripted(|_, _| async {
            actix_web::HttpResponse::Ok().json(serde_json::json!({}))
        });
        ids.push(register_at(&d, &url).await);
    }
    let (vol, replicas, spare) = volume_beside_a_spare(&d, &ids).await;
    let a = d.assign(&AssignRequest::default()).expect("assign");
    assert_eq!(a.volume_id, vol);
    // A store that never held the volume is refused, nothing queued.
    let mut c = keyed_commit(&a, "k", None);
    c.pending_replicas = vec![999];
    assert!(matches!(
        d.commit_keyed(c).await,
        Err(DirectoryError::BadRequest(_))
    ));
    assert!(d.repairs().await.expect("repairs").is_empty());
    let left_behind = replicas[1];
    d.replace_replica(vol, left_behind, spare)
        .await
        .expect("replace");
    let mut c = keyed_commit(&a, "k", None);
    c.pending_replicas = vec![left_behind];
    let info = d.commit_keyed(c).await.expect("commit");
    assert_eq!(info.id, a.id);
    let queue = d.repairs().await.expect("repairs");
    assert!(
        queue.iter().any(|t| t.photo_id == a.id
            && t.store_id == spare
            && t.action == haystack_proto::directory::RepairAction::Copy),
        "{queue:?}"
    );
}

/// A delete queued by one instance for a replica it just switched in is carried out by the
/// instance working the repair queue even while that one's view still has the old replicas.
/// Before, the worker took "not a replica in my view" for "the replica moved away" and dropped
/// the task as done: the deleted photo's needle stayed live on the new replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_queued_by_another_instance_for_a_new_replica_is_not_dropped() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.min_writable_volumes = 1;
    let d1 = directory(cfg.clone(), store.clone(), clock.clone()).await;
    let d2 = directory(cfg, store, clock.clone()).await;
    let mut ids = Vec::new();
    let mut logs = Vec::new();
    for _ in 0..2 {
        let (url, log) = crate::common::scripted(|_, _| async {
            actix_web::HttpResponse::Ok().json(serde_json::json!({}))
        });
        ids.push(register_at(&d1, &url).await);
        logs.push(log);
    }
    let vol = d1.create_volume().await.expect("create").id;
    for id in &ids {
        beat(&d1, *id, vec![volume_info(vol)]).await;
    }
    let (c_url, c_log) = crate::common::scripted(|_, _| async {
        actix_web::HttpResponse::Ok().json(serde_json::json!({}))
    });
    let c = register_at(&d1, &c_url).await;
    beat(&d1, c, vec![]).await;
    // The second instance knows every store, and the volume on its first two replicas.
    d2.refresh().await.expect("refresh");

    let a = d1.assign(&AssignRequest::default()).expect("assign");
    d1.commit(keyed_commit(&a, "unused", None).commit)
        .await
        .expect("commit");
    d1.delete(a.id).await.expect("delete");
    // The first instance moves a replica onto C and queues the delete C missed (as its
    // comparison of the moved replicas would).
    d1.replace_replica(vol, ids[0], c).await.expect("replace");
    assert!(d1
        .enqueue_repair(
            a.id,
            vol,
            c,
            haystack_proto::directory::RepairAction::Delete,
            Vec::new(),
            "a delete the new replica missed",
        )
        .await
        .expect("enqueue"));

    // The queue is worked by the second instance, whose view is a round old.
    d2.repair_once().await.expect("repair round");
    let gc = format!("POST /v1/volumes/{vol}/gc");
    let queue = d2.repairs().await.expect("repairs");
    let log = c_log.lock().expect("log").clone();
    assert!(
        log.contains(&gc),
        "the new replica never got the delete: {log:?}; queue: {queue:?}"
    );
    assert!(queue.is_empty(), "{queue:?}");
}

/// A keyed commit of a fresh id cut between its two writes: it queued the copy for `pending`
/// (a replica its quorum write left behind), bound its key `key`, and died before the photo
/// record. The assignment.
async fn cut_keyed_commit(
    d: &Directory,
    meta: &Meta,
    now_ms: u64,
    pending: u64,
    key: &str,
) -> AssignResponse {
    let a = d.assign(&AssignRequest::default()).expect("assign");
    let photo = Photo {
        id: a.id,
        volume_id: a.volume_id,
        cookie: a.cookie,
        kind: PhotoKind::Photo,
        variants: keyed_commit(&a, key, None).commit.variants,
        chunks: vec![],
        created_ms: now_ms,
        deleted: false,
        deleted_ms: None,
        condemned: false,
    };
    d.enqueue_repair(
        a.id,
        a.volume_id,
        pending,
        haystack_proto::directory::RepairAction::Copy,
        Vec::new(),
        "replica missing from a quorum write",
    )
    .await
    .expect("enqueue");
    let rec = UploadKey {
        key: key.to_string(),
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Photo,
        created_ms: now_ms,
        photo: Some(photo),
        request_hash: None,
    };
    meta.put_upload(fnv1a64(key.as_bytes()), &rec, Expect::Absent)
        .await
        .expect("put");
    a
}

/// The photos with queued repairs.
async fn queued_photos(d: &Directory) -> Vec<u64> {
    d.repairs()
        .await
        .expect("repairs")
        .into_iter()
        .map(|t| t.photo_id)
        .collect()
}

/// A keyed commit cut between its two writes, with a replica its quorum write left behind:
/// the copy it queued first waits for the photo record as long as the key can still complete
/// the commit (its idempotency window), not only the commit's own grace of a minute, and is
/// dropped once the key can no longer complete it. Before, the copy was dropped after the
/// minute: a commit completed later from its key left the photo with no copy queued.
#[tokio::test]
async fn a_copy_queued_by_a_cut_commit_waits_for_its_completion_from_the_key() {
    let (_d, store) = embedded();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(2);
    cfg.min_writable_volumes = 1;
    cfg.idempotency_ttl_ms = 3_600_000;
    let meta = Meta::new(store.clone());
    let d = directory(cfg, store, clock.clone()).await;
    let (s1, s2) = (register(&d, 1, None).await, register(&d, 2, None).await);
    let vol = d.create_volume().await.expect("create").id;
    beat(&d, s1, vec![volume_info(vol)]).await;
    beat(&d, s2, vec![volume_info(vol)]).await;

    // Two cut commits: the first is completed from its key after the grace, the second never.
    let a = cut_keyed_commit(&d, &meta, T0, s2, "k-a").await;
    let b = cut_keyed_commit(&d, &meta, T0, s2, "k-b").await;
    clock.advance_ms(120_000);
    d.repair_once().await.expect("repair round");
    let r = d.assign_idempotent(&keyed("k-a")).await.expect("replay");
    assert!(r.replayed && r.id == a.id, "{r:?}");
    let queued = queued_photos(&d).await;
    assert!(
        queued.contains(&a.id),
        "the completed photo's copy was dropped: {queued:?}"
    );
    assert!(
        queued.contains(&b.id),
        "dropped within the window: {queued:?}"
    );
    // Past the key's window (and the grace) the second can no longer be completed: dropped.
    // The first's copy is tried (and fails: no store answers here), so it stays.
    clock.advance_ms(3_600_000);
    d.repair_once().await.expect("repair round");
    assert_eq!(queued_photos(&d).await, vec![a.id]);
}
