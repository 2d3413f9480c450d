//! Photo ids: 64-bit, k-sortable, made without a central counter (the directory's generator
//! makes them; every service may read them, e.g. garbage collection reads their age).
//!
//! Layout (most significant first): 1 zero bit, 41 bits of milliseconds since
//! 2024-01-01T00:00:00Z (good until 2093), 10 bits of node id, 12 bits of sequence.
//! [`decode`] and [`encode`] are inverse for every u64 (an id with the top bit set decodes to
//! a time past 2093 and encodes back to itself).

/// 2024-01-01T00:00:00Z in milliseconds since the Unix epoch.
pub const ID_EPOCH_MS: u64 = 1_704_067_200_000;
pub const NODE_BITS: u32 = 10;
pub const SEQ_BITS: u32 = 12;
/// Node ids run from 0 to `MAX_NODE_ID`.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;
/// The largest sequence number within one millisecond of one node.
pub const MAX_SEQ: u16 = (1 << SEQ_BITS) - 1;

/// The parts of an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdParts {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub node: u16,
    pub seq: u16,
}

/// Splits an id into time, node and sequence.
pub fn decode(id: u64) -> IdParts {
    IdParts {
        unix_ms: (id >> (NODE_BITS + SEQ_BITS)) + ID_EPOCH_MS,
        node: ((id >> SEQ_BITS) & u64::from(MAX_NODE_ID)) as u16,
        seq: (id & u64::from(MAX_SEQ)) as u16,
    }
}

/// Puts an id together from its parts. A time before `ID_EPOCH_MS` counts as the epoch; the
/// node and sequence are masked to their widths; bits of time above 42 are dropped.
pub fn encode(p: IdParts) -> u64 {
    let ms = p.unix_ms.saturating_sub(ID_EPOCH_MS);
    (ms << (NODE_BITS + SEQ_BITS))
        | (u64::from(p.node & MAX_NODE_ID) << SEQ_BITS)
        | u64::from(p.seq & MAX_SEQ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_encode_and_decode() {
        let p = IdParts {
            unix_ms: ID_EPOCH_MS + 123_456,
            node: 37,
            seq: 5,
        };
        let id = encode(p);
        assert_eq!(id, (123_456 << 22) | (37 << 12) | 5);
        assert_eq!(decode(id), p);
        assert_eq!(encode(decode(u64::MAX)), u64::MAX);
        assert_eq!(decode(0).unix_ms, ID_EPOCH_MS);
    }
}
