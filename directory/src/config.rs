//! The directory's configuration: a serde struct with a default for every field, validated once
//! at start-up, and the `--metadata` URL (`embedded:DIR` or `scylla://host:port[,..]/keyspace`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::DirectoryError;

/// Configuration of one directory instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Where the metadata lives: `embedded:DIR` (redb file under DIR, the default:
    /// `embedded:./data/directory`) or `scylla://host:port[,host:port]/keyspace`.
    pub metadata: String,
    /// Replicas per logical volume (R). Default 3, as in Haystack.
    pub replication_factor: usize,
    /// Seconds between heartbeats the stores are told to keep. Default 5.
    pub heartbeat_interval_secs: u64,
    /// A store silent for longer than this is marked down and its volumes turn read-only.
    /// Default 20000 (four missed heartbeats).
    pub store_timeout_ms: u64,
    /// Period of the maintenance loop (refresh from the metadata store, liveness sweep, volume
    /// creation, node-id lease renewal). Default 1000.
    pub maintenance_interval_ms: u64,
    /// Size planned for a new logical volume when choosing machines with room for it; the stores
    /// report the real size in their heartbeats. Default 1 GiB.
    pub volume_capacity_bytes: u64,
    /// A volume with this fraction of its capacity used no longer takes uploads. Default 0.95.
    pub full_fraction: f64,
    /// Keep at least this many logical volumes writable (or being created). Default 2.
    pub min_writable_volumes: usize,
    /// Also create volumes when the writable volumes together have less room than this.
    /// Default 256 MiB.
    pub min_writable_free_bytes: u64,
    /// And keep the writable room at least this many seconds of the recent write rate (the
    /// bytes assigned here per second, or the growth of the volumes the stores report,
    /// whichever is higher), so that a burst of uploads never waits for a volume to be made.
    /// It covers the stores' heartbeat lag and the creation of a volume. 0: off (only the two
    /// rules above). Default 15.
    pub writable_headroom_secs: u64,
    /// This instance's node id in photo ids (0..=1023). Default none: claim a free one with a
    /// lease in the metadata store, which is what several instances over ScyllaDB need.
    pub node_id: Option<u16>,
    /// Base URL of the cache tier for read URLs, e.g. `http://127.0.0.1:8070`. Default none.
    pub cache_url: Option<String>,
    /// CDN prefix for read URLs (takes precedence over `cache_url`), e.g.
    /// `https://cdn.example.com/hs`. Default none.
    pub cdn_prefix: Option<String>,
    /// Cache base URLs told to purge a deleted photo (`DELETE {base}/v1/needles/...`).
    /// Default: `cache_url` alone when set.
    pub cache_purge_urls: Vec<String>,
    /// Timeout in ms for the best-effort delete notifications to stores and caches. Default 2000.
    pub notify_timeout_ms: u64,
    /// How long an idempotency key stays bound to the photo committed under it, in ms (from
    /// the commit). Default 86400000 (a day).
    pub idempotency_ttl_ms: u64,
    /// Automatic re-replication: a store down for longer than this many ms has each of its
    /// replicas copied from a healthy replica onto another store, which then replaces it.
    /// 0 turns it off. Default 900000 (15 minutes: a reboot is not a reason to copy).
    pub rereplicate_after_ms: u64,
    /// A replica's old copy, once a move replaced it, is kept this many ms (a last-resort
    /// source for the repairs the move queued), then dropped by the repair worker when no
    /// repair of its volume is queued. Default 600000 (10 minutes).
    pub moved_copy_keep_ms: u64,
    /// Anti-entropy: every this many ms the replicas of each volume are compared by digests
    /// of their needle lists and the differences repaired. 0 turns it off. Default 600000.
    pub anti_entropy_interval_ms: u64,
    /// Zones whose stores hold only asynchronous remote replicas (issue 13): never a
    /// synchronous replica, never written by uploads; each volume's appends are shipped to
    /// them in order. Empty (the default): no remote replicas.
    pub remote_zones: Vec<String>,
    /// Asynchronous remote replicas per replicated logical volume, placed on stores in
    /// `remote_zones` (distinct zones where there are several). Default 1.
    pub async_replicas: usize,
    /// Automatic erasure coding (issue 14, f4's warm storage): a sealed volume sealed this many
    /// seconds ago (or created, when sealed before the time was recorded) is encoded with
    /// `encode_scheme` by a background worker. 0 turns it off (the default): encoding is then
    /// only `haystack volume encode`.
    pub encode_after_secs: u64,
    /// The scheme of automatic encodes, `k+m` (k data and m parity shards on k + m distinct
    /// stores). Default `10+4`.
    pub encode_scheme: String,
    /// Block size of automatic encodes (a multiple of 4096 from 64 KiB to 4 GiB). Default
    /// 1 GiB, f4's.
    pub encode_block_bytes: u64,
    /// Placement of new volumes' replicas: `spread` (the default: distinct zones and racks,
    /// then the most free space) or `chained` (chained declustering, as in Petal: the stores
    /// outside remote zones form a ring in store-id order, each new volume starts on the
    /// machine after the previous volume's first replica and its other replicas go on the next
    /// machines clockwise, a machine that cannot take one skipped; a lost machine's reads then
    /// fall on its two ring neighbours). Under `chained`, re-replication and drain put a
    /// replacement on the nearest eligible machine after the lost one (the chain restored);
    /// rebalancing moves by disk use and does not keep the chain.
    pub placement: crate::placement::Policy,
    /// Rebalancing: replicas move from the fullest store to the emptiest until the spread of
    /// disk use (fraction of capacity held in replicas, fullest minus emptiest) is within
    /// this. Default 0.10.
    pub rebalance_spread: f64,
    /// Automatic rebalancing: at most one move per this many ms (throttling: each move is a
    /// bulk copy of a volume, with the volume read-only meanwhile). 0, the default, leaves
    /// rebalancing to `haystack rebalance` (as HDFS and SeaweedFS do): a new machine gets new
    /// volumes at once, and moving old ones is an operator's call. 60000 is a sensible value.
    pub rebalance_interval_ms: u64,
    /// Every metadata-store call gives up after this many ms and answers 503. Default 5000.
    pub metadata_timeout_ms: u64,
    /// actix-web worker threads. Default 2.
    pub http_workers: usize,
    /// ScyllaDB settings (used with a `scylla://` metadata URL).
    pub scylla: ScyllaConfig,
    /// The cluster's keys and the audit log (not in the config file: `haystack` reads the
    /// secret from its own file or the environment).
    #[serde(skip)]
    pub security: haystack_service::auth::Security,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            metadata: "embedded:./data/directory".to_string(),
            replication_factor: 3,
            heartbeat_interval_secs: 5,
            store_timeout_ms: 20_000,
            maintenance_interval_ms: 1_000,
            volume_capacity_bytes: 1 << 30,
            full_fraction: 0.95,
            min_writable_volumes: 2,
            min_writable_free_bytes: 256 << 20,
            writable_headroom_secs: 15,
            node_id: None,
            cache_url: None,
            cdn_prefix: None,
            cache_purge_urls: Vec::new(),
            notify_timeout_ms: 2_000,
            idempotency_ttl_ms: 86_400_000,
            rereplicate_after_ms: 900_000,
            moved_copy_keep_ms: 600_000,
            anti_entropy_interval_ms: 600_000,
            remote_zones: Vec::new(),
            placement: crate::placement::Policy::Spread,
            rebalance_spread: 0.10,
            rebalance_interval_ms: 0,
            async_replicas: 1,
            encode_after_secs: 0,
            encode_scheme: "10+4".to_string(),
            encode_block_bytes: 1 << 30,
            metadata_timeout_ms: 5_000,
            http_workers: 2,
            scylla: ScyllaConfig::default(),
            security: Default::default(),
        }
    }
}

/// ScyllaDB (or Cassandra) backend settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaConfig {
    /// The replication map for `CREATE KEYSPACE IF NOT EXISTS`. Default
    /// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`; use 1 for a single node.
    pub replication: String,
    /// Extra keyspace options appended with `AND`, e.g. `tablets = {'enabled': false}` on a
    /// ScyllaDB version that refuses LWT on tablet keyspaces. Default empty.
    pub keyspace_options: String,
    /// Consistency of reads and writes: `local_quorum` (default), `quorum` or `all` (`one`
    /// and `local_one` are refused: a read at them may miss the last conditional write;
    /// `each_quorum` too: ScyllaDB takes it for writes only). Conditional writes use
    /// LOCAL_SERIAL for their Paxos round: one datacenter's replicas decide them.
    pub consistency: String,
    /// Client-side timeout of one request, retries included, in ms. Default 5000.
    pub request_timeout_ms: u64,
    /// Timeout to open a connection, in ms. Default 5000.
    pub connect_timeout_ms: u64,
    /// Rows of an ordered keyspace (S3 objects) past which its range partition is split in
    /// two. Default 100000.
    pub kv_split_rows: u64,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
                .to_string(),
            keyspace_options: String::new(),
            consistency: "local_quorum".to_string(),
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            kv_split_rows: 100_000,
        }
    }
}

/// A parsed `metadata` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataUrl {
    /// The redb file lives in this directory.
    Embedded(PathBuf),
    /// `host:port` contact points and the keyspace.
    Scylla {
        hosts: Vec<String>,
        keyspace: String,
    },
}

impl MetadataUrl {
    pub fn parse(s: &str) -> Result<Self, DirectoryError> {
        let bad = |why: &str| DirectoryError::Config(format!("metadata {s:?}: {why}"));
        if let Some(dir) = s.strip_prefix("embedded:") {
            if dir.is_empty() {
                return Err(bad("embedded: needs a directory"));
            }
            return Ok(Self::Embedded(PathBuf::from(dir)));
        }
        if let Some(rest) = s.strip_prefix("scylla://") {
            let (hosts, keyspace) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected scylla://host:port[,host:port]/keyspace"))?;
            let hosts: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect();
            if hosts.is_empty() {
                return Err(bad("no host"));
            }
            for h in &hosts {
                let port_ok = h
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(bad("every host needs host:port"));
                }
            }
            if !valid_keyspace(keyspace) {
                return Err(bad(
                    "keyspace must be 1-48 characters of a-z, 0-9 and _, starting with a letter",
                ));
            }
            return Ok(Self::Scylla {
                hosts,
                keyspace: keyspace.to_string(),
            });
        }
        Err(bad("expected embedded:DIR or scylla://host:port/keyspace"))
    }
}

fn valid_keyspace(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 48
        && k.as_bytes()[0].is_ascii_lowercase()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl DirectoryConfig {
    /// Whether a store in `zone` holds only asynchronous remote replicas.
    pub fn is_remote_zone(&self, zone: Option<&str>) -> bool {
        zone.is_some_and(|z| self.remote_zones.iter().any(|r| r == z))
    }
}

impl DirectoryConfig {
    /// Checks every field once at start-up.
    pub fn validate(&self) -> Result<MetadataUrl, DirectoryError> {
        let bad = |why: String| Err(DirectoryError::Config(why));
        let url = MetadataUrl::parse(&self.metadata)?;
        if matches!(url, MetadataUrl::Scylla { .. }) {
            crate::meta::scylla::parse_consistency(&self.scylla.consistency)
                .map_err(|e| DirectoryError::Config(format!("scylla.consistency: {e}")))?;
        }
        if self.replication_factor == 0 || self.replication_factor > 16 {
            return bad(format!(
                "replication_factor {} must be 1..=16",
                self.replication_factor
            ));
        }
        if self.heartbeat_interval_secs == 0 {
            return bad("heartbeat_interval_secs must be > 0".into());
        }
        if self.store_timeout_ms == 0 || self.maintenance_interval_ms == 0 {
            return bad("store_timeout_ms and maintenance_interval_ms must be > 0".into());
        }
        if !(self.full_fraction > 0.0 && self.full_fraction <= 1.0) {
            return bad(format!(
                "full_fraction {} must be in (0, 1]",
                self.full_fraction
            ));
        }
        if self.volume_capacity_bytes == 0 {
            return bad("volume_capacity_bytes must be > 0".into());
        }
        if self.node_id.is_some_and(|n| n > crate::ids::MAX_NODE_ID) {
            return bad(format!("node_id must be 0..={}", crate::ids::MAX_NODE_ID));
        }
        if self.metadata_timeout_ms == 0 {
            return bad("metadata_timeout_ms must be > 0".into());
        }
        if self.http_workers == 0 {
            return bad("http_workers must be > 0".into());
        }
        self.encode_request()?;
        for u in self
            .cache_url
            .iter()
            .chain(self.cdn_prefix.iter())
            .chain(self.cache_purge_urls.iter())
        {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad(format!("{u:?} is not an http(s) URL"));
            }
        }
        Ok(url)
    }

    /// The request of an automatic encode: `encode_scheme` and `encode_block_bytes`, checked.
    pub fn encode_request(
        &self,
    ) -> Result<haystack_proto::directory::EncodeRequest, DirectoryError> {
        let bad = |why: String| DirectoryError::Config(why);
        let (k, m) = self
            .encode_scheme
            .split_once('+')
            .and_then(|(k, m)| Some((k.trim().parse::<u8>().ok()?, m.trim().parse::<u8>().ok()?)))
            .ok_or_else(|| {
                bad(format!(
                    "encode_scheme {:?} is not k+m (e.g. 10+4)",
                    self.encode_scheme
                ))
            })?;
        let req = haystack_proto::directory::EncodeRequest {
            k,
            m,
            block_bytes: self.encode_block_bytes,
            reencode: false,
        };
        crate::service::check_scheme(&req).map_err(|e| bad(format!("encode_scheme: {e}")))?;
        Ok(req)
    }

    /// The caches told to purge on delete.
    pub fn purge_targets(&self) -> Vec<String> {
        if self.cache_purge_urls.is_empty() {
            self.cache_url.iter().cloned().collect()
        } else {
            self.cache_purge_urls.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_parse() {
        assert_eq!(
            MetadataUrl::parse("embedded:/tmp/x").ok(),
            Some(MetadataUrl::Embedded("/tmp/x".into()))
        );
        assert_eq!(
            MetadataUrl::parse("scylla://a:9042,b:9042/haystack").ok(),
            Some(MetadataUrl::Scylla {
                hosts: vec!["a:9042".into(), "b:9042".into()],
                keyspace: "haystack".into()
            })
        );
        for bad in [
            "embedded:",
            "scylla://a:9042",
            "scylla:///ks",
            "scylla://a/ks",
            "scylla://a:9042/Bad-Name",
            "postgres://x",
        ] {
            assert!(MetadataUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// Regression: `consistency = "one"` was accepted, and a read at ONE may miss the last
    /// conditional write (a deleted photo read as live). Both single-replica levels are
    /// refused with the reason, at validation, before any connection.
    #[test]
    fn scylla_consistency_that_can_miss_a_write_is_refused() {
        for (level, ok, why) in [
            ("one", false, "older than"),
            ("LOCAL_ONE", false, "older than"),
            ("local_quorum", true, ""),
            ("quorum", true, ""),
            ("all", true, ""),
            ("each_quorum", false, "for reads"),
        ] {
            let mut c = DirectoryConfig {
                metadata: "scylla://127.0.0.1:9042/haystack".into(),
                ..Default::default()
            };
            c.scylla.consistency = level.into();
            match c.validate() {
                Ok(_) => assert!(ok, "{level} accepted"),
                Err(e) => {
                    assert!(!ok, "{level} refused: {e}");
                    assert!(e.to_string().contains(why), "{e}");
                }
            }
        }
        // The embedded backend has no such setting to check.
        let mut c = DirectoryConfig::default();
        c.scylla.consistency = "one".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn default_config_is_valid_and_round_trips() {
        let c = DirectoryConfig::default();
        assert!(c.validate().is_ok());
        let json = serde_json::to_string(&c).expect("serialize");
        let back: DirectoryConfig = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, c);
        let partial: DirectoryConfig =
            serde_json::from_str(r#"{"replication_factor": 2}"#).expect("partial");
        assert_eq!(partial.replication_factor, 2);
        let chained: DirectoryConfig =
            serde_json::from_str(r#"{"placement": "chained"}"#).expect("placement");
        assert_eq!(chained.placement, crate::placement::Policy::Chained);
        assert!(serde_json::from_str::<DirectoryConfig>(r#"{"placement": "ring"}"#).is_err());
        assert!(serde_json::from_str::<DirectoryConfig>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let c = DirectoryConfig {
            replication_factor: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = DirectoryConfig {
            cache_url: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        for bad in ["10", "10+0", "0+4", "60+5", "a+b"] {
            let c = DirectoryConfig {
                encode_scheme: bad.into(),
                ..Default::default()
            };
            assert!(c.validate().is_err(), "encode_scheme {bad:?} accepted");
        }
        let c = DirectoryConfig {
            encode_block_bytes: 1000,
            ..Default::default()
        };
        assert!(c.validate().is_err(), "a block size not a multiple of 4096");
        let c = DirectoryConfig {
            encode_scheme: " 4 + 2 ".into(),
            ..Default::default()
        };
        let r = c.encode_request().expect("4+2");
        assert_eq!(
            (r.k, r.m, r.block_bytes, r.reencode),
            (4, 2, 1 << 30, false)
        );
    }
}
