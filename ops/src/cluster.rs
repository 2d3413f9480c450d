//! `haystack server`: a local cluster on loopback, each role a child process of this binary,
//! so that one command runs what production runs (and a crash of one role is one process).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::ServerArgs;

struct Role {
    name: String,
    url: String,
    child: Child,
}

fn spawn(name: &str, args: &[String], log_dir: &Path) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(format!("{name}.log")))
        .map_err(|e| format!("cannot open the log of {name}: {e}"))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))
}

async fn wait_healthy(role: &mut Role) -> Result<(), String> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = role.child.id().map(u64::from);
    loop {
        // The answer must come from our child: another process may hold the port.
        if let Ok(r) = client.get(format!("{}/health", role.url)).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["pid"].as_u64() == pid {
                    return Ok(());
                }
            }
        }
        if let Ok(Some(status)) = role.child.try_wait() {
            return Err(format!(
                "{} exited at start ({status}); see its log",
                role.name
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not become healthy in 60 s", role.name));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminate(role: &Role) {
    if let Some(pid) = role.child.id() {
        // SAFETY: plain syscall; the pid is our own live child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
}

/// `haystack server`: the whole local cluster; `signed_reads_ttl` (the global flag) is passed
/// to every role.
pub async fn run(args: ServerArgs, signed_reads_ttl: Option<u64>) -> Result<(), String> {
    let mut a = crate::config::load(args.config.as_deref())?.server;
    crate::set(&mut a.data_dir, args.data_dir);
    crate::set(&mut a.stores, args.stores);
    crate::set(&mut a.replication, args.replication);
    crate::set(&mut a.directory_port, args.directory_port);
    crate::set(&mut a.store_port, args.store_port);
    crate::set(&mut a.cache_port, args.cache_port);
    crate::set(&mut a.uploader_port, args.uploader_port);
    crate::set(&mut a.s3_port, args.s3_port);
    crate::set(&mut a.max_volume_bytes, args.max_volume_bytes);
    let data = a.data_dir;
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    // One cluster secret, made once and kept with the data: every role proves itself with it,
    // and the operator tools read it (HAYSTACK_CLUSTER_SECRET_FILE) to mint admin tokens.
    let secret = data.join("cluster.secret");
    if crate::security::ensure_secret_file(&secret)? {
        tracing::info!(path = %secret.display(), "made a new cluster secret");
    }
    // Every role reads its own section of the same file; the flags below win over it.
    let mut config_args: Vec<String> = vec![
        "--cluster-secret-file".into(),
        secret.display().to_string(),
        "--audit-log".into(),
        logs.join("audit.log").display().to_string(),
    ];
    if let Some(p) = &args.config {
        config_args.extend(["--config".into(), p.display().to_string()]);
    }
    if let Some(ttl) = signed_reads_ttl {
        config_args.extend(["--signed-reads-ttl".into(), ttl.to_string()]);
    }
    let dir_url = format!("http://127.0.0.1:{}", a.directory_port);
    let cache_url = format!("http://127.0.0.1:{}", a.cache_port);
    let uploader_url = format!("http://127.0.0.1:{}", a.uploader_port);
    let mut roles = vec![Role {
        name: "directory".into(),
        url: dir_url.clone(),
        child: spawn(
            "directory",
            &[
                vec![
                    "directory".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{}", a.directory_port),
                    "--metadata".into(),
                    format!("embedded:{}", data.join("directory").display()),
                    "--replication".into(),
                    a.replication.to_string(),
                    "--volume-capacity-bytes".into(),
                    a.max_volume_bytes.to_string(),
                    "--cache-url".into(),
                    cache_url.clone(),
                ],
                config_args.clone(),
            ]
            .concat(),
            &logs,
        )?,
    }];
    for i in 0..a.stores {
        let port = a.store_port + i;
        let name = format!("store{i}");
        roles.push(Role {
            name: name.clone(),
            url: format!("http://127.0.0.1:{port}"),
            child: spawn(
                &name,
                &[
                    vec![
                        "store".into(),
                        "--data-dir".into(),
                        data.join(&name).display().to_string(),
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--directory".into(),
                        dir_url.clone(),
                        "--max-volume-bytes".into(),
                        a.max_volume_bytes.to_string(),
                        "--prealloc-step".into(),
                        (64u64 << 20).min(a.max_volume_bytes).to_string(),
                    ],
                    config_args.clone(),
                ]
                .concat(),
                &logs,
            )?,
        });
    }
    roles.push(Role {
        name: "cache".into(),
        url: cache_url.clone(),
        child: spawn(
            "cache",
            &[
                vec![
                    "cache".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{}", a.cache_port),
                    "--directory".into(),
                    dir_url.clone(),
                ],
                config_args.clone(),
            ]
            .concat(),
            &logs,
        )?,
    });
    roles.push(Role {
        name: "uploader".into(),
        url: uploader_url.clone(),
        child: spawn(
            "uploader",
            &[
                vec![
                    "uploader".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{}", a.uploader_port),
                    "--directory".into(),
                    dir_url.clone(),
                ],
                config_args.clone(),
            ]
            .concat(),
            &logs,
        )?,
    });
    let s3_url = format!("http://127.0.0.1:{}", a.s3_port);
    roles.push(Role {
        name: "s3".into(),
        url: s3_url.clone(),
        child: spawn(
            "s3",
            &[
                vec![
                    "s3".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{}", a.s3_port),
                    "--directory".into(),
                    dir_url.clone(),
                    "--master-key-file".into(),
                    data.join("s3").join("master.key").display().to_string(),
                ],
                config_args.clone(),
            ]
            .concat(),
            &logs,
        )?,
    });
    for r in roles.iter_mut() {
        if let Err(e) = wait_healthy(r).await {
            for r in &roles {
                terminate(r);
            }
            return Err(e);
        }
    }
    println!(
        "haystack local cluster is up (data in {}, logs in {})",
        data.display(),
        logs.display()
    );
    for r in &roles {
        println!("  {:<10} {}", r.name, r.url);
    }
    println!("try (from another terminal):");
    println!("  curl -s -X POST --data-binary @photo.jpg -H 'content-type: image/jpeg' {uploader_url}/v1/photos");
    println!("  # the answer's urls (original, large, medium, thumb) are served by the cache:");
    println!("  curl -s -o thumb.jpg URL");
    println!("  curl -s -X POST --data-binary @video.mp4 -H 'content-type: video/mp4' {uploader_url}/v1/videos");
    println!("  curl -s -X DELETE {uploader_url}/v1/photos/ID");
    println!("  export HAYSTACK_CLUSTER_SECRET_FILE={}", secret.display());
    println!("  haystack status        # or open {dir_url}/ in a browser");
    println!("  haystack token create --role read   # a token for the dashboard");
    println!(
        "  haystack s3 key create --bucket NAME --read --write --master-key-file {}",
        data.join("s3").join("master.key").display()
    );
    println!("  aws --endpoint-url {s3_url} s3 mb s3://NAME   # with that key in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY");
    println!("Ctrl-C stops the cluster.");

    // Run until a signal, or until a role dies.
    let mut died = None;
    tokio::select! {
        _ = crate::shutdown_signal() => {}
        name = async {
            // A store that dies is a machine lost, as in production: reads fail over to the
            // other replicas, its volumes turn read-only, and `haystack volume repair` (or
            // re-replication after `rereplicate_after_ms`) brings the replicas back. Any
            // other role's death stops the cluster.
            let mut lost = std::collections::HashSet::new();
            loop {
                for r in roles.iter_mut() {
                    if let Ok(Some(status)) = r.child.try_wait() {
                        if !r.name.starts_with("store") {
                            return format!("{} exited ({status})", r.name);
                        }
                        if lost.insert(r.name.clone()) {
                            eprintln!("haystack: {} exited ({status}); the cluster goes on without it", r.name);
                            tracing::warn!(role = %r.name, %status, "store exited; the cluster goes on");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } => { died = Some(name); }
    }
    // Stores first, so their last heartbeats and flushes reach a live directory.
    for r in roles.iter().rev() {
        terminate(r);
    }
    for r in roles.iter_mut().rev() {
        match tokio::time::timeout(Duration::from_secs(40), r.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(role = %r.name, "did not stop in 40 s; killing it");
                let _ = r.child.kill().await;
            }
        }
    }
    match died {
        Some(why) => Err(format!(
            "the cluster stopped: {why}; see {}",
            logs.display()
        )),
        None => Ok(()),
    }
}
