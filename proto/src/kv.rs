//! Wire types of the directory's ordered keyspaces (`/v1/kv/{space}`, docs/API.md): string
//! keys in byte order under a u64 space, each holding a JSON document the directory does not
//! interpret (the S3 role's buckets, objects, uploads and keys), with compare-and-set writes.

use serde::{Deserialize, Serialize};

use crate::directory::{dec_u64, CommitRequest};

/// The most records one scan answers.
pub const MAX_SCAN: usize = 1000;

/// A record: its key, version (1 when created, +1 per update) and document (JSON text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    pub key: String,
    #[serde(with = "dec_u64")]
    pub version: u64,
    pub value: String,
}

/// `PUT /v1/kv/{space}?key=K`: write `value` if the record is at `expect_version` (absent when
/// None).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPut {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<u64>,
    pub value: String,
}

/// The outcome of a conditional write or delete: applied (the record's new version), or not
/// (the version the record is at; None: absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWriteResult {
    pub applied: bool,
    #[serde(default)]
    pub version: Option<u64>,
}

/// `PUT /v1/kv/{space}/replace?key=K`: write `value` whatever version the record is at (or
/// create it), after committing `commit` (a photo, as `POST /v1/photos` would) when given: one
/// request for what an S3 PUT needs once its bytes are on the stores. The write happens only
/// if the commit did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvReplace {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitRequest>,
}

/// The answer to a [`KvReplace`]: the record's new version and the record it replaced (None:
/// there was none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvReplaced {
    #[serde(with = "dec_u64")]
    pub version: u64,
    #[serde(default)]
    pub previous: Option<KvRecord>,
}

/// `GET /v1/kv/{space}/scan?prefix=P&after=A&limit=N`: the records whose key starts with P and
/// sorts after A, in key order, at most N (at most [`MAX_SCAN`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvScan {
    pub records: Vec<KvRecord>,
}
