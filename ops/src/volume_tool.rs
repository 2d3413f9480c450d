//! `haystack volume ...`: operator tools on one logical volume (today: seal).

use std::time::Duration;

use haystack_proto::directory::{LogicalVolumeInfo, VolumeStateRequest};
use haystack_proto::{VolumeInfo, VolumeState};
use serde::Serialize;

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

async fn post_json<B: Serialize, T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: &str,
    body: Option<&B>,
) -> Result<T, String> {
    let mut req = c.post(url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(format!("POST {url}: {status}: {text}"));
    }
    r.json()
        .await
        .map_err(|e| format!("POST {url}: bad answer: {e}"))
}

/// Seals logical volume `id`: the directory stops assigning uploads to it, then every
/// replica seals (read-only for good, index moved to a mapped sorted file).
pub async fn seal(directory: &str, id: u32, json: bool) -> Result<(), String> {
    let directory = directory.trim_end_matches('/');
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| e.to_string())?;
    let dir: LogicalVolumeInfo = post_json(
        &c,
        &format!("{directory}/v1/volumes/{id}/state"),
        Some(&VolumeStateRequest {
            state: VolumeState::Sealed,
            reason: Some("sealed by an operator".into()),
        }),
    )
    .await?;
    let mut replicas = Vec::new();
    for r in &dir.replicas {
        if !json {
            eprintln!("sealing volume {id} on {} ...", r.url);
        }
        let res =
            post_json::<(), VolumeInfo>(&c, &format!("{}/v1/volumes/{id}/seal", r.url), None).await;
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
