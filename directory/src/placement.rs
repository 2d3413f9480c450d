//! Choosing the store machines for a new logical volume: R distinct machines, spread over
//! distinct zones, then distinct racks, where labelled, and among those the ones with the most
//! free space (less what is already promised to volumes they have not created yet) and the
//! fewest volumes ([`Policy::Spread`]); or, with [`Policy::Chained`] (chained declustering, as
//! in Petal), R machines next to each other on a ring of the stores in id order, consecutive
//! volumes starting on consecutive machines. Pure functions, so the policy is tested alone.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// How the replicas of a new volume (and a replica replacing a lost or moved one) are placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// [`place`]: distinct zones and racks first, then the most free bytes.
    #[default]
    Spread,
    /// [`place_chained`]: neighbouring machines of the ring of store ids, so the read load of a
    /// lost machine falls on its two ring neighbours (R = 2), not on every machine.
    Chained,
}

/// A machine that may take a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub store_id: u64,
    pub zone: Option<String>,
    pub rack: Option<String>,
    /// Free bytes less the bytes promised to volumes placed on it but not yet reported.
    pub free_bytes: u64,
    /// Logical volumes it already holds.
    pub volumes: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{eligible} store machines up with {need_bytes} bytes free; {wanted} replicas wanted")]
pub struct PlacementError {
    pub eligible: usize,
    pub wanted: usize,
    pub need_bytes: u64,
}

fn zone_of(c: &Candidate) -> &str {
    c.zone.as_deref().unwrap_or("")
}

fn rack_of(c: &Candidate) -> (&str, &str) {
    (zone_of(c), c.rack.as_deref().unwrap_or(""))
}

/// The zones and racks a volume's chosen (or kept) replicas are in.
#[derive(Default)]
struct Used<'a> {
    zones: HashSet<&'a str>,
    racks: HashSet<(&'a str, &'a str)>,
}

impl<'a> Used<'a> {
    fn of(chosen: impl IntoIterator<Item = &'a Candidate>) -> Self {
        let mut u = Used::default();
        for c in chosen {
            u.add(c);
        }
        u
    }

    fn add(&mut self, c: &'a Candidate) {
        self.zones.insert(zone_of(c));
        self.racks.insert(rack_of(c));
    }

    /// Whether `c` is in a zone, and in a rack, none of them is in (the first two ranks of
    /// every placement rule).
    fn fresh(&self, c: &Candidate) -> (bool, bool) {
        (
            !self.zones.contains(zone_of(c)),
            !self.racks.contains(&rack_of(c)),
        )
    }
}

/// The distinct candidates with `need_bytes` free, or an error when fewer than `replicas`.
fn eligible(
    candidates: &[Candidate],
    replicas: usize,
    need_bytes: u64,
) -> Result<Vec<&Candidate>, PlacementError> {
    let mut seen = HashSet::new();
    let eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| seen.insert(c.store_id) && c.free_bytes >= need_bytes)
        .collect();
    if eligible.len() < replicas {
        return Err(PlacementError {
            eligible: eligible.len(),
            wanted: replicas,
            need_bytes,
        });
    }
    Ok(eligible)
}

/// How [`place`] and [`place_beside`] rank a machine (highest first): a new zone, a new rack,
/// the most free bytes, the fewest volumes, the lowest id.
fn spread_rank(
    used: &Used,
    c: &Candidate,
) -> (
    bool,
    bool,
    u64,
    std::cmp::Reverse<u32>,
    std::cmp::Reverse<u64>,
) {
    let (zone, rack) = used.fresh(c);
    (
        zone,
        rack,
        c.free_bytes,
        std::cmp::Reverse(c.volumes),
        std::cmp::Reverse(c.store_id),
    )
}

/// Picks `replicas` distinct machines with at least `need_bytes` free.
///
/// Greedy: each pick prefers a machine in a zone not used yet, then in a rack not used yet, then
/// the most free bytes, then the fewest volumes, then the lowest id (deterministic). So the number
/// of distinct zones is `min(replicas, zones among eligible machines)`.
pub fn place(
    candidates: &[Candidate],
    replicas: usize,
    need_bytes: u64,
) -> Result<Vec<u64>, PlacementError> {
    let eligible = eligible(candidates, replicas, need_bytes)?;
    let mut chosen: Vec<&Candidate> = Vec::with_capacity(replicas);
    let mut used = Used::default();
    for _ in 0..replicas {
        let best = eligible
            .iter()
            .filter(|c| !chosen.iter().any(|x| x.store_id == c.store_id))
            .max_by_key(|c| spread_rank(&used, c));
        let Some(best) = best else { break };
        used.add(best);
        chosen.push(best);
    }
    Ok(chosen.iter().map(|c| c.store_id).collect())
}

/// Picks one machine to take a replica beside the `kept` ones (a replica moved off a
/// draining machine): the same rules as [`place`] with the kept replicas' zones and racks
/// counted as used, so a move never puts two replicas where `place` would not.
pub fn place_beside(
    candidates: &[Candidate],
    kept: &[Candidate],
    need_bytes: u64,
) -> Result<u64, PlacementError> {
    let used = Used::of(kept);
    candidates
        .iter()
        .filter(|c| c.free_bytes >= need_bytes && !kept.iter().any(|k| k.store_id == c.store_id))
        .max_by_key(|c| spread_rank(&used, c))
        .map(|c| c.store_id)
        .ok_or(PlacementError {
            eligible: 0,
            wanted: 1,
            need_bytes,
        })
}

/// Clockwise distance on the ring of store ids from `start` (inclusive): ids at or after
/// `start` first, in order, then the ones before it (wrapping).
fn ring_key(id: u64, start: u64) -> (bool, u64) {
    (id < start, id)
}

/// Chained declustering: `replicas` distinct machines with at least `need_bytes` free, next
/// to each other on the ring of store ids. The first is the first eligible machine at or
/// after `start` (clockwise); each next one is the nearest eligible machine after the one
/// before it. A machine not in `candidates` (down, draining, retired, remote) or without room
/// is skipped: the next eligible one takes its turn. Zones, then racks, stay the rule they are
/// in [`place`]: when an eligible machine in a zone not used yet exists, the nearest such one
/// is taken instead of a nearer machine in a used zone (then the same for racks), so the
/// number of distinct zones is `min(replicas, zones among eligible machines)` as there.
/// Number the stores so that ring neighbours sit in different zones and the chain holds.
pub fn place_chained(
    candidates: &[Candidate],
    start: u64,
    replicas: usize,
    need_bytes: u64,
) -> Result<Vec<u64>, PlacementError> {
    let eligible = eligible(candidates, replicas, need_bytes)?;
    let mut chosen: Vec<&Candidate> = Vec::with_capacity(replicas);
    let mut cursor = start;
    for _ in 0..replicas {
        let Some(next) = nearest_on_ring(&eligible, &chosen, cursor) else {
            break;
        };
        cursor = next.store_id.wrapping_add(1);
        chosen.push(next);
    }
    Ok(chosen.iter().map(|c| c.store_id).collect())
}

/// The nearest machine of `eligible` clockwise from `cursor` (inclusive) that is not in
/// `used`, preferring a zone, then a rack, that `used` does not have.
fn nearest_on_ring<'a>(
    eligible: &[&'a Candidate],
    used: &[&Candidate],
    cursor: u64,
) -> Option<&'a Candidate> {
    let taken = Used::of(used.iter().copied());
    eligible
        .iter()
        .filter(|c| !used.iter().any(|u| u.store_id == c.store_id))
        .max_by_key(|c| {
            let (zone, rack) = taken.fresh(c);
            (zone, rack, std::cmp::Reverse(ring_key(c.store_id, cursor)))
        })
        .copied()
}

/// [`place_beside`] for [`Policy::Chained`]: the machine taking the replica that was on
/// `lost` (a dead or draining store) is the nearest eligible one clockwise after `lost`,
/// zones and racks of the `kept` replicas counted as used. The volume's replicas end up where
/// [`place_chained`] would put them on the ring without `lost`: the chain is restored.
pub fn place_chained_beside(
    candidates: &[Candidate],
    kept: &[Candidate],
    lost: u64,
    need_bytes: u64,
) -> Result<u64, PlacementError> {
    let eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.free_bytes >= need_bytes && c.store_id != lost)
        .filter(|c| !kept.iter().any(|k| k.store_id == c.store_id))
        .collect();
    let kept: Vec<&Candidate> = kept.iter().collect();
    nearest_on_ring(&eligible, &kept, lost.wrapping_add(1))
        .map(|c| c.store_id)
        .ok_or(PlacementError {
            eligible: 0,
            wanted: 1,
            need_bytes,
        })
}

/// Where [`place_chained`] starts the next volume: the store after the first replica of the
/// newest replicated volume (`previous`), so new volumes walk the ring one machine at a time;
/// the lowest id when there is none.
pub fn chain_start(previous: Option<u64>) -> u64 {
    previous.map_or(0, |p| p.wrapping_add(1))
}

/// A store as the rebalancer sees it: its capacity and the bytes of the replicas it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub store_id: u64,
    pub capacity_bytes: u64,
    pub held_bytes: u64,
}

/// A replicated volume the rebalancer may move a replica of.
#[derive(Clone, Debug, PartialEq)]
pub struct Movable {
    pub volume: u32,
    pub bytes: u64,
    /// Its replicas' stores.
    pub stores: Vec<u64>,
    /// Stores it may not move to: they still hold a copy an earlier move replaced, until the
    /// repair worker drops it.
    pub avoid: Vec<u64>,
}

/// One move of a rebalance plan: the replica of `volume` on `from` copied onto `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub volume: u32,
    pub from: u64,
    pub to: u64,
    pub bytes: u64,
}

fn use_of(l: &Load) -> f64 {
    l.held_bytes as f64 / l.capacity_bytes as f64
}

/// The spread of disk use among `loads`: the fullest store's fraction minus the emptiest's.
pub fn spread(loads: &[Load]) -> f64 {
    let fracs = loads.iter().filter(|l| l.capacity_bytes > 0).map(use_of);
    let (lo, hi) = fracs.fold((f64::MAX, f64::MIN), |(lo, hi), f| (lo.min(f), hi.max(f)));
    if hi < lo {
        0.0
    } else {
        hi - lo
    }
}

/// A greedy plan of at most `max_moves` moves bringing the spread of disk use (fraction of
/// capacity held in replicas) within `max_spread`: each move takes, from the fullest store
/// to the emptiest one that holds no replica of it, the volume that narrows their gap the
/// most; a volume moves at most once per plan. Stops when the spread is within bounds or no
/// move narrows the gap. Zones and racks are checked by the caller, which may skip a move.
pub fn rebalance_plan(
    loads: &[Load],
    volumes: &[Movable],
    max_spread: f64,
    max_moves: usize,
) -> Vec<Move> {
    let mut loads: Vec<Load> = loads
        .iter()
        .filter(|l| l.capacity_bytes > 0)
        .cloned()
        .collect();
    let mut volumes: Vec<Movable> = volumes.to_vec();
    let mut plan = Vec::new();
    while plan.len() < max_moves && loads.len() >= 2 {
        loads.sort_by(|a, b| {
            use_of(b)
                .total_cmp(&use_of(a))
                .then(a.store_id.cmp(&b.store_id))
        });
        let (full, empty) = (&loads[0], &loads[loads.len() - 1]);
        let gap = use_of(full) - use_of(empty);
        if gap <= max_spread {
            break;
        }
        let after = |b: u64| {
            let f = (full.held_bytes - b) as f64 / full.capacity_bytes as f64;
            let e = (empty.held_bytes + b) as f64 / empty.capacity_bytes as f64;
            (f - e).abs()
        };
        let best = volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| v.bytes > 0 && v.bytes <= full.held_bytes)
            .filter(|(_, v)| {
                v.stores.contains(&full.store_id)
                    && !v.stores.contains(&empty.store_id)
                    && !v.avoid.contains(&empty.store_id)
            })
            .filter(|(_, v)| after(v.bytes) < gap)
            .min_by(|(_, a), (_, b)| after(a.bytes).total_cmp(&after(b.bytes)))
            .map(|(i, _)| i);
        let Some(i) = best else {
            break;
        };
        let v = volumes.swap_remove(i);
        let m = Move {
            volume: v.volume,
            from: full.store_id,
            to: empty.store_id,
            bytes: v.bytes,
        };
        let last = loads.len() - 1;
        loads[0].held_bytes -= v.bytes;
        loads[last].held_bytes += v.bytes;
        plan.push(m);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn load(id: u64, held: u64) -> Load {
        Load {
            store_id: id,
            capacity_bytes: 1000,
            held_bytes: held,
        }
    }

    #[test]
    fn a_new_empty_store_gets_replicas_until_the_spread_is_within_bounds() {
        // Stores 1 and 2 hold five 100-byte volumes each; store 3 is new.
        let loads = [load(1, 500), load(2, 500), load(3, 0)];
        let volumes: Vec<Movable> = (0..10)
            .map(|v| Movable {
                volume: v,
                bytes: 100,
                stores: vec![1 + (v as u64 % 2)],
                avoid: Vec::new(),
            })
            .collect();
        let plan = rebalance_plan(&loads, &volumes, 0.15, 100);
        assert!(plan.iter().all(|m| m.to == 3), "{plan:?}");
        let mut after = loads.to_vec();
        for m in &plan {
            after
                .iter_mut()
                .find(|l| l.store_id == m.from)
                .unwrap()
                .held_bytes -= m.bytes;
            after
                .iter_mut()
                .find(|l| l.store_id == m.to)
                .unwrap()
                .held_bytes += m.bytes;
        }
        assert!(spread(&after) <= 0.15, "{after:?}");
        assert_eq!(plan.len(), 3, "{plan:?}");
        // Within bounds already: nothing to do.
        assert!(rebalance_plan(&after, &volumes, 0.15, 100).is_empty());
    }

    #[test]
    fn a_move_never_lands_beside_another_replica_or_widens_the_gap() {
        // Store 2 holds a replica of the only volume on store 1: nothing can move there.
        let loads = [load(1, 300), load(2, 0)];
        let v = [Movable {
            volume: 7,
            bytes: 300,
            stores: vec![1, 2],
            avoid: Vec::new(),
        }];
        assert!(rebalance_plan(&loads, &v, 0.01, 10).is_empty());
        // One volume larger than twice the gap would only flip it.
        let v = [Movable {
            volume: 8,
            bytes: 300,
            stores: vec![1],
            avoid: Vec::new(),
        }];
        assert!(rebalance_plan(&[load(1, 320), load(2, 20)], &v, 0.01, 10).is_empty());
    }

    /// Regression: a plan moved a replica onto a store still holding the copy an earlier
    /// move of that volume replaced; the move was then skipped (no target) in every round,
    /// the same plan made again each interval.
    #[test]
    fn a_move_never_lands_on_a_store_holding_a_moved_copy_of_the_volume() {
        let loads = [load(1, 300), load(2, 0)];
        let v = [Movable {
            volume: 7,
            bytes: 100,
            stores: vec![1],
            avoid: vec![2],
        }];
        assert!(rebalance_plan(&loads, &v, 0.01, 10).is_empty());
    }

    #[test]
    fn a_moved_replica_goes_to_a_zone_the_kept_ones_do_not_use() {
        let cands = vec![
            cand(1, Some("a"), Some("r1"), 100),
            cand(2, Some("a"), Some("r2"), 900),
            cand(3, Some("b"), Some("r1"), 50),
        ];
        let kept = vec![cand(9, Some("a"), Some("r9"), 0)];
        assert_eq!(place_beside(&cands, &kept, 10), Ok(3));
        // Within one zone, a rack the kept replica does not use; then the most free bytes.
        let kept = vec![cand(9, Some("a"), Some("r2"), 0)];
        assert_eq!(place_beside(&cands[..2], &kept, 10), Ok(1));
        assert!(place_beside(&cands, &kept, 10_000).is_err());
    }

    fn cand(id: u64, zone: Option<&str>, rack: Option<&str>, free: u64) -> Candidate {
        Candidate {
            store_id: id,
            zone: zone.map(str::to_string),
            rack: rack.map(str::to_string),
            free_bytes: free,
            volumes: 0,
        }
    }

    #[test]
    fn prefers_distinct_zones_over_free_space() {
        let cs = vec![
            cand(1, Some("a"), None, 100),
            cand(2, Some("a"), None, 90),
            cand(3, Some("b"), None, 10),
        ];
        let mut got = place(&cs, 2, 5).expect("placed");
        got.sort();
        assert_eq!(got, vec![1, 3]);
    }

    #[test]
    fn prefers_distinct_racks_within_a_zone() {
        let cs = vec![
            cand(1, Some("a"), Some("r1"), 100),
            cand(2, Some("a"), Some("r1"), 90),
            cand(3, Some("a"), Some("r2"), 10),
        ];
        let mut got = place(&cs, 2, 5).expect("placed");
        got.sort();
        assert_eq!(got, vec![1, 3]);
    }

    #[test]
    fn machines_without_room_are_skipped() {
        let cs = vec![cand(1, None, None, 100), cand(2, None, None, 1)];
        assert!(place(&cs, 2, 50).is_err());
        assert_eq!(place(&cs, 1, 50).ok(), Some(vec![1]));
    }

    fn ring(n: u64) -> Vec<Candidate> {
        (1..=n).map(|id| cand(id * 10, None, None, 100)).collect()
    }

    #[test]
    fn chained_volumes_walk_the_ring_on_neighbouring_machines() {
        // Six stores, ids 10..=60; each new volume starts after the previous one's first.
        let cs = ring(6);
        let mut previous = None;
        let mut layout = Vec::new();
        for _ in 0..8 {
            let got = place_chained(&cs, chain_start(previous), 2, 10).expect("placed");
            previous = Some(got[0]);
            layout.push(got);
        }
        let want: Vec<Vec<u64>> = [
            [10, 20],
            [20, 30],
            [30, 40],
            [40, 50],
            [50, 60],
            [60, 10],
            [10, 20],
            [20, 30],
        ]
        .iter()
        .map(|p| p.to_vec())
        .collect();
        assert_eq!(layout, want);
        // R = 3: three consecutive machines, wrapping round.
        assert_eq!(place_chained(&cs, 51, 3, 10), Ok(vec![60, 10, 20]));
    }

    #[test]
    fn chained_skips_machines_that_cannot_take_the_replica() {
        // 30 is down (not a candidate) and 40 is full: 20's volume goes to 20 and 50, and a
        // volume starting at 30 starts at 50.
        let cs: Vec<Candidate> = ring(6)
            .into_iter()
            .filter(|c| c.store_id != 30)
            .map(|mut c| {
                if c.store_id == 40 {
                    c.free_bytes = 5;
                }
                c
            })
            .collect();
        assert_eq!(place_chained(&cs, 20, 2, 10), Ok(vec![20, 50]));
        assert_eq!(place_chained(&cs, 30, 2, 10), Ok(vec![50, 60]));
        // Too few eligible machines: refused, never two replicas on one.
        assert!(place_chained(&cs[..2], 0, 3, 10).is_err());
        // Duplicate ids count once.
        let dup = vec![cand(1, None, None, 100), cand(1, None, None, 100)];
        assert!(place_chained(&dup, 0, 2, 10).is_err());
    }

    #[test]
    fn chained_keeps_zones_apart_before_the_chain() {
        // Ring 1(a) 2(a) 3(b) 4(b): after 1, the nearest machine in another zone is 3.
        let cs = vec![
            cand(1, Some("a"), None, 100),
            cand(2, Some("a"), None, 100),
            cand(3, Some("b"), None, 100),
            cand(4, Some("b"), None, 100),
        ];
        assert_eq!(place_chained(&cs, 1, 2, 10), Ok(vec![1, 3]));
        assert_eq!(place_chained(&cs, 4, 2, 10), Ok(vec![4, 1]));
        // Zones interleaved on the ring: plain neighbours.
        let cs = vec![
            cand(1, Some("a"), None, 100),
            cand(2, Some("b"), None, 100),
            cand(3, Some("a"), None, 100),
            cand(4, Some("b"), None, 100),
        ];
        assert_eq!(place_chained(&cs, 2, 2, 10), Ok(vec![2, 3]));
        // Once every zone is used, the chain again.
        assert_eq!(place_chained(&cs, 2, 3, 10), Ok(vec![2, 3, 4]));
    }

    #[test]
    fn a_chained_replacement_goes_next_to_the_lost_one() {
        let cs = ring(6);
        // Volume on 30 and 40; 40 is lost: its replica goes to 50, the ring without 40.
        let kept = vec![cand(30, None, None, 100)];
        let others: Vec<Candidate> = cs
            .iter()
            .filter(|c| c.store_id != 30 && c.store_id != 40)
            .cloned()
            .collect();
        assert_eq!(place_chained_beside(&others, &kept, 40, 10), Ok(50));
        // 30 lost instead, 40 kept: the next after 30 that holds none is 50.
        let kept = vec![cand(40, None, None, 100)];
        assert_eq!(place_chained_beside(&cs, &kept, 30, 10), Ok(50));
        // Wrapping round; a full machine skipped; nothing left: refused.
        let kept = vec![cand(50, None, None, 100)];
        let mut cs2 = cs.clone();
        cs2[0].free_bytes = 1;
        assert_eq!(place_chained_beside(&cs2, &kept, 60, 10), Ok(20));
        assert!(place_chained_beside(&cs[..1], &[cand(10, None, None, 0)], 60, 10).is_err());
        // A zone the kept replica does not use wins over the nearest machine.
        let zoned = vec![
            cand(1, Some("a"), None, 100),
            cand(2, Some("a"), None, 100),
            cand(3, Some("b"), None, 100),
        ];
        let kept = vec![cand(9, Some("a"), None, 0)];
        assert_eq!(place_chained_beside(&zoned, &kept, 0, 10), Ok(3));
    }

    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(
            (
                0u64..20,
                prop::option::of(0u8..4),
                prop::option::of(0u8..3),
                0u64..1000,
                0u32..10,
            ),
            0..16,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(id, z, r, free, vols)| Candidate {
                    store_id: id,
                    zone: z.map(|z| format!("z{z}")),
                    rack: r.map(|r| format!("r{r}")),
                    free_bytes: free,
                    volumes: vols,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn replicas_land_on_distinct_machines_and_zones(
            cs in candidates(), r in 1usize..5, need in 0u64..500,
        ) {
            // Duplicate ids keep the first entry, as `place` does.
            let mut seen = HashSet::new();
            let eligible: Vec<&Candidate> = cs
                .iter()
                .filter(|c| seen.insert(c.store_id))
                .filter(|c| c.free_bytes >= need)
                .collect();
            match place(&cs, r, need) {
                Ok(ids) => {
                    prop_assert_eq!(ids.len(), r);
                    let distinct: HashSet<u64> = ids.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), r, "replicas on the same machine");
                    for id in &ids {
                        prop_assert!(eligible.iter().any(|c| c.store_id == *id));
                    }
                    let zones_avail: HashSet<&str> = eligible.iter().map(|c| zone_of(c)).collect();
                    let zones_used: HashSet<&str> = ids
                        .iter()
                        .filter_map(|id| eligible.iter().find(|c| c.store_id == *id))
                        .map(|c| zone_of(c))
                        .collect();
                    prop_assert_eq!(zones_used.len(), r.min(zones_avail.len()));
                }
                Err(e) => prop_assert!(eligible.len() < r, "refused with {} eligible", e.eligible),
            }
        }

        #[test]
        fn chained_replicas_land_on_distinct_machines_and_zones(
            cs in candidates(), r in 1usize..5, need in 0u64..500, start in 0u64..24,
        ) {
            let mut seen = HashSet::new();
            let eligible: Vec<&Candidate> = cs
                .iter()
                .filter(|c| seen.insert(c.store_id))
                .filter(|c| c.free_bytes >= need)
                .collect();
            match place_chained(&cs, start, r, need) {
                Ok(ids) => {
                    prop_assert_eq!(ids.len(), r);
                    let distinct: HashSet<u64> = ids.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), r, "replicas on the same machine");
                    for id in &ids {
                        prop_assert!(eligible.iter().any(|c| c.store_id == *id));
                    }
                    let zones_avail: HashSet<&str> = eligible.iter().map(|c| zone_of(c)).collect();
                    let zones_used: HashSet<&str> = ids
                        .iter()
                        .filter_map(|id| eligible.iter().find(|c| c.store_id == *id))
                        .map(|c| zone_of(c))
                        .collect();
                    prop_assert_eq!(zones_used.len(), r.min(zones_avail.len()));
                    // Without zones or racks, the first is the first eligible at or after
                    // `start` and the others follow it on the ring.
                    if eligible.iter().all(|c| c.zone.is_none() && c.rack.is_none()) {
                        let mut ring: Vec<u64> = eligible.iter().map(|c| c.store_id).collect();
                        ring.sort_by_key(|id| ring_key(*id, start));
                        prop_assert_eq!(&ids[..], &ring[..r]);
                    }
                }
                Err(e) => prop_assert!(eligible.len() < r, "refused with {} eligible", e.eligible),
            }
        }
    }
}
