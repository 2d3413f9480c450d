//! Fuzzes the index checkpoint codec: any bytes parse to records or to nothing, never a
//! panic, and every record that parses encodes back to the same bytes.
#![no_main]

use haystack_store::checkpoint::{header_ok, parse_record, record, RECORD_LEN};
use haystack_store::index::Loc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = header_ok(data, 1);
    for chunk in data.chunks(RECORD_LEN) {
        if let Some(r) = parse_record(chunk) {
            let loc = Loc {
                offset: r.offset,
                extent: r.extent,
                deleted: false,
            };
            assert_eq!(&record(r.kind, r.key, r.alt, loc)[..], chunk);
        }
    }
});
