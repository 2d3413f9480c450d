//! Multi-host scenarios (issue 16): every role a real `haystack` process on its own "host", a
//! network namespace with its own address on a bridge (haystack_testkit::netns), and the
//! failures machines really have: a store host lost under load, a store host partitioned and
//! healed, the directory host cut off, a host's disk full. Each scenario is bounded in time;
//! without root and network namespaces each says SKIPPED on stderr and returns.
//!
//! The scenarios run one at a time (a static lock): each starts six or seven processes, and
//! the machines the tests run on have two cores.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haystack_proto::auth::{ClusterKeys, Role};
use haystack_proto::directory::{LogicalVolumeInfo, PhotoInfo, StoreInfo};
use haystack_proto::format_cookie;
use haystack_service::auth::unix_now;
use haystack_testkit::netns::{HostId, Net, ProcId};

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const DIRECTORY_PORT: u16 = 8082;
const STORE_PORT: u16 = 8090;
const CACHE_PORT: u16 = 8081;
const UPLOADER_PORT: u16 = 8080;
const API_KEY: &str = "multihost-test-key";

/// What a scenario's cluster looks like.
struct Opts {
    stores: usize,
    /// Directory: a store down this long has its replicas copied elsewhere (0: never).
    rereplicate_after_ms: u64,
    /// Planned volume size and the stores' maximum.
    volume_bytes: u64,
    /// Every store keeps its data on a tmpfs of this many bytes (the directory places
    /// volumes on the stores with the most free space: equal small disks share them).
    small_disk: Option<u64>,
    /// The cache's admission policy: `none` sends every read to a store (failover and
    /// liveness are what is tested), `all` keeps what was read (hits are).
    admission: &'static str,
}

/// A cluster on a namespace network: a directory host, store hosts, a cache host and an
/// uploader host, plus the test process's clients.
struct Hosts {
    net: Net,
    store_hosts: Vec<HostId>,
    directory_host: HostId,
    cache_host: HostId,
    uploader_host: HostId,
    stores: Vec<ProcId>,
    store_dirs: Vec<PathBuf>,
    /// Sends an admin token (directory and store admin routes).
    admin: reqwest::Client,
    /// Sends the uploader's API key.
    app: reqwest::Client,
    /// Sends nothing (what a browser or a CDN sends).
    public: reqwest::Client,
}

fn client(bearer: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = bearer {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).expect("ASCII token"),
        );
    }
    // No idle connections kept: one pooled across a cut is reset by the peer when reused
    // after the heal (IncompleteMessage), which says nothing about the cluster.
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .expect("reqwest client")
}

/// A small JPEG, different for every `seed` (about `side`² / 2 bytes: noisy on purpose).
fn jpeg(seed: u64, side: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

/// An acknowledged upload: its id, its read URL (through the cache) and its bytes.
#[derive(Clone, Debug)]
struct Acked {
    id: u64,
    url: String,
    body: Arc<Vec<u8>>,
}

impl Hosts {
    /// Makes the network and starts every role; `None` when namespaces cannot be made (the
    /// SKIPPED line is printed).
    async fn start(test: &str, o: Opts) -> Option<Hosts> {
        let mut net = Net::create_or_skip(test)?;
        let bin = Path::new(env!("CARGO_BIN_EXE_haystack"));
        let directory_host = net.add_host("dir").expect("directory host");
        let store_hosts: Vec<HostId> = (0..o.stores)
            .map(|i| net.add_host(&format!("st{i}")).expect("store host"))
            .collect();
        let cache_host = net.add_host("cache").expect("cache host");
        let uploader_host = net.add_host("up").expect("uploader host");
        let secret = haystack_testkit::random_secret();
        let keys = ClusterKeys::from_secret(&secret).expect("secret");
        let secret_file = net.dir().join("cluster.secret");
        std::fs::write(&secret_file, &secret).expect("secret file");
        let dir_url = format!("http://{}:{DIRECTORY_PORT}", net.ip(directory_host));
        let cache_url = format!("http://{}:{CACHE_PORT}", net.ip(cache_host));
        let config = net.dir().join("haystack.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[store]
max_volume_bytes = {vb}
prealloc_step = 1048576
auto_compact_dead_ratio = 0.0
scrub_mib_per_sec = 0
io_timeout_secs = 10

[directory]
metadata = "embedded:{meta}"
replication_factor = 2
heartbeat_interval_secs = 1
store_timeout_ms = 2000
maintenance_interval_ms = 200
volume_capacity_bytes = {vb}
min_writable_volumes = 3
min_writable_free_bytes = 0
writable_headroom_secs = 0
cache_url = "{cache_url}"
notify_timeout_ms = 1000
rereplicate_after_ms = {rr}
anti_entropy_interval_ms = 0

[cache]
admission = "{adm}"
store_timeout_ms = 1000
directory_timeout_ms = 1000
directory_info_ttl_ms = 3000

[uploader]
store_timeout_ms = 2000
directory_timeout_ms = 2000
write_attempts = 4
uploads_per_minute_per_client = 0
max_concurrent_uploads_per_client = 0

[[uploader.variants]]
name = "thumb"
alt = 1
longest_side = 32
"#,
                vb = o.volume_bytes,
                meta = net.dir().join("directory").display(),
                rr = o.rereplicate_after_ms,
                adm = o.admission,
            ),
        )
        .expect("config file");
        let common = |role: &str| -> Vec<String> {
            vec![
                "--cluster-secret-file".into(),
                secret_file.display().to_string(),
                role.into(),
                "--config".into(),
                config.display().to_string(),
            ]
        };
        let mut args = common("directory");
        args.extend([
            "--listen".into(),
            format!("{}:{DIRECTORY_PORT}", net.ip(directory_host)),
        ]);
        let directory = net.spawn(directory_host, "directory", bin, &args);
        let mut stores = Vec::new();
        let mut store_dirs = Vec::new();
        for (i, h) in store_hosts.iter().enumerate() {
            let data = match o.small_disk {
                Some(bytes) => net.small_disk(*h, bytes).expect("tmpfs disk"),
                None => net.dir().join(format!("store{i}")),
            };
            let mut args = common("store");
            args.extend([
                "--listen".into(),
                format!("{}:{STORE_PORT}", net.ip(*h)),
                "--data-dir".into(),
                data.display().to_string(),
                "--directory".into(),
                dir_url.clone(),
                "--heartbeat-secs".into(),
                "1".into(),
                "--workers".into(),
                "1".into(),
            ]);
            stores.push(net.spawn(*h, &format!("store{i}"), bin, &args));
            store_dirs.push(data);
        }
        let mut args = common("cache");
        args.extend([
            "--listen".into(),
            format!("{}:{CACHE_PORT}", net.ip(cache_host)),
            "--directory".into(),
            dir_url.clone(),
            "--capacity".into(),
            "64MiB".into(),
        ]);
        net.spawn(cache_host, "cache", bin, &args);
        let mut args = common("uploader");
        args.extend([
            "--listen".into(),
            format!("{}:{UPLOADER_PORT}", net.ip(uploader_host)),
            "--directory".into(),
            dir_url.clone(),
            "--api-key".into(),
            API_KEY.into(),
        ]);
        net.spawn(uploader_host, "uploader", bin, &args);
        let admin = client(Some(&keys.mint(
            Role::Admin,
            "multihost-test",
            unix_now() + 3600,
        )));
        let h = Hosts {
            net,
            store_hosts,
            directory_host,
            cache_host,
            uploader_host,
            stores,
            store_dirs,
            admin,
            app: client(Some(API_KEY)),
            public: client(None),
        };
        let _ = directory;
        for url in [h.directory_url(), h.cache_url(), h.uploader_url()]
            .into_iter()
            .chain((0..o.stores).map(|i| h.store_url(i)))
        {
            let c = h.public.clone();
            Net::until(
                &format!("{url} answers /health"),
                Duration::from_secs(30),
                async || {
                    h.net.assert_running();
                    let r = c.get(format!("{url}/health")).send().await.ok()?;
                    r.status().is_success().then_some(())
                },
            )
            .await;
        }
        h.wait_all_volumes_whole(None, Duration::from_secs(30))
            .await;
        Some(h)
    }

    fn directory_url(&self) -> String {
        format!(
            "http://{}:{DIRECTORY_PORT}",
            self.net.ip(self.directory_host)
        )
    }

    fn uploader_url(&self) -> String {
        format!("http://{}:{UPLOADER_PORT}", self.net.ip(self.uploader_host))
    }

    fn cache_url(&self) -> String {
        format!("http://{}:{CACHE_PORT}", self.net.ip(self.cache_host))
    }

    fn store_url(&self, i: usize) -> String {
        format!("http://{}:{STORE_PORT}", self.net.ip(self.store_hosts[i]))
    }

    /// Store `i`'s id in the directory.
    async fn store_id(&self, i: usize) -> u64 {
        let url = self.store_url(i);
        let stores: Vec<StoreInfo> = self
            .admin
            .get(format!("{}/v1/stores", self.directory_url()))
            .send()
            .await
            .expect("stores")
            .json()
            .await
            .expect("stores JSON");
        stores
            .iter()
            .find(|s| s.url.trim_end_matches('/') == url)
            .unwrap_or_else(|| panic!("{url} is not registered: {stores:?}"))
            .store_id
    }

    async fn volumes(&self) -> Option<Vec<LogicalVolumeInfo>> {
        self.admin
            .get(format!("{}/v1/volumes", self.directory_url()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    async fn photo(&self, id: u64) -> PhotoInfo {
        self.admin
            .get(format!("{}/v1/photos/{id}", self.directory_url()))
            .send()
            .await
            .expect("photo lookup")
            .json()
            .await
            .expect("photo JSON")
    }

    /// Waits until at least three volumes are writable and every volume has two replicas,
    /// all up and reported, none on store `not_on`.
    async fn wait_all_volumes_whole(&self, not_on: Option<u64>, within: Duration) {
        Net::until(
            "every volume with its two replicas up (and three writable)",
            within,
            async || {
                let vols = self.volumes().await?;
                let whole = vols.iter().all(|v| {
                    v.replicas.len() == 2
                        && v.replicas
                            .iter()
                            .all(|r| r.up && r.reported && Some(r.store_id) != not_on)
                });
                (whole && vols.iter().filter(|v| v.writable).count() >= 3).then_some(())
            },
        )
        .await;
    }

    /// One photo upload through the uploader.
    async fn upload(&self, seed: u64) -> Result<Acked, String> {
        self.upload_sized(seed, 48 + (seed % 5) as u32 * 16).await
    }

    /// One upload of a `side`×`side` noisy JPEG.
    async fn upload_sized(&self, seed: u64, side: u32) -> Result<Acked, String> {
        let body = jpeg(seed, side);
        let r = self
            .app
            .post(format!("{}/v1/photos", self.uploader_url()))
            .header("content-type", "image/jpeg")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| format!("upload {seed}: {e}"))?;
        let status = r.status();
        let text = r.text().await.map_err(|e| format!("upload {seed}: {e}"))?;
        if !status.is_success() {
            return Err(format!("upload {seed}: {status} {text}"));
        }
        let v: serde_json::Value = serde_json::from_str(&text).expect("upload JSON");
        let id = v["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("photo id");
        let url = v["urls"]["original"]
            .as_str()
            .expect("original URL")
            .to_string();
        Ok(Acked {
            id,
            url,
            body: Arc::new(body),
        })
    }

    async fn delete(&self, id: u64) {
        let r = self
            .app
            .delete(format!("{}/v1/photos/{id}", self.uploader_url()))
            .send()
            .await
            .expect("delete");
        assert!(r.status().is_success(), "delete {id}: {}", r.status());
    }

    /// GET through the cache: status and body.
    async fn read(&self, url: &str) -> Result<(u16, Vec<u8>), String> {
        let r = self
            .public
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let s = r.status().as_u16();
        Ok((s, r.bytes().await.map_err(|e| e.to_string())?.to_vec()))
    }

    /// Reads photo `a` through the cache and checks the bytes; `Err` says what was wrong.
    async fn check_read(&self, a: &Acked) -> Result<(), String> {
        match self.read(&a.url).await {
            Ok((200, b)) if b == *a.body => Ok(()),
            Ok((200, b)) => Err(format!("{}: wrong bytes ({} bytes)", a.url, b.len())),
            Ok((s, b)) => Err(format!("{}: {s} {}", a.url, String::from_utf8_lossy(&b))),
            Err(e) => Err(format!("{}: {e}", a.url)),
        }
    }

    /// Every replica the directory names serves photo `a`'s original with its bytes.
    async fn check_every_replica(&self, a: &Acked) {
        let p = self.photo(a.id).await;
        for r in &p.replicas {
            let url = format!(
                "{}/v1/needles/{}/{}/0/{}",
                r.url.trim_end_matches('/'),
                p.volume_id,
                p.id,
                format_cookie(p.cookie)
            );
            let got = self.public.get(&url).send().await.expect("replica read");
            assert_eq!(got.status(), 200, "{url}");
            assert!(
                got.bytes().await.expect("body").as_ref() == a.body.as_slice(),
                "{url}: wrong bytes"
            );
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Uploads in a loop until `stop`; acknowledged ones are pushed to `acked` with the time
/// they were started, failures to `failed` likewise.
async fn upload_load(
    h: Arc<Hosts>,
    first_seed: u64,
    acked: Arc<Mutex<Vec<(Instant, Acked)>>>,
    failed: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut seed = first_seed;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let started = Instant::now();
        match h.upload(seed).await {
            Ok(a) => acked.lock().unwrap().push((started, a)),
            Err(e) => failed.lock().unwrap().push((started, e)),
        }
        seed += 1_000;
    }
}

/// A store host lost under load (its processes killed with SIGKILL and its link cut): every
/// acknowledged photo is still read through the cache (from the other replica), uploads are
/// placed on volumes without the lost store within 10 s, and after the re-replication delay
/// every volume has two replicas again, none on the lost host.
#[test]
fn a_store_host_lost_under_load() {
    let _serial = serial();
    let rt = runtime();
    rt.block_on(async {
        let Some(h) = Hosts::start(
            "a_store_host_lost_under_load",
            Opts {
                stores: 4,
                rereplicate_after_ms: 4_000,
                volume_bytes: 16 << 20,
                small_disk: None,
                admission: "none",
            },
        )
        .await
        else {
            return;
        };
        let h = Arc::new(h);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loads: Vec<_> = (0..3)
            .map(|w| {
                tokio::spawn(upload_load(
                    h.clone(),
                    w,
                    acked.clone(),
                    failed.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Net::until(
            "20 acknowledged uploads",
            Duration::from_secs(30),
            async || (acked.lock().unwrap().len() >= 20).then_some(()),
        )
        .await;
        // Pick the store holding the most acknowledged photos, and lose it.
        let mut per_store: HashMap<String, usize> = HashMap::new();
        let so_far: Vec<(Instant, Acked)> = acked.lock().unwrap().clone();
        for (_, a) in so_far {
            for r in h.photo(a.id).await.replicas {
                *per_store
                    .entry(r.url.trim_end_matches('/').to_string())
                    .or_default() += 1;
            }
        }
        let lost = (0..h.stores.len())
            .max_by_key(|i| per_store.get(&h.store_url(*i)).copied().unwrap_or(0))
            .expect("a store");
        let lost_id = h.store_id(lost).await;
        let lost_url = h.store_url(lost);
        let before: Vec<Acked> = acked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, a)| a.clone())
            .collect();
        let killed_at = Instant::now();
        h.net.kill_host(h.store_hosts[lost]);
        h.net.cut(h.store_hosts[lost]);
        // Reads of everything acknowledged go on while the load runs.
        let mut read_errors = Vec::new();
        let read_until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < read_until {
            let recent: Vec<Acked> = {
                let all = acked.lock().unwrap();
                all.iter().rev().take(10).map(|(_, a)| a.clone()).collect()
            };
            let sample: Vec<Acked> = recent.into_iter().chain(before.iter().cloned()).collect();
            for a in &sample {
                if let Err(e) = h.check_read(a).await {
                    read_errors.push(e);
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for l in loads {
            l.await.expect("load task");
        }
        assert!(
            read_errors.is_empty(),
            "reads of acknowledged photos failed: {read_errors:#?}"
        );
        // Uploads move off the lost store within 10 s.
        let acked_all: Vec<(Instant, Acked)> = acked.lock().unwrap().clone();
        let late: Vec<&Acked> = acked_all
            .iter()
            .filter(|(t, _)| *t >= killed_at + Duration::from_secs(10))
            .map(|(_, a)| a)
            .collect();
        assert!(
            !late.is_empty(),
            "no upload started 10 s after the loss was acknowledged"
        );
        for a in &late {
            let p = h.photo(a.id).await;
            assert!(
                p.replicas
                    .iter()
                    .all(|r| r.url.trim_end_matches('/') != lost_url),
                "photo {} uploaded after 10 s went to a volume on the lost store: {p:?}",
                a.id
            );
        }
        let late_failures: Vec<String> = failed
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= killed_at + Duration::from_secs(10))
            .map(|(_, e)| e.clone())
            .collect();
        assert!(
            late_failures.is_empty(),
            "uploads started 10 s after the loss failed: {late_failures:#?}"
        );
        // Re-replication: every volume back to two replicas, none on the lost store.
        h.wait_all_volumes_whole(Some(lost_id), Duration::from_secs(40))
            .await;
        for (_, a) in &acked_all {
            h.check_read(a).await.expect("read after re-replication");
            h.check_every_replica(a).await;
        }
        eprintln!(
            "store host lost: {} uploads acknowledged ({} after the loss), {} refused, \
             re-replicated in {:?}",
            acked_all.len(),
            acked_all.iter().filter(|(t, _)| *t > killed_at).count(),
            failed.lock().unwrap().len(),
            killed_at.elapsed()
        );
    });
}

/// Photo `a` is gone everywhere: the cache answers 404 and so does every replica the directory
/// named for it (`replicas`: store URL, volume, cookie).
async fn assert_deleted_everywhere(h: &Hosts, a: &Acked, replicas: &[String]) {
    match h.read(&a.url).await {
        Ok((404, _)) => {}
        other => panic!("deleted photo {} through the cache: {other:?}", a.id),
    }
    for url in replicas {
        let c = h.public.clone();
        Net::until(
            &format!("the delete of photo {} applied on {url}", a.id),
            Duration::from_secs(20),
            async || {
                let r = c.get(url).send().await.ok()?;
                match r.status().as_u16() {
                    404 => Some(()),
                    200 => {
                        // Still there: it must at least be the photo's own bytes.
                        let b = r.bytes().await.ok()?;
                        assert!(b.as_ref() == a.body.as_slice(), "{url}: wrong bytes");
                        None
                    }
                    s => panic!("{url}: {s}"),
                }
            },
        )
        .await;
    }
}

/// The store-side URLs of photo `a`'s original, one per replica.
async fn replica_urls(h: &Hosts, a: &Acked) -> Vec<String> {
    let p = h.photo(a.id).await;
    p.replicas
        .iter()
        .map(|r| {
            format!(
                "{}/v1/needles/{}/{}/0/{}",
                r.url.trim_end_matches('/'),
                p.volume_id,
                p.id,
                format_cookie(p.cookie)
            )
        })
        .collect()
}

/// A store host partitioned (its link cut, its processes alive) while uploads and deletes go
/// on, then healed: no acknowledged upload is lost, no deleted photo is served, through the
/// cache or by any replica (the deletes the partitioned store missed reach it after the heal).
#[test]
fn a_store_host_partitioned_and_healed() {
    let _serial = serial();
    let rt = runtime();
    rt.block_on(async {
        let Some(h) = Hosts::start(
            "a_store_host_partitioned_and_healed",
            Opts {
                stores: 3,
                rereplicate_after_ms: 0,
                volume_bytes: 16 << 20,
                small_disk: None,
                admission: "none",
            },
        )
        .await
        else {
            return;
        };
        let mut acked = Vec::new();
        for seed in 0..24 {
            acked.push(h.upload(seed).await.expect("upload before the partition"));
        }
        let mut per_store: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, a) in acked.iter().enumerate() {
            for r in h.photo(a.id).await.replicas {
                per_store
                    .entry(r.url.trim_end_matches('/').to_string())
                    .or_default()
                    .push(i);
            }
        }
        let cut = (0..3)
            .max_by_key(|i| per_store.get(&h.store_url(*i)).map_or(0, |v| v.len()))
            .expect("a store");
        let on_cut: HashSet<usize> = per_store[&h.store_url(cut)].iter().copied().collect();
        assert!(on_cut.len() >= 4, "too few photos on the store to cut");
        // Where every photo's original lives, before the cut (for the checks after).
        let mut where_: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for a in &acked {
            where_.insert(a.id, replica_urls(&h, a).await);
        }
        h.net.cut(h.store_hosts[cut]);
        let cut_at = Instant::now();
        // While it is cut: delete half of the photos it holds and two it does not, upload more.
        let mut deleted: Vec<Acked> = Vec::new();
        for (i, a) in acked.iter().enumerate() {
            if (on_cut.contains(&i) && i % 2 == 0) || (!on_cut.contains(&i) && deleted.len() < 2) {
                h.delete(a.id).await;
                deleted.push(a.clone());
            }
        }
        let gone: HashSet<u64> = deleted.iter().map(|a| a.id).collect();
        let mut refused = 0;
        let mut seed = 1_000;
        let uploads_from = Instant::now();
        let mut during = 0;
        while cut_at.elapsed() < Duration::from_secs(8)
            || uploads_from.elapsed() < Duration::from_secs(4)
        {
            match h.upload(seed).await {
                Ok(a) => {
                    where_.insert(a.id, replica_urls(&h, &a).await);
                    acked.push(a);
                    during += 1;
                }
                Err(_) => refused += 1,
            }
            seed += 1;
        }
        assert!(
            during > 0,
            "no upload went through while one store was cut off"
        );
        // During the partition: live photos are read (the other replica), deleted ones are not.
        for a in &acked {
            if gone.contains(&a.id) {
                match h.read(&a.url).await {
                    Ok((404, _)) => {}
                    other => panic!(
                        "deleted photo {} served during the partition: {other:?}",
                        a.id
                    ),
                }
            } else {
                h.check_read(a).await.expect("read during the partition");
            }
        }
        h.net.heal(h.store_hosts[cut]);
        h.wait_all_volumes_whole(None, Duration::from_secs(30))
            .await;
        for a in &acked {
            if gone.contains(&a.id) {
                assert_deleted_everywhere(&h, a, &where_[&a.id]).await;
            } else {
                h.check_read(a).await.expect("read after the heal");
                h.check_every_replica(a).await;
            }
        }
        eprintln!(
            "store host partitioned: {} photos acknowledged ({during} during the cut), {} deleted \
             during the cut, {refused} uploads refused during it",
            acked.len(),
            deleted.len()
        );
    });
}

/// The directory host cut off from the stores and the cache: the cache keeps serving what it
/// holds and reads the replicas it knows for the rest; uploads are refused with a JSON error
/// (no photo can be committed) and work again once the directory is back.
#[test]
fn the_directory_host_cut_off() {
    let _serial = serial();
    let rt = runtime();
    rt.block_on(async {
        let Some(h) = Hosts::start(
            "the_directory_host_cut_off",
            Opts {
                stores: 3,
                rereplicate_after_ms: 0,
                volume_bytes: 16 << 20,
                small_disk: None,
                admission: "all",
            },
        )
        .await
        else {
            return;
        };
        let mut hot = Vec::new();
        let mut cold = Vec::new();
        for seed in 0..30 {
            let a = h.upload(seed).await.expect("upload");
            if seed % 2 == 0 {
                // Read once: the cache holds it.
                h.check_read(&a).await.expect("first read");
                hot.push(a);
            } else {
                cold.push(a);
            }
        }
        // The cache knows the replicas of every volume a hot photo is on; keep the cold photos
        // of those volumes (the cache never saw them: misses).
        let hot_volumes: HashSet<u32> = {
            let mut v = HashSet::new();
            for a in &hot {
                v.insert(h.photo(a.id).await.volume_id);
            }
            v
        };
        let mut cold_known = Vec::new();
        for a in cold {
            // Each first miss waits for the directory's timeout (the liveness check): a few.
            if cold_known.len() < 5 && hot_volumes.contains(&h.photo(a.id).await.volume_id) {
                cold_known.push(a);
            }
        }
        assert!(
            !cold_known.is_empty(),
            "no unread photo on a volume the cache knows"
        );
        h.net.cut(h.directory_host);
        let cut_at = Instant::now();
        // Long enough for the cache's replica lists (3 s) and the stores' liveness (2 s) to
        // go stale: every answer now comes without the directory.
        let mut rounds = 0;
        while cut_at.elapsed() < Duration::from_secs(8) || rounds < 2 {
            for a in hot.iter().chain(&cold_known) {
                h.check_read(a)
                    .await
                    .expect("read with the directory cut off");
            }
            rounds += 1;
        }
        let r = h
            .app
            .post(format!("{}/v1/photos", h.uploader_url()))
            .header("content-type", "image/jpeg")
            .body(jpeg(77, 64))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("the uploader answers");
        assert!(
            r.status().is_server_error(),
            "upload without a directory: {}",
            r.status()
        );
        let v: serde_json::Value = r.json().await.expect("a JSON error");
        assert!(v["error"].is_object() || v["error"].is_string(), "{v}");
        h.net.heal(h.directory_host);
        h.wait_all_volumes_whole(None, Duration::from_secs(30))
            .await;
        let a = Net::until(
            "an upload after the heal",
            Duration::from_secs(20),
            async || h.upload(99).await.ok(),
        )
        .await;
        h.check_read(&a).await.expect("read after the heal");
        for a in hot.iter().chain(&cold_known) {
            h.check_read(a).await.expect("read after the heal");
        }
        eprintln!(
            "directory cut off: {} cached and {} uncached photos served for {:?} without it",
            hot.len(),
            cold_known.len(),
            cut_at.elapsed()
        );
    });
}

/// One store host's disk fills up (a small tmpfs, then ballast): that store's volumes turn
/// read-only with a reason that says the disk is full, uploads go to other volumes, and
/// nothing is corrupted: every acknowledged photo reads back from every replica, also after
/// the full store is killed and restarted on its full disk.
#[test]
fn a_store_host_disk_full() {
    let _serial = serial();
    let rt = runtime();
    rt.block_on(async {
        let Some(h) = Hosts::start(
            "a_store_host_disk_full",
            Opts {
                stores: 3,
                rereplicate_after_ms: 0,
                volume_bytes: 8 << 20,
                small_disk: Some(48 << 20),
                admission: "none",
            },
        )
        .await
        else {
            return;
        };
        // The disk to fill: the first store that holds a volume (the stores register in
        // any order, and the first volumes go to the first two that do).
        let vols = h.volumes().await.expect("volumes");
        let mut full = None;
        for i in 0..3 {
            let id = h.store_id(i).await;
            if vols
                .iter()
                .any(|v| v.replicas.iter().any(|r| r.store_id == id))
            {
                full = Some((i, id));
                break;
            }
        }
        let Some((full_index, full_id)) = full else {
            panic!("no store holds a volume: {vols:?}");
        };
        let full_url = h.store_url(full_index);
        h.net
            .fill_disk(&h.store_dirs[full_index], 128 << 10)
            .expect("fill the disk");
        let mut acked = Vec::new();
        let mut refused = Vec::new();
        let mut seed = 0;
        // Upload until every volume on the full store is read-only in the directory.
        let started = Instant::now();
        let reasons = loop {
            for _ in 0..4 {
                match h.upload_sized(seed, 160).await {
                    Ok(a) => acked.push(a),
                    Err(e) => refused.push(e),
                }
                seed += 1;
            }
            let vols = h.volumes().await.expect("volumes");
            let mine: Vec<&LogicalVolumeInfo> = vols
                .iter()
                .filter(|v| v.replicas.iter().any(|r| r.store_id == full_id))
                .collect();
            if mine.iter().all(|v| !v.writable) {
                break mine
                    .iter()
                    .map(|v| (v.id, v.reason.clone().unwrap_or_default()))
                    .collect::<Vec<_>>();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "volumes on the full store still writable: {mine:?}"
            );
        };
        // The store says why, in its own volume list and through the directory.
        #[derive(serde::Deserialize)]
        struct Listed {
            volumes: Vec<haystack_proto::VolumeInfo>,
        }
        let store_vols = h
            .admin
            .get(format!("{full_url}/v1/volumes"))
            .send()
            .await
            .expect("store volumes")
            .json::<Listed>()
            .await
            .expect("store volumes JSON")
            .volumes;
        let filled: Vec<&haystack_proto::VolumeInfo> = store_vols
            .iter()
            .filter(|v| v.reason.as_deref().is_some_and(|r| r.contains("disk full")))
            .collect();
        assert!(
            !filled.is_empty(),
            "no volume says its disk is full: {store_vols:?} (directory: {reasons:?})"
        );
        assert!(
            reasons.iter().any(|(_, r)| r.contains("disk full")),
            "the directory does not say why: {reasons:?}"
        );
        // Writes go elsewhere.
        for i in 0..6 {
            let a = h
                .upload_sized(10_000 + i, 160)
                .await
                .expect("upload with one disk full");
            let p = h.photo(a.id).await;
            assert!(
                p.replicas.iter().all(|r| r.store_id != full_id),
                "an upload went to the full store: {p:?}"
            );
            acked.push(a);
        }
        // Nothing corrupted, before and after a kill -9 and restart on the full disk.
        for a in &acked {
            h.check_read(a).await.expect("read with the disk full");
            h.check_every_replica(a).await;
        }
        h.net.restart(h.stores[full_index]);
        let c = h.public.clone();
        Net::until("the full store back", Duration::from_secs(30), async || {
            let r = c.get(format!("{full_url}/health")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        for a in &acked {
            h.check_every_replica(a).await;
        }
        eprintln!(
            "disk full: {} uploads acknowledged, {} refused while the store filled; reasons \
             {reasons:?}",
            acked.len(),
            refused.len()
        );
    });
}

/// `haystack` as the operator runs it from the test's own namespace, with the cluster secret.
fn haystack_cli(h: &Hosts, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_haystack"))
        .arg("--cluster-secret-file")
        .arg(h.net.dir().join("cluster.secret"))
        .args(args)
        .output()
        .expect("haystack runs")
}

/// A store machine drained while uploads and reads go on (`haystack store drain ID`): every
/// replica it held is moved to other machines and it turns retired; `haystack store remove`
/// refuses while it holds data and while it still runs, and removes it once it is drained and
/// stopped. No acknowledged photo is lost and every replica serves every photo.
#[test]
fn a_store_host_drained_then_removed() {
    let _serial = serial();
    let rt = runtime();
    rt.block_on(async {
        let Some(h) = Hosts::start(
            "a_store_host_drained_then_removed",
            Opts {
                stores: 4,
                rereplicate_after_ms: 0,
                volume_bytes: 16 << 20,
                small_disk: None,
                admission: "none",
            },
        )
        .await
        else {
            return;
        };
        let h = Arc::new(h);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        for seed in 0..12 {
            let a = h.upload(seed).await.expect("upload");
            acked.lock().unwrap().push((Instant::now(), a));
        }
        let victim = {
            let stores: Vec<StoreInfo> = h
                .admin
                .get(format!("{}/v1/stores", h.directory_url()))
                .send()
                .await
                .expect("stores")
                .json()
                .await
                .expect("stores JSON");
            stores
                .iter()
                .max_by_key(|s| s.replicas)
                .expect("a store")
                .clone()
        };
        assert!(victim.replicas > 0, "{victim:?}");
        let victim_id = victim.store_id.to_string();
        let dir = h.directory_url();
        let out = haystack_cli(&h, &["store", "remove", &victim_id, "--directory", &dir]);
        assert!(
            !out.status.success(),
            "remove of a store holding data succeeded"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("drain"), "{err}");
        // Drain under load.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = tokio::spawn(upload_load(
            h.clone(),
            100,
            acked.clone(),
            failed.clone(),
            stop.clone(),
        ));
        let started = Instant::now();
        let h2 = h.clone();
        let (id2, dir2) = (victim_id.clone(), dir.clone());
        let out = tokio::task::spawn_blocking(move || {
            haystack_cli(
                &h2,
                &[
                    "store",
                    "drain",
                    &id2,
                    "--directory",
                    &dir2,
                    "--timeout-secs",
                    "60",
                ],
            )
        })
        .await
        .expect("drain task");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.await.expect("load");
        assert!(
            out.status.success(),
            "drain failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let drained_in = started.elapsed();
        let stores: Vec<StoreInfo> = h
            .admin
            .get(format!("{dir}/v1/stores"))
            .send()
            .await
            .expect("stores")
            .json()
            .await
            .expect("stores JSON");
        let v = stores
            .iter()
            .find(|s| s.store_id == victim.store_id)
            .expect("victim listed");
        assert_eq!(
            v.lifecycle,
            haystack_proto::directory::StoreLifecycle::Retired,
            "{v:?}"
        );
        assert_eq!(v.replicas, 0, "{v:?}");
        let vols = h.volumes().await.expect("volumes");
        for vol in &vols {
            assert_eq!(vol.replicas.len(), 2, "{vol:?}");
            assert!(
                vol.replicas.iter().all(|r| r.store_id != victim.store_id),
                "{vol:?}"
            );
            assert_ne!(vol.replicas[0].store_id, vol.replicas[1].store_id);
        }
        // Every acknowledged photo, from every replica, through the cache.
        let all: Vec<Acked> = acked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, a)| a.clone())
            .collect();
        for a in &all {
            h.check_read(a).await.expect("read after the drain");
            // A write that raced the copy is repaired from the kept replica: give it a moment.
            let mut tries = 0;
            loop {
                let p = h.photo(a.id).await;
                let mut ok = true;
                for r in &p.replicas {
                    let url = format!(
                        "{}/v1/needles/{}/{}/0/{}",
                        r.url.trim_end_matches('/'),
                        p.volume_id,
                        p.id,
                        format_cookie(p.cookie)
                    );
                    let got = h.public.get(&url).send().await.expect("replica read");
                    ok &= got.status() == 200
                        && got.bytes().await.expect("body").as_ref() == a.body.as_slice();
                }
                if ok {
                    break;
                }
                tries += 1;
                assert!(tries < 100, "photo {} not on every replica: {p:?}", a.id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Remove: refused while the retired store still runs, done once it is stopped.
        let out = haystack_cli(&h, &["store", "remove", &victim_id, "--directory", &dir]);
        assert!(!out.status.success(), "remove of a running store succeeded");
        let i = (0..h.stores.len())
            .find(|i| h.store_url(*i) == victim.url.trim_end_matches('/'))
            .expect("victim is one of ours");
        h.net.kill_host(h.store_hosts[i]);
        let out = Net::until(
            "remove of the stopped store",
            Duration::from_secs(20),
            async || {
                let out = haystack_cli(&h, &["store", "remove", &victim_id, "--directory", &dir]);
                out.status.success().then_some(out)
            },
        )
        .await;
        assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
        let stores: Vec<StoreInfo> = h
            .admin
            .get(format!("{dir}/v1/stores"))
            .send()
            .await
            .expect("stores")
            .json()
            .await
            .expect("stores JSON");
        assert!(stores.iter().all(|s| s.store_id != victim.store_id));
        eprintln!(
            "drain: store {} emptied of {} volumes in {drained_in:?} under load ({} photos \
             acknowledged, {} uploads refused), then removed",
            victim.store_id,
            victim.replicas,
            all.len(),
            failed.lock().unwrap().len()
        );
    });
}
