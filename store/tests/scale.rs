//! The index past its uncompressed tail: tens of thousands of needles written by interleaved
//! writers, deleted and rewritten at random (a rewrite of a deleted one refused), checked against a model before and after reopen.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};

use crate::common::*;

#[test]
fn many_needles_interleaved_writers_deletes_and_reopen() {
    for kind in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut vol = create(dir.path(), 1, kind);
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
            let mut keys: Vec<u64> = Vec::new();
            for round in 0..rounds() {
                let first = round * 1_000_000;
                let mut next: Vec<u64> = (0..16).map(|w| first + w).collect();
                for _ in 0..6000 {
                    let w = rng.random_range(0..16usize);
                    if rng.random_ratio(1, 8) && !keys.is_empty() {
                        let k = keys[rng.random_range(0..keys.len())];
                        if model.remove(&k).is_some() {
                            vol.delete(k, 0, 1).await.unwrap();
                        }
                        continue;
                    }
                    let (k, rewrite) = if rng.random_ratio(1, 20) && !keys.is_empty() {
                        (keys[rng.random_range(0..keys.len())], true)
                    } else {
                        let k = next[w];
                        next[w] += 16;
                        keys.push(k);
                        (k, false)
                    };
                    let d: Vec<u8> = (0..rng.random_range(1..200usize))
                        .map(|i| (k as usize + i) as u8)
                        .collect();
                    let r = vol.write_batch(vec![needle(k, 0, 1, &d)]).await;
                    if rewrite && !model.contains_key(&k) {
                        // A write never undoes a delete.
                        assert!(
                            matches!(r, Err(haystack_store::StoreError::Deleted { .. })),
                            "{r:?}"
                        );
                        continue;
                    }
                    r.unwrap();
                    model.insert(k, d);
                }
                // Crash-like reopen: the index checkpoint's buffer is lost half of the time.
                if round % 2 == 0 {
                    vol.flush_index();
                }
                drop(vol);
                vol = reopen(dir.path(), 1, kind);
                for &k in &keys {
                    let r = vol.read(k, 0, 1).await;
                    match model.get(&k) {
                        Some(d) => assert_eq!(
                            &r.unwrap_or_else(|e| panic!("round {round} key {k}: {e:?}"))
                                .data[..],
                            &d[..]
                        ),
                        None => assert!(
                            matches!(r, Err(haystack_store::StoreError::NotFound)),
                            "round {round} key {k}: {r:?}"
                        ),
                    }
                }
            }
        });
    }
}

fn rounds() -> u64 {
    std::env::var("HAYSTACK_SCALE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}
