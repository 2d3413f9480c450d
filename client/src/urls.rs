//! Every URL one service builds to call another (or hands out for others to call): the one
//! place the `/v1/...` paths of docs/API.md are written on the client side. A base is a
//! scheme, host and port (`http://127.0.0.1:8080`); a trailing `/` is ignored.

use haystack_proto::{format_cookie, NeedleAddr};

fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// A needle on a store, or on the cache tier (both serve the same path).
pub fn needle(base: &str, addr: &NeedleAddr) -> String {
    join(base, &addr.path())
}

/// The directory's API.
pub mod directory {
    use super::join;

    pub fn register(base: &str) -> String {
        join(base, "/v1/stores/register")
    }
    pub fn heartbeat(base: &str, store_id: u64) -> String {
        join(base, &format!("/v1/stores/{store_id}/heartbeat"))
    }
    pub fn stores(base: &str) -> String {
        join(base, "/v1/stores")
    }
    pub fn store(base: &str, id: u64) -> String {
        join(base, &format!("/v1/stores/{id}"))
    }
    pub fn store_lifecycle(base: &str, id: u64) -> String {
        join(base, &format!("/v1/stores/{id}/lifecycle"))
    }
    pub fn assign(base: &str) -> String {
        join(base, "/v1/assign")
    }
    /// `POST` commits a photo.
    pub fn photos(base: &str) -> String {
        join(base, "/v1/photos")
    }
    pub fn photo(base: &str, id: u64) -> String {
        join(base, &format!("/v1/photos/{id}"))
    }
    /// `POST`: which of many photos are live.
    pub fn photos_live(base: &str) -> String {
        join(base, "/v1/photos/live")
    }
    pub fn photo_url(base: &str, id: u64, alt: u32) -> String {
        join(base, &format!("/v1/photos/{id}/url?alt={alt}"))
    }
    pub fn condemn(base: &str, id: u64) -> String {
        join(base, &format!("/v1/photos/{id}/condemn"))
    }
    pub fn volumes(base: &str) -> String {
        join(base, "/v1/volumes")
    }
    pub fn volume(base: &str, id: u32) -> String {
        join(base, &format!("/v1/volumes/{id}"))
    }
    pub fn volume_state(base: &str, id: u32) -> String {
        join(base, &format!("/v1/volumes/{id}/state"))
    }
    pub fn volume_replace(base: &str, id: u32) -> String {
        join(base, &format!("/v1/volumes/{id}/replace"))
    }
    /// `POST` erasure-codes a sealed volume.
    pub fn volume_encode(base: &str, id: u32) -> String {
        join(base, &format!("/v1/volumes/{id}/encode"))
    }
    /// `POST` makes an asynchronous remote replica a replica of the volume.
    pub fn volume_promote(base: &str, id: u32) -> String {
        join(base, &format!("/v1/volumes/{id}/promote"))
    }
    /// `POST` rebuilds a shard of an erasure-coded volume.
    pub fn volume_ec_rebuild(base: &str, id: u32) -> String {
        join(base, &format!("/v1/volumes/{id}/ec/rebuild"))
    }
    /// `POST` reports a damaged or missing replica of a needle; `GET` lists the repair queue.
    pub fn repairs(base: &str) -> String {
        join(base, "/v1/repairs")
    }
    /// `GET` the rebalance plan, `POST` runs it; `spread` overrides the configured one.
    pub fn rebalance(base: &str, spread: Option<f64>) -> String {
        match spread {
            Some(s) => join(base, &format!("/v1/rebalance?spread={s}")),
            None => join(base, "/v1/rebalance"),
        }
    }
    pub fn health(base: &str) -> String {
        join(base, "/health")
    }
    /// A record of an ordered keyspace (`?key=`, and `&version=` for a delete).
    pub fn kv(base: &str, space: u64, params: &[(&str, &str)]) -> String {
        with_query(join(base, &format!("/v1/kv/{space}")), params)
    }
    /// A write of a record whatever its version (`PUT`, [`haystack_proto::kv::KvReplace`]).
    pub fn kv_replace(base: &str, space: u64, key: &str) -> String {
        with_query(
            join(base, &format!("/v1/kv/{space}/replace")),
            &[("key", key)],
        )
    }
    /// A scan of an ordered keyspace.
    pub fn kv_scan(base: &str, space: u64, params: &[(&str, &str)]) -> String {
        with_query(join(base, &format!("/v1/kv/{space}/scan")), params)
    }

    /// `url` with the query parameters, form-encoded.
    fn with_query(url: String, params: &[(&str, &str)]) -> String {
        match reqwest::Url::parse(&url) {
            Ok(mut u) => {
                {
                    let mut q = u.query_pairs_mut();
                    for (k, v) in params {
                        q.append_pair(k, v);
                    }
                }
                u.to_string()
            }
            Err(_) => url,
        }
    }
}

/// A store machine's API (needles are [`super::needle`]).
pub mod store {
    use super::join;

    /// `GET` lists the store's volumes.
    pub fn volumes(base: &str) -> String {
        join(base, "/v1/volumes")
    }
    /// `GET` describes, `POST` creates the volume.
    pub fn volume(base: &str, id: u32) -> String {
        join(base, &format!("/v1/volumes/{id}"))
    }
    /// An operation on a volume: `batch`, `seal`, `verify`, `compact`, `rebuild-index`,
    /// `export`, `import`, `needles`, `gc`.
    pub fn volume_op(base: &str, id: u32, op: &str) -> String {
        join(base, &format!("/v1/volumes/{id}/{op}"))
    }
    /// An erasure-coded volume (`GET` describes it) or an operation on it: `build`, `install`,
    /// `verify`, `manifest`, `rebuild`, `needles`.
    pub fn ec(base: &str, id: u32, op: Option<&str>) -> String {
        match op {
            Some(op) => join(base, &format!("/v1/ec/{id}/{op}")),
            None => join(base, &format!("/v1/ec/{id}")),
        }
    }
    /// A staged file of a build (`s{i}` or `ecx`); `DELETE` on the generation drops them all.
    pub fn ec_staged(base: &str, id: u32, generation: u32, name: Option<&str>) -> String {
        match name {
            Some(n) => join(base, &format!("/v1/ec/{id}/staged/{generation}/{n}")),
            None => join(base, &format!("/v1/ec/{id}/staged/{generation}")),
        }
    }
    /// `GET` raw bytes of one shard of an erasure-coded volume; `checked`: only when every
    /// 1 MiB piece they lie in matches the shard's CRC table.
    pub fn ec_shard_range(
        base: &str,
        id: u32,
        shard: usize,
        generation: u32,
        (offset, len): (u64, u64),
        checked: bool,
    ) -> String {
        let checked = if checked { "&checked=true" } else { "" };
        join(
            base,
            &format!(
                "/v1/ec/{id}/shards/{shard}?generation={generation}&offset={offset}&len={len}{checked}"
            ),
        )
    }
    /// `GET` where an asynchronous remote replica stands; `POST ?offset=N` appends shipped
    /// bytes to it.
    pub fn ship(base: &str, id: u32, offset: Option<u64>) -> String {
        match offset {
            Some(o) => join(base, &format!("/v1/volumes/{id}/ship?offset={o}")),
            None => join(base, &format!("/v1/volumes/{id}/ship")),
        }
    }
    /// `GET` the digest of the volume's needle list in `buckets` buckets.
    pub fn digest(base: &str, id: u32, buckets: u32) -> String {
        join(base, &format!("/v1/volumes/{id}/digest?buckets={buckets}"))
    }
    /// `GET` the needles of some digest buckets.
    pub fn needles_in_buckets(base: &str, id: u32, bucket: &[u32], buckets: u32) -> String {
        let list: Vec<String> = bucket.iter().map(|b| b.to_string()).collect();
        join(
            base,
            &format!(
                "/v1/volumes/{id}/needles?bucket={}&buckets={buckets}",
                list.join(",")
            ),
        )
    }
}

/// The cache tier's API (needles are [`super::needle`]).
pub mod cache {
    use super::{format_cookie, join};

    /// A whole video, served from its chunks.
    pub fn video(base: &str, volume: u32, id: u64, cookie: u64) -> String {
        join(
            base,
            &format!("/v1/videos/{volume}/{id}/{}", format_cookie(cookie)),
        )
    }
}

/// The uploader's public API (the load generator's write path).
pub mod uploader {
    use super::join;

    pub fn photos(base: &str) -> String {
        join(base, "/v1/photos")
    }
    pub fn photo(base: &str, id: u64) -> String {
        join(base, &format!("/v1/photos/{id}"))
    }
    pub fn videos(base: &str) -> String {
        join(base, "/v1/videos")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_with_or_without_a_slash_give_one_url() {
        let a = NeedleAddr::new(3, 7, 1, 0xab);
        assert_eq!(
            needle("http://h:1/", &a),
            "http://h:1/v1/needles/3/7/1/00000000000000ab"
        );
        assert_eq!(
            directory::photo_url("http://h:1", 9, 2),
            "http://h:1/v1/photos/9/url?alt=2"
        );
        assert_eq!(
            store::volume_op("http://h:1//", 4, "gc"),
            "http://h:1/v1/volumes/4/gc"
        );
        assert_eq!(
            cache::video("http://h:1", 1, 2, 3),
            "http://h:1/v1/videos/1/2/0000000000000003"
        );
    }
}
