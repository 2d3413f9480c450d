//! Crash test: a directory child process is killed with SIGKILL at a random moment while
//! commits stream in; after each restart every acknowledged commit must be there.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haystack_client::DirectoryClient;
use haystack_proto::directory::{AssignRequest, CommitRequest, PhotoKind, Variant};
use rand::Rng;

use crate::common::*;

fn spawn_directory(data: &Path, config_file: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dir_serve"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(config_file)
        .arg("--metadata")
        .arg(format!("embedded:{}", data.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dir_serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, format!("http://{addr}"))
}

fn commit_for(a: &haystack_proto::directory::AssignResponse) -> CommitRequest {
    CommitRequest {
        id: a.id,
        cookie: a.cookie,
        volume_id: a.volume_id,
        kind: PhotoKind::Photo,
        variants: vec![Variant {
            name: "original".into(),
            alt: 0,
            size_bytes: 100,
            content_type: "image/jpeg".into(),
        }],
        chunks: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_kill9_loses_no_acknowledged_commit() {
    let data = tempfile::tempdir().expect("tempdir");
    let db = data.path().join("db");
    let config_file = data.path().join("config.json");
    let mut config = test_config(&db);
    config.replication_factor = 1;
    std::fs::write(
        &config_file,
        serde_json::to_string(&config).expect("config json"),
    )
    .expect("write config");

    let acked: Arc<Mutex<Vec<(u64, u64, u32)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut store = FakeStore::start(None).await;
    for round in 0..4 {
        let (mut child, url) = spawn_directory(&db, &config_file);
        let client = DirectoryClient::new(&url).expect("client");
        // Every commit acknowledged before the last kill is still there.
        let before: Vec<(u64, u64, u32)> = acked.lock().expect("acked").clone();
        for (id, cookie, vol) in &before {
            let mut found = None;
            for _ in 0..MAX_POLLS {
                match client.lookup(*id).await {
                    Ok(p) => {
                        found = Some(p);
                        break;
                    }
                    Err(e) if e.is_retryable() => tokio::time::sleep(POLL).await,
                    Err(e) => panic!("round {round}: acknowledged photo {id} lost: {e}"),
                }
            }
            let p = found.expect("directory never answered");
            assert_eq!((p.cookie, p.volume_id), (*cookie, *vol));
        }
        if round == 3 {
            // The last start only checks what the three kills left.
            child.kill().expect("SIGKILL the directory");
            let _ = child.wait();
            break;
        }
        if round == 0 {
            bring_up(&client, std::slice::from_mut(&mut store)).await;
        } else {
            store.heartbeat(&client).await;
        }

        let mut writers = Vec::new();
        for _ in 0..8 {
            let client = client.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                loop {
                    let Ok(a) = client.assign(&AssignRequest::default()).await else {
                        return;
                    };
                    match client.commit(&commit_for(&a)).await {
                        Ok(_) => acked
                            .lock()
                            .expect("acked")
                            .push((a.id, a.cookie, a.volume_id)),
                        Err(_) => return,
                    }
                }
            }));
        }
        let delay = rand::rng().random_range(100..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL the directory");
        let _ = child.wait();
        for w in writers {
            let _ = w.await;
        }
    }
    // The offline inspector reads what the kills left (the directory is stopped).
    let out = Command::new(env!("CARGO_BIN_EXE_dir_inspect"))
        .arg(&db)
        .arg("counts")
        .output()
        .expect("run dir_inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let photos = counts["photos"].as_u64().expect("photo count");
    let n = acked.lock().expect("acked").len();
    assert!(n > 0, "no commit was acknowledged at all");
    assert!(
        photos >= n as u64,
        "{photos} photos stored, {n} acknowledged"
    );
    let (id, cookie, _) = acked.lock().expect("acked")[0];
    let out = Command::new(env!("CARGO_BIN_EXE_dir_inspect"))
        .arg(&db)
        .args(["photo", &id.to_string()])
        .output()
        .expect("run dir_inspect");
    let photo: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(photo["record"]["cookie"].as_u64(), Some(cookie));

    eprintln!("crash test: {n} acknowledged commits survived 3 kills");
}
