//! Model-based test of the embedded backend: random sequences of conditional writes, reads,
//! scans and reopenings, compared with a `HashMap` after every step.

use std::collections::HashMap;

use haystack_directory::meta::embedded::EmbeddedStore;
use haystack_directory::meta::{Cas, Expect, MetadataStore, Table};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u8),
    /// Update with the current version when `fresh`, else with a wrong one.
    Update(u8, u8, bool),
    Get(u8),
    List,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
        (0u8..6, any::<u8>(), any::<bool>()).prop_map(|(k, v, f)| Op::Update(k, v, f)),
        (0u8..6).prop_map(Op::Get),
        Just(Op::List),
        Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn embedded_backend_matches_a_hashmap(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = EmbeddedStore::open(dir.path()).expect("open");
            let mut model: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
            let t = Table::Photos;
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let k = u64::from(k);
                        let got = store.put_if(t, k, Expect::Absent, vec![v]).await.expect("insert");
                        match (model.get(&k), got) {
                            (Some((ver, _)), got) => {
                                assert_eq!(got, Cas::Conflict { current: Some(*ver) });
                            }
                            // A new record's first version is the backend's to pick (a clock).
                            (None, Cas::Applied { version }) => {
                                assert!(version >= 1);
                                model.insert(k, (version, vec![v]));
                            }
                            (None, got) => panic!("insert of an absent key: {got:?}"),
                        }
                    }
                    Op::Update(k, v, fresh) => {
                        let k = u64::from(k);
                        let cur = model.get(&k).map(|(ver, _)| *ver);
                        let expect = match (cur, fresh) {
                            (Some(ver), true) => ver,
                            (Some(ver), false) => ver + 7,
                            (None, _) => 1,
                        };
                        let got = store.put_if(t, k, Expect::Version(expect), vec![v]).await.expect("update");
                        let want = if cur == Some(expect) {
                            model.insert(k, (expect + 1, vec![v]));
                            Cas::Applied { version: expect + 1 }
                        } else {
                            Cas::Conflict { current: cur }
                        };
                        assert_eq!(got, want);
                    }
                    Op::Get(k) => {
                        let k = u64::from(k);
                        let got = store.get(t, k).await.expect("get").map(|s| (s.version, s.data));
                        assert_eq!(got, model.get(&k).cloned());
                    }
                    Op::List => {
                        let mut got: Vec<(u64, u64, Vec<u8>)> = store
                            .list(t)
                            .await
                            .expect("list")
                            .into_iter()
                            .map(|(k, s)| (k, s.version, s.data))
                            .collect();
                        got.sort();
                        let mut want: Vec<(u64, u64, Vec<u8>)> =
                            model.iter().map(|(k, (v, d))| (*k, *v, d.clone())).collect();
                        want.sort();
                        assert_eq!(got, want);
                    }
                    Op::Reopen => {
                        store.close().await;
                        store = EmbeddedStore::open(dir.path()).expect("reopen");
                    }
                }
            }
            store.close().await;
        });
    }
}
