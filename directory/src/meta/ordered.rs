//! Ordered keyspaces: string keys in byte order under a u64 space id, next to the u64-keyed
//! tables. The S3 role keeps its buckets, objects, multipart uploads and access keys here
//! (docs/directory.md, "Ordered keyspaces"): listing a bucket by prefix after a marker reads
//! only the records it returns, in key order, on every backend.
//!
//! The scan's bounds are computed here once, so both backends and the conformance suite agree.

/// The longest key accepted (S3's limit on object keys is 1024 bytes; the S3 role's own keys
/// add a few bytes to an object key).
pub const MAX_KEY_BYTES: usize = 1200;

/// Where a scan starts: the first key it may return is `start` (inclusive) or the first key
/// after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanStart {
    pub key: String,
    pub inclusive: bool,
}

/// The start of a scan of keys with `prefix` that sort after `after`.
pub fn scan_start(prefix: &str, after: &str) -> ScanStart {
    if prefix > after {
        ScanStart {
            key: prefix.to_string(),
            inclusive: true,
        }
    } else {
        ScanStart {
            key: after.to_string(),
            inclusive: false,
        }
    }
}

/// Whether a scan that has reached `key` can stop: keys are in order, so the first key without
/// the prefix (and past it) ends the range.
pub fn past_prefix(key: &str, prefix: &str) -> bool {
    !key.starts_with(prefix) && key > prefix
}

/// Checks a key before it is stored.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key of {} bytes (at most {MAX_KEY_BYTES})",
            key.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_the_later_of_prefix_and_marker() {
        assert_eq!(scan_start("b/", "a").key, "b/");
        assert!(scan_start("b/", "a").inclusive);
        assert_eq!(scan_start("b/", "b/x").key, "b/x");
        assert!(!scan_start("b/", "b/x").inclusive);
        assert!(!scan_start("", "").inclusive);
        assert!(past_prefix("c", "b/"));
        assert!(!past_prefix("b/z", "b/"));
        assert!(!past_prefix("a", "b/"));
    }
}
