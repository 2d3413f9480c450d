//! Repair from a good copy and replica digests, over both engines: a corrupt needle is
//! rewritten in place (sealed volumes too) and survives a reopen; a deleted needle is never
//! brought back; a missing one is appended on a writable volume and refused on a sealed one;
//! a copy of another size is refused; digests agree for equal needle lists and tell a
//! missing needle or a delete apart.

use haystack_store::format::HEADER_LEN;
use haystack_store::volume::volume_paths;
use haystack_store::{RepairOutcome, StoreError};

use crate::common::*;

#[test]
fn a_corrupt_needle_is_rewritten_in_place_also_when_sealed() {
    for kind in ENGINES {
        for seal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            rt().block_on(async {
                let vol = create(dir.path(), 1, kind);
                let locs = vol
                    .write_batch(vec![
                        needle(1, 0, 2, &[5u8; 300]),
                        needle(2, 0, 2, &[6u8; 300]),
                    ])
                    .await
                    .unwrap();
                if seal {
                    vol.seal().await.unwrap();
                }
                let before = vol.info();
                let (dat, _, _) = volume_paths(dir.path(), 1);
                // The data and then the header's key: both are repaired.
                for rel in [HEADER_LEN as u64 + 10 + 50, 17] {
                    flip(&dat, locs[0].offset + rel);
                    assert!(matches!(
                        vol.read(1, 0, 2).await,
                        Err(StoreError::Corrupt { .. })
                    ));
                    let out = vol.repair(needle(1, 0, 2, &[5u8; 300])).await.unwrap();
                    assert_eq!(out, RepairOutcome::Rewritten, "{kind:?} sealed {seal}");
                    assert_eq!(&vol.read(1, 0, 2).await.unwrap().data[..], &[5u8; 300]);
                }
                // An intact needle is left alone; the neighbour and the counts are untouched.
                assert_eq!(
                    vol.repair(needle(2, 0, 2, &[6u8; 300])).await.unwrap(),
                    RepairOutcome::Intact
                );
                let after = vol.info();
                assert_eq!(
                    (after.size_bytes, after.needles, after.state),
                    (before.size_bytes, before.needles, before.state)
                );
                drop(vol);
                let vol = reopen(dir.path(), 1, kind);
                assert_eq!(&vol.read(1, 0, 2).await.unwrap().data[..], &[5u8; 300]);
                assert!(vol.verify().await.unwrap().corrupt.is_empty());
            });
        }
    }
}

#[test]
fn repair_never_brings_back_a_deleted_needle() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 1, kind);
            vol.write_batch(vec![needle(1, 0, 2, &[5u8; 300])])
                .await
                .unwrap();
            vol.delete(1, 0, 2).await.unwrap();
            assert_eq!(
                vol.repair(needle(1, 0, 2, &[5u8; 300])).await.unwrap(),
                RepairOutcome::Deleted
            );
            assert!(matches!(vol.read(1, 0, 2).await, Err(StoreError::NotFound)));
            drop(vol);
            let vol = reopen(dir.path(), 1, kind);
            assert!(matches!(vol.read(1, 0, 2).await, Err(StoreError::NotFound)));
        });
    }
}

#[test]
fn a_missing_needle_is_appended_only_while_writable() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 1, kind);
            assert_eq!(
                vol.repair(needle(9, 1, 2, &[7u8; 100])).await.unwrap(),
                RepairOutcome::Appended
            );
            assert_eq!(&vol.read(9, 1, 2).await.unwrap().data[..], &[7u8; 100]);
            vol.seal().await.unwrap();
            let r = vol.repair(needle(10, 1, 2, &[7u8; 100])).await;
            assert!(matches!(r, Err(StoreError::ReadOnly { .. })), "{r:?}");
            // A good copy of another size is not this needle.
            let (dat, _, _) = volume_paths(dir.path(), 1);
            let loc = vol.needle_entries()[0];
            assert_eq!((loc.key, loc.alt), (9, 1));
            let offset = {
                let (entries, _) = vol.live_entries();
                entries[0].2.offset
            };
            flip(&dat, offset + HEADER_LEN as u64 + 20);
            let r = vol.repair(needle(9, 1, 2, &[7u8; 1000])).await;
            assert!(matches!(r, Err(StoreError::Mismatch(_))), "{r:?}");
        });
    }
}

#[test]
fn digests_agree_for_equal_lists_and_tell_differences_apart() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            std::fs::create_dir_all(dir.path().join("a")).unwrap();
            std::fs::create_dir_all(dir.path().join("b")).unwrap();
            let a = create(&dir.path().join("a"), 1, kind);
            let b = create(&dir.path().join("b"), 1, kind);
            // Same needles, written in another order and batching: the same digest.
            let all: Vec<u64> = (1..=200).collect();
            for chunk in all.chunks(7) {
                a.write_batch(chunk.iter().map(|&k| needle(k, 0, 2, &[1u8; 64])).collect())
                    .await
                    .unwrap();
            }
            for k in all.iter().rev() {
                b.write_batch(vec![needle(*k, 0, 2, &[1u8; 64])])
                    .await
                    .unwrap();
            }
            assert_eq!(a.digest(1).unwrap(), b.digest(1).unwrap());
            assert_eq!(a.digest(16).unwrap().buckets, b.digest(16).unwrap().buckets);
            // A delete on one side changes exactly one bucket.
            b.delete(77, 0, 2).await.unwrap();
            let (da, db) = (a.digest(16).unwrap(), b.digest(16).unwrap());
            let differ: Vec<usize> = (0..16)
                .filter(|i| da.buckets[*i] != db.buckets[*i])
                .collect();
            assert_eq!(
                differ,
                vec![haystack_store::bucket_of(77, 0, 16) as usize],
                "only the deleted needle's bucket differs"
            );
            assert_ne!(a.digest(1).unwrap().buckets, b.digest(1).unwrap().buckets);
            assert!(matches!(a.digest(0), Err(StoreError::BadRequest(_))));
            assert!(matches!(a.digest(70_000), Err(StoreError::BadRequest(_))));
        });
    }
}

/// Regression: an in-place repair rewrite that timed out before the blocking pool started it
/// stopped the volume's deletes until a restart (`set_failed`), as one that may still land
/// does; such a write never runs, so the file is as it was and the volume goes on. Before the
/// fix the delete below failed ("failed: an in-place repair write timed out").
#[test]
fn a_repair_rewrite_given_up_before_it_started_does_not_stop_deletes() {
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
        let vol = haystack_store::volume::Volume::create(dir.path(), 1, e, small_volume()).unwrap();
        let locs = vol
            .write_batch(vec![
                needle(1, 0, 2, &[5u8; 300]),
                needle(2, 0, 2, &[6u8; 300]),
            ])
            .await
            .unwrap();
        let (dat, _, _) = volume_paths(dir.path(), 1);
        flip(&dat, locs[0].offset + HEADER_LEN as u64 + 60);
        // The only blocking thread is busy until told: the rewrite is given up on unstarted.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::task::spawn_blocking(move || held.recv().ok());
        let err = vol.repair(needle(1, 0, 2, &[5u8; 300])).await.unwrap_err();
        assert!(err.to_string().contains("not started"), "{err}");
        release.send(()).unwrap();
        busy.await.unwrap();
        tokio::task::spawn_blocking(|| ()).await.unwrap();
        assert!(matches!(
            vol.read(1, 0, 2).await,
            Err(StoreError::Corrupt { .. })
        ));
        vol.delete(2, 0, 2).await.expect("deletes go on");
        assert_eq!(
            vol.repair(needle(1, 0, 2, &[5u8; 300])).await.unwrap(),
            RepairOutcome::Rewritten
        );
        assert_eq!(&vol.read(1, 0, 2).await.unwrap().data[..], &[5u8; 300]);
    });
}
