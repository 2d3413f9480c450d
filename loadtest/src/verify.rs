//! `--verify`: after the load, every acknowledged upload that was not deleted is read back
//! through its URL and compared byte for byte with the payload rebuilt from its (size,
//! seed); every photo whose delete was acknowledged must answer 404; every video is read
//! whole and compared. Uploads whose fate is unknown (a failed delete) are skipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::payload::{video_bytes, JpegPool};
use crate::report::{PhaseReport, VerifyReport};
use crate::stats::{Failure, Op, Recorder};
use crate::target::{ObjState, Object, Target};

/// How many problems the report spells out.
const EXAMPLES: usize = 10;

#[derive(Clone, Copy)]
enum Kind {
    Photo,
    Video,
}

/// Checks `photos` and `videos` with `concurrency` reads in flight, within `deadline`
/// (what is not checked by then counts as an error).
pub async fn verify(
    target: &Target,
    pool: &JpegPool,
    photos: Vec<Arc<Object>>,
    videos: Vec<Arc<Object>>,
    concurrency: usize,
    deadline: Duration,
) -> (PhaseReport, VerifyReport) {
    let rec = Recorder::new();
    let started = Instant::now();
    let end = started + deadline;
    let work: Vec<(Kind, Arc<Object>)> = photos
        .into_iter()
        .map(|o| (Kind::Photo, o))
        .chain(videos.into_iter().map(|o| (Kind::Video, o)))
        .collect();
    let next = AtomicU64::new(0);
    let out = Mutex::new(VerifyReport::default());
    let (work, next, out, rec) = (&work, &next, &out, &rec);
    let worker = || async move {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            let Some((kind, obj)) = work.get(i) else {
                break;
            };
            let state = obj.state();
            if matches!(state, ObjState::Deleting | ObjState::Unknown) {
                continue;
            }
            if Instant::now() >= end {
                let mut r = out.lock().expect("verify lock");
                r.errors += 1;
                note(
                    &mut r,
                    format!("{}: not checked before the deadline", obj.id),
                );
                continue;
            }
            let t0 = Instant::now();
            let got = target.get(obj.url(0), None).await;
            let mut r = out.lock().expect("verify lock");
            if state == ObjState::Deleted {
                r.deleted_checked += 1;
                match got {
                    Err(Failure::Status(404)) | Err(Failure::Status(410)) => {
                        rec.ok(Op::Verify, t0.elapsed(), 0)
                    }
                    Ok(_) => {
                        r.deleted_served += 1;
                        rec.fail(Op::Verify, &Failure::Status(200));
                        note(&mut r, format!("{}: deleted but still served", obj.id));
                    }
                    Err(f) => {
                        r.errors += 1;
                        rec.fail(Op::Verify, &f);
                        note(
                            &mut r,
                            format!("{}: deleted; reading it gave {}", obj.id, f.key()),
                        );
                    }
                }
                continue;
            }
            r.checked += 1;
            match got {
                Ok(body) => {
                    let want = match kind {
                        Kind::Photo => pool.payload(obj.size, obj.seed).unwrap_or_default(),
                        Kind::Video => video_bytes(obj.seed, 0, obj.size as usize),
                    };
                    if body[..] == want[..] {
                        r.ok += 1;
                        rec.ok(Op::Verify, t0.elapsed(), body.len() as u64);
                    } else {
                        r.mismatched += 1;
                        rec.fail(Op::Verify, &Failure::Mismatch);
                        let at = body
                            .iter()
                            .zip(want.iter())
                            .position(|(a, b)| a != b)
                            .unwrap_or(body.len().min(want.len()));
                        note(
                            &mut r,
                            format!(
                                "{}: {} bytes read, {} uploaded, first difference at byte {at} ({})",
                                obj.id,
                                body.len(),
                                want.len(),
                                obj.url(0)
                            ),
                        );
                    }
                }
                Err(Failure::Status(404)) => {
                    r.missing += 1;
                    rec.fail(Op::Verify, &Failure::Status(404));
                    note(
                        &mut r,
                        format!("{}: acknowledged but answers 404 ({})", obj.id, obj.url(0)),
                    );
                }
                Err(f) => {
                    r.errors += 1;
                    rec.fail(Op::Verify, &f);
                    note(&mut r, format!("{}: reading it gave {}", obj.id, f.key()));
                }
            }
        }
    };
    let workers: Vec<_> = (0..concurrency.max(1)).map(|_| worker()).collect();
    futures_util::future::join_all(workers).await;
    let phase = rec.snapshot("verify", started.elapsed());
    let report = out.lock().expect("verify lock").clone();
    (phase, report)
}

fn note(r: &mut VerifyReport, s: String) {
    if r.examples.len() < EXAMPLES {
        r.examples.push(s);
    }
}
