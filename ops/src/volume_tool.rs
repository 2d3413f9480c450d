//! `haystack volume ...`: operator tools on one logical volume: seal, verify, compact,
//! rebuild-index, repair.

use std::time::Duration;

use bytes::Bytes;
use haystack_client::{DirectoryClient, StoreClient};
use haystack_proto::directory::LogicalVolumeInfo;
use haystack_proto::{NeedleAddr, VolumeInfo, VolumeState};
use serde::Serialize;

use crate::client::{clients, store_client};

fn text(e: haystack_client::ClientError) -> String {
    e.to_string()
}

#[derive(Serialize)]
struct ReplicaResult {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume: Option<VolumeInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct SealResult {
    volume: u32,
    directory: LogicalVolumeInfo,
    replicas: Vec<ReplicaResult>,
}

/// Seals logical volume `id`: the directory stops assigning uploads to it, then every
/// replica seals (read-only for good, index moved to a mapped sorted file).
/// `haystack rebalance [--dry-run] [--spread F]`: the plan, then (unless a dry run) its run.
pub async fn rebalance(
    directory: &[String],
    spread: Option<f64>,
    dry_run: bool,
    json: bool,
) -> Result<(), String> {
    // Each move is a bulk copy of a volume: allow a long run.
    let (dc, _) = clients(directory, Duration::from_secs(6 * 3600))?;
    let plan = if dry_run {
        dc.rebalance_plan(spread).await.map_err(text)?
    } else {
        dc.rebalance(spread).await.map_err(text)?
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "disk use spread {:.4} (fullest minus emptiest store), bound {:.4}: {} move(s){}",
            plan.spread,
            plan.max_spread,
            plan.moves.len(),
            if dry_run { " planned" } else { "" }
        );
        for m in &plan.moves {
            let what = match (&m.done, &m.error) {
                (_, Some(e)) => format!("failed: {e}"),
                (Some(true), _) => "done".into(),
                (Some(false), _) => "skipped (no healthy source, or placement refused)".into(),
                (None, _) => "planned".into(),
            };
            println!(
                "  volume {:>6}: store {} -> store {} ({} bytes) {what}",
                m.volume, m.from_store_id, m.to_store_id, m.bytes
            );
        }
    }
    if plan.moves.iter().any(|m| m.error.is_some()) {
        return Err("some moves failed (see above); run again to retry".into());
    }
    Ok(())
}

/// `haystack volume promote ID --store S`: an asynchronous remote replica becomes a replica.
pub async fn promote(directory: &[String], id: u32, store: &str, json: bool) -> Result<(), String> {
    let (dc, _) = clients(directory, Duration::from_secs(60))?;
    let vol = dc.volume(id).await.map_err(text)?;
    let remote = vol
        .remote_replicas
        .iter()
        .find(|r| {
            r.store_id.to_string() == store
                || r.url.trim_end_matches('/') == store.trim_end_matches('/')
        })
        .ok_or_else(|| {
            format!(
                "volume {id} has no remote replica on {store}; its remote replicas: {:?}",
                vol.remote_replicas
                    .iter()
                    .map(|r| format!("{} ({})", r.store_id, r.url))
                    .collect::<Vec<_>>()
            )
        })?;
    let lag = remote.lag_bytes;
    let after = dc.promote_remote(id, remote.store_id).await.map_err(text)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&after).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "volume {id}: remote replica on {} ({}) promoted; it was {} bytes behind at its last report; replicas now {:?}",
            remote.store_id,
            remote.url,
            lag.map_or("an unknown number of".to_string(), |l| l.to_string()),
            after.replicas.iter().map(|r| r.store_id).collect::<Vec<_>>()
        );
    }
    Ok(())
}

pub async fn seal(directory: &[String], id: u32, json: bool) -> Result<(), String> {
    let (dc, stores) = clients(directory, Duration::from_secs(300))?;
    let dir = dc
        .set_volume_state(
            id,
            VolumeState::Sealed,
            Some("sealed by an operator".into()),
        )
        .await
        .map_err(text)?;
    let mut replicas = Vec::new();
    for r in &dir.replicas {
        if !json {
            eprintln!("sealing volume {id} on {} ...", r.url);
        }
        let res = stores.seal(&r.url, id).await.map_err(text);
        replicas.push(match res {
            Ok(v) => ReplicaResult {
                url: r.url.clone(),
                volume: Some(v),
                error: None,
            },
            Err(e) => ReplicaResult {
                url: r.url.clone(),
                volume: None,
                error: Some(e),
            },
        });
    }
    let failed = replicas.iter().filter(|r| r.error.is_some()).count();
    let out = SealResult {
        volume: id,
        directory: dir,
        replicas,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        for r in &out.replicas {
            match (&r.volume, &r.error) {
                (Some(v), _) => println!(
                    "{}: volume {} {:?}, {} needles",
                    r.url, v.id, v.state, v.needles
                ),
                (_, Some(e)) => println!("{}: FAILED: {e}", r.url),
                _ => {}
            }
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} replica(s) of volume {id} did not seal; the directory no longer assigns uploads to it; run the command again when they are up"
        ));
    }
    Ok(())
}

#[derive(Serialize)]
struct VerifyReplica {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<haystack_store::VerifyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    repaired: Vec<String>,
    unrepaired: Vec<String>,
}

/// Copies needle (key, alt) of volume `id` from another replica onto `bad`; the rewrite
/// appends a good copy, which then wins over the corrupt one.
async fn repair_needle(
    dir: &DirectoryClient,
    stores: &StoreClient,
    id: u32,
    bad: &str,
    others: &[String],
    key: &str,
    alt: u32,
) -> Result<(), String> {
    let key: u64 = key
        .parse()
        .map_err(|_| format!("key {key:?} is not a 64-bit unsigned integer"))?;
    let photo = dir.lookup(key).await.map_err(text)?;
    let addr = NeedleAddr::new(id, key, alt, photo.cookie);
    for src in others {
        let Ok(n) = stores.get_needle(src, &addr).await else {
            continue;
        };
        let ct = n.content_type_str().to_string();
        return stores
            .put_needle(bad, &addr, &ct, Bytes::clone(&n.data))
            .await
            .map_err(|e| format!("writing the good copy to {bad} failed: {e}"));
    }
    Err("no other replica has a good copy".into())
}

/// Full CRC scan of every replica of logical volume `id`; corrupt needles are reported and,
/// with `repair`, rewritten from a replica that has them intact.
pub async fn verify(directory: &[String], id: u32, repair: bool, json: bool) -> Result<(), String> {
    let (dc, stores) = clients(directory, Duration::from_secs(3600))?;
    let dir = dc.volume(id).await.map_err(text)?;
    if dir.ec.is_some() {
        return crate::ec_tool::verify(directory, &dir, json).await;
    }
    let urls: Vec<String> = dir.replicas.iter().map(|r| r.url.clone()).collect();
    let mut out = Vec::new();
    for url in &urls {
        let pb = if json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        pb.set_message(format!("verifying volume {id} on {url} (full CRC scan)"));
        pb.enable_steady_tick(Duration::from_millis(200));
        let mut v = VerifyReplica {
            url: url.clone(),
            report: None,
            error: None,
            repaired: Vec::new(),
            unrepaired: Vec::new(),
        };
        let scanned = stores
            .verify::<haystack_store::VerifyReport>(url, id)
            .await
            .map_err(text);
        pb.finish_and_clear();
        match scanned {
            Ok(r) => {
                for n in &r.corrupt {
                    let name = format!("{}/{}", n.key, n.alt);
                    if !repair {
                        v.unrepaired.push(name);
                        continue;
                    }
                    let others: Vec<String> = urls.iter().filter(|u| *u != url).cloned().collect();
                    match repair_needle(&dc, &stores, id, url, &others, &n.key, n.alt).await {
                        Ok(()) => v.repaired.push(name),
                        Err(e) => v.unrepaired.push(format!("{name}: {e}")),
                    }
                }
                v.report = Some(r);
            }
            Err(e) => v.error = Some(e),
        }
        out.push(v);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        for v in &out {
            match (&v.report, &v.error) {
                (Some(r), _) => println!(
                    "{}: {} needles checked ({} bytes), {} corrupt, {} repaired",
                    v.url,
                    r.checked,
                    r.bytes,
                    r.corrupt.len(),
                    v.repaired.len()
                ),
                (_, Some(e)) => println!("{}: FAILED: {e}", v.url),
                _ => {}
            }
            for u in &v.unrepaired {
                println!("  not repaired: {u}");
            }
            for d in v.report.iter().flat_map(|r| &r.unindexed) {
                println!(
                    "  unindexed region at offset {} ({} bytes): {} ({}); compare with a replica or repair it with `haystack volume repair`",
                    d.offset, d.bytes, d.reason, d.action
                );
            }
        }
    }
    let bad = out
        .iter()
        .filter(|v| {
            v.error.is_some()
                || !v.unrepaired.is_empty()
                || v.report.as_ref().is_some_and(|r| {
                    r.unindexed
                        .iter()
                        .any(|d| d.kind == haystack_store::DamageKind::Skipped)
                })
        })
        .count();
    if bad > 0 {
        return Err(format!(
            "{bad} replica(s) of volume {id} failed the scan, still hold corrupt needles or have damaged regions recovery skipped"
        ));
    }
    Ok(())
}

/// A spinner or bar on stderr that follows a replica's compaction progress; hidden when
/// stderr is not a terminal or the output is JSON.
fn progress_bar(json: bool, msg: String) -> indicatif::ProgressBar {
    let pb = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

#[derive(Serialize)]
struct ReplicaReport<T> {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn print_reports<T: Serialize>(
    out: &[ReplicaReport<T>],
    json: bool,
    line: impl Fn(&T) -> String,
) -> Result<usize, String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(out).map_err(|e| e.to_string())?
        );
    } else {
        for r in out {
            match (&r.report, &r.error) {
                (Some(rep), _) => println!("{}: {}", r.url, line(rep)),
                (_, Some(e)) => println!("{}: FAILED: {e}", r.url),
                _ => {}
            }
        }
    }
    Ok(out.iter().filter(|r| r.error.is_some()).count())
}

/// Compacts every replica of logical volume `id`, one replica at a time (the others keep
/// serving at full speed), following each one's progress.
pub async fn compact(directory: &[String], id: u32, json: bool) -> Result<(), String> {
    let (dc, stores) = clients(directory, Duration::from_secs(6 * 3600))?;
    let poll = store_client(Duration::from_secs(10))?;
    let dir = dc.volume(id).await.map_err(text)?;
    let mut out = Vec::new();
    for r in &dir.replicas {
        let pb = progress_bar(json, format!("compacting volume {id} on {}", r.url));
        let req = stores.compact::<haystack_store::CompactReport>(&r.url, id);
        tokio::pin!(req);
        let res = loop {
            tokio::select! {
                res = &mut req => break res,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if let Ok(v) = poll.volume(&r.url, id).await {
                        if let Some(p) = v.compaction {
                            pb.set_length(p.total_bytes);
                            pb.set_position(p.done_bytes);
                        }
                    }
                }
            }
        };
        pb.finish_and_clear();
        out.push(match res {
            Ok(rep) => ReplicaReport {
                url: r.url.clone(),
                report: Some(rep),
                error: None,
            },
            Err(e) => ReplicaReport {
                url: r.url.clone(),
                report: None,
                error: Some(e.to_string()),
            },
        });
    }
    let failed = print_reports(&out, json, |r: &haystack_store::CompactReport| {
        format!(
            "{} -> {} bytes ({} reclaimed), {} needles, writes paused {} ms, {} ms in all",
            r.before_bytes, r.after_bytes, r.reclaimed_bytes, r.needles, r.pause_ms, r.elapsed_ms
        )
    })?;
    if failed > 0 {
        return Err(format!(
            "{failed} replica(s) of volume {id} were not compacted (nothing changed on them)"
        ));
    }
    Ok(())
}

/// Rebuilds the index of every replica of logical volume `id` from its volume file.
pub async fn rebuild_index(directory: &[String], id: u32, json: bool) -> Result<(), String> {
    let (dc, stores) = clients(directory, Duration::from_secs(6 * 3600))?;
    let dir = dc.volume(id).await.map_err(text)?;
    let mut out = Vec::new();
    for r in &dir.replicas {
        let pb = if json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        pb.set_message(format!("rebuilding the index of volume {id} on {}", r.url));
        pb.enable_steady_tick(Duration::from_millis(200));
        let res = stores
            .rebuild_index::<haystack_store::RebuildReport>(&r.url, id)
            .await
            .map_err(text);
        pb.finish_and_clear();
        out.push(ReplicaReport {
            url: r.url.clone(),
            error: res.as_ref().err().cloned(),
            report: res.ok(),
        });
    }
    let failed = print_reports(&out, json, |r: &haystack_store::RebuildReport| {
        format!(
            "{} needles ({} deleted), {} bytes scanned in {} ms",
            r.needles, r.deleted_needles, r.size_bytes, r.elapsed_ms
        )
    })?;
    if failed > 0 {
        return Err(format!("{failed} replica(s) of volume {id} failed"));
    }
    Ok(())
}

#[derive(Serialize)]
struct RepairResult {
    volume: u32,
    source: String,
    from_store: String,
    to_store: String,
    copied: VolumeInfo,
    directory: LogicalVolumeInfo,
}

/// Finds a store by id (decimal) or URL.
pub(crate) fn find_store<'a>(
    stores: &'a [haystack_proto::directory::StoreInfo],
    what: &str,
) -> Result<&'a haystack_proto::directory::StoreInfo, String> {
    let w = what.trim_end_matches('/');
    stores
        .iter()
        .find(|s| s.store_id.to_string() == w || s.url.trim_end_matches('/') == w)
        .ok_or_else(|| format!("no store {what:?} is registered (see `haystack status`)"))
}

/// Rebuilds shard `shard` of erasure-coded volume `id` (on store `to`, id or URL, or one the
/// directory picks).
pub async fn repair_shard(
    directory: &[String],
    id: u32,
    shard: u16,
    to: Option<&str>,
    json: bool,
) -> Result<(), String> {
    let to = match to {
        Some(t) => {
            let (dc, _) = clients(directory, Duration::from_secs(60))?;
            let stores = dc.stores().await.map_err(text)?;
            Some(find_store(&stores, t)?.store_id)
        }
        None => None,
    };
    crate::ec_tool::repair(directory, id, shard, to, json).await
}

/// Haystack's bulk repair: copies logical volume `id` from a healthy replica onto store `to`
/// (the whole volume file, checked on arrival), then points the directory at the new replica
/// in place of `from` (by default the replica whose store is down). The volume is read-only
/// while it runs and writable again after, unless it was sealed or read-only before.
pub async fn repair(
    directory: &[String],
    id: u32,
    to: &str,
    from: Option<&str>,
    json: bool,
) -> Result<(), String> {
    let (dc, store_client) = clients(directory, Duration::from_secs(6 * 3600))?;
    let stores = dc.stores().await.map_err(text)?;
    let vol = dc.volume(id).await.map_err(text)?;
    let target = find_store(&stores, to)?.clone();
    if target.state != haystack_proto::directory::StoreState::Up {
        return Err(format!(
            "store {} ({}) is not up",
            target.store_id, target.url
        ));
    }
    if vol.replicas.iter().any(|r| r.store_id == target.store_id) {
        return Err(format!(
            "store {} already holds a replica of volume {id}",
            target.store_id
        ));
    }
    let replaced = match from {
        Some(f) => {
            let s = find_store(&stores, f)?;
            vol.replicas
                .iter()
                .find(|r| r.store_id == s.store_id)
                .ok_or_else(|| format!("store {} holds no replica of volume {id}", s.store_id))?
                .clone()
        }
        None => vol
            .replicas
            .iter()
            .find(|r| !r.up)
            .ok_or_else(|| {
                format!("every replica of volume {id} is up: say which one to move with --from")
            })?
            .clone(),
    };
    let source = vol
        .replicas
        .iter()
        .find(|r| r.up && r.store_id != replaced.store_id)
        .ok_or_else(|| format!("no healthy replica of volume {id} to copy from"))?
        .clone();
    // No uploads while the copy is made: a write after the copy started would be missing.
    let was_writable = vol.state == VolumeState::Writable;
    if was_writable {
        dc.set_volume_state(id, VolumeState::ReadOnly, Some("repair in progress".into()))
            .await
            .map_err(text)?;
    }
    let result = async {
        let pb = if json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        pb.set_message(format!(
            "copying volume {id} from {} to {}",
            source.url, target.url
        ));
        pb.enable_steady_tick(Duration::from_millis(200));
        let copied: Result<VolumeInfo, String> = store_client
            .import(&target.url, id, &source.url)
            .await
            .map_err(text);
        pb.finish_and_clear();
        let copied = copied?;
        let src = store_client.volume(&source.url, id).await.map_err(text)?;
        if copied.needles != src.needles {
            return Err(format!(
                "the copy on {} has {} needles, the source {}: directory not changed",
                target.url, copied.needles, src.needles
            ));
        }
        let d = dc
            .replace_replica(id, replaced.store_id, target.store_id)
            .await
            .map_err(text)?;
        Ok((copied, d))
    }
    .await;
    if was_writable {
        let restored = dc.set_volume_state(id, VolumeState::Writable, None).await;
        if let Err(e) = restored {
            eprintln!("haystack: volume {id} stays read-only: {e}");
        }
    }
    let (copied, d) = result?;
    let out = RepairResult {
        volume: id,
        source: source.url.clone(),
        from_store: format!("{} ({})", replaced.store_id, replaced.url),
        to_store: format!("{} ({})", target.store_id, target.url),
        copied,
        directory: d,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "volume {id}: copied from {} to {} ({} needles, {} bytes); replica on {} replaced",
            out.source, out.to_store, out.copied.needles, out.copied.size_bytes, out.from_store
        );
    }
    Ok(())
}
