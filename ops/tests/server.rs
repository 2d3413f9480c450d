//! `haystack server`, README's run command: a directory and three stores come up on loopback,
//! logical volumes get placed, and Ctrl-C (SIGINT) stops every process cleanly; a restart on
//! the same data keeps what was committed.

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
}

fn start(data: &std::path::Path, config: &std::path::Path, p: Ports) -> std::process::Child {
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
            "--max-volume-bytes",
            &(64u64 << 20).to_string(),
        ])
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
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
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
fn server_starts_places_volumes_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let dport = free_ports(1);
    let ports = Ports {
        directory: dport,
        store: free_ports(3),
        cache: free_ports(1),
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
    let before = rt.block_on(volumes(c.clone()));
    for v in &before {
        assert_eq!(v.replicas.len(), 2, "replication 2 by default");
    }
    stop(child);
    for sub in ["directory", "store0", "store1", "store2", "logs"] {
        assert!(data.join(sub).exists(), "{sub} missing");
    }
    // Restart on the same data: the same volumes are there.
    let child = start(&data, &config, ports);
    let after = rt.block_on(volumes(c));
    for v in &before {
        assert!(
            after.iter().any(|a| a.id == v.id),
            "volume {} lost across restart",
            v.id
        );
    }
    stop(child);
}
