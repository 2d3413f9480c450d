//! The store's error type. Its HTTP status mapping lives in one place: `http::ApiError`.

use std::io;

use thiserror::Error;

use crate::format::FormatError;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The needle is missing, deleted, or the cookie does not match: all look the same.
    #[error("needle not found")]
    NotFound,
    #[error("no such route (see docs/API.md)")]
    NoRoute,
    #[error("volume {0} not found")]
    NoVolume(u32),
    /// The volume's files are here but the store could not open them (quarantined).
    #[error("volume {volume} is unavailable on this store: {reason}")]
    Unavailable { volume: u32, reason: String },
    #[error("volume {0} already exists")]
    VolumeExists(u32),
    #[error("volume {volume} is read-only: {reason}")]
    ReadOnly { volume: u32, reason: String },
    #[error("volume {0} is full")]
    Full(u32),
    /// The volume's file could not grow: the file system has no space left (ENOSPC). The
    /// volume is read-only with the reason [`crate::volume::DISK_FULL`].
    #[error("volume {0} cannot grow: the disk is full (no space left on device)")]
    DiskFull(u32),
    #[error("body too large: at most {max} bytes")]
    TooLarge { max: u64 },
    /// No part of a request body arrived within the idle timeout.
    #[error("{0}")]
    BodyTimeout(String),
    #[error("{0}")]
    BadRequest(String),
    /// A needle failed its checks on read: never served, counted, reported.
    #[error("corrupt needle in volume {volume} at offset {offset}: {detail}")]
    Corrupt {
        volume: u32,
        offset: u64,
        detail: String,
    },
    #[error("volume {volume} is not a valid volume file: {source}")]
    BadVolumeFile {
        volume: u32,
        #[source]
        source: FormatError,
    },
    #[error("disk I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("store is shutting down")]
    ShuttingDown,
    /// An operation that runs one at a time is running already.
    #[error("{0}")]
    Busy(String),
    /// The disk has no room for the operation (compaction needs room for the live data).
    #[error("{0}")]
    NoSpace(String),
    /// A needle write whose write token does not cover it (or has expired).
    #[error("{0}")]
    Forbidden(String),
    /// A repair's good copy is not the needle this volume holds under that key.
    #[error("{0}")]
    Mismatch(String),
    /// A write of a needle this volume holds deleted, or took a delete of in the last
    /// minutes (`volume/recent.rs`): a write never undoes a delete.
    #[error("needle {key}/{alt} was deleted on this volume; a write never brings it back")]
    Deleted { key: u64, alt: u32 },
    /// A shipped run of bytes does not start at the remote replica's end.
    #[error("shipped bytes start at {offset}, the volume ends at {tail}")]
    ShipOutOfStep { offset: u64, tail: u64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
