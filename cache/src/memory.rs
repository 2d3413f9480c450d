//! The memory of the cache: a bounded LRU by bytes, split into shards, together with the store
//! reads under way so that concurrent misses of one needle share one read.
//!
//! Each shard holds, under one lock, its LRU list, its byte count, an index from photo to the
//! alternate keys it holds (so a purge finds every variant), and the reads in flight for its
//! needles. Because the read in flight and the LRU live under the same lock, a purge that
//! arrives while a read is under way removes the read's slot, and the read, when it ends,
//! finds its slot gone and does not insert: a delete cannot be undone by a read that started
//! before it.

use haystack_service::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::http::header::HeaderValue;
use bytes::Bytes;
use lru::LruCache;
use tokio::sync::watch;

use crate::config::ENTRY_OVERHEAD_BYTES;
use crate::error::CacheError;

/// A needle's address without its cookie (the cookie is checked against the entry).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct NeedleKey {
    pub volume: u32,
    pub key: u64,
    pub alt: u32,
}

/// A needle as served: bytes and the headers that go with them, made once.
#[derive(Debug)]
pub struct Needle {
    pub data: Bytes,
    pub cookie: u64,
    pub content_type: HeaderValue,
    /// The store's strong ETag (quoted).
    pub etag: HeaderValue,
    /// When it was read from a store.
    pub fetched: std::time::Instant,
    /// How long after `fetched` its photo was last found live (ms): a hit asks again once
    /// `recheck_hits_after_ms` passed since then.
    pub live_at_ms: std::sync::atomic::AtomicU64,
    /// Served although the directory could not say whether its photo is live (unreachable):
    /// answered with a short-lived `Cache-Control`, never kept in memory.
    pub live_unknown: bool,
}

impl Needle {
    /// Bytes charged against the capacity.
    pub fn weight(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }

    /// A copy marked [`Needle::live_unknown`] (the bytes are shared, not copied).
    pub fn live_unknown(&self) -> Arc<Needle> {
        Arc::new(Needle {
            data: self.data.clone(),
            cookie: self.cookie,
            content_type: self.content_type.clone(),
            etag: self.etag.clone(),
            fetched: self.fetched,
            live_at_ms: self.live_at_ms.load(Ordering::Relaxed).into(),
            live_unknown: true,
        })
    }
}

/// The outcome of one store read, as every waiter receives it.
pub type FetchResult = Result<Arc<Needle>, CacheError>;

/// Where waiters receive a read's outcome (`None` until it ends).
pub type FlightRx = watch::Receiver<Option<FetchResult>>;

/// The right and duty to run a store read and report it with [`Memory::complete`].
#[derive(Debug)]
pub struct Ticket {
    key: NeedleKey,
    cookie: u64,
    id: u64,
    tx: watch::Sender<Option<FetchResult>>,
}

impl Ticket {
    pub fn key(&self) -> NeedleKey {
        self.key
    }
}

/// What [`Memory::probe`] found.
#[derive(Debug)]
pub enum Probe {
    /// In memory (the caller still checks the cookie).
    Hit(Arc<Needle>),
    /// A read of this needle is under way: wait for it.
    Join(FlightRx),
    /// Nothing under way: the caller runs the read and completes the ticket.
    Lead(Ticket, FlightRx),
}

struct Shard {
    lru: LruCache<NeedleKey, Arc<Needle>>,
    bytes: u64,
    /// (volume, key) → alternate keys held in this shard.
    photos: HashMap<(u32, u64), Vec<u32>>,
    /// (needle, cookie) → the read under way (its id and its outcome channel).
    flights: HashMap<(NeedleKey, u64), (u64, FlightRx)>,
}

impl Shard {
    fn unindex(&mut self, k: &NeedleKey) {
        if let Some(alts) = self.photos.get_mut(&(k.volume, k.key)) {
            alts.retain(|a| *a != k.alt);
            if alts.is_empty() {
                self.photos.remove(&(k.volume, k.key));
            }
        }
    }
}

/// The sharded LRU by bytes.
pub struct Memory {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: u64,
    max_entry: u64,
    next_flight: AtomicU64,
    evictions: AtomicU64,
}

/// Counts of what the memory holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
}

fn shard_of(k: &NeedleKey, n: usize) -> usize {
    let h = crate::ring::photo_point(k.volume, k.key)
        ^ (k.alt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> 17) % n as u64) as usize
}

impl Memory {
    /// `capacity` bytes over `shards` shards; needles over `max_entry` bytes are never kept.
    pub fn new(capacity: u64, shards: usize, max_entry: u64) -> Memory {
        let shards = shards.max(1);
        Memory {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        lru: LruCache::unbounded(),
                        bytes: 0,
                        photos: HashMap::new(),
                        flights: HashMap::new(),
                    })
                })
                .collect(),
            shard_capacity: capacity / shards as u64,
            max_entry,
            next_flight: AtomicU64::new(1),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, k: &NeedleKey) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard lock leaves consistent data (every update is a few
        // map operations that do not panic), so a poisoned lock is taken over.
        lock(&self.shards[shard_of(k, self.shards.len())])
    }

    /// The hit path: the needle if it is in memory (and marks it recently used).
    pub fn get(&self, k: &NeedleKey) -> Option<Arc<Needle>> {
        self.shard(k).lru.get(k).cloned()
    }

    /// A hit, or the read under way to wait on, or a ticket to start one.
    pub fn probe(&self, k: NeedleKey, cookie: u64) -> Probe {
        let mut s = self.shard(&k);
        if let Some(n) = s.lru.get(&k) {
            return Probe::Hit(n.clone());
        }
        if let Some((_, rx)) = s.flights.get(&(k, cookie)) {
            // A leader that vanished without completing (a panic) leaves a closed channel:
            // start over instead of joining it.
            if rx.has_changed().is_ok() {
                return Probe::Join(rx.clone());
            }
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        s.flights.insert((k, cookie), (id, rx.clone()));
        Probe::Lead(
            Ticket {
                key: k,
                cookie,
                id,
                tx,
            },
            rx,
        )
    }

    /// Ends a read: keeps the needle when `admit` says so and no purge came in meanwhile,
    /// then hands the outcome to every waiter. Returns whether the needle was kept.
    pub fn complete(&self, t: Ticket, result: FetchResult, admit: bool) -> bool {
        let mut kept = false;
        {
            let mut s = self.shard(&t.key);
            let ours = matches!(s.flights.get(&(t.key, t.cookie)), Some((id, _)) if *id == t.id);
            if ours {
                s.flights.remove(&(t.key, t.cookie));
                if let (true, Ok(n)) = (admit, &result) {
                    kept = self.insert_locked(&mut s, t.key, n.clone());
                }
            }
        }
        let _ = t.tx.send(Some(result));
        kept
    }

    /// Ends a read that will not complete (its leader went away): forgets its slot, and the
    /// waiters, seeing the channel closed, probe again (one of them leads a new read).
    pub fn abandon(&self, t: Ticket) {
        let mut s = self.shard(&t.key);
        if matches!(s.flights.get(&(t.key, t.cookie)), Some((id, _)) if *id == t.id) {
            s.flights.remove(&(t.key, t.cookie));
        }
        drop(s);
        drop(t);
    }

    /// Puts a needle in memory directly (tests and warm-up).
    pub fn insert(&self, k: NeedleKey, n: Arc<Needle>) -> bool {
        let mut s = self.shard(&k);
        self.insert_locked(&mut s, k, n)
    }

    fn insert_locked(&self, s: &mut Shard, k: NeedleKey, n: Arc<Needle>) -> bool {
        let w = n.weight();
        if w > self.shard_capacity || n.data.len() as u64 > self.max_entry {
            return false;
        }
        if let Some(old) = s.lru.pop(&k) {
            s.bytes -= old.weight();
            s.unindex(&k);
        }
        let mut evicted = 0;
        while s.bytes + w > self.shard_capacity {
            let Some((ek, ev)) = s.lru.pop_lru() else {
                break;
            };
            s.bytes -= ev.weight();
            s.unindex(&ek);
            evicted += 1;
        }
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        s.lru.put(k, n);
        s.bytes += w;
        s.photos.entry((k.volume, k.key)).or_default().push(k.alt);
        true
    }

    /// Forgets every alternate key of a photo, and every read of it under way (those reads
    /// will not insert when they end). Returns the entries removed.
    pub fn purge_photo(&self, volume: u32, key: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            if let Some(alts) = s.photos.remove(&(volume, key)) {
                for alt in alts {
                    if let Some(n) = s.lru.pop(&NeedleKey { volume, key, alt }) {
                        s.bytes -= n.weight();
                        removed += 1;
                    }
                }
            }
            s.flights
                .retain(|(k, _), _| !(k.volume == volume && k.key == key));
        }
        removed
    }

    /// Entries, bytes held (with overhead) and evictions so far.
    pub fn stats(&self) -> MemoryStats {
        let mut st = MemoryStats {
            evictions: self.evictions.load(Ordering::Relaxed),
            ..Default::default()
        };
        for shard in self.shards.iter() {
            let s = lock(shard);
            st.entries += s.lru.len() as u64;
            st.bytes += s.bytes;
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needle(len: usize, cookie: u64) -> Arc<Needle> {
        Arc::new(Needle {
            data: Bytes::from(vec![7u8; len]),
            cookie,
            content_type: HeaderValue::from_static("image/jpeg"),
            etag: HeaderValue::from_static("\"x\""),
            fetched: std::time::Instant::now(),
            live_at_ms: Default::default(),
            live_unknown: false,
        })
    }

    fn k(key: u64, alt: u32) -> NeedleKey {
        NeedleKey {
            volume: 1,
            key,
            alt,
        }
    }

    #[test]
    fn bounded_by_bytes_least_recent_out() {
        let w = 1000 + ENTRY_OVERHEAD_BYTES;
        let m = Memory::new(4 * w, 1, 1 << 20);
        for i in 0..4 {
            assert!(m.insert(k(i, 0), needle(1000, 1)));
        }
        assert_eq!(m.stats().bytes, 4 * w);
        // Touch 0, so 1 is the least recently used.
        assert!(m.get(&k(0, 0)).is_some());
        assert!(m.insert(k(4, 0), needle(1000, 1)));
        assert!(m.get(&k(1, 0)).is_none());
        assert!(m.get(&k(0, 0)).is_some());
        let st = m.stats();
        assert_eq!((st.entries, st.bytes, st.evictions), (4, 4 * w, 1));
        // A big needle pushes out as many as it needs.
        assert!(m.insert(k(5, 0), needle(2500, 1)));
        let st = m.stats();
        assert!(st.bytes <= 4 * w, "{st:?}");
        assert_eq!(st.evictions, 4);
        // Replacing an entry does not count it twice.
        assert!(m.insert(k(5, 0), needle(10, 1)));
        assert_eq!(m.stats().entries, st.entries);
    }

    #[test]
    fn too_big_is_not_kept() {
        let m = Memory::new(100_000, 4, 10_000);
        assert!(!m.insert(k(1, 0), needle(10_001, 1)));
        // Larger than one shard (25 000 bytes) even if under max_entry.
        let m = Memory::new(100_000, 4, 1 << 20);
        assert!(!m.insert(k(1, 0), needle(30_000, 1)));
        assert!(m.insert(k(1, 0), needle(20_000, 1)));
        assert_eq!(m.stats().evictions, 0);
    }

    #[test]
    fn purge_removes_every_alt_of_the_photo_only() {
        let m = Memory::new(1 << 20, 8, 1 << 20);
        for alt in 0..5 {
            m.insert(k(9, alt), needle(100, 1));
        }
        m.insert(k(10, 0), needle(100, 1));
        assert_eq!(m.purge_photo(1, 9), 5);
        assert_eq!(m.stats().entries, 1);
        assert!(m.get(&k(10, 0)).is_some());
        assert_eq!(m.purge_photo(1, 9), 0);
        assert_eq!(m.stats().bytes, 100 + ENTRY_OVERHEAD_BYTES);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_read() {
        let m = Memory::new(1 << 20, 2, 1 << 20);
        let Probe::Lead(ticket, rx0) = m.probe(k(1, 0), 5) else {
            panic!("first probe must lead")
        };
        let mut waiters = vec![rx0];
        for _ in 0..10 {
            match m.probe(k(1, 0), 5) {
                Probe::Join(rx) => waiters.push(rx),
                other => panic!("expected to join, got {other:?}"),
            }
        }
        // Another cookie is another read (it will be refused by the store).
        assert!(matches!(m.probe(k(1, 0), 6), Probe::Lead(..)));
        assert!(m.complete(ticket, Ok(needle(10, 5)), true));
        for mut rx in waiters {
            let v = rx.wait_for(|v| v.is_some()).await.unwrap().clone();
            assert_eq!(v.unwrap().unwrap().data.len(), 10);
        }
        assert!(matches!(m.probe(k(1, 0), 5), Probe::Hit(_)));
    }

    #[tokio::test]
    async fn purge_during_a_read_keeps_it_out() {
        let m = Memory::new(1 << 20, 2, 1 << 20);
        let Probe::Lead(ticket, mut rx) = m.probe(k(3, 1), 5) else {
            panic!()
        };
        m.purge_photo(1, 3);
        // A request after the purge does not join the old read.
        let Probe::Lead(t2, _) = m.probe(k(3, 1), 5) else {
            panic!("a read that started before the purge was joined")
        };
        assert!(!m.complete(ticket, Ok(needle(10, 5)), true));
        // Its waiters still get their answer.
        assert!(rx.wait_for(|v| v.is_some()).await.is_ok());
        assert!(m.get(&k(3, 1)).is_none());
        // The read that started after the purge may keep what it read.
        assert!(m.complete(t2, Ok(needle(10, 5)), true));
        assert!(m.get(&k(3, 1)).is_some());
    }

    #[tokio::test]
    async fn failed_reads_are_not_kept_and_a_lost_leader_is_replaced() {
        let m = Memory::new(1 << 20, 1, 1 << 20);
        let Probe::Lead(t, _) = m.probe(k(4, 0), 5) else {
            panic!()
        };
        assert!(!m.complete(t, Err(CacheError::NotFound), true));
        assert!(matches!(m.probe(k(4, 0), 5), Probe::Lead(..)));
        // The leader above was dropped without completing: the next probe leads again.
        assert!(matches!(m.probe(k(4, 0), 5), Probe::Lead(..)));
        // An abandoned read forgets its slot; its waiters see the channel closed.
        let Probe::Lead(t, _) = m.probe(k(5, 0), 5) else {
            panic!()
        };
        let Probe::Join(mut rx) = m.probe(k(5, 0), 5) else {
            panic!()
        };
        m.abandon(t);
        assert!(!m.shard(&k(5, 0)).flights.contains_key(&(k(5, 0), 5)));
        assert!(rx.wait_for(|v| v.is_some()).await.is_err());
        assert!(matches!(m.probe(k(5, 0), 5), Probe::Lead(..)));
    }
}
