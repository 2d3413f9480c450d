//! Regression tests for the durability defects of issue 11: each failed before its fix.

use haystack_store::{CompactPause, EngineKind, StoreError};

use crate::common::*;

/// Defect 1: a needle copied in the first compaction phase, then rewritten and deleted while
/// the compaction runs, must stay deleted (not come back with its first bytes).
fn rewritten_then_deleted_during_compaction(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let vol = create(dir.path(), 1, kind);
        vol.write_batch(vec![needle(1, 0, 5, b"first version")])
            .await
            .unwrap();
        vol.write_batch(vec![needle(2, 0, 5, b"other")])
            .await
            .unwrap();
        vol.delete(2, 0, 5).await.unwrap();
        let pause = CompactPause::default();
        let c = {
            let (v, p) = (vol.clone(), pause.clone());
            tokio::spawn(async move { v.compact_paused(p).await })
        };
        pause.reached.notified().await;
        vol.write_batch(vec![needle(1, 0, 5, b"second version")])
            .await
            .unwrap();
        vol.delete(1, 0, 5).await.unwrap();
        pause.resume.notify_one();
        c.await.unwrap().unwrap();
        let r = vol.read(1, 0, 5).await;
        assert!(
            matches!(r, Err(StoreError::NotFound)),
            "after compaction: {r:?}"
        );
        assert_eq!(vol.info().needles - vol.info().deleted_needles, 0);
        vol.flush_index();
        drop(vol);
        let vol = reopen(dir.path(), 1, kind);
        let r = vol.read(1, 0, 5).await;
        assert!(
            matches!(r, Err(StoreError::NotFound)),
            "after reopen: {r:?}"
        );
        let info = vol.info();
        assert_eq!(info.needles - info.deleted_needles, 0, "{info:?}");
    });
}

#[test]
fn compaction_keeps_a_rewritten_then_deleted_needle_deleted_io_uring() {
    rewritten_then_deleted_during_compaction(EngineKind::IoUring);
}

#[test]
fn compaction_keeps_a_rewritten_then_deleted_needle_deleted_sync() {
    rewritten_then_deleted_during_compaction(EngineKind::Sync);
}

/// Defect 2: after a crash in an unacknowledged write whose first page was lost but whose
/// later pages reached the disk, recovery must leave nothing past the tail that a later scan
/// could index: an acknowledged rewrite (or a delete) of the same key must win for good.
fn stale_bytes_past_the_tail(kind: EngineKind, delete_after: bool) {
    use haystack_store::format::{encode_needle, NeedleIn};
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let vol = create(dir.path(), 1, kind);
        vol.write_batch(vec![needle(10, 0, 5, b"acknowledged")])
            .await
            .unwrap();
        let tail = vol.info().size_bytes;
        vol.flush_index();
        drop(vol);
        // The unacknowledged batch: a filler needle F, then key 1's "stale" version S.
        let tag = volume_tag(dir.path(), 1);
        let filler = vec![0xAB; 5000];
        let mut batch = Vec::new();
        let f_extent = encode_needle(
            &mut batch,
            &NeedleIn {
                key: 99,
                alt: 0,
                cookie: 5,
                content_type: "image/jpeg",
                data: &filler,
                tag,
            },
        );
        encode_needle(
            &mut batch,
            &NeedleIn {
                key: 1,
                alt: 0,
                cookie: 5,
                content_type: "image/jpeg",
                data: b"never acknowledged",
                tag,
            },
        );
        // Its first page never reached the disk.
        batch[..4096].fill(0);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("vol-1.dat"))
            .unwrap();
        f.write_all_at(&batch, tail).unwrap();
        drop(f);

        let vol = reopen(dir.path(), 1, kind);
        assert!(matches!(vol.read(1, 0, 5).await, Err(StoreError::NotFound)));
        assert_eq!(
            vol.info().size_bytes,
            tail,
            "the tail is cut at the lost page"
        );
        // An acknowledged write of key 1 lands at the tail, as long as F was.
        let data = vec![0x11; 5000];
        let locs = vol.write_batch(vec![needle(1, 0, 5, &data)]).await.unwrap();
        assert_eq!((locs[0].offset, locs[0].extent as u64), (tail, f_extent));
        if delete_after {
            vol.delete(1, 0, 5).await.unwrap();
        }
        drop(vol); // as a crash would: buffered index records are lost
        let vol = reopen(dir.path(), 1, kind);
        let r = vol.read(1, 0, 5).await;
        if delete_after {
            assert!(matches!(r, Err(StoreError::NotFound)), "deleted: {r:?}");
        } else {
            assert_eq!(
                &r.unwrap().data[..],
                &data[..],
                "the acknowledged write wins"
            );
        }
        assert_eq!(&vol.read(10, 0, 5).await.unwrap().data[..], b"acknowledged");
    });
}

#[test]
fn stale_bytes_past_the_tail_never_shadow_an_acknowledged_write() {
    for kind in ENGINES {
        stale_bytes_past_the_tail(kind, false);
    }
}

#[test]
fn stale_bytes_past_the_tail_never_revive_a_deleted_needle() {
    for kind in ENGINES {
        stale_bytes_past_the_tail(kind, true);
    }
}

/// Defect 4 (and the suspected lost deletes): a compaction that fails after its commit
/// marker leaves the volume taking no writes, no deletes and no other compaction until a
/// restart rolls it forward; nothing acknowledged is lost and no acknowledged delete undone.
#[test]
fn a_compaction_failed_past_its_marker_blocks_the_next_one() {
    use haystack_store::CrashPoint;
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 1, kind);
            for k in 0..64u64 {
                vol.write_batch(vec![needle(k, 0, 5, &k.to_le_bytes())])
                    .await
                    .unwrap();
            }
            vol.delete(63, 0, 5).await.unwrap();
            let pause = CompactPause {
                fail_at: Some(CrashPoint::AfterDataRename),
                ..Default::default()
            };
            pause.resume.notify_one(); // no pause, only the failure
            assert!(vol.compact_paused(pause).await.is_err());
            // No other compaction may start: it would truncate the committed files.
            let second = vol.compact().await;
            assert!(matches!(second, Err(StoreError::Busy(_))), "{second:?}");
            // A delete would be undone by the roll-forward: refused.
            let del = vol.delete(5, 0, 5).await;
            assert!(matches!(del, Err(StoreError::ReadOnly { .. })), "{del:?}");
            let put = vol.write_batch(vec![needle(100, 0, 5, b"x")]).await;
            assert!(put.is_err(), "{put:?}");
            // Reads go on.
            assert_eq!(
                &vol.read(7, 0, 5).await.unwrap().data[..],
                &7u64.to_le_bytes()
            );
            drop(vol);
            let vol = reopen(dir.path(), 1, kind);
            for k in 0..63u64 {
                let n = vol
                    .read(k, 0, 5)
                    .await
                    .unwrap_or_else(|e| panic!("{k}: {e}"));
                assert_eq!(&n.data[..], &k.to_le_bytes());
            }
            assert!(matches!(
                vol.read(63, 0, 5).await,
                Err(StoreError::NotFound)
            ));
            vol.compact().await.unwrap();
        });
    }
}

/// Defect 7 (the case proptest shrank to): a delete acknowledged after a compaction, then a
/// compaction that crashes; after reopen the deleted needle is neither served nor counted.
#[test]
fn a_delete_after_compaction_survives_a_crashed_compaction() {
    use haystack_store::CrashPoint;
    for kind in ENGINES {
        for at in [
            CrashPoint::BeforeMarker,
            CrashPoint::AfterMarker,
            CrashPoint::AfterDataRename,
            CrashPoint::BeforeMarkerRemoval,
        ] {
            let dir = tempfile::tempdir().unwrap();
            rt().block_on(async {
                let vol = create(dir.path(), 1, kind);
                vol.write_batch(vec![needle(2, 0, 9, b"")]).await.unwrap();
                vol.compact().await.unwrap();
                vol.delete(2, 0, 9).await.unwrap();
                assert!(vol.compact_until(Some(at)).await.is_err());
                drop(vol);
                let vol = reopen(dir.path(), 1, kind);
                // Counted before any read (a read that meets the flag corrects the index).
                let info = vol.info();
                assert_eq!(info.needles - info.deleted_needles, 0, "{at:?}: {info:?}");
                assert!(matches!(vol.read(2, 0, 9).await, Err(StoreError::NotFound)));
            });
        }
    }
}

/// Defect 6: one volume that cannot be opened is quarantined; the store opens and serves
/// every other volume, and says which one is unavailable and why.
#[test]
fn a_bad_volume_is_quarantined_and_the_rest_serve() {
    use haystack_proto::VolumeState;
    use std::os::unix::fs::FileExt;
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let s = start_server(dir.path(), kind).await;
            for id in [1u32, 2] {
                let v = s.store.create_volume(id, None).await.unwrap();
                v.write_batch(vec![needle(1, 0, 5, b"hello")])
                    .await
                    .unwrap();
            }
            s.store.close();
            s.stop().await;
            // Flip a byte of volume 2's superblock.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.path().join("vol-2.dat"))
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, 20).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], 20).unwrap();
            drop(f);
            let s = start_server(dir.path(), kind).await;
            let v1 = s.store.volume(1).unwrap();
            assert_eq!(&v1.read(1, 0, 5).await.unwrap().data[..], b"hello");
            let e = s.store.volume(2).err().unwrap();
            assert!(
                matches!(e, StoreError::Unavailable { volume: 2, .. }),
                "{e}"
            );
            let list = s.store.list();
            let q = list.iter().find(|v| v.id == 2).unwrap();
            assert_eq!(q.state, VolumeState::Unavailable);
            assert!(
                q.reason.as_deref().unwrap().contains("unavailable"),
                "{q:?}"
            );
            let r = reqwest::get(s.url("/v1/needles/2/1/0/5")).await.unwrap();
            assert_eq!(r.status().as_u16(), 503);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "volume_unavailable");
            // Its files are not touched by a create.
            assert!(s.store.create_volume(2, None).await.is_err());
            s.stop().await;
        });
    }
}

/// A small tmpfs mounted for one test (a disk that fills), unmounted when dropped.
pub struct SmallDisk {
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    /// None, after saying SKIPPED loudly, where mounting is not allowed (not root).
    pub fn mount(bytes: u64) -> Option<SmallDisk> {
        use std::ffi::CString;
        let dir = tempfile::tempdir().unwrap();
        let target = CString::new(dir.path().to_str().unwrap()).unwrap();
        let (src, fstype) = (
            CString::new("tmpfs").unwrap(),
            CString::new("tmpfs").unwrap(),
        );
        let opts = CString::new(format!("size={bytes}")).unwrap();
        // SAFETY: plain syscall with valid C strings.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            eprintln!(
                "SKIPPED: cannot mount a small tmpfs ({}); the full-disk test needs root",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    /// Fills the file system to the last byte.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.path().join("filler")).unwrap();
        let block = vec![0x5Au8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.dir.path().to_str().unwrap()).unwrap();
        // SAFETY: plain syscall with a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Defect 5: a full disk at restart does not make a volume unopenable: the index checkpoint
/// append on open is an optimisation, and the volume opens and serves without it.
#[test]
fn a_full_disk_at_restart_still_opens_the_volume() {
    for kind in ENGINES {
        let Some(disk) = SmallDisk::mount(8 << 20) else {
            return;
        };
        rt().block_on(async {
            let vol = create(disk.dir.path(), 1, kind);
            for k in 0..300u64 {
                vol.write_batch(vec![needle(k, 0, 5, &k.to_le_bytes())])
                    .await
                    .unwrap();
            }
            drop(vol); // index records still buffered: lost, as in a crash
            disk.fill();
            let vol =
                haystack_store::Volume::open(disk.dir.path(), 1, engine(kind), small_volume())
                    .expect("a full disk must not stop the volume from opening");
            for k in 0..300u64 {
                let n = vol.read(k, 0, 5).await.unwrap();
                assert_eq!(&n.data[..], &k.to_le_bytes());
            }
        });
    }
}

/// Suspected (issue 11): ENOSPC while preallocating a whole step left the volume "full"
/// although the write would fit. Now the write gets what it needs.
#[test]
fn enospc_on_a_preallocation_step_still_takes_a_write_that_fits() {
    for kind in ENGINES {
        let Some(disk) = SmallDisk::mount(16 << 20) else {
            return;
        };
        rt().block_on(async {
            let cfg = haystack_store::VolumeConfig {
                max_bytes: 64 << 20,
                max_needle_bytes: 1 << 20,
                max_write_bytes: 2 << 20,
                prealloc_step: 8 << 20,
            };
            let vol =
                haystack_store::Volume::create(disk.dir.path(), 1, engine(kind), cfg).unwrap();
            // Up to just below the first step's end.
            let mut k = 0u64;
            while vol.info().size_bytes + (1 << 20) < 8 << 20 {
                vol.write_batch(vec![needle(k, 0, 5, &vec![1u8; 1000 << 10])])
                    .await
                    .unwrap();
                k += 1;
            }
            // Leave about 2 MiB free: less than a step, more than a write.
            let free = {
                let c = std::ffi::CString::new(disk.dir.path().to_str().unwrap()).unwrap();
                // SAFETY: statvfs with a valid path and an owned struct.
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
                st.f_bavail * st.f_frsize
            };
            let filler = std::fs::File::create(disk.dir.path().join("filler")).unwrap();
            filler.set_len(free - (2 << 20)).unwrap();
            haystack_store::disk::fallocate(&filler, 0, free - (2 << 20), 0).unwrap();
            let r = vol
                .write_batch(vec![needle(k, 0, 5, &vec![2u8; 1000 << 10])])
                .await;
            assert!(r.is_ok(), "a write that fits was refused: {r:?}");
            assert_eq!(
                &vol.read(k, 0, 5).await.unwrap().data[..],
                &vec![2u8; 1000 << 10][..]
            );
        });
    }
}

/// Found by the multi-host disk-full scenario (issue 16): a volume whose file could not grow
/// because the disk was full turned read-only with the reason "full", which says the volume
/// reached its size; the operator could not tell a full disk from a full volume. Now the
/// reason says the disk is full and the write is refused as `DiskFull` (507 `disk_full`).
#[test]
fn a_full_disk_makes_the_volume_read_only_saying_the_disk_is_full() {
    for kind in ENGINES {
        let Some(disk) = SmallDisk::mount(4 << 20) else {
            return;
        };
        rt().block_on(async {
            let cfg = haystack_store::VolumeConfig {
                max_bytes: 64 << 20,
                max_needle_bytes: 1 << 20,
                max_write_bytes: 2 << 20,
                prealloc_step: 256 << 10,
            };
            let vol =
                haystack_store::Volume::create(disk.dir.path(), 1, engine(kind), cfg).unwrap();
            vol.write_batch(vec![needle(1, 0, 5, b"before")])
                .await
                .unwrap();
            disk.fill();
            let mut k = 2u64;
            let err = loop {
                match vol
                    .write_batch(vec![needle(k, 0, 5, &vec![3u8; 100 << 10])])
                    .await
                {
                    Ok(_) => k += 1,
                    Err(e) => break e,
                }
                assert!(k < 100, "the full disk took every write");
            };
            assert!(
                matches!(err, haystack_store::StoreError::DiskFull(1)),
                "{err:?}"
            );
            let info = vol.info();
            assert_eq!(info.state, haystack_proto::VolumeState::ReadOnly);
            assert_eq!(
                info.reason.as_deref(),
                Some(haystack_store::volume::DISK_FULL),
                "{info:?}"
            );
            // Nothing written before is harmed.
            assert_eq!(&vol.read(1, 0, 5).await.unwrap().data[..], b"before");
            for j in 2..k {
                assert_eq!(vol.read(j, 0, 5).await.unwrap().data.len(), 100 << 10);
            }
        });
    }
}

/// Suspected (issue 11): no timeout on I/O completions, so a hung device held the append
/// lock forever. A hung fdatasync now fails after the engine's timeout, the volume turns
/// read-only, and reads go on.
#[test]
fn a_hung_sync_times_out_and_the_volume_turns_read_only() {
    use haystack_store::disk::OpKind;
    use haystack_store::sim::{FaultKind, FaultPlan, SimDisk};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let sim = std::sync::Arc::new(SimDisk::new(&dir.path().join("attic")).unwrap());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    rt().block_on(async {
        let engine = haystack_store::IoEngine::simulated(sim.clone())
            .with_timeout(Duration::from_millis(200));
        let vol = haystack_store::Volume::create(&data, 1, engine, small_volume()).unwrap();
        vol.write_batch(vec![needle(1, 0, 5, b"before")])
            .await
            .unwrap();
        sim.plan(FaultPlan {
            nth: 0,
            kinds: vec![OpKind::Sync],
            fault: FaultKind::Hang(Duration::from_secs(3)),
        });
        let started = Instant::now();
        let r = vol.write_batch(vec![needle(2, 0, 5, b"hung")]).await;
        assert!(r.is_err(), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            started.elapsed()
        );
        assert_eq!(vol.info().state, haystack_proto::VolumeState::ReadOnly);
        assert_eq!(&vol.read(1, 0, 5).await.unwrap().data[..], b"before");
        // Later writers are refused at once instead of queueing behind the hung one.
        let started = Instant::now();
        assert!(vol.write_batch(vec![needle(3, 0, 5, b"x")]).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    });
}

/// Suspected (issue 11): the newest acknowledged needle, bit-rotted while its index record
/// was still buffered (normal after a process crash), was taken for a torn tail, zeroed and
/// dropped: verify could never report it. Records now reach the index file with every write,
/// so the needle stays known: its read is a corrupt needle (served from another replica) and
/// verify reports it.
#[test]
fn a_damaged_newest_needle_is_reported_not_cut() {
    use std::os::unix::fs::FileExt;
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 1, kind);
            let mut last = None;
            for k in 0..3u64 {
                let locs = vol
                    .write_batch(vec![needle(k, 0, 5, &[k as u8; 3000])])
                    .await
                    .unwrap();
                last = Some(locs[0]);
            }
            drop(vol); // a process crash: nothing flushed on purpose
            let loc = last.unwrap();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.path().join("vol-1.dat"))
                .unwrap();
            let at = loc.offset + 100;
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0xFF], at).unwrap();
            drop(f);
            let vol = reopen(dir.path(), 1, kind);
            let r = vol.read(2, 0, 5).await;
            assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
            let report = vol.verify().await.unwrap();
            assert_eq!(report.corrupt.len(), 1, "{report:?}");
            assert_eq!(report.corrupt[0].key, "2");
            assert_eq!(&vol.read(1, 0, 5).await.unwrap().data[..], &[1u8; 3000][..]);
        });
    }
}

/// Suspected (issue 11): a failed `Volume::create` leaked `vol-N.dat.tmp`, and one left by a
/// crash stayed for good. A failed create removes its own; the store removes leftovers.
#[test]
fn a_failed_volume_creation_leaves_no_temporary_file() {
    use haystack_store::disk::OpKind;
    use haystack_store::sim::{FaultKind, FaultPlan, SimDisk};
    let dir = tempfile::tempdir().unwrap();
    let sim = std::sync::Arc::new(SimDisk::new(&dir.path().join("attic")).unwrap());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for nth in 0..3 {
        sim.plan(FaultPlan {
            nth,
            kinds: vec![OpKind::Write, OpKind::Alloc, OpKind::Sync],
            fault: FaultKind::Enospc,
        });
        let r = haystack_store::Volume::create(
            &data,
            1,
            haystack_store::IoEngine::simulated(sim.clone()),
            small_volume(),
        );
        assert!(r.is_err());
        assert!(!data.join("vol-1.dat.tmp").exists(), "fault at {nth}");
    }
    rt().block_on(async {
        std::fs::write(data.join("vol-9.dat.tmp"), b"half made").unwrap();
        let s = start_server(&data, ENGINES[0]).await;
        assert!(!data.join("vol-9.dat.tmp").exists());
        s.stop().await;
    });
}

/// A write and the delete of the same needle sent at once, many times over (the delete of a
/// quorum write's slow replica): whichever lands first, the needle ends deleted, the write
/// answers either success (it was indexed before the delete) or `Deleted`, and a reopen
/// finds it deleted too. Before writes checked deletes, every pair whose delete landed first
/// left the needle live.
#[test]
fn a_delete_racing_the_write_of_its_needle_always_wins() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 1, kind);
            let (mut written, mut refused) = (0, 0);
            for key in 0..200u64 {
                let (v, d) = (vol.clone(), vol.clone());
                let w = tokio::spawn(async move {
                    v.write_batch(vec![needle(key, 0, 5, &[key as u8; 300])])
                        .await
                });
                // The delete a little later each time, so that it lands before the write,
                // while it is in flight, or after it.
                let del = tokio::spawn(async move {
                    for _ in 0..key % 8 {
                        tokio::task::yield_now().await;
                    }
                    if key % 3 == 0 {
                        tokio::time::sleep(std::time::Duration::from_micros(key * 40)).await;
                    }
                    d.delete(key, 0, 5).await
                });
                let (w, del) = (w.await.unwrap(), del.await.unwrap());
                match (&w, &del) {
                    (Ok(_), Ok(())) => written += 1,
                    (Err(StoreError::Deleted { .. }), Err(StoreError::NotFound)) => refused += 1,
                    other => panic!("key {key}: {other:?}"),
                }
                assert!(
                    matches!(vol.read(key, 0, 5).await, Err(StoreError::NotFound)),
                    "key {key} is live after its delete"
                );
            }
            eprintln!("{kind:?}: {written} written then deleted, {refused} refused");
            none_live_after_reopen_and_rebuild(vol, dir.path(), kind, 200).await;
        });
    }
}

/// The same race over a needle the volume holds live already (a repair copy landed before
/// the late write): the delete finds it and sets its flag while the rewrite is in flight.
/// Whichever lands first, the needle ends deleted, after a reopen and an index rebuild too.
/// Before every delete was remembered, a rewrite indexed between the delete's lookup and its
/// index update stayed live (the delete marked the older copy only).
#[test]
fn a_delete_racing_a_rewrite_of_its_live_needle_always_wins() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 1, kind);
            let mut outcomes = std::collections::BTreeMap::new();
            for key in 0..200u64 {
                vol.write_batch(vec![needle(key, 0, 5, &[1; 300])])
                    .await
                    .unwrap();
                let (v, d) = (vol.clone(), vol.clone());
                let w = tokio::spawn(async move {
                    for _ in 0..key % 5 {
                        tokio::task::yield_now().await;
                    }
                    v.write_batch(vec![needle(key, 0, 5, &[2; 300])]).await
                });
                let del = tokio::spawn(async move {
                    for _ in 0..key % 7 {
                        tokio::task::yield_now().await;
                    }
                    if key % 4 == 0 {
                        tokio::time::sleep(std::time::Duration::from_micros(key * 40)).await;
                    }
                    d.delete(key, 0, 5).await
                });
                let (w, del) = (w.await.unwrap(), del.await.unwrap());
                assert!(
                    del.is_ok(),
                    "key {key}: the delete of a live needle: {del:?}"
                );
                let outcome = match &w {
                    Ok(_) => "rewritten, then deleted",
                    Err(StoreError::Deleted { .. }) => "refused",
                    other => panic!("key {key}: {other:?}"),
                };
                *outcomes.entry(outcome).or_insert(0) += 1;
                assert!(
                    matches!(vol.read(key, 0, 5).await, Err(StoreError::NotFound)),
                    "key {key} is live after its delete ({outcome})"
                );
            }
            eprintln!("{kind:?}: {outcomes:?}");
            none_live_after_reopen_and_rebuild(vol, dir.path(), kind, 200).await;
        });
    }
}

/// After a race test: keys `0..keys` (alt 0, cookie 5) read as deleted after a reopen, the
/// volume counts no live needle, and they still do after an index rebuild (which reads the
/// delete flags in the volume file, not the index records).
async fn none_live_after_reopen_and_rebuild(
    vol: std::sync::Arc<haystack_store::Volume>,
    dir: &std::path::Path,
    kind: EngineKind,
    keys: u64,
) {
    vol.flush_index();
    drop(vol);
    let vol = reopen(dir, 1, kind);
    let info = vol.info();
    assert_eq!(info.needles, info.deleted_needles, "{info:?}");
    for when in ["a reopen", "an index rebuild"] {
        if when == "an index rebuild" {
            vol.rebuild_index().await.unwrap();
        }
        for key in 0..keys {
            assert!(
                matches!(vol.read(key, 0, 5).await, Err(StoreError::NotFound)),
                "key {key} is live after {when}"
            );
        }
    }
}
