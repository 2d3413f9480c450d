//! The uploader's batch encoding is the store's: the store's own parser reads it back.

use bytes::Bytes;
use haystack_client::store::{encode_batch, Needle};

#[test]
fn batch_encoding_matches_the_store_parser() {
    let needles = vec![
        Needle {
            alt: 0,
            content_type: "image/jpeg".into(),
            data: Bytes::from_static(b"original bytes"),
        },
        Needle {
            alt: 3,
            content_type: "image/png".into(),
            data: Bytes::from(vec![7u8; 1000]),
        },
    ];
    let body = encode_batch(42, 0xdead_beef, &needles);
    let parsed = haystack_store::http::parse_batch(body, 1 << 20).expect("the store parses it");
    assert_eq!(parsed.len(), 2);
    for (p, n) in parsed.iter().zip(&needles) {
        assert_eq!((p.key, p.alt, p.cookie), (42, n.alt, 0xdead_beef));
        assert_eq!(p.content_type, n.content_type);
        assert_eq!(p.data, n.data);
    }
}
