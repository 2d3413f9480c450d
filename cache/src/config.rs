//! `CacheConfig`: every setting of a cache node with its default, validated once at start-up,
//! plus the small parsers it needs (byte sizes like `1GiB`, source CIDRs).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::CacheError;

/// Which needles the cache keeps after a miss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Haystack's policy: keep a needle only when the request came straight from a user (not
    /// a CDN) and its logical volume is write-enabled (recent photos are the hot ones; a CDN
    /// caches what it fetched itself).
    #[default]
    Haystack,
    /// Keep every needle fetched.
    All,
    /// Keep nothing: every request reads a store (still coalesced).
    None,
}

impl Admission {
    /// Whether a needle fetched for this request is kept.
    pub fn admits(self, from_cdn: bool, volume_writable: bool) -> bool {
        match self {
            Admission::Haystack => !from_cdn && volume_writable,
            Admission::All => true,
            Admission::None => false,
        }
    }
}

/// Every setting of a cache node. Every field is optional in JSON; the defaults are below.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Base URL of the directory (volume replicas, video chunk lists, liveness). Give it, or
    /// `directory_urls`, not both; with neither the directory is `http://127.0.0.1:8082`.
    /// Default none.
    pub directory_url: Option<String>,
    /// Base URLs of several equivalent directories (instances over one ScyllaDB keyspace),
    /// tried in this order: requests go to the first that answers and stay with it until it
    /// fails (docs/ARCHITECTURE.md, client/). Default none.
    pub directory_urls: Option<Vec<String>>,
    /// Bytes of memory for cached needles: data plus a fixed [`ENTRY_OVERHEAD_BYTES`] per
    /// entry. A number, or a string such as `"1GiB"` or `"512MiB"`. Default 1 GiB.
    #[serde(with = "size_serde")]
    pub capacity_bytes: u64,
    /// Largest needle kept in memory; larger ones are served but not kept. Default 16 MiB
    /// (a video chunk is a few MiB).
    #[serde(with = "size_serde")]
    pub max_entry_bytes: u64,
    /// Independent LRU lists, each with `capacity_bytes / shards` bytes, so that cores do not
    /// queue on one lock. An entry larger than one shard is never kept. Default 16.
    pub shards: usize,
    /// Which needles are kept after a miss. Default `haystack`.
    pub admission: Admission,
    /// A request carrying any of these headers came through a CDN. Default `["CDN-Loop",
    /// "Via", "X-Haystack-Via-Cdn"]` (RFC 8586's CDN-Loop, the proxy header most CDNs add,
    /// and a header a CDN can be told to add). Empty: no header marks a CDN.
    pub cdn_headers: Vec<String>,
    /// A request from a source address in one of these networks (`10.0.0.0/8`, `2001:db8::/32`,
    /// or a single address) came through a CDN. Default empty.
    pub cdn_source_cidrs: Vec<String>,
    /// Base URLs of every cache node of the tier, this one included, for consistent hashing.
    /// Empty (the default): a single node that serves everything itself.
    pub peers: Vec<String>,
    /// This node's URL exactly as it appears in `peers`. Required when `peers` is not empty.
    /// Default none.
    pub self_url: Option<String>,
    /// One read from one store replica (connect, answer and body) gives up after this and the
    /// next replica is tried; a read queued behind others on a pipelined connection
    /// (`StoreReader`) waits at most twice this. Default 2000 ms.
    pub store_timeout_ms: u64,
    /// A directory request gives up after this. Default 2000 ms.
    pub directory_timeout_ms: u64,
    /// A request forwarded to the owning peer gives up when the peer's answer has not begun
    /// after this (the node then serves the request itself), or when its body stops for this
    /// long; a body still flowing is relayed however long the client takes. Default 5000 ms.
    pub peer_timeout_ms: u64,
    /// How long a volume's replicas, a video's chunk list and a photo's liveness from the
    /// directory are trusted before they are asked for again (replicas sooner after a replica
    /// fails). Default 30000 ms.
    pub directory_info_ttl_ms: u64,
    /// On a miss, also ask the directory (once per photo per `directory_info_ttl_ms`, in
    /// parallel with the store read) whether the photo is live with this volume and cookie,
    /// so that a needle a store kept after a delete it missed is never served. When the
    /// directory cannot be reached the needle is served (and a warning logged), but with
    /// `Cache-Control: public, max-age=60` instead of a year, and not kept. Default true.
    pub check_live_on_miss: bool,
    /// With `check_live_on_miss`: a hit on a needle read from a store (or last found live)
    /// longer ago than this asks the directory afresh (not the per-photo liveness remembered
    /// for misses, which could be older than the delete; the answer refreshes it), and a photo
    /// no longer live is dropped and answered 404. Hits need no check while purges arrive;
    /// this bounds how long a node a purge did not reach (a peer unreachable during the
    /// fan-out, a node the directory does not know) serves a deleted photo. 0 never asks. Default 60000 ms.
    pub recheck_hits_after_ms: u64,
    /// `Retry-After` seconds on a 503 (every replica or the directory unreachable). Default 1.
    pub retry_after_secs: u64,
    /// HTTP worker threads; 0 means one per core. Default 0.
    pub http_workers: usize,
    /// Seconds in-flight requests get to finish on shutdown. Default 10.
    pub shutdown_timeout_secs: u64,
    /// The cluster's keys and the audit log (not in the config file: `haystack` reads the
    /// secret from its own file or the environment).
    #[serde(skip)]
    pub security: haystack_service::auth::Security,
}

/// Bytes charged per cached entry beyond its data (key, headers, list links).
pub const ENTRY_OVERHEAD_BYTES: u64 = 256;

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            directory_url: None,
            directory_urls: None,
            capacity_bytes: 1 << 30,
            max_entry_bytes: 16 << 20,
            shards: 16,
            admission: Admission::Haystack,
            cdn_headers: vec!["CDN-Loop".into(), "Via".into(), "X-Haystack-Via-Cdn".into()],
            cdn_source_cidrs: Vec::new(),
            peers: Vec::new(),
            self_url: None,
            store_timeout_ms: 2_000,
            directory_timeout_ms: 2_000,
            peer_timeout_ms: 5_000,
            directory_info_ttl_ms: 30_000,
            check_live_on_miss: true,
            recheck_hits_after_ms: 60_000,
            retry_after_secs: 1,
            http_workers: 0,
            shutdown_timeout_secs: 10,
            security: Default::default(),
        }
    }
}

impl CacheConfig {
    /// The directories, in the order they are tried: `directory_urls`, or `directory_url`,
    /// or `http://127.0.0.1:8082`; each an http(s) URL, none twice.
    pub fn directories(&self) -> Result<Vec<String>, CacheError> {
        haystack_client::directory::resolve_urls(
            self.directory_url.as_deref(),
            self.directory_urls.as_deref(),
        )
        .map_err(CacheError::Config)
    }

    /// Checks every field once, at start-up; the error names the field.
    pub fn validate(&self) -> Result<(), CacheError> {
        let bad = |m: String| Err(CacheError::Config(m));
        self.directories()?;
        if self.shards == 0 || self.shards > 4096 {
            return bad(format!("shards must be 1..=4096, not {}", self.shards));
        }
        if self.capacity_bytes < self.shards as u64 {
            return bad(format!(
                "capacity_bytes {} is smaller than the shard count",
                self.capacity_bytes
            ));
        }
        for h in &self.cdn_headers {
            if actix_web::http::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return bad(format!("cdn_headers: {h:?} is not a header name"));
            }
        }
        for c in &self.cdn_source_cidrs {
            Cidr::parse(c).map_err(|e| CacheError::Config(format!("cdn_source_cidrs: {e}")))?;
        }
        for p in &self.peers {
            if !p.starts_with("http://") && !p.starts_with("https://") {
                return bad(format!("peers: {p:?} is not an http(s) URL"));
            }
        }
        if !self.peers.is_empty() {
            let Some(me) = &self.self_url else {
                return bad("self_url is required when peers are configured".into());
            };
            let me = me.trim_end_matches('/');
            if !self.peers.iter().any(|p| p.trim_end_matches('/') == me) {
                return bad(format!("self_url {me:?} is not one of the peers"));
            }
        }
        for (name, v) in [
            ("store_timeout_ms", self.store_timeout_ms),
            ("directory_timeout_ms", self.directory_timeout_ms),
            ("peer_timeout_ms", self.peer_timeout_ms),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

/// Parses a byte size: a number with an optional unit. `K`, `M`, `G`, `T` and `KiB`, `MiB`,
/// `GiB`, `TiB` are powers of 1024; `KB`, `MB`, `GB`, `TB` are powers of 1000; `B` or no unit
/// is bytes. Case-insensitive, spaces allowed between number and unit, fractions allowed
/// (`1.5GiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("{s:?}: unknown size unit {unit:?}")),
    };
    if num.is_empty() {
        return Err(format!("{s:?} is not a size"));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("{s:?} is too large"));
    }
    let f: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let v = f * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(v as u64)
}

/// Serde for sizes: written as a number, read as a number or a [`parse_size`] string.
mod size_serde {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(u64),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => Ok(n),
            NumOrStr::Str(s) => super::parse_size(&s).map_err(de::Error::custom),
        }
    }
}

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a single address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?,
        };
        Ok(Cidr { net, prefix })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1 gib"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10B"), Ok(10));
        assert!(parse_size("").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn config_json() {
        let c: CacheConfig =
            serde_json::from_str(r#"{"capacity_bytes": "256MiB", "admission": "all"}"#).unwrap();
        assert_eq!(c.capacity_bytes, 256 << 20);
        assert_eq!(c.admission, Admission::All);
        assert_eq!(c.max_entry_bytes, CacheConfig::default().max_entry_bytes);
        let c: CacheConfig = serde_json::from_str(r#"{"capacity_bytes": 1000}"#).unwrap();
        assert_eq!(c.capacity_bytes, 1000);
        assert!(serde_json::from_str::<CacheConfig>(r#"{"capacity": 1}"#).is_err());
        CacheConfig::default().validate().unwrap();
        let round: CacheConfig =
            serde_json::from_str(&serde_json::to_string(&CacheConfig::default()).unwrap()).unwrap();
        assert_eq!(round, CacheConfig::default());
    }

    #[test]
    fn validation() {
        let peers = CacheConfig {
            peers: vec!["http://a:1".into(), "http://b:2".into()],
            ..Default::default()
        };
        assert!(peers.validate().is_err());
        let ok = CacheConfig {
            self_url: Some("http://b:2/".into()),
            ..peers.clone()
        };
        ok.validate().unwrap();
        let stranger = CacheConfig {
            self_url: Some("http://c:3".into()),
            ..peers
        };
        assert!(stranger.validate().is_err());
        let cidr = CacheConfig {
            cdn_source_cidrs: vec!["10.0.0.0/33".into()],
            ..Default::default()
        };
        assert!(cidr.validate().is_err());
    }

    #[test]
    fn one_directory_or_a_list() {
        let c: CacheConfig = serde_json::from_str(r#"{"directory_url": "http://d:1/"}"#).unwrap();
        assert_eq!(c.directories().unwrap(), vec!["http://d:1".to_string()]);
        let c: CacheConfig =
            serde_json::from_str(r#"{"directory_urls": ["http://d:1", "https://e:2"]}"#).unwrap();
        assert_eq!(c.directories().unwrap(), vec!["http://d:1", "https://e:2"]);
        c.validate().unwrap();
        for bad in [
            r#"{"directory_url": "http://d:1", "directory_urls": ["http://e:2"]}"#,
            r#"{"directory_urls": []}"#,
            r#"{"directory_urls": ["http://d:1", "http://d:1/"]}"#,
            r#"{"directory_urls": ["d:1"]}"#,
        ] {
            let c: CacheConfig = serde_json::from_str(bad).unwrap();
            let e = c.validate().expect_err(bad).to_string();
            assert!(e.contains("directory"), "{bad}: {e}");
        }
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("nope/8").is_err());
    }
}
