//! Corruption: flipped bytes in data, headers and the tail are detected; wrong bytes are never
//! returned.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use haystack_store::format::{HEADER_LEN, SUPERBLOCK_LEN};
use haystack_store::volume::volume_paths;
use haystack_store::StoreError;

use crate::common::*;

fn flip(path: &std::path::Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn flipped_bytes_in_data_and_header_are_detected_on_read() {
    for kind in ENGINES {
        // Where to flip, relative to the needle start: data, content type, cookie, key,
        // size, footer magic, CRC.
        for (what, rel) in [
            ("data", HEADER_LEN as u64 + 10 + 5),
            ("content type", HEADER_LEN as u64 + 2),
            ("cookie", 9),
            ("key", 17),
            ("size", 29),
            ("footer", HEADER_LEN as u64 + 10 + 100),
            ("crc", HEADER_LEN as u64 + 10 + 100 + 5),
        ] {
            let dir = tempfile::tempdir().unwrap();
            rt().block_on(async {
                let vol = create(dir.path(), 1, kind);
                let locs = vol
                    .write_batch(vec![
                        needle(1, 0, 2, &[5u8; 100]),
                        needle(2, 0, 2, &[6u8; 100]),
                    ])
                    .await
                    .unwrap();
                let (dat, _, _) = volume_paths(dir.path(), 1);
                flip(&dat, locs[0].offset + rel);
                let r = vol.read(1, 0, 2).await;
                assert!(
                    matches!(r, Err(StoreError::Corrupt { .. })),
                    "{what}: {r:?}"
                );
                // The neighbour is untouched.
                assert_eq!(&vol.read(2, 0, 2).await.unwrap().data[..], &[6u8; 100]);
            });
        }
    }
}

#[test]
fn corrupt_superblock_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let vol = create(dir.path(), 1, ENGINES[0]);
        vol.write_batch(vec![needle(1, 0, 2, b"x")]).await.unwrap();
    });
    let (dat, _, _) = volume_paths(dir.path(), 1);
    flip(&dat, 13);
    let r = haystack_store::Volume::open(dir.path(), 1, engine(ENGINES[0]), small_volume());
    assert!(matches!(r, Err(StoreError::BadVolumeFile { .. })));
}

#[test]
fn flipped_bytes_in_the_unindexed_tail_are_cut_or_skipped() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let vol = create(dir.path(), 2, kind);
            vol.write_batch(vec![needle(1, 0, 2, b"indexed")])
                .await
                .unwrap();
            vol.flush_index();
            // These live only in the volume tail (their index records are lost on drop).
            let mut locs = Vec::new();
            for k in 10..15u64 {
                locs.extend(
                    vol.write_batch(vec![needle(k, 0, 2, &[k as u8; 64])])
                        .await
                        .unwrap(),
                );
            }
            drop(vol);
            let (dat, _, _) = volume_paths(dir.path(), 2);
            // Damage the middle one (12) and the last one (14).
            flip(&dat, locs[2].offset + HEADER_LEN as u64 + 12);
            flip(&dat, locs[4].offset + 3);
            let vol = reopen(dir.path(), 2, kind);
            assert_eq!(&vol.read(1, 0, 2).await.unwrap().data[..], b"indexed");
            for (i, k) in (10..15u64).enumerate() {
                let r = vol.read(k, 0, 2).await;
                if k == 12 || k == 14 {
                    assert!(matches!(r, Err(StoreError::NotFound)), "{k}: {r:?}");
                } else {
                    assert_eq!(&r.unwrap().data[..], &[k as u8; 64], "{k}");
                }
                let _ = i;
            }
            // The torn last needle was cut: the tail now ends where it started.
            assert_eq!(vol.info().size_bytes, locs[4].offset);
            assert!(locs[0].offset > SUPERBLOCK_LEN);
        });
    }
}
