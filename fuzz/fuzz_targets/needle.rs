//! Fuzzes needle parsing: any bytes either fail a check or yield ranges inside the buffer,
//! and a needle that parses re-encodes to the same bytes.
#![no_main]
use haystack_store::format::{encode_needle, parse_needle, NeedleIn, FLAG_DELETED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse_needle(data) {
        assert!(p.data.end <= data.len() && p.content_type.end <= data.len());
        let ct = std::str::from_utf8(&data[p.content_type.clone()]).expect("checked UTF-8");
        let mut again = Vec::new();
        encode_needle(
            &mut again,
            &NeedleIn {
                key: p.header.key,
                alt: p.header.alt,
                cookie: p.header.cookie,
                content_type: ct,
                data: &data[p.data.clone()],
                tag: p.header.tag,
            },
        );
        let n = p.data.end + 8;
        let mut orig = data[..n].to_vec();
        orig[4] &= !FLAG_DELETED;
        assert_eq!(&again[..n], &orig[..]);
    }
});
