//! Choosing the store machines for a new logical volume: R distinct machines, spread over
//! distinct zones, then distinct racks, where labelled, and among those the ones with the most
//! free space (less what is already promised to volumes they have not created yet) and the
//! fewest volumes. Pure functions, so the policy is tested alone.

use std::collections::HashSet;

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
    let eligible: Vec<&Candidate> = {
        let mut seen = HashSet::new();
        candidates
            .iter()
            .filter(|c| seen.insert(c.store_id) && c.free_bytes >= need_bytes)
            .collect()
    };
    if eligible.len() < replicas {
        return Err(PlacementError {
            eligible: eligible.len(),
            wanted: replicas,
            need_bytes,
        });
    }
    let mut chosen: Vec<&Candidate> = Vec::with_capacity(replicas);
    let mut zones: HashSet<&str> = HashSet::new();
    let mut racks: HashSet<(&str, &str)> = HashSet::new();
    for _ in 0..replicas {
        let best = eligible
            .iter()
            .filter(|c| !chosen.iter().any(|x| x.store_id == c.store_id))
            .max_by(|a, b| {
                let key = |c: &Candidate| {
                    let z = zone_of(c);
                    let r = c.rack.as_deref().unwrap_or("");
                    (
                        !zones.contains(z),
                        !racks.contains(&(z, r)),
                        c.free_bytes,
                        std::cmp::Reverse(c.volumes),
                        std::cmp::Reverse(c.store_id),
                    )
                };
                key(a).cmp(&key(b))
            });
        let Some(best) = best else { break };
        zones.insert(zone_of(best));
        racks.insert((zone_of(best), best.rack.as_deref().unwrap_or("")));
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
    let zones: HashSet<&str> = kept.iter().map(zone_of).collect();
    let racks: HashSet<(&str, &str)> = kept
        .iter()
        .map(|c| (zone_of(c), c.rack.as_deref().unwrap_or("")))
        .collect();
    candidates
        .iter()
        .filter(|c| c.free_bytes >= need_bytes && !kept.iter().any(|k| k.store_id == c.store_id))
        .max_by_key(|c| {
            let z = zone_of(c);
            let r = c.rack.as_deref().unwrap_or("");
            (
                !zones.contains(z),
                !racks.contains(&(z, r)),
                c.free_bytes,
                std::cmp::Reverse(c.volumes),
                std::cmp::Reverse(c.store_id),
            )
        })
        .map(|c| c.store_id)
        .ok_or(PlacementError {
            eligible: 0,
            wanted: 1,
            need_bytes,
        })
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
                v.stores.contains(&full.store_id) && !v.stores.contains(&empty.store_id)
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
        }];
        assert!(rebalance_plan(&loads, &v, 0.01, 10).is_empty());
        // One volume larger than twice the gap would only flip it.
        let v = [Movable {
            volume: 8,
            bytes: 300,
            stores: vec![1],
        }];
        assert!(rebalance_plan(&[load(1, 320), load(2, 20)], &v, 0.01, 10).is_empty());
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
    }
}
