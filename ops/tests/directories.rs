//! Roles given several directories, the first of them dead (a port bound, then closed): the
//! stores of a testkit cluster register and heartbeat through the list, the uploader uploads,
//! the cache serves misses (volume replicas and liveness from the directory), each counting
//! its failovers once and then sticking to the live directory; the `haystack` tools take the
//! list as a comma-separated or repeated `--directory` or `HAYSTACK_DIRECTORY`; a list that is
//! not one (not http(s), twice the same, both config keys) stops a role at start with a
//! message naming it. The stores of `cluster.rs` run as processes with `--directory
//! DEAD,LIVE` too.

use std::process::Command;

use haystack_testkit::{bind_loopback, dead_url, Cluster, ClusterOptions};

use crate::common::jpeg;

/// The value of counter `name` in a Prometheus text, 0 when absent.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_cache_misses_go_on_past_a_dead_first_directory() {
    let cache_l = bind_loopback();
    let cache_url = format!("http://{}", cache_l.local_addr().expect("addr"));
    // The stores register and heartbeat through [dead, live]: start() waits for their volumes.
    let cluster = Cluster::start(ClusterOptions {
        cache_url: Some(cache_url.clone()),
        dead_directory_first: true,
        ..Default::default()
    })
    .await;
    let urls = cluster.directory_urls();
    assert_eq!(urls.len(), 2);
    assert_eq!(urls[1], cluster.directory_url());
    assert!(
        reqwest::get(format!("{}/health", urls[0])).await.is_err(),
        "the first directory URL must be dead"
    );
    let (_cache, _uploader, uploader_url) = crate::roles::cache_and_uploader(&cluster, cache_l);
    let public = reqwest::Client::new();
    let mut photos = Vec::new();
    for shade in 0..4u8 {
        let data = jpeg(shade * 40);
        let mut answer = None;
        for _ in 0..200 {
            if let Ok(r) = public
                .post(format!("{uploader_url}/v1/photos"))
                .header("content-type", "image/jpeg")
                .body(data.clone())
                .send()
                .await
            {
                assert_eq!(r.status(), 201, "upload through [dead, live] directories");
                answer = Some(r.json::<serde_json::Value>().await.expect("JSON"));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let answer = answer.expect("the uploader answered");
        let url = answer["urls"]["original"]
            .as_str()
            .expect("original URL")
            .to_string();
        assert!(url.starts_with(&cache_url), "{url}");
        let id = answer["id"].as_str().expect("photo id").to_string();
        photos.push((url, data, id));
    }
    // Every read is a miss: the cache asks the directory for the volume's replicas and the
    // photo's liveness.
    for (url, data, _) in &photos {
        let r = public.get(url).send().await.expect("GET through the cache");
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.bytes().await.expect("body").as_ref(), data.as_slice());
    }
    let admin = cluster.admin_http();
    let stats: serde_json::Value = admin
        .get(format!("{cache_url}/v1/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(stats["misses"], 4, "{stats}");
    let cache_failovers = stats["directory_failovers"].as_u64().expect("counted");
    // The first miss asks for replicas and liveness at once: both may fail over before the
    // client settles on the live directory; nothing after that does.
    assert!(
        (1..=2).contains(&cache_failovers),
        "cache failovers {cache_failovers}: {stats}"
    );
    let metrics = metrics_text(&public, &uploader_url).await;
    assert_eq!(
        counter(&metrics, "haystack_uploader_directory_failovers_total"),
        1,
        "one failover, then the uploader sticks to the live directory"
    );
    let metrics = metrics_text(&public, &cache_url).await;
    assert!(
        counter(&metrics, "haystack_cache_directory_failovers_total") >= 1,
        "{metrics}"
    );
    assert!(
        counter(&metrics, "haystack_store_directory_failovers_total") >= 2,
        "each store fails over once"
    );

    // The tools: a repeated flag, then the environment variable with a comma-separated list.
    let token = cluster.admin_token();
    let dead = urls[0].clone();
    let live = urls[1].clone();
    let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(["status", "--json", "--token", &token])
        .args(["--directory", &dead, "--directory", &live])
        .output()
        .expect("haystack status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("trying the next directory") && stderr.contains(&dead),
        "the failover is logged with the URL that failed: {stderr}"
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(
        !status["volumes"].as_array().expect("volumes").is_empty(),
        "{status}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(["photo", "info", &photos[0].2])
        .args(["--token", &token])
        .env("HAYSTACK_DIRECTORY", format!("{dead},{live}"))
        .output()
        .expect("haystack photo info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `haystack ARGS` (a role that must refuse to start) and answers its stderr.
fn refused(args: &[&str], config: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haystack"));
    cmd.args(args).args(["--listen", "127.0.0.1:0"]);
    if let Some(text) = config {
        let p = dir.path().join("haystack.toml");
        std::fs::write(&p, text).expect("config");
        cmd.arg("--config").arg(&p);
    }
    let mut child = cmd
        .env_remove("HAYSTACK_DIRECTORY")
        .env_remove("HAYSTACK_CONFIG")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("haystack");
    // A role that accepted the list would run until killed: give it 20 s to refuse.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).ok();
    }
    assert!(
        status.is_some_and(|s| !s.success()),
        "haystack {args:?} started: {stderr}"
    );
    stderr
}

#[test]
fn a_bad_directory_list_stops_a_role_at_start_with_a_clear_message() {
    let dead = dead_url();
    let e = refused(
        &["uploader", "--directory", &format!("{dead},ftp://d:1")],
        None,
    );
    assert!(e.contains("\"ftp://d:1\" is not an http(s) URL"), "{e}");
    let e = refused(&["cache", "--directory", &format!("{dead},{dead}/")], None);
    assert!(e.contains("listed twice"), "{e}");
    let e = refused(
        &["s3"],
        Some("[s3]\ndirectory_url = \"http://a:1\"\ndirectory_urls = [\"http://b:2\"]\n"),
    );
    assert!(e.contains("not both"), "{e}");
    let e = refused(&["uploader"], Some("[uploader]\ndirectory_urls = []\n"));
    assert!(e.contains("no directory URL"), "{e}");
    let e = refused(&["store", "--directory", "127.0.0.1:8082"], None);
    assert!(e.contains("is not an http(s) URL"), "{e}");
}

/// Polls `f` every 100 ms until it answers, for up to 60 s.
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Two live directory instances over one ScyllaDB keyspace, two stores, an uploader and a
/// cache, all given both directories: photos are uploaded and read, the first directory is
/// stopped, and uploads and reads go on through the second (the stores' heartbeats too: their
/// volumes stay writable past the liveness timeout). Needs `HAYSTACK_TEST_SCYLLA=host:port`;
/// says SKIPPED otherwise (there is one directory process with the embedded backend). Not run
/// on the build machine (no ScyllaDB there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_directories_over_scylla() {
    use haystack_testkit::{random_secret, spawn_node, stopped};
    let Ok(host) = std::env::var("HAYSTACK_TEST_SCYLLA") else {
        // Written to the stderr handle, not through eprintln!, so that the test harness's
        // output capture does not hide the skip.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "two_live_directories_over_scylla: SKIPPED: HAYSTACK_TEST_SCYLLA is not set (set it \
             to host:port of a ScyllaDB or Cassandra node; docs/directory.md shows how to start \
             one)"
        );
        return;
    };
    let keys = haystack_proto::auth::ClusterKeys::from_secret(&random_secret()).expect("keys");
    let security = haystack_service::auth::Security::with_keys(keys.clone());
    let root = tempfile::tempdir().expect("temp dir");
    let keyspace = format!("haystack_test_{}_dirs", std::process::id());
    let cache_l = bind_loopback();
    let cache_url = format!("http://{}", cache_l.local_addr().expect("addr"));
    let mut dirs = Vec::new();
    let mut dir_urls = Vec::new();
    for i in 0..2 {
        let l = bind_loopback();
        dir_urls.push(format!("http://{}", l.local_addr().expect("addr")));
        let cfg = haystack_directory::DirectoryConfig {
            security: security.clone(),
            metadata: format!("scylla://{host}/{keyspace}"),
            replication_factor: 2,
            heartbeat_interval_secs: 1,
            store_timeout_ms: 4_000,
            maintenance_interval_ms: 200,
            volume_capacity_bytes: 64 << 20,
            min_writable_volumes: 2,
            min_writable_free_bytes: 0,
            writable_headroom_secs: 0,
            cache_url: Some(cache_url.clone()),
            scylla: haystack_directory::config::ScyllaConfig {
                replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}".into(),
                keyspace_options: std::env::var("HAYSTACK_TEST_SCYLLA_KEYSPACE_OPTIONS")
                    .unwrap_or_default(),
                ..Default::default()
            },
            ..Default::default()
        };
        dirs.push(spawn_node(
            &format!("directory-{i}"),
            l,
            move |l, rx| async move {
                haystack_directory::run(l, cfg, stopped(rx))
                    .await
                    .expect("directory runs");
            },
        ));
    }
    let mut stores = Vec::new();
    for i in 0..2 {
        let l = bind_loopback();
        let public_url = format!("http://{}", l.local_addr().expect("addr"));
        let run = haystack_store::RunConfig {
            store: haystack_store::StoreConfig {
                data_dir: root.path().join(format!("store-{i}")),
                max_volume_bytes: 64 << 20,
                prealloc_step: 4 << 20,
                security: security.clone(),
                ..Default::default()
            },
            heartbeat: Some(haystack_store::heartbeat::HeartbeatConfig {
                directory_urls: dir_urls.clone(),
                public_url,
                zone: None,
                rack: None,
                interval: std::time::Duration::from_secs(1),
            }),
            ..Default::default()
        };
        stores.push(spawn_node(
            &format!("store-{i}"),
            l,
            move |l, rx| async move {
                haystack_store::run(l, run, stopped(rx))
                    .await
                    .expect("store runs");
            },
        ));
    }
    let ccfg = haystack_cache::CacheConfig {
        directory_urls: Some(dir_urls.clone()),
        capacity_bytes: 16 << 20,
        http_workers: 1,
        security: security.clone(),
        ..Default::default()
    };
    let _cache = spawn_node("cache", cache_l, move |l, rx| async move {
        haystack_cache::run(l, ccfg, stopped(rx))
            .await
            .expect("cache runs");
    });
    let up_l = bind_loopback();
    let uploader_url = format!("http://{}", up_l.local_addr().expect("addr"));
    let ucfg = haystack_uploader::UploaderConfig {
        directory_urls: Some(dir_urls.clone()),
        http_workers: 1,
        image_workers: 1,
        security: security.clone(),
        ..Default::default()
    };
    let _uploader = spawn_node("uploader", up_l, move |l, rx| async move {
        haystack_uploader::run(l, ucfg, stopped(rx))
            .await
            .expect("uploader runs");
    });
    let token = keys.mint(
        haystack_proto::auth::Role::Admin,
        "test",
        haystack_service::auth::unix_now() + 3600,
    );
    let http = reqwest::Client::new();
    let writable = async |base: &str| -> usize {
        let Ok(r) = http
            .get(format!("{base}/v1/volumes"))
            .bearer_auth(&token)
            .send()
            .await
        else {
            return 0;
        };
        let v: Vec<haystack_proto::directory::LogicalVolumeInfo> =
            r.json().await.unwrap_or_default();
        v.iter().filter(|v| v.writable).count()
    };
    for base in &dir_urls {
        until("writable volumes on both directories", async || {
            (writable(base).await > 0).then_some(())
        })
        .await;
    }
    let upload = async |shade: u8| -> (String, Vec<u8>) {
        let data = jpeg(shade);
        let url = until("an upload", async || {
            let r = http
                .post(format!("{uploader_url}/v1/photos"))
                .header("content-type", "image/jpeg")
                .body(data.clone())
                .send()
                .await
                .ok()?;
            assert_eq!(r.status(), 201, "upload");
            let v: serde_json::Value = r.json().await.ok()?;
            v["urls"]["original"].as_str().map(str::to_string)
        })
        .await;
        (url, data)
    };
    let mut photos = Vec::new();
    for shade in 0..3u8 {
        photos.push(upload(shade * 30).await);
    }
    // The first directory goes away: everyone moves to the second.
    dirs[0].stop();
    // Past the liveness timeout: the stores heartbeat through the second directory now, so it
    // keeps them up and their volumes writable.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert!(
        writable(&dir_urls[1]).await > 0,
        "the stores' volumes stay writable through the second directory"
    );
    for shade in 3..6u8 {
        photos.push(upload(shade * 30).await);
    }
    for (url, data) in &photos {
        let r = http.get(url).send().await.expect("GET through the cache");
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.bytes().await.expect("body").as_ref(), data.as_slice());
    }
    let metrics = http
        .get(format!("{uploader_url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(counter(&metrics, "haystack_uploader_directory_failovers_total") >= 1);
    drop(stores);
}

/// A role's `/metrics` page.
async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}
