//! In-memory needle index of a writable volume, bit-packed to a few bytes per needle.
//!
//! Entries are sorted by `(key, alt)`. The newest `MAX_ENTRIES..=2 * MAX_ENTRIES` of them stay
//! uncompressed in a sorted tail, so appends and slightly late arrivals cost a push or a short
//! move; when the tail is full its oldest `MAX_ENTRIES` entries are compressed into a block.
//! Blocks are found by binary search over a directory of their first `(key, alt)`; a change to
//! an entry in a block decodes the block, edits it and re-encodes it (splitting it in two when
//! it grows past `MAX_ENTRIES`).
//!
//! A block holds consecutive entries in streams of `STREAM_LEN` (in key order: stream `i`
//! has the `i`-th run of `STREAM_LEN` ids). Within a stream the entries are coded in disk
//! order (by offset), where nearly every needle follows on from the one before it even when
//! ids from several uploaders interleave. A lookup hops to its stream and decodes it until
//! it finds the id (a miss decodes the whole stream).
//!
//! A block is a little-endian bit string (bit 0 of byte 0 first): `U(offset / 8)` and the
//! `first id` code of the first stream's first entry (in disk order); if there are several
//! streams, `U(bits)` of the links then, per stream but the last, a link to the next one:
//! its smallest id (key code and `U(alt)`, or `1` + `U(alt delta - 1)` for the same key),
//! `U(zigzag(offset/8 delta))` and `first id` of its first entry, and `U(bits)` of the current
//! stream. Then the streams, back to back. `first id`: `1` if it is the stream's smallest id,
//! `0 1` + `U(alt delta - 1)` for the same key, `0 0` + key code + `U(alt)`. A stream codes
//! each entry as a prediction from the one before it:
//!
//! * 1 bit `has_del` (the entries carry a deleted bit); the first entry's extent and, if
//!   `has_del`, its deleted bit (its id and offset are in the block header or link);
//! * every further entry starts with a kind. The one-bit code `1` is whichever of "next alt"
//!   and "new key" followed the previous entry's variant slot (`alt & 3`) last time (initially
//!   "next alt"), `0 1` is the other one, and `0 0` is "general":
//!   * next alt: same key, `alt = prev.alt + 1`, contiguous (`offset = prev.offset + prev.extent`);
//!   * new key: a disk-order key code follows; `alt = 0`, contiguous;
//!   * general: 1 bit "same key"; if set `U(zigzag(alt - prev.alt) - 1)`, else a disk-order
//!     key code and `U(alt)`; then the offset: `1` contiguous, `0 1` the highest needle end
//!     seen in the stream, `0 0 1` + 3 bits: one of the 8 most recent open ends (where the
//!     expected offset was when an entry did not follow on from the one before it), `0 0 0` +
//!     a Rice code of `zigzag(offset/8 - expected/8)` (`U(z >> j)` then the low `j` bits,
//!     `j = bitlen(sum of the slots' last extents) - 1`, about the size of a photo);
//!
//!   then its extent and, if `has_del`, its deleted bit.
//! * Keys are coded for k-sortable ids `ms << 22 | node << 12 | seq`, but exactly for any key.
//!   A node is coded as `1` (the previous key's), `0 1` + 3 bits (one of the 8 next most
//!   recently seen) or `0 0` + its 10 bits. Disk-order key code (any key other than the
//!   previous one): `1` + `U(zigzag(seq delta - 1))` when the millisecond and node are
//!   unchanged, else `0` + `U(zigzag(ms delta - 1))`, the node and `U(seq)`. Sorted key code
//!   (a greater key, in links): `1` + `U(delta - 1)` when the millisecond and node are
//!   unchanged, else `0 1` + `U(ms delta - 1)` or (same millisecond) `0 0`, then the node and
//!   `U(seq)`.
//! * extent: `v = extent / 8` is predicted from the previous extent `p` of the same variant
//!   slot in the stream: with `k = bitlen(p) - 2`, the quotient `v >> k` is coded as a zigzag
//!   difference to `p >> k` in unary (`z` zero bits then a one), then the low `k` bits of `v`;
//!   12 zero bits escape to `U(v)`, as does a slot without a previous extent.
//! * `U(z)` is a universal code for any `u64`: `L = bitlen(z)` as an Elias gamma code of
//!   `L + 1`, then the `L - 1` bits of `z` below its top bit.
//!
//! Marking an entry deleted sets its bit in place when its stream has deleted bits, and
//! re-encodes the block otherwise. Locations that are not multiples of 8 (which a valid volume
//! never has, but which a corrupt one could hand over) are kept apart in a small sorted list
//! rather than rejected.

use super::Loc;

/// Most entries in one block: bounds the linear decode of a lookup.
const MAX_ENTRIES: usize = 1024;
/// Entries per stream of a block; a lookup skips to its stream and decodes only that.
const STREAM_LEN: usize = 64;
/// Unary length that escapes an unpredicted extent.
const ESC: u32 = 12;
/// Bit position of the millisecond timestamp in a k-sortable id.
const TS_SHIFT: u32 = 22;
/// Bits of the sequence number in a k-sortable id (below the node id).
const SEQ_BITS: u32 = 12;
/// Bits of the node id of a k-sortable id.
const NODE_BITS: u32 = TS_SHIFT - SEQ_BITS;
/// Node id bits of a k-sortable id, in place.
const NODE_MASK: u64 = ((1 << (TS_SHIFT - SEQ_BITS)) - 1) << SEQ_BITS;

/// Length of the recently-seen node list of a key code.
const NODES: usize = 9;

/// The node id of a k-sortable id.
fn node_of(key: u64) -> u16 {
    ((key & NODE_MASK) >> SEQ_BITS) as u16
}

/// Recently seen node ids, most recent (the previous key's) first; `u16::MAX` is empty.
#[derive(Clone, Copy)]
struct Nodes([u16; NODES]);

impl Nodes {
    fn new(key: u64) -> Self {
        let mut nodes = [u16::MAX; NODES];
        nodes[0] = node_of(key);
        Nodes(nodes)
    }

    /// Moves `node`, found at `i` (or new, with `i = NODES - 1`), to the front.
    #[inline(always)]
    fn touch(&mut self, i: usize, node: u16) {
        let i = i.min(NODES - 1);
        self.0.copy_within(0..i, 1);
        self.0[0] = node;
    }
}

/// One decoded entry, offset and extent in units of 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    key: u64,
    alt: u32,
    off8: u64,
    ext8: u32,
    del: bool,
}

impl Entry {
    /// `None` when `loc.offset` or `loc.extent` is not a multiple of 8.
    fn new(key: u64, alt: u32, loc: Loc) -> Option<Self> {
        (loc.offset.is_multiple_of(8) && loc.extent.is_multiple_of(8)).then_some(Entry {
            key,
            alt,
            off8: loc.offset >> 3,
            ext8: loc.extent >> 3,
            del: loc.deleted,
        })
    }

    fn id(&self) -> (u64, u32) {
        (self.key, self.alt)
    }

    fn loc(&self) -> Loc {
        Loc {
            offset: self.off8 << 3,
            extent: self.ext8 << 3,
            deleted: self.del,
        }
    }
}

#[inline]
fn mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

#[inline]
fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

#[inline]
fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// Appends bits to a byte vector, least significant bit first.
#[derive(Default)]
struct BitWriter {
    buf: Vec<u8>,
    /// Bits not yet in `buf`: the low `nacc` (< 32) bits.
    acc: u64,
    nacc: u32,
}

impl BitWriter {
    /// Writes the low `n` bits of `v`, `n <= 32`.
    #[inline]
    fn put(&mut self, v: u64, n: u32) {
        debug_assert!(n <= 32);
        self.acc |= (v & mask(n)) << self.nacc;
        self.nacc += n;
        if self.nacc >= 32 {
            self.buf.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.nacc -= 32;
        }
    }

    /// Bits written.
    fn bits(&self) -> usize {
        self.buf.len() * 8 + self.nacc as usize
    }

    /// The bytes written, the last one padded with zero bits.
    fn finish(mut self) -> Vec<u8> {
        let n = self.nacc.div_ceil(8) as usize;
        self.buf.extend_from_slice(&self.acc.to_le_bytes()[..n]);
        self.buf
    }

    /// Appends the bits of `other`.
    fn append(&mut self, other: &BitWriter) {
        for &b in &other.buf {
            self.put(u64::from(b), 8);
        }
        self.put(other.acc, other.nacc);
    }

    /// Writes the low `n` bits of `v`, `n <= 64`.
    fn put_long(&mut self, v: u64, n: u32) {
        if n > 32 {
            self.put(v, 32);
            self.put(v >> 32, n - 32);
        } else {
            self.put(v, n);
        }
    }

    /// `U(z)`: Elias gamma code of `bitlen(z) + 1`, then the bits of `z` below its top bit.
    fn put_u(&mut self, z: u64) {
        let l = 64 - z.leading_zeros();
        let g = u64::from(l + 1);
        let nz = 63 - g.leading_zeros();
        self.put((1u64 << nz) | ((g & mask(nz)) << (nz + 1)), 2 * nz + 1);
        if l >= 2 {
            self.put_long(z, l - 1);
        }
    }

    /// Key code for `key > prev` (see the module documentation).
    fn put_key(&mut self, prev: u64, key: u64, nodes: &mut Nodes) {
        let (pt, nt) = (prev >> TS_SHIFT, key >> TS_SHIFT);
        if pt == nt && prev & NODE_MASK == key & NODE_MASK {
            self.put(1, 1);
            self.put_u(key.wrapping_sub(prev).wrapping_sub(1));
            return;
        }
        if pt == nt {
            self.put(0b00, 2);
        } else {
            self.put(0b10, 2);
            self.put_u(nt.wrapping_sub(pt).wrapping_sub(1));
        }
        self.put_node(key, nodes);
        self.put_u(key & mask(SEQ_BITS));
    }

    /// The node id of `key`, as an index in `nodes` (see the module documentation).
    fn put_node(&mut self, key: u64, nodes: &mut Nodes) {
        let node = node_of(key);
        match nodes.0.iter().position(|&n| n == node) {
            Some(0) => self.put(1, 1),
            Some(i) => {
                self.put(0b10, 2);
                self.put(i as u64 - 1, 3);
                nodes.touch(i, node);
            }
            None => {
                self.put(0b00, 2);
                self.put(u64::from(node), NODE_BITS);
                nodes.touch(NODES - 1, node);
            }
        }
    }

    /// Key code for any `key != prev` (entries in disk order; see the module documentation).
    fn put_key_any(&mut self, prev: u64, key: u64, nodes: &mut Nodes) {
        let (pt, nt) = (prev >> TS_SHIFT, key >> TS_SHIFT);
        let (ps, ns) = (prev & mask(SEQ_BITS), key & mask(SEQ_BITS));
        if pt == nt && prev & NODE_MASK == key & NODE_MASK {
            // The next sequence number is the usual case: code `delta - 1`.
            self.put(1, 1);
            self.put_u(zigzag(ns as i64 - ps as i64 - 1));
            return;
        }
        // Likewise the next millisecond.
        self.put(0, 1);
        self.put_u(zigzag((nt.wrapping_sub(pt) as i64).wrapping_sub(1)));
        self.put_node(key, nodes);
        self.put_u(ns);
    }

    /// A stream's first entry in disk order, from the stream's smallest id `route`.
    fn put_first(&mut self, route: (u64, u32), first: (u64, u32)) {
        if first == route {
            self.put(1, 1);
        } else if first.0 == route.0 {
            self.put(0b10, 2);
            self.put_u(
                u64::from(first.1)
                    .wrapping_sub(u64::from(route.1))
                    .wrapping_sub(1),
            );
        } else {
            self.put(0b00, 2);
            self.put_key(route.0, first.0, &mut Nodes::new(route.0));
            self.put_u(u64::from(first.1));
        }
    }

    /// Extent `v` (in units of 8) predicted from `slot`, which becomes `v`.
    fn put_ext(&mut self, slot: &mut u32, v: u32) {
        let p = *slot;
        *slot = v;
        if p == 0 {
            self.put_u(u64::from(v));
            return;
        }
        let k = (32 - p.leading_zeros()).saturating_sub(2);
        let z = zigzag(i64::from(v >> k) - i64::from(p >> k));
        if z < u64::from(ESC) {
            self.put(1 << z, z as u32 + 1);
            self.put(u64::from(v), k);
        } else {
            self.put(0, ESC);
            self.put_u(u64::from(v));
        }
    }
}

/// Reads bits written by [`BitWriter`]; past the end it reads zeros, never panics.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// The next 57 or more bits, least significant first.
    #[inline(always)]
    fn peek(&self) -> u64 {
        let idx = self.pos >> 3;
        let mut b = [0u8; 8];
        if let Some(c) = self.data.get(idx..idx + 8) {
            b.copy_from_slice(c);
        } else if let Some(rest) = self.data.get(idx..) {
            let n = rest.len().min(8);
            b[..n].copy_from_slice(&rest[..n]);
        }
        u64::from_le_bytes(b) >> (self.pos & 7)
    }

    /// Reads `n <= 56` bits.
    #[inline(always)]
    fn get(&mut self, n: u32) -> u64 {
        let v = self.peek() & mask(n);
        self.pos += n as usize;
        v
    }

    /// Reads `n <= 64` bits.
    #[inline(always)]
    fn get_long(&mut self, n: u32) -> u64 {
        if n > 32 {
            let lo = self.get(32);
            lo | (self.get(n - 32) << 32)
        } else {
            self.get(n)
        }
    }

    #[inline(always)]
    fn get_u(&mut self) -> u64 {
        let p = self.peek();
        let nz = p.trailing_zeros().min(6);
        let g = (1u64 << nz) | ((p >> (nz + 1)) & mask(nz));
        self.pos += (2 * nz + 1) as usize;
        let l = (g - 1).min(64) as u32;
        if l <= 1 {
            u64::from(l)
        } else {
            (1u64 << (l - 1)) | self.get_long(l - 1)
        }
    }

    #[inline(always)]
    fn get_key(&mut self, prev: u64, nodes: &mut Nodes) -> u64 {
        let p = self.peek();
        if p & 1 == 1 {
            self.pos += 1;
            return prev.wrapping_add(self.get_u()).wrapping_add(1);
        }
        self.pos += 2;
        let mut nt = prev >> TS_SHIFT;
        if p & 2 != 0 {
            nt = nt.wrapping_add(self.get_u()).wrapping_add(1);
        }
        let node = self.get_node(nodes);
        let seq = self.get_u() & mask(SEQ_BITS);
        (nt << TS_SHIFT) | ((u64::from(node) << SEQ_BITS) & NODE_MASK) | seq
    }

    #[inline(always)]
    fn get_node(&mut self, nodes: &mut Nodes) -> u16 {
        let p = self.peek();
        let (i, node) = if p & 1 == 1 {
            self.pos += 1;
            (0, nodes.0[0])
        } else if p & 2 != 0 {
            let i = ((p >> 2) & 7) as usize + 1;
            self.pos += 5;
            (i, nodes.0[i.min(NODES - 1)])
        } else {
            self.pos += 2;
            (NODES - 1, self.get(NODE_BITS) as u16)
        };
        nodes.touch(i, node);
        node
    }

    #[inline(always)]
    fn get_key_any(&mut self, prev: u64, nodes: &mut Nodes) -> u64 {
        let seq_mask = mask(SEQ_BITS);
        if self.get(1) == 1 {
            let d = unzigzag(self.get_u()).wrapping_add(1);
            let seq = ((prev & seq_mask) as i64).wrapping_add(d) as u64 & seq_mask;
            return (prev & !seq_mask) | seq;
        }
        let d = unzigzag(self.get_u()).wrapping_add(1);
        let nt = (prev >> TS_SHIFT).wrapping_add(d as u64);
        let node = self.get_node(nodes);
        let seq = self.get_u() & seq_mask;
        (nt << TS_SHIFT) | ((u64::from(node) << SEQ_BITS) & NODE_MASK) | seq
    }

    fn get_first(&mut self, route: (u64, u32)) -> (u64, u32) {
        let p = self.peek();
        if p & 1 == 1 {
            self.pos += 1;
            route
        } else if p & 2 != 0 {
            self.pos += 2;
            let d = self.get_u() as u32;
            (route.0, route.1.wrapping_add(d).wrapping_add(1))
        } else {
            self.pos += 2;
            let key = self.get_key(route.0, &mut Nodes::new(route.0));
            (key, self.get_u() as u32)
        }
    }

    #[inline(always)]
    fn get_ext(&mut self, slot: &mut u32) -> u32 {
        let p = *slot;
        let v = if p == 0 {
            self.get_u() as u32
        } else {
            let z = self.peek().trailing_zeros();
            if z >= ESC {
                self.pos += ESC as usize;
                self.get_u() as u32
            } else {
                self.pos += z as usize + 1;
                let k = (32 - p.leading_zeros()).saturating_sub(2);
                let q = i64::from(p >> k).wrapping_add(unzigzag(u64::from(z)));
                (((q as u64) << k) | self.get(k)) as u32
            }
        };
        *slot = v;
        v
    }
}

/// Prediction state shared by the encoder and the decoder of a block.
#[derive(Clone, Copy)]
struct State {
    prev: Entry,
    /// Last extent per variant slot (`alt & 3`), 0 when none yet.
    slots: [u32; 4],
    /// Per slot of the previous entry: whether a new key followed it last time.
    new_key_after: [bool; 4],
    /// Highest needle end seen (units of 8).
    high: u64,
    /// Open ends, most recent first: where the expected offset was when an entry did not
    /// follow on from the one before it (the start of a gap that a later entry may fill);
    /// `u64::MAX` is empty.
    ends: [u64; ENDS],
    /// Recently seen node ids, for key codes.
    nodes: Nodes,
}

/// Entry kinds (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Same key, next alt, contiguous.
    NextAlt,
    /// Next key, alt 0, contiguous.
    NewKey,
    General,
}

/// How the offset of a [`Kind::General`] entry is predicted.
const OFF_CONTIGUOUS: u64 = 0b1;
const OFF_HIGH: u64 = 0b10;
const OFF_END: u64 = 0b100;
const OFF_DELTA: u64 = 0b000;
/// Open ends remembered for offset prediction.
const ENDS: usize = 8;

impl State {
    fn new(first: Entry) -> Self {
        State {
            prev: first,
            slots: [0; 4],
            new_key_after: [false; 4],
            high: first.off8.wrapping_add(u64::from(first.ext8)),
            ends: [u64::MAX; ENDS],
            nodes: Nodes::new(first.key),
        }
    }

    /// The expected offset of the next entry: right after the previous one.
    #[inline(always)]
    fn expected(&self) -> u64 {
        self.prev.off8.wrapping_add(u64::from(self.prev.ext8))
    }

    /// Whether a one-bit kind means [`Kind::NewKey`] (else [`Kind::NextAlt`]).
    #[inline(always)]
    fn new_key_first(&self) -> bool {
        self.new_key_after[(self.prev.alt & 3) as usize]
    }

    /// Bits below the Rice quotient of an offset jump: about the size of one photo (the last
    /// extent of each variant slot).
    #[inline(always)]
    fn jump_bits(&self) -> u32 {
        let photo: u64 = self.slots.iter().map(|&x| u64::from(x)).sum();
        (64 - photo.leading_zeros()).saturating_sub(1)
    }

    /// Moves on to `e` (its extent is already in `slots`).
    #[inline(always)]
    fn advance(&mut self, e: Entry) {
        let expected = self.expected();
        if e.off8 != expected {
            // `e` may fill an open end, and the previous entry's end is now open.
            if let Some(i) = self.ends.iter().position(|&x| x == e.off8) {
                self.ends.copy_within(i + 1.., i);
                self.ends[ENDS - 1] = u64::MAX;
            }
            let i = self
                .ends
                .iter()
                .position(|&x| x == expected)
                .unwrap_or(ENDS - 1);
            self.ends.copy_within(0..i, 1);
            self.ends[0] = expected;
        }
        let end = e.off8.wrapping_add(u64::from(e.ext8));
        if end > self.high {
            self.high = end;
        }
        self.new_key_after[(self.prev.alt & 3) as usize] = e.key != self.prev.key;
        self.prev = e;
    }
}

/// Encodes sorted entries into a block.
struct Encoder {
    w: BitWriter,
    has_del: bool,
    s: State,
}

impl Encoder {
    /// Starts a block with `first`.
    fn new(first: Entry, has_del: bool) -> Self {
        let mut w = BitWriter::default();
        let mut s = State::new(first);
        w.put(u64::from(has_del), 1);
        w.put_ext(&mut s.slots[(first.alt & 3) as usize], first.ext8);
        if has_del {
            w.put(u64::from(first.del), 1);
        }
        Encoder { w, has_del, s }
    }

    /// Appends `e`, which must sort after the last entry (and not be deleted unless `has_del`).
    fn push(&mut self, e: Entry) {
        let p = self.s.prev;
        debug_assert!(e.id() != p.id());
        debug_assert!(self.has_del || !e.del);
        let w = &mut self.w;
        let expected = self.s.expected();
        let contiguous = e.off8 == expected;
        let kind = if contiguous && e.key == p.key && p.alt != u32::MAX && e.alt == p.alt + 1 {
            Kind::NextAlt
        } else if contiguous && e.key != p.key && e.alt == 0 {
            Kind::NewKey
        } else {
            Kind::General
        };
        match kind {
            Kind::General => w.put(0b00, 2),
            k if (k == Kind::NewKey) == self.s.new_key_first() => w.put(1, 1),
            _ => w.put(0b10, 2),
        }
        match kind {
            Kind::NextAlt => {}
            Kind::NewKey => w.put_key_any(p.key, e.key, &mut self.s.nodes),
            Kind::General => {
                if e.key == p.key {
                    w.put(1, 1);
                    w.put_u(zigzag(i64::from(e.alt) - i64::from(p.alt)).wrapping_sub(1));
                } else {
                    w.put(0, 1);
                    w.put_key_any(p.key, e.key, &mut self.s.nodes);
                    w.put_u(u64::from(e.alt));
                }
                if contiguous {
                    w.put(OFF_CONTIGUOUS, 1);
                } else if e.off8 == self.s.high {
                    w.put(OFF_HIGH, 2);
                } else if let Some(i) = self.s.ends.iter().position(|&x| x == e.off8) {
                    w.put(OFF_END, 3);
                    w.put(i as u64, 3);
                } else {
                    w.put(OFF_DELTA, 3);
                    let z = zigzag(e.off8.wrapping_sub(expected) as i64);
                    let k = self.s.jump_bits();
                    w.put_u(z >> k);
                    w.put_long(z, k);
                }
            }
        }
        w.put_ext(&mut self.s.slots[(e.alt & 3) as usize], e.ext8);
        if self.has_del {
            w.put(u64::from(e.del), 1);
        }
        self.s.advance(e);
    }
}

/// A compressed block of the directory.
struct Block {
    key: u64,
    alt: u32,
    n: u32,
    data: Box<[u8]>,
}

impl Block {
    /// Decodes the entries in the order they are stored (by offset within each stream).
    fn decoder(&self, stream_len: usize) -> Decoder<'_> {
        Decoder::new(
            &self.data,
            (self.key, self.alt),
            self.n as usize,
            stream_len,
        )
    }

    /// The entries sorted by (key, alt).
    fn entries(&self, stream_len: usize) -> Vec<Entry> {
        let mut v: Vec<Entry> = self.decoder(stream_len).collect();
        v.sort_unstable_by_key(Entry::id);
        v
    }

    /// Encodes entries sorted by (key, alt) in streams of `stream_len`; `None` when there
    /// are none.
    fn encode(entries: &[Entry], stream_len: usize) -> Option<Block> {
        let route = entries.first()?.id();
        // Each stream is coded in disk order, where offsets follow on from each other.
        let streams: Vec<Vec<Entry>> = entries
            .chunks(stream_len.max(1))
            .map(|c| {
                let mut v = c.to_vec();
                v.sort_unstable_by_key(|e| (e.off8, e.key, e.alt));
                v
            })
            .collect();
        let first = streams[0][0];
        let mut w = BitWriter::default();
        w.put_u(first.off8);
        w.put_first(route, first.id());
        let bodies: Vec<BitWriter> = streams.iter().map(|s| Self::encode_stream(s)).collect();
        if streams.len() > 1 {
            // Links to the streams after the first, so that a lookup can skip to its stream.
            let mut links = BitWriter::default();
            let routes: Vec<(u64, u32)> = entries
                .chunks(stream_len.max(1))
                .map(|c| c[0].id())
                .collect();
            for i in 0..streams.len() - 1 {
                let (cur, next) = (routes[i], routes[i + 1]);
                if next.0 == cur.0 {
                    links.put(1, 1);
                    links.put_u(
                        u64::from(next.1)
                            .wrapping_sub(u64::from(cur.1))
                            .wrapping_sub(1),
                    );
                } else {
                    links.put(0, 1);
                    links.put_key(cur.0, next.0, &mut Nodes::new(cur.0));
                    links.put_u(u64::from(next.1));
                }
                let (cur_first, next_first) = (streams[i][0], streams[i + 1][0]);
                links.put_u(zigzag(next_first.off8.wrapping_sub(cur_first.off8) as i64));
                links.put_first(next, next_first.id());
                links.put_u(bodies[i].bits() as u64);
            }
            w.put_u(links.bits() as u64);
            w.append(&links);
        }
        for body in &bodies {
            w.append(body);
        }
        Some(Block {
            key: route.0,
            alt: route.1,
            n: entries.len() as u32,
            data: w.finish().into_boxed_slice(),
        })
    }

    /// One stream of entries, with its first id and offset left out.
    fn encode_stream(entries: &[Entry]) -> BitWriter {
        let Some((&first, rest)) = entries.split_first() else {
            return BitWriter::default();
        };
        let mut enc = Encoder::new(first, entries.iter().any(|e| e.del));
        for e in rest {
            enc.push(*e);
        }
        enc.w
    }
}

/// Decodes a block's entries, stream after stream, each in disk order.
struct Decoder<'a> {
    r: BitReader<'a>,
    /// Bit position of the next unread stream link.
    link_pos: usize,
    has_del: bool,
    stream_len: usize,
    /// Bit position where the current stream starts.
    start: usize,
    /// Smallest id of the current stream.
    route: (u64, u32),
    /// Key, alt and offset of the first entry (in disk order) of the current stream.
    first: Entry,
    /// `None` before the first entry of the current stream.
    s: Option<State>,
    /// Entries left in the current stream.
    left: usize,
    /// Entries in the later streams.
    rest: usize,
    /// The next stream's smallest id and first entry, and the current stream's length in bits.
    next: Option<((u64, u32), Entry, usize)>,
    /// Bit position of the deleted bit of the last entry returned (when `has_del`).
    del_pos: usize,
}

impl<'a> Decoder<'a> {
    fn new(data: &'a [u8], route: (u64, u32), n: usize, stream_len: usize) -> Self {
        let mut r = BitReader { data, pos: 0 };
        let stream_len = stream_len.max(1);
        let off8 = r.get_u();
        let (key, alt) = r.get_first(route);
        let first = Entry {
            key,
            alt,
            off8,
            ext8: 0,
            del: false,
        };
        let mut link_pos = r.pos;
        if n > stream_len {
            let links = usize::try_from(r.get_u()).unwrap_or(usize::MAX);
            link_pos = r.pos;
            r.pos = r.pos.saturating_add(links).min(data.len() * 8);
        }
        let mut d = Decoder {
            start: r.pos,
            r,
            link_pos,
            has_del: false,
            stream_len,
            route,
            first,
            s: None,
            left: 0,
            rest: n,
            next: None,
            del_pos: 0,
        };
        d.open_stream();
        d
    }

    /// Starts the stream at `self.start`, whose first entry is `self.first`.
    fn open_stream(&mut self) {
        let n = self.rest.min(self.stream_len);
        self.rest -= n;
        self.left = n;
        self.s = None;
        self.next = None;
        if self.rest > 0 {
            let (f, cur) = (self.first, self.route);
            let r = &mut BitReader {
                data: self.r.data,
                pos: self.link_pos,
            };
            let route = if r.get(1) == 1 {
                let d = r.get_u() as u32;
                (cur.0, cur.1.wrapping_add(d).wrapping_add(1))
            } else {
                let key = r.get_key(cur.0, &mut Nodes::new(cur.0));
                (key, r.get_u() as u32)
            };
            let off8 = f.off8.wrapping_add(unzigzag(r.get_u()) as u64);
            let (key, alt) = r.get_first(route);
            // Never past the end, so that positions cannot overflow.
            let len = usize::try_from(r.get_u())
                .unwrap_or(usize::MAX)
                .min(r.data.len() * 8);
            self.link_pos = r.pos;
            let first = Entry {
                key,
                alt,
                off8,
                ext8: 0,
                del: false,
            };
            self.next = Some((route, first, len));
        }
    }

    /// Moves on to the next stream; false when there is none.
    fn next_stream(&mut self) -> bool {
        let Some((route, first, len)) = self.next.take() else {
            return false;
        };
        self.start = self.start.saturating_add(len).min(self.r.data.len() * 8);
        self.r.pos = self.start;
        self.route = route;
        self.first = first;
        self.open_stream();
        true
    }

    /// Finds `id`; returns the entry and its deleted bit's position when it has one.
    fn find(mut self, id: (u64, u32)) -> Option<(Entry, Option<usize>)> {
        while self.next.is_some_and(|(route, _, _)| id >= route) {
            self.next_stream();
        }
        // The stream is in disk order: look at all of it.
        while self.left > 0 {
            let e = self.next()?;
            if e.id() == id {
                return Some((e, self.has_del.then_some(self.del_pos)));
            }
        }
        None
    }

    #[inline(always)]
    fn first_entry(&mut self) -> Entry {
        let r = &mut self.r;
        self.has_del = r.get(1) == 1;
        let mut slots = [0; 4];
        let ext8 = r.get_ext(&mut slots[(self.first.alt & 3) as usize]);
        let e = Entry { ext8, ..self.first };
        let mut s = State::new(e);
        s.slots = slots;
        self.s = Some(s);
        e
    }
}

impl Iterator for Decoder<'_> {
    type Item = Entry;

    #[inline(always)]
    fn next(&mut self) -> Option<Entry> {
        if self.left == 0 && !self.next_stream() {
            return None;
        }
        self.left -= 1;
        let mut e = match &mut self.s {
            None => self.first_entry(),
            Some(s) => {
                let r = &mut self.r;
                let p = s.prev;
                let expected = s.expected();
                let bits = r.peek();
                let kind = if bits & 1 == 1 {
                    r.pos += 1;
                    if s.new_key_first() {
                        Kind::NewKey
                    } else {
                        Kind::NextAlt
                    }
                } else {
                    r.pos += 2;
                    match (bits & 2 != 0, s.new_key_first()) {
                        (false, _) => Kind::General,
                        (true, true) => Kind::NextAlt,
                        (true, false) => Kind::NewKey,
                    }
                };
                let (key, alt, off8) = match kind {
                    Kind::NextAlt => (p.key, p.alt.wrapping_add(1), expected),
                    Kind::NewKey => (r.get_key_any(p.key, &mut s.nodes), 0, expected),
                    Kind::General => {
                        let (key, alt) = if r.get(1) == 1 {
                            let d = unzigzag(r.get_u().wrapping_add(1));
                            (p.key, i64::from(p.alt).wrapping_add(d) as u32)
                        } else {
                            let key = r.get_key_any(p.key, &mut s.nodes);
                            (key, r.get_u() as u32)
                        };
                        let code = r.peek();
                        let off8 = if code & OFF_CONTIGUOUS != 0 {
                            r.pos += 1;
                            expected
                        } else if code & OFF_HIGH != 0 {
                            r.pos += 2;
                            s.high
                        } else if code & OFF_END != 0 {
                            r.pos += 6;
                            s.ends[((code >> 3) & 7) as usize]
                        } else {
                            r.pos += 3;
                            let k = s.jump_bits();
                            let z = (r.get_u() << k) | r.get_long(k);
                            expected.wrapping_add(unzigzag(z) as u64)
                        };
                        (key, alt, off8)
                    }
                };
                let ext8 = r.get_ext(&mut s.slots[(alt & 3) as usize]);
                let e = Entry {
                    key,
                    alt,
                    off8,
                    ext8,
                    del: false,
                };
                s.advance(e);
                e
            }
        };
        if self.has_del {
            self.del_pos = self.r.pos;
            e.del = self.r.get(1) == 1;
            if let Some(s) = &mut self.s {
                s.prev.del = e.del;
            }
        }
        Some(e)
    }
}

/// Which part of the index holds (or would hold) an id.
#[derive(Clone, Copy)]
enum Where {
    Block(usize),
    Tail,
}

/// The needle index of a writable volume: `(key, alt) -> Loc`, a few bytes per entry.
///
/// The newest entries (the last `max_entries..=2 * max_entries`) stay uncompressed in a sorted
/// tail, so that appends and slightly late arrivals are cheap; older ones are in compressed
/// blocks. Invariants: blocks are non-empty, sorted, disjoint and all before the tail; the
/// tail is empty only when the index is.
pub struct MemIndex {
    blocks: Vec<Block>,
    /// `blocks[i].key`, kept apart so that the binary search touches less memory.
    keys: Vec<u64>,
    tail: Vec<Entry>,
    /// Entries in `blocks` and `tail`.
    len: usize,
    /// Entries whose offset or extent is not a multiple of 8, sorted (normally none).
    odd: Vec<(u64, u32, Loc)>,
    /// Block size limit; `MAX_ENTRIES` except in tests.
    max_entries: usize,
    /// Entries per stream of a block; `STREAM_LEN` except in tests.
    stream_len: usize,
    /// New entries whose ids fall inside compressed blocks, sorted. They are merged into
    /// their blocks in bulk once there are `2 * max_entries` of them: one re-encode per
    /// block per merge instead of one per insert (ids from several uploaders, or keys that
    /// are not time-ordered, would otherwise re-encode a block on every write).
    pending: Vec<Entry>,
}

impl Default for MemIndex {
    fn default() -> Self {
        MemIndex {
            blocks: Vec::new(),
            keys: Vec::new(),
            tail: Vec::new(),
            len: 0,
            odd: Vec::new(),
            max_entries: MAX_ENTRIES,
            stream_len: STREAM_LEN,
            pending: Vec::new(),
        }
    }
}

impl MemIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds from entries sorted by (key, alt) ascending with no duplicate (key, alt).
    ///
    /// Entries out of order are still accepted (through the general insert), and of
    /// duplicates the last wins.
    pub fn from_sorted(entries: impl IntoIterator<Item = (u64, u32, Loc)>) -> Self {
        let mut index = Self::new();
        let entries = entries.into_iter();
        let blocks = entries.size_hint().0 / MAX_ENTRIES + 1;
        index.blocks.reserve_exact(blocks);
        index.keys.reserve_exact(blocks);
        for (key, alt, loc) in entries {
            index.insert(key, alt, loc);
        }
        index
    }

    fn locate(&self, id: (u64, u32)) -> Where {
        if self.tail.first().is_some_and(|f| id >= f.id()) {
            return Where::Tail;
        }
        // The first block whose key is greater, then back over blocks that start with the
        // same key at a greater alt.
        let mut i = self.keys.partition_point(|&k| k <= id.0);
        while i > 0
            && self.keys[i - 1] == id.0
            && self.blocks.get(i - 1).is_some_and(|b| b.alt > id.1)
        {
            i -= 1;
        }
        match i {
            0 if self.blocks.is_empty() => Where::Tail,
            0 => Where::Block(0),
            i => Where::Block(i - 1),
        }
    }

    pub fn get(&self, key: u64, alt: u32) -> Option<Loc> {
        if let Some(i) = self.find_odd((key, alt)) {
            return self.odd.get(i).map(|o| o.2);
        }
        self.get_packed(key, alt)
    }

    /// Inserts or replaces; returns the previous Loc.
    ///
    /// Locations whose offset or extent is not a multiple of 8 (which a valid volume never
    /// has) are kept apart, uncompressed.
    pub fn insert(&mut self, key: u64, alt: u32, loc: Loc) -> Option<Loc> {
        let Some(e) = Entry::new(key, alt, loc) else {
            let old = self.remove_packed(key, alt);
            return match self.odd.binary_search_by_key(&(key, alt), |o| (o.0, o.1)) {
                Ok(i) => Some(std::mem::replace(&mut self.odd[i], (key, alt, loc)).2),
                Err(i) => {
                    self.odd.insert(i, (key, alt, loc));
                    old
                }
            };
        };
        if let Some(i) = self.find_odd((key, alt)) {
            let old = self.odd.remove(i).2;
            self.insert_packed(e);
            return Some(old);
        }
        self.insert_packed(e)
    }

    /// Sets the deleted flag; returns the Loc as it was before, None when absent.
    pub fn mark_deleted(&mut self, key: u64, alt: u32) -> Option<Loc> {
        if let Some(i) = self.find_odd((key, alt)) {
            let o = self.odd.get_mut(i)?;
            let old = o.2;
            o.2.deleted = true;
            return Some(old);
        }
        self.mark_deleted_packed(key, alt)
    }

    pub fn remove(&mut self, key: u64, alt: u32) -> Option<Loc> {
        if let Some(i) = self.find_odd((key, alt)) {
            return Some(self.odd.remove(i).2);
        }
        self.remove_packed(key, alt)
    }

    /// Position of `id` among the entries kept apart.
    #[inline]
    fn find_odd(&self, id: (u64, u32)) -> Option<usize> {
        if self.odd.is_empty() {
            return None;
        }
        self.odd.binary_search_by_key(&id, |o| (o.0, o.1)).ok()
    }

    fn get_packed(&self, key: u64, alt: u32) -> Option<Loc> {
        let id = (key, alt);
        if let Some(j) = self.find_pending(id) {
            return self.pending.get(j).map(Entry::loc);
        }
        match self.locate(id) {
            Where::Tail => {
                let i = self.tail.binary_search_by_key(&id, Entry::id).ok()?;
                self.tail.get(i).map(Entry::loc)
            }
            Where::Block(i) => Some(
                self.blocks
                    .get(i)?
                    .decoder(self.stream_len)
                    .find(id)?
                    .0
                    .loc(),
            ),
        }
    }

    /// Position of `id` in `pending`.
    #[inline]
    fn find_pending(&self, id: (u64, u32)) -> Option<usize> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending.binary_search_by_key(&id, Entry::id).ok()
    }

    fn insert_packed(&mut self, e: Entry) -> Option<Loc> {
        if let Some(j) = self.find_pending(e.id()) {
            return Some(std::mem::replace(&mut self.pending[j], e).loc());
        }
        if self.tail.last().is_some_and(|l| e.id() > l.id()) {
            // The common case: an append.
            self.reserve_tail();
            self.tail.push(e);
            self.len += 1;
            self.freeze();
            return None;
        }
        let insert = |v: &mut Vec<Entry>| match v.binary_search_by_key(&e.id(), Entry::id) {
            Ok(i) => Some(std::mem::replace(&mut v[i], e).loc()),
            Err(i) => {
                v.insert(i, e);
                None
            }
        };
        match self.locate(e.id()) {
            Where::Tail => {
                self.reserve_tail();
                let old = insert(&mut self.tail);
                if old.is_none() {
                    self.len += 1;
                    self.freeze();
                }
                old
            }
            Where::Block(i) => {
                let exists = self
                    .blocks
                    .get(i)
                    .and_then(|b| b.decoder(self.stream_len).find(e.id()))
                    .is_some();
                if exists {
                    // A rewrite of an id already in the block: rare, edit the block.
                    return self.modify(i, |v| (insert(v), true));
                }
                let j = self.pending.partition_point(|p| p.id() < e.id());
                self.pending.insert(j, e);
                self.len += 1;
                if self.pending.len() >= 2 * self.max_entries {
                    self.merge_pending();
                }
                None
            }
        }
    }

    /// Merges `pending` into the blocks (and the tail, for ids that fall there by now).
    fn merge_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut groups: Vec<(usize, Vec<Entry>)> = Vec::new();
        let mut to_tail = false;
        for e in pending {
            match self.locate(e.id()) {
                Where::Tail => {
                    let j = self.tail.partition_point(|t| t.id() < e.id());
                    self.reserve_tail();
                    self.tail.insert(j, e);
                    to_tail = true;
                }
                Where::Block(i) => match groups.last_mut() {
                    Some((k, v)) if *k == i => v.push(e),
                    _ => groups.push((i, vec![e])),
                },
            }
        }
        // Highest block first, so that splitting one does not move those still to do.
        for (i, add) in groups.into_iter().rev() {
            let Some(block) = self.blocks.get(i) else {
                continue;
            };
            let old = block.entries(self.stream_len);
            let mut merged = Vec::with_capacity(old.len() + add.len());
            let (mut a, mut b) = (old.into_iter().peekable(), add.into_iter().peekable());
            loop {
                let take_a = match (a.peek(), b.peek()) {
                    (None, None) => break,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (Some(x), Some(y)) => x.id() < y.id(),
                };
                merged.extend(if take_a { a.next() } else { b.next() });
            }
            let new: Vec<Block> = merged
                .chunks(self.max_entries)
                .filter_map(|c| Block::encode(c, self.stream_len))
                .collect();
            let keys: Vec<u64> = new.iter().map(|b| b.key).collect();
            self.blocks.splice(i..=i, new);
            self.keys.splice(i..=i, keys);
        }
        if to_tail {
            self.freeze();
        }
    }

    fn mark_deleted_packed(&mut self, key: u64, alt: u32) -> Option<Loc> {
        let id = (key, alt);
        if let Some(j) = self.find_pending(id) {
            let e = self.pending.get_mut(j)?;
            let old = e.loc();
            e.del = true;
            return Some(old);
        }
        let i = match self.locate(id) {
            Where::Tail => {
                let i = self.tail.binary_search_by_key(&id, Entry::id).ok()?;
                let e = self.tail.get_mut(i)?;
                let old = e.loc();
                e.del = true;
                return Some(old);
            }
            Where::Block(i) => i,
        };
        let block = self.blocks.get_mut(i)?;
        let (e, del_pos) = block.decoder(self.stream_len).find(id)?;
        if e.del {
            return Some(e.loc());
        }
        if let Some(pos) = del_pos {
            // The block already carries deleted bits: set this one in place.
            if let Some(b) = block.data.get_mut(pos >> 3) {
                *b |= 1 << (pos & 7);
            }
        } else {
            self.modify(i, |v| {
                if let Ok(j) = v.binary_search_by_key(&id, Entry::id) {
                    v[j].del = true;
                }
                ((), true)
            });
        }
        Some(e.loc())
    }

    fn remove_packed(&mut self, key: u64, alt: u32) -> Option<Loc> {
        let id = (key, alt);
        if let Some(j) = self.find_pending(id) {
            self.len -= 1;
            return Some(self.pending.remove(j).loc());
        }
        match self.locate(id) {
            Where::Tail => {
                let i = self.tail.binary_search_by_key(&id, Entry::id).ok()?;
                let old = self.tail.remove(i).loc();
                self.len -= 1;
                if self.tail.is_empty() {
                    // Keep "empty tail => empty index": reopen the last block.
                    self.keys.pop();
                    if let Some(b) = self.blocks.pop() {
                        self.tail.extend(b.entries(self.stream_len));
                    }
                }
                Some(old)
            }
            Where::Block(i) => self.modify(i, |v| match v.binary_search_by_key(&id, Entry::id) {
                Ok(j) => (Some(v.remove(j).loc()), true),
                Err(_) => (None, false),
            }),
        }
    }

    /// Decodes block `i`, applies `f` (which also says whether it changed the entries) and
    /// stores the result back, splitting or dropping the block as needed.
    fn modify<R>(&mut self, i: usize, f: impl FnOnce(&mut Vec<Entry>) -> (R, bool)) -> R {
        let mut v: Vec<Entry> = match self.blocks.get(i) {
            Some(b) => b.entries(self.stream_len),
            None => Vec::new(),
        };
        let before = v.len();
        let (r, changed) = f(&mut v);
        if !changed || before == 0 {
            return r;
        }
        self.len = self.len + v.len() - before;
        if v.len() > self.max_entries {
            let (a, b) = v.split_at(v.len() / 2);
            if let (Some(a), Some(b)) = (
                Block::encode(a, self.stream_len),
                Block::encode(b, self.stream_len),
            ) {
                self.keys[i] = a.key;
                self.blocks[i] = a;
                self.reserve_block();
                self.keys.insert(i + 1, b.key);
                self.blocks.insert(i + 1, b);
            }
        } else if let Some(b) = Block::encode(&v, self.stream_len) {
            self.keys[i] = b.key;
            self.blocks[i] = b;
        } else {
            self.keys.remove(i);
            self.blocks.remove(i);
        }
        r
    }

    /// Compresses the oldest `max_entries` tail entries once the tail holds twice that.
    fn freeze(&mut self) {
        let max = self.max_entries;
        if self.tail.len() > 2 * max {
            if let Some(b) = Block::encode(&self.tail[..max], self.stream_len) {
                self.reserve_block();
                self.keys.push(b.key);
                self.blocks.push(b);
            }
            self.tail.drain(..max);
        }
    }

    /// Grows the tail up to exactly the most it will hold (`2 * max_entries + 1`).
    fn reserve_tail(&mut self) {
        let (len, cap) = (self.tail.len(), self.tail.capacity());
        if len == cap {
            let want = (2 * cap).max(4).min(2 * self.max_entries + 1).max(len + 1);
            self.tail.reserve_exact(want - len);
        }
    }

    /// Grows the directory by 1/8 at a time, to keep its slack small.
    fn reserve_block(&mut self) {
        let extra = (self.blocks.len() / 8).max(16);
        if self.blocks.len() == self.blocks.capacity() {
            self.blocks.reserve_exact(extra);
        }
        if self.keys.len() == self.keys.capacity() {
            self.keys.reserve_exact(extra);
        }
    }

    /// Entries, deleted ones included.
    pub fn len(&self) -> usize {
        self.len + self.odd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries sorted by (key, alt).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32, Loc)> + '_ {
        Merge {
            a: self.iter_packed().peekable(),
            b: self.odd.iter().copied().peekable(),
        }
    }

    fn iter_packed(&self) -> impl Iterator<Item = (u64, u32, Loc)> + '_ {
        let packed = self
            .blocks
            .iter()
            .flat_map(|b| b.entries(self.stream_len))
            .chain(self.tail.iter().copied())
            .map(|e| (e.key, e.alt, e.loc()));
        Merge {
            a: packed.peekable(),
            b: self
                .pending
                .iter()
                .map(|e| (e.key, e.alt, e.loc()))
                .peekable(),
        }
    }

    /// Bytes this index holds on the heap (sum of its allocations' requested sizes), for metrics.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.keys.capacity() * std::mem::size_of::<u64>()
            + self.blocks.iter().map(|b| b.data.len()).sum::<usize>()
            + self.tail.capacity() * std::mem::size_of::<Entry>()
            + self.odd.capacity() * std::mem::size_of::<(u64, u32, Loc)>()
            + self.pending.capacity() * std::mem::size_of::<Entry>()
    }
}

/// Merges two iterators sorted by (key, alt) with no id in both.
struct Merge<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (u64, u32, Loc)>,
    B: Iterator<Item = (u64, u32, Loc)>,
{
    type Item = (u64, u32, Loc);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.a.peek(), self.b.peek()) {
            (Some(a), Some(b)) if (b.0, b.1) < (a.0, a.1) => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

impl std::fmt::Debug for MemIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemIndex")
            .field("len", &self.len())
            .field("odd", &self.odd.len())
            .field("blocks", &self.blocks.len())
            .field("tail", &self.tail.len())
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Model = BTreeMap<(u64, u32), Loc>;

    impl MemIndex {
        /// An index with small blocks and streams, to exercise splits and boundaries.
        fn with_sizes(max_entries: usize, stream_len: usize) -> Self {
            MemIndex {
                max_entries,
                stream_len,
                ..Self::new()
            }
        }

        /// Checks the structural invariants.
        fn check(&self) {
            let mut prev: Option<(u64, u32)> = None;
            let mut n = 0;
            assert_eq!(self.keys.len(), self.blocks.len());
            for (b, &k) in self.blocks.iter().zip(&self.keys) {
                assert_eq!(b.key, k);
                assert!(b.n >= 1 && b.n as usize <= self.max_entries);
                let v: Vec<Entry> = b.entries(self.stream_len);
                assert_eq!(v.len(), b.n as usize);
                assert_eq!(v[0].id(), (b.key, b.alt));
                for e in &v {
                    assert!(prev.is_none_or(|p| p < e.id()));
                    prev = Some(e.id());
                }
                n += v.len();
            }
            assert!(self.tail.len() <= 2 * self.max_entries);
            assert!(!self.tail.is_empty() || self.blocks.is_empty());
            for e in &self.tail {
                assert!(prev.is_none_or(|p| p < e.id()));
                prev = Some(e.id());
            }
            n += self.tail.len();
            assert!(self.pending.windows(2).all(|w| w[0].id() < w[1].id()));
            assert!(self.pending.len() < 2 * self.max_entries);
            n += self.pending.len();
            assert_eq!(n, self.len);
            assert!(self
                .odd
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
            for o in &self.odd {
                assert!(!o.2.offset.is_multiple_of(8) || !o.2.extent.is_multiple_of(8));
            }
        }
    }

    fn loc(offset: u64, extent: u32) -> Loc {
        Loc {
            offset,
            extent,
            deleted: false,
        }
    }

    fn assert_same(index: &MemIndex, model: &Model) {
        index.check();
        assert_eq!(index.len(), model.len());
        assert_eq!(index.is_empty(), model.is_empty());
        let got: Vec<(u64, u32, Loc)> = index.iter().collect();
        let want: Vec<(u64, u32, Loc)> = model.iter().map(|(&(k, a), &l)| (k, a, l)).collect();
        assert_eq!(got, want);
        for (&(k, a), &l) in model {
            assert_eq!(index.get(k, a), Some(l), "get({k}, {a})");
        }
        let rebuilt = MemIndex::from_sorted(want.iter().copied());
        rebuilt.check();
        assert_eq!(rebuilt.iter().collect::<Vec<_>>(), want);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u32, Loc),
        MarkDeleted(u64, u32),
        Remove(u64, u32),
        Get(u64, u32),
    }

    /// Applies `op` to both, checking the results agree.
    fn apply(index: &mut MemIndex, model: &mut Model, op: &Op) {
        match *op {
            Op::Insert(k, a, l) => assert_eq!(index.insert(k, a, l), model.insert((k, a), l)),
            Op::MarkDeleted(k, a) => {
                let want = model.get_mut(&(k, a)).map(|l| {
                    let old = *l;
                    l.deleted = true;
                    old
                });
                assert_eq!(index.mark_deleted(k, a), want);
            }
            Op::Remove(k, a) => assert_eq!(index.remove(k, a), model.remove(&(k, a))),
            Op::Get(k, a) => assert_eq!(index.get(k, a), model.get(&(k, a)).copied()),
        }
        assert_eq!(index.len(), model.len());
        if let Op::Insert(k, a, _) | Op::MarkDeleted(k, a) | Op::Remove(k, a) = *op {
            assert_eq!(index.get(k, a), model.get(&(k, a)).copied());
        }
    }

    fn any_loc() -> impl Strategy<Value = Loc> {
        let aligned = (
            prop_oneof![0u64..64, 0u64..(1 << 37), Just((1u64 << 61) - 1)],
            prop_oneof![1u32..40, 1u32..(1 << 29)],
            any::<bool>(),
        )
            .prop_map(|(o, e, deleted)| Loc {
                offset: o * 8,
                extent: e * 8,
                deleted,
            });
        // Rarely, a location a valid volume never has.
        let odd =
            (0u64..1000, 0u32..1000, any::<bool>()).prop_map(|(offset, extent, deleted)| Loc {
                offset,
                extent,
                deleted,
            });
        prop_oneof![20 => aligned, 1 => odd]
    }

    fn small_key() -> impl Strategy<Value = (u64, u32)> {
        (
            prop_oneof![8 => 0u64..24, 1 => Just(u64::MAX), 1 => Just(u64::MAX - 1)],
            prop_oneof![8 => 0u32..5, 1 => Just(u32::MAX)],
        )
    }

    fn small_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (small_key(), any_loc()).prop_map(|((k, a), l)| Op::Insert(k, a, l)),
            2 => small_key().prop_map(|(k, a)| Op::MarkDeleted(k, a)),
            2 => small_key().prop_map(|(k, a)| Op::Remove(k, a)),
            2 => small_key().prop_map(|(k, a)| Op::Get(k, a)),
        ]
    }

    /// A step of a realistic workload: photos with k-sortable ids, arriving nearly in order.
    #[derive(Clone, Debug)]
    enum Step {
        /// A new photo: milliseconds since the previous one, whether it is late (its id is
        /// older than the last one's), node id, extents of its four variants (units of 8).
        Photo(u64, bool, u64, [u32; 4]),
        /// Delete / remove / re-insert / look up the photo picked by index.
        Delete(usize, u32),
        Remove(usize, u32),
        Reinsert(usize, u32, u32),
        Get(usize, u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            20 => (
                prop_oneof![6 => Just(0u64), 3 => Just(1u64), 1 => 2u64..5000],
                prop::bool::weighted(0.1),
                prop_oneof![9 => Just(7u64), 1 => 0u64..1024],
                prop_oneof![
                    [1u32..300_000, 1u32..60_000, 1u32..15_000, 1u32..3000],
                    [9u32..16, 9u32..16, 9u32..16, 9u32..16],
                ],
            )
                .prop_map(|(ms, late, node, ext)| Step::Photo(ms, late, node, ext)),
            1 => (any::<usize>(), 0u32..4).prop_map(|(i, a)| Step::Delete(i, a)),
            1 => (any::<usize>(), 0u32..5).prop_map(|(i, a)| Step::Remove(i, a)),
            1 => (any::<usize>(), 0u32..5, 1u32..100_000).prop_map(|(i, a, e)| Step::Reinsert(i, a, e)),
            2 => (any::<usize>(), 0u32..5).prop_map(|(i, a)| Step::Get(i, a)),
        ]
    }

    /// Runs realistic `steps`, checking against the model as it goes.
    fn run_realistic(index: &mut MemIndex, steps: &[Step]) {
        let mut model = Model::new();
        let mut keys: Vec<u64> = Vec::new();
        let (mut ms, mut seq, mut end) = (1_700_000_000_000u64, 0u64, 0u64);
        for (n, s) in steps.iter().enumerate() {
            let op_of =
                |i: usize, f: &dyn Fn(u64) -> Op| keys.get(i % keys.len().max(1)).map(|&k| f(k));
            let ops: Vec<Op> = match *s {
                Step::Photo(dms, late, node, ext) => {
                    if dms > 0 {
                        ms += dms;
                        seq = 0;
                    }
                    let mut key = (ms << 22) | (node << 12) | (seq & 0xfff);
                    seq += 1;
                    if late {
                        key = key.saturating_sub(1 << 22) | 0xabc;
                    }
                    keys.push(key);
                    (0..4)
                        .map(|a| {
                            let l = loc(end, ext[a as usize] * 8);
                            end += l.extent as u64;
                            Op::Insert(key, a, l)
                        })
                        .collect()
                }
                Step::Delete(i, a) => op_of(i, &|k| Op::MarkDeleted(k, a)).into_iter().collect(),
                Step::Remove(i, a) => op_of(i, &|k| Op::Remove(k, a)).into_iter().collect(),
                Step::Reinsert(i, a, e) => {
                    let l = loc(end, e * 8);
                    end += l.extent as u64;
                    op_of(i, &|k| Op::Insert(k, a, l)).into_iter().collect()
                }
                Step::Get(i, a) => op_of(i, &|k| Op::Get(k, a)).into_iter().collect(),
            };
            for op in &ops {
                apply(index, &mut model, op);
            }
            if n % 32 == 0 {
                assert_same(index, &model);
            }
        }
        assert_same(index, &model);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn small_key_space_matches_model(
            ops in prop::collection::vec(small_op(), 0..300),
            max in prop_oneof![Just(2usize), Just(5), Just(9), Just(MAX_ENTRIES)],
            stream in prop_oneof![Just(1usize), Just(2), Just(3), Just(STREAM_LEN)],
        ) {
            let mut index = MemIndex::with_sizes(max, stream);
            let mut model = Model::new();
            for op in &ops {
                apply(&mut index, &mut model, op);
                index.check();
            }
            assert_same(&index, &model);
        }

        #[test]
        fn realistic_keys_match_model(
            steps in prop::collection::vec(step(), 0..400),
            max in prop_oneof![Just(3usize), Just(16), Just(64), Just(MAX_ENTRIES)],
            stream in prop_oneof![Just(2usize), Just(5), Just(16), Just(STREAM_LEN)],
        ) {
            let mut index = MemIndex::with_sizes(max, stream);
            run_realistic(&mut index, &steps);
        }

        #[test]
        fn from_sorted_matches_model(entries in prop::collection::btree_map(small_key(), any_loc(), 0..400)) {
            let index = MemIndex::from_sorted(entries.iter().map(|(&(k, a), &l)| (k, a, l)));
            assert_same(&index, &entries);
        }
    }

    #[test]
    fn universal_code_round_trips() {
        let values = [
            0u64,
            1,
            2,
            3,
            4,
            255,
            256,
            1 << 31,
            (1 << 32) + 5,
            1 << 56,
            (1 << 57) - 1,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        let mut w = BitWriter::default();
        for &v in &values {
            w.put_u(v);
            w.put(1, 1);
        }
        let bits = w.bits();
        let data = w.finish();
        let mut r = BitReader {
            data: &data,
            pos: 0,
        };
        for &v in &values {
            assert_eq!(r.get_u(), v);
            assert_eq!(r.get(1), 1);
        }
        assert_eq!(r.pos, bits);
    }

    #[test]
    fn key_code_round_trips() {
        let pairs = [
            (0u64, 1u64),
            (0, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (5 << 22 | 7 << 12 | 3, 5 << 22 | 7 << 12 | 4),
            (5 << 22 | 7 << 12 | 4095, 6 << 22 | 7 << 12),
            (5 << 22 | 7 << 12 | 4, 9 << 22 | 8 << 12 | 1),
            (5 << 22 | 7 << 12 | 4, 5 << 22 | 8 << 12 | 1),
            (5 << 22 | 7 << 12 | 4, 5 << 22 | 1023 << 12 | 4095),
            (5 << 22 | 7 << 12 | 4, u64::MAX),
            (0, 1 << 22),
        ];
        let mut w = BitWriter::default();
        for &(p, k) in &pairs {
            w.put_key(p, k, &mut Nodes::new(p));
        }
        let bits = w.bits();
        let data = w.finish();
        let mut r = BitReader {
            data: &data,
            pos: 0,
        };
        for &(p, k) in &pairs {
            assert_eq!(r.get_key(p, &mut Nodes::new(p)), k);
        }
        assert_eq!(r.pos, bits);
    }

    #[test]
    fn key_code_tracks_recent_nodes() {
        // Increasing keys whose nodes cycle over 12 ids (more than the list holds).
        let mut keys = vec![0u64];
        for i in 1..400u64 {
            let ms = 1000 + i / 5;
            let node = (i * 7) % 12 * 85;
            keys.push((ms << TS_SHIFT) | (node << SEQ_BITS) | (i % 5));
        }
        keys.sort_unstable();
        keys.dedup();
        let mut w = BitWriter::default();
        let mut nodes = Nodes::new(keys[0]);
        for k in keys.windows(2) {
            w.put_key(k[0], k[1], &mut nodes);
        }
        let bits = w.bits();
        let data = w.finish();
        let mut r = BitReader {
            data: &data,
            pos: 0,
        };
        let mut nodes = Nodes::new(keys[0]);
        for k in keys.windows(2) {
            assert_eq!(r.get_key(k[0], &mut nodes), k[1]);
        }
        assert_eq!(r.pos, bits);
    }

    #[test]
    fn edge_values() {
        for (max, stream) in [(1, 1), (3, 1), (3, 2), (8, 3), (MAX_ENTRIES, STREAM_LEN)] {
            let mut index = MemIndex::with_sizes(max, stream);
            let mut model = Model::new();
            let cases = [
                (0u64, 0u32, loc(0, 8)),
                (0, 1, loc(8, (u32::MAX >> 3) << 3)),
                (0, u32::MAX, loc((1 << 40) - 8, 8)),
                (1, 0, loc((1 << 40) + 8, ((u32::MAX >> 3) << 3) - 8)),
                (u64::MAX, 0, loc(0, 8)),
                (u64::MAX, u32::MAX, loc(u64::MAX - 7, (u32::MAX >> 3) << 3)),
                (u64::MAX - 1, 7, loc(16, 24)),
                (1 << 63, 3, loc(1 << 62, 4096)),
                (
                    5,
                    2,
                    Loc {
                        offset: 64,
                        extent: 8,
                        deleted: true,
                    },
                ),
            ];
            // Out of order, then in reverse, then re-inserted with new locations.
            for &(k, a, l) in cases.iter().chain(cases.iter().rev()) {
                apply(&mut index, &mut model, &Op::Insert(k, a, l));
                index.check();
            }
            assert_same(&index, &model);
            for (i, &(k, a, l)) in cases.iter().enumerate() {
                let newer = Loc {
                    offset: l.offset ^ 8,
                    extent: 16 + 8 * i as u32,
                    deleted: i % 2 == 0,
                };
                apply(&mut index, &mut model, &Op::Insert(k, a, newer));
                assert_eq!(index.get(k, a), Some(newer), "newest wins");
            }
            assert_same(&index, &model);
            for &(k, a, _) in &cases {
                apply(&mut index, &mut model, &Op::MarkDeleted(k, a));
                apply(&mut index, &mut model, &Op::MarkDeleted(k, a));
                index.check();
            }
            assert_same(&index, &model);
            for &(k, a, _) in &cases {
                apply(&mut index, &mut model, &Op::Remove(k, a));
                apply(&mut index, &mut model, &Op::Remove(k, a));
                index.check();
            }
            assert_same(&index, &model);
            assert!(index.is_empty());
            assert_eq!(index.get(0, 0), None);
            assert_eq!(index.mark_deleted(0, 0), None);
            assert_eq!(index.remove(0, 0), None);
        }
    }

    #[test]
    fn non_contiguous_and_interleaved() {
        let mut index = MemIndex::with_sizes(4, 2);
        let mut model = Model::new();
        // Needles of different photos interleaved on disk, plus gaps and backward jumps.
        let mut ops = Vec::new();
        for i in 0..50u64 {
            ops.push(Op::Insert(
                1000 - i * 3,
                (i % 4) as u32,
                loc(i * 80 + (i % 3) * 800, 80),
            ));
            ops.push(Op::Insert(
                i * 7,
                0,
                loc((50 - i) * 8000, 8 * (i as u32 + 1)),
            ));
        }
        for op in &ops {
            apply(&mut index, &mut model, op);
            index.check();
        }
        assert_same(&index, &model);
    }

    #[test]
    fn mark_deleted_in_tail_then_append() {
        let mut index = MemIndex::new();
        let mut model = Model::new();
        for k in 0..10u64 {
            apply(&mut index, &mut model, &Op::Insert(k, 0, loc(k * 8, 8)));
        }
        apply(&mut index, &mut model, &Op::MarkDeleted(9, 0));
        apply(&mut index, &mut model, &Op::MarkDeleted(3, 0)); // in place now
        apply(&mut index, &mut model, &Op::Insert(10, 0, loc(80, 8)));
        apply(
            &mut index,
            &mut model,
            &Op::Insert(
                11,
                0,
                Loc {
                    offset: 88,
                    extent: 8,
                    deleted: true,
                },
            ),
        );
        assert_same(&index, &model);
    }

    #[test]
    fn compact_for_photos() {
        // 4 contiguous variants per photo, a few photos per millisecond.
        let mut index = MemIndex::new();
        let mut end = 0u64;
        for p in 0..40_000u64 {
            let key = ((1_700_000_000_000 + p / 3) << 22) | (7 << 12) | (p % 3);
            for a in 0..4 {
                index.insert(key, a, loc(end, 80 + 8 * ((p + a as u64) % 6) as u32));
                end += 80 + 8 * ((p + a as u64) % 6);
            }
        }
        let per_photo = index.heap_bytes() as f64 / 40_000.0;
        assert!(per_photo < 5.0, "{per_photo} bytes per photo");
    }

    #[test]
    fn production_sizes_match_model() {
        // Enough photos for many full blocks at the real block and stream sizes, with late
        // arrivals, deletes, removes and re-inserts everywhere.
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut index = MemIndex::new();
        let mut model = Model::new();
        let mut keys = Vec::new();
        let mut end = 0u64;
        for p in 0..12_000u64 {
            let mut key = ((1_700_000_000_000 + p / 3) << 22) | ((next() % 3) << 12) | (p % 3);
            if next() % 20 == 0 {
                key -= 5 << 22; // late
            }
            keys.push(key);
            for a in 0..4 {
                let l = loc(end, 8 * (1 + (next() % 50_000) as u32));
                end += u64::from(l.extent);
                apply(&mut index, &mut model, &Op::Insert(key, a, l));
            }
            if p % 7 == 0 {
                let k = keys[(next() % keys.len() as u64) as usize];
                let a = (next() % 5) as u32;
                let op = match next() % 4 {
                    0 => Op::MarkDeleted(k, a),
                    1 => Op::Remove(k, a),
                    2 => Op::Get(k, a),
                    _ => Op::Insert(k, a, loc(end, 64)),
                };
                apply(&mut index, &mut model, &op);
            }
        }
        assert!(index.blocks.len() > 20);
        assert_same(&index, &model);
    }

    #[test]
    fn unaligned_locs_are_kept_apart() {
        let mut index = MemIndex::with_sizes(2, 1);
        let mut model = Model::new();
        let ops = [
            Op::Insert(5, 0, loc(0, 8)),
            Op::Insert(5, 1, loc(4, 8)),
            Op::Insert(5, 2, loc(16, 12)),
            Op::Insert(5, 0, loc(1, 8)),  // aligned -> odd
            Op::Insert(5, 1, loc(24, 8)), // odd -> aligned
            Op::Insert(6, 0, loc(32, 8)),
            Op::Insert(4, 0, loc(3, 5)),
            Op::MarkDeleted(5, 0),
            Op::MarkDeleted(5, 1),
            Op::Get(5, 2),
            Op::Remove(4, 0),
            Op::Insert(4, 0, loc(3, 7)),
            Op::Insert(4, 0, loc(3, 9)),
        ];
        for op in &ops {
            apply(&mut index, &mut model, op);
            index.check();
        }
        assert_same(&index, &model);
        assert_eq!(index.odd.len(), 3);
    }
}
