//! The S3 role's records and where they live in the directory's ordered keyspaces (through
//! `DirectoryClient`'s `/v1/kv` calls; this process never opens the metadata store):
//! buckets (space 1, by name), access keys (space 2, by id), and per bucket three spaces
//! derived from its random id: objects (by key), multipart uploads (by key, NUL, upload id)
//! and their parts (by upload id, `/`, five-digit part number).

use std::collections::BTreeMap;

use haystack_client::DirectoryClient;
use haystack_proto::directory::CommitRequest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::S3Error;

pub const SPACE_BUCKETS: u64 = 1;
pub const SPACE_KEYS: u64 = 2;

/// A bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub name: String,
    /// Random, so a bucket created again under a deleted one's name starts empty.
    pub id: u64,
    pub created_ms: u64,
    /// Anyone may read (GET, HEAD, list) without a signature.
    #[serde(default)]
    pub anonymous_read: bool,
}

impl Bucket {
    pub fn objects(&self) -> u64 {
        self.id
    }
    pub fn uploads(&self) -> u64 {
        mix(self.id, 1)
    }
    pub fn parts(&self) -> u64 {
        mix(self.id, 2)
    }
}

/// A space id derived from a bucket's, kept above the fixed spaces.
fn mix(id: u64, n: u64) -> u64 {
    let mut z = id ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | (1 << 63)
}

/// A new bucket id (top bit set: never a fixed space).
pub fn new_bucket_id() -> u64 {
    rand::random::<u64>() | (1 << 63)
}

/// One needle of an object's data: alternate key, offset in its [`DataRef`], length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub alt: u32,
    pub offset: u64,
    pub size: u64,
}

/// A run of an object's bytes stored as one committed photo id of the directory (kind
/// `object`: its needles are the chunks); `haystack gc` keeps it while a record names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRef {
    pub photo: u64,
    pub volume: u32,
    pub cookie: u64,
    pub size: u64,
    pub chunks: Vec<Chunk>,
}

/// The headers stored with an object and returned with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectHeaders {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub expires: Option<String>,
    /// `x-amz-meta-*`, names lower-case without the prefix.
    pub meta: BTreeMap<String, String>,
}

/// An object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub size: u64,
    /// Without quotes: hex MD5, or hex MD5 of the part MD5s, `-`, part count.
    pub etag: String,
    pub last_modified_ms: u64,
    pub headers: ObjectHeaders,
    /// The data in order (one for a PUT, one per part for a multipart upload).
    pub data: Vec<DataRef>,
    /// Sizes of the parts of a multipart object.
    #[serde(default)]
    pub part_sizes: Vec<u64>,
    /// A checksum sent with a PUT: header name and base64 value.
    #[serde(default)]
    pub checksum: Option<(String, String)>,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub key: String,
    pub upload_id: String,
    pub initiated_ms: u64,
    pub headers: ObjectHeaders,
    /// Set by the CompleteMultipartUpload that claimed the upload (its wall-clock time):
    /// while it is fresh, the upload's parts are not replaced or aborted under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completing_ms: Option<u64>,
}

impl Upload {
    /// Whether a CompleteMultipartUpload holds the upload now: claimed less than
    /// [`crate::gc::CLAIM_TTL`] ago by this host's clock (a complete never sends its record
    /// later than [`crate::gc::RECORD_DEADLINE`] after its claim; an older claim is of one
    /// that died). A stamp as far in the future is a wrong clock's, and stale too.
    pub fn completing(&self, now_ms: u64) -> bool {
        let ttl = crate::gc::CLAIM_TTL.as_millis() as u64;
        self.completing_ms.is_some_and(|t| now_ms.abs_diff(t) < ttl)
    }
}

/// The key of an upload in its bucket's uploads space (key order, then upload id).
pub fn upload_key(key: &str, upload_id: &str) -> String {
    format!("{key}\u{0}{upload_id}")
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub number: u32,
    pub etag: String,
    pub size: u64,
    pub last_modified_ms: u64,
    pub data: Option<DataRef>,
}

pub fn part_key(upload_id: &str, number: u32) -> String {
    format!("{upload_id}/{number:05}")
}

/// A record and the version it was read at.
#[derive(Clone, Debug)]
pub struct Rec<T> {
    pub key: String,
    pub version: u64,
    pub value: T,
}

/// Typed access to the keyspaces over the directory's HTTP API.
#[derive(Clone)]
pub struct Meta {
    dir: DirectoryClient,
}

fn corrupt(e: serde_json::Error) -> S3Error {
    S3Error::Internal(format!("undecodable metadata record: {e}"))
}

impl Meta {
    pub fn new(dir: DirectoryClient) -> Self {
        Self { dir }
    }

    pub fn directory(&self) -> &DirectoryClient {
        &self.dir
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        space: u64,
        key: &str,
    ) -> Result<Option<Rec<T>>, S3Error> {
        match self.dir.kv_get(space, key).await? {
            None => Ok(None),
            Some(r) => Ok(Some(Rec {
                value: serde_json::from_str(&r.value).map_err(corrupt)?,
                key: r.key,
                version: r.version,
            })),
        }
    }

    /// Writes if the record is at `expect` (absent when None); false when it was not.
    pub async fn put<T: Serialize>(
        &self,
        space: u64,
        key: &str,
        expect: Option<u64>,
        value: &T,
    ) -> Result<bool, S3Error> {
        let json = serde_json::to_string(value).map_err(corrupt)?;
        Ok(self.dir.kv_put(space, key, expect, json).await?.applied)
    }

    /// Writes `value` whatever version the record is at, after committing `commit` (one
    /// directory request); answers the record replaced. `Ok(None)`: the directory is older
    /// than that call (nothing was done; commit and [`Meta::put`] instead).
    pub async fn replace<T: Serialize + DeserializeOwned>(
        &self,
        space: u64,
        key: &str,
        value: &T,
        commit: Option<CommitRequest>,
    ) -> Result<Option<Option<Rec<T>>>, S3Error> {
        let json = serde_json::to_string(value).map_err(corrupt)?;
        match self.dir.kv_replace(space, key, json, commit).await {
            Ok(r) => Ok(Some(match r.previous {
                None => None,
                Some(p) => Some(Rec {
                    value: serde_json::from_str(&p.value).map_err(corrupt)?,
                    key: p.key,
                    version: p.version,
                }),
            })),
            Err(e) if e.is_unsupported() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, space: u64, key: &str, version: u64) -> Result<bool, S3Error> {
        Ok(self.dir.kv_delete(space, key, version).await?.applied)
    }

    pub async fn scan<T: DeserializeOwned>(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Rec<T>>, S3Error> {
        self.dir
            .kv_scan(space, prefix, after, limit)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Rec {
                    value: serde_json::from_str(&r.value).map_err(corrupt)?,
                    key: r.key,
                    version: r.version,
                })
            })
            .collect()
    }
}
