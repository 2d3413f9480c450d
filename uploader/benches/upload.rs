//! End-to-end benchmarks over a real cluster on loopback (testkit: embedded directory and
//! two stores, replication 2, all in this process) with the uploader in front:
//!
//!     cargo bench -p haystack-uploader --bench upload -- photos [--count N] [--concurrency C]
//!         [--seconds S] [--width W --height H]
//!     cargo bench -p haystack-uploader --bench upload -- video [--mib N] [--chunk-mib N]
//!
//! `photos` posts the same small JPEG N times (default 2000, 16 at a time, at most 120 s) and
//! prints uploads per second and latencies. `--stores S --replication R` shape the cluster
//! (default 2 and 2), `--slow-ms M` makes the last store answer every batch write M ms late
//! (a slow replica: a test hook of the store), `--write-ack all|quorum|one` sets the
//! uploader's acknowledgement policy. `video` streams one video of N MiB (default
//! 1024) made on the fly from a 64 KiB buffer, with the directory and stores in a child
//! process (this binary in `cluster` mode), and prints this process's RSS (the uploader's and
//! the client's) before and its peak during the upload (peak reset through
//! /proc/self/clear_refs first). Every request goes to 127.0.0.1.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haystack_testkit::{Cluster, ClusterOptions};
use haystack_uploader::UploaderConfig;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Starts the uploader on its own thread and runtime; returns its URL.
fn start_uploader(cfg: UploaderConfig) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            haystack_uploader::run(listener, cfg, haystack_testkit::stopped(rx))
                .await
                .expect("uploader runs");
        });
    });
    (url, tx)
}

async fn wait_up(http: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{url}/health")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("uploader did not come up");
}

fn small_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let t = ((x as f32 * 0.07).sin() * (y as f32 * 0.05).cos() * 40.0) as i32;
        image::Rgb([
            (x * 255 / w) as u8,
            ((y * 200 / h) as i32 + 30 + t).clamp(0, 255) as u8,
            (128 + t).clamp(0, 255) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .expect("encode");
    out
}

async fn photos(args: &[String]) {
    let count = arg(args, "--count", 2000) as usize;
    let conc = arg(args, "--concurrency", 16) as usize;
    let limit = Duration::from_secs(arg(args, "--seconds", 120));
    let (w, h) = (
        arg(args, "--width", 640) as u32,
        arg(args, "--height", 480) as u32,
    );
    let stores = arg(args, "--stores", 2) as usize;
    let replication = arg(args, "--replication", 2) as usize;
    let slow_ms = arg(args, "--slow-ms", 0);
    let ack: haystack_client::store::WriteAck = args
        .iter()
        .position(|a| a == "--write-ack")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--write-ack all|quorum|one"))
        .unwrap_or_default();
    let cluster = Cluster::start(ClusterOptions {
        volume_bytes: 1 << 30,
        stores,
        replication,
        slow_store: (slow_ms > 0).then(|| (stores - 1, slow_ms)),
        ..Default::default()
    })
    .await;
    let (url, _stop) = start_uploader(UploaderConfig {
        directory_url: Some(cluster.directory_url()),
        write_ack: ack,
        ..Default::default()
    });
    let http = reqwest::Client::new();
    wait_up(&http, &url).await;
    let body = Bytes::from(small_jpeg(w, h));
    println!(
        "photos: {count} uploads of a {w}x{h} JPEG ({} bytes), concurrency {conc}, {stores} stores, replication {replication}, write_ack {ack:?}, last store {slow_ms} ms slow per batch; load average before {}",
        body.len(),
        loadavg()
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (http, url, body, next) = (http.clone(), url.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < count && started.elapsed() < limit {
                let t = Instant::now();
                let r = http
                    .post(format!("{url}/v1/photos"))
                    .header("content-type", "image/jpeg")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => lat.push(t.elapsed()),
                    _ => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.expect("task");
        lat.extend(l);
        failed += f;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "photos: {} created, {failed} failed in {secs:.2} s = {:.0} uploads/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; load average after {}",
        lat.len(),
        lat.len() as f64 / secs,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        loadavg()
    );
}

/// `cluster` mode (a child of `video`): starts the cluster, prints the directory URL, and
/// runs until its standard input closes.
async fn cluster_child(args: &[String]) {
    let volume_mib = arg(args, "--volume-mib", 1280);
    let cluster = Cluster::start(ClusterOptions {
        volume_bytes: volume_mib << 20,
        ..Default::default()
    })
    .await;
    println!("{}", cluster.directory_url());
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await
    .expect("stdin watcher");
    drop(cluster);
}

async fn video(args: &[String]) {
    let mib = arg(args, "--mib", 1024);
    let chunk_mib = arg(args, "--chunk-mib", 4);
    // The directory and the stores run in a child process, so this process's RSS is the
    // uploader's (and the client's, which streams from one 64 KiB buffer).
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["cluster", "--volume-mib", &(mib + 256).to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the cluster process");
    // Its logs go to standard output too: the URL is the first line that is one.
    let mut out = std::io::BufReader::new(child.stdout.take().expect("child stdout"));
    let mut directory_url = String::new();
    for _ in 0..10_000 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.starts_with("http://") {
            directory_url = line.trim().to_string();
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    assert!(
        directory_url.starts_with("http://127.0.0.1:"),
        "{directory_url:?}"
    );
    let (url, _stop) = start_uploader(UploaderConfig {
        directory_url: Some(directory_url),
        video_chunk_bytes: chunk_mib << 20,
        ..Default::default()
    });
    let http = reqwest::Client::new();
    wait_up(&http, &url).await;
    // Warm up every path once (a small video), so lazily built pools and buffers count before.
    let warm = http
        .post(format!("{url}/v1/videos"))
        .header("content-type", "video/mp4")
        .body(vec![7u8; 1 << 20])
        .send()
        .await
        .expect("warm-up");
    assert_eq!(warm.status().as_u16(), 201);
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
    let rss_before = status_kib("VmRSS:");
    let hwm_reset = status_kib("VmHWM:");
    let piece = Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let pieces = (mib * 16) as usize;
    let stream = futures_util::stream::iter(
        (0..pieces).map(move |_| Ok::<_, std::io::Error>(piece.clone())),
    );
    println!(
        "video: {mib} MiB streamed (chunked, 64 KiB pieces), {chunk_mib} MiB chunks, 2 in flight, 2 stores, replication 2; RSS before {} KiB (VmHWM after reset {} KiB); load average before {}",
        rss_before,
        hwm_reset,
        loadavg()
    );
    let t = Instant::now();
    let r = http
        .post(format!("{url}/v1/videos"))
        .header("content-type", "video/mp4")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("video upload");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let secs = t.elapsed().as_secs_f64();
    let hwm = status_kib("VmHWM:");
    println!(
        "video: answered {status} in {secs:.1} s ({:.0} MiB/s): {text}",
        mib as f64 / secs
    );
    println!(
        "video: peak RSS during the upload {} KiB, growth over before {} KiB ({:.1} MiB); load average after {}",
        hwm,
        hwm.saturating_sub(rss_before),
        hwm.saturating_sub(rss_before) as f64 / 1024.0,
        loadavg()
    );
    drop(child.stdin.take()); // the cluster process stops when its input closes
    let _ = child.wait();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if args.iter().any(|a| a == "cluster") {
        rt.block_on(cluster_child(&args));
    } else if args.iter().any(|a| a == "video") {
        rt.block_on(video(&args));
    } else {
        rt.block_on(photos(&args));
    }
}
