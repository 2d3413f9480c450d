//! Needle indexes of a store volume: `(key, alt) -> Loc`, compressed in memory for writable
//! volumes ([`MemIndex`]) and as a sorted memory-mapped file for sealed ones ([`SortedIndex`]).

pub mod mem;
pub mod sealed;

pub use mem::MemIndex;
pub use sealed::SortedIndex;

/// Where a needle lives in its volume file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Byte offset of the needle header in the volume file; always a multiple of 8.
    pub offset: u64,
    /// Bytes the needle occupies on disk (header + content type + data + footer + padding); a multiple of 8, > 0, < 2^32.
    pub extent: u32,
    /// The needle is deleted (its flag is set in the volume file too).
    pub deleted: bool,
}
