//! Short bounded workloads against a real cluster on loopback (directory and stores from
//! haystack-testkit, driven through their HTTP APIs), closed- and open-loop, with verify;
//! and verify's teeth: wrong expectations, a photo deleted behind the load generator's back
//! and a "deleted" photo that is still there are all reported.

use std::sync::Arc;
use std::time::Duration;

use haystack_loadtest::dist::SizeDist;
use haystack_loadtest::schedule::Arrivals;
use haystack_loadtest::target::{check_loopback, ObjState, Object, Target, TargetKind};
use haystack_loadtest::verify::verify;
use haystack_loadtest::workload::{Limits, Mix, Mode};
use haystack_loadtest::{run, LoadError, RunConfig};
use haystack_testkit::{Cluster, ClusterOptions};

fn small(cluster: &Cluster) -> RunConfig {
    let mut cfg = RunConfig::new(TargetKind::Direct {
        directory: cluster.directory_url(),
        token: Some(cluster.admin_token()),
    });
    cfg.shape.sizes = SizeDist::parse("lognormal:12KiB,0.5,4KiB,48KiB").unwrap();
    cfg.shape.seed = 11;
    cfg.preload = 40;
    cfg.mix = Mix::parse("put=30,get=60,delete=10").unwrap();
    cfg.mode = Mode::Closed { concurrency: 4 };
    cfg.limits = Limits {
        count: 400,
        duration: Duration::from_secs(20),
    };
    cfg.setup_limit = Duration::from_secs(60);
    cfg.verify = true;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_run_with_verify() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let cfg = small(&cluster);
    let (report, runner) = run(&cfg).await.unwrap();
    println!("{}", report.table());
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["preload", "run", "verify"]);
    let pre = &report.phases[0].ops["put"];
    assert_eq!((pre.ok, pre.failed), (40, 0));
    let run_phase = &report.phases[1];
    let total: u64 = run_phase.ops.values().map(|o| o.requests).sum();
    assert_eq!(total, 400, "the count bound holds exactly");
    for (name, o) in &run_phase.ops {
        assert_eq!(o.failed, 0, "{name} failed: {:?}", o.failures);
        assert!(o.ok > 0, "{name} never succeeded");
        assert!(o.latency_us.p50 > 0 && o.latency_us.max >= o.latency_us.p99);
    }
    let v = report.verify.as_ref().unwrap();
    assert!(v.passed(), "{}", v.summary());
    assert!(v.checked >= 40 && v.ok == v.checked);
    assert!(v.deleted_checked > 0, "deletes were verified to answer 404");
    assert_eq!(
        v.checked + v.deleted_checked,
        runner.photos().len() as u64,
        "every acknowledged upload was checked"
    );
    assert!(report.table().contains("PASS"));
    assert!(report.workload.contains("put=30,get=60,delete=10"));
    assert!(!report.started_utc.is_empty() && !report.machine.kernel.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_its_rate_and_stops_by_itself() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let mut cfg = small(&cluster);
    cfg.mix = Mix::parse("put=10,get=90").unwrap();
    cfg.mode = Mode::Open {
        rate: 100.0,
        arrivals: Arrivals::Uniform,
        max_in_flight: 64,
    };
    cfg.limits = Limits {
        count: 1_000_000,
        duration: Duration::from_secs(2),
    };
    cfg.verify = false;
    let t0 = std::time::Instant::now();
    let (report, _) = run(&cfg).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30));
    let p = report.phases.iter().find(|p| p.name == "run").unwrap();
    println!("{}", p.table());
    let total: u64 = p.ops.values().map(|o| o.requests).sum();
    // 2 s at 100/s: 200 requests were scheduled (the last one at 1.99 s)
    // (a dispatcher running late may find the last one past the deadline)
    assert!((180..=200).contains(&total), "{total}: {:?}", p.ops);
    assert!(
        p.elapsed_s >= 1.98 && p.elapsed_s < 10.0,
        "elapsed {}",
        p.elapsed_s
    );
    assert!(
        p.send_lag_us.is_some(),
        "open loop measures how late requests left"
    );
    assert!(report.mode.starts_with("open-loop, 100/s uniform"));
    // the count bound works for open loops too
    cfg.limits = Limits {
        count: 50,
        duration: Duration::from_secs(60),
    };
    cfg.mode = Mode::Open {
        rate: 1000.0,
        arrivals: Arrivals::Poisson,
        max_in_flight: 8,
    };
    let (report, _) = run(&cfg).await.unwrap();
    let p = report.phases.iter().find(|p| p.name == "run").unwrap();
    assert_eq!(p.ops.values().map(|o| o.requests).sum::<u64>(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_wrong_missing_and_resurrected_photos() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let mut cfg = small(&cluster);
    cfg.mix = Mix::PUT_ONLY;
    cfg.preload = 0;
    cfg.limits.count = 12;
    cfg.verify = false;
    let (_, runner) = run(&cfg).await.unwrap();
    let photos = runner.photos();
    assert_eq!(photos.len(), 12);
    let target = runner.target();
    let pool = runner.pool();

    // as uploaded: passes
    let (_, v) = verify(
        target,
        &pool,
        photos.clone(),
        vec![],
        4,
        Duration::from_secs(30),
    )
    .await;
    assert!(v.passed() && v.ok == 12, "{}", v.summary());

    // wrong expectations: the seed of two photos and the size of a third are off
    let mut tampered: Vec<Arc<Object>> = photos.clone();
    for (i, o) in photos.iter().take(3).enumerate() {
        let (size, seed) = if i < 2 {
            (o.size, o.seed + 1)
        } else {
            (o.size + 8, o.seed)
        };
        tampered[i] = Arc::new(Object::new(o.id.clone(), o.urls.clone(), size, seed));
    }
    // one photo deleted behind the load generator's back: acknowledged, then gone
    let gone = &photos[5];
    let del = cluster
        .admin_http()
        .delete(format!("{}/v1/photos/{}", cluster.directory_url(), gone.id))
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success());
    // and one the load generator believes deleted, which is still served
    photos[7].set_state(ObjState::Deleted);
    let (phase, v) = verify(target, &pool, tampered, vec![], 4, Duration::from_secs(30)).await;
    println!("{}", v.summary());
    assert!(!v.passed());
    assert_eq!(v.mismatched, 3, "{}", v.summary());
    assert_eq!(v.missing, 1, "{}", v.summary());
    assert_eq!(v.deleted_checked, 1);
    assert_eq!(v.deleted_served, 1);
    assert_eq!(v.ok, 7);
    assert!(v
        .examples
        .iter()
        .any(|e| e.contains("first difference at byte")));
    assert!(v
        .examples
        .iter()
        .any(|e| e.contains(&gone.id) && e.contains("404")));
    assert_eq!(phase.ops["verify"].failures["mismatch"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_stays_on_loopback_unless_allowed() {
    for ok in [
        "http://127.0.0.1:8080",
        "http://127.3.4.5/x",
        "http://localhost:1",
        "http://[::1]:8080/",
    ] {
        check_loopback(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "http://10.0.0.1:8080",
        "http://example.com",
        "http://[2001:db8::1]/",
    ] {
        assert!(
            matches!(
                check_loopback(bad, false),
                Err(LoadError::NotLoopback { .. })
            ),
            "{bad} was allowed"
        );
        check_loopback(bad, true).unwrap();
    }
    let remote = TargetKind::Direct {
        directory: "http://192.0.2.1:8082".into(),
        token: None,
    };
    assert!(Target::new(remote.clone(), 4, Duration::from_secs(1), false).is_err());
    let Err(e) = run(&RunConfig::new(remote)).await else {
        panic!("a remote directory was driven")
    };
    assert!(e.to_string().contains("--allow-remote"), "{e}");
    // configurations that cannot work are refused before any traffic
    let mut cfg = RunConfig::new(TargetKind::Direct {
        directory: "http://127.0.0.1:9".into(),
        token: None,
    });
    cfg.mix = Mix::parse("get=1,video=1").unwrap();
    cfg.videos = 1;
    assert!(matches!(cfg.validate(), Err(LoadError::Config(_))));
    cfg.mix = Mix::default();
    cfg.videos = 0;
    cfg.limits.count = 0;
    assert!(cfg.validate().is_err());
}

/// `compare` runs the same PUT and GET workloads against the file-per-photo baseline (a
/// stand-in here; nginx in loadtest/bench/compare.sh) and the cluster, and gives ratios.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_both_sides_and_gives_ratios() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let (dav, files) = crate::fake_dav::start().await;
    let cfg = haystack_loadtest::CompareConfig {
        haystack: TargetKind::Direct {
            directory: cluster.directory_url(),
            token: Some(cluster.admin_token()),
        },
        nginx_url: dav,
        tag: "t1".into(),
        allow_remote: false,
        shape: haystack_loadtest::workload::Shape {
            sizes: SizeDist::Fixed(4096),
            ..Default::default()
        },
        concurrency: 4,
        put_count: 60,
        get_count: 300,
        duration: Duration::from_secs(20),
        timeout: Duration::from_secs(10),
        title: "test".into(),
        command: "test".into(),
    };
    let c = haystack_loadtest::compare(&cfg).await.unwrap();
    println!("{}", c.table());
    assert_eq!(files.lock().unwrap().len(), 60, "one file per PUT");
    assert!(files
        .lock()
        .unwrap()
        .keys()
        .all(|k| k.starts_with("/dav/t1/") && k.matches('/').count() == 5));
    for side in [&c.nginx, &c.haystack] {
        let put = &side.phases[0];
        let get = &side.phases[1];
        assert_eq!((put.name.as_str(), get.name.as_str()), ("put", "get"));
        assert_eq!(put.ops["put"].ok, 60, "{}: {:?}", side.target, put.ops);
        assert_eq!(get.ops["get"].ok, 300, "{}: {:?}", side.target, get.ops);
        assert_eq!(get.ops["get"].bytes, 300 * 4096);
    }
    assert!(c.nginx.target.starts_with("nginx"));
    let tests: Vec<&str> = c.ratios.iter().map(|r| r.test.as_str()).collect();
    assert_eq!(tests, ["put", "get"]);
    assert!(c
        .ratios
        .iter()
        .all(|r| r.ratio > 0.0 && r.nginx_ops_per_s > 0.0));
}
