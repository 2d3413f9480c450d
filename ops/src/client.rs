//! HTTP helpers shared by the command-line tools: JSON requests whose errors name the URL
//! and carry the server's answer.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A client whose requests give up after `timeout`.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())
}

/// Decodes a successful JSON answer; any other status is an error with its body.
pub async fn json_of<T: DeserializeOwned>(r: reqwest::Response, what: &str) -> Result<T, String> {
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(format!("{what}: {status}: {text}"));
    }
    r.json()
        .await
        .map_err(|e| format!("{what}: bad answer: {e}"))
}

pub async fn get_json<T: DeserializeOwned>(c: &reqwest::Client, url: &str) -> Result<T, String> {
    let what = format!("GET {url}");
    let r = c
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    json_of(r, &what).await
}

pub async fn post_json<B: Serialize, T: DeserializeOwned>(
    c: &reqwest::Client,
    url: &str,
    body: Option<&B>,
) -> Result<T, String> {
    let what = format!("POST {url}");
    let mut req = c.post(url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.map_err(|e| format!("{what}: {e}"))?;
    json_of(r, &what).await
}
