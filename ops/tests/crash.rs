//! Crash test: a `haystack store` child under concurrent PUT and DELETE load is killed with
//! SIGKILL at random moments; after every restart each acknowledged write reads back
//! byte-exact, each acknowledged delete stays deleted, and a write that was in flight at the
//! kill is either absent or whole: torn or foreign bytes are never served. In every other
//! round the volume is also being compacted, again and again, when the kill comes.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// Kills per run; at least 50 in CI. `HAYSTACK_CRASH_KILLS` overrides.
fn kills() -> usize {
    std::env::var("HAYSTACK_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

/// Sends `sig` to process `pid` (no `kill` binary needed on the machine).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain syscall with a pid of a process this test started (or its child).
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn start(dir: &Path, port: u16, log: &Path, engine: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_haystack"))
        .args([
            "store",
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--engine",
            engine,
            "--create-volumes",
            "1",
            "--max-volume-bytes",
            &(512u64 << 20).to_string(),
            "--prealloc-step",
            &(8u64 << 20).to_string(),
            "--workers",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("haystack starts")
}

/// Waits until `base` answers /health as the process `pid` (another process that took the
/// port in the meantime does not count).
pub async fn wait_healthy(c: &reqwest::Client, base: &str, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = c.get(format!("{base}/health")).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["pid"].as_u64() == Some(pid as u64) {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{base} did not become healthy as pid {pid}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts a store on a free port and waits until it answers as itself. A port taken by
/// someone else between choosing and binding it (other tests run alongside) means another
/// port; a store that exits for any other reason, or does not answer within a minute, fails
/// the test with the end of its log.
fn start_up(
    rt: &tokio::runtime::Runtime,
    c: &reqwest::Client,
    dir: &Path,
    log: &Path,
    engine: &str,
) -> (Reaped, String) {
    for _ in 0..10 {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = Reaped(start(dir, port, log, engine));
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        let up = rt.block_on(async {
            loop {
                if let Ok(r) = c.get(format!("{base}/health")).send().await {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if v["pid"].as_u64() == Some(pid as u64) {
                            return Ok(());
                        }
                    }
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("exited with {status}"));
                }
                if Instant::now() > deadline {
                    return Err("did not answer /health within 60 s".to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        match up {
            Ok(()) => return (child, base),
            Err(why) => {
                let logged = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = logged.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                if tail.contains(&format!(
                    "cannot listen on 127.0.0.1:{port}: Address already in use"
                )) {
                    eprintln!("port {port} was taken before the store bound it; another port");
                    continue;
                }
                panic!("the store (pid {pid}) at {base} {why}; the end of its log:\n{tail}");
            }
        }
    }
    panic!("ten ports in a row were taken before the store could bind them");
}

/// The bytes written under `key`: derived from the key, so any mix-up shows.
pub fn body(key: u64) -> Vec<u8> {
    let len = 1 + (key.wrapping_mul(2654435761) % 6000) as usize;
    (0..len)
        .map(|i| (key as u8).wrapping_mul(31).wrapping_add(i as u8) ^ (key >> 8) as u8)
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    /// PUT acknowledged (201).
    Acked,
    /// PUT sent, no answer before the kill: absent or whole.
    InDoubt,
    /// DELETE acknowledged (204).
    Deleted,
    /// DELETE sent, no answer: present (whole) or absent.
    DeleteInDoubt,
}

const COOKIE: &str = "5eed";

pub fn url(base: &str, key: u64) -> String {
    format!("{base}/v1/needles/1/{key}/0/{COOKIE}")
}

async fn load(base: String, fates: Arc<Mutex<HashMap<u64, Fate>>>, first_key: u64, worker: u64) {
    let c = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(first_key ^ worker);
    let mut key = first_key + worker;
    loop {
        let delete = rng.random_ratio(1, 8);
        if delete {
            // Delete an acknowledged key of this worker, if any.
            let victim = {
                let f = fates.lock().unwrap();
                f.iter()
                    .find(|(k, v)| **v == Fate::Acked && **k % 16 == worker)
                    .map(|(k, _)| *k)
            };
            if let Some(v) = victim {
                fates.lock().unwrap().insert(v, Fate::DeleteInDoubt);
                match c.delete(url(&base, v)).send().await {
                    Ok(r) if r.status() == 204 => {
                        fates.lock().unwrap().insert(v, Fate::Deleted);
                    }
                    Ok(r) => panic!("delete {v}: unexpected {}", r.status()),
                    Err(_) => return, // killed
                }
                continue;
            }
        }
        fates.lock().unwrap().insert(key, Fate::InDoubt);
        match c.put(url(&base, key)).body(body(key)).send().await {
            Ok(r) if r.status() == 201 => {
                fates.lock().unwrap().insert(key, Fate::Acked);
            }
            Ok(r) => panic!("put {key}: unexpected {}", r.status()),
            Err(_) => return, // the server was killed
        }
        key += 16;
    }
}

async fn verify(c: &reqwest::Client, base: &str, fates: &HashMap<u64, Fate>, keys: &[u64]) {
    for &k in keys {
        let fate = fates[&k];
        let r = c.get(url(base, k)).send().await.expect("verify GET");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.expect("verify body");
        match (fate, status) {
            (Fate::Acked, 200) | (Fate::InDoubt, 200) | (Fate::DeleteInDoubt, 200) => {
                assert!(
                    bytes.as_ref() == body(k).as_slice(),
                    "key {k} ({fate:?}): wrong bytes served"
                );
            }
            (Fate::InDoubt, 404) | (Fate::Deleted, 404) | (Fate::DeleteInDoubt, 404) => {}
            _ => panic!("key {k}: fate {fate:?} but GET answered {status}"),
        }
    }
}

/// Kills its child when dropped, so a failing assertion leaves no store behind.
struct Reaped(Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn run(engine: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("store.log");
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0000 ^ engine.len() as u64);
    let fates: Arc<Mutex<HashMap<u64, Fate>>> = Arc::new(Mutex::new(HashMap::new()));
    let c = reqwest::Client::new();
    for round in 0..kills() {
        let (mut child, base) = start_up(&rt, &c, &data, &log, engine);
        rt.block_on(async {
            // Check what the last round left: everything it touched, plus a sample of older.
            let snapshot = fates.lock().unwrap().clone();
            let (lo, hi) = if round == 0 {
                (0, 0)
            } else {
                ((round as u64 - 1) * 1_000_000, round as u64 * 1_000_000)
            };
            let mut keys: Vec<u64> = snapshot
                .keys()
                .copied()
                .filter(|k| (lo..hi).contains(k))
                .collect();
            let older: Vec<u64> = snapshot.keys().copied().filter(|k| *k < lo).collect();
            for _ in 0..older.len().min(200) {
                keys.push(older[rng.random_range(0..older.len())]);
            }
            verify(&c, &base, &snapshot, &keys).await;
            // Load, then kill at a random moment.
            let first = round as u64 * 1_000_000;
            let mut workers: Vec<_> = (0..16)
                .map(|w| tokio::spawn(load(base.clone(), fates.clone(), first, w)))
                .collect();
            if round % 2 == 1 {
                let (c, base) = (c.clone(), base.clone());
                workers.push(tokio::spawn(async move {
                    // Online compaction under the load until the kill ends it.
                    loop {
                        match c.post(format!("{base}/v1/volumes/1/compact")).send().await {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => panic!("compact: unexpected {}", r.status()),
                            Err(_) => return,
                        }
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..250))).await;
            child.kill().expect("SIGKILL the store");
            child.wait().expect("reap the store");
            for w in workers {
                w.await.expect("load worker");
            }
        });
    }
    // Final restart: every key ever touched.
    let (mut child, base) = start_up(&rt, &c, &data, &log, engine);
    rt.block_on(async {
        let snapshot = fates.lock().unwrap().clone();
        let keys: Vec<u64> = snapshot.keys().copied().collect();
        let acked = snapshot.values().filter(|f| **f == Fate::Acked).count();
        let in_doubt_seen = snapshot
            .values()
            .filter(|f| matches!(f, Fate::InDoubt | Fate::DeleteInDoubt))
            .count();
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let compactions = logged.matches("volume compacted").count();
        let interrupted = logged.matches("interrupted compaction").count();
        eprintln!(
            "crash test ({engine}): {} kills, {} keys touched, {acked} acknowledged, {in_doubt_seen} in doubt at kills, {compactions} compactions done, {interrupted} recovered after a kill mid-compaction",
            kills(),
            keys.len()
        );
        assert!(acked > kills(), "the load acknowledged too little to mean anything");
        verify(&c, &base, &snapshot, &keys).await;
    });
    child.kill().ok();
    child.wait().ok();
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged_io_uring() {
    run("io_uring");
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged_sync() {
    run("sync");
}
