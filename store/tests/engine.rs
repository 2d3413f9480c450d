//! The I/O engines on their own: round trips, and operations abandoned mid-flight (a dropped
//! request) leave the engine working.

use std::sync::Arc;

use crate::common::*;

#[test]
fn round_trip_and_abandoned_operations() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let e = engine(kind);
            let f = Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.path().join("f"))
                    .unwrap(),
            );
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
            e.write_all_at(&f, 4096, data.clone()).await.unwrap();
            e.fdatasync(&f).await.unwrap();
            // Start many operations and give up on them at once.
            for i in 0..200u64 {
                let fut = async {
                    if i % 2 == 0 {
                        e.fdatasync(&f).await.map(|_| ())
                    } else {
                        e.read_at(&f, 4096 + i, 5000).await.map(|_| ())
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::ZERO, fut).await;
            }
            let back = e.read_at(&f, 4096, data.len()).await.unwrap();
            assert_eq!(back, data);
            // Reading past the end is short, not an error.
            let tail = e.read_at(&f, 4096 + 99_000, 5000).await.unwrap();
            assert_eq!(&tail[..], &data[99_000..]);
            let none = e.read_at(&f, 1 << 30, 10).await.unwrap();
            assert!(none.is_empty());
        });
    }
}

/// A write or sync past the engine's timeout fails with `TimedOut`, and the error says where
/// the thread doing it waited in the kernel, or that it had not started (and will not); the
/// engine goes on working after it.
#[test]
fn a_timed_out_operation_reports_where_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let e = engine(haystack_store::EngineKind::IoUring)
            .with_timeout(std::time::Duration::from_millis(1));
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 8 << 20]).unwrap();
        let f = Arc::new(std::fs::OpenOptions::new().write(true).open(&path).unwrap());
        for i in 0..5u8 {
            // 32 MiB of dirty pages for the sync to write: it cannot finish within 1 ms.
            std::os::unix::fs::FileExt::write_all_at(&*f, &vec![i; 32 << 20], 0).unwrap();
            let err = e.fdatasync(&f).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
            let msg = err.to_string();
            let at = msg
                .split_once(" (")
                .map(|(_, at)| at.trim_end_matches(')'))
                .unwrap_or_default();
            let named = at
                .strip_prefix("thread ")
                .and_then(|r| r.split_once(' '))
                .is_some_and(|(tid, rest)| {
                    tid.parse::<i32>().is_ok_and(|t| t > 0)
                        && (rest == "is running"
                            || rest
                                .strip_prefix("waits in ")
                                .is_some_and(|w| !w.is_empty()))
                });
            assert!(
                named || at == "not started by the blocking pool; it will not run",
                "{msg}"
            );
        }
        let e = e.with_timeout(std::time::Duration::from_secs(30));
        e.fdatasync(&f).await.unwrap();
    });
}

/// Regression: a write that timed out before tokio's blocking pool started it still ran
/// later, after its caller had given up (a repair's in-place rewrite could then land over a
/// delete flag set meanwhile). Now it never runs.
#[test]
fn a_write_given_up_before_it_started_never_lands() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = engine(haystack_store::EngineKind::IoUring)
            .with_timeout(std::time::Duration::from_millis(100));
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
        );
        // The only blocking thread is busy until told.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::task::spawn_blocking(move || held.recv().ok());
        let err = e.write_all_at(&f, 0, vec![9u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("not started"), "{err}");
        release.send(()).unwrap();
        busy.await.unwrap();
        // Whatever was queued behind it has run by the time this does.
        tokio::task::spawn_blocking(|| ()).await.unwrap();
        assert!(
            std::fs::read(&path).unwrap().iter().all(|b| *b == 7),
            "the write given up on landed later"
        );
    });
}
