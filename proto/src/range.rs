//! HTTP byte ranges (RFC 9110 §14): parsing a single `Range: bytes=` header against a length.
//!
//! Shared by every service that serves needle bytes (store, cache), so all answer alike.

/// What to do with a request's Range header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeDecision {
    /// No usable single range (absent, malformed, or several ranges): send the whole body, 200.
    Full,
    /// Send bytes `start..=end`, 206.
    Partial { start: u64, end: u64 },
    /// A valid range that does not overlap the body: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides on a `Range` header value for a body of `len` bytes. Only single byte ranges are
/// honoured; RFC 9110 lets a server ignore the rest and send the full body.
pub fn decide(header: Option<&str>, len: u64) -> RangeDecision {
    let Some(h) = header else {
        return RangeDecision::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeDecision::Full;
        };
        if n == 0 || len == 0 {
            return RangeDecision::Unsatisfiable;
        }
        let n = n.min(len);
        return RangeDecision::Partial {
            start: len - n,
            end: len - 1,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeDecision::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return RangeDecision::Full,
        }
    };
    if start >= len {
        return RangeDecision::Unsatisfiable;
    }
    RangeDecision::Partial {
        start,
        end: end.min(len - 1),
    }
}

/// Does an `If-None-Match` header value match this strong ETag (quoted)?
pub fn if_none_match(header: Option<&str>, etag: &str) -> bool {
    let Some(h) = header else {
        return false;
    };
    h.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeDecision::*;
        assert_eq!(decide(None, 10), Full);
        assert_eq!(decide(Some("bytes=0-4"), 10), Partial { start: 0, end: 4 });
        assert_eq!(decide(Some("bytes=5-"), 10), Partial { start: 5, end: 9 });
        assert_eq!(decide(Some("bytes=-3"), 10), Partial { start: 7, end: 9 });
        assert_eq!(decide(Some("bytes=-30"), 10), Partial { start: 0, end: 9 });
        assert_eq!(
            decide(Some("bytes=8-100"), 10),
            Partial { start: 8, end: 9 }
        );
        assert_eq!(decide(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(decide(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(decide(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(decide(Some("bytes=5-2"), 10), Full);
        assert_eq!(decide(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(decide(Some("items=0-1"), 10), Full);
        assert_eq!(decide(Some("bytes=x-1"), 10), Full);
    }

    #[test]
    fn etags() {
        assert!(if_none_match(Some("\"a\""), "\"a\""));
        assert!(if_none_match(Some("\"b\", \"a\""), "\"a\""));
        assert!(if_none_match(Some("W/\"a\""), "\"a\""));
        assert!(if_none_match(Some("*"), "\"a\""));
        assert!(!if_none_match(Some("\"b\""), "\"a\""));
        assert!(!if_none_match(None, "\"a\""));
    }
}
