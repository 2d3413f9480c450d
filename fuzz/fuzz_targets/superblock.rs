//! Fuzzes superblock parsing: never panics, and what parses re-encodes to the same bytes.
#![no_main]
use haystack_store::format::Superblock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::decode(data) {
        assert_eq!(&sb.encode()[..60], &data[..60]);
    }
});
