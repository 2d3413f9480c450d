//! [`CacheClient`]: what other services ask of the cache tier: purges of deleted photos.

use haystack_proto::NeedleAddr;

use crate::http::send;
use crate::{urls, ClientError, Credentials};

/// A client of cache nodes over one reqwest client.
#[derive(Clone, Debug)]
pub struct CacheClient {
    http: reqwest::Client,
    creds: Credentials,
}

impl CacheClient {
    pub fn new(http: reqwest::Client) -> Self {
        CacheClient {
            http,
            creds: Credentials::None,
        }
    }

    /// The same client, proving `creds` on every call.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        self.creds = creds;
        self
    }

    /// Forgets the photo of `addr` on the node at `base` (`DELETE` on the needle URL; the node
    /// repeats it to its peers). A 404 is an error ([`ClientError::is_not_found`]).
    pub async fn purge(&self, base: &str, addr: &NeedleAddr) -> Result<(), ClientError> {
        let u = urls::needle(base, addr);
        send(self.creds.apply(self.http.delete(&u)), &u)
            .await
            .map(drop)
    }
}
