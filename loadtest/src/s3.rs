//! The S3 target's requests: objects PUT, GET and DELETEd by path (`{url}/{bucket}/{key}`)
//! on any S3-compatible endpoint (the `haystack s3` role, Garage, ...), each signed with AWS
//! Signature V4 in the `Authorization` header by the s3 crate's own signer
//! (`haystack_s3::sigv4`): the workspace keeps one SigV4 implementation. Pure: nothing here
//! does I/O; [`crate::target`] sends what this builds.

use std::fmt;

use haystack_s3::sigv4;

use crate::error::{LoadError, Result};

/// What `x-amz-content-sha256` a PUT carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadSigning {
    /// The hex SHA-256 of the body (what awscli sends over plain HTTP): the client hashes it
    /// and the server checks it.
    Signed,
    /// `UNSIGNED-PAYLOAD`: neither side hashes the body.
    Unsigned,
}

impl std::str::FromStr for PayloadSigning {
    type Err = LoadError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "signed" => Ok(PayloadSigning::Signed),
            "unsigned" => Ok(PayloadSigning::Unsigned),
            other => Err(LoadError::Config(format!(
                "--s3-payload {other:?}: expected signed or unsigned"
            ))),
        }
    }
}

/// An S3 endpoint, a bucket on it, the key to sign with and where this run's objects go.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Endpoint {
    /// Base URL (`http://127.0.0.1:8083`), no trailing `/`.
    pub url: String,
    /// An existing bucket the key may read and write.
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// The region in signatures (the endpoint refuses any other).
    pub region: String,
    /// Objects are `{prefix}/{n}`, `n` the upload's number in the run.
    pub prefix: String,
    pub payload: PayloadSigning,
}

impl fmt::Debug for S3Endpoint {
    /// Everything but the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Endpoint")
            .field("url", &self.url)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

fn plain(s: &str, extra: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

impl S3Endpoint {
    /// Refuses names that would need escaping (keys and buckets here are plain on purpose, so
    /// that every endpoint canonicalizes their paths alike) and missing credentials.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LoadError::Config(m));
        if self.bucket.is_empty() || !plain(&self.bucket, "-.") {
            return bad(format!(
                "S3 bucket {:?}: letters, digits, '-' and '.' only",
                self.bucket
            ));
        }
        if !plain(&self.prefix, "-._/")
            || self.prefix.starts_with('/')
            || self.prefix.ends_with('/')
            || self.prefix.contains("//")
        {
            return bad(format!(
                "S3 prefix {:?}: letters, digits, '-', '.', '_' and inner '/' only",
                self.prefix
            ));
        }
        if self.access_key.is_empty() || self.secret_key.is_empty() {
            return bad("the S3 target needs an access key and its secret".into());
        }
        if self.region.is_empty() || !plain(&self.region, "-_") {
            return bad(format!("S3 region {:?}", self.region));
        }
        Ok(())
    }

    /// The URL of the run's `n`-th object.
    pub fn object_url(&self, n: u64) -> String {
        if self.prefix.is_empty() {
            format!("{}/{}/{n}", self.url, self.bucket)
        } else {
            format!("{}/{}/{}/{n}", self.url, self.bucket, self.prefix)
        }
    }

    /// `x-amz-content-sha256` of a PUT of `body`.
    pub fn put_payload_hash(&self, body: &[u8]) -> String {
        match self.payload {
            PayloadSigning::Signed => sigv4::sha256_hex(body),
            PayloadSigning::Unsigned => sigv4::UNSIGNED_PAYLOAD.to_string(),
        }
    }

    /// The headers that sign `method` on `url` (`x-amz-content-sha256`, `x-amz-date`,
    /// `authorization`) at `now` (seconds since the epoch). `Host` is signed as the HTTP
    /// client sends it: the URL's host, with the port unless it is the scheme's default.
    pub fn sign(
        &self,
        method: &str,
        url: &reqwest::Url,
        payload_hash: &str,
        now: u64,
    ) -> [(&'static str, String); 3] {
        let amz_date = sigv4::format_amz_date(now);
        let day = &amz_date[..8];
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_string(),
        };
        // Sorted by name, as canonical requests list them.
        let headers = [
            ("host".to_string(), host),
            ("x-amz-content-sha256".to_string(), payload_hash.to_string()),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let query = sigv4::canonical_query(&sigv4::query_pairs(url.query().unwrap_or("")), None);
        let canonical = sigv4::canonical_request(
            method,
            &sigv4::canonical_uri(url.path()),
            &query,
            &headers,
            signed_headers,
            payload_hash,
        );
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let sts = sigv4::string_to_sign(&amz_date, &scope, &canonical);
        let key = sigv4::signing_key(&self.secret_key, day, &self.region, "s3");
        let signature = sigv4::signature(&key, &sts);
        [
            ("x-amz-content-sha256", payload_hash.to_string()),
            ("x-amz-date", amz_date),
            (
                "authorization",
                format!(
                    "{} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                    sigv4::ALGORITHM,
                    self.access_key
                ),
            ),
        ]
    }
}

/// Seconds since the epoch (a clock before 1970 signs as 1970: the server then refuses it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
