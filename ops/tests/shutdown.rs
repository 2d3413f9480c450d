//! SIGTERM: the store stops accepting, finishes the writes in flight, flushes its index
//! checkpoints and exits 0; everything acknowledged is there after a restart, found through
//! the index file rather than a scan of the volume tail.

use std::time::{Duration, Instant};

use crate::crash::{body, free_port, start, url, wait_healthy};

#[test]
fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("store.log");
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(&data, port, &log, "auto");
    let c = reqwest::Client::new();
    let acked: Vec<u64> = rt.block_on(async {
        wait_healthy(&c, &base, child.id()).await;
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let base = base.clone();
                tokio::spawn(async move {
                    let c = reqwest::Client::new();
                    let mut ok = Vec::new();
                    for i in 0..100_000u64 {
                        let key = w + 8 * i;
                        match c.put(url(&base, key)).body(body(key)).send().await {
                            Ok(r) if r.status() == 201 => ok.push(key),
                            Ok(r) => panic!("put {key}: {}", r.status()),
                            Err(_) => break,
                        }
                    }
                    ok
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        crate::crash::signal(child.id(), libc::SIGTERM);
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.expect("writer"));
        }
        acked
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "store did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "store exited with {status}");
    assert!(!acked.is_empty());
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(logs.contains("store stopped"), "no clean stop in the log");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(&data, port, &log, "auto");
    rt.block_on(async {
        wait_healthy(&c, &base, child.id()).await;
        for k in &acked {
            let r = c.get(url(&base, *k)).send().await.expect("get");
            assert_eq!(r.status(), 200, "key {k}");
            assert!(r.bytes().await.expect("body").as_ref() == body(*k).as_slice());
        }
    });
    child.kill().ok();
    child.wait().ok();
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(
        !logs.contains("needles recovered from the volume tail"),
        "the index checkpoint was not flushed at shutdown"
    );
}
