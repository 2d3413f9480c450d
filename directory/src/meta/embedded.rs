//! The embedded backend: one redb file under the data dir, with group commit.
//!
//! Durability contract:
//! 1. A write is sent to the single writer thread and waits for its answer.
//! 2. The writer takes every write queued at that moment (up to [`MAX_BATCH`]), applies them in
//!    order inside one redb write transaction, each checking its condition against the state
//!    the earlier ones left, and commits with `Durability::Immediate` (redb fsyncs the new pages,
//!    then the header that points at them).
//! 3. Only after the commit returns does any writer of the batch hear `Applied`; if the commit
//!    fails, all of them hear `Unavailable` and none of their writes is visible.
//! 4. On start redb opens the last committed header; a torn transaction is never seen.
//!
//! Reads open a redb read transaction (MVCC, no lock against the writer) on the caller's thread:
//! they are short B-tree lookups in redb's page cache.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use std::ops::Bound;

use super::ordered::{check_key, past_prefix, scan_start};
use super::{Cas, Expect, MetaError, MetadataStore, Stored, Table};

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 4096;

const PHOTOS: TableDefinition<u64, &[u8]> = TableDefinition::new("photos");
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");
const STORES: TableDefinition<u64, &[u8]> = TableDefinition::new("stores");
const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const UPLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("uploads");
const REPAIRS: TableDefinition<u64, &[u8]> = TableDefinition::new("repairs");
/// The ordered keyspaces: `(space, key)` in that order, so a space is one contiguous range.
const KV: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("kv");

fn def(t: Table) -> TableDefinition<'static, u64, &'static [u8]> {
    match t {
        Table::Photos => PHOTOS,
        Table::Volumes => VOLUMES,
        Table::Stores => STORES,
        Table::Nodes => NODES,
        Table::Uploads => UPLOADS,
        Table::Repairs => REPAIRS,
    }
}

/// The file name of the database inside the data dir.
pub const DB_FILE: &str = "directory.redb";

/// What a write goes to: a record of a u64-keyed table or of an ordered keyspace.
enum Target {
    Table(Table, u64),
    Kv(u64, String),
}

struct WriteOp {
    target: Target,
    expect: Expect,
    /// None: remove the record (only with `Expect::Version`).
    data: Option<Vec<u8>>,
    reply: oneshot::Sender<Result<Cas, MetaError>>,
}

enum Msg {
    Write(WriteOp),
    Close(oneshot::Sender<()>),
}

/// The redb backend.
pub struct EmbeddedStore {
    db: RwLock<Option<Arc<Database>>>,
    tx: std::sync::Mutex<Option<mpsc::Sender<Msg>>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> MetaError {
    MetaError::Unavailable(format!("embedded metadata {what}: {e}"))
}

impl EmbeddedStore {
    /// Opens (or creates) `DIR/directory.redb` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable("create dir", e))?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| unavailable("open", e))?;
        {
            let mut txn = db.begin_write().map_err(|e| unavailable("begin", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| unavailable("durability", e))?;
            for t in Table::ALL {
                txn.open_table(def(t))
                    .map_err(|e| unavailable("create table", e))?;
            }
            txn.open_table(KV)
                .map_err(|e| unavailable("create table", e))?;
            txn.commit().map_err(|e| unavailable("commit", e))?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("directory-redb-writer".into())
            .spawn(move || writer_loop(writer_db, rx))
            .map_err(|e| unavailable("start writer", e))?;
        tracing::info!(path = %path.display(), "embedded metadata store opened");
        Ok(Self {
            db: RwLock::new(Some(db)),
            tx: std::sync::Mutex::new(Some(tx)),
        })
    }

    fn db(&self) -> Result<Arc<Database>, MetaError> {
        self.db
            .read()
            .map_err(|_| MetaError::Unavailable("embedded metadata lock poisoned".into()))?
            .clone()
            .ok_or_else(|| MetaError::Unavailable("embedded metadata store closed".into()))
    }

    fn sender(&self) -> Result<mpsc::Sender<Msg>, MetaError> {
        self.tx
            .lock()
            .map_err(|_| MetaError::Unavailable("embedded metadata lock poisoned".into()))?
            .clone()
            .ok_or_else(|| MetaError::Unavailable("embedded metadata store closed".into()))
    }
}

fn split_value(table: Table, key: u64, v: &[u8]) -> Result<Stored, MetaError> {
    if v.len() < 8 {
        return Err(MetaError::Corrupt(format!(
            "{} record {key}: value shorter than its version",
            table.name()
        )));
    }
    let (ver, data) = v.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(ver);
    Ok(Stored {
        version: u64::from_le_bytes(b),
        data: data.to_vec(),
    })
}

fn writer_loop(db: Arc<Database>, rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_BATCH);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        let mut close = None;
        match first {
            Msg::Write(op) => batch.push(op),
            Msg::Close(ack) => close = Some(ack),
        }
        while close.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Write(op)) => batch.push(op),
                Ok(Msg::Close(ack)) => close = Some(ack),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&db, &mut batch, &mut buf);
        }
        if let Some(ack) = close {
            // Refuse whatever is still queued, then let the file go.
            while let Ok(m) = rx.try_recv() {
                if let Msg::Write(op) = m {
                    let _ = op.reply.send(Err(MetaError::Unavailable(
                        "embedded metadata store closed".into(),
                    )));
                }
            }
            drop(db);
            let _ = ack.send(());
            return;
        }
    }
}

fn commit_batch(db: &Database, batch: &mut Vec<WriteOp>, buf: &mut Vec<u8>) {
    let size = batch.len();
    let result = apply_batch(db, batch, buf);
    metrics::histogram!("haystack_directory_meta_batch_size").record(size as f64);
    match result {
        Ok(outcomes) => {
            for (op, cas) in batch.drain(..).zip(outcomes) {
                let _ = op.reply.send(Ok(cas));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = size, "committing metadata batch failed");
            metrics::counter!("haystack_directory_meta_commit_errors_total").increment(1);
            for op in batch.drain(..) {
                let _ = op.reply.send(Err(e.clone()));
            }
        }
    }
}

fn apply_batch(db: &Database, batch: &[WriteOp], buf: &mut Vec<u8>) -> Result<Vec<Cas>, MetaError> {
    let mut txn = db.begin_write().map_err(|e| unavailable("begin", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| unavailable("durability", e))?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut tables = Vec::with_capacity(Table::ALL.len());
        for t in Table::ALL {
            tables.push(
                txn.open_table(def(t))
                    .map_err(|e| unavailable("open table", e))?,
            );
        }
        let mut kv = txn
            .open_table(KV)
            .map_err(|e| unavailable("open table", e))?;
        for op in batch {
            let (table, key) = match &op.target {
                Target::Table(t, k) => (*t, *k),
                Target::Kv(space, key) => {
                    let current = match kv
                        .get((*space, key.as_str()))
                        .map_err(|e| unavailable("read", e))?
                    {
                        None => None,
                        Some(v) => Some(split_value(Table::Photos, 0, v.value())?.version),
                    };
                    let outcome = decide(op, current, buf);
                    if let Cas::Applied { .. } = outcome {
                        if op.data.is_some() {
                            kv.insert((*space, key.as_str()), buf.as_slice())
                                .map_err(|e| unavailable("write", e))?;
                        } else {
                            kv.remove((*space, key.as_str()))
                                .map_err(|e| unavailable("write", e))?;
                        }
                    }
                    outcomes.push(outcome);
                    continue;
                }
            };
            let idx = Table::ALL
                .iter()
                .position(|t| *t == table)
                .unwrap_or_default();
            let table_ref = &mut tables[idx];
            let current = match table_ref.get(key).map_err(|e| unavailable("read", e))? {
                None => None,
                Some(v) => Some(split_value(table, key, v.value())?.version),
            };
            let outcome = decide(op, current, buf);
            if let Cas::Applied { .. } = outcome {
                if op.data.is_some() {
                    table_ref
                        .insert(key, buf.as_slice())
                        .map_err(|e| unavailable("write", e))?;
                } else {
                    table_ref.remove(key).map_err(|e| unavailable("write", e))?;
                }
            }
            outcomes.push(outcome);
        }
    }
    txn.commit().map_err(|e| unavailable("commit", e))?;
    Ok(outcomes)
}

/// Checks a write's condition against the current version; when it holds for a put, leaves
/// the new value (version and data) in `buf`.
fn decide(op: &WriteOp, current: Option<u64>, buf: &mut Vec<u8>) -> Cas {
    let next = match (op.expect, current) {
        (Expect::Absent, None) if op.data.is_some() => Some(super::first_version()),
        (Expect::Version(want), Some(have)) if want == have => Some(have + 1),
        _ => None,
    };
    match (next, &op.data) {
        (Some(version), Some(d)) => {
            buf.clear();
            buf.extend_from_slice(&version.to_le_bytes());
            buf.extend_from_slice(d);
            Cas::Applied { version }
        }
        // A removal: Applied carries the removed record's version.
        (Some(version), None) => Cas::Applied {
            version: version - 1,
        },
        (None, _) => Cas::Conflict { current },
    }
}

impl EmbeddedStore {
    async fn write(
        &self,
        target: Target,
        expect: Expect,
        data: Option<Vec<u8>>,
    ) -> Result<Cas, MetaError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Msg::Write(WriteOp {
                target,
                expect,
                data,
                reply,
            }))
            .map_err(|_| MetaError::Unavailable("embedded metadata writer stopped".into()))?;
        rx.await
            .map_err(|_| MetaError::Unavailable("embedded metadata writer stopped".into()))?
    }
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, table: Table, key: u64) -> Result<Option<Stored>, MetaError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
        let t = txn
            .open_table(def(table))
            .map_err(|e| unavailable("open table", e))?;
        match t.get(key).map_err(|e| unavailable("read", e))? {
            None => Ok(None),
            Some(v) => Ok(Some(split_value(table, key, v.value())?)),
        }
    }

    async fn put_if(
        &self,
        table: Table,
        key: u64,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        self.write(Target::Table(table, key), expect, Some(data))
            .await
    }

    async fn delete_if(&self, table: Table, key: u64, version: u64) -> Result<Cas, MetaError> {
        self.write(Target::Table(table, key), Expect::Version(version), None)
            .await
    }

    async fn list(&self, table: Table) -> Result<Vec<(u64, Stored)>, MetaError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
        let t = txn
            .open_table(def(table))
            .map_err(|e| unavailable("open table", e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| unavailable("scan", e))? {
            let (k, v) = row.map_err(|e| unavailable("scan", e))?;
            out.push((k.value(), split_value(table, k.value(), v.value())?));
        }
        Ok(out)
    }

    async fn kv_get(&self, space: u64, key: &str) -> Result<Option<Stored>, MetaError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
        let t = txn
            .open_table(KV)
            .map_err(|e| unavailable("open table", e))?;
        match t.get((space, key)).map_err(|e| unavailable("read", e))? {
            None => Ok(None),
            Some(v) => Ok(Some(split_value(Table::Photos, space, v.value())?)),
        }
    }

    async fn kv_put_if(
        &self,
        space: u64,
        key: &str,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError> {
        check_key(key).map_err(MetaError::Unavailable)?;
        self.write(Target::Kv(space, key.to_string()), expect, Some(data))
            .await
    }

    async fn kv_delete_if(&self, space: u64, key: &str, version: u64) -> Result<Cas, MetaError> {
        self.write(
            Target::Kv(space, key.to_string()),
            Expect::Version(version),
            None,
        )
        .await
    }

    async fn kv_scan(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, MetaError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
        let t = txn
            .open_table(KV)
            .map_err(|e| unavailable("open table", e))?;
        let start = scan_start(prefix, after);
        let lower = if start.inclusive {
            Bound::Included((space, start.key.as_str()))
        } else {
            Bound::Excluded((space, start.key.as_str()))
        };
        let range = t
            .range::<(u64, &str)>((lower, Bound::Unbounded))
            .map_err(|e| unavailable("scan", e))?;
        let mut out = Vec::new();
        for row in range {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(|e| unavailable("scan", e))?;
            let (s, key) = k.value();
            if s != space || past_prefix(key, prefix) {
                break;
            }
            if !key.starts_with(prefix) {
                continue;
            }
            out.push((
                key.to_string(),
                split_value(Table::Photos, space, v.value())?,
            ));
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), MetaError> {
        let db = self.db()?;
        db.begin_read()
            .map(|_| ())
            .map_err(|e| unavailable("begin read", e))
    }

    async fn close(&self) {
        let tx = self.tx.lock().ok().and_then(|mut g| g.take());
        if let Ok(mut g) = self.db.write() {
            g.take();
        }
        if let Some(tx) = tx {
            let (ack, done) = oneshot::channel();
            if tx.send(Msg::Close(ack)).is_ok() {
                let _ = done.await;
            }
        }
    }
}
