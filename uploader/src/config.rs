//! The uploader's configuration: a serde struct with a documented default for every field,
//! validated once at start-up by [`UploaderConfig::validate`].

use haystack_client::store::WriteAck;
use serde::{Deserialize, Serialize};

use crate::error::UploaderError;

/// One resized variant of a photo: its name (the key in the response's `urls`), the needle's
/// alternate key, and the longest side in pixels it is scaled down to (never up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Name, e.g. `thumb`. Not `original` (the bytes as uploaded, alternate key 0).
    pub name: String,
    /// Alternate key of the variant's needle: 1 to 2^32-1, distinct per variant. Keep it
    /// stable once photos exist: it is part of every stored needle's address.
    pub alt: u32,
    /// Longest side in pixels; an image already that small keeps its size.
    pub longest_side: u32,
}

/// Configuration of one uploader. Every field has a default; a JSON or TOML file may set any
/// subset (`#[serde(default)]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploaderConfig {
    /// Base URL of the directory (one). Give it, or `directory_urls`, not both; with neither
    /// the directory is `http://127.0.0.1:8082`. Default none.
    pub directory_url: Option<String>,
    /// Base URLs of several equivalent directories (instances over one ScyllaDB keyspace),
    /// tried in this order: requests go to the first that answers and stay with it until it
    /// fails (docs/ARCHITECTURE.md, client/). Default none.
    pub directory_urls: Option<Vec<String>>,
    /// When set, POST and DELETE need `Authorization: Bearer <api_key>`. Default none (the
    /// `haystack` command reads `--api-key` or the `HAYSTACK_API_KEY` environment variable).
    pub api_key: Option<String>,
    /// More API keys, each with a name and limits of its own (`[[uploader.api_keys]]`); any of
    /// them (or `api_key`) opens POST and DELETE. Default none.
    pub api_keys: Vec<ApiKey>,
    /// Serve on a non-loopback address without an API key. Default false: [`crate::run`]
    /// refuses to start instead.
    pub allow_public_without_key: bool,
    /// Largest photo body accepted, bytes. Default 50 MiB.
    pub max_photo_bytes: u64,
    /// An upload whose body sends nothing for this long is cut off with 408 `body_timeout`
    /// (a client that stalls or trickles holds a slot this long at most), ms. Default 30000.
    pub body_idle_timeout_ms: u64,
    /// Largest photo accepted, in pixels (width × height), checked from the header before any
    /// decode. Default 100 000 000 (100 megapixels).
    pub max_pixels: u64,
    /// Largest width or height accepted, pixels. Default 30 000.
    pub max_dimension: u32,
    /// Resized variants made of every photo. Default `large` 2048 (alt 1), `medium` 1024
    /// (alt 2), `thumb` 320 (alt 3).
    pub variants: Vec<VariantSpec>,
    /// JPEG quality of the variants, 1 to 100. Default 85.
    pub jpeg_quality: u8,
    /// Photos decoded and resized at once (each on a blocking thread; together within
    /// `image_memory_bytes`). Default: the number of CPUs.
    pub image_workers: usize,
    /// Memory all photos being decoded and resized at once may take, bytes: each reserves its
    /// estimated peak (`images::decode_memory`: 16 bytes a pixel, plus its body, plus 64
    /// MiB) before it starts, and waits while the others hold too much. Must hold the largest
    /// photo `max_pixels` and `max_photo_bytes` allow (`validate` checks). Default 2 GiB.
    pub image_memory_bytes: u64,
    /// Size of a video chunk (one needle), bytes. Default 4 MiB. Must stay below the stores'
    /// `max_needle_bytes`, and be large enough that a video of `max_video_bytes` has few
    /// enough chunks for their list to fit one commit to the directory (1 MiB of JSON, about
    /// 19 000 chunks; checked by `validate`).
    pub video_chunk_bytes: u64,
    /// Video chunks being written to the replicas at once, per upload, while the next chunk is
    /// read; memory per video upload is about `(video_chunks_in_flight + 1) ×
    /// video_chunk_bytes`. Default 2.
    pub video_chunks_in_flight: usize,
    /// Largest video accepted, bytes. Default 4 GiB.
    pub max_video_bytes: u64,
    /// Attempts of a photo upload, each on a fresh assignment (another logical volume), before
    /// answering 503. Default 3.
    pub write_attempts: u32,
    /// Timeout of one request to a store (a batch, a chunk), ms. Default 30000.
    pub store_timeout_ms: u64,
    /// Timeout of one request to the directory, ms. Default 10000.
    pub directory_timeout_ms: u64,
    /// How many replicas must acknowledge a photo's needles before it is committed: `all`
    /// (default), `quorum` or `one`. A request's `Haystack-Write-Ack` header may ask for more,
    /// never less (the stricter of the two wins). Replicas left behind are copied by the
    /// directory's repair worker. Videos are written to every replica whatever this says.
    pub write_ack: WriteAck,
    /// actix-web worker threads. Default 2.
    pub http_workers: usize,
    /// Seconds in-flight requests get to finish on shutdown. Default 60.
    pub shutdown_timeout_secs: u64,
    /// Uploads (POST of a photo or a video) one client address may start per minute,
    /// sustained (a token bucket, governor); over it the answer is 429 with Retry-After.
    /// 0 turns it off. Default 600.
    pub uploads_per_minute_per_client: u32,
    /// Uploads one client may start at once above the per-minute rate (the bucket's size).
    /// Default 60.
    pub upload_burst_per_client: u32,
    /// Uploads of one client address in progress at once; more are 429. 0: no bound.
    /// Default 16.
    pub max_concurrent_uploads_per_client: usize,
    /// The cluster's keys (to call the directory and the stores) and the audit log (not in
    /// the config file: `haystack` reads the secret from its own file or the environment).
    #[serde(skip)]
    pub security: haystack_service::auth::Security,
}

impl Default for UploaderConfig {
    fn default() -> Self {
        UploaderConfig {
            directory_url: None,
            directory_urls: None,
            api_key: None,
            api_keys: Vec::new(),
            allow_public_without_key: false,
            max_photo_bytes: 50 << 20,
            body_idle_timeout_ms: 30_000,
            max_pixels: 100_000_000,
            max_dimension: 30_000,
            variants: default_variants(),
            jpeg_quality: 85,
            image_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            image_memory_bytes: 2 << 30,
            video_chunk_bytes: 4 << 20,
            video_chunks_in_flight: 2,
            max_video_bytes: 4 << 30,
            write_attempts: 3,
            store_timeout_ms: 30_000,
            directory_timeout_ms: 10_000,
            write_ack: WriteAck::All,
            http_workers: 2,
            shutdown_timeout_secs: 60,
            uploads_per_minute_per_client: 600,
            upload_burst_per_client: 60,
            max_concurrent_uploads_per_client: 16,
            security: Default::default(),
        }
    }
}

/// An API key of the upload API with limits of its own: one per application or tenant, so
/// that one of them cannot take every upload slot. The config holds the key's SHA-256, not the
/// key (`printf %s KEY | sha256sum`), so a copy of the config file opens nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it, in logs and metrics: 1 to 64 letters, digits or `-_.`.
    pub name: String,
    /// SHA-256 of the key, 64 hex digits.
    pub sha256: String,
    /// Uploads this key may start per minute, sustained (a token bucket); over it 429 with
    /// Retry-After. 0: no per-key rate. Default 0.
    #[serde(default)]
    pub uploads_per_minute: u32,
    /// Uploads above the per-minute rate at once (the bucket's size). Default: the rate.
    #[serde(default)]
    pub upload_burst: u32,
    /// Uploads in progress at once under this key, from every client together; more are 429.
    /// 0: no bound. Default 0.
    #[serde(default)]
    pub max_concurrent_uploads: usize,
}

impl ApiKey {
    /// The SHA-256 digest, when `sha256` is 64 hex digits.
    pub fn digest(&self) -> Option<[u8; 32]> {
        let h = self.sha256.trim();
        if h.len() != 64 {
            return None;
        }
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(d)
    }
}

/// The largest JSON body the directory takes (its `JsonConfig` limit): a video's commit, with
/// its list of chunks, must fit.
const DIRECTORY_BODY_LIMIT: u64 = 1 << 20;

/// A commit's bytes besides the chunk list, generously: ids, cookie, kind, the idempotency
/// key (up to 200 characters, escaped) and the request hash.
const COMMIT_ENVELOPE: u64 = 4 << 10;

/// The most bytes the chunk list of a video of `max_bytes` in chunks of `chunk_bytes` takes in
/// a commit's JSON: per chunk `{"alt":A,"offset":O,"size_bytes":S},` with each number at its
/// widest.
fn video_chunk_list_bytes(max_bytes: u64, chunk_bytes: u64) -> u64 {
    let digits = |n: u64| n.checked_ilog10().unwrap_or(0) as u64 + 1;
    let chunks = max_bytes.div_ceil(chunk_bytes);
    let per_chunk = r#"{"alt":,"offset":,"size_bytes":},"#.len() as u64
        + digits(chunks)
        + digits(max_bytes)
        + digits(chunk_bytes);
    chunks.saturating_mul(per_chunk)
}

/// `large` 2048, `medium` 1024, `thumb` 320 on alternate keys 1, 2, 3.
pub fn default_variants() -> Vec<VariantSpec> {
    [("large", 1, 2048), ("medium", 2, 1024), ("thumb", 3, 320)]
        .into_iter()
        .map(|(name, alt, longest_side)| VariantSpec {
            name: name.into(),
            alt,
            longest_side,
        })
        .collect()
}

impl UploaderConfig {
    /// `body_idle_timeout_ms` as a duration.
    pub fn body_idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_idle_timeout_ms)
    }

    /// The directories, in the order they are tried: `directory_urls`, or `directory_url`,
    /// or `http://127.0.0.1:8082`; each an http(s) URL, none twice.
    pub fn directories(&self) -> Result<Vec<String>, UploaderError> {
        haystack_client::directory::resolve_urls(
            self.directory_url.as_deref(),
            self.directory_urls.as_deref(),
        )
        .map_err(UploaderError::Config)
    }

    /// Checks the configuration once, at start-up.
    pub fn validate(&self) -> Result<(), UploaderError> {
        let bad = |m: String| Err(UploaderError::Config(m));
        self.directories()?;
        if let Some(k) = &self.api_key {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return bad("api_key must be non-empty visible ASCII".into());
            }
        }
        let mut key_names = std::collections::HashSet::new();
        let mut digests = std::collections::HashSet::new();
        for k in &self.api_keys {
            let name_ok = !k.name.is_empty()
                && k.name.len() <= 64
                && k.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !name_ok {
                return bad(format!(
                    "api_keys: name {:?} must be 1 to 64 letters, digits or -_.",
                    k.name
                ));
            }
            let Some(d) = k.digest() else {
                return bad(format!(
                    "api_keys: key {:?}: sha256 must be 64 hex digits (printf %s KEY | sha256sum)",
                    k.name
                ));
            };
            if !key_names.insert(k.name.as_str()) || !digests.insert(d) {
                return bad(format!(
                    "api_keys: key {:?} is listed twice (by name or by key)",
                    k.name
                ));
            }
        }
        if self.max_photo_bytes == 0 || self.max_photo_bytes > u32::MAX as u64 {
            return bad("max_photo_bytes must be between 1 and 4 GiB".into());
        }
        if self.max_pixels == 0 || self.max_dimension == 0 {
            return bad("max_pixels and max_dimension must be positive".into());
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return bad("jpeg_quality must be 1 to 100".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut alts = std::collections::HashSet::new();
        for v in &self.variants {
            if v.name.is_empty() || v.name == "original" || v.name.len() > 64 {
                return bad(format!(
                    "variant name {:?} must be 1 to 64 bytes and not \"original\"",
                    v.name
                ));
            }
            if v.alt == 0 {
                return bad(format!(
                    "variant {:?}: alternate key 0 is the original",
                    v.name
                ));
            }
            if !names.insert(v.name.as_str()) || !alts.insert(v.alt) {
                return bad(format!(
                    "variant {:?}: name or alternate key used twice",
                    v.name
                ));
            }
            if v.longest_side == 0 {
                return bad(format!(
                    "variant {:?}: longest_side must be positive",
                    v.name
                ));
            }
        }
        if self.image_workers == 0 || self.http_workers == 0 {
            return bad("image_workers and http_workers must be positive".into());
        }
        let largest = crate::images::decode_memory(self.max_pixels, self.max_photo_bytes);
        if self.image_memory_bytes < largest || self.image_memory_bytes > (1 << 50) {
            return bad(format!(
                "image_memory_bytes must hold the largest photo taken ({largest} bytes for \
                 max_pixels {} and max_photo_bytes {}) and be at most 1 PiB",
                self.max_pixels, self.max_photo_bytes
            ));
        }
        if self.video_chunk_bytes < 4096 || self.video_chunk_bytes > (1 << 30) {
            return bad("video_chunk_bytes must be between 4 KiB and 1 GiB".into());
        }
        if self.video_chunks_in_flight == 0 {
            return bad("video_chunks_in_flight must be positive".into());
        }
        if self.max_video_bytes == 0 {
            return bad("max_video_bytes must be positive".into());
        }
        if self.max_video_bytes / self.video_chunk_bytes >= u32::MAX as u64 {
            return bad("max_video_bytes / video_chunk_bytes must fit in an alternate key".into());
        }
        let list = video_chunk_list_bytes(self.max_video_bytes, self.video_chunk_bytes);
        if list > DIRECTORY_BODY_LIMIT - COMMIT_ENVELOPE {
            return bad(format!(
                "a video of max_video_bytes ({}) in chunks of video_chunk_bytes ({}) is {} chunks, \
                 whose list in the commit (up to {list} bytes) passes what the directory takes \
                 in one request ({} bytes): raise video_chunk_bytes or lower max_video_bytes",
                self.max_video_bytes,
                self.video_chunk_bytes,
                self.max_video_bytes.div_ceil(self.video_chunk_bytes),
                DIRECTORY_BODY_LIMIT - COMMIT_ENVELOPE,
            ));
        }
        if self.write_attempts == 0 {
            return bad("write_attempts must be positive".into());
        }
        if self.store_timeout_ms == 0 || self.directory_timeout_ms == 0 {
            return bad("timeouts must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_round_trips() {
        let c = UploaderConfig::default();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: UploaderConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let partial: UploaderConfig = serde_json::from_str(r#"{"jpeg_quality": 90}"#).unwrap();
        assert_eq!(partial.jpeg_quality, 90);
        assert_eq!(partial.variants, default_variants());
    }

    #[test]
    fn one_directory_or_a_list() {
        let c: UploaderConfig = serde_json::from_str(r#"{"directory_url": "http://d:1"}"#).unwrap();
        assert_eq!(c.directories().unwrap(), vec!["http://d:1".to_string()]);
        let c: UploaderConfig =
            serde_json::from_str(r#"{"directory_urls": ["http://d:1", "http://e:2/"]}"#).unwrap();
        assert_eq!(c.directories().unwrap(), vec!["http://d:1", "http://e:2"]);
        c.validate().unwrap();
        assert_eq!(
            UploaderConfig::default().directories().unwrap(),
            vec!["http://127.0.0.1:8082"]
        );
        for bad in [
            r#"{"directory_url": "http://d:1", "directory_urls": ["http://e:2"]}"#,
            r#"{"directory_urls": []}"#,
            r#"{"directory_urls": ["http://d:1", "http://d:1"]}"#,
            r#"{"directory_urls": ["http://d:1", "d:2"]}"#,
            r#"{"directory_url": "ftp://d"}"#,
        ] {
            let c: UploaderConfig = serde_json::from_str(bad).unwrap();
            let e = c.validate().expect_err(bad).to_string();
            assert!(e.contains("directory"), "{bad}: {e}");
        }
    }

    /// A video's commit names every chunk, and the directory takes at most 1 MiB of JSON: a
    /// config whose largest video needs more chunks than fit is refused at start-up. Before,
    /// 4 KiB chunks of a 4 GiB video (a million chunks, some 60 MB of list) were taken, and
    /// such a video's commit would fail after every chunk was written.
    #[test]
    fn refuses_more_video_chunks_than_a_commit_holds() {
        let c = UploaderConfig {
            video_chunk_bytes: 4096,
            ..Default::default()
        };
        let e = c.validate().expect_err("a million chunks").to_string();
        assert!(e.contains("video_chunk_bytes"), "{e}");
        // The default and the list's own arithmetic: 1024 chunks of 54 bytes at most.
        assert_eq!(video_chunk_list_bytes(4 << 30, 4 << 20), 1024 * 54);
        let fits = UploaderConfig {
            video_chunk_bytes: 256 << 10,
            ..Default::default()
        };
        fits.validate().unwrap();
        let small = UploaderConfig {
            video_chunk_bytes: 4096,
            max_video_bytes: 32 << 20,
            ..Default::default()
        };
        small.validate().unwrap();
    }

    #[test]
    fn refuses_bad_variants() {
        let mut c = UploaderConfig::default();
        c.variants[1].alt = 1;
        assert!(c.validate().is_err());
        let mut c = UploaderConfig::default();
        c.variants[0].name = "original".into();
        assert!(c.validate().is_err());
        let mut c = UploaderConfig::default();
        c.variants[0].alt = 0;
        assert!(c.validate().is_err());
    }
}
