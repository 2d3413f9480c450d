//! Self-healing over a real cluster: a corrupt replica repaired after a reader's report and by
//! the scrubber with no reads at all, a delete a stopped store missed applied when it returns,
//! a needle one replica lacks copied by anti-entropy, a delete never undone by it, and a write
//! acknowledged by one replica of two completed on the other by the repair worker.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haystack_client::store::{encode_batch, Needle, WriteAck};
use haystack_client::{Credentials, DirectoryClient, StoreClient};
use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, DamageKind, DamageReport, KeyedCommit, PhotoKind,
    RepairAction, Variant,
};
use haystack_proto::NeedleAddr;
use haystack_testkit::{Cluster, ClusterOptions};

pub(crate) fn clients(c: &Cluster) -> (DirectoryClient, StoreClient) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // The tests speak for the cluster (assign, commit, needle writes), as the uploader does.
    let creds = Credentials::internal(Some(c.keys()), "test");
    (
        DirectoryClient::with_http(&c.directory_url(), http.clone())
            .with_credentials(creds.clone()),
        StoreClient::new(http).with_credentials(creds),
    )
}

/// 8 KiB that appear nowhere else in a volume (the id is in every line).
pub(crate) fn payload(id: u64) -> Bytes {
    let mut v = Vec::with_capacity(8192);
    while v.len() < 8192 {
        v.extend_from_slice(format!("photo {id:020} byte {:06} |", v.len()).as_bytes());
    }
    v.truncate(8192);
    Bytes::from(v)
}

fn commit_request(a: &AssignResponse, data: &Bytes) -> CommitRequest {
    CommitRequest {
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
    }
}

fn needle(data: &Bytes) -> Needle {
    Needle {
        alt: 0,
        content_type: "image/jpeg".into(),
        data: data.clone(),
    }
}

/// Assigns, writes the photo to every replica and commits it.
pub(crate) async fn put_photo(dc: &DirectoryClient, sc: &StoreClient) -> (AssignResponse, Bytes) {
    let a = dc.assign(&AssignRequest::default()).await.unwrap();
    let data = payload(a.id);
    sc.write_batch_all(
        &a.replicas,
        a.volume_id,
        encode_batch(a.id, a.cookie, &[needle(&data)]),
    )
    .await
    .unwrap();
    dc.commit(&commit_request(&a, &data)).await.unwrap();
    (a, data)
}

fn store_index(c: &Cluster, url: &str) -> usize {
    c.store_urls()
        .iter()
        .position(|u| u == url)
        .expect("replica is one of ours")
}

/// Flips one byte inside the photo's data in the volume file of store `dir`.
fn flip_byte(dir: &Path, volume: u32, data: &[u8]) {
    let path = dir.join(format!("vol-{volume}.dat"));
    let mut file = std::fs::read(&path).unwrap();
    let at = file
        .windows(64)
        .position(|w| w == &data[..64])
        .expect("the payload is in the volume file");
    file[at + 100] ^= 0x5a;
    // Write just that byte back (the store has the file open).
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&file[at + 100..at + 101], (at + 100) as u64)
        .unwrap();
    f.sync_all().unwrap();
}

/// Waits (up to `secs`) until `check` holds.
pub(crate) async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn serves(sc: &StoreClient, url: &str, addr: &NeedleAddr, data: &Bytes) -> bool {
    matches!(sc.get_needle(url, addr).await, Ok(n) if n.data == *data)
}

pub(crate) async fn not_found(sc: &StoreClient, url: &str, addr: &NeedleAddr) -> bool {
    matches!(sc.get_needle(url, addr).await, Err(e) if e.is_not_found())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_corrupt_replica_is_rewritten_from_a_good_one() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (dc, sc) = clients(&c);
    let (a, data) = put_photo(&dc, &sc).await;
    let bad = a.replicas[0].url.clone();
    let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
    flip_byte(&c.store_dir(store_index(&c, &bad)), a.volume_id, &data);
    let e = sc.get_needle(&bad, &addr).await.unwrap_err();
    assert_eq!(e.code(), Some("corrupt_needle"), "{e}");

    // A report with the wrong cookie or for another alternate key changes nothing.
    let mut report = DamageReport {
        volume: a.volume_id,
        key: a.id,
        alt: 0,
        cookie: Some(a.cookie ^ 1),
        store_url: bad.clone(),
        kind: DamageKind::Corrupt,
    };
    assert!(!dc.report_damage(&report).await.unwrap().queued);
    report.cookie = Some(a.cookie);
    report.alt = 7;
    assert!(!dc.report_damage(&report).await.unwrap().queued);
    assert!(dc.repairs().await.unwrap().is_empty());

    report.alt = 0;
    assert!(dc.report_damage(&report).await.unwrap().queued);
    eventually(20, "the corrupt replica serves the photo again", || {
        serves(&sc, &bad, &addr, &data)
    })
    .await;
    eventually(10, "the repair queue empties", || async {
        dc.repairs().await.unwrap().is_empty()
    })
    .await;
    // The good replica was never touched and the volume verifies clean everywhere.
    for r in &a.replicas {
        let v: serde_json::Value = sc.verify(&r.url, a.volume_id).await.unwrap();
        assert_eq!(v["corrupt"].as_array().unwrap().len(), 0, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_finds_and_repairs_a_flipped_byte_with_no_reads() {
    let c = Cluster::start(ClusterOptions {
        scrub: haystack_store::ScrubConfig {
            bytes_per_sec: Some(64 << 20),
            min_interval: Duration::ZERO,
            ..Default::default()
        },
        ..ClusterOptions::default()
    })
    .await;
    let (dc, sc) = clients(&c);
    let (a, data) = put_photo(&dc, &sc).await;
    let bad = a.replicas[1].url.clone();
    let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
    flip_byte(&c.store_dir(store_index(&c, &bad)), a.volume_id, &data);
    // Nobody reads the needle: the scrubber reports it, the directory rewrites it. (Reading
    // it here would only check; the store itself never repairs on read.)
    eventually(
        30,
        "the scrubber's report got the replica repaired",
        || async {
            let v: serde_json::Value = sc.verify(&bad, a.volume_id).await.unwrap();
            v["corrupt"].as_array().is_some_and(|c| c.is_empty())
        },
    )
    .await;
    assert!(serves(&sc, &bad, &addr, &data).await);
    let m = reqwest::get(format!("{bad}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("haystack_store_scrub_corrupt_total") && !l.ends_with(" 0")),
        "{m}"
    );
    let vols = sc.volumes(&bad).await.unwrap();
    assert!(vols.iter().any(|v| v.scrubbed_unix.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_a_stopped_store_missed_is_applied_when_it_returns() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let (dc, sc) = clients(&c);
    let (a, data) = put_photo(&dc, &sc).await;
    let away = store_index(&c, &a.replicas[1].url);
    let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
    c.stop_store(away);
    let d = dc.delete(a.id).await.unwrap();
    assert_eq!(d.store_deletes_failed, 1, "{d:?}");
    let queued = dc.repairs().await.unwrap();
    assert!(
        queued
            .iter()
            .any(|t| t.photo_id == a.id && t.action == RepairAction::Delete),
        "{queued:?}"
    );
    c.start_store(away);
    let url = c.store_url(away);
    // Before the directory retried deletes, the returned store served the deleted photo's
    // needle to anyone with its URL until `haystack gc` ran.
    eventually(30, "the returned store no longer serves the needle", || {
        not_found(&sc, &url, &addr)
    })
    .await;
    assert!(not_found(&sc, &a.replicas[0].url, &addr).await);
    eventually(10, "the repair queue empties", || async {
        dc.repairs().await.unwrap().is_empty()
    })
    .await;
    drop(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_copies_a_missing_needle_and_never_undoes_a_delete() {
    let c = Cluster::start(ClusterOptions {
        anti_entropy_interval_ms: 300,
        ..ClusterOptions::default()
    })
    .await;
    let (dc, sc) = clients(&c);
    // Photo 1 reaches only the first replica (a write path that skipped one) and commits.
    let a = dc.assign(&AssignRequest::default()).await.unwrap();
    let data = payload(a.id);
    sc.put_batch(
        &a.replicas[0].url,
        a.volume_id,
        encode_batch(a.id, a.cookie, &[needle(&data)]),
    )
    .await
    .unwrap();
    dc.commit(&commit_request(&a, &data)).await.unwrap();
    let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
    let other = a.replicas[1].url.clone();
    assert!(not_found(&sc, &other, &addr).await);
    eventually(
        30,
        "anti-entropy copied the needle to the replica lacking it",
        || serves(&sc, &other, &addr, &data),
    )
    .await;

    // Photo 2 is live in the directory, but one replica has its needle deleted: repair must
    // not bring it back (a delete is never undone), and the other replica keeps it.
    let (b, bdata) = put_photo(&dc, &sc).await;
    let baddr = NeedleAddr::new(b.volume_id, b.id, 0, b.cookie);
    sc.delete_needle(&b.replicas[0].url, &baddr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(not_found(&sc, &b.replicas[0].url, &baddr).await);
    assert!(serves(&sc, &b.replicas[1].url, &baddr, &bdata).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_by_one_replica_is_completed_on_the_other() {
    // The directory keeps the stopped store "up" for the length of the test, so the volume
    // stays writable and the write meets the dead replica (as a write to a store that dies
    // mid-upload would).
    let mut c = Cluster::start(ClusterOptions {
        store_timeout_ms: 120_000,
        ..ClusterOptions::default()
    })
    .await;
    let (dc, sc) = clients(&c);
    let a = dc.assign(&AssignRequest::default()).await.unwrap();
    let data = payload(a.id);
    let away = store_index(&c, &a.replicas[1].url);
    c.stop_store(away);
    let batch = encode_batch(a.id, a.cookie, &[needle(&data)]);
    // `all` cannot be met with a replica down...
    assert!(sc
        .write_batch_acked(&a.replicas, a.volume_id, batch.clone(), WriteAck::All)
        .await
        .is_err());
    // ...`one` can: the commit names the replica still missing the needles.
    let pending = sc
        .write_batch_acked(&a.replicas, a.volume_id, batch, WriteAck::One)
        .await
        .unwrap();
    assert_eq!(pending, vec![a.replicas[1].store_id]);
    dc.commit_keyed(&KeyedCommit {
        commit: commit_request(&a, &data),
        idempotency_key: None,
        request_hash: None,
        pending_replicas: pending,
    })
    .await
    .unwrap();
    let queued = dc.repairs().await.unwrap();
    assert!(
        queued
            .iter()
            .any(|t| t.photo_id == a.id && t.action == RepairAction::Copy),
        "{queued:?}"
    );
    c.start_store(away);
    let addr = NeedleAddr::new(a.volume_id, a.id, 0, a.cookie);
    let returned = c.store_url(away);
    eventually(
        40,
        "the needle appears on the returned replica, byte for byte",
        || serves(&sc, &returned, &addr, &data),
    )
    .await;
}
