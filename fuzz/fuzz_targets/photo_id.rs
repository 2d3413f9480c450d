//! Fuzzes the photo id codec: every u64 decodes to parts that encode back to it, and parts
//! within their ranges survive encode then decode.
#![no_main]

use haystack_proto::id::{decode, encode, IdParts, ID_EPOCH_MS, MAX_NODE_ID, MAX_SEQ};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: [u8; 12]| {
    let raw = u64::from_le_bytes(data[..8].try_into().unwrap());
    assert_eq!(encode(decode(raw)), raw);
    let p = IdParts {
        unix_ms: ID_EPOCH_MS + (raw >> 23),
        node: u16::from_le_bytes([data[8], data[9]]) & MAX_NODE_ID,
        seq: u16::from_le_bytes([data[10], data[11]]) & MAX_SEQ,
    };
    assert_eq!(decode(encode(p)), p);
});
