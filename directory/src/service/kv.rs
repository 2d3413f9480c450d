//! Ordered keyspaces through the directory (`/v1/kv`): get, conditional put and delete, and
//! scans by prefix after a marker. The directory stores the documents without reading them;
//! the S3 role (haystack-s3) keeps its buckets, objects, multipart uploads and access keys
//! here, so that any number of S3 processes share one metadata store.

use haystack_proto::kv::{KvPut, KvRecord, KvReplace, KvReplaced, KvScan, KvWriteResult, MAX_SCAN};

use super::*;
use crate::meta::ordered::check_key;

const FORMAT_JSON: u8 = 1;

fn record(key: String, stored: crate::meta::Stored) -> Result<KvRecord, DirectoryError> {
    match stored.data.split_first() {
        Some((&FORMAT_JSON, text)) => Ok(KvRecord {
            key,
            version: stored.version,
            value: String::from_utf8(text.to_vec()).map_err(|_| {
                DirectoryError::Internal("corrupt kv record: not UTF-8".to_string())
            })?,
        }),
        _ => Err(DirectoryError::Internal(format!(
            "corrupt kv record {key:?}: unknown format"
        ))),
    }
}

/// A document as stored: its format byte, then the JSON text.
fn stored(value: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(value.len() + 1);
    data.push(FORMAT_JSON);
    data.extend_from_slice(value.as_bytes());
    data
}

fn outcome(cas: Cas) -> KvWriteResult {
    match cas {
        Cas::Applied { version } => KvWriteResult {
            applied: true,
            version: Some(version),
        },
        Cas::Conflict { current } => KvWriteResult {
            applied: false,
            version: current,
        },
    }
}

impl Directory {
    pub async fn kv_get(&self, space: u64, key: &str) -> Result<KvRecord, DirectoryError> {
        match self.meta.raw().kv_get(space, key).await? {
            Some(s) => record(key.to_string(), s),
            None => Err(DirectoryError::NotFound(format!("no record {key:?}"))),
        }
    }

    pub async fn kv_put(
        &self,
        space: u64,
        key: &str,
        put: KvPut,
    ) -> Result<KvWriteResult, DirectoryError> {
        check_key(key).map_err(DirectoryError::BadRequest)?;
        let data = stored(&put.value);
        let expect = match put.expect_version {
            None => Expect::Absent,
            Some(v) => Expect::Version(v),
        };
        Ok(outcome(
            self.meta.raw().kv_put_if(space, key, expect, data).await?,
        ))
    }

    /// Writes a record whatever version it is at (a compare-and-set loop here, so that the
    /// caller needs no read first), after committing the request's photo when it carries one;
    /// answers the record replaced.
    pub async fn kv_replace(
        &self,
        space: u64,
        key: &str,
        put: KvReplace,
    ) -> Result<KvReplaced, DirectoryError> {
        check_key(key).map_err(DirectoryError::BadRequest)?;
        if let Some(c) = put.commit {
            self.commit(c).await?;
        }
        let data = stored(&put.value);
        for _ in 0..CAS_RETRIES {
            let current = self.meta.raw().kv_get(space, key).await?;
            let expect = current
                .as_ref()
                .map_or(Expect::Absent, |c| Expect::Version(c.version));
            match self
                .meta
                .raw()
                .kv_put_if(space, key, expect, data.clone())
                .await?
            {
                Cas::Applied { version } => {
                    return Ok(KvReplaced {
                        version,
                        previous: current.map(|c| record(key.to_string(), c)).transpose()?,
                    })
                }
                Cas::Conflict { .. } => continue,
            }
        }
        Err(DirectoryError::Conflict(format!(
            "record {key:?} is contended; retry"
        )))
    }

    pub async fn kv_delete(
        &self,
        space: u64,
        key: &str,
        version: u64,
    ) -> Result<KvWriteResult, DirectoryError> {
        Ok(outcome(
            self.meta.raw().kv_delete_if(space, key, version).await?,
        ))
    }

    pub async fn kv_scan(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<KvScan, DirectoryError> {
        let rows = self
            .meta
            .raw()
            .kv_scan(space, prefix, after, limit.clamp(1, MAX_SCAN))
            .await?;
        Ok(KvScan {
            records: rows
                .into_iter()
                .map(|(k, s)| record(k, s))
                .collect::<Result<_, _>>()?,
        })
    }
}
