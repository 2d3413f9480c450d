//! `haystack volume ...`: operator tools on one logical volume (today: seal).

use std::time::Duration;

use haystack_proto::directory::{LogicalVolumeInfo, VolumeStateRequest};
use haystack_proto::{VolumeInfo, VolumeState};
use serde::Serialize;

use crate::client::{client, get_json, post_json};

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
pub async fn seal(directory: &str, id: u32, json: bool) -> Result<(), String> {
    let directory = directory.trim_end_matches('/');
    let c = client(Duration::from_secs(300))?;
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
    c: &reqwest::Client,
    directory: &str,
    id: u32,
    bad: &str,
    others: &[String],
    key: &str,
    alt: u32,
) -> Result<(), String> {
    let photo: haystack_proto::directory::PhotoInfo =
        get_json(c, &format!("{directory}/v1/photos/{key}")).await?;
    let path = format!(
        "/v1/needles/{id}/{key}/{alt}/{}",
        haystack_proto::format_cookie(photo.cookie)
    );
    for src in others {
        let Ok(r) = c.get(format!("{src}{path}")).send().await else {
            continue;
        };
        if !r.status().is_success() {
            continue;
        }
        let ct = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        let put = c
            .put(format!("{bad}{path}"))
            .header(reqwest::header::CONTENT_TYPE, ct)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if put.status().is_success() {
            return Ok(());
        }
        return Err(format!(
            "writing the good copy to {bad} failed: {}",
            put.status()
        ));
    }
    Err("no other replica has a good copy".into())
}

/// Full CRC scan of every replica of logical volume `id`; corrupt needles are reported and,
/// with `repair`, rewritten from a replica that has them intact.
pub async fn verify(directory: &str, id: u32, repair: bool, json: bool) -> Result<(), String> {
    let directory = directory.trim_end_matches('/');
    let c = client(Duration::from_secs(3600))?;
    let dir: LogicalVolumeInfo = get_json(&c, &format!("{directory}/v1/volumes/{id}")).await?;
    let urls: Vec<String> = dir.replicas.iter().map(|r| r.url.clone()).collect();
    let mut out = Vec::new();
    for url in &urls {
        if !json {
            eprintln!("verifying volume {id} on {url} ...");
        }
        let mut v = VerifyReplica {
            url: url.clone(),
            report: None,
            error: None,
            repaired: Vec::new(),
            unrepaired: Vec::new(),
        };
        match post_json::<(), haystack_store::VerifyReport>(
            &c,
            &format!("{url}/v1/volumes/{id}/verify"),
            None,
        )
        .await
        {
            Ok(r) => {
                for n in &r.corrupt {
                    let name = format!("{}/{}", n.key, n.alt);
                    if !repair {
                        v.unrepaired.push(name);
                        continue;
                    }
                    let others: Vec<String> = urls.iter().filter(|u| *u != url).cloned().collect();
                    match repair_needle(&c, directory, id, url, &others, &n.key, n.alt).await {
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
        }
    }
    let bad = out
        .iter()
        .filter(|v| v.error.is_some() || !v.unrepaired.is_empty())
        .count();
    if bad > 0 {
        return Err(format!(
            "{bad} replica(s) of volume {id} failed the scan or still hold corrupt needles"
        ));
    }
    Ok(())
}
