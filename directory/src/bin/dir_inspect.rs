//! Offline inspection of an embedded directory database (the directory must be stopped: redb
//! holds a lock): `dir_inspect DIR counts|stores|volumes|photo ID`. Prints JSON.

use std::path::PathBuf;
use std::sync::Arc;

use haystack_directory::meta::embedded::{EmbeddedStore, DB_FILE};
use haystack_directory::meta::{decode, Meta, MetadataStore, Table};
use haystack_directory::model::Photo;

const USAGE: &str = "usage: dir_inspect DIR counts|stores|volumes|photo ID";

async fn inspect(
    store: Arc<dyn MetadataStore>,
    what: &str,
    arg: Option<String>,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let meta = Meta::new(store.clone());
    Ok(match what {
        "counts" => {
            let mut m = serde_json::Map::new();
            for t in Table::ALL {
                m.insert(t.name().into(), store.list(t).await?.len().into());
            }
            serde_json::Value::Object(m)
        }
        "stores" => {
            let all = meta.list_stores().await?;
            serde_json::Value::Array(
                all.into_iter()
                    .map(|s| serde_json::json!({"version": s.version, "record": s.value}))
                    .collect(),
            )
        }
        "volumes" => {
            let all = meta.list_volumes().await?;
            serde_json::Value::Array(
                all.into_iter()
                    .map(|v| serde_json::json!({"version": v.version, "record": v.value}))
                    .collect(),
            )
        }
        "photo" => {
            let id: u64 = arg.ok_or(USAGE)?.parse()?;
            match store.get(Table::Photos, id).await? {
                Some(s) => {
                    let p: Photo = decode(Table::Photos, id, &s.data)?;
                    serde_json::json!({"version": s.version, "record": p})
                }
                None => return Err(format!("photo {id} not found").into()),
            }
        }
        _ => return Err(USAGE.into()),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or(USAGE)?);
    let what = args.next().ok_or(USAGE)?;
    let arg = args.next();
    if !dir.join(DB_FILE).exists() {
        return Err(format!("{} has no {DB_FILE}", dir.display()).into());
    }
    let store: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(&dir).map_err(|e| {
        format!("{e} (is the directory still running? it holds the database lock)")
    })?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let r = inspect(store.clone(), &what, arg).await;
        store.close().await;
        r
    })?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
