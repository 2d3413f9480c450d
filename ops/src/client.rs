//! The clients the command-line tools use: the directory's and the stores' (haystack-client),
//! over one connection pool whose requests give up after a timeout, proving the credentials
//! the command was given (`--token`, or an admin token minted from the cluster secret).

use std::sync::OnceLock;
use std::time::Duration;

use haystack_client::{Credentials, DirectoryClient, StoreClient};

static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();
static TLS: OnceLock<Option<std::sync::Arc<haystack_service::tls::Tls>>> = OnceLock::new();

/// Sets the TLS settings of every client made after (once, at start).
pub fn set_tls(tls: Option<std::sync::Arc<haystack_service::tls::Tls>>) {
    let _ = TLS.set(tls);
}

/// Sets the credentials of every client made after (once, at start).
pub fn set_credentials(c: Credentials) {
    let _ = CREDENTIALS.set(c);
}

/// The tools' credentials.
pub fn credentials() -> Credentials {
    CREDENTIALS.get().cloned().unwrap_or_default()
}

/// A client whose requests give up after `timeout` (and connections after 5 s at most).
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    haystack_service::tls::http_builder(TLS.get().and_then(|t| t.as_deref()))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .map_err(|e| e.to_string())
}

/// A store client with the tools' credentials, whose requests give up after `timeout`.
pub fn store_client(timeout: Duration) -> Result<StoreClient, String> {
    Ok(StoreClient::new(client(timeout)?).with_credentials(credentials()))
}

/// The directory at `directory` (one URL or several equivalent ones, tried in order) and the
/// stores, both with `timeout`.
pub fn clients(
    directory: &[String],
    timeout: Duration,
) -> Result<(DirectoryClient, StoreClient), String> {
    let http = client(timeout)?;
    let dc = DirectoryClient::with_urls(directory, http.clone())
        .map_err(|e| format!("--directory: {e}"))?
        .with_credentials(credentials())
        .on_failover("tool", || ());
    Ok((dc, StoreClient::new(http).with_credentials(credentials())))
}
