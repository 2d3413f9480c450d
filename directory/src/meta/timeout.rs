//! A wrapper that bounds every backend call by a timeout, so a hung backend (a stuck disk, a
//! partitioned cluster) answers `Unavailable` (503) instead of holding requests forever.
//! A write that times out may still land later; every write is conditional and the directory's
//! writes are idempotent when retried, so a retry never doubles it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Cas, Expect, MetaError, MetadataStore, Stored, Table};

pub struct TimeoutStore {
    inner: Arc<dyn MetadataStore>,
    timeout: Duration,
}

impl TimeoutStore {
    pub fn new(inner: Arc<dyn MetadataStore>, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, MetaError>>,
    ) -> Result<T, MetaError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => {
                metrics::counter!("haystack_directory_meta_timeouts_total").increment(1);
                Err(MetaError::Unavailable(format!(
                    "{} backend did not answer {what} within {} ms",
                    self.inner.backend(),
                    self.timeout.as_millis()
                )))
            }
        }
    }
}

#[async_trait]
impl MetadataStore for TimeoutStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, table: Table, key: u64) -> Result<Option<Stored>, MetaError> {
        self.bounded("a read", self.inner.get(table, key)).await
    }

    async fn put_if(
        &self,
        table: Table,
        key: u64,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        self.bounded("a write", self.inner.put_if(table, key, expect, data))
            .await
    }

    async fn delete_if(&self, table: Table, key: u64, version: u64) -> Result<Cas, MetaError> {
        self.bounded("a delete", self.inner.delete_if(table, key, version))
            .await
    }

    async fn list(&self, table: Table) -> Result<Vec<(u64, Stored)>, MetaError> {
        self.bounded("a scan", self.inner.list(table)).await
    }

    async fn kv_get(&self, space: u64, key: &str) -> Result<Option<Stored>, MetaError> {
        self.bounded("a read", self.inner.kv_get(space, key)).await
    }

    async fn kv_put_if(
        &self,
        space: u64,
        key: &str,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        self.bounded("a write", self.inner.kv_put_if(space, key, expect, data))
            .await
    }

    async fn kv_delete_if(&self, space: u64, key: &str, version: u64) -> Result<Cas, MetaError> {
        self.bounded("a delete", self.inner.kv_delete_if(space, key, version))
            .await
    }

    async fn kv_scan(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, MetaError> {
        self.bounded("a scan", self.inner.kv_scan(space, prefix, after, limit))
            .await
    }

    async fn ping(&self) -> Result<(), MetaError> {
        self.bounded("a ping", self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
