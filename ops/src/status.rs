//! `haystack status`: machines and logical volumes of a running cluster, as a table or JSON.

use std::collections::HashMap;
use std::time::Duration;

use haystack_proto::directory::{LogicalVolumeInfo, StoreInfo, StoreLifecycle, StoreState};
use serde::Serialize;

use crate::client::clients;

/// Everything `status` shows, as `--json` prints it.
#[derive(Serialize)]
struct Status {
    stores: Vec<StoreInfo>,
    volumes: Vec<VolumeStatus>,
    /// The directory's repair queue; none when it did not answer.
    repairs: Option<Repairs>,
}

#[derive(Serialize)]
struct VolumeStatus {
    #[serde(flatten)]
    directory: LogicalVolumeInfo,
    /// Bytes held by deleted or overwritten needles, the most any replica reports
    /// (reclaimable by compaction); none when no replica answered.
    dead_bytes: Option<u64>,
    /// The oldest last full scrub pass among the replicas that answered (Unix seconds); none
    /// when one of them was never scrubbed or none answered.
    scrubbed_unix: Option<u64>,
}

/// Queued repairs, as `--json` prints them.
#[derive(Serialize)]
struct Repairs {
    pending: usize,
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

pub async fn run(directory: &[String], json: bool) -> Result<(), String> {
    let (dir, store_client) = clients(directory, Duration::from_secs(5))?;
    let stores = dir.stores().await.map_err(|e| e.to_string())?;
    let volumes = dir.volumes().await.map_err(|e| e.to_string())?;
    // Dead bytes live on the stores; ask every store that is up (one that does not answer
    // is shown without them).
    let mut dead: HashMap<u32, u64> = HashMap::new();
    let mut scrubbed: HashMap<u32, Option<u64>> = HashMap::new();
    for s in stores.iter().filter(|s| s.state == StoreState::Up) {
        if let Ok(vols) = store_client.volumes(&s.url).await {
            for v in vols {
                let d = dead.entry(v.id).or_insert(0);
                *d = (*d).max(v.dead_bytes);
                let at = scrubbed.entry(v.id).or_insert(v.scrubbed_unix);
                *at = match (*at, v.scrubbed_unix) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
            }
        }
    }
    let repairs = dir.repairs().await.map(|r| r.len()).ok();
    let status = Status {
        volumes: volumes
            .into_iter()
            .map(|v| VolumeStatus {
                dead_bytes: dead.get(&v.id).copied(),
                scrubbed_unix: scrubbed.get(&v.id).copied().flatten(),
                directory: v,
            })
            .collect(),
        stores,
        repairs: repairs.map(|pending| Repairs { pending }),
    };
    if json {
        let out = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
        println!("{out}");
        return Ok(());
    }
    println!("MACHINES");
    println!(
        "{:<20} {:<28} {:<5} {:<8} {:<9} {:>22} VOLUMES",
        "ID", "URL", "STATE", "HEALTHY", "LIFECYCLE", "FREE / CAPACITY"
    );
    for s in &status.stores {
        let vols: Vec<String> = s.volumes.iter().map(|v| v.to_string()).collect();
        println!(
            "{:<20} {:<28} {:<5} {:<8} {:<9} {:>22} {}",
            s.store_id,
            s.url,
            if s.state == StoreState::Up {
                "up"
            } else {
                "DOWN"
            },
            if s.healthy { "yes" } else { "NO" },
            match s.lifecycle {
                StoreLifecycle::Active => "active",
                StoreLifecycle::Draining => "draining",
                StoreLifecycle::Retired => "retired",
            },
            format!("{} / {}", gib(s.free_bytes), gib(s.capacity_bytes)),
            vols.join(",")
        );
    }
    println!();
    println!("VOLUMES");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "{:<6} {:<10} {:>6} {:>12} {:>10} REPLICAS",
        "ID", "STATE", "FILL", "DEAD", "SCRUBBED"
    );
    for v in &status.volumes {
        let d = &v.directory;
        let fill = if d.capacity_bytes > 0 {
            format!(
                "{:.0}%",
                100.0 * d.used_bytes as f64 / d.capacity_bytes as f64
            )
        } else {
            "-".into()
        };
        let state = match (d.writable, d.effective_state) {
            (true, _) => "writable".to_string(),
            (false, s) => format!("{s:?}").to_lowercase(),
        };
        let mut replicas: Vec<String> = d
            .replicas
            .iter()
            .map(|r| format!("{}{}", r.url, if r.up { "" } else { " (DOWN)" }))
            .collect();
        // Asynchronous remote replicas, with how far behind their shipper last said they are.
        replicas.extend(d.remote_replicas.iter().map(|r| {
            let lag = match (r.lag_bytes, r.lag_secs) {
                (Some(b), Some(s)) => format!("lag {b} B, {s} s"),
                _ => "lag ?".into(),
            };
            format!(
                "remote {}{} ({lag})",
                r.url,
                if r.up { "" } else { " (DOWN)" }
            )
        }));
        let scrubbed = match v.scrubbed_unix {
            Some(t) => format!("{}h ago", now.saturating_sub(t) / 3600),
            None => "never".into(),
        };
        println!(
            "{:<6} {:<10} {:>6} {:>12} {:>10} {}",
            d.id,
            state,
            fill,
            v.dead_bytes
                .map(|b| b.to_string())
                .unwrap_or_else(|| "?".into()),
            scrubbed,
            replicas.join(", ")
        );
    }
    println!();
    match status.repairs {
        Some(r) => println!("REPAIRS QUEUED: {}", r.pending),
        None => println!("REPAIRS QUEUED: ? (the directory did not answer)"),
    }
    Ok(())
}
