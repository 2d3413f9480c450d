//! The whole public path, as in production: an uploader and a cache node in front of a real
//! directory and stores, all on loopback in this process. Uploads go to the uploader, reads to
//! the URLs it returns (the cache tier), videos are read with Range, and verify reads every
//! acknowledged upload back byte for byte.

use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

use haystack_loadtest::dist::SizeDist;
use haystack_loadtest::target::TargetKind;
use haystack_loadtest::workload::{parse_variants, Limits, Mix, Mode};
use haystack_loadtest::{run, RunConfig};
use haystack_testkit::{bind_loopback, stopped, Cluster, ClusterOptions};
use tokio::sync::watch;

/// A role on its own thread and runtime, stopped on drop.
struct Role {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn<F, Fut>(name: &str, body: F) -> Role
where
    F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (stop, rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(body(rx));
        })
        .expect("thread");
    Role {
        stop,
        thread: Some(thread),
    }
}

struct Stack {
    cluster: Cluster,
    uploader_url: String,
    cache_url: String,
    _roles: Vec<Role>,
}

async fn start(api_key: Option<&str>) -> Stack {
    let cache_listener = bind_loopback();
    let cache_url = format!("http://{}", cache_listener.local_addr().unwrap());
    let cluster = Cluster::start(ClusterOptions {
        cache_url: Some(cache_url.clone()),
        ..Default::default()
    })
    .await;
    let ccfg = haystack_cache::CacheConfig {
        directory_url: Some(cluster.directory_url()),
        capacity_bytes: 64 << 20,
        http_workers: 1,
        security: cluster.security(),
        ..Default::default()
    };
    let cache = spawn("cache", move |rx| async move {
        haystack_cache::run(cache_listener, ccfg, stopped(rx))
            .await
            .expect("cache runs");
    });
    let ul = TcpListener::bind("127.0.0.1:0").unwrap();
    let uploader_url = format!("http://{}", ul.local_addr().unwrap());
    let ucfg = haystack_uploader::UploaderConfig {
        directory_url: Some(cluster.directory_url()),
        api_key: api_key.map(str::to_string),
        video_chunk_bytes: 1 << 20,
        image_workers: 2,
        http_workers: 2,
        security: cluster.security(),
        ..Default::default()
    };
    let uploader = spawn("uploader", move |rx| async move {
        haystack_uploader::run(ul, ucfg, stopped(rx))
            .await
            .expect("uploader runs");
    });
    for url in [&uploader_url, &cache_url] {
        let mut up = false;
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("{url}/health")).await {
                if r.status().is_success() {
                    up = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "{url} did not come up");
    }
    Stack {
        cluster,
        uploader_url,
        cache_url,
        _roles: vec![uploader, cache],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_reads_deletes_and_videos_through_uploader_and_cache() {
    let stack = start(None).await;
    let mut cfg = RunConfig::new(TargetKind::Uploader {
        url: stack.uploader_url.clone(),
        api_key: None,
    });
    cfg.shape.sizes = SizeDist::parse("lognormal:40KiB,0.5,8KiB,160KiB").unwrap();
    cfg.shape.read_variants = parse_variants("original=2,large=1,medium=1,thumb=2").unwrap();
    cfg.shape.video_size = 2_500_000; // three chunks of 1 MiB, the last one short
    cfg.shape.video_range = 300_000; // often across a chunk boundary
    cfg.preload = 20;
    cfg.videos = 2;
    cfg.mix = Mix::parse("put=20,get=55,delete=5,video=20").unwrap();
    cfg.mode = Mode::Closed { concurrency: 4 };
    cfg.limits = Limits {
        count: 200,
        duration: Duration::from_secs(60),
    };
    cfg.setup_limit = Duration::from_secs(120);
    cfg.verify = true;
    let (report, runner) = run(&cfg).await.unwrap();
    println!("{}", report.table());
    for p in &report.phases {
        for (name, o) in &p.ops {
            assert_eq!(o.failed, 0, "{} {name}: {:?}", p.name, o.failures);
        }
    }
    let run_phase = report.phases.iter().find(|p| p.name == "run").unwrap();
    for op in ["put", "get", "delete", "video_get"] {
        assert!(run_phase.ops[op].ok > 0, "no successful {op}");
    }
    let v = report.verify.unwrap();
    assert!(v.passed(), "{}", v.summary());
    assert_eq!(v.checked, v.ok);
    assert!(v.deleted_checked > 0);
    // reads went to the cache tier, every variant was returned
    let photos = runner.photos();
    assert!(photos
        .iter()
        .all(|o| o.url(0).starts_with(&stack.cache_url)));
    assert!(photos.iter().all(|o| o.urls.iter().all(Option::is_some)));
    let videos = runner.videos();
    assert_eq!(videos.len(), 2);
    assert!(videos[0]
        .url(0)
        .starts_with(&format!("{}/v1/videos/", stack.cache_url)));
    drop(stack.cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_sent_and_its_absence_is_reported() {
    let stack = start(Some("sesame")).await;
    let mut cfg = RunConfig::new(TargetKind::Uploader {
        url: stack.uploader_url.clone(),
        api_key: Some("sesame".into()),
    });
    cfg.shape.sizes = SizeDist::Fixed(4096);
    cfg.preload = 0;
    cfg.mix = Mix::parse("put=1,delete=1").unwrap();
    cfg.mode = Mode::Closed { concurrency: 2 };
    cfg.limits = Limits {
        count: 20,
        duration: Duration::from_secs(30),
    };
    let (report, _) = run(&cfg).await.unwrap();
    let p = report.phases.iter().find(|p| p.name == "run").unwrap();
    assert!(p.ops.values().all(|o| o.failed == 0), "{:?}", p.ops);
    assert!(p.ops["put"].ok > 0);
    // without the key: every upload is refused, and the report says how
    cfg.target = TargetKind::Uploader {
        url: stack.uploader_url.clone(),
        api_key: None,
    };
    cfg.mix = Mix::PUT_ONLY;
    let (report, _) = run(&cfg).await.unwrap();
    let put = &report.phases.iter().find(|p| p.name == "run").unwrap().ops["put"];
    assert_eq!(put.ok, 0);
    assert_eq!(put.failures["http_401"], 20);
}
