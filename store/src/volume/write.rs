//! The write path of a volume: appends queued and laid down back to back (write combining),
//! group commit (one fdatasync for every writer that waited for it), then the index and the
//! checkpoint records. Steps 1 to 3 of the durability contract in docs/ARCHITECTURE.md.

use super::*;

/// A write waiting in the append queue, and where to say at which offset it landed.
pub(super) struct Queued {
    pub(super) buf: Vec<u8>,
    pub(super) tx: tokio::sync::oneshot::Sender<Result<u64>>,
}

pub(super) struct Append {
    /// Where the next needle goes.
    pub(super) tail: u64,
    /// Bytes of the file allocated so far.
    pub(super) allocated: u64,
}

/// Group commit: one fdatasync covers every writer that took a ticket before it started.
pub(super) struct GroupCommit {
    requested: AtomicU64,
    requested_needles: AtomicU64,
    done: AtomicU64,
    done_needles: AtomicU64,
    lock: tokio::sync::Mutex<()>,
    failed: AtomicBool,
}

impl GroupCommit {
    pub(super) fn new() -> Self {
        GroupCommit {
            requested: AtomicU64::new(0),
            requested_needles: AtomicU64::new(0),
            done: AtomicU64::new(0),
            done_needles: AtomicU64::new(0),
            lock: tokio::sync::Mutex::new(()),
            failed: AtomicBool::new(false),
        }
    }

    /// Returns once an fdatasync that started after this call has completed.
    pub(super) async fn commit(
        &self,
        engine: &IoEngine,
        file: &Arc<File>,
        needles: u64,
    ) -> io::Result<()> {
        self.requested_needles.fetch_add(needles, Ordering::SeqCst);
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            if self.done.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            let _leader = self.lock.lock().await;
            if self.done.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            if self.failed.load(Ordering::Acquire) {
                return Err(io::Error::other(
                    "an earlier fdatasync of this volume failed",
                ));
            }
            let target = self.requested.load(Ordering::SeqCst);
            let target_needles = self.requested_needles.load(Ordering::SeqCst);
            if let Err(e) = engine.fdatasync(file).await {
                self.failed.store(true, Ordering::Release);
                return Err(e);
            }
            let prev = self.done_needles.swap(target_needles, Ordering::AcqRel);
            metrics::histogram!("haystack_store_needles_per_fsync")
                .record(target_needles.saturating_sub(prev) as f64);
            self.done.store(target, Ordering::Release);
        }
    }
}

impl Volume {
    /// Appends needles as one contiguous write under one sync and indexes them; returns their
    /// locations. Runs as its own task: dropping the returned future does not cancel it.
    pub async fn write_batch(self: &Arc<Self>, needles: Vec<NeedleData>) -> Result<Vec<Loc>> {
        let v = self.clone();
        tokio::spawn(async move { v.write_batch_inner(needles).await })
            .await
            .map_err(|e| StoreError::Io(io::Error::other(format!("write task failed: {e}"))))?
    }

    async fn write_batch_inner(&self, needles: Vec<NeedleData>) -> Result<Vec<Loc>> {
        if needles.is_empty() {
            return Ok(Vec::new());
        }
        for n in &needles {
            if n.data.len() as u64 > self.cfg.max_needle_bytes {
                return Err(StoreError::TooLarge {
                    max: self.cfg.max_needle_bytes,
                });
            }
            if n.content_type.len() > MAX_CONTENT_TYPE_LEN {
                return Err(StoreError::BadRequest(format!(
                    "content type longer than {MAX_CONTENT_TYPE_LEN} bytes"
                )));
            }
        }
        // The batch's exact size up front: growing the buffer would copy the needles again.
        let total: u64 = needles
            .iter()
            .map(|n| crate::format::needle_extent(n.content_type.len(), n.data.len()))
            .sum();
        let mut buf = Vec::with_capacity(total as usize);
        let mut rel = Vec::with_capacity(needles.len());
        for n in &needles {
            let start = buf.len() as u64;
            let extent = encode_needle(
                &mut buf,
                &NeedleIn {
                    key: n.key,
                    alt: n.alt,
                    cookie: n.cookie,
                    content_type: &n.content_type,
                    data: &n.data,
                    tag: self.tag,
                },
            );
            rel.push((start, extent));
        }
        let len = buf.len() as u64;
        if len > self.cfg.max_write_bytes {
            return Err(StoreError::TooLarge {
                max: self.cfg.max_write_bytes,
            });
        }
        let _gate = self.gate.read().await;
        self.check_writable()?;
        // A write never undoes a delete: a write that arrives after its needle's delete is
        // refused before a byte of it is laid down. (A delete landing while this write is in
        // flight is caught again when it is indexed, below, and that delete waits for this
        // write to be over before it answers: `_writing`.)
        let _writing = {
            let st = self.read_index();
            let mut recent = lock(&self.recent_deletes);
            if let Some(n) = needles
                .iter()
                .find(|n| self.undoes_delete(&st, n.key, n.alt, n.cookie, &recent))
            {
                metrics::counter!("haystack_store_writes_refused_deleted_total").increment(1);
                tracing::warn!(
                    volume = self.id,
                    key = n.key,
                    alt = n.alt,
                    "a write of a needle arrived after its delete; refused"
                );
                return Err(StoreError::Deleted {
                    key: n.key,
                    alt: n.alt,
                });
            }
            Writing::begin(
                self,
                &mut recent,
                needles.iter().map(|n| (n.key, n.alt)).collect(),
            )
        };
        let keys = || -> Vec<(u64, u32)> { needles.iter().map(|n| (n.key, n.alt)).collect() };
        let base = match self.append(buf).await {
            Ok(b) => b,
            Err(e) => {
                if matches!(e, StoreError::Io(_)) {
                    self.write_failed(&keys());
                }
                return Err(e);
            }
        };
        metrics::counter!("haystack_store_bytes_written_total").increment(len);
        if let Err(e) = self
            .commit
            .commit(&self.engine, &self.file(), needles.len() as u64)
            .await
        {
            self.write_failed(&keys());
            self.set_read_only(format!("disk error: {e}"));
            return Err(StoreError::Io(e));
        }
        // Every byte below this batch's end was laid down before the sync that covered it.
        self.durable.fetch_max(base + len, Ordering::AcqRel);
        let mut locs = Vec::with_capacity(needles.len());
        // Needles whose delete landed while this write was in flight (it would undo it,
        // `Volume::undoes_delete`): laid down, but indexed deleted (records PUT then DELETE,
        // as a delete leaves them). Their delete flag in the file is that delete's to set: it
        // waits for this write to be over (`Writing`), then sets and syncs the newest copy's
        // flag and record before it answers.
        let mut refused: Vec<(u64, u32)> = Vec::new();
        {
            let mut idx = self.write_index();
            let mut log = lock(&self.idx_log);
            let recent = lock(&self.recent_deletes);
            for (n, (start, extent)) in needles.iter().zip(rel) {
                let loc = Loc {
                    offset: base + start,
                    extent: extent as u32,
                    deleted: false,
                };
                locs.push(loc);
                if self.undoes_delete(&idx, n.key, n.alt, n.cookie, &recent) {
                    refused.push((n.key, n.alt));
                    if let VolIndex::Mem(m) = &mut idx.index {
                        match m.get(n.key, n.alt) {
                            Some(old) if old.offset > loc.offset => continue,
                            Some(_) => {}
                            None => {
                                self.stats.deleted_needles.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        m.insert(
                            n.key,
                            n.alt,
                            Loc {
                                deleted: true,
                                ..loc
                            },
                        );
                        log.push(IDX_PUT, n.key, n.alt, loc);
                        log.push(IDX_DELETE, n.key, n.alt, loc);
                    }
                    continue;
                }
                if let VolIndex::Mem(m) = &mut idx.index {
                    // Newest wins: appends are in offset order, and a racing writer of the same
                    // (key, alt) may reach this point first.
                    match m.get(n.key, n.alt) {
                        Some(old) if old.offset > loc.offset => continue,
                        Some(old) => {
                            if !old.deleted {
                                self.stats
                                    .live_bytes
                                    .fetch_sub(old.extent as u64, Ordering::Relaxed);
                            } else {
                                self.stats.deleted_needles.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                        None => {}
                    }
                    m.insert(n.key, n.alt, loc);
                    self.stats
                        .live_bytes
                        .fetch_add(loc.extent as u64, Ordering::Relaxed);
                    log.push(IDX_PUT, n.key, n.alt, loc);
                }
            }
        }
        // The records go to the index file now (a write, no sync), outside the index lock:
        // after a process crash the file then vouches for every acknowledged needle, so
        // recovery never has to tell a damaged acknowledged needle from a torn tail there.
        let _ = lock(&self.idx_log).flush();
        self.journal(|j| {
            j.puts
                .extend(needles.iter().zip(&locs).map(|(n, l)| (n.key, n.alt, *l)));
            j.touched.extend(needles.iter().map(|n| (n.key, n.alt)))
        });
        if let Some(&(key, alt)) = refused.first() {
            metrics::counter!("haystack_store_writes_refused_deleted_total").increment(1);
            tracing::warn!(
                volume = self.id,
                key,
                alt,
                refused = refused.len(),
                "a delete landed while a write of its needle was in flight; the write is refused"
            );
            return Err(StoreError::Deleted { key, alt });
        }
        Ok(locs)
    }

    /// Writes `buf` at the tail and returns its offset. Concurrent appends are combined:
    /// whoever gets the append lock writes every buffer queued so far, in queue order, with
    /// as few positioned writes as `max_write_bytes` allows, so a burst of uploads costs one
    /// write (and, in the group commit after it, one fdatasync).
    pub(super) async fn append(&self, buf: Vec<u8>) -> Result<u64> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.queue).push(Queued { buf, tx });
        {
            let mut ap = self.append.lock().await;
            let batch = std::mem::take(&mut *lock(&self.queue));
            if !batch.is_empty() {
                self.write_queued(&mut ap, batch).await;
            }
        }
        rx.await
            .map_err(|_| StoreError::Io(io::Error::other("append abandoned")))?
    }

    /// Lays down queued writes back to back at the tail. Caller holds the append lock. Every
    /// queued write gets its answer: an offset, or why it was refused.
    pub(super) async fn write_queued(&self, ap: &mut Append, batch: Vec<Queued>) {
        if self.check_writable().is_err() {
            for q in batch {
                let _ = q.tx.send(self.check_writable().map(|_| 0));
            }
            return;
        }
        // The prefix that fits in the volume; the rest is refused and the volume is full.
        let mut total = 0u64;
        let mut fit = 0;
        for q in &batch {
            if ap.tail + total + q.buf.len() as u64 > self.max_bytes {
                break;
            }
            total += q.buf.len() as u64;
            fit += 1;
        }
        let mut batch = batch;
        let refused = batch.split_off(fit);
        if !refused.is_empty() {
            self.set_read_only("full".into());
            for q in refused {
                let _ = q.tx.send(Err(StoreError::Full(self.id)));
            }
        }
        if batch.is_empty() {
            return;
        }
        if ap.tail + total > ap.allocated {
            let want = (ap.tail + total)
                .max(ap.allocated + self.cfg.prealloc_step)
                .min(self.max_bytes);
            let need = ap.tail + total;
            let (f, from, disk) = (self.file(), ap.allocated, self.engine.disk().clone());
            // A whole step first; on a disk without room for it, just what this write needs
            // (a volume is full when the write does not fit, not when a step does not).
            let r = tokio::task::spawn_blocking(move || {
                match disk.fallocate(&f, from, want - from, 0) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && need < want => {
                        disk.fallocate(&f, from, need - from, 0).map(|()| need)
                    }
                    r => r.map(|()| want),
                }
            })
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
            if let Err(e) = &r {
                // The volume has room but the file system has not: say so (an operator
                // frees space), rather than "full", which means the volume reached its size.
                let full = e.raw_os_error() == Some(libc::ENOSPC);
                if full {
                    self.set_read_only(DISK_FULL.into());
                } else {
                    self.set_read_only(format!("disk error: {e}"));
                }
                for q in batch {
                    let _ = q.tx.send(Err(if full {
                        StoreError::DiskFull(self.id)
                    } else {
                        StoreError::Io(io::Error::new(e.kind(), e.to_string()))
                    }));
                }
                return;
            }
            ap.allocated = r.unwrap_or(want);
        }
        // Chunks of at most max_write_bytes (recovery's search window relies on it).
        let mut pending = batch.into_iter().peekable();
        while pending.peek().is_some() {
            let mut chunk: Vec<Queued> = Vec::new();
            let mut size = 0u64;
            while let Some(q) = pending.peek() {
                if !chunk.is_empty() && size + q.buf.len() as u64 > self.cfg.max_write_bytes {
                    break;
                }
                size += q.buf.len() as u64;
                chunk.extend(pending.next());
            }
            let base = ap.tail;
            let data = if chunk.len() == 1 {
                std::mem::take(&mut chunk[0].buf)
            } else {
                let mut d = Vec::with_capacity(size as usize);
                for q in &chunk {
                    d.extend_from_slice(&q.buf);
                }
                d
            };
            if let Err(e) = self.engine.write_all_at(&self.file(), base, data).await {
                self.set_read_only(format!("disk error: {e}"));
                for q in chunk.into_iter().chain(pending) {
                    let _ =
                        q.tx.send(Err(StoreError::Io(io::Error::new(e.kind(), e.to_string()))));
                }
                return;
            }
            metrics::histogram!("haystack_store_writes_per_append").record(chunk.len() as f64);
            let mut at = base;
            for q in chunk {
                let len = if q.buf.is_empty() {
                    size
                } else {
                    q.buf.len() as u64
                };
                let _ = q.tx.send(Ok(at));
                at += len;
            }
            ap.tail += size;
            self.tail.store(ap.tail, Ordering::Release);
        }
    }
}
