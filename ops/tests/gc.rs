//! `haystack gc` against a commit that comes after gc looked at an id: once gc has decided
//! that an id's needles are orphans it may delete them at any later moment (on any replica),
//! so from then on that id must never become a committed photo.

use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, PhotoKind, Replica, Variant,
};
use haystack_proto::format_cookie;
use haystack_testkit::{Cluster, ClusterOptions};
use serde_json::Value;

const BODY: &[u8] = &[7u8; 3000];

/// An upload's first half: an assignment and its needle on every replica, not committed.
async fn write_uncommitted(c: &reqwest::Client, dir: &str) -> AssignResponse {
    let a: AssignResponse = c
        .post(format!("{dir}/v1/assign"))
        .json(&AssignRequest::default())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for r in &a.replicas {
        let put = c.put(needle_url(r, &a)).body(BODY).send().await.unwrap();
        assert_eq!(put.status(), 201);
    }
    a
}

fn needle_url(r: &Replica, a: &AssignResponse) -> String {
    format!(
        "{}/v1/needles/{}/{}/0/{}",
        r.url,
        a.volume_id,
        a.id,
        format_cookie(a.cookie)
    )
}

async fn commit(c: &reqwest::Client, dir: &str, a: &AssignResponse) -> u16 {
    let req = CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Photo,
        variants: vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: BODY.len() as u64,
            content_type: "image/jpeg".into(),
        }],
        chunks: vec![],
    };
    c.post(format!("{dir}/v1/photos"))
        .json(&req)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn gc(cl: &Cluster, extra: &[&str]) -> Vec<Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args([
            "gc",
            "--grace-secs",
            "0",
            "--json",
            "--directory",
            &cl.directory_url(),
        ])
        .env("HAYSTACK_TOKEN", cl.admin_token())
        .args(extra)
        .output()
        .await
        .expect("haystack gc");
    assert!(
        out.status.success(),
        "gc: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gc JSON")
}

fn deleted(report: &[Value]) -> u64 {
    report
        .iter()
        .map(|r| r["deleted"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_gc_condemned_is_never_committed_and_a_committed_one_keeps_its_needles() {
    let cl = Cluster::start(ClusterOptions::default()).await;
    let dir = cl.directory_url();
    let c = cl.admin_http();

    // A dry run decides nothing: the upload commits afterwards and gc then keeps it.
    let kept = write_uncommitted(&c, &dir).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let report = gc(&cl, &["--dry-run"]).await;
    assert_eq!(deleted(&report), 0);
    assert_eq!(
        commit(&c, &dir, &kept).await,
        200,
        "a dry run condemns nothing"
    );

    // gc lists the orphan's needles, finds no photo and deletes them on both replicas. A
    // commit of that id arriving after gc's check (here: after the whole run, the widest
    // window) must be refused, or the directory would answer a photo whose needles are gone.
    let orphan = write_uncommitted(&c, &dir).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let report = gc(&cl, &[]).await;
    assert_eq!(
        deleted(&report),
        2,
        "the orphan on both replicas: {report:?}"
    );
    let late = commit(&c, &dir, &orphan).await;
    assert_eq!(late, 409, "a commit after gc condemned the id is refused");
    let r = c
        .get(format!("{dir}/v1/photos/{}", orphan.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the condemned id is no photo");
    for r in &orphan.replicas {
        let got = c.get(needle_url(r, &orphan)).send().await.unwrap();
        assert_eq!(got.status(), 404, "gc deleted the orphan on {}", r.url);
    }
    // The committed photo kept its needles on every replica.
    for r in &kept.replicas {
        let got = c.get(needle_url(r, &kept)).send().await.unwrap();
        assert_eq!(got.status(), 200, "{}", r.url);
        assert_eq!(got.bytes().await.unwrap().as_ref(), BODY);
    }
}
