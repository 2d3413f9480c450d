//! Model-based test: random put / get / delete / reopen / seal / compact (whole, or stopped
//! at each crash point and reopened) / index rebuild sequences against a HashMap, over both
//! engines.

use std::collections::{HashMap, HashSet};

use haystack_store::{CrashPoint, EngineKind, StoreError};
use proptest::prelude::*;

use crate::common::*;

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: u64,
        alt: u32,
        cookie: u64,
        len: usize,
        fill: u8,
    },
    Batch {
        key: u64,
        n: u32,
        cookie: u64,
        len: usize,
    },
    Get {
        key: u64,
        alt: u32,
        cookie: u64,
    },
    Delete {
        key: u64,
        alt: u32,
        cookie: u64,
    },
    Reopen,
    Seal,
    Compact,
    /// A compaction that dies at this point; the volume is then reopened.
    CompactCrash(u8),
    RebuildIndex,
}

const CRASH_POINTS: [CrashPoint; 4] = [
    CrashPoint::BeforeMarker,
    CrashPoint::AfterMarker,
    CrashPoint::AfterDataRename,
    CrashPoint::BeforeMarkerRemoval,
];

fn op() -> impl Strategy<Value = Op> {
    let key = 0u64..12;
    let alt = 0u32..3;
    let cookie = prop_oneof![Just(7u64), Just(9u64)];
    prop_oneof![
        6 => (key.clone(), alt.clone(), cookie.clone(), 0usize..600, any::<u8>())
            .prop_map(|(key, alt, cookie, len, fill)| Op::Put { key, alt, cookie, len, fill }),
        2 => (key.clone(), 1u32..4, cookie.clone(), 0usize..300)
            .prop_map(|(key, n, cookie, len)| Op::Batch { key, n, cookie, len }),
        6 => (key.clone(), alt.clone(), cookie.clone())
            .prop_map(|(key, alt, cookie)| Op::Get { key, alt, cookie }),
        3 => (key, alt, cookie).prop_map(|(key, alt, cookie)| Op::Delete { key, alt, cookie }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Seal),
        2 => Just(Op::Compact),
        2 => (0u8..4).prop_map(Op::CompactCrash),
        1 => Just(Op::RebuildIndex),
    ]
}

fn data(key: u64, alt: u32, len: usize, fill: u8) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add((i as u64 ^ key ^ alt as u64) as u8))
        .collect()
}

type Model = HashMap<(u64, u32), (u64, Vec<u8>)>;

/// After a reopen: every needle the model holds reads back, every needle it holds as deleted
/// (deleted and not written again) is a 404 with either cookie, and the volume counts as
/// live exactly what the model does.
async fn check_after_reopen(
    vol: &haystack_store::Volume,
    model: &Model,
    deleted: &HashSet<(u64, u32)>,
    when: &str,
) {
    // Counted before any read: a read that meets a delete flag corrects the index.
    let info = vol.info();
    let live = (info.needles - info.deleted_needles) as usize;
    assert_eq!(live, model.len(), "{when}: live needles counted: {info:?}");
    for ((key, alt), (cookie, d)) in model {
        let n = vol
            .read(*key, *alt, *cookie)
            .await
            .unwrap_or_else(|e| panic!("{when}: {key}/{alt}: {e}"));
        assert_eq!(&n.data[..], &d[..], "{when}: {key}/{alt}");
    }
    for (key, alt) in deleted {
        for cookie in [7, 9] {
            let r = vol.read(*key, *alt, cookie).await;
            assert!(
                matches!(r, Err(StoreError::NotFound)),
                "{when}: deleted {key}/{alt} answers {r:?}"
            );
        }
    }
}

fn run(kind: EngineKind, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut vol = create(dir.path(), 1, kind);
        let mut model: Model = HashMap::new();
        let mut deleted: HashSet<(u64, u32)> = HashSet::new();
        // What the volume refuses to write again (a write never undoes a delete): needles its
        // index holds deleted (until a compaction drops them), and every delete it took (in
        // memory: until the volume is opened again), with its cookie (the latest per needle).
        let mut gone: HashSet<(u64, u32)> = HashSet::new();
        let mut absent: HashMap<(u64, u32), u64> = HashMap::new();
        let refuses =
            |gone: &HashSet<(u64, u32)>,
             absent: &HashMap<(u64, u32), u64>,
             _model: &Model,
             k: (u64, u32),
             cookie: u64| { gone.contains(&k) || absent.get(&k) == Some(&cookie) };
        let mut sealed = false;
        for op in ops {
            match op {
                Op::Put {
                    key,
                    alt,
                    cookie,
                    len,
                    fill,
                } => {
                    let d = data(key, alt, len, fill);
                    let r = vol.write_batch(vec![needle(key, alt, cookie, &d)]).await;
                    if sealed {
                        assert!(matches!(r, Err(StoreError::ReadOnly { .. })), "{r:?}");
                    } else if refuses(&gone, &absent, &model, (key, alt), cookie) {
                        // Refused before anything is written: nothing changes.
                        assert!(matches!(r, Err(StoreError::Deleted { .. })), "{r:?}");
                    } else {
                        r.unwrap();
                        model.insert((key, alt), (cookie, d));
                        deleted.remove(&(key, alt));
                    }
                }
                Op::Batch {
                    key,
                    n,
                    cookie,
                    len,
                } => {
                    let ns: Vec<_> = (0..n)
                        .map(|a| needle(key, a, cookie, &data(key, a, len, a as u8)))
                        .collect();
                    let r = vol.write_batch(ns).await;
                    if sealed {
                        assert!(r.is_err());
                    } else {
                        // A batch with a needle that would undo a delete is refused whole,
                        // before anything is written.
                        if (0..n).any(|a| refuses(&gone, &absent, &model, (key, a), cookie)) {
                            assert!(matches!(r, Err(StoreError::Deleted { .. })), "{r:?}");
                        } else {
                            assert_eq!(r.unwrap().len(), n as usize);
                            for a in 0..n {
                                model.insert((key, a), (cookie, data(key, a, len, a as u8)));
                                deleted.remove(&(key, a));
                            }
                        }
                    }
                }
                Op::Get { key, alt, cookie } => {
                    let r = vol.read(key, alt, cookie).await;
                    match model.get(&(key, alt)) {
                        Some((c, d)) if *c == cookie => {
                            let n = r.unwrap();
                            assert_eq!(&n.data[..], &d[..]);
                            assert_eq!(n.content_type, "image/jpeg");
                        }
                        _ => assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}"),
                    }
                }
                Op::Delete { key, alt, cookie } => {
                    let r = vol.delete(key, alt, cookie).await;
                    absent.insert((key, alt), cookie);
                    match model.get(&(key, alt)) {
                        Some((c, _)) if *c == cookie => {
                            r.unwrap();
                            model.remove(&(key, alt));
                            deleted.insert((key, alt));
                            gone.insert((key, alt));
                        }
                        _ => assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}"),
                    }
                }
                Op::Reopen => {
                    vol.flush_index();
                    drop(vol);
                    vol = reopen(dir.path(), 1, kind);
                    absent.clear();
                    check_after_reopen(&vol, &model, &deleted, "reopen").await;
                }
                Op::Seal => {
                    vol.seal().await.unwrap();
                    sealed = true;
                }
                Op::Compact => {
                    let r = vol.compact().await.unwrap();
                    assert!(r.after_bytes <= r.before_bytes, "{r:?}");
                    let info = vol.info();
                    assert_eq!(info.dead_bytes, 0, "{info:?}");
                    assert_eq!(info.needles as usize, model.len(), "{info:?}");
                    assert!(info.compaction.is_none());
                    gone.clear();
                }
                Op::CompactCrash(p) => {
                    let at = CRASH_POINTS[p as usize];
                    assert!(vol.compact_until(Some(at)).await.is_err());
                    drop(vol);
                    vol = reopen(dir.path(), 1, kind);
                    absent.clear();
                    if at != CrashPoint::BeforeMarker {
                        gone.clear();
                    }
                    let names: Vec<String> = std::fs::read_dir(dir.path())
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                    assert!(
                        names.iter().all(|n| !n.contains("compact")),
                        "left over after recovery from {at:?}: {names:?}"
                    );
                    if at != CrashPoint::BeforeMarker {
                        assert_eq!(vol.info().dead_bytes, 0, "rolled forward from {at:?}");
                    }
                    check_after_reopen(&vol, &model, &deleted, &format!("crash at {at:?}")).await;
                }
                Op::RebuildIndex => {
                    let r = vol.rebuild_index().await.unwrap();
                    assert_eq!((r.needles - r.deleted_needles) as usize, model.len());
                }
            }
        }
        // Everything in the model reads back, after one last reopen too.
        vol.flush_index();
        drop(vol);
        let vol = reopen(dir.path(), 1, kind);
        check_after_reopen(&vol, &model, &deleted, "final reopen").await;
    });
}

/// The case proptest shrank to on 2026-12-01 (issue 11, defect 7): a delete acknowledged
/// after a compaction, then a compaction that crashes before its marker; after reopen the
/// deleted needle counted as live. Its seed was not recorded, so it is kept here by hand.
#[test]
fn model_regression_delete_after_compaction_then_crash() {
    for kind in ENGINES {
        run(
            kind,
            vec![
                Op::Batch {
                    key: 2,
                    n: 1,
                    cookie: 9,
                    len: 0,
                },
                Op::Compact,
                Op::Delete {
                    key: 2,
                    alt: 0,
                    cookie: 9,
                },
                Op::CompactCrash(0),
            ],
        );
    }
}

/// `PROPTEST_CASES`, or 48.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48)
}

proptest! {
    // 48 cases per run of cargo test; PROPTEST_CASES asks for more (it used to be ignored).
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn model_io_uring(ops in proptest::collection::vec(op(), 1..60)) {
        run(EngineKind::IoUring, ops);
    }

    #[test]
    fn model_sync(ops in proptest::collection::vec(op(), 1..60)) {
        run(EngineKind::Sync, ops);
    }
}

#[test]
fn engines_are_what_they_say() {
    for kind in ENGINES {
        assert_eq!(engine(kind).kind(), kind);
    }
}
