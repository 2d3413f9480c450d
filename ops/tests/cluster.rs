//! A directory and two stores as real processes: stores register and heartbeat, the
//! directory places a logical volume on both, a photo is written to every replica and
//! committed, and a killed store turns its volumes read-only.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, LogicalVolumeInfo, PhotoInfo, Variant,
};
use haystack_proto::format_cookie;

use crate::crash::{free_port, wait_healthy};

fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("haystack starts")
}

/// Store `i` of the test (data in `root/store{i}`, 64 MiB volumes, 1 s heartbeats) on a free
/// port, registered with the directory at `dbase` (named after a dead directory URL:
/// `--directory DEAD,LIVE`, the store fails over); returns it and its URL.
fn spawn_store(root: &Path, i: usize, dbase: &str, log: &Path) -> (Child, String) {
    let port = free_port();
    let child = spawn(
        &[
            "store".into(),
            "--data-dir".into(),
            root.join(format!("store{i}")).display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--directory".into(),
            format!("{},{dbase}", haystack_testkit::dead_url()),
            "--heartbeat-secs".into(),
            "1".into(),
            "--max-volume-bytes".into(),
            (64u64 << 20).to_string(),
            "--prealloc-step".into(),
            (8u64 << 20).to_string(),
        ],
        log,
    );
    (child, format!("http://127.0.0.1:{port}"))
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// Every replica of the photo's volume serves its original with exactly these bytes.
async fn assert_served_by_every_replica(c: &reqwest::Client, p: &PhotoInfo, want: &[u8]) {
    for r in &p.replicas {
        let url = format!(
            "{}/v1/needles/{}/{}/0/{}",
            r.url,
            p.volume_id,
            p.id,
            format_cookie(p.cookie)
        );
        let b = c.get(&url).send().await.expect("get");
        assert_eq!(b.bytes().await.expect("body").as_ref(), want, "{url}");
    }
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn stores_register_get_volumes_and_go_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("cluster.log");
    let dport = free_port();
    let dbase = format!("http://127.0.0.1:{dport}");
    let mut procs = Killed(Vec::new());
    procs.0.push(spawn(
        &[
            "directory".into(),
            "--listen".into(),
            format!("127.0.0.1:{dport}"),
            "--metadata".into(),
            format!("embedded:{}", dir.path().join("dir").display()),
            "--replication".into(),
            "2".into(),
            "--store-timeout-ms".into(),
            "3000".into(),
            "--heartbeat-secs".into(),
            "1".into(),
            "--volume-capacity-bytes".into(),
            (64u64 << 20).to_string(),
        ],
        &log,
    ));
    let mut store_urls = Vec::new();
    for i in 0..2 {
        let (child, url) = spawn_store(dir.path(), i, &dbase, &log);
        procs.0.push(child);
        store_urls.push(url);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let c = reqwest::Client::new();
    let pids: Vec<u32> = procs.0.iter().map(|p| p.id()).collect();
    let (sealed_vid, photo_id) = rt.block_on(async {
        wait_healthy(&c, &dbase, pids[0]).await;
        for (i, u) in store_urls.iter().enumerate() {
            wait_healthy(&c, u, pids[i + 1]).await;
        }
        // The directory creates writable logical volumes with a replica on each store.
        let vols: Vec<LogicalVolumeInfo> =
            until("a writable logical volume on both stores", async || {
                let v: Vec<LogicalVolumeInfo> = c
                    .get(format!("{dbase}/v1/volumes"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                v.iter()
                    .any(|v| {
                        v.writable
                            && v.replicas.len() == 2
                            && v.replicas.iter().all(|r| r.up && r.reported)
                    })
                    .then_some(v)
            })
            .await;
        let vid = vols.iter().find(|v| v.writable).expect("writable").id;
        for u in &store_urls {
            let r = c
                .get(format!("{u}/v1/volumes/{vid}"))
                .send()
                .await
                .expect("store volume");
            assert_eq!(r.status(), 200, "volume {vid} missing on {u}");
        }
        // A photo, written to every replica, then committed.
        let a: AssignResponse = c
            .post(format!("{dbase}/v1/assign"))
            .json(&AssignRequest {
                size_hint_bytes: 5,
                ..Default::default()
            })
            .send()
            .await
            .expect("assign")
            .json()
            .await
            .expect("assign body");
        assert_eq!(a.replicas.len(), 2);
        for r in &a.replicas {
            let put = c
                .put(format!(
                    "{}/v1/needles/{}/{}/0/{}",
                    r.url,
                    a.volume_id,
                    a.id,
                    format_cookie(a.cookie)
                ))
                .header("content-type", "image/jpeg")
                .body("hello")
                .send()
                .await
                .expect("put");
            assert_eq!(put.status(), 201);
        }
        let commit = CommitRequest {
            id: a.id,
            cookie: a.cookie,
            volume_id: a.volume_id,
            kind: Default::default(),
            variants: vec![Variant {
                name: "original".into(),
                alt: 0,
                size_bytes: 5,
                content_type: "image/jpeg".into(),
            }],
            chunks: vec![],
        };
        let r = c
            .post(format!("{dbase}/v1/photos"))
            .json(&commit)
            .send()
            .await
            .expect("commit");
        assert!(r.status().is_success(), "commit: {}", r.status());
        let p: PhotoInfo = c
            .get(format!("{dbase}/v1/photos/{}", a.id))
            .send()
            .await
            .expect("lookup")
            .json()
            .await
            .expect("photo");
        assert_eq!(p.volume_id, a.volume_id);
        assert_served_by_every_replica(&c, &p, b"hello").await;
        (a.volume_id, a.id)
    });
    // `haystack status` sees both machines and the volume, with dead bytes from the stores.
    let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(["status", "--directory", &dbase, "--json"])
        .output()
        .expect("haystack status");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["stores"].as_array().map(|a| a.len()), Some(2));
    let vols = st["volumes"].as_array().expect("volumes");
    assert!(
        vols.iter()
            .any(|v| v["writable"] == true && v["dead_bytes"].is_u64()),
        "{st}"
    );
    let table = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(["status", "--directory", &dbase])
        .output()
        .expect("haystack status");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("MACHINES")
            && text.contains("VOLUMES")
            && text.contains(&store_urls[0])
            && text.contains("LIFECYCLE")
            && text.contains("active"),
        "{text}"
    );
    // A flipped byte in the photo's needle on store0's disk: served by nobody, found by
    // `haystack volume verify`, and repaired from store1.
    {
        use std::os::unix::fs::FileExt;
        let dat = dir
            .path()
            .join("store0")
            .join(format!("vol-{sealed_vid}.dat"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dat)
            .expect("volume file");
        // The photo is the volume's only needle: header at 64, then "image/jpeg", then data.
        let at = 64 + 40 + 10 + 2;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).expect("read");
        f.write_all_at(&[b[0] ^ 0x40], at).expect("flip");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args([
            "volume",
            "verify",
            &sealed_vid.to_string(),
            "--directory",
            &dbase,
            "--json",
        ])
        .output()
        .expect("haystack volume verify");
    assert!(
        out.status.success(),
        "verify failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ver: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    let on0 = ver
        .as_array()
        .expect("replicas")
        .iter()
        .find(|r| r["url"] == store_urls[0])
        .expect("store0");
    assert_eq!(
        on0["report"]["corrupt"].as_array().map(|a| a.len()),
        Some(1),
        "{ver}"
    );
    assert_eq!(
        on0["repaired"].as_array().map(|a| a.len()),
        Some(1),
        "{ver}"
    );
    rt.block_on(async {
        let cookie = format_cookie(
            c.get(format!("{dbase}/v1/photos/{photo_id}"))
                .send()
                .await
                .expect("lookup")
                .json::<PhotoInfo>()
                .await
                .expect("photo")
                .cookie,
        );
        let b = c
            .get(format!(
                "{}/v1/needles/{sealed_vid}/{photo_id}/0/{cookie}",
                store_urls[0]
            ))
            .send()
            .await
            .expect("get");
        assert_eq!(b.status(), 200);
        assert_eq!(b.bytes().await.expect("body").as_ref(), b"hello");
    });
    // `haystack volume seal` seals the volume in the directory and on both replicas; the
    // photo is still served.
    let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args([
            "volume",
            "seal",
            &sealed_vid.to_string(),
            "--directory",
            &dbase,
            "--json",
        ])
        .output()
        .expect("haystack volume seal");
    assert!(
        out.status.success(),
        "seal failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seal: serde_json::Value = serde_json::from_slice(&out.stdout).expect("seal JSON");
    assert_eq!(seal["directory"]["state"], "sealed", "{seal}");
    for r in seal["replicas"].as_array().expect("replicas") {
        assert_eq!(r["volume"]["state"], "sealed", "{seal}");
    }
    rt.block_on(async {
        for u in &store_urls {
            let v: serde_json::Value = c
                .get(format!("{u}/v1/volumes/{sealed_vid}"))
                .send()
                .await
                .expect("volume")
                .json()
                .await
                .expect("json");
            assert_eq!(v["state"], "sealed");
        }
        let p: PhotoInfo = c
            .get(format!("{dbase}/v1/photos/{photo_id}"))
            .send()
            .await
            .expect("lookup")
            .json()
            .await
            .expect("photo");
        assert!(!p.volume_writable);
        assert_served_by_every_replica(&c, &p, b"hello").await;
    });
    // `haystack photo put | get | info | delete` round trip (on another, writable volume).
    let hs = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--directory", dbase.as_str()]);
        Command::new(env!("CARGO_BIN_EXE_haystack"))
            .args(&all)
            .output()
            .expect("haystack photo")
    };
    let file = dir.path().join("cat.jpg");
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &bytes).expect("write photo file");
    // Right after the seal there may be no writable volume for a moment: the directory answers
    // 503 no_writable_volume and creates one; retry as a client would.
    let mut tries = 0;
    let out = loop {
        let out = hs(&["photo", "put", file.to_str().expect("utf-8")]);
        tries += 1;
        if out.status.success() || tries == 120 {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    assert!(
        out.status.success(),
        "photo put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("photo JSON");
    let pid = p["id"].as_str().expect("id as a string").to_string();
    assert_ne!(p["volume_id"], sealed_vid, "a sealed volume took an upload");
    let back = dir.path().join("back.jpg");
    let out = hs(&["photo", "get", &pid, "-o", back.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "photo get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&back).expect("read back"), bytes);
    let out = hs(&["photo", "info", &pid]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert_eq!(info["variants"][0]["content_type"], "image/jpeg");
    assert!(hs(&["photo", "delete", &pid]).status.success());
    assert!(
        !hs(&["photo", "get", &pid, "-o", back.to_str().expect("utf-8")])
            .status
            .success()
    );
    let put_vid = p["volume_id"].as_u64().expect("volume id") as u32;
    // An upload that never committed leaves needles no photo references: `haystack gc`
    // deletes them (grace 0: old enough at once), and leaves the committed photo alone.
    let (orphan_url, orphan_vid) = rt.block_on(async {
        let a: AssignResponse = c
            .post(format!("{dbase}/v1/assign"))
            .json(&AssignRequest::default())
            .send()
            .await
            .expect("assign")
            .json()
            .await
            .expect("assign body");
        let path = format!(
            "/v1/needles/{}/{}/0/{}",
            a.volume_id,
            a.id,
            format_cookie(a.cookie)
        );
        for r in &a.replicas {
            let put = c
                .put(format!("{}{path}", r.url))
                .body(vec![9u8; 3000])
                .send()
                .await
                .expect("put");
            assert_eq!(put.status(), 201);
        }
        (format!("{}{path}", a.replicas[0].url), a.volume_id)
    });
    std::thread::sleep(Duration::from_millis(5));
    let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(["gc", "--grace-secs", "0", "--json", "--directory", &dbase])
        .output()
        .expect("haystack gc");
    assert!(
        out.status.success(),
        "gc: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let gc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gc JSON");
    let deleted: u64 = gc
        .as_array()
        .expect("replicas")
        .iter()
        .filter(|r| r["volume"] == orphan_vid)
        .map(|r| r["deleted"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(deleted, 2, "the orphan on both replicas: {gc}");
    rt.block_on(async {
        let r = c.get(&orphan_url).send().await.expect("get orphan");
        assert_eq!(r.status(), 404, "gc left the orphan");
        let p: PhotoInfo = c
            .get(format!("{dbase}/v1/photos/{photo_id}"))
            .send()
            .await
            .expect("lookup")
            .json()
            .await
            .expect("photo");
        assert_served_by_every_replica(&c, &p, b"hello").await;
    });
    // Compaction gives back the deleted photo's and the orphan's space, on every replica.
    let out = hs(&["volume", "compact", &put_vid.to_string(), "--json"]);
    assert!(
        out.status.success(),
        "compact: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let comp: serde_json::Value = serde_json::from_slice(&out.stdout).expect("compact JSON");
    for r in comp.as_array().expect("replicas") {
        assert!(
            r["report"]["reclaimed_bytes"].as_u64().unwrap_or(0) >= 5000,
            "{comp}"
        );
    }
    let out = hs(&["volume", "rebuild-index", &sealed_vid.to_string(), "--json"]);
    assert!(
        out.status.success(),
        "rebuild-index: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rb: serde_json::Value = serde_json::from_slice(&out.stdout).expect("rebuild JSON");
    for r in rb.as_array().expect("replicas") {
        assert_eq!(r["report"]["needles"], 1, "{rb}");
    }
    // Kill the second store: its logical volumes turn read-only in the directory.
    let mut second = procs.0.pop().expect("store");
    second.kill().expect("kill store");
    second.wait().ok();
    rt.block_on(async {
        until("volumes of the dead store turn read-only", async || {
            let v: Vec<LogicalVolumeInfo> = c
                .get(format!("{dbase}/v1/volumes"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let on_dead: Vec<_> = v
                .iter()
                .filter(|v| v.replicas.iter().any(|r| r.url == store_urls[1]))
                .collect();
            (!on_dead.is_empty()
                && on_dead
                    .iter()
                    .all(|v| !v.writable && v.replicas.iter().any(|r| !r.up)))
            .then_some(())
        })
        .await;
    });
    // A third machine joins; `haystack volume repair` copies the sealed volume onto it from
    // the surviving replica and the directory points at it instead of the dead store.
    let (child, third) = spawn_store(dir.path(), 2, &dbase, &log);
    procs.0.push(child);
    rt.block_on(async {
        until("the third store is up in the directory", async || {
            let s: Vec<haystack_proto::directory::StoreInfo> = c
                .get(format!("{dbase}/v1/stores"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            s.iter()
                .any(|s| s.url == third && s.state == haystack_proto::directory::StoreState::Up)
                .then_some(())
        })
        .await;
    });
    let out = hs(&[
        "volume",
        "repair",
        &sealed_vid.to_string(),
        "--to",
        &third,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "repair: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).expect("repair JSON");
    assert_eq!(rep["copied"]["state"], "sealed", "{rep}");
    rt.block_on(async {
        let p: PhotoInfo = until("the repaired volume lists the new replica", async || {
            let p: PhotoInfo = c
                .get(format!("{dbase}/v1/photos/{photo_id}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (p.replicas.iter().any(|r| r.url == third)
                && p.replicas.iter().all(|r| r.url != store_urls[1]))
            .then_some(p)
        })
        .await;
        assert_served_by_every_replica(&c, &p, b"hello").await;
    });
}
