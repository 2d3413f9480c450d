//! Kill -9 during an erasure-coding encode and re-encode (issue 14). A directory and four
//! stores run as `haystack` child processes. A store is held at a pause point of an encode or
//! re-encode step (the store's `test-hooks` feature, store/src/pause.rs: this crate's
//! tests turn it on) and SIGKILLed there, or the directory is SIGKILLed while a store waits at
//! one. After each restart either the replicas or the complete erasure-coded volume serve
//! every live needle byte for byte from every store the directory lists for it (deleted ones
//! stay 404), and running the encode or re-encode again completes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, EncodeReport, LogicalVolumeInfo, StoreInfo,
    StoreState, Variant,
};
use haystack_proto::format_cookie;

use crate::crash::{free_port, signal, wait_healthy};

const STORES: usize = 4;

/// The processes of the test, restartable on the same ports and data directories.
struct Procs {
    root: PathBuf,
    log: PathBuf,
    dport: u16,
    directory: Option<Child>,
    stores: Vec<(u16, Option<Child>)>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        let all = self
            .stores
            .iter_mut()
            .filter_map(|s| s.1.as_mut())
            .chain(self.directory.as_mut());
        for c in all {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Procs {
    fn dbase(&self) -> String {
        format!("http://127.0.0.1:{}", self.dport)
    }

    fn store_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.stores[i].0)
    }

    fn store_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("store{i}"))
    }

    fn store_of(&self, url: &str) -> usize {
        (0..STORES)
            .find(|i| self.store_url(*i) == url)
            .expect("a store of the test")
    }

    fn spawn(&self, args: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        Command::new(env!("CARGO_BIN_EXE_haystack"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haystack starts")
    }

    fn start_directory(&mut self) {
        let args: Vec<String> = [
            "directory",
            "--listen",
            &format!("127.0.0.1:{}", self.dport),
            "--metadata",
            &format!("embedded:{}", self.root.join("dir").display()),
            "--replication",
            "2",
            "--store-timeout-ms",
            "4000",
            "--heartbeat-secs",
            "1",
            "--volume-capacity-bytes",
            &(64u64 << 20).to_string(),
            "--rereplicate-after-ms",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.directory = Some(self.spawn(&args));
    }

    fn start_store(&mut self, i: usize) {
        let args: Vec<String> = [
            "store",
            "--data-dir",
            &self.store_dir(i).display().to_string(),
            "--listen",
            &format!("127.0.0.1:{}", self.stores[i].0),
            "--directory",
            &self.dbase(),
            "--heartbeat-secs",
            "1",
            "--max-volume-bytes",
            &(64u64 << 20).to_string(),
            "--prealloc-step",
            &(8u64 << 20).to_string(),
            "--workers",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.stores[i].1 = Some(self.spawn(&args));
    }

    fn kill9_directory(&mut self) {
        let mut c = self.directory.take().expect("directory running");
        signal(c.id(), libc::SIGKILL);
        c.wait().ok();
    }

    fn kill9_store(&mut self, i: usize) {
        let mut c = self.stores[i].1.take().expect("store running");
        signal(c.id(), libc::SIGKILL);
        c.wait().ok();
    }

    /// Waits until every process answers /health as itself and the directory sees every
    /// store up.
    async fn wait_up(&self, c: &reqwest::Client) {
        let dpid = self.directory.as_ref().expect("directory").id();
        wait_healthy(c, &self.dbase(), dpid).await;
        for i in 0..STORES {
            let pid = self.stores[i].1.as_ref().expect("store").id();
            wait_healthy(c, &self.store_url(i), pid).await;
        }
        let dbase = self.dbase();
        until("every store up in the directory", async || {
            let s: Vec<StoreInfo> = c
                .get(format!("{dbase}/v1/stores"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (s.len() == STORES && s.iter().all(|s| s.state == StoreState::Up)).then_some(())
        })
        .await;
    }

    /// Arms pause point `point` on store `i` (store/src/pause.rs).
    fn arm(&self, i: usize, point: &str) {
        std::fs::write(self.store_dir(i).join(format!("test-pause-{point}")), b"").expect("arm");
    }

    /// Disarms `point` on every store (a store waiting there goes on).
    fn disarm(&self, point: &str) {
        for i in 0..STORES {
            let _ = std::fs::remove_file(self.store_dir(i).join(format!("test-pause-{point}")));
        }
    }

    /// The first store found waiting at `point`.
    async fn paused_at(&self, point: &str) -> usize {
        until(&format!("a store paused at {point}"), async || {
            (0..STORES).find(|i| {
                self.store_dir(*i)
                    .join(format!("test-paused-{point}"))
                    .exists()
            })
        })
        .await
    }
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A photo of the test: one needle (alternate key 0).
#[derive(Clone)]
struct Photo {
    id: u64,
    cookie: u64,
    volume: u32,
    data: Vec<u8>,
}

fn needle_url(base: &str, p: &Photo) -> String {
    format!(
        "{base}/v1/needles/{}/{}/0/{}",
        p.volume,
        p.id,
        format_cookie(p.cookie)
    )
}

async fn upload(c: &reqwest::Client, dbase: &str, seed: u64) -> Photo {
    let len = 3_000 + (seed as usize * 7_919) % 40_000;
    let data: Vec<u8> = (0..len)
        .map(|i| ((i as u64).wrapping_mul(31).wrapping_add(seed * 17) % 251) as u8)
        .collect();
    let a: AssignResponse = until("an assignment", async || {
        let r = c
            .post(format!("{dbase}/v1/assign"))
            .json(&AssignRequest {
                size_hint_bytes: len as u64,
                ..Default::default()
            })
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    })
    .await;
    let p = Photo {
        id: a.id,
        cookie: a.cookie,
        volume: a.volume_id,
        data,
    };
    for r in &a.replicas {
        let s = c
            .put(needle_url(&r.url, &p))
            .header("content-type", "image/jpeg")
            .body(p.data.clone())
            .send()
            .await
            .expect("put")
            .status();
        assert_eq!(s, 201, "put to {}", r.url);
    }
    let commit = CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: Default::default(),
        variants: vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: len as u64,
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
    p
}

async fn volume(c: &reqwest::Client, dbase: &str, v: u32) -> LogicalVolumeInfo {
    c.get(format!("{dbase}/v1/volumes/{v}"))
        .send()
        .await
        .expect("volume")
        .json()
        .await
        .expect("volume JSON")
}

/// Every store the directory lists for volume `v` (its replicas, or its shards) serves every
/// live photo byte for byte and none of the deleted ones, but the store at `down` (killed).
/// Returns the record.
async fn check_served_but(
    c: &reqwest::Client,
    dbase: &str,
    v: u32,
    (live, gone): (&[Photo], &[Photo]),
    down: Option<&str>,
    when: &str,
) -> LogicalVolumeInfo {
    let info = volume(c, dbase, v).await;
    for r in info
        .replicas
        .iter()
        .filter(|r| Some(r.url.as_str()) != down)
    {
        for p in live {
            let resp = c.get(needle_url(&r.url, p)).send().await.expect("get");
            let st = resp.status().as_u16();
            let body = resp.bytes().await.expect("body");
            assert_eq!(
                st,
                200,
                "{when}: photo {} from {} (ec: {}): {}",
                p.id,
                r.url,
                info.ec.is_some(),
                String::from_utf8_lossy(&body)
            );
            assert!(
                body.as_ref() == p.data.as_slice(),
                "{when}: wrong bytes of photo {} from {}",
                p.id,
                r.url
            );
        }
        for p in gone {
            let st = c.get(needle_url(&r.url, p)).send().await.expect("get");
            assert_eq!(
                st.status(),
                404,
                "{when}: deleted photo {} from {}",
                p.id,
                r.url
            );
        }
    }
    info
}

async fn check_served(
    c: &reqwest::Client,
    dbase: &str,
    v: u32,
    live: &[Photo],
    gone: &[Photo],
    when: &str,
) -> LogicalVolumeInfo {
    check_served_but(c, dbase, v, (live, gone), None, when).await
}

/// Starts `POST /v1/volumes/{v}/encode` in the background; its status, or None when the
/// connection failed.
fn encode_in_background(
    c: &reqwest::Client,
    dbase: &str,
    v: u32,
    reencode: bool,
) -> tokio::task::JoinHandle<Option<u16>> {
    let (c, url) = (c.clone(), format!("{dbase}/v1/volumes/{v}/encode"));
    tokio::spawn(async move {
        let r = c
            .post(url)
            .json(&serde_json::json!({
                "k": 2, "m": 1, "block_bytes": 65536, "reencode": reencode,
            }))
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    })
}

/// `haystack volume encode` (the operator's rerun), which must succeed.
fn encode_cli(dbase: &str, v: u32, reencode: bool) -> EncodeReport {
    let mut args = vec![
        "volume".to_string(),
        "encode".into(),
        v.to_string(),
        "--k".into(),
        "2".into(),
        "--m".into(),
        "1".into(),
        "--block-bytes".into(),
        "65536".into(),
        "--json".into(),
        "--directory".into(),
        dbase.to_string(),
    ];
    if reencode {
        args.push("--reencode".into());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(&args)
        .output()
        .expect("haystack volume encode");
    assert!(
        out.status.success(),
        "encode rerun: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("encode JSON")
}

/// The erasure-coding files of volume `v` in a store's data directory.
fn ec_files(dir: &Path, v: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("ec-{v}-")) || n.starts_with(&format!("ec-{v}.")))
        .collect();
    names.sort();
    names
}

#[test]
fn kill_9_during_encode_and_reencode_loses_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut procs = Procs {
        root: tmp.path().to_path_buf(),
        log: tmp.path().join("cluster.log"),
        dport: free_port(),
        directory: None,
        stores: (0..STORES).map(|_| (free_port(), None)).collect(),
    };
    procs.start_directory();
    for i in 0..STORES {
        procs.start_store(i);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let c = reqwest::Client::new();
    let dbase = procs.dbase();
    rt.block_on(async {
        procs.wait_up(&c).await;
        // Photos, then the volume of the first one sealed (`haystack volume seal`).
        let mut photos = Vec::new();
        for seed in 0..16 {
            photos.push(upload(&c, &dbase, seed).await);
        }
        let v = photos[0].volume;
        photos.retain(|p| p.volume == v);
        let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
            .args([
                "volume",
                "seal",
                &v.to_string(),
                "--directory",
                &dbase,
                "--json",
            ])
            .output()
            .expect("haystack volume seal");
        assert!(
            out.status.success(),
            "seal: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let replicas = check_served(&c, &dbase, v, &photos, &[], "sealed").await;
        assert!(replicas.ec.is_none());

        // E1. The source store killed in its build (staging written, not renamed).
        for r in &replicas.replicas {
            procs.arm(procs.store_of(&r.url), "ec-build");
        }
        let job = encode_in_background(&c, &dbase, v, false);
        let i = procs.paused_at("ec-build").await;
        procs.disarm("ec-build");
        procs.kill9_store(i);
        assert_ne!(
            job.await.expect("encode task"),
            Some(200),
            "encode with its source killed"
        );
        procs.start_store(i);
        procs.wait_up(&c).await;
        let now = check_served(&c, &dbase, v, &photos, &[], "source killed in build").await;
        assert!(now.ec.is_none(), "no switch after a failed build");
        assert!(
            !ec_files(&procs.store_dir(i), v)
                .iter()
                .any(|n| n.ends_with(".tmp")),
            "the unfinished staging was removed at start"
        );

        // E2. The directory killed while a shard store installs its shard.
        for s in 0..STORES {
            procs.arm(s, "ec-install");
        }
        let job = encode_in_background(&c, &dbase, v, false);
        procs.paused_at("ec-install").await;
        procs.kill9_directory();
        assert_eq!(job.await.expect("encode task"), None, "the directory died");
        procs.start_directory();
        procs.disarm("ec-install");
        procs.wait_up(&c).await;
        let now = check_served(&c, &dbase, v, &photos, &[], "directory killed in install").await;
        assert!(now.ec.is_none(), "no switch without the directory");

        // E3. A shard store killed in its install (shard fetched, not checked nor renamed).
        for s in 0..STORES {
            procs.arm(s, "ec-install");
        }
        let job = encode_in_background(&c, &dbase, v, false);
        let i = procs.paused_at("ec-install").await;
        procs.disarm("ec-install");
        procs.kill9_store(i);
        assert_ne!(
            job.await.expect("encode task"),
            Some(200),
            "encode with a target killed"
        );
        procs.start_store(i);
        procs.wait_up(&c).await;
        let now = check_served(&c, &dbase, v, &photos, &[], "target killed in install").await;
        assert!(now.ec.is_none(), "no switch after a failed install");

        // E4. The encode runs again and switches; a retired replica's store is killed as it
        // drops the replica. The shards serve; the rerun after its restart drops it.
        for r in &replicas.replicas {
            procs.arm(procs.store_of(&r.url), "ec-drop");
        }
        let job = encode_in_background(&c, &dbase, v, false);
        let i = procs.paused_at("ec-drop").await;
        procs.disarm("ec-drop");
        procs.kill9_store(i);
        assert_eq!(
            job.await.expect("encode task"),
            Some(200),
            "the switch is made"
        );
        let killed = procs.store_url(i);
        let now = check_served_but(
            &c,
            &dbase,
            v,
            (&photos, &[]),
            Some(&killed),
            "switched, a drop killed",
        )
        .await;
        let ec = now.ec.clone().expect("erasure-coded");
        assert_eq!(
            ec.retired.len(),
            1,
            "the killed store's replica is still to drop"
        );
        procs.start_store(i);
        procs.wait_up(&c).await;
        assert!(procs.store_dir(i).join(format!("vol-{v}.dat")).exists());
        let rep = encode_cli(&dbase, v, false);
        assert!(rep.already);
        assert_eq!(rep.replicas_dropped, 1);
        assert!(!procs.store_dir(i).join(format!("vol-{v}.dat")).exists());
        let shards = check_served(&c, &dbase, v, &photos, &[], "encoded").await;
        assert_eq!(shards.replicas.len(), 3);

        // R1. Deletes, then a re-encode whose last shard store is killed just before it
        // switches to the new generation (the others switched): every shard store serves
        // every live needle, whichever generation it is on.
        let (mut live, mut gone) = (Vec::new(), Vec::new());
        for (n, p) in photos.iter().enumerate() {
            if n % 2 == 1 {
                let r = c
                    .delete(format!("{dbase}/v1/photos/{}", p.id))
                    .send()
                    .await
                    .expect("delete");
                assert!(r.status().is_success(), "delete: {}", r.status());
                gone.push(p.clone());
            } else {
                live.push(p.clone());
            }
        }
        check_served(&c, &dbase, v, &live, &gone, "deleted").await;
        let last = procs.store_of(&shards.replicas[2].url);
        procs.arm(last, "ec-switch");
        let job = encode_in_background(&c, &dbase, v, true);
        let i = procs.paused_at("ec-switch").await;
        assert_eq!(i, last);
        procs.disarm("ec-switch");
        procs.kill9_store(i);
        assert_ne!(job.await.expect("re-encode task"), Some(200));
        let killed = procs.store_url(i);
        check_served_but(
            &c,
            &dbase,
            v,
            (&live, &gone),
            Some(&killed),
            "re-encode: last switch killed, store down",
        )
        .await;
        procs.start_store(i);
        procs.wait_up(&c).await;
        check_served(&c, &dbase, v, &live, &gone, "re-encode: last switch killed").await;

        // R2. The directory killed during a re-encode's build; the rerun completes it.
        let first = procs.store_of(&shards.replicas[0].url);
        procs.arm(first, "ec-build");
        let job = encode_in_background(&c, &dbase, v, true);
        procs.paused_at("ec-build").await;
        procs.kill9_directory();
        assert_eq!(job.await.expect("re-encode task"), None);
        procs.start_directory();
        procs.disarm("ec-build");
        procs.wait_up(&c).await;
        check_served(&c, &dbase, v, &live, &gone, "re-encode: directory killed").await;
        let rep = encode_cli(&dbase, v, true);
        assert_eq!(rep.needles as usize, live.len());
        let done = check_served(&c, &dbase, v, &live, &gone, "re-encoded").await;
        let g = done.ec.as_ref().expect("erasure-coded").generation;
        assert_eq!(g, rep.generation);
        for (s, r) in done.replicas.iter().enumerate() {
            let resp = c
                .post(format!("{}/v1/ec/{v}/verify?parity=true", r.url))
                .json(&serde_json::json!({}))
                .send()
                .await
                .expect("verify");
            assert_eq!(resp.status(), 200);
            let rep: serde_json::Value = resp.json().await.expect("verify JSON");
            for f in ["bad_pieces", "corrupt", "parity_mismatches"] {
                assert_eq!(
                    rep[f].as_array().map(|a| a.len()),
                    Some(0),
                    "shard {s}: {rep}"
                );
            }
            // Only the current generation's files are left (and no temporary ones).
            let files = ec_files(&procs.store_dir(procs.store_of(&r.url)), v);
            let want = [
                format!("ec-{v}-{g}.ecx"),
                format!("ec-{v}-{g}.s{s}"),
                format!("ec-{v}.ecd"),
                format!("ec-{v}.ecm"),
            ];
            assert!(
                files.iter().all(|f| want.contains(f)),
                "shard {s}: files left {files:?}"
            );
        }
    });
}
