//! Object bytes on the stores. A run of bytes (a PUT's body, a part) is written as chunks of
//! `chunk_bytes`, each one needle (alternate key = chunk number) written to every replica of
//! a volume the directory assigned, then committed to the directory as one photo id of kind
//! video: the needles are durable on every replica before the id is committed, and before any
//! S3 record points at it. Reads fetch needle ranges from a replica (the next on failure),
//! through the worker's [`StoreReaders`] when the caller has them (object GETs), else the
//! shared [`StoreClient`].
//! A replaced or deleted object's ids are deleted through the directory; whatever a crash
//! leaves behind (an uncommitted id, a committed one no record names) is `haystack gc`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use haystack_client::directory::retrying;
use haystack_client::{DirectoryClient, StoreClient, StoreReaders};
use haystack_proto::directory::{
    AssignRequest, AssignResponse, CommitRequest, PhotoKind, Replica, VideoChunk,
};
use haystack_proto::NeedleAddr;

use crate::error::S3Error;
use crate::meta::{Chunk, DataRef};

/// How long the replicas of a volume are trusted from the directory's last answer.
const REPLICAS_TTL: Duration = Duration::from_secs(5);
/// Needle overhead counted in an assign's size hint.
const NEEDLE_OVERHEAD: u64 = 256;
/// Volumes a run's first chunk is offered to before the PUT answers 503 SlowDown.
const WRITE_ATTEMPTS: usize = 4;
/// Retries of an assign the directory cannot answer yet (100 ms, doubling: about 3 s).
const ASSIGN_RETRIES: u32 = 5;

/// Replicas of volumes and when the directory said so.
type ReplicaCache = HashMap<u32, (Instant, Vec<Replica>)>;

/// The data path: the directory for ids and replicas, the stores for bytes.
#[derive(Clone)]
pub struct Data {
    dir: DirectoryClient,
    stores: StoreClient,
    chunk_bytes: usize,
    replicas: Arc<Mutex<ReplicaCache>>,
}

impl Data {
    pub fn new(dir: DirectoryClient, stores: StoreClient, chunk_bytes: u64) -> Self {
        Self {
            dir,
            stores,
            chunk_bytes: chunk_bytes as usize,
            replicas: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Needle readers for one worker thread's runtime (pass them to [`Data::read`]): they read
    /// as the shared store client does (its timeout and credentials).
    pub fn readers(&self) -> StoreReaders {
        self.stores.readers()
    }

    /// A writer for one run of bytes of about `size_hint` bytes.
    pub fn writer(&self, size_hint: u64) -> DataWriter<'_> {
        DataWriter {
            data: self,
            size_hint,
            assigned: None,
            chunks: Vec::new(),
            parts: Vec::new(),
            buffered: 0,
            written: 0,
        }
    }

    async fn replicas(&self, volume: u32) -> Result<Vec<Replica>, S3Error> {
        if let Ok(m) = self.replicas.lock() {
            if let Some((at, r)) = m.get(&volume) {
                if at.elapsed() < REPLICAS_TTL {
                    return Ok(r.clone());
                }
            }
        }
        let v = self.dir.volume(volume).await?;
        let r: Vec<Replica> = v
            .replicas
            .iter()
            .map(|r| Replica {
                store_id: r.store_id,
                url: r.url.clone(),
            })
            .collect();
        if let Ok(mut m) = self.replicas.lock() {
            m.insert(volume, (Instant::now(), r.clone()));
        }
        Ok(r)
    }

    /// Bytes `first..=last` of the object whose data is `parts`, as a stream of needle reads
    /// (through `readers` when given: they must belong to the runtime that polls the stream).
    pub fn read(
        &self,
        parts: Vec<DataRef>,
        first: u64,
        last: u64,
        readers: Option<StoreReaders>,
    ) -> impl Stream<Item = Result<Bytes, S3Error>> + 'static {
        // The needle ranges to read, in order.
        let mut segments = Vec::new();
        let mut base = 0u64;
        for p in &parts {
            for c in &p.chunks {
                let (c_first, c_last) = (base + c.offset, base + c.offset + c.size - 1);
                if c.size > 0 && c_last >= first && c_first <= last {
                    let from = first.max(c_first) - c_first;
                    let to = last.min(c_last) - c_first;
                    segments.push((
                        NeedleAddr::new(p.volume, p.photo, c.alt, p.cookie),
                        from,
                        to,
                    ));
                }
            }
            base += p.size;
        }
        let this = self.clone();
        futures_util::stream::unfold(
            (this, readers, segments.into_iter()),
            |(this, readers, mut it)| async move {
                let (addr, from, to) = it.next()?;
                let r = this.read_segment(readers.as_ref(), &addr, from, to).await;
                Some((r, (this, readers, it)))
            },
        )
    }

    async fn read_segment(
        &self,
        readers: Option<&StoreReaders>,
        addr: &NeedleAddr,
        from: u64,
        to: u64,
    ) -> Result<Bytes, S3Error> {
        let replicas = self.replicas(addr.volume).await?;
        let mut last_err = None;
        for r in &replicas {
            let read = match readers.and_then(|rs| rs.get(&r.url)) {
                Some(reader) => reader.get_needle_range(addr, from, to).await,
                None => self.stores.get_needle_range(&r.url, addr, from, to).await,
            };
            match read {
                Ok(n) if n.data.len() as u64 == to - from + 1 => return Ok(n.data),
                Ok(n) => {
                    last_err = Some(format!("{} answered {} bytes", r.url, n.data.len()));
                }
                Err(e) => last_err = Some(e.to_string()),
            }
        }
        tracing::warn!(volume = addr.volume, key = addr.key, alt = addr.alt, error = ?last_err, "no replica served an object chunk");
        Err(S3Error::Internal(format!(
            "no replica of volume {} served needle {}/{}: {}",
            addr.volume,
            addr.key,
            addr.alt,
            last_err.unwrap_or_else(|| "no replicas".into())
        )))
    }

    /// Commits a run written by [`DataWriter::finish_uncommitted`].
    pub async fn commit(&self, c: &CommitRequest) -> Result<(), S3Error> {
        self.dir.commit(c).await?;
        Ok(())
    }

    /// Deletes the ids of data no record names any more (best effort: `haystack gc` finds
    /// whatever this misses).
    pub async fn forget(&self, parts: &[DataRef]) {
        for p in parts {
            if let Err(e) = self.dir.delete(p.photo).await {
                tracing::warn!(id = p.photo, error = %e, "deleting replaced object data failed; gc will collect it");
            }
        }
    }
}

/// A run of bytes on every replica, its id not committed yet.
pub struct Written {
    pub data: DataRef,
    /// What commits the id (kind `object`, its chunks the run's needles): committed by the
    /// record write that names the data (`S3::put_object`, `S3::put_part`), so that the
    /// record follows within `gc::RECORD_DEADLINE`.
    pub commit: CommitRequest,
}

/// Writes one run of bytes; nothing is committed before [`DataWriter::finish`].
pub struct DataWriter<'a> {
    data: &'a Data,
    size_hint: u64,
    assigned: Option<AssignResponse>,
    chunks: Vec<Chunk>,
    /// The body's pieces of the chunk being gathered, as they arrived (never copied: the
    /// chunk is sent as these pieces), and their total length.
    parts: Vec<Bytes>,
    buffered: usize,
    written: u64,
}

impl DataWriter<'_> {
    pub async fn write(&mut self, mut bytes: Bytes) -> Result<(), S3Error> {
        let cap = self.data.chunk_bytes;
        while !bytes.is_empty() {
            let take = (cap - self.buffered).min(bytes.len());
            self.parts.push(bytes.split_to(take));
            self.buffered += take;
            if self.buffered == cap {
                let chunk = std::mem::take(&mut self.parts);
                self.buffered = 0;
                self.flush(chunk).await?;
            }
        }
        Ok(())
    }

    /// Writes one chunk to every replica of the assigned volume. The first chunk of a run may
    /// still move: when a replica refuses it (volume full, read-only, store down), the run is
    /// assigned again on another volume, up to [`WRITE_ATTEMPTS`] volumes in all, as the
    /// uploader does for photos; the abandoned id was never committed and is `haystack gc`'s.
    /// Later chunks join those already written and cannot move: their failure is a 503.
    async fn flush(&mut self, chunk: Vec<Bytes>) -> Result<(), S3Error> {
        let alt = self.chunks.len() as u32 + 1;
        let size: u64 = chunk.iter().map(|p| p.len() as u64).sum();
        let mut excluded = Vec::new();
        let mut failures = Vec::new();
        loop {
            if self.assigned.is_none() {
                let chunks = self.size_hint.div_ceil(self.data.chunk_bytes as u64).max(1);
                let req = AssignRequest {
                    kind: PhotoKind::Video,
                    size_hint_bytes: self.size_hint + chunks * NEEDLE_OVERHEAD,
                    exclude_volumes: excluded.clone(),
                    ..Default::default()
                };
                // While every writable volume has just filled up, the directory answers 503
                // until it has made new ones: wait for them (about 3 s), as the uploader does.
                let a = retrying("assigning a volume", ASSIGN_RETRIES, || {
                    self.data.dir.assign(&req)
                })
                .await?;
                self.assigned = Some(a);
            }
            let Some(a) = &self.assigned else {
                return Err(S3Error::Internal("no assignment".into()));
            };
            let errs = match self
                .data
                .stores
                .put_needle_parts_all(
                    &a.replicas,
                    a.volume_id,
                    a.id,
                    a.cookie,
                    alt,
                    "application/octet-stream",
                    &chunk,
                )
                .await
            {
                Ok(()) => break,
                Err(errs) => errs,
            };
            let detail: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            tracing::warn!(id = a.id, volume = a.volume_id, alt, errors = ?detail, "object chunk write failed");
            metrics::counter!("haystack_s3_chunk_write_failures_total").increment(1);
            failures.push(format!("volume {}: {}", a.volume_id, detail.join("; ")));
            if errs.iter().any(|e| e.is_too_large()) {
                // No volume takes it: `s3.chunk_bytes` is above the stores' needle limit.
                return Err(S3Error::Internal(format!(
                    "a store refused a {size}-byte chunk as too large (s3.chunk_bytes is above the stores' max needle size)"
                )));
            }
            if alt != 1 || failures.len() >= WRITE_ATTEMPTS {
                return Err(S3Error::SlowDown(format!(
                    "no volume took the object's data: {}",
                    failures.join(" | ")
                )));
            }
            excluded.push(a.volume_id);
            self.assigned = None;
        }
        self.chunks.push(Chunk {
            alt,
            offset: self.written,
            size,
        });
        self.written += size;
        Ok(())
    }

    /// Writes what is left; the id is not committed: the caller commits it (`w.commit`),
    /// alone or with the record that names the data. None for no bytes at all.
    pub async fn finish_uncommitted(mut self) -> Result<Option<Written>, S3Error> {
        if self.buffered > 0 {
            let rest = std::mem::take(&mut self.parts);
            self.buffered = 0;
            self.flush(rest).await?;
        }
        let Some(a) = self.assigned.take() else {
            return Ok(None);
        };
        let commit = CommitRequest {
            id: a.id,
            cookie: a.cookie,
            volume_id: a.volume_id,
            // Placed like a video; committed as S3 data, which gc collects once no record
            // names it (crate::gc).
            kind: PhotoKind::Object,
            variants: Vec::new(),
            chunks: self
                .chunks
                .iter()
                .map(|c| VideoChunk {
                    alt: c.alt,
                    offset: c.offset,
                    size_bytes: c.size,
                })
                .collect(),
        };
        Ok(Some(Written {
            data: DataRef {
                photo: a.id,
                volume: a.volume_id,
                cookie: a.cookie,
                size: self.written,
                chunks: self.chunks,
            },
            commit,
        }))
    }
}
