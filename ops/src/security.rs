//! The cluster secret as the `haystack` command finds it (HAYSTACK_CLUSTER_SECRET, or the file
//! of --cluster-secret-file), the secret file `haystack server` makes, the tools' credentials
//! and `haystack token create`.

use std::io::Write;
use std::path::Path;

use haystack_client::Credentials;
use haystack_proto::auth::{valid_subject, ClusterKeys, Role};
use haystack_service::auth::{unix_now, Security};
use haystack_service::tls::{Tls, TlsFiles};

/// The environment variable that may hold the secret itself.
pub const SECRET_ENV: &str = "HAYSTACK_CLUSTER_SECRET";

/// The security settings of this process: keys from the environment or the secret file
/// (none when neither is given), the audit log, TLS and signed reads.
pub fn load(
    secret_file: Option<&Path>,
    audit_log: Option<std::path::PathBuf>,
    tls: Option<TlsFiles>,
    signed_reads_ttl_secs: Option<u64>,
) -> Result<Security, String> {
    let secret = match (std::env::var(SECRET_ENV).ok(), secret_file) {
        (Some(s), _) if !s.trim().is_empty() => Some(s),
        (_, Some(p)) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the cluster secret {}: {e}", p.display()))?,
        ),
        _ => None,
    };
    let keys = match secret {
        Some(s) => Some(ClusterKeys::from_secret(&s)?),
        None => None,
    };
    let tls = match tls {
        Some(files) => Some(std::sync::Arc::new(Tls::load(files)?)),
        None => None,
    };
    Ok(Security {
        keys,
        audit_log,
        tls,
        signed_reads_ttl_secs,
    })
}

/// Refuses signed reads without the cluster secret in a role (`haystack server` passes its
/// own secret file to the roles, so it is not checked there).
pub fn check_signed_reads(security: &Security) -> Result<(), String> {
    if security.signed_reads_ttl_secs.is_some() && security.keys.is_none() {
        return Err(format!(
            "--signed-reads-ttl needs the cluster secret (--cluster-secret-file or {SECRET_ENV})"
        ));
    }
    Ok(())
}

/// What the operator tools prove: the token given, else an admin token minted from the
/// secret, else nothing.
pub fn tool_credentials(token: Option<&str>, keys: Option<&ClusterKeys>) -> Credentials {
    match (token, keys) {
        (Some(t), _) => Credentials::Token(t.trim().to_string()),
        (None, Some(k)) => Credentials::Keys {
            keys: k.clone(),
            role: Role::Admin,
            subject: "haystack-cli".into(),
        },
        (None, None) => Credentials::None,
    }
}

/// Makes `path` hold a fresh random secret unless it already holds one (readable by its owner
/// only). Returns whether it was made.
pub fn ensure_secret_file(path: &Path) -> Result<bool, String> {
    if path.exists() {
        let s = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ClusterKeys::from_secret(&s).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(false);
    }
    use rand::Rng;
    let mut rng = rand::rng();
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(true)
}

/// `haystack token create`: prints a token of `role` for `subject`, valid `ttl_secs`.
pub fn create_token(
    keys: Option<&ClusterKeys>,
    role: &str,
    subject: &str,
    ttl_secs: u64,
) -> Result<(), String> {
    let keys = keys
        .ok_or_else(|| format!("no cluster secret: give --cluster-secret-file or {SECRET_ENV}"))?;
    let role = match Role::parse(role) {
        Some(r @ (Role::Admin | Role::Ops | Role::Read)) => r,
        _ => return Err(format!("--role {role:?}: expected admin, ops or read")),
    };
    if !valid_subject(subject) {
        return Err(format!(
            "--subject {subject:?}: 1 to 64 letters, digits or -_@: characters"
        ));
    }
    println!("{}", keys.mint(role, subject, unix_now() + ttl_secs));
    Ok(())
}
