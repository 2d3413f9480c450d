//! Wire types shared by the haystack services: the store ↔ directory messages and volume
//! descriptions, the needle address of URLs, the batch body and the photo id layout.
//!
//! This crate holds plain serde types only, so that every service can depend on it without
//! dragging a runtime or an HTTP stack down the dependency graph. The JSON forms are documented
//! in docs/API.md.

use serde::{Deserialize, Serialize};

/// State of one physical volume on a store machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    /// Accepts appends.
    Writable,
    /// Full, or turned read-only after a disk error; reads and deletes go on.
    ReadOnly,
    /// Sealed by an operator: read-only for good, index served from a mapped sorted file.
    Sealed,
    /// The store could not open it (a damaged superblock or sealed index, a disk error): it
    /// serves nothing, the store's other volumes go on, and `reason` says why. Repair it from
    /// another replica.
    Unavailable,
}

/// What a store reports about one of its volumes (store `GET /admin/volumes` and heartbeats).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Physical volume id; equal to the logical volume id it is a replica of.
    pub id: u32,
    pub state: VolumeState,
    /// Bytes used in the volume file (superblock + needles).
    pub size_bytes: u64,
    /// The volume's maximum size in bytes.
    pub max_bytes: u64,
    /// Needles in the index, deleted ones included.
    pub needles: u64,
    /// Deleted needles.
    pub deleted_needles: u64,
    /// Bytes held by deleted or overwritten needles, reclaimable by compaction.
    pub dead_bytes: u64,
    /// Why the volume is read-only, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Progress of a compaction running on this replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<CompactionProgress>,
    /// When the store's scrubber last finished a full pass over this replica (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrubbed_unix: Option<u64>,
    /// The volume file's tag (superblock bytes 36..40; None for version 1 files and
    /// erasure-coded volumes). A copy made from a replica's export has that replica's tag,
    /// which is how the directory keeps a remote copy's shipper the replica it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u32>,
}

/// How far a running compaction got: bytes of live needles copied, of those known so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// A store's registration with the directory (`POST /v1/stores/register`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRegistration {
    /// The store's id as kept in its data dir, or None on its very first registration.
    #[serde(default)]
    pub store_id: Option<u64>,
    /// Base URL other services use to reach the store, e.g. `http://127.0.0.1:8090`.
    pub public_url: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub rack: Option<String>,
    /// Total and free bytes of the file system holding the data dir.
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

/// The directory's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRegistered {
    /// The id the store keeps in its data dir from now on.
    pub store_id: u64,
    /// Seconds between heartbeats the directory expects.
    pub heartbeat_interval_secs: u64,
}

/// A store's periodic heartbeat (`POST /v1/stores/{store_id}/heartbeat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub store_id: u64,
    pub public_url: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// False when the store has seen disk errors it cannot serve around.
    pub healthy: bool,
    pub volumes: Vec<VolumeInfo>,
    /// How far each asynchronous remote replica this store ships to is behind it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shipping: Vec<ShipStatus>,
    /// Erasure-coded volumes this store holds any file of (manifest, shard, index, delete log,
    /// a build's staging), whether it serves them or not: the directory answers which of them
    /// its records do not name this store for (`HeartbeatReply::drop_ec`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ec_files: Vec<u32>,
}

/// One asynchronous remote replica as its shipper sees it (in heartbeats, on /metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipStatus {
    pub volume: u32,
    /// The remote replica's store.
    pub store_id: u64,
    /// Bytes of the volume durable here and not yet on the remote replica.
    pub lag_bytes: u64,
    /// Seconds since the remote replica last held everything durable here (0: it does now).
    pub lag_secs: u64,
    /// Bytes shipped to it by this process since it started.
    pub shipped_bytes: u64,
    /// The last failure, while shipping fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An order to ship a volume's appends to its asynchronous remote replicas, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipOrder {
    pub volume: u32,
    /// This store's URL as the remote replicas reach it (seeding imports from it).
    pub source_url: String,
    pub targets: Vec<ShipTarget>,
}

/// A remote replica to ship to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipTarget {
    pub store_id: u64,
    pub url: String,
}

/// Where an asynchronous remote replica stands (`GET /v1/volumes/{v}/ship`): the end of its
/// volume file, the volume's tag, and the last needle it holds, so that its shipper can check
/// the two files still agree below that end (a compaction on either side breaks that).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipPosition {
    pub tail: u64,
    pub tag: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ShipMark>,
}

/// A needle by its place in a volume file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipMark {
    pub offset: u64,
    #[serde(with = "crate::directory::dec_u64")]
    pub key: u64,
    pub alt: u32,
    #[serde(with = "crate::directory::hex_u64")]
    pub cookie: u64,
}

/// What the directory asks of a store in its answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Volumes the store should create (new logical volume replicas placed on it).
    #[serde(default)]
    pub create_volumes: Vec<u32>,
    /// Volumes whose appends this store ships to their asynchronous remote replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ship: Vec<ShipOrder>,
    /// Erasure-coded volumes whose files this store should remove: their record is
    /// erasure-coded and does not name this store (the leftovers of an abandoned encode, or
    /// of a shard since placed elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_ec: Vec<u32>,
}

/// A JSON error body, as every service answers a 4xx or 5xx.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A short machine-readable code, e.g. `not_found`, `bad_request`, `volume_full`.
    pub error: String,
    /// A human-readable sentence.
    pub message: String,
}

pub mod auth;
pub mod batch;
pub mod directory;
pub mod id;
pub mod kv;
pub mod needle;

pub use needle::NeedleAddr;

pub mod range;

/// Formats a cookie as it appears in URLs: 16 lowercase hex digits.
pub fn format_cookie(cookie: u64) -> String {
    format!("{cookie:016x}")
}

/// Parses a cookie from its URL form (1 to 16 hex digits).
pub fn parse_cookie(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}
