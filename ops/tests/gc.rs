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

/// S3 data: a run of bytes on the stores, its id not committed yet.
async fn s3_data(s3: &haystack_s3::service::S3, bytes: &[u8]) -> haystack_s3::data::Written {
    let mut w = s3.data.writer(bytes.len() as u64);
    w.write(bytes::Bytes::copy_from_slice(bytes)).await.unwrap();
    w.finish_uncommitted()
        .await
        .unwrap()
        .expect("bytes written")
}

/// The needle URLs of S3 data on every replica of its volume.
async fn s3_needles(c: &reqwest::Client, dir: &str, d: &haystack_s3::meta::DataRef) -> Vec<String> {
    let v: Value = c
        .get(format!("{dir}/v1/volumes/{}", d.volume))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replicas = v["replicas"].as_array().expect("replicas");
    assert!(!replicas.is_empty(), "{v}");
    let mut out = Vec::new();
    for r in replicas {
        for ch in &d.chunks {
            out.push(format!(
                "{}/v1/needles/{}/{}/{}/{}",
                r["url"].as_str().unwrap(),
                d.volume,
                d.photo,
                ch.alt,
                format_cookie(d.cookie)
            ));
        }
    }
    out
}

async fn statuses(c: &reqwest::Client, urls: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    for u in urls {
        out.push(c.get(u).send().await.unwrap().status().as_u16());
    }
    out
}

fn s3_unnamed(report: &[Value]) -> u64 {
    report
        .iter()
        .map(|r| r["s3_unnamed"].as_u64().unwrap_or(0))
        .sum()
}

/// `haystack gc` knows S3 data: an id of kind `object` that no S3 record names (here: data
/// committed by a PUT that died before its record was written) is deleted once old enough,
/// while data an object record or a part record names, data younger than the minimum age (an
/// hour by default), and a video of the photo API (which no S3 record names either) keep
/// their needles. Before, gc kept every committed S3 id: they were videos to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_s3_data_no_record_names_and_only_that() {
    use haystack_s3::meta::{ObjectRecord, Part};
    let cl = Cluster::start(ClusterOptions {
        volume_bytes: 64 << 20,
        ..Default::default()
    })
    .await;
    let dir = cl.directory_url();
    let c = cl.admin_http();
    let keys = tempfile::tempdir().unwrap();
    let s3 = haystack_s3::build(haystack_s3::S3Config {
        directory_urls: Some(cl.directory_urls()),
        master_key_file: keys.path().join("master.key"),
        chunk_bytes: 1 << 20,
        security: cl.security(),
        ..Default::default()
    })
    .unwrap();
    s3.create_bucket("gc-test").await.unwrap();
    let b = s3.bucket("gc-test").await.unwrap().value;

    // An object, named by its record.
    let obj = s3_data(&s3, b"an object").await;
    let rec = ObjectRecord {
        size: 9,
        etag: "e".into(),
        last_modified_ms: 1,
        headers: Default::default(),
        data: vec![obj.data.clone()],
        part_sizes: vec![],
        checksum: None,
    };
    s3.put_object(&b, "kept", &rec, false, None, Some(obj.commit))
        .await
        .unwrap();
    // A part of an upload in progress, named by its part record.
    let upload = s3
        .create_upload(&b, "big", Default::default())
        .await
        .unwrap();
    let part = s3_data(&s3, b"a part").await;
    let p = Part {
        number: 1,
        etag: "p".into(),
        size: 6,
        last_modified_ms: 1,
        data: Some(part.data.clone()),
    };
    s3.put_part(&b, "big", &p, &upload, Some(part.commit))
        .await
        .unwrap();
    // Data committed and never named: a PUT that died between its commit and its record.
    let orphan = s3_data(&s3, b"nobody's").await;
    s3.data.commit(&orphan.commit).await.unwrap();
    // A video of the photo API: committed, named by no S3 record, not S3's.
    let video = write_uncommitted(&c, &dir).await;
    let mut vc = CommitRequest {
        id: video.id,
        cookie: video.cookie,
        volume_id: video.volume_id,
        kind: PhotoKind::Video,
        variants: vec![],
        chunks: vec![haystack_proto::directory::VideoChunk {
            alt: 0,
            offset: 0,
            size_bytes: BODY.len() as u64,
        }],
    };
    let r = c
        .post(format!("{dir}/v1/photos"))
        .json(&vc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    vc.chunks.clear();

    // A minimum age below 600 s could delete the data of a write in flight: refused.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(["gc", "--s3-min-age-secs", "5", "--directory", &dir])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the default minimum age (an hour) the fresh orphan is left alone.
    let orphan_needles = s3_needles(&c, &dir, &orphan.data).await;
    let report = gc(&cl, &[]).await;
    assert_eq!(s3_unnamed(&report), 0, "{report:?}");
    assert!(statuses(&c, &orphan_needles)
        .await
        .iter()
        .all(|&s| s == 200));

    let min_age = 3u64;
    tokio::time::sleep(std::time::Duration::from_secs(min_age + 1)).await;
    let age = min_age.to_string();

    // A dry run reports the orphan (one chunk, on every replica) and deletes nothing.
    let report = gc(&cl, &["--unsafe-s3-min-age", &age, "--dry-run"]).await;
    assert_eq!(
        s3_unnamed(&report),
        orphan_needles.len() as u64,
        "{report:?}"
    );
    assert_eq!(deleted(&report), 0);
    assert!(statuses(&c, &orphan_needles)
        .await
        .iter()
        .all(|&s| s == 200));

    // The first replica that lists it has the directory delete the id, which deletes its
    // needles on every replica: later replicas no longer list them.
    let report = gc(&cl, &["--unsafe-s3-min-age", &age]).await;
    assert!(s3_unnamed(&report) >= 1, "{report:?}");
    let r = c
        .get(format!("{dir}/v1/photos/{}", orphan.data.photo))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200, "the unnamed S3 data is still a live id");
    assert!(
        statuses(&c, &orphan_needles)
            .await
            .iter()
            .all(|&s| s == 404),
        "the unnamed S3 data's needles stayed: {report:?}"
    );
    // Everything else keeps its needles and its id.
    for (what, d) in [
        ("the object's data", &obj.data),
        ("the part's data", &part.data),
    ] {
        let urls = s3_needles(&c, &dir, d).await;
        assert!(
            statuses(&c, &urls).await.iter().all(|&s| s == 200),
            "{what} lost needles: {report:?}"
        );
        let r = c
            .get(format!("{dir}/v1/photos/{}", d.photo))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what} is no longer live");
    }
    for r in &video.replicas {
        let got = c.get(needle_url(r, &video)).send().await.unwrap();
        assert_eq!(got.status(), 200, "the video lost its needle on {}", r.url);
    }
    let r = c
        .get(format!("{dir}/v1/photos/{}", video.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the video is no longer live");
}
