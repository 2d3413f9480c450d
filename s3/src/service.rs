//! The S3 operations on buckets, objects and multipart uploads, apart from HTTP: records
//! through [`crate::meta`], bytes through [`crate::data`]. Every change of a record is a
//! compare-and-set in the directory, made only after the bytes it points at are committed;
//! the data a change replaces is deleted after it (best effort, `haystack gc` collects the
//! rest).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use md5::{Digest as _, Md5};

use crate::config::S3Config;
use crate::data::Data;
use crate::error::S3Error;
use crate::keys::{AccessKey, MasterKey};
use crate::meta::{
    new_bucket_id, part_key, upload_key, Bucket, DataRef, Meta, ObjectRecord, Part, Rec, Upload,
    SPACE_BUCKETS, SPACE_KEYS,
};
use haystack_proto::directory::CommitRequest;

/// How long a looked-up access key is trusted (a revoked key stops working within this).
const KEY_TTL: Duration = Duration::from_secs(10);
/// Attempts of a compare-and-set loop against concurrent writers of one record.
const CAS_ATTEMPTS: usize = 20;
/// Smallest part but the last (S3's 5 MiB).
pub const MIN_PART_BYTES: u64 = 5 << 20;
pub const MAX_PARTS: i64 = 10_000;
/// Most keys a listing page returns.
pub const MAX_KEYS: usize = 1000;
/// Longest object key, bytes (S3's limit).
const MAX_KEY_BYTES: usize = 1024;

/// The largest character (its UTF-8, F4 8F BF BF, is the largest any character encodes to).
const MAX_CHAR: char = '\u{10FFFF}';

/// A marker that sorts after every key starting with `prefix` and before every later key
/// without it: `prefix` then MAX_CHAR, repeated until it is longer than any key (1024 bytes).
/// One MAX_CHAR would not do: keys may hold MAX_CHAR themselves (`a/` then MAX_CHAR, then `x`
/// sorts after `a/` then MAX_CHAR), and a listing resuming there would see `a/` again.
fn after_prefix(prefix: &str) -> String {
    let fill = MAX_KEY_BYTES.saturating_sub(prefix.len()) / MAX_CHAR.len_utf8() + 1;
    let mut m = String::with_capacity(prefix.len() + fill * MAX_CHAR.len_utf8());
    m.push_str(prefix);
    m.extend(std::iter::repeat_n(MAX_CHAR, fill));
    m
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Bucket names as S3 allows them (3 to 63 of a-z, 0-9, `.`, `-`; letters or digits at the
/// ends; not an IP address).
pub fn check_bucket_name(name: &str) -> Result<(), S3Error> {
    let b = name.as_bytes();
    let ok = (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err();
    if ok {
        Ok(())
    } else {
        Err(S3Error::InvalidBucketName(name.to_string()))
    }
}

pub fn check_key(key: &str) -> Result<(), S3Error> {
    if key.is_empty() {
        return Err(S3Error::InvalidArgument(
            "an object key must not be empty".into(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(S3Error::KeyTooLong);
    }
    if key.contains('\u{0}') {
        return Err(S3Error::InvalidArgument(
            "an object key must not hold NUL".into(),
        ));
    }
    Ok(())
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<(String, ObjectRecord)>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or common prefix returned (the next page starts after it).
    pub last: Option<String>,
}

/// Access keys (and their secrets) looked up lately, and when.
type KeyCache = HashMap<String, (Instant, Option<(AccessKey, String)>)>;

/// The S3 role's state: metadata, data path and secrets.
pub struct S3 {
    pub meta: Meta,
    pub data: Data,
    pub cfg: S3Config,
    master: MasterKey,
    keys: Mutex<KeyCache>,
}

impl S3 {
    pub fn new(meta: Meta, data: Data, cfg: S3Config, master: MasterKey) -> Self {
        Self {
            meta,
            data,
            cfg,
            master,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// An access key and its secret (None: no such key).
    pub async fn access_key(&self, id: &str) -> Result<Option<(AccessKey, String)>, S3Error> {
        if let Ok(m) = self.keys.lock() {
            if let Some((at, k)) = m.get(id) {
                if at.elapsed() < KEY_TTL {
                    return Ok(k.clone());
                }
            }
        }
        let found = match self.meta.get::<AccessKey>(SPACE_KEYS, id).await? {
            None => None,
            Some(r) => {
                let secret = self.master.open(&r.value.sealed_secret)?;
                Some((r.value, secret))
            }
        };
        if let Ok(mut m) = self.keys.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(id.to_string(), (Instant::now(), found.clone()));
        }
        Ok(found)
    }

    /// Creates an access key with these grants; its secret is returned once and stored
    /// sealed.
    pub async fn create_key(
        &self,
        grants: Vec<crate::keys::Grant>,
        create_buckets: bool,
    ) -> Result<(String, String), S3Error> {
        for _ in 0..CAS_ATTEMPTS {
            let (id, secret) = crate::keys::generate();
            let k = AccessKey {
                id: id.clone(),
                sealed_secret: self.master.seal(&secret),
                created_ms: now_ms(),
                grants: grants.clone(),
                create_buckets,
            };
            if self.meta.put(SPACE_KEYS, &id, None, &k).await? {
                tracing::info!(key = %id, "access key created");
                return Ok((id, secret));
            }
        }
        Err(S3Error::Internal(
            "could not find a free access key id".into(),
        ))
    }

    /// Removes an access key (servers stop honouring it within 10 s).
    pub async fn delete_key(&self, id: &str) -> Result<(), S3Error> {
        let k = self
            .meta
            .get::<AccessKey>(SPACE_KEYS, id)
            .await?
            .ok_or(S3Error::InvalidAccessKeyId)?;
        self.meta.delete(SPACE_KEYS, id, k.version).await?;
        Ok(())
    }

    // ---- buckets

    pub async fn bucket(&self, name: &str) -> Result<Rec<Bucket>, S3Error> {
        self.meta
            .get::<Bucket>(SPACE_BUCKETS, name)
            .await?
            .ok_or(S3Error::NoSuchBucket)
    }

    pub async fn create_bucket(&self, name: &str) -> Result<(), S3Error> {
        check_bucket_name(name)?;
        let b = Bucket {
            name: name.to_string(),
            id: new_bucket_id(),
            created_ms: now_ms(),
            anonymous_read: false,
        };
        if self.meta.put(SPACE_BUCKETS, name, None, &b).await? {
            tracing::info!(bucket = name, "bucket created");
            Ok(())
        } else {
            Err(S3Error::BucketAlreadyOwnedByYou)
        }
    }

    pub async fn delete_bucket(&self, name: &str) -> Result<(), S3Error> {
        let b = self.bucket(name).await?;
        let objects = self
            .meta
            .scan::<serde_json::Value>(b.value.objects(), "", "", 1)
            .await?;
        let uploads = self
            .meta
            .scan::<serde_json::Value>(b.value.uploads(), "", "", 1)
            .await?;
        if !objects.is_empty() || !uploads.is_empty() {
            return Err(S3Error::BucketNotEmpty);
        }
        if !self.meta.delete(SPACE_BUCKETS, name, b.version).await? {
            return Err(S3Error::ConditionalRequestConflict);
        }
        tracing::info!(bucket = name, "bucket deleted");
        Ok(())
    }

    pub async fn set_anonymous_read(&self, name: &str, on: bool) -> Result<(), S3Error> {
        for _ in 0..CAS_ATTEMPTS {
            let mut b = self.bucket(name).await?;
            b.value.anonymous_read = on;
            if self
                .meta
                .put(SPACE_BUCKETS, name, Some(b.version), &b.value)
                .await?
            {
                return Ok(());
            }
        }
        Err(S3Error::ConditionalRequestConflict)
    }

    /// Every bucket, in name order.
    pub async fn list_buckets(&self) -> Result<Vec<Bucket>, S3Error> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self
                .meta
                .scan::<Bucket>(SPACE_BUCKETS, "", &after, MAX_KEYS)
                .await?;
            let n = page.len();
            if let Some(l) = page.last() {
                after = l.key.clone();
            }
            out.extend(page.into_iter().map(|r| r.value));
            if n < MAX_KEYS {
                return Ok(out);
            }
        }
    }

    // ---- objects

    pub async fn object(&self, b: &Bucket, key: &str) -> Result<Rec<ObjectRecord>, S3Error> {
        self.meta
            .get::<ObjectRecord>(b.objects(), key)
            .await?
            .ok_or(S3Error::NoSuchKey)
    }

    /// Points `key` at `rec`: only if absent when `if_none_match`, only over that ETag when
    /// `if_match`. `commit` commits `rec`'s data first (None: it is committed already); without
    /// a condition both go in one directory request. The data it replaces is deleted after,
    /// unless `rec` names it too.
    ///
    /// On an error the caller deletes `rec`'s data only when [`S3Error::may_have_applied`] is
    /// false: a write the directory may have done names it.
    pub async fn put_object(
        &self,
        b: &Bucket,
        key: &str,
        rec: &ObjectRecord,
        if_none_match: bool,
        if_match: Option<&str>,
        commit: Option<CommitRequest>,
    ) -> Result<(), S3Error> {
        self.put_object_since(b, key, rec, if_none_match, if_match, commit, None)
            .await
    }

    /// [`S3::put_object`], for data `rec` names that was committed (or claimed) at `since`
    /// rather than by `commit` here: no write is sent past the record deadline from then.
    #[allow(clippy::too_many_arguments)]
    async fn put_object_since(
        &self,
        b: &Bucket,
        key: &str,
        rec: &ObjectRecord,
        if_none_match: bool,
        if_match: Option<&str>,
        commit: Option<CommitRequest>,
        since: Option<Instant>,
    ) -> Result<(), S3Error> {
        within_record_deadline(since)?;
        // Data claimed at `since` (a complete's parts): gc waits for this write's answer only
        // so long (crate::gc::COMPLETE_WAIT), so no later answer is acted on.
        let answer_by = since.map(|t| t + crate::gc::RECORD_DEADLINE + crate::gc::ANSWER_MARGIN);
        if !if_none_match && if_match.is_none() {
            if let Some(previous) = answered_by(
                answer_by,
                self.meta
                    .replace::<ObjectRecord>(b.objects(), key, rec, commit.clone()),
            )
            .await?
            {
                if let Some(old) = previous {
                    self.forget_replaced(&old.value.data, &rec.data).await;
                }
                return Ok(());
            }
            // A directory without the one-request write: commit, then compare-and-set.
        }
        let committed = match &commit {
            Some(c) => {
                self.data.commit(c).await?;
                Some(Instant::now())
            }
            None => since,
        };
        for _ in 0..CAS_ATTEMPTS {
            within_record_deadline(committed)?;
            let current = self.meta.get::<ObjectRecord>(b.objects(), key).await?;
            if let Some(c) = &current {
                if if_none_match {
                    return Err(S3Error::PreconditionFailed);
                }
                if let Some(m) = if_match {
                    if !etag_matches(m, &c.value.etag) {
                        return Err(S3Error::PreconditionFailed);
                    }
                }
            } else if if_match.is_some() {
                return Err(S3Error::NoSuchKey);
            }
            let expect = current.as_ref().map(|c| c.version);
            if answered_by(answer_by, self.meta.put(b.objects(), key, expect, rec)).await? {
                if let Some(old) = current {
                    self.forget_replaced(&old.value.data, &rec.data).await;
                }
                return Ok(());
            }
        }
        Err(S3Error::ConditionalRequestConflict)
    }

    /// Deletes the data of a replaced record, but none that the new record names (a write
    /// repeated after an answer was lost replaces the record with itself).
    async fn forget_replaced(&self, old: &[DataRef], new: &[DataRef]) {
        let gone: Vec<DataRef> = old
            .iter()
            .filter(|o| !new.iter().any(|n| n.photo == o.photo))
            .cloned()
            .collect();
        self.data.forget(&gone).await;
    }

    /// Removes `key` (no error when it is not there).
    pub async fn delete_object(&self, b: &Bucket, key: &str) -> Result<(), S3Error> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.meta.get::<ObjectRecord>(b.objects(), key).await? else {
                return Ok(());
            };
            if self.meta.delete(b.objects(), key, current.version).await? {
                self.data.forget(&current.value.data).await;
                return Ok(());
            }
        }
        Err(S3Error::ConditionalRequestConflict)
    }

    /// One page of keys with `prefix` after `after`, keys with `delimiter` past the prefix
    /// rolled up into common prefixes; at most `max` entries (keys and prefixes).
    pub async fn list(
        &self,
        b: &Bucket,
        prefix: &str,
        delimiter: &str,
        after: &str,
        max: usize,
    ) -> Result<Listing, S3Error> {
        let mut out = Listing::default();
        let mut after = after.to_string();
        // Resuming after a common prefix: skip everything under it.
        if let Some(cp) = common_prefix(&after, prefix, delimiter) {
            after = after_prefix(cp);
        }
        if max == 0 {
            return Ok(out);
        }
        'scan: loop {
            let want = (max - out.objects.len() - out.prefixes.len() + 1).min(MAX_KEYS);
            let page = self
                .meta
                .scan::<ObjectRecord>(b.objects(), prefix, &after, want)
                .await?;
            let n = page.len();
            for r in page {
                if out.objects.len() + out.prefixes.len() == max {
                    out.truncated = true;
                    break 'scan;
                }
                if let Some(cp) = common_prefix(&r.key, prefix, delimiter) {
                    out.prefixes.push(cp.to_string());
                    out.last = Some(cp.to_string());
                    after = after_prefix(cp);
                    continue 'scan;
                }
                after = r.key.clone();
                out.last = Some(r.key.clone());
                out.objects.push((r.key, r.value));
            }
            if n < want {
                break;
            }
        }
        Ok(out)
    }

    // ---- multipart uploads

    pub async fn create_upload(
        &self,
        b: &Bucket,
        key: &str,
        headers: crate::meta::ObjectHeaders,
    ) -> Result<String, S3Error> {
        let upload_id = format!("{:016x}{:016x}", rand::random::<u64>(), now_ms());
        let u = Upload {
            key: key.to_string(),
            upload_id: upload_id.clone(),
            initiated_ms: now_ms(),
            headers,
            completing_ms: None,
        };
        if !self
            .meta
            .put(b.uploads(), &upload_key(key, &upload_id), None, &u)
            .await?
        {
            return Err(S3Error::Internal("upload id collision".into()));
        }
        Ok(upload_id)
    }

    pub async fn upload(
        &self,
        b: &Bucket,
        key: &str,
        upload_id: &str,
    ) -> Result<Rec<Upload>, S3Error> {
        self.meta
            .get::<Upload>(b.uploads(), &upload_key(key, upload_id))
            .await?
            .ok_or(S3Error::NoSuchUpload)
    }

    /// Records a part, after committing its data (`commit`; None: committed already, or no
    /// data); a part uploaded again replaces the earlier one.
    pub async fn put_part(
        &self,
        b: &Bucket,
        key: &str,
        part: &Part,
        upload_id: &str,
        commit: Option<CommitRequest>,
    ) -> Result<(), S3Error> {
        let k = part_key(upload_id, part.number);
        let committed = match &commit {
            Some(c) => {
                self.data.commit(c).await?;
                Some(Instant::now())
            }
            None => None,
        };
        for _ in 0..CAS_ATTEMPTS {
            within_record_deadline(committed)?;
            let current = self.meta.get::<Part>(b.parts(), &k).await?;
            if self
                .meta
                .put(b.parts(), &k, current.as_ref().map(|c| c.version), part)
                .await?
            {
                if let Some(old) = current.and_then(|c| c.value.data) {
                    // A complete that claimed the upload before this write may have read the
                    // part it replaced and name that data: then it stays (gc collects it if
                    // the complete does not name it). Checked after the write: a complete
                    // claiming later reads this part, not the old one.
                    let held = self
                        .meta
                        .get::<Upload>(b.uploads(), &upload_key(key, upload_id))
                        .await
                        .map(|u| u.is_none_or(|u| u.value.completing_ms.is_some()));
                    if held.unwrap_or(true) {
                        tracing::info!(
                            id = old.photo,
                            upload_id,
                            part = part.number,
                            "replaced part's data kept: a complete may name it"
                        );
                    } else {
                        self.data.forget(&[old]).await;
                    }
                }
                return Ok(());
            }
        }
        Err(S3Error::ConditionalRequestConflict)
    }

    /// Parts of an upload after part number `after`, at most `max`.
    pub async fn parts(
        &self,
        b: &Bucket,
        upload_id: &str,
        after: u32,
        max: usize,
    ) -> Result<Vec<Rec<Part>>, S3Error> {
        let prefix = format!("{upload_id}/");
        let after = if after == 0 {
            String::new()
        } else {
            part_key(upload_id, after)
        };
        self.meta
            .scan::<Part>(b.parts(), &prefix, &after, max.clamp(1, MAX_KEYS))
            .await
    }

    async fn all_parts(&self, b: &Bucket, upload_id: &str) -> Result<Vec<Rec<Part>>, S3Error> {
        let mut out: Vec<Rec<Part>> = Vec::new();
        loop {
            let after = out.last().map_or(0, |p| p.value.number);
            let page = self.parts(b, upload_id, after, MAX_KEYS).await?;
            let n = page.len();
            out.extend(page);
            if n < MAX_KEYS {
                return Ok(out);
            }
        }
    }

    /// Completes an upload with the parts listed (ascending numbers, ETags as uploaded).
    pub async fn complete(
        &self,
        b: &Bucket,
        key: &str,
        upload_id: &str,
        listed: &[(i64, String)],
    ) -> Result<ObjectRecord, S3Error> {
        let upload = self.upload(b, key, upload_id).await?;
        if listed.is_empty() {
            return Err(S3Error::MalformedXML(
                "CompleteMultipartUpload lists no part".into(),
            ));
        }
        let mut prev = 0i64;
        for (n, _) in listed {
            if !(1..=MAX_PARTS).contains(n) {
                return Err(S3Error::InvalidArgument(format!(
                    "part number {n} is not between 1 and {MAX_PARTS}"
                )));
            }
            if *n <= prev {
                return Err(S3Error::InvalidPartOrder);
            }
            prev = *n;
        }
        // Claim the upload: from here on no part of it is replaced with its data deleted, and
        // no abort deletes its parts' data, under this complete (`Upload::completing`).
        if upload.value.completing(now_ms()) {
            return Err(S3Error::ConditionalRequestConflict);
        }
        if upload.value.completing_ms.is_some() {
            return self.settle_expired(b, key, upload_id, upload, listed).await;
        }
        let claim = Upload {
            completing_ms: Some(now_ms()),
            ..upload.value.clone()
        };
        let ukey = upload_key(key, upload_id);
        // Before the claim is sent: the deadline runs from no later than gc can see it.
        let claimed = Instant::now();
        if !self
            .meta
            .put(b.uploads(), &ukey, Some(upload.version), &claim)
            .await?
        {
            // Completed, aborted or claimed meanwhile.
            return Err(S3Error::ConditionalRequestConflict);
        }
        let claimed_version = upload.version + 1;
        let built = match self.all_parts(b, upload_id).await {
            Ok(all) => completed_record(&all, listed, &upload.value.headers).map(|r| (all, r)),
            Err(e) => Err(e),
        };
        // The parts' data may be old: only the claim keeps gc from collecting data a part
        // record stopped naming, and gc trusts it for RECORD_DEADLINE (crate::gc).
        let written = match built {
            Ok((all, (rec, used))) => self
                .put_object_since(b, key, &rec, false, None, None, Some(claimed))
                .await
                .map(|()| (all, rec, used)),
            Err(e) => Err(e),
        };
        let (all, rec, used_numbers) = match written {
            Ok(w) => w,
            Err(e) => {
                // Nothing written (or, for an unclear answer, maybe the object: then the
                // claim stays until it expires, and an abort keeps what the object names).
                if !e.may_have_applied() {
                    let free = Upload {
                        completing_ms: None,
                        ..upload.value.clone()
                    };
                    if let Err(re) = self
                        .meta
                        .put(b.uploads(), &ukey, Some(claimed_version), &free)
                        .await
                    {
                        tracing::warn!(upload_id, error = %re, "releasing a failed complete's claim failed; it expires");
                    }
                }
                return Err(e);
            }
        };
        // The upload is over: its record and part records go, unused parts' data too. Only
        // while the claim is still this complete's: one that lost it (its claim expired and
        // another complete took the upload) leaves the parts to that one.
        if !self
            .meta
            .delete(b.uploads(), &ukey, claimed_version)
            .await?
        {
            tracing::warn!(
                upload_id,
                "a complete's claim was taken over; its parts are left to the other"
            );
            return Ok(rec);
        }
        let named: Vec<u64> = rec.data.iter().map(|d| d.photo).collect();
        for p in all {
            let mut current = p;
            for _ in 0..CAS_ATTEMPTS {
                // A part written again after this complete read it (an UploadPart that
                // checked before the claim): its newer data is unnamed, the record goes too.
                let unused = !used_numbers.contains(&current.value.number)
                    || current
                        .value
                        .data
                        .as_ref()
                        .is_some_and(|d| !named.contains(&d.photo));
                if self
                    .meta
                    .delete(b.parts(), &current.key, current.version)
                    .await?
                {
                    if unused {
                        if let Some(d) = &current.value.data {
                            self.data.forget(std::slice::from_ref(d)).await;
                        }
                    }
                    break;
                }
                match self.meta.get::<Part>(b.parts(), &current.key).await? {
                    Some(newer) => current = newer,
                    None => break,
                }
            }
        }
        Ok(rec)
    }

    /// A complete of an upload whose claim expired: the complete that claimed it died or got
    /// no clear answer to its object write. If the object at `key` is the one these parts
    /// make (that write applied, and the object still stands), the upload is finished and
    /// that object answered. Otherwise nothing is written: the object may have been written
    /// and then deleted or replaced, with its data, and writing it again would bring back a
    /// deleted object naming deleted bytes (NoSuchUpload: abort the upload and upload again).
    async fn settle_expired(
        &self,
        b: &Bucket,
        key: &str,
        upload_id: &str,
        upload: Rec<Upload>,
        listed: &[(i64, String)],
    ) -> Result<ObjectRecord, S3Error> {
        let all = self.all_parts(b, upload_id).await?;
        let (want, used) = completed_record(&all, listed, &upload.value.headers)?;
        let ids = |d: &[DataRef]| d.iter().map(|d| d.photo).collect::<Vec<_>>();
        let current = self.meta.get::<ObjectRecord>(b.objects(), key).await?;
        let Some(current) = current.filter(|o| ids(&o.value.data) == ids(&want.data)) else {
            tracing::warn!(
                upload_id,
                key,
                "a complete after one that died, whose object is not there: refused"
            );
            return Err(S3Error::NoSuchUpload);
        };
        let ukey = upload_key(key, upload_id);
        if self.meta.delete(b.uploads(), &ukey, upload.version).await? {
            for p in all {
                let unused = !used.contains(&p.value.number);
                if self.meta.delete(b.parts(), &p.key, p.version).await? && unused {
                    self.forget(p.value.data).await;
                }
            }
        }
        Ok(current.value)
    }

    /// Removes an upload and its parts. Refused while a CompleteMultipartUpload holds it;
    /// after one that died (its claim expired), data the object record at `key` names is
    /// kept: that complete may have written it.
    pub async fn abort(&self, b: &Bucket, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let ukey = upload_key(key, upload_id);
        for _ in 0..CAS_ATTEMPTS {
            let upload = self.upload(b, key, upload_id).await?;
            if upload.value.completing(now_ms()) {
                return Err(S3Error::ConditionalRequestConflict);
            }
            if self.meta.delete(b.uploads(), &ukey, upload.version).await? {
                let named: Vec<u64> = if upload.value.completing_ms.is_some() {
                    match self.meta.get::<ObjectRecord>(b.objects(), key).await? {
                        Some(o) => o.value.data.iter().map(|d| d.photo).collect(),
                        None => Vec::new(),
                    }
                } else {
                    Vec::new()
                };
                for p in self.all_parts(b, upload_id).await? {
                    if let Some(d) = &p.value.data {
                        if !named.contains(&d.photo) {
                            self.data.forget(std::slice::from_ref(d)).await;
                        }
                    }
                    self.meta.delete(b.parts(), &p.key, p.version).await?;
                }
                return Ok(());
            }
        }
        Err(S3Error::ConditionalRequestConflict)
    }

    /// Uploads with `prefix` after (`key_marker`, `upload_id_marker`), at most `max`.
    pub async fn uploads(
        &self,
        b: &Bucket,
        prefix: &str,
        key_marker: &str,
        upload_id_marker: &str,
        max: usize,
    ) -> Result<(Vec<Upload>, bool), S3Error> {
        let after = match (key_marker.is_empty(), upload_id_marker.is_empty()) {
            (true, _) => String::new(),
            (false, true) => format!("{key_marker}\u{0}{MAX_CHAR}"),
            (false, false) => upload_key(key_marker, upload_id_marker),
        };
        let max = max.clamp(1, MAX_KEYS);
        let mut page = self
            .meta
            .scan::<Upload>(b.uploads(), prefix, &after, max + 1)
            .await?;
        let truncated = page.len() > max;
        page.truncate(max);
        Ok((page.into_iter().map(|r| r.value).collect(), truncated))
    }

    /// Data ids of parts in progress and objects are deleted through this when a write fails
    /// after its data was committed.
    pub async fn forget(&self, d: Option<DataRef>) {
        if let Some(d) = d {
            self.data.forget(&[d]).await;
        }
    }

    /// [`S3::forget`] after a failed record write, unless the directory may have done the
    /// write (`e.may_have_applied()`): then the record may name the data, which stays (a
    /// leak at worst, never an object whose bytes are gone).
    pub async fn forget_unless_applied(&self, d: Option<DataRef>, e: &S3Error) {
        match d {
            Some(d) if e.may_have_applied() => {
                metrics::counter!("haystack_s3_data_kept_after_uncertain_write_total").increment(1);
                tracing::warn!(id = d.photo, volume = d.volume, error = %e, "object record write failed without a clear answer; its data is kept, as the record may name it");
            }
            d => self.forget(d).await,
        }
    }
}

/// The object record a CompleteMultipartUpload of `listed` (part number, ETag) makes of the
/// upload's parts, and the part numbers it uses.
fn completed_record(
    all: &[Rec<Part>],
    listed: &[(i64, String)],
    headers: &crate::meta::ObjectHeaders,
) -> Result<(ObjectRecord, Vec<u32>), S3Error> {
    let by_number: HashMap<u32, &Rec<Part>> = all.iter().map(|p| (p.value.number, p)).collect();
    let mut used = Vec::with_capacity(listed.len());
    for (n, etag) in listed {
        let p = by_number.get(&(*n as u32)).ok_or(S3Error::InvalidPart)?;
        if p.value.etag != etag.trim().trim_matches('"') {
            return Err(S3Error::InvalidPart);
        }
        used.push(&p.value);
    }
    // Every part but the last is at least 5 MiB (checked once all were found, as S3 does).
    if used[..used.len() - 1]
        .iter()
        .any(|p| p.size < MIN_PART_BYTES)
    {
        return Err(S3Error::EntityTooSmall);
    }
    let mut md5 = Md5::new();
    for p in &used {
        let raw = hex::decode(&p.etag)
            .map_err(|_| S3Error::Internal("a part's etag is not hex".into()))?;
        md5.update(&raw);
    }
    let rec = ObjectRecord {
        size: used.iter().map(|p| p.size).sum(),
        etag: format!("{}-{}", hex::encode(md5.finalize()), used.len()),
        last_modified_ms: now_ms(),
        headers: headers.clone(),
        data: used.iter().filter_map(|p| p.data.clone()).collect(),
        part_sizes: used.iter().map(|p| p.size).collect(),
        checksum: None,
    };
    Ok((rec, used.iter().map(|p| p.number).collect()))
}

/// Refuses a record write [`crate::gc::RECORD_DEADLINE`] or more after the commit of the data
/// it would name: gc may collect data no record named that long after its commit, so such a
/// record could name deleted bytes. A definite error: the caller deletes the data.
fn within_record_deadline(committed: Option<Instant>) -> Result<(), S3Error> {
    match committed {
        Some(t) if t.elapsed() >= crate::gc::RECORD_DEADLINE => {
            metrics::counter!("haystack_s3_record_deadline_passed_total").increment(1);
            Err(S3Error::Internal(format!(
                "the record was not written within {} s of its data's commit; nothing was written",
                crate::gc::RECORD_DEADLINE.as_secs()
            )))
        }
        _ => Ok(()),
    }
}

/// Runs a record write whose answer counts only until `by` (when set): a later answer is an
/// [`S3Error::Uncertain`] (500; the write may have applied), never acted on.
async fn answered_by<T>(
    by: Option<Instant>,
    write: impl std::future::Future<Output = Result<T, S3Error>>,
) -> Result<T, S3Error> {
    let Some(by) = by else {
        return write.await;
    };
    match tokio::time::timeout_at(by.into(), write).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("haystack_s3_record_answers_late_total").increment(1);
            Err(S3Error::Uncertain(
                "the directory did not answer the record write in time; it may have been written"
                    .into(),
            ))
        }
    }
}

/// The common prefix `key` rolls up into: the prefix and the key up to and including the first
/// delimiter after it.
pub fn common_prefix<'k>(key: &'k str, prefix: &str, delimiter: &str) -> Option<&'k str> {
    if delimiter.is_empty() || !key.starts_with(prefix) {
        return None;
    }
    let rest = &key[prefix.len()..];
    rest.find(delimiter)
        .map(|i| &key[..prefix.len() + i + delimiter.len()])
}

/// Whether an `If-Match`/`If-None-Match` list names this ETag (unquoted) or is `*`.
pub fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').any(|t| {
        let t = t.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t.trim_matches('"') == etag
    })
}

/// The shared handle.
pub type SharedS3 = Arc<S3>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_and_etags() {
        assert!(check_bucket_name("my-bucket.1").is_ok());
        for bad in ["ab", "Upper", "-a-", "a..b", "192.168.1.1", "a_b"] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
        assert_eq!(common_prefix("a/b/c", "a/", "/"), Some("a/b/"));
        assert_eq!(common_prefix("a/b", "a/", "/"), None);
        assert_eq!(common_prefix("a/b", "", ""), None);
        assert!(etag_matches("\"abc\", \"def\"", "def"));
        assert!(etag_matches("*", "x"));
        assert!(!etag_matches("\"abc\"", "abcd"));
    }

    #[tokio::test]
    async fn a_record_write_answered_past_its_bound_is_uncertain() {
        let by = Some(Instant::now() + Duration::from_millis(50));
        let late = answered_by(by, async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, S3Error>(())
        })
        .await
        .unwrap_err();
        assert!(late.may_have_applied(), "{late:?}");
        assert!(answered_by(by, async { Ok::<_, S3Error>(1) }).await.is_ok());
        assert!(answered_by(None, async { Ok::<_, S3Error>(1) })
            .await
            .is_ok());
    }

    #[test]
    fn a_record_is_not_written_once_the_deadline_after_its_commit_passed() {
        assert!(within_record_deadline(None).is_ok());
        assert!(within_record_deadline(Some(Instant::now())).is_ok());
        let long_ago =
            Instant::now().checked_sub(crate::gc::RECORD_DEADLINE + Duration::from_secs(1));
        if let Some(t) = long_ago {
            let e = within_record_deadline(Some(t)).unwrap_err();
            // A definite refusal: the caller deletes the data it committed.
            assert!(!e.may_have_applied(), "{e:?}");
        }
        assert!(crate::gc::MIN_AGE > crate::gc::RECORD_DEADLINE * 10);
    }
}
