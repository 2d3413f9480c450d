//! Access keys: their records in the metadata store, with the secret sealed
//! (ChaCha20-Poly1305) under a 32-byte master key kept in a file beside the data
//! (`master_key_file`, created with mode 0600 when missing). SigV4 needs the secret itself to
//! verify a signature, so it cannot be stored as a one-way hash; the metadata store alone (a
//! backup, a ScyllaDB node) does not give the secrets away.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::S3Error;

/// What a key may do in one bucket (`*`: every bucket).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub bucket: String,
    pub read: bool,
    pub write: bool,
}

/// An access key's record (space `KEYS`, key: the access key id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub id: String,
    /// base64 of nonce (12 bytes) and the sealed secret.
    pub sealed_secret: String,
    pub created_ms: u64,
    pub grants: Vec<Grant>,
    /// May create buckets (and delete the ones it may write).
    #[serde(default)]
    pub create_buckets: bool,
}

impl AccessKey {
    /// Whether the key may read (`write` false) or write a bucket.
    pub fn allows(&self, bucket: &str, write: bool) -> bool {
        self.grants.iter().any(|g| {
            (g.bucket == bucket || g.bucket == "*") && if write { g.write } else { g.read }
        })
    }
}

/// The master key that seals secrets.
#[derive(Clone)]
pub struct MasterKey(Key);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Reads the key file, or creates it (32 random bytes, mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, S3Error> {
        match std::fs::read(path) {
            Ok(b) if b.len() == 32 => return Ok(Self(*Key::from_slice(&b))),
            Ok(b) => {
                return Err(S3Error::Config(format!(
                    "master key file {} holds {} bytes, not 32",
                    path.display(),
                    b.len()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        // Written whole under a private name, then linked into place: a link never replaces
        // an existing file and appears at once, so no reader sees a half-written key and two
        // first starts cannot both win.
        let tmp = path.with_extension(format!(
            "tmp.{}.{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let written = opts.open(&tmp).and_then(|mut f| {
            f.write_all(&key)?;
            f.sync_all()
        });
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                tracing::info!(path = %path.display(), "created the s3 master key");
                Ok(Self(*Key::from_slice(&key)))
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path),
            Err(e) => Err(e.into()),
        }
    }

    pub fn seal(&self, secret: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = ChaCha20Poly1305::new(&self.0);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), secret.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<String, S3Error> {
        let bad = || {
            S3Error::Internal("an access key's secret does not open with this master key".into())
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| bad())?;
        if raw.len() < 12 {
            return Err(bad());
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = ChaCha20Poly1305::new(&self.0)
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

/// A new access key id (20 upper-case characters, `HK` first) and secret (40 characters).
pub fn generate() -> (String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const ANY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    let mut pick = |set: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| set[(rng.next_u32() as usize) % set.len()] as char)
            .collect()
    };
    (format!("HK{}", pick(UPPER, 18)), pick(ANY, 40))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_seal_and_open() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("k/master.key");
        let k = MasterKey::load_or_create(&p).expect("create");
        let sealed = k.seal("s3cr3t");
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(k.open(&sealed).expect("open"), "s3cr3t");
        let again = MasterKey::load_or_create(&p).expect("load");
        assert_eq!(again.open(&sealed).expect("open"), "s3cr3t");
        let other = MasterKey::load_or_create(&d.path().join("other")).expect("other");
        assert!(other.open(&sealed).is_err());
        let (id, secret) = generate();
        assert_eq!((id.len(), secret.len()), (20, 40));
    }

    /// The S3 role and `haystack s3 key create` may start at once on a fresh data dir: each
    /// must get the one key, never a half-written file. Regression: a reader saw the file
    /// between its creation and its 32 bytes ("holds 0 bytes, not 32", seen in the S3 tests).
    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        for round in 0..50 {
            let d = tempfile::tempdir().expect("tempdir");
            let p = d.path().join(format!("master-{round}.key"));
            let sealed: Vec<String> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| MasterKey::load_or_create(&p).map(|k| k.seal("x"))))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("thread").expect("every start gets the key"))
                    .collect()
            });
            let k = MasterKey::load_or_create(&p).expect("load");
            for s in &sealed {
                assert_eq!(k.open(s).expect("sealed under the one key"), "x");
            }
        }
    }
}
