//! Fuzzes the store's batch body parser (network input): any bytes parse to records or to an
//! error, never a panic, and records that parse encode back to the same bytes.
#![no_main]

use haystack_proto::batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = batch::parse(data, u64::MAX) {
        assert!(!records.is_empty());
        assert_eq!(batch::encode(records), data);
    }
    // A limit refuses, it never changes what is parsed.
    if let Ok(records) = batch::parse(data, 1024) {
        assert!(records.iter().all(|r| r.data.len() <= 1024));
    }
});
