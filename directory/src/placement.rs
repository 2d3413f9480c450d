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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
