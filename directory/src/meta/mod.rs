//! The metadata-store trait, its backends and the typed record layer on top.
//!
//! A backend stores opaque values under `(table, u64 key)`, each with a version. Every write is
//! conditional: [`Expect::Absent`] creates, [`Expect::Version`] replaces only the version read
//! before (compare-and-set), so racing directory instances never lose each other's updates. A
//! write that returns has been made durable by the backend (redb: fsynced commit; ScyllaDB: a
//! LOCAL_SERIAL Paxos round acknowledged at the configured consistency).
//!
//! Values are one format byte (`1` = JSON) followed by the JSON of the record, so the format
//! can change later while old records stay readable.

/// The key of the coordinator lease in the `nodes` table (node id leases are 0..=1023).
pub const COORDINATOR_KEY: u64 = 1 << 16;

pub mod embedded;
pub mod faulty;
pub mod ordered;
pub mod scylla;
pub mod scylla_kv;
pub mod timeout;

use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{LogicalVolume, NodeLease, Photo, RepairRecord, StoreMachine, UploadKey};

/// The tables of the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Photos,
    Volumes,
    Stores,
    Nodes,
    /// Idempotency keys of assigns (key: FNV-1a 64 of the client's key).
    Uploads,
    /// Queued replica repairs (key: photo id).
    Repairs,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Photos,
        Table::Volumes,
        Table::Stores,
        Table::Nodes,
        Table::Uploads,
        Table::Repairs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Photos => "photos",
            Table::Volumes => "volumes",
            Table::Stores => "stores",
            Table::Nodes => "nodes",
            Table::Uploads => "uploads",
            Table::Repairs => "repairs",
        }
    }
}

/// A stored value and its version ([`first_version`] for a new record, +1 per update).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub version: u64,
    pub data: Vec<u8>,
}

/// The version a record gets when it is created: the wall clock in microseconds since the
/// epoch (at least 1). A key deleted and created again thus never starts over at a version its
/// earlier life had, so a writer still holding one of those versions (a stalled coordinator
/// working a repair record that was done, removed and queued anew meanwhile) gets a conflict
/// instead of overwriting or removing the new record. Before, every record started at 1.
pub fn first_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 2))
        .clamp(1, u64::MAX >> 2)
}

/// The condition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist with this version.
    Version(u64),
}

/// The outcome of a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cas {
    /// Written; the record now has this version.
    Applied { version: u64 },
    /// Not written: the record is at `current` (None: absent).
    Conflict { current: Option<u64> },
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum MetaError {
    /// The backend is down, timed out, or failed the operation; nothing was written.
    #[error("{0}")]
    Unavailable(String),
    /// A record could not be decoded.
    #[error("{0}")]
    Corrupt(String),
}

/// A metadata backend.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// `embedded` or `scylla` (for /health and logs).
    fn backend(&self) -> &'static str;
    async fn get(&self, table: Table, key: u64) -> Result<Option<Stored>, MetaError>;
    /// Writes `data` under `key` if `expect` holds; durable when it returns `Applied`.
    async fn put_if(
        &self,
        table: Table,
        key: u64,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError>;
    /// Removes `key` if it is at `version`; durable when it returns `Applied` (whose version
    /// is then the removed one's).
    async fn delete_if(&self, table: Table, key: u64, version: u64) -> Result<Cas, MetaError>;
    /// Every record of a table, in no particular order.
    async fn list(&self, table: Table) -> Result<Vec<(u64, Stored)>, MetaError>;
    /// Cheap check that the backend answers.
    async fn ping(&self) -> Result<(), MetaError>;
    /// The record under a string key of an ordered keyspace ([`ordered`]).
    async fn kv_get(&self, space: u64, key: &str) -> Result<Option<Stored>, MetaError>;
    /// Writes a record of an ordered keyspace if `expect` holds; durable when `Applied`.
    async fn kv_put_if(
        &self,
        space: u64,
        key: &str,
        expect: Expect,
        data: Vec<u8>,
    ) -> Result<Cas, MetaError>;
    /// Removes a record of an ordered keyspace if it is at `version`.
    async fn kv_delete_if(&self, space: u64, key: &str, version: u64) -> Result<Cas, MetaError>;
    /// Up to `limit` records of a keyspace whose key starts with `prefix` and sorts after
    /// `after` (byte order), in key order; reads only what it returns (never the whole space).
    async fn kv_scan(
        &self,
        space: u64,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, MetaError>;
    /// Flushes and closes; later calls fail with `Unavailable`.
    async fn close(&self) {}
}

/// A record and the version it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

const FORMAT_JSON: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_JSON);
    // Serializing these plain structs to a Vec cannot fail.
    if serde_json::to_writer(&mut out, value).is_err() {
        out.truncate(1);
    }
    out
}

pub fn decode<T: DeserializeOwned>(table: Table, key: u64, data: &[u8]) -> Result<T, MetaError> {
    match data.split_first() {
        Some((&FORMAT_JSON, json)) => serde_json::from_slice(json)
            .map_err(|e| MetaError::Corrupt(format!("{} record {key}: {e}", table.name()))),
        Some((v, _)) => Err(MetaError::Corrupt(format!(
            "{} record {key}: unknown format {v}",
            table.name()
        ))),
        None => Err(MetaError::Corrupt(format!(
            "{} record {key}: empty",
            table.name()
        ))),
    }
}

/// Typed access to the tables over any backend.
#[derive(Clone)]
pub struct Meta {
    store: Arc<dyn MetadataStore>,
}

impl Meta {
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        Self { store }
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    pub fn raw(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    async fn get_typed<T: DeserializeOwned>(
        &self,
        table: Table,
        key: u64,
    ) -> Result<Option<Versioned<T>>, MetaError> {
        match self.store.get(table, key).await? {
            None => Ok(None),
            Some(s) => Ok(Some(Versioned {
                version: s.version,
                value: decode(table, key, &s.data)?,
            })),
        }
    }

    async fn list_typed<T: DeserializeOwned>(
        &self,
        table: Table,
    ) -> Result<Vec<Versioned<T>>, MetaError> {
        self.store
            .list(table)
            .await?
            .into_iter()
            .map(|(k, s)| {
                Ok(Versioned {
                    version: s.version,
                    value: decode(table, k, &s.data)?,
                })
            })
            .collect()
    }

    pub async fn get_photo(&self, id: u64) -> Result<Option<Versioned<Photo>>, MetaError> {
        self.get_typed(Table::Photos, id).await
    }

    pub async fn put_photo(&self, p: &Photo, expect: Expect) -> Result<Cas, MetaError> {
        self.store
            .put_if(Table::Photos, p.id, expect, encode(p))
            .await
    }

    pub async fn get_volume(&self, id: u32) -> Result<Option<Versioned<LogicalVolume>>, MetaError> {
        self.get_typed(Table::Volumes, u64::from(id)).await
    }

    pub async fn put_volume(&self, v: &LogicalVolume, expect: Expect) -> Result<Cas, MetaError> {
        self.store
            .put_if(Table::Volumes, u64::from(v.id), expect, encode(v))
            .await
    }

    pub async fn list_volumes(&self) -> Result<Vec<Versioned<LogicalVolume>>, MetaError> {
        let mut v: Vec<Versioned<LogicalVolume>> = self.list_typed(Table::Volumes).await?;
        v.sort_by_key(|x| x.value.id);
        Ok(v)
    }

    pub async fn get_store(&self, id: u64) -> Result<Option<Versioned<StoreMachine>>, MetaError> {
        self.get_typed(Table::Stores, id).await
    }

    pub async fn put_store(&self, s: &StoreMachine, expect: Expect) -> Result<Cas, MetaError> {
        self.store
            .put_if(Table::Stores, s.id, expect, encode(s))
            .await
    }

    /// Deletes a store record at `version` (`DELETE /v1/stores/{id}`).
    pub async fn delete_store(&self, id: u64, version: u64) -> Result<Cas, MetaError> {
        self.store.delete_if(Table::Stores, id, version).await
    }

    pub async fn list_stores(&self) -> Result<Vec<Versioned<StoreMachine>>, MetaError> {
        let mut v: Vec<Versioned<StoreMachine>> = self.list_typed(Table::Stores).await?;
        v.sort_by_key(|x| x.value.id);
        Ok(v)
    }

    pub async fn get_upload(&self, hash: u64) -> Result<Option<Versioned<UploadKey>>, MetaError> {
        self.get_typed(Table::Uploads, hash).await
    }

    pub async fn put_upload(
        &self,
        hash: u64,
        u: &UploadKey,
        expect: Expect,
    ) -> Result<Cas, MetaError> {
        self.store
            .put_if(Table::Uploads, hash, expect, encode(u))
            .await
    }

    pub async fn get_repair(
        &self,
        photo: u64,
    ) -> Result<Option<Versioned<RepairRecord>>, MetaError> {
        self.get_typed(Table::Repairs, photo).await
    }

    pub async fn put_repair(
        &self,
        photo: u64,
        r: &RepairRecord,
        expect: Expect,
    ) -> Result<Cas, MetaError> {
        self.store
            .put_if(Table::Repairs, photo, expect, encode(r))
            .await
    }

    pub async fn delete_repair(&self, photo: u64, version: u64) -> Result<Cas, MetaError> {
        self.store.delete_if(Table::Repairs, photo, version).await
    }

    pub async fn list_repairs(&self) -> Result<Vec<(u64, Versioned<RepairRecord>)>, MetaError> {
        self.store
            .list(Table::Repairs)
            .await?
            .into_iter()
            .map(|(k, s)| {
                Ok((
                    k,
                    Versioned {
                        version: s.version,
                        value: decode(Table::Repairs, k, &s.data)?,
                    },
                ))
            })
            .collect()
    }

    /// The coordinator lease: the one directory instance that runs the background work
    /// (`nodes` table, key [`COORDINATOR_KEY`]).
    pub async fn get_coordinator(&self) -> Result<Option<Versioned<NodeLease>>, MetaError> {
        self.get_typed(Table::Nodes, COORDINATOR_KEY).await
    }

    pub async fn put_coordinator(
        &self,
        lease: &NodeLease,
        expect: Expect,
    ) -> Result<Cas, MetaError> {
        self.store
            .put_if(Table::Nodes, COORDINATOR_KEY, expect, encode(lease))
            .await
    }

    pub async fn get_lease(&self, node: u16) -> Result<Option<Versioned<NodeLease>>, MetaError> {
        self.get_typed(Table::Nodes, u64::from(node)).await
    }

    pub async fn put_lease(
        &self,
        node: u16,
        lease: &NodeLease,
        expect: Expect,
    ) -> Result<Cas, MetaError> {
        self.store
            .put_if(Table::Nodes, u64::from(node), expect, encode(lease))
            .await
    }
}
