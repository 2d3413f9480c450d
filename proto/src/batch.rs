//! The body of a store's batch write (`POST /v1/volumes/{v}/batch`): records of
//! `key u64, alt u32, cookie u64, content_type_len u8, content_type, data_len u32, data`,
//! little-endian, back to back. The writer side lives here so that every client encodes it
//! one way; the store parses it (`haystack_store::http::parse_batch`).

/// Bytes one record takes besides its content type and data.
pub const RECORD_OVERHEAD: usize = 8 + 4 + 8 + 1 + 4;

/// Appends one record to `out`. A content type longer than 255 bytes is cut (the store keeps
/// at most 255).
pub fn push_record(
    out: &mut Vec<u8>,
    key: u64,
    alt: u32,
    cookie: u64,
    content_type: &str,
    data: &[u8],
) {
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&alt.to_le_bytes());
    out.extend_from_slice(&cookie.to_le_bytes());
    let ct = &content_type.as_bytes()[..content_type.len().min(255)];
    out.push(ct.len() as u8);
    out.extend_from_slice(ct);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

/// The size of a record, for sizing the buffer up front.
pub fn record_len(content_type: &str, data_len: usize) -> usize {
    RECORD_OVERHEAD + content_type.len().min(255) + data_len
}
