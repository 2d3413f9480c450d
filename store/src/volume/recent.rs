//! The deletes a volume took in the last minutes, remembered so that a write they overtook is
//! refused when it lands (a write never undoes a delete).
//!
//! A replica write the uploader did not wait for (write acknowledgement `one` or `quorum`)
//! can reach a store after the photo was deleted: the delete found nothing there (404), found
//! a repair copy and deleted it, or was still setting its flag when the write arrived. A
//! needle the index holds deleted is refused by its entry (durable, until a compaction drops
//! it); every delete is also kept here, in memory, so that the write is refused whatever the
//! index holds: a write in flight cannot outlive the store process it was sent to (its
//! connection dies with it, and a background replica write is never retried), and it cannot
//! take longer than the writer's request timeout (30 s by default), far inside [`TTL`].
//! Garbage collection's deletes (the directory's retried deletes, `haystack gc`) carry no
//! cookie: they hold against a write with any cookie. Bounded: at most [`MAX`] needles per
//! volume, the oldest forgotten first (counted).
//!
//! The same lock also counts the writes in flight per needle (past their check, not yet
//! indexed and settled): a delete that finds one waits for it before it answers, so that it
//! never acknowledges while bytes that would undo it may still reach the disk live
//! (`Volume::delete`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a delete is remembered.
pub const TTL: Duration = Duration::from_secs(600);

/// Needles whose delete is remembered, per volume, at most.
pub const MAX: usize = 4096;

/// The remembered deletes of one volume: (key, alt) -> the cookie the delete named.
#[derive(Default)]
pub(super) struct RecentDeletes {
    by_needle: HashMap<(u64, u32), Remembered>,
    /// In the order they were remembered, for expiry and the bound: (key, alt, seq).
    order: VecDeque<(u64, u32, u64)>,
    next_seq: u64,
    /// Writes in flight per needle (a batch or a shipped append past its check).
    writing: HashMap<(u64, u32), u32>,
    /// Needles of writes that failed after their bytes may have reached the file (a write or
    /// sync error): not indexed, yet the next open may find them whole and take them live.
    unsettled: std::collections::HashSet<(u64, u32)>,
    /// More than [`MAX`] of those: every needle counts as one.
    unsettled_overflow: bool,
}

struct Remembered {
    /// None: a delete whatever the cookie (garbage collection's).
    cookie: Option<u64>,
    at: Instant,
    /// Which insert this is (a later delete of the same needle replaces the entry and has its
    /// own place in `order`; the old place is skipped).
    seq: u64,
}

impl RecentDeletes {
    /// Remembers a delete of `(key, alt)` with `cookie` (None: any cookie), taken at `now`.
    pub(super) fn insert(&mut self, key: u64, alt: u32, cookie: Option<u64>, now: Instant) {
        self.expire(now);
        if !self.by_needle.contains_key(&(key, alt)) {
            while self.by_needle.len() >= MAX {
                let Some((k, a, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.forget(k, a, seq) {
                    metrics::counter!("haystack_store_recent_deletes_forgotten_total").increment(1);
                }
            }
        }
        // Places left by repeated deletes of the same needles are dropped once they are as
        // many as the bound (then at most `MAX` places are left: amortised, one pass per
        // `MAX` inserts).
        if self.order.len() >= 2 * MAX {
            let by_needle = &self.by_needle;
            self.order
                .retain(|&(k, a, seq)| by_needle.get(&(k, a)).is_some_and(|r| r.seq == seq));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_needle.insert(
            (key, alt),
            Remembered {
                cookie,
                at: now,
                seq,
            },
        );
        self.order.push_back((key, alt, seq));
    }

    /// Whether a write of `(key, alt)` with `cookie` is one a remembered delete overtook.
    pub(super) fn holds(&self, key: u64, alt: u32, cookie: u64, now: Instant) -> bool {
        self.by_needle
            .get(&(key, alt))
            .is_some_and(|r| r.cookie.is_none_or(|c| c == cookie) && now.duration_since(r.at) < TTL)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_needle.is_empty()
    }

    /// A write of these needles is past its check and on its way to the disk.
    pub(super) fn begin_writes(&mut self, needles: &[(u64, u32)]) {
        for &n in needles {
            *self.writing.entry(n).or_insert(0) += 1;
        }
    }

    /// That write is indexed and settled (or failed).
    pub(super) fn end_writes(&mut self, needles: &[(u64, u32)]) {
        for n in needles {
            if let Some(c) = self.writing.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    self.writing.remove(n);
                }
            }
        }
    }

    /// The deletes remembered and not expired at `now`: (key, alt, cookie).
    pub(super) fn remembered(&self, now: Instant) -> Vec<(u64, u32, Option<u64>)> {
        self.by_needle
            .iter()
            .filter(|(_, r)| now.duration_since(r.at) < TTL)
            .map(|(&(k, a), r)| (k, a, r.cookie))
            .collect()
    }

    /// A write of these needles failed after its bytes may have reached the file.
    pub(super) fn mark_unsettled(&mut self, needles: &[(u64, u32)]) {
        for &n in needles {
            if self.unsettled.len() >= MAX {
                self.unsettled_overflow = true;
                return;
            }
            self.unsettled.insert(n);
        }
    }

    /// Whether bytes of `(key, alt)` may be in the file unindexed (until the volume is opened
    /// again, which settles them).
    pub(super) fn unsettled(&self, key: u64, alt: u32) -> bool {
        self.unsettled_overflow || self.unsettled.contains(&(key, alt))
    }

    /// Whether a write of `(key, alt)` is in flight.
    pub(super) fn writing(&self, key: u64, alt: u32) -> bool {
        !self.writing.is_empty() && self.writing.contains_key(&(key, alt))
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(k, a, seq)) = self.order.front() {
            // A place whose entry a later delete replaced is dropped as soon as it is first.
            let keep = self
                .by_needle
                .get(&(k, a))
                .is_some_and(|r| r.seq == seq && now.duration_since(r.at) < TTL);
            if keep {
                break;
            }
            self.order.pop_front();
            self.forget(k, a, seq);
        }
    }

    /// Drops the entry of `(key, alt)` if it is insert `seq` (not a later one); says so.
    fn forget(&mut self, key: u64, alt: u32, seq: u64) -> bool {
        if self
            .by_needle
            .get(&(key, alt))
            .is_some_and(|r| r.seq == seq)
        {
            self.by_needle.remove(&(key, alt));
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_is_held_for_its_cookie_until_it_expires() {
        let t0 = Instant::now();
        let mut d = RecentDeletes::default();
        assert!(d.is_empty());
        d.insert(1, 0, Some(0xaa), t0);
        assert!(d.holds(1, 0, 0xaa, t0));
        assert!(!d.holds(1, 0, 0xbb, t0), "another cookie is another needle");
        assert!(!d.holds(1, 1, 0xaa, t0), "another alt is another needle");
        assert!(d.holds(1, 0, 0xaa, t0 + TTL - Duration::from_secs(1)));
        assert!(!d.holds(1, 0, 0xaa, t0 + TTL));
        d.insert(2, 0, Some(0xcc), t0 + TTL);
        assert!(
            !d.by_needle.contains_key(&(1, 0)),
            "expired on the next insert"
        );
        assert_eq!(d.order.len(), 1);
    }

    #[test]
    fn writes_in_flight_are_counted_per_needle() {
        let mut d = RecentDeletes::default();
        assert!(!d.writing(1, 0));
        d.begin_writes(&[(1, 0), (2, 0)]);
        d.begin_writes(&[(1, 0)]);
        assert!(d.writing(1, 0) && d.writing(2, 0) && !d.writing(1, 1));
        d.end_writes(&[(1, 0), (2, 0)]);
        assert!(
            d.writing(1, 0),
            "one of the two writes of 1/0 is still in flight"
        );
        assert!(!d.writing(2, 0));
        d.end_writes(&[(1, 0)]);
        assert!(!d.writing(1, 0));
        assert!(d.writing.is_empty());
    }

    #[test]
    fn a_delete_without_a_cookie_holds_against_any() {
        let t0 = Instant::now();
        let mut d = RecentDeletes::default();
        d.insert(3, 1, None, t0);
        assert!(d.holds(3, 1, 0xaa, t0));
        assert!(d.holds(3, 1, 0xbb, t0));
        assert!(!d.holds(3, 0, 0xaa, t0));
    }

    #[test]
    fn the_oldest_is_forgotten_past_the_bound() {
        let t0 = Instant::now();
        let mut d = RecentDeletes::default();
        for k in 0..MAX as u64 + 10 {
            d.insert(k, 0, Some(1), t0);
        }
        assert_eq!(d.by_needle.len(), MAX);
        assert!(!d.holds(9, 0, 1, t0));
        assert!(d.holds(10, 0, 1, t0));
        // The same needle deleted again keeps one entry, the newer, and forgets nothing.
        let t1 = t0 + Duration::from_secs(1);
        d.insert(MAX as u64 + 9, 0, Some(2), t1);
        assert!(d.holds(MAX as u64 + 9, 0, 2, t1));
        assert!(!d.holds(MAX as u64 + 9, 0, 1, t1));
        assert!(
            d.holds(10, 0, 1, t1),
            "a repeated delete evicts no other needle"
        );
        // Repeated deletes of one needle do not grow the order past twice the bound.
        for _ in 0..3 * MAX {
            d.insert(7, 7, Some(1), t1);
        }
        assert!(d.order.len() <= 2 * MAX);
        assert!(d.by_needle.len() <= MAX);
        assert!(d.holds(7, 7, 1, t1));
        assert!(
            d.holds(11, 0, 1, t1),
            "nor do repeated deletes of one needle"
        );
    }
}
