//! Deletes of needles a volume did not hold, remembered for a while so that the write they
//! overtook is refused when it lands (a write never undoes a delete).
//!
//! A replica write the uploader did not wait for (write acknowledgement `one` or `quorum`)
//! can reach a store after the photo was deleted and the store had answered the delete 404.
//! A needle the volume holds deleted is refused by its index entry (durable); a needle it
//! never held has no entry, so the delete is kept here, in memory: a write in flight cannot
//! outlive the store process it was sent to (its connection dies with it, and a background
//! replica write is never retried), and it cannot take longer than the writer's request
//! timeout (30 s by default), far inside [`TTL`]. Bounded: at most [`MAX`] per volume, the
//! oldest forgotten first (counted).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a delete of an absent needle is remembered.
pub const TTL: Duration = Duration::from_secs(600);

/// Deletes of absent needles remembered per volume at most.
pub const MAX: usize = 4096;

/// The remembered deletes of one volume: (key, alt) -> the cookie the delete named.
#[derive(Default)]
pub(super) struct AbsentDeletes {
    by_needle: HashMap<(u64, u32), Remembered>,
    /// In the order they were remembered, for expiry and the bound: (key, alt, seq).
    order: VecDeque<(u64, u32, u64)>,
    next_seq: u64,
}

struct Remembered {
    cookie: u64,
    at: Instant,
    /// Which insert this is (a later delete of the same needle replaces the entry and has its
    /// own place in `order`).
    seq: u64,
}

impl AbsentDeletes {
    /// Remembers a delete of `(key, alt)` with `cookie`, taken at `now`.
    pub(super) fn insert(&mut self, key: u64, alt: u32, cookie: u64, now: Instant) {
        self.expire(now);
        if self.order.len() >= MAX {
            if let Some((k, a, seq)) = self.order.pop_front() {
                self.forget(k, a, seq);
                metrics::counter!("haystack_store_absent_deletes_forgotten_total").increment(1);
            }
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
            .is_some_and(|r| r.cookie == cookie && now.duration_since(r.at) < TTL)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_needle.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(k, a, seq)) = self.order.front() {
            // A slot whose entry a later delete replaced is popped as soon as it is first.
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

    /// Drops the entry of `(key, alt)` if it is insert `seq` (not a later one).
    fn forget(&mut self, key: u64, alt: u32, seq: u64) {
        if self
            .by_needle
            .get(&(key, alt))
            .is_some_and(|r| r.seq == seq)
        {
            self.by_needle.remove(&(key, alt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_is_held_for_its_cookie_until_it_expires() {
        let t0 = Instant::now();
        let mut d = AbsentDeletes::default();
        assert!(d.is_empty());
        d.insert(1, 0, 0xaa, t0);
        assert!(d.holds(1, 0, 0xaa, t0));
        assert!(!d.holds(1, 0, 0xbb, t0), "another cookie is another needle");
        assert!(!d.holds(1, 1, 0xaa, t0), "another alt is another needle");
        assert!(d.holds(1, 0, 0xaa, t0 + TTL - Duration::from_secs(1)));
        assert!(!d.holds(1, 0, 0xaa, t0 + TTL));
        d.insert(2, 0, 0xcc, t0 + TTL);
        assert!(
            !d.by_needle.contains_key(&(1, 0)),
            "expired on the next insert"
        );
        assert_eq!(d.order.len(), 1);
    }

    #[test]
    fn the_oldest_is_forgotten_past_the_bound() {
        let t0 = Instant::now();
        let mut d = AbsentDeletes::default();
        for k in 0..MAX as u64 + 10 {
            d.insert(k, 0, 1, t0);
        }
        assert_eq!(d.order.len(), MAX);
        assert_eq!(d.by_needle.len(), MAX);
        assert!(!d.holds(9, 0, 1, t0));
        assert!(d.holds(10, 0, 1, t0));
        // The same needle deleted again keeps one entry, the newer.
        let t1 = t0 + Duration::from_secs(1);
        d.insert(MAX as u64 + 9, 0, 2, t1);
        assert!(d.holds(MAX as u64 + 9, 0, 2, t1));
        assert!(!d.holds(MAX as u64 + 9, 0, 1, t1));
    }
}
