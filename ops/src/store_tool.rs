//! `haystack store drain ID` and `haystack store remove ID`: taking a machine out of a running
//! cluster. A drain marks the store `draining` in the directory (it takes no new replicas) and
//! waits while the directory moves every replica it holds onto other machines, placement rules
//! kept; the directory marks it `retired` once empty. Remove deletes a retired, stopped store
//! from the records and is refused while it holds data.

use std::time::{Duration, Instant};

use haystack_proto::directory::{StoreInfo, StoreLifecycle};

use crate::client::clients;
use crate::volume_tool::find_store;

fn text(e: haystack_client::ClientError) -> String {
    e.to_string()
}

/// Starts draining store `what` (id or URL) and, unless `no_wait`, waits up to `timeout` for
/// it to be retired, showing the replicas left.
pub async fn drain(
    directory: &[String],
    what: &str,
    no_wait: bool,
    timeout: Duration,
    json: bool,
) -> Result<(), String> {
    let (dc, _) = clients(directory, Duration::from_secs(60))?;
    let stores = dc.stores().await.map_err(text)?;
    let id = find_store(&stores, what)?.store_id;
    let mut info = dc
        .set_store_lifecycle(id, StoreLifecycle::Draining)
        .await
        .map_err(text)?;
    let started = Instant::now();
    let pb = if json || no_wait {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(info.replicas as u64)
    };
    while !no_wait && info.lifecycle != StoreLifecycle::Retired {
        if started.elapsed() > timeout {
            pb.finish_and_clear();
            return Err(format!(
                "store {id} still holds replicas of {} volumes after {timeout:?}; the drain goes \
                 on in the directory (see `haystack status`)",
                info.replicas
            ));
        }
        pb.set_message(format!(
            "store {id}: {} volumes left to move",
            info.replicas
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let all: Vec<StoreInfo> = dc.stores().await.map_err(text)?;
        info = all
            .into_iter()
            .find(|s| s.store_id == id)
            .ok_or_else(|| format!("store {id} disappeared from the directory"))?;
        if info.lifecycle == StoreLifecycle::Active {
            pb.finish_and_clear();
            return Err(format!(
                "the drain of store {id} was stopped (lifecycle active)"
            ));
        }
    }
    pb.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?
        );
    } else if no_wait {
        println!(
            "store {id} is draining: {} volumes to move (see `haystack status`)",
            info.replicas
        );
    } else {
        println!(
            "store {id} ({}) is drained and retired in {:.1?}; stop it, then `haystack store \
             remove {id}`",
            info.url,
            started.elapsed()
        );
    }
    Ok(())
}

/// Removes store `what` (id or URL) from the directory's records.
pub async fn remove(directory: &[String], what: &str, json: bool) -> Result<(), String> {
    let (dc, _) = clients(directory, Duration::from_secs(60))?;
    let stores = dc.stores().await.map_err(text)?;
    let s = find_store(&stores, what)?.clone();
    dc.remove_store(s.store_id).await.map_err(text)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "removed": s.store_id.to_string(), "url": s.url })
        );
    } else {
        println!("store {} ({}) removed", s.store_id, s.url);
    }
    Ok(())
}
