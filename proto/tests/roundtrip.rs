//! Round trips of the codecs that read network input: needle paths, batch bodies, photo ids.
//! The same properties are fuzz targets (fuzz/fuzz_targets/{needle_addr,batch,photo_id}.rs).

use haystack_proto::batch::{self, Record};
use haystack_proto::id;
use haystack_proto::NeedleAddr;
use proptest::prelude::*;

proptest! {
    #[test]
    fn needle_paths_round_trip(volume: u32, key: u64, alt: u32, cookie: u64) {
        let a = NeedleAddr::new(volume, key, alt, cookie);
        prop_assert_eq!(NeedleAddr::parse_path(&a.path()), Ok(a));
    }

    #[test]
    fn any_path_that_parses_formats_to_a_path_that_parses_alike(s in "/v1/needles/[0-9a-f/]{0,40}") {
        if let Ok(a) = NeedleAddr::parse_path(&s) {
            prop_assert_eq!(NeedleAddr::parse_path(&a.path()), Ok(a));
        }
    }

    #[test]
    fn batches_round_trip(
        records in proptest::collection::vec(
            (any::<u64>(), any::<u32>(), any::<u64>(), "[a-z/+.-]{0,40}", proptest::collection::vec(any::<u8>(), 0..300)),
            1..6,
        )
    ) {
        let recs: Vec<Record<'_>> = records
            .iter()
            .map(|(key, alt, cookie, ct, data)| Record {
                key: *key,
                alt: *alt,
                cookie: *cookie,
                content_type: ct,
                data,
            })
            .collect();
        let body = batch::encode(recs.iter().copied());
        let len: usize = recs.iter().map(|r| batch::record_len(r.content_type, r.data.len())).sum();
        prop_assert_eq!(body.len(), len);
        prop_assert_eq!(batch::parse(&body, 300), Ok(recs));
    }

    #[test]
    fn any_batch_that_parses_encodes_to_itself(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(recs) = batch::parse(&body, u64::MAX) {
            prop_assert_eq!(batch::encode(recs), body);
        }
    }

    #[test]
    fn ids_round_trip(raw: u64) {
        prop_assert_eq!(id::encode(id::decode(raw)), raw);
    }

    #[test]
    fn id_parts_round_trip(ms in 0u64..(1 << 41), node in 0..=id::MAX_NODE_ID, seq in 0..=id::MAX_SEQ) {
        let p = id::IdParts { unix_ms: id::ID_EPOCH_MS + ms, node, seq };
        prop_assert_eq!(id::decode(id::encode(p)), p);
    }
}
