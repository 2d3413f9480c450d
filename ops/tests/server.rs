//! `haystack server`, README's run command, end to end: the whole cluster comes up on
//! loopback from the printed example config; a photo is uploaded and read through the cache,
//! a video is read with a range across chunks, a photo is deleted and vanishes from the cache,
//! its volume is compacted and verified, a store is killed and its replica repaired onto
//! another machine, Ctrl-C (SIGINT) stops every process cleanly, and a restart on the same
//! data still serves everything.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haystack_proto::directory::LogicalVolumeInfo;
use rand::Rng;

/// `n` consecutive free loopback ports.
fn free_ports(n: u16) -> u16 {
    let mut rng = rand::rng();
    loop {
        let base: u16 = rng.random_range(20_000..60_000);
        let held: Vec<_> = (0..n)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
}

/// Ports of one `haystack server`.
#[derive(Clone, Copy)]
struct Ports {
    directory: u16,
    store: u16,
    cache: u16,
    uploader: u16,
    s3: u16,
}

fn start(data: &std::path::Path, config: &std::path::Path, p: Ports) -> std::process::Child {
    start_with(data, config, p, &[])
}

/// `haystack server` with `extra` arguments after the others.
fn start_with(
    data: &std::path::Path,
    config: &std::path::Path,
    p: Ports,
    extra: &[&str],
) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args([
            "server",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--directory-port",
            &p.directory.to_string(),
            "--store-port",
            &p.store.to_string(),
            "--cache-port",
            &p.cache.to_string(),
            "--uploader-port",
            &p.uploader.to_string(),
            "--s3-port",
            &p.s3.to_string(),
            "--max-volume-bytes",
            &(64u64 << 20).to_string(),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("haystack server starts");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(
        first.contains("cluster is up"),
        "unexpected first line: {first}"
    );
    std::thread::spawn(move || for _ in lines {});
    child
}

fn stop(mut child: std::process::Child) {
    crate::crash::signal(child.id(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            assert!(s.success(), "haystack server exited with {s}");
            return;
        }
        assert!(Instant::now() < deadline, "haystack server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn server_runs_the_photo_lifecycle_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let dport = free_ports(1);
    let ports = Ports {
        directory: dport,
        store: free_ports(3),
        cache: free_ports(1),
        uploader: free_ports(1),
        s3: free_ports(1),
    };
    // The printed example, with one value changed, is a working config file.
    let example = Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args(["config", "example"])
        .output()
        .expect("haystack config example");
    assert!(example.status.success());
    let text = String::from_utf8(example.stdout).expect("utf-8").replace(
        "\ncapacity_bytes = 1073741824",
        "\ncapacity_bytes = \"64MiB\"",
    );
    assert!(text.contains("\"64MiB\""));
    let config = dir.path().join("haystack.toml");
    std::fs::write(&config, text).expect("write config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let c = reqwest::Client::new();
    let child = start(&data, &config, ports);
    // The server made a cluster secret in its data directory; internal routes need proof of
    // it, and the tools read it from the file.
    let secret_file = data.join("cluster.secret");
    let secret = std::fs::read_to_string(&secret_file).expect("haystack server made a secret");
    let keys = haystack_proto::auth::ClusterKeys::from_secret(&secret).expect("a valid secret");
    let admin = {
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 3600;
        let token = keys.mint(haystack_proto::auth::Role::Admin, "test", expires);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .expect("client")
    };
    let volumes = |c: reqwest::Client| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = c
                .get(format!("http://127.0.0.1:{dport}/v1/volumes"))
                .send()
                .await
            {
                if let Ok(v) = r.json::<Vec<LogicalVolumeInfo>>().await {
                    if v.iter().filter(|v| v.writable).count() >= 1 {
                        return v;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no writable volume");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let before = rt.block_on(volumes(admin.clone()));
    let anonymous = rt.block_on(async {
        c.get(format!("http://127.0.0.1:{dport}/v1/volumes"))
            .send()
            .await
            .expect("GET /v1/volumes")
            .status()
    });
    assert_eq!(anonymous, 401, "the volume listing needs a token");
    for v in &before {
        assert_eq!(v.replicas.len(), 2, "replication 2 by default");
    }
    // The S3 role is part of the cluster: it answers, and refuses an unsigned listing.
    let s3 = format!("http://127.0.0.1:{}", ports.s3);
    let (health, anon) = rt.block_on(async {
        let h = c
            .get(format!("{s3}/health"))
            .send()
            .await
            .expect("s3 health");
        let a = c.get(format!("{s3}/")).send().await.expect("s3 list");
        (h.status().as_u16(), a.status().as_u16())
    });
    assert_eq!((health, anon), (200, 403));
    let up = format!("http://127.0.0.1:{}", ports.uploader);
    let cache = format!("http://127.0.0.1:{}", ports.cache);
    let jpeg = make_jpeg(900, 600);
    let video: Vec<u8> = (0..(9u32 << 20) + 12_345)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    let (photo, video_url, vid) = rt.block_on(async {
        // Upload; every URL points at the cache, which serves the bytes.
        let photo = upload_photo(&c, &up, &jpeg).await;
        let urls = &photo["urls"];
        let original = urls["original"].as_str().expect("original url");
        assert!(original.starts_with(&cache), "{photo}");
        let r = c.get(original).send().await.expect("get original");
        assert_eq!(r.status(), 200);
        let etag = r.headers()["etag"].to_str().expect("etag").to_string();
        assert_eq!(r.bytes().await.expect("body").as_ref(), &jpeg[..]);
        let r = c
            .get(original)
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("conditional get");
        assert_eq!(r.status(), 304);
        let thumb = c
            .get(urls["thumb"].as_str().expect("thumb url"))
            .send()
            .await
            .expect("get thumb")
            .bytes()
            .await
            .expect("thumb body");
        let t = image::load_from_memory(&thumb).expect("thumb decodes");
        assert_eq!((t.width(), t.height()), (320, 213));
        // A video, read back with a range across the first chunk boundary (4 MiB).
        let r = c
            .post(format!("{up}/v1/videos"))
            .header("content-type", "video/mp4")
            .body(video.clone())
            .send()
            .await
            .expect("video upload");
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.expect("video JSON");
        let video_url = v["url"].as_str().expect("video url").to_string();
        assert!(video_url.starts_with(&cache), "{v}");
        check_video_range(&c, &video_url, &video).await;
        // Another photo, deleted: every URL answers 404 through the cache afterwards.
        let doomed = upload_photo(&c, &up, &make_jpeg(400, 300)).await;
        for (_, u) in doomed["urls"].as_object().expect("urls") {
            let r = c.get(u.as_str().expect("url")).send().await.expect("get");
            assert_eq!(r.status(), 200);
        }
        let id = doomed["id"].as_str().expect("id");
        let r = c
            .delete(format!("{up}/v1/photos/{id}"))
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), 204);
        for (_, u) in doomed["urls"].as_object().expect("urls") {
            let r = c.get(u.as_str().expect("url")).send().await.expect("get");
            assert_eq!(r.status(), 404, "{u} still served after delete");
        }
        let vid = volume_in(doomed["urls"]["original"].as_str().expect("url"));
        (photo, video_url, vid)
    });
    let dbase = format!("http://127.0.0.1:{dport}");
    let hs = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--directory", dbase.as_str(), "--json"]);
        let out = Command::new(env!("CARGO_BIN_EXE_haystack"))
            .args(&all)
            .env("HAYSTACK_CLUSTER_SECRET_FILE", &secret_file)
            .output()
            .expect("haystack tool");
        assert!(
            out.status.success(),
            "{args:?}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON output")
    };
    // The deleted photo's space comes back; a full scan finds nothing wrong.
    let comp = hs(&["volume", "compact", &vid.to_string()]);
    for r in comp.as_array().expect("replicas") {
        assert!(
            r["report"]["reclaimed_bytes"].as_u64().unwrap_or(0) > 0,
            "{comp}"
        );
    }
    // The operator's compaction is in the audit log, in the tool's name.
    let audit = std::fs::read_to_string(data.join("logs").join("audit.log")).expect("audit log");
    assert!(
        audit
            .lines()
            .any(|l| l.contains(&format!("/v1/volumes/{vid}/compact"))
                && l.contains("\"who\":\"admin:haystack-cli\"")),
        "{audit}"
    );
    let ver = hs(&["volume", "verify", &vid.to_string()]);
    for r in ver.as_array().expect("replicas") {
        assert_eq!(
            r["report"]["corrupt"].as_array().map(|a| a.len()),
            Some(0),
            "{ver}"
        );
    }
    // Kill a store holding the first photo; the cluster goes on, reads fail over, and the
    // replica is repaired onto the third store.
    let pid_id = photo["id"].as_str().expect("id").to_string();
    let (info, store_urls) = rt.block_on(async {
        let info: serde_json::Value = admin
            .get(format!("{dbase}/v1/photos/{pid_id}"))
            .send()
            .await
            .expect("lookup")
            .json()
            .await
            .expect("photo info");
        let stores: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", ports.store + i))
            .collect();
        (info, stores)
    });
    let replicas: Vec<String> = info["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| r["url"].as_str().expect("url").to_string())
        .collect();
    let victim = replicas[0].clone();
    let spare = store_urls
        .iter()
        .find(|u| !replicas.contains(u))
        .expect("a store without the volume")
        .clone();
    rt.block_on(async {
        let h: serde_json::Value = c
            .get(format!("{victim}/health"))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .expect("health JSON");
        let pid = h["pid"].as_u64().expect("pid");
        crate::crash::signal(pid as u32, libc::SIGKILL);
        // The medium variant was never read: a miss, served from the surviving replica.
        let medium = photo["urls"]["medium"].as_str().expect("medium url");
        let r = c.get(medium).send().await.expect("get medium");
        assert_eq!(r.status(), 200, "read did not fail over");
    });
    let photo_vid = info["volume_id"].as_u64().expect("volume id").to_string();
    let rep = hs(&[
        "volume", "repair", &photo_vid, "--to", &spare, "--from", &victim,
    ]);
    assert_eq!(
        rep["copied"]["needles"].as_u64().map(|n| n >= 4),
        Some(true),
        "{rep}"
    );
    rt.block_on(async {
        let cookie = info["cookie"].as_str().expect("cookie");
        let r = c
            .get(format!(
                "{spare}/v1/needles/{photo_vid}/{pid_id}/0/{cookie}"
            ))
            .send()
            .await
            .expect("get from the new replica");
        assert_eq!(r.bytes().await.expect("body").as_ref(), &jpeg[..]);
    });
    stop(child);
    for sub in ["directory", "store0", "store1", "store2", "logs"] {
        assert!(data.join(sub).exists(), "{sub} missing");
    }
    // Restart on the same data: the same volumes, the photo and the video are there, and the
    // deleted photo stays deleted.
    let child = start(&data, &config, ports);
    let after = rt.block_on(volumes(admin.clone()));
    for v in &before {
        assert!(
            after.iter().any(|a| a.id == v.id),
            "volume {} lost across restart",
            v.id
        );
    }
    rt.block_on(async {
        for (_, u) in photo["urls"].as_object().expect("urls") {
            let r = c.get(u.as_str().expect("url")).send().await.expect("get");
            assert_eq!(r.status(), 200, "{u} after restart");
        }
        let original = c
            .get(photo["urls"]["original"].as_str().expect("url"))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(original.as_ref(), &jpeg[..]);
        check_video_range(&c, &video_url, &video).await;
    });
    stop(child);
}

/// `haystack server --signed-reads-ttl` (issue 17): the flag reaches every role, so the
/// uploader's URLs are signed and the cache serves them, and only them. Before the fix the
/// server refused the flag: it checked for the cluster secret before making it.
#[test]
fn server_with_signed_reads_serves_signed_urls_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").expect("write config");
    let ports = Ports {
        directory: free_ports(1),
        store: free_ports(3),
        cache: free_ports(1),
        uploader: free_ports(1),
        s3: free_ports(1),
    };
    let child = start_with(&data, &config, ports, &["--signed-reads-ttl", "600"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = reqwest::Client::new();
        let jpeg = make_jpeg(64, 48);
        let up = format!("http://127.0.0.1:{}", ports.uploader);
        let photo = upload_photo(&c, &up, &jpeg).await;
        let url = photo["urls"]["original"].as_str().expect("URL").to_string();
        assert!(url.contains("?expires=") && url.contains("&sig="), "{url}");
        let r = c.get(&url).send().await.expect("signed GET");
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.expect("body").as_ref(), &jpeg[..]);
        let bare = url.split('?').next().expect("path");
        let r = c.get(bare).send().await.expect("unsigned GET");
        assert_eq!(r.status(), 403);
    });
    stop(child);
}

fn make_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode JPEG");
    out.into_inner()
}

async fn upload_photo(c: &reqwest::Client, up: &str, jpeg: &[u8]) -> serde_json::Value {
    // Right after start the directory may still be creating volumes: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .post(format!("{up}/v1/photos"))
            .header("content-type", "image/jpeg")
            .body(jpeg.to_vec())
            .send()
            .await
            .expect("upload");
        let status = r.status();
        if status == 201 {
            return r.json().await.expect("upload JSON");
        }
        let body = r.text().await.unwrap_or_default();
        assert!(
            status == 503 && Instant::now() < deadline,
            "upload: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn check_video_range(c: &reqwest::Client, url: &str, video: &[u8]) {
    let (from, to) = ((4u64 << 20) - 1000, (4u64 << 20) + 2000);
    let r = c
        .get(url)
        .header("range", format!("bytes={from}-{to}"))
        .send()
        .await
        .expect("video range");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.bytes().await.expect("range body").as_ref(),
        &video[from as usize..=to as usize]
    );
    let r = c.get(url).send().await.expect("whole video");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("video body").len(), video.len());
}

/// The volume in a read URL `.../v1/needles/{volume}/{id}/{alt}/{cookie}`.
fn volume_in(url: &str) -> u32 {
    let rest = url.split("/v1/needles/").nth(1).expect("a needle URL");
    rest.split('/')
        .next()
        .expect("volume")
        .parse()
        .expect("volume id")
}
