//! Recovery on open: torn tails, lost or damaged index files, deletes whose index record was
//! lost, newest-wins rewrites, full volumes, and concurrent writers sharing syncs.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use haystack_store::volume::volume_paths;
use haystack_store::StoreError;

use crate::common::*;

fn payload(i: u64) -> Vec<u8> {
    (0..(100 + i * 37 % 900))
        .map(|j| (i * 31 + j) as u8)
        .collect()
}

#[test]
fn torn_tail_is_cut_and_never_served() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 3, kind);
            for i in 0..20 {
                vol.write_batch(vec![needle(i, 0, 1, &payload(i))])
                    .await
                    .unwrap();
            }
            let tail = vol.info().size_bytes;
            // Crash without flushing the index checkpoint: the last needles live only in the
            // volume; then a torn write: a whole valid needle image cut in half at the tail.
            drop(vol);
            let mut torn = Vec::new();
            haystack_store::format::encode_needle(
                &mut torn,
                &haystack_store::format::NeedleIn {
                    key: 999,
                    alt: 0,
                    cookie: 1,
                    content_type: "x",
                    data: &[7u8; 500],
                    tag: volume_tag(dir.path(), 3),
                },
            );
            let (dat, _, _) = volume_paths(dir.path(), 3);
            let f = OpenOptions::new().write(true).open(&dat).unwrap();
            f.write_all_at(&torn[..torn.len() / 2], tail).unwrap();
            drop(f);

            let vol = reopen(dir.path(), 3, kind);
            assert_eq!(vol.info().size_bytes, tail, "tail cut at the torn needle");
            for i in 0..20 {
                assert_eq!(&vol.read(i, 0, 1).await.unwrap().data[..], &payload(i)[..]);
            }
            assert!(matches!(
                vol.read(999, 0, 1).await,
                Err(StoreError::NotFound)
            ));
            // New writes go where the torn one was and survive another reopen.
            vol.write_batch(vec![needle(1000, 0, 1, b"after")])
                .await
                .unwrap();
            drop(vol);
            let vol = reopen(dir.path(), 3, kind);
            assert_eq!(&vol.read(1000, 0, 1).await.unwrap().data[..], b"after");
            assert!(matches!(
                vol.read(999, 0, 1).await,
                Err(StoreError::NotFound)
            ));
        });
    }
}

#[test]
fn lost_or_damaged_index_file_is_rebuilt_from_the_volume() {
    for kind in ENGINES {
        for damage in ["delete", "truncate", "garbage"] {
            let dir = tempfile::tempdir().unwrap();
            rt().block_on(async {
                let vol = create(dir.path(), 4, kind);
                for i in 0..50 {
                    vol.write_batch(vec![needle(i, 1, 5, &payload(i))])
                        .await
                        .unwrap();
                }
                vol.delete(7, 1, 5).await.unwrap();
                vol.write_batch(vec![needle(8, 1, 5, b"rewritten")])
                    .await
                    .unwrap();
                vol.flush_index();
                drop(vol);
                let (_, idx, _) = volume_paths(dir.path(), 4);
                match damage {
                    "delete" => std::fs::remove_file(&idx).unwrap(),
                    "truncate" => {
                        let len = std::fs::metadata(&idx).unwrap().len();
                        OpenOptions::new()
                            .write(true)
                            .open(&idx)
                            .unwrap()
                            .set_len(len / 2 + 3)
                            .unwrap();
                    }
                    _ => {
                        let f = OpenOptions::new().write(true).open(&idx).unwrap();
                        f.write_all_at(&[0xAB; 64], 16 + 32 * 10).unwrap();
                    }
                }
                let vol = reopen(dir.path(), 4, kind);
                for i in 0..50 {
                    let r = vol.read(i, 1, 5).await;
                    match i {
                        7 => assert!(matches!(r, Err(StoreError::NotFound)), "{damage}: {r:?}"),
                        8 => assert_eq!(&r.unwrap().data[..], b"rewritten"),
                        _ => assert_eq!(&r.unwrap().data[..], &payload(i)[..], "{damage} {i}"),
                    }
                }
            });
        }
    }
}

#[test]
fn delete_survives_losing_its_index_record() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 5, kind);
            vol.write_batch(vec![needle(1, 0, 9, b"one"), needle(2, 0, 9, b"two")])
                .await
                .unwrap();
            vol.flush_index();
            vol.delete(1, 0, 9).await.unwrap();
            // The delete record stays buffered and is lost with the process.
            drop(vol);
            let vol = reopen(dir.path(), 5, kind);
            assert!(matches!(vol.read(1, 0, 9).await, Err(StoreError::NotFound)));
            assert!(matches!(
                vol.read_meta(1, 0, 9).await,
                Err(StoreError::NotFound)
            ));
            assert_eq!(&vol.read(2, 0, 9).await.unwrap().data[..], b"two");
            // A wrong cookie can neither read nor delete.
            assert!(matches!(vol.read(2, 0, 8).await, Err(StoreError::NotFound)));
            assert!(matches!(
                vol.delete(2, 0, 8).await,
                Err(StoreError::NotFound)
            ));
            assert_eq!(&vol.read(2, 0, 9).await.unwrap().data[..], b"two");
        });
    }
}

#[test]
fn full_volume_turns_read_only_and_keeps_serving() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut cfg = small_volume();
            cfg.max_bytes = 1 << 20;
            let vol = haystack_store::Volume::create(dir.path(), 6, engine(kind), cfg).unwrap();
            let big = vec![3u8; 200 << 10];
            let mut written = 0;
            let err = loop {
                match vol.write_batch(vec![needle(written, 0, 1, &big)]).await {
                    Ok(_) => written += 1,
                    Err(e) => break e,
                }
            };
            assert!(matches!(err, StoreError::Full(6)), "{err:?}");
            let extent = haystack_store::format::needle_extent("image/jpeg".len(), big.len());
            assert_eq!(written, ((1 << 20) - 64) / extent);
            assert_eq!(vol.info().state, haystack_proto::VolumeState::ReadOnly);
            // Even a tiny needle is refused now, and reads go on.
            assert!(matches!(
                vol.write_batch(vec![needle(99, 0, 1, b"x")]).await,
                Err(StoreError::Full(6))
            ));
            for i in 0..written {
                assert_eq!(vol.read(i, 0, 1).await.unwrap().data.len(), big.len());
            }
        });
    }
}

#[test]
fn concurrent_writers_share_syncs_and_all_survive() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 7, kind);
            let mut tasks = Vec::new();
            for t in 0..16u64 {
                let v = vol.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..25u64 {
                        let key = t * 1000 + i + 1;
                        // Every writer also rewrites key 0 of its own alt: newest wins.
                        v.write_batch(vec![
                            needle(key, 0, 3, &payload(key)),
                            needle(0, t as u32, 3, &key.to_le_bytes()),
                        ])
                        .await
                        .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            drop(vol);
            let vol = reopen(dir.path(), 7, kind);
            for t in 0..16u64 {
                for i in 0..25u64 {
                    let key = t * 1000 + i + 1;
                    assert_eq!(
                        &vol.read(key, 0, 3).await.unwrap().data[..],
                        &payload(key)[..]
                    );
                }
                let last = t * 1000 + 25;
                assert_eq!(
                    &vol.read(0, t as u32, 3).await.unwrap().data[..],
                    &last.to_le_bytes()
                );
            }
        });
    }
}

#[test]
fn sealed_volume_serves_from_the_mapped_index_after_reopen() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 8, kind);
            for i in 0..30 {
                vol.write_batch(vec![needle(i, 2, 4, &payload(i))])
                    .await
                    .unwrap();
            }
            vol.delete(3, 2, 4).await.unwrap();
            vol.seal().await.unwrap();
            assert!(matches!(
                vol.write_batch(vec![needle(100, 0, 4, b"no")]).await,
                Err(StoreError::ReadOnly { .. })
            ));
            vol.delete(4, 2, 4).await.unwrap();
            drop(vol);
            let vol = reopen(dir.path(), 8, kind);
            assert_eq!(vol.info().state, haystack_proto::VolumeState::Sealed);
            for i in 0..30 {
                let r = vol.read(i, 2, 4).await;
                if i == 3 || i == 4 {
                    assert!(matches!(r, Err(StoreError::NotFound)));
                } else {
                    assert_eq!(&r.unwrap().data[..], &payload(i)[..]);
                }
            }
        });
    }
}

/// Regression: a sealed volume's open read the deletes logged in its index file but left a
/// torn record at the file's end (a crash in the middle of an append), so every delete
/// logged after it sat misaligned and was dropped at the next open. The mapped index's own
/// deleted bit is not synced (the volume file's flag is the durable truth), so after a power
/// cut that took it, the deleted needle counted and listed as live again (what an erasure
/// coding of the volume reads). Now the sealed open cuts the torn tail, as the open of a
/// writable volume does.
#[test]
fn a_sealed_volumes_deletes_after_a_torn_index_record_hold() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 8, kind);
            for i in 0..6 {
                vol.write_batch(vec![needle(i, 0, 4, &payload(i))])
                    .await
                    .unwrap();
            }
            vol.seal().await.unwrap();
            vol.delete(1, 0, 4).await.unwrap();
            vol.flush_index();
            drop(vol);
            let (_, idx, sidx) = volume_paths(dir.path(), 8);
            // A crash in the middle of the next record's append.
            let f = OpenOptions::new().append(true).open(&idx).unwrap();
            std::io::Write::write_all(&mut &f, &[0xAB; 11]).unwrap();
            drop(f);
            let vol = reopen(dir.path(), 8, kind);
            assert_eq!(vol.info().deleted_needles, 1);
            let mapped = std::fs::read(&sidx).unwrap();
            vol.delete(2, 0, 4).await.unwrap();
            vol.flush_index();
            drop(vol);
            // The power cut took the mapped index's unsynced bit of that delete.
            std::fs::write(&sidx, &mapped).unwrap();
            let vol = reopen(dir.path(), 8, kind);
            assert_eq!(
                vol.info().deleted_needles,
                2,
                "a delete logged after a torn index record was lost"
            );
            let live: Vec<u64> = vol.live_entries().0.iter().map(|e| e.0).collect();
            assert!(!live.contains(&2), "{live:?}");
            assert!(matches!(vol.read(2, 0, 4).await, Err(StoreError::NotFound)));
        });
    }
}

#[test]
fn index_file_with_a_gap_below_indexed_needles() {
    // Writers finish out of offset order, so the index file can hold the record of a needle
    // at a high offset and have lost the one below it: the lower needle must still be found.
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 9, kind);
            for i in 0..6 {
                vol.write_batch(vec![needle(i, 0, 1, &payload(i))])
                    .await
                    .unwrap();
            }
            vol.flush_index();
            drop(vol);
            let (_, idx, _) = volume_paths(dir.path(), 9);
            let raw = std::fs::read(&idx).unwrap();
            // Keep the header and the records of needles 0, 1, 3, 5: 2 and 4 are lost.
            let mut kept = raw[..16].to_vec();
            for (i, r) in raw[16..].chunks(32).enumerate() {
                if i != 2 && i != 4 {
                    kept.extend_from_slice(r);
                }
            }
            std::fs::write(&idx, kept).unwrap();
            let vol = reopen(dir.path(), 9, kind);
            for i in 0..6 {
                assert_eq!(
                    &vol.read(i, 0, 1).await.unwrap().data[..],
                    &payload(i)[..],
                    "needle {i}"
                );
            }
            // And the tail after them still takes writes that survive.
            vol.write_batch(vec![needle(6, 0, 1, b"six")])
                .await
                .unwrap();
            drop(vol);
            let vol = reopen(dir.path(), 9, kind);
            assert_eq!(&vol.read(6, 0, 1).await.unwrap().data[..], b"six");
            assert_eq!(&vol.read(2, 0, 1).await.unwrap().data[..], &payload(2)[..]);
        });
    }
}

#[test]
fn concurrent_writers_filling_a_volume_get_offsets_or_full() {
    // Combined appends: every writer learns where its needle landed or that the volume is
    // full; everything acknowledged reads back, before and after reopen.
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut cfg = small_volume();
            cfg.max_bytes = 1 << 20;
            let vol = haystack_store::Volume::create(dir.path(), 10, engine(kind), cfg).unwrap();
            let tasks: Vec<_> = (0..32u64)
                .map(|t| {
                    let v = vol.clone();
                    tokio::spawn(async move {
                        let mut ok = Vec::new();
                        for i in 0..80u64 {
                            let k = t * 100 + i;
                            match v.write_batch(vec![needle(k, 0, 1, &payload(k))]).await {
                                Ok(_) => ok.push(k),
                                Err(StoreError::Full(10)) => break,
                                Err(e) => panic!("{e:?}"),
                            }
                        }
                        ok
                    })
                })
                .collect();
            let mut acked = Vec::new();
            for t in tasks {
                acked.extend(t.await.unwrap());
            }
            assert!(!acked.is_empty());
            assert_eq!(vol.info().state, haystack_proto::VolumeState::ReadOnly);
            for &k in &acked {
                assert_eq!(&vol.read(k, 0, 1).await.unwrap().data[..], &payload(k)[..]);
            }
            drop(vol);
            let vol = reopen(dir.path(), 10, kind);
            for &k in &acked {
                assert_eq!(&vol.read(k, 0, 1).await.unwrap().data[..], &payload(k)[..]);
            }
        });
    }
}

#[test]
fn a_half_created_volume_does_not_stop_the_store() {
    // A crash while creating a volume leaves only its temporary file: the store still opens,
    // and the volume can be created again.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vol-7.dat.tmp"), b"half").unwrap();
    rt().block_on(async {
        let cfg = haystack_store::StoreConfig {
            data_dir: dir.path().to_path_buf(),
            engine: ENGINES[0],
            max_volume_bytes: 4 << 20,
            max_needle_bytes: 1 << 20,
            max_write_bytes: 2 << 20,
            prealloc_step: 1 << 20,
            ..Default::default()
        };
        let store = haystack_store::Store::open(cfg).await.expect("store opens");
        let v = store.create_volume(7, None).await.expect("volume created");
        v.write_batch(vec![needle(1, 0, 1, b"x")]).await.unwrap();
        assert_eq!(&v.read(1, 0, 1).await.unwrap().data[..], b"x");
    });
}

#[test]
fn a_new_or_full_volume_wakes_the_heartbeat_at_once() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cfg = haystack_store::StoreConfig {
            data_dir: dir.path().to_path_buf(),
            engine: ENGINES[0],
            max_volume_bytes: 1 << 20,
            max_needle_bytes: 256 << 10,
            max_write_bytes: 512 << 10,
            prealloc_step: 1 << 20,
            ..Default::default()
        };
        let store = haystack_store::Store::open(cfg).await.expect("store opens");
        let soon = std::time::Duration::from_secs(5);
        let v = store.create_volume(1, None).await.unwrap();
        tokio::time::timeout(soon, store.changed())
            .await
            .expect("a created volume is reported at once");
        // Nothing else happened: no wake-up.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), store.changed())
                .await
                .is_err()
        );
        let chunk = vec![7u8; 200 << 10];
        let mut key = 0;
        loop {
            key += 1;
            match v.write_batch(vec![needle(key, 0, 1, &chunk)]).await {
                Ok(_) => continue,
                Err(haystack_store::StoreError::Full(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        tokio::time::timeout(soon, store.changed())
            .await
            .expect("a volume that fills up is reported at once");
    });
}
