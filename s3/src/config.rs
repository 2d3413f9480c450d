//! The S3 role's configuration (`[s3]` of the one TOML file): a serde struct with a documented
//! default for every field, validated once at start-up by [`S3Config::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::S3Error;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Base URL of the directory (one). Give it, or `directory_urls`, not both; with neither
    /// the directory is `http://127.0.0.1:8082`. Default none.
    pub directory_url: Option<String>,
    /// Base URLs of several equivalent directories (instances over one ScyllaDB keyspace),
    /// tried in this order: requests go to the first that answers and stay with it until it
    /// fails (docs/ARCHITECTURE.md, client/). Default none.
    pub directory_urls: Option<Vec<String>>,
    /// The file holding the 32-byte key that seals access keys' secrets in the metadata store
    /// (created, mode 0600, when missing). Every S3 process and `haystack s3 key` must read
    /// the same file. Default `./data/s3/master.key`.
    pub master_key_file: PathBuf,
    /// The region in signatures (clients sign with it; any other is refused). Default
    /// `us-east-1`.
    pub region: String,
    /// Host names under which buckets are addressed virtual-host style
    /// (`BUCKET.s3.localhost`); any other host is path style. Default `["s3.localhost"]`.
    pub virtual_host_domains: Vec<String>,
    /// Size of a data chunk (one needle), bytes. Default 4 MiB. Must stay below the stores'
    /// `max_needle_bytes`.
    pub chunk_bytes: u64,
    /// Largest single PUT (or part), bytes. Default 5 GiB (S3's limit).
    pub max_object_bytes: u64,
    /// Most bytes of request headers (all of them, names and values). Default 16 KiB.
    pub max_header_bytes: usize,
    /// Largest time difference accepted between a signed request's date and the clock,
    /// seconds. Default 900 (S3's 15 minutes).
    pub max_clock_skew_secs: u64,
    /// HTTP worker threads. Default 2.
    pub http_workers: usize,
    /// Seconds in-flight requests get to finish on shutdown. Default 30.
    pub shutdown_timeout_secs: u64,
    /// The cluster's keys (not in the config file: `haystack` reads the secret from its own
    /// file or the environment). The role proves itself to the directory and the stores with
    /// them; its own clients prove themselves with SigV4.
    #[serde(skip)]
    pub security: haystack_service::auth::Security,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            directory_url: None,
            directory_urls: None,
            master_key_file: PathBuf::from("./data/s3/master.key"),
            region: "us-east-1".to_string(),
            virtual_host_domains: vec!["s3.localhost".to_string()],
            chunk_bytes: 4 << 20,
            max_object_bytes: 5 << 30,
            max_header_bytes: 16 << 10,
            max_clock_skew_secs: 900,
            http_workers: 2,
            shutdown_timeout_secs: 30,
            security: Default::default(),
        }
    }
}

impl S3Config {
    /// The directories, in the order they are tried: `directory_urls`, or `directory_url`,
    /// or `http://127.0.0.1:8082`; each an http(s) URL, none twice.
    pub fn directories(&self) -> Result<Vec<String>, S3Error> {
        haystack_client::directory::resolve_urls(
            self.directory_url.as_deref(),
            self.directory_urls.as_deref(),
        )
        .map_err(S3Error::Config)
    }

    pub fn validate(&self) -> Result<(), S3Error> {
        let bad = |m: &str| Err(S3Error::Config(m.to_string()));
        self.directories()?;
        if self.chunk_bytes < 4096 || self.chunk_bytes > (1 << 30) {
            return bad("chunk_bytes must be between 4 KiB and 1 GiB");
        }
        if self.max_object_bytes / self.chunk_bytes >= u64::from(u32::MAX) {
            return bad("max_object_bytes / chunk_bytes must fit in an alternate key");
        }
        if self.http_workers == 0 {
            return bad("http_workers must be at least 1");
        }
        if self.region.is_empty() {
            return bad("region must not be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_or_a_list() {
        let c: S3Config = serde_json::from_str(r#"{"directory_url": "http://d:1"}"#).unwrap();
        assert_eq!(c.directories().unwrap(), vec!["http://d:1".to_string()]);
        let c: S3Config =
            serde_json::from_str(r#"{"directory_urls": ["http://d:1", "http://e:2"]}"#).unwrap();
        assert_eq!(c.directories().unwrap(), vec!["http://d:1", "http://e:2"]);
        c.validate().unwrap();
        S3Config::default().validate().unwrap();
        for bad in [
            r#"{"directory_url": "http://d:1", "directory_urls": ["http://e:2"]}"#,
            r#"{"directory_urls": []}"#,
            r#"{"directory_urls": ["http://d:1", "http://d:1"]}"#,
            r#"{"directory_url": "d:1"}"#,
        ] {
            let c: S3Config = serde_json::from_str(bad).unwrap();
            let e = c.validate().expect_err(bad).to_string();
            assert!(e.contains("directory"), "{bad}: {e}");
        }
    }
}
