//! Consistent hashing of photos onto the cache nodes of a tier: a ring of virtual nodes, so
//! that adding or removing one of N nodes moves about 1/N of the photos.
//!
//! Every node builds the same ring from the same peer list, with hashes fixed here (FNV-1a
//! and the SplitMix64 finaliser), never `std`'s hasher, whose output may change between
//! builds: nodes running different builds must agree on the owner of a photo.

/// Virtual nodes per cache node: enough that each node's share stays within about ±10%.
pub const VNODES: usize = 160;

/// The ring: sorted points, each owned by a node (an index into `nodes`).
#[derive(Clone, Debug)]
pub struct Ring {
    points: Vec<(u64, u32)>,
    nodes: Vec<String>,
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where a photo falls on the ring. All variants and video chunks of a photo share it, so a
/// photo lives on one node.
pub fn photo_point(volume: u32, key: u64) -> u64 {
    mix64(key ^ mix64(volume as u64 ^ 0x9e37_79b9_7f4a_7c15))
}

impl Ring {
    /// A ring over `nodes` (base URLs; a trailing `/` is ignored), `vnodes` points each.
    pub fn new(nodes: &[String], vnodes: usize) -> Ring {
        let nodes: Vec<String> = nodes
            .iter()
            .map(|n| n.trim_end_matches('/').to_string())
            .collect();
        let mut points = Vec::with_capacity(nodes.len() * vnodes);
        for (i, n) in nodes.iter().enumerate() {
            for v in 0..vnodes {
                points.push((mix64(fnv1a(format!("{n}#{v}").as_bytes())), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points, nodes }
    }

    /// Index of the node owning a photo: the first point at or after the photo's.
    pub fn owner(&self, volume: u32, key: u64) -> usize {
        let h = photo_point(volume, key);
        let i = self.points.partition_point(|(p, _)| *p < h);
        self.points[i % self.points.len()].1 as usize
    }

    /// Base URL of node `i`.
    pub fn node(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Index of the node with this base URL.
    pub fn index_of(&self, url: &str) -> Option<usize> {
        let url = url.trim_end_matches('/');
        self.nodes.iter().position(|n| n == url)
    }

    /// Every node's base URL.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:8081")).collect()
    }

    #[test]
    fn adding_a_node_moves_about_one_nth() {
        const KEYS: u64 = 100_000;
        for n in [2usize, 3, 5, 8] {
            let before = Ring::new(&nodes(n), VNODES);
            let after = Ring::new(&nodes(n + 1), VNODES);
            let mut moved = 0u64;
            let mut share = vec![0u64; n + 1];
            for k in 0..KEYS {
                let key = 78_716_483_502_080_000 + k * 4099;
                let (a, b) = (before.owner(7, key), after.owner(7, key));
                share[b] += 1;
                if a != b {
                    moved += 1;
                    // A moved photo moves to the new node, never between old ones.
                    assert_eq!(b, n, "key {key} moved from {a} to old node {b}");
                }
            }
            let frac = moved as f64 / KEYS as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (frac - ideal).abs() < ideal * 0.35,
                "{n}->{}: moved {frac:.3}, ideal {ideal:.3}",
                n + 1
            );
            for (i, s) in share.iter().enumerate() {
                let f = *s as f64 / KEYS as f64;
                assert!(
                    (f - ideal).abs() < ideal * 0.35,
                    "node {i} of {} holds {f:.3} (ideal {ideal:.3})",
                    n + 1
                );
            }
        }
    }

    #[test]
    fn same_ring_everywhere() {
        let a = Ring::new(&nodes(4), VNODES);
        let mut shuffled = nodes(4);
        shuffled.reverse();
        let b = Ring::new(&shuffled, VNODES);
        for k in 0..1000u64 {
            assert_eq!(a.node(a.owner(1, k)), b.node(b.owner(1, k)));
        }
        assert_eq!(a.index_of("http://10.0.0.2:8081/"), Some(2));
        assert_eq!(a.index_of("http://10.0.0.9:8081"), None);
    }

    #[test]
    fn one_node_owns_everything() {
        let r = Ring::new(&nodes(1), VNODES);
        for k in 0..100 {
            assert_eq!(r.owner(3, k), 0);
        }
    }
}
