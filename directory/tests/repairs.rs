//! Deletes against work under way: the repair worker copying when a delete lands (the copy
//! must not leave the deleted photo's needle live on the replica it filled), and a replica
//! switched in while a delete's calls are under way (it must get the delete too). Two scripted store machines (test
//! doubles over loopback HTTP): the source, whose needle GET deletes the photo through the
//! directory before it answers (the delete arriving mid-copy, deterministically), and the
//! target, which does not hold the needle yet (its needle DELETE answers 404, as a store's
//! does) and records what it is asked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::HttpResponse;
use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, KeyedCommit, PhotoKind, RepairAction, Variant,
};

use haystack_directory::meta::embedded::EmbeddedStore;
use haystack_directory::meta::faulty::FaultyStore;
use haystack_directory::meta::{Cas, Expect, MetaError, MetadataStore, Stored, Table};
use haystack_directory::DirectoryConfig;

use crate::common::*;

/// A scripted store: `source` deletes the photo through the directory at `dir` on a needle
/// GET, then answers the needle's bytes; otherwise needle DELETEs answer 404, a repair
/// answers that every needle was written, anything else 200. Returns its URL and request log.
fn scripted_store(dir: String, source: bool) -> (String, RequestLog) {
    scripted(move |req, _| {
        let dir = dir.clone();
        async move {
            let needle = req.path().starts_with("/v1/needles/");
            match (req.method().as_str(), needle) {
                ("GET", true) if source => {
                    let photo = req.path().split('/').nth(4).unwrap_or("").to_string();
                    let r = reqwest::Client::new()
                        .delete(format!("{dir}/v1/photos/{photo}"))
                        .send()
                        .await
                        .expect("delete through the directory");
                    assert!(r.status().is_success(), "delete: {}", r.status());
                    HttpResponse::Ok()
                        .content_type("image/jpeg")
                        .body(vec![7u8; 4096])
                }
                ("DELETE", true) if !source => HttpResponse::NotFound()
                    .json(serde_json::json!({"error": "not_found", "message": "no such needle"})),
                ("POST", false) if req.path().ends_with("/repair") => HttpResponse::Ok()
                    .json(serde_json::json!({"results": [{"outcome": "appended"}]})),
                _ => HttpResponse::Ok().json(serde_json::json!({})),
            }
        }
    })
}

/// Heartbeats `stores` until the directory assigns a photo (a volume placed on them).
async fn assign_on(dir: &TestDirectory, stores: &mut [&mut FakeStore]) -> AssignResponse {
    for _ in 0..MAX_POLLS {
        for s in stores.iter_mut() {
            s.heartbeat(&dir.client).await;
        }
        if let Ok(a) = dir.client.assign(&AssignRequest::default()).await {
            return a;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("no volume was placed on the stores");
}

/// Commits assignment `a` as a photo of one JPEG variant per alternate key of `alts`, the
/// replicas in `pending` named as not written yet.
async fn commit_photo(dir: &TestDirectory, a: &AssignResponse, alts: &[u32], pending: Vec<u64>) {
    dir.client
        .commit_keyed(&KeyedCommit {
            commit: CommitRequest {
                id: a.id,
                cookie: a.cookie,
                volume_id: a.volume_id,
                kind: PhotoKind::Photo,
                variants: alts
                    .iter()
                    .map(|&alt| Variant {
                        name: format!("v{alt}"),
                        alt,
                        size_bytes: 4096,
                        content_type: "image/jpeg".into(),
                    })
                    .collect(),
                chunks: Vec::new(),
            },
            idempotency_key: None,
            request_hash: None,
            pending_replicas: pending,
        })
        .await
        .expect("commit");
}

/// Before the fix the target kept the copy: the delete had reached it first (404, counted as
/// done) and the repair worker never looked at the photo again after copying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_repair_copy_leaves_no_live_copy() {
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = DirectoryConfig {
        replication_factor: 2,
        min_writable_volumes: 1,
        ..test_config(data.path())
    };
    let dir = TestDirectory::start(cfg, data.path()).await;
    let (src_url, _) = scripted_store(dir.url.clone(), true);
    let (dst_url, dst_log) = scripted_store(dir.url.clone(), false);
    let mut stores = Vec::new();
    for url in [src_url, dst_url.clone()] {
        let mut s = FakeStore::start(None).await;
        s.url = url;
        s.register(&dir.client).await;
        stores.push(s);
    }
    let a = {
        let mut refs: Vec<&mut FakeStore> = stores.iter_mut().collect();
        assign_on(&dir, &mut refs).await
    };
    let target = stores[1].id;
    assert!(a.replicas.iter().any(|r| r.store_id == target), "{a:?}");
    // The write reached the source only: the commit names the target as still missing it.
    commit_photo(&dir, &a, &[0], vec![target]).await;
    let queued = dir.client.repairs().await.expect("repairs");
    assert!(
        queued
            .iter()
            .any(|t| t.photo_id == a.id && t.action == RepairAction::Copy),
        "{queued:?}"
    );
    // The worker copies (the source deletes the photo mid-copy) until nothing is queued.
    for _ in 0..MAX_POLLS {
        if dir.client.repairs().await.expect("repairs").is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(dir.client.repairs().await.expect("repairs").is_empty());
    let photo = dir.client.lookup(a.id).await;
    assert!(photo.is_err(), "the photo is deleted: {photo:?}");
    // The target took the copy, then a delete of it: no live copy is left.
    let log = dst_log.lock().expect("log").clone();
    let v = a.volume_id;
    let repaired = log
        .iter()
        .rposition(|l| *l == format!("POST /v1/volumes/{v}/repair"))
        .unwrap_or_else(|| panic!("the copy reached the target: {log:?}"));
    assert!(
        log[repaired..]
            .iter()
            .any(|l| *l == format!("POST /v1/volumes/{v}/gc")),
        "the copy made after the delete was left live: {log:?}"
    );
}

/// A scripted store whose needle DELETE first moves volume `plan.0`'s replica from store
/// `plan.1` to store `plan.2` through the directory at `dir` (once), then answers 204: the
/// record switching while a delete's calls are under way, deterministically. Anything else
/// answers 200. Returns its URL and request log.
fn switching_store(dir: String, plan: Arc<Mutex<Option<(u32, u64, u64)>>>) -> (String, RequestLog) {
    scripted(move |req, _| {
        let (dir, plan) = (dir.clone(), plan.clone());
        async move {
            let needle_delete = req.method() == "DELETE" && req.path().starts_with("/v1/needles/");
            let step = if needle_delete {
                plan.lock().expect("plan").take()
            } else {
                None
            };
            if let Some((v, from, to)) = step {
                let r = reqwest::Client::new()
                    .post(format!("{dir}/v1/volumes/{v}/replace"))
                    .json(&serde_json::json!({
                        "from_store_id": from.to_string(),
                        "to_store_id": to.to_string(),
                    }))
                    .send()
                    .await
                    .expect("replace through the directory");
                assert!(r.status().is_success(), "replace: {}", r.status());
            }
            if needle_delete {
                HttpResponse::NoContent().finish()
            } else {
                HttpResponse::Ok().json(serde_json::json!({}))
            }
        }
    })
}

/// A delete whose calls to the stores are under way while the volume's replica moves (re-
/// replication, a drain, `haystack volume repair`): the new replica, not one when the delete
/// read the record, must get the delete too. Store B moves the replica from A to C when its
/// delete arrives. Before, the delete called A and B only and C kept the needle live (the
/// move's own comparison of the replicas could run before B's delete had landed; until
/// anti-entropy, and nothing at all for an erasure-coded shard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_switched_in_during_a_delete_gets_the_delete() {
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = DirectoryConfig {
        replication_factor: 2,
        min_writable_volumes: 1,
        ..test_config(data.path())
    };
    let dir = TestDirectory::start(cfg, data.path()).await;
    let plan = Arc::new(Mutex::new(None));
    let (b_url, _) = switching_store(dir.url.clone(), plan.clone());
    let mut a = FakeStore::start(None).await;
    let mut b = FakeStore::start(None).await;
    b.url = b_url;
    a.register(&dir.client).await;
    b.register(&dir.client).await;
    let x = assign_on(&dir, &mut [&mut a, &mut b]).await;
    // C joins once the volume is placed (on A and B: the only stores then).
    let mut c = FakeStore::start(None).await;
    c.register(&dir.client).await;
    c.heartbeat(&dir.client).await;
    commit_photo(&dir, &x, &[0], Vec::new()).await;
    *plan.lock().expect("plan") = Some((x.volume_id, a.id, c.id));
    dir.client.delete(x.id).await.expect("delete");
    let info = dir.client.volume(x.volume_id).await.expect("volume");
    assert!(
        info.replicas.iter().any(|r| r.store_id == c.id),
        "the replica moved to C during the delete: {info:?}"
    );
    let needle = format!(
        "DELETE /v1/needles/{}/{}/0/{}",
        x.volume_id,
        x.id,
        haystack_proto::format_cookie(x.cookie)
    );
    assert!(
        c.requests().contains(&needle),
        "the replica switched in during the delete never got it: {:?}",
        c.requests()
    );
}

/// A cache node that refuses the first `refusals` purges (503), then takes them (204);
/// returns its URL and request log.
fn flaky_cache(refusals: usize) -> (String, RequestLog) {
    scripted(move |_, n| async move {
        if n <= refusals {
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"error": "unavailable", "message": "not now"}))
        } else {
            HttpResponse::NoContent().finish()
        }
    })
}

/// A cache that misses a delete's purges is asked again, once per photo, until it takes it.
/// Before, the failure was counted and never retried: the node served the deleted photo from memory until
/// its hit recheck (60 s by default) or eviction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_cache_purge_is_retried_until_taken() {
    let data = tempfile::tempdir().expect("tempdir");
    let (cache_url, cache_log) = flaky_cache(2);
    let cfg = DirectoryConfig {
        replication_factor: 1,
        min_writable_volumes: 1,
        cache_purge_urls: vec![cache_url],
        ..test_config(data.path())
    };
    let dir = TestDirectory::start(cfg, data.path()).await;
    let mut s = FakeStore::start(None).await;
    s.register(&dir.client).await;
    let x = assign_on(&dir, &mut [&mut s]).await;
    commit_photo(&dir, &x, &[0, 1], Vec::new()).await;
    let d = dir.client.delete(x.id).await.expect("delete");
    // Both alternate keys' purges refused; a purge forgets the whole photo, so the retry
    // (after 1 s) sends one, which is taken; then no more.
    assert_eq!((d.cache_purges_ok, d.cache_purges_failed), (0, 2), "{d:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cache_log.lock().expect("log").len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the purge was not retried: {:?}",
            cache_log.lock().expect("log")
        );
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let log = cache_log.lock().expect("log").clone();
    let purge = |alt: u32| {
        format!(
            "DELETE /v1/needles/{}/{}/{alt}/{}",
            x.volume_id,
            x.id,
            haystack_proto::format_cookie(x.cookie)
        )
    };
    assert_eq!(log.len(), 3, "taken on the retry, then left alone: {log:?}");
    let mut first = log[..2].to_vec();
    first.sort();
    assert_eq!(first, vec![purge(0), purge(1)], "{log:?}");
    assert!(first.contains(&log[2]), "{log:?}");
}

/// A metadata store over the embedded one that can lose the answer of the next conditional
/// update of a volume record (the write lands, the caller gets an error: a timeout after the
/// commit), and fail every table listing while `lists_down` is set (a refresh of the view).
struct Lossy {
    inner: Arc<dyn MetadataStore>,
    lose_volume_answer: AtomicBool,
    /// Set by that lost write when `down_lists_after` is: listings fail from then on.
    lists_down: AtomicBool,
    down_lists_after: AtomicBool,
}

impl Lossy {
    fn new(data: &std::path::Path) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(EmbeddedStore::open(data).expect("open embedded store")),
            lose_volume_answer: AtomicBool::new(false),
            lists_down: AtomicBool::new(false),
            down_lists_after: AtomicBool::new(false),
        })
    }
}

#[async_trait::async_trait]
impl MetadataStore for Lossy {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn get(&self, table: Table, key: u64) -> Result<Option<Stored>, MetaError> {
        self.inner.get(table, key).await
    }
    async fn put_if(
        &self,
        table: Table,
        key: u64,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        let update = table == Table::Volumes && matches!(expect, Expect::Version(_));
        let r = self.inner.put_if(table, key, expect, data).await;
        if update && matches!(r, Ok(Cas::Applied { .. })) {
            if self.down_lists_after.swap(false, Ordering::SeqCst) {
                self.lists_down.store(true, Ordering::SeqCst);
            }
            if self.lose_volume_answer.swap(false, Ordering::SeqCst) {
                return Err(MetaError::Unavailable(
                    "injected: the write landed, its answer was lost".into(),
                ));
            }
        }
        r
    }
    async fn delete_if(&self, table: Table, key: u64, version: u64) -> Result<Cas, MetaError> {
        self.inner.delete_if(table, key, version).await
    }
    async fn list(&self, table: Table) -> Result<Vec<(u64, Stored)>, MetaError> {
        if self.lists_down.load(Ordering::SeqCst) {
            return Err(MetaError::Unavailable("injected: listings fail".into()));
        }
        self.inner.list(table).await
    }
    async fn ping(&self) -> Result<(), MetaError> {
        self.inner.ping().await
    }
    async fn kv_get(&self, space: u64, key: &str) -> Result<Option<Stored>, MetaError> {
        self.inner.kv_get(space, key).await
    }
    async fn kv_put_if(
        &self,
        space: u64,
        key: &str,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        self.inner.kv_put_if(space, key, expect, data).await
    }
    async fn kv_delete_if(&self, space: u64, key: &str, version: u64) -> Result<Cas, MetaError> {
        self.inner.kv_delete_if(space, key, version).await
    }
    async fn kv_scan(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, MetaError> {
        self.inner.kv_scan(space, prefix, after, limit).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// A scripted store holding one needle (alt 0 of the photo in `photo`), deleted or live:
/// digests and listings say so (every bucket alike), anything else answers 200.
fn holding_store(photo: Arc<Mutex<Option<u64>>>, deleted: bool) -> (String, RequestLog) {
    scripted(move |req, _| {
        let photo = photo.clone();
        async move {
            let q = req.query_string().to_string();
            if req.path().ends_with("/digest") {
                let n: usize = q
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("buckets="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let h = if deleted { "d" } else { "l" };
                return HttpResponse::Ok()
                    .json(serde_json::json!({"needles": 1, "buckets": vec![h; n]}));
            }
            if req.path().ends_with("/needles") {
                let key = photo.lock().expect("photo").unwrap_or(0).to_string();
                return HttpResponse::Ok().json(serde_json::json!({
                    "needles": [{"key": key, "alt": 0, "deleted": deleted}]
                }));
            }
            HttpResponse::Ok().json(serde_json::json!({}))
        }
    })
}

/// A photo committed on A and B, then deleted (A and B hold its needle deleted), and store C
/// holding a copy of the volume taken before the delete (its needle live): the replica on A
/// is about to be replaced by C. The directory runs over `lossy`, anti-entropy off (only the
/// move's own comparison can find the difference).
struct CopiedBeforeADelete {
    dir: TestDirectory,
    volume: u32,
    a: u64,
    c: u64,
    c_log: RequestLog,
}

async fn copied_before_a_delete(data: &std::path::Path, lossy: Arc<Lossy>) -> CopiedBeforeADelete {
    let cfg = DirectoryConfig {
        replication_factor: 2,
        min_writable_volumes: 1,
        anti_entropy_interval_ms: 0,
        ..test_config(data)
    };
    let dir = TestDirectory::start_over(cfg, Arc::new(FaultyStore::new(lossy))).await;
    let photo = Arc::new(Mutex::new(None));
    let mut stores = Vec::new();
    let mut c_log = None;
    for deleted in [true, true, false] {
        let (url, log) = holding_store(photo.clone(), deleted);
        let mut s = FakeStore::start(None).await;
        s.url = url;
        s.register(&dir.client).await;
        stores.push(s);
        c_log = Some(log);
    }
    let mut c = stores.pop().expect("c");
    let x = {
        let mut refs: Vec<&mut FakeStore> = stores.iter_mut().collect();
        assign_on(&dir, &mut refs).await
    };
    c.heartbeat(&dir.client).await;
    *photo.lock().expect("photo") = Some(x.id);
    commit_photo(&dir, &x, &[0], Vec::new()).await;
    dir.client.delete(x.id).await.expect("delete");
    CopiedBeforeADelete {
        volume: x.volume_id,
        a: stores[0].id,
        c: c.id,
        c_log: c_log.expect("c's log"),
        dir,
    }
}

/// Polls until C is asked to delete the photo's needle (the repair queue's gc delete).
async fn wait_for_delete_on(c_log: &RequestLog, volume: u32) {
    let gc = format!("POST /v1/volumes/{volume}/gc");
    for _ in 0..MAX_POLLS {
        if c_log.lock().expect("log").contains(&gc) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "the delete made during the copy stayed live on the new replica: {:?}",
        c_log.lock().expect("log")
    );
}

/// A replace whose answer was lost (the record switched, the caller got a 503) and that is
/// sent again: the retry finds the replica already replaced and still compares the replicas,
/// so the photo deleted during the copy ends deleted on the new replica. Before, the first
/// attempt failed before its comparison and the retry answered at once without one: the
/// needle stayed live on C until anti-entropy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_retried_after_a_lost_answer_still_compares_the_replicas() {
    let data = tempfile::tempdir().expect("tempdir");
    let lossy = Lossy::new(data.path());
    let t = copied_before_a_delete(data.path(), lossy.clone()).await;
    lossy.lose_volume_answer.store(true, Ordering::SeqCst);
    let e = t
        .dir
        .client
        .replace_replica(t.volume, t.a, t.c)
        .await
        .expect_err("the answer is lost");
    assert_eq!(e.status(), Some(503), "{e}");
    let v = t
        .dir
        .client
        .replace_replica(t.volume, t.a, t.c)
        .await
        .expect("the retry answers the replaced volume");
    assert!(v.replicas.iter().any(|r| r.store_id == t.c), "{v:?}");
    wait_for_delete_on(&t.c_log, t.volume).await;
}

/// A replace applied whose refresh of the view then fails still compares the replicas (and
/// answers the replaced volume). Before, the failed refresh answered 503 and skipped the
/// comparison (and a retry found the replica replaced and answered without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_whose_refresh_fails_still_compares_the_replicas() {
    let data = tempfile::tempdir().expect("tempdir");
    let lossy = Lossy::new(data.path());
    let t = copied_before_a_delete(data.path(), lossy.clone()).await;
    lossy.down_lists_after.store(true, Ordering::SeqCst);
    let v = t.dir.client.replace_replica(t.volume, t.a, t.c).await;
    lossy.lists_down.store(false, Ordering::SeqCst);
    let v = v.expect("the replace applied");
    assert!(v.replicas.iter().any(|r| r.store_id == t.c), "{v:?}");
    wait_for_delete_on(&t.c_log, t.volume).await;
}

/// An asynchronous remote replica that answers every request as a store that does not hold
/// the volume yet (a seed in progress) for the first `unseeded` requests, then takes deletes;
/// returns its URL and request log.
fn seeding_remote(unseeded: usize) -> (String, RequestLog) {
    scripted(move |req, n| async move {
        if n <= unseeded {
            return HttpResponse::NotFound().json(serde_json::json!({
                "error": "no_such_volume", "message": "no such volume here"
            }));
        }
        if req.method() == actix_web::http::Method::POST {
            HttpResponse::Ok().json(serde_json::json!({"volume": 0, "deleted": 1, "missing": 0}))
        } else {
            HttpResponse::NoContent().finish()
        }
    })
}

/// Regression: a delete that reached an asynchronous remote replica while its seed was still
/// downloading was answered 404 `no_such_volume`, which the directory took as done (as for a
/// needle not held); the seed, exported by the source before its own delete, then held the
/// needle live, shipping never sends a delete flag for bytes already shipped, anti-entropy
/// skips remote replicas, and after a promotion the deleted photo was served again. Now a
/// remote replica's `no_such_volume` is not done: the repair worker delivers the delete once
/// the remote holds the volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_a_seeding_remote_replica_answered_no_such_volume_is_delivered_later() {
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = DirectoryConfig {
        replication_factor: 1,
        min_writable_volumes: 1,
        remote_zones: vec!["far".into()],
        async_replicas: 1,
        ..test_config(data.path())
    };
    let dir = TestDirectory::start(cfg, data.path()).await;
    let mut a = FakeStore::start(None).await;
    a.register(&dir.client).await;
    let x = assign_on(&dir, &mut [&mut a]).await;
    let (remote_url, remote_log) = seeding_remote(1);
    let mut r = FakeStore::start(Some("far")).await;
    r.url = remote_url;
    r.register(&dir.client).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        a.heartbeat(&dir.client).await;
        r.heartbeat(&dir.client).await;
        let info = dir.client.volume(x.volume_id).await.expect("volume");
        if info.remote_replicas.iter().any(|s| s.store_id == r.id) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no remote replica placed: {info:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    commit_photo(&dir, &x, &[0], Vec::new()).await;
    dir.client.delete(x.id).await.expect("delete");
    // The first answer was no_such_volume; the delete must come again (as the repair
    // worker's cookie-less delete) and be taken.
    let gc = format!("POST /v1/volumes/{}/gc", x.volume_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !remote_log
        .lock()
        .expect("log")
        .iter()
        .any(|l| l.starts_with(&gc))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the delete the unseeded remote answered no_such_volume was never sent again: {:?}",
            remote_log.lock().expect("log")
        );
        tokio::time::sleep(POLL).await;
    }
}
