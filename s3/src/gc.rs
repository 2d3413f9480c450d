//! What `haystack gc` needs to know of the S3 role's data: which data ids its records name
//! ([`named_data`]), and the two times that make collecting the rest safe against a record
//! being written meanwhile ([`RECORD_DEADLINE`], [`MIN_AGE`]).
//!
//! The S3 role commits each run of bytes (a PUT's body, a part, a copy) as one id of kind
//! `object`, then writes the record that names it: an object record, or a part record of a
//! multipart upload. A crash between a record's change and the deletion of the data it no
//! longer names, or an upload never completed nor aborted whose records were lost with its
//! bucket, leaves committed ids that no record names. gc collects them:
//!
//! 1. It notes the time, then lists every bucket's part records, then every bucket's object
//!    records, collecting the data ids they name. CompleteMultipartUpload writes the object
//!    record before it deletes the part records, so a part's data is seen in one or the
//!    other, whichever the scan reaches first. A complete first claims its upload (no abort
//!    or part replacement deletes data under it); a part uploaded again under it keeps the
//!    data it replaced, which the complete may have read and name in its object: so the
//!    uploads held by a complete are listed between the parts and the objects, and their
//!    objects read again once the complete's deadline has passed.
//! 2. An `object` id that no listed record names and that was committed at least
//!    [`MIN_AGE`] before the scan began is deleted through the directory.
//!
//! Step 2 is safe because records never name data committed long before: a record is
//! written in the same directory request as its data's commit (an unconditional PUT or
//! copy), or after it, and then the S3 role gives up (and deletes the data) once
//! [`RECORD_DEADLINE`] has passed since the commit. So a record naming an id committed before
//! the scan began minus [`MIN_AGE`] was written before the scan began, and the scan saw it
//! unless it was replaced or deleted since, after which nothing names the id again (records
//! never share data ids; a copy copies the bytes).
//!
//! Assumed, not enforced here: a record write the directory did not answer (a timeout)
//! lands within [`MIN_AGE`] of being sent or never; and a CompleteMultipartUpload's object
//! record, which gc waits for only [`COMPLETE_WAIT`], within about a minute of being sent
//! (the complete stops acting on its answer at claim + [`RECORD_DEADLINE`] +
//! [`ANSWER_MARGIN`] and answers 500; a directory that stalled longer inside that one write
//! and applied it later would leave the key naming data gc collected meanwhile, a part
//! uploaded again under the complete: its GETs then fail). Enforcing it needs the directory
//! to refuse a write past a deadline the request carries: not done. The deadline is checked before a write
//! is sent; a metadata backend that could apply a timed-out write hours later (a ScyllaDB
//! lightweight transaction left half-done and finished by a later one on the same key) would
//! let such a record name data gc has deleted.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::S3Error;
use crate::meta::{Bucket, DataRef, Meta, ObjectRecord, Part, Upload, SPACE_BUCKETS};
use crate::service::now_ms;

/// The longest the S3 role writes a record after committing the data it names; past it the
/// write is abandoned (500, the data deleted).
pub const RECORD_DEADLINE: Duration = Duration::from_secs(60);

/// How long a CompleteMultipartUpload's claim on its upload holds for other S3 processes
/// (aborts, completes, part uploads), by their wall clocks: ten times the record deadline,
/// so that clocks minutes apart still agree a claim is live while its complete can write.
pub const CLAIM_TTL: Duration = Duration::from_secs(10 * 60);

/// The least age (since its commit) of an unnamed `object` id before gc deletes it: the
/// record deadline, a directory request's timeouts and retries after it, and clock skew
/// between the gc host and the directory, with a wide margin.
pub const MIN_AGE: Duration = Duration::from_secs(3600);

/// A CompleteMultipartUpload's object record must be answered within the record deadline
/// and this of its claim, or the complete answers 500 (the write may have applied: its claim
/// stays). Without that bound a write sent just before the deadline could be answered (and
/// the object acknowledged) up to a directory request's timeout later, after gc read the
/// held upload's object again and collected the data it names.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(30);

/// How long gc waits, from its listing of the uploads, before it reads a held upload's object
/// again: past the latest answer a complete may still act on (claim + [`RECORD_DEADLINE`] +
/// [`ANSWER_MARGIN`]; the claim was made before the listing), with a margin for the two
/// hosts' clocks running at slightly different rates ([`CLOCK_MARGIN`]).
pub const COMPLETE_WAIT: Duration = RECORD_DEADLINE
    .saturating_add(ANSWER_MARGIN)
    .saturating_add(CLOCK_MARGIN);

/// Added to a complete's answer bound in [`COMPLETE_WAIT`].
const CLOCK_MARGIN: Duration = Duration::from_secs(30);

/// Records per scan request (the directory's most).
const PAGE: usize = haystack_proto::kv::MAX_SCAN;

/// Pages through one space, handing each record to `f` (only a page in memory at a time).
async fn each<T: serde::de::DeserializeOwned>(
    meta: &Meta,
    space: u64,
    mut f: impl FnMut(T),
) -> Result<u64, S3Error> {
    let (mut after, mut n) = (String::new(), 0u64);
    loop {
        // Only an empty page ends the space: a directory that answers fewer records than
        // asked for (a lower limit of its own) must not end the listing early.
        let page = meta.scan::<T>(space, "", &after, PAGE).await?;
        let Some(r) = page.last() else {
            return Ok(n);
        };
        after = r.key.clone();
        for r in page {
            n += 1;
            f(r.value);
        }
    }
}

/// What the S3 records name, as [`named_data`] found it.
#[derive(Debug, Default)]
pub struct Named {
    /// Data ids named by a part or an object record.
    pub ids: HashSet<u64>,
    pub buckets: u64,
    pub parts: u64,
    pub objects: u64,
    /// Uploads a CompleteMultipartUpload held when listed (their objects read again after
    /// its deadline).
    pub held: u64,
}

/// Every data id a part record or an object record of any bucket names: all part records
/// first, then the uploads a complete holds, then all object records (see the module
/// comment for why in this order), then the objects of the held uploads once their
/// completes' deadline passed (a wait of [`COMPLETE_WAIT`], 2 minutes, when a complete is in
/// progress).
/// Holds the ids in memory (about 30 bytes each in the set).
pub async fn named_data(meta: &Meta) -> Result<Named, S3Error> {
    let mut buckets: Vec<Bucket> = Vec::new();
    each::<Bucket>(meta, SPACE_BUCKETS, |b| buckets.push(b)).await?;
    let mut named = Named {
        buckets: buckets.len() as u64,
        ..Default::default()
    };
    for b in &buckets {
        let ids = &mut named.ids;
        named.parts +=
            each::<Part>(meta, b.parts(), |p| ids.extend(p.data.map(|d| d.photo))).await?;
    }
    // Uploads a CompleteMultipartUpload holds: it read their parts before some part may
    // have been uploaded again (the data replaced then is kept, but no part record names
    // it), and it writes its object record within RECORD_DEADLINE of its claim. Listed
    // after the parts: a claim older than a part scan that missed its data is seen here,
    // or its complete already wrote the object, which the object scan below sees.
    let uploads_listed = std::time::Instant::now();
    let mut held: Vec<(u64, String, bool)> = Vec::new();
    let now = now_ms();
    for b in &buckets {
        each::<Upload>(meta, b.uploads(), |u| {
            if u.completing_ms.is_some() {
                let live = u.completing(now);
                held.push((b.objects(), u.key, live));
            }
        })
        .await?;
    }
    for b in &buckets {
        let ids = &mut named.ids;
        named.objects += each::<ObjectRecord>(meta, b.objects(), |o| {
            ids.extend(o.data.iter().map(|d: &DataRef| d.photo))
        })
        .await?;
    }
    // Each held upload's object, read again once its complete can no longer write it. A
    // complete acts on its object record's answer only within RECORD_DEADLINE +
    // ANSWER_MARGIN of its claim (an answer later is a 500, never an acknowledged object),
    // and its claim was made before the uploads were listed: so waiting longer than that from
    // the listing's start (this process's monotonic clock; no clocks compared) is enough,
    // and one wait serves every held upload. Claims long expired by this host's clock are of completes
    // that died: nothing to wait for.
    if held.iter().any(|h| h.2) {
        let wait = COMPLETE_WAIT.saturating_sub(uploads_listed.elapsed());
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "waiting out multipart completes in progress"
        );
        tokio::time::sleep(wait).await;
    }
    for (space, key, _) in held {
        if let Some(o) = meta.get::<ObjectRecord>(space, &key).await? {
            named.ids.extend(o.value.data.iter().map(|d| d.photo));
        }
        named.held += 1;
    }
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: gc waited 90 s (the record deadline and 30 s) for a complete in progress,
    /// but a complete acted on its object record's answer whenever it came: a write sent at
    /// the deadline could be answered a directory request's timeout (60 s) later and the
    /// object acknowledged after gc had read the held upload again and collected the data
    /// only the new object named. Now the answer is bounded (`ANSWER_MARGIN`), and gc waits
    /// past that bound, and past a directory request's timeout too.
    #[test]
    fn gc_waits_out_every_answer_a_complete_may_still_act_on() {
        assert!(COMPLETE_WAIT > RECORD_DEADLINE + ANSWER_MARGIN);
        assert!(COMPLETE_WAIT >= RECORD_DEADLINE + crate::DIRECTORY_TIMEOUT);
        assert!(MIN_AGE > COMPLETE_WAIT * 10);
    }
}
