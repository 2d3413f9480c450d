//! Photo ids: 64-bit, k-sortable, without a central counter; and random cookies.
//!
//! The layout and its codec are `haystack_proto::id` (every service reads ids). Each
//! directory instance holds its own node id (claimed through the metadata store, see
//! [`crate::service`]), so instances allocate at once without coordination. Ids sort by time
//! across instances to the millisecond; within one instance they strictly increase, even when
//! the wall clock steps back (the generator then keeps counting from the last millisecond).

use std::sync::atomic::{AtomicU64, Ordering};

pub use haystack_proto::id::{decode, IdParts, ID_EPOCH_MS, MAX_NODE_ID, NODE_BITS, SEQ_BITS};

use crate::clock::system_now_ms;

const SEQ_MASK: u64 = haystack_proto::id::MAX_SEQ as u64;
const TIME_MASK: u64 = (1 << 41) - 1;

/// A lock-free id generator for one node id.
#[derive(Debug)]
pub struct IdGenerator {
    /// The node id, changed when the instance claims another (its lease was taken).
    node: AtomicU64,
    /// `(ms since ID_EPOCH_MS) << SEQ_BITS | seq` of the last id handed out.
    last: AtomicU64,
}

impl IdGenerator {
    /// `node` is masked to 10 bits.
    pub fn new(node: u16) -> Self {
        Self {
            node: AtomicU64::new(u64::from(node & MAX_NODE_ID)),
            last: AtomicU64::new(0),
        }
    }

    pub fn node(&self) -> u16 {
        self.node.load(Ordering::Acquire) as u16
    }

    /// Hands out ids under `node` from now on (masked to 10 bits).
    pub fn set_node(&self, node: u16) {
        self.node
            .store(u64::from(node & MAX_NODE_ID), Ordering::Release);
    }

    /// The next id.
    pub fn next_id(&self) -> u64 {
        self.next_at(system_now_ms())
    }

    /// The next id as if the clock read `unix_ms` (the clock may go back; ids still grow).
    pub fn next_at(&self, unix_ms: u64) -> u64 {
        let now = (unix_ms.saturating_sub(ID_EPOCH_MS) & TIME_MASK) << SEQ_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            // A fresh millisecond starts at sequence 0; otherwise count on from the last id. When
            // the 4096 sequence numbers of a millisecond run out this borrows from the next one,
            // which keeps ids unique and ordered at the cost of running slightly ahead of time.
            let next = if now > last { now } else { last + 1 };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ms = next >> SEQ_BITS;
                    let seq = next & SEQ_MASK;
                    let node = self.node.load(Ordering::Acquire);
                    return (ms << (NODE_BITS + SEQ_BITS)) | (node << SEQ_BITS) | seq;
                }
                Err(seen) => last = seen,
            }
        }
    }
}

/// A random cookie for a new photo.
pub fn new_cookie() -> u64 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_decode_to_their_parts() {
        let g = IdGenerator::new(37);
        let t = ID_EPOCH_MS + 123_456;
        let id = g.next_at(t);
        assert_eq!(
            decode(id),
            IdParts {
                unix_ms: t,
                node: 37,
                seq: 0
            }
        );
        assert_eq!(decode(g.next_at(t)).seq, 1);
    }

    #[test]
    fn ids_grow_even_when_the_clock_steps_back() {
        let g = IdGenerator::new(1);
        let a = g.next_at(ID_EPOCH_MS + 10_000);
        let b = g.next_at(ID_EPOCH_MS + 5_000);
        let c = g.next_at(ID_EPOCH_MS + 10_001);
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn sequence_overflow_moves_to_the_next_millisecond() {
        let g = IdGenerator::new(2);
        let t = ID_EPOCH_MS + 1;
        let mut prev = 0;
        for _ in 0..5000 {
            let id = g.next_at(t);
            assert!(id > prev);
            prev = id;
        }
        assert_eq!(decode(prev).unix_ms, t + 1);
    }

    #[test]
    fn ids_from_different_nodes_never_collide() {
        let a = IdGenerator::new(1);
        let b = IdGenerator::new(2);
        let t = ID_EPOCH_MS + 99;
        let xs: std::collections::HashSet<u64> = (0..100)
            .flat_map(|_| [a.next_at(t), b.next_at(t)])
            .collect();
        assert_eq!(xs.len(), 200);
    }

    #[test]
    fn concurrent_generation_is_unique() {
        let g = std::sync::Arc::new(IdGenerator::new(5));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..10_000).map(|_| g.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for h in handles {
            for id in h.join().expect("thread") {
                assert!(all.insert(id));
            }
        }
        assert_eq!(all.len(), 40_000);
    }
}
