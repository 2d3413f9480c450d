//! The clients the command-line tools use: the directory's and the stores' (haystack-client),
//! over one connection pool whose requests give up after a timeout.

use std::time::Duration;

use haystack_client::{DirectoryClient, StoreClient};

/// A client whose requests give up after `timeout`.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())
}

/// The directory at `directory` and the stores, both with `timeout`.
pub fn clients(
    directory: &str,
    timeout: Duration,
) -> Result<(DirectoryClient, StoreClient), String> {
    let http = client(timeout)?;
    Ok((
        DirectoryClient::with_http(directory, http.clone()),
        StoreClient::new(http),
    ))
}
