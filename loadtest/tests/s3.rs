//! The S3 target against the `haystack s3` role started in-process over a testkit cluster
//! (real HTTP on loopback, the server checking every signature): signed PUT, GET and DELETE
//! with verify, reads of objects an earlier run uploaded (`existing`), and a wrong secret
//! refused by the server.

use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

use haystack_loadtest::dist::SizeDist;
use haystack_loadtest::s3::{PayloadSigning, S3Endpoint};
use haystack_loadtest::target::TargetKind;
use haystack_loadtest::workload::{Limits, Mix, Mode};
use haystack_loadtest::{run, RunConfig};
use haystack_s3::keys::Grant;
use haystack_s3::S3Config;
use haystack_testkit::{Cluster, ClusterOptions};
use tokio::sync::watch;

struct S3Role {
    _cluster: Cluster,
    url: String,
    key: String,
    secret: String,
    _dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for S3Role {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A cluster, the S3 role on its own runtime, a key that may read and write every bucket,
/// and the bucket `loadtest`.
async fn start() -> S3Role {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = S3Config {
        directory_url: Some(cluster.directory_url()),
        master_key_file: dir.path().join("master.key"),
        security: cluster.security(),
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = watch::channel(false);
    let run_cfg = cfg.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(haystack_s3::run(
            listener,
            run_cfg,
            haystack_testkit::stopped(rx),
        ))
        .unwrap();
    });
    let s3 = haystack_s3::build(cfg).unwrap();
    let (key, secret) = s3
        .create_key(
            vec![Grant {
                bucket: "*".into(),
                read: true,
                write: true,
            }],
            true,
        )
        .await
        .unwrap();
    s3.create_bucket("loadtest").await.unwrap();
    let role = S3Role {
        _cluster: cluster,
        url,
        key,
        secret,
        _dir: dir,
        stop,
        thread: Some(thread),
    };
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("{}/health", role.url)).await {
            if r.status().is_success() {
                return role;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the s3 role did not answer /health within 10 s");
}

fn config(role: &S3Role, prefix: &str, payload: PayloadSigning) -> RunConfig {
    let mut cfg = RunConfig::new(TargetKind::S3(S3Endpoint {
        url: role.url.clone(),
        bucket: "loadtest".into(),
        access_key: role.key.clone(),
        secret_key: role.secret.clone(),
        region: "us-east-1".into(),
        prefix: prefix.into(),
        payload,
    }));
    cfg.shape.sizes = SizeDist::Fixed(4096);
    cfg.shape.seed = 5;
    cfg.mode = Mode::Closed { concurrency: 4 };
    cfg.setup_limit = Duration::from_secs(60);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_puts_gets_and_deletes_verify() {
    let role = start().await;
    for (prefix, payload) in [
        ("signed/run", PayloadSigning::Signed),
        ("unsigned/run", PayloadSigning::Unsigned),
    ] {
        let mut cfg = config(&role, prefix, payload);
        cfg.preload = 20;
        cfg.mix = Mix::parse("put=30,get=60,delete=10").unwrap();
        cfg.limits = Limits {
            count: 150,
            duration: Duration::from_secs(20),
        };
        cfg.verify = true;
        let (report, runner) = run(&cfg).await.unwrap();
        println!("{}", report.table());
        for p in &report.phases {
            for (name, o) in &p.ops {
                assert_eq!(o.failed, 0, "{prefix}: {} {name}: {:?}", p.name, o.failures);
            }
        }
        let ops = &report.phases[1].ops;
        assert!(ops["put"].ok > 0 && ops["get"].ok > 0 && ops["delete"].ok > 0);
        let v = report.verify.as_ref().unwrap();
        assert!(v.passed(), "{}", v.summary());
        assert!(v.deleted_checked > 0, "deleted objects answer 404");
        assert_eq!(v.checked + v.deleted_checked, runner.photos().len() as u64);
        assert!(report.target.starts_with("S3 http://127.0.0.1:"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_objects_an_earlier_run_uploaded() {
    let role = start().await;
    let mut put = config(&role, "existing", PayloadSigning::Signed);
    put.preload = 0;
    put.mix = Mix::PUT_ONLY;
    put.limits = Limits {
        count: 30,
        duration: Duration::from_secs(20),
    };
    let (report, _) = run(&put).await.unwrap();
    assert_eq!(report.phases[0].ops["put"].ok, 30);

    let mut get = config(&role, "existing", PayloadSigning::Signed);
    get.preload = 0;
    get.existing = 30;
    get.mix = Mix::GET_ONLY;
    get.limits = Limits {
        count: 100,
        duration: Duration::from_secs(20),
    };
    get.verify = true;
    let (report, runner) = run(&get).await.unwrap();
    let g = &report.phases[0].ops["get"];
    assert_eq!((g.ok, g.failed), (100, 0), "{:?}", g.failures);
    let v = report.verify.as_ref().unwrap();
    assert!(v.passed() && v.checked == 30, "{}", v.summary());
    assert_eq!(runner.photos().len(), 30);
    assert!(report.workload.contains("30 objects uploaded before"));

    // existing objects need the S3 target's fixed size
    let mut bad = config(&role, "existing", PayloadSigning::Signed);
    bad.existing = 3;
    bad.shape.sizes = SizeDist::parse("lognormal:8KiB,0.5,4KiB,16KiB").unwrap();
    assert!(run(&bad).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_by_the_server() {
    let role = start().await;
    let mut cfg = config(&role, "wrong", PayloadSigning::Signed);
    if let TargetKind::S3(e) = &mut cfg.target {
        e.secret_key = format!("{}x", e.secret_key);
        assert!(!format!("{e:?}").contains(&e.secret_key), "Debug hides it");
    }
    cfg.preload = 0;
    cfg.mix = Mix::PUT_ONLY;
    cfg.limits = Limits {
        count: 5,
        duration: Duration::from_secs(20),
    };
    let (report, _) = run(&cfg).await.unwrap();
    let p = &report.phases[0].ops["put"];
    assert_eq!(p.ok, 0);
    assert_eq!(
        p.failures.get("http_403").copied(),
        Some(5),
        "{:?}",
        p.failures
    );
}
