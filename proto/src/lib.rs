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
}

/// What the directory asks of a store in its answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Volumes the store should create (new logical volume replicas placed on it).
    #[serde(default)]
    pub create_volumes: Vec<u32>,
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
