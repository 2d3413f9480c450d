//! `haystack volume encode`, and the erasure-coded side of `volume verify` and `volume
//! repair`: the directory orders the work, the stores do it (docs/FORMAT.md, "Erasure-coded
//! volumes").

use std::time::Duration;

use haystack_proto::directory::{EcRebuildRequest, EncodeRequest, LogicalVolumeInfo};
use serde::Serialize;

use crate::client::clients;

fn text(e: haystack_client::ClientError) -> String {
    e.to_string()
}

fn print<T: Serialize>(v: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Erasure-codes sealed volume `id` with k data and m parity shards of `block_bytes` blocks.
pub async fn encode(
    directory: &[String],
    id: u32,
    req: EncodeRequest,
    json: bool,
) -> Result<(), String> {
    let (dc, _) = clients(directory, Duration::from_secs(6 * 3600))?;
    if !json {
        eprintln!(
            "erasure-coding volume {id} as {}+{} with {}-byte blocks ...",
            req.k, req.m, req.block_bytes
        );
    }
    let r = dc.encode_volume(id, &req).await.map_err(text)?;
    if json {
        return print(&r);
    }
    if r.shard_bytes_before > 0 {
        println!(
            "volume {id} re-encoded as generation {}: {} live needles; shard files {} -> {} bytes",
            r.generation, r.needles, r.shard_bytes_before, r.shard_bytes_after
        );
    } else if r.already {
        println!(
            "volume {id} was erasure-coded already ({}+{}); {} retired replica(s) dropped",
            r.k, r.m, r.replicas_dropped
        );
    } else {
        println!(
            "volume {id}: {} needles in {}+{} shards on stores {:?}; {} delete(s) carried over; {} replica(s) dropped",
            r.needles, r.k, r.m, r.shards, r.deletes_carried, r.replicas_dropped
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct ShardVerify {
    shard: usize,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<haystack_store::ec::EcVerifyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Verifies every shard of an erasure-coded volume: piece CRCs, needles, and parity against
/// parity recomputed from the data shards.
pub async fn verify(
    directory: &[String],
    vol: &LogicalVolumeInfo,
    json: bool,
) -> Result<(), String> {
    let (_, stores) = clients(directory, Duration::from_secs(6 * 3600))?;
    let mut out = Vec::new();
    for (i, r) in vol.replicas.iter().enumerate() {
        if !json {
            eprintln!("verifying shard {i} of volume {} on {} ...", vol.id, r.url);
        }
        let res = stores
            .ec_op::<_, haystack_store::ec::EcVerifyReport>(
                &r.url,
                vol.id,
                "verify?parity=true",
                &serde_json::json!({}),
            )
            .await
            .map_err(text);
        out.push(match res {
            Ok(rep) => ShardVerify {
                shard: i,
                url: r.url.clone(),
                report: Some(rep),
                error: None,
            },
            Err(e) => ShardVerify {
                shard: i,
                url: r.url.clone(),
                report: None,
                error: Some(e),
            },
        });
    }
    let bad = out
        .iter()
        .filter(|s| s.error.is_some() || s.report.as_ref().is_some_and(|r| !r.ok()))
        .count();
    if json {
        print(&out)?;
    } else {
        for s in &out {
            match (&s.report, &s.error) {
                (Some(r), _) => println!(
                    "shard {} on {}: {} pieces, {} bad; {} needles checked, {} corrupt; {} parity pieces checked, {} mismatched",
                    s.shard,
                    s.url,
                    r.pieces,
                    r.bad_pieces.len(),
                    r.needles_checked,
                    r.corrupt.len(),
                    r.parity_checked,
                    r.parity_mismatches.len()
                ),
                (_, Some(e)) => println!("shard {} on {}: FAILED: {e}", s.shard, s.url),
                _ => {}
            }
        }
    }
    if bad > 0 {
        return Err(format!(
            "{bad} shard(s) of volume {} failed verification: rebuild them with `haystack volume repair {} --shard N --to STORE`",
            vol.id, vol.id
        ));
    }
    Ok(())
}

/// Rebuilds shard `shard` of an erasure-coded volume on store `to` (id) or one the directory
/// picks.
pub async fn repair(
    directory: &[String],
    id: u32,
    shard: u16,
    to: Option<u64>,
    json: bool,
) -> Result<(), String> {
    let (dc, _) = clients(directory, Duration::from_secs(6 * 3600))?;
    if !json {
        eprintln!("rebuilding shard {shard} of volume {id} from the other shards ...");
    }
    let v = dc
        .rebuild_shard(id, &EcRebuildRequest { shard, to })
        .await
        .map_err(text)?;
    if json {
        return print(&v);
    }
    let r = &v.replicas[shard as usize];
    println!(
        "shard {shard} of volume {id} rebuilt on store {} ({})",
        r.store_id, r.url
    );
    Ok(())
}
