//! The directory's JSON forms: ids as decimal strings, cookies as 16 lowercase hex digits.

use haystack_proto::directory::{hex_u64, AssignResponse, CommitRequest, KeyedCommit, Replica};

#[test]
fn ids_travel_as_decimal_strings_and_cookies_as_hex() {
    let a = AssignResponse {
        id: u64::MAX,
        cookie: 0xab,
        volume_id: 7,
        replicas: vec![Replica {
            store_id: 9,
            url: "http://x".into(),
        }],
        replayed: false,
        request_hash: None,
        write_token: None,
    };
    let s = serde_json::to_string(&a).expect("serialize");
    assert!(s.contains("\"id\":\"18446744073709551615\""), "{s}");
    assert!(s.contains("\"cookie\":\"00000000000000ab\""), "{s}");
    assert!(s.contains("\"store_id\":\"9\""), "{s}");
    let back: AssignResponse = serde_json::from_str(&s).expect("round trip");
    assert_eq!(back, a);
}

#[test]
fn a_keyed_commit_is_a_commit_with_the_key_beside_its_fields() {
    let plain = r#"{"id": "42", "cookie": "000000000000002a", "volume_id": 1,
        "variants": [{"name": "o", "alt": 0, "size_bytes": 1, "content_type": "image/png"}]}"#;
    let k: KeyedCommit = serde_json::from_str(plain).expect("a plain commit");
    assert_eq!((k.commit.id, k.commit.cookie), (42, 42));
    assert_eq!((k.idempotency_key, k.request_hash), (None, None));
    let c: CommitRequest = serde_json::from_str(plain).expect("commit");
    let keyed = KeyedCommit {
        commit: c,
        idempotency_key: Some("k".into()),
        request_hash: Some("sha256:ab".into()),
        pending_replicas: Vec::new(),
    };
    let s = serde_json::to_string(&keyed).expect("serialize");
    assert!(s.contains("\"id\":\"42\""), "{s}");
    assert!(s.contains("\"idempotency_key\":\"k\""), "{s}");
    let back: KeyedCommit = serde_json::from_str(&s).expect("round trip");
    assert_eq!(back, keyed);
}

#[test]
fn numbers_are_accepted_for_ids_but_cookies_must_be_hex() {
    let c: CommitRequest = serde_json::from_str(
        r#"{"id": 42, "cookie": "000000000000002a", "volume_id": 1,
            "variants": [{"name": "o", "alt": 0, "size_bytes": 1, "content_type": "image/png"}]}"#,
    )
    .expect("numeric id accepted");
    assert_eq!((c.id, c.cookie), (42, 42));
    for bad in [r#""2A""#, r#""00000000000000AB""#, r#"42"#, r#""xyz""#] {
        let json = format!(r#"{{"id": "1", "cookie": {bad}, "volume_id": 1}}"#);
        assert!(
            serde_json::from_str::<CommitRequest>(&json).is_err(),
            "{bad}"
        );
    }
    assert!(serde_json::from_str::<CommitRequest>(
        r#"{"id": "-1", "cookie": "000000000000002a", "volume_id": 1}"#
    )
    .is_err());
    assert_eq!(hex_u64::parse("00000000000000ab"), Some(0xab));
    assert_eq!(hex_u64::parse("ab"), None);
}
