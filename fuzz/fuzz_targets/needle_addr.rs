//! Fuzzes the needle address of store and cache URLs (network input): any path parses to an
//! address or to an error, never a panic, and an address that parses formats to a path that
//! parses to it again.
#![no_main]

use haystack_proto::NeedleAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for p in [path.to_string(), format!("/v1/needles/{path}")] {
        if let Ok(a) = NeedleAddr::parse_path(&p) {
            assert_eq!(NeedleAddr::parse_path(&a.path()), Ok(a));
        }
    }
});
