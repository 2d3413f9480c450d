//! Directory wire types: assign, commit, lookup, delete, volume and store views (docs/directory.md).
//!
//! Photo ids and store ids travel as decimal strings (JSON numbers lose precision above 2^53);
//! cookies travel as 16 lowercase hex digits, the same form as in a needle URL.

use serde::{Deserialize, Serialize};

use crate::VolumeState;

/// Serde helpers: a `u64` as a decimal string (a bare JSON number is accepted on input too).
pub mod dec_u64 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StrOrNum<'a> {
        Str(std::borrow::Cow<'a, str>),
        Num(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match StrOrNum::deserialize(d)? {
            StrOrNum::Str(s) => s.parse().map_err(de::Error::custom),
            StrOrNum::Num(n) => Ok(n),
        }
    }
}

/// Serde helpers: a `u64` cookie as exactly 16 lowercase hex digits.
pub mod hex_u64 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        parse(&s).ok_or_else(|| de::Error::custom("cookie must be 16 lowercase hex digits"))
    }

    /// Parses 16 lowercase hex digits.
    pub fn parse(s: &str) -> Option<u64> {
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        u64::from_str_radix(s, 16).ok()
    }
}

/// Whether a photo id holds a still image (variants), a video (chunks), or the bytes of an
/// S3 object or part (chunks, like a video; written and named by the S3 role's records, and
/// collected by `haystack gc` once no record names it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhotoKind {
    #[default]
    Photo,
    Video,
    Object,
}

/// One stored form of a photo: original, large, medium, small, thumb...
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Name of the variant, e.g. `original` or `thumb`.
    pub name: String,
    /// The needle's alternate key.
    pub alt: u32,
    pub size_bytes: u64,
    pub content_type: String,
}

/// One chunk of a video: a needle whose alternate key is the chunk number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoChunk {
    pub alt: u32,
    /// Byte offset of the chunk in the whole video.
    pub offset: u64,
    pub size_bytes: u64,
}

/// `POST /v1/assign`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignRequest {
    #[serde(default)]
    pub kind: PhotoKind,
    /// Bytes the upload will write in all (every variant or chunk); volumes with less room are skipped.
    #[serde(default)]
    pub size_hint_bytes: u64,
    /// The client's Idempotency-Key. While a photo committed under the key is within the
    /// directory's idempotency TTL, assign answers that photo's id, cookie and volume with
    /// `replayed` set (nothing to write); otherwise a fresh assignment, like without a key.
    /// Assign writes nothing under the key: the key is bound to a photo by the commit
    /// ([`KeyedCommit`]), so every attempt of a request gets its own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Volumes the client just failed to write to (an uploader's retry): assign picks
    /// another. Ignored by a replayed idempotency key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_volumes: Vec<u32>,
}

/// A replica of a logical volume: the store machine holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    #[serde(with = "dec_u64")]
    pub store_id: u64,
    pub url: String,
}

/// The answer to an assign: where to write every needle of the new photo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignResponse {
    #[serde(with = "dec_u64")]
    pub id: u64,
    #[serde(with = "hex_u64")]
    pub cookie: u64,
    pub volume_id: u32,
    pub replicas: Vec<Replica>,
    /// True when the idempotency key already names a committed photo: this one (look it up
    /// and answer it; write nothing).
    #[serde(default)]
    pub replayed: bool,
    /// For a replay: the `request_hash` the key's photo was committed with, if any (a client
    /// whose request hashes otherwise reused the key for another upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// A write token for this upload's needles (volume, id, any alternate key), valid for an
    /// hour, when the cluster has a secret: a store takes the needles with it alone (header
    /// `X-Haystack-Write-Token`), without asking the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_token: Option<String>,
}

/// `POST /v1/photos`: record a photo once every needle is on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    #[serde(with = "dec_u64")]
    pub id: u64,
    #[serde(with = "hex_u64")]
    pub cookie: u64,
    pub volume_id: u32,
    #[serde(default)]
    pub kind: PhotoKind,
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// Video chunks in order (empty for a photo).
    #[serde(default)]
    pub chunks: Vec<VideoChunk>,
}

/// `POST /v1/photos` with an idempotency key: a [`CommitRequest`] (its fields at the top level
/// of the same JSON object) that also binds the client's key to this photo. The directory binds
/// a key to at most one photo (a compare-and-set on the key's record, written before the photo
/// record): committing another id under a key already bound (within the idempotency TTL)
/// answers the bound photo when both carry the same `request_hash`, and 409 otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedCommit {
    #[serde(flatten)]
    pub commit: CommitRequest,
    /// The client's Idempotency-Key (1 to 255 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// A digest of the client's request (the uploader: `sha256:` and the hex SHA-256 of the
    /// body), so that a racing retry of the same request is answered the bound photo while
    /// another body under the same key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// Store ids of replicas that have not acknowledged the needles yet (a write committed
    /// under a `quorum` or `one` acknowledgement policy): the directory queues their repair
    /// (copies from a replica that has them) before it records the photo.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "dec_u64_vec")]
    pub pending_replicas: Vec<u64>,
}

/// What `POST /v1/photos/{id}/condemn` found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CondemnState {
    /// A committed, live photo: nothing was condemned (`photo` says which needles it has).
    Live,
    /// A photo that was deleted: its needles are garbage.
    Deleted,
    /// No photo had the id; now none ever will (a tombstone refuses its commit), so its
    /// needles are garbage. Also the answer for an id condemned before.
    Condemned,
}

/// `POST /v1/photos/{id}/condemn` (garbage collection, before deleting an id's needles).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CondemnResponse {
    #[serde(with = "dec_u64")]
    pub id: u64,
    pub state: CondemnState,
    /// The photo, when `live`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo: Option<PhotoInfo>,
}

/// A variant with its read URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantInfo {
    pub name: String,
    pub alt: u32,
    pub size_bytes: u64,
    pub content_type: String,
    pub url: String,
}

/// A video chunk with its read URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub alt: u32,
    pub offset: u64,
    pub size_bytes: u64,
    pub url: String,
}

/// `GET /v1/photos/{id}` (and the answer to a commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoInfo {
    #[serde(with = "dec_u64")]
    pub id: u64,
    #[serde(with = "hex_u64")]
    pub cookie: u64,
    pub volume_id: u32,
    pub kind: PhotoKind,
    pub variants: Vec<VariantInfo>,
    #[serde(default)]
    pub chunks: Vec<ChunkInfo>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Replicas of the photo's logical volume.
    pub replicas: Vec<Replica>,
    /// Whether the logical volume takes writes now (the cache admits only such photos).
    pub volume_writable: bool,
}

/// At most this many ids in one `POST /v1/photos/live`.
pub const MAX_LIVE_BATCH: usize = 512;

/// `POST /v1/photos/live`: which of these photos are live (committed, not deleted) and where.
/// The caches ask it on misses, many photos per request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRequest {
    #[serde(with = "dec_u64_vec")]
    pub ids: Vec<u64>,
}

/// One live photo in a [`LiveResponse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePhoto {
    #[serde(with = "dec_u64")]
    pub id: u64,
    pub volume_id: u32,
    #[serde(with = "hex_u64")]
    pub cookie: u64,
}

/// The answer to a [`LiveRequest`]: the live photos among the ids asked for, in any order;
/// an id left out is not live (never committed, deleted, or unknown), as a 404 from
/// `GET /v1/photos/{id}` would say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveResponse {
    pub live: Vec<LivePhoto>,
}

/// `GET /v1/photos/{id}/url?alt=N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlResponse {
    pub url: String,
}

/// `DELETE /v1/photos/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    #[serde(with = "dec_u64")]
    pub id: u64,
    pub deleted: bool,
    /// Needle deletes the stores acknowledged / refused or could not be reached for.
    pub store_deletes_ok: u32,
    pub store_deletes_failed: u32,
    /// Cache purges acknowledged / failed.
    pub cache_purges_ok: u32,
    pub cache_purges_failed: u32,
}

/// A replica and whether its store machine is up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    #[serde(with = "dec_u64")]
    pub store_id: u64,
    pub url: String,
    pub up: bool,
    /// Whether the store reported this volume in its last heartbeat.
    pub reported: bool,
}

/// An asynchronous remote replica of a logical volume and its lag, as its shipper last
/// reported it (None: no report yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteReplicaStatus {
    #[serde(with = "dec_u64")]
    pub store_id: u64,
    pub url: String,
    pub up: bool,
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    #[serde(default)]
    pub lag_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A rebalance plan (`GET /v1/rebalance`), or what a run did (`POST /v1/rebalance`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalancePlan {
    /// The spread of disk use the plan aims within (fraction of capacity held in replicas,
    /// fullest store minus emptiest).
    pub max_spread: f64,
    /// The spread now, before any move of the plan.
    pub spread: f64,
    pub moves: Vec<RebalanceMove>,
}

/// One replica move of a rebalance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceMove {
    pub volume: u32,
    #[serde(with = "dec_u64")]
    pub from_store_id: u64,
    #[serde(with = "dec_u64")]
    pub to_store_id: u64,
    pub bytes: u64,
    /// After a run: whether the move was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/volumes/{id}/promote`: make an asynchronous remote replica a replica of the
/// volume (the source of repairs after every local replica was lost).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    #[serde(with = "dec_u64")]
    pub store_id: u64,
}

/// `GET /v1/volumes` and `GET /v1/volumes/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalVolumeInfo {
    pub id: u32,
    /// The recorded state (an operator's seal is recorded here).
    pub state: VolumeState,
    /// The state uploads see now: read-only while a replica is down, full or not created yet.
    pub effective_state: VolumeState,
    pub writable: bool,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub replicas: Vec<ReplicaStatus>,
    /// Asynchronous replicas in remote zones (issue 13): never read while a local replica
    /// serves, written by shipping, not by uploads; with how far behind each is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_replicas: Vec<RemoteReplicaStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set when the volume is erasure-coded: `replicas` are then its shards' stores, in shard
    /// order (0..k data, k..k+m parity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec: Option<EcScheme>,
    /// Stores still holding a copy a move replaced (drain, rebalance, re-replication,
    /// replace): never read but as a last-resort repair source, dropped once no repair of
    /// the volume needs it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_away: Vec<u64>,
}

/// An erasure-coded volume's scheme (issue 14; docs/FORMAT.md, "Erasure-coded volumes").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcScheme {
    pub k: u8,
    pub m: u8,
    pub block_bytes: u64,
    pub generation: u32,
    /// Store ids of the replicas the volume had before it was encoded, not yet dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<u64>,
}

/// `POST /v1/volumes/{id}/encode`: erasure-code a sealed volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeRequest {
    pub k: u8,
    pub m: u8,
    /// Block size (default 1 GiB, f4's).
    #[serde(default = "default_block_bytes")]
    pub block_bytes: u64,
    /// On an erasure-coded volume: encode its live needles again as a new generation (with
    /// this scheme), so that deleted needles' space comes back.
    #[serde(default)]
    pub reencode: bool,
}

fn default_block_bytes() -> u64 {
    1 << 30
}

/// What an encode did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeReport {
    pub volume: u32,
    pub k: u8,
    pub m: u8,
    pub block_bytes: u64,
    pub generation: u32,
    /// Store ids of the shards, in shard order.
    pub shards: Vec<u64>,
    pub needles: u64,
    /// Deletes the replicas had that the shards were given after the switch.
    pub deletes_carried: u64,
    /// Replicas dropped.
    pub replicas_dropped: u64,
    /// Already erasure-coded: only leftovers (replicas, staging) were cleaned up.
    pub already: bool,
    /// Bytes of shard files before and after (all shards; 0 when unknown).
    #[serde(default)]
    pub shard_bytes_before: u64,
    #[serde(default)]
    pub shard_bytes_after: u64,
}

/// `POST /v1/volumes/{id}/ec/rebuild`: rebuild shard `shard` (on store `to`, or one the
/// placement picks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcRebuildRequest {
    pub shard: u16,
    #[serde(default)]
    pub to: Option<u64>,
}

/// Liveness of a store machine as the directory sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    Up,
    Down,
}

/// Where a store machine is in its life as an operator set it: `active` (takes new replicas),
/// `draining` (`haystack store drain`: takes no new replicas while the directory moves every
/// replica it holds onto other machines), `retired` (holds nothing; may be removed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreLifecycle {
    #[default]
    Active,
    Draining,
    Retired,
}

/// `POST /v1/stores/{id}/lifecycle`: `draining` starts a drain, `active` stops one (or brings a
/// retired store back); `retired` is set by the directory once a drain has emptied the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLifecycleRequest {
    pub lifecycle: StoreLifecycle,
}

/// `GET /v1/stores`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    #[serde(with = "dec_u64")]
    pub store_id: u64,
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
    pub volumes: Vec<u32>,
    /// Active, draining or retired (older directories: active).
    #[serde(default)]
    pub lifecycle: StoreLifecycle,
    /// Logical volumes with a replica (or shard) on this store in the directory's records,
    /// whatever the store reported: what a drain still has to move.
    #[serde(default)]
    pub replicas: u32,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryHealth {
    /// `ok` or `degraded` (the metadata backend does not answer).
    pub status: String,
    pub backend: String,
    pub stores_up: u32,
    pub writable_volumes: u32,
    /// Process id of the directory (lets a launcher or test tell its own process from
    /// another one that took the port).
    #[serde(default)]
    pub pid: u32,
    /// Whether this instance holds the coordinator lease: with several directories over one
    /// metadata store, only the coordinator runs the background work (docs/directory.md).
    #[serde(default)]
    pub coordinator: bool,
}

/// `POST /v1/volumes/{id}/state`: an operator sets a logical volume's recorded state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStateRequest {
    pub state: VolumeState,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/volumes/{id}/replace`: point a replica at another store machine (repair, after the
/// volume was copied onto it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceReplicaRequest {
    #[serde(with = "dec_u64")]
    pub from_store_id: u64,
    #[serde(with = "dec_u64")]
    pub to_store_id: u64,
}

/// What a reader or a scrubber found wrong with one replica of a needle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// The needle failed a check (CRC, header, key): never served, to be rewritten.
    Corrupt,
    /// The replica does not have the needle (404) while another one does.
    Missing,
}

/// `POST /v1/repairs`: one replica of a needle is damaged or missing. The directory checks the
/// report against its own records (a live photo with that cookie and alternate key, a
/// replica of that volume) before it queues a repair, so a wrong report changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamageReport {
    pub volume: u32,
    #[serde(with = "dec_u64")]
    pub key: u64,
    pub alt: u32,
    /// The cookie the reader used; a scrubber (which reads no cookie) sends none.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex_u64")]
    pub cookie: Option<u64>,
    /// Base URL of the damaged replica's store.
    pub store_url: String,
    pub kind: DamageKind,
}

/// The answer to a [`DamageReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamageReply {
    /// A repair is queued (or was already).
    pub queued: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a queued repair does to one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairAction {
    /// Copy the photo's needles onto the replica from one that has them intact.
    Copy,
    /// Delete the photo's needles on the replica (a delete it missed).
    Delete,
}

/// One queued repair (`GET /v1/repairs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairTaskInfo {
    #[serde(with = "dec_u64")]
    pub photo_id: u64,
    pub volume: u32,
    #[serde(with = "dec_u64")]
    pub store_id: u64,
    pub action: RepairAction,
    pub reason: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How many buckets anti-entropy's second digest round asks for, for a volume of `needles`
/// needles: about 256 needles a bucket (so a differing bucket lists a few KiB), 256 to
/// 65,536 buckets (so the digests stay small).
pub fn digest_buckets(needles: u64) -> u32 {
    (needles / 256).next_power_of_two().clamp(256, 65_536) as u32
}

/// The most buckets one needle listing may name.
pub const MAX_LISTED_BUCKETS: usize = 1024;

/// Optional u64 as a hex string (cookies).
pub mod opt_hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&format!("{v:016x}")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(t) => super::hex_u64::parse(&t)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("cookie must be 16 lowercase hex digits")),
        }
    }
}

/// Serde helpers: a list of u64 ids as decimal strings.
pub mod dec_u64_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|_| serde::de::Error::custom("expected a decimal id string"))
            })
            .collect()
    }
}
