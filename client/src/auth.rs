//! [`Credentials`]: what a client proves to the services it calls. A service holding the
//! cluster secret mints a short-lived internal token per request (no clock shared beyond a
//! few minutes' skew); an operator tool holds a token made by `haystack token create`.

use std::time::{SystemTime, UNIX_EPOCH};

use haystack_proto::auth::{ClusterKeys, Role, INTERNAL_TOKEN_TTL_SECS};

/// The credentials a client attaches as `Authorization: Bearer ...`.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// None (a cluster without a secret, or public routes only).
    #[default]
    None,
    /// Mint a token of `role` for `subject` from the cluster's keys, per request.
    Keys {
        keys: ClusterKeys,
        role: Role,
        subject: String,
    },
    /// A fixed token.
    Token(String),
}

impl Credentials {
    /// A service's credentials: internal tokens in `subject`'s name (e.g. `store`), or none
    /// when the cluster has no secret.
    pub fn internal(keys: Option<&ClusterKeys>, subject: &str) -> Credentials {
        match keys {
            Some(k) => Credentials::Keys {
                keys: k.clone(),
                role: Role::Internal,
                subject: subject.to_string(),
            },
            None => Credentials::None,
        }
    }

    /// The `Authorization` header value, if any.
    pub fn header(&self) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Token(t) => Some(format!("Bearer {t}")),
            Credentials::Keys {
                keys,
                role,
                subject,
            } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Some(format!(
                    "Bearer {}",
                    keys.mint(*role, subject, now + INTERNAL_TOKEN_TTL_SECS)
                ))
            }
        }
    }

    /// `req` with the credentials attached.
    pub(crate) fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.header() {
            Some(h) => req.header("authorization", h),
            None => req,
        }
    }
}
