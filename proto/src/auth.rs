//! The cluster's credentials as bytes on the wire: keys derived from the cluster secret,
//! bearer tokens (`hs1.`: a role, a subject and an expiry under an HMAC-SHA256) that services
//! send each other and operators hold, and the access classes of routes. Pure: no clock (the
//! caller passes "now"), no I/O, so the parsers of network input are unit- and fuzz-testable.
//!
//! Every key is derived from the one secret with HMAC-SHA256 under a label, so a token of one
//! kind can never be replayed as another kind, and the secret itself never crosses the wire.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest cluster secret accepted, bytes (a generated one is 64 hex digits).
pub const MIN_SECRET_LEN: usize = 32;

/// The header a store reads a scoped write token from (beside `Authorization`).
pub const WRITE_TOKEN_HEADER: &str = "x-haystack-write-token";

/// Seconds a write token the directory issues with an assignment lives.
pub const WRITE_TOKEN_TTL_SECS: u64 = 3600;

/// Seconds an internal token minted by a service for one request lives.
pub const INTERNAL_TOKEN_TTL_SECS: u64 = 300;

/// The query parameter of a signed read URL that holds its expiry (unix seconds).
pub const READ_EXPIRES_PARAM: &str = "expires";

/// The query parameter of a signed read URL that holds its signature.
pub const READ_SIGNATURE_PARAM: &str = "sig";

/// What a route asks of its caller. Anything a service does not name as `Public` asks for
/// at least `Read`, so a route added later is never open by accident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// No credentials: needle and video reads by URL (the cookie is the capability),
    /// `/health`, `/metrics`, the uploader's API (it has its own API key).
    Public,
    /// Listings and lookups that reveal cookies or the cluster's layout.
    Read,
    /// A needle write on a store: an internal bearer, or a write token (the header
    /// [`WRITE_TOKEN_HEADER`]) that the store's handler checks against the volume, key and
    /// alternate key of every needle it writes.
    Write,
    /// Service to service: needle deletes, registration, heartbeats, assignment, commit,
    /// purges.
    Internal,
    /// Operator actions: seal, compact, verify, rebuild, export, import, gc, repair, replace,
    /// state changes. Written to the audit log.
    Admin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Read => "read",
            Access::Write => "write",
            Access::Internal => "internal",
            Access::Admin => "admin",
        }
    }
}

/// Who a token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A service of the cluster (minted per request from the secret): everything.
    Internal,
    /// An operator with every right.
    Admin,
    /// Maintenance: reads and admin actions (seal, compact, verify, repair, gc...), but no
    /// needle writes, photo commits or deletes, or store registration.
    Ops,
    /// Listings and lookups only (dashboards, status).
    Read,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Internal => "internal",
            Role::Admin => "admin",
            Role::Ops => "ops",
            Role::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "internal" => Role::Internal,
            "admin" => Role::Admin,
            "ops" => Role::Ops,
            "read" => Role::Read,
            _ => return None,
        })
    }

    /// Whether a holder of this role may call a route of class `access`.
    pub fn permits(self, access: Access) -> bool {
        match self {
            Role::Internal | Role::Admin => true,
            Role::Ops => !matches!(access, Access::Internal | Access::Write),
            Role::Read => matches!(access, Access::Public | Access::Read),
        }
    }
}

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub role: Role,
    /// Who holds it (a service name, an operator's name): the audit log's "who".
    pub subject: String,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

/// Why a token was refused. The answer to the caller does not say which (401 either way);
/// the log does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
    /// A write token for another volume, key or alternate key.
    OutOfScope,
    /// No signature where one is needed (a read URL without one).
    Missing,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "bad token signature",
            TokenError::Expired => "expired token",
            TokenError::OutOfScope => "token out of scope",
            TokenError::Missing => "no signature",
        })
    }
}

impl std::error::Error for TokenError {}

/// The keys derived from the cluster secret. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKeys {
    bearer: [u8; 32],
    write: [u8; 32],
    read: [u8; 32],
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKeys(<redacted>)")
    }
}

fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    mac_bytes(secret, &[label])
}

fn mac_bytes(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = mac(key);
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A subject may hold letters, digits and `-_@:` only (it sits between the token's dots and
/// in log lines).
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_@:".contains(&b))
}

impl ClusterKeys {
    /// Keys from a secret of at least [`MIN_SECRET_LEN`] visible ASCII characters
    /// (surrounding whitespace, as a file's newline, is ignored).
    pub fn from_secret(secret: &str) -> Result<ClusterKeys, String> {
        let s = secret.trim();
        if s.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the cluster secret must have at least {MIN_SECRET_LEN} characters (it has {})",
                s.len()
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the cluster secret must be visible ASCII without spaces".into());
        }
        Ok(ClusterKeys {
            bearer: derive(s.as_bytes(), b"haystack bearer token v1"),
            write: derive(s.as_bytes(), b"haystack write token v1"),
            read: derive(s.as_bytes(), b"haystack signed read url v1"),
        })
    }

    /// A bearer token for `role` and `subject`, valid until `expires` (unix seconds). The
    /// subject must pass [`valid_subject`]; anything else is replaced by `unnamed`.
    pub fn mint(&self, role: Role, subject: &str, expires: u64) -> String {
        let subject = if valid_subject(subject) {
            subject
        } else {
            "unnamed"
        };
        let body = format!("hs1.{}.{subject}.{expires}", role.as_str());
        let sig = mac_bytes(&self.bearer, &[body.as_bytes()]);
        format!("{body}.{}", hex(&sig))
    }

    /// Checks a bearer token at time `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (body, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = body.split('.');
        let (Some("hs1"), Some(role), Some(subject), Some(expires), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let role = Role::parse(role).ok_or(TokenError::Malformed)?;
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        if !valid_subject(subject) {
            return Err(TokenError::Malformed);
        }
        let sig = unhex(sig).ok_or(TokenError::Malformed)?;
        let mut m = mac(&self.bearer);
        m.update(body.as_bytes());
        m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        if now > expires {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            role,
            subject: subject.to_string(),
            expires,
        })
    }

    /// A write token: the holder may write needles of `key` with an alternate key in
    /// `alts` (inclusive) to `volume` until `expires`, and nothing else. The directory
    /// issues it with an assignment; a store checks it alone.
    pub fn mint_write(&self, scope: WriteScope, expires: u64) -> String {
        let body = format!(
            "hw1.{}.{}.{}-{}.{expires}",
            scope.volume, scope.key, scope.alt_min, scope.alt_max
        );
        let sig = mac_bytes(&self.write, &[body.as_bytes()]);
        format!("{body}.{}", hex(&sig))
    }

    /// Checks that write token `token` allows writing (`volume`, `key`, `alt`) at `now`.
    pub fn verify_write(
        &self,
        token: &str,
        volume: u32,
        key: u64,
        alt: u32,
        now: u64,
    ) -> Result<WriteScope, TokenError> {
        let (body, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = body.split('.');
        let (Some("hw1"), Some(v), Some(k), Some(alts), Some(expires), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let (lo, hi) = alts.split_once('-').ok_or(TokenError::Malformed)?;
        let num = |s: &str| s.parse::<u64>().map_err(|_| TokenError::Malformed);
        let scope = WriteScope {
            volume: u32::try_from(num(v)?).map_err(|_| TokenError::Malformed)?,
            key: num(k)?,
            alt_min: u32::try_from(num(lo)?).map_err(|_| TokenError::Malformed)?,
            alt_max: u32::try_from(num(hi)?).map_err(|_| TokenError::Malformed)?,
        };
        let expires = num(expires)?;
        let sig = unhex(sig).ok_or(TokenError::Malformed)?;
        let mut m = mac(&self.write);
        m.update(body.as_bytes());
        m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        if now > expires {
            return Err(TokenError::Expired);
        }
        if scope.volume != volume || scope.key != key || alt < scope.alt_min || alt > scope.alt_max
        {
            return Err(TokenError::OutOfScope);
        }
        Ok(scope)
    }
}

impl ClusterKeys {
    /// The signature of a read URL whose path (from `/v1/` on: a needle's or a video's) is
    /// `path`, until `expires` (unix seconds): HMAC-SHA256 under the read key over the path
    /// and the expiry, truncated to 128 bits, in hex. Whatever base (a CDN's) is in front of
    /// the path is not signed, so the same URL works through any prefix that forwards the
    /// path unchanged.
    pub fn sign_read(&self, path: &str, expires: u64) -> String {
        let sig = mac_bytes(&self.read, &[read_message(path, expires).as_bytes()]);
        hex(&sig[..16])
    }

    /// The query string (`expires=...&sig=...`, no `?`) that makes a read URL of `path`
    /// valid until `expires`.
    pub fn signed_read_query(&self, path: &str, expires: u64) -> String {
        format!(
            "{READ_EXPIRES_PARAM}={expires}&{READ_SIGNATURE_PARAM}={}",
            self.sign_read(path, expires)
        )
    }

    /// Checks the signature of a read URL of `path` whose query string is `query` at `now`.
    /// Every failure (no signature, a malformed one, a wrong one, an expired one) is the
    /// caller's to answer alike.
    pub fn verify_read(&self, path: &str, query: &str, now: u64) -> Result<(), TokenError> {
        let (mut expires, mut sig) = (None, None);
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                READ_EXPIRES_PARAM => &mut expires,
                READ_SIGNATURE_PARAM => &mut sig,
                _ => continue,
            };
            // A parameter given twice is not a URL the directory made.
            if slot.replace(v).is_some() {
                return Err(TokenError::Malformed);
            }
        }
        let (Some(expires), Some(sig)) = (expires, sig) else {
            return Err(TokenError::Missing);
        };
        if expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::Malformed);
        }
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        let sig = unhex(sig)
            .filter(|s| s.len() == 16)
            .ok_or(TokenError::Malformed)?;
        let mut m = mac(&self.read);
        m.update(read_message(path, expires).as_bytes());
        m.verify_truncated_left(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if now > expires {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

fn read_message(path: &str, expires: u64) -> String {
    format!("hr1\n{path}\n{expires}")
}

/// The expiry a signed read URL made at `now` with a lifetime of `ttl` seconds gets: at least
/// `ttl` away, rounded up to a multiple of a quarter of `ttl`, so that the URLs of one photo
/// stay the same for a while and a CDN keeps caching them under one key.
pub fn read_url_expiry(now: u64, ttl: u64) -> u64 {
    let step = (ttl / 4).max(1);
    (now.saturating_add(ttl))
        .div_ceil(step)
        .saturating_mul(step)
}

/// What one write token allows: needles of one key, a range of alternate keys, one volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteScope {
    pub volume: u32,
    pub key: u64,
    pub alt_min: u32,
    pub alt_max: u32,
}

/// The token of an `Authorization: Bearer TOKEN` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ClusterKeys {
        ClusterKeys::from_secret("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let k = keys();
        let t = k.mint(Role::Ops, "alice", 1000);
        let c = k.verify(&t, 1000).unwrap();
        assert_eq!(
            (c.role, c.subject.as_str(), c.expires),
            (Role::Ops, "alice", 1000)
        );
        assert_eq!(k.verify(&t, 1001), Err(TokenError::Expired));
    }

    #[test]
    fn another_secret_or_an_edit_is_refused() {
        let k = keys();
        let other = ClusterKeys::from_secret("ffffffffffffffffffffffffffffffffff").unwrap();
        let t = k.mint(Role::Read, "bob", 1000);
        assert_eq!(other.verify(&t, 0), Err(TokenError::BadSignature));
        let promoted = t.replacen("hs1.read.", "hs1.admin.", 1);
        assert_eq!(k.verify(&promoted, 0), Err(TokenError::BadSignature));
        let later = t.replacen(".1000.", ".9999.", 1);
        assert_eq!(k.verify(&later, 0), Err(TokenError::BadSignature));
        for bad in [
            "",
            "hs1",
            "hs1.read.bob.1000",
            "hs1.root.bob.1000.00",
            "x.y.z.w.v",
        ] {
            assert_eq!(k.verify(bad, 0), Err(TokenError::Malformed), "{bad:?}");
        }
        // A write token is not a bearer token, and the other way round.
        let w = k.mint_write(
            WriteScope {
                volume: 1,
                key: 2,
                alt_min: 0,
                alt_max: 0,
            },
            1000,
        );
        assert!(k.verify(&w, 0).is_err());
        assert!(k.verify_write(&t, 1, 2, 0, 0).is_err());
    }

    #[test]
    fn a_write_token_holds_for_its_scope_only() {
        let k = keys();
        let scope = WriteScope {
            volume: 3,
            key: 77,
            alt_min: 0,
            alt_max: 4,
        };
        let t = k.mint_write(scope, 500);
        assert_eq!(k.verify_write(&t, 3, 77, 4, 500), Ok(scope));
        assert_eq!(k.verify_write(&t, 3, 78, 0, 0), Err(TokenError::OutOfScope));
        assert_eq!(k.verify_write(&t, 4, 77, 0, 0), Err(TokenError::OutOfScope));
        assert_eq!(k.verify_write(&t, 3, 77, 5, 0), Err(TokenError::OutOfScope));
        assert_eq!(k.verify_write(&t, 3, 77, 0, 501), Err(TokenError::Expired));
        let widened = t.replacen(".0-4.", ".0-9.", 1);
        assert_eq!(
            k.verify_write(&widened, 3, 77, 5, 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn roles_and_classes() {
        use Access::*;
        assert!(Role::Read.permits(Read) && !Role::Read.permits(Admin));
        assert!(Role::Ops.permits(Admin) && !Role::Ops.permits(Internal));
        assert!(Role::Admin.permits(Internal) && Role::Internal.permits(Admin));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(ClusterKeys::from_secret("short").is_err());
        assert!(format!("{:?}", keys()).contains("redacted"));
    }

    #[test]
    fn a_signed_read_url_verifies_for_its_needle_until_it_expires() {
        let k = keys();
        let a = crate::NeedleAddr::new(3, 77, 1, 0xabc).path();
        let a = a.as_str();
        let q = k.signed_read_query(a, 1000);
        assert!(q.starts_with("expires=1000&sig="), "{q}");
        assert_eq!(k.verify_read(a, &q, 1000), Ok(()));
        assert_eq!(k.verify_read(a, &format!("w=1&{q}&x"), 10), Ok(()));
        assert_eq!(k.verify_read(a, &q, 1001), Err(TokenError::Expired));
        // Another needle, alternate key, cookie or volume; another secret; a later expiry.
        for other in [
            crate::NeedleAddr::new(3, 78, 1, 0xabc),
            crate::NeedleAddr::new(3, 77, 2, 0xabc),
            crate::NeedleAddr::new(3, 77, 1, 0xabd),
            crate::NeedleAddr::new(4, 77, 1, 0xabc),
        ] {
            assert_eq!(
                k.verify_read(&other.path(), &q, 0),
                Err(TokenError::BadSignature)
            );
        }
        assert_eq!(
            k.verify_read("/v1/videos/3/77/abc", &q, 0),
            Err(TokenError::BadSignature)
        );
        let other = ClusterKeys::from_secret("ffffffffffffffffffffffffffffffffff").unwrap();
        assert_eq!(other.verify_read(a, &q, 0), Err(TokenError::BadSignature));
        let later = q.replacen("expires=1000", "expires=9999", 1);
        assert_eq!(k.verify_read(a, &later, 0), Err(TokenError::BadSignature));
        for bad in [
            "",
            "expires=1000",
            "sig=00",
            "expires=&sig=00",
            "expires=-1&sig=00",
            "expires=1000&sig=zz",
            "expires=1000&sig=0011",
        ] {
            assert!(k.verify_read(a, bad, 0).is_err(), "{bad}");
        }
        let twice = format!("{q}&expires=1000");
        assert_eq!(k.verify_read(a, &twice, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn read_url_expiries_are_at_least_the_ttl_away_and_stable_for_a_quarter_of_it() {
        assert_eq!(read_url_expiry(1000, 3600), 5400);
        assert_eq!(read_url_expiry(900, 3600), 4500);
        for now in [0u64, 1, 899, 900, 12345] {
            let e = read_url_expiry(now, 3600);
            assert!(e >= now + 3600 && e < now + 3600 + 900, "{now} -> {e}");
            assert_eq!(e % 900, 0);
        }
        assert_eq!(read_url_expiry(5, 1), 6);
        assert_eq!(read_url_expiry(u64::MAX - 1, 10), u64::MAX);
    }
}
