//! AWS Signature Version 4, pure: the canonical request, the string to sign, the signing key,
//! the parsing of the `Authorization` header and of presigned query parameters, and the
//! chaining signatures of `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` chunks and trailers. `http`
//! gathers the request's parts and decides; nothing here does I/O.

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::error::S3Error;

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
pub const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
pub const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// Hex SHA-256 of nothing.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What SigV4 leaves unescaped: letters, digits, `-`, `.`, `_`, `~`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// URI-encodes per SigV4 (`/` too).
pub fn uri_encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The canonical URI of an S3 request path as sent: each segment decoded, then encoded once.
pub fn canonical_uri(raw_path: &str) -> String {
    raw_path
        .split('/')
        .map(|seg| uri_encode(&percent_decode_str(seg).decode_utf8_lossy()))
        .collect::<Vec<_>>()
        .join("/")
}

/// Decoded query parameters in the order sent (`+` is a space only in forms: kept as is).
pub fn query_pairs(raw_query: &str) -> Vec<(String, String)> {
    raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode_str(k).decode_utf8_lossy().into_owned(),
                percent_decode_str(v).decode_utf8_lossy().into_owned(),
            )
        })
        .collect()
}

/// The canonical query string: every pair but `skip`, encoded, sorted.
pub fn canonical_query(pairs: &[(String, String)], skip: Option<&str>) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != skip)
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as canonical requests have it: trimmed, inner runs of spaces made one.
pub fn canonical_header_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical request.
pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    headers: &[(String, String)],
    signed_headers: &str,
    payload_hash: &str,
) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(method);
    s.push('\n');
    s.push_str(canonical_uri);
    s.push('\n');
    s.push_str(canonical_query);
    s.push('\n');
    for (k, v) in headers {
        s.push_str(k);
        s.push(':');
        s.push_str(v);
        s.push('\n');
    }
    s.push('\n');
    s.push_str(signed_headers);
    s.push('\n');
    s.push_str(payload_hash);
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The signing key of a secret for a date (`YYYYMMDD`), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// The string to sign of a request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Hex HMAC of a string to sign.
pub fn signature(key: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac(key, string_to_sign.as_bytes()))
}

/// The signature of one chunk of a signed streaming body.
pub fn chunk_signature(
    key: &[u8],
    amz_date: &str,
    scope: &str,
    previous: &str,
    chunk: &[u8],
) -> String {
    let sts = format!(
        "AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{EMPTY_SHA256}\n{}",
        sha256_hex(chunk)
    );
    signature(key, &sts)
}

/// The signature of the trailing headers of a signed streaming body.
pub fn trailer_signature(
    key: &[u8],
    amz_date: &str,
    scope: &str,
    previous: &str,
    canonical_trailers: &str,
) -> String {
    let sts = format!(
        "AWS4-HMAC-SHA256-TRAILER\n{amz_date}\n{scope}\n{previous}\n{}",
        sha256_hex(canonical_trailers.as_bytes())
    );
    signature(key, &sts)
}

/// Sub-resources that take part in a Signature V2 resource.
const V2_SUBRESOURCES: &[&str] = &[
    "acl",
    "delete",
    "location",
    "partNumber",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
];

/// What a Signature V2 presigned URL signs.
pub struct V2Request<'a> {
    pub method: &'a str,
    pub content_md5: &'a str,
    pub content_type: &'a str,
    pub expires: &'a str,
    /// `x-amz-*` headers, names lower-case, values trimmed.
    pub amz_headers: &'a [(String, String)],
    pub raw_path: &'a str,
    pub query: &'a [(String, String)],
}

/// The base64 HMAC-SHA1 Signature V2 of a presigned URL (boto3's default `generate_presigned_url`):
/// `METHOD\nContent-MD5\nContent-Type\nExpires\n{x-amz-* headers}{/path}{?sub-resources}`.
pub fn v2_presign_signature(secret: &str, r: &V2Request<'_>) -> String {
    let V2Request {
        method,
        content_md5,
        content_type,
        expires,
        amz_headers,
        raw_path,
        query,
    } = *r;
    use base64::Engine;
    let mut sts = format!("{method}\n{content_md5}\n{content_type}\n{expires}\n");
    let mut amz: Vec<&(String, String)> = amz_headers.iter().collect();
    amz.sort();
    for (k, v) in amz {
        sts.push_str(&format!("{k}:{v}\n"));
    }
    sts.push_str(raw_path);
    let mut subs: Vec<&(String, String)> = query
        .iter()
        .filter(|(k, _)| V2_SUBRESOURCES.contains(&k.as_str()))
        .collect();
    subs.sort();
    for (i, (k, v)) in subs.iter().enumerate() {
        sts.push(if i == 0 { '?' } else { '&' });
        sts.push_str(k);
        if !v.is_empty() {
            sts.push('=');
            sts.push_str(v);
        }
    }
    let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(sts.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

/// Constant-time comparison of two signatures.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The credential of a request: `AKID/DATE/REGION/SERVICE/aws4_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

impl Credential {
    pub fn parse(s: &str) -> Result<Self, S3Error> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() != 5 || parts[4] != "aws4_request" || parts[1].len() != 8 {
            return Err(S3Error::AuthorizationHeaderMalformed(format!(
                "the credential {s:?} is not KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
            )));
        }
        Ok(Self {
            access_key: parts[0].to_string(),
            date: parts[1].to_string(),
            region: parts[2].to_string(),
            service: parts[3].to_string(),
        })
    }

    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthHeader {
    pub credential: Credential,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl AuthHeader {
    pub fn parse(v: &str) -> Result<Self, S3Error> {
        let rest = v.strip_prefix(ALGORITHM).ok_or_else(|| {
            S3Error::AuthorizationHeaderMalformed(
                "only AWS4-HMAC-SHA256 authorization is supported".into(),
            )
        })?;
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(c) = part.strip_prefix("Credential=") {
                cred = Some(Credential::parse(c)?);
            } else if let Some(h) = part.strip_prefix("SignedHeaders=") {
                signed = Some(h.split(';').map(str::to_string).collect());
            } else if let Some(s) = part.strip_prefix("Signature=") {
                sig = Some(s.to_string());
            }
        }
        match (cred, signed, sig) {
            (Some(credential), Some(signed_headers), Some(signature)) => Ok(Self {
                credential,
                signed_headers,
                signature,
            }),
            _ => Err(S3Error::AuthorizationHeaderMalformed(
                "the authorization header needs Credential, SignedHeaders and Signature".into(),
            )),
        }
    }
}

/// Seconds since the epoch of an ISO 8601 basic date-time (`20240102T030405Z`).
pub fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as i64, d as i64);
    if days < 0 {
        return None;
    }
    Some(days as u64 * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `20240102T030405Z` of seconds since the epoch.
pub fn format_amz_date(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// ISO 8601 with milliseconds (`2024-01-02T03:04:05.000Z`), as S3 lists times.
pub fn format_iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        t / 60 % 60,
        t % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's SigV4 documentation for S3 (GET with a Range header).
    #[test]
    fn aws_documentation_example() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let headers = vec![
            (
                "host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let cr = canonical_request(
            "GET",
            &canonical_uri("/test.txt"),
            "",
            &headers,
            "host;range;x-amz-content-sha256;x-amz-date",
            EMPTY_SHA256,
        );
        let sts = string_to_sign(
            "20130524T000000Z",
            "20130524/us-east-1/s3/aws4_request",
            &cr,
        );
        let key = signing_key(secret, "20130524", "us-east-1", "s3");
        assert_eq!(
            signature(&key, &sts),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn dates_round_trip() {
        let s = parse_amz_date("20130524T000000Z").expect("date");
        assert_eq!(format_amz_date(s), "20130524T000000Z");
        assert_eq!(format_iso8601(s * 1000 + 5), "2013-05-24T00:00:00.005Z");
        assert!(parse_amz_date("2013-05-24").is_none());
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_uri("/b/a%20b/c~d"), "/b/a%20b/c~d");
        assert_eq!(canonical_uri("/b/a+b"), "/b/a%2Bb");
        let q = query_pairs("prefix=a%2Fb&list-type=2&acl");
        assert_eq!(canonical_query(&q, None), "acl=&list-type=2&prefix=a%2Fb");
        assert_eq!(canonical_header_value("  a   b "), "a b");
    }
}
