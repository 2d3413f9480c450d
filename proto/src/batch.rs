//! The body of a store's batch write (`POST /v1/volumes/{v}/batch`): records of
//! `key u64, alt u32, cookie u64, content_type_len u8, content_type, data_len u32, data`,
//! little-endian, back to back. Both sides live here so that every client encodes it one way
//! and the store parses exactly that; the parser reads network input and is fuzzed
//! (fuzz/fuzz_targets/batch.rs).

use std::fmt;

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

/// One record of a batch body, borrowing from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub key: u64,
    pub alt: u32,
    pub cookie: u64,
    pub content_type: &'a str,
    pub data: &'a [u8],
}

/// Encodes records as a batch body (the inverse of [`parse`], for content types of at most
/// 255 bytes).
pub fn encode<'a>(records: impl IntoIterator<Item = Record<'a>>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        push_record(&mut out, r.key, r.alt, r.cookie, r.content_type, r.data);
    }
    out
}

/// Why a batch body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// The body ends inside a record.
    Truncated,
    ContentTypeNotUtf8,
    /// A record's data is longer than the largest needle allowed.
    TooLarge {
        max: u64,
    },
    /// No record at all.
    Empty,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated => f.write_str("batch body is truncated"),
            BatchError::ContentTypeNotUtf8 => f.write_str("content type is not UTF-8"),
            BatchError::TooLarge { max } => write!(f, "a needle is larger than {max} bytes"),
            BatchError::Empty => f.write_str("empty batch"),
        }
    }
}

impl std::error::Error for BatchError {}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], BatchError> {
    if b.len() < n {
        return Err(BatchError::Truncated);
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn le<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], BatchError> {
    let mut out = [0u8; N];
    out.copy_from_slice(take(b, N)?);
    Ok(out)
}

/// Parses a whole batch body; records whose data is longer than `max_needle` are refused.
pub fn parse(mut b: &[u8], max_needle: u64) -> Result<Vec<Record<'_>>, BatchError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < RECORD_OVERHEAD - 4 {
            return Err(BatchError::Truncated);
        }
        let key = u64::from_le_bytes(le(&mut b)?);
        let alt = u32::from_le_bytes(le(&mut b)?);
        let cookie = u64::from_le_bytes(le(&mut b)?);
        let ct_len = le::<1>(&mut b)?[0] as usize;
        if b.len() < ct_len + 4 {
            return Err(BatchError::Truncated);
        }
        let content_type = std::str::from_utf8(take(&mut b, ct_len)?)
            .map_err(|_| BatchError::ContentTypeNotUtf8)?;
        let len = u64::from(u32::from_le_bytes(le(&mut b)?));
        if len > max_needle {
            return Err(BatchError::TooLarge { max: max_needle });
        }
        let data = take(&mut b, len as usize)?;
        out.push(Record {
            key,
            alt,
            cookie,
            content_type,
            data,
        });
    }
    if out.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncations_and_limits_are_refused() {
        let r = Record {
            key: 1,
            alt: 2,
            cookie: 3,
            content_type: "image/jpeg",
            data: b"0123456789",
        };
        let body = encode([r, r]);
        assert_eq!(parse(&body, 10).unwrap(), vec![r, r]);
        assert_eq!(parse(&body, 9), Err(BatchError::TooLarge { max: 9 }));
        assert_eq!(parse(&[], 10), Err(BatchError::Empty));
        for cut in 1..body.len() {
            if cut == body.len() / 2 {
                continue; // one whole record
            }
            assert_eq!(
                parse(&body[..cut], 10),
                Err(BatchError::Truncated),
                "cut {cut}"
            );
        }
        let mut bad = encode([r]);
        bad[21] = 0xff;
        assert_eq!(parse(&bad, 10), Err(BatchError::ContentTypeNotUtf8));
    }
}
