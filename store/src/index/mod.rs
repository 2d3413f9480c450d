//! Needle indexes: (key, alternate key) → where the needle lives in its volume file.

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
