//! Directory benchmark on the embedded backend: assign+commit per second and lookups per
//! second, in process (the service over redb) and optionally over HTTP on loopback.
//!
//! `cargo run --release -p haystack-directory --bin dir_bench -- [--ops N] [--lookups N]
//!  [--concurrency C] [--http] [--data DIR]`

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haystack_client::DirectoryClient;
use haystack_directory::clock::SystemClock;
use haystack_directory::meta::embedded::EmbeddedStore;
use haystack_directory::meta::MetadataStore;
use haystack_directory::{Directory, DirectoryConfig};
use haystack_proto::directory::{AssignRequest, CommitRequest, PhotoKind, Variant};
use haystack_proto::{Heartbeat, StoreRegistration, VolumeInfo, VolumeState};

struct Args {
    ops: usize,
    lookups: usize,
    concurrency: usize,
    http: bool,
    data: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        ops: 200_000,
        lookups: 1_000_000,
        concurrency: 256,
        http: false,
        data: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--ops" => a.ops = num("--ops")?,
            "--lookups" => a.lookups = num("--lookups")?,
            "--concurrency" => a.concurrency = num("--concurrency")?.max(1),
            "--http" => a.http = true,
            "--data" => a.data = Some(it.next().ok_or("--data needs a directory")?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn commit_for(a: &haystack_proto::directory::AssignResponse) -> CommitRequest {
    CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Photo,
        variants: vec![
            Variant {
                name: "original".into(),
                alt: 0,
                size_bytes: 2_000_000,
                content_type: "image/jpeg".into(),
            },
            Variant {
                name: "thumb".into(),
                alt: 4,
                size_bytes: 20_000,
                content_type: "image/jpeg".into(),
            },
        ],
        chunks: vec![],
    }
}

fn report(name: &str, n: usize, elapsed: Duration, mut lat_us: Vec<u32>) {
    lat_us.sort_unstable();
    let pct = |p: f64| {
        lat_us
            .get(((lat_us.len() as f64 * p) as usize).min(lat_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{name:<28} {n:>9} ops in {:>7.3} s = {:>9.0} ops/s   latency p50 {} us, p99 {} us, max {} us",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat_us.last().copied().unwrap_or(0)
    );
}

/// Registers three stores and makes `volumes` logical volumes writable on them.
async fn prepare(dir: &Directory, volumes: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut ids = Vec::new();
    for n in 0..3 {
        let r = dir
            .register(StoreRegistration {
                store_id: None,
                public_url: format!("http://127.0.0.1:{}", 19000 + n),
                zone: Some(format!("z{n}")),
                rack: None,
                capacity_bytes: 1 << 50,
                free_bytes: 1 << 49,
            })
            .await?;
        ids.push(r.store_id);
    }
    let mut vols = Vec::new();
    for _ in 0..volumes {
        vols.push(dir.create_volume().await?.id);
    }
    for (n, id) in ids.iter().enumerate() {
        dir.heartbeat(
            *id,
            Heartbeat {
                store_id: *id,
                public_url: format!("http://127.0.0.1:{}", 19000 + n),
                capacity_bytes: 1 << 50,
                free_bytes: 1 << 49,
                healthy: true,
                volumes: vols
                    .iter()
                    .map(|v| VolumeInfo {
                        id: *v,
                        state: VolumeState::Writable,
                        size_bytes: 0,
                        max_bytes: 1 << 40,
                        needles: 0,
                        deleted_needles: 0,
                        dead_bytes: 0,
                        reason: None,
                        compaction: None,
                        scrubbed_unix: None,
                        tag: None,
                    })
                    .collect(),
                shipping: Vec::new(),
                ec_files: Vec::new(),
            },
        )
        .await?;
    }
    Ok(())
}

async fn bench_in_process(dir: Arc<Directory>, a: &Args) -> Vec<u64> {
    // assign + commit
    let per_task = a.ops / a.concurrency;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let dir = dir.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per_task);
            let mut lat = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                let Ok(asg) = dir.assign(&AssignRequest::default()) else {
                    continue;
                };
                if dir.commit(commit_for(&asg)).await.is_ok() {
                    ids.push(asg.id);
                    lat.push(t.elapsed().as_micros() as u32);
                }
            }
            (ids, lat)
        }));
    }
    let mut ids = Vec::new();
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok((i, l)) = t.await {
            ids.extend(i);
            lat.extend(l);
        }
    }
    report("in-process assign+commit", ids.len(), start.elapsed(), lat);

    // lookups of random committed ids
    let ids = Arc::new(ids);
    let per_task = a.lookups / a.concurrency;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..a.concurrency {
        let dir = dir.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            let mut x = t as u64 * 7919 + 1;
            for _ in 0..per_task {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = ids[(x >> 33) as usize % ids.len().max(1)];
                let s = Instant::now();
                if dir.lookup(id).await.is_ok() {
                    lat.push(s.elapsed().as_micros() as u32);
                }
                if lat.len() % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    report("in-process lookup", lat.len(), start.elapsed(), lat);
    Arc::try_unwrap(ids).unwrap_or_default()
}

/// CPU seconds used so far by the server's threads (actix workers and acceptor, the redb
/// writer), from /proc/self/task/*/stat (USER_HZ = 100). None off Linux.
fn server_cpu_secs() -> Option<f64> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !(comm.starts_with("actix") || comm.starts_with("directory-redb")) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += get(11) + get(12);
    }
    Some(ticks as f64 / 100.0)
}

fn report_server_cpu(name: &str, ops: usize, before: Option<f64>) {
    if let (Some(b), Some(a)) = (before, server_cpu_secs()) {
        let per_op_us = (a - b) * 1e6 / ops.max(1) as f64;
        println!(
            "{name:<28} server CPU {:.0} us/op = {:.0} ops/s per server core",
            per_op_us,
            1e6 / per_op_us.max(1e-3)
        );
    }
}

async fn bench_http(url: &str, a: &Args, known: &[u64]) {
    let Ok(client) = DirectoryClient::new(url) else {
        eprintln!("cannot build http client");
        return;
    };
    let ops = a.ops / 4;
    let conc = a.concurrency.min(64);
    let per_task = ops / conc;
    let cpu = server_cpu_secs();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                let Ok(asg) = c.assign(&AssignRequest::default()).await else {
                    continue;
                };
                if c.commit(&commit_for(&asg)).await.is_ok() {
                    lat.push(t.elapsed().as_micros() as u32);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    let n = lat.len();
    report("http assign+commit", n, start.elapsed(), lat);
    report_server_cpu("http assign+commit", n, cpu);

    let known = Arc::new(known.to_vec());
    let per_task = (a.lookups / 10) / conc;
    let cpu = server_cpu_secs();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..conc {
        let c = client.clone();
        let known = known.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            let mut x = t as u64 * 104729 + 3;
            for _ in 0..per_task {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = known[(x >> 33) as usize % known.len().max(1)];
                let s = Instant::now();
                if c.lookup(id).await.is_ok() {
                    lat.push(s.elapsed().as_micros() as u32);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    let n = lat.len();
    report("http lookup", n, start.elapsed(), lat);
    report_server_cpu("http lookup", n, cpu);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args().map_err(|e| {
        format!(
            "{e}\nusage: dir_bench [--ops N] [--lookups N] [--concurrency C] [--http] [--data DIR]"
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let data = match &args.data {
            Some(d) => std::path::PathBuf::from(d),
            None => std::env::temp_dir().join(format!("dir_bench_{}", std::process::id())),
        };
        let _ = std::fs::remove_dir_all(&data);
        println!(
            "dir_bench: embedded backend at {}, {} cores, concurrency {}",
            data.display(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            args.concurrency
        );
        let store: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(&data)?);
        let config = DirectoryConfig {
            metadata: format!("embedded:{}", data.display()),
            node_id: Some(1),
            ..Default::default()
        };
        let dir =
            Arc::new(Directory::new(config.clone(), store.clone(), Arc::new(SystemClock)).await?);
        prepare(&dir, 8).await?;
        let known = bench_in_process(dir.clone(), &args).await;
        if args.http {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let url = format!("http://{}", listener.local_addr()?);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            drop(dir);
            let server = tokio::spawn(haystack_directory::run_with(
                listener,
                DirectoryConfig {
                    node_id: Some(2),
                    ..config
                },
                store.clone(),
                Arc::new(SystemClock),
                async move {
                    let _ = rx.await;
                },
            ));
            bench_http(&url, &args, &known).await;
            let _ = tx.send(());
            let _ = server.await;
        } else {
            store.close().await;
        }
        let _ = std::fs::remove_dir_all(&data);
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
