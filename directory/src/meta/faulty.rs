//! A wrapper that makes any backend fail on demand: how the tests show that a metadata outage
//! answers 503 and that the directory recovers by itself when the backend returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Cas, Expect, MetaError, MetadataStore, Stored, Table};

/// Passes every call through to `inner` unless switched down.
pub struct FaultyStore {
    inner: Arc<dyn MetadataStore>,
    down: AtomicBool,
    hang: AtomicBool,
    keep_open: AtomicBool,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn MetadataStore>) -> Self {
        Self {
            inner,
            down: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            keep_open: AtomicBool::new(false),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// While set, `close` leaves the inner store open (another directory of the test shares
    /// it).
    pub fn set_keep_open(&self, keep: bool) {
        self.keep_open.store(keep, Ordering::SeqCst);
    }

    /// While set, every call waits forever (a hung backend).
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    async fn check(&self) -> Result<(), MetaError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.down.load(Ordering::SeqCst) {
            Err(MetaError::Unavailable(
                "injected fault: metadata backend down".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl MetadataStore for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, table: Table, key: u64) -> Result<Option<Stored>, MetaError> {
        self.check().await?;
        self.inner.get(table, key).await
    }

    async fn put_if(
        &self,
        table: Table,
        key: u64,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        self.check().await?;
        self.inner.put_if(table, key, expect, data).await
    }

    async fn delete_if(&self, table: Table, key: u64, version: u64) -> Result<Cas, MetaError> {
        self.check().await?;
        self.inner.delete_if(table, key, version).await
    }

    async fn list(&self, table: Table) -> Result<Vec<(u64, Stored)>, MetaError> {
        self.check().await?;
        self.inner.list(table).await
    }

    async fn kv_get(&self, space: u64, key: &str) -> Result<Option<Stored>, MetaError> {
        self.check().await?;
        self.inner.kv_get(space, key).await
    }

    async fn kv_put_if(
        &self,
        space: u64,
        key: &str,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        self.check().await?;
        self.inner.kv_put_if(space, key, expect, data).await
    }

    async fn kv_delete_if(&self, space: u64, key: &str, version: u64) -> Result<Cas, MetaError> {
        self.check().await?;
        self.inner.kv_delete_if(space, key, version).await
    }

    async fn kv_scan(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, MetaError> {
        self.check().await?;
        self.inner.kv_scan(space, prefix, after, limit).await
    }

    async fn ping(&self) -> Result<(), MetaError> {
        self.check().await?;
        self.inner.ping().await
    }

    async fn close(&self) {
        if !self.keep_open.load(Ordering::SeqCst) {
            self.inner.close().await
        }
    }
}
