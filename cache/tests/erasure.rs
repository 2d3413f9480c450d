//! Erasure-coded volumes (issue 14) read through the cache: a sealed volume encoded 4+2 by the
//! directory serves every needle byte for byte, whole, in ranges and as video; with two shard
//! stores stopped every needle is still served (degraded reads, counted); the lost shards are
//! rebuilt on other stores and verify clean, parity included; deletes before and after the
//! encode stay deleted. Over both I/O engines.

use std::time::{Duration, Instant};

use haystack_cache::Admission;
use haystack_proto::directory::{EncodeReport, LogicalVolumeInfo, PhotoInfo};
use haystack_testkit::ClusterOptions;
use haystack_testkit::EngineKind;

use crate::common::{bytes, get, needle_url, video_url, Env};

const K: usize = 4;

/// A photo and its variants' (alternate key, bytes).
type Stored = (PhotoInfo, Vec<(u32, Vec<u8>)>);
const M: usize = 2;

async fn post_json(http: &reqwest::Client, url: &str, body: serde_json::Value) -> (u16, Vec<u8>) {
    let r = http.post(url).json(&body).send().await.expect("POST");
    let s = r.status().as_u16();
    (s, r.bytes().await.expect("body").to_vec())
}

/// GETs `url` until it answers something other than 502/503 (the cache may hold the volume's
/// replica list from before the switch for up to a second), at most 20 s.
async fn get_settled(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(http, url, headers).await;
        if !(r.0 == 502 || r.0 == 503) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(http: &reqwest::Client, store: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{store}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every needle of `photos` (whole, and a range of each) and the video, through the cache.
async fn read_everything(env: &Env, photos: &[Stored], video: &(PhotoInfo, Vec<u8>)) {
    let base = env.cache().url.clone();
    for (p, variants) in photos {
        for (alt, data) in variants {
            let url = needle_url(&base, p, *alt);
            let (st, _, body) = get_settled(&env.http, &url, &[]).await;
            assert_eq!(st, 200, "{url}: {}", String::from_utf8_lossy(&body));
            assert!(body == *data, "{url}: wrong bytes");
            let (st, _, body) = get_settled(&env.http, &url, &[("range", "bytes=100-1099")]).await;
            assert_eq!(st, 206, "{url} range");
            assert!(body == data[100..1100], "{url}: wrong range bytes");
        }
    }
    let url = video_url(&base, &video.0);
    let (st, _, body) = get_settled(&env.http, &url, &[]).await;
    assert_eq!(st, 200, "video");
    assert!(body == video.1, "video: wrong bytes");
    let (st, _, body) = get_settled(&env.http, &url, &[("range", "bytes=250000-450000")]).await;
    assert_eq!(st, 206, "video range");
    assert!(
        body == video.1[250_000..=450_000],
        "video range: wrong bytes"
    );
}

async fn encode_read_degrade_rebuild(engine: EngineKind) {
    let mut env = Env::start(
        ClusterOptions {
            stores: K + M + 2,
            replication: 2,
            min_writable_volumes: 1,
            volume_bytes: 256 << 20,
            engine,
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    // Photos of many sizes, some with two variants, and a video of three chunks.
    let mut photos = Vec::new();
    for i in 0..24u64 {
        let size = 1_200 + (i as usize * 7_919) % 150_000;
        let mut variants = vec![(0u32, bytes(size, i))];
        if i % 3 == 0 {
            variants.push((1, bytes(size / 3 + 1_100, 1_000 + i)));
        }
        let spec: Vec<(u32, Vec<u8>, &str)> = variants
            .iter()
            .map(|(a, d)| (*a, d.clone(), "image/jpeg"))
            .collect();
        let p = env.put_photo(&spec).await;
        photos.push((p, variants));
    }
    let chunks: Vec<Vec<u8>> = (0..3).map(|i| bytes(200_000, 500 + i)).collect();
    let vp = env.put_video(&chunks, "video/mp4").await;
    let video = (vp, chunks.concat());
    // One photo deleted before the encode: its needles are not encoded.
    let gone_before = photos.remove(5).0;
    env.dir.delete(gone_before.id).await.expect("delete");
    let mut volumes: Vec<u32> = photos.iter().map(|p| p.0.volume_id).collect();
    volumes.push(video.0.volume_id);
    volumes.sort_unstable();
    volumes.dedup();
    let dir = env.cluster.directory_url();
    let mut shard_stores: Vec<(u32, Vec<String>)> = Vec::new();
    for &v in &volumes {
        // Seal: the record, then every replica.
        let (st, body) = post_json(
            &env.http,
            &format!("{dir}/v1/volumes/{v}/state"),
            serde_json::json!({"state": "sealed"}),
        )
        .await;
        assert_eq!(st, 200, "seal {v}: {}", String::from_utf8_lossy(&body));
        let info: LogicalVolumeInfo = env
            .http
            .get(format!("{dir}/v1/volumes/{v}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for r in &info.replicas {
            let (st, _) = post_json(
                &env.http,
                &format!("{}/v1/volumes/{v}/seal", r.url),
                serde_json::json!({}),
            )
            .await;
            assert_eq!(st, 200);
        }
        // An encode of a scheme wider than the cluster is refused and changes nothing.
        let (st, _) = post_json(
            &env.http,
            &format!("{dir}/v1/volumes/{v}/encode"),
            serde_json::json!({"k": 8, "m": 4, "block_bytes": 65536}),
        )
        .await;
        assert_eq!(st, 409, "a 12-shard scheme on 8 stores");
        let (st, body) = post_json(
            &env.http,
            &format!("{dir}/v1/volumes/{v}/encode"),
            serde_json::json!({"k": K, "m": M, "block_bytes": 256 << 10}),
        )
        .await;
        assert_eq!(st, 200, "encode {v}: {}", String::from_utf8_lossy(&body));
        let rep: EncodeReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(rep.shards.len(), K + M);
        assert_eq!(rep.replicas_dropped, 2, "both replicas dropped");
        assert!(!rep.already);
        // The replicas' files are gone from their stores.
        for r in &info.replicas {
            let i = env
                .cluster
                .store_urls()
                .iter()
                .position(|u| *u == r.url)
                .unwrap();
            assert!(
                !env.cluster
                    .store_dir(i)
                    .join(format!("vol-{v}.dat"))
                    .exists(),
                "replica of {v} on store {i} still there"
            );
        }
        let after: LogicalVolumeInfo = env
            .http
            .get(format!("{dir}/v1/volumes/{v}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ec = after.ec.expect("erasure-coded now");
        assert_eq!((ec.k as usize, ec.m as usize), (K, M));
        assert!(ec.retired.is_empty());
        // Encoding again only cleans up (nothing left).
        let (st, body) = post_json(
            &env.http,
            &format!("{dir}/v1/volumes/{v}/encode"),
            serde_json::json!({"k": K, "m": M}),
        )
        .await;
        assert_eq!(st, 200);
        let again: EncodeReport = serde_json::from_slice(&body).unwrap();
        assert!(again.already);
        shard_stores.push((v, after.replicas.iter().map(|r| r.url.clone()).collect()));
    }
    // 1. Healthy reads, byte for byte.
    read_everything(&env, &photos, &video).await;
    let (st, _, _) = get_settled(
        &env.http,
        &needle_url(&env.cache().url, &gone_before, 0),
        &[],
    )
    .await;
    assert_eq!(st, 404, "a photo deleted before the encode stays deleted");
    // A delete after the encode hides the photo at once.
    let gone_after = photos.remove(0).0;
    env.dir
        .delete(gone_after.id)
        .await
        .expect("delete after encode");
    let (st, _, _) = get_settled(
        &env.http,
        &needle_url(&env.cache().url, &gone_after, 0),
        &[],
    )
    .await;
    assert_eq!(
        st, 404,
        "a photo deleted after the encode is gone through the cache"
    );
    for (v, urls) in &shard_stores {
        if *v != gone_after.volume_id {
            continue;
        }
        for u in urls {
            let (st, _, _) = get(&env.http, &needle_url(u, &gone_after, 0), &[]).await;
            assert_eq!(st, 404, "deleted needle served by shard store {u}");
        }
    }
    // 2. m shard stores of the first volume stopped: a data shard's and a parity shard's.
    let (v0, urls) = shard_stores[0].clone();
    let stopped: Vec<usize> = [0usize, K + M - 1]
        .iter()
        .map(|s| {
            env.cluster
                .store_urls()
                .iter()
                .position(|u| *u == urls[*s])
                .unwrap()
        })
        .collect();
    let live_store = urls[1].clone();
    let degraded_before = metric(
        &env.http,
        &live_store,
        "haystack_store_ec_degraded_reads_total",
    )
    .await;
    for i in &stopped {
        env.cluster.stop_store(*i);
    }
    read_everything(&env, &photos, &video).await;
    let degraded_after = metric(
        &env.http,
        &live_store,
        "haystack_store_ec_degraded_reads_total",
    )
    .await;
    assert!(
        degraded_after > degraded_before,
        "reads with a data shard's store down were degraded reads ({degraded_before} -> {degraded_after})"
    );
    // 3. Rebuild both lost shards on the spare stores (once the directory sees their stores
    // down, so that it does not place a shard back on them), then verify every shard.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stores: Vec<serde_json::Value> = env
            .http
            .get(format!("{dir}/v1/stores"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let down = stores
            .iter()
            .filter(|s| {
                stopped
                    .iter()
                    .any(|i| s["url"] == env.cluster.store_urls()[*i].as_str())
            })
            .filter(|s| s["state"] == "down")
            .count();
        if down == stopped.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the directory did not see the stopped stores down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for shard in [0usize, K + M - 1] {
        let (st, body) = post_json(
            &env.http,
            &format!("{dir}/v1/volumes/{v0}/ec/rebuild"),
            serde_json::json!({"shard": shard}),
        )
        .await;
        assert_eq!(
            st,
            200,
            "rebuild shard {shard}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let rebuilt: LogicalVolumeInfo = env
        .http
        .get(format!("{dir}/v1/volumes/{v0}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (s, r) in rebuilt.replicas.iter().enumerate() {
        assert!(
            !stopped
                .iter()
                .any(|i| env.cluster.store_urls()[*i] == r.url),
            "shard {s} still on a stopped store"
        );
        let (st, body) = post_json(
            &env.http,
            &format!("{}/v1/ec/{v0}/verify?parity=true", r.url),
            serde_json::json!({}),
        )
        .await;
        assert_eq!(
            st,
            200,
            "verify shard {s}: {}",
            String::from_utf8_lossy(&body)
        );
        let rep: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            rep["bad_pieces"].as_array().unwrap().len(),
            0,
            "shard {s}: {rep}"
        );
        assert_eq!(
            rep["corrupt"].as_array().unwrap().len(),
            0,
            "shard {s}: {rep}"
        );
        assert_eq!(
            rep["parity_mismatches"].as_array().unwrap().len(),
            0,
            "shard {s}: {rep}"
        );
        if s >= K {
            assert!(
                rep["parity_checked"].as_u64().unwrap() > 0,
                "parity of shard {s} checked"
            );
        }
    }
    // The rebuilt shards serve healthy reads with their old stores still down, and the delete
    // made before the rebuild holds on the rebuilt shards' stores.
    read_everything(&env, &photos, &video).await;
    if gone_after.volume_id == v0 {
        for r in &rebuilt.replicas {
            let (st, _, _) = get(&env.http, &needle_url(&r.url, &gone_after, 0), &[]).await;
            assert_eq!(
                st, 404,
                "deleted needle served by {} after the rebuild",
                r.url
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_volume_serves_healthy_degraded_and_rebuilt_io_uring() {
    encode_read_degrade_rebuild(EngineKind::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_volume_serves_healthy_degraded_and_rebuilt_sync() {
    encode_read_degrade_rebuild(EngineKind::Sync).await;
}

/// Seals volume `v`: the record, then every replica.
async fn seal(env: &Env, v: u32) -> LogicalVolumeInfo {
    let dir = env.cluster.directory_url();
    let (st, _) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/state"),
        serde_json::json!({"state": "sealed"}),
    )
    .await;
    assert_eq!(st, 200);
    let info: LogicalVolumeInfo = env
        .http
        .get(format!("{dir}/v1/volumes/{v}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for r in &info.replicas {
        let (st, _) = post_json(
            &env.http,
            &format!("{}/v1/volumes/{v}/seal", r.url),
            serde_json::json!({}),
        )
        .await;
        assert_eq!(st, 200);
    }
    info
}

/// Then deletes and a re-encode (online) give the space back.
/// An encode that dies after its build and some installs (the directory's steps driven by
/// hand, then abandoned, as a crash of the directory would leave them) changes nothing the
/// readers see: the replicas serve; running the encode again completes it. Then bytes flipped
/// in a data shard on disk are never served: the read is rebuilt from the other shards.
async fn interrupted_encode_then_corrupt_shard(engine: EngineKind) {
    let env = Env::start(
        ClusterOptions {
            stores: 3,
            replication: 2,
            min_writable_volumes: 1,
            engine,
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    let mut photos = Vec::new();
    for i in 0..10u64 {
        let data = bytes(3_000 + i as usize * 9_000, 77 + i);
        let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
        photos.push((p, vec![(0u32, data)]));
    }
    let v = photos[0].0.volume_id;
    photos.retain(|p| p.0.volume_id == v);
    let info = seal(&env, v).await;
    let source = info.replicas[0].url.clone();
    let urls = env.cluster.store_urls();
    // Steps 1 and 2 (of 3 shards, two installed), then the "crash".
    let (st, body) = post_json(
        &env.http,
        &format!("{source}/v1/ec/{v}/build"),
        serde_json::json!({"generation": 0, "k": 2, "m": 1, "block_bytes": 131072}),
    )
    .await;
    assert_eq!(st, 200, "build: {}", String::from_utf8_lossy(&body));
    for (i, u) in urls.iter().enumerate().take(2) {
        let (st, body) = post_json(
            &env.http,
            &format!("{u}/v1/ec/{v}/install"),
            serde_json::json!({"generation": 0, "shard": i, "from": source, "shards": urls}),
        )
        .await;
        assert_eq!(st, 201, "install {i}: {}", String::from_utf8_lossy(&body));
    }
    let dir = env.cluster.directory_url();
    let now: LogicalVolumeInfo = env
        .http
        .get(format!("{dir}/v1/volumes/{v}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(now.ec.is_none(), "no switch without the directory's write");
    let ids = |v: &LogicalVolumeInfo| v.replicas.iter().map(|r| r.store_id).collect::<Vec<_>>();
    assert_eq!(ids(&now), ids(&info), "the replicas are still the volume's");
    // The replicas serve every needle, from the cache and from each replica.
    read_photos(&env, &photos).await;
    for r in &info.replicas {
        for (p, _) in &photos {
            let (st, _, _) = get(&env.http, &needle_url(&r.url, p, 0), &[]).await;
            assert_eq!(st, 200, "replica {} after the abandoned encode", r.url);
        }
    }
    // The encode run again completes.
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/encode"),
        serde_json::json!({"k": 2, "m": 1, "block_bytes": 131072}),
    )
    .await;
    assert_eq!(st, 200, "encode: {}", String::from_utf8_lossy(&body));
    read_photos(&env, &photos).await;
    // Flip a byte inside a needle of data shard 0 on its store's disk.
    let after: LogicalVolumeInfo = env
        .http
        .get(format!("{dir}/v1/volumes/{v}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s0 = urls
        .iter()
        .position(|u| *u == after.replicas[0].url)
        .unwrap();
    let path = env.cluster.store_dir(s0).join(format!("ec-{v}-0.s0"));
    let mut raw = std::fs::read(&path).unwrap();
    // The header is 64 bytes; the first needle's data starts 40 + 10 bytes into it.
    raw[64 + 40 + 10 + 100] ^= 0x5a;
    std::fs::write(&path, &raw).unwrap();
    let degraded_before = metric(
        &env.http,
        &after.replicas[1].url,
        "haystack_store_ec_degraded_reads_total",
    )
    .await
        + metric(
            &env.http,
            &after.replicas[0].url,
            "haystack_store_ec_degraded_reads_total",
        )
        .await;
    read_photos(&env, &photos).await;
    for r in &after.replicas {
        for (p, variants) in &photos {
            let (st, _, body) = get(&env.http, &needle_url(&r.url, p, 0), &[]).await;
            assert_eq!(st, 200, "shard store {}", r.url);
            assert!(
                body == variants[0].1,
                "wrong bytes from shard store {}",
                r.url
            );
        }
    }
    let degraded_after = metric(
        &env.http,
        &after.replicas[1].url,
        "haystack_store_ec_degraded_reads_total",
    )
    .await
        + metric(
            &env.http,
            &after.replicas[0].url,
            "haystack_store_ec_degraded_reads_total",
        )
        .await;
    assert!(
        degraded_after > degraded_before,
        "the corrupt needle was rebuilt, not served"
    );
    let (st, body) = post_json(
        &env.http,
        &format!("{}/v1/ec/{v}/verify", after.replicas[0].url),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(st, 200);
    let rep: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(rep["bad_pieces"].as_array().unwrap().len(), 1, "{rep}");
    assert_eq!(rep["corrupt"].as_array().unwrap().len(), 1, "{rep}");

    // Deletes, then a re-encode without them while reads go on: space comes back, every live
    // needle is served byte for byte throughout, the deleted ones never come back.
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    for (i, p) in photos.into_iter().enumerate() {
        if i % 2 == 1 {
            env.dir.delete(p.0.id).await.expect("delete");
            deleted.push(p.0);
        } else {
            kept.push(p);
        }
    }
    let on_disk = |gen_filter: &dyn Fn(&str) -> bool| -> u64 {
        (0..urls.len())
            .flat_map(|i| std::fs::read_dir(env.cluster.store_dir(i)).unwrap())
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&format!("ec-{v}-")) && !n.contains(".build") && gen_filter(&n)
            })
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let before = on_disk(&|_| true);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (http, stop, kept) = (env.http.clone(), stop.clone(), kept.clone());
        let base = env.cache().url.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 20_000 {
                for (p, variants) in &kept {
                    let (st, _, body) = get(&http, &needle_url(&base, p, 0), &[]).await;
                    assert_eq!(
                        st,
                        200,
                        "read during the re-encode: {}",
                        String::from_utf8_lossy(&body)
                    );
                    assert!(body == variants[0].1, "wrong bytes during the re-encode");
                    reads += 1;
                }
            }
            reads
        })
    };
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/encode"),
        serde_json::json!({"k": 2, "m": 1, "block_bytes": 131072, "reencode": true}),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.expect("reader");
    assert!(reads > 0);
    assert_eq!(st, 200, "re-encode: {}", String::from_utf8_lossy(&body));
    let rep: EncodeReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(rep.generation, 1);
    assert_eq!(rep.needles as usize, kept.len());
    let after = on_disk(&|_| true);
    assert!(after < before, "space came back: {before} -> {after} bytes");
    assert_eq!(
        on_disk(&|n: &str| n.starts_with(&format!("ec-{v}-0."))),
        0,
        "generation 0 removed"
    );
    read_photos(&env, &kept).await;
    let shard_urls: Vec<String> = {
        let i: LogicalVolumeInfo = env
            .http
            .get(format!("{dir}/v1/volumes/{v}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(i.ec.as_ref().map(|e| e.generation), Some(1));
        i.replicas.iter().map(|r| r.url.clone()).collect()
    };
    for u in &shard_urls {
        for p in &deleted {
            let (st, _, _) = get(&env.http, &needle_url(u, p, 0), &[]).await;
            assert_eq!(st, 404, "a deleted needle came back on {u}");
        }
        let (st, body) = post_json(
            &env.http,
            &format!("{u}/v1/ec/{v}/verify?parity=true"),
            serde_json::json!({}),
        )
        .await;
        assert_eq!(st, 200);
        let rep: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(rep["bad_pieces"].as_array().unwrap().len(), 0, "{rep}");
        assert_eq!(rep["corrupt"].as_array().unwrap().len(), 0, "{rep}");
        assert_eq!(
            rep["parity_mismatches"].as_array().unwrap().len(),
            0,
            "{rep}"
        );
    }
}

async fn read_photos(env: &Env, photos: &[Stored]) {
    for (p, variants) in photos {
        for (alt, data) in variants {
            let url = needle_url(&env.cache().url, p, *alt);
            let (st, _, body) = get_settled(&env.http, &url, &[]).await;
            assert_eq!(st, 200, "{url}: {}", String::from_utf8_lossy(&body));
            assert!(body == *data, "{url}: wrong bytes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_encode_and_corrupt_shard_io_uring() {
    interrupted_encode_then_corrupt_shard(EngineKind::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_encode_and_corrupt_shard_sync() {
    interrupted_encode_then_corrupt_shard(EngineKind::Sync).await;
}

/// A shard store down past `rereplicate_after_ms` has its shard rebuilt on another store by
/// the directory alone; every needle is served from the new shard set.
/// The directory's record of volume `v`.
async fn volume_info(env: &Env, v: u32) -> LogicalVolumeInfo {
    let dir = env.cluster.directory_url();
    env.http
        .get(format!("{dir}/v1/volumes/{v}"))
        .send()
        .await
        .expect("volume")
        .json()
        .await
        .expect("volume JSON")
}

/// `n` photos (bytes seeded from `seed`) put: the first one's volume and those on it.
async fn photos_on_one_volume(env: &Env, n: u64, seed: u64) -> (u32, Vec<Stored>) {
    let mut photos = Vec::new();
    for i in 0..n {
        let data = bytes(5_000 + i as usize * 4_000, seed + i);
        let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
        photos.push((p, vec![(0u32, data)]));
    }
    let v = photos[0].0.volume_id;
    photos.retain(|p| p.0.volume_id == v);
    (v, photos)
}

/// Six photos (bytes seeded from `seed`) put, the first one's volume sealed and encoded 2+1:
/// the volume, the photos on it and the encode report.
async fn encoded_2_1(env: &Env, seed: u64) -> (u32, Vec<Stored>, EncodeReport) {
    let (v, photos) = photos_on_one_volume(env, 6, seed).await;
    seal(env, v).await;
    let dir = env.cluster.directory_url();
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/encode"),
        serde_json::json!({"k": 2, "m": 1, "block_bytes": 65536}),
    )
    .await;
    assert_eq!(st, 200, "encode: {}", String::from_utf8_lossy(&body));
    (
        v,
        photos,
        serde_json::from_slice(&body).expect("encode report"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_store_down_past_the_timeout_is_rebuilt_elsewhere() {
    let mut env = Env::start(
        ClusterOptions {
            stores: 4,
            replication: 2,
            min_writable_volumes: 1,
            store_timeout_ms: 2_000,
            rereplicate_after_ms: 1_000,
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    let (v, photos, rep) = encoded_2_1(&env, 300).await;
    let urls = env.cluster.store_urls();
    let lost_url = volume_info(&env, v).await.replicas[1].url.clone();
    let lost = urls.iter().position(|u| *u == lost_url).unwrap();
    env.cluster.stop_store(lost);
    let deadline = Instant::now() + Duration::from_secs(60);
    let moved = loop {
        let i = volume_info(&env, v).await;
        if i.replicas[1].url != lost_url {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "shard 1 was not rebuilt elsewhere"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(moved.replicas.len(), rep.shards.len());
    assert!(moved.replicas.iter().all(|r| r.url != lost_url));
    read_photos(&env, &photos).await;
    let (st, body) = post_json(
        &env.http,
        &format!("{}/v1/ec/{v}/verify", moved.replicas[1].url),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(st, 200);
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["bad_pieces"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["corrupt"].as_array().unwrap().len(), 0, "{r}");
}

/// A drained store that holds a shard hands it on (issue 16): the shard is rebuilt on a store
/// that holds none of the volume, the record switches to it, the store turns `retired`, and
/// every needle is still served byte for byte. Before, the drain skipped erasure-coded volumes
/// while counting their shards, so the store never emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_store_hands_its_shards_on() {
    let env = Env::start(
        ClusterOptions {
            stores: 4,
            replication: 2,
            min_writable_volumes: 1,
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    let (v, photos, _) = encoded_2_1(&env, 700).await;
    let dir = env.cluster.directory_url();
    let before = volume_info(&env, v).await;
    let drained = before.replicas[1].store_id;
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/stores/{drained}/lifecycle"),
        serde_json::json!({"lifecycle": "draining"}),
    )
    .await;
    assert_eq!(st, 200, "drain: {}", String::from_utf8_lossy(&body));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stores: serde_json::Value = env
            .http
            .get(format!("{dir}/v1/stores"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let me = stores
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["store_id"].as_str() == Some(drained.to_string().as_str()))
            .cloned()
            .unwrap_or_default();
        if me["lifecycle"] == "retired" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the draining store never emptied: {me}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = volume_info(&env, v).await;
    assert_eq!(after.replicas.len(), before.replicas.len());
    assert!(
        after.replicas.iter().all(|r| r.store_id != drained),
        "{after:?}"
    );
    let mut on: Vec<u64> = after.replicas.iter().map(|r| r.store_id).collect();
    on.sort_unstable();
    on.dedup();
    assert_eq!(
        on.len(),
        after.replicas.len(),
        "one shard per store: {after:?}"
    );
    read_photos(&env, &photos).await;
    let (st, body) = post_json(
        &env.http,
        &format!("{}/v1/ec/{v}/verify", after.replicas[1].url),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(st, 200);
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["bad_pieces"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["corrupt"].as_array().unwrap().len(), 0, "{r}");
}

/// The automatic encode policy (`encode_after_secs`): with the age at one second, a sealed
/// volume turns erasure-coded on its own (no encode request is made), its replicas are
/// dropped, and every needle is still served byte for byte through the cache and by every
/// shard store. Writable volumes are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_volume_is_encoded_by_the_policy_on_its_own() {
    let env = Env::start(
        ClusterOptions {
            stores: 4,
            replication: 2,
            min_writable_volumes: 1,
            encode_after_secs: 1,
            encode_scheme: "2+1".into(),
            encode_block_bytes: 65536,
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    let mut photos = Vec::new();
    for i in 0..8u64 {
        let data = bytes(2_000 + i as usize * 6_000, 900 + i);
        let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
        photos.push((p, vec![(0u32, data)]));
    }
    let v = photos[0].0.volume_id;
    photos.retain(|p| p.0.volume_id == v);
    let dir = env.cluster.directory_url();
    let get_volume = async |v: u32| -> LogicalVolumeInfo {
        env.http
            .get(format!("{dir}/v1/volumes/{v}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let replicas = seal(&env, v).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let encoded = loop {
        let i = get_volume(v).await;
        if i.ec.as_ref().is_some_and(|e| e.retired.is_empty()) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "the sealed volume was not encoded by the policy: {i:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ec = encoded.ec.clone().unwrap();
    assert_eq!((ec.k, ec.m, ec.block_bytes), (2, 1, 65536));
    assert_eq!(encoded.replicas.len(), 3);
    read_photos(&env, &photos).await;
    for r in &encoded.replicas {
        for (p, variants) in &photos {
            let (st, _, body) = get(&env.http, &needle_url(&r.url, p, 0), &[]).await;
            assert_eq!(st, 200, "shard store {}", r.url);
            assert!(
                body == variants[0].1,
                "wrong bytes from shard store {}",
                r.url
            );
        }
    }
    // The replicas' files are gone from their stores.
    let urls = env.cluster.store_urls();
    for r in &replicas.replicas {
        let i = urls.iter().position(|u| *u == r.url).unwrap();
        assert!(
            !env.cluster
                .store_dir(i)
                .join(format!("vol-{v}.dat"))
                .exists(),
            "replica of {v} on store {i} still there"
        );
    }
    // Volumes that were never sealed are not encoded.
    let all: Vec<LogicalVolumeInfo> = env
        .http
        .get(format!("{dir}/v1/volumes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for i in all.iter().filter(|i| i.id != v) {
        assert!(
            i.ec.is_none(),
            "volume {} encoded without being sealed",
            i.id
        );
    }
}

/// Background scrubbing of shards: a byte flipped in a data shard's file on disk, with no
/// read at all, is found by the shard store's scrubber (piece CRCs), the shard is rebuilt in
/// place from the other shards, verify then passes on every shard (parity included) and every
/// needle is served byte for byte without a degraded read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_shard_is_found_by_the_scrubber_and_rebuilt() {
    let env = Env::start(
        ClusterOptions {
            stores: 3,
            replication: 2,
            min_writable_volumes: 1,
            scrub: haystack_testkit::ScrubConfig {
                bytes_per_sec: Some(64 << 20),
                min_interval: Duration::from_secs(1),
                ..Default::default()
            },
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    let mut photos = Vec::new();
    for i in 0..8u64 {
        let data = bytes(4_000 + i as usize * 5_000, 1_300 + i);
        let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
        photos.push((p, vec![(0u32, data)]));
    }
    let v = photos[0].0.volume_id;
    photos.retain(|p| p.0.volume_id == v);
    seal(&env, v).await;
    let dir = env.cluster.directory_url();
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/encode"),
        serde_json::json!({"k": 2, "m": 1, "block_bytes": 65536}),
    )
    .await;
    assert_eq!(st, 200, "encode: {}", String::from_utf8_lossy(&body));
    let info: LogicalVolumeInfo = env
        .http
        .get(format!("{dir}/v1/volumes/{v}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let urls = env.cluster.store_urls();
    let s0 = urls
        .iter()
        .position(|u| *u == info.replicas[0].url)
        .unwrap();
    let rebuilt_before = metric(
        &env.http,
        &info.replicas[0].url,
        "haystack_store_scrub_shards_rebuilt_total",
    )
    .await;
    // Flip a byte inside the first needle's data in data shard 0 (header 64 bytes, needle
    // header 40, content type 10).
    {
        use std::os::unix::fs::FileExt;
        let path = env.cluster.store_dir(s0).join(format!("ec-{v}-0.s0"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 64 + 40 + 10 + 100).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], 64 + 40 + 10 + 100).unwrap();
    }
    // No reads: the scrubber finds it and rebuilds the shard.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = metric(
            &env.http,
            &info.replicas[0].url,
            "haystack_store_scrub_shards_rebuilt_total",
        )
        .await;
        if n > rebuilt_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scrubber did not rebuild the corrupt shard"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut degraded_before = 0.0;
    for r in &info.replicas {
        degraded_before +=
            metric(&env.http, &r.url, "haystack_store_ec_degraded_reads_total").await;
        let (st, body) = post_json(
            &env.http,
            &format!("{}/v1/ec/{v}/verify?parity=true", r.url),
            serde_json::json!({}),
        )
        .await;
        assert_eq!(st, 200);
        let rep: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for f in ["bad_pieces", "corrupt", "parity_mismatches"] {
            assert_eq!(rep[f].as_array().unwrap().len(), 0, "{}: {rep}", r.url);
        }
    }
    for r in &info.replicas {
        for (p, variants) in &photos {
            let (st, _, body) = get(&env.http, &needle_url(&r.url, p, 0), &[]).await;
            assert_eq!(st, 200, "shard store {}", r.url);
            assert!(body == variants[0].1, "wrong bytes from {}", r.url);
        }
    }
    let mut degraded_after = 0.0;
    for r in &info.replicas {
        degraded_after += metric(&env.http, &r.url, "haystack_store_ec_degraded_reads_total").await;
    }
    assert_eq!(
        degraded_after, degraded_before,
        "the rebuilt shard serves healthy reads"
    );
}

/// Waits until the directory lists the stores at `urls` in `state` ("up" or "down").
async fn wait_store_state(env: &Env, urls: &[String], state: &str) {
    let dir = env.cluster.directory_url();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stores: Vec<serde_json::Value> = env
            .http
            .get(format!("{dir}/v1/stores"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = stores
            .iter()
            .filter(|s| urls.iter().any(|u| s["url"] == u.as_str()) && s["state"] == state)
            .count();
        if n == urls.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the directory did not see {urls:?} {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Flips the byte at `at` of a file.
fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
}

/// A rebuild never decodes from a corrupt shard: on a 4+2 volume with a byte flipped in data
/// shard 0 on disk and the stores of shards 1 and 5 stopped, only four shards answer and one
/// of them is corrupt, so the rebuild of shard 1 is refused with a clear error and writes
/// nothing (before the fix it decoded from the corrupt piece and wrote a wrong shard with a
/// CRC table of its own). With shard 5's store back, the rebuild skips the corrupt shard; the
/// corrupt shard is then rebuilt in place, and every shard verifies (parity included) and
/// every needle reads byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_skips_a_corrupt_source_shard() {
    let mut env = Env::start(
        ClusterOptions {
            stores: K + M + 1,
            replication: 2,
            min_writable_volumes: 1,
            store_timeout_ms: 2_000,
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    let mut photos = Vec::new();
    for i in 0..12u64 {
        let data = bytes(3_000 + i as usize * 7_000, 2_100 + i);
        let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
        photos.push((p, vec![(0u32, data)]));
    }
    let v = photos[0].0.volume_id;
    photos.retain(|p| p.0.volume_id == v);
    seal(&env, v).await;
    let dir = env.cluster.directory_url();
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/encode"),
        serde_json::json!({"k": K, "m": M, "block_bytes": 131072}),
    )
    .await;
    assert_eq!(st, 200, "encode: {}", String::from_utf8_lossy(&body));
    let get_volume = async |v: u32| -> LogicalVolumeInfo {
        env.http
            .get(format!("{dir}/v1/volumes/{v}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let info = get_volume(v).await;
    let urls = env.cluster.store_urls();
    let at: Vec<usize> = info
        .replicas
        .iter()
        .map(|r| urls.iter().position(|u| *u == r.url).unwrap())
        .collect();
    let spare = (0..urls.len()).find(|i| !at.contains(i)).unwrap();
    // A byte of the first needle's data in data shard 0 (shard header 64 bytes, needle header
    // 40, content type 10), then the stores of shards 1 and 5 stopped.
    flip_byte(
        &env.cluster.store_dir(at[0]).join(format!("ec-{v}-0.s0")),
        64 + 40 + 10 + 100,
    );
    env.cluster.stop_store(at[1]);
    env.cluster.stop_store(at[K + M - 1]);
    wait_store_state(
        &env,
        &[urls[at[1]].clone(), urls[at[K + M - 1]].clone()],
        "down",
    )
    .await;
    // 1. Shards 0 (corrupt), 2, 3 and 4 answer: too few good ones.
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/ec/rebuild"),
        serde_json::json!({"shard": 1}),
    )
    .await;
    let msg = String::from_utf8_lossy(&body).into_owned();
    assert_ne!(st, 200, "a rebuild decoded from a corrupt shard: {msg}");
    assert!(msg.contains("CRC"), "the error says why: {msg}");
    let left: Vec<String> = std::fs::read_dir(env.cluster.store_dir(spare))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("ec-{v}")))
        .collect();
    assert!(left.is_empty(), "a refused rebuild left files: {left:?}");
    assert_eq!(
        get_volume(v).await.replicas[1].url,
        urls[at[1]],
        "the record is unchanged"
    );
    // 2. Shard 5's store back: the rebuild uses shards 2 to 5, not the corrupt one.
    env.cluster.start_store(at[K + M - 1]);
    wait_store_state(&env, &[urls[at[K + M - 1]].clone()], "up").await;
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/ec/rebuild"),
        serde_json::json!({"shard": 1}),
    )
    .await;
    assert_eq!(st, 200, "rebuild 1: {}", String::from_utf8_lossy(&body));
    // 3. The corrupt shard rebuilt in place.
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/ec/rebuild"),
        serde_json::json!({"shard": 0, "to": info.replicas[0].store_id}),
    )
    .await;
    assert_eq!(st, 200, "rebuild 0: {}", String::from_utf8_lossy(&body));
    let after = get_volume(v).await;
    assert_eq!(after.replicas[1].url, urls[spare], "shard 1 on the spare");
    for r in &after.replicas {
        let (st, body) = post_json(
            &env.http,
            &format!("{}/v1/ec/{v}/verify?parity=true", r.url),
            serde_json::json!({}),
        )
        .await;
        assert_eq!(st, 200, "verify {}", r.url);
        let rep: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for f in ["bad_pieces", "corrupt", "parity_mismatches"] {
            assert_eq!(rep[f].as_array().unwrap().len(), 0, "{}: {rep}", r.url);
        }
    }
    read_photos(&env, &photos).await;
    for r in &after.replicas {
        for (p, variants) in &photos {
            let (st, _, body) = get(&env.http, &needle_url(&r.url, p, 0), &[]).await;
            assert_eq!(st, 200, "shard store {}", r.url);
            assert!(body == variants[0].1, "wrong bytes from {}", r.url);
        }
    }
}

/// The files of erasure-coded volume `v` in store `i`'s data directory.
fn ec_files_of(env: &Env, i: usize, v: u32) -> Vec<String> {
    std::fs::read_dir(env.cluster.store_dir(i))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("ec-{v}-")) || n.starts_with(&format!("ec-{v}.")))
        .collect()
}

/// An abandoned encode's shards on a store its rerun did not pick are removed: an encode
/// driven by hand installs its shards on three stores (one of which holds no replica) and is
/// abandoned; that store is stopped, so the encode run again places its shards elsewhere;
/// started again, the store reports the files in its heartbeats and the directory has it
/// drop them (before the fix they stayed forever). The shard stores the record names keep
/// theirs: every shard verifies and every needle reads byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_encodes_shards_are_removed_from_stores_the_rerun_did_not_pick() {
    let mut env = Env::start(
        ClusterOptions {
            stores: 4,
            replication: 2,
            min_writable_volumes: 1,
            store_timeout_ms: 2_000,
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    let mut photos = Vec::new();
    for i in 0..8u64 {
        let data = bytes(2_500 + i as usize * 8_000, 3_100 + i);
        let p = env.put_photo(&[(0, data.clone(), "image/jpeg")]).await;
        photos.push((p, vec![(0u32, data)]));
    }
    let v = photos[0].0.volume_id;
    photos.retain(|p| p.0.volume_id == v);
    let info = seal(&env, v).await;
    let urls = env.cluster.store_urls();
    let replicas: Vec<usize> = info
        .replicas
        .iter()
        .map(|r| urls.iter().position(|u| *u == r.url).unwrap())
        .collect();
    let x = (0..urls.len()).find(|i| !replicas.contains(i)).unwrap();
    // The abandoned encode: built on a replica, installed on x and both replicas' stores.
    let source = info.replicas[0].url.clone();
    let (st, body) = post_json(
        &env.http,
        &format!("{source}/v1/ec/{v}/build"),
        serde_json::json!({"generation": 0, "k": 2, "m": 1, "block_bytes": 65536}),
    )
    .await;
    assert_eq!(st, 200, "build: {}", String::from_utf8_lossy(&body));
    let attempt: Vec<String> = [x, replicas[0], replicas[1]]
        .iter()
        .map(|i| urls[*i].clone())
        .collect();
    for (i, u) in attempt.iter().enumerate() {
        let (st, body) = post_json(
            &env.http,
            &format!("{u}/v1/ec/{v}/install"),
            serde_json::json!({"generation": 0, "shard": i, "from": source, "shards": attempt}),
        )
        .await;
        assert_eq!(st, 201, "install {i}: {}", String::from_utf8_lossy(&body));
    }
    assert!(!ec_files_of(&env, x, v).is_empty(), "x holds a shard");
    // x stopped: the rerun places the shards on the three other stores.
    env.cluster.stop_store(x);
    wait_store_state(&env, &[urls[x].clone()], "down").await;
    let dir = env.cluster.directory_url();
    let (st, body) = post_json(
        &env.http,
        &format!("{dir}/v1/volumes/{v}/encode"),
        serde_json::json!({"k": 2, "m": 1, "block_bytes": 65536}),
    )
    .await;
    assert_eq!(st, 200, "encode: {}", String::from_utf8_lossy(&body));
    let after: LogicalVolumeInfo = env
        .http
        .get(format!("{dir}/v1/volumes/{v}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(after.ec.is_some());
    assert!(after.replicas.iter().all(|r| r.url != urls[x]));
    read_photos(&env, &photos).await;
    assert!(
        !ec_files_of(&env, x, v).is_empty(),
        "the leftover is there while x is down"
    );
    // x back: its leftover files go.
    env.cluster.start_store(x);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = ec_files_of(&env, x, v);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned encode's files stay on store {x}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    read_photos(&env, &photos).await;
    for r in &after.replicas {
        let i = urls.iter().position(|u| *u == r.url).unwrap();
        assert!(
            !ec_files_of(&env, i, v).is_empty(),
            "{} kept its shard",
            r.url
        );
        let (st, body) = post_json(
            &env.http,
            &format!("{}/v1/ec/{v}/verify?parity=true", r.url),
            serde_json::json!({}),
        )
        .await;
        assert_eq!(st, 200, "verify {}", r.url);
        let rep: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for f in ["bad_pieces", "corrupt", "parity_mismatches"] {
            assert_eq!(rep[f].as_array().unwrap().len(), 0, "{}: {rep}", r.url);
        }
        for (p, variants) in &photos {
            let (st, _, body) = get(&env.http, &needle_url(&r.url, p, 0), &[]).await;
            assert_eq!(st, 200, "shard store {}", r.url);
            assert!(body == variants[0].1, "wrong bytes from {}", r.url);
        }
    }
}

/// A committed photo on volume `v` whose needle only the replica at `url` took.
async fn on_one_replica(env: &Env, v: u32, url: &str, data: &[u8]) -> PhotoInfo {
    for _ in 0..50 {
        let p = env
            .put_photo_on(Some(url), &[(0, data.to_vec(), "image/jpeg")])
            .await;
        if p.volume_id == v {
            return p;
        }
    }
    panic!("no photo was assigned to volume {v}");
}

/// An encode drops every replica once the shards serve, so it must build from a replica that
/// holds every needle of a live photo the others hold. Photo X committed with its needle on
/// the second replica only, photo Y on the first only (writes the other replica missed under
/// a quorum write, their copy repairs not done): refused while no replica holds both. Once Y
/// is deleted the second replica holds every live photo; an uncommitted needle only the first
/// holds (an upload that failed before its commit) does not stop the encode, which builds
/// from the second: X is served by every shard store after both replicas were dropped.
/// Before, the encode built from the first replica that was up, and X was lost with the
/// replicas it dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encode_builds_from_a_replica_holding_every_needle_or_refuses() {
    let env = Env::start(
        ClusterOptions {
            stores: 4,
            replication: 2,
            min_writable_volumes: 1,
            ..Default::default()
        },
        1,
        |_, c| c.admission = Admission::None,
    )
    .await;
    let (v, photos) = photos_on_one_volume(&env, 3, 900).await;
    let info = volume_info(&env, v).await;
    let (first, second) = (info.replicas[0].url.clone(), info.replicas[1].url.clone());
    let (xd, yd) = (bytes(7_000, 950), bytes(7_500, 951));
    let x = on_one_replica(&env, v, &second, &xd).await;
    let y = on_one_replica(&env, v, &first, &yd).await;
    // An uncommitted needle on the first replica only.
    let orphan = format!("{first}/v1/needles/{v}/9000003/0/{:016x}", 0x5eedu64);
    let r = env
        .cluster
        .admin_http()
        .put(&orphan)
        .header("content-type", "image/jpeg")
        .body(bytes(3_000, 952))
        .send()
        .await
        .expect("orphan PUT");
    assert!(r.status().is_success(), "{}", r.status());
    seal(&env, v).await;
    let dir = env.cluster.directory_url();
    let encode = || async {
        post_json(
            &env.http,
            &format!("{dir}/v1/volumes/{v}/encode"),
            serde_json::json!({"k": 2, "m": 1, "block_bytes": 65536}),
        )
        .await
    };
    // Neither replica holds both X and Y: refused, the volume stays replicated.
    let (st, body) = encode().await;
    assert_eq!(st, 409, "{}", String::from_utf8_lossy(&body));
    assert!(volume_info(&env, v).await.ec.is_none());
    // Y deleted: the second replica holds every live photo (not the orphan).
    env.dir.delete(y.id).await.expect("delete Y");
    let (st, body) = encode().await;
    assert_eq!(st, 200, "encode: {}", String::from_utf8_lossy(&body));
    let rep: EncodeReport = serde_json::from_slice(&body).expect("report");
    assert_eq!(rep.replicas_dropped, 2, "{rep:?}");
    // X is served by every shard store, Y by none; the other photos too.
    let after = volume_info(&env, v).await;
    for r in &after.replicas {
        let (st, _, got) = get(&env.http, &needle_url(&r.url, &x, 0), &[]).await;
        assert_eq!(st, 200, "X on shard store {}", r.url);
        assert!(got == xd, "X: wrong bytes from {}", r.url);
        let (st, _, _) = get(&env.http, &needle_url(&r.url, &y, 0), &[]).await;
        assert_eq!(st, 404, "deleted Y on shard store {}", r.url);
    }
    read_photos(&env, &photos).await;
}
