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
/// the thread doing it waited in the kernel (or that it had not started), so that a stall in
/// the field shows where it is; the engine goes on working after it.
#[test]
fn a_timed_out_operation_reports_where_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let e = engine(haystack_store::EngineKind::IoUring).with_timeout(std::time::Duration::ZERO);
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 8 << 20]).unwrap();
        let f = Arc::new(std::fs::OpenOptions::new().write(true).open(&path).unwrap());
        let err = e.fdatasync(&f).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("waits in") || msg.contains("not started by the blocking pool"),
            "{msg}"
        );
        let e = e.with_timeout(std::time::Duration::from_secs(30));
        e.fdatasync(&f).await.unwrap();
    });
}
