//! The records the directory keeps in its metadata store: photos, logical volumes, store
//! machines and node-id leases. Each is stored as one value under a u64 key with a version
//! that conditional writes compare (see [`crate::meta`]).

use haystack_proto::directory::{
    PhotoKind, RepairAction, StoreLifecycle, StoreState, Variant, VideoChunk,
};
use haystack_proto::{VolumeInfo, VolumeState};
use serde::{Deserialize, Serialize};

/// A committed photo or video.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Photo {
    pub id: u64,
    pub volume_id: u32,
    pub cookie: u64,
    pub kind: PhotoKind,
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub chunks: Vec<VideoChunk>,
    pub created_ms: u64,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub deleted_ms: Option<u64>,
    /// A tombstone written by garbage collection before it deleted the needles of an id no
    /// photo had: the id can never be committed (`deleted` is set too; no variants).
    #[serde(default)]
    pub condemned: bool,
}

impl Photo {
    /// Neither deleted nor condemned: its needles are to be kept and served.
    pub fn live(&self) -> bool {
        !self.deleted && !self.condemned
    }

    /// Every alternate key the photo has needles under.
    pub fn alts(&self) -> impl Iterator<Item = u32> + '_ {
        self.variants
            .iter()
            .map(|v| v.alt)
            .chain(self.chunks.iter().map(|c| c.alt))
    }

    /// The same photo as `other` as far as a commit is concerned (all but the times).
    pub fn same_contents(&self, other: &Photo) -> bool {
        self.id == other.id
            && self.volume_id == other.volume_id
            && self.cookie == other.cookie
            && self.kind == other.kind
            && self.variants == other.variants
            && self.chunks == other.chunks
    }

    /// Total bytes of all its needles.
    pub fn total_bytes(&self) -> u64 {
        self.variants
            .iter()
            .map(|v| v.size_bytes)
            .chain(self.chunks.iter().map(|c| c.size_bytes))
            .sum()
    }
}

/// A logical volume: the same volume id on R store machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalVolume {
    pub id: u32,
    /// Store ids of the replicas.
    pub replicas: Vec<u64>,
    /// The recorded state; liveness and fullness are folded in at read time (see
    /// [`crate::service`]), so a store coming back needs no write here.
    pub state: VolumeState,
    /// Planned capacity; replaced by the stores' reports once they arrive.
    pub capacity_bytes: u64,
    /// Last known use (from heartbeats).
    #[serde(default)]
    pub used_bytes: u64,
    pub created_ms: u64,
    #[serde(default)]
    pub reason: Option<String>,
    /// Replicas whose store has reported the volume at least once. A store in this list that
    /// stops reporting it has lost it: it is not asked to create an empty one, the volume stays
    /// read-only until a repair moves the replica.
    #[serde(default)]
    pub reported_by: Vec<u64>,
    /// Asynchronous remote replicas (issue 13): stores in remote zones the volume's appends
    /// are shipped to; never read while a replica serves, never written by uploads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<u64>,
    /// Erasure-coded (issue 14): `replicas` are then the stores of its shards, in shard order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec: Option<haystack_proto::directory::EcScheme>,
    /// When the volume was sealed (ms since the epoch); absent on volumes sealed before this
    /// was recorded. The automatic encode policy counts a sealed volume's age from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_ms: Option<u64>,
    /// Stores still holding a copy that a move (drain, rebalance, re-replication, replace)
    /// took out of `replicas`: a last-resort source for repairs, never read otherwise, and
    /// dropped by the repair worker (`DELETE /v1/volumes/{id}?moved=true`) once it is
    /// `moved_copy_keep_ms` old and no repair of the volume is queued. Until then the
    /// store is not a target for a new replica of the volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_away: Vec<MovedCopy>,
}

impl LogicalVolume {
    /// Whether `store` still holds a copy a move replaced (see [`LogicalVolume::moved_away`]).
    pub fn has_moved_copy(&self, store: u64) -> bool {
        self.moved_away.iter().any(|m| m.store_id == store)
    }
}

/// A copy a move replaced, not dropped yet (see [`LogicalVolume::moved_away`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedCopy {
    pub store_id: u64,
    /// When the record stopped naming it (ms since the epoch).
    pub moved_ms: u64,
    /// The store whose replica replaced it (0 on entries written before it was kept).
    #[serde(default)]
    pub replaced_by: u64,
}

/// A store machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMachine {
    pub id: u64,
    pub url: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub rack: Option<String>,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub last_heartbeat_ms: u64,
    pub state: StoreState,
    pub healthy: bool,
    /// The volumes the store reported in its last heartbeat.
    #[serde(default)]
    pub volumes: Vec<VolumeInfo>,
    pub registered_ms: u64,
    /// Active, draining or retired (records written before drains existed: active).
    #[serde(default)]
    pub lifecycle: StoreLifecycle,
    /// In a remote zone (`remote_zones`): holds asynchronous remote replicas only.
    #[serde(default)]
    pub remote: bool,
    /// How far the remote replicas this store ships to are behind it (last heartbeat).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shipping: Vec<haystack_proto::ShipStatus>,
}

/// A directory instance's claim on a node id for photo ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    /// Random id of the holding instance (per process start).
    pub holder: u64,
    pub expires_ms: u64,
}

/// A client's idempotency key bound to the one photo committed under it.
///
/// Written by a keyed commit with a compare-and-set, before the photo record, and holding
/// that record in full: whoever finds the key bound to a photo that is not in the photos table
/// yet (its committer died between the two writes) writes it from here. Records written by
/// the assigns of earlier versions have no `photo`: their key counts as bound only if their id
/// is a committed photo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadKey {
    /// The client's key in full (the table key is its hash).
    pub key: String,
    pub id: u64,
    pub cookie: u64,
    pub volume_id: u32,
    pub kind: PhotoKind,
    /// When the key was bound; it is honoured for `idempotency_ttl_ms` from then.
    pub created_ms: u64,
    /// The photo record the binding commit writes.
    #[serde(default)]
    pub photo: Option<Photo>,
    /// The client's request digest given with the commit.
    #[serde(default)]
    pub request_hash: Option<String>,
}

/// The repairs queued for one photo's needles (table `repairs`, key: the photo id): a task per
/// replica to copy the needles onto or delete them from. The record is removed when its last
/// task is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRecord {
    pub volume_id: u32,
    pub tasks: Vec<RepairTask>,
    pub created_ms: u64,
}

/// One replica's repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairTask {
    pub store_id: u64,
    pub action: RepairAction,
    /// Why it was queued (read repair, scrub, anti-entropy, quorum write, missed delete).
    pub reason: String,
    /// Alternate keys to act on; empty: every alternate key of the photo record.
    #[serde(default)]
    pub alts: Vec<u32>,
    #[serde(default)]
    pub attempts: u32,
    /// Not tried again before this time (back-off after failures).
    #[serde(default)]
    pub next_ms: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases (idempotency keys).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
